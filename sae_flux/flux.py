"""``Flux``: a diffusers FluxPipeline traced by nnsight, with named hook points and capture.

The tracing follows the residual-stream setup of Shabalin et al. 2025 (arXiv 2505.24360): the
image stream of a block's output, one or a few denoising steps from pure noise. Every read goes
through nnsight's own ``DiffusionModel`` (``flux.model``), so user scripts can mix
:meth:`Flux.capture` with their own ``with flux.model.generate(...)`` blocks.

Example:
    >>> flux = Flux.tiny(seed=0)
    >>> acts = flux.capture(["a red circle"], hooks=["double.1.img"], num_inference_steps=2)
    >>> acts["double.1.img"].shape   # (prompt, step, token, d_model)
    torch.Size([1, 2, 64, 32])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nnsight
import torch
from diffusers import FluxPipeline
from jaxtyping import Float
from nnsight.modeling.diffusion import DiffusionModel, _PipelineModule
from torch import Tensor
from tqdm.auto import tqdm

from sae_flux import hooks as hookpoints
from sae_flux.placement import Offload, Placement
from sae_flux.tiny import (
    GenerationDefaults,
    TinyFluxConfig,
    TinyFluxPipeline,
    build_pipeline,
)

logger = logging.getLogger(__name__)

SCHNELL = "black-forest-labs/FLUX.1-schnell"
#: Defaults for the real models (the paper: 256 px, one step for schnell; T5 length 256 / 512).
REAL_DEFAULTS = {
    "schnell": GenerationDefaults(resolution=256, max_sequence_length=256, num_inference_steps=1),
    "dev": GenerationDefaults(
        resolution=256, max_sequence_length=512, num_inference_steps=28, guidance_scale=3.5
    ),
}


def variant(transformer: Any) -> str:
    """``"dev"`` for a transformer with a guidance embedding (FLUX.1-dev), else ``"schnell"``."""
    return "dev" if transformer.config.guidance_embeds else "schnell"


class Activations(dict[str, Tensor]):
    """``hook -> Tensor[prompt, step, token, width]`` plus where every token came from.

    Attributes:
        prompts: the prompts, in row order.
        prompt_ids: global index of each prompt row (its position in the full prompt list).
        steps: the denoising-step indices kept, in order.
        timesteps: the scheduler timestep (0..1000 scale) of each kept step.
        grid: (rows, cols) of the image-token grid.

    Example:
        >>> flux = Flux.tiny(seed=0)
        >>> acts = flux.capture(["a red circle", "a blue square"], hooks=["double.1.img"],
        ...                     num_inference_steps=2)
        >>> acts["double.1.img"].shape[:2], acts.prompts[1], acts.steps
        (torch.Size([2, 2]), 'a blue square', [0, 1])
        >>> acts["double.1.img"].shape[2] == acts.grid[0] * acts.grid[1]
        True
    """

    def __init__(
        self,
        data: dict[str, Tensor],
        prompts: list[str],
        prompt_ids: list[int],
        steps: list[int],
        timesteps: Tensor,
        grid: tuple[int, int],
    ) -> None:
        super().__init__(data)
        self.prompts = prompts
        self.prompt_ids = prompt_ids
        self.steps = steps
        self.timesteps = timesteps
        self.grid = grid

    def tokens(self, hook: str) -> Float[Tensor, "n width"]:
        """The hook's activations flattened to ``(prompt*step*token, width)``."""
        return self[hook].flatten(0, 2)

    def provenance(self, hook: str) -> dict[str, Tensor]:
        """Per-token provenance aligned with :meth:`tokens`.

        Keys: ``prompt`` (global prompt index), ``step``, ``timestep``, and ``h``/``w`` (token row
        and column on the latent grid) for image streams or ``token`` (position in the T5
        sequence) for text streams.
        """
        n_prompt, n_step, n_token, _ = self[hook].shape
        shape = (n_prompt, n_step, n_token)
        prompt = torch.tensor(self.prompt_ids, dtype=torch.int64)[:, None, None].expand(shape)
        step = torch.tensor(self.steps, dtype=torch.int64)[None, :, None].expand(shape)
        timestep = self.timesteps.to(torch.float32)[None, :, None].expand(shape)
        token = torch.arange(n_token)[None, None, :].expand(shape)
        prov = {"prompt": prompt, "step": step, "timestep": timestep}
        if hookpoints.parse(hook).is_image:
            prov["h"], prov["w"] = token // self.grid[1], token % self.grid[1]
        else:
            prov["token"] = token
        return {key: value.reshape(-1).contiguous() for key, value in prov.items()}


