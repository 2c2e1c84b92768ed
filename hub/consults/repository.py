"""SQL for consultations and for finding the people they name."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

_COLUMNS = (
    "id, patient_id, requester, requester_name, requester_org, consultant, consultant_name, "
    "consultant_org, question, period_start, period_end, items, service_request, consent, "
    "created_at, expires_at, revoked_at, revoked_by, reply, replied_at"
)


@dataclass(frozen=True)
class Consult:
    id: uuid.UUID
    patient_id: str
    requester: str
    requester_name: str
    requester_org: str
    consultant: str
    consultant_name: str
    consultant_org: str
    question: str
    period_start: datetime | None
    period_end: datetime | None
    items: list[str] | None
    service_request: str
    consent: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None
    reply: str | None
    replied_at: datetime | None

    @property
    def status(self) -> str:
        """active, revoked or expired (a reply does not end the grant)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= datetime.now(UTC):
            return "expired"
        return "active"

    def json(self) -> dict[str, Any]:
        def instant(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "id": str(self.id),
            "status": self.status,
            "patient": f"Patient/{self.patient_id}",
            "requester": {
                "id": self.requester,
                "name": self.requester_name,
                "organization": self.requester_org,
            },
            "consultant": {
                "id": self.consultant,
                "name": self.consultant_name,
                "organization": self.consultant_org,
            },
            "question": self.question,
            "scope": (
                {"period": {"start": instant(self.period_start), "end": instant(self.period_end)}}
                if self.period_start
                else {"items": self.items or []}
            ),
            "serviceRequest": f"ServiceRequest/{self.service_request}",
            "consent": f"Consent/{self.consent}",
            "opened": instant(self.created_at),
            "expires": instant(self.expires_at),
            "revoked": instant(self.revoked_at),
            "reply": f"DiagnosticReport/{self.reply}" if self.reply else None,
            "replied": instant(self.replied_at),
        }


@dataclass(frozen=True)
class Person:
    """Someone a consult can name: a workstation user or an API client."""

    id: str  # client id: user:<username> or the API client id
    name: str
    kind: str
    organization: str
    organization_name: str = ""


_ORG_NAME = (
    "(SELECT o.content::jsonb ->> 'name' FROM resource o WHERE o.res_type = 'Organization' "
    "AND o.res_id = {column} AND NOT o.deleted)"
)


def _consult(row: asyncpg.Record) -> Consult:
    values = dict(row)
    values["items"] = list(values["items"]) if values["items"] is not None else None
    return Consult(**values)


class ConsultRepository:
    def __init__(self, connection: asyncpg.Connection):
        self.connection = connection

    async def person(self, client_id: str) -> Person | None:
        if client_id.startswith("user:"):
            row = await self.connection.fetchrow(
                "SELECT display_name AS name, role AS kind, organization FROM web_user "
                "WHERE username = $1 AND active",
                client_id.removeprefix("user:"),
            )
        else:
            row = await self.connection.fetchrow(
                "SELECT name, kind, organization FROM api_client "
                "WHERE client_id = $1 AND revoked_at IS NULL",
                client_id,
            )
        return Person(client_id, row["name"], row["kind"], row["organization"]) if row else None

    async def consultants(self) -> list[Person]:
        """Every active consultant (users and API clients), for choosing one."""
        org_name = _ORG_NAME.format(column="p.organization")
        rows = await self.connection.fetch(
            f"SELECT p.*, {org_name} AS organization_name FROM ("
            "SELECT 'user:' || username AS id, display_name AS name, organization FROM web_user "
            "WHERE role = 'consultant' AND active UNION ALL SELECT client_id, name, organization "
            "FROM api_client WHERE kind = 'consultant' AND revoked_at IS NULL) p ORDER BY 2"
        )
        return [
            Person(
                r["id"], r["name"], "consultant", r["organization"], r["organization_name"] or ""
            )
            for r in rows
        ]

    async def add(self, consult: Consult) -> None:
        await self.connection.execute(
            f"INSERT INTO consult ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, "
            "$11, $12, $13, $14, $15, $16, $17, $18, $19, $20)",
            *[getattr(consult, f.strip()) for f in _COLUMNS.split(",")],
        )

    async def get(self, consult_id: uuid.UUID) -> Consult | None:
        row = await self.connection.fetchrow(
            f"SELECT {_COLUMNS} FROM consult WHERE id = $1", consult_id
        )
        return _consult(row) if row else None

    async def involving(self, client_id: str, limit: int = 200) -> list[Consult]:
        """Consultations the caller requested or was asked for, newest first."""
        rows = await self.connection.fetch(
            f"SELECT {_COLUMNS} FROM consult WHERE requester = $1 OR consultant = $1 "
            "ORDER BY created_at DESC LIMIT $2",
            client_id,
            limit,
        )
        return [_consult(r) for r in rows]

    async def revoke(self, consult_id: uuid.UUID, by: str) -> bool:
        status = await self.connection.execute(
            "UPDATE consult SET revoked_at = now(), revoked_by = $2 WHERE id = $1 "
            "AND revoked_at IS NULL",
            consult_id,
            by,
        )
        return status.endswith(" 1")

    async def set_reply(self, consult_id: uuid.UUID, report_id: str) -> None:
        await self.connection.execute(
            "UPDATE consult SET reply = $2, replied_at = now() WHERE id = $1",
            consult_id,
            report_id,
        )

    async def lapsed_active_consents(self) -> list[tuple[uuid.UUID, str, str]]:
        """(consult, Consent id, requester org) of ended consults whose Consent is still
        active (expiry is enforced by time; the Consent's status catches up)."""
        rows = await self.connection.fetch(
            "SELECT c.id, c.consent, c.requester_org FROM consult c JOIN resource r "
            "ON r.res_type = 'Consent' AND r.res_id = c.consent "
            "WHERE (c.revoked_at IS NOT NULL OR c.expires_at <= now()) "
            "AND r.content::jsonb ->> 'status' = 'active' LIMIT 500"
        )
        return [(r["id"], r["consent"], r["requester_org"]) for r in rows]

    async def related(self, keys: list[str], patient_ids: list[str]) -> list[str]:
        """What a shared result brings with it: a report's listed results and studies, and the
        reports of a shared study (only records of this person)."""
        rows = await self.connection.fetch(
            """
            SELECT e.ref ->> 'reference' AS key
            FROM resource r CROSS JOIN LATERAL jsonb_array_elements(
                COALESCE(r.content::jsonb -> 'result', '[]'::jsonb)
                || COALESCE(r.content::jsonb -> 'imagingStudy', '[]'::jsonb)) AS e(ref)
            WHERE r.res_type = 'DiagnosticReport' AND NOT r.deleted
              AND ('DiagnosticReport/' || r.res_id) = ANY($1::text[])
            UNION
            SELECT 'DiagnosticReport/' || r.res_id
            FROM idx_result x JOIN resource r ON r.pk = x.pk
            WHERE x.res_type = 'DiagnosticReport' AND x.group_key = ANY($1::text[])
              AND x.patient_id = ANY($2::text[]) AND NOT r.deleted
            """,
            keys,
            patient_ids,
        )
        return [r["key"] for r in rows if r["key"]]
