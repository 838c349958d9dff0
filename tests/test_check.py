"""``clerk-tinybird check [--online]`` (SPEC §13): every configuration rule offline, one line per
problem naming the variable to fix, exit 1; ``--online`` asks a loopback FakeClerk for the JWKS
and the JWT template. Output is plain when stdout is not a terminal."""

from __future__ import annotations

import json

import pytest

from clerk_tinybird_middleware.cli import main
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from constants import ADMIN_TOKEN, SCOPES

SECRET = "sk_test_" + "c" * 40


pytestmark = pytest.mark.usefixtures("clean_environment")


def _check(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str, **env: str
) -> tuple[int, list[str]]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["check", *args])
    out = capsys.readouterr().out
    assert "\033[" not in out  # not a terminal: no colour
    return code, out.splitlines()


def _online(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    fake: FakeClerk,
    **env: str,
) -> tuple[int, list[str]]:
    """``check --online`` against ``fake`` (its secret key unless ``env`` says otherwise)."""
    env = {"CLERK_SECRET_KEY": fake.secret_key, "CLERK_API_URL": fake.api_url, **env}
    return _check(capsys, monkeypatch, "--online", **env)


def test_a_clean_configuration_passes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, lines = _check(capsys, monkeypatch, CLERK_SECRET_KEY=SECRET)

    assert code == 0
    assert lines[0] == "✓ configuration: every setting is valid"
    assert lines[-1] == "0 problem(s), 0 warning(s)"


def test_every_problem_is_one_line_naming_its_variable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, lines = _check(
        capsys,
        monkeypatch,
        CLERK_SECRET_KEY="pk_test_Y2xlcmsuZXhhbXBsZS5jb20k",
        CLERK_AUTHORIZED_PARTIES="app.example.com",
        CLERK_CLOCK_SKEW_SECONDS="a bit",
        TINYBIRD_WORKSPACE_ID="ws_1",
        TINYBIRD_JWT_SECRET=ADMIN_TOKEN,
        TINYBIRD_JWT_SCOPES='[{"type": "PIPES:READ", "resource": "hits"}]',
    )

    assert code == 1
    problems = [line for line in lines if line.startswith("✗ ")]
    named = ("CLERK_SECRET_KEY", "CLERK_AUTHORIZED_PARTIES", "CLERK_CLOCK_SKEW_SECONDS")
    for variable in (*named, "TINYBIRD_JWT_SCOPES"):
        assert sum(variable in line for line in problems) == 1, (variable, problems)
    assert "publishable key" in next(p for p in problems if "CLERK_SECRET_KEY" in p)
    assert lines[-1] == f"{len(problems)} problem(s), 0 warning(s)"
    assert ADMIN_TOKEN not in "\n".join(lines)


def test_online_reads_the_jwks_and_the_template(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_clerk: FakeClerk
) -> None:
    code, lines = _online(capsys, monkeypatch, fake_clerk)

    assert code == 0, lines
    assert "✓ JWKS: 1 signing key(s) from Clerk" in lines
    assert "✓ JWT template 'tinybird' exists" in lines
    assert "✓ it signs HS256 with a custom signing key" in lines
    assert "✓ scope 1 (analytics_hits) pins org.slug, user.id" in lines
    assert "✓ lifetime 600 s, refreshed 10 s before expiry" in lines
    assert (fake_clerk.calls["jwks"], fake_clerk.calls["jwt_templates"]) == (1, 1)


def test_online_names_a_missing_template(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_clerk: FakeClerk
) -> None:
    code, lines = _online(capsys, monkeypatch, fake_clerk, CLERK_TINYBIRD_TEMPLATE="analytics")

    assert code == 1
    assert "✗ CLERK_TINYBIRD_TEMPLATE: no JWT template named 'analytics' (found: tinybird)" in lines


def test_online_refuses_a_template_that_cannot_work(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_tinybird: FakeTinybird
) -> None:
    fake = FakeClerk()
    unpinned = [{"type": "PIPES:READ", "resource": "analytics_hits"}]
    fake.add_template(
        "tinybird", {"scopes": unpinned}, fake_tinybird.admin_token, algorithm="RS256", lifetime=5
    )
    with fake.serve():
        code, lines = _online(capsys, monkeypatch, fake)

    assert code == 1
    problems = [line for line in lines if line.startswith("✗ ")]
    assert len(problems) == 4, problems
    assert "must sign HS256" in problems[0]
    assert "scope 1 (analytics_hits)" in problems[1]
    assert "does not pin the tenant" in problems[1]
    assert "no 'workspace_id' claim" in problems[2]
    assert "CLERK_TINYBIRD_REFRESH_MARGIN" in problems[3]


def test_online_reports_a_refused_secret_key(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_clerk: FakeClerk
) -> None:
    code, lines = _online(capsys, monkeypatch, fake_clerk, CLERK_SECRET_KEY=SECRET)

    assert code == 1
    assert "✗ CLERK_SECRET_KEY: Clerk refused it (401) for the JWKS" in lines
    assert fake_clerk.calls["jwt_templates"] == 0


def test_online_with_local_minting_needs_no_template(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, fake_clerk: FakeClerk
) -> None:
    code, lines = _online(
        capsys,
        monkeypatch,
        fake_clerk,
        TINYBIRD_WORKSPACE_ID="ws_1",
        TINYBIRD_JWT_SECRET=ADMIN_TOKEN,
        TINYBIRD_JWT_SCOPES=json.dumps(SCOPES),
    )

    assert code == 0, lines
    assert "✓ Tinybird tokens are minted locally: no JWT template used" in lines
    assert fake_clerk.calls["jwt_templates"] == 0
