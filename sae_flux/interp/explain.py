"""Explain a feature from its top images, then score the explanation by detection.

Steps 4-5 of the visual auto-interpretation pipeline of Shabalin et al. 2025 (arXiv
2505.24360, ``../shared/research.md`` s.1). The explainer sees the feature's selected images
with heatmaps, describes each highlighted region, then states the common pattern. The
detection scorer rates, image by image, how well the explanation fits 5 positives (the
feature's images, shown without heatmaps) and 5 distractors (top images of other live
features, drawn by firing frequency: :func:`plan`); score = mean(mean positive rating, 1 - mean
distractor rating). :func:`interpret` with ``n_distractors=0`` only explains (the CLI's
``explain`` step); :mod:`sae_flux.interp.score` adds the corrected detection and fuzzing scores
with their floor and ceiling (the CLI's ``detect`` step).

Everything goes through one small interface, :class:`Interpreter` (``explain`` and ``rate``):

- :class:`VLMInterpreter` over any :class:`sae_flux.interp.chat.ChatBackend` (an
  OpenAI-compatible endpoint or a local transformers model); prompts are the text files in
  ``sae_flux/interp/prompts/``; it also rates spotlit regions (``rate_regions``, fuzzing);
- :class:`sae_flux.interp.oracle.OracleInterpreter`, the organism's ground truth as explainer and
  rater (the ceiling);
- :class:`ConceptInterpreter`, the VLM-free ground truth of the dissection: the explanation is the
  name of the feature's best dataset-wide IoU concept (:mod:`sae_flux.interp.dissect`).

Example:
    >>> interpreter = VLMInterpreter(OpenAIChat(ChatConfig(model="gpt-4o-mini")))  # doctest: +SKIP
    >>> results = interpret(index, interpreter, features=[3, 9],  # doctest: +SKIP
    ...                     out="explanations.jsonl")
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

import _sae_flux_shared.commit as commit
from sae_flux.interp.chat import BackendError, ChatBackend
from sae_flux.interp.index import IndexReader
from sae_flux.interp.render import spotlight
from sae_flux.interp.select import SelectConfig, Selection, plain_images, render_card, select

logger = logging.getLogger(__name__)

PROMPTS = Path(__file__).with_name("prompts")
#: Distractor images per feature in the detection score (the paper's 5).
N_DISTRACTORS = 5


def prompt(name: str) -> str:
    """The text of ``prompts/<name>.txt``."""
    path = PROMPTS / f"{name}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} is missing")
    return path.read_text(encoding="utf-8")


@dataclass
class Explanation:
    """What the explainer said about a feature."""

    pattern: str
    descriptions: list[str] = field(default_factory=list)


class Rater(Protocol):
    """Rates 0-1 how well an explanation fits each of some images (the detection scorer)."""

    name: str

    def rate(self, explanation: str, index: IndexReader, images: Sequence[int]) -> list[float]: ...


class Interpreter(Rater, Protocol):
    """Explains a feature from its selected examples and rates an explanation on images."""

    uses_images: bool
    """Whether it looks at the generated images (then they must exist before it is asked)."""

    def explain(self, index: IndexReader, selection: Selection) -> Explanation: ...


class VLMInterpreter:
    """The paper's explainer and scorer on a vision-language chat backend."""

    uses_images = True

    def __init__(self, backend: ChatBackend, name: str = "vlm", scale: int = 4) -> None:
        self.backend = backend
        self.name = name
        self.scale = scale

    def explain(self, index: IndexReader, selection: Selection) -> Explanation:
        pictures: list[Image.Image] = [
            render_card(index, selection._replace(images=[i], peaks=selection.peaks, maps_IHW=m[None]),
                        scale=self.scale)
            for i, m in zip(selection.images, selection.maps_IHW, strict=True)
        ]
        system = prompt("explain_system").format(n_images=len(pictures))
        answer = self.backend.ask(system, prompt("explain_user"), pictures, keys=("pattern",))
        descriptions = answer.get("descriptions", [])
        if not isinstance(descriptions, list):
            descriptions = [str(descriptions)]
        return Explanation(str(answer["pattern"]), [str(d) for d in descriptions])

    def rate(self, explanation: str, index: IndexReader, images: Sequence[int]) -> list[float]:
        return self._scores("detect", explanation, plain_images(index, list(images), scale=self.scale))

    def rate_regions(self, explanation: str, index: IndexReader, images: Sequence[int],
                     regions_Ihw: Tensor) -> list[float]:
        """Fuzzing: how well the explanation fits the spotlit region of each image (prompts ``fuzz_*``)."""
        pictures = [spotlight(index.load_image(int(i)), region, scale=self.scale)
                    for i, region in zip(images, regions_Ihw, strict=True)]
        return self._scores("fuzz", explanation, pictures)

    def _scores(self, task: str, explanation: str, pictures: Sequence[Image.Image]) -> list[float]:
        text = prompt(f"{task}_user").replace("{explanation}", explanation.replace('"', "'"))
        return [_unit(self.backend.ask(prompt(f"{task}_system"), text, [picture], keys=("score",))["score"])
                for picture in pictures]


