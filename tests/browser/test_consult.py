"""A consultation in Chromium: the doctor shares one result with a consultant, the consultant
sees exactly it, and once the grant has expired the consultant's page shows that access has
ended. Screenshots of each step are kept under test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import off_the_test_thread
from tests.conftest import Client, HubUnderTest
from tests.test_consult_pages import add_user, db, person_at_a_and_b
from tests.test_web_auth import PASSWORD


@pytest.fixture(scope="module")
def scene(hub: HubUnderTest, hospital_a: Client, hospital_b: Client) -> dict[str, str]:
    """A doctor at B, a consultant at A, and a person registered at both with two results."""
    record = person_at_a_and_b(hospital_a, hospital_b)
    return {
        "doctor": add_user(hub, "doctor", hub.org_b, "李医生"),
        "consultant": add_user(hub, "consultant", hub.org_a, "张专家"),
        "patient": record["b"],
        "shared": record["shared"],
        "other": record["other"],
    }


def sign_in(page: Any, username: str) -> None:
    page.goto("/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state("load")
    assert "/login" not in page.url, page.content()[:1000]


def test_consult_share_and_expiry(
    browser: Any,
    page: Any,
    hub: HubUnderTest,
    scene: dict[str, str],
    screenshot: Callable[[Any, str], Path],
) -> None:
    sign_in(page, scene["doctor"])
    page.goto(f"/consults/new?patient={scene['patient']}")
    shared_box = page.locator(f'input[name="items"][value="Observation/{scene["shared"]}"]')
    other_box = page.locator(f'input[name="items"][value="Observation/{scene["other"]}"]')
    assert shared_box.is_visible() and other_box.is_visible()
    page.select_option("#consultant", f"user:{scene['consultant']}")
    page.fill("#question", "请协助判读贫血原因")
    shared_box.check()
    page.check('input[name="consent_confirmed"]')
    assert page.locator("#expiry_hours").input_value() == "72"
    screenshot(page, "1-doctor-form")
    page.click("button[type=submit].primary")
    page.wait_for_url(re.compile(r".*/consults/[0-9a-f-]{36}$"))
    consult_url = page.url
    assert page.locator('[data-status="active"]').is_visible()
    screenshot(page, "2-doctor-consult")

    context = browser.new_context(
        base_url=hub.base_url, locale="zh-CN", viewport={"width": 1280, "height": 800}
    )
    try:
        consultant = context.new_page()
        sign_in(consultant, scene["consultant"])
        assert consultant.url.endswith("/consults")
        consultant.click(f'a[href="{consult_url.removeprefix(hub.base_url)}"]')
        consultant.wait_for_load_state("load")
        rows = consultant.locator("table.labs tbody tr")
        assert rows.count() == 1
        assert rows.first.get_attribute("data-key") == f"Observation/{scene['shared']}"
        assert rows.first.locator("td.value").inner_text() == "9.8"
        assert rows.first.locator(".flag").inner_text() == "L"
        assert consultant.locator("#reply-text").is_visible()
        screenshot(consultant, "3-consultant-shared-record")

        consult_id = consult_url.rsplit("/", 1)[1]
        off_the_test_thread(
            db,
            hub,
            "UPDATE consult SET created_at = now() - interval '2 days', "
            "expires_at = now() - interval '1 second' WHERE id = $1::uuid",
            consult_id,
        )
        consultant.reload()
        ended = consultant.locator(".access-ended")
        assert ended.is_visible()
        assert "授权已结束" in ended.inner_text()
        assert consultant.locator("table.labs").count() == 0
        assert consultant.locator("#reply-text").count() == 0
        assert consultant.locator('[data-status="expired"]').is_visible()
        screenshot(consultant, "4-consultant-access-ended")
    finally:
        context.close()
