"""The imaging service: a received instance is read, stored, indexed, then made FHIR.

``receive`` is the one path for every transport (C-STORE, STOW-RS): read and check the file
(``imaging.dataset``), check the sender may add to the study, store the bytes exactly as
received (``imaging.store``: durable before the key is returned), then index it in one
PostgreSQL transaction (``imaging.index``). Only then is success reported: the instance is on
disk, found by QIDO and served by WADO.

The FHIR side follows per study, not per instance: ``sync_studies`` writes the study's
ImagingStudy (with its Patient found or created by the hospital's patient number, and the
hospital's DICOMweb Endpoint) through the records service as the hospital, in one FHIR
transaction. STOW calls it at the end of each request, the C-STORE receiver when an
association ends and, for long associations or after a crash, ``sync_pending`` picks up
every study changed since its last sync (``dicom_study.changed_at`` > ``synced_at``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote

import asyncpg
import orjson

from hub.fhir.datetimes import zone
from hub.fhir.outcomes import FhirError
from hub.identity.names import name_forms
from hub.ingest.service import organization_principal
from hub.records import bundles
from hub.records.unit_of_work import unit_of_work
from hub.runtime import Hub
from hub.security.audit import AuditRecord, AuditUnavailable
from hub.security.principals import ClientKind, Principal
from hub.storage.resources import WriteContext
from imaging.dataset import CANNOT_UNDERSTAND, InstanceHeader, InvalidInstance, read_instance
from imaging.index import (
    NOT_AUTHORIZED,
    Indexed,
    InstanceIndex,
    Refused,
    dicom_datetime,
)
from imaging.store import ObjectStore
from imaging.stores import object_store
from imaging.studies import endpoint, imaging_study, study_identifier

log = logging.getLogger(__name__)

__all__ = ["PROCESSING_FAILURE", "ImagingService", "Received", "Refused", "Sender"]

SYNC_DELAY_SECONDS = 2.0  # a study still receiving is synced at most this often
SYNC_DEBOUNCE_SECONDS = 0.3  # STOW requests to one study within this coalesce into one sync
SWEEP_OLDER_THAN_SECONDS = 30.0  # studies a stopped process left pending
RETRY_FAILED_SECONDS = 300.0  # a study whose ImagingStudy could not be written, tried again
PROCESSING_FAILURE = 0x0110  # PS3.7 C.4.2: the hub could not store it; resend later


@dataclass(frozen=True)
class Sender:
    """Who sends: a registered AE title (C-STORE) or an API client (STOW), for a hospital."""

    organization: str
    name: str  # calling AE title, or the API client's id
    channel: str  # "dimse" or "stow"
    peer: str | None = None


@dataclass(frozen=True)
class Received:
    header: InstanceHeader
    outcome: str  # "stored", "repeat" (same bytes again) or "replaced" (a new version)
    version: int
    object_key: str


class ImagingService:
    """Receive, store, index and publish DICOM instances for one hub process."""

    def __init__(self, hub: Hub, store: ObjectStore) -> None:
        self.hub = hub
        self.store = store
        self.zone = zone(hub.settings.default_timezone)
        self._scheduled: set[str] = set()
        self._kick = asyncio.Event()
        self._syncer: asyncio.Task[None] | None = None

    # -- receiving ---------------------------------------------------------------------------

    async def receive(self, source: BinaryIO, sender: Sender) -> Received:
        """Store and index one Part 10 file (read from its start). Raises InvalidInstance or
        Refused, each with the DICOM failure status, after keeping the refused file and why
        (``dicom_refused``, for an operator); anything else is the hub's failure."""
        header: InstanceHeader | None = None
        key: str | None = None
        try:
            header = await asyncio.to_thread(_read, source)
            if not header.patient_id:
                raise InvalidInstance(
                    "Patient ID (0010,0020) is missing: the study cannot be linked to a patient",
                    CANNOT_UNDERSTAND,
                )
            async with self.hub.database.connection() as conn:
                owner = await InstanceIndex(conn, self.zone).owner(header.study_uid)
            if owner is not None and owner != sender.organization:
                raise Refused(
                    f"the study belongs to another hospital: {header.study_uid}", NOT_AUTHORIZED
                )
            stored = await asyncio.to_thread(_put, self.store, source)
            key = stored.key
            indexed = await self._index(header, stored.key, stored.size, sender)
        except (InvalidInstance, Refused) as error:
            await self._keep_refused(source, sender, error, header, key)
            raise
        if indexed.outcome == "replaced":
            log.info(
                "instance %s replaced (version %d) by %s",
                header.sop_instance_uid,
                indexed.version,
                sender.name,
            )
        return Received(header, indexed.outcome, indexed.version, stored.key)

    async def _index(self, header: InstanceHeader, key: str, size: int, sender: Sender) -> Indexed:
        async with self.hub.database.connection() as conn, conn.transaction():
            return await InstanceIndex(conn, self.zone).add(
                header,
                organization=sender.organization,
                object_key=key,
                size=size,
                received_from=sender.name,
                name_search=name_search(header.patient_name),
                resend=self.hub.settings.dicom_resend,
            )

    async def _keep_refused(
        self,
        source: BinaryIO,
        sender: Sender,
        error: InvalidInstance | Refused,
        header: InstanceHeader | None,
        key: str | None,
    ) -> None:
        """Keep a refused file in the object store and record why (never deleted inline: the
        same bytes may be on their way in for another sender). Failing here is logged only:
        the sender gets its refusal either way."""
        try:
            if key is None:
                stored = await asyncio.to_thread(_put, self.store, source)
                key, size = stored.key, stored.size
            else:
                size = await asyncio.to_thread(_size, source)
            async with self.hub.database.connection() as conn:
                await conn.execute(
                    "INSERT INTO dicom_refused (organization, sender, channel, peer, status,"
                    " reason, sop_instance_uid, study_uid, object_key, size)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    sender.organization,
                    sender.name,
                    sender.channel,
                    sender.peer,
                    error.status,
                    error.reason[:2000],
                    header.sop_instance_uid if header else None,
                    header.study_uid if header else None,
                    key,
                    size,
                )
        except (OSError, asyncpg.PostgresError):
            log.exception("a refused instance from %s could not be kept", sender.name)

    # -- FHIR ---------------------------------------------------------------------------------

    async def sync_studies(self, study_uids: Iterable[str]) -> None:
        """Write (or rewrite) the ImagingStudy of each study now. A study that cannot be
        written is logged and stays pending (the next sync retries it): its instances are
        stored and served either way."""
        for study_uid in dict.fromkeys(study_uids):
            try:
                await self._sync(study_uid)
            except Exception as error:  # one study's problem must not stop the others
                if not isinstance(error, FhirError | OSError | asyncpg.PostgresError):
                    log.exception("ImagingStudy of study %s failed", study_uid)
                log.warning("ImagingStudy of study %s not written yet: %s", study_uid, error)
                with contextlib.suppress(OSError, asyncpg.PostgresError):
                    async with self.hub.database.connection() as conn:
                        await conn.execute(
                            "UPDATE dicom_study SET sync_error = $2,"
                            " sync_attempted_at = clock_timestamp() WHERE study_uid = $1",
                            study_uid,
                            str(error)[:2000] or type(error).__name__,
                        )

    def schedule_sync(self, study_uids: Iterable[str]) -> None:
        """Write these studies' ImagingStudy soon, in the background (on this event loop).

        Requests that add to one study in quick succession (a STOW client sending a large
        study in batches) are coalesced: each sync rewrites the whole ImagingStudy, so it is
        done once the study has been quiet for ``SYNC_DEBOUNCE_SECONDS``. The instances are
        stored, indexed and served by DICOMweb before this runs; should the process stop
        first, ``sync_pending`` (the C-STORE receiver's loop, this syncer's sweep, or
        ``yijian dicom sync``) finds the study pending in the index.
        """
        self._scheduled.update(study_uids)
        self._kick.set()
        if self._syncer is None or self._syncer.done():
            self._syncer = asyncio.get_running_loop().create_task(
                self._sync_scheduled(), name="imaging-study-sync"
            )

    async def _sync_scheduled(self) -> None:
        while self._scheduled:
            self._kick.clear()
            loop = asyncio.get_running_loop()
            started = loop.time()  # quiet for a moment, or at most SYNC_DELAY_SECONDS
            with contextlib.suppress(TimeoutError):
                while loop.time() - started < SYNC_DELAY_SECONDS:
                    await asyncio.wait_for(self._kick.wait(), SYNC_DEBOUNCE_SECONDS)
                    self._kick.clear()
            batch, self._scheduled = self._scheduled, set()
            await self.sync_studies(batch)
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await self.sync_pending(older_than=SWEEP_OLDER_THAN_SECONDS)

    async def sync_pending(self, older_than: float = SYNC_DELAY_SECONDS, limit: int = 100) -> int:
        """Sync studies changed more than ``older_than`` seconds ago and not synced since."""
        async with self.hub.database.connection() as conn:
            rows = await conn.fetch(  # a study that failed waits before it is tried again
                "SELECT study_uid FROM dicom_study"
                " WHERE (synced_at IS NULL OR synced_at < changed_at)"
                " AND changed_at < clock_timestamp() - make_interval(secs => $1)"
                " AND (sync_attempted_at IS NULL"
                "      OR sync_attempted_at < clock_timestamp() - make_interval(secs => $3))"
                " ORDER BY changed_at LIMIT $2",
                older_than,
                limit,
                RETRY_FAILED_SECONDS if older_than > 0 else 0.0,
            )
        await self.sync_studies(r["study_uid"] for r in rows)
        return len(rows)

    async def _sync(self, study_uid: str) -> None:
        async with unit_of_work(self.hub.database, transaction=True) as uow:
            conn = uow.connection
            study = await conn.fetchrow(
                "SELECT * FROM dicom_study WHERE study_uid = $1 FOR UPDATE", study_uid
            )
            if study is None or (
                study["synced_at"] is not None and study["synced_at"] >= study["changed_at"]
            ):
                return  # gone, or another process synced it meanwhile
            series = await conn.fetch("SELECT * FROM dicom_series WHERE study_uid = $1", study_uid)
            instances = await conn.fetch(
                "SELECT series_uid, sop_instance_uid, sop_class_uid, instance_number"
                " FROM dicom_instance WHERE study_uid = $1",
                study_uid,
            )
            organization = study["organization"]
            principal = _hospital(organization)
            issuers = await self._issuers(conn, organization)
            entries = self._entries(study, series, instances, issuers)
            context = WriteContext(principal.client_id, organization, f"dicom-study:{study_uid}")
            response = await bundles.run_transaction(
                self.hub, principal, uow, bundles.check_entries(entries), context, self._fhir_base
            )
            locations = [
                (entry.get("response") or {}).get("location", "")
                for entry in response.get("entry") or []
            ]
            patient_id = _id_of(locations, "Patient")
            study_id = _id_of(locations, "ImagingStudy")
            await conn.execute(
                "UPDATE dicom_study SET synced_at = changed_at, patient_ref = $2,"
                " imaging_study_id = $3, sync_error = NULL, sync_attempted_at = NULL"
                " WHERE study_uid = $1",
                study_uid,
                patient_id,
                study_id,
            )
            patients, written = set(uow.patients), list(uow.entities)
        record = AuditRecord.for_status(
            201,
            action="U",
            interaction="imaging-study",
            client_id=principal.client_id,
            client_kind=str(ClientKind.HOSPITAL),
            organization=organization,
            source_ip=None,
            request_id=f"dicom-study:{study_uid}",
            patients=sorted(patients),
            entities=written[:1000],
        )
        try:
            await self.hub.audit.record(record)
        except AuditUnavailable:
            log.exception("audit record of the ImagingStudy of study %s", study_uid)

    def _entries(
        self,
        study: asyncpg.Record,
        series: list[asyncpg.Record],
        instances: list[asyncpg.Record],
        issuers: dict[str, str],
    ) -> dict[str, Any]:
        """The transaction Bundle: the hospital's Endpoint and Patient (created only when
        missing) and the ImagingStudy (a conditional update on its study UID)."""
        organization = study["organization"]
        systems = self.hub.identity.systems
        patient_system = self._patient_system(organization, study["issuer"], issuers)
        patient_value = study["patient_id"]
        endpoint_resource = endpoint(organization, self._dicomweb_base, "Yijian DICOMweb")
        identifier = study_identifier(study["study_uid"])
        resource = imaging_study(
            dict(study),
            [dict(r) for r in series],
            [dict(r) for r in instances],
            subject="urn:uuid:00000000-0000-4000-8000-000000000001",
            endpoint_ref="urn:uuid:00000000-0000-4000-8000-000000000002",
            accession_system=systems.organization_system(organization, "accession"),
            zone=self.zone,
        )
        endpoint_id = endpoint_resource["identifier"][0]
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002",
                    "resource": endpoint_resource,
                    "request": {
                        "method": "POST",
                        "url": "Endpoint",
                        "ifNoneExist": _token_query(endpoint_id["system"], endpoint_id["value"]),
                    },
                },
                {
                    "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
                    "resource": _patient(study, organization, patient_system),
                    "request": {
                        "method": "POST",
                        "url": "Patient",
                        "ifNoneExist": _token_query(patient_system, patient_value),
                    },
                },
                {
                    "resource": resource,
                    "request": {
                        "method": "PUT",
                        "url": "ImagingStudy?"
                        + _token_query(identifier["system"], identifier["value"]),
                    },
                },
            ],
        }

    def _patient_system(
        self, organization: str, issuer: str | None, mapping: dict[str, str]
    ) -> str:
        """The identifier system of a study's Patient ID: the hospital's mapping of the Issuer
        of Patient ID (``yijian dicom ae add --issuer ISSUER=SYSTEM``; ``*`` for any) when it
        has one, else the hospital's medical record numbers. A target is a URI, a NamingSystem
        id (``resident-id``) or a hospital number kind (``mrn``, ``outpatient``...)."""
        target = mapping.get(issuer or "") or mapping.get("*") or "mrn"
        systems = self.hub.identity.systems
        if ":" in target:
            return target
        try:
            return systems.by_key(target).uri
        except KeyError:
            return systems.organization_system(organization, target)

    async def _issuers(self, conn: asyncpg.Connection, organization: str) -> dict[str, str]:
        """Issuer of Patient ID → identifier system, from the hospital's registered AEs."""
        rows = await conn.fetch(
            "SELECT identifiers FROM dicom_ae WHERE organization = $1 ORDER BY ae_title",
            organization,
        )
        mapping: dict[str, str] = {}
        for row in rows:
            value = row["identifiers"]
            mapping.update(orjson.loads(value) if isinstance(value, str | bytes) else value)
        return mapping

    @property
    def _fhir_base(self) -> str:
        return self._public_base + "/fhir"

    @property
    def _dicomweb_base(self) -> str:
        return self._public_base + "/dicomweb"

    @property
    def _public_base(self) -> str:
        settings = self.hub.settings
        return (settings.public_base_url or f"http://{settings.host}:{settings.port}").rstrip("/")


