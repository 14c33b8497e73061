"""Activation caches on disk: sharded safetensors plus a JSON manifest, written crash-safely.

The data flow of ``../shared/design.md``: prompts -> :class:`sae_flux.Flux` -> hook points ->
this cache -> trainers (sae_lens ``SAETrainer`` or ``itda`` construction) through
:class:`CacheReader`.

Layout of a cache directory::

    manifest.json                      # CacheConfig record, hook widths, completed shards
    <hook>/shard-00000.safetensors     # "acts" (tokens, width) + provenance columns

Shard ``k`` holds prompts ``[k * shard_prompts, (k + 1) * shard_prompts)`` for every hook. A
shard is committed (temporary name, fsync, rename: :mod:`_sae_flux_shared.commit`); the manifest is
committed only after all hooks' files of a shard are in place (it first appears with shard 0). So a run killed at any point leaves a
manifest that lists only complete shards, and ``resume=True`` regenerates exactly the missing
ones (prompt ``j`` always uses seed ``seed + j``, so the result is byte-identical).

Under ``torchrun --nproc_per_node N`` (or ``accelerate launch``) every rank runs the same job
(:mod:`sae_flux.distributed`): the shards still to write are dealt round robin over the ranks,
each rank commits its own shard files, and rank 0 commits the manifest after every round of at
most one shard per rank. Shard ``k``'s bytes do not depend on which rank wrote it, so the cache
(files and manifest, which records no world size) is the same for every N, and ``--resume``
continues under any N. Settings that differ between ranks, or a rank refusing its input, stop
every rank with the same one-line error (docs/scale.md, "Several GPUs, several machines").

Example:
    >>> cfg = CacheConfig(model="tiny", prompts="prompts.txt",  # doctest: +SKIP
    ...                   hooks=["double.1.img"], out="cache")
    >>> write_cache(cfg)  # doctest: +SKIP
    >>> reader = CacheReader("cache")  # doctest: +SKIP
    >>> for batch_BD in reader.batches(batch_size=256):  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

import _sae_flux_shared.commit as commit
from _sae_flux_shared.usererror import UserError
from sae_flux import distributed
from sae_flux.cache_config import DTYPE_NAMES, CacheConfig
from sae_flux.captions import Captions
from sae_flux.sampling import check_tokens_per_image, kept_rows
from sae_flux.sources import batch_rows
from sae_flux.threads import torch_threads

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}
"""Storage dtypes of a cache by ``CacheConfig.dtype`` name."""


@dataclass
class ShardRecord:
    """One completed shard: its prompt range and token count per hook."""

    index: int
    prompt_start: int
    prompt_stop: int
    tokens: dict[str, int]


@dataclass
class Manifest:
    """``manifest.json``: how the cache was made and which shards are complete."""

    settings: dict[str, Any]
    """Everything that determines the data (compared on resume)."""
    widths: dict[str, int]
    """Feature width per hook."""
    dtype: str
    num_prompts: int
    shards: list[ShardRecord] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    @property
    def hooks(self) -> list[str]:
        return list(self.widths)

    @property
    def hook(self) -> str:
        """The cached hook when there is exactly one."""
        if len(self.widths) != 1:
            raise ValueError(f"this cache holds several hooks {self.hooks}; name one")
        return self.hooks[0]

    @property
    def d_model(self) -> int:
        return self.widths[self.hook]

    @property
    def model_id(self) -> str:
        return str(self.settings["model_id"])

    @property
    def complete(self) -> bool:
        return sum(s.prompt_stop - s.prompt_start for s in self.shards) == self.num_prompts

    def tokens(self, hook: str) -> int:
        return sum(s.tokens[hook] for s in self.shards)

    def save(self, directory: Path) -> None:
        """Commit ``directory/manifest.json`` (:func:`_sae_flux_shared.commit.write_json`)."""
        commit.write_json(directory / MANIFEST, asdict(self), sort_keys=True)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no activation cache ({MANIFEST} is missing)")
        try:
            raw = json.loads(path.read_text())
            raw["shards"] = [ShardRecord(**s) for s in raw["shards"]]
            return cls(**raw)
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a valid cache manifest: {err}") from err


# -- prompts ------------------------------------------------------------------------------------


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a UTF-8 text file, one per non-blank line; clear errors for bad files."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"prompt file {path} is a directory, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise ValueError(f"prompt file {path} looks binary (it contains NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"prompt file {path} is not UTF-8 (bad byte on line {line})") from err
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts (it is empty or blank)")
    return prompts


def prompt_hash(prompts: Iterable[str]) -> str:
    """``sha256`` of the prompts joined by newlines, computed as they stream past."""
    digest = hashlib.sha256()
    for i, prompt in enumerate(prompts):
        digest.update(("\n" if i else "").encode("utf-8") + prompt.encode("utf-8"))
    return f"sha256:{digest.hexdigest()[:16]}"


# -- writing ------------------------------------------------------------------------------------


def load_flux(model: str) -> Any:
    """``tiny``/``tiny:SEED``, ``organism``, or a repo id / directory -> :class:`sae_flux.Flux`."""
    from sae_flux.flux import Flux

    if model == "organism":
        return Flux.organism()
    if model == "tiny" or model.startswith("tiny:"):
        return Flux.tiny(seed=int(model.partition(":")[2] or 0))
    return Flux.from_pretrained(model)


def open_captions(cfg: CacheConfig) -> Captions:
    """The captions of ``cfg.prompts`` as the job selects them (streamed; see :mod:`sae_flux.captions`)."""
    return Captions(cfg.prompts, cfg.caption_field, cfg.limit, cfg.seed, cfg.dedup)


def settings_of(cfg: CacheConfig, flux: Any, prompts: Sequence[str]) -> dict[str, Any]:
    """Everything that determines a cache's bytes; two caches with equal settings are equal."""
    kwargs = flux.generation_kwargs(
        num_inference_steps=cfg.num_inference_steps, height=cfg.resolution, width=cfg.resolution
    )
    return {
        "model_id": flux.model_id,
        "revision": getattr(flux.model, "revision", None),
        "hooks": list(cfg.hooks),
        "prompt_hash": prompt_hash(prompts),
        "generation": kwargs,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "dtype": cfg.dtype,
        "batch_size": cfg.batch_size,
        "shard_prompts": cfg.shard_prompts,
        "captions": (prompts if isinstance(prompts, Captions) else open_captions(cfg)).record(),
        "tokens_per_image": cfg.tokens_per_image,
    }


