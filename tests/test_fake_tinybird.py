"""FakeTinybird over real loopback HTTP, against what Tinybird's own server tests assert.

The server tests cited below are in Tinybird's analytics server, ``tests/views/
test_api_tokens.py`` (classes ``TestAPIJWTTokens`` and ``TestAPIToken``); where a behaviour is
read from the server code instead (``tinybird/views/base.py``, ``api_pipes.py``,
``api_query.py``), the test says so. Deliberate differences (no token echo, ``name`` required
with a 403, unconvertible scopes read nothing) are tested as such.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from clerk_tinybird_middleware.testing.fake_tinybird import (
    AUTH_DOC,
    LIMITS_DOC,
    FakeTinybird,
    PipeCall,
    default_filter,
)
from flows import FakeClock

ROWS: list[dict[str, Any]] = [
    {"org": "org_a", "user": "user_1", "views": 3, "ratio": 0.5},
    {"org": "org_a", "user": "user_2", "views": 4, "ratio": 0.25},
    {"org": "org_b", "user": "user_3", "views": 9, "ratio": 1.0},
]
ANONYMOUS = "anon-static-token-0123456789abcdef0123456789"
WRONG_KEY = "p.not-the-admin-token-but-long-enough-for-hs256-0123456789"
JSON_TYPE = "application/json; charset=UTF-8"
INVALID = "invalid authentication token"
NO_ACCESS = "The token you have provided doesn't have access to this resource"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def fake(clock: FakeClock) -> FakeTinybird:
    tb = FakeTinybird(anonymous_token=ANONYMOUS, clock=clock.time)
    tb.add_pipe("events", ROWS)
    tb.add_pipe("other", [{"org": "org_a", "n": 1}, {"org": "org_b", "n": 2}])
    return tb


@pytest.fixture
def client(fake: FakeTinybird) -> Iterator[httpx.Client]:
    with fake.serve() as url, httpx.Client(base_url=url, timeout=5) as http:
        yield http


def _claims(fake: FakeTinybird, clock: FakeClock, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "workspace_id": fake.workspace_id,
        "name": "tenant_a",
        "exp": int(clock.time()) + 600,
        "scopes": [{"type": "PIPES:READ", "resource": "events", "fixed_params": {"org": "org_a"}}],
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _sign(fake: FakeTinybird, claims: dict[str, Any], **kw: Any) -> str:
    return jwt.encode(claims, kw.pop("key", fake.admin_token), algorithm=kw.pop("alg", "HS256"))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _rows(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _assert_error(response: httpx.Response, status: int, error: str, doc: str = AUTH_DOC) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON_TYPE
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json() == {"error": error, "documentation": doc}


# -- fixed_params and parameters ---------------------------------------------------------------


@pytest.mark.token_in_url
@pytest.mark.parametrize("via", ["header", "query"], ids=["bearer-header", "token-param"])
def test_fixed_params_override_the_callers_org(
    fake: FakeTinybird, client: httpx.Client, via: str
) -> None:
    """test_filter_parameter_of_jwt_token_applied: GET, explicit same parameter in the URL."""
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    params = {"org": "org_b"}
    headers: dict[str, str] = {}
    if via == "header":
        headers = _bearer(token)
    else:
        params["token"] = token
    response = client.get("/v0/pipes/events.json", params=params, headers=headers)
    assert response.headers["content-type"] == JSON_TYPE
    body = response.json()
    assert {row["org"] for row in _rows(response)} == {"org_a"}
    assert body["rows"] == 2
    assert body["meta"] == [
        {"name": "org", "type": "String"},
        {"name": "user", "type": "String"},
        {"name": "views", "type": "Int64"},
        {"name": "ratio", "type": "Float64"},
    ]
    stats = body["statistics"]
    assert isinstance(stats["elapsed"], float)
    assert stats["rows_read"] == len(ROWS)
    assert stats["bytes_read"] > 0
    assert fake.calls == [
        PipeCall(pipe="events", status=200, params={"org": "org_a"}, token_kind="jwt", name="fake")
    ]


@pytest.mark.parametrize(
    "send",
    [
        pytest.param({"json": {"org": "org_b"}}, id="json-body"),
        pytest.param({"content": json.dumps({"org": "org_b"})}, id="json-body-no-content-type"),
        pytest.param({"data": {"org": "org_b"}}, id="form-body"),
        pytest.param({"params": {"org": "org_b"}}, id="query-string"),
        pytest.param({"content": b""}, id="empty-body"),
    ],
)
def test_post_fixed_params_override_every_body(
    fake: FakeTinybird, client: httpx.Client, send: dict[str, Any]
) -> None:
    """test_filter_parameter_of_jwt_token_applied and
    test_jwt_tokens_with_scope_for_multiple_endpoints_with_fixed_params: POST with a JSON body
    that tries to override the fixed parameter still gets the pinned rows; the server also
    reads form-encoded bodies (tornado's ``request.arguments``)."""
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    response = client.post("/v0/pipes/events.json", headers=_bearer(token), **send)
    assert {row["org"] for row in _rows(response)} == {"org_a"}
    assert fake.calls[-1].method == "POST"
    assert fake.calls[-1].params["org"] == "org_a"


def test_post_body_params_reach_the_pipe(fake: FakeTinybird, client: httpx.Client) -> None:
    """A JSON body overrides the query string; its values keep their JSON types until the
    filter sees them as text (test_jwt_token_with_qps_limit_using_post passes ``{"param": 100}``
    and a fixed ``42``)."""
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    response = client.post(
        "/v0/pipes/events.json",
        params={"user": "user_1"},
        json={"user": "user_2", "views": 4},
        headers=_bearer(token),
    )
    assert [row["user"] for row in _rows(response)] == ["user_2"]
    assert fake.calls[-1].params == {"org": "org_a", "user": "user_2", "views": "4"}


def test_fixed_params_per_pipe_with_several_scopes(
    fake: FakeTinybird, client: httpx.Client, clock: FakeClock
) -> None:
    """test_jwt_tokens_with_scope_for_multiple_endpoints(_with_fixed_params): each pipe gets the
    fixed params of its own scope."""
    scopes = [
        {"type": "PIPES:READ", "resource": "events", "fixed_params": {"org": "org_a"}},
        {"type": "PIPES:READ", "resource": "other", "fixed_params": {"org": "org_b"}},
    ]
    token = _sign(fake, _claims(fake, clock, scopes=scopes))
    for pipe, org in [("events", "org_a"), ("other", "org_b")]:
        response = client.post(
            f"/v0/pipes/{pipe}.json", json={"org": "org_x"}, headers=_bearer(token)
        )
        assert {row["org"] for row in _rows(response)} == {org}


@pytest.mark.parametrize(
    "scope_extra",
    [{"fixed_params": ""}, {}, {"fixed_params": None}, {"fixed_params": {}}],
    ids=["empty-string", "absent", "null", "empty-object"],
)
def test_empty_fixed_params_mean_none(
    fake: FakeTinybird, client: httpx.Client, clock: FakeClock, scope_extra: dict[str, Any]
) -> None:
    """test_generate_jwt_token_without_needing_to_call_tinybird: ``"fixed_params": ""`` and no
    ``fixed_params`` at all both give 200; the caller's parameters then apply."""
    scopes = [{"type": "PIPES:READ", "resource": "events", **scope_extra}]
    token = _sign(fake, _claims(fake, clock, scopes=scopes))
    response = client.get("/v0/pipes/events.json", params={"org": "org_b"}, headers=_bearer(token))
    assert {row["org"] for row in _rows(response)} == {"org_b"}


def test_pipe_by_id_in_the_scope_and_in_the_url(
    fake: FakeTinybird, client: httpx.Client, clock: FakeClock
) -> None:
    """test_jwt_tokens_using_endpoint_id_instead_of_name: a scope naming the pipe's id reads it
    by name; the URL may use the id too."""
    pipe_id = fake.add_pipe("events", ROWS)
    assert pipe_id.startswith("t_")
    assert fake.add_pipe("events", ROWS) == pipe_id  # replacing rows keeps the id
    scopes = [{"type": "PIPES:READ", "resource": pipe_id, "fixed_params": {"org": "org_b"}}]
    token = _sign(fake, _claims(fake, clock, scopes=scopes))
    for path in ("/v0/pipes/events.json", f"/v0/pipes/{pipe_id}.json"):
        assert {row["org"] for row in _rows(client.get(path, headers=_bearer(token)))} == {"org_b"}
    assert [call.pipe for call in fake.calls] == ["events", "events"]


def test_callers_other_and_unknown_params_apply(fake: FakeTinybird, client: httpx.Client) -> None:
    """Clients add ``from=ts-sdk`` / ``cli_version``: the server never rejects unknown
    parameters (they become template variables)."""
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    params = {"user": "user_2", "from": "ts-sdk", "cli_version": "5.0.3"}
    response = client.get("/v0/pipes/events.json", params=params, headers=_bearer(token))
    assert [row["user"] for row in _rows(response)] == ["user_2"]
    assert fake.calls[-1].params == {**params, "org": "org_a"}


def test_first_value_of_a_repeated_parameter(fake: FakeTinybird, client: httpx.Client) -> None:
    """api_pipes.py builds GET variables from ``v[0]`` of each query argument."""
    response = client.get(
        "/v0/pipes/events.json?user=user_3&user=user_1", headers=_bearer(fake.admin_token)
    )
    assert [row["user"] for row in _rows(response)] == ["user_3"]


def test_parameters_named_like_part_of_token_are_dropped(
    fake: FakeTinybird, client: httpx.Client
) -> None:
    """api_pipes.py filters with ``k not in "token"`` (a substring test): ``t``, ``ok``... never
    reach the pipe; the token itself is never recorded."""
    fake.add_pipe("letters", [{"t": "x", "ok": "y", "n": 1}, {"t": "z", "ok": "w", "n": 2}])
    response = client.get(
        "/v0/pipes/letters.json", params={"t": "x", "ok": "y"}, headers=_bearer(fake.admin_token)
    )
    assert len(_rows(response)) == 2
    assert fake.calls[-1].params == {}


def test_null_fixed_param_leaves_the_param_undefined(
    fake: FakeTinybird, client: httpx.Client
) -> None:
    """The `{% if defined(org) %}` trap: a null tenant reads every tenant's rows."""
    token = fake.mint(pipe="events", fixed_params={"org": None})
    response = client.get("/v0/pipes/events.json", params={"org": "org_b"}, headers=_bearer(token))
    assert len(_rows(response)) == len(ROWS)


def test_minted_token_is_a_standard_hs256_jwt(fake: FakeTinybird) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"}, name="n1", rps=5, nbf=1)
    claims = jwt.decode(token, fake.admin_token, algorithms=["HS256"])
    assert claims["workspace_id"] == fake.workspace_id
    assert claims["name"] == "n1"
    assert claims["limits"] == {"rps": 5}
    assert claims["nbf"] == 1
    assert claims["scopes"] == [
        {"type": "PIPES:READ", "resource": "events", "fixed_params": {"org": "org_a"}}
    ]
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


# -- where the token is read -------------------------------------------------------------------


@pytest.mark.token_in_url
def test_query_token_wins_over_the_header_even_when_invalid(
    fake: FakeTinybird, client: httpx.Client
) -> None:
    """base.py ``__get_token_from_params_or_header``: the ``token`` argument first, no fallback."""
    good = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    response = client.get("/v0/pipes/events.json", params={"token": "abc"}, headers=_bearer(good))
    _assert_error(response, 403, f"{INVALID}. Invalid token: Not enough segments")


@pytest.mark.token_in_url
def test_token_argument_last_value_stripped_and_empty_falls_through(
    fake: FakeTinybird, client: httpx.Client
) -> None:
    """tornado's ``get_argument``: the last value, stripped; an empty one means no token."""
    good = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    last = client.get(f"/v0/pipes/events.json?token=abc&token=%20{good}%20")
    assert len(_rows(last)) == 2
    empty = client.get("/v0/pipes/events.json?token=", headers=_bearer(good))
    assert len(_rows(empty)) == 2


def test_token_in_a_form_body(fake: FakeTinybird, client: httpx.Client) -> None:
    """The server's ``get_argument`` also reads form-encoded body fields; the token is not a
    parameter."""
    good = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    response = client.post("/v0/pipes/events.json", data={"token": good, "user": "user_1"})
    assert [row["user"] for row in _rows(response)] == ["user_1"]
    assert fake.calls[-1].params == {"org": "org_a", "user": "user_1"}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer {token} more",
        "bearer {token}",
        "Bearer  {token}",
        "Token {token}",
        "Basic dXNlcjpwYXNz",
    ],
    ids=["no-header", "bearer-alone", "three-parts", "lowercase", "double-space", "other", "basic"],
)
def test_only_the_exact_bearer_scheme(
    fake: FakeTinybird, client: httpx.Client, authorization: str | None
) -> None:
    """base.py: the header is split on one space into exactly ``["Bearer", token]``."""
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    headers = {"Authorization": authorization.format(token=token)} if authorization else {}
    response = client.get("/v0/pipes/events.json", headers=headers)
    _assert_error(response, 403, INVALID)
    assert token not in response.text
    assert fake.calls[-1].token_kind is None


