"""SPEC §9's handshake decided by the engine, on a frozen clock: the decision table (every
trigger by eligible and non-eligible requests, production and development instances), the
307's exact URL, the loop limit, and resolution by nonce and by the legacy JWT — including
every way resolution can fail, which signs the request out and never raises.

The engine is what every adapter runs (ASGI, WSGI, Flask, Django); ``test_handshake_flow``
drives the same flows over real HTTP through the adapters, with FakeClerk's Frontend API.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, generate_private_key

from clerk_tinybird_middleware.core.ops import HttpRequest, HttpResponse
from clerk_tinybird_middleware.core.request import RequestAuth
from clerk_tinybird_middleware.engine import Engine
from clerk_tinybird_middleware.settings import Settings
from clerk_tinybird_middleware.testing import FakeClerk
from clerk_tinybird_middleware.tinybird import LocalTokenSource
from constants import ADMIN_TOKEN, ORG, SCOPES
from flows import FakeClock, Request, Stepper, answer, no_answer

NOW = 1_800_000_000
API = "https://api.clerk.test"
STALE = "session-token-expired-refresh-non-eligible-no-refresh-cookie"
DEV_BROWSER = "dvb_1"

# How a request asks: page loads are eligible, everything else is not.
ELIGIBLE = {
    "document": ("GET", {"sec-fetch-dest": "document", "accept": "*/*"}),
    "iframe": ("GET", {"sec-fetch-dest": "iframe"}),
    "accept-html": ("GET", {"accept": "text/html,application/xhtml+xml"}),
}
NOT_ELIGIBLE = {
    "fetch": ("GET", {"sec-fetch-dest": "empty", "accept": "text/html"}),
    "json": ("GET", {"accept": "application/json"}),
    "no-accept": ("GET", {}),
    "post": ("POST", {"sec-fetch-dest": "document", "accept": "text/html"}),
    "head": ("HEAD", {"sec-fetch-dest": "document", "accept": "text/html"}),
}


@dataclass
class Instance:
    fake: FakeClerk
    engine: Engine
    clock: FakeClock
    payloads: dict[str, HttpResponse]

    def token(self, **claims: Any) -> str:
        now = claims.pop("now", NOW)
        return self.fake.session_token("user_1", org=ORG, now=now, **claims)

    def ask(self, how: tuple[str, dict[str, str]], cookie: str | None, query: str = "") -> Any:
        method, headers = how
        request = Request({"host": "app.test", **headers}, method=method, query=query)
        if cookie is not None:
            request.headers["cookie"] = cookie
        return answer(self.engine, Stepper(self.clock, self._bapi), request)

    def _bapi(self, request: HttpRequest) -> HttpResponse:
        nonce = dict(parse_qsl(urlsplit(request.url).query)).get("nonce", "")
        assert request.url.startswith(f"{API}/v1/clients/handshake_payload?")
        assert request.headers["Authorization"] == f"Bearer {self.fake.secret_key}"
        return self.payloads.get(nonce) or HttpResponse(404, {}, b'{"errors": []}')


def _instance(signing_key: RSAPrivateKey, *, live: bool) -> Instance:
    fake = FakeClerk(live=live, signing_key=signing_key)
    clock = FakeClock(start=NOW + 0.5)
    settings = Settings(
        secret_key=fake.secret_key,
        publishable_key=fake.publishable_key,
        jwt_key=fake.public_key_pem,
        clerk_api_url=API,
    )
    source = LocalTokenSource("ws_handshake", ADMIN_TOKEN, SCOPES)
    return Instance(fake, Engine(settings, token_source=source, clock=clock), clock, {})


@pytest.fixture
def production(fake_clerk_signing_key: RSAPrivateKey) -> Instance:
    return _instance(fake_clerk_signing_key, live=True)


@pytest.fixture
def development(fake_clerk_signing_key: RSAPrivateKey) -> Instance:
    return _instance(fake_clerk_signing_key, live=False)


def _outcome(result: RequestAuth) -> str:
    """``handshake:<__clerk_hs_reason>``, ``in``, or ``out:<reason>``."""
    if result.answer is not None and result.answer.status == 307:
        location = dict(result.answer.headers)["location"]
        return "handshake:" + dict(parse_qsl(urlsplit(location).query))["__clerk_hs_reason"]
    if result.auth.session is not None:
        return "in"
    return f"out:{result.auth.reason}"


# -- the decision table ----------------------------------------------------------------------------

#: cookie state → (eligible page load, any other request). None: the state's own cookie.
Cookies = Callable[[Instance], str]
TABLE: dict[str, tuple[Cookies, str, str]] = {
    "valid": (lambda i: f"__session={i.token()}; __client_uat={NOW}", "in", "in"),
    "expired": (
        lambda i: f"__session={i.token(now=NOW - 120)}; __client_uat={NOW - 120}",
        f"handshake:{STALE}",
        "out:token-expired",
    ),
    "not-active-yet": (
        lambda i: f"__session={i.token(nbf=NOW + 60)}; __client_uat={NOW - 1}",
        "handshake:session-token-nbf",
        "out:token-not-active-yet",
    ),
    "iat-in-the-future": (
        lambda i: f"__session={i.token(iat=NOW + 60, nbf=NOW - 1)}; __client_uat=1",
        "handshake:session-token-iat-in-the-future",
        "out:token-iat-in-the-future",
    ),
    "uat-but-no-token": (
        lambda i: f"__client_uat={NOW}",
        "handshake:client-uat-but-no-session-token",
        "out:client-uat-but-no-session-token",
    ),
    "token-but-no-uat": (
        lambda i: f"__session={i.token()}",
        "handshake:session-token-but-no-client-uat",
        "in",  # §4: an API client that sends only __session is still signed in
    ),
    "token-and-uat-zero": (
        lambda i: f"__session={i.token()}; __client_uat=0",
        "handshake:session-token-but-no-client-uat",
        "out:session-token-but-no-client-uat",
    ),
    "iat-before-uat": (
        lambda i: f"__session={i.token(now=NOW - 10)}; __client_uat={NOW}",
        "handshake:session-token-iat-before-client-uat",
        "out:session-token-iat-before-client-uat",
    ),
    "signed-out": (
        lambda i: "__client_uat=0",
        "out:session-token-and-uat-missing",
        "out:session-token-and-uat-missing",
    ),
    "no-cookies": (lambda i: "", "out:session-token-missing", "out:session-token-missing"),
    "invalid-token": (
        lambda i: f"__session=not.a.jwt; __client_uat={NOW}",
        "out:token-invalid",  # not a trigger: a forged cookie is never refreshed
        "out:token-invalid",
    ),
}


@pytest.mark.parametrize("state", TABLE)
@pytest.mark.parametrize("how", [*ELIGIBLE, *NOT_ELIGIBLE])
def test_decision_table_production(production: Instance, state: str, how: str) -> None:
    cookies, page_load, other = TABLE[state]
    cookie = cookies(production) or None
    kind = ELIGIBLE.get(how) or NOT_ELIGIBLE[how]

    result = production.ask(kind, cookie)

    expected = page_load if how in ELIGIBLE else other
    assert _outcome(result) == expected
    assert (result.auth.status == "handshake") is expected.startswith("handshake:")


@pytest.mark.parametrize("state", TABLE)
@pytest.mark.parametrize("how", ["document", "fetch"])
def test_decision_table_development(development: Instance, state: str, how: str) -> None:
    """The same table on a development instance whose browser has its dev-browser token."""
    cookies, page_load, other = TABLE[state]
    cookie = f"{cookies(development)}; __clerk_db_jwt={DEV_BROWSER}".lstrip("; ")
    kind = ELIGIBLE.get(how) or NOT_ELIGIBLE[how]

    result = development.ask(kind, cookie)

    assert _outcome(result) == (page_load if how in ELIGIBLE else other)


@pytest.mark.parametrize(
    ("cookie", "query", "page_load"),
    [
        pytest.param("", "", "handshake:dev-browser-missing", id="first-visit"),
        pytest.param(None, "", "handshake:dev-browser-missing", id="no-cookie-header"),
        pytest.param(
            f"__session=VALID; __client_uat={NOW}", "", "handshake:dev-browser-missing", id="valid"
        ),
        pytest.param(
            f"__session=VALID; __client_uat={NOW}; __clerk_db_jwt={DEV_BROWSER}",
            "__clerk_db_jwt=dvb_2",
            "handshake:dev-browser-sync",
            id="sync",
        ),
    ],
)
@pytest.mark.parametrize("how", ["document", "accept-html", "fetch", "post"])
def test_dev_browser_rules(
    development: Instance, cookie: str | None, query: str, page_load: str, how: str
) -> None:
    """Development instances: a page load needs the dev-browser token, and one in the URL is
    synced; every other request keeps §4's answers (a documented difference from Clerk)."""
    if cookie is not None:
        cookie = cookie.replace("VALID", development.token())
    kind = ELIGIBLE.get(how) or NOT_ELIGIBLE[how]

    result = development.ask(kind, cookie, query)

    other = "in" if cookie and "__session" in cookie else "out:session-token-missing"
    assert _outcome(result) == (page_load if how in ELIGIBLE else other)


