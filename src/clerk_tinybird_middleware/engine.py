"""The framework-free engine: settings turned into a verifier, a token source and a cache,
plus the response rules (headers, error bodies). The ASGI and WSGI edges only move bytes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Generator, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AnyStr, Generic, NamedTuple

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .cache import MemoryTokenCache, TokenCache
from .clerk import ClerkTemplateSource
from .core import responses
from .core.io import Op
from .core.keys import KeySet
from .core.locate import cookie_suffix, frontend_api_from_publishable_key
from .core.tokens import (
    Backoff,
    TokenError,
    TokenSource,
    cache_key,
    cache_variant,
    token_from_jwt,
)
from .core.verify import SessionVerifier
from .errors import ConfigurationError
from .models import AuthResult, ClerkSession, TinybirdToken
from .settings import SettingOverrides, Settings
from .tinybird import LocalTokenSource

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Engine", "TokenOutcome"]

logger = logging.getLogger("clerk_tinybird_middleware")

_NEVER = datetime(9999, 12, 31, tzinfo=timezone.utc)


class TokenOutcome(NamedTuple):
    """What a request gets: a token, or the reason it has none (and when to retry)."""

    token: TinybirdToken | None = None
    error: str | None = None
    retry_after: float | None = None


NO_TOKEN = TokenOutcome()
_NOT_CONFIGURED = TokenOutcome(error=TokenError.NOT_CONFIGURED)
_CRASHED = AuthResult.signed_out("token-invalid", "The session token could not be verified.")


def load_pem(pem: str) -> RSAPublicKey:
    """``CLERK_JWT_KEY`` as Clerk's dashboard shows it: PEM, one-line with ``\\n``, or bare."""
    text = pem.strip().replace("\\n", "\n")
    if "-----BEGIN" not in text:
        body = "".join(text.split())
        text = f"-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"
    try:
        key = load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        raise ConfigurationError("CLERK_JWT_KEY is not a PEM public key") from None
    if not isinstance(key, RSAPublicKey):
        raise ConfigurationError("CLERK_JWT_KEY must be an RSA public key")
    return key


def default_token_source(settings: Settings) -> TokenSource | None:
    """Local minting when configured, else the Clerk template, else none (SPEC §3)."""
    if settings.tinybird_workspace_id and settings.tinybird_jwt_secret:
        return LocalTokenSource.from_settings(settings)
    if settings.tinybird_workspace_id or settings.tinybird_jwt_secret:
        missing = (
            "TINYBIRD_JWT_SECRET" if settings.tinybird_workspace_id else "TINYBIRD_WORKSPACE_ID"
        )
        raise ConfigurationError(f"{missing} is required for local minting")
    if settings.secret_key:
        return ClerkTemplateSource(settings.tinybird_template)
    return None


def default_token_cache(settings: Settings) -> TokenCache:
    if settings.redis_url:
        try:
            from .redis_cache import RedisTokenCache
        except ImportError:
            raise ConfigurationError(
                "CLERK_TINYBIRD_REDIS_URL needs redis: "
                "pip install 'clerk-tinybird-middleware[redis]'"
            ) from None
        return RedisTokenCache(settings.redis_url)
    return MemoryTokenCache()


