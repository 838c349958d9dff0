"""The one-command demo: an example app, FakeClerk and FakeTinybird, all on 127.0.0.1.

``clerk-tinybird demo`` (or :func:`running` from Python) starts:

* a :class:`FakeTinybird` workspace with a pipe, ``analytics_hits``, holding rows for three
  seeded tenants (``acme``, ``globex``, ``initech``); like a well-written pipe it returns no
  rows at all unless ``org`` is given;
* a :class:`FakeClerk` with the ``tinybird`` JWT template of the original Next.js project
  (``fixed_params`` ``org={{org.slug}}``, ``user={{user.id}}``, signed with the Tinybird admin
  token);
* the example app (``examples/starlette_app`` or ``examples/flask_app`` of a source checkout),
  configured against both fakes, behind a development sign-in at ``/dev/sign-in``: pick a user
  and an org, and it sets the ``__session`` and ``__client_uat`` cookies the way Clerk's
  browser SDK does.

The sign-in routes live here, in front of the example app, not in the library: a real app
gets its session cookie from Clerk's frontend. Demo session tokens live an hour so the page
keeps working without Clerk's browser SDK (real ones live 60 s and are refreshed every ~50 s).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import html
import importlib
import importlib.util
import inspect
import random
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import parse_qsl

from ._types import StartResponse, WSGIApp, WSGIEnviron
from .settings import Settings
from .testing import FakeClerk, FakeTinybird
from .testing._server import serve_wsgi

__all__ = [
    "ORGS",
    "PIPE",
    "SIGN_IN_PATH",
    "SIGN_OUT_PATH",
    "USERS",
    "Demo",
    "DemoError",
    "DemoOrg",
    "DemoUser",
    "DevSignIn",
    "demo_settings",
    "pipe_filter",
    "running",
    "seed_rows",
]

AppKind = Literal["starlette", "flask", "django"]
SourceKind = Literal["template", "local"]
Response = tuple[int, list[tuple[str, str]], bytes]

PIPE = "analytics_hits"
DEV_PREFIX = "/dev/"
SIGN_IN_PATH = "/dev/sign-in"
SIGN_OUT_PATH = "/dev/sign-out"
SESSION_LIFETIME = 3600  # demo only: a real Clerk session token lives 60 s and is refreshed
_MAX_FORM_BYTES = 4096


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
        "handshake": False,
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


# -- development sign-in -------------------------------------------------------------------------


class DevSignIn:
    """``GET /dev/sign-in`` (pick a user and an org), ``POST /dev/sign-in``, ``POST
    /dev/sign-out``: framework-free; :class:`DevRoutesASGI` and :class:`DevRoutesWSGI` move
    the bytes. Sets ``__session`` (a FakeClerk session token) and ``__client_uat`` like
    Clerk's browser SDK; signing out sets ``__client_uat=0``, as Clerk does."""

    def __init__(self, clerk: FakeClerk, *, lifetime: int = SESSION_LIFETIME) -> None:
        self.clerk = clerk
        self.lifetime = lifetime

    def handle(self, method: str, path: str, host: str, body: bytes) -> Response:
        if path == SIGN_IN_PATH and method in ("GET", "HEAD"):
            return _html(200, sign_in_page())
        if path == SIGN_IN_PATH and method == "POST":
            return self._sign_in(host, _form(body))
        if path == SIGN_OUT_PATH and method == "POST":
            return _redirect("/", _cookie("__session", "", 0) + _cookie("__client_uat", "0"))
        if path in (SIGN_IN_PATH, SIGN_OUT_PATH):
            return _html(405, _page("Method not allowed", "<p>Use the sign-in page.</p>"))
        return _html(404, _page("Not found", f'<p><a href="{SIGN_IN_PATH}">Sign in</a></p>'))

    def _sign_in(self, host: str, form: Mapping[str, str]) -> Response:
        user = user_by_id(form.get("user", ""))
        slug = form.get("org", "")
        role = dict(user.memberships).get(slug) if user else None
        org = org_by_slug(slug) if slug else None
        if user is None or (slug and (org is None or role is None)):
            return _html(400, _page("Unknown user or org", _back()))
        membership = None
        if org is not None and role is not None:
            membership = {
                "id": org.id,
                "slug": org.slug,
                "role": role,
                "permissions": _PERMISSIONS[role],
            }
        now = int(time.time())
        token = self.clerk.session_token(
            user.id, org=membership, azp=f"http://{host}", lifetime=self.lifetime, now=now
        )
        cookies = _cookie("__session", token, self.lifetime, http_only=True)
        cookies += _cookie("__client_uat", str(now), self.lifetime)
        return _redirect("/", cookies)


def _form(body: bytes) -> dict[str, str]:
    try:
        text = body[:_MAX_FORM_BYTES].decode()
    except UnicodeDecodeError:
        return {}
    return dict(parse_qsl(text))


