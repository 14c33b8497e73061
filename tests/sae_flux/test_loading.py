"""Loading Flux: placement through diffusers' mechanisms, in-memory pipelines, variant from config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from sae_flux import placement as placement_mod
from sae_flux.flux import REAL_DEFAULTS, Flux
from sae_flux.placement import Placement
from sae_flux.tiny import GenerationDefaults, TinyFluxConfig, build_pipeline, save_pipeline

DTYPE_KEY = placement_mod._dtype_keyword()
"""``dtype`` on the diffusers this runs with, ``torch_dtype`` on the declared floor (0.35)."""

PROMPTS = ["a red circle", "a blue square on the left"]
HOOKS = ["double.1.img", "double.0.mlp", "single.1.txt", "single.0.img.delta"]


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory) -> tuple[Any, Path]:
    pipe = build_pipeline(TinyFluxConfig(), seed=3)
    directory = tmp_path_factory.mktemp("tiny-pipe")
    save_pipeline(pipe, directory, TinyFluxConfig().defaults)
    return pipe, directory


def test_from_pipeline_equals_from_pretrained_on_its_saved_copy_bit_for_bit(saved_tiny):
    pipe, directory = saved_tiny
    in_memory = Flux.from_pipeline(pipe, defaults=TinyFluxConfig().defaults)
    loaded = Flux.from_pretrained(directory)
    assert in_memory.pipeline is pipe  # wrapped, not copied
    kwargs = dict(hooks=HOOKS, num_inference_steps=2, seed=5)
    a, b = in_memory.capture(PROMPTS, **kwargs), loaded.capture(PROMPTS, **kwargs)
    for hook in HOOKS:
        assert torch.equal(a[hook], b[hook]), hook
    assert torch.equal(in_memory.generate(PROMPTS, seed=1), loaded.generate(PROMPTS, seed=1))


def test_from_pipeline_is_traceable_by_user_scripts(saved_tiny):
    from sae_flux import hooks

    flux = Flux.from_pipeline(saved_tiny[0], defaults=TinyFluxConfig().defaults)
    with flux.model.generate(PROMPTS[:1], **flux.generation_kwargs(num_inference_steps=1)):
        stream = hooks.read(flux.model, "double.1.img").save()
    assert stream.shape == (1, 64, 32)


def test_from_pipeline_refuses_what_is_not_a_flux_pipeline():
    with pytest.raises(TypeError, match="needs a diffusers FluxPipeline, got dict"):
        Flux.from_pipeline({})  # type: ignore[arg-type]


def _with_guidance(directory: Path, target: Path) -> Path:
    """A copy of a saved pipeline whose transformer config has a guidance embedding (FLUX.1-dev)."""
    import shutil

    shutil.copytree(directory, target)
    (target / "sae_flux.json").unlink()  # no project defaults: the variant decides
    config_path = target / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["guidance_embeds"] = True
    config_path.write_text(json.dumps(config))
    return target


def test_variant_comes_from_the_transformer_config_never_from_the_path(saved_tiny, tmp_path):
    import shutil

    _, directory = saved_tiny
    schnell_in_dev_path = tmp_path / "dev" / "my-dev-copy"
    shutil.copytree(directory, schnell_in_dev_path)
    (schnell_in_dev_path / "sae_flux.json").unlink()
    flux = Flux.from_pretrained(schnell_in_dev_path)
    assert flux.defaults == REAL_DEFAULTS["schnell"]
    assert flux.generation_kwargs()["num_inference_steps"] == 1

    dev = Flux.from_pretrained(_with_guidance(directory, tmp_path / "plain-name"))
    assert dev.defaults == REAL_DEFAULTS["dev"]
    assert dev.generation_kwargs()["guidance_scale"] == 3.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "cuda"}, "device 'cuda' is not available: torch sees no CUDA device"),
        ({"device": "gpu0"}, "device 'gpu0' is not a torch device"),
        ({"dtype": "int8"}, "dtype 'int8' is not one of"),
        ({"dtype": torch.float64}, "dtype torch.float64 is not one of"),
        ({"offload": "model"}, "offload='model' moves weights to an accelerator"),
        ({"offload": "disk"}, "offload 'disk' is not one of"),
        ({"device_map": "auto"}, "device_map 'auto' is not one of"),
    ],
)
def test_bad_device_dtype_or_offload_is_one_clear_line(saved_tiny, kwargs, message):
    if torch.cuda.is_available() and kwargs.get("device") == "cuda":
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=message) as info:
        Flux.from_pretrained(saved_tiny[1], **kwargs)
    assert "\n" not in str(info.value)


def test_cpu_device_map_and_dtype_load_through_diffusers(saved_tiny):
    flux = Flux.from_pretrained(saved_tiny[1], dtype="bfloat16", device_map="cpu")
    assert flux.pipeline.transformer.dtype == torch.bfloat16
    acts = flux.capture(PROMPTS[:1], hooks=["double.1.img"], num_inference_steps=1)
    assert acts["double.1.img"].shape == (1, 1, 64, 32)


class _Recorder:
    """Stands in for nnsight's DiffusionModel: records how the pipeline would be loaded."""

    calls: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, repo: str, **kwargs: Any) -> None:
        _Recorder.calls.append((repo, kwargs))
        pipe = build_pipeline(TinyFluxConfig(), seed=0)
        moved: list[Any] = []
        self.offloads = moved
        pipe.to = lambda *a, **k: moved.append(("to", a, k))  # type: ignore[method-assign]
        pipe.enable_model_cpu_offload = lambda **k: moved.append(("model", k))  # type: ignore[method-assign]
        pipe.enable_sequential_cpu_offload = lambda **k: moved.append(("sequential", k))  # type: ignore[method-assign]
        self.pipeline = pipe


