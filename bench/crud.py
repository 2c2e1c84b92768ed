"""FHIR CRUD mix benchmark: create, read, update and delete over the hub's REST API.

Quality bar (see DESIGN.md): at least 1,000 requests/s with p99 at most 50 ms on this 2-core
machine, database included. Anchor: the best published FHIR servers manage about 500
requests/s per vCPU with p99 between 35 and 77 ms.

Each virtual client loops over one *cycle* of 20 requests:

1. create a Patient, an Organization, a Practitioner, an Encounter (subject -> the Patient,
   serviceProvider -> the Organization, participant -> the Practitioner) and an Observation
   (final laboratory result with a LOINC code and a UCUM valueQuantity; subject -> the Patient,
   performer -> the Organization, encounter -> the Encounter);
2. read each of them;
3. update each of them (one field changed, ``PUT`` with ``If-Match: W/"<versionId>"``);
4. delete each of them, referrers before their targets: Observation, Encounter, Practitioner,
   Organization, Patient.

Usage::

    python -m bench.crud                           # start a private hub, then measure
    python -m bench.crud --duration 15 --workers 2
    python -m bench.crud --no-start --base-url http://127.0.0.1:8000 \\
        --client-id ID --client-secret SECRET     # measure a hub that is already running

With no running hub at ``--base-url`` (or with ``--start``) the benchmark starts its own:
``yijian db upgrade``, ``yijian orgs add``, ``yijian clients add --kind admin`` and
``yijian serve``, using the ``yijian`` installed next to the current interpreter. The database
is ``YIJIAN_DATABASE_URL`` when set; otherwise a fresh database ``yijian_bench_<random>`` on
the PostgreSQL server answering at ``--pg-admin-url`` (dropped afterwards); otherwise the
embedded PostgreSQL under a temporary ``YIJIAN_DATA_DIR``.

The load generator is deliberately cheap (one aiohttp session with a keep-alive pool per
process, orjson, pre-built headers) because it shares the machine's cores with the server and
the database. It reports its own CPU use so that a client-bound run is recognisable.

The exit status is 0 whether or not the bar is met (this is a measurement); it is 1 when more
than 1% of the measured requests failed or nothing was measured, 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import secrets
import shlex
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

import aiohttp
import orjson

from bench._harness import (
    BENCH_SYSTEM,
    LoadProcesses,
    OwnHub,
    SetupError,
    cpu_calibration,
    free_port,
    http_answers,
    percentile,
    read_cpu_jiffies,
)

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

BAR_REQUESTS_PER_SECOND = 1000.0
BAR_P99_MS = 50.0

CREATE_ORDER = ("Patient", "Organization", "Practitioner", "Encounter", "Observation")
DELETE_ORDER = ("Observation", "Encounter", "Practitioner", "Organization", "Patient")
OPERATIONS = ("create", "read", "update", "delete")
REQUESTS_PER_CYCLE = len(CREATE_ORDER) * len(OPERATIONS)

FHIR_JSON = "application/fhir+json"
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CLIENT_CPU_WARNING = 0.80  # fraction of one core above which the generator may be the limit
CN_TZ = timezone(timedelta(hours=8))

# --------------------------------------------------------------------------------------------
# Realistic Chinese demographics and laboratory results
# --------------------------------------------------------------------------------------------

# The most common family names, roughly weighted by frequency.
FAMILY_NAMES: tuple[tuple[str, int], ...] = (
    ("王", 72), ("李", 71), ("张", 68), ("刘", 54), ("陈", 45), ("杨", 31), ("黄", 24),
    ("赵", 20), ("吴", 20), ("周", 19), ("徐", 15), ("孙", 15), ("马", 14), ("朱", 13),
    ("胡", 13), ("郭", 12), ("何", 11), ("林", 11), ("高", 11), ("罗", 10), ("郑", 10),
    ("梁", 9), ("谢", 8), ("宋", 7), ("唐", 7), ("许", 7), ("韩", 7), ("冯", 7), ("邓", 7),
    ("曹", 6), ("欧阳", 1), ("司马", 1),
)  # fmt: skip
GIVEN_NAMES: dict[str, tuple[str, ...]] = {
    "female": (
        "芳", "娜", "敏", "静", "丽", "艳", "秀英", "婷", "雪", "慧", "玉兰", "桂英", "丹",
        "霞", "萍", "红梅", "欣怡", "梓涵", "诗涵", "雨桐", "佳怡", "晓燕", "淑珍", "海燕",
    ),
    "male": (
        "伟", "强", "磊", "军", "洋", "勇", "杰", "涛", "明", "超", "建国", "志强", "建华",
        "俊杰", "浩然", "子轩", "宇航", "国庆", "海波", "文博", "鹏", "斌", "辉", "建军",
    ),
}  # fmt: skip
PLACES: tuple[tuple[str, str, str, str], ...] = (
    # (province, city, district, administrative division code)
    ("浙江省", "杭州市", "西湖区", "330106"),
    ("浙江省", "宁波市", "鄞州区", "330212"),
    ("江苏省", "南京市", "鼓楼区", "320106"),
    ("广东省", "广州市", "天河区", "440106"),
    ("四川省", "成都市", "武侯区", "510107"),
    ("湖北省", "武汉市", "江汉区", "420103"),
    ("山东省", "济南市", "历下区", "370102"),
    ("北京市", "北京市", "海淀区", "110108"),
    ("上海市", "上海市", "浦东新区", "310115"),
    ("福建省", "厦门市", "思明区", "350203"),
)
STREETS = ("文三路", "中山路", "人民路", "解放路", "建设路", "和平路", "学院路", "长江路")
HOSPITAL_SUFFIXES = (
    "人民医院", "第一人民医院", "中医院", "妇幼保健院", "中心医院", "社区卫生服务中心",
)  # fmt: skip
PRACTITIONER_TITLES = ("主任医师", "副主任医师", "主治医师", "住院医师", "主管检验师", "检验师")
ENCOUNTER_TYPES = (("门诊", "AMB", "ambulatory"), ("住院", "IMP", "inpatient encounter"))

# (LOINC code, display, UCUM unit, low, high, decimals): reference ranges as used in China.
LAB_TESTS: tuple[tuple[str, str, str, float, float, int], ...] = (
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/L", 115.0, 150.0, 0),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*9/L", 3.5, 9.5, 2),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*9/L", 125.0, 350.0, 0),
    ("14749-6", "Glucose [Moles/volume] in Serum or Plasma", "mmol/L", 3.9, 6.1, 2),
    ("14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "umol/L", 57.0, 111.0, 0),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
     "U/L", 9.0, 50.0, 0),
    ("14647-2", "Cholesterol [Moles/volume] in Serum or Plasma", "mmol/L", 2.8, 5.2, 2),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.0, 6.0, 1),
)  # fmt: skip


def _quantity(value: float, unit: str) -> dict[str, Any]:
    """A UCUM Quantity."""
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


class FakeData:
    """Builds plausible resources for one virtual client (deterministic for a given seed)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._families = [name for name, _ in FAMILY_NAMES]
        self._weights = [weight for _, weight in FAMILY_NAMES]
        self._serial = 0

    # -- small pieces ------------------------------------------------------------------------

    def _next_serial(self) -> str:
        self._serial += 1
        return f"{self._serial:06d}{self.rng.randrange(10**6):06d}"

    def _name(self, gender: str) -> tuple[str, str]:
        family = self.rng.choices(self._families, self._weights)[0]
        return family, self.rng.choice(GIVEN_NAMES[gender])

    def _mobile(self) -> str:
        return f"1{self.rng.choice('3578')}{self.rng.randrange(10**9):09d}"

    def _address(self) -> dict[str, Any]:
        province, city, district, code = self.rng.choice(PLACES)
        line = f"{self.rng.choice(STREETS)}{self.rng.randint(1, 999)}号"
        return {
            "use": "home",
            "text": f"{province}{city}{district}{line}",
            "line": [line],
            "city": city,
            "district": district,
            "state": province,
            "postalCode": code,
            "country": "CN",
        }

    @staticmethod
    def _ref(resource_type: str, resource_id: str) -> dict[str, str]:
        return {"reference": f"{resource_type}/{resource_id}"}

    def _now(self) -> datetime:
        return datetime.now(CN_TZ).replace(microsecond=0)

    # -- resources ---------------------------------------------------------------------------

    def patient(self) -> dict[str, Any]:
        gender = self.rng.choice(("female", "male"))
        family, given = self._name(gender)
        birth = date(1940, 1, 1) + timedelta(days=self.rng.randrange(80 * 365))
        return {
            "resourceType": "Patient",
            "identifier": [
                {
                    "use": "usual",
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "MR",
                            }
                        ]
                    },
                    "system": f"{BENCH_SYSTEM}/mrn",
                    "value": f"MRN{self._next_serial()}",
                }
            ],
            "active": True,
            "name": [
                {"use": "official", "text": family + given, "family": family, "given": [given]}
            ],
            "telecom": [{"system": "phone", "value": self._mobile(), "use": "mobile"}],
            "gender": gender,
            "birthDate": birth.isoformat(),
            "address": [self._address()],
        }

    def organization(self) -> dict[str, Any]:
        province, city, district, code = self.rng.choice(PLACES)
        return {
            "resourceType": "Organization",
            "identifier": [{"system": f"{BENCH_SYSTEM}/org", "value": f"ORG{self._next_serial()}"}],
            "active": True,
            "type": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                            "code": "prov",
                            "display": "Healthcare Provider",
                        }
                    ]
                }
            ],
            "name": f"{city}{district}{self.rng.choice(HOSPITAL_SUFFIXES)}",
            "telecom": [
                {"system": "phone", "value": f"0571-{self.rng.randrange(10**8):08d}", "use": "work"}
            ],
            "address": [
                {
                    "use": "work",
                    "city": city,
                    "district": district,
                    "state": province,
                    "postalCode": code,
                    "country": "CN",
                }
            ],
        }

    def practitioner(self) -> dict[str, Any]:
        gender = self.rng.choice(("female", "male"))
        family, given = self._name(gender)
        return {
            "resourceType": "Practitioner",
            "identifier": [
                {"system": f"{BENCH_SYSTEM}/practitioner", "value": f"DR{self._next_serial()}"}
            ],
            "active": True,
            "name": [
                {"use": "official", "text": family + given, "family": family, "given": [given]}
            ],
            "telecom": [{"system": "phone", "value": self._mobile(), "use": "work"}],
            "gender": gender,
            "qualification": [{"code": {"text": self.rng.choice(PRACTITIONER_TITLES)}}],
        }

    def encounter(
        self, patient_id: str, organization_id: str, practitioner_id: str
    ) -> dict[str, Any]:
        label, code, display = self.rng.choice(ENCOUNTER_TYPES)
        start = self._now() - timedelta(minutes=self.rng.randint(5, 600))
        return {
            "resourceType": "Encounter",
            "identifier": [{"system": f"{BENCH_SYSTEM}/visit", "value": self._next_serial()}],
            "status": "in-progress",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": code,
                "display": display,
            },
            "type": [{"text": label}],
            "subject": self._ref("Patient", patient_id),
            "participant": [{"individual": self._ref("Practitioner", practitioner_id)}],
            "period": {"start": start.isoformat()},
            "serviceProvider": self._ref("Organization", organization_id),
        }

    def observation(
        self, patient_id: str, organization_id: str, encounter_id: str
    ) -> dict[str, Any]:
        code, display, unit, low, high, decimals = self.rng.choice(LAB_TESTS)
        span = high - low
        value = round(self.rng.uniform(low - 0.2 * span, high + 0.2 * span), decimals)
        effective = self._now() - timedelta(minutes=self.rng.randint(30, 240))
        return {
            "resourceType": "Observation",
            "identifier": [{"system": f"{BENCH_SYSTEM}/result", "value": self._next_serial()}],
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "laboratory",
                            "display": "Laboratory",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": self._ref("Patient", patient_id),
            "encounter": self._ref("Encounter", encounter_id),
            "effectiveDateTime": effective.isoformat(),
            "issued": (effective + timedelta(minutes=45)).isoformat(),
            "performer": [self._ref("Organization", organization_id)],
            "valueQuantity": _quantity(value, unit),
            "referenceRange": [{"low": _quantity(low, unit), "high": _quantity(high, unit)}],
        }

    def build(self, resource_type: str, ids: Mapping[str, str]) -> dict[str, Any]:
        """A new resource of ``resource_type``, referring to the resources in ``ids``."""
        if resource_type == "Patient":
            return self.patient()
        if resource_type == "Organization":
            return self.organization()
        if resource_type == "Practitioner":
            return self.practitioner()
        if resource_type == "Encounter":
            return self.encounter(ids["Patient"], ids["Organization"], ids["Practitioner"])
        if resource_type == "Observation":
            return self.observation(ids["Patient"], ids["Organization"], ids["Encounter"])
        raise ValueError(resource_type)

    def modify(self, resource: dict[str, Any]) -> None:
        """Change one field of ``resource`` in place, as a real update would."""
        resource_type = resource["resourceType"]
        if resource_type in ("Patient", "Practitioner"):
            resource["telecom"] = [{"system": "phone", "value": self._mobile(), "use": "mobile"}]
        elif resource_type == "Organization":
            resource["telecom"] = [
                {"system": "phone", "value": f"0571-{self.rng.randrange(10**8):08d}"}
            ]
        elif resource_type == "Encounter":
            resource["status"] = "finished"
            resource["period"]["end"] = self._now().isoformat()
        elif resource_type == "Observation":  # a corrected result
            resource["status"] = "amended"
            quantity = resource["valueQuantity"]
            quantity["value"] = round(quantity["value"] * self.rng.uniform(0.95, 1.05), 2)


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    """What one load-generating process measured (picklable, merged by the parent)."""

    latencies: dict[tuple[str, str], array[float]] = field(default_factory=dict)
    """(operation, resource type) -> latencies in ms of measured 2xx responses."""
    errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(status, operation, resource type) -> count, measured requests only."""
    unmeasured_errors: int = 0
    """Failures during warm-up or drain (not part of the error rate)."""
    error_samples: dict[str, str] = field(default_factory=dict)
    """status -> the body (or exception) of the first failure seen with that status."""
    first_start: float = math.inf
    last_end: float = -math.inf
    cpu_seconds: float = 0.0
    cpu_window: float = 0.0
    machine_busy: float | None = None
    cycles: int = 0

    @property
    def ok(self) -> int:
        return sum(len(samples) for samples in self.latencies.values())

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def merge(self, other: LoadResult) -> None:
        for key, samples in other.latencies.items():
            self.latencies.setdefault(key, array("d")).extend(samples)
        self.errors.update(other.errors)
        self.unmeasured_errors += other.unmeasured_errors
        for status, sample in other.error_samples.items():
            self.error_samples.setdefault(status, sample)
        self.first_start = min(self.first_start, other.first_start)
        self.last_end = max(self.last_end, other.last_end)
        self.cycles += other.cycles
        if other.machine_busy is not None:
            self.machine_busy = other.machine_busy


class Recorder:
    """Collects per-request outcomes inside the measurement window of one process."""

    def __init__(self, window_start: float, window_end: float | None) -> None:
        self.window_start = window_start
        self.window_end = window_end
        self.result = LoadResult()

    def measured(self, start: float, end: float, in_cycle: bool | None) -> bool:
        """Whether a request counts: inside the time window, or in a measured cycle."""
        if in_cycle is not None:
            return in_cycle
        return start >= self.window_start and end <= self.window_end  # type: ignore[operator]

    def success(self, op: str, rtype: str, start: float, end: float, in_cycle: bool | None) -> None:
        if not self.measured(start, end, in_cycle):
            return
        result = self.result
        samples = result.latencies.get((op, rtype))
        if samples is None:
            samples = result.latencies[(op, rtype)] = array("d")
        samples.append((end - start) * 1000.0)
        if start < result.first_start:
            result.first_start = start
        if end > result.last_end:
            result.last_end = end

    def failure(
        self,
        status: str,
        op: str,
        rtype: str,
        detail: bytes | str,
        start: float,
        end: float,
        in_cycle: bool | None,
    ) -> None:
        result = self.result
        if not self.measured(start, end, in_cycle):
            result.unmeasured_errors += 1
        else:
            result.errors[(status, op, rtype)] += 1
        if status not in result.error_samples:
            text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else detail
            result.error_samples[status] = f"{op} {rtype}: {text[:600]}"


# --------------------------------------------------------------------------------------------
# Load generation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    """The work one load-generating process does; times are ``time.monotonic()`` values,
    which on Linux share one clock across processes."""

    base_url: str
    client_id: str
    client_secret: str
    clients: int
    seed: int
    measure_start: float
    measure_end: float | None  # duration mode
    iterations: int | None  # cycles per virtual client, iterations mode
    sample_machine: bool
    timeout: float = 30.0


class TokenError(RuntimeError):
    """The token endpoint refused the credentials."""


class HubClient:
    """A thin, low-overhead FHIR client over one aiohttp session with keep-alive."""

    def __init__(self, session: aiohttp.ClientSession, plan: LoadPlan, recorder: Recorder):
        self.session = session
        self.plan = plan
        self.recorder = recorder
        self.fhir = plan.base_url.rstrip("/") + "/fhir"
        self.type_urls = {t: f"{self.fhir}/{t}" for t in CREATE_ORDER}
        self.token_expires = 0.0
        self.read_headers: dict[str, str] = {}
        self.write_headers: dict[str, str] = {}

    async def authenticate(self) -> None:
        """Fetch a bearer token (client_credentials) and pre-build the request headers."""
        url = self.plan.base_url.rstrip("/") + "/auth/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": self.plan.client_id,
            "client_secret": self.plan.client_secret,
        }
        async with self.session.post(url, data=form) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise TokenError(f"POST {url} -> {resp.status}: {body[:500]!r}")
        token = orjson.loads(body)
        self.token_expires = time.monotonic() + float(token.get("expires_in", 3600))
        auth = f"Bearer {token['access_token']}"
        self.read_headers = {"Authorization": auth, "Accept": FHIR_JSON}
        self.write_headers = {**self.read_headers, "Content-Type": FHIR_JSON}

    async def refresh_if_needed(self) -> None:
        if time.monotonic() > self.token_expires - 60.0:
            await self.authenticate()

    async def call(
        self,
        method: str,
        url: str,
        op: str,
        rtype: str,
        body: bytes | None,
        headers: dict[str, str],
        expected: int,
        in_cycle: bool | None,
    ) -> tuple[bytes, str | None] | None:
        """Send one request; record it; return (body, ETag) on 2xx, None on failure."""
        start = time.monotonic()
        try:
            async with self.session.request(method, url, data=body, headers=headers) as resp:
                data = await resp.read()
                status = resp.status
                etag = resp.headers.get("ETag")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            end = time.monotonic()
            self.recorder.failure(type(exc).__name__, op, rtype, repr(exc), start, end, in_cycle)
            await asyncio.sleep(0.05)  # a dead server must not turn into a busy loop
            return None
        end = time.monotonic()
        if 200 <= status < 300:
            if status != expected:
                self.recorder.failure(
                    f"{status} (expected {expected})", op, rtype, data, start, end, in_cycle
                )
                return None
            self.recorder.success(op, rtype, start, end, in_cycle)
            return data, etag
        self.recorder.failure(str(status), op, rtype, data, start, end, in_cycle)
        return None


def _version(body: Mapping[str, Any], etag: str | None) -> str | None:
    """The versionId of a returned resource (meta.versionId, else the weak ETag)."""
    version = body.get("meta", {}).get("versionId")
    if version:
        return str(version)
    if etag:
        return etag.removeprefix("W/").strip('"')
    return None


async def run_cycle(hub: HubClient, data: FakeData, in_cycle: bool | None) -> None:
    """One create/read/update/delete round over the five resource types."""
    ids: dict[str, str] = {}
    versions: dict[str, str | None] = {}
    resources: dict[str, dict[str, Any]] = {}
    recorder = hub.recorder
    cycle_start = time.monotonic()

    for rtype in CREATE_ORDER:
        resource = data.build(rtype, ids)
        url = hub.type_urls[rtype]
        reply = await hub.call(
            "POST", url, "create", rtype, orjson.dumps(resource), hub.write_headers, 201, in_cycle
        )
        if reply is None:
            break
        try:
            created = orjson.loads(reply[0])
            ids[rtype] = created["id"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            now = time.monotonic()
            recorder.failure("201 without id", "create", rtype, reply[0], now, now, in_cycle)
            break
        versions[rtype] = _version(created, reply[1])
        resource["id"] = ids[rtype]
        resources[rtype] = resource

    for rtype, rid in ids.items():
        url = f"{hub.type_urls[rtype]}/{rid}"
        await hub.call("GET", url, "read", rtype, None, hub.read_headers, 200, in_cycle)

    if len(ids) == len(CREATE_ORDER):
        for rtype, rid in ids.items():
            resource = resources[rtype]
            data.modify(resource)
            headers = hub.write_headers
            if versions[rtype]:
                headers = {**headers, "If-Match": f'W/"{versions[rtype]}"'}
            url = f"{hub.type_urls[rtype]}/{rid}"
            await hub.call(
                "PUT", url, "update", rtype, orjson.dumps(resource), headers, 200, in_cycle
            )

    for rtype in DELETE_ORDER:
        if rtype in ids:
            url = f"{hub.type_urls[rtype]}/{ids[rtype]}"
            await hub.call("DELETE", url, "delete", rtype, None, hub.read_headers, 204, in_cycle)
    if len(ids) == len(CREATE_ORDER) and recorder.measured(cycle_start, time.monotonic(), in_cycle):
        recorder.result.cycles += 1


async def virtual_client(hub: HubClient, plan: LoadPlan, index: int) -> None:
    """Loop over cycles: until the window closes (duration mode) or for N measured cycles."""
    data = FakeData(plan.seed * 100_003 + index)
    if plan.measure_end is not None:
        while time.monotonic() < plan.measure_end:
            await hub.refresh_if_needed()
            await run_cycle(hub, data, None)
        return
    while time.monotonic() < plan.measure_start:  # warm-up
        await run_cycle(hub, data, False)
    for _ in range(plan.iterations or 0):
        await hub.refresh_if_needed()
        await run_cycle(hub, data, True)


async def run_load(plan: LoadPlan) -> LoadResult:
    """Run ``plan.clients`` virtual clients in this process and return what was measured."""
    recorder = Recorder(plan.measure_start, plan.measure_end)
    connector = aiohttp.TCPConnector(
        limit=plan.clients,
        limit_per_host=plan.clients,
        ttl_dns_cache=3600,
        enable_cleanup_closed=False,
    )
    timeout = aiohttp.ClientTimeout(total=plan.timeout)
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        auto_decompress=False,
    ) as session:
        hub = HubClient(session, plan, recorder)
        await hub.authenticate()
        cpu: dict[str, float] = {}
        machine: dict[str, tuple[int, int] | None] = {}

        def mark(which: str) -> None:
            cpu[which] = time.process_time()
            cpu[which + "_wall"] = time.monotonic()
            if plan.sample_machine:
                machine[which] = read_cpu_jiffies()

        async def sampler() -> None:
            await asyncio.sleep(max(0.0, plan.measure_start - time.monotonic()))
            mark("start")
            if plan.measure_end is not None:
                await asyncio.sleep(max(0.0, plan.measure_end - time.monotonic()))
                mark("end")

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(virtual_client(hub, plan, i) for i in range(plan.clients)))
        await sampling
        if "end" not in cpu:
            mark("end")

    result = recorder.result
    result.cpu_seconds = cpu["end"] - cpu["start"]
    result.cpu_window = cpu["end_wall"] - cpu["start_wall"]
    before, after = machine.get("start"), machine.get("end")
    if before and after and after[1] > before[1]:
        result.machine_busy = (after[0] - before[0]) / (after[1] - before[1])
    if plan.measure_end is not None:
        result.first_start, result.last_end = plan.measure_start, plan.measure_end
    return result


def _load_process(plan: LoadPlan, conn: Any) -> None:
    """Entry point of a load-generating child process: run, then send the result back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    try:
        conn.send(("ok", asyncio.run(run_load(plan))))
    except BaseException as exc:  # reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def generate_load(plans: list[LoadPlan]) -> tuple[LoadResult, list[float]]:
    """Run the plans (in this process if one, else one child process each); merge results.

    Returns the merged result and each process's CPU use as a fraction of one core.
    """
    if len(plans) == 1:
        results = [asyncio.run(run_load(plans[0]))]
    else:
        with LoadProcesses(_load_process, plans) as processes:
            results = processes.results()
    merged = LoadResult()
    for result in results:
        merged.merge(result)
    usage = [r.cpu_seconds / r.cpu_window if r.cpu_window > 0 else 0.0 for r in results]
    return merged, usage


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _row(label: str, kind: str, values: list[float]) -> str:
    values.sort()
    p50, p95, p99 = (percentile(values, p) for p in (50, 95, 99))
    return f"  {label:<8} {kind:<13} {len(values):>9} {p50:>9.2f} {p95:>9.2f} {p99:>9.2f}"