def test_bearer_requests_never_handshake(production: Instance) -> None:
    stale = production.token(now=NOW - 120)
    for kind in ELIGIBLE.values():
        method, headers = kind
        request = Request({**headers, "host": "app.test", "authorization": f"Bearer {stale}"})
        request.method = method
        result = answer(production.engine, Stepper(production.clock), request)
        assert result.answer is None
        assert result.auth.reason == "token-expired"


# -- the redirect ----------------------------------------------------------------------------------


def test_the_redirect_url_is_clerks(development: Instance) -> None:
    stale = development.token(now=NOW - 120)
    request = Request(
        {
            "host": "internal:8000",
            "x-forwarded-proto": "https, http",
            "x-forwarded-host": "shop.example.com, proxy",
            "accept": "text/html",
            "cookie": f"__session={stale}; __client_uat={NOW - 120}; __clerk_db_jwt=dvb_9",
        },
        path="/a%20b/page",
        query="x=1&__clerk_db_jwt=dvb_9&y=%20z&__dev_session=old",
    )

    result = answer(development.engine, Stepper(development.clock), request)

    assert result.answer is not None
    assert result.answer.status == 307
    headers = result.answer.headers
    location = dict(headers)["location"]
    base, _, query = location.partition("?")
    assert base == f"https://{development.fake.frontend_api}/v1/client/handshake"
    assert parse_qsl(query) == [
        ("redirect_url", "https://shop.example.com/a%20b/page?x=1&y=+z"),
        ("__clerk_api_version", "2026-05-12"),
        ("suffixed_cookies", "false"),
        ("__clerk_hs_reason", "dev-browser-sync"),
        ("format", "nonce"),
        ("__session", stale),
        ("__clerk_db_jwt", "dvb_9"),
    ]
    assert ("cache-control", "no-store") in headers
    assert (
        "set-cookie",
        "__clerk_redirect_count=1; SameSite=Lax; HttpOnly; Max-Age=2",
    ) in headers


