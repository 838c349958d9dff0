"""ClerkTinybirdWSGIMiddleware around a plain (Django-style) WSGI callable, over a real threaded
WSGI server on 127.0.0.1 and through werkzeug's test client, with FakeClerk."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

from clerk_tinybird_middleware import ClerkTinybirdWSGIMiddleware, Settings
from clerk_tinybird_middleware._types import StartResponse, WSGIEnviron
from clerk_tinybird_middleware.testing import FakeClerk
from clerk_tinybird_middleware.testing._server import serve_wsgi
from services import requests_from_threads

KEYS = ("clerk_auth", "clerk_session", "tinybird_token", "tinybird_token_error")


class Body:
    """A response iterable that records ``close()`` (PEP 3333: the server must call it)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed = True


class EchoApp:
    """A plain WSGI callable (what Django's ``get_wsgi_application()`` is): echoes what the
    middleware left in ``environ``, with caching headers the middleware must override."""

    def __init__(self) -> None:
        self.bodies: list[Body] = []

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        seen = {key: f"clerk_tinybird.{key}" in environ for key in KEYS}
        auth = environ.get("clerk_tinybird.clerk_auth")
        session = environ.get("clerk_tinybird.clerk_session")
        token = environ.get("clerk_tinybird.tinybird_token")
        payload = {
            "seen": seen,
            "status": auth.status if auth else None,
            "reason": auth.reason if auth else None,
            "user": session.user_id if session else None,
            "org": session.org_id if session else None,
            "token": token.jwt if token else None,
            "error": environ.get("clerk_tinybird.tinybird_token_error"),
            "retry_after": environ.get("clerk_tinybird.tinybird_token_retry_after"),
        }
        body = Body([b'{"part": 1, ', json.dumps(payload).encode()[1:]])
        self.bodies.append(body)
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Cache-Control", "public, max-age=60"),
                ("Vary", "Accept-Encoding"),
            ],
        )
        return body


MakeMiddleware = Callable[..., ClerkTinybirdWSGIMiddleware]


@pytest.fixture
def echo() -> EchoApp:
    return EchoApp()


@pytest.fixture
def make(fake_clerk: FakeClerk, echo: EchoApp) -> Iterator[MakeMiddleware]:
    made: list[ClerkTinybirdWSGIMiddleware] = []
    api_url = fake_clerk.api_url
    assert api_url is not None

    def build(**overrides: Any) -> ClerkTinybirdWSGIMiddleware:
        middleware = ClerkTinybirdWSGIMiddleware(
            echo,
            Settings(secret_key=fake_clerk.secret_key, clerk_api_url=api_url),
            **overrides,
        )
        made.append(middleware)
        return middleware

    yield build
    for middleware in made:
        middleware.close()


def _token(fake_clerk: FakeClerk, user: str = "user_1", org: str = "org_1") -> str:
    return fake_clerk.session_token(user, org={"id": org, "slug": f"slug-{org}", "role": "admin"})


