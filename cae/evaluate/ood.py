"""Reader for the CAE paper's out-of-distribution prompt sets, as published.

The CAE paper (Hao et al. 2025, arXiv 2505.03189; repository YixiongHao/AEP_OOD_evaluation)
tests steering vectors on realistic user prompts: ``choice-qa/`` and ``open-ended/``
directories, grouped ``practical/`` and ``safety/``, one JSON file per behaviour and length
(``<behaviour>-<short|medium|long>.json``), each a JSON list of ``{"id", "prompt"}`` objects
(open-ended files may add a ``"criteria"`` rubric for a judge), 10 prompts per file.
Anything else is refused with an error naming the file and the problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

KINDS = ("choice-qa", "open-ended")
"""Top-level prompt-set kinds of the published layout."""
LENGTHS = ("short", "medium", "long")
"""Prompt lengths, the suffix of every file name."""
_KEYS = {"id", "prompt", "criteria"}


@dataclass(frozen=True)
class OodPrompt:
    """One prompt of an OOD set."""

    id: int
    """The file's ``id``."""
    prompt: str
    """The user prompt."""
    criteria: str | None = None
    """Rubric for a judge (some open-ended files), else None."""


@dataclass(frozen=True)
class OodSet:
    """One published file."""

    kind: str | None
    """``choice-qa`` or ``open-ended`` (from the path; None outside that layout)."""
    group: str | None
    """``practical`` or ``safety`` (the directory below the kind), else None."""
    behaviour: str
    """File name without the length suffix (``power-seeking-inclination``)."""
    length: str
    """``short``, ``medium`` or ``long``."""
    prompts: tuple[OodPrompt, ...]
    """The prompts in file order."""
    path: str
    """Where it was read from."""


def _prompt(record: object, where: str) -> OodPrompt:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: unknown OOD format: expected an object with 'id' and "
                         f"'prompt', got {type(record).__name__}")
    unknown = set(record) - _KEYS
    if "prompt" not in record or "id" not in record or unknown:
        raise ValueError(f"{where}: unknown OOD format: keys {sorted(record)}, expected 'id', "
                         "'prompt' and optionally 'criteria'")
    prompt, criteria = record["prompt"], record.get("criteria")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: 'prompt' must be a non-empty string")
    if not isinstance(record["id"], int) or (criteria is not None and not isinstance(criteria, str)):
        raise ValueError(f"{where}: 'id' must be an integer and 'criteria' a string")
    return OodPrompt(record["id"], prompt, criteria)


def load_ood_file(path: str | Path) -> OodSet:
    """Read one published OOD file.

    Example:
        >>> s = load_ood_file("/work/shared/data/cae-ood/choice-qa/safety/"
        ...                   "power-seeking-inclination-short.json")
        >>> (s.kind, s.group, s.behaviour, s.length, len(s.prompts))
        ('choice-qa', 'safety', 'power-seeking-inclination', 'short', 10)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OOD file not found: {path}")
    stem, _, length = path.stem.rpartition("-")
    if path.suffix != ".json" or length not in LENGTHS or not stem:
        raise ValueError(f"{path}: unknown OOD format: expected a '<behaviour>-<length>.json' "
                         f"file with length in {list(LENGTHS)}")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from err
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path}: unknown OOD format: expected a non-empty JSON list of prompts")
    parts = path.parts
    kind = next((k for k in KINDS if k in parts), None)
    group = parts[parts.index(kind) + 1] if kind and parts.index(kind) + 2 < len(parts) else None
    prompts = tuple(_prompt(r, f"{path} (item {i})") for i, r in enumerate(records))
    return OodSet(kind, group, stem, length, prompts, str(path))


def load_ood_dir(root: str | Path) -> list[OodSet]:
    """Every ``*.json`` file under ``root`` (sorted by path), as published."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"OOD directory not found: {root}")
    files = sorted(root.rglob("*.json"))
    if not files:
        raise ValueError(f"{root}: no OOD prompt files (*.json) found")
    return [load_ood_file(f) for f in files]