def _prepare(out: Path, manifest: Manifest, resume: bool, hooks: Sequence[str]) -> Manifest:
    """The manifest to continue from, or a clear error if ``out`` holds something else; the
    hooks' directories made.

    A directory with nothing committed yet (missing, empty, or only a killed run's temporaries)
    starts afresh, with or without ``resume``. The manifest is first written with the first shard.
    """
    manifest = _continue_from(out, manifest, resume)
    for hook in hooks:
        (out / hook).mkdir(exist_ok=True)
    return manifest


def _continue_from(out: Path, manifest: Manifest, resume: bool) -> Manifest:
    exists = (out / MANIFEST).is_file()
    if not exists:
        if not commit.holds_nothing_saved(out, own=["shard-*.safetensors"]):
            raise FileExistsError(f"output directory {out} is not empty and holds no cache")
        if resume and out.exists():
            logger.info("%s holds no finished shard yet: starting the cache afresh", out)
        commit.clear(out)
        return manifest
    old = Manifest.load(out)
    commit.check_same_settings(f"the cache in {out}", old.settings, manifest.settings)
    if not resume and not old.complete:
        raise FileExistsError(f"{out} holds an unfinished cache with these settings: pass --resume")
    return old


def _write_shard(path: Path, tensors: dict[str, Tensor]) -> None:
    """Commit a shard (temporary name, fsync, rename); never leave a partial file."""
    try:
        commit.write_with(path, lambda tmp: save_file(tensors, str(tmp)))
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(
                err.errno,
                f"disk full while writing {path}; no partial shard was kept and the manifest "
                f"still lists every finished shard: free space and rerun with --resume",
            ) from err
        raise


