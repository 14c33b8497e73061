"""llama.cpp control vectors: export a steering vector to the GGUF that llama.cpp loads with
``--control-vector`` (and repeng writes), and import one back.

The convention, as checked in llama.cpp's sources (ggml-org/llama.cpp):

- ``common/common.cpp`` ``common_control_vector_load_one`` reads only tensors: each must be
  named ``direction.<k>``, be 1-D and F32, all of one width; ``k = 0`` is refused ("invalid
  (zero) direction tensor layer index") and ``direction.k`` is stored at offset
  ``n_embd * (k - 1)`` ("layer 1 at [0]"). It reads no metadata key.
- ``src/llama-adapter.cpp`` ``llama_adapter_cvec::apply`` copies that offset into
  ``tensors[k]`` for ``k = 1 .. n_layer - 1`` ("there's never a tensor for layer 0") and
  ``apply_to(ctx, cur, il)`` adds ``tensors[il]``; the model graphs call
  ``cur = build_cvec(cur, il)`` right after block ``il``'s last residual addition, before
  ``cb(cur, "l_out", il)``. So ``direction.k`` is added to the **output of decoder block k,
  counted from 0**: cae's layer ``k`` at site ``block``, at every position. Block 0 cannot be
  steered.
- ``tools/cvector-generator`` writes ``general.architecture = "controlvector"``,
  ``controlvector.model_hint`` (the model's ``general.architecture``, e.g. ``llama``) and
  ``controlvector.layer_count`` (int32, the number of direction tensors); repeng's
  ``ControlVector.export_gguf`` writes the same keys (``layer_count`` as uint32, the model's
  ``model_type`` as hint).

cae adds one key, ``cae.meta`` (the vector's JSON metadata), which llama.cpp ignores and which
lets ``from_gguf`` restore the provenance exactly. llama.cpp adds a control vector at every
position with its own ``--control-vector-scaled FILE SCALE``; the multiplier and position
rule of ``cae.apply`` do not travel with the file.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cae.model import decoder_layers, hf_module, hidden_size, model_id
from cae.vector import SteeringVector, VectorMeta

ARCH = "controlvector"
CAE_META_KEY = "cae.meta"


def _hint(sv: SteeringVector, model_hint: str | None) -> str:
    return model_hint or str(sv.meta.extra.get("model_type", "")) or sv.meta.model_id or "unknown"


def to_gguf(sv: SteeringVector, path: str | Path, model_hint: str | None = None,
            multiplier: float = 1.0) -> Path:
    """Write ``multiplier * sv`` as a llama.cpp control vector (``direction.<layer>`` tensors).

    ``model_hint`` defaults to ``sv.meta.extra["model_type"]``, else the model id. Only
    block-output vectors without a layer-0 direction can be expressed (llama.cpp refuses
    ``direction.0``); anything else is a one-line ValueError.

    Example:
        >>> import tempfile
        >>> from cae.organism import load
        >>> sv = SteeringVector.random(load("tiny")[0], [1, 2])
        >>> out = to_gguf(sv, tempfile.mkdtemp() + "/kind.gguf", model_hint="llama")
        >>> torch.equal(from_gguf(out).vectors[2], sv.vectors[2])
        True
    """
    import gguf

    if sv.meta.site != "block":
        raise ValueError(f"llama.cpp control vectors steer block outputs; this vector's site is "
                         f"{sv.meta.site!r}")
    if 0 in sv.vectors:
        raise ValueError("llama.cpp never steers decoder block 0 (it refuses a direction.0 "
                         "tensor); drop layer 0 before exporting")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    scaled = sv * multiplier
    writer = gguf.GGUFWriter(str(out), arch=ARCH)
    writer.add_string(f"{ARCH}.model_hint", _hint(sv, model_hint))
    writer.add_int32(f"{ARCH}.layer_count", len(scaled.vectors))
    writer.add_string(CAE_META_KEY, json.dumps(asdict(scaled.meta)))
    for layer, vec_D in scaled.vectors.items():
        writer.add_tensor(f"direction.{layer}", vec_D.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _directions(reader: Any, where: Path) -> dict[int, torch.Tensor]:
    import gguf

    vectors: dict[int, torch.Tensor] = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise ValueError(f"{where}: tensor {tensor.name!r} is not named direction.<layer>")
        if int(index) == 0:
            raise ValueError(f"{where}: direction.0 is not a valid llama.cpp control-vector layer")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise ValueError(f"{where}: {tensor.name} must be a 1-D F32 tensor")
        vectors[int(index)] = torch.from_numpy(np.array(tensor.data, dtype=np.float32))
    if not vectors:
        raise ValueError(f"{where}: no direction tensors (not a llama.cpp control vector)")
    return vectors


def check_against_model(vectors: dict[int, torch.Tensor], model: Any, where: Path) -> None:
    """One line if the file's widths or layers do not fit ``model``."""
    width = hidden_size(model)
    widths = sorted({int(v.shape[0]) for v in vectors.values()})
    if widths != [width]:
        raise ValueError(f"{where}: directions have width {widths[-1]} but "
                         f"{type(hf_module(model)).__name__} has hidden size {width}")
    _, blocks = decoder_layers(model)
    beyond = [k for k in sorted(vectors) if k >= len(blocks)]
    if beyond:
        raise ValueError(f"{where}: direction.{beyond[0]} steers decoder block {beyond[0]}, but "
                         f"the model has {len(blocks)} decoder blocks (valid 1..{len(blocks) - 1})")


def from_gguf(path: str | Path, model: Any = None) -> SteeringVector:
    """Read a llama.cpp control vector (written by cae, llama.cpp's cvector-generator or
    repeng). With ``model``, a file whose width or layers do not fit it is refused in one line
    and the model's id is recorded when the file carries no cae metadata."""
    import gguf

    where = Path(path)
    if not where.is_file():
        raise FileNotFoundError(f"control vector file not found: {where}")
    reader = gguf.GGUFReader(str(where))
    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise ValueError(f"{where}: general.architecture is {arch!r}, not {ARCH!r} "
                         "(not a llama.cpp control vector)")
    vectors = _directions(reader, where)
    declared = _field(reader, f"{ARCH}.layer_count")
    if declared is not None and int(declared) != len(vectors):
        raise ValueError(f"{where}: {ARCH}.layer_count is {declared} but the file holds "
                         f"{len(vectors)} direction tensors")
    if model is not None:
        check_against_model(vectors, model, where)
    stored = _field(reader, CAE_META_KEY)
    if stored:
        meta = VectorMeta(**{**json.loads(stored), "layers": tuple(vectors)})
        return SteeringVector(vectors, meta)
    hint = str(_field(reader, f"{ARCH}.model_hint") or "")
    name = model_id(model) if model is not None else hint
    return SteeringVector.from_layer_tensors(vectors, model_id=name, read="unknown",
                                             aggregator="unknown",
                                             extra={"model_hint": hint, "source": "gguf"})
