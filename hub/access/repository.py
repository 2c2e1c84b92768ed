"""SQL for purposes of use: grants, consultations' scopes, care relationships, opt-outs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

# Each grant with its person's records. ``patient_group`` in FROM (not in an ARRAY(SELECT …)
# per row) is inlined by PostgreSQL into one plan for all grants: a doctor with 50 grants is
# one set of joins on patient_link, not 50 separate calls.
_LIVE = """
SELECT l.source, l.id, l.purpose, l.patient_id, l.items, l.period_start, l.period_end,
       l.expires_at, array_agg(DISTINCT m.id) AS ids
FROM (
    SELECT 'grant' AS source, g.id, g.purpose, g.patient_id, NULL::text[] AS items,
           NULL::timestamptz AS period_start, NULL::timestamptz AS period_end, g.expires_at
    FROM access_grant g
    WHERE g.client_id = $1 AND g.revoked_at IS NULL AND g.expires_at > now()
    UNION ALL
    SELECT 'consult', c.id, 'consult', c.patient_id, c.items, c.period_start, c.period_end,
           c.expires_at
    FROM consult c
    WHERE c.consultant = $1 AND c.revoked_at IS NULL AND c.expires_at > now()
) AS l
CROSS JOIN LATERAL patient_group(ARRAY[l.patient_id]) AS m(id)
GROUP BY l.source, l.id, l.purpose, l.patient_id, l.items, l.period_start, l.period_end,
         l.expires_at
"""

# The consult's own FHIR resources (request, consent, reply) are always within its scope.
_CONSULT_OWN = """
SELECT id, array_remove(ARRAY['ServiceRequest/' || service_request, 'Consent/' || consent,
       'DiagnosticReport/' || reply], NULL) AS own
FROM consult WHERE id = ANY($1::uuid[])
"""

_CONSENTS = """
SELECT DISTINCT r.res_id, r.content, x.target_id AS patient_id
FROM idx_reference x JOIN resource r ON r.pk = x.pk
WHERE x.res_type = 'Consent' AND x.param = 'patient' AND x.target_type = 'Patient'
  AND x.target_id = ANY($1::text[]) AND NOT r.deleted
"""

_IN_CARE = """
SELECT EXISTS (
    SELECT 1 FROM resource r
    WHERE r.res_type = 'Patient' AND NOT r.deleted AND r.owner_org = $2
      AND r.res_id IN (SELECT patient_group(ARRAY[$1]))
)
"""


@dataclass(frozen=True)
class LiveGrant:
    """A grant or consultation in force for a caller, with the person's record ids."""

    source: str  # "grant" or "consult"
    id: uuid.UUID
    purpose: str  # care, ordering, launch, break-glass, consult
    patient_id: str
    patients: tuple[str, ...]
    expires_at: datetime
    items: tuple[str, ...] | None = None
    period: tuple[datetime, datetime] | None = None
    own: tuple[str, ...] = ()


