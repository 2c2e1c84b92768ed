"""The operator pages (/ops) through HTTP against the running hub: each renders for an admin
and is refused to a doctor; one state-changing action per page, checked through the same
services' JSON APIs or the page itself."""

from __future__ import annotations

import re

import pytest

from tests.conftest import HubUnderTest
from tests.test_web_auth import Browser, add_user

PAGES = (
    "/ops",
    "/ops/hospitals",
    "/ops/unmapped",
    "/ops/dead-letters",
    "/ops/identity",
    "/ops/catalogue",
    "/ops/statistics",
)


@pytest.fixture(scope="module")
def operator(hub: HubUnderTest) -> Browser:
    """A signed-in admin."""
    user = add_user(hub, "admin")
    browser = Browser(hub.base_url)
    assert browser.login(user["username"]).status_code == 303
    return browser


@pytest.fixture(scope="module")
def physician(hub: HubUnderTest) -> Browser:
    user = add_user(hub, "doctor")
    browser = Browser(hub.base_url)
    assert browser.login(user["username"]).status_code == 303
    return browser


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


@pytest.mark.parametrize("path", PAGES)
def test_page_renders_for_an_admin_in_both_languages(operator: Browser, path: str) -> None:
    page = operator.get(path)
    assert page.status_code == 200, page.text[:2000]
    assert "运维" in page.text
    operator.get("/lang/en?next=/")
    try:
        english = operator.get(path)
        assert english.status_code == 200
        assert 'lang="en"' in english.text
    finally:
        operator.get("/lang/zh-CN?next=/")


@pytest.mark.parametrize("path", PAGES)
def test_page_is_refused_to_a_doctor(physician: Browser, path: str) -> None:
    page = physician.get(path)
    assert page.status_code == 403
    assert "text/html" in page.headers["content-type"]


def test_pages_need_a_login(hub: HubUnderTest) -> None:
    page = Browser(hub.base_url).get("/ops/statistics")
    assert page.status_code == 303
    assert page.headers["location"].startswith("/login?next=/ops/statistics")
