"""The JSON of Clerk's Backend API objects, as FakeClerk sends them.

Shapes follow what Clerk sends and what both official SDKs read: ``@clerk/backend``'s
deserializers (dispatch on ``object``; every ``email_addresses[]``/``phone_numbers[]`` item needs
a ``linked_to`` array) and the required fields of ``clerk-backend-api``'s models. Timestamps
are Unix milliseconds, as in Clerk's API. Errors are
``{"errors": [{"message", "long_message", "code", "meta"}], "clerk_trace_id"}``.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

__all__ = [
    "Call",
    "Reply",
    "error_body",
    "invalid_param",
    "json_reply",
    "not_found",
    "organization_object",
    "session_object",
    "stable_id",
    "template_object",
    "user_object",
]

_WEEK_MS = 7 * 24 * 3600 * 1000


def stable_id(prefix: str, *parts: str) -> str:
    """An id derived from ``parts`` (the same user always has the same email id)."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]
    return f"{prefix}_{digest}"


def error_body(
    code: str, message: str, long_message: str | None = None, meta: Mapping[str, Any] | None = None
) -> bytes:
    return json.dumps(
        {
            "errors": [
                {
                    "message": message,
                    "long_message": long_message or message,
                    "code": code,
                    "meta": dict(meta or {}),
                }
            ],
            "clerk_trace_id": secrets.token_hex(16),
        }
    ).encode()


def session_object(
    sid: str, user_id: str, client_id: str, org_id: str | None, created_ms: int, now_ms: int
) -> dict[str, Any]:
    return {
        "object": "session",
        "id": sid,
        "client_id": client_id,
        "user_id": user_id,
        "status": "active",
        "last_active_organization_id": org_id,
        "actor": None,
        "latest_activity": None,
        "last_active_at": now_ms,
        "expire_at": created_ms + _WEEK_MS,
        "abandon_at": created_ms + 4 * _WEEK_MS,
        "created_at": created_ms,
        "updated_at": now_ms,
    }


def _verification(strategy: str) -> dict[str, Any]:
    return {
        "object": "verification_otp",
        "status": "verified",
        "strategy": strategy,
        "attempts": 1,
        "expire_at": None,
    }


def user_object(user_id: str, created_ms: int, extra: Mapping[str, Any]) -> dict[str, Any]:
    """A user with one verified email address and one verified phone number; ``extra``
    replaces top-level fields (``first_name``, ``public_metadata``, ...)."""
    email_id = stable_id("idn", user_id, "email")
    phone_id = stable_id("idn", user_id, "phone")
    local = "".join(c for c in user_id.lower() if c.isalnum() or c in "._-") or "user"
    user: dict[str, Any] = {
        "object": "user",
        "id": user_id,
        "external_id": None,
        "username": None,
        "first_name": None,
        "last_name": None,
        "image_url": "https://img.clerk.com/fake",
        "profile_image_url": "https://img.clerk.com/fake",
        "has_image": False,
        "primary_email_address_id": email_id,
        "primary_phone_number_id": phone_id,
        "primary_web3_wallet_id": None,
        "email_addresses": [
            {
                "id": email_id,
                "object": "email_address",
                "email_address": f"{local}@example.test",
                "reserved": False,
                "verification": _verification("email_code"),
                "linked_to": [],
                "matches_sso_connection": False,
                "created_at": created_ms,
                "updated_at": created_ms,
            }
        ],
        "phone_numbers": [
            {
                "id": phone_id,
                "object": "phone_number",
                "phone_number": "+15555550100",
                "reserved_for_second_factor": False,
                "default_second_factor": False,
                "reserved": False,
                "verification": _verification("phone_code"),
                "linked_to": [],
                "backup_codes": None,
                "created_at": created_ms,
                "updated_at": created_ms,
            }
        ],
        "web3_wallets": [],
        "passkeys": [],
        "external_accounts": [],
        "saml_accounts": [],
        "enterprise_accounts": [],
        "password_enabled": True,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "mfa_enabled_at": None,
        "mfa_disabled_at": None,
        "public_metadata": {},
        "private_metadata": {},
        "unsafe_metadata": {},
        "last_sign_in_at": created_ms,
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": 100,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "create_organizations_limit": None,
        "last_active_at": created_ms,
        "legal_accepted_at": None,
        "locale": None,
        "created_at": created_ms,
        "updated_at": created_ms,
    }
    user.update(extra)
    return user


def organization_object(
    org: Mapping[str, Any], created_by: str | None, created_ms: int, members: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "organization",
        "id": org["id"],
        "name": org.get("name") or org.get("slug") or org["id"],
        "slug": org.get("slug") or org["id"],
        "image_url": "",
        "has_image": False,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": {},
        "private_metadata": {},
        "created_by": created_by,
        "created_at": created_ms,
        "updated_at": created_ms,
    }
    if members is not None:
        body["members_count"] = members
    return body


def template_object(
    template_id: str,
    name: str,
    claims: Mapping[str, Any],
    lifetime: int,
    algorithm: str,
    created_ms: int,
) -> dict[str, Any]:
    return {
        "object": "jwt_template",
        "id": template_id,
        "name": name,
        "claims": dict(claims),
        "lifetime": lifetime,
        "allowed_clock_skew": 5,
        "custom_signing_key": True,
        "signing_algorithm": algorithm,
        "created_at": created_ms,
        "updated_at": created_ms,
    }


# -- the HTTP exchange, as the handlers see it --------------------------------------------------


@dataclass
class Call:
    """One request to the fake: what its handlers read."""

    method: str
    path: str
    query: dict[str, str]  # the first value of each parameter
    cookies: dict[str, str]
    authorization: str
    body: bytes = b""

    def params(self) -> dict[str, str]:
        """Query parameters, then (for a form POST) the form fields over them."""
        values = dict(self.query)
        if self.body:
            form = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)
            values.update({k: v[0] for k, v in form.items()})
        return values


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_reply(status: int, value: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
    return Reply(status, json.dumps(value).encode(), headers or [])


def not_found(long_message: str) -> Reply:
    return Reply(404, error_body("resource_not_found", "not found", long_message))


def invalid_param(name: str, long_message: str) -> Reply:
    return Reply(
        422,
        error_body("form_param_value_invalid", "is invalid", long_message, {"param_name": name}),
    )
