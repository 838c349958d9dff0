"""Findings of the adversarial review (SPEC §12, §8's parser rule), each with its fix proven:
CDN caches, the parser's depth, key rotation and the memo, the memo's byte bound."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from werkzeug.test import Client

from clerk_tinybird_middleware import ClerkTinybirdMiddleware, ClerkTinybirdWSGIMiddleware, Settings
from clerk_tinybird_middleware.core import keys as keys_module
from clerk_tinybird_middleware.engine import Engine
from clerk_tinybird_middleware.testing import FakeClerk
from flows import FakeClock, Stepper, answer, bearer_request, loopback
from flows import Request as FlowRequest
from leaks import summary
from support import bearer, client, state_app

CDN_HEADERS = {
    "Cache-Control": "public, max-age=600",
    "Surrogate-Control": "max-age=600",
    "CDN-Cache-Control": "max-age=600",
    "Cloudflare-CDN-Cache-Control": "max-age=600",
    "Vary": "Accept-Encoding",
}


async def _cdn_page(request: Request) -> Response:
    return PlainTextResponse("dashboard", headers=CDN_HEADERS)


def _cdn_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), *CDN_HEADERS.items()])
    return [b"dashboard"]


def _assert_no_shared_cache(headers: Any) -> None:
    assert headers["x-tinybird-token"]
    assert headers["cache-control"] == "private, no-store"
    assert headers["cdn-cache-control"] == "no-store"
    assert headers["surrogate-control"] == "no-store"
    assert "cloudflare-cdn-cache-control" not in headers
    assert headers["vary"] == "Accept-Encoding, Cookie, Authorization"


async def test_no_cdn_directive_of_the_handler_survives_next_to_a_token(
    fake_clerk: FakeClerk,
) -> None:
    settings = Settings(
        jwt_key=fake_clerk.public_key_pem,
        secret_key=fake_clerk.secret_key,
        clerk_api_url=fake_clerk.api_url,
    )
    token = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme"})
    asgi = ClerkTinybirdMiddleware(Starlette(routes=[Route("/", _cdn_page)]), settings)
    async with client(asgi) as http:
        _assert_no_shared_cache((await http.get("/", headers=bearer(token))).headers)
        signed_out = await http.get("/")
    assert signed_out.headers["cdn-cache-control"] == "max-age=600"  # no token: untouched
    wsgi = ClerkTinybirdWSGIMiddleware(_cdn_wsgi, settings)
    try:
        _assert_no_shared_cache(Client(wsgi).get("/", headers=bearer(token)).headers)
    finally:
        wsgi.close()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("segment", "where"),
    [
        (b"[" * 11_000, "header"),
        (b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "payload"),
        (b'{"exp": NaN}', "payload"),
        (b'{"exp": Infinity}', "payload"),
        (b'{"exp": 1e400}', "payload"),
        ('{"sub": "u"}'.encode("utf-16"), "payload"),
        (b"\xef\xbb\xbf{}", "header"),
    ],
    ids=["deep-list", "deep-object", "nan", "infinity", "overflow", "utf-16", "bom"],
)
async def test_hostile_json_is_token_invalid_with_no_traceback(
    fake_clerk: FakeClerk, segment: bytes, where: str, debug_logs: list[logging.LogRecord]
) -> None:
    valid = fake_clerk.session_token("u").split(".")
    parts = (
        [_b64(segment), valid[1], valid[2]]
        if where == "header"
        else [valid[0], _b64(segment), valid[2]]
    )
    app = state_app(jwt_key=fake_clerk.public_key_pem, secret_key=fake_clerk.secret_key)
    async with client(app) as http:
        response = await http.get("/", headers=bearer(".".join(parts)))
    assert response.status_code == 200
    assert response.json()["reason"] == "token-invalid"
    ours = [r for r in debug_logs if r.name.startswith("clerk_tinybird_middleware")]
    assert all(r.levelno <= logging.DEBUG and r.exc_info is None for r in ours), ours


def test_rotating_out_a_key_ends_its_memoized_sessions(fake_clerk: FakeClerk) -> None:
    """A memoized token with a far exp stays accepted only while its key is served: one JWKS
    reload after Clerk dropped the key, and the warm path refuses it."""
    clock = FakeClock()
    engine = Engine(
        Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url), clock=clock
    )
    stepper = Stepper(clock, http=loopback())
    old = bearer_request(fake_clerk.session_token("u", lifetime=86_400))
    assert answer(engine, stepper, old).auth.is_signed_in
    assert engine.warm(None, old.authorization, None) is not None  # memoized
    fake_clerk.rotate_key()  # the old key leaves the JWKS
    clock.advance(keys_module.FRESH_FOR + 1)  # the next request reloads the key set
    new = bearer_request(fake_clerk.session_token("v", lifetime=86_400))
    assert answer(engine, stepper, new).auth.is_signed_in
    assert fake_clerk.calls["jwks"] == 2
    assert engine.warm(None, old.authorization, None) is None  # the memo no longer answers
    assert answer(engine, stepper, old).auth.reason == "jwk-kid-mismatch"


def test_one_user_cannot_fill_the_memo_or_flush_others(
    request: pytest.FixtureRequest, fake_clerk: FakeClerk
) -> None:
    """4,095 distinct 16 KiB cookies carrying one valid token pin 4 entries, not 67 MiB, and
    every other user's warm entry stays."""
    clock = FakeClock()
    engine = Engine(Settings(jwt_key=fake_clerk.public_key_pem), clock=clock)
    stepper = Stepper(clock)
    others = [
        bearer_request(fake_clerk.session_token(f"user_{n}", lifetime=3600)) for n in range(50)
    ]
    for other in others:
        answer(engine, stepper, other)
    before = engine.memo.bytes
    token = fake_clerk.session_token("attacker", lifetime=3600)
    for n in range(4_095):
        padding = f"pad{n}=" + "x" * 16_000
        attack = FlowRequest({"cookie": f"{padding}; __session={token}"})
        assert answer(engine, stepper, attack).auth.is_signed_in
    grown = engine.memo.bytes - before
    assert grown < 4 * 17_000 + 8_000  # four credential variants and the token itself
    assert all(engine.warm(None, o.authorization, None) is not None for o in others)
    summary(request.config).add(
        "memo bounds",
        f"4,095 cookie variants of one token: memo +{grown / 1024:.0f} KiB "
        f"(bound {engine.memo.max_bytes // 2**20} MiB); 50 other users still warm",
    )