# -- JWT verification --------------------------------------------------------------------------


def _no_alg(fake: FakeTinybird, clock: FakeClock) -> str:
    """Correctly signed with the admin token, but the header has no ``alg``."""
    encode = jwt.utils.base64url_encode
    head = encode(json.dumps({"typ": "JWT"}).encode())
    body = encode(json.dumps(_claims(fake, clock)).encode())
    signing_input = head + b"." + body
    mac = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
    signature = mac.sign(signing_input, mac.prepare_key(fake.admin_token))
    return (signing_input + b"." + encode(signature)).decode()


def _tampered(fake: FakeTinybird, clock: FakeClock) -> str:
    header, _, signature = fake.mint(pipe="events", fixed_params={"org": "org_a"}).split(".")
    payload = jwt.utils.base64url_encode(json.dumps(_claims(fake, clock, name="x")).encode())
    return f"{header}.{payload.decode()}.{signature}"


Maker = Callable[[FakeTinybird, FakeClock], str]
UNEXPECTED = f"{INVALID}. Unexpected error decoding / validating token"

# (id, token maker, the error the server writes — without the token it echoes)
REJECTED: list[tuple[str, Maker, str]] = [
    (
        "expired-exp-now-minus-1",
        lambda f, c: _sign(f, _claims(f, c, exp=int(c.time()) - 1)),
        f"{INVALID}. Invalid token: Signature has expired",
    ),
    (
        "exp-equal-now-zero-leeway",
        lambda f, c: _sign(f, _claims(f, c, exp=int(c.time()))),
        f"{INVALID}. Invalid token: Signature has expired",
    ),
    (
        "nbf-in-the-future",
        lambda f, c: _sign(f, _claims(f, c, nbf=int(c.time()) + 2)),
        f"{UNEXPECTED}: The token is not yet valid (nbf)",
    ),
    (
        "hs256-wrong-key",
        lambda f, c: _sign(f, _claims(f, c), key=WRONG_KEY),
        f"{INVALID}. Invalid token: Signature verification failed",
    ),
    (
        "tampered-payload",
        _tampered,
        f"{INVALID}. Invalid token: Signature verification failed",
    ),
    (
        "hs512-admin-key",
        lambda f, c: _sign(f, _claims(f, c), alg="HS512"),
        f"{UNEXPECTED}: The specified alg value is not allowed",
    ),
    (
        "alg-none",
        lambda f, c: jwt.encode(_claims(f, c), "", algorithm="none"),
        f"{UNEXPECTED}: The specified alg value is not allowed",
    ),
    ("header-without-alg", _no_alg, f"{UNEXPECTED}: Algorithm not specified"),
    (
        "missing-exp",
        lambda f, c: _sign(f, _claims(f, c, exp=None)),
        f'{UNEXPECTED}: Token is missing the "exp" claim',
    ),
    (
        "exp-not-an-integer",
        lambda f, c: _sign(f, _claims(f, c, exp="soon")),
        f"{INVALID}. Invalid token: Expiration Time claim (exp) must be an integer.",
    ),
    (
        "no-workspace-id",
        lambda f, c: _sign(f, _claims(f, c, workspace_id=None)),
        f"{INVALID}. Workspace ID missing in JWT token",
    ),
    (
        "other-workspace",
        lambda f, c: _sign(f, _claims(f, c, workspace_id="ws-other")),
        f"{INVALID}. Workspace with ID ws-other not found",
    ),
    (
        "no-name-claim",  # the server: 503 {"error": null}; the fake: a 403 that says why
        lambda f, c: _sign(f, _claims(f, c, name=None)),
        f'{INVALID}. Token is missing the "name" claim',
    ),
    ("not-a-jwt", lambda f, c: "abc", f"{INVALID}. Invalid token: Not enough segments"),
    (
        "bad-header-segment",
        lambda f, c: "!!!." + _sign(f, _claims(f, c)).split(".", 1)[1],
        f"{INVALID}. Invalid token: Invalid header padding",
    ),
    ("unknown-static-token", lambda f, c: "p.unknown-static-token-0123456789", INVALID),
]