@pytest.fixture
def fake_cuda(monkeypatch):
    """A machine with one CUDA device, as far as the placement checks can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr("sae_flux.flux.DiffusionModel", _Recorder)
    _Recorder.calls = []


def test_a_gpu_device_loads_straight_to_it_never_whole_on_the_host(fake_cuda, saved_tiny):
    flux = Flux.from_pretrained(saved_tiny[1], dtype=torch.bfloat16, device="cuda")
    (repo, kwargs), = _Recorder.calls
    assert kwargs["device_map"] == "cuda" and kwargs[DTYPE_KEY] == torch.bfloat16
    assert kwargs["dispatch"] is True
    assert flux.model.offloads == []  # no pipeline.to(device) after a host load


@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_uses_diffusers_own_hooks(fake_cuda, saved_tiny, mode):
    flux = Flux.from_pretrained(saved_tiny[1], dtype=torch.bfloat16, device="cuda", offload=mode)
    (_, kwargs), = _Recorder.calls
    assert "device_map" not in kwargs  # the host holds the weights; the hooks move them
    assert flux.model.offloads == [(mode, {"device": torch.device("cuda")})]


def test_placement_requests_map_to_diffusers_arguments(fake_cuda):
    assert Placement.resolve("cuda", "float16").load_kwargs() == {DTYPE_KEY: torch.float16, "device_map": "cuda"}
    assert Placement.resolve("cuda", device_map="balanced").load_kwargs()["device_map"] == "balanced"
    assert Placement.resolve("cpu").load_kwargs() == {DTYPE_KEY: torch.float32}
    assert Placement.resolve("cuda", offload="model").load_kwargs() == {DTYPE_KEY: torch.float32}
    with pytest.raises(ValueError, match="not both"):
        Placement.resolve("cuda", device_map="cuda", offload="model")
    with pytest.raises(ValueError, match="this machine has 1 CUDA device"):
        Placement.resolve("cuda:3")


def test_bfloat16_on_a_gpu_without_it_is_refused(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")
    with pytest.raises(ValueError, match="bfloat16 is not supported by Tesla V100: use float16"):
        placement_mod.Placement.resolve("cuda", "bfloat16")


def test_tiny_needs_no_save(monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Flux.tiny saved its pipeline")

    monkeypatch.setattr("diffusers.FluxPipeline.save_pretrained", refuse)
    flux = Flux.tiny(seed=0)
    assert isinstance(flux.defaults, GenerationDefaults) and flux.resolution == 32
    assert flux.pipeline.generation_defaults == TinyFluxConfig().defaults


def test_real_width_config_is_flux1_schnell_at_full_depth():
    from sae_flux.tiny import _transformer, real_width_config

    with torch.device("meta"):  # shapes only: no 48 GB of float32 weights
        transformer = _transformer(real_width_config(num_layers=19, num_single_layers=38))
    assert sum(p.numel() for p in transformer.parameters()) == 11_891_178_560
    config = transformer.config
    assert (config.num_attention_heads * config.attention_head_dim, config.joint_attention_dim) == (3072, 4096)
    assert config.guidance_embeds is False and tuple(config.axes_dims_rope) == (16, 56, 56)
