"""Patient identity through HTTP and the CLI: which records become one person, and the
operators' link decisions (link, unlink, merge, undo, dismiss).

Each test makes people of its own (``fresh_people``): the database is shared by the session.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from tests.conftest import Client, HubUnderTest, unique
from tests.demographics import Person
from tests.identity_support import (
    INSURANCE,
    RESIDENT,
    TypoPair,
    admin_post,
    create,
    decide,
    events_of,
    fresh_people,
    identifier_values,
    ids,
    legacy_id,
    linked_sources,
    masked,
    master_of,
    mrn_system,
    person,
    resident_identifier,
    result_for,
    result_ids,
    reviews_of,
    search,
    source,
    typo_pair,
    typo_twin_of,
)

# -- one person, many hospitals -------------------------------------------------------------------


def test_one_person_at_two_hospitals_is_one_master_found_by_every_identifier(
    hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    while someone.birth_date.year >= 2000:  # a legacy 15-digit number needs a 19xx birth year
        someone = person(people)
    number = someone.resident_id
    org_a, org_b = hospital_a.organization, hospital_b.organization
    mrn_a, mrn_b = f"A-{unique()}", f"B-{unique()}"
    a = create(hospital_a, source(someone, org_a, mrn_a))
    body_b = source(someone, org_b, mrn_b)
    body_b["identifier"][0]["value"] = legacy_id(number)  # hospital B still has the old card
    b = create(hospital_b, body_b)
    result_a, result_b = result_for(hospital_a, a), result_for(hospital_b, b)

    # B's record is stored with the number upgraded to 18 characters.
    stored_b = hospital_b.get(f"/Patient/{b}").json()
    assert identifier_values(stored_b, RESIDENT) == [number]

    master = master_of(doctor, a)
    assert master_of(doctor, b)["id"] == master["id"]
    assert linked_sources(master) == {a, b}
    assert master["id"] not in (a, b)
    assert identifier_values(master, RESIDENT) == [masked(number)]
    assert identifier_values(master, mrn_system(org_a)) == [mrn_a]
    assert identifier_values(master, mrn_system(org_b)) == [mrn_b]
    assert master["name"][0]["text"] == someone.name
    assert master["birthDate"] == someone.birth_date.isoformat()

    both = {result_a, result_b}
    for token in (
        f"{RESIDENT}|{number}",
        f"{RESIDENT}|{legacy_id(number)}",  # a search normalises like a write
        f"{mrn_system(org_a)}|{mrn_a}",
        f"{mrn_system(org_b)}|{mrn_b}",
    ):
        assert result_ids(doctor, **{"patient.identifier": token}) == both, token
    for patient_id in (a, b, master["id"]):
        assert result_ids(doctor, patient=f"Patient/{patient_id}") == both, patient_id

    everything = doctor.get(f"/Patient/{b}/$everything")
    assert everything.status_code == 200, everything.text
    found = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in everything.json()["entry"]
    }
    assert {f"Observation/{result_a}", f"Observation/{result_b}"} <= found

    # Each hospital still reads only what it wrote.
    assert result_ids(hospital_a, **{"patient.identifier": f"{RESIDENT}|{number}"}) == {result_a}
    assert result_ids(hospital_a, patient=f"Patient/{a}") == {result_a}
    assert ids(search(hospital_a, "Patient", identifier=f"{RESIDENT}|{number}")) == {a}
    assert result_ids(hospital_b, **{"patient.identifier": f"{mrn_system(org_a)}|{mrn_a}"}) == {
        result_b
    }
    assert hospital_a.get(f"/Patient/{b}").status_code == 404


def test_the_insurance_number_alone_links_deterministically(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    insurance = {"system": INSURANCE, "value": someone.insurance_number}
    body_a = source(someone, hospital_a.organization, with_resident_id=False)
    body_a["identifier"].append(insurance)
    # B misspells the given name: on demographics alone this would only be probable.
    typo = typo_twin_of(people, someone)
    body_b = source(typo, hospital_b.organization, with_resident_id=False)
    body_b["identifier"].append(insurance)
    a, b = create(hospital_a, body_a), create(hospital_b, body_b)
    result_a, result_b = result_for(hospital_a, a), result_for(hospital_b, b)

    master = master_of(doctor, a)
    assert master_of(doctor, b)["id"] == master["id"]
    assert linked_sources(master) == {a, b}
    token = f"{INSURANCE}|{someone.insurance_number}"
    assert result_ids(doctor, **{"patient.identifier": token}) == {result_a, result_b}
    assert reviews_of(hub, admin, b) == []
    linked = [e for e in events_of(hub, admin, b) if e["source_id"] == b]
    assert [(e["action"], e["decided_by"], e["master_id"]) for e in linked] == [
        ("link", "rule:deterministic", master["id"])
    ]


def test_namesakes_with_different_resident_ids_stay_apart_without_a_review(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    namesake = people.namesake(someone)
    assert namesake.resident_id != someone.resident_id
    a = create(hospital_a, source(someone, hospital_a.organization))
    b = create(hospital_b, source(namesake, hospital_b.organization))
    master_a, master_b = master_of(doctor, a)["id"], master_of(doctor, b)["id"]
    assert master_a != master_b
    assert reviews_of(hub, admin, b) == []
    assert reviews_of(hub, admin, a) == []
    result_a = result_for(hospital_a, a)
    token = f"{RESIDENT}|{namesake.resident_id}"
    assert result_a not in result_ids(doctor, **{"patient.identifier": token})


def test_namesakes_without_ids_are_not_linked_but_reviewed(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    namesake = people.namesake(someone)
    a = create(hospital_a, source(someone, hospital_a.organization, with_resident_id=False))
    b = create(hospital_b, source(namesake, hospital_b.organization, with_resident_id=False))
    master_a, master_b = master_of(doctor, a)["id"], master_of(doctor, b)["id"]
    assert master_a != master_b
    (review,) = reviews_of(hub, admin, b)
    assert review["master"] == f"Patient/{master_a}"
    assert review["grade"] in ("possible", "probable")
    assert review["status"] == "open"
    assert review["details"]["fields"]["name"]["outcome"] == "exact"
    assert review["details"]["fields"]["birthDate"]["outcome"] == "exact"


def test_twins_are_never_linked_automatically(
    hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    for with_ids in (True, False):
        someone = person(people)
        twin = people.twin(someone)
        a = create(hospital_a, source(someone, hospital_a.organization, with_resident_id=with_ids))
        b = create(hospital_b, source(twin, hospital_b.organization, with_resident_id=with_ids))
        assert master_of(doctor, a)["id"] != master_of(doctor, b)["id"], with_ids
        assert result_for(hospital_b, b) not in result_ids(doctor, patient=f"Patient/{a}")


def test_a_shared_id_on_plainly_different_people_is_reviewed_not_linked(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    while someone.family == "欧阳":
        someone = person(people)
    other = person(people, family="欧阳")  # a name nothing like the other's
    assert other.birth_date != someone.birth_date
    a = create(hospital_a, source(someone, hospital_a.organization))
    # B typed this person's number into another patient's record.
    body_b = source(other, hospital_b.organization)
    body_b["identifier"][0]["value"] = someone.resident_id
    b = create(hospital_b, body_b)
    master_a = master_of(doctor, a)["id"]
    assert master_of(doctor, b)["id"] != master_a
    (review,) = reviews_of(hub, admin, b)
    assert (review["master"], review["grade"]) == (f"Patient/{master_a}", "probable")


def test_a_deleted_record_leaves_its_person(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    org_a = hospital_a.organization
    mrn_a = f"A-{unique()}"
    a = create(hospital_a, source(someone, org_a, mrn_a))
    b = create(hospital_b, source(someone, hospital_b.organization))
    result_b = result_for(hospital_b, b)
    master = master_of(doctor, a)["id"]
    assert master_of(doctor, b)["id"] == master

    assert hospital_a.delete(f"/Patient/{a}").status_code == 204
    remaining = master_of(doctor, b)
    assert remaining["id"] == master
    assert linked_sources(remaining) == {b}
    assert identifier_values(remaining, mrn_system(org_a)) == []
    assert search(doctor, "Patient", identifier=f"{mrn_system(org_a)}|{mrn_a}") == []
    token = f"{RESIDENT}|{someone.resident_id}"
    assert result_ids(doctor, **{"patient.identifier": token}) == {result_b}
    (deleted,) = [e for e in events_of(hub, admin, a) if e["decided_by"] == "rule:source-deleted"]
    assert (deleted["action"], deleted["previous_master_id"]) == ("unlink", master)


def test_a_record_sent_again_unchanged_leaves_its_master_alone(
    hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    a = create(hospital_a, source(someone, hospital_a.organization))
    body_b = source(someone, hospital_b.organization)
    b = create(hospital_b, body_b)
    before = master_of(doctor, a)
    assert hospital_b.put(f"/Patient/{b}", json={**body_b, "id": b}).status_code == 200
    after = master_of(doctor, a)
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    assert linked_sources(after) == {a, b}


def test_a_crowded_blocking_key_does_not_hide_the_true_match(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    switchboard = f"0571-8{unique()[:7]}".translate(str.maketrans("abcdef", "123456"))
    # 200 patients of hospital A registered with the hospital's own number as their phone.
    crowd = [
        {
            "resource": source(person(people, phone=switchboard), hospital_a.organization),
            "request": {"method": "POST", "url": "Patient"},
        }
        for _ in range(200)
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": crowd}
    assert hospital_a.post("", json=bundle).status_code == 200
    someone = person(people, phone=switchboard)
    a = create(hospital_a, source(someone, hospital_a.organization))
    typo = typo_twin_of(people, someone)
    b = create(hospital_b, source(typo, hospital_b.organization, with_resident_id=False))
    # The same name by pinyin, birth date, gender, phone and address: a probable match.
    (review,) = reviews_of(hub, admin, b)
    assert review["master"] == f"Patient/{master_of(doctor, a)['id']}"


# -- the operator decides -------------------------------------------------------------------------


def test_homophone_typo_is_reviewed_then_linked_by_the_operator_and_undone(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    pair = typo_pair(hospital_a, hospital_b, doctor)
    token = f"{RESIDENT}|{pair.person.resident_id}"
    assert result_ids(doctor, **{"patient.identifier": token}) == {pair.result_a}
    (review,) = reviews_of(hub, admin, pair.b)
    assert review["grade"] == "probable"
    assert review["master"] == f"Patient/{pair.master_a}"
    assert review["details"]["fields"]["name"]["outcome"] == "pinyin"

    event = decide(
        hub,
        admin,
        "link",
        {"source": review["source"], "master": review["master"], "reason": "same phone"},
    )
    assert master_of(doctor, pair.b)["id"] == pair.master_a
    assert linked_sources(master_of(doctor, pair.a)) == {pair.a, pair.b}
    assert result_ids(doctor, **{"patient.identifier": token}) == {pair.result_a, pair.result_b}
    assert reviews_of(hub, admin, pair.b) == []
    (resolved,) = reviews_of(hub, admin, pair.b, status="linked")
    assert resolved["id"] == review["id"]
    assert resolved["resolvedBy"] == f"client:{admin.client_id}"
    assert resolved["reason"] == "same phone"
    # B's own master is left without records: retired, not deleted.
    retired = admin.get(f"/Patient/{pair.master_b}").json()
    assert retired["active"] is False
    assert "identifier" not in retired

    undo = decide(hub, admin, "undo", {"event": event})
    assert master_of(doctor, pair.b)["id"] == pair.master_b
    assert linked_sources(master_of(doctor, pair.a)) == {pair.a}
    assert result_ids(doctor, **{"patient.identifier": token}) == {pair.result_a}

    history = {e["id"]: e for e in events_of(hub, admin, pair.b)}
    assert history[event]["action"] == "link"
    assert history[event]["master_id"] == pair.master_a
    assert history[event]["reason"] == "same phone"
    assert history[event]["undone_by"] == undo
    assert history[undo]["action"] == "undo"
    assert history[undo]["undoes"] == event


def test_an_operator_link_survives_an_update_of_the_other_record(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    pair = typo_pair(hospital_a, hospital_b, doctor)
    decide(hub, admin, "link", {"source": f"Patient/{pair.b}", "master": pair.master_a})
    # Hospital A sends its record again with a new phone number: nothing about B changed.
    body = source(replace(pair.person, phone="13912345678"), hospital_a.organization, id=pair.a)
    assert hospital_a.put(f"/Patient/{pair.a}", json=body).status_code == 200
    token = f"{RESIDENT}|{pair.person.resident_id}"
    assert master_of(doctor, pair.a)["id"] == master_of(doctor, pair.b)["id"]
    assert result_ids(doctor, **{"patient.identifier": token}) == {pair.result_a, pair.result_b}


def test_a_review_is_settled_when_the_record_is_linked_by_its_id(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    pair = typo_pair(hospital_a, hospital_b, doctor)
    assert len(reviews_of(hub, admin, pair.b)) == 1
    # Hospital B learns the resident ID: the record now links with certainty.
    body = hospital_b.get(f"/Patient/{pair.b}").json()
    body["identifier"].insert(0, resident_identifier(pair.person.resident_id))
    assert hospital_b.put(f"/Patient/{pair.b}", json=body).status_code == 200
    assert master_of(doctor, pair.b)["id"] == pair.master_a
    assert reviews_of(hub, admin, pair.b) == []


def test_a_dismissed_review_is_not_proposed_again(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    pair = typo_pair(hospital_a, hospital_b, doctor)
    (review,) = reviews_of(hub, admin, pair.b)
    dismissed = admin_post(hub, admin, f"reviews/{review['id']}/dismiss", {"reason": "not her"})
    assert dismissed.status_code == 200, dismissed.text
    assert dismissed.json()["status"] == "dismissed"
    again = admin_post(hub, admin, f"reviews/{review['id']}/dismiss", {})
    assert again.status_code == 409, again.text
    # B sends its record again: the pair is not proposed again, nor linked.
    body = hospital_b.get(f"/Patient/{pair.b}").json()
    body["telecom"].append({"system": "phone", "value": "0571-87654321"})
    assert hospital_b.put(f"/Patient/{pair.b}", json=body).status_code == 200
    assert reviews_of(hub, admin, pair.b) == []
    assert master_of(doctor, pair.b)["id"] == pair.master_b


def test_one_person_with_a_new_resident_id_and_the_old_one_kept_as_old(
    hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    # A new card (another area: the person moved); same name, birth date and gender.
    renewed = people.person(
        family=someone.family,
        given=someone.given,
        gender=someone.gender,
        birth_date=someone.birth_date,
    )
    old, new = someone.resident_id, renewed.resident_id
    assert old != new
    a = create(hospital_a, source(someone, hospital_a.organization))
    body_b = source(someone, hospital_b.organization)
    body_b["identifier"][0]["value"] = new
    body_b["identifier"].append(resident_identifier(old, use="old"))
    b = create(hospital_b, body_b)
    result_a, result_b = result_for(hospital_a, a), result_for(hospital_b, b)

    assert master_of(doctor, a)["id"] == master_of(doctor, b)["id"]
    for number in (old, new):
        token = f"{RESIDENT}|{number}"
        assert result_ids(doctor, **{"patient.identifier": token}) == {result_a, result_b}


def test_a_corrected_resident_id_moves_the_record_to_the_right_person(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    wrong = person(people).resident_id  # someone else's valid number, typed by mistake
    body_a = source(someone, hospital_a.organization)
    body_a["identifier"][0]["value"] = wrong
    a = create(hospital_a, body_a)
    b = create(hospital_b, source(someone, hospital_b.organization))
    result_a, result_b = result_for(hospital_a, a), result_for(hospital_b, b)
    old_master = master_of(doctor, a)["id"]
    assert master_of(doctor, b)["id"] != old_master
    assert result_ids(doctor, **{"patient.identifier": f"{RESIDENT}|{wrong}"}) == {result_a}

    body_a["id"] = a
    body_a["identifier"][0]["value"] = someone.resident_id
    assert hospital_a.put(f"/Patient/{a}", json=body_a).status_code == 200

    master = master_of(doctor, a)
    assert master["id"] == master_of(doctor, b)["id"] != old_master
    assert linked_sources(master) == {a, b}
    retired = admin.get(f"/Patient/{old_master}")
    assert retired.status_code == 200, retired.text
    assert retired.json()["active"] is False
    assert "identifier" not in retired.json()
    assert result_ids(doctor, **{"patient.identifier": f"{RESIDENT}|{wrong}"}) == set()
    assert search(doctor, "Patient", identifier=f"{RESIDENT}|{wrong}") == []
    token = f"{RESIDENT}|{someone.resident_id}"
    assert result_ids(doctor, **{"patient.identifier": token}) == {result_a, result_b}
    moved = [e for e in events_of(hub, admin, a) if e["action"] == "relink"]
    assert [(e["master_id"], e["previous_master_id"]) for e in moved] == [
        (master["id"], old_master)
    ]


# -- merge, unlink and undo -----------------------------------------------------------------------


def test_merge_and_its_undo(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    pair = typo_pair(hospital_a, hospital_b, doctor)
    token = f"{RESIDENT}|{pair.person.resident_id}"
    merge = decide(hub, admin, "merge", {"from": f"Patient/{pair.master_b}", "into": pair.master_a})

    assert master_of(doctor, pair.b)["id"] == pair.master_a
    assert linked_sources(master_of(doctor, pair.a)) == {pair.a, pair.b}
    merged = doctor.get(f"/Patient/{pair.master_b}").json()
    assert merged["active"] is False
    assert merged["link"] == [
        {"other": {"reference": f"Patient/{pair.master_a}"}, "type": "replaced-by"}
    ]
    assert result_ids(doctor, **{"patient.identifier": token}) == {pair.result_a, pair.result_b}
    assert reviews_of(hub, admin, pair.b) == []  # the review is settled by the merge
    # A merged-away master takes no decisions.
    refused = admin_post(
        hub, admin, "merge", {"from": f"Patient/{pair.master_b}", "into": pair.master_a}
    )
    assert refused.status_code == 409, refused.text

    undo = decide(hub, admin, "undo", {"event": merge})
    assert master_of(doctor, pair.b)["id"] == pair.master_b
    assert linked_sources(master_of(doctor, pair.a)) == {pair.a}
    assert result_ids(doctor, **{"patient.identifier": token}) == {pair.result_a}
    twice = admin_post(hub, admin, "undo", {"event": merge})
    assert twice.status_code == 409, twice.text
    history = {e["id"]: e for e in events_of(hub, admin, pair.master_b)}
    assert history[merge]["undone_by"] == undo

    # An older decision cannot be undone over a later one that touched the same records.
    again = decide(hub, admin, "merge", {"from": f"Patient/{pair.master_b}", "into": pair.master_a})
    decide(hub, admin, "unlink", {"source": f"Patient/{pair.b}"})
    blocked = admin_post(hub, admin, "undo", {"event": again})
    assert blocked.status_code == 409, blocked.text
    assert master_of(doctor, pair.b)["id"] not in (pair.master_a, pair.master_b)


def test_an_older_decision_can_be_undone_once_the_later_one_is_undone(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    pair = typo_pair(hospital_a, hospital_b, doctor)
    merge = decide(hub, admin, "merge", {"from": f"Patient/{pair.master_b}", "into": pair.master_a})
    unlink = decide(hub, admin, "unlink", {"source": f"Patient/{pair.b}"})
    blocked = admin_post(hub, admin, "undo", {"event": merge})
    assert blocked.status_code == 409
    assert (
        str(unlink) in blocked.text
    )  # "later decisions (N) changed these records; undo those first"
    decide(hub, admin, "undo", {"event": unlink})
    assert master_of(doctor, pair.b)["id"] == pair.master_a
    response = admin_post(hub, admin, "undo", {"event": merge})
    assert response.status_code == 200, response.text
    assert master_of(doctor, pair.b)["id"] == pair.master_b


def test_unlink_gives_the_record_its_own_master_and_matching_respects_it(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    someone = person(people)
    a = create(hospital_a, source(someone, hospital_a.organization))
    body_b = source(someone, hospital_b.organization)
    b = create(hospital_b, body_b)
    result_a, result_b = result_for(hospital_a, a), result_for(hospital_b, b)
    master = master_of(doctor, a)["id"]
    assert master_of(doctor, b)["id"] == master

    event = decide(hub, admin, "unlink", {"source": f"Patient/{b}", "reason": "two people"})
    own = master_of(doctor, b)
    assert own["id"] != master
    assert linked_sources(own) == {b}
    assert linked_sources(master_of(doctor, a)) == {a}
    assert result_ids(doctor, patient=f"Patient/{a}") == {result_a}
    assert result_ids(doctor, patient=f"Patient/{b}") == {result_b}
    (unlinked,) = [e for e in events_of(hub, admin, b) if e["id"] == event]
    assert (unlinked["action"], unlinked["previous_master_id"]) == ("unlink", master)

    # B sends the record again (same resident ID): the operator's decision stands.
    body_b["id"] = b
    body_b["telecom"].append({"system": "phone", "value": "0571-87654321"})
    assert hospital_b.put(f"/Patient/{b}", json=body_b).status_code == 200
    assert master_of(doctor, b)["id"] == own["id"]
    assert master_of(doctor, a)["id"] == master
    # The last record of a master cannot be unlinked from it.
    lonely = admin_post(hub, admin, "unlink", {"source": f"Patient/{a}"})
    assert lonely.status_code == 409, lonely.text


def test_operator_requests_are_checked(
    hub: HubUnderTest,
    admin: Client,
    hospital_a: Client,
    doctor: Client,
) -> None:
    a = create(hospital_a, source(person(fresh_people()), hospital_a.organization))
    master = master_of(doctor, a)["id"]
    for client in (hospital_a, doctor):
        response = admin_post(hub, client, "link", {"source": f"Patient/{a}", "master": master})
        assert response.status_code == 403, response.text
    cases: list[tuple[str, dict[str, Any], int]] = [
        ("link", {"source": f"Patient/{master}", "master": master}, 400),  # a master as source
        ("link", {"source": f"Patient/{unique()}", "master": master}, 404),
        ("link", {"source": f"Patient/{a}", "master": f"Patient/{a}"}, 404),  # not a master
        ("merge", {"from": master, "into": master}, 400),
        ("undo", {"event": 2**62}, 404),
        ("link", {"source": f"Observation/{a}", "master": master}, 400),
    ]
    for path, body, status in cases:
        response = admin_post(hub, admin, path, body)
        assert response.status_code == status, (path, body, response.text)


# -- replays and concurrency ----------------------------------------------------------------------


def test_the_same_patient_sent_twice_is_two_records_of_one_person(
    hospital_a: Client, doctor: Client
) -> None:
    body = source(person(fresh_people()), hospital_a.organization)
    first, second = create(hospital_a, body), create(hospital_a, body)
    assert first != second
    master = master_of(doctor, first)
    assert master_of(doctor, second)["id"] == master["id"]
    assert linked_sources(master) == {first, second}


def test_a_conditional_create_replayed_returns_the_existing_record(
    hospital_a: Client, doctor: Client
) -> None:
    someone = person(fresh_people())
    body = source(someone, hospital_a.organization)
    condition = {"If-None-Exist": f"identifier={RESIDENT}|{someone.resident_id}"}
    first = hospital_a.post("/Patient", json=body, headers=condition)
    assert first.status_code == 201, first.text
    replay = hospital_a.post("/Patient", json=body, headers=condition)
    assert replay.status_code == 200, replay.text
    assert replay.json()["id"] == first.json()["id"]
    found = search(hospital_a, "Patient", identifier=f"{RESIDENT}|{someone.resident_id}")
    assert ids(found) == {first.json()["id"]}
    assert linked_sources(master_of(doctor, first.json()["id"])) == {first.json()["id"]}


def test_two_hospitals_sending_one_person_at_once_make_one_master(
    hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    people = fresh_people()
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(10):
            someone = person(people)
            barrier = threading.Barrier(2)

            def send(client: Client, someone: Person = someone, barrier: Any = barrier) -> str:
                body = source(someone, client.organization)
                barrier.wait(timeout=30)
                return create(client, body)

            a, b = pool.map(send, (hospital_a, hospital_b))
            master = master_of(doctor, a)
            assert linked_sources(master) == {a, b}
            records = search(doctor, "Patient", identifier=f"{RESIDENT}|{someone.resident_id}")
            assert ids(records) == {a, b, master["id"]}


# -- the CLI --------------------------------------------------------------------------------------


def test_cli_lists_a_review_and_links_it(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    pair: TypoPair = typo_pair(hospital_a, hospital_b, doctor)
    listed = json.loads(hub.cli("identity", "reviews", "--limit", "100000", "--json").stdout)
    (review,) = [r for r in listed if r["source"] == f"Patient/{pair.b}"]
    assert review["master"] == f"Patient/{pair.master_a}"
    assert review["grade"] == "probable"
    assert review["status"] == "open"

    out = hub.cli("identity", "link", pair.b, pair.master_a, "--reason", "checked by phone")
    match = re.search(r"\(event (\d+)\)", out.stdout)
    assert match, out.stdout
    assert master_of(doctor, pair.b)["id"] == pair.master_a
    token = f"{RESIDENT}|{pair.person.resident_id}"
    assert result_ids(doctor, **{"patient.identifier": token}) == {pair.result_a, pair.result_b}
    assert reviews_of(hub, admin, pair.b) == []
    events = hub.cli("identity", "events", "--patient", pair.b).stdout
    assert re.search(rf"^\s*{match.group(1)} .* link .*source={pair.b}", events, re.M), events
    # A refused decision: the reason on stderr and a non-zero exit.
    refused = hub.cli("identity", "link", pair.b, pair.b, check=False)
    assert refused.returncode != 0
    assert "not a master" in refused.stderr


def test_the_master_of_a_source_is_unambiguous_after_a_merge(
    hub: HubUnderTest, admin: Client, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    pair = typo_pair(hospital_a, hospital_b, doctor)
    decide(hub, admin, "merge", {"from": f"Patient/{pair.master_b}", "into": pair.master_a})
    found = {
        "of B": ids(search(doctor, "Patient", link=f"Patient/{pair.b}")),
        "of the master": ids(search(doctor, "Patient", link=f"Patient/{pair.master_a}")),
    }
    # Only the active master links to B (seealso); nothing links to the master but the
    # merged-away one (replaced-by); no Patient links to itself.
    assert found == {"of B": {pair.master_a}, "of the master": {pair.master_b}}
