"""Every evaluation stage adds the vector where the run's position rule says, and nowhere else.

Plain torch hooks record, for every forward of the model, a block's own output (before the
steering hook runs) and what the next block received, and whether a steering hook was
installed on the block at that moment. Inside a steering context the difference must be the
same vector at exactly the positions the rule names (written out here from docs/cae.md:
``all`` everywhere; ``from_prompt_end`` the last real token of a prompt forward; a one-token
forward on a non-empty cache is a decoding step that every rule steers; ``generated`` nothing
else) and zero elsewhere; outside one it must be zero. Stages that score an answer token
refuse ``generated``, which would add nothing there.

Legend: B rows, T tokens, D width.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
import torch

from cae import SteeringVector
from cae.apply import POSITIONS
from cae.evaluate.adversarial import AdversarialConfig, adversarial_search
from cae.evaluate.behaviour import BehaviourConfig, behaviour, layer_sweep
from cae.evaluate.efficiency import EfficiencyConfig, model_efficiency
from cae.evaluate.perplexity import PerplexityConfig, perplexity_cost
from cae.evaluate.shift import continuations, distribution_shift
from cae.organism.corpus import neutral_text
from tests.cae.evaluate.test_eval_behaviour import ITEMS

PROMPTS = ["story : your friend is sad . so", "story : the mayor offers you a chance ."]
SCORING = ("behaviour", "layer_sweep", "choice_sets", "adversarial", "efficiency")


@dataclass
class Forward:
    """One forward of the model as seen at the model's entry and around block ``layer``."""

    n_tokens: int
    past: int
    mask_BS: torch.Tensor | None
    steering: dict[int, bool] = field(default_factory=dict)
    before: dict[int, torch.Tensor] = field(default_factory=dict)
    after: dict[int, torch.Tensor] = field(default_factory=dict)


def _past(kwargs: dict) -> int:
    position = kwargs.get("cache_position")
    if isinstance(position, torch.Tensor) and position.numel():
        return int(position.reshape(-1)[0])
    for name in ("cache", "past_key_values"):
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0


