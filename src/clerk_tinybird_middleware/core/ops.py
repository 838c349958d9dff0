"""What a flow may ask its driver to do, the clock it reads, and the one retry policy.

A *flow* is a generator: it yields operations (plain data) and receives their results, and
returns its own result. It never does I/O. :mod:`clerk_tinybird_middleware.drivers` runs flows,
with ``await`` (ASGI) or blocking calls (WSGI); that is the only place the two paths differ.
"""

from __future__ import annotations

import time as _time
from collections.abc import Callable, Generator, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias, TypeVar

__all__ = [
    "DEFAULT_RETRY",
    "Clock",
    "Flow",
    "HttpRequest",
    "HttpResponse",
    "Join",
    "Op",
    "RedisCall",
    "RedisConnector",
    "RetryPolicy",
    "Sleep",
    "Spawn",
    "SystemClock",
    "drive",
    "request_with_retries",
    "run_inline",
]

T = TypeVar("T")


class Clock(Protocol):
    """Wall time (token ``exp`` and friends) and monotonic time (durations, budgets)."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...


class SystemClock:
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)

    def __repr__(self) -> str:
        return "SystemClock()"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An upstream call. ``endpoint`` names it for metrics (``jwks``, ``template``, …)."""

    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes | None = field(default=None, repr=False)
    timeout: float = 3.0
    endpoint: str = "other"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An upstream answer; ``status == 0`` means no answer (timeout, refused, reset).

    ``headers`` has lower-case names.
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)
    error: str | None = None  # "timeout" | "connect", when status == 0


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


class RedisConnector(Protocol):
    """Runs a :class:`RedisCall` on a pooled client: blocking, or awaited."""

    def sync_call(self, op: RedisCall) -> Any: ...

    async def async_call(self, op: RedisCall) -> Any: ...


@dataclass(frozen=True, slots=True)
class RedisCall:
    """``client.<method>(*args, **kwargs)`` on ``connector``'s client. A Redis failure is
    raised *into* the flow (``redis.RedisError`` or ``OSError``), which decides what it means."""

    connector: RedisConnector = field(repr=False)
    method: str
    args: tuple[Any, ...] = field(default=(), repr=False)
    kwargs: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True, slots=True)
class Join:
    """Run ``flow()`` once for every concurrent caller with the same ``key`` (single-flight):
    each gets its result (or its exception). A caller that goes away never cancels it."""

    key: Hashable
    flow: Callable[[], Flow] = field(repr=False)


@dataclass(frozen=True, slots=True)
class Spawn:
    """Run ``flow()`` in the background, at most one per ``key`` at a time; returns at once."""

    key: Hashable
    flow: Callable[[], Flow] = field(repr=False)


Op: TypeAlias = HttpRequest | Sleep | RedisCall | Join | Spawn
Flow: TypeAlias = Generator[Op, Any, Any]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``attempts`` tries and ``budget`` seconds in all, for 5xx and no answer."""

    attempts: int = 3
    budget: float = 3.0
    backoff: tuple[float, ...] = (0.05, 0.2)

    def retryable(self, response: HttpResponse) -> bool:
        return response.status == 0 or response.status >= 500


DEFAULT_RETRY = RetryPolicy()


def request_with_retries(
    build: Callable[[float], HttpRequest],
    policy: RetryPolicy,
    clock: Clock,
) -> Generator[Op, Any, HttpResponse]:
    """Send ``build(timeout)`` until a non-retryable answer, the attempts or the budget run out.

    Returns the last response; a retryable one means the upstream is unavailable.
    """
    deadline = clock.monotonic() + policy.budget
    response = HttpResponse(0, error="timeout")
    for attempt in range(policy.attempts):
        remaining = deadline - clock.monotonic()
        if remaining <= 0.01:
            break
        response = yield build(remaining)
        assert isinstance(response, HttpResponse)
        if not policy.retryable(response):
            return response
        if attempt + 1 < policy.attempts:
            pause = policy.backoff[min(attempt, len(policy.backoff) - 1)]
            if deadline - clock.monotonic() <= pause + 0.01:
                break
            yield Sleep(pause)
    return response


def drive(flow: Generator[Op, Any, T], execute: Callable[[Any], Any]) -> T:
    """Run ``flow`` to its end, blocking: each operation's result from ``execute`` is sent
    back, and an exception it raises is thrown into the flow, which decides what it means.
    (The async driver is this loop with ``await`` on ``execute``.)"""
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                op = flow.send(value) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            value = error = None
            try:
                value = execute(op)
            except Exception as exc:
                error = exc
    finally:
        flow.close()


def run_inline(flow: Generator[Op, Any, T]) -> T:
    """Run a flow that never yields (local minting, pure checks); a yield is a bug."""
    try:
        op = next(flow)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    flow.close()
    raise RuntimeError(f"this flow needs a driver: it asked for {op!r}")
