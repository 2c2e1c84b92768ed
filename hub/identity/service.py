"""The identity service: one master Patient per person, linked to every hospital's record.

Each hospital's Patient is kept as sent (a *source*, owned by that hospital). The hub keeps a
*master* Patient per person (owned by no hospital, tagged ``mdm|master``) whose ``link`` lists
its sources (``seealso``) and whose identifiers are the union of theirs, so a search by any of
them finds the master, and searches by patient expand to the whole person
(``patient_group`` in SQL).

On every write of a source the service matches it:

- deterministically, on a valid resident ID or insurance number (current or ``old``) shared
  with a linked record: *certain*, linked automatically — unless name and birth date both
  disagree, which is sent for review instead;
- otherwise probabilistically (``hub.identity.matching``): *probable* and *possible* matches
  become review tasks and the source gets a master of its own; a *certain* grade from scores
  alone exists only if the rules set a threshold for it.

Operators link, unlink, merge and dismiss; every decision, automatic or manual, is an event
holding the links as they were before, so any of them can be undone.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import orjson

from hub.fhir.outcomes import FhirError, bad_request, unprocessable
from hub.identity.identifiers import (
    IdentifierSystems,
    InvalidIdentifier,
    organization_kind_of,
)
from hub.identity.links import Candidate, IdentityRepository, Link, Review
from hub.identity.matching import Demographics, MatchRules, MatchScore, Scorer, demographics_of
from hub.identity.protection import (
    ENVELOPE,
    IdentifierProtection,
    identifier_paths,
    identifiers_in,
    transform_identifiers,
)
from hub.records.unit_of_work import UnitOfWork
from hub.storage.resources import StoredResource, WriteContext

MDM_SYSTEM = "https://yijian-hub.org/fhir/CodeSystem/mdm"
MASTER_TAG = {"system": MDM_SYSTEM, "code": "master", "display": "主索引患者 Master patient"}
MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
MAX_REVIEWS = 5  # reviews opened per write, for the best-scoring masters
_ORG_SYSTEM = re.compile(r"^https://yijian-hub\.org/fhir/sid/org/([^/]+)/[a-z]+$")
# identifier values quoted in error messages (runs of 4+ letters and digits, with a digit)
# (ASCII boundaries: a Chinese character next to a number is no word boundary for \b)
_LONG_TOKEN = re.compile(r"(?<![0-9A-Za-z])(?=[0-9A-Za-z]*[0-9])[0-9A-Za-z]{4,}(?![0-9A-Za-z])")
NEW_MASTER = "rule:new-master"
# v2-0203 NNCHN: the national person identifier of China, i.e. the resident ID card number
NATIONAL_ID_TYPE = ("http://terminology.hl7.org/CodeSystem/v2-0203", "NNCHN")
UNDOABLE = frozenset({"link", "relink", "unlink", "merge", "undo"})


class MasterWriter(Protocol):
    """Stores a version of a resource (the record service's write path, with sealing and
    indexing), for the masters this service maintains."""

    async def store(
        self,
        uow: UnitOfWork,
        resource_id: str,
        version: int,
        resource: dict[str, Any],
        context: WriteContext,
        replace: bool,
    ) -> StoredResource | None: ...


@dataclass(frozen=True)
class Features:
    """What matching compares of one Patient."""

    demographics: Demographics
    id_keys: list[str]  # keyed hashes of every deterministic identifier, old ones included
    block_keys: list[str]


@dataclass
class Decision:
    master_id: str | None
    score: float | None
    decided_by: str
    reviews: list[tuple[str, str, MatchScore]] = field(default_factory=list)  # master, grade


@dataclass(frozen=True)
class MatchResult:
    master_id: str
    grade: str
    probability: float
    parts: dict[str, Any]


class IdentityService:
    """Matching, masters and the operators' link decisions."""

    def __init__(
        self,
        systems: IdentifierSystems,
        protection: IdentifierProtection,
        rules: MatchRules | None = None,
    ):
        self.systems = systems
        self.protection = protection
        self.scorer = Scorer(rules or MatchRules.default())
        self.writer: MasterWriter | None = None  # bound by the record service

    # -- the write path of Patients -------------------------------------------------------------

    def normalize(self, resource: dict[str, Any], organization: str | None) -> dict[str, Any]:
        """Identifiers with canonical systems and values; 422 for a value that is not valid.

        Every Identifier in the resource is checked (its own, a reference's, a contained
        resource's). One typed MRN/outpatient/inpatient without a system gets the writing
        hospital's own system; a hospital may not use another hospital's systems.
        """
        replacements: dict[int, dict[str, Any]] = {}
        for identifier in identifiers_in(resource):

            def path(target: dict[str, Any] = identifier) -> str:  # only for an error
                return next(p for p, i in identifier_paths(resource) if i is target)

            normalized = self._normalized(path, identifier, organization)
            if normalized is not identifier:
                replacements[id(identifier)] = normalized
        if not replacements:  # the common case: already canonical, nothing to copy
            return resource
        return transform_identifiers(resource, lambda i: replacements.get(id(i), i))

    def _normalized(
        self, path: Callable[[], str], identifier: dict[str, Any], organization: str | None
    ) -> dict[str, Any]:
        system, value = identifier.get("system"), identifier.get("value")
        if system is None and organization and (kind := organization_kind_of(identifier)):
            system = self.systems.organization_system(organization, kind)
        if system is None and _typed(identifier, NATIONAL_ID_TYPE):
            system = self.systems.by_key("resident-id").uri
        if isinstance(system, str):
            system = self.systems.canonical(system)
            owner = _ORG_SYSTEM.match(system)
            if owner and organization and owner.group(1) != organization:
                raise unprocessable(
                    f"identifier system {system} belongs to Organization/{owner.group(1)}; "
                    f"a hospital assigns identifiers only in its own systems",
                    [path() + ".system"],
                )
        if isinstance(value, str):
            if value.startswith(ENVELOPE):
                raise unprocessable(
                    f"identifier value may not start with {ENVELOPE!r}", [path() + ".value"]
                )
            try:
                value = self.systems.normalize(system, value)
            except InvalidIdentifier as error:
                # The message goes to the audit log too: never the number in full.
                message = self._masked_message(system, str(error))
                raise unprocessable(message, [path() + ".value"]) from None
        if system == identifier.get("system") and value == identifier.get("value"):
            return identifier
        updated = dict(identifier)
        if system is not None:
            updated["system"] = system
        if value is not None:
            updated["value"] = value
        return updated

    def _masked_message(self, system: str | None, message: str) -> str:
        return _LONG_TOKEN.sub(lambda m: self.systems.mask(system, m.group()), message)

    async def is_master(self, uow: UnitOfWork, patient_id: str) -> bool:
        return bool(await IdentityRepository(uow.connection).masters_among([patient_id]))

    async def guard_source_write(self, uow: UnitOfWork, patient_id: str) -> None:
        """Masters are maintained by this service only."""
        if await self.is_master(uow, patient_id):
            raise FhirError(
                409,
                "conflict",
                f"Patient/{patient_id} is a master record maintained by the hub's identity "
                "service; change its sources, or link/unlink/merge through /admin/identity",
            )

    async def source_written(
        self, uow: UnitOfWork, stored: StoredResource, body: dict[str, Any], context: WriteContext
    ) -> None:
        """Match a created or updated source Patient and keep its master current."""
        repo = IdentityRepository(uow.connection)
        source_id = stored.resource_id
        features = self.features(body)
        link = await repo.record_features(
            source_id,
            stored.owner_org,
            features.demographics.to_json(),
            features.block_keys,
            features.id_keys,
            features.id_keys + features.block_keys[:1],
        )
        if link is not None and link.manual:  # an operator's decision stands
            await self._compose(uow, link.master_id, context)
            return
        # Only a record seen before can have had reviews dismissed.
        decision = await self._decide(repo, features, source_id if link else None)
        affected: set[str] = set()
        moved = link is None or decision.master_id != link.master_id
        if decision.master_id is not None and moved:
            new = Link(
                source_id,
                decision.master_id,
                stored.owner_org,
                "certain",
                decision.score,
                decision.decided_by,
                False,
            )
            await repo.new_link(new, False, "link" if link is None else "relink", link)
            affected |= {new.master_id} | ({link.master_id} if link else set())
            final = new.master_id
        elif decision.master_id is None and (
            link is None or await self._joined_by_rule(repo, link)
        ):
            # No certain match: a master of its own. For a linked record, what tied it to the
            # others a rule linked with it is gone (e.g. a corrected ID number): it leaves
            # them. Records an operator put with it keep it (their decision was about it).
            master_id = str(uuid.uuid4())
            new = Link(
                source_id,
                master_id,
                stored.owner_org,
                "certain",
                None,
                NEW_MASTER,
                False,
            )
            await repo.new_link(new, True, "new-master" if link is None else "unlink", link)
            final = master_id
            if link is None:  # a new person: the master is this record alone
                await self._write_master(
                    uow, master_id, None, self._master_body(master_id, [(source_id, body)]), context
                )
            else:
                affected |= {master_id, link.master_id}
        else:
            assert link is not None
            affected.add(link.master_id)
            final = link.master_id
        if link is not None:  # a pending question about this pair is answered
            await repo.resolve_reviews(
                "linked", decision.decided_by, None, source_id=source_id, master_id=final
            )
        for master_id, grade, score in decision.reviews[:MAX_REVIEWS]:
            if master_id != final:
                await repo.open_review(source_id, master_id, grade, score.score, _explain(score))
        for master_id in sorted(affected):
            await self._compose(uow, master_id, context)

    async def source_deleted(self, uow: UnitOfWork, patient_id: str, context: WriteContext) -> None:
        repo = IdentityRepository(uow.connection)
        link = await repo.link_of(patient_id)
        await repo.remove_features(patient_id)
        await repo.resolve_reviews("superseded", "rule:source-deleted", None, source_id=patient_id)
        if link is None:
            return
        await repo.remove_link(patient_id)
        await repo.add_event(
            "unlink",
            "rule:source-deleted",
            source_id=patient_id,
            previous_master_id=link.master_id,
            details={"sources": [patient_id], "before": {patient_id: link.snapshot()}},
        )
        await self._compose(uow, link.master_id, context)

    def features(self, body: dict[str, Any]) -> Features:
        demographics = demographics_of(body)
        id_keys: list[str] = []
        national: set[tuple[str, str]] = set()
        deterministic = self.systems.deterministic_uris
        for identifier in body.get("identifier") or []:
            if not isinstance(identifier, dict):
                continue
            system, value = identifier.get("system"), identifier.get("value")
            if system in deterministic and isinstance(value, str) and value:
                key = self.protection.hash(system, value)
                id_keys.append(key)
                if identifier.get("use") != "old":
                    national.add((system, key))
        demographics = replace(demographics, national_ids=frozenset(national))
        return Features(demographics, sorted(set(id_keys)), self.scorer.blocking_keys(demographics))

    # -- matching -------------------------------------------------------------------------------

    async def _decide(
        self, repo: IdentityRepository, features: Features, source_id: str | None
    ) -> Decision:
        dismissed = await repo.dismissed_masters(source_id) if source_id else set()
        by_id, by_block = await repo.candidates(features.id_keys, features.block_keys, source_id)
        found = [c for c in by_id if c.master_id not in dismissed]
        if found:
            return self._deterministic(features, found)
        best = self._best_per_master(features, by_block, dismissed)
        decision = Decision(None, None, "rule:probabilistic")
        for master_id, score in best:
            if score.grade == "certain" and decision.master_id is None:
                decision.master_id, decision.score = master_id, score.score
            elif score.grade in ("certain", "probable", "possible"):
                decision.reviews.append((master_id, score.grade, score))
        return decision

    def _deterministic(self, features: Features, found: list[Candidate]) -> Decision:
        """Link on a shared ID number, unless the records plainly describe different people
        (then an operator looks: the ID was probably typed into the wrong record)."""
        decision = Decision(None, 1.0, "rule:deterministic")
        seen: list[str] = []
        for candidate in found:
            if candidate.master_id in seen:
                continue
            seen.append(candidate.master_id)
            score = self.scorer.score(
                features.demographics, Demographics.from_json(candidate.demographics)
            )
            implausible = (
                score.parts.get("name", ("", 0))[0] == "different"
                and score.parts.get("birthDate", ("", 0))[0] == "different"
            )
            if decision.master_id is None and not implausible:
                decision.master_id = candidate.master_id
            else:  # a second master with the same ID number: they should be merged
                decision.reviews.append((candidate.master_id, "probable", score))
        return decision

    def _best_per_master(
        self, features: Features, candidates: list[Candidate], skip: set[str]
    ) -> list[tuple[str, MatchScore]]:
        best: dict[str, MatchScore] = {}
        for candidate in candidates:
            if candidate.master_id in skip:
                continue
            score = self.scorer.score(
                features.demographics, Demographics.from_json(candidate.demographics)
            )
            if score.grade is None:
                continue
            if candidate.master_id not in best or score.score > best[candidate.master_id].score:
                best[candidate.master_id] = score
        return sorted(best.items(), key=lambda item: -item[1].score)

    async def match(
        self, uow: UnitOfWork, resource: dict[str, Any], count: int
    ) -> list[MatchResult]:
        """``Patient/$match``: graded master candidates for a Patient, best first."""
        if resource.get("resourceType") != "Patient":
            raise bad_request("$match needs a Patient in the 'resource' parameter")
        features = self.features(self.normalize(resource, None))
        demographics = features.demographics
        if not features.id_keys and not (demographics.names and demographics.birth_date):
            raise unprocessable(
                "$match needs a resident ID or insurance number, or a name and a full birth date"
            )
        repo = IdentityRepository(uow.connection)
        results: dict[str, MatchResult] = {}
        by_id, by_block = await repo.candidates(features.id_keys, features.block_keys, None)
        if by_id:
            decision = self._deterministic(features, by_id)
            if decision.master_id:
                results[decision.master_id] = MatchResult(
                    decision.master_id, "certain", 1.0, {"identifier": "exact"}
                )
        for master_id, score in self._best_per_master(features, by_block, set()):
            if master_id not in results and score.grade is not None:
                results[master_id] = MatchResult(
                    master_id, score.grade, round(score.probability, 4), _explain(score)
                )
        ranked = sorted(results.values(), key=lambda r: (-r.probability, r.master_id))
        return ranked[:count]

    # -- masters --------------------------------------------------------------------------------

    async def _joined_by_rule(self, repo: IdentityRepository, link: Link) -> bool:
        """Whether the source's master has other sources that a rule (not an operator) put
        there."""
        return any(
            not other.manual
            for other in await repo.links_of_master(link.master_id)
            if other.source_id != link.source_id
        )

    async def _new_master(self, repo: IdentityRepository) -> str:
        master_id = str(uuid.uuid4())
        await repo.add_master(master_id)
        return master_id

    async def _compose(self, uow: UnitOfWork, master_id: str, context: WriteContext) -> None:
        """Rewrite the master from its sources (no new version when nothing changed)."""
        assert self.writer is not None, "the record service binds a writer"
        repo = IdentityRepository(uow.connection)
        current = await uow.resources.current("Patient", master_id, lock=True)
        status = await repo.master_status(master_id)
        rows = await repo.sources_of_master(master_id)
        if rows:
            sources = [(source_id, orjson.loads(content)) for source_id, content in rows]
            body = self._master_body(master_id, sources)
            if status and status[0] != "active":
                await repo.set_master_status(master_id, "active")
        else:
            body = {"resourceType": "Patient", "id": master_id, "active": False}
            merged_into = status[1] if status else None
            if merged_into:
                body["link"] = [
                    {"other": {"reference": f"Patient/{merged_into}"}, "type": "replaced-by"}
                ]
            else:
                await repo.set_master_status(master_id, "retired")
            await repo.supersede_reviews_of_master(master_id, "rule:master-retired")
        await self._write_master(uow, master_id, current, body, context)

    async def _write_master(
        self,
        uow: UnitOfWork,
        master_id: str,
        current: StoredResource | None,
        body: dict[str, Any],
        context: WriteContext,
    ) -> None:
        """Store a new version of a master, unless it says what the current one says."""
        assert self.writer is not None, "the record service binds a writer"
        body["meta"] = {"tag": [MASTER_TAG]}
        if current is not None and current.content is not None:
            previous = self.protection.reveal(orjson.loads(current.content), full=True)
            previous.pop("meta", None)
            if previous == {k: v for k, v in body.items() if k != "meta"}:
                return
        version = current.version_id + 1 if current else 1
        await self.writer.store(uow, master_id, version, body, context, current is not None)

    def _master_body(
        self, master_id: str, sources: list[tuple[str, dict[str, Any]]]
    ) -> dict[str, Any]:
        """The golden record: identifiers and phones of every source, the rest from the most
        recently updated source that has it."""
        identifiers: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for _, source in sources:
            opened = self.protection.reveal(source, full=True)
            for identifier in opened.get("identifier") or []:
                key = (identifier.get("system", ""), identifier.get("value", ""))
                if key not in seen:
                    seen.add(key)
                    identifiers.append(identifier)
        body: dict[str, Any] = {"resourceType": "Patient", "id": master_id}
        if identifiers:
            body["identifier"] = identifiers
        body["active"] = True
        for element in ("name", "gender", "birthDate", "address", "maritalStatus"):
            for _, source in sources:
                if source.get(element):
                    body[element] = source[element]
                    break
        telecom = _unique(t for _, source in sources for t in source.get("telecom") or [])
        if telecom:
            body["telecom"] = telecom
        body["link"] = [
            {"other": {"reference": f"Patient/{source_id}"}, "type": "seealso"}
            for source_id, _ in sorted(sources)
        ]
        return body

    # -- operators ------------------------------------------------------------------------------

    async def link(
        self,
        uow: UnitOfWork,
        source_id: str,
        master_id: str,
        actor: str,
        reason: str | None,
    ) -> int:
        """Link a source to a master (moving it from its current one)."""
        repo = IdentityRepository(uow.connection)
        link = await self._source_link(repo, source_id)
        await self._active_master(repo, master_id)
        new = Link(source_id, master_id, link.organization, "certain", None, actor, True)
        await repo.save_link(new)
        event = await repo.add_event(
            "link",
            actor,
            source_id=source_id,
            master_id=master_id,
            previous_master_id=link.master_id,
            grade="certain",
            reason=reason,
            details={"sources": [source_id], "before": {source_id: link.snapshot()}},
        )
        await repo.resolve_reviews(
            "linked", actor, reason, source_id=source_id, master_id=master_id
        )
        context = WriteContext(actor, None, None)
        for affected in sorted({link.master_id, master_id}):
            await self._compose(uow, affected, context)
        return event

    async def unlink(self, uow: UnitOfWork, source_id: str, actor: str, reason: str | None) -> int:
        """Detach a source into a master of its own; matching will not re-link it."""
        repo = IdentityRepository(uow.connection)
        link = await self._source_link(repo, source_id)
        if len(await repo.links_of_master(link.master_id)) == 1:
            raise FhirError(
                409, "conflict", f"Patient/{source_id} is the only record of its master"
            )
        master_id = await self._new_master(repo)
        await repo.save_link(
            Link(source_id, master_id, link.organization, "certain", None, actor, True)
        )
        event = await repo.add_event(
            "unlink",
            actor,
            source_id=source_id,
            master_id=master_id,
            previous_master_id=link.master_id,
            reason=reason,
            details={"sources": [source_id], "before": {source_id: link.snapshot()}},
        )
        context = WriteContext(actor, None, None)
        for affected in sorted({link.master_id, master_id}):
            await self._compose(uow, affected, context)
        return event

    async def merge(
        self, uow: UnitOfWork, from_id: str, into_id: str, actor: str, reason: str | None
    ) -> int:
        """Move every source of one master to another; the first is kept as replaced-by."""
        if from_id == into_id:
            raise bad_request("a master cannot be merged into itself")
        repo = IdentityRepository(uow.connection)
        await self._active_master(repo, from_id)
        await self._active_master(repo, into_id)
        links = await repo.links_of_master(from_id)
        for link in links:
            await repo.save_link(replace(link, master_id=into_id, decided_by=actor, manual=True))
        await repo.set_master_status(from_id, "merged", into_id)
        sources = [link.source_id for link in links]
        event = await repo.add_event(
            "merge",
            actor,
            master_id=into_id,
            previous_master_id=from_id,
            reason=reason,
            details={
                "sources": sources,
                "before": {link.source_id: link.snapshot() for link in links},
                "masters_before": {from_id: ["active", None]},
            },
        )
        for source_id in sources:
            await repo.resolve_reviews(
                "linked", actor, reason, source_id=source_id, master_id=into_id
            )
        context = WriteContext(actor, None, None)
        for master_id in sorted({into_id, from_id}):  # the order every writer locks masters in
            await self._compose(uow, master_id, context)
        return event

    async def undo(self, uow: UnitOfWork, event_id: int, actor: str, reason: str | None) -> int:
        """Put the links an event changed back as they were; the undo is itself an event."""
        repo = IdentityRepository(uow.connection)
        event = await repo.event(event_id, lock=True)
        if event is None:
            raise FhirError(404, "not-found", f"identity event {event_id} is not known")
        if event["undone_by"] is not None:
            raise FhirError(
                409, "conflict", f"event {event_id} was already undone by {event['undone_by']}"
            )
        before: dict[str, Any] = event["details"].get("before") or {}
        if event["action"] not in UNDOABLE or not before:
            raise bad_request(f"a {event['action']!r} event cannot be undone")
        sources = list(before)
        later = await repo.later_events(event_id, sources)
        if later:
            raise FhirError(
                409,
                "conflict",
                f"later decisions ({', '.join(map(str, later))}) changed these records; "
                "undo those first",
            )
        affected: set[str] = set()
        now: dict[str, Any] = {}
        for source_id, snapshot in before.items():
            current = await repo.link_of(source_id)
            if current is None:
                raise FhirError(409, "conflict", f"Patient/{source_id} no longer has a link")
            now[source_id] = current.snapshot()
            if snapshot is None:  # a first link: the record gets a master of its own
                snapshot = {**current.snapshot(), "master_id": await self._new_master(repo)}
            restored = Link.restore(source_id, snapshot)
            if await repo.master_status(restored.master_id) is None:
                await repo.add_master(restored.master_id)
            await repo.save_link(replace(restored, manual=True, decided_by=actor))
            affected |= {current.master_id, restored.master_id}
        masters_before = {}
        for master_id in affected:
            status = await repo.master_status(master_id)
            masters_before[master_id] = list(status) if status else None
        for master_id in event["details"].get("masters_before") or {}:
            await repo.set_master_status(master_id, "active")
        undo_id = await repo.add_event(
            "undo",
            actor,
            source_id=event["source_id"],
            master_id=event["previous_master_id"],
            previous_master_id=event["master_id"],
            reason=reason,
            undoes=event_id,
            details={"sources": sources, "before": now, "masters_before": masters_before},
        )
        context = WriteContext(actor, None, None)
        for master_id in sorted(affected):
            await self._compose(uow, master_id, context)
        return undo_id

    async def dismiss(
        self, uow: UnitOfWork, review_id: int, actor: str, reason: str | None
    ) -> Review:
        """Not the same person: close the review; matching will not propose the pair again."""
        repo = IdentityRepository(uow.connection)
        review = await repo.review(review_id, lock=True)
        if review is None:
            raise FhirError(404, "not-found", f"review {review_id} is not known")
        if review.status != "open":
            raise FhirError(409, "conflict", f"review {review_id} is already {review.status}")
        await repo.resolve_reviews("dismissed", actor, reason, review_id=review_id)
        await repo.add_event(
            "dismiss",
            actor,
            source_id=review.source_id,
            master_id=review.master_id,
            reason=reason,
            details={"review": review_id},
        )
        dismissed = await repo.review(review_id)
        assert dismissed is not None
        return dismissed

    async def _source_link(self, repo: IdentityRepository, source_id: str) -> Link:
        link = await repo.link_of(source_id)
        if link is None:
            if await repo.masters_among([source_id]):
                raise bad_request(f"Patient/{source_id} is a master, not a source record")
            raise FhirError(404, "not-found", f"Patient/{source_id} is not a known source record")
        return link

    async def _active_master(self, repo: IdentityRepository, master_id: str) -> None:
        status = await repo.master_status(master_id)
        if status is None:
            raise FhirError(404, "not-found", f"Patient/{master_id} is not a master record")
        if status[0] != "active":
            raise FhirError(409, "conflict", f"Patient/{master_id} is {status[0]}")

    # -- cross-reference ------------------------------------------------------------------------

    async def cross_reference(
        self, uow: UnitOfWork, source: str, targets: list[str]
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """``$ihe-pix``: the Patients and identifiers of the person with ``source``
        (``system|value``), in the ``targets`` systems if any are given."""
        system, bar, value = source.partition("|")
        if not bar or not system or not value:
            raise bad_request("sourceIdentifier must be 'system|value'")
        system = self.systems.canonical(system)
        known = self.systems.lookup(system) is not None or await uow.connection.fetchval(
            "SELECT 1 FROM idx_token WHERE res_type = 'Patient' AND param = 'identifier' "
            "AND system = $1 LIMIT 1",
            system,
        )
        if not known:
            raise bad_request(f"sourceIdentifier assigning authority {system} is not known")
        wanted = [self.systems.canonical(t) for t in targets]
        for target in wanted:
            if self.systems.lookup(target) is None and not await uow.connection.fetchval(
                "SELECT 1 FROM idx_token WHERE res_type = 'Patient' AND param = 'identifier' "
                "AND system = $1 LIMIT 1",
                target,
            ):
                raise FhirError(403, "forbidden", f"targetSystem {target} is not known")
        system, value, code = self.index_token(system, value)
        rows = await uow.connection.fetch(
            "SELECT r.res_id FROM idx_token x JOIN resource r ON r.pk = x.pk "
            "WHERE x.res_type = 'Patient' AND x.param = 'identifier' AND x.system = $1 "
            "AND x.code = $2 AND NOT r.deleted",
            system,
            code,
        )
        if not rows:
            raise FhirError(404, "not-found", "sourceIdentifier Patient Identifier not found")
        group = await IdentityRepository(uow.connection).group([r["res_id"] for r in rows])
        patients = await uow.connection.fetch(
            "SELECT res_id, content FROM resource WHERE res_type = 'Patient' "
            "AND res_id = ANY($1::text[]) AND NOT deleted ORDER BY res_id",
            group,
        )
        identifiers: list[dict[str, Any]] = []
        seen = {(system, value)}
        holders = []  # the records holding an identifier in the target systems
        for row in patients:
            held = list(self.protection.plain_identifiers(orjson.loads(row["content"])))
            if not wanted or any(s in wanted for s, _ in held):
                holders.append(row["res_id"])
            for sys_, plain in held:
                if (sys_, plain) in seen or (wanted and sys_ not in wanted):
                    continue
                seen.add((sys_, plain))
                identifiers.append({"system": sys_, "value": plain})
        return holders, identifiers

    def index_token(self, system: str, value: str) -> tuple[str, str, str]:
        """How a Patient identifier is indexed: the canonical system, the normalised value,
        and the code searched (that value, or its keyed hash for a protected system). A value
        that fails the system's checks (a bad ID-card checksum) is a 400."""
        system = self.systems.canonical(system)
        try:
            value = self.systems.normalize(system, value)
        except InvalidIdentifier as error:
            raise bad_request(self._masked_message(system, str(error))) from None
        code = self.protection.hash(system, value) if system in self.protection.protected else value
        return system, value, code

    # -- reading ----------------------------------------------------------------------------------

    def present(self, stored: StoredResource, full: bool) -> StoredResource:
        """The stored version as a caller sees it: envelopes opened, in full or masked."""
        if stored.content is None or ENVELOPE not in stored.content:
            return stored
        opened = self.protection.reveal(orjson.loads(stored.content), full)
        return replace(stored, content=orjson.dumps(opened).decode())

    async def reviews(
        self, uow: UnitOfWork, status: str | None, limit: int, after: int
    ) -> list[Review]:
        return await IdentityRepository(uow.connection).reviews(status, limit, after)

    async def events(
        self, uow: UnitOfWork, patient_id: str | None, limit: int
    ) -> list[dict[str, Any]]:
        return await IdentityRepository(uow.connection).events(patient_id, limit)

    async def group(self, uow: UnitOfWork, patient_id: str) -> list[str]:
        return await IdentityRepository(uow.connection).group([patient_id])


def _explain(score: MatchScore) -> dict[str, Any]:
    return {
        "score": round(score.score, 3),
        "probability": round(score.probability, 4),
        "fields": {name: {"outcome": o, "weight": w} for name, (o, w) in score.parts.items()},
    }


def _unique(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _typed(identifier: dict[str, Any], coding: tuple[str, str]) -> bool:
    kind = identifier.get("type")
    codings = kind.get("coding") if isinstance(kind, dict) else None
    return isinstance(codings, list) and any(
        isinstance(c, dict) and (c.get("system"), c.get("code")) == coding for c in codings
    )


def without_master_tag(resource: dict[str, Any]) -> dict[str, Any]:
    """A source may not pass itself off as a master: the hub's mdm tags are removed."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    if not isinstance(tags, list) or not any(
        isinstance(t, dict) and t.get("system") == MDM_SYSTEM for t in tags
    ):
        return resource
    assert isinstance(meta, dict)
    kept = [t for t in tags if not (isinstance(t, dict) and t.get("system") == MDM_SYSTEM)]
    return {**resource, "meta": {**meta, "tag": kept}}
