"""Vector files: the versioned ``steering_vector.json`` layout (and the old ``cfg.json`` one),
llama.cpp control-vector GGUF export/import, and the plain ``{layer: tensor}`` form of
steering-vectors and repeng."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from cae import SteeringVector, VectorMeta
from cae.llamacpp import from_gguf, to_gguf
from tests.cae.conftest import tiny_llama

gguf = pytest.importorskip("gguf")  # the `gguf` extra (also in `dev`)


def make(layers=(1, 3), width=32, seed=0, **kw) -> SteeringVector:
    gen = torch.Generator().manual_seed(seed)
    vectors = {layer: torch.randn(width, generator=gen) for layer in layers}
    meta = VectorMeta("random-llama-32", width, tuple(layers), read="answer", aggregator="mean",
                      n_pairs=5, dataset_hash="abc123", extra={"behaviour": "kind"}, **kw)
    return SteeringVector(vectors, meta)


def test_the_file_is_named_for_itself_and_versioned(tmp_path):
    sv = make(site="mlp")
    sv.save(tmp_path / "v")
    meta = json.loads((tmp_path / "v" / "steering_vector.json").read_text())
    assert not (tmp_path / "v" / "cfg.json").exists()
    assert meta["format"] == "cae.steering_vector" and meta["format_version"] == 2
    assert (meta["model_id"], meta["site"], meta["read"], meta["normalization"]) == (
        "random-llama-32", "mlp", "answer", "none")
    assert meta["layers"] == [1, 3] and meta["hidden_size"] == 32
    back = SteeringVector.load(tmp_path / "v")
    assert back.meta == sv.meta
    assert all(torch.equal(back.vectors[k], sv.vectors[k]) for k in sv.vectors)


def test_norm_matching_is_recorded_as_the_normalisation(tmp_path):
    sv = make().norm_matched({1: 4.0, 3: 2.0})
    back = SteeringVector.load(sv.save(tmp_path / "v"))
    assert back.meta.normalization == "norm_matched"
    assert back.meta.extra["norm_matched"] == {"1": 4.0, "3": 2.0}


def test_the_old_cfg_json_layout_still_loads_with_a_deprecation_warning(tmp_path):
    sv = make()
    folder = sv.save(tmp_path / "old")
    old = {k: v for k, v in asdict(sv.meta).items() if k not in ("site", "normalization")}
    (folder / "cfg.json").write_text(json.dumps({**old, "format_version": 1}))
    (folder / "steering_vector.json").unlink()
    with pytest.warns(DeprecationWarning, match=r"format-1 layout \(cfg\.json\); it is deprecated"):
        back = SteeringVector.load(folder)
    assert back.meta == replace(sv.meta, format_version=1)
    assert torch.equal(back.vectors[3], sv.vectors[3])
    back.save(folder)  # re-saving writes the new layout, which then loads silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SteeringVector.load(folder).meta.format_version == 2


def test_a_file_of_another_format_or_newer_version_is_refused(tmp_path):
    folder = make().save(tmp_path / "v")
    meta = json.loads((folder / "steering_vector.json").read_text())
    (folder / "steering_vector.json").write_text(json.dumps({**meta, "format_version": 9}))
    with pytest.raises(ValueError, match="format_version 9 is newer than this library's 2"):
        SteeringVector.load(folder)
    (folder / "steering_vector.json").write_text(json.dumps({**meta, "format": "sae_lens"}))
    with pytest.raises(ValueError, match="not a cae steering vector"):
        SteeringVector.load(folder)


# -- llama.cpp control vectors ------------------------------------------------------------


def test_gguf_round_trip_is_exact_and_follows_llama_cpp_names(tmp_path):
    sv = make(layers=(1, 2, 3))
    path = to_gguf(sv, tmp_path / "kind.gguf", model_hint="llama")
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    count = reader.get_field("controlvector.layer_count")
    assert count.contents() == 3 and count.types == [gguf.GGUFValueType.INT32]
    assert [t.name for t in reader.tensors] == ["direction.1", "direction.2", "direction.3"]
    for t in reader.tensors:  # llama.cpp's loader: 1-D F32 tensors of one width
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [32]
    back = from_gguf(path)
    assert back.meta == sv.meta
    for layer in sv.vectors:
        assert torch.equal(back.vectors[layer], sv.vectors[layer])


def test_a_gguf_direction_k_steers_block_k_as_llama_cpp_adds_it(tmp_path, tokenizer):
    """llama.cpp adds direction.k to block k's output (0-based) at every position."""
    hf = tiny_llama()
    sv = make(layers=(2,))
    back = from_gguf(to_gguf(sv, tmp_path / "v.gguf", multiplier=1.5), hf)
    enc = tokenizer("story : your friend is sad . so", return_tensors="pt")
    handle = hf.model.layers[2].register_forward_hook(lambda _m, _i, o: o + 1.5 * sv.vectors[2])
    with torch.no_grad():
        reference = hf(**enc).logits
        handle.remove()
        with back.apply(hf, 1.0, positions="all"):
            steered = hf(**enc).logits
    torch.testing.assert_close(steered, reference, atol=0, rtol=0)


