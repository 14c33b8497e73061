"""The prompting baseline equals the behaviour metrics of the prefixed items; side effects
equal the behaviour metrics of the vector on an unrelated set; ``cae eval`` reports both
beside steering."""

from __future__ import annotations

import json

import pytest

from cae import SteeringVector
from cae.evaluate.baselines import (
    prefixed,
    prompted_choice,
    prompted_open,
    prompting_baselines,
    side_effect,
)
from cae.evaluate.behaviour import BehaviourConfig, behaviour
from cae.evaluate.shift import continuations
from cae.organism.corpus import quiz_pairs
from cae.pairs import Pair
from tests.cae.evaluate.test_eval_behaviour import ITEMS


def test_prefixes_write_the_instruction_or_the_answered_examples(tokenizer):
    ex = [Pair("q : a .", " ( A )", " ( B )"), Pair("q : b .", " yes", " no")]
    instr, shots = prompting_baselines("persona : warmly", "persona : coldly", ex, " <sep> ")
    assert (instr.toward, instr.away) == ("persona : warmly <sep> ", "persona : coldly <sep> ")
    assert shots.toward == "q : a . ( A ) <sep> q : b . yes <sep> "
    assert shots.away == "q : a . ( B ) <sep> q : b . no <sep> "
    assert prefixed(ex[:1], "x ")[0] == Pair("x q : a .", " ( A )", " ( B )")
    with pytest.raises(ValueError, match="needs its opposite"):
        prompting_baselines("persona : warmly", None, [], " ")


@pytest.mark.parametrize("toward", [True, False])
def test_prompted_p_matching_is_the_behaviour_of_the_prefixed_items(lm, toward):
    (b,) = prompting_baselines("persona : warmly", "persona : coldly", [], " <sep> ")
    row = prompted_choice(lm, "ab", ITEMS, b, toward)
    plain = behaviour(lm, ITEMS, None, BehaviourConfig([0.0, 1.0]))
    asked = behaviour(lm, prefixed(ITEMS, b.toward if toward else b.away), None,
                      BehaviourConfig([0.0, 1.0]))
    assert row.unsteered == pytest.approx(plain.mean_p_matching[0], abs=1e-6)
    assert row.steered == pytest.approx(asked.mean_p_matching[0], abs=1e-6)
    diffs = [a[0] - p[0] for a, p in zip(asked.p_matching, plain.p_matching, strict=True)]
    assert row.effect == pytest.approx(sum(diffs) / len(diffs), abs=1e-6)
    assert row.method == ("prompt:instruction" if toward else "prompt:instruction:away")


def test_prompted_open_judges_continuations_of_the_prefixed_prompts(lm):
    (b,) = prompting_baselines("persona : warmly", "persona : coldly", [], " <sep> ")
    prompts = ["story : your friend is sad . so", "story : a king offers you a chance ."]

    def judge(prompt, completion):
        assert not prompt.startswith("persona")  # the judge sees the original prompt
        return float(len(completion.split()) % 3)

    row = prompted_open(lm, "open", prompts, b, judge, max_new_tokens=4)
    asked = continuations(lm, [b.toward + p for p in prompts], None, 0.0, 4)
    assert row.steered == sum(judge(p, c) for p, c in zip(prompts, asked, strict=True)) / 2


def test_side_effects_are_the_behaviour_metrics_on_the_unrelated_set(lm, hf_model):
    sv = SteeringVector.random(hf_model, [1], seed=3, norm=4.0)
    quiz = quiz_pairs(8)
    cfg = BehaviourConfig([-2.0, 0.0, 2.0], positions="all")
    row = side_effect(lm, "quiz", quiz, sv, cfg, "accuracy")
    ref = behaviour(lm, quiz, sv, cfg)
    assert row.mean_p_matching == pytest.approx(ref.mean_p_matching)
    assert row.steerability == pytest.approx(ref.steerability)
    assert row.accuracy == [sum(r[i] > 0 for r in ref.propensity) / 8 for i in range(3)]
    diffs = [r[2] - r[1] for r in ref.p_matching]
    assert row.shift_at_top == pytest.approx(sum(diffs) / 8)


def test_quiz_pairs_balance_letters_and_the_asked_for_act():
    quiz = quiz_pairs(16)
    assert sum(p.positive == " ( A )" for p in quiz) == 8
    assert sum("which is kind ?" in p.prompt or "which takes power ?" in p.prompt
               for p in quiz) == 8


def test_eval_reports_the_prompting_baseline_and_side_effects_beside_steering(tmp_path, capsys):
    from cae.cli import main
    from cae.organism.data import write_eval_files

    d = tmp_path / "data"
    write_eval_files(d, n_ab=32, n_other=8, n_open=2, n_neutral=40)
    assert main(["eval", "--model", "organism:tiny", "--data", str(d / "kind-ab.jsonl"),
                 "--out", str(tmp_path / "e"), "--multipliers", "-1", "0", "1", "--draws", "1",
                 "--layers", "1", "--positions", "all",
                 "--other-data", str(d / "kind-option.jsonl"),
                 "--open", str(d / "kind-open.txt"),
                 "--judge-fn", "cae.organism.corpus:judge_kind",
                 "--prompt-instruction", "persona : warmly",
                 "--prompt-instruction-not", "persona : coldly", "--prompt-examples", "2",
                 "--prompt-separator", " <sep> ", "--side-data", str(d / "power-ab.jsonl"),
                 "--capability", str(d / "quiz.jsonl")]) == 0
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    s = res["summary"]
    assert set(s["prompt_p_matching"]) == {"instruction", "examples"}
    assert set(s["prompt_p_matching"]["instruction"]) == {"toward", "away"}
    methods = [(r["name"], r["method"]) for r in res["distribution_shift"]]
    for name in ("in-distribution (held out)", "kind-option.jsonl", "open/kind-open.txt"):
        assert [m for n, m in methods if n == name] == ["steering", "prompt:instruction",
                                                        "prompt:examples"]
    assert set(s["side_effects"]) == {"power-ab.jsonl", "quiz.jsonl"}
    assert s["side_effects"]["quiz.jsonl"]["metric"] == "accuracy"
    assert set(s["side_effects"]["power-ab.jsonl"]["mean_p_matching"]) == {"-1.0", "0.0", "1.0"}
    assert set(s["shift_effect_prompt_examples"]) == set(s["shift_effect"])


@pytest.mark.parametrize("flags, message", [
    (["--prompt-instruction", "persona : warmly"], "a prompting instruction needs its opposite"),
    (["--prompt-examples", "99"], "99 prompt examples asked for but the train split has 16"),
    (["--side-data", "nowhere.jsonl"], "dataset file not found: nowhere.jsonl"),
])
def test_bad_baseline_settings_are_one_clear_line(tmp_path, capsys, flags, message):
    from cae.cli import main
    from cae.organism.corpus import write_mwe_jsonl

    write_mwe_jsonl(str(tmp_path / "kind.jsonl"), "kind", n=32)
    assert main(["eval", "--model", "organism:tiny", "--data", str(tmp_path / "kind.jsonl"),
                 "--out", str(tmp_path / "o"), "--multipliers", "-1", "1", "--draws", "1",
                 *flags]) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if line and not line.startswith("Loading weights")]
    assert len(err) == 1 and message in err[0]
