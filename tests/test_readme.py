"""The README's code blocks, run: a README that a new user follows must work as written.

Every fenced block may be preceded by a marker, ``<!-- readme-test: KIND [NAME] [key=value] -->``,
saying how it is checked; every Python block must carry one (so a new block cannot escape):

* ``run NAME`` — the block is executed in process against the package's fakes by the runner
  ``NAME`` of :data:`RUNNERS`, which gives it what a user would already have (an environment
  pointing at FakeClerk, an ``app``) and then uses the result the way the README says;
* ``pytest test|pyproject|conftest`` — the README's test, and the two ways it says to load the
  pytest plugin, are written to temporary projects and run by pytest in subprocesses;
* ``compile`` — for blocks that need real accounts: compiled, and every name they import from
  the package must exist;
* ``sh NAME`` / ``console exits=N`` — shell lines run with ``clerk-tinybird`` on the path; a
  console transcript's output must match;
* ``json NAME``, ``django-check`` — the JSON template, and ``manage.py check``'s output.

JSON blocks are all parsed. The README's tables are checked too: the settings table against
:class:`Settings`, the handshake's decision table against ``test_handshake.TABLE``, reason codes,
metric instruments and Django check ids against the code; and every link resolves. The blocks
that ran are listed in pytest's terminal summary.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import importlib
import io
import json
import os
import re
import subprocess
import sys
import time
import types
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt as pyjwt
import pytest

import django_support  # configures Django for this process (the Django blocks run in it)
import test_handshake
from clerk_tinybird_middleware import Settings
from clerk_tinybird_middleware.checks import template_findings
from clerk_tinybird_middleware.core.claims import Reason
from clerk_tinybird_middleware.core.tokens import TokenError
from clerk_tinybird_middleware.demo import load_example
from clerk_tinybird_middleware.django.checks import ERROR_IDS, check_configuration
from clerk_tinybird_middleware.testing import FakeClerk, FakeTinybird
from constants import ADMIN_TOKEN
from leaks import summary

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SRC = ROOT / "src"
HERE = Path(__file__).resolve().parent

_FENCE = re.compile(r"^(?P<indent> *)(?P<ticks>```+)(?P<lang>[\w+-]*)\s*$")
_MARKER = re.compile(r"^\s*<!-- readme-test: (?P<spec>.+?) -->\s*$")
_HEADING = re.compile(r"^(?P<level>#{1,6}) (?P<title>.+?)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    spec: str | None  # the marker's text, if the block has one
    section: str  # the heading it is under

    @property
    def kind(self) -> str | None:
        return self.spec.split()[0] if self.spec else None

    @property
    def name(self) -> str:
        words = [w for w in (self.spec or "").split()[1:] if "=" not in w]
        return words[0] if words else ""

    @property
    def options(self) -> dict[str, str]:
        pairs = (w.partition("=") for w in (self.spec or "").split()[1:] if "=" in w)
        return {key: value for key, _, value in pairs}

    @property
    def label(self) -> str:
        what = f"{self.kind} {self.name}".strip() if self.kind else self.lang
        return f"{self.section} — {what} (line {self.line})"


def _parse(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The blocks, and the headings (line, title) in order. A marker must sit on the line
    right before a fence (blank lines allowed): a stray one is an error."""
    blocks: list[Block] = []
    headings: list[tuple[int, str]] = []
    section = "(top)"
    spec: tuple[int, str] | None = None
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        marker = _MARKER.match(line)
        fence = _FENCE.match(line)
        heading = _HEADING.match(line)
        if marker:
            assert spec is None, f"README line {spec[0] if spec else 0}: a marker with no block"
            spec = (index + 1, marker.group("spec"))
        elif fence:
            indent, ticks = len(fence.group("indent")), fence.group("ticks")
            body: list[str] = []
            index += 1
            while index < len(lines) and lines[index].strip() != ticks:
                body.append(
                    lines[index][indent:] if lines[index][:indent].isspace() else lines[index]
                )
                index += 1
            assert index < len(lines), f"README line {index}: unclosed code block"
            start = index - len(body)
            code = "\n".join(body) + "\n"
            blocks.append(
                Block(start, fence.group("lang"), code, spec[1] if spec else None, section)
            )
            spec = None
        elif heading:
            assert spec is None, f"README line {spec[0] if spec else 0}: a marker with no block"
            section = heading.group("title")
            headings.append((index + 1, section))
        elif line.strip() and spec is not None:
            raise AssertionError(f"README line {spec[0]}: the marker is not followed by a block")
        index += 1
    assert spec is None, f"README line {spec[0] if spec else 0}: a marker with no block"
    return blocks, headings


