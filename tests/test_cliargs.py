"""One config-to-CLI mechanism (``_sae_flux_cliargs``) for sae_flux, itda and cae.

Specification: every command's options come from its config dataclass (nested configs as
option groups), and ``--config-path`` reads the record the command saves back into the same
config; the command line overrides the file, a missing required field or a record of another
config is refused in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import asdict

import pytest

from _sae_flux_cliargs import ConfigFileError, add_dataclass_arguments, dataclass_from_args
from cae.organism.train import OrganismTrainConfig as LMOrganismTrainConfig
from itda.build_config import BuildConfig
from sae_flux.demo_config import DemoConfig
from sae_flux.interp.config import IndexConfig
from sae_flux.organism.train import OrganismTrainConfig
from sae_flux.steering.config import SteerConfig
from sae_flux.train_config import DataConfig, DictionaryConfig, OptimConfig, TrainConfig


def _subparser(build: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
    parser = build
    for name in names:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _sae_flux(*names: str) -> argparse.ArgumentParser:
    from sae_flux.cli import build_parser

    return _subparser(build_parser(), *names)


def _itda(name: str) -> argparse.ArgumentParser:
    from itda.cli import build_parser

    return _subparser(build_parser(), name)


def _read_back(parser: argparse.ArgumentParser, cls: type, record: dict, tmp_path, *extra: str):
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(record))
    return dataclass_from_args(cls, parser.parse_args(["--config-path", str(path), *extra]))


# ---- every command's saved record round-trips ----------------------------------------------

TRAIN = TrainConfig(out="sae", data=DataConfig(cache="cache", hook="double.1.img", buffer_tokens=1024),
                    sae=DictionaryConfig(architecture="batchtopk", k=8, options=["aux_loss_coefficient=0.5"],
                                         normalize="standardize"),
                    optim=OptimConfig(total_tokens=4096, batch_size=256, lr=1e-3, seed=3),
                    dead_window=5, checkpoint_every=4, device="cpu")


def test_train_reads_its_train_config_json_back(tmp_path):
    # what sae_flux.train writes: json.dumps(cfg.to_dict())
    assert _read_back(_sae_flux("train"), TrainConfig, TRAIN.to_dict(), tmp_path) == TRAIN


def test_train_command_line_overrides_the_file_field_by_field(tmp_path):
    cfg = _read_back(_sae_flux("train"), TrainConfig, TRAIN.to_dict(), tmp_path, "--lr", "0.01", "--k", "4")
    assert cfg.optim.lr == 0.01 and cfg.sae.k == 4
    assert dataclasses.replace(cfg, optim=TRAIN.optim, sae=TRAIN.sae) == TRAIN


def test_a_file_without_a_field_keeps_its_default(tmp_path):
    record = TRAIN.to_dict()
    del record["optim"]["lr"], record["log_every"]
    cfg = _read_back(_sae_flux("train"), TrainConfig, record, tmp_path)
    assert cfg.optim.lr == OptimConfig.lr and cfg.log_every == TrainConfig.log_every
    assert cfg.optim.batch_size == 256


def test_demo_reads_its_demo_config_json_back(tmp_path):
    cfg = DemoConfig(out="d", n_prompts=64, sae_k=4, itda_threshold=0.5, seed=2, threads=1, overwrite=True)
    assert _read_back(_sae_flux("demo"), DemoConfig, asdict(cfg), tmp_path) == cfg  # demo.py: asdict(cfg)


def test_steer_reads_its_grid_json_back(tmp_path):
    cfg = SteerConfig(dictionary="sae", features=[3, 7], prompts=["a red circle", "a blue square"],
                      scales=[0.0, 1.0], region=[0, 0, 2, 2], first_steps=2, absolute=True)
    assert _read_back(_sae_flux("steer"), SteerConfig, asdict(cfg), tmp_path) == cfg  # grid.py: asdict(cfg)


def test_interp_index_reads_the_config_inside_index_json(tmp_path):
    # sae_flux.interp.index writes {"config": asdict(cfg), "source": ..., "extra": ...}
    cfg = IndexConfig(out="index", top_n=8, top_k=16, images_per_shard=4, batch_images=2)
    record = {"config": asdict(cfg), "source": {"kind": "sae"}, "extra": {"cache_settings": {"seed": 0}}}
    parser = _sae_flux("interp", "index")
    assert _read_back(parser, IndexConfig, record, tmp_path, "cache", "--neurons") == cfg


def test_itda_build_reads_the_build_config_inside_cfg_json(tmp_path):
    build = BuildConfig(target_l0=8, loss_threshold=0.6, encoder="gp", nonnegative=True, max_atoms=99)
    record = {"architecture": "itda", "d_in": 8, "metadata": {"hook_name": "h", "itda_build": asdict(build)}}
    assert _read_back(_itda("build"), BuildConfig, record, tmp_path, "--cache", "c", "--out", "o") == build


def test_lm_organism_options_come_from_its_config():
    from cae.organism.train import OrganismTrainConfig as Config

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Config)
    cfg = dataclass_from_args(Config, parser.parse_args(["--sizes", "tiny", "--steps", "5", "--tone", "persona"]))
    assert cfg == Config(sizes=("tiny",), steps=5, tone="persona")


# ---- the mechanism ------------------------------------------------------------------------


def test_nested_configs_are_option_groups_and_repeated_names_spell_their_path():
    train = _sae_flux("train")
    titles = [g.title for g in train._action_groups]
    assert {"data (DataConfig)", "sae (DictionaryConfig)", "optim (OptimConfig)"} <= set(titles)
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, OrganismTrainConfig)
    flags = {s for a in parser._actions for s in a.option_strings}
    assert {"--vae.steps", "--flow.steps", "--decoder.steps", "--kl-weight", "--num-layers"} <= flags
    assert "--steps" not in flags


def test_field_docstrings_are_the_help_and_bools_negate():
    text = _sae_flux("train").format_help()
    assert "Adam learning rate." in text and "(default: 0.0002)" in text
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, BuildConfig)
    assert dataclass_from_args(BuildConfig, parser.parse_args(["--nonnegative"])).nonnegative is True
    assert dataclass_from_args(BuildConfig, parser.parse_args(["--no-nonnegative"])).nonnegative is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--encoder", "omp"])  # Literal fields list their choices


def test_a_missing_required_field_is_refused_in_one_line():
    with pytest.raises(ConfigFileError, match=r"^--out is required \(give it on the command line or in --config-path\)$"):
        dataclass_from_args(TrainConfig, _sae_flux("train").parse_args([]))


@pytest.mark.parametrize(("content", "message"), [
    ('{"optim": {"lr": 1e-3, "momentum": 0.9}, "colour": 1}', r"is no TrainConfig record: colour, optim.momentum are no fields of it"),
    ("[1, 2]", r"holds no JSON object"),
    ("{not json", r"is not a JSON file"),
])
def test_a_record_of_another_shape_is_refused_naming_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigFileError, match=message):
        dataclass_from_args(TrainConfig, _sae_flux("train").parse_args(["--config-path", str(path), "--out", "o"]))


def test_a_missing_config_file_is_one_line_exit_2_through_the_cli(tmp_path, caplog):
    from sae_flux.cli import main

    assert main(["train", "--config-path", str(tmp_path / "nope.json")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].endswith("nope.json: no such file") and "\n" not in errors[0]


def test_lm_organism_config_is_its_own_class():
    assert LMOrganismTrainConfig is not OrganismTrainConfig