def latency_rows(result: LoadResult) -> Iterator[str]:
    """Table rows: per operation (all types), then per operation and type, then overall."""
    yield f"  {'op':<8} {'type':<13} {'count':>9} {'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"
    everything: list[float] = []
    for op in OPERATIONS:
        merged: list[float] = []
        for rtype in CREATE_ORDER:
            merged.extend(result.latencies.get((op, rtype), ()))
        everything.extend(merged)
        yield _row(op, "(all)", merged)
        for rtype in CREATE_ORDER:
            yield _row("", rtype, list(result.latencies.get((op, rtype), ())))
    yield _row("all", "(all)", everything)


@dataclass(frozen=True)
class RunInfo:
    """Describes the run for the report header."""

    base_url: str
    server: str
    workers: str
    concurrency: int
    processes: int
    warmup: float
    duration: float | None
    iterations: int | None
    command: str
    load_before: float | None
    speed_before: float


def report(info: RunInfo, result: LoadResult, usage: list[float]) -> tuple[float, float, float]:
    """Print the measurement; return (requests/s, overall p99 ms, error fraction)."""
    window = result.last_end - result.first_start if result.ok else 0.0
    ok, failed = result.ok, result.failed
    rps = ok / window if window > 0 else 0.0
    every = sorted(x for samples in result.latencies.values() for x in samples)
    p99 = percentile(every, 99)
    error_rate = failed / (ok + failed) if ok + failed else 1.0
    cores = os.cpu_count() or 0

    print("Yijian Hub - FHIR CRUD mix benchmark (create/read/update/delete x 5 resource types)")
    print(f"machine: nproc={cores}; server: {info.server}; server workers: {info.workers}")
    print(
        f"machine speed: a 10M-step Python loop took {info.speed_before:.2f} s before the run, "
        f"{cpu_calibration():.2f} s after (compare runs only at similar speeds: this shared "
        "machine's CPU varies)"
    )
    print(f"base URL: {info.base_url}")
    print(f"command: {info.command}")
    if info.load_before is not None:
        print(
            f"load average before the run: {info.load_before:.2f} (other work on the machine "
            "competes with the server for its cores)"
        )
    mode = (
        f"duration {info.duration:g} s"
        if info.iterations is None
        else f"{info.iterations} cycles per virtual client"
    )
    print(
        f"load: {info.concurrency} virtual clients, warm-up {info.warmup:g} s, {mode}, "
        f"{REQUESTS_PER_CYCLE} requests per cycle"
    )
    cpu_text = ", ".join(f"{u * 100:.0f}%" for u in usage)
    print(
        f"load generator: {info.processes} process(es), aiohttp keep-alive pool + orjson; "
        f"client CPU per process: {cpu_text} of one core"
    )
    if result.machine_busy is not None:
        print(
            f"machine CPU busy during the window: {result.machine_busy * 100:.0f}% of "
            f"{cores} cores (server + database + load generator)"
        )
    if any(u > CLIENT_CPU_WARNING for u in usage):
        print(
            f"note: a load-generator process used more than {CLIENT_CPU_WARNING:.0%} of a "
            "core; the client may be limiting the figures (try --processes 2)"
        )
    print(f"measured window: {window:.2f} s, {result.cycles} complete cycles")
    print()
    for line in latency_rows(result):
        print(line)
    print()
    print(
        f"successful requests: {ok}; failed: {failed} ({error_rate * 100:.2f}%)"
        + (
            f"; failures outside the window (warm-up/drain): {result.unmeasured_errors}"
            if result.unmeasured_errors
            else ""
        )
    )
    if result.errors or result.error_samples:
        by_status: Counter[str] = Counter()
        for (status, _op, _rtype), count in result.errors.items():
            by_status[status] += count
        print("errors by status:")
        for status, count in by_status.most_common():
            detail = ", ".join(
                f"{op} {rtype} x{n}"
                for (s, op, rtype), n in sorted(result.errors.items())
                if s == status
            )
            print(f"  {status}: {count} ({detail})")
        print("error samples:")
        for status, sample in result.error_samples.items():
            print(f"  [{status}] {sample}")
    print()
    print(
        f"requests/s: {rps:.0f} (bar ≥ 1000; baseline 'best published servers ~500 "
        f"requests/s per vCPU' = 1000 on 2 vCPU; ratio {rps:.0f}/1000 = "
        f"{rps / BAR_REQUESTS_PER_SECOND:.2f})"
    )
    print(
        f"p99: {p99:.1f} ms (bar ≤ 50 ms; ratio {p99:.1f}/50 = {p99 / BAR_P99_MS:.2f}, "
        "≤ 1 meets the bar)"
    )
    met = rps >= BAR_REQUESTS_PER_SECOND and p99 <= BAR_P99_MS and error_rate <= 0.01
    verdict = "met" if met else "not met"
    if error_rate > 0.01:
        verdict += " (more than 1% of the requests failed)"
    print(f"bar: {verdict}")
    return rps, p99, error_rate


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.crud",
        description="FHIR CRUD mix benchmark for Yijian Hub (bar: ≥ 1000 requests/s, "
        "p99 ≤ 50 ms on 2 cores).",
    )
    parser.add_argument(
        "--base-url",
        default="http://127.0.0.1:8000",
        help="hub to measure when not starting one (default %(default)s)",
    )
    parser.add_argument("--client-id", help="admin client id for an existing hub")
    parser.add_argument("--client-secret", help="its secret")
    parser.add_argument(
        "--start",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start a private hub (default: only when nothing answers at --base-url)",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port of the private hub (default: a free port)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="server worker processes of the private hub (default %(default)s)",
    )
    parser.add_argument(
        "--pg-admin-url",
        default=DEFAULT_PG_ADMIN_URL,
        help="PostgreSQL where the private hub's database is created when "
        "YIJIAN_DATABASE_URL is unset (default %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="virtual clients (= keep-alive connections; default %(default)s)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--duration", type=float, default=20.0, help="measured seconds (default %(default)s)"
    )
    group.add_argument(
        "--iterations", type=int, help="measured cycles per virtual client instead of a duration"
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unmeasured seconds first (default %(default)s)"
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="load-generating processes (default %(default)s: one process "
        "stays well below a core at the bar's rate)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for the data")
    args = parser.parse_args(argv)
    for name in ("concurrency", "workers", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.iterations is not None and args.iterations < 1:
        parser.error("--iterations must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    args.processes = min(args.processes, args.concurrency)
    return args


def make_plans(
    args: argparse.Namespace, base_url: str, client_id: str, secret: str
) -> list[LoadPlan]:
    """Split the virtual clients across processes and fix the measurement window."""
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    # Time for the processes to start and fetch their tokens before the warm-up counts.
    slack = 0.5 if args.processes == 1 else 1.5
    measure_start = time.monotonic() + slack + args.warmup
    measure_end = None if args.iterations is not None else measure_start + args.duration
    share, extra = divmod(args.concurrency, args.processes)
    return [
        LoadPlan(
            base_url=base_url,
            client_id=client_id,
            client_secret=secret,
            clients=share + (1 if i < extra else 0),
            seed=seed + i,
            measure_start=measure_start,
            measure_end=measure_end,
            iterations=args.iterations,
            sample_machine=(i == 0),
        )
        for i in range(args.processes)
    ]


def command_line(argv: list[str]) -> str:
    """The command as typed, with the client secret masked."""
    shown, hide_next = [], False
    for arg in argv:
        if hide_next:
            shown.append("***")
        elif arg.startswith("--client-secret="):
            shown.append("--client-secret=***")
        else:
            shown.append(arg)
        hide_next = arg == "--client-secret"
    return shlex.join(["python", "-m", "bench.crud", *shown])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit status."""
    args = parse_args(argv)
    start = args.start
    if start is None:
        start = not http_answers(args.base_url)
        if not start and not (args.client_id and args.client_secret):
            print(
                f"error: a server answers at {args.base_url}; pass --client-id and "
                "--client-secret of an admin client for it, or --start to benchmark a hub "
                "started by this script",
                file=sys.stderr,
            )
            return 2
    elif not start and not (args.client_id and args.client_secret):
        print(
            "error: --client-id and --client-secret are required with --no-start", file=sys.stderr
        )
        return 2

    own: OwnHub | None = None
    try:
        if start:
            own = OwnHub(args.workers, args.port or free_port(), args.pg_admin_url)
            print(f"starting a private hub ({args.workers} workers) ...", flush=True)
            own.start()
            base_url, client_id, secret = own.base_url, own.client_id, own.client_secret
            server, workers = (
                f"started by the benchmark; database: {own.database}",
                str(args.workers),
            )
        else:
            base_url, client_id, secret = args.base_url, args.client_id, args.client_secret
            server, workers = "external (already running)", "as configured (not started here)"
        print(f"measuring {base_url} ...", flush=True)
        load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        speed_before = cpu_calibration()
        plans = make_plans(args, base_url, client_id, secret)
        result, usage = generate_load(plans)
        info = RunInfo(
            base_url,
            server,
            workers,
            args.concurrency,
            len(plans),
            args.warmup,
            None if args.iterations else args.duration,
            args.iterations,
            command_line(sys.argv[1:] if argv is None else argv),
            load_before,
            speed_before,
        )
        print()
        _rps, _p99, error_rate = report(info, result, usage)
        if own is not None:
            count, excerpt = own.server_log_problems()
            if count:
                print(f"\nserver log: {count} traceback/ERROR lines; first:\n{excerpt}")
    except (SetupError, TokenError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if own is not None and not isinstance(exc, SetupError):
            print(f"server log (tail):\n{own.log_tail()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if own is not None:
            own.stop()
    if result.ok == 0 or error_rate > 0.01:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
