"""Tinybird tokens (SPEC §5, §6): sources, cache, failures, headers — over loopback HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import jwt
import pytest

from clerk_tinybird_middleware import (
    ClerkSession,
    ConfigurationError,
    LocalTokenSource,
    MemoryTokenCache,
    Settings,
)
from clerk_tinybird_middleware.core.tokens import Held
from clerk_tinybird_middleware.engine import Engine
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from constants import ADMIN_TOKEN as ADMIN
from flows import FakeClock, Stepper, answer, bearer_request, loopback
from support import bearer, client, jwt_claims, state_app

SCOPES = [
    {
        "type": "PIPES:READ",
        "resource": "analytics_hits",
        "fixed_params": {"org": "{{org.slug}}", "user": "{{user.id}}"},
    }
]


def template_app(fake: FakeClerk, **settings: Any) -> Any:
    return state_app(
        **{
            "jwt_key": fake.public_key_pem,
            "secret_key": fake.secret_key,
            "clerk_api_url": fake.api_url,
            **settings,
        }
    )


def session_for(fake: FakeClerk, user: str, org: str | None) -> str:
    org_claim = {"id": f"org_{org}", "slug": org, "role": "member"} if org else None
    return fake.session_token(user, org=org_claim)


async def test_one_template_call_per_tenant(fake_clerk: FakeClerk) -> None:
    pairs = [(f"user_{i}", f"org{i % 5}") for i in range(10)]
    tokens = {pair: session_for(fake_clerk, *pair) for pair in pairs}
    async with client(template_app(fake_clerk)) as http:
        for round_ in range(20):
            for pair in pairs:
                response = await http.get("/", headers=bearer(tokens[pair]))
                claims = jwt_claims(response.headers["x-tinybird-token"])
                fixed = claims["scopes"][0]["fixed_params"]
                assert fixed == {"org": pair[1], "user": pair[0]}, round_
        assert fake_clerk.calls["template"] == 10
        # The same user switching org gets a new token (a new session token carries the org).
        switched = session_for(fake_clerk, "user_0", "other")
        response = await http.get("/", headers=bearer(switched))
        assert (
            jwt_claims(response.headers["x-tinybird-token"])["scopes"][0]["fixed_params"]["org"]
            == "other"
        )
    assert fake_clerk.calls["template"] == 11


async def test_concurrent_cold_requests_share_one_call(fake_clerk: FakeClerk) -> None:
    fake_clerk.inject("template", delay=0.2)  # slow upstream: every request arrives cold
    token = session_for(fake_clerk, "user_1", "acme")
    async with client(template_app(fake_clerk)) as http:
        responses = await asyncio.gather(*(http.get("/", headers=bearer(token)) for _ in range(50)))
    assert {r.json()["token"] for r in responses} == {True}
    assert len({r.headers["x-tinybird-token"] for r in responses}) == 1
    assert fake_clerk.calls["template"] == 1


def test_refresh_ahead_serves_the_held_token_while_one_refresh_runs(
    fake_clerk: FakeClerk, fake_tinybird: FakeTinybird
) -> None:
    fake_clerk.add_tinybird_template(
        fake_tinybird.admin_token, fake_tinybird.workspace_id, lifetime=60
    )
    clock = FakeClock()
    engine = Engine(
        Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url), clock=clock
    )
    stepper = Stepper(clock, http=loopback())
    request = bearer_request(
        fake_clerk.session_token("user_1", org={"id": "org_1", "slug": "acme"}, lifetime=3600)
    )
    first = answer(engine, stepper, request)
    assert first.token is not None
    assert fake_clerk.calls["template"] == 1
    clock.advance(51)  # 9 s left: inside the 10 s refresh margin
    held = [answer(engine, stepper, request) for _ in range(20)]
    assert {r.token for r in held} == {first.token}  # nobody waits: the held token is served
    assert fake_clerk.calls["template"] == 1
    assert stepper.run_spawned() == 1  # twenty requests, one background refresh
    assert fake_clerk.calls["template"] == 2
    renewed = answer(engine, stepper, request)
    assert renewed.token is not None
    assert renewed.token != first.token
    assert fake_clerk.calls["template"] == 2


def test_a_request_waits_only_when_the_held_token_is_nearly_gone(
    fake_clerk: FakeClerk, fake_tinybird: FakeTinybird
) -> None:
    fake_clerk.add_tinybird_template(
        fake_tinybird.admin_token, fake_tinybird.workspace_id, lifetime=60
    )
    clock = FakeClock()
    engine = Engine(
        Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url), clock=clock
    )
    stepper = Stepper(clock, http=loopback())
    request = bearer_request(
        fake_clerk.session_token("user_1", org={"id": "org_1", "slug": "acme"}, lifetime=3600)
    )
    first = answer(engine, stepper, request)
    clock.advance(58.5)  # under 2 s left: not handed out any more, fetched in line
    late = answer(engine, stepper, request)
    assert late.token is not None
    assert late.token != first.token
    assert fake_clerk.calls["template"] == 2
    assert not stepper.spawned


async def test_rate_limited_honours_retry_after(fake_clerk: FakeClerk) -> None:
    fake_clerk.inject("template", status=429, retry_after=1, times=1)
    token = session_for(fake_clerk, "user_1", "acme")
    async with client(template_app(fake_clerk)) as http:
        limited = await http.get("/", headers=bearer(token))
        assert limited.status_code == 200
        assert "x-tinybird-token" not in limited.headers
        assert limited.json()["token_error"] == "clerk-rate-limited"
        waiting = await http.get("/", headers=bearer(token))
        assert waiting.json()["token_error"] == "clerk-rate-limited"
        assert fake_clerk.calls["template"] == 1  # no call before Retry-After passes
        await asyncio.sleep(1.1)
        after = await http.get("/", headers=bearer(token))
    assert after.json()["token"] is True
    assert fake_clerk.calls["template"] == 2


async def test_5xx_retried_at_most_twice(fake_clerk: FakeClerk) -> None:
    fake_clerk.inject("template", status=502)
    async with client(template_app(fake_clerk)) as http:
        response = await http.get("/", headers=bearer(session_for(fake_clerk, "u", "acme")))
    assert response.status_code == 200
    assert response.json()["token_error"] == "clerk-unavailable"
    assert fake_clerk.calls["template"] == 3


async def test_5xx_then_recovery_within_retries(fake_clerk: FakeClerk) -> None:
    fake_clerk.inject("template", status=500, times=2)
    async with client(template_app(fake_clerk)) as http:
        response = await http.get("/", headers=bearer(session_for(fake_clerk, "u", "acme")))
    assert response.json()["token"] is True
    assert fake_clerk.calls["template"] == 3


async def test_hung_upstream_ends_within_budget(fake_clerk: FakeClerk) -> None:
    fake_clerk.inject("template", delay=10)
    async with client(template_app(fake_clerk)) as http:
        started = time.monotonic()
        response = await http.get("/", headers=bearer(session_for(fake_clerk, "u", "acme")))
        elapsed = time.monotonic() - started
    assert response.json()["token_error"] == "clerk-unavailable"
    assert elapsed < 3 + 1  # the 3 s budget, plus slack for a loaded machine


@pytest.mark.parametrize(
    ("template", "end_session", "secret", "code"),
    [
        ("missing", False, None, "clerk-template-not-found"),
        ("tinybird", True, None, "clerk-session-not-found"),
        ("tinybird", False, "sk_test_wrong", "clerk-key-invalid"),
    ],
    ids=["template-not-found", "session-not-found", "key-invalid"],
)
async def test_clerk_errors_map_to_codes(
    fake_clerk: FakeClerk, template: str, end_session: bool, secret: str | None, code: str
) -> None:
    token = session_for(fake_clerk, "u", "acme")
    if end_session:
        fake_clerk.end_session(jwt_claims(token)["sid"])
    settings: dict[str, Any] = {"tinybird_template": template}
    if secret:
        settings["secret_key"] = secret
    async with client(template_app(fake_clerk, **settings)) as http:
        response = await http.get("/", headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["token_error"] == code
    assert "x-tinybird-token" not in response.headers


async def test_template_without_org_is_tenant_missing(fake_clerk: FakeClerk) -> None:
    # Clerk's stock template renders {{org.slug}} as null for a user with no active org.
    async with client(template_app(fake_clerk)) as http:
        response = await http.get("/", headers=bearer(session_for(fake_clerk, "u", None)))
    assert response.json()["token_error"] == "tenant-missing"
    assert "x-tinybird-token" not in response.headers


def local_source(**kw: Any) -> LocalTokenSource:
    return LocalTokenSource("ws_1", ADMIN, kw.pop("scopes", SCOPES), **kw)


async def test_local_minting(fake_clerk: FakeClerk) -> None:
    app = state_app(jwt_key=fake_clerk.public_key_pem, token_source=local_source())
    async with client(app) as http:
        response = await http.get("/", headers=bearer(session_for(fake_clerk, "user_1", "acme")))
    minted = response.headers["x-tinybird-token"]
    claims = jwt.decode(minted, ADMIN, algorithms=["HS256"])
    assert claims["workspace_id"] == "ws_1"
    assert claims["name"] == "org_acme"  # per tenant: one rate-limit bucket each
    assert claims["limits"] == {"rps": 10}
    assert claims["scopes"][0]["fixed_params"] == {"org": "acme", "user": "user_1"}
    assert int(response.headers["x-tinybird-token-expires-at"]) == claims["exp"]
    assert fake_clerk.calls["template"] == 0


async def test_local_minting_refuses_missing_tenant(fake_clerk: FakeClerk) -> None:
    app = state_app(jwt_key=fake_clerk.public_key_pem, token_source=local_source())
    async with client(app) as http:
        response = await http.get("/", headers=bearer(session_for(fake_clerk, "user_1", None)))
    assert response.json()["token_error"] == "tenant-missing"
    assert "x-tinybird-token" not in response.headers


SESSION = ClerkSession("user_1", "sess_1", "org_1", "acme", "org:admin")
NO_ORG = ClerkSession("user_1", "sess_1")


@pytest.mark.parametrize(
    ("value", "session", "expected"),
    [
        ("{{org.slug}}", SESSION, "acme"),
        ("tb_{{org.slug}}", SESSION, "tb_acme"),
        ("{{ org.slug || user.id }}", NO_ORG, "user_1"),
        ("{{org.id||user.id}}", SESSION, "org_1"),
        ("{{session.id}}-{{org.role}}", SESSION, "sess_1-org:admin"),
        ("{{org.slug}}", NO_ORG, None),
        ("tb_{{org.slug}}", NO_ORG, None),
    ],
    ids=["whole", "inside", "fallback", "first-wins", "two", "missing", "missing-inside"],
)
def test_shortcodes(value: str, session: ClerkSession, expected: str | None) -> None:
    fixed = {"org": value, "user": "{{user.id}}"}  # every scope must pin a tenant
    source = local_source(scopes=[{"type": "PIPES:READ", "resource": "p", "fixed_params": fixed}])
    if expected is None:
        with pytest.raises(Exception, match="tenant-missing"):
            source.claims(session)
    else:
        assert source.claims(session)["scopes"][0]["fixed_params"]["org"] == expected


def test_scopes_may_be_a_callable() -> None:
    def scopes(session: ClerkSession) -> list[dict[str, Any]]:
        return [
            {
                "type": "PIPES:READ",
                "resource": f"pipe_{session.org_slug}",
                "fixed_params": {"org": "{{org.id}}"},
            }
        ]

    claims = local_source(scopes=scopes).claims(SESSION)
    assert claims["scopes"] == [
        {"type": "PIPES:READ", "resource": "pipe_acme", "fixed_params": {"org": "org_1"}}
    ]


@pytest.mark.parametrize(
    "scopes",
    [
        [{"type": "PIPES:READ", "resource": "p", "fixed_params": {"org": "{{org.nope}}"}}],
        [{"type": "PIPES:READ", "resource": "p", "fixed_params": {"org": None}}],
        [{"type": "PIPES:READ"}],
        [],
    ],
    ids=["unknown-shortcode", "null-param", "no-resource", "empty"],
)
def test_bad_scopes_fail_at_construction(scopes: list[dict[str, Any]]) -> None:
    with pytest.raises(ConfigurationError):
        local_source(scopes=scopes)


async def test_impersonation_gets_its_own_cache_entry(fake_clerk: FakeClerk) -> None:
    org = {"id": "org_1", "slug": "acme"}
    normal = fake_clerk.session_token("user_1", org=org)
    act_a = fake_clerk.session_token("user_1", org=org, act={"sub": "user_admin"})
    act_b = fake_clerk.session_token("user_1", org=org, act={"sub": "user_admin"})
    async with client(template_app(fake_clerk)) as http:
        for token in (normal, normal, act_a, act_a, act_b):
            await http.get("/", headers=bearer(token))
    assert fake_clerk.calls["template"] == 3


async def test_response_headers(fake_clerk: FakeClerk) -> None:
    async with client(template_app(fake_clerk)) as http:
        response = await http.get("/", headers=bearer(session_for(fake_clerk, "u", "acme")))
    assert response.headers["cache-control"] == "private, no-store"  # the handler said public
    assert response.headers["vary"] == "Cookie, Authorization"
    assert int(response.headers["x-tinybird-token-expires-at"]) > time.time()


async def test_signed_out_gets_no_token_header(fake_clerk: FakeClerk) -> None:
    async with client(template_app(fake_clerk)) as http:
        response = await http.get("/")
    assert "x-tinybird-token" not in response.headers
    assert response.headers["cache-control"] == "public, max-age=60"  # untouched


async def test_anonymous_token_only_for_signed_out(fake_clerk: FakeClerk) -> None:
    fake_clerk.inject("template", status=503)
    app = template_app(fake_clerk, anonymous_token="p.anonymous-read-token")
    async with client(app) as http:
        anonymous = await http.get("/")
        failed = await http.get("/", headers=bearer(session_for(fake_clerk, "u", "acme")))
    assert anonymous.headers["x-tinybird-token"] == "p.anonymous-read-token"
    assert anonymous.json()["anonymous"] is True
    assert anonymous.headers["cache-control"] == "private, no-store"
    assert "x-tinybird-token" not in failed.headers  # never the fallback for a failed tenant
    assert failed.json()["token_error"] == "clerk-unavailable"


async def test_token_header_can_be_disabled(fake_clerk: FakeClerk) -> None:
    async with client(template_app(fake_clerk, token_header="")) as http:
        response = await http.get("/", headers=bearer(session_for(fake_clerk, "u", "acme")))
    assert response.json()["token"] is True
    assert not any(name.startswith("x-tinybird") for name in response.headers)


async def test_not_configured(fake_clerk: FakeClerk, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="clerk_tinybird_middleware"):
        app = state_app(jwt_key=fake_clerk.public_key_pem)
        async with client(app) as http:
            responses = [
                await http.get("/", headers=bearer(session_for(fake_clerk, "u", "acme")))
                for _ in range(3)
            ]
    assert {r.json()["token_error"] for r in responses} == {"tinybird-not-configured"}
    warnings = [r for r in caplog.records if "no Tinybird token source" in r.getMessage()]
    assert len(warnings) == 1


def test_memory_cache_is_bounded_and_keeps_what_is_used() -> None:
    cache = MemoryTokenCache(maxsize=2)
    source = local_source()
    held = [
        Held.of(source.mint(ClerkSession(f"user_{i}", f"sess_{i}", "org_1", "acme")), 10)
        for i in range(3)
    ]
    cache.keep("k0", held[0])
    cache.keep("k1", held[1])
    assert cache.peek("k0") is held[0]  # k0 is in use
    cache.keep("k2", held[2])  # room is needed: the least recently used one goes
    assert cache.peek("k1") is None
    assert not held[1].live
    assert cache.peek("k0") is held[0]
    assert cache.peek("k2") is held[2]
    assert len(cache) == 2


async def test_no_token_in_logs(fake_clerk: FakeClerk, debug_logs: list[logging.LogRecord]) -> None:
    tokens = [session_for(fake_clerk, f"user_{i}", "acme") for i in range(3)]
    seen: list[str] = list(tokens)
    fake_clerk.inject("template", status=500, times=1)
    fake_clerk.inject("template", status=429, retry_after=1, times=1)
    async with client(template_app(fake_clerk)) as http:
        for token in [*tokens, "garbage.token.value"]:
            response = await http.get("/", headers=bearer(token))
            seen.extend(v for k, v in response.headers.items() if k == "x-tinybird-token")
    secrets = [*seen, fake_clerk.secret_key]
    assert debug_logs, "expected some log records to check"
    for record in debug_logs:
        text = record.getMessage() + repr(record.__dict__)
        for secret in secrets:
            assert secret not in text, f"a secret leaked into a log record of {record.name}"


async def test_template_token_for_another_org_is_refused(fake_clerk: FakeClerk) -> None:
    # Right after an org switch the browser may still send the old (valid) session token, but
    # Clerk renders the template from the session's current org: that token must not be cached
    # and handed out as the old org's.
    sid = "sess_switching"
    old = fake_clerk.session_token("user_1", org={"id": "org_a", "slug": "a"}, session_id=sid)
    new = fake_clerk.session_token("user_1", org={"id": "org_b", "slug": "b"}, session_id=sid)
    async with client(template_app(fake_clerk)) as http:
        stale = await http.get("/", headers=bearer(old))
        current = await http.get("/", headers=bearer(new))
    assert stale.json()["token_error"] == "tenant-missing"
    assert "x-tinybird-token" not in stale.headers
    fixed = jwt_claims(current.headers["x-tinybird-token"])["scopes"][0]["fixed_params"]
    assert fixed == {"org": "b", "user": "user_1"}
