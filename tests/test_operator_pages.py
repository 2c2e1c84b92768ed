"""The operator pages (/ops) through HTTP against the running hub: each renders for an admin
and is refused to a doctor; one state-changing action per page, checked through the same
services' JSON APIs or the page itself."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from hub.web.charts import format_number
from hub.web.i18n import MESSAGES_EN
from tests.conftest import Client, HubUnderTest, unique
from tests.identity_support import create, fresh_people, reviews_of, source
from tests.identity_support import person as identity_person
from tests.oru import Person, oru
from tests.recognition_support import (
    LOINC,
    Hospital,
    cbc_panel,
    day,
    days_ago,
    draft_orders,
    hook_request,
    qc,
    register_hospital,
)
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


# -- statistics -------------------------------------------------------------------------------
#
# Two new ordering hospitals of their own, so that the figures are theirs alone whatever else
# the session has recorded: X checks through /recognition/checks and decides through
# /recognition/decisions; Y asks the CDS Hooks service and answers with CDS feedback.

DECLINE = "https://yijian-hub.org/fhir/CodeSystem/recognition-decline-reason"
CBC_ORDER = {"system": LOINC, "code": "58410-2"}


@dataclass(frozen=True)
class Recognitions:
    x: Hospital  # 3 reminders: accepted, declined (condition-changed), overlooked
    y: Hospital  # 2 reminders: accepted, declined (patient-request)
    price: float  # the CBC's price when the reminders were shown
    item_name: str  # the CBC's catalogue name (Chinese)


def recorded_check(hospital: Hospital, patient: str) -> str:
    """A reuse check that records a reminder (as the workstation does); its id."""
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{patient}"}},
            {"name": "code", "valueCoding": CBC_ORDER},
        ],
    }
    response = hospital.http.post("/recognition/checks", json=body)
    assert response.status_code == 200, response.text
    (reminder,) = [
        part["valueString"]
        for parameter in response.json()["parameter"]
        if parameter["name"] == "item"
        for part in parameter["part"]
        if part["name"] == "reminder"
    ]
    return str(reminder)


def decision(hospital: Hospital, reminder: str, outcome: str, reason: str | None = None) -> None:
    body = {"reminder": reminder, "outcome": outcome, "reason": reason, "decidedBy": "王医生"}
    response = hospital.http.post("/recognition/decisions", json=body)
    assert response.status_code == 201, response.text


def cds_card(hospital: Hospital, patient: str) -> dict[str, Any]:
    """The reuse card CDS Hooks answers for a draft CBC order."""
    order = (f"cbc-{unique()}", [CBC_ORDER])
    body = hook_request("order-sign", None, draft_orders(order), patient_id=patient)
    response = hospital.http.post("/cds-services/exam-reuse-sign", json=body)
    assert response.status_code == 200, response.text
    return next(c for c in response.json()["cards"] if c.get("suggestions"))


def feedback(hospital: Hospital, card: dict[str, Any], **item: Any) -> None:
    response = hospital.http.post(
        "/cds-services/exam-reuse-sign/feedback",
        json={"feedback": [{"card": card["uuid"], "outcomeTimestamp": days_ago(0), **item}]},
    )
    assert response.status_code == 200 and response.json()["recorded"] == 1, response.text


@pytest.fixture(scope="module")
def recognitions(hub: HubUnderTest, admin: Client) -> Recognitions:
    lab = [qc("hematology", day(-300), day(60))]
    tag = unique()[:8]
    lab_hospital = register_hospital(hub, admin, f"运维统计检验医院{tag}", "330106", passes=lab)
    x = register_hospital(hub, admin, f"运维统计甲医院{tag}", "330105", passes=lab)
    y = register_hospital(hub, admin, f"运维统计乙医院{tag}", "330108", passes=lab)
    patient = create(lab_hospital.client, source(identity_person(fresh_people()), lab_hospital.id))
    cbc_panel(lab_hospital, patient, days_ago(2))

    reminders = [recorded_check(x, patient) for _ in range(3)]
    decision(x, reminders[0], "accepted")
    decision(x, reminders[1], "declined", "condition-changed")
    accepted, declined = cds_card(y, patient), cds_card(y, patient)
    feedback(
        y,
        accepted,
        outcome="accepted",
        acceptedSuggestions=[{"id": accepted["suggestions"][0]["uuid"]}],
    )
    feedback(
        y,
        declined,
        outcome="overridden",
        overrideReason={"reason": {"system": DECLINE, "code": "patient-request"}},
    )
    shown = x.http.get(f"/recognition/reminders/{reminders[0]}")
    assert shown.status_code == 200, shown.text
    item = admin_json(hub, admin, "/admin/catalogue/items/cbc")
    return Recognitions(x, y, float(shown.json()["price_cny"]), item["name"]["zh"])


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html)).strip()


def table_rows(page: str, table: str) -> dict[str, list[str]]:
    """The rows of a dashboard table (its section ``t-<table>``) by their first cell; the
    header row under ``""``."""
    section = page.split(f'aria-labelledby="t-{table}"', 1)[1].split("</section>", 1)[0]
    rows: dict[str, list[str]] = {}
    for row in re.findall(r"<tr>(.*?)</tr>", section, re.S):
        cells = [_text(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)]
        rows["" if "<th" in row else cells[0]] = cells
    return rows


def tiles(page: str) -> dict[str, str]:
    """The summary tiles: what → figure."""
    found = re.findall(
        r'<span class="figure"[^>]*>([^<]*)</span><span class="what">([^<]*)</span>', page
    )
    return {what: figure for figure, what in found}


def svg_charts(page: str) -> dict[str, str]:
    """The dashboard's charts by the heading of their card."""
    cards = re.findall(
        r'<section class="chart-card"[^>]*>\s*<h3[^>]*>([^<]*)</h3>(.*?)</section>', page, re.S
    )
    return {heading: svg for heading, svg in cards}


