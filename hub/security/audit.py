"""The audit log: one record per request that touches patient data, hash-chained.

Each process appends to a chain of its own. A record's MAC is HMAC-SHA256, under a key kept
outside the database, over the previous record's MAC and the record's fields; the chain's head
(last sequence number and MAC) is itself MACed. ``verify`` recomputes every chain, so editing,
inserting or deleting any audit row — or truncating a chain — is detected.

Records are written by ``AuditWriter`` with group commit: concurrent requests enqueue records
and await one shared transaction, so a response is only sent once its audit record is durable
while the database sees one commit per batch, not per request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from hub.security.keys import secret_key_file

MAX_BATCH = 500


@dataclass
class AuditRecord:
    """What one request did. ``action`` is the FHIR AuditEvent action code (C R U D E)."""

    action: str
    interaction: str
    outcome: str  # FHIR AuditEvent outcome: 0 success, 4 minor, 8 serious, 12 major failure
    status: int
    client_id: str | None = None
    client_kind: str | None = None
    organization: str | None = None
    source_ip: str | None = None
    request_id: str | None = None
    patients: list[str] = field(default_factory=list)
    entities: list[str] = field(default_factory=list)
    query: str | None = None
    detail: str | None = None
    recorded: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def for_status(cls, status: int, **fields: Any) -> AuditRecord:
        outcome = "0" if status < 400 else ("4" if status < 500 else "8")
        return cls(outcome=outcome, status=status, **fields)


_FIELDS = (
    "recorded",
    "action",
    "interaction",
    "outcome",
    "status",
    "client_id",
    "client_kind",
    "organization",
    "source_ip",
    "request_id",
    "patients",
    "entities",
    "query",
    "detail",
)


_ARRAY_FIELD_INDEXES = [1 + _FIELDS.index("patients"), 1 + _FIELDS.index("entities")]
_APPEND_SQL = """
WITH appended AS (
    INSERT INTO audit_log (chain_id, seq, recorded, action, interaction, outcome, status,
        client_id, client_kind, organization, source_ip, request_id, patients, entities,
        query, detail, mac)
    SELECT $1, u.seq, u.recorded, u.action, u.interaction, u.outcome, u.status, u.client_id,
        u.client_kind, u.organization, u.source_ip, u.request_id,
        ARRAY(SELECT jsonb_array_elements_text(u.patients::jsonb)),
        ARRAY(SELECT jsonb_array_elements_text(u.entities::jsonb)), u.query, u.detail, u.mac
    FROM unnest($2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[],
        $7::integer[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
        $13::text[], $14::text[], $15::text[], $16::text[], $17::text[])
        AS u(seq, recorded, action, interaction, outcome, status, client_id, client_kind,
             organization, source_ip, request_id, patients, entities, query, detail, mac)
)
UPDATE audit_chain SET last_seq = $18, last_mac = $19, head_mac = $20 WHERE chain_id = $1
"""


def load_audit_key(keys_dir: Path) -> bytes:
    """The audit MAC key: ``YIJIAN_AUDIT_KEY`` (hex) or ``KEYS_DIR/audit.key``, created once."""
    if env := os.environ.get("YIJIAN_AUDIT_KEY"):
        return bytes.fromhex(env)
    return secret_key_file(keys_dir / "audit.key")


def _mac(key: bytes, previous: str, payload: bytes) -> str:
    return hmac.new(key, previous.encode() + b"\n" + payload, hashlib.sha256).hexdigest()


def _payload(chain_id: str, seq: int, values: dict[str, Any]) -> bytes:
    row = [chain_id, seq]
    for name in _FIELDS:
        value = values[name]
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat()
        row.append(list(value) if isinstance(value, list | tuple) else value)
    return orjson.dumps(row)


def _head(key: bytes, chain_id: str, seq: int, last_mac: str) -> str:
    return _mac(key, last_mac, orjson.dumps(["head", chain_id, seq]))


Connect = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


class AuditWriter:
    """Appends audit records to this process's chain, batching concurrent records."""

    def __init__(self, connect: Connect, key: bytes):
        self.connect = connect
        self.key = key
        self.chain_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.seq = 0
        self.last_mac = ""
        self._pending: list[tuple[AuditRecord, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self, background: bool = True) -> None:
        """Open this process's chain; ``background`` starts the batching task."""
        started = datetime.now(UTC)
        genesis = _mac(self.key, "", orjson.dumps(["genesis", self.chain_id, started.isoformat()]))
        async with self.connect() as conn:
            await conn.execute(
                "INSERT INTO audit_chain (chain_id, started_at, genesis_mac, last_seq, last_mac, "
                "head_mac) VALUES ($1, $2, $3, 0, $3, $4)",
                self.chain_id,
                started,
                genesis,
                _head(self.key, self.chain_id, 0, genesis),
            )
        self.last_mac = genesis
        self._started = True
        if background:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def record(self, record: AuditRecord) -> None:
        """Append a record; returns once it is committed."""
        if self._task is None:
            await self.write_now([record])
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._wakeup.set()
        await future

    async def write_now(self, records: list[AuditRecord]) -> None:
        """Write without batching (the command line)."""
        async with self._lock:
            if not self._started:
                await self.start(background=False)
            await self._write(records)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    async with self._lock:
                        await self._write([r for r, _ in batch])
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(AuditUnavailable(str(error)))
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _write(self, records: list[AuditRecord]) -> None:
        seq, last_mac = self.seq, self.last_mac
        columns: list[list[Any]] = [[] for _ in range(len(_FIELDS) + 2)]
        for record in records:
            seq += 1
            values = {name: getattr(record, name) for name in _FIELDS}
            last_mac = _mac(self.key, last_mac, _payload(self.chain_id, seq, values))
            row = [seq, *(values[n] for n in _FIELDS), last_mac]
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        # Array-valued fields travel as JSON text: unnest() cannot yield array columns.
        for index in _ARRAY_FIELD_INDEXES:
            columns[index] = [orjson.dumps(list(v)).decode() for v in columns[index]]
        head = _head(self.key, self.chain_id, seq, last_mac)
        async with self.connect() as conn:
            # One statement, hence one round trip and atomic: rows plus the new chain head.
            await conn.execute(_APPEND_SQL, self.chain_id, *columns, seq, last_mac, head)
        self.seq, self.last_mac = seq, last_mac

    async def close(self) -> None:
        """Flush what is pending, then stop."""
        while self._pending:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()


class AuditUnavailable(Exception):
    """The audit log could not be written; the request is answered 503."""


@dataclass
class VerifyReport:
    chains: int = 0
    records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify(
    conn: asyncpg.Connection,
    key: bytes,
    progress: Callable[[int], Awaitable[None] | None] | None = None,
) -> VerifyReport:
    """Recompute every chain and report each row or chain that does not match.

    Chains and rows are read in one snapshot, so records that a running hub appends while
    the check runs are not mistaken for rows added behind a chain's head.
    """
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _verify_snapshot(conn, key, progress)


async def _verify_snapshot(
    conn: asyncpg.Connection,
    key: bytes,
    progress: Callable[[int], Awaitable[None] | None] | None = None,
) -> VerifyReport:
    report = VerifyReport()
    chains = await conn.fetch("SELECT * FROM audit_chain ORDER BY started_at, chain_id")
    known = {c["chain_id"] for c in chains}
    orphans = await conn.fetchval(
        "SELECT count(*) FROM audit_log WHERE chain_id <> ALL($1::text[])", list(known)
    )
    if orphans:
        report.problems.append(f"{orphans} audit rows belong to no known chain")
    for chain in chains:
        report.chains += 1
        chain_id = chain["chain_id"]
        expected_genesis = _mac(
            key,
            "",
            orjson.dumps(["genesis", chain_id, chain["started_at"].astimezone(UTC).isoformat()]),
        )
        if not hmac.compare_digest(expected_genesis, chain["genesis_mac"]):
            report.problems.append(f"chain {chain_id}: genesis does not match (chain row edited)")
            continue
        previous, expected_seq = chain["genesis_mac"], 1
        async with conn.transaction():
            async for row in conn.cursor(
                "SELECT * FROM audit_log WHERE chain_id = $1 ORDER BY seq", chain_id
            ):
                report.records += 1
                if row["seq"] != expected_seq:
                    report.problems.append(
                        f"chain {chain_id}: record {expected_seq} missing (next is {row['seq']})"
                    )
                    expected_seq = row["seq"]
                values = {name: row[name] for name in _FIELDS}
                mac = _mac(key, previous, _payload(chain_id, row["seq"], values))
                if not hmac.compare_digest(mac, row["mac"]):
                    report.problems.append(f"chain {chain_id}: record {row['seq']} was altered")
                previous = row["mac"]
                expected_seq += 1
        last_seq = expected_seq - 1
        if last_seq != chain["last_seq"] or previous != chain["last_mac"]:
            report.problems.append(
                f"chain {chain_id}: ends at record {last_seq} but its head says {chain['last_seq']}"
                " (records deleted or appended outside the hub)"
            )
        head = _head(key, chain_id, chain["last_seq"], chain["last_mac"])
        if not hmac.compare_digest(head, chain["head_mac"]):
            report.problems.append(f"chain {chain_id}: head was altered")
    return report
