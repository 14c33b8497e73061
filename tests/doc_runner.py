"""A warm process that runs the documentation's commands without paying the imports each time.

Used by ``tests/test_docs.py``. On the project's 2-core machines every ``sae-flux`` / ``itda`` /
``cae`` / ``python`` command would spend 10-20 s importing torch, diffusers, nnsight and
transformers before doing a second of work; a doc with ten commands would take minutes. The
server imports those once, then forks one child per request:

- a **command** (what the shims on ``PATH`` send): the child takes over the caller's stdin,
  stdout and stderr (passed over a Unix socket), its working directory, environment and
  arguments, runs the console script's entry point from ``pyproject.toml`` (or
  ``python -c CODE`` / ``python -m MODULE`` / ``python FILE``; any other ``python`` flag execs
  the real interpreter) and reports the exit status. It dies with its caller.
- a **session** (:class:`Session`): the child keeps one namespace and executes the Python blocks
  of one doc file in turn, reporting each one's traceback; its working directory and ``tests/``
  (the project's test helpers, as pytest sees them) are on ``sys.path``.

Each child starts from the same freshly imported state, so commands do not see each other's
globals, exactly as separate processes would not.

Command lines:
    python tests/doc_runner.py serve SOCKET      # the server; prints "ready" once imported
    python -S tests/doc_runner.py shim NAME ...  # the client a shim execs (standard library only)
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import runpy
import signal
import socket
import struct
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: Modules imported once by the server so that its children start warm.
PRELOAD = (
    "torch", "numpy", "PIL.Image", "safetensors.torch", "matplotlib.pyplot", "transformers", "diffusers",
    "nnsight", "sae_lens", "huggingface_hub", "sae_flux", "sae_flux.cli", "sae_flux.flux", "sae_flux.cache",
    "sae_flux.train", "sae_flux.steer", "sae_flux.demo", "sae_flux.interp.index", "sae_flux.interp.explain",
    "sae_flux.interp.stage", "sae_flux.organism.world", "sae_flux.organism.judge", "itda", "itda.cli",
    "cae", "cae.cli", "cae.model", "cae.train", "cae.apply", "cae.organism", "cae.evaluate.behaviour",
)
_HEADER = struct.Struct("!I")


# -- framing: a 4-byte length, then JSON; file descriptors travel with the first chunk --


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    payload = _HEADER.pack(len(data)) + data
    if fds:
        sent = socket.send_fds(sock, [payload], fds)
        sock.sendall(payload[sent:])
    else:
        sock.sendall(payload)


def receive(sock: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and the descriptors that came with it; ``(None, [])`` at end of stream."""
    fds: list[int] = []
    if max_fds:
        data, fds, _, _ = socket.recv_fds(sock, 65536, max_fds)
    else:
        data = sock.recv(65536)
    if not data:
        return None, fds
    buffer = bytearray(data)
    while len(buffer) < _HEADER.size:
        buffer += _read_some(sock)
    (length,) = _HEADER.unpack_from(buffer)
    while len(buffer) < _HEADER.size + length:
        buffer += _read_some(sock)
    return json.loads(bytes(buffer[_HEADER.size:_HEADER.size + length])), fds


