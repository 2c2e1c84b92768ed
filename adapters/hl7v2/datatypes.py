"""HL7 v2 data types read into plain Python / FHIR values.

TS/DTM → FHIR dateTime/instant (precision kept, zone from the value or the feed), CX, XPN,
XAD, XTN → FHIR Identifier pieces, HumanName, Address, ContactPoint; CE/CWE → codings; NM
text → a JSON number; SN → comparator/number/range/ratio. Every function is pure and raises
``ValueError`` with a message fit for the sender; ``oru`` adds the field location.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from adapters.hl7v2.message import Segment, comp

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"

# CE/CWE coding-system names (HL7 table 0396) the hub can turn into FHIR system URIs.
CODING_SYSTEMS: dict[str, str] = {
    "LN": LOINC,
    "LOINC": LOINC,
    "SCT": SNOMED,
    "SNM": SNOMED,
    "SNOMED": SNOMED,
    "SNOMED-CT": SNOMED,
    "UCUM": UCUM,
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I9CDX": "http://hl7.org/fhir/sid/icd-9-cm",
    "HL70078": "http://terminology.hl7.org/CodeSystem/v2-0078",
    "HL70136": "http://terminology.hl7.org/CodeSystem/v2-0136",
}

_TS = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<f>\d{1,9}))?(?P<z>[+-]\d{4})?$"
)
_NUMBER = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


@dataclass(frozen=True)
class Instant:
    """A parsed HL7 timestamp: its FHIR dateTime text and whether it has a time of day."""

    text: str  # FHIR dateTime, e.g. 2024-03-05T08:30:00+08:00 or 2024-03-05
    has_time: bool

    def instant(self) -> str | None:
        """As a FHIR instant (seconds and zone required), or None when only a date is known."""
        return self.text if self.has_time else None


@lru_cache(maxsize=32)
def zone(name: str) -> datetime.tzinfo:
    """A time zone by IANA name (the feed's), fixed +08:00 when the name is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return datetime.timezone(datetime.timedelta(hours=8))


def _offset_text(offset: datetime.timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


@lru_cache(maxsize=4096)
def parse_ts(value: str, default_zone: str = "Asia/Shanghai") -> Instant:
    """An HL7 TS/DTM ``YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]`` as a FHIR dateTime.

    The precision is kept down to the day; FHIR needs seconds once there is a time, so
    ``HHMM`` becomes ``HH:MM:00``. A time without a zone is in ``default_zone`` (the feed's).
    Raises ValueError for anything that is not a real date and time.
    """
    text = value.strip()
    match = _TS.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an HL7 timestamp (YYYYMMDDHHMMSS[+ZZZZ])")
    y, mo, d, h, mi, s, f, z = match.group("y", "mo", "d", "h", "mi", "s", "f", "z")
    if f and s is None:
        raise ValueError(f"{text!r}: fractional seconds without seconds")
    try:
        if h is None:
            if mo is None:
                datetime.date(int(y), 1, 1)
                return Instant(y, False)
            if d is None:
                datetime.date(int(y), int(mo), 1)
                return Instant(f"{y}-{mo}", False)
            datetime.date(int(y), int(mo), int(d))
            return Instant(f"{y}-{mo}-{d}", False)
        if d is None:
            raise ValueError(f"{text!r}: a time needs a full date")
        seconds = min(int(s or 0), 59)  # a leap second is stored as :59
        moment = datetime.datetime(int(y), int(mo or 1), int(d), int(h), int(mi or 0), seconds)
    except ValueError as error:
        if "needs a full date" in str(error):
            raise
        raise ValueError(f"{text!r} is not a valid date/time ({error})") from None
    if z:
        hours, minutes = int(z[1:3]), int(z[3:5])
        if hours > 14 or minutes > 59:
            raise ValueError(f"{text!r}: time zone offset {z} is out of range")
        offset_text = f"{z[0]}{z[1:3]}:{z[3:5]}"
    else:
        offset = zone(default_zone).utcoffset(moment) or datetime.timedelta(0)
        offset_text = _offset_text(offset)
    fraction = f".{f}" if f else ""
    return Instant(f"{moment:%Y-%m-%dT%H:%M:%S}{fraction}{offset_text}", True)


def now_ts(zone_name: str = "Asia/Shanghai") -> str:
    """The current time as an HL7 TS with zone: ``YYYYMMDDHHMMSS+0800``."""
    return datetime.datetime.now(zone(zone_name)).strftime("%Y%m%d%H%M%S%z")


def parse_number(text: str) -> int | float:
    """A JSON number for an NM value: an int when the text has no fraction, else a float.

    Full-width digits are accepted (NFKC). Raises ValueError for anything else. Trailing zeros
    of a decimal ("5.20") cannot survive a float; see ``oru`` for how that is handled.
    """
    cleaned = unicodedata.normalize("NFKC", text).strip().replace(",", "")
    if not _NUMBER.match(cleaned):
        raise ValueError(f"{text!r} is not a number")
    if "." in cleaned or "e" in cleaned or "E" in cleaned:
        # "5.0" stays a float so that it is still written with its decimal point.
        return float(cleaned)
    return int(cleaned)


def normalize_text(text: str) -> str:
    """Full-width ASCII → ASCII (NFKC), surrounding whitespace removed."""
    return unicodedata.normalize("NFKC", text).strip()


# ---------------------------------------------------------------- coded elements (CE/CWE)


@dataclass(frozen=True)
class Coded:
    """A CE/CWE: the primary code and the alternate code, each with text and system name."""

    code: str = ""
    text: str = ""
    system: str = ""
    alt_code: str = ""
    alt_text: str = ""
    alt_system: str = ""
    original_text: str = ""  # CWE.9

    @property
    def display_text(self) -> str:
        return self.original_text or self.text or self.alt_text or self.code

    def is_empty(self) -> bool:
        return not (self.code or self.text or self.alt_code or self.original_text)


def coded(segment: Segment, n: int, rep: int = 0) -> Coded:
    """Field ``n`` of a segment read as CE/CWE (subcomponents are ignored)."""
    v = segment.values(n, rep)
    if not v:
        return _EMPTY_CODED
    return Coded(
        code=comp(v, 1),
        text=comp(v, 2),
        system=comp(v, 3),
        alt_code=comp(v, 4),
        alt_text=comp(v, 5),
        alt_system=comp(v, 6),
        original_text=comp(v, 9),
    )


_EMPTY_CODED = Coded()


def fhir_system(name: str) -> str | None:
    """The FHIR system URI for a v2 coding-system name (LN, SCT...), or None."""
    return CODING_SYSTEMS.get(name.strip().upper()) if name else None


def codeable_concept(value: Coded, local_system: str | None = None) -> dict[str, Any]:
    """A CodeableConcept: codings for the codes whose system is known (or ``local_system``
    for a code with no system name), and the text."""
    codings: list[dict[str, Any]] = []
    for code, text, system_name in (
        (value.code, value.text, value.system),
        (value.alt_code, value.alt_text, value.alt_system),
    ):
        if not code:
            continue
        system = fhir_system(system_name) or (local_system if not system_name else None)
        if system is None:
            continue
        coding: dict[str, Any] = {"system": system, "code": code}
        if text:
            coding["display"] = text
        codings.append(coding)
    concept: dict[str, Any] = {}
    if codings:
        concept["coding"] = codings
    if value.display_text:
        concept["text"] = value.display_text
    return concept


# ---------------------------------------------------------------- people: CX, XPN, XAD, XTN


@dataclass(frozen=True)
class CX:
    """An extended identifier: value (CX.1), assigning authority (CX.4), type (CX.5)."""

    value: str
    authority: str  # CX.4.1 namespace id (or CX.4.2 universal id when .1 is empty)
    authority_uid: str  # CX.4.2 universal id (an OID or URI), may be empty
    type_code: str  # CX.5


def cx_list(segment: Segment, n: int) -> list[CX]:
    """Every repetition of a CX field that has a value."""
    result: list[CX] = []
    for rep in range(len(segment.repetitions(n))):
        value = segment.get(n, 1, rep)
        if not value:
            continue
        namespace = segment.get(n, 4, rep, 1)
        uid = segment.get(n, 4, rep, 2)
        result.append(CX(value, namespace or uid, uid, segment.get(n, 5, rep)))
    return result


_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def has_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


def human_name(segment: Segment, n: int, rep: int = 0) -> dict[str, Any] | None:
    """An XPN as a FHIR HumanName: ``text`` always, ``family``/``given`` when the sender split
    the name into components. A Chinese name in one component is kept whole in ``text`` and
    ``family`` is not guessed (compound surnames such as 欧阳 make guessing unsafe)."""
    family = segment.get(n, 1, rep, 1)
    given = [g for g in (segment.get(n, 2, rep), segment.get(n, 3, rep)) if g]
    prefix = segment.get(n, 5, rep)
    suffix = segment.get(n, 4, rep)
    if not family and not given:
        return None
    name: dict[str, Any] = {}
    use = {"L": "official", "D": "usual", "A": "anonymous", "M": "maiden", "N": "nickname"}.get(
        segment.get(n, 7, rep)
    )
    if use:
        name["use"] = use
    if given:
        chinese = has_chinese(family) or any(has_chinese(g) for g in given)
        joiner = "" if chinese else " "
        name["text"] = family + "".join(given) if chinese else joiner.join([*given, family]).strip()
        if family:
            name["family"] = family
        name["given"] = given
    else:
        name["text"] = family
        if not has_chinese(family):
            name["family"] = family
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name


def address(segment: Segment, n: int, rep: int = 0) -> dict[str, Any] | None:
    """An XAD as a FHIR Address with a ``text`` composed in Chinese order (province first)."""
    street = segment.get(n, 1, rep, 1)
    other = segment.get(n, 2, rep)
    city = segment.get(n, 3, rep)
    state = segment.get(n, 4, rep)
    postal = segment.get(n, 5, rep)
    country = segment.get(n, 6, rep)
    kind = segment.get(n, 7, rep)
    district = segment.get(n, 9, rep)
    if not any((street, other, city, state, postal, district)):
        return None
    result: dict[str, Any] = {}
    use = {"H": "home", "O": "work", "B": "work", "C": "temp", "M": "home"}.get(kind)
    if use:
        result["use"] = use
    lines = [line for line in (street, other) if line]
    chinese = any(has_chinese(part) for part in (street, other, city, state, district))
    if chinese:
        # 上海市上海市: a municipality is both the province and the city; say it once.
        places = (state, city if city != state else "", district, *lines)
        result["text"] = "".join(p for p in places if p)
    else:
        result["text"] = ", ".join(p for p in (*lines, city, state, postal, country) if p)
    if lines:
        result["line"] = lines
    if city:
        result["city"] = city
    if district:
        result["district"] = district
    if state:
        result["state"] = state
    if postal:
        result["postalCode"] = postal
    if country:
        result["country"] = country
    return result


_PHONE_USE = {"PRN": "home", "WPN": "work", "ORN": "mobile", "VHN": "temp", "EMR": "home"}


def contact_points(segment: Segment, n: int, work: bool = False) -> list[dict[str, Any]]:
    """Every XTN repetition as a FHIR ContactPoint (phone, mobile, email, fax)."""
    result: list[dict[str, Any]] = []
    for rep in range(len(segment.repetitions(n))):
        use_code = segment.get(n, 2, rep)
        equipment = segment.get(n, 3, rep).upper()
        email = segment.get(n, 4, rep)
        if email or equipment in ("INTERNET", "X.400"):
            if email or segment.get(n, 1, rep):
                result.append({"system": "email", "value": email or segment.get(n, 1, rep)})
            continue
        number = segment.get(n, 12, rep)  # XTN.12 unformatted
        if not number:
            parts = [segment.get(n, 5, rep), segment.get(n, 6, rep), segment.get(n, 7, rep)]
            local = parts[2]
            if local:
                country = f"+{parts[0].lstrip('+')} " if parts[0] else ""
                area = f"{parts[1]}-" if parts[1] else ""
                number = f"{country}{area}{local}"
                extension = segment.get(n, 8, rep)
                if extension:
                    number += f" ext. {extension}"
        if not number:
            number = segment.get(n, 1, rep)
        if not number:
            continue
        point: dict[str, Any] = {"system": "fax" if equipment == "FX" else "phone"}
        point["value"] = number
        if equipment == "CP" or (number.startswith("1") and len(number) == 11 and not work):
            point["use"] = "mobile"
        elif work:
            point["use"] = "work"
        elif use_code in _PHONE_USE:
            point["use"] = _PHONE_USE[use_code]
        result.append(point)
    return result