TEXT = README.read_text(encoding="utf-8")
BLOCKS, HEADINGS = _parse(TEXT)
KINDS = {"run", "pytest", "compile", "sh", "console", "json", "django-check"}
EXECUTED: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    executed = sorted(set(EXECUTED), key=lambda label: int(label.rsplit("line ", 1)[1][:-1]))
    summary(request.config).add(
        "README code blocks",
        f"README: {len(executed)} blocks executed: " + "; ".join(executed),
    )


def _ran(block: Block) -> None:
    EXECUTED.append(block.label)


# -- the environment a README user has ---------------------------------------------------------


@dataclass
class World:
    """What a block runs against: both fakes serving, an environment pointing at them."""

    clerk: FakeClerk
    tinybird: FakeTinybird
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path

    def point_at_fakes(self) -> None:
        self.monkeypatch.setenv("CLERK_SECRET_KEY", self.clerk.secret_key)
        self.monkeypatch.setenv("CLERK_API_URL", self.clerk.api_url)
        self.monkeypatch.setenv("TINYBIRD_API_URL", self.tinybird.api_url)

    def session(self, role: str = "admin", user: str = "user_1") -> str:
        org = {"id": "org_1", "slug": "acme", "role": role, "permissions": ["org:reports:read"]}
        return self.clerk.session_token(user, org=org)

    def bearer(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.session(role)}"}


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("CLERK_", "TINYBIRD_")):
            monkeypatch.delenv(name)


