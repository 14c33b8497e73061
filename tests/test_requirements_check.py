"""An unsupported dependency version found at import fails in one line naming the package, the
version found and the version needed; the ranges are read from the installed metadata."""

from __future__ import annotations

import _sae_flux_requirements as requirements
from _sae_flux_requirements import UnsupportedDependencyError, check, unsupported

import os
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DECLARED = ["torch>=2.13.0", "transformers>=5.0.0", "nnsight>=0.8.0", 'pytest>=8.0.0; extra == "dev"']


def test_old_transformers_is_refused_in_one_line_naming_found_and_needed() -> None:
    installed = {"torch": "2.13.0+cpu", "transformers": "4.57.1", "nnsight": "0.8.1"}
    error = unsupported(DECLARED, installed.get)
    assert isinstance(error, ImportError)
    assert (error.package, error.found, error.needed) == ("transformers", "4.57.1", ">=5.0.0")
    assert str(error) == ("sae-flux needs transformers>=5.0.0; found transformers 4.57.1 "
                          "(pip install 'transformers>=5.0.0')")


def test_supported_local_builds_and_prereleases_pass() -> None:
    installed = {"torch": "2.13.0+cpu", "transformers": "5.1.0.dev0", "nnsight": "0.8.0"}
    assert unsupported(DECLARED, installed.get) is None


def test_a_version_above_an_upper_bound_is_refused_too() -> None:
    error = unsupported(["sae-lens>=6.52.0,<7"], {"sae-lens": "7.0.0"}.get)
    assert error is not None and (error.found, error.needed) == ("7.0.0", "<7,>=6.52.0")


def test_extras_absent_and_unparsable_versions_are_not_judged() -> None:
    installed = {"torch": "2.13.0", "transformers": "not-a-version", "pytest": "7.0.0"}
    assert unsupported(DECLARED, installed.get) is None  # nnsight absent: Python's import says so


def test_check_reads_the_floor_from_the_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    real = requirements.installed_version
    monkeypatch.setattr(requirements, "installed_version",
                        lambda name: "4.57.1" if name == "transformers" else real(name))
    needed = next(str(r.specifier) for r in map(Requirement, metadata.requires("sae-flux") or [])
                  if r.name == "transformers")
    with pytest.raises(UnsupportedDependencyError) as info:
        check()
    assert (info.value.found, info.value.needed) == ("4.57.1", needed)


def test_the_installed_environment_passes_the_check() -> None:
    check()


def _fake_distribution(root: Path, name: str, version: str, requires: Sequence[str] = ()) -> None:
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n\nA long description: ignored.\n")


@pytest.mark.parametrize("package", ["sae_flux", "itda", "cae"])
def test_importing_a_package_beside_an_old_transformers_fails_before_loading_it(
        package: str, tmp_path: Path) -> None:
    """A distribution found first on sys.path stands for an installed old transformers."""
    tomllib = pytest.importorskip("tomllib")
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = next(str(r.specifier) for r in map(Requirement, declared) if r.name == "transformers")
    fake = tmp_path / "site"
    _fake_distribution(fake, "sae-flux", "0.1.0", declared)
    _fake_distribution(fake, "transformers", "4.57.1")
    code = (f"import sys\ntry:\n    import {package}\nexcept ImportError as e:\n"
            "    print(type(e).__name__, e, sep=': ')\n    print('transformers' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                         capture_output=True, timeout=120, check=True).stdout.splitlines()
    assert out == [f"UnsupportedDependencyError: sae-flux needs transformers{needed}; found "
                   f"transformers 4.57.1 (pip install 'transformers{needed}')", "False"]
