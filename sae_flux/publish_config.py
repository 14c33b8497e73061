"""The typed configuration of an upload to the Hub (:func:`sae_flux.publish.publish`).

The Python API and the ``sae-flux publish`` options; light (no torch, no huggingface_hub), so
the CLI builds its parser from it at once. There is deliberately no token option: a token on
the command line ends up in shell histories and process lists; ``--token-env NAME`` names the
environment variable that holds it (default: huggingface_hub's ``HF_TOKEN`` or the login).

Example:
    >>> cfg = PublishConfig(dictionaries=["runs/double.18.img"], repo="me/flux-saes")
    >>> cfg.revision, cfg.release_name
    ('main', 'flux-saes')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REPO_RE = re.compile(r"^[\w.-]+/[\w.-]+$")
"""A Hub repo id, ``org/name``."""
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class PublishConfig:
    """One upload (the CLI ``sae-flux publish`` and the API)."""

    dictionaries: list[str]
    """Dictionaries (SAE or ITDA): directories or Hub references REPO_ID:FOLDER; each is uploaded
    under its directory (folder) name."""
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
    token_env: str | None = None
    """Name of the environment variable holding the write token (default: HF_TOKEN or the login)."""
    dry_run: bool = False
    """Print the files and the model card that would be uploaded; upload nothing, need no token."""
    force: bool = False
    """Overwrite a folder of the repo whose cfg.json differs from the one being uploaded."""
    export_matching_pursuit: bool = True
    """Upload beside every ITDA folder its sae_lens matching_pursuit export (<id>-mp; <id>-mp-approx
    when it cannot be exact), which plain sae_lens loads without sae-flux."""
    release: str | None = None
    """SAELens release name of the generated pretrained_saes.yaml block (default: the repo name)."""
    source_url: str | None = None
    """URL of the code that made the dictionaries, linked from the model card."""

    def __post_init__(self) -> None:
        if not self.dictionaries:
            raise ValueError("name at least one dictionary directory to publish")
        if not REPO_RE.match(self.repo):
            raise ValueError(f"repo {self.repo!r} is not of the form org/name")
        if self.token_env is not None and (
            not _ENV_RE.match(self.token_env) or self.token_env.startswith("hf_")
        ):
            raise ValueError(
                f"--token-env takes the NAME of an environment variable, got {self.token_env!r} "
                "(never put a token itself on the command line)"
            )

    @property
    def release_name(self) -> str:
        """The SAELens release name (``release`` or the repo's name)."""
        return self.release or self.repo.split("/", 1)[1]
