"""RecognitionService: the reuse check, the reminders shown, the doctors' decisions, and the
recognition catalogue's versions.

One check is three short statements on one pooled connection: the person and the freshness
of the cached catalogue and institutions; the newest candidate results per requested code
(``idx_result``); the JSON of the results worth showing. The rules are pure (``rules``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from pydantic import ValidationError

import fhir_profiles
from hub.access.consents import is_opt_out
from hub.access.repository import AccessRepository
from hub.fhir.outcomes import FhirError, bad_request
from hub.identity.service import IdentityService
from hub.ingest.registry import CodeMapCache
from hub.recognition.catalogue import (
    Catalogue,
    CatalogueDocument,
    CatalogueItem,
    Requested,
)
from hub.recognition.institutions import Institution, InstitutionDirectory
from hub.recognition.repository import Person, RecognitionRepository, Reminder
from hub.recognition.rules import RequestedCode, Situation, Verdict, evaluate
from hub.storage.database import Database

DECLINE_REASONS_URL = "https://yijian-hub.org/fhir/CodeSystem/recognition-decline-reason"


@dataclass(frozen=True)
class CheckQuery:
    """Who, what and where: a patient (hub id and/or any identifiers), the codes about to be
    ordered, the ordering institution and the time of ordering."""

    codes: Sequence[RequestedCode]
    organization: str
    patient_ids: Sequence[str] = ()
    identifiers: Sequence[tuple[str, str]] = ()
    at: datetime | None = None


@dataclass
class Check:
    """The answer: the person's records, one verdict per code, and the reusable results'
    JSON by reference (for cards and details)."""

    person: Person
    verdicts: list[Verdict]
    catalogue: Catalogue
    at: datetime
    ordering: Institution
    contents: dict[str, dict[str, Any]] = field(default_factory=dict)
    reminders: dict[int, uuid.UUID] = field(default_factory=dict)  # verdict index → reminder
    opted_out: bool = False  # the patient opted out of sharing: only the orderer's own results

    @property
    def patient(self) -> str | None:
        """The hub's master Patient of the person (or its only record)."""
        if self.person.masters:
            return self.person.masters[0]
        return self.person.patients[0] if self.person.patients else None

    @property
    def found(self) -> bool:
        return bool(self.person.patients)


@dataclass(frozen=True)
class ReminderContext:
    """What a reminder records about the order in progress."""

    source: str  # "cds", "api" or "workstation"
    client_id: str | None = None
    practitioner: str | None = None
    department: str | None = None
    hook: str | None = None
    hook_instance: str | None = None


