"""The resource repository: FHIR resources, their versions and search indexes in PostgreSQL.

The service layer talks to this class only; it holds no FHIR REST semantics (those live in
``hub.fhir`` and ``hub.records``) and no authorization rules (it applies an ``AccessFilter``
it is given). All methods run on the unit of work's connection and transaction.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from hub.fhir.indexing import IndexRows
from hub.fhir.search import Cursor, SearchRequest
from hub.storage.search_sql import RESOURCE_COLUMNS, AccessFilter, SearchCompiler, SortColumn, Sql


@dataclass(frozen=True)
class StoredResource:
    """One stored version of a resource: the current one, or one from its history."""

    pk: int
    resource_type: str
    resource_id: str
    version_id: int
    last_updated: datetime
    content: str | None
    deleted: bool = False
    owner_org: str | None = None
    method: str | None = None


@dataclass(frozen=True)
class WriteContext:
    """Who writes a version, recorded on the version row itself."""

    client_id: str | None
    organization: str | None
    request_id: str | None


@dataclass(frozen=True)
class WriteResult:
    """The pk written, or None: a missing required reference, or a concurrent writer won."""

    pk: int | None
    missing: list[str]


@dataclass
class Page:
    """A page of search results with the keyset positions of its neighbours."""

    rows: list[StoredResource]
    next_cursor: Cursor | None
    previous_cursor: Cursor | None


_INDEX_INSERTS = """
 i_token AS (INSERT INTO idx_token (pk, res_type, param, system, code, display)
   SELECT w.pk, $1, u.p, u.s, u.c, u.d FROM w,
   unnest($11::text[], $12::text[], $13::text[], $14::text[]) AS u(p, s, c, d)),
 i_string AS (INSERT INTO idx_string (pk, res_type, param, value_norm, value)
   SELECT w.pk, $1, u.p, u.n, u.v FROM w,
   unnest($15::text[], $16::text[], $17::text[]) AS u(p, n, v)),
 i_date AS (INSERT INTO idx_date (pk, res_type, param, low, high)
   SELECT w.pk, $1, u.p, u.l, u.h FROM w,
   unnest($18::text[], $19::timestamptz[], $20::timestamptz[]) AS u(p, l, h)),
 i_reference AS (INSERT INTO idx_reference (pk, res_type, param, target_type, target_id, url)
   SELECT w.pk, $1, u.p, u.t, u.i, u.r FROM w,
   unnest($21::text[], $22::text[], $23::text[], $24::text[]) AS u(p, t, i, r)),
 i_quantity AS (INSERT INTO idx_quantity (pk, res_type, param, value, system, code)
   SELECT w.pk, $1, u.p, u.v, u.s, u.c FROM w,
   unnest($25::text[], $26::numeric[], $27::text[], $28::text[]) AS u(p, v, s, c)),
 i_uri AS (INSERT INTO idx_uri (pk, res_type, param, uri)
   SELECT w.pk, $1, u.p, u.u FROM w, unnest($29::text[], $30::text[]) AS u(p, u)),
 i_result AS (INSERT INTO idx_result (pk, res_type, patient_id, system, code, site, effective,
        status, performer, group_key, flags)
   SELECT w.pk, $1, u.a, u.s, u.c, u.b, u.e, u.t, u.o, u.g, u.f FROM w,
   unnest($31::text[], $32::text[], $33::text[], $34::text[], $35::timestamptz[], $36::text[],
          $37::text[], $38::text[], $39::text[]) AS u(a, s, c, b, e, t, o, g, f))
"""

_VERSION_INSERT = """
 v AS (INSERT INTO resource_version (pk, version_id, res_type, res_id, last_updated, method,
        deleted, author_client, author_org, request_id, content)
   SELECT w.pk, $3, $1, $2, $4, $7, $40, $8, $9, $10, $6 FROM w)
