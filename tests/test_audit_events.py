"""The audit log read through FHIR as AuditEvent resources (admins only)."""

from __future__ import annotations

from tests.access_support import order_for
from tests.conftest import Client, observation, patient


def test_admin_finds_who_read_a_patients_results(
    admin: Client, hospital_a: Client, doctor: Client
) -> None:
    """A doctor's read of an Observation appears as an AuditEvent searchable by patient."""
    org = hospital_a.organization
    pid = hospital_a.post("/Patient", json=patient(org)).json()["id"]
    oid = hospital_a.post("/Observation", json=observation(org, pid)).json()["id"]
    order_for(doctor, pid)  # the doctor reads while ordering for the patient
    assert doctor.get(f"/Observation/{oid}").status_code == 200

    bundle = admin.get("/AuditEvent", params={"patient": f"Patient/{pid}", "action": "R"}).json()
    events = [e["resource"] for e in bundle["entry"]]
    reads = [e for e in events if e["subtype"][0]["code"] == "read"]
    assert len(reads) == 1
    event = reads[0]
    assert event["outcome"] == "0"
    assert event["agent"][0]["altId"] == doctor.client_id
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"
    refs = {e["what"]["reference"] for e in event["entity"] if "what" in e}
    assert f"Patient/{pid}" in refs
    assert f"Observation/{oid}/_history/1" in refs

    again = admin.get(f"/AuditEvent/{event['id']}")
    assert again.status_code == 200
    assert again.json()["id"] == event["id"]


def test_audit_events_are_newest_first_and_paged(admin: Client, hospital_a: Client) -> None:
    """Paging follows next links over the audit log, newest first, without repeats."""
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    for _ in range(5):
        hospital_a.get(f"/Patient/{pid}")
    url: str | None = "/AuditEvent"
    params: dict[str, str] | None = {"patient": pid, "_count": "2"}
    seen: list[str] = []
    while url:
        bundle = admin.get(url, params=params).json()
        seen += [e["resource"]["recorded"] + e["resource"]["id"] for e in bundle["entry"]]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        params = None
    assert len(seen) == len(set(seen)) >= 6  # the create and five reads
    assert [s[:24] for s in seen] == sorted((s[:24] for s in seen), reverse=True)


def test_only_admins_read_the_audit_log(hospital_a: Client, doctor: Client) -> None:
    assert hospital_a.get("/AuditEvent").status_code == 403
    assert doctor.get("/AuditEvent").status_code == 403


def test_audit_events_cannot_be_written(admin: Client) -> None:
    event = {
        "resourceType": "AuditEvent",
        "type": {"code": "rest"},
        "recorded": "2026-11-20T10:00:00Z",
        "agent": [{"requestor": True}],
        "source": {"observer": {}},
    }
    assert admin.post("/AuditEvent", json=event).status_code == 403
