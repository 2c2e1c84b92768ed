"""An independent, standard FHIR client (fhirpy) against the hub.

fhirpy knows nothing about Yijian Hub: it gets a bearer token from ``/auth/token`` like any
SMART backend client and then speaks plain FHIR R4 REST. These tests pin that such a client can
create, read, update, search (by identifier, chained, with prefixes), page through results by
following ``next`` links and post a transaction Bundle.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.conftest import Client, HubUnderTest, observation, patient, unique


@pytest.fixture(scope="module")
def fhir(hub: HubUnderTest, hospital_a: Client) -> SyncFHIRClient:
    """A fhirpy client acting as hospital A, with a token it fetched itself."""
    response = hub.token(hospital_a.client_id, hospital_a.secret)
    assert response.status_code == 200, response.text
    token = response.json()
    assert token["token_type"].lower() == "bearer"
    return SyncFHIRClient(hub.fhir, authorization=f"Bearer {token['access_token']}")


def mrn_system(org: str) -> str:
    return f"https://yijian.example/mrn/{org}"


def test_create_read_update_and_search_by_identifier(
    fhir: SyncFHIRClient, hospital_a: Client
) -> None:
    """Create, read back, find by ``system|value`` identifier, count, update to version 2."""
    org = hospital_a.organization
    mrn = f"MRN-{unique()}"
    created = fhir.resource("Patient", **patient(org, mrn))
    created.save()
    assert created.id and created["meta"]["versionId"] == "1"

    read = fhir.reference("Patient", created.id).to_resource()
    assert read["name"][0]["text"] == "王芳"

    by_identifier = fhir.resources("Patient").search(identifier=f"{mrn_system(org)}|{mrn}")
    assert by_identifier.get().id == created.id
    assert by_identifier.count() == 1
    assert fhir.resources("Patient").search(identifier=f"{mrn_system(org)}|nope").fetch() == []

    read["gender"] = "male"
    read.save()
    assert read["meta"]["versionId"] == "2"
    assert by_identifier.get()["gender"] == "male"

    with pytest.raises(ResourceNotFound):
        fhir.reference("Patient", f"missing-{unique()}").to_resource()
    invalid = fhir.resource(
        "Patient", gender="not-a-gender", managingOrganization=read["managingOrganization"]
    )
    with pytest.raises(OperationOutcome) as rejected:
        invalid.save()
    assert rejected.value.resource["issue"][0]["code"] != "exception"  # a 4xx, not a crash


def test_search_paging_sorting_and_chains(fhir: SyncFHIRClient, hospital_a: Client) -> None:
    """``limit`` pages; ``fetch_all`` follows next links to the end; sort, prefixes, chains."""
    org = hospital_a.organization
    mrn = f"MRN-{unique()}"
    person = fhir.resource("Patient", **patient(org, mrn))
    person.save()
    days = [f"2021-0{m}-15T09:00:00+08:00" for m in (3, 1, 7, 5, 2, 6, 4)]
    ids = []
    for day in days:
        item = fhir.resource("Observation", **observation(org, person.id, when=day))
        item.save()
        ids.append(item.id)

    results = fhir.resources("Observation").search(patient=person.id)
    assert len(results.limit(3).fetch()) == 3
    everything = results.limit(3).fetch_all()
    assert sorted(o.id for o in everything) == sorted(ids)  # no duplicates, none missing
    assert results.count() == 7

    newest_first = results.sort("-date").limit(2).fetch_all()
    assert [o["effectiveDateTime"] for o in newest_first] == sorted(days, reverse=True)
    oldest_first = [o.id for o in results.sort("date").limit(4)]
    assert [days[ids.index(i)] for i in oldest_first] == sorted(days)

    summer = results.search(date__ge="2021-06-01").fetch_all()
    assert {o["effectiveDateTime"][:7] for o in summer} == {"2021-06", "2021-07"}
    chained = fhir.resources("Observation").search(
        patient__Patient__identifier=f"{mrn_system(org)}|{mrn}"
    )
    assert sorted(o.id for o in chained.limit(5).fetch_all()) == sorted(ids)

    bundle = results.limit(2).include("Observation", "subject").fetch_raw()
    modes = {(e.resource.resourceType, e.search.mode) for e in bundle.entry}
    assert modes == {("Observation", "match"), ("Patient", "include")}


def _transaction(org: str, mrn: str, n: int, **extra: Any) -> dict[str, Any]:
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": patient(org, mrn),
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": f"identifier={mrn_system(org)}|{mrn}",
            },
        }
    ]
    for i in range(n):
        result = observation(org, "placeholder", value=12 + i, **extra)
        result["subject"] = {"reference": patient_url}
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": result,
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def test_transaction_bundle(fhir: SyncFHIRClient, hospital_a: Client) -> None:
    """A transaction posted to the base resolves urn:uuid references; a bad one changes nothing."""
    org = hospital_a.organization
    mrn = f"MRN-{unique()}"
    response = fhir.execute("", method="post", data=_transaction(org, mrn, 3))
    assert response["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert all(s.startswith("201") for s in statuses), statuses

    person = fhir.resources("Patient").search(identifier=f"{mrn_system(org)}|{mrn}").get()
    results = fhir.resources("Observation").search(subject=f"Patient/{person.id}").fetch_all()
    assert len(results) == 3
    assert {o["subject"]["reference"] for o in results} == {f"Patient/{person.id}"}

    # Replaying with the same conditional patient reuses it instead of creating a second one.
    fhir.execute("", method="post", data=_transaction(org, mrn, 1))
    assert fhir.resources("Patient").search(identifier=f"{mrn_system(org)}|{mrn}").count() == 1
    assert fhir.resources("Observation").search(patient=person.id).count() == 4

    # One invalid entry rolls the whole transaction back.
    other = f"MRN-{unique()}"
    with pytest.raises(OperationOutcome) as rejected:
        fhir.execute("", method="post", data=_transaction(org, other, 2, status="bogus"))
    assert "status" in str(rejected.value.resource)  # names the invalid element
    assert rejected.value.resource["issue"][0]["code"] != "exception"
    assert fhir.resources("Patient").search(identifier=f"{mrn_system(org)}|{other}").count() == 0
