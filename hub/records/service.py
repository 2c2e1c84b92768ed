"""FHIR interactions on stored records: read, write, search, history and ``$everything``.

Each method takes the calling ``Principal`` and a ``UnitOfWork``; it applies the authorization
policy, validates, maintains versions and indexes through the repository, and notes the
entities and patients touched so the caller can audit them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import orjson

import fhir_profiles
from hub.access.service import AccessService, Lifetimes
from hub.fhir import validation
from hub.fhir.datetimes import DateFormatError, instant, parse_range
from hub.fhir.indexing import Indexer
from hub.fhir.outcomes import FhirError, bad_request, forbidden, gone, not_found
from hub.fhir.paths import CompiledPath, compile_expression
from hub.fhir.references import split_reference
from hub.fhir.search import Cursor, SearchParser, SearchRequest, TokenValue
from hub.fhir.searchparams import RESOURCE_TYPES, SearchParamRegistry
from hub.identity.protection import IdentifierProtection
from hub.identity.service import without_master_tag
from hub.records.accession import accession_lock, accession_numbers, add_study_references
from hub.records.unit_of_work import PendingWrite, UnitOfWork, unknown_references
from hub.security import policy
from hub.security.audit_events import AuditEventView
from hub.security.principals import Principal
from hub.security.scopes import CREATE, DELETE, READ, SEARCH, UPDATE
from hub.storage.resources import Page, StoredResource, WriteContext, ids_with_token

if TYPE_CHECKING:
    from hub.identity.service import IdentityService

MAX_INCLUDED = 1000
WRITE_ATTEMPTS = 3  # optimistic writes re-read and retry this often before a 409
INCLUDE_ITERATIONS = 3
# The clinical date of each type, for $everything's start/end.
CLINICAL_DATES = {
    "Observation": "date",
    "DiagnosticReport": "date",
    "Encounter": "date",
    "ImagingStudy": "started",
    "ServiceRequest": "authored",
    "Specimen": "collected",
    "Consent": "date",
    "Provenance": "recorded",
    "Basic": "created",
}


@dataclass
class WriteOutcome:
    stored: StoredResource
    created: bool  # 201 rather than 200
    changed: bool = True  # False when a conditional create matched an existing resource


@dataclass
class SearchResult:
    request: SearchRequest
    page: Page
    included: list[StoredResource] = field(default_factory=list)
    total: int | None = None


class RecordService:
    """The FHIR record operations of the hub."""

    def __init__(
        self,
        registry: SearchParamRegistry,
        indexer: Indexer,
        parser: SearchParser,
        identity: IdentityService,
    ):
        self.registry = registry
        self.indexer = indexer
        self.parser = parser
        self.identity = identity
        self.protection: IdentifierProtection = identity.protection
        identity.writer = self
        compartment = fhir_profiles.patient_compartment()
        self.compartment_members = [
            (entry["code"], param)
            for entry in compartment.get("resource", [])
            for param in entry.get("param", [])
        ]
        # Purposes of use narrow every read of a doctor or consultant (``hub.access``).
        self.access = AccessService(self.compartment_members, CLINICAL_DATES, Lifetimes())
        self._patient_paths: dict[str, CompiledPath] = {}
        for resource_type, param in self.compartment_members:
            definition = registry.get(resource_type, param)
            if definition and definition.path:
                path = self._patient_paths.get(resource_type)
                expression = definition.path.expression
                if path is not None:
                    expression = f"{path.expression} | {expression}"
                self._patient_paths[resource_type] = compile_expression(expression).for_type(
                    resource_type
                )

    # -- access by purpose ----------------------------------------------------------------------

    async def read_access(self, uow: UnitOfWork, principal: Principal) -> policy.AccessFilter:
        """The caller's row filter: the policy's rules narrowed by its purposes of use."""
        if uow.access is None:
            uow.access = await self.access.access(uow.connection, principal)
        access_filter: policy.AccessFilter = uow.access.filter
        return access_filter

    async def _may_read(
        self, uow: UnitOfWork, principal: Principal, stored: StoredResource | None
    ) -> bool:
        if stored is None or not policy.may_read_row(
            principal, stored.resource_type, stored.owner_org
        ):
            return False
        access = await self.read_access(uow, principal)
        if access.scopes is None or stored.resource_type not in access.patient_types:
            return True
        return await self.access.visible(
            uow.connection, access, stored.resource_type, stored.resource_id
        )

    # -- reads --------------------------------------------------------------------------------

    async def read(
        self, uow: UnitOfWork, principal: Principal, resource_type: str, resource_id: str
    ) -> StoredResource:
        check_type(resource_type)
        policy.require(principal, resource_type, READ)
        if resource_type == "AuditEvent":
            event = await AuditEventView(uow.connection).read(resource_id)
            if event is None:
                raise not_found(resource_type, resource_id)
            return event
        stored = await uow.resources.current(resource_type, resource_id)
        return await self._visible(uow, principal, stored, resource_type, resource_id)

    async def vread(
        self,
        uow: UnitOfWork,
        principal: Principal,
        resource_type: str,
        resource_id: str,
        version: str,
    ) -> StoredResource:
        check_type(resource_type)
        policy.require(principal, resource_type, READ)
        if resource_type == "AuditEvent" and version == "1":
            return await self.read(uow, principal, resource_type, resource_id)
        if not version.isdigit():
            raise not_found(resource_type, f"{resource_id}/_history/{version}")
        stored = await uow.resources.version(resource_type, resource_id, int(version))
        return await self._visible(
            uow, principal, stored, resource_type, f"{resource_id}/_history/{version}"
        )

    async def _visible(
        self,
        uow: UnitOfWork,
        principal: Principal,
        stored: StoredResource | None,
        resource_type: str,
        label: str,
    ) -> StoredResource:
        """A stored version the principal may see: 404 if absent or not theirs, 410 if deleted."""
        if stored is None or not await self._may_read(uow, principal, stored):
            raise not_found(resource_type, label)
        if stored.deleted:
            raise gone(resource_type, label)
        self.note(uow, stored)
        return self.present(principal, stored)

    def present(self, principal: Principal, stored: StoredResource) -> StoredResource:
        """A stored version as this principal may see it (identifier values in full or
        masked)."""
        return self.identity.present(stored, policy.identifiers_in_full(principal))

    def needs_transaction(self, resource_type: str) -> bool:
        """Writes of Patients also match and link them, and imaging studies and reports are
        linked by accession number (under a lock); these must be atomic with the write."""
        return resource_type in ("Patient", "ImagingStudy", "DiagnosticReport")

    # -- writes -------------------------------------------------------------------------------

    async def create(
        self,
        uow: UnitOfWork,
        principal: Principal,
        resource_type: str,
        resource: dict[str, Any],
        context: WriteContext,
        if_none_exist: str | None = None,
        resource_id: str | None = None,
    ) -> WriteOutcome:
        """Create with a new id (or ``resource_id``, assigned by a transaction)."""
        check_type(resource_type)
        policy.require(principal, resource_type, CREATE)
        resource = self._prepare(principal, resource, resource_type)
        if if_none_exist:
            existing = await self.match_if_none_exist(uow, principal, resource_type, if_none_exist)
            if existing is not None:
                return WriteOutcome(existing, created=False, changed=False)
        owner = policy.owner_for_write(principal, resource, None, exists=False)
        resource_id = resource_id or str(uuid.uuid4())
        stored = await self._write(
            uow, resource_type, resource_id, 1, resource, context, method="POST", owner=owner
        )
        if stored is None:
            raise FhirError(409, "duplicate", f"{resource_type}/{resource_id} already exists")
        return WriteOutcome(self.present(principal, stored), created=True)

    def _prepare(
        self, principal: Principal, resource: dict[str, Any], resource_type: str
    ) -> dict[str, Any]:
        """Identifiers normalised (422 for an invalid ID number), then validated."""
        resource = self.identity.normalize(resource, policy.assigning_organization(principal))
        if resource_type == "Patient":
            resource = without_master_tag(resource)
        validation.validate(resource, resource_type)
        return resource

    async def match_if_none_exist(
        self, uow: UnitOfWork, principal: Principal, resource_type: str, criteria: str
    ) -> StoredResource | None:
        """The resource an If-None-Exist condition matches; 412 if it matches several."""
        check_type(resource_type)
        existing = await self._conditional_match(uow, principal, resource_type, criteria)
        if len(existing) > 1:
            raise FhirError(
                412,
                "multiple-matches",
                f"If-None-Exist matched {len(existing)} {resource_type} resources",
            )
        if existing:
            self.note(uow, existing[0])
            return self.present(principal, existing[0])
        return None

    async def match_many(
        self, uow: UnitOfWork, principal: Principal, conditions: list[tuple[str, str]]
    ) -> list[list[StoredResource]] | None:
        """Resolve many conditional criteria (``(type, "identifier=system|value")``) with one
        lock statement and one lookup, as ``_conditional_match`` would one by one (same lock
        keys, same matching). None when any criterion is not a single exact identifier: the
        caller then matches one by one."""
        wanted: list[tuple[str, str, str]] = []
        keys: list[str] = []
        for resource_type, criteria in conditions:
            check_type(resource_type)
            query = parse_qsl(criteria.lstrip("?").split("?", 1)[-1], keep_blank_values=True)
            if len(query) != 1 or query[0][0] != "identifier":
                return None
            request = self._parse(resource_type, query, strict=True)
            if len(request.criteria) != 1:
                return None
            criterion = request.criteria[0]
            value = criterion.values[0] if len(criterion.values) == 1 else None
            if (
                criterion.modifier
                or criterion.chain
                or not isinstance(value, TokenValue)
                or not value.system
                or value.code is None
            ):
                return None
            wanted.append((resource_type, value.system, value.code))
            keys.append(_lock_key(resource_type, query, request))
        await uow.resources.advisory_locks(keys)
        return await uow.resources.by_tokens(
            "identifier", wanted, await self.read_access(uow, principal), lock=uow.in_transaction
        )

    async def update(
        self,
        uow: UnitOfWork,
        principal: Principal,
        resource_type: str,
        resource_id: str,
        resource: dict[str, Any],
        context: WriteContext,
        if_match: str | None = None,
        known: StoredResource | None = None,
    ) -> WriteOutcome:
        """Replace (or create with this id). ``known``: the current version as just read by
        the caller; the write still checks it is current (and reads again if not).

        An update that changes nothing but the metadata stores no new version (a resent
        message, a Patient repeated in every result message): the current one is returned.
        """
        check_type(resource_type)
        if resource.get("id") != resource_id:
            raise bad_request(
                f"the resource id ({resource.get('id')!r}) must match the URL ({resource_id!r})"
            )
        resource = self._prepare(principal, resource, resource_type)
        if if_match is not None and not self.needs_transaction(resource_type):
            # The expected version is known: write without reading first. If nothing was
            # written, the general path below finds out why (412, 403 or 404).
            stored = await self._update_expected_version(
                uow, principal, resource, parse_etag(if_match), context
            )
            if stored is not None:
                return WriteOutcome(self.present(principal, stored), created=False)
        current: StoredResource | None
        for _ in range(WRITE_ATTEMPTS):
            if known is not None:
                current, known = known, None
            else:
                current = await uow.resources.current(
                    resource_type, resource_id, lock=uow.in_transaction
                )
            exists = current is not None and not current.deleted
            policy.require(principal, resource_type, UPDATE if exists else CREATE)
            if current is not None and not policy.may_read_row(
                principal, resource_type, current.owner_org
            ):
                raise forbidden(f"{resource_type}/{resource_id} belongs to another organization")
            if if_match is not None:
                _check_if_match(if_match, current, resource_type, resource_id)
            if resource_type == "Patient" and current is not None:
                await self.identity.guard_source_write(uow, resource_id)
            if exists and if_match is None and self._unchanged(current, resource):
                assert current is not None
                self.note(uow, current, resource)
                return WriteOutcome(self.present(principal, current), created=False, changed=False)
            owner = policy.owner_for_write(
                principal, resource, current.owner_org if current else None, exists=exists
            )
            stored = await self._write(
                uow,
                resource_type,
                resource_id,
                current.version_id + 1 if current else 1,
                resource,
                context,
                method="PUT",
                owner=owner,
                replace=current is not None,
            )
            if stored is not None:
                return WriteOutcome(self.present(principal, stored), created=not exists)
            # another writer changed it between our read and write: read again (If-Match, if
            # given, will now fail with 412)
        raise _write_conflict(resource_type, resource_id)

    @staticmethod
    def _deferrable(resource_type: str, body: dict[str, Any]) -> bool:
        """Whether a write may wait for the Bundle's pipelined flush: not when something in
        the same transaction reads what it writes (identity matching of Patients, accession
        linking of studies and imaging reports)."""
        if resource_type in ("Patient", "ImagingStudy"):
            return False
        return resource_type != "DiagnosticReport" or not any(accession_numbers(body))

    def _unchanged(self, current: StoredResource | None, resource: dict[str, Any]) -> bool:
        """Whether ``resource`` says exactly what the stored version says (metadata aside)."""
        if current is None or current.content is None:
            return False
        stored = orjson.loads(current.content)
        if self.protection.mentions_protected(stored):
            stored = self.protection.reveal(stored, True)
        if "imagingStudy" in stored and "imagingStudy" not in resource:
            # The hub linked the study (by accession number); a resend does not carry it.
            resource = {**resource, "imagingStudy": stored["imagingStudy"]}
        return _content(stored) == _content(resource)

    async def _update_expected_version(
        self,
        uow: UnitOfWork,
        principal: Principal,
        resource: dict[str, Any],
        expected: str,
        context: WriteContext,
    ) -> StoredResource | None:
        resource_type, resource_id = resource["resourceType"], resource["id"]
        if not expected.isdigit():
            return None
        policy.require(principal, resource_type, UPDATE)
        required_owner = policy.required_owner(principal, resource_type)
        owner = policy.owner_for_write(principal, resource, required_owner, exists=True)
        return await self._write(
            uow,
            resource_type,
            resource_id,
            int(expected) + 1,
            resource,
            context,
            method="PUT",
            owner=owner,
            replace=True,
            required_owner=required_owner,
            live_only=True,
        )

    async def conditional_update(
        self,
        uow: UnitOfWork,
        principal: Principal,
        resource_type: str,
        query: list[tuple[str, str]],
        resource: dict[str, Any],
        context: WriteContext,
        matches: list[StoredResource] | None = None,
        *,
        new_id: str | None = None,
    ) -> WriteOutcome:
        """Update what ``query`` matches, or create. ``matches``: the criteria were resolved
        already (``match_many``, under the same lock), so they are not searched again.
        ``new_id``: the id to create with when nothing matches (one the hub just assigned)."""
        check_type(resource_type)
        resolved = matches is not None  # by match_many: full rows, usable as the current one
        if matches is None:
            matches = await self._conditional_match(uow, principal, resource_type, urlencode(query))
        if len(matches) > 1:
            raise FhirError(
                412, "multiple-matches", f"the conditional update matched {len(matches)} resources"
            )
        if matches:
            resource_id = matches[0].resource_id
            if resource.get("id") not in (None, resource_id):
                raise bad_request("the resource id does not match the resource found")
            return await self.update(
                uow,
                principal,
                resource_type,
                resource_id,
                {**resource, "id": resource_id},
                context,
                known=matches[0] if resolved else None,
            )
        if "id" in resource:
            return await self.update(
                uow, principal, resource_type, resource["id"], resource, context
            )
        return await self.create(
            uow, principal, resource_type, resource, context, resource_id=new_id
        )

    async def delete(
        self,
        uow: UnitOfWork,
        principal: Principal,
        resource_type: str,
        resource_id: str,
        context: WriteContext,
    ) -> bool:
        """Delete; False when it was already deleted (still a success)."""
        check_type(resource_type)
        policy.require(principal, resource_type, DELETE)
        if resource_type == "Patient":
            await self.identity.guard_source_write(uow, resource_id)
        version = await uow.resources.delete(
            resource_type,
            resource_id,
            datetime.now(UTC),
            context,
            policy.required_owner(principal, resource_type),
        )
        if version is not None:
            uow.entities.append(f"{resource_type}/{resource_id}/_history/{version}")
            if resource_type == "Patient":
                await self.identity.source_deleted(uow, resource_id, context)
            return True
        # Nothing deleted: say why.
        current = await uow.resources.current(resource_type, resource_id)
        if current is None or not policy.may_read_row(principal, resource_type, current.owner_org):
            raise not_found(resource_type, resource_id)
        if current.deleted:
            return False
        raise _write_conflict(resource_type, resource_id)

    async def _write(
        self,
        uow: UnitOfWork,
        resource_type: str,
        resource_id: str,
        version: int,
        resource: dict[str, Any],
        context: WriteContext,
        *,
        method: str,
        owner: str | None,
        replace: bool = False,
        required_owner: str | None = None,
        live_only: bool = False,
        source: bool = True,
    ) -> StoredResource | None:
        """Store a new version; None if a concurrent writer changed the resource first.

        Protected identifier values are sealed in the stored JSON and hashed in the index. A
        Patient written through the API (a ``source``) is then matched and linked.
        """
        now = datetime.now(UTC)
        meta = {
            k: v
            for k, v in (resource.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")
        }
        body = {
            "resourceType": resource_type,
            "id": resource_id,
            "meta": {"versionId": str(version), "lastUpdated": instant(now), **meta},
        }
        body.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta"))
        if resource_type == "DiagnosticReport" and (accessions := list(accession_numbers(body))):
            # Serialised with a study of the same accession number written concurrently, so
            # that whichever commits second sees the first and the two are linked.
            await uow.resources.advisory_locks([accession_lock(s, v) for s, v in accessions])
            for system, value in accessions:
                studies = await ids_with_token(
                    uow.connection, "ImagingStudy", "identifier", system, value
                )
                add_study_references(body, studies)
        rows = self.indexer.index(body)
        self.protection.protect_rows(rows)
        references = {r for r in rows.references() if r != (resource_type, resource_id)}
        if uow.in_transaction:  # checked at commit: they may be created later in the Bundle
            uow.references |= references
            references = set()
        content = self.protection.sealed_json(body)
        statement = uow.resources.write_statement(
            resource_type,
            resource_id,
            version,
            now,
            content,
            rows,
            method=method,
            owner_org=owner,
            context=context,
            replace=replace,
            required=references,
            required_owner=required_owner,
            live_only=live_only,
        )
        if uow.pending is not None and self._deferrable(resource_type, body):
            uow.pending.append(PendingWrite(statement, resource_type, resource_id, replace))
            stored = StoredResource(
                0, resource_type, resource_id, version, now, content, False, owner
            )
            self.note(uow, stored, body)
            return stored
        written = await uow.resources.run_write(statement)
        if written.missing:
            raise unknown_references(written.missing)
        if written.pk is None:
            return None
        pk = written.pk
        stored = StoredResource(pk, resource_type, resource_id, version, now, content, False, owner)
        self.note(uow, stored, body)
        if resource_type == "Patient" and source:
            if not uow.in_transaction:
                raise AssertionError("Patient writes run in a transaction (needs_transaction)")
            await self.identity.source_written(uow, stored, body, context)
        if resource_type == "ImagingStudy":
            await self._link_reports(uow, resource_id, body, context)
        return stored

    async def _link_reports(
        self, uow: UnitOfWork, study_id: str, study: dict[str, Any], context: WriteContext
    ) -> None:
        """Add a study to the reports already stored with its accession number."""
        accessions = list(accession_numbers(study))
        if accessions:
            await uow.resources.advisory_locks([accession_lock(s, v) for s, v in accessions])
        for system, value in accessions:
            report_ids = await ids_with_token(
                uow.connection, "DiagnosticReport", "identifier", system, value
            )
            for report_id in report_ids:
                current = await uow.resources.current("DiagnosticReport", report_id, lock=True)
                if current is None or current.deleted or current.content is None:
                    continue
                report = self.protection.reveal(orjson.loads(current.content), True)
                if not add_study_references(report, [study_id]):
                    continue
                await self._write(
                    uow,
                    "DiagnosticReport",
                    report_id,
                    current.version_id + 1,
                    report,
                    context,
                    method="PUT",
                    owner=current.owner_org,
                    replace=True,
                )

    async def store(
        self,
        uow: UnitOfWork,
        resource_id: str,
        version: int,
        resource: dict[str, Any],
        context: WriteContext,
        replace: bool,
    ) -> StoredResource | None:
        """Write a master Patient for the identity service (no matching: it is no source)."""
        return await self._write(
            uow,
            "Patient",
            resource_id,
            version,
            resource,
            context,
            method="PUT" if replace else "POST",
            owner=None,
            replace=replace,
            source=False,
        )

    async def conditional_matches(
        self, uow: UnitOfWork, principal: Principal, resource_type: str, criteria: str
    ) -> list[StoredResource]:
        """What conditional ``criteria`` match (all of them; the caller decides about 412)."""
        check_type(resource_type)
        return await self._conditional_match(uow, principal, resource_type, criteria)

    async def _conditional_match(
        self, uow: UnitOfWork, principal: Principal, resource_type: str, criteria: str
    ) -> list[StoredResource]:
        query = parse_qsl(criteria.lstrip("?").split("?", 1)[-1], keep_blank_values=True)
        if not query:
            raise bad_request("conditional criteria are empty")
        request = self._parse(resource_type, query, strict=True)
        request.count = 2
        # Serialise concurrent conditional writes of the same criteria: no duplicate on replay.
        await uow.resources.advisory_lock(_lock_key(resource_type, query, request))
        page = await uow.resources.search(request, await self.read_access(uow, principal))
        return page.rows

    # -- search -------------------------------------------------------------------------------

    async def search(
        self,
        uow: UnitOfWork,
        principal: Principal,
        resource_type: str,
        query: list[tuple[str, str]],
        strict: bool,
    ) -> SearchResult:
        check_type(resource_type)
        policy.require(principal, resource_type, SEARCH)
        request = self._parse(resource_type, query, strict)
        if resource_type == "AuditEvent":
            return await self._search_audit_log(uow, request)
        access = await self.read_access(uow, principal)
        if request.summary_count or request.count == 0:
            total = await uow.resources.count(request, access)
            return SearchResult(request, Page([], None, None), total=total)
        page = await uow.resources.search(request, access)
        result = SearchResult(request, page)
        if request.total == "accurate":
            result.total = await uow.resources.count(request, access)
        elif request.cursor is None and page.next_cursor is None:
            result.total = len(page.rows)
        result.included = await self._includes(uow, request, page.rows, access)
        for stored in page.rows + result.included:
            self.note(uow, stored)
        page.rows = [self.present(principal, r) for r in page.rows]
        result.included = [self.present(principal, r) for r in result.included]
        return result

    def _parse(
        self, resource_type: str, query: list[tuple[str, str]], strict: bool
    ) -> SearchRequest:
        """Parse a search; protected identifier values are searched by their keyed hash."""
        return self.protection.rewrite_search(self.parser.parse(resource_type, query, strict))

    async def _search_audit_log(self, uow: UnitOfWork, request: SearchRequest) -> SearchResult:
        """AuditEvents are the audit log itself, searched on its own columns."""
        view = AuditEventView(uow.connection)
        if request.includes or request.revincludes:
            raise bad_request("_include/_revinclude are not supported on AuditEvent")
        if request.summary_count or request.count == 0:
            return SearchResult(request, Page([], None, None), total=await view.count(request))
        page = await view.search(request)
        total = await view.count(request) if request.total == "accurate" else None
        return SearchResult(request, page, total=total)

    async def _includes(
        self,
        uow: UnitOfWork,
        request: SearchRequest,
        rows: list[StoredResource],
        access: policy.AccessFilter,
    ) -> list[StoredResource]:
        if not rows or not (request.includes or request.revincludes):
            return []
        seen = {r.pk for r in rows}
        included: list[StoredResource] = []
        frontier = rows
        for iteration in range(INCLUDE_ITERATIONS):
            found: list[StoredResource] = []
            for include in request.includes:
                if iteration > 0 and not include.iterate:
                    continue
                sources = [r.pk for r in frontier if r.resource_type == include.source_type]
                if sources:
                    found += await uow.resources.included(
                        sources,
                        include.source_type,
                        include.param.code,
                        include.target_type,
                        access,
                        MAX_INCLUDED,
                    )
            for include in request.revincludes:
                if iteration > 0 and not include.iterate:
                    continue
                targets = [(r.resource_type, r.resource_id) for r in frontier]
                found += await uow.resources.referencing(
                    targets, include.source_type, include.param.code, access, MAX_INCLUDED
                )
            fresh = [r for r in found if r.pk not in seen]
            seen |= {r.pk for r in fresh}
            included += fresh
            frontier = fresh
            if not fresh or not any(i.iterate for i in request.includes + request.revincludes):
                break
        return included

    # -- history ------------------------------------------------------------------------------

    async def history(
        self,
        uow: UnitOfWork,
        principal: Principal,
        resource_type: str | None,
        resource_id: str | None,
        query: dict[str, str],
        default_count: int,
    ) -> Page:
        types = [resource_type] if resource_type else list(policy.rules(principal).reads)
        for t in types:
            check_type(t)
            policy.require(principal, t, READ)
        if resource_type and resource_id:
            current = await uow.resources.current(resource_type, resource_id)
            if not await self._may_read(uow, principal, current):
                raise not_found(resource_type, resource_id)
        since = None
        if "_since" in query:
            try:
                since = datetime.fromisoformat(query["_since"].replace("Z", "+00:00"))
                since = since.replace(tzinfo=since.tzinfo or UTC).astimezone(UTC)
            except (ValueError, OverflowError):  # year 1 at +14:00 is before the first instant
                raise bad_request("_since must be an instant") from None
        count = _count(query, default_count, self.parser.max_count)
        cursor = Cursor.decode(query["_cursor"]) if "_cursor" in query else None
        page = await uow.resources.history(
            resource_type, resource_id, since, count, cursor, await self.read_access(uow, principal)
        )
        for stored in page.rows:
            self.note(uow, stored)  # entities and their patients, for the audit record
        page.rows = [self.present(principal, r) for r in page.rows]
        return page

    # -- $everything ----------------------------------------------------------------------------

    async def everything(
        self,
        uow: UnitOfWork,
        principal: Principal,
        patient_id: str,
        query: dict[str, str],
        default_count: int,
    ) -> tuple[Page, list[StoredResource]]:
        patient = await self.read(uow, principal, "Patient", patient_id)
        readable = policy.rules(principal).reads
        types = [t for t in RESOURCE_TYPES if t in readable]
        if "_type" in query:
            wanted = [t.strip() for t in query["_type"].split(",") if t.strip()]
            for t in wanted:  # a bad parameter value: 400 (a 404 would say "no such patient")
                if t not in RESOURCE_TYPES:
                    raise bad_request(f"_type: resource type {t!r} is not supported")
            types = [t for t in wanted if t in readable]
        since = period = None
        zone = self.indexer.zone
        try:
            if "_since" in query:
                since = parse_range(query["_since"], zone)[0]
            if "start" in query or "end" in query:
                start = (
                    parse_range(query["start"], zone)[0]
                    if "start" in query
                    else datetime.min.replace(tzinfo=UTC)
                )
                end = (
                    parse_range(query["end"], zone)[1]
                    if "end" in query
                    else datetime.max.replace(tzinfo=UTC)
                )
                period = (start, end)
        except DateFormatError as error:
            raise bad_request(str(error)) from None
        count = _count(query, default_count, self.parser.max_count)
        cursor = Cursor.decode(query["_cursor"]) if "_cursor" in query else None
        date_params = list(CLINICAL_DATES.items())
        # The patient is the person: every hospital's record linked with this one.
        group = await self.identity.group(uow, patient.resource_id)
        page = await uow.resources.compartment(
            group,
            self.compartment_members,
            types,
            since,
            period,
            date_params,
            count,
            cursor,
            await self.read_access(uow, principal),
        )
        referenced = []
        if page.rows:
            referenced = await uow.resources.referenced_by(
                [r.pk for r in page.rows], await self.read_access(uow, principal), MAX_INCLUDED
            )
            referenced = [
                r
                for r in referenced
                if r.resource_type in types and not self._of_other_patients(r, set(group))
            ]
        for stored in page.rows + referenced:
            self.note(uow, stored)
        page.rows = [self.present(principal, r) for r in page.rows]
        return page, [self.present(principal, r) for r in referenced]

    def _of_other_patients(self, stored: StoredResource, person: set[str]) -> bool:
        """True when ``stored`` is about patients, none of them the records of ``person``.

        ``$everything`` includes what the record references (organizations, practitioners),
        but never another patient's data that a resource happens to cite.
        """
        named = {stored.resource_id} if stored.resource_type == "Patient" else set()
        path = self._patient_paths.get(stored.resource_type)
        if path is not None and stored.content is not None:
            for value, _ in path.evaluate(orjson.loads(stored.content)):
                if isinstance(value, dict) and isinstance(value.get("reference"), str):
                    target_type, target_id, _ = split_reference(value["reference"])
                    if target_type == "Patient" and target_id:
                        named.add(target_id)
        return bool(named) and not (named & person)

    # -- audit bookkeeping ----------------------------------------------------------------------

    def note(
        self, uow: UnitOfWork, stored: StoredResource, body: dict[str, Any] | None = None
    ) -> None:
        """Record that this unit of work touched ``stored`` (and which patient it is about)."""
        uow.entities.append(
            f"{stored.resource_type}/{stored.resource_id}/_history/{stored.version_id}"
        )
        if stored.resource_type == "Patient":
            uow.patients.add(f"Patient/{stored.resource_id}")
            return
        path = self._patient_paths.get(stored.resource_type)
        if path is None or stored.content is None:
            return
        resource = body if body is not None else orjson.loads(stored.content)
        for value, _ in path.evaluate(resource):
            if isinstance(value, dict) and isinstance(value.get("reference"), str):
                target_type, target_id, _ = split_reference(value["reference"])
                if target_type == "Patient":
                    uow.patients.add(f"Patient/{target_id}")


def _lock_key(resource_type: str, query: list[tuple[str, str]], request: SearchRequest) -> str:
    """What conditional writes lock on. Criteria that are one exact identifier lock on its
    canonical system and normalised (or keyed-hash) value, so the same number written another
    way (a system alias, lowercase x, 15 digits) is serialised with it; others on the query."""
    if len(request.criteria) == 1 and len(query) == 1:
        criterion = request.criteria[0]
        value = criterion.values[0] if len(criterion.values) == 1 else None
        if (
            criterion.param.code == "identifier"
            and not criterion.modifier
            and criterion.chain is None
            and isinstance(value, TokenValue)
            and value.system
            and value.code is not None
        ):
            return f"{resource_type}?identifier={value.system}|{value.code}"
    return f"{resource_type}?{sorted(query)}"


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    """A resource without the metadata the server sets (version, time), for comparison."""
    meta = {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated")
    }
    body = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        body["meta"] = meta
    return body


def check_type(resource_type: str) -> None:
    if resource_type not in RESOURCE_TYPES:
        raise FhirError(404, "not-supported", f"resource type {resource_type!r} is not supported")


def _check_if_match(
    if_match: str, current: StoredResource | None, resource_type: str, resource_id: str
) -> None:
    expected = parse_etag(if_match)
    if current is None or current.deleted or str(current.version_id) != expected:
        have = "none" if current is None or current.deleted else current.version_id
        raise FhirError(
            412,
            "conflict",
            f"If-Match {if_match} does not match the current version ({have}) of "
            f"{resource_type}/{resource_id}",
        )


def _write_conflict(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(
        409, "conflict", f"{resource_type}/{resource_id} is being changed concurrently; retry"
    )


def parse_etag(value: str) -> str:
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _count(query: dict[str, str], default: int, maximum: int) -> int:
    text = query.get("_count", str(default))
    if not text.isdigit():
        raise bad_request("_count must be a non-negative integer")
    return max(1, min(int(text), maximum))
