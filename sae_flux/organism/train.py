"""Train the Flux organism: a tiny real FluxPipeline taught to draw the scene world on CPU.

Rectified flow as in Flux (Esser et al. 2024, "Scaling Rectified Flow Transformers", arXiv
2403.03206): with data latents x0, noise x1 and t in [0, 1], x_t = (1 - t) x0 + t x1 and the
transformer regresses the velocity x1 - x0. Timesteps are half uniform, half logit-normal (the
paper's preferred sampler). The recipe follows ``../shared/research.md`` section 5:

1. the VAE (``AutoencoderKL``) is trained alone on world images (MSE + a small KL term);
2. its posterior MEAN latents are standardised (``shift_factor`` = mean, ``scaling_factor`` =
   1 / std, registered in the VAE config so save/load keeps them);
3. the transformer is trained on those latents with frozen random text encoders whose prompt
   embeddings are precomputed once with the pipeline's own ``encode_prompt``.

Legend: B = batch, N = scenes, L = text tokens, T = image tokens, D = packed latent channels,
E = text width.

Example (a smoke run; the shipped weights come from the defaults):
    python -m sae_flux.organism.train --out /tmp/organism --vae.steps 50 --flow.steps 50
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from diffusers import FluxPipeline
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from _sae_flux_cliargs import add_dataclass_arguments, dataclass_from_args
from sae_flux.organism.weights import WEIGHTS_DIR, check_weights, write_manifest
from sae_flux.organism.world import World
from sae_flux.tiny import GenerationDefaults, TinyFluxConfig, build_pipeline, save_pipeline

logger = logging.getLogger(__name__)


@dataclass
class ModelSize:
    """Sizes of the organism's components (see ``sae_flux.tiny.TinyFluxConfig``)."""

    num_layers: int = 2
    """Double-stream blocks."""
    num_single_layers: int = 2
    """Single-stream blocks."""
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)
    """RoPE dims per axis (text/index, row, column); sum = attention_head_dim."""
    text_dim: int = 64
    """Width of both (frozen, random) text encoders."""
    text_layers: int = 2
    vae_channels: tuple[int, int] = (16, 32)
    """AutoencoderKL block widths: one downsampling stage, 32 px -> 16x16 latents."""
    latent_channels: int = 4


