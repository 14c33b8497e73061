"""Caption sources for activation caches, streamed: text, JSONL, Hugging Face datasets, webdataset tars.

Users hold captions as a text file, JSONL records, a ``datasets`` dataset saved to disk (or its
parquet files), or webdataset-style tar shards (``000001.jpg`` + ``000001.txt`` /
``000001.json`` per sample, the layout sdxl-unbox reads LAION-COCO in). :class:`Captions` reads any
of them, recognised by suffix or directory contents (:func:`detect_kind`), and behaves as a
read-only sequence of the selected captions that never holds the whole source in memory:

- one pass at open counts and hashes the raw captions (``source_hash``, recorded in the
  cache manifest), drops duplicates when asked (a set of 8-byte digests: ~60 B per unique
  caption) and picks a ``limit`` subset by seeded reservoir sampling (memory O(limit), kept in
  source order);
- iteration and shard slices (``captions[start:stop]``) stream the source again; consecutive
  slices continue from where the last one stopped, so writing a cache reads the source once.

Bad input fails in one line: a missing file, a JSON record or dataset without the named field
(the fields it has are listed), a corrupt or truncated tar shard, a file that is not UTF-8.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "c.jsonl"
    >>> _ = path.write_text('{"caption": "a cat"}\\n{"caption": "a dog"}\\n{"caption": "a cat"}\\n')
    >>> caps = Captions(path, field="caption", dedup=True)
    >>> list(caps), caps.record()["duplicates"]
    (['a cat', 'a dog'], 1)
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, overload

logger = logging.getLogger(__name__)

CaptionKind = Literal["text", "jsonl", "datasets", "parquet", "webdataset"]
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write."""


