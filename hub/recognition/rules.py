"""The reuse rules: given a patient's candidate results, which requested items can be reused.

Pure functions over data: the catalogue, the candidate results (rows of ``idx_result``), the
institutions (region, medical community, quality-control passes) and the time of ordering.
A result qualifies when it is final, within the item's validity window for the ordering
institution's region, not flagged in a way the item says needs a new test, and performed by
an institution within the item's recognition scope that held a quality-control pass covering
the time of the test. The newest qualifying result wins — unless a newer result within the
window is flagged for review (a critical value): then nothing older is suggested. When none
qualifies, the newest result's failure is the reason given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum

from hub.recognition.catalogue import (
    DICOM_MODALITY,
    Catalogue,
    CatalogueItem,
    Code,
    Requested,
)
from hub.recognition.institutions import Institution

FINAL_STATUSES = frozenset({"final", "amended", "corrected", "appended", "available"})
VOID_STATUSES = frozenset({"entered-in-error", "cancelled"})
# HL7 v3 ObservationInterpretation / v2 table 0078 codes.
CRITICAL_FLAGS = frozenset({"HH", "LL", "AA", "HU", "LU", "CAR"})
ABNORMAL_FLAGS = CRITICAL_FLAGS | frozenset({"H", "L", "A", ">", "<", "POS", "R", "DET"})


class Outcome(StrEnum):
    """The verdict for one requested item (CodeSystem ``recognition-outcome``)."""

    REUSABLE = "reusable"
    NO_RESULT = "no-result"
    EXPIRED = "expired"
    QC_NOT_VALID = "qc-not-valid"
    OUT_OF_SCOPE = "out-of-scope"
    NOT_FINAL = "not-final"
    NEEDS_REVIEW = "needs-review"
    NOT_RECOGNISABLE = "not-recognisable"


@dataclass(frozen=True)
class Candidate:
    """One code of one stored result (a row of ``idx_result`` with its resource's id)."""

    res_type: str
    res_id: str
    system: str
    code: str
    site: str | None
    effective: datetime | None
    status: str
    performer: str | None
    group: str | None
    flags: frozenset[str] = frozenset()
    pk: int = 0

    @property
    def reference(self) -> str:
        return f"{self.res_type}/{self.res_id}"

    @property
    def token(self) -> str:
        return f"{self.system}|{self.code}"


@dataclass(frozen=True)
class ResultSet:
    """What answers one item: a single result, a panel's results, or a study and its report.

    ``primary`` is what a doctor opens (the report when there is one).
    """

    primary: Candidate
    members: tuple[Candidate, ...]
    has_report: bool = False

    @property
    def effective(self) -> datetime | None:
        times = [m.effective for m in self.members if m.effective is not None]
        return max(times) if times else None

    @property
    def performer(self) -> str | None:
        return self.primary.performer or next(
            (m.performer for m in self.members if m.performer), None
        )

    @property
    def final(self) -> bool:
        return all(m.status in FINAL_STATUSES for m in self.members)

    @property
    def flags(self) -> frozenset[str]:
        return frozenset().union(*(m.flags for m in self.members))

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.reference for m in self.members))


@dataclass(frozen=True)
class RequestedCode:
    """A code as the orderer sent it, with the draft order it came from (if any)."""

    system: str | None
    code: str
    display: str | None = None
    order: str | None = None

    @property
    def token(self) -> str:
        return f"{self.system or ''}|{self.code}"


@dataclass(frozen=True)
class Verdict:
    """The answer for one requested code."""

    requested: RequestedCode
    outcome: Outcome
    reason: str
    item: CatalogueItem | None = None
    component: Code | None = None
    result: ResultSet | None = None
    institution: Institution | None = None
    label: str | None = None
    window_days: int | None = None
    valid_until: datetime | None = None

    @property
    def reusable(self) -> bool:
        return self.outcome is Outcome.REUSABLE

    @property
    def name_zh(self) -> str:
        return self.item.name.zh if self.item else (self.requested.display or self.requested.code)

    @property
    def name_en(self) -> str:
        return self.item.name.en if self.item else (self.requested.display or self.requested.code)


