"""Files of messages: feeds' drop folders, and ``yijian import`` of HL7 v2 files, FHIR
transaction Bundles (``.json``) and FHIR NDJSON (``.ndjson``, in transactions of 500).

A drop folder is polled; a file is taken once its size has stopped changing (the sender
finished writing it), each message in it goes through the pipeline, and the file is moved to
``processed/`` when every message was accepted, else to ``failed/`` (the refused messages are
dead-lettered with their reasons, so nothing is lost either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from hub.ingest.service import Channel, Receipt

if TYPE_CHECKING:
    from hub.runtime import Hub

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
HL7_SUFFIXES = frozenset({".hl7", ".txt", ".er7", ".msg"})
JSON_SUFFIXES = frozenset({".json"})
NDJSON_SUFFIXES = frozenset({".ndjson", ".jsonl"})
NDJSON_BATCH = 500  # resources per transaction
NDJSON_BATCH_SYSTEM = "https://yijian-hub.org/fhir/sid/ndjson-batch"
_MESSAGE_START = re.compile(rb"(?:^|[\r\n])(?=MSH\|)")
_BATCH_SEGMENTS = re.compile(rb"^(?:FHS|BHS|BTS|FTS)\|")


def split_hl7(data: bytes) -> list[bytes]:
    """The messages of an HL7 file: one or many, MLLP-framed or not, batch segments
    (FHS/BHS/BTS/FTS) dropped, line ends normalised to the segment separator CR."""
    data = data.replace(b"\x0b", b"").replace(b"\x1c", b"\n")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    starts = [m.end() if m.group(0) else m.start() for m in _MESSAGE_START.finditer(data)]
    messages = []
    for index, start in enumerate(starts):
        end = starts[index + 1] if index + 1 < len(starts) else len(data)
        lines = [
            line
            for line in re.split(rb"\r\n|\r|\n", data[start:end])
            if line.strip() and not _BATCH_SEGMENTS.match(line)
        ]
        if lines:
            messages.append(b"\r".join(lines) + b"\r")
    return messages


def split_ndjson(data: bytes, batch: int = NDJSON_BATCH) -> list[bytes]:
    """FHIR NDJSON (one resource a line) as transaction Bundles of ``batch`` resources: a
    resource with an id is PUT under it, one without is POSTed. Each Bundle's identifier is
    the digest of its lines, so importing the same file again stores nothing twice. A line
    that is not a JSON object is passed on alone, to be refused and dead-lettered as it is."""
    payloads: list[bytes] = []
    entries: list[dict[str, Any]] = []
    digest = hashlib.sha256()

    def close() -> None:
        nonlocal entries, digest
        if entries:
            bundle = {
                "resourceType": "Bundle",
                "type": "transaction",
                "identifier": {"system": NDJSON_BATCH_SYSTEM, "value": digest.hexdigest()},
                "entry": entries,
            }
            payloads.append(orjson.dumps(bundle))
        entries, digest = [], hashlib.sha256()

    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            resource = None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            close()
            payloads.append(line)
            continue
        digest.update(line)
        kind = resource["resourceType"]
        if isinstance(resource.get("id"), str):
            request = {"method": "PUT", "url": f"{kind}/{resource['id']}"}
        else:
            request = {"method": "POST", "url": kind}
        entries.append({"resource": resource, "request": request})
        if len(entries) >= batch:
            close()
    close()
    return payloads


def file_format(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in HL7_SUFFIXES:
        return "hl7v2"
    if suffix in JSON_SUFFIXES or suffix in NDJSON_SUFFIXES:
        return "fhir"
    return None


@dataclass
class FileResult:
    path: Path
    receipts: list[Receipt] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return bool(self.receipts) and all(r.accepted for r in self.receipts)


async def ingest_file(
    hub: Hub, path: Path, *, feed_id: str | None = None, channel: str = Channel.FILE
) -> FileResult:
    """Every message of one file, in order, through the pipeline."""
    format = file_format(path) or "hl7v2"
    data = path.read_bytes()
    if format == "hl7v2":
        messages = split_hl7(data)
    elif path.suffix.lower() in NDJSON_SUFFIXES:
        messages = split_ndjson(data)
    else:
        messages = [data]
    result = FileResult(path)
    for message in messages:
        result.receipts.append(
            await hub.ingest.receive(message, channel, format=format, feed_id=feed_id)
        )
    return result


class DropFolders:
    """Polls the drop folder of every feed that has one."""

    def __init__(self, hub: Hub, poll_seconds: float = POLL_SECONDS) -> None:
        self.hub = hub
        self.poll_seconds = poll_seconds
        self._sizes: dict[Path, int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.poll_once()
            except Exception:
                log.exception("drop-folder poll failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_seconds)

    async def poll_once(self, *, settle: bool = True) -> list[FileResult]:
        """One pass over every drop folder. With ``settle``, a file is taken only when its size
        is the same as at the previous pass (so half-written files wait)."""
        results = []
        for feed, _source in await self.hub.ingest.feeds.all():
            folder = feed.inputs.file_drop
            if folder is None or not folder.is_dir():
                continue
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                if file_format(path) is None or path.name.startswith("."):
                    continue
                size = path.stat().st_size
                if settle and self._sizes.get(path) != size:
                    self._sizes[path] = size
                    continue
                self._sizes.pop(path, None)
                result = await ingest_file(self.hub, path, feed_id=feed.feed)
                done = folder / ("processed" if result.accepted else "failed")
                done.mkdir(exist_ok=True)
                path.replace(done / path.name)
                log.info(
                    "drop folder %s: %s → %s (%d messages)",
                    feed.feed,
                    path.name,
                    done.name,
                    len(result.receipts),
                )
                results.append(result)
        return results
