"""Browser test fixtures: Debian's Chromium driven by Playwright, pages on the session hub,
and screenshots kept under ``test-artifacts/screenshots/``.

Playwright's own browser downloads are never used (they cannot be fetched here): the browser
is ``/usr/bin/chromium`` (``apt-get install chromium``; ``make test`` and ``.ci/run`` install
it). Without it these tests are skipped with that instruction.

* ``browser`` (per module): one headless Chromium. Not per session: while Playwright's sync
  API runs, its event loop is the test thread's running loop, so ``asyncio.run`` (used by
  fixtures and helpers such as ``tests.imaging_support.query``) fails in that thread. The hub
  is started first, and in a browser test run such helpers through ``off_the_test_thread``.
* ``page``: a new context per test (``base_url`` = the session hub's URL, locale zh-CN), so
  ``page.goto("/...")`` reaches the hub; console errors and page errors are collected on
  ``page.yijian_errors``. When the test fails, a screenshot of the page is saved too.
* ``screenshot``: ``screenshot(page, "step")`` saves ``<test name>--<step>.png`` and returns
  its path. Keep one per step that matters.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HubUnderTest

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"


def off_the_test_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` in another thread (which has no running event loop), for
    code that calls ``asyncio.run`` while Playwright runs in the test thread."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function, *args, **kwargs).result()


def _file_name(test: str, step: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{test}--{step}")[:150] + ".png"


def save_screenshot(page: Any, test: str, step: str) -> Path:
    """A full-page PNG of ``page`` under test-artifacts/screenshots/ (created)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / _file_name(test, step)
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item, so ``page`` knows whether the test failed."""
    report = yield
    setattr(item, f"yijian_report_{report.when}", report)
    return report


@pytest.fixture(scope="module")
def browser(hub: HubUnderTest) -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.skip(
            "Debian chromium is not installed: run 'apt-get install chromium' (make test and "
            ".ci/run install it); Playwright's own browser downloads are not used"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is missing: run 'make venv' (a dev dependency)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, hub: HubUnderTest, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(
        base_url=hub.base_url, locale="zh-CN", viewport={"width": 1280, "height": 800}
    )
    context.set_default_timeout(30_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    opened.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    opened.yijian_errors = errors
    try:
        yield opened
    finally:
        report = getattr(request.node, "yijian_report_call", None)
        if report is not None and report.failed:
            try:
                path = save_screenshot(opened, request.node.name, "failure")
                print(f"\nscreenshot of the failure: {path}")
            except Exception as error:  # the page may be gone; the failure itself matters
                print(f"\nno failure screenshot: {error}")
            if errors:
                print("browser console errors:\n  " + "\n  ".join(errors[-20:]))
        context.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest) -> Callable[[Any, str], Path]:
    """``screenshot(page, step)``: a PNG named after the test and the step."""

    def take(page: Any, step: str) -> Path:
        return save_screenshot(page, request.node.name, step)

    return take
