"""Clerk's Backend API: the JWT-template token source (the JWKS policy is in ``core.keys``)."""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from .core.io import HttpRequest, HttpResponse, Op, RetryPolicy, request_with_retries
from .core.tokens import TokenError, short_hash, token_from_jwt
from .errors import ConfigurationError
from .models import ClerkSession, TinybirdToken
from .settings import Settings

__all__ = ["ClerkTemplateSource"]

DEFAULT_RETRY_AFTER = 10.0  # Clerk's rate-limit window, when a 429 carries no Retry-After
MAX_RETRY_AFTER = 600.0


def retry_after_seconds(value: str | None) -> float:
    """``Retry-After`` as seconds (delta or HTTP date), bounded to something sane."""
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = parsedate_to_datetime(value).timestamp() - time.time()
            except (TypeError, ValueError):
                seconds = DEFAULT_RETRY_AFTER
        if seconds == seconds:  # not NaN
            return min(max(seconds, 0.0), MAX_RETRY_AFTER)
    return DEFAULT_RETRY_AFTER


def _clerk_error(response: HttpResponse) -> tuple[str, str]:
    """(code, long message) of Clerk's ``{"errors": [...]}`` body, empty strings if absent."""
    try:
        errors = json.loads(response.body).get("errors") or [{}]
        first = errors[0]
        return str(first.get("code") or ""), str(first.get("long_message") or first.get("message"))
    except (ValueError, AttributeError, IndexError, TypeError):
        return "", ""


def template_error(response: HttpResponse) -> TokenError:
    """Map a failed template call to the public error code."""
    status = response.status
    if status == 429:
        return TokenError(
            TokenError.RATE_LIMITED,
            "Clerk rate limit",
            retry_after=retry_after_seconds(response.headers.get("retry-after")),
        )
    if status in (401, 403):
        return TokenError(TokenError.KEY_INVALID, "Clerk rejected the secret key")
    if status == 404:
        code, message = _clerk_error(response)
        if "template" in message.lower():
            return TokenError(TokenError.TEMPLATE_NOT_FOUND, "no such JWT template")
        return TokenError(TokenError.SESSION_NOT_FOUND, code or "session not found")
    if status == 0:
        return TokenError(TokenError.UNAVAILABLE, f"no answer from Clerk ({response.error})")
    code, _ = _clerk_error(response)
    return TokenError(TokenError.UNAVAILABLE, f"Clerk answered {status} {code}".rstrip())


class ClerkTemplateSource:
    """Tinybird JWTs from a Clerk JWT template (``POST /v1/sessions/{sid}/tokens/{template}``).

    The template (see the README) signs with the Tinybird admin token and pins the tenant in
    ``fixed_params``. Every answer passes the tenant guard before it is handed out.
    """

    def __init__(
        self,
        template: str = "tinybird",
        expires_in_seconds: int | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not template or "/" in template:
            raise ConfigurationError(f"CLERK_TINYBIRD_TEMPLATE: bad template name {template!r}")
        if expires_in_seconds is not None and expires_in_seconds <= 0:
            raise ConfigurationError("expires_in_seconds must be positive")
        self.template = template
        self.expires_in_seconds = expires_in_seconds
        self._retry = retry or RetryPolicy()
        self._body = (
            None
            if expires_in_seconds is None
            else json.dumps({"expires_in_seconds": expires_in_seconds}).encode()
        )

    def __repr__(self) -> str:
        return (
            f"ClerkTemplateSource(template={self.template!r}, "
            f"expires_in_seconds={self.expires_in_seconds!r})"
        )

    def cache_namespace(self, settings: Settings) -> str:
        return "tpl:" + short_hash(self.template, settings.clerk_api_url, settings.secret_key or "")

    def token_flow(
        self, session: ClerkSession, settings: Settings
    ) -> Generator[Op, Any, TinybirdToken]:
        if not settings.secret_key:
            raise TokenError(TokenError.NOT_CONFIGURED, "CLERK_SECRET_KEY is not set")
        url = (
            f"{settings.clerk_api_url}/v1/sessions/{quote(session.session_id, safe='')}"
            f"/tokens/{quote(self.template, safe='')}"
        )
        headers = {"Authorization": f"Bearer {settings.secret_key}", "Accept": "application/json"}
        if self._body is not None:
            headers["Content-Type"] = "application/json"

        def build(timeout: float) -> HttpRequest:
            return HttpRequest("POST", url, headers, self._body, timeout)

        response = yield from request_with_retries(build, self._retry)
        if response.status != 200:
            raise template_error(response)
        try:
            jwt = json.loads(response.body)["jwt"]
        except (ValueError, KeyError, TypeError):
            raise TokenError(TokenError.UNAVAILABLE, "malformed template response") from None
        if not isinstance(jwt, str):
            raise TokenError(TokenError.UNAVAILABLE, "malformed template response")
        return token_from_jwt(jwt)
