"""Where a Flux pipeline's weights live: device, dtype, diffusers ``device_map`` and CPU offload.

A real FLUX.1 pipeline in bfloat16 is ~33 GB with T5-XXL, so it must never be built whole on the
host and then copied with ``.to(device)``. :class:`Placement` turns the user's request into
diffusers' own mechanisms:

- an accelerator ``device`` (or an explicit ``device_map``): ``DiffusionPipeline.from_pretrained(
  ..., device_map=...)`` loads every component straight to the device (accelerate's
  ``low_cpu_mem_usage`` path: empty modules, weights streamed in from the safetensors files);
- ``offload="model"``: load on the host, then ``enable_model_cpu_offload`` moves one whole
  component (T5, then the transformer, then the VAE) to the device while it runs;
- ``offload="sequential"``: ``enable_sequential_cpu_offload`` moves each submodule's weights
  to the device only during its forward (least device memory, slowest);
- ``device="cpu"`` without either: a plain host load.

Bad requests fail in one line before anything loads: a device this machine does not have, a
dtype that is not a floating type or that the device cannot run (bfloat16 on a GPU without it),
offload without an accelerator, both ``device_map`` and ``offload``.

Example:
    >>> plan = Placement.resolve(device="cpu", dtype="bfloat16")
    >>> plan.load_kwargs()
    {'dtype': torch.bfloat16}
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

logger = logging.getLogger(__name__)

Offload = Literal["model", "sequential"]
OFFLOAD_MODES: tuple[str, ...] = get_args(Offload)
DEVICE_MAPS = ("balanced", "cuda", "cpu")
"""Pipeline-level ``device_map`` strategies diffusers accepts (with the accelerator's own type)."""
FLOAT_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16``; anything else: one clear line."""
    if isinstance(dtype, torch.dtype):
        if dtype not in FLOAT_DTYPES.values():
            raise ValueError(f"dtype {dtype} is not one of {sorted(FLOAT_DTYPES)}")
        return dtype
    name = str(dtype).removeprefix("torch.")
    if name not in FLOAT_DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(FLOAT_DTYPES)}")
    return FLOAT_DTYPES[name]


def parse_device(device: str | torch.device) -> torch.device:
    """A device this machine has, or one clear line naming what it has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1'): {err}") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r} is not available: torch sees no CUDA device on this machine")
        if parsed.index is not None and parsed.index >= count:
            raise ValueError(f"device {device!r} is not available: this machine has {count} CUDA device(s)")
        return parsed
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return parsed
    raise ValueError(f"device {device!r} is not available on this machine (use 'cpu' or an attached GPU)")


def check_dtype_on(dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a dtype the device cannot run (bfloat16 on a GPU older than Ampere)."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype bfloat16 is not supported by {torch.cuda.get_device_name(device)}: use float16")


@dataclass(frozen=True)
class Placement:
    """A validated request for where and in what precision a pipeline runs."""

    device: torch.device
    dtype: torch.dtype
    device_map: str | None = None
    offload: Offload | None = None

    @classmethod
    def resolve(
        cls,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = torch.float32,
        device_map: str | None = None,
        offload: str | None = None,
    ) -> Placement:
        """Check the request (one clear line per bad value) before any weight is read."""
        parsed_dtype = parse_dtype(dtype)
        if offload is not None and offload not in OFFLOAD_MODES:
            raise ValueError(f"offload {offload!r} is not one of {list(OFFLOAD_MODES)} or None")
        if device_map is not None and device_map not in DEVICE_MAPS:
            raise ValueError(f"device_map {device_map!r} is not one of {list(DEVICE_MAPS)} (diffusers' pipeline strategies)")
        if device_map is not None and offload is not None:
            raise ValueError("give device_map or offload, not both (diffusers refuses offload on a device-mapped pipeline)")
        parsed = parse_device(device if device_map in (None, "balanced") else device_map)
        if offload is not None and parsed.type == "cpu":
            raise ValueError(f"offload={offload!r} moves weights to an accelerator while they run; "
                             f"device {str(device)!r} is none: give device='cuda' or drop offload")
        check_dtype_on(parsed_dtype, parsed)
        return cls(parsed, parsed_dtype, device_map, offload)  # type: ignore[arg-type]

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``DiffusionPipeline.from_pretrained`` (through nnsight)."""
        kwargs: dict[str, Any] = {_dtype_keyword(): self.dtype}
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        elif self.offload is None and self.device.type != "cpu":
            kwargs["device_map"] = self.device.type  # straight to the device, never whole on the host
        return kwargs

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """The context to load in: an indexed CUDA device becomes the current one (diffusers'
        ``device_map="cuda"`` means the current device)."""
        if self.device.type == "cuda" and self.device.index is not None and "device_map" in self.load_kwargs():
            with torch.cuda.device(self.device.index):
                yield
        else:
            yield

    def place(self, pipeline: Any) -> None:
        """After loading: attach diffusers' offload hooks when asked (nothing otherwise)."""
        if self.offload == "model":
            pipeline.enable_model_cpu_offload(device=self.device)
        elif self.offload == "sequential":
            pipeline.enable_sequential_cpu_offload(device=self.device)

    def move(self, pipeline: Any) -> None:
        """For a pipeline already in memory: cast, then move or offload it as asked."""
        pipeline.to(dtype=self.dtype)
        if self.offload is not None:
            self.place(pipeline)
        elif self.device_map is None or self.device_map != "balanced":
            pipeline.to(self.device)
        else:
            raise ValueError("device_map='balanced' applies when loading; for a pipeline in memory give a device")


def _dtype_keyword() -> str:
    """The dtype keyword of ``DiffusionPipeline.from_pretrained``: ``dtype`` where diffusers resolves
    it (the releases with ``pipeline_utils._resolve_dtype``, which deprecate ``torch_dtype``), else
    ``torch_dtype`` (diffusers 0.35, the declared floor, ignores ``dtype`` and loads float32)."""
    from diffusers.pipelines import pipeline_utils

    return "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
