"""Mutual recognition end to end: hospitals push results, another hospital's EHR asks the CDS
Hooks service (or ``$reusable-results``) at order time, the doctor decides, statistics count.

Six hospitals: A, B, C (the orderer), Q (its QC pass has lapsed) in Hangzhou; N in Ningbo;
P in Beijing. One person has records at several of them, linked by the resident ID.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fhir.resources.R4B.parameters import Parameters

from tests.conftest import Client, HubUnderTest
from tests.identity_support import create, fresh_people, mrn_of, mrn_system, person, source
from tests.recognition_support import (
    CBC,
    LOINC,
    Hospital,
    cbc_panel,
    ct_chest,
    day,
    days_ago,
    draft_orders,
    hook_request,
    qc,
    register_hospital,
)

ITEM = "https://yijian-hub.org/fhir/CodeSystem/recognition-item"
DECLINE = "https://yijian-hub.org/fhir/CodeSystem/recognition-decline-reason"
LOCAL_C = "https://yijian.example/his-c/orders"


@dataclass
class Region:
    a: Hospital
    b: Hospital
    c: Hospital
    q: Hospital
    n: Hospital
    p: Hospital


@dataclass
class Someone:
    resident_id: str
    sources: dict[str, str]  # hospital id → its Patient id
    a_patient: dict[str, Any]  # hospital A's Patient resource (for its MRN)


@pytest.fixture(scope="module")
def region(hub: HubUnderTest, admin: Client) -> Region:
    lab = [qc("hematology", day(-300), day(60)), qc("clinical-chemistry", day(-300), day(60))]
    return Region(
        a=register_hospital(
            hub, admin, "杭州市西湖区人民医院", "330106", community="westlake", passes=lab
        ),
        b=register_hospital(
            hub, admin, "杭州市滨江医院", "330108", passes=[qc("radiology", day(-300), day(60))]
        ),
        c=register_hospital(hub, admin, "杭州市拱墅区中医院", "330105", passes=lab),
        q=register_hospital(
            hub, admin, "杭州市上城区医院", "330102", passes=[qc("hematology", day(-400), day(-10))]
        ),
        n=register_hospital(hub, admin, "宁波市第一医院", "330203", passes=lab),
        p=register_hospital(hub, admin, "北京市朝阳区医院", "110105", passes=lab),
    )


def enrol(hospitals: list[Hospital]) -> Someone:
    """One person registered at each hospital (same resident ID: linked to one master)."""
    someone = person(fresh_people())
    sources = {}
    a_patient: dict[str, Any] = {}
    for hospital in hospitals:
        body = source(someone, hospital.id)
        sources[hospital.id] = create(hospital.client, body)
        if not a_patient:
            a_patient = body
    return Someone(someone.resident_id, sources, a_patient)


@pytest.fixture(scope="module")
def scenario(region: Region) -> tuple[Someone, dict[str, str], dict[str, str]]:
    """The issue's example: a CBC at A 3 days ago, a chest CT at B 40 days ago — and newer
    CBCs that do not qualify: Q's (QC lapsed) 2 days ago, P's (Beijing) 1 day ago."""
    someone = enrol([region.a, region.b, region.q, region.p])
    cbc = cbc_panel(region.a, someone.sources[region.a.id], days_ago(3))
    ct = ct_chest(region.b, someone.sources[region.b.id], days_ago(40), "（40天前）")
    cbc_panel(region.q, someone.sources[region.q.id], days_ago(2))
    cbc_panel(region.p, someone.sources[region.p.id], days_ago(1))
    return someone, cbc, ct


def cds(hospital: Hospital, service: str, body: dict[str, Any]) -> httpx.Response:
    return hospital.http.post(f"/cds-services/{service}", json=body)


def reusable(hospital: Hospital, **params: Any) -> dict[str, dict[str, Any]]:
    """GET $reusable-results; the items by requested code."""
    response = hospital.client.get("/Patient/$reusable-results", params=params)
    assert response.status_code == 200, response.text
    return items_of(response.json())


def items_of(parameters: dict[str, Any]) -> dict[str, dict[str, Any]]:
    Parameters.model_validate(parameters)  # valid FHIR
    out = {}
    for parameter in parameters["parameter"]:
        if parameter["name"] != "item":
            continue
        parts: dict[str, Any] = {}
        for part in parameter["part"]:
            value = next(v for k, v in part.items() if k.startswith("value"))
            parts[part["name"]] = value
        out[parts["requested"]["code"]] = parts
    return out


def check_card(card: dict[str, Any]) -> None:
    """The CDS Hooks 2.0 Card shape."""
    assert isinstance(card["summary"], str) and 0 < len(card["summary"]) < 140
    assert card["indicator"] in ("info", "warning", "critical")
    assert isinstance(card["source"]["label"], str)
    uuid.UUID(card["uuid"].removesuffix("-delete"))
    for link in card.get("links", []):
        assert link["type"] in ("absolute", "smart") and link["label"] and link["url"]
    if card.get("suggestions"):
        assert card["selectionBehavior"] in ("at-most-one", "any")
        for suggestion in card["suggestions"]:
            assert suggestion["label"]
            for action in suggestion["actions"]:
                assert action["type"] in ("create", "update", "delete")
                assert action["description"]
    for reason in card.get("overrideReasons", []):
        assert set(reason) >= {"code", "system", "display"}


# -- the scenario ----------------------------------------------------------------------


def test_cbc_card_and_expired_ct_at_a_third_hospital(
    region: Region, scenario: tuple[Someone, dict[str, str], dict[str, str]]
) -> None:
    someone, cbc, _ = scenario
    # The EHR of hospital C knows the patient by hospital A's MRN only.
    prefetched = {
        "resourceType": "Patient",
        "id": "ehr-123",
        "identifier": [
            {"system": mrn_system(region.a.id), "value": mrn_of(someone.a_patient, region.a.id)}
        ],
    }
    orders = draft_orders(
        (
            "order-cbc",
            [
                {"system": LOCAL_C, "code": "XCG"},
                {"system": LOINC, "code": "58410-2", "display": "CBC panel"},
            ],
        ),
        ("order-ct", [{"system": LOINC, "code": "24627-2", "display": "CT Chest"}]),
    )
    response = cds(region.c, "exam-reuse-sign", hook_request("order-sign", prefetched, orders))
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    for card in cards:
        check_card(card)
    reuse = [c for c in cards if c.get("suggestions")]
    assert len(reuse) == 1
    card = reuse[0]
    assert card["source"]["topic"]["code"] == "cbc"
    assert card["summary"].startswith(
        "该患者 7 天内已有可互认结果：血常规 (浙HR, 杭州市西湖区人民医院 "
    )
    assert days_ago(3)[:10] in card["summary"]
    assert "血红蛋白: 135 g/L" in card["detail"] and "(参考 ref 115-150)" in card["detail"]
    action = card["suggestions"][0]["actions"][0]
    assert action == {**action, "type": "delete", "resourceId": "ServiceRequest/order-cbc"}
    report = next(v for k, v in cbc.items() if v.startswith("DiagnosticReport/"))
    assert card["extension"]["org.yijian-hub.result"] == report
    assert {r["code"] for r in card["overrideReasons"]} >= {"condition-changed", "other"}
    (explained,) = [c for c in cards if not c.get("suggestions")]
    assert explained["extension"]["org.yijian-hub.outcomes"] == {"ct-chest": "expired"}
    assert "胸部" in explained["detail"] and "30天有效期" in explained["detail"]


def test_reusable_results_operation(
    region: Region, scenario: tuple[Someone, dict[str, str], dict[str, str]]
) -> None:
    someone, cbc, ct = scenario
    items = reusable(
        region.c,
        identifier=f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}",
        code=["cbc", "ct-chest", f"{LOINC}|718-7", f"{LOINC}|9999-9"],
    )
    report = next(v for v in cbc.values() if v.startswith("DiagnosticReport/"))
    hgb = [v for v in cbc.values() if v.startswith("Observation/")][2]
    assert items["cbc"]["outcome"] == "reusable"
    assert items["cbc"]["result"]["reference"] == report
    assert items["cbc"]["label"] == "浙HR"
    assert items["cbc"]["performer"]["reference"] == f"Organization/{region.a.id}"
    assert items["cbc"]["priceCny"] > 0
    assert items["ct-chest"]["outcome"] == "expired"
    ct_report = next(v for v in ct.values() if v.startswith("DiagnosticReport/"))
    assert items["ct-chest"]["result"]["reference"] == ct_report
    # a component: the panel's analyte answers, under the panel's rules
    assert items["718-7"]["outcome"] == "reusable"
    assert items["718-7"]["result"]["reference"] == hgb
    assert items["718-7"]["catalogueItem"]["code"] == "cbc"
    assert items["9999-9"]["outcome"] == "not-recognisable"
    # instance level, by hospital P's own record of the person: same answer
    response = region.c.client.get(
        f"/Patient/{someone.sources[region.p.id]}/$reusable-results", params={"code": "cbc"}
    )
    assert items_of(response.json())["cbc"]["result"]["reference"] == report


def test_nearer_results_that_do_not_qualify_say_why(region: Region) -> None:
    """A patient whose only CBCs are from a lapsed-QC lab, then from Beijing, then too old."""
    someone = enrol([region.q, region.p, region.a])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    cbc_panel(region.q, someone.sources[region.q.id], days_ago(2))
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "qc-not-valid"
    cbc_panel(region.p, someone.sources[region.p.id], days_ago(1))
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "out-of-scope"
    # Beijing's own doctors may reuse Beijing's result; Hangzhou's may not (city scope)
    assert reusable(region.p, identifier=ident, code="cbc")["cbc"]["outcome"] == "reusable"
    # critical values are not suggested for reuse
    someone = enrol([region.a])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    cbc_panel(region.a, someone.sources[region.a.id], days_ago(1), flags={"777-3": "LL"})
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "needs-review"
    # preliminary results are not final
    someone = enrol([region.a])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    cbc_panel(region.a, someone.sources[region.a.id], days_ago(1), status="preliminary")
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "not-final"
    assert reusable(region.c, identifier=ident, code="hba1c")["hba1c"]["outcome"] == "no-result"


def test_qc_pass_recorded_later_makes_the_result_reusable(
    hub: HubUnderTest, region: Region
) -> None:
    someone = enrol([region.q])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    cbc_panel(region.q, someone.sources[region.q.id], days_ago(1))
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "qc-not-valid"
    hub.cli(
        "orgs",
        "qc-pass",
        region.q.id,
        "--discipline",
        "hematology",
        "--from",
        day(-20),
        "--to",
        day(300),
    )
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "reusable"


def test_panels_versus_components(region: Region) -> None:
    someone = enrol([region.a])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    pid = someone.sources[region.a.id]
    # a haemoglobin from some other panel is not a CBC, but answers a haemoglobin order
    cbc_panel(region.a, pid, days_ago(1), analytes=[CBC[2]], panel_code=False)
    items = reusable(region.c, identifier=ident, code=["cbc", f"{LOINC}|718-7"])
    assert items["cbc"]["outcome"] == "no-result"
    assert items["718-7"]["outcome"] == "reusable"
    # a full set of analytes without the panel code is a CBC (its core components are there)
    written = cbc_panel(region.a, pid, days_ago(2), panel_code=False)
    items = reusable(region.c, identifier=ident, code="cbc")
    assert items["cbc"]["outcome"] == "reusable"
    assert items["cbc"]["result"]["reference"] in written.values()


def test_a_corrected_result_is_judged_as_corrected(region: Region) -> None:
    someone = enrol([region.a])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    written = cbc_panel(region.a, someone.sources[region.a.id], days_ago(1))
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "reusable"
    hgb = [v for v in written.values() if v.startswith("Observation/")][2]
    current = region.a.client.get(f"/{hgb}").json()
    current.update(
        status="corrected",
        valueQuantity={**current["valueQuantity"], "value": 58},
        interpretation=[
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "LL",
                    }
                ]
            }
        ],
    )
    current.pop("meta")
    assert region.a.client.put(f"/{hgb}", json=current).status_code == 200
    items = reusable(region.c, identifier=ident, code=["cbc", f"{LOINC}|718-7"])
    assert items["cbc"]["outcome"] == "needs-review"
    assert items["718-7"]["outcome"] == "needs-review"
    assert items["718-7"]["result"]["reference"] == hgb


def test_operation_errors(region: Region, hub: HubUnderTest, consultant: Client) -> None:
    client = region.c.client
    assert client.get("/Patient/$reusable-results", params={"code": "cbc"}).status_code == 400
    response = client.get("/Patient/nobody/$reusable-results", params={"code": "cbc"})
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"
    response = client.get("/Patient/x/$reusable-results")
    assert response.status_code == 400 and "code" in response.json()["issue"][0]["diagnostics"]
    response = client.get("/Patient/x/$reusable-results", params={"code": "cbc", "bogus": "1"})
    assert response.status_code == 400
    response = client.get("/Patient/x/$reusable-results", params={"code": "cbc", "record": "true"})
    assert response.status_code == 400  # state changes need POST
    response = consultant.get("/Patient/x/$reusable-results", params={"code": "cbc"})
    assert response.status_code == 403
    response = client.get(
        "/Patient/x/$reusable-results",
        params={"code": "cbc", "organization": f"Organization/{region.a.id}"},
    )
    assert response.status_code == 403  # only for its own organization
    response = httpx.get(f"{hub.fhir}/Patient/x/$reusable-results?code=cbc")
    assert response.status_code == 401


def test_a_workstation_check_records_reminders(
    region: Region, scenario: tuple[Someone, dict[str, str], dict[str, str]], hub: HubUnderTest
) -> None:
    someone, _, _ = scenario
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "patient",
                "valueReference": {"reference": f"Patient/{someone.sources[region.a.id]}"},
            },
            {"name": "code", "valueCoding": {"system": LOINC, "code": "58410-2"}},
            {"name": "code", "valueCoding": {"system": ITEM, "code": "ct-chest"}},
            {"name": "department", "valueString": "全科 General practice"},
        ],
    }
    # the FHIR operation only reads: it knows no department and records nothing
    assert region.c.client.post("/Patient/$reusable-results", json=body).status_code == 400
    response = region.c.http.post("/recognition/checks", json=body)
    assert response.status_code == 200, response.text
    items = items_of(response.json())
    reminder = items["58410-2"]["reminder"]
    assert "reminder" not in items["ct-chest"]  # only reusable results are reminders
    found = region.c.http.get(f"/recognition/reminders/{reminder}")
    assert found.status_code == 200
    assert found.json()["item_id"] == "cbc" and found.json()["source"] == "api"
    assert found.json()["department"] == "全科 General practice"
    # another hospital cannot see or decide it
    assert region.a.http.get(f"/recognition/reminders/{reminder}").status_code == 404
    # the OperationDefinition the CapabilityStatement names is served
    definition = httpx.get(
        f"{hub.fhir}/OperationDefinition/Patient-reusable-results",
        headers={"Authorization": region.c.client.http.headers["Authorization"]},
    ).json()
    assert definition["code"] == "reusable-results" and definition["affectsState"] is False


# -- CDS Hooks -------------------------------------------------------------------------------------


def test_discovery(hub: HubUnderTest) -> None:
    services = httpx.get(f"{hub.base_url}/cds-services").json()["services"]
    assert {(s["id"], s["hook"]) for s in services} == {
        ("exam-reuse", "order-select"),
        ("exam-reuse-sign", "order-sign"),
    }
    for service in services:
        assert service["prefetch"] == {"patient": "Patient/{{context.patientId}}"}
        assert service["description"] and service["title"]


def test_order_select_checks_only_the_selected_orders(
    region: Region, scenario: tuple[Someone, dict[str, str], dict[str, str]]
) -> None:
    someone, _, _ = scenario
    orders = draft_orders(
        ("o1", [{"system": LOINC, "code": "58410-2"}]),
        ("o2", [{"system": LOINC, "code": "24627-2"}]),
    )
    # the hub's own patient id, no prefetch
    body = hook_request(
        "order-select",
        None,
        orders,
        patient_id=someone.sources[region.a.id],
        selections=["ServiceRequest/o2"],
    )
    cards = cds(region.c, "exam-reuse", body).json()["cards"]
    assert [c["extension"]["org.yijian-hub.outcomes"] for c in cards] == [{"ct-chest": "expired"}]
    body["context"]["selections"] = ["ServiceRequest/o1"]
    cards = cds(region.c, "exam-reuse", body).json()["cards"]
    assert [c["source"]["topic"]["code"] for c in cards] == ["cbc"]


def test_cds_bad_requests(region: Region, hub: HubUnderTest, doctor: Client) -> None:
    orders = draft_orders(("o1", [{"system": LOINC, "code": "58410-2"}]))
    good = hook_request("order-sign", None, orders, patient_id="nobody")
    assert cds(region.c, "exam-reuse-sign", good).json() == {"cards": []}  # unknown patient
    assert cds(region.c, "exam-reuse", good).status_code == 400  # wrong hook
    assert cds(region.c, "no-such-service", good).status_code == 404
    missing = json.loads(json.dumps(good))
    del missing["context"]["patientId"]
    response = cds(region.c, "exam-reuse-sign", missing)
    assert response.status_code == 400 and "patientId" in response.text
    broken = json.loads(json.dumps(good))
    broken["context"]["draftOrders"] = "not a bundle"
    assert cds(region.c, "exam-reuse-sign", broken).status_code == 400
    response = httpx.post(f"{hub.base_url}/cds-services/exam-reuse-sign", json=good)
    assert response.status_code == 401
    response = region.c.http.post(
        "/cds-services/exam-reuse-sign",
        content=b"{truncated",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400


def test_feedback_and_statistics(
    region: Region, scenario: tuple[Someone, dict[str, str], dict[str, str]], admin: Client
) -> None:
    someone, _, _ = scenario
    department = f"心内科-{uuid.uuid4().hex[:6]}"
    cards = []
    for number in range(4):
        order = (f"cbc-{number}-{uuid.uuid4().hex[:6]}", [{"system": LOINC, "code": "58410-2"}])
        body = hook_request(
            "order-sign",
            None,
            draft_orders(order),
            patient_id=someone.sources[region.a.id],
            department=department,
        )
        response = cds(region.c, "exam-reuse-sign", body)
        cards.append(next(c for c in response.json()["cards"] if c.get("suggestions")))
    # the EHR retries the last call: the same order's reminder is shown again, not a new one
    body["hookInstance"] = str(uuid.uuid4())
    again = cds(region.c, "exam-reuse-sign", body).json()["cards"]
    assert next(c for c in again if c.get("suggestions"))["uuid"] == cards[-1]["uuid"]
    accepted, declined, viewed, overlooked = cards

    def feedback(card: dict[str, Any], **item: Any) -> httpx.Response:
        return region.c.http.post(
            "/cds-services/exam-reuse-sign/feedback",
            json={"feedback": [{"card": card["uuid"], "outcomeTimestamp": days_ago(0), **item}]},
        )

    answer = feedback(
        accepted,
        outcome="accepted",
        acceptedSuggestions=[{"id": accepted["suggestions"][0]["uuid"]}],
    )
    assert answer.status_code == 200 and answer.json() == {"recorded": 1, "skipped": []}
    # a decline needs a reason, and "other" needs words: such feedback records nothing
    for override in (
        None,
        {"reason": {"system": DECLINE, "code": "other"}},
        {"reason": {"system": DECLINE, "code": "because"}},
        {"reason": {"system": DECLINE, "code": ["condition-changed"]}},
    ):
        extra = {"overrideReason": override} if override else {}
        answer = feedback(declined, outcome="overridden", **extra)
        assert answer.status_code == 200 and answer.json()["recorded"] == 0, override
    assert (
        "text"
        in feedback(
            declined,
            outcome="overridden",
            overrideReason={"reason": {"system": DECLINE, "code": "other"}},
        ).json()["skipped"][0]["reason"]
    )
    answer = feedback(
        declined,
        outcome="overridden",
        overrideReason={
            "reason": {"system": DECLINE, "code": "condition-changed", "display": "病情变化"},
            "userComment": "胸痛加重",
        },
    )
    assert answer.json()["recorded"] == 1
    # unknown cards (the explanation card), and another hospital's cards, record nothing;
    # the good items of the same request are still recorded
    response = region.a.http.post(
        "/cds-services/exam-reuse-sign/feedback",
        json={
            "feedback": [
                {"card": accepted["uuid"], "outcome": "accepted"},
                {"card": str(uuid.uuid4()), "outcome": "accepted"},
            ]
        },
    )
    assert response.status_code == 200 and response.json()["recorded"] == 0
    assert len(response.json()["skipped"]) == 2
    malformed = feedback({"uuid": "not-a-uuid"}, outcome="accepted").json()
    assert malformed["recorded"] == 0 and "uuid" in malformed["skipped"][0]["reason"]
    # the card's link: a page (link previewers GET it: nothing counted), whose POST counts the
    # view and opens the workstation on the result
    link = viewed["links"][0]["url"]
    page = httpx.get(link, follow_redirects=False)
    assert page.status_code == 200 and '<form method="post">' in page.text
    opened = httpx.post(link, follow_redirects=False)
    assert opened.status_code == 303
    assert opened.headers["location"].startswith(
        f"/results/{viewed['extension']['org.yijian-hub.result']}?reminder={viewed['uuid']}"
    )
    assert httpx.get(link[:-4] + "abcd", follow_redirects=False).status_code == 401

    price = region.c.http.get("/admin/catalogue/items/cbc").json()["price_cny"]
    response = region.c.http.get("/recognition/statistics", params={"group": "department,item"})
    assert response.status_code == 200, response.text
    (row,) = [r for r in response.json()["rows"] if r["department"] == department]
    assert row == {
        "department": department,
        "item": "cbc",
        "reminders": 4,
        "viewed": 1,
        "accepted": 1,
        "declined": 1,
        "declined_by_reason": {"condition-changed": 1},
        "overlooked": 1,
        "tests_avoided": 1,
        "saved_cny": price,
        "access_rate": 0.25,
        "recognition_rate": 0.25,
    }
    # a later decision replaces the earlier one: the declined result is accepted after all
    response = region.c.http.post(
        "/recognition/decisions",
        json={"reminder": declined["uuid"], "outcome": "accepted", "decidedBy": "李医生"},
    )
    assert response.status_code == 201, response.text
    response = region.c.http.post(
        "/recognition/decisions",
        json={"reminder": overlooked["uuid"], "outcome": "declined", "reason": "other"},
    )
    assert response.status_code == 400
    csv_text = admin.http.get(
        f"{region.c.http.base_url}/recognition/statistics",
        params={
            "group": "department",
            "period": "day",
            "format": "csv",
            "organization": region.c.id,
        },
    ).text
    header, *lines = csv_text.lstrip("\ufeff").splitlines()
    assert header.startswith("period,department,reminders,viewed,accepted,declined,overlooked")
    (line,) = [x for x in lines if department in x]
    assert line.split(",")[2:7] == ["4", "1", "2", "0", "1"]
    # a hospital sees only its own statistics
    response = region.a.http.get("/recognition/statistics", params={"organization": region.c.id})
    assert response.status_code == 403
    assert (
        region.c.http.get("/recognition/statistics", params={"group": "colour"}).status_code == 400
    )
    overlooked_detail = region.c.http.get(f"/recognition/reminders/{overlooked['uuid']}").json()
    assert overlooked_detail["department"] == department
    assert overlooked_detail["practitioner"] == "Practitioner/dr-li"


def test_cds_request_signed_by_a_registered_ehr_key(
    hub: HubUnderTest,
    region: Region,
    scenario: tuple[Someone, dict[str, str], dict[str, str]],
    tmp_path: Any,
) -> None:
    someone, _, _ = scenario
    key = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "ehr-1", "alg": "ES384"}]}))
    issuer = f"https://ehr-{uuid.uuid4().hex[:6]}.example.org"
    hub.cli(
        "clients", "cds-key", region.c.client.client_id, "--issuer", issuer, "--jwks", str(jwks)
    )
    url = f"{hub.base_url}/cds-services/exam-reuse-sign"

    def signed(**claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": issuer,
            "sub": region.c.client.client_id,
            "aud": url,
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(payload, key, algorithm="ES384", headers={"kid": "ehr-1"})

    orders = draft_orders(("o1", [{"system": LOINC, "code": "58410-2"}]))
    body = hook_request("order-sign", None, orders, patient_id=someone.sources[region.a.id])
    token = signed()
    response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert [c["source"]["topic"]["code"] for c in response.json()["cards"]] == ["cbc"]
    replay = httpx.post(url, json=body, headers={"Authorization": f"Bearer {token}"})
    assert replay.status_code == 401 and "jti" in replay.text
    for bad in (
        signed(aud=url + "/feedback"),
        signed(iss="https://stranger.example"),
        signed(exp=int(time.time()) - 120),
        signed(sub="someone-else"),
    ):
        response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {bad}"})
        assert response.status_code == 401, bad
    other = ec.generate_private_key(ec.SECP384R1())
    forged = jwt.encode(
        {
            "iss": issuer,
            "sub": region.c.client.client_id,
            "aud": url,
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
            "jti": "x",
        },
        other,
        algorithm="ES384",
        headers={"kid": "ehr-1"},
    )
    assert (
        httpx.post(url, json=body, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    )


# -- the catalogue ------------------------------------------------------------------------------


def test_catalogue_edits_are_versions_and_windows_differ_by_region(
    region: Region, admin: Client, hub: HubUnderTest
) -> None:
    root = region.c.http.base_url
    someone = enrol([region.a])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    cbc_panel(region.a, someone.sources[region.a.id], days_ago(10))
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "expired"
    assert reusable(region.n, identifier=ident, code="cbc")["cbc"]["outcome"] == "expired"
    original = admin.http.get(f"{root}/admin/catalogue/items/cbc").json()
    before = admin.http.get(f"{root}/admin/catalogue").json()["version"]
    edited = {**original, "scope": "province", "region_validity_days": {"3302": 14}}
    # only admins edit; a bad item is refused with the reason
    assert region.c.http.put("/admin/catalogue/items/cbc", json=edited).status_code == 403
    response = admin.http.put(
        f"{root}/admin/catalogue/items/cbc",
        json={**edited, "region_validity_days": {"zhejiang": 3}},
    )
    assert response.status_code == 422 and "division code" in response.text
    try:
        response = admin.http.put(
            f"{root}/admin/catalogue/items/cbc", params={"note": "宁波"}, json=edited
        )
        assert response.status_code == 200, response.text
        assert response.json()["version"] == before + 1
        # Ningbo's window is 14 days now; Hangzhou's is still 7
        assert reusable(region.n, identifier=ident, code="cbc")["cbc"]["outcome"] == "reusable"
        assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "expired"
        versions = admin.http.get(f"{root}/admin/catalogue/versions").json()
        assert versions[0]["version"] == before + 1 and versions[0]["note"] == "宁波"
        # withdrawn: not recognisable any more
        assert admin.http.delete(f"{root}/admin/catalogue/items/cbc").status_code == 200
        gone = reusable(region.n, identifier=ident, code="cbc")["cbc"]["outcome"]
        assert gone == "not-recognisable"
    finally:
        response = admin.http.put(f"{root}/admin/catalogue/items/cbc", json=original)
        assert response.status_code == 200
    assert reusable(region.n, identifier=ident, code="cbc")["cbc"]["outcome"] == "expired"
    out = hub.cli("catalogue", "show", "cbc").stdout
    assert json.loads(out)["validity_days"] == 7
    assert "cbc" in hub.cli("catalogue", "list").stdout


def test_fhirpy_calls_the_operation(
    hub: HubUnderTest, region: Region, scenario: tuple[Someone, dict[str, str], dict[str, str]]
) -> None:
    """An independent FHIR client (fhirpy) runs $reusable-results, GET and POST."""
    from fhirpy import SyncFHIRClient

    someone, _, _ = scenario
    token = hub.token(region.c.client.client_id, region.c.client.secret).json()["access_token"]
    client = SyncFHIRClient(hub.fhir, authorization=f"Bearer {token}")
    answer = client.execute(
        f"Patient/{someone.sources[region.b.id]}/$reusable-results",
        method="get",
        params={"code": "cbc"},
    )
    assert items_of(answer)["cbc"]["outcome"] == "reusable"
    answer = client.execute(
        "Patient/$reusable-results",
        data={
            "resourceType": "Parameters",
            "parameter": [
                {
                    "name": "identifier",
                    "valueIdentifier": {
                        "system": "https://yijian-hub.org/fhir/sid/resident-id",
                        "value": someone.resident_id,
                    },
                },
                {"name": "code", "valueCoding": {"system": LOINC, "code": "718-7"}},
                {"name": "date", "valueDateTime": days_ago(-30)},
            ],
        },
    )
    # a month from now the CBC has expired
    assert items_of(answer)["718-7"]["outcome"] == "expired"


def test_results_received_as_hl7_are_reusable(hub: HubUnderTest, region: Region) -> None:
    """A hospital LIS sends an ORU^R01 with local codes; its feed's code map (the demo LIS
    map) gives LOINC; hospital C's EHR is told the CBC can be reused, with the values."""
    import yaml

    from tests.oru import Person, oru

    tag = uuid.uuid4().hex[:8].upper()
    feed, facility = f"reuse-lis-{tag.lower()}", f"REUSE-{tag}"
    (hub.adapters_dir / f"{feed}.yaml").write_text(
        yaml.safe_dump(
            {
                "feed": feed,
                "organization": region.a.id,
                "sending_facility": facility,
                "code_map": "demo-lis",
                "identifiers": {facility: "mrn", "SFZ": "resident-id"},
            }
        ),
        encoding="utf-8",
    )
    someone = person(fresh_people())
    observed = days_ago(2).replace("-", "").replace("T", "").replace(":", "")[:14]
    message = oru(
        f"T{tag}",
        facility,
        Person(
            f"M{tag}", someone.name, "F", someone.birth_date.strftime("%Y%m%d"), someone.resident_id
        ),
        f"F{tag}",
        observed=observed,
    )
    headers = {"Content-Type": "x-application/hl7-v2+er7"}
    deadline = time.time() + 15
    while True:  # the hub reads new feed files within seconds
        response = region.a.http.post(f"/ingest/{feed}", content=message, headers=headers)
        if response.status_code != 400 or time.time() > deadline:
            break
        time.sleep(0.3)
    assert response.status_code == 200, response.text
    orders = draft_orders(("cbc", [{"system": LOINC, "code": "58410-2"}]))
    prefetched = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "https://yijian-hub.org/fhir/sid/resident-id", "value": someone.resident_id}
        ],
    }
    cards = cds(region.c, "exam-reuse-sign", hook_request("order-sign", prefetched, orders)).json()[
        "cards"
    ]
    (card,) = cards
    assert card["source"]["topic"]["code"] == "cbc"
    assert "血红蛋白" in card["detail"] and "118 g/L" in card["detail"]
    assert card["summary"].endswith(f"杭州市西湖区人民医院 {days_ago(2)[:10]})")


