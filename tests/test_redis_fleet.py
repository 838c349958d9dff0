"""A fleet: 4 uvicorn worker processes (tests/_fleet_app.py, configured from the environment
only) share one redis-server; FakeClerk, in this process, counts the template calls."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from clerk_tinybird_middleware.testing import FakeClerk
from services import RedisServer, free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

WORKERS = 4
LOCK_TTL = 5.0  # RedisTokenCache's default lock_timeout
UPSTREAM_BUDGET = 3.0


class Fleet:
    """``WORKERS`` separate uvicorn processes, one port each, so a test knows which process
    serves a request (and which one it kills)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.logs = logs
        self.ports = [free_port() for _ in range(WORKERS)]
        self.procs: list[subprocess.Popen[bytes]] = []
        tests = str(Path(__file__).parent)
        for i, port in enumerate(self.ports):
            log = (logs / f"worker{i}.log").open("wb")
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "_fleet_app:create_app",
                        "--factory",
                        "--app-dir",
                        tests,
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--log-level",
                        "warning",
                        "--no-access-log",
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()

    def output(self) -> str:
        """What the workers wrote (the package logs through Python's last-resort handler)."""
        return "".join(
            (self.logs / f"worker{i}.log").read_text(errors="replace") for i in range(WORKERS)
        )

    def url(self, worker: int) -> str:
        return f"http://127.0.0.1:{self.ports[worker]}/"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        for i in range(WORKERS):
            while True:
                assert self.procs[i].poll() is None, f"worker {i} exited"
                try:
                    if httpx.get(self.url(i), timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"worker {i} did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


@pytest.fixture
def fleet(fake_clerk: FakeClerk, redis_server: RedisServer, tmp_path: Path) -> Iterator[Fleet]:
    assert fake_clerk.api_url is not None
    env = {
        **os.environ,
        "CLERK_SECRET_KEY": fake_clerk.secret_key,
        "CLERK_API_URL": fake_clerk.api_url,
        "CLERK_TINYBIRD_REDIS_URL": redis_server.url,
    }
    fleet = Fleet(env, tmp_path)
    try:
        fleet.wait_ready()
        yield fleet
    finally:
        fleet.stop()


def sessions(fake_clerk: FakeClerk, count: int) -> list[dict[str, str]]:
    return [
        {
            "authorization": "Bearer "
            + fake_clerk.session_token(
                f"user_{n}", org={"id": f"org_{n}", "slug": f"acme-{n}", "role": "admin"}
            )
        }
        for n in range(count)
    ]


async def flood(
    fleet: Fleet, plan: list[tuple[int, int]], headers: list[dict[str, str]]
) -> list[httpx.Response]:
    """Send every (worker, pair) request, 40 at a time."""
    gate = asyncio.Semaphore(40)
    async with httpx.AsyncClient(timeout=30) as c:

        async def one(worker: int, pair: int) -> httpx.Response:
            async with gate:
                return await c.get(fleet.url(worker), headers=headers[pair])

        return await asyncio.gather(*(one(w, p) for w, p in plan))


async def test_400_requests_over_20_tenants_make_20_template_calls(
    fake_clerk: FakeClerk, fleet: Fleet, store: redis.Redis
) -> None:
    headers = sessions(fake_clerk, 20)
    plan = [(w, p) for w in range(WORKERS) for p in range(20) for _ in range(5)]  # 400
    random.Random(7).shuffle(plan)
    fake_clerk.inject("template", delay=0.2)  # a fetch is in flight while other workers ask

    responses = await flood(fleet, plan, headers)

    assert [r.status_code for r in responses] == [200] * 400
    tokens: dict[int, set[str | None]] = defaultdict(set)
    for (_, pair), response in zip(plan, responses, strict=True):
        tokens[pair].add(response.headers.get("x-tinybird-token"))
    assert all(len(seen) == 1 and None not in seen for seen in tokens.values())
    assert len({r.json()["pid"] for r in responses}) == WORKERS
    assert fake_clerk.calls["template"] == 20
    assert list(store.scan_iter("clerk_tinybird:*:lock")) == []
    assert all(store.pttl(k) > 0 for k in store.scan_iter("clerk_tinybird:*"))


async def test_a_worker_killed_holding_the_lock(
    fake_clerk: FakeClerk, fleet: Fleet, store: redis.Redis
) -> None:
    [headers] = sessions(fake_clerk, 1)
    fake_clerk.inject("template", delay=2.0, times=1)  # worker 0 will hang in its fetch
    async with httpx.AsyncClient(timeout=30) as c:
        doomed = asyncio.ensure_future(c.get(fleet.url(0), headers=headers))
        locks: list[bytes | str] = []
        for _ in range(500):  # until worker 0 holds the lock and is inside its fetch
            if fake_clerk.calls["template"] and (locks := store.keys("clerk_tinybird:*:lock")):
                break
            await asyncio.sleep(0.01)
        [lock] = locks
        owner = store.get(lock)
        fleet.procs[0].kill()  # SIGKILL: no cleanup, the lock stays until its TTL
        fleet.procs[0].wait()
        with pytest.raises(httpx.TransportError):
            await doomed

        async def timed(worker: int) -> tuple[float, httpx.Response]:
            started = time.monotonic()
            response = await c.get(fleet.url(worker), headers=headers)
            return time.monotonic() - started, response

        survivors = asyncio.gather(*(timed(w) for w in (1, 2, 3) for _ in range(3)))
        while store.get(lock) == owner:
            assert fake_clerk.calls["template"] == 1  # no one calls Clerk while the lock lives
            await asyncio.sleep(0.02)
        results = await survivors

    waits = [waited for waited, _ in results]
    tokens = {r.headers.get("x-tinybird-token") for _, r in results}
    assert [r.status_code for _, r in results] == [200] * 9
    assert len(tokens) == 1
    assert None not in tokens
    assert fake_clerk.calls["template"] == 2  # the dead worker's, then exactly one more
    assert max(waits) <= LOCK_TTL + UPSTREAM_BUDGET + 1


async def test_redis_stopped_mid_run_then_back(
    fake_clerk: FakeClerk,
    fleet: Fleet,
    redis_server: RedisServer,
    store: redis.Redis,
) -> None:
    headers = sessions(fake_clerk, 30)
    warm = [(w, p) for w in range(WORKERS) for p in range(10)]
    assert all(r.status_code == 200 for r in await flood(fleet, warm, headers))
    assert fake_clerk.calls["template"] == 10

    # Mid-run: Redis goes away while 200 requests (10 warm tenants, 10 cold) are in flight.
    plan = [(w, p) for w in range(WORKERS) for p in range(20) for _ in range(3)]
    random.Random(3).shuffle(plan)
    plan = plan[:200]
    during = asyncio.ensure_future(flood(fleet, plan, headers))
    await asyncio.sleep(0.05)
    redis_server.stop()
    responses = await during
    failed = [r for r in responses if r.status_code != 200 or not r.headers.get("x-tinybird-token")]
    assert len(responses) == 200
    assert failed == []

    redis_server.start()  # same port
    await asyncio.sleep(2.2)  # the workers' bypass window after a failure
    before = fake_clerk.calls["template"]
    back = [(w, p) for w in range(WORKERS) for p in range(20, 30) for _ in range(2)]
    random.Random(5).shuffle(back)
    responses = await flood(fleet, back, headers)

    assert all(r.status_code == 200 and r.headers.get("x-tinybird-token") for r in responses)
    assert fake_clerk.calls["template"] - before == 10  # shared again: one call per tenant
    assert len(list(store.scan_iter("clerk_tinybird:*:tok"))) == 10
    output = fleet.output()
    assert "Redis token cache at redis://127.0.0.1" in output  # the outage was noticed, and
    assert output.count("unavailable") <= WORKERS  # warned about at most once per worker
    jwts = {r.headers["x-tinybird-token"] for r in responses}
    assert not any(jwt in output for jwt in jwts)