def bar_titles(svg: str) -> list[str]:
    return [t.strip() for t in re.findall(r"<g class='chart-bar'><title>([^<]*)</title>", svg)]


def test_dashboard_shows_one_hospitals_recognitions(
    operator: Browser, recognitions: Recognitions
) -> None:
    x, price = recognitions.x, recognitions.price
    page = operator.get(f"/ops/statistics?organization={x.id}&period=month")
    assert page.status_code == 200, page.text[:2000]
    assert tiles(page.text) == {
        "互认提醒": "3",
        "查阅率": "0.0%",
        "互认率": "33.3%",
        "避免重复检查": "1",
        "节省费用": f"¥{price:,.2f}",
        "不互认": "1",
    }
    (trend,) = [cells for key, cells in table_rows(page.text, "trend").items() if key]
    assert trend[1:] == ["3", "0", "1", "1", "1", "0.0%", "33.3%", f"{price:.2f}"]
    month = trend[0]
    by_org = table_rows(page.text, "org")
    assert by_org[""][-1] == "病情变化"  # the one decline reason among X's reminders
    assert set(by_org) == {"", x.name}
    assert by_org[x.name][1:] == ["3", "1", "1", "33.3%", f"{price:.2f}", "1"]
    by_item = table_rows(page.text, "item")
    assert by_item[recognitions.item_name][1:] == by_org[x.name][1:]

    charts = svg_charts(page.text)
    assert len(charts) == 4
    rate = charts["互认率随时间变化"]
    (point,) = re.findall(r"<circle class='chart-point'[^>]*><title>([^<]*)</title>", rate)
    assert point == f"{month} 00:00 33.33 %"
    assert bar_titles(charts["各期节省费用"]) == [f"{month}: {format_number(price)} 元"]
    assert bar_titles(charts["各医院节省费用"]) == [f"{x.name}: {format_number(price)} 元"]
    assert bar_titles(charts["最常见的不互认原因"]) == ["病情变化: 1"]

    operator.get("/lang/en?next=/")
    try:
        english = operator.get(f"/ops/statistics?organization={x.id}")
    finally:
        operator.get("/lang/zh-CN?next=/")
    reasons = svg_charts(english.text)["Most common decline reasons"]
    assert bar_titles(reasons) == ["Condition changed: 1"]


