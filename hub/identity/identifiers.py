"""Patient identifier systems: which ones the hub knows, what their values look like, masking.

The systems are data: the NamingSystems in ``fhir_profiles/naming-systems``. Each says, in
hub extensions, whether its values are personal data (``protected``: encrypted at rest,
searched by keyed hash, masked on display), whether an exact match links two records with
certainty (``deterministic``) and how values are validated (``gb11643`` for the resident ID,
an anchored ``pattern``, or ``none``). A region adds or re-labels systems by editing that data,
not this module; extra ``uniqueId`` entries become aliases that resolve to the canonical URI.

Hospital numbers (病案号, 门诊号, 住院号) are per hospital: their NamingSystems are templates
whose URI holds ``{organization}``, the hospital's Organization id, so that the same number
in two hospitals never collides.

The resident ID (居民身份证号码, GB 11643-1999) gets full validation: length, characters, the
ISO 7064 MOD 11-2 check character, a real birth date not in the future, a province-level area
code; legacy 15-digit numbers are upgraded to 18. Checksum and date arithmetic come from
python-stdnum (``stdnum.cn.ric``); its birth-place check is not used, because its area-code
table lags the official one and rejecting a real person's number is worse than accepting an
unlisted area.
"""

from __future__ import annotations

import datetime
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from stdnum.cn import ric
from stdnum.exceptions import ValidationError

from fhir_profiles import naming_systems

IDENTIFIER_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
HUB_IDENTIFIER_TYPE_SYSTEM = "https://yijian-hub.org/fhir/CodeSystem/identifier-type"

_EXTENSION_BASE = "https://yijian-hub.org/fhir/StructureDefinition/"
EXT_PROTECTED = _EXTENSION_BASE + "identifier-protected"
EXT_DETERMINISTIC = _EXTENSION_BASE + "identifier-deterministic"
EXT_VALIDATION = _EXTENSION_BASE + "identifier-validation"
EXT_PATTERN = _EXTENSION_BASE + "identifier-pattern"
EXT_ORGANIZATION_KIND = _EXTENSION_BASE + "identifier-organization-kind"
_EXT_TRANSLATION = "http://hl7.org/fhir/StructureDefinition/translation"

VALIDATIONS = frozenset({"gb11643", "pattern", "none"})
# Patient numbers (mrn, outpatient, inpatient) and order/result numbers a hospital assigns.
ORGANIZATION_KINDS = frozenset(
    {"mrn", "outpatient", "inpatient", "placer", "filler", "accession", "specimen", "result"}
)
ORGANIZATION_PLACEHOLDER = "{organization}"
MAX_OPAQUE_LENGTH = 64
"""Longest value accepted for a system validated ``none`` (hospital numbers)."""

# A FHIR resource id: what an Organization id, and so a template's {organization}, may be.
_ORGANIZATION_ID = r"[A-Za-z0-9\-.]{1,64}"
_ORGANIZATION_ID_RE = re.compile(_ORGANIZATION_ID)

# Province-level codes of GB/T 2260, plus 71 Taiwan and 81/82/83 for the residence permits of
# Hong Kong, Macao and Taiwan residents (港澳台居民居住证), whose numbers follow GB 11643.
_PROVINCES = frozenset(
    str(code)
    for code in (
        *range(11, 16),
        *range(21, 24),
        *range(31, 38),
        *range(41, 47),
        *range(50, 55),
        *range(61, 66),
        71,
        81,
        82,
        83,
    )
)
_EARLIEST_BIRTH_YEAR = 1850
_CHINA_STANDARD_TIME = datetime.timezone(datetime.timedelta(hours=8))


class InvalidIdentifier(ValueError):
    """An identifier value that its system does not allow.

    The message says what is wrong, in English, e.g. ``resident ID 110101199003070015: check
    character should be 1, not 5``. It quotes the value: mask it before logging it elsewhere.
    """


