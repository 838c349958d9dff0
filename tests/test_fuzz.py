"""Property-based fuzzing of everything a request can carry — Cookie and Authorization headers,
token bytes, segments, JWT headers and claims — through the ASGI and the WSGI middleware.

Properties, for every example: nothing escapes (no exception, no 500); a request is signed in
only when it carries one of the valid tokens minted here, intact, and then its Tinybird token
pins that session's own tenant; a forgery of a valid token (any change to its header, payload or
signature) is never accepted; a token signed with the real key is accepted exactly when its
header and claims pass every rule of SPEC §4, and otherwise rejected with the code of the first
rule it breaks.

Most examples run against a PEM-key middleware (no network; ASGI apps are called directly with
a scope, WSGI apps with an environ); a smaller run uses JWKS mode against a served FakeClerk and
checks that forged key ids and signatures cannot make it refetch more than once per 30 s.
The number of examples run is printed in the terminal summary.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import json
import math
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from clerk_tinybird_middleware import (
    ClerkTinybirdMiddleware,
    ClerkTinybirdWSGIMiddleware,
    LocalTokenSource,
    Settings,
)
from clerk_tinybird_middleware._types import StartResponse, WSGIEnviron
from clerk_tinybird_middleware.core.claims import Reason
from clerk_tinybird_middleware.core.locate import cookie_suffix
from clerk_tinybird_middleware.core.tokens import TokenError
from clerk_tinybird_middleware.models import AuthResult, ClerkSession
from clerk_tinybird_middleware.testing import FakeClerk
from clerk_tinybird_middleware.testing.fake_clerk import (
    MACHINE_CATEGORY,
    SESSION_CATEGORY,
    TEMPLATE_CATEGORY,
)
from constants import ADMIN_TOKEN
from leaks import LeakWatch, summary, watch_for_leaks

TARGET_EXAMPLES = 10_000
EXAMPLES: Counter[str] = Counter()  # examples run, per property and middleware
FUZZ_TESTS = (
    "test_any_headers",
    "test_forgeries_are_rejected",
    "test_signed_claims_follow_the_rules",
    "test_jwks_mode",
)
RAN: set[str] = set()

AZP = "http://localhost:3000"
SKEW = 5
REASONS = frozenset(v for k, v in vars(Reason).items() if k.isupper() and isinstance(v, str))
TOKEN_ERRORS = frozenset(
    v for k, v in vars(TokenError).items() if k.isupper() and isinstance(v, str)
)
FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
B64 = string.ascii_letters + string.digits + "-_"
EDIT_ALPHABET = B64 + ".=+/%~!*"
B64URL_ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"  # in order


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any, **dumps: Any) -> str:
    return b64(json.dumps(value, **dumps).encode())


def unb64json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def sign_rs(header: Mapping[str, Any], claims: Mapping[str, Any], key: rsa.RSAPrivateKey) -> str:
    """An RS256/384/512 JWT with exactly this header and these claims (JSON as given)."""
    alg = header.get("alg")
    digest = {"RS384": hashes.SHA384(), "RS512": hashes.SHA512()}.get(str(alg), hashes.SHA256())
    signing_input = f"{b64json(header)}.{b64json(claims)}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), digest)
    return f"{signing_input}.{b64(signature)}"


# -- the world: one FakeClerk, valid tokens, four PEM-mode and two JWKS-mode middlewares -------


@dataclass
class Reply:
    """What one request produced: status, headers (lower-case names), body and the state."""

    status: int
    headers: dict[str, str]
    body: bytes
    state: Mapping[str, Any]
    app_called: bool

    @property
    def auth(self) -> AuthResult:
        auth = self.state["clerk_auth"]
        assert isinstance(auth, AuthResult)
        return auth


Call = Callable[[str | None, str | None], Reply]


async def _asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    scope["app_called"] = True
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"cache-control", b"max-age=60")],
        }
    )
    await send({"type": "http.response.body", "body": b"ok"})


def _wsgi_app(environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
    environ["app_called"] = True
    start_response("200 OK", [("Content-Type", "text/plain"), ("Cache-Control", "max-age=60")])
    return [b"ok"]


def asgi_caller(mw: ClerkTinybirdMiddleware, loop: asyncio.AbstractEventLoop) -> Call:
    """Call the ASGI middleware directly with a scope (the headers as a server passes them)."""

    async def call(authorization: str | None, cookie: str | None) -> Reply:
        headers = [(b"host", b"test")]
        if authorization is not None:
            headers.append((b"authorization", authorization.encode("latin-1")))
        if cookie is not None:
            headers.append((b"cookie", cookie.encode("latin-1")))
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/data",
            "raw_path": b"/data",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> MutableMapping[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(dict(message))

        await mw(scope, receive, send)
        start, body = sent[0], sent[1]
        assert (start["type"], body["type"]) == ("http.response.start", "http.response.body")
        names = [name.decode("latin-1").lower() for name, _ in start["headers"]]
        assert len(names) == len(set(names)), f"duplicate response headers {names}"
        return Reply(
            start["status"],
            {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in start["headers"]},
            body["body"],
            scope["state"],
            bool(scope.get("app_called")),
        )

    return lambda authorization, cookie: loop.run_until_complete(call(authorization, cookie))


def wsgi_caller(mw: ClerkTinybirdWSGIMiddleware) -> Call:
    """Call the WSGI middleware directly with an environ (header values as latin-1 ``str``)."""

    def call(authorization: str | None, cookie: str | None) -> Reply:
        environ: dict[str, Any] = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/data",
            "QUERY_STRING": "",
            "SERVER_NAME": "test",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": io.StringIO(),
            "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if authorization is not None:
            environ["HTTP_AUTHORIZATION"] = authorization
        if cookie is not None:
            environ["HTTP_COOKIE"] = cookie
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Any:
            started.append((status, headers))
            return lambda data: None

        result = mw(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = started[0]
        names = [name.lower() for name, _ in headers]
        assert len(names) == len(set(names)), f"duplicate response headers {names}"
        state = {
            key.removeprefix("clerk_tinybird."): value
            for key, value in environ.items()
            if key.startswith("clerk_tinybird.")
        }
        return Reply(
            int(status.split()[0]),
            {name.lower(): value for name, value in headers},
            body,
            state,
            bool(environ.get("app_called")),
        )

    return call


class World:
    """Everything the properties share (a plain class: hypothesis prints a short repr)."""

    def __init__(
        self,
        clerk: FakeClerk,
        valid: dict[str, str],
        calls: dict[str, Call],
        attacker: rsa.RSAPrivateKey,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.clerk = clerk
        self.valid = valid  # session id -> a valid session token
        self.calls = calls  # "asgi", "wsgi", "asgi-401", "wsgi-401"
        self.require_auth = {name: name.endswith("-401") for name in calls}
        self.suffix = cookie_suffix(clerk.publishable_key)
        self.attacker = attacker
        self.loop = loop

    def __repr__(self) -> str:
        return f"World({len(self.valid)} valid tokens)"


SCOPES = [
    {
        "type": "PIPES:READ",
        "resource": "events",
        "fixed_params": {"user": "{{user.id}}", "org": "{{org.slug||user.id}}"},
    }
]
ORGS: list[dict[str, Any] | None] = [
    {"id": "org_a1", "slug": "acme", "role": "admin", "permissions": ["org:reports:read"]},
    {"id": "org_b2", "slug": "globex", "role": "member"},
    None,
]


@pytest.fixture(scope="module", autouse=True)
def leaks(request: pytest.FixtureRequest) -> Iterator[LeakWatch]:
    with watch_for_leaks(request, "test_fuzz") as watch:
        yield watch


@pytest.fixture(scope="module")
def world(leaks: LeakWatch) -> Iterator[World]:
    clerk = FakeClerk()
    valid: dict[str, str] = {}
    for i, org in enumerate(ORGS):
        for version in (1, 2):
            extra: dict[str, Any] = {"act": {"sub": "user_admin"}} if i == 0 else {}
            token = clerk.session_token(
                f"user_{i}", org=org, version=version, lifetime=3600, azp=AZP, **extra
            )
            valid[unb64json(token.split(".")[1])["sid"]] = token
            leaks.secret(token, "session token")
    leaks.secret(clerk.secret_key, "Clerk secret key")
    leaks.secret(ADMIN_TOKEN, "Tinybird admin token")
    settings_ = Settings(
        jwt_key=clerk.public_key_pem,
        publishable_key=clerk.publishable_key,
        authorized_parties=(AZP,),
    )
    source = LocalTokenSource("ws_fuzz", ADMIN_TOKEN, SCOPES)
    loop = asyncio.new_event_loop()
    wsgi = [
        ClerkTinybirdWSGIMiddleware(_wsgi_app, settings_, token_source=source, require_auth=flag)
        for flag in (False, True)
    ]
    asgi = [
        ClerkTinybirdMiddleware(_asgi_app, settings_, token_source=source, require_auth=flag)
        for flag in (False, True)
    ]
    calls = {
        "asgi": asgi_caller(asgi[0], loop),
        "asgi-401": asgi_caller(asgi[1], loop),
        "wsgi": wsgi_caller(wsgi[0]),
        "wsgi-401": wsgi_caller(wsgi[1]),
    }
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    try:
        yield World(clerk, valid, calls, attacker, loop)
    finally:
        for mw in wsgi:
            mw.close()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


# -- what every reply must satisfy ---------------------------------------------------------------


def tinybird_claims(reply: Reply) -> dict[str, Any]:
    claims = unb64json(reply.headers["x-tinybird-token"].split(".")[1])
    assert isinstance(claims, dict)
    return claims


def check_reply(reply: Reply, *, require_auth: bool) -> None:
    """The invariants of SPEC §6 for one reply, signed in or not."""
    auth = reply.auth
    assert reply.status in (200, 401), reply.status
    if auth.is_signed_in:
        session = auth.session
        assert isinstance(session, ClerkSession)
        assert (reply.status, reply.app_called, auth.reason) == (200, True, None)
        token = reply.state["tinybird_token"]
        if token is None:
            assert reply.state["tinybird_token_error"] in TOKEN_ERRORS
            assert "x-tinybird-token" not in reply.headers
            return
        fixed = tinybird_claims(reply)["scopes"][0]["fixed_params"]
        assert fixed == {"user": session.user_id, "org": session.org_slug or session.user_id}
        assert reply.headers["cache-control"] == "private, no-store"
        vary = {v.strip().lower() for v in reply.headers["vary"].split(",")}
        assert {"cookie", "authorization"} <= vary
        return
    assert (auth.status, auth.session) == ("signed-out", None)
    assert auth.reason in REASONS, auth.reason
    assert reply.state["tinybird_token"] is None
    assert "x-tinybird-token" not in reply.headers
    if require_auth:
        assert (reply.status, reply.app_called) == (401, False)
        body = json.loads(reply.body)
        assert (body["error"], body["reason"]) == ("unauthenticated", auth.reason)
        assert reply.headers["www-authenticate"].startswith("Bearer")
    else:
        assert (reply.status, reply.app_called) == (200, True)


def check_carried(world: World, reply: Reply, carried: str) -> None:
    """Signed in only with one of our valid tokens, present intact in what was sent."""
    session = reply.auth.session
    if session is not None:
        token = world.valid.get(session.session_id)
        assert token is not None, "signed in with a token this test never minted"
        assert token in carried


def run(world: World, via: str, authorization: str | None, cookie: str | None) -> Reply:
    reply = world.calls[via](authorization, cookie)
    check_reply(reply, require_auth=world.require_auth[via])
    return reply


VIAS = st.sampled_from(["asgi", "wsgi", "asgi-401", "wsgi-401"])


# -- positive control: the oracle above accepts what it must -------------------------------------


@pytest.mark.parametrize("via", ["asgi", "wsgi", "asgi-401", "wsgi-401"])
@pytest.mark.parametrize(
    "where",
    [
        "bearer",
        "bearer-any-case",
        "bare",
        "cookie",
        "suffixed-cookie",
        "quoted-cookie",
        "late-cookie",
    ],
)
def test_valid_tokens_are_accepted_from_every_location(world: World, via: str, where: str) -> None:
    for sid, token in world.valid.items():
        authorization, cookie = locate(world, where, token)
        reply = run(world, via, authorization, cookie)
        session = reply.auth.session
        assert session is not None
        assert session.session_id == sid
        assert "x-tinybird-token" in reply.headers


def locate(world: World, where: str, token: str) -> tuple[str | None, str | None]:
    """(Authorization, Cookie) carrying ``token`` at ``where``."""
    return {
        "bearer": (f"Bearer {token}", None),
        "bearer-any-case": (f"bEARer {token}", None),
        "bare": (token, None),
        "cookie": (None, f"__session={token}"),
        "suffixed-cookie": (None, f"__session=junk; __session_{world.suffix}={token}"),
        "quoted-cookie": (None, f'__client_uat=1; __session="{token}"'),
        "late-cookie": (None, f"theme=dark; odd; =; a=b=c; __session={token}; __session=x"),
    }[where]


LOCATIONS = st.sampled_from(
    ["bearer", "bearer-any-case", "bare", "cookie", "suffixed-cookie", "quoted-cookie"]
)

# -- 1. any Authorization and Cookie header ------------------------------------------------------

latin1 = st.characters(min_codepoint=0, max_codepoint=255)
cookie_names = st.sampled_from(
    ["__session", "__client_uat", "__session_{suffix}", "__client_uat_{suffix}", "theme", ""]
) | st.text(latin1, max_size=12)


@st.composite
def token_like(draw: st.DrawFn, world: World) -> str:
    """A valid token, a piece or mix of valid tokens, or base64url-looking junk."""
    tokens = sorted(world.valid.values())
    kind = draw(st.sampled_from(["valid", "piece", "mix", "junk", "text"]))
    if kind == "valid":
        return draw(st.sampled_from(tokens))
    if kind == "piece":
        token = draw(st.sampled_from(tokens))
        start = draw(st.integers(0, len(token)))
        return token[start : draw(st.integers(start, len(token)))]
    if kind == "mix":
        segments = [draw(st.sampled_from(tokens)).split(".")[i] for i in range(3)]
        return ".".join(segments)
    if kind == "junk":
        return draw(
            st.from_regex(r"[A-Za-z0-9_\-]{0,40}(\.[A-Za-z0-9_\-=]{0,60}){0,4}", fullmatch=True)
        )
    return draw(st.text(latin1, max_size=60))


@st.composite
def authorization_headers(draw: st.DrawFn, world: World) -> str | None:
    kind = draw(st.sampled_from(["none", "scheme", "text"]))
    if kind == "none":
        return None
    if kind == "text":
        return draw(st.text(latin1, max_size=200))
    scheme = draw(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Token", "", "Bearer:"]))
    space = draw(st.sampled_from([" ", "  ", "\t", "", " \t "]))
    return f"{scheme}{space}{draw(token_like(world))}{draw(st.sampled_from(['', ' ', ',', ';']))}"


@st.composite
def cookie_headers(draw: st.DrawFn, world: World) -> str | None:
    if draw(st.booleans()) and draw(st.booleans()):
        return draw(st.one_of(st.none(), st.text(latin1, max_size=200)))
    pairs = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(cookie_names).replace("{suffix}", world.suffix)
        value = draw(
            st.one_of(
                token_like(world),
                st.integers(-(2**70), 2**70).map(str),
                st.text(latin1, max_size=30),
            )
        )
        eq = draw(st.sampled_from(["=", "=", " = ", ""]))
        pairs.append(f"{name}{eq}{value}")
    return draw(st.sampled_from(["; ", ";", " ; ", ";;"])).join(pairs)


@settings(FUZZ, max_examples=3_500)
@given(data=st.data(), via=VIAS)
def test_any_headers(world: World, data: st.DataObject, via: str) -> None:
    """Any Authorization and Cookie values: no crash, no 500, signed in only with a valid token."""
    RAN.add("test_any_headers")
    authorization = data.draw(authorization_headers(world), label="authorization")
    cookie = data.draw(cookie_headers(world), label="cookie")
    EXAMPLES[f"headers/{via}"] += 1
    reply = run(world, via, authorization, cookie)
    check_carried(world, reply, f"{authorization}\n{cookie}")


# -- 2. forgeries of valid tokens --------------------------------------------------------------


def _edit(token: str, data: st.DataObject, lo: int, hi: int) -> str:
    """Flip, insert or delete one character within ``token[lo:hi]``."""
    op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
    i = data.draw(st.integers(lo, max(lo, hi - 1)))
    if op == "insert":
        return token[:i] + data.draw(st.sampled_from(EDIT_ALPHABET)) + token[i:]
    if op == "delete" or i >= len(token):
        return token[:i] + token[i + 1 :]
    new = data.draw(st.sampled_from(EDIT_ALPHABET.replace(token[i], "")))
    return token[:i] + new + token[i + 1 :]


def _rejson(
    value: Mapping[str, Any], data: st.DataObject, tamper: Callable[[dict[str, Any]], None]
) -> str:
    """``value`` as JSON again: reformatted, reordered, escaped, or with a changed member."""
    value = dict(value)
    if data.draw(st.booleans()):
        tamper(value)
    dumps: dict[str, Any] = data.draw(
        st.fixed_dictionaries(
            {
                "separators": st.sampled_from([(",", ":"), (", ", ": "), (",", ": ")]),
                "sort_keys": st.booleans(),
                "ensure_ascii": st.booleans(),
                "indent": st.sampled_from([None, 0, 1]),
            }
        )
    )
    text = json.dumps(value, **dumps)
    if data.draw(st.booleans()):
        text = data.draw(st.sampled_from([" ", "\n", "\t"])) + text
    if data.draw(st.booleans()):  # a character escaped differently means the same JSON
        text = text.replace('"s', '"\\u0073', 1)
    return b64(text.encode())


def _tamper_claims(world: World, data: st.DataObject) -> Callable[[dict[str, Any]], None]:
    def tamper(claims: dict[str, Any]) -> None:
        change = data.draw(
            st.sampled_from(["sub", "org", "exp", "act", "drop-azp", "iss", "sid", "extra"])
        )
        if change == "sub":
            claims["sub"] = data.draw(st.sampled_from(["user_0", "user_1", "user_2", "user_evil"]))
        elif change == "org":
            claims["o"] = {"id": "org_evil", "slg": "evil", "rol": "admin"}
            claims["org_id"], claims["org_slug"] = "org_evil", "evil"
        elif change == "exp":
            claims["exp"] = int(claims["exp"]) + data.draw(st.integers(1, 10**6))
        elif change == "act":
            claims["act"] = {"sub": "user_evil"}
        elif change == "drop-azp":
            claims.pop("azp", None)
        elif change == "iss":
            claims["iss"] = world.clerk.issuer + "/"
        elif change == "sid":
            claims["sid"] = data.draw(st.sampled_from(sorted(world.valid)))
        else:
            claims[data.draw(st.text(max_size=5))] = data.draw(st.integers())

    return tamper


def _tamper_header(data: st.DataObject) -> Callable[[dict[str, Any]], None]:
    def tamper(header: dict[str, Any]) -> None:
        change = data.draw(st.sampled_from(["kid", "typ", "cat", "jku", "extra", "alg"]))
        if change == "kid":
            header["kid"] = data.draw(st.sampled_from(["", "ins_other", None]))
        elif change == "typ":
            header["typ"] = data.draw(st.sampled_from(["JWT", "jwt", None]))
        elif change == "cat":
            header["cat"] = data.draw(st.sampled_from([SESSION_CATEGORY, TEMPLATE_CATEGORY]))
        elif change == "jku":
            header["jku"] = "https://evil.example/jwks.json"
        elif change == "alg":
            header["alg"] = data.draw(st.sampled_from(["RS256", "RS384", "RS512"]))
        else:
            header["x"] = data.draw(st.integers())

    return tamper


HMAC = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}


def _forge(world: World, data: st.DataObject) -> tuple[str, str]:
    """(kind, forged token) derived from a valid token."""
    tokens = sorted(world.valid.values())
    token = data.draw(st.sampled_from(tokens), label="original")
    head, body, sig = token.split(".")
    kind = data.draw(
        st.sampled_from(
            [
                "edit",
                "edit-segment",
                "rejson-header",
                "rejson-payload",
                "alg",
                "hmac-with-public-key",
                "swap-signature",
                "mix-segments",
                "non-canonical-signature",
                "truncate-signature",
                "attacker-key",
                "extra-segment",
            ]
        ),
        label="kind",
    )
    if kind == "edit":
        forged = token
        for _ in range(data.draw(st.integers(1, 3))):
            forged = _edit(forged, data, 0, len(forged))
        return kind, forged
    if kind == "edit-segment":
        segment = data.draw(st.integers(0, 2))
        start = sum(len(p) + 1 for p in token.split(".")[:segment])
        return kind, _edit(token, data, start, start + len(token.split(".")[segment]))
    if kind == "rejson-header":
        return kind, f"{_rejson(unb64json(head), data, _tamper_header(data))}.{body}.{sig}"
    if kind == "rejson-payload":
        new_body = _rejson(unb64json(body), data, _tamper_claims(world, data))
        return kind, f"{head}.{new_body}.{sig}"
    if kind == "alg":
        header = dict(unb64json(head))
        header["alg"] = data.draw(
            st.sampled_from(
                [
                    "none",
                    "None",
                    "NONE",
                    "nOnE",
                    "HS256",
                    "HS512",
                    "ES256",
                    "PS256",
                    "EdDSA",
                    "rs256",
                    "RS256 ",
                    "",
                    None,
                    256,
                    ["RS256"],
                    {"alg": "RS256"},
                ]
            )
        )
        new_sig = data.draw(st.sampled_from([sig, "", "AA"]))
        return kind, f"{b64json(header)}.{body}.{new_sig}"
    if kind == "hmac-with-public-key":
        alg = data.draw(st.sampled_from(sorted(HMAC)))
        header = dict(unb64json(head)) | {"alg": alg}
        pem = world.clerk.public_key_pem
        secret = data.draw(
            st.sampled_from(
                [
                    pem,
                    pem.strip(),
                    pem.replace("\n", ""),
                    json.dumps(world.clerk.jwks()["keys"][0]),
                    world.clerk.private_key.public_key()
                    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
                    .hex(),
                ]
            )
        )
        signing_input = f"{b64json(header)}.{body}"
        mac = hmac.new(secret.encode(), signing_input.encode(), HMAC[alg]).digest()
        return kind, f"{signing_input}.{b64(mac)}"
    if kind == "swap-signature":
        other = data.draw(st.sampled_from([t for t in tokens if t != token]))
        return kind, f"{head}.{body}.{other.rsplit('.', 1)[1]}"
    if kind == "mix-segments":
        parts = [data.draw(st.sampled_from(tokens)).split(".")[i] for i in range(3)]
        return kind, ".".join(parts)
    if kind == "non-canonical-signature":
        # 256 bytes take 342 characters; the last carries 2 bits, its 4 unused ones must be 0.
        value = B64URL_ALPHABET.index(sig[-1])
        low = data.draw(st.integers(1, 15))
        return kind, f"{head}.{body}.{sig[:-1]}{B64URL_ALPHABET[(value & 0b110000) | low]}"
    if kind == "truncate-signature":
        cut = data.draw(st.integers(1, 8))
        tail = data.draw(st.sampled_from(["", "=", "==", "AAAA"]))
        return kind, f"{head}.{body}.{sig[:-cut]}{tail}"
    if kind == "attacker-key":
        header = dict(unb64json(head))
        if data.draw(st.booleans()):
            numbers = world.attacker.public_key().public_numbers()
            header["jwk"] = {
                "kty": "RSA",
                "kid": header["kid"],
                "n": b64(numbers.n.to_bytes(256, "big")),
                "e": b64(numbers.e.to_bytes(3, "big")),
            }
        claims = dict(unb64json(body))
        if data.draw(st.booleans()):
            _tamper_claims(world, data)(claims)
        return kind, sign_rs(header, claims, world.attacker)
    extra = data.draw(st.sampled_from(["", "AAAA", sig]))
    where = data.draw(st.sampled_from(["before", "after"]))
    return kind, f"{extra}.{token}" if where == "before" else f"{token}.{extra}"


@settings(FUZZ, max_examples=4_500)
@given(data=st.data(), via=VIAS, where=LOCATIONS)
def test_forgeries_are_rejected(world: World, data: st.DataObject, via: str, where: str) -> None:
    """Any change to a valid token's header, payload or signature is rejected."""
    RAN.add("test_forgeries_are_rejected")
    kind, forged = _forge(world, data)
    assume(forged not in world.valid.values())
    EXAMPLES[f"forgeries/{via}"] += 1
    authorization, cookie = locate(world, where, forged)
    reply = run(world, via, authorization, cookie)
    assert not reply.auth.is_signed_in, f"forgery accepted ({kind}): {forged!r}"