@dataclass
class Situation:
    """Where and when the order is placed (``zone``: how dates are shown)."""

    at: datetime
    ordering: Institution
    institutions: Mapping[str, Institution] = field(default_factory=dict)
    zone: tzinfo = UTC


def evaluate(
    catalogue: Catalogue,
    requests: Sequence[tuple[RequestedCode, Requested | None]],
    candidates: Iterable[Candidate],
    situation: Situation,
) -> list[Verdict]:
    """A verdict for each request, in the order given."""
    rows = [c for c in candidates if c.status not in VOID_STATUSES]
    by_token: dict[str, list[Candidate]] = {}
    by_group: dict[str, list[Candidate]] = {}
    for row in rows:
        by_token.setdefault(row.token, []).append(row)
        if row.group:
            by_group.setdefault(row.group, []).append(row)
    verdicts = []
    for requested, resolved in requests:
        if resolved is None:
            verdicts.append(
                Verdict(requested, Outcome.NOT_RECOGNISABLE, "非互认项目 / not a recognised item")
            )
            continue
        sets = result_sets(resolved, by_token, by_group)
        verdicts.append(_judge(catalogue, requested, resolved, sets, situation))
    return verdicts


def result_sets(
    resolved: Requested,
    by_token: Mapping[str, list[Candidate]],
    by_group: Mapping[str, list[Candidate]],
) -> list[ResultSet]:
    """The results that could answer one item, newest first."""
    item = resolved.item
    sets: list[ResultSet]
    if resolved.component is not None:
        sets = [ResultSet(c, (c,)) for c in by_token.get(resolved.component.token, [])]
    elif item.category == "imaging":
        sets = _imaging_sets(item, by_token, by_group)
    elif item.is_panel:
        sets = _panel_sets(item, by_token)
    else:
        sets = [ResultSet(c, (c,)) for t in _tokens(item.codes) for c in by_token.get(t, [])]
    unique = {s.primary.reference: s for s in sets}
    return sorted(unique.values(), key=_newest_first)


def _newest_first(result: ResultSet) -> tuple[int, float]:
    effective = result.effective
    return (0, -effective.timestamp()) if effective else (1, 0.0)


def _tokens(codes: Iterable[Code]) -> list[str]:
    return [c.token for c in codes]


def _panel_sets(item: CatalogueItem, by_token: Mapping[str, list[Candidate]]) -> list[ResultSet]:
    """Results grouped by their order (or report); a group is the panel when it carries the
    panel's code or all its core components."""
    panel_codes = set(_tokens(item.codes))
    component_codes = set(_tokens(item.components))
    core = set(_tokens(item.core_components)) or component_codes
    groups: dict[str, list[Candidate]] = {}
    for token in panel_codes | component_codes:
        for row in by_token.get(token, []):
            groups.setdefault(row.group or row.reference, []).append(row)
    sets = []
    for members in groups.values():
        tokens = {m.token for m in members}
        if not (tokens & panel_codes) and not core <= tokens:
            continue
        members.sort(key=lambda m: (m.res_type != "DiagnosticReport", m.token not in panel_codes))
        sets.append(ResultSet(members[0], tuple(members)))
    return sets


