"""``SteeringVector``: per-layer CAA vectors with their provenance, saved and shared.

A steering vector in the sense of CAA (Rimsky et al. 2024) and the CAE paper (Hao et al.
2025, arXiv 2505.03189) is one direction per decoder block, added to the block's output.
This class stores those directions with the facts needed to reuse them safely: the model
id and width they were trained on, the read rule, the aggregator, the number of pairs and a
hash of the dataset.

On disk a vector is a directory: ``steering_vector.json`` (the metadata, format version 2:
model id, width, layers, site, read rule, aggregator, normalisation, dataset facts) and
``vectors.safetensors`` (one float32 tensor per layer, named ``layer.<L>``). Directories of
format version 1 (metadata in ``cfg.json``, a name SAELens uses for another schema) still
load, with a deprecation warning. The same directory is the Hub format: ``push_to_hub``
uploads it with ``huggingface_hub`` and ``from_pretrained`` downloads it (honouring
``HF_HUB_OFFLINE`` and the local cache). :mod:`cae.llamacpp` (which imports this module) exports
and imports llama.cpp's control-vector GGUF; :meth:`SteeringVector.to_layer_tensors` / ``from_layer_tensors`` give
the ``{layer: tensor}`` form of steering-vectors and repeng.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

import _sae_flux_shared.commit as commit
from cae.model import hidden_size, model_id
from cae.model import model_id as _model_id
from cae.names import SITES

STEERING_VECTORS_LAYER_TYPES = {"block": "decoder_block", "attn": "self_attn", "mlp": "mlp"}
"""cae site -> steering-vectors ``layer_type`` (its ``layer_matching.LayerType``)."""

logger = logging.getLogger(__name__)

META_NAME = "steering_vector.json"
"""The metadata file (format version 2 on)."""
LEGACY_CFG_NAME = "cfg.json"
"""The metadata file of format version 1 (read, never written)."""
WEIGHTS_NAME = "vectors.safetensors"
FORMAT_VERSION = 2
FORMAT_NAME = "cae.steering_vector"
"""The ``format`` key of ``steering_vector.json``."""
NORMALIZATIONS = ("none", "norm_matched")


@dataclass(frozen=True)
class VectorMeta:
    """Provenance of a steering vector (saved as ``steering_vector.json``).

    Example:
        >>> meta = VectorMeta("organism:tiny", hidden_size=40, layers=(2, 1), read="mean")
        >>> meta.layers, meta.site, meta.normalization
        ((1, 2), 'block', 'none')
    """

    model_id: str
    """Hub id or directory of the model the vector was trained on ('' if unknown)."""
    hidden_size: int
    """Residual-stream width; vectors only apply to models of this width."""
    layers: tuple[int, ...]
    """Decoder blocks the vector has a direction for."""
    read: str = "answer"
    """Read rule used in training (``cae.read``)."""
    aggregator: str = "mean"
    """Aggregator used in training (``cae.aggregators``)."""
    n_pairs: int = 0
    """Number of contrastive pairs."""
    dataset_hash: str = ""
    """``cae.pairs.dataset_hash`` of the training pairs."""
    format_version: int = FORMAT_VERSION
    """Version of this file format."""
    extra: dict = field(default_factory=dict)
    """Free-form user metadata (behaviour name, notes)."""
    site: str = "block"
    """Which output of each decoder block the vector was read from and steers: ``block``
    (the residual stream), ``attn`` or ``mlp`` (:func:`cae.model.site_path`)."""
    normalization: str = "none"
    """``none`` (the aggregator's raw directions) or ``norm_matched`` (each layer rescaled to
    the mean residual norm, ``SteeringVector.norm_matched``; the norms are in ``extra``)."""

    def __post_init__(self) -> None:
        if self.hidden_size < 1:
            raise ValueError(f"hidden_size must be positive, got {self.hidden_size}")
        if self.site not in SITES:
            raise ValueError(f"unknown site {self.site!r}; choose from {list(SITES)}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {self.normalization!r}; choose from "
                             f"{list(NORMALIZATIONS)}")
        object.__setattr__(self, "layers", tuple(sorted(int(x) for x in self.layers)))


@dataclass
class SteeringVector:
    """Per-layer directions plus metadata. Legend: D model width.

    Example:
        >>> from cae.organism import load
        >>> from cae.model import wrap
        >>> from cae.organism.corpus import items
        >>> lm = wrap(*load("tiny"))
        >>> pairs = [it.pair() for it in items("kind", "ab", 32, split="train")]
        >>> sv = SteeringVector.train(lm, pairs, layers=[1])
        >>> with sv.apply(lm, multiplier=4.0), lm.generate("story :", max_new_tokens=5,
        ...                                                  do_sample=False) as tracer:
        ...     ids = tracer.result.save()
        >>> ids.shape[1] > len(lm.tokenizer("story :")["input_ids"])
        True
    """

    vectors: dict[int, Float[Tensor, " D"]]
    """Direction per decoder-block index."""
    meta: VectorMeta
    """Provenance."""

    def __post_init__(self) -> None:
        if not self.vectors:
            raise ValueError("a steering vector needs at least one layer")
        for layer, vec in self.vectors.items():
            if vec.ndim != 1 or vec.shape[0] != self.meta.hidden_size:
                raise ValueError(
                    f"layer {layer}: vector shape {tuple(vec.shape)} does not match "
                    f"hidden_size {self.meta.hidden_size}"
                )
            if not torch.isfinite(vec).all():
                raise ValueError(f"layer {layer}: vector has NaN or infinite entries")
        self.vectors = {int(k): v.detach().float().cpu() for k, v in sorted(self.vectors.items())}
        self.meta = replace(self.meta, layers=tuple(self.vectors))

    # -- training and application --------------------------------------------------

    @classmethod
    def train(
        cls,
        model: Any,
        pairs: Sequence[Any],
        layers: Sequence[int],
        read: str = "answer",
        aggregator: str = "mean",
        batch_size: int = 16,
        padding_side: str | None = None,
        normalize: bool = False,
        site: str = "block",
    ) -> SteeringVector:
        """Train on an nnsight ``TransformersModel`` (``cae.model.wrap``) from (prompt, positive, negative) pairs.

        ``site``: ``block`` (the decoder block's output, CAA's ``resid_L``), ``attn`` or
        ``mlp`` (that sub-layer's output in block L).

        ``normalize`` rescales each layer's direction to the mean residual norm at the read
        positions (``norm_matched`` with ``cae.train.mean_norms`` of the same activations).
        """
        from cae.pairs import check_pairs, dataset_hash
        from cae.train import TrainConfig, aggregate, mean_norms, training_activations

        cfg = TrainConfig(list(layers), read, aggregator, batch_size, padding_side, site)
        pairs = check_pairs(pairs)
        acts = training_activations(model, pairs, cfg)
        vectors = aggregate(acts, aggregator)
        meta = VectorMeta(model_id(model), hidden_size(model), tuple(vectors), read, aggregator,
                          len(pairs), dataset_hash(pairs), site=site)
        sv = cls(vectors, meta)
        return sv.norm_matched(mean_norms(acts)) if normalize else sv

    @classmethod
    def random(cls, model: Any, layers: Sequence[int], seed: int = 0, norm: float = 1.0):
        """A random vector of norm ``norm`` per layer (tests, baselines)."""
        gen = torch.Generator().manual_seed(seed)
        width = hidden_size(model)
        vectors = {}
        for layer in layers:
            vec = torch.randn(width, generator=gen, device="cpu")
            vectors[int(layer)] = vec / vec.norm() * norm
        return cls(vectors, VectorMeta(model_id(model), width, tuple(vectors), "random", "random"))

    def apply(
        self, model: Any, multiplier: float = 1.0, positions: str = "from_prompt_end",
        force: bool = False, operator: str | Callable[[Tensor, Tensor], Tensor] = "add",
    ) -> AbstractContextManager[None]:
        """Context manager adding ``multiplier * v_L`` to every forward of ``model``.

        ``positions``: ``all``, ``from_prompt_end`` (CAA) or ``generated`` (``cae.apply``);
        ``operator``: ``add``, ``ablate``, ``ablate_then_add``, ``norm_preserving`` or a
        callable (``cae.operators``).
        """
        from cae.apply import steering

        return steering(model, [(self, multiplier)], positions, force, operator)

    # -- arithmetic ----------------------------------------------------------------

    def _check_same_space(self, other: SteeringVector) -> None:
        if not isinstance(other, SteeringVector):
            raise TypeError(f"can only combine with a SteeringVector, got {type(other).__name__}")
        if other.meta.hidden_size != self.meta.hidden_size:
            raise ValueError(
                f"cannot combine vectors of width {self.meta.hidden_size} and "
                f"{other.meta.hidden_size}"
            )
        if self.meta.model_id != other.meta.model_id:
            raise ValueError(
                f"cannot combine vectors of different models: {self.meta.model_id!r} and "
                f"{other.meta.model_id!r}"
            )

    def __add__(self, other: SteeringVector) -> SteeringVector:
        self._check_same_space(other)
        vectors = dict(self.vectors)
        for layer, vec in other.vectors.items():
            vectors[layer] = vectors[layer] + vec if layer in vectors else vec.clone()
        if other.meta.site != self.meta.site:
            raise ValueError(f"cannot combine vectors of different sites: {self.meta.site!r} and "
                             f"{other.meta.site!r}")
        same = self.meta.read == other.meta.read and self.meta.aggregator == other.meta.aggregator
        meta = replace(
            self.meta,
            read=self.meta.read if same else "mixed",
            aggregator=self.meta.aggregator if same else "mixed",
            n_pairs=self.meta.n_pairs + other.meta.n_pairs,
            dataset_hash=f"{self.meta.dataset_hash}+{other.meta.dataset_hash}",
        )
        return SteeringVector(vectors, meta)

    def __mul__(self, scale: float) -> SteeringVector:
        from cae.apply import check_multiplier

        s = check_multiplier(scale)
        return SteeringVector({k: v * s for k, v in self.vectors.items()}, self.meta)

    __rmul__ = __mul__

    def norm_matched(self, norms: dict[int, float]) -> SteeringVector:
        """Each layer's direction rescaled to ``norms[layer]`` (e.g. the mean residual norm
        from ``cae.train.mean_norms``), so that multipliers are in units of a typical
        activation and comparable across layers and models. The norms go in ``meta.extra``.

        Example:
            >>> from cae.organism import load
            >>> sv = SteeringVector.random(load("tiny")[0], [1], norm=0.5)
            >>> round(float(sv.norm_matched({1: 8.0}).vectors[1].norm()), 4)
            8.0
        """
        missing = set(self.vectors) - set(norms)
        if missing:
            raise ValueError(f"no norm given for layer(s) {sorted(missing)}")
        vectors = {}
        for layer, vec in self.vectors.items():
            if not norms[layer] > 0 or vec.norm() == 0:
                raise ValueError(f"layer {layer}: cannot match a norm of {norms[layer]} with a "
                                 f"vector of norm {float(vec.norm())}")
            vectors[layer] = vec / vec.norm() * norms[layer]
        extra = {**self.meta.extra, "norm_matched": {str(k): float(norms[k]) for k in vectors},
                 "raw_norms": {str(k): float(v.norm()) for k, v in self.vectors.items()}}
        return SteeringVector(vectors, replace(self.meta, extra=extra,
                                               normalization="norm_matched"))

    def __truediv__(self, scale: float) -> SteeringVector:
        if float(scale) == 0.0:
            raise ValueError("cannot divide a steering vector by zero")
        return self * (1.0 / float(scale))

    def __neg__(self) -> SteeringVector:
        return self * -1.0

    def __sub__(self, other: SteeringVector) -> SteeringVector:
        return self + (-other)

    def __iter__(self) -> Iterator[int]:
        return iter(self.vectors)

    # -- files and the Hub -----------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Commit ``vectors.safetensors`` and then ``steering_vector.json`` into ``directory`` (:mod:`_sae_flux_shared.commit`)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{k}": v.contiguous() for k, v in self.vectors.items()}
        commit.save_safetensors(out / WEIGHTS_NAME, tensors, metadata={"format": "cae"})
        meta = {"format": FORMAT_NAME, **asdict(replace(self.meta, format_version=FORMAT_VERSION))}
        commit.write_json(out / META_NAME, meta, indent=2)
        return out

    @classmethod
    def load(cls, directory: str | Path) -> SteeringVector:
        """Read a directory written by ``save`` (or by format version 1, with ``cfg.json``)."""
        path = Path(directory)
        meta_file = path / META_NAME
        if not meta_file.is_file() and (path / LEGACY_CFG_NAME).is_file():
            meta_file = path / LEGACY_CFG_NAME
            message = (f"{path}: reading the format-1 layout ({LEGACY_CFG_NAME}); it is "
                       f"deprecated, save() the vector again to write {META_NAME}")
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            logger.warning(message)
        for file in (meta_file, path / WEIGHTS_NAME):
            if not file.is_file():
                raise FileNotFoundError(f"{file} not found (not a saved steering vector)")
        meta = read_meta(meta_file)
        try:
            tensors = load_file(str(path / WEIGHTS_NAME))
        except SafetensorError as err:
            raise ValueError(f"{path / WEIGHTS_NAME} is not a readable safetensors file "
                             f"(truncated or corrupt: {err})") from err
        vectors = {int(k.split(".", 1)[1]): v for k, v in tensors.items()}
        return cls(vectors, meta)

    # -- other libraries' forms --------------------------------------------------------

    def to_layer_tensors(self) -> dict[int, Tensor]:
        """``{layer: vector}`` (float32 copies): the form steering-vectors holds in
        ``SteeringVector(layer_activations=..., layer_type=...)`` and repeng in
        ``ControlVector(directions=...)`` (as numpy). Both index the decoder blocks from 0 and
        steer their output, as cae does; for sites ``attn`` / ``mlp`` steering-vectors'
        ``layer_type`` is ``self_attn`` / ``mlp`` (:data:`STEERING_VECTORS_LAYER_TYPES`).

        Example:
            >>> from cae.organism import load
            >>> sv = SteeringVector.random(load("tiny")[0], [1, 2])
            >>> sorted(sv.to_layer_tensors())
            [1, 2]
        """
        return {layer: vec.clone() for layer, vec in self.vectors.items()}

    @classmethod
    def from_layer_tensors(
        cls, vectors: dict[int, Any], model: Any = None, model_id: str = "", site: str = "block",
        **meta: Any,
    ) -> SteeringVector:
        """A vector from ``{layer: tensor or array}`` (steering-vectors' ``layer_activations``,
        repeng's ``directions``). With ``model``, its id and width are recorded and checked;
        ``meta`` sets other :class:`VectorMeta` fields (``read``, ``aggregator``, ``extra``)."""
        tensors = {int(k): torch.as_tensor(v).detach().float().reshape(-1)
                   for k, v in vectors.items()}
        if not tensors:
            raise ValueError("a steering vector needs at least one layer")
        widths = {int(v.shape[0]) for v in tensors.values()}
        if len(widths) != 1:
            raise ValueError(f"layer tensors have different widths {sorted(widths)}")
        width = widths.pop()
        if model is not None:
            from cae.model import check_layers

            if width != hidden_size(model):
                raise ValueError(f"layer tensors have width {width} but the model's hidden size "
                                 f"is {hidden_size(model)}")
            check_layers(model, list(tensors))
        name = model_id or (_model_id(model) if model is not None else "")
        defaults = {"read": "unknown", "aggregator": "unknown"}
        return cls(tensors, VectorMeta(name, width, tuple(tensors), site=site,
                                       **{**defaults, **meta}))

    def push_to_hub(
        self, repo_id: str, token: str | None = None, private: bool = False,
        commit_message: str = "Upload steering vector", endpoint: str | None = None,
    ) -> str:
        """Upload to a Hub model repo (created if missing); returns the commit URL."""
        from huggingface_hub import HfApi

        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            info = api.upload_folder(repo_id=repo_id, folder_path=tmp,
                                     commit_message=commit_message)
        return str(info)

    @classmethod
    def from_pretrained(
        cls, repo_id_or_dir: str | Path, revision: str | None = None,
        token: str | None = None, cache_dir: str | Path | None = None,
    ) -> SteeringVector:
        """Load a local directory, or a Hub repo through ``huggingface_hub`` (its cache and
        ``HF_HUB_OFFLINE`` are honoured).

        Example:
            >>> sv = SteeringVector.from_pretrained("user/llama3-8b-corrigible")  # doctest: +SKIP
        """
        if Path(repo_id_or_dir).is_dir():
            return cls.load(repo_id_or_dir)
        if Path(repo_id_or_dir).exists():
            raise ValueError(f"vector {repo_id_or_dir} is a file, not a steering-vector directory")
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError

        def download(name: str) -> str:
            return hf_hub_download(str(repo_id_or_dir), name, revision=revision, token=token,
                                   cache_dir=cache_dir)

        try:
            weights = download(WEIGHTS_NAME)
        except (OSError, ValueError) as err:  # hub errors: not found, offline, invalid repo id
            raise FileNotFoundError(
                f"vector directory {repo_id_or_dir} does not exist, and it is no Hub repo that "
                f"could be fetched either ({type(err).__name__})") from err
        try:
            download(META_NAME)
        except EntryNotFoundError:  # a format-1 upload; load() warns
            download(LEGACY_CFG_NAME)
        return cls.load(Path(weights).parent)


def read_meta(file: Path) -> VectorMeta:
    """:class:`VectorMeta` from ``steering_vector.json`` (or a format-1 ``cfg.json``); a bad
    file is a one-line ValueError naming it."""
    try:
        raw = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}:{err.lineno}: malformed JSON ({err.msg})") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    if raw.pop("format", FORMAT_NAME) != FORMAT_NAME:
        raise ValueError(f"{file}: not a cae steering vector (format is not {FORMAT_NAME!r})")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{file}: format_version {raw['format_version']} is newer than this "
                         f"library's {FORMAT_VERSION}")
    try:
        return VectorMeta(**raw)
    except TypeError as err:
        raise ValueError(f"{file}: bad metadata ({err})") from err
