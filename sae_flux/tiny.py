"""Tiny FluxPipelines built offline from configs: the real diffusers classes at toy sizes.

The recipe follows ``../shared/research.md`` section 4 and 5: a ``FluxTransformer2DModel`` with a
few double and single blocks, CLIP and T5 text encoders from small configs, an ``AutoencoderKL``
with one downsampling stage, the ``FlowMatchEulerDiscreteScheduler`` and word-level tokenizers
written locally (no Hub access). ``Flux.tiny`` uses the defaults with random weights; the Flux
organism (``sae_flux.organism``) uses the same builder with its own vocabulary and trains it.

A saved tiny pipeline directory also holds ``sae_flux.json`` (:class:`GenerationDefaults`), the
resolution and text length the pipeline was built for, which :class:`sae_flux.Flux` reads.

Example:
    >>> from sae_flux.tiny import TinyFluxConfig, build_pipeline
    >>> pipe = build_pipeline(TinyFluxConfig(), seed=0)
    >>> pipe.transformer.config.num_layers
    2
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

logger = logging.getLogger(__name__)

DEFAULTS_FILE = "sae_flux.json"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "</s>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

#: Words of the default tiny vocabulary; anything else maps to ``<unk>``.
DEFAULT_WORDS: tuple[str, ...] = tuple(
    "a an the of on in at with and photo picture image drawing painting cat dog house tree car "
    "red green blue yellow white black purple orange small large big circle square triangle "
    "left right top bottom center sky sea mountain city street person flower bird".split()
)


@dataclass
class GenerationDefaults:
    """Settings a pipeline was built for; saved as ``sae_flux.json`` next to ``model_index.json``."""

    resolution: int = 32
    """Default image height and width in pixels."""
    max_sequence_length: int = 16
    """T5 token count the prompts are padded to."""
    num_inference_steps: int = 4
    """Default number of denoising steps for generation."""
    guidance_scale: float = 0.0
    """Default guidance (0 = none; the tiny models have no guidance embedding)."""

    def save(self, directory: Path) -> None:
        (Path(directory) / DEFAULTS_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> GenerationDefaults | None:
        path = Path(directory) / DEFAULTS_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    def call_kwargs(self) -> dict[str, Any]:
        """These settings as ``FluxPipeline.__call__`` keyword arguments."""
        return {
            "height": self.resolution,
            "width": self.resolution,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "max_sequence_length": self.max_sequence_length,
        }


class TinyFluxPipeline(FluxPipeline):
    """A ``FluxPipeline`` whose call defaults are the settings it was built for (``sae_flux.json``).

    diffusers' ``FluxPipeline.__call__`` defaults (28 steps, 1,024 px, 512 text tokens) suit
    FLUX.1, not a tiny pipeline: the organism draws its scenes in 8 steps at 32 px from 24 text
    tokens and gives near-black images otherwise. Loaded through this class, a plain call
    ``pipe(prompt)`` fills every setting the caller leaves out (or passes as ``None``) from
    ``sae_flux.json``; anything passed explicitly wins. The directory stays a plain diffusers
    ``FluxPipeline`` (``model_index.json`` names ``FluxPipeline``); loaded with
    ``FluxPipeline.from_pretrained`` instead, pass ``**GenerationDefaults.load(dir).call_kwargs()``.

    Example:
        >>> from sae_flux.organism import weights_dir
        >>> pipe = TinyFluxPipeline.from_pretrained(weights_dir())  # doctest: +SKIP
        >>> image = pipe("a small red circle at the left on a black background").images[0]  # doctest: +SKIP
    """

    generation_defaults: GenerationDefaults | None = None
    """The settings read from ``sae_flux.json`` at load (``None``: diffusers' own defaults)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if Path(str(pretrained_model_name_or_path)).is_dir():
            pipe.generation_defaults = GenerationDefaults.load(Path(pretrained_model_name_or_path))
        return pipe

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.generation_defaults is not None:
            given = inspect.signature(FluxPipeline.__call__).bind_partial(self, *args, **kwargs).arguments
            for name, value in self.generation_defaults.call_kwargs().items():
                if given.get(name) is None:
                    kwargs[name] = value
        return super().__call__(*args, **kwargs)

    def to_json_string(self) -> str:
        """The ``model_index.json`` record, naming the diffusers class so plain diffusers loads it."""
        record = json.loads(super().to_json_string())
        record["_class_name"] = FluxPipeline.__name__
        return json.dumps(record, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> None:
        """diffusers' save, plus ``sae_flux.json`` so the copy keeps its call defaults."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.generation_defaults is not None:
            self.generation_defaults.save(Path(save_directory))


@dataclass
class TinyFluxConfig:
    """Sizes of every component of a tiny FluxPipeline."""

    num_layers: int = 2
    """Double-stream (MM-DiT) blocks."""
    num_single_layers: int = 2
    """Single-stream blocks."""
    num_attention_heads: int = 2
    attention_head_dim: int = 16
    axes_dims_rope: tuple[int, int, int] = (4, 4, 8)
    """RoPE dims per axis; must sum to ``attention_head_dim``."""
    text_dim: int = 32
    """Width of both text encoders (= joint and pooled projection dims) unless set apart below."""
    pooled_dim: int | None = None
    """CLIP width = the transformer's ``pooled_projection_dim`` (default ``text_dim``; FLUX.1: 768)."""
    joint_dim: int | None = None
    """T5 width = the transformer's ``joint_attention_dim`` (default ``text_dim``; FLUX.1: 4,096)."""
    text_layers: int = 2
    vae_channels: tuple[int, ...] = (16, 32)
    """AutoencoderKL block widths; ``len - 1`` downsampling stages."""
    latent_channels: int = 4
    words: Sequence[str] = field(default_factory=lambda: DEFAULT_WORDS)
    """Whole-word vocabulary of both tokenizers."""
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)

    def __post_init__(self) -> None:
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ValueError(
                f"axes_dims_rope {tuple(self.axes_dims_rope)} must sum to attention_head_dim "
                f"{self.attention_head_dim}"
            )
        stride = 2 ** len(self.vae_channels)
        if self.defaults.resolution % stride:
            raise ValueError(
                f"resolution {self.defaults.resolution} must be divisible by {stride} "
                f"(VAE downsampling x 2x2 token packing)"
            )


def build_tokenizer(words: Sequence[str], model_max_length: int) -> PreTrainedTokenizerFast:
    """A lower-casing whole-word tokenizer that ends every text with ``</s>``.

    Unknown words become ``<unk>``; :func:`unknown_words` lists them for a warning.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in dict.fromkeys(w.lower() for w in words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", EOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="</s>",
        model_max_length=model_max_length,
    )


def unknown_words(tokenizer: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[str]:
    """Words of ``texts`` that ``tokenizer`` maps to ``<unk>``, in order of first appearance."""
    vocab = tokenizer.get_vocab()
    pre = tokenizer.backend_tokenizer.pre_tokenizer
    found: dict[str, None] = {}
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text.lower()):
            if word not in vocab:
                found.setdefault(word, None)
    return list(found)


TEXT_INNER_MAX = 256
"""Cap on the text encoders' inner sizes (MLP, T5 ``d_kv``): a text encoder at FLUX.1's widths
(CLIP 768, T5 4,096) stays a few million parameters; the small configs are below the cap."""


def _text_encoders(cfg: TinyFluxConfig, vocab_size: int) -> tuple[CLIPTextModel, T5EncoderModel]:
    pooled, joint = cfg.pooled_dim or cfg.text_dim, cfg.joint_dim or cfg.text_dim
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=pooled,
            intermediate_size=min(2 * pooled, TEXT_INNER_MAX),
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=2,
            max_position_embeddings=77,
            projection_dim=pooled,
            pad_token_id=PAD_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
        )
    )
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=joint,
            d_kv=min(joint // 2, TEXT_INNER_MAX // 4),
            d_ff=min(2 * joint, TEXT_INNER_MAX),
            num_layers=cfg.text_layers,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=PAD_ID,
            eos_token_id=EOS_ID,
        )
    )
    return clip, t5


def _vae(cfg: TinyFluxConfig) -> AutoencoderKL:
    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=cfg.latent_channels,
        norm_num_groups=8,
        scaling_factor=1.0,
        shift_factor=0.0,
    )


def _transformer(cfg: TinyFluxConfig) -> FluxTransformer2DModel:
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * cfg.latent_channels,
        num_layers=cfg.num_layers,
        num_single_layers=cfg.num_single_layers,
        attention_head_dim=cfg.attention_head_dim,
        num_attention_heads=cfg.num_attention_heads,
        joint_attention_dim=cfg.joint_dim or cfg.text_dim,
        pooled_projection_dim=cfg.pooled_dim or cfg.text_dim,
        guidance_embeds=False,
        axes_dims_rope=tuple(cfg.axes_dims_rope),
    )


def build_pipeline(
    cfg: TinyFluxConfig | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> FluxPipeline:
    """A random-weight FluxPipeline of the sizes in ``cfg``, built without any download.

    With ``dtype`` / ``device`` every module is created in that dtype on that device directly
    (a 1B-parameter transformer in bfloat16 never exists in float32, nor on the host when a GPU
    is named).
    """
    cfg = cfg or TinyFluxConfig()
    tokenizer = build_tokenizer(cfg.words, model_max_length=77)
    tokenizer_2 = build_tokenizer(cfg.words, model_max_length=cfg.defaults.max_sequence_length)
    torch.manual_seed(seed)
    with _creating(dtype, device):
        clip, t5 = _text_encoders(cfg, vocab_size=len(tokenizer))
        vae, transformer = _vae(cfg), _transformer(cfg)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=clip,
        tokenizer=tokenizer,
        text_encoder_2=t5,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def _creating(dtype: torch.dtype | None, device: str | torch.device | None) -> Iterator[None]:
    """Create modules' parameters in ``dtype`` on ``device`` (``None``: torch's defaults)."""
    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            yield
    finally:
        torch.set_default_dtype(previous)


def real_width_config(num_layers: int = 2, num_single_layers: int = 2, resolution: int = 64) -> TinyFluxConfig:
    """FLUX.1's exact widths (diffusers' FluxTransformer2DModel config of FLUX.1-schnell) with few blocks.

    Hidden 3,072 = 24 heads x 128, RoPE axes (16, 56, 56), ``joint_attention_dim`` 4,096 (T5-XXL's
    width), ``pooled_projection_dim`` 768 (CLIP-L's), 16 latent channels packed 2 x 2 into 64
    input channels, and a VAE that downsamples 8 x like FLUX.1's; the text encoders have those
    widths but one layer and small inner sizes. ``real_width_config(19, 38)`` is the full
    FLUX.1 transformer (11.89B parameters).
    """
    return TinyFluxConfig(
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_attention_heads=24,
        attention_head_dim=128,
        axes_dims_rope=(16, 56, 56),
        text_dim=768,
        pooled_dim=768,
        joint_dim=4096,
        text_layers=1,
        vae_channels=(8, 8, 8, 8),
        latent_channels=16,
        defaults=GenerationDefaults(resolution=resolution, max_sequence_length=16, num_inference_steps=1),
    )


def save_pipeline(
    pipe: FluxPipeline, directory: Path, defaults: GenerationDefaults, fp16: bool = False
) -> Path:
    """Save ``pipe`` in diffusers format plus ``sae_flux.json``; fp16 halves the size on disk.

    With ``fp16`` only the transformer and the VAE are stored in half precision: transformers 5
    loads text encoders in their saved dtype while diffusers loads the other components in
    float32, so fp16 text encoders would break a plain ``FluxPipeline.from_pretrained(dir)``
    ("Half and Float"). The tiny text encoders cost little in float32.
    """
    directory = Path(directory)
    if fp16:  # a copy, so the caller's (training) weights keep full precision
        pipe = copy.deepcopy(pipe)
        pipe.transformer.to(torch.float16)
        pipe.vae.to(torch.float16)
    pipe.save_pretrained(directory, safe_serialization=True)
    defaults.save(directory)
    return directory
