"""Tokens that cannot leak a tenant by mistake, and failures that cost Clerk nothing
(SPEC §11): scope validation, the deep tenant guard, settings validation, failure caching and
the instance-wide 429 pause — with a fake clock, against FakeClerk over loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from clerk_tinybird_middleware import (
    ClerkSession,
    ClerkTinybirdMiddleware,
    ConfigurationError,
    LocalTokenSource,
    Settings,
)
from clerk_tinybird_middleware.core.ops import HttpRequest, HttpResponse
from clerk_tinybird_middleware.engine import Engine
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from constants import ADMIN_TOKEN
from flows import FakeClock, Handler, Stepper, answer, bearer_request, loopback
from leaks import summary

PINNED = {"type": "PIPES:READ", "resource": "hits", "fixed_params": {"org": "{{org.id}}"}}

# -- scope validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "says"),
    [
        ({"type": "PIPES:READ", "resource": "hits"}, "does not pin the tenant"),
        (
            {"type": "PIPE:READ", "resource": "hits", "fixed_params": {"org": "{{org.id}}"}},
            "PIPES:READ",
        ),
        (
            {"type": "pipes:read", "resource": "hits", "fixed_params": {"org": "{{org.id}}"}},
            "'type'",
        ),
        ({"resource": "hits", "fixed_params": {"org": "{{org.id}}"}}, "'type'"),
        (
            {"type": "PIPES:READ", "resource": "hits", "filter": "org = '{{org.id}}'"},
            "'filter' only applies to DATASOURCES:READ",
        ),
        (
            {
                "type": "DATASOURCES:READ",
                "resource": "events",
                "fixed_params": {"org": "{{org.id}}"},
            },
            "'fixed_params' only apply to PIPES:READ",
        ),
        ({"type": "PIPES:READ", "resource": "hits", "fixed_params": {"org": ""}}, "null or empty"),
        (
            {"type": "PIPES:READ", "resource": "hits", "fixed_params": {"org": None}},
            "null or empty",
        ),
        (
            {"type": "PIPES:READ", "resource": "hits", "fixed_params": {"org": [None]}},
            "null or empty",
        ),
        (
            {"type": "PIPES:READ", "resource": "hits", "fixed_params": {"role": "{{org.role}}"}},
            "pin",
        ),
        ({"type": "DATASOURCES:READ", "resource": "events", "filter": "1 = 1"}, "pin the tenant"),
    ],
    ids=[
        "no-fixed-params",
        "singular-type",
        "lower-case-type",
        "missing-type",
        "filter-on-a-pipe",
        "fixed-params-on-a-data-source",
        "literal-empty",
        "literal-null",
        "null-in-a-list",
        "pinned-by-role-only",
        "filter-without-tenant",
    ],
)
def test_scopes_that_would_leak_or_be_refused_fail_at_construction(
    scope: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigurationError, match="TINYBIRD_JWT_SCOPES") as caught:
        LocalTokenSource("ws", ADMIN_TOKEN, [scope])
    assert says in str(caught.value)


@pytest.mark.parametrize(
    "scope",
    [
        PINNED,
        {"type": "PIPES:READ", "resource": "hits", "fixed_params": {"user": "u_{{user.id}}"}},
        {"type": "PIPES:READ", "resource": "hits", "fixed_params": {"t": "{{org.slug||user.id}}"}},
        {"type": "DATASOURCES:READ", "resource": "events", "filter": "org_id = '{{org.id}}'"},
        {"type": "DATASOURCES:APPEND", "resource": "events"},
    ],
    ids=["org-id", "user-inside", "fallback", "filtered-data-source", "append"],
)
def test_pinned_scopes_are_accepted(scope: dict[str, Any]) -> None:
    LocalTokenSource("ws", ADMIN_TOKEN, [scope])


def test_unpinned_scopes_only_when_asked_for_and_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = [{"type": "PIPES:READ", "resource": "public_stats"}]
    with caplog.at_level("WARNING", logger="clerk_tinybird_middleware"):
        LocalTokenSource("ws", ADMIN_TOKEN, shared, allow_unpinned_scopes=True)
    assert any("every tenant's token reads the same rows" in r.getMessage() for r in caplog.records)
    env = Settings.from_env(
        {
            "CLERK_SECRET_KEY": "sk_test_x",
            "TINYBIRD_WORKSPACE_ID": "ws",
            "TINYBIRD_JWT_SECRET": ADMIN_TOKEN,
            "TINYBIRD_JWT_SCOPES": '[{"type": "PIPES:READ", "resource": "public_stats"}]',
        }
    )
    with pytest.raises(ConfigurationError, match="does not pin the tenant"):
        Engine(env)
    Engine(env.replace(tinybird_allow_unpinned_scopes=True))


def test_clerk_tinybird_mint_refuses_the_same_way() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clerk_tinybird_middleware.cli", "mint", "--user", "u1"],
        env={
            "TINYBIRD_WORKSPACE_ID": "ws",
            "TINYBIRD_JWT_SECRET": ADMIN_TOKEN,
            "TINYBIRD_JWT_SCOPES": '[{"type": "PIPES:READ", "resource": "hits"}]',
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "TINYBIRD_JWT_SCOPES" in done.stderr
    assert "does not pin the tenant" in done.stderr
    assert done.stdout == ""


# -- the deep tenant guard ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, "", " ", [None], [""], [], {}, {"a": None}, [[None]], ["{{org.id}}"]],
    ids=["null", "empty", "blank", "[null]", "[empty]", "[]", "{}", "{null}", "[[null]]", "[org]"],
)
def test_the_guard_looks_at_every_depth_of_template_tokens(
    fake_clerk: FakeClerk, fake_tinybird: FakeTinybird, value: Any
) -> None:
    """A template like ``"org_ids": ["{{org.id}}"]`` hands an org-less user ``[null]``."""
    fake_clerk.add_template(
        "tinybird",
        {
            "workspace_id": fake_tinybird.workspace_id,
            "name": "n",
            "scopes": [{"type": "PIPES:READ", "resource": "hits", "fixed_params": {"org": value}}],
        },
        fake_tinybird.admin_token,
    )
    clock = FakeClock()
    engine = Engine(
        Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url), clock=clock
    )
    result = answer(
        engine, Stepper(clock, http=loopback()), bearer_request(fake_clerk.session_token("u"))
    )
    assert result.token is None
    assert result.error == "tenant-missing"


@pytest.mark.parametrize("value", [[None], [""], [], {}, {"org": None}], ids=str)
def test_the_guard_applies_to_callable_scopes(value: Any) -> None:
    source = LocalTokenSource(
        "ws",
        ADMIN_TOKEN,
        lambda s: [{"type": "PIPES:READ", "resource": "h", "fixed_params": {"o": value}}],
    )
    with pytest.raises(Exception, match="tenant-missing"):
        source.mint(ClerkSession("u", "s", "org_1", "acme"))


# -- settings validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CLERK_SECRET_KEY": "pk_test_Y2xlcmsuZXhhbXBsZS5jb20k"}, "CLERK_SECRET_KEY"),
        ({"CLERK_SECRET_KEY": "hello"}, "CLERK_SECRET_KEY"),
        ({"CLERK_AUTHORIZED_PARTIES": "app.example.com"}, "CLERK_AUTHORIZED_PARTIES"),
        ({"CLERK_AUTHORIZED_PARTIES": "https://app.example.com/login"}, "CLERK_AUTHORIZED_PARTIES"),
    ],
    ids=["publishable-as-secret", "not-a-key", "party-without-scheme", "party-with-path"],
)
def test_settings_that_never_work_are_refused(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env(env)


def test_a_refresh_margin_at_the_token_lifetime_is_refused() -> None:
    settings = Settings(
        jwt_key=None,
        secret_key="sk_test_x",
        tinybird_workspace_id="ws",
        tinybird_jwt_secret=ADMIN_TOKEN,
        tinybird_scopes=[PINNED],
        tinybird_token_lifetime=60,
        refresh_margin_seconds=60,
    )
    with pytest.raises(ConfigurationError, match="CLERK_TINYBIRD_REFRESH_MARGIN"):
        Engine(settings)


def test_a_production_key_without_authorized_parties_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level("WARNING", logger="clerk_tinybird_middleware"):
        Engine(Settings(secret_key="sk_live_x"))
    assert any("CLERK_AUTHORIZED_PARTIES" in r.getMessage() for r in caplog.records)


def test_a_construction_error_is_logged_at_error_naming_the_variable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starlette builds middleware lazily; uvicorn's --lifespan auto swallows the exception."""
    with (
        caplog.at_level("ERROR", logger="clerk_tinybird_middleware"),
        pytest.raises(ConfigurationError),
    ):
        ClerkTinybirdMiddleware(lambda *a: None, Settings())  # type: ignore[arg-type]
    assert any(
        "CLERK_SECRET_KEY" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records
    )


