"""Checkpoints of an ITDA build, so a killed ``itda build`` resumes to the very same atoms.

Algorithm 1 of Leask, Nanda, Al Moubayed (ICML 2025, arXiv 2505.17769) reads its stream once;
a build of a large cache runs for hours. Every ``checkpoint_every`` batches the growing
dictionary is committed under ``OUT/checkpoints/batch-XXXXXXXX/`` in one directory rename
(:func:`_sae_flux_shared.commit.staged_directory`)::

    itda_state.safetensors        # unit atoms, mean, std, the Gram matrix (exact continuation)
    itda_provenance.safetensors   # where every atom came from (itda.provenance)
    build.json                    # settings (compared on resume), batches and tokens read

Only the newest checkpoint is kept; the finished dictionary is committed into ``OUT`` (``cfg.json``
last) and the checkpoints are removed after it. :func:`resume_point` picks what ``--resume``
continues from: the newer of the checkpoint and a dictionary already in ``OUT`` (a build stopped
at ``max_atoms`` or a bad batch), after comparing the settings; with nothing saved the build
starts again.

Example:
    >>> import tempfile, torch
    >>> from itda.build import BuildConfig, build
    >>> out = tempfile.mkdtemp()
    >>> settings = {"build": {"target_l0": 4}}
    >>> d = build(torch.randn(1024, 16).split(128), BuildConfig(target_l0=4, loss_threshold=0.4),
    ...           progress=False, checkpoint=lambda s: save_checkpoint(out, s, settings),
    ...           checkpoint_every=2)
    >>> point = resume_point(out, settings, max_atoms=50_000)
    >>> point.batches_seen, point.state.size == d.cfg.d_sae
    (8, True)
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, NamedTuple

from sae_lens.constants import SAE_CFG_FILENAME
from safetensors.torch import load_file

import _sae_flux_shared.commit as commit
from itda.construction import BuildState
from itda.model import ITDA
from itda.provenance import Provenance

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "itda_state.safetensors"
PROGRESS_FILE = "build.json"
DEFAULT_EVERY = 16
"""Batches between checkpoints of ``itda build`` (``--checkpoint-every``; 4096 tokens a batch)."""
PROGRESS_KEYS = ("tokens_seen", "batches_seen", "batch_tokens")
"""Progress counters (batch_tokens: the largest batch read so far), not settings: never compared on resume."""
RAISABLE = ("build.max_atoms",)
"""Settings a resume may change: a larger ``max_atoms`` continues a build that stopped at the cap."""


class ResumePoint(NamedTuple):
    """What ``--resume`` continues from: an exact checkpoint state or a saved dictionary."""

    state: BuildState | None
    dictionary: ITDA | None
    batches_seen: int


def checkpoints(out: str | Path) -> list[Path]:
    """Committed checkpoints of a build, oldest first."""
    root = Path(out) / CHECKPOINTS
    return sorted(p for p in root.glob("batch-*") if p.is_dir()) if root.is_dir() else []


def save_checkpoint(out: str | Path, state: BuildState, settings: dict[str, Any]) -> Path:
    """Commit ``state`` under ``out/checkpoints/batch-N`` and drop the older checkpoints."""
    final = Path(out) / CHECKPOINTS / f"batch-{state.batches_seen:08d}"
    with commit.staged_directory(final) as tmp:
        commit.save_safetensors(tmp / STATE_FILE, state.tensors())
        state.prov.save(tmp)
        commit.write_json(tmp / PROGRESS_FILE, {"settings": settings, "tokens_seen": state.tokens_seen,
                                                "batches_seen": state.batches_seen,
                                                "batch_tokens": state.batch_tokens})
    for old in checkpoints(out)[:-1]:
        shutil.rmtree(old)
    return final


def remove_checkpoints(out: str | Path) -> None:
    """Delete the checkpoints once the finished dictionary is committed."""
    shutil.rmtree(Path(out) / CHECKPOINTS, ignore_errors=True)


def dictionary_settings(itda: ITDA) -> tuple[dict[str, Any], int]:
    """The settings a saved dictionary records (``metadata.itda_build``) and its batches read."""
    build = dict(itda.cfg.metadata.get("itda_build", {}) or {})
    seen = int(build.get("batches_seen", 0))
    stream = build.pop("stream", {})
    for key in PROGRESS_KEYS:
        build.pop(key, None)
    return {"build": build, "stream": stream}, seen


def resume_point(out: str | Path, settings: dict[str, Any], max_atoms: int) -> ResumePoint | None:
    """The newest saved progress in ``out`` whose settings match ``settings`` (None: nothing saved).

    A difference in any setting but ``max_atoms`` is refused in one line naming each.
    """
    out = Path(out)
    commit.remove_temporaries(out / CHECKPOINTS)
    found = checkpoints(out)
    dictionary = ITDA.load(out) if (out / SAE_CFG_FILENAME).is_file() else None
    saved_seen = -1
    if dictionary is not None:
        saved, saved_seen = dictionary_settings(dictionary)
        commit.check_same_settings(f"the ITDA build in {out}", saved, settings, ignore=RAISABLE)
    if found:
        progress = _read_progress(found[-1])
        commit.check_same_settings(f"the ITDA build in {out}", progress["settings"], settings, ignore=RAISABLE)
        if progress["batches_seen"] > saved_seen:
            state = _load_state(found[-1], progress, max_atoms)
            logger.info("resuming %s from %s (%d batches read)", out, found[-1].name, state.batches_seen)
            return ResumePoint(state, None, state.batches_seen)
    if dictionary is not None:
        return ResumePoint(None, dictionary, saved_seen)
    if out.exists():
        logger.info("%s holds no ITDA checkpoint yet: the build starts from the first batch", out)
    return None


def _read_progress(path: Path) -> dict[str, Any]:
    file = path / PROGRESS_FILE
    try:
        progress = json.loads(file.read_text())
        return {"settings": progress["settings"], "tokens_seen": int(progress["tokens_seen"]),
                "batches_seen": int(progress["batches_seen"]),
                "batch_tokens": int(progress.get("batch_tokens", 0))}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"ITDA checkpoint {path} is damaged ({file.name}: {err}); remove it and resume") from err


def _load_state(path: Path, progress: dict[str, Any], max_atoms: int) -> BuildState:
    tensors = load_file(str(path / STATE_FILE))
    prov = Provenance.load(path, int(tensors["atoms_FD"].shape[0]))
    state = BuildState.from_tensors(tensors, prov, max_atoms, progress["tokens_seen"], progress["batches_seen"])
    state.batch_tokens = progress["batch_tokens"]
    return state
