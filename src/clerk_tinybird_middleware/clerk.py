"""Clerk's Backend API: the JWT-template token source (the JWKS policy is in ``core.keys``)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Generator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .core import shortcodes
from .core.ops import (
    DEFAULT_RETRY,
    Clock,
    HttpRequest,
    HttpResponse,
    Op,
    RetryPolicy,
    SystemClock,
    request_with_retries,
)
from .core.tokens import TokenError, short_hash, token_from_jwt
from .errors import ConfigurationError
from .models import ClerkSession, TinybirdToken

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["ClerkTemplateSource", "clerk_error", "retry_after_seconds"]

DEFAULT_TENANT_PARAMS: Mapping[str, Sequence[str]] = {
    "org": ("org.id", "org.slug"),
    "user": ("user.id",),
}
DEFAULT_RETRY_AFTER = 10.0  # Clerk's rate-limit window, when a 429 carries no Retry-After
MAX_RETRY_AFTER = 600.0


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """``Retry-After`` as seconds (delta or HTTP date), bounded to something sane."""
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value).timestamp()
                seconds = when - (time.time() if now is None else now)
            except (TypeError, ValueError, OverflowError):
                seconds = DEFAULT_RETRY_AFTER
        if seconds == seconds:  # not NaN
            return min(max(seconds, 0.0), MAX_RETRY_AFTER)
    return DEFAULT_RETRY_AFTER


def clerk_error(response: HttpResponse) -> tuple[str, str]:
    """(code, long message) of Clerk's ``{"errors": [...]}`` body, empty strings if absent."""
    try:
        errors = json.loads(response.body).get("errors") or [{}]
        first = errors[0]
        return str(first.get("code") or ""), str(first.get("long_message") or first.get("message"))
    except (ValueError, AttributeError, IndexError, TypeError, RecursionError):
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
        code, message = clerk_error(response)
        if "template" in message.lower():
            return TokenError(TokenError.TEMPLATE_NOT_FOUND, "no such JWT template")
        return TokenError(TokenError.SESSION_NOT_FOUND, code or "session not found")
    if status == 0:
        return TokenError(TokenError.UNAVAILABLE, f"no answer from Clerk ({response.error})")
    code, _ = clerk_error(response)
    return TokenError(TokenError.UNAVAILABLE, f"Clerk answered {status} {code}".rstrip())


class ClerkTemplateSource:
    """Tinybird JWTs from a Clerk JWT template (``POST /v1/sessions/{sid}/tokens/{template}``).

    The template (see the README) signs with the Tinybird admin token and pins the tenant in
    ``fixed_params``. Every answer passes the tenant guard before it is handed out: no null or
    empty value at any depth, and each fixed param named in ``tenant_params`` (default: ``org``
    must be the session's org id or slug, ``user`` its user id) must be this session's own
    value — pass a mapping for templates with other parameter names, or ``{}`` to skip that.

    The middleware binds the source to its settings (secret key, API URL) once, when built.
    """

    def __init__(
        self,
        template: str = "tinybird",
        expires_in_seconds: int | None = None,
        *,
        tenant_params: Mapping[str, Sequence[str]] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not template or "/" in template:
            raise ConfigurationError(f"CLERK_TINYBIRD_TEMPLATE: bad template name {template!r}")
        if expires_in_seconds is not None and expires_in_seconds <= 0:
            raise ConfigurationError("expires_in_seconds must be positive")
        self.template = template
        self.expires_in_seconds = expires_in_seconds
        self.tenant_params = dict(DEFAULT_TENANT_PARAMS if tenant_params is None else tenant_params)
        for fields in self.tenant_params.values():
            unknown = [f for f in fields if f not in shortcodes.FIELDS]
            if unknown:
                raise ConfigurationError(f"tenant_params: unknown session field {unknown[0]!r}")
        self._retry = retry or DEFAULT_RETRY
        self._body = (
            None
            if expires_in_seconds is None
            else json.dumps({"expires_in_seconds": expires_in_seconds}).encode()
        )
        self._api_url = ""
        self._secret = ""
        self._clock: Clock = SystemClock()

    def __repr__(self) -> str:
        return (
            f"ClerkTemplateSource(template={self.template!r}, "
            f"expires_in_seconds={self.expires_in_seconds!r})"
        )

    def bind(self, settings: Settings, clock: Clock) -> ClerkTemplateSource:
        """A copy that calls the Clerk instance of ``settings``."""
        if not settings.secret_key:
            raise ConfigurationError("CLERK_SECRET_KEY is required for the Clerk JWT template")
        bound = copy.copy(self)
        bound._api_url = settings.clerk_api_url
        bound._secret = settings.secret_key
        bound._clock = clock
        return bound

    @property
    def cache_namespace(self) -> str:
        return "tpl:" + short_hash(self.template, self._api_url, self._secret)

    @property
    def instance_secret(self) -> str:
        return self._secret

    def token_flow(self, session: ClerkSession) -> Generator[Op, Any, TinybirdToken]:
        if not self._secret:
            raise TokenError(TokenError.NOT_CONFIGURED, "the source is not bound to a secret key")
        url = (
            f"{self._api_url}/v1/sessions/{quote(session.session_id, safe='')}"
            f"/tokens/{quote(self.template, safe='')}"
        )
        headers = {"Authorization": f"Bearer {self._secret}", "Accept": "application/json"}
        if self._body is not None:
            headers["Content-Type"] = "application/json"

        def build(timeout: float) -> HttpRequest:
            return HttpRequest("POST", url, headers, self._body, timeout, endpoint="template")

        response = yield from request_with_retries(build, self._retry, self._clock)
        if response.status != 200:
            raise template_error(response)
        try:
            jwt = json.loads(response.body)["jwt"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise TokenError(TokenError.UNAVAILABLE, "malformed template response") from None
        if not isinstance(jwt, str):
            raise TokenError(TokenError.UNAVAILABLE, "malformed template response")
        token = token_from_jwt(jwt, now=self._clock.time())
        self._check_tenant(token, session)
        return token

    def _check_tenant(self, token: TinybirdToken, session: ClerkSession) -> None:
        """Refuse a token that pins another tenant than the request's session.

        Clerk renders a template from the session's *current* active org, which may differ
        from the org in the (up to 60 s old) session token of this request right after an
        org switch; caching that token under this request's (user, org) would hand one org's
        token to the other. Not remembered as a failure: the next session token is right.
        """
        scopes = token.claims.get("scopes")
        for scope in scopes if isinstance(scopes, list) else ():
            fixed = scope.get("fixed_params") if isinstance(scope, Mapping) else None
            if not isinstance(fixed, Mapping):
                continue
            for param, fields in self.tenant_params.items():
                if param not in fixed:
                    continue
                allowed = {shortcodes.FIELDS[f](session) for f in fields} - {None}
                if str(fixed[param]) not in allowed:
                    raise TokenError(
                        TokenError.TENANT_MISMATCH,
                        f"the template token's {param!r} is not this session's (org switched?)",
                        cacheable=False,
                    )
