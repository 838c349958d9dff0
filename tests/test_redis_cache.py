"""RedisTokenCache against a real redis-server: two cache instances stand for two processes.

The ASGI path is driven through the middleware with ``httpx.ASGITransport``, the WSGI path
through the WSGI middleware from threads; FakeClerk counts the template calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis
from starlette.applications import Starlette
from starlette.routing import Route

from _fleet_app import whoami
from clerk_tinybird_middleware import (
    ClerkSession,
    ClerkTinybirdMiddleware,
    ClerkTinybirdWSGIMiddleware,
    ConfigurationError,
    RedisTokenCache,
)
from clerk_tinybird_middleware.core.tokens import cache_key
from clerk_tinybird_middleware.testing import FakeClerk
from services import RedisServer, free_port
from support import jwt_claims

pytestmark = pytest.mark.redis

MARGIN = 10  # the default refresh margin


@pytest.fixture
def caches() -> Iterator[Callable[..., RedisTokenCache]]:
    """Make RedisTokenCache instances (one per simulated process), closed afterwards."""
    made: list[RedisTokenCache] = []

    def make(url: str, **options: Any) -> RedisTokenCache:
        cache = RedisTokenCache(url, **options)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client to look inside Redis."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def asgi(fake_clerk: FakeClerk, cache: RedisTokenCache) -> ClerkTinybirdMiddleware:
    return ClerkTinybirdMiddleware(
        Starlette(routes=[Route("/", whoami)]),
        secret_key=fake_clerk.secret_key,
        clerk_api_url=fake_clerk.api_url,
        token_cache=cache,
    )


def client(app: ClerkTinybirdMiddleware) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def session(fake_clerk: FakeClerk, n: int) -> dict[str, str]:
    """Authorization headers for (user n, org n), in a session of their own."""
    token = fake_clerk.session_token(
        f"user_{n}", org={"id": f"org_{n}", "slug": f"acme-{n}", "role": "admin"}
    )
    return {"authorization": f"Bearer {token}"}


def redis_keys(app: ClerkTinybirdMiddleware, cache: RedisTokenCache, n: int) -> tuple[str, str]:
    """The documented layout: prefix + "{" + sha256(cache key)[:32] + "}:tok" / ":lock"."""
    session = ClerkSession(f"user_{n}", "sess_any", f"org_{n}", f"acme-{n}", "org:admin")
    assert app.engine.broker is not None
    digest = hashlib.sha256(cache_key(app.engine.broker.namespace, session).encode()).hexdigest()
    value_key, lock = cache.keys(cache_key(app.engine.broker.namespace, session))
    assert (value_key, lock) == (
        f"{cache.prefix}{{{digest[:32]}}}:tok",
        f"{cache.prefix}{{{digest[:32]}}}:lock",
    )
    return value_key, lock


def lock_key(app: ClerkTinybirdMiddleware, cache: RedisTokenCache, n: int) -> str:
    return redis_keys(app, cache, n)[1]


def stored_value(raw: bytes | str) -> dict[str, Any]:
    """A stored value: ``<hmac>.<json>``."""
    mac, _, body = (raw.encode() if isinstance(raw, str) else raw).partition(b".")
    assert len(mac) == 64
    value: dict[str, Any] = json.loads(body)
    return value


async def get_tokens(
    apps: list[ClerkTinybirdMiddleware], requests: list[tuple[int, dict[str, str]]]
) -> list[str | None]:
    """Send (app index, headers) requests concurrently; the x-tinybird-token of each."""
    clients = [client(app) for app in apps]
    try:
        responses = await asyncio.gather(
            *(clients[i].get("/", headers=headers) for i, headers in requests)
        )
    finally:
        for c in clients:
            await c.aclose()
    assert all(r.status_code == 200 for r in responses)
    return [r.headers.get("x-tinybird-token") for r in responses]


def warnings_of(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [
        r
        for r in records
        if r.name == "clerk_tinybird_middleware"
        and r.levelno == logging.WARNING
        and getattr(r, "clerk_tinybird_reason", None) == "redis-unavailable"
    ]


# -- sharing ---------------------------------------------------------------------------------


async def test_two_processes_share_one_fetch_per_tenant(
    fake_clerk: FakeClerk, redis_server: RedisServer, caches: Any, store: redis.Redis
) -> None:
    fake_clerk.inject("template", delay=0.3)  # holders stay busy: the others must wait
    apps = [asgi(fake_clerk, caches(redis_server.url)) for _ in range(2)]
    headers = [session(fake_clerk, n) for n in range(5)]
    requests = [(i % 2, headers[n]) for n in range(5) for i in range(6)]

    tokens = await get_tokens(apps, requests)

    assert fake_clerk.calls["template"] == 5
    assert all(tokens)
    by_tenant = {
        n: {t for (_, h), t in zip(requests, tokens, strict=True) if h is headers[n]}
        for n in range(5)
    }
    assert all(len(seen) == 1 for seen in by_tenant.values())
    assert len(set(tokens)) == 5


async def test_every_key_has_a_ttl_and_locks_are_released(
    fake_clerk: FakeClerk, redis_server: RedisServer, caches: Any, store: redis.Redis
) -> None:
    cache = caches(redis_server.url, prefix="app1:")
    app = asgi(fake_clerk, cache)
    await get_tokens([app], [(0, session(fake_clerk, n)) for n in range(3)])

    keys = sorted(k.decode() for k in store.scan_iter("*"))
    assert len(keys) == 3
    assert all(k.startswith("app1:{") and k.endswith("}:tok") and len(k) == 43 for k in keys)
    for key in keys:
        raw = store.get(key)
        assert raw is not None
        value = stored_value(raw)
        assert set(value) == {"jwt", "exp", "refresh_at"}
        assert value["refresh_at"] == value["exp"] - MARGIN
        left_ms = (value["exp"] - 2 - time.time()) * 1000
        assert 0 < store.pttl(key) <= left_ms + 50  # gone when no longer handed out
    assert not any(store.exists(lock_key(app, cache, n)) for n in range(3))


async def test_a_warm_request_does_not_touch_redis(
    fake_clerk: FakeClerk,
    redis_server: RedisServer,
    caches: Any,
    debug_logs: list[logging.LogRecord],
) -> None:
    app = asgi(fake_clerk, caches(redis_server.url))
    headers = session(fake_clerk, 1)
    first = await get_tokens([app], [(0, headers)])
    redis_server.stop()

    again = await get_tokens([app], [(0, headers)] * 3)

    assert again == first * 3
    assert fake_clerk.calls["template"] == 1
    assert warnings_of(debug_logs) == []


def test_wsgi_threads_of_two_processes_share_one_fetch(
    fake_clerk: FakeClerk, redis_server: RedisServer, caches: Any
) -> None:
    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"ok"]

    fake_clerk.inject("template", delay=0.3)
    apps = [
        ClerkTinybirdWSGIMiddleware(
            inner,
            secret_key=fake_clerk.secret_key,
            clerk_api_url=fake_clerk.api_url,
            token_cache=caches(redis_server.url),
        )
        for _ in range(2)
    ]
    headers = session(fake_clerk, 7)

    def call(i: int) -> str | None:
        transport = httpx.WSGITransport(app=apps[i % 2])
        with httpx.Client(transport=transport, base_url="http://test") as c:
            response = c.get("/", headers=headers)
        assert response.status_code == 200
        token: str | None = response.headers.get("x-tinybird-token")
        return token

    try:
        with ThreadPoolExecutor(8) as pool:
            tokens = list(pool.map(call, range(16)))
    finally:
        for app in apps:
            app.close()
    assert fake_clerk.calls["template"] == 1
    assert tokens[0] is not None
    assert set(tokens) == {tokens[0]}


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param(b"not json", id="garbage"),
        pytest.param(b'{"jwt": 1, "exp": 2}', id="wrong-types"),
        pytest.param(b'{"jwt": "a.b.c", "exp": 4102444800}', id="not-a-jwt"),
    ],
)
async def test_an_unreadable_value_is_a_miss(
    fake_clerk: FakeClerk,
    redis_server: RedisServer,
    caches: Any,
    store: redis.Redis,
    stored: bytes,
) -> None:
    cache = caches(redis_server.url)
    app = asgi(fake_clerk, cache)
    value_key = redis_keys(app, cache, 3)[0]
    store.set(value_key, stored, px=60_000)

    [token] = await get_tokens([app], [(0, session(fake_clerk, 3))])

    assert token is not None
    assert fake_clerk.calls["template"] == 1
    raw = store.get(value_key)
    assert raw is not None
    assert stored_value(raw)["jwt"] == token  # replaced by the good one


async def test_a_value_copied_under_another_tenants_key_is_refused(
    fake_clerk: FakeClerk, redis_server: RedisServer, caches: Any, store: redis.Redis
) -> None:
    """An attacker who can write Redis copies tenant B's value under tenant A's key: the HMAC
    binds a value to its key, so A never receives B's token (it fetches its own)."""
    cache = caches(redis_server.url)
    app = asgi(fake_clerk, cache)
    [token_b] = await get_tokens([app], [(0, session(fake_clerk, 8))])
    value_b = store.get(redis_keys(app, cache, 8)[0])
    assert value_b is not None
    cache.local.clear()
    store.set(redis_keys(app, cache, 9)[0], value_b, px=60_000)

    [token_a] = await get_tokens([app], [(0, session(fake_clerk, 9))])

    assert token_a is not None
    assert token_a != token_b
    assert jwt_claims(token_a)["scopes"][0]["fixed_params"]["org"] == "acme-9"
    assert fake_clerk.calls["template"] == 2


