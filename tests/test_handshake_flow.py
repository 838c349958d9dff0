"""Clerk's handshake end to end over loopback HTTP, with no browser: an httpx client with a
cookie jar plays the browser and follows every redirect by hand.

FakeClerk serves the Frontend API (sign-in, ``/v1/client/handshake``) and the Backend API
(``handshake_payload``, templates); a tiny Starlette app behind ``ClerkTinybirdMiddleware`` runs
under uvicorn on a free port, configured as SPEC §9 says for a loopback FakeClerk:
``publishable_key=fake.publishable_key, proxy_url=fake.api_url``. A stale session cookie on a
page load goes app → FakeClerk → app (nonce) → app (clean URL, development) → page, signed in
with a Tinybird token; ``fetch``-like and Bearer requests are never redirected, and the loop
stops at ``__clerk_redirect_count=3``.

The stale ``__session`` rides in the handshake URL (as Clerk's SDK sends it), which httpx logs:
``token_in_url``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from flask import Flask, g
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from clerk_tinybird_middleware import ClerkTinybirdMiddleware, ClerkTinybirdWSGIMiddleware
from clerk_tinybird_middleware.flask import ClerkTinybird
from clerk_tinybird_middleware.testing import FakeClerk
from clerk_tinybird_middleware.testing._server import serve_wsgi
from constants import ADMIN_TOKEN

pytestmark = pytest.mark.token_in_url

ORG = {"id": "org_1", "slug": "acme", "role": "admin"}
API_VERSION = "2026-05-12"
STALE = "session-token-expired-refresh-non-eligible-no-refresh-cookie"


def _body(auth: Any, session: Any, token: Any) -> str:
    return (
        f"<p id=status>{auth.status}</p><p id=reason>{auth.reason}</p>"
        f"<p id=user>{session.user_id if session else ''}</p>"
        f"<p id=token>{'yes' if token else 'no'}</p>"
    )


async def _page(request: Request) -> HTMLResponse:
    state = request.state
    return HTMLResponse(_body(state.clerk_auth, state.clerk_session, state.tinybird_token))


def _wsgi_app(settings: dict[str, Any]) -> Any:
    def page(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        auth, session, token = (
            environ[f"clerk_tinybird.{name}"]
            for name in ("clerk_auth", "clerk_session", "tinybird_token")
        )
        body = _body(auth, session, token).encode()
        start_response(
            "200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))]
        )
        return [body]

    return ClerkTinybirdWSGIMiddleware(page, **settings)


def _flask_app(settings: dict[str, Any]) -> Any:
    app = Flask(__name__)
    ClerkTinybird(app, **settings)

    def page(path: str = "") -> str:
        return _body(g.clerk_auth, g.clerk_session, g.tinybird_token)

    app.add_url_rule("/", view_func=page)
    app.add_url_rule("/<path:path>", view_func=page)
    return app


@dataclass
class World:
    fake: FakeClerk
    app_url: str
    browser: httpx.Client

    def page(self, path: str = "/dashboard", **headers: str) -> httpx.Response:
        headers = {"accept": "text/html,application/xhtml+xml", **headers}
        return self.browser.get(self.app_url + path, headers=headers)

    def text(self, response: httpx.Response, field: str) -> str:
        return response.text.split(f"<p id={field}>", 1)[1].split("</p>", 1)[0]

    def follow(self, response: httpx.Response, limit: int = 8) -> tuple[httpx.Response, list[str]]:
        """Follow redirects by hand (GET, as a browser after 303/307 of a GET): the final
        response and the URLs that were visited on the way."""
        hops: list[str] = []
        while response.status_code in (302, 303, 307) and len(hops) < limit:
            location = response.headers["location"]
            hops.append(location)
            response = self.browser.get(location, headers={"accept": "text/html"})
        return response, hops

    def stale_session(self) -> None:
        """The browser comes back after a pause: its ``__session`` has expired (and
        ``__client_uat`` is the iat of that token, as Clerk set them together)."""
        sid = self.fake.frontend.session_of(self.browser.cookies.get("__client"))
        assert sid is not None
        issued = int(time.time()) - 120
        token = self.fake.session_token(
            "user_1", org=ORG, session_id=sid, now=issued, azp=self.app_url
        )
        self.browser.cookies.set("__session", token, domain="127.0.0.1", path="/")
        self.browser.cookies.set("__client_uat", str(issued), domain="127.0.0.1", path="/")


def _free_socket() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@contextlib.contextmanager
def _serve(app: Any, sock: socket.socket) -> Iterator[None]:
    config = uvicorn.Config(app, lifespan="on", log_config=None, log_level="warning")
    config.access_log = False
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.01)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def _world(adapter: str, instance: str, signing_key: RSAPrivateKey) -> Iterator[World]:
    fake = FakeClerk(live=instance == "production", signing_key=signing_key)
    fake.add_tinybird_template(ADMIN_TOKEN, "ws_handshake")
    sock = _free_socket()
    port = sock.getsockname()[1]
    app_url = f"http://127.0.0.1:{port}"
    with fake.serve() as clerk_url, contextlib.ExitStack() as stack:
        settings: dict[str, Any] = {
            "publishable_key": fake.publishable_key,
            "proxy_url": clerk_url,
            "secret_key": fake.secret_key,
            "clerk_api_url": clerk_url,
            "authorized_parties": (app_url,),
        }
        if adapter == "asgi":
            app = Starlette(
                routes=[Route("/{path:path}", _page)],
                middleware=[Middleware(ClerkTinybirdMiddleware, **settings)],
            )
            stack.enter_context(contextlib.closing(sock))
            stack.enter_context(_serve(app, sock))
        else:
            sock.close()  # wsgiref binds its own
            wsgi = _wsgi_app(settings) if adapter == "wsgi" else _flask_app(settings)
            stack.enter_context(serve_wsgi(wsgi, port=port))
        browser = stack.enter_context(httpx.Client(follow_redirects=False))
        yield World(fake, app_url, browser)


@pytest.fixture(params=["development", "production"])
def world(request: pytest.FixtureRequest, fake_clerk_signing_key: RSAPrivateKey) -> Iterator[World]:
    with _world("asgi", request.param, fake_clerk_signing_key) as built:
        yield built


@pytest.fixture(
    params=[
        ("wsgi", "development"),
        ("wsgi", "production"),
        ("flask", "development"),
        ("flask", "production"),
    ],
    ids="-".join,
)
def wsgi_world(
    request: pytest.FixtureRequest, fake_clerk_signing_key: RSAPrivateKey
) -> Iterator[World]:
    adapter, instance = request.param
    with _world(adapter, instance, fake_clerk_signing_key) as built:
        yield built


def _sign_in(world: World) -> tuple[httpx.Response, list[str]]:
    """The sign-in form of FakeClerk's Frontend API, posted like a browser would."""
    form = {
        "user_id": "user_1",
        "org_id": ORG["id"],
        "org_slug": ORG["slug"],
        "org_role": ORG["role"],
        "redirect_url": world.app_url + "/dashboard",
    }
    posted = world.browser.post(world.fake.api_url + "/v1/client/sign_in", data=form)
    assert posted.status_code == 303
    return world.follow(posted)


