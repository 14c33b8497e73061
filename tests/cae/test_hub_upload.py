"""``push_to_hub`` through huggingface_hub's own client against a loopback Hub stand-in;
the uploaded files load back as the same vector."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from cae import SteeringVector, VectorMeta


class FakeHub(BaseHTTPRequestHandler):
    """Answers the three calls an upload makes: create repo, preupload, commit."""

    files: dict[str, bytes] = {}
    paths: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.paths.append(self.path)
        if self.path == "/api/repos/create":
            req = json.loads(body)
            repo = "/".join(x for x in (req.get("organization"), req["name"]) if x)
            self._reply({"url": f"http://{self.headers['Host']}/{repo}"})
        elif "/preupload/" in self.path:
            files = json.loads(body)["files"]
            self._reply({"files": [{"path": f["path"], "uploadMode": "regular",
                                    "shouldIgnore": False} for f in files]})
        elif "/commit/" in self.path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            self._reply({"commitUrl": f"http://{self.headers['Host']}/me/kind-vector/commit/"
                                      + "1" * 40, "commitOid": "1" * 40})
        else:
            self.send_error(404)


@pytest.fixture
def hub():
    FakeHub.files, FakeHub.paths = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_push_to_hub_uploads_the_saved_directory(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # loopback only: nothing leaves the host
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    sv = SteeringVector({2: torch.arange(6.0)}, VectorMeta("org/model", 6, (2,), n_pairs=3))
    sv.push_to_hub("me/kind-vector", token="hf_fake", endpoint=hub)
    assert set(FakeHub.files) == {"steering_vector.json", "vectors.safetensors"}
    for name, data in FakeHub.files.items():
        (tmp_path / name).write_bytes(data)
    back = SteeringVector.load(tmp_path)
    assert back.meta == sv.meta and torch.equal(back.vectors[2], sv.vectors[2])
    assert FakeHub.paths[0] == "/api/repos/create"
