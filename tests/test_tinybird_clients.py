"""Tinybird's official clients against FakeTinybird on loopback.

The clients are installed by ``tests/interop/tinybird/setup.sh``: ``@tinybirdco/sdk`` (Node,
``npm ci`` of a committed lockfile) and, in their own venv, ``tinybird-sdk`` (Tinybird's Python
SDK) and the ``tinybird`` CLI's client class ``TinyB`` (its pins clash with ours). Each client
runs once for the module over a batch of cases (``ts_clients.mjs``, ``py_clients.py``), with
tokens from both of the package's sources:

* ``local``: minted by :class:`LocalTokenSource` (the package's local HS256 minting);
* ``clerk``: FakeClerk's ``tinybird`` JWT template (the ``fake_clerk`` fixture's, signed with the
  workspace admin token), fetched over HTTP from ``POST /v1/sessions/{sid}/tokens/tinybird``.

Every token pins ``org=acme, user=user_1``; every query asks for ``org=globex`` and must still
see only acme's user_1 rows. FakeTinybird runs on a frozen clock, so rate-limit buckets never
refill during the run and the 429s come exactly after ``rps + 1`` requests; a second fake of the
same workspace an hour later sees the same tokens expired. With
``CLERK_TINYBIRD_REQUIRE_SERVICES=1`` (CI) a missing tool fails the tests instead of skipping.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from clerk_tinybird_middleware import LocalTokenSource
from clerk_tinybird_middleware.models import ClerkSession
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from clerk_tinybird_middleware.testing.fake_tinybird import AUTH_DOC, LIMITS_DOC
from services import REQUIRE_SERVICES

INTEROP = Path(__file__).parent / "interop" / "tinybird"
VENV_PYTHON = INTEROP / ".venv" / "bin" / "python"
SDK_PACKAGE = INTEROP / "node_modules" / "@tinybirdco" / "sdk" / "package.json"

PIPE = "analytics_hits"  # the resource of FakeClerk's tinybird template
PIPE_PATH = f"/v0/pipes/{PIPE}"
ROWS: list[dict[str, Any]] = [
    {"org": "acme", "user": "user_1", "hits": 3, "day": "2026-01-01"},
    {"org": "acme", "user": "user_1", "hits": 5, "day": "2026-01-02"},
    {"org": "acme", "user": "user_2", "hits": 7, "day": "2026-01-01"},
    {"org": "globex", "user": "user_1", "hits": 100, "day": "2026-01-01"},
    {"org": "globex", "user": "user_9", "hits": 11, "day": "2026-01-02"},
]
TENANT_ROWS = ROWS[:2]  # org=acme, user=user_1: what every token pins
OTHER_TENANT = {"org": "globex", "user": "user_9"}  # what every query asks for instead
SCOPES = [
    {
        "type": "PIPES:READ",
        "resource": PIPE,
        "fixed_params": {"org": "{{org.slug}}", "user": "{{user.id}}"},
    }
]
CLIENTS = ("ts", "sdk", "tinyb")  # @tinybirdco/sdk, tinybird-sdk, tinybird's TinyB
SOURCES = ("local", "clerk")
RPS = {"local": 1, "clerk": 10}  # the burst tokens' limits.rps (FakeClerk's template: 10)
RETRY_AFTER = {1: "2", 10: "1"}  # redis-cell's whole seconds to wait, plus the server's one
EXPIRED = "invalid authentication token. Invalid token: Signature has expired"
BAD_SIGNATURE = "invalid authentication token. Invalid token: Signature verification failed"
NO_JWT_SQL = "invalid authentication token. Handler APIQueryHandler does not support JWT tokens"


class FrozenClock:
    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


@dataclass(frozen=True)
class Tenant:
    """One client's tokens from one source (each its own org id: its own rate-limit buckets)."""

    token: str
    bad: str
    name: str
    burst: str
    burst_name: str
    rps: int


@dataclass
class World:
    tinybird: FakeTinybird
    url: str
    later_url: str
    tenants: dict[tuple[str, str], Tenant]
    results: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)

    def result(self, case_id: str) -> Any:
        result = self.results[case_id]
        assert "unexpected" not in result, result
        return result


# -- the tools ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    missing = []
    path = shutil.which("node")
    if path is None:
        missing.append("node (>= 20)")
    if not SDK_PACKAGE.exists():
        missing.append("@tinybirdco/sdk in tests/interop/tinybird/node_modules")
    if not VENV_PYTHON.exists():
        missing.append("the Python clients' venv tests/interop/tinybird/.venv")
    if missing:
        message = (
            "Tinybird client interop tools are missing: "
            + "; ".join(missing)
            + " (run `bash tests/interop/tinybird/setup.sh`)"
        )
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    assert path is not None
    return path


