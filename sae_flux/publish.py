"""Publish dictionaries to the Hugging Face Hub in SAELens's layout, with a model card.

The layout is the one ``SAE.from_pretrained(repo, sae_id)`` reads for any Hub repo
(``../shared/research.md`` section 4; the dictionaries themselves follow Shabalin et al. 2025,
arXiv 2505.24360, and Leask et al. 2025, arXiv 2505.17769)::

    <repo>/README.md                         # model card (sae_flux.model_card)
    <repo>/sae_lens_release.yaml             # the pretrained_saes.yaml block of this repo
    <repo>/<sae_id>/cfg.json                 # machine paths reduced to their last component
    <repo>/<sae_id>/sae_weights.safetensors
    <repo>/<sae_id>/sparsity.safetensors      # log10 feature density; ITDA: firing on build data
    <repo>/<sae_id>/metrics.json              # FVU, L0, dead fraction, window, measuring command
    <repo>/<sae_id>/train_config.json         # SAE: the training config; ITDA: build_config.json
    <repo>/<sae_id>/cache_manifest.json       # summary of the activation cache it was made from
    <repo>/<sae_id>/itda_provenance.safetensors   # ITDA: where every atom came from
    <repo>/<sae_id>-mp/...                    # ITDA: exact matching_pursuit export (plain sae_lens)

Safety: the token comes from ``--token-env NAME`` or huggingface_hub (``HF_TOKEN``, the login),
never from the command line; a folder whose ``cfg.json`` on the Hub differs from the one being
uploaded is refused unless ``force``; a dry run returns the plan (files and card) and uploads
nothing; one publish is one ``HfApi.create_commit`` (LFS/Xet, retries and auth are the
library's). Every text uploaded is checked to hold no local path.

Example:
    >>> cfg = PublishConfig(dictionaries=["runs/double.18.img"], repo="me/flux-saes")
    >>> publish(cfg)  # doctest: +SKIP
    >>> SAE.from_pretrained("me/flux-saes", "double.18.img")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    get_token,
    hf_hub_download,
)
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

from itda import ITDA
from itda.provenance import PROVENANCE_FILENAME, Provenance
from sae_flux.dictionary import load_dictionary, local_directory, reference_name
from sae_flux.export import export_folder_name, export_matching_pursuit
from sae_flux.metrics import SPARSITY_FILE, load_metrics
from sae_flux.model_card import DictionaryCard, model_card, release_yaml
from sae_flux.publish_config import PublishConfig

logger = logging.getLogger(__name__)

WEIGHTS = "sae_weights.safetensors"
RELEASE_FILE = "sae_lens_release.yaml"
LOGIN_HINT = (
    "log in with `hf auth login` (or `huggingface-cli login`), or set the HF_TOKEN environment "
    "variable to a token with write access (https://huggingface.co/settings/tokens)"
)
_ABS_PATH = re.compile(r"(?<![\w:/.~-])(?:~?/|[A-Za-z]:\\)[^\s'\"(),;/\\][^\s'\"(),;]*")
"""An absolute POSIX path, a ``~/`` path or a Windows drive path inside a string."""

__all__ = ["Plan", "PublishConfig", "plan", "publish", "resolve_token", "scrub_paths"]


def scrub_paths(value: Any) -> Any:
    """``value`` (JSON-like) with every absolute path reduced to its last component.

    Example:
        >>> scrub_paths({"data": "activation cache /home/me/runs/cache (512 tokens)"})
        {'data': 'activation cache cache (512 tokens)'}
    """
    if isinstance(value, str):
        return _ABS_PATH.sub(lambda m: re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1], value)
    if isinstance(value, dict):
        return {k: scrub_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_paths(v) for v in value]
    return value


def _json(value: Any) -> bytes:
    return (json.dumps(scrub_paths(value), indent=2, sort_keys=True) + "\n").encode()


@dataclass
class Upload:
    """One file of the commit: its path in the repo and its bytes or local file."""

    path_in_repo: str
    content: bytes | Path

    @property
    def size(self) -> int:
        return len(self.content) if isinstance(self.content, bytes) else self.content.stat().st_size


@dataclass
class Plan:
    """Everything one publish would upload (what a dry run shows)."""

    repo: str
    uploads: list[Upload]
    card: str
    release: str
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The ``cfg.json`` of every folder, for the overwrite check."""

    def describe(self) -> str:
        """The file list, the release block and the card, as a dry run prints them."""
        files = [f"{u.size:>12,d}  {u.path_in_repo}" for u in self.uploads]
        return "\n".join([f"would upload to {self.repo} in one commit:", *files, "",
                          f"--- {RELEASE_FILE} ---", self.release, "--- README.md ---", self.card])


