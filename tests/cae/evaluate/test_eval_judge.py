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
    with pytest.raises(JudgeError, match=r"after 2 tries: endpoint http://127.0.0.1:9/v1/chat/completions is unreachable"):
        judge("p", "c")


def test_a_failing_judge_keeps_the_scores_computed_so_far(stub):
    url, _ = stub(["1", "0.5", "nothing"])
    judge = EndpointJudge(url, "m", "b", retries=1, backoff=0)
    with pytest.raises(JudgeError) as err:
        score_all(judge, ["a", "b", "c"], ["x", "y", "z"], done=[0.0])
    assert err.value.partial == [0.0, 1.0, 0.5]


@pytest.mark.parametrize("kwargs, message", [
    ({"base_url": "localhost:8000"}, "must be http"),
    ({"retries": 0}, "retries must be >= 1"),
])
def test_bad_judge_settings_are_refused(kwargs, message):
    args = {"base_url": "http://x/v1", "model": "m", "behaviour": "b", **kwargs}
    with pytest.raises(ValueError, match=message):
        EndpointJudge(**args)


def wordy_judge(prompt, completion):
    """A judge function that answers in words (``cae eval --judge-fn`` must refuse it)."""
    return "quite kind"


@pytest.mark.parametrize("value", ["quite kind", None, float("nan"), True, [1.0]])
def test_a_judge_that_returns_no_number_is_a_judge_error_naming_the_value(value):
    with pytest.raises(JudgeError, match=r"judge returned .* for prompt 1 \('b'\), not a finite "
                                         "number") as err:
        score_all(lambda p, c: 1.0 if p == "a" else value, ["a", "b"], ["x", "y"], done=[0.5])
    assert err.value.partial == [0.5, 1.0]


def test_cae_eval_with_a_wordy_judge_exits_2_in_one_line(tmp_path, capsys):
    from cae.cli import main
    from cae.organism.corpus import open_prompts, write_mwe_jsonl

    write_mwe_jsonl(str(tmp_path / "kind.jsonl"), "kind", n=16)
    (tmp_path / "open.txt").write_text("\n".join(open_prompts("kind", 2)) + "\n")
    assert main(["eval", "--model", "organism:tiny", "--data", str(tmp_path / "kind.jsonl"),
                 "--out", str(tmp_path / "o"), "--multipliers", "-1", "1", "--draws", "1",
                 "--layers", "1", "--open", str(tmp_path / "open.txt"),
                 "--judge-fn", "tests.cae.evaluate.test_eval_judge:wordy_judge"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith("cae eval") or "Traceback" in line]
    assert len(err) == 1 and "judge returned 'quite kind' for prompt 0" in err[0]
    kept = json.loads((tmp_path / "o" / "results.json").read_text())
    assert "sample_efficiency" in kept  # finished stages kept
