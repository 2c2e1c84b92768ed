"""``GET /fhir/Patient/{id}/$everything`` through HTTP.

One patient's record, pushed by hospital A (with one result from hospital B): the patient, an
encounter, an order, a specimen, results from 2024, 2025 and 2026 and a report. Another patient
of hospital A shows what must stay out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.access_support import order_for
from tests.conftest import Client, observation, patient

LOINC = "http://loinc.org"
DAY = "2026-11-20T09:30:00+08:00"


@dataclass
class Record:
    patient: str
    by_a: set[str]  # Type/id of everything hospital A wrote in this patient's compartment
    from_b: str  # hospital B's result for the same patient
    obs_2024: str
    obs_2025: str
    obs_2026: str
    dated_2026: set[str]  # resources of hospital A with a clinical date in 2026
    stranger: set[str]  # another patient and their result


def master_of(doctor: Client, patient_ref: str) -> str:
    """The hub's master record of a source Patient (it links to its sources)."""
    masters = doctor.get("/Patient", params={"link": patient_ref}).json()["entry"]
    assert len(masters) == 1
    return f"Patient/{masters[0]['resource']['id']}"


def created(client: Client, body: dict[str, Any]) -> str:
    response = client.post(f"/{body['resourceType']}", json=body)
    assert response.status_code == 201, response.text
    return f"{body['resourceType']}/{response.json()['id']}"


@pytest.fixture(scope="module")
def record(hospital_a: Client, hospital_b: Client, doctor: Client) -> Record:
    org = hospital_a.organization
    own = {"reference": f"Organization/{org}"}
    pid_ref = created(hospital_a, patient(org))
    pid = pid_ref.split("/")[1]
    subject = {"reference": pid_ref}
    encounter = created(
        hospital_a,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
            },
            "subject": subject,
            "serviceProvider": own,
            "period": {"start": "2026-11-20T08:00:00+08:00", "end": "2026-11-20T11:00:00+08:00"},
        },
    )
    order = created(
        hospital_a,
        {
            "resourceType": "ServiceRequest",
            "status": "completed",
            "intent": "order",
            "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
            "subject": subject,
            "authoredOn": "2026-11-20T08:05:00+08:00",
            "requester": own,
        },
    )
    specimen = created(
        hospital_a,
        {
            "resourceType": "Specimen",
            "subject": subject,
            "request": [{"reference": order}],
            "collection": {"collectedDateTime": "2026-11-20T08:10:00+08:00"},
        },
    )
    obs_2024 = created(hospital_a, observation(org, pid, when="2024-01-10T09:00:00+08:00"))
    obs_2025 = created(hospital_a, observation(org, pid, when="2025-06-01T09:00:00+08:00"))
    obs_2026 = created(
        hospital_a,
        observation(
            org,
            pid,
            when=DAY,
            basedOn=[{"reference": order}],
            specimen={"reference": specimen},
            encounter={"reference": encounter},
        ),
    )
    report = created(
        hospital_a,
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
            "subject": subject,
            "encounter": {"reference": encounter},
            "basedOn": [{"reference": order}],
            "effectiveDateTime": DAY,
            "issued": DAY,
            "performer": [own],
            "result": [{"reference": obs_2026}],
        },
    )
    from_b = created(hospital_b, observation(hospital_b.organization, pid, code="2345-7"))
    other_ref = created(hospital_a, patient(org))
    other_obs = created(hospital_a, observation(org, other_ref.split("/")[1]))
    # The doctor orders for the patient (a purpose of use) and for the other patient too, so
    # that only $everything's own rules keep the other one's record out.
    order_for(doctor, pid)
    order_for(doctor, other_ref.split("/")[1])
    dated_2026 = {encounter, order, specimen, obs_2026, report}
    return Record(
        patient=pid_ref,
        by_a={pid_ref, obs_2024, obs_2025, *dated_2026},
        from_b=from_b,
        obs_2024=obs_2024,
        obs_2025=obs_2025,
        obs_2026=obs_2026,
        dated_2026=dated_2026,
        stranger={other_ref, other_obs},
    )


def everything(client: Client, patient_ref: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"/{patient_ref}/$everything", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def refs(bundle: dict[str, Any], mode: str | None = None) -> list[str]:
    """``Type/id`` of the entries (of one search mode, if given), in order."""
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if mode is None or e["search"]["mode"] == mode
    ]


def test_doctor_gets_the_whole_record_and_what_it_references(
    doctor: Client, record: Record, hospital_a: Client, hospital_b: Client
) -> None:
    """Every compartment resource is a match, the hub's master record of the person too;
    referenced organizations come as includes."""
    body = everything(doctor, record.patient)
    matches = refs(body, "match")
    assert len(matches) == len(set(matches))
    assert set(matches) == record.by_a | {record.from_b, master_of(doctor, record.patient)}
    assert body["total"] == len(matches)
    included = set(refs(body, "include"))
    assert f"Organization/{hospital_a.organization}" in included
    assert f"Organization/{hospital_b.organization}" in included
    assert not (set(refs(body)) & record.stranger)
    assert {e["search"]["mode"] for e in body["entry"]} == {"match", "include"}


def test_hospital_sees_only_its_own_rows(hospital_a: Client, record: Record) -> None:
    """Hospital A's $everything leaves out what hospital B wrote about the same patient."""
    body = everything(hospital_a, record.patient)
    assert set(refs(body, "match")) == record.by_a
    assert record.from_b not in refs(body)