# -- 3. tokens signed with the real key: header and claims decide ----------------------------------

KEEP, DROP = "<keep>", "<drop>"
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def _times(now: int) -> st.SearchStrategy[Any]:
    return st.sampled_from(
        [now - 7200, now - 60, now + 60, now + 7200, float(now) + 0.5, 0, 10**12]
    )


def _org_claims() -> st.SearchStrategy[Any]:
    ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
    return st.fixed_dictionaries(
        {},
        optional={
            "id": st.sampled_from(["org_1", "", "org_x"]) | json_values,
            "slg": st.sampled_from(["acme", ""]) | json_values,
            "rol": st.sampled_from(["admin", "org:member", ""]) | json_values,
            "per": ascii_text | json_values,
            "fpm": st.from_regex(r"[0-9,a ]{0,12}", fullmatch=True)
            | st.text(max_size=12)
            | json_values,
        },
    )


@st.composite
def signed_tokens(draw: st.DrawFn, world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "azp": AZP,
        "exp": now + 3600,
        "iat": now - 10,
        "iss": world.clerk.issuer,
        "nbf": now - 15,
        "sid": f"sess_fuzz_{draw(st.integers(0, 10**9))}",
        "sts": "active",
        "sub": "user_fuzz",
        "v": 2,
    }
    targeted: dict[str, st.SearchStrategy[Any]] = {
        "azp": st.sampled_from([AZP, AZP + "/", "https://evil.example", ""]),
        "exp": _times(now),
        "iat": _times(now),
        "nbf": _times(now),
        "iss": st.sampled_from([world.clerk.issuer, "https://evil.example", ""]),
        "sid": st.sampled_from(["sess_other", ""]),
        "sts": st.sampled_from(["pending", "active", "expired"]),
        "sub": st.sampled_from(["user_other", "mch_robot", "", " ", "user_{{org.id}}"]),
        "v": st.sampled_from([1, 2, "2"]),
        "o": _org_claims(),
        "org_id": st.sampled_from(["org_1", ""]),
        "org_slug": st.sampled_from(["acme", ""]),
        "fea": st.sampled_from(["o:reports", "u:beta,o:reports,uo:x", ""]),
        "act": st.sampled_from([{"sub": "user_admin"}, "user_admin"]),
    }
    for name, strategy in targeted.items():
        change = draw(st.sampled_from([KEEP, KEEP, "target", "target", DROP, "any"]))
        if change == DROP:
            claims.pop(name, None)
        elif change == "target":
            claims[name] = draw(strategy)
        elif change == "any":
            claims[name] = draw(json_values)
    header: dict[str, Any] = {
        "alg": draw(st.sampled_from(["RS256", "RS384", "RS512"])),
        "cat": SESSION_CATEGORY,
        "kid": draw(st.sampled_from([world.clerk.kid, "ins_unknown"])),
        "typ": "JWT",
    }
    for name, strategy in {
        "cat": st.sampled_from([SESSION_CATEGORY, TEMPLATE_CATEGORY, MACHINE_CATEGORY, ""]),
        "typ": st.sampled_from(["JWT", "jwt", "at+jwt", ""]),
    }.items():
        change = draw(st.sampled_from([KEEP, KEEP, "target", DROP, "any"]))
        if change == DROP:
            header.pop(name)
        elif change == "target":
            header[name] = draw(strategy)
        elif change == "any":
            header[name] = draw(json_values)
    return header, claims


