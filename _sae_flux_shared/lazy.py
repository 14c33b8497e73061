"""Light package imports: public names load from their modules on first use (PEP 562).

The one home of the lazy ``__getattr__`` of ``sae_flux``, ``itda``, ``cae`` and
``cae.evaluate``: ``import cae`` costs no torch, so every console script parses its arguments
(and prints ``--help``) at once, and ``cae.SteeringVector`` imports ``cae.vector`` the first
time it is read. A package lists its names in a ``{name: module}`` map and calls
:func:`lazy_exports` once; ``TYPE_CHECKING`` imports of the same names keep type checkers and
editors informed.

Where an exported function shares its name with the submodule that defines it
(``itda.build``, ``cae.evaluate.behaviour``), importing the submodule would rebind the package
attribute to the module; the package keeps the function (the module stays in ``sys.modules``).

Example:
    >>> import sys, types
    >>> pkg = types.ModuleType("demo_pkg")
    >>> sys.modules["demo_pkg"] = pkg
    >>> lazy_exports("demo_pkg", {"dedent": "textwrap", "JSONDecoder": "json"})
    >>> pkg.dedent("  a")
    'a'
    >>> "JSONDecoder" in dir(pkg), "JSONDecoder" in vars(pkg)
    (True, False)
    >>> pkg.nothing
    Traceback (most recent call last):
    ...
    AttributeError: module 'demo_pkg' has no attribute 'nothing'
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> None:
    """Give module ``package`` a ``__getattr__`` / ``__dir__`` that serve ``exports``
    (public name -> the module defining it), each imported once, on first use."""
    module = sys.modules[package]
    names = dict(exports)

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name]), name)
        module.__dict__[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*module.__dict__, *names})

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    module.__dir__ = __dir__  # type: ignore[method-assign]
    module.__class__ = _keeping(names)


def _keeping(names: dict[str, str]) -> type[types.ModuleType]:
    """A module class that ignores the binding of a submodule over an export of its name."""

    class LazyPackage(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if isinstance(value, types.ModuleType) and names.get(name) == value.__name__:
                return  # the submodule stays in sys.modules; the package keeps the export
            super().__setattr__(name, value)

    return LazyPackage
