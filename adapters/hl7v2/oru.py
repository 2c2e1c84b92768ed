"""ORU^R01 → FHIR R4 transaction Bundle: the mapping.

One message becomes one transaction. Every entry is a conditional update on a business
identifier (``PUT Type?identifier=system|value``), so a replayed message or a correction
(OBR-25/OBX-11 ``C``) updates the same resources; entries refer to each other by their
``urn:uuid`` fullUrls. Identifier systems are the hub's hospital templates
(``https://yijian-hub.org/fhir/sid/org/{organization}/{kind}``):

=================  ==================================  ========================================
resource           conditional on                      value
=================  ==================================  ========================================
Patient            first hospital number in PID-3      CX.1 (mrn/outpatient/inpatient), else
                                                       the first PID-3 identifier
ServiceRequest     ``placer``, else ``filler``         ORC-2/OBR-2, else ORC-3/OBR-3 (EI.1)
Specimen           ``specimen``                        SPM-2 (placer, else filler id), else
                                                       the filler number
DiagnosticReport   ``filler``                          ORC-3/OBR-3 (EI.1)
Observation        ``result``                          ``{filler}:{OBX-3.1}:{OBX-4}``
=================  ==================================  ========================================

An imaging report (OBR-24 an imaging section, or the feed option ``kind: imaging``) keeps its
text OBXs as the report itself (``presentedForm`` and ``conclusion``) and carries the accession
number (type ACSN) from ``options.accession_field`` (default OBR-18).

Choices where the standard leaves room: an empty OBR-25 means ``final`` (old LIS omit it and
send only released results); an unknown OBR-25/OBX-11 code gives ``unknown``/the report's
status with a warning; OBX after an SPM (specimen observations in 2.5.1) become results of the
order like any other OBX; NM values keep their digits as JSON numbers (an int when written
without a decimal point, else a float: trailing zeros such as ``5.20`` are lost, because the
hub serialises with orjson, which has no decimal type).
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from adapters.hl7v2 import datatypes as dt
from adapters.hl7v2.message import Message, Segment, comp
from adapters.hl7v2.units import ucum
from hub.identity.identifiers import (
    HUB_IDENTIFIER_TYPE_SYSTEM,
    IDENTIFIER_TYPE_SYSTEM,
    IdentifierSystems,
    InvalidIdentifier,
)
from hub.ingest.translation import ContentError, LocalCode, Rejected, Translation

if TYPE_CHECKING:
    from hub.ingest.codemaps import CodeMap, CodeTarget
    from hub.ingest.feeds import FeedConfig

SUPPORTED_VERSIONS = frozenset({"2.3", "2.3.1", "2.4", "2.5", "2.5.1"})
LENIENT_VERSIONS = frozenset({"2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2", "2.9"})

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
INGEST_TAGS = "https://yijian-hub.org/fhir/CodeSystem/ingest"
NOTE_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"
RADIOLOGY_CATEGORY = {"system": dt.LOINC, "code": "LP29684-5", "display": "Radiology"}
UNMAPPED_TAG = {
    "system": INGEST_TAGS,
    "code": "unmapped-code",
    "display": "Local code not mapped to LOINC",
}
DEFAULT_ACCESSION_FIELD = "OBR-18"
ACCESSION_FIELDS = {"OBR-2": 2, "OBR-3": 3, "OBR-18": 18, "OBR-19": 19, "OBR-20": 20}

REPORT_STATUS = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "X": "cancelled",
    "A": "partial",
    "I": "registered",
    "O": "registered",
    "S": "registered",
    "R": "registered",
    "M": "partial",
    "Y": "registered",
    "Z": "registered",
}
REQUEST_STATUS = {
    "final": "completed",
    "corrected": "completed",
    "cancelled": "revoked",
    "unknown": "unknown",
}
RESULT_STATUS = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "X": "cancelled",
    "N": "cancelled",
    "D": "entered-in-error",
    "W": "entered-in-error",
    "R": "registered",
    "I": "registered",
    "S": "registered",
    "U": "final",
}
# An Observation's status when OBX-11 is empty: the report's, in Observation's value set.
REPORT_TO_RESULT = {"partial": "preliminary", "unknown": "unknown"}

GENDER = {
    "M": "male",
    "F": "female",
    "O": "other",
    "U": "unknown",
    "A": "other",
    "N": "unknown",
    "男": "male",
    "女": "female",
    "1": "male",  # GB/T 2261.1 sex codes, sent by some HIS
    "2": "female",
    "9": "unknown",
    "0": "unknown",
}

# v2-0074 diagnostic service sections (lab and imaging), and what Chinese RIS write instead.
V2_0074_CODES = frozenset(
    [
        "AU",
        "BG",
        "BLB",
        "CG",
        "CUS",
        "CTH",
        "CT",
        "CH",
        "CP",
        "EC",
        "EN",
        "HM",
        "ICU",
        "IMG",
        "IMM",
        "LAB",
        "MB",
        "MCB",
        "MYC",
        "NMS",
        "NMR",
        "NRS",
        "OUS",
        "OT",
        "OTH",
        "OSL",
        "PAR",
        "PAT",
        "PF",
        "PHR",
        "PHY",
        "PT",
        "RAD",
        "RC",
        "RT",
        "RUS",
        "RX",
        "SP",
        "SR",
        "TX",
        "URN",
        "VR",
        "VUS",
        "XRC",
    ]
)
IMAGING_SECTIONS = frozenset(
    [
        "RAD",
        "CT",
        "MR",
        "MRI",
        "NMR",
        "NMS",
        "US",
        "CUS",
        "OUS",
        "RUS",
        "VUS",
        "RX",
        "XRC",
        "DX",
        "CR",
        "DR",
        "MG",
        "IMG",
        "PET",
        "XA",
        "RF",
    ]
)
_SECTION_ALIASES = {
    "MR": "NMR",
    "MRI": "NMR",
    "US": "RUS",
    "DX": "RX",
    "CR": "RX",
    "DR": "RX",
    "MG": "RX",
    "PET": "NMS",
    "XA": "RAD",
    "RF": "RAD",
}

INTERPRETATIONS = {
    "H": "High",
    "L": "Low",
    "HH": "Critical high",
    "LL": "Critical low",
    "N": "Normal",
    "A": "Abnormal",
    "AA": "Critical abnormal",
    "<": "Off scale low",
    ">": "Off scale high",
    "POS": "Positive",
    "NEG": "Negative",
    "S": "Susceptible",
    "R": "Resistant",
    "I": "Intermediate",
    "IND": "Indeterminate",
    "DET": "Detected",
    "ND": "Not detected",
    "U": "Significant change up",
    "D": "Significant change down",
}
_INTERPRETATION_ALIASES = {
    "↑": "H",
    "↓": "L",
    "↑↑": "HH",
    "↓↓": "LL",
    "高": "H",
    "低": "L",
    "偏高": "H",
    "偏低": "L",
    "正常": "N",
    "异常": "A",
    "阳性": "POS",
    "阴性": "NEG",
    "+": "POS",
    "-": "NEG",
    "P": "POS",
}

# PID-3 without an assigning authority: the identifier type (CX.5) decides the system.
_TYPE_SYSTEMS = {
    "": "mrn",
    "MR": "mrn",
    "MRN": "mrn",
    "PI": "mrn",
    "PT": "mrn",
    "PN": "mrn",
    "NNCHN": "resident-id",
    "SFZ": "resident-id",
    "CZ": "resident-id",
    "RI": "resident-id",
    "PPN": "passport",
    "HC": "health-card",
    "JHN": "insurance-person",
    "YB": "insurance-person",
}
HOSPITAL_KINDS = ("mrn", "outpatient", "inpatient")

_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"^({_NUM})\s*(?:-|~|—|–|－|至|到|--)\s*({_NUM})$")
_BOUND = re.compile(rf"^(<=|>=|<|>|≤|≥|＜|＞|=<|=>)\s*({_NUM})$")
_COMPARATOR_VALUE = re.compile(rf"^(<=|>=|<|>|≤|≥|=<|=>)\s*({_NUM})$")
_COMPARATORS = {"<": "<", ">": ">", "<=": "<=", ">=": ">=", "≤": "<=", "≥": ">=", "=<": "<="}
_COMPARATORS["=>"] = ">="

_IMPRESSION = re.compile(r"IMP|诊断|印象|结论|意见|impression|conclusion", re.IGNORECASE)
_FINDINGS = re.compile(r"GDT|所见|描述|表现|finding", re.IGNORECASE)


# ------------------------------------------------------------------ message structure


@dataclass
class ResultSegment:
    """One OBX with its notes; ``index`` is its 1-based position among the message's OBXs."""

    segment: Segment
    index: int
    notes: list[str] = field(default_factory=list)