@pytest.mark.parametrize(
    ("make_token", "error"),
    [(make, error) for _, make, error in REJECTED],
    ids=[case_id for case_id, _, _ in REJECTED],
)
@pytest.mark.parametrize("via", ["header", "query"], ids=["bearer-header", "token-param"])
@pytest.mark.token_in_url
def test_bad_tokens_get_the_servers_403_without_the_token(
    fake: FakeTinybird,
    client: httpx.Client,
    clock: FakeClock,
    make_token: Maker,
    error: str,
    via: str,
) -> None:
    """base.py ``_decode_and_authenticate_token`` + the ``authenticated`` decorator: 403
    ``{"error": "invalid authentication token. <reason>", "documentation": ...}``, with PyJWT's
    messages; the server echoes ``b'<token>'`` in the reason, the fake never does."""
    token = make_token(fake, clock)
    if via == "header":
        response = client.get("/v0/pipes/events.json", headers=_bearer(token))
    else:
        response = client.get("/v0/pipes/events.json", params={"token": token})
    _assert_error(response, 403, error)
    for secret in (token, *token.split(".")[1:], fake.admin_token):
        if len(secret) >= 8:
            assert secret not in response.text
    assert fake.calls[-1].status == 403
    assert fake.calls[-1].token_kind is None


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        ({"nbf": 0}, 200),  # nbf == now: valid (no leeway either way)
        ({"exp": 1}, 200),  # exp == now + 1
        ({"iat": 60}, 200),  # test_we_not_validate_iat_claim: a future iat is fine
        ({"aud": "someone-else"}, 200),  # aud is not verified
        ({"exp": -1}, 403),
        ({"nbf": 1}, 403),
    ],
    ids=["nbf-now", "exp-now-plus-1", "iat-future", "aud-ignored", "exp-past", "nbf-future"],
)
def test_time_claims_have_zero_leeway(
    fake: FakeTinybird,
    client: httpx.Client,
    clock: FakeClock,
    extra: dict[str, Any],
    status: int,
) -> None:
    """Times relative to the fake's clock (PyJWT: ``exp <= now`` is expired, ``nbf > now`` is
    not yet valid, leeway 0)."""
    now = int(clock.time())
    clock.now = float(now)
    claims = _claims(fake, clock)
    claims.update({key: now + value if key != "aud" else value for key, value in extra.items()})
    response = client.get("/v0/pipes/events.json", headers=_bearer(_sign(fake, claims)))
    assert response.status_code == status, response.text


