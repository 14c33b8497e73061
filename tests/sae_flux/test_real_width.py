"""FLUX.1's exact widths (2 double + 2 single blocks, bfloat16) through every stage at 64 x 64 px.

Hidden 3,072 = 24 heads x 128, T5 width 4,096, CLIP width 768, 16 latent channels, a VAE that
downsamples 8 x (:func:`sae_flux.tiny.real_width_config`): a 1.02B-parameter transformer with
random weights. Nothing in capture, editing, caching, training or steering may assume small
sizes. Slow on CPU (a few minutes on a shared 2-core machine: building and running 1B bfloat16
parameters), so it runs in the slow tier, and .ci/run runs it by name; docs/scale.md records its
peak RSS and time with the command.
"""

from __future__ import annotations

import json
import logging
import resource

import pytest
import torch
from sae_lens import SAE

from sae_flux import hooks
from sae_flux.cache import CacheConfig, CacheReader, write_cache
from sae_flux.flux import Flux
from sae_flux.sampling import positions
from sae_flux.steer import add_feature, steering
from sae_flux.tiny import TinyFluxPipeline, build_pipeline, real_width_config
from sae_flux.train import TrainConfig, train_sae
from sae_flux.train_config import DataConfig, DictionaryConfig, OptimConfig

pytestmark = pytest.mark.slow
logger = logging.getLogger(__name__)

PROMPTS = ["a red circle", "a cat on the left"]


@pytest.fixture(scope="module")
def real_flux() -> Flux:
    cfg = real_width_config(num_layers=2, num_single_layers=2, resolution=64)
    pipe = TinyFluxPipeline(**build_pipeline(cfg, seed=0, dtype=torch.bfloat16).components)
    pipe.generation_defaults = cfg.defaults
    return Flux.from_pipeline(pipe, model_id="flux1-widths(double=2, single=2)")


def test_flux1_widths_capture_edit_cache_train_and_steer_at_64_px(real_flux, tmp_path, record_property):
    flux = real_flux
    config = flux.pipeline.transformer.config
    assert (flux.d_model, config.num_attention_heads, config.attention_head_dim) == (3072, 24, 128)
    assert (config.joint_attention_dim, config.pooled_projection_dim, config.in_channels) == (4096, 768, 64)
    assert sum(p.numel() for p in flux.pipeline.transformer.parameters()) == 1_016_741_440
    assert flux.pipeline.transformer.dtype == torch.bfloat16 and flux.grid() == (4, 4)

    # capture: every hook kind (img, txt, mlp, .delta) of every block, one step
    names = flux.hook_points(delta=True)
    acts = flux.capture(PROMPTS[:1], hooks=names, num_inference_steps=1)
    assert len(acts) == 18
    assert acts["double.1.img"].shape == (1, 1, 16, 3072) and acts["double.0.mlp"].shape == (1, 1, 16, 12288)
    assert acts["single.1.txt"].shape == (1, 1, 16, 3072)
    # a block's update is its output minus its input (the previous block's output), in bfloat16
    expected = (acts["double.1.img"].bfloat16() - acts["double.0.img"].bfloat16()).float()
    assert torch.allclose(acts["double.1.img.delta"], expected, atol=0.0625, rtol=0.02)
    assert all(torch.isfinite(value).all() for value in acts.values())

    # an nnsight edit: zeroing double.1.img changes what the single blocks see
    kwargs = flux.generation_kwargs(num_inference_steps=1)
    with flux.model.generate(PROMPTS[:1], output_type="latent", **kwargs):
        hooks.write(flux.model, "double.1.img", hooks.read(flux.model, "double.1.img") * 0)
        edited = hooks.read(flux.model, "single.0.img").save()
    assert edited.shape == (1, 16, 3072)
    assert not torch.allclose(edited.float(), acts["single.0.img"][0, 0], atol=1e-2)

    # a token-sampled bfloat16 cache of 2 prompts, read back with provenance
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cache = tmp_path / "cache"
    write_cache(CacheConfig(model="real-width", prompts=str(prompts), hooks=["double.1.img", "single.1.txt"],
                            out=str(cache), num_inference_steps=1, dtype="bfloat16", batch_size=1,
                            shard_prompts=1, tokens_per_image=8), flux=flux)
    reader = CacheReader(cache, hook="double.1.img")
    assert reader.d_model == 3072 and reader.num_tokens == 2 * 8
    (first, prov), _ = list(reader.iter_shards())
    kept = positions(16, 8, seed=0, prompt=0, step=0)
    assert first.dtype == torch.bfloat16 and torch.equal((prov["h"] * 4 + prov["w"]).long(), kept)
    assert torch.equal(first, acts["double.1.img"][0, 0, kept].bfloat16())
    assert CacheReader(cache, hook="single.1.txt").num_tokens == 2 * 16

    # one SAE training step through the same reader, saved as a plain SAELens SAE
    out = tmp_path / "sae"
    result = train_sae(TrainConfig(out=str(out), data=DataConfig(cache=str(cache), hook="double.1.img", buffer_tokens=16),
                                   sae=DictionaryConfig(expansion_factor=1, k=8, normalize="none"),
                                   optim=OptimConfig(total_tokens=16, batch_size=16, lr=1e-4), eval_tokens=16))
    assert result.steps == 1
    assert json.loads((out / "cfg.json").read_text())["d_in"] == 3072
    sae = SAE.load_from_disk(str(out))

    # steering with a feature of that SAE changes the image
    plain = flux.generate(PROMPTS[:1], num_inference_steps=1)
    with steering(flux, "double.1.img", [add_feature(sae, 0, scale=4.0, relative=True, steps=[0])]):
        steered = flux.generate(PROMPTS[:1], num_inference_steps=1)
    assert steered.shape == plain.shape == (1, 3, 64, 64)
    assert (steered - plain).abs().max() > 1e-3

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    record_property("peak_rss_mb", round(peak_mb))
    logger.warning("real-width run: peak RSS %.0f MB", peak_mb)
