"""The OpenAI-compatible backend against a loopback server: retries, invalid JSON, cache, errors."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from PIL import Image

from sae_flux.interp.chat import BackendError, ChatConfig, OpenAIChat, parse_json


class _Server:
    """Answers POST /v1/chat/completions with a scripted list of (status, content) replies."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.path, dict(self.headers), body))
                status, content = server.replies.pop(0) if server.replies else (500, "no more replies")
                if status == 200:
                    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
                else:
                    payload = json.dumps({"error": {"message": content}})
                data = payload.encode()
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "0.01")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _chat(url, tmp_path, retries=2, sleeps=None):
    cfg = ChatConfig(base_url=url, model="toy-vlm", max_retries=retries, backoff=0.5,
                     cache_dir=str(tmp_path / "cache"), timeout=5)
    return OpenAIChat(cfg, sleep=(sleeps.append if sleeps is not None else lambda s: None))


IMAGE = Image.new("RGB", (8, 8), (255, 0, 0))


def test_request_carries_model_images_json_mode_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with _Server([(200, '{"pattern": "red things", "descriptions": ["red"]}')]) as server:
        answer = _chat(server.url, tmp_path).ask("sys", "describe", [IMAGE, IMAGE], keys=("pattern",))
    assert answer == {"pattern": "red things", "descriptions": ["red"]}
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "toy-vlm" and body["response_format"] == {"type": "json_object"}
    parts = body["messages"][1]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"]
    assert parts[0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_server_error_and_rate_limit_are_retried_with_backoff(tmp_path):
    sleeps = []
    with _Server([(503, "overloaded"), (429, "slow down"), (200, '{"score": 0.75}')]) as server:
        answer = _chat(server.url, tmp_path, sleeps=sleeps).ask("s", "t", [IMAGE], keys=("score",))
    assert answer == {"score": 0.75} and len(server.requests) == 3
    assert sleeps == [0.5, 0.01]  # exponential backoff, then the server's Retry-After


def test_invalid_json_is_retried_then_reported(tmp_path):
    with _Server([(200, "not json at all"), (200, '```json\n{"score": 1}\n```')]) as server:
        assert _chat(server.url, tmp_path).ask("s", "t", [IMAGE], keys=("score",)) == {"score": 1}
    with _Server([(200, '{"score": '), (200, '{"other": 1}'), (200, "{}")]) as server:
        with pytest.raises(BackendError, match=r"failed after 3 attempts: the model's JSON lacks \['score'\]"):
            _chat(server.url, tmp_path).ask("s", "t2", [IMAGE], keys=("score",))


def test_a_rerun_is_answered_from_the_cache(tmp_path):
    with _Server([(200, '{"score": 0.2}')]) as server:
        first = _chat(server.url, tmp_path).ask("s", "t", [IMAGE], keys=("score",))
    chat = _chat("http://127.0.0.1:9/v1", tmp_path)  # nothing listens there
    assert chat.ask("s", "t", [IMAGE], keys=("score",)) == first and chat.requests_sent == 0


def test_unreachable_endpoint_stops_with_a_message(tmp_path):
    chat = _chat("http://127.0.0.1:9/v1", tmp_path, retries=1)
    with pytest.raises(BackendError, match="failed after 2 attempts: endpoint .* is unreachable"):
        chat.ask("s", "new question", [IMAGE], keys=("score",))


def test_client_error_is_not_retried(tmp_path):
    with _Server([(401, "bad key"), (200, '{"score": 1}')]) as server:
        with pytest.raises(BackendError, match="HTTP 401 .*bad key"):
            _chat(server.url, tmp_path).ask("s", "t", [IMAGE], keys=("score",))
    assert len(server.requests) == 1


def test_config_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a key for a plain-http host is refused
    monkeypatch.setenv("SAE_FLUX_VLM_BASE_URL", "http://example.invalid/v1")
    monkeypatch.setenv("SAE_FLUX_VLM_MODEL", "m")
    cfg = ChatConfig()
    assert (cfg.base_url, cfg.model) == ("http://example.invalid/v1", "m")
    monkeypatch.delenv("SAE_FLUX_VLM_MODEL")
    with pytest.raises(ValueError, match="no model"):
        ChatConfig()


def test_parse_json_names_the_problem():
    with pytest.raises(ValueError, match="no JSON object"):
        parse_json("sorry", keys=())
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_json("{'single': quotes}", keys=())
