"""No session token, Tinybird JWT, secret key or admin token in any log record, exception, repr,
URL or error body — with every logger at DEBUG.

:class:`LeakWatch` is the check. Every reliability module (fuzz, faults, isolation and this one)
installs one for its whole run: it records every log record of every logger at DEBUG, collects
the secrets the module's flows used and the texts they produced (reprs, bodies, exception
messages, upstream URLs), and fails the module's last test when any secret shows up. This module
drives the representative flows — success and each failure, ASGI and WSGI — so that every code
path that logs or raises runs at least once under the watch.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from flask import Flask, g
from starlette.types import Receive, Scope, Send
from werkzeug.test import Client

from clerk_tinybird_middleware import (
    ClerkTemplateSource,
    ClerkTinybirdMiddleware,
    ClerkTinybirdWSGIMiddleware,
    ConfigurationError,
    LocalTokenSource,
    MemoryTokenCache,
    RedisTokenCache,
    Settings,
)
from clerk_tinybird_middleware._types import StartResponse, WSGIEnviron
from clerk_tinybird_middleware.cache import TokenCache
from clerk_tinybird_middleware.core.claims import Reason
from clerk_tinybird_middleware.core.jwt import parse
from clerk_tinybird_middleware.core.locate import locate
from clerk_tinybird_middleware.core.memo import Verified
from clerk_tinybird_middleware.core.ops import HttpRequest, HttpResponse, RetryPolicy
from clerk_tinybird_middleware.core.tokens import TokenError, TokenSource
from clerk_tinybird_middleware.drivers import AsyncDriver, SyncDriver
from clerk_tinybird_middleware.engine import Engine
from clerk_tinybird_middleware.fastapi import TinybirdTokenDep
from clerk_tinybird_middleware.flask import ClerkTinybird, require_tinybird_token
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from clerk_tinybird_middleware.testing._server import serve_wsgi
from clerk_tinybird_middleware.testing.fake_clerk import TEMPLATE_CATEGORY
from constants import ADMIN_TOKEN
from leaks import LeakWatch, watch_for_leaks
from services import free_port

# -- the check finds what it must ----------------------------------------------------------------


def test_the_check_finds_planted_secrets() -> None:
    """A secret in a message, its args, an exception, an extra field or a repr is found."""
    watch = LeakWatch()
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJlLW9mLWEtdGVzdC10b2tlbg"
    watch.secret(jwt, "a JWT")
    watch.secret("sk_test_planted_secret_key", "a secret key")
    logger = logging.getLogger("clerk_tinybird_middleware.test")
    with watch.installed():
        logger.debug("token %s", jwt)
        logger.info("key=sk_test_planted_secret_key")
        try:
            raise ValueError(f"bad token {jwt!r}")
        except ValueError:
            logger.exception("failed")
        logger.warning("clean", extra={"context": {"token": jwt}})
        logger.debug("clean too")
    watch.text("a repr", {"authorization": f"Bearer {jwt}"})
    found = watch.leaks()
    assert len(found) == 5, found
    assert not watch.find("eyJhbGciOiJIUzI1NiJ9 (a header alone is not a token)")


# -- representative flows, every logger at DEBUG ---------------------------------------------------

ANONYMOUS = "p.anonymous-read-token-" + "fedcba9876543210" * 3
REDIS_PASSWORD = "S3cret-redis-password-4242"
AZP = "http://localhost:3000"
ORG = {"id": "org_secret", "slug": "secret-tenant", "role": "admin"}
SCOPES = [
    {
        "type": "PIPES:READ",
        "resource": "events",
        "fixed_params": {"org": "{{org.slug}}", "user": "{{user.id}}"},
    }
]
REASONS = frozenset(v for k, v in vars(Reason).items() if k.isupper() and isinstance(v, str))


class Recorder:
    """FakeClerk behind a recorder of every upstream request (method, URL, headers, body)."""

    def __init__(self, clerk: FakeClerk) -> None:
        self.clerk = clerk
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        with self._lock:
            self.requests.append(
                {
                    "method": environ["REQUEST_METHOD"],
                    "url": f"{environ.get('PATH_INFO', '')}?{environ.get('QUERY_STRING', '')}",
                    "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
                    "body": body,
                }
            )
        return self.clerk(environ, start_response)


@dataclass
class Kit:
    clerk: FakeClerk
    url: str
    recorder: Recorder
    watch: LeakWatch

    def session(
        self, user: str = "user_s", *, org: Mapping[str, Any] | None = ORG, **kw: Any
    ) -> str:
        token = self.clerk.session_token(user, org=org, lifetime=300, **{"azp": AZP, **kw})
        self.watch.secret(token, "session token")
        return token


@pytest.fixture(scope="module", autouse=True)
def leaks(request: pytest.FixtureRequest) -> Iterator[LeakWatch]:
    with watch_for_leaks(request, "test_secrets") as watch:
        yield watch


@pytest.fixture(scope="module")
def kit(leaks: LeakWatch) -> Iterator[Kit]:
    clerk = FakeClerk()
    clerk.add_tinybird_template(ADMIN_TOKEN, "ws_secrets")
    for value, label in [
        (clerk.secret_key, "Clerk secret key"),
        (ADMIN_TOKEN, "Tinybird admin token"),
        (ANONYMOUS, "anonymous Tinybird token"),
        (REDIS_PASSWORD, "Redis password"),
    ]:
        leaks.secret(value, label)
    recorder = Recorder(clerk)
    with serve_wsgi(recorder) as url:
        yield Kit(clerk, url, recorder, leaks)


def _bearer(make: Callable[[Kit], str]) -> Callable[[Kit], tuple[str | None, str | None]]:
    return lambda kit: (f"Bearer {make(kit)}", None)


def _cookie(make: Callable[[Kit], str]) -> Callable[[Kit], tuple[str | None, str | None]]:
    return lambda kit: (None, make(kit))


def _attacker_token(kit: Kit) -> str:
    head, body, _ = kit.session().split(".")
    return f"{head}.{body}.{base64.urlsafe_b64encode(bytes(256)).rstrip(b'=').decode()}"


def _alg_none(kit: Kit) -> str:
    _, body, _ = kit.session().split(".")
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    return f"{header}.{body}."


def _inject(endpoint: str, **fault: Any) -> Callable[[Kit], None]:
    def prepare(kit: Kit) -> None:
        kit.clerk.inject(endpoint, **fault)

    return prepare


def _end_sessions(kit: Kit) -> None:
    original = kit.session

    def ended(*args: Any, **kw: Any) -> str:
        token = original(*args, **kw)
        kit.clerk.end_session(_claims(token)["sid"])
        return token

    kit.session = ended  # type: ignore[method-assign]


def _claims(token: str) -> dict[str, Any]:
    segment = token.split(".")[1]
    value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    assert isinstance(value, dict)
    return value


def _boom(session: Any) -> list[dict[str, Any]]:
    """A scopes callable with a bug: the request must still get an answer (no token)."""
    raise RuntimeError(f"scopes callable failed for {session.user_id}")


def _bearer_session(kit: Kit) -> tuple[str | None, str | None]:
    return f"Bearer {kit.session()}", None


def _redis_down() -> TokenCache:
    return RedisTokenCache(f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0")


@dataclass(frozen=True)
class Case:
    """One flow: what the request carries, the faults, the settings, and what it must yield —
    ``token``, ``anonymous``, a reason code (signed out) or a token error code."""

    expect: str
    headers: Callable[[Kit], tuple[str | None, str | None]] = _bearer_session
    prepare: Callable[[Kit], None] = lambda kit: None
    jwks: bool = False
    settings: Mapping[str, Any] = field(default_factory=dict)
    source: Callable[[], TokenSource] = ClerkTemplateSource
    cache: Callable[[], TokenCache] = MemoryTokenCache


CASES: dict[str, Case] = {
    "signed-in-bearer": Case("token"),
    "signed-in-cookie": Case("token", _cookie(lambda kit: f"__session={kit.session()}")),
    "signed-in-jwks": Case("token", jwks=True),
    "local-minting": Case(
        "token", source=lambda: LocalTokenSource("ws_secrets", ADMIN_TOKEN, SCOPES)
    ),
    "anonymous-token": Case(
        "anonymous", lambda kit: (None, None), settings={"anonymous_token": ANONYMOUS}
    ),
    "no-token": Case(Reason.TOKEN_MISSING, lambda kit: (None, "theme=dark")),
    "expired": Case(Reason.EXPIRED, _bearer(lambda kit: kit.session(now=time.time() - 3600))),
    "bad-signature": Case(Reason.INVALID_SIGNATURE, _bearer(_attacker_token)),
    "alg-none": Case(Reason.INVALID_ALGORITHM, _bearer(_alg_none)),
    "template-token": Case(
        Reason.TYPE_MISMATCH, _bearer(lambda kit: kit.session(header={"cat": TEMPLATE_CATEGORY}))
    ),
    "wrong-issuer": Case(
        Reason.INVALID_ISSUER, _bearer(lambda kit: kit.session(iss="https://evil.example"))
    ),
    "wrong-azp": Case(
        Reason.INVALID_AZP, _bearer(lambda kit: kit.session(azp="https://evil.example"))
    ),
    "pending": Case(Reason.SESSION_PENDING, _bearer(lambda kit: kit.session(sts="pending"))),
    "signed-out-elsewhere": Case(
        Reason.TOKEN_BUT_NO_UAT, _cookie(lambda kit: f"__client_uat=0; __session={kit.session()}")
    ),
    "oversized": Case(Reason.TOKEN_INVALID, _bearer(lambda kit: kit.session(pad="x" * 17_000))),
    "odd-azp-type": Case(Reason.INVALID_AZP, _bearer(lambda kit: kit.session(azp=[AZP]))),
    "unknown-kid": Case(
        Reason.KID_MISMATCH,
        _bearer(lambda kit: kit.session(header={"kid": "ins_unknown"})),
        jwks=True,
    ),
    "jwks-5xx": Case(Reason.JWK_LOAD_FAILED, prepare=_inject("jwks", status=503), jwks=True),
    "jwks-401": Case(Reason.SECRET_KEY_INVALID, prepare=_inject("jwks", status=401), jwks=True),
    "clerk-429": Case(
        TokenError.RATE_LIMITED, prepare=_inject("template", status=429, retry_after=5)
    ),
    "clerk-5xx": Case(TokenError.UNAVAILABLE, prepare=_inject("template", status=503)),
    "clerk-timeout": Case(
        TokenError.UNAVAILABLE,
        prepare=_inject("template", delay=0.5),
        source=lambda: ClerkTemplateSource(retry=RetryPolicy(budget=0.3)),
    ),
    "clerk-malformed": Case(
        TokenError.UNAVAILABLE, prepare=_inject("template", status=200, body=b'{"jwt": [1]}')
    ),
    "clerk-401": Case(TokenError.KEY_INVALID, prepare=_inject("template", status=401)),
    "clerk-template-missing": Case(
        TokenError.TEMPLATE_NOT_FOUND, source=lambda: ClerkTemplateSource("no_such_template")
    ),
    "clerk-session-ended": Case(TokenError.SESSION_NOT_FOUND, prepare=_end_sessions),
    "tenant-missing": Case(TokenError.TENANT_MISSING, _bearer(lambda kit: kit.session(org=None))),
    "source-raises": Case(
        TokenError.UNAVAILABLE, source=lambda: LocalTokenSource("ws_secrets", ADMIN_TOKEN, _boom)
    ),
    "require-auth-401": Case(
        Reason.EXPIRED,
        _bearer(lambda kit: kit.session(now=time.time() - 3600)),
        settings={"require_auth": True},
    ),
    "redis-down": Case("token", cache=_redis_down),
}


def _settings(kit: Kit, case: Case) -> Settings:
    values: dict[str, Any] = {
        "secret_key": kit.clerk.secret_key,
        "clerk_api_url": kit.url,
        "publishable_key": kit.clerk.publishable_key,
        "authorized_parties": (AZP,),
    }
    if not case.jwks:
        values["jwt_key"] = kit.clerk.public_key_pem
    values.update(case.settings)
    return Settings(**values)


def _echo_state(watch: LeakWatch, state: Mapping[str, Any]) -> dict[str, Any]:
    """What the apps below answer; every value the request was handed is scanned (repr, str)."""
    for name, value in state.items():
        watch.text(f"state {name}", value)
    auth = state.get("clerk_auth")
    token = state.get("tinybird_token")
    return {
        "reason": getattr(auth, "reason", "no-state"),
        "error": state.get("tinybird_token_error"),
        "anonymous": token.anonymous if token is not None else None,
    }


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str


async def _via_asgi(app: Any, headers: dict[str, str]) -> Reply:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/data", headers=headers)
    return Reply(
        response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.text
    )


def _via_wsgi(app: Any, headers: dict[str, str]) -> Reply:
    response = Client(app, use_cookies=False).get("/data", headers=headers)
    try:
        return Reply(
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            response.get_data(as_text=True),
        )
    finally:
        response.close()


def _find_asgi_middleware(app: Any) -> ClerkTinybirdMiddleware | None:
    node = getattr(app, "middleware_stack", None)
    while node is not None and not isinstance(node, ClerkTinybirdMiddleware):
        node = getattr(node, "app", None)
    return node


async def _run(via: str, kit: Kit, case: Case) -> tuple[Reply, list[object]]:
    """Send the case's request through ``via``; return the reply and the objects to scan."""
    settings = _settings(kit, case)
    source, cache = case.source(), case.cache()
    authorization, cookie = case.headers(kit)
    headers = {k: v for k, v in (("authorization", authorization), ("cookie", cookie)) if v}
    watch = kit.watch
    objects: list[object] = [settings, source, cache, kit.clerk, FakeTinybird()]
    if via in ("asgi", "fastapi"):
        if via == "asgi":

            async def app(scope: Scope, receive: Receive, send: Send) -> None:
                body = json.dumps(_echo_state(watch, scope.get("state", {}))).encode()
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": body})

            asgi: Any = ClerkTinybirdMiddleware(
                app, settings, token_source=source, token_cache=cache
            )
        else:
            api = FastAPI()

            @api.get("/data")
            def data(request: Request, token: TinybirdTokenDep) -> dict[str, Any]:
                watch.text("fastapi token", token)
                return _echo_state(watch, vars(request.state)["_state"])

            api.add_middleware(
                ClerkTinybirdMiddleware, settings=settings, token_source=source, token_cache=cache
            )
            asgi = api
        reply = await _via_asgi(asgi, headers)
        mw = asgi if via == "asgi" else _find_asgi_middleware(asgi)
        assert mw is not None
        objects += [mw, mw.engine, mw.driver, mw.engine.key_set, mw.engine.verifier, mw.engine.memo]
        await mw.aclose()
    else:
        if via == "wsgi":

            def wsgi_app(environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
                state = {
                    k.removeprefix("clerk_tinybird."): v
                    for k, v in environ.items()
                    if k.startswith("clerk_tinybird.")
                }
                start_response("200 OK", [("Content-Type", "application/json")])
                return [json.dumps(_echo_state(watch, state)).encode()]

            wsgi = ClerkTinybirdWSGIMiddleware(
                wsgi_app, settings, token_source=source, token_cache=cache
            )
            reply = _via_wsgi(wsgi, headers)
        else:
            flask_app = Flask(__name__)
            extension = ClerkTinybird(flask_app, settings, token_source=source, token_cache=cache)
            objects.append(extension)

            @flask_app.get("/data")
            @require_tinybird_token
            def flask_data() -> dict[str, Any]:
                return _echo_state(watch, {name: getattr(g, name) for name in vars(g)})

            reply = _via_wsgi(flask_app, headers)
            wsgi = flask_app.extensions["clerk_tinybird"]
        objects += [wsgi, wsgi.engine, wsgi.driver, wsgi.engine.key_set, wsgi.engine.verifier]
        wsgi.close()
    if isinstance(cache, RedisTokenCache):
        cache.close()
    return reply, objects


def _check_expectation(via: str, case: Case, reply: Reply) -> None:
    """The flow took the path it names (so the scan covers that path's logs and texts)."""
    token = reply.headers.get("x-tinybird-token")
    framework = via in ("fastapi", "flask")
    if case.expect in ("token", "anonymous"):
        assert reply.status == 200, reply
        assert token is not None
        assert json.loads(reply.text)["anonymous"] is (case.expect == "anonymous")
        return
    assert token is None
    body = json.loads(reply.text)
    body = body.get("detail", body) if isinstance(body, dict) else body
    if case.expect in REASONS:
        if framework or case.settings.get("require_auth"):
            assert (reply.status, body["reason"]) == (401, case.expect), reply
        else:
            assert (reply.status, body["reason"]) == (200, case.expect), reply
    elif framework:
        assert (reply.status, body["reason"]) == (503, case.expect), reply
    else:
        assert (reply.status, body["error"]) == (200, case.expect), reply


@pytest.mark.parametrize("via", ["asgi", "wsgi", "fastapi", "flask"])
@pytest.mark.parametrize("name", list(CASES))
async def test_flow_leaks_nothing(name: str, via: str, kit: Kit) -> None:
    """Run one flow; nothing it logged, answered, sent upstream or holds shows a secret."""
    case = CASES[name]
    watch = kit.watch
    kit.clerk.clear_faults()
    mark = watch.mark()
    upstream_mark = len(kit.recorder.requests)
    case.prepare(kit)
    try:
        reply, objects = await _run(via, kit, case)
    finally:
        kit.clerk.clear_faults()
        vars(kit).pop("session", None)  # undo _end_sessions
    _check_expectation(via, case, reply)
    headers = {k: v for k, v in reply.headers.items() if k != "x-tinybird-token"}
    watch.text(f"{via} response body", reply.text)
    watch.text(f"{via} response headers", headers)
    for obj in objects:
        watch.text(f"repr of {type(obj).__name__}", obj)
    for call in kit.recorder.requests[upstream_mark:]:
        assert call["headers"].pop("HTTP_AUTHORIZATION") == f"Bearer {kit.clerk.secret_key}"
        watch.text(f"upstream {call['method']} {call['url']}", call)
    found = watch.leaks(since=mark)
    assert not found, found


# -- exceptions -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["clerk-429", "clerk-5xx", "clerk-timeout", "clerk-malformed", "clerk-401",
     "clerk-template-missing", "clerk-session-ended", "tenant-missing"],
)  # fmt: skip
def test_token_errors_carry_no_secrets(name: str, kit: Kit) -> None:
    """The exceptions token sources raise (message, repr, traceback) name no secret."""
    case = CASES[name]
    engine = Engine(_settings(kit, case), token_source=case.source())
    driver = SyncDriver()
    mark = kit.watch.mark()
    kit.clerk.clear_faults()
    case.prepare(kit)
    try:
        authorization, _ = case.headers(kit)
        assert authorization is not None
        verified = driver.run(engine.verifier.verify(authorization.removeprefix("Bearer ")))
        assert isinstance(verified, Verified)
        assert engine.source is not None
        assert verified.auth.session is not None
        with pytest.raises(TokenError) as caught:
            driver.run(engine.source.token_flow(verified.auth.session))
    finally:
        kit.clerk.clear_faults()
        vars(kit).pop("session", None)
        driver.close()
    assert caught.value.code == case.expect
    kit.watch.text("exception", "".join(traceback.format_exception(caught.value)))
    assert not kit.watch.leaks(since=mark)