@contextmanager
def recording(hf, layers):
    """Record every forward; installed before the stage runs, so these block hooks run
    before any steering hook the stage installs."""
    blocks = hf.model.layers
    forwards: list[Forward] = []

    def on_entry(_m, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"]
        mask = kwargs.get("attention_mask")
        forwards.append(Forward(ids.shape[1], _past(kwargs),
                                mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None))

    def on_output(layer):
        def hook(_m, _i, out):
            forwards[-1].before[layer] = out.detach().clone()
            forwards[-1].steering[layer] = len(blocks[layer]._forward_hooks) > 1
        return hook

    def on_next(layer):
        def hook(_m, args):
            forwards[-1].after[layer] = args[0].detach().clone()
        return hook

    handles = [hf.register_forward_pre_hook(on_entry, with_kwargs=True)]
    for layer in layers:
        nxt = blocks[layer + 1] if layer + 1 < len(blocks) else hf.model.norm
        handles.append(blocks[layer].register_forward_hook(on_output(layer)))
        handles.append(nxt.register_forward_pre_hook(on_next(layer)))
    try:
        yield forwards
    finally:
        for handle in handles:
            handle.remove()


def expected_positions(rule: str, fwd: Forward, batch: int) -> torch.Tensor:
    """Where ``rule`` adds in this forward (the documented rules, written out by hand)."""
    out_BT = torch.zeros(batch, fwd.n_tokens, dtype=torch.bool)
    if rule == "all" or (fwd.past > 0 and fwd.n_tokens == 1):
        out_BT[:] = True
    elif rule == "from_prompt_end":
        if fwd.mask_BS is None:
            out_BT[:, -1] = True
        else:
            real_BT = fwd.mask_BS[:, -fwd.n_tokens:].bool()
            for b in range(batch):
                out_BT[b, int(torch.nonzero(real_BT[b])[-1])] = True
    return out_BT


def check_forwards(forwards, rule, vectors=None, multipliers=None) -> int:
    """Every forward adds one vector exactly at the rule's positions inside a steering
    context and nothing outside; ``vectors`` (layer -> v) and ``multipliers``, when given,
    pin the added vector to ``m * v``. Returns how many forwards added something."""
    steered = 0
    for i, fwd in enumerate(forwards):
        for layer, before_BTD in fwd.before.items():
            diff_BTD = (fwd.after[layer] - before_BTD).float()
            if not fwd.steering[layer]:
                assert torch.count_nonzero(diff_BTD) == 0, f"forward {i}: added outside steering"
                continue
            where_BT = expected_positions(rule, fwd, diff_BTD.shape[0])
            assert torch.count_nonzero(diff_BTD[~where_BT]) == 0, \
                f"forward {i} (T={fwd.n_tokens}, past={fwd.past}): added outside the rule"
            if not where_BT.any():
                continue
            added_ND = diff_BTD[where_BT]
            torch.testing.assert_close(added_ND, added_ND[0].expand_as(added_ND),
                                       atol=1e-5, rtol=1e-4)
            assert added_ND[0].norm() > 0, f"forward {i}: nothing added where the rule says"
            steered += 1
            if vectors is not None:
                v_D = vectors[layer]
                m = float(added_ND[0] @ v_D / (v_D @ v_D))
                assert any(abs(m - c) < 1e-4 * max(1.0, abs(c)) for c in multipliers), m
                torch.testing.assert_close(added_ND[0], m * v_D, atol=1e-5, rtol=1e-4)
    return steered


def run_stage(stage, rule, lm, sv):
    """Run one stage with ``rule``; returns the multipliers it may add with."""
    if stage == "behaviour":
        behaviour(lm, ITEMS, sv, BehaviourConfig([-2.0, 0.0, 2.0], positions=rule))
        return [-2.0, 2.0]
    if stage == "layer_sweep":
        layer_sweep(lm, ITEMS, sv, BehaviourConfig([-1.0, 3.0], positions=rule))
        return [-1.0, 3.0]
    if stage == "choice_sets":
        distribution_shift(lm, sv, 2.0, {"ab": ITEMS}, positions=rule)
        return [2.0]
    if stage == "open_sets":
        distribution_shift(lm, sv, 2.0, {}, {"open": PROMPTS}, lambda p, c: float(len(c) % 3),
                           positions=rule)
        return [2.0]
    if stage == "continuations":
        continuations(lm, PROMPTS, sv, -3.0, max_new_tokens=3, positions=rule)
        return [-3.0]
    if stage == "adversarial":
        adversarial_search(lm, ITEMS[:1], sv, AdversarialConfig(2.0, n_tokens=1, rounds=1,
                                                                positions=rule))
        return [2.0]
    if stage == "perplexity":
        perplexity_cost(lm, neutral_text(8, seed=2), sv,
                        PerplexityConfig([-2.0, 2.0], context=6, max_windows=2, positions=rule,
                                         prompt_tokens=2))
        return [-2.0, 2.0]
    if stage == "efficiency":
        model_efficiency(lm, ITEMS[:3], ITEMS, 1, EfficiencyConfig(draws=1), multiplier=2.0,
                         positions=rule)
        return []
    raise AssertionError(stage)


STAGES = ("behaviour", "layer_sweep", "choice_sets", "open_sets", "continuations",
          "adversarial", "perplexity", "efficiency")


@pytest.mark.parametrize("rule", POSITIONS)
@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_adds_the_vector_where_its_rule_says(lm, hf_model, stage, rule):
    layers = [1, 2] if stage == "layer_sweep" else [1]
    sv = SteeringVector.random(hf_model, layers, seed=11, norm=2.0)
    if rule == "generated" and stage in SCORING:
        with pytest.raises(ValueError, match="positions='generated' adds nothing when an "
                                             "answer token is scored"):
            run_stage(stage, rule, lm, sv)
        return
    with recording(hf_model, layers) as forwards:
        multipliers = run_stage(stage, rule, lm, sv)
    vectors = None if stage == "efficiency" else sv.vectors
    steered = check_forwards(forwards, rule, vectors, multipliers)
    assert steered > 0, "the stage never added the vector"
    if rule == "all":  # the old prompt-end-only paths would fail here
        assert any(f.steering[layers[0]] and f.n_tokens > 1 for f in forwards)


@pytest.mark.parametrize("rule", ["all", "from_prompt_end"])
def test_a_whole_eval_run_adds_the_vector_only_where_its_rule_says(tmp_path, monkeypatch, rule):
    """``cae eval`` end to end (every stage, adversarial and open-ended included) on the tiny
    organism: every forward of the run, inspected."""
    import cae.model
    from cae.cli import main
    from tests.cae.evaluate.test_eval_device import eval_inputs

    lm = cae.model.load_language_model("organism:tiny")
    monkeypatch.setattr(cae.model, "load_language_model", lambda *_a, **_k: lm)
    hf = cae.model.hf_module(lm)
    flags = eval_inputs(tmp_path, rule)
    with recording(hf, [1]) as forwards:
        assert main(["eval", *flags, "--out", str(tmp_path / "e"), "--layers", "1"]) == 0
    assert check_forwards(forwards, rule) > 10
    decoding = [f for f in forwards if f.steering[1] and f.past > 0 and f.n_tokens == 1]
    assert decoding, "the open-ended and perplexity stages steer decoding steps"
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["config"]["sweep"]["positions"] == rule
    assert results["perplexity"]["positions"] == rule


def test_a_whole_eval_run_refuses_generated_before_any_work(tmp_path, capsys):
    from cae.cli import main
    from cae.organism.corpus import write_mwe_jsonl

    write_mwe_jsonl(str(tmp_path / "kind.jsonl"), "kind", n=8)
    assert main(["eval", "--model", "organism:tiny", "--data", str(tmp_path / "kind.jsonl"),
                 "--out", str(tmp_path / "g"), "--positions", "generated"]) == 2
    err = capsys.readouterr().err
    assert "positions='generated' adds nothing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()
