"""A static HTML report: sections of text, tables and images in one output directory.

The main job (``sae-flux demo``) writes one; later stages (interpretation, steering) add their
own sections to it rather than starting new reports.

Tables are written for a reader: a column header is the readable label of its field (with its
unit) from :data:`LABELS` (unknown fields: underscores become spaces); a field ``x`` with
``x_low`` / ``x_high`` beside it is shown as one cell ``x [low, high]`` (a 95% interval); wide
tables scroll inside their box instead of overflowing the page. A section and the report may
carry a one-sentence ``conclusion``: what the reader should take from it, shown first.

Example:
    >>> report = Report("demo-out", title="sae-flux demo")  # doctest: +SKIP
    >>> report.section("Reconstruction",  # doctest: +SKIP
    ...                table=[{"dictionary": "sae", "fvu": 0.21}],
    ...                conclusion="The SAE reconstructs held-out activations with FVU 0.21.")
    >>> report.write()          # demo-out/index.html  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.table { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; max-width: 11em; white-space: normal; vertical-align: bottom; }
td { white-space: nowrap; } td:first-child, th:first-child { text-align: left; }
.conclusion { background: #eef6ee; border-left: 4px solid #4a9a4a; padding: .4em .7em; }
figure { display: inline-block; margin: .4em .8em .8em 0; vertical-align: top; }
figcaption { font-size: .85em; color: #555; max-width: 520px; }
img { image-rendering: pixelated; border: 1px solid #ddd; max-width: 100%; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: .85em; }
"""


@dataclass
class Figure:
    """An image file (relative to the report directory) with a caption."""

    path: str
    caption: str = ""


@dataclass
class Section:
    """One titled part of the report."""

    title: str
    text: str = ""
    table: Sequence[dict[str, Any]] = ()
    figures: Sequence[Figure] = ()
    html: str = ""
    """Raw HTML appended to the section (already escaped by the caller)."""
    conclusion: str = ""
    """One sentence: what the reader should conclude from this section."""


#: Readable column headers (with units) of the fields the stages report.
LABELS: dict[str, str] = {
    "dictionary": "dictionary", "architecture": "architecture", "latents": "latents (count)",
    "fvu": "FVU (held-out, 0 = perfect)", "explained_variance": "explained variance (share)",
    "l0": "L0 (active latents per token)", "dead_fraction": "dead latents (share)", "tokens": "tokens (count)",
    "features": "features (count)", "live": "live features (count)", "mean_iou": "mean best IoU (0-1)",
    "median_iou": "median best IoU (0-1)", "q25_iou": "best IoU, 25th percentile", "q75_iou": "best IoU, 75th percentile",
    "concepts_covered": "concepts covered (count)", "concepts_total": "concepts (count)",
    "explained": "features explained (count)", "mean_detection": "mean detection score (0-1, 0.5 = chance)",
    "concept": "target concept", "method": "direction", "scale": "scale (x mean token norm)",
    "first_steps": "steered steps (first n)", "hit": "hit rate (share of images)",
    "outside": "change outside the region (mean |pixel|, 0-1)", "clean": "on-palette pixels (share)",
    "images": "images (count)", "stage": "stage", "seconds": "time (s)", "rater": "rater",
    "explanations": "explanations", "detection": "detection (0-1, 0.5 = chance)",
    "corrected": "prevalence-corrected detection (0-1)", "fuzzing": "fuzzing (0-1, 0.5 = chance)",
}


def label(field: str) -> str:
    """The readable header of a field (``share_iou>=0.1`` -> ``share iou>=0.1``)."""
    return LABELS.get(field, field.replace("_", " "))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Fields in first-seen order, without the ``_low`` / ``_high`` bounds merged into their field."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    bounds = {f"{k}_{end}" for k in fields for end in ("low", "high")
              if f"{k}_low" in fields and f"{k}_high" in fields}
    return [k for k in fields if k not in bounds]


def _value(row: dict[str, Any], column: str) -> str:
    value = row.get(column, "")
    low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
    if value is None:
        return "n/a"
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        return f"{_cell(value)} [{_cell(float(low))}, {_cell(float(high))}]"
    return _cell(value)


def table_html(rows: Sequence[dict[str, Any]]) -> str:
    """An HTML table of the rows' fields (first-seen order) under readable headers, intervals merged."""
    if not rows:
        return ""
    columns = _columns(rows)
    head = "".join(f'<th title="{html.escape(c)}">{html.escape(label(c))}</th>' for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_value(row, c)}</td>" for c in columns) + "</tr>" for row in rows)
    return f'<div class="table"><table><tr>{head}</tr>{body}</table></div>'


@dataclass
class Report:
    """Sections accumulated by the stages of a job, written as ``index.html`` + ``report.json``."""

    out: str | Path
    title: str = "sae-flux report"
    sections: list[Section] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    """Every number the report shows, saved as ``report.json`` next to the HTML."""
    conclusion: str = ""
    """One sentence under the title: what the reader should conclude from the whole report."""

    def section(self, title: str, **kwargs: Any) -> Section:
        section = Section(title, **kwargs)
        self.sections.append(section)
        return section

    def _render(self, section: Section) -> str:
        parts = [f"<h2>{html.escape(section.title)}</h2>"]
        if section.conclusion:
            parts.append(f'<p class="conclusion"><b>Conclusion:</b> {html.escape(section.conclusion)}</p>')
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        parts.append(table_html(section.table))
        for fig in section.figures:
            parts.append(
                f'<figure><img src="{html.escape(fig.path)}"><figcaption>'
                f"{html.escape(fig.caption)}</figcaption></figure>"
            )
        parts.append(section.html)
        return "\n".join(parts)

    def write(self) -> Path:
        out = Path(self.out)
        out.mkdir(parents=True, exist_ok=True)
        body = "\n".join(self._render(s) for s in self.sections)
        if self.conclusion:
            body = f'<p class="conclusion"><b>What to conclude:</b> {html.escape(self.conclusion)}</p>\n{body}'
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>"
        )
        (out / "index.html").write_text(page, encoding="utf-8")
        (out / "report.json").write_text(json.dumps(self.numbers, indent=2, default=str))
        return out / "index.html"
