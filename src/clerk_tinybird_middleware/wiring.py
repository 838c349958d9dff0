"""Settings turned into the engine's parts, once, with every configuration rule.

Everything that can be wrong with a configuration is found here, at construction, as a
:class:`ConfigurationError` naming the variable to fix (``clerk-tinybird check`` lists them
all at once, with the warnings).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .cache import MemoryTokenCache
from .clerk import ClerkTemplateSource
from .core.handshake import Handshake, frontend_base
from .core.keys import KeySet
from .core.locate import cookie_suffix, frontend_api_from_publishable_key
from .core.ops import DEFAULT_RETRY, Clock
from .core.tokens import TokenCache, TokenError, TokenSource, token_from_jwt
from .core.verify import SessionVerifier
from .errors import ConfigurationError
from .models import TinybirdToken
from .settings import Settings
from .tinybird import LocalTokenSource

__all__ = ["Parts", "Problem", "configure", "load_pem"]

logger = logging.getLogger("clerk_tinybird_middleware")

_NEVER = 253402300799.0  # an opaque anonymous token has no exp: never expires


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`diagnose`: ``level`` is ``error`` or ``warning``."""

    level: str
    message: str


@dataclass
class Parts:
    settings: Settings
    verifier: SessionVerifier
    source: TokenSource | None
    cache: TokenCache
    anonymous: TinybirdToken | None
    anonymous_until: float
    handshake: Handshake | None
    cookie_names: tuple[str, str] | None
    warnings: list[str] = field(default_factory=list)


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


def default_source(settings: Settings) -> TokenSource | None:
    """Local minting when configured, else the Clerk template, else none (README)."""
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


def default_cache(settings: Settings) -> TokenCache:
    if settings.redis_url:
        try:
            from .redis_cache import RedisTokenCache
        except ImportError:
            raise ConfigurationError(
                "CLERK_TINYBIRD_REDIS_URL needs redis: "
                "pip install 'clerk-tinybird-middleware[redis]'"
            ) from None
        return RedisTokenCache(settings.redis_url, maxsize=tokens_for(settings))
    return MemoryTokenCache(tokens_for(settings))


