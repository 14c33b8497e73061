"""The HTML feature browser: one card per feature (top images, explanation, scores, density).

The presentation step of Shabalin et al. 2025 (arXiv 2505.24360): each card shows the feature's
selected top images with heatmaps (:func:`sae_flux.interp.select.render_card`), its explanation
and its scores. The page is static (no JavaScript), so it opens from disk.

Example:
    >>> write_browser("demo-out/interp",  # doctest: +SKIP
    ...               [Card("sae", 3, "cards/sae-3.png", "red", {"iou": 0.7})])
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.card { display: inline-block; vertical-align: top; border: 1px solid #ccc; border-radius: 6px;
        padding: .5em; margin: .4em; max-width: 760px; }
.card h3 { margin: 0 0 .3em 0; font-size: 1em; } .card p { margin: .2em 0; font-size: .88em; }
img { image-rendering: pixelated; } .scores { color: #555; }
"""


@dataclass
class Card:
    """One feature's card; ``image`` is relative to the browser page."""

    dictionary: str
    feature: int
    image: str
    explanation: str
    scores: dict[str, float] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)


def _card_html(card: Card) -> str:
    scores = ", ".join(f"{k} {v:.3g}" for k, v in card.scores.items())
    details = "".join(f"<li>{html.escape(d)}</li>" for d in card.details)
    return (
        f'<div class="card" id="{html.escape(card.dictionary)}-{card.feature}">'
        f"<h3>{html.escape(card.dictionary)} feature {card.feature}</h3>"
        f'<img src="{html.escape(card.image)}" alt="top images">'
        f"<p><b>{html.escape(card.explanation)}</b></p>"
        f'<p class="scores">{html.escape(scores)}</p>'
        + (f"<ul>{details}</ul>" if details else "")
        + "</div>"
    )


def write_browser(out: str | Path, cards: Sequence[Card], title: str = "Feature browser",
                  intro: str = "", file: str = "browser.html") -> Path:
    """Write ``out/<file>`` with the cards grouped by dictionary, in the given order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[Card]] = {}
    for card in cards:
        groups.setdefault(card.dictionary, []).append(card)
    toc = " · ".join(f'<a href="#d-{html.escape(d)}">{html.escape(d)}</a> ({len(c)})' for d, c in groups.items())
    body = "".join(
        f'<h2 id="d-{html.escape(d)}">{html.escape(d)}</h2>' + "".join(_card_html(c) for c in group)
        for d, group in groups.items()
    )
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(intro)}</p><p>{toc}</p>{body}</body></html>")
    path = out / file
    path.write_text(page, encoding="utf-8")
    return path


def card_details(record: dict[str, Any]) -> list[str]:
    """Per-image descriptions of an explanation record, as list items."""
    return [str(d) for d in record.get("descriptions", [])]