SECRET = "sk_test_" + "s3cr3t" * 8


PEM_WITH_SECRET = f"-----BEGIN PUBLIC KEY-----\n{SECRET}\n-----END PUBLIC KEY-----"
BAD_CONFIGURATIONS: dict[str, Callable[[], object]] = {
    "bad-pem": lambda: Engine(Settings(jwt_key=PEM_WITH_SECRET)),
    "bad-publishable-key": lambda: Engine(
        Settings(secret_key=SECRET, publishable_key=f"pk_test_{SECRET}")
    ),
    "no-scopes": lambda: Engine(
        Settings(secret_key=SECRET, tinybird_workspace_id="ws", tinybird_jwt_secret=SECRET)
    ),
    "bad-scopes-json": lambda: Settings.from_env(
        {"CLERK_SECRET_KEY": SECRET, "TINYBIRD_JWT_SCOPES": "[" + SECRET}
    ),
    "bad-number": lambda: Settings.from_env(
        {"CLERK_SECRET_KEY": SECRET, "CLERK_CLOCK_SKEW_SECONDS": "five"}
    ),
    "null-fixed-param": lambda: LocalTokenSource(
        "ws", SECRET, [{"resource": "events", "fixed_params": {"org": None}}]
    ),
    "bad-redis-url": lambda: RedisTokenCache(f"redis//:{REDIS_PASSWORD}@127.0.0.1:1/0"),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGURATIONS))