@dataclass(frozen=True)
class _BlockGroup:
    """The hooks of one block, read in one visit: inputs, then MLP, then block output."""

    block_path: str
    points: tuple[hookpoints.HookPoint, ...]

    def read(self, model: DiffusionModel) -> dict[str, Tensor]:
        block = hookpoints._envoy(model, self.block_path)
        inputs: dict[str, Tensor] = block.inputs[1] if any(p.delta for p in self.points) else {}
        values: dict[str, Tensor] = {}
        for point in self.points:
            if point.stream == "mlp":
                values[point.name] = block.ff.net[0].output
        streams = [p for p in self.points if p.stream != "mlp"]
        output: Any = block.output if streams else ()
        for point in streams:
            values[point.name] = hookpoints.stream_of(point, output, inputs)
        return values


def _group(points: Sequence[hookpoints.HookPoint]) -> list[_BlockGroup]:
    groups: dict[str, list[hookpoints.HookPoint]] = {}
    for point in sorted(points):
        groups.setdefault(point.block_path, []).append(point)
    return [_BlockGroup(path, tuple(pts)) for path, pts in groups.items()]


class Flux:
    """A FluxPipeline wrapped in nnsight's ``DiffusionModel`` with named hook points.

    Build it with :meth:`from_pretrained` (real models, by repo id or directory), :meth:`tiny`
    (random weights, offline) or :meth:`organism` (the shipped trained organism).

    Example:
        >>> flux = Flux.tiny(seed=0)
        >>> flux.block_counts, flux.hook_points()[:3]
        ((2, 2), ['double.0.mlp', 'double.0.txt', 'double.0.img'])
        >>> images = flux.generate(["a red circle"], num_inference_steps=1)
        >>> tuple(images.shape) == (1, 3, flux.resolution, flux.resolution)
        True
    """

    def __init__(self, model: DiffusionModel, model_id: str, defaults: GenerationDefaults):
        self.model = model
        self.model_id = model_id
        self.defaults = defaults
        # run on the prompts of every generate / capture call (the organism's warns about
        # captions off its grammar); None: no check
        self.caption_check: Callable[[Sequence[str]], object] | None = None
        self.pipeline.set_progress_bar_config(disable=True)

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        repo_or_dir: str | Path = SCHNELL,
        dtype: str | torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        revision: str | None = None,
        device_map: str | None = None,
        offload: Offload | None = None,
        **pipeline_kwargs: Any,
    ) -> Flux:
        """Load a Flux pipeline (FLUX.1-schnell by default, FLUX.1-dev accepted) by id or path.

        The weights go where they run through diffusers' own mechanisms
        (:class:`sae_flux.placement.Placement`): an accelerator ``device`` loads every
        component straight to it (``device_map``), ``offload="model"`` / ``"sequential"``
        attaches diffusers' CPU offload; nothing is built whole on the host and then moved.
        The sampling defaults follow the transformer's config: a guidance embedding means
        FLUX.1-dev (28 steps, guidance 3.5), none means FLUX.1-schnell; the path never matters.

        Example:
            >>> flux = Flux.from_pretrained("black-forest-labs/FLUX.1-schnell",  # doctest: +SKIP
            ...                             dtype=torch.bfloat16, device="cuda")
            >>> flux = Flux.from_pretrained("black-forest-labs/FLUX.1-dev",  # doctest: +SKIP
            ...                             dtype=torch.bfloat16, device="cuda", offload="model")
        """
        placement = Placement.resolve(device, dtype, device_map, offload)
        path = Path(repo_or_dir)
        local = path.is_dir()
        if local and not (path / "model_index.json").is_file():
            raise FileNotFoundError(f"{path} is not a diffusers pipeline directory (no model_index.json)")
        defaults = GenerationDefaults.load(path) if local else None
        if defaults is not None:  # a pipeline built by sae-flux: its plain call uses its own settings
            pipeline_kwargs.setdefault("automodel", TinyFluxPipeline)
        with placement.loading():
            model = DiffusionModel(
                str(repo_or_dir),
                dispatch=True,
                revision=revision,
                **placement.load_kwargs(),
                **pipeline_kwargs,
            )
        placement.place(model.pipeline)
        if defaults is None:
            defaults = REAL_DEFAULTS[variant(model.pipeline.transformer)]
        model_id = str(repo_or_dir)  # as given: saved records hold no absolute path of this machine
        return cls(model, model_id, defaults)

    @classmethod
    def from_pipeline(
        cls,
        pipe: FluxPipeline,
        defaults: GenerationDefaults | None = None,
        model_id: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        offload: Offload | None = None,
    ) -> Flux:
        """Wrap a ``FluxPipeline`` already in memory: no save, no reload, the same weights.

        nnsight's supported path for a ready module: ``DiffusionModel`` accepts any
        ``torch.nn.Module`` and builds its envoy tree over it as-is, so the pipeline is given
        through nnsight's own ``_PipelineModule`` view (every component a child, forward runs
        the pipeline), exactly the module ``DiffusionModel`` builds when it loads by path.
        Its components are put in eval mode, as diffusers' ``from_pretrained`` leaves them
        (a freshly constructed module is in training mode, with dropout active). The pipeline
        is moved or offloaded only if ``device`` / ``dtype`` / ``offload`` are given. Defaults: ``defaults``, else the pipeline's own (a
        :class:`sae_flux.tiny.TinyFluxPipeline`), else by variant as in :meth:`from_pretrained`.

        Example:
            >>> from sae_flux.tiny import build_pipeline
            >>> flux = Flux.from_pipeline(build_pipeline(seed=0))
            >>> flux.d_model
            32
        """
        if not isinstance(pipe, FluxPipeline):
            raise TypeError(f"from_pipeline needs a diffusers FluxPipeline, got {type(pipe).__name__}")
        if device is not None or dtype is not None or offload is not None:
            current = pipe.transformer.dtype if dtype is None else dtype
            Placement.resolve(device or pipe.device, current, None, offload).move(pipe)
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                component.eval()  # as diffusers' from_pretrained leaves them (no dropout)
        model = DiffusionModel(_PipelineModule(pipe))
        model.pipeline = pipe
        defaults = defaults or getattr(pipe, "generation_defaults", None)
        defaults = defaults or REAL_DEFAULTS[variant(pipe.transformer)]
        name = model_id or getattr(pipe, "name_or_path", None) or f"in-memory {type(pipe).__name__}"
        return cls(model, str(name), defaults)

    @classmethod
    def tiny(cls, seed: int = 0, config: TinyFluxConfig | None = None) -> Flux:
        """A random-weight tiny FluxPipeline built offline: the fixture for fast tests."""
        config = config or TinyFluxConfig()
        pipe = TinyFluxPipeline(**build_pipeline(config, seed=seed).components)
        pipe.generation_defaults = config.defaults
        return cls.from_pipeline(pipe, model_id=f"tiny(seed={seed}, {_config_tag(config)})")

    @classmethod
    def organism(cls) -> Flux:
        """The shipped Flux organism: a tiny FluxPipeline trained on procedural scenes.

        Every :meth:`generate` and :meth:`capture` call warns once, naming them, about captions
        off the organism's grammar (a size, colour, shape, position or background missing, or
        unknown words: :func:`sae_flux.organism.check_captions`). ``flux.pipeline`` is a
        :class:`sae_flux.tiny.TinyFluxPipeline`: a plain ``flux.pipeline(prompt)`` uses the
        organism's own settings (8 steps, 32 px, 24 text tokens, no guidance), so with the same
        generator it gives the image of :meth:`generate`.

        Example:
            >>> flux = Flux.organism()  # doctest: +SKIP
            >>> image = flux.pipeline("a small red circle at the left on a black background").images[0]  # doctest: +SKIP
        """
        from sae_flux.organism import check_captions, weights_dir

        flux = cls.from_pretrained(weights_dir())
        flux.model_id = "sae-flux/organism"
        flux.caption_check = check_captions
        return flux

    # -- properties -------------------------------------------------------------------------

    @property
    def pipeline(self) -> Any:
        """The underlying diffusers ``FluxPipeline``."""
        return self.model.pipeline

    @property
    def resolution(self) -> int:
        """Default image height = width in pixels."""
        return self.defaults.resolution

    @property
    def d_model(self) -> int:
        return int(self.pipeline.transformer.inner_dim)

    @property
    def block_counts(self) -> tuple[int, int]:
        return hookpoints.block_counts(self.pipeline.transformer)

    def hook_points(self, delta: bool = False) -> list[str]:
        """The hook-point names of this model in execution order; the ``.delta`` forms with ``delta=True``."""
        return hookpoints.all_hook_points(*self.block_counts, delta=delta)

    def resolve(self, hook: str) -> hookpoints.HookPoint:
        """Parse ``hook`` and check it exists in this model (clear error otherwise)."""
        return hookpoints.resolve(hook, *self.block_counts)

    def width(self, hook: str) -> int:
        """Feature width of ``hook`` (d_model, or 4 x d_model for MLP neurons)."""
        return self.resolve(hook).width(self.d_model)

    def grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(rows, cols) of the image-token grid at the given size."""
        stride = 2 * self.pipeline.vae_scale_factor
        return (height or self.resolution) // stride, (width or self.resolution) // stride

    def generation_kwargs(self, **overrides: Any) -> dict[str, Any]:
        """Pipeline keyword arguments with this model's defaults (size, steps, text length)."""
        kwargs = self.defaults.call_kwargs()
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        self.check_generation(kwargs)
        return kwargs

    def check_generation(self, kwargs: dict[str, Any]) -> None:
        """Refuse sizes that are no whole number of image tokens and fewer than one step."""
        stride = 2 * self.pipeline.vae_scale_factor
        for side in ("height", "width"):
            size = kwargs.get(side)
            if size is not None and (size < stride or size % stride):
                raise ValueError(
                    f"resolution {size} is not a positive multiple of {stride}, the pixels per image "
                    f"token of {self.model_id} (e.g. {max(stride, size - size % stride)})")
        steps = kwargs.get("num_inference_steps")
        if steps is not None and steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")

    # -- running ---------------------------------------------------------------------------

    def generators(self, seed: int, prompt_ids: Sequence[int]) -> list[torch.Generator]:
        """One generator per prompt, seeded ``seed + global prompt index`` (batch-independent)."""
        device = self.pipeline.device
        return [torch.Generator(device).manual_seed(seed + i) for i in prompt_ids]

    def generate(
        self,
        prompts: Sequence[str],
        seed: int = 0,
        prompt_ids: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> Float[Tensor, "prompt 3 height width"]:
        """Images in [0, 1] for ``prompts`` (a bare pipeline call, no tracing)."""
        if self.caption_check is not None:
            self.caption_check(prompts)
        prompt_ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
        out = self.pipeline(
            list(prompts),
            generator=self.generators(seed, prompt_ids),
            output_type="pt",
            **self.generation_kwargs(**kwargs),
        )
        return out.images

    def capture(
        self,
        prompts: Sequence[str],
        hooks: Sequence[str],
        num_inference_steps: int | None = None,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        steps: Sequence[int] | None = None,
        batch_size: int = 16,
        include_uncond: bool = False,
        prompt_ids: Sequence[int] | None = None,
        progress: bool = False,
        **pipeline_kwargs: Any,
    ) -> Activations:
        """Run the pipeline on ``prompts`` and return the named streams.

        Args:
            prompts: text prompts; prompt ``j`` is generated from seed ``seed + prompt_ids[j]``.
            hooks: hook-point names (see :mod:`sae_flux.hooks`).
            num_inference_steps: denoising steps (default: the model's).
            steps: which denoising steps to keep (default: all).
            batch_size: prompts per pipeline call.
            include_uncond: with true classifier-free guidance (``true_cfg_scale > 1`` and a
                negative prompt) the transformer runs twice per step; by default only the
                conditional pass is kept, ``True`` keeps both (the step axis then interleaves
                conditional, unconditional).
            prompt_ids: global indices of the prompts (default ``0..len-1``), for provenance.

        Returns:
            :class:`Activations`: ``hook -> Tensor[prompt, step, token, width]`` (float32 on CPU).
        """
        if not prompts:
            raise ValueError("capture needs at least one prompt")
        if self.caption_check is not None:
            self.caption_check(prompts)
        points = [self.resolve(h) for h in dict.fromkeys(hooks)]
        kwargs = self.generation_kwargs(
            num_inference_steps=num_inference_steps, height=height, width=width, **pipeline_kwargs
        )
        n_steps = kwargs["num_inference_steps"]
        kept = _check_steps(steps, n_steps)
        cfg = kwargs.get("true_cfg_scale", 1.0) > 1 and kwargs.get("negative_prompt") is not None
        occurrences = _occurrences(kept, cfg, include_uncond)
        prompt_ids = list(range(len(prompts))) if prompt_ids is None else list(prompt_ids)
        chunks: dict[str, list[Tensor]] = {p.name: [] for p in points}
        groups = _group(points)
        starts = range(0, len(prompts), batch_size)
        for start in tqdm(starts, desc="capture", disable=not progress, unit="batch"):
            batch = list(prompts[start : start + batch_size])
            ids = prompt_ids[start : start + batch_size]
            saved = self._trace_batch(batch, ids, seed, groups, occurrences, kept, kwargs)
            for name, per_step in saved.items():
                chunks[name].append(torch.stack(per_step, dim=1).float().cpu())
        timesteps = self.pipeline.scheduler.timesteps[kept].float().cpu()
        data = {name: torch.cat(parts, dim=0) for name, parts in chunks.items()}
        grid = self.grid(kwargs["height"], kwargs["width"])
        step_axis = [s for s in kept for _ in range(2 if cfg and include_uncond else 1)]
        if cfg and include_uncond:
            timesteps = timesteps.repeat_interleave(2)
        return Activations(data, list(prompts), prompt_ids, step_axis, timesteps, grid)

    def _trace_batch(
        self,
        prompts: list[str],
        prompt_ids: list[int],
        seed: int,
        groups: list[_BlockGroup],
        occurrences: list[int],
        kept: list[int],
        kwargs: dict[str, Any],
    ) -> dict[str, list[Tensor]]:
        saved: dict[str, list[Tensor]] = {p.name: [] for g in groups for p in g.points}
        model = self.model
        kwargs = dict(kwargs)
        kwargs.setdefault("callback_on_step_end", _stop_after(kwargs["num_inference_steps"], max(kept)))
        with model.generate(
            prompts,
            generator=self.generators(seed, prompt_ids),
            output_type="latent",
            **kwargs,
        ) as tracer:
            for _ in tracer.iter[occurrences]:
                for group in groups:
                    for name, value in group.read(model).items():
                        saved[name].append(nnsight.save(value))
        return saved

    def record(self) -> dict[str, Any]:
        """What identifies this model in a saved record (cache manifest, dictionary cfg)."""
        return {"model_id": self.model_id, "defaults": asdict(self.defaults)}


def _stop_after(n_steps: int, last: int) -> Any:
    """A step-end callback that skips the denoising steps after ``last`` (nothing reads them).

    FluxPipeline skips the body of its loop once ``pipeline._interrupt`` is set; the latents
    are not needed because capture asks for ``output_type="latent"`` and discards them.
    """

    def callback(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        if step >= last and step < n_steps - 1:
            pipeline._interrupt = True
        return tensors

    return callback


def _check_steps(steps: Sequence[int] | None, n_steps: int) -> list[int]:
    if steps is None:
        return list(range(n_steps))
    kept = sorted(dict.fromkeys(int(s) for s in steps))
    bad = [s for s in kept if not 0 <= s < n_steps]
    if bad or not kept:
        raise ValueError(
            f"steps {list(steps)} must be non-empty and within 0..{n_steps - 1} "
            f"(num_inference_steps={n_steps})"
        )
    return kept


def _occurrences(kept: list[int], cfg: bool, include_uncond: bool) -> list[int]:
    if not cfg:
        return kept
    calls = (0, 1) if include_uncond else (0,)
    return [2 * s + c for s in kept for c in calls]


def _config_tag(config: TinyFluxConfig) -> str:
    return (
        f"double={config.num_layers}, single={config.num_single_layers}, "
        f"d={config.num_attention_heads * config.attention_head_dim}"
    )
