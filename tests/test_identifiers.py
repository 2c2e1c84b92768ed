"""Identifier systems: the NamingSystem data, resident ID validation, normalisation, masking.

Pure unit tests: no database, no hub.
"""

from __future__ import annotations

import datetime
import re

import pytest
from pypinyin import Style, lazy_pinyin

import fhir_profiles
from hub.identity.identifiers import (
    HUB_IDENTIFIER_TYPE_SYSTEM,
    IDENTIFIER_TYPE_SYSTEM,
    IdentifierSystem,
    IdentifierSystems,
    InvalidIdentifier,
    organization_kind_of,
    resident_id,
    resident_id_birth_date,
    resident_id_gender,
)
from tests.demographics import (
    AREAS,
    FEMALE_GIVEN,
    MALE_GIVEN,
    Demographics,
    patient_resource,
    resident_check_character,
    resident_id_for,
    split_name,
)

SID = "https://yijian-hub.org/fhir/sid/"
RESIDENT = SID + "resident-id"
PASSPORT = SID + "passport"
HK_MACAO = SID + "hk-macao-permit"
TAIWAN = SID + "taiwan-permit"
INSURANCE = SID + "insurance-person"
HEALTH_CARD = SID + "health-card"


@pytest.fixture(scope="module")
def systems() -> IdentifierSystems:
    return IdentifierSystems.default()


def _with_check(body: str) -> str:
    return body + resident_check_character(body)


# -- the data ----------------------------------------------------------------------------------


def test_naming_systems_are_loaded_in_filename_order_with_ids_matching_files() -> None:
    resources = fhir_profiles.naming_systems()
    ids = [resource["id"] for resource in resources]
    assert ids == sorted(ids)
    assert set(ids) == {
        "resident-id",
        "insurance-person",
        "health-card",
        "passport",
        "hk-macao-permit",
        "taiwan-permit",
        "organization-mrn",
        "organization-outpatient",
        "organization-inpatient",
        # order and result numbers, for the resources inbound adapters write
        "organization-placer",
        "organization-filler",
        "organization-accession",
        "organization-specimen",
        "organization-result",
    }
    for resource in resources:
        assert resource["resourceType"] == "NamingSystem"
        assert resource["status"] == "active"
        assert resource["kind"] == "identifier"
        assert resource["publisher"] == "Yijian Hub"
        assert resource["date"] and resource["description"] and resource["usage"]


def test_system_flags(systems: IdentifierSystems) -> None:
    assert systems.protected_uris == {
        RESIDENT,
        INSURANCE,
        HEALTH_CARD,
        PASSPORT,
        HK_MACAO,
        TAIWAN,
    }
    assert systems.deterministic_uris == {RESIDENT, INSURANCE}
    resident = systems.by_key("resident-id")
    assert resident.validation == "gb11643"
    assert (resident.name_zh, resident.name_en) == ("居民身份证", "Resident Identity Card")
    mrn = systems.by_key("organization-mrn")
    assert mrn.uri == SID + "org/{organization}/mrn"
    assert (mrn.protected, mrn.deterministic, mrn.validation) == (False, False, "none")
    assert mrn.name_zh == "病案号"


def test_identifier_type_codesystem() -> None:
    (codesystem,) = [
        c for c in fhir_profiles.codesystems() if c["url"] == HUB_IDENTIFIER_TYPE_SYSTEM
    ]
    codes = {concept["code"]: concept for concept in codesystem["concept"]}
    assert codes["outpatient"]["designation"][0]["value"] == "门诊号"
    assert codes["inpatient"]["designation"][0]["value"] == "住院号"


# -- resident ID -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", ["11010519491231002X", "360426199101010071", "110101199003070011"]
)
def test_valid_resident_ids(number: str) -> None:
    assert resident_id(number) == number


def test_fifteen_digit_numbers_are_upgraded() -> None:
    assert resident_id("110105491231002") == "11010519491231002X"
    assert resident_id_birth_date("110105491231002") == datetime.date(1949, 12, 31)


def test_full_width_whitespace_and_lowercase_x_are_normalised() -> None:
    assert resident_id(" １１０１０５１９４９１２３１００２ｘ ") == "11010519491231002X"
    assert resident_id("11010519491231002x") == "11010519491231002X"
    assert resident_id("110105 19491231 002X") == "11010519491231002X"


