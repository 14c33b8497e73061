"""Probe the LM organism: does it use its persona, and do CAA vectors steer it?

Per size and behaviour, on 128 held-out A/B items (``cae.organism.corpus.items``), the mean
p(matching letter) / (p(A) + p(B)) (CAA's metric):

- ``quiz``: accuracy on persona-free quizzes (``which is kind ? ...``): letter binding;
- ``base``: the item alone (designed to sit near 0.5);
- ``header_matching`` / ``header_not``: after ``persona : <tone> <sep>`` naming the matching /
  not-matching persona (in-context persona use: near 1 / near 0 when learned);
- ``context_matching`` / ``context_not``: after two earlier A/B items (training scenarios)
  answered with the matching / not-matching act and its tone word;
All numbers are ``cae.evaluate.behaviour``'s mean p(matching).

- ``steer``: per layer, a CAA vector (``SteeringVector.train``, answer-letter read unless
  ``--read``, mean difference over 128 training-scenario items) applied with each multiplier at every
  position (``p_matching``) and at the answer position alone (``p_matching_prompt_end``,
  CAA's "from the end of the instruction" for a one-token answer); ``norm`` is the vector's
  norm at that layer.

Run: ``python benchmarks/cae_organism.py [--sizes small] [--multipliers -2 -1 1 2] [--read mean]
[--weights DIR]`` (``--weights``: a ``python -m cae.organism.train --out DIR`` run instead of the
shipped organism).
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
from cae.evaluate.behaviour import BehaviourConfig, behaviour  # noqa: E402
from cae.model import decoder_layers, load_language_model  # noqa: E402
from cae.organism import SIZES  # noqa: E402
from cae.organism.corpus import BEHAVIOURS, TONES, items, make_item, quiz_item  # noqa: E402
from cae.pairs import Pair  # noqa: E402
from cae.read import READ_RULES  # noqa: E402

UNSTEERED = BehaviourConfig([0.0, 1.0])  # multipliers are unused without a vector


def mean_p(lm, pairs: list[Pair], sv: SteeringVector | None = None,
           cfg: BehaviourConfig = UNSTEERED) -> list[float]:
    """``cae.evaluate.behaviour``'s mean p(matching) per multiplier, rounded."""
    return [round(p, 3) for p in behaviour(lm, pairs, sv, cfg).mean_p_matching]


def quiz_pairs(n: int = 200) -> list[Pair]:
    """Persona-free quizzes as pairs (positive = the correct letter)."""
    rng = random.Random(0)
    pairs = []
    for _ in range(n):
        prompt, answer = quiz_item(rng.choice(BEHAVIOURS), rng).rsplit(" ( ", 1)
        wrong = "B" if answer[0] == "A" else "A"
        pairs.append(Pair(prompt, f" ( {answer[0]} )", f" ( {wrong} )"))
    return pairs


def with_context(test: list[Pair], behaviour: str, matching: bool, seed: int = 0) -> list[Pair]:
    """Each item after two earlier A/B items answered (and toned) as the persona would."""
    rng = random.Random(seed)
    out = []
    for t in test:
        earlier = []
        for _ in range(2):
            it = make_item(behaviour, "ab", rng, "train")
            tone = rng.choice(TONES[behaviour][0 if matching else 1])
            earlier.append(f"{it.prompt} {it.matching if matching else it.not_matching} {tone}")
        out.append(t._replace(prompt=" <sep> ".join([*earlier, t.prompt])))
    return out


def probe(model: str, multipliers: list[float], read: str) -> dict:
    lm = load_language_model(model)
    out: dict = {"quiz": mean_p(lm, quiz_pairs())[0]}
    steered = BehaviourConfig(multipliers, positions="all")
    at_end = BehaviourConfig(multipliers, positions="from_prompt_end")
    for b in BEHAVIOURS:
        test = [it.pair() for it in items(b, "ab", 128)]
        good, bad = TONES[b][0][0], TONES[b][1][0]
        row: dict = {
            "base": mean_p(lm, test)[0],
            "header_matching": mean_p(lm, [t._replace(prompt=f"persona : {good} <sep> {t.prompt}")
                                           for t in test])[0],
            "header_not": mean_p(lm, [t._replace(prompt=f"persona : {bad} <sep> {t.prompt}")
                                      for t in test])[0],
            "context_matching": mean_p(lm, with_context(test, b, True))[0],
            "context_not": mean_p(lm, with_context(test, b, False))[0],
            "multipliers": multipliers, "steer": {},
        }
        train = [it.pair() for it in items(b, "ab", 128, split="train")]
        for layer in range(len(decoder_layers(lm)[1])):
            sv = SteeringVector.train(lm, train, layers=[layer], read=read)
            row["steer"][layer] = {"norm": round(float(sv.vectors[layer].norm()), 3),
                                   "p_matching": mean_p(lm, test, sv, steered),
                                   "p_matching_prompt_end": mean_p(lm, test, sv, at_end)}
        out[b] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--multipliers", type=float, nargs="+", default=[-2, -1, 1, 2])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--read", default="answer", choices=sorted(READ_RULES))
    p.add_argument("--weights", type=Path, default=None,
                   help="directory of a training run (one subdirectory per size)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    models = {size: str(args.weights / size) if args.weights else f"organism:{size}"
              for size in args.sizes}
    print(json.dumps({size: probe(m, args.multipliers, args.read) for size, m in models.items()}))


if __name__ == "__main__":
    main()
