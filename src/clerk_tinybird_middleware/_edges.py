"""The two I/O edges that drive the core's flows: ``await`` for ASGI, blocking for WSGI.

This module is the only place where the ASGI and WSGI paths differ below the framework
glue: how an :class:`~.core.io.HttpRequest` is sent, how a pause is taken, and how
concurrent callers share one JWKS fetch (an asyncio task vs a lock). Every decision —
what to fetch, when to retry, what a response means — is made by the flows themselves.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Generator
from typing import Any, TypeVar

import httpx

from .core.io import HttpRequest, HttpResponse, RefreshKeys, Sleep
from .engine import NO_TOKEN, Engine, TokenOutcome
from .models import AuthResult, ClerkSession, TinybirdToken

__all__ = ["AsyncEdge", "SyncEdge"]

logger = logging.getLogger("clerk_tinybird_middleware")
T = TypeVar("T")
_Flow = Generator[Any, Any, T]


def _to_response(response: httpx.Response) -> HttpResponse:
    return HttpResponse(response.status_code, response.headers, response.content)


def _no_answer(exc: Exception) -> HttpResponse:
    kind = "timeout" if isinstance(exc, httpx.TimeoutException | TimeoutError) else "connect"
    logger.debug("clerk-tinybird: upstream call failed: %s", type(exc).__name__)
    return HttpResponse(0, error=kind)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("clerk-tinybird: JWKS refresh failed unexpectedly")


class AsyncEdge:
    """Drives flows on the running event loop; never blocks it.

    Upstream calls are rare (cold paths only), so each event loop gets its own small
    ``httpx.AsyncClient`` without keep-alive: nothing is bound to a loop that may be gone
    (test clients often run each request on a new loop) and no socket outlives its call.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._key_task: asyncio.Task[None] | None = None

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(
                limits=httpx.Limits(max_keepalive_connections=0), follow_redirects=False
            )
            self._clients[loop] = client
        return client

    async def _send(self, request: HttpRequest) -> HttpResponse:
        try:
            response = await asyncio.wait_for(
                self._client().request(
                    request.method,
                    request.url,
                    headers=request.headers,
                    content=request.body,
                    timeout=request.timeout,
                ),
                request.timeout,
            )
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            return _no_answer(exc)
        return _to_response(response)

    async def drive(self, flow: _Flow[T]) -> T:
        result: Any = None
        try:
            while True:
                op = flow.send(result)
                if isinstance(op, HttpRequest):
                    result = await self._send(op)
                elif isinstance(op, Sleep):
                    await asyncio.sleep(op.seconds)
                    result = None
                elif isinstance(op, RefreshKeys):
                    await self._refresh_keys(op)
                    result = None
                else:  # pragma: no cover - a flow bug
                    raise TypeError(f"unknown operation {op!r}")
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _refresh_keys(self, op: RefreshKeys) -> None:
        key_set = self.engine.key_set
        assert key_set is not None
        task = self._key_task
        loop = asyncio.get_running_loop()
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self.drive(key_set.fetch_flow(op.reason)))
            task.add_done_callback(_retrieve)
            self._key_task = task
        await asyncio.shield(task)  # a client hanging up does not cancel the shared fetch

    async def authenticate(self, authorization: str | None, cookie: str | None) -> AuthResult:
        hit = self.engine.verifier.cached(authorization, cookie)
        if hit is not None:
            return hit
        try:
            return await self.drive(self.engine.verifier.authenticate(authorization, cookie))
        except Exception:
            return self.engine.verification_crashed()

    async def tinybird_token(self, auth: AuthResult) -> TokenOutcome:
        plan = self.engine.token_plan(auth)
        if isinstance(plan, TokenOutcome):
            return plan
        engine = self.engine
        token = engine.cache.get(plan)
        if token is not None:
            return TokenOutcome(token)
        session = auth.session
        assert session is not None

        async def fetch() -> TinybirdToken:
            return await self.drive(engine.fetch_flow(plan, session))

        try:
            token = await engine.cache.aget_or_fetch(
                plan, fetch, engine.settings.refresh_margin_seconds
            )
        except Exception as exc:
            return engine.failed(plan, exc)
        return TokenOutcome(token) if token is not None else NO_TOKEN

    async def aclose(self) -> None:
        for client in list(self._clients.values()):
            await client.aclose()


class SyncEdge:
    """Drives flows with blocking calls, for WSGI threads; one pooled ``httpx.Client``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._client = httpx.Client(follow_redirects=False)
        self._key_lock = threading.Lock()
        self._key_generation = 0

    def _send(self, request: HttpRequest) -> HttpResponse:
        try:
            response = self._client.request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.body,
                timeout=request.timeout,
            )
        except (httpx.HTTPError, OSError) as exc:
            return _no_answer(exc)
        return _to_response(response)

    def drive(self, flow: _Flow[T]) -> T:
        result: Any = None
        try:
            while True:
                op = flow.send(result)
                if isinstance(op, HttpRequest):
                    result = self._send(op)
                elif isinstance(op, Sleep):
                    time.sleep(op.seconds)
                    result = None
                elif isinstance(op, RefreshKeys):
                    self._refresh_keys(op)
                    result = None
                else:  # pragma: no cover - a flow bug
                    raise TypeError(f"unknown operation {op!r}")
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _refresh_keys(self, op: RefreshKeys) -> None:
        key_set = self.engine.key_set
        assert key_set is not None
        generation = self._key_generation
        with self._key_lock:
            if self._key_generation != generation:
                return  # another thread refreshed while this one waited: share its result
            try:
                self.drive(key_set.fetch_flow(op.reason))
            finally:
                self._key_generation += 1

    def authenticate(self, authorization: str | None, cookie: str | None) -> AuthResult:
        hit = self.engine.verifier.cached(authorization, cookie)
        if hit is not None:
            return hit
        try:
            return self.drive(self.engine.verifier.authenticate(authorization, cookie))
        except Exception:
            return self.engine.verification_crashed()

    def tinybird_token(self, auth: AuthResult) -> TokenOutcome:
        plan = self.engine.token_plan(auth)
        if isinstance(plan, TokenOutcome):
            return plan
        engine = self.engine
        token = engine.cache.get(plan)
        if token is not None:
            return TokenOutcome(token)
        session: ClerkSession | None = auth.session
        assert session is not None

        def fetch() -> TinybirdToken:
            return self.drive(engine.fetch_flow(plan, session))

        try:
            token = engine.cache.get_or_fetch(plan, fetch, engine.settings.refresh_margin_seconds)
        except Exception as exc:
            return engine.failed(plan, exc)
        return TokenOutcome(token)

    def close(self) -> None:
        self._client.close()