# -- what the review found ---------------------------------------------------------------------


def test_a_hospital_cannot_borrow_another_hospitals_qc_pass(region: Region) -> None:
    """Hospital P (Beijing: outside the city scope) names hospital A (Hangzhou) first among
    the performers: the result is still P's (the hub knows who wrote it)."""
    someone = enrol([region.p])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    written = cbc_panel(region.p, someone.sources[region.p.id], days_ago(1))
    for reference in written.values():
        if reference.startswith(("Observation/", "DiagnosticReport/")):
            body = region.p.client.get(f"/{reference}").json()
            body.pop("meta")
            body["performer"] = [
                {"reference": f"Organization/{region.a.id}"},
                {"reference": f"Organization/{region.p.id}"},
            ]
            assert region.p.client.put(f"/{reference}", json=body).status_code == 200
    item = reusable(region.c, identifier=ident, code="cbc")["cbc"]
    assert item["outcome"] == "out-of-scope"
    assert item["performer"]["reference"] == f"Organization/{region.p.id}"


def test_a_report_listing_its_results_counts_their_flags(region: Region) -> None:
    """A CBC pushed as a report whose ``result`` lists its Observations (no ``basedOn``) with
    a critical platelet count is not suggested; the card would have shown [LL]."""
    someone = enrol([region.a])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    pid = someone.sources[region.a.id]
    org = {"reference": f"Organization/{region.a.id}"}
    resources: list[dict[str, Any]] = []
    results = []
    for code, name, value, unit, _ in CBC:
        ref = f"urn:uuid:{uuid.uuid4()}"
        results.append({"reference": ref})
        observation: dict[str, Any] = {
            "_urn": ref,
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}], "text": name},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": days_ago(1),
            "performer": [org],
            "valueQuantity": {"value": value, "unit": unit},
        }
        if code == "777-3":
            observation["valueQuantity"]["value"] = 12
            observation["interpretation"] = [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                            "code": "LL",
                        }
                    ]
                }
            ]
        resources.append(observation)
    resources.append(
        {
            "_urn": f"urn:uuid:{uuid.uuid4()}",
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": days_ago(1),
            "performer": [org],
            "result": results,
        }
    )
    from tests.recognition_support import transaction

    transaction(region.a.client, resources)
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "needs-review"