def _number(value: Any) -> bool:
    """A JSON number JavaScript also calls finite."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


SESSION_CATEGORIES = {SESSION_CATEGORY, "cl_I7d4PD111III"}


def expected_reason(
    world: World, header: Mapping[str, Any], claims: Mapping[str, Any], client_uat: int | None
) -> str | None:
    """SPEC §4 with §8's corrections, in @clerk/backend's order, written independently of
    the package: token kind, typ, (alg, key, signature: valid here), sub, azp, iss, then
    exp/nbf/iat (whole seconds, each type-checked in turn), sts, sid, client_uat."""
    now = time.time()
    sub = claims.get("sub")
    if "cat" in header and not any(header["cat"] == cat for cat in SESSION_CATEGORIES):
        return Reason.TYPE_MISMATCH
    if any(header.get("typ") == typ for typ in ("at+jwt", "application/at+jwt")):
        return Reason.TYPE_MISMATCH
    if isinstance(sub, str) and sub.startswith("mch_"):
        return Reason.TYPE_MISMATCH
    if "typ" in header and header["typ"] != "JWT":
        return Reason.TOKEN_INVALID
    if not isinstance(sub, str) or not sub:
        return Reason.TOKEN_INVALID
    if claims.get("azp") != AZP:
        return Reason.INVALID_AZP
    if claims.get("iss") != world.clerk.issuer:
        return Reason.INVALID_ISSUER
    if not _number(claims.get("exp")):
        return Reason.TOKEN_INVALID
    if math.trunc(claims["exp"]) <= now - SKEW:
        return Reason.EXPIRED
    for name, reason in (("nbf", Reason.NOT_ACTIVE_YET), ("iat", Reason.IAT_IN_FUTURE)):
        if name in claims:
            if not _number(claims[name]):
                return Reason.TOKEN_INVALID
            if math.trunc(claims[name]) > now + SKEW:
                return reason
    if claims.get("sts") == "pending":
        return Reason.SESSION_PENDING
    if not isinstance(claims.get("sid"), str) or not claims["sid"]:
        return Reason.TYPE_MISMATCH
    if client_uat and _number(claims.get("iat")) and claims["iat"] < client_uat:
        return Reason.IAT_BEFORE_UAT  # a token without iat has nothing to compare (as Clerk)
    return None


@settings(FUZZ, max_examples=1_500)
@given(data=st.data(), via=VIAS, where=LOCATIONS)
def test_signed_claims_follow_the_rules(
    world: World, data: st.DataObject, via: str, where: str
) -> None:
    """Correctly signed tokens with any header fields and claims: accepted iff SPEC §4 allows."""
    RAN.add("test_signed_claims_follow_the_rules")
    header, claims = data.draw(signed_tokens(world), label="header, claims")
    token = sign_rs(header, claims, world.clerk.private_key)
    EXAMPLES[f"signed-claims/{via}"] += 1
    authorization, cookie = locate(world, where, token)
    reply = run(world, via, authorization, cookie)
    client_uat = 1 if where == "quoted-cookie" else None  # see locate()
    assert reply.auth.reason == expected_reason(world, header, claims, client_uat)
    session = reply.auth.session
    if session is not None:
        assert (session.user_id, session.session_id) == (claims["sub"], claims["sid"])
        assert session.org_id is None or (isinstance(session.org_id, str) and session.org_id)
        assert all(isinstance(p, str) for p in session.org_permissions)


@pytest.mark.parametrize(
    ("claim", "value", "reason"),
    [
        ("o.fpm", "²", None),
        ("o.fpm", "9" * 5000, None),
        ("azp", [AZP], Reason.INVALID_AZP),
        ("azp", {"origin": AZP}, Reason.INVALID_AZP),
    ],
    ids=["fpm-superscript-two", "fpm-5000-digits", "azp-list", "azp-object"],
)
def test_odd_claim_types_are_not_crashes(
    world: World, claim: str, value: Any, reason: str | None
) -> None:
    """Odd but signed claim types get their rule's answer, not the verifier's catch-all
    (found by this module: a non-ASCII digit or an over-long ``fpm`` mask made ``int()`` raise,
    a list as ``azp`` made a set lookup raise)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "azp": AZP,
        "exp": now + 600,
        "iat": now,
        "iss": world.clerk.issuer,
        "sid": "sess_odd",
        "sub": "user_odd",
        "v": 2,
        "fea": "o:reports",
        "o": {"id": "org_1", "per": "read"},
    }
    if claim == "o.fpm":
        claims["o"]["fpm"] = value
    else:
        claims[claim] = value
    header = {"alg": "RS256", "cat": SESSION_CATEGORY, "kid": world.clerk.kid, "typ": "JWT"}
    reply = run(world, "asgi", f"Bearer {sign_rs(header, claims, world.clerk.private_key)}", None)
    assert reply.auth.reason == reason
    if reason is None:
        session = reply.auth.session
        assert session is not None
        assert session.org_permissions == ()


