"""Access by purpose of use (``hub.access``) through HTTP against a real database.

A doctor reads a person's record only with a purpose: the patient registered at the doctor's
organization (TREAT), an order being placed (a CDS Hooks call, ``$reusable-results``) or an
emergency with a reason (break-glass, ETREAT, reported to the operator). A patient's opt-out
Consent keeps the record from crossing hospitals, even in an emergency. Grants end when the
doctor ends them or when they expire. Hospitals and admins keep their fixed rules.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.access_support import (
    break_glass,
    end_grant,
    grant_request,
    live_grants,
    order_for,
    treat,
)
from tests.conftest import Client, HubUnderTest
from tests.identity_support import (
    RESIDENT,
    create,
    fresh_people,
    person,
    query,
    result_for,
    source,
)
from tests.recognition_support import (
    LOINC,
    Hospital,
    cbc_panel,
    days_ago,
    draft_orders,
    hook_request,
    qc,
    register_hospital,
)
from tests.test_dicomweb import copy_of, dicomweb, http


def ids_of(bundle: dict[str, Any], resource_type: str = "Observation") -> set[str]:
    return {
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e["resource"]["resourceType"] == resource_type
    }


def observations_of(client: Client, patient_id: str) -> set[str]:
    response = client.get(
        "/Observation", params={"patient": f"Patient/{patient_id}", "_count": "200"}
    )
    assert response.status_code == 200, response.text
    return ids_of(response.json())


def at_a(hospital_a: Client) -> tuple[Any, str, str]:
    """A person registered at hospital A only (with a resident ID), and one result there."""
    someone = person(fresh_people())
    pid = create(hospital_a, source(someone, hospital_a.organization))
    return someone, pid, result_for(hospital_a, pid)


def cds_call(hub: HubUnderTest, client: Client, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{hub.base_url}/cds-services/exam-reuse-sign",
        json=body,
        headers={"Authorization": client.http.headers["Authorization"]},
        timeout=30,
    )


# -- without a purpose --------------------------------------------------------------------------


def test_without_a_purpose_a_doctor_reads_nothing_of_the_patient(
    hospital_a: Client, doctor: Client
) -> None:
    someone, pid, oid = at_a(hospital_a)
    assert observations_of(doctor, pid) == set()
    by_id = doctor.get(
        "/Observation", params={"patient.identifier": f"{RESIDENT}|{someone.resident_id}"}
    )
    assert by_id.status_code == 200 and ids_of(by_id.json()) == set()
    assert ids_of(doctor.get("/Patient", params={"_id": pid}).json(), "Patient") == set()
    for path in (f"/Observation/{oid}", f"/Patient/{pid}", f"/Observation/{oid}/_history/1"):
        response = doctor.get(path)
        assert response.status_code == 404, path
        assert response.json()["resourceType"] == "OperationOutcome"
    everything = doctor.get(f"/Patient/{pid}/$everything")
    assert everything.status_code in (403, 404), everything.text
    assert "entry" not in everything.json()
    # The same reads pass for the hospital that wrote them (the test can tell the difference).
    assert observations_of(hospital_a, pid) == {oid}


def test_without_a_purpose_a_doctor_finds_no_study_until_ordering(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    patient_key = f"P-ACCESS-{generate_uid()[-8:]}"
    dataset = copy_of("CT_small.dcm", patient_id=patient_key, StudyDate="20261101")
    stored = dicomweb(hub, hospital_a).store_instances([dataset])
    assert "FailedSOPSequence" not in stored
    study_uid = dataset.StudyInstanceUID
    imaging_study: dict[str, Any] | None = None
    deadline = time.monotonic() + 15
    while imaging_study is None:
        found = hospital_a.get(
            "/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
        ).json()
        if found.get("entry"):
            imaging_study = found["entry"][0]["resource"]
        else:
            assert time.monotonic() < deadline, "no ImagingStudy for the stored study"
            time.sleep(0.2)
    patient_id = imaging_study["subject"]["reference"].removeprefix("Patient/")
    instance = (
        f"/studies/{study_uid}/series/{dataset.SeriesInstanceUID}"
        f"/instances/{dataset.SOPInstanceUID}"
    )

    reader = dicomweb(hub, doctor)
    assert reader.search_for_studies(search_filters={"PatientID": patient_key}) == []
    assert reader.search_for_studies(search_filters={"StudyInstanceUID": study_uid}) == []
    with http(hub, doctor) as client:
        for path in (instance, f"/studies/{study_uid}/metadata", f"/studies/{study_uid}"):
            assert client.get(path).status_code == 404, path
    assert doctor.get(f"/ImagingStudy/{imaging_study['id']}").status_code == 404

    order_for(doctor, patient_id)
    found_studies = reader.search_for_studies(search_filters={"PatientID": patient_key})
    assert [s["0020000D"]["Value"][0] for s in found_studies] == [study_uid]
    with http(hub, doctor) as client:
        assert client.get(instance).status_code == 200
    assert doctor.get(f"/ImagingStudy/{imaging_study['id']}").status_code == 200
    # Another hospital still sees nothing of it.
    with http(hub, hospital_b) as client:
        assert client.get(instance).status_code == 404


# -- TREAT: the patient in the doctor's care ----------------------------------------------------


def test_treat_needs_the_patient_registered_at_the_doctors_organization(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    someone, pid_a, oid_a = at_a(hospital_a)
    _, stranger, stranger_oid = at_a(hospital_a)
    refused = grant_request(hub, doctor, pid_a, "TREAT")
    assert refused.status_code == 403, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"
    assert grant_request(hub, doctor, "no-such-patient", "TREAT").status_code == 403
    assert grant_request(hub, doctor, pid_a, "READ-EVERYTHING").status_code in (400, 422)
    assert doctor.get(f"/Observation/{oid_a}").status_code == 404

    # Hospital B registers the same person (same resident ID: one person, linked records).
    pid_b = create(hospital_b, source(someone, hospital_b.organization))
    oid_b = result_for(hospital_b, pid_b)
    grant = treat(hub, doctor, pid_a)  # any record of the person will do
    assert grant["purpose"] == "care" and grant["purposeOfUse"] == "TREAT"
    assert grant["patient"] == f"Patient/{pid_a}"
    assert any(g["id"] == grant["id"] for g in live_grants(hub, doctor))

    # Hospital A's results of that person, and B's, whichever record is asked about ...
    assert observations_of(doctor, pid_a) == {oid_a, oid_b}
    assert observations_of(doctor, pid_b) == {oid_a, oid_b}
    assert doctor.get(f"/Observation/{oid_a}").status_code == 200
    assert doctor.get(f"/Patient/{pid_a}").status_code == 200
    everything = doctor.get(f"/Patient/{pid_b}/$everything")
    assert everything.status_code == 200, everything.text
    assert {oid_a, oid_b} <= ids_of(everything.json())
    # ... and nothing of another person at hospital A.
    assert doctor.get(f"/Observation/{stranger_oid}").status_code == 404
    assert observations_of(doctor, stranger) == set()


# -- ETREAT: break-glass -------------------------------------------------------------------------


def test_break_glass_needs_a_reason_and_is_reported_audited_and_counted(
    hub: HubUnderTest, admin: Client, hospital_a: Client, doctor: Client
) -> None:
    _, pid, oid = at_a(hospital_a)
    for reason in (None, "", "急诊", "   short   "):
        refused = grant_request(hub, doctor, pid, "ETREAT", reason)
        assert refused.status_code == 400, (reason, refused.text)
    assert (
        grant_request(
            hub, doctor, "no-such-patient", "ETREAT", "患者昏迷，急诊抢救需要既往检验"
        ).status_code
        == 404
    )
    assert doctor.get(f"/Observation/{oid}").status_code == 404

    grant = break_glass(hub, doctor, pid, "患者昏迷送入急诊，需要既往检验结果 unconscious")
    assert grant["purpose"] == "break-glass" and grant["purposeOfUse"] == "ETREAT"
    assert doctor.get(f"/Observation/{oid}").status_code == 200

    # The operator's report of emergency uses lists it, with who and why; only for admins.
    report = httpx.get(
        f"{hub.base_url}/admin/access/break-glass",
        headers={"Authorization": admin.http.headers["Authorization"]},
    )
    assert report.status_code == 200, report.text
    (use,) = [u for u in report.json()["uses"] if u["id"] == grant["id"]]
    assert use["client_id"] == doctor.client_id
    assert use["organization"] == doctor.organization
    assert use["patient_id"] == pid
    assert use["reason"] == "患者昏迷送入急诊，需要既往检验结果 unconscious"
    for other in (doctor, hospital_a):
        denied = httpx.get(
            f"{hub.base_url}/admin/access/break-glass",
            headers={"Authorization": other.http.headers["Authorization"]},
        )
        assert denied.status_code == 403

    # The patient's access log: the doctor's read, flagged with its purpose.
    log = httpx.get(
        f"{hub.base_url}/admin/access/patients/{pid}",
        headers={"Authorization": admin.http.headers["Authorization"]},
    )
    assert log.status_code == 200, log.text
    reads = [
        a
        for a in log.json()["accesses"]
        if a["client_id"] == doctor.client_id and a["action"] == "R" and a["status"] == 200
    ]
    assert reads, log.json()["accesses"]
    assert all(a["detail"] == "purpose: break-glass" for a in reads)
    assert any(f"Observation/{oid}/_history/1" in a["entities"] for a in reads)
    assert any(g["id"] == grant["id"] for g in log.json()["grants"])

    scraped = httpx.get(
        f"{hub.base_url}/metrics", headers={"Authorization": admin.http.headers["Authorization"]}
    )
    assert scraped.status_code == 200, scraped.text
    metrics = scraped.text
    counted = [
        line
        for line in metrics.splitlines()
        if line.startswith("yijian_break_glass_total{")
        and f'organization="{doctor.organization}"' in line
    ]
    assert counted and float(counted[0].rsplit(" ", 1)[1]) >= 1


def test_hospitals_and_consultants_cannot_establish_a_doctors_purpose(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client, consultant: Client
) -> None:
    _, pid, _ = at_a(hospital_a)
    for client in (hospital_a, hospital_b, consultant):
        response = grant_request(hub, client, pid, "ETREAT", "患者昏迷送入急诊，需要既往检验结果")
        assert response.status_code == 403, response.text


# -- ordering: a CDS Hooks call ------------------------------------------------------------------


def test_a_cds_call_for_the_patient_gives_the_doctor_read_access(
    hub: HubUnderTest, hospital_a: Client, doctor: Client
) -> None:
    someone, pid, oid = at_a(hospital_a)
    assert doctor.get(f"/Observation/{oid}").status_code == 404
    # The EHR knows the patient by the resident ID.
    prefetched = {
        "resourceType": "Patient",
        "id": "ehr-1",
        "identifier": [{"system": RESIDENT, "value": someone.resident_id}],
    }
    orders = draft_orders(("o-cbc", [{"system": LOINC, "code": "58410-2"}]))
    response = cds_call(
        hub, doctor, hook_request("order-sign", prefetched, orders, patient_id="ehr-1")
    )
    assert response.status_code == 200, response.text
    assert doctor.get(f"/Observation/{oid}").status_code == 200
    assert observations_of(doctor, pid) == {oid}
    (grant,) = [
        g
        for g in live_grants(hub, doctor)
        if g["source"] == "grant" and g["patient"] == f"Patient/{pid}"
    ]
    assert grant["purpose"] == "ordering"


# -- ending a purpose ---------------------------------------------------------------------------


def test_a_grant_ends_when_ended_or_expired(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    someone, _, oid_a = at_a(hospital_a)
    pid_b = create(hospital_b, source(someone, hospital_b.organization))

    grant = treat(hub, doctor, pid_b)
    assert doctor.get(f"/Observation/{oid_a}").status_code == 200
    ended = end_grant(hub, doctor, grant["id"])
    assert ended.status_code == 204, ended.text
    assert doctor.get(f"/Observation/{oid_a}").status_code == 404
    assert observations_of(doctor, pid_b) == set()
    assert end_grant(hub, doctor, grant["id"]).status_code == 404  # no longer in force
    assert all(g["id"] != grant["id"] for g in live_grants(hub, doctor))

    again = treat(hub, doctor, pid_b)
    assert again["id"] != grant["id"]
    assert doctor.get(f"/Observation/{oid_a}").status_code == 200
    query(
        hub,
        "UPDATE access_grant SET expires_at = now() - interval '1 minute' WHERE id = $1::uuid",
        again["id"],
    )
    assert doctor.get(f"/Observation/{oid_a}").status_code == 404
    assert all(g["id"] != again["id"] for g in live_grants(hub, doctor))


def test_a_doctor_cannot_end_another_clients_grant(
    hub: HubUnderTest, hospital_a: Client, doctor: Client, consultant: Client
) -> None:
    _, pid, oid = at_a(hospital_a)
    grant = break_glass(hub, doctor, pid)
    assert end_grant(hub, consultant, grant["id"]).status_code == 404
    assert doctor.get(f"/Observation/{oid}").status_code == 200


# -- hospitals and admins keep their rules -------------------------------------------------------


def test_hospitals_and_admins_are_unaffected_by_doctors_grants(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    someone, pid_a, oid_a = at_a(hospital_a)
    pid_b = create(hospital_b, source(someone, hospital_b.organization))
    oid_b = result_for(hospital_b, pid_b)
    treat(hub, doctor, pid_b)  # the doctor at hospital B sees both ...
    assert observations_of(doctor, pid_b) == {oid_a, oid_b}
    # ... hospital B itself still only what it wrote, hospital A too; the admin everything.
    assert observations_of(hospital_b, pid_b) == {oid_b}
    assert hospital_b.get(f"/Observation/{oid_a}").status_code == 404
    assert observations_of(hospital_a, pid_a) == {oid_a}
    assert hospital_a.get(f"/Observation/{oid_b}").status_code == 404
    assert {oid_a, oid_b} <= observations_of(admin, pid_a) | observations_of(admin, pid_b)
    assert admin.get(f"/Observation/{oid_a}").status_code == 200


# -- a patient's opt-out -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clinic(hub: HubUnderTest, admin: Client) -> tuple[Hospital, Hospital, Client]:
    """A lab with a haematology QC pass and a clinic in the same district, and a doctor
    (API client) at the clinic: the clinic may reuse the lab's CBC."""
    passes = [qc("hematology", "2020-01-01", "2099-12-31")]
    lab = register_hospital(hub, admin, "杭州市西湖区检验中心", "330106", passes=passes)
    clinic = register_hospital(hub, admin, "杭州市西湖区社区卫生服务中心", "330106", passes=passes)
    record = json.loads(
        hub.cli(
            "clients", "add", "--kind", "doctor", "--organization", clinic.id,
            "--name", "clinic doctor", "--json",
        ).stdout
    )  # fmt: skip
    token = hub.token(record["client_id"], record["client_secret"]).json()["access_token"]
    doctor = Client(
        record["client_id"],
        record["client_secret"],
        clinic.id,
        httpx.Client(
            base_url=hub.fhir,
            timeout=30,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        ),
    )
    return lab, clinic, doctor


