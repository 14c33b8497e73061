"""One HTTP client for OpenAI-compatible ``/chat/completions`` endpoints (the VLM explainer of
``sae_flux.interp.chat`` and the LLM judge of ``cae.evaluate.judge``), on ``httpx`` + ``tenacity``.

What a request gets:

- **An overall deadline** (``timeout`` seconds from sending to the last byte of the answer): the
  answer is streamed and the clock is checked after every chunk, and a watchdog abandons an
  exchange that is still stuck in a single read, so a server that drips one byte a second (or
  never finishes its headers) cannot hold a request past its deadline. ``httpx``'s own timeouts
  only bound each read.
- **Retries with capped exponential backoff**: ``backoff``, ``2 * backoff``, ... seconds, never
  more than ``max_backoff``; a ``Retry-After`` header (seconds or an HTTP date) is honoured but
  capped at ``max_backoff`` too. Retried: unreachable host, timeouts, a connection dropped
  mid-answer (an incomplete read), HTTP 408 / 409 / 429 / 5xx, a body that is not JSON, and an
  answer the caller's ``parse`` refuses (``ValueError``: the model may do better next time). Any
  other HTTP status (401, 404, ...) fails at once.
- **The API key only where it is safe**: it is sent over ``https``, or over plain ``http`` to a
  loopback address (``localhost``, ``127.0.0.0/8``, ``::1``); a key for any other ``http`` URL is
  refused before anything is sent, unless ``allow_insecure_key`` is set.

After the last attempt :class:`EndpointError` (a :class:`~_sae_flux_shared.usererror.ServiceError`)
says what went wrong, so the CLIs report it in one line.

Example:
    >>> client = ChatClient(EndpointConfig("http://127.0.0.1:8000/v1"))  # doctest: +SKIP
    >>> client.complete({"model": "m", "messages": [...]}, parse=str)     # doctest: +SKIP
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import tenacity

from _sae_flux_shared.usererror import ServiceError, UserError

logger = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
"""HTTP statuses worth retrying (timeout, conflict, rate limit, server trouble)."""


class EndpointError(ServiceError):
    """The endpoint failed for good: a status that is not worth retrying, or every attempt."""

    def __init__(self, message: str, problem: str = "", attempts: int = 0) -> None:
        super().__init__(message)
        self.problem = problem
        """The last failure, without the 'failed after N attempts' prefix."""
        self.attempts = attempts
        """Attempts made (0: failed before retrying made sense)."""


class _Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's wish in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class EndpointConfig:
    """Where and how to reach an OpenAI-compatible endpoint."""

    base_url: str
    """API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``."""
    api_key: str | None = None
    """Bearer token (None: no ``Authorization`` header)."""
    timeout: float = 120.0
    """Overall deadline of one request in seconds (connect, send, every byte of the answer)."""
    attempts: int = 5
    """Tries per request, the first included."""
    backoff: float = 2.0
    """Seconds before the first retry; doubled after each failure."""
    max_backoff: float = 60.0
    """Cap on any wait between tries, a ``Retry-After`` included."""
    allow_insecure_key: bool = False
    """Send ``api_key`` over plain http to a host that is not loopback."""

    def __post_init__(self) -> None:
        scheme = urlsplit(self.base_url).scheme
        if scheme not in ("http", "https") or not urlsplit(self.base_url).hostname:
            raise UserError(f"endpoint URL must be http(s)://HOST/..., got {self.base_url!r}")
        for name in ("timeout", "backoff", "max_backoff"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "timeout" and value == 0):
                raise UserError(f"endpoint {name} must be a finite number of seconds "
                                f"{'> 0' if name == 'timeout' else '>= 0'}, got {value}")
        if self.attempts < 1:
            raise UserError(f"endpoint attempts must be >= 1, got {self.attempts}")
        if self.api_key and not key_may_go_to(self.base_url) and not self.allow_insecure_key:
            raise UserError(
                f"refusing to send the API key over plain http to {self.base_url} (not https, not "
                f"loopback): use https, unset the key variable, or pass --allow-insecure-key")

    @property
    def url(self) -> str:
        """The chat-completions URL."""
        return f"{self.base_url.rstrip('/')}/chat/completions"


def key_may_go_to(url: str) -> bool:
    """True when a bearer token may be sent to ``url``: https, or http to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds (delta-seconds or an HTTP date), None when unusable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


