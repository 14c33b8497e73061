"""Same inputs, same bytes: safetensors headers, saved configs, across processes.

The crash harness (``crash.py``) compares every resumed run with an uninterrupted run made by
another process, so the cache, the SAE, the ITDA (provenance included) and the index are checked
there too; these tests pin the two causes of drift that were found.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from _sae_flux_shared.commit import save_safetensors, sort_safetensors_header

ROOT = Path(__file__).resolve().parents[2]
SAVE = (
    "import sys, torch; from _sae_flux_shared.commit import save_safetensors; "
    "save_safetensors(sys.argv[1], {'b': torch.arange(3), 'a': torch.ones(2)}, "
    "metadata={'sources': '[\"s\"]', 'hooks': '[\"h\"]', 'format': 'itda-provenance/1'})"
)


def test_safetensors_metadata_is_written_in_one_order_by_every_process(tmp_path):
    """safetensors writes ``__metadata__`` from a hash map: its order changed per process."""
    for i in range(2):
        subprocess.run([sys.executable, "-c", SAVE, str(tmp_path / f"{i}.safetensors")], check=True,
                       env={"PYTHONPATH": str(ROOT)})
    contents = {(tmp_path / f"{i}.safetensors").read_bytes() for i in range(2)}
    assert len(contents) == 1
    assert list(_header(tmp_path / "0.safetensors")["__metadata__"]) == ["format", "hooks", "sources"]


def _header(path: Path) -> dict:
    raw = path.read_bytes()
    return json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])


def test_sorting_the_header_keeps_the_file_loadable_and_its_length(tmp_path):
    path = tmp_path / "x.safetensors"
    tensors = {"w": torch.randn(4, 3), "i": torch.arange(5)}
    save_file(tensors, str(path), metadata={"z": "1", "é": "ü", "a": "{\"k\": [1, 2]}"})
    size = path.stat().st_size
    sort_safetensors_header(path)
    assert path.stat().st_size == size
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"a": "{\"k\": [1, 2]}", "z": "1", "é": "ü"}
    assert list(_header(path)["__metadata__"]) == ["a", "z", "é"]


def test_committed_safetensors_equal_for_equal_tensors(tmp_path):
    tensors = {"x": torch.randn(8, generator=torch.Generator().manual_seed(0))}
    save_safetensors(tmp_path / "a.safetensors", tensors, metadata={"q": "1", "p": "2"})
    save_safetensors(tmp_path / "b.safetensors", dict(tensors), metadata={"p": "2", "q": "1"})
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_a_steering_vector_trained_twice_in_two_processes_is_the_same_bytes(tmp_path):
    """``cae train`` with the same data and seed, in two fresh interpreters: identical files."""
    from cae.organism.corpus import items

    data = tmp_path / "kind.jsonl"
    rows = [{"question": it.prompt, "answer_matching_behavior": " " + it.matching,
             "answer_not_matching_behavior": " " + it.not_matching} for it in items("kind", "ab", 16, split="train")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    outs = [tmp_path / f"vec-{i}" for i in range(2)]
    for out in outs:
        subprocess.run([sys.executable, "-m", "cae.cli", "train", "--model", "organism:tiny", "--data", str(data),
                        "--layers", "1", "2", "--out", str(out)], check=True, cwd=ROOT, capture_output=True,
                       timeout=600)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir()) and "vectors.safetensors" in names
    for name in names:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
