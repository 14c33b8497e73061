"""Activation caches: contents, crash-safe resume, refusals with clear messages, the reader."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sae_flux import cache as cache_mod
from sae_flux.cache import CacheConfig, CacheReader, Manifest, read_prompts, write_cache
from sae_flux.cli import main as cli_main

PROMPTS = [f"a {c} {s} on the {p}" for c in ("red", "blue", "green") for s in ("circle", "square") for p in ("left", "right")]


@pytest.fixture
def prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return path


def _cfg(prompt_file: Path, out: Path, **kw) -> CacheConfig:
    base = dict(model="tiny", prompts=str(prompt_file), hooks=["double.1.img", "double.0.txt"],
                out=str(out), num_inference_steps=2, batch_size=2, shard_prompts=4)
    base.update(kw)
    return CacheConfig(**base)


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_cache_holds_exactly_what_capture_returns(tiny_flux, prompt_file, tmp_path):
    manifest = write_cache(_cfg(prompt_file, tmp_path / "c"), flux=tiny_flux)
    assert manifest.complete and len(manifest.shards) == 3
    acts = tiny_flux.capture(PROMPTS, ["double.1.img", "double.0.txt"], num_inference_steps=2, batch_size=2)
    for hook in ("double.1.img", "double.0.txt"):
        reader = CacheReader(tmp_path / "c", hook=hook)
        parts = list(reader.iter_shards())
        stored = torch.cat([a for a, _ in parts])
        assert torch.equal(stored, acts.tokens(hook))
        prov = acts.provenance(hook)
        for key in prov:
            got = torch.cat([p[key] for _, p in parts])
            assert torch.equal(got.to(prov[key].dtype), prov[key]), key
        assert reader.num_tokens == stored.shape[0]


def test_resume_after_kill_9_reproduces_the_uninterrupted_cache(prompt_file, tmp_path):
    reference = tmp_path / "ref"
    write_cache(_cfg(prompt_file, reference, shard_prompts=2))
    crashed = tmp_path / "crashed"
    script = (
        "import sys; from sae_flux.cache import *; "
        f"write_cache(CacheConfig(model='tiny', prompts={str(prompt_file)!r}, hooks=['double.1.img','double.0.txt'], "
        f"out={str(crashed)!r}, num_inference_steps=2, batch_size=2, shard_prompts=2))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (crashed / "manifest.json").exists() and Manifest.load(crashed).shards:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = Manifest.load(crashed)
    assert not partial.complete, "the run finished before it could be killed"
    write_cache(_cfg(prompt_file, crashed, shard_prompts=2), resume=True)
    assert _files(crashed) == _files(reference)


def test_crash_between_shard_and_manifest_resumes_identically(tiny_flux, prompt_file, tmp_path, monkeypatch):
    reference = tmp_path / "ref"
    write_cache(_cfg(prompt_file, reference), flux=tiny_flux)
    real_save, calls = Manifest.save, []

    def crash_on_third_save(self, directory):
        calls.append(1)
        if len(calls) == 3:  # initial manifest, shard 0, then die after writing shard 1's files
            raise KeyboardInterrupt("simulated crash")
        real_save(self, directory)

    monkeypatch.setattr(Manifest, "save", crash_on_third_save)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        write_cache(_cfg(prompt_file, out), flux=tiny_flux)
    monkeypatch.setattr(Manifest, "save", real_save)
    assert len(Manifest.load(out).shards) == 1
    write_cache(_cfg(prompt_file, out), resume=True, flux=tiny_flux)
    assert _files(out) == _files(reference)


def test_disk_full_leaves_no_partial_shard_and_a_valid_manifest(tiny_flux, prompt_file, tmp_path, monkeypatch):
    real_save_file, calls = cache_mod.save_file, []

    def fill_disk(tensors, path):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save_file(tensors, path)

    monkeypatch.setattr(cache_mod, "save_file", fill_disk)
    out = tmp_path / "c"
    with pytest.raises(OSError, match="disk full while writing .*shard-00001.*rerun with --resume"):
        write_cache(_cfg(prompt_file, out), flux=tiny_flux)
    assert not list(out.rglob("*.tmp"))
    assert not (out / "double.1.img" / "shard-00001.safetensors").exists()
    assert [s.index for s in Manifest.load(out).shards] == [0]
    monkeypatch.setattr(cache_mod, "save_file", real_save_file)
    assert write_cache(_cfg(prompt_file, out), resume=True, flux=tiny_flux).complete


def test_other_settings_are_refused_with_what_differs(tiny_flux, prompt_file, tmp_path):
    out = tmp_path / "c"
    write_cache(_cfg(prompt_file, out), flux=tiny_flux)
    with pytest.raises(ValueError, match=r"other settings.*\n.*seed: cache has 0, requested 7"):
        write_cache(_cfg(prompt_file, out, seed=7), resume=True, flux=tiny_flux)


def test_resume_without_manifest_is_refused(tiny_flux, prompt_file, tmp_path):
    with pytest.raises(FileNotFoundError, match="--resume given but .* holds no cache"):
        write_cache(_cfg(prompt_file, tmp_path / "empty"), resume=True, flux=tiny_flux)


def test_unfinished_cache_needs_resume(tiny_flux, prompt_file, tmp_path):
    out = tmp_path / "c"
    cfg = _cfg(prompt_file, out)
    manifest = Manifest(cache_mod.settings_of(cfg, tiny_flux, PROMPTS), {"double.1.img": 32, "double.0.txt": 32}, "float32", len(PROMPTS))
    out.mkdir()
    manifest.save(out)
    with pytest.raises(FileExistsError, match="unfinished cache .* pass --resume"):
        write_cache(cfg, flux=tiny_flux)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "has no prompts"), (b"\n  \n", "has no prompts"), (b"a cat\x00\x01", "looks binary"),
     (b"a cat\n\xff\xfe dog", "not UTF-8 \\(bad byte on line 2\\)")],
)
def test_bad_prompt_files_are_named(tmp_path, content, message):
    path = tmp_path / "p.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_prompts(path)


def test_corrupted_and_truncated_shards_are_named(tiny_flux, prompt_file, tmp_path):
    out = tmp_path / "c"
    write_cache(_cfg(prompt_file, out, hooks=["double.1.img"]), flux=tiny_flux)
    shard = out / "double.1.img" / "shard-00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="shard-00001.safetensors is corrupted or truncated"):
        list(CacheReader(out).iter_shards())
    shard.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="shard-00001.safetensors is corrupted"):
        list(CacheReader(out).batches(4))
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.safetensors listed in the manifest is missing"):
        list(CacheReader(out).iter_shards())


def test_reader_batches_cover_every_token_once_per_epoch(tiny_flux, prompt_file, tmp_path):
    out = tmp_path / "c"
    write_cache(_cfg(prompt_file, out, hooks=["double.1.img"]), flux=tiny_flux)
    reader = CacheReader(out)
    everything = torch.cat([a for a, _ in reader.iter_shards()])
    batches = list(reader.batches(batch_size=64, seed=3, buffer_tokens=300))
    assert all(b.shape == (64, 32) for b in batches)
    seen = torch.cat(batches)
    assert seen.shape[0] == everything.shape[0] // 64 * 64
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert set(key(seen)) <= set(key(everything))
    assert not torch.equal(seen, everything[: seen.shape[0]]), "batches are not shuffled"
    again = torch.cat(list(reader.batches(batch_size=64, seed=3, buffer_tokens=300)))
    assert torch.equal(seen, again)
    two = list(reader.batches(batch_size=64, seed=3, epochs=2))
    assert len(two) == 2 * (everything.shape[0] // 64)
    endless = reader.batches(batch_size=64, epochs=None)
    assert len([next(endless) for _ in range(3 * len(batches))]) == 3 * len(batches)
    too_big = everything.shape[0] + 1
    with pytest.raises(ValueError, match=rf"holds {everything.shape[0]:,} tokens, fewer than one batch of {too_big:,}"):
        next(reader.batches(batch_size=too_big, epochs=None))


def test_multi_hook_cache_needs_a_hook_name(tiny_flux, prompt_file, tmp_path):
    out = tmp_path / "c"
    write_cache(_cfg(prompt_file, out), flux=tiny_flux)
    with pytest.raises(ValueError, match=r"several hooks \[.*double.1.img.*\]; name one"):
        CacheReader(out)
    with pytest.raises(ValueError, match="hook 'single.0.img' is not in this cache"):
        CacheReader(out, hook="single.0.img")


def test_cli_writes_a_cache_and_reports_errors(prompt_file, tmp_path, caplog):
    out = tmp_path / "cli"
    argv = ["cache", "--model", "tiny", "--prompts", str(prompt_file), "--hooks", "double.1.img",
            "--out", str(out), "--num-inference-steps", "1", "--batch-size", "4", "--shard-prompts", "8"]
    assert cli_main(argv) == 0
    assert CacheReader(out).num_tokens == len(PROMPTS) * 64
    assert cli_main(argv[:-6] + ["--hooks", "double.9.img", "--out", str(tmp_path / "x")]) == 2
    assert "out of range" in caplog.text
    assert cli_main(["cache", "--model", "tiny", "--prompts", str(prompt_file), "--hooks", "double.1.img",
                     "--out", str(tmp_path / "y"), "--resume"]) == 2
    assert "holds no cache" in caplog.text


def test_hooks_cli_lists_every_hook_point_with_the_delta_forms(capsys):
    assert cli_main(["hooks", "--model", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "2 double, 2 single blocks" in out and "double.1.mlp\ttransformer.transformer_blocks.1.ff.net.0" in out
    names = [line.split("\t")[0] for line in out.splitlines()[1:]]
    assert names[:5] == ["double.0.mlp", "double.0.txt", "double.0.txt.delta", "double.0.img", "double.0.img.delta"]
    assert len(names) == 2 * 5 + 2 * 4 and "single.1.img.delta" in names
    assert cli_main(["hooks", "--model", "tiny", "--no-delta"]) == 0
    assert not any(".delta" in line for line in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize(
    ("change", "message"),
    [({"hooks": []}, "hooks is empty"), ({"dtype": "int8"}, "dtype 'int8' is not one of"),
     ({"batch_size": 3, "shard_prompts": 4}, "must be a multiple of batch_size"),
     ({"batch_size": 0}, "must be >= 1")],
)
def test_bad_cache_configs_are_refused(prompt_file, tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        _cfg(prompt_file, tmp_path / "c", **change)
