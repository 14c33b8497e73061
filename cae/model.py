"""Finding the residual stream of any Hugging Face causal LM, wrapped or not in nnsight.

CAA (Rimsky et al. 2024) reads and steers ``resid_L``: the output of decoder block ``L``.
Every Hugging Face decoder-only architecture keeps its blocks in one ``nn.ModuleList``
whose length is ``config.num_hidden_layers`` (``model.layers`` for Llama, ``transformer.h``
for GPT-2, ...), so that list is found by shape rather than by name. With transformers
>= 5 a block returns a plain tensor ``[batch, tokens, d_model]``; older versions return a
tuple whose first element is that tensor; both are handled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from nnsight import TransformersModel
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel


def hf_module(model: Any) -> Any:
    """The underlying ``transformers`` model of an nnsight model (or the model itself)."""
    inner = getattr(model, "_module", model)
    if not isinstance(inner, torch.nn.Module):
        raise TypeError(f"expected a transformers model or an nnsight TransformersModel, got "
                        f"{model!r}")
    return inner


TL_SITE_HOOKS = {"block": "hook_resid_post", "attn": "hook_attn_out", "mlp": "hook_mlp_out"}
"""TransformerLens hook point of each site in ``blocks.{L}``."""


def is_hooked_transformer(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``HookedTransformer`` (recognised by its
    ``cfg``, ``blocks`` and ``run_with_hooks``, without importing transformer_lens)."""
    return all(hasattr(model, name) for name in ("cfg", "blocks", "run_with_hooks"))


def decoder_layers(model: Any) -> tuple[str, torch.nn.ModuleList]:
    """Dotted path and module list of the decoder blocks (``model.layers`` on Llama,
    ``blocks`` on a TransformerLens ``HookedTransformer``)."""
    module = hf_module(model)
    if is_hooked_transformer(module):
        return "blocks", module.blocks
    n_layers = getattr(module.config, "num_hidden_layers", None)
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) == n_layers:
            return name, child
    raise ValueError(f"cannot find the {n_layers} decoder blocks of {type(module).__name__}")


SITE_CHILDREN: dict[str, tuple[str, ...]] = {
    "attn": ("self_attn", "attn", "attention"),
    "mlp": ("mlp", "block_sparse_moe", "feed_forward"),
}
"""Child names of a decoder block that hold its attention / MLP, across HF architectures
(Llama, Qwen, Gemma, Mistral, Phi-3, Mixtral: ``self_attn`` / ``mlp``; GPT-2: ``attn`` /
``mlp``; GPT-NeoX: ``attention`` / ``mlp``). Site ``block`` is the block itself."""


def site_path(model: Any, layer: int, site: str = "block") -> str:
    """Dotted path of the module whose output is ``site`` of decoder block ``layer``:
    ``block`` (the block's output, the residual stream), ``attn`` (the attention
    sub-layer's output, before it joins the residual) or ``mlp`` (the MLP's output).

    Example:
        >>> from cae.organism import load
        >>> site_path(load("tiny")[0], 1, "attn")
        'model.layers.1.self_attn'
    """
    path, blocks = decoder_layers(model)
    if is_hooked_transformer(hf_module(model)) and site in TL_SITE_HOOKS:
        return f"blocks.{layer}.{TL_SITE_HOOKS[site]}"  # HookPoints: identity modules
    if site == "block":
        return f"{path}.{layer}"
    if site not in SITE_CHILDREN:
        raise ValueError(f"unknown site {site!r}; choose from {['block', *SITE_CHILDREN]}")
    children = dict(blocks[layer].named_children())
    for name in SITE_CHILDREN[site]:
        if name in children:
            return f"{path}.{layer}.{name}"
    raise ValueError(
        f"{type(hf_module(model)).__name__} has no {site!r} site: decoder block {layer} "
        f"({type(blocks[layer]).__name__}) has none of {list(SITE_CHILDREN[site])} among its "
        f"children {list(children)}"
    )


def submodule(root: Any, path: str) -> Any:
    """``root``'s module (or nnsight envoy) at a dotted ``path`` (digits index a list)."""
    node = root
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def site_module(model: Any, layer: int, site: str = "block") -> torch.nn.Module:
    """The ``torch`` module whose output is ``site`` of decoder block ``layer``."""
    return submodule(hf_module(model), site_path(model, layer, site))


