"""The database engine: one SQLAlchemy async engine (asyncpg driver) per process.

SQLAlchemy owns the connection pool, the schema migrations (Alembic) and administrative
queries. The FHIR store's hot paths send hand-written, parameterised SQL on the pooled
asyncpg connection itself: measured, SQLAlchemy's per-statement overhead would cost more
than the database work of a typical FHIR read.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from hub.settings import Settings
from hub.storage.embedded import start_embedded


def resolve_database_url(settings: Settings) -> str:
    """The configured PostgreSQL URL, starting the embedded server when none is configured."""
    if settings.database_url:
        return settings.database_url
    return start_embedded(settings.data_dir)


def sqlalchemy_url(url: str, driver: str = "asyncpg") -> str:
    """Turn a libpq-style URL into SQLAlchemy's ``postgresql+DRIVER://`` form."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme in ("postgres", "postgresql"):
        scheme = f"postgresql+{driver}"
    return urlunsplit((scheme, *parts[1:]))


def libpq_url(url: str) -> str:
    """Strip any SQLAlchemy driver suffix, for asyncpg or psql."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql", *parts[1:]))


@dataclass
class Database:
    """A process's handle on PostgreSQL."""

    url: str
    engine: AsyncEngine
    # Connections for the reuse check's hot path: prepared statements always use a generic
    # plan (PostgreSQL would otherwise re-plan fixed-shape lookups for every set of values),
    # and commits are asynchronous (the only writes here are reminders and views, operational
    # records: a crash may lose the last fraction of a second of them, never clinical data,
    # and a request does not wait for a WAL flush).
    generic_engine: AsyncEngine | None = None

    @classmethod
    def connect(cls, settings: Settings) -> Database:
        url = resolve_database_url(settings)

        def engine(pool_size: int, **settings_extra: str) -> AsyncEngine:
            return create_async_engine(
                sqlalchemy_url(url),
                pool_size=pool_size,
                max_overflow=settings.db_pool_overflow,
                pool_pre_ping=False,
                # Every unit of work ends in an explicit COMMIT or ROLLBACK, so the pool's own
                # reset-on-return ROLLBACK would only add a round trip per request.
                pool_reset_on_return=None,
                connect_args={
                    "server_settings": {
                        "application_name": "yijian-hub",
                        # No request may hold a core for long: a runaway query is cancelled.
                        "statement_timeout": str(settings.db_statement_timeout_ms),
                        **settings_extra,
                    }
                },
            )

        return cls(
            url=url,
            engine=engine(settings.db_pool_size),
            generic_engine=engine(
                max(2, settings.db_pool_size // 2),
                plan_cache_mode="force_generic_plan",
                synchronous_commit="off",
            ),
        )

    @contextlib.asynccontextmanager
    async def connection(self, *, generic_plans: bool = False) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, as the asyncpg driver connection.

        Taken from the pool as a raw connection: a quarter of the CPU of a full
        ``AsyncConnection`` checkout, which the FHIR store's statements do not need.
        ``generic_plans``: from the reuse check's pool (generic plans, asynchronous commit;
        see above): never for clinical writes.
        """
        engine = self.generic_engine if generic_plans and self.generic_engine else self.engine
        pooled = await engine.raw_connection()
        try:
            yield pooled.driver_connection
        finally:
            pooled.close()  # back to the pool

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.generic_engine is not None:
            await self.generic_engine.dispose()


async def driver_connection(conn: AsyncConnection) -> asyncpg.Connection:
    raw = await conn.get_raw_connection()
    return raw.driver_connection
