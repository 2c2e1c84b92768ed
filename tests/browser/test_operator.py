"""The operator pages in Chromium: an admin signs in, opens the statistics dashboard (its
charts are server-rendered SVG) and edits a recognition catalogue item into a new version."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import HubUnderTest
from tests.test_web_auth import PASSWORD, add_user


def sign_in(page: Any, username: str, next_url: str) -> None:
    page.goto(f"/login?next={next_url}")
    page.get_by_label("用户名").fill(username)
    page.get_by_label("密码").fill(PASSWORD)
    page.get_by_role("button", name="登录").click()
    page.wait_for_url(f"**{next_url}")


def test_admin_views_statistics_and_edits_the_catalogue(
    hub: HubUnderTest, page: Any, screenshot: Callable[[Any, str], Path]
) -> None:
    admin = add_user(hub, "admin")
    failed: list[str] = []
    page.on(
        "response",
        lambda response: (
            failed.append(f"{response.status} {response.url}")
            if response.status >= 400 and not response.url.endswith("/favicon.ico")
            else None
        ),
    )
    sign_in(page, admin["username"], "/ops")
    assert page.locator(".ops-tile").count() >= 8
    screenshot(page, "overview")

    page.get_by_role("link", name="统计", exact=True).click()
    page.wait_for_url("**/ops/statistics")
    charts = page.locator("svg.chart")
    assert charts.count() == 4
    # The chart's own title (its data points carry titles of their own when there is data).
    assert charts.first.locator(":scope > title").text_content() == "互认率随时间变化"
    page.get_by_label("统计周期").select_option("week")
    page.get_by_role("button", name="应用").click()
    page.wait_for_url("**period=week**")
    assert page.locator("svg.chart").count() == 4
    screenshot(page, "statistics")

    page.goto("/ops/catalogue")
    page.get_by_label("搜索项目").fill("HbA1c")
    page.get_by_role("button", name="搜索").click()
    page.get_by_role("link", name="hba1c").click()
    page.wait_for_url("**/ops/catalogue/items/hba1c")
    page.get_by_label("价格（元）").fill("55")
    page.get_by_label("本次修改说明").fill("浏览器测试：调整价格")
    screenshot(page, "edit-item")
    page.get_by_role("button", name="保存为新版本").click()
    page.wait_for_url("**done=item-saved**")
    assert page.get_by_role("status").text_content().strip() == "目录项目已保存为新版本。"
    assert page.get_by_label("价格（元）").input_value() == "55"
    page.goto("/ops/catalogue#versions")
    assert page.locator("#catalogue-versions").get_by_text("浏览器测试：调整价格").count() == 1
    screenshot(page, "versions")
    assert not failed, failed  # every asset and page loaded (a favicon is not ours to serve)
    assert not [e for e in page.yijian_errors if "Failed to load resource" not in e]
