"""Recording activations of arbitrary prompts (steering-vectors' ``record_activations``, for
nnsight models): the output of a site of decoder block L for every token, with the mask
that says which tokens are real.

Prompts are padded on the tokenizer's side (or ``padding_side``) and position ids are taken
from the attention mask, as in training (``cae.train.encode``), so a padded row holds the
same activations as the prompt alone. Legend: B prompts, T tokens, D width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import nnsight
import torch
from jaxtyping import Float, Int
from torch import Tensor

from cae.model import block_output, check_layers, input_device, site_path, submodule


class Recording(NamedTuple):
    """Activations of a batch of prompts."""

    acts: dict[int, Float[Tensor, "B T D"]]
    """Per layer: the site's output at every token (float32, on the CPU; padding included)."""
    mask_BT: Int[Tensor, "B T"]
    """1 at real tokens, 0 at padding."""
    input_ids_BT: Int[Tensor, "B T"]
    """The token ids read."""


def record(
    model: Any, prompts: Sequence[str], layers: Sequence[int], site: str = "block",
    padding_side: str | None = None,
) -> Recording:
    """Run ``prompts`` through an nnsight model once and return the ``site`` output
    (``block``, ``attn`` or ``mlp``) of each layer with the padding mask.

    Example:
        >>> from cae.model import load_language_model
        >>> lm = load_language_model("organism:tiny")
        >>> rec = record(lm, ["story : your friend is sad . so", "q : hi"], layers=[1])
        >>> rec.acts[1].shape[0], rec.mask_BT.sum(1).tolist()
        (2, [9, 4])
    """
    if isinstance(prompts, str) or not prompts:
        raise ValueError("record needs a non-empty list of prompts")
    layers = check_layers(model, list(layers))
    tokenizer = model.tokenizer
    side = padding_side or tokenizer.padding_side or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    before = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = before
    mask_BT = enc["attention_mask"]
    device = input_device(model)
    inputs = {"input_ids": enc["input_ids"].to(device), "attention_mask": mask_BT.to(device),
              "position_ids": (mask_BT.cumsum(-1) - 1).clamp_min(0).to(device)}
    envoys = [submodule(model, site_path(model, layer, site)) for layer in layers]
    saved = []
    with torch.no_grad(), model.trace(inputs):
        for envoy in envoys:
            saved.append(nnsight.save(block_output(envoy.output).float().cpu()))
    return Recording(dict(zip(layers, saved, strict=True)), mask_BT, enc["input_ids"])
