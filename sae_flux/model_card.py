"""The model card and the SAELens release block of a published repo of dictionaries.

The card is a huggingface_hub ``ModelCard`` (metadata through ``ModelCardData``: library
``saelens``, tags ``saelens`` and the model ids) whose body says, per dictionary, what it is
(architecture, hook point, denoising steps / timesteps, d_sae), how good it is (L0, FVU, dead
fraction, the window they were measured on and the command that measured them, in-sample or
held-out), what data made it (prompt count and hash, tokens) and how to load it, with snippets
that run as written in plain sae_lens and in sae-flux.

The release block is the entry SAELens's ``pretrained_saes.yaml`` would hold for the repo
(``release: {repo_id, model, conversion_func, saes: [{id, path, l0, variance_explained,
neuronpedia}]}``, neuronpedia left empty), one release per model; ``register_release`` adds it
(parsed) to a running sae_lens so that ``SAE.from_pretrained(release, id)`` works.

Example:
    >>> print(release_yaml("flux-saes", "me/flux-saes", []))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

REPO_RE = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class DictionaryCard:
    """What the card and the release block say about one uploaded folder."""

    sae_id: str
    dictionary: Any
    cfg: dict[str, Any]
    metrics: dict[str, Any] | None
    training: dict[str, Any] | None
    cache: dict[str, Any] | None
    files: list[str] = field(default_factory=list)
    positions: str | None = None
    """ITDA: the denoising steps / timesteps its atoms were taken at."""
    export_of: str | None = None
    """For a matching-pursuit export: the ITDA folder it was exported from."""
    export_folder: str | None = None
    """For an ITDA: the folder of its matching-pursuit export."""
    exact: bool | None = None
    approximate_because: list[str] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.dictionary.cfg.architecture())

    @property
    def model(self) -> str:
        return str(self.cfg.get("metadata", {}).get("model_name") or "unknown")

    @property
    def hook(self) -> str:
        return str(self.cfg.get("metadata", {}).get("hook_name") or "-")

    @property
    def plain_sae_lens(self) -> bool:
        """Whether plain sae_lens (without sae-flux) loads this folder."""
        return self.architecture != "itda"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("-" if value is None else str(value))


def _sample(metrics: dict[str, Any], entry: DictionaryCard) -> str:
    window = str(metrics.get("window") or f"{metrics.get('tokens')} tokens")
    built_on = (entry.cache or {}).get("cache")
    if "in-sample" in window or (built_on and built_on in str(metrics.get("data", ""))):
        return "in-sample"
    return "held-out" if "dictionary" in metrics else "unknown"


def _command(metrics: dict[str, Any]) -> str:
    if metrics.get("command"):
        return f"`{metrics['command']}`"
    if "steps" in metrics:
        return "`sae-flux train` (its evaluation at the end of training)"
    return "not recorded"


def _data(entry: DictionaryCard) -> str:
    c = entry.cache
    parts = []
    if c is not None:
        gen = c.get("generation") or {}
        parts.append(f"activation cache `{c['cache']}` of `{c['model_id']}`: {c['num_prompts']} prompts "
                     f"(prompt set `{c.get('prompt_hash')}`), {c['tokens'].get(entry.hook, '?')} tokens at "
                     f"`{entry.hook}`, seed {c.get('seed')}")
        steps = c.get("steps")
        parts.append(f"denoising steps captured: {'all' if steps is None else steps} of a "
                     f"{gen.get('num_inference_steps', '?')}-step schedule")
    else:
        parts.append(f"data: {entry.cfg.get('metadata', {}).get('dataset_path') or 'not recorded'}")
    if entry.positions:
        parts.append(entry.positions)
    if entry.training:
        sae, optim = entry.training.get("sae", {}), entry.training.get("optim", {})
        parts.append(f"trained with sae-flux on {optim.get('total_tokens')} tokens, normalisation "
                     f"`{sae.get('normalize')}` (folded into the weights)")
    build = entry.cfg.get("metadata", {}).get("itda_build")
    if build:
        parts.append(f"built with itda on {build.get('tokens_seen')} tokens "
                     f"({build.get('batches_seen')} batches), target L0 {build.get('target_l0')}, loss threshold "
                     f"{build.get('loss_threshold')}, normalisation `{build.get('normalization')}`")
    return "; ".join(parts)


def _section(entry: DictionaryCard) -> list[str]:
    m = entry.metrics or {}
    rows = [("architecture", entry.architecture), ("model", entry.model), ("hook point", entry.hook),
            ("d_in / d_sae", f"{entry.cfg.get('d_in')} / {entry.cfg.get('d_sae')}")]
    if m:
        rows += [("L0", _fmt(m.get("l0"))), ("FVU", f"{_fmt(m.get('fvu'))} ({_sample(m, entry)})"),
                 ("dead fraction", _fmt(m.get("dead_fraction"))),
                 ("measured on", _fmt(m.get("window") or f"{m.get('tokens')} tokens")),
                 ("measured by", _command(m))]
    else:
        rows.append(("metrics", "not measured (run `sae-flux eval DICT --cache CACHE --save` before publishing)"))
    rows.append(("data", _data(entry)))
    if entry.export_of is not None:
        label = "exact" if entry.exact else "APPROXIMATE: " + "; ".join(entry.approximate_because)
        rows.append(("export", f"sae_lens `matching_pursuit` export of `{entry.export_of}`, {label}; "
                               "metrics above are the ITDA's"))
    if entry.export_folder is not None:
        rows.append(("plain sae_lens", f"load its export `{entry.export_folder}` (this folder needs sae-flux)"))
    rows.append(("files", ", ".join(f"`{f.split('/', 1)[1]}`" for f in entry.files)))
    return [f"### `{entry.sae_id}`", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _snippets(repo: str, entries: Sequence[DictionaryCard]) -> list[str]:
    plain = next((e for e in entries if e.plain_sae_lens), None)
    out = []
    if plain is not None:
        out += ["Plain sae_lens (`pip install sae-lens`), no sae-flux needed:", "", "```python",
                "import torch", "from sae_lens import SAE", "",
                f'sae = SAE.from_pretrained("{repo}", "{plain.sae_id}")',
                f"activations = torch.randn(4, sae.cfg.d_in)  # stand-in for {plain.hook} activations",
                "reconstruction = sae.decode(sae.encode(activations))", "```", ""]
        if plain.export_of is not None and plain.cfg.get("metadata", {}).get("itda_export", {}).get("mirrored"):
            out += ["A signed ITDA's export has the mirrored dictionary `[atoms; -atoms]`; its signed codes "
                    "are `codes[..., :F] - codes[..., F:]` with `F = sae.cfg.d_sae // 2`.", ""]
    first = entries[0]
    itda = next((e for e in entries if e.architecture == "itda"), None)
    out += ["With sae-flux (`pip install sae-flux`): every folder, ITDA included, and Hub references "
            "`REPO_ID:FOLDER` in every `sae-flux` command:", "", "```python",
            *(["import itda"] if itda is not None else []),
            "from sae_flux.dictionary import load_dictionary", "",
            f'dictionary = load_dictionary("{repo}:{first.sae_id}")']
    if itda is not None:
        out += [f'd = itda.ITDA.from_pretrained_with_provenance("{repo}", "{itda.sae_id}")',
                "print(d.describe(0))  # where atom 0 came from"]
    return [*out, "```", ""]


def model_card(repo: str, entries: Sequence[DictionaryCard], repo_url: str, source_url: str | None,
               release: str) -> str:
    """README.md of the repo, built and rendered by huggingface_hub's ``ModelCard``."""
    models = sorted({e.model for e in entries})
    data = ModelCardData(
        library_name="saelens",
        tags=["saelens", "sae_lens", "sparse-autoencoder", "sae-flux", *models,
              *(["itda"] if any(e.architecture == "itda" for e in entries) else [])],
        base_model=[m for m in models if REPO_RE.match(m)] or None,
    )
    summary = ["| folder | architecture | hook point | d_sae | L0 | FVU | dead fraction | plain sae_lens |",
               "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        m = e.metrics or {}
        summary.append("| " + " | ".join([f"`{e.sae_id}`", e.architecture, e.hook, _fmt(e.cfg.get("d_sae")),
                                          _fmt(m.get("l0")), _fmt(m.get("fvu")), _fmt(m.get("dead_fraction")),
                                          "yes" if e.plain_sae_lens else "no (needs sae-flux)"]) + " |")
    source = f" with [sae-flux]({source_url})" if source_url else " with sae-flux (`pip install sae-flux`)"
    body = [
        f"# Dictionaries for {', '.join(f'`{m}`' for m in models)}", "",
        f"Sparse dictionaries in the [SAELens](https://github.com/decoderesearch/SAELens) layout at "
        f"[{repo_url}]({repo_url}), made{source} after Shabalin et al. 2025 (arXiv:2505.24360) and "
        "Leask et al. 2025 (ITDA, arXiv:2505.17769).", "", *summary, "",
        "## How to load", "", *_snippets(repo, entries),
        "## Dictionaries", "",
        "Hook points follow sae-flux: `double.{i}.img` / `single.{i}.img` is the image stream of the residual "
        "output of double- or single-stream transformer block `i` (`.txt` the text stream, `.delta` the "
        "block's update, `double.{i}.mlp` the MLP neurons).", "",
        *[line for e in entries for line in _section(e)],
        "## Metrics", "",
        "Computed by sae-flux on raw activations: FVU = sum ||x - x_hat||^2 / sum ||x - mean||^2; L0 = mean "
        "active latents per token; dead fraction = latents that never fired in the window. `sparsity.safetensors`"
        " holds log10 feature density (for an ITDA: atom firing rates on its build data).", "",
        "## SAELens release", "",
        "The `pretrained_saes.yaml` block of this repo (also in `sae_lens_release.yaml`); register it to load by "
        "release name (see sae-flux's docs/training.md):", "", "```yaml", release.rstrip(), "```", "",
    ]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body)))