@dataclass
class OrderGroup:
    """ORC? OBR NTE* (OBX NTE*)* SPM*: one order and its results."""

    obr: Segment
    index: int  # 1-based position among the message's OBRs
    orc: Segment | None
    patient: PatientGroup
    notes: list[str] = field(default_factory=list)
    results: list[ResultSegment] = field(default_factory=list)
    specimens: list[Segment] = field(default_factory=list)


@dataclass
class PatientGroup:
    pid: Segment
    index: int
    orders: list[OrderGroup] = field(default_factory=list)


def _note_text(segment: Segment) -> str:
    """NTE-3 (FT, may repeat) as text; lines joined by newlines."""
    reps = segment.repetitions(3)
    return "\n".join(segment.text(3, r) for r in range(len(reps))).strip()


def structure(message: Message) -> list[PatientGroup]:
    """Group the segments of an ORU^R01 into patients and orders (Z-segments ignored)."""
    patients: list[PatientGroup] = []
    order: OrderGroup | None = None
    result: ResultSegment | None = None
    pending_orc: Segment | None = None
    obr_count = obx_count = 0
    for segment in message.segments[1:]:
        name = segment.name
        if name == "PID":
            patients.append(PatientGroup(segment, len(patients) + 1))
            order = result = None
            pending_orc = None
        elif name == "ORC":
            pending_orc = segment
            result = None
        elif name == "OBR":
            obr_count += 1
            if not patients:
                raise ContentError(
                    "the message has no PID segment before its first OBR; every result must "
                    "say whose it is (PID with PID-3)",
                    location="PID",
                    hl7_code="100",
                )
            order = OrderGroup(segment, obr_count, pending_orc, patients[-1])
            patients[-1].orders.append(order)
            pending_orc = None
            result = None
        elif name == "OBX":
            obx_count += 1
            if order is None:
                raise ContentError(
                    f"OBX[{obx_count}] comes before any OBR; each OBX must follow the OBR of "
                    "the order it reports",
                    location=f"OBX[{obx_count}]",
                    hl7_code="100",
                )
            result = ResultSegment(segment, obx_count)
            order.results.append(result)
        elif name == "NTE":
            text = _note_text(segment)
            if not text:
                continue
            if result is not None:
                result.notes.append(text)
            elif order is not None:
                order.notes.append(text)
        elif name == "SPM":
            if order is not None:
                order.specimens.append(segment)
            result = None
    if not patients:
        raise ContentError(
            "the message has no PID segment; every result must say whose it is (PID with PID-3)",
            location="PID",
            hl7_code="100",
        )
    if obr_count == 0:
        raise ContentError(
            "the message has no OBR segment; an ORU^R01 reports results of at least one order",
            location="OBR",
            hl7_code="100",
        )
    return patients