def imaging_service(hub: Hub) -> ImagingService:
    """The imaging service of this hub (built on first use, kept on the hub)."""
    service = hub.__dict__.get("_imaging_service")
    if service is None:
        service = ImagingService(hub, object_store(hub.settings))
        hub.__dict__["_imaging_service"] = service
    return service


def name_search(patient_name: str | None) -> str:
    """The search form of a DICOM PN for fuzzy QIDO matching: space-separated lower-case
    tokens — the name as sent, its components, the characters joined, and the pinyin of the
    family name, the given name and the whole (``wang^fang 王 芳 王芳 wang fang wangfang``)."""
    if not patient_name:
        return ""
    tokens: list[str] = [patient_name.lower()]
    for group in patient_name.split("="):
        components = [c.strip() for c in group.split("^") if c.strip()]
        if not components:
            continue
        tokens.extend(c.lower() for c in components)
        tokens.append("".join(components).lower())
        family, given = components[0], components[1:2]
        for forms in (
            name_forms(family, None),
            name_forms(None, given) if given else None,
            name_forms(family, given),
        ):
            if forms is not None and forms.pinyin:
                tokens.append(forms.pinyin[0])
    return " ".join(dict.fromkeys(t.replace(" ", "") for t in tokens if t))


def _read(source: BinaryIO) -> InstanceHeader:
    source.seek(0)
    return read_instance(source)


