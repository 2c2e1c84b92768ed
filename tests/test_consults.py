"""Telemedicine consultations through HTTP: what a consultant may read is exactly what the
requesting doctor shared, through FHIR (search, read, $everything), until the grant ends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.conftest import Client, HubUnderTest
from tests.identity_support import create, fresh_people, person, result_for, source


def _ids(bundle: dict[str, Any], resource_type: str) -> set[str]:
    return {
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e["resource"]["resourceType"] == resource_type
    }


def _in(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


@pytest.fixture
def record(hub: HubUnderTest, hospital_a: Client, hospital_b: Client, doctor: Client) -> Any:
    """A person registered at hospital A (two results) and at B, the doctor's hospital, who
    has opened the patient in their care."""
    someone = person(fresh_people())
    pid_a = create(hospital_a, source(someone, hospital_a.organization))
    pid_b = create(hospital_b, source(someone, hospital_b.organization))
    shared = result_for(hospital_a, pid_a)
    other = result_for(hospital_a, pid_a)
    grant = doctor.post(
        f"{hub.base_url}/access/grants",
        json={"patient": f"Patient/{pid_b}", "purposeOfUse": "TREAT"},
    )
    assert grant.status_code == 201, grant.text
    return {"a": pid_a, "b": pid_b, "shared": shared, "other": other}


def _open(hub: HubUnderTest, doctor: Client, consultant: Client, patient: str, **share: Any) -> Any:
    body = {
        "patient": f"Patient/{patient}",
        "consultant": consultant.client_id,
        "question": "请协助判读肝功能异常 Please advise on the abnormal liver panel",
        "share": share,
        "expires": _in(2),
        "consent": {"method": "written", "note": "患者本人签字"},
    }
    return doctor.post(f"{hub.base_url}/consultations", json=body)


def test_consultant_reads_exactly_the_shared_items(
    hub: HubUnderTest, doctor: Client, consultant: Client, record: Any
) -> None:
    before = consultant.get(f"/Patient/{record['a']}/$everything")
    assert before.status_code in (403, 404), before.text
    opened = _open(hub, doctor, consultant, record["a"], items=[f"Observation/{record['shared']}"])
    assert opened.status_code == 201, opened.text
    consult = opened.json()
    assert consult["status"] == "active"
    assert consult["scope"] == {"items": [f"Observation/{record['shared']}"]}

    everything = consultant.get(f"/Patient/{record['a']}/$everything")
    assert everything.status_code == 200, everything.text
    bundle = everything.json()
    assert _ids(bundle, "Observation") == {record["shared"]}
    assert {record["a"], record["b"]} <= _ids(bundle, "Patient")
    assert consult["serviceRequest"].split("/")[1] in _ids(bundle, "ServiceRequest")

    assert consultant.get(f"/Observation/{record['shared']}").status_code == 200
    assert consultant.get(f"/Observation/{record['other']}").status_code == 404
    searched = consultant.get("/Observation", params={"patient": record["a"]}).json()
    assert _ids(searched, "Observation") == {record["shared"]}


def test_consent_and_service_request_are_fhir(
    hub: HubUnderTest, doctor: Client, consultant: Client, admin: Client, record: Any
) -> None:
    consult = _open(
        hub, doctor, consultant, record["a"], items=[f"Observation/{record['shared']}"]
    ).json()
    consent = admin.get(f"/{consult['consent']}").json()
    assert consent["status"] == "active"
    assert consent["patient"]["reference"] == f"Patient/{record['a']}"
    assert consent["policyRule"]["coding"][0]["code"] == "OPTIN"
    assert consent["provision"]["type"] == "permit"
    assert consent["provision"]["data"] == [
        {"meaning": "instance", "reference": {"reference": f"Observation/{record['shared']}"}}
    ]
    request = admin.get(f"/{consult['serviceRequest']}").json()
    assert request["code"]["coding"][0]["code"] == "11429006"
    assert request["reasonCode"][0]["text"].startswith("请协助判读")


def test_period_share(
    hub: HubUnderTest, hospital_a: Client, doctor: Client, consultant: Client, record: Any
) -> None:
    old = result_for(hospital_a, record["a"], effectiveDateTime="2019-05-01T08:00:00+08:00")
    consult = _open(
        hub,
        doctor,
        consultant,
        record["a"],
        period={"start": "2024-01-01T00:00:00+08:00", "end": _in(1)},
    )
    assert consult.status_code == 201, consult.text
    seen = _ids(consultant.get(f"/Patient/{record['a']}/$everything").json(), "Observation")
    assert {record["shared"], record["other"]} <= seen
    assert old not in seen


def test_reply_revoke_and_expiry(
    hub: HubUnderTest, doctor: Client, consultant: Client, admin: Client, record: Any
) -> None:
    consult = _open(
        hub, doctor, consultant, record["a"], items=[f"Observation/{record['shared']}"]
    ).json()
    url = f"{hub.base_url}/consultations/{consult['id']}"
    assert doctor.post(f"{url}/reply", json={"text": "x"}).status_code == 403
    replied = consultant.post(f"{url}/reply", json={"text": "考虑药物性肝损伤，建议复查。"})
    assert replied.status_code == 200, replied.text
    report_ref = replied.json()["reply"]
    report = doctor.get(f"/{report_ref}")
    assert report.status_code == 200, report.text
    assert report.json()["conclusion"].startswith("考虑药物性肝损伤")
    assert report.json()["code"]["coding"][0]["code"] == "11488-4"

    assert consultant.post(f"{url}/revoke").status_code == 403
    revoked = doctor.post(f"{url}/revoke")
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["status"] == "revoked"
    assert consultant.get(f"/Observation/{record['shared']}").status_code == 404
    assert consultant.get(f"/Patient/{record['a']}/$everything").status_code in (403, 404)
    assert admin.get(f"/{consult['consent']}").json()["status"] == "inactive"
    assert consultant.post(f"{url}/reply", json={"text": "late"}).status_code == 409


async def _expire(database_url: str, consult_id: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "UPDATE consult SET created_at = now() - interval '2 days', "
            "expires_at = now() - interval '1 second' WHERE id = $1::uuid",
            consult_id,
        )
    finally:
        await connection.close()


def test_expired_grant_reads_nothing(
    hub: HubUnderTest, doctor: Client, consultant: Client, record: Any
) -> None:
    import asyncio

    consult = _open(
        hub, doctor, consultant, record["a"], items=[f"Observation/{record['shared']}"]
    ).json()
    assert consultant.get(f"/Observation/{record['shared']}").status_code == 200
    asyncio.run(_expire(hub.database_url, consult["id"]))
    assert consultant.get(f"/Observation/{record['shared']}").status_code == 404
    listed = consultant.get(f"{hub.base_url}/consultations").json()["consults"]
    assert next(c for c in listed if c["id"] == consult["id"])["status"] == "expired"


def test_refusals(
    hub: HubUnderTest, doctor: Client, consultant: Client, hospital_a: Client
) -> None:
    someone = person(fresh_people())
    elsewhere = create(hospital_a, source(someone, hospital_a.organization))
    result = result_for(hospital_a, elsewhere)
    # No purpose for this patient: nothing to share.
    refused = _open(hub, doctor, consultant, elsewhere, items=[f"Observation/{result}"])
    assert refused.status_code == 403, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
    # Only a registered consultant can be named; a share needs one of period or items.
    assert _open(hub, doctor, doctor, elsewhere, items=[]).status_code in (400, 403)
    both = _open(
        hub,
        doctor,
        consultant,
        elsewhere,
        items=[f"Observation/{result}"],
        period={"start": "2024-01-01", "end": "2025-01-01"},
    )
    assert both.status_code == 400
    # A consultant cannot open consultations.
    assert _open(hub, consultant, consultant, elsewhere, items=[]).status_code in (400, 403)


def test_share_only_what_the_doctor_may_see(
    hub: HubUnderTest, doctor: Client, consultant: Client, hospital_a: Client, record: Any
) -> None:
    stranger = create(hospital_a, source(person(fresh_people()), hospital_a.organization))
    foreign = result_for(hospital_a, stranger)
    refused = _open(hub, doctor, consultant, record["a"], items=[f"Observation/{foreign}"])
    assert refused.status_code == 404, refused.text


def _stored_study(hub: HubUnderTest, hospital_a: Client) -> tuple[str, str, str]:
    """A one-instance CT study of hospital A sent by STOW-RS: (study UID, ImagingStudy id,
    the Patient the hub made for it)."""
    import time

    from pydicom.uid import generate_uid

    from tests.test_dicomweb import copy_of, dicomweb

    study_uid = generate_uid()
    dicomweb(hub, hospital_a).store_instances([copy_of("CT_small.dcm", study=study_uid)])
    deadline = time.monotonic() + 15
    while True:
        found = hospital_a.get(
            "ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
        ).json()
        if found.get("entry"):
            resource = found["entry"][0]["resource"]
            return study_uid, resource["id"], resource["subject"]["reference"].split("/")[1]
        assert time.monotonic() < deadline, "no ImagingStudy for the stored study"
        time.sleep(0.2)


def test_consultant_retrieves_only_shared_studies_over_dicomweb(
    hub: HubUnderTest, doctor: Client, consultant: Client, hospital_a: Client
) -> None:
    from tests.test_dicomweb import http

    shared_uid, imaging_study, patient_id = _stored_study(hub, hospital_a)
    other_uid, _, _ = _stored_study(hub, hospital_a)
    emergency = doctor.post(
        f"{hub.base_url}/access/grants",
        json={
            "patient": f"Patient/{patient_id}",
            "purposeOfUse": "ETREAT",
            "reason": "急诊会诊 emergency teleconsultation",
        },
    )
    assert emergency.status_code == 201, emergency.text
    consult = _open(hub, doctor, consultant, patient_id, items=[f"ImagingStudy/{imaging_study}"])
    assert consult.status_code == 201, consult.text
    with http(hub, consultant) as web:
        found = web.get("/studies", headers={"Accept": "application/dicom+json"})
        assert found.status_code in (200, 204), found.text
        uids = {s["0020000D"]["Value"][0] for s in (found.json() if found.content else [])}
        assert shared_uid in uids and other_uid not in uids
        metadata = web.get(f"/studies/{shared_uid}/metadata")
        assert metadata.status_code == 200, metadata.text
        assert web.get(f"/studies/{other_uid}/metadata").status_code == 404
        revoked = doctor.post(f"{hub.base_url}/consultations/{consult.json()['id']}/revoke")
        assert revoked.status_code == 200
        assert web.get(f"/studies/{shared_uid}/metadata").status_code == 404
