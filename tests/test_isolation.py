"""Tenant isolation under load: 10,000 requests over 500 (user, org) pairs at concurrency 100.

Every user is signed in twice (two sessions, each with its own active org — a second device,
or a switch mid-stream) and the requests of all pairs are shuffled together, so a user's orgs
interleave and every org has several users. Tokens come from FakeClerk's Tinybird template
(``fixed_params`` ``org={{org.slug}}``, ``user={{user.id}}``) over loopback HTTP, cached in
process, or in Redis shared by two middleware instances (two "processes" of a fleet). Every
response's ``x-tinybird-token`` is decoded: its ``fixed_params`` must name the request's own user
and org slug. Mismatches and upstream calls are printed in the terminal summary.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from clerk_tinybird_middleware import (
    ClerkTinybirdMiddleware,
    LocalTokenSource,
    MemoryTokenCache,
    Settings,
)
from clerk_tinybird_middleware.testing import FakeClerk
from constants import ADMIN_TOKEN
from leaks import LeakWatch, summary, watch_for_leaks
from services import RedisServer

USERS = 250
ORGS = 100
REQUESTS = 10_000
CONCURRENCY = 100
TITLE = "isolation: 10,000 requests, 500 (user, org) pairs, concurrency 100"


@dataclass(frozen=True)
class Pair:
    user: str
    org_id: str
    slug: str
    token: str


def claims_of(jwt: str) -> dict[str, Any]:
    """A JWT's payload, decoded without verification (the test only reads it)."""
    segment = jwt.split(".")[1]
    value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    assert isinstance(value, dict)
    return value


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    session = scope["state"]["clerk_session"]
    body = json.dumps(
        {
            "user": session.user_id if session else None,
            "org": session.org_slug if session else None,
            "error": scope["state"]["tinybird_token_error"],
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module", autouse=True)
def leaks(request: pytest.FixtureRequest) -> Iterator[LeakWatch]:
    with watch_for_leaks(request, "test_isolation") as watch:
        yield watch


@pytest.fixture(scope="module")
def clerk(leaks: LeakWatch) -> Iterator[FakeClerk]:
    fake = FakeClerk()
    fake.add_tinybird_template(ADMIN_TOKEN, "ws_isolation", lifetime=600)
    leaks.secret(fake.secret_key, "Clerk secret key")
    leaks.secret(ADMIN_TOKEN, "Tinybird admin token")
    with fake.serve():
        yield fake


@pytest.fixture(scope="module")
def pairs(clerk: FakeClerk, leaks: LeakWatch) -> list[Pair]:
    """500 (user, org) pairs: each user in two orgs, each org shared by several users."""
    result = []
    for u in range(USERS):
        for org in (u % ORGS, (u * 7 + 31) % ORGS):
            org_id, slug = f"org_{org:03d}", f"tenant-{org:03d}"
            token = clerk.session_token(
                f"user_{u:03d}", org={"id": org_id, "slug": slug, "role": "member"}, lifetime=600
            )
            leaks.secret(token, "session token")
            result.append(Pair(f"user_{u:03d}", org_id, slug, token))
    assert len({(p.user, p.org_id) for p in result}) == 2 * USERS
    return result


@dataclass
class Tally:
    requests: int = 0
    tokens: int = 0
    mismatches: int = 0
    errors: Counter[str | None] | None = None

    def line(self, name: str, upstream: str, seconds: float) -> str:
        return (
            f"{name:28} {self.requests:>6} requests  {self.tokens:>6} tokens  "
            f"{self.mismatches} mismatches  {upstream}  ({seconds:.1f} s)"
        )


async def hammer(
    apps: Sequence[Any], pairs: Sequence[Pair], watch: LeakWatch, *, seed: int = 7
) -> Tally:
    """REQUESTS requests, shuffled over ``pairs`` and round-robin over ``apps``, and the check."""
    plan = [pairs[i % len(pairs)] for i in range(REQUESTS)]
    random.Random(seed).shuffle(plan)
    tally = Tally(errors=Counter())
    assert tally.errors is not None
    semaphore = asyncio.Semaphore(CONCURRENCY)
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        for app in apps
    ]
    seen: set[str] = set()

    async def one(i: int, pair: Pair) -> None:
        async with semaphore:
            response = await clients[i % len(clients)].get(
                "/data", headers={"authorization": f"Bearer {pair.token}"}
            )
        assert response.status_code == 200
        body = response.json()
        tally.requests += 1
        jwt = response.headers.get("x-tinybird-token")
        if jwt is None:
            tally.errors[body["error"]] += 1  # type: ignore[index]
            return
        tally.tokens += 1
        if jwt not in seen:
            seen.add(jwt)
            watch.secret(jwt, "Tinybird JWT")
        fixed = claims_of(jwt)["scopes"][0]["fixed_params"]
        own = {"org": pair.slug, "user": pair.user}
        if fixed != own or body["user"] != pair.user or body["org"] != pair.slug:
            tally.mismatches += 1

    try:
        await asyncio.gather(*(one(i, pair) for i, pair in enumerate(plan)))
    finally:
        for client in clients:
            await client.aclose()
    return tally


def _middleware(clerk: FakeClerk, **kwargs: Any) -> ClerkTinybirdMiddleware:
    settings = Settings(secret_key=clerk.secret_key, clerk_api_url=clerk.api_url or "")
    return ClerkTinybirdMiddleware(_echo, settings, **kwargs)


async def test_in_process_cache(
    request: pytest.FixtureRequest, clerk: FakeClerk, pairs: list[Pair], leaks: LeakWatch
) -> None:
    """One middleware, the in-process cache: one template call per pair, 0 mismatches."""
    cache = MemoryTokenCache()
    mw = _middleware(clerk, token_cache=cache)
    clerk.reset_calls()
    started = time.monotonic()
    tally = await hammer([mw], pairs, leaks)
    await mw.aclose()
    upstream = f"template calls {clerk.calls['template']}, JWKS calls {clerk.calls['jwks']}"
    summary(request.config).add(
        TITLE, tally.line("in-process cache", upstream, time.monotonic() - started)
    )
    assert tally.requests == REQUESTS
    assert tally.mismatches == 0
    assert tally.tokens == REQUESTS, tally.errors
    assert clerk.calls["template"] == len(pairs)  # concurrent misses for a pair share one call
    assert len(cache) == len(pairs)


@pytest.mark.redis
async def test_redis_cache_shared_by_two_instances(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    clerk: FakeClerk,
    pairs: list[Pair],
    leaks: LeakWatch,
) -> None:
    """Two middleware instances sharing Redis (a fleet of two): 0 mismatches, and every pair
    fetched exactly once fleet-wide."""
    from clerk_tinybird_middleware import RedisTokenCache

    caches = [RedisTokenCache(redis_server.url), RedisTokenCache(redis_server.url)]
    apps = [_middleware(clerk, token_cache=cache) for cache in caches]
    clerk.reset_calls()
    started = time.monotonic()
    try:
        tally = await hammer(apps, pairs, leaks, seed=11)
    finally:
        for app in apps:
            await app.aclose()
        for cache in caches:
            cache.close()
    upstream = f"template calls {clerk.calls['template']}, JWKS calls {clerk.calls['jwks']}"
    summary(request.config).add(
        TITLE, tally.line("Redis, 2 instances", upstream, time.monotonic() - started)
    )
    assert tally.requests == REQUESTS
    assert tally.mismatches == 0
    assert tally.tokens == REQUESTS, tally.errors
    assert clerk.calls["template"] == len(pairs)  # exactly one fetch per pair, fleet-wide


async def test_local_minting(
    request: pytest.FixtureRequest, clerk: FakeClerk, pairs: list[Pair], leaks: LeakWatch
) -> None:
    """The same load with local minting (no Clerk round trip): 0 mismatches."""
    source = LocalTokenSource(
        "ws_isolation",
        ADMIN_TOKEN,
        [
            {
                "type": "PIPES:READ",
                "resource": "events",
                "fixed_params": {"org": "{{org.slug}}", "user": "{{user.id}}"},
            }
        ],
    )
    mw = ClerkTinybirdMiddleware(_echo, Settings(jwt_key=clerk.public_key_pem), token_source=source)
    started = time.monotonic()
    tally = await hammer([mw], pairs, leaks, seed=13)
    summary(request.config).add(
        TITLE, tally.line("local minting (PEM key)", "no upstream", time.monotonic() - started)
    )
    assert tally.requests == REQUESTS
    assert tally.mismatches == 0
    assert tally.tokens == REQUESTS, tally.errors
    names = {claims_of(p.token)["sub"] for p in pairs}
    assert len(names) == USERS


# -- edges of the cache key ------------------------------------------------------------------------


async def _get(app: Any, token: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(what the app saw, the token's fixed_params or None) for one request."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/data", headers={"authorization": f"Bearer {token}"})
    jwt = response.headers.get("x-tinybird-token")
    return response.json(), claims_of(jwt)["scopes"][0]["fixed_params"] if jwt else None


async def test_org_switch_with_a_stale_session_token(clerk: FakeClerk, leaks: LeakWatch) -> None:
    """One session switches org A → B; a request still carrying the (valid, ≤ 60 s old) org-A
    token misses the cache, and Clerk renders the template with the session's *current* org,
    B. That token must not be handed out — nor cached as org A's for its whole lifetime."""
    sid = "sess_switching_org"
    org_a = {"id": "org_switch_a", "slug": "switch-a", "role": "admin"}
    org_b = {"id": "org_switch_b", "slug": "switch-b", "role": "admin"}
    token_a = clerk.session_token("user_switch", org=org_a, session_id=sid)
    token_b = clerk.session_token("user_switch", org=org_b, session_id=sid)  # the switch
    leaks.secret(token_a, "session token")
    leaks.secret(token_b, "session token")
    mw = _middleware(clerk)
    try:
        stale, stale_fixed = await _get(mw, token_a)
        _, current_fixed = await _get(mw, token_b)
        again, again_fixed = await _get(mw, token_a)
    finally:
        await mw.aclose()
    assert stale["org"] == again["org"] == "switch-a"
    assert (stale_fixed, again_fixed) == (None, None)  # refused, and nothing was cached
    assert stale["error"] == again["error"] == "tenant-missing"
    assert current_fixed == {"org": "switch-b", "user": "user_switch"}


async def test_cache_key_parts_cannot_collide(clerk: FakeClerk, leaks: LeakWatch) -> None:
    """(user ``a|b``, org ``c``) and (user ``a``, org ``b|c``) never share a cache entry, nor
    a user without an org and an org named ``-``, nor an impersonated session and an org id
    ending in its session id (ids Clerk would not issue, but the key must not depend on it)."""
    fixed_params = {"org": "{{org.id||user.id}}", "user": "{{user.id}}"}
    source = LocalTokenSource(
        "ws_isolation",
        ADMIN_TOKEN,
        [{"type": "PIPES:READ", "resource": "events", "fixed_params": fixed_params}],
    )
    mw = ClerkTinybirdMiddleware(_echo, Settings(jwt_key=clerk.public_key_pem), token_source=source)
    cases: list[tuple[str, dict[str, str] | None, dict[str, Any]]] = [
        ("user_a|b", {"id": "org_c", "slug": "c"}, {}),
        ("user_a", {"id": "b|org_c", "slug": "bc"}, {}),
        ("user_d", None, {}),
        ("user_d", {"id": "-", "slug": "dash"}, {}),
        ("user_e", {"id": "org_e", "slug": "e"}, {"act": {"sub": "user_admin"}, "session_id": "s"}),
        ("user_e", {"id": "org_e|s", "slug": "es"}, {}),
    ]
    for user, org, extra in cases:
        token = clerk.session_token(user, org=org, **extra)
        leaks.secret(token, "session token")
        _, fixed = await _get(mw, token)
        assert fixed == {"org": org["id"] if org else user, "user": user}
