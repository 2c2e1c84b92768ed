"""The operator pages (/ops) through HTTP against the running hub: each renders for an admin
and is refused to a doctor; one state-changing action per page, checked through the same
services' JSON APIs or the page itself."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import httpx
import pytest

from tests.conftest import Client, HubUnderTest, unique
from tests.identity_support import create, fresh_people, reviews_of, source
from tests.identity_support import person as identity_person
from tests.oru import Person, oru
from tests.test_web_auth import Browser, add_user

HL7 = {"Content-Type": "x-application/hl7-v2+er7"}

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


# -- actions ---------------------------------------------------------------------------------


def post_form(browser: Browser, page: str, action: str, data: dict[str, Any]) -> httpx.Response:
    """Submit a form of ``page`` (its CSRF token) to ``action``."""
    token = csrf_of(browser.get(page).text)
    return browser.post(action, data={"csrf_token": token, **data})


def admin_json(hub: HubUnderTest, admin: Client, path: str, **params: Any) -> Any:
    response = admin.http.get(hub.base_url + path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_register_a_hospital_and_a_feed(hub: HubUnderTest, operator: Browser) -> None:
    code = "H-OPS-" + unique()
    done = post_form(
        operator,
        "/ops/hospitals",
        "/ops/hospitals",
        {"name": "测试县人民医院", "system": "https://yijian.example/hospital", "value": code},
    )
    assert done.status_code == 303, done.text[:2000]
    page = operator.get(done.headers["location"])
    assert "医院已登记" in page.text and code in page.text
    again = post_form(
        operator,
        "/ops/hospitals",
        "/ops/hospitals",
        {"name": "测试县人民医院", "system": "https://yijian.example/hospital", "value": code},
    )
    assert again.headers["location"].endswith("done=hospital-exists")
    missing = post_form(
        operator,
        "/ops/hospitals",
        "/ops/hospitals/feeds",
        {"organization": "no-such-org", "sending_facility": "X"},
    )
    assert missing.status_code == 422 and "no-such-org" in missing.text


@pytest.fixture(scope="module")
def ops_feed(hub: HubUnderTest, operator: Browser, admin: Client) -> str:
    """A feed registered on the page, without PID-3 authorities: messages dead-letter."""
    feed = "ops-" + unique()
    done = post_form(
        operator,
        "/ops/hospitals",
        "/ops/hospitals/feeds",
        {
            "organization": hub.org_b,
            "sending_facility": feed.upper(),
            "feed_id": feed,
            "encoding": "gbk",
            "name": "运维测试 LIS",
        },
    )
    assert done.status_code == 303, done.text[:2000]
    feeds = admin_json(hub, admin, "/admin/feeds")["feeds"]
    assert feed in {f["feed"] for f in feeds}
    return feed


def send(hub: HubUnderTest, hospital: Client, feed: str, message: bytes) -> httpx.Response:
    return hospital.http.post(f"{hub.base_url}/ingest/{feed}", content=message, headers=HL7)


def person() -> Person:
    return Person("M" + unique()[:8], "欧阳娜娜", "F", "19860314")


def fix_feed(operator: Browser, hub: HubUnderTest, feed: str) -> None:
    done = post_form(
        operator,
        "/ops/hospitals",
        "/ops/hospitals/feeds",
        {
            "organization": hub.org_b,
            "sending_facility": feed.upper(),
            "feed_id": feed,
            "encoding": "gbk",
            "authorities": f"{feed.upper()}=mrn",
        },
    )
    assert done.status_code == 303, done.text[:2000]


def test_dead_letter_shown_raw_then_replayed_and_another_dismissed(
    hub: HubUnderTest, operator: Browser, hospital_b: Client, admin: Client, ops_feed: str
) -> None:
    letters = []
    for _ in range(2):
        message = oru("C" + unique(), ops_feed.upper(), person(), "F" + unique(), encoding="gbk")
        refused = send(hub, hospital_b, ops_feed, message)
        assert refused.status_code == 422, refused.text
        letters.append(int(refused.headers["X-Ingest-Dead-Letter"]))
    listed = operator.get(f"/ops/dead-letters?feed={ops_feed}")
    assert all(f'data-id="{n}"' in listed.text for n in letters)
    shown = operator.get(f"/ops/dead-letters/{letters[0]}")
    assert shown.status_code == 200
    assert "欧阳娜娜" in shown.text  # GBK decoded
    assert "PID-3" in shown.text

    still_broken = post_form(
        operator, f"/ops/dead-letters/{letters[0]}", f"/ops/dead-letters/{letters[0]}/replay", {}
    )
    assert "failed=" in still_broken.headers["location"]
    assert "重放仍未被接收" in operator.get(still_broken.headers["location"]).text

    fix_feed(operator, hub, ops_feed)
    replayed = post_form(
        operator, f"/ops/dead-letters/{letters[0]}", f"/ops/dead-letters/{letters[0]}/replay", {}
    )
    assert replayed.headers["location"].endswith("done=replayed"), replayed.headers
    dismissed = post_form(
        operator, f"/ops/dead-letters/{letters[1]}", f"/ops/dead-letters/{letters[1]}/discard", {}
    )
    assert dismissed.headers["location"].endswith("done=discarded")
    states = {
        entry["id"]: entry["status"]
        for entry in admin_json(hub, admin, "/admin/dead-letters", status="all", feed=ops_feed)[
            "dead_letters"
        ]
    }
    assert states[letters[0]] == "replayed"
    assert states[letters[1]] == "discarded"
    assert f'data-id="{letters[0]}"' not in operator.get(f"/ops/dead-letters?feed={ops_feed}").text


def test_map_an_unmapped_code_and_it_leaves_the_worklist(
    hub: HubUnderTest, operator: Browser, hospital_b: Client, admin: Client, ops_feed: str
) -> None:
    fix_feed(operator, hub, ops_feed)
    local = "ZX" + unique()[:6].upper()
    results = ((local, "运维测试项目", "5.2", "mmol/L", "3.9-6.1", "N"),)
    message = oru(
        "C" + unique(), ops_feed.upper(), person(), "F" + unique(), results, encoding="gbk"
    )
    accepted = send(hub, hospital_b, ops_feed, message)
    assert accepted.status_code == 200, accepted.text
    page = operator.get(f"/ops/unmapped?organization={hub.org_b}")
    assert f'data-code="{local}"' in page.text

    wrong = post_form(
        operator,
        "/ops/unmapped",
        "/ops/unmapped/map",
        {"feed": ops_feed, "local_code": local, "loinc": "not-loinc", "unit": "mmol/L"},
    )
    assert wrong.status_code == 422 and "LOINC" in wrong.text

    done = post_form(
        operator,
        "/ops/unmapped",
        "/ops/unmapped/map",
        {
            "feed": ops_feed,
            "local_code": local,
            "local_display": "运维测试项目",
            "loinc": "2345-7",
            "display": "Glucose [Mass/volume] in Serum or Plasma",
            "unit": "mmol/L",
            "catalogue": "glucose",
            "organization": hub.org_b,
        },
    )
    assert done.status_code == 303, done.text[:2000]
    assert f'data-code="{local}"' not in operator.get(done.headers["location"]).text
    concept_map = admin_json(hub, admin, f"/admin/code-maps/{ops_feed}")
    (element,) = [e for g in concept_map["group"] for e in g["element"] if e["code"] == local]
    assert element["target"][0]["code"] == "2345-7"


def test_identity_review_decided_on_the_page(
    hub: HubUnderTest, operator: Browser, admin: Client, hospital_a: Client, hospital_b: Client
) -> None:
    people = fresh_people()
    someone = identity_person(people)
    namesake = people.namesake(someone)
    create(hospital_a, source(someone, hospital_a.organization, with_resident_id=False))
    b = create(hospital_b, source(namesake, hospital_b.organization, with_resident_id=False))
    (review,) = reviews_of(hub, admin, b)
    # The worklist pages oldest first (50 a page); earlier tests leave reviews open.
    page = operator.get(f"/ops/identity?after={int(review['id']) - 1}")
    assert f'id="review-{review["id"]}"' in page.text
    assert namesake.name in page.text  # both records side by side, in full
    done = post_form(
        operator, "/ops/identity", f"/ops/identity/{review['id']}/dismiss", {"reason": ""}
    )
    assert done.headers["location"].endswith("done=dismissed")
    assert reviews_of(hub, admin, b) == []
    (closed,) = reviews_of(hub, admin, b, status="dismissed")
    assert closed["id"] == review["id"]
    assert closed["resolvedBy"].startswith("client:user:")
    again = post_form(
        operator, "/ops/identity", f"/ops/identity/{review['id']}/dismiss", {"reason": ""}
    )
    assert again.status_code == 409


def test_edit_a_catalogue_item_makes_a_new_version(
    hub: HubUnderTest, operator: Browser, admin: Client
) -> None:
    before = admin_json(hub, admin, "/admin/catalogue/versions")
    form_page = operator.get("/ops/catalogue/items/ferritin")
    assert form_page.status_code == 200
    fields = dict(re.findall(r'<input name="(\w+)"[^>]*value="([^"]*)"', form_page.text))
    textareas = dict(re.findall(r'<textarea name="(\w+)"[^>]*>([^<]*)</textarea>', form_page.text))
    data = {
        **fields,
        **textareas,
        "category": "lab",
        "scope": "city",
        "qc_required": "1",
        "not_suggested_when": ["critical"],
        "price_cny": "66.5",
        "region_validity_days": "3301=21",
        "note": "运维页面测试",
    }
    bad = post_form(
        operator,
        "/ops/catalogue/items/ferritin",
        "/ops/catalogue/items/ferritin",
        {**data, "region_validity_days": "3301=9999"},
    )
    assert bad.status_code == 422 and "3650" in bad.text
    done = post_form(
        operator, "/ops/catalogue/items/ferritin", "/ops/catalogue/items/ferritin", data
    )
    assert done.status_code == 303, done.text[:3000]
    after = admin_json(hub, admin, "/admin/catalogue/versions")
    assert after[0]["version"] > before[0]["version"]
    assert after[0]["note"] == "运维页面测试"
    item = admin_json(hub, admin, "/admin/catalogue/items/ferritin")
    assert item["price_cny"] == 66.5
    assert item["region_validity_days"] == {"3301": 21}
    history = operator.get("/ops/catalogue")
    assert f"v{after[0]['version']}" in history.text and "运维页面测试" in history.text


def test_statistics_csv_matches_the_api(
    hub: HubUnderTest, operator: Browser, admin: Client
) -> None:
    for table, group in (("organization", "organization"), ("item", "item")):
        exported = operator.get(f"/ops/statistics.csv?table={table}&period=month")
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
        api = admin_json(hub, admin, "/recognition/statistics", group=group)["rows"]
        assert len(rows) == len(api)
        for mine, theirs in zip(rows, api, strict=True):
            assert mine[group] == (theirs[group] or "")
            assert int(mine["reminders"]) == theirs["reminders"]
            assert int(mine["accepted"]) == theirs["accepted"]
            assert float(mine["saved_cny"]) == theirs["saved_cny"]
    trend = operator.get("/ops/statistics.csv?table=trend&period=month")
    rows = list(csv.DictReader(io.StringIO(trend.text.lstrip("\ufeff"))))
    api = admin_json(hub, admin, "/recognition/statistics", period="month")["rows"]
    assert [r["period"] for r in rows] == [r["period"] for r in api]
    page = operator.get("/ops/statistics?period=month")
    assert page.text.count("<svg class='chart") == 4
