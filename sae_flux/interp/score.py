"""Scores of an explanation: detection, prevalence-corrected detection and fuzzing, with floor and ceiling.

- **Detection** (Shabalin et al. 2025, arXiv 2505.24360, step 5): a rater scores 0-1 how well the
  explanation fits each of the feature's 5 selected images and 5 distractors (top images of other
  features, drawn by firing frequency, :func:`sae_flux.interp.explain.plan`);
  score = mean(mean positive rating, 1 - mean distractor rating), 0.5 = chance.
- **Prevalence-corrected detection** (organism only): a distractor that truly shows the
  concepts the explanation names (ground truth, :class:`sae_flux.interp.oracle.Truth`) is no false
  positive, so it is dropped from the distractors; with no distractor left the score is None
  ("cannot tell"), never a number capped by the concept's prevalence.
- **Fuzzing** (the image analogue of Delphi's fuzzing score, Paulo et al. 2024, arXiv
  2410.13928): each selected image is shown twice with a spotlight (:func:`sae_flux.interp.render.spotlight`),
  once on the feature's own highlighted tokens (activation > ``threshold`` x its peak on the shown
  images) and once on a decoy region, the highlight rolled by half the grid in both directions
  minus the highlight itself (the complement when that is empty); the rater scores whether the
  spotlit region shows what the explanation says; score = mean(mean true rating, 1 - mean decoy
  rating), 0.5 = chance.

Every explanation is scored beside its **floor**, another explained feature's explanation (a
seeded derangement: what a shuffled, unrelated explanation reaches with the same rater on the same
images), and, on the organism, its **ceiling**, the oracle's explanation
(:class:`sae_flux.interp.oracle.OracleInterpreter`).

Example:
    >>> results = score_features(index, rater, {3: "red shapes", 9: "circles"},  # doctest: +SKIP
    ...                          plan(index, [3, 9]), truth=truth, out="scores.jsonl")
    >>> summary(results)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from jaxtyping import Bool
from torch import Tensor
from tqdm.auto import tqdm

from sae_flux.interp.chat import BackendError
from sae_flux.interp.explain import Detection, Plan, detection
from sae_flux.interp.index import IndexReader
from sae_flux.interp.oracle import OracleInterpreter, Truth
from sae_flux.interp.select import Selection
from sae_flux.intervals import bootstrap_mean

logger = logging.getLogger(__name__)

METRICS = ("detection", "corrected", "fuzzing")
ROLES = ("explanation", "floor", "ceiling")


class RegionRater(Protocol):
    """Rates an explanation on whole images (detection) and on highlighted regions (fuzzing)."""

    name: str

    def rate(self, explanation: str, index: IndexReader, images: Sequence[int]) -> list[float]: ...

    def rate_regions(self, explanation: str, index: IndexReader, images: Sequence[int],
                     regions_Ihw: Tensor) -> list[float]: ...


@dataclass
class Corrected:
    """Detection with the distractors that truly show the explanation's concepts left out."""

    score: float | None
    dropped: list[int]
    """Distractor images that show the concepts (not false positives)."""


@dataclass
class Fuzzing:
    """Ratings of the feature's own highlighted regions vs decoy regions of the same images."""

    score: float | None
    images: list[int]
    true_ratings: list[float]
    decoy_ratings: list[float]


@dataclass
class Scored:
    """One explanation's scores on one feature."""

    explanation: str
    concepts: list[str]
    """The ground-truth concepts the explanation names (empty without ground truth)."""
    detection: Detection
    corrected: Corrected | None
    fuzzing: Fuzzing | None

    def value(self, metric: str) -> float | None:
        if metric == "detection":
            return self.detection.score
        part = self.corrected if metric == "corrected" else self.fuzzing
        return part.score if part is not None else None


