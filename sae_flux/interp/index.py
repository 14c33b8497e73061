"""A streaming max-activation index: per feature, the images where it peaks highest.

Step 1 of the visual auto-interpretation pipeline of Shabalin et al. 2025 (arXiv 2505.24360,
``../shared/research.md`` s.1): every image token keeps only its top ``top_k`` features
(64 in the paper), and per feature the ``top_n`` images with the highest peak activation are
kept. The same index serves SAE latents, ITDA atoms (anything ``sae_lens`` loads) and MLP
neurons (the ``double.{i}.mlp`` hook read as-is).

Memory is bounded for 65k features: the running top-N table is ``(features, top_n)`` and one
batch of images is encoded at a time. The full token map of any image is recoverable because
the sparse per-token records are written to disk, shard by shard.

Layout of an index directory (all tensors little-endian safetensors)::

    index.json                     # IndexConfig + source record + progress (images done, shards,
                                   # the name of the current top table)
    top-00007.safetensors          # peak_FN float32 (0 = empty slot), image_FN int64 (-1 = empty),
                                   # active_F int64 (tokens where the feature was kept and > 0),
                                   # max_F float32 (the feature's largest token activation)
    records/shard-00000.safetensors  # image int64[M], token int64[M] (row-major h*w+w),
                                   # feature int64[M], value float32[M]: the kept (token, feature)
                                   # pairs of a run of consecutive images, sorted by image, token
    images/000017.png              # generated image of global prompt id 17 (``sae-flux interp images``)

After each records shard a new top table ``top-<shard>.safetensors`` and then ``index.json``
are committed (:mod:`_sae_flux_shared.commit`; ``index.json`` last, naming both), so a killed run
resumes from the last finished shard (``resume=True``) with identical results.

Legend: I = images in a batch, T = tokens per image, D = activation width, F = features,
N = top images kept per feature, M = kept (token, feature) records.

Example:
    >>> source = dictionary_source("demo-out/dictionaries/sae-topk")  # doctest: +SKIP
    >>> index = build_index(IndexConfig(out="idx-sae"), source,  # doctest: +SKIP
    ...                     cache_images("demo-out/cache"))
    >>> index.top_images(feature=3)          # (peaks, image ids), best first  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

import _sae_flux_shared.commit as commit
from sae_flux.interp.config import IndexConfig

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
TOP_FILE = "top.safetensors"
"""The top table of indexes written before tables were named per shard (``index.json`` names it now)."""
RECORDS = "records"
IMAGES = "images"
FORMAT_VERSION = 1


@dataclass
class FeatureSource:
    """What turns activations into features: a dictionary's encoder, or the identity for neurons."""

    name: str
    """Label shown in reports (e.g. ``sae-topk``, ``itda``, ``neurons``)."""
    hook: str
    """Hook point whose activations the source reads."""
    d_in: int
    """Activation width the source expects."""
    width: int
    """Number of features."""
    kind: str
    """``dictionary`` or ``neurons``."""
    path: str = ""
    """Dictionary directory (empty for neurons)."""
    encode: Callable[[Tensor], Tensor] = field(default=lambda x: x, repr=False, compare=False)
    """``acts (n, d_in) -> features (n, width)``."""

    def record(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "encode"}


def dictionary_source(path: str | Path, name: str | None = None) -> FeatureSource:
    """A source for any dictionary :func:`sae_flux.dictionary.load_dictionary` reads (a local
    directory or a Hub reference ``REPO_ID:FOLDER``; SAEs and ITDA)."""
    from sae_flux.dictionary import load_dictionary, reference_name

    sae = load_dictionary(path)
    sae.eval()

    def encode(acts_ND: Tensor) -> Tensor:
        with torch.no_grad():
            return sae.encode(acts_ND.to(sae.dtype)).float()

    hook = str(getattr(sae.cfg.metadata, "hook_name", "") or "")
    return FeatureSource(name or reference_name(path), hook, int(sae.cfg.d_in), int(sae.cfg.d_sae),
                         "dictionary", str(path), encode)


def neuron_source(hook: str, width: int, name: str = "neurons") -> FeatureSource:
    """MLP neurons of ``hook`` (``double.{i}.mlp``) as features: the identity encoder."""
    if not hook.endswith(".mlp"):
        raise ValueError(f"neuron features need an MLP hook (double.{{i}}.mlp), got {hook!r}")
    return FeatureSource(name, hook, width, width, "neurons")