# -- tokens -------------------------------------------------------------------------------------


def _tamper(token: str) -> str:
    """Change the signature's first character (still canonical base64url, wrong MAC)."""
    head, payload, signature = token.split(".")
    return f"{head}.{payload}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"


def _local(admin: str, workspace: str, org_id: str, rps: int | None = None) -> str:
    source = LocalTokenSource(workspace, admin, SCOPES, limits={"rps": rps} if rps else {"rps": 10})
    session = ClerkSession(
        user_id="user_1",
        session_id=f"sess_{org_id}",
        org_id=org_id,
        org_slug="acme",
        org_role="org:admin",
    )
    return source.mint(session).jwt


def _template(clerk: FakeClerk, http: httpx.Client, org_id: str) -> str:
    session_id = f"sess_{org_id}"
    clerk.session_token(
        "user_1", org={"id": org_id, "slug": "acme", "role": "admin"}, session_id=session_id
    )
    answer = http.post(
        f"{clerk.api_url}/v1/sessions/{session_id}/tokens/tinybird",
        headers={"Authorization": f"Bearer {clerk.secret_key}"},
    )
    assert answer.status_code == 200, answer.text
    jwt: str = answer.json()["jwt"]
    return jwt


def _tenants(tinybird: FakeTinybird, clerk: FakeClerk) -> dict[tuple[str, str], Tenant]:
    tenants = {}
    admin, workspace = tinybird.admin_token, tinybird.workspace_id
    with httpx.Client(timeout=10) as http:
        for client in CLIENTS:
            for source in SOURCES:
                org_id = f"org_{client}_{source}"
                if source == "local":
                    token = _local(admin, workspace, org_id)
                    burst = _local(admin, workspace, org_id + "_burst", RPS["local"])
                    prefix = ""
                else:
                    token = _template(clerk, http, org_id)
                    burst = _template(clerk, http, org_id + "_burst")
                    prefix = "frontend_jwt_"  # the template's name: frontend_jwt_{{org.id}}
                tenants[client, source] = Tenant(
                    token=token,
                    bad=_tamper(token),
                    name=prefix + org_id,
                    burst=burst,
                    burst_name=prefix + org_id + "_burst",
                    rps=RPS[source],
                )
    return tenants


# -- the cases ----------------------------------------------------------------------------------


def _sdk_cases(world: World, client: str, source: str) -> list[dict[str, Any]]:
    """@tinybirdco/sdk and tinybird-sdk: the same API, so the same cases."""
    tenant = world.tenants[client, source]
    prefix = f"{client}-{source}"
    common: dict[str, Any] = {
        "base_url": world.url,
        "token": tenant.token,
        "pipe": PIPE,
        "params": OTHER_TENANT,
    }
    return [
        {**common, "id": f"{prefix}-json", "kind": "query"},
        {**common, "id": f"{prefix}-csv", "kind": "raw", "path": f"{PIPE_PATH}.csv?org=globex"},
        {**common, "id": f"{prefix}-ndjson", "kind": "raw", "path": f"{PIPE_PATH}.ndjson"},
        {**common, "id": f"{prefix}-expired", "kind": "query", "base_url": world.later_url},
        {**common, "id": f"{prefix}-bad", "kind": "query", "token": tenant.bad},
        {**common, "id": f"{prefix}-sql", "kind": "sql", "sql": "SELECT 1 FORMAT JSON"},
        {
            **common,
            "id": f"{prefix}-burst",
            "kind": "burst",
            "each": "query",
            "count": tenant.rps + 2,
            "token": tenant.burst,
            "path": f"{PIPE_PATH}.json",
        },
    ]