# -- 4. algorithm confusion and tokens that are not sessions (a table) ----------------------------


def _case_token(world: World, case: str) -> str:
    clerk = world.clerk
    token = clerk.session_token("user_t", lifetime=600, azp=AZP)
    head, body, _ = token.split(".")
    header = dict(unb64json(head))
    pem = clerk.public_key_pem.encode()
    if case == "alg-none":
        return f"{b64json(header | {'alg': 'none'})}.{body}."
    if case == "hs256-signed-with-public-pem":
        signing_input = f"{b64json(header | {'alg': 'HS256'})}.{body}"
        return f"{signing_input}.{b64(hmac.new(pem, signing_input.encode(), 'sha256').digest())}"
    if case == "rs256-attacker-key-same-kid":
        return sign_rs(header, unb64json(body), world.attacker)
    if case == "ps256-real-key":
        return clerk.session_token("user_t", algorithm="PS256")
    if case == "template-token-real-key":
        return clerk.session_token("user_t", header={"cat": TEMPLATE_CATEGORY})
    if case == "machine-token-real-key":
        return clerk.session_token("user_t", header={"cat": MACHINE_CATEGORY})
    if case == "machine-subject-real-key":
        return clerk.session_token("mch_robot", header={"cat": None})
    if case == "no-sid-real-key":
        return clerk.session_token("user_t", header={"cat": None}, sid=None, azp=AZP)
    raise AssertionError(case)


