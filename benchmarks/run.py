"""Benchmarks of clerk-tinybird-middleware against bare apps measured in the same run.

Run ``.venv/bin/python benchmarks/run.py`` (``make bench``); ``--quick`` for a smoke run,
``--json PATH`` (``-`` for stdout) for machine-readable results, ``--only a,b`` for some rows.

Every in-process variant runs once per repetition, interleaved (the order rotates each
repetition), and each row is the median over repetitions of the per-repetition ratio, so
drift of the machine hits both sides of a ratio alike. Requests are driven straight into the
ASGI/WSGI callables with prebuilt scopes/environs (each with its own header bytes, as a server
would build them), so the figures are the middleware and the app, not an HTTP client. GC is
off during timed loops. Nothing here asserts a timing; the table reports it.

Rows (targets from the project's performance issue):

(a) warm request (valid ``__session`` cookie, cached Tinybird token) / bare Starlette ≤ 1.2x
(b) first sight of a new session token (keys and Tinybird token cached) /
    (bare request + one PyJWT RS256 ``jwt.decode`` with a key object) ≤ 1.1x
(c) our warm request / clerk-backend-api ``authenticate_request`` (networkless, PEM) in a
    pure ASGI middleware ≤ 0.2x
(d) Flask + ``ClerkTinybird`` warm / bare Flask ≤ 1.3x
(e) longest gap of a 1 ms ticker while 100 cold requests wait on a Clerk that answers after
    200 ms (JWKS and template) < 5 ms
(f) template calls for 1000 requests over 50 tenants = 50
(g) requests/s under uvicorn (1 worker, loopback, wrk or an httpx loop), ours / bare ≥ 0.95x
(h) refresh ahead: requests that waited > 150 ms while 50 tenants request every 50 ms for 3
    token lifetimes against a Clerk answering after 300 ms = 50 (each tenant's first)
(i) warm request through RedisTokenCache / MemoryTokenCache ≈ 1.0x; cold miss via Redis
(j) warm request with N active sessions / with 100 ≤ 1.2x (N up to 100,000)
(k) Django + the middleware / a bare Django view ≤ 1.3x
(l) warm request with an OpenTelemetry SDK collecting / API only ≈ 1.0x (one process each)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import multiprocessing
import os
import platform
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing.connection import Connection
from typing import Any

import httpx
import jwt as pyjwt
import scale
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from clerk_tinybird_middleware import ClerkTinybirdMiddleware, Settings
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]
]
Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]

NOT_BUILT = "n/a (not built)"
ORG = {"id": "org_bench", "slug": "bench", "role": "admin"}


# -- plan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How much to run: repetitions and requests per variant per repetition."""

    reps: int = 9
    parts: int = 10  # each repetition: every variant runs 1/parts of its requests, in turn
    n_warm: int = 3000
    n_cold: int = 250
    n_sdk: int = 300
    n_httpx: int = 400
    n_flask: int = 1500
    e_reps: int = 7
    e_users: int = 100
    e_delay: float = 0.2
    f_requests: int = 1000
    f_tenants: int = 50
    g_reps: int = 7
    g_seconds: float = 3.0
    g_connections: int = 16
    h_tenants: int = 50
    h_lifetime: float = 6.0
    h_margin: float = 3.0
    i_reps: int = 5
    i_tenants: int = 30
    j_sessions: tuple[int, ...] = (100, 1_000, 5_000, 20_000, 100_000)
    j_samples: int = 20_000

    @classmethod
    def quick(cls) -> Plan:
        """A smoke run (~30 s): every row produces a number; the numbers are not stable."""
        return cls(
            reps=2, parts=2, n_warm=150, n_cold=20, n_sdk=20, n_httpx=20, n_flask=60,
            e_reps=1, e_users=30, f_requests=300, f_tenants=30, g_reps=1, g_seconds=0.5,
            h_tenants=5, h_lifetime=4.0,
            h_margin=2.5, i_reps=1, i_tenants=3, j_sessions=(100, 300), j_samples=600,
        )  # fmt: skip


# -- apps ------------------------------------------------------------------------------------


async def _home(request: Request) -> Response:
    return PlainTextResponse("ok")


def starlette_app(middleware: Sequence[Middleware] = ()) -> Starlette:
    """The app every ASGI variant serves: one route answering ``ok``."""
    return Starlette(routes=[Route("/", _home)], middleware=list(middleware))


class _SDKRequest:
    """What clerk-backend-api's ``authenticate_request`` reads: a ``headers`` mapping."""

    __slots__ = ("headers",)

    def __init__(self, scope: Scope) -> None:
        self.headers = Headers(scope=scope)


class ClerkSDKMiddleware:
    """A pure ASGI middleware around the official SDK's ``authenticate_request`` — the
    comparison point of row (c): networkless (``jwt_key`` = PEM), its result in the state."""

    def __init__(self, app: ASGIApp, jwt_key: str) -> None:
        from clerk_backend_api.security.types import AuthenticateRequestOptions

        self.app = app
        self.options = AuthenticateRequestOptions(jwt_key=jwt_key)

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        from clerk_backend_api.security import authenticate_request

        if scope["type"] == "http":
            state = authenticate_request(_SDKRequest(scope), self.options)
            scope.setdefault("state", {})["clerk_request_state"] = state
        await self.app(scope, receive, send)


def flask_app() -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.get("/")
    def home() -> str:
        return "ok"

    return app


# -- driving ASGI and WSGI apps directly -----------------------------------------------------


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: Message) -> None:
    return None