def _cache_summary(record: Any) -> dict[str, Any] | None:
    """The manifest summary of the activation cache a record names, when it is on this machine."""
    from sae_flux.cache import Manifest

    if not isinstance(record, str):
        return None
    candidates = [record, *re.findall(r"activation cache (\S+)", record)]
    for text in candidates:
        path = Path(text)
        if (path / "manifest.json").is_file():
            m = Manifest.load(path)
            return {"cache": path.name, "model_id": m.model_id, "num_prompts": m.num_prompts,
                    "prompt_hash": m.settings.get("prompt_hash"), "hooks": m.hooks, "widths": m.widths,
                    "tokens": {h: m.tokens(h) for h in m.hooks}, "complete": m.complete,
                    "generation": m.settings.get("generation"), "steps": m.settings.get("steps"),
                    "seed": m.settings.get("seed"), "dtype": m.dtype,
                    "revision": m.settings.get("revision")}
    return None


def _card_entry(sae_id: str, directory: Path, dictionary: Any) -> tuple[DictionaryCard, list[Upload]]:
    cfg_json = scrub_paths(json.loads((directory / "cfg.json").read_text()))
    uploads = [Upload(f"{sae_id}/cfg.json", _json(cfg_json)), Upload(f"{sae_id}/{WEIGHTS}", directory / WEIGHTS)]
    for name in (SPARSITY_FILE, PROVENANCE_FILENAME):
        if (directory / name).is_file():
            uploads.append(Upload(f"{sae_id}/{name}", directory / name))
    metrics = load_metrics(directory)
    if metrics is not None:
        uploads.append(Upload(f"{sae_id}/metrics.json", _json(metrics)))
    training_path = directory / "train_config.json"
    training = json.loads(training_path.read_text()) if training_path.is_file() else None
    build = cfg_json.get("metadata", {}).get("itda_build") if isinstance(dictionary, ITDA) else None
    if training is not None:
        uploads.append(Upload(f"{sae_id}/train_config.json", _json(training)))
    if build is not None:
        uploads.append(Upload(f"{sae_id}/build_config.json", _json(build)))
    record = (training or {}).get("data", {}).get("cache") or dictionary.cfg.metadata.dataset_path
    cache = _cache_summary(record)
    if cache is not None:
        uploads.append(Upload(f"{sae_id}/cache_manifest.json", _json(cache)))
    elif record:
        logger.warning("%s: the activation cache %s is not on this machine; no cache manifest uploaded",
                       sae_id, scrub_paths(record))
    if not (directory / SPARSITY_FILE).is_file():
        logger.warning("%s has no %s; run `sae-flux eval %s --save` to add it", directory, SPARSITY_FILE, directory)
    entry = DictionaryCard(sae_id=sae_id, dictionary=dictionary, cfg=cfg_json, metrics=scrub_paths(metrics),
                           training=scrub_paths(training), cache=cache, files=[u.path_in_repo for u in uploads],
                           positions=_atom_positions(directory, dictionary))
    return entry, uploads


def _atom_positions(directory: Path, dictionary: Any) -> str | None:
    """ITDA: the denoising steps and timesteps its atoms were taken at (from its provenance)."""
    if not isinstance(dictionary, ITDA) or not (directory / PROVENANCE_FILENAME).is_file():
        return None
    columns = Provenance.load(directory, dictionary.cfg.d_sae).columns
    steps = sorted({int(s) for s in columns["step"].tolist() if s >= 0})
    times = sorted({round(float(t), 4) for t in columns["timestep"].tolist() if t == t})
    if not steps and not times:
        return None
    return f"atoms taken at denoising steps {steps or '-'}, timesteps {times[:16] or '-'}"


def _export_entry(entry: DictionaryCard, directory: Path, work: Path) -> tuple[DictionaryCard, list[Upload]]:
    """The matching-pursuit export of an ITDA entry, written under ``work``."""
    itda: ITDA = entry.dictionary
    folder = export_folder_name(itda, entry.sae_id)
    report = export_matching_pursuit(directory, work / folder, allow_approximate=True)
    exported = load_dictionary(work / folder)
    card, uploads = _card_entry(folder, work / folder, exported)
    card.export_of = entry.sae_id
    card.exact, card.cache = bool(report["exact"]), entry.cache
    card.metrics = entry.metrics if card.exact else None  # an approximate export encodes otherwise
    card.approximate_because = list(report["approximate_because"])
    entry.export_folder = folder
    return card, uploads


def plan(cfg: PublishConfig, work: Path) -> Plan:
    """Check every dictionary loads and gather what would be uploaded (exports written to ``work``)."""
    entries: list[DictionaryCard] = []
    uploads: list[Upload] = []
    directories = [local_directory(ref, cfg.endpoint) for ref in cfg.dictionaries]  # folders or REPO_ID:FOLDER
    for ref, directory in zip(cfg.dictionaries, directories, strict=True):
        dictionary = load_dictionary(directory)  # refuses anything plain sae_lens (+ itda) cannot load
        entry, files = _card_entry(reference_name(ref) if ":" in str(ref) else directory.resolve().name,
                                   directory, dictionary)
        entries.append(entry)
        uploads += files
        if isinstance(dictionary, ITDA) and cfg.export_matching_pursuit:
            export, files = _export_entry(entry, directory, work)
            entries.append(export)
            uploads += files
    ids = [e.sae_id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"several dictionaries would be uploaded as {duplicates}: rename the directories")
    endpoint = (cfg.endpoint or "https://huggingface.co").rstrip("/")
    release = release_yaml(cfg.release_name, cfg.repo, entries)
    card = model_card(cfg.repo, entries, repo_url=f"{endpoint}/{cfg.repo}", source_url=cfg.source_url,
                      release=release)
    uploads += [Upload(RELEASE_FILE, release.encode()), Upload("README.md", card.encode())]
    result = Plan(cfg.repo, uploads, card, release, {e.sae_id: e.cfg for e in entries})
    _check_no_local_paths(result, [*directories, work])
    return result


