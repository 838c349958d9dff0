"""FakeClerk's Frontend API side: browsers, sign-in, sign-out and the handshake, on loopback.

Clerk's Frontend API keeps one *client* per browser (a cookie on its own origin, ``__client``
here) holding the browser's session. When an app's backend finds a stale session cookie on a
page load, it redirects the browser to ``GET /v1/client/handshake?redirect_url=...&format=nonce``;
the Frontend API mints a fresh session token for the client and redirects back to
``redirect_url`` with ``__clerk_handshake_nonce=N``. The app's backend trades the nonce (once)
for ``Set-Cookie`` directives with ``GET /v1/clients/handshake_payload?nonce=N`` (Backend API)::

    __session=<jwt>; Path=/; Max-Age=31536000; SameSite=Lax
    __client_uat=<iat>; Path=/; Max-Age=31536000; SameSite=Lax
    __clerk_db_jwt=<dev browser id>; ...          (development instances only)

(names suffixed ``_<suffix>`` when the app asked with ``suffixed_cookies=true``); a browser with
no signed-in client gets the "signed out" directives (``__session`` cleared, ``__client_uat=0``).

Not Clerk's API, for tests and the demo: ``POST /v1/client/sign_in`` (form fields ``user_id``,
``org_id``, ``org_slug``, ``org_role``, ``org_permissions`` (comma list), ``redirect_url``)
signs the browser in and continues into the handshake, so a plain HTML form can post there;
``POST /v1/client/sign_out`` (``redirect_url``) ends the session the same way. Without
``redirect_url`` both answer the client as JSON.

Cookies are not Secure (loopback is plain HTTP); Clerk's own are on HTTPS origins.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from .fake_clerk_objects import Call, Reply, invalid_param, json_reply

if TYPE_CHECKING:
    from .fake_clerk import FakeClerk

__all__ = ["CLIENT_COOKIE", "Frontend", "cookie_suffix"]

CLIENT_COOKIE = "__client"
YEAR = 365 * 24 * 3600
NONCE_PARAM = "__clerk_handshake_nonce"


def cookie_suffix(publishable_key: str) -> str:
    """Clerk's multi-app cookie suffix: urlsafe base64 of SHA-1 of the key, 8 characters
    (written here independently of the package's own copy, which it tests)."""
    digest = hashlib.sha1(publishable_key.encode(), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode().replace("+", "-").replace("/", "_")[:8]


def _cookie(name: str, value: str, max_age: int, *, http_only: bool = False) -> str:
    flags = "; HttpOnly" if http_only else ""
    return f"{name}={value}; Path=/; Max-Age={max_age}; SameSite=Lax{flags}"


def _with_param(url: str, name: str, value: str) -> str:
    parts = urlsplit(url)
    added = f"{name}={quote(value, safe='')}"
    query = f"{parts.query}&{added}" if parts.query else added
    return parts._replace(query=query).geturl()


def _redirect_target(url: str | None) -> str | None:
    """``redirect_url`` when it is an absolute http(s) URL (Clerk also checks it against the
    instance's allowed origins; the fake allows any)."""
    if not url:
        return None
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.netloc else None


@dataclass
class _Client:
    id: str
    session_id: str | None = None


class Frontend:
    """The Frontend API state of one FakeClerk: clients and pending nonces. Thread-safe."""

    def __init__(self, clerk: FakeClerk) -> None:
        self._clerk = clerk
        self._lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._nonces: dict[str, list[str]] = {}

    # -- Python API (FakeClerk.sign_in / sign_out) ------------------------------------------

    def sign_in(
        self, user_id: str, org: dict[str, Any] | None, client_id: str | None = None
    ) -> tuple[str, str]:
        """A session for ``user_id`` on a client (a new one unless ``client_id`` is known):
        (client id, session id)."""
        sid = f"sess_{secrets.token_hex(12)}"
        with self._lock:
            client = self._clients.get(client_id or "")
            if client is None:
                client = _Client(f"client_{secrets.token_hex(12)}")
                self._clients[client.id] = client
            previous, client.session_id = client.session_id, sid
        if previous:
            self._clerk.end_session(previous)
        self._clerk.register_session(sid, user_id, org, client.id)
        return client.id, sid

    def sign_out(self, client_id: str) -> None:
        with self._lock:
            client = self._clients.get(client_id)
            sid = client.session_id if client else None
            if client is not None:
                client.session_id = None
        if sid:
            self._clerk.end_session(sid)

    def session_of(self, client_id: str | None) -> str | None:
        with self._lock:
            client = self._clients.get(client_id or "")
            return client.session_id if client else None

    def take_nonce(self, nonce: str) -> list[str] | None:
        """The directives of ``nonce``, once."""
        with self._lock:
            return self._nonces.pop(nonce, None)

    # -- HTTP --------------------------------------------------------------------------------

    def handshake(self, call: Call) -> Reply:
        """``GET /v1/client/handshake``: fresh cookies for this browser, behind a nonce."""
        target = _redirect_target(call.query.get("redirect_url"))
        if target is None:
            return invalid_param("redirect_url", "redirect_url must be an absolute http(s) URL")
        client_id = call.cookies.get(CLIENT_COOKIE)
        return self._back_to_app(call, target, client_id, 307, [])

    def sign_in_form(self, call: Call) -> Reply:
        params = call.params()
        user_id = params.get("user_id")
        if not user_id:
            return invalid_param("user_id", "user_id is required")
        org = None
        if params.get("org_id"):
            org = {
                "id": params["org_id"],
                "slug": params.get("org_slug") or params["org_id"],
                "role": params.get("org_role") or "member",
                "permissions": [p for p in params.get("org_permissions", "").split(",") if p],
            }
        client_id, _ = self.sign_in(user_id, org, call.cookies.get(CLIENT_COOKIE))
        cookie = ("set-cookie", _cookie(CLIENT_COOKIE, client_id, YEAR, http_only=True))
        target = _redirect_target(params.get("redirect_url"))
        if target is None:
            return json_reply(200, self._client_json(client_id), [cookie])
        return self._back_to_app(call, target, client_id, 303, [cookie], params)

    def sign_out_form(self, call: Call) -> Reply:
        params = call.params()
        client_id = call.cookies.get(CLIENT_COOKIE)
        if client_id:
            self.sign_out(client_id)
        cookie = ("set-cookie", _cookie(CLIENT_COOKIE, "", 0, http_only=True))
        target = _redirect_target(params.get("redirect_url"))
        if target is None:
            return json_reply(200, self._client_json(client_id), [cookie])
        return self._back_to_app(call, target, None, 303, [cookie], params)

    # -- the directives ----------------------------------------------------------------------

    def _back_to_app(
        self,
        call: Call,
        target: str,
        client_id: str | None,
        status: int,
        headers: list[tuple[str, str]],
        params: dict[str, str] | None = None,
    ) -> Reply:
        params = params if params is not None else call.query
        directives = self.directives(
            self.session_of(client_id),
            origin=f"{urlsplit(target).scheme}://{urlsplit(target).netloc}",
            suffixed=params.get("suffixed_cookies") == "true",
            dev_browser=params.get("__clerk_db_jwt") or None,
        )
        if params.get("format", "nonce") == "nonce":
            nonce = secrets.token_urlsafe(24)
            with self._lock:
                self._nonces[nonce] = directives
            location = _with_param(target, NONCE_PARAM, nonce)
        else:  # the legacy format: the directives in a signed JWT
            location = _with_param(
                target, "__clerk_handshake", self._clerk.handshake_token(directives)
            )
        return Reply(status, b"", [*headers, ("location", location), ("cache-control", "no-store")])

    def directives(
        self, session_id: str | None, *, origin: str, suffixed: bool, dev_browser: str | None
    ) -> list[str]:
        """The ``Set-Cookie`` strings for the app: a fresh session token (``azp`` = the app's
        origin), or the signed-out pair; the dev-browser cookie on development instances."""
        clerk = self._clerk
        suffix = f"_{cookie_suffix(clerk.publishable_key)}" if suffixed else ""
        token = clerk.fresh_session_token(session_id, azp=origin) if session_id else None
        if token is not None:
            jwt, iat = token
            cookies = [
                _cookie(f"__session{suffix}", jwt, YEAR),
                _cookie(f"__client_uat{suffix}", str(iat), YEAR),
            ]
        else:
            cookies = [
                _cookie(f"__session{suffix}", "", 0),
                _cookie(f"__client_uat{suffix}", "0", YEAR),
            ]
        if clerk.development:
            dev_browser = dev_browser or f"dvb_{secrets.token_hex(16)}"
            cookies.append(_cookie(f"__clerk_db_jwt{suffix}", dev_browser, YEAR))
        return cookies

    def _client_json(self, client_id: str | None) -> dict[str, Any]:
        sid = self.session_of(client_id)
        return {
            "object": "client",
            "id": client_id,
            "session_ids": [sid] if sid else [],
            "sessions": [self._clerk.session_json(sid)] if sid else [],
            "sign_in_id": None,
            "sign_up_id": None,
            "last_active_session_id": sid,
            "last_authentication_strategy": None,
            "created_at": int(time.time() * 1000),
            "updated_at": int(time.time() * 1000),
        }