def _shard_tensors(acts: Any, hook: str, dtype: torch.dtype, cfg: CacheConfig) -> dict[str, Tensor]:
    rows = kept_rows(hook, tuple(acts[hook].shape[:3]), acts.prompt_ids, acts.steps, cfg.tokens_per_image, cfg.seed)
    tokens = acts.tokens(hook)
    tensors = {"acts": (tokens if rows is None else tokens[rows]).to(dtype).contiguous()}
    for key, value in acts.provenance(hook).items():
        value = value if rows is None else value[rows]
        tensors[key] = value.to(torch.float32 if key == "timestep" else torch.int32)
    return tensors


def write_cache(cfg: CacheConfig, resume: bool = False, flux: Any = None) -> Manifest:
    """Cache ``cfg.hooks`` for every prompt of ``cfg.prompts`` into ``cfg.out``.

    The captions stream from their source (:class:`sae_flux.captions.Captions`) and, with
    ``cfg.tokens_per_image``, K image tokens per image per kept step are kept
    (:mod:`sae_flux.sampling`). Memory stays bounded by one shard. With ``resume`` an interrupted run continues where its
    manifest ends. Returns the final manifest.

    Under a launcher (``torchrun``, ``accelerate launch``: :mod:`sae_flux.distributed`) every
    rank runs this same call: the shards still to write are dealt round robin over the ranks
    (:func:`_my_shards`), each rank captures and commits its own, and rank 0 commits the
    manifest after every round. The files are the same bytes whatever the number of ranks.
    """
    with distributed.process_group() as ranks, torch_threads(distributed.rank_threads()):
        prompts, flux, manifest = distributed.on_every_rank(partial(_open, cfg, flux))
        distributed.check_same({**manifest.settings, "out": cfg.out, "resume": resume}, what="cache settings")
        out = Path(cfg.out)
        created, existed = not (out / MANIFEST).is_file(), out.exists()
        manifest = distributed.on_main(partial(_prepare, out, manifest, resume, cfg.hooks))
        finished = False
        try:
            _write_shards(cfg, flux, prompts, out, manifest, ranks)
            finished = True
        finally:
            if not finished and ranks.is_main and created and not manifest.shards:
                # a refused first shard leaves nothing
                commit.clear(out) if existed else shutil.rmtree(out, ignore_errors=True)
        distributed.barrier()  # every rank returns once the manifest is complete
    logger.info("cache %s complete: %d shards", out, len(manifest.shards))
    return manifest


def _open(cfg: CacheConfig, flux: Any) -> tuple[Captions, Any, Manifest]:
    """The captions, the model and the manifest this job would write (nothing written yet)."""
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise UserError(f"--out {cfg.out} is a file, not a directory")
    prompts = open_captions(cfg)
    flux = flux if flux is not None else load_flux(cfg.model)
    widths = {h: flux.width(h) for h in cfg.hooks}
    if cfg.tokens_per_image is not None:
        resolution = cfg.resolution or flux.resolution
        check_tokens_per_image(cfg.tokens_per_image, flux.grid(resolution, resolution), resolution)
    return prompts, flux, Manifest(settings_of(cfg, flux, prompts), widths, cfg.dtype, len(prompts))