def test_a_user_keeps_at_most_eight_tokens(fake_clerk: FakeClerk) -> None:
    clock = FakeClock()
    engine = Engine(Settings(jwt_key=fake_clerk.public_key_pem), clock=clock)
    stepper = Stepper(clock)
    tokens = [fake_clerk.session_token("busy", lifetime=3600) for _ in range(20)]
    for token in tokens:
        answer(engine, stepper, bearer_request(token))
    held = [t for t in tokens if engine.memo.get(t) is not None]
    assert held == tokens[-8:]  # the oldest went first


def test_the_memo_byte_bound_evicts_least_recently_used(fake_clerk: FakeClerk) -> None:
    clock = FakeClock()
    engine = Engine(Settings(jwt_key=fake_clerk.public_key_pem, memo_max_mb=1), clock=clock)
    stepper = Stepper(clock)
    hot = bearer_request(fake_clerk.session_token("hot", lifetime=3600))
    answer(engine, stepper, hot)
    tokens = [fake_clerk.session_token(f"cold_{n}", lifetime=3600) for n in range(600)]
    for token in tokens:
        answer(engine, stepper, bearer_request(token))
        assert engine.warm(None, hot.authorization, None) is not None  # used: kept
    assert engine.memo.bytes <= 2**20
    assert engine.memo.get(tokens[0]) is None  # the least recently used went first
    assert engine.memo.get(tokens[-1]) is not None


def test_payload_json_is_strict_utf8() -> None:
    from clerk_tinybird_middleware.core.jwt import MalformedJWT, strict_json_object

    assert strict_json_object(json.dumps({"sub": "ü"}).encode()) == {"sub": "ü"}
    for raw in (b"\xff\xfe{\x00}\x00", b"\xef\xbb\xbf{}", b'{"a": NaN}', b"[" * 5000, b"\xc3("):
        with pytest.raises(MalformedJWT):
            strict_json_object(raw)