class Engine:
    """Everything both middlewares share, validated and precomputed once."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        token_source: TokenSource | None = None,
        token_cache: TokenCache | None = None,
        **setting_overrides: Unpack[SettingOverrides],
    ) -> None:
        settings = (settings or Settings.from_env()).replace(**setting_overrides)
        self.settings = settings
        if not settings.secret_key and not settings.jwt_key:
            raise ConfigurationError(
                "CLERK_SECRET_KEY or CLERK_JWT_KEY is required to verify Clerk sessions"
            )
        pem = load_pem(settings.jwt_key) if settings.jwt_key else None
        self.key_set = (
            None if pem is not None else KeySet(settings.clerk_api_url, settings.secret_key or "")
        )
        issuer = None
        cookie_names = None
        if settings.publishable_key:
            host = frontend_api_from_publishable_key(settings.publishable_key)
            if host is None:
                raise ConfigurationError("CLERK_PUBLISHABLE_KEY is not a Clerk publishable key")
            issuer = f"https://{host}"
            suffix = cookie_suffix(settings.publishable_key)
            cookie_names = (f"__session_{suffix}", f"__client_uat_{suffix}")
        self.verifier = SessionVerifier(
            pem_key=pem,
            key_set=self.key_set,
            issuer=issuer,
            authorized_parties=settings.authorized_parties,
            audience=settings.audience,
            clock_skew=settings.clock_skew_seconds,
            cookie_names=cookie_names,
        )
        self.source = token_source if token_source is not None else default_token_source(settings)
        self.cache = token_cache if token_cache is not None else default_token_cache(settings)
        self.namespace = self.source.cache_namespace(settings) if self.source else ""
        self.backoff = Backoff()
        self.anonymous = (
            _anonymous_token(settings.anonymous_token) if settings.anonymous_token else None
        )
        self._excluded = tuple((p, f"{p.rstrip('/')}/") for p in settings.exclude_paths)
        self._signed_out_outcome = TokenOutcome(self.anonymous) if self.anonymous else NO_TOKEN
        self._anonymous_until = (
            self.anonymous.expires_at.timestamp() if self.anonymous else float("inf")
        )
        # id(session) → (session, cache key); holding the session keeps its id from reuse.
        self._keys: dict[int, tuple[ClerkSession, str]] = {}
        header = settings.token_header
        self.bytes_headers = HeaderRule(header, _latin1) if header else None
        self.str_headers = HeaderRule(header, str) if header else None
        if self.source is None:
            logger.warning(
                "clerk-tinybird: no Tinybird token source configured (set TINYBIRD_WORKSPACE_ID"
                " + TINYBIRD_JWT_SECRET, or CLERK_SECRET_KEY for the Clerk template);"
                " sessions are verified but no Tinybird token is issued",
                extra={"clerk_tinybird_reason": TokenError.NOT_CONFIGURED},
            )

    def __repr__(self) -> str:
        return f"Engine(source={self.source!r}, cache={self.cache!r})"

    # -- request routing -------------------------------------------------------------------

    def skips(self, method: str, path: str) -> bool:
        """OPTIONS (CORS preflights) and excluded paths pass through untouched."""
        if method == "OPTIONS":
            return True
        excluded = self._excluded
        return bool(excluded) and any(p == path or path.startswith(b) for p, b in excluded)

    def verification_crashed(self) -> AuthResult:
        """A bug in verification must not become a 500: log it, treat the token as invalid."""
        logger.exception("clerk-tinybird: unexpected error while verifying a session")
        return _CRASHED

    # -- tokens ----------------------------------------------------------------------------

    def ready_outcome(self, auth: AuthResult) -> TokenOutcome | str:
        """The outcome when no I/O is needed (signed out, no source, a fresh token held in
        process); otherwise the cache key the edge must fetch for."""
        session = auth.session
        if session is None:
            if self._anonymous_until <= time.time():
                return NO_TOKEN  # an expired anonymous JWT is never handed out
            return self._signed_out_outcome
        if self.source is None:
            return _NOT_CONFIGURED
        key = self._key_of(session)
        try:
            token = self.cache.get(key)
        except Exception:
            logger.exception("clerk-tinybird: token cache read failed")
            return key
        return key if token is None else TokenOutcome(token)

    def _key_of(self, session: ClerkSession) -> str:
        """The cache key of a session, memoized per (memoized) session object."""
        known = self._keys.get(id(session))
        if known is not None and known[0] is session:
            return known[1]
        key = cache_key(self.namespace, session, cache_variant(self.source, session))
        if len(self._keys) >= 4096:
            self._keys.clear()
        self._keys[id(session)] = (session, key)
        return key

    def fetch_flow(self, key: str, session: ClerkSession) -> Generator[Op, Any, TinybirdToken]:
        """The upstream fetch for one cache key, run once however many requests wait on it.

        No call while a ``Retry-After`` for the key runs; a 429's ``Retry-After`` is recorded
        here, inside the shared fetch, before any waiter wakes — so a request arriving right
        after cannot slip another call in.
        """
        left = self.backoff.remaining(key)
        if left is not None:
            raise TokenError(TokenError.RATE_LIMITED, "waiting out Retry-After", retry_after=left)
        assert self.source is not None
        try:
            return (yield from self.source.token_flow(session, self.settings))
        except TokenError as error:
            if error.code == TokenError.RATE_LIMITED and error.retry_after is not None:
                self.backoff.block(key, error.retry_after)
                logger.warning(
                    "clerk-tinybird: Clerk rate limit; no call for this tenant for %.0f s",
                    error.retry_after,
                    extra={"clerk_tinybird_reason": error.code},
                )
            raise

    def failed(self, error: BaseException) -> TokenOutcome:
        """Turn any failure into an outcome; never let it become a 500."""
        if isinstance(error, TokenError):
            if error.code not in (TokenError.RATE_LIMITED, TokenError.TENANT_MISSING):
                logger.warning(
                    "clerk-tinybird: no Tinybird token: %s",
                    error,
                    extra={"clerk_tinybird_reason": error.code},
                )
            return TokenOutcome(error=error.code, retry_after=error.retry_after)
        logger.error(
            "clerk-tinybird: unexpected %s while getting a Tinybird token",
            type(error).__name__,
            extra={"clerk_tinybird_reason": TokenError.UNAVAILABLE},
        )
        return TokenOutcome(error=TokenError.UNAVAILABLE)

    # -- responses ---------------------------------------------------------------------------

    def unauthenticated(self, auth: AuthResult) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """401 for ``require_auth``: JSON body and ``WWW-Authenticate`` (RFC 6750)."""
        return error_response(auth)


def _latin1(text: str) -> bytes:
    return text.encode("latin-1")


class HeaderRule(Generic[AnyStr]):
    """SPEC §6's response headers, for one header type: ``bytes`` (ASGI) or ``str`` (WSGI).

    ``Cache-Control: private, no-store`` replaces the handler's (no shared cache may store a
    tenant's token), ``Vary`` gains ``Cookie, Authorization``, and any token headers the
    handler set are replaced by ours. The encoded values of a token are memoized.
    """

    def __init__(self, token_header: str, encode: Callable[[str], AnyStr]) -> None:
        self._encode: Callable[[str], AnyStr] = encode
        self._token: AnyStr = encode(token_header)
        self._expires: AnyStr = encode(f"{token_header}-expires-at")
        self._cache_control: AnyStr = encode("cache-control")
        self._no_store: AnyStr = encode("private, no-store")
        self._vary: AnyStr = encode("vary")
        self._comma: AnyStr = encode(",")
        self._joiner: AnyStr = encode(", ")
        self._star: AnyStr = encode("*")
        self._ours: tuple[AnyStr, AnyStr] = (encode("Cookie"), encode("Authorization"))
        self._drop: frozenset[AnyStr] = frozenset({self._cache_control, self._token, self._expires})
        self._no_store_header: tuple[AnyStr, AnyStr] = (self._cache_control, self._no_store)
        self._default_vary: tuple[AnyStr, AnyStr] = (self._vary, self._joiner.join(self._ours))
        self._values: dict[str, list[tuple[AnyStr, AnyStr]]] = {}

    def token_headers(self, token: TinybirdToken) -> list[tuple[AnyStr, AnyStr]]:
        values = self._values.get(token.jwt)
        if values is None:
            if len(self._values) >= 10_000:
                self._values.clear()
            values = [
                (self._token, self._encode(token.jwt)),
                (self._expires, self._encode(str(token.expires_at_unix))),
            ]
            self._values[token.jwt] = values
        return values

    def merge(
        self, headers: Iterable[tuple[AnyStr, AnyStr]], token: TinybirdToken
    ) -> list[tuple[AnyStr, AnyStr]]:
        """The handler's headers with ours."""
        merged: list[tuple[AnyStr, AnyStr]] = []
        vary: list[AnyStr] | None = None
        for name, value in headers:
            lower = name.lower()
            if lower == self._vary:
                vary = vary or []
                vary.extend(v.strip() for v in value.split(self._comma) if v.strip())
            elif lower not in self._drop:
                merged.append((name, value))
        merged.append(self._no_store_header)
        merged.append(self._default_vary if vary is None else self._merged_vary(vary))
        merged.extend(self.token_headers(token))
        return merged

    def _merged_vary(self, vary: list[AnyStr]) -> tuple[AnyStr, AnyStr]:
        seen = {v.lower() for v in vary}
        if self._star not in seen:
            vary.extend(v for v in self._ours if v.lower() not in seen)
        return self._vary, self._joiner.join(vary)


def error_response(auth: AuthResult) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The middleware's own 401 (``require_auth``), as raw ASGI-style headers."""
    payload, extra = responses.unauthenticated(auth)
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((name.lower().encode(), value.encode()) for name, value in extra.items()),
    ]
    return 401, headers, body


def _anonymous_token(value: str) -> TinybirdToken:
    """The opt-in token for signed-out requests: a JWT (its exp is read and the tenant guard
    applies: a null fixed param would open every tenant's rows) or an opaque token."""
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ConfigurationError("TINYBIRD_ANONYMOUS_TOKEN must be a Tinybird token")
    if value.count(".") != 2:
        return TinybirdToken(jwt=value, expires_at=_NEVER, anonymous=True)
    try:
        return token_from_jwt(value, anonymous=True)
    except TokenError as error:
        if error.code == TokenError.TENANT_MISSING:
            raise ConfigurationError(
                "TINYBIRD_ANONYMOUS_TOKEN pins a null or empty fixed param"
            ) from None
        return TinybirdToken(jwt=value, expires_at=_NEVER, anonymous=True)  # not a JWT after all