@dataclass(frozen=True)
class IdentifierSystem:
    """One identifier system, as its NamingSystem describes it."""

    key: str
    """The NamingSystem's id, which is its file's stem: ``resident-id``, ``organization-mrn``."""
    uri: str
    """Canonical system URI; for a hospital template it contains ``{organization}``."""
    aliases: tuple[str, ...]
    """Other URIs that mean the same system (``urn:oid:`` for OIDs); templates allowed."""
    name_zh: str
    name_en: str
    protected: bool
    """Values are personal data: encrypted at rest, searched by keyed hash, masked."""
    deterministic: bool
    """An exact match on a value links two records with certainty."""
    validation: str
    """``gb11643`` (resident ID), ``pattern`` or ``none`` (opaque, up to 64 characters)."""
    pattern: re.Pattern[str] | None
    """For ``pattern`` validation: matched against the whole normalised value."""
    organization_kind: str | None
    """``mrn``, ``outpatient`` or ``inpatient`` for a hospital template, else None."""

    @classmethod
    def from_naming_system(cls, resource: Mapping[str, Any]) -> IdentifierSystem:
        """Read one NamingSystem; raise ValueError when its hub extensions are inconsistent."""
        key = resource.get("id")
        if not isinstance(key, str) or not key:
            raise ValueError("NamingSystem without an id")
        extensions = {
            ext.get("url"): ext for ext in resource.get("extension", []) if isinstance(ext, dict)
        }
        uri, aliases = _unique_ids(key, resource.get("uniqueId", []))
        validation = extensions.get(EXT_VALIDATION, {}).get("valueCode", "none")
        if validation not in VALIDATIONS:
            raise ValueError(f"NamingSystem {key}: unknown validation {validation!r}")
        pattern_text = extensions.get(EXT_PATTERN, {}).get("valueString")
        if (validation == "pattern") != (pattern_text is not None):
            raise ValueError(f"NamingSystem {key}: a pattern goes with validation 'pattern'")
        kind = extensions.get(EXT_ORGANIZATION_KIND, {}).get("valueCode")
        if kind is not None and kind not in ORGANIZATION_KINDS:
            raise ValueError(f"NamingSystem {key}: unknown organization kind {kind!r}")
        if (kind is not None) != (ORGANIZATION_PLACEHOLDER in uri):
            raise ValueError(
                f"NamingSystem {key}: an organization kind goes with a URI holding "
                f"{ORGANIZATION_PLACEHOLDER}"
            )
        name_en, name_zh = _titles(resource)
        return cls(
            key=key,
            uri=uri,
            aliases=aliases,
            name_zh=name_zh,
            name_en=name_en,
            protected=extensions.get(EXT_PROTECTED, {}).get("valueBoolean", False) is True,
            deterministic=(
                extensions.get(EXT_DETERMINISTIC, {}).get("valueBoolean", False) is True
            ),
            validation=validation,
            pattern=re.compile(pattern_text) if pattern_text is not None else None,
            organization_kind=kind,
        )


def _unique_ids(key: str, unique_ids: Iterable[Mapping[str, Any]]) -> tuple[str, tuple[str, ...]]:
    """The canonical URI (the preferred ``uri`` uniqueId) and every other one as an alias."""
    uris: list[tuple[bool, str]] = []
    for unique in unique_ids:
        value = unique.get("value")
        if not isinstance(value, str) or not value:
            continue
        kind = unique.get("type")
        if kind == "oid" and not value.startswith("urn:oid:"):
            value = "urn:oid:" + value
        elif kind == "uuid" and not value.startswith("urn:uuid:"):
            value = "urn:uuid:" + value
        canonical_candidate = kind == "uri" and unique.get("preferred") is True
        uris.append((canonical_candidate, value))
    preferred = [value for candidate, value in uris if candidate]
    if len(preferred) != 1:
        raise ValueError(f"NamingSystem {key}: needs exactly one preferred uri uniqueId")
    canonical = preferred[0]
    aliases = tuple(dict.fromkeys(value for _, value in uris if value != canonical))
    return canonical, aliases


def _titles(resource: Mapping[str, Any]) -> tuple[str, str]:
    """English and Chinese display names: the ``translation`` extensions on ``name``.

    R4 NamingSystem has no ``title``; ``name`` is a machine name (``ResidentIdentityCard``)
    and its translations (``en``, ``zh-CN``) carry the names people read.
    """
    name = str(resource.get("name") or resource.get("id", ""))
    translations: dict[str, str] = {}
    element = resource.get("_name")
    for translation in element.get("extension", []) if isinstance(element, dict) else []:
        if translation.get("url") != _EXT_TRANSLATION:
            continue
        parts = {part.get("url"): part for part in translation.get("extension", [])}
        lang = str(parts.get("lang", {}).get("valueCode", "")).lower()
        content = parts.get("content", {}).get("valueString")
        if lang and isinstance(content, str) and content:
            translations.setdefault(lang.split("-")[0], content)
    name_en = translations.get("en", name)
    return name_en, translations.get("zh", name_en)


def _template_regex(template: str) -> re.Pattern[str]:
    """A regex matching a template URI with any Organization id in place of the placeholder."""
    before, _, after = template.partition(ORGANIZATION_PLACEHOLDER)
    return re.compile(
        re.escape(before) + f"(?P<organization>{_ORGANIZATION_ID})" + re.escape(after)
    )


