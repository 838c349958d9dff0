"""Claim rules for Clerk session tokens and the org-claim decoding of versions 1 and 2."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from ..models import ClerkSession

__all__ = [
    "SESSION_CATEGORIES",
    "Reason",
    "decode_org",
    "session_from_claims",
    "time_failure",
    "times",
    "times_failure",
]

#: Header ``cat`` values of session tokens: the session category, and the "ignore category"
#: value that instances with that setting put on every token (as @clerk/backend accepts).
SESSION_CATEGORIES = frozenset({"cl_B7d4PD111AAA", "cl_I7d4PD111III"})


class Reason:
    """Every reason code, with its message. Codes are part of the public contract."""

    TOKEN_MISSING = "session-token-missing"
    TOKEN_INVALID = "token-invalid"
    INVALID_ALGORITHM = "token-invalid-algorithm"
    TYPE_MISMATCH = "token-type-mismatch"
    KID_MISMATCH = "jwk-kid-mismatch"
    JWK_LOAD_FAILED = "jwk-remote-failed-to-load"
    SECRET_KEY_INVALID = "secret-key-invalid"
    INVALID_SIGNATURE = "token-invalid-signature"
    EXPIRED = "token-expired"
    NOT_ACTIVE_YET = "token-not-active-yet"
    IAT_IN_FUTURE = "token-iat-in-the-future"
    INVALID_AZP = "token-invalid-authorized-parties"
    INVALID_AUDIENCE = "token-invalid-audience"
    INVALID_ISSUER = "token-invalid-issuer"
    SESSION_PENDING = "session-pending"
    TOKEN_AND_UAT_MISSING = "session-token-and-uat-missing"
    TOKEN_BUT_NO_UAT = "session-token-but-no-client-uat"
    IAT_BEFORE_UAT = "session-token-iat-before-client-uat"
    UAT_BUT_NO_TOKEN = "client-uat-but-no-session-token"
    DEV_BROWSER_MISSING = "dev-browser-missing"
    DEV_BROWSER_SYNC = "dev-browser-sync"

    MESSAGES: Mapping[str, str] = {
        TOKEN_MISSING: "No session token in the Authorization header or the __session cookie.",
        TOKEN_INVALID: "The session token is malformed or lacks required claims.",
        INVALID_ALGORITHM: "The session token is not signed with RS256, RS384 or RS512.",
        TYPE_MISMATCH: "The token is not a Clerk session token (template or machine token?).",
        KID_MISMATCH: "No Clerk signing key matches the token's key id.",
        JWK_LOAD_FAILED: "Clerk's signing keys could not be loaded.",
        SECRET_KEY_INVALID: "Clerk rejected the secret key while loading signing keys.",
        INVALID_SIGNATURE: "The session token's signature does not verify.",
        EXPIRED: "The session token has expired.",
        NOT_ACTIVE_YET: "The session token is not valid yet (nbf).",
        IAT_IN_FUTURE: "The session token was issued in the future (iat).",
        INVALID_AZP: "The session token's authorized party (azp) is not allowed.",
        INVALID_AUDIENCE: "The session token's audience (aud) is not accepted.",
        INVALID_ISSUER: "The session token was issued by another Clerk instance (iss).",
        SESSION_PENDING: "The session is pending: sign-in is not complete.",
        TOKEN_AND_UAT_MISSING: "Signed out: __client_uat is 0 and there is no session cookie.",
        TOKEN_BUT_NO_UAT: "Signed out elsewhere: __client_uat is 0 but a session cookie remains.",
        IAT_BEFORE_UAT: "The session cookie predates the client's last sign-in change.",
        UAT_BUT_NO_TOKEN: "__client_uat says signed in but there is no session cookie.",
        DEV_BROWSER_MISSING: "A development instance needs the dev-browser token (__clerk_db_jwt).",
        DEV_BROWSER_SYNC: "The dev-browser token in the URL must be stored first.",
    }


_MAX_MASK_DIGITS = 4000  # Python's own int() limit is 4300 digits; masks are far shorter


def _number(value: Any) -> bool:
    """A JSON number that JavaScript would also call finite (no bool, NaN, ±inf, 10**400)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range: Infinity in JavaScript
        return False


def _seconds(value: Any) -> float:
    """A time claim as Clerk's SDK compares it: whole seconds, truncated toward zero."""
    return float(math.trunc(value))


def time_failure(claims: Mapping[str, Any], now: float, skew: float) -> str | None:
    """``exp`` (required), then ``nbf`` and ``iat`` (when present): each a finite number,
    each against ``now`` with ``skew`` seconds of leeway — in Clerk's order, so a token with
    several faults gets Clerk's reason."""
    exp = claims.get("exp")
    if not _number(exp):
        return Reason.TOKEN_INVALID
    if _seconds(exp) <= now - skew:
        return Reason.EXPIRED
    for name, reason in (("nbf", Reason.NOT_ACTIVE_YET), ("iat", Reason.IAT_IN_FUTURE)):
        if name in claims:
            value = claims[name]
            if not _number(value):
                return Reason.TOKEN_INVALID
            if _seconds(value) > now + skew:
                return reason
    return None


