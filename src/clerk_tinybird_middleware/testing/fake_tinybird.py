"""A loopback fake of Tinybird's pipe query API, speaking Tinybird's wire format.

``FakeTinybird`` is a plain WSGI app: register rows per pipe, then point any real client (httpx,
``fetch`` in a browser, the Tinybird SDKs) at ``with fake.serve() as url``. Tokens are checked the
way Tinybird checks them:

* HS256 JWTs signed with the workspace admin token: other algorithms are refused, ``exp`` is
  required and checked with zero leeway, ``nbf`` too when present, ``workspace_id`` must be this
  workspace's, and a ``PIPES:READ`` scope whose ``resource`` is the pipe must be present. Its
  ``fixed_params`` override whatever the caller sends; a fixed param that is ``null`` leaves the
  parameter undefined, exactly the trap a ``{% if defined(org) %}`` pipe falls into.
* ``limits.rps`` is enforced per JWT ``name`` over a trailing one-second window (429).
* The admin token and the configured anonymous (static) token read any pipe, with only the
  caller's parameters applied.

Errors are ``{"error": "..."}`` bodies (403 bad token or scope, 404 unknown pipe, 429 over rps)
and never echo the token. Every response carries ``Access-Control-Allow-Origin: *`` so a browser
page on another loopback port can query it.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import re
import secrets
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, TypeAlias
from urllib.parse import parse_qsl

from .._types import StartResponse, WSGIEnviron
from ..core.jwt import encode_hs256
from ._issued import issue
from ._server import LoopbackFake

__all__ = ["FakeTinybird", "PipeCall", "RowFilter", "TokenKind", "default_filter"]

RowFilter: TypeAlias = Callable[[dict[str, Any], Mapping[str, str]], bool]
"""``(row, params) -> keep?``; ``params`` are the effective query parameters."""

TokenKind: TypeAlias = Literal["jwt", "admin", "anonymous"]

_PIPE_PATH = re.compile(r"^/v0/pipes/(?P<pipe>[^/]+)\.(?P<fmt>[A-Za-z0-9]+)$")
_FORMATS = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "ndjson": "application/x-ndjson",
}
_CORS_HEADERS = [("Access-Control-Allow-Origin", "*")]
_PREFLIGHT_HEADERS = [
    ("Access-Control-Allow-Methods", "GET, OPTIONS"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
    ("Access-Control-Max-Age", "86400"),
]


@dataclass(frozen=True)
class PipeCall:
    """One recorded ``GET /v0/pipes/...`` request (never holds the token itself)."""

    pipe: str
    status: int
    params: Mapping[str, str] = field(default_factory=dict)
    """Effective parameters: the caller's, overridden by the JWT's ``fixed_params``."""
    token_kind: TokenKind | None = None
    """How the request authenticated; ``None`` when it did not."""
    name: str | None = None
    """The JWT ``name`` claim (its rate-limit bucket), if a JWT was accepted."""


@dataclass
class _Pipe:
    rows: list[dict[str, Any]]
    filter: RowFilter


class _Denied(Exception):
    """Ends a request with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass(frozen=True)
class _Grant:
    kind: TokenKind
    readable: Mapping[str, Mapping[str, Any]] | None = None
    """For JWTs: pipe name -> the fixed params of its ``PIPES:READ`` scope."""
    name: str | None = None
    rps: int | None = None


def default_filter(row: dict[str, Any], params: Mapping[str, str]) -> bool:
    """Keep ``row`` if every parameter named like one of its columns equals ``str(row[col])``."""
    return all(str(row[key]) == value for key, value in params.items() if key in row)