def location(segment: str, index: int, field_no: int | None = None) -> str:
    """``OBR-3`` for the first OBR, ``OBR[2]-3`` for later ones; OBX always indexed."""
    base = segment if index == 1 and segment != "OBX" else f"{segment}[{index}]"
    return f"{base}-{field_no}" if field_no is not None else base


# ------------------------------------------------------------------ the translator state


def fhir_search_escape(value: str) -> str:
    """Escape the characters FHIR search treats specially in a token value."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def conditional_url(resource_type: str, system: str, value: str) -> str:
    """``Type?identifier=<system>|<value>``, the value FHIR-escaped and percent-encoded."""
    return f"{resource_type}?identifier={system}|{quote(fhir_search_escape(value), safe='')}"


def new_urn() -> str:
    """A ``urn:uuid:`` with a random (version 4) UUID; formatted directly, which is several
    times cheaper than ``uuid.uuid4()`` and matters at one per entry."""
    h = os.urandom(16).hex()
    variant = "89ab"[int(h[16], 16) & 3]
    return f"urn:uuid:{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"


def _identifier(system: str, value: str, type_code: str | None = None) -> dict[str, Any]:
    identifier: dict[str, Any] = {}
    if type_code:
        identifier["type"] = {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": type_code}]}
    identifier["system"] = system
    identifier["value"] = value
    return identifier


@dataclass
class Builder:
    """Accumulates the transaction's entries and what the hub should know about them."""

    feed: FeedConfig
    codes: CodeMap
    systems: IdentifierSystems
    entries: list[dict[str, Any]] = field(default_factory=list)
    by_url: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    unmapped: dict[str, LocalCode] = field(default_factory=dict)
    result_ids: dict[str, int] = field(default_factory=dict)
    kind_systems: dict[str, str] = field(default_factory=dict)

    def system(self, kind: str) -> str:
        found = self.kind_systems.get(kind)
        if found is None:
            found = self.systems.organization_system(self.feed.organization, kind)
            self.kind_systems[kind] = found
        return found

    def add(self, resource: dict[str, Any], system: str, value: str) -> str:
        """Add a conditional entry and return its fullUrl (the existing one for a repeat)."""
        url = conditional_url(resource["resourceType"], system, value)
        existing = self.by_url.get(url)
        if existing is not None:
            return str(existing["fullUrl"])
        entry = {
            "fullUrl": new_urn(),
            "resource": resource,
            "request": {"method": "PUT", "url": url},
        }
        self.entries.append(entry)
        self.by_url[url] = entry
        return str(entry["fullUrl"])

    def ts(self, value: str, where: str) -> dt.Instant | None:
        """A timestamp field's value, or None when empty; ContentError naming the field."""
        if not value:
            return None
        try:
            return dt.parse_ts(value, self.feed.timezone)
        except ValueError as error:
            raise ContentError(
                f"{where} is not a valid HL7 date/time: {error}", location=where, hl7_code="102"
            ) from None

    @property
    def organization_reference(self) -> dict[str, str]:
        return {"reference": f"Organization/{self.feed.organization}"}


# ------------------------------------------------------------------ Patient


def _patient_system(builder: Builder, cx: dt.CX) -> tuple[str, str | None]:
    """(system URI, hospital kind or None) for one PID-3 identifier."""
    configured = builder.feed.identifiers
    target: str | None = None
    if cx.authority:
        target = configured.get(cx.authority)
        if target is None and cx.authority_uid:
            target = configured.get(cx.authority_uid)
        if target is None:
            known = ", ".join(sorted(configured)) or "none"
            raise ContentError(
                f"PID-3 assigning authority {cx.authority!r} is not configured for feed "
                f"{builder.feed.feed} (configured: {known}); send a configured authority in "
                "CX-4 or ask the hub operator to add it to the feed's identifiers",
                location="PID-3",
                hl7_code="103",
            )
    else:
        target = _TYPE_SYSTEMS.get(cx.type_code.upper())
        if target is None:
            builder.warnings.append(
                f"PID-3 identifier type {cx.type_code!r} without an assigning authority is "
                "taken as the hospital's medical record number"
            )
            target = "mrn"
    if target in HOSPITAL_KINDS:
        return builder.system(target), target
    if ":" in target:
        return target, None
    try:
        return builder.systems.by_key(target).uri, None
    except KeyError:
        raise ContentError(
            f"feed {builder.feed.feed} maps PID-3 authority {cx.authority or cx.type_code!r} to "
            f"{target!r}, which is neither a URI, a NamingSystem id nor mrn/outpatient/inpatient",
            location="PID-3",
            hl7_code="207",
        ) from None


