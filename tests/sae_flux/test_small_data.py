"""Data smaller than one batch never hangs or misleads: every reader and every consumer of a cache.

The cache here holds 2,000 tokens (20 prompts x 1 step x 10 x 10 image tokens of the tiny Flux)
and the batch size is 4,096, the CLI default. An endless stream over it is refused at once, a
finite one yields what there is with a warning; each command finishes or refuses. Every run is
guarded (a thread or a subprocess with a timeout), so a regression that spins fails the test
instead of hanging the suite; the guard is not a timing assertion.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sae_flux.cache import CacheConfig, CacheReader, write_cache
from sae_flux.cli import main as cli_main
from sae_flux.sources import FluxStream, TensorSource

HOOK = "double.1.img"
TOKENS = 2000
BATCH = 4096
GUARD_S = 120  # generous for a loaded 2-core machine; only a spinning loop reaches it
REPO = Path(__file__).resolve().parents[2]
REFUSAL = "holds 2,000 tokens, fewer than one batch of 4,096: lower the batch size to at most 2,000 or add data"


@pytest.fixture(scope="module")
def small_cache(tiny_flux, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(f"a red circle on the left {i}" for i in range(20)) + "\n")
    out = root / "cache"
    write_cache(CacheConfig(model="tiny", prompts=str(prompts), hooks=[HOOK], out=str(out), num_inference_steps=1,
                            resolution=40, batch_size=4, shard_prompts=8), flux=tiny_flux)
    assert CacheReader(out).num_tokens == TOKENS
    return out


@pytest.fixture(scope="module")
def small_dictionary(small_cache, tmp_path_factory) -> Path:
    from itda import BuildConfig
    from sae_flux.itda_build import build_from_cache

    out = tmp_path_factory.mktemp("small-dict") / "itda"
    build_from_cache(small_cache, BuildConfig(target_l0=4, loss_threshold=0.5), batch_size=500,
                     progress=False).save_model(out)
    return out


def within(seconds: float, func: Callable[[], Any]) -> Any:
    """``func()`` run in a daemon thread; fails the test if it has not returned after ``seconds``."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = func()
        except BaseException as err:  # noqa: BLE001  (re-raised in the test's thread)
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still running after {seconds} s: the stream spins instead of yielding or refusing")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """A console script in a subprocess (its own stderr, exit status), killed after GUARD_S seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    try:
        return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, env=env,
                              timeout=GUARD_S, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(argv[:2])} still running after {GUARD_S} s on a {TOKENS}-token cache")


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


# -- the readers -------------------------------------------------------------------------------


def test_an_endless_stream_over_a_cache_smaller_than_one_batch_is_refused_at_once(small_cache):
    reader = CacheReader(small_cache)

    def first_batch() -> Any:
        return next(reader.batches(BATCH, epochs=None))

    with pytest.raises(ValueError, match=f"activation cache {small_cache} {REFUSAL}"):
        within(GUARD_S, first_batch)
    with pytest.raises(ValueError, match="fewer than one batch"):
        reader.batches(BATCH, epochs=None)  # at the call, before any shard is read


def test_a_finite_stream_over_a_small_cache_yields_every_token_once_per_epoch_with_a_warning(small_cache, caplog):
    reader = CacheReader(small_cache)
    everything = torch.cat([acts for acts, _ in reader.iter_shards()])
    with caplog.at_level(logging.WARNING):
        batches = within(GUARD_S, lambda: list(reader.batches(BATCH, seed=1, epochs=2)))
    assert [b.shape for b in batches] == [(TOKENS, 32), (TOKENS, 32)]
    for batch in batches:
        assert torch.equal(batch[torch.argsort(batch[:, 0])], everything[torch.argsort(everything[:, 0])])
    assert "holds 2,000 tokens, fewer than one batch of 4,096: each epoch yields them all as one batch of 2,000" \
        in caplog.text