@pytest.mark.parametrize("via", ["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("alg-none", Reason.INVALID_ALGORITHM),
        ("hs256-signed-with-public-pem", Reason.INVALID_ALGORITHM),
        ("ps256-real-key", Reason.INVALID_ALGORITHM),
        ("rs256-attacker-key-same-kid", Reason.INVALID_SIGNATURE),
        ("template-token-real-key", Reason.TYPE_MISMATCH),
        ("machine-token-real-key", Reason.TYPE_MISMATCH),
        ("machine-subject-real-key", Reason.TYPE_MISMATCH),
        ("no-sid-real-key", Reason.TYPE_MISMATCH),
    ],
)
def test_confusions_are_rejected(world: World, via: str, case: str, reason: str) -> None:
    reply = run(world, via, f"Bearer {_case_token(world, case)}", None)
    assert reply.auth.reason == reason


# -- 5. JWKS mode against a served FakeClerk -------------------------------------------------------


@dataclass
class JwksWorld:
    calls: dict[str, Call]
    clerk: FakeClerk
    started: float


@pytest.fixture(scope="module")
def jwks_world(world: World) -> Iterator[JwksWorld]:
    clerk = world.clerk
    with clerk.serve() as url:
        settings_ = Settings(
            secret_key=clerk.secret_key, clerk_api_url=url, authorized_parties=(AZP,)
        )
        source = LocalTokenSource("ws_fuzz", ADMIN_TOKEN, SCOPES)
        asgi = ClerkTinybirdMiddleware(_asgi_app, settings_, token_source=source)
        wsgi = ClerkTinybirdWSGIMiddleware(_wsgi_app, settings_, token_source=source)
        clerk.reset_calls()
        try:
            yield JwksWorld(
                {"asgi": asgi_caller(asgi, world.loop), "wsgi": wsgi_caller(wsgi)},
                clerk,
                time.monotonic(),
            )
        finally:
            world.loop.run_until_complete(asgi.aclose())
            wsgi.close()


