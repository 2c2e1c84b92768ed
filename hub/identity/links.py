"""The identity tables in PostgreSQL: masters, links, match features, events and reviews.

A repository in the Cosmic Python sense: SQL in, plain values out, no matching rules. Every
method runs on the unit of work's connection, inside its transaction.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson


@dataclass(frozen=True)
class Link:
    """A source Patient's link to its master."""

    source_id: str
    master_id: str
    organization: str | None
    grade: str
    score: float | None
    decided_by: str
    manual: bool
    decided_at: datetime | None = None

    def snapshot(self) -> dict[str, Any]:
        """The link as stored in an event, to restore it on undo."""
        return {
            "master_id": self.master_id,
            "organization": self.organization,
            "grade": self.grade,
            "score": self.score,
            "decided_by": self.decided_by,
            "manual": self.manual,
        }

    @classmethod
    def restore(cls, source_id: str, data: dict[str, Any]) -> Link:
        return cls(
            source_id,
            data["master_id"],
            data.get("organization"),
            data["grade"],
            data.get("score"),
            data["decided_by"],
            data.get("manual", False),
        )


@dataclass(frozen=True)
class Candidate:
    """A stored source Patient that may be the same person, with its master."""

    source_id: str
    master_id: str
    organization: str | None
    demographics: dict[str, Any]
    id_keys: list[str]


@dataclass(frozen=True)
class Review:
    id: int
    source_id: str
    master_id: str
    grade: str
    score: float
    details: dict[str, Any]
    status: str
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": f"Patient/{self.source_id}",
            "master": f"Patient/{self.master_id}",
            "grade": self.grade,
            "score": self.score,
            "details": self.details,
            "status": self.status,
            "created": self.created_at.isoformat(),
            "resolved": self.resolved_at.isoformat() if self.resolved_at else None,
            "resolvedBy": self.resolved_by,
            "reason": self.reason,
        }


PER_KEY = 50  # candidates read per blocking key
_LINK = "source_id, master_id, organization, grade, score, decided_by, manual, decided_at"
_REVIEW = (
    "id, source_id, master_id, grade, score, details, status, created_at, resolved_at, "
    "resolved_by, reason"
)


def _link(row: asyncpg.Record) -> Link:
    return Link(**dict(row))


def _review(row: asyncpg.Record) -> Review:
    values = dict(row)
    values["details"] = _json(values["details"])
    return Review(**values)


