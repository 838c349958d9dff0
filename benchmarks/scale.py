"""Rows (h)-(j) of ``benchmarks/run.py``: refresh ahead under a slow Clerk, Redis, many active
sessions, and metrics. Public API and the package's fakes only, so (h) also runs against an
older checkout of the package (``PYTHONPATH=<old>/src``) for before/after figures."""

from __future__ import annotations

import asyncio
import gc
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from clerk_tinybird_middleware import (
    ClerkTinybirdMiddleware,
    LocalTokenSource,
    MemoryTokenCache,
    Settings,
)
from clerk_tinybird_middleware.testing import FakeClerk

Scope = dict[str, Any]
ADMIN = "p.bench-admin-token-" + "0123456789abcdef" * 3
SCOPES = [
    {
        "type": "PIPES:READ",
        "resource": "analytics_hits",
        "fixed_params": {"org": "{{org.slug}}", "user": "{{user.id}}"},
    }
]


async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def _app() -> Starlette:
    return Starlette(routes=[Route("/", _ok)])


def _scope(cookie: bytes) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench.local"), (b"accept", b"*/*"), (b"cookie", cookie)],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _call(app: Any, cookie: bytes) -> bool:
    got: list[bool] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            got.append(any(k == b"x-tinybird-token" for k, _ in message.get("headers", [])))

    await app(_scope(cookie), _receive, send)
    return bool(got and got[0])


# -- (h) refresh ahead: who waits for Clerk ---------------------------------------------------


@dataclass
class RefreshResult:
    requests: int
    waited: int  # requests slower than the threshold
    first_of_tenant: int  # of those, each tenant's very first request
    worst_ms: float
    template_calls: int


async def refresh_ahead(
    url: str,
    secret_key: str,
    tokens: list[str],
    calls: Callable[[], dict[str, int]],
    *,
    lifetime: float,
    margin: float,
    every: float = 0.05,
    threshold: float = 0.15,
) -> RefreshResult:
    """Each tenant requests every ``every`` s for 3 token lifetimes; count the requests that
    took longer than ``threshold`` (the first of each tenant always waits for Clerk)."""
    app = ClerkTinybirdMiddleware(
        _app(),
        Settings(secret_key=secret_key, clerk_api_url=url, refresh_margin_seconds=margin),
    )
    stop_at = time.monotonic() + 3 * lifetime
    waited: list[tuple[bool, float]] = []
    count = 0

    async def tenant(token: str, offset: float) -> None:
        nonlocal count
        cookie = f"__session={token}".encode()
        await asyncio.sleep(offset)
        first = True
        while time.monotonic() < stop_at:
            started = time.monotonic()
            await _call(app, cookie)
            took = time.monotonic() - started
            count += 1
            if took > threshold:
                waited.append((first, took))
            first = False
            await asyncio.sleep(max(0.0, every - took))

    try:
        await asyncio.gather(*(tenant(t, i * every / len(tokens)) for i, t in enumerate(tokens)))
    finally:
        aclose = getattr(app, "aclose", None)
        if aclose is not None:
            await aclose()
    return RefreshResult(
        count,
        len(waited),
        sum(first for first, _ in waited),
        max((took for _, took in waited), default=0.0) * 1000,
        calls().get("template", 0),
    )


# -- (j) many active sessions ---------------------------------------------------------------------


def _sign_batch(args: tuple[bytes, str, int, int]) -> list[str]:
    """Sign session tokens in a worker process (RSA signing is the slow part of setup)."""
    import jwt as pyjwt
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pem, kid, start, count = args
    key = load_pem_private_key(pem, password=None)
    now = int(time.time())
    out = []
    for i in range(start, start + count):
        claims = {
            "sub": f"user_{i}",
            "sid": f"sess_{i}",
            "exp": now + 7200,
            "iat": now - 1,
            "nbf": now - 6,
            "iss": "https://clerk.bench.lcl.dev",
            "v": 2,
            "o": {"id": f"org_{i % 500}", "slg": f"t{i % 500}", "rol": "admin"},
        }
        out.append(pyjwt.encode(claims, key, algorithm="RS256", headers={"kid": kid}))  # type: ignore[arg-type]
    return out


def session_tokens(fake: FakeClerk, n: int) -> list[str]:
    from cryptography.hazmat.primitives import serialization

    pem = fake.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    workers = max(1, min(2, os.cpu_count() or 1))
    size = -(-n // (workers * 4))
    jobs = [(pem, fake.kid, start, min(size, n - start)) for start in range(0, n, size)]
    with ProcessPoolExecutor(workers) as pool:
        return [token for batch in pool.map(_sign_batch, jobs) for token in batch]


@dataclass
class Sessions:
    """An app that has seen ``sessions`` sessions once each (PEM key, local minting, the
    in-process cache); :meth:`sample` times warm requests over them, in random order."""

    sessions: int
    app: Any
    cookies: list[bytes]
    samples: list[float]
    hits: list[float]

    @property
    def bytes_per_session(self) -> float:
        memo = self.app.engine.memo
        return float(memo.bytes) / max(1, len(memo) // 2)

    async def sample(self, count: int, seed: int) -> None:
        picks = random.Random(seed).choices(self.cookies, k=count)
        scopes = [_scope(bytes(c)) for c in picks]  # fresh bytes, as a server makes them
        totals = self.app.engine.metrics.totals
        hits_before = totals.warm

        async def send(message: MutableMapping[str, Any]) -> None:
            pass

        gc.collect()
        gc.disable()
        started = time.perf_counter_ns()
        for scope in scopes:
            await self.app(scope, _receive, send)
        elapsed = time.perf_counter_ns() - started
        gc.enable()
        self.samples.append(elapsed / count)
        self.hits.append((totals.warm - hits_before) / count)


async def sessions_seen(fake: FakeClerk, tokens: list[str], memo_mb: int) -> Sessions:
    source = LocalTokenSource("ws_bench", ADMIN, SCOPES)
    app = ClerkTinybirdMiddleware(
        _app(), Settings(jwt_key=fake.public_key_pem, memo_max_mb=memo_mb), token_source=source
    )
    cookies = [f"__session={token}".encode() for token in tokens]
    for cookie in cookies:  # each session seen once
        await _call(app, cookie)
    return Sessions(len(tokens), app, cookies, [], [])


# -- (i) Redis ------------------------------------------------------------------------------------


@contextmanager
def redis_server() -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class RedisResult:
    warm_ratio: float  # warm request through RedisTokenCache / through MemoryTokenCache
    warm_redis_ns: float
    warm_memory_ns: float
    cold_redis_ms: float  # first request of a new tenant, median
    cold_direct_ms: float


async def redis_rows(
    fake: FakeClerk, url: str, redis_url: str, reps: int, tenants: int
) -> RedisResult:
    from clerk_tinybird_middleware import RedisTokenCache

    settings = Settings(secret_key=fake.secret_key, clerk_api_url=url)
    redis_cache = RedisTokenCache(redis_url)
    apps = {
        "redis": ClerkTinybirdMiddleware(_app(), settings, token_cache=redis_cache),
        "memory": ClerkTinybirdMiddleware(_app(), settings, token_cache=MemoryTokenCache()),
    }
    token = fake.session_token("user_i", org={"id": "org_i", "slug": "i"}, lifetime=3600)
    warm = f"__session={token}".encode()
    for app in apps.values():
        assert await _call(app, warm)

    async def send(message: MutableMapping[str, Any]) -> None:
        pass

    samples: dict[str, list[float]] = {name: [] for name in apps}
    for rep in range(reps):
        for name in list(apps) if rep % 2 else list(apps)[::-1]:
            scopes = [_scope(bytes(warm)) for _ in range(2000)]
            gc.collect()
            gc.disable()
            started = time.perf_counter_ns()
            for scope in scopes:
                await apps[name](scope, _receive, send)
            samples[name].append((time.perf_counter_ns() - started) / len(scopes))
            gc.enable()
    cold: dict[str, list[float]] = {name: [] for name in apps}
    for n in range(tenants):
        for name, app in apps.items():
            token = fake.session_token(f"user_c{name}{n}", org={"id": f"o{n}", "slug": f"c{n}"})
            began = time.perf_counter()
            assert await _call(app, f"__session={token}".encode())
            cold[name].append((time.perf_counter() - began) * 1000)
    for app in apps.values():
        await app.aclose()
    redis_cache.close()
    ratio = statistics.median(
        r / m for r, m in zip(samples["redis"], samples["memory"], strict=True)
    )
    return RedisResult(
        ratio,
        statistics.median(samples["redis"]),
        statistics.median(samples["memory"]),
        statistics.median(cold["redis"]),
        statistics.median(cold["memory"]),
    )


def main_h(argv: list[str]) -> None:  # pragma: no cover - used for before/after runs
    """``python benchmarks/scale.py h`` against whatever package is on the path."""
    import json

    from run import start_slow_clerk

    lifetime, margin, tenants = 6.0, 3.0, 50
    slow = start_slow_clerk(tenants, 0.3, template_lifetime=int(lifetime))
    try:
        result = asyncio.run(
            refresh_ahead(
                slow.url, slow.secret_key, slow.tokens, slow.calls, lifetime=lifetime, margin=margin
            )
        )
    finally:
        slow.stop()
    print(json.dumps(result.__dict__))


if __name__ == "__main__":  # pragma: no cover
    main_h(sys.argv[1:])