def test_sign_in_goes_through_the_handshake(world: World) -> None:
    page, hops = _sign_in(world)

    assert page.status_code == 200
    assert (world.text(page, "status"), world.text(page, "user")) == ("signed-in", "user_1")
    assert world.text(page, "token") == "yes"
    assert page.headers["x-tinybird-token"]
    nonce_hop = urlsplit(hops[0])
    assert nonce_hop.path == "/dashboard"
    assert [k for k, _ in parse_qsl(nonce_hop.query)] == ["__clerk_handshake_nonce"]
    if world.fake.development:  # resolved with a redirect to the clean URL, cookies set
        assert hops[1:] == [world.app_url + "/dashboard"]
    else:  # resolved in place
        assert hops[1:] == []
    assert world.fake.calls["handshake_payload"] == 1
    names = {c.name for c in world.browser.cookies.jar}
    assert {"__client", "__session", "__client_uat"} <= names
    assert ("__clerk_db_jwt" in names) is world.fake.development


def test_an_expired_session_on_a_page_load_is_refreshed_by_the_handshake(world: World) -> None:
    _sign_in(world)
    world.stale_session()
    stale = world.browser.cookies.get("__session")
    world.fake.reset_calls()

    first = world.page("/dashboard?tab=1")
    assert first.status_code == 307
    assert first.headers["cache-control"] == "no-store"
    assert "__clerk_redirect_count=1" in first.headers["set-cookie"]
    page, hops = world.follow(first)

    to_clerk = urlsplit(first.headers["location"])
    assert f"{to_clerk.scheme}://{to_clerk.netloc}{to_clerk.path}" == (
        world.fake.api_url + "/v1/client/handshake"
    )
    params = parse_qsl(to_clerk.query)
    expected = [
        ("redirect_url", world.app_url + "/dashboard?tab=1"),
        ("__clerk_api_version", API_VERSION),
        ("suffixed_cookies", "false"),
        ("__clerk_hs_reason", STALE),
        ("format", "nonce"),
        ("__session", stale),
    ]
    if world.fake.development:
        expected.append(("__clerk_db_jwt", world.browser.cookies.get("__clerk_db_jwt")))
    assert params == expected
    assert page.status_code == 200
    assert (world.text(page, "status"), world.text(page, "user")) == ("signed-in", "user_1")
    assert world.text(page, "token") == "yes"
    # app → Frontend API → app with the nonce (→ the clean URL, in development) → the page
    assert len(hops) == (3 if world.fake.development else 2)
    assert hops[-1].startswith(world.app_url + "/dashboard?tab=1")
    assert world.fake.calls["handshake"] == 1
    assert world.fake.calls["handshake_payload"] == 1
    assert world.browser.cookies.get("__session") != stale
    again = world.page("/dashboard?tab=1")
    assert (again.status_code, world.text(again, "status")) == (200, "signed-in")


