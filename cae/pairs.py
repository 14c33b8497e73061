"""Contrastive pairs and loaders for the datasets CAA and the CAE paper train from.

CAA (Rimsky et al. 2024, arXiv 2312.06681) and the CAE paper (Hao et al. 2025, arXiv
2505.03189) build steering vectors from Anthropic's model-written evaluations (Perez et
al. 2022): items with a ``question``, an ``answer_matching_behavior`` and an
``answer_not_matching_behavior``. Two file layouts are common:

- **MWE JSONL** (``anthropics/evals``): one JSON object per line; answers are written
  ``" (A)"`` for A/B questions or ``" Yes"`` / ``" No"`` for persona statements; a few
  files give a list of not-matching answers (the first is used).
- **CAA A/B JSON** (``nrimsky/CAA`` datasets): one JSON list of the same objects, answers
  written ``"(A)"``.

A pair's texts are ``prompt + positive`` and ``prompt + negative``; a completion that does
not start with whitespace gets one space, as the published A/B files assume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

_KEYS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")


class Pair(NamedTuple):
    """One contrastive example: a prompt and two completions.

    Example:
        >>> pair = Pair("Is it kind to help? (A) yes (B) no", " (A", " (B")
        >>> pair.positive, pair.negative
        (' (A', ' (B')
    """

    prompt: str
    """The question or instruction both completions follow."""
    positive: str
    """Completion showing the behaviour (added with a positive multiplier)."""
    negative: str
    """Completion showing its opposite."""


def _completion(text: object, where: str, key: str) -> str:
    if isinstance(text, list) and text:
        text = text[0]
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: {key!r} must be a non-empty string, got {text!r}")
    return text if text[:1].isspace() else " " + text


def pair_from_record(record: object, where: str) -> Pair:
    """Turn one MWE/CAA record into a Pair; ``where`` names it in errors (file:line)."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [k for k in _KEYS if k not in record]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; expected {list(_KEYS)}")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: 'question' must be a non-empty string")
    return Pair(
        question,
        _completion(record["answer_matching_behavior"], where, "answer_matching_behavior"),
        _completion(record["answer_not_matching_behavior"], where, "answer_not_matching_behavior"),
    )


def _text(path: Path) -> str:
    """The file's UTF-8 text; a binary or mis-encoded file is refused naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"dataset file {path} is not UTF-8 text ({err.reason} at byte "
                         f"{err.start}): expected MWE JSONL or CAA JSON") from err


def load_mwe_jsonl(path: str | Path) -> list[Pair]:
    """Read an Anthropic model-written-evaluation JSONL file (blank lines are skipped).

    Example:
        >>> pairs = load_mwe_jsonl("/work/shared/data/mwe/corrigible-neutral-HHH.jsonl")
        >>> pairs[0].positive
        ' (B)'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    pairs = []
    for n, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: malformed JSON ({err.msg})") from err
        pairs.append(pair_from_record(record, f"{path}:{n}"))
    if not pairs:
        raise ValueError(f"{path}: dataset is empty (no JSON lines)")
    return pairs


