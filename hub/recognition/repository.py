"""PostgreSQL access for recognition: catalogue versions, candidate results, reminders,
decisions and the statistics over them. SQL only; the rules are in ``rules``."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from hub.recognition.rules import Candidate

# The newest rows per requested code for the person (a window over one index scan: simple
# enough to plan in well under a millisecond). The performer is the organization the hub
# verified as the writer (``owner_org``), not whatever the resource names.
_CANDIDATES = """
SELECT t.pk, t.res_type, r.res_id, t.system, t.code, t.site, t.effective, t.status,
       COALESCE(r.owner_org, t.performer) AS performer, t.group_key, t.flags
FROM (SELECT x.*, row_number() OVER (PARTITION BY x.code
                                     ORDER BY x.effective DESC NULLS LAST) AS n
      FROM idx_result x WHERE x.patient_id = ANY($1::text[]) AND x.code = ANY($2::text[])) AS t
JOIN resource r ON r.pk = t.pk
WHERE t.n <= $3
"""

# The rows of the Observations that lab reports list in ``result`` (a panel pushed without
# ``basedOn``), so that their flags and statuses count with the report: $1 the reports' pks.
_LISTED = """
SELECT d.res_id AS report, x.pk, x.res_type, o.res_id, x.system, x.code, x.site, x.effective,
       x.status, COALESCE(o.owner_org, x.performer) AS performer, x.flags
FROM resource d
CROSS JOIN LATERAL jsonb_array_elements(
    CASE WHEN jsonb_typeof(d.content::jsonb -> 'result') = 'array'
         THEN d.content::jsonb -> 'result' ELSE '[]'::jsonb END) AS e(ref)
JOIN resource o ON o.res_type = 'Observation' AND NOT o.deleted
    AND o.res_id = substring(e.ref ->> 'reference' FROM '^Observation/([^/]+)')
JOIN idx_result x ON x.pk = o.pk AND x.patient_id = ANY($2::text[])
WHERE d.pk = ANY($1::bigint[])
"""

# Imaging reports of the person that name one of the studies found ($2).
_STUDY_REPORTS = """
SELECT x.pk, x.res_type, r.res_id, x.system, x.code, x.site, x.effective, x.status,
       COALESCE(r.owner_org, x.performer) AS performer, x.group_key, x.flags
FROM idx_result x JOIN resource r ON r.pk = x.pk
WHERE x.patient_id = ANY($1::text[]) AND x.res_type = 'DiagnosticReport'
  AND x.group_key = ANY($2::text[])
"""

_CONTENTS = "SELECT res_type, res_id, content FROM resource WHERE pk = ANY($1::bigint[])"

# The person (every record linked to the given ones) plus what tells caches they are stale.
_PERSON = """
WITH given AS (
    SELECT $1::text[] || ARRAY(
        SELECT r.res_id FROM idx_token t JOIN resource r ON r.pk = t.pk
        WHERE t.res_type = 'Patient' AND t.param = 'identifier' AND NOT r.deleted
          AND (t.system, t.code) IN (SELECT * FROM unnest($2::text[], $3::text[]))) AS ids),
 person AS (SELECT g.id FROM patient_group((SELECT ids FROM given)) AS g(id)
            WHERE EXISTS (SELECT 1 FROM resource r WHERE r.res_type = 'Patient'
                          AND r.res_id = g.id AND NOT r.deleted))
SELECT ARRAY(SELECT id FROM person) AS patients,
       ARRAY(SELECT m.master_id FROM patient_master m JOIN person p ON p.id = m.master_id
             WHERE m.status = 'active') AS masters,
       (SELECT COALESCE(max(version), 0) FROM recognition_catalogue) AS catalogue_version,
       (SELECT ARRAY[count(*), COALESCE(sum(version_id), 0), COALESCE(max(pk), 0)]
        FROM resource WHERE res_type = 'Organization' AND NOT deleted) AS orgs
