"""The consultation pages and the admin's access pages, through HTTP against the running hub.

Web users (a doctor at hospital B, a consultant at hospital A, an admin) are registered with
``yijian users add``; a person registered at both hospitals has results at A. The doctor opens
a consult from the patient (the care relationship at B) sharing one result; the consultant sees
exactly it, replies; the requester sees the reply and revokes; expiry (set in the database)
ends the consultant's view; the admin's access log and break-glass report list what happened.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import subprocess
from typing import Any

import asyncpg
import pytest

from hub.storage.database import libpq_url
from tests.conftest import YIJIAN, Client, HubUnderTest, unique
from tests.identity_support import create, fresh_people, person, result_for, source
from tests.test_web_auth import PASSWORD, Browser

INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def add_user(hub: HubUnderTest, role: str, organization: str, name: str) -> str:
    """A web user registered through ``yijian users add``; its username."""
    username = f"{role}-{unique()}"
    done = subprocess.run(
        [YIJIAN, "users", "add", "--username", username, "--role", role,
         "--organization", organization, "--name", name, "--password-stdin", "--json"],
        env=hub.env, input=PASSWORD + "\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["username"] == username
    return username


def signed_in(hub: HubUnderTest, username: str) -> Browser:
    browser = Browser(hub.base_url)
    response = browser.login(username)
    assert response.status_code == 303, response.text
    return browser


def db(hub: HubUnderTest, statement: str, *args: Any) -> Any:
    async def run() -> Any:
        connection = await asyncpg.connect(libpq_url(hub.database_url))
        try:
            return await connection.fetch(statement, *args)
        finally:
            await connection.close()

    return asyncio.run(run())


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html[:500]
    return match.group(1)


@pytest.fixture(scope="module")
def people(hub: HubUnderTest) -> dict[str, str]:
    return {
        "doctor": add_user(hub, "doctor", hub.org_b, "李医生"),
        "consultant": add_user(hub, "consultant", hub.org_a, "张专家"),
        "admin": add_user(hub, "admin", hub.org_a, "王管理员"),
        "other_doctor": add_user(hub, "doctor", hub.org_a, "赵医生"),
    }


@pytest.fixture
def record(hospital_a: Client, hospital_b: Client) -> dict[str, str]:
    return person_at_a_and_b(hospital_a, hospital_b)


def person_at_a_and_b(hospital_a: Client, hospital_b: Client) -> dict[str, str]:
    """A person registered at A (a low haemoglobin and another result) and at B."""
    someone = person(fresh_people())
    pid_a = create(hospital_a, source(someone, hospital_a.organization))
    pid_b = create(hospital_b, source(someone, hospital_b.organization))
    shared = result_for(
        hospital_a,
        pid_a,
        valueQuantity={"value": 9.8, "unit": "g/dL", "system": "http://unitsofmeasure.org"},
        referenceRange=[{"low": {"value": 11.5}, "high": {"value": 15.0}}],
        interpretation=[{"coding": [{"system": INTERPRETATION, "code": "L"}]}],
    )
    other = result_for(hospital_a, pid_a, code="2345-7", value=77.7)
    return {"a": pid_a, "b": pid_b, "shared": shared, "other": other, "name": someone.name}


def open_consult(doctor: Browser, people: dict[str, str], patient: str, **fields: Any) -> Any:
    form_page = doctor.get(f"/consults/new?patient={patient}")
    assert form_page.status_code == 200, form_page.text[:2000]
    data: dict[str, Any] = {
        "csrf_token": csrf_of(form_page.text),
        "patient": patient,
        "consultant": f"user:{people['consultant']}",
        "question": "请协助判读贫血原因",
        "share": "items",
        "consent_method": "written",
        "consent_note": "患者本人签字",
        "consent_confirmed": "yes",
        "expiry_hours": "72",
        **fields,
    }
    return doctor.post("/consults/new", data=data)


def consult_id_of(response: Any) -> str:
    assert response.status_code == 303, response.text[:3000]
    location = response.headers["location"]
    assert re.fullmatch(r"/consults/[0-9a-f-]{36}", location), location
    return location.rsplit("/", 1)[1]


def test_consult_share_reply_revoke(
    hub: HubUnderTest, people: dict[str, str], record: dict[str, str]
) -> None:
    doctor = signed_in(hub, people["doctor"])
    form_page = doctor.get(f"/consults/new?patient={record['b']}")
    assert form_page.status_code == 200, form_page.text[:2000]
    # the form offers the results of every hospital the doctor may read for this person
    assert f'value="Observation/{record["shared"]}"' in form_page.text
    assert f'value="Observation/{record["other"]}"' in form_page.text
    assert f'value="user:{people["consultant"]}"' in form_page.text

    unconfirmed = open_consult(
        doctor,
        people,
        record["b"],
        items=f"Observation/{record['shared']}",
        consent_confirmed="",
    )
    assert unconfirmed.status_code == 400
    assert "请确认患者已知情同意" in unconfirmed.text

    opened = open_consult(doctor, people, record["b"], items=f"Observation/{record['shared']}")
    consult_id = consult_id_of(opened)
    mine = doctor.get(f"/consults/{consult_id}")
    assert mine.status_code == 200
    assert f"Observation/{record['shared']}" in mine.text  # the shared scope
    assert "Consent/" in mine.text
    assert "撤销授权" in mine.text

    consultant = signed_in(hub, people["consultant"])
    listed = consultant.get("/consults")
    assert listed.status_code == 200
    assert f'data-consult="{consult_id}"' in listed.text
    assert "请协助判读贫血原因" in listed.text
    assert record["name"] not in listed.text  # the list masks the name
    assert record["name"][:1] + "*" in listed.text

    page = consultant.get(f"/consults/{consult_id}")
    assert page.status_code == 200, page.text[:2000]
    keys = set(re.findall(r'data-key="(Observation/[^"]+)"', page.text))
    assert keys == {f"Observation/{record['shared']}"}
    assert "9.8" in page.text and "g/dL" in page.text and "11.5–15.0" in page.text
    assert '<span class="flag">L</span>' in page.text
    assert "撤销授权" not in page.text  # only the requester revokes

    token = csrf_of(page.text)
    replied = consultant.post(
        f"/consults/{consult_id}/reply",
        data={"csrf_token": token, "text": "考虑缺铁性贫血，建议查铁蛋白。"},
    )
    assert replied.status_code == 303, replied.text[:2000]
    # the doctor's care grant has ended meanwhile: the patient is still registered at the
    # doctor's hospital, so opening the consult re-establishes care and shows the note
    db(
        hub,
        "UPDATE access_grant SET revoked_at = now() WHERE client_id = $1 AND revoked_at IS NULL",
        f"user:{people['doctor']}",
    )
    seen = doctor.get(f"/consults/{consult_id}")
    assert "考虑缺铁性贫血，建议查铁蛋白。" in seen.text
    assert 'data-status="replied"' in seen.text

    # a doctor who is neither party does not see the consult
    stranger = signed_in(hub, people["other_doctor"])
    assert stranger.get(f"/consults/{consult_id}").status_code == 404
    # the consultant cannot revoke; the requester can
    refused = consultant.post(f"/consults/{consult_id}/revoke", data={"csrf_token": token})
    assert refused.status_code == 403
    revoked = doctor.post(f"/consults/{consult_id}/revoke", data={"csrf_token": csrf_of(seen.text)})
    assert revoked.status_code == 303, revoked.text[:2000]
    after = consultant.get(f"/consults/{consult_id}")
    assert after.status_code == 200
    assert "授权已结束" in after.text
    assert "data-key=" not in after.text and "9.8" not in after.text
    assert 'data-status="revoked"' in after.text
    late = consultant.post(
        f"/consults/{consult_id}/reply", data={"csrf_token": token, "text": "late"}
    )
    assert late.status_code == 409


def test_period_share_and_expiry(
    hub: HubUnderTest, people: dict[str, str], record: dict[str, str]
) -> None:
    doctor = signed_in(hub, people["doctor"])
    opened = open_consult(
        doctor, people, record["b"], share="period", period_start="2020-01-01",
        period_end="2030-12-31",
    )  # fmt: skip
    consult_id = consult_id_of(opened)
    consultant = signed_in(hub, people["consultant"])
    page = consultant.get(f"/consults/{consult_id}")
    keys = set(re.findall(r'data-key="(Observation/[^"]+)"', page.text))
    assert {f"Observation/{record['shared']}", f"Observation/{record['other']}"} <= keys
    assert "2020-01-01 – 2030-12-31" in page.text

    db(
        hub,
        "UPDATE consult SET created_at = now() - interval '2 days', "
        "expires_at = now() - interval '1 second' WHERE id = $1::uuid",
        consult_id,
    )
    ended = consultant.get(f"/consults/{consult_id}")
    assert ended.status_code == 200
    assert "授权已结束" in ended.text
    assert "data-key=" not in ended.text
    assert 'data-status="expired"' in ended.text
    assert 'data-status="expired"' in consultant.get("/consults").text
    consultant.get(f"/lang/en?next=/consults/{consult_id}")  # the English interface
    english = consultant.get(f"/consults/{consult_id}")
    assert "Access has ended" in english.text and "授权已结束" not in english.text


def test_doctor_cannot_open_a_consult_for_a_patient_not_in_care(
    hub: HubUnderTest, people: dict[str, str], hospital_a: Client
) -> None:
    pid = create(hospital_a, source(person(fresh_people()), hospital_a.organization))
    doctor = signed_in(hub, people["doctor"])  # works at B; the patient is registered at A
    assert doctor.get(f"/consults/new?patient={pid}").status_code == 403
    consultant = signed_in(hub, people["consultant"])
    assert consultant.get(f"/consults/new?patient={pid}").status_code == 403


def test_admin_access_log_lists_reads_with_their_purpose(
    hub: HubUnderTest, people: dict[str, str], record: dict[str, str]
) -> None:
    doctor = signed_in(hub, people["doctor"])
    consult_id = consult_id_of(
        open_consult(doctor, people, record["b"], items=f"Observation/{record['shared']}")
    )
    consultant = signed_in(hub, people["consultant"])
    assert consultant.get(f"/consults/{consult_id}").status_code == 200

    admin = signed_in(hub, people["admin"])
    page = admin.get(f"/ops/access?patient={record['a']}")
    assert page.status_code == 200, page.text[:2000]
    rows = re.findall(r'data-client="([^"]+)" data-interaction="([^"]+)"', page.text)
    assert (f"user:{people['consultant']}", "operation:everything") in rows
    assert (f"user:{people['doctor']}", "consult:open") in rows
    assert (f"user:{people['doctor']}", "consult:choose") in rows
    assert "purpose: " not in page.text  # shown as the purpose itself
    assert "consult" in page.text and "care" in page.text
    # the grants on the person: the doctor's care grant, opened from the consult form
    assert "web:consult" in page.text

    exported = admin.get(f"/ops/access?patient={record['a']}&format=csv")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
    consultant_reads = [
        r
        for r in lines
        if r["client_id"] == f"user:{people['consultant']}"
        and r["interaction"] == "operation:everything"
    ]
    assert consultant_reads and all(r["purpose"] == "consult" for r in consultant_reads)
    assert consultant_reads[0]["name"] == "张专家"
    assert f"Observation/{record['shared']}" in consultant_reads[0]["entities"]
    assert f"Observation/{record['other']}" not in consultant_reads[0]["entities"]

    # any record of the person finds the same log; an unknown patient is a 404 page
    by_other_record = admin.get(f"/ops/access?patient=Patient/{record['b']}")
    assert f"user:{people['consultant']}" in by_other_record.text
    assert admin.get("/ops/access?patient=no-such-patient").status_code == 404
    # admins only
    assert consultant.get(f"/ops/access?patient={record['a']}").status_code == 403
    assert doctor.get("/ops/break-glass").status_code == 403


def test_access_log_finds_the_person_by_resident_id(
    hub: HubUnderTest, people: dict[str, str], hospital_a: Client
) -> None:
    someone = person(fresh_people())
    pid = create(hospital_a, source(someone, hospital_a.organization))
    admin = signed_in(hub, people["admin"])
    page = admin.get("/ops/access", params={"patient": someone.resident_id})
    assert page.status_code == 200, page.text[:2000]
    assert f"Patient/{pid}" in page.text


def test_break_glass_report(
    hub: HubUnderTest, people: dict[str, str], doctor: Client, hospital_a: Client
) -> None:
    pid = create(hospital_a, source(person(fresh_people()), hospital_a.organization))
    reason = f"急诊昏迷患者，需查看既往检查 {unique()}"
    grant = doctor.post(
        f"{hub.base_url}/access/grants",
        json={"patient": f"Patient/{pid}", "purposeOfUse": "ETREAT", "reason": reason},
    )
    assert grant.status_code == 201, grant.text
    assert doctor.get(f"/Patient/{pid}").status_code == 200

    admin = signed_in(hub, people["admin"])
    page = admin.get("/ops/break-glass")
    assert page.status_code == 200
    assert reason in page.text
    assert f'href="/ops/access?patient={pid}"' in page.text
    assert f'data-grant="{grant.json()["id"]}"' in page.text

    exported = admin.get("/ops/break-glass?format=csv")
    lines = list(csv.DictReader(io.StringIO(exported.text.lstrip("\ufeff"))))
    use = next(r for r in lines if r["reason"] == reason)
    assert use["patient"] == f"Patient/{pid}"
    assert use["client_id"] == doctor.client_id

    log = admin.get(f"/ops/access?patient={pid}")
    assert re.search(r'<tr class="break-glass[^"]*"[^>]*data-client="' + doctor.client_id, log.text)