def load_caa_json(path: str | Path) -> list[Pair]:
    """Read a CAA-style JSON list of A/B items; errors name the item's line in the file.

    Example:
        >>> import json, tempfile
        >>> f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        >>> json.dump([{"question": "Q?", "answer_matching_behavior": "(A)",
        ...             "answer_not_matching_behavior": "(B)"}], f); f.close()
        >>> load_caa_json(f.name)[0].negative
        ' (B)'
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    text = _text(path)
    try:
        records = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from err
    if not isinstance(records, list):
        raise ValueError(f"{path}:1: expected a JSON list of items, got {type(records).__name__}")
    if not records:
        raise ValueError(f"{path}: dataset is empty (an empty list)")
    starts = _item_lines(text, len(records))
    return [pair_from_record(r, f"{path}:{starts[i]} (item {i})") for i, r in enumerate(records)]


def _item_lines(text: str, n: int) -> list[int]:
    """Line number where each top-level item of a JSON list starts (best effort)."""
    decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
    for _ in range(n):
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        lines.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)
    return lines


def load_pairs(path: str | Path) -> list[Pair]:
    """Load ``.jsonl`` as MWE JSONL and ``.json`` as a CAA list (the two common formats).

    Example:
        >>> import json, tempfile, pathlib
        >>> row = {"question": "Help a stranger? (A) yes (B) no",
        ...        "answer_matching_behavior": " (A)", "answer_not_matching_behavior": " (B)"}
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "kind.jsonl"
        >>> _ = path.write_text(json.dumps(row) + "\\n")
        >>> load_pairs(path)
        [Pair(prompt='Help a stranger? (A) yes (B) no', positive=' (A)', negative=' (B)')]
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl":
        return load_mwe_jsonl(path)
    if suffix == ".json":
        return load_caa_json(path)
    raise ValueError(f"unknown dataset format {suffix!r} for {path}; expected .jsonl or .json")


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def chat_prompt(tokenizer: Any, instruction: str, system: str | None = None,
                template: bool | None = None) -> str:
    """``instruction`` as the user turn of the tokenizer's chat template, ending with the
    assistant's generation prompt (so a completion is the assistant's answer).

    ``template``: None uses the template when the tokenizer has one and the plain text
    otherwise; True requires it (a tokenizer without one is a one-line ValueError); False
    keeps the plain text (``system``, if given, then a blank line, then the instruction).
    """
    use = has_chat_template(tokenizer) if template is None else template
    if not use:
        return f"{system}\n\n{instruction}" if system else instruction
    if not has_chat_template(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ValueError(f"tokenizer {name!r} has no chat template (tokenizer.chat_template is "
                         "unset); pass template=False for plain text or set one")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": instruction}]
    return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True))


def chat_pairs(tokenizer: Any, pairs: Sequence[Pair], system: str | None = None,
               template: bool | None = None) -> list[Pair]:
    """Pairs whose prompt (an instruction, e.g. an MWE ``question``) is wrapped in the
    tokenizer's chat template (:func:`chat_prompt`); the completions become the assistant's
    answer with leading whitespace removed. ``cae.train.answer_positions`` reports, per pair,
    the token each completion is read at.

    Example:
        >>> from cae.organism.train import build_tokenizer
        >>> tok = build_tokenizer()
        >>> tok.chat_template = ("{% for m in messages %}{{ m.role }} : {{ m.content }} "
        ...                      "{% endfor %}{% if add_generation_prompt %}answer :{% endif %}")
        >>> chat_pairs(tok, [Pair("is it kind ?", " ( A )", " ( B )")])[0]
        Pair(prompt='user : is it kind ? answer :', positive=' ( A )', negative=' ( B )')
    """
    use = has_chat_template(tokenizer) if template is None else template
    out = []
    for pair in check_pairs(pairs):
        prompt = chat_prompt(tokenizer, pair.prompt, system, use)
        if not use:
            out.append(Pair(prompt, pair.positive, pair.negative))
            continue
        sep = "" if prompt[-1:].isspace() else " "
        out.append(Pair(prompt, sep + pair.positive.lstrip(), sep + pair.negative.lstrip()))
    return out


def dataset_hash(pairs: Iterable[Pair]) -> str:
    """SHA-256 (first 16 hex digits) of the pairs, stored in a vector's metadata."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps(list(pair)).encode())
    return digest.hexdigest()[:16]


def check_pairs(pairs: Sequence[Pair]) -> list[Pair]:
    """Validate an in-memory list of pairs (non-empty, three strings each)."""
    if len(pairs) == 0:
        raise ValueError("no contrastive pairs given (the dataset is empty)")
    out = []
    for i, p in enumerate(pairs):
        if len(p) != 3 or not all(isinstance(s, str) for s in p):
            raise ValueError(f"pair {i}: expected (prompt, positive, negative) strings, got {p!r}")
        out.append(Pair(*p))
    return out