class ImageBatch(NamedTuple):
    """Activations of whole images: global image (prompt) ids and the token grid."""

    image_I: Int[Tensor, " I"]
    acts_ITD: Float[Tensor, "I T D"]
    grid: tuple[int, int]


def cache_images(path: str | Path, hook: str | None = None, step: int | None = None) -> Iterator[ImageBatch]:
    """Images of an activation cache, one cache shard at a time (tokens regrouped by prompt).

    ``step`` picks a denoising step when the cache holds several (required then).
    """
    from sae_flux.cache import CacheReader

    reader = CacheReader(path, hook)
    for acts_ND, prov in reader.iter_shards():
        steps = prov["step"].unique()
        if step is None and len(steps) > 1:
            raise ValueError(f"cache {path} holds steps {steps.tolist()}; choose one with step=")
        keep = prov["step"] == (int(steps[0]) if step is None else step)
        if not keep.any():
            raise ValueError(f"cache {path} holds no tokens of step {step} (it has {steps.tolist()})")
        if "h" not in prov:
            raise ValueError(f"hook {reader.hook!r} is not an image stream: no token grid to index")
        prompt, h, w = prov["prompt"][keep], prov["h"][keep], prov["w"][keep]
        grid = (int(h.max()) + 1, int(w.max()) + 1)
        order = torch.argsort(prompt * grid[0] * grid[1] + h * grid[1] + w)
        ids = prompt[order].unique_consecutive()
        acts_ITD = acts_ND[keep][order].reshape(len(ids), grid[0] * grid[1], -1)
        yield ImageBatch(ids, acts_ITD.float(), grid)


def check_source(source: FeatureSource, hook: str, d_in: int) -> None:
    """Refuse a source whose hook or width does not match the activations it is given."""
    if source.hook and source.hook != hook:
        raise ValueError(
            f"dictionary {source.name!r} was trained on hook {source.hook!r} but the activations "
            f"come from {hook!r}"
        )
    if source.d_in != d_in:
        raise ValueError(
            f"{source.name!r} expects activations of width {source.d_in}, the data has width {d_in}"
        )


# -- building ----------------------------------------------------------------------------------


