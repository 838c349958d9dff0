"""Stepping the engine's flows with a fake clock: no real sleeps, exact boundaries.

``Stepper`` runs a flow inline: HTTP requests go to a handler (which may advance the clock to
stand for a slow upstream), ``Sleep`` advances the clock, ``Join`` runs the shared flow inline
(recording the key), ``Spawn`` is queued for the test to run (``run_spawned``). ``Request`` is
the smallest RequestView, and ``engine_with`` builds an Engine on a fake clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from clerk_tinybird_middleware.core.ops import HttpRequest, HttpResponse, Join, Sleep, Spawn, drive
from clerk_tinybird_middleware.core.request import RequestAuth, request_url
from clerk_tinybird_middleware.engine import Engine

T = TypeVar("T")


class FakeClock:
    """Wall and monotonic time that move only when told (or when a flow sleeps)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start
        self.mono = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


Handler = Callable[[HttpRequest], HttpResponse]


def no_answer(clock: FakeClock) -> Handler:
    """An upstream that never answers: each call costs its whole timeout."""

    def handler(request: HttpRequest) -> HttpResponse:
        clock.advance(request.timeout)
        return HttpResponse(0, error="timeout")

    return handler


def loopback() -> Handler:
    """Real HTTP to a loopback fake (FakeClerk), with a fake clock everywhere else."""
    client = httpx.Client()

    def handler(request: HttpRequest) -> HttpResponse:
        try:
            response = client.request(
                request.method, request.url, headers=request.headers, content=request.body
            )
        except httpx.HTTPError:
            return HttpResponse(0, error="connect")
        headers = {k.lower(): v for k, v in response.headers.items()}
        return HttpResponse(response.status_code, headers, response.content)

    return handler


@dataclass
class Stepper:
    clock: FakeClock
    http: Handler | None = None
    requests: list[HttpRequest] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    joins: list[Hashable] = field(default_factory=list)
    spawned: list[Spawn] = field(default_factory=list)

    def run(self, flow: Generator[Any, Any, T]) -> T:
        return drive(flow, self._execute)

    def _execute(self, op: Any) -> Any:
        if isinstance(op, HttpRequest):
            self.requests.append(op)
            if self.http is None:
                raise AssertionError(f"unexpected upstream call {op!r}")
            return self.http(op)
        if isinstance(op, Sleep):
            self.sleeps.append(op.seconds)
            self.clock.advance(op.seconds)
            return None
        if isinstance(op, Join):
            self.joins.append(op.key)
            return self.run(op.flow())
        if isinstance(op, Spawn):
            if all(queued.key != op.key for queued in self.spawned):  # one per key, as drivers
                self.spawned.append(op)
            return None
        raise AssertionError(f"unexpected operation {op!r}")

    def run_spawned(self) -> int:
        ran = 0
        while self.spawned:
            op = self.spawned.pop(0)
            with contextlib.suppress(Exception):  # a background failure is its own business
                self.run(op.flow())
            ran += 1
        return ran


@dataclass
class Request:
    """A RequestView: headers by lower-case name."""

    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    path: str = "/"
    query: str = ""

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")

    @property
    def cookie(self) -> str | None:
        return self.headers.get("cookie")

    @property
    def credentials(self) -> Hashable:
        return (self.authorization, self.cookie)

    @property
    def credentials_size(self) -> int:
        return len(self.authorization or "") + len(self.cookie or "")

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def url(self) -> str:
        return request_url(
            "http",
            self.headers.get("host", "app.test"),
            self.headers.get("x-forwarded-proto"),
            self.headers.get("x-forwarded-host"),
            self.path,
            self.query,
        )


def bearer_request(token: str) -> Request:
    return Request({"authorization": f"Bearer {token}"})


def answer(engine: Engine, stepper: Stepper, request: Request) -> RequestAuth:
    """What the adapters do: the warm look-up, else the cold flow."""
    warm = engine.warm(request.query, request.authorization, request.cookie)
    return warm if warm is not None else stepper.run(engine.cold(request))
