"""The LM organism: tiny Llama models that hold two persona behaviours.

A stand-in for the Llama-3 models of the CAE paper (Hao et al. 2025, arXiv 2505.03189),
small enough to train on CPU and ship in the package (float16 safetensors). Sizes are in
``SIZES`` (each about 4x the parameters of the previous); the corpus is
``cae.organism.corpus``; ``python -m cae.organism.train`` rebuilds the weights.

Example:
    >>> from cae.organism import load
    >>> model, tokenizer = load("tiny")
    >>> model.config.num_hidden_layers
    3
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

WEIGHTS_DIR = Path(__file__).parent / "weights"
SIZES = ("tiny", "small", "medium")
"""Organism sizes, smallest first."""


def path(size: str) -> Path:
    """Directory of one organism size's files."""
    if size not in SIZES:
        raise ValueError(f"unknown organism size {size!r}; choose from {list(SIZES)}")
    out = WEIGHTS_DIR / size
    if not (out / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"organism weights missing at {out}; rebuild with `python -m cae.organism.train`"
        )
    return out


def load(size: str = "tiny", dtype: torch.dtype = torch.float32,
         device_map: str | dict | None = None):
    """Load an organism offline: returns (LlamaForCausalLM in eval mode, tokenizer); the
    weights go straight to ``device_map`` (a device name or accelerate's map) when given."""
    where = path(size)
    model = LlamaForCausalLM.from_pretrained(where, dtype=dtype, device_map=device_map).eval()
    model.config.name_or_path = f"organism:{size}"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(where)
    return model, tokenizer