def _tinyb_cases(world: World, source: str) -> list[dict[str, Any]]:
    tenant = world.tenants["tinyb", source]
    prefix = f"tinyb-{source}"
    common: dict[str, Any] = {
        "base_url": world.url,
        "token": tenant.token,
        "pipe": PIPE,
        "params": OTHER_TENANT,
    }
    cases = [
        {**common, "id": f"{prefix}-json", "kind": "pipe_data"},
        {**common, "id": f"{prefix}-csv", "kind": "pipe_data", "format": "csv"},
        {**common, "id": f"{prefix}-ndjson", "kind": "pipe_data", "format": "ndjson"},
        {
            **common,
            "id": f"{prefix}-post",
            "kind": "pipe_data",
            "params": {**OTHER_TENANT, "pad": "x" * 5000},  # past TinyB.MAX_GET_LENGTH: a POST
        },
        {**common, "id": f"{prefix}-expired", "kind": "pipe_data", "base_url": world.later_url},
        {**common, "id": f"{prefix}-bad", "kind": "pipe_data", "token": tenant.bad},
        {**common, "id": f"{prefix}-sql", "kind": "tb_sql", "sql": "SELECT 1 FORMAT JSON"},
        {
            **common,
            "id": f"{prefix}-burst",
            "kind": "burst",
            "each": "no_retry",
            "count": tenant.rps + 2,
            "token": tenant.burst,
            "path": f"{PIPE_PATH}.json?org=globex",
        },
    ]
    if source == "clerk":  # Retry-After: 1 (rps 10): one real one-second sleep in urllib3
        cases.append(
            {
                **common,
                "id": f"{prefix}-retry",
                "kind": "retry_once",
                "token": tenant.burst,
                "path": f"{PIPE_PATH}.json",
            }
        )
    return cases


def _admin_cases(world: World) -> list[dict[str, Any]]:
    common = {"base_url": world.url, "token": world.tinybird.admin_token}
    sql = "SELECT 1 AS one FORMAT JSON"
    return [
        {**common, "id": "ts-admin-sql", "kind": "sql", "sql": sql},
        {**common, "id": "sdk-admin-sql", "kind": "sql", "sql": sql},
        {**common, "id": "tinyb-admin-sql", "kind": "tb_sql", "sql": sql},
    ]


