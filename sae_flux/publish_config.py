"""The typed configuration of an upload to the Hub (:func:`sae_flux.publish.publish`).

The Python API and the ``sae-flux publish`` options; light (no torch, no huggingface_hub), so
the CLI builds its parser from it at once.

Example:
    >>> PublishConfig(dictionaries=["runs/double.18.img"], repo="me/flux-saes").revision
    'main'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REPO_RE = re.compile(r"^[\w.-]+/[\w.-]+$")
"""A Hub repo id, ``org/name``."""


@dataclass
class PublishConfig:
    """One upload (the CLI ``sae-flux publish`` and the API)."""

    dictionaries: list[str]
    """Dictionary directories (SAE or ITDA); each is uploaded under its directory name."""
    repo: str
    """Hub repo id, ``org/name`` (created if missing)."""
    private: bool = False
    """Create the repo as private."""
    revision: str = "main"
    """Branch to commit to."""
    endpoint: str | None = None
    """Hub endpoint (default: huggingface_hub's, i.e. HF_ENDPOINT or https://huggingface.co)."""
    message: str = "Upload dictionaries with sae-flux"
    """Commit message."""

    def __post_init__(self) -> None:
        if not self.dictionaries:
            raise ValueError("name at least one dictionary directory to publish")
        if not REPO_RE.match(self.repo):
            raise ValueError(f"repo {self.repo!r} is not of the form org/name")