def write_like_repeng(path, directions, model_type="llama"):
    """The file repeng's ControlVector.export_gguf writes (no cae metadata; uint32 count)."""
    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", model_type)
    writer.add_uint32("controlvector.layer_count", len(directions))
    for layer, vec in directions.items():
        writer.add_tensor(f"direction.{layer}", vec)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_foreign_gguf_imports_against_a_model(tmp_path):
    hf = tiny_llama()
    dirs = {1: np.arange(32, dtype=np.float32), 3: np.ones(32, dtype=np.float32)}
    sv = from_gguf(write_like_repeng(tmp_path / "r.gguf", dirs), hf)
    assert sv.meta.model_id == "random-llama-32" and sv.meta.layers == (1, 3)
    assert sv.meta.extra == {"model_hint": "llama", "source": "gguf"}
    assert torch.equal(sv.vectors[1], torch.arange(32.0))


def test_a_gguf_that_does_not_fit_the_model_is_one_line(tmp_path):
    hf = tiny_llama()  # 4 blocks of width 32
    wide = write_like_repeng(tmp_path / "w.gguf", {1: np.zeros(48, dtype=np.float32)})
    with pytest.raises(ValueError, match=r"w\.gguf: directions have width 48 but LlamaForCausalLM "
                                         r"has hidden size 32$"):
        from_gguf(wide, hf)
    deep = write_like_repeng(tmp_path / "d.gguf", {k: np.zeros(32, np.float32) for k in (1, 7)})
    with pytest.raises(ValueError, match=r"d\.gguf: direction\.7 steers decoder block 7, but the "
                                         r"model has 4 decoder blocks \(valid 1\.\.3\)$"):
        from_gguf(deep, hf)


def test_what_llama_cpp_cannot_hold_is_refused_on_export(tmp_path):
    with pytest.raises(ValueError, match="llama.cpp never steers decoder block 0"):
        to_gguf(make(layers=(0, 1)), tmp_path / "a.gguf")
    with pytest.raises(ValueError, match="steer block outputs; this vector's site is 'attn'"):
        to_gguf(make(site="attn"), tmp_path / "b.gguf")
    writer = gguf.GGUFWriter(str(tmp_path / "z.gguf"), "controlvector")
    writer.add_tensor("direction.0", np.zeros(4, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="direction.0 is not a valid llama.cpp control-vector"):
        from_gguf(tmp_path / "z.gguf")


# -- steering-vectors / repeng layer -> tensor form ---------------------------------------


def test_layer_tensor_form_round_trips_and_accepts_numpy():
    sv = make(site="attn")
    layer_tensors = sv.to_layer_tensors()
    assert sorted(layer_tensors) == [1, 3] and torch.equal(layer_tensors[3], sv.vectors[3])
    layer_tensors[3].zero_()  # a copy: the vector is untouched
    assert sv.vectors[3].abs().sum() > 0
    hf = tiny_llama()
    back = SteeringVector.from_layer_tensors(make().to_layer_tensors(), hf, site="attn")
    assert back.meta.model_id == "random-llama-32" and back.meta.site == "attn"
    assert torch.equal(back.vectors[1], make().vectors[1])
    repeng_like = {2: np.full(32, 0.5, dtype=np.float32)}
    assert SteeringVector.from_layer_tensors(repeng_like).vectors[2].sum().item() == 16.0
    with pytest.raises(ValueError, match="layer tensors have width 8 but the model's hidden size "
                                         "is 32"):
        SteeringVector.from_layer_tensors({1: torch.zeros(8)}, hf)
    with pytest.raises(ValueError, match="layer 9 is outside the model"):
        SteeringVector.from_layer_tensors({9: torch.zeros(32)}, hf)
