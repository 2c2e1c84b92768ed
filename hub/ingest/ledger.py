"""The ingest tables: the message log (replays), dead letters, code mappings, unmapped codes.

Plain SQL over one asyncpg connection; no rules here beyond what the tables guarantee.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from hub.ingest.codemaps import CodeMap, CodeTarget
from hub.ingest.translation import LocalCode


@dataclass(frozen=True)
class LoggedMessage:
    digest: bytes
    response: bytes
    ack_code: str
    resources: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    received_at: datetime
    feed_id: str | None
    channel: str
    peer: str | None
    control_id: str | None
    ack_code: str
    error: str
    location: str | None
    status: str
    attempts: int
    resolved_at: datetime | None
    format: str = "hl7v2"
    payload: bytes = b""

    def text(self) -> str:
        """The message as text for a person: a Bundle as UTF-8; HL7 as UTF-8 if it is, else
        GB18030, with its segments on lines of their own."""
        if self.format == "fhir":
            return self.payload.decode("utf-8", errors="replace")
        try:
            text = self.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = self.payload.decode("gb18030", errors="replace")
        return text.replace("\r", "\n")

    def summary(self) -> dict[str, Any]:
        """Everything but the payload, JSON-ready (lists do not read payloads)."""
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "feed": self.feed_id,
            "channel": self.channel,
            "peer": self.peer,
            "control_id": self.control_id,
            "ack_code": self.ack_code,
            "error": self.error,
            "location": self.location,
            "status": self.status,
            "format": self.format,
            "attempts": self.attempts,
            "resolved_at": self.resolved_at.isoformat() if self.resolved_at else None,
        }


class MessageLog:
    """``ingest_message``: what each accepted message was answered, by feed and control id."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._conn = connection

    async def find(self, feed_id: str, control_id: str) -> LoggedMessage | None:
        row = await self._conn.fetchrow(
            "SELECT digest, response, ack_code, resources FROM ingest_message"
            " WHERE feed_id = $1 AND control_id = $2",
            feed_id,
            control_id,
        )
        return LoggedMessage(**dict(row)) if row else None

    async def record(
        self,
        feed_id: str,
        control_id: str,
        channel: str,
        digest: bytes,
        ack_code: str,
        response: bytes,
        resources: int,
    ) -> bool:
        """Insert the message; False when the control id was taken meanwhile (a replay raced)."""
        inserted = await self._conn.fetchval(
            "INSERT INTO ingest_message"
            " (feed_id, control_id, channel, digest, ack_code, response, resources)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)"
            " ON CONFLICT (feed_id, control_id) DO NOTHING RETURNING true",
            feed_id,
            control_id,
            channel,
            digest,
            ack_code,
            response,
            resources,
        )
        return bool(inserted)


_DEAD_LETTER_COLUMNS = (
    "id, received_at, feed_id, channel, peer, control_id, ack_code, error, location, status,"
    " attempts, resolved_at, format"
)


