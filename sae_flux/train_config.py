"""The typed configuration of an SAE training run (:func:`sae_flux.train.train_sae`).

One dataclass per concern (data, dictionary, optimisation), nested in :class:`TrainConfig`, which
is the Python API, the ``sae-flux train`` options (each nested class adds its own fields) and the
saved ``train_config.json``. Defaults follow Shabalin et al. 2025 (arXiv 2505.24360): TopK with
k = 64, Adam(lr 2e-4, beta1 0, beta2 0.99), PCA whitening before training. Architectures come
from sae_lens's training registry, never from a hand-written list.

Example:
    >>> cfg = TrainConfig(out="sae", data=DataConfig(cache="cache"), sae=DictionaryConfig(k=32))
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sae_lens import TrainingSAE, TrainingSAEConfig

logger = logging.getLogger(__name__)

#: Normalisation names (:func:`sae_flux.normalize.estimate`), in the order of the paper's comparison.
NORMALIZATIONS = ("none", "standardize", "whiten")
#: Default of ``OptimConfig.max_epochs``: the most passes an SAE makes over a cache (or tensors).
MAX_EPOCHS = 16
#: sae_lens's own ``dead_feature_window``, the ceiling of the window scaled to the run.
SAE_LENS_DEAD_WINDOW = 1000
#: Fields that may change between a checkpoint and its resumption without changing the result.
RUN_ONLY_FIELDS = ("checkpoint_every", "log_every", "keep_checkpoints", "wandb_project")
#: sae_lens config fields set by sae-flux, not through ``DictionaryConfig.options``.
_RESERVED = ("d_in", "d_sae", "dtype", "device", "metadata", "normalize_activations", "k")


def dead_window_tokens(d_sae: int, k: float | None) -> int:
    """Tokens over which a latent must stay silent to be called dead: 10 x d_sae / k (0 without a k).

    A latent of a TopK-style SAE fires on k / d_sae of tokens on average, so this window gives an
    average latent about ten chances to fire.
    """
    return 0 if not k else math.ceil(10 * d_sae / k)


def training_registry() -> dict[str, tuple[type[TrainingSAE[Any]], type[TrainingSAEConfig]]]:
    """sae_lens's training registry, the architectures a :class:`DictionaryConfig` may name.

    Imported when a config is checked, not with this module: sae_lens loads torch, and the
    ``sae-flux train`` parser is built from these classes without it.
    """
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    return SAE_TRAINING_CLASS_REGISTRY


@dataclass
class DataConfig:
    """Where the activations come from: a cache, or a Flux streamed on the fly."""

    cache: str | None = None
    """Activation cache directory (``sae-flux cache``); when unset, stream from --model."""
    hook: str | None = None
    """Hook point to train on (default: the cache's only hook; required when streaming)."""
    model: str | None = None
    """Model to stream from when there is no cache: tiny, organism, a repo id or directory."""
    prompts: str | None = None
    """Prompt file (one per line) for streaming."""
    num_inference_steps: int | None = None
    """Denoising steps per streamed image (default: the model's)."""
    d_in: int | None = None
    """Expected activation width; checked against the data when given."""
    buffer_tokens: int = 262_144
    """Tokens in the shuffling buffer."""

    def __post_init__(self) -> None:
        if self.buffer_tokens < 1:
            raise ValueError("buffer_tokens must be >= 1")


@dataclass
class DictionaryConfig:
    """Which SAE: an architecture of sae_lens's training registry and its size."""

    architecture: str = "topk"
    """Name in sae_lens's training registry (topk, batchtopk, jumprelu, standard, ...)."""
    expansion_factor: int = 16
    """Latents per model dimension (ignored when d_sae is given)."""
    d_sae: int | None = None
    """Number of latents."""
    k: int | None = None
    """Active latents per token for architectures that have k (default 64, the paper's)."""
    options: list[str] = field(default_factory=list)
    """Other fields of the architecture's training config as name=value (value parsed as JSON)."""
    normalize: str = "whiten"
    """none, standardize (per-dimension) or whiten (PCA), estimated from the first tokens."""
    normalize_tokens: int = 65_536
    """Tokens the normalisation (and the decoder-bias init) is estimated from."""

    def __post_init__(self) -> None:
        registry = training_registry()
        if self.architecture not in registry:
            raise ValueError(
                f"unknown SAE architecture {self.architecture!r}; sae_lens's training registry "
                f"has: {', '.join(sorted(registry))}"
            )
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize {self.normalize!r} is not one of {NORMALIZATIONS}")
        fields = self.training_fields()
        if self.k is not None and "k" not in fields:
            raise ValueError(f"architecture {self.architecture!r} has no k; drop --k")
        self.sae_kwargs()  # validates options
        if self.expansion_factor < 1 or (self.d_sae is not None and self.d_sae < 1):
            raise ValueError("expansion_factor and d_sae must be >= 1")

    def training_fields(self) -> dict[str, dataclasses.Field[Any]]:
        cfg_cls = training_registry()[self.architecture][1]
        return {f.name: f for f in dataclasses.fields(cfg_cls)}

    def sae_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the architecture's training config (k and the options)."""
        fields = self.training_fields()
        kwargs: dict[str, Any] = {}
        if "k" in fields:
            kwargs["k"] = 64 if self.k is None else self.k
        for option in self.options:
            name, sep, raw = option.partition("=")
            if not sep:
                raise ValueError(f"option {option!r} is not of the form name=value")
            if name not in fields or name in _RESERVED:
                valid = sorted(n for n in fields if n not in _RESERVED)
                raise ValueError(
                    f"{self.architecture!r} has no option {name!r}; valid options: {', '.join(valid)}"
                )
            try:
                kwargs[name] = json.loads(raw)
            except json.JSONDecodeError:
                kwargs[name] = raw
        return kwargs


@dataclass
class OptimConfig:
    """How long and how fast (the paper's Adam: lr 2e-4, beta1 0, beta2 0.99)."""

    total_tokens: int = 1_000_000
    """Training tokens (steps = total_tokens // batch_size)."""
    batch_size: int = 4096
    """Tokens per step."""
    lr: float = 2e-4
    """Adam learning rate."""
    adam_beta1: float = 0.0
    """Adam beta1."""
    adam_beta2: float = 0.99
    """Adam beta2."""
    lr_warm_up_steps: int = 0
    """Linear learning-rate warm-up steps."""
    seed: int = 0
    """Seed of the SAE initialisation and of the data order."""
    max_epochs: int = MAX_EPOCHS
    """Most passes over data of fixed size (a cache, tensors): a longer total_tokens is cut to this many passes, with a warning (a streamed Flux makes fresh images every pass and is not capped)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.total_tokens < self.batch_size:
            raise ValueError(
                f"need batch_size >= 1 and total_tokens >= batch_size, got {self.batch_size} / {self.total_tokens}"
            )
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def steps(self) -> int:
        return self.total_tokens // self.batch_size


@dataclass
class TrainConfig:
    """One SAE training run: the API, the ``sae-flux train`` options and ``train_config.json``."""

    out: str
    """Output directory (the SAELens dictionary, logs and checkpoints)."""
    data: DataConfig = field(default_factory=DataConfig)
    sae: DictionaryConfig = field(default_factory=DictionaryConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dead_window: int | None = None
    """Steps without firing after which a latent counts as dead and AuxK trains it (default: a twentieth of the run, 10 to 1,000 steps); a window longer than the run is refused."""
    eval_tokens: int = 65_536
    """Tokens of the final metrics window (the first tokens of the training stream, at most one epoch)."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    log_every: int = 10
    """Write a log.jsonl line every this many steps."""
    wandb_project: str | None = None
    """Also log to this wandb project (optional; wandb is never required)."""
    device: str = "cpu"
    """Torch device of the SAE."""

    def __post_init__(self) -> None:
        for name in ("log_every", "keep_checkpoints", "eval_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")
        self.dead_window_steps()  # validates dead_window against the run

    def dead_window_steps(self, min_tokens: int = 0) -> int:
        """The dead-latent window in steps: ``dead_window``, or a twentieth of the run (10 to 1,000, at most the run).

        sae_lens's default (1,000 steps) is longer than a short run, so AuxK's dead-latent
        recovery would never start; an explicit window longer than the run is refused for that
        reason. ``min_tokens`` (:func:`dead_window_tokens`: 10 x d_sae / k) lengthens the default
        window until it holds that many tokens, so a latent is called dead only after it had
        about ten chances to fire; an explicit window shorter than that is kept, with a warning.
        """
        steps = self.optim.steps
        need = math.ceil(min_tokens / self.optim.batch_size)
        if self.dead_window is None:
            window = min(steps, max(need, min(SAE_LENS_DEAD_WINDOW, max(10, steps // 20))))
            if window < need:
                logger.warning("the run (%d steps of %d tokens) is shorter than the %s tokens (10 x d_sae / k) a "
                               "dead-latent window should hold; the window is the whole run", steps,
                               self.optim.batch_size, f"{min_tokens:,}")
            return window
        if self.dead_window < 1:
            raise ValueError(f"dead_window must be >= 1, got {self.dead_window}")
        if self.dead_window > steps:
            raise ValueError(
                f"dead_window {self.dead_window} is longer than the run ({steps} steps): no latent could "
                f"count as dead, so AuxK would never revive one; leave it unset (scaled to the run) or "
                f"set at most {steps}"
            )
        if self.dead_window < need:
            logger.warning("dead_window %d steps holds %s tokens, fewer than 10 x d_sae / k = %s: latents that "
                           "fire rarely will be counted dead", self.dead_window,
                           f"{self.dead_window * self.optim.batch_size:,}", f"{min_tokens:,}")
        return self.dead_window

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        raw = dict(raw)
        nested = {"data": DataConfig, "sae": DictionaryConfig, "optim": OptimConfig}
        for key, sub in nested.items():
            raw[key] = sub(**raw.get(key, {}))
        return cls(**raw)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
