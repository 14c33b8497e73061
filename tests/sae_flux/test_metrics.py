"""Project metrics (FVU, L0, dead fraction, density) and the downstream "recovered" metric."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.sae_trainer import _log_feature_sparsity
from safetensors.torch import load_file

from sae_flux.cli import main as cli_main
from sae_flux.dictionary import load_dictionary
from sae_flux.downstream import downstream
from sae_flux.evaluate import EvalConfig, evaluate_dictionary
from sae_flux.metrics import evaluate

HOOK = "double.1.img"
PROMPTS = ["a red circle on the left", "a blue square on the right", "a green triangle at the top"]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _topk(d_in: int, d_sae: int, k: int, seed: int = 0, hook: str = HOOK) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.W_dec.normal_(std=0.3)
        sae.b_enc.normal_(std=0.1)
    return sae


def test_metrics_match_a_naive_computation_over_the_whole_window():
    acts_ND = torch.randn(1000, 16) * torch.linspace(0.1, 3, 16) + 2
    sae = _topk(16, 64, k=5)
    batches = iter(acts_ND.split(128))
    got = evaluate(sae, batches, max_tokens=900)
    x = acts_ND[:900]
    with torch.no_grad():
        z = sae.encode(x)
        recon = sae.decode(z)
    fvu = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert got.tokens == 900
    assert got.fvu == pytest.approx(fvu.item(), rel=1e-5)
    assert got.explained_variance == pytest.approx(1 - fvu.item(), rel=1e-5)
    assert got.l0 == pytest.approx((z != 0).float().sum(-1).mean().item())
    fired = (z != 0).float().mean(0)
    torch.testing.assert_close(got.density_F, fired)
    assert got.dead_fraction == pytest.approx((fired == 0).float().mean().item())


def test_a_perfect_reconstruction_has_zero_fvu_and_a_mean_only_one_has_fvu_one():
    acts_ND = torch.randn(512, 8)
    identity = TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=16, apply_b_dec_to_input=False))
    with torch.no_grad():  # latents 0..7 = relu(x), 8..15 = relu(-x); decoder undoes it
        identity.W_enc.copy_(torch.cat([torch.eye(8), -torch.eye(8)], 1))
        identity.b_enc.zero_()
        identity.W_dec.copy_(torch.cat([torch.eye(8), -torch.eye(8)], 0))
        identity.b_dec.zero_()
    assert evaluate(identity, [acts_ND]).fvu == pytest.approx(0, abs=1e-10)
    mean_only = _topk(8, 16, k=2)
    with torch.no_grad():
        mean_only.W_dec.zero_()
        mean_only.b_dec.copy_(acts_ND.mean(0))
    assert evaluate(mean_only, [acts_ND]).fvu == pytest.approx(1, abs=1e-6)


def test_sparsity_file_is_in_sae_lens_format(tmp_path):
    sae = _topk(8, 32, k=3)
    metrics = evaluate(sae, [torch.randn(256, 8)])
    sae.save_model(tmp_path)
    metrics.save(tmp_path)
    stored = load_file(tmp_path / "sparsity.safetensors")
    assert list(stored) == ["sparsity"]
    torch.testing.assert_close(stored["sparsity"], _log_feature_sparsity(metrics.density_F))
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record["dead_window_tokens"] == 256 and record["l0"] == pytest.approx(3)


def test_empty_data_is_an_error():
    with pytest.raises(ValueError, match="no activations to evaluate"):
        evaluate(_topk(8, 16, 2), [])


# -- downstream -------------------------------------------------------------------------------


def _zero_dictionary(mean_D: torch.Tensor) -> TopKSAE:
    """No features at all: a zero decoder whose bias is the ablation mean."""
    sae = _topk(mean_D.shape[0], 64, k=4)
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(mean_D)
    return sae


def test_downstream_is_one_for_the_identity_and_zero_for_a_zero_dictionary(tiny_flux):
    identity = downstream(tiny_flux, lambda x: x, HOOK, PROMPTS)
    assert identity.velocity_recovered == 1.0 and identity.image_recovered == 1.0
    assert identity.velocity_change_ablated > 0 and identity.image_change_ablated > 0
    mean_D = tiny_flux.capture(PROMPTS, [HOOK]).tokens(HOOK).mean(0)
    zero = downstream(tiny_flux, _zero_dictionary(mean_D), HOOK, PROMPTS)
    assert zero.velocity_recovered == pytest.approx(0, abs=1e-4)
    assert zero.image_recovered == pytest.approx(0, abs=1e-4)


def test_downstream_of_a_random_sae_lies_below_the_identity(tiny_flux):
    result = downstream(tiny_flux, _topk(32, 128, k=8), HOOK, PROMPTS)
    assert result.velocity_recovered < 1 and result.velocity_change_reconstructed > 0


def test_downstream_edits_block_updates_and_mlp_neurons(tiny_flux):
    for hook in ("double.0.img.delta", "double.0.mlp", "single.1.img"):
        result = downstream(tiny_flux, lambda x: x, hook, PROMPTS[:2])
        assert result.velocity_recovered == 1.0, hook
        scaled = downstream(tiny_flux, lambda x: 0.5 * x, hook, PROMPTS[:2])
        assert scaled.velocity_change_reconstructed > 0, hook


def test_downstream_refuses_bad_input(tiny_flux):
    with pytest.raises(ValueError, match="at least one prompt"):
        downstream(tiny_flux, lambda x: x, HOOK, [])
    with pytest.raises(ValueError, match="out of range"):
        downstream(tiny_flux, lambda x: x, "double.9.img", PROMPTS)


# -- sae-flux eval ----------------------------------------------------------------------------


def _prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def test_eval_streams_from_a_model_and_reports_downstream(tmp_path, capsys):
    sae = _topk(32, 64, k=4)
    sae.save_model(tmp_path / "sae")
    prompts = _prompt_file(tmp_path)
    code = cli_main(["eval", str(tmp_path / "sae"), "--model", "tiny", "--prompts", str(prompts),
                     "--num-inference-steps", "1", "--downstream-prompts", "2", "--save"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == 3 * 64 and report["hook"] == HOOK
    assert report["l0"] == pytest.approx(4)
    assert report["downstream"]["prompts"] == 2
    assert (tmp_path / "sae" / "sparsity.safetensors").is_file()
    assert json.loads((tmp_path / "sae" / "metrics.json").read_text())["fvu"] == report["fvu"]


def test_eval_works_for_itda_dictionaries(tiny_flux, tmp_path):
    itda = pytest.importorskip("itda")
    acts = tiny_flux.capture(PROMPTS, [HOOK], num_inference_steps=1).tokens(HOOK)
    dictionary = itda.ITDA.build([acts], target_l0=4, loss_threshold=0.3, progress=False)
    dictionary.cfg.metadata.hook_name = HOOK
    dictionary.save_model(tmp_path / "itda")
    assert load_dictionary(tmp_path / "itda").cfg.architecture() == "itda"
    report = evaluate_dictionary(EvalConfig(dictionary=str(tmp_path / "itda"), model="tiny",
                                            prompts=str(_prompt_file(tmp_path)), num_inference_steps=1))
    assert report["tokens"] == acts.shape[0]
    assert 0 <= report["fvu"] < 1 and report["l0"] <= 4


def test_eval_refuses_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a SAELens dictionary directory"):
        load_dictionary(tmp_path)
    with pytest.raises(ValueError, match="no evaluation data"):
        EvalConfig(dictionary="x")
    with pytest.raises(ValueError, match="downstream metric needs --model and --prompts"):
        EvalConfig(dictionary="x", cache="c", downstream_prompts=2)
    _topk(16, 32, k=2).save_model(tmp_path / "wide")
    cfg = EvalConfig(dictionary=str(tmp_path / "wide"), model="tiny", prompts=str(_prompt_file(tmp_path)))
    with pytest.raises(ValueError, match="has d_model 32 but the dictionary has d_in=16"):
        evaluate_dictionary(cfg)
    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "cfg.json").write_text(json.dumps({"architecture": "alien", "d_in": 4, "d_sae": 4}))
    with pytest.raises(ValueError, match="architecture 'alien' is not registered"):
        load_dictionary(tmp_path / "alien")
    assert SAE  # the loader is sae_lens's own
