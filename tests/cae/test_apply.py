"""Steering adds exactly ``m * v`` where intended: in a forward, in cached generation, in
nnsight traces; identical to a plain PyTorch forward hook doing the same addition."""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager

import pytest
import torch
from transformers import DynamicCache

from cae import SteeringVector, steer, steering
from cae.apply import POSITIONS, forward_facts
from tests.cae.conftest import tiny_llama

PROMPTS = ["story : your friend is sad . so", "q : your guest is cold ."]


@contextmanager
def plain_hook(block, add_fn):
    """Reference: a forward hook returning ``output + add_fn(output)``."""
    handle = block.register_forward_hook(lambda _m, _i, out: out + add_fn(out))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def recording(hf, layer):
    """Record layer ``layer``'s own output (before any later hook) and what the next block
    received, per forward call."""
    before, after = [], []
    h1 = hf.model.layers[layer].register_forward_hook(lambda _m, _i, o: before.append(o.clone()))
    h2 = hf.model.layers[layer + 1].register_forward_pre_hook(
        lambda _m, args: after.append(args[0].clone()))
    try:
        yield before, after
    finally:
        h1.remove()
        h2.remove()


def encode(tokenizer, side):
    tokenizer.padding_side = side
    return tokenizer(PROMPTS, return_tensors="pt", padding=True)


def test_context_manager_equals_plain_hook_at_all_positions(hf_model, tokenizer):
    sv = SteeringVector.random(hf_model, [1], seed=1, norm=3.0)
    enc = encode(tokenizer, "right")
    with torch.no_grad():
        with sv.apply(hf_model, 2.5, positions="all"):
            steered = hf_model(**enc).logits
        with plain_hook(hf_model.model.layers[1], lambda o: 2.5 * sv.vectors[1]):
            reference = hf_model(**enc).logits
        plain = hf_model(**enc).logits
    assert torch.equal(steered, reference)
    assert not torch.allclose(steered, plain)


@pytest.mark.parametrize("side", ["left", "right"])
def test_prompt_end_is_the_last_real_token_under_either_padding(hf_model, tokenizer, side):
    sv = SteeringVector.random(hf_model, [2], seed=2, norm=3.0)
    enc = encode(tokenizer, side)
    last_B = [int(torch.nonzero(row)[-1]) for row in enc["attention_mask"]]
    assert (side == "left") == (last_B[0] == last_B[1])

    def at_prompt_end(out):
        add = torch.zeros_like(out)
        add[torch.arange(2), last_B] = -1.5 * sv.vectors[2]
        return add

    with torch.no_grad():
        with sv.apply(hf_model, -1.5):
            steered = hf_model(**enc).logits
        with plain_hook(hf_model.model.layers[2], at_prompt_end):
            reference = hf_model(**enc).logits
    torch.testing.assert_close(steered, reference, atol=0, rtol=0)


def test_nnsight_steer_in_a_trace_equals_plain_hook(lm, hf_model, tokenizer):
    sv = SteeringVector.random(hf_model, [1, 3], seed=3, norm=2.0)
    with torch.no_grad(), lm.trace(PROMPTS):
        steer(lm, sv, 2.0, positions="all")
        steered = lm.output.logits.save()
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)  # nnsight pads on the left
    with torch.no_grad(), plain_hook(hf_model.model.layers[1], lambda o: 2.0 * sv.vectors[1]), \
            plain_hook(hf_model.model.layers[3], lambda o: 2.0 * sv.vectors[3]):
        with lm.trace(PROMPTS):
            reference = lm.output.logits.save()
    assert lm.tokenizer.padding_side == "left" and enc["input_ids"].shape[1] == steered.shape[1]
    torch.testing.assert_close(steered, reference, atol=0, rtol=0)


@pytest.mark.parametrize("positions", ["all", "from_prompt_end", "generated"])
def test_generate_steers_only_the_intended_positions(hf_model, tokenizer, positions):
    sv = SteeringVector.random(hf_model, [1], seed=4, norm=1.0)
    enc = encode(tokenizer, "left")
    with recording(hf_model, 1) as (before, after), sv.apply(hf_model, 3.0, positions=positions):
        hf_model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert [x.shape[1] for x in before] == [enc["input_ids"].shape[1], 1, 1]  # prefill, steps
    v_D = 3.0 * sv.vectors[1]
    for step, (b_BTD, a_BTD) in enumerate(zip(before, after, strict=True)):
        expected_BT = torch.zeros(b_BTD.shape[:2], dtype=torch.bool)
        if positions == "all" or step > 0 and positions != "all":
            expected_BT[:] = True
        if step == 0 and positions == "from_prompt_end":
            expected_BT[:, -1] = True
        diff_BTD = a_BTD - b_BTD
        torch.testing.assert_close(diff_BTD[expected_BT], v_D.expand(int(expected_BT.sum()), -1))
        assert torch.count_nonzero(diff_BTD[~expected_BT]) == 0


