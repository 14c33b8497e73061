"""sae-flux: Flux 1 traced with nnsight, activation caches, and dictionaries that SAELens loads.

``import sae_flux`` is light: :class:`Flux` (with torch, diffusers and nnsight) loads on first
use of ``sae_flux.Flux``, so the ``sae-flux`` CLI starts at once. Importing the package also
drops one upstream warning that carries no information here (:mod:`sae_flux.quiet`).

Example:
    >>> import sae_flux
    >>> flux = sae_flux.Flux.tiny(seed=0)
    >>> acts = flux.capture(["a red circle"], hooks=["double.1.img"], num_inference_steps=1)
"""

from __future__ import annotations

import _sae_flux_requirements  # noqa: F401  (refuses an unsupported dependency version in one line)

import importlib
from typing import TYPE_CHECKING, Any

from sae_flux.quiet import drop_torchvision_fallback_warning

if TYPE_CHECKING:
    from sae_flux.flux import Activations, Flux

__all__ = ["Activations", "Flux"]
__version__ = "0.1.0"

drop_torchvision_fallback_warning()


def __getattr__(name: str) -> Any:
    """The public names, imported from :mod:`sae_flux.flux` on first use (PEP 562)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("sae_flux.flux"), name)
    globals()[name] = value
    return value