class IdentifierSystems:
    """The identifier systems the hub knows: lookup by URI, normalisation, masking."""

    def __init__(self, systems: Iterable[IdentifierSystem]) -> None:
        self._systems: dict[str, IdentifierSystem] = {}
        # URI (canonical or alias) → system, for systems that are not templates.
        self._by_uri: dict[str, IdentifierSystem] = {}
        # (regex over canonical or alias template, system), for hospital templates.
        self._templates: list[tuple[re.Pattern[str], IdentifierSystem]] = []
        for system in systems:
            if system.key in self._systems:
                raise ValueError(f"identifier system {system.key} defined twice")
            self._systems[system.key] = system
            for uri in (system.uri, *system.aliases):
                if ORGANIZATION_PLACEHOLDER in uri:
                    self._templates.append((_template_regex(uri), system))
                elif uri in self._by_uri:
                    raise ValueError(f"identifier system URI {uri} used twice")
                else:
                    self._by_uri[uri] = system

    @classmethod
    def from_naming_systems(cls, resources: Iterable[Mapping[str, Any]]) -> IdentifierSystems:
        """Build from NamingSystem resources (JSON dicts)."""
        return cls(IdentifierSystem.from_naming_system(resource) for resource in resources)

    @classmethod
    def default(cls) -> IdentifierSystems:
        """The systems of ``fhir_profiles/naming-systems``, read once per process."""
        return _default_systems()

    def __iter__(self) -> Iterator[IdentifierSystem]:
        return iter(self._systems.values())

    def by_key(self, key: str) -> IdentifierSystem:
        """The system with this NamingSystem id (``resident-id``); KeyError when unknown."""
        return self._systems[key]

    def lookup(self, system: str | None) -> IdentifierSystem | None:
        """The system a URI names (canonical, alias or a hospital's template URI), or None."""
        if not system:
            return None
        found = self._by_uri.get(system)
        if found is not None:
            return found
        for regex, template in self._templates:
            if regex.fullmatch(system):
                return template
        return None

    def organization_of(self, system: str | None) -> str | None:
        """The Organization id in a hospital system URI (``.../sid/org/<id>/mrn``), or None."""
        if not system:
            return None
        for regex, _template in self._templates:
            match = regex.fullmatch(system)
            if match:
                return match["organization"]
        return None

    def canonical(self, system: str) -> str:
        """The canonical URI for an alias (hospital aliases keep their Organization id).

        Canonical and unknown URIs are returned unchanged.
        """
        found = self._by_uri.get(system)
        if found is not None:
            return found.uri
        for regex, template in self._templates:
            match = regex.fullmatch(system)
            if match:
                return template.uri.replace(ORGANIZATION_PLACEHOLDER, match["organization"])
        return system

    def organization_system(self, organization_id: str, kind: str) -> str:
        """The URI of one hospital's numbers of a kind (``mrn``, ``outpatient``, ``inpatient``).

        Raises ValueError for an unknown kind or a string that cannot be an Organization id.
        """
        if not _ORGANIZATION_ID_RE.fullmatch(organization_id):
            raise ValueError(f"not an Organization id: {organization_id!r}")
        for system in self._systems.values():
            if system.organization_kind == kind:
                return system.uri.replace(ORGANIZATION_PLACEHOLDER, organization_id)
        raise ValueError(f"no identifier system for hospital numbers of kind {kind!r}")

    def normalize(self, system: str | None, value: str) -> str:
        """The canonical form of a value in a system; InvalidIdentifier when it is not allowed.

        Full-width characters become ASCII (NFKC) and surrounding whitespace goes. Values of
        validated (national) systems also lose inner whitespace and are upper-cased; the
        resident ID is upgraded from 15 digits and fully checked. Hospital numbers keep their
        case and must be non-empty and at most 64 characters. Values of unknown systems are
        only stripped.
        """
        found = self.lookup(system)
        if found is None:
            return value.strip()
        text = unicodedata.normalize("NFKC", value).strip()
        if found.validation == "gb11643":
            return resident_id(text)
        if not text:
            raise InvalidIdentifier(f"{found.name_en}: the value is empty")
        if found.validation == "pattern":
            text = "".join(text.split()).upper()
            assert found.pattern is not None  # guaranteed by from_naming_system
            if not found.pattern.fullmatch(text):
                raise InvalidIdentifier(
                    f"{found.name_en} {text}: not of the form {found.pattern.pattern}"
                )
            return text
        if len(text) > MAX_OPAQUE_LENGTH:
            raise InvalidIdentifier(
                f"{found.name_en}: {len(text)} characters, at most {MAX_OPAQUE_LENGTH} allowed"
            )
        return text

    def mask(self, system: str | None, value: str) -> str:
        """A value as shown to people: protected values partly starred, others unchanged.

        Resident ID: first 4 and last 4 characters kept (``3301**********123X``). Other
        protected values: first 2 and last 2 kept; 4 characters or fewer: all but the last
        starred.
        """
        found = self.lookup(system)
        if found is None or not found.protected:
            return value
        text = value.strip()
        if found.validation == "gb11643" and len(text) > 8:
            return text[:4] + "*" * (len(text) - 8) + text[-4:]
        if len(text) <= 4:
            return "*" * (len(text) - 1) + text[-1:]
        return text[:2] + "*" * (len(text) - 4) + text[-2:]

    @property
    def protected_uris(self) -> frozenset[str]:
        """Canonical URIs of the systems whose values are personal data."""
        return frozenset(system.uri for system in self._systems.values() if system.protected)

    @property
    def deterministic_uris(self) -> frozenset[str]:
        """Canonical URIs of the systems on which an exact match links records with certainty."""
        return frozenset(system.uri for system in self._systems.values() if system.deterministic)


