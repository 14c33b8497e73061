"""One stream editor for every path: each hook kind edited through the context manager, inside a
user's trace (edit, read-then-write) and per step, equals a plain PyTorch forward hook bit for bit."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from sae_flux import hooks
from sae_flux.downstream import recorded_velocities
from sae_flux.steer import add, make_steering, steer_trace, steering

PROMPT = ["a red circle at the left"]
HOOKS = ["double.1.img", "double.0.txt", "single.0.img", "single.0.txt", "double.1.img.delta",
         "double.0.txt.delta", "single.1.img.delta", "double.1.mlp"]
STEPS = 2


def fn(value):
    return value * 0.5 + 0.25


@contextmanager
def reference_hook(pipeline, hook, edit_calls):
    """A plain forward hook written out by hand: replace the hook's value by ``fn(value)`` in
    the forward calls numbered ``edit_calls`` (one call per denoising step here)."""
    kind, block, stream = hook.split(".")[:3]
    blocks = pipeline.transformer.transformer_blocks if kind == "double" else \
        pipeline.transformer.single_transformer_blocks
    module = blocks[int(block)].ff.net[0] if stream == "mlp" else blocks[int(block)]
    calls = [0]

    def on_output(_mod, _args, kwargs, output):
        call, calls[0] = calls[0], calls[0] + 1
        if call not in edit_calls:
            return output
        if stream == "mlp":
            return fn(output)
        index = 0 if stream == "txt" else 1
        parts = list(output)
        if hook.endswith(".delta"):
            before = kwargs["encoder_hidden_states" if stream == "txt" else "hidden_states"]
            parts[index] = before + fn(parts[index] - before)
        else:
            parts[index] = fn(parts[index])
        return tuple(parts)

    handle = module.register_forward_hook(on_output, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def velocities(flux, run):
    """The transformer's prediction at every step of ``run(kwargs)`` (a plain torch hook)."""
    seen: list[torch.Tensor] = []
    kwargs = flux.generation_kwargs(num_inference_steps=STEPS, output_type="latent")
    kwargs["generator"] = flux.generators(0, [0])
    with torch.no_grad(), recorded_velocities(flux.pipeline, seen):
        run(kwargs)
    assert len(seen) == STEPS
    return torch.stack(seen)


def run_plain(flux):
    return lambda kwargs: flux.pipeline(PROMPT, **kwargs)


def run_context(flux, hook):
    def run(kwargs):
        with hooks.editing(flux.pipeline, hook, fn):
            flux.pipeline(PROMPT, **kwargs)
    return run


def run_trace(flux, hook, form, steps):
    """nnsight: ``form`` is ``edit`` or ``read_write``; ``steps`` None edits without
    ``tracer.iter`` (the first forward only), else the steps ``tracer.iter[steps]``."""
    def apply():
        if form == "edit":
            hooks.edit(flux.model, hook, fn)
        else:
            hooks.write(flux.model, hook, fn(hooks.read(flux.model, hook)))

    def run(kwargs):
        with flux.model.generate(PROMPT, **kwargs) as tracer:
            if steps is None:
                apply()
            else:
                for _step in tracer.iter[steps]:
                    apply()
    return run


@pytest.mark.parametrize("hook", HOOKS)
def test_every_path_equals_a_plain_forward_hook(tiny_flux, hook):
    with reference_hook(tiny_flux.pipeline, hook, {0, 1}):
        every_step = velocities(tiny_flux, run_plain(tiny_flux))
    with reference_hook(tiny_flux.pipeline, hook, {0}):
        first_step = velocities(tiny_flux, run_plain(tiny_flux))
    with reference_hook(tiny_flux.pipeline, hook, {1}):
        second_step = velocities(tiny_flux, run_plain(tiny_flux))
    assert not torch.equal(every_step, velocities(tiny_flux, run_plain(tiny_flux)))
    assert torch.equal(velocities(tiny_flux, run_context(tiny_flux, hook)), every_step)
    assert torch.equal(velocities(tiny_flux, run_trace(tiny_flux, hook, "edit", None)), first_step)
    for form in ("edit", "read_write"):
        trace = run_trace(tiny_flux, hook, form, slice(0, STEPS))
        assert torch.equal(velocities(tiny_flux, trace), every_step), form
        trace = run_trace(tiny_flux, hook, form, slice(1, 2))
        assert torch.equal(velocities(tiny_flux, trace), second_step), form


def test_steering_a_delta_hook_scales_by_the_update_on_both_paths(tiny_flux):
    hook = "double.1.img.delta"
    edit = add(torch.ones(tiny_flux.d_model), scale=0.5, relative=True)
    updates: list[torch.Tensor] = []

    def record(delta):
        updates.append(delta.clone())
        return delta + 0.5 * delta.norm(dim=-1).mean(-1)[:, None, None] * edit.direction_D

    with hooks.editing(tiny_flux.pipeline, hook, record):
        expected = velocities(tiny_flux, run_plain(tiny_flux))
    with steering(tiny_flux, hook, [edit]):
        via_context = velocities(tiny_flux, run_plain(tiny_flux))
    plan = make_steering(tiny_flux, hook, [edit])

    def in_trace(kwargs):
        with tiny_flux.model.generate(PROMPT, **kwargs) as tracer:
            for step in tracer.iter[0:STEPS]:
                steer_trace(tiny_flux.model, plan, step)

    assert torch.equal(via_context, expected)
    assert torch.equal(velocities(tiny_flux, in_trace), expected)
    whole = tiny_flux.capture(PROMPT, ["double.1.img"], num_inference_steps=1)["double.1.img"]
    assert updates[0].norm(dim=-1).mean() < 0.5 * whole.norm(dim=-1).mean()  # not the output


@pytest.mark.parametrize("path", ["read", "write", "edit", "editing"])
def test_a_missing_block_lists_the_valid_ranges_on_every_path(tiny_flux, path):
    kwargs = tiny_flux.generation_kwargs(num_inference_steps=1, output_type="latent")
    with pytest.raises(ValueError, match=r"out of range: this model has 2 double blocks"):
        if path == "editing":
            with hooks.editing(tiny_flux.pipeline, "double.9.img", fn):
                pass
        else:
            with tiny_flux.model.generate(PROMPT, **kwargs):
                if path == "read":
                    hooks.read(tiny_flux.model, "double.9.img").save()
                elif path == "write":
                    hooks.write(tiny_flux.model, "double.9.img", torch.zeros(1))
                else:
                    hooks.edit(tiny_flux.model, "double.9.img", fn)


def test_a_stale_delta_read_is_refused_by_name(tiny_flux):
    kwargs = tiny_flux.generation_kwargs(num_inference_steps=STEPS, output_type="latent")
    with pytest.raises(ValueError, match=r"'double.1.img.delta' was read in an earlier forward"):
        with tiny_flux.model.generate(PROMPT, **kwargs) as tracer:
            for _step in tracer.iter[0:1]:
                kept = hooks.read(tiny_flux.model, "double.1.img.delta")
            for _step in tracer.iter[1:2]:
                hooks.write(tiny_flux.model, "double.1.img.delta", kept)