def test_expiry_follows_the_clock(
    fake: FakeTinybird, client: httpx.Client, clock: FakeClock
) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"}, lifetime=60)
    assert client.get("/v0/pipes/events.json", headers=_bearer(token)).status_code == 200
    clock.advance(60)
    expired = client.get("/v0/pipes/events.json", headers=_bearer(token))
    _assert_error(expired, 403, f"{INVALID}. Invalid token: Signature has expired")


def test_a_new_admin_token_invalidates_every_jwt(fake: FakeTinybird, clock: FakeClock) -> None:
    """test_jwt_token_unauthorize_after_refreshing_admin_token: the signing key is the
    workspace's admin token; a JWT signed with the new one works."""
    old = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    refreshed = FakeTinybird(
        admin_token=WRONG_KEY, workspace_id=fake.workspace_id, clock=clock.time
    )
    refreshed.add_pipe("events", ROWS)
    with refreshed.serve() as url, httpx.Client(base_url=url) as http:
        denied = http.get("/v0/pipes/events.json", headers=_bearer(old))
        fresh = refreshed.mint(pipe="events", fixed_params={"org": "org_a"})
        accepted = http.get("/v0/pipes/events.json", headers=_bearer(fresh))
    _assert_error(denied, 403, f"{INVALID}. Invalid token: Signature verification failed")
    assert len(_rows(accepted)) == 2


# -- scopes ------------------------------------------------------------------------------------


def test_scope_for_another_pipe_is_403_after_the_404(
    fake: FakeTinybird, client: httpx.Client
) -> None:
    """api_pipes.py: unknown pipe (404) is checked before the token's access (403)."""
    token = fake.mint(pipe="other", fixed_params={"org": "org_a"})
    _assert_error(client.get("/v0/pipes/events.json", headers=_bearer(token)), 403, NO_ACCESS)
    missing = client.get("/v0/pipes/missing.json", headers=_bearer(token))
    doc = (
        "https://docs.tinybird.co/api-reference/pipe-api.html"
        r"#get--v0-pipes-(.+)\.(json|csv|ndjson|parquet|prometheus)"
    )
    _assert_error(missing, 404, "The pipe 'missing' does not exist", doc)
    invalid = client.get("/v0/pipes/not-a-name.json", headers=_bearer(token))
    _assert_error(
        invalid, 400, "Invalid pipe name", "https://docs.tinybird.co/api-reference/pipe-api.html"
    )


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"scopes": []}, id="no-scopes"),
        pytest.param({"scopes": None}, id="scopes-missing"),
        pytest.param({"scopes": [{"type": "PIPES:READ"}]}, id="pipes-read-without-resource"),
        pytest.param(
            {"scopes": [{"type": "DATASOURCES:READ", "resource": "events", "filter": "1"}]},
            id="datasources-read-only",
        ),
        pytest.param(
            {
                "scopes": [
                    {"type": "PIPES:READ", "resource": "events", "fixed_params": {"org": "org_a"}},
                    {"type": "DATASOURCES:READ", "resource": "events_ds", "filter": "1"},
                ]
            },
            id="pipes-read-plus-another-type",
        ),
        pytest.param(
            {"scopes": [{"type": "PIPES:READ", "resource": "events", "fixed_params": "org=a"}]},
            id="fixed-params-not-an-object",
        ),
        pytest.param({"limits": None}, id="limits-null"),
    ],
)
def test_tokens_the_server_cannot_convert_read_nothing(
    fake: FakeTinybird, client: httpx.Client, clock: FakeClock, overrides: dict[str, Any]
) -> None:
    """The safer reading of a server bug: ``generate_jwt_access_from_token`` returns None for
    these, and the server's check (``access_token is not None and ...``) then lets the request
    read the pipe *without* fixed params. test_jwt_tokens_can_only_read_endpoints signs
    ``{"type": "PIPES:READ"}`` with no resource. The fake refuses on pipe endpoints."""
    claims = _claims(fake, clock)
    claims.update(overrides)
    claims = {key: value for key, value in claims.items() if value is not None or key == "limits"}
    response = client.get("/v0/pipes/events.json", headers=_bearer(_sign(fake, claims)))
    _assert_error(response, 403, NO_ACCESS)