@dataclass
class FeatureScores:
    """A line of the scores JSONL: one feature, one rater, its explanation with floor and ceiling."""

    dictionary: str
    feature: int
    rater: str
    scored: Scored
    floor: Scored | None
    ceiling: Scored | None

    def record(self) -> dict[str, Any]:
        return asdict(self)

    def role(self, role: str) -> Scored | None:
        return {"explanation": self.scored, "floor": self.floor, "ceiling": self.ceiling}[role]

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> FeatureScores:
        def scored(value: dict[str, Any] | None) -> Scored | None:
            if value is None:
                return None
            return Scored(value["explanation"], value["concepts"], Detection(**value["detection"]),
                          Corrected(**value["corrected"]) if value["corrected"] else None,
                          Fuzzing(**value["fuzzing"]) if value["fuzzing"] else None)

        main = scored(raw["scored"])
        assert main is not None, "a scores record always holds the explanation's scores"
        return cls(raw["dictionary"], int(raw["feature"]), raw["rater"], main, scored(raw["floor"]),
                   scored(raw["ceiling"]))


def highlighted(selection: Selection, threshold: float) -> Bool[Tensor, "I h w"]:
    """Tokens where the feature exceeds ``threshold`` x its peak over the selected images."""
    return selection.maps_IHW > threshold * float(selection.maps_IHW.max())