class AccessRepository:
    def __init__(self, connection: asyncpg.Connection):
        self.connection = connection

    async def live(self, client_id: str) -> list[LiveGrant]:
        rows = await self.connection.fetch(_LIVE, client_id)
        consults = [r["id"] for r in rows if r["source"] == "consult"]
        own: dict[uuid.UUID, tuple[str, ...]] = {}
        if consults:
            for r in await self.connection.fetch(_CONSULT_OWN, consults):
                own[r["id"]] = tuple(r["own"])
        return [
            LiveGrant(
                r["source"],
                r["id"],
                r["purpose"],
                r["patient_id"],
                tuple(r["ids"]),
                r["expires_at"],
                tuple(r["items"]) if r["items"] is not None else None,
                (r["period_start"], r["period_end"]) if r["period_start"] is not None else None,
                own.get(r["id"], ()),
            )
            for r in rows
        ]

    async def consents(self, patient_ids: list[str]) -> list[tuple[str, str, dict[str, Any]]]:
        """(Consent id, patient id, content) of every Consent about these records."""
        rows = await self.connection.fetch(_CONSENTS, patient_ids)
        return [(r["res_id"], r["patient_id"], orjson.loads(r["content"])) for r in rows]

    async def patient_exists(self, patient_id: str) -> bool:
        return bool(
            await self.connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM resource WHERE res_type = 'Patient' "
                "AND res_id = $1 AND NOT deleted)",
                patient_id,
            )
        )

    async def group(self, patient_id: str) -> list[str]:
        rows = await self.connection.fetch(
            "SELECT patient_group(ARRAY[$1::text]) AS id", patient_id
        )
        return [r["id"] for r in rows]

    async def in_care(self, patient_id: str, organization: str) -> bool:
        """Whether the person has a record at ``organization`` (registered there)."""
        return bool(await self.connection.fetchval(_IN_CARE, patient_id, organization))

    async def find_grant(
        self, client_id: str, patient_id: str, purpose: str, valid_until: datetime
    ) -> LiveGrant | None:
        """A grant of this purpose for this exact record that lasts at least until then."""
        row = await self.connection.fetchrow(
            "SELECT id, expires_at FROM access_grant WHERE client_id = $1 AND patient_id = $2 "
            "AND purpose = $3 AND revoked_at IS NULL AND expires_at >= $4 "
            "ORDER BY expires_at DESC LIMIT 1",
            client_id,
            patient_id,
            purpose,
            valid_until,
        )
        if row is None:
            return None
        return LiveGrant("grant", row["id"], purpose, patient_id, (), row["expires_at"])

    async def add_grant(
        self,
        client_id: str,
        organization: str,
        patient_id: str,
        purpose: str,
        reason: str | None,
        source: str,
        expires_at: datetime,
    ) -> uuid.UUID:
        grant_id = uuid.uuid4()
        await self.connection.execute(
            "INSERT INTO access_grant (id, client_id, organization, patient_id, purpose, reason,"
            " source, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            grant_id,
            client_id,
            organization,
            patient_id,
            purpose,
            reason,
            source,
            expires_at,
        )
        return grant_id

    async def revoke_grant(self, grant_id: uuid.UUID, client_id: str) -> bool:
        status = await self.connection.execute(
            "UPDATE access_grant SET revoked_at = now() WHERE id = $1 AND client_id = $2 "
            "AND revoked_at IS NULL",
            grant_id,
            client_id,
        )
        return status.endswith(" 1")

    async def break_glass_uses(self, since: datetime | None, limit: int) -> list[dict[str, Any]]:
        """Break-glass grants, newest first (the operator's report)."""
        rows = await self.connection.fetch(
            "SELECT id, client_id, organization, patient_id, reason, source, created_at, "
            "expires_at, revoked_at FROM access_grant WHERE purpose = 'break-glass' "
            "AND ($1::timestamptz IS NULL OR created_at >= $1) ORDER BY created_at DESC LIMIT $2",
            since,
            limit,
        )
        return [dict(r) for r in rows]

    async def grants_of_person(self, patient_id: str, limit: int = 500) -> list[dict[str, Any]]:
        """Every grant ever given on this person's record (any of their ids), newest first."""
        rows = await self.connection.fetch(
            "SELECT id, client_id, organization, patient_id, purpose, reason, source, "
            "created_at, expires_at, revoked_at FROM access_grant "
            "WHERE patient_id IN (SELECT patient_group(ARRAY[$1::text])) "
            "ORDER BY created_at DESC LIMIT $2",
            patient_id,
            limit,
        )
        return [dict(r) for r in rows]

    async def access_log(self, patient_ids: list[str], limit: int) -> list[dict[str, Any]]:
        """Audit records naming any of these records, newest first: who, what, when, why."""
        rows = await self.connection.fetch(
            "SELECT recorded, client_id, client_kind, organization, interaction, action, "
            "status, entities, detail, source_ip FROM audit_log WHERE patients && $1::text[] "
            "ORDER BY recorded DESC LIMIT $2",
            [f"Patient/{i}" for i in patient_ids],
            limit,
        )
        return [dict(r) for r in rows]