def test_production_never_sends_the_dev_browser(production: Instance) -> None:
    stale = production.token(now=NOW - 120)
    result = production.ask(
        ELIGIBLE["document"], f"__session={stale}; __client_uat=1; __clerk_db_jwt=dvb_9"
    )
    location = dict(result.answer.headers)["location"]
    names = [k for k, _ in parse_qsl(urlsplit(location).query)]
    assert "__clerk_db_jwt" not in names
    assert location.startswith(f"https://{production.fake.frontend_api}/v1/client/handshake?")


@pytest.mark.parametrize(("count", "next_count"), [("", "1"), ("1", "2"), ("2", "3"), ("x", "1")])
def test_the_redirect_counts_its_loops(production: Instance, count: str, next_count: str) -> None:
    stale = production.token(now=NOW - 120)
    cookie = f"__session={stale}; __client_uat=1; __clerk_redirect_count={count}"

    result = production.ask(ELIGIBLE["document"], cookie)

    assert result.answer is not None
    assert f"__clerk_redirect_count={next_count};" in dict(result.answer.headers)["set-cookie"]


def test_the_loop_stops_at_three(production: Instance, caplog: pytest.LogCaptureFixture) -> None:
    stale = production.token(now=NOW - 120)
    cookie = f"__session={stale}; __client_uat=1; __clerk_redirect_count=3"

    with caplog.at_level(logging.WARNING, "clerk_tinybird_middleware"):
        result = production.ask(ELIGIBLE["document"], cookie)

    assert result.answer is None
    assert result.auth.status == "signed-out"
    assert result.auth.reason == "token-expired"
    assert "redirect loop" in caplog.text
    assert stale not in caplog.text


# -- resolution ------------------------------------------------------------------------------------


def _directives(instance: Instance, token: str) -> list[str]:
    return [
        f"__session={token}; Path=/; Max-Age=31536000; SameSite=Lax",
        f"__client_uat={NOW}; Path=/; Max-Age=31536000; SameSite=Lax",
    ]


def _payload(directives: Any) -> HttpResponse:
    body = json.dumps({"directives": directives}).encode()
    return HttpResponse(200, {"content-type": "application/json"}, body)


def _legacy(instance: Instance, claims: dict[str, Any], key: RSAPrivateKey | None = None) -> str:
    return pyjwt.encode(
        claims,
        key or instance.fake.private_key,
        algorithm="RS256",
        headers={"kid": instance.fake.kid},
    )


def test_a_nonce_resolves_in_place_in_production(production: Instance) -> None:
    fresh = production.token()
    directives = _directives(production, fresh)
    production.payloads["n1"] = _payload(directives)
    stale = production.token(now=NOW - 120)

    result = production.ask(
        ELIGIBLE["document"], f"__session={stale}", "__clerk_handshake_nonce=n1"
    )

    assert result.answer is None  # the app is called, signed in
    assert result.auth.session is not None
    assert result.auth.session.user_id == "user_1"
    assert result.token is not None
    cookies = [v for k, v in result.tail if k.lower() == "set-cookie"]
    assert cookies == directives