@dataclass
class VAEStage:
    """Stage 1: the autoencoder."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 100
    kl_weight: float = 1e-5
    """Weight of the KL term (summed over latent dims, averaged over the batch)."""


@dataclass
class DecoderStage:
    """Stage 3: refine the VAE decoder on posterior MEANS, the latents the transformer draws.

    Stage 1 decodes posterior samples whose std stays near 1 under the weak KL, so its decoder
    learns to average colours; refining it on the means (encoder frozen, so the latent space
    the transformer was trained on is unchanged) makes decoded colours exact.
    """

    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 20


@dataclass
class FlowStage:
    """Stage 2: the transformer, rectified flow on standardised VAE posterior means."""

    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_every: int = 500
    """Save the pipeline every this many steps (so an interrupted run keeps its progress)."""


@dataclass
class OrganismTrainConfig:
    """Everything that determines a trained organism (saved as ``train_config.json``)."""

    out: Path = WEIGHTS_DIR
    """Output diffusers directory (the package's shipped weights by default)."""
    seed: int = 0
    num_scenes: int = 6000
    """Training scenes rendered once (captions come from every training template)."""
    resolution: int = 32
    two_object_rate: float = 0.1
    """Share of training scenes with a second object."""
    num_inference_steps: int = 8
    """Default denoising steps saved in ``sae_flux.json``."""
    max_sequence_length: int = 24
    threads: int = 2
    """torch CPU threads."""
    fp16: bool = True
    """Save weights in half precision."""
    init_from: str = ""
    """Organism directory to continue from (its VAE is kept when ``vae.steps`` is 0); "" = scratch."""
    model: ModelSize = field(default_factory=ModelSize)
    vae: VAEStage = field(default_factory=VAEStage)
    flow: FlowStage = field(default_factory=FlowStage)
    decoder: DecoderStage = field(default_factory=DecoderStage)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.num_scenes < 1 or self.vae.steps < 0 or self.flow.steps < 0:
            raise ValueError("num_scenes must be >= 1 and stage steps >= 0")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def world(self) -> World:
        return World(resolution=self.resolution, two_object_rate=self.two_object_rate)

    def tiny(self) -> TinyFluxConfig:
        m = self.model
        return TinyFluxConfig(
            num_layers=m.num_layers, num_single_layers=m.num_single_layers,
            num_attention_heads=m.num_attention_heads, attention_head_dim=m.attention_head_dim,
            axes_dims_rope=(m.axes_dims_rope[0], m.axes_dims_rope[1], m.axes_dims_rope[2]), text_dim=m.text_dim,
            text_layers=m.text_layers, vae_channels=tuple(m.vae_channels),
            latent_channels=m.latent_channels, words=self.world().vocabulary(),
            defaults=self.defaults(),
        )

    def defaults(self) -> GenerationDefaults:
        return GenerationDefaults(
            resolution=self.resolution, max_sequence_length=self.max_sequence_length,
            num_inference_steps=self.num_inference_steps, guidance_scale=0.0,
        )


class Dataset(NamedTuple):
    """World images and prompt embeddings, indexed by scene and training template."""

    images_N3HW: Float[Tensor, "N 3 H W"]
    caption_index_NK: Tensor
    """Row of each (scene, template) caption in the embedding tables."""
    prompt_embeds_ULE: Float[Tensor, "U L E"]
    pooled_UE: Float[Tensor, "U E"]


class OrganismTrainResult(NamedTuple):
    vae_losses: list[float]
    flow_losses: list[float]
    decoder_losses: list[float]
    seconds: float
    out: Path


def lr_lambda(warmup: int, total: int, min_ratio: float = 0.1):
    """Linear warmup then cosine decay to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def build_dataset(pipe: FluxPipeline, cfg: OrganismTrainConfig) -> Dataset:
    """Render the scenes and encode every distinct (scene, template) caption once."""
    world = cfg.world()
    samples = list(tqdm(world.examples(cfg.num_scenes, seed=cfg.seed), total=cfg.num_scenes,
                        desc="render", leave=False))
    images = np.stack([s.image_HW3 for s in samples]).astype(np.float32) / 127.5 - 1.0
    images_N3HW = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    n_templates = len(world.templates["train"])
    rows: dict[str, int] = {}
    index_NK = torch.empty(cfg.num_scenes, n_templates, dtype=torch.long)
    for i, s in enumerate(samples):
        for k in range(n_templates):
            index_NK[i, k] = rows.setdefault(world.caption(s.scene, k), len(rows))
    texts = list(rows)
    embeds, pooled = [], []
    for start in range(0, len(texts), 512):
        pe, pp, _ = pipe.encode_prompt(texts[start:start + 512], prompt_2=None,
                                       max_sequence_length=cfg.max_sequence_length)
        embeds.append(pe)
        pooled.append(pp)
    logger.info("dataset: %d scenes, %d distinct captions", cfg.num_scenes, len(texts))
    return Dataset(images_N3HW, index_NK, torch.cat(embeds), torch.cat(pooled))


def optimise(params: list[torch.nn.Parameter], stage: Any, desc: str,
             batch_loss: Callable[[], tuple[Tensor, Tensor]], weight_decay: float = 0.0,
             min_ratio: float = 0.1, grad_clip: float | None = None,
             after_step: Callable[[int], None] | None = None) -> list[float]:
    """The loop every stage shares: AdamW, warmup + cosine, optional clipping, logging.

    ``batch_loss`` returns (loss to minimise, value to record) for a fresh batch.
    """
    opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(stage.warmup, stage.steps, min_ratio))
    losses: list[float] = []
    bar = tqdm(range(stage.steps), desc=desc)
    for step in bar:
        loss, recorded = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        losses.append(recorded.item())
        if step % 50 == 0 or step == stage.steps - 1:
            recent = float(np.mean(losses[-50:]))
            bar.set_postfix(loss=f"{recent:.4f}")
            logger.info("%s step %d loss %.5f", desc, step, recent)
        if after_step is not None:
            after_step(step)
    return losses


def train_vae(pipe: FluxPipeline, data: Dataset, cfg: OrganismTrainConfig, gen: torch.Generator) -> list[float]:
    """Stage 1: fit the AutoencoderKL to world images (records the MSE)."""
    vae, stage = pipe.vae, cfg.vae
    vae.train()

    def batch_loss() -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(data.images_N3HW), (stage.batch_size,), generator=gen)
        x_B3HW = data.images_N3HW[idx]
        posterior = vae.encode(x_B3HW).latent_dist
        recon_B3HW = vae.decode(posterior.sample(generator=gen)).sample
        mse = torch.nn.functional.mse_loss(recon_B3HW, x_B3HW)
        return mse + stage.kl_weight * posterior.kl().mean(), mse

    losses = optimise(list(vae.parameters()), stage, "vae", batch_loss)
    vae.eval()
    return losses


def refine_decoder(pipe: FluxPipeline, data: Dataset, cfg: OrganismTrainConfig,
                   gen: torch.Generator) -> list[float]:
    """Stage 3: fit the decoder to the (frozen) encoder's posterior means."""
    vae, stage = pipe.vae, cfg.decoder
    with torch.no_grad():
        means_NCHW = torch.cat([vae.encode(data.images_N3HW[i:i + 256]).latent_dist.mean
                                for i in range(0, len(data.images_N3HW), 256)])
    params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    vae.train()

    def batch_loss() -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(means_NCHW), (stage.batch_size,), generator=gen)
        mse = torch.nn.functional.mse_loss(vae.decode(means_NCHW[idx]).sample, data.images_N3HW[idx])
        return mse, mse

    losses = optimise(params, stage, "decoder", batch_loss)
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def standardised_latents(pipe: FluxPipeline, data: Dataset) -> Float[Tensor, "N T D"]:
    """Posterior means of every image, standardised and packed; registers the VAE's factors."""
    means = [pipe.vae.encode(data.images_N3HW[i:i + 256]).latent_dist.mean
             for i in range(0, len(data.images_N3HW), 256)]
    lat_NCHW = torch.cat(means)
    shift, scale = lat_NCHW.mean().item(), 1.0 / lat_NCHW.std().item()
    pipe.vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    logger.info("latent shift_factor %.4f scaling_factor %.4f", shift, scale)
    z_NCHW = (lat_NCHW - shift) * scale
    n, c, h, w = z_NCHW.shape
    return FluxPipeline._pack_latents(z_NCHW, n, c, h, w)


