"""Access by purpose of use benchmark: what the purpose filter costs on reads, and what
establishing a purpose costs.

DESIGN.md sets no bar for the filter; the nearest is the FHIR CRUD bar (p99 ≤ 50 ms on this
2-core machine, database included), and every figure is also compared with the admin's: the
admin reads with no purpose filter, so doctor / admin is what the filter adds.

What it does:

1. starts a private hub (``bench._harness.OwnHub``) on a fresh database and registers, with
   the CLI as a deployment would, hospitals A and B and the clients: a hospital client for
   each, and doctors and a consultant at B (plus the harness's admin);
2. loads, through the FHIR API as the hospitals (one transaction Bundle per person and
   hospital: the Patient, a CBC order, its ``OBSERVATIONS`` results and their report),
   ``--patients`` people at hospital A and, for one in ``--linked-every``, the same person
   (same resident ID, so the identity service links the two records) at hospital B;
3. gives the readers their purposes, through the API:

   a. ``admin``: none needed (no purpose filter: the baseline);
   b. ``doctor``: one live TREAT grant (``POST /access/grants``) on the person read;
   c. ``busy doctor``: ``--busy-grants`` live TREAT grants (a busy ward), one of them on the
      person read;
   d. ``consultant``: one consultation on the person sharing 3 of hospital A's results;

4. measures, for each reader, one person's record (records at A and B) read as
   ``Observation?patient=Patient/<A's id>``, ``Patient/<A's id>/$everything`` and
   ``Observation/<id>`` (a result the consultation shares), with 1 and ``--callers``
   concurrent callers (a closed loop: each caller sends its next request when the last is
   answered), ``--warmup`` then ``--duration`` seconds each; every caller reads the same
   person so that the readers differ only in their filter (the consultant sees less: the
   table gives entries per answer);
5. measures establishing a purpose with ``POST /access/grants``: TREAT on a person not yet
   granted (a care relationship is checked and a grant written), TREAT again (the grant in
   force is found and returned) and ETREAT (break-glass: always a new grant, logged);
6. prints a table of p50/p99/throughput with the ratios to the admin's and to the CRUD bar.

Usage::

    python -m bench.access                              # 2,000 people, ~2.5 minutes
    python -m bench.access --patients 500 --duration 2  # quicker
    python -m bench.access --explain                    # and where a filtered search's time goes

The exit status is 0 whether or not the figures are good (this is a measurement); 1 when more
than 1% of the measured requests failed or nothing was measured; 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import random
import shlex
import sys
import time
import uuid
from array import array
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson

from bench._harness import (
    LoadProcesses,
    OwnHub,
    SetupError,
    admin_sql,
    cpu_calibration,
    free_port,
    percentile,
    read_cpu_jiffies,
)
from tests.demographics import Demographics, patient_resource

BAR_P99_MS = 50.0  # the FHIR CRUD bar of DESIGN.md: the nearest one to a filtered read
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FHIR_JSON = "application/fhir+json"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
EMERGENCY = "急诊抢救，患者昏迷无法提供病史 (benchmark: unconscious patient in the ER)"

# A CBC panel's results: (LOINC, Chinese name, value, UCUM unit, reference range).
OBSERVATIONS = (
    ("6690-2", "白细胞计数", 6.2, "10*9/L", (3.5, 9.5)),
    ("789-8", "红细胞计数", 4.5, "10*12/L", (3.8, 5.1)),
    ("718-7", "血红蛋白", 135, "g/L", (115, 150)),
    ("777-3", "血小板计数", 210, "10*9/L", (125, 350)),
    ("4544-3", "红细胞压积", 41.0, "%", (35.0, 45.0)),
)
READERS = ("admin", "doctor", "busy doctor", "consultant")
READS = ("search", "everything", "read")

# --------------------------------------------------------------------------------------------
# The data: one transaction Bundle per person and hospital
# --------------------------------------------------------------------------------------------


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def record_bundle(patient: dict[str, Any], organization: str, when: str) -> dict[str, Any]:
    """A transaction: the hospital's Patient, a CBC order, its results and their report."""
    org = {"reference": f"Organization/{organization}"}
    patient_urn, order_urn = _urn(), _urn()
    subject = {"reference": patient_urn}
    resources: list[tuple[str, dict[str, Any]]] = [
        (patient_urn, patient),
        (
            order_urn,
            {
                "resourceType": "ServiceRequest",
                "status": "completed",
                "intent": "order",
                "code": {"coding": [{"system": LOINC, "code": "58410-2"}], "text": "血常规"},
                "subject": subject,
                "performer": [org],
            },
        ),
    ]
    results = []
    for code, name, value, unit, (low, high) in OBSERVATIONS:
        result_urn = _urn()
        results.append({"reference": result_urn})
        resources.append(
            (
                result_urn,
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "basedOn": [{"reference": order_urn}],
                    "code": {"coding": [{"system": LOINC, "code": code}], "text": name},
                    "subject": subject,
                    "effectiveDateTime": when,
                    "performer": [org],
                    "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
                    "referenceRange": [{"low": {"value": low}, "high": {"value": high}}],
                },
            )
        )
    resources.append(
        (
            _urn(),
            {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "basedOn": [{"reference": order_urn}],
                "code": {"coding": [{"system": LOINC, "code": "58410-2"}], "text": "血常规"},
                "subject": subject,
                "effectiveDateTime": when,
                "performer": [org],
                "result": results,
            },
        )
    )
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": u, "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
            for u, r in resources
        ],
    }


