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


def test_patient_group_reads_links_by_index_not_by_scan(hub: HubUnderTest) -> None:
    """Expanding a patient to the person is index lookups on patient_link at any size."""
    plan = _plan(hub.database_url, "SELECT * FROM patient_group(ARRAY['x']::text[])")
    inlined = _plan(
        hub.database_url,
        "SELECT x.pk FROM idx_reference x WHERE x.target_id IN "
        "(SELECT patient_group(ARRAY['x']::text[]))",
    )
    assert "Seq Scan on patient_link" not in plan + inlined


def test_a_runaway_statement_is_cancelled_and_answered_503(hub: HubUnderTest) -> None:
    from hub.fhir.outcomes import FhirError
    from hub.records.unit_of_work import unit_of_work
    from hub.settings import load_settings
    from hub.storage.database import Database

    async def run() -> FhirError:
        settings = load_settings(database_url=hub.database_url, db_statement_timeout_ms=50)
        database = Database.connect(settings)
        try:
            async with unit_of_work(database, transaction=False) as uow:
                await uow.connection.execute("SELECT pg_sleep(2)")
        except FhirError as error:
            return error
        finally:
            await database.dispose()
        raise AssertionError("the statement was not cancelled")

    error = asyncio.run(run())
    assert error.status == 503
    assert error.code == "too-costly"
