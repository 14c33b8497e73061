"""Hub publishing through huggingface_hub's real client against a loopback Hub, and loading back:
with ``SAE.from_pretrained`` in a Python that has sae_lens but not this package, from the offline
Hugging Face cache, and with sae-flux's own loader."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import HubServer, hub_server  # noqa: F401 (fixture)
from huggingface_hub import ModelCard, constants, snapshot_download
from sae_lens import SAE
from safetensors.torch import load, load_file

import itda
from sae_flux.cache import CacheConfig, CacheReader, write_cache
from sae_flux.cli import main as cli_main
from sae_flux.dictionary import HubReference, load_dictionary, parse_reference
from sae_flux.itda_build import build_from_cache
from sae_flux.model_card import register_release
from sae_flux.publish import PublishConfig, publish, scrub_paths
from sae_flux.train import DataConfig, DictionaryConfig, OptimConfig, TrainConfig, train_sae

REPO = "flux-org/tiny-saes"
HOOK = "double.1.img"
ITDA_ID = f"itda-{HOOK}"
MP_ID = f"{ITDA_ID}-mp"
MODEL = "tiny(seed=0, double=2, single=2, d=32)"


@pytest.fixture(scope="module")
def cache(tiny_flux, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("publish-cache")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(f"a red circle number {i}" for i in range(12)) + "\n")
    write_cache(CacheConfig(model="tiny", prompts=str(prompts), hooks=[HOOK], out=str(root / "cache"),
                            num_inference_steps=1, resolution=40, batch_size=4, shard_prompts=8), flux=tiny_flux)
    return root / "cache"


@pytest.fixture(scope="module")
def dictionaries(cache, tmp_path_factory) -> list[Path]:
    """A TopK SAE trained on the cache (metrics, sparsity) and a default ITDA built from it."""
    root = tmp_path_factory.mktemp("dicts")
    torch.manual_seed(0)
    sae_dir = root / HOOK
    train_sae(TrainConfig(out=str(sae_dir), data=DataConfig(cache=str(cache)),
                          sae=DictionaryConfig(expansion_factor=2, k=4, normalize_tokens=512),
                          optim=OptimConfig(total_tokens=20 * 128, batch_size=128), eval_tokens=1024))
    itda_dir = root / ITDA_ID
    d = build_from_cache(cache, itda.BuildConfig(target_l0=4, loss_threshold=0.5), batch_size=500,
                              progress=False)
    d.save_model(itda_dir)
    assert cli_main(["eval", str(itda_dir), "--cache", str(cache), "--tokens", "1000", "--save"]) == 0
    d.save_model(itda_dir)  # sparsity: firing rates on the build data, with their signed halves
    return [sae_dir, itda_dir]


def _publish(hub: HubServer, dirs: list[Path], **kw) -> str:
    cfg = PublishConfig(dictionaries=[str(d) for d in dirs], repo=REPO, endpoint=hub.url, **kw)
    return publish(cfg, token=hub.token)


def _activations(cache: Path, n: int = 256) -> torch.Tensor:
    return next(iter(CacheReader(cache).in_order(n)))[0][:n].float()


def test_one_commit_uploads_weights_provenance_sparsity_configs_manifest_and_export(
    hub_server, dictionaries, cache  # noqa: F811
):
    url = _publish(hub_server, dictionaries)
    repo = hub_server.repos[REPO]
    assert url.endswith(repo.sha) and len(repo.commits) == 1
    sae_dir, itda_dir = dictionaries
    common = {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "metrics.json", "cache_manifest.json"}
    assert {p.split("/", 1)[1] for p in repo.files if p.startswith(f"{HOOK}/")} == common | {"train_config.json"}
    assert {p.split("/", 1)[1] for p in repo.files if p.startswith(f"{ITDA_ID}/")} == \
        common | {"build_config.json", "itda_provenance.safetensors"}
    assert {p.split("/", 1)[1] for p in repo.files if p.startswith(f"{MP_ID}/")} == \
        {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "cache_manifest.json"}
    assert {"README.md", "sae_lens_release.yaml"} <= set(repo.files)
    for d in dictionaries:
        for name in ("sae_weights.safetensors", "sparsity.safetensors"):
            assert repo.files[f"{d.name}/{name}"] == (d / name).read_bytes()
    manifest = json.loads(repo.files[f"{HOOK}/cache_manifest.json"])
    assert manifest["num_prompts"] == 12 and manifest["tokens"][HOOK] == CacheReader(cache).num_tokens
    assert manifest["cache"] == "cache" and manifest["model_id"] == MODEL
    assert json.loads(repo.files[f"{ITDA_ID}/build_config.json"])["normalization"] == "mean"
    sparsity = load_file(itda_dir / "sparsity.safetensors")
    assert set(sparsity) == {"sparsity", "sparsity_positive", "sparsity_negative"}
    exported = load(repo.files[f"{MP_ID}/sparsity.safetensors"])["sparsity"]
    assert torch.equal(exported, torch.cat([sparsity["sparsity_positive"], sparsity["sparsity_negative"]]))
    calls = [path.split("?")[0] for _, path in hub_server.requests]
    assert calls.count(f"/api/models/{REPO}/commit/main") == 1


def test_nothing_uploaded_names_a_local_path(hub_server, dictionaries, cache):  # noqa: F811
    _publish(hub_server, dictionaries)
    locals_ = [str(dictionaries[0].parent), str(cache.parent), str(Path.home()), "/tmp/"]
    for path, content in hub_server.repos[REPO].files.items():
        head = content[: 8 + int.from_bytes(content[:8], "little")] if path.endswith(".safetensors") else content
        for needle in locals_:
            assert needle.encode() not in head, (path, needle)
    cfg = json.loads(hub_server.repos[REPO].files[f"{HOOK}/cfg.json"])
    assert cfg["metadata"]["dataset_path"].startswith("activation cache cache (")
    assert scrub_paths("see /home/u/x/run and C:\\Users\\u\\cache, https://huggingface.co/a/b") == \
        "see run and cache, https://huggingface.co/a/b"


def test_the_model_card_parses_back_and_says_what_each_dictionary_is(hub_server, dictionaries, tmp_path):  # noqa: F811
    _publish(hub_server, dictionaries)
    (tmp_path / "README.md").write_bytes(hub_server.repos[REPO].files["README.md"])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "saelens" and {"saelens", MODEL, "itda"} <= set(card.data.tags)
    text = card.text
    metrics = json.loads((dictionaries[0] / "metrics.json").read_text())
    assert f'SAE.from_pretrained("{REPO}", "{HOOK}")' in text and f"{hub_server.url}/{REPO}" in text
    section = text.split(f"### `{HOOK}`")[1].split("###")[0]
    assert "| architecture | topk |" in section and f"| FVU | {metrics['fvu']:.4g} (in-sample) |" in section
    assert "12 prompts" in section and "1-step schedule" in section and "2560 tokens" in section
    itda_section = text.split(f"### `{ITDA_ID}`")[1].split("###")[0]
    assert "| measured by | `sae-flux eval itda-double.1.img --cache cache --tokens 1000 --save` |" in itda_section
    assert "atoms taken at denoising steps [0]" in itda_section
    assert f"load its export `{MP_ID}`" in itda_section
    assert "export of `itda-double.1.img`, exact" in text
    assert "import itda" in text and "from_pretrained_with_provenance" in text


def test_the_release_block_registers_locally_and_loads_by_release_name(
    hub_server, dictionaries, tmp_path, monkeypatch  # noqa: F811
):
    _publish(hub_server, dictionaries, release="tiny-flux-dictionaries")
    block = yaml.safe_load(hub_server.repos[REPO].files["sae_lens_release.yaml"])
    entry = block["tiny-flux-dictionaries"]
    assert entry["repo_id"] == REPO and entry["model"] == MODEL and entry["conversion_func"] is None
    assert [s["id"] for s in entry["saes"]] == [HOOK, ITDA_ID, MP_ID]
    assert all(s["path"] == s["id"] and s["neuronpedia"] is None and s["l0"] > 0 for s in entry["saes"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    snapshot_download(REPO, endpoint=hub_server.url, cache_dir=tmp_path / "hf-cache")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert register_release(block) == ["tiny-flux-dictionaries"]
    sae = SAE.from_pretrained("tiny-flux-dictionaries", MP_ID)
    assert type(sae).__name__ == "MatchingPursuitSAE"


PLAIN = r'''
import json, sys
sys.path.append(sys.argv[1])            # site-packages only: no .pth files, so no editable sae-flux
for name in ("itda", "sae_flux"):
    try:
        __import__(name)
    except ImportError:
        continue
    raise SystemExit(f"{name} is importable in the plain environment")
import torch
from sae_lens import SAE

args = json.loads(sys.argv[2])
x = torch.load(args["x"])
out = {}
for folder in args["folders"]:
    sae = SAE.from_pretrained(args["repo"], folder)
    codes = sae.encode(x)
    out[folder] = {"class": type(sae).__name__, "codes": codes, "recon": sae.decode(codes)}
try:
    SAE.from_pretrained(args["repo"], args["itda"])
except KeyError as err:
    out["itda_error"] = str(err)
exec(args["snippet"], {})               # the model card's plain-sae_lens snippet, as written
out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("itda", "sae_flux"))
torch.save(out, args["out"])
'''


def test_published_sae_and_itda_load_in_plain_sae_lens_without_sae_flux(
    hub_server, dictionaries, cache, tmp_path  # noqa: F811
):
    _publish(hub_server, dictionaries)
    x = _activations(cache)
    torch.save(x, tmp_path / "x.pt")
    card = hub_server.repos[REPO].files["README.md"].decode()
    snippet = card.split("no sae-flux needed:\n\n```python\n", 1)[1].split("```", 1)[0]
    args = {"repo": REPO, "folders": [HOOK, MP_ID], "itda": ITDA_ID, "x": str(tmp_path / "x.pt"),
            "out": str(tmp_path / "out.pt"), "snippet": snippet}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HF_"))}
    env |= {"HF_ENDPOINT": hub_server.url, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
            "HF_HUB_DISABLE_TELEMETRY": "1"}
    site = sysconfig.get_paths()["purelib"]
    done = subprocess.run([sys.executable, "-I", "-S", "-c", PLAIN, site, json.dumps(args)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["modules"] == []
    assert out["itda_error"] == \
        "'itda (an sae-flux ITDA dictionary: pip install sae-flux, then import itda before loading)'"
    sae = load_dictionary(dictionaries[0])
    assert out[HOOK]["class"] == "TopKSAE"
    assert torch.equal(out[HOOK]["codes"], sae.encode(x)) and torch.equal(out[HOOK]["recon"], sae.decode(sae.encode(x)))
    d = load_dictionary(dictionaries[1])
    assert out[MP_ID]["class"] == "MatchingPursuitSAE"
    codes = itda.fold_mirrored_codes(out[MP_ID]["codes"])
    mine = d.encode(x)
    significant = 1e-5 * float(mine.abs().max())  # below: rounding noise of a token that is an atom
    assert torch.equal(codes.abs() > significant, mine.abs() > significant), "the same atoms on every token"
    torch.testing.assert_close(codes, mine, atol=1e-5 * float(mine.abs().max()), rtol=0)
    torch.testing.assert_close(out[MP_ID]["recon"], d.decode(mine), atol=1e-5 * float(x.abs().max()), rtol=0)


def test_itda_loads_with_provenance_from_the_hub_offline_cache(hub_server, dictionaries, tmp_path, monkeypatch):  # noqa: F811
    _publish(hub_server, dictionaries)
    cache = tmp_path / "hf-cache"
    snapshot_download(REPO, endpoint=hub_server.url, cache_dir=cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    hub_server.requests.clear()
    remote = itda.ITDA.from_pretrained_with_provenance(REPO, ITDA_ID)
    local = itda.ITDA.load(dictionaries[1])
    assert remote.describe(3) == local.describe(3) and remote.describe(3).step == 0
    for name, value in local.state_dict().items():
        assert torch.equal(remote.state_dict()[name], value), name
    sae, _, log_sparsity = SAE.from_pretrained_with_cfg_and_sparsity(REPO, ITDA_ID)
    assert torch.equal(log_sparsity, load_file(dictionaries[1] / "sparsity.safetensors")["sparsity"])
    assert hub_server.requests == [], "loading must not touch the network"


def test_a_dry_run_prints_files_and_card_and_needs_no_token(dictionaries, monkeypatch, capsys):
    monkeypatch.setattr("sae_flux.publish.get_token", lambda: None)
    code = cli_main(["publish", *map(str, dictionaries), "--repo", REPO, "--dry-run", "--endpoint", "http://127.0.0.1:9"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"would upload to {REPO} in one commit:" in out
    assert f"  {MP_ID}/sae_weights.safetensors" in out and "--- README.md ---" in out
    assert "library_name: saelens" in out


def test_a_changed_folder_is_refused_unless_forced(hub_server, dictionaries, tmp_path):  # noqa: F811
    _publish(hub_server, dictionaries[:1])
    other = tmp_path / HOOK
    sae = SAE.load_from_disk(dictionaries[0])
    with torch.no_grad():
        sae.W_dec.mul_(2)
    sae.cfg.metadata.hook_name = "double.0.img"
    sae.save_model(other)
    with pytest.raises(FileExistsError, match=rf"already holds \['{HOOK}'\] with a different cfg.json.*--force"):
        _publish(hub_server, [other])
    assert len(hub_server.repos[REPO].commits) == 1
    _publish(hub_server, dictionaries[:1])  # the same dictionary again is no conflict
    _publish(hub_server, [other], force=True)
    files = hub_server.repos[REPO].files
    assert files[f"{HOOK}/sae_weights.safetensors"] == (other / "sae_weights.safetensors").read_bytes()
    assert f"{HOOK}/train_config.json" not in files, "files of the replaced folder are removed"


def test_the_token_comes_from_the_named_environment_variable(hub_server, dictionaries, monkeypatch, capsys):  # noqa: F811
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("sae_flux.publish.get_token", lambda: None)
    monkeypatch.setenv("MY_HUB_TOKEN", hub_server.token)
    argv = ["publish", str(dictionaries[0]), "--repo", REPO, "--endpoint", hub_server.url]
    assert cli_main([*argv, "--token-env", "MY_HUB_TOKEN"]) == 0
    assert f"{HOOK}/cfg.json" in hub_server.repos[REPO].files
    capsys.readouterr()
    assert cli_main([*argv, "--token-env", "UNSET_TOKEN_VARIABLE"]) == 2
    assert "UNSET_TOKEN_VARIABLE (--token-env) is not set" in capsys.readouterr().err
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        PublishConfig(dictionaries=["x"], repo=REPO, token_env="hf_abcdefSECRET")


def test_publishing_without_credentials_says_how_to_log_in(dictionaries, monkeypatch, caplog, capsys):
    monkeypatch.setattr("sae_flux.publish.get_token", lambda: None)
    monkeypatch.delenv("HF_TOKEN", raising=False)
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


def test_the_export_command_writes_an_exact_matching_pursuit_and_measures_it(dictionaries, cache, tmp_path, capsys):
    out = tmp_path / "mp"
    assert cli_main(["export", str(dictionaries[1]), "--out", str(out), "--check-cache", str(cache),
                     "--tokens", "512"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exact"] is True and report["mirrored"] is True
    agreement = report["agreement"]
    assert agreement["tokens"] == 512 and agreement["same_significant_support"] == 1.0
    assert agreement["max_code_error"] <= 1e-5 * agreement["max_code"]
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "matching_pursuit"


def test_an_approximate_export_is_refused_then_labelled(cache, tmp_path, capsys):
    d = build_from_cache(cache, itda.BuildConfig(target_l0=4, loss_threshold=0.5, normalization="mean_std"),
                              batch_size=500, progress=False, sparsity_tokens=0)
    d.save_model(tmp_path / "itda")
    assert cli_main(["export", str(tmp_path / "itda"), "--out", str(tmp_path / "mp")]) == 2
    err = capsys.readouterr().err
    assert "would not be exact" in err and "per-dimension std" in err
    assert cli_main(["export", str(tmp_path / "itda"), "--out", str(tmp_path / "mp"), "--allow-approximate"]) == 0
    assert json.loads((tmp_path / "mp" / "cfg.json").read_text())["metadata"]["itda_export"]["exact"] is False


def test_the_dictionary_loader_takes_a_hub_reference(hub_server, dictionaries, tmp_path, monkeypatch):  # noqa: F811
    _publish(hub_server, dictionaries)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for d in dictionaries:
        remote = load_dictionary(f"{REPO}:{d.name}", hook=HOOK, endpoint=hub_server.url)
        local = load_dictionary(d)
        assert remote.cfg.architecture() == local.cfg.architecture()
        for name, value in local.state_dict().items():
            assert torch.equal(remote.state_dict()[name], value), (d.name, name)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the cache answers offline
    hub_server.requests.clear()
    assert load_dictionary(f"{REPO}:{dictionaries[0].name}", endpoint=hub_server.url).cfg.d_in == 32
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
    with pytest.raises(ValueError, match="--save writes into a local dictionary directory"):
        from sae_flux.evaluate import evaluate_dictionary
        from sae_flux.evaluate_config import EvalConfig

        evaluate_dictionary(EvalConfig(dictionary=f"{REPO}:{HOOK}", cache="c", save=True))