def test_jwks_mode(request: pytest.FixtureRequest, world: World, jwks_world: JwksWorld) -> None:
    """JWKS mode: valid tokens pass, forgeries and unknown key ids do not — and forged key
    ids and signatures cost one load per middleware, then at most one refetch each per 30 s
    window (plus the first unknown kid after a load), never one per request."""
    RAN.add("test_jwks_mode")

    @settings(FUZZ, max_examples=1_000)
    @given(data=st.data(), via=st.sampled_from(["asgi", "wsgi"]))
    def example(data: st.DataObject, via: str) -> None:
        kind = data.draw(st.sampled_from(["valid", "forged", "unknown-kid", "no-kid"]))
        if kind == "valid":
            token = data.draw(st.sampled_from(sorted(world.valid.values())))
        elif kind == "forged":
            _, token = _forge(world, data)
            assume(token not in world.valid.values())
        else:
            token = data.draw(st.sampled_from(sorted(world.valid.values())))
            head, body, _ = token.split(".")
            header = dict(unb64json(head))
            if kind == "no-kid":
                header.pop("kid")
            else:
                header["kid"] = "ins_" + data.draw(st.text(B64, min_size=1, max_size=24))
            key = data.draw(st.sampled_from([world.clerk.private_key, world.attacker]))
            token = sign_rs(header, unb64json(body), key)
        EXAMPLES[f"jwks/{via}"] += 1
        reply = jwks_world.calls[via](f"Bearer {token}", None)
        check_reply(reply, require_auth=False)
        assert reply.auth.is_signed_in == (kind == "valid"), (kind, reply.auth.reason)

    example()
    windows = int((time.monotonic() - jwks_world.started) // 30) + 1
    fetches = jwks_world.clerk.calls["jwks"]
    line = (
        f"JWKS mode: {fetches} JWKS fetches for "
        f"{EXAMPLES['jwks/asgi'] + EXAMPLES['jwks/wsgi']} fuzzed requests (2 middlewares)"
    )
    summary(request.config).add("fuzz: examples run", line)
    assert fetches <= 2 * (2 + windows), line
    assert fetches >= 2  # both middlewares did load the keys


# -- the count --------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def examples_count(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the module: print the examples run, and fail the module if the whole module ran
    and fewer than TARGET_EXAMPLES did (a part of it, e.g. with -k, is not judged)."""
    yield
    total = sum(EXAMPLES.values())
    report = summary(request.config)
    for name, count in sorted(EXAMPLES.items()):
        report.add("fuzz: examples run", f"{name:32} {count:>6}")
    report.add("fuzz: examples run", f"{'total':32} {total:>6}")
    if not set(FUZZ_TESTS) - RAN and total < TARGET_EXAMPLES:
        pytest.fail(f"only {total} examples ran (target {TARGET_EXAMPLES})")