def test_a_nonce_in_a_cookie_resolves_too(production: Instance) -> None:
    production.payloads["n2"] = _payload(_directives(production, production.token()))
    result = production.ask(NOT_ELIGIBLE["json"], "__clerk_handshake_nonce=n2")
    assert _outcome(result) == "in"


def test_development_redirects_to_the_clean_url(development: Instance) -> None:
    directives = _directives(development, development.token())
    development.payloads["n3"] = _payload(directives)
    query = "a=1&__clerk_handshake_nonce=n3&__clerk_db_jwt=dvb_1&__clerk_help=1&b=2"

    result = development.ask(ELIGIBLE["document"], None, query)

    assert result.answer is not None
    assert result.answer.status == 307
    headers = result.answer.headers
    assert dict(headers)["location"] == "http://app.test/?a=1&b=2"
    assert [v for k, v in headers if k == "set-cookie"] == directives
    assert result.auth.session is not None


def test_a_legacy_handshake_token_resolves(production: Instance) -> None:
    directives = _directives(production, production.token())
    legacy = _legacy(production, {"handshake": directives})

    result = production.ask(ELIGIBLE["document"], None, f"__clerk_handshake={legacy}")

    assert _outcome(result) == "in"
    assert [v for k, v in result.tail if k.lower() == "set-cookie"] == directives


def test_signed_out_directives_sign_the_request_out(production: Instance) -> None:
    production.payloads["n4"] = _payload(
        ["__session=; Path=/; Max-Age=0", "__client_uat=0; Path=/; Max-Age=31536000"]
    )
    result = production.ask(
        ELIGIBLE["document"], f"__client_uat={NOW}", "__clerk_handshake_nonce=n4"
    )
    assert _outcome(result) == "out:session-token-missing"
    assert "__client_uat=0; Path=/; Max-Age=31536000" in [v for _, v in result.tail]


OTHER_KEY = generate_private_key(public_exponent=65537, key_size=2048)

#: Every way resolution fails: (what the Backend API answers for nonce "bad", or a legacy
#: token), each signed out, never an exception.
FAILURES: dict[str, Callable[[Instance], tuple[str, HttpResponse | None]]] = {
    "unknown-nonce": lambda i: ("__clerk_handshake_nonce=bad", None),
    "payload-500": lambda i: ("__clerk_handshake_nonce=bad", HttpResponse(500, {}, b"oops")),
    "payload-not-json": lambda i: ("__clerk_handshake_nonce=bad", HttpResponse(200, {}, b"<html")),
    "payload-not-a-list": lambda i: ("__clerk_handshake_nonce=bad", _payload("__session=x")),
    "payload-not-strings": lambda i: ("__clerk_handshake_nonce=bad", _payload([1, None])),
    "payload-deep-json": lambda i: (
        "__clerk_handshake_nonce=bad",
        HttpResponse(200, {}, b'{"directives": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    ),
    "session-does-not-verify": lambda i: (
        "__clerk_handshake_nonce=bad",
        _payload(["__session=eyJhbGciOiJSUzI1NiJ9.e30.c2ln; Path=/"]),
    ),
    "expired-session": lambda i: (
        "__clerk_handshake_nonce=bad",
        _payload(_directives(i, i.token(now=NOW - 300))),
    ),
    "legacy-wrong-key": lambda i: (
        "__clerk_handshake=" + _legacy(i, {"handshake": _directives(i, i.token())}, OTHER_KEY),
        None,
    ),
    "legacy-not-a-jwt": lambda i: ("__clerk_handshake=abc.def", None),
    "legacy-no-claim": lambda i: ("__clerk_handshake=" + _legacy(i, {"x": 1}), None),
}


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("instance", ["production", "development"])
def test_a_failed_resolution_is_signed_out(
    request: pytest.FixtureRequest,
    failure: str,
    instance: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    world: Instance = request.getfixturevalue(instance)
    query, reply = FAILURES[failure](world)
    if reply is not None:
        world.payloads["bad"] = reply

    with caplog.at_level(logging.DEBUG, "clerk_tinybird_middleware"):
        result = world.ask(ELIGIBLE["document"], f"__clerk_db_jwt={DEV_BROWSER}", query)

    assert result.auth.session is None
    assert result.token is None
    if result.answer is not None:  # a development instance still leaves the handshake URL
        assert result.answer.status == 307
        assert "__clerk_handshake" not in dict(result.answer.headers)["location"]
    assert not [r for r in caplog.records if r.exc_info]  # no traceback
    assert world.fake.secret_key not in caplog.text


def test_a_payload_that_never_answers_is_signed_out(production: Instance) -> None:
    stepper = Stepper(production.clock, no_answer(production.clock))
    request = Request(
        {"host": "app.test", "accept": "text/html"}, query="__clerk_handshake_nonce=slow"
    )

    result = answer(production.engine, stepper, request)

    assert _outcome(result) == "out:session-token-missing"
    assert len(stepper.requests) >= 1
