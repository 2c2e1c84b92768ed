"""Client administration over HTTP (/admin/clients), for admin clients only."""

from __future__ import annotations

import httpx

from tests.conftest import Client, HubUnderTest


def _headers(client: Client) -> dict[str, str]:
    return {"Authorization": client.http.headers["Authorization"]}


def test_admin_registers_lists_and_revokes_a_client(hub: HubUnderTest, admin: Client) -> None:
    """A client made over HTTP works at once; its secret is shown once; revoking ends it."""
    created = httpx.post(
        f"{hub.base_url}/admin/clients",
        headers=_headers(admin),
        json={"kind": "doctor", "organization": hub.org_b, "name": "EHR of ward 3"},
    )
    assert created.status_code == 201, created.text
    record = created.json()
    assert record["scope"] == "system/*.rs"
    token = hub.token(record["client_id"], record["client_secret"])
    assert token.status_code == 200

    listed = httpx.get(f"{hub.base_url}/admin/clients", headers=_headers(admin)).json()
    mine = [c for c in listed if c["client_id"] == record["client_id"]]
    assert len(mine) == 1 and "client_secret" not in mine[0]

    doctor_token = token.json()["access_token"]
    assert (
        httpx.get(
            f"{hub.fhir}/Observation", headers={"Authorization": f"Bearer {doctor_token}"}
        ).status_code
        == 200
    )
    revoked = httpx.post(
        f"{hub.base_url}/admin/clients/{record['client_id']}/revoke", headers=_headers(admin)
    )
    assert revoked.status_code == 200
    assert (
        httpx.get(
            f"{hub.fhir}/Observation", headers={"Authorization": f"Bearer {doctor_token}"}
        ).status_code
        == 401
    )
    again = httpx.post(
        f"{hub.base_url}/admin/clients/{record['client_id']}/revoke", headers=_headers(admin)
    )
    assert again.status_code == 404


def test_client_administration_is_for_admins_and_validated(
    hub: HubUnderTest, admin: Client, hospital_a: Client
) -> None:
    url = f"{hub.base_url}/admin/clients"
    assert httpx.get(url, headers=_headers(hospital_a)).status_code == 403
    assert httpx.get(url).status_code == 401
    unknown_org = httpx.post(
        url,
        headers=_headers(admin),
        json={"kind": "hospital", "organization": "no-such-org", "name": "x"},
    )
    assert unknown_org.status_code == 422
    bad_kind = httpx.post(
        url, headers=_headers(admin), json={"kind": "root", "organization": hub.org_a, "name": "x"}
    )
    assert bad_kind.status_code == 400
    assert bad_kind.json()["resourceType"] == "OperationOutcome"
    bad_scope = httpx.post(
        url,
        headers=_headers(admin),
        json={"kind": "doctor", "organization": hub.org_a, "name": "x", "scope": "everything"},
    )
    assert bad_scope.status_code == 422
