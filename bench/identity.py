"""Patient identity benchmark: matching throughput and ``Patient/$match`` latency, with
1,000,000 master patients loaded.

DESIGN.md sets no bar for matching alone, so the figures are printed beside the nearest bars,
which are not this capability's own:

- matching throughput against *result ingest, end to end with validation, identity and
  indexing: ≥ 2,000 resources/s*. A source Patient is one such resource (and the one that
  carries the identity work), so the ratio says how far Patient writes alone are from that bar:
  an upper bound for an ingest made of Patients, not a measurement of result ingest;
- ``$match`` latency against *reuse check (CDS hook) at 1M patients: p99 ≤ 20 ms*, the bar for
  the other look-up a doctor waits for at 1M patients.

What it does:

1. starts a private hub (``bench._harness.OwnHub``) on a fresh PostgreSQL database, registers
   ``--hospitals`` loaded hospitals, the hospital that writes during the run and a doctor;
2. loads ``--masters`` people straight into PostgreSQL with COPY (through the API it would take
   hours), one hospital's source Patient and its master each, producing the rows the hub
   itself would write for that Patient's ``POST``: the hub's own code computes them
   (``IdentityService.normalize``/``features``/``_master_body``, ``IdentifierProtection``
   with the hub's keys, ``Indexer``), for the tables ``resource``, ``resource_version``,
   ``idx_*``, ``patient_master``, ``patient_link``, ``identity_features`` and
   ``identity_event``. People come from ``tests/demographics.py`` (valid resident IDs, real
   areas, frequency-weighted surnames, homophone-prone given names); secondary indexes are
   dropped during the load and rebuilt after it, then ``VACUUM (ANALYZE)``. Not loaded: the
   audit records the hub would have written for those requests;
3. matching throughput: ``--concurrency`` keep-alive connections of one hospital client
   ``POST`` source Patients (each one write = store + match + link + master update in one
   transaction) for ``--duration`` seconds, a mix (``--mix``) of new people (with resident
   ID), loaded people sent again with their resident ID (deterministic link), and loaded people
   without resident ID, with a homophone typo in the given name and/or another phone
   (probabilistic: review tasks). The outcome of every write is then read back from the
   identity tables, and the rows the hub wrote for one new person are compared with the rows
   the loader makes for that same Patient (so a change in the hub's write path that the
   loader does not follow is reported, not silently measured);
4. ``Patient/$match`` as a doctor client: by resident ID and by name + birth date + gender,
   at each ``--match-concurrency``.

Usage::

    python -m bench.identity                          # 1M masters: the load takes 15-25 min
                                                      # on 2 cores (~15 GB of tables)
    python -m bench.identity --masters 20000 --duration 10
    python -m bench.identity --keep                   # keep database and keys, print how to reuse
    python -m bench.identity --database-url URL --data-dir DIR   # reuse: no load if loaded

With ``--database-url`` the database is used as it is (migrated, never dropped) and loading is
skipped when it already holds ``--masters`` masters; its ``--data-dir`` must be the one the
loaded data was sealed with (the hub's identifier keys are in ``DATA_DIR/keys``).

The exit status is 0 whether or not a bar is met (this is a measurement); 1 when more than 1%
of the measured requests failed, nothing was measured, a write's outcome was not the one its
kind should give, or the loader's rows differ from the hub's; 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import os
import random
import secrets
import shlex
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench._harness import (
    BENCH_SYSTEM,
    OwnHub,
    SetupError,
    cpu_calibration,
    free_port,
    percentile,
    read_cpu_jiffies,
)
from hub.fhir.datetimes import instant, zone
from hub.fhir.indexing import Indexer, IndexRows
from hub.fhir.searchparams import SearchParamRegistry
from hub.identity.service import MASTER_TAG, IdentityService
from hub.runtime import build_identity
from hub.settings import Settings
from tests.demographics import (
    MOBILE_PREFIXES,
    RESIDENT_ID_SYSTEM,
    Demographics,
    Person,
    patient_resource,
    resident_id_for,
    split_name,
)

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

BAR_INGEST_PER_SECOND = 2000.0  # result ingest, end to end with identity (nearest bar)
BAR_REUSE_P99_MS = 20.0  # reuse check at 1M patients (nearest bar)

DEFAULT_MASTERS = 1_000_000
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FHIR_JSON = "application/fhir+json"
CLIENT_CPU_WARNING = 0.80

ORG_SYSTEM = f"{BENCH_SYSTEM}/org"
WRITER_HOSPITAL = 0  # H00 writes during the run; H01.. are the loaded hospitals
DOCTOR_HOSPITAL = 99  # where the doctor calling $match works

# Loading: people are made in chunks, each from its own seed, so workers need no coordination.
# Resident IDs stay unique across chunks because each chunk uses one sequence-number "slot"
# (GB 11643 sequence 2k+1 for men, 2k+2 for women) of its own; slots from LOAD_SLOTS on are
# left for the new people of the measurement, so that they are new indeed.
CHUNK = 2500
LOAD_SLOTS = 400  # unique IDs for up to LOAD_SLOTS * CHUNK = 1,000,000 loaded people
NEW_SLOTS = range(LOAD_SLOTS, 499)
LOAD_SEED = 20_261_122
LOAD_SPAN = timedelta(days=365)  # loaded records were written over the past year
VERIFY_PER_CHUNK = 3  # people per chunk whose index rows are also computed the plain way

COLUMNS: dict[str, tuple[str, ...]] = {
    table: tuple(columns.split())
    for table, columns in {
        "resource": "pk res_type res_id version_id last_updated deleted owner_org content",
        "resource_version": "pk version_id res_type res_id last_updated method deleted "
        "author_client author_org request_id content",
        "idx_token": "pk res_type param system code display",
        "idx_string": "pk res_type param value_norm value",
        "idx_date": "pk res_type param low high",
        "idx_reference": "pk res_type param target_type target_id url",
        "idx_quantity": "pk res_type param value system code",
        "idx_uri": "pk res_type param uri",
        "patient_master": "master_id status merged_into created_at",
        "patient_link": "source_id master_id organization grade score decided_by manual decided_at",
        "identity_features": "source_id organization demographics block_keys id_keys updated_at",
        "identity_event": "at action source_id master_id previous_master_id grade score "
        "decided_by reason undoes undone_by details",
    }.items()
}
LOADED_TABLES = tuple(COLUMNS)  # in the order they are copied
INDEX_TABLES = ("token", "string", "date", "reference", "quantity", "uri")

# Secondary indexes are rebuilt after the load on two connections, the biggest tables' first.
REBUILD_ORDER = ("idx_string", "idx_token", "resource_version", "resource", "identity_features")
# Loaded people sampled for the run: for $match, and enough to send again at this rate.
MATCH_PEOPLE = 2000
MAX_WRITES_PER_SECOND = 1500
# The kinds of source Patient the hospital sends during the run, and what each should give.
NEW, KNOWN_ID, KNOWN_FUZZY = "new", "known-id", "known-fuzzy"
KINDS = (NEW, KNOWN_ID, KNOWN_FUZZY)
KIND_LABELS = {
    NEW: "new person, with resident ID",
    KNOWN_ID: "loaded person, with resident ID",
    KNOWN_FUZZY: "loaded person, no ID, typo/phone",
}
EXPECTED = {
    NEW: "new master, no review",
    KNOWN_ID: "linked to the loaded master",
    KNOWN_FUZZY: "new master + review of the loaded master",
}
FUZZ_VARIANTS = (("typo", 0.4), ("phone", 0.3), ("typo+phone", 0.3))


# --------------------------------------------------------------------------------------------
# The hub's own code, configured as the server is
# --------------------------------------------------------------------------------------------


def hub_settings(env: dict[str, str]) -> Settings:
    """The hub's Settings for the environment ``env`` (its ``YIJIAN_*`` variables only)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("YIJIAN_")}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update({k: v for k, v in env.items() if k.startswith("YIJIAN_")})
        return Settings()
    finally:
        for key in [k for k in os.environ if k.startswith("YIJIAN_")]:
            del os.environ[key]
        os.environ.update(saved)