def asgi_scope(cookie: str | None) -> Scope:
    """A fresh scope as a server builds it: new dicts, new header bytes."""
    headers = [
        (b"host", b"bench.local"),
        (b"user-agent", b"bench/1.0"),
        (b"accept", b"*/*"),
    ]
    if cookie is not None:
        headers.append((b"cookie", cookie.encode("latin-1")))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


def wsgi_environ(cookie: str | None) -> Environ:
    """A fresh PEP 3333 environ for ``GET /``, as a server builds it."""
    environ: Environ = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "bench.local",
        "HTTP_USER_AGENT": "bench/1.0",
        "HTTP_ACCEPT": "*/*",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if cookie is not None:
        # A new str object, as a server builds one per request: its hash is not cached yet.
        environ["HTTP_COOKIE"] = cookie.encode("latin-1").decode("latin-1")
    return environ


class _Timed:
    """``with _Timed() as t:`` → ``t.ns``; collects garbage first and keeps GC off inside."""

    def __init__(self) -> None:
        self.ns = 0
        self._start = 0

    def __enter__(self) -> _Timed:
        gc.collect()
        gc.disable()
        self._start = time.perf_counter_ns()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ns = time.perf_counter_ns() - self._start
        gc.enable()


async def time_asgi(app: ASGIApp, scopes: list[Scope]) -> int:
    """Nanoseconds for ``scopes``, one request after the other."""
    with _Timed() as timer:
        for scope in scopes:
            await app(scope, _receive, _discard)
    return timer.ns


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def time_wsgi(app: WSGIApp, environs: list[Environ]) -> int:
    with _Timed() as timer:
        for environ in environs:
            body = app(environ, _start_response)
            for _chunk in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
    return timer.ns


async def asgi_response(app: ASGIApp, scope: Scope) -> tuple[int, dict[bytes, bytes]]:
    """Status and headers of one request (setup checks, untimed)."""
    start: list[Message] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            start.append(message)

    await app(scope, _receive, send)
    return start[0]["status"], dict(start[0].get("headers", []))


def wsgi_response(app: WSGIApp, environ: Environ) -> tuple[str, dict[str, str]]:
    seen: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append((status, headers))

    body = app(environ, start_response)
    b"".join(body)
    close = getattr(body, "close", None)
    if close is not None:
        close()
    return seen[0][0], {name.lower(): value for name, value in seen[0][1]}


def check(condition: bool, what: str) -> None:
    """Setup checks: a benchmark of a broken setup would measure the wrong thing."""
    if not condition:
        raise RuntimeError(f"benchmark setup broken: {what}")


# -- the in-process table: (a) (b) (c) (d) -----------------------------------------------------


@dataclass
class Variant:
    """A way to serve a request; ``run(rep, part)`` times part ``part`` of repetition ``rep``
    and returns (nanoseconds, requests)."""

    name: str
    run: Callable[[int, int], Awaitable[tuple[int, int]]]
    samples: list[float] = field(default_factory=list)  # ns per request, one per repetition