def times_failure(
    times: tuple[float, float | None, float | None], now: float, skew: float
) -> str | None:
    """:func:`time_failure` over the (exp, nbf, iat) of :func:`times` (already checked)."""
    exp, nbf, iat = times
    if exp <= now - skew:
        return Reason.EXPIRED
    if nbf is not None and nbf > now + skew:
        return Reason.NOT_ACTIVE_YET
    if iat is not None and iat > now + skew:
        return Reason.IAT_IN_FUTURE
    return None


def times(claims: Mapping[str, Any]) -> tuple[float, float | None, float | None]:
    """(exp, nbf, iat) in whole seconds, of claims that passed :func:`time_failure`."""
    nbf, iat = claims.get("nbf"), claims.get("iat")
    return (
        _seconds(claims["exp"]),
        None if nbf is None else _seconds(nbf),
        None if iat is None else _seconds(iat),
    )


def _split(value: Any) -> list[str]:
    return [part.strip() for part in value.split(",")] if isinstance(value, str) else []


def prefixed(name: str) -> str:
    """Clerk's rule for roles and permissions: ``org:`` is added when it is left out."""
    return name if name.startswith("org:") else f"org:{name}"


def _v2_permissions(org: Mapping[str, Any], features: Any) -> tuple[str, ...]:
    """Decode ``fea`` + ``o.per`` + ``o.fpm``: bit j of the k-th org feature's mask grants
    ``org:<feature>:<per[j]>`` (least significant bit first). Every ``o``-scoped entry of
    ``fea`` counts — an empty name included, so a malformed entry cannot shift the masks of
    the ones after it; ``u:``-only features do not."""
    texts = (org.get("per"), org.get("fpm"), features)
    return _grants(*(text if isinstance(text, str) else "" for text in texts))


@functools.lru_cache(maxsize=1024)  # a user's every session token carries the same three
def _grants(per: str, fpm: str, features: str) -> tuple[str, ...]:
    permissions = _split(per)
    masks = _split(fpm)
    org_features = []
    for entry in _split(features):
        scope, sep, name = entry.partition(":")
        if sep and scope in ("o", "ou", "uo"):
            org_features.append(name)
    granted: list[str] = []
    for feature, mask_text in zip(org_features, masks, strict=False):
        if not (mask_text.isascii() and mask_text.isdigit()) or len(mask_text) > _MAX_MASK_DIGITS:
            continue  # malformed masks grant nothing
        mask = int(mask_text)
        for j, permission in enumerate(permissions):
            if mask >> j & 1:  # an empty name is granted as Clerk grants it: org:<feature>:
                granted.append(f"org:{feature}:{permission}")
    return tuple(granted)


def decode_org(
    claims: Mapping[str, Any],
) -> tuple[str | None, str | None, str | None, tuple[str, ...]]:
    """(org_id, org_slug, org_role, org_permissions) from v1 or v2 claims; roles always
    carry the ``org:`` prefix."""
    if claims.get("v") == 2:
        org = claims.get("o")
        if not isinstance(org, Mapping) or not isinstance(org.get("id"), str) or not org["id"]:
            return None, None, None, ()
        slug = org.get("slg") if isinstance(org.get("slg"), str) else None
        rol = org.get("rol")
        role = prefixed(rol) if isinstance(rol, str) and rol else None
        return org["id"], slug, role, _v2_permissions(org, claims.get("fea"))
    org_id = claims.get("org_id")
    if not isinstance(org_id, str) or not org_id:
        return None, None, None, ()
    slug = claims.get("org_slug")
    role = claims.get("org_role")
    perms = claims.get("org_permissions")
    return (
        org_id,
        slug if isinstance(slug, str) else None,
        prefixed(role) if isinstance(role, str) and role else None,
        tuple(p for p in perms if isinstance(p, str)) if isinstance(perms, list) else (),
    )


def session_from_claims(
    claims: Mapping[str, Any], keep: Mapping[str, Any] | None = None
) -> ClerkSession:
    """The session of verified ``claims``; ``keep`` is what ``session.claims`` holds
    (default: ``claims`` themselves; the verifier passes a lazy view of the token)."""
    org_id, org_slug, org_role, permissions = decode_org(claims)
    actor = claims.get("act")
    return ClerkSession(
        user_id=claims["sub"],
        session_id=claims["sid"],
        org_id=org_id,
        org_slug=org_slug,
        org_role=org_role,
        org_permissions=permissions,
        actor=actor if isinstance(actor, Mapping) else None,
        claims=claims if keep is None else keep,
    )
