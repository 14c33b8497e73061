"""A loopback stand-in for an OpenAI-compatible vision-language model, for offline tests and docs.

``POST /v1/chat/completions`` with the request body :class:`sae_flux.interp.chat.OpenAIChat`
sends (system + user message, base64 PNG ``image_url`` parts, ``response_format`` JSON). The
"model" only sees colours: it names the most common saturated colour of the images it is shown
(from the six colours of the organism's palette) and rates an image 1.0 when a description's
colour is visible in it, else 0.0. So the interpretation pipeline gets real JSON answers that
depend on the pixels, but nothing here measures a real VLM's quality.

Use it as a context manager; ``.url`` is the API root to pass as ``base_url`` /
``SAE_FLUX_VLM_BASE_URL``; ``.requests`` counts the chat requests answered, ``.first_request_at`` says when the first came::

    with VLMServer() as vlm:
        OpenAIChat(ChatConfig(base_url=vlm.url, model="stand-in")).ask(...)

A request with one text message (the cae judge's) is answered ``"0.5"``. For the HTTP client's
tests, ``VLMServer(script=[...])`` misbehaves on purpose, one mode per request in order (then
``ok``): ``ok``; ``500`` (a server error); ``retry-after:VALUE`` (429 with that ``Retry-After``);
``drip`` (the answer one byte every ``drip_s`` seconds); ``drip-headers`` (even the status line and
headers one byte at a time); ``cut`` (half the promised body, then the connection closes: an
incomplete read). ``.headers`` holds every chat request's headers.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
from PIL import Image

from sae_flux.organism.world import PALETTE as COLOURS


def colour_counts(image: Image.Image) -> dict[str, int]:
    """Pixels of each palette colour (nearest colour, within 80 RGB units)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    distance = np.linalg.norm(pixels[:, None, :] - palette[None], axis=2)
    nearest = distance.argmin(1)[distance.min(1) < 80]
    return {name: int((nearest == i).sum()) for i, name in enumerate(COLOURS)}


def answer(body: dict[str, Any]) -> dict[str, Any] | str:
    """The stand-in's answer to one chat-completions request (JSON for the VLM, a number for a judge)."""
    if len(body["messages"]) == 1:
        return "0.5"
    parts = body["messages"][1]["content"]
    images = [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1])))
              for p in parts if p["type"] == "image_url"]
    text = next(p["text"] for p in parts if p["type"] == "text")
    counts = [colour_counts(image) for image in images]
    if '"pattern"' in text:
        total = {name: sum(c[name] for c in counts) for name in COLOURS}
        return {"descriptions": [f"{max(c, key=c.get)} pixels" for c in counts],
                "pattern": f"{max(total, key=total.get)} shapes"}
    named = [name for name in COLOURS if name in text.split("Feature description:", 1)[-1]]
    return {"score": 1.0 if any(counts[0][name] > 0 for name in named) else 0.0}


class VLMServer:
    """A threaded loopback HTTP server answering chat completions with :func:`answer`."""

    def __init__(self, script: list[str] | None = None, drip_s: float = 0.05) -> None:
        self.script = list(script or [])
        """Misbehaviours still to play, one per chat request (see the module docstring)."""
        self.drip_s = drip_s
        """Seconds between two bytes in the drip modes."""
        self.headers: list[dict[str, str]] = []
        self.requests = 0
        self.first_request_at: float | None = None
        """``time.time()`` when the first chat request arrived."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> VLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(server: VLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (quiet server)
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, {"error": {"message": f"no route {self.path}"}})
                return
            server.requests += 1
            server.headers.append(dict(self.headers))
            if server.first_request_at is None:
                server.first_request_at = time.time()
            mode = server.script.pop(0) if server.script else "ok"
            reply = answer(body)
            content = reply if isinstance(reply, str) else json.dumps(reply)
            payload = {"choices": [{"message": {"role": "assistant", "content": content}}]}
            if mode == "500":
                self._send(500, {"error": {"message": "internal error"}})
            elif mode.startswith("retry-after:"):
                self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": mode.split(":", 1)[1]})
            elif mode == "cut":
                data = json.dumps(payload).encode()
                self._head(200, len(data))
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif mode in ("drip", "drip-headers"):
                data = json.dumps(payload).encode()
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {len(data)}\r\n\r\n").encode()
                if mode == "drip":
                    self.wfile.write(head)
                self._drip(data if mode == "drip" else head + data)
            else:
                self._send(200, payload)

        def _drip(self, data: bytes) -> None:
            for i in range(len(data)):
                try:
                    self.wfile.write(data[i:i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up: that is the point of the test
                    return
                time.sleep(server.drip_s)

        def _head(self, status: int, length: int, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(length))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()

        def _send(self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
            data = json.dumps(payload).encode()
            self._head(status, len(data), extra)
            self.wfile.write(data)

    return Handler
