"""A patient's results as a timeline: pure functions over FHIR resources.

Every hospital's results of the person arrive as plain FHIR JSON (``$everything`` through the
records service). They become items a doctor reads at a glance:

* ``lab`` — a DiagnosticReport with its Observations (a panel), or an Observation on its own;
  each value with its unit, reference range and abnormal flag;
* ``imaging`` — an ImagingStudy (modality, body part, series and instances), with its report;
* ``report`` — an imaging report (conclusion), linked to its study.

Items are newest first and grouped by local date; filters and paging apply to items.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from typing import Any

from hub.fhir.results import effective_of

LOINC = "http://loinc.org"
DICOM_UID = "urn:dicom:uid"
KINDS = ("lab", "imaging", "report")
# HL7 v3 ObservationInterpretation codes → (symbol, severity) shown beside a value.
FLAG_SYMBOLS: dict[str, tuple[str, str]] = {
    "H": ("↑", "high"),
    "HH": ("⇈", "critical"),
    "HU": ("⇈", "critical"),
    "L": ("↓", "low"),
    "LL": ("⇊", "critical"),
    "LU": ("⇊", "critical"),
    "A": ("!", "abnormal"),
    "AA": ("‼", "critical"),
    "POS": ("+", "abnormal"),
    "DET": ("+", "abnormal"),
    "R": ("R", "abnormal"),
    ">": (">", "abnormal"),
    "<": ("<", "abnormal"),
}


@dataclass(frozen=True)
class LabValue:
    """One Observation's value as a row of a panel."""

    ref: str
    name: str
    system: str | None
    code: str | None
    value: str
    numeric: float | None
    unit: str
    low: float | None
    high: float | None
    range_text: str
    flags: tuple[str, ...]

    @property
    def flag(self) -> str | None:
        """The most severe interpretation code given (or derived from the range)."""
        return self.flags[0] if self.flags else None

    @property
    def symbol(self) -> str:
        return FLAG_SYMBOLS.get(self.flag or "", ("", ""))[0]

    @property
    def severity(self) -> str:
        return FLAG_SYMBOLS.get(self.flag or "", ("", "normal"))[1] if self.flag else "normal"

    @property
    def trend_code(self) -> str | None:
        """``system|code`` for the trend link (LOINC first)."""
        if not self.code:
            return None
        return f"{self.system}|{self.code}" if self.system else self.code


@dataclass(frozen=True)
class Series:
    uid: str
    modality: str
    body_part: str
    description: str
    instances: int


@dataclass
class TimelineItem:
    """One thing a doctor reads: a panel, a single result, a study or a report."""

    kind: str  # lab | imaging | report
    ref: str  # what opens it: Type/id
    title: str
    effective: datetime | None
    performer: str | None  # Organization id
    status: str
    values: list[LabValue] = field(default_factory=list)
    conclusion: str = ""
    study_uid: str | None = None
    study_ref: str | None = None
    report_ref: str | None = None
    modalities: tuple[str, ...] = ()
    series: list[Series] = field(default_factory=list)
    instances: int = 0
    resources: list[dict[str, Any]] = field(default_factory=list)  # for the label
    label: Any = None  # hub.recognition.labels.ResultLabel, filled by the caller

    @property
    def abnormal(self) -> bool:
        return any(v.flag for v in self.values)

    def local_date(self, zone: tzinfo) -> date | None:
        return self.effective.astimezone(zone).date() if self.effective else None


@dataclass(frozen=True)
class DateGroup:
    day: date | None
    items: list[TimelineItem]


