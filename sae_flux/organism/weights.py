"""The shipped organism weights: locate them, verify them, and check prompts against the vocabulary.

The organism (design.md, "Model organisms") ships as a diffusers ``FluxPipeline`` directory
inside the package, with a manifest of SHA-256 digests written by the training script, so a
missing or damaged file is reported by name together with the command that rebuilds it.

Example:
    >>> from diffusers import FluxPipeline
    >>> from sae_flux.organism import weights_dir
    >>> pipe = FluxPipeline.from_pretrained(weights_dir())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sae_flux.organism.world import World, missing_slots

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "organism-manifest.json"
RETRAIN = "python -m sae_flux.organism.train"


class OrganismWeightsError(FileNotFoundError):
    """An organism weight file is missing or does not match its recorded digest.

    Example:
        >>> import tempfile
        >>> try:
        ...     check_weights(tempfile.mkdtemp())
        ... except OrganismWeightsError as err:
        ...     print("organism weights missing" in str(err))
        True
    """


class VocabularyError(ValueError):
    """A prompt holds words the organism's tokenizers do not know.

    Example:
        >>> try:
        ...     check_vocabulary("a purple hexagon", strict=True)
        ... except VocabularyError as err:
        ...     print("hexagon" in str(err))
        True
    """


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(directory: Path) -> Path:
    """Record size and SHA-256 of every file under ``directory`` in ``organism-manifest.json``."""
    directory = Path(directory)
    files = {
        p.relative_to(directory).as_posix(): {"bytes": p.stat().st_size, "sha256": _digest(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts
    }
    path = directory / MANIFEST
    path.write_text(json.dumps({"files": files}, indent=2))
    return path


def check_weights(directory: Path) -> Path:
    """Verify every file listed in the manifest of ``directory``; return the directory.

    Raises:
        OrganismWeightsError: naming the missing or corrupt file and how to retrain.

    Example:
        >>> from sae_flux.organism.weights import WEIGHTS_DIR
        >>> check_weights(WEIGHTS_DIR) == WEIGHTS_DIR
        True
    """
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        raise OrganismWeightsError(
            f"organism weights missing: {manifest} not found; retrain with `{RETRAIN}`"
        )
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError) as err:
        raise OrganismWeightsError(
            f"organism manifest {manifest} is corrupt ({err}); retrain with `{RETRAIN}`"
        ) from err
    for name, record in files.items():
        path = directory / name
        if not path.is_file():
            raise OrganismWeightsError(
                f"organism weight file missing: {path}; retrain with `{RETRAIN}`"
            )
        if path.stat().st_size != record["bytes"] or _digest(path) != record["sha256"]:
            raise OrganismWeightsError(
                f"organism weight file corrupt (digest mismatch): {path}; retrain with `{RETRAIN}`"
            )
    return directory


def weights_dir(directory: Path | None = None) -> Path:
    """The verified diffusers directory of the shipped organism (or of ``directory``).

    Example:
        >>> from sae_flux.organism import weights_dir
        >>> (weights_dir() / "model_index.json").is_file()
        True
    """
    return check_weights(Path(directory) if directory is not None else WEIGHTS_DIR)


def vocabulary() -> tuple[str, ...]:
    """Words the organism knows (the scene world's caption vocabulary).

    Example:
        >>> words = vocabulary()
        >>> {"red", "circle", "left", "black"} <= set(words)
        True
    """
    return World().vocabulary()


#: Off-grammar captions named in one warning before the rest are counted.
NAMED_CAPTIONS = 3


def check_captions(captions: Sequence[str] | str) -> dict[str, list[str]]:
    """Captions off the organism's caption grammar, each with what is wrong; one warning names them.

    Every training caption names a size, a colour, a shape, a position and a background
    (:data:`sae_flux.organism.world.SLOTS`) in the organism's vocabulary. A caption that leaves a
    slot empty or holds unknown words gives broken images: without a background, for instance,
    shapes come out as outlines or noise and the colour is right about half the time.
    :meth:`sae_flux.Flux.organism` runs this on every ``generate`` and ``capture`` call.

    Example:
        >>> from sae_flux.organism import check_captions
        >>> check_captions(["a large red circle on the left", "a small red circle at the top on black"])
        {'a large red circle on the left': ['no background']}
    """
    from sae_flux.tiny import unknown_words

    texts = [captions] if isinstance(captions, str) else list(captions)
    tokenizer = _tokenizer()
    problems: dict[str, list[str]] = {}
    for caption in dict.fromkeys(texts):
        issues = [f"no {slot}" for slot in missing_slots(caption)]
        unknown = unknown_words(tokenizer, [caption])
        if unknown:
            issues.append("unknown words " + ", ".join(repr(w) for w in unknown))
        if issues:
            problems[caption] = issues
    if problems:
        named = [f"{c!r} ({', '.join(i)})" for c, i in list(problems.items())[:NAMED_CAPTIONS]]
        more = len(problems) - len(named)
        logger.warning(
            "%d of %d captions are off the Flux organism's caption grammar and give broken images: %s%s. "
            "Every training caption names a size, colour, shape, position and background, e.g. "
            "'a small red circle at the left on a black background'",
            len(problems), len(dict.fromkeys(texts)), "; ".join(named), f"; and {more} more" if more else "",
        )
    return problems


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    from sae_flux.tiny import build_tokenizer

    return build_tokenizer(vocabulary(), model_max_length=77)


def check_vocabulary(texts: Sequence[str] | str, strict: bool = False) -> list[str]:
    """Words of ``texts`` outside the organism's vocabulary; warn about them, or raise if ``strict``.

    The organism's tokenizers map such words to ``<unk>``, which the model never saw.

    Example:
        >>> from sae_flux.organism import check_vocabulary
        >>> check_vocabulary(["a small red circle at the left on black"])
        []
    """
    from sae_flux.tiny import unknown_words

    if isinstance(texts, str):
        texts = [texts]
    unknown = unknown_words(_tokenizer(), list(texts))
    if unknown:
        message = (f"words outside the Flux organism's vocabulary (read as <unk>): "
                   f"{', '.join(repr(w) for w in unknown)}")
        if strict:
            raise VocabularyError(message)
        logger.warning(message)
    return unknown
