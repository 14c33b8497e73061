"""``cae eval`` end to end on the smallest organism: files written, numbers consistent with
the library functions, deterministic with a seed; bad input exits with a clear message."""

from __future__ import annotations

import json

import pytest

from cae.cli import main
from cae.organism.corpus import neutral_text, write_mwe_jsonl


@pytest.fixture
def inputs(tmp_path):
    data = tmp_path / "kind.jsonl"
    write_mwe_jsonl(str(data), "kind", n=32)
    corpus = tmp_path / "neutral.txt"
    corpus.write_text(neutral_text(60))
    return data, corpus


def run(inputs, out, seed=0, capsys=None):
    data, corpus = inputs
    return main(["eval", "--model", "organism:tiny", "--data", str(data), "--corpus",
                 str(corpus), "--out", str(out), "--multipliers", "-4", "0", "4",
                 "--draws", "2", "--context", "32", "--max-windows", "4", "--seed", str(seed)])


def test_eval_writes_json_plots_html_and_is_deterministic(inputs, tmp_path, capsys):
    assert run(inputs, tmp_path / "a") == 0
    printed = json.loads(capsys.readouterr().out)
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    assert set(a) == {"config", "layer_sweep", "behaviour", "sample_efficiency", "perplexity",
                      "summary"}
    for name in ("layer_sweep", "propensity", "efficiency", "perplexity"):
        assert (tmp_path / "a" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "efficiency.png" in (tmp_path / "a" / "index.html").read_text()
    assert (tmp_path / "a" / "vector" / "steering_vector.json").is_file()

    s = a["summary"]
    assert (s["n_train"], s["n_val"], s["n_test"]) == (16, 8, 8)
    assert printed["best_layer"] == s["best_layer"] in (0, 1, 2)
    sweep = a["layer_sweep"]  # on the validation split
    scores = [r["steerability"] for r in sweep["results"]]
    assert abs(scores[sweep["layers"].index(s["best_layer"])]) == max(map(abs, scores))
    assert all(len(r["slopes"]) == 8 for r in sweep["results"])
    best = a["behaviour"]  # the chosen layer, scored on the test split
    assert s["steerability"] == pytest.approx(sum(best["slopes"]) / len(best["slopes"]), abs=1e-5)
    assert s["anti_steerable_layers"] == [k for k, v in zip(sweep["layers"], scores, strict=True)
                                          if v < 0]
    assert a["sample_efficiency"]["sizes"] == [1, 2, 4, 8]  # half of the train split
    assert a["sample_efficiency"]["n_reference"] == 8
    assert a["perplexity"]["multipliers"] == [-4.0, 0.0, 4.0]

    assert run(inputs, tmp_path / "b") == 0
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    a["config"].pop("out"), b["config"].pop("out")
    assert a == b


def test_bad_inputs_exit_with_a_clear_message(inputs, tmp_path, capsys):
    data, corpus = inputs
    assert main(["eval", "--model", "organism:tiny", "--data", str(tmp_path / "no.jsonl"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "dataset file not found" in capsys.readouterr().err
    assert main(["eval", "--model", "organism:tiny", "--data", str(data), "--multipliers", "0",
                 "--out", str(tmp_path / "o")]) == 2
    assert "multipliers need at least two distinct values" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("the river runs past the bridge .")
    assert main(["eval", "--model", "organism:tiny", "--data", str(data), "--corpus", str(short),
                 "--multipliers", "-1", "1", "--draws", "1", "--out", str(tmp_path / "o")]) == 2
    assert "corpus is too short: 7 tokens" in capsys.readouterr().err
    assert main(["eval", "--model", "organism:tiny", "--data", str(data), "--ood", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    assert "give a judge endpoint" in capsys.readouterr().err
    assert not (tmp_path / "o" / "vector").exists()  # refused before any training


def ood_dir(tmp_path):
    """Two published-format OOD files of the organism's language."""
    root = tmp_path / "ood" / "open-ended" / "practical"
    root.mkdir(parents=True)
    for length in ("short", "long"):
        prompts = [{"id": i, "prompt": f"story : your {who} is sad . so"}
                   for i, who in enumerate(["friend", "child"], start=1)]
        (root / f"kind-{length}.json").write_text(json.dumps(prompts))
    (root / "power-short.json").write_text(json.dumps([{"id": 1, "prompt": "story : a king"}]))
    return tmp_path / "ood"


def test_eval_scores_other_templates_and_ood_sets_side_by_side(inputs, tmp_path, capsys):
    from tests.cae.evaluate.test_eval_judge import serve

    data, _ = inputs
    option = tmp_path / "option.jsonl"
    write_mwe_jsonl(str(option), "kind", fmt="option", n=8)
    server, seen = serve(["0.5"])
    try:
        assert main(["eval", "--model", "organism:tiny", "--data", str(data), "--out",
                     str(tmp_path / "s"), "--multipliers", "-4", "4", "--draws", "1",
                     "--adversarial", "2", "--adversarial-tokens", "1",
                     "--other-data", str(option), "--ood", str(ood_dir(tmp_path)),
                     "--ood-behaviour", "kind", "--judge-url",
                     f"http://127.0.0.1:{server.server_port}/v1"]) == 0
    finally:
        server.shutdown()
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    adv = results["adversarial"]
    assert len(adv["inputs"]) == 2 and adv["success_rate"] == sum(adv["reversed"]) / 2
    assert results["summary"]["adversarial"]["success_rate"] == adv["success_rate"]
    rows = results["distribution_shift"]
    assert [r["name"] for r in rows] == ["in-distribution (held out)", "option.jsonl",
                                         "open-ended/kind-long", "open-ended/kind-short"]
    assert [r["n"] for r in rows] == [8, 8, 2, 2]
    assert rows[2]["effect"] == 0.0 and rows[2]["steered"] == 0.5  # the stub always says 0.5
    assert len(seen) == 8  # 2 sets x 2 prompts x (unsteered, steered)
    assert (tmp_path / "s" / "shift.png").is_file()
    assert "ood" not in capsys.readouterr().err


def test_a_failing_judge_exits_cleanly_and_keeps_finished_rows(inputs, tmp_path, capsys):
    from tests.cae.evaluate.test_eval_judge import serve

    data, _ = inputs
    server, _ = serve(["no number here"])
    try:
        assert main(["eval", "--model", "organism:tiny", "--data", str(data), "--out",
                     str(tmp_path / "f"), "--multipliers", "-4", "4", "--draws", "1",
                     "--ood", str(ood_dir(tmp_path)), "--judge-url",
                     f"http://127.0.0.1:{server.server_port}/v1"]) == 2
    finally:
        server.shutdown()
    assert "judge failed after 3 tries: unparseable reply" in capsys.readouterr().err
    kept = json.loads((tmp_path / "f" / "results.json").read_text())
    assert [r["name"] for r in kept["distribution_shift"]] == ["in-distribution (held out)"]
    assert "sample_efficiency" in kept


def test_open_prompts_are_judged_by_a_function_and_match_a_direct_computation(inputs, tmp_path,
                                                                               capsys):
    from cae import SteeringVector
    from cae.evaluate.shift import continuations
    from cae.model import load_language_model
    from cae.organism.corpus import judge_kind, open_prompts

    data, _ = inputs
    prompts = open_prompts("kind", 3)
    (tmp_path / "kind-open.txt").write_text("\n".join(prompts) + "\n\n")
    assert main(["eval", "--model", "organism:tiny", "--data", str(data), "--out",
                 str(tmp_path / "j"), "--multipliers", "-2", "2", "--draws", "1",
                 "--open", str(tmp_path / "kind-open.txt"),
                 "--judge-fn", "cae.organism.corpus:judge_kind"]) == 0
    results = json.loads((tmp_path / "j" / "results.json").read_text())
    row = results["distribution_shift"][-1]
    assert (row["name"], row["metric"], row["n"]) == ("open/kind-open.txt", "judge", 3)
    lm = load_language_model("organism:tiny")
    sv = SteeringVector.load(tmp_path / "j" / "vector")
    layer = results["summary"]["best_layer"]
    from cae.evaluate.behaviour import single_layer

    base = [judge_kind(p, c) for p, c in zip(prompts, continuations(lm, prompts, None, 0.0), strict=True)]
    steered = [judge_kind(p, c) for p, c in
               zip(prompts, continuations(lm, prompts, single_layer(sv, layer), 2.0),
                   strict=True)]
    assert row["unsteered"] == pytest.approx(sum(base) / 3)
    assert row["steered"] == pytest.approx(sum(steered) / 3)


@pytest.mark.parametrize(("extra", "message"), [
    (["--open", "PROMPTS"], "--open prompts need a judge"),
    (["--open", "PROMPTS", "--judge-fn", "no_such_module:judge"], "cannot import module"),
    (["--open", "PROMPTS", "--judge-fn", "cae.organism.corpus:nothing"], "has no callable"),
    (["--open", "PROMPTS", "--judge-fn", "cae.organism.corpus"], "as 'module:function'"),
    (["--open", "MISSING"], "open-ended prompt file not found"),
])
def test_bad_open_ended_settings_are_refused_before_training(inputs, tmp_path, capsys, extra,
                                                              message):
    data, _ = inputs
    (tmp_path / "prompts.txt").write_text("story : your friend is sad . so\n")
    paths = {"PROMPTS": str(tmp_path / "prompts.txt"), "MISSING": str(tmp_path / "none.txt")}
    extra = [paths.get(a, a) for a in extra]
    assert main(["eval", "--model", "organism:tiny", "--data", str(data),
                 "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "vector").exists()


def test_normalize_scales_the_vector_to_the_residual_norm_and_records_it(inputs, tmp_path):
    from cae import SteeringVector

    data, _ = inputs
    assert main(["eval", "--model", "organism:tiny", "--data", str(data), "--out",
                 str(tmp_path / "n"), "--multipliers", "-0.5", "0", "0.5", "--draws", "1",
                 "--normalize"]) == 0
    results = json.loads((tmp_path / "n" / "results.json").read_text())
    norms = results["norm_matched"]["residual_norm"]
    sv = SteeringVector.load(tmp_path / "n" / "vector")
    for layer, vec in sv.vectors.items():
        assert float(vec.norm()) == pytest.approx(norms[str(layer)], rel=1e-5)
    assert results["config"]["normalize"] is True


def test_read_rule_reaches_the_vector_and_a_bad_one_is_refused(inputs, tmp_path, capsys):
    from cae import SteeringVector

    data, _ = inputs
    assert main(["eval", "--model", "organism:tiny", "--data", str(data), "--out",
                 str(tmp_path / "r"), "--multipliers", "-1", "1", "--draws", "1",
                 "--read", "mean"]) == 0
    assert SteeringVector.load(tmp_path / "r" / "vector").meta.read == "mean"
    with pytest.raises(SystemExit):
        main(["eval", "--model", "organism:tiny", "--data", str(data), "--out",
              str(tmp_path / "x"), "--read", "middle"])
    assert "invalid choice: 'middle'" in capsys.readouterr().err


def test_validation_and_test_splits_are_disjoint_and_seeds_give_intervals(inputs, tmp_path,
                                                                          capsys):
    from cae.evaluate.report import split
    from cae.evaluate.seeds import seed_interval
    from cae.pairs import load_pairs

    data, _ = inputs
    pairs = load_pairs(str(data))
    train, val, test = split(pairs, 0.25, 3, 0.25)
    assert len({p.prompt for p in train} | {p.prompt for p in val} | {p.prompt for p in test}) \
        == len({p.prompt for p in pairs}) and not {p.prompt for p in val} & {p.prompt for p in test}
    assert main(["eval", "--model", "organism:tiny", "--data", str(data), "--out",
                 str(tmp_path / "s"), "--multipliers", "-1", "1", "--draws", "1", "--layers", "1",
                 "--seeds", "0", "1", "2"]) == 0
    agg = json.loads((tmp_path / "s" / "seeds.json").read_text())
    runs = [json.loads((tmp_path / "s" / f"seed-{k}" / "results.json").read_text())
            for k in (0, 1, 2)]
    values = [r["summary"]["steerability"] for r in runs]
    assert agg["seeds"] == [0, 1, 2] and agg["summary"]["steerability"]["values"] == values
    mean, ci = seed_interval(values)
    assert agg["summary"]["steerability"]["mean"] == pytest.approx(mean)
    assert agg["summary"]["steerability"]["ci95"] == pytest.approx(list(ci))
    assert len({r["summary"]["mean_p_matching"]["1.0"] for r in runs}) == 3  # other splits
    printed = json.loads(capsys.readouterr().out)
    assert printed["steerability"]["mean"] == pytest.approx(mean)


def test_seed_interval_is_the_student_t_interval():
    from cae.evaluate.seeds import seed_interval, t975

    mean, (lo, hi) = seed_interval([1.0, 2.0, 4.0, 5.0, 3.0])
    sd = (10 / 4) ** 0.5
    assert mean == 3.0 and hi - mean == pytest.approx(2.776 * sd / 5 ** 0.5)
    assert t975(100) == pytest.approx(1.984, abs=2e-3) and seed_interval([2.0]) == (2.0, (2.0, 2.0))
