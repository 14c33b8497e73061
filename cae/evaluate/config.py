"""The ``cae eval`` configuration: one dataclass that is the CLI, the API and
``results.json['config']`` (``cae.evaluate.report.evaluate`` runs it).

:class:`EvalConfig` holds what every run needs (model, A/B dataset, output, layers, read
rule, seeds) and nests the rest by concern, one option group each in ``cae eval --help``:
``sweep`` (:class:`SweepConfig`: multipliers, splits, position rule, stage sizes),
``datasets`` (:class:`EvalDatasets`: the files scored beside the A/B test split), ``judge``
(:class:`JudgeConfig`), ``adversarial`` (:class:`AdversarialStage`), ``placement`` and
``prompting``. Records written before the split (one flat object) read back through
:func:`nest_flat_record`.

Importing this module imports no torch; validation in ``__post_init__`` does.

Example:
    >>> cfg = EvalConfig("organism:tiny", "kind.jsonl", "eval", check_files=False,
    ...                  sweep=SweepConfig(multipliers=[-4.0, 0.0, 4.0], draws=2))
    >>> cfg.sweep.multipliers, cfg.judge.timeout, cfg.seed_list()
    ([-4.0, 0.0, 4.0], 30.0, [0])
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _sae_flux_shared.cliargs import ALIASES, PREFIX
from cae.config import Placement
from cae.names import ReadRuleName

__all__ = ["AdversarialStage", "EvalConfig", "EvalDatasets", "JudgeConfig", "Placement",
           "PromptBaseline", "SweepConfig", "nest_flat_record"]


@dataclass
class PromptBaseline:
    """The prompting baseline (``cae.evaluate.baselines``): asking for the behaviour instead
    of steering, scored on the same items.

    Example:
        >>> PromptBaseline("persona : warmly", "persona : coldly", examples=2).active()
        True
    """

    instruction: str | None = None
    """Text written before every prompt asking for the behaviour (organism: ``persona :
    warmly``); needs ``instruction_not``."""
    instruction_not: str | None = None
    """The same asking for the opposite (organism: ``persona : coldly``)."""
    examples: int = 0
    """In-context training items answered the asked-for way, written before every prompt."""
    separator: str = "\n\n"
    """Between the instruction, the examples and the prompt (organism: `` <sep> ``)."""

    def __post_init__(self) -> None:
        if (self.instruction is None) != (self.instruction_not is None):
            raise ValueError("a prompting instruction needs its opposite: give both "
                             "--prompt-instruction and --prompt-instruction-not")
        if self.examples < 0:
            raise ValueError(f"prompt examples must be >= 0, got {self.examples}")

    def active(self) -> bool:
        """Whether any baseline is asked for."""
        return self.instruction is not None or self.examples > 0


def _check_files(paths: list[str], what: str) -> None:
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} not found: {path}")


@dataclass
class SweepConfig:
    """What the stages measure: the multipliers, the splits, the position rule and the sizes
    of the sample-efficiency and perplexity stages.

    Example:
        >>> SweepConfig(multipliers=[-1.0, 1.0]).test_fraction
        0.25
    """

    multipliers: list[float] = field(default_factory=lambda: [-4.0, -2.0, 0.0, 2.0, 4.0])
    """Multipliers of the sweep, the propensity curves and the perplexity cost."""
    test_fraction: float = 0.25
    """Share of the dataset held out for evaluation (the test split: every reported number)."""
    val_fraction: float = 0.25
    """Share of the dataset held out for choosing the layer (the validation split)."""
    positions: str = "from_prompt_end"
    """Where the vector is added, in every stage (``cae.apply.POSITIONS`` except
    ``generated``: the A/B stages score an answer token and generate nothing)."""
    draws: int = 5
    """Random subsets per sample size in the sample-efficiency curve."""
    context: int = 64
    """Tokens per perplexity window."""
    max_windows: int | None = 32
    """Perplexity windows scored at most."""

    def __post_init__(self) -> None:
        from cae.apply import check_multiplier
        from cae.evaluate.behaviour import check_scoring_positions

        self.multipliers = [check_multiplier(m) for m in self.multipliers]
        if len(set(self.multipliers)) < 2 or not any(self.multipliers):
            raise ValueError("multipliers need at least two distinct values, one non-zero; "
                             f"got {self.multipliers}")
        if not 0.0 < self.test_fraction < 1.0 or not 0.0 < self.val_fraction < 1.0 \
                or self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError("test_fraction and val_fraction must be in (0, 1) and leave pairs "
                             f"to train on; got {self.test_fraction} and {self.val_fraction}")
        check_scoring_positions(self.positions)


@dataclass
class EvalDatasets:
    """The files scored beside the A/B dataset's test split (every one optional).

    Example:
        >>> EvalDatasets().corpus is None
        True
    """

    corpus: str | None = None
    """Plain-text file for the perplexity cost (None: skipped)."""
    other_data: list[str] = field(default_factory=list)
    """Other-template A/B datasets, scored beside the held-out split (out of distribution)."""
    ood: str | None = None
    """Directory of OOD prompt files as published with the CAE paper (``cae.evaluate.ood``)."""
    ood_behaviour: str | None = None
    """Only OOD files of this behaviour (the file name without its length suffix)."""
    open: list[str] = field(default_factory=list)
    """Plain-text files of open-ended prompts (one per line), judged like the OOD files."""
    side_data: list[str] = field(default_factory=list)
    """A/B datasets of unrelated behaviours: the vector's side effects on them."""
    capability: list[str] = field(default_factory=list)
    """A/B datasets with a correct answer (positive): accuracy under steering."""

    def check_files(self) -> None:
        """Every named file exists (before any training)."""
        _check_files([*self.side_data, *self.capability, *self.other_data], "dataset file")
        if self.corpus is not None:
            _check_files([self.corpus], "corpus file")
        _check_files(self.open, "open-ended prompt file")


