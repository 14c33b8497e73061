"""SAE training: sae_lens's SAETrainer on tiny-Flux activations, plain-SAELens output, resume, refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from reliability.crashing_source import Crash, CrashingSource
from sae_lens import SAE, TrainingSAE
from sae_lens.training.activation_scaler import ActivationScaler

from sae_flux.cache import CacheConfig, CacheReader, write_cache
from sae_flux.cli import main as cli_main
from sae_flux.metrics import evaluate
from sae_flux.sources import FluxStream, TensorSource
from sae_flux.threads import torch_threads
from sae_flux.train import (
    DataConfig,
    DictionaryConfig,
    OptimConfig,
    TrainConfig,
    checkpoints,
    train_sae,
)

HOOK = "double.1.img"
WORDS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")
PLACES = ("left", "right", "top", "bottom")
PROMPTS = [f"a {c} {s} on the {p}" for c in WORDS for s in SHAPES for p in PLACES]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny SAEs train faster on one thread than on two contended ones; restored afterwards."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def cache_dir(tiny_flux, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:24]) + "\n")
    out = root / "cache"
    write_cache(CacheConfig(model="tiny", prompts=str(prompts), hooks=[HOOK], out=str(out),
                            num_inference_steps=2, batch_size=8, shard_prompts=8), flux=tiny_flux)
    return out  # 24 prompts x 2 steps x 64 tokens = 3072 tokens of width 32


@pytest.fixture(scope="module")
def acts(cache_dir) -> torch.Tensor:
    return torch.cat([a for a, _ in CacheReader(cache_dir).iter_shards()])


def _cfg(out: Path, cache: Path, steps: int = 300, **kw) -> TrainConfig:
    sae = kw.pop("sae", DictionaryConfig(expansion_factor=4, k=8, normalize_tokens=1024))
    optim = kw.pop("optim", OptimConfig(total_tokens=steps * 128, batch_size=128, lr=1e-3))
    return TrainConfig(out=str(out), data=DataConfig(cache=str(cache), buffer_tokens=1024),
                       sae=sae, optim=optim, eval_tokens=2048, **kw)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_topk_sae_trains_on_the_cache_and_its_fvu_falls(cache_dir, tmp_path):
    result = train_sae(_cfg(tmp_path / "sae", cache_dir, log_every=10))
    log = _log(tmp_path / "sae")
    assert [r["step"] for r in log] == list(range(10, 301, 10))
    assert log[-1]["fvu"] < 0.6 * log[0]["fvu"]
    assert all(r["l0"] == 8 for r in log)
    assert result.steps == 300 and result.metrics.l0 == 8
    assert result.metrics.fvu < 0.5
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["d_in"] == 32 and cfg["d_sae"] == 128
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["normalize_activations"] == "none"


@pytest.mark.parametrize("normalize", ["none", "standardize", "whiten"])
def test_saved_sae_reconstructs_raw_activations_as_during_training(cache_dir, acts, tmp_path, normalize):
    out = tmp_path / "sae"
    sae_cfg = DictionaryConfig(expansion_factor=4, k=8, normalize=normalize, normalize_tokens=1024)
    train_sae(_cfg(out, cache_dir, steps=60, sae=sae_cfg))
    # training-time behaviour: the unfolded training SAE inside sae_lens's own activation scaler
    checkpoint = checkpoints(out)[-1]
    training_sae = TrainingSAE.load_from_disk(checkpoint)
    scaler = ActivationScaler()
    scaler.load(checkpoint / "activation_scaler.json")
    assert (scaler.whitening is None) == (normalize == "none")
    with torch.no_grad():
        expected = scaler.unscale(training_sae(scaler.scale(acts)))
        got = SAE.load_from_disk(out).forward(acts)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_saved_directory_reproduces_the_project_metrics(cache_dir, tmp_path):
    out = tmp_path / "sae"
    cfg = _cfg(out, cache_dir, steps=50)
    result = train_sae(cfg)
    saved = json.loads((out / "metrics.json").read_text())
    batches = CacheReader(cache_dir).batches(128, seed=cfg.optim.seed, buffer_tokens=1024, epochs=None)
    again = evaluate(SAE.load_from_disk(out), batches, max_tokens=cfg.eval_tokens)
    assert saved["tokens"] == again.tokens == 2048
    for key in ("fvu", "explained_variance", "l0", "dead_fraction"):
        assert saved[key] == pytest.approx(getattr(again, key), abs=1e-5), key
    log_density = torch.log10(again.density_F + 1e-10)
    from safetensors.torch import load_file

    torch.testing.assert_close(load_file(out / "sparsity.safetensors")["sparsity"], log_density)
    assert result.metrics.dead_fraction == saved["dead_fraction"]


def test_training_stops_at_max_epochs_passes_over_the_cache_and_records_it(cache_dir, tmp_path, caplog):
    optim = OptimConfig(total_tokens=1000 * 128, batch_size=128, lr=1e-3, max_epochs=2)
    with caplog.at_level("WARNING"):
        result = train_sae(_cfg(tmp_path / "sae", cache_dir, optim=optim))
    assert result.steps == 2 * 3072 // 128 == 48
    assert (f"total_tokens 128,000 would be 42 passes over activation cache {cache_dir} (3072 tokens); training "
            "stops at max_epochs=2 passes: 6,144 tokens (48 steps of 128)") in caplog.text
    recorded = TrainConfig.load(tmp_path / "sae" / "train_config.json")
    assert recorded.optim.total_tokens == 6144 and recorded.optim.max_epochs == 2


def test_the_dead_latent_window_scales_with_the_run_and_a_longer_one_is_refused(cache_dir, tmp_path):
    from sae_flux.train import trainer_config

    assert _cfg(tmp_path, cache_dir, steps=300).dead_window_steps() == 15  # a twentieth of the run
    assert _cfg(tmp_path, cache_dir, steps=40).dead_window_steps() == 10  # at least 10 steps
    assert _cfg(tmp_path, cache_dir, steps=5).dead_window_steps() == 5  # never longer than the run
    assert _cfg(tmp_path, cache_dir, steps=100_000).dead_window_steps() == 1000  # sae_lens's own window
    assert trainer_config(_cfg(tmp_path, cache_dir, steps=300)).dead_feature_window == 15
    with pytest.raises(ValueError, match=r"dead_window 1000 is longer than the run \(300 steps\).*at most 300"):
        _cfg(tmp_path, cache_dir, steps=300, dead_window=1000)
    capped = _cfg(tmp_path / "sae", cache_dir, dead_window=200,
                  optim=OptimConfig(total_tokens=1000 * 128, batch_size=128, max_epochs=2))
    with pytest.raises(ValueError, match=r"dead_window 200 is longer than the run \(48 steps\)"):
        train_sae(capped)  # checked again once the run is cut to max_epochs


#: Resume replays the data order and restores Adam, scheduler and dead-latent state exactly;
#: on CPU the resumed weights equal the uninterrupted ones to this tolerance.
RESUME_ATOL = 1e-6


def test_resume_continues_to_the_uninterrupted_result(acts, tmp_path):
    def cfg(out):
        return TrainConfig(out=str(out), sae=DictionaryConfig(expansion_factor=4, k=8, normalize_tokens=512),
                           optim=OptimConfig(total_tokens=200 * 64, batch_size=64, lr=1e-3),
                           checkpoint_every=50, eval_tokens=512)

    reference = train_sae(cfg(tmp_path / "ref"), source=TensorSource(acts))
    with pytest.raises(Crash):
        train_sae(cfg(tmp_path / "run"), source=CrashingSource(acts, after=120))
    assert [p.name for p in checkpoints(tmp_path / "run")] == ["step-00000050", "step-00000100"]
    resumed = train_sae(cfg(tmp_path / "run"), resume=True, source=TensorSource(acts))
    for name, value in reference.sae.state_dict().items():
        torch.testing.assert_close(resumed.sae.state_dict()[name], value, atol=RESUME_ATOL, rtol=0)
    assert _log(tmp_path / "run") == _log(tmp_path / "ref")


def test_resume_refuses_a_checkpoint_from_a_different_config_and_says_what_differs(cache_dir, tmp_path):
    train_sae(_cfg(tmp_path / "sae", cache_dir, steps=20))
    changed = _cfg(tmp_path / "sae", cache_dir, steps=20,
                   optim=OptimConfig(total_tokens=20 * 128, batch_size=128, lr=5e-3))
    with pytest.raises(ValueError, match=r"cannot resume training run .*settings differ \(optim\.lr: saved 0\.001, now 0\.005\)"):
        train_sae(changed, resume=True)


def test_training_into_a_used_directory_without_resume_is_refused(cache_dir, tmp_path):
    train_sae(_cfg(tmp_path / "sae", cache_dir, steps=20))
    with pytest.raises(FileExistsError, match="not empty.*pass --resume"):
        train_sae(_cfg(tmp_path / "sae", cache_dir, steps=20))



def test_a_run_killed_before_its_first_checkpoint_starts_again_with_or_without_resume(cache_dir, tmp_path):
    reference = train_sae(_cfg(tmp_path / "ref", cache_dir, steps=20))
    for resume in (True, False):
        out = tmp_path / f"killed-{resume}"
        (out / "checkpoints" / ".tmp-step-00000010").mkdir(parents=True)  # what a kill leaves behind
        (out / "log.jsonl").write_text('{"step": 5, "loss": 1.0}\n{"step": 10, "lo')
        again = train_sae(_cfg(out, cache_dir, steps=20), resume=resume)
        assert torch.equal(again.sae.W_dec, reference.sae.W_dec)
        assert (out / "log.jsonl").read_bytes() == (tmp_path / "ref" / "log.jsonl").read_bytes()
    assert train_sae(_cfg(tmp_path / "never-made", cache_dir, steps=20), resume=True).steps == 20


def test_a_corrupt_log_line_is_named_with_its_file_and_line(cache_dir, tmp_path):
    train_sae(_cfg(tmp_path / "sae", cache_dir, steps=20))
    log = tmp_path / "sae" / "log.jsonl"
    log.write_text("{oops\n" + log.read_text())
    with pytest.raises(ValueError, match=r"log\.jsonl line 1 is not valid JSON"):
        train_sae(_cfg(tmp_path / "sae", cache_dir, steps=20), resume=True)


class _NaNSource(TensorSource):
    def __init__(self, acts_ND: torch.Tensor, at: int) -> None:
        super().__init__(acts_ND)
        self.at = at

    def batches(self, batch_size, seed=0, buffer_tokens=0, epochs=1) -> Iterator[torch.Tensor]:
        for i, batch in enumerate(super().batches(batch_size, seed, buffer_tokens, epochs)):
            yield torch.full_like(batch, float("nan")) if i == self.at else batch


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(acts, tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "sae"), sae=DictionaryConfig(expansion_factor=4, k=8, normalize_tokens=512),
                      optim=OptimConfig(total_tokens=100 * 64, batch_size=64), checkpoint_every=20)
    with pytest.raises(FloatingPointError, match=r"at step 47; .*last good checkpoint is .*step-00000040"):
        train_sae(cfg, source=_NaNSource(acts, at=47))
    kept = checkpoints(tmp_path / "sae")[-1]
    assert kept.name == "step-00000040"
    weights = TrainingSAE.load_from_disk(kept).W_dec
    assert torch.isfinite(weights).all()
    assert not (tmp_path / "sae" / "cfg.json").exists()


def test_a_cache_whose_width_disagrees_with_the_config_is_refused(cache_dir, tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "sae"), data=DataConfig(cache=str(cache_dir), d_in=3072))
    with pytest.raises(ValueError, match=r"has d_model 32 but the config says d_in=3072"):
        train_sae(cfg)
    assert not (tmp_path / "sae").exists()


def test_an_unknown_architecture_lists_the_training_registry():
    with pytest.raises(ValueError, match=r"unknown SAE architecture 'topkk'.*batchtopk.*jumprelu.*standard.*topk"):
        DictionaryConfig(architecture="topkk")


def test_bad_architecture_options_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"'jumprelu' has no option 'kk'; valid options: .*l0_coefficient"):
        DictionaryConfig(architecture="jumprelu", options=["kk=3"])
    with pytest.raises(ValueError, match="has no k"):
        DictionaryConfig(architecture="standard", k=8)
    with pytest.raises(ValueError, match="not of the form name=value"):
        DictionaryConfig(options=["aux_loss_coefficient"])


def test_architectures_that_cannot_fold_normalisation_are_refused_before_training(acts, tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "mp"), sae=DictionaryConfig(architecture="matching_pursuit", normalize="whiten"))
    with pytest.raises(ValueError, match="cannot fold --normalize whiten.*--normalize none"):
        train_sae(cfg, source=TensorSource(acts))
    assert not (tmp_path / "mp").exists()


@pytest.mark.parametrize(
    ("architecture", "options"),
    [("batchtopk", []), ("jumprelu", []), ("standard", []), ("matryoshka_batchtopk", ["matryoshka_widths=[32,128]"])],
)
def test_any_registered_architecture_trains_and_loads_in_plain_sae_lens(acts, tmp_path, architecture, options):
    out = tmp_path / architecture
    sae_cfg = DictionaryConfig(architecture=architecture, expansion_factor=4, options=options, normalize_tokens=512)
    result = train_sae(TrainConfig(out=str(out), sae=sae_cfg, eval_tokens=1024,
                                   optim=OptimConfig(total_tokens=40 * 64, batch_size=64, lr=1e-3)),
                       source=TensorSource(acts))
    loaded = SAE.load_from_disk(out)
    again = evaluate(loaded, TensorSource(acts).batches(64, seed=0, epochs=None), max_tokens=1024)
    assert again.fvu == pytest.approx(result.metrics.fvu, abs=1e-5)
    assert json.loads((out / "train_config.json").read_text())["sae"]["architecture"] == architecture


def test_streaming_from_a_flux_trains_without_a_cache(tiny_flux, tmp_path):
    stream = FluxStream(tiny_flux, PROMPTS[:8], HOOK, num_inference_steps=1, prompts_per_call=4)
    cfg = TrainConfig(out=str(tmp_path / "sae"), data=DataConfig(hook=HOOK, buffer_tokens=256),
                      sae=DictionaryConfig(expansion_factor=2, k=4, normalize_tokens=256),
                      optim=OptimConfig(total_tokens=20 * 64, batch_size=64, lr=1e-3), eval_tokens=256)
    result = train_sae(cfg, source=stream)
    assert result.steps == 20 and 0 < result.metrics.fvu < 2
    assert SAE.load_from_disk(tmp_path / "sae").cfg.d_in == 32


def test_cli_trains_then_evaluates_from_the_cache(cache_dir, tmp_path, capsys):
    out = tmp_path / "sae"
    code = cli_main(["train", "--cache", str(cache_dir), "--out", str(out), "--expansion-factor", "2",
                     "--k", "4", "--total-tokens", str(30 * 128), "--batch-size", "128",
                     "--normalize", "standardize", "--normalize-tokens", "512", "--eval-tokens", "1024"])
    assert code == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["sae"]["normalize"] == "standardize" and saved["optim"]["batch_size"] == 128
    assert TrainConfig.load(out / "train_config.json").to_dict() == saved
    capsys.readouterr()
    assert cli_main(["eval", str(out), "--cache", str(cache_dir), "--tokens", "3072"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == 3072 and report["l0"] == pytest.approx(4)
    assert cli_main(["train", "--cache", str(cache_dir), "--out", str(tmp_path / "x"), "--architecture", "nope"]) == 2


def test_cli_streams_from_a_model_when_no_cache_is_given(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:6]) + "\n")
    out = tmp_path / "sae"
    code = cli_main(["train", "--model", "tiny", "--prompts", str(prompts), "--hook", HOOK,
                     "--num-inference-steps", "1", "--out", str(out), "--expansion-factor", "2", "--k", "4",
                     "--total-tokens", str(10 * 64), "--batch-size", "64", "--buffer-tokens", "128",
                     "--normalize-tokens", "128", "--eval-tokens", "256"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["hook"] == HOOK and metrics["data"].startswith("streamed from")
    assert SAE.load_from_disk(out).cfg.metadata.model_name.startswith("tiny(seed=0")
    assert cli_main(["train", "--out", str(tmp_path / "none")]) == 2  # no data: clear error, exit code 2


def test_the_dead_window_holds_ten_times_d_sae_over_k_tokens(cache_dir, tmp_path, caplog):
    from sae_flux.train_config import dead_window_tokens

    assert dead_window_tokens(1024, 8) == 1280 and dead_window_tokens(1024, None) == 0
    cfg = _cfg(tmp_path, cache_dir, steps=300)  # batches of 128 tokens
    assert cfg.dead_window_steps(min_tokens=160) == 15  # a twentieth of the run already holds 1,920 tokens
    assert cfg.dead_window_steps(min_tokens=50 * 128) == 50  # lengthened to hold the tokens
    with caplog.at_level("WARNING"):
        assert _cfg(tmp_path, cache_dir, steps=40).dead_window_steps(min_tokens=100 * 128) == 40
        assert _cfg(tmp_path, cache_dir, steps=300, dead_window=10).dead_window_steps(min_tokens=50 * 128) == 10
    assert "shorter than the 12,800 tokens" in caplog.text and "fewer than 10 x d_sae / k = 6,400" in caplog.text


def _batchtopk_forward(sae, acts_ND, k):
    """BatchTopK as it trains: the k x N largest positive pre-activations of the whole batch, on saved weights."""
    hidden_NF = (acts_ND - sae.b_dec) @ sae.W_enc + sae.b_enc
    flat = hidden_NF.relu().flatten()
    kept = torch.zeros_like(flat).scatter(0, flat.topk(k * len(acts_ND)).indices, flat.topk(k * len(acts_ND)).values)
    return kept.reshape(hidden_NF.shape) @ sae.W_dec + sae.b_dec


@pytest.mark.parametrize("normalize", ["none", "whiten"])
def test_batchtopk_saved_as_jumprelu_keeps_its_l0_and_fvu(acts, tmp_path, normalize):
    train, held = acts[:2048], acts[2048:]
    out = tmp_path / "btk"
    sae_cfg = DictionaryConfig(architecture="batchtopk", expansion_factor=4, k=8, normalize=normalize,
                               normalize_tokens=1024)
    train_sae(TrainConfig(out=str(out), sae=sae_cfg, eval_tokens=64,
                                   optim=OptimConfig(total_tokens=60 * 64, batch_size=64, lr=1e-3)),
                       source=TensorSource(train))
    saved = SAE.load_from_disk(out)
    assert saved.cfg.architecture() == "jumprelu"
    record = json.loads((out / "metrics.json").read_text())
    assert record["dead_window_tokens"] >= 10 * 128 / 8  # the metrics window was lengthened from 64 tokens
    # the short run's moving average lags the cut BatchTopK applies; the saved threshold is that cut
    assert record["batchtopk_threshold"]["moving_average"] < record["batchtopk_threshold"]["calibrated"]
    with torch.no_grad():
        assert evaluate(saved, [train]).l0 == pytest.approx(8.0, rel=0.01)  # the calibration window: all the data
    for window in (train[:1024], held):
        with torch.no_grad():
            after = evaluate(saved, [window])
            before_ND = _batchtopk_forward(saved, window, 8)
        fvu_before = ((before_ND - window).pow(2).sum() / (window - window.mean(0)).pow(2).sum()).item()
        assert after.l0 == pytest.approx(8.0, rel=0.15)
        assert after.fvu == pytest.approx(fvu_before, abs=0.03)