# -- what failures cost Clerk -------------------------------------------------------------------


class RateLimitedClerk:
    """FakeClerk behind Clerk's instance-wide limit (100 calls / 10 s, development), on the
    fake clock: over it, a 429 with Retry-After as Clerk sends it."""

    def __init__(self, clock: FakeClock, upstream: Handler, limit: int = 100) -> None:
        self.clock, self.upstream, self.limit = clock, upstream, limit
        self.calls: list[float] = []
        self.limited = 0

    def __call__(self, request: HttpRequest) -> HttpResponse:
        now = self.clock.time()
        recent = [t for t in self.calls if t > now - 10]
        self.calls.append(now)
        if len(recent) >= self.limit:
            self.limited += 1
            return HttpResponse(429, {"retry-after": str(int(recent[0] + 10 - now) + 1)}, b"{}")
        return self.upstream(request)


def _run(
    engine: Engine, stepper: Stepper, clock: FakeClock, plan: list[tuple[float, Any]]
) -> list[Any]:
    results = []
    for at, request in plan:
        clock.now = max(clock.now, at)
        results.append(answer(engine, stepper, request))
    return results


def test_an_org_less_user_hammering_costs_one_call_per_30_s_and_nobody_else_is_limited(
    request: pytest.FixtureRequest, fake_clerk: FakeClerk
) -> None:
    clock = FakeClock()
    start = clock.now
    clerk = RateLimitedClerk(clock, loopback())
    engine = Engine(
        Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url), clock=clock
    )
    stepper = Stepper(clock, http=clerk)
    abuser = bearer_request(fake_clerk.session_token("user_no_org", lifetime=3600))
    tenants = [
        bearer_request(
            fake_clerk.session_token(
                f"user_{n}", org={"id": f"org_{n}", "slug": f"t{n}"}, lifetime=3600
            )
        )
        for n in range(20)
    ]
    plan = [(start + i * 0.06, abuser) for i in range(1000)]  # 1,000 requests over 60 s
    plan += [(start + 1 + n * 2.9, t) for n, t in enumerate(tenants)]
    plan.sort(key=lambda item: item[0])

    results = _run(engine, stepper, clock, plan)

    abusive = [r for (_, req), r in zip(plan, results, strict=True) if req is abuser]
    others = [r for (_, req), r in zip(plan, results, strict=True) if req is not abuser]
    abuser_calls = sum(1 for r in stepper.requests if "sess_" in r.url) - len(tenants)
    assert {r.error for r in abusive} == {"tenant-missing"}
    assert abuser_calls <= 2  # 60 s at one call per 30 s (the first and one after it expires)
    assert [r.error for r in others] == [None] * 20
    assert clerk.limited == 0
    summary(request.config).add(
        "quota: one abusive org-less session",
        f"{len(abusive)} requests over 60 s → {abuser_calls} Clerk calls; 20 other tenants: "
        f"{sum(r.token is not None for r in others)} tokens, "
        f"{sum(r.error == 'clerk-rate-limited' for r in others)} clerk-rate-limited",
    )


