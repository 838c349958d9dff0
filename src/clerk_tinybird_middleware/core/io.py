"""What a flow may ask its driver to do, and the retry policy shared by every upstream call."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

__all__ = [
    "Flow",
    "HttpRequest",
    "HttpResponse",
    "RefreshKeys",
    "RetryPolicy",
    "Sleep",
    "request_with_retries",
]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes | None = field(default=None, repr=False)
    timeout: float = 3.0


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An upstream answer; ``status == 0`` means no answer (timeout, refused, reset)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    body: bytes = field(default=b"", repr=False)
    error: str | None = None  # "timeout" | "connect" | "transport", when status == 0


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class RefreshKeys:
    """Ask the driver to (re)load the JWKS, sharing one fetch among concurrent callers."""

    reason: str  # "load" | "kid" | "stale" | "signature"


Op: TypeAlias = HttpRequest | Sleep | RefreshKeys
Flow: TypeAlias = Generator[Op, Any, Any]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """At most ``attempts`` tries and ``budget`` seconds in all, for 5xx and no-answer."""

    attempts: int = 3
    budget: float = 3.0
    backoff: tuple[float, ...] = (0.05, 0.2)

    def retryable(self, response: HttpResponse) -> bool:
        return response.status == 0 or response.status >= 500


DEFAULT_RETRY = RetryPolicy()


def request_with_retries(
    build: Callable[[float], HttpRequest],
    policy: RetryPolicy = DEFAULT_RETRY,
    clock: Callable[[], float] = time.monotonic,
) -> Generator[Op, Any, HttpResponse]:
    """Send ``build(timeout)`` until a non-retryable answer, the attempts or the budget run out.

    Returns the last response; a retryable one means the upstream is unavailable.
    """
    deadline = clock() + policy.budget
    response: HttpResponse = HttpResponse(0, error="timeout")
    for attempt in range(policy.attempts):
        remaining = deadline - clock()
        if remaining <= 0.01:
            break
        response = yield build(remaining)
        if not policy.retryable(response):
            return response
        if attempt + 1 < policy.attempts:
            pause = policy.backoff[min(attempt, len(policy.backoff) - 1)]
            if deadline - clock() <= pause + 0.01:
                break
            yield Sleep(pause)
    return response
