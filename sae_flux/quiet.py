"""Upstream log noise that sae-flux drops at the source (the one place it does so).

Loading diffusers' ``FluxPipeline`` imports ``transformers.CLIPImageProcessor`` and
``SiglipImageProcessor`` (``diffusers.pipelines.flux.pipeline_flux`` and
``diffusers.loaders.ip_adapter``, at module level). Without torchvision, transformers >= 5
then logs, once per name, "`CLIPImageProcessor` requires torchvision (not installed); falling
back to `CLIPImageProcessorPil`..." (``transformers.utils.import_utils``). Nothing in
sae-flux uses an image processor: they serve IP-Adapter, whose ``feature_extractor`` and
``image_encoder`` are optional ``FluxPipeline`` components (``None`` for the organism, the tiny
pipeline and FLUX.1), and the Pil fallback is what transformers 4 gave by default. So the
warning tells a user nothing to act on. :func:`drop_torchvision_fallback_warning` filters
exactly that message on exactly that logger; every other transformers message passes. (The
alternatives: torchvision as a dependency, only to silence a log line; or binding
``transformers.CLIPImageProcessor`` to the Pil class ourselves, i.e. patching transformers.)

It is called by ``import sae_flux`` (which runs before any sae-flux module imports diffusers),
so library users and the ``sae-flux`` CLI alike never see it. A user who imports diffusers'
Flux modules before sae_flux still does.
"""

from __future__ import annotations

import logging

TRANSFORMERS_IMPORT_LOGGER = "transformers.utils.import_utils"
"""The logger of transformers' lazy-import module, which emits the fallback warning."""
TORCHVISION_FALLBACK = "requires torchvision (not installed); falling back to"
"""The part of the warning that identifies it (the processor names vary)."""


class _DropTorchvisionFallback(logging.Filter):
    """Rejects the torchvision fallback warning, passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return TORCHVISION_FALLBACK not in record.getMessage()


def drop_torchvision_fallback_warning() -> None:
    """Install the filter on transformers' import logger (idempotent; transformers not imported).

    Example:
        >>> drop_torchvision_fallback_warning()
        >>> logger = logging.getLogger(TRANSFORMERS_IMPORT_LOGGER)
        >>> sum(isinstance(f, _DropTorchvisionFallback) for f in logger.filters)
        1
    """
    logger = logging.getLogger(TRANSFORMERS_IMPORT_LOGGER)
    if not any(isinstance(f, _DropTorchvisionFallback) for f in logger.filters):
        logger.addFilter(_DropTorchvisionFallback())
