"""The FHIR side of a consultation, built as plain resources (pure functions).

* the consultation itself: a ServiceRequest (SNOMED CT 11429006 "Consultation") from the
  requesting hospital to the consultant's, its question as ``reasonCode.text``, what was shared
  as ``supportingInfo`` and the grant's time as ``occurrencePeriod``;
* the patient's consent: a Consent (scope patient-privacy, LOINC 59284-0, policy OPTIN) whose
  provision permits the consultant's organization, for the purpose TREAT, until the grant
  ends, over the shared data (``data`` instances, or ``dataPeriod``);
* the reply: a DiagnosticReport (LOINC 11488-4 "Consult note") based on the ServiceRequest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

CONSULT_SYSTEM = "https://yijian-hub.org/fhir/NamingSystem/consult"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
CONSULTATION = {"system": SNOMED, "code": "11429006", "display": "Consultation"}
CONSULT_NOTE = {"system": LOINC, "code": "11488-4", "display": "Consult note"}
CONSENT_METHODS = {
    "written": "书面同意 written consent",
    "verbal": "口头同意 verbal consent (witnessed)",
    "electronic": "电子签名 electronic signature",
}


def _instant(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def service_request(
    consult_id: str,
    patient_id: str,
    requester: tuple[str, str],
    consultant: tuple[str, str],
    question: str,
    shared: list[str],
    period: tuple[datetime, datetime] | None,
    opened: datetime,
    expires: datetime,
) -> dict[str, Any]:
    """``requester``/``consultant``: (Organization id, display name of the person)."""
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": CONSULT_SYSTEM, "value": consult_id}],
        "status": "active",
        "intent": "order",
        "category": [{"coding": [CONSULTATION]}],
        "code": {"coding": [CONSULTATION], "text": "远程会诊 Telemedicine consultation"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "authoredOn": _instant(opened),
        "occurrencePeriod": {"start": _instant(opened), "end": _instant(expires)},
        "requester": {"reference": f"Organization/{requester[0]}", "display": requester[1]},
        "performer": [{"reference": f"Organization/{consultant[0]}", "display": consultant[1]}],
        "reasonCode": [{"text": question}],
    }
    if shared:
        resource["supportingInfo"] = [{"reference": key} for key in shared]
    if period is not None:
        resource["note"] = [
            {
                "text": f"共享期间 shared period: {period[0].date().isoformat()} – "
                f"{period[1].date().isoformat()}"
            }
        ]
    return resource


def consent(
    consult_id: str,
    patient_id: str,
    requester_org: str,
    consultant: tuple[str, str],
    method: str,
    note: str,
    shared: list[str] | None,
    period: tuple[datetime, datetime] | None,
    opened: datetime,
    expires: datetime,
) -> dict[str, Any]:
    provision: dict[str, Any] = {
        "type": "permit",
        "period": {"start": _instant(opened), "end": _instant(expires)},
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "reference": {
                    "reference": f"Organization/{consultant[0]}",
                    "display": consultant[1],
                },
            }
        ],
        "action": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                        "code": "access",
                    }
                ]
            }
        ],
        "purpose": [{"system": ACT_REASON, "code": "TREAT", "display": "treatment"}],
    }
    if shared is not None:
        provision["data"] = [{"meaning": "instance", "reference": {"reference": k}} for k in shared]
    if period is not None:
        provision["dataPeriod"] = {"start": _instant(period[0]), "end": _instant(period[1])}
    return {
        "resourceType": "Consent",
        "identifier": [{"system": CONSULT_SYSTEM, "value": consult_id}],
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0", "display": "Consent"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": _instant(opened),
        "performer": [{"reference": f"Patient/{patient_id}"}],
        "organization": [{"reference": f"Organization/{requester_org}"}],
        "sourceAttachment": {
            "contentType": "text/plain",
            "title": CONSENT_METHODS[method] + (f": {note}" if note else ""),
        },
        "policyRule": {"coding": [{"system": ACT_CODE, "code": "OPTIN"}]},
        "provision": provision,
    }


def reply(
    consult_id: str,
    patient_id: str,
    service_request_id: str,
    consultant: tuple[str, str],
    text: str,
    issued: datetime,
) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": CONSULT_SYSTEM, "value": f"{consult_id}/reply"}],
        "basedOn": [{"reference": f"ServiceRequest/{service_request_id}"}],
        "status": "final",
        "category": [{"coding": [CONSULTATION]}],
        "code": {"coding": [CONSULT_NOTE], "text": "会诊意见 Consult note"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": _instant(issued),
        "issued": _instant(issued),
        "performer": [{"reference": f"Organization/{consultant[0]}", "display": consultant[1]}],
        "conclusion": text,
    }
