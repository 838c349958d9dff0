"""A loopback fake of Tinybird's pipe and Query APIs, answering as Tinybird's server does.

``FakeTinybird`` is a plain WSGI app: register rows per pipe, then point any real client (httpx,
``fetch`` in a browser, ``@tinybirdco/sdk``, ``tinybird-sdk``, the ``tinybird`` CLI's ``TinyB``)
at ``with fake.serve() as url``. Where Tinybird's server code and tests are public it behaves as
they do; every deliberate difference is listed at the end.

Routes
    * ``GET|POST /v0/pipes/{pipe}.{json,csv,ndjson}``: the pipe's rows, by name or by id
      (:meth:`FakeTinybird.add_pipe` returns the id). ``.csv`` has a header row (Tinybird's
      ``CSVWithNames``). There is no ``.csvwithnames`` URL: like any other unknown extension it
      is the pipe *metadata* route ``/v0/pipes/{name}`` (see below).
    * ``GET|POST /v0/sql?q=``: static tokens only (a JWT gets 403, as on the server); it answers
      only ``SELECT <integer> [AS <name>] [FORMAT <format>]`` (enough for a client's
      connectivity check), anything else is a 400 that says so.
    * ``GET /v0/pipes`` (a list) and ``GET /v0/pipes/{name}`` (``{"id", "name", "type"}``):
      static tokens only.
    * ``OPTIONS`` anywhere: 204, no authentication. Every response carries Tinybird's CORS and
      default headers (``Access-Control-Allow-Origin: *`` among them).

Tokens
    * Read from ``?token=`` (the query string or a form-encoded body; the last value, stripped)
      first, then from ``Authorization: Bearer <token>`` with exactly that scheme and one space.
      A ``?token=`` that is present wins even when it is invalid.
    * The admin token and the optional anonymous (static) token read every pipe with only the
      caller's parameters. Any other token is taken for a JWT (as the server does for tokens not
      starting with ``p.``), on pipe data routes only; other routes refuse JWTs with 403.
    * JWTs are checked in the server's order, with PyJWT's semantics and messages: the payload
      must decode and hold ``exp``; ``workspace_id`` must be this workspace's; the header must
      say ``"alg": "HS256"`` (no ``alg`` at all is refused); the HMAC-SHA256 signature, keyed
      with the admin token, must match; ``nbf`` (if present) must not be in the future and
      ``exp`` must be in the future, both with zero leeway; ``iat`` and ``aud`` are ignored.
      Then ``name`` is required, every scope must be ``PIPES:READ`` with a ``resource``, and
      the pipe asked for must be one of those resources.
    * ``fixed_params`` of the scope for the pipe override the caller's parameters (query string,
      form body and JSON body alike); a fixed param that is ``null`` leaves the parameter
      undefined, exactly the trap a ``{% if defined(org) %}`` pipe falls into.
    * ``limits.rps`` (> 0) is enforced per (pipe as written in the URL, JWT ``name``) like
      redis-cell's GCRA, which the server uses: ``rps + 1`` requests at once, then ``rps`` per
      second. Every response after that check carries ``X-RateLimit-Limit`` (``rps + 1``),
      ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (relative seconds, not an epoch);
      a 429 also ``Retry-After`` (seconds) and ``{"error": "Too many requests: retry after N
      seconds", ...}``.

Order of checks on a pipe data route (the server's): 403 bad token, 429 rps, 400 invalid pipe
name, 404 unknown pipe, 403 no scope for the pipe, 400 ``q``/format, 200.

Errors are ``{"error": "...", "documentation": "https://docs.tinybird.co/..."}`` with the
server's wording (``invalid authentication token. Invalid token: Signature has expired``, ``The
pipe 'x' does not exist``, ``The token you have provided doesn't have access to this
resource``...).

Deliberate differences from the server
    * The token is never echoed. The server writes ``Invalid token b'<the whole JWT>': ...``;
      the fake writes ``Invalid token: ...``.
    * A JWT without ``name``: the server fails with 503 ``{"error": null}`` (a ``KeyError``);
      the fake answers 403 ``invalid authentication token. Token is missing the "name" claim``.
    * A JWT the server cannot turn into an access token (a scope other than ``PIPES:READ``, a
      scope without ``resource``, no ``scopes``, ``"limits": null``) skips the server's scope
      check, so it reads any pipe without fixed params. The fake takes the safe reading: such a
      token reads nothing (403 ``The token you have provided doesn't have access to this
      resource``). So does a scope whose ``fixed_params`` is neither empty nor an object.
    * ``null`` in ``fixed_params`` leaves the parameter undefined (the server passes ``None``
      to its template engine).
    * No ClickHouse: a pipe serves its registered rows through its filter; ``q`` on a pipe route,
      ``.parquet`` and ``.prometheus`` get a 400 saying the fake does not do them; multipart
      bodies are not parsed; workspace-wide, plan, per-endpoint and concurrency limits are not
      modelled.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
import uuid
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

DOCS = "https://docs.tinybird.co"
AUTH_DOC = DOCS + "/api-reference/overview#authentication"
LIMITS_DOC = DOCS + "/api-reference/api-reference.html#limits"
PIPE_DOC = DOCS + "/api-reference/pipe-api.html"
QUERY_DOC = DOCS + "/api-reference/query-api.html"
API_DOC = DOCS + "/api-reference/api-reference.html"

INVALID_AUTH = "invalid authentication token"
NO_ACCESS = "The token you have provided doesn't have access to this resource"
SQL_FORMATS = (
    "JSON",
    "CSV",
    "CSVWithNames",
    "TSV",
    "TSVWithNames",
    "PrettyCompact",
    "JSONEachRow",
    "Parquet",
    "JSONStrings",
    "Prometheus",
)
MAX_QUERY_BYTES = 8 * 1024

# The server's routes (tornado anchors them, so an extension must match exactly).
_PIPE_DATA = re.compile(r"^/v0/pipes/(?P<pipe>.+)\.(?P<fmt>json|csv|ndjson|parquet|prometheus)$")
_PIPE_META = re.compile(r"^/v0/pipes/(?P<pipe>.+)$")
_JWT_HANDLERS = frozenset({"APIPipeDataHandler"})
_VALID_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_FORMAT_CLAUSE = re.compile(r"^(?P<sql>.*?)\s+FORMAT\s+(?P<fmt>[A-Za-z]+)\s*;?\s*$", re.I | re.S)
_SELECT_LITERAL = re.compile(
    r"^\s*SELECT\s+(?P<value>-?\d+)(?:\s+AS\s+(?P<alias>[A-Za-z_][A-Za-z0-9_]*))?\s*;?\s*$",
    re.I | re.S,
)

_DEFAULT_HEADERS = [
    ("X-Frame-Options", "sameorigin"),
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, X-Requested-With, X-Tb-Warning"),
    ("Access-Control-Expose-Headers", "X-Tb-Warning"),
    ("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE, OPTIONS"),
    ("Access-Control-Max-Age", "86400"),
]
_JSON = "application/json; charset=UTF-8"
_CONTENT_TYPES = {
    "JSON": _JSON,
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSONEachRow": "application/x-ndjson",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TSVWithNames": "text/tab-separated-values; charset=UTF-8",
}
_URL_FORMATS = {"json": "JSON", "csv": "CSVWithNames", "ndjson": "JSONEachRow"}


@dataclass(frozen=True)
class PipeCall:
    """One recorded pipe data request (``/v0/pipes/{pipe}.{format}``); never holds the token."""

    pipe: str
    """The pipe's registered name, or the name as written in the URL if there is no such pipe."""
    status: int
    params: Mapping[str, str] = field(default_factory=dict)
    """Effective parameters: the caller's, overridden by the JWT's ``fixed_params``."""
    token_kind: TokenKind | None = None
    """How the request authenticated; ``None`` when it did not."""
    name: str | None = None
    """The JWT ``name`` claim (its rate-limit bucket), if a JWT was accepted."""
    method: str = "GET"


