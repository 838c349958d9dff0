"""``clerk-tinybird demo``: the installed console script as a subprocess, then the demo wiring
in process (``demo.running``) over real loopback HTTP."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from clerk_tinybird_middleware import demo
from clerk_tinybird_middleware.cli import main
from services import free_port

ALICE, BOB, CAROL, DAVE = "user_alice", "user_bob", "user_carol", "user_dave"


def _script() -> list[str]:
    script = Path(sys.executable).with_name("clerk-tinybird")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "clerk_tinybird_middleware.cli"]


def _wait_until_up(proc: subprocess.Popen[bytes], url: str, log: Path) -> str:
    """Wait for the banner (printed once everything listens) and a first answer; the banner."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the demo exited with {proc.returncode}:\n{log.read_text()}")
        banner = log.read_text()
        if "Press Ctrl+C" in banner:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url, timeout=1).status_code == 200:
                    return banner
        time.sleep(0.1)
    pytest.fail(f"the demo did not answer within 30 s:\n{log.read_text()}")


def sign_in(run: demo.Demo, client: httpx.Client, user: str, org: str = "") -> httpx.Response:
    """What the sign-in page's buttons do: post to FakeClerk's Frontend API, then follow the
    redirects back to the app (nonce → cookies → the clean URL), as a browser would."""
    person = next(u for u in demo.USERS if u.id == user)
    form = demo.sign_in_fields(person, org, f"{client.base_url}/")
    return client.post(run.routes.sign_in_action, data=form, follow_redirects=True)


def sign_out(run: demo.Demo, client: httpx.Client) -> httpx.Response:
    """What the dashboard's "Sign out" button does."""
    form = {"redirect_url": f"{client.base_url}/"}
    return client.post(run.routes.sign_out_action, data=form, follow_redirects=True)


def age_session(run: demo.Demo, client: httpx.Client, seconds: int = 120) -> str:
    """The browser comes back after ``seconds``: its ``__session`` (same session, same
    client) was issued that long ago and has expired. Instead of sleeping, the token is aged."""
    sid = run.clerk.frontend.session_of(client.cookies.get("__client"))
    assert sid is not None
    token = run.clerk.session_token(
        "user_alice",
        org={"id": "org_acme", "slug": "acme", "role": "admin"},
        session_id=sid,
        now=int(time.time()) - seconds,
        azp=str(client.base_url),
    )
    client.cookies.set("__session", token, domain="127.0.0.1", path="/")
    return token


