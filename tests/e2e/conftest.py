"""A real browser: Debian's Chromium driven by Playwright's sync API.

One browser for the e2e package, a fresh context (cookies, storage) per test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = os.environ.get("SLIPWAY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PASSWORD = "correct horse battery staple"  # tests.factories.UserFactory's

# Set SLIPWAY_E2E_SHOTS=/some/dir to keep a screenshot of every page the tests visit.
SHOTS = Path(os.environ["SLIPWAY_E2E_SHOTS"]) if os.environ.get("SLIPWAY_E2E_SHOTS") else None


@pytest.fixture(scope="package")
def browser() -> Browser:
    # Playwright's sync API keeps an asyncio loop marked "running" on this thread
    # while it is started, and Django then refuses ORM calls from the test body
    # as if they came from a coroutine. They do not: the test body is plain
    # blocking code. So allow them, only while the browser lives, and stop
    # Playwright when this package ends so the rest of the suite is untouched.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            yield browser
            browser.close()


@pytest.fixture
def page(browser: Browser, live_server) -> Page:
    """A fresh browser context that may only talk to the live server: pages must work offline."""
    context = browser.new_context(
        base_url=live_server.url, accept_downloads=True, viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(15_000)
    elsewhere: list[str] = []

    def only_the_live_server(route):
        if route.request.url.startswith(live_server.url):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_live_server)
    page = context.new_page()
    script_errors: list[str] = []
    page.on("pageerror", lambda exc: script_errors.append(str(exc)))
    yield page
    context.close()
    assert not elsewhere, f"pages asked for something beyond the server (no CDN, nothing online): {elsewhere}"
    assert not script_errors, f"uncaught JavaScript errors: {script_errors}"


def log_in(page: Page, user) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(user.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Models", level=1)).to_be_visible()


def shoot(page: Page, name: str, *, full_page: bool = True) -> None:
    if SHOTS is not None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SHOTS / f"{name}.png", full_page=full_page)


def watch_polls(page: Page, path_part: str) -> list[int]:
    """The status codes of htmx refreshes whose URL contains path_part, as they arrive."""
    statuses: list[int] = []
    page.on("response", lambda response: path_part in response.url and statuses.append(response.status))
    return statuses
