"""Authentication and authorization, through real HTTP and the real CLI.

Pins: the OAuth 2.0 client-credentials token endpoint (form body and HTTP Basic, wrong secret,
unsupported grant, scope narrowing); 401 OperationOutcomes with ``WWW-Authenticate`` for a
missing, malformed, forged, tampered, expired or revoked token; secrets shown once and stored
only as scrypt hashes; and the access rules: a hospital writes only as itself and reads only
what it wrote, a doctor reads every hospital's results with a purpose of use (``hub.access``)
but writes nothing, a consultant reads nothing outside a consultation, only admins read
AuditEvent, and no hospital creates an Organization.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from hub.storage.database import libpq_url
from tests.access_support import order_for, treat
from tests.conftest import Client, HubUnderTest, observation, patient, unique


def _bearer(hub: HubUnderTest, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=hub.fhir,
        timeout=30,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
    )


def _assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Traceback" not in response.text


def _token_of(client: Client) -> str:
    return str(client.http.headers["Authorization"]).removeprefix("Bearer ")


def _signing_key(hub: HubUnderTest) -> tuple[str, ec.EllipticCurvePrivateKey]:
    """The hub's current signing key, read from its key directory (kid = file stem)."""
    keys = sorted((Path(hub.env["YIJIAN_DATA_DIR"]) / "keys").glob("*.pem"))
    assert keys, "the hub has no signing key on disk"
    private = load_pem_private_key(keys[-1].read_bytes(), password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return keys[-1].stem, private


def _claims(client: Client, kind: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": "yijian-hub",
        "aud": "yijian-hub",
        "sub": client.client_id,
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "scope": "system/*.cruds",
        "client_kind": kind,
        "organization": client.organization,
        "name": "forged",
        **overrides,
    }


def _db(hub: HubUnderTest, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(libpq_url(hub.database_url))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


# -- the token endpoint ----------------------------------------------------------------------------


def test_token_with_form_body(hub: HubUnderTest, hospital_a: Client) -> None:
    response = hub.token(hospital_a.client_id, hospital_a.secret)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"].lower() == "bearer"
    assert body["expires_in"] > 0
    assert "system/*.cruds" in body["scope"].split()
    assert response.headers["Cache-Control"] == "no-store"
    with _bearer(hub, body["access_token"]) as http:
        assert http.get("/Patient", params={"_count": 1}).status_code == 200


def test_token_with_http_basic(hub: HubUnderTest, doctor: Client) -> None:
    response = httpx.post(
        f"{hub.base_url}/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(doctor.client_id, doctor.secret),
    )
    assert response.status_code == 200, response.text
    with _bearer(hub, response.json()["access_token"]) as http:
        assert http.get("/Observation", params={"_count": 1}).status_code == 200


def test_wrong_secret_is_invalid_client(hub: HubUnderTest, hospital_a: Client) -> None:
    for response in (
        hub.token(hospital_a.client_id, hospital_a.secret + "x"),
        hub.token("hospital-no-such-client", "whatever"),
        httpx.post(
            f"{hub.base_url}/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(hospital_a.client_id, "wrong"),
        ),
        httpx.post(
            f"{hub.base_url}/auth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": "Basic %%%not-base64"},
        ),
    ):
        assert response.status_code == 401, response.text
        assert response.json()["error"] == "invalid_client"
        assert "access_token" not in response.text


def test_unsupported_grant_type(hub: HubUnderTest, hospital_a: Client) -> None:
    for grant in ("password", "implicit", ""):  # authorization_code: SMART launch
        response = hub.token(hospital_a.client_id, hospital_a.secret, grant_type=grant)
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "unsupported_grant_type"


def test_requested_scope_narrows_the_token(hub: HubUnderTest, hospital_a: Client) -> None:
    response = hub.token(hospital_a.client_id, hospital_a.secret, scope="system/Patient.rs")
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Patient.rs"
    with _bearer(hub, response.json()["access_token"]) as http:
        assert http.get("/Patient", params={"_count": 1}).status_code == 200
        created = http.post("/Patient", json=patient(hospital_a.organization))
        assert created.status_code == 403, created.text
        assert created.json()["resourceType"] == "OperationOutcome"
        assert "insufficient_scope" in created.headers["WWW-Authenticate"]
        other_type = http.get("/Observation", params={"_count": 1})
        assert other_type.status_code == 403


def test_scope_beyond_the_grant_is_refused(hub: HubUnderTest, doctor: Client) -> None:
    response = hub.token(doctor.client_id, doctor.secret, scope="system/Observation.c")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_scope"


# -- bearer tokens ---------------------------------------------------------------------------------


def test_missing_token(hub: HubUnderTest) -> None:
    _assert_401(httpx.get(f"{hub.fhir}/Patient"))
    _assert_401(httpx.post(f"{hub.fhir}/Patient", json={"resourceType": "Patient"}))
    _assert_401(httpx.get(f"{hub.fhir}/Patient", headers={"Authorization": "Basic abc"}))
    _assert_401(httpx.get(f"{hub.fhir}/Patient", headers={"Authorization": "Bearer"}))


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "a.b.c",
        "eyJhbGciOiJFUzI1NiJ9.e30.AAAA",
        "Bearer",
        "x" * 5000,
        "中文令牌",
    ],
)
def test_malformed_token(hub: HubUnderTest, token: str) -> None:
    response = httpx.get(
        f"{hub.fhir}/Patient",
        headers={"Authorization": f"Bearer {token}".encode()},
    )
    _assert_401(response)


