"""An adversarial review of access by purpose, consultations, SMART launch and the web pages:
each test is an attack or a malformed request that once succeeded or failed badly, through
HTTP against the running hub."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Client, HubUnderTest
from tests.identity_support import create, fresh_people, person, result_for, source
from tests.test_web_auth import PASSWORD, Browser, add_user


def _in(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


def _treat(hub: HubUnderTest, doctor: Client, patient_id: str) -> None:
    grant = doctor.post(
        f"{hub.base_url}/access/grants",
        json={"patient": f"Patient/{patient_id}", "purposeOfUse": "TREAT"},
    )
    assert grant.status_code == 201, grant.text


@pytest.fixture
def two_people(hub: HubUnderTest, hospital_b: Client, doctor: Client) -> dict[str, str]:
    """Two different people registered at the doctor's hospital (B), each with a result,
    both opened in the doctor's care."""
    people = fresh_people()
    first = create(hospital_b, source(person(people), hospital_b.organization))
    second = create(hospital_b, source(person(people), hospital_b.organization))
    found = {
        "first": first,
        "second": second,
        "first_result": result_for(hospital_b, first),
        "second_result": result_for(hospital_b, second),
    }
    _treat(hub, doctor, first)
    _treat(hub, doctor, second)
    return found


# -- web: redirects after login ------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/\t/evil.example/", "/\n/evil.example/", "/\r//evil.example"])
def test_login_next_never_leaves_the_site(hub: HubUnderTest, target: str) -> None:
    """Browsers drop tabs and line breaks from a URL, so ``/<TAB>/evil`` is ``//evil``."""
    user = add_user(hub, "doctor")
    browser = Browser(hub.base_url)
    answer = browser.login(user["username"], PASSWORD, next_url=target)
    assert answer.status_code == 303, answer.text
    location = answer.headers["location"]
    cleaned = location.replace("\t", "").replace("\n", "").replace("\r", "")
    assert not cleaned.startswith("//"), location
    again = browser.get("/login", params={"next": target})
    cleaned = again.headers["location"].replace("\t", "").replace("\n", "").replace("\r", "")
    assert not cleaned.startswith("//"), again.headers["location"]
    switched = browser.get("/lang/en", params={"next": target})
    cleaned = switched.headers["location"].replace("\t", "").replace("\n", "").replace("\r", "")
    assert not cleaned.startswith("//"), switched.headers["location"]


# -- consultations -------------------------------------------------------------------------------


def test_a_consult_cannot_share_another_patients_result(
    hub: HubUnderTest, doctor: Client, consultant: Client, two_people: dict[str, str]
) -> None:
    """The doctor may read both people; a consult about the first must not list (and so
    disclose to the consultant through its ServiceRequest and Consent) the second's result."""
    body = {
        "patient": f"Patient/{two_people['first']}",
        "consultant": consultant.client_id,
        "question": "请会诊 please advise",
        "share": {
            "items": [
                f"Observation/{two_people['first_result']}",
                f"Observation/{two_people['second_result']}",
            ]
        },
        "expires": _in(1),
        "consent": {"method": "verbal"},
    }
    opened = doctor.post(f"{hub.base_url}/consultations", json=body)
    assert opened.status_code == 404, opened.text


# -- malformed input to the new endpoints --------------------------------------------------------


@pytest.mark.parametrize(
    "patient", ["Patient/a\u0000b", "Patient/" + "x" * 5000, "Observation/1", "Patient/", ""]
)
def test_malformed_patients_are_client_errors(
    hub: HubUnderTest, doctor: Client, admin: Client, patient: str
) -> None:
    for purpose, reason in (("TREAT", None), ("ETREAT", "急诊抢救，患者昏迷无法提供病史")):
        answer = doctor.post(
            f"{hub.base_url}/access/grants",
            json={"patient": patient, "purposeOfUse": purpose, "reason": reason},
        )
        assert 400 <= answer.status_code < 500, answer.text
    launched = doctor.post(f"{hub.base_url}/auth/launch", json={"patient": patient})
    assert 400 <= launched.status_code < 500, launched.text
    consult = doctor.post(
        f"{hub.base_url}/consultations",
        json={
            "patient": patient,
            "consultant": "user:nobody",
            "question": "q",
            "share": {"items": ["Observation/x"]},
            "expires": _in(1),
            "consent": {"method": "verbal"},
        },
    )
    assert 400 <= consult.status_code < 500, consult.text


