"""ITDA is a real SAELens SAE: registry, encode/decode, hooks, save/load, Hub loading, errors."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens import SAE, StandardSAE, StandardSAEConfig
from sae_lens.registry import SAE_CLASS_REGISTRY

import itda
from itda.provenance import PROVENANCE_FILENAME, Provenance
from itda.pursuit import matching_pursuit, to_dense


def test_import_registers_itda_architecture_once_even_on_reload():
    assert SAE_CLASS_REGISTRY["itda"] == (itda.ITDA, itda.ITDAConfig)
    importlib.reload(itda)  # a second registration would raise inside sae_lens
    assert "itda" in SAE_CLASS_REGISTRY


def test_encode_is_pursuit_on_normalised_unit_atoms(small_itda, acts):
    x_ND = acts[2048:2100]
    x_n = (x_ND - small_itda.b_dec.detach()) / small_itda.act_std.detach()
    ref = to_dense(matching_pursuit(x_n, small_itda.atoms, 4), small_itda.cfg.d_sae)
    torch.testing.assert_close(small_itda.encode(x_ND), ref)
    torch.testing.assert_close(
        small_itda.atoms.norm(dim=1), torch.ones(small_itda.cfg.d_sae), atol=1e-5, rtol=0
    )
    assert ((small_itda.encode(x_ND) != 0).sum(1) <= 4).all()


def test_decode_is_codes_times_w_dec_plus_b_dec_in_raw_units(small_itda, acts):
    z = small_itda.encode(acts[:10])
    expected = z @ small_itda.W_dec + small_itda.b_dec
    torch.testing.assert_close(small_itda.decode(z), expected)
    torch.testing.assert_close(small_itda(acts[:10]), expected)


def test_encode_accepts_leading_batch_dimensions(small_itda, acts):
    x_BSD = acts[:12].reshape(3, 4, -1)
    assert small_itda.encode(x_BSD).shape == (3, 4, small_itda.cfg.d_sae)
    torch.testing.assert_close(
        small_itda.encode(x_BSD).reshape(12, -1), small_itda.encode(acts[:12])
    )


def test_saelens_hook_points_fire(small_itda, acts):
    _, cache = small_itda.run_with_cache(acts[:5])
    for name in ("hook_sae_input", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_output"):
        assert name in cache
    torch.testing.assert_close(cache["hook_sae_acts_post"], small_itda.encode(acts[:5]))


def test_save_then_saelens_load_from_disk_gives_identical_encode_and_decode(
    small_itda, acts, tmp_path
):
    small_itda.save_model(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "cfg.json",
        "sae_weights.safetensors",
        PROVENANCE_FILENAME,
    }
    loaded = SAE.load_from_disk(tmp_path)
    assert isinstance(loaded, itda.ITDA)
    x = acts[2048:2300]
    assert torch.equal(loaded.encode(x), small_itda.encode(x))
    z = small_itda.encode(x)
    assert torch.equal(loaded.decode(z), small_itda.decode(z))
    assert (
        json.loads((tmp_path / "cfg.json").read_text())["metadata"]["itda_build"]["loss_threshold"]
        == 0.2
    )


def test_itda_load_restores_provenance_for_describe(small_itda, tmp_path):
    small_itda.save_model(tmp_path)
    loaded = itda.ITDA.load(tmp_path)
    assert [loaded.describe(i) for i in range(5)] == [small_itda.describe(i) for i in range(5)]
    first = small_itda.describe(0)
    assert first.source == "stream" and first.token is not None and first.h is None


def test_describe_without_provenance_says_how_to_load_it(small_itda, tmp_path):
    small_itda.save_model(tmp_path)
    plain = SAE.load_from_disk(tmp_path)
    with pytest.raises(ValueError, match="no provenance loaded"):
        plain.describe(0)
    plain.load_provenance(tmp_path)
    assert plain.describe(1) == small_itda.describe(1)


def test_encode_refuses_activations_of_another_width(small_itda):
    with pytest.raises(ValueError, match="activation width 7 differs from the dictionary width 24"):
        small_itda.encode(torch.randn(3, 7))


def test_config_refuses_target_l0_larger_than_dictionary():
    with pytest.raises(ValueError, match=r"target_l0=9 is larger than the dictionary \(d_sae=8\)"):
        itda.ITDAConfig(d_in=4, d_sae=8, target_l0=9)


def test_loading_a_directory_of_another_architecture_is_refused(tmp_path):
    StandardSAE(StandardSAEConfig(d_in=4, d_sae=8)).save_model(tmp_path)
    with pytest.raises(ValueError, match="names architecture 'standard', not 'itda'"):
        itda.ITDA.load(tmp_path)


def test_weights_whose_shape_disagrees_with_cfg_are_refused_by_saelens_loader(small_itda, tmp_path):
    small_itda.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["d_sae"] += 1
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"weight W_dec has shape \(\d+, 24\) but cfg.json"):
        SAE.load_from_disk(tmp_path)


def test_missing_provenance_file_is_refused(small_itda, tmp_path):
    small_itda.save_model(tmp_path)
    (tmp_path / PROVENANCE_FILENAME).unlink()
    with pytest.raises(FileNotFoundError, match="provenance file .* is missing"):
        itda.ITDA.load(tmp_path)


def test_provenance_of_wrong_length_is_refused(small_itda, tmp_path):
    small_itda.save_model(tmp_path)
    assert small_itda.provenance is not None
    small_itda.provenance.select(torch.arange(3)).save(tmp_path)
    with pytest.raises(
        ValueError, match=f"has 3 rows but the dictionary has {small_itda.cfg.d_sae}"
    ):
        itda.ITDA.load(tmp_path)


def _hf_cache_repo(cache: Path, repo_id: str, files: dict[str, Path]) -> None:
    """Lay files out exactly as huggingface_hub's snapshot cache does (blobs, refs, snapshots)."""
    from huggingface_hub.constants import REPO_ID_SEPARATOR

    repo_dir = cache / ("models" + REPO_ID_SEPARATOR + repo_id.replace("/", REPO_ID_SEPARATOR))
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    for rel, src in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()  # LFS etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, blob)
        link = repo_dir / "snapshots" / revision / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_saelens_from_pretrained_loads_from_an_offline_hub_cache(small_itda, acts, tmp_path):
    saved = tmp_path / "saved"
    small_itda.save_model(saved)
    folder = "layer_1/itda_l0_4"
    files = {f"{folder}/{p.name}": p for p in saved.iterdir()}
    cache = tmp_path / "hub"
    _hf_cache_repo(cache, "org/itda-test", files)
    script = (
        "import sys, itda\n"  # light: sae_lens is imported after it and still loads ITDA dirs
        "assert 'sae_lens' not in sys.modules and 'torch' not in sys.modules\n"
        "import torch, sae_lens\n"
        "from huggingface_hub import try_to_load_from_cache\n"
        f"assert try_to_load_from_cache('org/itda-test', '{folder}/cfg.json')\n"
        f"sae = sae_lens.SAE.from_pretrained('org/itda-test', '{folder}')\n"
        f"d = itda.ITDA.from_pretrained_with_provenance('org/itda-test', '{folder}')\n"
        "x = torch.load(__import__('sys').argv[1])\n"
        "torch.save({'sae': sae.encode(x), 'd': d.encode(x), 'who': d.describe(2)._asdict(),\n"
        "            'type': type(sae).__name__}, __import__('sys').argv[2])\n"
    )
    x = acts[2048:2200]
    torch.save(x, tmp_path / "x.pt")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "hf_home"),
    }
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "x.pt"), str(tmp_path / "o.pt")],
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
    )
    out = torch.load(tmp_path / "o.pt")
    assert out["type"] == "ITDA"
    assert torch.equal(out["sae"], small_itda.encode(x))
    assert torch.equal(out["d"], small_itda.encode(x))
    assert out["who"] == small_itda.describe(2)._asdict()


def test_provenance_round_trips_flux_positions(tmp_path):
    prov = Provenance.for_batch(
        3,
        "sha256:abc",
        "double.1.img",
        {
            "prompt": torch.tensor([0, 0, 1]),
            "step": torch.tensor([0, 1, 0]),
            "timestep": torch.tensor([1.0, 0.5, 1.0]),
            "h": torch.tensor([2, 3, 4]),
            "w": torch.tensor([5, 6, 7]),
        },
        0,
    )
    prov.save(tmp_path)
    back = Provenance.load(tmp_path, 3)
    who = back.describe(1)
    assert (who.prompt, who.step, who.timestep, who.h, who.w, who.token) == (0, 1, 0.5, 3, 6, None)
    assert who.hook == "double.1.img" and who.source == "sha256:abc"