@pytest.fixture
def world(
    fake_clerk: FakeClerk,
    fake_tinybird: FakeTinybird,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> World:
    _clean_environment(monkeypatch)
    fake_tinybird.add_pipe(
        "analytics_hits", [{"org": "acme", "pageviews": 3}, {"org": "globex", "pageviews": 9}]
    )
    return World(fake_clerk, fake_tinybird, monkeypatch, tmp_path)


def _exec(block: Block, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute ``block`` as a module would run it (in ``namespace``, given names included)."""
    scope: dict[str, Any] = {"__name__": f"readme_line_{block.line}"}
    scope.update(namespace or {})
    exec(compile(block.code, f"README.md:{block.line}", "exec"), scope)
    return scope


def _block(kind: str, name: str) -> Block:
    found = [b for b in BLOCKS if b.kind == kind and b.name == name]
    assert len(found) == 1, f"README: expected one `{kind} {name}` block, found {len(found)}"
    return found[0]


def _asgi(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _fastapi_app() -> Any:
    """What a user has before a fragment that says ``app.add_middleware(...)``."""
    from fastapi import FastAPI

    from clerk_tinybird_middleware.fastapi import SessionDep

    app = FastAPI()

    @app.get("/api/me")
    async def me(session: SessionDep) -> dict[str, Any]:
        return session.as_dict()

    return app


# -- runners: one per `run NAME` marker ----------------------------------------------------------


async def run_fastapi(block: Block, world: World) -> None:
    world.point_at_fakes()
    app = _exec(block)["app"]
    async with _asgi(app) as client:
        stats = await client.get("/api/stats", headers=world.bearer("member"))
        assert stats.status_code == 200, stats.text
        assert stats.json()["org"] == "acme"
        assert stats.headers["x-tinybird-token"]
        assert stats.headers["cache-control"] == "private, no-store"
        signed_out = await client.get("/api/stats")
        assert signed_out.status_code == 401
        assert signed_out.json()["detail"]["error"] == "unauthenticated"
        member = await client.get("/api/admin", headers=world.bearer("member"))
        assert member.status_code == 403
        assert member.json()["detail"]["reason"] == "missing-role"
        admin = await client.get("/api/admin", headers=world.bearer("admin"))
        assert admin.json() == {"ok": True}
        assert (await client.get("/api/hello")).json() == {"hello": "stranger"}
        hello = await client.get("/api/hello", headers=world.bearer())
        assert hello.json() == {"hello": "user_1"}


async def run_starlette(block: Block, world: World) -> None:
    world.point_at_fakes()
    app = _exec(block)["app"]
    async with _asgi(app) as client:
        assert (await client.get("/api/stats")).status_code == 401
        stats = await client.get("/api/stats", headers=world.bearer())
        assert stats.json() == {"org": "acme", "token": True}
        assert stats.headers["x-tinybird-token"]


def run_flask(block: Block, world: World) -> None:
    world.point_at_fakes()
    app = _exec(block, {"__name__": "readme_flask"})["app"]
    try:
        client = app.test_client()
        stats = client.get("/api/stats", headers=world.bearer("member"))
        assert stats.status_code == 200, stats.text
        assert stats.json["org"] == "acme"
        assert stats.headers["x-tinybird-token"]
        assert client.get("/api/stats").status_code == 401
        assert client.get("/api/admin", headers=world.bearer("member")).status_code == 403
        assert client.get("/api/admin", headers=world.bearer("admin")).json == {"ok": True}
        assert "x-tinybird-token" in client.get("/nowhere", headers=world.bearer()).headers
        health = client.get("/health", headers=world.bearer())  # excluded: never authenticated
        assert "x-tinybird-token" not in health.headers
    finally:
        app.extensions["clerk_tinybird"].close()


def _django_settings(world: World, **extra: Any) -> dict[str, Any]:
    """The README's settings.py block, as override_settings values (over the test project's),
    plus ``extra``."""
    found = _exec(_block("run", "django-settings"))
    assert "clerk_tinybird_middleware.django" in found["INSTALLED_APPS"]
    middleware: list[str] = found["MIDDLEWARE"]
    ours = middleware.index("clerk_tinybird_middleware.django.ClerkTinybirdMiddleware")
    assert ours > middleware.index("django.contrib.sessions.middleware.SessionMiddleware")
    assert ours > middleware.index("django.middleware.common.CommonMiddleware")
    world.point_at_fakes()
    values = {k: v for k, v in found.items() if k.isupper() and k != "INSTALLED_APPS"}
    return django_support.overrides(**values, **extra)


def _urlconf(name: str, urlpatterns: list[Any]) -> str:
    module = types.ModuleType(name)
    module.urlpatterns = urlpatterns  # type: ignore[attr-defined]
    sys.modules[name] = module
    return name


def run_django_settings(block: Block, world: World) -> None:
    from django.http import JsonResponse
    from django.test import Client, override_settings
    from django.urls import path

    def state(request: Any) -> JsonResponse:
        session = getattr(request, "clerk_session", None)
        return JsonResponse(
            {
                "seen": hasattr(request, "clerk_auth"),
                "user": session.user_id if session else None,
                "token": getattr(request, "tinybird_token", None) is not None,
            }
        )

    urls = _urlconf("readme_django_state", [path("api/state", state), path("health", state)])
    with override_settings(**_django_settings(world, ROOT_URLCONF=urls)):
        assert [m for m in check_configuration() if m.is_serious()] == []
        client = Client()
        signed_in = client.get("/api/state", headers=world.bearer())
        assert signed_in.json() == {"seen": True, "user": "user_1", "token": True}
        assert signed_in.headers["x-tinybird-token"]
        assert client.get("/health", headers=world.bearer()).json()["seen"] is False


def run_django_views(block: Block, world: World) -> None:
    from django.test import Client, override_settings
    from django.urls import path

    views = _exec(block, {"__name__": "readme_django_views"})
    routes = [("api/me", views["me"]), ("api/org", views["org_admin"])]
    urls = _urlconf(
        "readme_django_views",
        [*(path(p, v) for p, v in routes), path("api/stats", views["Stats"].as_view())],
    )
    with override_settings(**_django_settings(world, ROOT_URLCONF=urls)):
        client = Client()
        me = client.get("/api/me", headers=world.bearer())
        assert me.status_code == 200, me.content
        assert me.json()["user_id"] == "user_1"
        out = client.get("/api/me")
        assert (out.status_code, out.json()["error"]) == (401, "unauthenticated")
        assert out.headers["WWW-Authenticate"] == "Bearer"
        assert client.get("/api/org", headers=world.bearer("member")).status_code == 403
        assert client.get("/api/org", headers=world.bearer("admin")).json() == {"org": "acme"}
        stats = client.get("/api/stats", headers=world.bearer())
        assert stats.status_code == 200, stats.content
        assert "expires" in stats.json()


def run_django_drf(block: Block, world: World) -> None:
    from django.test import Client, override_settings
    from django.urls import path

    found = _exec(block, {"__name__": "readme_django_drf"})
    urls = _urlconf("readme_django_drf", [path("reports", found["Reports"].as_view())])
    values = _django_settings(world, ROOT_URLCONF=urls, REST_FRAMEWORK=found["REST_FRAMEWORK"])
    with override_settings(**values):
        client = Client()
        admin = client.get("/reports", headers=world.bearer("admin"))
        assert admin.json() == {"user": "user_1", "org": "org_1"}
        member = client.get("/reports", headers=world.bearer("member"))
        assert (member.status_code, member.json()["reason"]) == (403, "missing-role")
        out = client.get("/reports")
        assert (out.status_code, out.json()["error"]) == (401, "unauthenticated")  # top-level


async def run_local_minting(block: Block, world: World) -> None:
    world.point_at_fakes()
    world.monkeypatch.setenv("TINYBIRD_JWT_SECRET", world.tinybird.admin_token)
    app = _fastapi_app()
    _exec(block, {"app": app})
    async with _asgi(app) as client:
        answer = await client.get("/api/me", headers=world.bearer())
    claims = pyjwt.decode(
        answer.headers["x-tinybird-token"], world.tinybird.admin_token, algorithms=["HS256"]
    )
    assert claims["workspace_id"] == "<your Tinybird workspace id>"
    assert claims["name"] == "org_1"  # the default name: one bucket per tenant
    assert claims["limits"] == {"rps": 10}
    assert claims["scopes"][0]["fixed_params"] == {"org": "acme", "user": "user_1"}
    assert claims["exp"] == int(answer.headers["x-tinybird-token-expires-at"])
    assert claims["exp"] > time.time() + 300  # lifetime=600
    assert world.clerk.calls["template"] == 0  # no Clerk round trip


async def run_redis(block: Block, world: World) -> None:
    app = _fastapi_app()
    cache = _exec(block, {"app": app})["cache"]
    try:
        assert "s3cret" not in repr(cache)  # the password never shows
        value, lock = cache.keys("some tenant's cache key")
        assert re.fullmatch(r"myapp:\{[0-9a-f]{32}\}:tok", value)
        assert lock == value.replace(":tok", ":lock")  # one hash slot per tenant
    finally:
        cache.close()


async def run_cors(block: Block, world: World) -> None:
    world.point_at_fakes()
    app = _fastapi_app()
    _exec(block, {"app": app})
    origin = {"Origin": "https://app.example.com"}
    async with _asgi(app) as client:
        answer = await client.get("/api/me", headers={**origin, **world.bearer()})
        exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].split(",")}
        assert {"x-tinybird-token", "x-tinybird-token-expires-at"} <= exposed
        assert answer.headers["x-tinybird-token"]
        preflight = await client.options(
            "/api/me",
            headers={
                **origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "Authorization",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"


async def run_metrics(block: Block, world: World) -> None:
    script = world.tmp_path / "block.py"
    script.write_text(block.code)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(HERE / "readme" / "metrics_harness.py"), str(script)],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for name in (
        "clerk_tinybird.requests",
        "clerk_tinybird.token_cache",
        "clerk_tinybird.upstream_calls",
        "clerk_tinybird.upstream_duration",
    ):
        assert f'"name": "{name}"' in done.stdout, f"{name} was not exported"
    assert '"status": "signed-in"' in done.stdout


async def run_dependency_overrides(block: Block, world: World) -> None:
    create_app = load_example("starlette").create_app
    app = create_app(Settings(secret_key=world.clerk.secret_key, clerk_api_url=world.clerk.api_url))
    _exec(block, {"app": app})
    async with _asgi(app) as client:
        me = await client.get("/api/me")  # no credentials at all
        assert me.status_code == 200, me.text
        assert me.json()["user_id"] == "user_1"
        assert (await client.get("/api/org")).json()["org_slug"] == "acme"


def run_outside_pytest(block: Block, world: World) -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        found = _exec(block, {"__name__": "__main__"})
    assert printed.getvalue() == "[{'org': 'acme', 'pageviews': 3}]\n"
    assert found["clerk"].calls["template"] == 1


Runner = Callable[[Block, World], Awaitable[None] | None]
RUNNERS: dict[str, Runner] = {
    "fastapi": run_fastapi,
    "starlette": run_starlette,
    "flask": run_flask,
    "django-settings": run_django_settings,
    "django-views": run_django_views,
    "django-drf": run_django_drf,
    "local-minting": run_local_minting,
    "redis": run_redis,
    "cors": run_cors,
    "metrics": run_metrics,
    "dependency-overrides": run_dependency_overrides,
    "outside-pytest": run_outside_pytest,
}


# -- the other kinds -----------------------------------------------------------------------------


def _subprocess_env(**extra: str) -> dict[str, str]:
    """This environment without any Clerk/Tinybird setting, with this tree's package first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "TINYBIRD_"))}
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def _shell_env(world: World, **extra: str) -> dict[str, str]:
    """A shell where ``clerk-tinybird`` is this tree's console script."""
    shims = world.tmp_path / "bin"
    shims.mkdir(exist_ok=True)
    shim = shims / "clerk-tinybird"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m clerk_tinybird_middleware.cli "$@"\n')
    shim.chmod(0o755)
    return _subprocess_env(PATH=f"{shims}{os.pathsep}{os.environ.get('PATH', '')}", **extra)


def check_compile(block: Block, world: World) -> None:
    tree = ast.parse(block.code, f"README.md:{block.line}")
    compile(tree, f"README.md:{block.line}", "exec")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "clerk_tinybird_middleware"
        ):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