"""


@dataclass(frozen=True)
class Person:
    """The records of one person, and the freshness stamps of the caches."""

    patients: list[str]
    masters: list[str]
    catalogue_version: int
    organizations_stamp: tuple[Any, ...]


@dataclass(frozen=True)
class Reminder:
    """A reusable result shown to a doctor."""

    id: uuid.UUID
    source: str
    organization: str
    patient_id: str
    item_id: str
    result_ref: str
    label: str
    price_cny: float
    result_org: str | None = None
    order_ref: str | None = None
    requested: str | None = None
    hook: str | None = None
    hook_instance: str | None = None
    client_id: str | None = None
    department: str | None = None
    practitioner: str | None = None


class RecognitionRepository:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    # -- the catalogue ------------------------------------------------------------------------

    async def catalogue(self, version: int | None = None) -> tuple[int, dict[str, Any]] | None:
        """(version, document) of ``version``, or of the one in force."""
        if version is None:
            row = await self.connection.fetchrow(
                "SELECT version, document FROM recognition_catalogue ORDER BY version DESC LIMIT 1"
            )
        else:
            row = await self.connection.fetchrow(
                "SELECT version, document FROM recognition_catalogue WHERE version = $1", version
            )
        return (row["version"], _json(row["document"])) if row else None

    async def lock_catalogue(self) -> None:
        """Serialise catalogue editors until the transaction ends (read, change, save)."""
        await self.connection.execute("SELECT pg_advisory_xact_lock(hashtext('catalogue'))")

    async def save_catalogue(
        self, document: dict[str, Any], created_by: str, note: str | None
    ) -> int:
        """Store a new version (in the editor's transaction, after ``lock_catalogue``)."""
        await self.lock_catalogue()
        return int(
            await self.connection.fetchval(
                "INSERT INTO recognition_catalogue (version, document, created_by, note) "
                "SELECT COALESCE(max(version), 0) + 1, $1::jsonb, $2, $3 "
                "FROM recognition_catalogue RETURNING version",
                orjson.dumps(document).decode(),
                created_by,
                note,
            )
        )

    async def catalogue_versions(self) -> list[dict[str, Any]]:
        rows = await self.connection.fetch(
            "SELECT version, created_at, created_by, note, document->>'version' AS label, "
            "jsonb_array_length(document->'items') AS items "
            "FROM recognition_catalogue ORDER BY version DESC"
        )
        return [dict(r) for r in rows]

    # -- patients and results -----------------------------------------------------------------

    async def person(
        self, patient_ids: Sequence[str], identifiers: Sequence[tuple[str, str]]
    ) -> Person:
        row = await self.connection.fetchrow(
            _PERSON,
            list(patient_ids),
            [s for s, _ in identifiers],
            [c for _, c in identifiers],
        )
        return Person(
            list(row["patients"]),
            list(row["masters"]),
            row["catalogue_version"],
            tuple(row["orgs"]),
        )

    async def organizations(self) -> list[tuple[str, str]]:
        rows = await self.connection.fetch(
            "SELECT res_id, content FROM resource WHERE res_type = 'Organization' AND NOT deleted"
        )
        return [(r["res_id"], r["content"]) for r in rows]

    async def candidates(
        self, patients: list[str], codes: list[str], per_code: int = 20
    ) -> list[Candidate]:
        """The person's newest ``per_code`` results of each code, with what completes them:
        the results a lab report lists, the report of an imaging study."""
        found = [
            _candidate(r, r["group_key"])
            for r in await self.connection.fetch(_CANDIDATES, patients, codes, per_code)
        ]
        grouped = {c.group for c in found if c.res_type != "DiagnosticReport" and c.group}
        reports = [
            c
            for c in found
            if c.res_type == "DiagnosticReport"
            and not (c.group or "").startswith("ImagingStudy/")
            and c.group not in grouped
        ]
        if reports:
            rows = await self.connection.fetch(_LISTED, [c.pk for c in reports], patients)
            group_of = {c.res_id: c.group for c in reports}
            found += [_candidate(r, group_of[r["report"]]) for r in rows]
        studies = sorted({c.group for c in found if c.res_type == "ImagingStudy" and c.group})
        if studies:
            rows = await self.connection.fetch(_STUDY_REPORTS, patients, studies)
            found += [_candidate(r, r["group_key"]) for r in rows]
        unique: dict[tuple[int, str, str, str | None], Candidate] = {}
        for candidate in found:
            key = (candidate.pk, candidate.system, candidate.code, candidate.site)
            if key not in unique or unique[key].group is None:
                unique[key] = candidate  # the same row twice: keep the one that knows its group
        return list(unique.values())

    async def contents(self, pks: Sequence[int]) -> dict[str, dict[str, Any]]:
        """Current JSON of results by ``Type/id``."""
        if not pks:
            return {}
        rows = await self.connection.fetch(_CONTENTS, list(pks))
        return {f"{r['res_type']}/{r['res_id']}": orjson.loads(r["content"]) for r in rows}

    # -- reminders and decisions --------------------------------------------------------------

    async def add_reminders(self, reminders: Sequence[Reminder], at: datetime) -> list[uuid.UUID]:
        """Insert reminders; one already shown for the same draft order, item and result is
        shown again (its id is returned in place of the new one)."""
        if not reminders:
            return []
        columns = [f.name for f in fields(Reminder)]
        values = [[getattr(r, c) for r in reminders] for c in columns]
        rows = await self.connection.fetch(
            f"INSERT INTO recognition_reminder (shown_at, {', '.join(columns)}) "
            "SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],"
            " $7::text[], $8::text[], $9::numeric[], $10::text[], $11::text[], $12::text[],"
            " $13::text[], $14::text[], $15::text[], $16::text[], $17::text[]) "
            "ON CONFLICT (organization, patient_id, order_ref, item_id, result_ref)"
            " WHERE order_ref IS NOT NULL DO UPDATE SET hook = excluded.hook,"
            " hook_instance = excluded.hook_instance "
            "RETURNING id, order_ref, item_id, result_ref",
            at,
            *values,
        )
        by_key = {(r["order_ref"], r["item_id"], r["result_ref"]): r["id"] for r in rows}
        return [
            by_key.get((r.order_ref, r.item_id, r.result_ref), r.id) if r.order_ref else r.id
            for r in reminders
        ]

    async def reminder(self, reminder_id: uuid.UUID) -> dict[str, Any] | None:
        row = await self.connection.fetchrow(
            "SELECT * FROM recognition_reminder WHERE id = $1", reminder_id
        )
        return dict(row) if row else None

    async def mark_viewed(self, reminder_id: uuid.UUID, at: datetime) -> bool:
        status = await self.connection.execute(
            "UPDATE recognition_reminder SET viewed_at = COALESCE(viewed_at, $2), "
            "views = views + 1 WHERE id = $1",
            reminder_id,
            at,
        )
        return status.endswith(" 1")

    async def add_decision(
        self,
        reminder_id: uuid.UUID,
        *,
        at: datetime,
        source: str,
        outcome: str,
        reason_code: str | None,
        reason_text: str | None,
        decided_by: str | None,
        client_id: str | None,
    ) -> int:
        return int(
            await self.connection.fetchval(
                "INSERT INTO recognition_decision (reminder_id, decided_at, source, outcome,"
                " reason_code, reason_text, decided_by, client_id)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                reminder_id,
                at,
                source,
                outcome,
                reason_code,
                reason_text,
                decided_by,
                client_id,
            )
        )

    async def decisions(self, reminder_id: uuid.UUID) -> list[dict[str, Any]]:
        rows = await self.connection.fetch(
            "SELECT id, decided_at, source, outcome, reason_code, reason_text, decided_by,"
            " client_id FROM recognition_decision WHERE reminder_id = $1 ORDER BY id",
            reminder_id,
        )
        return [dict(r) for r in rows]


def _json(value: Any) -> Any:
    """A jsonb column's value (text, or already decoded where the pool sets a codec)."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _candidate(row: asyncpg.Record, group: str | None) -> Candidate:
    """A row as a Candidate; a lab report with no order of its own is its own group."""
    if group is None and row["res_type"] == "DiagnosticReport":
        group = f"DiagnosticReport/{row['res_id']}"
    return Candidate(
        row["res_type"],
        row["res_id"],
        row["system"],
        row["code"],
        row["site"],
        row["effective"],
        row["status"],
        row["performer"],
        group,
        frozenset(row["flags"].split()),
        pk=row["pk"],
    )