def sample_timesteps(batch: int, gen: torch.Generator) -> Float[Tensor, " B"]:
    """Half uniform on [0, 1], half logit-normal (sigmoid of a standard normal)."""
    half = batch // 2
    uniform = torch.rand(half, generator=gen)
    logit_normal = torch.sigmoid(torch.randn(batch - half, generator=gen))
    return torch.cat([uniform, logit_normal])


def flow_loss(pipe: FluxPipeline, x0_BTD: Tensor, embeds_BLE: Tensor, pooled_BE: Tensor,
              img_ids_T3: Tensor, gen: torch.Generator) -> Tensor:
    """Rectified-flow velocity regression loss on one batch."""
    b = x0_BTD.shape[0]
    noise_BTD = torch.randn(x0_BTD.shape, generator=gen)
    t_B = sample_timesteps(b, gen)
    xt_BTD = (1 - t_B[:, None, None]) * x0_BTD + t_B[:, None, None] * noise_BTD
    txt_ids_L3 = torch.zeros(embeds_BLE.shape[1], 3)
    pred_BTD = pipe.transformer(
        hidden_states=xt_BTD, encoder_hidden_states=embeds_BLE, pooled_projections=pooled_BE,
        timestep=t_B, img_ids=img_ids_T3, txt_ids=txt_ids_L3, return_dict=False,
    )[0]
    return torch.nn.functional.mse_loss(pred_BTD, noise_BTD - x0_BTD)