class ChatClient:
    """``POST {base_url}/chat/completions`` with a deadline, retries and the key policy.

    ``sleep`` waits between attempts (tests pass a recorder); ``transport`` is an ``httpx``
    transport (tests may pass ``httpx.MockTransport``).
    """

    def __init__(self, cfg: EndpointConfig, sleep: Callable[[float], None] = time.sleep,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.cfg = cfg
        self.sleep = sleep
        self.transport = transport
        self.requests_sent = 0
        """HTTP requests sent (every attempt counts)."""

    def complete(self, body: dict[str, Any], parse: Callable[[str], T]) -> T:
        """``parse(choices[0].message.content)`` of the answer to ``body``, retried as described
        in the module docstring; :class:`EndpointError` after the last attempt."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.cfg.attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception_type((_Transient, ValueError)),
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(lambda: parse(self._content(self._post(body))))
        except (_Transient, ValueError) as err:
            attempts = self.cfg.attempts
            raise EndpointError(f"{self.cfg.base_url} failed after {attempts} attempts: {err}",
                                str(err), attempts) from err

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exponential = self.cfg.backoff * 2 ** (state.attempt_number - 1)
        error = state.outcome.exception() if state.outcome is not None else None
        asked = error.retry_after if isinstance(error, _Transient) else None
        return min(asked if asked is not None else exponential, self.cfg.max_backoff)

    def _log_retry(self, state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        logger.warning("%s attempt %d/%d failed: %s", self.cfg.base_url, state.attempt_number,
                       self.cfg.attempts, error)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.cfg.api_key:
            headers["Authorization"] = f"Bearer {self.cfg.api_key}"
        return headers

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One attempt under the overall deadline (a watchdog thread bounds a stuck read)."""
        self.requests_sent += 1
        deadline = time.monotonic() + self.cfg.timeout
        client = httpx.Client(timeout=self.cfg.timeout, transport=self.transport)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="endpoint")
        try:
            future = pool.submit(self._exchange, client, body, deadline)
            return future.result(timeout=self.cfg.timeout + 0.5)
        except FutureTimeout as err:
            raise _Transient(f"no complete answer from {self.cfg.url} within the "
                             f"{self.cfg.timeout:g} s deadline") from err
        finally:
            client.close()  # also ends an exchange the watchdog gave up on
            pool.shutdown(wait=False)

    def _exchange(self, client: httpx.Client, body: dict[str, Any], deadline: float) -> dict[str, Any]:
        url = self.cfg.url
        try:
            with client.stream("POST", url, json=body, headers=self._headers()) as response:
                data = bytearray()
                for chunk in response.iter_bytes():
                    data.extend(chunk)
                    if time.monotonic() > deadline:
                        raise _Transient(f"no complete answer from {url} within the "
                                         f"{self.cfg.timeout:g} s deadline ({len(data)} bytes read)")
        except httpx.TimeoutException as err:
            raise _Transient(f"endpoint {url} timed out ({type(err).__name__})") from err
        except (httpx.RemoteProtocolError, httpx.ReadError) as err:
            raise _Transient(f"endpoint {url} dropped the connection mid-answer (incomplete "
                             f"read: {err})") from err
        except httpx.TransportError as err:
            raise _Transient(f"endpoint {url} is unreachable: {err}") from err
        return self._decode(response, bytes(data))

    def _decode(self, response: httpx.Response, data: bytes) -> dict[str, Any]:
        url, status = self.cfg.url, response.status_code
        if status >= 400:
            detail = data.decode("utf-8", "replace")[:200]
            if status in RETRY_STATUS:
                raise _Transient(f"HTTP {status} from {url}: {detail}",
                                 retry_after_seconds(response.headers.get("Retry-After")))
            raise EndpointError(f"HTTP {status} from {url}: {detail}", f"HTTP {status}: {detail}")
        try:
            payload = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _Transient(f"{url} answered with a body that is not JSON ({err})") from err
        if not isinstance(payload, dict):
            raise _Transient(f"{url} answered with JSON that is not an object: {str(payload)[:200]}")
        return payload

    def _content(self, payload: dict[str, Any]) -> str:
        try:
            return str(payload["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{self.cfg.url} answered without choices[0].message.content: "
                             f"{str(payload)[:200]}") from err