def reference_of(resource: Mapping[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def _local(reference: Any) -> str | None:
    """``Type/id`` of a (relative or absolute) reference."""
    if not isinstance(reference, dict) or not isinstance(reference.get("reference"), str):
        return None
    parts = reference["reference"].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


def concept_text(concept: Any, fallback: str = "") -> str:
    """A CodeableConcept as text: its text, else a display, else a code."""
    if not isinstance(concept, dict):
        return fallback
    if isinstance(concept.get("text"), str) and concept["text"]:
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and coding.get("display"):
            return str(coding["display"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and coding.get("code"):
            return str(coding["code"])
    return fallback


def primary_coding(concept: Any) -> tuple[str | None, str | None]:
    """The LOINC coding if any, else the first (system, code)."""
    codings = [c for c in (concept or {}).get("coding") or [] if isinstance(c, dict)]
    for coding in codings:
        if coding.get("system") == LOINC and coding.get("code"):
            return LOINC, str(coding["code"])
    for coding in codings:
        if coding.get("code"):
            return coding.get("system"), str(coding["code"])
    return None, None


def performer_of(resource: Mapping[str, Any], owner: str | None = None) -> str | None:
    for reference in resource.get("performer") or []:
        local = _local(reference)
        if local and local.startswith("Organization/"):
            return local.split("/", 1)[1]
    return owner


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _format(number: float | None) -> str:
    if number is None:
        return ""
    return f"{number:g}"


def lab_value(observation: Mapping[str, Any]) -> LabValue:
    """An Observation as a value row: value, unit, range and flag (derived from the range
    when the hospital sent none)."""
    system, code = primary_coding(observation.get("code"))
    quantity = observation.get("valueQuantity")
    numeric = None
    unit = ""
    if isinstance(quantity, dict):
        numeric = _number(quantity.get("value"))
        unit = str(quantity.get("unit") or quantity.get("code") or "")
        comparator = str(quantity.get("comparator") or "")
        text = comparator + _format(numeric)
    elif isinstance(observation.get("valueString"), str):
        text = observation["valueString"]
    elif isinstance(observation.get("valueCodeableConcept"), dict):
        text = concept_text(observation["valueCodeableConcept"])
    elif isinstance(observation.get("valueInteger"), int):
        numeric = float(observation["valueInteger"])
        text = str(observation["valueInteger"])
    else:
        text = ""
    low = high = None
    range_text = ""
    for entry in observation.get("referenceRange") or []:
        if not isinstance(entry, dict):
            continue
        low = _number((entry.get("low") or {}).get("value"))
        high = _number((entry.get("high") or {}).get("value"))
        if low is not None and high is not None:
            range_text = f"{_format(low)}–{_format(high)}"
        elif low is not None:
            range_text = f"≥{_format(low)}"
        elif high is not None:
            range_text = f"≤{_format(high)}"
        else:
            range_text = str(entry.get("text") or "")
        break
    flags = [
        str(coding["code"])
        for concept in observation.get("interpretation") or []
        if isinstance(concept, dict)
        for coding in concept.get("coding") or []
        if isinstance(coding, dict) and coding.get("code") and coding.get("code") != "N"
    ]
    if not flags and numeric is not None:
        if high is not None and numeric > high:
            flags = ["H"]
        elif low is not None and numeric < low:
            flags = ["L"]
    flags.sort(key=lambda f: FLAG_SYMBOLS.get(f, ("", "abnormal"))[1] != "critical")
    return LabValue(
        reference_of(observation),
        concept_text(observation.get("code"), code or ""),
        system,
        code,
        text,
        numeric,
        unit,
        low,
        high,
        range_text,
        tuple(flags),
    )


def _study_uid(study: Mapping[str, Any]) -> str | None:
    for identifier in study.get("identifier") or []:
        if isinstance(identifier, dict) and identifier.get("system") == DICOM_UID:
            return str(identifier.get("value") or "").removeprefix("urn:oid:") or None
    return None


def _series(study: Mapping[str, Any]) -> list[Series]:
    out = []
    for series in study.get("series") or []:
        if not isinstance(series, dict):
            continue
        modality = (series.get("modality") or {}).get("code") or ""
        site = series.get("bodySite") or {}
        out.append(
            Series(
                str(series.get("uid") or ""),
                str(modality),
                str(site.get("display") or site.get("code") or ""),
                str(series.get("description") or ""),
                int(series.get("numberOfInstances") or len(series.get("instance") or [])),
            )
        )
    return out


def build_timeline(
    resources: Iterable[Mapping[str, Any]], zone: tzinfo, owners: Mapping[str, str] | None = None
) -> list[TimelineItem]:
    """Items from a person's Observations, DiagnosticReports and ImagingStudies, newest first.

    ``owners`` maps ``Type/id`` to the organization that sent it (for a study, which names no
    performer)."""
    owners = owners or {}
    by_ref: dict[str, dict[str, Any]] = {}
    for resource in resources:
        if resource.get("resourceType") in ("Observation", "DiagnosticReport", "ImagingStudy"):
            by_ref[reference_of(resource)] = dict(resource)
    used: set[str] = set()
    items: list[TimelineItem] = []
    reports_of_study: dict[str, list[dict[str, Any]]] = {}
    for ref, report in by_ref.items():
        if report["resourceType"] != "DiagnosticReport":
            continue
        studies = [s for s in map(_local, report.get("imagingStudy") or []) if s]
        if studies:
            for study in studies:
                reports_of_study.setdefault(study, []).append(report)
            study_ref = studies[0]
            items.append(
                TimelineItem(
                    "report",
                    ref,
                    concept_text(report.get("code"), "影像报告"),
                    effective_of(report, zone),
                    performer_of(report, owners.get(ref)),
                    str(report.get("status") or ""),
                    conclusion=str(report.get("conclusion") or ""),
                    study_ref=study_ref,
                    study_uid=_study_uid(by_ref.get(study_ref, {})),
                    resources=[report, *([by_ref[study_ref]] if study_ref in by_ref else [])],
                )
            )
            continue
        members = [by_ref[r] for r in map(_local, report.get("result") or []) if r in by_ref]
        used.update(reference_of(m) for m in members)
        items.append(
            TimelineItem(
                "lab",
                ref,
                concept_text(report.get("code"), "检验报告"),
                effective_of(report, zone),
                performer_of(report, owners.get(ref)),
                str(report.get("status") or ""),
                values=[lab_value(m) for m in members],
                conclusion=str(report.get("conclusion") or ""),
                resources=[report, *members],
            )
        )
    for ref, resource in by_ref.items():
        kind = resource["resourceType"]
        if kind == "Observation" and ref not in used:
            value = lab_value(resource)
            items.append(
                TimelineItem(
                    "lab",
                    ref,
                    value.name,
                    effective_of(resource, zone),
                    performer_of(resource, owners.get(ref)),
                    str(resource.get("status") or ""),
                    values=[value],
                    resources=[resource],
                )
            )
        elif kind == "ImagingStudy":
            reports = reports_of_study.get(ref, [])
            series = _series(resource)
            modalities = tuple(
                dict.fromkeys(
                    [str(m.get("code")) for m in resource.get("modality") or [] if m.get("code")]
                    + [s.modality for s in series if s.modality]
                )
            )
            performer = performer_of(reports[0]) if reports else None
            items.append(
                TimelineItem(
                    "imaging",
                    ref,
                    str(resource.get("description") or " ".join(modalities) or "影像检查"),
                    effective_of(resource, zone),
                    performer or owners.get(ref),
                    str(resource.get("status") or ""),
                    conclusion=str(reports[0].get("conclusion") or "") if reports else "",
                    study_uid=_study_uid(resource),
                    study_ref=ref,
                    report_ref=reference_of(reports[0]) if reports else None,
                    modalities=modalities,
                    series=series,
                    instances=int(
                        resource.get("numberOfInstances") or sum(s.instances for s in series)
                    ),
                    resources=[resource, *reports],
                )
            )
    items.sort(key=_newest_first)
    return items


def _newest_first(item: TimelineItem) -> tuple[int, float, str]:
    if item.effective is None:
        return (1, 0.0, item.ref)
    return (0, -item.effective.timestamp(), item.ref)


def select(
    items: Sequence[TimelineItem],
    kind: str | None,
    start: date | None,
    end: date | None,
    zone: tzinfo,
) -> list[TimelineItem]:
    """The items of one kind (None: all) within [start, end] (local dates, inclusive)."""
    chosen = []
    for item in items:
        if kind in KINDS and item.kind != kind:
            continue
        day = item.local_date(zone)
        if (start or end) and day is None:
            continue
        if start and day is not None and day < start:
            continue
        if end and day is not None and day > end:
            continue
        chosen.append(item)
    return chosen


def by_date(items: Sequence[TimelineItem], zone: tzinfo) -> list[DateGroup]:
    """Consecutive items of one local date together (the items are newest first)."""
    groups: list[DateGroup] = []
    for item in items:
        day = item.local_date(zone)
        if groups and groups[-1].day == day:
            groups[-1].items.append(item)
        else:
            groups.append(DateGroup(day, [item]))
    return groups


@dataclass(frozen=True)
class PageOf:
    items: list[TimelineItem]
    number: int
    pages: int
    total: int


def page_of(items: Sequence[TimelineItem], number: int, size: int) -> PageOf:
    pages = max(1, -(-len(items) // size))
    number = min(max(1, number), pages)
    start = (number - 1) * size
    return PageOf(list(items[start : start + size]), number, pages, len(items))