class FakeTinybird(LoopbackFake):
    """In-process Tinybird workspace serving ``GET /v0/pipes/{name}.{json,csv,ndjson}``."""

    def __init__(
        self,
        *,
        admin_token: str | None = None,
        workspace_id: str | None = None,
        anonymous_token: str | None = None,
    ) -> None:
        self.admin_token: str = issue(admin_token or "p." + secrets.token_urlsafe(48))
        self.workspace_id: str = workspace_id or str(uuid.uuid4())
        self.anonymous_token: str | None = anonymous_token
        self._lock = threading.Lock()
        self._pipes: dict[str, _Pipe] = {}
        self._calls: list[PipeCall] = []
        self._buckets: dict[str, deque[float]] = {}

    def __repr__(self) -> str:
        with self._lock:
            pipes = sorted(self._pipes)
        return f"FakeTinybird(workspace_id={self.workspace_id!r}, pipes={pipes!r})"

    # -- configuration -------------------------------------------------------------------------

    def add_pipe(
        self,
        name: str,
        rows: Iterable[Mapping[str, Any]],
        *,
        filter: RowFilter | None = None,
    ) -> None:
        """Register (or replace) pipe ``name`` serving ``rows``.

        The default ``filter`` acts like a pipe written with ``{% if defined(col) %} WHERE col =
        {{col}}`` for every column: parameters that match a column must equal its value.
        """
        pipe = _Pipe(rows=[dict(row) for row in rows], filter=filter or default_filter)
        with self._lock:
            self._pipes[name] = pipe

    def mint(
        self,
        *,
        pipe: str,
        fixed_params: Mapping[str, Any],
        name: str = "fake",
        lifetime: int = 600,
        rps: int | None = None,
        exp: int | None = None,
        nbf: int | None = None,
    ) -> str:
        """Sign a Tinybird JWT (HS256, admin token) allowing ``PIPES:READ`` on ``pipe``."""
        claims: dict[str, Any] = {
            "workspace_id": self.workspace_id,
            "name": name,
            "exp": exp if exp is not None else int(time.time()) + lifetime,
            "scopes": [
                {"type": "PIPES:READ", "resource": pipe, "fixed_params": dict(fixed_params)}
            ],
        }
        if nbf is not None:
            claims["nbf"] = nbf
        if rps is not None:
            claims["limits"] = {"rps": rps}
        return issue(encode_hs256(claims, self.admin_token), jwt=True)

    # -- recorded calls ------------------------------------------------------------------------

    @property
    def calls(self) -> list[PipeCall]:
        """A snapshot of the pipe requests received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def count(self, pipe: str | None = None, *, status: int | None = None) -> int:
        """How many recorded calls match ``pipe`` and ``status`` (``None`` matches any)."""
        return sum(
            1
            for call in self.calls
            if (pipe is None or call.pipe == pipe) and (status is None or call.status == status)
        )

    def reset_calls(self) -> None:
        """Forget recorded calls and rate-limit windows."""
        with self._lock:
            self._calls.clear()
            self._buckets.clear()

    # -- serving -------------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = str(environ.get("PATH_INFO", "") or "/")
        if method == "OPTIONS":
            return _respond(start_response, 204, b"", None, _PREFLIGHT_HEADERS)
        match = _PIPE_PATH.match(path)
        if match is None:
            return _error(start_response, _Denied(404, "not found"))
        if method != "GET":
            return _error(
                start_response,
                _Denied(405, "method not allowed", [("Allow", "GET, OPTIONS")]),
            )
        pipe_name, fmt = match["pipe"], match["fmt"].lower()
        caller_params = {
            key: value
            for key, value in parse_qsl(str(environ.get("QUERY_STRING", "")), True)
            if key != "token"
        }
        grant: _Grant | None = None
        params: dict[str, str] = caller_params
        try:
            grant = self._authenticate(environ)
            params = self._authorize(grant, pipe_name, caller_params)
            self._check_rate(grant)
            body, content_type = self._query(pipe_name, fmt, params)
        except _Denied as denied:
            self._record(pipe_name, denied.status, params, grant)
            return _error(start_response, denied)
        self._record(pipe_name, 200, params, grant)
        return _respond(start_response, 200, body, content_type)

    # -- request steps -------------------------------------------------------------------------

    def _authenticate(self, environ: WSGIEnviron) -> _Grant:
        token = _request_token(environ)
        if token is None:
            raise _Denied(
                403, "token not found: send 'Authorization: Bearer <token>' or a token parameter"
            )
        if _same(token, self.admin_token):
            return _Grant(kind="admin")
        if self.anonymous_token is not None and _same(token, self.anonymous_token):
            return _Grant(kind="anonymous")
        claims = _verify_hs256(token, self.admin_token)
        if claims.get("workspace_id") != self.workspace_id:
            raise _Denied(403, "invalid token: workspace_id does not match this workspace")
        name = claims.get("name")
        limits = claims.get("limits")
        rps = limits.get("rps") if isinstance(limits, dict) else None
        return _Grant(
            kind="jwt",
            readable=_scopes(claims),
            name=name if isinstance(name, str) else None,
            rps=rps if isinstance(rps, int) and not isinstance(rps, bool) and rps > 0 else None,
        )

    def _authorize(
        self, grant: _Grant, pipe_name: str, caller_params: Mapping[str, str]
    ) -> dict[str, str]:
        params = dict(caller_params)
        if grant.kind != "jwt":
            return params
        readable = grant.readable or {}
        if pipe_name not in readable:
            raise _Denied(
                403, f"forbidden: the token has no PIPES:READ scope for pipe '{pipe_name}'"
            )
        fixed = readable[pipe_name]
        for key, value in fixed.items():
            if value is None:
                params.pop(key, None)  # Tinybird treats a null fixed param as undefined
            else:
                params[key] = _param_text(value)
        return params

    def _check_rate(self, grant: _Grant) -> None:
        if grant.rps is None:
            return
        bucket_name = grant.name or ""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(bucket_name, deque())
            while bucket and bucket[0] <= now - 1.0:
                bucket.popleft()
            if len(bucket) >= grant.rps:
                raise _Denied(
                    429,
                    f"too many requests: token '{bucket_name}' is limited to "
                    f"{grant.rps} requests per second",
                    [("Retry-After", "1")],
                )
            bucket.append(now)

    def _query(self, pipe_name: str, fmt: str, params: Mapping[str, str]) -> tuple[bytes, str]:
        started = time.perf_counter()
        with self._lock:
            pipe = self._pipes.get(pipe_name)
        if pipe is None:
            raise _Denied(404, f"pipe '{pipe_name}' not found")
        if fmt not in _FORMATS:
            raise _Denied(400, f"unsupported format '{fmt}': use json, csv or ndjson")
        meta = _meta(pipe.rows)
        columns = [column["name"] for column in meta]
        data = [
            {col: row.get(col) for col in columns} for row in pipe.rows if pipe.filter(row, params)
        ]
        if fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(columns)
            writer.writerows([_csv_cell(row[col]) for col in columns] for row in data)
            return buffer.getvalue().encode(), _FORMATS[fmt]
        if fmt == "ndjson":
            lines = "".join(_dumps(row) + "\n" for row in data)
            return lines.encode(), _FORMATS[fmt]
        body = {
            "meta": meta,
            "data": data,
            "rows": len(data),
            "statistics": {
                "elapsed": time.perf_counter() - started,
                "rows_read": len(pipe.rows),
                "bytes_read": len(_dumps(pipe.rows).encode()),
            },
        }
        return _dumps(body).encode(), _FORMATS[fmt]

    def _record(
        self, pipe: str, status: int, params: Mapping[str, str], grant: _Grant | None
    ) -> None:
        call = PipeCall(
            pipe=pipe,
            status=status,
            params=dict(params),
            token_kind=grant.kind if grant else None,
            name=grant.name if grant else None,
        )
        with self._lock:
            self._calls.append(call)


# -- tokens ------------------------------------------------------------------------------------


def _b64url_decode(segment: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", segment):
        raise ValueError("not base64url")
    padded = segment + "=" * (-len(segment) % 4)
    return base64.b64decode(padded.translate(str.maketrans("-_", "+/")), validate=True)


def _verify_hs256(token: str, key: str) -> dict[str, Any]:
    """Return the claims of ``token`` or raise ``_Denied(403)``; zero leeway on exp/nbf."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _Denied(403, "invalid token")
    try:
        header = json.loads(_b64url_decode(parts[0]))
        signature = _b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        raise _Denied(403, "invalid token") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise _Denied(403, "invalid token: the signing algorithm must be HS256")
    expected = hmac.new(
        key.encode(), f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256
    ).digest()
    if not hmac.compare_digest(signature, expected):
        raise _Denied(403, "invalid token: signature verification failed")
    try:
        claims = json.loads(_b64url_decode(parts[1]))
    except (ValueError, binascii.Error):
        raise _Denied(403, "invalid token") from None
    if not isinstance(claims, dict):
        raise _Denied(403, "invalid token")
    now = time.time()
    exp = _number(claims.get("exp"))
    if exp is None:
        raise _Denied(403, "invalid token: exp claim is required")
    if now >= exp:
        raise _Denied(403, "invalid token: the token has expired")
    if "nbf" in claims:
        nbf = _number(claims["nbf"])
        if nbf is None or now < nbf:
            raise _Denied(403, "invalid token: the token is not valid yet (nbf)")
    return claims