def patient(builder: Builder, group: PatientGroup) -> str:
    """The Patient entry of a PID; returns its fullUrl."""
    pid = group.pid
    where = location("PID", group.index, 3)
    identifiers: list[dict[str, Any]] = []
    key: tuple[str, str] | None = None
    first: tuple[str, str] | None = None
    for cx in dt.cx_list(pid, 3):
        system, kind = _patient_system(builder, cx)
        try:
            value = builder.systems.normalize(system, cx.value)
        except InvalidIdentifier as error:
            shown = builder.systems.mask(system, cx.value)
            reason = str(error).replace(cx.value.strip(), shown)
            raise ContentError(
                f"PID-3 identifier is not valid: {reason}", location=where, hl7_code="102"
            ) from None
        identifier: dict[str, Any] = {"system": system, "value": value}
        if kind == "mrn":
            identifier = {
                "type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": "MR"}]},
                **identifier,
            }
        elif kind in ("outpatient", "inpatient"):
            identifier = {
                "type": {"coding": [{"system": HUB_IDENTIFIER_TYPE_SYSTEM, "code": kind}]},
                **identifier,
            }
        if identifier in identifiers:
            continue
        identifiers.append(identifier)
        first = first or (system, value)
        if kind is not None and key is None:
            key = (system, value)
    if not identifiers:
        raise ContentError(
            "PID-3 (patient identifier list) is empty; send at least the hospital's patient "
            "number (CX-1) with its assigning authority (CX-4)",
            location=where,
            hl7_code="101",
        )
    key = key or first
    assert key is not None
    resource: dict[str, Any] = {"resourceType": "Patient", "identifier": identifiers}
    names = [
        name
        for rep in range(len(pid.repetitions(5)))
        if (name := dt.human_name(pid, 5, rep)) is not None
    ]
    if names:
        resource["name"] = names
    telecom = dt.contact_points(pid, 13) + dt.contact_points(pid, 14, work=True)
    if telecom:
        resource["telecom"] = telecom
    sex = pid.get(8)
    if sex:
        gender = GENDER.get(sex.upper())
        if gender is None:
            builder.warnings.append(f"PID-8 sex {sex!r} is not a known code; gender omitted")
        else:
            resource["gender"] = gender
    born = builder.ts(pid.get(7), location("PID", group.index, 7))
    if born is not None:
        resource["birthDate"] = born.text[:10]
    addresses = [
        found
        for rep in range(len(pid.repetitions(11)))
        if (found := dt.address(pid, 11, rep)) is not None
    ]
    if addresses:
        resource["address"] = addresses
    resource["managingOrganization"] = builder.organization_reference
    return builder.add(resource, *key)


# ------------------------------------------------------------------ codes


def _target_coding(target: CodeTarget) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": target.system, "code": target.code}
    if target.display:
        coding["display"] = target.display
    return coding


def mapped_concept(
    builder: Builder, value: dt.Coded
) -> tuple[dict[str, Any], CodeTarget | None, bool]:
    """A local code as a CodeableConcept: LOINC first when known, then the local coding.

    Returns (concept, the code map's target or None, whether it is mapped to LOINC).
    """
    codings: list[dict[str, Any]] = []
    target: CodeTarget | None = None
    mapped = False
    primary_system = dt.fhir_system(value.system)
    if primary_system == dt.LOINC:
        coding = {"system": dt.LOINC, "code": value.code}
        if value.text:
            coding["display"] = value.text
        codings.append(coding)
        mapped = True
        target = builder.codes.get(value.code)
    else:
        target = builder.codes.get(value.code) if value.code else None
        if target is not None:
            codings.append(_target_coding(target))
            mapped = True
        elif value.alt_code and dt.fhir_system(value.alt_system) == dt.LOINC:
            coding = {"system": dt.LOINC, "code": value.alt_code}
            if value.alt_text:
                coding["display"] = value.alt_text
            codings.append(coding)
            mapped = True
        if value.code:
            local: dict[str, Any] = {"system": builder.feed.local_code_system, "code": value.code}
            if value.text:
                local["display"] = value.text
            codings.append(local)
    concept: dict[str, Any] = {"coding": codings} if codings else {}
    text = value.text or value.alt_text or value.original_text or value.code
    if text:
        concept["text"] = text
    return concept, target, mapped


# ------------------------------------------------------------------ values


@dataclass
class Unit:
    text: str
    code: str | None

    def quantity(self, number: int | float) -> dict[str, Any]:
        result: dict[str, Any] = {"value": number}
        if self.text:
            result["unit"] = self.text
        if self.code:
            result["system"] = dt.UCUM
            result["code"] = self.code
        return result


_UNESCAPED_POWER = re.compile(r"^([x×X]?10\^\d+[^^]*)(?:\^(.*))?$")


def _unit(obx: Segment, target: CodeTarget | None) -> Unit:
    """OBX-6 as a unit: the text as sent, the UCUM code from the code map, OBX-6.3 = UCUM,
    or the unit table. Many LIS send ``10^9/L`` with the component separator unescaped; a
    leading power of ten is read back together instead of as components ``10`` and ``9/L``."""
    values = obx.values(6)
    if not values:
        return Unit("", None)
    if len(values) > 1 and obx.delims.component == "^":
        match = _UNESCAPED_POWER.match(obx.text(6))
        if match:
            values = [match.group(1), *(match.group(2) or "").split("^")]
    code_text, label = comp(values, 1), comp(values, 2)
    text = code_text or label
    if not text:
        return Unit("", None)
    code: str | None = None
    if target is not None and target.unit:
        code = target.unit
    elif comp(values, 3).upper() == "UCUM":
        code = code_text
    else:
        code = ucum(code_text) or (ucum(label) if label else None)
    return Unit(text, code)


def _number(text: str) -> int | float | None:
    try:
        return dt.parse_number(text)
    except ValueError:
        return None


def _sn_value(obx: Segment, rep: int, unit: Unit, where: str) -> tuple[str, Any]:
    comparator = dt.normalize_text(obx.get(5, 1, rep))
    first, separator, second = obx.get(5, 2, rep), obx.get(5, 3, rep), obx.get(5, 4, rep)
    low = _number(first) if first else None
    high = _number(second) if second else None
    if (first and low is None) or (second and high is None):
        raise ContentError(
            f"{where}: SN value {obx.text(5, rep)!r} has a non-numeric number; expected "
            "[comparator]^number[^separator^number], e.g. <^0.05 or ^1^:^40",
            location=where,
            hl7_code="102",
        )
    if separator in (":", "/") and low is not None and high is not None:
        return "valueRatio", {"numerator": {"value": low}, "denominator": {"value": high}}
    if separator in ("-",) and low is not None and high is not None:
        return "valueRange", {"low": unit.quantity(low), "high": unit.quantity(high)}
    if separator == "+" and low is not None and high is None:
        return "valueString", f"{first}+"
    if low is not None and not separator and high is None:
        quantity = unit.quantity(low)
        if comparator and comparator != "=":
            fhir_comparator = _COMPARATORS.get(comparator)
            if fhir_comparator is None:
                raise ContentError(
                    f"{where}: SN comparator {comparator!r} is not one of <, >, <=, >=, =",
                    location=where,
                    hl7_code="102",
                )
            quantity["comparator"] = fhir_comparator
        return "valueQuantity", quantity
    raise ContentError(
        f"{where}: SN value {obx.text(5, rep)!r} is not a structured numeric "
        "(comparator^number, ^number^-^number or ^number^:^number)",
        location=where,
        hl7_code="102",
    )