def _cookie(
    name: str, value: str, max_age: int | None = None, *, http_only: bool = False
) -> list[tuple[str, str]]:
    parts = [f"{name}={value}", "Path=/", "SameSite=Lax"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if http_only:
        parts.append("HttpOnly")
    return [("Set-Cookie", "; ".join(parts))]


def _redirect(location: str, extra: list[tuple[str, str]]) -> Response:
    headers = [("Location", location), ("Cache-Control", "no-store"), ("Content-Length", "0")]
    return 303, headers + extra, b""


def _html(status: int, text: str) -> Response:
    body = text.encode()
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
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
  main {{ max-width: 860px; margin: 0 auto; padding: 28px; }}
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
  .out button {{ width: auto; }}
</style></head>
<body><main>{content}</main></body></html>
"""


def sign_in_page() -> str:
    """The development sign-in page: one button per (user, org) and one per personal account."""
    cards = []
    for user in USERS:
        buttons = []
        for slug, role in user.memberships:
            org = org_by_slug(slug)
            assert org is not None
            buttons.append(_sign_in_button(user, slug, f"{org.name}", role))
        buttons.append(_sign_in_button(user, "", "Personal account", "no org"))
        cards.append(
            f'<div class="user"><h2>{html.escape(user.name)}</h2>'
            f"<code>{html.escape(user.id)}</code>{''.join(buttons)}</div>"
        )
    content = f"""
<h1>Clerk <span>&times;</span> Tinybird — development sign-in</h1>
<p>Pick a user and an organization. FakeClerk mints the session token and this page sets the
<code>__session</code> and <code>__client_uat</code> cookies, as Clerk's browser SDK would. Demo
sessions last an hour; real Clerk session tokens last 60 seconds and are refreshed.</p>
<div class="users">{"".join(cards)}</div>
<form class="out" method="post" action="{SIGN_OUT_PATH}">
  <button type="submit" id="sign-out">Sign out</button>
</form>
<p><a href="/">Go to the dashboard</a></p>
"""
    return _page("Sign in", content)


def _sign_in_button(user: DemoUser, slug: str, label: str, role: str) -> str:
    return (
        f'<form method="post" action="{SIGN_IN_PATH}">'
        f'<input type="hidden" name="user" value="{html.escape(user.id)}">'
        f'<input type="hidden" name="org" value="{html.escape(slug)}">'
        f'<button type="submit" data-user="{html.escape(user.name.lower())}" '
        f'data-org="{html.escape(slug or "personal")}">{html.escape(label)}'
        f"<small>{html.escape(role)}</small></button></form>"
    )


class DevRoutesASGI:
    """Serve the :class:`DevSignIn` routes under ``/dev/`` in front of an ASGI app."""

    def __init__(self, app: Any, sign_in: DevSignIn) -> None:
        self.app = app
        self.sign_in = sign_in

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(DEV_PREFIX):
            await self.app(scope, receive, send)
            return
        body = b""
        more = True
        while more and len(body) <= _MAX_FORM_BYTES:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        status, headers, payload = self.sign_in.handle(scope["method"], scope["path"], host, body)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": payload})


class DevRoutesWSGI:
    """Serve the :class:`DevSignIn` routes under ``/dev/`` in front of a WSGI app."""

    def __init__(self, app: WSGIApp, sign_in: DevSignIn) -> None:
        self.app = app
        self.sign_in = sign_in

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO") or "/")
        if not path.startswith(DEV_PREFIX):
            return self.app(environ, start_response)
        try:
            length = min(int(environ.get("CONTENT_LENGTH") or 0), _MAX_FORM_BYTES)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        host = str(environ.get("HTTP_HOST", ""))
        status, headers, payload = self.sign_in.handle(method, path, host, body)
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [payload]


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


def build_app(kind: AppKind, settings: Settings, sign_in: DevSignIn) -> Any:
    """The example app of ``kind`` wired to the demo settings, behind the dev sign-in."""
    module = load_example(kind)
    factory = getattr(module, "create_app", None)
    if not callable(factory):
        raise DemoError(f"the {kind} example has no create_app(settings=...) factory")
    offered: dict[str, Any] = {
        "settings": settings,
        "pipe": PIPE,
        "sign_in_url": SIGN_IN_PATH,
        "sign_out_url": SIGN_OUT_PATH,
    }
    # Pass what the factory names (its **kwargs may be setting overrides, not page options).
    parameters = inspect.signature(factory).parameters
    named = {k for k, p in parameters.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    app = factory(**{k: v for k, v in offered.items() if k in named})
    if kind in ("flask", "django"):
        return DevRoutesWSGI(app, sign_in)
    return DevRoutesASGI(app, sign_in)


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
) -> Iterator[Demo]:
    """Start the fakes and the example app (``port=0``: a free port); stop them on exit."""
    if app not in ("starlette", "flask", "django"):
        raise DemoError(f"unknown app {app!r}: use 'starlette', 'flask' or 'django'")
    with contextlib.ExitStack() as stack:
        tinybird = FakeTinybird()
        tinybird.add_pipe(PIPE, seed_rows(), filter=pipe_filter)
        stack.enter_context(tinybird.serve())
        clerk = FakeClerk()
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
        web_app = build_app(app, settings, DevSignIn(clerk))
        if app != "starlette":
            stack.enter_context(serve_wsgi(web_app, host, bound_port))
            alive: Callable[[], bool] = threading.main_thread().is_alive  # no thread exposed
        else:
            alive = stack.enter_context(_serve_asgi(web_app, sock))
        yield Demo(url, app, clerk, tinybird, settings, alive)
