"""The shared HTTP adapter: configurable base URL, timeouts, retries with backoff (honouring
Retry-After), JSON validation, optional circuit breaker. Each provider subclasses it (worker/adapters/,
luna/channels/graph.py). It lives in the core because edge (the media proxy) and the worker both call
providers through it."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import httpx

from luna.errors import JobError, Permanent

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class AdapterError(JobError):
    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True,
                 code: str | None = None, retry_after: float | None = None, body: Any = None):
        super().__init__(message, retryable=retryable, code=code, retry_after=retry_after)
        self.status = status
        self.body = body


class HttpAdapter:
    #: module name used for the circuit breaker and metrics (e.g. "apollo", "meta"); the breaker is any
    #: object with an async context manager guard(module) (worker/breaker.py)
    module: str = "http"
    default_base_url: str = ""
    #: attempts after the first; channel senders set 0: their queue retries visibly, with its backoff
    default_retries: int = 2

    def __init__(self, base_url: str | None = None, *, timeout: float = 10.0, retries: int | None = None,
                 backoff: float = 0.5, max_backoff: float = 8.0, breaker=None,
                 client: httpx.AsyncClient | None = None, headers: dict[str, str] | None = None):
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.timeout = timeout
        self.retries = self.default_retries if retries is None else retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.breaker = breaker
        self._client = client
        self.headers = headers or {}

    async def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def classify(self, response: httpx.Response, body: Any) -> AdapterError | None:
        """Turn a provider's error answer into an AdapterError (subclasses add provider codes)."""
        if response.is_success:
            return None
        retry_after = _retry_after(response)
        return AdapterError(
            f"{self.module} answered HTTP {response.status_code}: {_short(body)}",
            status=response.status_code, retryable=response.status_code in RETRYABLE_STATUS,
            code=f"http_{response.status_code}", retry_after=retry_after, body=body)

    def coded_error(self, response: httpx.Response, code: Any, message: str, body: Any,
                    retryable_codes: frozenset | set = frozenset()) -> AdapterError:
        """A provider's error answer that carries its own code: `code=<code>: <message>`, retryable on
        429 / 5xx or a code the provider documents as transient."""
        retryable = response.status_code in (429, 500, 502, 503, 504) or code in retryable_codes
        return AdapterError(f"code={code}: {message}", status=response.status_code, retryable=retryable,
                            code=str(code), retry_after=_retry_after(response), body=body)

    async def request(self, method: str, path: str, *, expect_json: bool = True, **kwargs) -> Any:
        """One logical call: retried on retryable errors, guarded by the breaker when one is set."""
        if self.breaker is None:
            return await self._with_retries(method, path, expect_json=expect_json, **kwargs)
        async with self.breaker.guard(self.module):
            return await self._with_retries(method, path, expect_json=expect_json, **kwargs)

    async def _with_retries(self, method: str, path: str, *, expect_json: bool, **kwargs) -> Any:
        attempt = 0
        while True:
            try:
                return await self._once(method, path, expect_json=expect_json, **kwargs)
            except AdapterError as exc:
                if not exc.retryable or attempt >= self.retries:
                    raise
                delay = exc.retry_after if exc.retry_after is not None else self.backoff * (2 ** attempt)
                delay = min(delay, self.max_backoff) * (1 + random.random() * 0.1)
                attempt += 1
                await asyncio.sleep(delay)

    async def _once(self, method: str, path: str, *, expect_json: bool, **kwargs) -> Any:
        url = path if path.startswith("http") else f"{self.base_url}/{path.lstrip('/')}"
        client = await self.client()
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise AdapterError(f"{self.module} timed out: {exc!r}", code="timeout") from exc
        except httpx.TransportError as exc:
            raise AdapterError(f"{self.module} unreachable: {exc!r}", code="network") from exc
        body: Any = response.text
        if expect_json and response.content:
            try:
                body = response.json()
            except (json.JSONDecodeError, ValueError) as exc:
                if response.is_success:
                    raise AdapterError(f"{self.module} sent malformed JSON", status=response.status_code,
                                       code="malformed_json", body=response.text[:500]) from exc
        error = self.classify(response, body)
        if error:
            raise error
        return body


def require(body: Any, *keys: str, module: str = "provider") -> Any:
    """Check an answer has the documented shape; a wrong schema is the service's fault (retryable)."""
    if not isinstance(body, dict):
        raise AdapterError(f"{module} answered with {type(body).__name__}, expected an object", code="wrong_schema")
    missing = [k for k in keys if k not in body]
    if missing:
        raise AdapterError(f"{module} answer lacks {', '.join(missing)}", code="wrong_schema", body=body)
    return body


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        from email.utils import parsedate_to_datetime
        from datetime import datetime, timezone

        try:
            return max((parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds(), 0.0)
        except (TypeError, ValueError):
            return None


def _short(body: Any) -> str:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return text[:300]


__all__ = ["HttpAdapter", "AdapterError", "Permanent", "require", "RETRYABLE_STATUS"]


class KeyBatcher:
    """Coalesces single-key lookups made at the same moment into bulk calls.

    The claim loop runs a batch's handlers concurrently; each asks for one key (a domain, say) and
    this gathers the keys asked within `wait` seconds into calls of at most `limit` keys, so a bulk
    endpoint answers many leads in one request. A failed bulk call fails every lookup in it.
    """

    def __init__(self, fetch_many, limit: int, wait: float = 0.005):
        self.fetch_many = fetch_many
        self.limit = limit
        self.wait = wait
        self._pending: dict[str, list[asyncio.Future]] = {}
        self._flush: asyncio.Task | None = None

    async def get(self, key: str):
        future = asyncio.get_running_loop().create_future()
        self._pending.setdefault(key, []).append(future)
        if self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        # Keys asked while a bulk call is in flight wait for the next round of this same task (get()
        # starts no second one while it runs), so it goes on until nothing is pending.
        while True:
            await asyncio.sleep(self.wait)
            pending, self._pending = self._pending, {}
            if not pending:
                return
            keys = list(pending)
            chunks = [keys[i:i + self.limit] for i in range(0, len(keys), self.limit)]
            await asyncio.gather(*(self._call(chunk, pending) for chunk in chunks))

    async def _call(self, chunk: list[str], pending: dict) -> None:
        try:
            found = await self.fetch_many(chunk)
        except BaseException as exc:  # every waiter of this chunk sees the same failure
            for key in chunk:
                for f in pending[key]:
                    if not f.done():
                        f.set_exception(exc)
            return
        for key in chunk:
            for f in pending[key]:
                if not f.done():
                    f.set_result(found.get(key))


__all__.append("KeyBatcher")
