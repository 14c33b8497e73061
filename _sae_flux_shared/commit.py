"""One crash-safe way to write files: the commit discipline every long job of sae-flux uses.

A job's state advances only by commits. A commit writes a temporary file next to its target
(``.NAME.tmp``), flushes it to disk (``fsync``), renames it over the target and flushes the
directory, so after a kill -9 or a power cut every visible file is either the old version or
the new one, never half of either. A step that writes several files commits them one by one
and commits its *manifest* last (the file that says what is finished: a cache's
``manifest.json``, an index's ``index.json``, a checkpoint directory's rename); readers and
``--resume`` trust only what the manifest names, so no crash point can resume wrong.

Also here: what ``--resume`` needs around the commits (which left-overs of a killed run count as
"nothing saved yet", the one-line list of settings that differ from the saved ones, JSONL logs
whose last line a kill may have torn) and the fault injection the crash harness
(``tests/reliability``) uses to stop a job between any two file operations.

It lives in the leaf package ``_sae_flux_shared`` because ``sae_flux``, ``itda`` and ``cae`` all
commit files and may not import each other (except ``sae_flux`` -> ``itda`` -> ``cae``); it
imports only the standard library (``safetensors`` when asked to write one).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> write_json(d / "state.json", {"step": 3})
    >>> sorted(p.name for p in d.iterdir())   # no temporary file is left behind
    ['state.json']
    >>> settings_differences({"lr": 0.1, "seed": 0}, {"lr": 0.2, "seed": 0})
    ['lr: saved 0.1, now 0.2']
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CRASH_ENV = "SAE_FLUX_CRASH_AFTER"
"""Fault injection: ``SAE_FLUX_CRASH_AFTER=k`` kills the process (SIGKILL) at its k-th file
operation (a temporary file written, a rename, a directory committed). For the crash harness."""

TMP_SUFFIX = ".tmp"
TMP_DIR_PREFIX = ".tmp-"


class ResumeError(ValueError):
    """``--resume`` cannot continue: settings differ, or the saved state is not this job's."""


class InjectedCrash(BaseException):
    """Raised at the armed file operation by :func:`crash_after` (a simulated kill in-process).

    A ``BaseException`` so that no ``except ValueError``/``OSError`` of a job handles it, as
    nothing handles a real kill.
    """


_operations = 0
_armed: int | None = None


def fault_point(what: str) -> None:
    """Count one file operation; crash here when the harness asked for this one."""
    global _operations
    _operations += 1
    limit = _armed if _armed is not None else int(os.environ.get(CRASH_ENV) or 0)
    if limit and _operations == limit:
        if _armed is not None:
            raise InjectedCrash(f"injected crash at file operation {_operations} ({what})")
        os.kill(os.getpid(), signal.SIGKILL)


def operations() -> int:
    """File operations counted so far in this process (``crash_after`` counts from its start)."""
    return _operations


@contextmanager
def crash_after(k: int | None) -> Iterator[None]:
    """Raise :class:`InjectedCrash` at the ``k``-th file operation inside the block (None: count only)."""
    global _operations, _armed
    saved = _operations, _armed
    _operations, _armed = 0, k
    try:
        yield
    finally:
        _armed = saved[1]


# -- low level ----------------------------------------------------------------------------------


def temporary(path: Path) -> Path:
    """The temporary name a commit of ``path`` writes first (``.NAME.tmp``, same directory)."""
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def is_temporary(name: str) -> bool:
    """Whether a file or directory name is a commit's temporary (left over by a kill)."""
    return (name.startswith(".") and name.endswith(TMP_SUFFIX)) or name.startswith(TMP_DIR_PREFIX)


