"""Settings: the environment table of SPEC §3 and ConfigurationError at construction."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.applications import Starlette

from clerk_tinybird_middleware import (
    ClerkTemplateSource,
    ClerkTinybirdMiddleware,
    ConfigurationError,
    LocalTokenSource,
    Settings,
)
from clerk_tinybird_middleware.testing import FakeClerk

SCOPES = [{"type": "PIPES:READ", "resource": "p", "fixed_params": {"org": "{{org.slug}}"}}]


def test_defaults() -> None:
    s = Settings()
    assert s.clock_skew_seconds == 5
    assert s.clerk_api_url == "https://api.clerk.com"
    assert s.tinybird_template == "tinybird"
    assert s.tinybird_api_url == "https://api.tinybird.co"
    assert s.tinybird_token_lifetime == 600
    assert s.token_header == "x-tinybird-token"
    assert s.require_auth is False
    assert s.refresh_margin_seconds == 10
    assert s.authorized_parties == s.audience == s.exclude_paths == ()


def test_from_env_reads_every_field() -> None:
    env = {
        "CLERK_SECRET_KEY": "sk_test_x",
        "CLERK_JWT_KEY": "pem",
        "CLERK_PUBLISHABLE_KEY": "pk_test_x",
        "CLERK_AUTHORIZED_PARTIES": "https://a.example, https://b.example",
        "CLERK_AUDIENCE": "api",
        "CLERK_CLOCK_SKEW_SECONDS": "2.5",
        "CLERK_API_URL": "http://127.0.0.1:9/",
        "CLERK_TINYBIRD_TEMPLATE": "tb",
        "TINYBIRD_API_URL": "https://api.us-east.tinybird.co",
        "TINYBIRD_WORKSPACE_ID": "ws",
        "TINYBIRD_JWT_SECRET": "p.admin",
        "TINYBIRD_JWT_SCOPES": json.dumps(SCOPES),
        "TINYBIRD_TOKEN_LIFETIME": "120",
        "TINYBIRD_ANONYMOUS_TOKEN": "p.anon",
        "CLERK_TINYBIRD_TOKEN_HEADER": "X-Analytics-Token",
        "CLERK_TINYBIRD_REQUIRE_AUTH": "yes",
        "CLERK_TINYBIRD_EXCLUDE_PATHS": "/health,/static/",
        "CLERK_TINYBIRD_REDIS_URL": "redis://127.0.0.1:6379/0",
        "CLERK_TINYBIRD_REFRESH_MARGIN": "30",
    }
    s = Settings.from_env(env)
    assert s.secret_key == "sk_test_x"
    assert s.authorized_parties == ("https://a.example", "https://b.example")
    assert s.audience == ("api",)
    assert s.clock_skew_seconds == 2.5
    assert s.clerk_api_url == "http://127.0.0.1:9"
    assert s.tinybird_scopes == tuple(SCOPES)
    assert s.tinybird_token_lifetime == 120
    assert s.token_header == "x-analytics-token"
    assert s.require_auth is True
    assert s.exclude_paths == ("/health", "/static")
    assert s.refresh_margin_seconds == 30


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("true", True), ("YES", True), ("0", False), ("false", False), ("no", False)],
)
def test_booleans(value: str, expected: bool) -> None:
    assert Settings.from_env({"CLERK_TINYBIRD_REQUIRE_AUTH": value}).require_auth is expected


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"CLERK_CLOCK_SKEW_SECONDS": "five"}, "CLERK_CLOCK_SKEW_SECONDS"),
        ({"TINYBIRD_TOKEN_LIFETIME": "10m"}, "TINYBIRD_TOKEN_LIFETIME"),
        ({"TINYBIRD_TOKEN_LIFETIME": "0"}, "TINYBIRD_TOKEN_LIFETIME"),
        ({"CLERK_TINYBIRD_REFRESH_MARGIN": "-1"}, "CLERK_TINYBIRD_REFRESH_MARGIN"),
        ({"CLERK_TINYBIRD_REQUIRE_AUTH": "maybe"}, "CLERK_TINYBIRD_REQUIRE_AUTH"),
        ({"TINYBIRD_JWT_SCOPES": "[{"}, "TINYBIRD_JWT_SCOPES"),
        ({"TINYBIRD_JWT_SCOPES": '{"type": "x"}'}, "TINYBIRD_JWT_SCOPES"),
        ({"TINYBIRD_JWT_SCOPES": '[{"type": "PIPES:READ"}]'}, "TINYBIRD_JWT_SCOPES"),
        ({"CLERK_API_URL": "api.clerk.com"}, "CLERK_API_URL"),
        ({"CLERK_TINYBIRD_EXCLUDE_PATHS": "health"}, "CLERK_TINYBIRD_EXCLUDE_PATHS"),
        ({"CLERK_TINYBIRD_TOKEN_HEADER": "x token"}, "CLERK_TINYBIRD_TOKEN_HEADER"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_bad_values_name_the_env_var(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Settings.from_env(env)


def _app() -> Starlette:
    return Starlette()


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({}, "CLERK_SECRET_KEY or CLERK_JWT_KEY"),
        ({"jwt_key": "not a pem"}, "CLERK_JWT_KEY"),
        (
            {"jwt_key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
            "CLERK_JWT_KEY",
        ),
        ({"secret_key": "sk_test_x", "publishable_key": "pk_test_bad"}, "CLERK_PUBLISHABLE_KEY"),
        ({"secret_key": "sk_test_x", "tinybird_workspace_id": "ws"}, "TINYBIRD_JWT_SECRET"),
        (
            {"secret_key": "sk_test_x", "tinybird_workspace_id": "ws", "tinybird_jwt_secret": "p."},
            "TINYBIRD_JWT_SCOPES",
        ),
    ],
    ids=[
        "no-key-material",
        "malformed-pem",
        "bad-pem-body",
        "bad-publishable",
        "half-local",
        "no-scopes",
    ],
)
def test_bad_configuration_fails_at_construction(overrides: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        ClerkTinybirdMiddleware(_app(), Settings(), **overrides)


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="secret_kee"):
        ClerkTinybirdMiddleware(_app(), Settings(), secret_kee="sk")  # type: ignore[call-arg]


def test_no_arguments_reads_the_environment(
    monkeypatch: pytest.MonkeyPatch, fake_clerk: FakeClerk
) -> None:
    monkeypatch.setenv("CLERK_JWT_KEY", fake_clerk.public_key_pem.replace("\n", "\\n"))
    monkeypatch.setenv("CLERK_TINYBIRD_REQUIRE_AUTH", "1")
    mw = ClerkTinybirdMiddleware(_app())
    assert mw.engine.settings.require_auth is True
    assert mw.engine.key_set is None  # PEM mode: no JWKS at all


def test_overrides_apply_over_explicit_settings() -> None:
    mw = ClerkTinybirdMiddleware(_app(), Settings(secret_key="sk_test_a"), require_auth=True)
    assert mw.engine.settings.secret_key == "sk_test_a"
    assert mw.engine.settings.require_auth is True


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        ({"secret_key": "sk_test_x"}, ClerkTemplateSource),
        (
            {
                "secret_key": "sk_test_x",
                "tinybird_workspace_id": "ws",
                "tinybird_jwt_secret": "p.admin",
                "tinybird_scopes": SCOPES,
            },
            LocalTokenSource,
        ),
    ],
    ids=["template", "local-wins"],
)
def test_default_token_source(overrides: dict[str, Any], kind: type) -> None:
    mw = ClerkTinybirdMiddleware(_app(), Settings(), **overrides)
    assert isinstance(mw.engine.source, kind)


def test_pem_accepts_clerk_dashboard_formats(fake_clerk: FakeClerk) -> None:
    pem = fake_clerk.public_key_pem
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    for variant in (pem, pem.replace("\n", "\\n"), body):
        ClerkTinybirdMiddleware(_app(), Settings(jwt_key=variant))


def test_repr_hides_secrets() -> None:
    s = Settings(
        secret_key="sk_live_secret",
        tinybird_jwt_secret="p.admin-secret",
        anonymous_token="p.anon-secret",
        redis_url="redis://:pw-secret@host/0",
    )
    text = repr(s)
    for secret in ("sk_live_secret", "p.admin-secret", "p.anon-secret", "pw-secret"):
        assert secret not in text


def test_typed_overrides_cover_every_field() -> None:
    from dataclasses import fields

    from clerk_tinybird_middleware.settings import SettingOverrides

    assert set(SettingOverrides.__annotations__) == {f.name for f in fields(Settings)}


def test_an_empty_variable_is_unset() -> None:
    """``FOO=`` in a shell or a ``.env`` file means "not set": the default, not false or an
    error — except the token header, where empty means no header."""
    settings = Settings.from_env(
        {
            "CLERK_SECRET_KEY": "sk_test_" + "x" * 40,
            "CLERK_TINYBIRD_HANDSHAKE": "",
            "CLERK_CLOCK_SKEW_SECONDS": "",
            "TINYBIRD_TOKEN_LIFETIME": "",
            "CLERK_PROXY_URL": "",
            "CLERK_TINYBIRD_TOKEN_HEADER": "",
        }
    )
    assert settings.handshake is True
    assert settings.clock_skew_seconds == 5
    assert settings.tinybird_token_lifetime == 600
    assert settings.proxy_url is None
    assert settings.token_header is None
