"""FHIR search through HTTP: parameter types, modifiers, prefixes, chains, paging, sorting,
includes, result parameters, error handling and hostile input.

Every test creates its own data, made unique with ``unique()`` (a code system, an identifier
system or a patient of its own) and restricts its searches to that data, so tests are
independent of each other and of other test files sharing the session's database.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.access_support import order_for
from tests.conftest import Client, observation, patient, unique

Params = list[tuple[str, str]] | dict[str, str]

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
UCUM = "http://unitsofmeasure.org"


# -- helpers ------------------------------------------------------------------------------------


def create(client: Client, resource: dict[str, Any]) -> str:
    response = client.post(f"/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def search(
    client: Client, resource_type: str, params: Params, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    response = client.get(f"/{resource_type}", params=params, headers=headers or {})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resourceType"] == "Bundle" and body["type"] == "searchset"
    return body


def fetch(client: Client, url: str) -> dict[str, Any]:
    response = client.get(url)
    assert response.status_code == 200, response.text
    return response.json()


def matches(bundle: dict[str, Any]) -> list[str]:
    """Ids of the ``match`` entries, in bundle order."""
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == "match"
    ]


def included(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (e["resource"]["resourceType"], e["resource"]["id"])
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode") == "include"
    ]


def found(client: Client, resource_type: str, params: Params) -> set[str]:
    """The ids a search matches (the result must fit one page and hold no duplicates)."""
    bundle = search(client, resource_type, params)
    ids = matches(bundle)
    assert len(ids) == len(set(ids)), f"duplicates in {ids}"
    assert link(bundle, "next") is None, "expected a single page"
    return set(ids)


def link(bundle: dict[str, Any], relation: str) -> str | None:
    for item in bundle.get("link", []):
        if item["relation"] == relation:
            return str(item["url"])
    return None


def query_of(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


def all_pages(client: Client, resource_type: str, params: Params) -> list[list[str]]:
    """Follow ``next`` links from the first page to the end; the match ids of each page."""
    bundle = search(client, resource_type, params)
    pages = [matches(bundle)]
    while (url := link(bundle, "next")) is not None:
        bundle = fetch(client, url)
        pages.append(matches(bundle))
        assert len(pages) < 100, "paging does not end"
    return pages


def assert_outcome(response: Any, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"] and body["issue"][0]["severity"] in ("error", "fatal")
    for fragment in fragments:
        assert fragment in response.text


def lab(
    org: str,
    pid: str,
    code: str | dict[str, Any] = "718-7",
    system: str = "http://loinc.org",
    **fields: Any,
) -> dict[str, Any]:
    """An Observation of ``pid`` coded ``system|code`` (or a given CodeableConcept)."""
    resource = observation(org, pid, **fields)
    resource["code"] = (
        code if isinstance(code, dict) else {"coding": [{"system": system, "code": code}]}
    )
    return resource


def new_patient(client: Client, **fields: Any) -> str:
    return create(client, patient(client.organization, **fields))


def people(client: Client, names: list[dict[str, Any]], **fields: Any) -> tuple[str, list[str]]:
    """Patients with the given HumanNames, all in one fresh identifier system."""
    system = f"https://test.example/people/{unique()}"
    ids = [
        create(
            client,
            patient(
                client.organization,
                identifier=[{"system": system, "value": unique()}],
                name=[name],
                **fields,
            ),
        )
        for name in names
    ]
    return system, ids


# -- tokens -------------------------------------------------------------------------------------


def test_token_system_code_forms(hospital_a: Client) -> None:
    """``system|code``, ``code``, ``|code``, ``system|``, comma OR, repeated-parameter AND."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)
    mine, other = f"https://test.example/codes/{unique()}", f"https://test.example/o/{unique()}"

    def coded(*codings: dict[str, str]) -> str:
        return create(hospital_a, lab(org, pid, code={"coding": list(codings)}))

    a_mine = coded({"system": mine, "code": "A"})
    a_other = coded({"system": other, "code": "A"})
    a_bare = coded({"code": "A"})
    b_mine = coded({"system": mine, "code": "B"})
    both = coded({"system": mine, "code": "A"}, {"system": other, "code": "A"})
    comma = coded({"system": mine, "code": "1,2"})

    def code(*values: str) -> set[str]:
        return found(hospital_a, "Observation", [("patient", pid)] + [("code", v) for v in values])

    assert code(f"{mine}|A") == {a_mine, both}
    assert code("A") == {a_mine, a_other, a_bare, both}
    assert code("|A") == {a_bare}
    assert code(f"{mine}|") == {a_mine, b_mine, both, comma}
    assert code(f"{mine}|B,{other}|A") == {b_mine, a_other, both}
    assert code(f"{mine}|A", f"{other}|A") == {both}
    assert code(f"{mine}|Z") == set()
    assert code("https://test.example/nowhere|A") == set()
    assert code(f"{mine}|1\\,2") == {comma}  # an escaped comma is part of the code
    assert code(f"{mine}|1") == set()
    assert code(f"{mine}|a") == set()  # codes are case-sensitive
    assert found(hospital_a, "Observation", {"patient": pid, "code:not": f"{mine}|A"}) == {
        a_other,
        a_bare,
        b_mine,
        comma,
    }


