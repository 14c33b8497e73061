"""Refuse, in one line, a dependency installed at a version the sae-flux distribution does not support.

``sae_flux``, ``itda`` and ``cae`` import this module first, before any dependency loads, so an
old ``transformers`` fails with ``sae-flux needs transformers>=5.0.0; found transformers 4.57.1``
instead of a deep ``ImportError``. The supported ranges are read from the installed
distribution's metadata (``importlib.metadata.requires("sae-flux")``), so they live only in
``pyproject.toml``. The check reads metadata files only: it imports no dependency.

It is a package of its own because all three packages need it and they may not import each
other except ``sae_flux`` -> ``itda``: a leaf that imports only the standard library and
``packaging`` keeps every dependency one way.

Example:
    >>> from _sae_flux_requirements import unsupported
    >>> print(unsupported(["transformers>=5.0.0"], {"transformers": "4.57.1"}.get))
    sae-flux needs transformers>=5.0.0; found transformers 4.57.1 (pip install 'transformers>=5.0.0')
    >>> unsupported(["transformers>=5.0.0"], {"transformers": "5.24.0"}.get) is None
    True
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from importlib import metadata

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

DISTRIBUTION = "sae-flux"
"""The distribution whose declared dependencies are checked."""

logger = logging.getLogger(__name__)


class UnsupportedDependencyError(ImportError):
    """An installed dependency lies outside the version range the distribution declares."""

    def __init__(self, package: str, found: str, needed: str) -> None:
        self.package = package
        """The dependency's distribution name, as pyproject spells it."""
        self.found = found
        """The installed version."""
        self.needed = needed
        """The declared specifier, e.g. ``>=5.0.0``."""
        requirement = f"{package}{needed}"
        super().__init__(
            f"{DISTRIBUTION} needs {requirement}; found {package} {found} "
            f"(pip install '{requirement}')"
        )


def unsupported(
    requirements: Iterable[str], version_of: Callable[[str], str | None]
) -> UnsupportedDependencyError | None:
    """The first requirement whose installed version falls outside its range, or None.

    ``version_of(name)`` gives the installed version or None when the distribution is absent;
    an absent or unparsable one is left to Python's own import error. Requirements behind an
    extra (``dev``) or a marker that does not hold here are skipped; pre-releases and local
    builds (``2.13.0+cpu``) of a supported version pass.
    """
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        found = version_of(req.name)
        if found is None:
            continue
        try:
            version = Version(found)
        except InvalidVersion:
            logger.debug("%s reports version %r; not checked", req.name, found)
            continue
        if not req.specifier.contains(version, prereleases=True):
            return UnsupportedDependencyError(req.name, found, str(req.specifier))
    return None


def headers(distribution: str) -> dict[str, list[str]] | None:
    """The core-metadata header fields of an installed distribution, or None when it is absent.

    Read as text rather than through ``Distribution.metadata``, whose e-mail parser costs ~10 ms
    per distribution; ``Version`` and ``Requires-Dist`` are single-line headers.
    """
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return None
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    fields: dict[str, list[str]] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[:1].isspace():
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    return fields


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed."""
    fields = headers(distribution)
    return None if fields is None else next(iter(fields.get("version", [])), None)


def check(distribution: str = DISTRIBUTION) -> None:
    """Raise :class:`UnsupportedDependencyError` for the first dependency out of its range.

    A source checkout on ``PYTHONPATH`` without an installed distribution has no declared
    ranges to read; then nothing is checked.
    """
    fields = headers(distribution)
    if fields is None:
        logger.debug("%s is not installed; dependency versions not checked", distribution)
        return
    error = unsupported(fields.get("requires-dist", []), installed_version)
    if error is not None:
        raise error


check()