def _check_no_local_paths(result: Plan, roots: Sequence[Path]) -> None:
    """Refuse (a bug) to upload text that names a directory of this machine."""
    needles = {str(r.resolve()) for r in roots} | {str(Path.home())}
    for upload in result.uploads:
        text = upload.content if isinstance(upload.content, bytes) else _safetensors_header(upload.content)
        found = [n for n in needles if n.encode() in text]
        if found:
            raise RuntimeError(f"{upload.path_in_repo} would publish the local path {found[0]}")


def _safetensors_header(path: Path) -> bytes:
    if path.suffix != ".safetensors":
        return b""
    with path.open("rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        return handle.read(min(size, 2**24))


def resolve_token(token: str | None, token_env: str | None = None) -> str:
    """The token to upload with: the argument, else ``$token_env``, else huggingface_hub's."""
    if token is None and token_env is not None:
        token = os.environ.get(token_env)
        if not token:
            raise PermissionError(f"the environment variable {token_env} (--token-env) is not set or empty")
    token = token or get_token()
    if not token:
        raise PermissionError(f"no Hugging Face credentials found: {LOGIN_HINT}")
    return token


def _remote_files(api: HfApi, cfg: PublishConfig) -> set[str] | None:
    """The files of the repo's revision (``None``: no such repo)."""
    if not api.repo_exists(cfg.repo):
        return None
    try:
        return set(api.list_repo_files(cfg.repo, revision=cfg.revision))
    except RevisionNotFoundError:
        return set()


def _overwrites(api: HfApi, cfg: PublishConfig, result: Plan, remote: set[str]) -> list[str]:
    """Folders of the repo whose ``cfg.json`` differs from the one ``result`` uploads."""
    changed = []
    with tempfile.TemporaryDirectory() as cache:
        for folder, new in result.configs.items():
            if f"{folder}/cfg.json" not in remote:
                continue
            local = hf_hub_download(cfg.repo, f"{folder}/cfg.json", revision=cfg.revision,
                                    endpoint=cfg.endpoint, token=api.token, cache_dir=cache)
            if json.loads(Path(local).read_text()) != new:
                changed.append(folder)
    return changed


def _operations(result: Plan, remote: set[str]) -> list[CommitOperationAdd | CommitOperationDelete]:
    """The additions, and deletions of files left over in the folders being replaced."""
    new = {u.path_in_repo for u in result.uploads}
    stale = sorted(p for p in remote - new if p.split("/", 1)[0] in result.configs and "/" in p)
    ops: list[CommitOperationAdd | CommitOperationDelete] = [CommitOperationDelete(p) for p in stale]
    for u in result.uploads:
        content = u.content if isinstance(u.content, bytes) else str(u.content)
        ops.append(CommitOperationAdd(path_in_repo=u.path_in_repo, path_or_fileobj=content))
    return ops


@contextmanager
def _refused_credentials(repo: str) -> Iterator[None]:
    try:
        yield
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise PermissionError(
                f"the Hub refused the credentials for {repo} (HTTP {status}): {LOGIN_HINT}"
            ) from None
        raise


def publish(cfg: PublishConfig, token: str | None = None) -> str:
    """Upload ``cfg.dictionaries`` to ``cfg.repo`` in one commit; returns the commit URL.

    With ``cfg.dry_run``, returns the plan's description (files, release block, card) instead.

    Example:
        >>> publish(PublishConfig(dictionaries=["sae"], repo="me/flux-saes"))  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory(prefix="sae-flux-publish-") as work:
        result = plan(cfg, Path(work))
        if cfg.dry_run:
            return result.describe()
        api = HfApi(endpoint=cfg.endpoint, token=resolve_token(token, cfg.token_env))
        with _refused_credentials(cfg.repo):
            found = _remote_files(api, cfg)
            if found is None:
                api.create_repo(cfg.repo, private=cfg.private)
            remote = found or set()
            others = sorted({p.split("/", 1)[0] for p in remote if "/" in p} - set(result.configs))
            if others:
                logger.warning("%s also holds %s, which this publish's model card and release block do not "
                               "describe: publish all of a repo's dictionaries together", cfg.repo, others)
            changed = _overwrites(api, cfg, result, remote)
            if changed and not cfg.force:
                raise FileExistsError(
                    f"{cfg.repo} already holds {changed} with a different cfg.json: "
                    "publish under other names, or pass --force to replace them"
                )
            info = api.create_commit(cfg.repo, _operations(result, remote), commit_message=cfg.message,
                                     revision=cfg.revision)
    logger.info("published %s to %s: %s", sorted(result.configs), cfg.repo, info.commit_url)
    return str(info.commit_url)

