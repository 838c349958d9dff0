"""Where the session token is: ``Authorization`` first, then cookies (RFC 6265, leniently)."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, field

__all__ = [
    "Located",
    "cookie_suffix",
    "frontend_api_from_publishable_key",
    "locate",
    "parse_cookies",
]


@dataclass(frozen=True, slots=True)
class Located:
    token: str | None = field(repr=False)  # a session token: never in a repr
    from_cookie: bool
    client_uat: int | None  # None: no __client_uat cookie (or a header token)


def cookie_suffix(publishable_key: str) -> str:
    """Clerk's multi-app cookie suffix: the first 8 chars of urlsafe-b64(SHA-1(key))."""
    digest = hashlib.sha1(publishable_key.encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode()[:8]


def frontend_api_from_publishable_key(publishable_key: str) -> str | None:
    """``pk_test_<b64(host$)>`` → ``host``; None when the key is not of that shape."""
    for prefix in ("pk_test_", "pk_live_"):
        if publishable_key.startswith(prefix):
            encoded = publishable_key[len(prefix) :]
            break
    else:
        return None
    try:
        decoded = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True).decode()
    except (binascii.Error, ValueError):
        return None
    host = decoded[:-1]
    if not decoded.endswith("$") or not host or "/" in host or "$" in host:
        return None
    return host


def parse_cookies(header: str) -> dict[str, str]:
    """Name → first value. Never raises: a malformed pair is skipped, not the rest."""
    cookies: dict[str, str] = {}
    for pair in header.split(";"):
        name, sep, value = pair.partition("=")
        if not sep:
            continue
        name = name.strip()
        if not name or name in cookies:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        cookies[name] = value
    return cookies


def _bearer(authorization: str) -> str | None:
    value = authorization.strip()
    scheme, sep, rest = value.partition(" ")
    if sep:
        return rest.strip() or None if scheme.lower() == "bearer" else None
    # No scheme at all: a bare JWT (Clerk's SDKs accept this too).
    return value if value.count(".") == 2 else None


def locate(
    authorization: str | None, cookie: str | None, suffixed_names: tuple[str, str] | None
) -> Located:
    """Find the token. ``suffixed_names`` = (session, client_uat) cookie names for this app."""
    if authorization:
        token = _bearer(authorization)
        if token is not None:
            return Located(token, from_cookie=False, client_uat=None)
    if not cookie:
        return Located(None, from_cookie=True, client_uat=None)
    cookies = parse_cookies(cookie)
    session = uat = None
    if suffixed_names is not None:
        session = cookies.get(suffixed_names[0])
        uat = cookies.get(suffixed_names[1])
    session = session or cookies.get("__session") or None
    if uat is None:
        uat = cookies.get("__client_uat")
    client_uat: int | None = None
    if uat is not None:
        # Clerk writes whole seconds; anything else counts as 0 (signed out), as in Clerk's SDKs.
        client_uat = int(uat) if uat.isascii() and uat.isdigit() and len(uat) < 20 else 0
    return Located(session, from_cookie=True, client_uat=client_uat)
