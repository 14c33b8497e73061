"""Probe the LM organism: does it use its persona, and do CAA vectors steer it?

Per size and behaviour, on 128 held-out A/B items (``cae.organism.corpus.items``), the mean
p(matching letter) / (p(A) + p(B)) (CAA's metric):

- ``quiz``: accuracy on persona-free quizzes (``which is kind ? ...``): letter binding;
- ``base``: the item alone (designed to sit near 0.5);
- ``header_matching`` / ``header_not``: after ``persona : <tone> <sep>`` naming the matching /
  not-matching persona (in-context persona use: near 1 / near 0 when learned);
- ``steer``: per layer, a CAA vector (``SteeringVector.train``, answer-letter read, mean
  difference over 128 training-scenario items) applied at every position with each
  multiplier; ``norm`` is the vector's norm at that layer.

Run: ``python benchmarks/cae_organism.py [--sizes small] [--multipliers -16 -8 8 16]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

# benchmarks/cae.py would shadow the package: keep this folder off sys.path
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402

from cae import SteeringVector  # noqa: E402
from cae.model import wrap  # noqa: E402
from cae.organism import SIZES, load  # noqa: E402
from cae.organism.corpus import BEHAVIOURS, TONES, items, quiz_item  # noqa: E402


def p_matching(hf, tokenizer, prompts: list[str], letters: list[str],
               sv: SteeringVector | None = None, multiplier: float = 0.0) -> float:
    """Mean p(matching letter) / (p(A) + p(B)) at the position after ``prompt + " ("``."""
    ids = tokenizer.convert_tokens_to_ids(["A", "B"])
    tokenizer.padding_side = "right"
    enc = tokenizer([p + " (" for p in prompts], return_tensors="pt", padding=True)
    with torch.no_grad():
        if sv is None:
            logits_BTV = hf(**enc).logits
        else:
            with sv.apply(hf, multiplier, positions="all"):
                logits_BTV = hf(**enc).logits
    last_B = enc["attention_mask"].sum(1) - 1
    p_B2 = torch.softmax(logits_BTV[torch.arange(len(prompts)), last_B][:, ids], -1)
    match_B = torch.tensor([0 if x == "A" else 1 for x in letters])
    return round(p_B2[torch.arange(len(prompts)), match_B].mean().item(), 3)


def probe(size: str, multipliers: list[float]) -> dict:
    hf, tokenizer = load(size)
    rng = random.Random(0)
    quizzes = [quiz_item(rng.choice(BEHAVIOURS), rng) for _ in range(200)]
    out: dict = {"quiz": p_matching(hf, tokenizer, [q.rsplit(" (", 1)[0] for q in quizzes],
                                    [q.rsplit("( ", 1)[1][0] for q in quizzes])}
    lm = wrap(hf, tokenizer)
    for behaviour in BEHAVIOURS:
        test = items(behaviour, "ab", 128)
        letters = ["A" if t.matching == "( A )" else "B" for t in test]
        prompts = [t.prompt for t in test]
        good, bad = TONES[behaviour][0][0], TONES[behaviour][1][0]
        row: dict = {
            "base": p_matching(hf, tokenizer, prompts, letters),
            "header_matching": p_matching(hf, tokenizer, [f"persona : {good} <sep> {p}"
                                                          for p in prompts], letters),
            "header_not": p_matching(hf, tokenizer, [f"persona : {bad} <sep> {p}"
                                                     for p in prompts], letters),
            "multipliers": multipliers, "steer": {},
        }
        pairs = [it.pair() for it in items(behaviour, "ab", 128, split="train")]
        for layer in range(hf.config.num_hidden_layers):
            sv = SteeringVector.train(lm, pairs, layers=[layer])
            row["steer"][layer] = {
                "norm": round(float(sv.vectors[layer].norm()), 3),
                "p_matching": [p_matching(hf, tokenizer, prompts, letters, sv, m)
                               for m in multipliers],
            }
        out[behaviour] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--multipliers", type=float, nargs="+", default=[-32, -8, 8, 32])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps({size: probe(size, args.multipliers) for size in args.sizes}))


if __name__ == "__main__":
    main()
