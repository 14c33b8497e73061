"""Read-position rules: which tokens of a completion a steering vector is read from.

CAA (Rimsky et al. 2024) reads the residual stream at the answer-letter token: for a
completion written ``" (A)"`` that is the ``A`` (index -2 of the text). ``steering-vectors``
and ``repeng`` also read the last token or average over the completion. Each rule is a
small function from the completion's decoded tokens to the indices (into the completion)
that are averaged; ``aligned`` rules compare positive and negative at the same position, so
both completions must tokenize to the same length.

Example: the tokens each rule of :data:`READ_RULES` reads in the completion ``" (A)"``:

    >>> tokens = [" (", "A", ")"]
    >>> {name: rule.select(tokens) for name, rule in READ_RULES.items()}
    {'answer': [1], 'last': [2], 'mean': [0, 1, 2]}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Select = Callable[[Sequence[str]], list[int]]


def answer_token(tokens: Sequence[str]) -> list[int]:
    """CAA: the last completion token that holds a letter or digit (``A`` of ``" (A)"``)."""
    for i in range(len(tokens) - 1, -1, -1):
        if any(ch.isalnum() for ch in tokens[i]):
            return [i]
    return [len(tokens) - 1]


def last_token(tokens: Sequence[str]) -> list[int]:
    """The final token of the completion."""
    return [len(tokens) - 1]


def completion_mean(tokens: Sequence[str]) -> list[int]:
    """Every token of the completion (their activations are averaged)."""
    return list(range(len(tokens)))


@dataclass(frozen=True)
class ReadRule:
    """A named read-position rule."""

    name: str
    """Registry name, stored in a vector's metadata."""
    select: Select
    """Completion tokens -> indices to average."""
    aligned: bool
    """Whether positive and negative must have the same number of completion tokens."""


READ_RULES: dict[str, ReadRule] = {
    "answer": ReadRule("answer", answer_token, aligned=True),
    "last": ReadRule("last", last_token, aligned=False),
    "mean": ReadRule("mean", completion_mean, aligned=False),
}
"""Every read rule by name (``read=`` of ``SteeringVector.train`` and ``cae train --read``)."""


def read_rule(name: str) -> ReadRule:
    """Look a rule up by name with a clear error."""
    if name not in READ_RULES:
        raise ValueError(f"unknown read rule {name!r}; choose from {sorted(READ_RULES)}")
    return READ_RULES[name]
