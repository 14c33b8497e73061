"""The one dictionary loader: a local SAELens directory or a Hub reference, checked.

A dictionary is any directory ``SAE.load_from_disk`` reads (``cfg.json`` +
``sae_weights.safetensors``): the SAEs ``sae-flux train`` saves and ITDA dictionaries (their
architecture ``"itda"`` is registered by importing :mod:`itda`). A Hub reference names a folder of
a Hub repository the way ``SAE.from_pretrained(repo_id, folder)`` does, written ``REPO_ID:FOLDER``
(``flux-org/saes:double.18.img``); it is fetched through huggingface_hub with its cache, so
``HF_HUB_OFFLINE=1`` loads what was downloaded before.

Checks, each failing with one line: the directory holds ``cfg.json`` with valid JSON, its
architecture is registered with sae_lens, and (when asked) it was trained on the expected hook.

Example:
    >>> sae = load_dictionary("dictionaries/sae-topk", hook="double.1.img")  # doctest: +SKIP
    >>> sae = load_dictionary("flux-org/saes:double.1.img")                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from huggingface_hub import snapshot_download
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY
from safetensors import SafetensorError

import itda  # noqa: F401  (registers the "itda" architecture with sae_lens)

_HUB_RE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+):(?P<folder>[^:]+)$")


class HubReference(NamedTuple):
    """A folder of a Hub repository holding one dictionary."""

    repo_id: str
    folder: str


def parse_reference(ref: str | Path) -> Path | HubReference:
    """A local directory (when it exists, or the text is no ``REPO_ID:FOLDER``) or a Hub folder."""
    text = str(ref)
    match = _HUB_RE.match(text)
    if match is None or Path(text).exists():
        return Path(text)
    return HubReference(match["repo"], match["folder"].strip("/"))


def reference_name(ref: str | Path) -> str:
    """A short name for ``ref``: the directory's or the Hub folder's last part."""
    where = parse_reference(ref)
    return Path(where.folder if isinstance(where, HubReference) else where).name


def local_directory(ref: str | Path, endpoint: str | None = None) -> Path:
    """The local directory of ``ref``, downloading a Hub folder into the huggingface_hub cache."""
    where = parse_reference(ref)
    if isinstance(where, Path):
        return where
    root = snapshot_download(where.repo_id, allow_patterns=[f"{where.folder}/*"], endpoint=endpoint)
    return Path(root) / where.folder


def _architecture(path: Path) -> str:
    cfg_path = path / "cfg.json"
    if not cfg_path.is_file():
        what = "does not exist" if not path.exists() else "is not a SAELens dictionary directory (no cfg.json)"
        raise FileNotFoundError(f"dictionary {path} {what}")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON: {err}") from err
    return str(cfg.get("architecture", "standard"))


def check_hook(dictionary: Any, hook: str, where: str | Path = "") -> None:
    """Refuse a dictionary whose recorded hook is not ``hook`` (no record: accepted)."""
    trained_on = getattr(getattr(dictionary.cfg, "metadata", None), "hook_name", None)
    if trained_on and trained_on != hook:
        label = f"{where}: " if where else ""
        raise ValueError(f"{label}dictionary was trained on hook {trained_on!r}, not on {hook!r}")


def load_dictionary(
    ref: str | Path, device: str = "cpu", hook: str | None = None, endpoint: str | None = None
) -> SAE[Any]:
    """Load a dictionary from a local directory or a Hub reference ``REPO_ID:FOLDER``, checked.

    Args:
        ref: a directory with ``cfg.json`` + ``sae_weights.safetensors``, or ``REPO_ID:FOLDER``.
        device: where the weights go (``"cpu"``, ``"cuda"``...).
        hook: when given, the hook point the dictionary must have been trained on.
        endpoint: a Hub endpoint other than the default (``HF_ENDPOINT`` also works).
    """
    path = local_directory(ref, endpoint)
    architecture = _architecture(path)
    if architecture not in SAE_CLASS_REGISTRY:
        raise ValueError(
            f"{path}: architecture {architecture!r} is not registered with sae_lens (import the package "
            f"that defines it first); registered: {', '.join(sorted(SAE_CLASS_REGISTRY))}"
        )
    try:
        dictionary = SAE.load_from_disk(path, device=device)
    except SafetensorError as err:
        raise ValueError(f"{path}: a weights file is not a readable safetensors file (truncated or "
                         f"corrupt: {err})") from err
    if hook is not None:
        check_hook(dictionary, hook, ref)
    return dictionary
