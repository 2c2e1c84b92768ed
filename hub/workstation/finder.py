"""Finding a patient from one typed or scanned identifier.

The search box takes whatever the doctor has at hand: a resident ID card number (18 digits, or
a legacy 15-digit one), a medical insurance number, the hospital's own MRN, or an explicit
``system|value``. A barcode or card scanner types the same characters very fast and ends with
Enter; it may add control characters (a prefix/suffix byte, a tab) and spaces, which are
removed. Which identifier systems a value could belong to is decided here; who the person is
comes from the identity service (the ``$ihe-pix`` lookup), which only a caller allowed to find
patients may use.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson

from hub.fhir.outcomes import FhirError
from hub.identity.identifiers import IdentifierSystems, InvalidIdentifier, resident_id
from hub.identity.service import IdentityService
from hub.records.unit_of_work import UnitOfWork

RESIDENT_ID = "https://yijian-hub.org/fhir/sid/resident-id"
INSURANCE = "https://yijian-hub.org/fhir/sid/insurance-person"
MDM_SYSTEM = "https://yijian-hub.org/fhir/CodeSystem/mdm"
_ID_CARD = re.compile(r"^(\d{17}[\dX]|\d{15})$")
_INSURANCE = re.compile(r"^[0-9A-Z]{10,32}$")
MAX_INPUT = 200


def clean_input(text: str) -> str:
    """The typed or scanned text: full-width characters folded (NFKC), control and format
    characters and all whitespace removed, except inside ``system|value`` URIs' values."""
    text = unicodedata.normalize("NFKC", text or "")[:MAX_INPUT]
    kept = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    return "".join(kept.split())


def candidate_identifiers(
    text: str, organization: str, systems: IdentifierSystems
) -> list[tuple[str, str]]:
    """The (system, value) pairs the input could be, most specific first."""
    text = clean_input(text)
    if not text:
        return []
    if "|" in text:
        system, _, value = text.partition("|")
        return [(system, value)] if system and value else []
    found: list[tuple[str, str]] = []
    upper = text.upper()
    if _ID_CARD.fullmatch(upper):
        with contextlib.suppress(InvalidIdentifier):
            found.append((RESIDENT_ID, resident_id(upper)))
    if _INSURANCE.fullmatch(upper) and not found:
        found.append((INSURANCE, upper))
    with contextlib.suppress(ValueError):
        found.append((systems.organization_system(organization, "mrn"), text))
    return found


def masked_query(text: str, organization: str, systems: IdentifierSystems) -> str:
    """What was searched, as the page may show it (protected numbers masked)."""
    found = candidate_identifiers(text, organization, systems)
    if not found:
        return ""
    system, value = found[0]
    return systems.mask(system, value)


@dataclass
class PersonHit:
    """One person found: their records at each hospital, shown masked."""

    patient_id: str  # the master Patient (or the only record)
    records: list[str]
    name: str = ""
    gender: str = ""
    birth_date: str = ""
    identifiers: list[tuple[str, str]] = field(default_factory=list)  # (system name, masked)
    organizations: list[str] = field(default_factory=list)  # where registered (ids)
    in_care: bool = False

    @property
    def age(self) -> int | None:
        return age_of(self.birth_date)


def age_of(birth_date: str, today: date | None = None) -> int | None:
    try:
        born = date.fromisoformat(birth_date[:10])
    except ValueError:
        return None
    today = today or date.today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def patient_name(patient: dict[str, Any]) -> str:
    for name in patient.get("name") or []:
        if not isinstance(name, dict):
            continue
        if name.get("text"):
            return str(name["text"])
        given = "".join(str(g) for g in name.get("given") or [])
        if name.get("family") or given:
            return f"{name.get('family') or ''}{given}"
    return ""


def is_master(patient: dict[str, Any]) -> bool:
    tags = (patient.get("meta") or {}).get("tag") or []
    return any(isinstance(t, dict) and t.get("system") == MDM_SYSTEM for t in tags)


def describe(
    hit: PersonHit, patients: list[dict[str, Any]], systems: IdentifierSystems, organization: str
) -> PersonHit:
    """Fill a hit from the person's Patient records (already masked for the caller)."""
    seen: set[tuple[str, str]] = set()
    for patient in sorted(patients, key=lambda p: not is_master(p)):
        hit.name = hit.name or patient_name(patient)
        hit.gender = hit.gender or str(patient.get("gender") or "")
        hit.birth_date = hit.birth_date or str(patient.get("birthDate") or "")
        managing = (patient.get("managingOrganization") or {}).get("reference") or ""
        if managing.startswith("Organization/") and not is_master(patient):
            org = managing.split("/", 1)[1]
            if org not in hit.organizations:
                hit.organizations.append(org)
            hit.in_care = hit.in_care or org == organization
        for identifier in patient.get("identifier") or []:
            if not isinstance(identifier, dict) or not identifier.get("value"):
                continue
            system = str(identifier.get("system") or "")
            found = systems.lookup(system)
            label = found.name_zh if found is not None else system
            value = systems.mask(system, str(identifier["value"]))
            if (label, value) not in seen:
                seen.add((label, value))
                hit.identifiers.append((label, value))
    return hit


async def find_people(
    uow: UnitOfWork,
    identity: IdentityService,
    text: str,
    organization: str,
) -> tuple[list[PersonHit], list[str]]:
    """The people the input identifies, and why some readings failed (e.g. a bad ID
    checksum). Records are read as ``$match`` reads them (masked by the caller)."""
    hits: dict[str, PersonHit] = {}
    problems: list[str] = []
    for system, value in candidate_identifiers(text, organization, identity.systems):
        try:
            records, _ = await identity.cross_reference(uow, f"{system}|{value}", [])
        except FhirError as error:
            if error.status != 404:
                problems.append(error.diagnostics)
            continue
        if not records:
            continue
        group = await identity.group(uow, records[0])
        key = min(group)
        if any(set(group) & set(h.records) for h in hits.values()):
            continue
        hits[key] = PersonHit(key, sorted(group))
    return list(hits.values()), problems


def load_json(content: str | None) -> dict[str, Any]:
    return orjson.loads(content) if content else {}