@dataclass
class JudgeConfig:
    """The judge of open-ended completions (``--ood``, ``--open``): a function or an
    OpenAI-compatible endpoint (``cae.evaluate.judge``).

    Example:
        >>> JudgeConfig(url="http://127.0.0.1:8000/v1").model
        'judge'
    """

    fn: str | None = None
    """Judge function ``"module:function"`` ``(prompt, completion) -> score`` for ``open``
    (``cae.evaluate.judge.load_judge_function``); else the endpoint judge is used."""
    url: str | None = None
    """OpenAI-compatible endpoint root for the OOD judge (needed with ``ood``)."""
    model: str = "judge"
    """Model name sent to the judge endpoint."""
    timeout: float = field(default=30.0, metadata={ALIASES: ("--timeout",)})
    """Overall deadline of one judge request in seconds (every byte of the answer included)."""
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={ALIASES: ("--api-key-env",)})
    """Environment variable holding the judge endpoint's API key (none sent when it is unset;
    sent only over https or to loopback)."""
    allow_insecure_key: bool = field(default=False, metadata={ALIASES: ("--allow-insecure-key",)})
    """Send the API key over plain http to a judge host that is not loopback."""

    def options(self) -> dict[str, Any]:
        """The HTTP settings of every :class:`cae.evaluate.judge.EndpointJudge` of this run."""
        return {"api_key": os.environ.get(self.api_key_env) or None,
                "timeout": self.timeout, "allow_insecure_key": self.allow_insecure_key}

    def check(self) -> None:
        """The URL, the deadline, where the key may go and the function, before any training."""
        if self.url is not None:
            from cae.evaluate.judge import EndpointJudge

            EndpointJudge(self.url, self.model, "check", **self.options())
        if self.fn is not None:
            from cae.evaluate.judge import load_judge_function

            load_judge_function(self.fn)


@dataclass
class AdversarialStage:
    """The optional adversarial-input stage: a search for inputs that reverse the largest
    multiplier (``cae.evaluate.adversarial``).

    Example:
        >>> AdversarialStage(items=8, top_k=0).top_k is None  # 0: the whole vocabulary
        True
    """

    items: int = field(default=0, metadata={ALIASES: ("--adversarial",)})
    """Held-out items searched for inputs reversing the largest multiplier (0: skip)."""
    tokens: int = 4
    """Tokens the adversarial search inserts per item."""
    top_k: int | None = 32
    """Gradient-ranked candidates per search step (None or 0: the whole vocabulary)."""
    budget: int | None = None
    """Most forward rows per searched item (None: no cap)."""

    def __post_init__(self) -> None:
        if self.items < 0 or self.tokens < 1:
            raise ValueError("adversarial must be >= 0 and adversarial_tokens >= 1")
        if self.top_k == 0:
            self.top_k = None


NESTED = {"sweep": SweepConfig, "datasets": EvalDatasets, "judge": JudgeConfig,
          "adversarial": AdversarialStage, "placement": Placement, "prompting": PromptBaseline}
"""Field of :class:`EvalConfig` -> the config class it holds."""

FLAT_NAMES = {
    **{name: ("sweep", name) for name in ("multipliers", "test_fraction", "val_fraction", "positions",
                                          "draws", "context", "max_windows")},
    **{name: ("datasets", name) for name in ("corpus", "other_data", "ood", "ood_behaviour", "open",
                                             "side_data", "capability")},
    "judge_fn": ("judge", "fn"), "judge_url": ("judge", "url"), "judge_model": ("judge", "model"),
    "judge_timeout": ("judge", "timeout"), "judge_api_key_env": ("judge", "api_key_env"),
    "allow_insecure_key": ("judge", "allow_insecure_key"),
    "adversarial_tokens": ("adversarial", "tokens"), "adversarial_top_k": ("adversarial", "top_k"),
    "adversarial_budget": ("adversarial", "budget"),
}
"""Key of a flat (pre-split) ``results.json['config']`` -> (nested field, its field)."""


