"""A unit of work: one connection, the repositories on it, and what the work touched (for
referential-integrity checks and for the audit record).

Work that must be atomic across statements (transactions, conditional writes) runs in a
database transaction, and references written in it are checked at commit, so entries may refer
to resources created later in the same Bundle. A plain create, update or delete needs no
transaction: its write is a single statement, made safe against concurrent writers by an
optimistic version check, which saves the BEGIN and COMMIT round trips.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from hub.fhir.outcomes import FhirError
from hub.storage.database import Database
from hub.storage.resources import ResourceRepository


@dataclass(frozen=True)
class PendingWrite:
    """A version whose statement is queued to be sent with others (``UnitOfWork.flush``)."""

    statement: tuple[str, list[Any]]
    resource_type: str
    resource_id: str
    replace: bool


@dataclass
class UnitOfWork:
    connection: asyncpg.Connection
    resources: ResourceRepository
    in_transaction: bool = False
    references: set[tuple[str, str]] = field(default_factory=set)
    entities: list[str] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)
    # Within a transaction Bundle: writes whose result nothing in the Bundle reads are queued
    # here and sent pipelined by ``flush`` (None: every write is sent at once).
    pending: list[PendingWrite] | None = None
    # The caller's purposes of use (``hub.access.service.Access``), looked up once per unit.
    access: Any = None

    async def flush(self) -> None:
        """Send the queued writes in one pipeline; any that did not apply fails the work."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        results = await self.resources.write_many([p.statement for p in pending])
        for write, result in zip(pending, results, strict=True):
            if result.missing:
                raise unknown_references(result.missing)
            if result.pk is None and write.replace:
                raise FhirError(
                    503,
                    "transient",
                    f"{write.resource_type}/{write.resource_id} was changed by another request"
                    " meanwhile; nothing was stored: retry",
                    headers={"Retry-After": "1"},
                )
            if result.pk is None:
                raise FhirError(
                    409, "duplicate", f"{write.resource_type}/{write.resource_id} already exists"
                )

    async def check_references(self) -> None:
        """Every local reference written in this transaction must name an existing resource."""
        await self.flush()
        missing = await self.resources.missing_references(self.references)
        if missing:
            raise unknown_references(sorted(f"{t}/{i}" for t, i in missing))


def unknown_references(references: list[str]) -> FhirError:
    listed = ", ".join(references[:10])
    return FhirError(422, "not-found", f"references to unknown resources: {listed}")


class WorkRecorder(Protocol):
    """Something that records what units of work touched (the request's audit scope)."""

    def capture(self, uow: UnitOfWork) -> None: ...


@contextlib.asynccontextmanager
async def unit_of_work(database: Database, *, transaction: bool) -> AsyncIterator[UnitOfWork]:
    """With ``transaction``, commit on success (after the reference check) and roll back on
    any exception; without, every statement stands on its own.

    A value PostgreSQL refuses as data (a NUL character in a string, a number out of range)
    came from the request, so it is answered 400, not 500.
    """
    try:
        async with database.connection() as connection:
            if not transaction:
                yield UnitOfWork(connection, ResourceRepository(connection))
                return
            database_transaction = connection.transaction()
            await database_transaction.start()
            uow = UnitOfWork(connection, ResourceRepository(connection), in_transaction=True)
            try:
                yield uow
                await uow.check_references()
            except BaseException:
                await database_transaction.rollback()
                raise
            await database_transaction.commit()
    except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as error:
        # Two writers about the same people at once; PostgreSQL undid one of them whole.
        raise FhirError(
            503,
            "transient",
            f"a concurrent change to the same records interfered ({type(error).__name__}); "
            "nothing was stored: retry",
            headers={"Retry-After": "1"},
        ) from None
    except asyncpg.QueryCanceledError:
        raise FhirError(
            503,
            "too-costly",
            "the request took longer than the database allows (YIJIAN_DB_STATEMENT_TIMEOUT_MS); "
            "narrow the search",
        ) from None
    except asyncpg.DataError as error:
        raise FhirError(
            400,
            "invalid",
            "the request contains a value that cannot be stored or searched "
            f"(such as a NUL character or an out-of-range number): {type(error).__name__}",
        ) from None
