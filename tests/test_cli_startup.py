"""The three console scripts start at once: ``--help`` of every (sub)command imports nothing heavy.

Each CLI runs in a fresh interpreter (the test process has torch loaded already): its parser is
walked, ``main([*command, "--help"])`` is called for every command and subcommand, and the
modules the interpreter holds afterwards are checked. That needs light packages: their public
names load on first use. Also: a real tiny ``sae-flux`` run prints no torchvision warning from
transformers (``sae_flux.quiet``). (``import itda`` before sae_lens still registers the ``"itda"``
architecture: ``tests/itda/test_model.py``, offline Hub cache test.)
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "diffusers", "transformers", "nnsight", "sae_lens", "transformer_lens", "matplotlib")

WALK_HELP = """
import argparse, contextlib, io, json, sys
from {module} import build_parser, main

def commands(parser, path):
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, [*path, name])

helps = {{}}
for path in list(commands(build_parser(), [])):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*path, "--help"])
            code = None
        except SystemExit as exit:
            code = exit.code
    helps[" ".join(path)] = [code, out.getvalue()]
print(json.dumps({{"helps": helps, "modules": sorted(sys.modules)}}))
"""

COMMANDS = {
    "sae_flux.cli": {"", "cache", "demo", "eval", "hooks", "interp", "interp index", "interp images",
                     "interp render", "interp explain", "interp detect", "interp ground-truth", "interp calibrate", "interp sweep",
                     "publish", "steer", "train", "export"},
    "itda.cli": {"", "build", "build-lm"},
    "cae.cli": {"", "train", "generate", "eval", "export"},
}


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *(("-c", code) if code else ()), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def _heavy(modules: list[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & set(HEAVY))


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_of_every_command_imports_nothing_heavy(module: str) -> None:
    run = _python(WALK_HELP.format(module=module))
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert set(report["helps"]) == COMMANDS[module]
    prog = {"sae_flux.cli": "sae-flux", "itda.cli": "itda", "cae.cli": "cae"}[module]
    for command, (code, text) in report["helps"].items():
        assert code == 0, command
        assert text.startswith(f"usage: {' '.join([prog, *command.split()])} "), command
    assert _heavy(report["modules"]) == []


@pytest.mark.parametrize("package", ["sae_flux", "itda", "cae", "cae.evaluate"])
def test_public_names_load_on_first_use_from_their_modules(package: str) -> None:
    pkg = importlib.import_module(package)
    exports = getattr(pkg, "_EXPORTS", dict.fromkeys(pkg.__all__, "sae_flux.flux"))
    assert sorted(exports) == sorted(pkg.__all__)
    for name, module in exports.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name)


def test_a_submodule_does_not_shadow_the_public_function_of_the_same_name() -> None:
    import cae.evaluate
    import cae.evaluate.behaviour
    import itda
    import itda.build

    assert itda.build is sys.modules["itda.build"].build
    assert cae.evaluate.behaviour is sys.modules["cae.evaluate.behaviour"].behaviour
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = itda.nope


def test_tiny_sae_flux_run_prints_no_torchvision_warning() -> None:
    run = _python("", "-m", "sae_flux.cli", "hooks", "--model", "tiny")
    assert run.returncode == 0, run.stderr
    assert "double.1.img\t" in run.stdout
    assert "torchvision" not in run.stderr
    assert "ImageProcessor" not in run.stderr
