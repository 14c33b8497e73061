"""A static HTML report: sections of text, tables and images in one output directory.

The main job (``sae-flux demo``) writes one; later stages (interpretation, steering) add their
own sections to it rather than starting new reports.

Example:
    >>> report = Report("demo-out", title="sae-flux demo")  # doctest: +SKIP
    >>> report.section("Reconstruction",  # doctest: +SKIP
    ...                table=[{"dictionary": "sae", "fvu": 0.21}])
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
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { display: inline-block; margin: .4em .8em .8em 0; vertical-align: top; }
figcaption { font-size: .85em; color: #555; max-width: 520px; }
img { image-rendering: pixelated; border: 1px solid #ddd; }
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


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def table_html(rows: Sequence[dict[str, Any]]) -> str:
    """An HTML table whose columns are the union of the rows' keys, in first-seen order."""
    if not rows:
        return ""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c, ''))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


@dataclass
class Report:
    """Sections accumulated by the stages of a job, written as ``index.html`` + ``report.json``."""

    out: str | Path
    title: str = "sae-flux report"
    sections: list[Section] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)
    """Every number the report shows, saved as ``report.json`` next to the HTML."""

    def section(self, title: str, **kwargs: Any) -> Section:
        section = Section(title, **kwargs)
        self.sections.append(section)
        return section

    def _render(self, section: Section) -> str:
        parts = [f"<h2>{html.escape(section.title)}</h2>"]
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
        page = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>"
        )
        (out / "index.html").write_text(page, encoding="utf-8")
        (out / "report.json").write_text(json.dumps(self.numbers, indent=2, default=str))
        return out / "index.html"
