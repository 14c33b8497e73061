"""The report reads as a report: labelled headers with units, intervals in the cells, no overflow, conclusions."""

from __future__ import annotations

from sae_flux.demo import overall_conclusion
from sae_flux.report import Report, label, table_html
from sae_flux.steering.stage import conclusion, with_interval


def test_headers_are_readable_labels_with_units_and_intervals_share_a_cell():
    page = table_html([{"method": "sae", "hit": 0.25, "hit_low": 0.0456, "hit_high": 0.6994, "share_iou>=0.1": 0.5,
                        "corrected": None}])
    assert "<th title=\"hit\">hit rate (share of images)</th>" in page and "hit_low" not in page.replace('title="', "")
    assert "<td>0.25 [0.0456, 0.6994]</td>" in page and "<td>n/a</td>" in page
    assert label("fvu") == "FVU (held-out, 0 = perfect)" and label("share_iou>=0.1") == "share iou>=0.1"
    assert page.startswith('<div class="table">')  # wide tables scroll inside their box


def test_report_and_sections_state_what_to_conclude(tmp_path):
    report = Report(tmp_path, title="t")
    report.section("Reconstruction", table=[{"fvu": 0.2}], conclusion="sae reconstructs best")
    report.section("Timings", table=[{"stage": "x", "seconds": 1.0}])
    report.conclusion = overall_conclusion(report)
    assert report.conclusion == "On this organism, reconstruction: sae reconstructs best."
    page = report.write().read_text()
    assert page.index("What to conclude:") < page.index("<h2>Reconstruction</h2>")
    assert "<b>Conclusion:</b> sae reconstructs best" in page and "max-width: 100%" in page


def test_steering_hit_rates_carry_wilson_intervals_and_the_conclusion_says_if_they_separate():
    rows = [with_interval({"concept": "red", "method": m, "scale": s, "hit": h}, 4)
            for m, s, h in (("none", 0.0, 0.0), ("sae", 0.8, 0.25), ("diff-of-means", 1.6, 1.0))]
    assert rows[0]["images"] == 4 and rows[0]["hit_low"] == 0.0 and round(rows[0]["hit_high"], 3) == 0.49
    assert round(rows[2]["hit_low"], 3) == 0.51
    assert "diff-of-means x1.6) hits 100% [51%, 100%] of images vs 0% unsteered (a clear effect)" in conclusion(rows)
    weak = [with_interval({"concept": "red", "method": m, "scale": 1.0, "hit": h}, 4) for m, h in (("none", 0.0), ("sae", 0.5))]
    assert "not distinguishable at this sample size" in conclusion(weak)