def _nm_value(builder: Builder, obx: Segment, rep: int, unit: Unit, where: str) -> tuple[str, Any]:
    raw = obx.text(5, rep)
    text = dt.normalize_text(raw)
    number = _number(text)
    if number is not None:
        return "valueQuantity", unit.quantity(number)
    match = _COMPARATOR_VALUE.match(text)
    if match:
        comparator = _COMPARATORS[match.group(1)]
        value = dt.parse_number(match.group(2))
        builder.warnings.append(
            f"{where}: NM value {raw!r} carries a comparator; sent as a quantity with "
            f"comparator {comparator!r} (SN is the HL7 type for this)"
        )
        quantity = unit.quantity(value)
        quantity["comparator"] = comparator
        return "valueQuantity", quantity
    raise ContentError(
        f"{where}: OBX-2 says NM (numeric) but OBX-5 is {raw!r}; send a number, or use "
        "OBX-2 ST for text and SN for values like <0.5",
        location=where,
        hl7_code="102",
    )


def observation_value(
    builder: Builder, obx: ResultSegment, unit: Unit, value_type: str
) -> tuple[str, Any] | None:
    """The ``value[x]`` element of an OBX, by OBX-2; None when OBX-5 is empty."""
    segment = obx.segment
    where = f"OBX[{obx.index}]-5"
    reps = segment.repetitions(5)
    if not reps or not any(r.strip() for r in reps):
        return None
    if value_type == "":
        value_type = "NM" if _number(dt.normalize_text(segment.text(5))) is not None else "ST"
    if value_type == "NM":
        if len(reps) > 1:
            builder.warnings.append(f"{where}: NM value repeats; only the first is used")
        return _nm_value(builder, segment, 0, unit, where)
    if value_type == "SN":
        return _sn_value(segment, 0, unit, where)
    if value_type in ("ST", "TX", "FT", "IS", "ID", "TN", "AD", "XAD", "XPN", "XON"):
        text = "\n".join(segment.text(5, r) for r in range(len(reps))).strip()
        if value_type in ("AD", "XAD", "XPN", "XON"):
            text = text.replace(segment.delims.component, " ").strip()
        return ("valueString", text) if text else None
    if value_type in ("CE", "CWE", "CNE", "CF"):
        concept = dt.codeable_concept(dt.coded(segment, 5))
        return ("valueCodeableConcept", concept) if concept else None
    if value_type in ("TS", "DTM", "DT"):
        instant = builder.ts(segment.get(5), where)
        return ("valueDateTime", instant.text) if instant else None
    if value_type == "TM":
        text = segment.get(5)
        if re.fullmatch(r"\d{4}(\d{2})?", text):
            return "valueTime", f"{text[:2]}:{text[2:4]}:{text[4:6] or '00'}"
    builder.warnings.append(f"{where}: value type {value_type!r} is not translated; value omitted")
    return None


def reference_range(text: str, unit: Unit | None) -> dict[str, Any] | None:
    """OBX-7 as a referenceRange: low/high when it is a numeric range or bound, text always."""
    raw = text.strip()
    if not raw:
        return None
    normalized = dt.normalize_text(raw).replace("～", "~")
    result: dict[str, Any] = {}

    def quantity(number_text: str) -> dict[str, Any]:
        number = dt.parse_number(number_text)
        if unit is None:
            return {"value": number}
        return unit.quantity(number)

    match = _RANGE.match(normalized)
    if match:
        result["low"] = quantity(match.group(1))
        result["high"] = quantity(match.group(2))
    else:
        match = _BOUND.match(normalized)
        if match:
            op = match.group(1)
            key = "high" if op in ("<", "<=", "≤", "＜", "=<") else "low"
            result[key] = quantity(match.group(2))
    result["text"] = raw
    return result


def interpretation(segment: Segment) -> list[dict[str, Any]]:
    """OBX-8 flags (repeating) as v3 ObservationInterpretation concepts."""
    concepts: list[dict[str, Any]] = []
    for rep in range(len(segment.repetitions(8))):
        flag = dt.normalize_text(segment.get(8, 1, rep))
        if not flag:
            continue
        code = _INTERPRETATION_ALIASES.get(flag, flag.upper())
        if code in INTERPRETATIONS:
            concepts.append(
                {
                    "coding": [
                        {"system": INTERPRETATION, "code": code, "display": INTERPRETATIONS[code]}
                    ],
                    "text": flag,
                }
            )
        else:
            concepts.append({"text": flag})
    return concepts


# ------------------------------------------------------------------ orders


@dataclass
class OrderKeys:
    placer: str
    filler: str
    report_status: str
    imaging: bool
    section: str


def _report_status(builder: Builder, order: OrderGroup) -> str:
    code = order.obr.get(25).upper()
    if not code:
        return "final"
    status = REPORT_STATUS.get(code)
    if status is None:
        builder.warnings.append(
            f"{location('OBR', order.index, 25)} result status {code!r} is not in HL7 table "
            "0123; report status set to unknown"
        )
        return "unknown"
    return status