def test_token_signed_by_another_key(hub: HubUnderTest, hospital_a: Client) -> None:
    kid, _ = _signing_key(hub)
    stranger = ec.generate_private_key(ec.SECP256R1())
    for headers in ({"kid": kid}, {"kid": "some-other-key"}, {}):
        forged = jwt.encode(
            _claims(hospital_a, "admin"), stranger, algorithm="ES256", headers=headers
        )
        _assert_401(httpx.get(f"{hub.fhir}/AuditEvent", headers=_auth(forged)))


def test_token_with_tampered_payload(hub: HubUnderTest, hospital_a: Client) -> None:
    header, payload, signature = _token_of(hospital_a).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["client_kind"] == "hospital"
    claims["client_kind"] = "admin"
    raised = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    _assert_401(
        httpx.get(f"{hub.fhir}/AuditEvent", headers=_auth(f"{header}.{raised}.{signature}"))
    )


def test_unsigned_token(hub: HubUnderTest, hospital_a: Client) -> None:
    unsigned = jwt.encode(_claims(hospital_a, "admin"), key=None, algorithm="none")
    _assert_401(httpx.get(f"{hub.fhir}/Patient", headers=_auth(unsigned)))


def test_expired_token_signed_with_the_real_key(hub: HubUnderTest, hospital_a: Client) -> None:
    kid, key = _signing_key(hub)
    now = int(time.time())
    # Control: the same construction, unexpired, is accepted — so the 401 below is the expiry.
    fresh = jwt.encode(
        _claims(hospital_a, "hospital"), key, algorithm="ES256", headers={"kid": kid}
    )
    assert httpx.get(f"{hub.fhir}/Patient", headers=_auth(fresh)).status_code == 200
    expired = jwt.encode(
        _claims(hospital_a, "hospital", iat=now - 7200, exp=now - 3600),
        key,
        algorithm="ES256",
        headers={"kid": kid},
    )
    response = httpx.get(f"{hub.fhir}/Patient", headers=_auth(expired))
    _assert_401(response)
    assert "expired" in response.text


def test_token_for_another_audience_or_issuer(hub: HubUnderTest, hospital_a: Client) -> None:
    kid, key = _signing_key(hub)
    for override in ({"aud": "someone-else"}, {"iss": "someone-else"}):
        token = jwt.encode(
            _claims(hospital_a, "hospital", **override),
            key,
            algorithm="ES256",
            headers={"kid": kid},
        )
        _assert_401(httpx.get(f"{hub.fhir}/Patient", headers=_auth(token)))


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- the client registry ---------------------------------------------------------------------------


def test_revoked_client_loses_access_within_seconds(hub: HubUnderTest) -> None:
    record = json.loads(
        hub.cli(
            "clients",
            "add",
            "--kind",
            "hospital",
            "--organization",
            hub.org_a,
            "--name",
            f"revoke-me-{unique()}",
            "--json",
        ).stdout
    )
    token = hub.token(record["client_id"], record["client_secret"]).json()["access_token"]
    with _bearer(hub, token) as http:
        assert http.get("/Patient", params={"_count": 1}).status_code == 200
        assert "revoked" in hub.cli("clients", "revoke", record["client_id"]).stdout
        deadline = time.monotonic() + 7
        while True:
            response = http.get("/Patient", params={"_count": 1})
            if response.status_code == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        _assert_401(response)
    refused = hub.token(record["client_id"], record["client_secret"])
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    again = hub.cli("clients", "revoke", record["client_id"], check=False)
    assert again.returncode != 0
    listed = {c["client_id"]: c for c in json.loads(hub.cli("clients", "list", "--json").stdout)}
    assert listed[record["client_id"]]["revoked"]


