"""Patient identity through HTTP and the CLI: identifiers at rest and on display, key rotation,
``Patient/$match``, ``Patient/$ihe-pix``, read-only masters and identifiers the hub refuses.

Each test makes people of its own (``fresh_people``): the database is shared by the session.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from tests.access_support import order_for
from tests.conftest import Client, HubUnderTest, observation, unique
from tests.demographics import Person
from tests.identity_support import (
    MATCH_GRADE,
    MDM,
    RESIDENT,
    V2_0203,
    create,
    fresh_people,
    identifier_values,
    ids,
    legacy_id,
    linked_sources,
    masked,
    master_of,
    mrn_system,
    person,
    query,
    result_for,
    result_ids,
    search,
    source,
)

FULL_WIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")


def _request_id() -> dict[str, str]:
    return {"X-Request-ID": f"identity-{uuid.uuid4().hex}"}


def _audit_row(hub: HubUnderTest, headers: dict[str, str]) -> dict[str, Any]:
    rows = query(hub, "SELECT * FROM audit_log WHERE request_id = $1", headers["X-Request-ID"])
    assert len(rows) == 1, rows
    return dict(rows[0])


def _with_wrong_check_character(number: str) -> str:
    last = "0" if number[-1] != "0" else "1"
    return number[:-1] + last


def _tables_containing(hub: HubUnderTest, text: str) -> list[str]:
    """Every table in the database with a row whose text form contains ``text``."""
    tables = [
        r["table_name"]
        for r in query(
            hub,
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name",
        )
    ]
    found = []
    for table in tables:
        rows = query(hub, f'SELECT 1 FROM "{table}" x WHERE strpos(x::text, $1) > 0 LIMIT 1', text)
        if rows:
            found.append(table)
    return found


def _issue(response: httpx.Response) -> dict[str, Any]:
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return dict(outcome["issue"][0])


# -- identifiers at rest and on display -----------------------------------------------------------


def test_resident_ids_are_never_stored_in_clear_and_shown_by_role(
    hub: HubUnderTest,
    admin: Client,
    hospital_a: Client,
    hospital_b: Client,
    doctor: Client,
) -> None:
    people = fresh_people()
    someone = person(people)
    number = someone.resident_id
    a = create(hospital_a, source(someone, hospital_a.organization))
    b = create(hospital_b, source(someone, hospital_b.organization))
    result_a = result_for(hospital_a, a)
    master = master_of(doctor, a)["id"]

    # Reads, searches and identity operations by the number leave audit records too.
    token = f"{RESIDENT}|{number}"
    assert result_ids(doctor, **{"patient.identifier": token}) == {result_a}
    found = search(doctor, "Patient", identifier=token)
    assert ids(found) == {a, b, master}
    matched = doctor.post(
        "/Patient/$match",
        json={"resourceType": "Patient", "identifier": [{"system": RESIDENT, "value": number}]},
    )
    assert matched.status_code == 200, matched.text
    # A mistyped number is refused, and its audit record does not hold it either.
    mistyped = _with_wrong_check_character(person(people).resident_id)
    headers = _request_id()
    bad = source(someone, hospital_a.organization)
    bad["identifier"][0]["value"] = mistyped
    refused = hospital_a.post("/Patient", json=bad, headers=headers)
    assert refused.status_code == 422, refused.text
    assert mistyped not in refused.text
    audit = _audit_row(hub, headers)
    assert audit["status"] == 422
    assert masked(mistyped) in audit["detail"]
    assert mistyped not in str(audit)

    for text in (number, number[:17], mistyped, mistyped[:17]):
        assert _tables_containing(hub, text) == [], text

    # Shown in full to the hospital that sent it and to admins, masked to doctors.
    for patient_id in (a, master):
        shown = doctor.get(f"/Patient/{patient_id}").json()
        assert identifier_values(shown, RESIDENT) == [masked(number)], patient_id
    for resource in found:
        assert identifier_values(resource, RESIDENT) == [masked(number)]
    history = doctor.get(f"/Patient/{a}/_history").json()
    assert identifier_values(history["entry"][0]["resource"], RESIDENT) == [masked(number)]
    everything = doctor.get(f"/Patient/{a}/$everything").json()
    for entry in everything["entry"]:
        assert number not in str(entry["resource"])
    assert identifier_values(hospital_a.get(f"/Patient/{a}").json(), RESIDENT) == [number]
    assert ids(search(hospital_a, "Patient", identifier=token)) == {a}
    assert identifier_values(search(hospital_a, "Patient", identifier=token)[0], RESIDENT) == [
        number
    ]
    assert identifier_values(admin.get(f"/Patient/{master}").json(), RESIDENT) == [number]
    assert identifier_values(admin.get(f"/Patient/{b}").json(), RESIDENT) == [number]


def test_a_search_by_the_number_in_any_form_finds_the_person(
    hospital_a: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    while someone.birth_date.year >= 2000:
        someone = person(fresh_people())
    number = someone.resident_id
    a = create(hospital_a, source(someone, hospital_a.organization))
    result = result_for(hospital_a, a)
    order_for(doctor, a)  # the doctor reads the person's record while ordering for them
    for token in (
        f"{RESIDENT}|{number}",
        f"{RESIDENT}|{number.translate(FULL_WIDTH)}",
        f"{RESIDENT}|{legacy_id(number)}",
        number,  # no system: the hash in every protected system
    ):
        assert result_ids(doctor, **{"patient.identifier": token}) == {result}, token
    assert result_ids(doctor, **{"patient.identifier": f"{RESIDENT}|{number[:-1]}"}) == set()


def test_a_number_asked_of_ihe_pix_is_not_written_to_the_audit_log(
    hub: HubUnderTest, hospital_a: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    create(hospital_a, source(someone, hospital_a.organization))
    headers = _request_id()
    response = doctor.get(
        "/Patient/$ihe-pix",
        params={"sourceIdentifier": f"{RESIDENT}|{someone.resident_id}"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    assert someone.resident_id not in str(_audit_row(hub, headers)["query"])
    assert _tables_containing(hub, someone.resident_id) == []


def test_a_mistyped_number_asked_of_ihe_pix_is_not_written_to_the_audit_log(
    hub: HubUnderTest, doctor: Client
) -> None:
    mistyped = _with_wrong_check_character(person(fresh_people()).resident_id)
    headers = _request_id()
    response = doctor.get(
        "/Patient/$ihe-pix", params={"sourceIdentifier": f"{RESIDENT}|{mistyped}"}, headers=headers
    )
    assert response.status_code == 400, response.text
    assert mistyped not in str(_audit_row(hub, headers)["detail"])


def test_a_resident_id_in_a_reference_is_not_stored_in_clear(
    hub: HubUnderTest, hospital_a: Client
) -> None:
    someone = person(fresh_people())
    a = create(hospital_a, source(someone, hospital_a.organization))
    body = observation(hospital_a.organization, a)
    body["subject"]["identifier"] = {"system": RESIDENT, "value": someone.resident_id}
    create(hospital_a, body)
    assert _tables_containing(hub, someone.resident_id) == []


def test_identifier_keys_rotate_and_stored_values_are_resealed(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    a = create(hospital_a, source(someone, hospital_a.organization))
    result_a = result_for(hospital_a, a)

    rotated = hub.cli("identity", "rotate-key").stdout
    kid = re.search(r"new identifier key (\S+);", rotated)
    assert kid, rotated
    resealed = hub.cli("identity", "reencrypt").stdout
    assert re.search(r"^\d+ stored versions re-encrypted", resealed), resealed

    kids: set[str] = set()
    for table in ("resource", "resource_version"):
        for row in query(hub, f"SELECT content FROM {table} WHERE content LIKE '%enc1:%'"):
            kids |= set(re.findall(r'"enc1:([^:"]+):', row["content"]))
    assert kids == {kid.group(1)}

    token = f"{RESIDENT}|{someone.resident_id}"
    assert identifier_values(hospital_a.get(f"/Patient/{a}").json(), RESIDENT) == [
        someone.resident_id
    ]
    order_for(doctor, a)  # the doctor reads the person's record while ordering for them
    assert identifier_values(doctor.get(f"/Patient/{a}").json(), RESIDENT) == [
        masked(someone.resident_id)
    ]
    assert result_ids(doctor, **{"patient.identifier": token}) == {result_a}
    # The running hub goes on writing, matching and finding.
    b = create(hospital_b, source(someone, hospital_b.organization))
    result_b = result_for(hospital_b, b)
    assert linked_sources(master_of(doctor, a)) == {a, b}
    assert result_ids(doctor, **{"patient.identifier": token}) == {result_a, result_b}
    assert identifier_values(hospital_b.get(f"/Patient/{b}").json(), RESIDENT) == [
        someone.resident_id
    ]


# -- $match ---------------------------------------------------------------------------------------


def _match(
    client: Client,
    resource: dict[str, Any],
    only_certain: bool | None = None,
    count: int | None = None,
) -> httpx.Response:
    parameters: list[dict[str, Any]] = [{"name": "resource", "resource": resource}]
    if only_certain is not None:
        parameters.append({"name": "onlyCertainMatches", "valueBoolean": only_certain})
    if count is not None:
        parameters.append({"name": "count", "valueInteger": count})
    return client.post(
        "/Patient/$match", json={"resourceType": "Parameters", "parameter": parameters}
    )


def _matches(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    found = response.json()
    assert found["resourceType"] == "Bundle"
    assert found["type"] == "searchset"
    return [e for e in found.get("entry", []) if e["search"]["mode"] == "match"]


def _grade(entry: dict[str, Any]) -> str:
    (extension,) = entry["search"]["extension"]
    assert extension["url"] == MATCH_GRADE
    return str(extension["valueCode"])


def _demographics_only(someone: Person) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"family": someone.family, "given": [someone.given]}],
        "birthDate": someone.birth_date.isoformat(),
        "gender": someone.gender,
    }


def test_match_by_resident_id_is_certain(
    admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    a = create(hospital_a, source(someone, hospital_a.organization))
    b = create(hospital_b, source(someone, hospital_b.organization))
    master = master_of(doctor, a)["id"]
    by_id = {
        "resourceType": "Patient",
        "identifier": [{"system": RESIDENT, "value": someone.resident_id}],
    }
    for only_certain in (None, True):
        (entry,) = _matches(_match(doctor, by_id, only_certain=only_certain))
        assert entry["resource"]["id"] == master
        assert entry["fullUrl"].endswith(f"/Patient/{master}")
        assert {"system": MDM, "code": "master"}.items() <= entry["resource"]["meta"]["tag"][
            0
        ].items()
        assert linked_sources(entry["resource"]) == {a, b}
        assert _grade(entry) == "certain"
        assert entry["search"]["score"] == 1
        assert identifier_values(entry["resource"], RESIDENT) == [masked(someone.resident_id)]
    (entry,) = _matches(_match(admin, by_id))
    assert identifier_values(entry["resource"], RESIDENT) == [someone.resident_id]
    # A bare Patient is accepted as the input, and the number normalised like a write.
    if someone.birth_date.year < 2000:
        by_id["identifier"][0]["value"] = legacy_id(someone.resident_id)
    response = doctor.post("/Patient/$match", json={**by_id, **_demographics_only(someone)})
    (entry,) = _matches(response)
    assert (entry["resource"]["id"], _grade(entry)) == (master, "certain")


def test_match_by_demographics_is_probable_and_never_certain(
    hospital_a: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    namesakes = [people.namesake(someone) for _ in range(2)]
    masters = []
    for each in (someone, *namesakes):
        source_id = create(
            hospital_a, source(each, hospital_a.organization, with_resident_id=False)
        )
        masters.append(master_of(doctor, source_id)["id"])
    assert len(set(masters)) == 3

    entries = _matches(_match(doctor, _demographics_only(someone)))
    assert {e["resource"]["id"] for e in entries} == set(masters)
    for entry in entries:
        assert _grade(entry) == "probable"
        assert 0 < entry["search"]["score"] < 1
    assert _matches(_match(doctor, _demographics_only(someone), only_certain=True)) == []
    limited = _matches(_match(doctor, _demographics_only(someone), count=2))
    assert len(limited) == 2
    # With the phone as well, the right one comes first.
    with_phone = {
        **_demographics_only(someone),
        "telecom": [{"system": "phone", "value": someone.phone}],
    }
    first = _matches(_match(doctor, with_phone))[0]
    assert (first["resource"]["id"], _grade(first)) == (masters[0], "probable")


def test_match_refuses_what_it_cannot_use(
    hospital_a: Client, consultant: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    name_only = {"resourceType": "Patient", "name": [{"text": someone.name}]}
    response = _match(doctor, name_only)
    assert response.status_code == 422, response.text
    assert _issue(response)["code"] == "invalid"
    not_a_patient = {"resourceType": "Observation", "status": "final"}
    assert _match(doctor, not_a_patient).status_code == 400
    assert doctor.post("/Patient/$match", json=not_a_patient).status_code == 400
    assert doctor.post("/Patient/$match", json={"resourceType": "Parameters"}).status_code == 400
    assert _match(doctor, _demographics_only(someone), count=0).status_code == 400
    mistyped = _with_wrong_check_character(someone.resident_id)
    response = _match(
        doctor, {"resourceType": "Patient", "identifier": [{"system": RESIDENT, "value": mistyped}]}
    )
    assert response.status_code == 422, response.text
    assert mistyped not in response.text
    for client in (hospital_a, consultant):
        response = _match(client, _demographics_only(someone))
        assert response.status_code == 403, response.text


# -- $ihe-pix -------------------------------------------------------------------------------------


def _pix(client: Client, source_identifier: str, *targets: str) -> httpx.Response:
    params = [("sourceIdentifier", source_identifier)] + [("targetSystem", t) for t in targets]
    return client.get("/Patient/$ihe-pix", params=params)


def _pix_answer(response: httpx.Response) -> tuple[set[tuple[str, str]], set[str]]:
    assert response.status_code == 200, response.text
    parameters = response.json()
    assert parameters["resourceType"] == "Parameters"
    identifiers = {
        (p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
        for p in parameters["parameter"]
        if p["name"] == "targetIdentifier"
    }
    references = {
        p["valueReference"]["reference"].rsplit("/Patient/", 1)[1]
        for p in parameters["parameter"]
        if p["name"] == "targetId"
    }
    return identifiers, references


def test_ihe_pix_cross_references_the_person(
    admin: Client,
    hospital_a: Client,
    hospital_b: Client,
    consultant: Client,
    doctor: Client,
) -> None:
    someone = person(fresh_people())
    org_a, org_b = hospital_a.organization, hospital_b.organization
    mrn_a, mrn_b = f"A-{unique()}", f"B-{unique()}"
    a = create(hospital_a, source(someone, org_a, mrn_a))
    b = create(hospital_b, source(someone, org_b, mrn_b))
    master = master_of(doctor, a)["id"]
    number = someone.resident_id
    from_mrn_a = f"{mrn_system(org_a)}|{mrn_a}"

    identifiers, references = _pix_answer(_pix(doctor, from_mrn_a))
    assert identifiers == {(mrn_system(org_b), mrn_b), (RESIDENT, masked(number))}
    assert references == {master, a, b}
    identifiers, references = _pix_answer(_pix(admin, from_mrn_a))
    assert identifiers == {(mrn_system(org_b), mrn_b), (RESIDENT, number)}
    assert references == {master, a, b}
    identifiers, _ = _pix_answer(_pix(doctor, from_mrn_a, mrn_system(org_b)))
    assert identifiers == {(mrn_system(org_b), mrn_b)}
    identifiers, _ = _pix_answer(_pix(admin, f"{RESIDENT}|{number}", RESIDENT))
    assert identifiers == set()  # only the source identifier is in that system
    identifiers, references = _pix_answer(_pix(admin, f"{RESIDENT}|{number}", mrn_system(org_a)))
    assert identifiers == {(mrn_system(org_a), mrn_a)}
    assert references == {master, a}  # the records in the target domain (and the master)
    # The POST form with Parameters answers the same.
    posted = doctor.post(
        "/Patient/$ihe-pix",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {
                    "name": "sourceIdentifier",
                    "valueIdentifier": {"system": mrn_system(org_a), "value": mrn_a},
                },
                {"name": "targetSystem", "valueUri": mrn_system(org_b)},
            ],
        },
    )
    identifiers, references = _pix_answer(posted)
    assert identifiers == {(mrn_system(org_b), mrn_b)}
    assert references == {master, b}
    wrong = doctor.post("/Patient/$ihe-pix", json={"resourceType": "Patient"})
    assert wrong.status_code == 400, wrong.text

    assert _pix(doctor, f"{mrn_system(org_a)}|no-such-{unique()}").status_code == 404
    assert _pix(doctor, f"{RESIDENT}|{person(fresh_people()).resident_id}").status_code == 404
    assert _pix(doctor, f"urn:example:{unique()}|{mrn_a}").status_code == 400
    assert _pix(doctor, mrn_a).status_code == 400
    assert _pix(doctor, f"{RESIDENT}|12345").status_code == 400
    assert doctor.get("/Patient/$ihe-pix").status_code == 400
    assert _pix(doctor, from_mrn_a, f"urn:example:{unique()}").status_code == 403
    for client in (hospital_a, consultant):
        response = _pix(client, from_mrn_a)
        assert response.status_code == 403, response.text


# -- masters are the hub's ------------------------------------------------------------------------


def test_masters_are_read_only_and_invisible_to_hospitals(
    admin: Client, hospital_a: Client, doctor: Client
) -> None:
    a = create(hospital_a, source(person(fresh_people()), hospital_a.organization))
    master = master_of(doctor, a)
    master_id = master["id"]
    body = admin.get(f"/Patient/{master_id}").json()
    body["active"] = False
    body.pop("link")
    put = admin.put(f"/Patient/{master_id}", json=body)
    assert put.status_code == 409, put.text
    assert _issue(put)["code"] == "conflict"
    delete = admin.delete(f"/Patient/{master_id}")
    assert delete.status_code == 409, delete.text
    assert hospital_a.get(f"/Patient/{master_id}").status_code == 404
    assert master_id not in ids(search(hospital_a, "Patient", _id=master_id))
    after = doctor.get(f"/Patient/{master_id}").json()
    assert after["meta"]["versionId"] == master["meta"]["versionId"]
    assert after["active"] is True
    assert linked_sources(after) == {a}


# -- identifiers the hub refuses or repairs -------------------------------------------------------


def _refused(
    hospital: Client, body: dict[str, Any], expression: str, *hidden: str
) -> dict[str, Any]:
    """POST a Patient that must be refused with 422 at ``expression``; nothing is stored."""
    response = hospital.post("/Patient", json=body)
    assert response.status_code == 422, response.text
    issue = _issue(response)
    assert issue["expression"] == [expression], issue
    for text in hidden:
        assert text not in response.text
    mrn = [i for i in body["identifier"] if i.get("system") == mrn_system(hospital.organization)]
    if mrn:
        token = f"{mrn[0]['system']}|{mrn[0]['value']}"
        assert search(hospital, "Patient", identifier=token) == []
    return issue


def test_invalid_resident_ids_are_refused_with_the_number_masked(hospital_a: Client) -> None:
    people = fresh_people()
    someone = person(people)
    org = hospital_a.organization
    wrong = _with_wrong_check_character(someone.resident_id)
    body = source(someone, org)
    body["identifier"][0]["value"] = wrong
    issue = _refused(hospital_a, body, "Patient.identifier[0].value", wrong)
    assert masked(wrong) in issue["diagnostics"]
    assert "check character" in issue["diagnostics"]

    legacy = someone.area_code + "871302" + "123"  # 15 digits, born in month 13
    body = source(someone, org)
    body["identifier"][0]["value"] = legacy
    issue = _refused(hospital_a, body, "Patient.identifier[0].value", legacy)
    assert "date" in issue["diagnostics"]

    body = source(someone, org)
    body["identifier"].insert(0, {"system": RESIDENT, "value": someone.resident_id[:-2]})
    _refused(hospital_a, body, "Patient.identifier[0].value", someone.resident_id[:-2])


def test_identifier_systems_and_envelopes_are_the_hubs(
    hospital_a: Client, hospital_b: Client
) -> None:
    someone = person(fresh_people())
    body = source(someone, hospital_a.organization)
    body["identifier"].append({"system": mrn_system(hospital_b.organization), "value": unique()})
    issue = _refused(hospital_a, body, "Patient.identifier[2].system")
    assert hospital_b.organization in issue["diagnostics"]

    body = source(someone, hospital_a.organization)
    body["identifier"][0]["value"] = "enc1:20260101T000000000000:AAAA"
    _refused(hospital_a, body, "Patient.identifier[0].value")
    body = source(someone, hospital_a.organization)
    body["identifier"][1]["value"] = "enc1:x:y"
    _refused(hospital_a, body, "Patient.identifier[1].value")


def test_a_transaction_with_an_invalid_id_is_refused_whole(hospital_a: Client) -> None:
    someone = person(fresh_people())
    org = hospital_a.organization
    patient_body = source(someone, org)
    patient_body["identifier"][0]["value"] = _with_wrong_check_character(someone.resident_id)
    result_identifier = unique()
    result = observation(
        org,
        "placeholder",
        identifier=[{"system": "https://yijian.example/lab-result", "value": result_identifier}],
    )
    result["subject"] = {"reference": "urn:uuid:6f1c9f0e-4d1a-4c55-9a55-1f0de6a1a001"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6f1c9f0e-4d1a-4c55-9a55-1f0de6a1a001",
                "resource": patient_body,
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": result, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response = hospital_a.post("", json=bundle)
    assert response.status_code == 422, response.text
    assert someone.resident_id[:17] not in response.text
    token = f"https://yijian.example/lab-result|{result_identifier}"
    assert search(hospital_a, "Observation", identifier=token) == []
    mrn = patient_body["identifier"][1]
    assert search(hospital_a, "Patient", identifier=f"{mrn['system']}|{mrn['value']}") == []


def test_full_width_digits_and_a_lowercase_x_are_normalised(
    hospital_a: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    while not someone.resident_id.endswith("X"):
        someone = person(people)
    number = someone.resident_id
    body = source(someone, hospital_a.organization)
    body["identifier"][0]["value"] = " " + number[:-1].translate(FULL_WIDTH) + "x "
    response = hospital_a.post("/Patient", json=body)
    assert response.status_code == 201, response.text
    assert identifier_values(response.json(), RESIDENT) == [number]
    a = response.json()["id"]
    assert identifier_values(hospital_a.get(f"/Patient/{a}").json(), RESIDENT) == [number]
    order_for(doctor, a)  # the doctor reads the person's record while ordering for them
    for value in (number, number.lower()):
        found = search(doctor, "Patient", identifier=f"{RESIDENT}|{value}")
        assert a in ids(found), value


def test_an_mrn_without_a_system_gets_the_hospitals_own(hospital_a: Client, doctor: Client) -> None:
    someone = person(fresh_people())
    mrn = f"A-{unique()}"
    body = source(someone, hospital_a.organization, with_resident_id=False)
    body["identifier"] = [
        {"type": {"coding": [{"system": V2_0203, "code": "MR"}], "text": "病案号"}, "value": mrn}
    ]
    response = hospital_a.post("/Patient", json=body)
    assert response.status_code == 201, response.text
    system = mrn_system(hospital_a.organization)
    assert identifier_values(response.json(), system) == [mrn]
    a = response.json()["id"]
    master = master_of(doctor, a)["id"]
    assert ids(search(doctor, "Patient", identifier=f"{system}|{mrn}")) == {a, master}
    assert ids(search(hospital_a, "Patient", identifier=f"{system}|{mrn}")) == {a}
