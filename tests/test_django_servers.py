"""Django behind real servers on 127.0.0.1: the threaded WSGI server of ``manage.py
runserver`` (in process, and the example's ``manage.py runserver`` as a subprocess) and
uvicorn for ASGI, against FakeClerk and FakeTinybird. The two single-flight figures are
printed in pytest's summary."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.asgi import get_asgi_application
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.core.wsgi import get_wsgi_application
from django.test import override_settings

import django_support
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from constants import ORG
from django_support import directives_for, handshake_token, overrides, pk_live
from leaks import summary
from services import free_port, requests_from_threads

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIGURES = "django: upstream calls under real servers"


pytestmark = pytest.mark.usefixtures("clean_environment")


class _QuietHandler(WSGIRequestHandler):  # type: ignore[misc]
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def runserver(app: Any) -> Iterator[str]:
    """``app`` on the server classes ``manage.py runserver`` uses (threaded wsgiref)."""
    server = ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler, allow_reuse_address=True)
    server.set_app(app)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextlib.contextmanager
def uvicorn_serving(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in a thread named ``uvicorn-django``."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="off", log_config=None, log_level="warning"
    )
    config.access_log = False
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-django", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        assert time.monotonic() < deadline, "uvicorn did not start in 15 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def serving(kind: str) -> Iterator[str]:
    """Django's WSGI application under the runserver classes, or its ASGI one under uvicorn
    (built now, under the settings in force)."""
    if kind == "wsgi":
        with runserver(get_wsgi_application()) as url:
            yield url
    else:
        with uvicorn_serving(get_asgi_application()) as url:
            yield url


def _call_threads() -> set[int]:
    return {t.ident or 0 for t in threading.enumerate() if t.name.startswith("clerk-tinybird-call")}


# -- the two figures -------------------------------------------------------------------------------


def test_threaded_wsgi_server_makes_one_template_call_per_tenant(
    fake_clerk: FakeClerk, configured: None, request: pytest.FixtureRequest
) -> None:
    tokens = [
        fake_clerk.session_token(f"user_{i}", org={**ORG, "id": f"org_{i}"}) for i in range(5)
    ]
    with runserver(get_wsgi_application()) as url:
        results = requests_from_threads(url, "/state", tokens)
    calls = fake_clerk.calls["template"]
    summary(request.config).add(
        FIGURES,
        f"threaded WSGI (runserver's server), 20 threads x 10 requests over 5 users: "
        f"{len(results)} answered, {calls} template calls, {fake_clerk.calls['jwks']} JWKS fetch",
    )
    assert len(results) == 200
    assert calls == 5
    by_user: dict[str, set[str]] = {}
    for user, jwt in results:
        by_user.setdefault(user, set()).add(jwt)
    assert sorted(by_user) == [f"user_{i}" for i in range(5)]
    assert all(len(jwts) == 1 for jwts in by_user.values())  # one token per tenant


async def test_uvicorn_makes_one_template_call_for_fifty_cold_requests(
    fake_clerk: FakeClerk, configured: None, request: pytest.FixtureRequest
) -> None:
    # 50 different session tokens (50 tabs of one user in one org): every request is cold.
    tokens = [fake_clerk.session_token("user_1", org=ORG) for _ in range(50)]
    django_support.VIEW_THREADS.clear()
    before = _call_threads()
    limits = httpx.Limits(max_connections=50)
    with uvicorn_serving(get_asgi_application()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as http:
            responses = await asyncio.gather(
                *(
                    http.get("/async/state", headers={"Authorization": f"Bearer {t}"})
                    for t in tokens
                )
            )
    calls = fake_clerk.calls["template"]
    summary(request.config).add(
        FIGURES,
        f"uvicorn (ASGI), 50 concurrent cold requests for one tenant: "
        f"{sum(r.status_code == 200 for r in responses)} answered, {calls} template call, "
        f"{fake_clerk.calls['jwks']} JWKS fetch",
    )
    assert [r.status_code for r in responses] == [200] * 50
    assert {r.json()["user"] for r in responses} == {"user_1"}
    assert len({r.headers["x-tinybird-token"] for r in responses}) == 1
    assert calls == 1
    assert fake_clerk.calls["jwks"] == 1
    # The async path: views on the event loop, and no sync driver's call thread was started.
    assert {"uvicorn-django"} == django_support.VIEW_THREADS
    assert _call_threads() <= before


# -- the same behaviour under both servers -------------------------------------------------------


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_headers_cookies_and_streams_on_the_wire(
    kind: str, fake_clerk: FakeClerk, configured: None
) -> None:
    token = fake_clerk.session_token("user_1", org=ORG)
    directives = directives_for(fake_clerk)
    legacy = handshake_token(fake_clerk, directives)
    stream = "/stream" if kind == "wsgi" else "/async/stream"
    with (
        override_settings(CLERK_PUBLISHABLE_KEY=pk_live(fake_clerk)),
        serving(kind) as url,
        httpx.Client(base_url=url, timeout=20) as http,
    ):
        signed_in = http.get("/state", headers={"Authorization": f"Bearer {token}"})
        streamed = http.get(stream, headers={"Authorization": f"Bearer {token}"})
        resolved = http.get(
            "/raw", params={"__clerk_handshake": legacy}, headers={"Accept": "text/html"}
        )
        stale = fake_clerk.session_token("user_1", lifetime=-120)
        page = http.get(
            "/caf%C3%A9/%E6%97%A5?q=1",
            headers={
                "Accept": "text/html",
                "Cookie": f"__session={stale}; __client_uat=1",
            },
        )
    assert signed_in.status_code == 200
    assert signed_in.headers["cache-control"] == "private, no-store"
    assert signed_in.headers.get_list("vary") == ["Accept-Encoding, Cookie, Authorization"]
    assert streamed.text == "chunk-0;chunk-1;chunk-2;"
    assert "x-tinybird-token" in streamed.headers
    # Production handshake: every directive is its own Set-Cookie line, exactly as Clerk sent it.
    assert resolved.status_code == 200
    assert resolved.json()["user"] == "user_hs"
    assert sorted(resolved.headers.get_list("set-cookie")) == sorted(
        [*directives, "app_cookie=1; Path=/"]
    )
    # A stale page load: the handshake, with the URL as the client sent it.
    assert page.status_code == 307
    assert "redirect_url=http%3A%2F%2F127.0.0.1%3A" in page.headers["location"]
    assert "%2Fcaf%25C3%25A9%2F%25E6%2597%25A5%3Fq%3D1&" in page.headers["location"]


# -- the example project ---------------------------------------------------------------------------


def _example_environment(fake_clerk: FakeClerk, fake_tinybird: FakeTinybird) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(EXAMPLES)]),
        "CLERK_SECRET_KEY": fake_clerk.secret_key,
        "CLERK_API_URL": fake_clerk.api_url,
        "TINYBIRD_API_URL": fake_tinybird.api_url,
    }


def test_example_under_manage_py_runserver(
    fake_clerk: FakeClerk, fake_tinybird: FakeTinybird
) -> None:
    fake_tinybird.add_pipe("analytics_hits", [{"org": "acme", "hits": 3}, {"org": "x", "hits": 9}])
    port = free_port()
    manage = EXAMPLES / "django_app" / "manage.py"
    process = subprocess.Popen(
        [sys.executable, str(manage), "runserver", "--noreload", f"127.0.0.1:{port}"],
        env=_example_environment(fake_clerk, fake_tinybird),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "runserver did not start in 30 s"
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        token = fake_clerk.session_token("user_1", org=ORG)
        with httpx.Client(base_url=url, timeout=20) as http:
            health = http.get("/health", headers={"Authorization": f"Bearer {token}"})
            who = http.get("/api/token", headers={"Authorization": f"Bearer {token}"})
            hits = http.get("/api/hits", headers={"Authorization": f"Bearer {token}"})
            anonymous = http.get("/api/me")
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0]
    assert "System check identified no issues" in output
    assert health.json() == {"status": "ok"}
    assert "x-tinybird-token" not in health.headers  # excluded in settings.py
    assert who.json()["signed_in"] is True
    assert who.json()["org_slug"] == "acme"
    assert "x-tinybird-token" in who.headers
    assert hits.json() == {"rows": 1, "data": [{"org": "acme", "hits": 3}]}
    assert anonymous.status_code == 401


def test_example_manage_py_check_reports_ids(
    fake_clerk: FakeClerk, fake_tinybird: FakeTinybird
) -> None:
    manage = EXAMPLES / "django_app" / "manage.py"
    env = _example_environment(fake_clerk, fake_tinybird)
    env["CLERK_SECRET_KEY"] = "pk_test_not_a_secret_key"
    env["CLERK_TINYBIRD_REQUIRE_AUTH"] = "sometimes"
    done = subprocess.run(
        [sys.executable, str(manage), "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "clerk_tinybird.E002" in done.stderr
    assert "clerk_tinybird.E020" in done.stderr


def test_example_create_app_behind_the_demo_sign_in(
    fake_clerk: FakeClerk, fake_tinybird: FakeTinybird
) -> None:
    from clerk_tinybird_middleware import demo

    create_app = demo.load_example("django").create_app
    fake_tinybird.add_pipe("analytics_hits", [{"org": "acme", "hits": 3}, {"org": "x", "hits": 9}])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = demo.demo_settings(fake_clerk, fake_tinybird, origins=[url])
    routes = demo.DevRoutes(fake_clerk, [url])
    alice = next(user for user in demo.USERS if user.id == "user_alice")
    with override_settings(**overrides()):
        app = create_app(
            settings,
            pipe="analytics_hits",
            sign_in_url=demo.SIGN_IN_PATH,
            page_config={"orgs": ["acme", "globex"]},
        )
        from clerk_tinybird_middleware.testing._server import serve_wsgi

        with (
            serve_wsgi(demo.DevRoutesWSGI(app, routes), port=port),
            httpx.Client(base_url=url, timeout=20) as http,
        ):
            page = http.get("/")
            signed_out = http.get("/api/me")
            signed_in = http.post(
                routes.sign_in_action,
                data=demo.sign_in_fields(alice, "acme", f"{url}/"),
                follow_redirects=True,
            )
            who = http.get("/api/token")
            me = http.get("/api/me")
            org = http.get("/api/org")
            hits = http.get("/api/hits")
            health = http.get("/health")
    assert page.status_code == 200
    assert "Django decorators" in page.text
    assert '"pipe": "analytics_hits"' in page.text
    assert '"signInUrl": "/dev/sign-in"' in page.text
    assert '"orgs": ["acme", "globex"]' in page.text
    assert signed_out.status_code == 401
    assert [r.status_code for r in signed_in.history] == [303, 307]  # Frontend API, clean URL
    assert who.json()["user_id"] == "user_alice"
    assert "x-tinybird-token" in who.headers
    assert me.json()["org_slug"] == "acme"
    assert org.json() == {"org_id": "org_acme", "org_slug": "acme", "you": "admin"}
    assert hits.json() == {"rows": 1, "data": [{"org": "acme", "hits": 3}]}
    assert "x-tinybird-token" not in health.headers
