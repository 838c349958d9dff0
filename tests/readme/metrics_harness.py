"""Runs the README's OpenTelemetry block in a process of its own (OpenTelemetry allows one
global MeterProvider per process), then a few requests through the middleware against FakeClerk,
then flushes the block's reader: its console exporter prints what an SDK collects.

Usage: ``python metrics_harness.py BLOCK.py`` — prints the exporter's output on stdout.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from clerk_tinybird_middleware import ClerkTinybirdMiddleware
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird


async def _ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def _requests(app: Any, session: str) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        for headers in ({"authorization": f"Bearer {session}"}, {}):
            answer = await client.get("/", headers=headers)
            assert answer.status_code == 200, answer.status_code


def main(block: str) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_metrics"}
    exec(compile(Path(block).read_text(), "README.md", "exec"), namespace)
    tinybird = FakeTinybird()
    clerk = FakeClerk()
    clerk.add_tinybird_template(tinybird.admin_token, tinybird.workspace_id)
    with clerk.serve():
        app = Starlette(routes=[Route("/", _ok)])
        app.add_middleware(
            ClerkTinybirdMiddleware, secret_key=clerk.secret_key, clerk_api_url=clerk.api_url
        )
        session = clerk.session_token("user_1", org={"id": "org_1", "slug": "acme"})
        asyncio.run(_requests(app, session))
    namespace["reader"].force_flush()


if __name__ == "__main__":
    main(sys.argv[1])
