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

from typing import TYPE_CHECKING

from _sae_flux_shared.lazy import lazy_exports
from sae_flux.quiet import drop_torchvision_fallback_warning

if TYPE_CHECKING:
    from sae_flux.flux import Activations, Flux

_EXPORTS = {"Activations": "sae_flux.flux", "Flux": "sae_flux.flux"}
"""Public name (each of ``__all__``) -> the module that defines it."""

__all__ = ["Activations", "Flux"]
__version__ = "0.1.0"

drop_torchvision_fallback_warning()

lazy_exports(__name__, _EXPORTS)
