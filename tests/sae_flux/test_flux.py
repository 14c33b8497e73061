"""Flux.capture against plain PyTorch forward hooks on the same diffusers modules."""

from __future__ import annotations

import torch

from sae_flux import hooks

PROMPTS = ["a red circle", "a blue square on the left", "a cat"]


def _record(module, pick):
    store: list[torch.Tensor] = []

    def hook(mod, args, kwargs, output):
        store.append(pick(kwargs, output).detach().clone())

    return store, module.register_forward_hook(hook, with_kwargs=True)


def _by_prompt(store, n_steps, batch_sizes):
    """Forward-hook records (one per call) -> (prompt, step, token, d)."""
    out, i = [], 0
    for _ in batch_sizes:
        out.append(torch.stack(store[i : i + n_steps], dim=1))
        i += n_steps
    return torch.cat(out)


def test_capture_is_bit_identical_to_plain_forward_hooks(tiny_flux):
    blocks = tiny_flux.pipeline.transformer.transformer_blocks
    singles = tiny_flux.pipeline.transformer.single_transformer_blocks
    img, h1 = _record(blocks[1], lambda kw, out: out[1])
    txt, h2 = _record(singles[0], lambda kw, out: out[0])
    delta, h3 = _record(blocks[0], lambda kw, out: out[1] - kw["hidden_states"])
    mlp, h4 = _record(blocks[1].ff.net[0], lambda kw, out: out)
    hooks_ = ["double.1.img", "single.0.txt", "double.0.img.delta", "double.1.mlp"]
    try:
        acts = tiny_flux.capture(PROMPTS, hooks_, num_inference_steps=3, batch_size=2)
    finally:
        for h in (h1, h2, h3, h4):
            h.remove()
    sizes = [2, 1]
    assert torch.equal(acts["double.1.img"], _by_prompt(img, 3, sizes))
    assert torch.equal(acts["single.0.txt"], _by_prompt(txt, 3, sizes))
    assert torch.equal(acts["double.0.img.delta"], _by_prompt(delta, 3, sizes))
    assert torch.equal(acts["double.1.mlp"], _by_prompt(mlp, 3, sizes))
    assert acts["double.1.mlp"].shape == (3, 3, 64, 4 * tiny_flux.d_model)
    assert acts["single.0.txt"].shape == (3, 3, tiny_flux.defaults.max_sequence_length, tiny_flux.d_model)


def test_provenance_of_a_multi_step_run(tiny_flux):
    acts = tiny_flux.capture(PROMPTS[:2], ["double.0.img", "double.0.txt"], num_inference_steps=4, steps=[1, 3])
    assert acts["double.0.img"].shape[:3] == (2, 2, 64)
    assert acts.steps == [1, 3]
    expected_t = tiny_flux.pipeline.scheduler.timesteps[[1, 3]]
    assert torch.allclose(acts.timesteps, expected_t)
    prov = acts.provenance("double.0.img")
    tokens = acts.tokens("double.0.img")
    assert tokens.shape[0] == prov["prompt"].shape[0] == 2 * 2 * 64
    # token 64 + 9 of the flattened order is prompt 0, step 3, grid row 1, column 1
    i = 64 + 9
    assert (prov["prompt"][i], prov["step"][i], prov["h"][i], prov["w"][i]) == (0, 3, 1, 1)
    assert prov["timestep"][i] == expected_t[1]
    assert torch.equal(tokens[i], acts["double.0.img"][0, 1, 9])
    text = acts.provenance("double.0.txt")
    assert "token" in text and "h" not in text
    assert text["token"].max() == tiny_flux.defaults.max_sequence_length - 1


def test_kept_steps_equal_the_same_steps_of_a_full_run(tiny_flux):
    full = tiny_flux.capture(PROMPTS[:1], ["double.1.img"], num_inference_steps=3)
    part = tiny_flux.capture(PROMPTS[:1], ["double.1.img"], num_inference_steps=3, steps=[2])
    assert torch.equal(part["double.1.img"][:, 0], full["double.1.img"][:, 2])