class IdentityRepository:
    """Identity rows on one connection."""

    def __init__(self, connection: asyncpg.Connection):
        self.connection = connection

    # -- masters ------------------------------------------------------------------------------

    async def add_master(self, master_id: str) -> None:
        await self.connection.execute(
            "INSERT INTO patient_master (master_id) VALUES ($1)", master_id
        )

    async def master_status(self, master_id: str) -> tuple[str, str | None] | None:
        row = await self.connection.fetchrow(
            "SELECT status, merged_into FROM patient_master WHERE master_id = $1", master_id
        )
        return (row["status"], row["merged_into"]) if row else None

    async def set_master_status(
        self, master_id: str, status: str, merged_into: str | None = None
    ) -> None:
        await self.connection.execute(
            "UPDATE patient_master SET status = $2, merged_into = $3 WHERE master_id = $1",
            master_id,
            status,
            merged_into,
        )

    async def masters_among(self, ids: list[str]) -> set[str]:
        rows = await self.connection.fetch(
            "SELECT master_id FROM patient_master WHERE master_id = ANY($1::text[])", ids
        )
        return {r["master_id"] for r in rows}

    # -- links --------------------------------------------------------------------------------

    async def link_of(self, source_id: str) -> Link | None:
        row = await self.connection.fetchrow(
            f"SELECT {_LINK} FROM patient_link WHERE source_id = $1", source_id
        )
        return _link(row) if row else None

    async def sources_of_master(self, master_id: str) -> list[tuple[str, str]]:
        """``(id, stored content)`` of a master's live sources, most recently updated first."""
        rows = await self.connection.fetch(
            "SELECT r.res_id, r.content FROM patient_link l JOIN resource r "
            "ON r.res_type = 'Patient' AND r.res_id = l.source_id AND NOT r.deleted "
            "WHERE l.master_id = $1 ORDER BY r.last_updated DESC, r.res_id",
            master_id,
        )
        return [(r["res_id"], r["content"]) for r in rows]

    async def links_of_master(self, master_id: str) -> list[Link]:
        rows = await self.connection.fetch(
            f"SELECT {_LINK} FROM patient_link WHERE master_id = $1 ORDER BY decided_at, source_id",
            master_id,
        )
        return [_link(r) for r in rows]

    async def new_link(
        self, link: Link, new_master: bool, action: str, previous: Link | None
    ) -> int:
        """Store a rule's link decision (creating its master if ``new_master``) and the event
        recording it, in one round trip; returns the event id."""
        event_id: int = await self.connection.fetchval(
            "WITH m AS (INSERT INTO patient_master (master_id) SELECT $2 WHERE $8), "
            "l AS (INSERT INTO patient_link (source_id, master_id, organization, grade, score, "
            "decided_by, manual, decided_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) "
            "ON CONFLICT (source_id) DO UPDATE SET master_id = $2, organization = $3, "
            "grade = $4, score = $5, decided_by = $6, manual = $7, decided_at = now()) "
            "INSERT INTO identity_event (action, decided_by, source_id, master_id, "
            "previous_master_id, grade, score, details) VALUES ($9, $6, $1, $2, $10, $4, $5, "
            "$11::jsonb) RETURNING id",
            link.source_id,
            link.master_id,
            link.organization,
            link.grade,
            link.score,
            link.decided_by,
            link.manual,
            new_master,
            action,
            previous.master_id if previous else None,
            orjson.dumps(
                {
                    "sources": [link.source_id],
                    "before": {link.source_id: previous.snapshot() if previous else None},
                }
            ).decode(),
        )
        return event_id

    async def save_link(self, link: Link) -> None:
        await self.connection.execute(
            "INSERT INTO patient_link (source_id, master_id, organization, grade, score, "
            "decided_by, manual, decided_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) "
            "ON CONFLICT (source_id) DO UPDATE SET master_id = $2, organization = $3, "
            "grade = $4, score = $5, decided_by = $6, manual = $7, decided_at = now()",
            link.source_id,
            link.master_id,
            link.organization,
            link.grade,
            link.score,
            link.decided_by,
            link.manual,
        )

    async def remove_link(self, source_id: str) -> None:
        await self.connection.execute("DELETE FROM patient_link WHERE source_id = $1", source_id)

    async def group(self, patient_ids: list[str]) -> list[str]:
        """Every Patient id that is one person with any of ``patient_ids``."""
        rows = await self.connection.fetch("SELECT patient_group($1::text[]) AS id", patient_ids)
        return [r["id"] for r in rows]

    # -- features and candidates --------------------------------------------------------------

    async def record_features(
        self,
        source_id: str,
        organization: str | None,
        demographics: dict[str, Any],
        block_keys: list[str],
        id_keys: list[str],
        lock_keys: list[str],
    ) -> Link | None:
        """Lock the keys, store a source's features, and return its link: one round trip,
        as this runs on every Patient write.

        The advisory locks (sorted, so two writers never wait on each other in a cycle)
        serialise the matching of records that could be one person until the transaction ends.
        """
        row = await self.connection.fetchrow(
            "WITH locked AS (SELECT count(pg_advisory_xact_lock(29, k)) AS n "
            "FROM (SELECT k FROM unnest($6::int[]) AS k ORDER BY k) AS s), "
            "f AS (INSERT INTO identity_features (source_id, organization, demographics, "
            "block_keys, id_keys) VALUES ($1, $2, $3::jsonb, $4, $5) ON CONFLICT (source_id) "
            "DO UPDATE SET organization = $2, demographics = $3::jsonb, block_keys = $4, "
            "id_keys = $5, updated_at = now() RETURNING source_id) "
            "SELECT locked.n, f.source_id AS stored, l.* FROM locked, f "
            "LEFT JOIN patient_link l ON l.source_id = f.source_id",
            source_id,
            organization,
            orjson.dumps(demographics).decode(),
            block_keys,
            id_keys,
            sorted({zlib.crc32(key.encode()) - 2**31 for key in lock_keys}),
        )
        if row is None or row["master_id"] is None:
            return None
        return Link(**{k: row[k] for k in _LINK.split(", ")})

    async def remove_features(self, source_id: str) -> None:
        await self.connection.execute(
            "DELETE FROM identity_features WHERE source_id = $1", source_id
        )

    async def candidates(
        self, id_keys: list[str], block_keys: list[str], exclude: str | None
    ) -> tuple[list[Candidate], list[Candidate]]:
        """Sources sharing a deterministic identifier, and sources sharing a blocking key,
        in one round trip. At most ``PER_KEY`` per key: a crowded key (a hospital
        switchboard's phone number) cannot crowd out the others."""
        rows = await self.connection.fetch(
            "SELECT DISTINCT ON (hit.kind, f.source_id) hit.kind, f.source_id, l.master_id, "
            "f.organization, f.demographics, f.id_keys FROM ("
            "SELECT 'id' AS kind, c.source_id FROM unnest($1::text[]) AS k(key) "
            "CROSS JOIN LATERAL (SELECT x.source_id FROM identity_features x "
            "WHERE x.id_keys @> ARRAY[k.key] AND x.source_id IS DISTINCT FROM $3 LIMIT $4) AS c "
            "UNION ALL "
            "SELECT 'block', c.source_id FROM unnest($2::text[]) AS k(key) "
            "CROSS JOIN LATERAL (SELECT x.source_id FROM identity_features x "
            "WHERE x.block_keys @> ARRAY[k.key] AND x.source_id IS DISTINCT FROM $3 LIMIT $4) "
            "AS c) AS hit "
            "JOIN identity_features f ON f.source_id = hit.source_id "
            "JOIN patient_link l ON l.source_id = f.source_id",
            id_keys,
            block_keys,
            exclude,
            PER_KEY,
        )
        found: dict[str, list[Candidate]] = {"id": [], "block": []}
        for r in rows:
            found[r["kind"]].append(
                Candidate(
                    r["source_id"],
                    r["master_id"],
                    r["organization"],
                    _json(r["demographics"]),
                    list(r["id_keys"]),
                )
            )
        return found["id"], found["block"]

    # -- events -------------------------------------------------------------------------------

    async def add_event(
        self,
        action: str,
        decided_by: str,
        *,
        source_id: str | None = None,
        master_id: str | None = None,
        previous_master_id: str | None = None,
        grade: str | None = None,
        score: float | None = None,
        reason: str | None = None,
        undoes: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> int:
        event_id: int = await self.connection.fetchval(
            "INSERT INTO identity_event (action, decided_by, source_id, master_id, "
            "previous_master_id, grade, score, reason, undoes, details) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb) RETURNING id",
            action,
            decided_by,
            source_id,
            master_id,
            previous_master_id,
            grade,
            score,
            reason,
            undoes,
            orjson.dumps(details or {}).decode(),
        )
        if undoes is not None:
            # Undoing an undo (a redo) puts the first event back in force.
            await self.connection.execute(
                "WITH target AS (UPDATE identity_event SET undone_by = $1 WHERE id = $2 "
                "RETURNING action, undoes) "
                "UPDATE identity_event SET undone_by = NULL FROM target "
                "WHERE target.action = 'undo' AND identity_event.id = target.undoes",
                event_id,
                undoes,
            )
        return event_id

    async def event(self, event_id: int, lock: bool = False) -> dict[str, Any] | None:
        row = await self.connection.fetchrow(
            "SELECT * FROM identity_event WHERE id = $1" + (" FOR UPDATE" if lock else ""),
            event_id,
        )
        return _event(row) if row else None

    async def events(self, patient_id: str | None, limit: int = 200) -> list[dict[str, Any]]:
        if patient_id is None:
            rows = await self.connection.fetch(
                "SELECT * FROM identity_event ORDER BY id DESC LIMIT $1", limit
            )
        else:
            rows = await self.connection.fetch(
                "SELECT * FROM identity_event WHERE source_id = $1 OR master_id = $1 "
                "OR previous_master_id = $1 OR details->'sources' ? $1 "
                "ORDER BY id DESC LIMIT $2",
                patient_id,
                limit,
            )
        return [_event(r) for r in rows]

    async def later_events(self, event_id: int, source_ids: list[str]) -> list[int]:
        """Events after ``event_id`` still in force that changed any of these sources' links.

        An event that was undone, and the undo of a later event, cancel out.
        """
        rows = await self.connection.fetch(
            "SELECT id FROM identity_event WHERE id > $1 AND undone_by IS NULL "
            "AND action <> 'dismiss' AND NOT (action = 'undo' AND undoes > $1) AND "
            "(source_id = ANY($2::text[]) OR details->'sources' ?| $2::text[])",
            event_id,
            source_ids,
        )
        return [r["id"] for r in rows]

    # -- reviews ------------------------------------------------------------------------------

    async def open_review(
        self, source_id: str, master_id: str, grade: str, score: float, details: dict[str, Any]
    ) -> int | None:
        """Queue a review of (source, master); None if that pair was dismissed before."""
        dismissed = await self.connection.fetchval(
            "SELECT 1 FROM identity_review WHERE source_id = $1 AND master_id = $2 "
            "AND status = 'dismissed'",
            source_id,
            master_id,
        )
        if dismissed:
            return None
        review_id: int | None = await self.connection.fetchval(
            "INSERT INTO identity_review (source_id, master_id, grade, score, details) "
            "VALUES ($1, $2, $3, $4, $5::jsonb) ON CONFLICT (source_id, master_id) "
            "WHERE status = 'open' DO UPDATE SET grade = $3, score = $4, details = $5::jsonb "
            "RETURNING id",
            source_id,
            master_id,
            grade,
            score,
            orjson.dumps(details).decode(),
        )
        return review_id

    async def dismissed_masters(self, source_id: str) -> set[str]:
        rows = await self.connection.fetch(
            "SELECT master_id FROM identity_review WHERE source_id = $1 AND status = 'dismissed'",
            source_id,
        )
        return {r["master_id"] for r in rows}

    async def review(self, review_id: int, lock: bool = False) -> Review | None:
        row = await self.connection.fetchrow(
            f"SELECT {_REVIEW} FROM identity_review WHERE id = $1"
            + (" FOR UPDATE" if lock else ""),
            review_id,
        )
        return _review(row) if row else None

    async def reviews(self, status: str | None, limit: int, after: int = 0) -> list[Review]:
        rows = await self.connection.fetch(
            f"SELECT {_REVIEW} FROM identity_review WHERE ($1::text IS NULL OR status = $1) "
            "AND id > $2 ORDER BY id LIMIT $3",
            status,
            after,
            limit,
        )
        return [_review(r) for r in rows]

    async def resolve_reviews(
        self,
        status: str,
        resolved_by: str,
        reason: str | None,
        *,
        review_id: int | None = None,
        source_id: str | None = None,
        master_id: str | None = None,
    ) -> None:
        """Close open reviews: one by id, or those of a source (and master) pair."""
        await self.connection.execute(
            "UPDATE identity_review SET status = $1, resolved_by = $2, reason = $3, "
            "resolved_at = now() WHERE status = 'open' AND ($4::bigint IS NULL OR id = $4) "
            "AND ($5::text IS NULL OR source_id = $5) AND ($6::text IS NULL OR master_id = $6)",
            status,
            resolved_by,
            reason,
            review_id,
            source_id,
            master_id,
        )

    async def supersede_reviews_of_master(self, master_id: str, resolved_by: str) -> None:
        """Reviews proposing a master that no longer exists as such."""
        await self.connection.execute(
            "UPDATE identity_review SET status = 'superseded', resolved_by = $2, "
            "resolved_at = now() WHERE status = 'open' AND master_id = $1",
            master_id,
            resolved_by,
        )


def _event(row: asyncpg.Record) -> dict[str, Any]:
    values = dict(row)
    values["details"] = _json(values["details"]) if values["details"] else {}
    values["at"] = values["at"].isoformat()
    return values


def _json(value: Any) -> Any:
    """A jsonb value: decoded already when the pool's connections have a codec for it."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value
