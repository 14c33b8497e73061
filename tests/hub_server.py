"""A loopback stand-in for the Hugging Face Hub, speaking the part of its HTTP API that uploads and
downloads use, so that huggingface_hub's REAL client code (``HfApi.create_repo``,
``create_commit``/``upload_file``/``upload_folder``, ``hf_hub_download``, ``snapshot_download``)
can be tested offline.

Endpoints (as called by huggingface_hub 2.x; see ``hf_api.py``, ``_commit_api.py``,
``file_download.py``):

- ``POST /api/repos/create``                        create a repo (409 when it exists)
- ``POST /api/validate-yaml``                       model-card metadata check (always valid)
- ``POST /api/{type}s/{repo}/preupload/{rev}``      every file is uploaded "regular" (inline
  base64 in the commit), so no LFS or Xet transfer is ever negotiated
- ``POST /api/{type}s/{repo}/commit/{rev}``         NDJSON commit: header, file, deletedFile
- ``GET  /api/{type}s/{repo}[/revision/{rev}]``     repo info with ``sha`` and ``siblings``
- ``GET  /api/{type}s/{repo}/tree/{rev}``           the file list (one page, files only)
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``          file download with ``X-Repo-Commit``/``ETag``

Writes need ``Authorization: Bearer <token>`` (401 otherwise, like the Hub); reads are public.

Use it as a fixture (``from hub_server import hub_server``) or directly::

    with HubServer() as hub:
        HfApi(endpoint=hub.url, token=hub.token).create_repo("org/name")

The ``hub_server`` fixture also turns huggingface_hub's offline mode off for the test (the test
session sets ``HF_HUB_OFFLINE=1``; only this loopback server is reachable anyway).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TOKEN = "hf_loopback_test_token"
_API_RE = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(preupload|commit|revision|tree)/(.+))?$")
_RESOLVE_RE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


@dataclass
class Repo:
    """One stored repository: its files at the head of ``main`` and its commit history."""

    repo_id: str
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class HubServer:
    """A threaded loopback HTTP server holding repos in memory (``.repos``, ``.requests``)."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- state changes (called by the handler) --

    def create(self, repo_id: str, private: bool) -> bool:
        if repo_id in self.repos:
            return False
        self.repos[repo_id] = Repo(repo_id, private)
        return True

    def commit(self, repo: Repo, lines: list[dict[str, Any]]) -> str:
        message = ""
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                message = value.get("summary", "")
            elif key == "file":
                repo.files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/")
                for path in [p for p in repo.files if p == prefix or p.startswith(prefix + "/")]:
                    del repo.files[path]
            else:
                raise ValueError(f"the loopback hub does not support commit entries of kind {key!r}")
        digest = hashlib.sha1(repr((repo.sha, sorted(repo.files.items()))).encode()).hexdigest()
        repo.commits.append(digest)
        repo.messages.append(message)
        return digest


def _git_oid(content: bytes) -> str:
    """The git blob id the Hub reports for a regular file (compared by the client to skip no-ops)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (quiet server)
            pass

        # -- helpers --

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None,
                  body: bytes | None = None, head: bool = False) -> None:
            data = body if body is not None else json.dumps(payload if payload is not None else {}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if body is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not head:
                self.wfile.write(data)

        def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, {"error": message}, headers, head=head)

        def _authorized(self) -> bool:
            if self.headers.get("Authorization") == f"Bearer {hub.token}":
                return True
            self._error(401, "Invalid credentials in Authorization header")
            return False

        def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "Repository not found", "RepoNotFound", head=head)
            return repo

        # -- verbs --

        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            hub.requests.append(("POST", self.path))
            body = self._body()
            path = self.path.split("?")[0]
            if path == "/api/validate-yaml":
                return self._send(200, {"errors": [], "warnings": []})
            if not self._authorized():
                return None
            if path == "/api/repos/create":
                request = json.loads(body)
                repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
                if not hub.create(repo_id, request.get("visibility") == "private"):
                    return self._error(409, "You already created this model repo")
                return self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
            match = _API_RE.match(path)
            if match is None or match.group(3) not in ("preupload", "commit"):
                return self._error(404, f"the loopback hub does not serve POST {path}")
            repo = self._repo(match.group(2))
            if repo is None:
                return None
            if match.group(3) == "preupload":
                files = json.loads(body)["files"]
                return self._send(200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                     "oid": _git_oid(repo.files[f["path"]]) if f["path"] in repo.files else None}
                    for f in files]})
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            sha = hub.commit(repo, lines)
            return self._send(200, {"commitUrl": f"{hub.url}/{repo.repo_id}/commit/{sha}",
                                    "commitOid": sha, "pullRequestUrl": None})

        def do_GET(self) -> None:  # noqa: N802
            self._get(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._get(head=True)

        def _get(self, head: bool) -> None:
            hub.requests.append(("HEAD" if head else "GET", self.path))
            path = self.path.split("?")[0]
            match = _API_RE.match(path)
            if match is not None and match.group(3) in (None, "revision"):
                repo = self._repo(match.group(2), head)
                if repo is None:
                    return
                info = {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.sha, "private": repo.private,
                        "siblings": [{"rfilename": p} for p in sorted(repo.files)]}
                return self._send(200, info, head=head)
            if match is not None and match.group(3) == "tree":
                repo = self._repo(match.group(2), head)
                if repo is None:
                    return
                tree = [{"type": "file", "path": p, "size": len(c), "oid": _git_oid(c)}
                        for p, c in sorted(repo.files.items())]
                return self._send(200, tree, head=head)
            match = _RESOLVE_RE.match(path)
            if match is None:
                return self._error(404, f"the loopback hub does not serve {path}", head=head)
            repo = self._repo(match.group(2), head)
            if repo is None:
                return
            content = repo.files.get(match.group(4))
            if content is None:
                return self._error(404, "Entry not found", "EntryNotFound", head=head)
            etag = f'"{hashlib.sha256(content).hexdigest()}"'
            headers = {"X-Repo-Commit": repo.sha, "ETag": etag}
            self._send(200, headers=headers, body=content, head=head)

    return Handler


@pytest.fixture
def hub_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running :class:`HubServer` with huggingface_hub's offline mode turned off for the test."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with HubServer() as hub:
        yield hub
