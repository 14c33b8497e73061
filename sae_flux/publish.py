"""Publish dictionaries to the Hugging Face Hub in SAELens's layout, with a model card.

The layout is the one ``SAE.from_pretrained(repo, sae_id)`` reads for any Hub repo
(``../shared/research.md`` section 4; the dictionaries themselves follow Shabalin et al. 2025,
arXiv 2505.24360)::

    <repo>/README.md                       # model card: library_name saelens, metrics table
    <repo>/<sae_id>/cfg.json
    <repo>/<sae_id>/sae_weights.safetensors
    <repo>/<sae_id>/sparsity.safetensors    # log10 feature density (sae-flux train / eval --save)

The upload goes through huggingface_hub's own ``HfApi.create_repo`` and ``HfApi.create_commit``
(one commit for all dictionaries and the card), so LFS/Xet, retries and auth are the library's.

Example:
    >>> cfg = PublishConfig(dictionaries=["runs/double.18.img"], repo="me/flux-saes")
    >>> publish(cfg)  # doctest: +SKIP
    >>> SAE.from_pretrained("me/flux-saes", "double.18.img")  # doctest: +SKIP

(after ``hf auth login``, or with ``token=``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError

from sae_flux.dictionary import load_dictionary
from sae_flux.metrics import SPARSITY_FILE, load_metrics
from sae_flux.publish_config import REPO_RE, PublishConfig

logger = logging.getLogger(__name__)

FILES = ("cfg.json", "sae_weights.safetensors", SPARSITY_FILE)
LOGIN_HINT = (
    "log in with `hf auth login` (or `huggingface-cli login`), or set the HF_TOKEN environment "
    "variable to a token with write access (https://huggingface.co/settings/tokens)"
)


@dataclass
class Entry:
    """One dictionary to upload: its id in the repo, its files and what the card says about it."""

    sae_id: str
    directory: Path
    cfg: dict[str, Any]
    metrics: dict[str, Any] | None
    training: dict[str, Any] | None

    @property
    def files(self) -> list[Path]:
        return [self.directory / name for name in FILES if (self.directory / name).is_file()]


def collect(directories: Sequence[str | Path]) -> list[Entry]:
    """Check every directory loads in sae_lens and gather what the model card needs."""
    entries: list[Entry] = []
    for directory in map(Path, directories):
        load_dictionary(directory)  # refuses anything plain sae_lens (+ itda) cannot load
        if not (directory / SPARSITY_FILE).is_file():
            logger.warning("%s has no %s; run `sae-flux eval %s --save` to add it",
                           directory, SPARSITY_FILE, directory)
        training = directory / "train_config.json"
        entries.append(Entry(
            sae_id=directory.resolve().name,
            directory=directory,
            cfg=json.loads((directory / "cfg.json").read_text()),
            metrics=load_metrics(directory),
            training=json.loads(training.read_text()) if training.is_file() else None,
        ))
    ids = [e.sae_id for e in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"several dictionaries would be uploaded as {duplicates}: rename the directories")
    return entries


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))


def model_card(repo: str, entries: Sequence[Entry]) -> str:
    """README.md for the repo: metadata for the Hub, how to load, hook points, data, metrics."""
    models = sorted({str(e.cfg.get("metadata", {}).get("model_name")) for e in entries})
    base = [m for m in models if REPO_RE.match(m)]
    header = ["---", "library_name: saelens", "tags:", "- sae_lens", "- sparse-autoencoder", "- sae-flux", "- flux"]
    if base:
        header.append(f"base_model: {base[0]}")
    header.append("---")
    rows = ["| sae_id | architecture | hook point | d_in | d_sae | FVU | explained variance | L0 | dead fraction | metrics window |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        m = e.metrics or {}
        meta = e.cfg.get("metadata", {})
        rows.append("| " + " | ".join(_fmt(v) for v in (
            e.sae_id, e.cfg.get("architecture"), meta.get("hook_name"), e.cfg.get("d_in"), e.cfg.get("d_sae"),
            m.get("fvu"), m.get("explained_variance"), m.get("l0"), m.get("dead_fraction"),
            m.get("window") or (f"{m['tokens']} tokens" if "tokens" in m else None))) + " |")
    data = []
    for e in entries:
        meta = e.cfg.get("metadata", {})
        line = f"- `{e.sae_id}`: model `{meta.get('model_name')}`, data: {meta.get('dataset_path') or 'not recorded'}"
        if e.training:
            sae, optim = e.training.get("sae", {}), e.training.get("optim", {})
            line += (f"; trained with sae-flux on {optim.get('total_tokens')} tokens, "
                     f"normalisation `{sae.get('normalize')}` (folded into the weights)")
        data.append(line)
    first = entries[0].sae_id
    itda = any(e.cfg.get("architecture") == "itda" for e in entries)
    load = ["```python", *(["import itda  # registers the ITDA architecture"] if itda else []),
            "from sae_lens import SAE", "", f'sae = SAE.from_pretrained("{repo}", "{first}")',
            "latents = sae.encode(activations)   # raw activations of the hook point below", "```"]
    return "\n".join([
        *header, "", f"# Dictionaries for {', '.join(f'`{m}`' for m in models)}", "",
        "Sparse dictionaries in the [SAELens](https://github.com/jbloomAus/SAELens) layout, made with "
        "sae-flux after Shabalin et al. 2025 (arXiv:2505.24360). Each folder "
        "holds `cfg.json`, `sae_weights.safetensors` and `sparsity.safetensors` (log10 feature density).",
        "", "## How to load", "", *load, "",
        "## Hook points", "",
        "Names follow sae-flux: `double.{i}.img` / `single.{i}.img` is the image stream of the residual output "
        "of double- or single-stream transformer block `i` (`.txt` the text stream, `.delta` the block's "
        "update, `double.{i}.mlp` the MLP neurons). Read them with `sae_flux.hooks.read(model, name)` "
        "inside an nnsight trace of the diffusers pipeline.",
        "", "## Training data", "", *data, "",
        "## Metrics", "",
        "Computed by sae-flux on raw activations: FVU = sum ||x - x_hat||^2 / sum ||x - mean||^2; "
        "L0 = mean active latents per token; dead fraction = latents that never fired in the window.", "",
        *rows, "",
    ])


def resolve_token(token: str | None) -> str:
    """The token to upload with: the argument, else huggingface_hub's (HF_TOKEN or the login)."""
    token = token or get_token()
    if not token:
        raise PermissionError(f"no Hugging Face credentials found: {LOGIN_HINT}")
    return token


def publish(cfg: PublishConfig, token: str | None = None) -> str:
    """Upload ``cfg.dictionaries`` to ``cfg.repo`` in one commit; returns the commit URL.

    Example:
        >>> publish(PublishConfig(dictionaries=["sae"], repo="me/flux-saes"))  # doctest: +SKIP
    """
    entries = collect(cfg.dictionaries)
    token = resolve_token(token)
    api = HfApi(endpoint=cfg.endpoint, token=token)
    operations = [
        CommitOperationAdd(path_in_repo=f"{e.sae_id}/{path.name}", path_or_fileobj=str(path))
        for e in entries for path in e.files
    ]
    operations.append(CommitOperationAdd("README.md", model_card(cfg.repo, entries).encode()))
    try:
        api.create_repo(cfg.repo, private=cfg.private, exist_ok=True)
        info = api.create_commit(cfg.repo, operations, commit_message=cfg.message, revision=cfg.revision)
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise PermissionError(
                f"the Hub refused the credentials for {cfg.repo} (HTTP {status}): {LOGIN_HINT}"
            ) from None
        raise
    logger.info("published %s to %s: %s", [e.sae_id for e in entries], cfg.repo, info.commit_url)
    return str(info.commit_url)