def check_sh(block: Block, world: World) -> None:
    assert block.name == "mint", f"no shell setup named {block.name!r}"
    env = _shell_env(world, TINYBIRD_WORKSPACE_ID="ws_readme", TINYBIRD_JWT_SECRET=ADMIN_TOKEN)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        env=env,
        cwd=world.tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    claims = json.loads(done.stdout)["claims"]
    assert claims["workspace_id"] == "ws_readme"
    assert claims["name"] == "org_456"
    assert claims["scopes"][0]["fixed_params"] == {"org": "acme", "user": "user_123"}
    assert "NOT VERIFIED" in done.stderr


def check_console(block: Block, world: World) -> None:
    """``$ command`` lines, each followed by its exact output; ``exits=`` their exit codes."""
    transcript: list[tuple[str, list[str]]] = []
    for line in block.code.splitlines():
        if line.startswith("$ "):
            transcript.append((line[2:], []))
        else:
            transcript[-1][1].append(line)
    exits = [int(n) for n in block.options.get("exits", "").split(",") if n]
    assert len(exits) == len(transcript), "console: give one exit code per command (exits=)"
    for (command, expected), code in zip(transcript, exits, strict=True):
        done = subprocess.run(
            ["bash", "-c", command],
            env=_shell_env(world),
            cwd=world.tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        )
        assert done.stdout.splitlines() == expected, done.stdout
        assert done.returncode == code