def _imaging_sets(
    item: CatalogueItem,
    by_token: Mapping[str, list[Candidate]],
    by_group: Mapping[str, list[Candidate]],
) -> list[ResultSet]:
    """Studies of the item's modality and body site, and reports with its procedure codes,
    each with the other half when the hub has it (a report names its study)."""
    groups: dict[str, list[Candidate]] = {}
    for token in _tokens(item.codes):
        for row in by_token.get(token, []):
            groups.setdefault(row.group or row.reference, []).append(row)
    for target in item.imaging:
        sites = {s.code for s in target.body_sites}
        for row in by_token.get(f"{DICOM_MODALITY}|{target.modality}", []):
            if sites and row.site not in sites:
                continue
            groups.setdefault(row.group or row.reference, []).append(row)
    sets = []
    for key, members in groups.items():
        related = [m for m in by_group.get(key, []) if m not in members]
        everything = members + related
        reports = [
            m for m in everything if m.res_type == "DiagnosticReport" and m.status in FINAL_STATUSES
        ]
        primary = reports[0] if reports else members[0]
        studies = [m for m in everything if m.res_type == "ImagingStudy"]
        # the report decides finality; a study alone is final only if no report is required
        chosen = tuple(dict.fromkeys([primary, *studies[:1]]))
        sets.append(ResultSet(primary, chosen, has_report=bool(reports)))
    return sets


def _judge(
    catalogue: Catalogue,
    requested: RequestedCode,
    resolved: Requested,
    sets: list[ResultSet],
    situation: Situation,
) -> Verdict:
    item = resolved.item
    days = item.validity_for(situation.ordering.region)
    template = Verdict(
        requested,
        Outcome.NO_RESULT,
        "无既往结果 / no earlier result",
        item=item,
        component=resolved.component,
        window_days=days,
    )
    first: Verdict | None = None
    for result in sets:
        if result.effective is not None and result.effective > situation.at:
            continue  # produced after the time the check is for
        verdict = _judge_one(catalogue, template, result, situation)
        if verdict.reusable or verdict.outcome is Outcome.NEEDS_REVIEW:
            # a recent result flagged for review stands: an older normal one is out of date
            return verdict
        first = first or verdict
    return first or template


def _judge_one(
    catalogue: Catalogue, template: Verdict, result: ResultSet, situation: Situation
) -> Verdict:
    item = template.item
    days = template.window_days
    assert item is not None and days is not None
    performer = situation.institutions.get(result.performer or "")
    effective = result.effective
    valid_until = effective + timedelta(days=days) if effective else None
    place = performer.name if performer else "未知机构 unknown institution"
    when = f"{place} {effective.astimezone(situation.zone).date()}" if effective else place

    def verdict(outcome: Outcome, reason: str) -> Verdict:
        return replace(
            template,
            outcome=outcome,
            reason=reason,
            result=result,
            institution=performer,
            valid_until=valid_until,
            label=catalogue.label(performer.region if performer else None),
        )

    needs_report = item.category == "imaging" and item.requires_report and not result.has_report
    if not result.final or needs_report:
        return verdict(Outcome.NOT_FINAL, f"结果未最终确认（{when}） / not final yet")
    if effective is None or valid_until is None or valid_until < situation.at:
        return verdict(
            Outcome.EXPIRED, f"已超过{days}天有效期（{when}） / older than the {days}-day window"
        )
    flags = result.flags
    if ("critical" in item.not_suggested_when and flags & CRITICAL_FLAGS) or (
        "abnormal" in item.not_suggested_when and flags & ABNORMAL_FLAGS
    ):
        return verdict(
            Outcome.NEEDS_REVIEW,
            f"结果异常或危急值，建议复查（{when}） / abnormal or critical: re-test advised",
        )
    if performer is None or not situation.ordering.within(item.scope, performer):
        return verdict(
            Outcome.OUT_OF_SCOPE,
            f"{place}不在本项目互认范围内 / {place} is outside the item's recognition scope",
        )
    if item.quality_control.required and not performer.qc_valid(
        item.quality_control.discipline, item.id, effective
    ):
        return verdict(
            Outcome.QC_NOT_VALID,
            f"{place}检测时无有效质控合格证明 / no valid quality-control pass at the time",
        )
    return verdict(
        Outcome.REUSABLE, f"{days}天内可互认结果（{when}） / reusable, within {days} days"
    )