# -- routing: what is looked at, what is left alone ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "overrides", "processed"),
    [
        ("GET", "/", {}, True),
        ("POST", "/api/x", {}, True),
        ("OPTIONS", "/api/x", {}, False),
        ("GET", "/health", {"exclude_paths": ("/health",)}, False),
        ("GET", "/health/live", {"exclude_paths": ("/health",)}, False),
        ("GET", "/healthz", {"exclude_paths": ("/health",)}, True),
        ("GET", "/caf\u00e9/menu", {"exclude_paths": ("/caf\u00e9",)}, False),
        ("OPTIONS", "/api/x", {"require_auth": True}, True),  # not a preflight (SPEC §12)
        ("GET", "/health", {"require_auth": True, "exclude_paths": ("/health",)}, False),
    ],
    ids=[
        "get",
        "post",
        "options-preflight",
        "excluded",
        "excluded-subpath",
        "not-a-segment-match",
        "excluded-non-ascii",
        "options-with-require-auth",
        "excluded-with-require-auth",
    ],
)
def test_options_and_excluded_paths_pass_through_untouched(
    fake_clerk: FakeClerk,
    make: MakeMiddleware,
    method: str,
    path: str,
    overrides: dict[str, Any],
    processed: bool,
) -> None:
    client = Client(make(**overrides))
    headers = {"Authorization": f"Bearer {_token(fake_clerk)}"}
    response = client.open(path, method=method, headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert body["seen"] == dict.fromkeys(KEYS, processed)
    assert ("x-tinybird-token" in response.headers) is processed
    if not processed:
        assert response.headers["Cache-Control"] == "public, max-age=60"
        assert response.headers["Vary"] == "Accept-Encoding"


# -- authentication and state -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["bearer", "cookie"])
def test_signed_in_request_gets_session_token_and_headers(
    fake_clerk: FakeClerk, make: MakeMiddleware, where: str
) -> None:
    client = Client(make())
    session_token = _token(fake_clerk, "user_7", "org_7")
    if where == "bearer":
        response = client.get("/", headers={"Authorization": f"Bearer {session_token}"})
    else:
        client.set_cookie("__session", session_token)
        response = client.get("/")
    body = response.get_json()
    assert body["status"] == "signed-in"
    assert (body["user"], body["org"]) == ("user_7", "org_7")
    assert body["error"] is None
    assert body["token"] is not None
    headers = response.headers
    assert headers["x-tinybird-token"] == body["token"]
    assert int(headers["x-tinybird-token-expires-at"]) > 0
    assert headers["Cache-Control"] == "private, no-store"  # replaces "public, max-age=60"
    assert headers.getlist("Cache-Control") == ["private, no-store"]
    assert headers["Vary"] == "Accept-Encoding, Cookie, Authorization"
    assert session_token not in str(headers)


def test_signed_out_request_proceeds_without_token_header(make: MakeMiddleware) -> None:
    response = Client(make()).get("/")
    body = response.get_json()
    assert (body["status"], body["reason"]) == ("signed-out", "session-token-missing")
    assert body["seen"] == dict.fromkeys(KEYS, True)
    assert body["token"] is None
    assert "x-tinybird-token" not in response.headers
    assert response.headers["Cache-Control"] == "public, max-age=60"


@pytest.mark.parametrize(
    ("authorization", "reason", "challenge"),
    [
        (None, "session-token-missing", "Bearer"),
        ("Bearer not.a.jwt", "token-invalid", 'Bearer error="invalid_token"'),
    ],
    ids=["no-token", "bad-token"],
)
def test_require_auth_answers_401_json(
    make: MakeMiddleware,
    echo: EchoApp,
    authorization: str | None,
    reason: str,
    challenge: str,
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = Client(make(require_auth=True)).get("/", headers=headers)
    assert response.status_code == 401
    assert response.status == "401 Unauthorized"
    body = response.get_json()
    assert body["error"] == "unauthenticated"
    assert body["reason"] == reason
    assert body["message"]
    assert response.headers["WWW-Authenticate"] == challenge
    assert response.headers["Content-Type"] == "application/json"
    assert echo.bodies == []  # the app never ran


def test_require_auth_lets_signed_in_requests_through(
    fake_clerk: FakeClerk, make: MakeMiddleware
) -> None:
    response = Client(make(require_auth=True)).get(
        "/", headers={"Authorization": f"Bearer {_token(fake_clerk)}"}
    )
    assert response.status_code == 200
    assert response.get_json()["status"] == "signed-in"
    assert "x-tinybird-token" in response.headers


def test_token_header_can_be_disabled(fake_clerk: FakeClerk, make: MakeMiddleware) -> None:
    response = Client(make(token_header="")).get(
        "/", headers={"Authorization": f"Bearer {_token(fake_clerk)}"}
    )
    body = response.get_json()
    assert body["token"] is not None  # still handed to the app
    assert "x-tinybird-token" not in response.headers
    assert response.headers["Cache-Control"] == "public, max-age=60"


def test_clerk_429_means_no_token_and_a_retry_after(
    fake_clerk: FakeClerk, make: MakeMiddleware
) -> None:
    fake_clerk.inject("template", status=429, retry_after=30)
    client = Client(make())
    headers = {"Authorization": f"Bearer {_token(fake_clerk)}"}
    first = client.get("/", headers=headers)
    second = client.get("/", headers=headers)
    for response in (first, second):
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "signed-in"
        assert body["error"] == "clerk-rate-limited"
        assert 0 < body["retry_after"] <= 30
        assert "x-tinybird-token" not in response.headers
    assert fake_clerk.calls["template"] == 1  # the second request waited out Retry-After


# -- the iterable: returned as is, closed by the server -----------------------------------------


def test_app_iterable_is_returned_untouched(fake_clerk: FakeClerk, make: MakeMiddleware) -> None:
    middleware = make()
    app_bodies: list[Body] = middleware.wsgi_app.bodies  # type: ignore[attr-defined]
    statuses: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/stream",
        "HTTP_AUTHORIZATION": f"Bearer {_token(fake_clerk)}",
    }

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        statuses.append(status)
        return lambda data: None

    result = middleware(environ, start_response)
    assert result is app_bodies[-1]  # not buffered, not wrapped: close() reaches the server
    assert statuses == ["200 OK"]


def test_real_server_closes_the_app_iterable(
    fake_clerk: FakeClerk, make: MakeMiddleware, echo: EchoApp
) -> None:
    headers = {"Authorization": f"Bearer {_token(fake_clerk)}"}
    with serve_wsgi(make()) as url, httpx.Client(base_url=url, timeout=10) as http:
        signed_in = http.get("/", headers=headers)
        signed_out = http.get("/")
    assert signed_in.json()["part"] == 1
    assert signed_in.headers["x-tinybird-token"] == signed_in.json()["token"]
    assert signed_out.json()["status"] == "signed-out"
    assert len(echo.bodies) == 2
    # The server closes the iterable once the body is written; with no Content-Length the
    # client reads until the connection closes, after that. Poll anyway: no ordering bet.
    deadline = time.monotonic() + 5
    while not all(body.closed for body in echo.bodies) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(body.closed for body in echo.bodies)


# -- concurrency over a real threaded server ----------------------------------------------------


def test_threads_share_one_template_call_per_tenant(
    fake_clerk: FakeClerk, make: MakeMiddleware
) -> None:
    tokens = [_token(fake_clerk, f"user_{i}", f"org_{i}") for i in range(5)]
    with serve_wsgi(make()) as url:
        results = requests_from_threads(url, "/", tokens)
    assert len(results) == 200
    assert fake_clerk.calls["template"] == 5
    by_user: dict[str, set[str]] = {}
    for user, jwt in results:
        by_user.setdefault(user, set()).add(jwt)
    assert sorted(by_user) == [f"user_{i}" for i in range(5)]
    assert all(len(jwts) == 1 for jwts in by_user.values())  # one token per tenant
    assert len({next(iter(jwts)) for jwts in by_user.values()}) == 5


def test_no_token_reaches_logs_or_reprs(
    fake_clerk: FakeClerk, make: MakeMiddleware, debug_logs: list[logging.LogRecord]
) -> None:
    middleware = make()
    client = Client(middleware)
    session_token = _token(fake_clerk)
    issued = client.get("/", headers={"Authorization": f"Bearer {session_token}"})
    jwt = issued.headers["x-tinybird-token"]
    fake_clerk.inject("template", status=503)
    client.get("/", headers={"Authorization": f"Bearer {_token(fake_clerk, 'user_2', 'org_2')}"})
    client.get("/", headers={"Authorization": f"Bearer {session_token[:-4]}AAAA"})
    texts = [record.getMessage() + repr(record.__dict__) for record in debug_logs]
    texts.append(repr(middleware))
    assert any("clerk-unavailable" in text for text in texts)
    for secret in (session_token, session_token[:-4], jwt, fake_clerk.secret_key):
        assert not any(secret in text for text in texts)
