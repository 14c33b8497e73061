"""``sae-flux interp`` end to end on the tiny model: index, ground truth, errors with messages."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from sae_lens import TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata
from vlm_server import VLMServer

from sae_flux.cache import CacheConfig, write_cache
from sae_flux.cli import main
from sae_flux.organism.world import prompts


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_flux):
    root = tmp_path_factory.mktemp("interp-cli")
    (root / "prompts.txt").write_text("\n".join(prompts(12, seed=0)) + "\n")
    write_cache(CacheConfig(model="tiny", prompts=str(root / "prompts.txt"), hooks=["double.1.img", "double.1.mlp"],
                            out=str(root / "cache"), steps=[0], batch_size=6, shard_prompts=6), flux=tiny_flux)
    for hook in ("double.1.img", "double.0.img"):
        torch.manual_seed(0)
        cfg = TopKSAEConfig(d_in=tiny_flux.d_model, d_sae=48, k=4, metadata=SAEMetadata(hook_name=hook))
        TopKSAE(cfg).save_model(root / f"sae-{hook}")
    return root


def _run(*argv):
    return main(["interp", *map(str, argv)])


def test_index_and_ground_truth_write_scores_cards_and_browser(setup, caplog):
    root = setup
    assert _run("index", root / "cache", "--hook", "double.1.img", "--dictionary", root / "sae-double.1.img",
                "--name", "sae", "--out", root / "idx-sae", "--top-n", 8) == 0
    assert _run("index", root / "cache", "--hook", "double.1.mlp", "--neurons", "--out", root / "idx-mlp") == 0
    with caplog.at_level(logging.INFO):
        assert _run("ground-truth", root / "idx-sae", root / "idx-mlp", "--prompts", root / "prompts.txt",
                    "--model", "tiny", "--min-tokens", 1, "--max-features", 2, "--out", root / "gt") == 0
    rows = json.loads((root / "gt" / "scores.json").read_text())
    assert [r["dictionary"] for r in rows] == ["sae", "neurons"]
    assert rows[0]["features"] == 48 and rows[1]["features"] == tiny_width(root)
    assert all(0.0 <= r["mean_iou"] <= 1.0 for r in rows)
    assert (root / "gt" / "browser.html").is_file() and (root / "gt" / "scores.png").is_file()
    assert len(list((root / "gt" / "cards").glob("*.png"))) >= 2


def test_dictionary_of_another_hook_is_refused(setup, caplog, capsys):
    root = setup
    with caplog.at_level(logging.ERROR):
        code = _run("index", root / "cache", "--hook", "double.1.img", "--dictionary", root / "sae-double.0.img",
                    "--out", root / "idx-bad")
    assert code == 2 and "trained on hook 'double.0.img' but the activations come from 'double.1.img'" in capsys.readouterr().err


def test_unreachable_endpoint_and_bad_feature_are_reported(setup, caplog, tmp_path, capsys):
    root = setup
    if not (root / "idx-mlp").exists():
        _run("index", root / "cache", "--hook", "double.1.mlp", "--neurons", "--out", root / "idx-mlp")
    common = ["--prompts", root / "prompts.txt", "--model", "tiny", "--min-tokens", 1]
    with caplog.at_level(logging.ERROR):
        code = _run("explain", root / "idx-mlp", "--features", 100000, *common)
    assert code == 2 and "feature 100000 is out of range" in capsys.readouterr().err
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = _run("explain", root / "idx-mlp", "--features", 3, *common, "--base-url", "http://127.0.0.1:9/v1",
                    "--vlm-model", "m", "--max-retries", 1, "--backoff", 0, "--cache-dir", tmp_path / "c", "--results", tmp_path / "r.jsonl")
    err = capsys.readouterr().err
    assert code == 2 and "failed after 2 attempts: endpoint" in err and "is unreachable" in err
    with caplog.at_level(logging.ERROR):
        code = _run("images", root / "idx-mlp", "--prompts", root / "cache" / "manifest.json", "--model", "tiny")
    assert code == 2


def tiny_width(root):
    return json.loads((root / "cache" / "manifest.json").read_text())["widths"]["double.1.mlp"]


def test_explain_then_detect_on_a_fresh_index_generate_every_image_they_show_before_asking(setup, tmp_path):
    root = setup
    assert _run("index", root / "cache", "--hook", "double.1.img", "--dictionary", root / "sae-double.1.img",
                "--name", "sae", "--out", tmp_path / "idx", "--top-n", 8) == 0
    common = ["--prompts", root / "prompts.txt", "--model", "tiny", "--min-tokens", 1, "--max-features", 3,
              "--cache-dir", tmp_path / "answers"]
    with VLMServer() as vlm:
        code = _run("explain", tmp_path / "idx", *common, "--base-url", vlm.url, "--vlm-model", "stand-in",
                    "--results", tmp_path / "r.jsonl")
        assert code == 0
        results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
        assert len(results) == 3 and all(r["detection"] is None for r in results)  # explaining only
        shown = [tmp_path / "idx" / "images" / f"{i:06d}.png" for r in results for i in r["images"]]
        assert all(path.is_file() for path in shown)
        assert vlm.first_request_at is not None and max(p.stat().st_mtime for p in shown) <= vlm.first_request_at
        asked = vlm.requests
        code = _run("detect", tmp_path / "idx", *common, "--base-url", vlm.url, "--vlm-model", "stand-in",
                    "--explanations", tmp_path / "r.jsonl", "--results", tmp_path / "s.jsonl",
                    "--summary", tmp_path / "s.json")
        assert code == 0 and vlm.requests > asked
    scores = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    negatives = {i for s in scores for i in s["scored"]["detection"]["negatives"]}
    assert len(negatives) >= 5 and all((tmp_path / "idx" / "images" / f"{i:06d}.png").is_file() for i in negatives)


def test_images_makes_the_distractors_too_so_explain_needs_no_model(setup, tmp_path):
    root = setup
    assert _run("index", root / "cache", "--hook", "double.1.img", "--dictionary", root / "sae-double.1.img",
                "--name", "sae", "--out", tmp_path / "idx", "--top-n", 8) == 0
    common = ["--prompts", root / "prompts.txt", "--min-tokens", 1, "--max-features", 3]
    assert _run("images", tmp_path / "idx", *common, "--model", "tiny") == 0
    with VLMServer() as vlm:  # a model that cannot load: explain must find every image in place
        code = _run("explain", tmp_path / "idx", *common, "--model", str(tmp_path / "no-model"), "--base-url", vlm.url,
                    "--vlm-model", "stand-in", "--cache-dir", tmp_path / "answers", "--results", tmp_path / "r.jsonl")
    assert code == 0 and len((tmp_path / "r.jsonl").read_text().splitlines()) == 3


def test_the_paper_pipeline_runs_from_a_fresh_directory_with_the_loopback_vlm_and_the_oracle(
        setup, tiny_flux, tmp_path, monkeypatch, capsys):
    """index -> images -> explain -> detect -> render, every step a subcommand, default file names."""
    root = setup
    torch.manual_seed(1)
    sae = TopKSAE(TopKSAEConfig(d_in=tiny_flux.d_model, d_sae=24, k=4, metadata=SAEMetadata(hook_name="double.1.img")))
    with torch.no_grad():
        sae.W_enc[:, 5] = 0.0
        sae.b_enc[5] = -1e3  # latent 5 never fires: dead
    sae.save_model(tmp_path / "sae")
    monkeypatch.chdir(tmp_path)
    assert _run("index", root / "cache", "--hook", "double.1.img", "--dictionary", "sae", "--name", "sae",
                "--out", "idx", "--top-n", 8) == 0
    common = ["--prompts", root / "prompts.txt", "--model", "tiny", "--min-tokens", 1, "--max-features", 4]
    assert _run("images", "idx", *common) == 0
    made = sorted(p.name for p in (tmp_path / "idx" / "images").iterdir())
    no_model = ["--prompts", root / "prompts.txt", "--model", tmp_path / "no-model", "--min-tokens", 1,
                "--max-features", 4]  # every image is there: explain and detect load no model
    with VLMServer() as vlm:
        monkeypatch.setenv("SAE_FLUX_VLM_BASE_URL", vlm.url)
        monkeypatch.setenv("SAE_FLUX_VLM_MODEL", "stand-in")
        assert _run("explain", "idx", *no_model) == 0
        explained = vlm.requests
        assert _run("detect", "idx", *no_model, "--explanations", "explanations.jsonl") == 0
        assert explained == 4 and vlm.requests > explained  # (repeated questions come from the answers cache)
    assert sorted(p.name for p in (tmp_path / "idx" / "images").iterdir()) == made
    scores = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert sorted({s["rater"] for s in scores}) == ["openai:stand-in", "oracle"] and len(scores) == 8
    for s in scores:
        for role in ("scored", "floor", "ceiling"):
            assert 0.0 <= s[role]["detection"]["score"] <= 1.0 and len(s[role]["detection"]["positives"]) >= 1
            assert len(s[role]["detection"]["negatives"]) == 5
    summary = json.loads((tmp_path / "scores-summary.json").read_text())
    assert [(r["rater"], r["explanations"]) for r in summary] == [
        (rater, role) for rater in ("openai:stand-in", "oracle") for role in ("explanation", "floor", "ceiling")]
    # the oracle explainer: its own explanations score exactly its ceiling, above the shuffled floor
    assert _run("explain", "idx", *no_model, "--backend", "oracle", "--results", "oracle.jsonl") == 0
    assert _run("detect", "idx", *no_model, "--backend", "oracle", "--explanations", "oracle.jsonl",
                "--results", "oracle-scores.jsonl", "--summary", "oracle-summary.json") == 0
    rows = {r["explanations"]: r for r in json.loads((tmp_path / "oracle-summary.json").read_text())}
    assert rows["explanation"]["corrected"] == rows["ceiling"]["corrected"] >= rows["floor"]["corrected"]
    assert rows["explanation"]["fuzzing"] == rows["ceiling"]["fuzzing"]
    # every live feature in a paged browser; a dead feature named on the command line is refused, not skipped
    assert _run("render", "idx", "--prompts", root / "prompts.txt", "--model", "tiny", "--min-tokens", 1,
                "--scores", "scores.jsonl", "--per-page", 10, "--out", "browser") == 0
    pages = sorted((tmp_path / "browser").glob("browser*.html"))
    cards = sum(page.read_text().count('<div class="card') for page in pages)
    first = (tmp_path / "browser" / "browser.html").read_text()
    assert cards == 23 and len(pages) == 3 and 'href="browser-2.html"' in first and "cards 1-10 of 23" in first
    assert "detection, openai:stand-in" in first and "detection floor, oracle" in first
    capsys.readouterr()
    assert _run("render", "idx", "--prompts", root / "prompts.txt", "--model", "tiny", "--features", 3, 5,
                "--out", "cards") == 2
    err = capsys.readouterr().err
    assert "features [5] of 'sae' never fired" in err and "(dead)" in err
