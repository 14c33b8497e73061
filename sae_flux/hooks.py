"""Named hook points of a Flux 1 transformer and helpers to read or edit them inside a trace.

Names (``../shared/design.md``; the residual-stream sites of Shabalin et al. 2025, arXiv 2505.24360):

- ``double.{i}.img`` / ``double.{i}.txt``: residual output of double-stream block ``i``
  (``transformer.transformer_blocks[i]``), image or text stream;
- ``single.{i}.img`` / ``single.{i}.txt``: the same for single-stream block ``i``
  (``transformer.single_transformer_blocks[i]``);
- a ``.delta`` suffix on any of those: block output minus block input (the block's update);
- ``double.{i}.mlp``: post-activation MLP neurons of the image stream
  (``transformer_blocks[i].ff.net[0]``, the neuron baseline of the paper).

In diffusers >= 0.35 both block kinds return ``(encoder_hidden_states, hidden_states)``, so the
text stream is tuple index 0 and the image stream index 1, and both take the streams as the
keyword arguments ``encoder_hidden_states`` / ``hidden_states``.

Inside your own nnsight trace, :func:`read` and :func:`write` address a stream by name, at one
denoising step: the first, unless a ``for step in tracer.iter[...]`` loop picks the steps::

    flux = Flux.tiny()
    with flux.model.generate("a red circle", **flux.generation_kwargs()) as tracer:
        for step in tracer.iter[:]:                          # every denoising step
            acts = read(flux.model, "double.1.img")          # (batch, tokens, d_model)
            write(flux.model, "double.1.img", acts * 0.5)    # edit the stream in place
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

Kind = Literal["double", "single"]
Stream = Literal["img", "txt", "mlp"]

_NAME_RE = re.compile(r"^(double|single)\.(\d+)\.(img|txt|mlp)(\.delta)?$")
_STREAM_INDEX = {"txt": 0, "img": 1}
_BLOCK_LISTS = {"double": "transformer_blocks", "single": "single_transformer_blocks"}
#: Order of sites inside one block, so that reads happen in execution order.
_SITE_ORDER = {"mlp": 0, "txt": 1, "img": 2}
FORMS = (
    "double.{i}.img, double.{i}.txt, single.{i}.img, single.{i}.txt "
    "(each optionally with a .delta suffix), double.{i}.mlp"
)


@dataclass(frozen=True, order=True)
class HookPoint:
    """One parsed hook-point name; ordered by execution order in a forward pass."""

    kind_rank: int
    block: int
    site_rank: int
    name: str

    @property
    def kind(self) -> Kind:
        return "double" if self.kind_rank == 0 else "single"

    @property
    def stream(self) -> Stream:
        return self.name.split(".")[2]  # type: ignore[return-value]

    @property
    def delta(self) -> bool:
        return self.name.endswith(".delta")

    @property
    def block_path(self) -> str:
        """Dotted path of the block module under the pipeline (``transformer.<list>.<i>``)."""
        return f"transformer.{_BLOCK_LISTS[self.kind]}.{self.block}"

    @property
    def module_path(self) -> str:
        """Dotted path of the module whose output the hook reads."""
        return f"{self.block_path}.ff.net.0" if self.stream == "mlp" else self.block_path

    @property
    def output_index(self) -> int | None:
        """Tuple position of the stream in the module's output (``None``: a plain tensor)."""
        return _STREAM_INDEX.get(self.stream)

    @property
    def is_image(self) -> bool:
        """Whether the hook's tokens are image tokens (laid out on the latent grid)."""
        return self.stream in ("img", "mlp")

    def width(self, d_model: int) -> int:
        """Feature width of the hook for a transformer of width ``d_model``."""
        return 4 * d_model if self.stream == "mlp" else d_model


def parse(name: str) -> HookPoint:
    """Parse a hook-point name, checking only its form (see :func:`resolve` for ranges)."""
    match = _NAME_RE.match(name)
    if match is None:
        raise ValueError(f"unknown hook point {name!r}; valid forms: {FORMS}")
    kind, block, stream, delta = match.groups()
    if stream == "mlp" and (kind == "single" or delta):
        raise ValueError(
            f"unknown hook point {name!r}: MLP neurons exist only as double.{{i}}.mlp "
            f"(single blocks fuse their MLP into the attention projection); valid forms: {FORMS}"
        )
    return HookPoint(0 if kind == "double" else 1, int(block), _SITE_ORDER[stream], name)


def block_counts(transformer: Any) -> tuple[int, int]:
    """(double, single) block counts of a FluxTransformer2DModel."""
    return len(transformer.transformer_blocks), len(transformer.single_transformer_blocks)


def resolve(name: str, n_double: int, n_single: int) -> HookPoint:
    """Parse ``name`` and check its block index against a model with the given block counts."""
    point = parse(name)
    limit = n_double if point.kind == "double" else n_single
    if point.block >= limit:
        raise ValueError(
            f"hook point {name!r} is out of range: this model has {n_double} double blocks "
            f"(double.0 .. double.{n_double - 1}) and {n_single} single blocks "
            f"(single.0 .. single.{n_single - 1}); valid forms: {FORMS}"
        )
    return point


def all_hook_points(n_double: int, n_single: int, delta: bool = False) -> list[str]:
    """The hook-point names of a model in execution order; the ``.delta`` forms with ``delta=True``."""
    names = []
    for kind, count in (("double", n_double), ("single", n_single)):
        for i in range(count):
            streams = ("mlp", "txt", "img") if kind == "double" else ("txt", "img")
            for stream in streams:
                names.append(f"{kind}.{i}.{stream}")
                if delta and stream != "mlp":
                    names.append(f"{kind}.{i}.{stream}.delta")
    return names


def _envoy(model: Any, path: str) -> Any:
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _stream_input(block: Any, point: HookPoint) -> Tensor:
    _, kwargs = block.inputs
    return kwargs["encoder_hidden_states" if point.stream == "txt" else "hidden_states"]


def read(model: Any, hook: str) -> Tensor:
    """The named stream, ``(batch, tokens, width)``, inside a trace of ``model`` (a DiffusionModel).

    Call it inside ``with model.trace(...)`` / ``model.generate(...)``; in a multi-step run use it
    inside ``for step in tracer.iter[...]`` to pick the step. Hooks must be read in execution
    order (:class:`HookPoint` sorts that way).
    """
    point = parse(hook)
    envoy = _envoy(model, point.module_path)
    if point.delta:
        before = _stream_input(envoy, point)
        return envoy.output[point.output_index] - before
    if point.output_index is None:
        return envoy.output
    return envoy.output[point.output_index]


def write(model: Any, hook: str, value: Tensor) -> None:
    """Replace the named stream with ``value`` inside a trace (for ``.delta``: input + value)."""
    point = parse(hook)
    envoy = _envoy(model, point.module_path)
    if point.output_index is None:
        envoy.output = value
        return
    if point.delta:
        value = _stream_input(envoy, point) + value
    output = list(envoy.output)
    output[point.output_index] = value
    envoy.output = tuple(output)