@dataclass
class Stored:
    """One hospital's record of a person as stored: the Patient id and the results' ids."""

    patient: str
    observations: list[str]


def _stored(answer: dict[str, Any]) -> Stored:
    keys = ["/".join(e["response"]["location"].split("/")[:2]) for e in answer["entry"]]
    patient = next(k for k in keys if k.startswith("Patient/")).removeprefix("Patient/")
    return Stored(patient, [k for k in keys if k.startswith("Observation/")])


async def _token(session: aiohttp.ClientSession, base_url: str, client: tuple[str, str]) -> str:
    form = {"grant_type": "client_credentials", "client_id": client[0], "client_secret": client[1]}
    async with session.post(f"{base_url}/auth/token", data=form) as response:
        body = await response.read()
        if response.status != 200:
            raise SetupError(f"POST /auth/token -> {response.status}: {body[:300]!r}")
    return f"Bearer {orjson.loads(body)['access_token']}"


async def load_records(
    base_url: str,
    hospitals: dict[str, tuple[str, tuple[str, str]]],
    patients: int,
    linked_every: int,
    connections: int,
    seed: int,
) -> tuple[list[Stored], list[Stored | None]]:
    """Every person's record at A, and at B for one in ``linked_every`` (else None)."""
    people = Demographics(seed)
    now = datetime.now(UTC)
    persons = [people.person() for _ in range(patients)]
    at_a: list[Stored | None] = [None] * patients
    at_b: list[Stored | None] = [None] * patients
    jobs = [(i, "A") for i in range(patients)]
    jobs += [(i, "B") for i in range(0, patients, linked_every)]
    queue = iter(jobs)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as s:
        headers = {
            name: {
                "Authorization": await _token(s, base_url, client),
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
            }
            for name, (_, client) in hospitals.items()
        }

        async def loader() -> None:
            for i, hospital in queue:
                organization = hospitals[hospital][0]
                when = now - timedelta(days=1 + i % 30, hours=2 if hospital == "B" else 0)
                bundle = record_bundle(
                    patient_resource(persons[i], organization, f"BENCH-{hospital}-{i:06d}"),
                    organization,
                    when.isoformat(timespec="seconds"),
                )
                async with s.post(
                    f"{base_url}/fhir", data=orjson.dumps(bundle), headers=headers[hospital]
                ) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise SetupError(
                            f"loading hospital {hospital}'s record {i}: {response.status} "
                            f"{body[:500]!r}"
                        )
                (at_a if hospital == "A" else at_b)[i] = _stored(orjson.loads(body))

        await asyncio.gather(*(loader() for _ in range(connections)))
    assert all(x is not None for x in at_a)
    return [x for x in at_a if x is not None], at_b