def _put(store: ObjectStore, source: BinaryIO) -> Any:
    source.seek(0)
    return store.put_file(source)


def _size(source: BinaryIO) -> int:
    return source.seek(0, 2)


def _hospital(organization: str) -> Principal:
    """The hub writing a hospital's ImagingStudy for it (the study came from that hospital)."""
    return organization_principal(organization, "hub:imaging", "imaging cloud")


def _patient(study: asyncpg.Record, organization: str, system: str) -> dict[str, Any]:
    """A minimal Patient from the study's patient attributes, created only when the hospital
    has no Patient with this number yet (its own feed's record, when present, is richer)."""
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": study["patient_id"]}],
        "managingOrganization": {"reference": f"Organization/{organization}"},
    }
    name = _human_name(study["patient_name"])
    if name:
        patient["name"] = [name]
    gender = {"M": "male", "F": "female", "O": "other"}.get((study["sex"] or "").upper())
    if gender:
        patient["gender"] = gender
    born = dicom_datetime(study["birth_date"], None, zone("UTC"))
    if born is not None:
        patient["birthDate"] = born.date().isoformat()
    return patient


def _human_name(value: str | None) -> dict[str, Any] | None:
    """A DICOM PN as a FHIR HumanName (the ideographic group preferred for Chinese names)."""
    if not value:
        return None
    groups = value.split("=")
    chosen = next((g for g in reversed(groups[:2]) if g.strip("^ ")), groups[0])
    parts = [p.strip() for p in chosen.split("^")]
    family = parts[0] if parts else ""
    given = [p for p in parts[1:3] if p]
    name: dict[str, Any] = {"use": "official"}
    if family:
        name["family"] = family
    if given:
        name["given"] = given
    cjk = all(ord(c) > 0x2E7F for c in family + "".join(given))
    name["text"] = (family + "".join(given)) if cjk else " ".join([*given, family]).strip()
    return name if family or given else None


def _token_query(system: str, value: str) -> str:
    """``identifier=system|value`` with FHIR search escaping (``\\``, ``,``, ``$``, ``|`` in
    the value), so a Patient ID such as ``2002,1001`` is one value, not two."""
    escaped = "".join("\\" + c if c in "\\,$|" else c for c in value)
    return "identifier=" + quote(f"{system}|{escaped}", safe="|:/")


def _id_of(locations: list[str], resource_type: str) -> str | None:
    for location in locations:
        parts = location.split("/")
        if len(parts) >= 2 and parts[0] == resource_type:
            return parts[1]
    return None
