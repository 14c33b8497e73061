"""The HTML feature browser: one card per feature (top images, explanation, scores, density).

The presentation step of Shabalin et al. 2025 (arXiv 2505.24360): each card shows the feature's
selected top images with heatmaps (:func:`sae_flux.interp.select.render_card`), its explanation
and its scores. Pages are static (no JavaScript), so they open from disk; ``per_page`` cards per
page (``browser.html``, ``browser-2.html``, ...) with links between them, so every live feature can
be shown. A card with a ``flag`` (for example an explanation whose ground-truth score is within the
random floor, :func:`sae_flux.interp.score.near_floor`) shows the reason in a warning box, and its
explanation is not set in bold.

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
img { image-rendering: pixelated; max-width: 100%; } .scores { color: #555; }
.flag { background: #fff4d6; border-color: #e0a800; } .warn { color: #8a5a00; }
.pages a, .pages b { margin-right: .5em; }
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
    flag: str = ""
    """Why the explanation should not be trusted (empty: no flag)."""


def _card_html(card: Card) -> str:
    scores = ", ".join(f"{k} {v:.3g}" for k, v in card.scores.items())
    details = "".join(f"<li>{html.escape(d)}</li>" for d in card.details)
    if not card.explanation:
        said = '<p class="scores">(not explained)</p>'
    elif card.flag:
        said = (f"<p>{html.escape(card.explanation)}</p>"
                f'<p class="warn">&#9888; {html.escape(card.flag)}</p>')
    else:
        said = f"<p><b>{html.escape(card.explanation)}</b></p>"
    return (
        f'<div class="card{" flag" if card.flag else ""}" id="{html.escape(card.dictionary)}-{card.feature}">'
        f"<h3>{html.escape(card.dictionary)} feature {card.feature}</h3>"
        + (f'<img src="{html.escape(card.image)}" alt="top images of feature {card.feature}">' if card.image else "")
        + said
        + f'<p class="scores">{html.escape(scores)}</p>'
        + (f"<ul>{details}</ul>" if details else "")
        + "</div>"
    )


def page_name(file: str, number: int) -> str:
    """``browser.html`` for page 1, ``browser-2.html`` for page 2, ..."""
    stem, dot, suffix = file.rpartition(".")
    return file if number == 1 else f"{stem}-{number}{dot}{suffix}"


def write_browser(out: str | Path, cards: Sequence[Card], title: str = "Feature browser",
                  intro: str = "", file: str = "browser.html", per_page: int = 48) -> Path:
    """Write ``out/<file>`` (and further pages) with the cards grouped by dictionary; returns page 1."""
    if per_page < 1:
        raise ValueError(f"per_page must be >= 1, got {per_page}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for card in cards:
        counts[card.dictionary] = counts.get(card.dictionary, 0) + 1
    flagged = sum(1 for c in cards if c.flag)
    toc = " · ".join(f"{html.escape(d)} ({n} features)" for d, n in counts.items())
    pages = [list(cards[i:i + per_page]) for i in range(0, len(cards), per_page)] or [[]]
    for number, chunk in enumerate(pages, start=1):
        nav = " ".join(f"<b>{n}</b>" if n == number else f'<a href="{page_name(file, n)}">{n}</a>'
                       for n in range(1, len(pages) + 1))
        first = (number - 1) * per_page + 1
        body, current = [], None
        for card in chunk:
            if card.dictionary != current:
                current = card.dictionary
                body.append(f'<h2 id="d-{html.escape(current)}">{html.escape(current)}</h2>')
            body.append(_card_html(card))
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
                f"<p>{html.escape(intro)}</p><p>{toc}; {flagged} flagged near the random floor.</p>"
                f'<p class="pages">Page {number} of {len(pages)} (cards {first}-{first + len(chunk) - 1} of '
                f"{len(cards)}): {nav}</p>{''.join(body)}<p class=\"pages\">{nav}</p></body></html>")
        (out / page_name(file, number)).write_text(page, encoding="utf-8")
    return out / file


def card_details(record: dict[str, Any]) -> list[str]:
    """Per-image descriptions of an explanation record, as list items."""
    return [str(d) for d in record.get("descriptions", [])]
