"""The reuse rules, catalogue and institution facts as pure functions (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

import fhir_profiles
from hub.recognition.catalogue import (
    DICOM_MODALITY,
    ITEM_SYSTEM,
    LOINC,
    Catalogue,
    CatalogueDocument,
)
from hub.recognition.institutions import Institution, institution, qc_pass_extension
from hub.recognition.rules import Candidate, Outcome, RequestedCode, Situation, evaluate

ZONE = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CATALOGUE = Catalogue(CatalogueDocument.model_validate(fhir_profiles.recognition_catalogue()), 1)


def lab(name: str, region: str, *disciplines: str, ends: int = 60) -> Institution:
    org = {
        "resourceType": "Organization",
        "id": name,
        "name": name,
        "extension": [
            {
                "url": "https://yijian-hub.org/fhir/StructureDefinition/organization-region",
                "valueCode": region,
            },
            *(
                qc_pass_extension(d, "2026-01-01", (NOW + timedelta(days=ends)).date().isoformat())
                for d in disciplines
            ),
        ],
    }
    return institution(org, ZONE)


A = lab("A", "330106", "hematology", "clinical-chemistry", "radiology")
C = lab("C", "330105", "hematology")
INSTITUTIONS = {
    i.id: i
    for i in (A, C, lab("Q", "330102", "hematology", ends=-10), lab("P", "110105", "hematology"))
}


def row(
    code: str,
    days: float,
    org: str = "A",
    *,
    res_type: str = "Observation",
    group: str | None = "ServiceRequest/1",
    status: str = "final",
    flags: str = "",
    system: str = LOINC,
    site: str | None = None,
    rid: str | None = None,
) -> Candidate:
    return Candidate(
        res_type,
        rid or f"{org}-{code}-{days}",
        system,
        code,
        site,
        NOW - timedelta(days=days),
        status,
        org,
        group,
        frozenset(flags.split()),
    )


def judge(codes: list[str], rows: list[Candidate], ordering: Institution = C) -> list[Outcome]:
    requests = [
        (RequestedCode(None, c), CATALOGUE.resolve(None, c) or CATALOGUE.resolve(LOINC, c))
        for c in codes
    ]
    verdicts = evaluate(CATALOGUE, requests, rows, Situation(NOW, ordering, INSTITUTIONS))
    return [v.outcome for v in verdicts]


def cbc(days: float, org: str = "A", **kw: object) -> list[Candidate]:
    group = f"ServiceRequest/{org}-{days}"
    return [
        row(c, days, org, group=group, **kw)  # type: ignore[arg-type]
        for c in ("6690-2", "789-8", "718-7", "777-3")
    ]


def test_the_shipped_catalogue_resolves_ids_panel_codes_and_components() -> None:
    assert CATALOGUE.resolve(ITEM_SYSTEM, "cbc").item.id == "cbc"  # type: ignore[union-attr]
    assert CATALOGUE.resolve(LOINC, "58410-2").component is None  # type: ignore[union-attr]
    found = CATALOGUE.resolve(LOINC, "718-7")
    assert found is not None and found.item.id == "cbc" and found.component.code == "718-7"  # type: ignore[union-attr]
    assert CATALOGUE.resolve(LOINC, "0000-0") is None
    assert len(CATALOGUE.items) >= 20
    assert {i.category for i in CATALOGUE.items.values()} == {"lab", "imaging"}


def test_windows_and_labels_by_region() -> None:
    liver = CATALOGUE.items["liver-function"]
    assert liver.validity_for("330106") == liver.region_validity_days["3301"]
    assert liver.validity_for("330203") == liver.region_validity_days["33"]
    assert liver.validity_for("110105") == liver.validity_days
    assert liver.validity_for(None) == liver.validity_days
    assert CATALOGUE.label("330106") == "浙HR" and CATALOGUE.label("110105") == "京HR"
    assert CATALOGUE.label(None) == "HR"


def test_catalogue_validation_says_what_is_wrong() -> None:
    raw = fhir_profiles.recognition_catalogue()
    item = dict(raw["items"][0])
    for broken, message in [
        ({**item, "region_validity_days": {"zj": 3}}, "division code"),
        ({**item, "validity_days": 0}, "greater than 0"),
        ({**item, "core_components": [{"system": LOINC, "code": "1-1"}]}, "not components"),
        ({**item, "codes": [], "components": [], "core_components": []}, "give codes"),
        ({**item, "scope": "galaxy"}, "scope"),
    ]:
        with pytest.raises(ValidationError, match=message):
            CatalogueDocument.model_validate({**raw, "items": [broken]})
    with pytest.raises(ValidationError, match="twice"):
        CatalogueDocument.model_validate({**raw, "items": [item, item]})


def test_scopes() -> None:
    hangzhou, ningbo, beijing = lab("h", "330106"), lab("n", "330203"), lab("b", "110105")
    assert hangzhou.within("city", lab("h2", "330102"))
    assert not hangzhou.within("city", ningbo) and hangzhou.within("province", ningbo)
    assert not hangzhou.within("province", beijing) and hangzhou.within("national", beijing)
    assert hangzhou.within("institution", hangzhou) and not hangzhou.within("institution", ningbo)
    nowhere = Institution("x", "x")
    assert not hangzhou.within("city", nowhere) and hangzhou.within("national", nowhere)
    one = Institution("1", "1", "330106", "westlake")
    assert one.within("community", Institution("2", "2", "330203", "westlake"))
    assert not one.within("community", Institution("3", "3", "330106", None))


def test_qc_pass_covers_its_last_day_and_no_more() -> None:
    passed = lab("x", "330106", "hematology")
    last_day = datetime.combine((NOW + timedelta(days=60)).date(), datetime.min.time(), ZONE)
    assert passed.qc_valid("hematology", "cbc", last_day + timedelta(hours=23))
    assert not passed.qc_valid("hematology", "cbc", last_day + timedelta(days=1, minutes=1))
    assert not passed.qc_valid("clinical-chemistry", "glucose", NOW)
    assert lab("y", "330106", "cbc").qc_valid("hematology", "cbc", NOW)  # an item-level pass


def test_the_newest_qualifying_result_wins_and_the_newest_failure_explains() -> None:
    assert judge(["cbc"], cbc(3) + cbc(2, "Q") + cbc(1, "P")) == [Outcome.REUSABLE]
    assert judge(["cbc"], cbc(2, "Q") + cbc(9)) == [Outcome.QC_NOT_VALID]
    assert judge(["cbc"], cbc(1, "P")) == [Outcome.OUT_OF_SCOPE]
    assert judge(["cbc"], cbc(8)) == [Outcome.EXPIRED]
    assert judge(["cbc"], cbc(1, status="preliminary")) == [Outcome.NOT_FINAL]
    assert judge(["cbc"], cbc(1, flags="LL")) == [Outcome.NEEDS_REVIEW]
    assert judge(["cbc"], cbc(1, flags="H")) == [Outcome.REUSABLE]  # abnormal is fine for CBC
    assert judge(["cbc"], cbc(1, status="entered-in-error")) == [Outcome.NO_RESULT]
    assert judge(["cbc", "xyz"], []) == [Outcome.NO_RESULT, Outcome.NOT_RECOGNISABLE]
    # electrolytes are not suggested when abnormal
    sodium = [
        row("2951-2", 1, group="g"),
        row("2823-3", 1, group="g", flags="H"),
        row("2075-0", 1, group="g"),
    ]
    assert judge(["electrolytes"], sodium) == [Outcome.NEEDS_REVIEW]


def test_a_panel_needs_its_code_or_its_core_components() -> None:
    partial = cbc(1)[:3]
    assert judge(["cbc", "718-7"], partial) == [Outcome.NO_RESULT, Outcome.REUSABLE]
    report = [row("58410-2", 1, res_type="DiagnosticReport", group=None)]
    assert judge(["cbc"], report) == [Outcome.REUSABLE]


def test_imaging_needs_a_final_report_and_the_right_body_site() -> None:
    study = row(
        "CT",
        5,
        system=DICOM_MODALITY,
        res_type="ImagingStudy",
        site="51185008",
        group="ImagingStudy/s1",
        rid="s1",
        status="available",
    )
    head = row(
        "CT",
        5,
        system=DICOM_MODALITY,
        res_type="ImagingStudy",
        site="69536005",
        group="ImagingStudy/s2",
        rid="s2",
        status="available",
    )
    report = row(
        "RIS-CT",
        5,
        system="urn:ris",
        res_type="DiagnosticReport",
        group="ImagingStudy/s1",
        rid="r1",
    )
    assert judge(["ct-chest"], [study]) == [Outcome.NOT_FINAL]
    assert judge(["ct-chest"], [study, report]) == [Outcome.REUSABLE]
    assert judge(["ct-chest"], [head]) == [Outcome.NO_RESULT]
    late = row("24627-2", 40, res_type="DiagnosticReport", group=None)
    assert judge(["ct-chest"], [late]) == [Outcome.EXPIRED]


def test_a_recent_critical_result_stops_the_search_and_future_results_are_ignored() -> None:
    assert judge(["cbc"], cbc(1, flags="LL") + cbc(4)) == [Outcome.NEEDS_REVIEW]
    # a critical value from a hospital outside the scope still matters
    assert judge(["cbc"], cbc(1, "P", flags="HH") + cbc(4)) == [Outcome.NEEDS_REVIEW]
    # results after the time of the check do not exist for it
    assert judge(["cbc"], cbc(-2, flags="LL") + cbc(4)) == [Outcome.REUSABLE]
