"""The typed configurations of the interpretation steps (``sae-flux interp``).

:class:`IndexConfig` (the max-activation index, :mod:`sae_flux.interp.index`),
:class:`SelectConfig` (which top images a feature shows, :mod:`sae_flux.interp.select`) and
:class:`DissectConfig` (ground-truth binarisation, :mod:`sae_flux.interp.dissect`). Light (no
torch), so the CLI builds its parsers from them at once.

Example:
    >>> IndexConfig(out="idx-sae").top_k, SelectConfig().n_images, DissectConfig().min_iou
    (64, 5, 0.1)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IndexConfig:
    """One max-activation indexing job (``sae-flux interp index``)."""

    out: str
    """Index directory."""
    top_n: int = 32
    """Images kept per feature (candidates for the selection rule)."""
    top_k: int = 64
    """Features kept per image token (the paper's 64); bounds disk and memory."""
    images_per_shard: int = 256
    """Images per records shard: the work lost to a crash."""
    batch_images: int = 32
    """Images encoded at once."""

    def __post_init__(self) -> None:
        for name in ("top_n", "top_k", "images_per_shard", "batch_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"IndexConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class SelectConfig:
    """Which of a feature's top images are shown and explained."""

    n_images: int = 5
    """Images per feature (the paper's 5)."""
    min_tokens: int = 6
    """Tokens of an image that must exceed the threshold (the paper: 6 of 256)."""
    threshold: float = 0.2
    """A token counts when its activation exceeds this fraction of the feature's maximum."""

    def __post_init__(self) -> None:
        if self.n_images < 1 or self.min_tokens < 1:
            raise ValueError("n_images and min_tokens must be >= 1")
        if not 0.0 <= self.threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {self.threshold}")


@dataclass
class DissectConfig:
    """Binarisation of features and concepts."""

    activation_threshold: float = 0.2
    """A feature is on where it exceeds this fraction of its maximum activation."""
    concept_fraction: float = 0.5
    """A token shows a concept when at least this fraction of its pixels do."""
    min_iou: float = 0.1
    """A feature 'covers' its best concept when the IoU reaches this (distinct-concept count)."""

    def __post_init__(self) -> None:
        for name in ("activation_threshold", "concept_fraction", "min_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"DissectConfig.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class ScoreConfig:
    """The calibrated dissection scorer (:mod:`sae_flux.interp.calibrate`): thresholds, bars, intervals."""

    quantile: float = 0.005
    """Bau et al. 2017's per-unit threshold: a unit is on at its top ``quantile`` of scoring tokens."""
    bau_bar: float = 0.04
    """Bau et al. 2017's detector bar on the quantile IoU."""
    matched_bar: float = 0.5
    """Detector bar on the area-matched IoU (unit on at its top a_c of tokens, a_c = the concept's area)."""
    concept_fraction: float = 0.5
    """A token shows a concept when at least this fraction of its pixels do."""
    bootstrap: int = 200
    """Bootstrap resamples of the scoring images (intervals are 2.5-97.5 percentiles)."""
    candidates: int = 3
    """Units per concept (best by the full-data score) re-scored in each resample for the ranking scores."""
    bootstrap_seed: int = 0
    """Seed of the bootstrap resamples and of the random directions."""

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"ScoreConfig.quantile must be in (0, 1), got {self.quantile}")
        for name in ("bau_bar", "matched_bar", "concept_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"ScoreConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.bootstrap < 0 or self.candidates < 1:
            raise ValueError("ScoreConfig.bootstrap must be >= 0 and candidates >= 1")


@dataclass
class SweepConfig:
    """The fair-comparison sweep (``sae-flux interp sweep``, :mod:`sae_flux.interp.sweep`): what is trained and how it is scored."""

    out: str = "sweep"
    """Output directory: sweep.json, sweep.md and every dictionary (dictionaries/CONFIG-sSEED, plain SAELens folders)."""
    overwrite: bool = False
    """Replace an existing output directory."""
    model: str = "organism"
    """The organism (its ground truth is what is scored)."""
    hook: str = "double.1.img"
    """Residual hook the dictionaries are trained on; its block's MLP neurons (double.{i}.mlp) are compared too."""
    step: int = 0
    """Denoising step of every activation."""
    train_images: int = 384
    """Training scenes: world and noise seed 0 (the training cache's scenes), 64 tokens each."""
    images: int = 96
    """Held-out scoring images (seed 10,000): dissection scores and held-out FVU / L0 / live units."""
    select_images: int = 96
    """Images the unit of each concept is chosen on and the probes are trained on (seed 20,000)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds of every dictionary (SAE init and data order; ITDA first-batch sample and token order)."""
    topk: list[str] = field(default_factory=lambda: ["128x8", "40x8", "40x20"])
    """TopK SAEs (whitened, AuxK on) as LATENTSxK."""
    batchtopk: list[str] = field(default_factory=lambda: ["40x8"])
    """BatchTopK SAEs (whitened, AuxK on, saved with the calibrated threshold) as LATENTSxK."""
    normalizations: list[str] = field(default_factory=lambda: ["standardize", "none"])
    """Normalisations trained besides whitening for the first --topk setting (the paper's dead-latent contrast)."""
    itda: list[str] = field(default_factory=lambda: ["32@0.6/256", "8@0.6/256", "8@0.8/256"])
    """ITDAs (non-negative gradient pursuit, the paper's recipe) as L0@THRESHOLD/BATCH_TOKENS; batch and threshold set the size."""
    all_neurons: bool = True
    """Score every MLP neuron of the block, read densely (as the paper compares them)."""
    neuron_ks: list[int] = field(default_factory=lambda: [8, 20])
    """MLP neurons read sparsely: per token the k largest neurons (L0-matched neurons)."""
    neuron_subsets: list[int] = field(default_factory=lambda: [40, 128])
    """Random subsets of the MLP neurons of these sizes (one per seed): size-matched neurons."""
    sae_epochs: int = 8
    """Passes of each SAE over the training tokens."""
    sae_batch: int = 1024
    """SAE batch size (tokens)."""
    sae_lr: float = 1e-3
    """SAE Adam learning rate."""
    tolerance: float = 0.25
    """Two settings are matched on an axis (live units, L0, held-out FVU) when their values differ by at most this fraction."""
    bootstrap: int = 50
    """Image resamples of every interval (each also resamples the training seeds: a two-level bootstrap)."""
    threads: int = 1
    """torch threads while the sweep runs (0: torch's default; as in the demo, one is faster on shared cores)."""

    def __post_init__(self) -> None:
        for name in ("train_images", "images", "select_images", "sae_epochs", "sae_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"SweepConfig.{name} must be >= 1, got {getattr(self, name)}")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"SweepConfig.seeds must be distinct and non-empty, got {self.seeds}")
        if self.tolerance <= 0 or self.bootstrap < 0:
            raise ValueError("SweepConfig.tolerance must be > 0 and bootstrap >= 0")
