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
    assert set(a) == {"config", "layer_sweep", "sample_efficiency", "perplexity", "summary"}
    for name in ("layer_sweep", "propensity", "efficiency", "perplexity"):
        assert (tmp_path / "a" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "efficiency.png" in (tmp_path / "a" / "index.html").read_text()
    assert (tmp_path / "a" / "vector" / "cfg.json").is_file()

    s = a["summary"]
    assert (s["n_train"], s["n_test"]) == (24, 8)
    assert printed["best_layer"] == s["best_layer"] in (0, 1)
    sweep = a["layer_sweep"]
    best = sweep["results"][sweep["layers"].index(s["best_layer"])]
    assert s["steerability"] == max(r["steerability"] for r in sweep["results"])
    assert s["steerability"] == pytest.approx(sum(best["slopes"]) / len(best["slopes"]), abs=1e-5)
    assert a["sample_efficiency"]["sizes"] == [1, 2, 4, 8, 16, 24]
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
    assert results["summary"]["adversarial_success_rate"] == adv["success_rate"]
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