def test_status_category_not_and_missing(hospital_a: Client) -> None:
    """``status``, ``category`` (with and without system), ``:not``, ``:missing`` and AND."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)
    vital = [{"coding": [{"system": CATEGORY, "code": "vital-signs"}]}]
    final_lab = create(hospital_a, lab(org, pid))
    prelim_lab = create(hospital_a, lab(org, pid, status="preliminary"))
    amended_vital = create(hospital_a, lab(org, pid, status="amended", category=vital))
    no_category = lab(org, pid, status="final")
    del no_category["category"]
    final_none = create(hospital_a, no_category)

    def where(**params: str) -> set[str]:
        return found(hospital_a, "Observation", {"patient": pid, **params})

    assert where(status="final") == {final_lab, final_none}
    assert where(status="final,amended") == {final_lab, final_none, amended_vital}
    assert where(**{"status:not": "final"}) == {prelim_lab, amended_vital}
    assert where(category="laboratory") == {final_lab, prelim_lab}
    assert where(category=f"{CATEGORY}|vital-signs") == {amended_vital}
    assert where(category=f"{CATEGORY}|") == {final_lab, prelim_lab, amended_vital}
    assert where(**{"category:not": "laboratory"}) == {amended_vital, final_none}
    assert where(**{"category:missing": "true"}) == {final_none}
    assert where(**{"category:missing": "false"}) == {final_lab, prelim_lab, amended_vital}
    assert where(status="final", category="laboratory") == {final_lab}
    assert where(status="preliminary", category="vital-signs") == set()


def test_identifier_search(hospital_a: Client, hospital_b: Client, doctor: Client) -> None:
    """Identifiers by ``system|value``, by value alone, ``|value``; rows stay access-filtered."""
    org = hospital_a.organization
    mrn = f"MRN-{unique()}"
    mrn_system = f"https://yijian.example/mrn/{org}"
    pid = new_patient(hospital_a, mrn=mrn)
    lis = f"https://test.example/lis/{unique()}"
    accession = f"LAB-{unique()}"
    oid = create(hospital_a, lab(org, pid, identifier=[{"system": lis, "value": accession}]))
    bare = f"BARE-{unique()}"
    bare_oid = create(hospital_a, lab(org, pid, identifier=[{"value": bare}]))

    assert found(hospital_a, "Patient", {"identifier": f"{mrn_system}|{mrn}"}) == {pid}
    assert found(hospital_a, "Patient", {"identifier": mrn}) == {pid}
    assert found(hospital_a, "Patient", {"identifier": f"https://other.example|{mrn}"}) == set()
    assert found(hospital_a, "Observation", {"identifier": f"{lis}|{accession}"}) == {oid}
    assert found(hospital_a, "Observation", {"identifier": accession}) == {oid}
    assert found(hospital_a, "Observation", {"identifier": f"|{accession}"}) == set()
    assert found(hospital_a, "Observation", {"identifier": f"|{bare}"}) == {bare_oid}
    assert found(hospital_a, "Observation", {"identifier": f"{lis}|"}) == {oid}
    assert found(hospital_a, "Observation", {"_id": f"{oid},{bare_oid}"}) == {oid, bare_oid}
    assert found(hospital_a, "Observation", {"patient": pid, "_id:not": oid}) == {bare_oid}
    # Another hospital does not see hospital A's records; a doctor ordering for the patient does.
    assert found(hospital_b, "Patient", {"identifier": f"{mrn_system}|{mrn}"}) == set()
    assert found(doctor, "Patient", {"identifier": f"{mrn_system}|{mrn}"}) == set()
    order_for(doctor, pid)
    # The doctor finds the record and the hub's master record of the person, which carries
    # every identifier of its sources.
    master = found(doctor, "Patient", {"link": f"Patient/{pid}"})
    assert len(master) == 1
    assert found(doctor, "Patient", {"identifier": f"{mrn_system}|{mrn}"}) == {pid} | master


# -- dates --------------------------------------------------------------------------------------


def test_observation_date_prefixes_and_precisions(hospital_a: Client) -> None:
    """Date prefixes compare ranges at each value's precision; no zone means Asia/Shanghai."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)
    issued = "2024-01-01T00:00:00+08:00"

    def at(when: str) -> str:
        return create(hospital_a, lab(org, pid, when=when, issued=issued))

    o2020 = at("2020-06-15T10:00:00+08:00")
    late_utc = at("2021-03-04T23:30:00Z")  # 2021-03-05 07:30 in Shanghai
    new_year = at("2022-01-01")  # a whole day in Shanghai: [2021-12-31T16:00Z, 2022-01-01T16:00Z)
    year_2023 = at("2023")  # the whole year
    fraction = at("2024-02-29T12:00:00.123+08:00")
    everything = {o2020, late_utc, new_year, year_2023, fraction}

    def date(*values: str) -> set[str]:
        return found(hospital_a, "Observation", [("patient", pid)] + [("date", v) for v in values])

    assert date("2021") == {late_utc}
    assert date("eq2021") == {late_utc}
    assert date("2021-03") == {late_utc}
    assert date("2021-03-05") == {late_utc}  # the Shanghai day, not the UTC one
    assert date("2021-03-04") == set()
    assert date("2021-03-04T23:30:00Z") == {late_utc}
    assert date("2021-03-05T07:30:00+08:00") == {late_utc}
    assert date("2021-03-05T07:30:00") == {late_utc}  # no zone: Asia/Shanghai
    assert date("2021-03-04T23:30:00+08:00") == set()
    assert date("2022-01-01") == {new_year}
    assert date("2023") == {year_2023}
    assert date("2023-05") == set()  # a year is not within a month
    assert date("2024-02-29") == {fraction}
    assert date("2024-02-29T12:00:00.123+08:00") == {fraction}
    assert date("ge2021") == {late_utc, new_year, year_2023, fraction}
    assert date("gt2021") == {new_year, year_2023, fraction}
    assert date("gt2021-03-04T23:30:00Z") == {new_year, year_2023, fraction}
    assert date("ge2021-03-04T23:30:00Z") == everything - {o2020}
    assert date("lt2021-03-05") == {o2020}
    assert date("le2021-03-05") == {o2020, late_utc}
    assert date("lt2021-03-04T23:30:00Z") == {o2020}
    assert date("le2021-03-04T23:30:00Z") == {o2020, late_utc}
    assert date("ge2023-05") == {year_2023, fraction}  # the year overlaps May onwards
    assert date("le2023-05") == {o2020, late_utc, new_year, year_2023}
    assert date("ne2021") == everything - {late_utc}
    assert date("sa2021") == {new_year, year_2023, fraction}
    assert date("eb2021") == {o2020}
    assert date("eb2022-01-01") == {o2020, late_utc}
    assert date("2020,2022") == {o2020, new_year}  # comma: OR
    assert date("ge2020-06-15T10:00:00+08:00", "lt2021") == {o2020}  # repeated: AND
    assert date("ge2025") == set()