def test_a_buffer_larger_than_the_cache_is_capped_to_it_with_a_note(small_cache, caplog):
    reader = CacheReader(small_cache)
    with caplog.at_level(logging.INFO):
        capped = list(reader.batches(500, seed=2, buffer_tokens=262_144))
    assert f"shuffle buffer of 262,144 tokens capped to the 2,000 tokens of cache {small_cache}" in caplog.text
    assert torch.equal(torch.cat(capped), torch.cat(list(reader.batches(500, seed=2, buffer_tokens=TOKENS))))


def test_in_order_batches_of_a_small_cache_are_the_whole_cache_with_a_warning(small_cache, caplog):
    reader = CacheReader(small_cache)
    with caplog.at_level(logging.WARNING):
        chunks = list(reader.in_order(BATCH))
    assert torch.equal(torch.cat([a for a, _ in chunks]), torch.cat([a for a, _ in reader.iter_shards()]))
    assert "holds 2,000 tokens, fewer than one batch of 4,096" in caplog.text


def test_tensor_and_flux_sources_follow_the_same_rule(tiny_flux, caplog):
    source = TensorSource(torch.randn(TOKENS, 8))
    with pytest.raises(ValueError, match=f"the tensor source {REFUSAL}"):
        source.batches(BATCH, epochs=None)
    assert [b.shape for b in source.batches(BATCH, epochs=1)] == [(TOKENS, 8)]
    stream = FluxStream(tiny_flux, ["a red circle", "a blue square"], HOOK, num_inference_steps=1)
    with caplog.at_level(logging.WARNING):
        batches = within(GUARD_S, lambda: list(stream.batches(BATCH, epochs=1)))
    assert [b.shape for b in batches] == [(2 * 64, 32)]
    assert "the Flux stream of 2 prompts holds 128 tokens, fewer than one batch of 4,096" in caplog.text


# -- every consumer, through its command line ---------------------------------------------------
# The refusal runs in a subprocess (its real stderr and exit status); the commands that finish run
# in-process under the thread guard, their messages read from the log.


def test_sae_flux_train_refuses_a_cache_smaller_than_one_batch_in_one_line(small_cache, tmp_path):
    done = run_cli("sae_flux.cli", "train", "--cache", str(small_cache), "--out", str(tmp_path / "sae"),
                   "--batch-size", str(BATCH))
    assert done.returncode == 2, done.stderr
    assert _error_lines(done.stderr) == [f"sae-flux train: error: activation cache {small_cache} {REFUSAL}"]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "sae").exists(), "the refusal comes before anything is written"


def test_itda_build_on_a_cache_smaller_than_one_batch_builds_from_all_of_it_and_says_so(small_cache, tmp_path,
                                                                                          caplog):
    from itda.cli import main as itda_main

    argv = ["build", "--cache", str(small_cache), "--out", str(tmp_path / "itda"), "--batch-size", str(BATCH),
            "--target-l0", "4", "--no-progress"]
    with caplog.at_level(logging.INFO):
        assert within(GUARD_S, lambda: itda_main(argv)) == 0
    assert f"activation cache {small_cache} holds 2,000 tokens, fewer than one batch of 4,096" in caplog.text
    cfg = json.loads((tmp_path / "itda" / "cfg.json").read_text())
    assert cfg["metadata"]["itda_build"]["tokens_seen"] == TOKENS


def test_interp_index_on_a_small_cache_indexes_every_image(small_cache, small_dictionary, tmp_path, caplog):
    argv = ["interp", "index", str(small_cache), "--dictionary", str(small_dictionary), "--out", str(tmp_path / "idx")]
    with caplog.at_level(logging.INFO):
        assert within(GUARD_S, lambda: cli_main(argv)) == 0
    assert f"index {tmp_path / 'idx'}: 20 images" in caplog.text


def test_eval_on_a_small_cache_reports_its_true_window_and_warns(small_cache, small_dictionary, capsys, caplog):
    with caplog.at_level(logging.WARNING):
        assert within(GUARD_S, lambda: cli_main(["eval", str(small_dictionary), "--cache", str(small_cache)])) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tokens"] == TOKENS and report["window"].startswith("first 2000 tokens")
    assert "the evaluation window holds 2,000 tokens, fewer than the 65,536 asked" in caplog.text
