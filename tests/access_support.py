"""Purposes of use for the tests (not a test module): a doctor reads a patient's record only
while it has one (``hub.access``), so a test gives the ``doctor`` client the purpose its story
would have in reality.

* ``treat`` — the patient is registered at the doctor's organization (org_b): ``TREAT``;
* ``break_glass`` — an emergency, with a reason: ``ETREAT``;
* ``order_for`` / ``order_by_identifier`` — the doctor checks what can be reused before
  ordering for the patient (``Patient/$reusable-results``): the ordering purpose a CDS call
  also gives.
"""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Client, HubUnderTest

GRANTS = "/access/grants"
EMERGENCY = "急诊抢救，患者昏迷无法提供病史 (unconscious patient in the emergency room)"


def grant_request(
    hub: HubUnderTest, doctor: Client, patient_id: str, purpose: str, reason: str | None = None
) -> httpx.Response:
    """``POST /access/grants`` as ``doctor``; the raw answer (tests of refusals read it)."""
    body: dict[str, Any] = {"patient": f"Patient/{patient_id}", "purposeOfUse": purpose}
    if reason is not None:
        body["reason"] = reason
    return doctor.post(f"{hub.base_url}{GRANTS}", json=body)


def treat(hub: HubUnderTest, doctor: Client, patient_id: str) -> dict[str, Any]:
    """The patient is in the doctor's care (registered at its organization); the grant."""
    response = grant_request(hub, doctor, patient_id, "TREAT")
    assert response.status_code == 201, response.text
    return dict(response.json())


def break_glass(
    hub: HubUnderTest, doctor: Client, patient_id: str, reason: str = EMERGENCY
) -> dict[str, Any]:
    """Emergency access to any patient, with a reason; the grant."""
    response = grant_request(hub, doctor, patient_id, "ETREAT", reason)
    assert response.status_code == 201, response.text
    return dict(response.json())


def order_for(doctor: Client, patient_id: str, code: str = "cbc") -> dict[str, Any]:
    """The doctor checks reusable results before ordering ``code`` for the patient: an
    ordering purpose for the person's whole record; the check's Parameters."""
    response = doctor.get(f"/Patient/{patient_id}/$reusable-results", params={"code": code})
    assert response.status_code == 200, response.text
    return dict(response.json())


def order_by_identifier(doctor: Client, identifier: str, code: str = "cbc") -> dict[str, Any]:
    """As ``order_for``, the patient named by an identifier (``system|value``), as an EHR
    that knows the patient by their MRN or ID card number would."""
    response = doctor.get(
        "/Patient/$reusable-results", params={"identifier": identifier, "code": code}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def end_grant(hub: HubUnderTest, doctor: Client, grant_id: str) -> httpx.Response:
    return doctor.delete(f"{hub.base_url}{GRANTS}/{grant_id}")


def live_grants(hub: HubUnderTest, doctor: Client) -> list[dict[str, Any]]:
    response = doctor.get(f"{hub.base_url}{GRANTS}")
    assert response.status_code == 200, response.text
    return list(response.json()["grants"])