"""

_INDEX_DELETES = """
 d_token AS (DELETE FROM idx_token WHERE pk IN (SELECT pk FROM w)),
 d_string AS (DELETE FROM idx_string WHERE pk IN (SELECT pk FROM w)),
 d_date AS (DELETE FROM idx_date WHERE pk IN (SELECT pk FROM w)),
 d_reference AS (DELETE FROM idx_reference WHERE pk IN (SELECT pk FROM w)),
 d_quantity AS (DELETE FROM idx_quantity WHERE pk IN (SELECT pk FROM w)),
 d_uri AS (DELETE FROM idx_uri WHERE pk IN (SELECT pk FROM w)),
 d_result AS (DELETE FROM idx_result WHERE pk IN (SELECT pk FROM w))
"""

# $1 type, $2 id, $3 version, $4 last_updated, $5 owner, $6 content, $7 method, $8 client,
# $9 org, $10 request id, $11..$39 index arrays, $40 deleted, $41/$42 types/ids of the local
# references that must exist; for updates $43 the owner the row must have (or NULL) and $44
# whether a deleted row must not be revived.
# Nothing is written when a required reference is missing (the statement returns which), nor,
# for an update, unless the stored version is still the one before $3 (optimistic concurrency).
_MISSING = """
 missing AS (SELECT u.t || '/' || u.i AS ref FROM unnest($41::text[], $42::text[]) AS u(t, i)
   WHERE NOT EXISTS (SELECT 1 FROM resource x
                     WHERE x.res_type = u.t AND x.res_id = u.i AND NOT x.deleted))
"""
_RESULT = "SELECT (SELECT pk FROM w) AS pk, ARRAY(SELECT ref FROM missing) AS missing"

CREATE_SQL = f"""
WITH {_MISSING},
 w AS (INSERT INTO resource
   (res_type, res_id, version_id, last_updated, deleted, owner_org, content)
   SELECT $1, $2, $3, $4, $40, $5, $6 WHERE NOT EXISTS (SELECT 1 FROM missing)
   ON CONFLICT (res_type, res_id) DO NOTHING RETURNING pk),
{_VERSION_INSERT}, {_INDEX_INSERTS}
{_RESULT}
"""

UPDATE_SQL = f"""
WITH {_MISSING},
 w AS (UPDATE resource SET version_id = $3, last_updated = $4, deleted = $40,
   owner_org = COALESCE($5, owner_org), content = COALESCE($6, content)
   WHERE res_type = $1 AND res_id = $2 AND version_id = $3 - 1
     AND ($43::text IS NULL OR owner_org = $43) AND NOT (deleted AND $44)
     AND NOT EXISTS (SELECT 1 FROM missing)
   RETURNING pk),
{_INDEX_DELETES}, {_VERSION_INSERT}, {_INDEX_INSERTS}
{_RESULT}
"""

# A deletion needs no content, so its new version is computed in the statement: one round trip.
# $1 type, $2 id, $3 time, $4 the owner the row must have (or NULL), $5 client, $6 org, $7 request
DELETE_SQL = f"""
WITH w AS (UPDATE resource SET version_id = version_id + 1, last_updated = $3, deleted = true
   WHERE res_type = $1 AND res_id = $2 AND NOT deleted AND ($4::text IS NULL OR owner_org = $4)
   RETURNING pk, version_id),
{_INDEX_DELETES},
 v AS (INSERT INTO resource_version (pk, version_id, res_type, res_id, last_updated, method,
        deleted, author_client, author_org, request_id, content)
   SELECT w.pk, w.version_id, $1, $2, $3, 'DELETE', true, $5, $6, $7, NULL FROM w)
