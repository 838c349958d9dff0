"""The demo in a real headless Chromium (Debian's, driven by Playwright; no browser download):
sign in through FakeClerk's Frontend API as a user of org A → only A's rows; switch to org B →
only B's; sign out → no token and no rows; a reload after the session token expired goes
through one handshake and stays signed in. Screenshots at 1280 and 420 px go to ``artifacts/``
(git-ignored)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clerk_tinybird_middleware import demo
from leaks import summary
from services import need_binary

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser_page() -> Iterator[tuple[Any, list[str]]]:
    """A fresh page in Debian's chromium, and the console errors / failed requests it logs."""
    chromium = need_binary("chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.on(
                "console",
                lambda msg: problems.append(msg.text) if msg.type == "error" else None,
            )
            page.on("pageerror", lambda error: problems.append(str(error)))
            yield page, problems
            context.close()
        finally:
            browser.close()


def _sign_in(page: Any, run: demo.Demo, user: str, org: str) -> None:
    """Click the user's button: a form posted to FakeClerk's Frontend API, which sends the
    browser back to the dashboard through the handshake nonce."""
    page.goto(run.sign_in_url)
    with page.expect_navigation(url=run.url + "/"):
        page.click(f'button[data-user="{user}"][data-org="{org}"]')
    page.wait_for_selector("#rows tbody tr")


def _row_orgs(page: Any) -> set[str]:
    orgs: list[str] = page.eval_on_selector_all(
        "#rows tbody tr", "rows => rows.map(r => r.dataset.org)"
    )
    return set(orgs)


