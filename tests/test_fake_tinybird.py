"""FakeTinybird over real loopback HTTP: Tinybird's token rules, wire formats and CORS."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from clerk_tinybird_middleware.testing.fake_tinybird import FakeTinybird, PipeCall, default_filter

ROWS: list[dict[str, Any]] = [
    {"org": "org_a", "user": "user_1", "views": 3, "ratio": 0.5},
    {"org": "org_a", "user": "user_2", "views": 4, "ratio": 0.25},
    {"org": "org_b", "user": "user_3", "views": 9, "ratio": 1.0},
]
WRONG_KEY = "p.not-the-admin-token-but-long-enough-for-hs256-0123456789"


@pytest.fixture
def fake() -> FakeTinybird:
    tb = FakeTinybird(anonymous_token="anon-static-token-0123456789")
    tb.add_pipe("events", ROWS)
    tb.add_pipe("other", [{"org": "org_a", "n": 1}])
    return tb


@pytest.fixture
def client(fake: FakeTinybird) -> Iterator[httpx.Client]:
    with fake.serve() as url, httpx.Client(base_url=url, timeout=5) as http:
        yield http


def _claims(fake: FakeTinybird, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "workspace_id": fake.workspace_id,
        "name": "tenant_a",
        "exp": int(time.time()) + 600,
        "scopes": [{"type": "PIPES:READ", "resource": "events", "fixed_params": {"org": "org_a"}}],
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- happy path --------------------------------------------------------------------------------


@pytest.mark.token_in_url
@pytest.mark.parametrize("via", ["header", "query"], ids=["bearer-header", "token-param"])
def test_fixed_params_override_the_callers_org(
    fake: FakeTinybird, client: httpx.Client, via: str
) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    params = {"org": "org_b"}
    headers: dict[str, str] = {}
    if via == "header":
        headers = _bearer(token)
    else:
        params["token"] = token
    response = client.get("/v0/pipes/events.json", params=params, headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    body = response.json()
    assert {row["org"] for row in body["data"]} == {"org_a"}
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


def test_callers_other_params_still_apply(fake: FakeTinybird, client: httpx.Client) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    response = client.get(
        "/v0/pipes/events.json", params={"user": "user_2"}, headers=_bearer(token)
    )
    assert [row["user"] for row in response.json()["data"]] == ["user_2"]


def test_null_fixed_param_leaves_the_param_undefined(
    fake: FakeTinybird, client: httpx.Client
) -> None:
    """The `{% if defined(org) %}` trap: a null tenant reads every tenant's rows."""
    token = fake.mint(pipe="events", fixed_params={"org": None})
    response = client.get("/v0/pipes/events.json", params={"org": "org_b"}, headers=_bearer(token))
    assert response.status_code == 200
    assert response.json()["rows"] == len(ROWS)


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


# -- rejections --------------------------------------------------------------------------------


def _expired(fake: FakeTinybird) -> str:
    return fake.mint(pipe="events", fixed_params={"org": "org_a"}, exp=int(time.time()) - 1)


def _not_yet(fake: FakeTinybird) -> str:
    return fake.mint(pipe="events", fixed_params={"org": "org_a"}, nbf=int(time.time()) + 60)


def _wrong_resource(fake: FakeTinybird) -> str:
    return fake.mint(pipe="other", fixed_params={"org": "org_a"})


def _wrong_key(fake: FakeTinybird) -> str:
    return jwt.encode(_claims(fake), WRONG_KEY, algorithm="HS256")


def _hs512(fake: FakeTinybird) -> str:
    return jwt.encode(_claims(fake), fake.admin_token, algorithm="HS512")


def _alg_none(fake: FakeTinybird) -> str:
    return jwt.encode(_claims(fake), "", algorithm="none")


def _other_workspace(fake: FakeTinybird) -> str:
    return jwt.encode(_claims(fake, workspace_id="ws-other"), fake.admin_token, algorithm="HS256")


def _no_exp(fake: FakeTinybird) -> str:
    return jwt.encode(_claims(fake, exp=None), fake.admin_token, algorithm="HS256")


