"""The Flask extension and decorators: Flask's test client and a real threaded WSGI server on
127.0.0.1, with FakeClerk (and FakeTinybird for the example app)."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from flask import Flask, Response, g
from flask.testing import FlaskClient

from clerk_tinybird_middleware import (
    AuthResult,
    ClerkSession,
    ClerkTinybirdWSGIMiddleware,
    ConfigurationError,
    Settings,
)
from clerk_tinybird_middleware.flask import (
    ClerkTinybird,
    require_org,
    require_session,
    require_tinybird_token,
    settings_from_config,
)
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from clerk_tinybird_middleware.testing._server import serve_wsgi

ROOT = Path(__file__).resolve().parent.parent
G_NAMES = ("clerk_auth", "clerk_session", "tinybird_token", "tinybird_token_error")
ENV_NAMES = tuple(Settings.env_name(f.name) for f in dataclasses.fields(Settings))


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def _state() -> Response:
    auth = g.clerk_auth
    session = g.clerk_session
    token = g.tinybird_token
    response = Response(
        json.dumps(
            {
                "has": {name: hasattr(g, name) for name in G_NAMES},
                "status": auth.status if auth else None,
                "reason": auth.reason if auth else None,
                "user": session.user_id if session else None,
                "org": session.org_id if session else None,
                "token": token.jwt if token else None,
                "error": g.tinybird_token_error,
            }
        ),
        mimetype="application/json",
    )
    response.headers["Cache-Control"] = "public, max-age=60"
    response.headers["Vary"] = "Accept-Encoding"
    return response


def _ok() -> dict[str, Any]:
    return {"ok": True, "user": g.clerk_session.user_id if g.clerk_session else None}


async def _ok_async() -> dict[str, Any]:
    await asyncio.sleep(0)
    return _ok()


def add_routes(app: Flask) -> None:
    app.add_url_rule("/state", "state", _state, methods=["GET", "POST", "OPTIONS"])
    app.add_url_rule("/health/state", "health", _state)
    app.add_url_rule("/me", "me", require_session(_ok))
    app.add_url_rule("/admin", "admin", require_org(role="admin")(_ok))
    app.add_url_rule("/reports", "reports", require_org(permission="org:reports:read")(_ok))
    app.add_url_rule("/org", "org", require_org()(_ok))
    app.add_url_rule("/pipe", "pipe", require_tinybird_token(_ok))
    app.add_url_rule("/async/me", "async_me", require_session(_ok_async))
    app.add_url_rule("/async/admin", "async_admin", require_org(role="admin")(_ok_async))
    app.add_url_rule("/async/pipe", "async_pipe", require_tinybird_token(_ok_async))


MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(fake_clerk: FakeClerk) -> Iterator[MakeApp]:
    apps: list[Flask] = []

    def build(config: dict[str, Any] | None = None, **extension: Any) -> Flask:
        app = Flask(__name__)
        app.config["CLERK_SECRET_KEY"] = fake_clerk.secret_key
        app.config["CLERK_API_URL"] = fake_clerk.api_url
        app.config.update(config or {})
        ClerkTinybird(app, **extension)
        add_routes(app)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["clerk_tinybird"].close()


@pytest.fixture
def client(make_app: MakeApp) -> FlaskClient:
    return make_app().test_client()


def _tokens(fake_clerk: FakeClerk) -> dict[str, str | None]:
    reader = {
        "id": "org_r",
        "slug": "readers",
        "role": "member",
        "permissions": ["org:reports:read"],
    }
    return {
        "out": None,
        "bad": "not.a.jwt",
        "member": fake_clerk.session_token("user_m", org={"id": "org_1", "slug": "acme"}),
        "admin": fake_clerk.session_token(
            "user_a", org={"id": "org_1", "slug": "acme", "role": "admin"}
        ),
        "v1-admin": fake_clerk.session_token(
            "user_v1", org={"id": "org_1", "slug": "acme", "role": "admin"}, version=1
        ),
        "reader": fake_clerk.session_token("user_r", org=reader),
        "no-org": fake_clerk.session_token("user_n"),
    }


def _auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


# -- g ------------------------------------------------------------------------------------------


def test_g_holds_session_and_token_and_headers_are_set(
    fake_clerk: FakeClerk, client: FlaskClient
) -> None:
    token = _tokens(fake_clerk)["admin"]
    response = client.get("/state", headers=_auth_headers(token))
    body = response.get_json()
    assert body["has"] == dict.fromkeys(G_NAMES, True)
    assert (body["status"], body["user"], body["org"]) == ("signed-in", "user_a", "org_1")
    assert body["error"] is None
    assert body["token"] == response.headers["x-tinybird-token"]
    assert int(response.headers["x-tinybird-token-expires-at"]) > 0
    assert response.headers.getlist("Cache-Control") == ["private, no-store"]
    assert response.headers["Vary"] == "Accept-Encoding, Cookie, Authorization"


def test_g_for_a_signed_out_request(client: FlaskClient) -> None:
    response = client.get("/state")
    body = response.get_json()
    assert body["has"] == dict.fromkeys(G_NAMES, True)
    assert (body["status"], body["reason"]) == ("signed-out", "session-token-missing")
    assert body["token"] is None
    assert "x-tinybird-token" not in response.headers
    assert response.headers["Cache-Control"] == "public, max-age=60"


@pytest.mark.parametrize(
    ("method", "path"),
    [("OPTIONS", "/state"), ("GET", "/health/state")],
    ids=["preflight", "excluded"],
)
def test_options_and_excluded_paths_leave_g_none(
    fake_clerk: FakeClerk, make_app: MakeApp, method: str, path: str
) -> None:
    app = make_app({"CLERK_TINYBIRD_EXCLUDE_PATHS": "/health", "CLERK_TINYBIRD_REQUIRE_AUTH": "1"})
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    response = app.test_client().open(
        path,
        method=method,
        headers={**_auth_headers(_tokens(fake_clerk)["admin"]), **preflight},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["has"] == dict.fromkeys(G_NAMES, True)
    assert (body["status"], body["token"], body["error"]) == (None, None, None)
    assert "x-tinybird-token" not in response.headers
    assert response.headers["Cache-Control"] == "public, max-age=60"


def test_app_before_request_hooks_already_see_g(fake_clerk: FakeClerk) -> None:
    app = Flask(__name__)
    app.config.update(CLERK_SECRET_KEY=fake_clerk.secret_key, CLERK_API_URL=fake_clerk.api_url)
    seen: list[str | None] = []

    @app.before_request
    def registered_first() -> None:
        seen.append(g.clerk_session.user_id if g.clerk_session else None)

    extension = ClerkTinybird()
    extension.init_app(app)  # the factory pattern: after the app's own hook
    add_routes(app)
    try:
        token = _tokens(fake_clerk)["member"]
        assert app.test_client().get("/state", headers=_auth_headers(token)).status_code == 200
    finally:
        app.extensions["clerk_tinybird"].close()
    assert seen == ["user_m"]


# -- decorators -----------------------------------------------------------------------------------

DECORATOR_CASES = [
    ("/me", "out", 401, "session-token-missing"),
    ("/me", "bad", 401, "token-invalid"),
    ("/me", "member", 200, None),
    ("/admin", "out", 401, "session-token-missing"),
    ("/admin", "member", 403, "missing-role"),
    ("/admin", "no-org", 403, "no-active-org"),
    ("/admin", "admin", 200, None),
    ("/admin", "v1-admin", 200, None),
    ("/reports", "admin", 403, "missing-permission"),
    ("/reports", "reader", 200, None),
    ("/org", "no-org", 403, "no-active-org"),
    ("/org", "member", 200, None),
    ("/pipe", "out", 401, "session-token-missing"),
    ("/pipe", "bad", 401, "token-invalid"),
    ("/pipe", "no-org", 503, "tenant-missing"),
    ("/pipe", "member", 200, None),
]


def _check_answer(response: Any, status: int, reason: str | None) -> None:
    assert response.status_code == status
    body = response.get_json()
    if status == 200:
        assert body["ok"] is True
        return
    assert response.headers["Content-Type"] == "application/json"
    # "private, no-store" when the middleware handed out a token (a 403 to a signed-in user)
    assert response.headers.getlist("Cache-Control") in (["no-store"], ["private, no-store"])
    assert body["reason"] == reason
    assert body["message"]
    if status == 401:
        assert body["error"] == "unauthenticated"
        presented = reason != "session-token-missing"
        expected = 'Bearer error="invalid_token"' if presented else "Bearer"
        assert response.headers["WWW-Authenticate"] == expected
    elif status == 403:
        assert body["error"] == "forbidden"
        assert "WWW-Authenticate" not in response.headers
    else:
        assert body["error"] == "tinybird_token_unavailable"
        assert "Retry-After" not in response.headers


@pytest.mark.parametrize(
    ("path", "who", "status", "reason"),
    DECORATOR_CASES,
    ids=[f"{path[1:]}-{who}-{status}" for path, who, status, _ in DECORATOR_CASES],
)
def test_decorators(
    fake_clerk: FakeClerk, client: FlaskClient, path: str, who: str, status: int, reason: str | None
) -> None:
    token = _tokens(fake_clerk)[who]
    _check_answer(client.get(path, headers=_auth_headers(token)), status, reason)


ASYNC_CASES = [
    ("/async/me", "out", 401, "session-token-missing"),
    ("/async/me", "member", 200, None),
    ("/async/admin", "member", 403, "missing-role"),
    ("/async/admin", "admin", 200, None),
    ("/async/pipe", "no-org", 503, "tenant-missing"),
    ("/async/pipe", "member", 200, None),
]


@pytest.mark.parametrize(
    ("path", "who", "status", "reason"),
    ASYNC_CASES,
    ids=[f"{path[7:]}-{who}-{status}" for path, who, status, _ in ASYNC_CASES],
)
def test_decorators_on_async_views(
    fake_clerk: FakeClerk, client: FlaskClient, path: str, who: str, status: int, reason: str | None
) -> None:
    pytest.importorskip("asgiref", reason="Flask runs async views only with flask[async]")
    token = _tokens(fake_clerk)[who]
    _check_answer(client.get(path, headers=_auth_headers(token)), status, reason)


def test_async_decorated_views_stay_coroutine_functions(make_app: MakeApp) -> None:
    """Without asgiref too: the wrappers are ``async def`` and guard before awaiting."""
    app = make_app()
    view = app.view_functions["async_admin"]
    assert inspect.iscoroutinefunction(view)
    assert view.__name__ == "_ok_async"
    admin = ClerkSession("user_a", "sess_1", org_id="org_1", org_role="org:admin")
    member = dataclasses.replace(admin, org_role="org:member")
    for session, status in ((admin, 200), (member, 403), (None, 401)):
        with app.test_request_context("/async/admin"):
            g.clerk_auth = (
                AuthResult.signed_in(session)
                if session
                else AuthResult.signed_out("session-token-missing", "none")
            )
            g.clerk_session = session
            answer = asyncio.run(view())
            if status == 200:
                assert answer == {"ok": True, "user": "user_a"}
            else:
                assert answer.status_code == status


def test_require_org_must_be_called() -> None:
    with pytest.raises(TypeError, match="must be called"):
        require_org(_ok)  # type: ignore[arg-type]


def test_clerk_429_gives_503_with_retry_after(fake_clerk: FakeClerk, client: FlaskClient) -> None:
    fake_clerk.inject("template", status=429, retry_after=30)
    headers = _auth_headers(_tokens(fake_clerk)["member"])
    state = client.get("/state", headers=headers)
    assert state.status_code == 200
    assert state.get_json()["error"] == "clerk-rate-limited"
    assert state.get_json()["token"] is None
    assert "x-tinybird-token" not in state.headers
    answer = client.get("/pipe", headers=headers)
    assert answer.status_code == 503
    assert answer.get_json()["error"] == "tinybird_token_unavailable"
    assert answer.get_json()["reason"] == "clerk-rate-limited"
    assert 1 <= int(answer.headers["Retry-After"]) <= 30
    assert fake_clerk.calls["template"] == 1


def test_require_auth_from_config(fake_clerk: FakeClerk, make_app: MakeApp) -> None:
    client = make_app({"CLERK_TINYBIRD_REQUIRE_AUTH": True}).test_client()
    response = client.get("/state")
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"
    signed_in = client.get("/state", headers=_auth_headers(_tokens(fake_clerk)["member"]))
    assert signed_in.status_code == 200


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field", "expected"),
    [
        ({"CLERK_TINYBIRD_REQUIRE_AUTH": "yes"}, "require_auth", True),
        ({"CLERK_TINYBIRD_REQUIRE_AUTH": True}, "require_auth", True),
        (
            {"CLERK_TINYBIRD_EXCLUDE_PATHS": "/health, /metrics/"},
            "exclude_paths",
            ("/health", "/metrics"),
        ),
        ({"CLERK_TINYBIRD_EXCLUDE_PATHS": ["/health"]}, "exclude_paths", ("/health",)),
        ({"CLERK_TINYBIRD_EXCLUDE_PATHS": ("/a", "/b")}, "exclude_paths", ("/a", "/b")),
        ({"TINYBIRD_TOKEN_LIFETIME": 120}, "tinybird_token_lifetime", 120),
        ({"TINYBIRD_TOKEN_LIFETIME": "120"}, "tinybird_token_lifetime", 120),
        ({"CLERK_CLOCK_SKEW_SECONDS": 2.5}, "clock_skew_seconds", 2.5),
        ({"CLERK_TINYBIRD_TOKEN_HEADER": ""}, "token_header", None),
        ({"CLERK_TINYBIRD_TOKEN_HEADER": None}, "token_header", "x-from-env"),
        ({}, "token_header", "x-from-env"),
        ({"CLERK_TINYBIRD_TOKEN_HEADER": "X-TB"}, "token_header", "x-tb"),
        (
            {"SECRET_KEY": "flask's own", "CLERK_TINYBIRD_TEMPLATE": "tb2"},
            "tinybird_template",
            "tb2",
        ),
        (
            {"TINYBIRD_JWT_SCOPES": [{"type": "PIPES:READ", "resource": "p"}]},
            "tinybird_scopes",
            ({"type": "PIPES:READ", "resource": "p"},),
        ),
    ],
    ids=[
        "bool-string",
        "bool",
        "list-string",
        "list",
        "tuple",
        "int",
        "int-string",
        "float",
        "empty-disables",
        "none-falls-back-to-env",
        "absent-falls-back-to-env",
        "config-over-env",
        "other-keys-ignored",
        "scopes-list",
    ],
)
def test_settings_from_config(config: dict[str, Any], field: str, expected: Any) -> None:
    environ = {"CLERK_SECRET_KEY": "sk_test_env", "CLERK_TINYBIRD_TOKEN_HEADER": "x-from-env"}
    settings = settings_from_config(config, environ)
    assert getattr(settings, field) == expected
    assert settings.secret_key == "sk_test_env"


@pytest.mark.parametrize(
    ("config", "env_name"),
    [
        ({"CLERK_TINYBIRD_REFRESH_MARGIN": "soon"}, "CLERK_TINYBIRD_REFRESH_MARGIN"),
        ({"CLERK_TINYBIRD_REQUIRE_AUTH": "maybe"}, "CLERK_TINYBIRD_REQUIRE_AUTH"),
        ({"TINYBIRD_JWT_SCOPES": "[not json"}, "TINYBIRD_JWT_SCOPES"),
        ({"CLERK_TINYBIRD_EXCLUDE_PATHS": 7}, "CLERK_TINYBIRD_EXCLUDE_PATHS"),
    ],
    ids=["number", "bool", "json", "list"],
)
def test_bad_config_raises_at_init_naming_the_key(
    make_app: MakeApp, config: dict[str, Any], env_name: str
) -> None:
    with pytest.raises(ConfigurationError, match=env_name):
        make_app(config)


def test_config_reaches_the_extension_and_environment_is_the_fallback(
    fake_clerk: FakeClerk, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", fake_clerk.secret_key)
    monkeypatch.setenv("CLERK_API_URL", fake_clerk.api_url or "")
    monkeypatch.setenv("CLERK_TINYBIRD_TOKEN_HEADER", "x-from-env")
    extension = ClerkTinybird(exclude_paths=("/override",))
    first, second = Flask("first"), Flask("second")
    second.config["CLERK_TINYBIRD_TOKEN_HEADER"] = "x-second"
    second.config["TINYBIRD_TOKEN_LIFETIME"] = 60
    try:
        extension.init_app(first)
        extension.init_app(second)
        one, two = first.extensions["clerk_tinybird"], second.extensions["clerk_tinybird"]
        assert isinstance(one, ClerkTinybirdWSGIMiddleware)
        assert first.wsgi_app is one
        assert not hasattr(extension, "app")
        assert (one.settings.token_header, two.settings.token_header) == ("x-from-env", "x-second")
        assert two.settings.tinybird_token_lifetime == 60
        assert one.settings.exclude_paths == two.settings.exclude_paths == ("/override",)
        with pytest.raises(RuntimeError, match="already"):
            extension.init_app(first)
    finally:
        for app in (first, second):
            app.extensions["clerk_tinybird"].close()


def test_explicit_settings_win_over_config(fake_clerk: FakeClerk) -> None:
    app = Flask(__name__)
    app.config["CLERK_TINYBIRD_REQUIRE_AUTH"] = True
    assert fake_clerk.api_url is not None
    settings = Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url)
    ClerkTinybird(app, settings, token_header="x-explicit")
    middleware = app.extensions["clerk_tinybird"]
    try:
        assert middleware.settings.require_auth is False
        assert middleware.settings.token_header == "x-explicit"
    finally:
        middleware.close()


# -- a real threaded server -----------------------------------------------------------------------


def test_threaded_server_makes_one_template_call_per_tenant(
    fake_clerk: FakeClerk, make_app: MakeApp
) -> None:
    app = make_app()
    tokens = [
        fake_clerk.session_token(f"user_{i}", org={"id": f"org_{i}", "slug": f"t{i}"})
        for i in range(5)
    ]
    barrier = threading.Barrier(20)

    def worker(n: int) -> list[tuple[str, str]]:
        seen = []
        with httpx.Client(base_url=url, timeout=20) as http:
            barrier.wait()
            for i in range(10):
                token = tokens[(n + i) % 5]
                response = http.get("/state", headers=_auth_headers(token))
                body = response.json()
                assert response.status_code == 200
                assert body["token"] == response.headers["x-tinybird-token"]
                assert response.headers["cache-control"] == "private, no-store"
                seen.append((body["user"], body["token"]))
        return seen

    with serve_wsgi(app) as url, ThreadPoolExecutor(20) as pool:
        results = [pair for seen in pool.map(worker, range(20)) for pair in seen]
        guarded = httpx.get(f"{url}/admin", headers=_auth_headers(tokens[0]), timeout=10)
    assert len(results) == 200
    assert fake_clerk.calls["template"] == 5
    per_user: dict[str, set[str]] = {}
    for user, jwt in results:
        per_user.setdefault(user, set()).add(jwt)
    assert {user: len(jwts) for user, jwts in per_user.items()} == {
        f"user_{i}": 1 for i in range(5)
    }
    assert guarded.status_code == 403
    assert guarded.json()["reason"] == "missing-role"


# -- the example app ------------------------------------------------------------------------------


def test_example_app(
    fake_clerk: FakeClerk, fake_tinybird: FakeTinybird, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clerk_tinybird_middleware.demo import load_example

    create_app = load_example("flask").create_app

    fake_tinybird.add_pipe(
        "analytics_hits",
        [
            {"org": "acme", "user": "user_1", "hits": 3},
            {"org": "acme", "user": "user_2", "hits": 4},
            {"org": "globex", "user": "user_1", "hits": 9},
        ],
    )
    assert fake_clerk.api_url is not None
    assert fake_tinybird.api_url is not None
    settings = Settings(
        secret_key=fake_clerk.secret_key,
        clerk_api_url=fake_clerk.api_url,
        tinybird_api_url=fake_tinybird.api_url,
    )
    app = create_app(settings, sign_in_url="/sign-in")
    member = _auth_headers(fake_clerk.session_token("user_1", org={"id": "org_a", "slug": "acme"}))
    admin = _auth_headers(
        fake_clerk.session_token("user_2", org={"id": "org_a", "slug": "acme", "role": "admin"})
    )
    try:
        client = app.test_client()
        page = client.get("/")
        assert page.status_code == 200
        assert 'fetch("/api/token"' in page.text
        assert fake_tinybird.api_url in page.text
        assert "__CONFIG__" not in page.text
        assert "x-tinybird-token" not in client.get("/health").headers

        signed_out = client.get("/api/token")
        assert signed_out.get_json()["signed_in"] is False
        assert "x-tinybird-token" not in signed_out.headers
        answer = client.get("/api/token", headers=member)
        assert answer.get_json()["org_slug"] == "acme"
        token = answer.headers["x-tinybird-token"]
        assert token not in answer.text

        assert client.get("/api/me").status_code == 401
        assert client.get("/api/me", headers=member).get_json()["user_id"] == "user_1"
        assert client.get("/api/org", headers=member).status_code == 403
        assert client.get("/api/org", headers=admin).get_json()["you"] == "admin"
        rows = client.get("/api/hits", headers=member)
        assert rows.status_code == 200
        assert rows.get_json()["data"] == [{"org": "acme", "user": "user_1", "hits": 3}]

        # the browser's path: the header token, straight to Tinybird; fixed_params win
        direct = httpx.get(
            f"{fake_tinybird.api_url}/v0/pipes/analytics_hits.json",
            params={"org": "globex"},
            headers=_auth_headers(token),
            timeout=10,
        )
        assert [row["org"] for row in direct.json()["data"]] == ["acme"]

        cross = client.get("/api/token", headers={**member, "Origin": "http://localhost:3000"})
        assert cross.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        exposed = cross.headers["Access-Control-Expose-Headers"]
        assert exposed == "x-tinybird-token, x-tinybird-token-expires-at"
        assert cross.headers["Vary"] == "Origin, Cookie, Authorization"
        preflight = client.options("/api/me", headers={"Origin": "http://localhost:3000"})
        assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization"
        assert "x-tinybird-token" not in preflight.headers
    finally:
        app.extensions["clerk_tinybird"].close()


def test_guarded_view_on_an_excluded_path_fails_closed(
    fake_clerk: FakeClerk, make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_app({"CLERK_TINYBIRD_EXCLUDE_PATHS": "/me"}).test_client()
    response = client.get("/me", headers=_auth_headers(_tokens(fake_clerk)["admin"]))
    assert response.status_code == 401
    assert response.get_json()["reason"] == "session-token-missing"
    assert any("without the middleware" in record.getMessage() for record in caplog.records)
