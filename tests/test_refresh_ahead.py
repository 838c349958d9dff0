"""Refresh ahead (SPEC §11) through the real edges: the request inside the margin is answered
at once with the held token while one background refresh runs — a task owned by the ASGI
middleware (cancelled at lifespan shutdown), a worker thread under WSGI."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from clerk_tinybird_middleware import ClerkTinybirdMiddleware, ClerkTinybirdWSGIMiddleware
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird

ORG = {"id": "org_r", "slug": "refresh"}


async def _ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def _short_template(fake_clerk: FakeClerk, fake_tinybird: FakeTinybird) -> None:
    # 4 s tokens renewed 3.5 s early: due for refresh within a second, still handed out for 2 s.
    fake_clerk.add_tinybird_template(
        fake_tinybird.admin_token, fake_tinybird.workspace_id, lifetime=4
    )


async def test_asgi_serves_the_held_token_and_refreshes_in_a_task_closed_at_shutdown(
    fake_clerk: FakeClerk, fake_tinybird: FakeTinybird
) -> None:
    _short_template(fake_clerk, fake_tinybird)
    app = ClerkTinybirdMiddleware(
        Starlette(routes=[Route("/", _ok)]),
        secret_key=fake_clerk.secret_key,
        clerk_api_url=fake_clerk.api_url,
        refresh_margin_seconds=3.5,
    )
    headers = {"authorization": f"Bearer {fake_clerk.session_token('u', org=ORG, lifetime=600)}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answer = await client.get("/", headers=headers)
        first = answer.headers["x-tinybird-token"]
        exp = int(answer.headers["x-tinybird-token-expires-at"])
        await asyncio.sleep(max(0.0, exp - 3.5 - time.time()) + 0.05)  # inside the margin
        fake_clerk.inject("template", delay=2, times=1)  # the refresh will be slow
        started = time.monotonic()
        held = (await client.get("/", headers=headers)).headers["x-tinybird-token"]
        took = time.monotonic() - started
        await asyncio.sleep(0.1)
        assert held == first  # served the held token...
        assert took < 1  # ...without waiting for the (slow) refresh
        assert fake_clerk.calls["template"] == 2  # one background refresh, under way
        tasks = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        assert tasks  # the refresh task
    messages: list[dict[str, Any]] = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else await asyncio.sleep(3600)  # type: ignore[func-returns-value,return-value]

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)  # type: ignore[arg-type]
    left = {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()}
    assert left == set()  # cancelled cleanly, nothing leaked
    assert {"type": "lifespan.shutdown.complete"} in sent


def test_wsgi_refreshes_on_a_worker_thread(
    fake_clerk: FakeClerk, fake_tinybird: FakeTinybird
) -> None:
    _short_template(fake_clerk, fake_tinybird)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    mw = ClerkTinybirdWSGIMiddleware(
        app,
        secret_key=fake_clerk.secret_key,
        clerk_api_url=fake_clerk.api_url,
        refresh_margin_seconds=3.5,
    )
    headers = {"authorization": f"Bearer {fake_clerk.session_token('u', org=ORG, lifetime=600)}"}
    try:
        with httpx.Client(transport=httpx.WSGITransport(app=mw), base_url="http://t") as client:
            answer = client.get("/", headers=headers)
            first = answer.headers["x-tinybird-token"]
            exp = int(answer.headers["x-tinybird-token-expires-at"])
            time.sleep(max(0.0, exp - 3.5 - time.time()) + 0.05)  # inside the margin
            fake_clerk.inject("template", delay=1, times=1)
            started = time.monotonic()
            held = client.get("/", headers=headers).headers["x-tinybird-token"]
            took = time.monotonic() - started
            # The refresh lands when the worker has stored its answer (FakeClerk logs the call
            # before the bytes reach the worker): ask until the new token is served.
            renewed, deadline = held, time.monotonic() + 5
            while renewed == first and time.monotonic() < deadline:
                time.sleep(0.05)
                renewed = client.get("/", headers=headers).headers["x-tinybird-token"]
    finally:
        mw.close()
    assert held == first
    assert took < 0.8  # the request did not wait for the refresh
    assert renewed != first
    assert fake_clerk.calls["template"] == 2
