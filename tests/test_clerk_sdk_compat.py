"""FakeClerk speaks Clerk's wire format, and the official clients are the judges.

The Python ``clerk-backend-api`` SDK and the JavaScript ``@clerk/backend``
(``createClerkClient``, run once per module in Node: ``tests/interop/clerk/bapi.mjs``), pointed
at FakeClerk over loopback HTTP, read every endpoint it serves — JWKS, sessions, users,
organizations, session and template tokens, JWT templates, the handshake payload — and parse
its errors (401 ``clerk_key_invalid``, 404, 422, 429 with ``Retry-After``, 5xx). FakeClerk's
session tokens pass the Python SDK's own ``authenticate_request`` (networkless, with the PEM
key)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt as pyjwt
import pytest
from clerk_backend_api import Clerk, models
from clerk_backend_api.security import (
    AuthenticateRequestOptions,
    AuthStatus,
    TokenVerificationErrorReason,
    VerifyTokenOptions,
    authenticate_request,
    verify_token,
)
from clerk_backend_api.utils import RetryConfig
from cryptography.hazmat.primitives.asymmetric import rsa

from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from test_clerk_differential import node_judge

ORIGIN = "http://localhost:3000"
ACME = {"id": "org_acme", "slug": "acme", "role": "admin", "permissions": ["org:reports:read"]}


@pytest.fixture
def sdk(fake_clerk: FakeClerk) -> Iterator[Any]:
    """The official client against FakeClerk, with its retries off (it would retry 5xx for
    up to an hour by default)."""
    with Clerk(
        bearer_auth=fake_clerk.secret_key,
        server_url=fake_clerk.api_url + "/v1",
        retry_config=RetryConfig("none", None, False),  # type: ignore[arg-type]
    ) as client:
        yield client


def _sid(token: str) -> str:
    sid: str = pyjwt.decode(token, options={"verify_signature": False})["sid"]
    return sid


def _b64int(value: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")


# -- Backend API ---------------------------------------------------------------------------------


def test_sdk_fetches_the_jwks(sdk: Any, fake_clerk: FakeClerk) -> None:
    jwks = sdk.jwks.get_jwks()

    assert jwks.keys is not None
    assert len(jwks.keys) == 1
    key = jwks.keys[0]
    assert key.kid == fake_clerk.kid
    assert (key.kty, key.alg, key.use) == ("RSA", "RS256", "sig")
    numbers = fake_clerk.private_key.public_key().public_numbers()
    assert (_b64int(key.n), _b64int(key.e)) == (numbers.n, numbers.e)


def test_sdk_gets_a_template_token_tinybird_accepts(
    sdk: Any, fake_clerk: FakeClerk, fake_tinybird: FakeTinybird
) -> None:
    session = fake_clerk.session_token("user_1", org=ACME)

    answer = sdk.sessions.create_token_from_template(
        session_id=_sid(session), template_name="tinybird"
    )

    assert str(getattr(answer.object, "value", answer.object)) == "token"
    claims = pyjwt.decode(answer.jwt, fake_tinybird.admin_token, algorithms=["HS256"])
    assert claims["workspace_id"] == fake_tinybird.workspace_id
    assert claims["scopes"][0]["fixed_params"] == {"org": "acme", "user": "user_1"}
    fake_tinybird.add_pipe("analytics_hits", [{"org": "acme", "n": 1}, {"org": "globex", "n": 2}])
    rows = httpx.get(
        f"{fake_tinybird.api_url}/v0/pipes/analytics_hits.json",
        params={"org": "globex"},
        headers={"Authorization": f"Bearer {answer.jwt}"},
    )
    assert rows.json()["data"] == [{"org": "acme", "n": 1}]
    assert fake_clerk.calls["template"] == 1


def test_sdk_passes_expires_in_seconds(sdk: Any, fake_clerk: FakeClerk) -> None:
    session = fake_clerk.session_token("user_1", org=ACME)

    answer = sdk.sessions.create_token_from_template(
        session_id=_sid(session), template_name="tinybird", expires_in_seconds=120
    )

    claims = pyjwt.decode(answer.jwt, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        pytest.param("unknown-template", 404, "resource_not_found", id="unknown-template"),
        pytest.param("unknown-session", 404, "resource_not_found", id="unknown-session"),
        pytest.param("bad-secret-key", 401, "clerk_key_invalid", id="bad-secret-key"),
    ],
)
def test_sdk_parses_fake_clerk_errors(
    fake_clerk: FakeClerk, case: str, status: int, code: str
) -> None:
    session = fake_clerk.session_token("user_1", org=ACME)
    sid = "sess_nope" if case == "unknown-session" else _sid(session)
    template = "nope" if case == "unknown-template" else "tinybird"
    key = "sk_test_wrong" if case == "bad-secret-key" else fake_clerk.secret_key
    with (
        Clerk(
            bearer_auth=key,
            server_url=fake_clerk.api_url + "/v1",
            retry_config=RetryConfig("none", None, False),  # type: ignore[arg-type]
        ) as client,
        pytest.raises(models.ClerkErrors) as raised,
    ):
        client.sessions.create_token_from_template(session_id=sid, template_name=template)

    assert raised.value.raw_response.status_code == status
    assert [error.code for error in raised.value.data.errors] == [code]


def test_sdk_sees_an_injected_rate_limit(sdk: Any, fake_clerk: FakeClerk) -> None:
    session = fake_clerk.session_token("user_1", org=ACME)
    fake_clerk.inject("template", status=429, retry_after=7, times=1)

    with pytest.raises(models.SDKError) as raised:
        sdk.sessions.create_token_from_template(session_id=_sid(session), template_name="tinybird")

    assert raised.value.raw_response.status_code == 429
    assert raised.value.raw_response.headers["retry-after"] == "7"
    assert "too_many_requests" in raised.value.body


# -- authenticate_request (networkless) ----------------------------------------------------------


def _request(token: str, where: str) -> httpx.Request:
    if where == "cookie":
        headers = {"cookie": f"__client_uat=1; __session={token}"}
    else:
        headers = {"Authorization": f"Bearer {token}"}
    return httpx.Request("GET", ORIGIN + "/dashboard", headers=headers)


@pytest.mark.parametrize("where", ["bearer", "cookie"])
@pytest.mark.parametrize(
    ("version", "org"),
    [
        pytest.param(2, ACME, id="v2-org"),
        pytest.param(1, ACME, id="v1-org"),
        pytest.param(2, None, id="v2-no-org"),
    ],
)
def test_session_tokens_pass_authenticate_request(
    version: int, org: dict[str, Any] | None, where: str
) -> None:
    fake = FakeClerk()
    token = fake.session_token("user_1", org=org, version=version, azp=ORIGIN)
    options = AuthenticateRequestOptions(jwt_key=fake.public_key_pem, authorized_parties=[ORIGIN])

    state = authenticate_request(_request(token, where), options)

    assert state.status == AuthStatus.SIGNED_IN, state.reason
    assert state.payload is not None
    assert state.payload["sub"] == "user_1"
    if org is not None:
        assert state.payload["org_id"] == "org_acme"
        assert state.payload["org_slug"] == "acme"
        assert state.payload["org_permissions"] == ["org:reports:read"]
    else:
        assert "org_id" not in state.payload


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        pytest.param(
            {"signing_key": "other"},
            TokenVerificationErrorReason.TOKEN_INVALID_SIGNATURE,
            id="other-key",
        ),
        pytest.param({"lifetime": -60}, TokenVerificationErrorReason.TOKEN_EXPIRED, id="expired"),
        pytest.param(
            {"azp": "https://evil.example"},
            TokenVerificationErrorReason.TOKEN_INVALID_AUTHORIZED_PARTIES,
            id="other-origin",
        ),
    ],
)
def test_authenticate_request_really_verifies_fake_tokens(
    mutate: dict[str, Any], reason: TokenVerificationErrorReason
) -> None:
    fake = FakeClerk()
    kwargs: dict[str, Any] = {"azp": ORIGIN, **mutate}
    if kwargs.get("signing_key") == "other":
        kwargs["signing_key"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = fake.session_token("user_1", org=ACME, **kwargs)
    options = AuthenticateRequestOptions(jwt_key=fake.public_key_pem, authorized_parties=[ORIGIN])

    state = authenticate_request(_request(token, "bearer"), options)

    assert state.status == AuthStatus.SIGNED_OUT
    assert state.reason == reason


def test_verify_token_fetches_fake_clerks_jwks(fake_clerk: FakeClerk) -> None:
    """The SDK's JWKS path (``verify_token`` takes an ``api_url``; ``authenticate_request``
    does not, so it could only reach the real Clerk): it fetches FakeClerk's JWKS with the
    secret key and verifies the token with it."""
    token = fake_clerk.session_token("user_1", org=ACME, azp=ORIGIN)
    options = VerifyTokenOptions(
        secret_key=fake_clerk.secret_key, api_url=fake_clerk.api_url, authorized_parties=[ORIGIN]
    )

    claims = verify_token(token, options)

    assert claims["sub"] == "user_1"
    assert claims["o"]["slg"] == "acme"
    assert fake_clerk.calls["jwks"] == 1


# -- the other Backend API endpoints, through the Python SDK --------------------------------------


@pytest.fixture
def signed_in(fake_clerk: FakeClerk) -> str:
    """A session of user_1 in org_acme (FakeClerk learns the session, user and org)."""
    fake_clerk.add_user("user_1", first_name="Ada", last_name="Lovelace")
    return _sid(fake_clerk.session_token("user_1", org=ACME))


def test_sdk_gets_a_session(sdk: Any, fake_clerk: FakeClerk, signed_in: str) -> None:
    session = sdk.sessions.get(session_id=signed_in)

    assert (session.id, session.user_id, str(session.status.value)) == (
        signed_in,
        "user_1",
        "active",
    )
    assert session.last_active_organization_id == "org_acme"
    assert session.client_id.startswith("client_")
    assert session.expire_at > session.created_at
    assert fake_clerk.calls["session"] == 1


def test_sdk_gets_a_user(sdk: Any, signed_in: str) -> None:
    user = sdk.users.get(user_id="user_1")

    assert (user.id, user.first_name, user.last_name) == ("user_1", "Ada", "Lovelace")
    email = user.email_addresses[0]
    assert email.id == user.primary_email_address_id
    assert email.email_address == "user_1@example.test"
    assert email.linked_to == []
    assert user.phone_numbers[0].id == user.primary_phone_number_id


@pytest.mark.parametrize("key", ["org_acme", "acme"], ids=["by-id", "by-slug"])
def test_sdk_gets_an_organization(sdk: Any, signed_in: str, key: str) -> None:
    org = sdk.organizations.get(organization_id=key, include_members_count=True)

    assert (org.id, org.slug, org.name) == ("org_acme", "acme", "acme")
    assert org.members_count == 1
    assert org.created_by == "user_1"


def test_sdk_gets_a_fresh_session_token(sdk: Any, fake_clerk: FakeClerk, signed_in: str) -> None:
    answer = sdk.sessions.create_token(session_id=signed_in, expires_in_seconds=120)

    claims = pyjwt.decode(answer.jwt, fake_clerk.public_key_pem, algorithms=["RS256"])
    assert (claims["sid"], claims["sub"], claims["o"]["id"]) == (signed_in, "user_1", "org_acme")
    assert claims["exp"] - claims["iat"] == 120
    assert claims["iss"] == fake_clerk.issuer
    assert fake_clerk.calls["token"] == 1


def test_sdk_lists_and_gets_jwt_templates(sdk: Any, fake_clerk: FakeClerk) -> None:
    fake_clerk.add_template("second", {"aud": "x"}, "k" * 32, lifetime=30)

    templates = sdk.jwt_templates.list()

    assert [t.name for t in templates] == ["tinybird", "second"]
    tinybird = templates[0]
    assert tinybird.signing_algorithm == "HS256"
    assert (tinybird.lifetime, tinybird.allowed_clock_skew, tinybird.custom_signing_key) == (
        600,
        5,
        True,
    )
    assert tinybird.claims is not None  # the SDK models claims as an empty object
    assert sdk.jwt_templates.get(template_id=templates[1].id).name == "second"


def _python_call(client: Any, endpoint: str, sid: str, unknown: bool) -> Any:
    """One SDK call per FakeClerk endpoint; ``unknown``: for an id FakeClerk does not know."""
    nope = "nope_1"
    calls: dict[str, Any] = {
        "session": lambda: client.sessions.get(session_id=nope if unknown else sid),
        "user": lambda: client.users.get(user_id=nope if unknown else "user_1"),
        "organization": lambda: client.organizations.get(
            organization_id=nope if unknown else "acme"
        ),
        "token": lambda: client.sessions.create_token(session_id=nope if unknown else sid),
        "template": lambda: client.sessions.create_token_from_template(
            session_id=sid, template_name=nope if unknown else "tinybird"
        ),
        "jwt_template": lambda: client.jwt_templates.get(template_id=nope),
        "jwt_templates": lambda: client.jwt_templates.list(),
        "jwks": lambda: client.jwks.get_jwks(),
    }
    return calls[endpoint]()


def _status_and_codes(raised: pytest.ExceptionInfo[Exception]) -> tuple[int, list[str]]:
    error: Any = raised.value
    body = json.loads(error.raw_response.text)
    return error.raw_response.status_code, [e["code"] for e in body["errors"]]


ENDPOINTS = ["session", "user", "organization", "token", "template", "jwt_templates", "jwks"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_sdk_sees_clerk_key_invalid(fake_clerk: FakeClerk, signed_in: str, endpoint: str) -> None:
    with (
        Clerk(
            bearer_auth="sk_test_wrong",
            server_url=fake_clerk.api_url + "/v1",
            retry_config=RetryConfig("none", None, False),  # type: ignore[arg-type]
        ) as client,
        pytest.raises((models.ClerkErrors, models.SDKError)) as raised,
    ):
        _python_call(client, endpoint, signed_in, unknown=False)

    assert _status_and_codes(raised) == (401, ["clerk_key_invalid"])


@pytest.mark.parametrize(
    "endpoint", ["session", "user", "organization", "token", "template", "jwt_template"]
)
def test_sdk_sees_resource_not_found(sdk: Any, signed_in: str, endpoint: str) -> None:
    with pytest.raises((models.ClerkErrors, models.SDKError)) as raised:
        _python_call(sdk, endpoint, signed_in, unknown=True)

    assert _status_and_codes(raised) == (404, ["resource_not_found"])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("status", [429, 500, 503])
def test_sdk_sees_injected_faults(
    sdk: Any, fake_clerk: FakeClerk, signed_in: str, endpoint: str, status: int
) -> None:
    fake_clerk.inject(endpoint, status=status, retry_after=9 if status == 429 else None, times=1)

    with pytest.raises((models.ClerkErrors, models.SDKError)) as raised:
        _python_call(sdk, endpoint, signed_in, unknown=False)

    error: Any = raised.value
    assert error.raw_response.status_code == status
    assert error.raw_response.headers["content-type"] == "application/json"
    if status == 429:
        assert error.raw_response.headers["retry-after"] == "9"
    _python_call(sdk, endpoint, signed_in, unknown=False)  # the next call is served again


def test_sdk_sees_an_invalid_expires_in_seconds(sdk: Any, signed_in: str) -> None:
    with pytest.raises((models.ClerkErrors, models.SDKError)) as raised:
        sdk.sessions.create_token_from_template(
            session_id=signed_in, template_name="tinybird", expires_in_seconds=-1
        )

    assert _status_and_codes(raised) == (422, ["form_param_value_invalid"])


# -- @clerk/backend's createClerkClient against FakeClerk ---------------------------------------


@dataclass
class JSRun:
    fake: FakeClerk
    sid: str
    nonce: str
    results: dict[str, Any]

    def ok(self, name: str) -> Any:
        result = self.results[name]
        assert result["ok"], result
        return result["value"]

    def error(self, name: str) -> dict[str, Any]:
        result = self.results[name]
        assert not result["ok"], result
        error: dict[str, Any] = result["error"]
        assert error["name"] == "ClerkAPIResponseError"
        return error


def _steps(fake: FakeClerk, sid: str, nonce: str, template_id: str) -> list[dict[str, Any]]:
    good, bad = fake.secret_key, "sk_test_" + "w" * 40
    steps: list[tuple[str, str, str, list[Any]]] = [
        # faults first: FakeClerk serves them to the next calls of their endpoint, in order
        ("template-429", good, "getToken", [sid, "tinybird"]),
        ("template-500", good, "getToken", [sid, "tinybird"]),
        ("session-502", good, "getSession", [sid]),
        ("user-429-odd-retry-after", good, "getUser", ["user_1"]),
        ("session", good, "getSession", [sid]),
        ("session-404", good, "getSession", ["sess_nope"]),
        ("session-401", bad, "getSession", [sid]),
        ("user", good, "getUser", ["user_1"]),
        ("user-404", good, "getUser", ["user_nope"]),
        (
            "org-by-id",
            good,
            "getOrganization",
            [{"organizationId": "org_acme", "includeMembersCount": True}],
        ),
        ("org-by-slug", good, "getOrganization", [{"slug": "acme"}]),
        ("org-404", good, "getOrganization", [{"organizationId": "org_nope"}]),
        ("token", good, "getToken", [sid]),
        ("token-404", good, "getToken", ["sess_nope"]),
        ("template", good, "getToken", [sid, "tinybird"]),
        ("template-expires", good, "getToken", [sid, "tinybird", 120]),
        ("template-422", good, "getToken", [sid, "tinybird", -1]),
        ("template-404", good, "getToken", [sid, "nope"]),
        ("template-401", bad, "getToken", [sid, "tinybird"]),
        ("templates-page", good, "listJwtTemplates", [{"limit": 1}]),
        ("templates-all", good, "listJwtTemplates", [{}]),
        ("template-get", good, "getJwtTemplate", [template_id]),
        ("template-get-404", good, "getJwtTemplate", ["jtmp_nope"]),
        ("handshake-payload", good, "getHandshakePayload", [{"nonce": nonce}]),
        ("handshake-payload-again", good, "getHandshakePayload", [{"nonce": nonce}]),
        ("handshake-payload-401", bad, "getHandshakePayload", [{"nonce": "x"}]),
        ("jwks", good, "getJwks", []),
        ("jwks-401", bad, "getJwks", []),
    ]
    return [{"name": n, "secretKey": k, "call": c, "args": a} for n, k, c, a in steps]


@pytest.fixture(scope="module")
def js_run() -> Iterator[JSRun]:
    fake = FakeClerk()
    fake.add_tinybird_template("p.admin-token-" + "a" * 40, "ws_compat")
    fake.add_template("second", {"aud": "x"}, "k" * 32, lifetime=30)
    fake.add_user("user_1", first_name="Ada")
    with fake.serve() as url:
        sid = _sid(fake.session_token("user_1", org=ACME))
        client_id = fake.sign_in("user_1", org=ACME)
        hop = httpx.get(
            f"{url}/v1/client/handshake",
            params={"redirect_url": "http://app.test/page", "format": "nonce"},
            cookies={"__client": client_id},
        )
        nonce = parse_qs(urlsplit(hop.headers["location"]).query)["__clerk_handshake_nonce"][0]
        fake.inject("template", status=429, retry_after=17, times=1)
        fake.inject("template", status=500, times=1)
        fake.inject("session", status=502, times=1)
        fake.inject("user", status=429, retry_after="30abc", times=1)
        template_id = next(
            t["id"]
            for t in httpx.get(
                f"{url}/v1/jwt_templates", headers={"Authorization": f"Bearer {fake.secret_key}"}
            ).json()
            if t["name"] == "second"
        )
        answer = node_judge(
            "bapi.mjs", {"apiUrl": url, "steps": _steps(fake, sid, nonce, template_id)}
        )
        yield JSRun(fake, sid, nonce, answer["results"])


def test_js_sdk_reads_a_session(js_run: JSRun) -> None:
    session = js_run.ok("session")
    assert session["__class"] == "Session"
    assert (session["id"], session["userId"], session["status"]) == (js_run.sid, "user_1", "active")
    assert session["lastActiveOrganizationId"] == "org_acme"
    assert session["clientId"].startswith("client_")
    assert session["actor"] is None


def test_js_sdk_reads_a_user(js_run: JSRun) -> None:
    user = js_run.ok("user")
    assert user["__class"] == "User"
    assert (user["id"], user["firstName"]) == ("user_1", "Ada")
    email = user["emailAddresses"][0]
    assert email["__class"] == "EmailAddress"
    assert (email["emailAddress"], email["linkedTo"]) == ("user_1@example.test", [])
    assert email["verification"]["status"] == "verified"
    assert user["phoneNumbers"][0]["phoneNumber"] == "+15555550100"
    assert user["primaryEmailAddressId"] == email["id"]
    assert user["publicMetadata"] == {}


def test_js_sdk_reads_an_organization(js_run: JSRun) -> None:
    by_id, by_slug = js_run.ok("org-by-id"), js_run.ok("org-by-slug")
    assert by_id["__class"] == "Organization"
    assert (by_id["id"], by_id["slug"], by_id["membersCount"]) == ("org_acme", "acme", 1)
    assert by_slug["id"] == "org_acme"
    assert by_slug.get("membersCount") is None


def test_js_sdk_gets_tokens(js_run: JSRun) -> None:
    fake = js_run.fake
    session = js_run.ok("token")
    assert session["__class"] == "Token"
    claims = pyjwt.decode(session["jwt"], fake.public_key_pem, algorithms=["RS256"])
    assert (claims["sid"], claims["exp"] - claims["iat"]) == (js_run.sid, 60)
    template = pyjwt.decode(js_run.ok("template")["jwt"], options={"verify_signature": False})
    assert template["scopes"][0]["fixed_params"] == {"org": "acme", "user": "user_1"}
    expires = pyjwt.decode(
        js_run.ok("template-expires")["jwt"], options={"verify_signature": False}
    )
    assert expires["exp"] - expires["iat"] == 120


def test_js_sdk_reads_jwt_templates(js_run: JSRun) -> None:
    page = js_run.ok("templates-page")
    assert page["totalCount"] == 2
    assert [t["name"] for t in page["data"]] == ["tinybird"]
    every = js_run.ok("templates-all")
    assert [t["name"] for t in every["data"]] == ["tinybird", "second"]
    second = js_run.ok("template-get")
    assert second["__class"] == "JwtTemplate"
    assert (second["name"], second["lifetime"], second["allowedClockSkew"]) == ("second", 30, 5)
    assert (second["signingAlgorithm"], second["customSigningKey"]) == ("HS256", True)
    assert second["claims"] == {"aud": "x"}


def test_js_sdk_resolves_a_handshake_nonce_once(js_run: JSRun) -> None:
    directives = js_run.ok("handshake-payload")["directives"]
    names = [d.split("=", 1)[0] for d in directives]
    assert names == ["__session", "__client_uat", "__clerk_db_jwt"]
    assert all("Path=/" in d and "SameSite=Lax" in d for d in directives)
    assert js_run.error("handshake-payload-again")["status"] == 404


def test_js_sdk_reads_the_jwks(js_run: JSRun) -> None:
    assert js_run.ok("jwks")["keys"][0]["kid"] == js_run.fake.kid


@pytest.mark.parametrize(
    ("step", "status", "code", "message"),
    [
        ("session-401", 401, "clerk_key_invalid", "Unauthorized"),
        ("template-401", 401, "clerk_key_invalid", "Unauthorized"),
        ("handshake-payload-401", 401, "clerk_key_invalid", "Unauthorized"),
        ("jwks-401", 401, "clerk_key_invalid", "Unauthorized"),
        ("session-404", 404, "resource_not_found", "Not Found"),
        ("user-404", 404, "resource_not_found", "Not Found"),
        ("org-404", 404, "resource_not_found", "Not Found"),
        ("token-404", 404, "resource_not_found", "Not Found"),
        ("template-404", 404, "resource_not_found", "Not Found"),
        ("template-get-404", 404, "resource_not_found", "Not Found"),
        ("template-422", 422, "form_param_value_invalid", "Unprocessable Entity"),
        ("template-429", 429, "too_many_requests", "Too Many Requests"),
        ("template-500", 500, "internal_clerk_error", "Internal Server Error"),
        ("session-502", 502, "internal_clerk_error", "Bad Gateway"),
    ],
)
def test_js_sdk_parses_fake_clerk_errors(
    js_run: JSRun, step: str, status: int, code: str, message: str
) -> None:
    error = js_run.error(step)
    assert (error["status"], error["message"]) == (status, message)
    assert [e["code"] for e in error["errors"]] == [code]
    assert error["errors"][0]["longMessage"]
    assert len(error["clerkTraceId"]) == 32  # the body's clerk_trace_id
    if step == "template-422":
        assert error["errors"][0]["meta"]["paramName"] == "expires_in_seconds"


def test_js_sdk_reads_retry_after(js_run: JSRun) -> None:
    assert js_run.error("template-429")["retryAfter"] == 17
    assert js_run.error("user-429-odd-retry-after")["retryAfter"] == 30  # parseInt, as Clerk
    assert js_run.error("template-500")["retryAfter"] is None