def test_dashboard_compares_hospitals_and_their_decline_reasons(
    operator: Browser, recognitions: Recognitions
) -> None:
    x, y, price = recognitions.x, recognitions.y, recognitions.price
    page = operator.get(f"/ops/statistics?from={day(0)}&to={day(1)}")
    assert page.status_code == 200
    by_org = table_rows(page.text, "org")
    header = by_org[""]
    changed, requested = header.index("病情变化"), header.index("患者要求")
    assert by_org[x.name][1:6] == ["3", "1", "1", "33.3%", f"{price:.2f}"]
    assert (by_org[x.name][changed], by_org[x.name][requested]) == ("1", "")
    assert by_org[y.name][1:6] == ["2", "1", "1", "50.0%", f"{price:.2f}"]
    assert (by_org[y.name][changed], by_org[y.name][requested]) == ("", "1")
    savings = bar_titles(svg_charts(page.text)["各医院节省费用"])
    assert (
        f"{x.name}: {format_number(price)} 元" in savings
        and f"{y.name}: {format_number(price)} 元" in savings
    )
    reasons = dict(
        title.rsplit(": ", 1) for title in bar_titles(svg_charts(page.text)["最常见的不互认原因"])
    )
    assert int(reasons["病情变化"]) >= 1 and int(reasons["患者要求"]) >= 1
    # a period after the reminders: nothing for X, and the charts say so
    later = operator.get(f"/ops/statistics?organization={x.id}&from={day(1)}")
    assert tiles(later.text)["互认提醒"] == "0"
    assert all("chart-bar'" not in svg for svg in svg_charts(later.text).values())
    assert "chart-point" not in svg_charts(later.text)["互认率随时间变化"]


# The dashboard's CSV tables as the API's query.
API_GROUPS = {
    "trend": {"period": "month"},
    "organization": {"group": "organization"},
    "item": {"group": "item"},
}


@pytest.mark.parametrize("table", list(API_GROUPS))
def test_statistics_csv_equals_the_api_for_the_same_filters(
    hub: HubUnderTest, operator: Browser, admin: Client, recognitions: Recognitions, table: str
) -> None:
    x, y = recognitions.x, recognitions.y
    for filters in (
        {"organization": x.id},
        {"organization": y.id, "from": day(0), "to": day(1)},
        {"from": day(0), "to": day(1)},
        {"organization": x.id, "from": day(1)},
    ):
        exported = operator.get(
            "/ops/statistics.csv", params={"table": table, "period": "month", **filters}
        )
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        api = admin.http.get(
            hub.base_url + "/recognition/statistics",
            params={**API_GROUPS[table], **filters, "format": "csv"},
        )
        assert api.status_code == 200, api.text
        assert exported.text == api.text, filters
        rows = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
        figures = admin_json(hub, admin, "/recognition/statistics", **API_GROUPS[table], **filters)
        assert [int(row["reminders"]) for row in rows] == [
            row["reminders"] for row in figures["rows"]
        ]
        if filters.get("organization") == x.id and "from" not in filters:
            (only,) = rows
            assert (only["reminders"], only["accepted"], only["declined"]) == ("3", "1", "1")
            assert only["declined_condition-changed"] == "1"
            assert float(only["saved_cny"]) == recognitions.price
        if filters.get("from") == day(1):
            assert rows == []
        if "organization" not in filters and table == "organization":
            mine = {row["organization"]: row for row in rows if row["organization"] in (x.id, y.id)}
            assert mine[y.id]["declined_patient-request"] == "1"
            assert mine[x.id]["declined_condition-changed"] == "1"


def test_dashboard_draws_four_charts(operator: Browser) -> None:
    page = operator.get("/ops/statistics?period=month")
    assert page.text.count("<svg class='chart") == 4


# -- English for messages written in Python ----------------------------------------------------


def test_page_messages_are_in_english_with_the_english_interface(operator: Browser) -> None:
    operator.get("/lang/en?next=/")
    try:
        refused = post_form(
            operator,
            "/ops/hospitals",
            "/ops/hospitals",
            {"name": " ", "system": "https://yijian.example/hospital", "value": "X"},
        )
        missing = operator.get("/ops/dead-letters/987654321")
        bad_date = operator.get("/ops/statistics?from=31.1.2025")
    finally:
        operator.get("/lang/zh-CN?next=/")
    assert refused.status_code == 422
    assert "Enter the hospital&#39;s name, identifier system and identifier value." in refused.text
    assert "请填写医院名称" not in refused.text
    assert missing.status_code == 404
    assert "There is no dead letter number 987654321." in missing.text
    assert bad_date.status_code == 400
    assert "The date 31.1.2025 cannot be read" in bad_date.text
    chinese = operator.get("/ops/dead-letters/987654321")
    assert "没有编号为 987654321 的死信。" in chinese.text


def test_english_messages_keep_their_placeholders() -> None:
    messages = json.loads(MESSAGES_EN.read_text(encoding="utf-8"))
    assert list(messages) == sorted(messages)
    for chinese, english in messages.items():
        assert set(re.findall(r"{(\w*)}", chinese)) == set(re.findall(r"{(\w*)}", english)), chinese