@pytest.mark.parametrize("exp", [1e20, float("nan"), -1, "soon"])
async def test_a_bound_value_with_an_absurd_exp_is_a_miss_not_an_error(
    fake_clerk: FakeClerk, redis_server: RedisServer, caches: Any, store: redis.Redis, exp: Any
) -> None:
    """Even a correctly signed value (a bug, or a leaked secret) with an exp no datetime can
    hold does not block the tenant: it is unreadable, so a miss."""
    cache = caches(redis_server.url)
    app = asgi(fake_clerk, cache)
    [_first] = await get_tokens([app], [(0, session(fake_clerk, 10))])
    value_key = redis_keys(app, cache, 10)[0]
    raw = store.get(value_key)
    assert raw is not None
    data = stored_value(raw)
    data["exp"] = exp
    body = json.dumps(data).encode()
    secret = app.engine.broker._secret if app.engine.broker else b""
    mac = hmac.new(secret, value_key.encode() + b"\x00" + body, hashlib.sha256).hexdigest()
    store.set(value_key, mac.encode() + b"." + body, px=60_000)
    cache.local.clear()

    [again] = await get_tokens([app], [(0, session(fake_clerk, 10))])

    assert again is not None
    assert fake_clerk.calls["template"] == 2  # refetched, never a clerk-unavailable


