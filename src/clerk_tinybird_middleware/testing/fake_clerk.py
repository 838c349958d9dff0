"""A loopback fake of the parts of Clerk this package talks to, in Clerk's wire format.

* ``GET /v1/jwks`` (Backend API, ``Authorization: Bearer <secret key>``) and
  ``GET /.well-known/jwks.json`` (Frontend API, public): ``{"keys": [{kid, kty, n, e, alg, use}]}``.
* ``POST /v1/sessions/{sid}/tokens/{template}``: ``{"object": "token", "jwt": "..."}``, body
  empty or ``{"expires_in_seconds": N}``; errors as Clerk sends them:
  ``{"errors": [{"message", "long_message", "code", "meta"}], "clerk_trace_id"}``.

It mints session tokens the way Clerk does (RS256, ``kid``, ``cat`` header, v2 org claims),
signs template tokens with the template's own key (HS256 with a Tinybird admin token, like the
JWT template of the README), records calls per endpoint, and injects faults (status,
``Retry-After``, delay). Point the official ``clerk-backend-api`` client, or this package, at
``with fake.serve() as url`` (``url + "/v1"`` for the official client).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .._types import StartResponse, WSGIEnviron
from ..core.jwt import b64url_encode, encode_hs256
from ._issued import issue
from ._server import LoopbackFake

__all__ = ["SESSION_CATEGORY", "TEMPLATE_CATEGORY", "FakeClerk", "Fault"]

SESSION_CATEGORY = "cl_B7d4PD111AAA"
TEMPLATE_CATEGORY = "cl_B7d4PD222AAA"
MACHINE_CATEGORY = "cl_B7d4PD333AAA"
_TEMPLATE_PATH = re.compile(r"^/v1/sessions/(?P<sid>[^/]+)/tokens/(?P<template>[^/]+)$")
_SHORTCODE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


@dataclass
class Fault:
    """An injected failure: answer ``status`` (with ``Retry-After``/``body``) after ``delay`` s,
    for the next ``times`` calls (None: until cleared). ``status=None`` only delays."""

    status: int | None = None
    retry_after: str | None = None
    delay: float = 0.0
    times: int | None = None
    body: bytes | None = None


@dataclass
class _Template:
    claims: Mapping[str, Any]
    signing_key: str
    algorithm: str
    lifetime: int


@dataclass
class _Key:
    kid: str
    private: rsa.RSAPrivateKey = field(repr=False)

    @property
    def public_pem(self) -> str:
        return (
            self.private.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    def jwk(self) -> dict[str, str]:
        numbers = self.private.public_key().public_numbers()

        def b64int(value: int) -> str:
            return b64url_encode(value.to_bytes((value.bit_length() + 7) // 8, "big"))

        return {
            "use": "sig",
            "kty": "RSA",
            "kid": self.kid,
            "alg": "RS256",
            "n": b64int(numbers.n),
            "e": b64int(numbers.e),
        }


def new_signing_key() -> rsa.RSAPrivateKey:
    """A fresh RSA key like Clerk's (2048 bits); tens of milliseconds of CPU."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _new_key(private: rsa.RSAPrivateKey | None = None) -> _Key:
    return _Key(f"ins_{secrets.token_hex(12)}", private or new_signing_key())


