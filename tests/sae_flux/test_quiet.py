"""``import sae_flux`` drops transformers' torchvision-fallback warning and nothing else."""

from __future__ import annotations

import logging

import sae_flux  # noqa: F401  (installs the filter)
from sae_flux.quiet import TRANSFORMERS_IMPORT_LOGGER


def _passes(message: str) -> bool:
    """Whether the filters of transformers' import logger let a warning with ``message`` through."""
    record = logging.LogRecord(TRANSFORMERS_IMPORT_LOGGER, logging.WARNING, __file__, 0, message, None, None)
    return bool(logging.getLogger(TRANSFORMERS_IMPORT_LOGGER).filter(record))


def test_only_the_torchvision_fallback_warning_is_dropped():
    assert not _passes("`SiglipImageProcessor` requires torchvision (not installed); falling back to "
                       "`SiglipImageProcessorPil` for backward compatibility. Install torchvision to use "
                       "the default backend, or import `SiglipImageProcessorPil` directly to silence this warning.")
    assert _passes("`FooModel` requires the protobuf library but it was not found")
    assert _passes("`CLIPImageProcessor` is deprecated")