def _unit(value: Any) -> float:
    try:
        return min(1.0, max(0.0, float(value)))
    except (TypeError, ValueError) as err:
        raise BackendError(f"the scorer's score {value!r} is not a number") from err


@dataclass
class Detection:
    """Detection score of an explanation: positives vs distractors."""

    score: float
    positives: list[int]
    negatives: list[int]
    positive_ratings: list[float]
    negative_ratings: list[float]


def distractors(
    index: IndexReader, feature: int, exclude: Sequence[int], n: int, seed: int = 0,
    candidates: Sequence[int] | None = None, weights: Sequence[float] | None = None,
) -> list[int]:
    """``n`` images that are the top image of other (randomly drawn, seeded) features.

    With ``weights`` (one per candidate, e.g. the features' firing frequencies) a feature is drawn
    with probability proportional to its weight, without replacement (Efraimidis & Spirakis
    2006: sort by ``u ** (1 / w)``), so the distractors look like what the dictionary usually
    fires on rather than like its rarest features; features of weight 0 come last.
    """
    if n < 1:
        return []
    rng = random.Random(seed * 1_000_003 + feature)
    pool = list(candidates if candidates is not None else range(index.width))
    if weights is None:
        rng.shuffle(pool)
    else:
        if len(weights) != len(pool):
            raise ValueError(f"{len(weights)} weights for {len(pool)} candidate features")
        keys = [rng.random() ** (1.0 / w) if w > 0 else -1.0 for w in weights]
        pool = [f for _, f in sorted(zip(keys, pool, strict=True), key=lambda kf: -kf[0])]
    chosen: list[int] = []
    taken = set(int(i) for i in exclude)
    for other in pool:
        if other == feature:
            continue
        _, images = index.top_images(other)
        if len(images) and int(images[0]) not in taken:
            chosen.append(int(images[0]))
            taken.add(int(images[0]))
        if len(chosen) == n:
            break
    return chosen


def detection(
    interpreter: Rater, index: IndexReader, explanation: str, positives: Sequence[int],
    negatives: Sequence[int],
) -> Detection:
    """score = mean(mean rating on positives, 1 - mean rating on negatives)."""
    if not positives or not negatives:
        raise ValueError("detection needs at least one positive and one distractor image")
    ratings = interpreter.rate(explanation, index, [*positives, *negatives])
    pos, neg = ratings[: len(positives)], ratings[len(positives):]
    score = 0.5 * (sum(pos) / len(pos) + 1 - sum(neg) / len(neg))
    return Detection(score, list(positives), list(negatives), pos, neg)


@dataclass
class FeatureResult:
    """One interpreted feature (a line of the results JSONL)."""

    dictionary: str
    feature: int
    interpreter: str
    images: list[int]
    explanation: Explanation
    detection: Detection | None
    density: float

    def record(self) -> dict[str, Any]:
        return asdict(self)


class Plan(NamedTuple):
    """What explaining one feature shows the interpreter: its selected images, then distractors."""

    selection: Selection
    negatives: list[int]

    @property
    def images(self) -> list[int]:
        return [*self.selection.images, *self.negatives]