def train_flow(pipe: FluxPipeline, data: Dataset, x0_NTD: Tensor, cfg: OrganismTrainConfig,
               gen: torch.Generator) -> list[float]:
    """Stage 2: train the transformer; checkpoints the pipeline every ``checkpoint_every``."""
    stage, model = cfg.flow, pipe.transformer
    model.train()
    side = cfg.resolution // (2 ** len(cfg.model.vae_channels))
    img_ids_T3 = FluxPipeline._prepare_latent_image_ids(1, side, side, "cpu", torch.float32)
    n, k = data.caption_index_NK.shape

    def batch_loss() -> tuple[Tensor, Tensor]:
        idx = torch.randint(n, (stage.batch_size,), generator=gen)
        rows = data.caption_index_NK[idx, torch.randint(k, (stage.batch_size,), generator=gen)]
        loss = flow_loss(pipe, x0_NTD[idx], data.prompt_embeds_ULE[rows], data.pooled_UE[rows],
                         img_ids_T3, gen)
        return loss, loss

    def checkpoint(step: int) -> None:
        if stage.checkpoint_every and (step + 1) % stage.checkpoint_every == 0:
            save(pipe, cfg)

    losses = optimise(list(model.parameters()), stage, "flow", batch_loss,
                      weight_decay=stage.weight_decay, min_ratio=stage.min_lr_ratio,
                      grad_clip=stage.grad_clip, after_step=checkpoint)
    model.eval()
    return losses


def save(pipe: FluxPipeline, cfg: OrganismTrainConfig) -> Path:
    """Write the pipeline (fp16 copy, training weights untouched), config and manifest."""
    save_pipeline(pipe, cfg.out, cfg.defaults(), fp16=cfg.fp16)
    (cfg.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    write_manifest(cfg.out)
    logger.info("saved organism to %s", cfg.out)
    return cfg.out


def initial_pipeline(cfg: OrganismTrainConfig) -> FluxPipeline:
    """A fresh random pipeline, or (``init_from``) a saved organism to keep training."""
    if not cfg.init_from:
        return build_pipeline(cfg.tiny(), seed=cfg.seed)
    source = check_weights(Path(cfg.init_from))
    pipe = FluxPipeline.from_pretrained(source, torch_dtype=torch.float32)
    if pipe.transformer.config.num_layers != cfg.model.num_layers:
        raise ValueError(f"init_from {source} has {pipe.transformer.config.num_layers} double "
                         f"blocks but the config asks for {cfg.model.num_layers}")
    pipe.set_progress_bar_config(disable=True)
    logger.info("continuing from %s", source)
    return pipe


def train(cfg: OrganismTrainConfig) -> OrganismTrainResult:
    """Train the organism from scratch and save it to ``cfg.out``.

    Example:
        >>> from sae_flux.organism.train import OrganismTrainConfig, VAEStage, FlowStage, train
        >>> cfg = OrganismTrainConfig(out="/tmp/org", num_scenes=64, vae=VAEStage(steps=2),
        ...                   flow=FlowStage(steps=2))  # doctest: +SKIP
        >>> train(cfg).flow_losses  # doctest: +SKIP
    """
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    pipe = initial_pipeline(cfg)
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        encoder.requires_grad_(False).eval()
    data = build_dataset(pipe, cfg)
    vae_losses = train_vae(pipe, data, cfg, gen)
    pipe.vae.requires_grad_(False)
    x0_NTD = standardised_latents(pipe, data)
    flow_losses = train_flow(pipe, data, x0_NTD, cfg, gen)
    decoder_losses = refine_decoder(pipe, data, cfg, gen)
    save(pipe, cfg)
    seconds = time.perf_counter() - start
    logger.info("trained in %.1f min", seconds / 60)
    return OrganismTrainResult(vae_losses, flow_losses, decoder_losses, seconds, cfg.out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_dataclass_arguments(parser, OrganismTrainConfig)  # --vae.steps, --flow.batch-size, ...
    cfg = dataclass_from_args(OrganismTrainConfig, parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    result = train(cfg)
    logger.info("final vae mse %.5f, flow loss %.5f (mean of last 100 steps)",
                float(np.mean(result.vae_losses[-100:] or [float("nan")])),
                float(np.mean(result.flow_losses[-100:] or [float("nan")])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
