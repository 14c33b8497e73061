"""The ``cae eval`` configuration: one dataclass that is the CLI, the API and
``results.json['config']`` (``cae.evaluate.report.evaluate`` runs it).

Importing this module imports no torch; validation in ``__post_init__`` does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Placement:
    """Where and in what precision the model is loaded (``cae.model.load_language_model``)."""

    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1``, ``mps`` (None: transformers' default, the CPU)."""
    dtype: str = "float32"
    """``float32``, ``bfloat16`` or ``float16`` (``cae.model.DTYPES``)."""
    device_map: str | None = None
    """accelerate's ``auto`` / ``balanced`` / ``sequential``, or a JSON module -> device map;
    instead of ``device``."""

    def __post_init__(self) -> None:
        from cae.model import check_device, check_dtype_on, resolve_dtype

        if self.device is not None and self.device_map is not None:
            raise ValueError("give a device or a device_map, not both")
        dev = check_device(self.device) if self.device is not None else None
        check_dtype_on(resolve_dtype(self.dtype), dev)

    def device_map_value(self) -> str | dict | None:
        """``device_map`` as accelerate takes it (a JSON object string becomes a dict)."""
        if self.device_map is not None and self.device_map.lstrip().startswith("{"):
            import json

            try:
                return dict(json.loads(self.device_map))
            except json.JSONDecodeError as err:
                raise ValueError(f"device_map is not valid JSON ({err.msg})") from None
        return self.device_map


@dataclass
class PromptBaseline:
    """The prompting baseline (``cae.evaluate.baselines``): asking for the behaviour instead
    of steering, scored on the same items."""

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


