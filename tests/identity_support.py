"""Helpers for the patient identity tests (not a test module).

Every test makes its own people with ``fresh_people()`` (a random seed), so that nothing stored
by earlier tests in the session's shared database can match them.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import httpx

from hub.storage.database import libpq_url
from tests.access_support import order_for
from tests.conftest import Client, HubUnderTest, observation, unique
from tests.demographics import Demographics, Person, patient_resource, split_name

SID = "https://yijian-hub.org/fhir/sid/"
RESIDENT = SID + "resident-id"
INSURANCE = SID + "insurance-person"
MDM = "https://yijian-hub.org/fhir/CodeSystem/mdm"
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
# The existing suite stores hundreds of these without IDs; never make one of them.
CROWDED_BIRTH_DATE = datetime.date(1986, 3, 14)


def mrn_system(organization: str) -> str:
    return f"{SID}org/{organization}/mrn"


def masked(number: str) -> str:
    """How a doctor sees a resident ID: first 4, 10 stars, last 4."""
    return number[:4] + "*" * 10 + number[-4:]


def fresh_people() -> Demographics:
    """A generator of people no earlier test has made (a random seed)."""
    return Demographics(uuid.uuid4().int % 2**63)


def person(people: Demographics, **fields: Any) -> Person:
    """A new person, never on the crowded birth date the rest of the suite uses."""
    while True:
        found = people.person(**fields)
        if found.birth_date != CROWDED_BIRTH_DATE:
            return found


def typo_twin_of(people: Demographics, someone: Person) -> Person:
    """The same person with a homophone typo in the given name (张伟 → 张玮)."""
    family, given = split_name(people.typo_of(someone.name))
    assert family == someone.family
    return replace(someone, given=given)


def legacy_id(number: str) -> str:
    """The 15-digit form of an 18-digit resident ID of someone born in the 1900s."""
    assert number[6:8] == "19", number
    return number[:6] + number[8:17]


def resident_identifier(value: str, use: str = "official") -> dict[str, Any]:
    return {
        "use": use,
        "type": {"coding": [{"system": V2_0203, "code": "NI"}]},
        "system": RESIDENT,
        "value": value,
    }


def source(
    someone: Person,
    organization: str,
    mrn: str | None = None,
    *,
    with_resident_id: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A hospital's Patient for a person, with a fresh MRN unless one is given."""
    return patient_resource(
        someone,
        organization,
        mrn or f"MRN-{unique()}",
        with_resident_id=with_resident_id,
        **extra,
    )


def mrn_of(resource: dict[str, Any], organization: str) -> str:
    return next(
        i["value"] for i in resource["identifier"] if i["system"] == mrn_system(organization)
    )


def create(client: Client, body: dict[str, Any], **kw: Any) -> str:
    """POST a resource; its id."""
    response = client.post(f"/{body['resourceType']}", json=body, **kw)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def result_for(client: Client, patient_id: str, **fields: Any) -> str:
    """A lab result of ``client``'s hospital for one of its Patients; its id."""
    body = observation(
        client.organization,
        patient_id,
        identifier=[{"system": "https://yijian.example/lab-result", "value": unique()}],
        **fields,
    )
    return create(client, body)


def search(client: Client, resource_type: str, **params: str) -> list[dict[str, Any]]:
    """The matched resources of a search (one page; tests find few)."""
    response = client.get(f"/{resource_type}", params={"_count": "200", **params})
    assert response.status_code == 200, response.text
    return [
        e["resource"]
        for e in response.json().get("entry", [])
        if e.get("search", {}).get("mode", "match") == "match"
    ]


def ids(resources: list[dict[str, Any]]) -> set[str]:
    return {r["id"] for r in resources}


def result_ids(client: Client, **params: str) -> set[str]:
    return ids(search(client, "Observation", **params))


