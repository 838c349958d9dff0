"""A loopback fake of the parts of Clerk this package talks to, in Clerk's wire format.

Backend API (``Authorization: Bearer <secret key>``; a wrong key is answered ``401`` with
code ``clerk_key_invalid``, an unknown id ``404`` ``resource_not_found``):

* ``GET /v1/jwks`` — ``{"keys": [{kid, kty, n, e, alg, use}]}`` (also ``GET
  /.well-known/jwks.json``, public, as the Frontend API serves it);
* ``GET /v1/sessions/{id}``, ``GET /v1/users/{id}``, ``GET /v1/organizations/{id or slug}``;
* ``POST /v1/sessions/{id}/tokens`` (a fresh session token) and
  ``POST /v1/sessions/{id}/tokens/{template}`` — ``{"object": "token", "jwt": "..."}``, body
  empty or ``{"expires_in_seconds": N}`` (else ``422`` ``form_param_value_invalid``);
* ``GET /v1/jwt_templates`` (a bare array; ``{"data", "total_count"}`` with ``paginated=true``)
  and ``GET /v1/jwt_templates/{id}``;
* ``GET /v1/clients/handshake_payload?nonce=`` — ``{"directives": [Set-Cookie strings]}``.

Frontend API (:mod:`.fake_clerk_frontend`): ``GET /v1/client/handshake``, and a sign-in and a
sign-out endpoint for tests. Every JSON answer has ``Content-Type: application/json`` exactly
(``@clerk/backend`` parses no other spelling).

It mints session tokens the way Clerk does (RS256, ``kid``, ``cat`` header, v2 org claims),
signs template tokens with the template's own key (HS256 with a Tinybird admin token), records
calls per endpoint (``calls["session"]``, ``calls["handshake"]``, ...) and injects faults
(status, ``Retry-After``, delay) per endpoint. Point the official clients, or this package, at
``with fake.serve() as url`` (``url + "/v1"`` for the Python ``clerk-backend-api``).

While serving, and unless ``frontend_api=`` was given, the fake *is* the instance's Frontend
API: ``publishable_key`` encodes ``127.0.0.1:PORT`` and ``issuer`` is
``https://127.0.0.1:PORT``. The middleware then redirects handshakes to the publishable key's
host over HTTPS, which the loopback fake does not speak: configure it with
``proxy_url=fake.api_url`` (plain HTTP; also accepted as ``iss``)::

    ClerkTinybirdMiddleware(app, publishable_key=fake.publishable_key, proxy_url=fake.api_url,
                            secret_key=fake.secret_key, clerk_api_url=fake.api_url)
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .._types import StartResponse, WSGIEnviron
from ..core.jwt import b64url_encode, encode_hs256
from ._issued import issue
from ._server import LoopbackFake
from .fake_clerk_frontend import Frontend
from .fake_clerk_objects import (
    Call,
    Reply,
    error_body,
    invalid_param,
    json_reply,
    not_found,
    organization_object,
    session_object,
    template_object,
    user_object,
)

__all__ = ["ENDPOINTS", "SESSION_CATEGORY", "TEMPLATE_CATEGORY", "FakeClerk", "Fault"]

SESSION_CATEGORY = "cl_B7d4PD111AAA"
TEMPLATE_CATEGORY = "cl_B7d4PD222AAA"
MACHINE_CATEGORY = "cl_B7d4PD333AAA"
DEFAULT_FRONTEND_API = "clerk.fake-app.lcl.dev"
_SHORTCODE = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_ID = "(?P<id>[^/]+)"

#: (method, path pattern, endpoint name, Backend API: needs the secret key)
_ROUTES: tuple[tuple[str, re.Pattern[str], str, bool], ...] = tuple(
    (method, re.compile(f"^{pattern}$"), name, bapi)
    for method, pattern, name, bapi in (
        ("GET", "/v1/jwks", "jwks", True),
        ("GET", "/.well-known/jwks.json", "jwks", False),
        ("POST", f"/v1/sessions/{_ID}/tokens/(?P<template>[^/]+)", "template", True),
        ("POST", f"/v1/sessions/{_ID}/tokens", "token", True),
        ("GET", f"/v1/sessions/{_ID}", "session", True),
        ("GET", f"/v1/users/{_ID}", "user", True),
        ("GET", f"/v1/organizations/{_ID}", "organization", True),
        ("GET", "/v1/jwt_templates", "jwt_templates", True),
        ("GET", f"/v1/jwt_templates/{_ID}", "jwt_template", True),
        ("GET", "/v1/clients/handshake_payload", "handshake_payload", True),
        ("GET", "/v1/client/handshake", "handshake", False),
        ("POST", "/v1/client/sign_in", "sign_in", False),
        ("GET", "/v1/client/sign_in", "sign_in", False),
        ("POST", "/v1/client/sign_out", "sign_out", False),
        ("GET", "/v1/client/sign_out", "sign_out", False),
    )
)
#: Every endpoint name, for ``calls``, ``log`` and ``inject``.
ENDPOINTS = tuple(dict.fromkeys(name for _, _, name, _ in _ROUTES))


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
    signing_key: str = field(repr=False)
    algorithm: str
    lifetime: int
    id: str = field(default_factory=lambda: f"jtmp_{secrets.token_hex(12)}")
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class _Session:
    user_id: str
    org: dict[str, Any] | None
    client_id: str
    version: int = 2
    created_ms: int = field(default_factory=lambda: int(time.time() * 1000))


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
    """A fake Clerk instance: keys, session tokens, JWT templates, the Backend API endpoints
    and the Frontend API's handshake.

    ``session_token(user_id, org={...})`` mints what the browser would hold in ``__session``;
    ``fake.serve()`` serves the endpoints on 127.0.0.1. Thread-safe.
    """

    def __init__(
        self,
        *,
        frontend_api: str | None = None,
        secret_key: str | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
        live: bool = False,
        session_lifetime: int = 60,
    ) -> None:
        """``frontend_api``: the instance's Frontend API host (default: ``127.0.0.1:PORT``
        while serving, else ``clerk.fake-app.lcl.dev``). ``signing_key``: reuse an RSA key (a
        test suite can make one per session); the instance still gets a ``kid`` of its own.
        ``live``: a production instance (``pk_live_``; no dev-browser cookie).
        ``session_lifetime``: seconds, for the session tokens the fake mints itself (the
        handshake, ``POST /v1/sessions/{id}/tokens``) and ``session_token``'s default."""
        self._frontend_api = frontend_api
        self.development = not live
        self.session_lifetime = session_lifetime
        self.secret_key = issue(
            secret_key or f"sk_{'live' if live else 'test'}_{secrets.token_urlsafe(30)}"
        )
        self._lock = threading.Lock()
        self._keys = [_new_key(signing_key)]
        self._templates: dict[str, _Template] = {}
        self._sessions: dict[str, _Session] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._orgs: dict[str, dict[str, Any]] = {}
        self._created_ms: dict[str, int] = {}
        self._faults: dict[str, list[Fault]] = {}
        self.frontend = Frontend(self)
        self.calls: Counter[str] = Counter()
        self.log: list[tuple[str, int]] = []

    def __repr__(self) -> str:
        return f"FakeClerk(frontend_api={self.frontend_api!r}, api_url={self._api_url!r})"

    # -- the instance --------------------------------------------------------------------------

    @property
    def frontend_api(self) -> str:
        """The Frontend API host: as given, else the loopback host while serving."""
        if self._frontend_api is not None:
            return self._frontend_api
        if self._api_url is not None:
            return self._api_url.split("://", 1)[1]
        return DEFAULT_FRONTEND_API

    @property
    def issuer(self) -> str:
        """The ``iss`` of this instance's session tokens: ``https://<frontend api>``."""
        return f"https://{self.frontend_api}"

    @property
    def publishable_key(self) -> str:
        """``pk_test_``/``pk_live_`` + base64(``<frontend api>$``), as Clerk's."""
        prefix = "pk_test_" if self.development else "pk_live_"
        return prefix + base64.b64encode(f"{self.frontend_api}$".encode()).decode()

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

    # -- sessions, users, organizations ----------------------------------------------------------

    def register_session(
        self,
        session_id: str,
        user_id: str,
        org: Mapping[str, Any] | None,
        client_id: str | None = None,
        version: int = 2,
    ) -> None:
        """Make ``session_id`` known to the Backend API (``session_token`` does it too)."""
        with self._lock:
            known = self._sessions.get(session_id)
            client = client_id or (known.client_id if known else f"client_{secrets.token_hex(12)}")
            self._sessions[session_id] = _Session(
                user_id, dict(org) if org else None, client, version
            )
            self._users.setdefault(user_id, {})
            now = int(time.time() * 1000)
            self._created_ms.setdefault(user_id, now)
            if org is not None and org.get("id"):
                self._orgs.setdefault(org["id"], {"created_by": user_id})
                self._orgs[org["id"]].update(
                    {k: org[k] for k in ("id", "slug", "name") if k in org}
                )
                self._created_ms.setdefault(org["id"], now)

    def end_session(self, session_id: str) -> None:
        """The Backend API forgets the session (``404`` for its tokens and ``GET``)."""
        with self._lock:
            self._sessions.pop(session_id, None)

    def add_user(self, user_id: str, **fields: Any) -> None:
        """Set fields of ``GET /v1/users/{id}`` (``first_name="Ada"``, ``public_metadata={}``,
        ...); users seen in session tokens exist with defaults."""
        with self._lock:
            self._users.setdefault(user_id, {}).update(fields)
            self._created_ms.setdefault(user_id, int(time.time() * 1000))

    def sign_in(self, user_id: str, *, org: Mapping[str, Any] | None = None) -> str:
        """A Frontend API client signed in as ``user_id``: the value of its ``__client``
        cookie (on the fake's origin). The sign-in endpoint does the same over HTTP."""
        client_id, _ = self.frontend.sign_in(user_id, dict(org) if org else None)
        return client_id

    def session_json(self, session_id: str) -> dict[str, Any] | None:
        """``GET /v1/sessions/{id}``'s body, or None for an unknown session."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            return None
        org_id = (session.org or {}).get("id")
        now = int(time.time() * 1000)
        return session_object(
            session_id, session.user_id, session.client_id, org_id, session.created_ms, now
        )

    # -- tokens --------------------------------------------------------------------------------

    def session_token(
        self,
        user_id: str,
        *,
        org: Mapping[str, Any] | None = None,
        version: int = 2,
        azp: str | None = None,
        lifetime: int | None = None,
        session_id: str | None = None,
        header: Mapping[str, Any] | None = None,
        signing_key: rsa.RSAPrivateKey | None = None,
        algorithm: str = "RS256",
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A session token as Clerk mints it (``lifetime`` default: ``session_lifetime``).

        ``org`` is ``{"id", "slug", "role", "permissions"}`` (role without or with ``org:``;
        permissions as ``org:<feature>:<permission>``), encoded in claims v1 or v2. ``claims``
        add or replace claims; a value of ``None`` removes that claim. ``header`` does the same
        for the JWT header (e.g. ``{"cat": ...}`` or ``{"kid": None}``).
        """
        issued = int(time.time() if now is None else now)
        sid = session_id or f"sess_{secrets.token_hex(12)}"
        payload: dict[str, Any] = {
            "azp": azp,
            "exp": issued + (self.session_lifetime if lifetime is None else lifetime),
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
            known = self._sessions.get(sid)
        self.register_session(sid, user_id, org, known.client_id if known else None, version)
        key = signing_key or self.private_key
        return issue(pyjwt.encode(payload, key, algorithm=algorithm, headers=head), jwt=True)

    def fresh_session_token(
        self, session_id: str, *, azp: str | None = None, lifetime: int | None = None
    ) -> tuple[str, int] | None:
        """A new token for a known session, as Clerk refreshes it: (jwt, iat), or None."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            return None
        issued = int(time.time())
        token = self.session_token(
            session.user_id,
            org=session.org,
            version=session.version,
            azp=azp,
            lifetime=lifetime,
            session_id=session_id,
            now=issued,
        )
        return token, issued

    def handshake_token(self, directives: list[str]) -> str:
        """The legacy ``__clerk_handshake`` JWT: the directives, signed with the instance key."""
        now = int(time.time())
        claims = {"handshake": directives, "iat": now, "exp": now + 60}
        head = {"kid": self.kid, "typ": "JWT", "cat": SESSION_CATEGORY}
        return issue(
            pyjwt.encode(claims, self.private_key, algorithm="RS256", headers=head), jwt=True
        )

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
        """A Tinybird JWT template: one ``PIPES:READ`` scope on ``pipe`` with ``fixed_params``
        ``org={{org.slug}}`` and ``user={{user.id}}``, signed HS256 with the admin token.

        The original Next.js project's template had the same ``fixed_params`` but was named
        ``"name": "frontend_jwt"`` (one Tinybird rate-limit bucket for every tenant), and its
        pipe filtered with ``{% if defined(org) %}`` — a user with no active org got a token
        whose null ``org`` the pipe skips, reading that user's rows in every org. This one
        names the token per org (``frontend_jwt_{{org.id}}``); the package refuses null pins.
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
        org = session.org or {}
        context = {
            "user.id": session.user_id,
            "session.id": session_id,
            "org.id": org.get("id"),
            "org.slug": org.get("slug"),
            "org.role": _prefixed_role(org.get("role")),
        }
        claims = {k: _render(v, context) for k, v in spec.claims.items()}
        claims.update(
            {
                "iat": now,
                "nbf": now - 5,
                "exp": now + (lifetime or spec.lifetime),
                "iss": self.issuer,
                "sub": session.user_id,
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
        """Make ``endpoint`` (one of :data:`ENDPOINTS`: ``"jwks"``, ``"template"``,
        ``"token"``, ``"session"``, ``"user"``, ``"organization"``, ``"jwt_templates"``,
        ``"jwt_template"``, ``"handshake_payload"``, ``"handshake"``, ...) fail or stall.
        Faults queue per endpoint and apply before the secret key is checked."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {', '.join(ENDPOINTS)}")
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
        route = _route(method, path)
        if route is None:
            with self._lock:
                self.calls["other"] += 1
            reply = not_found(f"{method} {path} is not an endpoint of this fake")
            return self._send(start_response, "other", reply)
        endpoint, bapi, ids = route
        with self._lock:
            self.calls[endpoint] += 1
        call = _read_call(environ, method, path)
        fault = self._next_fault(endpoint)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                body = fault.body if fault.body is not None else _fault_body(fault.status)
                extra = [("Retry-After", fault.retry_after)] if fault.retry_after else []
                return self._send(start_response, endpoint, Reply(fault.status, body, extra))
        if bapi and not self._authorized(call.authorization):
            return self._send(start_response, endpoint, Reply(401, _unauthorized()))
        handler: Callable[..., Reply] = getattr(self, f"_on_{endpoint}")
        return self._send(start_response, endpoint, handler(call, **ids))

    def _authorized(self, given: str) -> bool:
        return secrets.compare_digest(given.encode(), f"Bearer {self.secret_key}".encode())

    def _send(self, start_response: StartResponse, endpoint: str, reply: Reply) -> list[bytes]:
        with self._lock:
            self.log.append((endpoint, reply.status))
        headers = list(reply.headers)
        if reply.body or not any(name == "location" for name, _ in headers):
            headers.insert(0, ("Content-Type", "application/json"))
        headers.append(("Content-Length", str(len(reply.body))))
        start_response(f"{reply.status} {_REASONS.get(reply.status, 'Status')}", headers)
        return [reply.body]

    # -- the endpoints ---------------------------------------------------------------------------

    def _on_jwks(self, call: Call) -> Reply:
        return json_reply(200, self.jwks())

    def _on_session(self, call: Call, id: str) -> Reply:
        body = self.session_json(id)
        if body is None:
            return not_found(f"No session was found with id {id}")
        return json_reply(200, body)

    def _on_user(self, call: Call, id: str) -> Reply:
        with self._lock:
            extra = self._users.get(id)
            created = self._created_ms.get(id, 0)
        if extra is None:
            return not_found(f"No user was found with id {id}")
        return json_reply(200, user_object(id, created, extra))

    def _on_organization(self, call: Call, id: str) -> Reply:
        with self._lock:
            org = self._orgs.get(id) or next(
                (o for o in self._orgs.values() if o.get("slug") == id), None
            )
            members = None
            if org is not None and call.query.get("include_members_count") == "true":
                members = len(
                    {
                        s.user_id
                        for s in self._sessions.values()
                        if (s.org or {}).get("id") == org["id"]
                    }
                )
            created = self._created_ms.get(org["id"], 0) if org else 0
        if org is None:
            return not_found(f"No organization was found with id or slug {id}")
        return json_reply(200, organization_object(org, org.get("created_by"), created, members))

    def _on_jwt_templates(self, call: Call) -> Reply:
        with self._lock:
            items = [self._template_json(name, t) for name, t in self._templates.items()]
        if call.query.get("paginated") != "true":
            return json_reply(200, items)
        offset, limit = _int(call.query.get("offset"), 0), _int(call.query.get("limit"), 10)
        return json_reply(200, {"data": items[offset : offset + limit], "total_count": len(items)})

    def _on_jwt_template(self, call: Call, id: str) -> Reply:
        with self._lock:
            found = [self._template_json(n, t) for n, t in self._templates.items() if t.id == id]
        return json_reply(200, found[0]) if found else not_found(f"No JWT template with id {id}")

    @staticmethod
    def _template_json(name: str, spec: _Template) -> dict[str, Any]:
        return template_object(
            spec.id, name, spec.claims, spec.lifetime, spec.algorithm, spec.created_ms
        )

    def _on_token(self, call: Call, id: str) -> Reply:
        lifetime = _expires_in(call.body)
        if isinstance(lifetime, Reply):
            return lifetime
        token = self.fresh_session_token(id, lifetime=lifetime)
        if token is None:
            return not_found(f"No session was found with id {id}")
        return json_reply(200, {"object": "token", "jwt": token[0]})

    def _on_template(self, call: Call, id: str, template: str) -> Reply:
        lifetime = _expires_in(call.body)
        if isinstance(lifetime, Reply):
            return lifetime
        with self._lock:
            known_session = id in self._sessions
            known_template = template in self._templates
        if not known_session:
            return not_found(f"No session was found with id {id}")
        if not known_template:
            return not_found(f"No JWT template exists with name: {template}")
        token = self.template_token(id, template, lifetime)
        return json_reply(200, {"object": "token", "jwt": token})

    def _on_handshake_payload(self, call: Call) -> Reply:
        directives = self.frontend.take_nonce(call.query.get("nonce", ""))
        if directives is None:
            return not_found("No handshake payload was found for this nonce")
        return json_reply(200, {"directives": directives})

    def _on_handshake(self, call: Call) -> Reply:
        return self.frontend.handshake(call)

    def _on_sign_in(self, call: Call) -> Reply:
        return self.frontend.sign_in_form(call)

    def _on_sign_out(self, call: Call) -> Reply:
        return self.frontend.sign_out_form(call)


def _route(method: str, path: str) -> tuple[str, bool, dict[str, str]] | None:
    for route_method, pattern, endpoint, bapi in _ROUTES:
        match = pattern.match(path)
        if match is not None and route_method == method:
            return endpoint, bapi, match.groupdict()
    return None


def _read_call(environ: WSGIEnviron, method: str, path: str) -> Call:
    query = {
        k: v[0]
        for k, v in parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True).items()
    }
    cookies: dict[str, str] = {}
    for pair in environ.get("HTTP_COOKIE", "").split(";"):
        name, sep, value = pair.strip().partition("=")
        if sep and name not in cookies:
            cookies[name] = value
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    return Call(method, path, query, cookies, environ.get("HTTP_AUTHORIZATION", ""), body)


def _int(text: str | None, default: int) -> int:
    try:
        return max(0, int(text)) if text else default
    except ValueError:
        return default


def _expires_in(raw: bytes) -> int | Reply | None:
    """``{"expires_in_seconds": N}`` (a positive integer) or an empty body; else a 422."""
    if not raw.strip():
        return None
    try:
        lifetime = json.loads(raw).get("expires_in_seconds")
    except (ValueError, AttributeError):
        lifetime = "bad"
    if lifetime is not None and (
        not isinstance(lifetime, int) or isinstance(lifetime, bool) or lifetime <= 0
    ):
        return invalid_param("expires_in_seconds", "expires_in_seconds must be a positive integer")
    return lifetime


_REASONS = {
    200: "OK",
    303: "See Other",
    307: "Temporary Redirect",
    401: "Unauthorized",
    404: "Not Found",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _unauthorized() -> bytes:
    return error_body(
        "clerk_key_invalid",
        "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is "
        "correct.",
    )


def _fault_body(status: int) -> bytes:
    if status == 429:
        return error_body(
            "too_many_requests", "Too Many Requests", "Too many requests, retry later."
        )
    if status in (401, 403):
        return _unauthorized()
    if status == 404:
        return error_body("resource_not_found", "not found")
    if status == 422:
        return error_body("form_param_value_invalid", "is invalid")
    return error_body("internal_clerk_error", "Something went wrong", "Please try again later.")


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
