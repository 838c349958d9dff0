"""SPEC §4 through the ASGI middleware, with FakeClerk over loopback HTTP.

One table of (case, settings, request headers, expected reason); ``None`` = signed in.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from clerk_tinybird_middleware.core.locate import cookie_suffix
from clerk_tinybird_middleware.testing import FakeClerk
from support import bearer, client, state_app

ORG = {"id": "org_1", "slug": "acme", "role": "admin", "permissions": ["org:reports:read"]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


def unsigned(fake: FakeClerk, header: dict[str, Any], **claims: Any) -> str:
    """A token with an arbitrary header and no valid signature."""
    payload = json.loads(
        base64.urlsafe_b64decode(fake.session_token("user_1").split(".")[1] + "==")
    )
    payload.update(claims)
    return f"{b64json(header)}.{b64json(payload)}."


def hs256_with_public_pem(fake: FakeClerk) -> str:
    """Algorithm confusion: HS256 keyed with the RSA public key's PEM bytes."""
    valid = fake.session_token("user_1")
    head = b64json({"alg": "HS256", "typ": "JWT", "kid": fake.kid})
    body = valid.split(".")[1]
    mac = hmac.new(fake.public_key_pem.encode(), f"{head}.{body}".encode(), hashlib.sha256)
    return f"{head}.{body}.{b64(mac.digest())}"


def other_key_same_kid(fake: FakeClerk) -> str:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return fake.session_token("user_1", signing_key=other)


@dataclass
class Case:
    id: str
    headers: Callable[[FakeClerk], Mapping[str, str] | Mapping[bytes, bytes]]
    reason: str | None
    settings: dict[str, Any] = field(default_factory=dict)
    pem: bool = True  # verify with CLERK_JWT_KEY (no network) or with JWKS


def tok(fake: FakeClerk, **kw: Any) -> str:
    return fake.session_token("user_1", **kw)


def cookie(value: str) -> dict[str, str]:
    return {"cookie": value}


NOW = time.time


