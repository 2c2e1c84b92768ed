"""Patient identity: the hard cases a review found — a founder's ID corrected, results of a
merged-away master, undoing an automatic link, numbers next to Chinese text in errors,
identifiers typed NNCHN, sources claiming to be masters."""

from __future__ import annotations

from typing import Any

from tests.conftest import Client, HubUnderTest
from tests.identity_support import (
    MDM,
    RESIDENT,
    V2_0203,
    admin_get,
    admin_post,
    create,
    decide,
    events_of,
    fresh_people,
    identifier_values,
    linked_sources,
    master_of,
    person,
    query,
    result_for,
    result_ids,
    source,
    typo_pair,
)


def _with_resident_id(body: dict[str, Any], number: str) -> dict[str, Any]:
    identifiers = [i for i in body["identifier"] if i.get("system") != RESIDENT]
    return {**body, "identifier": [*identifiers, {"system": RESIDENT, "value": number}]}


def test_a_founders_corrected_id_separates_twins_linked_by_the_wrong_number(
    hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    """Hospital A types twin 2's number into twin 1's record; hospital B's twin 2 links to it
    by that number. When A corrects the number, twin 1 leaves: twin 2's number no longer
    finds twin 1's results."""
    people = fresh_people()
    first = person(people)
    second = people.twin(first)
    wrong = _with_resident_id(source(first, hospital_a.organization), second.resident_id)
    a = create(hospital_a, wrong)
    b = create(hospital_b, source(second, hospital_b.organization))
    result_a = result_for(hospital_a, a)
    result_b = result_for(hospital_b, b)
    assert master_of(doctor, a)["id"] == master_of(doctor, b)["id"]  # the wrong number links

    corrected = {**_with_resident_id(wrong, first.resident_id), "id": a}
    response = hospital_a.put(f"/Patient/{a}", json=corrected)
    assert response.status_code == 200, response.text

    assert master_of(doctor, a)["id"] != master_of(doctor, b)["id"]
    by_second = result_ids(doctor, **{"patient.identifier": f"{RESIDENT}|{second.resident_id}"})
    assert by_second == {result_b}
    by_first = result_ids(doctor, **{"patient.identifier": f"{RESIDENT}|{first.resident_id}"})
    assert by_first == {result_a}


def test_results_are_found_through_a_merged_away_master(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    """A client that kept the id of a master later merged away still finds the person."""
    pair = typo_pair(hospital_a, hospital_b, doctor)
    decide(hub, admin, "merge", {"from": f"Patient/{pair.master_b}", "into": pair.master_a})
    expected = {pair.result_a, pair.result_b}
    assert result_ids(doctor, patient=f"Patient/{pair.master_b}") == expected
    everything = doctor.get(f"/Patient/{pair.master_b}/$everything").json()
    found = {e["resource"]["id"] for e in everything["entry"]}
    assert expected <= found


def test_an_automatic_first_link_can_be_undone(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    a = create(hospital_a, source(someone, hospital_a.organization))
    b = create(hospital_b, source(someone, hospital_b.organization))
    master = master_of(doctor, a)["id"]
    assert linked_sources(master_of(doctor, b)) == {a, b}
    (link,) = [e for e in events_of(hub, admin, b) if e["action"] == "link"]
    assert link["decided_by"] == "rule:deterministic"

    decide(hub, admin, "undo", {"event": link["id"]})
    assert master_of(doctor, a)["id"] == master
    assert master_of(doctor, b)["id"] != master
    # The operator's decision stands: B sent again is not linked back by its number.
    again = {**source(someone, hospital_b.organization), "id": b}
    assert hospital_b.put(f"/Patient/{b}", json=again).status_code == 200
    assert master_of(doctor, b)["id"] != master


def test_a_number_next_to_chinese_text_is_masked_in_the_error_and_the_audit_log(
    hub: HubUnderTest, hospital_a: Client
) -> None:
    someone = person(fresh_people())
    bad = someone.resident_id[:-1] + ("0" if someone.resident_id[-1] != "0" else "1")
    body = source(someone, hospital_a.organization, with_resident_id=False)
    body["identifier"].append({"system": RESIDENT, "value": f"身份证{bad}号"})
    response = hospital_a.post("/Patient", json=body)
    assert response.status_code == 422, response.text
    assert bad not in response.text
    assert bad[:14] not in response.text
    rows = query(hub, "SELECT detail FROM audit_log WHERE detail LIKE $1", f"%{bad[:10]}%")
    assert rows == []


def test_an_identifier_typed_nnchn_without_a_system_is_a_resident_id(
    hospital_a: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    body = source(someone, hospital_a.organization, with_resident_id=False)
    body["identifier"].append(
        {
            "type": {"coding": [{"system": V2_0203, "code": "NNCHN"}]},
            "value": someone.resident_id.lower(),
        }
    )
    a = create(hospital_a, body)
    stored = hospital_a.get(f"/Patient/{a}").json()
    assert identifier_values(stored, RESIDENT) == [someone.resident_id]
    assert master_of(doctor, a)["id"]


def test_a_source_cannot_pass_itself_off_as_a_master(hospital_a: Client, doctor: Client) -> None:
    someone = person(fresh_people())
    body = source(someone, hospital_a.organization)
    body["meta"] = {"tag": [{"system": MDM, "code": "master"}]}
    a = create(hospital_a, body)
    stored = hospital_a.get(f"/Patient/{a}").json()
    assert not [t for t in stored["meta"].get("tag", []) if t.get("system") == MDM]
    assert master_of(doctor, a)["id"] != a


def test_search_links_carry_the_keyed_hash_not_the_number(
    hospital_a: Client, doctor: Client
) -> None:
    """Bundle links echo the query: for an ID number, its hash, which pages as well."""
    someone = person(fresh_people())
    a = create(hospital_a, source(someone, hospital_a.organization))
    master = master_of(doctor, a)["id"]  # (the doctor orders for the person: a purpose)
    first = doctor.get(
        "/Patient", params={"identifier": f"{RESIDENT}|{someone.resident_id}", "_count": "1"}
    ).json()
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert someone.resident_id not in str(first["link"])
    assert "h1%3A" in links["self"] or "h1:" in links["self"]
    second = doctor.get(links["next"]).json()
    found = {e["resource"]["id"] for page in (first, second) for e in page["entry"]}
    assert found == {a, master}


def test_reading_the_review_queue_is_audited_with_its_patients(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    pair = typo_pair(hospital_a, hospital_b, doctor)
    after = 0
    while True:  # page through the queue (the whole suite leaves many reviews open)
        listed = admin_get(hub, admin, "reviews", limit=1000, after=after)
        assert listed.status_code == 200, listed.text
        page = listed.json()
        if not page or any(r["source"] == f"Patient/{pair.b}" for r in page):
            break
        after = page[-1]["id"]
    rows = query(
        hub,
        "SELECT patients FROM audit_log WHERE interaction = 'identity-reviews' "
        "AND client_id = $1 AND $2 = ANY(patients)",
        admin.client_id,
        f"Patient/{pair.b}",
    )
    assert rows, "the review list read is not in the audit log"
    assert admin_get(hub, doctor, "reviews").status_code == 403


def test_a_malformed_operator_request_says_which_field_is_wrong(
    hub: HubUnderTest, admin: Client
) -> None:
    response = admin_post(hub, admin, "link", {"source": 5})
    assert response.status_code == 400, response.text
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert "source" in diagnostics and "master" in diagnostics, diagnostics