def sparsify(features_ITF: Tensor, top_k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Kept (image row, token, feature, value) of the top ``top_k`` positive features per token."""
    n_img, n_tok, width = features_ITF.shape
    values, feats = features_ITF.reshape(n_img * n_tok, width).topk(min(top_k, width), dim=-1)
    row, slot = torch.nonzero(values > 0, as_tuple=True)
    return row // n_tok, row % n_tok, feats[row, slot], values[row, slot]


@dataclass
class _Top:
    """The running top-N table and per-feature counters."""

    peak_FN: Tensor
    image_FN: Tensor
    active_F: Tensor
    max_F: Tensor

    @classmethod
    def empty(cls, width: int, top_n: int) -> _Top:
        return cls(torch.zeros(width, top_n), torch.full((width, top_n), -1, dtype=torch.int64),
                   torch.zeros(width, dtype=torch.int64), torch.zeros(width))

    def update(self, ids_I: Tensor, img_M: Tensor, feat_M: Tensor, val_M: Tensor) -> None:
        width, top_n = self.peak_FN.shape
        peak_FI = torch.zeros(width, len(ids_I))
        flat = peak_FI.view(-1)
        flat.scatter_reduce_(0, feat_M * len(ids_I) + img_M, val_M, reduce="amax")
        self.active_F += torch.bincount(feat_M, minlength=width)
        self.max_F = torch.maximum(self.max_F, peak_FI.amax(1))
        peaks = torch.cat([self.peak_FN, peak_FI], dim=1)
        images = torch.cat([self.image_FN, ids_I[None].expand(width, -1)], dim=1)
        self.peak_FN, slot = peaks.topk(top_n, dim=1)
        self.image_FN = torch.where(self.peak_FN > 0, images.gather(1, slot), -1)

    def tensors(self) -> dict[str, Tensor]:
        return {"peak_FN": self.peak_FN, "image_FN": self.image_FN, "active_F": self.active_F,
                "max_F": self.max_F}


def _top_file(number: int) -> str:
    """The top table committed with records shard ``number`` (``index.json`` names the current one)."""
    return f"top-{number:05d}.safetensors"


def _start(cfg: IndexConfig, record: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The state to continue from; a directory holding no committed shard starts afresh.

    Top tables that ``index.json`` does not name (written by a run killed before its manifest)
    are removed: they are never read.
    """
    out = Path(cfg.out)
    path = out / INDEX_FILE
    if path.is_file():
        if not resume:
            raise FileExistsError(f"index {out} exists; pass resume=True (--resume) to continue it")
        state = json.loads(path.read_text())
        old = {k: state[k] for k in ("config", "source")}
        new = {k: record[k] for k in ("config", "source")}
        commit.check_same_settings(f"the index in {out}", old, new)
        for stale in out.glob("top-*.safetensors"):
            if stale.name != state.get("top", TOP_FILE):
                stale.unlink()
        commit.remove_temporaries(out)
        commit.remove_temporaries(out / RECORDS)
        return state
    if not commit.holds_nothing_saved(out, own=["shard-*.safetensors", "top-*.safetensors"]):
        raise FileExistsError(f"{out} exists and is not an index; choose an empty directory")
    if resume and out.exists():
        logger.info("%s holds no finished records shard yet: the index starts from the first image", out)
    commit.clear(out)
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    return {**record, "images_done": 0, "shards": [], "grid": None, "top": None,
            "format_version": FORMAT_VERSION}


def build_index(
    cfg: IndexConfig, source: FeatureSource, images: Iterator[ImageBatch], resume: bool = False,
    hook: str | None = None, extra: dict[str, Any] | None = None,
) -> IndexReader:
    """Stream ``images`` through ``source`` into the index ``cfg.out`` and return its reader.

    ``hook`` names the activations' hook point (checked against the dictionary's);
    ``extra`` is stored in ``index.json`` (e.g. the cache and generation settings).

    Example:
        >>> reader = build_index(IndexConfig(out="idx"),  # doctest: +SKIP
        ...                      neuron_source("double.1.mlp", 512),
        ...                      cache_images("mlp-cache"), hook="double.1.mlp")
    """
    record = {"config": asdict(cfg), "source": source.record(), "extra": extra or {}}
    state = _start(cfg, record, resume)
    out = Path(cfg.out)
    top = _Top.empty(source.width, cfg.top_n)
    if state["shards"]:
        top = _Top(**load_file(str(out / state.get("top", TOP_FILE))))
    skip, pending, seen = state["images_done"], [], 0
    for batch in tqdm(images, desc=f"index {source.name}", unit="batch"):
        check_source(source, hook or source.hook, batch.acts_ITD.shape[-1])
        state["grid"] = list(batch.grid)
        for start in range(0, len(batch.image_I), cfg.batch_images):
            ids_I = batch.image_I[start:start + cfg.batch_images]
            acts_ITD = batch.acts_ITD[start:start + cfg.batch_images]
            cut, seen = max(0, skip - seen), seen + len(ids_I)
            if cut >= len(ids_I):
                continue  # done before a resume
            ids_I, acts_ITD = ids_I[cut:].long(), acts_ITD[cut:]
            pending.append(_encode_batch(source, ids_I, acts_ITD, cfg.top_k, top))
            if sum(len(p["ids"]) for p in pending) >= cfg.images_per_shard:
                _flush(out, state, pending, top)
                pending = []
    if pending:
        _flush(out, state, pending, top)
    if state["images_done"] == 0:
        raise ValueError("no images reached the index (the activation stream was empty)")
    commit.write_json(out / INDEX_FILE, state, sort_keys=True)
    return IndexReader(out)


#: Dense feature values materialised at once while encoding (64 MB of float32), whatever the width.
ENCODE_VALUES = 2**24


def _encode_batch(source: FeatureSource, ids_I: Tensor, acts_ITD: Tensor, top_k: int, top: _Top) -> dict[str, Tensor]:
    """Encode a few images at a time (bounded by ENCODE_VALUES) and keep their top-k per token."""
    n_img, n_tok, _ = acts_ITD.shape
    step = max(1, ENCODE_VALUES // (n_tok * source.width))
    parts = []
    for start in range(0, n_img, step):
        chunk_ITD = acts_ITD[start:start + step]
        features_ITF = source.encode(chunk_ITD.flatten(0, 1)).reshape(len(chunk_ITD), n_tok, -1)
        if features_ITF.shape[-1] != source.width:
            raise ValueError(f"{source.name!r} produced {features_ITF.shape[-1]} features, expected {source.width}")
        img_M, tok_M, feat_M, val_M = sparsify(features_ITF, top_k)
        parts.append((img_M + start, tok_M, feat_M, val_M))
    img_M, tok_M, feat_M, val_M = (torch.cat(column) for column in zip(*parts, strict=True))
    top.update(ids_I, img_M, feat_M, val_M)
    return {"ids": ids_I, "image": ids_I[img_M], "token": tok_M, "feature": feat_M, "value": val_M}


def _flush(out: Path, state: dict[str, Any], pending: list[dict[str, Tensor]], top: _Top) -> None:
    """Commit one step: the records shard and a new top table first, ``index.json`` (naming both) last.

    The top table of each step has a name of its own, so until ``index.json`` is replaced it
    still names the previous table and shard count: a kill at any point resumes from a
    consistent state and never counts a shard twice.
    """
    number = len(state["shards"])
    ids = torch.cat([p["ids"] for p in pending])
    tensors = {k: torch.cat([p[k] for p in pending]) for k in ("image", "token", "feature", "value")}
    order = torch.argsort(tensors["image"], stable=True)  # readers binary-search the image column
    tensors = {k: v[order] for k, v in tensors.items()}
    name = f"shard-{number:05d}.safetensors"
    commit.save_safetensors(out / RECORDS / name, tensors)
    previous, state["top"] = state.get("top"), _top_file(number)
    commit.save_safetensors(out / state["top"], top.tensors())
    state["shards"].append({"file": name, "first_image": int(ids.min()), "last_image": int(ids.max()),
                            "images": len(ids), "records": len(tensors["value"])})
    state["images_done"] += len(ids)
    commit.write_json(out / INDEX_FILE, state, sort_keys=True)
    if previous:
        (out / previous).unlink(missing_ok=True)


# -- reading -----------------------------------------------------------------------------------


class IndexReader:
    """Read access to an index directory: top images, token maps, images on disk.

    Example:
        >>> index = IndexReader("idx")  # doctest: +SKIP
        >>> peaks, images = index.top_images(12)  # doctest: +SKIP
        >>> maps_IHW = index.maps(12, images[:5])  # doctest: +SKIP
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        file = self.path / INDEX_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{self.path} holds no max-activation index ({INDEX_FILE} is missing)")
        self.state = json.loads(file.read_text())
        top_file = self.path / (self.state.get("top") or TOP_FILE)
        if not top_file.is_file():
            raise FileNotFoundError(f"index {self.path} has no finished shard ({top_file.name} is missing)")
        self.top = load_file(str(top_file))
        self.grid: tuple[int, int] = tuple(self.state["grid"])  # type: ignore[assignment]
        self._shard_cache: dict[str, dict[str, Tensor]] = {}
        self.images_dir = self.path / IMAGES
        """Where generated images are read and written (shareable between indexes of one run)."""

    @property
    def source(self) -> dict[str, Any]:
        return self.state["source"]

    @property
    def name(self) -> str:
        return str(self.source["name"])

    @property
    def width(self) -> int:
        return int(self.source["width"])

    @property
    def num_images(self) -> int:
        return int(self.state["images_done"])

    def check_feature(self, feature: int) -> int:
        if not 0 <= int(feature) < self.width:
            raise IndexError(f"feature {feature} is out of range: {self.name!r} has {self.width} features")
        return int(feature)

    def density(self) -> Float[Tensor, " F"]:
        """Share of indexed tokens on which each feature was among the kept top-k and positive."""
        tokens = self.num_images * self.grid[0] * self.grid[1]
        return self.top["active_F"].float() / max(tokens, 1)

    def top_images(self, feature: int) -> tuple[Tensor, Tensor]:
        """``(peaks, image ids)`` of the feature's top images, best first (empty slots dropped)."""
        f = self.check_feature(feature)
        keep = self.top["image_FN"][f] >= 0
        return self.top["peak_FN"][f][keep], self.top["image_FN"][f][keep]

    def shard(self, name: str) -> dict[str, Tensor]:
        if name not in self._shard_cache:
            path = self.path / RECORDS / name
            if not path.is_file():
                raise FileNotFoundError(f"records shard {path} listed in {INDEX_FILE} is missing")
            try:
                self._shard_cache = {name: load_file(str(path))}
            except SafetensorError as err:
                raise ValueError(f"records shard {path} is corrupted: {err}") from err
        return self._shard_cache[name]

    def shards(self) -> Iterator[dict[str, Tensor]]:
        """Every records shard in order (one in memory at a time)."""
        for info in self.state["shards"]:
            yield self.shard(info["file"])

    def maps(self, feature: int, images: list[int] | Tensor) -> Float[Tensor, "I h w"]:
        """The feature's token activation map on each image (0 where it was not kept)."""
        f = self.check_feature(feature)
        wanted = [int(i) for i in images]
        n_tok = self.grid[0] * self.grid[1]
        maps_IT = torch.zeros(len(wanted), n_tok)
        for row, image in enumerate(wanted):
            rec = self.shard(self._shard_of(image)["file"])
            query = torch.tensor([image, image + 1], dtype=rec["image"].dtype)
            lo, hi = torch.searchsorted(rec["image"], query).tolist()
            hit = rec["feature"][lo:hi] == f
            maps_IT[row, rec["token"][lo:hi][hit]] = rec["value"][lo:hi][hit]
        return maps_IT.reshape(len(wanted), *self.grid)

    def _shard_of(self, image: int) -> dict[str, Any]:
        for info in self.state["shards"]:
            if info["first_image"] <= image <= info["last_image"]:
                return info
        raise IndexError(f"image {image} is not in index {self.path}")

    def image_path(self, image: int) -> Path:
        return self.images_dir / f"{int(image):06d}.png"

    def load_image(self, image: int) -> Float[Tensor, "3 H W"]:
        """The generated image of ``image`` as a float tensor in [0, 1]."""
        import numpy as np
        from PIL import Image

        path = self.image_path(image)
        if not path.is_file():
            raise FileNotFoundError(
                f"image {image} is missing from {self.images_dir}; generate it with "
                f"`sae-flux interp images {self.path}` (or write_images)"
            )
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        return torch.from_numpy(pixels).permute(2, 0, 1)


def write_images(
    reader: IndexReader, flux: Any, prompts: list[str], images: list[int], seed: int = 0,
    batch_size: int = 16, **generation: Any,
) -> list[Path]:
    """Generate (``flux.generate``, seed ``seed + id``) the listed images missing from the index.

    ``prompts`` is the full prompt list the activations were made from (image id = line).
    """
    import numpy as np
    from PIL import Image

    todo = sorted({int(i) for i in images if not reader.image_path(int(i)).is_file()})
    bad = [i for i in todo if not 0 <= i < len(prompts)]
    if bad:
        raise IndexError(f"images {bad[:5]} have no prompt: the prompt list has {len(prompts)} lines")
    reader.images_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for start in tqdm(range(0, len(todo), batch_size), desc="images", unit="batch", disable=not todo):
        ids = todo[start:start + batch_size]
        pixels_I3HW = flux.generate([prompts[i] for i in ids], seed=seed, prompt_ids=ids, **generation)
        for image, pixels_3HW in zip(ids, pixels_I3HW, strict=True):
            array = (pixels_3HW.clamp(0, 1).permute(1, 2, 0).float().numpy() * 255).round()
            path = reader.image_path(image)  # committed: a kill never leaves a half PNG that counts as made
            commit.write_with(path, partial(Image.fromarray(array.astype(np.uint8)).save, format="PNG"))
            written.append(path)
    return written


def flux_images(
    flux: Any, prompts: list[str], hook: str, seed: int = 0, step: int = 0, batch_size: int = 64,
    **generation: Any,
) -> Iterator[ImageBatch]:
    """Images captured live from ``flux`` (no cache): prompt ``j`` from seed ``seed + j``."""
    for start in range(0, len(prompts), batch_size):
        ids = list(range(start, min(start + batch_size, len(prompts))))
        acts = flux.capture([prompts[i] for i in ids], [hook], seed=seed, steps=[step],
                            prompt_ids=ids, batch_size=batch_size, **generation)
        yield ImageBatch(torch.tensor(ids), acts[hook][:, 0].float(), tuple(acts.grid))