def check_json(block: Block, world: World) -> None:
    """The template claims are FakeClerk's ``add_tinybird_template`` and pass ``check --online``."""
    assert block.name == "template", f"no JSON check named {block.name!r}"
    claims = json.loads(block.code)
    answer = httpx.get(
        f"{world.clerk.api_url}/v1/jwt_templates",
        headers={"Authorization": f"Bearer {world.clerk.secret_key}"},
    )
    [fake] = [t for t in answer.json() if t["name"] == "tinybird"]
    ours = {**claims, "workspace_id": world.tinybird.workspace_id}
    assert fake["claims"] == ours, "README and FakeClerk.add_tinybird_template disagree"
    template = {
        "name": "tinybird",
        "claims": claims,
        "signing_algorithm": "HS256",
        "custom_signing_key": True,
        "lifetime": 600,
    }
    errors = [f.message for f in template_findings(template, Settings()) if f.level == "error"]
    assert errors == []


def check_django(block: Block, world: World) -> None:
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError
    from django.test import override_settings

    publishable = "pk_test_Y2xlcmsuZXhhbXBsZS5jb20k"  # pasted where the secret key goes
    with (
        override_settings(**django_support.overrides(CLERK_SECRET_KEY=publishable)),
        pytest.raises(SystemCheckError) as raised,
    ):
        call_command("check", stdout=io.StringIO(), stderr=io.StringIO())
    for line in block.code.splitlines():
        if line.strip():
            assert line.strip() in str(raised.value), line