def test_nnsight_generate_steering_equals_hook_steering(lm, hf_model):
    sv = SteeringVector.random(hf_model, [2], seed=5, norm=4.0)
    with recording(hf_model, 2) as (_, via_nnsight), \
            lm.generate(PROMPTS, max_new_tokens=4, min_new_tokens=4, do_sample=False) as tracer:
        for _step in tracer.iter[:4]:
            steer(lm, sv, 2.0)
        ids_nnsight = tracer.result.save()
    with recording(hf_model, 2) as (_, via_hooks), sv.apply(lm, 2.0), \
            lm.generate(PROMPTS, max_new_tokens=4, do_sample=False) as tracer:
        ids_hooks = tracer.result.save()
    assert torch.equal(ids_nnsight, ids_hooks)
    assert len(via_nnsight) == len(via_hooks) == 4
    for a, b in zip(via_nnsight, via_hooks, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_several_vectors_and_layers_add_up(hf_model, tokenizer):
    a = SteeringVector.random(hf_model, [1, 2], seed=6)
    b = SteeringVector.random(hf_model, [2], seed=7)
    enc = encode(tokenizer, "right")
    with torch.no_grad():
        with steering(hf_model, [(a, 2.0), (b, -1.0)], positions="all"):
            together = hf_model(**enc).logits
        with (2.0 * a - b).apply(hf_model, 1.0, positions="all"):
            combined = hf_model(**enc).logits
    torch.testing.assert_close(together, combined, atol=1e-6, rtol=1e-6)


def test_nnsight_steer_takes_several_vectors(lm, hf_model):
    a = SteeringVector.random(hf_model, [1], seed=8)
    b = SteeringVector.random(hf_model, [1, 3], seed=9)
    with torch.no_grad(), lm.trace(PROMPTS):
        steer(lm, [(a, 1.5), (b, -2.0)], positions="all")
        together = lm.output.logits.save()
    with torch.no_grad(), steering(lm, [(a, 1.5), (b, -2.0)], positions="all"), lm.trace(PROMPTS):
        reference = lm.output.logits.save()
    torch.testing.assert_close(together, reference, atol=0, rtol=0)


def test_hooks_are_removed_after_an_exception(hf_model):
    sv = SteeringVector.random(hf_model, [1])
    with pytest.raises(RuntimeError, match="boom"), sv.apply(hf_model, 1.0):
        raise RuntimeError("boom")
    assert not hf_model.model.layers[1]._forward_hooks and not hf_model._forward_pre_hooks


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_multiplier_is_refused(hf_model, bad):
    sv = SteeringVector.random(hf_model, [1])
    with pytest.raises(ValueError, match="multiplier must be a finite number"):
        with sv.apply(hf_model, bad):
            pass
    with pytest.raises(ValueError, match="multiplier must be a finite number"):
        _ = sv * bad


def test_vector_of_another_width_or_model_is_refused(hf_model):
    wide = tiny_llama(hidden=48)
    sv = SteeringVector.random(wide, [1])
    with pytest.raises(ValueError, match="vector width 48 does not match the model's hidden size 32"):
        with sv.apply(hf_model, 1.0, force=True):
            pass
    other = SteeringVector.random(hf_model, [1])
    hf_model.config.name_or_path = "someone/else"
    with pytest.raises(ValueError, match="trained on 'random-llama-32' but the model is "
                                         "'someone/else'; pass force=True"):
        with other.apply(hf_model, 1.0):
            pass
    with other.apply(hf_model, 1.0, force=True):
        pass


def test_unknown_positions_are_refused(hf_model):
    sv = SteeringVector.random(hf_model, [1])
    with pytest.raises(ValueError, match="unknown positions 'prompt'"):
        with sv.apply(hf_model, 1.0, positions="prompt"):
            pass


def cache_kwarg(hf) -> str:
    """The forward's name for the key-value cache (``cache`` from transformers 5.24 on)."""
    return "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"


def first_turn(hf, enc):
    """A cache holding the first turn's prompt, and the mask over it."""
    cache = DynamicCache(config=hf.config)
    with torch.no_grad():
        hf(**enc, use_cache=True, **{cache_kwarg(hf): cache})
    return cache, enc["attention_mask"]


def test_forward_facts_read_the_cache_however_it_is_passed(hf_model, tokenizer):
    enc = encode(tokenizer, "left")
    cache, mask_BS = first_turn(hf_model, enc)
    past = enc["input_ids"].shape[1]
    step = {"input_ids": torch.tensor([[5], [6]]),
            "attention_mask": torch.cat([mask_BS, torch.ones(2, 1, dtype=mask_BS.dtype)], 1)}
    name = cache_kwarg(hf_model)
    positional = [step["input_ids"], step["attention_mask"], None, cache]  # Llama's order
    assert forward_facts(hf_model, tuple(positional), {}).past == past
    assert forward_facts(hf_model, (), {**step, name: cache}).past == past
    assert forward_facts(hf_model, (), {**step, "past_key_values": cache}).past == past
    assert forward_facts(hf_model, (), step).past == past  # the mask alone tells
    assert forward_facts(hf_model, (), {"input_ids": step["input_ids"],
                                        "cache_position": torch.tensor([9])}).past == 9
    assert forward_facts(hf_model, (enc["input_ids"],), {}).past == 0
    assert forward_facts(hf_model, (), {**step, name: cache}).decoding_step(1)
    assert not forward_facts(hf_model, (), {**step, name: cache}).decoding_step(3)


def second_turn(hf, lm, steer_fn, chunk_BT):
    """Block 2's input in a second-turn forward of ``chunk_BT`` new tokens and then in one
    decoding step after it, with ``steer_fn(inputs)`` running each forward."""
    cache, mask_BS = first_turn(hf, encode(lm.tokenizer, "left"))
    seen = []
    for ids_BT in (chunk_BT, torch.tensor([[7], [8]])):
        mask_BS = torch.cat([mask_BS, torch.ones_like(ids_BT)], 1)
        inputs = {"input_ids": ids_BT, "attention_mask": mask_BS, cache_kwarg(hf): cache}
        with torch.no_grad(), recording(hf, 1) as (_, after):
            steer_fn(inputs)
        seen.append(after[0])
    return seen


def hook_form(hf, sv, positions):
    def run(inputs):
        with sv.apply(hf, 3.0, positions=positions):
            hf(**inputs, use_cache=True)
    return run


def nnsight_form(lm, sv, positions):
    """nnsight edits a block's output in place before torch's forward hooks see it, so what
    was added is read as block 2's input against an unsteered run."""
    def run(inputs):
        with lm.trace(inputs, use_cache=True):
            steer(lm, sv, 3.0, positions=positions)
    return run


@pytest.mark.parametrize("form", ["hook", "nnsight"])
@pytest.mark.parametrize("positions", POSITIONS)
def test_a_second_turn_is_a_prompt_continuation(hf_model, lm, positions, form):
    sv = SteeringVector.random(hf_model, [1], seed=10, norm=1.0)
    chunk_BT = torch.tensor([[5, 6, 7], [8, 9, 10]])
    form_fn = hook_form(hf_model, sv, positions) if form == "hook" else nnsight_form(lm, sv, positions)
    steered = second_turn(hf_model, lm, form_fn, chunk_BT)
    plain = second_turn(hf_model, lm, lambda inputs: hf_model(**inputs, use_cache=True), chunk_BT)
    turn_BTD, step_BTD = (a - b for a, b in zip(steered, plain, strict=True))
    expected_BT = torch.zeros(2, 3, dtype=torch.bool)
    if positions == "all":
        expected_BT[:] = True
    if positions == "from_prompt_end":
        expected_BT[:, -1] = True
    v_D = 3.0 * sv.vectors[1]
    torch.testing.assert_close(turn_BTD[expected_BT], v_D.expand(int(expected_BT.sum()), -1))
    assert torch.count_nonzero(turn_BTD[~expected_BT]) == 0
    torch.testing.assert_close(step_BTD[:, 0], v_D.expand(2, -1))  # every rule steers a step


def test_steer_once_in_generate_warns_that_only_the_prompt_is_steered(lm, hf_model):
    sv = SteeringVector.random(hf_model, [1], seed=12)
    with pytest.warns(UserWarning, match=r"only the prompt is steered, not the generated tokens"):
        with lm.generate(PROMPTS, max_new_tokens=2, do_sample=False):
            steer(lm, sv, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with lm.generate(PROMPTS, max_new_tokens=2, min_new_tokens=2, do_sample=False) as tracer:
            for _step in tracer.iter[:2]:
                steer(lm, sv, 2.0)
        with lm.trace(PROMPTS):
            steer(lm, sv, 2.0)
