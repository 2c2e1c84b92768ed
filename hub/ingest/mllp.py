"""The MLLP listener: HL7 v2 over TCP (``<VT> message <FS><CR>`` frames), asyncio.

Each connection is served in order (a sender waits for the ACK of one message before the
next, as HL7 original-mode acknowledgement expects); many connections are served at once.
The ACK is written only after the message's transaction committed (``IngestService``), so a
sender that loses the connection before its ACK arrives resends, and the control-id log
answers the resend without storing anything twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

from hub.ingest.service import Channel

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\r"
READ_CHUNK = 64 * 1024


class FrameTooLarge(Exception):
    """A frame grew past the configured maximum; ``prefix`` is its first maximum bytes."""

    def __init__(self, prefix: bytes) -> None:
        super().__init__(f"MLLP frame over {len(prefix)} bytes")
        self.prefix = prefix


class _FrameReader:
    """Splits a byte stream into MLLP frames with a buffer of its own.

    Bytes before a start block (line noise, keep-alive newlines) are skipped; the end block
    is ``<FS><CR>``, and a ``<FS>`` without the ``<CR>`` is tolerated. An oversized frame is
    skipped up to its end block after ``FrameTooLarge`` is raised.
    """

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int) -> None:
        self._reader = reader
        self._max = max_bytes
        self._buffer = bytearray()

    async def _fill(self) -> bool:
        chunk = await self._reader.read(READ_CHUNK)
        if not chunk:
            return False
        self._buffer += chunk
        return True

    async def next_frame(self) -> bytes | None:
        """The next message without framing; None at the end of the stream."""
        scanned = 0  # bytes of the buffer already searched for the end block
        while True:
            start = self._buffer.find(START_BLOCK)
            if start < 0:
                self._buffer.clear()
                if not await self._fill():
                    return None
                continue
            end = self._buffer.find(b"\x1c", max(start + 1, scanned))
            if end < 0:
                scanned = len(self._buffer)
                if len(self._buffer) - start > self._max:
                    prefix = bytes(self._buffer[start + 1 : start + 1 + self._max])
                    del self._buffer[: start + 1]  # drop the start block; skip to the end
                    await self._skip_to_end()
                    raise FrameTooLarge(prefix)
                if not await self._fill():
                    if len(self._buffer) > start + 1:
                        log.warning("MLLP connection closed mid-message")
                    return None
                continue
            cut = end + 1
            if cut < len(self._buffer) and self._buffer[cut] == 0x0D:
                cut += 1
            frame = bytes(self._buffer[start + 1 : end])
            del self._buffer[:cut]
            if len(frame) > self._max:
                raise FrameTooLarge(frame[: self._max])
            return frame

    async def _skip_to_end(self) -> None:
        while True:
            end = self._buffer.find(b"\x1c")
            if end >= 0:
                del self._buffer[: end + 1]
                return
            self._buffer.clear()
            if not await self._fill():
                return


class MllpServer:
    """Accepts MLLP connections and hands each framed message to the ingest pipeline."""

    def __init__(self, hub: Hub, host: str, port: int, *, reuse_port: bool = False) -> None:
        self.hub = hub
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.max_bytes = hub.settings.mllp_max_message_bytes
        self.idle_timeout = hub.settings.mllp_idle_timeout_seconds
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.port,
            reuse_port=self.reuse_port or None,
            limit=READ_CHUNK,
            backlog=512,
        )
        sockets = list(self._server.sockets or ())
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]
        log.info("MLLP listening on %s:%s", self.host, self.port)

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop accepting, let messages being processed finish (their ACKs go out), then
        close every connection."""
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_seconds)
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peername = writer.get_extra_info("peername")
        peer = peername[0] if isinstance(peername, tuple) else None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = _FrameReader(reader, self.max_bytes)
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(stream.next_frame(), self.idle_timeout)
                except FrameTooLarge as too_large:
                    receipt = await self.hub.ingest.refuse_oversized(
                        too_large.prefix, Channel.MLLP, peer
                    )
                    writer.write(START_BLOCK + receipt.response + END_BLOCK)
                    await writer.drain()
                    continue
                if frame is None:
                    break
                self._begin()
                try:
                    receipt = await self.hub.ingest.receive(frame, Channel.MLLP, peer=peer)
                    writer.write(START_BLOCK + receipt.response + END_BLOCK)
                    await writer.drain()
                finally:
                    self._end()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("MLLP connection from %s failed", peer)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _begin(self) -> None:
        self._in_flight += 1
        self._idle.clear()

    def _end(self) -> None:
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()