def test_diagnostic_report_issued(hospital_a: Client) -> None:
    """DiagnosticReport ``issued`` (an instant) with eq, ge, gt, le and lt."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)

    def report(issued: str) -> str:
        return create(hospital_a, diagnostic_report(org, pid, issued=issued))

    first = report("2021-05-01T08:00:00+08:00")
    second = report("2021-05-02T08:00:00+08:00")

    def issued(value: str) -> set[str]:
        return found(hospital_a, "DiagnosticReport", {"subject": pid, "issued": value})

    assert issued("2021-05-01") == {first}
    assert issued("2021-05-01T00:00:00Z") == {first}
    assert issued("ge2021-05-02") == {second}
    assert issued("gt2021-05-01") == {second}
    assert issued("lt2021-05-02") == {first}
    assert issued("le2021-05-02") == {first, second}
    assert issued("2021-05") == {first, second}
    assert issued("lt2021-05-01T08:00:00+08:00") == set()


def test_imaging_study_started_and_modality(hospital_a: Client) -> None:
    """ImagingStudy ``started`` prefixes combined with ``modality`` tokens."""
    pid = new_patient(hospital_a)

    def study(started: str, *modalities: str) -> str:
        return create(hospital_a, imaging_study(pid, started, *modalities))

    ct_2021 = study("2021-05-01T09:00:00+08:00", "CT")
    mr_2022 = study("2022-02-01T09:00:00+08:00", "MR")
    ct_mr_2022 = study("2022-03-01T09:00:00+08:00", "CT", "MR")

    def where(**params: str) -> set[str]:
        return found(hospital_a, "ImagingStudy", {"patient": pid, **params})

    assert where(modality="CT") == {ct_2021, ct_mr_2022}
    assert where(modality=f"{DCM}|MR") == {mr_2022, ct_mr_2022}
    assert where(modality="US") == set()
    assert where(started="ge2022") == {mr_2022, ct_mr_2022}
    assert where(started="lt2022-03-01") == {ct_2021, mr_2022}
    assert where(started="2021-05-01") == {ct_2021}
    assert where(modality="CT", started="ge2022") == {ct_mr_2022}
    assert where(**{"modality:not": "CT"}) == {mr_2022}


def test_patient_birthdate(hospital_a: Client) -> None:
    """Patient ``birthdate`` (a date) at year and day precision with prefixes."""
    system = f"https://test.example/people/{unique()}"

    def born(day: str) -> str:
        return create(
            hospital_a,
            patient(
                hospital_a.organization,
                identifier=[{"system": system, "value": unique()}],
                birthDate=day,
            ),
        )

    old, middle, young = born("1950-01-01"), born("1990-06-15"), born("2010-12-31")

    def birthdate(value: str) -> set[str]:
        return found(hospital_a, "Patient", {"identifier": f"{system}|", "birthdate": value})

    assert birthdate("1990") == {middle}
    assert birthdate("1990-06-15") == {middle}
    assert birthdate("1990-06-16") == set()
    assert birthdate("lt1990-06-15") == {old}
    assert birthdate("le1990-06-15") == {old, middle}
    assert birthdate("ge1990-06-15") == {middle, young}
    assert birthdate("gt1990") == {young}
    assert birthdate("ne1990") == {old, young}


def test_last_updated(hospital_a: Client) -> None:
    """``_lastUpdated`` with eq/ge/gt/lt/le against the server's meta.lastUpdated."""
    system = f"https://test.example/people/{unique()}"

    def make() -> dict[str, Any]:
        body = patient(hospital_a.organization, identifier=[{"system": system, "value": unique()}])
        response = hospital_a.post("/Patient", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    first = make()
    time.sleep(0.01)
    second = make()
    lu1, lu2 = first["meta"]["lastUpdated"], second["meta"]["lastUpdated"]
    assert lu1 < lu2

    def since(value: str) -> set[str]:
        return found(hospital_a, "Patient", {"identifier": f"{system}|", "_lastUpdated": value})

    assert since(lu1) == {first["id"]}
    assert since(f"ge{lu1}") == {first["id"], second["id"]}
    assert since(f"gt{lu1}") == {second["id"]}
    assert since(f"lt{lu2}") == {first["id"]}
    assert since(f"le{lu2}") == {first["id"], second["id"]}
    assert since("lt2000-01-01") == set()
    assert since("ge2000") == {first["id"], second["id"]}


# -- strings ------------------------------------------------------------------------------------


def test_patient_name_string_matching(hospital_a: Client) -> None:
    """``name``: prefix, case- and accent-insensitive; ``:exact``; ``:contains``; Chinese names."""
    tag = unique()
    system, (zhang, muller, wang, li) = people(
        hospital_a,
        [
            {"family": f"Zhang{tag}", "given": ["Wei"]},
            {"family": "Müller", "given": ["Anna"]},
            {"family": "王", "given": ["芳"]},
            {"family": "李", "given": ["小", "龙"], "text": "李小龙"},
        ],
    )

    def name(value: str, modifier: str = "") -> set[str]:
        key = f"name:{modifier}" if modifier else "name"
        return found(hospital_a, "Patient", {"identifier": f"{system}|", key: value})

    assert name(f"Zhang{tag}") == {zhang}
    assert name(f"zhang{tag}") == {zhang}  # case-insensitive
    assert name(f"ZHANG{tag[:4]}") == {zhang}  # prefix
    assert name("wei") == {zhang}  # given name
    assert name(f"hang{tag}") == set()  # not a prefix
    assert name(f"hang{tag}", "contains") == {zhang}
    assert name("ülle", "contains") == {muller}
    assert name("muller") == {muller}  # accent-insensitive
    assert name("Müller", "exact") == {muller}
    assert name("müller", "exact") == set()  # :exact is case-sensitive
    assert name(f"Zhang{tag[:4]}", "exact") == set()  # :exact is whole-value
    assert name("王芳") == {wang}  # family + given, written together
    assert name("王") == {wang}
    assert name("芳") == {wang}
    assert name("王芳", "exact") == {wang}
    assert name("芳王") == set()
    assert name("李小龙") == {li}
    assert name("小龙", "contains") == {li}
    assert name("王,李") == {wang, li}  # comma: OR
    assert found(
        hospital_a, "Patient", [("identifier", f"{system}|"), ("name", "王"), ("name", "芳")]
    ) == {wang}
    assert found(hospital_a, "Patient", {"identifier": f"{system}|", "family": "王"}) == {wang}
    assert found(hospital_a, "Patient", {"identifier": f"{system}|", "given": "芳"}) == {wang}


def test_patient_gender(hospital_a: Client) -> None:
    """``gender`` is a token: exact codes, OR lists and ``:not``."""
    system = f"https://test.example/people/{unique()}"

    def person(gender: str) -> str:
        body = patient(
            hospital_a.organization,
            identifier=[{"system": system, "value": unique()}],
            gender=gender,
        )
        return create(hospital_a, body)

    female, male, other = person("female"), person("male"), person("other")

    def gender(value: str, key: str = "gender") -> set[str]:
        return found(hospital_a, "Patient", {"identifier": f"{system}|", key: value})

    assert gender("female") == {female}
    assert gender("male") == {male}  # not a prefix match
    assert gender("male,other") == {male, other}
    assert gender("female", "gender:not") == {male, other}


# -- references ---------------------------------------------------------------------------------


def test_reference_forms(hospital_a: Client) -> None:
    """``subject``/``patient`` by ``Type/id``, by id and by ``:Type``; ``performer``."""
    org = hospital_a.organization
    pid, other_pid = new_patient(hospital_a), new_patient(hospital_a)
    code = f"https://test.example/codes/{unique()}"
    mine = create(hospital_a, lab(org, pid, "X", code))
    theirs = create(hospital_a, lab(org, other_pid, "X", code))

    def where(**params: str) -> set[str]:
        return found(hospital_a, "Observation", {"code": f"{code}|", **params})

    assert where(subject=f"Patient/{pid}") == {mine}
    assert where(subject=pid) == {mine}
    assert where(**{"subject:Patient": pid}) == {mine}
    assert where(patient=pid) == {mine}
    assert where(patient=f"Patient/{pid}") == {mine}
    assert where(subject=f"Patient/{pid},Patient/{other_pid}") == {mine, theirs}
    assert where(subject=f"Group/{pid}") == set()
    assert where(subject="Patient/no-such-patient") == set()
    assert where(performer=f"Organization/{org}") == {mine, theirs}
    assert where(performer=org) == {mine, theirs}
    assert where(performer="Organization/no-such-org") == set()
    assert where(**{"encounter:missing": "true"}) == {mine, theirs}


def test_based_on_and_encounter_references(hospital_a: Client) -> None:
    """``based-on`` (Observation, DiagnosticReport) and ``encounter`` reference searches."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)
    order = create(hospital_a, service_request(org, pid))
    visit = create(hospital_a, encounter(org, pid))
    ordered = create(
        hospital_a,
        lab(
            org,
            pid,
            basedOn=[{"reference": f"ServiceRequest/{order}"}],
            encounter={"reference": f"Encounter/{visit}"},
        ),
    )
    walk_in = create(hospital_a, lab(org, pid))
    report = create(
        hospital_a,
        diagnostic_report(org, pid, basedOn=[{"reference": f"ServiceRequest/{order}"}]),
    )

    def obs(**params: str) -> set[str]:
        return found(hospital_a, "Observation", {"patient": pid, **params})

    assert obs(**{"based-on": f"ServiceRequest/{order}"}) == {ordered}
    assert obs(**{"based-on": order}) == {ordered}
    assert obs(encounter=f"Encounter/{visit}") == {ordered}
    assert obs(encounter=visit) == {ordered}
    assert obs(**{"encounter:missing": "true"}) == {walk_in}
    assert obs(**{"based-on:missing": "false"}) == {ordered}
    assert found(hospital_a, "DiagnosticReport", {"based-on": f"ServiceRequest/{order}"}) == {
        report
    }
    assert found(hospital_a, "Encounter", {"patient": pid}) == {visit}
    assert found(hospital_a, "ServiceRequest", {"subject": f"Patient/{pid}"}) == {order}


def test_encounter_period_dates(hospital_a: Client) -> None:
    """A Period is indexed as a range: closed periods overlap, an open end reaches the future."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)
    stay = create(
        hospital_a,
        {
            **encounter(org, pid),
            "period": {"start": "2021-01-01T08:00:00+08:00", "end": "2021-01-03T08:00:00+08:00"},
        },
    )
    ongoing = create(
        hospital_a,
        {
            **encounter(org, pid),
            "status": "in-progress",
            "period": {"start": "2021-06-01T08:00:00+08:00"},
        },
    )

    def date(value: str) -> set[str]:
        return found(hospital_a, "Encounter", {"subject": pid, "date": value})

    assert date("2021-01") == {stay}  # the stay lies within January
    assert date("2021-01-02") == set()  # a day does not contain a three-day stay
    assert date("ge2021-01-02") == {stay, ongoing}  # overlapping counts
    assert date("lt2021-01-02") == {stay}
    assert date("gt2021-02") == {ongoing}
    assert date("ge2099") == {ongoing}  # no end: still going
    assert date("sa2020") == {stay, ongoing}
    assert date("eb2021-01-04") == {stay}


def test_chained_patient_identifier(hospital_a: Client) -> None:
    """``patient.identifier``, ``subject:Patient.identifier`` and ``subject.identifier``."""
    org = hospital_a.organization
    system = f"https://test.example/ids/{unique()}"
    pid = new_patient(hospital_a, identifier=[{"system": system, "value": "P1"}])
    other = new_patient(hospital_a, identifier=[{"system": system, "value": "P2"}])
    mine = create(hospital_a, lab(org, pid))
    create(hospital_a, lab(org, other))
    report = create(hospital_a, diagnostic_report(org, pid))

    def obs(key: str, value: str) -> set[str]:
        return found(hospital_a, "Observation", {key: value})

    assert obs("patient.identifier", f"{system}|P1") == {mine}
    assert obs("subject:Patient.identifier", f"{system}|P1") == {mine}
    assert obs("subject.identifier", f"{system}|P1") == {mine}
    assert obs("patient.identifier", f"{system}|P3") == set()
    assert obs("patient.identifier", "https://test.example/elsewhere|P1") == set()
    assert found(
        hospital_a, "DiagnosticReport", {"subject:Patient.identifier": f"{system}|P1"}
    ) == {report}
    # A chained criterion ANDs with the others.
    assert (
        found(
            hospital_a, "Observation", {"patient.identifier": f"{system}|P1", "status": "amended"}
        )
        == set()
    )


# -- quantities ---------------------------------------------------------------------------------


def test_value_quantity(hospital_a: Client) -> None:
    """``value-quantity`` with prefixes, implicit precision and ``|system|code`` units."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)

    def measured(value: float, unit: str = "g/dL") -> str:
        resource = lab(org, pid, value=value)
        resource["valueQuantity"].update(unit=unit, code=unit)
        return create(hospital_a, resource)

    low = measured(9.5)
    normal = measured(13.2)
    high = measured(15)
    molar = measured(13.2, "mmol/L")

    def value(*values: str) -> set[str]:
        return found(
            hospital_a, "Observation", [("patient", pid)] + [("value-quantity", v) for v in values]
        )

    assert value("gt10") == {normal, high, molar}
    assert value("13.2") == {normal, molar}
    assert value("13") == {normal, molar}  # 13 means [12.5, 13.5)
    assert value("13.20") == {normal, molar}
    assert value("13.3") == set()
    assert value("13.2||g/dL") == {normal}
    assert value(f"13.2|{UCUM}|g/dL") == {normal}
    assert value(f"13.2|{UCUM}|mmol/L") == {molar}
    assert value("lt13.2") == {low}
    assert value("le13.2") == {low, normal, molar}
    assert value("ge15") == {high}
    assert value("gt15") == set()
    assert value("ne13.2") == {low, high}
    assert value("9.5,15") == {low, high}
    assert value("gt9.5", "lt15") == {normal, molar}
    assert value("gt10||mmol/L") == {molar}


# -- paging -------------------------------------------------------------------------------------


def _labs(client: Client, n: int, **fields: Any) -> tuple[str, list[str]]:
    pid = new_patient(client)
    return pid, [create(client, lab(client.organization, pid, **fields)) for _ in range(n)]


def test_count_paging_next_and_previous(hospital_a: Client) -> None:
    """``_count`` pages: next to the end with no gaps or duplicates; previous walks back."""
    pid, ids = _labs(hospital_a, 7)
    first = search(hospital_a, "Observation", {"patient": pid, "_count": "3"})
    assert len(matches(first)) == 3
    assert link(first, "previous") is None
    next_url = link(first, "next")
    assert next_url is not None
    assert ("patient", pid) in query_of(next_url) and ("_count", "3") in query_of(next_url)
    assert ("_count", "3") in query_of(link(first, "self") or "")

    second = fetch(hospital_a, next_url)
    third = fetch(hospital_a, link(second, "next") or "")
    assert [len(matches(b)) for b in (second, third)] == [3, 1]
    assert link(third, "next") is None
    walked = matches(first) + matches(second) + matches(third)
    assert sorted(walked) == sorted(ids)  # every result once, none missing

    back_to_second = fetch(hospital_a, link(third, "previous") or "")
    assert matches(back_to_second) == matches(second)
    back_to_first = fetch(hospital_a, link(back_to_second, "previous") or "")
    assert matches(back_to_first) == matches(first)
    assert link(back_to_first, "previous") is None
    assert link(back_to_first, "next") is not None

    assert all_pages(hospital_a, "Observation", {"patient": pid, "_count": "1"}) == [
        [i] for i in walked
    ]
    assert found(hospital_a, "Observation", {"patient": pid, "_count": "7"}) == set(ids)


def test_paging_stays_correct_while_data_changes(hospital_a: Client) -> None:
    """Rows added (and an already-seen row deleted) between pages cause no skips or repeats."""
    pid, originals = _labs(hospital_a, 6)
    first = search(hospital_a, "Observation", {"patient": pid, "_count": "2"})
    seen = matches(first)
    added = [create(hospital_a, lab(hospital_a.organization, pid)) for _ in range(3)]
    assert hospital_a.delete(f"/Observation/{seen[0]}").status_code == 204
    url = link(first, "next")
    while url is not None:
        page = fetch(hospital_a, url)
        seen += matches(page)
        url = link(page, "next")
    assert len(seen) == len(set(seen)), f"duplicates: {seen}"
    assert set(originals) <= set(seen)
    assert set(seen) <= set(originals) | set(added)

    # Newest first: rows created after page 1 sort before the cursor and do not disturb it.
    pid, originals = _labs(hospital_a, 5)
    params = {"patient": pid, "_count": "2", "_sort": "-_lastUpdated"}
    first = search(hospital_a, "Observation", params)
    seen = matches(first)
    for _ in range(3):
        create(hospital_a, lab(hospital_a.organization, pid))
    url = link(first, "next")
    while url is not None:
        page = fetch(hospital_a, url)
        seen += matches(page)
        url = link(page, "next")
    assert seen == list(reversed(originals))


def test_sort_by_date(hospital_a: Client) -> None:
    """``_sort=date`` and ``-date`` order by effective date, also consistently across pages."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)
    issued = "2024-01-01T00:00:00+08:00"
    days = ["2021-03-01", "2021-01-01", "2021-02-01", "2021-02-01", "2020-12-31", "2021-04-01"]
    by_id = {
        create(hospital_a, lab(org, pid, when=f"{d}T08:00:00+08:00", issued=issued)): d
        for d in days
    }

    for sort, reverse in (("date", False), ("-date", True)):
        params = {"patient": pid, "_sort": sort}
        ordered = matches(search(hospital_a, "Observation", params))
        assert set(ordered) == set(by_id)
        assert [by_id[i] for i in ordered] == sorted(days, reverse=reverse)
        for count in ("1", "2", "3", "4"):
            paged = all_pages(hospital_a, "Observation", {**params, "_count": count})
            assert [i for page in paged for i in page] == ordered, (sort, count)
        assert ("_sort", sort) in query_of(
            link(search(hospital_a, "Observation", {**params, "_count": "2"}), "next") or ""
        )


def test_sort_by_date_with_missing_values_pages_cleanly(hospital_a: Client) -> None:
    """Resources without the sort value sort last in both directions and page without repeats."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)
    issued = "2024-01-01T00:00:00+08:00"
    dated = [
        create(hospital_a, lab(org, pid, when=f"2021-0{m}-01T08:00:00+08:00", issued=issued))
        for m in (3, 1, 2)
    ]
    undated = []
    for _ in range(3):
        resource = lab(org, pid)
        del resource["effectiveDateTime"]
        undated.append(create(hospital_a, resource))

    for sort, expected_dated in (
        ("date", [dated[1], dated[2], dated[0]]),
        ("-date", [dated[0], dated[2], dated[1]]),
    ):
        whole = matches(search(hospital_a, "Observation", {"patient": pid, "_sort": sort}))
        assert whole[:3] == expected_dated, sort
        assert sorted(whole[3:]) == sorted(undated), sort
        for count in ("1", "2", "4"):
            pages = all_pages(
                hospital_a, "Observation", {"patient": pid, "_sort": sort, "_count": count}
            )
            assert [i for page in pages for i in page] == whole, (sort, count)


def test_sort_by_last_updated(hospital_a: Client) -> None:
    """``_sort=_lastUpdated`` and ``-_lastUpdated`` follow write order, updates included."""
    system = f"https://test.example/people/{unique()}"
    ids = []
    for _ in range(4):
        body = patient(hospital_a.organization, identifier=[{"system": system, "value": unique()}])
        ids.append(create(hospital_a, body))
    params = {"identifier": f"{system}|"}

    def ordered(sort: str, count: str = "50") -> list[str]:
        pages = all_pages(hospital_a, "Patient", {**params, "_sort": sort, "_count": count})
        return [i for page in pages for i in page]

    assert ordered("_lastUpdated") == ids
    assert ordered("-_lastUpdated") == ids[::-1]
    assert ordered("_lastUpdated", "3") == ids

    current = hospital_a.get(f"/Patient/{ids[0]}").json()
    updated = hospital_a.put(f"/Patient/{ids[0]}", json={**current, "gender": "male"})
    assert updated.status_code == 200, updated.text
    assert ordered("_lastUpdated") == ids[1:] + ids[:1]
    assert ordered("-_lastUpdated", "1") == (ids[1:] + ids[:1])[::-1]


def test_sort_by_quantity_string_and_several_keys(hospital_a: Client) -> None:
    """``_sort`` on a quantity, a string and two keys; next and previous agree while sorted."""
    org = hospital_a.organization
    pid = new_patient(hospital_a)
    values = [13.2, 9.5, 15, 13.2, 11]
    statuses = ["final", "amended", "final", "amended", "final"]
    ids = [
        create(hospital_a, lab(org, pid, value=v, status=st))
        for v, st in zip(values, statuses, strict=True)
    ]
    value_of = dict(zip(ids, values, strict=True))
    status_of = dict(zip(ids, statuses, strict=True))

    def walk(sort: str, count: str) -> list[str]:
        pages = all_pages(
            hospital_a, "Observation", {"patient": pid, "_sort": sort, "_count": count}
        )
        return [i for page in pages for i in page]

    ascending = walk("value-quantity", "50")
    assert [value_of[i] for i in ascending] == sorted(values)
    assert walk("value-quantity", "2") == ascending
    descending = walk("-value-quantity", "2")
    assert [value_of[i] for i in descending] == sorted(values, reverse=True)

    two_keys = walk("status,-value-quantity", "50")
    assert [(status_of[i], value_of[i]) for i in two_keys] == [
        ("amended", 13.2),
        ("amended", 9.5),
        ("final", 15),
        ("final", 13.2),
        ("final", 11),
    ]
    assert walk("status,-value-quantity", "2") == two_keys
    assert walk("status,-value-quantity", "1") == two_keys

    # previous from the last page walks the same order backwards
    params = {"patient": pid, "_sort": "-value-quantity", "_count": "2"}
    bundle = search(hospital_a, "Observation", params)
    forward = [matches(bundle)]
    while (url := link(bundle, "next")) is not None:
        bundle = fetch(hospital_a, url)
        forward.append(matches(bundle))
    backward = [matches(bundle)]
    while (url := link(bundle, "previous")) is not None:
        bundle = fetch(hospital_a, url)
        backward.append(matches(bundle))
    assert backward == forward[::-1]

    system, people_ids = people(
        hospital_a,
        [
            {"family": "Chen", "given": ["B"]},
            {"family": "abbott", "given": ["C"]},
            {"family": "Baker", "given": ["A"]},
        ],
    )
    by_family = all_pages(
        hospital_a, "Patient", {"identifier": f"{system}|", "_sort": "family", "_count": "1"}
    )
    assert [i for page in by_family for i in page] == [people_ids[1], people_ids[2], people_ids[0]]


# -- includes and result parameters -------------------------------------------------------------


def test_include_and_revinclude(hospital_a: Client) -> None:
    """``_include=Observation:subject`` and ``_revinclude=Observation:subject`` (mode include)."""
    org = hospital_a.organization
    pid, obs = _labs(hospital_a, 3)

    bundle = search(hospital_a, "Observation", {"patient": pid, "_include": "Observation:subject"})
    assert sorted(matches(bundle)) == sorted(obs)
    assert included(bundle) == [("Patient", pid)]  # once, although three results cite it
    assert found(hospital_a, "Observation", {"patient": pid}) == set(obs)  # no includes unasked

    typed = search(
        hospital_a, "Observation", {"patient": pid, "_include": "Observation:subject:Patient"}
    )
    assert included(typed) == [("Patient", pid)]
    performer = search(
        hospital_a, "Observation", {"patient": pid, "_include": "Observation:performer"}
    )
    assert included(performer) == [("Organization", org)]

    reverse = search(hospital_a, "Patient", {"_id": pid, "_revinclude": "Observation:subject"})
    assert matches(reverse) == [pid]
    assert sorted(included(reverse)) == sorted(("Observation", o) for o in obs)
    entry = next(e for e in reverse["entry"] if e["resource"]["resourceType"] == "Observation")
    assert entry["fullUrl"].endswith(f"/Observation/{entry['resource']['id']}")


def test_diagnostic_report_include_result(hospital_a: Client) -> None:
    """``_include=DiagnosticReport:result`` brings in the report's Observations."""
    org = hospital_a.organization
    pid, obs = _labs(hospital_a, 2)
    create(hospital_a, lab(org, pid))  # not a result of the report
    report = create(
        hospital_a,
        diagnostic_report(org, pid, result=[{"reference": f"Observation/{o}"} for o in obs]),
    )
    bundle = search(
        hospital_a,
        "DiagnosticReport",
        {"subject": pid, "_include": "DiagnosticReport:result"},
    )
    assert matches(bundle) == [report]
    assert sorted(included(bundle)) == sorted(("Observation", o) for o in obs)
    both = search(
        hospital_a,
        "DiagnosticReport",
        [
            ("subject", pid),
            ("_include", "DiagnosticReport:result"),
            ("_include", "DiagnosticReport:subject"),
        ],
    )
    assert sorted(included(both)) == sorted([("Observation", o) for o in obs] + [("Patient", pid)])


def test_summary_count_and_total(hospital_a: Client) -> None:
    """``_summary=count`` gives only the total; ``_total=accurate`` counts beyond the page."""
    pid, _ = _labs(hospital_a, 5)
    counted = search(hospital_a, "Observation", {"patient": pid, "_summary": "count"})
    assert counted["total"] == 5
    assert not counted.get("entry")
    assert search(hospital_a, "Observation", {"patient": pid, "_count": "0"})["total"] == 5
    nothing = search(
        hospital_a, "Observation", {"patient": pid, "status": "cancelled", "_summary": "count"}
    )
    assert nothing["total"] == 0

    accurate = search(
        hospital_a, "Observation", {"patient": pid, "_count": "2", "_total": "accurate"}
    )
    assert accurate["total"] == 5
    assert len(matches(accurate)) == 2
    page2 = fetch(hospital_a, link(accurate, "next") or "")
    assert len(matches(page2)) == 2
    assert page2.get("total") in (None, 5)


def test_search_by_post(hospital_a: Client) -> None:
    """``POST [type]/_search`` with a form body finds what GET finds and pages the same way."""
    pid, obs = _labs(hospital_a, 3)
    response = hospital_a.post(
        "/Observation/_search",
        data={"patient": pid, "_count": "2"},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200, response.text
    first = response.json()
    assert first["type"] == "searchset" and len(matches(first)) == 2
    rest = fetch(hospital_a, link(first, "next") or "")
    assert sorted(matches(first) + matches(rest)) == sorted(obs)


# -- unknown parameters and bad values ----------------------------------------------------------


def test_unknown_parameters_lenient_by_default(hospital_a: Client) -> None:
    """Unknown parameters are ignored (not filtering, not echoed in self) unless strict."""
    pid, obs = _labs(hospital_a, 2)
    for headers in ({}, {"Prefer": "handling=lenient"}):
        bundle = search(
            hospital_a,
            "Observation",
            {"patient": pid, "no-such-param": "x", "_nonsense": "1"},
            headers=headers,
        )
        assert sorted(matches(bundle)) == sorted(obs)
        self_link = link(bundle, "self") or ""
        assert ("patient", pid) in query_of(self_link)
        assert "no-such-param" not in self_link and "_nonsense" not in self_link

    strict = hospital_a.get(
        "/Observation",
        params={"patient": pid, "no-such-param": "x"},
        headers={"Prefer": "handling=strict"},
    )
    assert_outcome(strict, 400, "no-such-param")
    ok = search(hospital_a, "Observation", {"patient": pid}, {"Prefer": "handling=strict"})
    assert sorted(matches(ok)) == sorted(obs)


@pytest.mark.parametrize(
    ("resource_type", "params"),
    [
        ("Observation", {"_sort": "no-such-param"}),
        ("Observation", {"_sort": "-nonsense"}),
        ("Observation", {"_sort": "subject"}),  # references cannot be sorted
        ("Observation", {"date": "2021-13-01"}),
        ("Observation", {"date": "yesterday"}),
        ("Observation", {"date": "ge2021-02-30"}),
        ("Observation", {"date": "2021-03-04T25:00:00Z"}),
        ("Patient", {"birthdate": "19860314"}),
        ("Patient", {"_lastUpdated": "soon"}),
        ("Observation", {"_count": "abc"}),
        ("Observation", {"_count": "-1"}),
        ("Observation", {"_count": "2.5"}),
        ("Observation", {"value-quantity": "gtabc"}),
        ("Patient", {"name:sounds-like": "wang"}),
        ("Patient", {"gender:missing": "maybe"}),
        ("Observation", {"code.identifier": "x"}),  # a token cannot be chained
        ("Observation", {"_include": "Observation"}),
        ("Observation", {"_include": "Observation:code"}),
        ("Observation", {"_cursor": "not-a-cursor"}),
        ("Observation", {"_summary": "nonsense"}),
        ("Observation", {"_total": "lots"}),
        # Out-of-range values must be rejected before they reach PostgreSQL (never a 500).
        ("Observation", {"date": "2021-01-01T00:00:00+99:99"}),
        ("Observation", {"date": "2021-01-01T00:00:00-24:00"}),
        ("Observation", {"date": "0001-01-01T00:00:00+14:00"}),
        ("Observation", {"date": "9999-12-31T23:59:59-14:00"}),
        ("Observation", {"_lastUpdated": "9999-12-31T23:59:59.999999-14:00"}),
        ("Observation", {"value-quantity": "1e999999"}),
        ("Observation", {"value-quantity": "gt1e-999999"}),
        ("Observation", {"value-quantity": "NaN"}),
        ("Observation", {"value-quantity": "sNaN"}),
        ("Observation", {"value-quantity": "Infinity"}),
        ("Patient", {"name": "a\x00b"}),
        ("Patient", {"identifier": "a\x00b"}),
        ("Patient", {"_id": "\x00"}),
        ("Observation", {"subject": "\x00"}),
        ("Observation", {"value-quantity": "5||\x00"}),
    ],
)
def test_bad_search_input_is_400(hospital_a: Client, resource_type: str, params: dict) -> None:
    """Malformed values, unknown sort keys and bad modifiers are 400 OperationOutcomes."""
    assert_outcome(hospital_a.get(f"/{resource_type}", params=params), 400)


def _cursor(raw: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/Observation", {"_sort": "date", "_cursor": _cursor([0, ["garbage"], 1])}),
        ("/Observation", {"_sort": "date", "_cursor": _cursor([0, [None], 1])}),
        ("/Observation", {"_sort": "date", "_cursor": _cursor([0, [{"a": 1}], 1])}),
        ("/Observation", {"_sort": "value-quantity", "_cursor": _cursor([0, ["x"], 1])}),
        ("/Observation", {"_sort": "value-quantity", "_cursor": _cursor([0, ["1e99999"], 1])}),
        ("/Observation", {"_sort": "value-quantity", "_cursor": _cursor([0, ["sNaN"], 1])}),
        ("/Observation", {"_cursor": _cursor([0, [], 2**64 - 1])}),
        ("/Observation", {"_cursor": _cursor([0, [], True])}),
        ("/Observation", {"_cursor": _cursor([0, ["extra"], 1])}),
        ("/Observation", {"_cursor": _cursor({"a": 1})}),
        ("/Observation/_history", {"_cursor": _cursor([0, [], 1])}),
        ("/Observation/_history", {"_cursor": _cursor([0, ["x", "y"], 1])}),
        ("/Observation/_history", {"_cursor": _cursor([0, ["2021-01-01T00:00:00Z", 2**40], 1])}),
        ("/Observation/_history", {"_cursor": _cursor([0, ["0001-01-01T00:00:00+14:00", 1], 1])}),
        ("/Observation/_history", {"_since": "0001-01-01T00:00:00+14:00"}),
        ("/Observation/_history", {"_since": "9999-12-31T23:59:59-14:00"}),
    ],
)
def test_tampered_cursors_and_edge_instants_are_400(
    hospital_a: Client, path: str, params: dict
) -> None:
    """A client-made ``_cursor`` or an instant outside PostgreSQL's range is a 400, not a 500."""
    assert_outcome(hospital_a.get(path, params=params), 400)


# -- hostile input ------------------------------------------------------------------------------


def test_sql_looking_values_match_nothing_unexpected(hospital_a: Client, admin: Client) -> None:
    """Quotes, LIKE wildcards and backslashes in values are data, never SQL or patterns."""
    tag = unique()
    system, (plain, odd) = people(
        hospital_a,
        [
            {"family": f"Plain{tag}", "given": ["Jo"]},
            {"family": f"100%_o'k\\{tag}", "given": ["Al"]},
        ],
    )
    scoped = {"identifier": f"{system}|"}

    def name(value: str, key: str = "name") -> set[str]:
        return found(hospital_a, "Patient", {**scoped, key: value})

    assert name("' OR 1=1 --") == set()
    assert name("' OR '1'='1") == set()
    assert name("%") == set()
    assert name("_") == set()
    assert name("%", "name:contains") == {odd}
    assert name("_", "name:contains") == {odd}
    assert name("\\", "name:contains") == {odd}
    assert name("o'k", "name:contains") == {odd}
    assert name(f"100%_o'k\\{tag}") == {odd}
    assert name("100%") == {odd}
    assert name("1_0") == set()
    assert name(f"Plain{tag}") == {plain}

    hostile = [
        "x'; DROP TABLE resource; --",
        "' OR 1=1 --",
        "%",
        "_",
        "\\",
        "\\'",
        '"; SELECT pg_sleep(5); --',
        "$1",
        "\x7f",
    ]
    for value in hostile:
        for key in ("identifier", "_id", "code", "subject", "name"):
            resource_type = "Patient" if key in ("identifier", "_id", "name") else "Observation"
            response = hospital_a.get(f"/{resource_type}", params={key: value, "_count": "5"})
            assert response.status_code in (200, 400), (key, value, response.text)
            if response.status_code == 200:
                assert matches(response.json()) == [], (key, value)
    response = hospital_a.get(
        "/Patient", params={**scoped, "name' OR 1=1 --": "x", "_sort": "name"}
    )
    assert response.status_code == 200 and set(matches(response.json())) == {plain, odd}
    assert_outcome(hospital_a.get("/Patient", params={"_sort": "name; DROP TABLE resource"}), 400)

    assert found(hospital_a, "Patient", scoped) == {plain, odd}  # everything is still there
    assert hospital_a.get(f"/Patient/{odd}").status_code == 200
    assert admin.get("/Patient", params={"_summary": "count"}).json()["total"] >= 2


# -- resource builders --------------------------------------------------------------------------


def diagnostic_report(org: str, pid: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2021-05-01T07:00:00+08:00",
        "issued": "2021-05-01T08:00:00+08:00",
        "performer": [{"reference": f"Organization/{org}"}],
        **fields,
    }


def imaging_study(pid: str, started: str, *modalities: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{int(unique(), 16)}"}],
        "subject": {"reference": f"Patient/{pid}"},
        "started": started,
        "modality": [{"system": DCM, "code": m} for m in modalities],
        "series": [
            {
                "uid": f"2.25.{int(unique(), 16)}",
                "modality": {"system": DCM, "code": m},
            }
            for m in modalities
        ],
    }


def service_request(org: str, pid: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "requester": {"reference": f"Organization/{org}"},
    }


def encounter(org: str, pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
        },
        "subject": {"reference": f"Patient/{pid}"},
        "serviceProvider": {"reference": f"Organization/{org}"},
    }


def test_a_bare_patient_id_finds_the_persons_results_at_every_hospital(
    hospital_a: Client, hospital_b: Client, admin: Client
) -> None:
    """``patient=<id>`` means ``patient=Patient/<id>``: the person, all linked records."""
    from tests.identity_support import create, fresh_people, person, result_for, source

    someone = person(fresh_people())
    a = create(hospital_a, source(someone, hospital_a.organization))
    b = create(hospital_b, source(someone, hospital_b.organization))
    expected = {result_for(hospital_a, a), result_for(hospital_b, b)}
    for value in (a, f"Patient/{a}"):
        found = admin.get("/Observation", params={"patient": value}).json()
        assert {e["resource"]["id"] for e in found.get("entry", [])} == expected, value
