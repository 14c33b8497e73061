"""The one HTTP client (``_sae_flux_shared.endpoint``) of the VLM explainer and the cae judge,
against a loopback server speaking the OpenAI chat-completions protocol (``tests/vlm_server.py``)
that misbehaves on purpose: a server dripping one byte at a time, ``Retry-After`` headers, server
errors, a connection cut mid-answer; and where the API key may go."""

from __future__ import annotations

import email.utils

import pytest
from PIL import Image
from vlm_server import VLMServer

from _sae_flux_shared.endpoint import (
    ChatClient,
    EndpointConfig,
    EndpointError,
    key_may_go_to,
    retry_after_seconds,
)
from _sae_flux_shared.usererror import UserError
from cae.evaluate.judge import EndpointJudge, JudgeError
from sae_flux.interp.chat import BackendError, ChatConfig, OpenAIChat

BODY = {"model": "m", "messages": [{"role": "user", "content": "rate this"}]}
IMAGE = Image.new("RGB", (8, 8), (255, 0, 0))


def _client(url: str, sleeps: list[float], **settings) -> ChatClient:
    cfg = EndpointConfig(url, **{"attempts": 3, "backoff": 0.5, "timeout": 5.0, **settings})
    return ChatClient(cfg, sleep=sleeps.append)


def test_a_server_dripping_its_answer_is_cut_at_the_overall_deadline_then_retried() -> None:
    # one byte every 0.05 s: every read succeeds well within the per-read timeout, so only the
    # overall deadline (0.5 s for a ~90-byte answer that takes ~4.5 s) can stop it
    sleeps: list[float] = []
    with VLMServer(script=["drip", "drip"], drip_s=0.05) as server:
        client = _client(server.url, sleeps, timeout=0.5, attempts=2)
        with pytest.raises(EndpointError, match=r"failed after 2 attempts: no complete answer .* "
                                                r"within the 0.5 s deadline \(\d+ bytes read\)"):
            client.complete(BODY, parse=float)
        assert server.requests == 2 and sleeps == [0.5]
        assert client.complete(BODY, parse=float) == 0.5  # the script is spent: a normal answer


def test_a_server_dripping_its_headers_is_abandoned_at_the_deadline() -> None:
    # still in the headers, the answer never reaches the chunk loop: the watchdog ends it
    sleeps: list[float] = []
    with VLMServer(script=["drip-headers", "drip-headers"], drip_s=0.05) as server:
        client = _client(server.url, sleeps, timeout=0.5, attempts=1)
        with pytest.raises(EndpointError, match=r"no complete answer .* within the 0.5 s deadline$"):
            client.complete(BODY, parse=float)
        client = _client(server.url, sleeps, timeout=0.5, attempts=2)
        assert client.complete(BODY, parse=float) == 0.5  # the second attempt is answered
        assert server.requests == 3 and sleeps == [0.5]


def test_server_errors_are_retried_with_exponential_backoff_capped() -> None:
    sleeps: list[float] = []
    with VLMServer(script=["500", "500", "500", "500"]) as server:
        client = _client(server.url, sleeps, attempts=5, backoff=2.0, max_backoff=5.0)
        assert client.complete(BODY, parse=float) == 0.5
    assert sleeps == [2.0, 4.0, 5.0, 5.0] and server.requests == 5


def test_retry_after_is_honoured_but_capped() -> None:
    sleeps: list[float] = []
    with VLMServer(script=["retry-after:0.25", "retry-after:86400"]) as server:
        client = _client(server.url, sleeps, max_backoff=30.0)
        assert client.complete(BODY, parse=float) == 0.5
    assert sleeps == [0.25, 30.0]  # a day's wait is capped at max_backoff


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after_seconds("7") == 7.0
    now = email.utils.parsedate_to_datetime("Wed, 02 Dec 2026 14:00:00 GMT").timestamp()
    assert retry_after_seconds("Wed, 02 Dec 2026 14:00:30 GMT", now=now) == 30.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_an_incomplete_read_is_retried() -> None:
    sleeps: list[float] = []
    with VLMServer(script=["cut"]) as server:
        assert _client(server.url, sleeps).complete(BODY, parse=float) == 0.5
    assert server.requests == 2 and sleeps == [0.5]


