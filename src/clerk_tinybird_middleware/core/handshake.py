"""Clerk's handshake, as @clerk/backend does it (its ``authenticateRequest`` cookie path,
``buildRedirectToHandshake``, ``checkAndTrackRedirectLoop`` and ``resolveHandshake``).

A Clerk session cookie lives 60 s and the browser SDK refreshes it only while a tab runs. When a
page request arrives with a stale cookie (expired, ``__client_uat`` newer than the token, or no
token while ``__client_uat`` says signed in), the middleware redirects the browser to Clerk's
Frontend API, which answers with a nonce; the next request carries it, the middleware trades it
for ``Set-Cookie`` directives (``GET /v1/clients/handshake_payload``) and the page renders
signed in. Only page loads are eligible — never ``fetch``/XHR, Bearer requests or websockets.

Everything here is pure: deciding, building the redirect, reading directives. The engine
yields the one upstream call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote_plus, unquote_plus, urlsplit, urlunsplit

from .claims import Reason
from .ops import HttpRequest
from .responses import Answer

__all__ = [
    "API_VERSION",
    "LOOP_LIMIT",
    "Handshake",
    "directive_session",
    "eligible",
    "form_encode",
    "strip_query",
]

API_VERSION = "2026-05-12"  # @clerk/backend 3.x's SUPPORTED_BAPI_VERSION
LOOP_LIMIT = 3
REDIRECT_COUNT = "__clerk_redirect_count"
NONCE = "__clerk_handshake_nonce"
LEGACY_TOKEN = "__clerk_handshake"
DEV_BROWSER = "__clerk_db_jwt"
#: Removed from ``redirect_url`` on the way out, and from the URL after resolution (dev).
OUTBOUND_DROP = frozenset({DEV_BROWSER, "__dev_session"})
RESOLVED_DROP = frozenset({LEGACY_TOKEN, "__clerk_help", DEV_BROWSER, NONCE})

#: The cookie-path reasons that make an eligible page request handshake, with the reason
#: @clerk/backend sends as ``__clerk_hs_reason``.
TRIGGERS: Mapping[str, str] = {
    Reason.TOKEN_BUT_NO_UAT: Reason.TOKEN_BUT_NO_UAT,
    Reason.UAT_BUT_NO_TOKEN: Reason.UAT_BUT_NO_TOKEN,
    Reason.IAT_BEFORE_UAT: Reason.IAT_BEFORE_UAT,
    Reason.EXPIRED: "session-token-expired-refresh-non-eligible-no-refresh-cookie",
    Reason.NOT_ACTIVE_YET: "session-token-nbf",
    Reason.IAT_IN_FUTURE: "session-token-iat-in-the-future",
    Reason.DEV_BROWSER_MISSING: Reason.DEV_BROWSER_MISSING,
    Reason.DEV_BROWSER_SYNC: Reason.DEV_BROWSER_SYNC,
}


def eligible(method: str, sec_fetch_dest: str | None, accept: str | None) -> bool:
    """A page load: ``GET``, and ``Sec-Fetch-Dest`` ``document``/``iframe`` — or no
    ``Sec-Fetch-Dest`` and an ``Accept`` that starts with ``text/html``."""
    if method != "GET":
        return False
    if sec_fetch_dest:
        return sec_fetch_dest in ("document", "iframe")
    return bool(accept) and accept.startswith("text/html")  # type: ignore[union-attr]


def form_encode(value: str) -> str:
    """``application/x-www-form-urlencoded`` as WHATWG ``URLSearchParams`` writes it."""
    return quote_plus(value, safe="*").replace("~", "%7E")


def _query_pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for piece in query.split("&"):
        if not piece:
            continue
        name, _, value = piece.partition("=")
        pairs.append((unquote_plus(name, errors="replace"), unquote_plus(value, errors="replace")))
    return pairs


def query_value(query: str, name: str) -> str | None:
    """The first value of ``name`` in a raw query string (form-decoded), or None."""
    if name not in query:
        return None
    for key, value in _query_pairs(query):
        if key == name:
            return value
    return None


def strip_query(url: str, drop: frozenset[str]) -> str:
    """``url`` without the query params in ``drop``, the query re-serialized as
    ``URLSearchParams`` does (so the result matches what Clerk's SDK builds)."""
    parts = urlsplit(url)
    pairs = [(k, v) for k, v in _query_pairs(parts.query) if k not in drop]
    query = "&".join(f"{form_encode(k)}={form_encode(v)}" for k, v in pairs)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def redirect_count(cookies: Mapping[str, str]) -> float:
    """``Number(cookie) || 0`` — only exactly 3 stops the loop, as in Clerk's SDK."""
    raw = cookies.get(REDIRECT_COUNT, "").strip()
    try:
        value = float(raw) if raw else 0.0
    except ValueError:
        return 0.0
    return value if value == value else 0.0


def _js_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


_DIRECTIVE_NAME = re.compile(r"[^=;]*")


def directive_session(directives: Sequence[str]) -> str:
    """The session token the directives set: the value of the last ``__session*`` cookie
    (``""`` when none, or when the last one clears it)."""
    token = ""
    for directive in directives:
        pair = directive.split(";", 1)[0]
        name, sep, rest = pair.partition("=")
        if sep and name.startswith("__session"):
            token = rest.split("=", 1)[0]
    return token


@dataclass(frozen=True, slots=True)
class Handshake:
    """Handshake settings of one middleware: where the Frontend API is, and the instance."""

    frontend_api: str  # base URL: https://clerk.example.com, or the proxy URL
    development: bool
    api_url: str
    secret_key: str

    def redirect(
        self,
        url: str,
        hs_reason: str,
        *,
        session_token: str | None,
        dev_browser: str | None,
        suffixed: bool,
        count: float,
    ) -> Answer | None:
        """The 307 to the Frontend API, or None at the loop limit (sign out instead)."""
        if count == LOOP_LIMIT:
            return None
        params = [
            ("redirect_url", strip_query(url, OUTBOUND_DROP)),
            ("__clerk_api_version", API_VERSION),
            ("suffixed_cookies", "true" if suffixed else "false"),
            ("__clerk_hs_reason", hs_reason),
            ("format", "nonce"),
        ]
        if session_token:
            params.append(("__session", session_token))
        if self.development and dev_browser:
            params.append((DEV_BROWSER, dev_browser))
        query = "&".join(f"{name}={form_encode(value)}" for name, value in params)
        location = f"{self.frontend_api.rstrip('/')}/v1/client/handshake?{query}"
        loop_cookie = f"{REDIRECT_COUNT}={_js_number(count + 1)}; SameSite=Lax; HttpOnly; Max-Age=2"
        headers = (
            ("location", location),
            ("cache-control", "no-store"),
            ("set-cookie", loop_cookie),
            ("content-length", "0"),
        )
        return Answer(307, headers)

    def payload_request(self, nonce: str, timeout: float) -> HttpRequest:
        return HttpRequest(
            "GET",
            f"{self.api_url}/v1/clients/handshake_payload?nonce={form_encode(nonce)}",
            {
                "Authorization": f"Bearer {self.secret_key}",
                "Accept": "application/json",
                "Clerk-API-Version": API_VERSION,
            },
            timeout=timeout,
            endpoint="handshake",
        )

    def resolved(self, url: str, directives: Sequence[str]) -> Answer:
        """Development: back to the same URL without the handshake params, cookies set."""
        headers = (
            ("location", strip_query(url, RESOLVED_DROP)),
            ("cache-control", "no-store"),
            *(("set-cookie", directive) for directive in directives),
            ("content-length", "0"),
        )
        return Answer(307, headers)


def frontend_base(frontend_api: str) -> str:
    base = frontend_api if frontend_api.startswith("http") else f"https://{frontend_api}"
    return base.rstrip("/")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
