"""The Django middleware and decorators, with Django's own test clients (``Client`` for the
sync path, ``AsyncClient`` for the async one, no wrapping), against FakeClerk on loopback."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from django.http import HttpResponse
from django.test import AsyncClient, AsyncRequestFactory, Client, RequestFactory, override_settings

from clerk_tinybird_middleware import ConfigurationError, LocalTokenSource, Settings
from clerk_tinybird_middleware.django import ClerkTinybirdMiddleware
from clerk_tinybird_middleware.testing import FakeClerk
from constants import ADMIN_TOKEN, ANONYMOUS_TOKEN, ORG, SCOPES
from django_support import STATE_NAMES, directives_for, handshake_token, overrides, pk_live

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("sync", "async")
MEMBER = {"id": "org_m", "slug": "members", "role": "member", "permissions": []}

PREFLIGHT = {"Origin": "http://a.test", "Access-Control-Request-Method": "GET"}

Get = Callable[..., Awaitable[Any]]


pytestmark = pytest.mark.usefixtures("clean_environment")


def client_get(kind: str) -> Get:
    """A GET through a fresh ``Client`` (run off the event loop, as a sync test would) or
    ``AsyncClient``; the client is made on first use, so settings in force then apply."""
    made: dict[str, Any] = {}

    async def get(path: str, **kwargs: Any) -> Any:
        if kind == "sync":
            client = made.setdefault("client", Client())
            return await asyncio.to_thread(client.get, path, **kwargs)
        client = made.setdefault("client", AsyncClient())
        return await client.get(path, **kwargs)

    return get


def bearer(token: str) -> dict[str, Any]:
    return {"headers": {"Authorization": f"Bearer {token}"}}


def prefix(kind: str) -> str:
    return "/async" if kind == "async" else ""


# -- what a request sees -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_signed_in_request_gets_state_and_token_headers(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    get = client_get(kind)
    response = await get(
        f"{prefix(kind)}/state", **bearer(fake_clerk.session_token("user_1", org=ORG))
    )
    assert response.status_code == 200
    body = response.json()
    assert body["has"] == dict.fromkeys(STATE_NAMES, True)
    assert (body["status"], body["user"], body["org"], body["error"]) == (
        "signed-in",
        "user_1",
        "org_1",
        None,
    )
    assert body["token"] == response.headers["x-tinybird-token"]
    assert int(response.headers["x-tinybird-token-expires-at"]) > 0
    # The view's cache directives are replaced, its Vary kept and extended.
    assert response.headers["Cache-Control"] == "private, no-store"
    assert response.headers["CDN-Cache-Control"] == "no-store"
    assert response.headers["Surrogate-Control"] == "no-store"
    assert response.headers["Vary"] == "Accept-Encoding, Cookie, Authorization"
    assert response.headers["Content-Type"] == "application/json"
    assert fake_clerk.calls["template"] == 1


@pytest.mark.parametrize("kind", KINDS)
async def test_signed_out_request_proceeds_without_token_header(
    kind: str, configured: None
) -> None:
    response = await client_get(kind)(f"{prefix(kind)}/state")
    assert response.status_code == 200
    body = response.json()
    assert body["has"] == dict.fromkeys(STATE_NAMES, True)
    assert (body["status"], body["reason"], body["token"]) == (
        "signed-out",
        "session-token-missing",
        None,
    )
    assert "x-tinybird-token" not in response.headers
    assert response.headers["Cache-Control"] == "public, max-age=60"  # left alone


@pytest.mark.parametrize("kind", KINDS)
async def test_session_cookie_is_read(kind: str, fake_clerk: FakeClerk, configured: None) -> None:
    token = fake_clerk.session_token("user_c", org=ORG)
    response = await client_get(kind)(
        f"{prefix(kind)}/state", headers={"Cookie": f"theme=dark; __session={token}"}
    )
    assert response.json()["user"] == "user_c"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("method", "path", "headers", "extra", "processed"),
    [
        ("GET", "/state", {}, {}, True),
        (
            "OPTIONS",
            "/state",
            {"Origin": "http://a", "Access-Control-Request-Method": "GET"},
            {},
            False,
        ),
        ("OPTIONS", "/state", {}, {}, False),
        ("GET", "/health/state", {}, {"CLERK_TINYBIRD_EXCLUDE_PATHS": "/health"}, False),
        ("GET", "/state", {}, {"CLERK_TINYBIRD_EXCLUDE_PATHS": "/health"}, True),
        ("OPTIONS", "/state", {}, {"CLERK_TINYBIRD_REQUIRE_AUTH": True}, True),
    ],
    ids=["get", "preflight", "options", "excluded", "not-excluded", "options-require-auth"],
)
async def test_preflights_and_excluded_paths_pass_through_untouched(
    kind: str,
    fake_clerk: FakeClerk,
    configured: None,
    method: str,
    path: str,
    headers: dict[str, str],
    extra: dict[str, Any],
    processed: bool,
) -> None:
    token = fake_clerk.session_token("user_1", org=ORG)
    with override_settings(**extra):
        client = Client() if kind == "sync" else AsyncClient()
        call = client.generic
        kwargs = {"headers": {**headers, "Authorization": f"Bearer {token}"}}
        if kind == "sync":
            response = await asyncio.to_thread(call, method, path, **kwargs)
        else:
            response = await call(method, path, **kwargs)
    assert response.status_code == 200
    body = response.json()
    assert body["has"] == dict.fromkeys(STATE_NAMES, processed)
    assert body["user"] == ("user_1" if processed else None)
    assert ("x-tinybird-token" in response.headers) is processed


@pytest.mark.parametrize("kind", KINDS)
async def test_require_auth_answers_401_without_calling_the_view(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    with override_settings(CLERK_TINYBIRD_REQUIRE_AUTH="true"):
        get = client_get(kind)
        missing = await get(f"{prefix(kind)}/state")
        expired = await get(
            f"{prefix(kind)}/state",
            **bearer(fake_clerk.session_token("user_1", lifetime=-120)),
        )
        signed_in = await get(
            f"{prefix(kind)}/state", **bearer(fake_clerk.session_token("user_1", org=ORG))
        )
    assert missing.status_code == 401
    assert missing.headers["Content-Type"] == "application/json"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert missing.json() == {
        "error": "unauthenticated",
        "reason": "session-token-missing",
        "message": missing.json()["message"],
    }
    assert "has" not in missing.json()  # the view did not run
    assert expired.status_code == 401
    assert expired.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert expired.json()["reason"] == "token-expired"
    assert signed_in.status_code == 200
    assert signed_in.json()["user"] == "user_1"


@pytest.mark.parametrize("kind", KINDS)
async def test_streaming_body_is_streamed_with_token_headers(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    response = await client_get(kind)(
        f"{prefix(kind)}/stream", **bearer(fake_clerk.session_token("user_1", org=ORG))
    )
    assert response.streaming
    if kind == "sync":
        content = b"".join(response.streaming_content)
    else:
        content = b"".join([chunk async for chunk in response.streaming_content])
    assert content == b"chunk-0;chunk-1;chunk-2;"
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "x-tinybird-token" in response.headers


@pytest.mark.parametrize("kind", KINDS)
async def test_repeat_requests_cost_no_upstream_call(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    get = client_get(kind)
    token = fake_clerk.session_token("user_1", org=ORG)
    seen = {(await get(f"{prefix(kind)}/state", **bearer(token))).json()["token"] for _ in range(5)}
    assert len(seen) == 1
    assert (fake_clerk.calls["jwks"], fake_clerk.calls["template"]) == (1, 1)


# -- decorators ----------------------------------------------------------------------------------

#: (view, who) → (status, error, reason). "member": an org member without the permission.
DECISIONS: dict[tuple[str, str], tuple[int, str | None, str | None]] = {
    ("me", "out"): (401, "unauthenticated", "session-token-missing"),
    ("me", "noorg"): (200, None, None),
    ("me", "member"): (200, None, None),
    ("me", "admin"): (200, None, None),
    ("admin", "out"): (401, "unauthenticated", "session-token-missing"),
    ("admin", "noorg"): (403, "forbidden", "no-active-org"),
    ("admin", "member"): (403, "forbidden", "missing-role"),
    ("admin", "admin"): (200, None, None),
    ("reports", "out"): (401, "unauthenticated", "session-token-missing"),
    ("reports", "noorg"): (403, "forbidden", "no-active-org"),
    ("reports", "member"): (403, "forbidden", "missing-permission"),
    ("reports", "admin"): (200, None, None),
    ("org", "out"): (401, "unauthenticated", "session-token-missing"),
    ("org", "noorg"): (403, "forbidden", "no-active-org"),
    ("org", "member"): (200, None, None),
    ("org", "admin"): (200, None, None),
    ("pipe", "out"): (401, "unauthenticated", "session-token-missing"),
    ("pipe", "noorg"): (503, "tinybird_token_unavailable", "tenant-missing"),
    ("pipe", "member"): (200, None, None),
    ("pipe", "admin"): (200, None, None),
}
VIEWS = {
    "function": ("", ("me", "admin", "reports", "org", "pipe")),
    "async-function": ("/async", ("me", "admin", "reports", "org", "pipe")),
    "class-based": ("/cbv", ("me", "admin", "pipe")),
    "async-class-based": ("/cbv/async", ("me", "admin", "pipe")),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("views", list(VIEWS))
async def test_decorators_answer_like_flask(
    kind: str, views: str, fake_clerk: FakeClerk, configured: None
) -> None:
    tokens = {
        "noorg": fake_clerk.session_token("user_noorg"),
        "member": fake_clerk.session_token("user_member", org=MEMBER),
        "admin": fake_clerk.session_token("user_admin", org=ORG),
    }
    base, names = VIEWS[views]
    get = client_get(kind)
    for name in names:
        for who in ("out", "noorg", "member", "admin"):
            kwargs = bearer(tokens[who]) if who in tokens else {}
            response = await get(f"{base}/{name}", **kwargs)
            status, error, reason = DECISIONS[(name, who)]
            where = f"{base}/{name} as {who}"
            assert response.status_code == status, where
            body = response.json()
            assert response.headers["Content-Type"] == "application/json", where
            if status == 200:
                assert body == {"ok": True, "user": f"user_{who}"}, where
                continue
            assert (body["error"], body["reason"]) == (error, reason), where
            assert body["message"], where
            assert "no-store" in response.headers["Cache-Control"], where
            if status == 401:
                assert response.headers["WWW-Authenticate"] == "Bearer", where


@pytest.mark.parametrize("kind", KINDS)
async def test_tinybird_token_unavailable_carries_retry_after(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    fake_clerk.inject("template", status=429, retry_after=30)
    get = client_get(kind)
    token = fake_clerk.session_token("user_1", org=ORG)
    state = (await get(f"{prefix(kind)}/state", **bearer(token))).json()
    assert (state["error"], state["retry_after"]) == ("clerk-rate-limited", 30)
    response = await get(f"{prefix(kind)}/pipe", **bearer(token))
    assert response.status_code == 503
    assert response.json()["reason"] == "clerk-rate-limited"
    assert response.headers["Retry-After"] == "30"
    assert fake_clerk.calls["template"] == 1  # the second request waited out Retry-After


@pytest.mark.parametrize("kind", KINDS)
async def test_anonymous_token_passes_require_tinybird_token(kind: str, configured: None) -> None:
    with override_settings(TINYBIRD_ANONYMOUS_TOKEN=ANONYMOUS_TOKEN):
        get = client_get(kind)
        pipe = await get(f"{prefix(kind)}/pipe")
        state = await get(f"{prefix(kind)}/state")
    assert pipe.status_code == 200
    assert pipe.json() == {"ok": True, "user": None}
    assert state.json()["anonymous"] is True
    assert state.headers["x-tinybird-token"] == ANONYMOUS_TOKEN


def test_decorators_refuse_what_is_not_a_request() -> None:
    from clerk_tinybird_middleware.django import require_org, require_session

    class Plain:
        @require_session
        def get(self, request: Any) -> None: ...

    with pytest.raises(TypeError, match="method_decorator"):
        Plain().get(RequestFactory().get("/"))
    with pytest.raises(TypeError, match="must be called"):
        require_org(lambda request: None)  # type: ignore[arg-type]


def test_guarded_view_without_the_middleware_is_401_with_a_warning(
    configured: None, caplog: pytest.LogCaptureFixture
) -> None:
    with override_settings(MIDDLEWARE=[]):
        response = Client().get("/me")
    assert response.status_code == 401
    assert response.json()["reason"] == "session-token-missing"
    assert "without the middleware" in caplog.text


# -- the handshake (SPEC §9) ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_stale_page_load_is_answered_with_the_handshake(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    stale = fake_clerk.session_token("user_1", org=ORG, lifetime=-120)
    # AsyncClient puts a latin-1 decoded path in the scope (real ASGI servers do not, and
    # send raw_path: see test_django_servers): non-ASCII only through the WSGI client here.
    path, quoted = (
        ("/caf%C3%A9/%E6%97%A5/page", "%2Fcaf%25C3%25A9%2F%25E6%2597%25A5%2Fpage")
        if kind == "sync"
        else ("/a%20b/page", "%2Fa%2520b%2Fpage")
    )
    with override_settings(CLERK_PUBLISHABLE_KEY=fake_clerk.publishable_key):
        response = await client_get(kind)(
            f"{path}?x=1",
            headers={
                "Cookie": f"__session={stale}; __client_uat=1; __clerk_db_jwt=dvb_1",
                "Accept": "text/html,application/xhtml+xml",
                "Sec-Fetch-Dest": "document",
            },
        )
    assert response.status_code == 307
    location = response.headers["Location"]
    assert location.startswith(f"https://{fake_clerk.frontend_api}/v1/client/handshake?")
    assert f"redirect_url=http%3A%2F%2Ftestserver{quoted}%3Fx%3D1&" in location
    assert "__clerk_hs_reason=session-token-expired-refresh-non-eligible-no-refresh-cookie" in (
        location
    )
    assert response.headers["Cache-Control"] == "no-store"
    assert "Content-Type" not in response.headers
    assert response.cookies["__clerk_redirect_count"].value == "1"
    assert response.content == b""


@pytest.mark.parametrize("kind", KINDS)
async def test_production_handshake_resolution_sets_every_cookie_and_signs_in(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    directives = directives_for(fake_clerk)
    token = handshake_token(fake_clerk, directives)
    with override_settings(CLERK_PUBLISHABLE_KEY=pk_live(fake_clerk)):
        response = await client_get(kind)(
            f"/raw?__clerk_handshake={token}", headers={"Accept": "text/html"}
        )
    assert response.status_code == 200
    assert response.json()["user"] == "user_hs"
    lines = sorted(c.output(header="").strip() for c in response.cookies.values())
    assert lines == sorted([*directives, "app_cookie=1; Path=/"])
    assert response.cookies["__session"].value == directives[0].split(";")[0].split("=", 1)[1]
    assert "x-tinybird-token" in response.headers


@pytest.mark.parametrize("kind", KINDS)
async def test_development_handshake_resolution_redirects_with_the_cookies(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    directives = directives_for(fake_clerk)
    token = handshake_token(fake_clerk, directives)
    with override_settings(CLERK_PUBLISHABLE_KEY=fake_clerk.publishable_key):
        response = await client_get(kind)(
            f"/page?a=1&__clerk_handshake={token}", headers={"Accept": "text/html"}
        )
    assert response.status_code == 307
    assert response.headers["Location"] == "http://testserver/page?a=1"
    lines = sorted(c.output(header="").strip() for c in response.cookies.values())
    assert lines == sorted(directives)


# -- configuration -------------------------------------------------------------------------------


def test_django_settings_win_over_the_environment(
    fake_clerk: FakeClerk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", fake_clerk.secret_key)
    monkeypatch.setenv("CLERK_API_URL", fake_clerk.api_url)
    monkeypatch.setenv("CLERK_TINYBIRD_TOKEN_HEADER", "x-from-env")
    token = fake_clerk.session_token("user_1", org=ORG)
    with override_settings(**overrides()):  # keys from the environment only
        from_env = Client().get("/state", **bearer(token))
        with override_settings(CLERK_TINYBIRD_TOKEN_HEADER="x-from-django"):
            from_django = Client().get("/state", **bearer(token))
        with override_settings(CLERK_TINYBIRD_TOKEN_HEADER=None):  # None: unset
            unset = Client().get("/state", **bearer(token))
    assert "x-from-env" in from_env.headers
    assert "x-from-django" in from_django.headers
    assert "x-from-env" not in from_django.headers
    assert "x-from-env" in unset.headers


def test_settings_are_read_when_the_middleware_is_built(
    fake_clerk: FakeClerk, configured: None
) -> None:
    before = Client()
    assert before.get("/state").status_code == 200  # built now, require_auth off
    with override_settings(CLERK_TINYBIRD_REQUIRE_AUTH=True, CLERK_TINYBIRD_EXCLUDE_PATHS=["/x"]):
        fresh = Client()
        assert fresh.get("/state").status_code == 401
        assert before.get("/state").status_code == 200  # read once, when built


@pytest.mark.parametrize("kind", KINDS)
async def test_bad_configuration_raises_when_built_and_is_logged(
    kind: str, configured: None, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        override_settings(CLERK_TINYBIRD_REFRESH_MARGIN="soon"),
        pytest.raises(ConfigurationError, match="CLERK_TINYBIRD_REFRESH_MARGIN"),
    ):
        await client_get(kind)("/state")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any("CLERK_TINYBIRD_REFRESH_MARGIN" in r.getMessage() for r in errors)


def test_token_source_and_cache_from_django_settings(
    fake_clerk: FakeClerk, configured: None
) -> None:
    from clerk_tinybird_middleware import MemoryTokenCache

    source = LocalTokenSource("ws_local", ADMIN_TOKEN, SCOPES)
    cache = MemoryTokenCache()
    token = fake_clerk.session_token("user_1", org=ORG)
    with override_settings(CLERK_TINYBIRD_TOKEN_SOURCE=source, CLERK_TINYBIRD_TOKEN_CACHE=cache):
        response = Client().get("/state", **bearer(token))
    jwt = response.headers["x-tinybird-token"]
    claims = pyjwt.decode(jwt, ADMIN_TOKEN, algorithms=["HS256"])
    assert claims["workspace_id"] == "ws_local"
    assert claims["scopes"][0]["fixed_params"] == {"org": "acme", "user": "user_1"}
    assert fake_clerk.calls["template"] == 0


def test_configured_block_overrides_django_settings(
    fake_clerk: FakeClerk, configured: None
) -> None:
    settings = Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url)
    with ClerkTinybirdMiddleware.configured(settings, require_auth=True):
        inside = Client()
        assert inside.get("/state").status_code == 401  # built inside the block
    assert inside.get("/state").status_code == 401
    assert Client().get("/state").status_code == 200  # Django's settings again


# -- the class itself ----------------------------------------------------------------------------


async def test_one_class_sync_and_async_capable(fake_clerk: FakeClerk, configured: None) -> None:
    from asgiref.sync import iscoroutinefunction

    assert ClerkTinybirdMiddleware.sync_capable is True
    assert ClerkTinybirdMiddleware.async_capable is True

    def view(request: Any) -> HttpResponse:
        return HttpResponse(request.clerk_session.user_id)

    async def async_view(request: Any) -> HttpResponse:
        return HttpResponse(request.clerk_session.user_id)

    token = fake_clerk.session_token("user_1", org=ORG)
    sync = ClerkTinybirdMiddleware(view)
    assert not iscoroutinefunction(sync)
    request = RequestFactory().get("/", headers={"Authorization": f"Bearer {token}"})
    response = await asyncio.to_thread(sync, request)
    assert response.content == b"user_1"
    sync.close()

    middleware = ClerkTinybirdMiddleware(async_view)
    assert iscoroutinefunction(middleware)
    arequest = AsyncRequestFactory().get("/", headers={"Authorization": f"Bearer {token}"})
    response = await middleware(arequest)
    assert response.content == b"user_1"
    assert "x-tinybird-token" in response.headers
    await middleware.aclose()
    assert "sync" in repr(sync)
    assert fake_clerk.secret_key not in repr(middleware)


async def test_sync_mode_under_asgi_when_a_later_middleware_is_sync_only(
    fake_clerk: FakeClerk, configured: None
) -> None:
    middleware = [*overrides()["MIDDLEWARE"], "django_support.SyncOnlyMiddleware"]
    token = fake_clerk.session_token("user_1", org=ORG)
    with override_settings(MIDDLEWARE=middleware):
        response = await AsyncClient().get("/async/state", headers={"Cookie": f"__session={token}"})
    assert response.headers["X-Sync-Only"] == "1"
    assert response.json()["user"] == "user_1"  # the scope's cookies, read in sync mode too
    assert "x-tinybird-token" in response.headers


def test_importing_the_module_never_needs_drf() -> None:
    script = (
        "import sys; sys.modules['rest_framework'] = None\n"
        "import clerk_tinybird_middleware.django as d\n"
        "print(d.ClerkTinybirdMiddleware.__name__)\n"
        "try:\n"
        "    d.IsSignedIn\n"
        "except ImportError as e:\n"
        "    print('ImportError:', e)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "ClerkTinybirdMiddleware",
        "ImportError: clerk_tinybird_middleware.django.IsSignedIn needs Django REST framework:"
        " pip install djangorestframework",
    ]
