"""The one-command demo: an example app, FakeClerk and FakeTinybird, all on 127.0.0.1.

``clerk-tinybird demo`` (or :func:`running` from Python) starts:

* a :class:`FakeTinybird` workspace with a pipe, ``analytics_hits``, holding rows for three
  seeded tenants (``acme``, ``globex``, ``initech``); like a well-written pipe it returns no
  rows at all unless ``org`` is given;
* a :class:`FakeClerk` (Backend and Frontend API) with a ``tinybird`` JWT template
  (``fixed_params`` ``org={{org.slug}}``, ``user={{user.id}}``, signed with the Tinybird admin
  token) and 60-second session tokens, as in production;
* the example app (``starlette``, ``flask`` or ``django``, shipped inside the package),
  configured against both fakes with the handshake on, behind a development sign-in page at
  ``/dev/sign-in`` whose buttons post to FakeClerk's Frontend API.

Signing in is Clerk's flow, not a shortcut: the Frontend API signs the browser in and sends it
back with a handshake nonce, which the middleware trades for the session cookies. With no
Clerk browser SDK in the page to refresh the cookie, the first page load after a minute goes
through the handshake; ``/dev/handshake`` reports the last one, and the dashboard shows it.
The ``/dev/`` routes live here, in front of the example app, not in the library.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import importlib
import importlib.util
import inspect
import json
import random
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from ._types import StartResponse, WSGIApp, WSGIEnviron
from .core.handshake import NONCE as NONCE_PARAM
from .settings import Settings
from .testing import FakeClerk, FakeTinybird
from .testing._server import serve_wsgi

__all__ = [
    "HANDSHAKE_PATH",
    "ORGS",
    "PIPE",
    "SIGN_IN_PATH",
    "USERS",
    "Demo",
    "DemoError",
    "DemoOrg",
    "DemoUser",
    "DevRoutes",
    "HandshakeTrip",
    "HandshakeWatch",
    "demo_settings",
    "pipe_filter",
    "running",
    "seed_rows",
    "sign_in_fields",
]

AppKind = Literal["starlette", "flask", "django"]
SourceKind = Literal["template", "local"]
Response = tuple[int, list[tuple[str, str]], bytes]

PIPE = "analytics_hits"
DEV_PREFIX = "/dev/"
SIGN_IN_PATH = "/dev/sign-in"
HANDSHAKE_PATH = "/dev/handshake"
BROWSER_COOKIE = "demo_browser"
REASON_PARAM = "__clerk_hs_reason"
SESSION_LIFETIME = 60  # seconds, as Clerk's


class DemoError(RuntimeError):
    """The demo cannot start (missing example, bad option); the message says why."""


# -- seeded tenants ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOrg:
    id: str
    slug: str
    name: str


@dataclass(frozen=True)
class DemoUser:
    id: str
    name: str
    memberships: tuple[tuple[str, str], ...]
    """(org slug, role) pairs; a user with none has only a personal account."""


ORGS: tuple[DemoOrg, ...] = (
    DemoOrg("org_acme", "acme", "Acme Corp"),
    DemoOrg("org_globex", "globex", "Globex"),
    DemoOrg("org_initech", "initech", "Initech"),
)
USERS: tuple[DemoUser, ...] = (
    DemoUser("user_alice", "Alice", (("acme", "admin"), ("globex", "member"))),
    DemoUser("user_bob", "Bob", (("acme", "member"),)),
    DemoUser("user_carol", "Carol", (("globex", "admin"), ("initech", "admin"))),
    DemoUser("user_dave", "Dave", ()),
)
_PERMISSIONS = {
    "admin": ("org:reports:read", "org:reports:manage"),
    "member": ("org:reports:read",),
}
_PAGES = ("/", "/pricing", "/docs", "/blog", "/signup")


def org_by_slug(slug: str) -> DemoOrg | None:
    return next((org for org in ORGS if org.slug == slug), None)


def user_by_id(user_id: str) -> DemoUser | None:
    return next((user for user in USERS if user.id == user_id), None)


def seed_rows(days: int = 10, *, today: dt.date | None = None) -> list[dict[str, Any]]:
    """Daily pageviews per (org, member, page) for the last ``days`` days; deterministic."""
    end = today or dt.datetime.now(dt.timezone.utc).date()
    rng = random.Random(20240611)  # noqa: S311 - sample data, not security
    rows: list[dict[str, Any]] = []
    for org_index, org in enumerate(ORGS):
        members = [user for user in USERS if any(s == org.slug for s, _ in user.memberships)]
        for offset in range(days - 1, -1, -1):
            day = (end - dt.timedelta(days=offset)).isoformat()
            for member in members:
                base = 40 + 35 * org_index + rng.randint(0, 60)
                rows.append(
                    {
                        "date": day,
                        "org": org.slug,
                        "user": member.id,
                        "top_page": rng.choice(_PAGES),
                        "pageviews": base,
                        "visits": max(1, base // rng.randint(2, 4)),
                    }
                )
    return rows


def pipe_filter(row: dict[str, Any], params: Mapping[str, str]) -> bool:
    """The demo pipe's SQL, in Python: ``org`` is required, like
    ``{% if not defined(org) %}{{ error('org is required', 400) }}{% end %}``; here a missing
    ``org`` matches nothing. ``user`` is pinned by the token but not filtered on: the
    dashboard shows the whole org."""
    org = params.get("org")
    return bool(org) and row.get("org") == org


def demo_settings(
    clerk: FakeClerk,
    tinybird: FakeTinybird,
    *,
    origins: Iterable[str] = (),
    source: SourceKind = "template",
) -> Settings:
    """Settings for the example app against both fakes, which must be serving (no environment
    is read)."""
    values: dict[str, Any] = {
        "secret_key": clerk.secret_key,
        "clerk_api_url": clerk.api_url,
        "publishable_key": clerk.publishable_key,
        "authorized_parties": tuple(dict.fromkeys(origins)),
        "tinybird_api_url": tinybird.api_url,
        # FakeClerk is the instance's Frontend API too: the handshake goes there.
        "proxy_url": clerk.api_url,
    }
    if source == "local":
        values.update(
            tinybird_workspace_id=tinybird.workspace_id,
            tinybird_jwt_secret=tinybird.admin_token,
            tinybird_scopes=(
                {
                    "type": "PIPES:READ",
                    "resource": PIPE,
                    "fixed_params": {"org": "{{org.slug}}", "user": "{{user.id}}"},
                },
            ),
        )
    elif source != "template":
        raise DemoError(f"unknown token source {source!r}: use 'template' or 'local'")
    return Settings(**values)


# -- development sign-in and the handshake report -------------------------------------------------


def sign_in_fields(user: DemoUser, org_slug: str, redirect_url: str) -> dict[str, str]:
    """The form FakeClerk's Frontend API signs a browser in with (``POST /v1/client/sign_in``):
    ``user`` in the org ``org_slug`` (``""``: the personal account), then back to
    ``redirect_url``. Raises :class:`DemoError` when the user is not a member."""
    fields = {"user_id": user.id, "redirect_url": redirect_url}
    if org_slug:
        role = dict(user.memberships).get(org_slug)
        org = org_by_slug(org_slug)
        if org is None or role is None:
            raise DemoError(f"{user.id} is not a member of {org_slug!r}")
        fields.update(
            org_id=org.id,
            org_slug=org.slug,
            org_role=role,
            org_permissions=",".join(_PERMISSIONS[role]),
        )
    return fields


@dataclass
class _Trip:
    reason: str
    started: float
    redirects: int = 1  # the app's 307 to the Frontend API
    returned: bool = False


@dataclass(frozen=True)
class HandshakeTrip:
    """One finished handshake of one browser, as the app's server saw it: from its ``307`` to
    the Frontend API until the page that ended it was answered."""

    reason: str
    milliseconds: float
    redirects: int
    finished_at: float  # Unix time

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "ms": round(self.milliseconds, 1),
            "redirects": self.redirects,
            "seconds_ago": max(0, round(now - self.finished_at)),
        }


class HandshakeWatch:
    """Follows each browser (by the demo's own cookie) through Clerk's handshake, from the
    responses the app sends and the requests it gets: the app's ``307`` to
    ``/v1/client/handshake`` opens a trip, the request that comes back with
    ``__clerk_handshake_nonce`` is the Frontend API's redirect, a development instance's
    ``307`` to the clean URL is one more, and the first answer that is not a redirect ends it.
    Thread-safe; remembers at most ``limit`` browsers."""

    def __init__(
        self,
        frontend_api_url: str,
        *,
        limit: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = frontend_api_url.rstrip("/") + "/v1/client/handshake?"
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, _Trip] = {}
        self._last: dict[str, HandshakeTrip] = {}

    def request(self, browser: str, query: str) -> None:
        if NONCE_PARAM not in query:
            return
        with self._lock:
            trip = self._open.get(browser)
            if trip is not None and any(k == NONCE_PARAM for k, _ in parse_qsl(query)):
                trip.redirects += 1  # the Frontend API sent the browser back with a nonce
                trip.returned = True

    def response(self, browser: str, status: int, location: str | None) -> None:
        redirect = 300 <= status < 400
        with self._lock:
            trip = self._open.get(browser)
            if redirect and location is not None and location.startswith(self._target):
                if trip is None:
                    reason = dict(parse_qsl(urlsplit(location).query)).get(REASON_PARAM, "")
                    _bounded_set(self._open, browser, _Trip(reason, self._clock()), self._limit)
                else:  # the same handshake again (a redirect loop, stopped at 3 by the app)
                    trip.redirects += 1
                    trip.returned = False
            elif trip is not None and trip.returned:
                if redirect:
                    trip.redirects += 1  # development: to the URL without the handshake params
                    return
                del self._open[browser]
                elapsed = (self._clock() - trip.started) * 1000
                done = HandshakeTrip(trip.reason, elapsed, trip.redirects, time.time())
                _bounded_set(self._last, browser, done, self._limit)

    def last(self, browser: str) -> HandshakeTrip | None:
        with self._lock:
            return self._last.get(browser)


def _bounded_set(table: dict[str, Any], key: str, value: Any, limit: int) -> None:
    table.pop(key, None)
    while len(table) >= limit:
        del table[next(iter(table))]  # the oldest
    table[key] = value


class DevRoutes:
    """The demo's routes under ``/dev/``, framework-free (:class:`DevRoutesASGI` and
    :class:`DevRoutesWSGI` move the bytes):

    * ``GET /dev/sign-in`` — pick a user and an org; each button is a form posted to
      FakeClerk's Frontend API, which signs the browser in (its ``__client`` cookie) and sends
      it back to the app with a handshake nonce, exactly as Clerk's hosted sign-in comes back;
    * ``GET /dev/handshake`` — this browser's last handshake (reason, redirects, duration), for
      the dashboard.

    Browsers are told apart by a cookie of the demo's own (``demo_browser``)."""

    def __init__(self, clerk: FakeClerk, origins: Sequence[str]) -> None:
        if not origins:
            raise DemoError("the demo needs the app's origin")
        self.clerk = clerk
        self.origins = tuple(origins)
        self.watch = HandshakeWatch(clerk.api_url)

    @property
    def sign_in_action(self) -> str:
        return f"{self.clerk.api_url}/v1/client/sign_in"

    @property
    def sign_out_action(self) -> str:
        return f"{self.clerk.api_url}/v1/client/sign_out"

    def origin(self, host: str) -> str:
        """The app's origin as the browser sees it, if it is one of the demo's (the Host
        header decides where the Frontend API sends the browser back), else the first."""
        asked = f"http://{host}"
        return asked if asked in self.origins else self.origins[0]

    def handle(self, method: str, path: str, host: str, browser: str) -> Response:
        if method not in ("GET", "HEAD"):
            return _html(405, _page("Method not allowed", f"<p>{_back()}</p>"))
        if path == SIGN_IN_PATH:
            return _html(200, sign_in_page(self.sign_in_action, self.origin(host) + "/"))
        if path == HANDSHAKE_PATH:
            trip = self.watch.last(browser)
            return _json({"handshake": trip.as_dict(time.time()) if trip else None})
        return _html(404, _page("Not found", _back()))