def test_capture_skips_the_steps_after_the_last_kept_one(tiny_flux):
    store, handle = _record(tiny_flux.pipeline.transformer.transformer_blocks[0], lambda kw, out: out[1])
    try:
        tiny_flux.capture(PROMPTS[:1], ["double.0.img"], num_inference_steps=6, steps=[0, 2])
    finally:
        handle.remove()
    assert len(store) == 3


def test_prompt_seed_does_not_depend_on_batching(tiny_flux):
    a = tiny_flux.capture(PROMPTS, ["double.1.img"], num_inference_steps=1, batch_size=1)
    b = tiny_flux.capture(PROMPTS[2:], ["double.1.img"], num_inference_steps=1, prompt_ids=[2])
    assert torch.equal(a["double.1.img"][2], b["double.1.img"][0])


def test_true_cfg_keeps_only_the_conditional_pass_unless_asked(tiny_flux):
    blocks = tiny_flux.pipeline.transformer.transformer_blocks
    store, handle = _record(blocks[0], lambda kw, out: out[1])
    kwargs = {"true_cfg_scale": 2.0, "negative_prompt": ["blurry"]}
    try:
        cond = tiny_flux.capture(PROMPTS[:1], ["double.0.img"], num_inference_steps=2, **kwargs)
    finally:
        handle.remove()
    assert len(store) == 4  # cond, uncond per step
    assert torch.equal(cond["double.0.img"][0], torch.cat([store[0], store[2]]))
    both = tiny_flux.capture(
        PROMPTS[:1], ["double.0.img"], num_inference_steps=2, include_uncond=True, **kwargs
    )
    assert torch.equal(both["double.0.img"][0], torch.cat(store))
    assert both.steps == [0, 0, 1, 1]


def test_read_and_write_inside_a_user_trace(tiny_flux):
    model = tiny_flux.model
    kwargs = tiny_flux.generation_kwargs(num_inference_steps=1, output_type="latent")
    gen = tiny_flux.generators(0, [0])
    with model.generate(PROMPTS[:1], generator=gen, **kwargs):
        before = hooks.read(model, "double.1.img").save()
        after_clean = hooks.read(model, "single.0.img").save()
    gen = tiny_flux.generators(0, [0])
    with model.generate(PROMPTS[:1], generator=gen, **kwargs):
        hooks.write(model, "double.1.img", torch.zeros_like(hooks.read(model, "double.1.img")))
        after_zeroed = hooks.read(model, "single.0.img").save()
    captured = tiny_flux.capture(PROMPTS[:1], ["double.1.img"], num_inference_steps=1)
    assert torch.equal(before, captured["double.1.img"][:, 0])
    assert not torch.allclose(after_clean, after_zeroed)


def test_capture_rejects_bad_requests(tiny_flux):
    import pytest

    with pytest.raises(ValueError, match="out of range"):
        tiny_flux.capture(PROMPTS, ["single.5.img"])
    with pytest.raises(ValueError, match=r"within 0\.\.1"):
        tiny_flux.capture(PROMPTS, ["double.0.img"], num_inference_steps=2, steps=[2])
    with pytest.raises(ValueError, match="at least one prompt"):
        tiny_flux.capture([], ["double.0.img"])


def test_from_pretrained_refuses_a_directory_that_is_not_a_pipeline(tmp_path):
    import pytest

    from sae_flux import Flux

    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline directory .no model_index.json"):
        Flux.from_pretrained(tmp_path)


def test_tiny_configs_are_checked():
    import pytest

    from sae_flux.tiny import GenerationDefaults, TinyFluxConfig

    with pytest.raises(ValueError, match=r"axes_dims_rope \(4, 4, 4\) must sum to attention_head_dim 16"):
        TinyFluxConfig(axes_dims_rope=(4, 4, 4))
    with pytest.raises(ValueError, match="resolution 30 must be divisible by 4"):
        TinyFluxConfig(defaults=GenerationDefaults(resolution=30))
