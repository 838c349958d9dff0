"""The error answers of SPEC §6, as plain data shared by the middlewares, FastAPI and Flask."""

from __future__ import annotations

import math
from typing import Any

from ..models import AuthResult, ClerkSession
from .claims import Reason

__all__ = ["forbidden", "token_unavailable", "unauthenticated"]

_NO_TOKEN_PRESENTED = frozenset(
    {Reason.TOKEN_MISSING, Reason.TOKEN_AND_UAT_MISSING, Reason.UAT_BUT_NO_TOKEN}
)


def unauthenticated(auth: AuthResult | None) -> tuple[dict[str, Any], dict[str, str]]:
    """401: body and headers. ``WWW-Authenticate`` says ``invalid_token`` only when a token
    was presented and rejected (RFC 6750 §3.1)."""
    reason = (auth.reason if auth is not None else None) or Reason.TOKEN_MISSING
    message = (auth.message if auth is not None else None) or Reason.MESSAGES[reason]
    challenge = "Bearer" if reason in _NO_TOKEN_PRESENTED else 'Bearer error="invalid_token"'
    body = {"error": "unauthenticated", "reason": reason, "message": message}
    return body, {"WWW-Authenticate": challenge, "Cache-Control": "no-store"}


def forbidden(
    session: ClerkSession, role: str | None, permission: str | None
) -> dict[str, Any] | None:
    """403 body when ``session`` lacks the org, role or permission; None when allowed."""
    if session.org_id is None:
        reason, message = "no-active-org", "An active organization is required."
    elif role is not None and not session.has(role=role):
        reason, message = "missing-role", f"The organization role {role!r} is required."
    elif permission is not None and not session.has(permission=permission):
        reason, message = "missing-permission", f"The permission {permission!r} is required."
    else:
        return None
    return {"error": "forbidden", "reason": reason, "message": message}


def token_unavailable(
    code: str | None, retry_after: float | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """503 when a handler needs a Tinybird token and none could be had."""
    reason = code or "tinybird-not-configured"
    body = {
        "error": "tinybird_token_unavailable",
        "reason": reason,
        "message": "No Tinybird token is available for this request; try again later.",
    }
    headers = {"Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return body, headers