def pipe_rows(tinybird_url: str, token: str, **params: str) -> list[dict[str, object]]:
    """What the dashboard's script does: query the pipe from the browser with the token."""
    answer = httpx.get(
        f"{tinybird_url}/v0/pipes/{demo.PIPE}.json",
        params=params,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.text
    data: list[dict[str, object]] = answer.json()["data"]
    return data


# -- the console script --------------------------------------------------------------------------


@pytest.mark.slow
def test_console_script_serves_sign_in_dashboard_and_pipe(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with (
        log.open("wb") as out,
        subprocess.Popen(
            [*_script(), "demo", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT
        ) as proc,
    ):
        try:
            base = f"http://127.0.0.1:{port}"
            banner = _wait_until_up(proc, base + demo.SIGN_IN_PATH, log)
            tinybird_url = re.search(r"FakeTinybird\s+(http://127\.0\.0\.1:\d+)", banner)
            assert tinybird_url is not None, banner
            assert f"{base}/" in banner

            with httpx.Client(base_url=base) as client:
                page = client.get(demo.SIGN_IN_PATH)
                assert page.status_code == 200
                assert 'data-user="alice"' in page.text
                clerk_url = re.search(r"FakeClerk\s+(http://127\.0\.0\.1:\d+)", banner)
                assert clerk_url is not None, banner
                assert f'action="{clerk_url.group(1)}/v1/client/sign_in"' in page.text

                person = demo.USERS[0]
                form = demo.sign_in_fields(person, "acme", base + "/")
                posted = client.post(f"{clerk_url.group(1)}/v1/client/sign_in", data=form)
                assert posted.status_code == 303
                signed_in = client.get(posted.headers["location"], follow_redirects=True)
                assert signed_in.status_code == 200
                assert {"__session", "__client_uat", "__client"} <= set(client.cookies)

                dashboard = client.get("/")
                assert dashboard.status_code == 200
                assert 'fetch("/api/token"' in dashboard.text
                assert dashboard.headers["cache-control"] == "private, no-store"

                token = client.get("/api/token").headers["x-tinybird-token"]
                rows = pipe_rows(tinybird_url.group(1), token)
                assert rows
                assert {row["org"] for row in rows} == {"acme"}

                hits = client.get("/api/hits")  # the same pipe, queried by the app server side
                assert hits.status_code == 200
                assert hits.json()["data"] == rows
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=20)
    assert code == 0, log.read_text()
    assert "stopped" in log.read_text()


def test_console_script_reports_a_busy_port(capsys: pytest.CaptureFixture[str]) -> None:
    with demo.running() as run:  # holds a port
        port = run.url.rsplit(":", 1)[1]
        assert main(["demo", "--port", port]) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# -- the demo wiring, in process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def running() -> Iterator[demo.Demo]:
    with demo.running() as run:
        yield run


@pytest.fixture
def client(running: demo.Demo) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url) as http:
        yield http


@pytest.mark.parametrize(
    ("user", "org"),
    [
        pytest.param(ALICE, "acme", id="alice-acme"),
        pytest.param(ALICE, "globex", id="alice-globex"),
        pytest.param(BOB, "acme", id="bob-acme"),
        pytest.param(CAROL, "initech", id="carol-initech"),
    ],
)
def test_each_tenant_sees_only_its_rows_even_when_asking_for_another(
    running: demo.Demo, client: httpx.Client, user: str, org: str
) -> None:
    assert sign_in(running, client, user, org).status_code == 200
    answer = client.get("/api/token")

    info = answer.json()
    assert (info["signed_in"], info["user_id"], info["org_slug"]) == (True, user, org)
    token = answer.headers["x-tinybird-token"]
    own = pipe_rows(running.tinybird.api_url, token)
    assert own
    assert {row["org"] for row in own} == {org}
    other = "globex" if org != "globex" else "acme"
    assert pipe_rows(running.tinybird.api_url, token, org=other) == own


def test_a_personal_account_gets_no_token_tenant_missing(
    running: demo.Demo, client: httpx.Client
) -> None:
    sign_in(running, client, DAVE)
    answer = client.get("/api/token")

    assert answer.json()["signed_in"] is True
    assert answer.json()["tinybird_token_error"] == "tenant-missing"
    assert "x-tinybird-token" not in answer.headers
    unavailable = client.get("/api/hits")
    assert unavailable.status_code == 503
    assert unavailable.json()["detail"]["reason"] == "tenant-missing"


def test_signing_out_leaves_no_token(running: demo.Demo, client: httpx.Client) -> None:
    sign_in(running, client, ALICE, "acme")
    assert "x-tinybird-token" in client.get("/api/token").headers

    out = sign_out(running, client)
    assert out.status_code == 200
    assert [r.status_code for r in out.history] == [303, 307]  # Frontend API, clean URL
    assert client.cookies.get("__client_uat") == "0"
    answer = client.get("/api/token")

    assert answer.json()["signed_in"] is False
    assert answer.json()["reason"] == "session-token-and-uat-missing"  # as after a Clerk sign-out
    assert "x-tinybird-token" not in answer.headers
    assert client.get("/api/me").status_code == 401


@pytest.mark.parametrize(
    ("user", "org", "status"),
    [
        pytest.param(ALICE, "acme", 200, id="admin"),
        pytest.param(ALICE, "globex", 403, id="member"),
        pytest.param(CAROL, "", 403, id="no-org"),
    ],
)
def test_org_admin_endpoint(
    running: demo.Demo, client: httpx.Client, user: str, org: str, status: int
) -> None:
    sign_in(running, client, user, org)
    assert client.get("/api/org").status_code == status


def test_me_reports_the_verified_session(running: demo.Demo, client: httpx.Client) -> None:
    sign_in(running, client, CAROL, "globex")
    me = client.get("/api/me").json()

    assert me["user_id"] == CAROL
    assert me["org_role"] == "org:admin"
    assert "org:reports:manage" in me["org_permissions"]


def test_cross_origin_pages_may_read_both_token_headers(
    running: demo.Demo, client: httpx.Client
) -> None:
    sign_in(running, client, BOB, "acme")
    answer = client.get("/api/token", headers={"Origin": "http://localhost:3000"})

    assert answer.headers["access-control-allow-origin"] == "http://localhost:3000"
    exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].split(",")}
    assert {"x-tinybird-token", "x-tinybird-token-expires-at"} <= exposed


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("POST", demo.SIGN_IN_PATH, 405, id="sign-in-is-the-frontend-apis"),
        pytest.param("GET", "/dev/elsewhere", 404, id="unknown-dev-path"),
    ],
)
def test_dev_routes_reject_bad_requests(
    client: httpx.Client, method: str, path: str, status: int
) -> None:
    answer = client.request(method, path, data={"user": ALICE})
    assert answer.status_code == status
    assert [c for c in answer.headers.get_list("set-cookie") if "__session" in c] == []


def test_sign_in_refuses_a_user_outside_the_org() -> None:
    bob = next(u for u in demo.USERS if u.id == BOB)
    with pytest.raises(demo.DemoError, match="not a member"):
        demo.sign_in_fields(bob, "globex", "http://127.0.0.1/")