def plan(
    index: IndexReader, features: Sequence[int], select_cfg: SelectConfig | None = None,
    n_distractors: int = N_DISTRACTORS, seed: int = 0,
) -> list[Plan]:
    """The selection and the distractors of each feature (features with no selected image are left out).

    Distractors are the top images of other live features drawn by firing frequency
    (:func:`distractors` with the index's density as weights).
    """
    density = index.density()
    live = [int(f) for f in range(index.width) if len(index.top_images(f)[1])]
    weights = [float(density[f]) for f in live]
    plans = []
    for f in features:
        chosen = select(index, f, select_cfg)
        if chosen.images:
            plans.append(Plan(chosen, distractors(index, chosen.feature, chosen.images, n_distractors, seed, live,
                                                  weights)))
    return plans


def missing_images(index: IndexReader, plans: Sequence[Plan]) -> list[int]:
    """Images the plans show (selected and distractors) that are not generated yet."""
    return sorted({i for p in plans for i in p.images if not index.image_path(i).is_file()})


def interpret(
    index: IndexReader, interpreter: Interpreter, features: Sequence[int], out: str | Path | None = None,
    select_cfg: SelectConfig | None = None, n_distractors: int = N_DISTRACTORS, seed: int = 0,
    on_result: Callable[[FeatureResult], None] | None = None,
    make_images: Callable[[list[int]], object] | None = None,
) -> list[FeatureResult]:
    """Explain and detection-score ``features``, adding each to the JSONL ``out`` when done.

    ``out`` is committed after every feature (:mod:`_sae_flux_shared.commit`), so a kill loses at most
    the feature in flight. Features already in ``out`` are skipped (a rerun continues). Before the first request, every
    image an interpreter that looks at images will be shown (each feature's selected images and
    its distractors) must exist: missing ones are passed to ``make_images`` (for example
    ``lambda ids: write_images(index, flux, prompts, ids, seed=...)``), or, without it, a
    ``FileNotFoundError`` lists them. When the backend fails for good, the finished features stay
    in ``out`` and :class:`BackendError` says how many.
    """
    for f in features:
        index.check_feature(f)
    lines = commit.read_jsonl(out) if out is not None else []  # a line a kill tore is dropped
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    done = _finished(lines, index.name, interpreter.name)
    results = list(done.values())
    plans = plan(index, [f for f in features if int(f) not in done], select_cfg, n_distractors, seed)
    if interpreter.uses_images:
        _ensure_images(index, plans, make_images)
    density = index.density()
    for p in tqdm(plans, desc=f"interpret {index.name}", unit="feature"):
        f = p.selection.feature
        try:
            result = _one(index, interpreter, p, float(density[f]))
        except BackendError as err:
            raise BackendError(f"{err} (feature {f}; {len(results)} finished features kept in {out})") from err
        results.append(result)
        if out is not None:  # committed whole: a kill leaves the old file or the new one
            lines.append(result.record())
            commit.write_jsonl(out, lines)
        if on_result is not None:
            on_result(result)
    return results


def _ensure_images(index: IndexReader, plans: Sequence[Plan], make_images: Callable[[list[int]], object] | None) -> None:
    missing = missing_images(index, plans)
    if missing and make_images is not None:
        make_images(missing)
        missing = missing_images(index, plans)
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} images the interpreter would be shown are missing from {index.images_dir} "
            f"(first: {missing[:5]}): it sees each feature's selected images and its distractors (top "
            f"images of other features); generate them first with `sae-flux interp images {index.path}` "
            f"(or write_images), or pass make_images"
        )


def _one(index: IndexReader, interpreter: Interpreter, chosen: Plan, density: float) -> FeatureResult:
    selection = chosen.selection
    explanation = interpreter.explain(index, selection)
    scored = (detection(interpreter, index, explanation.pattern, selection.images, chosen.negatives)
              if chosen.negatives else None)
    return FeatureResult(index.name, selection.feature, interpreter.name, selection.images, explanation, scored,
                         density)


def _finished(lines: list[dict[str, Any]], dictionary: str, interpreter: str) -> dict[int, FeatureResult]:
    done = {}
    for line in lines:
        raw = dict(line)
        if raw["dictionary"] == dictionary and raw["interpreter"] == interpreter:
            raw["explanation"] = Explanation(**raw["explanation"])
            raw["detection"] = Detection(**raw["detection"]) if raw["detection"] else None
            done[int(raw["feature"])] = FeatureResult(**raw)
    return done