CHECKS: dict[str, Callable[[Block, World], None]] = {
    "compile": check_compile,
    "sh": check_sh,
    "console": check_console,
    "json": check_json,
    "django-check": check_django,
}

CHECKED = [b for b in BLOCKS if b.kind in CHECKS or b.kind == "run"]


@pytest.mark.parametrize("block", CHECKED, ids=[f"line{b.line}-{b.kind}-{b.name}" for b in CHECKED])
async def test_block(block: Block, world: World) -> None:
    if block.kind == "run":
        runner = RUNNERS[block.name]
        if asyncio.iscoroutinefunction(runner):
            await runner(block, world)
        else:
            await asyncio.to_thread(runner, block, world)
    else:
        assert block.kind is not None
        await asyncio.to_thread(CHECKS[block.kind], block, world)
    _ran(block)


def _pytest(project: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=_subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_the_testing_example_passes_as_written(tmp_path: Path) -> None:
    """The README's test, in a project of its own, with each way of loading the plugin the
    README gives — and without either, where the fixtures do not exist (the plugin is opt-in)."""
    test, pyproject, conftest = (_block("pytest", n) for n in ("test", "pyproject", "conftest"))
    app = (
        "from clerk_tinybird_middleware.demo import load_example\n\n"
        'create_app = load_example("starlette").create_app\n'
    )
    projects = {n: tmp_path / n for n in ("pyproject", "conftest", "neither")}
    for project in projects.values():
        project.mkdir()
        (project / "myapp.py").write_text(app)
        (project / "test_tenant.py").write_text(test.code)
    (projects["pyproject"] / "pyproject.toml").write_text(pyproject.code)
    (projects["conftest"] / "conftest.py").write_text(conftest.code)
    # The same options, without the addopts line (the conftest loads the plugin).
    options = [line for line in pyproject.code.splitlines() if not line.startswith("addopts")]
    ini = "\n".join(options).replace("[tool.pytest.ini_options]", "[pytest]").replace('"', "")
    for name in ("conftest", "neither"):
        (projects[name] / "pytest.ini").write_text(ini + "\n")
    runs = {name: _pytest(project) for name, project in projects.items()}
    outputs = {name: run.communicate(timeout=120)[0] for name, run in runs.items()}
    for name in ("pyproject", "conftest"):
        assert runs[name].returncode == 0, outputs[name]
        assert "1 passed" in outputs[name], outputs[name]
        assert "warning" not in outputs[name].lower(), outputs[name]
    assert runs["neither"].returncode == 1
    assert "fixture 'fake_clerk' not found" in outputs["neither"]
    for block in (test, pyproject, conftest):
        _ran(block)


# -- the README's own rules ----------------------------------------------------------------------


def test_every_python_block_says_how_it_is_checked() -> None:
    unmarked = [b.line for b in BLOCKS if b.lang == "python" and b.spec is None]
    assert unmarked == [], f"python blocks without a readme-test marker, at lines {unmarked}"
    unknown = [b.spec for b in BLOCKS if b.kind is not None and b.kind not in KINDS]
    assert unknown == []
    python_kinds = {b.kind for b in BLOCKS if b.lang == "python"}
    assert python_kinds <= {"run", "pytest", "compile"}
    missing = [b.name for b in BLOCKS if b.kind == "run" and b.name not in RUNNERS]
    assert missing == [], f"no runner for {missing}"
    unused = set(RUNNERS) - {b.name for b in BLOCKS if b.kind == "run"}
    assert unused == set(), f"runners with no README block: {unused}"


def test_every_json_block_parses() -> None:
    found = [b for b in BLOCKS if b.lang == "json"]
    assert found
    for block in found:
        json.loads(block.code)


def _slug(title: str) -> str:
    """GitHub's heading anchor."""
    text = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return text.replace(" ", "-")


def test_every_link_resolves() -> None:
    anchors = {_slug(title) for _, title in HEADINGS}
    prose = re.sub(r"```.*?```", "", TEXT, flags=re.DOTALL)
    links = re.findall(r"\]\(([^)\s]+)\)", prose)
    assert links
    for link in links:
        if link.startswith("#"):
            assert link[1:] in anchors, f"no heading for {link}"
        elif not urlsplit(link).scheme:
            assert (ROOT / link.split("#", 1)[0]).exists(), f"no file {link}"


def _table(after: str) -> list[list[str]]:
    """The rows (cells, stripped) of the first table after the heading ``after``."""
    start = next(line for line, title in HEADINGS if title == after)
    rows: list[list[str]] = []
    for line in TEXT.splitlines()[start:]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    assert len(rows) > 2, f"no table under {after!r}"
    return rows[2:]  # without the header and the rule


def _shown(default: Any) -> str:
    if default is None:
        return "\N{EN DASH}"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return "()"
    return str(default)


def test_the_settings_table_is_the_settings_class() -> None:
    rows = [(name, env, default) for name, env, default, _ in _table("Settings")]
    fields = [(f.name, f.metadata["env"], _shown(f.default)) for f in dataclasses.fields(Settings)]
    assert rows == fields


def test_django_check_ids_follow_the_settings_table() -> None:
    """README: E002…E024, one per setting in the table's order, CLERK_SECRET_KEY first."""
    table = [env for _, env, _, _ in _table("Settings")]
    by_id = sorted(ERROR_IDS.items(), key=lambda item: item[1])
    assert [number for _, number in by_id] == [f"E{n:03d}" for n in range(2, 2 + len(by_id))]
    assert [env for env, _ in by_id] == [env for env in table if env in ERROR_IDS]
    assert by_id[0] == ("CLERK_SECRET_KEY", "E002")
    assert by_id[-1] == ("CLERK_TINYBIRD_MEMO_MB", "E024")


def _outcome(cell: str) -> str:
    reason = re.search(r"`([^`]+)`", cell)
    if cell.startswith("signed in"):
        return "in"
    assert reason is not None, cell
    if cell.startswith("handshake"):
        return f"handshake:{reason.group(1)}"
    assert cell.startswith("signed out"), cell
    return f"out:{reason.group(1)}"


def test_the_handshake_table_is_the_engines() -> None:
    """Each row's outcomes are those ``test_handshake.TABLE`` checks against the engine."""
    rows = _table("The handshake: server-rendered pages stay signed in")
    readme = {case: (_outcome(page), _outcome(other)) for case, _, page, other in rows}
    engine = {case: (page, other) for case, (_, page, other) in test_handshake.TABLE.items()}
    assert readme == engine


def test_every_reason_code_is_documented() -> None:
    codes = set(Reason.MESSAGES) | {
        value
        for name, value in vars(TokenError).items()
        if name.isupper() and isinstance(value, str)
    }
    missing = sorted(code for code in codes if f"`{code}`" not in TEXT)
    assert missing == []


def test_every_metric_instrument_is_documented() -> None:
    source = (SRC / "clerk_tinybird_middleware" / "metrics.py").read_text()
    instruments = set(re.findall(r'create_\w+\(\s*"(clerk_tinybird\.\w+)"', source))
    assert len(instruments) == 4
    assert all(f"`{name}`" in TEXT for name in instruments)


def test_the_performance_table_has_its_markers() -> None:
    """The lead fills in fresh figures between these markers."""
    assert TEXT.count("<!-- bench:start -->") == 1
    assert TEXT.index("<!-- bench:start -->") < TEXT.index("<!-- bench:end -->")