def tokens_for(settings: Settings) -> int:
    """The in-process token cache for as many sessions as the memo holds (~4 KB each), so a
    tenant's token is not refetched while its sessions are active (at least 10,000)."""
    return max(10_000, settings.memo_max_mb * 1024 * 1024 // 4096)


def anonymous_token(value: str, now: float) -> tuple[TinybirdToken, float]:
    """The opt-in token for signed-out requests: a JWT (its exp is read and the tenant guard
    applies: a null fixed param would open every tenant's rows) or an opaque token."""
    if not value.isascii() or not value.isprintable() or " " in value:
        raise ConfigurationError("TINYBIRD_ANONYMOUS_TOKEN must be a Tinybird token")
    if value.count(".") == 2:
        try:
            token = token_from_jwt(value, anonymous=True, now=now)
            return token, token.expires_at.timestamp()
        except TokenError as error:
            if error.code == TokenError.TENANT_MISSING:
                raise ConfigurationError(
                    "TINYBIRD_ANONYMOUS_TOKEN pins a null or empty fixed param"
                ) from None
    from datetime import datetime, timezone

    opaque = TinybirdToken(
        jwt=value, expires_at=datetime.fromtimestamp(_NEVER, tz=timezone.utc), anonymous=True
    )
    return opaque, float("inf")


def _bind(source: TokenSource, settings: Settings, clock: Clock) -> TokenSource:
    bind: Callable[[Settings, Clock], TokenSource] | None = getattr(source, "bind", None)
    return source if bind is None else bind(settings, clock)


def configure(
    settings: Settings,
    *,
    token_source: TokenSource | None,
    token_cache: TokenCache | None,
    clock: Clock,
) -> Parts:
    """Every part of an engine; raises :class:`ConfigurationError` for the first problem."""
    if not settings.secret_key and not settings.jwt_key:
        raise ConfigurationError(
            "CLERK_SECRET_KEY or CLERK_JWT_KEY is required to verify Clerk sessions"
        )
    warnings: list[str] = []
    pem = load_pem(settings.jwt_key) if settings.jwt_key else None
    key_set = None
    if pem is None:
        assert settings.secret_key
        key_set = KeySet(
            settings.clerk_api_url, settings.secret_key, clock=clock, retry=DEFAULT_RETRY
        )
    issuers: set[str] = set()
    cookie_names = None
    handshake = None
    if settings.publishable_key:
        host = frontend_api_from_publishable_key(settings.publishable_key)
        if host is None:
            raise ConfigurationError("CLERK_PUBLISHABLE_KEY is not a Clerk publishable key")
        issuers.add(f"https://{host}")
        suffix = cookie_suffix(settings.publishable_key)
        cookie_names = (f"__session_{suffix}", f"__client_uat_{suffix}")
        if settings.proxy_url:
            issuers.add(settings.proxy_url)
        if settings.handshake:
            if not settings.secret_key:
                warnings.append(
                    "CLERK_SECRET_KEY is not set: the handshake (CLERK_TINYBIRD_HANDSHAKE) needs "
                    "it to resolve nonces; stale session cookies sign out instead"
                )
            else:
                handshake = Handshake(
                    frontend_api=frontend_base(settings.proxy_url or host),
                    development=settings.publishable_key.startswith("pk_test_"),
                    api_url=settings.clerk_api_url,
                    secret_key=settings.secret_key,
                )
    verifier = SessionVerifier(
        pem_key=pem,
        key_set=key_set,
        issuers=frozenset(issuers),
        authorized_parties=settings.authorized_parties,
        audience=settings.audience,
        clock_skew=settings.clock_skew_seconds,
        clock=clock,
    )
    source = token_source if token_source is not None else default_source(settings)
    if source is not None:
        source = _bind(source, settings, clock)
    lifetime = getattr(source, "lifetime", None)
    if isinstance(lifetime, int | float) and settings.refresh_margin_seconds >= lifetime:
        raise ConfigurationError(
            f"CLERK_TINYBIRD_REFRESH_MARGIN ({settings.refresh_margin_seconds:g} s) must be "
            f"shorter than the token lifetime (TINYBIRD_TOKEN_LIFETIME, {lifetime:g} s)"
        )
    cache = token_cache if token_cache is not None else default_cache(settings)
    anonymous, until = None, float("inf")
    if settings.anonymous_token:
        anonymous, until = anonymous_token(settings.anonymous_token, clock.time())
    if source is None:
        warnings.append(
            "no Tinybird token source configured (set TINYBIRD_WORKSPACE_ID + TINYBIRD_JWT_SECRET,"
            " or CLERK_SECRET_KEY for the Clerk template); sessions are verified but no Tinybird"
            " token is issued"
        )
    if (settings.secret_key or "").startswith("sk_live_") and not settings.authorized_parties:
        warnings.append(
            "CLERK_AUTHORIZED_PARTIES is empty with a production key: a session minted for "
            "another origin of this Clerk instance is accepted (set your app's origins)"
        )
    return Parts(
        settings=settings,
        verifier=verifier,
        source=source,
        cache=cache,
        anonymous=anonymous,
        anonymous_until=until,
        handshake=handshake,
        cookie_names=cookie_names,
        warnings=warnings,
    )


_ENV_NAME = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
#: Stands in for a malformed key while the rules across fields are checked (never used).
_PLACEHOLDER_SECRET = "sk_test_" + "0" * 40


def diagnose(environ: Any, clock: Clock) -> Iterator[Problem]:
    """Every problem of the configuration in ``environ`` (for ``clerk-tinybird check``): each
    malformed value, then the rules across fields over the well-formed ones (a malformed key
    replaced by a placeholder, so its problem is not reported twice)."""
    from .settings import field_problems, raw_values

    values = raw_values(environ)
    good = dict(values)
    reported = set()
    for name, value in values.items():
        problems = list(field_problems({name: value}))
        for problem in problems:
            yield Problem("error", str(problem))
        if problems:
            reported.add(Settings.env_name(name))
            del good[name]
            if name == "secret_key":
                good[name] = _PLACEHOLDER_SECRET
    try:
        parts = configure(Settings(**good), token_source=None, token_cache=None, clock=clock)
    except ConfigurationError as problem:
        named = _ENV_NAME.search(str(problem))
        if named is None or named.group() not in reported:
            yield Problem("error", str(problem))
        return
    if good == values:  # warnings about a configuration that is not the one given mislead
        for warning in parts.warnings:
            yield Problem("warning", warning)