@pytest.mark.parametrize(
    ("number", "message"),
    [
        (
            "110101199003070015",
            "resident ID 110101199003070015: check character should be 1, not 5",
        ),
        ("11010519491231002", "resident ID 11010519491231002: 17 characters, expected 18"),
        ("1101051949123100", "16 characters, expected 18 (or 15 for a legacy number)"),
        ("1101051949A231002X", "only digits are allowed, and X as the final check character"),
        ("11010519491231002Y", "only digits are allowed, and X as the final check character"),
        ("11010519491231X02X", "only digits are allowed, and X as the final check character"),
        ("11010549123100X", "a 15-digit legacy number has digits only"),
        ("", "resident ID: the value is empty"),
    ],
)
def test_malformed_resident_ids_are_rejected(number: str, message: str) -> None:
    with pytest.raises(InvalidIdentifier, match=re.escape(message)):
        resident_id(number)


def test_impossible_birth_date_is_rejected() -> None:
    number = _with_check("11010519990230001")
    with pytest.raises(
        InvalidIdentifier, match=f"resident ID {number}: birth date 19990230 is not a valid date"
    ):
        resident_id(number)


def test_future_birth_date_is_rejected() -> None:
    future = datetime.date.today() + datetime.timedelta(days=400)
    number = _with_check(f"110105{future:%Y%m%d}001")
    with pytest.raises(
        InvalidIdentifier, match=f"birth date {future.isoformat()} is in the future"
    ):
        resident_id(number)


def test_fifteen_digit_number_with_an_invalid_date_is_rejected() -> None:
    with pytest.raises(
        InvalidIdentifier, match="resident ID 110105990230001: birth date 19990230 is not a valid"
    ):
        resident_id("110105990230001")


def test_unknown_province_is_rejected() -> None:
    number = _with_check("00010519491231002")
    with pytest.raises(InvalidIdentifier, match="area code 000105 is not in a known province"):
        resident_id(number)


def test_birth_date_and_gender() -> None:
    assert resident_id_birth_date("11010519491231002X") == datetime.date(1949, 12, 31)
    assert resident_id_gender("11010519491231002X") == "female"
    assert resident_id_gender("360426199101010071") == "male"
    with pytest.raises(InvalidIdentifier):
        resident_id_gender("110101199003070015")


# -- normalise through the systems -------------------------------------------------------------


def test_normalize_per_system(systems: IdentifierSystems) -> None:
    assert systems.normalize(RESIDENT, " 11010519491231002x") == "11010519491231002X"
    assert systems.normalize(PASSPORT, "ｅ１２３４５６７８") == "E12345678"
    assert systems.normalize(HK_MACAO, "h12345678 01") == "H1234567801"
    assert systems.normalize(TAIWAN, " 01234567 ") == "01234567"
    assert systems.normalize(INSURANCE, "44010604164970515011") == "44010604164970515011"
    mrn = SID + "org/hosp-1/mrn"
    assert systems.normalize(mrn, " ｍｒ-0012 ") == "mr-0012"
    assert systems.normalize("urn:example:other", "  Ａb ") == "Ａb"
    assert systems.normalize(None, " x ") == "x"


@pytest.mark.parametrize(
    ("system", "value", "message"),
    [
        (RESIDENT, "110101199003070015", "check character should be 1, not 5"),
        (PASSPORT, "E12", r"Passport E12: not of the form \^\[A-Z0-9\]\{5,17\}\$"),
        (HK_MACAO, "X12345678", "Hong Kong and Macao Residents X12345678: not of the form"),
        (TAIWAN, "1234567", "Taiwan Residents 1234567: not of the form"),
        (INSURANCE, "  ", "Medical insurance person number: the value is empty"),
        (SID + "org/h1/inpatient", "", "Hospital inpatient number: the value is empty"),
        (SID + "org/h1/mrn", "9" * 65, "65 characters, at most 64 allowed"),
    ],
)
def test_normalize_rejects(
    systems: IdentifierSystems, system: str, value: str, message: str
) -> None:
    with pytest.raises(InvalidIdentifier, match=message):
        systems.normalize(system, value)


# -- masking -----------------------------------------------------------------------------------


