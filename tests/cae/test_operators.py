"""Operators (add, ablate, ablate_then_add, norm_preserving, a user callable) change the
activation exactly as a plain PyTorch forward hook doing the same would, in both forms
(context manager and in-trace nnsight) and for every position rule, under KV-cached
generation."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from cae import SteeringVector, steer
from cae.names import OPERATOR_NAMES, POSITIONS
from cae.operators import OPERATORS

PROMPTS = ["story : your friend is sad . so", "q : your guest is cold ."]
LAYER = 1


def halve_then_add(hidden_BTD, vec_D):
    """A user operator: shrink the activation, then add."""
    return 0.5 * hidden_BTD + vec_D


# Reference formulas, written out independently of cae.operators.
def ref_add(h, v):
    return h + v


def ref_ablate(h, v):
    u = v / torch.sqrt((v * v).sum())
    return h - torch.einsum("btd,d->bt", h, u)[..., None] * u


def ref_ablate_then_add(h, v):
    return ref_ablate(h, v) + v


def ref_norm_preserving(h, v):
    n = h + v
    return n * (torch.linalg.vector_norm(h, dim=-1) / torch.linalg.vector_norm(n, dim=-1))[..., None]


REFERENCES = {"add": ref_add, "ablate": ref_ablate, "ablate_then_add": ref_ablate_then_add,
              "norm_preserving": ref_norm_preserving, "callable": halve_then_add}


def test_the_registry_holds_every_named_operator_in_order():
    assert tuple(OPERATORS) == OPERATOR_NAMES


def test_operators_on_hand_computed_values():
    h = torch.tensor([[[3.0, 4.0, 0.0], [1.0, -2.0, 2.0]]])
    v = torch.tensor([2.0, 0.0, 0.0])
    assert OPERATORS["add"](h, v).tolist() == [[[5.0, 4.0, 0.0], [3.0, -2.0, 2.0]]]
    assert OPERATORS["ablate"](h, v).tolist() == [[[0.0, 4.0, 0.0], [0.0, -2.0, 2.0]]]
    assert OPERATORS["ablate"](h, -7 * v).tolist() == [[[0.0, 4.0, 0.0], [0.0, -2.0, 2.0]]]
    assert OPERATORS["ablate"](h, 0 * v).tolist() == h.tolist()  # a zero vector removes nothing
    assert OPERATORS["ablate_then_add"](h, v).tolist() == [[[2.0, 4.0, 0.0], [2.0, -2.0, 2.0]]]
    kept = OPERATORS["norm_preserving"](h, v)
    torch.testing.assert_close(kept.norm(dim=-1), torch.tensor([[5.0, 3.0]]))
    torch.testing.assert_close(kept[0, 0], torch.tensor([5.0, 4.0, 0.0]) * 5 / 41 ** 0.5)


@contextmanager
def next_block_inputs(hf):
    """What block LAYER + 1 received, per forward call (the steered output of LAYER)."""
    seen: list[torch.Tensor] = []
    handle = hf.model.layers[LAYER + 1].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].clone()))
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def plain_reference_hook(block, fn, vec_D, positions):
    """A plain forward hook: ``fn(out, vec)`` where ``positions`` says, knowing that the first
    forward of a generation is the (left-padded) prompt and every later one a decoding step."""
    calls = []

    def hook(_m, _i, out_BTD):
        where_BT = torch.zeros(out_BTD.shape[:2], dtype=torch.bool)
        if positions == "all" or calls:
            where_BT[:] = True
        elif positions == "from_prompt_end":
            where_BT[:, -1] = True  # left padding: the last column is every row's last token
        calls.append(1)
        return torch.where(where_BT[..., None], fn(out_BTD, vec_D), out_BTD)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def generate(lm, steering_fn=None, steps=3):
    """Greedy nnsight generation (left-padded), ``steering_fn()`` called at each step."""
    with lm.generate(PROMPTS, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                     pad_token_id=0) as tracer:
        if steering_fn is not None:
            for _step in tracer.iter[:steps]:
                steering_fn()
        ids = tracer.result.save()
    return ids


@pytest.mark.parametrize("form", ["hook", "nnsight"])
@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("name", [*OPERATOR_NAMES, "callable"])
def test_operator_equals_a_plain_hook_under_cached_generation(lm, hf_model, name, positions, form):
    sv = SteeringVector.random(hf_model, [LAYER], seed=11, norm=2.0)
    op = halve_then_add if name == "callable" else name
    m = 1.5
    with torch.no_grad():
        if form == "hook":
            with next_block_inputs(hf_model) as steered, \
                    sv.apply(lm, m, positions=positions, operator=op):
                ids = generate(lm)
        else:
            with next_block_inputs(hf_model) as steered:
                ids = generate(lm, lambda: steer(lm, sv, m, positions=positions, operator=op))
        with next_block_inputs(hf_model) as reference, plain_reference_hook(
                hf_model.model.layers[LAYER], REFERENCES[name], m * sv.vectors[LAYER], positions):
            ref_ids = generate(lm)
        with next_block_inputs(hf_model) as plain:
            generate(lm)
    assert len(steered) == len(reference) == 3  # prompt, then two cached one-token steps
    assert [x.shape[1] for x in steered[1:]] == [1, 1]
    for got, want in zip(steered, reference, strict=True):
        torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    assert torch.equal(ids, ref_ids)
    changed = [not torch.equal(a, b) for a, b in zip(steered, plain, strict=True)]
    assert changed == [positions != "generated", True, True]  # it did steer, where intended


def test_unknown_operator_is_one_clear_line(hf_model, lm):
    sv = SteeringVector.random(hf_model, [LAYER])
    with pytest.raises(ValueError, match=r"^unknown operator 'subtract'; choose from \['add', "
                                         r"'ablate', 'ablate_then_add', 'norm_preserving'\] or "
                                         r"pass a callable") as err:
        with sv.apply(hf_model, 1.0, operator="subtract"):
            pass
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown operator 'subtract'"), lm.trace("story :"):
        steer(lm, sv, 1.0, operator="subtract")


def test_a_user_operator_that_changes_the_shape_is_refused(hf_model, tokenizer):
    sv = SteeringVector.random(hf_model, [LAYER])
    enc = tokenizer(PROMPTS[:1], return_tensors="pt")
    with pytest.raises(ValueError, match=r"operator '<lambda>' returned \(1, 32\) for an "
                                         r"activation of shape \(1, 9, 32\)"):
        with sv.apply(hf_model, 1.0, positions="all", operator=lambda h, v: h[:, -1]):
            hf_model(**enc)
