"""The registry of API clients (OAuth 2.0 client credentials)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from hub.security import client_secrets, scopes
from hub.security.policy import RULES
from hub.security.principals import ClientKind, Principal


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    name: str
    kind: ClientKind
    organization: str
    scopes: frozenset[str]
    created_at: datetime
    revoked_at: datetime | None

    def principal(self, granted: frozenset[str] | None = None) -> Principal:
        return Principal(
            self.client_id,
            self.name,
            self.kind,
            self.organization,
            granted if granted is not None else self.scopes,
        )


class UnknownOrganization(ValueError):
    """A client must act for a registered Organization."""


class ClientRegistry:
    """API clients in PostgreSQL. Secrets are returned once, at creation, and stored hashed."""

    def __init__(self, connection: asyncpg.Connection):
        self.connection = connection

    async def organization_exists(self, organization: str) -> bool:
        """Whether Organization/``organization`` is registered (and not deleted)."""
        return bool(
            await self.connection.fetchval(
                "SELECT 1 FROM resource WHERE res_type = 'Organization' AND res_id = $1 "
                "AND NOT deleted",
                organization,
            )
        )

    async def add(
        self, kind: ClientKind, organization: str, name: str, scope: str | None = None
    ) -> tuple[ClientRecord, str]:
        if not await self.organization_exists(organization):
            raise UnknownOrganization(f"Organization/{organization} is not registered")
        granted = scopes.parse(scope or RULES[kind].default_scopes)
        invalid = [s for s in granted if not scopes.is_valid(s)]
        if invalid:
            raise ValueError(f"not a SMART scope: {', '.join(invalid)}")
        client_id = f"{kind.value}-{secrets.token_hex(8)}"
        secret = client_secrets.new_secret()
        row = await self.connection.fetchrow(
            "INSERT INTO api_client (client_id, name, kind, organization, scopes, secret_hash) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
            client_id,
            name,
            kind.value,
            organization,
            " ".join(sorted(granted)),
            client_secrets.hash_secret(secret),
        )
        record = ClientRecord(client_id, name, kind, organization, granted, row["created_at"], None)
        return record, secret

    async def reset_secret(self, client_id: str) -> str:
        secret = client_secrets.new_secret()
        await self.connection.execute(
            "UPDATE api_client SET secret_hash = $2 WHERE client_id = $1",
            client_id,
            client_secrets.hash_secret(secret),
        )
        return secret

    async def get(self, client_id: str) -> tuple[ClientRecord, str] | None:
        row = await self.connection.fetchrow(
            "SELECT * FROM api_client WHERE client_id = $1", client_id
        )
        return (_record(row), row["secret_hash"]) if row else None

    async def list(self) -> list[ClientRecord]:
        rows = await self.connection.fetch("SELECT * FROM api_client ORDER BY created_at")
        return [_record(r) for r in rows]

    async def revoke(self, client_id: str) -> bool:
        status = await self.connection.execute(
            "UPDATE api_client SET revoked_at = now() WHERE client_id = $1 AND revoked_at IS NULL",
            client_id,
        )
        return status.endswith(" 1")

    async def revoked_ids(self) -> set[str]:
        rows = await self.connection.fetch(
            "SELECT client_id FROM api_client WHERE revoked_at IS NOT NULL"
        )
        return {r["client_id"] for r in rows}


def _record(row: asyncpg.Record) -> ClientRecord:
    return ClientRecord(
        row["client_id"],
        row["name"],
        ClientKind(row["kind"]),
        row["organization"],
        scopes.parse(row["scopes"]),
        row["created_at"],
        row["revoked_at"],
    )
