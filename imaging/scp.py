"""The DICOM C-STORE receiver (Storage SCP, and Verification), with pynetdicom.

pynetdicom runs each association in a thread of its own and calls the C-STORE handler
there; the hub is asyncio. ``StorageReceiver`` therefore keeps one event loop in a thread of
its own, with the hub, and each handler waits for ``ImagingService.receive`` on that loop:
success (0x0000) is answered only once the file is durable and indexed.

Datasets are received in chunks to a temporary file (``STORE_RECV_CHUNKED_DATASET``), so a
large multi-frame instance never sits whole in memory, and the bytes stored are the bytes
sent (after the File Meta Information pynetdicom writes for them).

Calling AE titles are registered per hospital (``yijian dicom ae add``, table ``dicom_ae``)
and reloaded every few seconds; an association from an unknown calling AE title is rejected
(A-ASSOCIATE-RJ, "calling AE title not recognised"), and one from an address the AE is not
registered for is refused instance by instance (0x0124). A refused instance gets its failure
status and the reason in Error Comment; the association goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from hub.runtime import Hub
from hub.security.audit import AuditRecord, AuditUnavailable
from hub.security.principals import ClientKind
from hub.settings import Settings
from imaging.dataset import InvalidInstance
from imaging.index import NOT_AUTHORIZED, Refused
from imaging.service import PROCESSING_FAILURE, ImagingService, Sender, imaging_service

log = logging.getLogger(__name__)

# Transfer syntaxes accepted for every storage SOP class; files are kept as received.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
OUT_OF_RESOURCES = 0xA700  # the hub could not store it now: the sender should retry later
AE_REFRESH_SECONDS = 2.0
SYNC_INTERVAL_SECONDS = 2.0
RECEIVE_TIMEOUT_SECONDS = 600.0
# require_calling_aet = [] would accept anyone: with no AE registered, accept no one.
_NOBODY = "-NO-AE-REGISTERED"[:16]


@dataclass
class _Session:
    """One association: who called, from where, and what came of it (for its audit record)."""

    calling: str
    peer: str
    stored: int = 0
    refused: list[str] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class CallingAE:
    ae_title: str
    organization: str
    hosts: frozenset[str] | None  # None: any address


class StorageReceiver:
    """``yijian dicom-scp``: the hub's Storage SCP on ``host:port`` as ``ae_title``."""

    def __init__(
        self, settings: Settings, host: str, port: int, ae_title: str, *, reuse_port: bool = False
    ) -> None:
        self.settings = settings
        self.reuse_port = reuse_port  # several receiver processes share the port
        self.host, self.port, self.ae_title = host, port, ae_title
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="hub-loop", daemon=True)
        self._callers: dict[str, CallingAE] = {}
        self._sessions: dict[int, _Session] = {}  # association id → what it did
        self._sessions_lock = threading.Lock()
        self._server: Any = None
        self._tasks: list[asyncio.Future[Any]] = []
        self.hub: Hub | None = None
        self.service: ImagingService | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the hub's loop, load the calling AEs, and listen (returns at once)."""
        self._loop_thread.start()
        self._call(self._start_hub(), timeout=120)
        _config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=self.ae_title)
        ae.maximum_pdu_size = self.settings.dicom_max_pdu
        ae.maximum_associations = 64
        ae.network_timeout = 60
        ae.dimse_timeout = 120
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            assert context.abstract_syntax is not None
            ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        self._apply_callers(ae)
        self.ae = ae
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, _prompt_acknowledgements),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_end),
        ]
        self._server = ae.make_server(
            (self.host, self.port),
            evt_handlers=handlers,
            server_class=_ReusePortServer if self.reuse_port else ThreadedAssociationServer,
        )
        self.port = self._server.server_address[1]
        ae._servers.append(self._server)  # as start_server does: shutdown() removes it
        threading.Thread(
            target=self._server.serve_forever, name="dicom-acceptor", daemon=True
        ).start()
        self._tasks = [
            asyncio.run_coroutine_threadsafe(self._refresh_callers(), self.loop),  # type: ignore[list-item]
            asyncio.run_coroutine_threadsafe(self._sync_loop(), self.loop),  # type: ignore[list-item]
        ]

    def stop(self) -> None:
        """Stop accepting, let open associations end, write pending ImagingStudies, stop."""
        if self._server is not None:
            self._server.shutdown()
        for task in self._tasks:
            task.cancel()
        if self.service is not None:
            with contextlib.suppress(Exception):
                self._call(self.service.sync_pending(older_than=0, limit=10_000), timeout=120)
        if self.hub is not None:
            self._call(self.hub.stop(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(timeout=10)

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coroutine: Any, timeout: float) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    async def _start_hub(self) -> None:
        self.hub = Hub.build(self.settings)
        await self.hub.start()
        self.service = imaging_service(self.hub)
        self._callers = await self._load_callers()

    # -- calling AE titles ----------------------------------------------------------------------

    async def _load_callers(self) -> dict[str, CallingAE]:
        assert self.hub is not None
        async with self.hub.database.connection() as conn:
            rows = await conn.fetch("SELECT ae_title, organization, hosts FROM dicom_ae")
        return {
            row["ae_title"]: CallingAE(
                row["ae_title"],
                row["organization"],
                frozenset(row["hosts"]) if row["hosts"] else None,
            )
            for row in rows
        }

    async def _refresh_callers(self) -> None:
        while True:
            await asyncio.sleep(AE_REFRESH_SECONDS)
            try:
                self._callers = await self._load_callers()
                self._apply_callers(self.ae)
            except (OSError, asyncpg.PostgresError) as error:
                log.warning("calling AE titles not reloaded: %s", error)

    def _apply_callers(self, ae: AE) -> None:
        ae.require_calling_aet = sorted(self._callers) or [_NOBODY]

    # -- FHIR after the fact ----------------------------------------------------------------------

    async def _sync_loop(self) -> None:
        """Write the ImagingStudy of studies still receiving, or left pending by a crash."""
        assert self.service is not None
        while True:
            await asyncio.sleep(SYNC_INTERVAL_SECONDS)
            try:
                await self.service.sync_pending()
            except Exception:  # the loop must outlive any one failure
                log.exception("pending ImagingStudies not written")

    def _session(self, event: evt.Event) -> _Session:
        with self._sessions_lock:
            found = self._sessions.get(id(event.assoc))
            if found is None:
                found = self._sessions[id(event.assoc)] = _Session(
                    _calling_title(event), str(event.assoc.requestor.address)
                )
            return found

    def _on_end(self, event: evt.Event) -> None:
        """An association ended: audit what it did, write the ImagingStudy of its studies."""
        with self._sessions_lock:
            session = self._sessions.pop(id(event.assoc), None)
        if session is None or self.service is None:
            return
        if session.studies:
            asyncio.run_coroutine_threadsafe(self.service.sync_studies(session.studies), self.loop)
        caller = self._callers.get(session.calling)
        asyncio.run_coroutine_threadsafe(
            self._audit(session, caller.organization if caller else None), self.loop
        )

    def _on_rejected(self, event: evt.Event) -> None:
        """An association refused (unknown calling AE, wrong called AE): audited too."""
        session = _Session(_calling_title(event), str(event.assoc.requestor.address))
        session.refused.append("association rejected: calling or called AE title not known")
        asyncio.run_coroutine_threadsafe(self._audit(session, None, status=403), self.loop)

    async def _audit(
        self, session: _Session, organization: str | None, status: int | None = None
    ) -> None:
        assert self.hub is not None
        if status is None:
            status = 201 if not session.refused else (207 if session.stored else 422)
        detail = f"{session.stored} instances stored, {len(session.refused)} refused"
        if session.refused:
            detail += ": " + "; ".join(session.refused[:20])
        record = AuditRecord.for_status(
            status,
            action="C",
            interaction="dicom-store",
            client_id=f"dicom-ae:{session.calling}",
            client_kind=str(ClientKind.HOSPITAL),
            organization=organization,
            source_ip=session.peer,
            request_id=None,
            patients=[],
            entities=[f"urn:oid:{uid}" for uid in sorted(session.studies)][:1000],
            detail=detail[:4000],
        )
        try:
            await self.hub.audit.record(record)
        except AuditUnavailable:
            log.exception("audit record of an association from %s", session.calling)

    # -- C-STORE ------------------------------------------------------------------------------

    def _on_store(self, event: evt.Event) -> Dataset:
        """Store one instance; the answer is its status (and why, in Error Comment)."""
        assert self.service is not None
        session = self._session(event)
        calling, peer = session.calling, session.peer
        caller = self._callers.get(calling)
        if caller is None:
            session.refused.append("AE title not registered (any more)")
            return _status(NOT_AUTHORIZED, f"calling AE title {calling} is not registered")
        if caller.hosts is not None and peer not in caller.hosts:
            session.refused.append(f"not allowed from {peer}")
            return _status(NOT_AUTHORIZED, f"{calling} may not send from {peer}")
        sender = Sender(caller.organization, calling, "dimse", peer)
        try:
            with _dataset_file(event) as source:
                received = self._call(
                    self.service.receive(source, sender), timeout=RECEIVE_TIMEOUT_SECONDS
                )
        except (InvalidInstance, Refused) as error:
            log.info("C-STORE from %s refused: %s", calling, error.reason)
            session.refused.append(f"0x{error.status:04X} {error.reason[:200]}")
            return _status(error.status, error.reason)
        except (OSError, asyncpg.PostgresError, FutureTimeout) as error:
            log.warning("C-STORE from %s not stored: %s", calling, error)
            session.refused.append("not stored: the hub could not store it then")
            return _status(OUT_OF_RESOURCES, "the hub cannot store now; send again later")
        except Exception:
            log.exception("C-STORE from %s failed", calling)
            session.refused.append("not stored: an internal error (logged)")
            return _status(PROCESSING_FAILURE, "the hub failed to process the instance")
        session.stored += 1
        session.studies.add(received.header.study_uid)
        return _status(0x0000)


class _ReusePortServer(ThreadedAssociationServer):
    """An acceptor whose port other receiver processes bind too (SO_REUSEPORT): the kernel
    spreads new associations over them, each process with its own interpreter and hub."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class _QuickAckSocket:
    """A connected socket that acknowledges every read at once (Linux TCP_QUICKACK).

    A C-STORE request is a small command PDU and then the data set. Senders whose sockets
    keep Nagle's algorithm on (dcmtk's storescu among them) hold the data set back until the
    command is acknowledged, and Linux delays that acknowledgement by up to 40 ms: without
    this, one association stores at most about 20 instances a second whatever the hub does.
    """

    def __init__(self, raw: socket.socket) -> None:
        self._raw = raw

    def recv(self, size: int, *flags: int) -> bytes:
        data = self._raw.recv(size, *flags)
        with contextlib.suppress(OSError):
            self._raw.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


def _prompt_acknowledgements(event: evt.Event) -> None:
    """Answer promptly on a new connection: no Nagle delay on our writes (TCP_NODELAY), no
    delayed acknowledgement of the peer's (see ``_QuickAckSocket``)."""
    transport = event.assoc.dul.socket
    raw = getattr(transport, "socket", None) if transport is not None else None
    if not isinstance(raw, socket.socket):
        return
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_QUICKACK") and transport is not None:
        transport.socket = _QuickAckSocket(raw)  # type: ignore[assignment]


def _calling_title(event: evt.Event) -> str:
    title = event.assoc.requestor.ae_title
    if isinstance(title, bytes):
        title = title.decode("ascii", "replace")
    return str(title).strip()


@contextlib.contextmanager
def _dataset_file(event: evt.Event) -> Iterator[Any]:
    """The received instance as a Part 10 file, opened for reading (pynetdicom removes the
    temporary file after the handler returns)."""
    with open(event.dataset_path, "rb") as source:
        yield source


def _status(status: int, comment: str | None = None) -> Dataset:
    answer = Dataset()
    answer.Status = status
    if comment:
        # Error Comment is LO in the default repertoire: 64 ASCII characters, no backslash.
        text = comment.replace("\\", "/").encode("ascii", "replace").decode("ascii")
        answer.ErrorComment = text[:64]
    return answer
