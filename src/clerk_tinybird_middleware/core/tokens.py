"""Tinybird token rules: the tenant guard, cache keys, what a cache holds, and the broker —
the one flow that turns a session into a token (cache, failures, the instance-wide 429 pause,
single-flight, refresh ahead), whatever the source and the cache.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from cachetools import TTLCache

from ..models import ClerkSession, JWTClaims, TinybirdToken
from .jwt import MalformedJWT, read_payload
from .lru import Entry
from .ops import Clock, Flow, Join, Op, Spawn

__all__ = [
    "FAILURE_TTL",
    "HOLD_FLOOR",
    "Held",
    "TokenBroker",
    "TokenCache",
    "TokenError",
    "TokenOutcome",
    "TokenSource",
    "cache_key",
    "pins_nothing",
    "short_hash",
    "token_from_jwt",
]

logger = logging.getLogger("clerk_tinybird_middleware")

FAILURE_TTL = 30.0  # cacheable failures are remembered this long (never past the session's exp)
HOLD_FLOOR = 2.0  # a held token is handed out until this long before its exp
REFRESH_RETRY = 5.0  # after a failed background refresh, the next one waits this long
_MAX_EXP = 253402300799  # 9999-12-31T23:59:59Z: beyond it a datetime cannot hold the instant


class TokenError(Exception):
    """No token for this request; ``code`` is the public ``tinybird_token_error`` value.

    ``cacheable=False`` marks a failure that will not repeat (e.g. an org switch in flight).
    """

    RATE_LIMITED = "clerk-rate-limited"
    UNAVAILABLE = "clerk-unavailable"
    KEY_INVALID = "clerk-key-invalid"
    TEMPLATE_NOT_FOUND = "clerk-template-not-found"
    SESSION_NOT_FOUND = "clerk-session-not-found"
    TENANT_MISSING = "tenant-missing"
    #: A template token pinning another tenant than the request's (right after an org
    #: switch): the same public code — this request has no token for its tenant — but never
    #: remembered as a failure.
    TENANT_MISMATCH = TENANT_MISSING
    NOT_CONFIGURED = "tinybird-not-configured"

    CACHEABLE = frozenset({TENANT_MISSING, SESSION_NOT_FOUND, TEMPLATE_NOT_FOUND})

    def __init__(
        self,
        code: str,
        detail: str = "",
        *,
        retry_after: float | None = None,
        cacheable: bool = True,
    ) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.retry_after = retry_after
        self.cacheable = cacheable and code in self.CACHEABLE


@dataclass(frozen=True, slots=True)
class TokenOutcome:
    """What a request gets: a token, or the reason it has none (and when to retry)."""

    token: TinybirdToken | None = None
    error: str | None = None
    retry_after: float | None = None


NO_TOKEN = TokenOutcome()


class TokenSource(Protocol):
    """Where Tinybird tokens come from; configured when built. ``token_flow`` is a flow: it
    yields I/O operations (or none) and returns a token, or raises :class:`TokenError`."""

    @property
    def cache_namespace(self) -> str:
        """Part of every cache key: two sources (or Clerk instances) never share entries."""
        ...

    @property
    def instance_secret(self) -> str:
        """The secret the source signs or authenticates with (binds shared cache values)."""
        ...

    def token_flow(self, session: ClerkSession) -> Generator[Op, Any, TinybirdToken]: ...


def short_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def cache_key(namespace: str, session: ClerkSession, variant: str = "") -> str:
    """(source, user, org) — with the org's slug and the user's role in it (a token may pin
    either, and a demoted admin must not keep an admin's token), the session when someone is
    impersonating the user, and whatever else the source says its token depends on."""
    user, org, slug, role = (
        session.user_id,
        session.org_id or "",
        session.org_slug or "",
        session.org_role or "",
    )
    # Length-prefixed, so no choice of ids can make two tenants' keys collide.
    key = f"{namespace}|{len(user)}:{user}|{len(org)}:{org}|{len(slug)}:{slug}|{len(role)}:{role}"
    if session.actor is not None:
        key += f"|act:{session.session_id}"
    return f"{key}|{variant}" if variant else key


def cache_variant(source: object, session: ClerkSession) -> str:
    """A source may say what else its token depends on (``cache_variant(session) -> str``)."""
    variant = getattr(source, "cache_variant", None)
    if variant is None:
        return ""
    try:
        return str(variant(session))
    except Exception:
        return "!"


_MAX_DEPTH = 16


def pins_nothing(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is, or holds at any depth, a null or an empty value (``None``,
    ``""``, ``[]``, ``{}``): such a fixed param or filter pins no tenant."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if depth >= _MAX_DEPTH:
        return True  # nothing real nests this deep: refuse rather than recurse
    if isinstance(value, Mapping):
        return not value or any(pins_nothing(v, depth + 1) for v in value.values())
    if isinstance(value, list | tuple):
        return not value or any(pins_nothing(v, depth + 1) for v in value)
    return False


def guard_tenant(claims: Mapping[str, Any]) -> None:
    """The tenant guard, for tokens of any source: raise ``TokenError(tenant-missing)`` when
    a scope's ``fixed_params`` or ``filter`` holds a null or empty value at any depth —
    Tinybird pipes written with ``{% if defined(org) %}`` would return every tenant's rows."""
    scopes = claims.get("scopes")
    for scope in scopes if isinstance(scopes, list) else ():
        if not isinstance(scope, Mapping):
            continue
        fixed = scope.get("fixed_params")
        if fixed is not None and (
            not isinstance(fixed, Mapping) or any(pins_nothing(v) for v in fixed.values())
        ):
            raise TokenError(TokenError.TENANT_MISSING, "a fixed_params value is empty")
        if "filter" in scope and pins_nothing(scope["filter"]):
            raise TokenError(TokenError.TENANT_MISSING, "a scope filter is empty")


def exp_instant(value: Any) -> float | None:
    """A usable ``exp``: a finite number a datetime can hold, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) and 0 < seconds <= _MAX_EXP else None


def token_from_jwt(jwt: str, *, anonymous: bool = False, now: float | None = None) -> TinybirdToken:
    """Read (not verify: it came from a trusted source) a Tinybird JWT and guard its tenant.

    Raises ``TokenError(tenant-missing)`` for a null or empty tenant (see :func:`guard_tenant`)
    and ``TokenError(clerk-unavailable)`` for something that is not a usable JWT.
    """
    parts = jwt.split(".")
    try:
        if len(parts) != 3:
            raise MalformedJWT("not a JWT")
        claims = read_payload(parts[1])
    except MalformedJWT:
        raise TokenError(TokenError.UNAVAILABLE, "upstream returned a malformed token") from None
    guard_tenant(claims)
    exp = exp_instant(claims.get("exp"))
    if exp is None:
        if "exp" in claims or now is None:
            raise TokenError(TokenError.UNAVAILABLE, "the token has no usable exp")
        exp = now + 60
    expires_at = datetime.fromtimestamp(exp, tz=timezone.utc)
    # Held by the thousand: the claims are read again (rarely) from the token itself.
    return TinybirdToken(jwt=jwt, expires_at=expires_at, claims=JWTClaims(jwt), anonymous=anonymous)


class Held(Entry):
    """What a token cache holds under a key: a token (handed out until ``expires_at``,
    refreshed from ``refresh_at``) or a remembered failure (until ``expires_at``)."""

    __slots__ = ("error", "expires_at", "outcome", "refresh_at", "session_id", "token")

    def __init__(
        self,
        token: TinybirdToken | None,
        error: str | None,
        refresh_at: float,
        expires_at: float,
        session_id: str | None = None,
    ) -> None:
        super().__init__()
        self.token = token
        self.error = error
        self.refresh_at = refresh_at
        self.expires_at = expires_at
        self.session_id = session_id  # a failure that belongs to one session only
        self.outcome = TokenOutcome(token, error)

    @classmethod
    def of(cls, token: TinybirdToken, margin: float) -> Held:
        exp = token.expires_at.timestamp()
        return cls(token, None, exp - margin, exp - HOLD_FLOOR)

    @classmethod
    def failure(cls, code: str, until: float, session_id: str | None = None) -> Held:
        return cls(None, code, until, until, session_id)

    def serves(self, session: ClerkSession, now: float) -> bool:
        """Can this be this session's answer right now (without a refresh)?"""
        if self.token is not None:
            return now < self.refresh_at and now < self.expires_at
        return now < self.expires_at and self.session_id in (None, session.session_id)

    def __repr__(self) -> str:
        what = "token" if self.token is not None else f"error={self.error!r}"
        return f"Held({what}, refresh_at={self.refresh_at}, expires_at={self.expires_at})"


class TokenCache(Protocol):
    """Where held tokens live: in process, and optionally shared (Redis). ``peek`` is the
    warm path (no I/O); ``fill`` is a flow that gets a value for ``key`` — from the shared
    store or by running ``fetch`` (once across the fleet) — and keeps it in process."""

    def peek(self, key: str) -> Held | None: ...

    def fill(
        self, key: str, fetch: Callable[[], Flow], *, refresh: bool, secret: bytes
    ) -> Generator[Op, Any, Held]: ...

    def pause(self, instance: str, seconds: float | None) -> Generator[Op, Any, float | None]:
        """Share (``seconds``) or read (``None``) an instance-wide pause; the seconds left."""
        ...


class Counters(Protocol):
    def cache_result(self, result: str) -> None: ...


class TokenBroker:
    """Session → token outcome, for one source and one cache: the cache, the failure memory,
    the instance-wide 429 pause, single-flight, refresh ahead and the tenant guard."""

    def __init__(
        self,
        source: TokenSource,
        cache: TokenCache,
        *,
        margin: float,
        clock: Clock,
        counters: Counters,
    ) -> None:
        self.source = source
        self.cache = cache
        self.margin = margin
        self.clock = clock
        self.counters = counters
        self.namespace = source.cache_namespace
        self.instance = short_hash("instance", source.cache_namespace)
        self._secret = hashlib.sha256(
            b"clerk-tinybird cache v1\x00" + source.instance_secret.encode()
        ).digest()
        self._paused_until = 0.0  # wall clock; Clerk's limit is per instance
        self._refresh_failed: TTLCache[str, bool] = TTLCache(100_000, REFRESH_RETRY)
        self._keys: dict[int, tuple[ClerkSession, str]] = {}

    def __repr__(self) -> str:
        return f"TokenBroker(source={self.source!r}, cache={self.cache!r})"

    def key_of(self, session: ClerkSession) -> str:
        """The cache key of a session, memoized per (memoized) session object."""
        known = self._keys.get(id(session))
        if known is not None and known[0] is session:
            return known[1]
        key = cache_key(self.namespace, session, cache_variant(self.source, session))
        if len(self._keys) >= 4096:
            self._keys.clear()
        self._keys[id(session)] = (session, key)  # holding the session keeps its id from reuse
        return key

    def warm(self, key: str, session: ClerkSession, now: float) -> Held | None:
        """The held value that answers this session now with nothing to do, or None."""
        held = self.cache.peek(key)
        if held is not None and held.serves(session, now):
            return held
        return None

    def paused(self, now: float) -> TokenOutcome | None:
        left = self._paused_until - now
        if left <= 0:
            return None
        return TokenOutcome(error=TokenError.RATE_LIMITED, retry_after=left)

    def cold(self, key: str, session: ClerkSession) -> Generator[Op, Any, TokenOutcome]:
        now = self.clock.time()
        held = self.cache.peek(key)
        if held is not None and held.token is not None and now < held.expires_at:
            if now >= held.refresh_at and key not in self._refresh_failed:
                self.counters.cache_result("refresh")
                yield Spawn(("token", key), lambda: self._fill(key, session, refresh=True))
            return held.outcome
        if held is not None and held.serves(session, now):
            return held.outcome
        paused = self.paused(now)
        if paused is not None:
            return paused
        self.counters.cache_result("miss")
        try:
            held = yield Join(("token", key), lambda: self._fill(key, session, refresh=False))
        except Exception as error:
            return self._failed(error)
        assert isinstance(held, Held)
        return held.outcome

    def _fill(self, key: str, session: ClerkSession, *, refresh: bool) -> Flow:
        if not refresh:
            held = self.cache.peek(key)  # filled since this caller looked (a flight just ended)
            if held is not None and held.serves(session, self.clock.time()):
                return held
        try:
            return (
                yield from self.cache.fill(
                    key, lambda: self._fetch(session), refresh=refresh, secret=self._secret
                )
            )
        except Exception:
            if refresh:
                self._refresh_failed[key] = True
            raise

    def _fetch(self, session: ClerkSession) -> Generator[Op, Any, Held]:
        """One upstream call (or local mint) and what it means; run once per key."""
        now = self.clock.time()
        if self.paused(now) is None:
            left = yield from self.cache.pause(self.instance, None)
            if left:
                self._paused_until = max(self._paused_until, now + left)
        paused = self.paused(now)
        if paused is not None:
            raise TokenError(TokenError.RATE_LIMITED, "paused", retry_after=paused.retry_after)
        try:
            token = yield from self.source.token_flow(session)
        except TokenError as error:
            if error.code == TokenError.RATE_LIMITED and error.retry_after is not None:
                yield from self._pause(error.retry_after)
            else:
                _log(error)  # once per upstream answer, not once per waiting request
            if not error.cacheable:
                raise
            exp = session.claims.get("exp")
            until = now + FAILURE_TTL
            if isinstance(exp, int | float) and not isinstance(exp, bool):
                until = min(until, float(exp))
            owner = session.session_id if error.code == TokenError.SESSION_NOT_FOUND else None
            return Held.failure(error.code, until, owner)
        return Held.of(token, self.margin)

    def _pause(self, seconds: float) -> Generator[Op, Any, None]:
        self._paused_until = max(self._paused_until, self.clock.time() + seconds)
        logger.warning(
            "clerk-tinybird: Clerk rate limit; no template call for %.0f s (instance-wide)",
            seconds,
            extra={"clerk_tinybird_reason": TokenError.RATE_LIMITED},
        )
        yield from self.cache.pause(self.instance, seconds)

    @staticmethod
    def _failed(error: BaseException) -> TokenOutcome:
        """Turn any failure into an outcome; never let it become a 500."""
        if isinstance(error, TokenError):
            return TokenOutcome(error=error.code, retry_after=error.retry_after)
        logger.error(
            "clerk-tinybird: unexpected %s while getting a Tinybird token",
            type(error).__name__,
            extra={"clerk_tinybird_reason": TokenError.UNAVAILABLE},
        )
        return TokenOutcome(error=TokenError.UNAVAILABLE)


def _log(error: TokenError) -> None:
    if error.code == TokenError.TENANT_MISSING:
        return  # a user without the org a template needs: expected, and remembered
    logger.warning(
        "clerk-tinybird: no Tinybird token: %s",
        error,
        extra={"clerk_tinybird_reason": error.code},
    )