def masters_of(doctor: Client, source_id: str) -> list[dict[str, Any]]:
    """Every master Patient listing ``source_id`` among its ``seealso`` links.

    A doctor sees a person's record only with a purpose of use: first it checks, as before an
    order, what can be reused for the record (an ordering purpose for the whole person)."""
    order_for(doctor, source_id)
    found = search(doctor, "Patient", link=f"Patient/{source_id}")
    return [
        m
        for m in found
        if any(
            link["other"]["reference"] == f"Patient/{source_id}" and link["type"] == "seealso"
            for link in m.get("link", [])
        )
    ]


def master_of(doctor: Client, source_id: str) -> dict[str, Any]:
    """The one master Patient of a source record, checked to be a master."""
    found = masters_of(doctor, source_id)
    assert len(found) == 1, found
    master = found[0]
    assert {"system": MDM, "code": "master"}.items() <= master["meta"]["tag"][0].items()
    assert master.get("active") is True
    return master


def linked_sources(master: dict[str, Any]) -> set[str]:
    return {
        link["other"]["reference"].removeprefix("Patient/")
        for link in master.get("link", [])
        if link["type"] == "seealso"
    }


def identifier_values(resource: dict[str, Any], system: str) -> list[str]:
    return [i["value"] for i in resource.get("identifier", []) if i.get("system") == system]


# -- the operators' API ---------------------------------------------------------------------------


def _headers(client: Client) -> dict[str, str]:
    return {"Authorization": client.http.headers["Authorization"]}


def admin_post(
    hub: HubUnderTest, client: Client, path: str, body: dict[str, Any]
) -> httpx.Response:
    return httpx.post(
        f"{hub.base_url}/admin/identity/{path}", json=body, headers=_headers(client), timeout=30
    )


def admin_get(hub: HubUnderTest, client: Client, path: str, **params: Any) -> httpx.Response:
    return httpx.get(
        f"{hub.base_url}/admin/identity/{path}",
        params=params,
        headers=_headers(client),
        timeout=30,
    )


def decide(hub: HubUnderTest, admin: Client, path: str, body: dict[str, Any]) -> int:
    """An operator's decision (link, unlink, merge, undo) that must succeed; its event id."""
    response = admin_post(hub, admin, path, body)
    assert response.status_code == 200, response.text
    return int(response.json()["event"])


def reviews_of(
    hub: HubUnderTest, admin: Client, source_id: str, status: str = "open"
) -> list[dict[str, Any]]:
    """The reviews of one source Patient (every page of the queue)."""
    found: list[dict[str, Any]] = []
    after = 0
    while True:
        response = admin_get(hub, admin, "reviews", status=status, limit=1000, after=after)
        assert response.status_code == 200, response.text
        page = response.json()
        found += [r for r in page if r["source"] == f"Patient/{source_id}"]
        if len(page) < 1000:
            return found
        after = page[-1]["id"]


def events_of(hub: HubUnderTest, admin: Client, patient_id: str) -> list[dict[str, Any]]:
    response = admin_get(hub, admin, "events", patient=patient_id)
    assert response.status_code == 200, response.text
    return list(response.json())


# -- the database ---------------------------------------------------------------------------------


def query(hub: HubUnderTest, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(libpq_url(hub.database_url))
        try:
            return list(await connection.fetch(sql, *args))
        finally:
            await connection.close()

    return asyncio.run(run())


# -- recurring situations -------------------------------------------------------------------------


@dataclass
class TypoPair:
    """One person at two hospitals: A with the resident ID, B with a homophone typo in the
    given name and no ID (same birth date, phone and address); a result at each."""

    person: Person
    a: str
    b: str
    result_a: str
    result_b: str
    master_a: str
    master_b: str


def typo_pair(hospital_a: Client, hospital_b: Client, doctor: Client) -> TypoPair:
    people = fresh_people()
    someone = person(people)
    typo = typo_twin_of(people, someone)
    a = create(hospital_a, source(someone, hospital_a.organization))
    b = create(hospital_b, source(typo, hospital_b.organization, with_resident_id=False))
    result_a, result_b = result_for(hospital_a, a), result_for(hospital_b, b)
    master_a, master_b = master_of(doctor, a)["id"], master_of(doctor, b)["id"]
    assert master_a != master_b
    return TypoPair(someone, a, b, result_a, result_b, master_a, master_b)