@pytest.mark.parametrize("value", ["a\u0000b", "Observation/a\u0000b", "user:\u0000"])
def test_nul_characters_in_a_consult_are_client_errors(
    hub: HubUnderTest, doctor: Client, consultant: Client, two_people: dict[str, str], value: str
) -> None:
    base = {
        "patient": f"Patient/{two_people['first']}",
        "consultant": consultant.client_id,
        "question": "请会诊",
        "share": {"items": [f"Observation/{two_people['first_result']}"]},
        "expires": _in(1),
        "consent": {"method": "verbal", "note": ""},
    }
    variants: list[dict[str, Any]] = [
        base | {"consultant": value},
        base | {"question": value},
        base | {"share": {"items": [value]}},
        base | {"consent": {"method": "verbal", "note": value}},
    ]
    answers = [
        doctor.post(f"{hub.base_url}/consultations", json=body).status_code for body in variants
    ]
    assert all(400 <= status < 500 for status in answers), answers


def test_admin_access_log_of_a_malformed_id_is_a_client_error(
    hub: HubUnderTest, admin: Client
) -> None:
    for patient_id in ("a%00b", "x" * 5000):
        answer = admin.get(f"{hub.base_url}/admin/access/patients/{patient_id}")
        assert 400 <= answer.status_code < 500, answer.text


def test_a_nul_in_a_consent_note_does_not_break_the_consult_list(
    hub: HubUnderTest, doctor: Client, consultant: Client, two_people: dict[str, str]
) -> None:
    """The note goes into the Consent; once the consult ends, the list settles the Consent's
    status (a JSON query over it) and must still answer."""
    opened = doctor.post(
        f"{hub.base_url}/consultations",
        json={
            "patient": f"Patient/{two_people['first']}",
            "consultant": consultant.client_id,
            "question": "请会诊",
            "share": {"items": [f"Observation/{two_people['first_result']}"]},
            "expires": _in(1),
            "consent": {"method": "verbal", "note": "患者口头同意\u0000"},
        },
    )
    if opened.status_code == 201:
        revoked = doctor.post(f"{hub.base_url}/consultations/{opened.json()['id']}/revoke")
        assert revoked.status_code == 200, revoked.text
    else:
        assert opened.status_code == 400, opened.text
    for client in (doctor, consultant):
        listed = client.get(f"{hub.base_url}/consultations")
        assert listed.status_code == 200, listed.text


# -- a consultant within the consult's scope -----------------------------------------------------


def _study(client: Client, patient_id: str, study_uid: str) -> str:
    return create(
        client,
        {
            "resourceType": "ImagingStudy",
            "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
            "subject": {"reference": f"Patient/{patient_id}"},
            "started": "2026-11-01T09:00:00+08:00",
            "numberOfSeries": 0,
            "numberOfInstances": 0,
        },
    )


@pytest.fixture
def consult_scene(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client, doctor: Client
) -> dict[str, Any]:
    """A person at hospitals A and B (in the doctor's care at B); at A a result and a study
    to share and a result and a study not to; a web consultant."""
    someone = person(fresh_people())
    pid_a = create(hospital_a, source(someone, hospital_a.organization))
    pid_b = create(hospital_b, source(someone, hospital_b.organization))
    _treat(hub, doctor, pid_b)
    shared_uid, other_uid = (f"2.25.{uuid.uuid4().int}" for _ in range(2))
    scene = {
        "a": pid_a,
        "b": pid_b,
        "shared": result_for(hospital_a, pid_a),
        "other": result_for(hospital_a, pid_a),
        "study": _study(hospital_a, pid_a, shared_uid),
        "other_study": _study(hospital_a, pid_a, other_uid),
        "study_uid": shared_uid,
        "other_study_uid": other_uid,
        "consultant": add_user(hub, "consultant"),
    }
    opened = doctor.post(
        f"{hub.base_url}/consultations",
        json={
            "patient": f"Patient/{pid_a}",
            "consultant": f"user:{scene['consultant']['username']}",
            "question": "请协助阅片 please read the study",
            "share": {
                "items": [f"Observation/{scene['shared']}", f"ImagingStudy/{scene['study']}"]
            },
            "expires": _in(1),
            "consent": {"method": "written"},
        },
    )
    assert opened.status_code == 201, opened.text
    scene["consult"] = opened.json()["id"]
    return scene