def test_the_sign_in_page_sends_the_browser_back_to_its_own_origin(
    running: demo.Demo,
) -> None:
    port = running.url.rsplit(":", 1)[1]
    for host, back in [
        (f"localhost:{port}", f"http://localhost:{port}/"),
        ("evil.example", f"{running.url}/"),  # not one of the demo's origins
    ]:
        page = httpx.get(running.sign_in_url, headers={"host": host})
        assert f'name="redirect_url" value="{back}"' in page.text


@pytest.mark.token_in_url  # the stale __session rides in the handshake URL, which httpx logs
def test_a_stale_page_is_refreshed_by_the_handshake_and_reported(
    running: demo.Demo, client: httpx.Client
) -> None:
    sign_in(running, client, ALICE, "acme")
    assert client.get(demo.HANDSHAKE_PATH).json() == {"handshake": None}  # sign-in is not one
    stale = age_session(running, client)

    page = client.get("/", headers={"accept": "text/html"}, follow_redirects=True)

    assert page.status_code == 200
    assert [r.status_code for r in page.history] == [307, 307, 307]
    assert page.headers["x-tinybird-token"]
    assert client.cookies.get("__session") != stale
    trip = client.get(demo.HANDSHAKE_PATH).json()["handshake"]
    assert trip["reason"] == "session-token-expired-refresh-non-eligible-no-refresh-cookie"
    assert trip["redirects"] == 3
    assert 0 < trip["ms"] < 30_000
    # fetch requests are never redirected: an expired cookie is just signed out
    age_session(running, client)
    api = client.get("/api/token")
    assert (api.status_code, api.json()["reason"]) == (200, "token-expired")


def test_handshake_watch_counts_one_trip_per_browser() -> None:
    clock = iter([10.0, 10.25]).__next__
    watch = demo.HandshakeWatch("http://clerk.test", clock=clock)
    to_clerk = "http://clerk.test/v1/client/handshake?redirect_url=x&__clerk_hs_reason=why"
    watch.response("b1", 307, to_clerk)
    watch.response("b2", 200, None)  # another browser
    watch.request("b1", "__clerk_handshake_nonce=n")
    watch.response("b1", 307, "http://app.test/")
    assert watch.last("b1") is None
    watch.response("b1", 200, None)

    trip = watch.last("b1")
    assert trip is not None
    assert (trip.reason, trip.redirects, trip.milliseconds) == ("why", 3, 250.0)
    assert watch.last("b2") is None


def test_the_health_check_skips_the_middleware(running: demo.Demo, client: httpx.Client) -> None:
    sign_in(running, client, ALICE, "acme")
    health = client.get("/health")
    assert health.json() == {"status": "ok"}
    assert "x-tinybird-token" not in health.headers


@pytest.mark.parametrize(
    ("app", "source"),
    [
        pytest.param("starlette", "local", id="starlette-local-minting"),
        pytest.param("flask", "template", id="flask-template"),
    ],
)
def test_other_variants_hand_out_tenant_tokens(app: demo.AppKind, source: demo.SourceKind) -> None:
    if app == "flask":
        pytest.importorskip("flask")
    with demo.running(app, source=source) as run, httpx.Client(base_url=run.url) as client:
        assert client.get(demo.SIGN_IN_PATH).status_code == 200
        sign_in(run, client, CAROL, "globex")
        token = client.get("/").headers["x-tinybird-token"]
        rows = pipe_rows(run.tinybird.api_url, token)
    assert rows
    assert {row["org"] for row in rows} == {"globex"}
    template_calls = run.clerk.calls["template"]
    assert template_calls == (0 if source == "local" else 1)


def test_pipe_requires_an_org_like_a_well_written_pipe() -> None:
    rows = demo.seed_rows(days=3)
    assert {row["org"] for row in rows} == {org.slug for org in demo.ORGS}
    assert [row for row in rows if demo.pipe_filter(row, {})] == []
    assert [row for row in rows if demo.pipe_filter(row, {"user": ALICE})] == []
    assert all(row["org"] == "acme" for row in rows if demo.pipe_filter(row, {"org": "acme"}))


def test_the_examples_load_under_their_wheel_name_from_a_checkout() -> None:
    module = demo.load_example("flask")
    assert module.__name__ == "clerk_tinybird_middleware.examples.flask_app.app"
    assert callable(module.create_app)


def test_a_missing_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    real = importlib.import_module

    def without_fastapi(name: str, package: str | None = None) -> object:
        if name.endswith("starlette_app.app"):
            raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")
        return real(name, package)

    monkeypatch.setattr(importlib, "import_module", without_fastapi)
    with pytest.raises(demo.DemoError, match=r"clerk-tinybird-middleware\[fastapi\]"):
        demo.load_example("starlette")


def test_unknown_app_or_source_is_a_clear_error() -> None:
    with pytest.raises(demo.DemoError, match="unknown app"), demo.running("rails"):  # type: ignore[arg-type]
        pass
    with (
        pytest.raises(demo.DemoError, match="unknown token source"),
        demo.running(
            source="magic"  # type: ignore[arg-type]
        ),
    ):
        pass
