"""``import itda`` registers the ``"itda"`` architecture with sae_lens without importing sae_lens.

The registration itself is the last statement of :mod:`itda.model`, the module that defines
the classes. sae_lens (with torch and transformers) takes seconds to import, and neither
``import itda`` nor ``itda --help`` should pay that, so :func:`register_with_sae_lens` (run by
``import itda``) only arranges for :mod:`itda.model` to be imported at the right moment:

- at once, when sae_lens is already imported;
- otherwise right after sae_lens is first imported, by anyone: a one-shot finder at the front
  of ``sys.meta_path`` hands the import system sae_lens's own spec with its loader wrapped, so
  that sae_lens executes exactly as usual and :mod:`itda.model` is imported as soon as it has
  (the post-import hook of PEP 369, as ``wrapt.when_imported`` does it).

Either way, after ``import itda``, ``sae_lens.SAE.load_from_disk`` and ``SAE.from_pretrained``
read ITDA directories, whatever the order of the two imports.

The architecture is registered under two names: ``"itda"`` (what ``cfg.architecture()`` says)
and :data:`SAVED_ARCHITECTURE`, the name a saved ``cfg.json`` records. sae_lens looks the saved
name up in its registry, so where ``itda`` is not imported (plain sae_lens, no sae-flux) loading
an ITDA folder stops with ``KeyError: 'itda (an sae-flux ITDA dictionary: pip install sae-flux,
then import itda before loading)'`` (one line that says what to do) instead of a bare
``KeyError: 'itda'``. Folders saved before, with ``"itda"``, load as well.

Example:
    >>> import itda, sae_lens.registry
    >>> "itda" in sae_lens.registry.SAE_CLASS_REGISTRY
    True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType

TRIGGER = "sae_lens"
"""The module whose import makes :data:`TARGET` importable and needed."""
TARGET = "itda.model"
"""The module that registers the architecture when it is imported."""
ARCHITECTURE = "itda"
"""``ITDAConfig.architecture()``."""
SAVED_ARCHITECTURE = (
    "itda (an sae-flux ITDA dictionary: pip install sae-flux, then import itda before loading)"
)
"""The ``architecture`` a saved ``cfg.json`` records (and sae_lens's KeyError shows without itda)."""
ARCHITECTURE_NAMES = (ARCHITECTURE, SAVED_ARCHITECTURE)
"""Every name under which the architecture is registered with sae_lens."""


def is_itda_architecture(name: object) -> bool:
    """Whether a ``cfg.json`` ``architecture`` value names an ITDA (either spelling)."""
    return name in ARCHITECTURE_NAMES


class _ThenImportTarget(importlib.abc.Loader):
    """sae_lens's own loader, followed by ``import itda.model``."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # sae_lens sees its own loader (importlib.resources, inspect), not this wrapper
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        importlib.import_module(TARGET)


class _AfterTrigger(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of :data:`TRIGGER`'s real spec, once."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != TRIGGER:
            return None
        sys.meta_path.remove(self)  # one-shot, and the lookup below must not find us again
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenImportTarget(spec.loader)
        return spec


def register_with_sae_lens() -> None:
    """Import :data:`TARGET` now if sae_lens is loaded, else right after sae_lens is (idempotent)."""
    if TRIGGER in sys.modules:
        importlib.import_module(TARGET)
    elif not any(isinstance(finder, _AfterTrigger) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterTrigger())