def _no_scopes(fake: FakeTinybird) -> str:
    return jwt.encode(_claims(fake, scopes=None), fake.admin_token, algorithm="HS256")


def _datasource_scope(fake: FakeTinybird) -> str:
    scopes = [{"type": "DATASOURCES:READ", "resource": "events", "filter": "org = 'org_a'"}]
    return jwt.encode(_claims(fake, scopes=scopes), fake.admin_token, algorithm="HS256")


def _tampered(fake: FakeTinybird) -> str:
    header, _, signature = fake.mint(pipe="events", fixed_params={"org": "org_a"}).split(".")
    payload = jwt.utils.base64url_encode(json.dumps(_claims(fake, name="x")).encode()).decode()
    return f"{header}.{payload}.{signature}"


def _garbage(fake: FakeTinybird) -> str:
    return "definitely-not-a-jwt"


REJECTED: list[tuple[str, Callable[[FakeTinybird], str]]] = [
    ("expired-exp-now-minus-1", _expired),
    ("nbf-in-the-future", _not_yet),
    ("scope-for-another-pipe", _wrong_resource),
    ("hs256-wrong-key", _wrong_key),
    ("hs512-admin-key", _hs512),
    ("alg-none", _alg_none),
    ("other-workspace", _other_workspace),
    ("missing-exp", _no_exp),
    ("missing-scopes", _no_scopes),
    ("datasource-scope-only", _datasource_scope),
    ("tampered-payload", _tampered),
    ("not-a-jwt", _garbage),
]


@pytest.mark.parametrize(
    "make_token", [make for _, make in REJECTED], ids=[case_id for case_id, _ in REJECTED]
)
@pytest.mark.token_in_url
@pytest.mark.parametrize("via", ["header", "query"], ids=["bearer-header", "token-param"])
def test_bad_tokens_get_403_without_echoing_the_token(
    fake: FakeTinybird,
    client: httpx.Client,
    make_token: Callable[[FakeTinybird], str],
    via: str,
) -> None:
    token = make_token(fake)
    if via == "header":
        response = client.get("/v0/pipes/events.json", headers=_bearer(token))
    else:
        response = client.get("/v0/pipes/events.json", params={"token": token})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json"
    assert response.headers["access-control-allow-origin"] == "*"
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]
    assert token not in response.text
    assert fake.admin_token not in response.text
    assert fake.calls[-1].status == 403


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwYXNz"}],
    ids=["no-header", "bearer-without-token", "basic-scheme"],
)
def test_missing_token_is_403(client: httpx.Client, headers: dict[str, str]) -> None:
    response = client.get("/v0/pipes/events.json", headers=headers)
    assert response.status_code == 403
    assert "token" in response.json()["error"]


def test_exp_has_zero_leeway(fake: FakeTinybird, client: httpx.Client) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"}, exp=int(time.time()))
    assert client.get("/v0/pipes/events.json", headers=_bearer(token)).status_code == 403


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v0/pipes/missing.json", 404),
        ("/v0/pipes/events.parquet", 400),
        ("/v0/somewhere", 404),
    ],
    ids=["unknown-pipe", "unsupported-format", "unknown-path"],
)
def test_errors_are_json(fake: FakeTinybird, client: httpx.Client, path: str, status: int) -> None:
    response = client.get(path, headers=_bearer(fake.admin_token))
    assert response.status_code == status
    assert list(response.json()) == ["error"]
    assert fake.admin_token not in response.text
    assert response.headers["access-control-allow-origin"] == "*"


def test_post_is_405(fake: FakeTinybird, client: httpx.Client) -> None:
    response = client.post("/v0/pipes/events.json", headers=_bearer(fake.admin_token))
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, OPTIONS"


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
    assert response.status_code == 200
    assert {row["org"] for row in response.json()["data"]} == {"org_a"}
    unfiltered = client.get(f"/v0/pipes/{pipe}.json", params={"token": token})
    assert unfiltered.json()["rows"] == (len(ROWS) if pipe == "events" else 1)
    assert {call.token_kind for call in fake.calls} == {kind}


