"""Edge cases found in review: hard deadlines, races, cache-key inputs, odd configuration."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from clerk_tinybird_middleware import (
    ClerkSession,
    ClerkTinybirdMiddleware,
    ConfigurationError,
    LocalTokenSource,
    MemoryTokenCache,
    Settings,
    TinybirdToken,
)
from clerk_tinybird_middleware.fastapi import SessionDep
from clerk_tinybird_middleware.testing import FakeClerk
from clerk_tinybird_middleware.wsgi import ClerkTinybirdWSGIMiddleware
from constants import ADMIN_TOKEN as ADMIN
from support import bearer, client, jwt_claims, state_app


class Upstream:
    """A raw TCP server on loopback: ``drip`` answers one byte every 0.3 s, forever;
    ``slam`` accepts and closes at once. Counts connections."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            self.connections += 1
            if self.mode == "slam":
                conn.close()
            else:
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 1000:
                if self._stop.wait(0.3):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def drip() -> Iterator[Upstream]:
    with Upstream("drip") as upstream:
        yield upstream


def _wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(environ["clerk_tinybird.tinybird_token_error"]).encode()]


def test_wsgi_dripping_upstream_ends_within_budget(fake_clerk: FakeClerk, drip: Upstream) -> None:
    # httpx's timeouts are per read: only a deadline on the whole call stops a drip.
    app = ClerkTinybirdWSGIMiddleware(
        _wsgi_app,
        Settings(jwt_key=fake_clerk.public_key_pem, secret_key="sk_test_x", clerk_api_url=drip.url),
    )
    token = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme"})
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_AUTHORIZATION": f"Bearer {token}"}
    started = time.monotonic()
    body = b"".join(app(environ, lambda status, headers, exc_info=None: lambda data: None))
    elapsed = time.monotonic() - started
    app.close()
    assert body == b"clerk-unavailable"
    assert elapsed < 3 + 1


async def test_asgi_dripping_upstream_ends_within_budget(
    fake_clerk: FakeClerk, drip: Upstream
) -> None:
    app = state_app(
        jwt_key=fake_clerk.public_key_pem, secret_key="sk_test_x", clerk_api_url=drip.url
    )
    token = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme"})
    async with client(app) as http:
        started = time.monotonic()
        response = await http.get("/", headers=bearer(token))
        elapsed = time.monotonic() - started
    assert response.json()["token_error"] == "clerk-unavailable"
    assert elapsed < 3 + 1


async def test_unreachable_jwks_fails_fast_for_a_while(fake_clerk: FakeClerk) -> None:
    with Upstream("slam") as clerk_down:
        app = state_app(secret_key="sk_test_x", clerk_api_url=clerk_down.url)
        token = fake_clerk.session_token("u")
        async with client(app) as http:
            first = await http.get("/", headers=bearer(token))
            tried = clerk_down.connections
            rest = [await http.get("/", headers=bearer(token)) for _ in range(10)]
        assert first.json()["reason"] == "jwk-remote-failed-to-load"
        assert {r.json()["reason"] for r in rest} == {"jwk-remote-failed-to-load"}
        assert 1 <= tried <= 3
        assert clerk_down.connections == tried  # no new attempt while the pause runs


def test_memory_cache_reads_race_evictions_safely() -> None:
    cache = MemoryTokenCache(maxsize=50)
    token = TinybirdToken("a.b.c", expires_at=_in(600))
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            cache.set(f"k{i % 500}", token, 10)
            i += 1

    def read() -> None:
        i = 0
        while not stop.is_set():
            try:
                cache.get(f"k{i % 500}")
            except BaseException as exc:  # the race used to raise KeyError here
                errors.append(exc)
                return
            i += 1

    threads = [threading.Thread(target=f) for f in (write, write, read, read)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) <= 50


def _in(seconds: float) -> Any:
    from datetime import datetime, timedelta, timezone

    return datetime.now(timezone.utc) + timedelta(seconds=seconds)


async def test_a_demoted_admin_does_not_keep_the_admins_token(fake_clerk: FakeClerk) -> None:
    source = LocalTokenSource(
        "ws",
        ADMIN,
        [
            {
                "type": "PIPES:READ",
                "resource": "p",
                "fixed_params": {"org": "{{org.id}}", "role": "{{org.role}}"},
            }
        ],
    )
    app = state_app(jwt_key=fake_clerk.public_key_pem, token_source=source)
    admin = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme", "role": "admin"})
    member = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme", "role": "member"})
    async with client(app) as http:
        await http.get("/", headers=bearer(admin))
        response = await http.get("/", headers=bearer(member))
    fixed = jwt_claims(response.headers["x-tinybird-token"])["scopes"][0]["fixed_params"]
    assert fixed == {"org": "org_1", "role": "org:member"}


