"""The ingest pipeline: every inbound message, whatever its transport, goes through here.

1. Read the header (translator of the transport's format); unreadable → AR, dead-lettered.
2. Find the feed by sending facility; check the feed may use this transport (and peer).
3. A control id already logged for the feed is answered with the stored acknowledgement
   and not processed again (the same id with different bytes is refused: AE).
4. Translate with the feed's adapter and code map into a FHIR transaction.
5. Write the transaction and log the message in ONE database transaction, as the feed's
   hospital: validation, identity, indexing and referential integrity as for any FHIR write.
6. Only after commit: audit, count unmapped codes, answer AA.
Any refusal is answered AE (content) or AR (format), and the raw bytes are dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import orjson

import fhir_profiles
from hub.fhir.outcomes import FhirError
from hub.ingest.codemaps import UCUM, CodeMap, concept_map
from hub.ingest.feeds import FeedConfig
from hub.ingest.fhir_bundles import CODED_TYPES, UNMAPPED_TAG, map_codes, unit_conflict
from hub.ingest.ledger import CodeMappings, DeadLetter, DeadLetters, MessageLog, UnmappedCodes
from hub.ingest.registry import REFRESH_SECONDS, CodeMapCache, FeedRegistry, load_translators
from hub.ingest.translation import (
    AckCode,
    ContentError,
    IngestError,
    MessageHeader,
    Rejected,
    Translation,
    Translator,
)
from hub.records import bundles
from hub.records.unit_of_work import unit_of_work
from hub.security.audit import AuditRecord, AuditUnavailable
from hub.security.principals import ClientKind, Principal
from hub.storage.resources import WriteContext

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger(__name__)

TRANSIENT_ATTEMPTS = 3
TRANSIENT_STATUSES = frozenset({503})
BACKFILL_BATCH = 200


class Channel:
    """How a message arrived (recorded with it and with any dead letter)."""

    MLLP = "mllp"
    HTTP = "http"
    FILE = "file"
    REPLAY = "replay"


@dataclass
class Receipt:
    """The outcome of one message: the code, the bytes to answer with, and what happened."""

    code: AckCode
    response: bytes
    feed: str | None = None
    control_id: str | None = None
    resources: int = 0
    duplicate: bool = False
    reason: str | None = None
    location: str | None = None
    dead_letter: int | None = None
    warnings: list[str] = field(default_factory=list)
    result: dict[str, Any] | None = None  # the transaction-response Bundle, when accepted

    @property
    def accepted(self) -> bool:
        return self.code is AckCode.ACCEPT


class IngestService:
    """Runs the pipeline for every transport (MLLP, files, HTTP) and for replays."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.feeds = FeedRegistry(
            hub.database, hub.settings.adapters_dir, on_loaded=self._load_feed_code_maps
        )
        self._code_map_digests: dict[str, bytes] = {}
        self.code_maps = CodeMapCache(hub.database)
        self.translators: dict[str, Translator] = load_translators()
        self._background: set[asyncio.Task[int]] = set()

    def translator(self, name: str) -> Translator:
        found = self.translators.get(name)
        if found is None:
            raise Rejected(f"no adapter named {name!r} is installed", hl7_code="200")
        return found

    async def receive(
        self,
        payload: bytes,
        channel: str,
        *,
        format: str = "hl7v2",
        peer: str | None = None,
        principal: Principal | None = None,
        feed_id: str | None = None,
        replay_of: int | None = None,
        base: str | None = None,
    ) -> Receipt:
        """Process one message end to end and say what to answer. Never raises for bad input.

        ``feed_id`` names the feed when the transport knows it (an HTTP path, a feed's drop
        folder, a replay); otherwise the message's sending facility chooses it. ``principal``
        is the API client that sent it over HTTP: it writes with that client's scopes and is
        the one audited. ``base`` is the FHIR base URL of responses (default: configured).
        """
        reader = self.translators.get(format)
        if reader is None:
            raise RuntimeError(f"no translator for format {format!r} is installed")
        header: MessageHeader | None = None
        feed: FeedConfig | None = None
        try:
            header = reader.header(payload)
            feed = await self._feed(header, channel, peer, principal, feed_id)
            # A hospital's own FHIR Bundle needs no adapter; anything else is the feed's format.
            translator = reader if format == "fhir" else self.translator(feed.adapter)
            try:
                writer = feed_principal(feed, principal)
                return await self._accept(
                    translator, payload, header, feed, channel, peer, writer, base or self._base
                )
            except FhirError as error:  # the translation is not a well-formed Bundle
                raise _content_error(error) from None
        except IngestError as error:
            return await self._refuse(
                payload, format, channel, peer, feed, header, error, replay_of
            )
        except Exception:
            # A defect of ours (an adapter or the hub) must not lose the message either: it
            # is refused with a generic reason, kept, and can be replayed once fixed.
            log.exception("ingest of a message from %s failed unexpectedly", peer or channel)
            internal = ContentError(
                "the hub could not process this message (an internal error, logged); it is"
                " kept and will be replayed once fixed",
                hl7_code="207",
            )
            return await self._refuse(
                payload, format, channel, peer, feed, header, internal, replay_of
            )

    async def refuse_oversized(self, prefix: bytes, channel: str, peer: str | None) -> Receipt:
        """Refuse a message over the size limit (AR). Its first ``len(prefix)`` bytes are kept
        as the dead letter, so an operator sees who sent what."""
        reader = self.translators["hl7v2"]
        header = None
        with contextlib.suppress(IngestError):
            header = reader.header(prefix)
        error = Rejected(
            f"the message is larger than {len(prefix)} bytes (the listener's limit,"
            " YIJIAN_MLLP_MAX_MESSAGE_BYTES); its beginning is kept",
            hl7_code="207",
        )
        return await self._refuse(prefix, "hl7v2", channel, peer, None, header, error, None)

    async def _refuse(
        self,
        payload: bytes,
        format: str,
        channel: str,
        peer: str | None,
        feed: FeedConfig | None,
        header: MessageHeader | None,
        error: IngestError,
        replay_of: int | None,
    ) -> Receipt:
        """Answer AE/AR and keep the message as a dead letter."""
        reader = self.translators[format]
        encoding = feed.encoding if feed else "utf-8"
        response = reader.acknowledge(payload, header, error.ack_code, error, encoding=encoding)
        receipt = Receipt(
            error.ack_code,
            response,
            feed.feed if feed else None,
            header.control_id if header else None,
            reason=error.reason,
            location=error.location,
        )
        try:
            async with self.hub.database.connection() as conn:
                letters = DeadLetters(conn)
                if replay_of is not None:
                    await letters.failed_again(replay_of, error.reason, error.location)
                    receipt.dead_letter = replay_of
                else:
                    receipt.dead_letter = await letters.add(
                        feed_id=receipt.feed,
                        format=format,
                        channel=channel,
                        peer=peer,
                        control_id=receipt.control_id,
                        ack_code=str(error.ack_code),
                        error=error.reason,
                        location=error.location,
                        payload=payload,
                    )
        except (OSError, asyncpg.PostgresError):
            log.exception("could not dead-letter a refused message (the sender got %s)", error)
        log.warning(
            "ingest %s %s feed=%s control_id=%s: %s",
            channel,
            error.ack_code,
            receipt.feed,
            receipt.control_id,
            error.reason,
        )
        return receipt

    async def _feed(
        self,
        header: MessageHeader,
        channel: str,
        peer: str | None,
        principal: Principal | None,
        feed_id: str | None,
    ) -> FeedConfig:
        if feed_id is not None:
            feed = await self.feeds.get(feed_id)
            if feed is None:
                raise Rejected(f"there is no feed {feed_id!r}", hl7_code="204")
            if header.sending_facility and (
                header.sending_facility.strip().casefold() != feed.sending_facility.casefold()
            ):
                raise Rejected(
                    f"sending facility {header.sending_facility!r} (MSH-4) is not the one of"
                    f" feed {feed.feed!r} ({feed.sending_facility!r})",
                    location="MSH-4",
                    hl7_code="204",
                )
        elif not header.sending_facility:
            raise Rejected(
                "the message names no sending facility: name its feed (POST /ingest/{feed},"
                " yijian import --feed, a feed's drop folder)",
                location="MSH-4",
                hl7_code="101",
            )
        else:
            feed = await self.feeds.find(header.sending_facility, header.sending_application)
        if feed is None:
            raise Rejected(
                f"no feed is registered for sending facility {header.sending_facility!r}"
                " (MSH-4); register it with 'yijian feeds add' or a feed file",
                location="MSH-4",
                hl7_code="204",
            )
        if (
            principal is not None
            and principal.kind is ClientKind.HOSPITAL
            and principal.organization != feed.organization
        ):
            raise Rejected(
                f"feed {feed.feed!r} belongs to another organization than the calling client",
                location="MSH-4",
                hl7_code="207",
            )
        if channel == Channel.MLLP:
            if not feed.inputs.mllp:
                raise Rejected(f"feed {feed.feed!r} does not accept MLLP", hl7_code="207")
            if not feed.inputs.peer_allowed(peer):
                raise Rejected(
                    f"address {peer} may not send for feed {feed.feed!r}", hl7_code="207"
                )
        if channel == Channel.HTTP and not feed.inputs.http:
            raise Rejected(f"feed {feed.feed!r} does not accept HTTP", hl7_code="207")
        return feed

    async def _accept(
        self,
        translator: Translator,
        payload: bytes,
        header: MessageHeader,
        feed: FeedConfig,
        channel: str,
        peer: str | None,
        principal: Principal,
        base: str,
    ) -> Receipt:
        digest = hashlib.sha256(payload).digest()
        async with self.hub.database.connection() as conn:
            logged = await MessageLog(conn).find(feed.feed, header.control_id)
        if logged is not None:
            return self._replayed(logged, feed, header, digest)
        codes = await self.code_maps.get(feed.local_code_system)
        translation = translator.translate(payload, header, feed, codes)
        entries = bundles.check_entries(translation.bundle)
        response = translator.acknowledge(
            payload, header, AckCode.ACCEPT, None, encoding=feed.encoding
        )
        context = WriteContext(principal.client_id, feed.organization, header.control_id)
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                async with unit_of_work(self.hub.database, transaction=True) as uow:
                    result = await bundles.run_transaction(
                        self.hub, principal, uow, entries, context, base
                    )
                    if translator.name == "fhir":  # a resend gets the same transaction-response
                        response = orjson.dumps(result)
                    recorded = await MessageLog(uow.connection).record(
                        feed.feed,
                        header.control_id,
                        channel,
                        digest,
                        AckCode.ACCEPT,
                        response,
                        len(entries),
                    )
                    if not recorded:
                        raise _AlreadyLogged
                break
            except _AlreadyLogged:
                async with self.hub.database.connection() as conn:
                    logged = await MessageLog(conn).find(feed.feed, header.control_id)
                assert logged is not None
                return self._replayed(logged, feed, header, digest)
            except FhirError as error:
                if error.status in TRANSIENT_STATUSES and attempt < TRANSIENT_ATTEMPTS:
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                raise _content_error(error) from None
            except (OSError, asyncpg.PostgresConnectionError) as error:
                raise ContentError(
                    f"the hub could not store the message ({type(error).__name__}); resend later",
                    hl7_code="207",
                ) from None
        await self._after_commit(
            feed, header, translation, principal, uow.patients, uow.entities, peer
        )
        return Receipt(
            AckCode.ACCEPT,
            response,
            feed.feed,
            header.control_id,
            resources=len(entries),
            warnings=translation.warnings,
            result=result,
        )

    async def replay(self, entry_id: int) -> Receipt:
        """Run a dead letter through the pipeline again (after a fix to a feed or code map).

        Accepted (or found already accepted, because the sender resent it meanwhile) →
        the entry is marked ``replayed``; refused again → it stays open with the new reason.
        """
        async with self.hub.database.connection() as conn:
            letter = await DeadLetters(conn).get(entry_id)
        if letter is None:
            raise LookupError(f"there is no dead letter {entry_id}")
        if letter.status != "open":
            raise ValueError(f"dead letter {entry_id} is {letter.status}, not open")
        receipt = await self.receive(
            letter.payload,
            Channel.REPLAY,
            format=letter.format,
            feed_id=letter.feed_id,
            replay_of=entry_id,
        )
        if receipt.accepted:
            async with self.hub.database.connection() as conn:
                await DeadLetters(conn).resolve(entry_id, "replayed")
        return receipt

    async def discard(self, entry_id: int) -> None:
        async with self.hub.database.connection() as conn:
            letter = await DeadLetters(conn).get(entry_id)
            if letter is None:
                raise LookupError(f"there is no dead letter {entry_id}")
            await DeadLetters(conn).resolve(entry_id, "discarded")

    async def _load_feed_code_maps(self, feeds: list[FeedConfig]) -> None:
        """Import the ConceptMap file a feed names (``code_map``) when it is new or changed
        since this process last read it; newly mapped codes are back-filled. Importing adds
        and changes mappings, never removes: edits made through the API stay."""
        for feed in feeds:
            if not feed.code_map:
                continue
            path = self._code_map_file(feed.code_map)
            try:
                data = path.read_bytes()
            except OSError as error:
                log.error("feed %s: code map %s cannot be read: %s", feed.feed, path, error)
                continue
            digest = hashlib.sha256(data).digest()
            key = f"{feed.feed}:{path}"
            if self._code_map_digests.get(key) == digest:
                continue
            try:
                resource = orjson.loads(data)
                for group in resource.get("group") or []:
                    group.pop("source", None)  # meant for this feed's own code system
                changed = await self.import_concept_map(feed.feed, resource, f"file:{path.name}")
            except (ValueError, LookupError, AttributeError) as error:
                log.error(
                    "feed %s: code map %s is not a usable ConceptMap: %s", feed.feed, path, error
                )
                continue
            self._code_map_digests[key] = digest
            if changed:
                await self.schedule_backfill(feed.local_code_system, changed)

    def _code_map_file(self, name: str) -> Path:
        """A feed's ``code_map``: a path (absolute, or relative to the feeds directory) or
        the name of a ConceptMap in ``fhir_profiles/conceptmaps``."""
        path = Path(name)
        if path.is_absolute():
            return path
        directory = self.hub.settings.adapters_dir
        if directory is not None and (directory / path).exists():
            return directory / path
        return fhir_profiles.concept_map_path(name)

    async def feed(self, feed_id: str) -> FeedConfig:
        found = await self.feeds.get(feed_id)
        if found is None:
            raise LookupError(f"there is no feed {feed_id!r}")
        return found

    async def import_concept_map(
        self, feed_id: str, resource: dict[str, Any], actor: str
    ) -> list[str]:
        """Add or change the mappings a ConceptMap holds for a feed's local codes. Returns
        the codes whose mapping is new or changed (the caller schedules their back-fill)."""
        feed = await self.feed(feed_id)
        if resource.get("resourceType") != "ConceptMap":
            raise ValueError("a code map is a FHIR ConceptMap")
        code_map = CodeMap.from_concept_map(resource, feed.local_code_system)
        displays = {
            str(element.get("code")): str(element.get("display") or "")
            for group in resource.get("group") or []
            for element in group.get("element") or []
        }
        rows = [(code, displays.get(code, ""), t) for code, t in code_map.targets.items()]
        async with self.hub.database.connection() as conn:
            changed = await CodeMappings(conn).upsert(feed.local_code_system, rows, actor)
        self.code_maps.invalidate(feed.local_code_system)
        return changed

    async def export_concept_map(self, feed_id: str) -> dict[str, Any]:
        """The feed's code map as a ConceptMap (what an operator edits and puts back)."""
        feed = await self.feed(feed_id)
        async with self.hub.database.connection() as conn:
            rows = await CodeMappings(conn).rows(feed.local_code_system)
        return concept_map(
            f"{feed.feed}-codes",
            feed.local_code_system,
            rows,
            title=f"{feed.name or feed.feed}: local codes → LOINC",
        )

    async def unmapped(self, organization: str | None = None) -> list[dict[str, Any]]:
        async with self.hub.database.connection() as conn:
            return await UnmappedCodes(conn).worklist(organization)

    async def dead_letters(
        self, status: str | None = "open", feed_id: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        async with self.hub.database.connection() as conn:
            return await DeadLetters(conn).list(status=status, feed_id=feed_id, limit=limit)

    async def dead_letter(self, entry_id: int) -> DeadLetter:
        async with self.hub.database.connection() as conn:
            letter = await DeadLetters(conn).get(entry_id)
        if letter is None:
            raise LookupError(f"there is no dead letter {entry_id}")
        return letter

    async def schedule_backfill(self, source_system: str, codes: list[str]) -> str:
        """Queue the back-fill of newly mapped codes for a worker ("queued"). When the broker
        cannot take it, run it in this process instead ("in-process") rather than lose it."""
        if not codes:
            return "none"
        try:
            # After the code-map caches of every process have expired, so no message
            # translated with the old map slips in behind the back-fill.
            await self.hub.tasks.enqueue(
                "yijian.backfill_codes", source_system, codes, countdown=REFRESH_SECONDS + 1
            )
            return "queued"
        except Exception:
            log.exception("could not queue the back-fill of %d codes; running it here", len(codes))
            task = asyncio.create_task(self.backfill(source_system, codes))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return "in-process"

    async def schedule_replays(self, entry_ids: list[int]) -> list[int]:
        """Queue a replay of each dead letter for a worker; the ids queued. When the broker
        cannot take them, they are replayed in this process instead, in the background."""
        queued: list[int] = []
        for entry_id in entry_ids:
            try:
                await self.hub.tasks.enqueue("yijian.replay_dead_letter", entry_id)
                queued.append(entry_id)
            except Exception:
                log.exception("could not queue the replay of dead letter %d", entry_id)
                break
        rest = entry_ids[len(queued) :]
        if rest:
            task = asyncio.create_task(self._replay_all(rest))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return queued

    async def drain(self) -> None:
        """Wait for work this process took on itself because the broker could not."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _replay_all(self, entry_ids: list[int]) -> int:
        accepted = 0
        for entry_id in entry_ids:
            try:
                accepted += (await self.replay(entry_id)).accepted
            except (LookupError, ValueError):
                continue
        return accepted

    async def backfill(self, source_system: str, codes: list[str]) -> int:
        """Give results stored with an unmapped local code the mapping added since.

        Finds the tagged results of each code (as the hospital that owns them), puts the
        mapped coding in front, drops the tag and stores a new version. Returns how many
        resources changed. A result changed concurrently is left for the next run.
        """
        self.code_maps.invalidate(source_system)
        code_map = await self.code_maps.get(source_system)
        organizations = {
            feed.organization
            for feed, _ in await self.feeds.all()
            if feed.local_code_system == source_system
        }
        changed = 0
        for organization in sorted(organizations):
            principal = organization_principal(organization)
            for code in codes:
                if code_map.get(code) is None:
                    continue
                for resource_type in sorted(CODED_TYPES):
                    changed += await self._backfill_one(
                        principal, resource_type, source_system, code, code_map
                    )
        return changed

    async def _backfill_one(
        self,
        principal: Principal,
        resource_type: str,
        source_system: str,
        code: str,
        code_map: CodeMap,
    ) -> int:
        query = [
            ("_tag", f"{UNMAPPED_TAG['system']}|{UNMAPPED_TAG['code']}"),
            ("code", f"{source_system}|{code}"),
            ("_count", str(BACKFILL_BATCH)),
        ]
        context = WriteContext(principal.client_id, principal.organization, "backfill")
        changed = 0
        while True:
            async with unit_of_work(self.hub.database, transaction=False) as uow:
                found = await self.hub.records.search(
                    uow, principal, resource_type, query, strict=True
                )
            progress = 0
            for stored in found.page.rows:
                resource = orjson.loads(stored.content or "{}")
                map_codes(resource, code_map)
                apply_unit(resource, code_map)
                try:
                    async with unit_of_work(self.hub.database, transaction=True) as uow:
                        await self.hub.records.update(
                            uow,
                            principal,
                            resource_type,
                            stored.resource_id,
                            resource,
                            context,
                            if_match=f'W/"{stored.version_id}"',
                        )
                except FhirError as error:
                    log.info("backfill skipped %s/%s: %s", resource_type, stored.resource_id, error)
                    continue
                progress += 1
            changed += progress
            if progress == 0 or len(found.page.rows) < BACKFILL_BATCH:
                return changed

    def _replayed(
        self, logged: Any, feed: FeedConfig, header: MessageHeader, digest: bytes
    ) -> Receipt:
        if logged.digest != digest:
            raise ContentError(
                f"control id {header.control_id!r} (MSH-10) was already used by feed"
                f" {feed.feed!r} for a different message; give each message its own id",
                location="MSH-10",
                hl7_code="205",
            )
        return Receipt(
            AckCode(logged.ack_code),
            logged.response,
            feed.feed,
            header.control_id,
            resources=logged.resources,
            duplicate=True,
        )

    async def _after_commit(
        self,
        feed: FeedConfig,
        header: MessageHeader,
        translation: Translation,
        principal: Principal,
        patients: set[str],
        entities: list[str],
        peer: str | None,
    ) -> None:
        """Audit and worklist bookkeeping. The message is committed already: failures here
        are logged, never turned into a refusal the sender would resend."""
        record = AuditRecord.for_status(
            201,
            action="C",
            interaction="ingest",
            client_id=principal.client_id,
            client_kind=str(ClientKind.HOSPITAL),
            organization=feed.organization,
            source_ip=peer,
            request_id=header.control_id,
            patients=sorted(patients),
            entities=entities[:1000],
        )
        try:
            await self.hub.audit.record(record)
        except AuditUnavailable:
            log.exception("audit record of feed %s message %s", feed.feed, header.control_id)
        if translation.unmapped:
            try:
                async with self.hub.database.connection() as conn:
                    await UnmappedCodes(conn).seen(feed.organization, translation.unmapped)
            except (OSError, asyncpg.PostgresError):
                log.exception("unmapped-code count of feed %s", feed.feed)

    @property
    def _base(self) -> str:
        settings = self.hub.settings
        base = (settings.public_base_url or f"http://{settings.host}:{settings.port}").rstrip("/")
        return base + "/fhir"


class _AlreadyLogged(Exception):
    """The control id was logged by a concurrent delivery of the same message."""


def feed_principal(feed: FeedConfig, caller: Principal | None = None) -> Principal:
    """The hospital a feed writes as: its own Organization, and nothing else. A message an
    API client sent writes with that client's id and scopes (a read-only token writes
    nothing); a listener's message with the feed's own (``feed:<id>``)."""
    return Principal(
        client_id=caller.client_id if caller else f"feed:{feed.feed}",
        name=feed.name or feed.feed,
        kind=ClientKind.HOSPITAL,
        organization=feed.organization,
        scopes=caller.scopes if caller else frozenset({"system/*.cruds"}),
    )


def organization_principal(
    organization: str, client_id: str = "hub:backfill", name: str = "code-map back-fill"
) -> Principal:
    """The hub acting for a hospital on records the hospital owns (back-fills; the imaging
    cloud writing the ImagingStudy of a study the hospital sent)."""
    return Principal(
        client_id=client_id,
        name=name,
        kind=ClientKind.HOSPITAL,
        organization=organization,
        scopes=frozenset({"system/*.cruds"}),
    )


def apply_unit(resource: dict[str, Any], code_map: CodeMap) -> None:
    """Give a quantity value the mapped UCUM code when it has none yet."""
    quantity = resource.get("valueQuantity")
    if not isinstance(quantity, dict) or quantity.get("code"):
        return
    concept = resource.get("code") or {}
    for coding in concept.get("coding") or []:
        if coding.get("system") == code_map.source_system:
            target = code_map.get(str(coding.get("code")))
            if target is not None and target.unit and not unit_conflict(resource, target.unit):
                quantity["system"] = UCUM
                quantity["code"] = target.unit
            return


def _content_error(error: FhirError) -> ContentError:
    """A FHIR refusal of the translated resources, as the sender's content error."""
    if error.status in TRANSIENT_STATUSES:
        return ContentError(
            f"the hub is busy ({error.diagnostics}); resend the message", hl7_code="207"
        )
    return ContentError(error.diagnostics, hl7_code="207")
