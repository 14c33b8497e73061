"""SteeringVector files, Hub cache round trips and arithmetic."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from cae import SteeringVector, VectorMeta
from tests.cae.conftest import tiny_llama


def make(width=8, layers=(1, 3), model="org/model", seed=0, **kw):
    gen = torch.Generator().manual_seed(seed)
    vectors = {layer: torch.randn(width, generator=gen) for layer in layers}
    return SteeringVector(vectors, VectorMeta(model, width, tuple(layers), n_pairs=4, **kw))


def test_save_load_round_trip_keeps_values_and_metadata(tmp_path):
    sv = make(extra={"behaviour": "kind"}, dataset_hash="abc")
    sv.save(tmp_path / "v")
    assert sorted(os.listdir(tmp_path / "v")) == ["steering_vector.json", "vectors.safetensors"]
    back = SteeringVector.load(tmp_path / "v")
    assert back.meta == sv.meta
    for layer in sv.vectors:
        assert torch.equal(back.vectors[layer], sv.vectors[layer])
    cfg = json.loads((tmp_path / "v" / "steering_vector.json").read_text())
    assert cfg["model_id"] == "org/model" and cfg["layers"] == [1, 3]


def test_trained_vector_round_trips(lm, pairs, tmp_path):
    sv = SteeringVector.train(lm, pairs, layers=[2])
    back = SteeringVector.from_pretrained(sv.save(tmp_path / "trained"))
    assert back.meta == sv.meta and torch.equal(back.vectors[2], sv.vectors[2])


def write_hub_cache(cache, repo_id, files, commit="0123456789abcdef0123456789abcdef01234567"):
    """Lay out files the way huggingface_hub's cache stores a downloaded model repo:
    blobs named by hash, snapshot symlinks into them, refs/main holding the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for src in files:
        data = src.read_bytes()
        blob = hashlib.sha256(data).hexdigest()
        (repo / "blobs" / blob).write_bytes(data)
        (snap / src.name).symlink_to(os.path.join("..", "..", "blobs", blob))


def test_from_pretrained_reads_a_hub_cache_offline(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    sv = make()
    folder = sv.save(tmp_path / "upload")
    write_hub_cache(tmp_path / "hub", "someone/kind-vector", sorted(folder.iterdir()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    info = huggingface_hub.scan_cache_dir(tmp_path / "hub")
    assert [r.repo_id for r in info.repos] == ["someone/kind-vector"]
    back = SteeringVector.from_pretrained("someone/kind-vector", cache_dir=tmp_path / "hub")
    assert back.meta == sv.meta
    assert all(torch.equal(back.vectors[k], sv.vectors[k]) for k in sv.vectors)
    with pytest.raises(FileNotFoundError, match=r"vector directory someone/missing does not exist, "
                       r"and it is no Hub repo that could be fetched either") as err:
        SteeringVector.from_pretrained("someone/missing", cache_dir=tmp_path / "hub")
    assert isinstance(err.value.__cause__, huggingface_hub.errors.LocalEntryNotFoundError)


def test_arithmetic_sums_scales_and_unions_layers():
    a, b = make(seed=1), make(layers=(3, 5), seed=2)
    total = a + b
    assert total.meta.layers == (1, 3, 5) and total.meta.n_pairs == 8
    torch.testing.assert_close(total.vectors[3], a.vectors[3] + b.vectors[3])
    torch.testing.assert_close(total.vectors[5], b.vectors[5])
    torch.testing.assert_close((a - b).vectors[1], a.vectors[1])
    torch.testing.assert_close((a - b).vectors[5], -b.vectors[5])
    torch.testing.assert_close((0.5 * a).vectors[1], a.vectors[1] / 2)
    torch.testing.assert_close((a / 4).vectors[3], a.vectors[3] * 0.25)
    torch.testing.assert_close((-a).vectors[3], -a.vectors[3])


def test_arithmetic_refuses_other_widths_models_and_zero_division():
    with pytest.raises(ValueError, match="cannot combine vectors of width 8 and 16"):
        _ = make() + make(width=16)
    with pytest.raises(ValueError, match="cannot combine vectors of different models"):
        _ = make() - make(model="other/model")
    with pytest.raises(ValueError, match="divide a steering vector by zero"):
        _ = make() / 0
    with pytest.raises(TypeError, match="can only combine with a SteeringVector"):
        _ = make() + 1.0


def test_bad_vectors_and_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"layer 1: vector shape \(4,\) does not match hidden_size 8"):
        SteeringVector({1: torch.zeros(4)}, VectorMeta("m", 8, (1,)))
    with pytest.raises(ValueError, match="layer 1: vector has NaN"):
        SteeringVector({1: torch.full((8,), float("nan"))}, VectorMeta("m", 8, (1,)))
    with pytest.raises(ValueError, match="at least one layer"):
        SteeringVector({}, VectorMeta("m", 8, ()))
    with pytest.raises(FileNotFoundError, match="not a saved steering vector"):
        SteeringVector.load(tmp_path)
    make().save(tmp_path / "v")
    (tmp_path / "v" / "steering_vector.json").write_text("{\n oops")
    with pytest.raises(ValueError, match=r"steering_vector\.json:2: malformed JSON"):
        SteeringVector.load(tmp_path / "v")


def test_random_vector_matches_model_width():
    sv = SteeringVector.random(tiny_llama(hidden=48), [0, 2], norm=2.0)
    assert sv.meta.hidden_size == 48
    assert sv.vectors[2].norm().item() == pytest.approx(2.0)
