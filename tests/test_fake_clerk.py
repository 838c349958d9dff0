"""FakeClerk's own contract, at the wire: content type, error shapes, the loopback instance,
faults per endpoint, the Frontend API's clients and single-use nonces. (The official SDKs'
view of the same endpoints is tests/test_clerk_sdk_compat.py.)"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt as pyjwt
import pytest

from clerk_tinybird_middleware.core.locate import cookie_suffix
from clerk_tinybird_middleware.testing import FakeClerk
from clerk_tinybird_middleware.testing.fake_clerk import ENDPOINTS


def _bapi(fake: FakeClerk, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {fake.secret_key}", **kwargs.pop("headers", {})}
    return httpx.request(method, fake.api_url + path, headers=headers, **kwargs)


def _handshake(fake: FakeClerk, client: str | None, **params: str) -> httpx.Response:
    query = {"redirect_url": "http://app.test/p?x=1", "format": "nonce", **params}
    cookies = {"__client": client} if client else None
    return httpx.get(fake.api_url + "/v1/client/handshake", params=query, cookies=cookies)


def _nonce(response: httpx.Response) -> str:
    assert response.status_code == 307
    return parse_qs(urlsplit(response.headers["location"]).query)["__clerk_handshake_nonce"][0]


def test_publishable_key_and_issuer_follow_the_loopback_host() -> None:
    fake = FakeClerk()
    assert fake.issuer == "https://clerk.fake-app.lcl.dev"
    with fake.serve() as url:
        host = url.removeprefix("http://")
        assert fake.frontend_api == host
        assert fake.publishable_key == "pk_test_" + base64.b64encode(f"{host}$".encode()).decode()
        assert fake.issuer == f"https://{host}"
        token = fake.session_token("user_1")
        assert pyjwt.decode(token, options={"verify_signature": False})["iss"] == fake.issuer
    explicit = FakeClerk(frontend_api="clerk.example.com", live=True)
    with explicit.serve():
        assert explicit.publishable_key.startswith("pk_live_")
        assert explicit.issuer == "https://clerk.example.com"


def test_every_answer_is_exactly_application_json(fake_clerk: FakeClerk) -> None:
    for path in ("/v1/jwks", "/v1/jwt_templates", "/v1/sessions/nope", "/nowhere"):
        answer = _bapi(fake_clerk, "GET", path)
        assert answer.headers["content-type"] == "application/json", path


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jwks"),
        ("GET", "/v1/sessions/s"),
        ("GET", "/v1/users/u"),
        ("GET", "/v1/organizations/o"),
        ("POST", "/v1/sessions/s/tokens"),
        ("POST", "/v1/sessions/s/tokens/tinybird"),
        ("GET", "/v1/jwt_templates"),
        ("GET", "/v1/clients/handshake_payload?nonce=n"),
    ],
)
def test_a_wrong_secret_key_is_clerk_key_invalid(
    fake_clerk: FakeClerk, method: str, path: str
) -> None:
    answer = httpx.request(
        method, fake_clerk.api_url + path, headers={"Authorization": "Bearer sk_test_wrong"}
    )

    assert answer.status_code == 401
    body = answer.json()
    assert [e["code"] for e in body["errors"]] == ["clerk_key_invalid"]
    assert set(body["errors"][0]) == {"message", "long_message", "code", "meta"}
    assert isinstance(body["clerk_trace_id"], str)


def test_unknown_ids_are_resource_not_found(fake_clerk: FakeClerk) -> None:
    for method, path in (
        ("GET", "/v1/sessions/sess_x"),
        ("GET", "/v1/users/user_x"),
        ("GET", "/v1/organizations/org_x"),
        ("POST", "/v1/sessions/sess_x/tokens"),
        ("GET", "/v1/jwt_templates/jtmp_x"),
        ("GET", "/v1/clients/handshake_payload?nonce=x"),
    ):
        answer = _bapi(fake_clerk, method, path)
        assert answer.status_code == 404, path
        assert answer.json()["errors"][0]["code"] == "resource_not_found"


def test_objects_have_clerks_shapes(fake_clerk: FakeClerk) -> None:
    token = fake_clerk.session_token("user_1", org={"id": "org_1", "slug": "acme"})
    sid = pyjwt.decode(token, options={"verify_signature": False})["sid"]

    session = _bapi(fake_clerk, "GET", f"/v1/sessions/{sid}").json()
    user = _bapi(fake_clerk, "GET", "/v1/users/user_1").json()
    org = _bapi(fake_clerk, "GET", "/v1/organizations/acme").json()
    fresh = _bapi(fake_clerk, "POST", f"/v1/sessions/{sid}/tokens").json()

    assert (session["object"], session["user_id"], session["status"]) == (
        "session",
        "user_1",
        "active",
    )
    assert user["object"] == "user"
    for item in (*user["email_addresses"], *user["phone_numbers"]):
        assert item["linked_to"] == []
    assert (org["object"], org["id"], "members_count" in org) == ("organization", "org_1", False)
    assert fresh["object"] == "token"
    claims = pyjwt.decode(fresh["jwt"], fake_clerk.public_key_pem, algorithms=["RS256"])
    assert (claims["sid"], claims["o"]["slg"]) == (sid, "acme")


def test_jwt_templates_list_bare_or_paginated(fake_clerk: FakeClerk) -> None:
    fake_clerk.add_template("b", {}, "k" * 32)
    fake_clerk.add_template("c", {}, "k" * 32)

    bare = _bapi(fake_clerk, "GET", "/v1/jwt_templates").json()
    page = _bapi(fake_clerk, "GET", "/v1/jwt_templates?paginated=true&limit=2&offset=1").json()

    assert [t["name"] for t in bare] == ["tinybird", "b", "c"]
    assert set(bare[0]) == {
        "object",
        "id",
        "name",
        "claims",
        "lifetime",
        "allowed_clock_skew",
        "custom_signing_key",
        "signing_algorithm",
        "created_at",
        "updated_at",
    }
    assert (page["total_count"], [t["name"] for t in page["data"]]) == (3, ["b", "c"])


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e not in ("sign_in", "sign_out")])
def test_faults_apply_per_endpoint(fake_clerk: FakeClerk, endpoint: str) -> None:
    fake_clerk.inject(endpoint, status=429, retry_after=3, times=1)
    paths = {
        "jwks": ("GET", "/v1/jwks"),
        "template": ("POST", "/v1/sessions/s/tokens/t"),
        "token": ("POST", "/v1/sessions/s/tokens"),
        "session": ("GET", "/v1/sessions/s"),
        "user": ("GET", "/v1/users/u"),
        "organization": ("GET", "/v1/organizations/o"),
        "jwt_templates": ("GET", "/v1/jwt_templates"),
        "jwt_template": ("GET", "/v1/jwt_templates/j"),
        "handshake_payload": ("GET", "/v1/clients/handshake_payload"),
        "handshake": ("GET", "/v1/client/handshake"),
    }
    method, path = paths[endpoint]

    first, second = (_bapi(fake_clerk, method, path) for _ in range(2))

    assert (first.status_code, first.headers["retry-after"]) == (429, "3")
    assert first.json()["errors"][0]["code"] == "too_many_requests"
    assert second.status_code != 429
    assert fake_clerk.calls[endpoint] == 2
    assert fake_clerk.log[-2:] == [(endpoint, 429), (endpoint, second.status_code)]


def test_inject_refuses_an_unknown_endpoint(fake_clerk: FakeClerk) -> None:
    with pytest.raises(ValueError, match="endpoint must be one of"):
        fake_clerk.inject("nope", status=500)


def test_handshake_mints_a_fresh_token_behind_a_single_use_nonce(fake_clerk: FakeClerk) -> None:
    client = fake_clerk.sign_in("user_1", org={"id": "org_1", "slug": "acme"})

    hop = _handshake(fake_clerk, client)
    location = urlsplit(hop.headers["location"])
    nonce = _nonce(hop)
    first = _bapi(fake_clerk, "GET", "/v1/clients/handshake_payload", params={"nonce": nonce})
    again = _bapi(fake_clerk, "GET", "/v1/clients/handshake_payload", params={"nonce": nonce})

    assert (location.netloc, location.path, location.query.split("&")[0]) == (
        "app.test",
        "/p",
        "x=1",
    )
    directives = first.json()["directives"]
    session, uat, dev_browser = directives
    jwt = session.split(";")[0].removeprefix("__session=")
    claims = pyjwt.decode(jwt, fake_clerk.public_key_pem, algorithms=["RS256"])
    assert (claims["sub"], claims["azp"], claims["exp"] - claims["iat"]) == (
        "user_1",
        "http://app.test",
        60,
    )
    assert uat.startswith(f"__client_uat={claims['iat']};")
    assert dev_browser.startswith("__clerk_db_jwt=dvb_")
    for directive in directives:
        assert directive.endswith("; Path=/; Max-Age=31536000; SameSite=Lax")
    assert again.status_code == 404
    assert (fake_clerk.calls["handshake"], fake_clerk.calls["handshake_payload"]) == (1, 2)


def test_handshake_without_a_client_signs_out(fake_clerk: FakeClerk) -> None:
    nonce = _nonce(_handshake(fake_clerk, None, __clerk_db_jwt="dvb_mine"))

    directives = _bapi(
        fake_clerk, "GET", "/v1/clients/handshake_payload", params={"nonce": nonce}
    ).json()["directives"]

    assert directives == [
        "__session=; Path=/; Max-Age=0; SameSite=Lax",
        "__client_uat=0; Path=/; Max-Age=31536000; SameSite=Lax",
        "__clerk_db_jwt=dvb_mine; Path=/; Max-Age=31536000; SameSite=Lax",
    ]


def test_handshake_suffixes_cookie_names_on_request(fake_clerk: FakeClerk) -> None:
    client = fake_clerk.sign_in("user_1")
    nonce = _nonce(_handshake(fake_clerk, client, suffixed_cookies="true"))

    directives = _bapi(
        fake_clerk, "GET", "/v1/clients/handshake_payload", params={"nonce": nonce}
    ).json()["directives"]

    suffix = cookie_suffix(fake_clerk.publishable_key)
    names = [d.split("=", 1)[0] for d in directives]
    assert names == [f"__session_{suffix}", f"__client_uat_{suffix}", f"__clerk_db_jwt_{suffix}"]


def test_production_has_no_dev_browser_and_a_legacy_token_format() -> None:
    fake = FakeClerk(live=True)
    with fake.serve():
        client = fake.sign_in("user_1")
        hop = _handshake(fake, client, format="token")

        query = parse_qs(urlsplit(hop.headers["location"]).query)
        claims = pyjwt.decode(
            query["__clerk_handshake"][0], fake.public_key_pem, algorithms=["RS256"]
        )
        assert [d.split("=", 1)[0] for d in claims["handshake"]] == ["__session", "__client_uat"]


def test_handshake_needs_an_absolute_redirect_url(fake_clerk: FakeClerk) -> None:
    answer = _handshake(fake_clerk, None, redirect_url="/relative")

    assert answer.status_code == 422
    assert answer.json()["errors"][0]["meta"] == {"param_name": "redirect_url"}


def test_sign_in_sets_the_client_cookie_and_sign_out_ends_the_session(
    fake_clerk: FakeClerk,
) -> None:
    with httpx.Client(base_url=fake_clerk.api_url) as browser:
        signed = browser.post("/v1/client/sign_in", data={"user_id": "user_1", "org_id": "org_9"})
        assert signed.status_code == 200
        assert "HttpOnly" in signed.headers["set-cookie"]
        sid = signed.json()["last_active_session_id"]
        assert (
            _bapi(fake_clerk, "GET", f"/v1/sessions/{sid}").json()["last_active_organization_id"]
            == "org_9"
        )

        out = browser.post("/v1/client/sign_out", data={"redirect_url": "http://app.test/"})

        assert out.status_code == 303
        assert _bapi(fake_clerk, "GET", f"/v1/sessions/{sid}").status_code == 404
        assert browser.cookies.get("__client") is None
