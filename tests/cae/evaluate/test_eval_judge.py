"""The endpoint judge against a local OpenAI-compatible stub server: parsing, retries with
backoff, and a clear error that keeps the scores computed so far."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from cae.evaluate.judge import EndpointJudge, JudgeError
from cae.evaluate.shift import score_all


def serve(replies):
    """Stub server answering successive POSTs with ``replies`` (then the last one)."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            reply = replies[min(len(seen) - 1, len(replies) - 1)]
            body = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.fixture
def stub():
    servers = []

    def make(replies):
        server, seen = serve(replies)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/v1", seen

    yield make
    for server in servers:
        server.shutdown()


def test_judge_reads_the_first_number_and_sends_the_rubric(stub):
    url, seen = stub(["Score: -0.5 because"])
    judge = EndpointJudge(url, "m", "kindness", criteria="Be strict.", backoff=0)
    assert judge("Hi?", "i ignore them") == -0.5
    text = seen[0]["messages"][0]["content"]
    assert "kindness" in text and "Be strict." in text and "i ignore them" in text
    assert seen[0]["model"] == "m" and seen[0]["temperature"] == 0


def test_unparseable_replies_are_retried_then_a_clear_error(stub):
    url, seen = stub(["no idea", "still none", "0.25"])
    assert EndpointJudge(url, "m", "b", retries=3, backoff=0)("p", "c") == 0.25
    url, seen = stub(["no idea"])
    with pytest.raises(JudgeError, match=r"judge failed after 2 tries: unparseable reply 'no idea'"):
        EndpointJudge(url, "m", "b", retries=2, backoff=0)("p", "c")
    assert len(seen) == 2


def test_unreachable_endpoint_is_a_clear_error():
    judge = EndpointJudge("http://127.0.0.1:9/v1", "m", "b", retries=2, backoff=0, timeout=2)
    with pytest.raises(JudgeError, match=r"after 2 tries: endpoint http://127.0.0.1:9/v1 unreachable"):
        judge("p", "c")


def test_a_failing_judge_keeps_the_scores_computed_so_far(stub):
    url, _ = stub(["1", "0.5", "nothing"])
    judge = EndpointJudge(url, "m", "b", retries=1, backoff=0)
    with pytest.raises(JudgeError) as err:
        score_all(judge, ["a", "b", "c"], ["x", "y", "z"], done=[0.0])
    assert err.value.partial == [0.0, 1.0, 0.5]


@pytest.mark.parametrize("kwargs, message", [
    ({"base_url": "localhost:8000"}, "must be an http"),
    ({"retries": 0}, "retries must be >= 1"),
])
def test_bad_judge_settings_are_refused(kwargs, message):
    args = {"base_url": "http://x/v1", "model": "m", "behaviour": "b", **kwargs}
    with pytest.raises(ValueError, match=message):
        EndpointJudge(**args)