def test_a_newer_critical_result_is_not_passed_over(region: Region) -> None:
    someone = enrol([region.a])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    cbc_panel(region.a, someone.sources[region.a.id], days_ago(5))
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "reusable"
    cbc_panel(region.a, someone.sources[region.a.id], days_ago(1), flags={"718-7": "LL"})
    assert reusable(region.c, identifier=ident, code="cbc")["cbc"]["outcome"] == "needs-review"
    # ...but as of three days ago, the critical result did not exist yet
    earlier = reusable(region.c, identifier=ident, code="cbc", date=days_ago(3))["cbc"]
    assert earlier["outcome"] == "reusable"


def test_identifiers_of_two_people_are_refused(region: Region) -> None:
    one, two = enrol([region.a]), enrol([region.a])
    cbc_panel(region.a, two.sources[region.a.id], days_ago(1))
    system = "https://yijian-hub.org/fhir/sid/resident-id"
    response = region.c.client.get(
        "/Patient/$reusable-results",
        params={
            "identifier": [f"{system}|{one.resident_id}", f"{system}|{two.resident_id}"],
            "code": "cbc",
        },
    )
    assert response.status_code == 409, response.text
    prefetched = {
        "resourceType": "Patient",
        "identifier": [
            {"system": system, "value": one.resident_id},
            {"system": system, "value": two.resident_id},
        ],
    }
    orders = draft_orders(("o-two", [{"system": LOINC, "code": "58410-2"}]))
    (card,) = cds(
        region.c, "exam-reuse-sign", hook_request("order-sign", prefetched, orders)
    ).json()["cards"]
    assert card["indicator"] == "warning" and "suggestions" not in card