@pytest.mark.parametrize(
    ("method", "path", "handler"),
    [
        ("GET", "/v0/pipes", "APIPipeListHandler"),
        ("POST", "/v0/pipes", "APIPipeListHandler"),
        ("GET", "/v0/sql?q=select+1", "APIQueryHandler"),
        ("POST", "/v0/sql", "APIQueryHandler"),
        ("GET", "/v0/pipes/events", "APIPipeHandler"),
        ("GET", "/v0/pipes/events.csvwithnames", "APIPipeHandler"),
        ("GET", "/v0/pipes/events.JSON", "APIPipeHandler"),
        ("GET", "/v0/pipes/openapi.json", "APIPipesOpenAPIHandler"),
    ],
    ids=["pipe-list", "pipe-create", "sql", "sql-post", "pipe", "csvwithnames", "JSON", "openapi"],
)
def test_jwts_only_read_pipe_endpoints(
    fake: FakeTinybird, client: httpx.Client, method: str, path: str, handler: str
) -> None:
    """test_jwt_tokens_can_only_read_endpoints: ``/v0/pipes`` and ``/v0/sql`` refuse JWTs. Any
    extension other than json/csv/ndjson/parquet/prometheus falls to the pipe handler, which
    refuses them too — there is no ``.csvwithnames`` URL format."""
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    response = client.request(method, path, headers=_bearer(token))
    _assert_error(response, 403, f"{INVALID}. Handler {handler} does not support JWT tokens")
    assert token not in response.text


# -- rate limits -------------------------------------------------------------------------------


def _limits(response: httpx.Response) -> tuple[str, ...]:
    names = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after")
    return tuple(response.headers.get(name, "-") for name in names)


def test_rps_limit_is_gcra_with_the_servers_headers(
    fake: FakeTinybird, client: httpx.Client, clock: FakeClock
) -> None:
    """base.py ``_check_jwt_rps_limit`` + ``set_rate_limit_headers``: redis-cell ``CL.THROTTLE``
    with ``max_burst = count = rps``, period 1 s, so ``rps + 1`` requests pass at once; headers
    on every response after the check; Reset and Retry-After are relative seconds, plus one."""
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"}, name="tenant_a", rps=1)
    first = client.get("/v0/pipes/events.json", headers=_bearer(token))
    second = client.get("/v0/pipes/events.json", headers=_bearer(token))
    third = client.get("/v0/pipes/events.json", headers=_bearer(token))
    assert (first.status_code, _limits(first)) == (200, ("2", "1", "2", "-"))
    assert (second.status_code, _limits(second)) == (200, ("2", "0", "3", "-"))
    _assert_error(third, 429, "Too many requests: retry after 2 seconds", LIMITS_DOC)
    assert _limits(third) == ("2", "0", "3", "2")
    assert token not in third.text
    clock.advance(1)
    assert client.get("/v0/pipes/events.json", headers=_bearer(token)).status_code == 200
    assert fake.count("events", status=429) == 1


