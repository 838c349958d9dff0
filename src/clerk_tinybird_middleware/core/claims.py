"""Claim rules for Clerk session tokens and the org-claim decoding of versions 1 and 2."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models import ClerkSession

__all__ = [
    "SESSION_CATEGORY",
    "Reason",
    "decode_org",
    "session_from_claims",
    "shape_failure",
    "time_failure",
    "time_window",
]

SESSION_CATEGORY = "cl_B7d4PD111AAA"


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
    }


_MAX_MASK_DIGITS = 100  # far beyond any real mask (2^300); keeps int() cheap and bounded


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def time_failure(claims: Mapping[str, Any], now: float, skew: float) -> str | None:
    """exp, nbf, iat against ``now`` with ``skew`` seconds of leeway (re-run per request)."""
    if claims["exp"] <= now - skew:
        return Reason.EXPIRED
    nbf = claims.get("nbf")
    if nbf is not None and nbf > now + skew:
        return Reason.NOT_ACTIVE_YET
    iat = claims.get("iat")
    if iat is not None and iat > now + skew:
        return Reason.IAT_IN_FUTURE
    return None


def time_window(claims: Mapping[str, Any], skew: float) -> tuple[float, float]:
    """[from, until): the instants at which :func:`time_failure` passes for these claims."""
    starts = [v for v in (claims.get("nbf"), claims.get("iat")) if v is not None]
    return (max(starts) - skew if starts else float("-inf")), claims["exp"] + skew


def shape_failure(claims: Mapping[str, Any]) -> str | None:
    """``sub`` a string, ``exp`` a number, ``nbf``/``iat`` numbers when present."""
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        return Reason.TOKEN_INVALID
    if not _number(claims.get("exp")):
        return Reason.TOKEN_INVALID
    for name in ("nbf", "iat"):
        if name in claims and not _number(claims[name]):
            return Reason.TOKEN_INVALID
    return None


def _split(value: Any) -> list[str]:
    return [part.strip() for part in value.split(",")] if isinstance(value, str) else []


def _v2_permissions(org: Mapping[str, Any], features: Any) -> tuple[str, ...]:
    """Decode ``fea`` + ``o.per`` + ``o.fpm``: bit j of the k-th org feature's mask grants
    ``org:<feature>:<per[j]>`` (least significant bit first; ``u:``-only features skipped)."""
    permissions = _split(org.get("per"))
    masks = _split(org.get("fpm"))
    org_features = []
    for entry in _split(features):
        scope, sep, name = entry.partition(":")
        if sep and name and scope in ("o", "ou", "uo"):
            org_features.append(name)
    granted: list[str] = []
    for feature, mask_text in zip(org_features, masks, strict=False):
        if not (mask_text.isascii() and mask_text.isdigit()) or len(mask_text) > _MAX_MASK_DIGITS:
            continue  # malformed masks grant nothing
        mask = int(mask_text)
        for j, permission in enumerate(permissions):
            if permission and mask >> j & 1:
                granted.append(f"org:{feature}:{permission}")
    return tuple(granted)


def decode_org(
    claims: Mapping[str, Any],
) -> tuple[str | None, str | None, str | None, tuple[str, ...]]:
    """(org_id, org_slug, org_role, org_permissions) from v1 or v2 claims."""
    if claims.get("v") == 2:
        org = claims.get("o")
        if not isinstance(org, Mapping) or not isinstance(org.get("id"), str) or not org["id"]:
            return None, None, None, ()
        slug = org.get("slg") if isinstance(org.get("slg"), str) else None
        role = org.get("rol") if isinstance(org.get("rol"), str) and org.get("rol") else None
        if role is not None and not role.startswith("org:"):
            role = f"org:{role}"
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
        role if isinstance(role, str) and role else None,
        tuple(p for p in perms if isinstance(p, str)) if isinstance(perms, list) else (),
    )


def session_from_claims(claims: Mapping[str, Any]) -> ClerkSession:
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
        claims=claims,
    )
