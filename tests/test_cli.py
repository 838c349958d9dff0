"""The ``clerk-tinybird`` console script: ``decode`` and ``mint`` (``demo`` is in test_demo.py)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest

from clerk_tinybird_middleware.cli import main
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from constants import ADMIN_TOKEN

WORKSPACE = "6a1f0d6e-0000-4000-8000-00000000c11e"
SCOPES = json.dumps(
    [
        {
            "type": "PIPES:READ",
            "resource": "analytics_hits",
            "fixed_params": {"org": "{{org.slug}}", "user": "{{user.id}}"},
        }
    ]
)
ENV_NAMES = (
    "TINYBIRD_WORKSPACE_ID",
    "TINYBIRD_JWT_SECRET",
    "TINYBIRD_JWT_SCOPES",
    "TINYBIRD_TOKEN_LIFETIME",
)


@pytest.fixture
def tinybird_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean environment with local minting configured."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TINYBIRD_WORKSPACE_ID", WORKSPACE)
    monkeypatch.setenv("TINYBIRD_JWT_SECRET", ADMIN_TOKEN)
    monkeypatch.setenv("TINYBIRD_JWT_SCOPES", SCOPES)
    return monkeypatch


# -- decode --------------------------------------------------------------------------------------


def test_decode_prints_header_and_claims_and_says_it_did_not_verify(
    capsys: pytest.CaptureFixture[str],
) -> None:
    token = FakeClerk().session_token("user_1", org={"id": "org_1", "slug": "acme"})

    assert main(["decode", token]) == 0

    out, err = capsys.readouterr()
    decoded = json.loads(out)
    assert decoded["header"]["alg"] == "RS256"
    assert decoded["claims"]["sub"] == "user_1"
    assert decoded["claims"]["o"]["slg"] == "acme"
    assert "NOT VERIFIED" in err
    assert "exp:" in err


def test_decode_reads_the_token_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = FakeTinybird().mint(pipe="analytics_hits", fixed_params={"org": "acme"})
    monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))

    assert main(["decode", "-"]) == 0

    claims = json.loads(capsys.readouterr().out)["claims"]
    assert claims["scopes"][0]["fixed_params"] == {"org": "acme"}


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param("", id="empty"),
        pytest.param("not-a-jwt", id="one-part"),
        pytest.param("a.b", id="two-parts"),
        pytest.param("a.b.c.d", id="four-parts"),
        pytest.param("%%%.e30.sig", id="header-not-base64url"),
        pytest.param("bm90IGpzb24.e30.sig", id="header-not-json"),
        pytest.param("e30.WzEsMl0.sig", id="claims-a-list"),
        pytest.param("e30.\u00e9\u00e9.sig", id="non-ascii"),
        pytest.param("e30." + "A" * 5 + ".sig", id="bad-padding"),
    ],
)
def test_decode_rejects_garbage_with_exit_2(
    garbage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["decode", garbage]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("clerk-tinybird decode: not a JWT")
    assert "Traceback" not in err


# -- mint ----------------------------------------------------------------------------------------


def test_mint_signs_a_token_tinybird_accepts_for_that_tenant_only(
    tinybird_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["mint", "--user", "user_1", "--org-id", "org_1", "--org-slug", "acme"]) == 0

    out, err = capsys.readouterr()
    token = out.strip()
    claims = pyjwt.decode(token, ADMIN_TOKEN, algorithms=["HS256"])
    assert claims["workspace_id"] == WORKSPACE
    assert claims["scopes"][0]["fixed_params"] == {"org": "acme", "user": "user_1"}
    assert claims["name"] == "org_1"  # one rate-limit bucket per tenant
    assert "expires at" in err
    assert ADMIN_TOKEN not in out + err

    # Tinybird (the fake, over HTTP) accepts it, and the pinned org wins over the caller's.
    fake = FakeTinybird(admin_token=ADMIN_TOKEN, workspace_id=WORKSPACE)
    fake.add_pipe(
        "analytics_hits",
        [{"org": "acme", "user": "user_1", "hits": 3}, {"org": "globex", "user": "u", "hits": 9}],
    )
    with fake.serve() as url:
        answer = httpx.get(
            f"{url}/v0/pipes/analytics_hits.json",
            params={"org": "globex"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 200
    assert answer.json()["data"] == [{"org": "acme", "user": "user_1", "hits": 3}]


def test_mint_honours_the_lifetime_setting(
    tinybird_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tinybird_env.setenv("TINYBIRD_TOKEN_LIFETIME", "60")
    tinybird_env.setenv(
        "TINYBIRD_JWT_SCOPES",
        json.dumps([{"type": "PIPES:READ", "resource": "p", "fixed_params": {"u": "{{user.id}}"}}]),
    )

    before = time.time()
    assert main(["mint", "--user", "user_9"]) == 0
    after = time.time()

    claims = pyjwt.decode(capsys.readouterr().out.strip(), ADMIN_TOKEN, algorithms=["HS256"])
    assert int(before) + 60 <= claims["exp"] <= after + 60
    assert claims["scopes"][0]["fixed_params"] == {"u": "user_9"}


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        pytest.param(
            {"TINYBIRD_WORKSPACE_ID": None},
            ["--user", "u"],
            "TINYBIRD_WORKSPACE_ID",
            id="no-workspace",
        ),
        pytest.param(
            {"TINYBIRD_JWT_SECRET": None}, ["--user", "u"], "TINYBIRD_JWT_SECRET", id="no-secret"
        ),
        pytest.param(
            {"TINYBIRD_JWT_SCOPES": None}, ["--user", "u"], "TINYBIRD_JWT_SCOPES", id="no-scopes"
        ),
        pytest.param(
            {"TINYBIRD_JWT_SCOPES": "{not json"},
            ["--user", "u"],
            "TINYBIRD_JWT_SCOPES",
            id="scopes-not-json",
        ),
        pytest.param(
            {"TINYBIRD_TOKEN_LIFETIME": "ten"},
            ["--user", "u"],
            "TINYBIRD_TOKEN_LIFETIME",
            id="lifetime-not-a-number",
        ),
        pytest.param({}, ["--user", "u"], "tenant-missing", id="no-org-for-an-org-scope"),
        pytest.param({}, ["--user", "u", "--org-slug", "acme"], "--org-id", id="slug-without-id"),
    ],
)
def test_mint_refuses_with_exit_2_and_a_message(
    tinybird_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str | None],
    argv: list[str],
    expected: str,
) -> None:
    for name, value in env.items():
        if value is None:
            tinybird_env.delenv(name)
        else:
            tinybird_env.setenv(name, value)

    assert main(["mint", *argv]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert expected in err
    assert ADMIN_TOKEN not in err
    assert "Traceback" not in err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "decode" in capsys.readouterr().err


# -- the installed entry points ------------------------------------------------------------------


def _entry_point(kind: str) -> list[str]:
    if kind == "module":
        return [sys.executable, "-m", "clerk_tinybird_middleware.cli"]
    script = Path(sys.executable).with_name("clerk-tinybird")
    found = str(script) if script.exists() else shutil.which("clerk-tinybird")
    if found is None:
        pytest.fail("the clerk-tinybird console script is not installed")
    return [found]


@pytest.mark.parametrize("kind", ["console-script", "module"])
def test_installed_entry_points_decode(kind: str) -> None:
    token = FakeTinybird().mint(pipe="p", fixed_params={"org": "acme"})
    argv = _entry_point(kind)

    ok = subprocess.run([*argv, "decode", token], capture_output=True, text=True, timeout=30)
    bad = subprocess.run([*argv, "decode", "x.y"], capture_output=True, text=True, timeout=30)

    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["claims"]["scopes"][0]["resource"] == "p"
    assert "NOT VERIFIED" in ok.stderr
    assert bad.returncode == 2
    assert "not a JWT" in bad.stderr
