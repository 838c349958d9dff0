"""Response rules, in ``str`` form: the headers added to a response that carries a token, the
JSON error bodies of the README, and the answers the middleware sends itself (401, 307).

Edges encode once: :class:`HeaderRule` is built per edge with its header type (``bytes`` for
ASGI, ``str`` for WSGI) and keeps the encoded values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, AnyStr, Generic

from ..models import AuthResult, ClerkSession, TinybirdToken
from .claims import Reason

__all__ = [
    "Answer",
    "Denial",
    "HeaderRule",
    "deny_membership",
    "deny_org",
    "deny_session",
    "forbidden",
    "token_denial",
    "token_unavailable",
    "unauthenticated",
    "unauthenticated_answer",
    "unauthenticated_denial",
]

#: Handler headers a response with a token loses: every cache directive a shared cache (or
#: a CDN, which obeys its own header over Cache-Control, and may ignore Vary) would act on.
DROPPED = frozenset(
    {"cache-control", "surrogate-control", "cdn-cache-control", "cloudflare-cdn-cache-control"}
)
NO_STORE: tuple[tuple[str, str], ...] = (
    ("cache-control", "private, no-store"),
    ("cdn-cache-control", "no-store"),
    ("surrogate-control", "no-store"),
)
VARY = ("Cookie", "Authorization")

_NO_TOKEN_PRESENTED = frozenset(
    {Reason.TOKEN_MISSING, Reason.TOKEN_AND_UAT_MISSING, Reason.UAT_BUT_NO_TOKEN}
)


@dataclass(frozen=True, slots=True)
class Answer:
    """A response the middleware sends itself; the app is not called."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


def unauthenticated(auth: AuthResult | None) -> tuple[dict[str, Any], dict[str, str]]:
    """401: body and headers. ``WWW-Authenticate`` says ``invalid_token`` only when a token
    was presented and rejected (RFC 6750 §3.1)."""
    reason = (auth.reason if auth is not None else None) or Reason.TOKEN_MISSING
    message = (auth.message if auth is not None else None) or Reason.MESSAGES[reason]
    challenge = "Bearer" if reason in _NO_TOKEN_PRESENTED else 'Bearer error="invalid_token"'
    body = {"error": "unauthenticated", "reason": reason, "message": message}
    return body, {"WWW-Authenticate": challenge, "Cache-Control": "no-store"}


def json_answer(status: int, body: Mapping[str, Any], headers: Mapping[str, str]) -> Answer:
    payload = json.dumps(body).encode()
    return Answer(
        status,
        (
            ("content-type", "application/json"),
            ("content-length", str(len(payload))),
            *((name.lower(), value) for name, value in headers.items()),
        ),
        payload,
    )


def unauthenticated_answer(auth: AuthResult, set_cookies: Sequence[str] = ()) -> Answer:
    """The middleware's own 401 (``require_auth``)."""
    body, headers = unauthenticated(auth)
    answer = json_answer(401, body, headers)
    if not set_cookies:
        return answer
    extra = tuple(("set-cookie", cookie) for cookie in set_cookies)
    return Answer(answer.status, answer.headers + extra, answer.body)


def forbidden(
    session: ClerkSession, role: str | None, permission: str | None
) -> dict[str, Any] | None:
    """403 body when ``session`` lacks the org, role or permission; None when allowed."""
    if session.org_id is None:
        reason, message = "no-active-org", "An active organization is required."
    elif role is not None and not session.has(role=role):
        reason, message = "missing-role", f"The organization role {role!r} is required."
    elif permission is not None and not session.has(permission=permission):
        reason, message = "missing-permission", f"The permission {permission!r} is required."
    else:
        return None
    return {"error": "forbidden", "reason": reason, "message": message}


