"""sae-flux: Flux 1 traced with nnsight, activation caches, and dictionaries that SAELens loads.

Example:
    >>> import sae_flux
    >>> flux = sae_flux.Flux.tiny(seed=0)
    >>> acts = flux.capture(["a red circle"], hooks=["double.1.img"], num_inference_steps=1)
"""

import _sae_flux_requirements  # noqa: F401  (refuses an unsupported dependency version in one line)

from sae_flux.flux import Activations, Flux

__all__ = ["Activations", "Flux"]
__version__ = "0.1.0"
