"""The max-activation index keeps exactly the brute-force top images, resumes, and refuses bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _sae_flux_shared.commit import InjectedCrash, crash_after, is_temporary, operations
from sae_flux.interp.index import (
    FeatureSource,
    ImageBatch,
    IndexConfig,
    IndexReader,
    build_index,
    check_source,
    neuron_source,
    sparsify,
)

GRID = (4, 4)


def _stream(n_images=40, d=6, seed=0, per_batch=7):
    gen = torch.Generator().manual_seed(seed)
    acts_ITD = torch.randn(n_images, GRID[0] * GRID[1], d, generator=gen)
    batches = [ImageBatch(torch.arange(s, min(s + per_batch, n_images)), acts_ITD[s:s + per_batch], GRID)
               for s in range(0, n_images, per_batch)]
    return acts_ITD, batches


def _source(d=6, width=10, hook="double.1.img"):
    W_DF = torch.randn(d, width, generator=torch.Generator().manual_seed(1))
    return FeatureSource("toy", hook, d, width, "dictionary", encode=lambda x: torch.relu(x @ W_DF)), W_DF


def _brute_force(features_ITF, top_n):
    peak_FI = features_ITF.amax(1).T
    peaks, images = peak_FI.topk(top_n, dim=1)
    return peaks, images


def test_top_images_and_maps_equal_brute_force(tmp_path):
    acts_ITD, batches = _stream()
    source, W_DF = _source()
    index = build_index(IndexConfig(out=str(tmp_path / "idx"), top_n=5, top_k=10, images_per_shard=16,
                                    batch_images=4), source, iter(batches))
    features_ITF = torch.relu(acts_ITD @ W_DF)
    peaks, images = _brute_force(features_ITF, 5)
    for f in range(10):
        got_peaks, got_images = index.top_images(f)
        live = peaks[f] > 0
        assert torch.equal(got_images, images[f][live])
        assert torch.allclose(got_peaks, peaks[f][live])
        maps = index.maps(f, got_images)
        assert torch.allclose(maps, features_ITF[got_images, :, f].reshape(-1, *GRID))
    assert index.num_images == 40 and len(index.state["shards"]) == 3
    density = (features_ITF > 0).float().mean((0, 1))
    assert torch.allclose(index.density(), density)


def test_top_k_per_token_keeps_only_each_tokens_strongest_features(tmp_path):
    acts_ITD, batches = _stream()
    source, W_DF = _source()
    index = build_index(IndexConfig(out=str(tmp_path / "idx"), top_n=3, top_k=2), source, iter(batches))
    features_ITF = torch.relu(acts_ITD @ W_DF)
    kept = torch.zeros_like(features_ITF)
    values, slots = features_ITF.topk(2, dim=-1)
    kept.scatter_(-1, slots, values)
    peaks, images = _brute_force(kept, 3)
    for f in range(10):
        live = peaks[f] > 0
        assert torch.equal(index.top_images(f)[1], images[f][live])
        if live.any():
            got = index.maps(f, images[f][live])
            assert torch.allclose(got, kept[images[f][live], :, f].reshape(-1, *GRID))


def test_sparsify_drops_non_positive_values():
    features = torch.tensor([[[0.0, -1.0, 2.0], [3.0, 1.0, 0.5]]])
    img, tok, feat, val = sparsify(features, top_k=2)
    assert list(zip(tok.tolist(), feat.tolist(), val.tolist(), strict=True)) == [(0, 2, 2.0), (1, 0, 3.0), (1, 1, 1.0)]
    assert img.tolist() == [0, 0, 0]


def test_resume_after_a_crash_gives_the_uninterrupted_result(tmp_path):
    acts_ITD, batches = _stream()
    source, _ = _source()
    cfg = dict(top_n=4, top_k=10, images_per_shard=8, batch_images=4)
    full = build_index(IndexConfig(out=str(tmp_path / "full"), **cfg), source, iter(batches))

    def crashing():
        yield from batches[:3]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(IndexConfig(out=str(tmp_path / "part"), **cfg), source, crashing())
    assert IndexReader(tmp_path / "part").num_images == 21  # shards close at >= 8 images: 11 + 10
    with pytest.raises(FileExistsError, match="pass resume=True"):
        build_index(IndexConfig(out=str(tmp_path / "part"), **cfg), source, iter(batches))
    resumed = build_index(IndexConfig(out=str(tmp_path / "part"), **cfg), source, iter(batches), resume=True)
    assert resumed.num_images == 40
    for key in ("peak_FN", "image_FN", "active_F", "max_F"):
        assert torch.equal(resumed.top[key], full.top[key])
    with pytest.raises(ValueError, match=r"cannot resume the index in .*\(config\.top_n: saved 4, now 5\)"):
        build_index(IndexConfig(out=str(tmp_path / "part"), **{**cfg, "top_n": 5}), source, iter(batches), resume=True)


def _files(directory: Path) -> dict[str, bytes]:
    """Every file's bytes; ``index.json`` without ``config.out`` (the directory's own name)."""
    files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}
    state = json.loads(files["index.json"])
    del state["config"]["out"]
    files["index.json"] = json.dumps(state, sort_keys=True).encode()
    return files


def test_a_kill_between_any_two_file_operations_resumes_to_the_same_files(tmp_path):
    """The bug of issue 17: top table and index.json were two renames; a kill between them
    made --resume encode the last shard twice. Each flush is 6 operations (records shard, top
    table, index.json: written, renamed); operation 4 is that old crash point. The crash harness
    (tests/reliability) tries every one."""
    _, batches = _stream()
    source, _ = _source()
    cfg = dict(top_n=4, top_k=10, images_per_shard=8, batch_images=4)
    with crash_after(None):
        build_index(IndexConfig(out=str(tmp_path / "full"), **cfg), source, iter(batches))
        total = operations()
    reference = _files(tmp_path / "full")
    assert total >= 20 and "index.json" in reference
    for k in (1, 4, 6, 10, total - 1, total):
        out = tmp_path / f"killed-{k}"
        with crash_after(k), pytest.raises(InjectedCrash):
            build_index(IndexConfig(out=str(out), **cfg), source, iter(batches))
        for file in out.rglob("*.safetensors"):
            if not is_temporary(file.name):
                load_file(str(file))  # no half-written file is ever visible
        build_index(IndexConfig(out=str(out), **cfg), source, iter(batches), resume=True)
        assert _files(out) == reference, f"killed at file operation {k} of {total}"


def test_dictionary_with_another_hook_or_width_is_refused(tmp_path):
    _, batches = _stream()
    source, _ = _source(hook="double.0.img")
    with pytest.raises(ValueError, match="trained on hook 'double.0.img' but the activations come from 'double.1.img'"):
        build_index(IndexConfig(out=str(tmp_path / "a")), source, iter(batches), hook="double.1.img")
    with pytest.raises(ValueError, match="expects activations of width 6, the data has width 8"):
        check_source(_source()[0], "double.1.img", 8)
    with pytest.raises(ValueError, match="need an MLP hook"):
        neuron_source("double.1.img", 8)


def test_feature_out_of_range_and_missing_images_are_named(tmp_path):
    _, batches = _stream()
    index = build_index(IndexConfig(out=str(tmp_path / "idx")), _source()[0], iter(batches))
    with pytest.raises(IndexError, match="feature 10 is out of range: 'toy' has 10 features"):
        index.top_images(10)
    with pytest.raises(IndexError, match="feature -1 is out of range"):
        index.maps(-1, [0])
    with pytest.raises(FileNotFoundError, match="image 3 is missing from .*images; generate it"):
        index.load_image(3)
    with pytest.raises(FileNotFoundError, match="holds no max-activation index"):
        IndexReader(tmp_path / "nothing")


def test_empty_stream_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no images reached the index"):
        build_index(IndexConfig(out=str(tmp_path / "idx")), _source()[0], iter([]))


def test_config_rejects_zero_sizes():
    with pytest.raises(ValueError, match="top_n must be >= 1"):
        IndexConfig(out="x", top_n=0)


def test_itda_atoms_are_indexed_through_sae_lens_like_any_dictionary(tmp_path):
    from itda.build import BuildConfig, build
    from sae_flux.interp.index import dictionary_source

    acts_ITD, batches = _stream(n_images=24, d=6)
    itda = build(acts_ITD.flatten(0, 1).split(128), BuildConfig(target_l0=3, loss_threshold=0.3, max_atoms=40),
                 progress=False, metadata={"hook_name": "double.1.img"})
    itda.save_model(tmp_path / "itda")
    source = dictionary_source(tmp_path / "itda", "itda")
    assert (source.hook, source.d_in, source.width) == ("double.1.img", 6, itda.cfg.d_sae)
    index = build_index(IndexConfig(out=str(tmp_path / "idx"), top_n=3, top_k=itda.cfg.d_sae), source, iter(batches))
    with torch.no_grad():
        codes_ITF = itda.encode(acts_ITD.flatten(0, 1)).reshape(24, 16, -1).clamp(min=0)
    peaks, images = _brute_force(codes_ITF, 3)
    f = int(codes_ITF.amax((0, 1)).argmax())
    assert torch.equal(index.top_images(f)[1], images[f][peaks[f] > 0])