CASES = [
    # -- where the token is -----------------------------------------------------------------
    Case("no-token", lambda f: {}, "session-token-missing"),
    Case("bearer", lambda f: bearer(tok(f)), None),
    Case("bearer-lowercase", lambda f: {"authorization": f"bearer {tok(f)}"}, None),
    Case("bearer-uppercase", lambda f: {"authorization": f"BEARER {tok(f)}"}, None),
    Case("bare-jwt-no-scheme", lambda f: {"authorization": tok(f)}, None),
    Case(
        "other-scheme-falls-back-to-cookie",
        lambda f: {"authorization": "Basic dXNlcjpwYXNz", "cookie": f"__session={tok(f)}"},
        None,
    ),
    Case(
        "other-scheme-only",
        lambda f: {"authorization": "Basic dXNlcjpwYXNz"},
        "session-token-missing",
    ),
    Case("cookie", lambda f: cookie(f"__session={tok(f)}"), None),
    Case(
        "odd-earlier-cookie",
        lambda f: cookie(f'weird; "quoted=1; =x; a=b=c; __session={tok(f)}; other=1'),
        None,
    ),
    Case("quoted-cookie-value", lambda f: cookie(f'__session="{tok(f)}"'), None),
    Case(
        "header-wins-over-cookie",
        lambda f: {"authorization": f"Bearer {tok(f)}", "cookie": "__session=garbage"},
        None,
    ),
    Case(
        "header-garbage-not-rescued-by-cookie",
        lambda f: {"authorization": "Bearer x.y.z", "cookie": f"__session={tok(f)}"},
        "token-invalid",
    ),
    Case("oversized-token", lambda f: bearer(tok(f, pad="x" * 20_000)), "token-invalid"),
    # -- malformed ------------------------------------------------------------------------------
    Case("garbage", lambda f: bearer("not-a-jwt"), "token-invalid"),
    Case("bare-garbage-no-scheme", lambda f: {"authorization": "garbage"}, "session-token-missing"),
    Case("garbage-3-parts", lambda f: bearer("a.b.c"), "token-invalid"),
    Case("bad-base64", lambda f: bearer("e!y.e!y.sig"), "token-invalid"),
    Case(
        "non-json-header", lambda f: bearer(f"{b64(b'nope')}.{b64json({})}.c2ln"), "token-invalid"
    ),
    Case(
        "json-array-header", lambda f: bearer(f"{b64json([1])}.{b64json({})}.c2ln"), "token-invalid"
    ),
    Case("non-ascii", lambda f: {b"authorization": "Bearer éé.éé.éé".encode()}, "token-invalid"),
    Case("two-parts", lambda f: bearer("abc.def"), "token-invalid"),
    # -- header checks --------------------------------------------------------------------------
    Case(
        "alg-none",
        lambda f: bearer(unsigned(f, {"alg": "none", "typ": "JWT", "kid": f.kid})),
        "token-invalid-algorithm",
    ),
    Case(
        "alg-hs256-confusion", lambda f: bearer(hs256_with_public_pem(f)), "token-invalid-algorithm"
    ),
    Case("alg-missing", lambda f: bearer(unsigned(f, {"typ": "JWT"})), "token-invalid-algorithm"),
    Case("typ-not-jwt", lambda f: bearer(tok(f, header={"typ": "JOSE"})), "token-invalid"),
    Case(
        "typ-oauth-access-token",
        lambda f: bearer(tok(f, header={"typ": "at+jwt"})),
        "token-type-mismatch",  # @clerk/backend's isMachineJwt
    ),
    Case("rs384-accepted", lambda f: bearer(tok(f, algorithm="RS384")), None),
    Case("rs512-accepted", lambda f: bearer(tok(f, algorithm="RS512")), None),
    Case(
        "template-category",
        lambda f: bearer(tok(f, header={"cat": "cl_B7d4PD222AAA"})),
        "token-type-mismatch",
    ),
    Case(
        "machine-category",
        lambda f: bearer(tok(f, header={"cat": "cl_B7d4PD333AAA"})),
        "token-type-mismatch",
    ),
    Case("no-category-ok", lambda f: bearer(tok(f, header={"cat": None})), None),
    Case(
        "machine-subject",
        lambda f: bearer(f.session_token("mch_123")),
        "token-type-mismatch",
    ),
    # -- keys and signature -----------------------------------------------------------------------
    Case("jwks-ok", lambda f: bearer(tok(f)), None, pem=False),
    Case(
        "jwks-unknown-kid",
        lambda f: bearer(tok(f, header={"kid": "ins_nope"})),
        "jwk-kid-mismatch",
        pem=False,
    ),
    Case(
        "jwks-no-kid", lambda f: bearer(tok(f, header={"kid": None})), "jwk-kid-mismatch", pem=False
    ),
    Case("pem-ignores-kid", lambda f: bearer(tok(f, header={"kid": "whatever"})), None),
    Case(
        "jwks-bad-secret",
        lambda f: bearer(tok(f)),
        "secret-key-invalid",
        settings={"secret_key": "sk_test_wrong"},
        pem=False,
    ),
    Case("signature-other-key", lambda f: bearer(other_key_same_kid(f)), "token-invalid-signature"),
    Case(
        "signature-other-key-jwks",
        lambda f: bearer(other_key_same_kid(f)),
        "token-invalid-signature",
        pem=False,
    ),
    Case(
        "signature-checked-before-claims",
        lambda f: bearer(
            f.session_token("u", signing_key=rsa.generate_private_key(65537, 2048), exp=1)
        ),
        "token-invalid-signature",
    ),
    Case(
        "tampered-payload",
        lambda f: bearer(
            (lambda t: f"{t.split('.')[0]}.{b64json({'sub': 'user_2'})}.{t.split('.')[2]}")(tok(f))
        ),
        "token-invalid-signature",
    ),
    # -- claims -----------------------------------------------------------------------------------
    Case("sub-missing", lambda f: bearer(tok(f, sub=None)), "token-invalid"),
    Case("sub-not-string", lambda f: bearer(tok(f, sub=42)), "token-invalid"),
    Case("exp-missing", lambda f: bearer(tok(f, exp=None)), "token-invalid"),
    Case("exp-string", lambda f: bearer(tok(f, exp="soon")), "token-invalid"),
    Case("expired", lambda f: bearer(tok(f, exp=int(NOW()) - 60)), "token-expired"),
    Case("expired-within-skew", lambda f: bearer(tok(f, exp=int(NOW()) - 2)), None),
    Case("not-active-yet", lambda f: bearer(tok(f, nbf=int(NOW()) + 60)), "token-not-active-yet"),
    Case("iat-in-future", lambda f: bearer(tok(f, iat=int(NOW()) + 60)), "token-iat-in-the-future"),
    Case(
        "azp-allowed",
        lambda f: bearer(tok(f, azp="https://app.example")),
        None,
        settings={"authorized_parties": ("https://app.example",)},
    ),
    Case(
        "azp-wrong",
        lambda f: bearer(tok(f, azp="https://evil.example")),
        "token-invalid-authorized-parties",
        settings={"authorized_parties": ("https://app.example",)},
    ),
    Case(
        "azp-missing",
        lambda f: bearer(tok(f, azp=None)),
        "token-invalid-authorized-parties",
        settings={"authorized_parties": ("https://app.example",)},
    ),
    Case("azp-not-checked-by-default", lambda f: bearer(tok(f, azp="https://any")), None),
    Case(
        "aud-missing",
        lambda f: bearer(tok(f)),
        "token-invalid-audience",
        settings={"audience": ("api",)},
    ),
    Case(
        "aud-list-intersects",
        lambda f: bearer(tok(f, aud=["web", "api"])),
        None,
        settings={"audience": ("api",)},
    ),
    Case(
        "aud-wrong",
        lambda f: bearer(tok(f, aud="web")),
        "token-invalid-audience",
        settings={"audience": ("api",)},
    ),
    Case(
        "iss-checked",
        lambda f: bearer(tok(f, iss="https://evil.example")),
        "token-invalid-issuer",
        settings={"publishable_key": "from-fake"},
    ),
    Case("iss-ok", lambda f: bearer(tok(f)), None, settings={"publishable_key": "from-fake"}),
    Case("pending", lambda f: bearer(tok(f, sts="pending")), "session-pending"),
    Case("no-sid", lambda f: bearer(tok(f, sid=None)), "token-type-mismatch"),
    # -- __client_uat (cookie only) ---------------------------------------------------------------
    Case("uat-zero-no-cookie", lambda f: cookie("__client_uat=0"), "session-token-and-uat-missing"),
    Case(
        "uat-zero-with-cookie",
        lambda f: cookie(f"__client_uat=0; __session={tok(f)}"),
        "session-token-but-no-client-uat",
    ),
    Case(
        "iat-before-uat",
        lambda f: cookie(f"__client_uat={int(NOW()) + 3}; __session={tok(f)}"),
        "session-token-iat-before-client-uat",
    ),
    Case(
        "uat-without-session",
        lambda f: cookie(f"__client_uat={int(NOW())}"),
        "client-uat-but-no-session-token",
    ),
    Case("uat-ok", lambda f: cookie(f"__client_uat={int(NOW()) - 100}; __session={tok(f)}"), None),
    Case(
        "uat-ignored-for-header-tokens",
        lambda f: {"authorization": f"Bearer {tok(f)}", "cookie": "__client_uat=0"},
        None,
    ),
]


