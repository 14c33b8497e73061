"""Crash safety: a job killed at any file operation resumes to the files of an uninterrupted run.

The default tier kills in-process (:func:`_sae_flux_shared.commit.crash_after` raises at the k-th file
operation, as a kill would stop there) at a few points of SAE training and VLM explanation; the
cache, the ITDA build and the index have theirs beside their own tests. The ``slow`` tier runs
the full harness (``tests/reliability/crash.py``): real SIGKILLs of the five command lines,
ten per job.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability.crash import corrupt_files, files
from vlm_server import VLMServer

from _sae_flux_shared.commit import InjectedCrash, crash_after, operations
from sae_flux.interp.chat import ChatConfig, OpenAIChat
from sae_flux.interp.config import IndexConfig, SelectConfig
from sae_flux.interp.explain import VLMInterpreter, interpret
from sae_flux.interp.index import FeatureSource, ImageBatch, build_index
from sae_flux.organism.world import PALETTE
from sae_flux.sources import TensorSource
from sae_flux.train import DictionaryConfig, OptimConfig, TrainConfig, train_sae


def _train_cfg(out: Path) -> TrainConfig:
    return TrainConfig(out=str(out), sae=DictionaryConfig(expansion_factor=2, k=4, normalize_tokens=256),
                       optim=OptimConfig(total_tokens=12 * 64, batch_size=64, lr=1e-3),
                       checkpoint_every=4, log_every=2, eval_tokens=256)


def test_training_killed_at_a_commit_resumes_to_the_same_files(tmp_path):
    acts = torch.randn(2048, 16, generator=torch.Generator().manual_seed(0))
    with crash_after(None):
        train_sae(_train_cfg(tmp_path / "ref"), source=TensorSource(acts))
        total = operations()
    expected = files(tmp_path / "ref")
    assert {"cfg.json", "sae_weights.safetensors", "log.jsonl", "train_config.json"} <= set(expected)
    for k in (total // 2, total - 2):  # between two checkpoints; while saving the dictionary
        out = tmp_path / f"killed-{k}"
        with crash_after(k), pytest.raises(InjectedCrash):
            train_sae(_train_cfg(out), source=TensorSource(acts))
        assert corrupt_files(out) == []
        train_sae(_train_cfg(out), resume=True, source=TensorSource(acts))
        got = files(out)
        assert got.keys() == expected.keys()
        differ = [name for name in expected if got[name] != expected[name]]
        assert differ == [], f"killed at file operation {k} of {total}"


def _index_with_images(root: Path) -> Path:
    """A 12-image index over 4 toy features whose images are flat palette colours."""
    colours = list(PALETTE.values())
    acts_ITD = torch.zeros(12, 4, 4)
    for i in range(12):
        acts_ITD[i, :, i % 4] = 1.0 + i / 12
    source = FeatureSource("toy", "double.1.img", 4, 4, "dictionary", encode=torch.relu)
    out = root / "index"
    build_index(IndexConfig(out=str(out), top_n=3), source, iter([ImageBatch(torch.arange(12), acts_ITD, (2, 2))]))
    (out / "images").mkdir()
    for i in range(12):
        pixels = np.full((16, 16, 3), colours[i % len(colours)], dtype=np.uint8)
        Image.fromarray(pixels).save(out / "images" / f"{i:06d}.png")
    return out


def test_explanations_killed_between_features_resume_to_the_same_results(tmp_path):
    from sae_flux.interp.index import IndexReader

    index = IndexReader(_index_with_images(tmp_path))
    select = SelectConfig(min_tokens=1)
    with VLMServer() as vlm:
        def run(out: Path) -> None:
            chat = OpenAIChat(ChatConfig(base_url=vlm.url, model="stand-in", cache_dir=str(out / "answers")))
            interpret(index, VLMInterpreter(chat, name="stand-in"), [0, 1, 2, 3], out=out / "results.jsonl",
                      select_cfg=select, n_distractors=2)

        with crash_after(None):
            run(tmp_path / "ref")
            total = operations()
        assert total == 8  # results.jsonl committed after each of the 4 features
        for k in (1, 4, 7):
            out = tmp_path / f"killed-{k}"
            with crash_after(k), pytest.raises(InjectedCrash):
                run(out)
            assert corrupt_files(out) == []
            run(out)
            assert files(out) == files(tmp_path / "ref"), f"killed at file operation {k}"
    lines = (tmp_path / "ref" / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["feature"] for line in lines] == [0, 1, 2, 3]


@pytest.mark.slow
def test_full_sweep_every_kill_of_every_job_resumes_to_the_uninterrupted_files(tmp_path):
    from reliability.crash import main

    assert main(["--kills", "10", "--workspace", str(tmp_path / "ws")]) == 0
