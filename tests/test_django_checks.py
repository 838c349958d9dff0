"""Django system checks: every configuration problem of the middleware, with a stable id
(``clerk_tinybird.E0xx`` / ``W0xx``), from Django settings over the environment."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from clerk_tinybird_middleware import LocalTokenSource
from clerk_tinybird_middleware.django import checks
from clerk_tinybird_middleware.testing import FakeClerk
from clerk_tinybird_middleware.wiring import Problem
from constants import ADMIN_TOKEN
from django_support import overrides

SECRET = "sk_test_" + "k" * 24
LOCAL = {"TINYBIRD_WORKSPACE_ID": "ws_1", "TINYBIRD_JWT_SECRET": ADMIN_TOKEN}
SCOPES = json.dumps(
    [{"type": "PIPES:READ", "resource": "p", "fixed_params": {"org": "{{org.id}}"}}]
)


pytestmark = pytest.mark.usefixtures("clean_environment")


def found(**settings: Any) -> list[str]:
    with override_settings(**overrides(**settings)):
        return [message.id for message in checks.check_configuration()]


#: Django settings → the ids ``check`` reports.
CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("clean", {"CLERK_SECRET_KEY": SECRET}, []),
    ("no-key-material", {}, ["E001"]),
    ("secret-key", {"CLERK_SECRET_KEY": "pk_test_abc"}, ["E002"]),
    ("jwt-key", {"CLERK_JWT_KEY": "not a pem"}, ["E003"]),
    ("publishable-key", {"CLERK_SECRET_KEY": SECRET, "CLERK_PUBLISHABLE_KEY": "pk_x"}, ["E004"]),
    (
        "authorized-parties",
        {"CLERK_SECRET_KEY": SECRET, "CLERK_AUTHORIZED_PARTIES": "https://a.test/path"},
        ["E005"],
    ),
    ("audience", {"CLERK_SECRET_KEY": SECRET, "CLERK_AUDIENCE": [1, 2]}, ["E006"]),
    ("clock-skew", {"CLERK_SECRET_KEY": SECRET, "CLERK_CLOCK_SKEW_SECONDS": "a bit"}, ["E007"]),
    ("api-url", {"CLERK_SECRET_KEY": SECRET, "CLERK_API_URL": "ftp://x"}, ["E008"]),
    ("proxy-url", {"CLERK_SECRET_KEY": SECRET, "CLERK_PROXY_URL": "clerk.example"}, ["E009"]),
    ("handshake", {"CLERK_SECRET_KEY": SECRET, "CLERK_TINYBIRD_HANDSHAKE": "maybe"}, ["E010"]),
    ("template", {"CLERK_SECRET_KEY": SECRET, "CLERK_TINYBIRD_TEMPLATE": "a/b"}, ["E011"]),
    ("tinybird-url", {"CLERK_SECRET_KEY": SECRET, "TINYBIRD_API_URL": "tinybird"}, ["E012"]),
    (
        "workspace-id",
        {"CLERK_SECRET_KEY": SECRET, "TINYBIRD_JWT_SECRET": ADMIN_TOKEN},
        ["E013"],
    ),
    ("jwt-secret", {"CLERK_SECRET_KEY": SECRET, "TINYBIRD_WORKSPACE_ID": "ws_1"}, ["E014"]),
    ("scopes-missing", {"CLERK_SECRET_KEY": SECRET, **LOCAL}, ["E015"]),
    (
        "scopes-json",
        {"CLERK_SECRET_KEY": SECRET, **LOCAL, "TINYBIRD_JWT_SCOPES": "[{"},
        ["E015"],
    ),
    (
        "scopes-unpinned",
        {
            "CLERK_SECRET_KEY": SECRET,
            **LOCAL,
            "TINYBIRD_JWT_SCOPES": [{"type": "PIPES:READ", "resource": "p"}],
        },
        ["E015"],
    ),
    ("lifetime", {"CLERK_SECRET_KEY": SECRET, "TINYBIRD_TOKEN_LIFETIME": "0"}, ["E016"]),
    (
        "allow-unpinned",
        {"CLERK_SECRET_KEY": SECRET, "TINYBIRD_ALLOW_UNPINNED_SCOPES": "perhaps"},
        ["E017"],
    ),
    (
        "anonymous-token",
        {"CLERK_SECRET_KEY": SECRET, "TINYBIRD_ANONYMOUS_TOKEN": "two words"},
        ["E018"],
    ),
    (
        "token-header",
        {"CLERK_SECRET_KEY": SECRET, "CLERK_TINYBIRD_TOKEN_HEADER": "x: y"},
        ["E019"],
    ),
    (
        "require-auth",
        {"CLERK_SECRET_KEY": SECRET, "CLERK_TINYBIRD_REQUIRE_AUTH": "sometimes"},
        ["E020"],
    ),
    (
        "exclude-paths",
        {"CLERK_SECRET_KEY": SECRET, "CLERK_TINYBIRD_EXCLUDE_PATHS": "health"},
        ["E021"],
    ),
    (
        "redis-url",
        {"CLERK_SECRET_KEY": SECRET, "CLERK_TINYBIRD_REDIS_URL": "http://cache"},
        ["E022"],
    ),
    (
        "refresh-margin",
        {
            "CLERK_SECRET_KEY": SECRET,
            **LOCAL,
            "TINYBIRD_JWT_SCOPES": SCOPES,
            "CLERK_TINYBIRD_REFRESH_MARGIN": 600,
        },
        ["E023"],
    ),
    (
        "memo-bound",
        {"CLERK_SECRET_KEY": SECRET, "CLERK_TINYBIRD_MEMO_MB": "0"},
        ["E024"],
    ),
    (
        "every-bad-value-at-once",
        {
            "CLERK_SECRET_KEY": SECRET,
            "CLERK_CLOCK_SKEW_SECONDS": "a bit",
            "CLERK_TINYBIRD_REQUIRE_AUTH": "sometimes",
        },
        ["E007", "E020"],
    ),
    ("production-key", {"CLERK_SECRET_KEY": "sk_live_" + "k" * 24}, ["W002"]),
    (
        "production-key-with-parties",
        {"CLERK_SECRET_KEY": "sk_live_" + "k" * 24, "CLERK_AUTHORIZED_PARTIES": "https://a.test"},
        [],
    ),
]


@pytest.mark.parametrize(("settings", "ids"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_problem_has_its_id(settings: dict[str, Any], ids: list[str]) -> None:
    assert found(**settings) == [f"clerk_tinybird.{i}" for i in ids]


def test_warnings_without_a_token_source_or_secret_key(
    fake_clerk_signing_key: rsa.RSAPrivateKey,
) -> None:
    pem = FakeClerk(signing_key=fake_clerk_signing_key).public_key_pem
    publishable = FakeClerk(signing_key=fake_clerk_signing_key).publishable_key
    assert found(CLERK_JWT_KEY=pem) == ["clerk_tinybird.W001"]
    assert found(CLERK_JWT_KEY=pem, CLERK_PUBLISHABLE_KEY=publishable) == [
        "clerk_tinybird.W003",
        "clerk_tinybird.W001",
    ]
    assert found(
        CLERK_JWT_KEY=pem, CLERK_PUBLISHABLE_KEY=publishable, CLERK_TINYBIRD_HANDSHAKE=False
    ) == ["clerk_tinybird.W001"]
    # A token source given as an object is a token source.
    source = LocalTokenSource("ws_1", ADMIN_TOKEN, json.loads(SCOPES))
    assert found(CLERK_JWT_KEY=pem, CLERK_TINYBIRD_TOKEN_SOURCE=source) == []


def test_missing_middleware_is_a_warning() -> None:
    with override_settings(
        **overrides(
            CLERK_SECRET_KEY=SECRET, MIDDLEWARE=["django.middleware.common.CommonMiddleware"]
        )
    ):
        messages = checks.check_configuration()
    assert [m.id for m in messages] == ["clerk_tinybird.W004"]
    assert "ClerkTinybirdMiddleware" in messages[0].hint


def test_environment_is_checked_under_django_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET)
    monkeypatch.setenv("CLERK_TINYBIRD_REQUIRE_AUTH", "sometimes")
    assert found() == ["clerk_tinybird.E020"]
    assert found(CLERK_TINYBIRD_REQUIRE_AUTH=True) == []  # the Django setting wins
    monkeypatch.setenv("CLERK_SECRET_KEY", "pk_test_nope")
    assert found(CLERK_TINYBIRD_REQUIRE_AUTH=True) == ["clerk_tinybird.E002"]


@pytest.mark.parametrize(
    ("problem", "expected"),
    [
        (Problem("error", "lock_timeout must exceed the upstream budget"), "E099"),
        (
            Problem(
                "error", "CLERK_SECRET_KEY or CLERK_JWT_KEY is required to verify Clerk sessions"
            ),
            "E001",
        ),
        (Problem("error", "X_UNKNOWN_NAME then TINYBIRD_JWT_SCOPES: bad"), "E015"),
        (Problem("warning", "something new"), "W099"),
    ],
    ids=["other-error", "no-key", "first-known-name", "other-warning"],
)
def test_problem_ids(problem: Problem, expected: str) -> None:
    assert checks.problem_id(problem) == f"clerk_tinybird.{expected}"


def test_manage_py_check_fails_on_errors_and_passes_when_clean() -> None:
    with (
        override_settings(**overrides(CLERK_SECRET_KEY=SECRET, CLERK_API_URL="nope")),
        pytest.raises(SystemCheckError, match=r"clerk_tinybird\.E008"),
    ):
        call_command("check", tags=["clerk_tinybird"])
    with override_settings(**overrides(CLERK_SECRET_KEY=SECRET)):
        call_command("check", tags=["clerk_tinybird"], fail_level="WARNING")