def settings_for(fake: FakeClerk, case: Case) -> dict[str, Any]:
    settings: dict[str, Any] = {"clerk_api_url": fake.api_url}
    if case.pem:
        settings["jwt_key"] = fake.public_key_pem
    else:
        settings["secret_key"] = fake.secret_key
    for name, value in case.settings.items():
        settings[name] = fake.publishable_key if value == "from-fake" else value
    return settings


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_verification_table(fake_clerk: FakeClerk, case: Case) -> None:
    app = state_app(**settings_for(fake_clerk, case))
    async with client(app) as http:
        response = await http.get("/", headers=case.headers(fake_clerk))
    assert response.status_code == 200
    body = response.json()
    assert body["reason"] == case.reason
    assert body["status"] == ("signed-in" if case.reason is None else "signed-out")
    if case.pem:
        assert fake_clerk.calls["jwks"] == 0  # a PEM key never touches the network


SUFFIX_CASES = [
    ("suffixed-preferred", "bad", "good", None),
    ("suffixed-bad-wins", "good", "bad", "token-invalid"),
    ("plain-used-when-no-suffixed", "good", None, None),
]


@pytest.mark.parametrize(
    ("plain", "suffixed", "reason"),
    [c[1:] for c in SUFFIX_CASES],
    ids=[c[0] for c in SUFFIX_CASES],
)
async def test_suffixed_session_cookie(
    fake_clerk: FakeClerk, plain: str, suffixed: str | None, reason: str | None
) -> None:
    values = {"good": fake_clerk.session_token("user_1"), "bad": "x.y.z"}
    suffix = cookie_suffix(fake_clerk.publishable_key)
    parts = [f"__session={values[plain]}"]
    if suffixed is not None:
        parts.append(f"__session_{suffix}={values[suffixed]}")
    app = state_app(jwt_key=fake_clerk.public_key_pem, publishable_key=fake_clerk.publishable_key)
    async with client(app) as http:
        response = await http.get("/", headers={"cookie": "; ".join(parts)})
    assert response.json()["reason"] == reason