def test_anonymous_token_is_off_by_default() -> None:
    fake = FakeTinybird()
    fake.add_pipe("events", ROWS)
    assert fake.anonymous_token is None
    with fake.serve() as url, httpx.Client(base_url=url) as http:
        response = http.get("/v0/pipes/events.json", headers=_bearer("anon"))
    assert response.status_code == 403


# -- rate limits -------------------------------------------------------------------------------


def test_rps_limit_per_name(fake: FakeTinybird, client: httpx.Client) -> None:
    limited = fake.mint(pipe="events", fixed_params={"org": "org_a"}, name="tenant_a", rps=2)
    same_bucket = fake.mint(pipe="events", fixed_params={"org": "org_a"}, name="tenant_a", rps=2)
    other = fake.mint(pipe="events", fixed_params={"org": "org_b"}, name="tenant_b", rps=2)
    statuses = [
        client.get("/v0/pipes/events.json", headers=_bearer(limited)).status_code,
        client.get("/v0/pipes/events.json", headers=_bearer(same_bucket)).status_code,
    ]
    third = client.get("/v0/pipes/events.json", headers=_bearer(limited))
    assert statuses == [200, 200]
    assert third.status_code == 429
    assert list(third.json()) == ["error"]
    assert limited not in third.text
    assert third.headers["retry-after"] == "1"
    assert client.get("/v0/pipes/events.json", headers=_bearer(other)).status_code == 200
    assert fake.count("events", status=429) == 1
    time.sleep(1.05)
    assert client.get("/v0/pipes/events.json", headers=_bearer(limited)).status_code == 200


def test_no_limits_claim_means_no_rate_limit(fake: FakeTinybird, client: httpx.Client) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    statuses = {
        client.get("/v0/pipes/events.json", headers=_bearer(token)).status_code for _ in range(10)
    }
    assert statuses == {200}


# -- formats -----------------------------------------------------------------------------------


def _parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _parse_ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize(
    ("fmt", "content_type", "expected"),
    [
        (
            "csv",
            "text/csv",
            [
                {"org": "org_a", "user": "user_1", "views": "3", "ratio": "0.5"},
                {"org": "org_a", "user": "user_2", "views": "4", "ratio": "0.25"},
            ],
        ),
        ("ndjson", "application/x-ndjson", ROWS[:2]),
    ],
    ids=["csv", "ndjson"],
)
def test_other_formats(
    fake: FakeTinybird,
    client: httpx.Client,
    fmt: str,
    content_type: str,
    expected: list[dict[str, Any]],
) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_a"})
    response = client.get(f"/v0/pipes/events.{fmt}", headers=_bearer(token))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    parsed = _parse_csv(response.text) if fmt == "csv" else _parse_ndjson(response.text)
    assert parsed == expected
    if fmt == "csv":
        assert response.text.splitlines()[0] == "org,user,views,ratio"


def test_csv_of_no_rows_still_has_a_header(fake: FakeTinybird, client: httpx.Client) -> None:
    token = fake.mint(pipe="events", fixed_params={"org": "org_nobody"})
    response = client.get("/v0/pipes/events.csv", headers=_bearer(token))
    assert response.text == "org,user,views,ratio\n"


# -- CORS --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v0/pipes/events.json", "/v0/pipes/missing.json"], ids=["pipe", "unknown-pipe"]
)
def test_cors_preflight(client: httpx.Client, path: str) -> None:
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
    assert methods == {"GET", "OPTIONS"}
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type"} <= {h.strip() for h in allowed.split(",")}
    assert int(response.headers["access-control-max-age"]) > 0


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
    assert [row["views"] for row in response.json()["data"]] == [4, 9]
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
    client.get("/v0/pipes/events.json")
    assert [(call.pipe, call.status) for call in fake.calls] == [
        ("events", 200),
        ("missing", 404),
        ("events", 403),
    ]
    assert fake.count() == 3
    assert fake.count("events") == 2
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
