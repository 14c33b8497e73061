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


def answer(body: dict[str, Any]) -> dict[str, Any]:
    """The stand-in's JSON answer to one chat-completions request."""
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

    def __init__(self) -> None:
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
                status, payload = 404, {"error": {"message": f"no route {self.path}"}}
            else:
                server.requests += 1
                if server.first_request_at is None:
                    server.first_request_at = time.time()
                content = json.dumps(answer(body))
                status, payload = 200, {"choices": [{"message": {"role": "assistant", "content": content}}]}
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