def test_configuration_errors_carry_no_secrets(name: str, leaks: LeakWatch) -> None:
    """A secret in (or next to) a bad setting is not echoed by the ConfigurationError."""
    leaks.secret(SECRET, "secret in a bad setting")
    mark = leaks.mark()
    with pytest.raises(ConfigurationError) as caught:
        BAD_CONFIGURATIONS[name]()
    leaks.text("configuration error", "".join(traceback.format_exception(caught.value)))
    assert not leaks.leaks(since=mark)


# -- reprs of the package's own value objects -----------------------------------------------------


def _internal_objects(kit: Kit) -> dict[str, object]:
    token = kit.session()
    settings = _settings(kit, Case("token"))
    engine = Engine(settings)
    driver = SyncDriver()
    try:
        verified = driver.run(engine.verifier.verify(token))
        assert isinstance(verified, Verified)
        auth = verified.auth
        assert auth.session is not None
        assert engine.broker is not None
        flow = engine.source.token_flow(auth.session) if engine.source else None
        assert flow is not None
        request = next(flow)  # the template call, with the secret key in its headers
        assert isinstance(request, HttpRequest)
        key = engine.broker.key_of(auth.session)
        outcome = driver.run(engine.broker.cold(key, auth.session))
    finally:
        driver.close()
    tinybird = outcome.token
    assert tinybird is not None
    kit.watch.secret(tinybird.jwt, "Tinybird JWT")
    body = json.dumps({"object": "token", "jwt": tinybird.jwt}).encode()
    return {
        "AuthResult": auth,
        "ClerkSession": auth.session,
        "TinybirdToken": tinybird,
        "TokenOutcome": outcome,
        "HttpRequest": request,
        "HttpResponse": HttpResponse(200, {"content-type": "application/json"}, body),
        "AsyncDriver": AsyncDriver(),
        "Verified": verified,
        "Engine": engine,
        "Located": locate(f"Bearer {token}", None, None),
        "ParsedJWT.header": parse(token).header,
    }


@pytest.mark.parametrize(
    "name",
    [
        "AuthResult",
        "ClerkSession",
        "TinybirdToken",
        "TokenOutcome",
        "HttpRequest",
        "HttpResponse",
        "AsyncDriver",
        "Verified",
        "Engine",
        "Located",
        "ParsedJWT.header",
    ],
)
def test_reprs_show_no_secret(name: str, kit: Kit) -> None:
    obj = _internal_objects(kit)[name]
    found = kit.watch.find(f"{obj!s}\n{obj!r}")
    assert not found, found
