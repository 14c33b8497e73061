"""``cae``'s commands are their configs (``_sae_flux_shared.cliargs``).

Specification: every option of ``cae train / generate / export / eval`` comes from the
command's config dataclass, ``cae eval --help`` is grouped by nested config, ``--config-path``
reads a saved config back into an equal dataclass and an option on the command line overrides
the file; ``cae eval`` reads the flat records written before its config was split.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from cae.cli import build_parser
from cae.config import GenerateConfig, GGUFExportConfig, Placement, TrainVectorConfig
from cae.evaluate.cli import config_from_args
from cae.evaluate.config import (
    AdversarialStage,
    EvalConfig,
    EvalDatasets,
    JudgeConfig,
    PromptBaseline,
    SweepConfig,
)

ROOT = Path(__file__).resolve().parents[2]


def _command(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _saved(tmp_path: Path, record: dict) -> str:
    path = tmp_path / "saved_config.json"
    path.write_text(json.dumps(record))
    return str(path)


@pytest.fixture
def files(tmp_path):
    for name in ("kind.jsonl", "side.jsonl", "neutral.txt", "open.txt"):
        (tmp_path / name).write_text("x\n")
    return tmp_path


def _eval_config(files: Path) -> EvalConfig:
    return EvalConfig(
        "organism:tiny", str(files / "kind.jsonl"), str(files / "out"), layers=[1, 2], read="mean",
        normalize=True, seeds=[0, 1],
        sweep=SweepConfig(multipliers=[-1.0, 0.0, 1.0], test_fraction=0.2, positions="all", draws=2),
        datasets=EvalDatasets(corpus=str(files / "neutral.txt"), side_data=[str(files / "side.jsonl")],
                              open=[str(files / "open.txt")]),
        judge=JudgeConfig(fn="cae.organism.corpus:judge_kind", timeout=5.0),
        adversarial=AdversarialStage(items=4, tokens=2, top_k=None, budget=10_000),
        placement=Placement("cpu", "float32"),
        prompting=PromptBaseline("persona : warmly", "persona : coldly", examples=2, separator=" <sep> "),
    )


COMMANDS = [
    ("train", TrainVectorConfig("organism:tiny", "kind.jsonl", [1, 2], "vec", read="mean",
                                aggregator="pca", limit=8, site="mlp", padding_side="left",
                                normalize=True, placement=Placement("cpu", "bfloat16")),
     ["--batch-size", "4"], {"batch_size": 4}),
    ("generate", GenerateConfig("organism:tiny", "vec", "story :", multiplier=-2.0, positions="all",
                                operator="ablate_then_add", max_new_tokens=3, sample=True, seed=7),
     ["--no-sample", "--multiplier", "3"], {"sample": False, "multiplier": 3.0}),
    ("export", GGUFExportConfig("vec", "v.gguf", model_hint="llama", multiplier=2.0),
     ["--model-hint", "qwen2"], {"model_hint": "qwen2"}),
]


@pytest.mark.parametrize(("name", "cfg", "override", "changed"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_saved_config_reads_back_and_the_command_line_overrides_it(tmp_path, name, cfg, override,
                                                                      changed):
    from _sae_flux_shared.cliargs import dataclass_from_args

    parser = _command(name)
    path = _saved(tmp_path, asdict(cfg))
    assert dataclass_from_args(type(cfg), parser.parse_args(["--config-path", path])) == cfg
    overridden = dataclass_from_args(type(cfg), parser.parse_args(["--config-path", path, *override]))
    assert overridden == replace(cfg, **changed)


def test_train_takes_padding_side_and_every_config_field():
    flags = {s for a in _command("train")._actions for s in a.option_strings}
    assert {"--padding-side", "--normalize", "--device-map", "--limit", "--site"} <= flags


def test_eval_reads_its_results_json_config_back_and_options_override_it(files):
    cfg = _eval_config(files)
    path = _saved(files, {"config": asdict(cfg), "summary": {}})  # results.json's layout
    read, models = config_from_args(_command("eval").parse_args(["--config-path", path]))
    assert read == cfg and models == ["organism:tiny"]
    args = _command("eval").parse_args(["--config-path", path, "--draws", "3", "--judge-timeout", "9",
                                        "--adversarial-top-k", "0", "--prompt-examples", "1"])
    read, _ = config_from_args(args)
    assert read.sweep.draws == 3 and read.judge.timeout == 9.0 and read.prompting.examples == 1
    assert read.adversarial.top_k is None  # 0: the whole vocabulary
    assert replace(read, sweep=cfg.sweep, judge=cfg.judge, prompting=cfg.prompting) == cfg


def test_eval_several_models_are_a_size_comparison(files):
    path = _saved(files, asdict(_eval_config(files)))
    args = _command("eval").parse_args(["--config-path", path, "--model", "organism:tiny",
                                        "organism:small"])
    cfg, models = config_from_args(args)
    assert models == ["organism:tiny", "organism:small"] and cfg.model == "organism:tiny"


def test_eval_keeps_its_documented_flags_and_groups_its_help():
    parser = _command("eval")
    flags = {s for a in parser._actions for s in a.option_strings}
    documented = {"--model", "--data", "--out", "--corpus", "--layers", "--read", "--multipliers",
                  "--test-fraction", "--val-fraction", "--positions", "--draws", "--context",
                  "--max-windows", "--seed", "--seeds", "--other-data", "--ood", "--ood-behaviour",
                  "--open", "--judge-fn", "--judge-url", "--judge-model", "--timeout",
                  "--api-key-env", "--allow-insecure-key", "--adversarial", "--adversarial-tokens",
                  "--adversarial-top-k", "--adversarial-budget", "--normalize", "--device",
                  "--dtype", "--device-map", "--prompt-instruction", "--prompt-instruction-not",
                  "--prompt-examples", "--prompt-separator", "--side-data", "--capability",
                  "--target-shift", "--config-path"}
    assert documented <= flags
    titles = {g.title for g in parser._action_groups}
    assert {"sweep (SweepConfig)", "datasets (EvalDatasets)", "judge (JudgeConfig)",
            "adversarial (AdversarialStage)", "placement (Placement)",
            "prompting (PromptBaseline)"} <= titles
    old = parser.parse_args(["--timeout", "5", "--api-key-env", "K", "--allow-insecure-key",
                             "--adversarial", "3"])
    assert (old.__dict__["judge.timeout"], old.__dict__["judge.api_key_env"],
            old.__dict__["judge.allow_insecure_key"], old.__dict__["adversarial.items"]) == (5.0, "K", True, 3)


def test_eval_reads_a_flat_record_of_an_earlier_version(files):
    # docs/cae-findings/*-seeds.json hold the flat layout written before the nested configs
    record = json.loads((ROOT / "docs" / "cae-findings" / "kind-tiny-seeds.json").read_text())
    path = _saved(files, record)
    local = ["--data", str(files / "kind.jsonl"), "--out", str(files / "o"), "--corpus",
             str(files / "neutral.txt"), "--open", str(files / "open.txt"), "--other-data",
             str(files / "side.jsonl"), "--side-data", str(files / "side.jsonl"), "--capability",
             str(files / "side.jsonl")]
    cfg, _ = config_from_args(_command("eval").parse_args(["--config-path", path, *local]))
    flat = record["config"]
    assert cfg.sweep.multipliers == flat["multipliers"] and cfg.sweep.positions == "all"
    assert cfg.adversarial == AdversarialStage(items=8, tokens=4, top_k=16, budget=None)
    assert cfg.judge.fn == "cae.organism.corpus:judge_kind" and cfg.seeds == [0, 1, 2, 3, 4]
    assert cfg.prompting == PromptBaseline(**flat["prompting"]) and cfg.normalize is True