# --------------------------------------------------------------------------------------------
# The load: closed-loop callers in a separate process
# --------------------------------------------------------------------------------------------


@dataclass
class PhasePlan:
    """One measured phase: ``callers`` callers of one client sending ``requests`` in turn."""

    base_url: str
    client: tuple[str, str]
    method: str
    requests: list[str | bytes]  # GET: paths; POST: JSON bodies (to /access/grants)
    callers: int
    warmup: float
    duration: float
    once: bool = False  # each request at most once (the phase ends when they run out)


@dataclass
class PhaseResult:
    latencies: array[float] = field(default_factory=lambda: array("d"))  # ms, measured only
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    window: float = 0.0  # measured seconds
    client_cpu: float = 0.0  # share of one core the load process used in the window
    machine_busy: float = math.nan  # share of all cores busy in the window

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def stats(self) -> tuple[float, float, float]:
        """(p50 ms, p99 ms, answers per second)."""
        ordered = sorted(self.latencies)
        rate = self.ok / self.window if self.window > 0 else 0.0
        return percentile(ordered, 50), percentile(ordered, 99), rate


async def run_phase(plan: PhasePlan) -> PhaseResult:
    result = PhaseResult()
    connector = aiohttp.TCPConnector(limit=plan.callers, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        auth = await _token(session, plan.base_url, plan.client)
        headers = {"Authorization": auth, "Accept": FHIR_JSON}
        if plan.method == "POST":
            headers["Content-Type"] = "application/json"
        source = iter(plan.requests) if plan.once else itertools.cycle(plan.requests)
        started = time.monotonic()
        window_start = started + plan.warmup
        window_end = window_start + plan.duration
        cpu_start: float | None = None
        last_end = window_start

        async def caller() -> None:
            nonlocal cpu_start, last_end
            while (now := time.monotonic()) < window_end:
                if cpu_start is None and now >= window_start:
                    cpu_start = time.process_time()
                request = next(source, None)
                if request is None:
                    return
                if plan.method == "GET":
                    call = session.get(plan.base_url + str(request), headers=headers)
                else:
                    url = f"{plan.base_url}/access/grants"
                    call = session.post(url, data=request, headers=headers)
                begin = time.monotonic()
                try:
                    async with call as response:
                        await response.read()
                        status = response.status
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    status, end = -1, time.monotonic()
                    result.errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                end = time.monotonic()
                if begin < window_start:
                    continue
                last_end = max(last_end, end)
                if status in (200, 201):
                    result.latencies.append((end - begin) * 1000.0)
                else:
                    result.failed += 1
                    if status > 0:
                        result.errors[str(status)] += 1

        jiffies = read_cpu_jiffies()
        await asyncio.gather(*(caller() for _ in range(plan.callers)))
        after = read_cpu_jiffies()
        result.window = max(0.0, min(last_end, window_end) - window_start)
        if cpu_start is not None and result.window > 0:
            result.client_cpu = (time.process_time() - cpu_start) / result.window
        if jiffies and after and after[1] > jiffies[1]:
            result.machine_busy = (after[0] - jiffies[0]) / (after[1] - jiffies[1])
    return result


def _phase_process(plan: PhasePlan, connection: Any) -> None:
    try:
        connection.send(("ok", asyncio.run(run_phase(plan))))
    except Exception as exc:  # sent to the parent, which reports it
        connection.send(("error", repr(exc)))
    finally:
        connection.close()


def measure(plan: PhasePlan) -> PhaseResult:
    """Run one phase in a load process of its own (its CPU apart from the measuring one)."""
    with LoadProcesses(_phase_process, [plan]) as processes:
        return processes.results()[0]


# --------------------------------------------------------------------------------------------
# Setting up the readers' purposes
# --------------------------------------------------------------------------------------------


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    auth: str,
    body: dict[str, Any] | None = None,
    expected: tuple[int, ...] = (200, 201),
) -> dict[str, Any]:
    data = orjson.dumps(body) if body is not None else None
    headers = {"Authorization": auth, "Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with session.request(method, url, data=data, headers=headers) as response:
        answer = await response.read()
        if response.status not in expected:
            raise SetupError(f"{method} {url} -> {response.status}: {answer[:500]!r}")
    return dict(orjson.loads(answer)) if answer else {}


@dataclass
class Setup:
    """The person read, the paths of the three reads, and what each reader sees of them."""

    paths: dict[str, str]
    entries: dict[tuple[str, str], int]  # (reader, read) -> entries in the answer (read: 1)
    treat_new: list[bytes]  # TREAT bodies for people the grant doctor has no grant on
    etreat: list[bytes]


async def give_purposes(
    base_url: str,
    clients: dict[str, tuple[str, str]],
    at_a: list[Stored],
    at_b: list[Stored | None],
    busy_grants: int,
) -> Setup:
    linked = [i for i, b in enumerate(at_b) if b is not None]
    if len(linked) < busy_grants + 2:
        raise SetupError(
            f"{len(linked)} people have a record at B: too few for --busy-grants {busy_grants}"
        )
    target = at_a[linked[0]]
    paths = {
        "search": f"/fhir/Observation?patient=Patient/{target.patient}",
        "everything": f"/fhir/Patient/{target.patient}/$everything",
        "read": f"/fhir/{target.observations[0]}",
    }
    async with aiohttp.ClientSession() as s:
        auth = {name: await _token(s, base_url, client) for name, client in clients.items()}
        grants = f"{base_url}/access/grants"

        def treat(patient: str) -> dict[str, Any]:
            return {"patient": f"Patient/{patient}", "purposeOfUse": "TREAT"}

        await _call(s, "POST", grants, auth["doctor"], treat(target.patient))
        # The busy ward: the person read and busy_grants - 1 others, all in the doctor's care.
        for i in linked[:busy_grants]:
            await _call(s, "POST", grants, auth["busy doctor"], treat(at_a[i].patient))
        expires = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        await _call(
            s,
            "POST",
            f"{base_url}/consultations",
            auth["doctor"],
            {
                "patient": f"Patient/{target.patient}",
                "consultant": clients["consultant"][0],
                "question": "请协助判读血常规 (benchmark consultation)",
                "share": {"items": target.observations[:3]},
                "expires": expires,
                "consent": {"method": "written", "note": "患者本人签字"},
            },
        )
        entries: dict[tuple[str, str], int] = {}
        for reader in READERS:
            for read, path in paths.items():
                answer = await _call(s, "GET", base_url + path, auth[reader])
                entries[reader, read] = len(answer.get("entry", [])) if read != "read" else 1
    # TREAT for people not yet granted: those linked ones the busy doctor did not take
    # (the grant doctor is another client: any person with a record at B is new to it).
    treat_new = [
        orjson.dumps({"patient": f"Patient/{at_a[i].patient}", "purposeOfUse": "TREAT"})
        for i in linked[1:]
    ]
    etreat = [
        orjson.dumps({"patient": f"Patient/{p.patient}", "purposeOfUse": "ETREAT",
                      "reason": EMERGENCY})
        for p in at_a
    ]  # fmt: skip
    return Setup(paths, entries, treat_new, etreat)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    if not (base > 0) or math.isnan(value) or math.isnan(base):
        return "-"
    return f"{value / base:.2f}x"


def _errors(result: PhaseResult) -> str:
    if not result.failed:
        return ""
    return " failed " + ", ".join(f"{k}×{v}" for k, v in result.errors.most_common(4))


def print_reads(
    results: dict[tuple[str, str, int], PhaseResult],
    entries: dict[tuple[str, str], int],
    concurrencies: list[int],
) -> None:
    print(
        f"{'read':<11}{'reader':<12}{'conc':>5}{'n':>7}{'entries':>8}{'req/s':>8}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'p50/adm':>9}{'p99/adm':>9}{'rps/adm':>9}"
        f"{'p99/50ms':>9}{'cpu':>5}"
    )
    for read in READS:
        for concurrency in concurrencies:
            base = results.get(("admin", read, concurrency))
            b50, b99, brate = base.stats() if base else (math.nan, math.nan, math.nan)
            for reader in READERS:
                result = results.get((reader, read, concurrency))
                if result is None:
                    continue
                p50, p99, rate = result.stats()
                print(
                    f"{read:<11}{reader:<12}{concurrency:>5}{result.ok:>7}"
                    f"{entries.get((reader, read), 0):>8}{rate:>8.0f}{p50:>8.2f}{p99:>8.2f}"
                    f"{_ratio(p50, b50):>9}{_ratio(p99, b99):>9}{_ratio(rate, brate):>9}"
                    f"{_ratio(p99, BAR_P99_MS):>9}{result.machine_busy * 100:>4.0f}%"
                    + _errors(result)
                )
        print()


def print_grants(results: list[tuple[str, int, PhaseResult]]) -> None:
    print(
        f"{'POST /access/grants':<34}{'conc':>5}{'n':>7}{'req/s':>8}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'p99/50ms':>9}{'cpu':>5}"
    )
    for label, concurrency, result in results:
        p50, p99, rate = result.stats()
        print(
            f"{label:<34}{concurrency:>5}{result.ok:>7}{rate:>8.0f}{p50:>8.2f}{p99:>8.2f}"
            f"{_ratio(p99, BAR_P99_MS):>9}{result.machine_busy * 100:>4.0f}%" + _errors(result)
        )


# --------------------------------------------------------------------------------------------
# Where a filtered read's time goes (--explain)
# --------------------------------------------------------------------------------------------


class StatementRecorder:
    """A stand-in connection for a repository: sends each statement on and records it."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        self.statements.append((query, args))
        return list(await self.connection.fetch(query, *args))


async def explain_filter(own: OwnHub, clients: dict[str, tuple[str, str]], search: str) -> None:
    """For each doctor and the consultant: the time of the two steps the purpose filter adds
    to a search — finding the caller's live grants (``AccessService.access``) and the filtered
    search statement — built by the hub's own code, and the statement's EXPLAIN ANALYZE."""
    import asyncpg

    from hub.runtime import Hub
    from hub.security.principals import ClientKind, Principal
    from hub.settings import load_settings
    from hub.storage.resources import ResourceRepository

    if own.database_url is None or own.data_dir is None:
        print("  (needs the hub's database on PostgreSQL: see --pg-admin-url)")
        return
    hub = Hub.build(load_settings(database_url=own.database_url, data_dir=own.data_dir))
    patient = search.rsplit("Patient/", 1)[1]
    request = hub.records._parse("Observation", [("patient", f"Patient/{patient}")], False)
    connection = await asyncpg.connect(own.database_url)
    try:
        for reader in READERS[1:]:
            kind = ClientKind.CONSULTANT if reader == "consultant" else ClientKind.DOCTOR
            organization = await connection.fetchval(
                "SELECT organization FROM api_client WHERE client_id = $1", clients[reader][0]
            )
            principal = Principal(clients[reader][0], reader, kind, organization, frozenset())
            started = time.perf_counter()
            for _ in range(20):
                access = await hub.records.access.access(connection, principal)
            finding = (time.perf_counter() - started) / 20 * 1000

            recorder = StatementRecorder(connection)
            await ResourceRepository(recorder).search(request, access.filter)  # type: ignore[arg-type]
            query, args = recorder.statements[-1]
            started = time.perf_counter()
            for _ in range(20):
                await connection.fetch(query, *args)
            searching = (time.perf_counter() - started) / 20 * 1000
            plan = [r[0] for r in await connection.fetch("EXPLAIN (ANALYZE) " + query, *args)]
            subplans = sum(1 for line in plan if line.strip().startswith("SubPlan"))
            scopes = len(access.filter.scopes or ())
            print(
                f"  {reader}: {len(access.grants)} live grant(s), {scopes} scope(s); finding "
                f"them {finding:.2f} ms; the filtered search statement {searching:.2f} ms "
                f"({subplans} subplan(s); {plan[-2].strip()}; {plan[-1].strip()})"
            )
    finally:
        await connection.close()
        await hub.database.dispose()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.access",
        description="What access by purpose of use costs on reads, and what establishing a "
        "purpose costs (no bar in DESIGN.md; compared with the admin's unfiltered reads and "
        "the CRUD bar, p99 ≤ 50 ms).",
    )
    parser.add_argument("--patients", type=int, default=2000, help="people at hospital A")
    parser.add_argument(
        "--linked-every",
        type=int,
        default=4,
        help="one person in N also has a record at hospital B (default %(default)s)",
    )
    parser.add_argument(
        "--busy-grants", type=int, default=50, help="live grants of the busy doctor"
    )
    parser.add_argument(
        "--callers", type=int, default=8, help="concurrent callers besides 1 (default 8)"
    )
    parser.add_argument("--duration", type=float, default=2.5, help="measured s per phase")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured s per phase")
    parser.add_argument("--workers", type=int, default=2, help="hub worker processes")
    parser.add_argument("--load-connections", type=int, default=8, help="for loading the data")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--explain",
        action="store_true",
        help="also time the filter's two steps and EXPLAIN ANALYZE the filtered search",
    )
    parser.add_argument("--keep", action="store_true", help="keep the database and keys")
    args = parser.parse_args(argv)
    for name in ("patients", "linked_every", "busy_grants", "callers", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    command = shlex.join([sys.executable, "-m", "bench.access", *(argv or sys.argv[1:])])
    own = OwnHub(args.workers, free_port(), args.pg_admin_url, keep=args.keep)
    speed_before = cpu_calibration()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    failed_share = 1.0
    started = time.monotonic()
    try:
        print("preparing a private hub: database, migrations, clients ...", flush=True)
        own.prepare()
        org_a = own.add_organization("杭州市第一人民医院", "https://bench.yijian.invalid/org|ACC-A")
        org_b = own.add_organization(
            "浙江大学医学院附属第二医院", "https://bench.yijian.invalid/org|ACC-B"
        )
        wanted = {
            "hospital A": ("hospital", org_a),
            "hospital B": ("hospital", org_b),
            "doctor": ("doctor", org_b),
            "busy doctor": ("doctor", org_b),
            "grant doctor": ("doctor", org_b),
            "consultant": ("consultant", org_b),
        }
        with ThreadPoolExecutor(len(wanted)) as pool:
            registered = dict(
                zip(
                    wanted,
                    pool.map(
                        lambda item: own.add_client(item[0], item[1], "bench-access"),
                        wanted.values(),
                    ),
                    strict=True,
                )
            )
        clients = {"admin": (own.client_id, own.client_secret), **registered}
        own.serve()
        print(
            f"loading {args.patients:,} people at hospital A and every {args.linked_every}th "
            "at B (one transaction Bundle each) ...",
            flush=True,
        )
        began = time.monotonic()
        at_a, at_b = asyncio.run(
            load_records(
                own.base_url,
                {"A": (org_a, clients["hospital A"]), "B": (org_b, clients["hospital B"])},
                args.patients,
                args.linked_every,
                args.load_connections,
                seed,
            )
        )
        linked = sum(1 for b in at_b if b is not None)
        load_seconds = time.monotonic() - began
        print(f"  {args.patients + linked:,} bundles in {load_seconds:.0f} s", flush=True)
        # Planner statistics as autovacuum would have them in a running hub (a freshly loaded
        # database has none: the admin's $everything took ~130 ms on scans before this).
        admin_sql(own.database_url, "ANALYZE")
        setup = asyncio.run(give_purposes(own.base_url, clients, at_a, at_b, args.busy_grants))

        concurrencies = sorted({1, args.callers})
        reads: dict[tuple[str, str, int], PhaseResult] = {}
        for read, path in setup.paths.items():
            for concurrency in concurrencies:
                for reader in READERS:
                    print(f"  {read} as {reader}, {concurrency} caller(s) ...", flush=True)
                    reads[reader, read, concurrency] = measure(
                        PhasePlan(
                            own.base_url,
                            clients[reader],
                            "GET",
                            [path],
                            concurrency,
                            args.warmup,
                            args.duration,
                        )
                    )
        grants: list[tuple[str, int, PhaseResult]] = []
        halves = [setup.treat_new[0::2], setup.treat_new[1::2]]
        for concurrency, bodies in zip(concurrencies, halves, strict=False):
            print(f"  TREAT, new grants, {concurrency} caller(s) ...", flush=True)
            plan = PhasePlan(
                own.base_url, clients["grant doctor"], "POST", list(bodies), concurrency, 0.0,
                args.duration, once=True,
            )  # fmt: skip
            grants.append(("TREAT, new (care checked, inserted)", concurrency, measure(plan)))
        for concurrency in concurrencies:
            print(f"  TREAT again, {concurrency} caller(s) ...", flush=True)
            plan = PhasePlan(
                own.base_url, clients["grant doctor"], "POST", setup.treat_new, concurrency,
                args.warmup, args.duration,
            )  # fmt: skip
            grants.append(("TREAT again (grant in force found)", concurrency, measure(plan)))
        for concurrency in concurrencies:
            print(f"  ETREAT, {concurrency} caller(s) ...", flush=True)
            plan = PhasePlan(
                own.base_url, clients["grant doctor"], "POST", setup.etreat, concurrency,
                args.warmup, args.duration,
            )  # fmt: skip
            grants.append(("ETREAT (break-glass, inserted)", concurrency, measure(plan)))
        speed_after = cpu_calibration()

        print()
        print("Yijian Hub - access by purpose of use benchmark")
        print(
            f"machine: nproc={os.cpu_count() or 0}; a 10M-step Python loop took "
            f"{speed_before:.2f} s before, {speed_after:.2f} s after (a shared machine: "
            "compare runs only at similar speeds)"
            + (f"; load average before {load_before:.2f}" if load_before is not None else "")
        )
        print(f"server: {args.workers} workers; database: {own.database}")
        print(f"command: {command}")
        print(f"seed: {seed}; run took {time.monotonic() - started:.0f} s")
        print(
            f"data: {args.patients:,} people at hospital A, {linked:,} of them also at B, each "
            f"record a Patient + CBC order + {len(OBSERVATIONS)} Observations + report "
            f"(loaded in {load_seconds:.0f} s)"
        )
        print(
            "readers: admin (no purpose filter); doctor (1 TREAT grant, on the person read); "
            f"busy doctor ({args.busy_grants} TREAT grants); consultant (1 consultation "
            "sharing 3 of the person's results)"
        )
        print(
            "reads of one person (records at A and B): "
            + "; ".join(f"{k} = GET {v}" for k, v in setup.paths.items())
        )
        print(
            f"each phase: {args.warmup:g} s warm-up + {args.duration:g} s closed loop; "
            "cpu = whole machine busy; ratios: /adm to the admin's figure at the same "
            f"concurrency, p99/50ms to the CRUD bar's p99 ({BAR_P99_MS:g} ms)"
        )
        print()
        print_reads(reads, setup.entries, concurrencies)
        print_grants(grants)
        if args.explain:
            print()
            print(
                "where a filtered search's time goes (Observation?patient=…, in-process, the "
                "hub's own code and SQL; 20 runs each):"
            )
            asyncio.run(explain_filter(own, clients, setup.paths["search"]))
        problems, excerpt = own.server_log_problems()
        if problems:
            print(f"\nserver log: {problems} traceback/ERROR lines; first:\n{excerpt}")
        everything = list(reads.values()) + [g[2] for g in grants]
        measured = sum(r.ok + r.failed for r in everything)
        failed_share = sum(r.failed for r in everything) / measured if measured else 1.0
    except (SetupError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if own.log_path is not None and not isinstance(exc, SetupError):
            print(f"server log (tail):\n{own.log_tail()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        own.stop()
    return 0 if failed_share <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
