"""The configs of ``cae train``, ``cae generate`` and ``cae export``: each dataclass is the
command's options (``_sae_flux_shared.cliargs``), its Python settings and its saved record.

``cae eval`` has its own, :class:`cae.evaluate.config.EvalConfig`; :class:`Placement` (where
the model is loaded) is shared by all. Importing this module imports no torch; validation in
``__post_init__`` does.

Example:
    >>> cfg = TrainVectorConfig("organism:tiny", "kind.jsonl", [1], "vectors/kind")
    >>> cfg.read, cfg.aggregator, cfg.placement.dtype
    ('answer', 'mean', 'float32')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from cae.names import AggregatorName, OperatorName, PositionRule, ReadRuleName, SiteName

__all__ = ["GGUFExportConfig", "GenerateConfig", "Placement", "TrainVectorConfig"]


@dataclass
class Placement:
    """Where and in what precision the model is loaded (``cae.model.load_language_model``).

    Example:
        >>> Placement("cpu", "float32").device_map_value() is None
        True
    """

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
            try:
                return dict(json.loads(self.device_map))
            except json.JSONDecodeError as err:
                raise ValueError(f"device_map is not valid JSON ({err.msg})") from None
        return self.device_map



@dataclass
class TrainVectorConfig:
    """``cae train``: a steering vector from contrastive pairs (``SteeringVector.train``).

    Example:
        >>> TrainVectorConfig("organism:tiny", "kind.jsonl", [1, 2], "v", site="mlp").layers
        [1, 2]
    """

    model: str
    """Hub id, local directory or ``organism:<size>``."""
    data: str
    """Contrastive pairs: MWE ``.jsonl`` or CAA ``.json`` (``cae.pairs.load_pairs``)."""
    layers: list[int]
    """Decoder blocks to train a direction for."""
    out: str
    """Output directory of the vector."""
    read: ReadRuleName = "answer"
    """Read rule (``cae.read``: ``answer`` is CAA's answer letter, ``mean`` averages the
    completion's tokens, ``last`` its final token)."""
    aggregator: AggregatorName = "mean"
    """How the per-pair differences become one direction (``cae.aggregators``)."""
    batch_size: int = 16
    """Pairs per forward pass."""
    limit: int | None = None
    """Use only the first N pairs (None: all)."""
    site: SiteName = "block"
    """Block output (residual stream), attention or MLP output."""
    padding_side: Literal["left", "right"] | None = None
    """Side the tokenizer pads batches on (None: the tokenizer's own)."""
    normalize: bool = False
    """Rescale each layer's direction to the mean residual norm at its read positions."""
    placement: Placement = field(default_factory=Placement)
    """Device, dtype and device map of the model."""

    def __post_init__(self) -> None:
        from cae.read import read_rule

        read_rule(self.read)
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")


@dataclass
class GenerateConfig:
    """``cae generate``: text generated with a steering vector added.

    Example:
        >>> GenerateConfig("organism:tiny", "vectors/kind", "story :", multiplier=4).positions
        'from_prompt_end'
    """

    model: str
    """Hub id, local directory or ``organism:<size>``."""
    vector: str
    """Vector directory, Hub repo id or llama.cpp control vector (``.gguf``)."""
    prompt: str
    """Text to continue."""
    multiplier: float = 1.0
    """Scale of the vector (negative: steer away)."""
    positions: PositionRule = "from_prompt_end"
    """Where the vector is added (``cae.apply``)."""
    operator: OperatorName = "add"
    """How the activation is changed (``cae.operators``)."""
    max_new_tokens: int = 40
    """Tokens generated."""
    sample: bool = False
    """Sample instead of greedy decoding."""
    seed: int = 0
    """Seed of the sampler."""
    force: bool = False
    """Apply a vector trained on another model id (same width)."""
    placement: Placement = field(default_factory=Placement)
    """Device, dtype and device map of the model."""


@dataclass
class GGUFExportConfig:
    """``cae export``: a vector as a llama.cpp control vector (GGUF).

    Example:
        >>> GGUFExportConfig("vectors/kind", "kind.gguf", model_hint="llama").multiplier
        1.0
    """

    vector: str
    """Vector directory or Hub repo id."""
    out: str
    """Output ``.gguf`` file."""
    model_hint: str | None = None
    """``controlvector.model_hint`` (llama.cpp architecture, e.g. ``llama``)."""
    multiplier: float = 1.0
    """Scale baked into the file."""
