"""RedisTokenCache on a real 3-node Redis Cluster (SPEC §13): cluster mode detected from any
node's URL, a tenant's keys in one slot, fleet-wide single-flight and the instance-wide 429
pause across nodes, and a node killed mid-run costing no request."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from _fleet_app import whoami
from clerk_tinybird_middleware import ClerkTinybirdMiddleware, RedisTokenCache
from clerk_tinybird_middleware.testing import FakeClerk
from leaks import summary
from services import RedisCluster

pytestmark = pytest.mark.redis
TITLE = "Redis Cluster: 3 nodes, 2 middleware instances"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    started = RedisCluster(3).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def caches(cluster: RedisCluster) -> Iterator[list[RedisTokenCache]]:
    """Two caches (two processes of one fleet) pointed at different nodes, with a prefix of
    their own so tests do not see each other's keys."""
    prefix = f"t{secrets.token_hex(4)}:"
    made = [
        RedisTokenCache(cluster.url(0), prefix=prefix),
        RedisTokenCache(cluster.url(2), prefix=prefix),
    ]
    yield made
    for cache in made:
        cache.close()


def middleware(fake_clerk: FakeClerk, cache: RedisTokenCache) -> ClerkTinybirdMiddleware:
    return ClerkTinybirdMiddleware(
        Starlette(routes=[Route("/", whoami)]),
        secret_key=fake_clerk.secret_key,
        clerk_api_url=fake_clerk.api_url,
        token_cache=cache,
    )


def tenant(fake_clerk: FakeClerk, n: int) -> dict[str, str]:
    token = fake_clerk.session_token(f"user_{n}", org={"id": f"org_{n}", "slug": f"t-{n}"})
    return {"authorization": f"Bearer {token}"}


async def send(
    apps: list[ClerkTinybirdMiddleware], requests: list[tuple[int, dict[str, str]]]
) -> list[httpx.Response]:
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        for app in apps
    ]
    try:
        return list(await asyncio.gather(*(clients[i].get("/", headers=h) for i, h in requests)))
    finally:
        for client in clients:
            await client.aclose()
        for app in apps:
            await app.aclose()


def failed(responses: list[httpx.Response]) -> list[Any]:
    return [
        (r.status_code, r.json().get("error"))
        for r in responses
        if r.status_code != 200 or not r.headers.get("x-tinybird-token")
    ]


async def test_two_instances_on_two_nodes_share_one_call_per_tenant(
    request: pytest.FixtureRequest,
    cluster: RedisCluster,
    caches: list[RedisTokenCache],
    fake_clerk: FakeClerk,
) -> None:
    fake_clerk.inject("template", delay=0.2)  # holders stay busy: the others must wait
    apps = [middleware(fake_clerk, cache) for cache in caches]
    headers = [tenant(fake_clerk, n) for n in range(20)]
    requests = [(i % 2, headers[n]) for n in range(20) for i in range(10)]

    responses = await send(apps, requests)

    assert failed(responses) == []
    assert fake_clerk.calls["template"] == 20  # 200 cold requests, 20 tenants, 2 instances
    assert all(cache.connection.cluster for cache in caches)
    prefix = caches[0].prefix
    stored = [k for k in cluster.stored_keys() if k.startswith(prefix)]
    assert len(stored) == 20
    assert all(k.endswith(":tok") for k in stored)  # the locks are released
    owners = {cluster.slot_owner(k) for k in stored}
    assert len(owners) == 3  # the tenants are spread over the three nodes
    summary(request.config).add(
        TITLE,
        f"200 cold requests over 20 tenants, instances on nodes 1 and 3: template calls "
        f"{fake_clerk.calls['template']}, tenants stored on {len(owners)} nodes",
    )


async def test_the_429_pause_crosses_nodes_and_instances(
    caches: list[RedisTokenCache], fake_clerk: FakeClerk
) -> None:
    fake_clerk.inject("template", status=429, retry_after=30, times=1)
    first, second = (middleware(fake_clerk, cache) for cache in caches)

    [limited] = await send([first], [(0, tenant(fake_clerk, 100))])
    [paused] = await send([second], [(0, tenant(fake_clerk, 101))])  # another tenant, node

    assert limited.json()["error"] == "clerk-rate-limited"
    assert paused.json()["error"] == "clerk-rate-limited"
    assert fake_clerk.calls["template"] == 1  # the second instance never asked Clerk


async def test_a_node_killed_mid_run_fails_no_request(
    request: pytest.FixtureRequest,
    cluster: RedisCluster,
    caches: list[RedisTokenCache],
    fake_clerk: FakeClerk,
) -> None:
    apps = [middleware(fake_clerk, cache) for cache in caches]
    headers = [tenant(fake_clerk, 200 + n) for n in range(20)]
    warm = await send(apps, [(n % 2, h) for n, h in enumerate(headers)])
    victim = cluster.slot_owner(
        next(k for k in cluster.stored_keys() if k.startswith(caches[0].prefix))
    )
    cluster.kill(victim)
    try:
        # Old tenants (held in process) and new ones (direct fetches while the slot is down).
        more = [tenant(fake_clerk, 300 + n) for n in range(20)]
        during = await send(
            [middleware(fake_clerk, cache) for cache in caches],
            [(n % 2, h) for n, h in enumerate([*headers, *more] * 3)],
        )
    finally:
        cluster.start_node(victim)
    assert failed(warm) == []
    assert failed(during) == []
    summary(request.config).add(
        TITLE,
        f"node {victim} killed mid-run: {len(during)} requests, {len(failed(during))} failed, "
        f"template calls {fake_clerk.calls['template']} for 40 tenants",
    )