def browser_of(cookie_header: str) -> str | None:
    """The demo's browser id from a ``Cookie`` header."""
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == BROWSER_COOKIE and value:
            return value
    return None


def _browser_cookie(browser: str) -> tuple[str, str]:
    return ("Set-Cookie", f"{BROWSER_COOKIE}={browser}; Path=/; SameSite=Lax; HttpOnly")


def _html(status: int, text: str) -> Response:
    return _bytes(status, "text/html; charset=utf-8", text.encode())


def _json(value: Any) -> Response:
    return _bytes(200, "application/json", json.dumps(value).encode())


def _bytes(status: int, content_type: str, body: bytes) -> Response:
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    return status, headers, body


def _back() -> str:
    return f'<p><a href="{SIGN_IN_PATH}">Back to the sign-in page</a></p>'


def _page(title: str, content: str) -> str:
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(title)} — clerk-tinybird demo</title>
<style>
  body {{ margin: 0; background: #0e1013; color: #e6e8eb;
         font: 14px/1.45 ui-sans-serif, system-ui, -apple-system, "Segoe UI", sans-serif; }}
  main {{ max-width: 860px; margin: 0 auto; padding: 28px 16px; }}
  h1 {{ font-size: 20px; margin: 0 0 6px; }} h1 span {{ color: #27f795; }}
  p {{ color: #9aa3ad; }} a {{ color: #27f795; }}
  .users {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr));
           gap: 14px; margin: 20px 0; }}
  .user {{ background: #171a1f; border: 1px solid #2a2f37; border-radius: 10px; padding: 14px; }}
  .user h2 {{ font-size: 15px; margin: 0 0 2px; }}
  .user code {{ color: #9aa3ad; font-size: 11px; }}
  form {{ margin: 8px 0 0; }}
  button {{ width: 100%; text-align: left; background: #20252c; color: #e6e8eb; cursor: pointer;
           border: 1px solid #2a2f37; border-radius: 6px; padding: 7px 10px; font: inherit; }}
  button:hover {{ border-color: #27f795; }}
  button small {{ color: #9aa3ad; float: right; }}
</style></head>
<body><main>{content}</main></body></html>
"""


def sign_in_page(action: str, redirect_url: str) -> str:
    """The development sign-in page: one button per (user, org) and one per personal account,
    each a form posted to the Frontend API at ``action``, which sends the browser back to
    ``redirect_url``."""
    cards = []
    for user in USERS:
        buttons = [
            _sign_in_button(action, user, slug, org.name, role, redirect_url)
            for slug, role in user.memberships
            if (org := org_by_slug(slug)) is not None
        ]
        buttons.append(
            _sign_in_button(action, user, "", "Personal account", "no org", redirect_url)
        )
        cards.append(
            f'<div class="user"><h2>{html.escape(user.name)}</h2>'
            f"<code>{html.escape(user.id)}</code>{''.join(buttons)}</div>"
        )
    content = f"""
<h1>Clerk <span>&times;</span> Tinybird — development sign-in</h1>
<p>Pick a user and an organization. The button posts to FakeClerk's Frontend API, which signs
this browser in and sends it back to the app with a handshake nonce; the middleware trades the
nonce for the <code>__session</code> and <code>__client_uat</code> cookies, as with Clerk.
Session tokens live 60 seconds, as in production. This demo has no Clerk browser SDK to
refresh them, so the first page load after a minute goes through Clerk's handshake, and
the dashboard shows how long it took.</p>
<div class="users">{"".join(cards)}</div>
<p><a href="/">Go to the dashboard</a></p>
"""
    return _page("Sign in", content)


def _sign_in_button(
    action: str, user: DemoUser, slug: str, label: str, role: str, redirect_url: str
) -> str:
    fields = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in sign_in_fields(user, slug, redirect_url).items()
    )
    return (
        f'<form method="post" action="{html.escape(action)}">{fields}'
        f'<button type="submit" data-user="{html.escape(user.name.lower())}" '
        f'data-org="{html.escape(slug or "personal")}">{html.escape(label)}'
        f"<small>{html.escape(role)}</small></button></form>"
    )


class DevRoutesASGI:
    """:class:`DevRoutes` in front of an ASGI app: serves ``/dev/``, watches the rest."""

    def __init__(self, app: Any, routes: DevRoutes) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in (b"host", b"cookie")}
        known = browser_of(headers.get(b"cookie", ""))
        browser = known or secrets.token_urlsafe(12)
        extra = [] if known else [_browser_cookie(browser)]
        raw_extra = [(k.lower().encode(), v.encode("latin-1")) for k, v in extra]
        if scope["path"].startswith(DEV_PREFIX):
            status, answer, payload = self.routes.handle(
                scope["method"], scope["path"], headers.get(b"host", ""), browser
            )
            raw = [(k.lower().encode(), v.encode("latin-1")) for k, v in answer + extra]
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": payload})
            return
        watch = self.routes.watch
        watch.request(browser, scope.get("query_string", b"").decode("latin-1"))

        async def watched(message: Any) -> None:
            if message["type"] == "http.response.start":
                sent = message.get("headers", [])
                location = next((v.decode("latin-1") for k, v in sent if k == b"location"), None)
                watch.response(browser, message["status"], location)
                if raw_extra:
                    message = {**message, "headers": [*sent, *raw_extra]}
            await send(message)

        await self.app(scope, receive, watched)


class DevRoutesWSGI:
    """:class:`DevRoutes` in front of a WSGI app: serves ``/dev/``, watches the rest."""

    def __init__(self, app: WSGIApp, routes: DevRoutes) -> None:
        self.app = app
        self.routes = routes

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        known = browser_of(str(environ.get("HTTP_COOKIE", "")))
        browser = known or secrets.token_urlsafe(12)
        extra = [] if known else [_browser_cookie(browser)]
        path = str(environ.get("PATH_INFO") or "/")
        if path.startswith(DEV_PREFIX):
            method = str(environ.get("REQUEST_METHOD", "GET")).upper()
            host = str(environ.get("HTTP_HOST", ""))
            status, headers, payload = self.routes.handle(method, path, host, browser)
            start_response(f"{status} {HTTPStatus(status).phrase}", headers + extra)
            return [payload]
        watch = self.routes.watch
        watch.request(browser, str(environ.get("QUERY_STRING", "")))

        def watched(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            location = next((v for k, v in headers if k.lower() == "location"), None)
            watch.response(browser, int(status.split(" ", 1)[0]), location)
            return start_response(status, headers + extra, exc_info)

        return self.app(environ, watched)


# -- running -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Demo:
    """A running demo: open ``url`` in a browser."""

    url: str
    app: AppKind
    clerk: FakeClerk
    tinybird: FakeTinybird
    settings: Settings
    is_alive: Callable[[], bool]
    routes: DevRoutes

    @property
    def sign_in_url(self) -> str:
        return self.url + SIGN_IN_PATH


EXAMPLES = "clerk_tinybird_middleware.examples"


def _source_checkout_examples() -> bool:
    """In a source checkout (an editable install), ``examples/`` sits beside ``src/``: make it
    ``clerk_tinybird_middleware.examples``, the name it has inside the wheel."""
    root = Path(__file__).resolve().parents[2] / "examples"
    init = root / "__init__.py"
    if not init.is_file():
        return False
    spec = importlib.util.spec_from_file_location(
        EXAMPLES, init, submodule_search_locations=[str(root)]
    )
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    sys.modules[EXAMPLES] = module
    spec.loader.exec_module(module)
    return True


def load_example(kind: AppKind) -> ModuleType:
    """The example app ``<kind>_app`` shipped with the package (or of the source checkout)."""
    name = f"{EXAMPLES}.{kind}_app.app"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as missing:
        if missing.name not in (EXAMPLES, f"{EXAMPLES}.{kind}_app", name):
            raise DemoError(
                f"the {kind} example needs {missing.name!r}: "
                f"pip install 'clerk-tinybird-middleware[{_EXTRA[kind]}]'"
            ) from None
    if EXAMPLES not in sys.modules and _source_checkout_examples():
        return importlib.import_module(name)
    raise DemoError(f"the {kind} example app is not installed ({name})")


_EXTRA: Mapping[str, str] = {"starlette": "fastapi", "flask": "flask", "django": "django"}


def build_app(kind: AppKind, settings: Settings, routes: DevRoutes) -> Any:
    """The example app of ``kind`` wired to the demo settings, behind the ``/dev/`` routes."""
    module = load_example(kind)
    factory = getattr(module, "create_app", None)
    if not callable(factory):
        raise DemoError(f"the {kind} example has no create_app(settings=...) factory")
    offered: dict[str, Any] = {
        "settings": settings,
        "pipe": PIPE,
        "sign_in_url": SIGN_IN_PATH,
        "sign_out_url": routes.sign_out_action,
        "page_config": {
            "orgs": [org.slug for org in ORGS],
            "handshakeReport": HANDSHAKE_PATH,
        },
    }
    # Pass what the factory names (its **kwargs may be setting overrides, not page options).
    parameters = inspect.signature(factory).parameters
    named = {k for k, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    app = factory(**{k: v for k, v in offered.items() if k in named})
    if kind in ("flask", "django"):
        return DevRoutesWSGI(app, routes)
    return DevRoutesASGI(app, routes)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


@contextlib.contextmanager
def _serve_asgi(app: Any, sock: socket.socket) -> Iterator[Callable[[], bool]]:
    import uvicorn

    config = uvicorn.Config(app, lifespan="on", ws="none", log_config=None, log_level="warning")
    config.access_log = False
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="clerk-tinybird-demo", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            raise DemoError("the example app failed to start (see the log above)")
        time.sleep(0.02)
    try:
        yield thread.is_alive
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def running(
    app: AppKind = "starlette",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    source: SourceKind = "template",
    session_lifetime: int = SESSION_LIFETIME,
) -> Iterator[Demo]:
    """Start the fakes and the example app (``port=0``: a free port); stop them on exit.
    ``session_lifetime``: seconds, of the session tokens FakeClerk mints."""
    if app not in ("starlette", "flask", "django"):
        raise DemoError(f"unknown app {app!r}: use 'starlette', 'flask' or 'django'")
    with contextlib.ExitStack() as stack:
        tinybird = FakeTinybird()
        tinybird.add_pipe(PIPE, seed_rows(), filter=pipe_filter)
        stack.enter_context(tinybird.serve())
        clerk = FakeClerk(session_lifetime=session_lifetime)
        clerk.add_tinybird_template(tinybird.admin_token, tinybird.workspace_id, pipe=PIPE)
        stack.enter_context(clerk.serve())

        sock = stack.enter_context(contextlib.closing(_bind(host, port)))
        bound_port = int(sock.getsockname()[1])
        if app != "starlette":
            sock.close()  # wsgiref binds its own socket: free the port just picked
        shown_host = f"[{host}]" if ":" in host else host
        url = f"http://{shown_host}:{bound_port}"
        origins = [url, f"http://127.0.0.1:{bound_port}", f"http://localhost:{bound_port}"]
        settings = demo_settings(clerk, tinybird, origins=origins, source=source)
        routes = DevRoutes(clerk, origins)
        web_app = build_app(app, settings, routes)
        if app != "starlette":
            stack.enter_context(serve_wsgi(web_app, host, bound_port))
            alive: Callable[[], bool] = threading.main_thread().is_alive  # no thread exposed
        else:
            alive = stack.enter_context(_serve_asgi(web_app, sock))
        yield Demo(url, app, clerk, tinybird, settings, alive, routes)