@dataclass
class _Pipe:
    name: str
    id: str
    rows: list[dict[str, Any]]
    filter: RowFilter


class _Denied(Exception):
    """Ends a request with ``status`` and ``{"error": message, "documentation": doc}``."""

    def __init__(
        self,
        status: int,
        message: str,
        documentation: str = AUTH_DOC,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.documentation = documentation
        self.headers = headers or []


class _BadJWT(Exception):
    """A PyJWT error the server catches by name (``Invalid token``) or not (``Unexpected``)."""

    def __init__(self, reason: str, *, caught: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.caught = caught

    def denied(self) -> _Denied:
        if self.caught:
            return _Denied(403, f"{INVALID_AUTH}. Invalid token: {self.reason}")
        return _Denied(
            403, f"{INVALID_AUTH}. Unexpected error decoding / validating token: {self.reason}"
        )


@dataclass(frozen=True)
class _Grant:
    kind: TokenKind
    readable: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """For JWTs: pipe name or id -> the fixed params of its ``PIPES:READ`` scope."""
    name: str | None = None
    rps: int | None = None


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    form: list[tuple[str, str]]
    body: bytes
    content_type: str
    authorization: str

    @classmethod
    def read(cls, environ: WSGIEnviron) -> _Request:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(length) if length > 0 else b""
        content_type = str(environ.get("CONTENT_TYPE", "") or "")
        form: list[tuple[str, str]] = []
        if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            form = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        return cls(
            method=str(environ.get("REQUEST_METHOD", "GET")).upper(),
            path=str(environ.get("PATH_INFO", "") or "/"),
            query=parse_qsl(str(environ.get("QUERY_STRING", "")), keep_blank_values=True),
            form=form,
            body=body,
            content_type=content_type,
            authorization=str(environ.get("HTTP_AUTHORIZATION", "")),
        )

    @property
    def arguments(self) -> list[tuple[str, str]]:
        """tornado's ``request.arguments``: the query string, then a form body."""
        return [*self.query, *self.form]

    def argument(self, name: str) -> str | None:
        """tornado's ``get_argument``: the last value, stripped."""
        values = [value for key, value in self.arguments if key == name]
        return values[-1].strip() if values else None

    def token(self) -> str | None:
        """The server's precedence: a ``token`` argument, else ``Authorization: Bearer``."""
        token = self.argument("token")
        if token:
            return token
        parts = self.authorization.split(" ")
        if len(parts) == 2 and parts[0] == "Bearer" and parts[1]:
            return parts[1]
        return None

    def json_body(self) -> dict[str, Any] | None:
        if not self.body:
            return None
        try:
            decoded = json.loads(self.body)
        except (ValueError, RecursionError):
            return None
        return decoded if isinstance(decoded, dict) else None


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)


def default_filter(row: dict[str, Any], params: Mapping[str, str]) -> bool:
    """Keep ``row`` if every parameter named like one of its columns equals ``str(row[col])``."""
    return all(str(row[key]) == value for key, value in params.items() if key in row)


class FakeTinybird(LoopbackFake):
    """In-process Tinybird workspace serving ``/v0/pipes/{name}.{json,csv,ndjson}``.

    ``clock`` (wall time, seconds) drives ``exp``/``nbf`` checks and the rate limiter; a test
    can pass a fake one to step over expiry or refill without sleeping.
    """

    def __init__(
        self,
        *,
        admin_token: str | None = None,
        workspace_id: str | None = None,
        anonymous_token: str | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.admin_token: str = issue(admin_token or "p." + secrets.token_urlsafe(48))
        self.workspace_id: str = workspace_id or str(uuid.uuid4())
        self.anonymous_token: str | None = anonymous_token
        self._clock: Callable[[], float] = clock or time.time
        self._lock = threading.Lock()
        self._pipes: dict[str, _Pipe] = {}
        self._calls: list[PipeCall] = []
        self._tats: dict[tuple[str, str], int] = {}

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
        pipe_id: str | None = None,
    ) -> str:
        """Register (or replace) pipe ``name`` serving ``rows``; returns its id (``t_…``).

        The default ``filter`` acts like a pipe written with ``{% if defined(col) %} WHERE col =
        {{col}}`` for every column: parameters that match a column must equal its value. URLs
        and JWT scope resources may name the pipe or give its id.
        """
        with self._lock:
            old = self._pipes.get(name)
            ident = pipe_id or (old.id if old else "t_" + uuid.uuid4().hex)
            rows_copy = [dict(row) for row in rows]
            self._pipes[name] = _Pipe(name, ident, rows_copy, filter or default_filter)
        return ident

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
            "exp": exp if exp is not None else int(self._clock()) + lifetime,
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
        """A snapshot of the pipe data requests received so far, oldest first."""
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
        """Forget recorded calls and rate-limit state."""
        with self._lock:
            self._calls.clear()
            self._tats.clear()

    # -- serving -------------------------------------------------------------------------------

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        reply = self._handle(_Request.read(environ))
        headers = [*_DEFAULT_HEADERS, ("X-Request-ID", _request_id())]
        if reply.content_type is not None:
            headers.append(("Content-Type", reply.content_type))
        if reply.status != 204:
            headers.append(("Content-Length", str(len(reply.body))))
        headers.extend(reply.headers)
        start_response(f"{reply.status} {HTTPStatus(reply.status).phrase}", headers)
        return [reply.body] if reply.body else []

    def _handle(self, request: _Request) -> _Reply:
        if request.method == "OPTIONS":
            return _Reply(204)  # BaseHandler.options: no authentication
        path = request.path
        try:
            if path == "/v0/sql":
                return self._sql(request)
            if path in ("/v0/pipes", "/v0/pipes/"):
                return self._pipe_list(request)
            if path == "/v0/pipes/openapi.json":
                self._authenticate(request, "APIPipesOpenAPIHandler")
                raise _Denied(404, "FakeTinybird does not serve OpenAPI descriptions", PIPE_DOC)
            match = _PIPE_DATA.match(path)
            if match is not None:
                return self._pipe_data(request, match["pipe"], match["fmt"])
            match = _PIPE_META.match(path)
            if match is not None:
                return self._pipe_meta(request, match["pipe"])
            raise _Denied(404, "HTTP 404: Not Found", API_DOC)
        except _Denied as denied:
            return _error(denied)

    # -- pipe data -----------------------------------------------------------------------------

    def _pipe_data(self, request: _Request, written: str, fmt: str) -> _Reply:
        if request.method not in ("GET", "POST"):
            raise _method_not_allowed("GET, POST, OPTIONS", PIPE_DOC)
        variables = _pipe_variables(request)
        params = _effective(variables)
        grant: _Grant | None = None
        recorded = written
        rate_headers: list[tuple[str, str]] = []
        try:
            grant = self._authenticate(request, "APIPipeDataHandler")
            if grant.rps is not None and grant.name is not None:
                rate_headers = self._throttle(written, grant.name, grant.rps)
            pipe = self._find_pipe(written, request.method)
            recorded = pipe.name
            fixed = _authorize(grant, pipe)
            params = _effective({**variables, **fixed})
            self._check_query_param(request)
            body, content_type = self._render_pipe(pipe, fmt, params)
        except _Denied as denied:
            if denied.status != 429:
                denied.headers = [*rate_headers, *denied.headers]
            self._record(recorded, denied.status, params, grant, request.method)
            raise
        self._record(recorded, 200, params, grant, request.method)
        return _Reply(200, body, content_type, rate_headers)

    def _find_pipe(self, written: str, method: str) -> _Pipe:
        with self._lock:
            pipe = self._pipes.get(written) or next(
                (p for p in self._pipes.values() if p.id == written), None
            )
        if pipe is not None:
            return pipe
        if not _VALID_NAME.fullmatch(written):
            raise _Denied(400, "Invalid pipe name", PIPE_DOC)
        anchor = f"#{method.lower()}--v0-pipes-(.+)\\.(json|csv|ndjson|parquet|prometheus)"
        raise _Denied(404, f"The pipe '{written}' does not exist", PIPE_DOC + anchor)

    @staticmethod
    def _check_query_param(request: _Request) -> None:
        sql = request.argument("q")
        if not sql:
            return
        if len(sql.encode()) > MAX_QUERY_BYTES:
            raise _Denied(400, "The maximum size for a SQL query is 8KB.", PIPE_DOC)
        if sql.startswith("%"):
            raise _Denied(400, "'q' parameter doesn't support templates", PIPE_DOC)
        raise _Denied(
            400, "FakeTinybird does not run SQL over pipes: drop the 'q' parameter", PIPE_DOC
        )

    def _render_pipe(self, pipe: _Pipe, fmt: str, params: Mapping[str, str]) -> tuple[bytes, str]:
        if fmt not in _URL_FORMATS:
            raise _Denied(
                400, f"FakeTinybird does not render .{fmt}: use .json, .csv or .ndjson", PIPE_DOC
            )
        started = time.perf_counter()
        meta = _meta(pipe.rows)
        columns = [column["name"] for column in meta]
        data = [
            {col: row.get(col) for col in columns} for row in pipe.rows if pipe.filter(row, params)
        ]
        statistics = {
            "rows_read": len(pipe.rows),
            "bytes_read": len(_dumps(pipe.rows).encode()),
        }
        return _render(_URL_FORMATS[fmt], meta, data, started, statistics)

    def _record(
        self,
        pipe: str,
        status: int,
        params: Mapping[str, str],
        grant: _Grant | None,
        method: str,
    ) -> None:
        call = PipeCall(
            pipe=pipe,
            status=status,
            params=dict(params),
            token_kind=grant.kind if grant else None,
            name=grant.name if grant else None,
            method=method,
        )
        with self._lock:
            self._calls.append(call)

    # -- tokens ---------------------------------------------------------------------------------

    def _authenticate(self, request: _Request, handler: str) -> _Grant:
        token = request.token()
        if not token:
            raise _Denied(403, INVALID_AUTH)
        if _same(token, self.admin_token):
            return _Grant(kind="admin")
        if self.anonymous_token is not None and _same(token, self.anonymous_token):
            return _Grant(kind="anonymous")
        if token.startswith("p."):  # a static token this workspace does not have
            raise _Denied(403, INVALID_AUTH)
        if handler not in _JWT_HANDLERS:
            raise _Denied(403, f"{INVALID_AUTH}. Handler {handler} does not support JWT tokens")
        claims = self._verify_jwt(token)
        name = claims.get("name")
        if name is None:
            raise _Denied(403, f'{INVALID_AUTH}. Token is missing the "name" claim')
        readable, rps = _access(claims)
        return _Grant(kind="jwt", readable=readable, name=str(name), rps=rps)

    def _verify_jwt(self, token: str) -> dict[str, Any]:
        """The server's ``_decode_and_authenticate_token``, in its order, without PyJWT."""
        try:  # 1. read without verifying; exp is required
            header, claims, signing_input, signature = _load_jwt(token)
            if claims.get("exp") is None:
                raise _BadJWT('Token is missing the "exp" claim', caught=False)
        except _BadJWT as bad:
            raise bad.denied() from None
        workspace_id = claims.get("workspace_id")  # 2. whose key signs it
        if not workspace_id:
            raise _Denied(403, f"{INVALID_AUTH}. Workspace ID missing in JWT token")
        if workspace_id != self.workspace_id:
            raise _Denied(403, f"{INVALID_AUTH}. Workspace with ID {workspace_id} not found")
        try:  # 3. verify: algorithm, signature, nbf, exp (zero leeway, iat and aud ignored)
            if "alg" not in header:
                raise _BadJWT("Algorithm not specified", caught=False)
            if header["alg"] != "HS256":
                raise _BadJWT("The specified alg value is not allowed", caught=False)
            key = self.admin_token.encode("utf-8")
            expected = hmac.new(key, signing_input, hashlib.sha256).digest()
            if not hmac.compare_digest(signature, expected):
                raise _BadJWT("Signature verification failed", caught=True)
            now = self._clock()
            if "nbf" in claims:
                nbf = _claim_int(claims["nbf"], "Not Before claim (nbf) must be an integer.")
                if nbf > now:
                    raise _BadJWT("The token is not yet valid (nbf)", caught=False)
            exp = _claim_int(claims["exp"], "Expiration Time claim (exp) must be an integer.")
            if exp <= now:
                raise _BadJWT("Signature has expired", caught=True)
        except _BadJWT as bad:
            raise bad.denied() from None
        return claims

    def _throttle(self, written: str, name: str, rps: int) -> list[tuple[str, str]]:
        """redis-cell ``CL.THROTTLE key rps rps 1 1`` (GCRA), in integer nanoseconds.

        Returns the rate-limit headers; raises the 429 when the request is over the limit.
        """
        now = int(self._clock() * 1_000_000_000)
        interval = 1_000_000_000 // rps
        limit = rps + 1
        tolerance = interval * limit
        key = (written, name)
        with self._lock:
            tat = max(self._tats.get(key, now), now)
            new_tat = tat + interval
            allow_at = new_tat - tolerance
            limited = now < allow_at
            if limited:
                ttl = tat - now
            else:
                self._tats[key] = new_tat
                ttl = new_tat - now
        spare = tolerance - ttl
        remaining = spare // interval if spare > -interval else 0
        reset = ttl // 1_000_000_000 + 1  # the server adds one to redis-cell's seconds
        headers = [
            ("X-RateLimit-Limit", str(limit)),
            ("X-RateLimit-Remaining", str(max(remaining, 0))),
            ("X-RateLimit-Reset", str(reset)),
        ]
        if not limited:
            return headers
        retry = (allow_at - now) // 1_000_000_000 + 1
        raise _Denied(
            429,
            f"Too many requests: retry after {retry} seconds",
            LIMITS_DOC,
            [*headers, ("Retry-After", str(retry))],
        )

    # -- the Query API and pipe metadata -------------------------------------------------------

    def _sql(self, request: _Request) -> _Reply:
        if request.method not in ("GET", "POST"):
            raise _method_not_allowed("GET, POST, OPTIONS", QUERY_DOC)
        self._authenticate(request, "APIQueryHandler")
        sql = _query_text(request)
        if len(sql.encode()) > MAX_QUERY_BYTES:
            raise _Denied(400, "The maximum size for a SQL query is 8KB.", QUERY_DOC)
        statement, fmt = sql, "TSV"  # no FORMAT clause: ClickHouse's TabSeparated
        clause = _FORMAT_CLAUSE.match(sql)
        if clause is not None:
            canonical = {name.lower(): name for name in SQL_FORMATS}
            given = clause["fmt"]
            if given.lower() not in canonical:
                raise _Denied(
                    403, "invalid format, available ones: " + ", ".join(SQL_FORMATS), QUERY_DOC
                )
            statement, fmt = clause["sql"], canonical[given.lower()]
        select = _SELECT_LITERAL.match(statement)
        if select is None:
            raise _Denied(
                400,
                "FakeTinybird's /v0/sql only answers SELECT <integer> [AS <name>] "
                "[FORMAT <format>]; query pipes at /v0/pipes/<name>.<format>",
                QUERY_DOC,
            )
        if fmt not in _CONTENT_TYPES:
            raise _Denied(400, f"FakeTinybird does not render the {fmt} format", QUERY_DOC)
        started = time.perf_counter()
        value = int(select["value"])
        column = select["alias"] or select["value"]
        meta = [{"name": column, "type": _literal_type(value)}]
        body, content_type = _render(
            fmt, meta, [{column: value}], started, {"rows_read": 1, "bytes_read": 1}
        )
        return _Reply(200, body, content_type)

    def _pipe_list(self, request: _Request) -> _Reply:
        self._authenticate(request, "APIPipeListHandler")
        if request.method != "GET":
            raise _method_not_allowed("GET, OPTIONS", PIPE_DOC)
        with self._lock:
            pipes = [_pipe_info(pipe) for pipe in self._pipes.values()]
        return _Reply(200, _dumps({"pipes": pipes}).encode(), _JSON)

    def _pipe_meta(self, request: _Request, written: str) -> _Reply:
        self._authenticate(request, "APIPipeHandler")
        if request.method != "GET":
            raise _method_not_allowed("GET, OPTIONS", PIPE_DOC)
        with self._lock:
            pipe = self._pipes.get(written) or next(
                (p for p in self._pipes.values() if p.id == written), None
            )
        if pipe is None:
            raise _Denied(404, f"Pipe '{written}' not found", PIPE_DOC)
        return _Reply(200, _dumps(_pipe_info(pipe)).encode(), _JSON)


# -- requests ------------------------------------------------------------------------------------


def _pipe_variables(request: _Request) -> dict[str, Any]:
    """The caller's template variables, as the server builds them.

    GET: the query string; POST: the query string and a form body, then a JSON object body over
    them. The first value of a repeated key. Keys that are substrings of ``"token"`` (``t``,
    ``to``, ``ok``... — the server tests ``k not in "token"``) are dropped.
    """
    pairs = request.query if request.method == "GET" else request.arguments
    variables: dict[str, Any] = {}
    for key, value in pairs:
        if key not in "token":
            variables.setdefault(key, value)
    body = request.json_body() if request.method == "POST" else None
    for key, value in (body or {}).items():
        if key not in "token":  # the fake never records a token, wherever it was sent
            variables[key] = value
    return variables


def _query_text(request: _Request) -> str:
    """``q`` for ``/v0/sql``: an argument, else (POST) ``{"q": ...}`` or the raw body."""
    sql = request.argument("q")
    if sql:
        return sql
    if request.method == "GET":
        raise _Denied(400, "missing q parameter. example q=select%201", QUERY_DOC)
    body = request.json_body()
    if body is not None and isinstance(body.get("q"), str) and body["q"].strip():
        return str(body["q"])
    if body is None and not request.form and request.body.strip():
        return request.body.decode("utf-8", "replace")
    raise _Denied(400, "The request body should contain a query", QUERY_DOC)


def _method_not_allowed(allow: str, documentation: str) -> _Denied:
    return _Denied(405, "HTTP 405: Method Not Allowed", documentation, [("Allow", allow)])


def _effective(variables: Mapping[str, Any]) -> dict[str, str]:
    """Variables as the filter sees them: text, and ``None`` (undefined) left out."""
    return {key: _param_text(value) for key, value in variables.items() if value is not None}


def _authorize(grant: _Grant, pipe: _Pipe) -> Mapping[str, Any]:
    """The fixed params that apply (none for static tokens), or the server's 403."""
    if grant.kind != "jwt":
        return {}
    fixed = grant.readable.get(pipe.name)
    if fixed is None:
        fixed = grant.readable.get(pipe.id)
    if fixed is None:
        raise _Denied(403, NO_ACCESS)
    return fixed


def _pipe_info(pipe: _Pipe) -> dict[str, str]:
    return {"id": pipe.id, "name": pipe.name, "type": "endpoint"}


# -- tokens ------------------------------------------------------------------------------------


def _segment(segment: bytes, name: str) -> bytes:
    """PyJWT's base64url segment decoding: canonical, at most two ``=``."""
    stripped = segment.rstrip(b"=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4):
        raise _BadJWT(f"Invalid {name} padding", caught=True)
    if len(stripped) % 4 == 1 or any(byte not in _B64URL for byte in stripped):
        raise _BadJWT(f"Invalid {name} padding", caught=True)
    try:
        decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise _BadJWT(f"Invalid {name} padding", caught=True) from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
        raise _BadJWT(f"Invalid {name} padding", caught=True)
    return decoded


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise _BadJWT(f"Invalid {name} string: {exc}", caught=True) from None
    if not isinstance(value, dict):
        raise _BadJWT(f"Invalid {name} string: must be a json object", caught=True)
    return value


def _load_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """Header, claims, signing input and signature; PyJWT's splitting and error messages."""
    raw = token.encode("utf-8", "replace")
    try:
        signing_input, crypto = raw.rsplit(b".", 1)
        header_segment, payload_segment = signing_input.split(b".", 1)
    except ValueError:
        raise _BadJWT("Not enough segments", caught=True) from None
    header = _json_object(_segment(header_segment, "header"), "header")
    payload = _segment(payload_segment, "payload")
    signature = _segment(crypto, "crypto")
    return header, _json_object(payload, "payload"), signing_input, signature


def _claim_int(value: object, message: str) -> int:
    """``int(value)`` as PyJWT applies it to ``exp``/``nbf`` (``"12"`` and ``1.5`` pass)."""
    try:
        if isinstance(value, (int, float, str)):
            return int(value)
        raise TypeError(type(value).__name__)
    except (ValueError, TypeError, OverflowError):
        raise _BadJWT(message, caught=True) from None


def _access(claims: Mapping[str, Any]) -> tuple[dict[str, Mapping[str, Any]], int | None]:
    """(pipe name or id -> fixed params, rps) the token grants.

    A token the server cannot convert to an access token grants nothing here (see the module
    docstring): every scope must be ``PIPES:READ`` with a ``resource``, ``fixed_params`` empty
    or an object, and ``limits`` (if present) an object.
    """
    scopes = claims.get("scopes")
    limits = claims.get("limits", {})
    if not isinstance(scopes, list) or not isinstance(limits, dict):
        return {}, None
    readable: dict[str, Mapping[str, Any]] = {}
    for scope in scopes:
        if not isinstance(scope, dict) or scope.get("type") != "PIPES:READ":
            return {}, None
        resource, fixed = scope.get("resource"), scope.get("fixed_params")
        if not resource or (fixed and not isinstance(fixed, dict)):
            return {}, None
        if not isinstance(resource, str):
            continue  # kept verbatim by the server: it names no pipe
        if isinstance(fixed, dict) and fixed:
            readable[resource] = fixed  # only non-empty objects are fixed params
        else:
            readable.setdefault(resource, {})
    rps = limits.get("rps")
    if isinstance(rps, bool) or not isinstance(rps, (int, float)) or rps < 1:
        return readable, None
    return readable, int(rps)


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _request_id() -> str:
    """A ULID, as the server's ``X-Request-ID``."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -5, -5))


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


def _literal_type(value: int) -> str:
    """ClickHouse's type for an integer literal (``SELECT 1`` is ``UInt8``)."""
    for bits in (8, 16, 32, 64):
        if 0 <= value < 2**bits:
            return f"UInt{bits}"
        if -(2 ** (bits - 1)) <= value < 0:
            return f"Int{bits}"
    return "Int128"


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


def _render(
    fmt: str,
    meta: list[dict[str, str]],
    data: list[dict[str, Any]],
    started: float,
    statistics: Mapping[str, int],
) -> tuple[bytes, str]:
    """``data`` in a ClickHouse output format, and its Content-Type."""
    columns = [column["name"] for column in meta]
    if fmt in ("CSV", "CSVWithNames", "TSV", "TSVWithNames"):
        cell = _csv_cell if fmt.startswith("CSV") else _tsv_cell
        sep = "," if fmt.startswith("CSV") else "\t"
        lines = [sep.join(cell(row[col]) for col in columns) for row in data]
        if fmt.endswith("WithNames"):
            lines.insert(0, sep.join(cell(col) for col in columns))
        return "".join(line + "\n" for line in lines).encode(), _CONTENT_TYPES[fmt]
    if fmt == "JSONEachRow":
        return "".join(_dumps(row) + "\n" for row in data).encode(), _CONTENT_TYPES[fmt]
    body = {
        "meta": meta,
        "data": data,
        "rows": len(data),
        "statistics": {"elapsed": time.perf_counter() - started, **statistics},
    }
    return _dumps(body).encode(), _CONTENT_TYPES["JSON"]


def _array_literal(values: Iterable[object]) -> str:
    """ClickHouse's text form of an array: ``[1,2]``, ``['a','b']``."""
    parts = []
    for value in values:
        if isinstance(value, (list, tuple)):
            parts.append(_array_literal(value))
        elif value is None:
            parts.append("NULL")
        elif isinstance(value, bool):
            parts.append("true" if value else "false")
        elif isinstance(value, (int, float)):
            parts.append(str(value))
        else:
            text = str(value).replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"'{text}'")
    return "[" + ",".join(parts) + "]"


def _csv_cell(value: object) -> str:
    """ClickHouse CSV: strings quoted (``""`` inside), numbers and booleans bare, NULL ``\\N``."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        text = _array_literal(value)
    elif isinstance(value, dict):
        text = _dumps(value)
    else:
        text = str(value)
    return '"' + text.replace('"', '""') + '"'


def _tsv_cell(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return _array_literal(value)
    text = _dumps(value) if isinstance(value, dict) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _dumps(value: object) -> str:
    return json.dumps(value, default=str, separators=(",", ":"))


def _error(denied: _Denied) -> _Reply:
    """The server's error body (json.dumps with its default separators)."""
    body = json.dumps({"error": denied.message, "documentation": denied.documentation})
    return _Reply(denied.status, body.encode(), _JSON, denied.headers)
