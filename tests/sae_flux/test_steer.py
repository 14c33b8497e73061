"""Steering specifications on the tiny Flux: exact edits, clamping, zero-scale identity, errors."""

from __future__ import annotations

import math

import pytest
import torch
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from sae_flux import hooks as hookpoints
from sae_flux.steer import (
    Edit,
    ablate,
    add,
    add_feature,
    apply_edits,
    clamp,
    feature_direction,
    make_steering,
    steer_trace,
    steering,
)

HOOK = "double.1.img"
PROMPTS = ["a red circle at the left", "a blue square at the top"]


def _topk(d_in: int = 32, d_sae: int = 64, hook: str = HOOK, seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    cfg = TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=8, metadata=SAEMetadata(hook_name=hook))
    sae = TopKSAE(cfg)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.normal_(0, 0.3)
    return sae


class _Recorder:
    """A plain torch forward hook keeping the image stream of every call."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.seen: list[torch.Tensor] = []
        self.handle = module.register_forward_hook(lambda m, a, out: self.seen.append(out[1].detach().clone()))


def _block(flux, hook: str = HOOK) -> torch.nn.Module:
    return hookpoints._envoy(flux.pipeline, hookpoints.parse(hook).block_path)


def _record_steered(flux, edits, steps: int = 3):
    """Stream of each step before and after the steering hook, in one run."""
    before = _Recorder(_block(flux))
    try:
        with steering(flux, HOOK, edits):
            after = _Recorder(_block(flux))
            try:
                flux.generate(PROMPTS, seed=0, num_inference_steps=steps)
            finally:
                after.handle.remove()
    finally:
        before.handle.remove()
    return before.seen, after.seen


def test_addition_changes_exactly_the_chosen_tokens_and_steps(tiny_flux):
    direction = torch.randn(tiny_flux.d_model)
    unit = direction / direction.norm()
    edit = add(direction, scale=0.8, relative=True, region=(1, 2, 4, 6), steps=[0, 2])
    before, after = _record_steered(tiny_flux, [edit])
    assert len(before) == len(after) == 3
    tokens = torch.zeros(8, 8, dtype=torch.bool)
    tokens[1:4, 2:6] = True
    tokens = tokens.reshape(-1)
    for step, (orig, edited) in enumerate(zip(before, after, strict=True)):
        expected = orig.clone()
        if step in (0, 2):
            norm = orig.norm(dim=-1).mean(-1)
            expected[:, tokens] = orig[:, tokens] + (0.8 * norm)[:, None, None] * unit
        assert torch.equal(edited, expected), f"step {step}"
        assert torch.equal(edited[:, ~tokens], orig[:, ~tokens])


def test_absolute_scale_adds_a_vector_of_that_norm(tiny_flux):
    edit = add(torch.randn(tiny_flux.d_model), scale=3.0, steps=[1])
    before, after = _record_steered(tiny_flux, [edit])
    assert torch.equal(after[0], before[0])
    added = (after[1] - before[1]).norm(dim=-1)
    torch.testing.assert_close(added, torch.full_like(added, 3.0), atol=1e-4, rtol=0)


def test_several_features_add_their_directions_together(tiny_flux):
    sae = _topk()
    edits = [add_feature(sae, 3, scale=2.0, steps=[0]), add_feature(sae, 5, scale=-1.0, region=(0, 0, 2, 8), steps=[0])]
    before, after = _record_steered(tiny_flux, edits, steps=1)
    rows = torch.zeros(8, 8, dtype=torch.bool)
    rows[:2] = True
    rows = rows.reshape(-1)
    d3, d5 = feature_direction(sae, 3), feature_direction(sae, 5)
    torch.testing.assert_close(after[0][:, ~rows] - before[0][:, ~rows], (2.0 * d3).expand(2, 48, -1), atol=1e-5, rtol=0)
    torch.testing.assert_close(after[0][:, rows] - before[0][:, rows], (2.0 * d3 - d5).expand(2, 16, -1), atol=1e-5, rtol=0)


def test_per_image_region_masks_edit_each_image_on_its_own_tokens(tiny_flux):
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[1, 7, 7] = True
    before, after = _record_steered(tiny_flux, [add(torch.randn(tiny_flux.d_model), 1.0, region=masks, steps=[0])], steps=1)
    changed = (after[0] != before[0]).any(-1)
    assert changed.equal(masks.reshape(2, -1))


def test_feature_direction_is_the_unit_decoder_row():
    sae = _topk()
    direction = feature_direction(sae, 7)
    torch.testing.assert_close(direction, sae.W_dec[7].detach() / sae.W_dec[7].detach().norm())
    assert math.isclose(float(direction.norm()), 1.0, rel_tol=1e-6)


def test_feature_direction_of_a_trained_whitened_sae_is_in_raw_space(tmp_path):
    sae = _topk()
    mean, matrix = torch.randn(32), torch.randn(32, 32) + 4 * torch.eye(32)
    raw_row = sae.W_dec[4].detach() @ torch.linalg.inv(matrix)
    sae.fold_activation_whitening(mean, matrix, torch.linalg.inv(matrix))
    sae.save_model(tmp_path / "sae")
    loaded = SAE.load_from_disk(str(tmp_path / "sae"))
    torch.testing.assert_close(feature_direction(loaded, 4), raw_row / raw_row.norm(), atol=1e-5, rtol=1e-4)


def test_clamp_matches_sae_lens_error_term_forward_with_the_latent_clamped():
    sae = _topk()
    acts = torch.randn(2, 64, 32)
    edit = clamp(sae, 11, 2.5)
    edited = apply_edits(acts, [edit], step=0, grid=(8, 8))
    sae.use_error_term = True
    handle = sae.hook_sae_acts_post.add_hook(lambda a, hook: a.index_fill(-1, torch.tensor([11]), 2.5))
    try:
        with torch.no_grad():
            reference = sae(acts)
    finally:
        sae.reset_hooks()
        del handle
    torch.testing.assert_close(edited, reference, atol=1e-5, rtol=1e-5)


def test_clamping_sets_the_encoded_feature_to_the_value():
    """With a tied orthonormal ReLU SAE, re-encoding the edited stream gives back the value.

    (The feature is made active first: clamping keeps the error term, as sae_lens does, so a
    feature whose pre-activation was negative moves by the value from there.)
    """
    torch.manual_seed(1)
    cfg = StandardSAEConfig(d_in=32, d_sae=16, metadata=SAEMetadata(hook_name=HOOK))
    sae = StandardSAE(cfg)
    orthonormal, _ = torch.linalg.qr(torch.randn(32, 16))
    with torch.no_grad():
        sae.W_dec.copy_(orthonormal.T)
        sae.W_enc.copy_(orthonormal)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    acts = torch.randn(1, 64, 32) + 4.0 * orthonormal[:, 5]
    assert (sae.encode(acts)[..., 5] > 0).all()
    for value in (0.0, 1.7, 4.0):
        edited = apply_edits(acts, [clamp(sae, 5, value)], step=0, grid=(8, 8))
        latents = sae.encode(edited)
        torch.testing.assert_close(latents[..., 5], torch.full((1, 64), value), atol=1e-5, rtol=0)
        others = torch.ones(16, dtype=torch.bool)
        others[5] = False
        torch.testing.assert_close(latents[..., others], sae.encode(acts)[..., others], atol=1e-5, rtol=0)


def test_ablation_removes_the_feature_contribution_on_the_region_only():
    sae = _topk()
    acts = torch.randn(1, 64, 32)
    edited = apply_edits(acts, [ablate(sae, 2, region=(0, 0, 1, 8))], step=0, grid=(8, 8))
    a2 = sae.encode(acts)[0, :8, 2]
    torch.testing.assert_close(edited[0, :8], acts[0, :8] - a2[:, None] * sae.W_dec[2].detach(), atol=1e-6, rtol=0)
    assert torch.equal(edited[0, 8:], acts[0, 8:])


def test_zero_scale_reproduces_the_unsteered_image_bit_for_bit(tiny_flux):
    plain = tiny_flux.generate(PROMPTS, seed=3)
    with steering(tiny_flux, HOOK, [add(torch.randn(tiny_flux.d_model), 0.0, relative=True)]) as plan:
        steered = tiny_flux.generate(PROMPTS, seed=3)
    assert plan.steps_seen == list(range(tiny_flux.defaults.num_inference_steps))
    assert torch.equal(plain, steered)


def test_nnsight_trace_steering_equals_the_context_manager_bit_for_bit(tiny_flux):
    edit = add(torch.randn(tiny_flux.d_model), 2.0, relative=True, region=(2, 2, 6, 6), steps=[0, 1])
    with steering(tiny_flux, HOOK, [edit]):
        hooked = tiny_flux.generate(PROMPTS, seed=0)
    plan = make_steering(tiny_flux, HOOK, [edit])
    n = tiny_flux.defaults.num_inference_steps
    kwargs = tiny_flux.generation_kwargs()
    with tiny_flux.model.generate(PROMPTS, generator=tiny_flux.generators(0, [0, 1]), output_type="pt", **kwargs) as tracer:
        for step in tracer.iter[0:n]:
            steer_trace(tiny_flux.model, plan, step, n_steps=n)
        result = tracer.result.save()
    assert plan.steps_seen == list(range(n))
    assert torch.equal(result.images, hooked)
    assert not torch.equal(hooked, tiny_flux.generate(PROMPTS, seed=0))


def test_hook_is_removed_after_an_error(tiny_flux):
    block = _block(tiny_flux)
    hooks_before = len(block._forward_hooks)
    with pytest.raises(ValueError, match="beyond the schedule"):
        with steering(tiny_flux, HOOK, [add(torch.randn(32), 1.0, steps=[9])]):
            tiny_flux.generate(PROMPTS[:1], seed=0)
    assert len(block._forward_hooks) == hooks_before


# -- bad input ---------------------------------------------------------------------------------


def test_region_outside_the_token_grid_is_refused(tiny_flux):
    with pytest.raises(ValueError, match=r"outside the token grid of 8 rows x 8 cols"):
        make_steering(tiny_flux, HOOK, [add(torch.randn(32), 1.0, region=(6, 6, 9, 8))])
    with pytest.raises(ValueError, match="does not match the token grid"):
        make_steering(tiny_flux, HOOK, [add(torch.randn(32), 1.0, region=torch.ones(4, 4, dtype=torch.bool))])
    with pytest.raises(ValueError, match="row0 < row1"):
        add(torch.randn(32), 1.0, region=(3, 0, 3, 8))


def test_step_beyond_the_schedule_is_refused(tiny_flux):
    plan = make_steering(tiny_flux, HOOK, [add(torch.randn(32), 1.0, steps=[0, 4])])
    with pytest.raises(ValueError, match=r"step\(s\) \[4\] are beyond the schedule of 4 steps"):
        plan.check_steps(4)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        add(torch.randn(32), 1.0, steps=[-1])


def test_feature_beyond_the_dictionary_is_refused():
    with pytest.raises(ValueError, match=r"feature 64 is beyond the dictionary \(d_sae=64"):
        add_feature(_topk(), 64, 1.0)
    with pytest.raises(ValueError, match="beyond the dictionary"):
        clamp(_topk(), -1, 1.0)


def test_dictionary_of_another_hook_or_width_is_refused(tiny_flux):
    with pytest.raises(ValueError, match=r"trained on hook 'double.0.img', not on the steered stream 'double.1.img'"):
        make_steering(tiny_flux, HOOK, [clamp(_topk(hook="double.0.img"), 1, 1.0)])
    with pytest.raises(ValueError, match=r"width 16 but 'double.1.img' has width 32"):
        make_steering(tiny_flux, HOOK, [add_feature(_topk(d_in=16), 1, 1.0)])
    with pytest.raises(ValueError, match="edits an image stream"):
        make_steering(tiny_flux, "double.1.txt", [add(torch.randn(32), 1.0)])


@pytest.mark.parametrize("scale", [float("nan"), float("inf")])
def test_nan_or_infinite_scale_is_refused(scale):
    with pytest.raises(ValueError, match="steering scale must be a finite number"):
        add(torch.randn(32), scale)
    with pytest.raises(ValueError, match="steering value must be a finite number"):
        clamp(_topk(), 0, scale)


def test_zero_or_nan_direction_is_refused():
    with pytest.raises(ValueError, match="zero direction"):
        add(torch.zeros(32), 1.0)
    with pytest.raises(ValueError, match="finite vector"):
        Edit("add", torch.full((32,), float("nan")), 1.0)


def test_clamp_inside_an_nnsight_trace_equals_the_context_manager(tiny_flux):
    sae = _topk()
    edits = [clamp(sae, 6, 3.0, region=(0, 0, 4, 8), steps=[0]), ablate(sae, 9, steps=[1])]
    with steering(tiny_flux, HOOK, edits):
        hooked = tiny_flux.generate(PROMPTS[:1], seed=0)
    plan = make_steering(tiny_flux, HOOK, edits)
    n = tiny_flux.defaults.num_inference_steps
    kwargs = tiny_flux.generation_kwargs()
    with tiny_flux.model.generate(PROMPTS[:1], generator=tiny_flux.generators(0, [0]), output_type="pt", **kwargs) as tracer:
        for step in tracer.iter[0:n]:
            steer_trace(tiny_flux.model, plan, step)
        result = tracer.result.save()
    assert torch.equal(result.images, hooked)