def fsync_directory(path: Path) -> None:
    """Flush a directory's entries (a rename is durable only once its directory is flushed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def commit(tmp: Path, path: Path) -> None:
    """Flush the finished temporary ``tmp`` and rename it over ``path`` (then flush the directory)."""
    _fsync_file(tmp)
    fault_point(f"wrote {tmp}")
    os.replace(tmp, path)
    fsync_directory(path.parent)
    fault_point(f"renamed {path}")


def write_with(path: str | Path, write: Callable[[Path], object]) -> None:
    """Commit ``path`` written by ``write(tmp)`` (any writer that takes a file name).

    A writer that fails leaves no temporary file behind and the old ``path`` untouched.
    """
    path = Path(path)
    tmp = temporary(path)
    written = False
    try:
        write(tmp)
        written = True
    finally:
        if not written:
            tmp.unlink(missing_ok=True)
    commit(tmp, path)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Commit ``data`` as ``path``."""
    write_with(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | Path, text: str) -> None:
    """Commit UTF-8 ``text`` as ``path``."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any, indent: int | None = 1, sort_keys: bool = False) -> None:
    """Commit ``data`` as JSON (keys in the order given, or sorted), ending with a newline."""
    write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n")


# -- safetensors ----------------------------------------------------------------------------------


def sort_safetensors_header(path: Path) -> None:
    """Rewrite a safetensors file's ``__metadata__`` with its keys sorted, in place.

    The safetensors library writes metadata from a hash map whose order changes from one
    process to the next, so the same tensors and metadata gave different bytes. Sorting keeps
    the header's length, so only the header bytes are rewritten.
    """
    with open(path, "rb+") as handle:
        size = int.from_bytes(handle.read(8), "little")
        raw = handle.read(size)
        header = json.loads(raw)
        meta = header.get("__metadata__")
        if not meta or len(meta) < 2:
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        ordered = {"__metadata__": header.pop("__metadata__"), **header}
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > size:
            raise ValueError(f"{path}: the sorted safetensors header does not fit ({len(text)} > {size} bytes)")
        handle.seek(8)
        handle.write(text + b" " * (size - len(text)))


def save_safetensors(path: str | Path, tensors: Mapping[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Commit ``tensors`` (torch) as a safetensors file with a byte-stable header."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        sort_safetensors_header(tmp)

    write_with(path, write)


# -- directories ----------------------------------------------------------------------------------


@contextmanager
def staged_directory(final: str | Path) -> Iterator[Path]:
    """Fill a temporary directory, then commit it as ``final`` in one rename.

    Every file is flushed, the directory renamed (an existing ``final`` is replaced) and its
    parent flushed. If the block raises, the temporary directory is removed and ``final`` is
    left as it was.

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> with staged_directory(root / "step-2") as tmp:
        ...     _ = (tmp / "weights.bin").write_bytes(b"1")
        >>> [p.name for p in root.iterdir()]
        ['step-2']
    """
    final = Path(final)
    tmp = final.with_name(f"{TMP_DIR_PREFIX}{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    filled = False
    try:
        yield tmp
        filled = True
    finally:
        if not filled:
            shutil.rmtree(tmp, ignore_errors=True)
    for file in sorted(tmp.rglob("*")):
        if file.is_file():
            _fsync_file(file)
    fsync_directory(tmp)
    fault_point(f"wrote {tmp}")
    if final.exists():
        shutil.rmtree(final)
        fault_point(f"removed {final}")
    os.replace(tmp, final)
    fsync_directory(final.parent)
    fault_point(f"renamed {final}")


def remove_temporaries(directory: str | Path) -> None:
    """Delete the temporaries a killed commit left in ``directory`` (not recursive)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if is_temporary(entry.name):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def holds_nothing_saved(directory: str | Path, own: Iterable[str] = ()) -> bool:
    """Whether ``directory`` holds nothing a resume could continue from.

    True when it is missing or holds only directories, commit temporaries and files matching
    the patterns in ``own`` (files a job writes before its manifest names them: a log, a shard
    committed just before the kill). A run killed before its first manifest leaves such a
    directory: it simply starts again there.
    """
    directory = Path(directory)
    if not directory.exists():
        return True
    patterns = list(own)
    for entry in directory.rglob("*"):
        if entry.is_dir() or any(is_temporary(p) for p in entry.relative_to(directory).parts):
            continue
        if not any(fnmatch.fnmatch(entry.name, pattern) for pattern in patterns):
            return False
    return True


def clear(directory: str | Path) -> None:
    """Empty ``directory`` (left-overs of a run that saved nothing) and keep it."""
    directory = Path(directory)
    if directory.is_dir():
        for entry in directory.iterdir():
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    directory.mkdir(parents=True, exist_ok=True)


# -- resume ---------------------------------------------------------------------------------------


def settings_differences(saved: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = (),
                         prefix: str = "") -> list[str]:
    """``"key: saved A, now B"`` for every setting that differs (nested dicts as ``a.b``)."""
    ignore = set(ignore)
    diffs = []
    for key in sorted(set(saved) | set(new)):
        if key in ignore or f"{prefix}{key}" in ignore:
            continue
        a, b = saved.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += settings_differences(a, b, ignore, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: saved {a!r}, now {b!r}")
    return diffs


def check_same_settings(what: str, saved: Mapping[str, Any], new: Mapping[str, Any],
                        ignore: Iterable[str] = ()) -> None:
    """Raise one line naming every difference: ``cannot resume WHAT: ...; use the saved settings or a new directory``."""
    diffs = settings_differences(saved, new, ignore)
    if diffs:
        raise ResumeError(f"cannot resume {what}: its settings differ ({'; '.join(diffs)}); "
                          f"rerun with the saved settings or use a new output directory")


# -- JSON lines -----------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; a last line torn by a kill is dropped (with a warning).

    Any other line that is not a JSON object is refused in one line naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines[-1] != b""  # a complete file ends with a newline
    records = []
    for number, line in enumerate(lines[:-1] if not torn else lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            if torn and number == len(lines):
                logger.warning("%s: dropped its last line, cut short by an interrupted write", path)
                break
            raise ValueError(f"{path} line {number} is not valid JSON ({err.__class__.__name__}): "
                             f"the file is corrupted; remove that line or the file") from err
        if not isinstance(record, dict):
            raise ValueError(f"{path} line {number} is not a JSON object")
        records.append(record)
    return records


def write_jsonl(path: str | Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Commit ``records`` as a JSON-lines file (one object per line)."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one line (a kill may tear it: :func:`read_jsonl` drops a torn last line)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