def _read_some(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise ConnectionError("the other side closed the connection mid-message")
    return chunk


# -- the server and its children --


def entry_points() -> dict[str, str]:
    """``{script name: "module:function"}`` from ``[project.scripts]`` of pyproject.toml."""
    import tomllib

    with open(REPO / "pyproject.toml", "rb") as handle:
        return dict(tomllib.load(handle)["project"]["scripts"])


def _die_with_parent() -> None:
    """On Linux, end the server when the process that started it ends, however that ends."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def serve(path: str) -> None:
    _die_with_parent()
    for name in PRELOAD:
        importlib.import_module(name)
    scripts = entry_points()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        conn, _ = server.accept()
        request, fds = receive(conn, max_fds=3)
        if request is None:
            conn.close()
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:
            server.close()
            _child(conn, request, fds, scripts)
        conn.close()
        for fd in fds:
            os.close(fd)


def _child(conn: socket.socket, request: dict[str, Any], fds: list[int], scripts: dict[str, str]) -> None:
    """Become the requested process; never returns."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    send(conn, {"pid": os.getpid()})
    if request["kind"] == "session":
        _session(conn)
    threading.Thread(target=_die_with_caller, args=(conn,), daemon=True).start()
    code = _command(request["name"], request["argv"], scripts)
    _flush()
    send(conn, {"rc": code})
    os._exit(code)


def _die_with_caller(conn: socket.socket) -> None:
    """The caller never writes again: end of stream means it is gone, so go too."""
    while conn.recv(1):
        pass
    os.kill(os.getpid(), signal.SIGKILL)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _command(name: str, argv: list[str], scripts: dict[str, str]) -> int:
    if name in scripts:
        module, function = scripts[name].split(":")
        sys.argv = [name, *argv]
        return _call(lambda: getattr(importlib.import_module(module), function)())
    if argv[:1] == ["-c"] and len(argv) > 1:
        sys.argv = ["-c", *argv[2:]]
        sys.path.insert(0, "")
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        return _call(lambda: exec(compile(argv[1], "<string>", "exec"), namespace))
    if argv[:1] == ["-m"] and len(argv) > 1:
        sys.argv = [argv[1], *argv[2:]]
        sys.path.insert(0, os.getcwd())
        return _call(lambda: runpy.run_module(argv[1], run_name="__main__", alter_sys=True) and None)
    if argv and not argv[0].startswith("-"):
        sys.argv = list(argv)
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        return _call(lambda: runpy.run_path(argv[0], run_name="__main__") and None)
    os.execv(sys.executable, [sys.executable, *argv])
    raise AssertionError("unreachable")


def _call(function: Any) -> int:
    """Run ``function`` as a process's main code; its exit status as the interpreter gives it
    (``runpy``'s returned globals are dropped by the callers: a module that ends without
    ``sys.exit``, such as ``torch.distributed.run``, exits 0)."""
    try:
        result = function()
    except SystemExit as stop:
        result = stop.code
    except BaseException:  # noqa: BLE001 (a process reports any error as a traceback and status 1)
        traceback.print_exc()
        return 1
    if result is None:
        return 0
    if isinstance(result, int):
        return result
    sys.stderr.write(f"{result}\n")
    return 1


def _session(conn: socket.socket) -> None:
    """Execute code blocks in one namespace until the caller hangs up; never returns."""
    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
    sys.path[:0] = [os.getcwd(), str(REPO / "tests")]
    while True:
        message, _ = receive(conn)
        if message is None:
            _flush()
            os._exit(0)
        error = None
        try:
            exec(compile(message["code"], message["filename"], "exec"), namespace)
        except BaseException:  # noqa: BLE001 (the block's error goes back to the test as text)
            error = traceback.format_exc()
        _flush()
        send(conn, {"error": error})


# -- the client side --


def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def shim(name: str, argv: list[str]) -> int:
    """Run ``name argv`` in a fresh child of the server with this process's streams."""
    sock = connect(os.environ["DOC_RUNNER_SOCKET"])
    send(sock, {"kind": "command", "name": name, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)},
         fds=[0, 1, 2])
    started, _ = receive(sock)
    if started is None:
        return 1
    finished, _ = receive(sock)
    if finished is None:
        sys.stderr.write(f"{name}: the process died without an exit status\n")
        return 1
    return int(finished["rc"])


class Session:
    """The test side of a Python session: one namespace in a child of the server."""

    def __init__(self, path: str, cwd: str, env: dict[str, str], output: int) -> None:
        self.sock = connect(path)
        with open(os.devnull, "rb") as null:
            send(self.sock, {"kind": "session", "cwd": cwd, "env": env}, fds=[null.fileno(), output, output])
        started, _ = receive(self.sock)
        if started is None:
            raise ConnectionError("the doc runner did not start a session")
        self.pid = int(started["pid"])

    def run(self, code: str, filename: str, timeout: float) -> str | None:
        """Execute ``code``; the traceback text when it raised, else ``None``."""
        self.sock.settimeout(timeout)
        send(self.sock, {"code": code, "filename": filename})
        try:
            reply, _ = receive(self.sock)
        except TimeoutError:
            self.close()
            return f"timed out after {timeout:.0f} s"
        if reply is None:
            return "the session process died (see its output)"
        return reply["error"]

    def close(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.sock.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    elif sys.argv[1] == "shim":
        sys.exit(shim(sys.argv[2], sys.argv[3:]))
    else:
        sys.exit(f"usage: {sys.argv[0]} serve SOCKET | shim NAME ARGS...")
