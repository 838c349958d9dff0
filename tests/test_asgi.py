"""The ASGI middleware's plumbing: routing, 401s, websockets, lifespan, streaming, headers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from clerk_tinybird_middleware import ClerkTinybirdMiddleware
from clerk_tinybird_middleware.testing import FakeClerk
from support import bearer, client, state_app


def settings(fake: FakeClerk, **extra: Any) -> dict[str, Any]:
    return {
        "jwt_key": fake.public_key_pem,
        "secret_key": fake.secret_key,
        "clerk_api_url": fake.api_url,
        **extra,
    }


ROUTING = [
    ("GET", "/health", False),
    ("GET", "/health/live", False),
    ("GET", "/healthz", True),
    ("GET", "/api/x", True),
    ("OPTIONS", "/api/x", True),  # not a CORS preflight: authenticated like GET (SPEC §12)
    ("PREFLIGHT", "/api/x", False),
    ("GET", "/static/app.js", False),
]


@pytest.mark.parametrize(
    ("method", "path", "authenticated"),
    ROUTING,
    ids=[f"{m} {p}" for m, p, _ in ROUTING],
)
async def test_exclusions_and_options_pass_untouched(
    fake_clerk: FakeClerk, method: str, path: str, authenticated: bool
) -> None:
    app = state_app(
        **settings(fake_clerk, exclude_paths=("/health", "/static/"), require_auth=True)
    )
    preflight = {"origin": "https://app.example", "access-control-request-method": "GET"}
    async with client(app) as http:
        if method == "PREFLIGHT":
            response = await http.request("OPTIONS", path, headers=preflight)
        else:
            response = await http.request(method, path)
    if authenticated:
        assert response.status_code == 401
    else:
        assert response.status_code == 200
        assert response.json()["status"] is None  # no state set at all


@pytest.mark.parametrize(
    ("headers", "reason", "challenge"),
    [
        ({}, "session-token-missing", "Bearer"),
        ({"authorization": "Bearer a.b.c"}, "token-invalid", 'Bearer error="invalid_token"'),
        ({"cookie": "__client_uat=0"}, "session-token-and-uat-missing", "Bearer"),
    ],
    ids=["missing", "rejected", "signed-out-uat"],
)
async def test_require_auth_401(
    fake_clerk: FakeClerk, headers: dict[str, str], reason: str, challenge: str
) -> None:
    app = state_app(**settings(fake_clerk, require_auth=True))
    async with client(app) as http:
        response = await http.get("/private", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["error"] == "unauthenticated"
    assert body["reason"] == reason
    assert body["message"]
    assert "a.b.c" not in response.text


async def test_require_auth_lets_signed_in_through(fake_clerk: FakeClerk) -> None:
    app = state_app(**settings(fake_clerk, require_auth=True))
    token = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme"})
    async with client(app) as http:
        response = await http.get("/private", headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["user"] == "u"


async def _ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    auth = websocket.state.clerk_auth
    await websocket.send_json(
        {"status": auth.status, "token": websocket.state.tinybird_token is not None}
    )
    await websocket.close()


def ws_app(fake: FakeClerk, **extra: Any) -> Starlette:
    app = Starlette(routes=[WebSocketRoute("/ws", _ws_endpoint)])
    app.add_middleware(ClerkTinybirdMiddleware, **settings(fake, **extra))
    return app


def test_websocket_is_authenticated(fake_clerk: FakeClerk) -> None:
    token = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme"})
    with (
        TestClient(ws_app(fake_clerk)) as http,
        http.websocket_connect("/ws", headers=bearer(token)) as ws,
    ):
        assert ws.receive_json() == {"status": "signed-in", "token": True}


def test_websocket_closed_1008_when_required(fake_clerk: FakeClerk) -> None:
    with (
        TestClient(ws_app(fake_clerk, require_auth=True)) as http,
        pytest.raises(WebSocketDisconnect) as closed,
        http.websocket_connect("/ws"),
    ):
        pass  # pragma: no cover - the handshake is refused
    assert closed.value.code == 1008


def test_lifespan_passes_through(fake_clerk: FakeClerk) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/", lambda r: PlainTextResponse("ok"))], lifespan=lifespan)
    app.add_middleware(ClerkTinybirdMiddleware, **settings(fake_clerk))
    with TestClient(app) as http:
        assert http.get("/").status_code == 200
    assert events == ["startup", "shutdown"]


async def test_streaming_is_not_buffered(fake_clerk: FakeClerk) -> None:
    delivered: list[Message] = []
    gate = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"first"
        await gate.wait()  # only released once the first chunk reached the server
        yield b"second"

    inner = StreamingResponse(chunks(), media_type="text/plain")
    mw = ClerkTinybirdMiddleware(inner, **settings(fake_clerk))
    token = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme"})
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "query_string": b"",
    }

    async def receive() -> Message:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}  # pragma: no cover

    async def send(message: Message) -> None:
        delivered.append(message)
        if message.get("body") == b"first":
            gate.set()

    await asyncio.wait_for(mw(scope, receive, send), 10)
    start = delivered[0]
    names = {name for name, _ in start["headers"]}
    assert b"x-tinybird-token" in names
    assert [m.get("body") for m in delivered[1:] if m.get("body")] == [b"first", b"second"]


async def test_vary_merged_and_cache_control_replaced(fake_clerk: FakeClerk) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"vary", b"Accept-Encoding, cookie"),
                    (b"cache-control", b"public, max-age=60"),
                    (b"x-tinybird-token", b"spoofed-by-handler"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})

    mw = ClerkTinybirdMiddleware(app, **settings(fake_clerk))
    token = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme"})
    async with client(mw) as http:
        response = await http.get("/", headers=bearer(token))
    assert response.headers["vary"] == "Accept-Encoding, cookie, Authorization"
    assert response.headers.get_list("cache-control") == ["private, no-store"]
    assert response.headers.get_list("x-tinybird-token") != ["spoofed-by-handler"]
    assert len(response.headers.get_list("x-tinybird-token")) == 1


def test_testclient_without_context_manager(fake_clerk: FakeClerk) -> None:
    # Starlette's TestClient runs each request on a new event loop: the middleware's upstream
    # clients and in-flight fetches must not be bound to a loop that is gone.
    app = state_app(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url)
    http = TestClient(app)
    for i in range(3):
        token = fake_clerk.session_token(f"u{i}", org={"id": "org_1", "slug": "acme"})
        body = http.get("/", headers=bearer(token)).json()
        assert body["status"] == "signed-in"
        assert body["token"] is True


def test_middleware_repr_has_no_secrets(fake_clerk: FakeClerk) -> None:
    mw = ClerkTinybirdMiddleware(state_app(), **settings(fake_clerk))
    text = repr(mw) + repr(mw.engine.settings)
    assert fake_clerk.secret_key not in text
    assert json.dumps(fake_clerk.public_key_pem)[1:20] not in text