def token_unavailable(
    code: str | None, retry_after: float | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """503 when a handler needs a Tinybird token and none could be had."""
    reason = code or "tinybird-not-configured"
    body = {
        "error": "tinybird_token_unavailable",
        "reason": reason,
        "message": "No Tinybird token is available for this request; try again later.",
    }
    headers = {"Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return body, headers


# -- the guards (FastAPI dependencies, Flask and Django decorators render these) -----------------


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a guarded handler does not run: the status, the JSON body and its headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def unauthenticated_denial(auth: AuthResult | None) -> Denial:
    """The 401 of a guard (``auth`` None: the middleware did not see the request)."""
    body, headers = unauthenticated(auth)
    return Denial(401, body, headers)


def deny_session(auth: AuthResult | None) -> Denial | None:
    """401 unless signed in."""
    if auth is not None and auth.session is not None:
        return None
    return unauthenticated_denial(auth)


def deny_membership(
    session: ClerkSession, role: str | None, permission: str | None
) -> Denial | None:
    """403 when ``session`` has no active org, or lacks ``role`` or ``permission``."""
    body = forbidden(session, role, permission)
    return None if body is None else Denial(403, body, {"Cache-Control": "no-store"})


def deny_org(auth: AuthResult | None, role: str | None, permission: str | None) -> Denial | None:
    """401 when signed out; else :func:`deny_membership`."""
    if auth is None or auth.session is None:
        return unauthenticated_denial(auth)
    return deny_membership(auth.session, role, permission)


def token_denial(auth: AuthResult | None, error: str | None, retry_after: float | None) -> Denial:
    """A request with no Tinybird token: 401 when signed out (and no anonymous token), else
    503 with the reason (``Retry-After`` after a Clerk 429)."""
    if auth is None or auth.session is None:
        return unauthenticated_denial(auth)
    body, headers = token_unavailable(error, retry_after)
    return Denial(503, body, headers)


def response_tail(
    token_header: str | None, token: TinybirdToken | None, set_cookies: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    """What a response gains (after the handler's headers, minus :data:`DROPPED`); empty when
    the response is left alone."""
    tail: list[tuple[str, str]] = []
    if token is not None and token_header:
        tail += [
            (token_header, token.jwt),
            (f"{token_header}-expires-at", str(token.expires_at_unix)),
        ]
    if not tail and not set_cookies:
        return ()
    tail += [("set-cookie", cookie) for cookie in set_cookies]
    return (*NO_STORE, *tail)


class HeaderRule(Generic[AnyStr]):
    """Merges a response tail into the handler's headers, for one header type.

    The handler's cache directives (:data:`DROPPED`) and any token headers it set are
    replaced by ours, ``Vary`` gains ``Cookie, Authorization`` (unless it is ``*``); nothing
    else is touched. Encoded tails are memoized per tail.
    """

    def __init__(self, token_header: str | None, encode: Callable[[str], AnyStr]) -> None:
        self._encode: Callable[[str], AnyStr] = encode
        names = set(DROPPED)
        if token_header:
            names |= {token_header, f"{token_header}-expires-at"}
        self._drop: frozenset[AnyStr] = frozenset(encode(n) for n in names)
        self._vary: AnyStr = encode("vary")
        self._comma: AnyStr = encode(",")
        self._joiner: AnyStr = encode(", ")
        self._star: AnyStr = encode("*")
        self._ours: tuple[AnyStr, AnyStr] = (encode(VARY[0]), encode(VARY[1]))
        self._default_vary: tuple[AnyStr, AnyStr] = (self._vary, self._joiner.join(self._ours))
        self._tails: dict[tuple[tuple[str, str], ...], list[tuple[AnyStr, AnyStr]]] = {}

    def encoded(self, tail: tuple[tuple[str, str], ...]) -> list[tuple[AnyStr, AnyStr]]:
        values = self._tails.get(tail)
        if values is None:
            if len(self._tails) >= 10_000:
                self._tails.clear()
            values = [(self._encode(n), self._encode(v)) for n, v in tail]
            self._tails[tail] = values
        return values

    def merge(
        self, headers: Iterable[tuple[AnyStr, AnyStr]], tail: list[tuple[AnyStr, AnyStr]]
    ) -> list[tuple[AnyStr, AnyStr]]:
        """The handler's headers with ours."""
        merged: list[tuple[AnyStr, AnyStr]] = []
        vary: list[AnyStr] | None = None
        drop, vary_name = self._drop, self._vary
        for pair in headers:
            name = pair[0]
            lower = name if name.islower() else name.lower()  # most servers send lower case
            if lower in drop:
                continue
            if lower == vary_name:
                vary = vary or []
                vary.extend(v.strip() for v in pair[1].split(self._comma) if v.strip())
            else:
                merged.append(pair)
        merged.append(self._default_vary if vary is None else self._merged_vary(vary))
        merged += tail
        return merged

    def _merged_vary(self, vary: list[AnyStr]) -> tuple[AnyStr, AnyStr]:
        seen = {v.lower() for v in vary}
        if self._star not in seen:
            vary.extend(v for v in self._ours if v.lower() not in seen)
        return self._vary, self._joiner.join(vary)