def opt_out(patient_id: str, organization: str) -> dict[str, Any]:
    """A patient's opt-out of sharing as the hospital records it (FHIR R4 Consent)."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-11-20T10:00:00+08:00",
        "organization": [{"reference": f"Organization/{organization}"}],
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTOUT"}
            ]
        },
    }


def cbc_outcome(doctor: Client, patient_id: str) -> dict[str, Any]:
    response = doctor.get(f"/Patient/{patient_id}/$reusable-results", params={"code": "cbc"})
    assert response.status_code == 200, response.text
    for parameter in response.json()["parameter"]:
        if parameter["name"] != "item":
            continue
        parts = {p["name"]: p for p in parameter["part"]}
        if parts["requested"]["valueCoding"]["code"] == "cbc":
            return parts
    raise AssertionError(response.text)


def test_an_opt_out_keeps_other_hospitals_records_from_the_doctor_even_in_an_emergency(
    hub: HubUnderTest, clinic: tuple[Hospital, Hospital, Client]
) -> None:
    lab, own, doctor = clinic
    someone = person(fresh_people())
    at_lab = create(lab.client, source(someone, lab.id))
    at_clinic = create(own.client, source(someone, own.id))
    panel = cbc_panel(lab, at_lab, days_ago(3))
    lab_results = {v.split("/")[1] for v in panel.values() if v.startswith("Observation/")}
    own_result = result_for(own.client, at_clinic)

    treat(hub, doctor, at_clinic)
    assert observations_of(doctor, at_clinic) == lab_results | {own_result}
    offered = cbc_outcome(doctor, at_clinic)
    assert offered["outcome"]["valueCode"] == "reusable", offered
    report = next(v for v in panel.values() if v.startswith("DiagnosticReport/"))
    assert offered["result"]["valueReference"]["reference"] == report

    # The patient opts out at the lab.
    create(lab.client, opt_out(at_lab, lab.id))
    assert observations_of(doctor, at_clinic) == {own_result}
    assert observations_of(doctor, at_lab) == {own_result}
    assert doctor.get(f"/Observation/{sorted(lab_results)[0]}").status_code == 404
    everything = doctor.get(f"/Patient/{at_clinic}/$everything")
    assert everything.status_code == 200
    assert ids_of(everything.json()) == {own_result}
    # The reuse check no longer offers the lab's result.
    withheld = cbc_outcome(doctor, at_clinic)
    assert withheld["outcome"]["valueCode"] != "reusable"
    assert "result" not in withheld or withheld["result"]["valueReference"]["reference"] != report
    # Break-glass does not override an opt-out.
    break_glass(hub, doctor, at_lab)
    assert observations_of(doctor, at_lab) == {own_result}
    assert doctor.get(f"/Observation/{sorted(lab_results)[0]}").status_code == 404
    # The lab still reads what it wrote.
    assert observations_of(lab.client, at_lab) == lab_results