def test_session_not_found_belongs_to_that_session_only(fake_clerk: FakeClerk) -> None:
    clock = FakeClock()
    engine = Engine(
        Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url), clock=clock
    )
    stepper = Stepper(clock, http=loopback())
    org = {"id": "org_1", "slug": "acme"}
    ended = fake_clerk.session_token("u", org=org, session_id="sess_ended", lifetime=3600)
    fake_clerk.end_session("sess_ended")
    alive = fake_clerk.session_token("u", org=org, session_id="sess_alive", lifetime=3600)
    for _ in range(5):
        assert answer(engine, stepper, bearer_request(ended)).error == "clerk-session-not-found"
    assert fake_clerk.calls["template"] == 1  # remembered
    clock.advance(31)
    answer(engine, stepper, bearer_request(ended))
    assert fake_clerk.calls["template"] == 2  # the memory lasts 30 s
    assert answer(engine, stepper, bearer_request(alive)).token is not None  # never blocked
    assert fake_clerk.calls["template"] == 3


@pytest.mark.parametrize("status", [404], ids=["template-not-found"])
def test_a_missing_template_is_remembered(fake_clerk: FakeClerk, status: int) -> None:
    clock = FakeClock()
    engine = Engine(
        Settings(
            secret_key=fake_clerk.secret_key,
            clerk_api_url=fake_clerk.api_url,
            tinybird_template="no_such_template",
        ),
        clock=clock,
    )
    stepper = Stepper(clock, http=loopback())
    token = fake_clerk.session_token("u", org={"id": "org_1", "slug": "acme"})
    errors = {answer(engine, stepper, bearer_request(token)).error for _ in range(10)}
    assert errors == {"clerk-template-not-found"}
    assert fake_clerk.calls["template"] == 1


def test_a_429_pauses_every_template_call_of_the_instance(fake_clerk: FakeClerk) -> None:
    clock = FakeClock()
    engine = Engine(
        Settings(secret_key=fake_clerk.secret_key, clerk_api_url=fake_clerk.api_url), clock=clock
    )
    stepper = Stepper(clock, http=loopback())
    fake_clerk.inject("template", status=429, retry_after=7, times=1)

    def tenant(n: int) -> Callable[[], Any]:
        token = fake_clerk.session_token(f"u{n}", org={"id": f"org_{n}", "slug": f"t{n}"})
        return lambda: answer(engine, stepper, bearer_request(token))

    first = tenant(1)()
    others = [tenant(n)() for n in range(2, 12)]
    assert first.error == "clerk-rate-limited"
    assert {r.error for r in others} == {"clerk-rate-limited"}
    assert all(r.retry_after is not None and 0 < r.retry_after <= 7 for r in others)
    assert fake_clerk.calls["template"] == 1  # nobody called Clerk during the pause
    clock.advance(7.5)
    assert tenant(20)().token is not None
    assert fake_clerk.calls["template"] == 2