def test_the_consultant_opens_a_shared_study_in_the_viewer(
    hub: HubUnderTest, consult_scene: dict[str, Any]
) -> None:
    browser = Browser(hub.base_url)
    assert browser.login(consult_scene["consultant"]["username"]).status_code == 303
    page = browser.get(f"/consults/{consult_scene['consult']}")
    assert page.status_code == 200, page.text
    link = f"/viewer/studies/{consult_scene['study_uid']}"
    assert link in page.text
    viewer = browser.get(link, params={"back": f"/consults/{consult_scene['consult']}"})
    assert viewer.status_code == 200, viewer.text[:500]
    assert f'href="/consults/{consult_scene["consult"]}"' in viewer.text
    assert browser.get(f"/viewer/studies/{consult_scene['other_study_uid']}").status_code == 404
    # The back link is a local page, never another site or a script.
    for back in ("https://evil.example/", "//evil.example/", "javascript:alert(1)"):
        answer = browser.get(link, params={"back": back})
        assert answer.status_code == 200
        assert "evil.example" not in answer.text and "javascript:" not in answer.text


def test_the_consultants_fhir_reads_stay_inside_the_shared_items(
    hub: HubUnderTest, doctor: Client, consultant: Client, consult_scene: dict[str, Any]
) -> None:
    """Through history, vread, _include/_revinclude and chained searches as well."""
    opened = doctor.post(
        f"{hub.base_url}/consultations",
        json={
            "patient": f"Patient/{consult_scene['a']}",
            "consultant": consultant.client_id,
            "question": "请会诊",
            "share": {"items": [f"Observation/{consult_scene['shared']}"]},
            "expires": _in(1),
            "consent": {"method": "written"},
        },
    )
    assert opened.status_code == 201, opened.text
    other = consult_scene["other"]
    for path in (
        f"/Observation/{other}",
        f"/Observation/{other}/_history",
        f"/Observation/{other}/_history/1",
        f"/ImagingStudy/{consult_scene['other_study']}",
    ):
        answer = consultant.get(path)
        assert answer.status_code == 404 or other not in answer.text, (path, answer.text[:300])
    searches: list[tuple[str, dict[str, str]]] = [
        ("/Observation/_history", {"_count": "200"}),
        ("/_history", {"_count": "200"}),
        ("/Patient", {"_id": consult_scene["a"], "_revinclude": "Observation:subject"}),
        ("/Patient", {"_id": consult_scene["b"], "_revinclude": "Observation:patient"}),
        ("/Observation", {"patient": consult_scene["b"]}),
        ("/Observation", {"subject:Patient._id": consult_scene["a"]}),
        ("/Observation", {"_id": other}),
        ("/ImagingStudy", {"patient": consult_scene["a"]}),
        (f"/Patient/{consult_scene['b']}/$everything", {}),
        (f"/Patient/{consult_scene['a']}/$everything", {"_type": "Observation,ImagingStudy"}),
    ]
    for path, params in searches:
        answer = consultant.get(path, params=params)
        assert answer.status_code in (200, 403, 404), (path, answer.text[:300])
        found = {
            e["resource"]["id"]
            for e in (answer.json().get("entry") or [] if answer.status_code == 200 else [])
        }
        assert other not in found and consult_scene["other_study"] not in found, (path, params)
    seen = consultant.get(f"/Patient/{consult_scene['a']}/$everything").text
    assert consult_scene["shared"] in seen
    # DICOMweb: the unshared study is no match and not found.
    dicomweb = consultant.get(
        f"{hub.base_url}/dicomweb/studies",
        params={"StudyInstanceUID": consult_scene["other_study_uid"]},
        headers={"Accept": "application/dicom+json"},
    )
    assert dicomweb.status_code in (200, 204) and consult_scene["other_study_uid"] not in (
        dicomweb.text
    )


# -- audit -----------------------------------------------------------------------------------


def test_the_reuse_check_is_audited_with_its_purpose(
    hub: HubUnderTest, hospital_a: Client, doctor: Client, admin: Client
) -> None:
    """The check returns the person's results: its audit record says under which purpose."""
    pid = create(hospital_a, source(person(fresh_people()), hospital_a.organization))
    result_for(hospital_a, pid)
    checked = doctor.get(f"/Patient/{pid}/$reusable-results", params={"code": "cbc"})
    assert checked.status_code == 200, checked.text
    answer = admin.get(f"{hub.base_url}/admin/access/patients/{pid}")
    assert answer.status_code == 200, answer.text
    log = answer.json()["accesses"]
    checks = [a for a in log if a["interaction"] == "operation:reusable-results"]
    assert checks, log
    assert all("purpose: ordering" in (a["detail"] or "") for a in checks), checks