@dataclass
class HubCode:
    """What the hub's write path uses to turn a Patient into rows, built as ``Hub.build``."""

    identity: IdentityService
    indexer: Indexer

    @classmethod
    def build(cls, env: dict[str, str]) -> HubCode:
        settings = hub_settings(env)
        base = (settings.public_base_url or "").rstrip("/")
        indexer = Indexer(
            SearchParamRegistry.default(),
            zone(settings.default_timezone),
            base + "/fhir" if base else "",
        )
        return cls(build_identity(settings), indexer)


def _merge(*parts: IndexRows) -> IndexRows:
    rows = IndexRows()
    for part in parts:
        for name in INDEX_TABLES:
            getattr(rows, name).extend(getattr(part, name))
    return rows


def _same_rows(a: IndexRows, b: IndexRows) -> bool:
    return all(Counter(getattr(a, n)) == Counter(getattr(b, n)) for n in INDEX_TABLES)


class IdTaken(Exception):
    """Every slot's resident ID for this area, birth date and gender is used: draw again."""


class SlotDemographics(Demographics):
    """``Demographics`` whose resident IDs use only the sequence numbers of ``slots``
    (slot k: 2k+1 for a man, 2k+2 for a woman), so that generators with disjoint slots never
    make the same ID; ``person()`` raises ``IdTaken`` when all of them are used."""

    def __init__(self, seed: int, slots: range):
        super().__init__(seed)
        self.slots = slots
        self.slot_random = random.Random(seed ^ 0x5EED)

    def _new_resident_id(
        self, area: str, birth: date, gender: str, *, avoid: str | None = None
    ) -> str:
        parity = 1 if gender == "male" else 2
        for _ in range(min(len(self.slots), 8)):
            sequence = 2 * self.slot_random.choice(self.slots) + parity
            number = resident_id_for(area, birth, sequence, gender)
            if number not in self._used_ids and f"{sequence:03d}" != avoid:
                return number
        raise IdTaken(area)

    def new_person(self) -> Person:
        while True:
            with contextlib.suppress(IdTaken):
                return self.person()


# --------------------------------------------------------------------------------------------
# Loading: rows as the hub writes them, COPied by worker processes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadJob:
    """What every loading worker needs (picklable)."""

    database_url: str
    env: dict[str, str]
    hospitals: tuple[tuple[str, str], ...]  # (organization id, client id) of loaded hospitals
    first_index: int  # person index of the first person of this load
    count: int  # people to load
    first_pk: int  # resource pk of the first person's source (its master: + 1)
    started: datetime  # last_updated of the first person; later ones follow evenly
    step: timedelta


@dataclass
class ChunkRows:
    tables: dict[str, list[tuple[Any, ...]]] = field(
        default_factory=lambda: {t: [] for t in LOADED_TABLES}
    )


@dataclass(frozen=True)
class Stamp:
    """Who wrote a source Patient, when, and the keys its rows get."""

    source_id: str
    master_id: str
    pk: int
    master_pk: int
    when: datetime
    master_when: datetime
    organization: str
    client: str
    request_id: str


