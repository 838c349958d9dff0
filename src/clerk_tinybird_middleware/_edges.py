"""The two I/O edges that drive the core's flows: ``await`` for ASGI, blocking for WSGI.

This module is the only place where the ASGI and WSGI paths differ below the framework
glue: how an :class:`~.core.io.HttpRequest` is sent, how a pause is taken, and how
concurrent callers share one JWKS fetch (an asyncio task vs a lock). Every decision —
what to fetch, when to retry, what a response means — is made by the flows themselves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
import time
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from .core.io import HttpRequest, HttpResponse, RefreshKeys, Sleep
from .engine import Engine, TokenOutcome
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


UPSTREAM_SLOTS = 32  # upstream calls in flight per event loop; more wait (within budget)
WAKE_BATCH = 8  # waiters of one shared JWKS fetch resumed per event-loop iteration


@dataclass(frozen=True, slots=True)
class _LoopIO:
    client: httpx.AsyncClient
    slots: asyncio.Semaphore


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("clerk-tinybird: JWKS refresh failed unexpectedly")


class AsyncEdge:
    """Drives flows on the running event loop; never blocks it.

    Upstream calls are rare (cold paths only), so each event loop gets its own small
    ``httpx.AsyncClient`` without keep-alive: nothing is bound to a loop that may be gone
    (test clients often run each request on a new loop) and no socket outlives its call.
    The TLS context (loading the CA bundle costs tens of milliseconds of CPU) is built once,
    in a worker thread, and shared. At most ``UPSTREAM_SLOTS`` calls run at once per loop, so
    a burst of cold tenants cannot fill every loop iteration with upstream work; waiting for a
    slot counts against the call's own timeout.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopIO] = (
            weakref.WeakKeyDictionary()
        )
        self._tls: ssl.SSLContext | None = None
        self._key_task: asyncio.Task[None] | None = None
        self._key_waiters = 0

    def _new_client(self) -> httpx.AsyncClient:
        """Runs in a worker thread: the first call imports httpx's transport and loads CAs."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return httpx.AsyncClient(
            verify=self._tls,
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
        )

    async def _io(self) -> _LoopIO:
        loop = asyncio.get_running_loop()
        io = self._loops.get(loop)
        if io is None:
            client = await asyncio.to_thread(self._new_client)
            io = self._loops.setdefault(loop, _LoopIO(client, asyncio.Semaphore(UPSTREAM_SLOTS)))
            if io.client is not client:  # another request of this loop got there first
                await client.aclose()
        return io

    async def _request(self, request: HttpRequest) -> httpx.Response:
        io = await self._io()
        async with io.slots:
            return await io.client.request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.body,
                timeout=request.timeout,
            )

    async def _send(self, request: HttpRequest) -> HttpResponse:
        try:
            response = await asyncio.wait_for(self._request(request), request.timeout)
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
            self._key_waiters = 0
        position = self._key_waiters
        self._key_waiters += 1
        await asyncio.shield(task)  # a client hanging up does not cancel the shared fetch
        # Every waiter wakes in the same loop iteration and then verifies a signature and
        # maybe starts a token fetch: resume them WAKE_BATCH per iteration instead, so other
        # work on the loop is not held up behind a cold burst.
        for _ in range(position // WAKE_BATCH):
            await asyncio.sleep(0)

    async def authenticate(self, authorization: str | None, cookie: str | None) -> AuthResult:
        hit = self.engine.verifier.cached(authorization, cookie)
        if hit is not None:
            return hit
        try:
            return await self.drive(self.engine.verifier.authenticate(authorization, cookie))
        except Exception:
            return self.engine.verification_crashed()

    async def tinybird_token(self, auth: AuthResult) -> TokenOutcome:
        engine = self.engine
        plan = engine.ready_outcome(auth)
        if isinstance(plan, TokenOutcome):
            return plan
        session = auth.session
        assert session is not None

        async def fetch() -> TinybirdToken:
            return await self.drive(engine.fetch_flow(plan, session))

        try:
            token = await engine.cache.aget_or_fetch(
                plan, fetch, engine.settings.refresh_margin_seconds
            )
        except Exception as exc:
            return engine.failed(exc)
        return TokenOutcome(token)

    async def aclose(self) -> None:
        for io in list(self._loops.values()):
            await io.client.aclose()


class SyncEdge:
    """Drives flows with blocking calls, for WSGI threads; one pooled ``httpx.Client``.

    httpx's timeouts bound each connect and read, not a whole call (an upstream dripping one
    byte at a time never trips them), so each call runs on a small worker pool and the
    request thread waits at most the call's own timeout for it.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._client = httpx.Client(follow_redirects=False)
        self._calls = concurrent.futures.ThreadPoolExecutor(
            UPSTREAM_SLOTS, thread_name_prefix="clerk-tinybird"
        )
        self._key_lock = threading.Lock()
        self._key_generation = 0

    def _call(self, request: HttpRequest) -> httpx.Response:
        return self._client.request(
            request.method,
            request.url,
            headers=request.headers,
            content=request.body,
            timeout=request.timeout,
        )

    def _send(self, request: HttpRequest) -> HttpResponse:
        call = self._calls.submit(self._call, request)
        try:
            response = call.result(timeout=request.timeout)
        except (httpx.HTTPError, OSError, concurrent.futures.TimeoutError) as exc:
            call.cancel()  # if still queued; a running call ends with its own read timeout
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
        engine = self.engine
        plan = engine.ready_outcome(auth)
        if isinstance(plan, TokenOutcome):
            return plan
        session: ClerkSession | None = auth.session
        assert session is not None

        def fetch() -> TinybirdToken:
            return self.drive(engine.fetch_flow(plan, session))

        try:
            token = engine.cache.get_or_fetch(plan, fetch, engine.settings.refresh_margin_seconds)
        except Exception as exc:
            return engine.failed(exc)
        return TokenOutcome(token)

    def close(self) -> None:
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._client.close()
