"""Storage access paths that the design promises, checked with PostgreSQL's own planner."""

from __future__ import annotations

import asyncio

import asyncpg

from hub.storage.database import libpq_url
from tests.conftest import HubUnderTest


def _plan(database_url: str, query: str, *args: object) -> str:
    async def explain() -> str:
        conn = await asyncpg.connect(libpq_url(database_url))
        try:
            await conn.execute("SET enable_seqscan = off")  # small test tables: force the choice
            rows = await conn.fetch(f"EXPLAIN {query}", *args)
            return "\n".join(r[0] for r in rows)
        finally:
            await conn.close()

    return asyncio.run(explain())


def test_current_version_is_one_unique_index_lookup(hub: HubUnderTest) -> None:
    plan = _plan(
        hub.database_url,
        "SELECT content FROM resource WHERE res_type = $1 AND res_id = $2",
        "Patient",
        "x",
    )
    assert "Index Scan using resource_type_id on resource" in plan
    assert plan.count("Scan") == 1


def test_token_search_uses_the_token_index(hub: HubUnderTest) -> None:
    plan = _plan(
        hub.database_url,
        "SELECT pk FROM idx_token WHERE res_type = $1 AND param = $2 AND code = $3 AND system = $4",
        "Observation",
        "code",
        "718-7",
        "http://loinc.org",
    )
    assert "idx_token_lookup" in plan