class RowMaker:
    """Makes the rows of one person: a hospital's source Patient and its new master, as the
    hub writes them for a ``POST`` of a Patient no one has sent before
    (``RecordService.create`` → ``_write``, ``IdentityService.source_written``)."""

    def __init__(self, code: HubCode):
        self.code = code
        self.identity = code.identity
        self.protection = self.identity.protection
        self.indexer = code.indexer
        self._index_cache: dict[str, IndexRows] = {}

    def chunk(self, job: LoadJob, chunk: int) -> ChunkRows:
        first = max(chunk * CHUNK, job.first_index)
        last = min((chunk + 1) * CHUNK, job.first_index + job.count)
        slot = chunk % LOAD_SLOTS
        demographics = SlotDemographics(LOAD_SEED * 1009 + chunk, range(slot, slot + 1))
        out = ChunkRows()
        for index in range(first, last):
            organization, client = job.hospitals[index % len(job.hospitals)]
            offset = index - job.first_index
            when = job.started + job.step * offset
            stamp = Stamp(
                str(uuid.uuid4()),
                str(uuid.uuid4()),
                job.first_pk + 2 * offset,
                job.first_pk + 2 * offset + 1,
                when,
                when + timedelta(milliseconds=2),
                organization,
                client,
                uuid.uuid4().hex,
            )
            # What the hospital sends, as RecordService._prepare normalises it.
            resource = patient_resource(demographics.new_person(), organization, f"ZY{index:09d}")
            resource = self.identity.normalize(resource, organization)
            for table, rows in self.rows(resource, stamp, index - first < VERIFY_PER_CHUNK).items():
                out.tables[table].extend(rows)
        return out

    def rows(
        self, resource: dict[str, Any], stamp: Stamp, verify: bool
    ) -> dict[str, list[tuple[Any, ...]]]:
        """The rows of every loaded table for a normalised source Patient."""
        identity, protection, s = self.identity, self.protection, stamp
        # RecordService._write of the source
        source = self._body(resource, s.source_id, s.when)
        source_content = self._sealed(source)
        # IdentityService.source_written: no match, so a master of its own, composed from the
        # source (_master_body) and stored by the same _write
        features = identity.features(source)
        master_resource = identity._master_body(s.master_id, [(s.source_id, source)])
        master_resource["meta"] = {"tag": [MASTER_TAG]}
        master = self._body(master_resource, s.master_id, s.master_when)
        master_content = self._sealed(master)
        source_rows, master_rows = self._index(source, master, verify)
        protection.protect_rows(source_rows)
        protection.protect_rows(master_rows)

        tables: dict[str, list[tuple[Any, ...]]] = {t: [] for t in LOADED_TABLES}
        tables["resource"] = [
            (s.pk, "Patient", s.source_id, 1, s.when, False, s.organization, source_content),
            (s.master_pk, "Patient", s.master_id, 1, s.master_when, False, None, master_content),
        ]
        tables["resource_version"] = [
            (pk, 1, "Patient", res_id, at, "POST", False, s.client, s.organization,
             s.request_id, content)
            for pk, res_id, at, content in (
                (s.pk, s.source_id, s.when, source_content),
                (s.master_pk, s.master_id, s.master_when, master_content),
            )
        ]  # fmt: skip
        for pk, rows in ((s.pk, source_rows), (s.master_pk, master_rows)):
            for name in INDEX_TABLES:
                tables["idx_" + name] += [(pk, "Patient", *row) for row in getattr(rows, name)]
        # The columns the hub leaves to now() get the write's time.
        tables["patient_master"] = [(s.master_id, "active", None, s.when)]
        tables["patient_link"] = [
            (s.source_id, s.master_id, s.organization, "certain", None, "rule:new-master",
             False, s.when)
        ]  # fmt: skip
        tables["identity_features"] = [
            (
                s.source_id,
                s.organization,
                orjson.dumps(features.demographics.to_json()).decode(),
                features.block_keys,
                features.id_keys,
                s.when,
            )
        ]
        details = {"sources": [s.source_id], "before": {s.source_id: None}}
        tables["identity_event"] = [
            (s.when, "new-master", s.source_id, s.master_id, None, "certain", None,
             "rule:new-master", None, None, None, orjson.dumps(details).decode())
        ]  # fmt: skip
        return tables

    def _sealed(self, body: dict[str, Any]) -> str:
        """The stored JSON text, as ``RecordService._write`` makes it."""
        return self.protection.sealed_json(body)

    @staticmethod
    def _body(resource: dict[str, Any], resource_id: str, when: datetime) -> dict[str, Any]:
        """The stored body, exactly as ``RecordService._write`` builds it."""
        meta = {
            k: v
            for k, v in (resource.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")
        }
        body: dict[str, Any] = {
            "resourceType": "Patient",
            "id": resource_id,
            "meta": {"versionId": "1", "lastUpdated": instant(when), **meta},
        }
        body.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta"))
        return body

    def _index(
        self, source: dict[str, Any], master: dict[str, Any], verify: bool
    ) -> tuple[IndexRows, IndexRows]:
        """``Indexer.index`` of both bodies, computing what they share only once.

        Every Patient search parameter's expression reads one top-level element, so the rows
        of a resource are the union of the rows of its elements: the elements both bodies hold
        alike are indexed once, and the rest (source: the managing organization; master:
        ``active`` and the link to the source) comes from a cache of rows with the ids as
        placeholders. ``verify`` checks the result against indexing the whole bodies.
        """
        shared = {
            k
            for k, v in source.items()
            if k not in ("resourceType", "id", "meta") and master.get(k) == v
        }
        common = self.indexer.index({"resourceType": "Patient", **{k: source[k] for k in shared}})
        source_only = {k: v for k, v in source.items() if k not in shared}
        master_only = {k: v for k, v in master.items() if k not in shared}
        ids = [source["id"], master["id"]]
        source_rows = _merge(common, self._cached_index(source_only, ids))
        master_rows = _merge(common, self._cached_index(master_only, ids))
        if verify and not (
            _same_rows(source_rows, self.indexer.index(source))
            and _same_rows(master_rows, self.indexer.index(master))
        ):
            raise RuntimeError(
                "index rows computed per element differ from Indexer.index of the whole "
                "Patient (a search parameter now reads id, meta or several elements): "
                "bench/identity.py must index whole bodies"
            )
        return source_rows, master_rows

    def _cached_index(self, part: dict[str, Any], ids: list[str]) -> IndexRows:
        """``Indexer.index`` of ``part`` without id and meta, computed once per shape."""
        key = orjson.dumps({k: v for k, v in part.items() if k not in ("id", "meta")}).decode()
        for n, real in enumerate(ids):
            key = key.replace(real, f"@@id{n}@@")
        rows = self._index_cache.get(key)
        if rows is None:
            rows = self._index_cache[key] = self.indexer.index(orjson.loads(key))
        substituted = IndexRows()
        for name in INDEX_TABLES:
            getattr(substituted, name).extend(
                tuple(_put_back(x, ids) for x in row) for row in getattr(rows, name)
            )
        return substituted


def _put_back(value: Any, ids: list[str]) -> Any:
    if isinstance(value, str) and "@@id" in value:
        for n, real in enumerate(ids):
            value = value.replace(f"@@id{n}@@", real)
    return value


# Per worker process (fork): the row maker, an event loop and a database connection.
_worker: dict[str, Any] = {}


def _worker_init(job: LoadJob) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    loop = asyncio.new_event_loop()
    connection = loop.run_until_complete(asyncpg.connect(job.database_url, timeout=30))
    with contextlib.suppress(asyncpg.PostgresError):
        # Rows are consistent by construction: skip the per-row foreign-key triggers (superuser
        # only; otherwise they run). Orphans are counted after the load all the same.
        loop.run_until_complete(connection.execute("SET session_replication_role = replica"))
    loop.run_until_complete(connection.execute("SET synchronous_commit = off"))
    _worker.update(
        loop=loop, connection=connection, job=job, maker=RowMaker(HubCode.build(job.env))
    )


def _load_chunk(chunk: int) -> tuple[int, int, float, float]:
    """Make and COPY one chunk: (chunk, people, seconds making rows, seconds copying)."""
    maker: RowMaker = _worker["maker"]
    started = time.perf_counter()
    rows = maker.chunk(_worker["job"], chunk)
    made = time.perf_counter()

    async def copy() -> None:
        connection: asyncpg.Connection = _worker["connection"]
        async with connection.transaction():
            for table in LOADED_TABLES:
                records = rows.tables[table]
                if records:
                    await connection.copy_records_to_table(
                        table, records=records, columns=list(COLUMNS[table])
                    )

    _worker["loop"].run_until_complete(copy())
    people = len(rows.tables["patient_master"])
    return chunk, people, made - started, time.perf_counter() - made


@dataclass
class LoadReport:
    loaded: int = 0
    existing: int = 0
    seconds_rows: float = 0.0  # wall time making and copying rows
    seconds_indexes: float = 0.0
    seconds_vacuum: float = 0.0
    cpu_make: float = 0.0  # summed over workers
    cpu_copy: float = 0.0
    workers: int = 0
    orphans: int = 0
    sizes: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.seconds_rows + self.seconds_indexes + self.seconds_vacuum


async def _secondary_indexes(connection: asyncpg.Connection) -> list[tuple[str, str]]:
    """(name, definition) of the loaded tables' indexes that back no constraint."""
    rows = await connection.fetch(
        "SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS definition "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_class t ON t.oid = i.indrelid "
        "WHERE t.relname = ANY($1::text[]) AND t.relnamespace = 'public'::regnamespace "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) "
        "ORDER BY c.relname",
        list(LOADED_TABLES),
    )
    return [(r["name"], r["definition"]) for r in rows]