@pytest.mark.parametrize(("rps", "limited"), [(1, True), (200, False), (None, False), (0, False)])
def test_ten_parallel_requests(
    fake: FakeTinybird, clock: FakeClock, rps: int | None, limited: bool
) -> None:
    """test_jwt_token_with_qps_limit / _with_high_rps_limit / _without_qps_limit /
    _direct_generation: one request, then 10 at once; with rps=1 some get a 429, with rps=200
    (or no limit, or rps <= 0) none do."""
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"}, rps=rps)
    statuses: list[int] = []
    lock = threading.Lock()

    def one(url: str) -> None:
        status = httpx.get(f"{url}/v0/pipes/events.json", headers=_bearer(token)).status_code
        with lock:
            statuses.append(status)

    with fake.serve() as url:
        one(url)
        threads = [threading.Thread(target=one, args=(url,)) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses[0] == 200
    assert (429 in statuses) is limited
    assert set(statuses) <= {200, 429}
    if limited:
        assert statuses.count(200) == 2  # the frozen clock: exactly rps + 1 pass


def test_rps_limit_on_post_keeps_fixed_params(fake: FakeTinybird, client: httpx.Client) -> None:
    """test_jwt_token_with_qps_limit_using_post: POSTs count too; successful ones still get the
    fixed parameter whatever the body says."""
    fake.add_pipe("result", [{"param": 42}, {"param": 100}])
    token = fake.mint(pipe="result", fixed_params={"param": 42}, rps=1)
    statuses = []
    for i in range(4):
        response = client.post(
            "/v0/pipes/result.json", json={"param": 100 + i}, headers=_bearer(token)
        )
        statuses.append(response.status_code)
        if response.status_code == 200:
            assert response.json()["data"] == [{"param": 42}]
    assert statuses == [200, 200, 429, 429]


def test_buckets_are_per_pipe_as_written_and_name(
    fake: FakeTinybird, client: httpx.Client, clock: FakeClock
) -> None:
    """The key is ``jwt_endpoint_qps_limits_{workspace}_{pipe_name_or_id}_{name}``: tokens that
    share a name share a bucket; another name, another pipe, or the same pipe by id do not."""
    pipe_id = fake.add_pipe("events", ROWS)
    scopes = [
        {"type": "PIPES:READ", "resource": "events", "fixed_params": {"org": "org_a"}},
        {"type": "PIPES:READ", "resource": "other", "fixed_params": {"org": "org_a"}},
    ]

    def token(name: str) -> str:
        return _sign(fake, _claims(fake, clock, name=name, scopes=scopes, limits={"rps": 1}))

    a1, a2, b = token("tenant_a"), token("tenant_a"), token("tenant_b")

    def status(path: str, tok: str) -> int:
        return client.get(path, headers=_bearer(tok)).status_code

    assert [status("/v0/pipes/events.json", tok) for tok in (a1, a2, a1)] == [200, 200, 429]
    assert status("/v0/pipes/events.json", b) == 200
    assert status("/v0/pipes/other.json", a1) == 200
    assert status(f"/v0/pipes/{pipe_id}.json", a1) == 200
    fake.reset_calls()  # forgets the buckets too
    assert status("/v0/pipes/events.json", a1) == 200


def test_rate_limit_is_checked_before_the_pipe_and_the_scope(
    fake: FakeTinybird, client: httpx.Client
) -> None:
    """The server's order: authenticated (403) -> JWT rps (429) -> 404 pipe -> 403 scope; the
    rate-limit headers ride on the 404 and 403 too."""
    token = fake.mint(pipe="other", fixed_params={"org": "org_a"}, rps=1)
    missing = [client.get("/v0/pipes/missing.json", headers=_bearer(token)) for _ in range(3)]
    assert [r.status_code for r in missing] == [404, 404, 429]
    assert _limits(missing[0]) == ("2", "1", "2", "-")
    scoped = [client.get("/v0/pipes/events.json", headers=_bearer(token)) for _ in range(3)]
    assert [r.status_code for r in scoped] == [403, 403, 429]
    assert _limits(scoped[1]) == ("2", "0", "3", "-")
    expired = fake.mint(pipe="other", fixed_params={}, rps=1, exp=1)
    assert (
        client.get("/v0/pipes/other.json", headers=_bearer(expired)).headers.get(
            "x-ratelimit-limit"
        )
        is None
    )


# -- formats -----------------------------------------------------------------------------------


def test_csv_has_a_quoted_header_row(fake: FakeTinybird, client: httpx.Client) -> None:
    """api_pipes.py maps ``.csv`` to ClickHouse's ``CSVWithNames``: a header row, strings
    quoted, numbers bare."""
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    response = client.get("/v0/pipes/events.csv", headers=_bearer(token))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=UTF-8; header=present"
    assert response.text == (
        '"org","user","views","ratio"\n"org_a","user_1",3,0.5\n"org_a","user_2",4,0.25\n'
    )


def test_csv_cells_like_clickhouse(fake: FakeTinybird, client: httpx.Client) -> None:
    fake.add_pipe("cells", [{"s": 'say "hi"', "b": True, "n": None, "a": ["x", "y'z"]}])
    response = client.get("/v0/pipes/cells.csv", headers=_bearer(fake.admin_token))
    assert response.text == '"s","b","n","a"\n"say ""hi""",true,\\N,"[\'x\',\'y\\\'z\']"\n'


def test_csv_of_no_rows_still_has_a_header(fake: FakeTinybird, client: httpx.Client) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_nobody"})
    response = client.get("/v0/pipes/events.csv", headers=_bearer(token))
    assert response.text == '"org","user","views","ratio"\n'


def test_ndjson_one_object_per_line(fake: FakeTinybird, client: httpx.Client) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    response = client.get("/v0/pipes/events.ndjson", headers=_bearer(token))
    assert response.headers["content-type"] == "application/x-ndjson"
    assert [json.loads(line) for line in response.text.splitlines()] == ROWS[:2]
    assert response.text.endswith("\n")


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/v0/pipes/events.parquet", 400, "FakeTinybird does not render .parquet"),
        ("/v0/pipes/events.prometheus", 400, "FakeTinybird does not render .prometheus"),
        ("/v0/pipes/events.json?q=select+1", 400, "FakeTinybird does not run SQL over pipes"),
        ("/v0/pipes/events.json?q=%25+select", 400, "'q' parameter doesn't support templates"),
        ("/v0/pipes/events.csvwithnames", 404, "Pipe 'events.csvwithnames' not found"),
        ("/v0/somewhere", 404, "HTTP 404: Not Found"),
    ],
    ids=["parquet", "prometheus", "q", "q-template", "csvwithnames", "unknown-path"],
)
def test_what_the_fake_does_not_serve(
    fake: FakeTinybird, client: httpx.Client, path: str, status: int, error: str
) -> None:
    """Routes the server has but the fake does not implement answer with a JSON error that
    says so (after authentication: the server's routes and order)."""
    response = client.get(path, headers=_bearer(fake.admin_token))
    assert response.status_code == status
    assert response.json()["error"].startswith(error)
    assert set(response.json()) == {"error", "documentation"}
    assert fake.admin_token not in response.text


def test_other_methods_are_405(fake: FakeTinybird, client: httpx.Client) -> None:
    response = client.put("/v0/pipes/events.json", headers=_bearer(fake.admin_token))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST, OPTIONS"