# -- locks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["asgi", "wsgi"])
async def test_a_dead_holders_lock_is_waited_out_then_taken(
    fake_clerk: FakeClerk,
    redis_server: RedisServer,
    caches: Any,
    store: redis.Redis,
    path: str,
) -> None:
    cache = caches(redis_server.url)
    app = asgi(fake_clerk, cache)
    lock = lock_key(app, cache, 4)
    store.set(lock, "owner-that-died", px=1500)  # what a SIGKILLed holder leaves behind
    headers = session(fake_clerk, 4)

    def wsgi_call() -> str | None:
        def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [])
            return [b""]

        mw = ClerkTinybirdWSGIMiddleware(
            inner,
            secret_key=fake_clerk.secret_key,
            clerk_api_url=fake_clerk.api_url,
            token_cache=cache,
        )
        try:
            with httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t") as c:
                token: str | None = c.get("/", headers=headers).headers.get("x-tinybird-token")
                return token
        finally:
            mw.close()

    started = time.monotonic()
    if path == "asgi":
        task = asyncio.ensure_future(get_tokens([app], [(0, headers)]))
    else:
        task = asyncio.ensure_future(asyncio.to_thread(lambda: [wsgi_call()]))
    while store.get(lock) == b"owner-that-died":
        assert fake_clerk.calls["template"] == 0  # nobody calls Clerk while the lock lives
        await asyncio.sleep(0.02)
    [token] = await task
    waited = time.monotonic() - started

    assert token is not None
    assert fake_clerk.calls["template"] == 1
    assert waited <= cache.lock_timeout + 3 + 1
    assert not store.exists(lock)


async def test_a_failed_fetch_releases_the_lock_at_once(
    fake_clerk: FakeClerk, redis_server: RedisServer, caches: Any, store: redis.Redis
) -> None:
    fake_clerk.inject("template", status=503, times=3)  # every attempt fails: not remembered
    cache = caches(redis_server.url)
    app = asgi(fake_clerk, cache)
    headers = session(fake_clerk, 5)
    async with client(app) as c:
        failed = (await c.get("/", headers=headers)).json()
        assert not store.exists(lock_key(app, cache, 5))
        ok = await c.get("/", headers=headers)

    assert failed["token"] is False
    assert failed["error"] == "clerk-unavailable"
    assert ok.headers.get("x-tinybird-token")
    assert fake_clerk.calls["template"] == 4


# -- Redis trouble -----------------------------------------------------------------------------


