"""The demo in a real headless Chromium (Debian's, driven by Playwright; no browser download):
sign in as a user of org A → only A's rows; switch to org B → only B's; sign out → no token and
no rows. Screenshots go to ``artifacts/`` (git-ignored)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clerk_tinybird_middleware import demo
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
    page.goto(run.sign_in_url)
    with page.expect_navigation(url=run.url + "/"):
        page.click(f'button[data-user="{user}"][data-org="{org}"]')
    page.wait_for_selector("#rows tbody tr")


def _row_orgs(page: Any) -> set[str]:
    orgs: list[str] = page.eval_on_selector_all(
        "#rows tbody tr", "rows => rows.map(r => r.dataset.org)"
    )
    return set(orgs)


def test_dashboard_shows_only_the_active_tenants_rows(
    browser_page: tuple[Any, list[str]],
) -> None:
    page, problems = browser_page
    expect = pytest.importorskip("playwright.sync_api").expect
    ARTIFACTS.mkdir(exist_ok=True)
    with demo.running() as run:
        page.goto(run.sign_in_url)
        page.screenshot(path=str(ARTIFACTS / "demo-sign-in.png"), full_page=True)

        # Org A.
        _sign_in(page, run, "alice", "acme")
        expect(page.locator("#session-status")).to_have_text("Signed in")
        expect(page.locator("#session-org")).to_have_text("acme (org_acme)")
        assert _row_orgs(page) == {"acme"}
        expect(page.locator("#token")).not_to_be_empty()
        expect(page.locator("#claims")).to_contain_text('"org": "acme"')
        expect(page.locator("#chart rect").first).to_be_visible()

        # Asking Tinybird for another org from the browser still returns org A's rows.
        page.fill("#tamper-org", "globex")
        page.click("#tamper")
        expect(page.locator("#tamper-result")).to_contain_text("for org acme")
        page.screenshot(path=str(ARTIFACTS / "demo-dashboard-acme.png"), full_page=True)

        # Switch to org B.
        _sign_in(page, run, "alice", "globex")
        expect(page.locator("#session-org")).to_have_text("globex (org_globex)")
        assert _row_orgs(page) == {"globex"}
        expect(page.locator("#claims")).to_contain_text('"org": "globex"')

        # Sign out.
        with page.expect_navigation(url=run.url + "/"):
            page.click("#sign-out")
        expect(page.locator("#session-status")).to_have_text("Signed out")
        expect(page.locator("#rows-status")).to_contain_text("no token")
        assert page.text_content("#token") == ""
        assert page.query_selector_all("#rows tbody tr") == []
        assert page.is_hidden("#rows-panel")
        page.screenshot(path=str(ARTIFACTS / "demo-signed-out.png"), full_page=True)

        # The rows really came from the browser, straight to (fake) Tinybird, with a JWT.
        browser_calls = [c for c in run.tinybird.calls if c.status == 200]
    assert {c.params.get("org") for c in browser_calls} == {"acme", "globex"}
    assert {c.token_kind for c in browser_calls} == {"jwt"}
    assert problems == []
