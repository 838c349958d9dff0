"""Where the session token is: ``Authorization`` first, then cookies (RFC 6265, leniently)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

__all__ = [
    "Located",
    "cookie_suffix",
    "frontend_api_from_publishable_key",
    "js_parse_int",
    "locate",
    "parse_cookies",
]


@dataclass(frozen=True, slots=True)
class Located:
    token: str | None = field(repr=False)  # a session token: never in a repr
    from_cookie: bool
    client_uat: int | None  # None: no __client_uat cookie (or a header token)
    cookies: dict[str, str] = field(default_factory=dict, repr=False)
    suffixed: bool = False  # the suffixed cookie family (__session_<suffix>) is in use


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
    if not decoded.endswith("$") or not host or "/" in host or "$" in host or "." not in host:
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


_JS_INT = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|\d+)")


def js_parse_int(text: str) -> int:
    """JavaScript's ``Number.parseInt(text) || 0``, as Clerk reads ``__client_uat``:
    leading digits count (``"12abc"`` → 12), ``0x`` means hex, anything else is 0."""
    match = _JS_INT.match(text)
    if match is None or len(match.group(2)) > 30:  # far beyond any timestamp: not a number
        return 0
    sign, digits = match.groups()
    value = int(digits, 16) if digits[:2] in ("0x", "0X") else int(digits)
    return -value if sign == "-" else value


def _bearer(authorization: str) -> str | None:
    """The token of ``Bearer <token>`` (any case), or a bare token; None for other schemes."""
    value = authorization.strip()
    scheme, sep, rest = value.partition(" ")
    if sep:
        return (rest.strip() or None) if scheme.lower() == "bearer" else None
    # No scheme at all: a bare JWT (Clerk's SDKs accept this too; other bare text is ignored).
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
    suffixed = False
    if suffixed_names is not None:
        session = cookies.get(suffixed_names[0]) or None
        uat = cookies.get(suffixed_names[1])
        suffixed = session is not None or uat is not None
    session = session or cookies.get("__session") or None
    if uat is None:
        uat = cookies.get("__client_uat")
    client_uat = None if uat is None else js_parse_int(uat)
    return Located(session, True, client_uat, cookies, suffixed)