def release_yaml(release: str, repo: str, entries: Sequence[DictionaryCard]) -> str:
    """The ``pretrained_saes.yaml`` block(s) of the repo: one release per model."""
    models = sorted({e.model for e in entries})
    lines: list[str] = []
    for model in models:
        name = release if len(models) == 1 else f"{release}-{re.sub(r'[^A-Za-z0-9.-]+', '-', model)}"
        lines += [f"{name}:", f"  repo_id: {repo}", f"  model: {json.dumps(model)}", "  conversion_func: null",
                  "  saes:"]
        for e in (e for e in entries if e.model == model):
            m = e.metrics or {}
            lines += [f"  - id: {json.dumps(e.sae_id)}", f"    path: {json.dumps(e.sae_id)}",
                      f"    l0: {_fmt(m.get('l0')) if m.get('l0') is not None else 0.0}"]
            if m.get("explained_variance") is not None:
                lines.append(f"    variance_explained: {m['explained_variance']:.4g}")
            lines.append("    neuronpedia: null")
    return "\n".join(lines) + "\n"


def register_release(block: dict[str, Any]) -> list[str]:
    """Add parsed release block(s) to this process's sae_lens directory; returns their names.

    ``block`` is ``yaml.safe_load`` of ``sae_lens_release.yaml`` (sae_lens depends on PyYAML).

    Example:
        >>> register_release(yaml.safe_load(open("sae_lens_release.yaml")))  # doctest: +SKIP
        ['flux-saes']
        >>> SAE.from_pretrained("flux-saes", "double.1.img")  # doctest: +SKIP
    """
    from sae_lens.loading.pretrained_saes_directory import (
        PretrainedSAELookup,
        get_pretrained_saes_directory,
    )

    directory = get_pretrained_saes_directory()
    for name, value in block.items():
        saes = value["saes"]
        directory[name] = PretrainedSAELookup(
            release=name, repo_id=value["repo_id"], model=value["model"],
            conversion_func=value.get("conversion_func"),
            saes_map={s["id"]: s["path"] for s in saes},
            expected_var_explained={s["id"]: s.get("variance_explained", 1.0) for s in saes},
            expected_l0={s["id"]: s.get("l0", 0.0) for s in saes},
            neuronpedia_id={s["id"]: s.get("neuronpedia") for s in saes},
            norm_scaling_factor={}, config_overrides=value.get("config_overrides"),
        )
    return list(block)