def decoys(regions_Ihw: Bool[Tensor, "I h w"]) -> Bool[Tensor, "I h w"]:
    """Each region rolled by half the grid in both directions, minus itself (else its complement)."""
    h, w = regions_Ihw.shape[-2:]
    moved = torch.roll(regions_Ihw, shifts=(h // 2, w // 2), dims=(-2, -1)) & ~regions_Ihw
    empty = ~moved.flatten(1).any(1)
    moved[empty] = ~regions_Ihw[empty]
    return moved


def fuzzing(rater: RegionRater, index: IndexReader, explanation: str, selection: Selection,
            threshold: float) -> Fuzzing:
    """The fuzzing score of ``explanation`` on the feature's selected images (None if no decoy exists)."""
    regions = highlighted(selection, threshold)
    others = decoys(regions)
    usable = (others.flatten(1).any(1) & regions.flatten(1).any(1)).tolist()
    images = [i for i, ok in zip(selection.images, usable, strict=True) if ok]
    if not images:
        return Fuzzing(None, [], [], [])
    keep = torch.tensor(usable)
    ratings = rater.rate_regions(explanation, index, [*images, *images], torch.cat([regions[keep], others[keep]]))
    true, decoy = ratings[: len(images)], ratings[len(images):]
    return Fuzzing(0.5 * (float(np.mean(true)) + 1 - float(np.mean(decoy))), images, true, decoy)


def corrected(found: Detection, truth: Truth, concepts: Sequence[str]) -> Corrected | None:
    """Detection without the distractors that show ``concepts`` (None when the explanation names none)."""
    if not concepts:
        return None
    dropped = [i for i in found.negatives if truth.shows(i, concepts)]
    kept = [r for i, r in zip(found.negatives, found.negative_ratings, strict=True) if i not in dropped]
    if not kept:
        return Corrected(None, dropped)
    return Corrected(0.5 * (float(np.mean(found.positive_ratings)) + 1 - float(np.mean(kept))), dropped)


def score_explanation(rater: RegionRater, index: IndexReader, planned: Plan, explanation: str,
                      truth: Truth | None, threshold: float) -> Scored:
    """Detection, corrected detection (with ``truth``) and fuzzing of one explanation of one feature."""
    selection = planned.selection
    found = detection(rater, index, explanation, selection.images, planned.negatives)
    concepts = truth.named(explanation) if truth is not None else []
    fixed = corrected(found, truth, concepts) if truth is not None else None
    return Scored(explanation, concepts, found, fixed, fuzzing(rater, index, explanation, selection, threshold))


def shuffled(features: Sequence[int], seed: int = 0) -> dict[int, int]:
    """A seeded derangement: feature -> another feature whose explanation serves as its floor."""
    order = list(features)
    random.Random(seed).shuffle(order)
    return {f: order[(i + 1) % len(order)] for i, f in enumerate(order)} if len(order) > 1 else {}


def score_features(
    index: IndexReader, rater: RegionRater, explanations: dict[int, str], plans: Sequence[Plan],
    truth: Truth | None = None, threshold: float = 0.2, seed: int = 0, out: str | Path | None = None,
    on_result: Callable[[FeatureScores], None] | None = None,
) -> list[FeatureScores]:
    """Score each planned feature's explanation with its floor and (with ``truth``) its ceiling.

    Appends each feature to the JSONL ``out`` when done; features already there (same dictionary
    and rater) are skipped, so a rerun continues after a backend failure.
    """
    done = _finished(out, index.name, rater.name)
    results = list(done.values())
    planned = [p for p in plans if p.selection.feature in explanations and p.selection.feature not in done]
    floor_of = shuffled([p.selection.feature for p in plans if p.selection.feature in explanations], seed)
    oracle = OracleInterpreter(truth, threshold) if truth is not None else None
    for p in tqdm(planned, desc=f"score {index.name} ({rater.name})", unit="feature"):
        f = p.selection.feature
        try:
            result = _score_one(index, rater, p, explanations, floor_of, oracle, truth, threshold)
        except BackendError as err:
            raise BackendError(f"{err} (feature {f}; {len(results)} scored features kept in {out})") from err
        results.append(result)
        if out is not None:
            with open(out, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(result.record()) + "\n")
        if on_result is not None:
            on_result(result)
    return results


def _score_one(index: IndexReader, rater: RegionRater, p: Plan, explanations: dict[int, str],
               floor_of: dict[int, int], oracle: OracleInterpreter | None, truth: Truth | None,
               threshold: float) -> FeatureScores:
    f = p.selection.feature
    if not p.negatives:
        raise ValueError(f"feature {f} has no distractor image: detection needs another live feature")
    scored = score_explanation(rater, index, p, explanations[f], truth, threshold)
    floor = (score_explanation(rater, index, p, explanations[floor_of[f]], truth, threshold)
             if f in floor_of else None)
    ceiling = None
    if oracle is not None:
        ceiling = score_explanation(rater, index, p, oracle.explain(index, p.selection).pattern, truth, threshold)
    return FeatureScores(index.name, f, rater.name, scored, floor, ceiling)


def _finished(out: str | Path | None, dictionary: str, rater: str) -> dict[int, FeatureScores]:
    if out is None or not Path(out).is_file():
        return {}
    done = {}
    for line in Path(out).read_text(encoding="utf-8").splitlines():
        raw = json.loads(line)
        if raw["dictionary"] == dictionary and raw["rater"] == rater:
            done[int(raw["feature"])] = FeatureScores.from_record(raw)
    return done


def summary(results: Sequence[FeatureScores], seed: int = 0) -> list[dict[str, Any]]:
    """Per rater and role (explanation, floor, ceiling): each metric's mean with a 95% bootstrap interval."""
    rows = []
    for rater in dict.fromkeys(r.rater for r in results):
        mine = [r for r in results if r.rater == rater]
        for role in ROLES:
            row: dict[str, Any] = {"rater": rater, "explanations": role}
            for metric in METRICS:
                values = [v for r in mine if (s := r.role(role)) is not None and (v := s.value(metric)) is not None]
                low, high = bootstrap_mean(values, seed=seed)
                row[metric] = float(np.mean(values)) if values else None
                row[f"{metric}_low"], row[f"{metric}_high"] = (low, high) if values else (None, None)
                row[f"{metric}_features"] = len(values)
            rows.append(row)
    return rows


def near_floor(results: Sequence[FeatureScores], metric: str = "corrected", quantile: float = 0.95) -> dict[int, str]:
    """Features whose score is within what shuffled explanations reach: feature -> reason.

    A feature is flagged when its ``metric`` is at most the ``quantile`` of the floor scores of
    all features (a score a shuffled explanation reaches 5% of the time), or when the metric
    cannot be computed (e.g. every distractor shows the concept).
    """
    floors = [v for r in results if r.floor is not None and (v := r.floor.value(metric)) is not None]
    if not floors:
        return {}
    bar = float(np.quantile(floors, quantile))
    flags = {}
    for r in results:
        value = r.scored.value(metric)
        if value is None:
            flags[r.feature] = f"{metric} score cannot be computed"
        elif value <= bar:
            flags[r.feature] = (f"{metric} {value:.2f} is within the random floor (shuffled explanations reach "
                                f"{bar:.2f} at their {quantile:.0%} quantile)")
    return flags
