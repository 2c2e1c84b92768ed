"""The recognition label (``浙HR``) and validity of a result a doctor is looking at.

The workstation shows, beside every stored result, whether it carries the mutual-recognition
label and until when it may be reused. That is the reuse check's own question asked about one
result: the same catalogue, the same institutions (region, community, QC passes) and the same
rules (``rules.evaluate``), fed with only that result's facts (``hub.fhir.results``). Nothing
here restates a rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import orjson

from hub.fhir.results import result_facts
from hub.recognition.catalogue import ITEM_SYSTEM, Catalogue, CatalogueItem, Requested
from hub.recognition.institutions import Institution, institution
from hub.recognition.repository import RecognitionRepository
from hub.recognition.rules import Candidate, Outcome, RequestedCode, Situation, evaluate
from hub.recognition.service import RecognitionService

# Outcomes under which the result itself is a recognised one (the label applies), even if it
# is now out of its window or should be repeated because of a critical value.
LABELLED = frozenset({Outcome.REUSABLE, Outcome.EXPIRED, Outcome.NEEDS_REVIEW})


@dataclass(frozen=True)
class ResultLabel:
    """What the rules say about one result for an order placed now at the viewer's hospital."""

    item: CatalogueItem
    outcome: Outcome
    reason: str
    label: str | None  # e.g. "浙HR" when the item and the hospital's QC qualify
    valid_until: datetime | None

    @property
    def labelled(self) -> bool:
        return self.outcome in LABELLED

    @property
    def reusable(self) -> bool:
        return self.outcome is Outcome.REUSABLE

    @property
    def expired(self) -> bool:
        return self.outcome is Outcome.EXPIRED


@dataclass(frozen=True)
class LabelContext:
    """The catalogue in force, every institution, and the ordering one (the viewer's)."""

    catalogue: Catalogue
    institutions: Mapping[str, Institution]
    situation: Situation


async def label_context(
    service: RecognitionService,
    repo: RecognitionRepository,
    organization: str,
    at: datetime,
) -> LabelContext:
    """Load what labelling needs (two statements); the service's caches are left alone."""
    catalogue = await service.catalogue(repo)
    institutions = {
        res_id: institution(orjson.loads(content), service.zone)
        for res_id, content in await repo.organizations()
    }
    ordering = institutions.get(organization) or Institution(organization, organization)
    return LabelContext(
        catalogue, institutions, Situation(at, ordering, institutions, service.zone)
    )


def candidates(resources: Iterable[Mapping[str, Any]], zone: tzinfo) -> list[Candidate]:
    """The rules' view of some stored results (as ``idx_result`` rows would give them)."""
    found: list[Candidate] = []
    for index, resource in enumerate(resources):
        for fact in result_facts(dict(resource), zone):
            group = fact.group
            if group is None and resource.get("resourceType") == "DiagnosticReport":
                group = f"DiagnosticReport/{resource.get('id')}"  # as the repository does
            found.append(
                Candidate(
                    str(resource.get("resourceType")),
                    str(resource.get("id")),
                    fact.system,
                    fact.code,
                    fact.site,
                    fact.effective,
                    fact.status,
                    fact.performer,
                    group,
                    frozenset(fact.flags.split()),
                    pk=index + 1,
                )
            )
    return found


def _requests(catalogue: Catalogue, rows: Sequence[Candidate]) -> list[Requested]:
    """The catalogue items these results could answer: whole items first (a panel, a test),
    then panel components, then imaging items by modality and body site."""
    whole: list[Requested] = []
    components: list[Requested] = []
    for row in rows:
        resolved = catalogue.resolve(row.system, row.code)
        if resolved is None:
            continue
        (whole if resolved.component is None else components).append(resolved)
    imaging = [
        Requested(item)
        for item in catalogue.items.values()
        if item.category == "imaging"
        and any(row.res_type == "ImagingStudy" and row.system.endswith("/DCM") for row in rows)
    ]
    return whole + components + imaging


def label_result(
    context: LabelContext, resources: Sequence[Mapping[str, Any]]
) -> ResultLabel | None:
    """The label of one result (a panel with its Observations, a single Observation, or a
    study with its report), or None when no catalogue item covers it."""
    rows = candidates(resources, context.situation.zone)
    if not rows:
        return None
    for requested in _requests(context.catalogue, rows):
        code = RequestedCode(ITEM_SYSTEM, requested.item.id)
        (verdict,) = evaluate(context.catalogue, [(code, requested)], rows, context.situation)
        if verdict.result is None or verdict.item is None:
            continue
        return ResultLabel(
            verdict.item,
            verdict.outcome,
            verdict.reason,
            verdict.label if verdict.outcome in LABELLED else None,
            verdict.valid_until,
        )
    return None
