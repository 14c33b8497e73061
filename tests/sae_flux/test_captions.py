"""Caption sources (text, JSONL, datasets, parquet, webdataset tars) and token-sampled caches."""

from __future__ import annotations

import io
import json
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import torch

from sae_flux.cache import CacheConfig, CacheReader, write_cache
from sae_flux.captions import Captions, detect_kind
from sae_flux.sampling import positions
from sae_flux.train import TrainConfig, train_sae
from sae_flux.train_config import DataConfig, DictionaryConfig, OptimConfig

CAPTIONS = ["a red circle", "a cat", "a blue square on the left", "a red circle", "a dog in the city",
            "a small green triangle", "a cat", "a house on the top", "a yellow car", "a bird in the sky"]
UNIQUE = list(dict.fromkeys(CAPTIONS))


def _tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as archive:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def _webdataset(directory: Path, captions: list[str]) -> Path:
    """Two shards; even samples carry .txt, odd ones only .json with extra fields; all carry an image."""
    directory.mkdir()
    samples = []
    for i, caption in enumerate(captions):
        files = {"jpg": b"\xff\xd8 not really a jpeg"}
        if i % 2:
            files["json"] = json.dumps({"caption": caption, "width": 512, "key": f"{i:06d}"}).encode()
        else:
            files["txt"] = caption.encode()
        samples.append((f"{i:06d}", files))
    half = len(samples) // 2
    _tar(directory / "shard-00000.tar", samples[:half])
    _tar(directory / "shard-00001.tar", samples[half:])
    return directory


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    import datasets

    root = tmp_path_factory.mktemp("captions")
    text = root / "captions.txt"
    text.write_text("\n".join(CAPTIONS) + "\n\n")
    jsonl = root / "captions.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "text": c}) + "\n" for i, c in enumerate(CAPTIONS)))
    dataset = datasets.Dataset.from_dict({"caption": CAPTIONS, "id": list(range(len(CAPTIONS)))})
    dataset.save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    dataset.select(range(5)).to_parquet(str(root / "parquet" / "part-0.parquet"))
    dataset.select(range(5, 10)).to_parquet(str(root / "parquet" / "part-1.parquet"))
    return {"text": text, "jsonl": jsonl, "datasets": root / "saved", "parquet": root / "parquet",
            "webdataset": _webdataset(root / "wds", CAPTIONS)}


@pytest.mark.parametrize("kind", ["text", "jsonl", "datasets", "parquet", "webdataset"])
def test_every_source_kind_streams_the_same_captions_in_order(sources, kind):
    field = "text" if kind == "jsonl" else "caption"
    captions = Captions(sources[kind], field=field)
    assert detect_kind(sources[kind]) == kind
    assert list(captions) == CAPTIONS and len(captions) == len(CAPTIONS)
    record = captions.record()
    assert record["kind"] == kind and record["read"] == 10 and record["duplicates"] == 0
    assert record["source_hash"] == Captions(sources["text"]).record()["source_hash"]  # same captions, same hash


def test_dedup_drops_later_repeats_and_counts_them(sources):
    captions = Captions(sources["webdataset"], dedup=True)
    assert list(captions) == UNIQUE and captions.record()["duplicates"] == 2


def test_limit_is_a_seeded_subset_kept_in_source_order(sources):
    first = Captions(sources["jsonl"], field="text", limit=4, seed=1, dedup=True)
    again = Captions(sources["jsonl"], field="text", limit=4, seed=1, dedup=True)
    other = Captions(sources["jsonl"], field="text", limit=4, seed=2, dedup=True)
    assert list(first) == list(again) and len(first) == 4
    assert list(first) != list(other)
    assert [UNIQUE.index(c) for c in first] == sorted(UNIQUE.index(c) for c in first)
    assert set(first) <= set(UNIQUE)
    assert list(Captions(sources["text"], limit=50)) == CAPTIONS  # a limit above the source keeps all


def test_consecutive_slices_continue_one_stream_and_earlier_ones_restart(sources):
    captions = Captions(sources["datasets"])
    assert captions[0:3] + captions[3:7] + captions[7:10] == CAPTIONS
    assert captions[2:4] == CAPTIONS[2:4] and captions[-1] == CAPTIONS[-1]


def test_a_limited_source_is_never_held_in_memory(tmp_path):
    path = tmp_path / "big.txt"
    with path.open("w") as handle:
        for i in range(200_000):
            handle.write(f"caption number {i} of a large caption file\n")
    size = path.stat().st_size  # ~9 MB
    tracemalloc.start()
    captions = Captions(path, limit=5, seed=0)
    kept = list(captions)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(kept) == 5 and captions.record()["read"] == 200_000
    assert peak < size / 20, f"peak {peak:,} B while reading a {size:,} B source"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _write(d / "c.jsonl", '{"text": "a cat"}\n'), "record 1 has no field 'caption' \\(it has \\['text'\\]\\): pass --caption-field"),
        (lambda d: _write(d / "c.jsonl", '{"caption": "a cat"}\nnot json\n'), "record 2 is not JSON"),
        (lambda d: _tar(d / "c.tar", [("0", {"json": b'{"url": "x"}'})]), "sample 0.json has no field 'caption' \\(it has \\['url'\\]\\)"),
        (lambda d: _truncated_tar(d / "c.tar"), "tar shard .*c.tar is corrupt or truncated"),
        (lambda d: _write(d / "c.tar", "this is not a tar archive at all" * 40), "tar shard .*c.tar is corrupt or truncated"),
        (lambda d: _saved(d / "saved", column="text"), "has no column 'caption' \\(it has \\['text'\\]\\)"),
        (lambda d: _saved_dict(d / "dict"), "holds the splits \\['test', 'train'\\]: give one split's directory"),
        (lambda d: d / "missing.jsonl", "caption source .*missing.jsonl does not exist"),
        (lambda d: _write(d / "empty.txt", "\n \n"), "has no prompts"),
    ],
)
def test_bad_caption_sources_fail_in_one_clear_line(tmp_path, make, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        Captions(make(tmp_path))
    assert "\n" not in str(info.value)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _truncated_tar(path: Path) -> Path:
    _tar(path, [(f"{i:03d}", {"txt": f"caption {i}".encode() * 200}) for i in range(8)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])
    return path


def _saved(path: Path, column: str) -> Path:
    import datasets

    datasets.Dataset.from_dict({column: ["a cat"]}).save_to_disk(str(path))
    return path


def _saved_dict(path: Path) -> Path:
    import datasets

    split = datasets.Dataset.from_dict({"caption": ["a cat"]})
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(path))
    return path