def _scopes(claims: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Map each pipe readable under the claims' ``PIPES:READ`` scopes to its fixed params."""
    scopes = claims.get("scopes")
    if not isinstance(scopes, list):
        raise _Denied(403, "invalid token: scopes claim is required")
    readable: dict[str, Mapping[str, Any]] = {}
    for scope in scopes:
        if not isinstance(scope, dict) or scope.get("type") != "PIPES:READ":
            continue
        resource = scope.get("resource")
        fixed = scope.get("fixed_params") or {}
        if not isinstance(resource, str) or not isinstance(fixed, dict):
            raise _Denied(403, "invalid token: malformed PIPES:READ scope")
        readable.setdefault(resource, fixed)
    return readable


def _request_token(environ: WSGIEnviron) -> str | None:
    scheme, _, value = str(environ.get("HTTP_AUTHORIZATION", "")).strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    for key, value in parse_qsl(str(environ.get("QUERY_STRING", "")), True):
        if key == "token" and value:
            return value
    return None


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


# -- rendering ---------------------------------------------------------------------------------


def _param_text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(_param_text(item) for item in value)
    return str(value)


def _clickhouse_type(value: object) -> str:
    if isinstance(value, bool):
        return "Bool"
    if isinstance(value, int):
        return "Int64"
    if isinstance(value, float):
        return "Float64"
    if isinstance(value, dt.datetime):
        return "DateTime"
    if isinstance(value, dt.date):
        return "Date"
    if isinstance(value, (list, tuple)):
        inner = {_clickhouse_type(item) for item in value}
        return f"Array({inner.pop() if len(inner) == 1 else 'String'})"
    return "String"


def _meta(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Columns in first-seen order, typed from their first non-null value.

    A column that is null or missing in some row is ``Nullable(...)``.
    """
    types: dict[str, str | None] = {}
    nullable: set[str] = set()
    for row in rows:
        for col, value in row.items():
            if value is None:
                nullable.add(col)
                types.setdefault(col, None)
            elif types.get(col) is None:
                types[col] = _clickhouse_type(value)
    for row in rows:
        nullable.update(col for col in types if col not in row)
    meta = []
    for col, kind in types.items():
        base = kind or "String"
        meta.append({"name": col, "type": f"Nullable({base})" if col in nullable else base})
    return meta


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return _dumps(value)
    return str(value)


def _dumps(value: object) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _respond(
    start_response: StartResponse,
    status: int,
    body: bytes,
    content_type: str | None,
    extra_headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    headers = list(_CORS_HEADERS)
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    if status != 204:
        headers.append(("Content-Length", str(len(body))))
    headers.extend(extra_headers or [])
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [body] if body else []


def _error(start_response: StartResponse, denied: _Denied) -> list[bytes]:
    body = _dumps({"error": denied.message}).encode()
    return _respond(start_response, denied.status, body, "application/json", denied.headers)
