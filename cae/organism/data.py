"""Write the organism's evaluation files: what ``cae eval`` reads, for both behaviours.

``python -m cae.organism.data DIR`` writes, from held-out scenarios (never in training):

- ``<behaviour>-ab.jsonl``: A/B items in Anthropic's MWE JSONL layout (in distribution;
  ``cae eval`` splits it into the vector's train pairs and held-out test pairs);
- ``<behaviour>-option.jsonl``, ``<behaviour>-statement.jsonl``: the same behaviour in other
  templates (``option 1 / 2``, yes / no statements): out of distribution, ``--other-data``;
- ``<behaviour>-open.txt``: open-ended prompts (``story : ... so``), one per line, for
  ``--open`` with ``--judge-fn cae.organism.corpus:judge_<behaviour>``;
- ``neutral.txt``: behaviour-free sentences separated by ``<sep>`` as in the training
  documents, for the perplexity cost (``--corpus``);
- ``quiz.jsonl``: persona-free quizzes (``which is kind ?``, correct letter = matching), a
  capability probe for the side effects of steering (``--capability``).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> out = Path(tempfile.mkdtemp())
    >>> paths = write_eval_files(out, n_ab=8, n_other=4, n_open=2, n_neutral=10)
    >>> sorted(p.name for p in paths)[:3]
    ['kind-ab.jsonl', 'kind-open.txt', 'kind-option.jsonl']
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from cae.organism.corpus import (
    BEHAVIOURS,
    neutral_text,
    open_prompts,
    quiz_pairs,
    write_mwe_jsonl,
)

logger = logging.getLogger(__name__)


def write_eval_files(out: str | Path, n_ab: int = 256, n_other: int = 128, n_open: int = 64,
                     n_neutral: int = 2000, seed: int = 0) -> list[Path]:
    """Write every evaluation file into ``out``; returns their paths."""
    if min(n_ab, n_other, n_open, n_neutral) < 1:
        raise ValueError("every file needs at least one item")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for b in BEHAVIOURS:
        for fmt, n in (("ab", n_ab), ("option", n_other), ("statement", n_other)):
            path = out / f"{b}-{fmt}.jsonl"
            write_mwe_jsonl(str(path), b, fmt, n, split="test", seed=seed)
            paths.append(path)
        path = out / f"{b}-open.txt"
        path.write_text("\n".join(open_prompts(b, n_open, seed=seed)) + "\n", encoding="utf-8")
        paths.append(path)
    path = out / "neutral.txt"
    path.write_text(neutral_text(n_neutral, seed, sep=" <sep> ") + "\n", encoding="utf-8")
    paths.append(path)
    path = out / "quiz.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for pair in quiz_pairs(n_other, seed=seed):
            fh.write(json.dumps({"question": pair.prompt,
                                 "answer_matching_behavior": pair.positive,
                                 "answer_not_matching_behavior": pair.negative}) + "\n")
    paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m cae.organism.data DIR [--n-ab 256] [--seed 0]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--n-ab", type=int, default=256)
    parser.add_argument("--n-other", type=int, default=128)
    parser.add_argument("--n-open", type=int, default=64)
    parser.add_argument("--n-neutral", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    for path in write_eval_files(args.out, args.n_ab, args.n_other, args.n_open, args.n_neutral,
                                 args.seed):
        logger.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