async def test_scope_callables_with_different_output_never_share_tokens(
    fake_clerk: FakeClerk,
) -> None:
    shared = MemoryTokenCache()

    def source(resource: str) -> LocalTokenSource:
        return LocalTokenSource(
            "ws",
            ADMIN,
            lambda s: [
                {"type": "PIPES:READ", "resource": resource, "fixed_params": {"org": s.org_id}}
            ],
        )

    token = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme"})
    seen = []
    for resource in ("public_stats", "admin_billing"):
        app = state_app(
            jwt_key=fake_clerk.public_key_pem, token_source=source(resource), token_cache=shared
        )
        async with client(app) as http:
            response = await http.get("/", headers=bearer(token))
        seen.append(jwt_claims(response.headers["x-tinybird-token"])["scopes"][0]["resource"])
    assert seen == ["public_stats", "admin_billing"]


async def test_scope_callable_returning_null_tenant_is_tenant_missing(
    fake_clerk: FakeClerk,
) -> None:
    source = LocalTokenSource(
        "ws",
        ADMIN,
        lambda s: [{"type": "PIPES:READ", "resource": "p", "fixed_params": {"org": s.org_id}}],
    )
    app = state_app(jwt_key=fake_clerk.public_key_pem, token_source=source)
    async with client(app) as http:
        response = await http.get("/", headers=bearer(fake_clerk.session_token("u")))
    assert response.json()["token_error"] == "tenant-missing"


def _anonymous(fixed: dict[str, Any], lifetime: int) -> str:
    claims = {
        "workspace_id": "ws",
        "name": "anonymous",
        "exp": int(time.time()) + lifetime,
        "scopes": [{"type": "PIPES:READ", "resource": "public", "fixed_params": fixed}],
    }
    return jwt.encode(claims, ADMIN, algorithm="HS256")


@pytest.mark.parametrize(
    "value",
    [_anonymous({"org": None}, 600), "p.token with spaces", "p.tøken"],
    ids=["null-tenant", "spaces", "non-ascii"],
)
def test_bad_anonymous_tokens_fail_at_construction(fake_clerk: FakeClerk, value: str) -> None:
    with pytest.raises(ConfigurationError, match="TINYBIRD_ANONYMOUS_TOKEN"):
        ClerkTinybirdMiddleware(
            FastAPI(), Settings(jwt_key=fake_clerk.public_key_pem, anonymous_token=value)
        )


async def test_expired_anonymous_token_is_not_handed_out(fake_clerk: FakeClerk) -> None:
    live = state_app(jwt_key=fake_clerk.public_key_pem, anonymous_token=_anonymous({}, 600))
    dead = state_app(jwt_key=fake_clerk.public_key_pem, anonymous_token=_anonymous({}, -10))
    async with client(live) as a, client(dead) as b:
        assert "x-tinybird-token" in (await a.get("/")).headers
        assert "x-tinybird-token" not in (await b.get("/")).headers


async def test_fastapi_dependency_on_excluded_path_is_401_not_500(fake_clerk: FakeClerk) -> None:
    app = FastAPI()

    @app.get("/health/me")
    async def me(session: SessionDep) -> dict[str, str]:
        return {"user": session.user_id}  # pragma: no cover - never reached

    app.add_middleware(
        ClerkTinybirdMiddleware, jwt_key=fake_clerk.public_key_pem, exclude_paths=("/health",)
    )
    token = fake_clerk.session_token("u")
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        response = await http.get("/health/me", headers=bearer(token))
    assert response.status_code == 401


def test_cache_key_distinguishes_role_and_slug() -> None:
    from clerk_tinybird_middleware.core.tokens import cache_key

    base = ClerkSession("u", "s", "org_1", "acme", "org:admin")
    variants = [
        base,
        ClerkSession("u", "s", "org_1", "acme", "org:member"),
        ClerkSession("u", "s", "org_1", "acme-renamed", "org:admin"),
        ClerkSession("u", "s2", "org_1", "acme", "org:admin", actor={"sub": "user_admin"}),
    ]
    assert len({cache_key("ns", s) for s in variants}) == len(variants)
    assert cache_key("ns", base) == cache_key(
        "ns", ClerkSession("u", "other", "org_1", "acme", "org:admin")
    )
