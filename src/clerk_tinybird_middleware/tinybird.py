"""Tinybird JWTs minted locally with the workspace admin token (no Clerk round trip)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .core import shortcodes
from .core.jwt import encode_hs256
from .core.ops import Clock, Op, SystemClock
from .core.scopes import ScopeProblem, check_scopes
from .core.tokens import TokenError, short_hash, token_from_jwt
from .errors import ConfigurationError
from .models import ClerkSession, TinybirdToken

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["LocalTokenSource"]

logger = logging.getLogger("clerk_tinybird_middleware")

ScopeList = Sequence[Mapping[str, Any]]
ScopesArg = ScopeList | Callable[[ClerkSession], ScopeList]

DEFAULT_NAME = "{{org.id||user.id}}"
_DEFAULT_LIMITS: Mapping[str, int] = {"rps": 10}
SCOPES_ENV = "TINYBIRD_JWT_SCOPES"


def _callable_identity(scopes: Callable[..., Any]) -> str:
    """Stable across processes (for a shared Redis cache): where it is, and its code."""
    code = getattr(scopes, "__code__", None)
    body = hashlib.sha256(code.co_code).hexdigest()[:16] if code is not None else ""
    return f"callable:{scopes.__module__}.{scopes.__qualname__}:{body}"


class LocalTokenSource:
    """Sign Tinybird JWTs (HS256) in process with the workspace admin token.

    ``scopes`` is a list of Tinybird scopes whose ``resource``, ``filter`` and ``fixed_params``
    values may use shortcodes (``{{org.slug||user.id}}``), or a callable returning such a list
    for a :class:`ClerkSession`. Scopes are validated when built (see the README): known
    ``type`` s only, ``fixed_params`` on ``PIPES:READ`` and ``filter`` on ``DATASOURCES:READ``
    only, no literal null or empty value, and every read scope pins the tenant with
    ``{{org.id}}``, ``{{org.slug}}`` or ``{{user.id}}`` — unless ``allow_unpinned_scopes=True``
    (for data that really is shared by every tenant; a warning says so at start-up). A fixed
    param that renders empty refuses the token (``tenant-missing``). ``name`` — also Tinybird's
    rate-limit bucket — defaults to one per tenant.
    """

    def __init__(
        self,
        workspace_id: str,
        jwt_secret: str,
        scopes: ScopesArg,
        *,
        name: str | None = None,
        lifetime: int = 600,
        limits: Mapping[str, int] | None = _DEFAULT_LIMITS,
        allow_unpinned_scopes: bool = False,
    ) -> None:
        if not workspace_id:
            raise ConfigurationError("TINYBIRD_WORKSPACE_ID is required for local minting")
        if not jwt_secret:
            raise ConfigurationError("TINYBIRD_JWT_SECRET is required for local minting")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
            raise ConfigurationError("TINYBIRD_TOKEN_LIFETIME must be a positive number of seconds")
        self.allow_unpinned_scopes = allow_unpinned_scopes
        if not callable(scopes):
            try:
                check_scopes(scopes, allow_unpinned=allow_unpinned_scopes)
            except ScopeProblem as problem:
                raise ConfigurationError(f"{SCOPES_ENV}: {problem}") from None
            scopes = tuple(dict(scope) for scope in scopes)
            if allow_unpinned_scopes:
                self._warn_unpinned(scopes)
        self.workspace_id = workspace_id
        self._secret = jwt_secret
        self.scopes: ScopesArg = scopes
        self.name = name or DEFAULT_NAME
        try:
            shortcodes.validate(self.name, "token name")
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.lifetime = lifetime
        self.limits = dict(limits) if limits else None
        self._clock: Clock = SystemClock()
        static = _callable_identity(scopes) if callable(scopes) else scopes
        self._uses_session_id = "session.id" in json.dumps([static, self.name])
        self._namespace = "local:" + short_hash(
            workspace_id,
            jwt_secret,
            json.dumps([static, self.name, lifetime, self.limits], sort_keys=True, default=str),
        )

    @staticmethod
    def _warn_unpinned(scopes: ScopeList) -> None:
        try:
            check_scopes(scopes)
        except ScopeProblem as problem:
            if problem.unpinned:
                logger.warning(
                    "clerk-tinybird: allow_unpinned_scopes is on and %s: every tenant's token "
                    "reads the same rows. Only use it for data shared by all tenants.",
                    problem,
                    extra={"clerk_tinybird_reason": "unpinned-scopes"},
                )

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalTokenSource:
        if settings.tinybird_scopes is None:
            raise ConfigurationError(
                f"{SCOPES_ENV} is required with TINYBIRD_WORKSPACE_ID and TINYBIRD_JWT_SECRET"
            )
        assert settings.tinybird_workspace_id
        assert settings.tinybird_jwt_secret
        return cls(
            settings.tinybird_workspace_id,
            settings.tinybird_jwt_secret,
            settings.tinybird_scopes,
            lifetime=settings.tinybird_token_lifetime,
            allow_unpinned_scopes=settings.tinybird_allow_unpinned_scopes,
        )

    def __repr__(self) -> str:
        return f"LocalTokenSource(workspace_id={self.workspace_id!r}, name={self.name!r})"

    def bind(self, settings: Settings, clock: Clock) -> LocalTokenSource:
        bound = copy.copy(self)
        bound._clock = clock
        return bound

    @property
    def cache_namespace(self) -> str:
        return self._namespace

    @property
    def instance_secret(self) -> str:
        return self._secret

    def cache_variant(self, session: ClerkSession) -> str:
        """What a token depends on beyond (user, org, slug, role): the session id when a
        template uses ``{{session.id}}``; for a scopes callable, its rendered output."""
        if callable(self.scopes):
            return short_hash(json.dumps(self.claims(session, now=0), sort_keys=True, default=str))
        return session.session_id if self._uses_session_id else ""

    def _scopes_for(self, session: ClerkSession) -> ScopeList:
        if not callable(self.scopes):
            return self.scopes
        scopes = self.scopes(session)
        tenant = frozenset(v for v in (session.user_id, session.org_id, session.org_slug) if v)
        try:
            check_scopes(scopes, allow_unpinned=self.allow_unpinned_scopes, tenant=tenant)
        except ScopeProblem as problem:
            if not problem.empty:
                logger.error(
                    "clerk-tinybird: the scopes callable returned a scope that cannot be "
                    "minted (%s); no token",
                    problem,
                    extra={"clerk_tinybird_reason": TokenError.TENANT_MISSING},
                )
            raise TokenError(TokenError.TENANT_MISSING, str(problem)) from None
        return scopes

    def claims(self, session: ClerkSession, now: float | None = None) -> dict[str, Any]:
        """The claims of a token for ``session``; raises TokenError(tenant-missing)."""
        scopes = self._scopes_for(session)
        try:
            rendered = [shortcodes.render_value(dict(scope), session) for scope in scopes]
            name = shortcodes.render(self.name, session)
        except shortcodes.TenantMissing as missing:
            raise TokenError(TokenError.TENANT_MISSING, f"{missing} is empty") from None
        claims: dict[str, Any] = {
            "workspace_id": self.workspace_id,
            "name": name,
            "exp": int((self._clock.time() if now is None else now) + self.lifetime),
            "scopes": rendered,
        }
        if self.limits:
            claims["limits"] = self.limits
        return claims

    def mint(self, session: ClerkSession) -> TinybirdToken:
        """Sign a token for ``session`` (the tenant guard applies to what is signed)."""
        return token_from_jwt(encode_hs256(self.claims(session), self._secret))

    def token_flow(self, session: ClerkSession) -> Generator[Op, Any, TinybirdToken]:
        return self.mint(session)
        yield  # a flow that never needs I/O
