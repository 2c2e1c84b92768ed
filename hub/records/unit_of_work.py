"""A unit of work: one connection, one transaction, the repositories on it, and what the
transaction touched (for referential-integrity checks at commit and for the audit record)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg

from hub.fhir.outcomes import FhirError
from hub.storage.database import Database
from hub.storage.resources import ResourceRepository


@dataclass
class UnitOfWork:
    connection: asyncpg.Connection
    resources: ResourceRepository
    references: set[tuple[str, str]] = field(default_factory=set)
    entities: list[str] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)

    async def check_references(self) -> None:
        """Every local reference written in this transaction must name an existing resource."""
        missing = await self.resources.missing_references(self.references)
        if missing:
            listed = ", ".join(sorted(f"{t}/{i}" for t, i in missing)[:10])
            raise FhirError(422, "not-found", f"references to unknown resources: {listed}")


@contextlib.asynccontextmanager
async def unit_of_work(database: Database, *, write: bool) -> AsyncIterator[UnitOfWork]:
    """Commit on success (after the reference check), roll back on any exception.

    A value PostgreSQL refuses as data (a NUL character in a string, a number out of range)
    came from the request, so it is answered 400, not 500.
    """
    try:
        async with database.connection() as connection:
            if not write:
                yield UnitOfWork(connection, ResourceRepository(connection))
                return
            transaction = connection.transaction()
            await transaction.start()
            uow = UnitOfWork(connection, ResourceRepository(connection))
            try:
                yield uow
                await uow.check_references()
            except BaseException:
                await transaction.rollback()
                raise
            await transaction.commit()
    except asyncpg.DataError as error:
        raise FhirError(
            400,
            "invalid",
            "the request contains a value that cannot be stored or searched "
            f"(such as a NUL character or an out-of-range number): {type(error).__name__}",
        ) from None