def _age_session(page: Any, run: demo.Demo, seconds: int = 120) -> str:
    """The user comes back after a coffee: the browser's ``__session`` (same client, same
    session) was issued ``seconds`` ago and has expired. The token is aged rather than the test
    sleeping through a real 60-second lifetime."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies(run.url)}
    session_id = run.clerk.frontend.session_of(cookies["__client"])
    assert session_id is not None
    token = run.clerk.session_token(
        "user_alice",
        org={"id": "org_acme", "slug": "acme", "role": "admin"},
        session_id=session_id,
        now=int(time.time()) - seconds,
        azp=run.url,
    )
    page.context.add_cookies([{"name": "__session", "value": token, "url": run.url}])
    return token


def _redirects(response: Any) -> list[str]:
    """The URLs a navigation was redirected through, first to last."""
    hops: list[str] = []
    request = response.request.redirected_from
    while request is not None:
        hops.insert(0, request.url)
        request = request.redirected_from
    return hops


_OVERLAPS = """svg => {
  const boxes = (sel) => [...svg.querySelectorAll(sel)].map((e) => e.getBoundingClientRect());
  const hit = (a, b) =>
    a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  let n = 0;
  for (const t of boxes("text")) for (const r of boxes("rect")) if (hit(t, r)) n++;
  return n;
}"""


def _shoot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_dashboard_shows_only_the_active_tenants_rows(
    browser_page: tuple[Any, list[str]],
) -> None:
    page, problems = browser_page
    expect = pytest.importorskip("playwright.sync_api").expect
    ARTIFACTS.mkdir(exist_ok=True)
    with demo.running() as run:
        page.goto(run.sign_in_url)
        _shoot(page, "demo-sign-in.png")

        # Org A.
        _sign_in(page, run, "alice", "acme")
        expect(page.locator("#session-status")).to_have_text("Signed in")
        expect(page.locator("#session-org")).to_have_text("acme (org_acme)")
        assert _row_orgs(page) == {"acme"}
        expect(page.locator("#token")).not_to_be_empty()
        expect(page.locator("#claims")).to_contain_text('"org": "acme"')
        expect(page.locator("#chart rect").first).to_be_visible()
        expect(page.locator("#pins-note")).to_contain_text("org=acme, user=user_alice")
        assert page.eval_on_selector("#chart", _OVERLAPS) == 0

        # Asking Tinybird for another org from the browser still returns org A's rows; the
        # box offers another org than one's own, and says so when asked for one's own.
        expect(page.locator("#tamper-org")).to_have_value("globex")
        page.click("#tamper")
        expect(page.locator("#tamper-result")).to_contain_text("for org acme")
        expect(page.locator("#tamper-result")).to_contain_text("fixed_params won")
        page.fill("#tamper-org", "acme")
        page.click("#tamper")
        expect(page.locator("#tamper-result")).to_contain_text("your own org")
        _shoot(page, "demo-dashboard-acme-1280.png")

        # Switch to org B.
        _sign_in(page, run, "alice", "globex")
        expect(page.locator("#session-org")).to_have_text("globex (org_globex)")
        assert _row_orgs(page) == {"globex"}
        expect(page.locator("#claims")).to_contain_text('"org": "globex"')
        expect(page.locator("#tamper-org")).to_have_value("acme")

        # Narrow: the chip stays on one line, nothing overflows sideways.
        page.set_viewport_size({"width": 420, "height": 900})
        page.reload()
        page.wait_for_selector("#rows tbody tr")
        chip = page.locator("#session-status").bounding_box()
        assert chip is not None
        assert chip["height"] < 32, chip
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 420, width
        _shoot(page, "demo-dashboard-globex-420.png")
        page.goto(run.sign_in_url)
        _shoot(page, "demo-sign-in-420.png")
        page.set_viewport_size({"width": 1280, "height": 900})

        # Sign out (through the Frontend API, back to the dashboard).
        page.goto(run.url + "/")
        page.wait_for_selector("#rows tbody tr")
        with page.expect_navigation(url=run.url + "/"):
            page.click("#sign-out")
        expect(page.locator("#session-status")).to_have_text("Signed out")
        expect(page.locator("#rows-status")).to_contain_text("no token")
        assert page.text_content("#token") == ""
        assert page.query_selector_all("#rows tbody tr") == []
        assert page.is_hidden("#rows-panel")
        assert page.is_hidden("#claims-panel")  # no empty "Decoded claims" heading
        _shoot(page, "demo-signed-out-1280.png")

        # The rows really came from the browser, straight to (fake) Tinybird, with a JWT.
        browser_calls = [c for c in run.tinybird.calls if c.status == 200]
    assert {c.params.get("org") for c in browser_calls} == {"acme", "globex"}
    assert {c.token_kind for c in browser_calls} == {"jwt"}
    assert problems == []


def test_a_page_reloaded_after_the_session_expired_stays_signed_in(
    browser_page: tuple[Any, list[str]], request: pytest.FixtureRequest
) -> None:
    """Issue 15: the 60-second session cookie has gone stale; a reload goes through exactly
    one handshake round trip and renders signed in, with a new session and a Tinybird token."""
    page, problems = browser_page
    expect = pytest.importorskip("playwright.sync_api").expect
    ARTIFACTS.mkdir(exist_ok=True)
    with demo.running() as run:
        _sign_in(page, run, "alice", "acme")
        expect(page.locator("#handshake")).to_contain_text("none yet")
        stale = _age_session(page, run)
        run.clerk.reset_calls()

        started = time.perf_counter()
        response = page.reload()
        page.wait_for_selector("#rows tbody tr")
        elapsed = (time.perf_counter() - started) * 1000

        hops = _redirects(response)
        assert len(hops) == 3, hops  # app → Frontend API → app (nonce) → the clean URL
        assert hops[1].startswith(run.clerk.api_url + "/v1/client/handshake?")
        assert response.url == run.url + "/"
        assert run.clerk.calls["handshake"] == 1
        assert run.clerk.calls["handshake_payload"] == 1
        token = response.headers.get("x-tinybird-token")
        assert token, "the reloaded page had no Tinybird token"
        cookies = {c["name"]: c["value"] for c in page.context.cookies(run.url)}
        assert cookies["__session"] != stale
        expect(page.locator("#session-status")).to_have_text("Signed in")
        expect(page.locator("#token")).not_to_be_empty()
        expect(page.locator("#handshake")).to_contain_text("3 redirects")
        trip = page.evaluate("fetch('/dev/handshake').then(r => r.json())")["handshake"]
        assert trip["redirects"] == 3
        _shoot(page, "demo-after-handshake-1280.png")
    assert problems == []
    summary(request.config).add(
        "handshake in Chromium",
        f"reload after the session expired: {len(hops)} redirects, handshake round trip "
        f"{trip['ms']:.1f} ms (server side), reload to rows {elapsed:.0f} ms, "
        f"Tinybird token on the reloaded page: yes",
    )
