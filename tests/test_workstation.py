"""The doctor's workstation through HTTP: patient search (ID card, MRN, scanner input), care
and break-glass, the timeline with values, flags and HR labels, trends, one result, the reuse
check with accept and decline, the CDS card's link, and the viewer refused outside a purpose.

Hospitals, patients and results arrive through the API as hospitals send them; the doctor
signs in with a password and acts through the pages only.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import Client, HubUnderTest, unique
from tests.identity_support import create, fresh_people, legacy_id, mrn_of, person, source
from tests.recognition_support import (
    DCM,
    LOINC,
    SNOMED,
    Hospital,
    cbc_panel,
    day,
    days_ago,
    draft_orders,
    hook_request,
    qc,
    register_hospital,
    transaction,
    urn,
)
from tests.test_web_auth import PASSWORD, Browser, run_cli, sql


@dataclass
class Scene:
    a: Hospital  # performs the tests (lab QC passes), Hangzhou Xihu
    c: Hospital  # the doctor's hospital, Hangzhou Gongshu
    doctor: str  # username of a doctor at C
    in_care: Any  # a person registered at A and C
    in_care_ids: dict[str, str]  # hospital → Patient id
    in_care_c_body: dict[str, Any]
    outside: Any  # a person registered at A only
    outside_id: str
    cbc: dict[str, str]  # urn → Type/id of the recent CBC
    study_uid: str
    outside_study_uid: str


def add_doctor(hub: HubUnderTest, organization: str) -> str:
    username = f"doctor-{unique()}"
    run_cli(
        hub,
        "users", "add", "--username", username, "--role", "doctor",
        "--organization", organization, "--name", "李医生", "--password-stdin", "--json",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    return username


def study(hospital: Hospital, patient_id: str, when: str, study_uid: str) -> dict[str, str]:
    """An ImagingStudy with its DICOM Study Instance UID, and its final report."""
    ref = urn()
    return transaction(
        hospital.client,
        [
            {
                "_urn": ref,
                "resourceType": "ImagingStudy",
                "status": "available",
                "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
                "subject": {"reference": f"Patient/{patient_id}"},
                "started": when,
                "modality": [{"system": DCM, "code": "CT"}],
                "description": "胸部CT平扫",
                "numberOfSeries": 1,
                "numberOfInstances": 3,
                "series": [
                    {
                        "uid": f"2.25.{uuid.uuid4().int}",
                        "modality": {"system": DCM, "code": "CT"},
                        "bodySite": {"system": SNOMED, "code": "51185008", "display": "Thorax"},
                        "numberOfInstances": 3,
                    }
                ],
            },
            {
                "_urn": urn(),
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": "24627-2"}], "text": "胸部CT"},
                "subject": {"reference": f"Patient/{patient_id}"},
                "effectiveDateTime": when,
                "performer": [{"reference": f"Organization/{hospital.id}"}],
                "imagingStudy": [{"reference": ref}],
                "conclusion": "双肺未见明显异常。",
            },
        ],
    )


@pytest.fixture(scope="module")
def scene(hub: HubUnderTest, admin: Client) -> Scene:
    lab = [qc("hematology", day(-800), day(60)), qc("radiology", day(-800), day(60))]
    a = register_hospital(hub, admin, "杭州市西湖区检验医院", "330106", passes=lab)
    c = register_hospital(hub, admin, "杭州市拱墅区门诊医院", "330105", passes=lab)
    people = fresh_people()
    in_care = person(people)
    while in_care.birth_date.year >= 2000:  # a 15-digit legacy ID exists for 19xx births
        in_care = person(people)
    ids = {a.id: create(a.client, source(in_care, a.id))}
    c_body = source(in_care, c.id)
    ids[c.id] = create(c.client, c_body)
    outside = person(people)
    outside_id = create(a.client, source(outside, a.id))
    cbc = cbc_panel(a, ids[a.id], days_ago(3), flags={"6690-2": "H"})
    analytes = [("718-7", "血红蛋白", 121, "g/L", (115, 150))]
    cbc_panel(a, ids[a.id], days_ago(400), analytes=analytes)
    study_uid = f"2.25.{uuid.uuid4().int}"
    study(a, ids[a.id], days_ago(5), study_uid)
    outside_study_uid = f"2.25.{uuid.uuid4().int}"
    study(a, outside_id, days_ago(5), outside_study_uid)
    cbc_panel(a, outside_id, days_ago(2))
    return Scene(
        a,
        c,
        add_doctor(hub, c.id),
        in_care,
        ids,
        c_body,
        outside,
        outside_id,
        cbc,
        study_uid,
        outside_study_uid,
    )


@pytest.fixture
def signed_in(hub: HubUnderTest, scene: Scene) -> Browser:
    browser = Browser(hub.base_url)
    assert browser.login(scene.doctor).status_code == 303
    return browser


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:300]
    return match.group(1)


def search(browser: Browser, text: str) -> Any:
    """The search form posted, as the Enter key (or a scanner's Enter) sends it."""
    token = csrf_of(browser.get("/").text)
    return browser.post("/", data={"csrf_token": token, "q": text})


def found_patient(page: str) -> str:
    """The patient id of the only hit on a search page."""
    hits = re.findall(r'data-patient="([^"]+)"', page)
    assert len(hits) == 1, page[-3000:]
    return hits[0]


def open_patient(browser: Browser, patient_id: str) -> Any:
    token = csrf_of(browser.get("/").text)
    return browser.post(f"/patients/{patient_id}/open", data={"csrf_token": token})


# -- search --------------------------------------------------------------------------------------


def test_search_by_resident_id_shows_masked_identifiers_and_hospitals(
    signed_in: Browser, scene: Scene
) -> None:
    page = search(signed_in, scene.in_care.resident_id)
    assert page.status_code == 200
    found_patient(page.text)
    number = scene.in_care.resident_id
    assert number not in page.text  # masked
    assert number[:4] + "*" * 10 + number[-4:] in page.text
    assert scene.in_care.name in page.text
    assert scene.a.name in page.text and scene.c.name in page.text


def test_search_by_mrn_and_by_scanner_input(signed_in: Browser, scene: Scene) -> None:
    mrn = mrn_of(scene.in_care_c_body, scene.c.id)
    by_mrn = found_patient(search(signed_in, f"  {mrn} ").text)
    scanned = "\x02" + " ".join(scene.in_care.resident_id[i : i + 6] for i in (0, 6, 12)) + "\r\n"
    by_scan = found_patient(search(signed_in, scanned).text)
    legacy = found_patient(search(signed_in, legacy_id(scene.in_care.resident_id)).text)
    assert by_mrn == by_scan == legacy
    nobody = search(signed_in, "no-such-number-" + unique())
    assert 'id="no-hits"' in nobody.text


def test_search_page_needs_a_login(hub: HubUnderTest) -> None:
    response = Browser(hub.base_url).get("/")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


# -- opening a patient ---------------------------------------------------------------------------


def test_patient_in_care_opens_with_the_timeline(signed_in: Browser, scene: Scene) -> None:
    patient_id = found_patient(search(signed_in, scene.in_care.resident_id).text)
    opened = open_patient(signed_in, patient_id)
    assert opened.status_code == 303, opened.text[:500]
    assert opened.headers["location"] == f"/patients/{patient_id}"
    page = signed_in.get(f"/patients/{patient_id}")
    assert page.status_code == 200, page.text[:1000]
    text = page.text
    # the CBC of hospital A with values, units, ranges and the high flag (symbol + code)
    assert "白细胞计数" in text and "6.2" in text and "10*9/L" in text and "3.5–9.5" in text
    assert 'class="ws-flag high"' in text and "↑" in text
    assert scene.a.name in text
    # the HR label (Zhejiang) and validity of the recent panel; the old one is out of its window
    assert "浙HR" in text
    assert "有效期至" in text
    assert "已超出互认有效期" in text
    # the study with its viewer link, and the purpose in force
    assert f"/viewer/studies/{scene.study_uid}" in text
    assert "本院诊疗" in text
    assert "break-glass-banner" not in text
    labs = signed_in.get(f"/patients/{patient_id}", params={"kind": "imaging"}).text
    assert 'data-kind="lab"' not in labs and 'data-kind="imaging"' in labs
    past = signed_in.get(f"/patients/{patient_id}", params={"to": day(-365)}).text
    assert "121" in past and "白细胞计数" not in past


def test_patient_not_in_care_is_refused_then_break_glass(
    hub: HubUnderTest, signed_in: Browser, scene: Scene
) -> None:
    patient_id = found_patient(search(signed_in, scene.outside.resident_id).text)
    refused = open_patient(signed_in, patient_id)
    assert refused.status_code == 403
    assert 'id="break-glass-form"' in refused.text
    assert signed_in.get(f"/patients/{patient_id}").status_code == 403
    token = csrf_of(refused.text)
    short = signed_in.post(
        f"/patients/{patient_id}/break-glass", data={"csrf_token": token, "reason": "急诊"}
    )
    assert short.status_code == 400 and 'id="reason-error"' in short.text
    assert signed_in.get(f"/patients/{patient_id}").status_code == 403
    reason = "急诊抢救，患者昏迷，需要查看既往检查结果"
    granted = signed_in.post(
        f"/patients/{patient_id}/break-glass", data={"csrf_token": token, "reason": reason}
    )
    assert granted.status_code == 303
    page = signed_in.get(f"/patients/{patient_id}")
    assert page.status_code == 200
    assert 'id="break-glass-banner"' in page.text and "紧急访问 break-glass" in page.text
    rows = sql(
        hub,
        "SELECT purpose, reason FROM access_grant WHERE client_id = $1 AND patient_id = $2",
        f"user:{scene.doctor}",
        patient_id,
    )
    assert [(r["purpose"], r["reason"]) for r in rows] == [("break-glass", reason)]
    audit = sql(
        hub,
        "SELECT detail FROM audit_log WHERE client_id = $1 AND interaction = "
        "'workstation:patient' AND status = 200 ORDER BY recorded DESC LIMIT 1",
        f"user:{scene.doctor}",
    )
    assert "break-glass" in audit[0]["detail"]


def test_viewer_only_within_a_purpose(hub: HubUnderTest, scene: Scene) -> None:
    browser = Browser(hub.base_url)
    browser.login(add_doctor(hub, scene.c.id))
    refused = browser.get(f"/viewer/studies/{scene.outside_study_uid}")
    assert refused.status_code == 404
    patient_id = found_patient(search(browser, scene.in_care.resident_id).text)
    assert open_patient(browser, patient_id).status_code == 303
    viewer = browser.get(f"/viewer/studies/{scene.study_uid}")
    assert viewer.status_code == 200
    assert f'data-study-uid="{scene.study_uid}"' in viewer.text
    assert browser.get(f"/viewer/studies/{scene.outside_study_uid}").status_code == 404


# -- trend and result ----------------------------------------------------------------------------


def test_trend_page_charts_one_value_over_time(signed_in: Browser, scene: Scene) -> None:
    patient_id = found_patient(search(signed_in, scene.in_care.resident_id).text)
    open_patient(signed_in, patient_id)
    page = signed_in.get(f"/patients/{patient_id}/trend", params={"code": f"{LOINC}|718-7"})
    assert page.status_code == 200
    assert "<svg" in page.text
    table = page.text.split('id="trend-chart"')[1]
    assert table.count("/results/Observation/") == 2  # 135 now, 121 a year ago
    assert table.index(">135<") < table.index(">121<")  # newest first


def test_result_page_shows_the_panel(signed_in: Browser, scene: Scene) -> None:
    patient_id = found_patient(search(signed_in, scene.in_care.resident_id).text)
    open_patient(signed_in, patient_id)
    report = next(v for v in scene.cbc.values() if v.startswith("DiagnosticReport/"))
    page = signed_in.get(f"/results/{report}")
    assert page.status_code == 200
    assert "血小板计数" in page.text and "125–350" in page.text and "浙HR" in page.text
    assert signed_in.get("/results/Patient/x").status_code == 404


# -- the reuse check -----------------------------------------------------------------------------


def _decisions(hub: HubUnderTest, reminder: str) -> list[tuple[str, str | None, str]]:
    rows = sql(
        hub,
        "SELECT d.outcome, d.reason_code, d.client_id, r.source, r.hook FROM "
        "recognition_decision d JOIN recognition_reminder r ON r.id = d.reminder_id "
        "WHERE d.reminder_id = $1 ORDER BY d.id",
        uuid.UUID(reminder),
    )
    assert {r["source"] for r in rows} <= {"workstation"}  # the workstation's own channel
    return [(r["outcome"], r["reason_code"], r["hook"]) for r in rows]


def test_reuse_check_accept_and_decline(
    hub: HubUnderTest, signed_in: Browser, scene: Scene
) -> None:
    patient_id = found_patient(search(signed_in, scene.in_care.resident_id).text)
    open_patient(signed_in, patient_id)
    page = signed_in.get(f"/patients/{patient_id}")
    token = csrf_of(page.text)
    answer = signed_in.post(
        f"/patients/{patient_id}/reuse-check",
        data={"csrf_token": token, "item": ["cbc", "ct-chest", "ferritin"]},
        headers={"HX-Request": "true"},
    )
    assert answer.status_code == 200, answer.text[:1000]
    verdicts = dict(re.findall(r'data-item="([^"]+)" data-outcome="([^"]+)"', answer.text))
    assert verdicts == {"cbc": "reusable", "ct-chest": "reusable", "ferritin": "no-result"}
    reminders = re.findall(r'action="/reminders/([0-9a-f-]{36})/decision"', answer.text)
    cbc_reminder, ct_reminder = list(dict.fromkeys(reminders))
    accepted = signed_in.post(
        f"/reminders/{cbc_reminder}/decision",
        data={"csrf_token": token, "outcome": "accepted"},
        headers={"HX-Request": "true"},
    )
    assert accepted.status_code == 200 and 'data-outcome="accepted"' in accepted.text
    no_text = signed_in.post(
        f"/reminders/{ct_reminder}/decision",
        data={"csrf_token": token, "outcome": "declined", "reason": "other"},
    )
    assert no_text.status_code == 400
    no_reason = signed_in.post(
        f"/reminders/{ct_reminder}/decision", data={"csrf_token": token, "outcome": "declined"}
    )
    assert no_reason.status_code == 400
    declined = signed_in.post(
        f"/reminders/{ct_reminder}/decision",
        data={"csrf_token": token, "outcome": "declined", "reason": "condition-changed"},
        headers={"HX-Request": "true"},
    )
    assert declined.status_code == 200 and "病情变化" in declined.text
    assert _decisions(hub, cbc_reminder) == [("accepted", None, "workstation")]
    assert _decisions(hub, ct_reminder) == [("declined", "condition-changed", "workstation")]
    without_csrf = signed_in.post(
        f"/reminders/{ct_reminder}/decision", data={"outcome": "accepted"}
    )
    assert without_csrf.status_code == 403


def test_cds_card_link_opens_the_result_with_the_decision_panel(
    hub: HubUnderTest, signed_in: Browser, scene: Scene
) -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {
                "system": "https://yijian-hub.org/fhir/sid/resident-id",
                "value": scene.outside.resident_id,
            }
        ],
    }
    orders = draft_orders(("o1", [{"system": LOINC, "code": "58410-2"}]))
    response = scene.c.http.post(
        "/cds-services/exam-reuse-sign", json=hook_request("order-sign", patient, orders)
    )
    assert response.status_code == 200, response.text
    cards = [c for c in response.json()["cards"] if c.get("links")]
    assert cards, json.dumps(response.json(), ensure_ascii=False)[:1000]
    link = cards[0]["links"][0]["url"]
    path = "/" + link.split("/", 3)[3]
    opened = signed_in.post(path)
    assert opened.status_code == 303
    target = opened.headers["location"]
    assert target.startswith("/results/") and "?reminder=" in target
    page = signed_in.get(target)
    assert page.status_code == 200, page.text[:1000]
    assert "互认提醒" in page.text and "白细胞计数" in page.text
    reminder = target.split("reminder=")[1]
    token = csrf_of(page.text)
    signed_in.post(
        f"/reminders/{reminder}/decision", data={"csrf_token": token, "outcome": "accepted"}
    )
    again = signed_in.get(target)
    assert 'data-outcome="accepted"' in again.text
    # a doctor of another organization cannot use the reminder
    other = Browser(hub.base_url)
    other.login(add_doctor(hub, scene.a.id))
    assert other.get(target).status_code == 404