def test_other_hospital_and_consultant_cannot_see_the_patient(
    hospital_b: Client, consultant: Client, record: Record
) -> None:
    """Hospital B gets 404 on A's patient (as for one that does not exist); so does a
    consultant outside a consultation."""
    for patient_ref in (record.patient, "Patient/does-not-exist"):
        response = hospital_b.get(f"/{patient_ref}/$everything")
        assert response.status_code == 404, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
    refused = consultant.get(f"/{record.patient}/$everything")
    assert refused.status_code == 404, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome"


def test_type_limits_the_resource_types(doctor: Client, record: Record) -> None:
    """_type returns only the listed types, includes as well as matches; unknown types 400."""
    body = everything(doctor, record.patient, _type="Observation")
    assert set(refs(body)) == {record.obs_2024, record.obs_2025, record.obs_2026, record.from_b}

    body = everything(doctor, record.patient, _type="Observation,DiagnosticReport")
    assert {r.split("/")[0] for r in refs(body)} == {"Observation", "DiagnosticReport"}
    assert len(refs(body, "match")) == 5

    unknown = doctor.get(f"/{record.patient}/$everything", params={"_type": "Nonsense"})
    assert unknown.status_code == 400
    assert unknown.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("params", "years"),
    [
        ({"start": "2025-01-01", "end": "2025-12-31"}, {2025}),
        ({"start": "2026-01-01"}, {2026}),
        ({"end": "2024-12-31"}, {2024}),
        ({"start": "2024-01", "end": "2025"}, {2024, 2025}),
    ],
)
def test_start_and_end_limit_by_clinical_date(
    hospital_a: Client, record: Record, params: dict[str, str], years: set[int]
) -> None:
    """start/end keep resources whose clinical date falls in the period; the Patient stays."""
    by_year = {2024: {record.obs_2024}, 2025: {record.obs_2025}, 2026: record.dated_2026}
    body = everything(hospital_a, record.patient, **params)
    expected = {record.patient}.union(*(by_year[y] for y in years))
    assert set(refs(body, "match")) == expected
    outside = set().union(*(v for y, v in by_year.items() if y not in years))
    assert not (set(refs(body)) & outside)


def test_since_returns_only_what_changed(hospital_a: Client) -> None:
    """_since keeps the compartment resources last updated at or after that instant."""
    org = hospital_a.organization
    pid_ref = created(hospital_a, patient(org))
    pid = pid_ref.split("/")[1]
    created(hospital_a, observation(org, pid))
    time.sleep(0.01)
    newer = hospital_a.post("/Observation", json=observation(org, pid, value=11.0)).json()
    since = newer["meta"]["lastUpdated"]

    body = everything(hospital_a, pid_ref, _since=since)
    assert refs(body, "match") == [f"Observation/{newer['id']}"]
    assert refs(everything(hospital_a, pid_ref, _since="2999-01-01T00:00:00Z")) == []
    assert len(refs(everything(hospital_a, pid_ref), "match")) == 3


def test_count_pages_through_every_resource_exactly_once(doctor: Client, record: Record) -> None:
    """Following next links with _count=3 yields each match once and nothing else new."""
    whole = everything(doctor, record.patient)
    url: str | None = f"/{record.patient}/$everything"
    params: dict[str, Any] | None = {"_count": 3}
    matches: list[str] = []
    seen: set[str] = set()
    pages = 0
    while url is not None:
        response = doctor.get(url, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(refs(page, "match")) <= 3
        matches += refs(page, "match")
        seen |= set(refs(page))
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        params = None
        assert pages < 20, "paging does not end"
    assert len(matches) == len(set(matches))
    assert set(matches) == set(refs(whole, "match"))
    assert pages == -(-len(matches) // 3)
    assert seen == set(refs(whole))


def test_references_into_another_patients_record_stay_out(
    hospital_a: Client, doctor: Client
) -> None:
    """A report that wrongly cites another patient's result does not pull that result in."""
    org = hospital_a.organization
    mine = created(hospital_a, patient(org))
    theirs = created(hospital_a, patient(org))
    their_result = created(hospital_a, observation(org, theirs.split("/")[1]))
    order_for(doctor, mine.split("/")[1])  # the doctor may read both patients: only the
    order_for(doctor, theirs.split("/")[1])  # compartment keeps the other's result out
    report = created(
        hospital_a,
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
            "subject": {"reference": mine},
            "performer": [{"reference": f"Organization/{org}"}],
            "result": [{"reference": their_result}],
        },
    )
    for client, master in ((hospital_a, set()), (doctor, {master_of(doctor, mine)})):
        body = everything(client, mine)
        assert set(refs(body, "match")) == {mine, report} | master
        assert their_result not in refs(body)
        assert theirs not in refs(body)


@pytest.mark.parametrize(
    "params",
    [{"start": "garbage"}, {"end": "2020-13-45"}, {"_since": "x"}, {"_count": "abc"}],
)
def test_malformed_parameters_are_400(doctor: Client, record: Record, params: dict) -> None:
    """Unparseable start, end, _since or _count is a 400 OperationOutcome."""
    response = doctor.get(f"/{record.patient}/$everything", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