def test_mask(systems: IdentifierSystems) -> None:
    assert systems.mask(RESIDENT, "33010219800101123X") == "3301**********123X"
    assert systems.mask(PASSPORT, "E12345678") == "E1*****78"
    assert systems.mask(TAIWAN, "12345678") == "12****78"
    assert systems.mask(PASSPORT, "ABCD") == "***D"
    assert systems.mask(PASSPORT, "A") == "A"
    assert systems.mask(SID + "org/h1/mrn", "MR0012") == "MR0012"
    assert systems.mask("urn:example:other", "secret") == "secret"
    assert systems.mask(None, "secret") == "secret"


# -- lookup, aliases, hospital templates -------------------------------------------------------


def test_lookup_and_organization_templates(systems: IdentifierSystems) -> None:
    resident = systems.lookup(RESIDENT)
    assert resident is not None and resident.key == "resident-id"
    mrn = systems.lookup(SID + "org/abc/mrn")
    assert mrn is not None and mrn.key == "organization-mrn"
    assert mrn.organization_kind == "mrn"
    inpatient = systems.lookup(SID + "org/hosp.2-x/inpatient")
    assert inpatient is not None and inpatient.organization_kind == "inpatient"
    assert systems.organization_of(SID + "org/abc/outpatient") == "abc"
    assert systems.organization_of(RESIDENT) is None
    assert systems.lookup(SID + "org/a/b/mrn") is None
    assert systems.lookup(SID + "org//mrn") is None
    assert systems.lookup("urn:example:other") is None
    assert systems.lookup(None) is None
    assert systems.lookup("") is None


def test_organization_system(systems: IdentifierSystems) -> None:
    assert systems.organization_system("abc", "mrn") == SID + "org/abc/mrn"
    assert systems.organization_system("abc", "outpatient") == SID + "org/abc/outpatient"
    assert systems.organization_system("abc", "inpatient") == SID + "org/abc/inpatient"
    with pytest.raises(ValueError, match="kind 'visit'"):
        systems.organization_system("abc", "visit")
    with pytest.raises(ValueError, match="not an Organization id"):
        systems.organization_system("a/b", "mrn")


def _with_aliases() -> IdentifierSystems:
    """The default systems with aliases added, as a region would add them to the data."""
    resources = fhir_profiles.naming_systems()
    for resource in resources:
        if resource["id"] == "resident-id":
            resource["uniqueId"] += [
                {"type": "other", "value": "urn:example:region:sfz"},
                {"type": "oid", "value": "2.16.156.10011.1.3"},
                {"type": "uri", "value": "http://example.org/sid/sfz", "preferred": False},
            ]
        if resource["id"] == "organization-mrn":
            resource["uniqueId"].append(
                {"type": "other", "value": "urn:example:region:{organization}:bah"}
            )
    return IdentifierSystems.from_naming_systems(resources)


def test_aliases_resolve_to_the_canonical_system() -> None:
    systems = _with_aliases()
    resident = systems.by_key("resident-id")
    assert resident.aliases == (
        "urn:example:region:sfz",
        "urn:oid:2.16.156.10011.1.3",
        "http://example.org/sid/sfz",
    )
    for alias in resident.aliases:
        assert systems.lookup(alias) is resident
        assert systems.canonical(alias) == RESIDENT
        assert systems.normalize(alias, "11010519491231002x") == "11010519491231002X"
        assert systems.mask(alias, "11010519491231002X") == "1101**********002X"
    assert systems.canonical(RESIDENT) == RESIDENT
    assert systems.canonical("urn:example:unknown") == "urn:example:unknown"
    alias = "urn:example:region:h7:bah"
    assert systems.lookup(alias) is systems.by_key("organization-mrn")
    assert systems.canonical(alias) == SID + "org/h7/mrn"
    assert systems.organization_of(alias) == "h7"
    assert systems.protected_uris == IdentifierSystems.default().protected_uris


def test_inconsistent_naming_system_is_refused() -> None:
    resources = fhir_profiles.naming_systems()
    passport = next(r for r in resources if r["id"] == "passport")
    passport["extension"] = [
        ext for ext in passport["extension"] if not ext["url"].endswith("identifier-pattern")
    ]
    with pytest.raises(ValueError, match="passport: a pattern goes with validation 'pattern'"):
        IdentifierSystem.from_naming_system(passport)
    twice = fhir_profiles.naming_systems()
    twice.append(dict(twice[0], id="copy"))
    with pytest.raises(ValueError, match="used twice"):
        IdentifierSystems.from_naming_systems(twice)


