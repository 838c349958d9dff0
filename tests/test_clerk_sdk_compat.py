"""FakeClerk speaks Clerk's wire format: the official ``clerk-backend-api`` SDK, pointed at it over
loopback HTTP, fetches the JWKS and template tokens and parses its errors; FakeClerk's session
tokens pass the SDK's own ``authenticate_request`` (networkless, with the PEM key)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

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