def test_cookie_suffix_matches_clerk_vectors() -> None:
    # Test vectors of Clerk's JavaScript SDK (getCookieSuffix).
    assert cookie_suffix("pk_test_Y2xlcmsuY2xlcmsuZGV2JA") == "QvfNY2dr"
    assert (
        cookie_suffix("pk_test_eHh4eHh4LXhhYWFhYS1hYS5jbGVyay5hY2NvdW50cy5sY2xjbGVyay5jb20k")
        == "tZJdb-5s"
    )


ORG_CASES = [
    ("v1", 1, ORG, "org:admin", ["org:reports:read"]),
    ("v2", 2, ORG, "org:admin", ["org:reports:read"]),
    (
        "v2-several-features",
        2,
        {**ORG, "permissions": ["org:reports:read", "org:reports:manage", "org:billing:read"]},
        "org:admin",
        ["org:reports:read", "org:reports:manage", "org:billing:read"],
    ),
    ("v2-prefixed-role", 2, {**ORG, "role": "org:member"}, "org:member", ["org:reports:read"]),
    ("no-org", 2, None, None, []),
]


@pytest.mark.parametrize(
    ("version", "org", "role", "permissions"),
    [c[1:] for c in ORG_CASES],
    ids=[c[0] for c in ORG_CASES],
)
async def test_org_claims_normalized(
    fake_clerk: FakeClerk,
    version: int,
    org: dict[str, Any] | None,
    role: str | None,
    permissions: list[str],
) -> None:
    token = fake_clerk.session_token("user_1", org=org, version=version)
    app = state_app(jwt_key=fake_clerk.public_key_pem)
    async with client(app) as http:
        body = (await http.get("/", headers=bearer(token))).json()
    assert body["org"] == (org["id"] if org else None)
    assert body["org_role"] == role
    assert sorted(body["permissions"]) == sorted(permissions)


async def test_a_known_token_stays_warm_when_other_cookies_change(fake_clerk: FakeClerk) -> None:
    mw_app = state_app(jwt_key=fake_clerk.public_key_pem)
    token = fake_clerk.session_token("user_1")
    async with client(mw_app) as http:
        bodies = [
            (await http.get("/", headers={"cookie": f"seen={i}; __session={token}"})).json()
            for i in range(5)
        ]
    assert {b["status"] for b in bodies} == {"signed-in"}