@dataclass
class EvalConfig:
    """Everything ``cae eval`` needs (the CLI, the API and ``results.json['config']``)."""

    model: str
    """Hub id, local directory or ``organism:<size>``."""
    data: str
    """A/B dataset: MWE ``.jsonl`` or CAA ``.json`` (``cae.pairs.load_pairs``)."""
    out: str
    """Output directory."""
    corpus: str | None = None
    """Plain-text file for the perplexity cost (None: skipped)."""
    layers: list[int] | None = None
    """Layers to train and sweep (None: every decoder block)."""
    read: str = "answer"
    """Read rule of the vectors (``cae.read``: ``answer`` is CAA's answer letter, ``mean``
    averages the completion's tokens, ``last`` its final token)."""
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
    seed: int = 0
    """Seed of the train/validation/test split and the subset draws."""
    seeds: list[int] = field(default_factory=list)
    """Several seeds: the whole run once per seed (``DIR/seed-<s>/``) and ``DIR/seeds.json``
    with the mean and a 95% interval over seeds of every summary number (empty: ``seed``)."""
    other_data: list[str] = field(default_factory=list)
    """Other-template A/B datasets, scored beside the held-out split (out of distribution)."""
    ood: str | None = None
    """Directory of OOD prompt files as published with the CAE paper (``cae.evaluate.ood``)."""
    ood_behaviour: str | None = None
    """Only OOD files of this behaviour (the file name without its length suffix)."""
    open: list[str] = field(default_factory=list)
    """Plain-text files of open-ended prompts (one per line), judged like the OOD files."""
    judge_fn: str | None = None
    """Judge function ``"module:function"`` ``(prompt, completion) -> score`` for ``open``
    (``cae.evaluate.judge.load_judge_function``); else the endpoint judge is used."""
    judge_url: str | None = None
    """OpenAI-compatible endpoint root for the OOD judge (needed with ``ood``)."""
    judge_model: str = "judge"
    """Model name sent to the judge endpoint."""
    judge_timeout: float = 30.0
    """Overall deadline of one judge request in seconds (every byte of the answer included)."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the judge endpoint's API key (none sent when it is unset)."""
    allow_insecure_key: bool = False
    """Send the API key over plain http to a judge host that is not loopback."""
    adversarial: int = 0
    """Held-out items searched for inputs reversing the largest multiplier (0: skip)."""
    adversarial_tokens: int = 4
    """Tokens the adversarial search inserts per item."""
    adversarial_top_k: int | None = 32
    """Gradient-ranked candidates per search step (None: the whole vocabulary)."""
    adversarial_budget: int | None = None
    """Most forward rows per searched item (None: no cap)."""
    normalize: bool = False
    """Rescale each layer's vector to the mean residual norm at its read positions
    (``SteeringVector.norm_matched``): multipliers are then in units of a typical activation,
    comparable across layers and model sizes."""
    placement: Placement = field(default_factory=Placement)
    """Device, dtype and device map of the model."""
    prompting: PromptBaseline = field(default_factory=PromptBaseline)
    """Prompting baseline, reported beside steering (none by default)."""
    side_data: list[str] = field(default_factory=list)
    """A/B datasets of unrelated behaviours: the vector's side effects on them."""
    capability: list[str] = field(default_factory=list)
    """A/B datasets with a correct answer (positive): accuracy under steering."""

    def seed_list(self) -> list[int]:
        """The seeds the run covers."""
        return list(self.seeds) or [self.seed]

    def adversarial_config(self):  # -> cae.evaluate.adversarial.AdversarialConfig
        """The search's settings: the largest multiplier, the run's positions and seed."""
        from cae.evaluate.adversarial import AdversarialConfig

        return AdversarialConfig(max(abs(m) for m in self.multipliers), self.adversarial_tokens,
                                 seed=self.seed, positions=self.positions,
                                 top_k=self.adversarial_top_k, budget=self.adversarial_budget)

    def __post_init__(self) -> None:
        from cae.apply import check_multiplier
        from cae.evaluate.behaviour import check_scoring_positions
        from cae.read import read_rule

        self.multipliers = [check_multiplier(m) for m in self.multipliers]
        if len(set(self.multipliers)) < 2 or not any(self.multipliers):
            raise ValueError("multipliers need at least two distinct values, one non-zero; "
                             f"got {self.multipliers}")
        if not 0.0 < self.test_fraction < 1.0 or not 0.0 < self.val_fraction < 1.0 \
                or self.test_fraction + self.val_fraction >= 1.0:
            raise ValueError("test_fraction and val_fraction must be in (0, 1) and leave pairs "
                             f"to train on; got {self.test_fraction} and {self.val_fraction}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        check_scoring_positions(self.positions)
        read_rule(self.read)
        if isinstance(self.placement, dict):  # read back from results.json
            self.placement = Placement(**self.placement)
        if isinstance(self.prompting, dict):
            self.prompting = PromptBaseline(**self.prompting)
        for path in [*self.side_data, *self.capability]:
            if not Path(path).is_file():
                raise FileNotFoundError(f"dataset file not found: {path}")
        self.placement.device_map_value()
        if not Path(self.data).is_file():
            raise FileNotFoundError(f"dataset file not found: {self.data}")
        if self.corpus is not None and not Path(self.corpus).is_file():
            raise FileNotFoundError(f"corpus file not found: {self.corpus}")
        for path in self.other_data:
            if not Path(path).is_file():
                raise FileNotFoundError(f"dataset file not found: {path}")
        if self.adversarial < 0 or self.adversarial_tokens < 1:
            raise ValueError("adversarial must be >= 0 and adversarial_tokens >= 1")
        if self.adversarial:
            self.adversarial_config()  # a budget too small to run fails before any training
        if self.ood is not None and self.judge_url is None:
            raise ValueError("--ood prompts are open-ended: give a judge endpoint (judge_url)")
        for path in self.open:
            if not Path(path).is_file():
                raise FileNotFoundError(f"open-ended prompt file not found: {path}")
        if self.open and self.judge_fn is None and self.judge_url is None:
            raise ValueError("--open prompts need a judge: a function (judge_fn) or an endpoint "
                             "(judge_url)")
        if self.judge_url is not None:
            from cae.evaluate.judge import EndpointJudge

            # the URL, the deadline and where the key may go, checked before any training
            EndpointJudge(self.judge_url, self.judge_model, "check", **self.judge_options())
        if self.judge_fn is not None:
            from cae.evaluate.judge import load_judge_function

            load_judge_function(self.judge_fn)  # fail before any training

    def judge_options(self) -> dict[str, Any]:
        """The HTTP settings of every :class:`cae.evaluate.judge.EndpointJudge` of this run."""
        return {"api_key": os.environ.get(self.judge_api_key_env) or None,
                "timeout": self.judge_timeout, "allow_insecure_key": self.allow_insecure_key}