# -- token sampling ------------------------------------------------------------------------------

HOOKS = ["double.1.img", "double.1.mlp", "single.0.txt"]


def _sampled_cache(tiny_flux, source: Path, out: Path, k: int = 8) -> CacheReader:
    cfg = CacheConfig(model="tiny", prompts=str(source), hooks=HOOKS, out=str(out), num_inference_steps=2,
                      batch_size=2, shard_prompts=4, seed=3, tokens_per_image=k, dedup=True)
    write_cache(cfg, flux=tiny_flux)
    return CacheReader(out, hook="double.1.img")


@pytest.mark.parametrize("kind", ["webdataset", "datasets"])
def test_a_token_sampled_cache_reads_back_with_correct_provenance(tiny_flux, sources, tmp_path, kind):
    reader = _sampled_cache(tiny_flux, sources[kind], tmp_path / "cache")
    manifest = reader.manifest
    assert manifest.settings["tokens_per_image"] == 8
    assert manifest.settings["captions"]["kind"] == kind and manifest.settings["captions"]["duplicates"] == 2
    assert manifest.num_prompts == len(UNIQUE) and reader.num_tokens == len(UNIQUE) * 2 * 8
    full = tiny_flux.capture(UNIQUE, ["double.1.img"], num_inference_steps=2, seed=3, batch_size=2)
    acts, prov = zip(*reader.iter_shards(), strict=True)
    acts_ND = torch.cat(acts)
    prov_cat = {key: torch.cat([p[key] for p in prov]) for key in prov[0]}
    cols = full.grid[1]
    expected_rows, expected_hw = [], []
    for p in range(len(UNIQUE)):
        for s in range(2):
            kept = positions(64, 8, seed=3, prompt=p, step=s)
            expected_rows.append(full["double.1.img"][p, s, kept])
            expected_hw.append(torch.stack([kept // cols, kept % cols], dim=1))
    assert torch.equal(acts_ND, torch.cat(expected_rows))
    assert torch.equal(torch.stack([prov_cat["h"], prov_cat["w"]], dim=1).long(), torch.cat(expected_hw))
    assert prov_cat["prompt"].tolist() == [p for p in range(len(UNIQUE)) for _ in range(16)]
    assert prov_cat["step"].tolist() == [s for _ in UNIQUE for s in (0, 1) for _ in range(8)]
    # every image hook keeps the same positions; text streams keep every token
    mlp = CacheReader(tmp_path / "cache", hook="double.1.mlp")
    mlp_prov = torch.cat([p["h"] * cols + p["w"] for _, p in mlp.iter_shards()])
    assert torch.equal(mlp_prov, prov_cat["h"] * cols + prov_cat["w"])
    txt = CacheReader(tmp_path / "cache", hook="single.0.txt")
    assert txt.num_tokens == len(UNIQUE) * 2 * tiny_flux.defaults.max_sequence_length


def test_a_token_sampled_cache_trains_an_sae_through_the_same_reader(tiny_flux, sources, tmp_path):
    _sampled_cache(tiny_flux, sources["webdataset"], tmp_path / "cache", k=32)
    cfg = TrainConfig(out=str(tmp_path / "sae"), data=DataConfig(cache=str(tmp_path / "cache"), hook="double.1.img",
                                                                 buffer_tokens=256),
                      sae=DictionaryConfig(expansion_factor=2, k=4, normalize_tokens=256),
                      optim=OptimConfig(total_tokens=20 * 64, batch_size=64, lr=1e-3), eval_tokens=256)
    result = train_sae(cfg)
    assert result.steps == 20 and result.metrics.l0 == 4
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["d_in"] == 32


def test_more_tokens_per_image_than_the_image_has_is_one_clear_line(tiny_flux, sources, tmp_path):
    cfg = CacheConfig(model="tiny", prompts=str(sources["text"]), hooks=["double.1.img"], out=str(tmp_path / "c"),
                      tokens_per_image=65)
    with pytest.raises(ValueError, match="--tokens-per-image 65 is larger than the 64 image tokens of a 32 px image \\(8 x 8 grid\\)"):
        write_cache(cfg, flux=tiny_flux)
    assert not (tmp_path / "c").exists()


def test_the_cache_cli_reads_a_jsonl_field(sources, tmp_path):
    from sae_flux.cli import main as cli_main

    out = tmp_path / "cli"
    argv = ["cache", "--model", "tiny", "--prompts", str(sources["jsonl"]), "--caption-field", "text",
            "--limit", "3", "--tokens-per-image", "4", "--hooks", "double.1.img", "--out", str(out),
            "--num-inference-steps", "1", "--batch-size", "1", "--shard-prompts", "2"]
    assert cli_main(argv) == 0
    reader = CacheReader(out)
    assert reader.num_tokens == 3 * 4 and reader.manifest.settings["captions"]["field"] == "text"
