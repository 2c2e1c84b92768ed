"""The audit log, read as FHIR AuditEvent resources (read and search, for admins).

The hub's own audit records live in ``audit_log`` (hash-chained, see ``audit``), not in the
resource store, so that auditing a read never writes a FHIR resource. This module renders
them as AuditEvents and answers the AuditEvent search parameters that map onto its columns.
"""

from __future__ import annotations

import base64
from typing import Any

import asyncpg
import orjson

from hub.fhir.capability import AUDIT_SEARCH_PARAMS
from hub.fhir.datetimes import instant
from hub.fhir.outcomes import bad_request
from hub.fhir.search import Criterion, Cursor, RangeValue, ReferenceValue, SearchRequest, TokenValue
from hub.storage.resources import Page, StoredResource
from hub.storage.search_sql import Sql, range_condition

CLIENT_SYSTEM = "https://yijian.example/fhir/NamingSystem/api-client"
INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
SUPPORTED = AUDIT_SEARCH_PARAMS  # the search parameters this view answers


def audit_event_id(chain_id: str, seq: int) -> str:
    return f"{chain_id}.{seq}"


def render(row: asyncpg.Record) -> dict[str, Any]:
    """One audit row as an R4 AuditEvent."""
    recorded = instant(row["recorded"])
    agents: list[dict[str, Any]] = [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://dicom.nema.org/resources/ontology/DCM",
                        "code": "110153",
                        "display": "Source Role ID",
                    }
                ]
            },
            "who": {
                "identifier": {"system": CLIENT_SYSTEM, "value": row["client_id"] or "-"},
                "display": f"{row['client_kind'] or 'anonymous'} client",
            },
            "altId": row["client_id"],
            "requestor": True,
            "network": {"address": row["source_ip"] or "unknown", "type": "2"},
        }
    ]
    if row["organization"]:
        agents.append(
            {"who": {"reference": f"Organization/{row['organization']}"}, "requestor": False}
        )
    entities: list[dict[str, Any]] = [
        {
            "what": {"reference": p},
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            },
        }
        for p in row["patients"]
    ]
    entities += [{"what": {"reference": e}} for e in row["entities"]]
    if row["query"]:
        entities.append({"query": base64.b64encode(row["query"].encode()).decode()})
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": audit_event_id(row["chain_id"], row["seq"]),
        "meta": {"versionId": "1", "lastUpdated": recorded},
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{"system": INTERACTION_SYSTEM, "code": row["interaction"]}],
        "action": row["action"],
        "recorded": recorded,
        "outcome": row["outcome"],
        "agent": agents,
        "source": {
            "observer": {"display": "Yijian Hub"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
    }
    if row["detail"]:
        event["outcomeDesc"] = row["detail"]
    if row["request_id"]:
        event["extension"] = [
            {
                "url": "https://yijian.example/fhir/StructureDefinition/request-id",
                "valueString": row["request_id"],
            }
        ]
    if entities:
        event["entity"] = entities
    return event


def _stored(row: asyncpg.Record) -> StoredResource:
    content = orjson.dumps(render(row)).decode()
    return StoredResource(
        row["seq"],
        "AuditEvent",
        audit_event_id(row["chain_id"], row["seq"]),
        1,
        row["recorded"],
        content,
    )


class AuditEventView:
    """Read and search over ``audit_log``, newest first, keyset-paged."""

    def __init__(self, connection: asyncpg.Connection):
        self.connection = connection

    async def read(self, event_id: str) -> StoredResource | None:
        chain_id, _, seq = event_id.rpartition(".")
        if not chain_id or not seq.isdigit():
            return None
        row = await self.connection.fetchrow(
            "SELECT * FROM audit_log WHERE chain_id = $1 AND seq = $2", chain_id, int(seq)
        )
        return _stored(row) if row else None

    async def search(self, request: SearchRequest) -> Page:
        sql = Sql()
        where = [self._criterion(sql, c) for c in request.criteria] or ["TRUE"]
        if request.sort:
            raise bad_request("AuditEvent results are always newest first; _sort is not supported")
        if request.cursor is not None:
            recorded, chain_id = request.cursor.values
            position = (
                f"CAST({sql.add(str(recorded))}::text AS timestamptz), "
                f"{sql.add(str(chain_id))}, {sql.add(request.cursor.pk)}::bigint"
            )
            where.append(f"(recorded, chain_id, seq) < ({position})")
        query = (
            f"SELECT * FROM audit_log WHERE {' AND '.join(where)} "
            f"ORDER BY recorded DESC, chain_id DESC, seq DESC LIMIT {sql.add(request.count + 1)}"
        )
        rows = await self.connection.fetch(query, *sql.params)
        more = len(rows) > request.count
        rows = rows[: request.count]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = Cursor(
                False, [last["recorded"].isoformat(), last["chain_id"]], last["seq"]
            )
        return Page([_stored(r) for r in rows], next_cursor, None)

    async def count(self, request: SearchRequest) -> int:
        sql = Sql()
        where = [self._criterion(sql, c) for c in request.criteria] or ["TRUE"]
        query = f"SELECT count(*) FROM audit_log WHERE {' AND '.join(where)}"
        return int(await self.connection.fetchval(query, *sql.params))

    def _criterion(self, sql: Sql, criterion: Criterion) -> str:
        code = criterion.param.code
        if code not in SUPPORTED or criterion.chain is not None or criterion.modifier:
            raise bad_request(
                f"AuditEvent search supports {', '.join(sorted(SUPPORTED))} "
                "without modifiers or chains",
                code="not-supported",
            )
        parts = [self._value(sql, code, v) for v in criterion.values]
        return "(" + " OR ".join(parts) + ")"

    def _value(self, sql: Sql, code: str, value: Any) -> str:
        if code == "date":
            assert isinstance(value, RangeValue)
            return range_condition(sql, value, "recorded", "(recorded + interval '1 microsecond')")
        if code == "_id":
            assert isinstance(value, TokenValue)
            chain_id, _, seq = (value.code or "").rpartition(".")
            if not seq.isdigit():
                return "FALSE"
            return f"(chain_id = {sql.add(chain_id)} AND seq = {sql.add(int(seq))}::bigint)"
        if code in ("patient", "entity"):
            assert isinstance(value, ReferenceValue)
            if value.resource_id is None:
                return "FALSE"
            kind = value.resource_type or ("Patient" if code == "patient" else None)
            if code == "patient":
                return f"{sql.add(f'{kind}/{value.resource_id}')} = ANY(patients)"
            target = f"{kind}/{value.resource_id}" if kind else f"%/{value.resource_id}"
            pattern = target.replace("_", "\\_") + "/_history/%"
            return f"EXISTS (SELECT 1 FROM unnest(entities) e WHERE e LIKE {sql.add(pattern)})"
        if code == "agent":
            assert isinstance(value, ReferenceValue)
            if value.resource_type == "Organization":
                return f"organization = {sql.add(value.resource_id)}"
            return f"client_id = {sql.add(value.resource_id)}"
        column = {
            "altid": "client_id",
            "action": "action",
            "outcome": "outcome",
            "subtype": "interaction",
            "address": "source_ip",
        }[code]
        text = value.code if isinstance(value, TokenValue) else str(value)
        return f"{column} = {sql.add(text)}"