async def _run_parallel(database_url: str, statements: list[str], lanes: int) -> None:
    """Run statements on ``lanes`` connections at once (longest first as given)."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for statement in statements:
        queue.put_nowait(statement)

    async def lane() -> None:
        connection = await asyncpg.connect(database_url, timeout=30)
        try:
            await connection.execute("SET maintenance_work_mem = '1GB'")
            await connection.execute("SET max_parallel_maintenance_workers = 0")
            while not queue.empty():
                await connection.execute(queue.get_nowait())
        finally:
            await connection.close()

    await asyncio.gather(*(lane() for _ in range(lanes)))


def _if_not_exists(definition: str) -> str:
    for head in ("CREATE UNIQUE INDEX ", "CREATE INDEX "):
        if definition.startswith(head):
            return head + "IF NOT EXISTS " + definition[len(head) :]
    return definition


async def count_masters(database_url: str) -> int:
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM patient_master"))
    finally:
        await connection.close()


def load(
    database_url: str,
    env: dict[str, str],
    hospitals: list[tuple[str, str]],
    masters: int,
    workers: int,
) -> LoadReport:
    """Bring the database to at least ``masters`` master patients (see the module doc)."""
    report = LoadReport(workers=workers)
    report.existing = asyncio.run(count_masters(database_url))
    if report.existing >= masters:
        return report
    first_index = math.ceil(report.existing / CHUNK) * CHUNK
    count = masters - report.existing
    report.loaded = count

    async def before() -> tuple[int, list[tuple[str, str]]]:
        connection = await asyncpg.connect(database_url, timeout=30)
        try:
            sequence = await connection.fetchval("SELECT pg_get_serial_sequence('resource', 'pk')")
            last = await connection.fetchval(f"SELECT last_value FROM {sequence}")
            top = await connection.fetchval("SELECT COALESCE(max(pk), 0) FROM resource")
            # Reserve the pks: the server is not running yet, but be safe all the same.
            first_pk = max(int(last), int(top)) + 1
            await connection.execute(
                "SELECT setval($1::regclass, $2)", sequence, first_pk + 2 * count
            )
            indexes = await _secondary_indexes(connection)
            for name, _ in indexes:
                await connection.execute(f'DROP INDEX IF EXISTS "{name}"')
            return first_pk, indexes
        finally:
            await connection.close()

    first_pk, indexes = asyncio.run(before())
    now = datetime.now(UTC)
    job = LoadJob(
        database_url,
        env,
        tuple(hospitals),
        first_index,
        count,
        first_pk,
        now - LOAD_SPAN,
        LOAD_SPAN / max(count, 1),
    )
    chunks = list(range(first_index // CHUNK, math.ceil((first_index + count) / CHUNK)))
    started = time.monotonic()
    try:
        ctx: Any = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        )
        done, next_report = 0, 0.0
        with ctx.Pool(workers, initializer=_worker_init, initargs=(job,)) as pool:
            for _chunk, people, make_s, copy_s in pool.imap_unordered(_load_chunk, chunks):
                done += people
                report.cpu_make += make_s
                report.cpu_copy += copy_s
                elapsed = time.monotonic() - started
                if elapsed >= next_report or done == count:
                    rate = done / elapsed if elapsed else 0.0
                    eta = (count - done) / rate if rate else 0.0
                    print(
                        f"  loaded {done:>9,} / {count:,} people ({rate:,.0f}/s, "
                        f"{elapsed:,.0f} s, about {eta:,.0f} s to go)",
                        flush=True,
                    )
                    next_report = elapsed + 15.0
        report.seconds_rows = time.monotonic() - started
    finally:
        # Never leave the database without its indexes, even after a failed load.
        print(f"  rebuilding {len(indexes)} secondary indexes ...", flush=True)
        started = time.monotonic()

        def rank(item: tuple[str, str]) -> int:
            table = item[1].split(" ON ")[1].split()[0].removeprefix("public.")
            return REBUILD_ORDER.index(table) if table in REBUILD_ORDER else len(REBUILD_ORDER)

        biggest_first = sorted(indexes, key=rank)
        asyncio.run(_run_parallel(database_url, [_if_not_exists(d) for _, d in biggest_first], 2))
        report.seconds_indexes = time.monotonic() - started

    print("  VACUUM (ANALYZE) of the loaded tables ...", flush=True)
    started = time.monotonic()
    asyncio.run(_run_parallel(database_url, [f"VACUUM (ANALYZE) {t}" for t in LOADED_TABLES], 2))
    report.seconds_vacuum = time.monotonic() - started

    async def after() -> None:
        connection = await asyncpg.connect(database_url, timeout=30)
        try:
            report.orphans = int(
                await connection.fetchval(
                    "SELECT (SELECT count(*) FROM resource_version v WHERE NOT EXISTS "
                    "(SELECT 1 FROM resource r WHERE r.pk = v.pk)) + (SELECT count(*) FROM "
                    "patient_link l WHERE NOT EXISTS (SELECT 1 FROM patient_master m "
                    "WHERE m.master_id = l.master_id))"
                )
            )
            for table in LOADED_TABLES:
                report.sizes[table] = int(
                    await connection.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
                )
        finally:
            await connection.close()

    asyncio.run(after())
    return report


# --------------------------------------------------------------------------------------------
# People for the measurement
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Known:
    """A loaded person: as its hospital sent it, and the master it is linked to."""

    person: Person
    master_id: str


def person_of(resource: dict[str, Any]) -> Person:
    """The Person a loaded source Patient was made from (identifiers revealed)."""
    name = resource["name"][0]
    resident_id = next(
        i["value"] for i in resource["identifier"] if i.get("system") == RESIDENT_ID_SYSTEM
    )
    return Person(
        family=name["family"],
        given=name["given"][0],
        gender=resource["gender"],
        birth_date=date.fromisoformat(resource["birthDate"]),
        resident_id=resident_id,
        phone=resource["telecom"][0]["value"],
        address=resource["address"][0],
        insurance_number="",
    )


async def sample_known(
    database_url: str,
    code: HubCode,
    organizations: list[str],
    wanted: int,
    seed: int,
) -> tuple[list[Known], int]:
    """About ``wanted`` loaded people picked at random (block sample), in random order, and
    how many loaded people there are.

    People whose master has another source or a review (from earlier runs on a reused
    database) are left out: sending them again would not have the outcome their kind should.
    """
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        sources = int(
            await connection.fetchval(
                "SELECT count(*) FROM patient_link WHERE organization = ANY($1::text[])",
                organizations,
            )
        )
        if sources == 0:
            return [], 0
        percent = min(100.0, 100.0 * wanted * 1.3 / sources)
        rows = await connection.fetch(
            "SELECT r.content, l.master_id FROM resource r TABLESAMPLE SYSTEM ($1) "
            "REPEATABLE ($2) JOIN patient_link l ON l.source_id = r.res_id "
            "WHERE r.res_type = 'Patient' AND r.owner_org = ANY($3::text[]) AND NOT r.deleted "
            "AND NOT EXISTS (SELECT 1 FROM patient_link o WHERE o.master_id = l.master_id "
            "AND o.source_id <> l.source_id) "
            "AND NOT EXISTS (SELECT 1 FROM identity_review v WHERE v.master_id = l.master_id)",
            percent,
            float(seed % 2**31),
            organizations,
        )
    finally:
        await connection.close()
    protection = code.identity.protection
    people = [
        Known(person_of(protection.reveal(orjson.loads(r["content"]), full=True)), r["master_id"])
        for r in rows
    ]
    random.Random(seed).shuffle(people)
    return people[:wanted], sources


class WriteMix:
    """Builds the source Patients the writing hospital sends, by kind."""

    def __init__(
        self,
        organization: str,
        known: list[Known],
        weights: tuple[float, float, float],
        seed: int,
    ):
        self.organization = organization
        self.known = known
        self.next_known = 0
        self.reused = 0
        self.weights = weights
        self.rng = random.Random(seed)
        self.demographics = SlotDemographics(seed, NEW_SLOTS)
        self.serial = 0
        self.run = secrets.token_hex(3).upper()

    def _mrn(self) -> str:
        self.serial += 1
        return f"B{self.run}{self.serial:07d}"

    def _known(self) -> Known:
        if self.next_known >= len(self.known):  # ran out: send someone again
            self.reused += 1
            self.next_known = 0
        known = self.known[self.next_known]
        self.next_known += 1
        return known

    def _phone(self) -> str:
        return self.rng.choice(MOBILE_PREFIXES) + f"{self.rng.randrange(10**8):08d}"

    def build(self) -> tuple[str, dict[str, Any], str | None]:
        """(kind, Patient, the master it should be linked to or reviewed against)."""
        kind = self.rng.choices(KINDS, self.weights)[0] if self.known else NEW
        if kind == NEW:
            person = self.demographics.new_person()
            return kind, patient_resource(person, self.organization, self._mrn()), None
        known = self._known()
        person = known.person
        if kind == KNOWN_ID:
            resource = patient_resource(person, self.organization, self._mrn())
            return kind, resource, known.master_id
        variant = self.rng.choices([v for v, _ in FUZZ_VARIANTS], [w for _, w in FUZZ_VARIANTS])
        typo, other_phone = "typo" in variant[0], "phone" in variant[0]
        if typo:
            try:
                family, given = split_name(self.demographics.typo_of(person.name))
                person = dataclasses.replace(person, family=family, given=given)
            except ValueError:  # no homophone known for the name: the phone differs instead
                other_phone = True
        if other_phone:
            person = dataclasses.replace(person, phone=self._phone())
        resource = patient_resource(person, self.organization, self._mrn(), with_resident_id=False)
        return kind, resource, known.master_id


def match_body(known: Known, by: str) -> bytes:
    """A ``$match`` Parameters body: by resident ID, or by name + birth date + gender."""
    person = known.person
    if by == "id":
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [{"system": RESIDENT_ID_SYSTEM, "value": person.resident_id}],
        }
    else:
        patient = {
            "resourceType": "Patient",
            "name": [{"text": person.name, "family": person.family, "given": [person.given]}],
            "birthDate": person.birth_date.isoformat(),
            "gender": person.gender,
        }
    return orjson.dumps(
        {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": patient}]}
    )


# --------------------------------------------------------------------------------------------
# Closed-loop load over HTTP
# --------------------------------------------------------------------------------------------


class TokenError(RuntimeError):
    """The token endpoint refused the credentials."""


@dataclass
class Request:
    label: str
    method: str
    url: str
    body: bytes | None
    expected: int
    on_success: Callable[[bytes, bool], None] | None = None  # (body, measured)


@dataclass
class PhaseResult:
    """What one phase measured."""

    latencies: dict[str, array[float]] = field(default_factory=dict)  # label → ms
    errors: Counter[str] = field(default_factory=Counter)  # "status label" → count
    error_samples: dict[str, str] = field(default_factory=dict)
    unmeasured_errors: int = 0
    window: float = 0.0
    client_cpu: float = 0.0
    machine_busy: float | None = None

    @property
    def ok(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def all_latencies(self) -> list[float]:
        return sorted(x for v in self.latencies.values() for x in v)


class Client:
    """One API client (client credentials) over a keep-alive aiohttp session."""

    def __init__(self, base_url: str, client_id: str, secret: str):
        self.base_url = base_url.rstrip("/")
        self.fhir = self.base_url + "/fhir"
        self.client_id = client_id
        self.secret = secret
        self.headers: dict[str, str] = {}
        self.expires = 0.0

    async def authenticate(self, session: aiohttp.ClientSession) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.secret,
        }
        async with session.post(self.base_url + "/auth/token", data=form) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise TokenError(f"/auth/token -> {resp.status}: {body[:300]!r}")
        token = orjson.loads(body)
        self.expires = time.monotonic() + float(token.get("expires_in", 3600))
        self.headers = {
            "Authorization": f"Bearer {token['access_token']}",
            "Accept": FHIR_JSON,
            "Content-Type": FHIR_JSON,
        }


async def closed_loop(
    client: Client,
    concurrency: int,
    warmup: float,
    duration: float,
    next_request: Callable[[], Request],
) -> PhaseResult:
    """``concurrency`` virtual clients, each sending its next request as soon as the last one
    is answered; requests that start and end inside the window [warm-up, warm-up+duration)
    are measured."""
    result = PhaseResult()
    connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=3600)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=60),
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        auto_decompress=False,
    ) as session:
        await client.authenticate(session)
        start = time.monotonic() + 0.2
        window_start, window_end = start + warmup, start + warmup + duration
        marks: dict[str, Any] = {}

        async def sampler() -> None:
            await asyncio.sleep(max(0.0, window_start - time.monotonic()))
            marks["start"] = (time.process_time(), read_cpu_jiffies())
            await asyncio.sleep(max(0.0, window_end - time.monotonic()))
            marks["end"] = (time.process_time(), read_cpu_jiffies())

        async def virtual_client() -> None:
            await asyncio.sleep(max(0.0, start - time.monotonic()))
            while time.monotonic() < window_end:
                if time.monotonic() > client.expires - 60:
                    await client.authenticate(session)
                request = next_request()
                began = time.monotonic()
                status: int | str
                try:
                    async with session.request(
                        request.method, request.url, data=request.body, headers=client.headers
                    ) as resp:
                        data = await resp.read()
                        status = resp.status
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    data, status = repr(exc).encode(), type(exc).__name__
                ended = time.monotonic()
                measured = began >= window_start and ended <= window_end
                if status == request.expected:
                    if measured:
                        samples = result.latencies.setdefault(request.label, array("d"))
                        samples.append((ended - began) * 1000.0)
                    if request.on_success is not None:
                        request.on_success(data, measured)
                    continue
                key = f"{status} {request.label}"
                if measured:
                    result.errors[key] += 1
                else:
                    result.unmeasured_errors += 1
                result.error_samples.setdefault(key, data[:500].decode("utf-8", "replace"))
                if not isinstance(status, int):
                    await asyncio.sleep(0.05)  # a dead server must not become a busy loop

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(virtual_client() for _ in range(concurrency)))
        await sampling
    result.window = duration
    (cpu0, jiffies0), (cpu1, jiffies1) = marks["start"], marks["end"]
    result.client_cpu = (cpu1 - cpu0) / duration
    if jiffies0 and jiffies1 and jiffies1[1] > jiffies0[1]:
        result.machine_busy = (jiffies1[0] - jiffies0[0]) / (jiffies1[1] - jiffies0[1])
    return result


# --------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------


@dataclass
class Written:
    source_id: str
    kind: str
    expected_master: str | None
    measured: bool


def write_phase(
    client: Client, mix: WriteMix, concurrency: int, warmup: float, duration: float
) -> tuple[PhaseResult, list[Written]]:
    written: list[Written] = []
    url = client.fhir + "/Patient"

    def next_request() -> Request:
        kind, resource, expected = mix.build()

        def created(body: bytes, measured: bool) -> None:
            written.append(Written(orjson.loads(body)["id"], kind, expected, measured))

        return Request(kind, "POST", url, orjson.dumps(resource), 201, created)

    result = asyncio.run(closed_loop(client, concurrency, warmup, duration, next_request))
    return result, written


@dataclass
class MatchOutcome:
    top_right: int = 0  # the person's master ranked first
    found: int = 0  # ... anywhere in the results
    empty: int = 0
    answered: int = 0


def match_phase(
    client: Client,
    people: list[Known],
    by: str,
    concurrency: int,
    warmup: float,
    duration: float,
) -> tuple[PhaseResult, MatchOutcome]:
    outcome = MatchOutcome()
    url = client.fhir + "/Patient/$match"
    bodies = [(match_body(k, by), k.master_id) for k in people]
    position = 0

    def next_request() -> Request:
        nonlocal position
        body, master_id = bodies[position % len(bodies)]
        position += 1

        def answered(data: bytes, measured: bool) -> None:
            if not measured:
                return
            ids = [
                e["resource"]["id"]
                for e in orjson.loads(data).get("entry", [])
                if e.get("search", {}).get("mode") == "match"
            ]
            outcome.answered += 1
            outcome.top_right += bool(ids) and ids[0] == master_id
            outcome.found += master_id in ids
            outcome.empty += not ids

        return Request(by, "POST", url, body, 200, answered)

    result = asyncio.run(closed_loop(client, concurrency, warmup, duration, next_request))
    return result, outcome


async def verify_outcomes(database_url: str, written: list[Written]) -> dict[str, Counter[str]]:
    """What the hub did with each written source, read from the identity tables."""
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        rows = await connection.fetch(
            "SELECT l.source_id, l.master_id, l.decided_by, "
            "array_remove(array_agg(r.master_id), NULL) AS reviewed "
            "FROM patient_link l LEFT JOIN identity_review r "
            "ON r.source_id = l.source_id AND r.status = 'open' "
            "WHERE l.source_id = ANY($1::text[]) GROUP BY l.source_id, l.master_id, l.decided_by",
            [w.source_id for w in written],
        )
    finally:
        await connection.close()
    found = {r["source_id"]: r for r in rows}
    outcomes: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
    for w in written:
        counts = outcomes[w.kind]
        counts["written"] += 1
        row = found.get(w.source_id)
        if row is None:
            counts["no link"] += 1
            continue
        linked = row["decided_by"] != "rule:new-master"
        counts["linked to an existing master" if linked else "new master"] += 1
        reviewed = list(row["reviewed"])
        if reviewed:
            counts["review opened"] += 1
        if w.kind == NEW:
            counts["as expected"] += not linked and not reviewed
        elif w.kind == KNOWN_ID:
            counts["as expected"] += linked and row["master_id"] == w.expected_master
        else:
            counts["as expected"] += not linked and w.expected_master in reviewed
    return outcomes


# Columns the hub fills with now() (the transaction's time): not compared.
NOW_COLUMNS = {
    "patient_master": "created_at",
    "patient_link": "decided_at",
    "identity_features": "updated_at",
    "identity_event": "at",
}
CONTENT_COLUMNS = {"content", "demographics", "details"}


async def check_fidelity(database_url: str, code: HubCode, source_id: str) -> list[str]:
    """Compare the rows the hub wrote for a new person's ``POST`` with the rows the loader
    makes for the same Patient (same ids, times, writer); returns the differences.

    Sealed values are compared opened (encryption uses a fresh nonce each time), JSON by
    value, index rows as multisets; columns the hub leaves to ``now()`` are not compared.
    """
    connection = await asyncpg.connect(database_url, timeout=30)
    try:
        link = await connection.fetchrow(
            "SELECT master_id FROM patient_link WHERE source_id = $1", source_id
        )
        if link is None:
            return [f"Patient/{source_id} has no link"]
        master_id = link["master_id"]
        heads = {
            r["res_id"]: r
            for r in await connection.fetch(
                "SELECT r.pk, r.res_id, r.last_updated, r.owner_org, r.content, "
                "v.author_client, v.request_id FROM resource r JOIN resource_version v "
                "ON v.pk = r.pk AND v.version_id = 1 "
                "WHERE r.res_type = 'Patient' AND r.res_id = ANY($1::text[])",
                [source_id, master_id],
            )
        }
        if len(heads) != 2:
            return ["the source or its master is missing"]
        source, master = heads[source_id], heads[master_id]
        protection = code.identity.protection
        plain = protection.reveal(orjson.loads(source["content"]), full=True)
        resource = {k: v for k, v in plain.items() if k not in ("id", "meta")}
        stamp = Stamp(
            source_id,
            master_id,
            source["pk"],
            master["pk"],
            source["last_updated"],
            master["last_updated"],
            source["owner_org"],
            source["author_client"],
            source["request_id"],
        )
        expected = RowMaker(code).rows(resource, stamp, verify=True)
        pks = [source["pk"], master["pk"]]
        keys: dict[str, tuple[str, list[Any]]] = {
            "patient_master": ("master_id = ANY($1::text[])", [master_id]),
            "patient_link": ("source_id = ANY($1::text[])", [source_id]),
            "identity_features": ("source_id = ANY($1::text[])", [source_id]),
            "identity_event": ("source_id = ANY($1::text[])", [source_id]),
        }
        differences = []
        for table in LOADED_TABLES:
            columns = COLUMNS[table]
            where, values = keys.get(table, ("pk = ANY($1::bigint[])", pks))
            rows = await connection.fetch(
                f"SELECT {', '.join(columns)} FROM {table} WHERE {where}", values
            )
            actual = Counter(_comparable(table, columns, tuple(r), protection) for r in rows)
            wanted = Counter(
                _comparable(table, columns, row, protection) for row in expected[table]
            )
            if actual != wanted:
                only_hub = list((actual - wanted).elements())[:2]
                only_loader = list((wanted - actual).elements())[:2]
                differences.append(
                    f"{table}: hub wrote {sum(actual.values())} rows, the loader makes "
                    f"{sum(wanted.values())}; only the hub's: {only_hub}; only the "
                    f"loader's: {only_loader}"
                )
        return differences
    finally:
        await connection.close()


def _comparable(
    table: str, columns: tuple[str, ...], row: tuple[Any, ...], protection: Any
) -> tuple[Any, ...]:
    out: list[Any] = []
    for column, value in zip(columns, row, strict=True):
        if NOW_COLUMNS.get(table) == column:
            continue
        if column in CONTENT_COLUMNS and isinstance(value, str):
            parsed = orjson.loads(value)
            if column == "content":
                parsed = protection.reveal(parsed, full=True)
            value = orjson.dumps(parsed, option=orjson.OPT_SORT_KEYS).decode()
        elif isinstance(value, list):
            value = tuple(value)
        out.append(value)
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _latency_row(label: str, values: list[float], window: float) -> str:
    values = sorted(values)
    p50, p95, p99 = (percentile(values, p) for p in (50, 95, 99))
    rate = len(values) / window if window else 0.0
    return f"  {label:<36} {len(values):>8} {rate:>9.1f} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f}"


def _latency_header(first: str) -> str:
    return f"  {first:<36} {'count':>8} {'per s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"


def _machine_line(result: PhaseResult, label: str = "") -> str:
    cores = os.cpu_count() or 0
    busy = (
        f"machine CPU busy {result.machine_busy * 100:.0f}% of {cores} cores"
        if result.machine_busy is not None
        else "machine CPU not measured"
    )
    note = " (the load generator may be limiting)" if result.client_cpu > CLIENT_CPU_WARNING else ""
    return f"  {label}{busy}; load generator {result.client_cpu * 100:.0f}% of one core{note}"


def _errors(result: PhaseResult) -> Iterator[str]:
    if result.failed or result.unmeasured_errors:
        yield (
            f"  failed: {result.failed} measured"
            + (f", {result.unmeasured_errors} in warm-up/drain" if result.unmeasured_errors else "")
        )
        for key, count in result.errors.most_common():
            yield f"    {key}: {count}"
        for key, sample in list(result.error_samples.items())[:5]:
            yield f"    sample [{key}] {sample[:300]}"


def _size(octets: int) -> str:
    return f"{octets / 2**30:.2f} GiB" if octets >= 2**30 else f"{octets / 2**20:.0f} MiB"


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _concurrencies(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected e.g. 1,8") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrencies must be at least 1")
    return values


def _mix(text: str) -> tuple[float, float, float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected NEW,KNOWN_ID,KNOWN_FUZZY e.g. 50,30,20"
        ) from None
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise argparse.ArgumentTypeError("expected three non-negative weights, e.g. 50,30,20")
    return values[0], values[1], values[2]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.identity",
        description="Patient identity benchmark for Yijian Hub: matching throughput of source "
        "Patient writes and Patient/$match latency, with --masters master patients loaded.",
    )
    parser.add_argument(
        "--masters",
        type=int,
        default=DEFAULT_MASTERS,
        help="master patients to load (default %(default)s)",
    )
    parser.add_argument(
        "--hospitals", type=int, default=8, help="hospitals the loaded people come from "
        "(default %(default)s)"
    )  # fmt: skip
    parser.add_argument(
        "--load-workers",
        type=int,
        default=os.cpu_count() or 2,
        help="processes making and copying rows (default %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        help="reuse this database (migrated if needed, never dropped); loading is skipped "
        "when it holds --masters masters already. Needs the --data-dir it was loaded with",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="the hub's YIJIAN_DATA_DIR (its keys); default: a temporary directory",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the database and the data directory; print how to reuse them",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="PostgreSQL where the fresh database is created (default %(default)s)",
    )
    parser.add_argument("--port", type=int, default=0, help="hub port (default: a free port)")
    parser.add_argument(
        "--workers", type=int, default=2, help="server worker processes (default %(default)s)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="connections writing source Patients (default %(default)s)",
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help="measured seconds of writes "
        "(default %(default)s)"
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unmeasured seconds first (default %(default)s)"
    )
    parser.add_argument(
        "--mix",
        type=_mix,
        default=(50.0, 30.0, 20.0),
        help="weights of new people, loaded people with resident ID, loaded people without "
        "ID with a typo/other phone (default 50,30,20)",
    )
    parser.add_argument(
        "--match-concurrency",
        type=_concurrencies,
        default=[1, 8],
        help="concurrencies of the $match phases (default 1,8)",
    )
    parser.add_argument(
        "--match-duration",
        type=float,
        default=10.0,
        help="measured seconds per $match phase (default %(default)s)",
    )
    parser.add_argument(
        "--match-warmup",
        type=float,
        default=1.0,
        help="unmeasured seconds per $match phase (default %(default)s)",
    )
    parser.add_argument("--skip-writes", action="store_true", help="no matching-throughput phase")
    parser.add_argument("--skip-match", action="store_true", help="no $match phases")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the run's data")
    args = parser.parse_args(argv)
    for name in ("masters", "hospitals", "load_workers", "workers", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.duration, args.match_duration) <= 0 or min(args.warmup, args.match_warmup) < 0:
        parser.error("durations must be positive and warm-ups not negative")
    return args


def hospital_identifier(number: int) -> str:
    return f"{ORG_SYSTEM}|IDENTITY-H{number:02d}"


@dataclass
class Parties:
    """The organizations and clients of the run."""

    writer_org: str
    writer: tuple[str, str]  # client id, secret
    doctor: tuple[str, str]
    loaded_orgs: list[str]
    hospitals: list[tuple[str, str]]  # (org, client id) of loaded hospitals, when loading


def register(own: OwnHub, hospitals: int, loading: bool) -> Parties:
    """Hospitals (the same ones again on a reused database) and fresh clients.

    Registration runs the hub's CLI, a process each: a few at a time.
    """
    numbers = [WRITER_HOSPITAL, *range(1, hospitals + 1), DOCTOR_HOSPITAL]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        ids = pool.map(
            lambda n: own.add_organization(f"身份基准医院{n:02d}", hospital_identifier(n)), numbers
        )
        orgs = dict(zip(numbers, ids, strict=True))
        loaded_orgs = [orgs[n] for n in range(1, hospitals + 1)]
        clients = [
            ("hospital", orgs[WRITER_HOSPITAL], "identity-h00-his"),
            ("doctor", orgs[DOCTOR_HOSPITAL], "identity-doctor"),
        ]
        if loading:  # the loaded rows name their hospitals' clients as their writers
            clients += [
                ("hospital", org, f"identity-h{n:02d}-his") for n, org in enumerate(loaded_orgs, 1)
            ]
        registered = list(pool.map(lambda c: own.add_client(*c), clients))
    return Parties(
        orgs[WRITER_HOSPITAL],
        registered[0],
        registered[1],
        loaded_orgs,
        [(org, client) for org, (client, _) in zip(loaded_orgs, registered[2:], strict=False)],
    )


def print_load(report: LoadReport) -> None:
    if not report.loaded:
        print(f"  skipped: the database holds {report.existing:,} masters already")
        return
    print(
        f"  loaded {report.loaded:,} people ({report.existing:,} were there) in "
        f"{report.total:,.0f} s: rows {report.seconds_rows:,.0f} s "
        f"({report.loaded / report.seconds_rows:,.0f} people/s; worker time making rows "
        f"{report.cpu_make:,.0f} s, copying {report.cpu_copy:,.0f} s), indexes "
        f"{report.seconds_indexes:,.0f} s, VACUUM (ANALYZE) {report.seconds_vacuum:,.0f} s"
    )
    sizes = ", ".join(f"{t} {_size(n)}" for t, n in report.sizes.items() if n > 2**20)
    print(f"  sizes: {sizes}")


@dataclass
class WriteRun:
    result: PhaseResult
    written: list[Written]
    mix: WriteMix
    outcomes: dict[str, Counter[str]]
    fidelity: list[str] | None  # differences; None: no new person to compare


def report_writes(args: argparse.Namespace, run: WriteRun) -> bool:
    """Print the matching-throughput figures; False when the run should fail."""
    result = run.result
    print()
    print(
        f"1. matching throughput: POST Patient by one hospital client, {args.concurrency} "
        f"connections, {args.duration:g} s measured (after {args.warmup:g} s warm-up); each "
        "write = store + match + link + master update, one transaction"
    )
    weights = ", ".join(
        f"{KIND_LABELS[k]} {w / sum(args.mix) * 100:.0f}%"
        for k, w in zip(KINDS, args.mix, strict=True)
    )
    print(f"  mix: {weights}")
    print(_latency_header("kind"))
    for kind in KINDS:
        samples = list(result.latencies.get(kind, ()))
        print(_latency_row(KIND_LABELS[kind], samples, result.window))
    print(_latency_row("all", result.all_latencies(), result.window))
    print(_machine_line(result))
    for line in _errors(result):
        print(line)

    print()
    print(
        f"  outcomes, read from the identity tables for all {len(run.written):,} Patients "
        "written (warm-up included):"
    )
    columns = {
        "linked": "linked to an existing master",
        "new master": "new master",
        "review": "review opened",
        "as expected": "as expected",
    }
    print(f"  {'sent as':<36} {'written':>8}" + "".join(f" {c:>11}" for c in columns))
    unexpected = 0
    for kind in KINDS:
        counts = run.outcomes[kind]
        cells = "".join(f" {counts[key]:>11}" for key in columns.values())
        print(f"  {KIND_LABELS[kind]:<36} {counts['written']:>8}{cells}")
        unexpected += counts["written"] - counts["as expected"]
    print("  expected: " + "; ".join(f"{KIND_LABELS[k]} → {EXPECTED[k]}" for k in KINDS))
    if run.mix.reused:
        print(
            f"  note: the sample of loaded people ran out {run.mix.reused} time(s); some were "
            "sent twice (a second write may be reviewed against the first)"
        )
    if unexpected:
        print(f"  {unexpected} write(s) did not have the outcome their kind should give")
    if run.fidelity is None:
        print("  loader fidelity: not checked (no new person was written)")
    elif run.fidelity:
        print(
            "  loader fidelity: the rows the hub wrote for a new person differ from the rows "
            "the loader makes for the same Patient, so the loaded data is not what this hub "
            "writes (update RowMaker):"
        )
        for difference in run.fidelity:
            print(f"    {difference[:1000]}")
    else:
        print(
            "  loader fidelity: the rows the hub wrote for a new person through the API equal "
            f"the rows the loader makes for the same Patient, in all {len(LOADED_TABLES)} "
            "tables (sealed values opened, now() columns aside)"
        )

    rate = result.ok / result.window
    print()
    print(
        f"  source Patients/s: {rate:,.1f}. Nearest bar (not this capability's own: DESIGN.md "
        "has none for matching): result ingest ≥ 2,000 resources/s end to end with "
        "validation, identity and indexing. A source Patient is one such resource, so "
        f"{rate:,.0f}/2000 = {rate / BAR_INGEST_PER_SECOND:.2f} is an upper bound on an "
        "ingest made of Patients, not a result-ingest measurement."
    )
    error_rate = result.failed / (result.ok + result.failed) if result.ok else 1.0
    return error_rate <= 0.01 and not unexpected and not run.fidelity


def report_matches(
    args: argparse.Namespace, matches: list[tuple[str, int, PhaseResult, MatchOutcome]]
) -> bool:
    """Print the $match figures; False when the run should fail."""
    ok = True
    print()
    print(
        "2. Patient/$match as a doctor client (Parameters with a Patient; default count 10), "
        f"{args.match_duration:g} s per phase after {args.match_warmup:g} s warm-up"
    )
    print(_latency_header("by, concurrency") + f" {'top hit':>8} {'found':>7}")
    for by, concurrency, result, outcome in matches:
        what = "resident ID" if by == "id" else "name + birth date + gender"
        answered = max(outcome.answered, 1)
        print(
            _latency_row(f"{what}, c={concurrency}", result.all_latencies(), result.window)
            + f" {outcome.top_right / answered * 100:>7.1f}%"
            + f" {outcome.found / answered * 100:>6.1f}%"
        )
        for line in _errors(result):
            print(line)
        ok = ok and result.ok > 0 and result.failed <= 0.01 * (result.ok + result.failed)
    for by, concurrency, result, _ in matches:
        print(_machine_line(result, f"{by}, c={concurrency}: "))
    print("  top hit: the person's own master ranked first; found: anywhere in the results")
    print()
    print(
        "  nearest bar (not this capability's own: DESIGN.md has none for $match): reuse "
        "check (CDS hook) at 1M patients, p99 ≤ 20 ms (there with 50 concurrent callers)"
    )
    for by, concurrency, result, _ in matches:
        p99 = percentile(result.all_latencies(), 99)
        print(
            f"    $match by {by}, c={concurrency}: p99 {p99:.1f} ms; ratio {p99:.1f}/20 = "
            f"{p99 / BAR_REUSE_P99_MS:.2f} (≤ 1 would meet that bar)"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit status."""
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    command = shlex.join(
        ["python", "-m", "bench.identity", *(sys.argv[1:] if argv is None else argv)]
    )
    own = OwnHub(
        args.workers,
        args.port or free_port(),
        args.pg_admin_url,
        database_url=args.database_url,
        data_dir=args.data_dir.resolve() if args.data_dir else None,
        keep=args.keep,
    )
    ok = True
    try:
        print("preparing a private hub: database, migrations, hospitals, clients ...", flush=True)
        started = time.monotonic()
        own.prepare(admin_client=False)
        database_url = own.database_url
        if database_url is None:
            raise SetupError(
                "the identity benchmark loads its data with COPY into PostgreSQL: start one "
                f"at --pg-admin-url ({args.pg_admin_url}) or set YIJIAN_DATABASE_URL"
            )
        existing = asyncio.run(count_masters(database_url))
        if existing and args.database_url and not args.data_dir:
            raise SetupError(
                f"the database holds {existing:,} masters sealed with some hub's keys: pass the "
                "--data-dir it was loaded with (printed by the run that used --keep)"
            )
        parties = register(own, args.hospitals, loading=existing < args.masters)
        print(f"  done in {time.monotonic() - started:.0f} s; database: {own.database}")

        print(
            f"loading {args.masters:,} master patients with COPY "
            f"({args.load_workers} worker processes) ...",
            flush=True,
        )
        report = load(database_url, own.env, parties.hospitals, args.masters, args.load_workers)
        print_load(report)
        if report.orphans:
            raise SetupError(f"the load left {report.orphans} rows without their parent")

        code = HubCode.build(own.env)
        known_share = sum(args.mix[1:]) / sum(args.mix)
        known_needed = 0 if args.skip_writes else int(
            (args.warmup + args.duration) * MAX_WRITES_PER_SECOND * known_share
        )  # fmt: skip
        people, loaded_people = asyncio.run(
            sample_known(database_url, code, parties.loaded_orgs, known_needed + MATCH_PEOPLE, seed)
        )
        if not people:
            raise SetupError("no loaded people found to send again or to $match")
        match_pool, write_pool = people[:MATCH_PEOPLE], people[MATCH_PEOPLE:]

        print(f"starting the hub ({args.workers} workers) ...", flush=True)
        own.serve()
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        speed_before = cpu_calibration()

        write_run: WriteRun | None = None
        if not args.skip_writes:
            print(
                f"measuring source Patient writes: {args.concurrency} connections, "
                f"{args.warmup:g} s warm-up + {args.duration:g} s ...",
                flush=True,
            )
            mix = WriteMix(parties.writer_org, write_pool, args.mix, seed)
            writer = Client(own.base_url, *parties.writer)
            result, written = write_phase(writer, mix, args.concurrency, args.warmup, args.duration)
            outcomes = asyncio.run(verify_outcomes(database_url, written))
            new = next((w.source_id for w in written if w.kind == NEW), None)
            fidelity = (
                asyncio.run(check_fidelity(database_url, code, new)) if new is not None else None
            )
            write_run = WriteRun(result, written, mix, outcomes, fidelity)
        matches: list[tuple[str, int, PhaseResult, MatchOutcome]] = []
        if not args.skip_match:
            doctor = Client(own.base_url, *parties.doctor)
            for by in ("id", "demographics"):
                for concurrency in args.match_concurrency:
                    print(f"measuring $match by {by}, concurrency {concurrency} ...", flush=True)
                    result, outcome = match_phase(
                        doctor, match_pool, by, concurrency, args.match_warmup, args.match_duration
                    )
                    matches.append((by, concurrency, result, outcome))
        speed_after = cpu_calibration()

        print()
        print("Yijian Hub - patient identity benchmark (matching throughput, Patient/$match)")
        print(
            f"machine: nproc={os.cpu_count() or 0}; server: started by the benchmark, "
            f"{args.workers} workers; database: {own.database}"
        )
        print(
            f"machine speed: a 10M-step Python loop took {speed_before:.2f} s before the "
            f"measurements, {speed_after:.2f} s after (compare runs only at similar speeds: "
            "this shared machine's CPU varies)"
        )
        if load_before is not None:
            print(
                f"load average before the measurements: {load_before:.2f} (other work on the "
                "machine competes with the server for its cores)"
            )
        print(f"command: {command}")
        print(f"seed: {seed}")
        print(
            f"data: {report.existing + report.loaded:,} master patients; {loaded_people:,} "
            f"loaded people with one source Patient each from {args.hospitals} hospitals, "
            + (
                f"loaded in {report.total:,.0f} s"
                if report.loaded
                else "loaded by an earlier run (other masters come from earlier runs' writes)"
            )
        )
        if write_run is not None:
            ok = report_writes(args, write_run) and ok
        if matches:
            ok = report_matches(args, matches) and ok
        problems, excerpt = own.server_log_problems()
        if problems:
            print(f"\nserver log: {problems} traceback/ERROR lines; first:\n{excerpt}")
        if args.keep:
            print()
            print(f"kept: database {database_url}")
            print(f"      data directory (keys) {own.data_dir}")
            print(
                "re-run without loading: python -m bench.identity "
                f"--database-url {shlex.quote(database_url)} --data-dir {own.data_dir} "
                f"--masters {args.masters}"
            )
    except (SetupError, TokenError, RuntimeError, OSError, asyncpg.PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if own.log_path is not None and not isinstance(exc, SetupError):
            print(f"server log (tail):\n{own.log_tail()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        own.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