def test_a_client_error_fails_at_once(monkeypatch) -> None:
    sleeps: list[float] = []
    with VLMServer() as server:
        client = _client(server.url.removesuffix("/v1") + "/nowhere", sleeps)
        with pytest.raises(EndpointError, match="HTTP 404"):
            client.complete(BODY, parse=float)
    assert sleeps == []


def test_the_key_goes_to_loopback_over_http() -> None:
    with VLMServer() as server:
        _client(server.url, [], api_key="sk-loop").complete(BODY, parse=float)
    assert server.headers[0]["Authorization"] == "Bearer sk-loop"


@pytest.mark.parametrize("url, allowed", [
    ("https://api.openai.com/v1", True), ("http://127.0.0.1:8000/v1", True),
    ("http://127.9.9.9/v1", True), ("http://localhost:8000/v1", True), ("http://[::1]:8000/v1", True),
    ("http://10.0.0.7:8000/v1", False), ("http://vlm.example.org/v1", False),
    ("http://localhost.example.org/v1", False),
])
def test_the_key_goes_only_over_https_or_to_loopback(url: str, allowed: bool) -> None:
    assert key_may_go_to(url) is allowed
    if allowed:
        EndpointConfig(url, api_key="sk")
    else:
        with pytest.raises(UserError, match="refusing to send the API key over plain http"):
            EndpointConfig(url, api_key="sk")
        assert EndpointConfig(url, api_key="sk", allow_insecure_key=True).api_key == "sk"
        assert EndpointConfig(url).api_key is None  # no key: nothing to protect


def test_the_vlm_backend_uses_the_client_its_deadline_and_its_key_rule(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VLM_KEY", "sk-vlm")
    with VLMServer(script=["drip"], drip_s=0.05) as server:
        cfg = ChatConfig(base_url=server.url, model="stand-in", timeout=0.5, max_retries=1, backoff=0,
                         api_key_env="VLM_KEY", cache_dir=str(tmp_path / "c"))
        answer = OpenAIChat(cfg, sleep=lambda s: None).ask("s", 'Feature description: red', [IMAGE], ("score",))
    assert answer == {"score": 1.0} and server.requests == 2
    assert server.headers[1]["Authorization"] == "Bearer sk-vlm"
    with pytest.raises(UserError, match="plain http to http://vlm.example.org/v1"):
        ChatConfig(base_url="http://vlm.example.org/v1", model="m", api_key_env="VLM_KEY")
    with VLMServer(script=["drip", "drip"], drip_s=0.05) as server:
        cfg = ChatConfig(base_url=server.url, model="stand-in", timeout=0.5, max_retries=1, backoff=0,
                         cache_dir=str(tmp_path / "c2"))
        with pytest.raises(BackendError, match="failed after 2 attempts: no complete answer"):
            OpenAIChat(cfg, sleep=lambda s: None).ask("s", "t", [IMAGE], ("score",))


def test_the_judge_uses_the_same_client() -> None:
    sleeps: list[float] = []
    with VLMServer(script=["retry-after:86400", "drip", "drip"], drip_s=0.05) as server:
        judge = EndpointJudge(server.url, "m", "kindness", retries=3, backoff=1.0, timeout=0.5,
                              max_backoff=2.0, sleep=sleeps.append)
        with pytest.raises(JudgeError, match=r"judge failed after 3 tries: no complete answer .* 0.5 s deadline"):
            judge("p", "c")
        assert sleeps == [2.0, 2.0]  # Retry-After capped, then the doubled backoff capped
        assert judge("p", "c") == 0.5