async def test_redis_stopped_mid_run_then_back(
    fake_clerk: FakeClerk,
    redis_server: RedisServer,
    caches: Any,
    store: redis.Redis,
    debug_logs: list[logging.LogRecord],
) -> None:
    apps = [asgi(fake_clerk, caches(redis_server.url, bypass_seconds=0.2)) for _ in range(2)]
    headers = [session(fake_clerk, n) for n in range(15)]
    warm = await get_tokens(apps, [(i, headers[n]) for n in range(5) for i in range(2)])
    assert fake_clerk.calls["template"] == 5

    redis_server.stop()
    outage: list[str | None] = []
    for _wave in range(2):  # two waves, past the bypass window: Redis is tried (and fails) again
        wave = await get_tokens(apps, [(i, headers[n]) for n in range(10) for i in range(2)] * 2)
        outage += wave
        await asyncio.sleep(0.25)

    assert all(outage)  # not one request failed or went without its token
    assert outage[:10] == warm  # warm tenants still served from the in-process layer
    assert 10 <= fake_clerk.calls["template"] <= 5 + 5 * 2  # cold ones fetched directly
    assert len(warnings_of(debug_logs)) == 2  # one per process, rate-limited

    redis_server.start()  # same port
    await asyncio.sleep(0.25)  # past the bypass window
    before = fake_clerk.calls["template"]
    back = await get_tokens(apps, [(i, headers[n]) for n in range(10, 15) for i in range(2)] * 2)

    assert all(back)
    assert fake_clerk.calls["template"] - before == 5  # sharing resumed
    assert len(list(store.scan_iter("clerk_tinybird:*:tok"))) == 5
    seen = {t for t in warm + outage + back if t}
    messages = [r.getMessage() for r in debug_logs]
    assert not any(t in m for t in seen for m in messages)
    assert any("is back" in m for m in messages)


def _blackhole() -> tuple[socket.socket, str]:
    """A port that accepts connections and never answers: a hung Redis."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock, f"redis://127.0.0.1:{sock.getsockname()[1]}/0"


@pytest.mark.parametrize("kind", ["refused", "hung"])
async def test_unreachable_redis_never_fails_a_request(
    fake_clerk: FakeClerk,
    caches: Any,
    debug_logs: list[logging.LogRecord],
    kind: str,
) -> None:
    if kind == "hung":
        sock, url = _blackhole()
    else:
        sock, url = None, f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    try:
        apps = [asgi(fake_clerk, caches(url, socket_timeout=0.2))]
        tokens = await get_tokens(apps, [(0, session(fake_clerk, n)) for n in range(4)])
    finally:
        if sock is not None:
            sock.close()

    assert all(tokens)
    assert fake_clerk.calls["template"] == 4
    [warning] = warnings_of(debug_logs)
    assert "hunter2" not in warning.getMessage()


def test_sync_path_degrades_keeping_in_process_single_flight(
    fake_clerk: FakeClerk, caches: Any, debug_logs: list[logging.LogRecord]
) -> None:
    cache = caches(f"redis://127.0.0.1:{free_port()}/0")

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    mw = ClerkTinybirdWSGIMiddleware(
        inner, secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url, token_cache=cache
    )
    headers = session(fake_clerk, 7)
    fake_clerk.inject("template", delay=0.3, times=1)  # the others arrive while it runs
    done: list[str] = []

    def call() -> None:
        with httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t") as c:
            done.append(c.get("/", headers=headers).headers["x-tinybird-token"])

    threads = [threading.Thread(target=call) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        mw.close()
    assert len(done) == 6
    assert len(set(done)) == 1
    assert fake_clerk.calls["template"] == 1  # in-process single-flight still holds
    assert len(warnings_of(debug_logs)) == 1


# -- configuration -----------------------------------------------------------------------------


def test_settings_select_the_redis_cache(fake_clerk: FakeClerk, redis_server: RedisServer) -> None:
    app = ClerkTinybirdMiddleware(
        Starlette(), secret_key=fake_clerk.secret_key, redis_url=redis_server.url
    )
    assert isinstance(app.engine.cache, RedisTokenCache)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@cache:6379/0", "redis://:***@cache:6379/0"),
        ("rediss://app:s3cret@cache:6380/1", "rediss://app:***@cache:6380/1"),
        (
            "redis://cache:6379/0?password=s3cret&ssl_cert_reqs=none",
            "redis://cache:6379/0?password=***&ssl_cert_reqs=none",
        ),
        ("redis://cache:6379/0", "redis://cache:6379/0"),
    ],
    ids=["password", "user-and-password", "query-password", "none"],
)
def test_repr_never_shows_the_password(url: str, shown: str) -> None:
    cache = RedisTokenCache(url)
    assert repr(cache) == f"RedisTokenCache(url={shown!r}, prefix='clerk_tinybird:')"
    assert "s3cret" not in repr(cache)


def test_a_malformed_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="CLERK_TINYBIRD_REDIS_URL"):
        RedisTokenCache("http://cache:6379")


@pytest.mark.parametrize(
    "options",
    [{"lock_timeout": 2.0}, {"poll_interval": 0}, {"socket_timeout": -1}],
    ids=["lock-shorter-than-upstream-budget", "no-poll-interval", "negative-timeout"],
)
def test_unsafe_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        RedisTokenCache("redis://cache:6379/0", **options)