def test_client_list_never_shows_secrets(hub: HubUnderTest) -> None:
    as_json = hub.cli("clients", "list", "--json").stdout
    as_text = hub.cli("clients", "list").stdout
    rows = json.loads(as_json)
    assert {c.client_id for c in hub.clients.values()} <= {r["client_id"] for r in rows}
    for row in rows:
        assert not any("secret" in key or "hash" in key for key in row)
    for output in (as_json, as_text):
        assert "scrypt$" not in output
        for client in hub.clients.values():
            assert client.client_id in output
            assert client.secret not in output


def test_secrets_are_stored_only_as_scrypt_hashes(hub: HubUnderTest) -> None:
    rows = {
        r["client_id"]: r["secret_hash"]
        for r in _db(hub, "SELECT client_id, secret_hash FROM api_client")
    }
    for client in hub.clients.values():
        stored = rows[client.client_id]
        assert stored.startswith("scrypt$")
        assert client.secret not in stored
        assert len(stored.split("$")) == 6


def test_cli_rejects_unknown_organization_and_bad_scope(hub: HubUnderTest) -> None:
    missing = hub.cli(
        "clients",
        "add",
        "--kind",
        "doctor",
        "--organization",
        "no-such-org",
        "--name",
        "x",
        check=False,
    )
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr
    bad = hub.cli(
        "clients",
        "add",
        "--kind",
        "doctor",
        "--organization",
        hub.org_a,
        "--name",
        "x",
        "--scope",
        "everything please",
        check=False,
    )
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr


# -- authorization ---------------------------------------------------------------------------------


def _patient_and_result(client: Client, accession: str) -> tuple[str, str]:
    org = client.organization
    pid = client.post("/Patient", json=patient(org))
    assert pid.status_code == 201, pid.text
    body = observation(
        org,
        pid.json()["id"],
        identifier=[{"system": "https://yijian.example/accession", "value": accession}],
    )
    oid = client.post("/Observation", json=body)
    assert oid.status_code == 201, oid.text
    return pid.json()["id"], oid.json()["id"]


def test_hospital_writes_only_as_itself(hospital_a: Client, hospital_b: Client) -> None:
    pid, _ = _patient_and_result(hospital_a, unique())
    as_b = hospital_a.post("/Observation", json=observation(hospital_b.organization, pid))
    assert as_b.status_code == 403, as_b.text
    assert as_b.json()["resourceType"] == "OperationOutcome"
    anonymous = observation(hospital_a.organization, pid)
    del anonymous["performer"]
    assert hospital_a.post("/Observation", json=anonymous).status_code == 403
    foreign_patient = patient(hospital_b.organization)
    assert hospital_a.post("/Patient", json=foreign_patient).status_code == 403


def test_hospital_cannot_touch_another_hospitals_records(
    hospital_a: Client, hospital_b: Client
) -> None:
    accession = unique()
    pid_b, oid_b = _patient_and_result(hospital_b, accession)
    _, oid_a = _patient_and_result(hospital_a, accession)

    assert hospital_a.get(f"/Observation/{oid_b}").status_code == 404
    assert hospital_a.get(f"/Patient/{pid_b}").status_code == 404
    assert hospital_a.get(f"/Observation/{oid_b}/_history/1").status_code == 404
    assert hospital_a.get(f"/Observation/{oid_a}").status_code == 200  # reads what it wrote

    theirs = hospital_b.get(f"/Observation/{oid_b}").json()
    overwrite = {
        **theirs,
        "status": "cancelled",
        "performer": [{"reference": f"Organization/{hospital_a.organization}"}],
    }
    assert hospital_a.put(f"/Observation/{oid_b}", json=overwrite).status_code in (403, 404)
    assert hospital_a.delete(f"/Observation/{oid_b}").status_code in (403, 404)
    after = hospital_b.get(f"/Observation/{oid_b}")
    assert after.status_code == 200
    assert after.json()["meta"]["versionId"] == "1"
    assert after.json()["status"] == "final"

    identifier = f"https://yijian.example/accession|{accession}"
    seen_a = hospital_a.get("/Observation", params={"identifier": identifier}).json()
    assert [e["resource"]["id"] for e in seen_a.get("entry", [])] == [oid_a]
    seen_b = hospital_b.get("/Observation", params={"identifier": identifier}).json()
    assert [e["resource"]["id"] for e in seen_b.get("entry", [])] == [oid_b]
    included = hospital_a.get(
        "/Observation", params={"identifier": identifier, "_include": "Observation:subject"}
    ).json()
    assert pid_b not in {e["resource"]["id"] for e in included.get("entry", [])}