def _parts(items: list[Any], part: int, parts: int) -> list[Any]:
    size = -(-len(items) // parts)
    return items[part * size : (part + 1) * size]


def _asgi_variant(
    name: str, app: ASGIApp, cookies: Callable[[int], list[str]], parts: int
) -> Variant:
    async def run(rep: int, part: int) -> tuple[int, int]:
        scopes = [asgi_scope(cookie) for cookie in _parts(cookies(rep), part, parts)]
        return await time_asgi(app, scopes), len(scopes)

    return Variant(name, run)


def _wsgi_variant(
    name: str, app: WSGIApp, cookies: Callable[[int], list[str]], parts: int
) -> Variant:
    async def run(rep: int, part: int) -> tuple[int, int]:
        environs = [wsgi_environ(cookie) for cookie in _parts(cookies(rep), part, parts)]
        return time_wsgi(app, environs), len(environs)

    return Variant(name, run)


def _httpx_variant(name: str, app: ASGIApp, cookie: str, n: int, parts: int) -> Variant:
    count = -(-n // parts)

    async def run(rep: int, part: int) -> tuple[int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench.local") as client:
            headers = {"cookie": cookie}
            await client.get("/", headers=headers)
            with _Timed() as timer:
                for _ in range(count):
                    await client.get("/", headers=headers)
        return timer.ns, count

    return Variant(name, run)


def _find(app: Any, kind: type[Any]) -> Any:
    """The middleware instance of ``kind`` inside a built Starlette stack."""
    node = getattr(app, "middleware_stack", None) or app
    while node is not None and not isinstance(node, kind):
        node = getattr(node, "app", None)
    return node


def _close_edges(apps: Iterable[Any]) -> Iterator[Awaitable[None]]:
    for app in apps:
        found = _find(app, ClerkTinybirdMiddleware)
        if found is not None:
            yield found.aclose()


@dataclass
class Clerk:
    """The loopback FakeClerk (template signed with the FakeTinybird admin token)."""

    fake: FakeClerk
    url: str
    public_key: RSAPublicKey

    def settings(self, **overrides: Any) -> Settings:
        return Settings(secret_key=self.fake.secret_key, clerk_api_url=self.url, **overrides)

    def token(self, user: str = "user_bench", org: dict[str, str] | None = None, **kw: Any) -> str:
        # An hour-long token so a long run never crosses its exp; cost does not depend on it.
        return self.fake.session_token(user, org=org or ORG, lifetime=3600, **kw)


async def in_process_table(clerk: Clerk, plan: Plan, only: set[str]) -> dict[str, Variant]:
    warm_token = clerk.token()
    warm_cookie = f"__session={warm_token}"

    def warm(n: int) -> Callable[[int], list[str]]:
        return lambda rep: [warm_cookie] * n

    variants: list[Variant] = []
    apps: list[Any] = []
    parts = plan.parts

    bare = starlette_app()
    ours = starlette_app([Middleware(ClerkTinybirdMiddleware, clerk.settings())])
    ours_pem = starlette_app(
        [Middleware(ClerkTinybirdMiddleware, clerk.settings(jwt_key=clerk.fake.public_key_pem))]
    )
    apps += [ours, ours_pem]
    for app in (ours, ours_pem):  # first request: loads the keys and the Tinybird token
        status, headers = await asgi_response(app, asgi_scope(warm_cookie))
        check(status == 200 and b"x-tinybird-token" in headers, "warm request got no token")

    if only & {"a", "c"}:
        variants += [
            _asgi_variant("bare starlette", bare, warm(plan.n_warm), parts),
            _asgi_variant("ours warm (JWKS)", ours, warm(plan.n_warm), parts),
        ]
    if "a" in only:
        variants += [
            _asgi_variant("ours warm (PEM)", ours_pem, warm(plan.n_warm), parts),
            _httpx_variant("httpx: bare starlette", bare, warm_cookie, plan.n_httpx, parts),
            _httpx_variant("httpx: ours warm", ours, warm_cookie, plan.n_httpx, parts),
        ]

    if "b" in only:
        # Distinct token strings for one session of another user of the org (so the memo's
        # per-user bound never evicts row (a)'s session): new to the verifier, while the keys
        # and the tenant's Tinybird token are cached.
        cold_user = "user_bench_b"
        first = clerk.token(cold_user)
        status, headers = await asgi_response(ours, asgi_scope(f"__session={first}"))
        check(status == 200 and b"x-tinybird-token" in headers, "cold user got no token")
        cold_sid = pyjwt.decode(first, options={"verify_signature": False})["sid"]
        cold = [
            [clerk.token(cold_user, session_id=cold_sid) for _ in range(plan.n_cold)]
            for _ in range(plan.reps)
        ]
        cookies = [[f"__session={token}" for token in tokens] for tokens in cold]
        key = clerk.public_key

        async def bare_plus_pyjwt(rep: int, part: int) -> tuple[int, int]:
            tokens = _parts(cold[rep], part, parts)
            scopes = [asgi_scope(None) for _ in tokens]
            with _Timed() as timer:
                for scope, token in zip(scopes, tokens, strict=True):
                    pyjwt.decode(token, key, algorithms=["RS256"], leeway=5)
                    await bare(scope, _receive, _discard)
            return timer.ns, len(scopes)

        variants += [
            Variant("bare + PyJWT decode", bare_plus_pyjwt),
            _asgi_variant("ours cold token", ours, lambda rep: cookies[rep], parts),
        ]

    if "c" in only:
        sdk = starlette_app([Middleware(ClerkSDKMiddleware, jwt_key=clerk.fake.public_key_pem)])
        scope = asgi_scope(warm_cookie)
        status, _ = await asgi_response(sdk, scope)
        verdict = scope["state"]["clerk_request_state"]
        check(status == 200 and verdict.is_signed_in, f"SDK did not sign in: {verdict.reason}")
        variants.append(_asgi_variant("clerk-backend-api", sdk, warm(plan.n_sdk), parts))

    if "d" in only:
        variants += flask_variants(clerk, warm_cookie, plan, apps, parts)
    if "k" in only:
        variants += django_variants(clerk, warm_cookie, plan, apps, parts)

    results: dict[str, Variant] = {v.name: v for v in variants}
    try:
        for rep in range(plan.reps):
            totals = {variant.name: [0, 0] for variant in variants}
            for part in range(parts):
                shift = (rep * parts + part) % max(len(variants), 1)
                for variant in variants[shift:] + variants[:shift]:
                    ns, count = await variant.run(rep, part)
                    totals[variant.name][0] += ns
                    totals[variant.name][1] += count
            for variant in variants:
                ns, count = totals[variant.name]
                variant.samples.append(ns / count)
            _progress(f"rep {rep + 1}/{plan.reps}")
    finally:
        await asyncio.gather(*_close_edges(apps))
        for app in apps:
            close = getattr(getattr(app, "extensions", {}).get("clerk_tinybird"), "close", None)
            if close is not None:
                close()
    return results


def flask_variants(
    clerk: Clerk, warm_cookie: str, plan: Plan, apps: list[Any], parts: int
) -> list[Variant]:
    """Bare Flask, Flask + ``ClerkTinybird``, bare Flask under the WSGI middleware."""
    try:
        from clerk_tinybird_middleware.flask import ClerkTinybird
        from clerk_tinybird_middleware.wsgi import ClerkTinybirdWSGIMiddleware
    except ImportError:
        return []
    bare = flask_app()
    ours = flask_app()
    ClerkTinybird(ours, clerk.settings())
    apps.append(ours)
    plain = flask_app()
    wrapped = ClerkTinybirdWSGIMiddleware(plain.wsgi_app, clerk.settings())
    plain.wsgi_app = wrapped
    apps.append(plain)
    plain.extensions["clerk_tinybird"] = wrapped  # so it is closed with the others
    for app in (ours, plain):
        status, headers = wsgi_response(app, wsgi_environ(warm_cookie))
        check(status.startswith("200") and "x-tinybird-token" in headers, "flask: no token")
    cookies = [warm_cookie] * plan.n_flask
    return [
        _wsgi_variant("bare flask", bare, lambda rep: cookies, parts),
        _wsgi_variant("flask + ClerkTinybird", ours, lambda rep: cookies, parts),
        _wsgi_variant("flask + WSGI middleware", plain, lambda rep: cookies, parts),
    ]


class _URLConf:
    """A URL configuration object (what Django's ``request.urlconf`` may hold)."""

    def __init__(self, urlpatterns: list[Any]) -> None:
        self.urlpatterns = urlpatterns


def django_app(urlconf: _URLConf) -> Any:
    """Django's own WSGI handler (the chain in ``settings.MIDDLEWARE`` when it is built),
    routing with ``urlconf``: one view answering ``ok``."""
    from django.core.handlers.wsgi import WSGIHandler

    class Handler(WSGIHandler):  # type: ignore[misc]
        def get_response(self, request: Any) -> Any:
            request.urlconf = urlconf
            return super().get_response(request)

    return Handler()


def django_variants(
    clerk: Clerk, warm_cookie: str, plan: Plan, apps: list[Any], parts: int
) -> list[Variant]:
    """A bare Django view, and the same with ``clerk_tinybird_middleware.django`` in
    ``MIDDLEWARE`` (Django's handler called directly with environs, as a WSGI server would)."""
    try:
        import django
        from django.conf import settings as django_settings
        from django.http import HttpResponse
        from django.test.utils import override_settings
        from django.urls import path

        from clerk_tinybird_middleware.django import ClerkTinybirdMiddleware as DjangoMiddleware
    except ImportError:
        return []
    if not django_settings.configured:
        django_settings.configure(
            DEBUG=False,
            SECRET_KEY="benchmark-only",
            ALLOWED_HOSTS=["bench.local"],
            ROOT_URLCONF=None,
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
            LOGGING_CONFIG=None,
        )
        django.setup()
    urlconf = _URLConf([path("", lambda request: HttpResponse("ok"))])
    bare = django_app(urlconf)
    middleware = ["clerk_tinybird_middleware.django.ClerkTinybirdMiddleware"]
    with override_settings(MIDDLEWARE=middleware), DjangoMiddleware.configured(clerk.settings()):
        ours = django_app(urlconf)
    check(wsgi_response(bare, wsgi_environ(warm_cookie))[0].startswith("200"), "django: bare")
    status, headers = wsgi_response(ours, wsgi_environ(warm_cookie))
    check(status.startswith("200") and "x-tinybird-token" in headers, "django: no token")
    cookies = [warm_cookie] * plan.n_flask
    return [
        _wsgi_variant("bare django", bare, lambda rep: cookies, parts),
        _wsgi_variant("django + middleware", ours, lambda rep: cookies, parts),
    ]


# -- (e) the event loop while 100 cold requests wait on a slow Clerk ------------------------


@dataclass
class SlowClerk:
    """A FakeClerk that answers JWKS and template calls after ``delay``, served by a forked
    child process: its server threads then never compete with the measured loop for the GIL."""

    url: str
    secret_key: str
    tokens: list[str]
    conn: Connection
    process: Any

    def calls(self) -> dict[str, int]:
        self.conn.send("calls")
        calls: dict[str, int] = self.conn.recv()
        return calls

    def reset(self) -> None:
        self.conn.send("reset")
        self.conn.recv()

    def stop(self) -> None:
        with suppress(OSError):
            self.conn.send("stop")
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def _serve_slow(fake: FakeClerk, conn: Connection, delay: float) -> None:
    fake.inject("jwks", delay=delay)
    fake.inject("template", delay=delay)
    with fake.serve() as url:
        conn.send(url)
        while True:
            try:
                message = conn.recv()
            except EOFError:
                return
            if message == "calls":
                conn.send(dict(fake.calls))
            elif message == "reset":
                fake.reset_calls()
                conn.send(None)
            else:
                return


def start_slow_clerk(users: int, delay: float, *, template_lifetime: int = 600) -> SlowClerk:
    """Mint the tokens, then fork the server (before this process starts any thread)."""
    tinybird = FakeTinybird()
    fake = FakeClerk()
    fake.add_tinybird_template(
        tinybird.admin_token, tinybird.workspace_id, lifetime=template_lifetime
    )
    tokens = [
        fake.session_token(
            f"user_e{i}", org={"id": f"org_e{i}", "slug": f"tenant-e{i}", "role": "admin"},
            lifetime=3600,
        )
        for i in range(users)
    ]  # fmt: skip
    context = multiprocessing.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_slow, args=(fake, child, delay), daemon=True)
    process.start()
    child.close()
    if not parent.poll(15):
        process.kill()
        raise RuntimeError("the slow FakeClerk did not start")
    return SlowClerk(parent.recv(), fake.secret_key, tokens, parent, process)


@dataclass
class BurstResult:
    gap_ms: float
    wall_ms: float
    with_token: int
    jwks_calls: int
    template_calls: int


async def cold_burst(slow: SlowClerk, bare: Starlette) -> BurstResult:
    """One fresh middleware (no keys yet), 100 users at once, a 1 ms ticker alongside."""
    slow.reset()
    app = ClerkTinybirdMiddleware(
        bare, Settings(secret_key=slow.secret_key, clerk_api_url=slow.url)
    )
    done = asyncio.Event()
    worst = 0

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter_ns()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter_ns()
            worst = max(worst, now - last)
            last = now

    async def one(token: str) -> bool:
        _, headers = await asgi_response(app, asgi_scope(f"__session={token}"))
        return b"x-tinybird-token" in headers

    gc.collect()  # start each burst from a clean heap (GC stays on: its pauses are real)
    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    worst = 0
    start = time.perf_counter_ns()
    try:
        got = await asyncio.gather(*(one(token) for token in slow.tokens))
        wall = time.perf_counter_ns() - start
    finally:
        done.set()
        await tick
        await app.aclose()
    calls = slow.calls()
    return BurstResult(
        worst / 1e6, wall / 1e6, sum(got), calls.get("jwks", 0), calls.get("template", 0)
    )


async def idle_gap() -> float:
    """The same ticker on an idle loop: the floor of row (e)."""
    worst = 0
    last = time.perf_counter_ns()
    for _ in range(300):
        await asyncio.sleep(0.001)
        now = time.perf_counter_ns()
        worst = max(worst, now - last)
        last = now
    return worst / 1e6


# -- (f) template calls over 50 tenants ------------------------------------------------------


async def template_calls(clerk: Clerk, plan: Plan) -> tuple[int, int, int]:
    """(template calls, requests answered with a token, requests) for ``f_requests``
    requests over ``f_tenants`` tenants, 100 in flight at a time, on a fresh middleware."""
    tokens = [
        clerk.token(f"user_f{i}", {"id": f"org_f{i}", "slug": f"tenant-f{i}", "role": "admin"})
        for i in range(plan.f_tenants)
    ]
    app = ClerkTinybirdMiddleware(starlette_app(), clerk.settings())
    picks = random.Random(50).choices(tokens, k=plan.f_requests)
    clerk.fake.reset_calls()

    async def one(token: str) -> bool:
        _, headers = await asgi_response(app, asgi_scope(f"__session={token}"))
        return b"x-tinybird-token" in headers

    got = 0
    try:
        for i in range(0, len(picks), 100):
            got += sum(await asyncio.gather(*(one(t) for t in picks[i : i + 100])))
    finally:
        await app.aclose()
    return clerk.fake.calls["template"], got, len(picks)


# -- (g) uvicorn under load ------------------------------------------------------------------


SERVER_KINDS = ("ours", "bare", "headers", "ours-no-header")  # "ours" first: it sizes "headers"


def _static_headers_app(token_length: int) -> Starlette:
    """A bare app whose response carries headers shaped like ours (a token of the same
    length): what the extra bytes alone cost under uvicorn, with no middleware."""
    headers = {
        "cache-control": "private, no-store",
        "vary": "Cookie, Authorization",
        "x-tinybird-token": "t" * token_length,
        "x-tinybird-token-expires-at": str(int(time.time()) + 600),
    }

    async def home(request: Request) -> Response:
        return PlainTextResponse("ok", headers=headers)

    return Starlette(routes=[Route("/", home)])


def serve(kind: str, port: int) -> None:
    """``--serve``: the uvicorn child of row (g). Settings come from the environment."""
    import uvicorn

    if kind == "ours":
        app = starlette_app([Middleware(ClerkTinybirdMiddleware, Settings.from_env())])
    elif kind == "ours-no-header":
        settings = Settings.from_env().replace(token_header=None)
        app = starlette_app([Middleware(ClerkTinybirdMiddleware, settings)])
    elif kind == "headers":
        app = _static_headers_app(int(os.environ["BENCH_TOKEN_LENGTH"]))
    else:
        app = starlette_app()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A uvicorn child process serving one of ``SERVER_KINDS`` on a free loopback port."""

    def __init__(self, kind: str, clerk: Clerk, token_length: int = 0) -> None:
        self.kind = kind
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {
            **os.environ,
            "CLERK_SECRET_KEY": clerk.fake.secret_key,
            "CLERK_API_URL": clerk.url,
            "PYTHONUNBUFFERED": "1",
            "BENCH_TOKEN_LENGTH": str(token_length),
        }
        for name in ("CLERK_JWT_KEY", "CLERK_PUBLISHABLE_KEY", "CLERK_TINYBIRD_REDIS_URL"):
            env.pop(name, None)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve", kind, "--port", str(self.port)],
            env=env,
        )

    def wait_ready(self, cookie: str, timeout: float = 20) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = httpx.get(self.url, headers={"cookie": cookie}, timeout=5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"uvicorn ({self.kind}) did not start") from None
                time.sleep(0.1)
        check(response.status_code == 200, f"uvicorn ({self.kind}) answered {response.status_code}")
        if self.kind == "ours":
            check("x-tinybird-token" in response.headers, "uvicorn (ours) handed out no token")
        return response

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def wrk_rps(url: str, cookie: str, seconds: float, connections: int) -> float:
    """Requests/s from one bounded wrk run (1 thread: the other core serves)."""
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
        "-H", f"Cookie: {cookie}", url,
    ]  # fmt: skip
    out = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, check=True
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    check(errors is None, f"wrk saw non-2xx responses: {errors and errors.group(1)}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError("benchmark setup broken: wrk printed no Requests/sec")
    return float(found.group(1))


async def _httpx_load(url: str, cookie: str, seconds: float, connections: int) -> float:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    done = 0
    async with httpx.AsyncClient(limits=limits, headers={"cookie": cookie}) as client:
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                response = await client.get(url)
                check(response.status_code == 200, f"load: {response.status_code}")
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - start
    return done / elapsed


def httpx_rps(url: str, cookie: str, seconds: float, connections: int) -> float:
    return asyncio.run(_httpx_load(url, cookie, seconds, connections))


def uvicorn_table(clerk: Clerk, plan: Plan) -> tuple[str, dict[str, list[float]]]:
    """(load generator, requests/s samples per server), runs interleaved."""
    cookie = f"__session={clerk.token()}"
    tool = "wrk" if shutil.which("wrk") else "httpx"
    load = wrk_rps if tool == "wrk" else httpx_rps
    samples: dict[str, list[float]] = {kind: [] for kind in SERVER_KINDS}
    with ExitStack() as stack:
        servers = []
        token_length = 0
        for kind in SERVER_KINDS:
            server = Server(kind, clerk, token_length)
            stack.callback(server.stop)
            response = server.wait_ready(cookie)
            token_length = token_length or len(response.headers.get("x-tinybird-token", ""))
            load(server.url, cookie, 1.0, plan.g_connections)  # warm-up, not recorded
            servers.append(server)
        for rep in range(plan.g_reps):
            shift = rep % len(servers)
            for server in servers[shift:] + servers[:shift]:
                samples[server.kind].append(
                    load(server.url, cookie, plan.g_seconds, plan.g_connections)
                )
            _progress(f"uvicorn rep {rep + 1}/{plan.g_reps}")
    return f"{tool} -t1 -c{plan.g_connections} -d{plan.g_seconds:g}s", samples


# -- the table -------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table; ``met`` is None for rows that only explain another."""

    id: str
    measure: str
    value: float | None
    unit: str
    target: str
    met: bool | None
    detail: str = ""

    def shown(self) -> str:
        if self.value is None:
            return NOT_BUILT
        if self.unit == "x":
            return f"{self.value:.2f}x"
        if self.unit == "ms":
            return f"{self.value:.1f} ms"
        return f"{self.value:g}"


def _ratios(top: Variant, bottom: Variant) -> float:
    return statistics.median(a / b for a, b in zip(top.samples, bottom.samples, strict=True))


def _us(variant: Variant) -> str:
    return f"{statistics.median(variant.samples) / 1000:.1f} µs"


def ratio_row(
    row: str, measure: str, v: dict[str, Variant], top: str, bottom: str, limit: float,
    note: str = "",
) -> Row:  # fmt: skip
    """Median of per-repetition ``top / bottom``; "n/a (not built)" when a side is missing."""
    if top not in v or bottom not in v or not v[top].samples:
        return Row(row, measure, None, "x", f"≤ {limit}x", None)
    value = _ratios(v[top], v[bottom])
    detail = f"{_us(v[top])} vs {_us(v[bottom])}" + (f"; {note}" if note else "")
    return Row(row, measure, value, "x", f"≤ {limit}x", value <= limit, detail)


def render(rows: list[Row], machine: dict[str, Any], plan: Plan) -> str:
    lines = [
        f"clerk-tinybird-middleware benchmarks — {machine['cpus']} CPUs"
        f" ({machine['cpu']}), Python {machine['python']}, {machine['platform']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"package: {machine['package']}; load average at start: "
        + " ".join(str(x) for x in machine["load_average"]),
        f"(a)-(d), (k): median over {plan.reps} interleaved repetitions of the ratio within each;"
        " GC off in timed loops; requests driven straight into the ASGI/WSGI app."
        f" (e): median of {plan.e_reps} bursts. (g): median of {plan.g_reps} runs per server.",
        "",
    ]
    width = max(len(r.measure) for r in rows)
    lines.append(f"{'':4}{'measure':<{width}}  {'value':>15}  {'target':<9} {'met':<4} detail")
    for r in rows:
        met = "" if r.met is None else "yes" if r.met else "NO"
        lines.append(
            f"({r.id}) {r.measure:<{width}}  {r.shown():>15}  {r.target:<9} {met:<4} {r.detail}"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for dist in ("starlette", "flask", "pyjwt", "cryptography", "clerk-backend-api", "uvicorn"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "-"
    import clerk_tinybird_middleware

    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "package": os.path.dirname(clerk_tinybird_middleware.__file__),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpus": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.release()}",
        "versions": versions,
    }


def _progress(text: str) -> None:
    print(f"  … {text}", file=sys.stderr, flush=True)


async def measure(plan: Plan, only: set[str], slow: SlowClerk | None) -> tuple[list[Row], Any]:
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    tinybird = FakeTinybird()
    fake = FakeClerk()
    fake.add_tinybird_template(tinybird.admin_token, tinybird.workspace_id)
    with fake.serve() as url:
        public_key = fake.private_key.public_key()
        clerk = Clerk(fake, url, public_key)
        v: dict[str, Variant] = {}
        if only & set("abcdk"):
            _progress("in-process variants (a-d)")
            v = await in_process_table(clerk, plan, only)
            raw["ns_per_request"] = {name: var.samples for name, var in v.items()}
        if "a" in only:
            rows.append(ratio_row("a", "warm request / bare Starlette", v,
                                  "ours warm (JWKS)", "bare starlette", 1.2, "JWKS"))  # fmt: skip
            rows.append(ratio_row("a", "  same, PEM key (CLERK_JWT_KEY)", v,
                                  "ours warm (PEM)", "bare starlette", 1.2))  # fmt: skip
            rows.append(ratio_row("a", "  same, through httpx.ASGITransport", v,
                                  "httpx: ours warm", "httpx: bare starlette", 1.5))  # fmt: skip
        if "b" in only:
            rows.append(ratio_row("b", "new session token / (bare + PyJWT decode)", v,
                                  "ours cold token", "bare + PyJWT decode", 1.1))  # fmt: skip
        if "c" in only:
            rows.append(ratio_row("c", "warm request / clerk-backend-api middleware", v,
                                  "ours warm (JWKS)", "clerk-backend-api", 0.2))  # fmt: skip
        if "d" in only:
            rows.append(ratio_row("d", "Flask + ClerkTinybird / bare Flask", v,
                                  "flask + ClerkTinybird", "bare flask", 1.3))  # fmt: skip
            rows.append(ratio_row("d", "  same, WSGI middleware only", v,
                                  "flask + WSGI middleware", "bare flask", 1.3))  # fmt: skip
        if "k" in only:
            rows.append(ratio_row("k", "Django + middleware / bare Django view", v,
                                  "django + middleware", "bare django", 1.3))  # fmt: skip
        if "e" in only and slow is not None:
            _progress("(e) cold burst against a 200 ms Clerk")
            idle = await idle_gap()
            bursts = []
            for _ in range(plan.e_reps):
                bursts.append(await cold_burst(slow, starlette_app()))
            gaps = [b.gap_ms for b in bursts]
            gap = statistics.median(gaps)
            last = bursts[-1]
            raw["e"] = {"idle_gap_ms": idle, "bursts": [b.__dict__ for b in bursts]}
            rows.append(Row(
                "e", f"longest 1 ms-ticker gap, {len(slow.tokens)} cold requests", gap, "ms",
                "< 5 ms", gap < 5,
                f"worst {max(gaps):.1f} ms; idle loop {idle:.1f} ms; burst took "
                f"{statistics.median(b.wall_ms for b in bursts):.0f} ms; "
                f"{last.with_token}/{len(slow.tokens)} got a token; "
                f"Clerk calls: jwks {last.jwks_calls}, template {last.template_calls}",
            ))  # fmt: skip
        if "f" in only:
            _progress("(f) template calls over 50 tenants")
            calls, got, total = await template_calls(clerk, plan)
            raw["f"] = {"template_calls": calls, "with_token": got, "requests": total}
            rows.append(Row(
                "f", f"template calls, {total} requests over {plan.f_tenants} tenants", calls,
                "n", f"= {plan.f_tenants}", calls == plan.f_tenants,
                f"{got}/{total} requests got a token; 100 in flight at a time",
            ))  # fmt: skip
        if "g" in only:
            _progress("(g) uvicorn under load")
            tool, rps = await asyncio.to_thread(uvicorn_table, clerk, plan)
            raw["g"] = {"tool": tool, "rps": rps}
            ratio = statistics.median(o / b for o, b in zip(rps["ours"], rps["bare"], strict=True))
            same = statistics.median(
                o / h for o, h in zip(rps["ours"], rps["headers"], strict=True)
            )
            wire = statistics.median(
                h / b for h, b in zip(rps["headers"], rps["bare"], strict=True)
            )
            rows.append(Row(
                "g", "requests/s under uvicorn, ours / bare", ratio, "x", "≥ 0.95x", ratio >= 0.95,
                f"{statistics.median(rps['ours']):.0f} vs {statistics.median(rps['bare']):.0f}"
                f" req/s; {tool}; 1 worker, loopback",
            ))  # fmt: skip
            rows.append(Row(
                "g", "  bare app sending the same headers / bare", wire, "x", "", None,
                "what ~0.7 KB more response headers cost under uvicorn, no middleware",
            ))  # fmt: skip
            rows.append(Row(
                "g", "  ours / that app (the middleware's own share)", same, "x", "", None,
                f"{statistics.median(rps['headers']):.0f} req/s for the headers-only app",
            ))  # fmt: skip
            quiet = statistics.median(
                o / b for o, b in zip(rps["ours-no-header"], rps["bare"], strict=True)
            )
            rows.append(Row(
                "g", "  ours with token_header=None / bare", quiet, "x", "", None,
                f"{statistics.median(rps['ours-no-header']):.0f} req/s; token on request.state"
                " only (CLERK_TINYBIRD_TOKEN_HEADER=)",
            ))  # fmt: skip
        if "h" in only:
            _progress("(h) refresh ahead under a 300 ms Clerk")
            rows.append(await refresh_row(plan))
        if "i" in only:
            _progress("(i) Redis")
            rows += await redis_table(clerk.fake, clerk.url, plan)
        if "j" in only:
            _progress("(j) many active sessions")
            rows += await sessions_table(clerk.fake, plan)
        if "l" in only:
            _progress("(l) metrics on and off, one process each")
            rows.append(await asyncio.to_thread(metrics_row, plan))
    return rows, raw


# -- (l) the warm path with an OpenTelemetry SDK collecting, and without -----------------------


def metrics_probe(mode: str, quick: bool) -> dict[str, float]:
    """In a process of its own (an SDK's MeterProvider is process-wide): the warm request /
    bare Starlette ratio with ``mode`` ``on`` (the OpenTelemetry SDK's MeterProvider with an
    in-memory reader, collected once the timing is done) or ``off`` (the API only, no SDK)."""
    reader = None
    if mode == "on":
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    plan = Plan.quick() if quick else Plan()
    fake = FakeClerk()
    tinybird = FakeTinybird()
    fake.add_tinybird_template(tinybird.admin_token, tinybird.workspace_id)
    with fake.serve() as url:
        clerk = Clerk(fake, url, fake.private_key.public_key())
        variants = asyncio.run(in_process_table(clerk, plan, {"a"}))
    collected = 0
    if reader is not None:
        data = reader.get_metrics_data()
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                collected += len(scope.metrics)
    ours, bare = variants["ours warm (JWKS)"], variants["bare starlette"]
    return {
        "ratio": _ratios(ours, bare),
        "ours_ns": statistics.median(ours.samples),
        "instruments": collected,
    }


def metrics_row(plan: Plan) -> Row:
    quick = plan.reps < Plan().reps
    results = {}
    for mode in ("off", "on"):
        done = subprocess.run(
            [sys.executable, __file__, "--metrics-probe", mode, *(["--quick"] if quick else [])],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if done.returncode != 0:
            return Row("l", "warm request, OpenTelemetry SDK on / off", None, "x", "≈ 1.0x",
                       None, f"probe failed: {done.stderr.strip()[-200:]}")  # fmt: skip
        results[mode] = json.loads(done.stdout)
    ratio = results["on"]["ratio"] / results["off"]["ratio"]
    return Row(
        "l", "warm request, OpenTelemetry SDK on / off", ratio, "x", "≈ 1.0x",
        abs(ratio - 1) <= 0.05,
        f"(ours/bare) {results['on']['ratio']:.2f}x with an SDK reader vs"
        f" {results['off']['ratio']:.2f}x API only ({results['on']['ours_ns'] / 1000:.1f} vs"
        f" {results['off']['ours_ns'] / 1000:.1f} µs); {results['on']['instruments']} instruments"
        " collected; one process each",
    )  # fmt: skip


async def refresh_row(plan: Plan) -> Row:
    slow = await asyncio.to_thread(
        start_slow_clerk, plan.h_tenants, 0.3, template_lifetime=int(plan.h_lifetime)
    )
    try:
        result = await scale.refresh_ahead(
            slow.url, slow.secret_key, slow.tokens, slow.calls,
            lifetime=plan.h_lifetime, margin=plan.h_margin,
        )  # fmt: skip
    finally:
        slow.stop()
    return Row(
        "h", f"requests waiting > 150 ms, {plan.h_tenants} tenants, 3 lifetimes", result.waited,
        "n", f"= {plan.h_tenants}", result.waited == plan.h_tenants,
        f"{result.first_of_tenant} of them first requests; {result.requests} requests every 50 ms;"
        f" {plan.h_lifetime:g} s tokens, {plan.h_margin:g} s margin, Clerk answers after 300 ms;"
        f" template calls {result.template_calls}; slowest {result.worst_ms:.0f} ms",
    )  # fmt: skip


async def redis_table(fake: FakeClerk, url: str, plan: Plan) -> list[Row]:
    with scale.redis_server() as redis_url:
        if redis_url is None:
            return [Row("i", "warm request through Redis / in-process cache", None, "x", "≈ 1.0x",
                        None, "redis-server not installed")]  # fmt: skip
        result = await scale.redis_rows(fake, url, redis_url, plan.i_reps, plan.i_tenants)
    return [
        Row("i", "warm request through RedisTokenCache / MemoryTokenCache", result.warm_ratio,
            "x", "≈ 1.0x", abs(result.warm_ratio - 1) <= 0.05,
            f"{result.warm_redis_ns / 1000:.1f} µs vs {result.warm_memory_ns / 1000:.1f} µs:"
            " warm requests do not touch Redis"),
        Row("i", "  cold miss: through Redis / direct (ms, median)", result.cold_redis_ms, "ms",
            "", None, f"{result.cold_redis_ms:.1f} ms vs {result.cold_direct_ms:.1f} ms direct; "
            "FakeClerk in process, Redis on loopback"),
    ]  # fmt: skip


async def sessions_table(fake: FakeClerk, plan: Plan) -> list[Row]:
    tokens = await asyncio.to_thread(scale.session_tokens, fake, max(plan.j_sessions))
    variants: list[tuple[str, scale.Sessions]] = []
    for n in plan.j_sessions:
        variants.append(("default 128 MiB", await scale.sessions_seen(fake, tokens[:n], 128)))
        if n >= 20_000:
            memo = "CLERK_TINYBIRD_MEMO_MB=512"
            variants.append((memo, await scale.sessions_seen(fake, tokens[:n], 512)))
    for rep in range(plan.reps):
        shift = rep % len(variants)
        for _, variant in variants[shift:] + variants[:shift]:
            await variant.sample(plan.j_samples // plan.reps, seed=rep)
    base = variants[0][1]
    rows = []
    for label, variant in variants:
        ratio = statistics.median(a / b for a, b in zip(variant.samples, base.samples, strict=True))
        rows.append(Row(
            "j", f"warm request, {variant.sessions:,} active sessions ({label})", ratio, "x",
            "≤ 1.2x", ratio <= 1.2,
            f"{statistics.median(variant.samples) / 1000:.1f} µs vs"
            f" {statistics.median(base.samples) / 1000:.1f} µs at {base.sessions:,};"
            f" warm hits {statistics.median(variant.hits):.0%};"
            f" memo ~{variant.bytes_per_session / 1024:.1f} KiB per session",
        ))  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    parser.add_argument("--json", metavar="PATH", help="also write results as JSON (- = stdout)")
    parser.add_argument("--only", default="abcdefghijkl", help="rows to run, e.g. a,b,e")
    parser.add_argument("--metrics-probe", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=SERVER_KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=8000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port)
        return 0
    if args.metrics_probe:
        print(json.dumps(metrics_probe(args.metrics_probe, args.quick)))
        return 0

    plan = Plan.quick() if args.quick else Plan()
    only = set(args.only.replace(",", "").lower())
    machine = machine_info()
    # Fork the slow Clerk of row (e) first, while this process has no other thread.
    slow = start_slow_clerk(plan.e_users, plan.e_delay) if "e" in only else None
    try:
        rows, raw = asyncio.run(measure(plan, only, slow))
    finally:
        if slow is not None:
            slow.stop()
    table = render(rows, machine, plan)
    to_stdout = args.json == "-"
    print(table, file=sys.stderr if to_stdout else sys.stdout)
    if args.json:
        document = {
            "machine": machine,
            "plan": plan.__dict__,
            "rows": [r.__dict__ for r in rows],
            "raw": raw,
        }
        text = json.dumps(document, indent=2, ensure_ascii=False)
        if to_stdout:
            print(text)
        else:
            with open(args.json, "w", encoding="utf-8") as handle:
                handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