def test_concurrent_catalogue_edits_are_all_kept(region: Region, admin: Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    root = region.c.http.base_url
    base = admin.http.get(f"{root}/admin/catalogue/items/ferritin").json()
    names = [f"race-{uuid.uuid4().hex[:6]}" for _ in range(6)]

    def put(name: str) -> int:
        return admin.http.put(
            f"{root}/admin/catalogue/items/{name}", json={**base, "id": name}
        ).status_code

    try:
        with ThreadPoolExecutor(6) as pool:
            assert list(pool.map(put, names)) == [200] * 6
        items = {
            i["id"] for i in admin.http.get(f"{root}/admin/catalogue").json()["document"]["items"]
        }
        assert set(names) <= items
    finally:
        for name in names:
            admin.http.delete(f"{root}/admin/catalogue/items/{name}")


def test_malformed_inputs_are_400s_not_500s(
    region: Region, scenario: tuple[Someone, dict[str, str], dict[str, str]], admin: Client
) -> None:
    someone, _, _ = scenario
    pid = someone.sources[region.a.id]
    orders = draft_orders(("o-bad", [{"system": LOINC, "code": "58410-2"}]))
    odd = hook_request("order-sign", None, orders, patient_id=pid)
    odd["prefetch"] = "x"
    assert cds(region.c, "exam-reuse-sign", odd).status_code == 200
    odd["prefetch"] = {"user": {"resourceType": "PractitionerRole", "specialty": ["x", {}]}}
    assert cds(region.c, "exam-reuse-sign", odd).status_code == 200
    numeric = hook_request(
        "order-sign", None, draft_orders(("o", [{"system": 5, "code": "1"}])), patient_id=pid
    )
    assert cds(region.c, "exam-reuse-sign", numeric).status_code == 400
    client = region.c.client
    assert (
        client.get(
            "/Patient/$reusable-results", params={"patient": "a\x00", "code": "cbc"}
        ).status_code
        == 400
    )
    assert (
        client.get(f"/Patient/{pid}/$reusable-results", params={"code": "x\x00"}).status_code == 400
    )
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": f"Patient/{pid}"}},
            {"name": "code", "valueCoding": {"system": {}, "code": "cbc"}},
        ],
    }
    assert client.post("/Patient/$reusable-results", json=body).status_code == 400
    root = region.c.http.base_url
    assert admin.http.get(f"{root}/admin/catalogue/versions/99999999999").status_code == 400
    assert admin.http.get(f"{root}/admin/catalogue/versions/0").status_code == 400


def test_results_referencing_a_patient_elsewhere_do_not_count(region: Region) -> None:
    someone = enrol([region.a])
    ident = f"https://yijian-hub.org/fhir/sid/resident-id|{someone.resident_id}"
    pid = someone.sources[region.a.id]
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}]},
        "subject": {"reference": f"http://other.example/fhir/Patient/{pid}"},
        "effectiveDateTime": days_ago(1),
        "performer": [{"reference": f"Organization/{region.a.id}"}],
        "valueQuantity": {"value": 5.6, "unit": "%"},
    }
    response = region.a.client.post("/Observation", json=observation)
    assert response.status_code == 201, response.text
    assert reusable(region.c, identifier=ident, code="hba1c")["hba1c"]["outcome"] == "no-result"