def _section(order: OrderGroup) -> str:
    return order.obr.get(24).upper()


def _category(section: str, imaging: bool) -> list[dict[str, Any]]:
    if imaging:
        code = section if section in V2_0074_CODES else _SECTION_ALIASES.get(section, "RAD")
        concept: dict[str, Any] = {"coding": [{"system": V2_0074, "code": code}]}
        if section and section != code:
            concept["text"] = section
        return [concept, {"coding": [RADIOLOGY_CATEGORY]}]
    code = section if section in V2_0074_CODES else "LAB"
    lab: dict[str, Any] = {"coding": [{"system": V2_0074, "code": code}]}
    if section and section != code:
        lab["text"] = section
    return [lab]


def _person_display(segment: Segment, n: int) -> str:
    """An XCN (OBR-16) as display text: the name when given, else the id."""
    family, given, ident = segment.get(n, 2), segment.get(n, 3), segment.get(n, 1)
    if family or given:
        if dt.has_chinese(family + given):
            return family + given
        return " ".join(p for p in (given, family) if p)
    return ident


def _interpreter_display(segment: Segment, n: int) -> str:
    """An NDL (OBR-32) as display text: CNN subcomponents id&family&given."""
    ident = segment.get(n, 1, 0, 1)
    family, given = segment.get(n, 1, 0, 2), segment.get(n, 1, 0, 3)
    if family or given:
        return family + given if dt.has_chinese(family + given) else f"{given} {family}".strip()
    return ident


def _specimens(
    builder: Builder, order: OrderGroup, keys: OrderKeys, subject: dict[str, str]
) -> list[str]:
    """Specimen entries: one per SPM, else one from OBR-15/OBR-7/OBR-14 (lab orders only)."""
    urls: list[str] = []
    system = builder.system("specimen")
    for position, spm in enumerate(order.specimens):
        value = spm.get(2, 1, 0, 1) or spm.get(2, 2, 0, 1)
        if not value:
            value = keys.filler if position == 0 else f"{keys.filler}-{position + 1}"
        resource: dict[str, Any] = {
            "resourceType": "Specimen",
            "identifier": [{"system": system, "value": value}],
        }
        kind = dt.coded(spm, 4)
        if not kind.is_empty():
            resource["type"] = dt.codeable_concept(kind)
        resource["subject"] = subject
        collected = builder.ts(spm.get(17, 1), "SPM-17")
        if collected is not None:
            resource["collection"] = {"collectedDateTime": collected.text}
        received = builder.ts(spm.get(18), "SPM-18")
        if received is not None:
            resource["receivedTime"] = received.text
        urls.append(builder.add(resource, system, value))
    if urls or keys.imaging:
        return urls
    obr = order.obr
    source = obr.get(15, 1, 0, 2) or obr.get(15, 1, 0, 1)
    collected = builder.ts(obr.get(7), location("OBR", order.index, 7))
    received = builder.ts(obr.get(14), location("OBR", order.index, 14))
    if not (source or collected or received):
        return urls
    resource = {
        "resourceType": "Specimen",
        "identifier": [{"system": system, "value": keys.filler}],
    }
    if source:
        resource["type"] = {"text": source}
    resource["subject"] = subject
    if collected is not None:
        resource["collection"] = {"collectedDateTime": collected.text}
    if received is not None:
        resource["receivedTime"] = received.text
    urls.append(builder.add(resource, system, keys.filler))
    return urls


def _accession(builder: Builder, order: OrderGroup) -> str:
    option = str(builder.feed.options.get("accession_field") or DEFAULT_ACCESSION_FIELD)
    field_no = ACCESSION_FIELDS.get(option.upper())
    if field_no is None:
        raise ContentError(
            f"feed {builder.feed.feed} option accession_field {option!r} is not one of "
            f"{', '.join(ACCESSION_FIELDS)}",
            location=location("OBR", order.index),
            hl7_code="207",
        )
    return order.obr.get(field_no)


@dataclass
class ReportText:
    """The text OBXs of an imaging report, in sections."""

    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, title, text)

    def add(self, kind: str, title: str, text: str) -> None:
        if self.sections and self.sections[-1][:2] == (kind, title):
            last = self.sections[-1]
            self.sections[-1] = (kind, title, f"{last[2]}\n{text}")
        else:
            self.sections.append((kind, title, text))

    def full_text(self) -> str:
        parts = []
        for _, title, text in self.sections:
            parts.append(f"{title}:\n{text}" if title else text)
        return "\n\n".join(parts).strip()

    def impression(self) -> str:
        return "\n".join(text for kind, _, text in self.sections if kind == "impression").strip()


def _text_kind(obx: Segment) -> str:
    probe = " ".join((obx.raw(3), obx.get(3, 2), obx.get(3, 5)))
    if _IMPRESSION.search(probe):
        return "impression"
    if _FINDINGS.search(probe):
        return "findings"
    return "other"


_DEFAULT_TITLES = {"impression": "诊断意见", "findings": "检查所见", "other": ""}


