"""Every public name has a short runnable example.

A public name is one in the ``__all__`` of a package of the project (``sae_flux``, ``itda``,
``cae`` and their sub-packages that declare one: ``cae.evaluate``, ``sae_flux.organism``). A class or function carries a ``>>>`` example in
its own docstring that is not skipped as a whole; a constant (a registry dict, a tuple of
names) is shown by a ``>>>`` line naming it in the docstring of the module that defines it.
``make test`` runs them all (``pytest --doctest-modules``), so every example is also a test.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys

import pytest

PACKAGES = ("sae_flux", "itda", "cae")


def _packages_with_all() -> list[str]:
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(pkg.__path__, f"{package}."):
            if info.ispkg and "__all__" in vars(importlib.import_module(info.name)):
                names.append(info.name)
    return names


def _runnable(doc: str | None, name: str | None = None) -> bool:
    """A ``>>>`` line not skipped (naming ``name`` when given)."""
    return any(line.strip().startswith(">>>") and "doctest: +SKIP" not in line
               and (name is None or name in line) for line in (doc or "").splitlines())


def _missing(module_name: str) -> list[str]:
    module = importlib.import_module(module_name)
    missing = []
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isroutine(value):
            ok = _runnable(value.__doc__)
        else:
            home = getattr(module, "_EXPORTS", {}).get(name, module_name)
            ok = _runnable(sys.modules[importlib.import_module(home).__name__].__doc__, name)
        if not ok:
            missing.append(f"{module_name}.{name}")
    return missing


@pytest.mark.parametrize("module_name", _packages_with_all())
def test_every_public_name_has_a_runnable_example(module_name):
    assert _missing(module_name) == []


def test_a_name_without_an_example_is_found(monkeypatch):
    import cae.vector

    monkeypatch.setattr(cae.vector.VectorMeta, "__doc__", "Provenance of a steering vector.")
    assert _missing("cae") == ["cae.VectorMeta"]