def test_organization_kind_of() -> None:
    def typed(system: str, code: str) -> dict[str, object]:
        return {"type": {"coding": [{"system": system, "code": code}]}, "value": "1"}

    assert organization_kind_of(typed(IDENTIFIER_TYPE_SYSTEM, "MR")) == "mrn"
    assert organization_kind_of(typed(HUB_IDENTIFIER_TYPE_SYSTEM, "outpatient")) == "outpatient"
    assert organization_kind_of(typed(HUB_IDENTIFIER_TYPE_SYSTEM, "inpatient")) == "inpatient"
    assert organization_kind_of(typed(IDENTIFIER_TYPE_SYSTEM, "NI")) is None
    assert organization_kind_of(typed(HUB_IDENTIFIER_TYPE_SYSTEM, "MR")) is None
    assert organization_kind_of({**typed(IDENTIFIER_TYPE_SYSTEM, "MR"), "system": RESIDENT}) is None
    assert organization_kind_of({"value": "1"}) is None
    assert organization_kind_of({"type": "MR", "value": "1"}) is None


# -- the demographics generator ----------------------------------------------------------------


def test_generated_ids_validate_and_agree_with_the_person(systems: IdentifierSystems) -> None:
    people = Demographics(seed=7)
    seen: set[str] = set()
    for _ in range(500):
        person = people.person()
        for other in (person, people.twin(person), people.namesake(person)):
            assert resident_id(other.resident_id) == other.resident_id
            assert resident_id_birth_date(other.resident_id) == other.birth_date
            assert resident_id_gender(other.resident_id) == other.gender
            assert other.resident_id not in seen
            seen.add(other.resident_id)
            assert systems.normalize(INSURANCE, other.insurance_number)
            assert len(other.phone) == 11 and other.phone[:2] in {"13", "15", "18", "19"}


def test_generated_people_are_deterministic_and_consistent() -> None:
    first = [Demographics(seed=3).person() for _ in range(3)]
    again = [Demographics(seed=3).person() for _ in range(3)]
    assert first == again
    people = Demographics(seed=3)
    areas = {area.code: area for area in AREAS}
    for _ in range(200):
        person = people.person()
        area = areas[person.area_code]
        assert person.address["state"] == area.state
        assert person.address["district"] == area.district
        pool = MALE_GIVEN if person.gender == "male" else FEMALE_GIVEN
        assert 1 <= len(person.given) <= 2 and set(person.given) <= set(pool)
        assert datetime.date(1930, 1, 1) <= person.birth_date <= datetime.date(2024, 12, 31)


def test_twin_namesake_and_typo() -> None:
    people = Demographics(seed=11)
    person = people.person(family="欧阳", given="明", gender="male")
    assert person.name == "欧阳明"
    twin = people.twin(person)
    assert (twin.family, twin.birth_date, twin.phone) == (
        person.family,
        person.birth_date,
        person.phone,
    )
    assert twin.address == person.address and twin.given != person.given
    assert twin.resident_id[:14] == person.resident_id[:14]
    assert twin.resident_id[14:17] != person.resident_id[14:17]
    namesake = people.namesake(person)
    assert (namesake.name, namesake.birth_date) == (person.name, person.birth_date)
    assert namesake.area_code != person.area_code and namesake.phone != person.phone
    for _ in range(50):
        typo = people.typo_of(person.name)
        family, given = split_name(typo)
        assert family == "欧阳" and given != "明"
        assert lazy_pinyin(given, style=Style.NORMAL) == ["ming"]
    with pytest.raises(ValueError, match="no known homophone"):
        people.typo_of("王二")


def test_resident_id_for_and_patient_resource() -> None:
    assert resident_id_for("110105", datetime.date(1949, 12, 31), 2, "female") == (
        "11010519491231002X"
    )
    with pytest.raises(ValueError, match="odd = male"):
        resident_id_for("110105", datetime.date(1949, 12, 31), 2, "male")
    person = Demographics(seed=1).person()
    patient = patient_resource(person, "h1", "MR-9", id="p1")
    assert patient["id"] == "p1"
    assert [i["system"] for i in patient["identifier"]] == [RESIDENT, SID + "org/h1/mrn"]
    assert patient["name"][0] == {
        "use": "official",
        "text": person.name,
        "family": person.family,
        "given": [person.given],
    }
    assert patient["birthDate"] == person.birth_date.isoformat()
    assert patient["managingOrganization"] == {"reference": "Organization/h1"}
    bare = patient_resource(person, "h1", with_resident_id=False)
    assert "identifier" not in bare