def _run_clients(world: World, node: str) -> None:
    cases = [
        *(c for s in SOURCES for c in (*_sdk_cases(world, "ts", s), *_sdk_cases(world, "sdk", s))),
        *(c for s in SOURCES for c in _tinyb_cases(world, s)),
        *_admin_cases(world),
    ]
    secrets = [world.tinybird.admin_token]
    for tenant in world.tenants.values():
        secrets += [tenant.token, tenant.bad, tenant.burst]
    batches = {
        "ts": [c for c in cases if c["id"].startswith("ts-")],
        "py": [c for c in cases if not c["id"].startswith("ts-")],
    }
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NODE_OPTIONS")}
    commands = {"ts": [node, "ts_clients.mjs"], "py": [str(VENV_PYTHON), "py_clients.py"]}
    procs = {
        key: subprocess.Popen(
            command,
            cwd=INTEROP,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for key, command in commands.items()
    }
    for key, proc in procs.items():
        payload = json.dumps({"cases": batches[key], "secrets": secrets}).encode()
        try:
            out, err = proc.communicate(payload, timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        text, errors = out.decode(errors="replace"), err.decode(errors="replace")
        for secret in secrets:
            text, errors = text.replace(secret, "<secret>"), errors.replace(secret, "<secret>")
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(commands[key])} exited {proc.returncode}:\n{errors[-4000:]}")
        report = json.loads(text)
        world.outputs.append(text)
        world.results.update(report["results"])
        world.versions.update(report.get("versions", {}))
        if "version" in report:
            world.versions[report["client"]] = report["version"]


@pytest.fixture(scope="module")
def world(node: str, fake_clerk_signing_key: rsa.RSAPrivateKey) -> Iterator[World]:
    clock = FrozenClock()
    tinybird = FakeTinybird(clock=clock.time)
    later = FakeTinybird(
        admin_token=tinybird.admin_token,
        workspace_id=tinybird.workspace_id,
        clock=lambda: clock.now + 3600,
    )
    for fake in (tinybird, later):
        fake.add_pipe(PIPE, ROWS)
    clerk = FakeClerk(signing_key=fake_clerk_signing_key)
    clerk.add_tinybird_template(tinybird.admin_token, tinybird.workspace_id)  # as fake_clerk
    with ExitStack() as stack:
        url = stack.enter_context(tinybird.serve())
        later_url = stack.enter_context(later.serve())
        stack.enter_context(clerk.serve())
        world = World(tinybird, url, later_url, _tenants(tinybird, clerk))
        clock.now = time.time()  # freeze after minting: tokens valid, buckets never refill
        _run_clients(world, node)
        yield world


# -- the tests ----------------------------------------------------------------------------------

PAIRS = [pytest.param(c, s, id=f"{c}-{s}") for c in CLIENTS for s in SOURCES]


def _value(world: World, case_id: str) -> Any:
    result = world.result(case_id)
    assert result["ok"], result
    return result["value"]


def _error(world: World, case_id: str) -> dict[str, Any]:
    result = world.result(case_id)
    assert not result["ok"], result
    error: dict[str, Any] = result["error"]
    return error


def _parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _as_text(row: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in row.items()}


def test_the_pinned_clients_ran(world: World) -> None:
    assert world.versions == {
        "@tinybirdco/sdk": "0.0.84",
        "tinybird": "5.0.3",
        "tinybird-sdk": "0.4.0",
    }


@pytest.mark.parametrize(("client", "source"), PAIRS)
def test_json_rows_are_only_the_tenants(world: World, client: str, source: str) -> None:
    """The parsed QueryResult (SDKs) / dict (TinyB): meta, data, rows, statistics — and the
    ``org=globex&user=user_9`` the client asked for lost to the token's fixed params."""
    body = _value(world, f"{client}-{source}-json")
    assert body["data"] == TENANT_ROWS
    assert body["rows"] == 2
    assert [column["name"] for column in body["meta"]] == ["org", "user", "hits", "day"]
    assert {"elapsed", "rows_read", "bytes_read"} <= set(body["statistics"])
    tenant = world.tenants[client, source]
    calls = [c for c in world.tinybird.calls if c.name == tenant.name and c.status == 200]
    assert calls
    assert {(c.params["org"], c.params["user"]) for c in calls} == {("acme", "user_1")}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize(
    ("client", "marker"), [("ts", "ts-sdk"), ("sdk", "python-sdk")], ids=["ts", "sdk"]
)
def test_sdks_send_from_and_bearer(world: World, client: str, marker: str, source: str) -> None:
    """Both SDKs add ``from=<sdk>``, which the server (and the fake) take as an unknown
    template variable, never an error."""
    tenant = world.tenants[client, source]
    calls = [c for c in world.tinybird.calls if c.name == tenant.name and c.status == 200]
    assert {c.params.get("from") for c in calls} == {marker}


@pytest.mark.parametrize(("client", "source"), PAIRS)
def test_csv_has_a_header_row_and_only_the_tenants_rows(
    world: World, client: str, source: str
) -> None:
    """TinyB returns CSV as text (its Content-Type check); the SDKs have no CSV call, so their
    raw ``request`` reads it."""
    result = world.result(f"{client}-{source}-csv")
    if client == "tinyb":
        assert (result["ok"], result["type"]) == (True, "str"), result
        text = result["value"]
    else:
        assert result["status"] == 200
        assert result["headers"]["content-type"] == "text/csv; charset=UTF-8; header=present"
        text = result["text"]
    assert text.splitlines()[0] == '"org","user","hits","day"'
    assert _parse_csv(text) == [_as_text(row) for row in TENANT_ROWS]


@pytest.mark.parametrize(("client", "source"), PAIRS)
def test_ndjson_is_one_row_per_line(world: World, client: str, source: str) -> None:
    result = world.result(f"{client}-{source}-ndjson")
    if client == "tinyb":
        assert (result["ok"], result["type"]) == (True, "str"), result
        text = result["value"]
    else:
        assert result["status"] == 200
        assert result["headers"]["content-type"] == "application/x-ndjson"
        text = result["text"]
    assert [json.loads(line) for line in text.splitlines()] == TENANT_ROWS


def _assert_403(world: World, client: str, case_id: str, message: str) -> None:
    error = _error(world, case_id)
    if client == "tinyb":
        assert (error["class"], error["message"]) == ("AuthException", f"Forbidden: {message}")
        return
    status = error["statusCode"] if client == "ts" else error["status_code"]
    assert (status, error["message"]) == (403, message)
    assert error["class"] == "TinybirdError" or (client == "ts" and case_id.endswith("-sql"))
    assert error["response"] == {"error": message, "documentation": AUTH_DOC}
    if case_id.endswith("-sql"):
        return  # the low-level TinybirdApiError has no helper methods
    assert error["isAuthError" if client == "ts" else "is_auth_error"] is True


@pytest.mark.parametrize(("client", "source"), PAIRS)
def test_expired_token_is_403(world: World, client: str, source: str) -> None:
    """The same token, one hour later (a fake of the same workspace on a later clock)."""
    _assert_403(world, client, f"{client}-{source}-expired", EXPIRED)


@pytest.mark.parametrize(("client", "source"), PAIRS)
def test_bad_signature_is_403(world: World, client: str, source: str) -> None:
    _assert_403(world, client, f"{client}-{source}-bad", BAD_SIGNATURE)


@pytest.mark.parametrize(("client", "source"), PAIRS)
def test_the_query_api_refuses_jwts(world: World, client: str, source: str) -> None:
    """``sql()`` / ``TinyB.query`` with the tenant's JWT: the server's 403 for /v0/sql."""
    _assert_403(world, client, f"{client}-{source}-sql", NO_JWT_SQL)


@pytest.mark.parametrize(("client", "source"), PAIRS)
def test_429_after_rps_plus_one_with_retry_after(world: World, client: str, source: str) -> None:
    tenant = world.tenants[client, source]
    burst = world.result(f"{client}-{source}-burst")
    calls, last = burst["calls"], burst["raw"]
    retry = RETRY_AFTER[tenant.rps]
    message = f"Too many requests: retry after {retry} seconds"
    passed = [call for call in calls if call["ok"] and "error" not in call["value"]]
    assert len(passed) == tenant.rps + 1
    assert calls[: tenant.rps + 1] == passed
    assert all(call["value"]["data"] == TENANT_ROWS for call in passed)
    limited = calls[-1]
    if client == "tinyb":  # _req(retries=0) hands back the 429's body as if it were data
        assert limited["value"] == {"error": message, "documentation": LIMITS_DOC}
    else:
        error = limited["error"]
        status = error["statusCode"] if client == "ts" else error["status_code"]
        assert (status, error["message"]) == (429, message)
        assert error["isRateLimitError" if client == "ts" else "is_rate_limit_error"] is True
        assert error["response"] == {"error": message, "documentation": LIMITS_DOC}
    assert last["status"] == 429
    assert last["headers"]["retry-after"] == retry
    assert last["headers"]["x-ratelimit-limit"] == str(tenant.rps + 1)
    assert last["headers"]["x-ratelimit-remaining"] == "0"
    assert int(last["headers"]["x-ratelimit-reset"]) >= 1  # relative seconds, not an epoch
    statuses = [c.status for c in world.tinybird.calls if c.name == tenant.burst_name]
    assert statuses[: tenant.rps + 1] == [200] * (tenant.rps + 1)
    assert set(statuses[tenant.rps + 1 :]) == {429}


def test_tinyb_sleeps_retry_after_then_gives_up(world: World) -> None:
    """TinyB's urllib3 Retry honours Retry-After (relative seconds: 1 here) and, with the
    bucket still empty on the frozen clock, raises after its one retry."""
    error = _error(world, "tinyb-clerk-retry")
    assert error["class"] == "RetryError"
    assert "too many 429 error responses" in error["message"]
    burst_name = world.tenants["tinyb", "clerk"].burst_name
    statuses = [c.status for c in world.tinybird.calls if c.name == burst_name]
    burst = RPS["clerk"] + 2 + 1  # the burst's calls and its raw request
    assert statuses[burst:] == [429, 429]


@pytest.mark.parametrize("source", SOURCES)
def test_tinyb_posts_long_params_as_a_form_and_fixed_params_win(world: World, source: str) -> None:
    """TinyB.pipe_data switches to ``POST`` with a form body past 4096 characters; the token
    stays in ``?token=``; fixed params override the body."""
    assert _value(world, f"tinyb-{source}-post")["data"] == TENANT_ROWS
    tenant = world.tenants["tinyb", source]
    posts = [c for c in world.tinybird.calls if c.name == tenant.name and c.method == "POST"]
    assert [c.status for c in posts] == [200]
    assert (posts[0].params["org"], posts[0].params["user"]) == ("acme", "user_1")
    assert posts[0].params["pad"] == "x" * 5000
    assert "token" not in posts[0].params


@pytest.mark.parametrize("client", CLIENTS)
def test_admin_token_queries_the_sql_api(world: World, client: str) -> None:
    """A static (admin) token may use /v0/sql: the fake answers ``SELECT <n> AS <name>``."""
    body = _value(world, f"{client}-admin-sql")
    assert body["data"] == [{"one": 1}]
    assert body["meta"] == [{"name": "one", "type": "UInt8"}]


def test_no_other_tenants_rows_and_no_token_echoed(world: World) -> None:
    """Across every answer every client parsed: no globex row, and no token in what the fake
    sent back (the clients scrub secrets; a ``<secret>`` in a response body would mean the fake
    echoed one — only TinyB's own exception text quotes its URL)."""
    rows: list[dict[str, Any]] = []

    def collect(result: Any) -> None:
        if isinstance(result, dict):
            if isinstance(result.get("data"), list):
                rows.extend(result["data"])
            for key, value in result.items():
                if key in ("response", "text", "value"):
                    assert "<secret>" not in json.dumps(value), result
                collect(value)
        elif isinstance(result, list):
            for item in result:
                collect(item)

    for case_id, result in world.results.items():
        if not case_id.endswith("-admin-sql"):
            collect(result)
    assert rows
    assert {(row["org"], row["user"]) for row in rows} == {("acme", "user_1")}
