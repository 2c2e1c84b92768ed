"""A patient's privacy Consents read for enforcement: is this an opt-out of sharing?

FHIR R4 Consent with scope ``patient-privacy``. An opt-out is an active Consent whose policy
rule is v3 ActCode ``OPTOUT``, or whose base provision denies without naming actors or data
(a blanket "do not share"). Its provision period, when given, must cover now. Consents the hub
writes for consultations are opt-ins (``OPTIN``, permit) and never count.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"


def _codes(concept: Any) -> set[str]:
    if not isinstance(concept, dict):
        return set()
    return {
        str(c["code"]) for c in concept.get("coding", []) if isinstance(c, dict) and "code" in c
    }


def _covers(period: Any, now: datetime) -> bool:
    if not isinstance(period, dict):
        return True
    for edge, inside in (("start", lambda t: t <= now), ("end", lambda t: now < t)):
        text = period.get(edge)
        if isinstance(text, str):
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                continue
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            if not inside(moment):
                return False
    return True


def is_opt_out(consent: dict[str, Any], now: datetime | None = None) -> bool:
    """Whether ``consent`` is a patient's opt-out of sharing, in force at ``now``."""
    now = now or datetime.now(UTC)
    if consent.get("status") != "active" or "patient-privacy" not in _codes(consent.get("scope")):
        return False
    provision = consent.get("provision") or {}
    if not _covers(provision.get("period"), now):
        return False
    if "OPTOUT" in _codes(consent.get("policyRule")):
        return True
    return (
        provision.get("type") == "deny" and not provision.get("actor") and not provision.get("data")
    )
