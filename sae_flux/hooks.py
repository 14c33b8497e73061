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

This module is the one stream editor of the project: :func:`stream_of` reads the value a hook
names from a block's output and input, :func:`with_stream` puts a new value back (for ``.delta``
the new update is added to the block input), and every path goes through those two:

- :func:`editing`: a context manager installing a plain torch forward hook that replaces the
  stream by ``fn(stream)`` in every forward (steering, downstream metrics);
- :func:`read`, :func:`write` and :func:`edit`: the same inside your own nnsight trace, called
  once per forward (in a multi-step ``generate``, inside ``for step in tracer.iter[...]``)::

    flux = Flux.tiny()
    kwargs = flux.generation_kwargs(num_inference_steps=2)
    with flux.model.generate("a red circle", **kwargs) as tracer:
        for step in tracer.iter[0:2]:                        # each denoising step
            acts = read(flux.model, "double.1.img").save()   # (batch, tokens, d_model)
            write(flux.model, "double.1.img", acts * 0.5)    # edit the stream in place

Without ``tracer.iter`` the code of a ``generate`` trace runs on the first denoising step only.

A bad name, or a block the model does not have, fails with the valid forms and ranges on every
path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

Kind = Literal["double", "single"]
#: A function from the value a hook names to its replacement (same shape).
StreamFn = Callable[[Tensor], Tensor]
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
    """Every hook-point name of a model, in execution order."""
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
    """The module (or nnsight envoy) at a dotted path, digits indexing module lists."""
    node = model
    for part in path.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _transformer(root: Any) -> Any:
    """The FluxTransformer2DModel under a pipeline or an nnsight DiffusionModel."""
    return getattr(root, "pipeline", root).transformer


def checked(root: Any, hook: str) -> HookPoint:
    """``hook`` parsed and checked against the blocks of ``root`` (a FluxPipeline or an nnsight
    DiffusionModel): an unknown form or a missing block fails with the valid forms and ranges."""
    return resolve(hook, *block_counts(_transformer(root)))


def _input_key(point: HookPoint) -> str:
    return "encoder_hidden_states" if point.stream == "txt" else "hidden_states"


def stream_of(point: HookPoint, output: Any, inputs: dict[str, Tensor]) -> Tensor:
    """The value ``point`` names in a module's ``output`` (``inputs``: the block's keyword
    inputs, needed for ``.delta`` only): the stream, or for ``.delta`` output minus input."""
    if point.output_index is None:
        return output
    stream = output[point.output_index]
    return stream - inputs[_input_key(point)] if point.delta else stream


def with_stream(point: HookPoint, output: Any, inputs: dict[str, Tensor], value: Tensor) -> Any:
    """``output`` with the value ``point`` names replaced by ``value`` (for ``.delta``: the
    block output becomes input + ``value``)."""
    if point.output_index is None:
        return value
    parts = list(output)
    parts[point.output_index] = inputs[_input_key(point)] + value if point.delta else value
    return tuple(parts)


# -- a context manager over plain torch forward hooks --------------------------------------------


@contextmanager
def editing(pipeline: Any, hook: str, fn: StreamFn) -> Iterator[None]:
    """Replace the named value by ``fn(value)`` in every forward of ``pipeline`` inside the block.

    ``fn`` sees and returns what the hook names: the stream, or for ``.delta`` the block's update.

    Example:
        >>> from sae_flux.flux import Flux
        >>> flux = Flux.tiny()
        >>> with editing(flux.pipeline, "double.1.img.delta", lambda d: 0.5 * d):
        ...     images = flux.generate(["a red circle"], num_inference_steps=1)
    """
    point = checked(pipeline, hook)
    module = _transformer(pipeline).get_submodule(point.module_path.partition(".")[2])

    def on_output(_mod: torch.nn.Module, _args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        return with_stream(point, output, kwargs, fn(stream_of(point, output, kwargs)))

    handle = module.register_forward_hook(on_output, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# -- inside a user's nnsight trace ----------------------------------------------------------------


@dataclass
class _Seen:
    """A ``.delta`` read's block input, kept so that a later write in the same forward can use
    it (nnsight cannot go back to a block's input once its output was read)."""

    inputs: dict[str, Tensor]
    stream: Tensor


_seen: dict[tuple[int, str], _Seen] = {}


def _block_inputs(envoy: Any) -> dict[str, Tensor]:
    return dict(envoy.inputs[1])


def read(model: Any, hook: str) -> Tensor:
    """The named value, ``(batch, tokens, width)``, inside a trace of ``model`` (a DiffusionModel).

    Call it inside ``with model.trace(...)`` / ``model.generate(...)``; in a multi-step run use it
    inside ``for step in tracer.iter[...]`` to pick the step. Hooks must be read in execution
    order (:class:`HookPoint` sorts that way); a ``.delta`` read may be followed by a
    :func:`write` of the same hook in the same step.
    """
    point = checked(model, hook)
    envoy = _envoy(model, point.module_path)
    inputs = _block_inputs(envoy) if point.delta else {}
    output = envoy.output
    if point.delta:
        _seen[(id(model), hook)] = _Seen(inputs, output[point.output_index])
    return stream_of(point, output, inputs)


def _inputs_for_write(model: Any, hook: str, envoy: Any, point: HookPoint) -> tuple[dict, Any]:
    seen = _seen.pop((id(model), hook), None)
    if seen is None:
        inputs = _block_inputs(envoy)
        return inputs, envoy.output
    output = envoy.output
    if output[point.output_index] is not seen.stream:
        raise ValueError(
            f"{hook!r} was read in an earlier forward than this write: read it again in this step "
            "(or use sae_flux.hooks.edit) before writing it"
        )
    return seen.inputs, output


def write(model: Any, hook: str, value: Tensor) -> None:
    """Replace the named value with ``value`` inside a trace (for ``.delta``: the block output
    becomes input + ``value``)."""
    point = checked(model, hook)
    envoy = _envoy(model, point.module_path)
    if point.delta:
        inputs, output = _inputs_for_write(model, hook, envoy, point)
    else:
        inputs, output = {}, (None if point.output_index is None else envoy.output)
    envoy.output = with_stream(point, output, inputs, value)


def edit(model: Any, hook: str, fn: StreamFn) -> None:
    """Replace the named value by ``fn(value)`` inside a trace: :func:`read` then :func:`write`.

    Example:
        >>> from sae_flux.flux import Flux
        >>> flux = Flux.tiny()
        >>> kwargs = flux.generation_kwargs(num_inference_steps=2)
        >>> with flux.model.generate(["a red circle"], **kwargs) as tracer:
        ...     for step in tracer.iter[0:2]:
        ...         edit(flux.model, "double.1.img.delta", lambda d: 0.5 * d)
    """
    write(model, hook, fn(read(model, hook)))
