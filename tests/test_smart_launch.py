"""SMART App Launch (EHR launch) end to end: an EHR's launch context, the hub's authorization
endpoint with the user's login, PKCE, the code exchange, and what the token may read."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from tests.conftest import Client, HubUnderTest
from tests.identity_support import create, fresh_people, person, result_for, source
from tests.test_web_auth import PASSWORD, Browser, add_user, run_cli

REDIRECT = "http://127.0.0.1:9/smart-callback"


def _challenge(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


@pytest.fixture(scope="module")
def app_id(hub: HubUnderTest) -> str:
    out = run_cli(
        hub,
        "smart-apps",
        "add",
        "--name",
        "外部应用 test app",
        "--redirect-uri",
        REDIRECT,
        "--json",
    )
    return str(json.loads(out)["client_id"])


@pytest.fixture
def patient(hospital_a: Client) -> dict[str, str]:
    pid = create(hospital_a, source(person(fresh_people()), hospital_a.organization))
    return {"id": pid, "result": result_for(hospital_a, pid)}


def _launch(hub: HubUnderTest, ehr: Client, patient_id: str) -> dict[str, Any]:
    response = ehr.post(f"{hub.base_url}/auth/launch", json={"patient": f"Patient/{patient_id}"})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _authorize(
    hub: HubUnderTest, browser: Browser, app_id: str, launch: str, verifier: str, **extra: str
) -> httpx.Response:
    params = {
        "response_type": "code",
        "client_id": app_id,
        "redirect_uri": REDIRECT,
        "scope": "launch openid fhirUser patient/*.rs",
        "state": "s-1",
        "aud": hub.fhir,
        "launch": launch,
        "code_challenge": _challenge(verifier),
        "code_challenge_method": "S256",
        **extra,
    }
    return browser.get("/auth/authorize?" + urlencode(params))


def _token(hub: HubUnderTest, app_id: str, code: str, verifier: str) -> httpx.Response:
    return httpx.post(
        f"{hub.base_url}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "client_id": app_id,
            "code_verifier": verifier,
        },
    )


def test_discovery_advertises_ehr_launch(hub: HubUnderTest) -> None:
    config = httpx.get(f"{hub.fhir}/.well-known/smart-configuration").json()
    assert config["authorization_endpoint"] == f"{hub.base_url}/auth/authorize"
    assert "authorization_code" in config["grant_types_supported"]
    assert {"launch-ehr", "context-ehr-patient"} <= set(config["capabilities"])
    assert config["code_challenge_methods_supported"] == ["S256"]


def test_ehr_launch_gives_a_token_for_the_patient_only(
    hub: HubUnderTest, doctor: Client, hospital_a: Client, app_id: str, patient: dict[str, str]
) -> None:
    user = add_user(hub, "doctor")
    browser = Browser(hub.base_url)
    launch = _launch(hub, doctor, patient["id"])
    verifier = secrets.token_urlsafe(48)
    # Not signed in: the authorization endpoint sends the browser to the login page first.
    first = _authorize(hub, browser, app_id, launch["launch"], verifier)
    assert first.status_code == 303 and first.headers["location"].startswith("/login?next=")
    browser.login(user["username"], PASSWORD)
    answer = _authorize(hub, browser, app_id, launch["launch"], verifier)
    assert answer.status_code == 303, answer.text
    location = urlsplit(answer.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT
    query = parse_qs(location.query)
    assert query["state"] == ["s-1"]
    code = query["code"][0]

    assert _token(hub, app_id, code, "wrong-verifier").status_code == 400
    # A failed attempt does not burn... the code is single use whatever happens.
    verifier2 = secrets.token_urlsafe(48)
    answer = _authorize(hub, browser, app_id, launch["launch"], verifier2)
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    issued = _token(hub, app_id, code, verifier2)
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert body["patient"] == patient["id"]
    assert body["token_type"] == "Bearer"
    claims = jwt.decode(body["id_token"], options={"verify_signature": False})
    assert claims["sub"] == f"user:{user['username']}" and claims["aud"] == app_id
    assert _token(hub, app_id, code, verifier2).json()["error"] == "invalid_grant"  # used

    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    read = httpx.get(f"{hub.fhir}/Observation/{patient['result']}", headers=bearer)
    assert read.status_code == 200, read.text
    other = create(hospital_a, source(person(fresh_people()), hospital_a.organization))
    other_result = result_for(hospital_a, other)
    assert httpx.get(f"{hub.fhir}/Observation/{other_result}", headers=bearer).status_code == 404


def test_launch_refused_for_a_doctor_of_another_organization(
    hub: HubUnderTest, doctor: Client, app_id: str, patient: dict[str, str]
) -> None:
    username = f"doctor-a-{secrets.token_hex(4)}"
    run_cli(
        hub, "users", "add", "--username", username, "--role", "doctor",
        "--organization", hub.org_a, "--name", "甲医院医生", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    browser = Browser(hub.base_url)
    browser.login(username, PASSWORD)
    launch = _launch(hub, doctor, patient["id"])  # the EHR of hospital B
    answer = _authorize(hub, browser, app_id, launch["launch"], secrets.token_urlsafe(48))
    assert answer.status_code == 303
    assert parse_qs(urlsplit(answer.headers["location"]).query)["error"] == ["access_denied"]


def test_bad_authorization_requests(
    hub: HubUnderTest, doctor: Client, app_id: str, patient: dict[str, str]
) -> None:
    user = add_user(hub, "doctor")
    browser = Browser(hub.base_url)
    browser.login(user["username"], PASSWORD)
    launch = _launch(hub, doctor, patient["id"])["launch"]
    verifier = secrets.token_urlsafe(48)
    # An unregistered redirect_uri is never redirected to.
    evil = _authorize(
        hub, browser, app_id, launch, verifier, redirect_uri="https://evil.example/cb"
    )
    assert evil.status_code == 400 and "location" not in evil.headers
    # Wrong audience, missing PKCE, a forged launch: errors back at the app.
    for extra in ({"aud": "https://other.example/fhir"}, {"code_challenge_method": "plain"}):
        answer = _authorize(hub, browser, app_id, launch, verifier, **extra)
        assert parse_qs(urlsplit(answer.headers["location"]).query)["error"] == ["invalid_request"]
    forged = _authorize(hub, browser, app_id, launch[:-4] + "AAAA", verifier)
    assert parse_qs(urlsplit(forged.headers["location"]).query)["error"] == ["invalid_request"]


def test_workstation_is_launched_on_the_patient(
    hub: HubUnderTest, doctor: Client, patient: dict[str, str]
) -> None:
    user = add_user(hub, "doctor")
    browser = Browser(hub.base_url)
    browser.login(user["username"], PASSWORD)
    url = _launch(hub, doctor, patient["id"])["url"]
    assert url.startswith(f"{hub.base_url}/launch?")
    step = browser.get(url)
    while step.status_code == 303 and not step.headers["location"].startswith("/patients/"):
        step = browser.get(step.headers["location"])
    assert step.status_code == 303, step.text[:500]
    assert step.headers["location"] == f"/patients/{patient['id']}"
    grants = [g for g in _grants(hub, user["username"]) if g["purpose"] == "launch"]
    assert [g["patient_id"] for g in grants] == [patient["id"]]
    # A wrong iss is refused before anything else happens.
    assert (
        browser.get(
            "/launch?" + urlencode({"iss": "https://x.example/fhir", "launch": "x"})
        ).status_code
        == 400
    )


def _grants(hub: HubUnderTest, username: str) -> list[dict[str, Any]]:
    from tests.test_web_auth import sql

    rows = sql(
        hub, "SELECT purpose, patient_id FROM access_grant WHERE client_id = $1", f"user:{username}"
    )
    return [dict(r) for r in rows]


def test_a_person_cannot_give_themselves_a_purpose(
    hub: HubUnderTest, doctor: Client, hospital_a: Client, app_id: str, patient: dict[str, str]
) -> None:
    """A user-level token (a person, not an EHR) neither creates launch contexts nor gets the
    ordering purpose from a reuse check: only the EHR's system client does."""
    user = add_user(hub, "doctor")
    browser = Browser(hub.base_url)
    browser.login(user["username"], PASSWORD)
    verifier = secrets.token_urlsafe(48)
    launch = _launch(hub, doctor, patient["id"])["launch"]
    answer = _authorize(hub, browser, app_id, launch, verifier, scope="launch user/*.rs")
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    body = _token(hub, app_id, code, verifier).json()
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    stranger = create(hospital_a, source(person(fresh_people()), hospital_a.organization))
    stranger_result = result_for(hospital_a, stranger)
    relaunch = httpx.post(
        f"{hub.base_url}/auth/launch", headers=bearer, json={"patient": f"Patient/{stranger}"}
    )
    assert relaunch.status_code == 403, relaunch.text
    checked = httpx.get(
        f"{hub.fhir}/Patient/{stranger}/$reusable-results",
        params={"code": "http://loinc.org|58410-2"},
        headers=bearer,
    )
    assert checked.status_code == 200, checked.text
    assert httpx.get(f"{hub.fhir}/Observation/{stranger_result}", headers=bearer).status_code == 404
    # The launched patient is readable (the launch purpose), with this user-level token too.
    assert (
        httpx.get(f"{hub.fhir}/Observation/{patient['result']}", headers=bearer).status_code == 200
    )
