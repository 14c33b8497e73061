"""Vision-language chat backends that answer with JSON: an OpenAI-compatible endpoint and a cache.

The explainer and detection scorer of Shabalin et al. 2025 (arXiv 2505.24360; they used
gemini-2.0-flash with structured output) talk to a model through one method,
``ChatBackend.ask(system, text, images, keys) -> dict``. :class:`OpenAIChat` speaks the
OpenAI chat-completions protocol (hosted models and local servers such as vLLM): images are
sent as base64 PNG ``image_url`` parts, ``response_format`` asks for a JSON object, and every
answer is cached on disk by a hash of the request, so a rerun costs nothing. The HTTP exchange
(overall deadline, retries with capped backoff and ``Retry-After``, the API key sent only over
https or to loopback) is the one client shared with the cae judge,
:class:`_sae_flux_shared.endpoint.ChatClient`; an answer that is not the JSON asked for is
retried like a transient failure.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from _sae_flux_shared.endpoint import ChatClient, EndpointConfig, EndpointError
from _sae_flux_shared.usererror import ServiceError

logger = logging.getLogger(__name__)

class BackendError(ServiceError):
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
    """Environment variable holding the key (none is sent when it is unset, e.g. for local vLLM);
    it is sent only over https or to a loopback address unless ``allow_insecure_key``."""
    max_retries: int = 4
    """Retries after the first attempt for transient failures."""
    backoff: float = 2.0
    """Seconds before the first retry; doubled each time (a Retry-After header wins), capped."""
    max_backoff: float = 60.0
    """Cap on any wait between attempts, a server's Retry-After included."""
    timeout: float = 120.0
    """Overall deadline of one HTTP request in seconds (every byte of the answer included)."""
    allow_insecure_key: bool = False
    """Send the API key over plain http to a host that is not loopback."""
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
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        self.endpoint()  # checks the URL, the timings and where the key may go

    def endpoint(self) -> EndpointConfig:
        """The HTTP settings of :class:`~_sae_flux_shared.endpoint.ChatClient`."""
        return EndpointConfig(
            str(self.base_url), api_key=os.environ.get(self.api_key_env) or None,
            timeout=self.timeout, attempts=self.max_retries + 1, backoff=self.backoff,
            max_backoff=self.max_backoff, allow_insecure_key=self.allow_insecure_key)


class OpenAIChat:
    """:class:`ChatBackend` over ``POST {base_url}/chat/completions``."""

    def __init__(self, cfg: ChatConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.cache = ResponseCache(cfg.cache_dir)
        self.client = ChatClient(cfg.endpoint(), sleep=sleep)

    @property
    def requests_sent(self) -> int:
        """HTTP requests sent so far (retries included; cached answers send none)."""
        return self.client.requests_sent

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
        try:
            answer = self.client.complete(body, lambda content: parse_json(content, keys))
        except EndpointError as err:
            raise BackendError(str(err)) from err
        self.cache.put(key, answer)
        return answer