class FakeClerk(LoopbackFake):
    """A fake Clerk instance: keys, session tokens, JWT templates and the BAPI endpoints.

    ``session_token(user_id, org={...})`` mints what the browser would hold in ``__session``;
    ``fake.serve()`` serves the endpoints on 127.0.0.1. Thread-safe.
    """

    def __init__(
        self,
        *,
        frontend_api: str = "clerk.fake-app.lcl.dev",
        secret_key: str | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
    ) -> None:
        """``signing_key``: reuse an RSA key (a test suite can make one per session); the
        instance still gets a ``kid`` of its own."""
        self.frontend_api = frontend_api
        self.issuer = f"https://{frontend_api}"
        self.publishable_key = "pk_test_" + base64.b64encode(f"{frontend_api}$".encode()).decode()
        self.secret_key = issue(secret_key or f"sk_test_{secrets.token_urlsafe(30)}")
        self._lock = threading.Lock()
        self._keys = [_new_key(signing_key)]
        self._templates: dict[str, _Template] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._faults: dict[str, list[Fault]] = {}
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, int]] = []

    def __repr__(self) -> str:
        return f"FakeClerk(frontend_api={self.frontend_api!r}, api_url={self._api_url!r})"

    # -- keys ----------------------------------------------------------------------------------

    @property
    def kid(self) -> str:
        return self._keys[0].kid

    @property
    def public_key_pem(self) -> str:
        """The current signing key as ``CLERK_JWT_KEY`` (networkless verification)."""
        return self._keys[0].public_pem

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        return self._keys[0].private

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        with self._lock:
            return {"keys": [key.jwk() for key in self._keys]}

    def rotate_key(self, *, keep_old: bool = False) -> str:
        """Sign with a new key from now on; the JWKS keeps the old one only if ``keep_old``."""
        key = _new_key()
        with self._lock:
            self._keys = [key, *self._keys] if keep_old else [key]
        return key.kid

    # -- tokens --------------------------------------------------------------------------------

    def session_token(
        self,
        user_id: str,
        *,
        org: Mapping[str, Any] | None = None,
        version: int = 2,
        azp: str | None = None,
        lifetime: int = 60,
        session_id: str | None = None,
        header: Mapping[str, Any] | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
        algorithm: str = "RS256",
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A session token as Clerk mints it.

        ``org`` is ``{"id", "slug", "role", "permissions"}`` (role without or with ``org:``;
        permissions as ``org:<feature>:<permission>``), encoded in claims v1 or v2. ``claims``
        add or replace claims; a value of ``None`` removes that claim. ``header`` does the same
        for the JWT header (e.g. ``{"cat": ...}`` or ``{"kid": None}``).
        """
        issued = int(time.time() if now is None else now)
        sid = session_id or f"sess_{secrets.token_hex(12)}"
        payload: dict[str, Any] = {
            "azp": azp,
            "exp": issued + lifetime,
            "fva": [0, -1],
            "iat": issued,
            "iss": self.issuer,
            "jti": secrets.token_hex(10),
            "nbf": issued - 5,
            "sid": sid,
            "sts": "active",
            "sub": user_id,
            "v": version if version == 2 else None,
        }
        if org is not None:
            payload.update(_org_claims(org, version))
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        head: dict[str, Any] = {"cat": SESSION_CATEGORY, "kid": self.kid, "typ": "JWT"}
        head.update(header or {})
        head = {k: v for k, v in head.items() if v is not None}
        with self._lock:
            self._sessions[sid] = {"user_id": user_id, "org": dict(org) if org else None}
        key = signing_key or self.private_key
        return issue(pyjwt.encode(payload, key, algorithm=algorithm, headers=head), jwt=True)

    def end_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def add_template(
        self,
        name: str,
        claims: Mapping[str, Any],
        signing_key: str,
        *,
        algorithm: str = "HS256",
        lifetime: int = 60,
    ) -> None:
        """Register a JWT template. String claims may use ``{{user.id}}``, ``{{org.id}}``,
        ``{{org.slug}}``, ``{{org.role}}``, ``{{session.id}}``; a missing value renders as
        ``null`` when it is the whole string, as Clerk does."""
        with self._lock:
            self._templates[name] = _Template(dict(claims), signing_key, algorithm, lifetime)

    def add_tinybird_template(
        self,
        admin_token: str,
        workspace_id: str,
        *,
        pipe: str = "analytics_hits",
        name: str = "tinybird",
        rps: int = 10,
        lifetime: int = 600,
    ) -> None:
        """The JWT template of the original Next.js project: one ``PIPES:READ`` scope with
        ``fixed_params`` ``org={{org.slug}}``, ``user={{user.id}}``, signed with the admin token.
        """
        self.add_template(
            name,
            {
                "workspace_id": workspace_id,
                "name": "frontend_jwt_{{org.id}}",
                "limits": {"rps": rps},
                "scopes": [
                    {
                        "type": "PIPES:READ",
                        "resource": pipe,
                        "fixed_params": {"org": "{{org.slug}}", "user": "{{user.id}}"},
                    }
                ],
            },
            admin_token,
            lifetime=lifetime,
        )

    def template_token(self, session_id: str, template: str, lifetime: int | None = None) -> str:
        with self._lock:
            spec = self._templates[template]
            session = self._sessions[session_id]
        now = int(time.time())
        context = {
            "user.id": session["user_id"],
            "session.id": session_id,
            "org.id": (session["org"] or {}).get("id"),
            "org.slug": (session["org"] or {}).get("slug"),
            "org.role": _prefixed_role((session["org"] or {}).get("role")),
        }
        claims = {k: _render(v, context) for k, v in spec.claims.items()}
        claims.update(
            {
                "iat": now,
                "nbf": now - 5,
                "exp": now + (lifetime or spec.lifetime),
                "iss": self.issuer,
                "sub": session["user_id"],
                "jti": secrets.token_hex(10),
            }
        )
        if spec.algorithm == "HS256":
            return issue(encode_hs256(claims, spec.signing_key), jwt=True)
        return issue(pyjwt.encode(claims, spec.signing_key, algorithm=spec.algorithm), jwt=True)

    # -- faults and calls ----------------------------------------------------------------------

    def inject(
        self,
        endpoint: str,
        *,
        status: int | None = None,
        retry_after: float | str | None = None,
        delay: float = 0.0,
        times: int | None = None,
        body: bytes | None = None,
    ) -> Fault:
        """Make ``endpoint`` (``"jwks"`` or ``"template"``) fail or stall."""
        if endpoint not in ("jwks", "template"):
            raise ValueError("endpoint must be 'jwks' or 'template'")
        fault = Fault(status, None if retry_after is None else str(retry_after), delay, times, body)
        with self._lock:
            self._faults.setdefault(endpoint, []).append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_calls(self) -> None:
        with self._lock:
            self.calls.clear()
            self.log.clear()

    def _next_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            faults = self._faults.get(endpoint) or []
            if not faults:
                return None
            fault = faults[0]
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    faults.pop(0)
            return fault

    # -- HTTP ----------------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO", "")
        if method == "GET" and path in ("/v1/jwks", "/.well-known/jwks.json"):
            endpoint = "jwks"
        elif method == "POST" and _TEMPLATE_PATH.match(path):
            endpoint = "template"
        else:
            return self._reply(
                start_response, "other", 404, _error("resource_not_found", "not found")
            )
        with self._lock:
            self.calls[endpoint] += 1
        fault = self._next_fault(endpoint)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                body = fault.body if fault.body is not None else _fault_body(fault.status)
                extra = [("Retry-After", fault.retry_after)] if fault.retry_after else []
                return self._reply(start_response, endpoint, fault.status, body, extra)
        if endpoint == "jwks":
            if path == "/v1/jwks" and not self._authorized(environ):
                return self._reply(start_response, endpoint, 401, _unauthorized())
            return self._reply(start_response, endpoint, 200, json.dumps(self.jwks()).encode())
        return self._template(environ, start_response, path)

    def _authorized(self, environ: WSGIEnviron) -> bool:
        given = environ.get("HTTP_AUTHORIZATION", "")
        return secrets.compare_digest(given.encode(), f"Bearer {self.secret_key}".encode())

    def _template(
        self, environ: WSGIEnviron, start_response: StartResponse, path: str
    ) -> Iterable[bytes]:
        if not self._authorized(environ):
            return self._reply(start_response, "template", 401, _unauthorized())
        match = _TEMPLATE_PATH.match(path)
        assert match is not None
        sid, template = match["sid"], match["template"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        lifetime = None
        if raw.strip():
            try:
                lifetime = json.loads(raw).get("expires_in_seconds")
            except (ValueError, AttributeError):
                lifetime = "bad"
            if lifetime is not None and (
                not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0
            ):
                body = _error(
                    "form_param_value_invalid",
                    "is invalid",
                    "expires_in_seconds must be a positive integer",
                    {"param_name": "expires_in_seconds"},
                )
                return self._reply(start_response, "template", 422, body)
        with self._lock:
            known_session = sid in self._sessions
            known_template = template in self._templates
        if not known_session:
            body = _error("resource_not_found", "not found", f"No session was found with id {sid}")
            return self._reply(start_response, "template", 404, body)
        if not known_template:
            long = f"No JWT template exists with name: {template}"
            return self._reply(
                start_response, "template", 404, _error("resource_not_found", "not found", long)
            )
        token = self.template_token(sid, template, lifetime)
        body = json.dumps({"object": "token", "jwt": token}).encode()
        return self._reply(start_response, "template", 200, body)

    def _reply(
        self,
        start_response: StartResponse,
        endpoint: str,
        status: int,
        body: bytes,
        extra: list[tuple[str, str]] | None = None,
    ) -> list[bytes]:
        with self._lock:
            self.log.append((endpoint, status))
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(f"{status} {_REASONS.get(status, 'Status')}", headers + (extra or []))
        return [body]


_REASONS = {
    200: "OK",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _error(
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


def _unauthorized() -> bytes:
    return _error(
        "authentication_invalid",
        "Invalid authentication",
        "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is "
        "correct.",
    )


def _fault_body(status: int) -> bytes:
    if status == 429:
        return _error("too_many_requests", "Too Many Requests", "Too many requests, retry later.")
    if status in (401, 403):
        return _unauthorized()
    return _error("internal_clerk_error", "Something went wrong", "Please try again later.")


def _prefixed_role(role: Any) -> str | None:
    if not isinstance(role, str) or not role:
        return None
    return role if role.startswith("org:") else f"org:{role}"


def _org_claims(org: Mapping[str, Any], version: int) -> dict[str, Any]:
    role = _prefixed_role(org.get("role", "member"))
    permissions = [p for p in org.get("permissions", ()) if isinstance(p, str)]
    if version != 2:
        return {
            "org_id": org["id"],
            "org_slug": org.get("slug"),
            "org_role": role,
            "org_permissions": permissions,
        }
    # v2: o.per lists permission names, fea the features, o.fpm one bitmask per org feature.
    features: list[str] = []
    names: list[str] = []
    grants: dict[str, set[str]] = {}
    for permission in permissions:
        parts = permission.split(":")
        if len(parts) != 3 or parts[0] != "org":
            continue
        feature, name = parts[1], parts[2]
        if feature not in grants:
            features.append(feature)
            grants[feature] = set()
        if name not in names:
            names.append(name)
        grants[feature].add(name)
    masks = [sum(1 << i for i, n in enumerate(names) if n in grants[f]) for f in features]
    claims: dict[str, Any] = {
        "o": {
            "id": org["id"],
            "slg": org.get("slug"),
            "rol": role.removeprefix("org:") if role else None,
            "per": ",".join(names),
            "fpm": ",".join(str(m) for m in masks),
        }
    }
    claims["o"] = {k: v for k, v in claims["o"].items() if v is not None}
    if features:
        claims["fea"] = ",".join(f"o:{f}" for f in features)
    return claims


def _render(value: Any, context: Mapping[str, str | None]) -> Any:
    """Clerk template rendering: ``{{a.b}}`` (with ``||`` fallbacks); a missing value is null
    when the shortcode is the whole string, empty inside a longer one."""
    if isinstance(value, Mapping):
        return {k: _render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, context) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(expression: str) -> str | None:
        for name in expression.split("||"):
            found = context.get(name.strip())
            if found:
                return found
        return None

    whole = _SHORTCODE.fullmatch(value)
    if whole is not None:
        return lookup(whole.group(1))
    return _SHORTCODE.sub(lambda m: lookup(m.group(1)) or "", value)
