"""The hub's long-lived components, built once per process and shared by every request."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from hub.access.service import Lifetimes
from hub.fhir.datetimes import zone
from hub.fhir.indexing import Indexer
from hub.fhir.search import SearchParser
from hub.fhir.searchparams import SearchParamRegistry
from hub.identity.identifiers import IdentifierSystems
from hub.identity.protection import IdentifierProtection, load_identifier_keys
from hub.identity.service import IdentityService
from hub.ingest.service import IngestService
from hub.recognition.service import RecognitionService
from hub.records.service import RecordService
from hub.security.audit import AuditWriter, load_audit_key
from hub.security.cds_clients import CdsClientKeys
from hub.security.clients import ClientRegistry
from hub.security.keys import KeyRing
from hub.security.tokens import TokenService
from hub.settings import Settings
from hub.storage.database import Database

if TYPE_CHECKING:
    from hub.consults.service import ConsultService
    from hub.tasks.queue import TaskQueue

log = logging.getLogger(__name__)
REVOCATION_REFRESH_SECONDS = 5.0


@dataclass
class Hub:
    settings: Settings
    database: Database
    registry: SearchParamRegistry
    records: RecordService
    keyring: KeyRing
    tokens: TokenService
    audit: AuditWriter
    revoked: set[str] = field(default_factory=set)
    _refresher: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings, database: Database | None = None) -> Hub:
        database = database or Database.connect(settings)
        registry = SearchParamRegistry.default()
        tz = zone(settings.default_timezone)
        base = (settings.public_base_url or "").rstrip("/")
        indexer = Indexer(registry, tz, base + "/fhir" if base else "")
        parser = SearchParser(
            registry,
            tz,
            settings.search_default_count,
            settings.search_max_count,
            base + "/fhir" if base else "",
        )
        identity = build_identity(settings)
        keyring = KeyRing(settings.resolved_keys_dir)
        tokens = TokenService(keyring, settings.token_issuer, settings.token_lifetime_seconds)
        audit = AuditWriter(database.connection, load_audit_key(settings.resolved_keys_dir))
        records = RecordService(registry, indexer, parser, identity)
        records.access.lifetimes = Lifetimes(
            care=timedelta(hours=settings.access_care_hours),
            ordering=timedelta(hours=settings.access_ordering_hours),
            launch=timedelta(hours=settings.access_launch_hours),
            break_glass=timedelta(minutes=settings.access_break_glass_minutes),
        )
        return cls(
            settings,
            database,
            registry,
            records,
            keyring,
            tokens,
            audit,
        )

    @property
    def identity(self) -> IdentityService:
        return self.records.identity

    @functools.cached_property
    def tasks(self) -> TaskQueue:
        """Where background work is queued for ``yijian worker`` (built on first use)."""
        from hub.tasks.queue import TaskQueue

        return TaskQueue(self.settings)

    @functools.cached_property
    def recognition(self) -> RecognitionService:
        """The reuse check, reminders, decisions and the catalogue."""
        return RecognitionService(
            self.database, self.identity, zone(self.settings.default_timezone)
        )

    @functools.cached_property
    def cds_clients(self) -> CdsClientKeys:
        """EHRs registered to sign CDS Hooks requests with their own keys."""
        return CdsClientKeys()

    @functools.cached_property
    def consults(self) -> ConsultService:
        """Telemedicine consultations (open, reply, revoke)."""
        from hub.consults.service import ConsultService

        return ConsultService(self)

    @functools.cached_property
    def ingest(self) -> IngestService:
        """The inbound pipeline (feeds, code maps, adapters), built on first use."""
        return IngestService(self)

    async def start(self) -> None:
        await self.audit.start()
        await self.refresh_revocations()
        self._refresher = asyncio.create_task(self._refresh_loop(), name="revocations")

    async def stop(self) -> None:
        if self._refresher:
            self._refresher.cancel()
        await self.audit.close()
        if "tasks" in self.__dict__:  # only if this process queued anything
            self.tasks.close()
        await self.database.dispose()

    async def refresh_revocations(self) -> None:
        async with self.database.connection() as conn:
            self.revoked = await ClientRegistry(conn).revoked_ids()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REVOCATION_REFRESH_SECONDS)
            with contextlib.suppress(Exception):
                await self.refresh_revocations()


def build_identity(settings: Settings) -> IdentityService:
    """The identity service with this deployment's identifier keys."""
    keys = load_identifier_keys(
        settings.resolved_keys_dir,
        settings.identifier_keys.get_secret_value() if settings.identifier_keys else None,
        settings.identifier_hash_key.get_secret_value() if settings.identifier_hash_key else None,
    )
    systems = IdentifierSystems.default()
    return IdentityService(systems, IdentifierProtection(systems, keys))
