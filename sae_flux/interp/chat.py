"""Vision-language chat backends that answer with JSON: an OpenAI-compatible endpoint and a cache.

The explainer and detection scorer of Shabalin et al. 2025 (arXiv 2505.24360; they used
gemini-2.0-flash with structured output) talk to a model through one method,
``ChatBackend.ask(system, text, images, keys) -> dict``. :class:`OpenAIChat` speaks the
OpenAI chat-completions protocol (hosted models and local servers such as vLLM): images are
sent as base64 PNG ``image_url`` parts, ``response_format`` asks for a JSON object, transient
failures (unreachable host, HTTP 429 / 5xx, invalid JSON) are retried with exponential
backoff, and every answer is cached on disk by a hash of the request, so a rerun costs
nothing. Only the standard library is used.

Example:
    >>> chat = OpenAIChat(  # doctest: +SKIP
    ...     ChatConfig(base_url="http://127.0.0.1:8000/v1", model="qwen2.5-vl"))
    >>> chat.ask("Answer in JSON.", 'Reply {"colour": "..."}',  # doctest: +SKIP
    ...          [image], keys=("colour",))
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

logger = logging.getLogger(__name__)

#: HTTP statuses worth retrying (rate limit, server trouble).
RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)


class BackendError(RuntimeError):
    """A model backend failed for good (after its retries)."""


class ChatBackend(Protocol):
    """Anything that answers a system + user prompt with images by a JSON object."""

    def ask(self, system: str, text: str, images: Sequence[Image.Image], keys: Sequence[str]) -> dict[str, Any]:
        """The model's JSON answer; raises :class:`BackendError` when it cannot get one."""
        ...


def parse_json(text: str, keys: Sequence[str]) -> dict[str, Any]:
    """The first JSON object in ``text`` (fenced or bare), checked to hold ``keys``."""
    match = re.search(r"\{.*\}", text, flags=re.DOTALL)
    if match is None:
        raise ValueError(f"no JSON object in the model's answer: {text[:200]!r}")
    try:
        value = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON in the model's answer ({err}): {text[:200]!r}") from err
    if not isinstance(value, dict):
        raise ValueError(f"the model's JSON is not an object: {text[:200]!r}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise ValueError(f"the model's JSON lacks {missing}: {text[:200]!r}")
    return value


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ResponseCache:
    """Answers on disk keyed by the SHA-256 of the request (``<dir>/<hash>.json``)."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = Path(directory) if directory else None

    @staticmethod
    def key(request: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True).encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        if self.directory is None or not (self.directory / f"{key}.json").is_file():
            return None
        return json.loads((self.directory / f"{key}.json").read_text())

    def put(self, key: str, answer: dict[str, Any]) -> None:
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{key}.tmp"
        tmp.write_text(json.dumps(answer))
        os.replace(tmp, self.directory / f"{key}.json")


@dataclass
class ChatConfig:
    """An OpenAI-compatible chat endpoint (unset fields fall back to environment variables)."""

    base_url: str | None = None
    """API root such as ``https://api.openai.com/v1`` (env ``SAE_FLUX_VLM_BASE_URL``, then ``OPENAI_BASE_URL``)."""
    model: str | None = None
    """Model name (env ``SAE_FLUX_VLM_MODEL``)."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the key (none is sent when it is unset, e.g. for local vLLM)."""
    max_retries: int = 4
    """Retries after the first attempt for transient failures."""
    backoff: float = 2.0
    """Seconds before the first retry; doubled each time (a Retry-After header wins)."""
    timeout: float = 120.0
    """Seconds per HTTP request."""
    cache_dir: str | None = ".sae-flux-vlm-cache"
    """Directory of cached answers (None: no cache)."""
    temperature: float = 0.0
    max_tokens: int = 800

    def __post_init__(self) -> None:
        self.base_url = self.base_url or os.environ.get("SAE_FLUX_VLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        self.model = self.model or os.environ.get("SAE_FLUX_VLM_MODEL")
        if not self.base_url:
            raise ValueError("no endpoint: set ChatConfig.base_url (--base-url) or SAE_FLUX_VLM_BASE_URL")
        if not self.model:
            raise ValueError("no model: set ChatConfig.model (--vlm-model) or SAE_FLUX_VLM_MODEL")
        if self.max_retries < 0 or self.backoff < 0:
            raise ValueError("max_retries and backoff must be >= 0")


class OpenAIChat:
    """:class:`ChatBackend` over ``POST {base_url}/chat/completions``."""

    def __init__(self, cfg: ChatConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.cache = ResponseCache(cfg.cache_dir)
        self.sleep = sleep
        self.requests_sent = 0

    def request(self, system: str, text: str, images: Sequence[Image.Image]) -> dict[str, Any]:
        """The chat-completions request body."""
        parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": png_data_url(im)}} for im in images]
        parts.append({"type": "text", "text": text})
        return {
            "model": self.cfg.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": parts}],
            "response_format": {"type": "json_object"},
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }

    def ask(self, system: str, text: str, images: Sequence[Image.Image], keys: Sequence[str]) -> dict[str, Any]:
        body = self.request(system, text, images)
        key = ResponseCache.key(body)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        problem = ""
        for attempt in range(self.cfg.max_retries + 1):
            if attempt:
                self.sleep(self._delay(attempt, problem))
            try:
                answer = parse_json(self._post(body), keys)
            except _Transient as err:
                problem = str(err)
                logger.warning("attempt %d/%d failed: %s", attempt + 1, self.cfg.max_retries + 1, problem)
                continue
            except ValueError as err:  # invalid JSON: the model may do better next time
                problem = str(err)
                logger.warning("attempt %d/%d: %s", attempt + 1, self.cfg.max_retries + 1, problem)
                continue
            self.cache.put(key, answer)
            return answer
        raise BackendError(f"{self.cfg.base_url} failed after {self.cfg.max_retries + 1} attempts: {problem}")

    def _delay(self, attempt: int, problem: str) -> float:
        match = re.search(r"retry-after=([0-9.]+)", problem)
        return float(match.group(1)) if match else self.cfg.backoff * 2 ** (attempt - 1)

    def _post(self, body: dict[str, Any]) -> str:
        url = f"{str(self.cfg.base_url).rstrip('/')}/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.cfg.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        data = json.dumps(body).encode("utf-8")
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        self.requests_sent += 1
        try:
            with urllib.request.urlopen(request, timeout=self.cfg.timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:200]
            if err.code in RETRY_STATUS:
                retry = err.headers.get("Retry-After") if err.headers else None
                raise _Transient(f"HTTP {err.code} from {url}: {detail}"
                                 + (f" retry-after={retry}" if retry else "")) from err
            raise BackendError(f"HTTP {err.code} from {url}: {detail}") from err
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise _Transient(f"endpoint {url} is unreachable: {err}") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"{url} answered with a body that is not JSON: {err}") from err
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{url} answered without choices[0].message.content: {str(payload)[:200]}") from err


class _Transient(Exception):
    """A failure worth retrying."""