def test_doctor_reads_every_hospital_with_a_purpose_but_writes_nothing(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client, doctor: Client
) -> None:
    accession = unique()
    pid_a, oid_a = _patient_and_result(hospital_a, accession)
    pid_b, oid_b = _patient_and_result(hospital_b, accession)
    params = {"identifier": f"https://yijian.example/accession|{accession}"}
    # Without a purpose of use the doctor sees neither hospital's result.
    assert doctor.get("/Observation", params=params).json().get("entry", []) == []
    assert doctor.get(f"/Observation/{oid_a}").status_code == 404
    assert doctor.get(f"/Patient/{pid_b}").status_code == 404
    # Ordering for A's patient, and B's patient in care at the doctor's own hospital.
    order_for(doctor, pid_a)
    treat(hub, doctor, pid_b)
    found = doctor.get("/Observation", params=params).json()
    assert {e["resource"]["id"] for e in found.get("entry", [])} == {oid_a, oid_b}
    assert doctor.get(f"/Observation/{oid_a}").status_code == 200
    assert doctor.get(f"/Observation/{oid_b}").status_code == 200
    assert doctor.get(f"/Patient/{pid_a}").status_code == 200

    for response in (
        doctor.post("/Patient", json=patient(doctor.organization)),
        doctor.post("/Observation", json=observation(doctor.organization, pid_a)),
        doctor.put(f"/Observation/{oid_a}", json=hospital_a.get(f"/Observation/{oid_a}").json()),
        doctor.delete(f"/Observation/{oid_a}"),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["resourceType"] == "OperationOutcome"
    assert hospital_a.get(f"/Observation/{oid_a}").json()["meta"]["versionId"] == "1"


def test_consultant_reads_nothing_outside_a_consultation(
    hospital_a: Client, consultant: Client
) -> None:
    pid, oid = _patient_and_result(hospital_a, unique())
    for response in (
        consultant.get(f"/Observation/{oid}"),
        consultant.get(f"/Patient/{pid}"),
        consultant.get(f"/Patient/{pid}/$everything"),
    ):
        assert response.status_code in (403, 404), response.text
        assert response.json()["resourceType"] == "OperationOutcome"
    for response in (
        consultant.get("/Observation", params={"subject": f"Patient/{pid}"}),
        consultant.get("/Patient", params={"_id": pid}),
    ):
        assert response.status_code == 200, response.text
        assert response.json().get("entry", []) == []
    # Writing stays refused.
    refused = consultant.post("/Observation", json=observation(consultant.organization, pid))
    assert refused.status_code == 403, refused.text


def test_only_admin_reads_audit_events(
    admin: Client, hospital_a: Client, doctor: Client, consultant: Client
) -> None:
    listed = admin.get("/AuditEvent")
    assert listed.status_code == 200, listed.text
    assert listed.json()["resourceType"] == "Bundle"
    for client in (hospital_a, doctor, consultant):
        assert client.get("/AuditEvent").status_code == 403
    assert admin.post("/AuditEvent", json={"resourceType": "AuditEvent"}).status_code in (
        403,
        405,
    )


def test_hospital_cannot_create_organization(hospital_a: Client, admin: Client) -> None:
    body = {
        "resourceType": "Organization",
        "name": "冒名医院",
        "identifier": [{"system": "https://yijian.example/hospital", "value": unique()}],
    }
    response = hospital_a.post("/Organization", json=body)
    assert response.status_code == 403, response.text
    assert hospital_a.get(f"/Organization/{hospital_a.organization}").status_code == 200
    assert admin.post("/Organization", json=body).status_code == 201
