"""The two drivers that run the core's flows: :class:`AsyncDriver` (ASGI, on the running event
loop, never blocking it) and :class:`SyncDriver` (WSGI threads, blocking calls).

This is the only module that knows whether the code is sync or async. A driver executes each
operation a flow yields (:mod:`.core.ops`) and sends back its result; a failed operation is
raised into the flow, which decides what it means. Every upstream HTTP call passes through
:meth:`_http` of one of them, so metrics and call counts read the same number.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib
import logging
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx

# Not used here, but imported by httpcore on every async lock it sets up (several per call):
# when it is missing, the failed import is not cached and each call pays ~0.6 ms of CPU on the
# event loop searching sys.path (encode/httpcore#1103). Installed and imported, it is a dict hit.
import sniffio  # noqa: F401

from .core.ops import Flow, HttpRequest, HttpResponse, Join, RedisCall, Sleep, Spawn, drive

__all__ = ["AsyncDriver", "SharedFlowAborted", "SyncDriver"]

logger = logging.getLogger("clerk_tinybird_middleware")
T = TypeVar("T")

# Upstream calls in flight per event loop. Each httpx call costs ~1 ms of CPU on the loop over
# a handful of steps; 16 at once keep a burst of cold requests from holding the loop for more
# than ~5 ms per tick (32: ~13 ms), at the price of queueing: 100 cold tenants against a
# 200 ms Clerk are served in ~1.7 s instead of ~1.1 s (benchmarks/run.py row (e)).
UPSTREAM_SLOTS = 16
SYNC_UPSTREAM_THREADS = 32  # WSGI: blocking upstream calls in flight per process
WAKE_BATCH = 8  # waiters of one shared flow resumed per event-loop iteration
PACE = 4  # flow steps run per event-loop iteration; the others wait for the next one
BACKGROUND_THREADS = 4  # WSGI: refresh-ahead workers


class SharedFlowAborted(Exception):
    """The flow a request joined was aborted (its thread was interrupted)."""


class Recorder(Protocol):
    def upstream(self, endpoint: str, status: int, body: bytes, seconds: float) -> None: ...


class _Quiet:
    def upstream(self, endpoint: str, status: int, body: bytes, seconds: float) -> None:
        pass


def _to_response(response: httpx.Response) -> HttpResponse:
    headers = {name.lower(): value for name, value in response.headers.items()}
    return HttpResponse(response.status_code, headers, response.content)


def _no_answer(exc: BaseException) -> HttpResponse:
    timeout = isinstance(
        exc, httpx.TimeoutException | TimeoutError | concurrent.futures.TimeoutError
    )
    logger.debug("clerk-tinybird: upstream call failed: %s", type(exc).__name__)
    return HttpResponse(0, error="timeout" if timeout else "connect")


def _new_iteration(state: _LoopState) -> None:
    state.steps = 0


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("clerk-tinybird: a background flow ended with %s", type(task.exception()))


@dataclass(eq=False)
class _Flight:
    task: asyncio.Task[Any]
    waiters: int = 0


@dataclass(eq=False)
class _LoopState:
    slots: asyncio.Semaphore
    steps: int = 0  # flow steps run in this event-loop iteration
    client: httpx.AsyncClient | None = None
    client_ready: asyncio.Future[httpx.AsyncClient] | None = None
    flights: dict[Hashable, _Flight] = field(default_factory=dict)
    background: set[asyncio.Task[Any]] = field(default_factory=set)


class AsyncDriver:
    """Runs flows on the running event loop.

    Upstream calls are rare (cold paths only), so each event loop gets its own small
    ``httpx.AsyncClient`` without keep-alive: nothing is bound to a loop that may be gone
    (test clients often run each request on a new loop) and no socket outlives its call.
    The TLS context (loading the CA bundle costs tens of milliseconds of CPU) is built once,
    in a worker thread, and shared. At most ``UPSTREAM_SLOTS`` calls run at once per loop;
    waiting for a slot counts against the call's own timeout. Background flows (refresh
    ahead) are tasks owned here and cancelled by :meth:`aclose` (lifespan shutdown).
    """

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder = recorder or _Quiet()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        return f"AsyncDriver(loops={len(self._loops)})"

    async def run(self, flow: Generator[Any, Any, T]) -> T:
        value: Any = None
        error: BaseException | None = None
        await self._pace()  # a burst of new requests starts PACE per iteration, not all at once
        try:
            while True:
                try:
                    op = flow.send(value) if error is None else flow.throw(error)
                except StopIteration as stop:
                    return stop.value  # type: ignore[no-any-return]
                value = error = None
                try:
                    value = await self._execute(op)
                except Exception as exc:
                    error = exc
                await self._pace()
        finally:
            flow.close()

    async def _pace(self) -> None:
        """At most ``PACE`` flow steps per event-loop iteration: when a burst of upstream
        answers lands at once, their CPU work (a signature check, a token read, a response)
        is spread over iterations instead of holding the loop for all of them."""
        state = self._state()
        while True:
            if state.steps == 0:
                asyncio.get_running_loop().call_soon(_new_iteration, state)
            state.steps += 1
            if state.steps <= PACE:
                return
            await asyncio.sleep(0)

    async def _execute(self, op: Any) -> Any:
        kind = type(op)
        if kind is HttpRequest:
            return await self._http(op)
        if kind is Join:
            return await self._join(op)
        if kind is RedisCall:
            return await op.connector.async_call(op)
        if kind is Sleep:
            await asyncio.sleep(op.seconds)
            return None
        if kind is Spawn:
            self.spawn(op)
            return None
        raise TypeError(f"unknown operation {op!r}")

    # -- HTTP --------------------------------------------------------------------------------

    def _new_client(self) -> httpx.AsyncClient:
        """Runs in a worker thread: loads the CAs and imports what httpx's first async call
        would otherwise import on the event loop (anyio's asyncio backend, ~20 ms)."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
            with contextlib.suppress(ImportError):
                importlib.import_module("anyio._backends._asyncio")
        return httpx.AsyncClient(
            verify=self._tls,
            limits=httpx.Limits(max_keepalive_connections=0),
            follow_redirects=False,
        )

    def _state(self) -> _LoopState:
        """This loop's state, made synchronously (so single-flight checks never await)."""
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = _LoopState(asyncio.Semaphore(UPSTREAM_SLOTS))
        return state

    async def _client(self, state: _LoopState) -> httpx.AsyncClient:
        if state.client is not None:
            return state.client
        if state.client_ready is None:  # the first caller builds it; the others wait for it
            state.client_ready = asyncio.get_running_loop().create_future()
            try:
                state.client = await asyncio.to_thread(self._new_client)
            except BaseException as exc:
                state.client_ready.set_exception(exc)
                state.client_ready = None
                raise
            state.client_ready.set_result(state.client)
            return state.client
        return await asyncio.shield(state.client_ready)

    async def _request(self, request: HttpRequest) -> httpx.Response:
        state = self._state()
        client = await self._client(state)
        async with state.slots:
            return await client.request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.body,
                timeout=request.timeout,
            )

    async def _http(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        try:
            answer = _to_response(await asyncio.wait_for(self._request(request), request.timeout))
        except (httpx.HTTPError, OSError, TimeoutError) as exc:
            answer = _no_answer(exc)
        self.recorder.upstream(
            request.endpoint, answer.status, answer.body, time.perf_counter() - started
        )
        return answer

    # -- shared and background flows -------------------------------------------------------------

    def _flight(self, state: _LoopState, key: Hashable, make: Callable[[], Flow]) -> _Flight:
        flight = state.flights.get(key)
        if flight is None or flight.task.done():
            task = asyncio.get_running_loop().create_task(self.run(make()))
            flight = state.flights[key] = _Flight(task)

            def done(finished: asyncio.Task[Any], key: Hashable = key) -> None:
                current = state.flights.get(key)
                if current is not None and current.task is finished:
                    del state.flights[key]
                _retrieve(finished)  # no "exception was never retrieved" if every waiter left

            task.add_done_callback(done)
        return flight

    async def _join(self, op: Join) -> Any:
        state = self._state()
        flight = self._flight(state, op.key, op.flow)
        position = flight.waiters
        flight.waiters += 1
        result = await asyncio.shield(flight.task)  # a client hanging up cancels no one else
        # Every waiter wakes in the same loop iteration and then does CPU work (a signature
        # check, a token fetch): resume them WAKE_BATCH per iteration, so other work on the
        # loop is not held up behind a cold burst.
        for _ in range(position // WAKE_BATCH):
            await asyncio.sleep(0)
        return result

    def spawn(self, op: Spawn) -> None:
        """Start ``op`` unless a flow with its key runs on this loop (no await needed)."""
        state = self._state()
        flight = state.flights.get(op.key)
        if flight is not None and not flight.task.done():
            return
        flight = self._flight(state, op.key, op.flow)
        state.background.add(flight.task)
        flight.task.add_done_callback(state.background.discard)

    async def aclose(self) -> None:
        """Cancel this loop's background flows and close the HTTP clients."""
        state = self._loops.get(asyncio.get_running_loop())
        if state is not None and state.background:
            pending = list(state.background)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        states = list(self._loops.values())
        self._loops.clear()
        for each in states:
            if each.client is not None:  # no keep-alive: closing one of another loop is safe
                await each.client.aclose()


class SyncDriver:
    """Runs flows with blocking calls, for WSGI threads; one pooled ``httpx.Client``.

    httpx's timeouts bound each connect and read, not a whole call (an upstream dripping one
    byte at a time never trips them), so each call runs on a small worker pool and the
    request thread waits at most the call's own timeout for it. Shared flows: the first
    thread runs, the others wait on its future. Background flows run on a small pool.
    """

    def __init__(
        self, recorder: Recorder | None = None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.recorder = recorder or _Quiet()
        self._sleep = sleep
        self._client = httpx.Client(follow_redirects=False)
        self._calls = concurrent.futures.ThreadPoolExecutor(
            SYNC_UPSTREAM_THREADS, thread_name_prefix="clerk-tinybird-call"
        )
        self._background = concurrent.futures.ThreadPoolExecutor(
            BACKGROUND_THREADS, thread_name_prefix="clerk-tinybird-refresh"
        )
        self._lock = threading.Lock()
        self._flights: dict[Hashable, concurrent.futures.Future[Any]] = {}

    def __repr__(self) -> str:
        return "SyncDriver()"

    def run(self, flow: Generator[Any, Any, T]) -> T:
        return drive(flow, self._execute)

    def _execute(self, op: Any) -> Any:
        kind = type(op)
        if kind is HttpRequest:
            return self._http(op)
        if kind is Join:
            return self._join(op)
        if kind is RedisCall:
            return op.connector.sync_call(op)
        if kind is Sleep:
            self._sleep(op.seconds)
            return None
        if kind is Spawn:
            self.spawn(op)
            return None
        raise TypeError(f"unknown operation {op!r}")

    def _call(self, request: HttpRequest) -> httpx.Response:
        return self._client.request(
            request.method,
            request.url,
            headers=request.headers,
            content=request.body,
            timeout=request.timeout,
        )

    def _http(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        call = self._calls.submit(self._call, request)
        try:
            answer = _to_response(call.result(timeout=request.timeout))
        except (httpx.HTTPError, OSError, concurrent.futures.TimeoutError) as exc:
            call.cancel()  # if still queued; a running call ends with its own read timeout
            answer = _no_answer(exc)
        self.recorder.upstream(
            request.endpoint, answer.status, answer.body, time.perf_counter() - started
        )
        return answer

    def _lead(self, key: Hashable, future: concurrent.futures.Future[Any], flow: Flow) -> Any:
        try:
            result = self.run(flow)
        except Exception as exc:
            future.set_exception(exc)
            raise
        except BaseException:
            # SystemExit, a server's timeout…: this thread's own business, not the followers'.
            future.set_exception(SharedFlowAborted("the shared flow was aborted"))
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                if self._flights.get(key) is future:
                    del self._flights[key]

    def _join(self, op: Join) -> Any:
        with self._lock:
            future = self._flights.get(op.key)
            leader = future is None
            if future is None:
                future = self._flights[op.key] = concurrent.futures.Future()
        if not leader:
            return future.result()
        return self._lead(op.key, future, op.flow())

    def spawn(self, op: Spawn) -> None:
        with self._lock:
            if op.key in self._flights:
                return
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self._flights[op.key] = future
        try:
            self._background.submit(self._background_run, op.key, future, op.flow)
        except RuntimeError:  # shut down
            with self._lock:
                self._flights.pop(op.key, None)

    def _background_run(
        self, key: Hashable, future: concurrent.futures.Future[Any], make: Callable[[], Flow]
    ) -> None:
        try:
            self._lead(key, future, make())
        except Exception as exc:
            logger.debug("clerk-tinybird: a background flow ended with %s", type(exc).__name__)

    def close(self) -> None:
        self._background.shutdown(wait=False, cancel_futures=True)
        self._calls.shutdown(wait=False, cancel_futures=True)
        self._client.close()
