"""The values a request sees: :class:`AuthResult`, :class:`ClerkSession`, :class:`TinybirdToken`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

__all__ = ["AuthResult", "ClerkSession", "JWTClaims", "TinybirdToken"]


class JWTClaims(Mapping[str, Any]):
    """The claims of a JWT, decoded from the token the first time they are read.

    Sessions and tokens are remembered by the thousand and their claims are rarely read
    after the checks: holding the token (held anyway) instead of a parsed dict saves ~1.5 KB
    each. The token is one that already parsed (never shown in a repr).
    """

    __slots__ = ("_claims", "_token")

    def __init__(self, token: str) -> None:
        self._token = token
        self._claims: dict[str, Any] | None = None

    def _data(self) -> dict[str, Any]:
        claims = self._claims
        if claims is None:
            from .core.jwt import read_payload

            claims = self._claims = read_payload(self._token.split(".")[1])
        return claims

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def __repr__(self) -> str:
        return f"JWTClaims({sorted(self._data())!r})"


@dataclass(frozen=True, slots=True)
class ClerkSession:
    """A verified Clerk session, with org claims normalized across claim versions 1 and 2.

    ``org_role`` always carries the ``org:`` prefix (``org:admin``); ``org_permissions`` holds
    the explicit ``org_permissions`` (v1) or the features decoded from ``fea``/``o.per``/``o.fpm``
    (v2), e.g. ``org:reports:read``.
    """

    user_id: str
    session_id: str
    org_id: str | None = None
    org_slug: str | None = None
    org_role: str | None = None
    org_permissions: tuple[str, ...] = ()
    actor: Mapping[str, Any] | None = None
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The session as plain JSON-able data, for an API response (no raw claims)."""
        return {
            "user_id": self.user_id,
            "session_id": self.session_id,
            "org_id": self.org_id,
            "org_slug": self.org_slug,
            "org_role": self.org_role,
            "org_permissions": list(self.org_permissions),
            "impersonated": self.actor is not None,
        }

    def has(self, *, role: str | None = None, permission: str | None = None) -> bool:
        """True when the session's active org grants ``role`` and ``permission`` (both if given).

        ``role`` and ``permission`` may be written with or without the ``org:`` prefix
        (``"admin"``, ``"org:admin"``; ``"reports:read"``), as in Clerk's ``has()``. With
        neither argument, true when an org is active.
        """
        if self.org_id is None:
            return False
        if role is not None and (self.org_role is None or _org(self.org_role) != _org(role)):
            return False
        return permission is None or _org(permission) in self.org_permissions


def _org(name: str) -> str:
    """Clerk's ``prefixWithOrg``: exactly one leading ``org:``."""
    while name.startswith("org:"):
        name = name[4:]
    return f"org:{name}"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of authenticating one request.

    ``reason`` is a stable machine code (``token-expired``, ``session-token-missing``, …) and
    ``message`` a human explanation; both are ``None`` when signed in. Neither ever contains a
    token. ``status`` is ``"handshake"`` only while the middleware answers a page load with
    Clerk's handshake redirect (the app is not called then).
    """

    status: Literal["signed-in", "signed-out", "handshake"]
    reason: str | None = None
    message: str | None = None
    session: ClerkSession | None = None

    @property
    def is_signed_in(self) -> bool:
        return self.status == "signed-in"

    @classmethod
    def signed_out(cls, reason: str, message: str) -> AuthResult:
        return cls("signed-out", reason, message, None)

    @classmethod
    def signed_in(cls, session: ClerkSession) -> AuthResult:
        return cls("signed-in", None, None, session)


@dataclass(frozen=True, slots=True)
class TinybirdToken:
    """A Tinybird JWT and when it expires. ``repr``/``str`` never show the JWT itself."""

    jwt: str = field(repr=False)
    expires_at: datetime
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    anonymous: bool = False

    @property
    def expires_at_unix(self) -> int:
        return int(self.expires_at.timestamp())

    @property
    def name(self) -> str | None:
        name = self.claims.get("name")
        return name if isinstance(name, str) else None
