"""Tinybird JWTs minted locally with the workspace admin token (no Clerk round trip)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from .core import shortcodes
from .core.io import Op
from .core.jwt import encode_hs256
from .core.tokens import TokenError, short_hash, token_from_jwt
from .errors import ConfigurationError
from .models import ClerkSession, TinybirdToken
from .settings import Settings

__all__ = ["LocalTokenSource"]

ScopeList = Sequence[Mapping[str, Any]]
ScopesArg = ScopeList | Callable[[ClerkSession], ScopeList]

DEFAULT_NAME = "{{org.id||user.id}}"
_DEFAULT_LIMITS: Mapping[str, int] = {"rps": 10}


def _check_scopes(scopes: ScopeList, where: str, *, null_is_tenant_missing: bool = False) -> None:
    for scope in scopes:
        if not isinstance(scope, Mapping) or not isinstance(scope.get("resource"), str):
            raise ConfigurationError(f"{where}: every scope needs a string 'resource'")
        for key in ("resource", "filter"):
            if isinstance(scope.get(key), str):
                _validate(scope[key], where)
        fixed = scope.get("fixed_params", {})
        if not isinstance(fixed, Mapping):
            raise ConfigurationError(f"{where}: 'fixed_params' must be an object")
        for value in fixed.values():
            if value is None:
                if null_is_tenant_missing:  # a callable's answer for this session
                    raise TokenError(TokenError.TENANT_MISSING, "a fixed param is null")
                raise ConfigurationError(f"{where}: a fixed param is null (that pins no tenant)")
            if isinstance(value, str):
                _validate(value, where)


def _validate(template: str, where: str) -> None:
    try:
        shortcodes.validate(template, where)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _callable_identity(scopes: Callable[..., Any]) -> str:
    """Stable across processes (for a shared Redis cache): where it is, and its code."""
    code = getattr(scopes, "__code__", None)
    body = hashlib.sha256(code.co_code).hexdigest()[:16] if code is not None else ""
    return f"callable:{scopes.__module__}.{scopes.__qualname__}:{body}"


class LocalTokenSource:
    """Sign Tinybird JWTs (HS256) in process with the workspace admin token.

    ``scopes`` is a list of Tinybird scopes whose ``resource``, ``filter`` and ``fixed_params``
    values may use shortcodes (``{{org.slug||user.id}}``), or a callable returning such a list
    for a :class:`ClerkSession`. A fixed param that renders empty refuses the token
    (``tenant-missing``). ``name`` — also Tinybird's rate-limit bucket — defaults to one per
    tenant.
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
    ) -> None:
        if not workspace_id:
            raise ConfigurationError("TINYBIRD_WORKSPACE_ID is required for local minting")
        if not jwt_secret:
            raise ConfigurationError("TINYBIRD_JWT_SECRET is required for local minting")
        if lifetime <= 0:
            raise ConfigurationError("TINYBIRD_TOKEN_LIFETIME must be positive")
        if not callable(scopes):
            if not scopes:
                raise ConfigurationError("TINYBIRD_JWT_SCOPES: at least one scope is required")
            _check_scopes(scopes, "TINYBIRD_JWT_SCOPES")
        self.workspace_id = workspace_id
        self._secret = jwt_secret
        self.scopes = scopes
        self.name = name or DEFAULT_NAME
        _validate(self.name, "token name")
        self.lifetime = lifetime
        self.limits = dict(limits) if limits else None
        static = _callable_identity(scopes) if callable(scopes) else scopes
        self._uses_session_id = "session.id" in json.dumps([static, self.name])
        self._namespace = "local:" + short_hash(
            workspace_id,
            jwt_secret,
            json.dumps([static, self.name, lifetime, self.limits], sort_keys=True, default=str),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalTokenSource:
        if settings.tinybird_scopes is None:
            raise ConfigurationError(
                "TINYBIRD_JWT_SCOPES is required with TINYBIRD_WORKSPACE_ID and TINYBIRD_JWT_SECRET"
            )
        assert settings.tinybird_workspace_id
        assert settings.tinybird_jwt_secret
        return cls(
            settings.tinybird_workspace_id,
            settings.tinybird_jwt_secret,
            settings.tinybird_scopes,
            lifetime=settings.tinybird_token_lifetime,
        )

    def __repr__(self) -> str:
        return f"LocalTokenSource(workspace_id={self.workspace_id!r}, name={self.name!r})"

    def cache_namespace(self, settings: Settings) -> str:
        return self._namespace

    def cache_variant(self, session: ClerkSession) -> str:
        """What a token depends on beyond (user, org, slug, role): the session id when a
        template uses ``{{session.id}}``; for a scopes callable, its rendered output."""
        if callable(self.scopes):
            return short_hash(json.dumps(self.claims(session, now=0), sort_keys=True, default=str))
        return session.session_id if self._uses_session_id else ""

    def claims(self, session: ClerkSession, now: float | None = None) -> dict[str, Any]:
        """The claims of a token for ``session``; raises TokenError(tenant-missing)."""
        scopes = self.scopes(session) if callable(self.scopes) else self.scopes
        if callable(self.scopes):
            _check_scopes(scopes, "scopes callable", null_is_tenant_missing=True)
        try:
            rendered = [shortcodes.render_value(dict(scope), session) for scope in scopes]
            name = shortcodes.render(self.name, session)
        except shortcodes.TenantMissing as missing:
            raise TokenError(TokenError.TENANT_MISSING, f"{missing} is empty") from None
        claims: dict[str, Any] = {
            "workspace_id": self.workspace_id,
            "name": name,
            "exp": int((time.time() if now is None else now) + self.lifetime),
            "scopes": rendered,
        }
        if self.limits:
            claims["limits"] = self.limits
        return claims

    def mint(self, session: ClerkSession) -> TinybirdToken:
        token = encode_hs256(self.claims(session), self._secret)
        return token_from_jwt(token)

    def token_flow(
        self, session: ClerkSession, settings: Settings
    ) -> Generator[Op, Any, TinybirdToken]:
        return self.mint(session)
        yield  # a flow that never needs I/O
