"""The declared dependencies: each one is imported by the packages, each import is declared, and
constraints/floors.txt pins every one of them at the floor pyproject.toml declares."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sae_flux", "itda", "cae", "_sae_flux_requirements", "_sae_flux_shared")
IMPORT_NAMES = {"pillow": "PIL", "pyyaml": "yaml", "scikit-learn": "sklearn"}
"""Distributions whose import name is not the distribution name with ``-`` read as ``_``."""
OPTIONAL_IMPORTS = {"wandb": "sae_flux.train imports it only when TrainConfig.wandb_project is set",
                    "gguf": "cae.llamacpp imports it only for llama.cpp control vectors (extra gguf)"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def runtime_requirements() -> list[Requirement]:
    return [Requirement(r) for r in _project()["dependencies"]]


def all_requirements() -> list[Requirement]:
    extras = _project()["optional-dependencies"]
    return runtime_requirements() + [Requirement(r) for group in extras.values() for r in group]


def import_name(distribution: str) -> str:
    name = canonicalize_name(distribution)
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def imported_modules() -> dict[str, set[str]]:
    """Top-level module name -> the package files that import it (function-level imports too)."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def test_import_names_follow_the_distribution_names() -> None:
    assert [import_name(d) for d in ("sae-lens", "huggingface_hub", "pillow", "PyYAML",
                                     "typing-extensions")] == \
        ["sae_lens", "huggingface_hub", "PIL", "yaml", "typing_extensions"]


def test_every_declared_dependency_is_imported_by_the_packages() -> None:
    imported = imported_modules()
    unused = [r.name for r in runtime_requirements() if import_name(r.name) not in imported]
    assert unused == [], f"declared in pyproject.toml but imported nowhere in {PACKAGES}"


def test_every_third_party_import_is_declared() -> None:
    declared = {import_name(r.name) for r in runtime_requirements()}
    third_party = {name: files for name, files in imported_modules().items()
                   if name not in sys.stdlib_module_names and name not in PACKAGES
                   and name != "__future__"}
    undeclared = {name: sorted(files) for name, files in third_party.items()
                  if name not in declared and name not in OPTIONAL_IMPORTS}
    assert undeclared == {}, "imported by the packages but missing from pyproject.toml"
    assert {"torch", "transformers", "sae_lens", "nnsight", "diffusers"} <= set(third_party)


def floor_of(req: Requirement) -> str:
    """The lowest version ``req`` allows: its ``>=`` or ``==`` bound."""
    bounds = [s.version for s in req.specifier if s.operator in (">=", "==")]
    assert len(bounds) == 1, f"{req} needs exactly one >= (or ==) bound, the tested floor"
    return bounds[0]


def pinned_floors() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints" / "floors.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints/floors.txt pins with ==, not {line!r}"
            pins[str(canonicalize_name(req.name))] = spec.version
    return pins


def test_floors_file_pins_every_dependency_at_its_declared_floor() -> None:
    declared = {str(canonicalize_name(r.name)): floor_of(r) for r in all_requirements()}
    assert pinned_floors() == declared
    assert declared["torch"] == "2.13.0"  # the one torch the CPU machines can install


def test_no_declared_dependency_has_an_upper_bound_without_a_comment() -> None:
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    for req in runtime_requirements():
        if any(s.operator in ("<", "<=", "~=") for s in req.specifier):
            line = next(x for x in lines if x.strip().startswith(f'"{req.name}'))
            assert "#" in line, f"{req}: an upper bound names the upstream change that forces it"