def _my_shards(todo: Sequence[int], ranks: distributed.Ranks) -> list[int | None]:
    """This rank's shard in each round (``None``: idle in that round): ``todo[i]`` goes to rank
    ``i mod world_size`` (:func:`sae_flux.distributed.shard_owner`), so the ranks' shares are
    disjoint and fixed by the manifest alone, whatever world size wrote it."""
    rounds = -(-len(todo) // ranks.world_size)
    mine: list[int | None] = [None] * rounds
    for i, k in enumerate(todo):
        if distributed.shard_owner(i, ranks.world_size) == ranks.rank:
            mine[i // ranks.world_size] = k
    return mine


def _write_shards(cfg: CacheConfig, flux: Any, prompts: Sequence[str], out: Path, manifest: Manifest,
                  ranks: distributed.Ranks) -> None:
    """Capture and commit every shard the manifest does not list yet, one round of at most one
    shard per rank at a time; after each round every rank learns the round's shard records and
    rank 0 commits the manifest (shards first, manifest last, as for one process)."""
    done = {s.index for s in manifest.shards}
    n_shards = -(-len(prompts) // cfg.shard_prompts)
    todo = [k for k in range(n_shards) if k not in done]
    if ranks.is_main and 0 < len(todo) < ranks.world_size:
        logger.warning("%d shards to write on %d ranks: ranks %d-%d stay idle", len(todo), ranks.world_size,
                       len(todo), ranks.world_size - 1)
    with tqdm(total=len(todo), desc="cache shards", unit="shard", disable=not ranks.is_main) as bar:
        for k in _my_shards(todo, ranks):
            record = distributed.on_every_rank(partial(_write_one, cfg, flux, prompts, out, k))
            records = [r for r in distributed.gather(record) if r is not None]
            manifest.shards.extend(records)
            manifest.shards.sort(key=lambda s: s.index)
            distributed.on_main(partial(manifest.save, out))  # a manifest rank 0 cannot write stops every rank
            bar.update(len(records))


def _write_one(cfg: CacheConfig, flux: Any, prompts: Sequence[str], out: Path, k: int | None) -> ShardRecord | None:
    """Capture shard ``k`` and commit its file for every hook (``None``: a rank idle this round)."""
    if k is None:
        return None
    start, stop = k * cfg.shard_prompts, min((k + 1) * cfg.shard_prompts, len(prompts))
    acts = flux.capture(
        prompts[start:stop],
        cfg.hooks,
        num_inference_steps=cfg.num_inference_steps,
        seed=cfg.seed,
        height=cfg.resolution,
        width=cfg.resolution,
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        prompt_ids=range(start, stop),
    )
    counts = {}
    for hook in cfg.hooks:
        tensors = _shard_tensors(acts, hook, DTYPES[cfg.dtype], cfg)
        _write_shard(shard_path(out, hook, k), tensors)
        counts[hook] = int(tensors["acts"].shape[0])
    return ShardRecord(k, start, stop, counts)


def shard_path(out: Path, hook: str, index: int) -> Path:
    return Path(out) / hook / f"shard-{index:05d}.safetensors"


# -- reading ------------------------------------------------------------------------------------


class CacheReader:
    """Streams a cache's activations: in order with provenance, or as shuffled batches.

    Example:
        >>> reader = CacheReader(  # doctest: +SKIP
        ...     "cache")            # a one-hook cache; else CacheReader(p, hook=...)
        >>> reader.manifest.d_model, reader.num_tokens  # doctest: +SKIP
        >>> for acts_ND, prov in reader.iter_shards(): ...  # doctest: +SKIP
        >>> batches = reader.batches(  # doctest: +SKIP
        ...     batch_size=4096, seed=0, epochs=None)   # for SAETrainer
    """

    def __init__(self, path: str | Path, hook: str | None = None) -> None:
        self.path = Path(path)
        self.manifest = Manifest.load(self.path)
        if hook is None:
            hook = self.manifest.hook
        if hook not in self.manifest.widths:
            raise ValueError(f"hook {hook!r} is not in this cache; it holds {self.manifest.hooks}")
        self.hook = hook

    @property
    def d_model(self) -> int:
        return self.manifest.widths[self.hook]

    @property
    def num_tokens(self) -> int:
        return self.manifest.tokens(self.hook)

    def load_shard(self, record: ShardRecord) -> dict[str, Tensor]:
        """One shard's tensors, checked against the manifest (names the file if it is bad)."""
        path = shard_path(self.path, self.hook, record.index)
        if not path.is_file():
            raise FileNotFoundError(f"cache shard {path} listed in the manifest is missing")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cache shard {path} is corrupted or truncated: {err}") from err
        acts = tensors.get("acts")
        expected = (record.tokens[self.hook], self.d_model)
        if acts is None or tuple(acts.shape) != expected:
            got = None if acts is None else tuple(acts.shape)
            raise ValueError(f"cache shard {path} holds acts of shape {got}, manifest says {expected}")
        return tensors

    def iter_shards(self) -> Iterator[tuple[Float[Tensor, "n d"], dict[str, Tensor]]]:
        """``(acts, provenance)`` per shard in prompt order; provenance as in Activations."""
        for record in self.manifest.shards:
            tensors = self.load_shard(record)
            acts = tensors.pop("acts")
            yield acts, tensors

    def in_order(self, batch_size: int) -> Iterator[tuple[Float[Tensor, "n d"], dict[str, Tensor]]]:
        """``(acts, provenance)`` in cache order, each at most ``batch_size`` rows within one shard.

        A cache of fewer tokens than one batch yields them all, with a warning
        (:func:`sae_flux.sources.batch_rows`).
        """
        batch_rows(self.num_tokens, batch_size, 1, f"activation cache {self.path}")
        return self._in_order(batch_size)

    def _in_order(self, batch_size: int) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
        for acts_ND, prov in self.iter_shards():
            for start in range(0, acts_ND.shape[0], batch_size):
                rows = slice(start, start + batch_size)
                yield acts_ND[rows], {k: v[rows] for k, v in prov.items()}

    def batches(
        self,
        batch_size: int,
        seed: int = 0,
        buffer_tokens: int = 262_144,
        epochs: int | None = 1,
        dtype: torch.dtype = torch.float32,
    ) -> Iterator[Float[Tensor, "batch d"]]:
        """Shuffled batches through a mixing buffer of ``buffer_tokens`` (``epochs=None``: forever).

        Shards are visited in a seeded random order; tokens are mixed across the shards that
        share the buffer. The final partial batch of each epoch is dropped. Checked at once, before
        anything is read: a cache of fewer tokens than one batch is refused for ``epochs=None``
        (it could never yield) and yields one short batch per epoch otherwise, with a warning
        (:func:`sae_flux.sources.batch_rows`); a buffer larger than the cache is capped to the
        cache, with a note (each epoch then shuffles the whole cache at once).
        """
        if not self.manifest.shards:
            raise ValueError(f"cache {self.path} has no finished shards")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1 or None, got {epochs}")
        batch_size = batch_rows(self.num_tokens, batch_size, epochs, f"activation cache {self.path}")
        if buffer_tokens > self.num_tokens:
            logger.info("shuffle buffer of %s tokens capped to the %s tokens of cache %s: each epoch "
                        "shuffles the whole cache", f"{buffer_tokens:,}", f"{self.num_tokens:,}", self.path)
            buffer_tokens = self.num_tokens
        return self._batches(batch_size, seed, buffer_tokens, epochs, dtype)

    def _batches(
        self, batch_size: int, seed: int, buffer_tokens: int, epochs: int | None, dtype: torch.dtype
    ) -> Iterator[Tensor]:
        gen = torch.Generator().manual_seed(seed)
        epoch = 0
        while epochs is None or epoch < epochs:
            yield from self._epoch(batch_size, gen, buffer_tokens, dtype)
            epoch += 1

    def _epoch(
        self, batch_size: int, gen: torch.Generator, buffer_tokens: int, dtype: torch.dtype
    ) -> Iterator[Tensor]:
        order = torch.randperm(len(self.manifest.shards), generator=gen).tolist()
        buffer: list[Tensor] = []
        held = 0
        for i in order[:-1]:
            acts = self.load_shard(self.manifest.shards[i])["acts"]
            buffer.append(acts)
            held += acts.shape[0]
            if held >= buffer_tokens:
                rest = yield from _drain(torch.cat(buffer), batch_size, gen, dtype, keep=buffer_tokens // 2)
                buffer, held = [rest], rest.shape[0]
        buffer.append(self.load_shard(self.manifest.shards[order[-1]])["acts"])
        yield from _drain(torch.cat(buffer), batch_size, gen, dtype, keep=0)


def _drain(
    pool: Tensor, batch_size: int, gen: torch.Generator, dtype: torch.dtype, keep: int
) -> Generator[Tensor, None, Tensor]:
    """Shuffle ``pool``, yield full batches until at most ``keep`` rows remain; return the rest."""
    pool = pool[torch.randperm(pool.shape[0], generator=gen)]
    n_out = max(0, (pool.shape[0] - keep) // batch_size) * batch_size
    for start in range(0, n_out, batch_size):
        yield pool[start : start + batch_size].to(dtype)
    return pool[n_out:]