SELECT version_id FROM w
"""

_READ = "SELECT pk, version_id, last_updated, deleted, owner_org, content FROM resource"


def _index_arrays(rows: IndexRows) -> list[Any]:
    def columns(items: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
        return [list(c) for c in zip(*items, strict=True)] if items else [[]] * width

    return [
        *columns(rows.token, 4),
        *columns(rows.string, 3),
        *columns(rows.date, 3),
        *columns(rows.reference, 4),
        *columns(rows.quantity, 4),
        *columns(rows.uri, 2),
        *columns([astuple(fact) for fact in rows.result], 9),
    ]


class ResourceRepository:
    """FHIR resources in PostgreSQL, on one connection inside a transaction."""

    def __init__(self, connection: asyncpg.Connection):
        self.connection = connection
        self.compiler = SearchCompiler()

    # -- reads --------------------------------------------------------------------------------

    async def current(
        self, resource_type: str, resource_id: str, *, lock: bool = False
    ) -> StoredResource | None:
        """The current version (one index lookup); ``lock`` takes a row lock for an update."""
        query = f"{_READ} WHERE res_type = $1 AND res_id = $2" + (" FOR UPDATE" if lock else "")
        row = await self.connection.fetchrow(query, resource_type, resource_id)
        if row is None:
            return None
        return StoredResource(
            row["pk"],
            resource_type,
            resource_id,
            row["version_id"],
            row["last_updated"],
            row["content"],
            row["deleted"],
            row["owner_org"],
        )

    async def version(
        self, resource_type: str, resource_id: str, version_id: int
    ) -> StoredResource | None:
        row = await self.connection.fetchrow(
            "SELECT v.pk, v.last_updated, v.deleted, v.content, v.method, r.owner_org "
            "FROM resource r JOIN resource_version v ON v.pk = r.pk "
            "WHERE r.res_type = $1 AND r.res_id = $2 AND v.version_id = $3",
            resource_type,
            resource_id,
            version_id,
        )
        if row is None:
            return None
        return StoredResource(
            row["pk"],
            resource_type,
            resource_id,
            version_id,
            row["last_updated"],
            row["content"],
            row["deleted"],
            row["owner_org"],
            row["method"],
        )

    async def missing_references(self, references: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """Those of ``references`` that name no current, undeleted resource."""
        if not references:
            return set()
        types, ids = zip(*references, strict=True)
        rows = await self.connection.fetch(
            "SELECT res_type, res_id FROM resource WHERE NOT deleted AND (res_type, res_id) IN "
            "(SELECT * FROM unnest($1::text[], $2::text[]))",
            list(types),
            list(ids),
        )
        return references - {(r["res_type"], r["res_id"]) for r in rows}

    # -- writes -------------------------------------------------------------------------------

    async def run_write(self, statement: tuple[str, list[Any]]) -> WriteResult:
        """Write one version (a ``write_statement``): resource row, version row and index
        rows in one statement."""
        sql, args = statement
        row = await self.connection.fetchrow(sql, *args)
        return WriteResult(row["pk"], sorted(row["missing"]))

    @staticmethod
    def write_statement(
        resource_type: str,
        resource_id: str,
        version_id: int,
        last_updated: datetime,
        content: str | None,
        rows: IndexRows,
        *,
        method: str,
        owner_org: str | None,
        context: WriteContext,
        replace: bool = False,
        required: set[tuple[str, str]] | frozenset[tuple[str, str]] = frozenset(),
        required_owner: str | None = None,
        live_only: bool = False,
    ) -> tuple[str, list[Any]]:
        """The statement that writes one version, for ``run_write`` or ``write_many``.

        Without ``replace`` the resource is created; with it, the stored row is replaced if it
        is still at ``version_id - 1`` (and owned by ``required_owner``, and not deleted when
        ``live_only``). ``owner_org`` None keeps the stored owner. ``required`` are local
        references that must exist: if any does not, nothing is written.
        """
        types = [t for t, _ in required]
        ids = [i for _, i in required]
        args = [
            resource_type,
            resource_id,
            version_id,
            last_updated,
            owner_org,
            content,
            method,
            context.client_id,
            context.organization,
            context.request_id,
            *_index_arrays(rows),
            content is None,
            types,
            ids,
        ]
        if replace:
            return UPDATE_SQL, [*args, required_owner, live_only]
        return CREATE_SQL, args

    async def write_many(self, statements: list[tuple[str, list[Any]]]) -> list[WriteResult]:
        """Run ``write_statement`` results pipelined (one round trip per kind of statement,
        not per resource); results in the order given."""
        results: list[WriteResult | None] = [None] * len(statements)
        for sql in (CREATE_SQL, UPDATE_SQL):
            positions = [i for i, (text, _) in enumerate(statements) if text is sql]
            if not positions:
                continue
            rows = await self.connection.fetchmany(sql, [statements[i][1] for i in positions])
            for position, row in zip(positions, rows, strict=True):
                results[position] = WriteResult(row["pk"], sorted(row["missing"]))
        return [r for r in results if r is not None]

    async def delete(
        self,
        resource_type: str,
        resource_id: str,
        when: datetime,
        context: WriteContext,
        required_owner: str | None = None,
    ) -> int | None:
        """Mark a live resource deleted (a new version); its version, or None if nothing was."""
        version = await self.connection.fetchval(
            DELETE_SQL,
            resource_type,
            resource_id,
            when,
            required_owner,
            context.client_id,
            context.organization,
            context.request_id,
        )
        return None if version is None else int(version)

    async def advisory_lock(self, key: str) -> None:
        """Serialise concurrent conditional writes on the same criteria until commit."""
        await self.connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)

    async def advisory_locks(self, keys: list[str]) -> None:
        """``advisory_lock`` for many keys in one round trip, always in the same (hash) order,
        so two transactions locking overlapping sets cannot deadlock on them."""
        await self.connection.execute(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(x, 0) AS k"
            " FROM unnest($1::text[]) AS x ORDER BY 1) AS locks",
            keys,
        )

    async def by_tokens(
        self,
        param: str,
        wanted: list[tuple[str, str, str]],
        access: AccessFilter,
        *,
        lock: bool = False,
    ) -> list[list[StoredResource]]:
        """For each (resource type, system, code): the live resources whose ``param`` token
        has exactly that system and code and that ``access`` lets the caller see. One
        statement for all of them (a conditional Bundle's lookups)."""
        if not wanted:
            return []
        sql = Sql()
        indexes = sql.add(list(range(len(wanted))))
        types = sql.add([w[0] for w in wanted])
        systems = sql.add([w[1] for w in wanted])
        codes = sql.add([w[2] for w in wanted])
        query = (
            "SELECT q.i, r.pk, r.res_type, r.res_id, r.version_id, r.last_updated,"
            " r.deleted, r.owner_org, r.content"
            f" FROM unnest({indexes}::int[], {types}::text[], {systems}::text[], {codes}::text[])"
            " AS q(i, t, s, c)"
            " JOIN idx_token x ON x.res_type = q.t AND x.param = "
            f"{sql.add(param)} AND x.code = q.c AND x.system = q.s"
            " JOIN resource r ON r.pk = x.pk"
            f" WHERE NOT r.deleted AND {access.sql(sql, 'r')} ORDER BY q.i, r.pk"
        )
        if lock:  # the rows are about to be updated: hold them, as ``current(lock=True)``
            query += " FOR UPDATE OF r"
        found: list[list[StoredResource]] = [[] for _ in wanted]
        for row in await self.connection.fetch(query, *sql.params):
            if found[row["i"]] and found[row["i"]][-1].pk == row["pk"]:
                continue  # the same resource carries the identifier twice
            found[row["i"]].append(
                StoredResource(
                    row["pk"],
                    row["res_type"],
                    row["res_id"],
                    row["version_id"],
                    row["last_updated"],
                    row["content"],
                    row["deleted"],
                    row["owner_org"],
                )
            )
        return found

    # -- search -------------------------------------------------------------------------------

    async def search(self, request: SearchRequest, access: AccessFilter) -> Page:
        sql = Sql()
        where = [*self.compiler.where(sql, request), access.sql(sql, "r")]
        columns = self.compiler.sort_columns(sql, request.sort)
        named = [
            SortColumn(c.expression, c.descending, c.sql_type, alias=f"q.s{i}")
            for i, c in enumerate(columns[:-1])
        ] + [SortColumn("q.pk", columns[-1].descending, "bigint")]
        extra = "".join(f", {c.expression} AS s{i}" for i, c in enumerate(columns[:-1]))
        inner = (
            f"SELECT r.{RESOURCE_COLUMNS.replace(', ', ', r.')}{extra} FROM resource r "
            f"WHERE {' AND '.join(where)}"
        )
        cursor = request.cursor
        conditions = ""
        if cursor is not None:
            try:
                conditions = " WHERE " + self.compiler.keyset(sql, named, cursor)
            except ValueError:
                from hub.fhir.outcomes import bad_request

                raise bad_request("_cursor does not match this search's _sort") from None
        backward = cursor is not None and cursor.backward
        order = ", ".join(
            f"{c.name} {'DESC' if c.descending != backward else 'ASC'}" for c in named
        )
        limit = sql.add(request.count + 1)
        query = f"SELECT * FROM ({inner}) q{conditions} ORDER BY {order} LIMIT {limit}"
        records = await self.connection.fetch(query, *sql.params)
        more = len(records) > request.count
        records = records[: request.count]
        if backward:
            records.reverse()
        rows = [_stored(r) for r in records]
        if not records:
            return Page(rows, None, None)

        def position(record: asyncpg.Record, backward: bool) -> Cursor:
            return Cursor(
                backward,
                [_json_value(record[f"s{i}"]) for i in range(len(named) - 1)],
                record["pk"],
            )

        has_next = more if not backward else True
        has_previous = more if backward else cursor is not None
        return Page(
            rows,
            position(records[-1], False) if has_next else None,
            position(records[0], True) if has_previous else None,
        )

    async def count(self, request: SearchRequest, access: AccessFilter) -> int:
        sql = Sql()
        where = [*self.compiler.where(sql, request), access.sql(sql, "r")]
        query = f"SELECT count(*) FROM resource r WHERE {' AND '.join(where)}"
        return int(await self.connection.fetchval(query, *sql.params))

    async def included(
        self,
        source_pks: list[int],
        source_type: str,
        param: str,
        target_type: str | None,
        access: AccessFilter,
        limit: int,
    ) -> list[StoredResource]:
        """Resources referenced by ``param`` of the given resources (``_include``)."""
        sql = Sql()
        condition = (
            f"x.pk = ANY({sql.add(source_pks)}::bigint[]) AND x.res_type = {sql.add(source_type)}"
        )
        condition += f" AND x.param = {sql.add(param)}"
        if target_type:
            condition += f" AND x.target_type = {sql.add(target_type)}"
        query = (
            f"SELECT {RESOURCE_COLUMNS} FROM resource t WHERE NOT t.deleted AND "
            f"(t.res_type, t.res_id) IN (SELECT x.target_type, x.target_id FROM idx_reference x "
            f"WHERE {condition}) AND {access.sql(sql, 't')} LIMIT {sql.add(limit)}"
        )
        return [_stored(r) for r in await self.connection.fetch(query, *sql.params)]

    async def referencing(
        self,
        targets: list[tuple[str, str]],
        source_type: str,
        param: str,
        access: AccessFilter,
        limit: int,
    ) -> list[StoredResource]:
        """Resources whose ``param`` references any of ``targets`` (``_revinclude``)."""
        if not targets:
            return []
        sql = Sql()
        types, ids = zip(*targets, strict=True)
        query = (
            f"SELECT {RESOURCE_COLUMNS} FROM resource s WHERE NOT s.deleted AND s.pk IN "
            f"(SELECT x.pk FROM idx_reference x JOIN unnest({sql.add(list(ids))}::text[], "
            f"{sql.add(list(types))}::text[]) AS u(i, t) "
            f"ON x.target_id = u.i AND x.target_type = u.t "
            f"WHERE x.res_type = {sql.add(source_type)} AND x.param = {sql.add(param)}) "
            f"AND {access.sql(sql, 's')} LIMIT {sql.add(limit)}"
        )
        return [_stored(r) for r in await self.connection.fetch(query, *sql.params)]

    async def referenced_by(
        self, source_pks: list[int], access: AccessFilter, limit: int
    ) -> list[StoredResource]:
        """Every resource referenced by the given ones (for ``$everything``)."""
        sql = Sql()
        # The targets first (few, by the pk index of idx_reference), then their rows by the
        # (res_type, res_id) index, then the caller's filter on those rows alone.
        query = (
            f"WITH target AS MATERIALIZED (SELECT DISTINCT t.pk FROM idx_reference x "
            f"JOIN resource t ON t.res_type = x.target_type AND t.res_id = x.target_id "
            f"WHERE x.pk = ANY({sql.add(source_pks)}::bigint[]) AND x.target_type IS NOT NULL) "
            f"SELECT {RESOURCE_COLUMNS.replace('pk,', 't.pk,')} FROM target "
            f"JOIN resource t ON t.pk = target.pk WHERE NOT t.deleted "
            f"AND t.pk <> ALL({sql.add(source_pks)}::bigint[]) AND {access.sql(sql, 't')} "
            f"LIMIT {sql.add(limit)}"
        )
        return [_stored(r) for r in await self.connection.fetch(query, *sql.params)]

    # -- history ------------------------------------------------------------------------------

    async def history(
        self,
        resource_type: str | None,
        resource_id: str | None,
        since: datetime | None,
        count: int,
        cursor: Cursor | None,
        access: AccessFilter,
    ) -> Page:
        """Versions, newest first, keyset-paged on (last_updated, pk, version)."""
        sql = Sql()
        where = [access.sql(sql, "r")]
        if resource_type:
            where.append(f"v.res_type = {sql.add(resource_type)}")
        if resource_id:
            where.append(f"v.res_id = {sql.add(resource_id)}")
        if since:
            where.append(f"v.last_updated >= {sql.add(since)}")
        if cursor is not None:
            try:  # a client-supplied position: malformed is 400, never a database error
                instant, version = _parse_instant(str(cursor.values[0])), int(cursor.values[1])
                instant = instant.replace(tzinfo=instant.tzinfo or UTC).astimezone(UTC)
                if not -(2**31) <= version < 2**31:
                    raise ValueError
            except (IndexError, TypeError, ValueError, OverflowError):
                from hub.fhir.outcomes import bad_request

                raise bad_request("_cursor is not a valid history position") from None
            lu, pk, vid = sql.add(instant), sql.add(cursor.pk), sql.add(version)
            where.append(f"(v.last_updated, v.pk, v.version_id) < ({lu}, {pk}, {vid})")
        query = (
            "SELECT v.pk, v.res_type, v.res_id, v.version_id, v.last_updated, v.content, "
            "v.deleted, v.method FROM resource_version v JOIN resource r ON r.pk = v.pk "
            f"WHERE {' AND '.join(where)} "
            f"ORDER BY v.last_updated DESC, v.pk DESC, v.version_id DESC LIMIT {sql.add(count + 1)}"
        )
        records = await self.connection.fetch(query, *sql.params)
        more = len(records) > count
        records = records[:count]
        rows = [
            StoredResource(
                r["pk"],
                r["res_type"],
                r["res_id"],
                r["version_id"],
                r["last_updated"],
                r["content"],
                r["deleted"],
                method=r["method"],
            )
            for r in records
        ]
        next_cursor = None
        if more and rows:
            last = rows[-1]
            next_cursor = Cursor(False, [last.last_updated.isoformat(), last.version_id], last.pk)
        return Page(rows, next_cursor, None)

    # -- compartments -------------------------------------------------------------------------

    async def compartment(
        self,
        patient_ids: list[str],
        members: list[tuple[str, str]],
        types: list[str],
        since: datetime | None,
        period: tuple[datetime, datetime] | None,
        date_params: list[tuple[str, str]],
        count: int,
        cursor: Cursor | None,
        access: AccessFilter,
    ) -> Page:
        """Patients and every resource in their compartments, paged by pk.

        ``patient_ids`` are the records of one person (a master and its sources).
        """
        sql = Sql()
        member_types, member_params = zip(*members, strict=True) if members else ((), ())
        ids = sql.add(patient_ids)
        # The compartment's members first (a small set, by the reference index), then their
        # rows: an OR of the two inside the WHERE made PostgreSQL walk the whole resource
        # table in pk order for ORDER BY pk LIMIT.
        members_cte = (
            f"WITH member AS MATERIALIZED (SELECT p.pk FROM resource p WHERE p.res_type = "
            f"'Patient' AND p.res_id = ANY({ids}::text[]) UNION SELECT x.pk "
            f"FROM idx_reference x JOIN unnest({sql.add(list(member_types))}::text[], "
            f"{sql.add(list(member_params))}::text[]) AS m(t, p) "
            f"ON x.res_type = m.t AND x.param = m.p "
            f"WHERE x.target_type = 'Patient' AND x.target_id = ANY({ids}::text[])) "
        )
        where = [
            "NOT r.deleted",
            f"r.res_type = ANY({sql.add(types)}::text[])",
            access.sql(sql, "r"),
        ]
        if since:
            where.append(f"r.last_updated >= {sql.add(since)}")
        if period:
            dtypes, dparams = zip(*date_params, strict=True)
            dated = (
                f"SELECT 1 FROM idx_date d JOIN unnest({sql.add(list(dtypes))}::text[], "
                f"{sql.add(list(dparams))}::text[]) AS m(t, p) ON d.res_type = m.t AND "
                f"d.param = m.p WHERE d.pk = r.pk"
            )
            start, end = sql.add(period[0]), sql.add(period[1])
            where.append(
                f"(NOT EXISTS ({dated}) OR EXISTS ({dated} AND d.high > {start} AND d.low < {end}))"
            )
        if cursor is not None:
            where.append(f"r.pk > {sql.add(cursor.pk)}")
        query = (
            f"{members_cte}SELECT {RESOURCE_COLUMNS.replace('pk,', 'r.pk,')} "
            f"FROM member JOIN resource r ON r.pk = member.pk "
            f"WHERE {' AND '.join(where)} ORDER BY r.pk LIMIT {sql.add(count + 1)}"
        )
        records = await self.connection.fetch(query, *sql.params)
        more = len(records) > count
        rows = [_stored(r) for r in records[:count]]
        return Page(rows, Cursor(False, [], rows[-1].pk) if more and rows else None, None)


def _stored(record: asyncpg.Record) -> StoredResource:
    return StoredResource(
        record["pk"],
        record["res_type"],
        record["res_id"],
        record["version_id"],
        record["last_updated"],
        record["content"],
    )


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is None:  # asyncpg's ±infinity (sort value of a missing date)
            return "infinity" if value == datetime.max else "-infinity"
        return value.isoformat()
    if value is None or isinstance(value, int | str):
        return value
    return str(value)


def _parse_instant(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def ids_with_token(
    connection: asyncpg.Connection, resource_type: str, param: str, system: str, code: str
) -> list[str]:
    """Ids of current, live resources of a type with one exact token (system|code)."""
    rows = await connection.fetch(
        "SELECT r.res_id FROM idx_token t JOIN resource r ON r.pk = t.pk"
        " WHERE t.res_type = $1 AND t.param = $2 AND t.code = $3 AND t.system = $4"
        " AND NOT r.deleted ORDER BY r.res_id",
        resource_type,
        param,
        code,
        system,
    )
    return [row["res_id"] for row in rows]