def hidden_size(model: Any) -> int:
    """Residual-stream width of the model."""
    module = hf_module(model)
    if is_hooked_transformer(module):
        return int(module.cfg.d_model)
    config = module.config
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def input_device(model: Any) -> torch.device:
    """Where the model's inputs go: the device of its input embeddings (the first device of
    a ``device_map``-split model)."""
    module = hf_module(model)
    embeddings = module.get_input_embeddings() if hasattr(module, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(module.parameters()).device


def model_id(model: Any) -> str:
    """The model's Hub id or directory as recorded in its config ('' if built in memory;
    a ``HookedTransformer``'s ``cfg.model_name``)."""
    module = hf_module(model)
    if is_hooked_transformer(module):
        return str(module.cfg.model_name or "")
    return str(getattr(module.config, "name_or_path", "") or "")


def check_layers(model: Any, layers: list[int]) -> list[int]:
    """Validate layer indices against the model (negative indices count from the end)."""
    _, blocks = decoder_layers(model)
    if not layers:
        raise ValueError("no layers given; pass at least one decoder-block index")
    out = []
    for layer in layers:
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(
                f"layer {layer} is outside the model: it has {len(blocks)} decoder blocks "
                f"(valid indices 0..{len(blocks) - 1})"
            )
        out.append(layer % len(blocks))
    return sorted(set(out))


def cache_argument(model: Any) -> str:
    """The forward's keyword for the key-value cache: ``cache`` (transformers >= 5.24) or
    ``past_key_values`` (earlier versions)."""
    import inspect

    params = inspect.signature(hf_module(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(output: Any) -> Any:
    """The key-value cache a forward returned (``cache`` or ``past_key_values``)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def block_output(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a decoder block's output (tensor or tuple)."""
    return output[0] if isinstance(output, tuple) else output


DTYPES = ("float32", "bfloat16", "float16")
"""Floating dtypes a model can be loaded in (``--dtype``)."""


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A ``torch.dtype`` from its name (``bfloat16``) or itself, or a ValueError."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ValueError(f"dtype {dtype!r} cannot hold a model's weights here; choose from "
                         f"{list(DTYPES)}")
    return getattr(torch, name)


def check_device(device: str | torch.device) -> torch.device:
    """A device this machine has, or a ValueError naming what it has instead."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}; use cpu, cuda[:N] or mps") from None
    if dev.type == "meta":
        raise ValueError("device 'meta' holds no weights; a model cannot be evaluated on it")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r} is not available: this machine has no "
                             "CUDA device (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {str(device)!r} does not exist: this machine has {count} "
                             "CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ValueError(f"device {str(device)!r} is not supported; use cpu, cuda[:N] or mps")
    return dev


def check_dtype_on(dtype: torch.dtype, device: torch.device | None) -> None:
    """Refuse a dtype the device cannot compute in (bfloat16 on a pre-Ampere GPU)."""
    if (dtype == torch.bfloat16 and device is not None and device.type == "cuda"
            and not torch.cuda.is_bf16_supported()):
        raise ValueError(f"dtype bfloat16 is not supported on {device}; use float16 or float32")


def load_language_model(
    name: str, dtype: str | torch.dtype = torch.float32, device: str | torch.device | None = None,
    device_map: str | dict | None = None,
) -> TransformersModel:
    """Load ``name`` as an nnsight ``TransformersModel``: a Hub id, a local directory, or
    ``organism:<size>`` for the packaged LM organism.

    The weights load straight to ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``) or are
    spread by ``device_map`` (``"auto"`` or a module -> device dict, through accelerate),
    in ``dtype`` (``float32``, ``bfloat16``, ``float16``); they are never materialised whole on
    the host first. Give ``device`` or ``device_map``, not both.

    Example:
        >>> lm = load_language_model("organism:tiny", dtype="bfloat16", device="cpu")
        >>> type(lm).__name__, next(hf_module(lm).parameters()).dtype
        ('TransformersModel', torch.bfloat16)
    """
    torch_dtype = resolve_dtype(dtype)
    if device is not None and device_map is not None:
        raise ValueError("give a device or a device_map, not both")
    dev = check_device(device) if device is not None else None
    check_dtype_on(torch_dtype, dev)
    placement = device_map if device_map is not None else (str(dev) if dev is not None else None)
    if name.startswith("organism:"):
        from cae.organism import load

        hf, tokenizer = load(name.split(":", 1)[1], torch_dtype, device_map=placement)
        return wrap(hf, tokenizer)
    if not name:
        raise ValueError("empty model name")
    if name.startswith((".", "/")) and not Path(name).exists():
        raise FileNotFoundError(f"model directory not found: {name}")
    tokenizer = AutoTokenizer.from_pretrained(name)
    hf = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, device_map=placement)
    return wrap(hf, tokenizer)


def wrap(hf: PreTrainedModel, tokenizer: Any) -> TransformersModel:
    """Wrap a loaded model and tokenizer in nnsight's ``TransformersModel`` (eval mode; the
    tokenizer gets its EOS as padding if it has none). nnsight's deprecated ``LanguageModel``
    is a subclass and works everywhere a wrapped model is taken."""
    hf.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return TransformersModel(hf, tokenizer=tokenizer)