@cache
def _default_systems() -> IdentifierSystems:
    return IdentifierSystems.from_naming_systems(naming_systems())


def _check_character(body: str) -> str:
    """The ISO 7064 MOD 11-2 check character for the first 17 digits of a resident ID."""
    # stdnum's calc_check_digit takes the whole number and ignores its last character.
    check: str = ric.calc_check_digit(body + "0")
    return check


def _birth_date(number: str, shown: str) -> datetime.date:
    """The birth date of an 18-character number, checked; ``shown`` is quoted in messages."""
    digits = number[6:14]
    try:
        born: datetime.date = ric.get_birth_date(number)
    except ValidationError:
        raise InvalidIdentifier(
            f"resident ID {shown}: birth date {digits} is not a valid date"
        ) from None
    if born > datetime.datetime.now(_CHINA_STANDARD_TIME).date():
        raise InvalidIdentifier(f"resident ID {shown}: birth date {born} is in the future")
    if born.year < _EARLIEST_BIRTH_YEAR:
        raise InvalidIdentifier(
            f"resident ID {shown}: birth date {born} is before {_EARLIEST_BIRTH_YEAR}"
        )
    return born


def _check_area(number: str, shown: str) -> None:
    """The area code starts with a province-level code (or 9 and one, for foreigners)."""
    province = number[:2]
    if province in _PROVINCES or (number[0] == "9" and number[1:3] in _PROVINCES):
        return
    raise InvalidIdentifier(
        f"resident ID {shown}: area code {number[:6]} is not in a known province"
    )


def resident_id(value: str) -> str:
    """The normalised 18-character resident ID, or InvalidIdentifier saying what is wrong.

    Accepts full-width characters, inner and surrounding whitespace and a lowercase final x.
    A 15-digit legacy number is upgraded: '19' is inserted before its two-digit birth year and
    the check character appended.
    """
    number = "".join(unicodedata.normalize("NFKC", value).split()).upper()
    if not number:
        raise InvalidIdentifier("resident ID: the value is empty")
    if len(number) == 15:
        if not number.isascii() or not number.isdigit():
            raise InvalidIdentifier(
                f"resident ID {number}: a 15-digit legacy number has digits only"
            )
        body = number[:6] + "19" + number[6:]
        upgraded = body + _check_character(body)
        _check_area(upgraded, number)
        _birth_date(upgraded, number)
        return upgraded
    if len(number) != 18:
        raise InvalidIdentifier(
            f"resident ID {number}: {len(number)} characters, expected 18 "
            "(or 15 for a legacy number)"
        )
    body, last = number[:17], number[17]
    if not (body.isascii() and body.isdigit()) or last not in "0123456789X":
        raise InvalidIdentifier(
            f"resident ID {number}: only digits are allowed, and X as the final check character"
        )
    expected = _check_character(body)
    if last != expected:
        raise InvalidIdentifier(
            f"resident ID {number}: check character should be {expected}, not {last}"
        )
    _check_area(number, number)
    _birth_date(number, number)
    return number


def resident_id_birth_date(value: str) -> datetime.date:
    """The birth date a resident ID carries (validated first)."""
    number = resident_id(value)
    born: datetime.date = ric.get_birth_date(number)
    return born


def resident_id_gender(value: str) -> str:
    """``male`` or ``female``: the 17th digit of a resident ID is odd for men, even for women."""
    return "male" if int(resident_id(value)[16]) % 2 else "female"


def organization_kind_of(identifier: Mapping[str, Any]) -> str | None:
    """The kind of hospital number an Identifier without a system is, by its type.

    v2-0203 ``MR`` → ``mrn``; the hub's ``outpatient`` and ``inpatient`` → those. An
    Identifier with a system, or with no such type, → None (look its system up instead).
    """
    if identifier.get("system"):
        return None
    type_ = identifier.get("type")
    codings = type_.get("coding") if isinstance(type_, dict) else None
    if not isinstance(codings, list):
        return None
    for coding in codings:
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        if system == IDENTIFIER_TYPE_SYSTEM and code == "MR":
            return "mrn"
        if system == HUB_IDENTIFIER_TYPE_SYSTEM and code in ("outpatient", "inpatient"):
            return str(code)
    return None
