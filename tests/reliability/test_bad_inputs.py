"""Every bad input gets one clear line: exit status 2, exactly one line on stderr, no traceback.

Each case feeds one bad input through the real entry point (``main([...])`` of ``sae_flux.cli``,
``itda.cli`` or ``cae.cli``, in-process: the same parser, the same handler
:func:`_sae_flux_shared.usererror.run_command` as the console script) and checks the exit status,
that stderr holds exactly one line, and the key words of that line (what is wrong, naming the
file, hook, field or value); progress bars a command drew before it failed are not messages and
are not counted. The artefacts (a tiny cache, a dictionary, a steering vector, broken
copies of each) are made once per module.

The list in ``docs/reliability.md`` ("Bad inputs") is generated from :data:`CASES` with the
messages they really print::

    SAE_FLUX_WRITE_BAD_INPUTS=1 PYTHONPATH=$PWD python -m pytest -q tests/reliability/test_bad_inputs.py
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
HOOK = "double.1.img"


@dataclass(frozen=True)
class Case:
    """One bad input: the command line (``{W}`` is the workspace of artefacts) and the words its
    one-line message must hold."""

    id: str
    cli: str
    argv: str
    words: tuple[str, ...]
    what: str

    def args(self, workspace: Path) -> list[str]:
        out = str(workspace / "out" / self.id)
        return [a.replace("{O}", out).replace("{W}", str(workspace)) for a in self.argv.split()]


def _c(id: str, cli: str, argv: str, *words: str, what: str = "") -> Case:
    return Case(id, cli, argv, words, what)


CACHE = "cache --model tiny --prompts {W}/prompts.txt --hooks double.1.img --num-inference-steps 1"
TRAIN = "train --cache {W}/cache --out {O} --total-tokens 256 --batch-size 64"
EVAL = "eval {W}/sae --cache {W}/cache --tokens 64"
STEER = "steer --model tiny --dictionary {W}/sae --features 3 --prompts red --out {O}.png"
INDEX = "interp index {W}/cache --dictionary {W}/sae --out {O}"
EXPLAIN = "interp explain {W}/idx --prompts {W}/prompts.txt --model tiny --features 1 --min-tokens 1"
ITDA = "build --cache {W}/cache --out {O}"
CTRAIN = "train --model organism:tiny --data {W}/kind.jsonl --layers 1 --out {O}"
GEN = "generate --model organism:tiny --vector {W}/vec --prompt story"
CEVAL = "eval --model organism:tiny --data {W}/kind.jsonl --out {O} --layers 1"

CASES: list[Case] = [
    # -- sae-flux: flags the parser refuses ------------------------------------------------------
    _c("unknown-subcommand", "sae-flux", "cachee", "invalid choice: 'cachee'"),
    _c("unknown-flag", "sae-flux", CACHE + " --out {O} --colour red", "unrecognized arguments: --colour"),
    _c("resolution-not-a-number", "sae-flux", CACHE + " --out {O} --resolution big", "--resolution", "invalid int value: 'big'"),
    _c("missing-required-flag", "sae-flux", "cache --model tiny --hooks double.1.img --out {O}", "required", "--prompts"),
    # -- sae-flux cache ------------------------------------------------------------------------
    _c("resolution-7", "sae-flux", CACHE + " --out {O} --resolution 7", "resolution 7", "multiple of 4", "pixels per image token"),
    _c("resolution-0", "sae-flux", CACHE + " --out {O} --resolution 0", "resolution", "0"),
    _c("num-inference-steps-0", "sae-flux", CACHE + " --out {O} --num-inference-steps 0", "num_inference_steps", ">= 1", "0"),
    _c("steps-beyond-schedule", "sae-flux", CACHE + " --out {O} --steps 99", "step", "99"),
    _c("steps-negative", "sae-flux", CACHE + " --out {O} --steps -1", "steps", "-1"),
    _c("hook-out-of-range", "sae-flux", "cache --model tiny --prompts {W}/prompts.txt --hooks double.9.img --out {O}", "double.9.img", "out of range"),
    _c("hook-unknown-name", "sae-flux", "cache --model tiny --prompts {W}/prompts.txt --hooks middle.1.img --out {O}", "middle.1.img"),
    _c("prompts-missing", "sae-flux", "cache --model tiny --prompts {W}/nope.txt --hooks double.1.img --out {O}", "nope.txt", "does not exist"),
    _c("prompts-binary", "sae-flux", "cache --model tiny --prompts {W}/binary.bin --hooks double.1.img --out {O}", "binary.bin", "looks binary"),
    _c("prompts-empty", "sae-flux", "cache --model tiny --prompts {W}/empty.txt --hooks double.1.img --out {O}", "empty.txt", "no prompt"),
    _c("prompts-directory", "sae-flux", "cache --model tiny --prompts {W} --hooks double.1.img --out {O}", "holds no saved dataset", "no *.tar shards"),
    _c("cache-dtype", "sae-flux", CACHE + " --out {O} --dtype int8", "dtype", "int8"),
    _c("cache-batch-size-0", "sae-flux", CACHE + " --out {O} --batch-size 0", "batch_size", ">= 1"),
    _c("cache-shard-not-multiple", "sae-flux", CACHE + " --out {O} --batch-size 3 --shard-prompts 4", "shard_prompts (4)", "batch_size (3)"),
    _c("cache-model-missing", "sae-flux", "cache --model {W}/no-model --prompts {W}/prompts.txt --hooks double.1.img --out {O}", "no-model"),
    _c("cache-out-is-a-file", "sae-flux", CACHE + " --out {W}/prompts.txt", "prompts.txt", "is a file, not a directory"),
    # -- sae-flux train ------------------------------------------------------------------------
    _c("train-no-data", "sae-flux", "train --out {O}", "no training data", "--cache"),
    _c("train-cache-missing", "sae-flux", "train --cache {W}/nope --out {O}", "nope"),
    _c("train-architecture", "sae-flux", TRAIN + " --architecture nope", "architecture", "nope"),
    _c("train-lr-nan", "sae-flux", TRAIN + " --lr nan", "lr", "nan"),
    _c("train-lr-negative", "sae-flux", TRAIN + " --lr -1", "lr", "-1"),
    _c("train-batch-size-0", "sae-flux", TRAIN + " --batch-size 0", "batch_size", "0"),
    _c("train-hook-not-cached", "sae-flux", TRAIN + " --hook double.0.img", "double.0.img"),
    _c("train-option-form", "sae-flux", TRAIN + " --options nonsense", "option 'nonsense'", "name=value"),
    _c("train-nan-loss", "sae-flux", TRAIN + " --lr 1e30 --normalize none", "loss became", "step"),
    _c("train-d-sae-0", "sae-flux", TRAIN + " --d-sae 0", "d_sae", ">= 1"),
    _c("train-beta", "sae-flux", TRAIN + " --adam-beta2 1.5", "adam_beta2", "1.5"),
    # -- sae-flux eval -------------------------------------------------------------------------
    _c("eval-dictionary-missing", "sae-flux", "eval {W}/nope --cache {W}/cache", "dictionary", "nope", "does not exist"),
    _c("eval-dictionary-truncated", "sae-flux", "eval {W}/sae-truncated --cache {W}/cache --tokens 64", "sae-truncated", "truncated or corrupt"),
    _c("eval-cfg-not-json", "sae-flux", "eval {W}/sae-badcfg --cache {W}/cache", "cfg.json", "not valid JSON"),
    _c("eval-not-a-dictionary", "sae-flux", "eval {W} --cache {W}/cache", "no cfg.json"),
    _c("eval-tokens-0", "sae-flux", EVAL + " --tokens 0", "tokens", ">= 1"),
    _c("eval-no-data", "sae-flux", "eval {W}/sae", "no evaluation data"),
    _c("eval-cache-missing", "sae-flux", "eval {W}/sae --cache {W}/nope", "nope"),
    _c("eval-other-hook", "sae-flux", "eval {W}/sae-double.0 --cache {W}/cache --tokens 64", "double.0.img", "double.1.img"),
    # -- sae-flux steer ------------------------------------------------------------------------
    _c("steer-scale-nan", "sae-flux", STEER + " --scales 0 nan", "scales", "finite", "nan"),
    _c("steer-scale-inf", "sae-flux", STEER + " --scales inf", "scales", "finite", "inf"),
    _c("steer-mode", "sae-flux", STEER + " --mode push", "mode", "push"),
    _c("steer-region", "sae-flux", STEER + " --region 0 0 4", "region", "four ints"),
    _c("steer-first-steps-0", "sae-flux", STEER + " --first-steps 0", "first_steps", ">= 1"),
    _c("steer-feature-beyond", "sae-flux", "steer --model tiny --dictionary {W}/sae --features 64 --prompts red --out {O}.png", "feature 64", "d_sae=64"),
    _c("steer-dictionary-missing", "sae-flux", "steer --model tiny --dictionary {W}/nope --features 1 --prompts red --out {O}.png", "nope"),
    # -- sae-flux interp -----------------------------------------------------------------------
    _c("index-cache-missing", "sae-flux", "interp index {W}/nope --dictionary {W}/sae --out {O}", "nope"),
    _c("index-top-n-0", "sae-flux", INDEX + " --top-n 0", "top_n", ">= 1"),
    _c("index-inf-activations", "sae-flux", "interp index {W}/cache-inf --dictionary {W}/sae --out {O}", "non-finite", "cache-inf"),
    _c("index-dictionary-other-hook", "sae-flux", "interp index {W}/cache --dictionary {W}/sae-double.0 --out {O}", "double.0.img", "double.1.img"),
    _c("explain-index-missing", "sae-flux", "interp explain {W}/nope --prompts {W}/prompts.txt --model tiny", "nope"),
    _c("explain-feature-out-of-range", "sae-flux", EXPLAIN.replace("--features 1", "--features 100000") + " --base-url http://127.0.0.1:9/v1 --vlm-model m", "feature 100000", "out of range"),
    _c("explain-threshold", "sae-flux", EXPLAIN + " --base-url http://127.0.0.1:9/v1 --vlm-model m --threshold 1.5", "threshold", "1.5"),
    _c("explain-prompts-of-another-cache", "sae-flux", "interp explain {W}/idx --prompts {W}/other-prompts.txt --model tiny", "other-prompts.txt", "hash differs"),
    _c("explain-no-endpoint", "sae-flux", EXPLAIN + " --vlm-model m --cache-dir {W}/vc --results {W}/r.jsonl", "no endpoint", "--base-url"),
    _c("explain-timeout-0", "sae-flux", EXPLAIN + " --base-url http://127.0.0.1:9/v1 --vlm-model m --timeout 0", "timeout must be", "got 0"),
    _c("explain-key-over-http", "sae-flux", EXPLAIN + " --base-url http://vlm.example.org/v1 --vlm-model m --api-key-env BAD_INPUTS_KEY", "API key", "plain http", "vlm.example.org", "--allow-insecure-key"),
    _c("explain-unreachable", "sae-flux", EXPLAIN + " --base-url http://127.0.0.1:9/v1 --vlm-model m --max-retries 1 --backoff 0 --cache-dir {W}/vc --results {W}/r.jsonl", "failed after 2 attempts", "unreachable"),
    _c("hooks-model-missing", "sae-flux", "hooks --model {W}/no-model", "no-model"),
    _c("demo-out-exists", "sae-flux", "demo --out {W}", "exists", "--overwrite"),
    _c("publish-no-dictionary", "sae-flux", "publish {W}/nope --repo a/b --endpoint http://127.0.0.1:9", "nope"),
    # -- itda ----------------------------------------------------------------------------------
    _c("itda-cache-missing", "itda", "build --cache {W}/nope --out {O}", "nope"),
    _c("itda-target-l0-0", "itda", ITDA + " --target-l0 0", "target_l0", "0"),
    _c("itda-threshold-1.5", "itda", ITDA + " --loss-threshold 1.5", "loss_threshold", "1.5"),
    _c("itda-threshold-nan", "itda", ITDA + " --loss-threshold nan", "loss_threshold", "nan"),
    _c("itda-encoder", "itda", ITDA + " --encoder magic", "invalid choice: 'magic'"),
    _c("itda-batch-size-0", "itda", ITDA + " --batch-size 0", "batch", "0"),
    _c("itda-hook-not-cached", "itda", ITDA + " --hook double.0.img", "double.0.img"),
    _c("itda-inf-activations", "itda", "build --cache {W}/cache-inf --out {O}", "non-finite"),
    _c("itda-resume-truncated", "itda", "build --cache {W}/cache --out {W}/itda-truncated --resume", "itda-truncated", "truncated or corrupt"),
    _c("itda-texts-missing", "itda", "build-lm --model {W}/no-model --texts {W}/nope.txt --layer 0 --out {O}", "texts file", "nope.txt", "not found"),
    _c("itda-texts-binary", "itda", "build-lm --model {W}/no-model --texts {W}/binary.bin --layer 0 --out {O}", "binary.bin", "not UTF-8"),
    _c("itda-texts-empty", "itda", "build-lm --model {W}/no-model --texts {W}/empty.txt --layer 0 --out {O}", "empty.txt", "no non-empty lines"),
    # -- cae train / generate ------------------------------------------------------------------
    _c("cae-data-missing", "cae", CTRAIN.replace("kind.jsonl", "nope.jsonl"), "nope.jsonl", "not found"),
    _c("cae-data-binary", "cae", CTRAIN.replace("kind.jsonl", "binary.jsonl"), "binary.jsonl", "not UTF-8"),
    _c("cae-data-bad-json-line", "cae", CTRAIN.replace("kind.jsonl", "broken.jsonl"), "broken.jsonl", "2"),
    _c("cae-data-empty", "cae", CTRAIN.replace("kind.jsonl", "empty.jsonl"), "empty.jsonl"),
    _c("cae-layer-outside", "cae", CTRAIN.replace("--layers 1", "--layers 7"), "layer 7", "3 decoder blocks"),
    _c("cae-organism-size", "cae", CTRAIN.replace("organism:tiny", "organism:huge"), "organism size 'huge'"),
    _c("cae-model-missing", "cae", CTRAIN.replace("organism:tiny", "{W}/no-model"), "no-model"),
    _c("cae-aggregator", "cae", CTRAIN + " --aggregator median", "invalid choice: 'median'"),
    _c("cae-batch-size-0", "cae", CTRAIN + " --batch-size 0", "batch_size", "0"),
    _c("cae-dtype", "cae", CTRAIN + " --dtype float8", "dtype", "float8"),
    _c("cae-multiplier-nan", "cae", GEN + " --multiplier nan", "multiplier", "finite"),
    _c("cae-multiplier-1e38", "cae", GEN + " --multiplier 1e38", "multiplier", "1e+38", "overflow"),
    _c("cae-vector-missing-dir", "cae", GEN.replace("{W}/vec", "{W}/vectors/none"), "vector directory", "vectors/none", "does not exist"),
    _c("cae-vector-truncated", "cae", GEN.replace("{W}/vec", "{W}/vec-truncated"), "vec-truncated", "truncated or corrupt"),
    _c("cae-vector-cfg-broken", "cae", GEN.replace("{W}/vec", "{W}/vec-badcfg"), "vec-badcfg", "malformed JSON"),
    _c("cae-max-new-tokens-0", "cae", GEN + " --max-new-tokens 0", "max_new_tokens", "0"),
    _c("cae-vector-other-model", "cae", GEN.replace("organism:tiny", "organism:small"), "width 40", "hidden size 80"),
    # -- cae eval ------------------------------------------------------------------------------
    _c("cae-eval-test-fraction", "cae", CEVAL + " --test-fraction 1.5", "fraction", "1.5"),
    _c("cae-eval-multipliers-inf", "cae", CEVAL + " --multipliers -1 inf", "multiplier", "finite", "inf"),
    _c("cae-eval-positions-generated", "cae", CEVAL + " --positions generated", "generated"),
    _c("cae-eval-judge-fn", "cae", CEVAL + " --open {W}/prompts.txt --judge-fn nowhere:judge", "nowhere"),
    _c("cae-eval-corpus-missing", "cae", CEVAL + " --corpus {W}/nope.txt", "nope.txt"),
    _c("cae-eval-judge-url-scheme", "cae", CEVAL + " --open {W}/prompts.txt --judge-url ftp://judge/v1", "ftp://judge/v1", "http"),
    _c("cae-eval-judge-key-over-http", "cae", CEVAL + " --open {W}/prompts.txt --judge-url http://judge.example.org/v1 --api-key-env BAD_INPUTS_KEY", "API key", "plain http", "judge.example.org"),
    _c("cae-eval-timeout-negative", "cae", CEVAL + " --open {W}/prompts.txt --judge-url http://127.0.0.1:9/v1 --timeout -1", "timeout", "-1"),
]


# -- the artefacts, made once ---------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _copy(src: Path, dst: Path, change: Callable[[Path], None]) -> None:
    shutil.copytree(src, dst)
    change(dst)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_flux) -> Path:
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    from cae.organism.corpus import items
    from itda import ITDA
    from sae_flux.cache import CacheConfig, write_cache
    from sae_flux.interp.config import IndexConfig
    from sae_flux.interp.index import build_index, cache_images, dictionary_source
    from sae_flux.organism.world import prompts

    w = tmp_path_factory.mktemp("bad-inputs")
    (w / "prompts.txt").write_text("\n".join(prompts(4, seed=0)) + "\n")
    (w / "other-prompts.txt").write_text("\n".join(prompts(4, seed=1)) + "\n")
    (w / "empty.txt").write_text("\n\n")
    (w / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (w / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(128, 256)))
    (w / "empty.jsonl").write_text("")
    rows = [{"question": it.prompt, "answer_matching_behavior": " " + it.matching,
             "answer_not_matching_behavior": " " + it.not_matching}
            for it in items("kind", "ab", 12, split="train")]
    (w / "kind.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (w / "broken.jsonl").write_text(json.dumps(rows[0]) + "\n" + '{"question": "cut' + "\n")
    write_cache(CacheConfig(model="tiny", prompts=str(w / "prompts.txt"), hooks=[HOOK], out=str(w / "cache"),
                            num_inference_steps=1, batch_size=4, shard_prompts=4), flux=tiny_flux)
    shutil.copytree(w / "cache", w / "cache-inf")
    for shard in sorted((w / "cache-inf").rglob("*.safetensors")):
        tensors = load_file(str(shard))
        tensors["acts"][3, 5] = math.inf
        save_file(tensors, str(shard))
    for hook, name in ((HOOK, "sae"), ("double.0.img", "sae-double.0")):
        torch.manual_seed(0)
        sae = TopKSAE(TopKSAEConfig(d_in=tiny_flux.d_model, d_sae=64, k=4, metadata=SAEMetadata(hook_name=hook)))
        with torch.no_grad():
            sae.W_dec.normal_()
            sae.W_enc.normal_()
        sae.save_model(w / name)
    _copy(w / "sae", w / "sae-truncated", lambda d: _truncate(d / "sae_weights.safetensors"))
    _copy(w / "sae", w / "sae-badcfg", lambda d: (d / "cfg.json").write_text('{"architecture": '))
    reader_cache = w / "cache"
    from sae_flux.cache import CacheReader

    reader = CacheReader(reader_cache, HOOK)
    build_index(IndexConfig(out=str(w / "idx")), dictionary_source(str(w / "sae"), "sae"),
                cache_images(str(reader_cache), reader.hook, None), hook=reader.hook,
                extra={"cache_settings": reader.manifest.settings})
    acts = torch.cat([a for a, _ in reader.iter_shards()])
    ITDA.build([acts], target_l0=4, loss_threshold=0.3).save_model(w / "itda")
    _copy(w / "itda", w / "itda-truncated", lambda d: _truncate(d / "sae_weights.safetensors"))
    from cae.cli import main as cae_main

    assert cae_main(["train", "--model", "organism:tiny", "--data", str(w / "kind.jsonl"), "--layers", "1",
                     "--out", str(w / "vec")]) == 0
    _copy(w / "vec", w / "vec-truncated", lambda d: _truncate(next(d.glob("*.safetensors"))))
    _copy(w / "vec", w / "vec-badcfg", lambda d: next(p for p in d.glob("*.json")).write_text("{oops"))
    return w


def _main(cli: str) -> Callable[[list[str]], int]:
    if cli == "sae-flux":
        from sae_flux.cli import main
    elif cli == "itda":
        from itda.cli import main
    else:
        from cae.cli import main
    return main


def _exit_status(cli: str, argv: list[str]) -> int:
    try:
        return _main(cli)(argv)
    except SystemExit as done:  # argparse refuses a flag by exiting
        return int(done.code or 0)


MESSAGES: dict[str, str] = {}
"""Case id -> the line it printed (the workspace path written ``W``), for the docs."""


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_gets_one_line_and_exit_status_2(case: Case, workspace: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("BAD_INPUTS_KEY", "sk-do-not-send")
    capsys.readouterr()
    code = _exit_status(case.cli, case.args(workspace))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.split("\n") if line and "\r" not in line]  # not progress bars
    if os.environ.get("BAD_INPUTS_SHOW"):
        with open(os.environ["BAD_INPUTS_SHOW"], "a") as show:
            show.write(f"{case.id}\t{code}\t{captured.err!r}\n")
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    line = lines[0]
    assert "Traceback" not in captured.err and "sk-do-not-send" not in captured.err + captured.out
    assert line.startswith(f"{case.cli}") and ": error: " in line, line
    missing = [w for w in case.words if w.replace("{W}", str(workspace)) not in line]
    assert missing == [], line
    MESSAGES[case.id] = line.replace(str(workspace / "out" / case.id), "OUT").replace(str(workspace), "W")


def test_the_suite_holds_at_least_seventy_distinct_cases() -> None:
    assert len(CASES) >= 70 and len({c.id for c in CASES}) == len(CASES)


# -- the list in docs/reliability.md ----------------------------------------------------------------

BEGIN, END = "<!-- bad-inputs:begin -->", "<!-- bad-inputs:end -->"


def _table(messages: dict[str, str]) -> str:
    rows = ["| case | input | message |", "|---|---|---|"]
    for case in CASES:
        argv = f"{case.cli} {case.argv.replace('{W}/', '').replace('{O}', 'OUT')}".replace("|", "\\|")
        message = messages.get(case.id, "").replace("|", "\\|")
        rows.append(f"| {case.id} | `{argv}` | {message} |")
    return "\n".join(rows)


def _documented_ids() -> list[str]:
    text = DOC.read_text()
    section = text[text.index(BEGIN):text.index(END)]
    return re.findall(r"^\| ([a-z0-9.-]+) \| `", section, flags=re.MULTILINE)


def test_docs_list_every_case(request) -> None:
    if os.environ.get("SAE_FLUX_WRITE_BAD_INPUTS") == "1":
        assert len(MESSAGES) == len(CASES), "run the whole module to write the list"
        text = DOC.read_text()
        head, tail = text[: text.index(BEGIN) + len(BEGIN)], text[text.index(END):]
        DOC.write_text(f"{head}\n{_table(MESSAGES)}\n{tail}")
    assert _documented_ids() == [c.id for c in CASES]


# -- degenerate results: warnings that name the cause, exit status 0 -------------------------------


def test_pairs_the_vocabulary_cannot_tell_apart_warn_of_an_all_zero_vector(workspace: Path, caplog) -> None:
    from cae.cli import main

    data = workspace / "unknown-words.jsonl"
    rows = [{"question": f"story : friend {i} .", "answer_matching_behavior": " zzqx",
             "answer_not_matching_behavior": " qqzx"} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        assert main(["train", "--model", "organism:tiny", "--data", str(data), "--layers", "1",
                     "--out", str(workspace / "out" / "zero-vector")]) == 0
    assert "the steering vector at layer 1 is all zeros" in caplog.text
    assert "the model cannot tell them apart" in caplog.text


def test_a_dictionary_with_no_live_latent_is_a_warning_in_eval(workspace: Path, caplog, capsys) -> None:
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    from sae_flux.cli import main

    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=16, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)  # nothing ever fires
    sae.save_model(workspace / "out" / "dead-sae")
    with caplog.at_level("WARNING"):
        assert main(["eval", str(workspace / "out" / "dead-sae"), "--cache", str(workspace / "cache"),
                     "--tokens", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["dead_fraction"] == 1.0
    assert "has no live latent: none of its 16 latents fired on the 64 tokens" in caplog.text


# -- a full disk: safetensors' own error reads as the ENOSPC message -------------------------------


def test_a_full_disk_under_safetensors_is_one_line_saying_disk_full(capsys) -> None:
    from safetensors import SafetensorError

    from _sae_flux_shared.usererror import run_command

    def write() -> int:
        # what save_file raised on a full 64 KiB tmpfs (safetensors does not report /dev/full)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    assert run_command("sae-flux cache", write) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("sae-flux cache: error: disk full") and "rerun with --resume" in line


def test_a_bug_is_not_hidden_as_a_bad_input() -> None:
    from _sae_flux_shared.usererror import run_command

    def buggy() -> int:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_command("cae train", buggy)
