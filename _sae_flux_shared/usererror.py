"""Bad input ends a command with one line on stderr and exit status 2, never a traceback.

The three console scripts (``sae-flux``, ``itda``, ``cae``) build their parser from
:class:`OneLineParser` and run the chosen command through :func:`run_command`. A refusal is any
of :data:`USER_ERRORS` (a ``ValueError`` such as :class:`UserError`, an ``OSError`` such as a
missing file or a full disk, a ``FloatingPointError`` from a diverging run, a
:class:`ServiceError` from an endpoint that failed for good, and safetensors' ``SafetensorError``
from a truncated or unwritable file); it is printed as ``PROG COMMAND: error: MESSAGE`` on one
line (a message of several lines is joined with ``; ``) and the command returns 2. Anything else
is a bug and keeps its traceback. Run with ``-v`` (``sae-flux``) or look at the debug log for the
traceback of a refusal.

Example:
    >>> def command() -> int:
    ...     raise UserError("prompts file p.txt holds no prompt")
    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     code = run_command("sae-flux cache", command)
    >>> code, err.getvalue()
    (2, 'sae-flux cache: error: prompts file p.txt holds no prompt\\n')
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

logger = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
"""Exit status of a refused input (argparse's own, for a bad flag)."""


class UserError(ValueError):
    """A bad input; the message says what is wrong and names the file, hook, field or value."""


class ServiceError(RuntimeError):
    """A service the command depends on (an HTTP endpoint, a model backend) failed for good."""


def _safetensor_errors() -> tuple[type[BaseException], ...]:
    """safetensors' own error type when safetensors is loaded (this module never imports it)."""
    module = sys.modules.get("safetensors")
    error = getattr(module, "SafetensorError", None)
    return (error,) if isinstance(error, type) and issubclass(error, BaseException) else ()


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, FloatingPointError, ServiceError)
"""Exceptions reported as one line (plus ``safetensors.SafetensorError`` once it is loaded)."""

_DISK_FULL = re.compile(r"No space left on device|StorageFull|os error 28", re.IGNORECASE)


def is_disk_full(err: BaseException) -> bool:
    """True for ENOSPC, also when safetensors wraps it in its own error type."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    return bool(_DISK_FULL.search(str(err)))


def describe(err: BaseException) -> str:
    """The one-line message of a refused input."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC and err.strerror and "disk full" in err.strerror:
        text = err.strerror  # already the friendly message of the writer that saw it
    elif is_disk_full(err):
        where = f" while writing {err.filename}" if isinstance(err, OSError) and err.filename else ""
        text = (f"disk full{where} ({err}); finished work is kept: free space and rerun "
                f"with --resume")
    elif isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.strerror}: {err.filename}"
    elif isinstance(err, UnicodeDecodeError):
        text = f"not UTF-8 text ({err.reason} at byte {err.start})"
    else:
        text = str(err) or type(err).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``, or a :class:`UserError` naming the file (missing, a
    directory, or not text)."""
    file = Path(path)
    if not file.exists():
        raise UserError(f"{what} {file} not found")
    if file.is_dir():
        raise UserError(f"{what} {file} is a directory, not a file")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{what} {file} is not UTF-8 text ({err.reason} at byte {err.start})") from err


def run_command(prog: str, command: Callable[[], int | None],
                also: tuple[type[BaseException], ...] = ()) -> int:
    """``command()``'s exit status, or 2 after one line ``PROG: error: MESSAGE`` on stderr when it
    refuses its input (:data:`USER_ERRORS`, safetensors' error, and ``also``)."""
    try:
        return int(command() or 0)
    except (*USER_ERRORS, *_safetensor_errors(), *also) as err:
        logger.debug("%s refused its input", prog, exc_info=True)
        print(f"{prog}: error: {describe(err)}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``PROG: error: MESSAGE (see PROG -h)``);
    subparsers made from it inherit the behaviour."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