def order_group(builder: Builder, order: OrderGroup, patient_url: str) -> None:
    """ServiceRequest, Specimen(s), Observations and the DiagnosticReport of one OBR."""
    obr, orc = order.obr, order.orc
    placer = (orc.get(2) if orc else "") or obr.get(2)
    filler = (orc.get(3) if orc else "") or obr.get(3)
    if not filler:
        raise ContentError(
            f"{location('OBR', order.index)} has no filler order number (ORC-3 or OBR-3); the "
            "filler number identifies the report so that replays and corrections update it",
            location=location("OBR", order.index, 3),
            hl7_code="101",
        )
    section = _section(order)
    imaging = section in IMAGING_SECTIONS or builder.feed.options.get("kind") == "imaging"
    status = _report_status(builder, order)
    keys = OrderKeys(placer, filler, status, imaging, section)
    subject = {"reference": patient_url}
    filler_system = builder.system("filler")
    placer_system = builder.system("placer")
    accession = _accession(builder, order) if imaging else ""
    if imaging and not accession:
        builder.warnings.append(
            f"{location('OBR', order.index)}: imaging report without an accession number in "
            f"{builder.feed.options.get('accession_field') or DEFAULT_ACCESSION_FIELD}; it "
            "cannot be linked to its images"
        )
    code_value = dt.coded(obr, 4)
    if code_value.is_empty():
        raise ContentError(
            f"{location('OBR', order.index, 4)} (universal service identifier) is empty; send "
            "the code and name of the ordered test",
            location=location("OBR", order.index, 4),
            hl7_code="101",
        )
    order_code, _, _ = mapped_concept(builder, code_value)
    specimen_urls = _specimens(builder, order, keys, subject)
    specimen_refs = [{"reference": url} for url in specimen_urls]

    # ServiceRequest
    request_ids: list[dict[str, Any]] = []
    if placer:
        request_ids.append(_identifier(placer_system, placer, "PLAC"))
    request_ids.append(_identifier(filler_system, filler, "FILL"))
    if accession:
        request_ids.append(_identifier(builder.system("accession"), accession, "ACSN"))
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": request_ids,
        "status": REQUEST_STATUS.get(status, "active"),
        "intent": "order",
        "code": order_code,
        "subject": subject,
        # The sender is the filler (the lab or RIS that performed it): the hub's rule that
        # a hospital writes only its own orders is met by naming it as the performer.
        "performer": [builder.organization_reference],
    }
    authored = builder.ts(orc.get(9), "ORC-9") if orc else None
    authored = authored or builder.ts(obr.get(6), location("OBR", order.index, 6))
    if authored is not None:
        request["authoredOn"] = authored.text
    requester = _person_display(obr, 16) or (_person_display(orc, 12) if orc else "")
    if requester:
        request["requester"] = {"display": requester}
    if specimen_refs:
        request["specimen"] = specimen_refs
    if placer:
        request_url = builder.add(request, placer_system, placer)
    else:
        request_url = builder.add(request, filler_system, filler)
    based_on = [{"reference": request_url}]

    effective = builder.ts(obr.get(7), location("OBR", order.index, 7))
    issued = builder.ts(obr.get(22), location("OBR", order.index, 22))
    if issued is not None and not issued.has_time:
        builder.warnings.append(
            f"{location('OBR', order.index, 22)} has no time of day; DiagnosticReport.issued "
            "(an instant) omitted"
        )

    # Observations (and, for imaging, the report text)
    results: list[dict[str, str]] = []
    report_text = ReportText()
    for obx in order.results:
        value_type = obx.segment.get(2).upper()
        if imaging and value_type in ("TX", "FT", "ST", ""):
            text = "\n".join(
                obx.segment.text(5, r) for r in range(len(obx.segment.repetitions(5)))
            ).strip()
            if text:
                kind = _text_kind(obx.segment)
                title = obx.segment.get(3, 2) or _DEFAULT_TITLES[kind]
                report_text.add(kind, title, text)
            continue
        url = observation(builder, obx, keys, subject, based_on, specimen_refs, effective, issued)
        results.append({"reference": url})

    # DiagnosticReport
    report_ids = [_identifier(filler_system, filler, "FILL")]
    if accession:
        report_ids.append(_identifier(builder.system("accession"), accession, "ACSN"))
    report: dict[str, Any] = {"resourceType": "DiagnosticReport"}
    if order.notes:
        report["extension"] = [
            {"url": NOTE_EXTENSION, "valueAnnotation": {"text": note}} for note in order.notes
        ]
    report.update(
        {
            "identifier": report_ids,
            "basedOn": based_on,
            "status": status,
            "category": _category(section, imaging),
            "code": order_code,
            "subject": subject,
        }
    )
    if effective is not None:
        report["effectiveDateTime"] = effective.text
    if issued is not None and issued.has_time:
        report["issued"] = issued.text
    report["performer"] = [builder.organization_reference]
    interpreter = _interpreter_display(obr, 32)
    if interpreter:
        report["resultsInterpreter"] = [{"display": interpreter}]
    if specimen_refs:
        report["specimen"] = specimen_refs
    if results:
        report["result"] = results
    if imaging:
        impression = report_text.impression()
        if impression:
            report["conclusion"] = impression
        full = report_text.full_text()
        if full:
            report["presentedForm"] = [
                {
                    "contentType": "text/plain; charset=utf-8",
                    "language": "zh-CN" if dt.has_chinese(full) else "en",
                    "data": base64.b64encode(full.encode("utf-8")).decode("ascii"),
                    "title": code_value.display_text,
                }
            ]
    if builder.by_url.get(conditional_url("DiagnosticReport", filler_system, filler)):
        raise ContentError(
            f"filler order number {filler!r} is used by two OBR segments; each report needs "
            "its own filler number (ORC-3/OBR-3)",
            location=location("OBR", order.index, 3),
            hl7_code="205",
        )
    builder.add(report, filler_system, filler)