class DeadLetters:
    """``dead_letter``: messages not accepted, kept whole for inspection and replay."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._conn = connection

    async def add(
        self,
        *,
        feed_id: str | None,
        format: str,
        channel: str,
        peer: str | None,
        control_id: str | None,
        ack_code: str,
        error: str,
        location: str | None,
        payload: bytes,
    ) -> int:
        """Keep a failed message. The same bytes failing again (a sender's resend) count as
        another attempt of the open entry instead of a new entry. The payload is kept as
        bytes whatever it holds; the text columns are made storable (no NUL)."""
        control_id, error, location = _text(control_id), str(_text(error)), _text(location)
        existing = await self._conn.fetchval(
            "UPDATE dead_letter SET attempts = attempts + 1, error = $3, location = $4,"
            " ack_code = $5, received_at = now()"
            " WHERE id = (SELECT id FROM dead_letter WHERE status = 'open'"
            "   AND feed_id IS NOT DISTINCT FROM $1 AND control_id IS NOT DISTINCT FROM $2"
            "   AND payload = $6 ORDER BY id DESC LIMIT 1)"
            " RETURNING id",
            feed_id,
            control_id,
            error,
            location,
            ack_code,
            payload,
        )
        if existing is not None:
            return int(existing)
        return int(
            await self._conn.fetchval(
                "INSERT INTO dead_letter (feed_id, channel, peer, control_id, ack_code, error,"
                " location, payload, attempts, format)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9) RETURNING id",
                feed_id,
                channel,
                peer,
                control_id,
                ack_code,
                error,
                location,
                payload,
                format,
            )
        )

    async def list(
        self, *, status: str | None = "open", feed_id: str | None = None, limit: int = 100
    ) -> list[DeadLetter]:
        rows = await self._conn.fetch(
            f"SELECT {_DEAD_LETTER_COLUMNS} FROM dead_letter"
            " WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR feed_id = $2)"
            " ORDER BY id DESC LIMIT $3",
            status,
            feed_id,
            limit,
        )
        return [DeadLetter(**dict(row)) for row in rows]

    async def get(self, entry_id: int) -> DeadLetter | None:
        row = await self._conn.fetchrow(
            f"SELECT {_DEAD_LETTER_COLUMNS}, payload FROM dead_letter WHERE id = $1", entry_id
        )
        return DeadLetter(**dict(row)) if row else None

    async def resolve(self, entry_id: int, status: str) -> None:
        await self._conn.execute(
            "UPDATE dead_letter SET status = $2, resolved_at = now() WHERE id = $1",
            entry_id,
            status,
        )

    async def failed_again(self, entry_id: int, error: str, location: str | None) -> None:
        await self._conn.execute(
            "UPDATE dead_letter SET attempts = attempts + 1, error = $2, location = $3"
            " WHERE id = $1",
            entry_id,
            error,
            location,
        )


class CodeMappings:
    """``code_mapping``: local code → target, per hospital code system."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._conn = connection

    async def load(self, source_system: str) -> CodeMap:
        rows = await self._conn.fetch(
            "SELECT local_code, target_system, target_code, target_display, unit, catalogue"
            " FROM code_mapping WHERE source_system = $1",
            source_system,
        )
        return CodeMap(
            source_system,
            {
                row["local_code"]: CodeTarget(
                    code=row["target_code"],
                    display=row["target_display"],
                    unit=row["unit"],
                    catalogue=row["catalogue"],
                    system=row["target_system"],
                )
                for row in rows
            },
        )

    async def rows(self, source_system: str) -> list[tuple[str, str, CodeTarget]]:
        """(local code, local display, target) rows for a ConceptMap export."""
        records = await self._conn.fetch(
            "SELECT local_code, local_display, target_system, target_code, target_display,"
            " unit, catalogue FROM code_mapping WHERE source_system = $1 ORDER BY local_code",
            source_system,
        )
        return [
            (
                r["local_code"],
                r["local_display"],
                CodeTarget(
                    r["target_code"],
                    r["target_display"],
                    r["unit"],
                    r["catalogue"],
                    r["target_system"],
                ),
            )
            for r in records
        ]

    async def upsert(
        self,
        source_system: str,
        rows: Iterable[tuple[str, str, CodeTarget]],
        updated_by: str | None,
    ) -> list[str]:
        """Insert or change mappings; returns the local codes whose target changed or is new."""
        items = list(rows)
        if not items:
            return []
        changed = await self._conn.fetch(
            "INSERT INTO code_mapping AS m (source_system, local_code, local_display,"
            " target_system, target_code, target_display, unit, catalogue, updated_by)"
            " SELECT $1, c, d, ts, tc, td, u, k, $9 FROM unnest($2::text[], $3::text[],"
            "   $4::text[], $5::text[], $6::text[], $7::text[], $8::text[])"
            "   AS t(c, d, ts, tc, td, u, k)"
            " ON CONFLICT (source_system, local_code) DO UPDATE SET"
            "   local_display = excluded.local_display, target_system = excluded.target_system,"
            "   target_code = excluded.target_code, target_display = excluded.target_display,"
            "   unit = excluded.unit, catalogue = excluded.catalogue, updated_at = now(),"
            "   updated_by = excluded.updated_by"
            " WHERE (m.target_system, m.target_code, m.target_display, m.unit, m.catalogue)"
            "   IS DISTINCT FROM (excluded.target_system, excluded.target_code,"
            "   excluded.target_display, excluded.unit, excluded.catalogue)"
            " RETURNING local_code",
            source_system,
            [code for code, _, _ in items],
            [display for _, display, _ in items],
            [target.system for _, _, target in items],
            [target.code for _, _, target in items],
            [target.display for _, _, target in items],
            [target.unit for _, _, target in items],
            [target.catalogue for _, _, target in items],
            updated_by,
        )
        return [row["local_code"] for row in changed]

    async def remove(self, source_system: str, codes: Sequence[str]) -> int:
        result = await self._conn.execute(
            "DELETE FROM code_mapping WHERE source_system = $1 AND local_code = ANY($2::text[])",
            source_system,
            list(codes),
        )
        return int(result.split()[-1])


class UnmappedCodes:
    """``unmapped_code``: the operators' worklist of local codes without a mapping."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._conn = connection

    async def seen(self, organization: str, codes: Sequence[LocalCode]) -> None:
        """Count one more occurrence of each code (sorted, so concurrent messages never
        deadlock on the rows)."""
        if not codes:
            return
        ordered = sorted({(c.system, c.code): c for c in codes}.values(), key=_code_key)
        await self._conn.execute(
            "INSERT INTO unmapped_code AS u (source_system, local_code, organization,"
            " local_display, unit, occurrences)"
            " SELECT s, c, $1, d, un, 1 FROM unnest($2::text[], $3::text[], $4::text[],"
            "   $5::text[]) AS t(s, c, d, un)"
            " ON CONFLICT (source_system, local_code) DO UPDATE SET"
            "   occurrences = u.occurrences + 1, last_seen = now(),"
            "   local_display = CASE WHEN excluded.local_display <> ''"
            "     THEN excluded.local_display ELSE u.local_display END,"
            "   unit = CASE WHEN excluded.unit <> '' THEN excluded.unit ELSE u.unit END",
            organization,
            [c.system for c in ordered],
            [c.code for c in ordered],
            [c.display for c in ordered],
            [c.unit for c in ordered],
        )

    async def worklist(
        self, organization: str | None = None, limit: int = 500
    ) -> list[dict[str, Any]]:
        """Local codes results arrive with unmapped, by hospital, most frequent first: codes
        without a mapping, and codes seen unmapped since their mapping last changed (the
        result was in another unit than the mapping's, so it was not given its LOINC)."""
        rows = await self._conn.fetch(
            "SELECT u.organization, u.source_system, u.local_code, u.local_display, u.unit,"
            " u.occurrences, u.first_seen, u.last_seen, m.target_code, m.unit AS mapped_unit"
            " FROM unmapped_code u LEFT JOIN code_mapping m"
            "   ON m.source_system = u.source_system AND m.local_code = u.local_code"
            " WHERE ($1::text IS NULL OR u.organization = $1)"
            "   AND (m.local_code IS NULL OR u.last_seen > m.updated_at)"
            " ORDER BY u.organization, u.occurrences DESC, u.local_code LIMIT $2",
            organization,
            limit,
        )
        return [
            {
                "organization": row["organization"],
                "source_system": row["source_system"],
                "local_code": row["local_code"],
                "local_display": row["local_display"],
                "unit": row["unit"],
                "occurrences": row["occurrences"],
                "first_seen": row["first_seen"].isoformat(),
                "last_seen": row["last_seen"].isoformat(),
                "reason": "no mapping"
                if row["target_code"] is None
                else f"mapped to {row['target_code']} in {row['mapped_unit']}; results came"
                f" in {row['unit'] or 'another unit'}",
            }
            for row in rows
        ]


def _text(value: str | None) -> str | None:
    """A string PostgreSQL text can hold: NUL shown as U+FFFD."""
    return value.replace("\x00", "\ufffd") if value else value


def _code_key(code: LocalCode) -> tuple[str, str]:
    return (code.system, code.code)


class RegisteredFeeds:
    """``ingest_feed``: feeds registered at run time (``yijian feeds add``)."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._conn = connection

    async def all(self) -> list[dict[str, Any]]:
        rows = await self._conn.fetch("SELECT config::text FROM ingest_feed ORDER BY feed_id")
        return [orjson.loads(row["config"]) for row in rows]

    async def save(self, feed_id: str, config: dict[str, Any]) -> None:
        await self._conn.execute(
            "INSERT INTO ingest_feed (feed_id, config) VALUES ($1, $2::text::jsonb)"
            " ON CONFLICT (feed_id) DO UPDATE SET config = excluded.config, updated_at = now()",
            feed_id,
            orjson.dumps(config).decode(),
        )

    async def remove(self, feed_id: str) -> bool:
        return (
            await self._conn.execute("DELETE FROM ingest_feed WHERE feed_id = $1", feed_id)
        ) != "DELETE 0"


async def ingest_statistics(
    connection: asyncpg.Connection, days: int = 7, feed_id: str | None = None
) -> list[dict[str, Any]]:
    """Per feed and day (newest first), as last refreshed by the ``statistics`` task."""
    rows = await connection.fetch(
        "SELECT day, feed_id, messages, resources, errors, dead_letters, refreshed_at"
        " FROM ingest_statistics WHERE day > current_date - $1::int"
        " AND ($2::text IS NULL OR feed_id = $2) ORDER BY day DESC, feed_id",
        days,
        feed_id,
    )
    return [
        {
            **dict(row),
            "day": row["day"].isoformat(),
            "refreshed_at": row["refreshed_at"].isoformat(),
        }
        for row in rows
    ]