# -- the Query API with static tokens ----------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "content_type", "body"),
    [
        ("select 1 FORMAT JSONEachRow", "application/x-ndjson", '{"1":1}\n'),
        (
            "SELECT 1 AS n FORMAT CSVWithNames",
            "text/csv; charset=UTF-8; header=present",
            '"n"\n1\n',
        ),
        ("select 300 as n format CSV", "text/csv; charset=UTF-8; header=absent", "300\n"),
        ("select 1", "text/tab-separated-values; charset=UTF-8", "1\n"),
    ],
    ids=["jsoneachrow", "csvwithnames", "csv-no-header", "no-format-is-tsv"],
)
def test_sql_formats(
    fake: FakeTinybird, client: httpx.Client, query: str, content_type: str, body: str
) -> None:
    """api_query.py takes the format from the query's FORMAT clause (``CSV`` without a header,
    ``CSVWithNames`` with one); no clause is ClickHouse's TabSeparated."""
    response = client.get("/v0/sql", params={"q": query}, headers=_bearer(fake.admin_token))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    assert response.text == body


def test_sql_json_select_literal(fake: FakeTinybird, client: httpx.Client) -> None:
    response = client.get(
        "/v0/sql", params={"q": "SELECT 1 FORMAT JSON"}, headers=_bearer(ANONYMOUS)
    )
    body = response.json()
    assert body["meta"] == [{"name": "1", "type": "UInt8"}]
    assert (body["data"], body["rows"]) == ([{"1": 1}], 1)
    assert set(body["statistics"]) == {"elapsed", "rows_read", "bytes_read"}


@pytest.mark.parametrize(
    "send",
    [
        pytest.param({"content": "select 7 as n FORMAT JSON"}, id="raw-body"),
        pytest.param({"json": {"q": "select 7 as n FORMAT JSON"}}, id="json-body"),
        pytest.param({"data": {"q": "select 7 as n FORMAT JSON"}}, id="form-body"),
    ],
)
def test_sql_post_bodies(fake: FakeTinybird, client: httpx.Client, send: dict[str, Any]) -> None:
    """api_query.py POST: ``q`` from the arguments, a ``{"q": ...}`` JSON body, or the raw body
    (what ``TinyB.query`` sends for long SQL)."""
    response = client.post("/v0/sql", headers=_bearer(fake.admin_token), **send)
    assert response.json()["data"] == [{"n": 7}]


@pytest.mark.parametrize(
    ("method", "kw", "status", "error"),
    [
        ("GET", {}, 400, "missing q parameter. example q=select%201"),
        ("POST", {}, 400, "The request body should contain a query"),
        (
            "GET",
            {"params": {"q": "select 1 FORMAT XML"}},
            403,
            "invalid format, available ones: JSON, CSV, CSVWithNames, TSV, TSVWithNames, "
            "PrettyCompact, JSONEachRow, Parquet, JSONStrings, Prometheus",
        ),
        ("GET", {"params": {"q": "select 1 FORMAT Parquet"}}, 400, "FakeTinybird does not render"),
        ("GET", {"params": {"q": "select * from events"}}, 400, "FakeTinybird's /v0/sql only"),
        ("GET", {"params": {"q": "select " + "1" * 9000}}, 400, "The maximum size for a SQL"),
    ],
    ids=["missing-q", "post-empty", "invalid-format", "parquet", "from-pipe", "too-long"],
)
def test_sql_errors(
    fake: FakeTinybird,
    client: httpx.Client,
    method: str,
    kw: dict[str, Any],
    status: int,
    error: str,
) -> None:
    response = client.request(method, "/v0/sql", headers=_bearer(fake.admin_token), **kw)
    assert response.status_code == status
    assert response.json()["error"].startswith(error)


def test_sql_needs_a_token(client: httpx.Client) -> None:
    _assert_error(client.get("/v0/sql", params={"q": "select 1"}), 403, INVALID)


def test_pipe_list_and_metadata_for_static_tokens(fake: FakeTinybird, client: httpx.Client) -> None:
    pipes = client.get("/v0/pipes", headers=_bearer(fake.admin_token)).json()["pipes"]
    assert [pipe["name"] for pipe in pipes] == ["events", "other"]
    meta = client.get(f"/v0/pipes/{pipes[0]['id']}", headers=_bearer(ANONYMOUS)).json()
    assert meta == {"id": pipes[0]["id"], "name": "events", "type": "endpoint"}


# -- static tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token_attr", "kind"),
    [("anonymous_token", "anonymous"), ("admin_token", "admin")],
    ids=["anonymous", "admin"],
)
@pytest.mark.token_in_url
@pytest.mark.parametrize("pipe", ["events", "other"])
def test_static_tokens_read_any_pipe_with_callers_params(
    fake: FakeTinybird, client: httpx.Client, token_attr: str, kind: str, pipe: str
) -> None:
    token = getattr(fake, token_attr)
    response = client.get(f"/v0/pipes/{pipe}.json", params={"org": "org_a"}, headers=_bearer(token))
    assert {row["org"] for row in _rows(response)} == {"org_a"}
    unfiltered = client.get(f"/v0/pipes/{pipe}.json", params={"token": token})
    assert unfiltered.json()["rows"] == (len(ROWS) if pipe == "events" else 2)
    assert {call.token_kind for call in fake.calls} == {kind}
    assert "x-ratelimit-limit" not in response.headers


def test_anonymous_token_is_off_by_default() -> None:
    fake = FakeTinybird()
    fake.add_pipe("events", ROWS)
    assert fake.anonymous_token is None
    with fake.serve() as url, httpx.Client(base_url=url) as http:
        response = http.get("/v0/pipes/events.json", headers=_bearer("anon"))
    _assert_error(response, 403, f"{INVALID}. Invalid token: Not enough segments")