def nest_flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """A ``cae eval`` config record of the flat layout (before the nested configs) in the
    current one; any other record comes back unchanged.

    Example:
        >>> nest_flat_record({"model": "m", "multipliers": [-1, 1], "adversarial": 8,
        ...                   "adversarial_tokens": 2, "judge_url": "http://h/v1"})
        {'model': 'm', 'sweep': {'multipliers': [-1, 1]}, 'adversarial': {'items': 8, 'tokens': 2}, 'judge': {'url': 'http://h/v1'}}
    """
    flat = isinstance(record.get("adversarial"), int) or any(k in FLAT_NAMES for k in record)
    if not flat:
        return record
    nested: dict[str, Any] = {}
    for key, value in record.items():
        if key == "adversarial" and isinstance(value, int):
            nested.setdefault("adversarial", {})["items"] = value
        elif key in FLAT_NAMES:
            group, name = FLAT_NAMES[key]
            nested.setdefault(group, {})[name] = value
        else:
            nested[key] = value
    return nested


@dataclass
class EvalConfig:
    """Everything ``cae eval`` needs (the CLI, the API and ``results.json['config']``).

    Example:
        >>> cfg = EvalConfig("organism:tiny", "kind.jsonl", "eval", check_files=False,
        ...                  datasets=EvalDatasets(corpus="neutral.txt"),
        ...                  adversarial=AdversarialStage(items=4))
        >>> cfg.adversarial_config().multiplier, cfg.datasets.corpus
        (4.0, 'neutral.txt')
    """

    model: str
    """Hub id, local directory or ``organism:<size>`` (several on the command line: a size
    comparison, ``cae.evaluate.sizes``)."""
    data: str
    """A/B dataset: MWE ``.jsonl`` or CAA ``.json`` (``cae.pairs.load_pairs``)."""
    out: str
    """Output directory."""
    layers: list[int] | None = None
    """Layers to train and sweep (None: every decoder block)."""
    read: ReadRuleName = "answer"
    """Read rule of the vectors (``cae.read``: ``answer`` is CAA's answer letter, ``mean``
    averages the completion's tokens, ``last`` its final token)."""
    normalize: bool = False
    """Rescale each layer's vector to the mean residual norm at its read positions
    (``SteeringVector.norm_matched``): multipliers are then in units of a typical activation,
    comparable across layers and model sizes."""
    seed: int = 0
    """Seed of the train/validation/test split and the subset draws."""
    seeds: list[int] = field(default_factory=list)
    """Several seeds: the whole run once per seed (``DIR/seed-<s>/``) and ``DIR/seeds.json``
    with the mean and a 95% interval over seeds of every summary number (empty: ``seed``)."""
    sweep: SweepConfig = field(default_factory=SweepConfig)
    """Multipliers, splits, position rule and stage sizes."""
    datasets: EvalDatasets = field(default_factory=EvalDatasets)
    """Files scored beside the A/B test split."""
    judge: JudgeConfig = field(default_factory=JudgeConfig, metadata={PREFIX: "judge"})
    """The judge of open-ended completions."""
    adversarial: AdversarialStage = field(default_factory=AdversarialStage,
                                          metadata={PREFIX: "adversarial"})
    """The adversarial-input stage (skipped by default)."""
    placement: Placement = field(default_factory=Placement)
    """Device, dtype and device map of the model."""
    prompting: PromptBaseline = field(default_factory=PromptBaseline, metadata={PREFIX: "prompt"})
    """Prompting baseline, reported beside steering (none by default)."""
    check_files: dataclasses.InitVar[bool] = True
    """Check that every named file exists (False: a config to inspect, not to run)."""

    def seed_list(self) -> list[int]:
        """The seeds the run covers."""
        return list(self.seeds) or [self.seed]

    def adversarial_config(self):  # -> cae.evaluate.adversarial.AdversarialConfig
        """The search's settings: the largest multiplier, the run's positions and seed."""
        from cae.evaluate.adversarial import AdversarialConfig

        adv = self.adversarial
        return AdversarialConfig(max(abs(m) for m in self.sweep.multipliers), adv.tokens,
                                 seed=self.seed, positions=self.sweep.positions,
                                 top_k=adv.top_k, budget=adv.budget)

    def __post_init__(self, check_files: bool) -> None:
        from cae.read import read_rule

        for name, cls in NESTED.items():  # read back from results.json
            if isinstance(getattr(self, name), dict):
                setattr(self, name, cls(**getattr(self, name)))
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        read_rule(self.read)
        self.placement.device_map_value()
        if check_files:
            _check_files([self.data], "dataset file")
            self.datasets.check_files()
        if self.adversarial.items:
            self.adversarial_config()  # a budget too small to run fails before any training
        if self.datasets.ood is not None and self.judge.url is None:
            raise ValueError("--ood prompts are open-ended: give a judge endpoint (--judge-url)")
        if self.datasets.open and self.judge.fn is None and self.judge.url is None:
            raise ValueError("--open prompts need a judge: a function (--judge-fn) or an endpoint "
                             "(--judge-url)")
        self.judge.check()