def observation(
    builder: Builder,
    obx: ResultSegment,
    keys: OrderKeys,
    subject: dict[str, str],
    based_on: list[dict[str, str]],
    specimens: list[dict[str, str]],
    effective: dt.Instant | None,
    issued: dt.Instant | None,
) -> str:
    """The Observation entry of one OBX; returns its fullUrl."""
    segment = obx.segment
    code_value = dt.coded(segment, 3)
    if not code_value.code:
        raise ContentError(
            f"OBX[{obx.index}]-3 (observation identifier) has no code; send the local test code "
            "in OBX-3.1 and its name in OBX-3.2",
            location=f"OBX[{obx.index}]-3",
            hl7_code="101",
        )
    sub_id = segment.get(4)
    value_key = f"{keys.filler}:{code_value.code}:{sub_id}"
    if value_key in builder.result_ids:
        raise ContentError(
            f"OBX[{obx.index}] repeats result {code_value.code!r} with sub-id {sub_id!r} of "
            f"OBX[{builder.result_ids[value_key]}] in order {keys.filler!r}; give repeated "
            "results distinct sub-ids in OBX-4",
            location=f"OBX[{obx.index}]-4",
            hl7_code="205",
        )
    builder.result_ids[value_key] = obx.index
    concept, target, mapped = mapped_concept(builder, code_value)
    value_type = segment.get(2).upper()
    sent = _unit(segment, None)
    if (
        target is not None
        and target.unit
        and sent.text
        and target.unit not in (sent.code, sent.text)
    ):
        # The map's LOINC is for results in another unit (mg/dL glucose is not the mmol/L
        # test): claiming it would mislabel the value, so this result stays unmapped.
        builder.warnings.append(
            f"OBX[{obx.index}]-6 unit {sent.text!r} is not the unit the code map gives for"
            f" {code_value.code!r} ({target.unit}); the result is kept with its local code only"
        )
        local = builder.feed.local_code_system
        concept = {
            **concept,
            "coding": [c for c in concept.get("coding", []) if c.get("system") == local],
        }
        target, mapped = None, False
    unit = _unit(segment, target)
    status_code = segment.get(11).upper()
    if status_code:
        status = RESULT_STATUS.get(status_code, "")
        if not status:
            builder.warnings.append(
                f"OBX[{obx.index}]-11 result status {status_code!r} is not in HL7 table 0085; "
                "the report's status is used"
            )
    else:
        status = ""
    if not status:
        status = REPORT_TO_RESULT.get(keys.report_status, keys.report_status)
    resource: dict[str, Any] = {"resourceType": "Observation"}
    if not mapped:
        resource["meta"] = {"tag": [dict(UNMAPPED_TAG)]}
        if code_value.code not in builder.unmapped:
            builder.unmapped[code_value.code] = LocalCode(
                builder.feed.local_code_system, code_value.code, code_value.text, unit.text
            )
    system = builder.system("result")
    resource["identifier"] = [{"system": system, "value": value_key}]
    resource["basedOn"] = based_on
    resource["status"] = status
    category_code = "imaging" if keys.imaging else "laboratory"
    resource["category"] = [
        {
            "coding": [
                {
                    "system": OBSERVATION_CATEGORY,
                    "code": category_code,
                    "display": "Imaging" if keys.imaging else "Laboratory",
                }
            ]
        }
    ]
    resource["code"] = concept
    resource["subject"] = subject
    observed = builder.ts(segment.get(14), f"OBX[{obx.index}]-14") or effective
    if observed is not None:
        resource["effectiveDateTime"] = observed.text
    analysed = builder.ts(segment.get(19), f"OBX[{obx.index}]-19")
    released = analysed if analysed is not None and analysed.has_time else issued
    if released is not None and released.has_time:
        resource["issued"] = released.text
    resource["performer"] = [builder.organization_reference]
    value = observation_value(builder, obx, unit, value_type)
    if value is not None:
        resource[value[0]] = value[1]
    elif status not in ("cancelled", "entered-in-error"):
        resource["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": "unknown", "display": "Unknown"}]
        }
    flags = interpretation(segment)
    if flags:
        resource["interpretation"] = flags
    if obx.notes:
        resource["note"] = [{"text": note} for note in obx.notes]
    if specimens:
        resource["specimen"] = specimens[0]
    quantity_like = value is not None and value[0] in ("valueQuantity", "valueRange")
    reference = reference_range(segment.text(7), unit if quantity_like else None)
    if reference is not None:
        resource["referenceRange"] = [reference]
    return builder.add(resource, system, value_key)


# ------------------------------------------------------------------ entry point


def check_type_and_version(message_type: str, trigger: str, version: str) -> list[str]:
    """Reject what this translator does not handle; warnings for lenient acceptance."""
    warnings: list[str] = []
    if message_type != "ORU" or trigger not in ("R01", ""):
        shown = f"{message_type}^{trigger}" if trigger else message_type or "(empty)"
        raise Rejected(
            f"message type {shown} is not supported; this interface accepts ORU^R01 only",
            location="MSH-9",
            hl7_code="200" if message_type != "ORU" else "201",
        )
    if not trigger:
        warnings.append("MSH-9 has no trigger event; ORU taken as ORU^R01")
    if version in LENIENT_VERSIONS:
        warnings.append(f"HL7 version {version} is processed with the 2.5.1 ORU^R01 rules")
    elif version not in SUPPORTED_VERSIONS:
        raise Rejected(
            f"HL7 version {version or '(empty)'} of ORU^R01 is not supported; supported "
            "versions are 2.3, 2.3.1, 2.4, 2.5, 2.5.1 (2.6 and later accepted leniently)",
            location="MSH-12",
            hl7_code="203",
        )
    return warnings


def translate_message(
    message: Message,
    feed: FeedConfig,
    codes: CodeMap,
    warnings: list[str],
    systems: IdentifierSystems | None = None,
) -> Translation:
    """Map a parsed ORU^R01 to a Translation (the caller has checked type and version)."""
    builder = Builder(feed, codes, systems or IdentifierSystems.default(), warnings=warnings)
    for group in structure(message):
        patient_url = patient(builder, group)
        for order in group.orders:
            order_group(builder, order, patient_url)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": builder.entries}
    return Translation(bundle, list(builder.unmapped.values()), builder.warnings)