@pytest.mark.parametrize(
    "headers",
    [
        {"accept": "*/*"},
        {"accept": "text/html", "sec-fetch-dest": "empty"},
        {"accept": "application/json"},
    ],
    ids=["accept-any", "sec-fetch-dest-empty", "json"],
)
def test_a_fetch_is_never_redirected(world: World, headers: dict[str, str]) -> None:
    _sign_in(world)
    world.stale_session()
    world.fake.reset_calls()

    answer = world.browser.get(world.app_url + "/api", headers=headers)

    assert answer.status_code == 200
    assert (world.text(answer, "status"), world.text(answer, "reason")) == (
        "signed-out",
        "token-expired",
    )
    assert world.fake.calls["handshake"] == 0


def test_a_bearer_request_is_never_redirected(world: World) -> None:
    issued = int(time.time()) - 120
    token = world.fake.session_token("user_1", org=ORG, now=issued, azp=world.app_url)

    answer = httpx.get(
        world.app_url + "/dashboard",
        headers={"accept": "text/html", "authorization": f"Bearer {token}"},
    )

    assert answer.status_code == 200
    assert world.text(answer, "reason") == "token-expired"


def test_the_redirect_loop_stops_at_three(world: World) -> None:
    _sign_in(world)
    world.stale_session()
    for count in ("1", "2"):
        world.browser.cookies.set("__clerk_redirect_count", count, domain="127.0.0.1", path="/")
        answer = world.page()
        assert answer.status_code == 307
        assert f"__clerk_redirect_count={int(count) + 1};" in answer.headers["set-cookie"]
    world.browser.cookies.set("__clerk_redirect_count", "3", domain="127.0.0.1", path="/")

    answer = world.page()

    assert answer.status_code == 200
    assert (world.text(answer, "status"), world.text(answer, "reason")) == (
        "signed-out",
        "token-expired",
    )


def test_sign_out_clears_the_app_cookies(world: World) -> None:
    _sign_in(world)
    posted = world.browser.post(
        world.fake.api_url + "/v1/client/sign_out", data={"redirect_url": world.app_url + "/"}
    )

    page, _ = world.follow(posted)

    assert page.status_code == 200
    assert world.text(page, "status") == "signed-out"
    assert world.browser.cookies.get("__session") is None
    assert world.browser.cookies.get("__client_uat") == "0"
    assert world.browser.cookies.get("__client") is None
    again = world.page()
    assert (again.status_code, world.text(again, "reason")) == (
        200,
        "session-token-and-uat-missing",
    )


def test_a_first_page_load_with_no_cookies(world: World) -> None:
    """A browser the app has never seen: a development instance handshakes for the dev-browser
    token (dev-browser-missing) and comes back signed out with it; production answers signed
    out at once (no client, no session: never a handshake)."""
    first = world.page("/welcome")

    if world.fake.development:
        assert first.status_code == 307
        to_clerk = dict(parse_qsl(urlsplit(first.headers["location"]).query))
        assert to_clerk["__clerk_hs_reason"] == "dev-browser-missing"
        page, hops = world.follow(first)
        assert len(hops) == 3  # → Frontend API → app with the nonce → the clean URL
        assert world.browser.cookies.get("__clerk_db_jwt")
        assert world.browser.cookies.get("__client_uat") == "0"
    else:
        page = first
    assert page.status_code == 200
    assert (world.text(page, "status"), world.text(page, "token")) == ("signed-out", "no")
    api = world.browser.get(world.app_url + "/api", headers={"accept": "application/json"})
    assert (api.status_code, world.text(api, "status")) == (200, "signed-out")


def test_wsgi_and_flask_sign_in_and_refresh_a_stale_page(wsgi_world: World) -> None:
    """The same flows through the WSGI middleware and the Flask extension."""
    world = wsgi_world
    page, _ = _sign_in(world)
    assert (world.text(page, "status"), world.text(page, "token")) == ("signed-in", "yes")
    world.stale_session()
    stale = world.browser.cookies.get("__session")
    world.fake.reset_calls()

    first = world.page("/dashboard")
    page, hops = world.follow(first)

    assert first.status_code == 307
    assert first.headers["location"].startswith(world.fake.api_url + "/v1/client/handshake?")
    assert len(hops) == (3 if world.fake.development else 2)
    assert (world.text(page, "status"), world.text(page, "token")) == ("signed-in", "yes")
    assert world.browser.cookies.get("__session") != stale
    assert world.fake.calls["handshake_payload"] == 1
    fetch = world.browser.get(world.app_url + "/api", headers={"accept": "application/json"})
    assert world.text(fetch, "status") == "signed-in"