# -- CORS and default headers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/v0/pipes/events.json", "/v0/pipes/missing.json", "/v0/sql"],
    ids=["pipe", "unknown-pipe", "sql"],
)
def test_cors_preflight(client: httpx.Client, path: str) -> None:
    """base.py ``options``: 204, no authentication, the default headers."""
    response = client.options(
        path,
        headers={
            "Origin": "http://127.0.0.1:5173",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert methods == {"GET", "POST", "PUT", "DELETE", "OPTIONS"}
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type"} <= {h.strip() for h in allowed.split(",")}
    assert response.headers["access-control-max-age"] == "86400"


@pytest.mark.parametrize("authorized", [True, False], ids=["200", "403"])
def test_default_headers_on_every_response(
    fake: FakeTinybird, client: httpx.Client, authorized: bool
) -> None:
    """base.py ``set_default_headers``: rate-limit headers are not exposed to browsers."""
    headers = _bearer(fake.admin_token) if authorized else {}
    response = client.get("/v0/pipes/events.json", headers=headers)
    assert response.headers["x-frame-options"] == "sameorigin"
    assert response.headers["access-control-expose-headers"] == "X-Tb-Warning"
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", response.headers["x-request-id"])


# -- pipes, filters, bookkeeping ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "params", "kept"),
    [
        ({"org": "a", "n": 1}, {}, True),
        ({"org": "a", "n": 1}, {"org": "a"}, True),
        ({"org": "a", "n": 1}, {"org": "b"}, False),
        ({"org": "a", "n": 1}, {"n": "1"}, True),
        ({"org": "a", "n": 1}, {"unrelated": "x"}, True),
        ({"org": "a", "n": 1}, {"org": "a", "n": "2"}, False),
    ],
    ids=["no-params", "match", "mismatch", "int-as-text", "unknown-param", "one-of-two"],
)
def test_default_filter(row: dict[str, Any], params: dict[str, str], kept: bool) -> None:
    assert default_filter(row, params) is kept


def test_custom_filter_sees_effective_params(fake: FakeTinybird, client: httpx.Client) -> None:
    seen: list[dict[str, str]] = []

    def at_least(row: dict[str, Any], params: Any) -> bool:
        seen.append(dict(params))
        return int(row["views"]) >= int(params.get("min_views", 0))

    fake.add_pipe("top", ROWS, filter=at_least)
    token = fake.mint(pipe="top", fixed_params={"min_views": 4})
    response = client.get("/v0/pipes/top.json", params={"min_views": "0"}, headers=_bearer(token))
    assert [row["views"] for row in _rows(response)] == [4, 9]
    assert seen[0] == {"min_views": "4"}


def test_meta_types_and_nullable_columns(fake: FakeTinybird, client: httpx.Client) -> None:
    fake.add_pipe("mixed", [{"a": True, "b": None, "c": [1, 2]}, {"a": False, "b": "x"}])
    body = client.get("/v0/pipes/mixed.json", headers=_bearer(fake.admin_token)).json()
    assert body["meta"] == [
        {"name": "a", "type": "Bool"},
        {"name": "b", "type": "Nullable(String)"},
        {"name": "c", "type": "Nullable(Array(Int64))"},
    ]
    assert body["data"][1] == {"a": False, "b": "x", "c": None}


def test_calls_are_recorded_and_reset(fake: FakeTinybird, client: httpx.Client) -> None:
    client.get("/v0/pipes/events.json", headers=_bearer(fake.admin_token))
    client.get("/v0/pipes/missing.json", headers=_bearer(fake.admin_token))
    client.post("/v0/pipes/events.json")
    client.get("/v0/sql", params={"q": "select 1"}, headers=_bearer(fake.admin_token))
    assert [(call.pipe, call.status, call.method) for call in fake.calls] == [
        ("events", 200, "GET"),
        ("missing", 404, "GET"),
        ("events", 403, "POST"),
    ]
    assert fake.count() == 3
    assert fake.count("events") == 2
    assert fake.count(status=404) == 1
    fake.reset_calls()
    assert fake.calls == []


def test_concurrent_requests_are_all_recorded(fake: FakeTinybird) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_b"})
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(url: str) -> None:
        with httpx.Client(base_url=url, timeout=5) as http:
            for _ in range(5):
                status = http.get("/v0/pipes/events.json", headers=_bearer(token)).status_code
                with lock:
                    statuses.append(status)

    with fake.serve() as url:
        threads = [threading.Thread(target=worker, args=(url,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert statuses == [200] * 40
    assert fake.count("events", status=200) == 40


def test_generated_credentials_and_repr() -> None:
    fake = FakeTinybird()
    other = FakeTinybird()
    assert fake.admin_token.startswith("p.")
    assert len(fake.admin_token) > 32
    assert fake.admin_token != other.admin_token
    assert fake.workspace_id != other.workspace_id
    assert fake.workspace_id.count("-") == 4
    assert fake.admin_token not in repr(fake)
    assert fake.workspace_id in repr(fake)


def test_explicit_credentials_are_kept() -> None:
    fake = FakeTinybird(admin_token="p.admin", workspace_id="ws-1", anonymous_token="anon")
    assert (fake.admin_token, fake.workspace_id, fake.anonymous_token) == (
        "p.admin",
        "ws-1",
        "anon",
    )
    assert "anon" not in repr(fake).replace("FakeTinybird", "")
    assert "p.admin" not in repr(fake)


def test_default_clock_is_the_wall_clock() -> None:
    fake = FakeTinybird()
    fake.add_pipe("events", ROWS)
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"}, lifetime=600)
    assert (
        abs(jwt.decode(token, fake.admin_token, algorithms=["HS256"])["exp"] - time.time() - 600)
        < 5
    )
    with fake.serve() as url:
        assert len(_rows(httpx.get(f"{url}/v0/pipes/events.json", headers=_bearer(token)))) == 2
