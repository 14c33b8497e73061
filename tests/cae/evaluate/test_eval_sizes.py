"""Model-size comparison: the multiplier at an equal behaviour shift and the perplexity
increase there, by hand; and ``cae eval`` over two organism sizes."""

from __future__ import annotations

import json

import pytest

from cae.cli import main
from cae.evaluate.sizes import degradation, multiplier_at_shift, shift_cost_curve
from cae.organism.corpus import neutral_text, write_mwe_jsonl


def test_multiplier_at_shift_interpolates_between_measured_points():
    ms, p = [-2.0, 0.0, 2.0, 4.0], [0.40, 0.50, 0.54, 0.62]
    assert multiplier_at_shift(ms, p, 0.04) == pytest.approx(2.0)
    assert multiplier_at_shift(ms, p, 0.08) == pytest.approx(3.0)   # 0.54 -> 0.62 over 2..4
    assert multiplier_at_shift(ms, p, 0.02) == pytest.approx(1.0)
    assert multiplier_at_shift(ms, p, 0.5) is None
    assert multiplier_at_shift([-1.0, 1.0], [0.4, 0.6], 0.05) == pytest.approx(0.5)  # p(0) = 0.5


@pytest.mark.parametrize("ms, target, message", [
    ([0.0, 1.0], 0.0, "target_shift must be positive"),
    ([1.0, 2.0], 0.1, "must span 0"),
])
def test_bad_shift_inputs_are_refused(ms, target, message):
    with pytest.raises(ValueError, match=message):
        multiplier_at_shift(ms, [0.5, 0.6], target)


def test_degradation_reads_the_perplexity_increase_at_that_multiplier():
    results = {
        "layer_sweep": {"layers": [0, 1], "best_layer": 1, "results": [
            {}, {"multipliers": [0.0, 2.0, 4.0], "mean_p_matching": [0.5, 0.54, 0.62],
                 "steerability": 0.1}]},
        "perplexity": {"multipliers": [0.0, 2.0, 4.0], "increase": [0.0, 0.1, 0.3]},
    }
    row = degradation(results, 0.08, "m")
    assert (row.best_layer, row.multiplier_at_shift) == (1, pytest.approx(3.0))
    assert row.perplexity_increase_at_shift == pytest.approx(0.2)
    with pytest.raises(ValueError, match="needs a perplexity corpus"):
        degradation({"layer_sweep": results["layer_sweep"]}, 0.08, "m")
    shift, increase = shift_cost_curve(results)
    assert shift == pytest.approx([0.04, 0.12]) and increase == pytest.approx([0.1, 0.3])


def test_eval_over_two_organism_sizes_writes_sizes_json(tmp_path, capsys):
    data, corpus = tmp_path / "kind.jsonl", tmp_path / "neutral.txt"
    write_mwe_jsonl(str(data), "kind", n=24)
    corpus.write_text(neutral_text(30))
    assert main(["eval", "--model", "organism:tiny", "organism:small", "--data", str(data),
                 "--corpus", str(corpus), "--out", str(tmp_path / "z"), "--multipliers", "0",
                 "8", "--draws", "1", "--context", "32", "--max-windows", "2",
                 "--target-shift", "0.001"]) == 0
    sizes = json.loads((tmp_path / "z" / "sizes.json").read_text())
    assert [r["model"] for r in sizes["rows"]] == ["organism:tiny", "organism:small"]
    for name in ("organism_tiny", "organism_small"):
        assert (tmp_path / "z" / name / "results.json").is_file()
    assert json.loads(capsys.readouterr().out)["sizes"] == sizes["rows"]
    assert set(sizes["curves"]) == {"organism:tiny", "organism:small"}
    assert (tmp_path / "z" / "sizes.png").read_bytes()[:4] == b"\x89PNG"
