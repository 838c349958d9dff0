"""Tinybird token rules: the tenant guard, cache keys, freshness and Retry-After bookkeeping."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Generator, Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from ..models import ClerkSession, TinybirdToken
from .io import Op
from .jwt import MalformedJWT, b64url_decode

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "Backoff",
    "TokenError",
    "TokenSource",
    "cache_key",
    "short_hash",
    "token_from_jwt",
]


class TokenError(Exception):
    """No token for this request; ``code`` is the public ``tinybird_token_error`` value."""

    RATE_LIMITED = "clerk-rate-limited"
    UNAVAILABLE = "clerk-unavailable"
    KEY_INVALID = "clerk-key-invalid"
    TEMPLATE_NOT_FOUND = "clerk-template-not-found"
    SESSION_NOT_FOUND = "clerk-session-not-found"
    TENANT_MISSING = "tenant-missing"
    NOT_CONFIGURED = "tinybird-not-configured"

    def __init__(self, code: str, detail: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.retry_after = retry_after


class TokenSource(Protocol):
    """Where Tinybird tokens come from. A source is a flow: it yields I/O, returns a token."""

    def cache_namespace(self, settings: Settings) -> str:
        """Part of every cache key: two sources (or Clerk instances) never share entries."""
        ...

    def token_flow(
        self, session: ClerkSession, settings: Settings
    ) -> Generator[Op, Any, TinybirdToken]: ...


def cache_variant(source: object, session: ClerkSession) -> str:
    """A source may say what else its token depends on (``cache_variant(session) -> str``)."""
    variant = getattr(source, "cache_variant", None)
    if variant is None:
        return ""
    try:
        return str(variant(session))
    except Exception:
        return "!"


def short_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def cache_key(namespace: str, session: ClerkSession, variant: str = "") -> str:
    """(source, user, org) — with the org's slug and the user's role in it (a token may pin
    either, and a demoted admin must not keep an admin's token), the session when someone is
    impersonating the user, and whatever else the source says its token depends on."""
    parts = (session.user_id, session.org_id or "", session.org_slug or "", session.org_role or "")
    # Length-prefixed, so no choice of ids can make two tenants' keys collide.
    key = namespace + "".join(f"|{len(part)}:{part}" for part in parts)
    if session.actor is not None:
        key += f"|act:{session.session_id}"
    return f"{key}|{variant}" if variant else key


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def token_from_jwt(jwt: str, *, anonymous: bool = False, default_ttl: float = 60) -> TinybirdToken:
    """Read (not verify: it came from a trusted source) a Tinybird JWT and guard its tenant.

    Raises ``TokenError(tenant-missing)`` when any scope pins a null or empty parameter:
    Tinybird pipes written with ``{% if defined(org) %}`` would then return every tenant's rows.
    """
    try:
        parts = jwt.split(".")
        if len(parts) != 3:
            raise MalformedJWT("not a JWT")
        claims = json.loads(b64url_decode(parts[1]))
    except (MalformedJWT, ValueError):
        raise TokenError(TokenError.UNAVAILABLE, "upstream returned a malformed token") from None
    if not isinstance(claims, dict):
        raise TokenError(TokenError.UNAVAILABLE, "upstream returned a malformed token")
    scopes = claims.get("scopes")
    for scope in scopes if isinstance(scopes, list) else ():
        fixed = scope.get("fixed_params") if isinstance(scope, Mapping) else None
        if isinstance(fixed, Mapping) and any(_empty(v) for v in fixed.values()):
            raise TokenError(TokenError.TENANT_MISSING, "a fixed_params value is empty")
    exp = claims.get("exp")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        exp = time.time() + default_ttl
    expires_at = datetime.fromtimestamp(exp, tz=timezone.utc)
    return TinybirdToken(jwt=jwt, expires_at=expires_at, claims=claims, anonymous=anonymous)


class Backoff:
    """Per-key "no upstream call before" deadlines from ``Retry-After`` (monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, maxsize: int = 10_000) -> None:
        self._until: dict[str, float] = {}
        self._clock = clock
        self._maxsize = maxsize

    def block(self, key: str, seconds: float) -> None:
        if len(self._until) >= self._maxsize:
            now = self._clock()
            self._until = {k: v for k, v in self._until.items() if v > now}
        self._until[key] = self._clock() + seconds

    def remaining(self, key: str) -> float | None:
        """Seconds left before ``key`` may call upstream again, or None."""
        until = self._until.get(key)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            self._until.pop(key, None)
            return None
        return left