def detect_kind(path: str | Path) -> CaptionKind:
    """The source kind of ``path``: by suffix for a file, by contents for a directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"caption source {path} does not exist")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return "jsonl"
        if suffix == ".parquet":
            return "parquet"
        if suffix == ".tar":
            return "webdataset"
        return "text"
    if any((path / marker).is_file() for marker in DATASET_MARKERS):
        return "datasets"
    if any(path.glob("*.parquet")):
        return "parquet"
    if any(path.glob("*.tar")):
        return "webdataset"
    raise ValueError(
        f"caption directory {path} holds no saved dataset ({' / '.join(DATASET_MARKERS)}), "
        f"no *.parquet and no *.tar shards"
    )


# -- raw readers: each yields stripped, non-blank captions in source order ------------------------


def _text(path: Path) -> Iterator[str]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if b"\x00" in raw:
                raise ValueError(f"prompt file {path} looks binary (it contains NUL bytes)")
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ValueError(f"prompt file {path} is not UTF-8 (bad byte on line {number})") from None
            if line:
                yield line


def _field_of(record: Any, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise ValueError(f"{where} is a JSON {type(record).__name__}, not an object with a {field!r} field")
    if field not in record:
        raise ValueError(f"{where} has no field {field!r} (it has {sorted(record)[:12]}): pass --caption-field")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{where} field {field!r} is a {type(value).__name__}, not a caption string")
    return value.strip()


def _jsonl(path: Path, field: str) -> Iterator[str]:
    for number, line in enumerate(_text(path), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} record {number} is not JSON: {err}") from None
        caption = _field_of(record, field, f"{path} record {number}")
        if caption:
            yield caption


def _columns(names: Sequence[str], field: str, where: str) -> None:
    if field not in names:
        raise ValueError(f"{where} has no column {field!r} (it has {sorted(names)[:12]}): pass --caption-field")


def _saved_dataset(path: Path, field: str) -> Iterator[str]:
    import datasets

    loaded = datasets.load_from_disk(str(path))  # memory-mapped arrow: nothing is read yet
    if isinstance(loaded, datasets.DatasetDict):
        splits = sorted(loaded)
        raise ValueError(f"{path} holds the splits {splits}: give one split's directory, e.g. {path / splits[0]}")
    _columns(loaded.column_names, field, f"dataset {path}")
    for batch in loaded.select_columns([field]).iter(batch_size=1024):
        yield from _strings(batch[field], f"dataset {path}")


def _parquet(path: Path, field: str) -> Iterator[str]:
    import datasets

    files = [str(path)] if path.is_file() else sorted(str(p) for p in path.glob("*.parquet"))
    stream = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    names = list(stream.features or {})
    _columns(names, field, f"parquet {path}")
    for batch in stream.select_columns([field]).iter(batch_size=1024):
        yield from _strings(batch[field], f"parquet {path}")


def _strings(values: Iterable[Any], where: str) -> Iterator[str]:
    for value in values:
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{where} holds a {type(value).__name__} caption, not a string")
        if value.strip():
            yield value.strip()


def _sample_key(name: str) -> tuple[str, str]:
    """webdataset convention: ``dir/000001.jpg`` -> key ``dir/000001``, extension ``jpg``."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def _sample_caption(files: dict[str, bytes], field: str, where: str) -> str | None:
    if "json" in files:
        try:
            record = json.loads(files["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{where}.json is not JSON: {err}") from None
        if isinstance(record, dict) and field in record:
            return _field_of(record, field, f"{where}.json")
        if "txt" not in files:
            _field_of(record, field, f"{where}.json")  # raises, naming the fields it has
    if "txt" in files:
        try:
            return files["txt"].decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ValueError(f"{where}.txt is not UTF-8") from None
    return None


def _tar_samples(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {ext: bytes})`` per sample, caption members only, streamed (``r|*``).

    Raises ``tarfile.ReadError`` for a member cut short or, in an uncompressed shard, a missing
    end-of-archive block (tarfile itself stops quietly at a header cut off by truncation).
    """
    key: str | None = None
    files: dict[str, bytes] = {}
    with shard.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as archive:
        for member in archive:
            if not member.isfile():
                continue
            member_key, ext = _sample_key(member.name)
            if member_key != key:
                if key is not None:
                    yield key, files
                key, files = member_key, {}
            if ext in ("txt", "json"):
                handle = archive.extractfile(member)
                data = handle.read() if handle is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {member.name} is cut short")
                files[ext] = data
        _check_end(raw, archive.offset)
    if key is not None:
        yield key, files


def _check_end(raw: Any, offset: int) -> None:
    """An uncompressed tar ends in a zero block right after its last member."""
    raw.seek(0)
    magic = raw.read(6)
    if magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")):
        return  # compressed: the decompressor reports truncation itself
    raw.seek(offset)
    if raw.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise tarfile.ReadError(f"no end-of-archive block at byte {offset:,}")


def _webdataset(path: Path, field: str) -> Iterator[str]:
    shards = [path] if path.is_file() else sorted(path.glob("*.tar"))
    for shard in shards:
        try:
            for key, files in _tar_samples(shard):
                caption = _sample_caption(files, field, f"tar shard {shard} sample {key}")
                if caption:
                    yield caption
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(f"tar shard {shard} is corrupt or truncated: {err}") from None


def read_raw(path: str | Path, kind: CaptionKind, field: str = "caption") -> Iterator[str]:
    """Every caption of a source in order (stripped, blanks skipped), streamed."""
    path = Path(path)
    if kind == "text":
        return _text(path)
    if kind == "jsonl":
        return _jsonl(path, field)
    if kind == "datasets":
        return _saved_dataset(path, field)
    if kind == "parquet":
        return _parquet(path, field)
    return _webdataset(path, field)


# -- selection -----------------------------------------------------------------------------------


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


class Captions(Sequence[str]):
    """The selected captions of a source, as a streamed read-only sequence.

    Args:
        path: a text file (one caption per line), ``.jsonl``, ``.parquet`` (or a directory of
            them), a directory written by ``datasets``' ``save_to_disk``, or a ``.tar`` shard
            (or a directory of them).
        field: the caption field of JSONL records, dataset / parquet columns and ``.json``
            members of tar samples (a sample without it uses its ``.txt``).
        limit: keep a uniform random ``limit`` of the (de-duplicated) captions, chosen by
            ``seed`` and kept in source order; ``None``: all.
        dedup: drop captions equal to an earlier one.
    """

    def __init__(
        self,
        path: str | Path,
        field: str = "caption",
        limit: int | None = None,
        seed: int = 0,
        dedup: bool = False,
        kind: CaptionKind | None = None,
    ) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {limit}")
        self.path = Path(path)
        self.kind: CaptionKind = kind or detect_kind(self.path)
        self.field, self.limit, self.seed, self.dedup = field, limit, seed, dedup
        self._keep: set[int] | None = None  # raw indices kept (a limit); None: all but _drop
        self._drop: set[int] = set()
        self._scan()
        self._cursor: Iterator[str] | None = None
        self._position = 0

    def _scan(self) -> None:
        digest, seen, reservoir = hashlib.sha256(), set(), []
        rng = random.Random(self.seed)
        n_raw = n_unique = 0
        for index, caption in enumerate(read_raw(self.path, self.kind, self.field)):
            digest.update(caption.encode("utf-8") + b"\n")
            n_raw += 1
            if self.dedup:
                key = _digest(caption)
                if key in seen:
                    if self.limit is None:
                        self._drop.add(index)
                    continue
                seen.add(key)
            if self.limit is not None:  # reservoir sampling (Algorithm R) over unique captions
                if n_unique < self.limit:
                    reservoir.append(index)
                else:
                    slot = rng.randrange(n_unique + 1)
                    if slot < self.limit:
                        reservoir[slot] = index
            n_unique += 1
        if n_raw == 0:
            raise ValueError(f"caption source {self.path} has no prompts (it is empty or blank)")
        self._keep = set(reservoir) if self.limit is not None else None
        self.source_hash = f"sha256:{digest.hexdigest()[:16]}"
        self.num_read, self.num_unique = n_raw, n_unique
        self._len = len(reservoir) if self.limit is not None else n_unique
        logger.info("captions %s (%s): %s read, %s unique, %s kept", self.path, self.kind,
                    f"{n_raw:,}", f"{n_unique:,}", f"{self._len:,}")

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        keep, drop = self._keep, self._drop
        left = len(self)
        for index, caption in enumerate(read_raw(self.path, self.kind, self.field)):
            if left == 0:
                return
            if (keep is not None and index not in keep) or index in drop:
                continue
            left -= 1
            yield caption

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        """Captions by position; consecutive increasing slices continue one stream."""
        if isinstance(index, int):
            if not -len(self) <= index < len(self):
                raise IndexError(f"caption index {index} out of range for {len(self)} captions")
            return self[index % len(self) : index % len(self) + 1][0]
        start, stop, step = index.indices(len(self))
        if step != 1:
            raise ValueError("Captions slices take step 1")
        if self._cursor is None or start < self._position:
            self._cursor, self._position = iter(self), 0
        for _ in range(start - self._position):
            next(self._cursor)
        out = [next(self._cursor) for _ in range(max(0, stop - start))]
        self._position = max(start, stop)
        return out

    def record(self) -> dict[str, Any]:
        """Where the captions came from, for the cache manifest (compared on resume)."""
        return {
            "source": str(self.path.resolve()),
            "kind": self.kind,
            "field": None if self.kind == "text" else self.field,
            "source_hash": self.source_hash,
            "read": self.num_read,
            "duplicates": self.num_read - self.num_unique,
            "limit": self.limit,
            "dedup": self.dedup,
        }