class RecognitionService:
    def __init__(self, database: Database, identity: IdentityService, zone: tzinfo) -> None:
        self.database = database
        self.identity = identity
        self.zone = zone
        self.institutions = InstitutionDirectory(zone)
        self.code_maps = CodeMapCache(database)
        self._catalogue: Catalogue | None = None
        reasons = fhir_profiles.codesystem(DECLINE_REASONS_URL)
        self.decline_reasons: dict[str, dict[str, Any]] = {c["code"]: c for c in reasons["concept"]}

    # -- the catalogue ------------------------------------------------------------------------

    async def catalogue(self, repo: RecognitionRepository, version: int | None = None) -> Catalogue:
        """The catalogue in force (cached by version)."""
        if version is not None and self._catalogue and self._catalogue.version == version:
            return self._catalogue
        stored = await repo.catalogue()
        # Migration 0004 stores the shipped defaults as version 1; they are the fallback.
        number, raw = stored or (0, fhir_profiles.recognition_catalogue())
        self._catalogue = Catalogue(CatalogueDocument.model_validate(raw), number)
        return self._catalogue

    async def save_catalogue(
        self, repo: RecognitionRepository, raw: dict[str, Any], actor: str, note: str | None
    ) -> Catalogue:
        """Validate and store a new catalogue version (a 422 names what is wrong). Runs in the
        caller's transaction; every process picks the new version up on its next check."""
        document = parse_catalogue(raw)
        number = await repo.save_catalogue(
            document.model_dump(mode="json", exclude_none=True), actor, note
        )
        return Catalogue(document, number)

    async def _locked_current(self, repo: RecognitionRepository) -> Catalogue:
        """The catalogue in force, read after taking the editors' lock (no lost updates)."""
        await repo.lock_catalogue()
        stored = await repo.catalogue()
        number, raw = stored or (0, fhir_profiles.recognition_catalogue())
        return Catalogue(parse_catalogue(raw), number)

    async def put_item(
        self, repo: RecognitionRepository, raw: dict[str, Any], actor: str, note: str | None
    ) -> Catalogue:
        """Add or replace one item: a new catalogue version."""
        try:
            item = CatalogueItem.model_validate(raw)
        except ValidationError as error:
            raise FhirError(422, "invalid", _validation_message(error)) from None
        current = await self._locked_current(repo)
        items = list(current.document.items)
        position = next((n for n, i in enumerate(items) if i.id == item.id), None)
        if position is None:
            items.append(item)
        else:
            items[position] = item
        document = current.document.model_copy(update={"items": tuple(items), "status": "active"})
        return await self.save_catalogue(repo, document.model_dump(mode="json"), actor, note)

    async def remove_item(
        self, repo: RecognitionRepository, item_id: str, actor: str, note: str | None
    ) -> Catalogue:
        current = await self._locked_current(repo)
        if item_id not in current.items:
            raise FhirError(404, "not-found", f"catalogue item {item_id} does not exist")
        items = tuple(i for i in current.document.items if i.id != item_id)
        document = current.document.model_copy(update={"items": items, "status": "active"})
        return await self.save_catalogue(repo, document.model_dump(mode="json"), actor, note)

    # -- the check ----------------------------------------------------------------------------

    async def check(self, repo: RecognitionRepository, query: CheckQuery) -> Check:
        """Which of ``query.codes`` the patient has a reusable result for, and why not."""
        at = query.at or datetime.now(UTC)
        tokens = [self.identity.index_token(s, v)[::2] for s, v in query.identifiers]
        person = await repo.person(query.patient_ids, tokens)
        if len(person.masters) > 1:
            raise FhirError(
                409,
                "conflict",
                "the patient ids and identifiers given belong to different people in the hub"
                f" ({len(person.masters)} master records); check them, or resolve the identity"
                " review first",
            )
        catalogue = await self.catalogue(repo, person.catalogue_version)
        institutions = self.institutions.current(person.organizations_stamp)
        if institutions is None:
            institutions = self.institutions.load(
                person.organizations_stamp, await repo.organizations()
            )
        ordering = institutions.get(query.organization) or Institution(
            query.organization, query.organization
        )
        requests = await self._requests(catalogue, query.codes)
        check = Check(person, [], catalogue, at, ordering)
        if not person.patients:
            return check
        wanted = [r for _, r in requests if r is not None]
        codes = sorted({token.partition("|")[2] for token in catalogue.result_codes(wanted)})
        candidates = await repo.candidates(person.patients, codes) if codes else []
        if candidates and await self._opted_out(repo, person.patients):
            # A patient's opt-out: no other hospital's result is offered (hub.access.consents).
            check.opted_out = True
            candidates = [c for c in candidates if c.performer == query.organization]
        situation = Situation(at, ordering, institutions, self.zone)
        check.verdicts = evaluate(catalogue, requests, candidates, situation)
        pks = [m.pk for v in check.verdicts if v.reusable and v.result for m in v.result.members]
        check.contents = await repo.contents(pks)
        return check

    @staticmethod
    async def _opted_out(repo: RecognitionRepository, patients: list[str]) -> bool:
        consents = await AccessRepository(repo.connection).consents(patients)
        return any(is_opt_out(content) for _, _, content in consents)

    async def _requests(
        self, catalogue: Catalogue, codes: Sequence[RequestedCode]
    ) -> list[tuple[RequestedCode, Requested | None]]:
        """Each code resolved; the codings of one draft order are alternatives (LOINC and a
        local code of the same test), so an order is one request: its first recognised one."""
        requests: list[tuple[RequestedCode, Requested | None]] = []
        position: dict[str, int] = {}
        for code in codes:
            resolved = await self.resolve(catalogue, code)
            if code.order is None or code.order not in position:
                if code.order is not None:
                    position[code.order] = len(requests)
                requests.append((code, resolved))
            elif requests[position[code.order]][1] is None and resolved is not None:
                requests[position[code.order]] = (code, resolved)
        return requests

    async def resolve(self, catalogue: Catalogue, code: RequestedCode) -> Requested | None:
        """A requested code as a catalogue item: directly, or through the ordering hospital's
        code map when it is one of its local codes."""
        found = catalogue.resolve(code.system, code.code)
        if found is not None or not code.system:
            return found
        target = (await self.code_maps.get(code.system)).get(code.code)
        if target is None:
            return None
        found = catalogue.resolve(target.system, target.code)
        if found is None and target.catalogue:
            found = catalogue.resolve(None, target.catalogue)
        return found

    async def record(
        self, repo: RecognitionRepository, check: Check, context: ReminderContext
    ) -> list[Reminder]:
        """Record a reminder for each reusable verdict (statistics count from these). A
        reminder already shown for the same draft order, item and result is shown again."""
        patient = check.patient or ""
        reminders: list[Reminder] = []
        indexes: list[int] = []
        seen: set[tuple[str, str, str]] = set()
        for index, verdict in enumerate(check.verdicts):
            if not verdict.reusable or verdict.result is None or verdict.item is None:
                continue
            order = _draft_order(verdict.requested)
            key = (order or "", verdict.item.id, verdict.result.primary.reference)
            if order and key in seen:
                continue  # the same order twice in one request
            seen.add(key)
            reminders.append(
                Reminder(
                    id=uuid.uuid4(),
                    source=context.source,
                    organization=check.ordering.id,
                    patient_id=patient,
                    item_id=verdict.item.id,
                    result_ref=verdict.result.primary.reference,
                    label=verdict.label or "",
                    price_cny=verdict.item.price_cny,
                    result_org=verdict.result.performer,
                    order_ref=order,
                    requested=verdict.requested.token,
                    hook=context.hook,
                    hook_instance=context.hook_instance,
                    client_id=context.client_id,
                    department=context.department,
                    practitioner=context.practitioner,
                )
            )
            indexes.append(index)
        ids = await repo.add_reminders(reminders, check.at)
        check.reminders.update(zip(indexes, ids, strict=True))
        return reminders

    # -- decisions ----------------------------------------------------------------------------

    def check_decision(
        self, outcome: str, reason_code: str | None, reason_text: str | None
    ) -> tuple[str | None, str | None]:
        """A decision's reason, validated: a decline needs a coded reason from the
        CodeSystem, and "other" needs text. Returns (code, text)."""
        if outcome not in ("accepted", "declined"):
            raise bad_request("outcome must be 'accepted' or 'declined'")
        if reason_code is not None and not isinstance(reason_code, str):
            raise bad_request("the decline reason must be a code (a string)")
        if reason_text is not None and not isinstance(reason_text, str):
            raise bad_request("the reason text must be a string")
        text = (reason_text or "").strip()[:2000] or None
        if outcome == "accepted":
            return None, text
        if not reason_code:
            raise bad_request("a declined result needs a reason code from " + DECLINE_REASONS_URL)
        if reason_code not in self.decline_reasons:
            known = ", ".join(self.decline_reasons)
            raise bad_request(f"unknown decline reason {reason_code!r}; use one of: {known}")
        if reason_code == "other" and not text:
            raise bad_request("decline reason 'other' needs a text explanation")
        return reason_code, text

    async def decide(
        self,
        repo: RecognitionRepository,
        reminder_id: uuid.UUID,
        *,
        outcome: str,
        reason_code: str | None,
        reason_text: str | None,
        source: str,
        decided_by: str | None,
        client_id: str | None,
        organization: str | None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Record a decision on a reminder (the latest counts): (the decision, the reminder)."""
        code, text = self.check_decision(outcome, reason_code, reason_text)
        reminder = await self.reminder(repo, reminder_id, organization)
        decision_id = await repo.add_decision(
            reminder_id,
            at=datetime.now(UTC),
            source=source,
            outcome=outcome,
            reason_code=code,
            reason_text=text,
            decided_by=decided_by or reminder.get("practitioner"),
            client_id=client_id,
        )
        decision = {
            "id": decision_id,
            "reminder": str(reminder_id),
            "outcome": outcome,
            "reason": code,
            "reasonText": text,
        }
        return decision, reminder

    async def reminder(
        self, repo: RecognitionRepository, reminder_id: uuid.UUID, organization: str | None
    ) -> dict[str, Any]:
        """A reminder, visible to its own institution (``organization`` None: any)."""
        reminder = await repo.reminder(reminder_id)
        if reminder is None or (organization and reminder["organization"] != organization):
            raise FhirError(404, "not-found", f"reminder {reminder_id} does not exist")
        return reminder


def _draft_order(requested: RequestedCode) -> str | None:
    """The draft ServiceRequest a code came from, when the EHR gave it an id."""
    order = requested.order or ""
    return order if order.startswith("ServiceRequest/") else None


def parse_catalogue(raw: Any) -> CatalogueDocument:
    try:
        return CatalogueDocument.model_validate(raw)
    except ValidationError as error:
        raise FhirError(422, "invalid", _validation_message(error)) from None


def _validation_message(error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
        for e in error.errors()[:10]
    ]
    return "invalid catalogue: " + "; ".join(problems)
