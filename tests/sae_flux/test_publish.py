"""Hub publishing through huggingface_hub's real client against a loopback Hub, and loading back
with ``SAE.from_pretrained`` from a Hugging Face cache with the Hub offline."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest
import torch
from hub_server import HubServer, hub_server  # noqa: F401 (fixture)
from huggingface_hub import constants, snapshot_download
from sae_lens import SAE
from safetensors.torch import load_file

from sae_flux.cli import main as cli_main
from sae_flux.dictionary import HubReference, load_dictionary, parse_reference
from sae_flux.metrics import evaluate
from sae_flux.publish import PublishConfig, publish
from sae_flux.sources import TensorSource
from sae_flux.train import DataConfig, DictionaryConfig, OptimConfig, TrainConfig, train_sae

REPO = "flux-org/tiny-saes"


@pytest.fixture(scope="module")
def dictionaries(tmp_path_factory) -> list[Path]:
    """A trained TopK SAE (with metrics and sparsity) and an ITDA dictionary (if itda is present)."""
    root = tmp_path_factory.mktemp("dicts")
    torch.manual_seed(0)
    acts = torch.randn(2048, 16) @ torch.randn(16, 16)
    sae_dir = root / "double.1.img"
    train_sae(TrainConfig(out=str(sae_dir), data=DataConfig(hook="double.1.img"), sae=DictionaryConfig(expansion_factor=2, k=4, normalize_tokens=512),
                          optim=OptimConfig(total_tokens=20 * 128, batch_size=128), eval_tokens=1024),
              source=TensorSource(acts))
    dirs = [sae_dir]
    try:
        itda = importlib.import_module("itda")
    except ImportError:
        return dirs
    dictionary = itda.ITDA.build([acts], target_l0=4, loss_threshold=0.5, progress=False)
    dictionary.cfg.metadata.hook_name = "double.1.img"
    dictionary.save_model(root / "itda-double.1.img")
    evaluate(dictionary, [acts]).save(root / "itda-double.1.img")
    dirs.append(root / "itda-double.1.img")
    return dirs


def _publish(hub: HubServer, dirs: list[Path]) -> str:
    return publish(PublishConfig(dictionaries=[str(d) for d in dirs], repo=REPO, endpoint=hub.url), token=hub.token)


def test_publish_writes_the_sae_lens_layout_through_huggingface_hub(hub_server, dictionaries):  # noqa: F811
    url = _publish(hub_server, dictionaries)
    repo = hub_server.repos[REPO]
    assert url.endswith(repo.sha) and len(repo.commits) == 1
    expected = {"README.md"}
    for d in dictionaries:
        for name in ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors"):
            if (d / name).exists():
                expected.add(f"{d.name}/{name}")
                assert repo.files[f"{d.name}/{name}"] == (d / name).read_bytes()
    assert set(repo.files) == expected
    assert "double.1.img/sparsity.safetensors" in expected
    calls = [path.split("?")[0] for _, path in hub_server.requests]
    assert calls[:2] == ["/api/repos/create", "/api/validate-yaml"]
    assert f"/api/models/{REPO}/preupload/main" in calls and f"/api/models/{REPO}/commit/main" in calls


def test_the_model_card_says_how_to_load_and_what_the_metrics_are(hub_server, dictionaries):  # noqa: F811
    _publish(hub_server, dictionaries)
    card = hub_server.repos[REPO].files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: saelens\n")
    assert f'SAE.from_pretrained("{REPO}", "double.1.img")' in card
    metrics = json.loads((dictionaries[0] / "metrics.json").read_text())
    row = next(line for line in card.splitlines() if line.startswith("| double.1.img |"))
    assert "| topk | double.1.img | 16 | 32 |" in row and f"{metrics['fvu']:.4g}" in row
    assert "normalisation `whiten`" in card and "2560 tokens" in card
    if len(dictionaries) > 1:
        assert "import itda" in card and "| itda |" in card


def test_published_dictionaries_load_with_from_pretrained_from_the_offline_hf_cache(
    hub_server, dictionaries, tmp_path, monkeypatch  # noqa: F811
):
    _publish(hub_server, dictionaries)
    cache = tmp_path / "hf-cache"
    snapshot_download(REPO, endpoint=hub_server.url, cache_dir=cache)
    sha = hub_server.repos[REPO].sha
    repo_dir = cache / "models--flux-org--tiny-saes"
    assert (repo_dir / "refs" / "main").read_text() == sha
    assert (repo_dir / "snapshots" / sha / "double.1.img" / "cfg.json").is_symlink()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub_server.requests.clear()
    for d in dictionaries:
        sae, cfg, log_sparsity = SAE.from_pretrained_with_cfg_and_sparsity(REPO, d.name)
        local = SAE.load_from_disk(d)
        for name, value in local.state_dict().items():
            assert torch.equal(sae.state_dict()[name], value), (d.name, name)
        if (d / "sparsity.safetensors").exists():
            assert torch.equal(log_sparsity, load_file(d / "sparsity.safetensors")["sparsity"])
        assert cfg["architecture"] == local.cfg.architecture()
    assert hub_server.requests == [], "loading must not touch the network"


def test_publishing_without_credentials_says_how_to_log_in(dictionaries, monkeypatch, caplog, capsys):
    monkeypatch.setattr("sae_flux.publish.get_token", lambda: None)
    with pytest.raises(PermissionError, match=r"no Hugging Face credentials found: log in with `hf auth login`"):
        publish(PublishConfig(dictionaries=[str(dictionaries[0])], repo=REPO, endpoint="http://127.0.0.1:9"))
    with caplog.at_level(logging.ERROR):
        code = cli_main(["publish", str(dictionaries[0]), "--repo", REPO, "--endpoint", "http://127.0.0.1:9"])
    assert code == 2 and "hf auth login" in capsys.readouterr().err


def test_a_refused_token_is_reported_without_printing_it(hub_server, dictionaries, monkeypatch, caplog, capsys):  # noqa: F811
    secret = "hf_WRONGsecretTOKEN123"
    monkeypatch.setenv("HF_TOKEN", secret)
    with caplog.at_level(logging.DEBUG):
        code = cli_main(["publish", str(dictionaries[0]), "--repo", REPO, "--endpoint", hub_server.url])
    assert code == 2
    err = capsys.readouterr().err
    assert "refused the credentials" in err and "hf auth login" in err
    assert secret not in caplog.text + err
    assert REPO not in hub_server.repos


def test_cli_publish_uploads_with_the_logged_in_token(hub_server, dictionaries, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    assert cli_main(["publish", *map(str, dictionaries), "--repo", REPO, "--endpoint", hub_server.url]) == 0
    assert f"{dictionaries[0].name}/cfg.json" in hub_server.repos[REPO].files


def test_bad_publish_input_gets_a_clear_error(dictionaries, tmp_path):
    with pytest.raises(ValueError, match="not of the form org/name"):
        PublishConfig(dictionaries=["x"], repo="no-slash")
    with pytest.raises(ValueError, match="at least one dictionary"):
        PublishConfig(dictionaries=[], repo=REPO)
    with pytest.raises(FileNotFoundError, match="not a SAELens dictionary directory"):
        publish(PublishConfig(dictionaries=[str(tmp_path)], repo=REPO), token="x")
    twin = tmp_path / "other" / dictionaries[0].name
    SAE.load_from_disk(dictionaries[0]).save_model(twin)
    with pytest.raises(ValueError, match=r"several dictionaries would be uploaded as \['double.1.img'\]"):
        publish(PublishConfig(dictionaries=[str(dictionaries[0]), str(twin)], repo=REPO), token="x")


def test_the_dictionary_loader_takes_a_hub_reference(hub_server, dictionaries, tmp_path, monkeypatch):  # noqa: F811
    _publish(hub_server, dictionaries)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for d in dictionaries:
        remote = load_dictionary(f"{REPO}:{d.name}", hook="double.1.img", endpoint=hub_server.url)
        local = load_dictionary(d)
        assert remote.cfg.architecture() == local.cfg.architecture()
        for name, value in local.state_dict().items():
            assert torch.equal(remote.state_dict()[name], value), (d.name, name)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the cache answers offline
    hub_server.requests.clear()
    assert load_dictionary(f"{REPO}:{dictionaries[0].name}", endpoint=hub_server.url).cfg.d_in == 16
    assert hub_server.requests == []


def test_the_dictionary_loader_refuses_bad_references(dictionaries, tmp_path):
    assert parse_reference(dictionaries[0]) == dictionaries[0]
    assert parse_reference("org/name:double.1.img") == HubReference("org/name", "double.1.img")
    assert parse_reference("runs/sae") == Path("runs/sae")
    with pytest.raises(FileNotFoundError, match="dictionary .*missing does not exist"):
        load_dictionary(tmp_path / "missing")
    with pytest.raises(ValueError, match=r"trained on hook 'double.1.img', not on 'double.0.img'"):
        load_dictionary(dictionaries[0], hook="double.0.img")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"cfg.json is not valid JSON"):
        load_dictionary(tmp_path / "broken")
