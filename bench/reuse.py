"""Reuse check benchmark: the CDS Hooks ``exam-reuse-sign`` service (hook ``order-sign``) at
1,000,000 source patients and 10,000,000 results.

Quality bar (see DESIGN.md): reuse check (CDS hook) at 1M patients / 10M results, 50
concurrent callers: p99 ≤ 20 ms, on this 2-core machine with the database on it.

Each request is what an EHR sends when a doctor signs three draft orders — a complete blood
count (LOINC 58410-2), a glucose (2345-7) and a chest CT (24627-2) — for a random person,
named by the hub's own Patient id (a hospital's source Patient or the person's master; no
prefetch), with the access token of a hospital client. The hub finds the person's records,
their newest results for every code the three items answer to, judges them (validity window,
recognition scope, quality-control pass, flags), records a reminder per reusable result and
answers cards.

What it does:

1. starts a private hub (``bench._harness.OwnHub``) on a fresh database, registers through the
   FHIR API (``POST /fhir/Organization`` as the admin client) 20 result-producing hospitals and
   the ordering one, all in Hangzhou (``organization-region`` 3301xx, so the items' "city"
   and "province" scopes match) with quality-control passes in hematology, clinical
   chemistry and radiology valid from a year ago to a year ahead, and a hospital client for
   the ordering hospital's EHR (``yijian clients add --kind hospital``);
2. loads the data straight into PostgreSQL with ``INSERT ... SELECT generate_series`` on
   ``--load-workers`` connections (through the API it would take many hours), then rebuilds
   the secondary indexes it dropped for the load and runs ``VACUUM (ANALYZE)``:

   - ``--patients`` source Patients ``bp-<n>`` (``resource`` rows owned by one of the 20
     hospitals, with an MRN identifier and its ``idx_token`` row), two per person: person
     ``k`` is master ``bm-<k>`` (a master Patient ``resource`` with both MRNs and links,
     ``patient_master``) linked to ``bp-<2k>`` and ``bp-<2k+1>`` (``patient_link``, grade
     certain), each at another hospital;
   - per source Patient ``--results-per-patient`` (K, default 10) final Observations with
     their ``idx_result`` rows, in cycles of five: a CBC panel (leukocytes 6690-2,
     erythrocytes 789-8, haemoglobin 718-7, platelets 777-3: the catalogue's CBC core
     components, one ``basedOn`` order, one time) then a glucose (2345-7) or, every other
     cycle, an HbA1c (4548-4). K=10: two CBC panels, a glucose and an HbA1c. Values fall
     around the reference range (about one in four flagged H or L); times are spread
     uniformly over the 60 days before the load;
   - for every tenth source Patient a chest CT: an ImagingStudy (procedure LOINC 24627-2,
     CT of the thorax) and its final DiagnosticReport.

   Not loaded: ``resource_version`` rows, the other search-index rows of the results and the
   audit records the hub would have written — the reuse check reads none of them;
3. baseline, with the hub stopped: the bare indexed SQL query that finds the same rows — the
   hub's own ``_CANDIDATES`` statement (``hub.recognition.repository``) with the person's
   patient ids (what ``patient_group`` gives: both sources and the master) and the codes the
   hub asks for these three orders, sent by asyncpg from 50 connections (closed loop) and
   from one;
4. starts the hub, checks a few answers, then measures with raw asyncio HTTP/1.1 keep-alive
   connections from ``--processes`` load processes:

   a. closed loop: ``--callers`` callers, each sending its next request as soon as the last
      one is answered, ``--duration`` seconds after ``--warmup``;
   a'. closed loop with one caller: the latency of a check when nothing queues;
   b. open loop: Poisson arrivals at ``--rate`` requests/s in total, served by the same
      number of callers (latency counts from the scheduled arrival, queueing included);

5. prints the figures, the bar check and the ratios to the baseline; removes the hub.

Usage::

    python -m bench.reuse                              # 1M patients / 10M results
    python -m bench.reuse --patients 20000 --duration 10
    python -m bench.reuse --keep                       # keep database and keys; print reuse
    python -m bench.reuse --database-url URL --data-dir DIR --patients N   # no load if loaded

With ``--database-url`` the database is used as it is (migrated, never dropped); the load is
skipped when it holds exactly this benchmark's data for ``--patients`` and
``--results-per-patient`` (the result times stay where that load put them).

The exit status is 0 whether or not the bar is met (this is a measurement); 1 when more than
1% of the measured requests failed or nothing was measured; 2 on a usage or setup error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from array import array
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson

from bench._harness import (
    BENCH_SYSTEM,
    LoadProcesses,
    OwnHub,
    SetupError,
    cpu_calibration,
    free_port,
    percentile,
    read_cpu_jiffies,
)

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

BAR_P99_MS = 20.0
DEFAULT_PATIENTS = 1_000_000
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SERVICE = "exam-reuse-sign"
HOOK = "order-sign"
CLIENT_CPU_WARNING = 0.80  # of one core: above it the load generator may be the limit

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
EXT = "https://yijian-hub.org/fhir/StructureDefinition/"
ORG_SYSTEM = f"{BENCH_SYSTEM}/org"
SHANGHAI = ZoneInfo("Asia/Shanghai")

# The three draft orders of every request: (order id, LOINC code, display).
ORDERS = (
    ("cbc", "58410-2", "CBC panel - Blood by Automated count"),
    ("glu", "2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
    ("ctc", "24627-2", "CT Chest"),
)
ITEM_LABELS = {"cbc": "CBC", "glucose": "glucose", "ct-chest": "CT chest"}

HOSPITALS = 20  # hospitals whose results are loaded; the ordering hospital is one more
# Hangzhou districts and counties (GB/T 2260), all within the "city" scope of 3301.
DISTRICTS = (
    ("330102", "上城区"), ("330105", "拱墅区"), ("330106", "西湖区"), ("330108", "滨江区"),
    ("330109", "萧山区"), ("330110", "余杭区"), ("330111", "富阳区"), ("330112", "临安区"),
    ("330113", "临平区"), ("330114", "钱塘区"), ("330122", "桐庐县"), ("330127", "淳安县"),
    ("330182", "建德市"),
)  # fmt: skip
SUFFIXES = ("人民医院", "中医院", "第一人民医院", "妇幼保健院", "中心医院", "第二人民医院")
QC_DISCIPLINES = ("hematology", "clinical-chemistry", "radiology")

# Result mix, in cycles of five slots: CBC analytes 0-3, then glucose (even cycles) or HbA1c.
# (slot, LOINC, display, Chinese name, UCUM unit, low, high, decimals)
ANALYTES = (
    (0, "6690-2", "Leukocytes [#/volume] in Blood by Automated count", "白细胞计数",
     "10*9/L", "3.5", "9.5", 2),
    (1, "789-8", "Erythrocytes [#/volume] in Blood by Automated count", "红细胞计数",
     "10*12/L", "3.8", "5.1", 2),
    (2, "718-7", "Hemoglobin [Mass/volume] in Blood", "血红蛋白", "g/L", "115", "150", 0),
    (3, "777-3", "Platelets [#/volume] in Blood by Automated count", "血小板计数",
     "10*9/L", "125", "350", 0),
    (4, "2345-7", "Glucose [Mass/volume] in Serum or Plasma", "葡萄糖", "mg/dL", "70", "110", 0),
    (5, "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "糖化血红蛋白", "%", "4.0",
     "6.0", 1),
)  # fmt: skip
CT_EVERY = 10  # every tenth source Patient has a chest CT
RESULT_DAYS = 60  # results are spread over the 60 days before the load
MAX_RESULTS_PER_PATIENT = 1000

# Tables the load writes, and the indexes dropped during the load and rebuilt after it
# (largest first). The unique constraint of resource goes too: rebuilt, it is one sort.
LOADED_TABLES = ("resource", "idx_result", "idx_token", "patient_master", "patient_link")
REBUILD_ORDER = ("resource", "idx_result", "idx_token", "patient_link", "patient_master")

# --------------------------------------------------------------------------------------------
# The load: SQL
# --------------------------------------------------------------------------------------------

# Parameters of the statements below: $1, $2 the persons [k0, k1) of the chunk; $3 the
# hospitals (text[]); then either $4 the first pk (index rows) or $4 the load time (identity),
# or $4 the load time, $5 its text as a FHIR instant and $6 (and $7) as said for each.
_PERSONS = "generate_series($1::bigint, $2::bigint - 1) AS k"
_ORG = "($3::text[])[(1 + ({n}) % array_length($3::text[], 1))::int]"
_FAMILIES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩冯邓曹"
_GIVENS = (
    "芳,娜,敏,静,丽,艳,秀英,婷,雪,慧,玉兰,桂英,丹,霞,萍,红梅,欣怡,梓涵,伟,强,磊,军,洋,勇,"
    "杰,涛,明,超,建国,志强,建华,俊杰,浩然,子轩,宇航,国庆,海波,文博"
)

# A person's demographics from a hash of k: family, given name, gender, birth date.
_PEOPLE = f"""
    SELECT k, h,
           substr('{_FAMILIES}', (1 + h % {len(_FAMILIES)})::int, 1) AS family,
           (string_to_array('{_GIVENS}', ','))[(1 + (h / 7) % {len(_GIVENS.split(","))})::int]
               AS given,
           CASE WHEN h % 2 = 0 THEN 'female' ELSE 'male' END AS gender,
           to_char(date '1940-01-01' + ((h / 3) % 29000)::int, 'YYYY-MM-DD') AS birth
    FROM (SELECT k, (hashint8(k) & 2147483647)::bigint AS h FROM {_PERSONS}) AS x
"""

_MRN_IDENTIFIER = (
    '{{"use":"usual","type":{{"coding":[{{"system":'
    '"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}}],"text":"病案号"}},'
    '"system":"https://yijian-hub.org/fhir/sid/org/%s/mrn","value":"ZY%s"}}'
)

SQL_SOURCES = f"""
INSERT INTO resource (pk, res_type, res_id, version_id, last_updated, deleted, owner_org,
                      content)
OVERRIDING SYSTEM VALUE
SELECT $6::bigint + s.n, 'Patient', 'bp-' || s.n, 1, $4, false, s.org, format(
    '{{"resourceType":"Patient","id":"bp-%s","meta":{{"versionId":"1","lastUpdated":"%s"}},'
    '"identifier":[{_MRN_IDENTIFIER}],"name":[{{"use":"official","text":"%s","family":"%s",'
    '"given":["%s"]}}],"gender":"%s","birthDate":"%s",'
    '"managingOrganization":{{"reference":"Organization/%s"}}}}',
    s.n, $5::text, s.org, lpad(s.n::text, 9, '0'), p.family || p.given, p.family, p.given, p.gender,
    p.birth, s.org)
FROM ({_PEOPLE}) AS p
CROSS JOIN LATERAL (SELECT 2 * p.k + i AS n, {_ORG.format(n="2 * p.k + i")} AS org
                    FROM (VALUES (0), (1)) AS v(i)) AS s
"""

SQL_SOURCE_TOKENS = f"""
INSERT INTO idx_token (pk, res_type, param, system, code, display)
SELECT $4::bigint + n, 'Patient', 'identifier',
       'https://yijian-hub.org/fhir/sid/org/' || {_ORG.format(n="n")} || '/mrn',
       'ZY' || lpad(n::text, 9, '0'), NULL
FROM generate_series(2 * $1::bigint, 2 * $2::bigint - 1) AS n
"""

SQL_MASTERS = f"""
INSERT INTO resource (pk, res_type, res_id, version_id, last_updated, deleted, owner_org,
                      content)
OVERRIDING SYSTEM VALUE
SELECT $6::bigint + p.k, 'Patient', 'bm-' || p.k, 1, $4, false, NULL, format(
    '{{"resourceType":"Patient","id":"bm-%s","meta":{{"versionId":"1","lastUpdated":"%s",'
    '"tag":[{{"system":"https://yijian-hub.org/fhir/CodeSystem/mdm","code":"master",'
    '"display":"主索引患者 Master patient"}}]}},'
    '"identifier":[{_MRN_IDENTIFIER},{_MRN_IDENTIFIER}],"active":true,'
    '"name":[{{"use":"official","text":"%s","family":"%s","given":["%s"]}}],"gender":"%s",'
    '"birthDate":"%s","link":[{{"other":{{"reference":"Patient/bp-%s"}},"type":"seealso"}},'
    '{{"other":{{"reference":"Patient/bp-%s"}},"type":"seealso"}}]}}',
    p.k, $5::text, {_ORG.format(n="2 * p.k")}, lpad((2 * p.k)::text, 9, '0'),
    {_ORG.format(n="2 * p.k + 1")}, lpad((2 * p.k + 1)::text, 9, '0'),
    p.family || p.given, p.family, p.given, p.gender, p.birth, 2 * p.k, 2 * p.k + 1)
FROM ({_PEOPLE}) AS p
"""

SQL_MASTER_TOKENS = f"""
INSERT INTO idx_token (pk, res_type, param, system, code, display)
SELECT $4::bigint + n / 2, 'Patient', 'identifier',
       'https://yijian-hub.org/fhir/sid/org/' || {_ORG.format(n="n")} || '/mrn',
       'ZY' || lpad(n::text, 9, '0'), NULL
FROM generate_series(2 * $1::bigint, 2 * $2::bigint - 1) AS n
"""

SQL_IDENTITY = f"""
WITH masters AS (
    INSERT INTO patient_master (master_id, status, merged_into, created_at)
    SELECT 'bm-' || k, 'active', NULL, $4 FROM {_PERSONS}
)
INSERT INTO patient_link (source_id, master_id, organization, grade, score, decided_by, manual,
                          decided_at)
SELECT 'bp-' || n, 'bm-' || (n / 2), {_ORG.format(n="n")}, 'certain', NULL, 'bench', false, $4
FROM generate_series(2 * $1::bigint, 2 * $2::bigint - 1) AS n
"""

_ANALYTES = ", ".join(
    f"({slot}, '{code}', '{display}', '{name}', '{unit}', {low}::numeric, {high}::numeric, "
    f"{decimals})"
    for slot, code, display, name, unit, low, high, decimals in ANALYTES
)
_UCUM = '"system":"http://unitsofmeasure.org"'
_INSTANT = "to_char(({t}) AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD\"T\"HH24:MI:SS') || '+08:00'"
_UNIT_FRACTION = "((hashint8({seed}) & 2147483647)::float8 / 2147483648.0)"

# $6 K, $7 the pk of the first Observation (pk = $7 + n * K + j).
SQL_OBSERVATIONS = f"""
WITH s AS (
    SELECT n, j, j / 5 AS c,
           CASE WHEN j % 5 < 4 THEN j % 5 WHEN (j / 5) % 2 = 0 THEN 4 ELSE 5 END AS slot,
           {_ORG.format(n="n")} AS org
    FROM generate_series(2 * $1::bigint, 2 * $2::bigint - 1) AS n
    CROSS JOIN generate_series(0, $6::int - 1) AS j
), t AS MATERIALIZED (
    SELECT s.n, s.j, s.org, a.*, $7::bigint + s.n * $6::int + s.j AS pk,
           'ServiceRequest/bsr-' || s.n || '-' || s.c
               || CASE WHEN s.slot >= 4 THEN 's' ELSE '' END AS group_key,
           date_trunc('second', $4::timestamptz - interval '{RESULT_DAYS} days'
               * {_UNIT_FRACTION.format(seed="s.n * 4096 + s.c * 2 + (s.slot >= 4)::int")})
               AS eff,
           round(a.low + (a.high - a.low) * (-0.15 + 1.3
               * {_UNIT_FRACTION.format(seed="s.n * 4096 + s.j + 2048")})::numeric,
               a.decimals) AS value
    FROM s JOIN (VALUES {_ANALYTES})
        AS a(slot, code, display, name, unit, low, high, decimals) USING (slot)
), u AS (
    SELECT t.*, CASE WHEN value > high THEN 'H' WHEN value < low THEN 'L' ELSE '' END AS flag
    FROM t
), r AS (
    INSERT INTO resource (pk, res_type, res_id, version_id, last_updated, deleted, owner_org,
                          content)
    OVERRIDING SYSTEM VALUE
    SELECT pk, 'Observation', 'bo-' || n || '-' || j, 1, $4, false, org, format(
        '{{"resourceType":"Observation","id":"bo-%s-%s","meta":{{"versionId":"1",'
        '"lastUpdated":"%s"}},"identifier":[{{"system":"{BENCH_SYSTEM}/result/%s",'
        '"value":"R%s-%s"}}],"basedOn":[{{"reference":"%s"}}],"status":"final",'
        '"category":[{{"coding":[{{"system":'
        '"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory",'
        '"display":"Laboratory"}}]}}],"code":{{"coding":[{{"system":"http://loinc.org",'
        '"code":"%s","display":"%s"}}],"text":"%s"}},"subject":{{"reference":"Patient/bp-%s"}},'
        '"effectiveDateTime":"%s","issued":"%s","performer":[{{"reference":"Organization/%s"}}],'
        '"valueQuantity":{{"value":%s,"unit":"%s",{_UCUM},"code":"%s"}},%s'
        '"referenceRange":[{{"low":{{"value":%s,"unit":"%s",{_UCUM},"code":"%s"}},'
        '"high":{{"value":%s,"unit":"%s",{_UCUM},"code":"%s"}}}}]}}',
        n, j, $5::text, org, lpad(n::text, 9, '0'), j, group_key, code, display, name, n,
        {_INSTANT.format(t="eff")}, {_INSTANT.format(t="eff + interval '47 minutes'")}, org,
        value, unit, unit,
        CASE WHEN flag = '' THEN '' ELSE '"interpretation":[{{"coding":[{{"system":'
            || '"http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",'
            || '"code":"' || flag || '"}}]}}],' END,
        low, unit, unit, high, unit, unit)
    FROM u
)
INSERT INTO idx_result (pk, res_type, patient_id, system, code, site, effective, status,
                        performer, group_key, flags)
SELECT pk, 'Observation', 'bp-' || n, 'http://loinc.org', code, NULL, eff, 'final', org,
       group_key, flag
FROM u
"""

# Every CT_EVERY-th source Patient: an ImagingStudy (pk $6 + 2 * (n / CT_EVERY)) and its
# report (+ 1), one time for both.
SQL_CT = f"""
WITH t AS MATERIALIZED (
    SELECT n, {_ORG.format(n="n")} AS org, $6::bigint + 2 * (n / {CT_EVERY}) AS pk,
           'ImagingStudy/bis-' || n AS study,
           date_trunc('second', $4::timestamptz - interval '{RESULT_DAYS} days'
               * {_UNIT_FRACTION.format(seed="n * 4096 + 4000")}) AS eff
    FROM generate_series(2 * $1::bigint, 2 * $2::bigint - 1) AS n
    WHERE n % {CT_EVERY} = 0
), r AS (
    INSERT INTO resource (pk, res_type, res_id, version_id, last_updated, deleted, owner_org,
                          content)
    OVERRIDING SYSTEM VALUE
    SELECT pk, 'ImagingStudy', 'bis-' || n, 1, $4, false, org, format(
        '{{"resourceType":"ImagingStudy","id":"bis-%s","meta":{{"versionId":"1",'
        '"lastUpdated":"%s"}},"identifier":[{{"system":"urn:dicom:uid",'
        '"value":"urn:oid:2.25.%s"}}],"status":"available",'
        '"subject":{{"reference":"Patient/bp-%s"}},"started":"%s",'
        '"modality":[{{"system":"{DCM}","code":"CT"}}],"procedureCode":[{{"coding":[{{'
        '"system":"http://loinc.org","code":"24627-2","display":"CT Chest"}}],'
        '"text":"胸部CT平扫"}}],"description":"胸部CT平扫","numberOfSeries":1,'
        '"numberOfInstances":240,"series":[{{"uid":"2.25.%s.1","number":1,'
        '"modality":{{"system":"{DCM}","code":"CT"}},"bodySite":{{"system":"{SNOMED}",'
        '"code":"51185008","display":"Thoracic structure"}},"numberOfInstances":240}}]}}',
        n, $5::text, 9000000000 + n, n, {_INSTANT.format(t="eff")}, 9000000000 + n)
    FROM t
    UNION ALL
    SELECT pk + 1, 'DiagnosticReport', 'bdr-' || n, 1, $4, false, org, format(
        '{{"resourceType":"DiagnosticReport","id":"bdr-%s","meta":{{"versionId":"1",'
        '"lastUpdated":"%s"}},"status":"final","category":[{{"coding":[{{"system":'
        '"http://terminology.hl7.org/CodeSystem/v2-0074","code":"RAD"}}]}}],'
        '"code":{{"coding":[{{"system":"{BENCH_SYSTEM}/ris","code":"CT-CHEST",'
        '"display":"胸部CT平扫"}}],"text":"胸部CT平扫"}},"subject":{{"reference":"Patient/bp-%s"}},'
        '"effectiveDateTime":"%s","issued":"%s","performer":[{{"reference":"Organization/%s"}}],'
        '"imagingStudy":[{{"reference":"%s"}}],'
        '"conclusion":"双肺纹理清晰，未见明显实质性病变，纵隔淋巴结未见肿大。"}}',
        n, $5::text, n, {_INSTANT.format(t="eff")},
        {_INSTANT.format(t="eff + interval '3 hours'")}, org, study)
    FROM t
)
INSERT INTO idx_result (pk, res_type, patient_id, system, code, site, effective, status,
                        performer, group_key, flags)
SELECT pk, 'ImagingStudy', 'bp-' || n, x.system, x.code, x.site, eff, 'available', NULL,
       study, ''
FROM t CROSS JOIN (VALUES ('http://loinc.org', '24627-2', NULL), ('{DCM}', 'CT', '51185008'),
                          ('{DCM}', 'CT', NULL)) AS x(system, code, site)
UNION ALL
SELECT pk + 1, 'DiagnosticReport', 'bp-' || n, '{BENCH_SYSTEM}/ris', 'CT-CHEST', NULL, eff,
       'final', org, study, ''
FROM t
"""


@dataclass(frozen=True)
class Layout:
    """Where each kind of loaded row's pk starts, for ``patients`` sources and K results."""

    patients: int
    per_patient: int
    base: int

    @property
    def persons(self) -> int:
        return self.patients // 2

    @property
    def sources_pk(self) -> int:
        return self.base

    @property
    def masters_pk(self) -> int:
        return self.base + self.patients

    @property
    def observations_pk(self) -> int:
        return self.masters_pk + self.persons

    @property
    def ct_pk(self) -> int:
        return self.observations_pk + self.patients * self.per_patient

    @property
    def studies(self) -> int:
        return math.ceil(self.patients / CT_EVERY)

    @property
    def end_pk(self) -> int:
        return self.ct_pk + 2 * self.studies


@dataclass
class LoadReport:
    loaded: bool = False
    seconds_rows: float = 0.0
    seconds_indexes: float = 0.0
    seconds_vacuum: float = 0.0
    loaded_at: datetime | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.seconds_rows + self.seconds_indexes + self.seconds_vacuum


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=30, command_timeout=None)


async def loaded_state(url: str, patients: int, per_patient: int) -> str:
    """ "none", "complete" (this load is there), or a description of other data."""
    connection = await _connect(url)
    try:

        async def exists(res_type: str, res_id: str) -> bool:
            return bool(
                await connection.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM resource WHERE res_type = $1 AND res_id = $2)",
                    res_type,
                    res_id,
                )
            )

        if not await exists("Patient", "bp-0"):
            return "none"
        last = patients - 1
        if (
            await exists("Patient", f"bp-{last}")
            and not await exists("Patient", f"bp-{patients}")
            and await exists("Observation", f"bo-{last}-{per_patient - 1}")
            and not await exists("Observation", f"bo-{last}-{per_patient}")
            and await exists("Patient", f"bm-{patients // 2 - 1}")
            and await exists("DiagnosticReport", f"bdr-{(last // CT_EVERY) * CT_EVERY}")
            and await connection.fetchval(
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'idx_result'"
            )
            >= 2
        ):
            return "complete"
        return "other"
    finally:
        await connection.close()


async def _secondary_indexes(connection: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """(table, name, definition) of the loaded tables' indexes other than primary keys."""
    rows = await connection.fetch(
        "SELECT t.relname AS table, c.relname AS name, pg_get_indexdef(i.indexrelid) AS def "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_class t ON t.oid = i.indrelid "
        "WHERE t.relname = ANY($1::text[]) AND t.relnamespace = 'public'::regnamespace "
        "AND NOT i.indisprimary ORDER BY c.relname",
        list(LOADED_TABLES),
    )
    return [(r["table"], r["name"], r["def"]) for r in rows]


async def _constraint_indexes(connection: asyncpg.Connection) -> dict[str, tuple[str, str]]:
    """Index name -> (table, constraint definition) for unique constraints (not pkeys)."""
    rows = await connection.fetch(
        "SELECT t.relname AS table, k.conname AS name, pg_get_constraintdef(k.oid) AS def "
        "FROM pg_constraint k JOIN pg_class t ON t.oid = k.conrelid "
        "WHERE k.contype = 'u' AND t.relname = ANY($1::text[]) "
        "AND t.relnamespace = 'public'::regnamespace",
        list(LOADED_TABLES),
    )
    return {r["name"]: (r["table"], r["def"]) for r in rows}


async def _run_lanes(url: str, statements: list[str], lanes: int) -> None:
    """Run statements on ``lanes`` connections at once, in the order given."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for statement in statements:
        queue.put_nowait(statement)

    async def lane() -> None:
        connection = await _connect(url)
        try:
            await connection.execute("SET maintenance_work_mem = '1GB'")
            await connection.execute("SET max_parallel_maintenance_workers = 0")
            while not queue.empty():
                await connection.execute(queue.get_nowait())
        finally:
            await connection.close()

    await asyncio.gather(*(lane() for _ in range(lanes)))


async def _load_rows(
    url: str, layout: Layout, hospitals: list[str], workers: int, now: datetime
) -> None:
    """Every chunk of persons on ``workers`` connections, each chunk one transaction."""
    persons = layout.persons
    chunk = max(1, min(25_000, math.ceil(persons / 40)))
    chunks = [(k, min(k + chunk, persons)) for k in range(0, persons, chunk)]
    queue: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
    for item in chunks:
        queue.put_nowait(item)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    started = time.monotonic()
    done = {"persons": 0, "next": 0.0}

    async def lane() -> None:
        connection = await _connect(url)
        try:
            # Rows are consistent by construction: skip foreign-key triggers (superuser only).
            with contextlib.suppress(asyncpg.PostgresError):
                await connection.execute("SET session_replication_role = replica")
            await connection.execute("SET synchronous_commit = off")
            await connection.execute("SET work_mem = '256MB'")
            await connection.execute("SET jit = off")
            while not queue.empty():
                k0, k1 = queue.get_nowait()
                chunk_of = (k0, k1, hospitals)
                common = (*chunk_of, now, stamp)
                async with connection.transaction():
                    await connection.execute(SQL_SOURCES, *common, layout.sources_pk)
                    await connection.execute(SQL_SOURCE_TOKENS, *chunk_of, layout.sources_pk)
                    await connection.execute(SQL_MASTERS, *common, layout.masters_pk)
                    await connection.execute(SQL_MASTER_TOKENS, *chunk_of, layout.masters_pk)
                    await connection.execute(SQL_IDENTITY, *chunk_of, now)
                    await connection.execute(
                        SQL_OBSERVATIONS, *common, layout.per_patient, layout.observations_pk
                    )
                    await connection.execute(SQL_CT, *common, layout.ct_pk)
                done["persons"] += k1 - k0
                elapsed = time.monotonic() - started
                if elapsed >= done["next"] or done["persons"] == persons:
                    rate = done["persons"] * 2 / elapsed if elapsed else 0.0
                    left = (persons - done["persons"]) * 2 / rate if rate else 0.0
                    print(
                        f"  loaded {done['persons'] * 2:>10,} / {layout.patients:,} source "
                        f"patients with their results ({rate:,.0f}/s, {elapsed:,.0f} s, "
                        f"about {left:,.0f} s to go)",
                        flush=True,
                    )
                    done["next"] = elapsed + 20.0
        finally:
            await connection.close()

    await asyncio.gather(*(lane() for _ in range(workers)))


def load(
    url: str, patients: int, per_patient: int, hospitals: list[str], workers: int
) -> LoadReport:
    """Load the data (see the module doc) into the hub's database ``url``."""
    report = LoadReport(loaded=True)

    async def before() -> tuple[int, list[tuple[str, str, str]], dict[str, tuple[str, str]]]:
        connection = await _connect(url)
        try:
            sequence = await connection.fetchval("SELECT pg_get_serial_sequence('resource', 'pk')")
            last = await connection.fetchval(f"SELECT last_value FROM {sequence}")
            top = await connection.fetchval("SELECT COALESCE(max(pk), 0) FROM resource")
            base = max(int(last), int(top)) + 1
            layout = Layout(patients, per_patient, base)
            # Reserve the pks (the hub is stopped, but be safe all the same).
            await connection.execute("SELECT setval($1::regclass, $2)", sequence, layout.end_pk)
            indexes = await _secondary_indexes(connection)
            constraints = await _constraint_indexes(connection)
            for table, name, _ in indexes:
                if name in constraints:
                    await connection.execute(f'ALTER TABLE "{table}" DROP CONSTRAINT "{name}"')
                else:
                    await connection.execute(f'DROP INDEX IF EXISTS "{name}"')
            return base, indexes, constraints
        finally:
            await connection.close()

    base, indexes, constraints = asyncio.run(before())
    layout = Layout(patients, per_patient, base)
    now = datetime.now(UTC).replace(microsecond=0)
    report.loaded_at = now
    started = time.monotonic()
    try:
        asyncio.run(_load_rows(url, layout, hospitals, workers, now))
        report.seconds_rows = time.monotonic() - started
    finally:
        # Never leave the database without its indexes, even after a failed load.
        print(f"  rebuilding {len(indexes)} indexes ...", flush=True)
        started = time.monotonic()
        statements = []
        for table, name, definition in sorted(
            indexes, key=lambda i: (REBUILD_ORDER.index(i[0]), i[1] not in constraints)
        ):
            if name in constraints:
                statements.append(
                    f'ALTER TABLE "{table}" ADD CONSTRAINT "{name}" {constraints[name][1]}'
                )
            else:
                statements.append(definition)
        asyncio.run(_run_lanes(url, statements, max(1, min(2, workers))))
        report.seconds_indexes = time.monotonic() - started

    print("  VACUUM (ANALYZE) of the loaded tables ...", flush=True)
    started = time.monotonic()
    asyncio.run(_run_lanes(url, [f"VACUUM (ANALYZE) {t}" for t in REBUILD_ORDER], 2))
    report.seconds_vacuum = time.monotonic() - started
    return report


async def database_facts(url: str, report: LoadReport) -> None:
    """Table sizes and row counts (estimates from the statistics) into ``report``."""
    connection = await _connect(url)
    try:
        for table in LOADED_TABLES:
            report.sizes[table] = int(
                await connection.fetchval("SELECT pg_total_relation_size($1::regclass)", table)
            )
            report.rows[table] = int(
                await connection.fetchval(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = $1::regclass", table
                )
            )
        report.sizes["(database)"] = int(
            await connection.fetchval("SELECT pg_database_size(current_database())")
        )
        if report.loaded_at is None:
            report.loaded_at = await connection.fetchval(
                "SELECT last_updated FROM resource WHERE res_type = 'Patient' AND res_id = 'bp-0'"
            )
        report.rows["results"] = int(
            await connection.fetchval(
                "SELECT reltuples::bigint FROM pg_class WHERE oid = 'idx_result'::regclass"
            )
        )
    finally:
        await connection.close()


# --------------------------------------------------------------------------------------------
# Hospitals and the EHR's client, through the FHIR API
# --------------------------------------------------------------------------------------------


def _http(
    method: str, url: str, body: Any = None, token: str | None = None, form: bool = False
) -> tuple[int, Any]:
    headers = {"Accept": "application/fhir+json"}
    data = None
    if form:
        data = urllib.parse.urlencode(body).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    elif body is not None:
        data = orjson.dumps(body)
        headers["Content-Type"] = "application/fhir+json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = response.read()
            return response.status, orjson.loads(payload) if payload else None
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


def token_for(base_url: str, client_id: str, secret: str) -> tuple[str, float]:
    """(access token, seconds it is valid) of a client (client_credentials)."""
    status, body = _http(
        "POST",
        base_url + "/auth/token",
        {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        form=True,
    )
    if status != 200:
        raise SetupError(f"/auth/token -> {status}: {str(body)[:500]}")
    return str(body["access_token"]), float(body.get("expires_in", 3600))


def _day(offset: int) -> str:
    return (datetime.now(UTC) + timedelta(days=offset)).astimezone(SHANGHAI).date().isoformat()


def organization(number: int) -> dict[str, Any]:
    """Hospital ``number`` (0: the ordering hospital; 1..20: the hospitals with results)."""
    region, district = DISTRICTS[number % len(DISTRICTS)]
    name = f"杭州市{district}{SUFFIXES[number % len(SUFFIXES)]}" + (
        "（开单医院）" if number == 0 else f"（{number:02d}）"
    )
    passes = [
        {
            "url": EXT + "organization-qc-pass",
            "extension": [
                {"url": "discipline", "valueCode": discipline},
                {"url": "period", "valuePeriod": {"start": _day(-365), "end": _day(365)}},
                {"url": "program", "valueString": "浙江省临床检验中心室间质评"},
            ],
        }
        for discipline in QC_DISCIPLINES
    ]
    return {
        "resourceType": "Organization",
        "active": True,
        "identifier": [{"system": ORG_SYSTEM, "value": f"REUSE-H{number:02d}"}],
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
        "name": name,
        "address": [
            {
                "use": "work",
                "city": "杭州市",
                "district": district,
                "state": "浙江省",
                "postalCode": region,
                "country": "CN",
            }
        ],
        "extension": [{"url": EXT + "organization-region", "valueCode": region}, *passes],
    }


def register_hospitals(base_url: str, token: str) -> list[str]:
    """Ids of the ordering hospital and the 20 others (found again on a reused database)."""
    ids = []
    for number in range(HOSPITALS + 1):
        query = urllib.parse.urlencode({"identifier": f"{ORG_SYSTEM}|REUSE-H{number:02d}"})
        status, bundle = _http("GET", f"{base_url}/fhir/Organization?{query}", token=token)
        if status != 200:
            raise SetupError(f"GET /fhir/Organization?{query} -> {status}: {str(bundle)[:500]}")
        found = [e["resource"]["id"] for e in bundle.get("entry") or []]
        if found:
            ids.append(str(found[0]))
            continue
        status, body = _http("POST", f"{base_url}/fhir/Organization", organization(number), token)
        if status != 201:
            raise SetupError(f"POST /fhir/Organization -> {status}: {str(body)[:500]}")
        ids.append(str(body["id"]))
    return ids


def code_version() -> str:
    """The hub's git commit, and whether hub/ has uncommitted changes (figures depend on it)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "hub", "fhir_profiles"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = len(dirty.splitlines())
    return f"git {head}" + (
        f" + {changed} uncommitted file(s) in hub/, fhir_profiles/" if changed else ""
    )


def stop_server(own: OwnHub) -> None:
    """Stop the hub's server (its process group) but keep everything else, to serve again."""
    server = own._server
    if server is None or server.poll() is not None:
        own._server = None
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except Exception:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    own._server = None


async def requested_codes(url: str) -> tuple[list[str], bool]:
    """The codes (and whether imaging is asked) the hub looks up for the three orders, from
    the catalogue version in force, as ``RecognitionService.check`` computes them."""
    import fhir_profiles
    from hub.recognition.catalogue import Catalogue, CatalogueDocument

    connection = await _connect(url)
    try:
        row = await connection.fetchrow(
            "SELECT version, document FROM recognition_catalogue ORDER BY version DESC LIMIT 1"
        )
    finally:
        await connection.close()
    if row is None:
        raw, version = fhir_profiles.recognition_catalogue(), 0
    else:
        document = row["document"]
        raw = orjson.loads(document) if isinstance(document, str | bytes) else document
        version = row["version"]
    catalogue = Catalogue(CatalogueDocument.model_validate(raw), version)
    wanted = [r for _, code, _ in ORDERS if (r := catalogue.resolve(LOINC, code)) is not None]
    codes = sorted({t.partition("|")[2] for t in catalogue.result_codes(wanted)})
    return codes, any(r.item.category == "imaging" for r in wanted)


# --------------------------------------------------------------------------------------------
# CPU accounting
# --------------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu(pid: int) -> tuple[int, float] | None:
    """(process group, CPU seconds) of a process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def group_cpu(pgid: int) -> dict[int, float]:
    """CPU seconds of every process in process group ``pgid`` (the hub's server)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _proc_cpu(int(entry))
            if found is not None and found[0] == pgid:
                out[int(entry)] = found[1]
    return out


def pids_cpu(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        found = _proc_cpu(pid)
        if found is not None:
            out[pid] = found[1]
    return out


def wait_for_quiet(limit: float, threshold: float = 0.10) -> str:
    """Wait (up to ``limit`` seconds) until the machine is nearly idle over 2 s — nothing of
    this benchmark runs between phases, so what is busy is someone else; says what it saw."""
    if limit <= 0:
        return ""
    started = time.monotonic()
    busy = None
    while True:
        before = read_cpu_jiffies()
        time.sleep(2.0)
        after = read_cpu_jiffies()
        if before is None or after is None or after[1] <= before[1]:
            return ""
        busy = (after[0] - before[0]) / (after[1] - before[1])
        waited = time.monotonic() - started
        if busy <= threshold:
            return f"machine {busy * 100:.0f}% busy before the phase (waited {waited:.0f} s)"
        if waited >= limit:
            return (
                f"machine still {busy * 100:.0f}% busy after waiting {waited:.0f} s for "
                "other work to stop: measured anyway"
            )


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


@dataclass
class CpuUse:
    """CPU during a measured window, as fractions of one core."""

    machine_busy: float | None = None  # fraction of all cores
    hub: float | None = None
    database: float | None = None
    client: list[float] = field(default_factory=list)


async def watch_window(
    url: str, server_pgid: int | None, start: float, end: float
) -> tuple[CpuUse, float]:
    """Sample the machine, the hub's processes and this database's backends at the window's
    start and end (``time.monotonic()`` values); returns (CPU use, window seconds)."""
    connection = await _connect(url)
    try:
        own_pid = await connection.fetchval("SELECT pg_backend_pid()")

        async def backends() -> list[int]:
            rows = await connection.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> $1",
                own_pid,
            )
            return [r["pid"] for r in rows]

        await asyncio.sleep(max(0.0, start - time.monotonic()))
        t0 = time.monotonic()
        jiffies0 = read_cpu_jiffies()
        hub0 = group_cpu(server_pgid) if server_pgid else {}
        db0 = pids_cpu(await backends())
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        t1 = time.monotonic()
        jiffies1 = read_cpu_jiffies()
        hub1 = group_cpu(server_pgid) if server_pgid else {}
        db1 = pids_cpu(await backends())
    finally:
        await connection.close()
    window = t1 - t0
    use = CpuUse()
    if jiffies0 and jiffies1 and jiffies1[1] > jiffies0[1]:
        use.machine_busy = (jiffies1[0] - jiffies0[0]) / (jiffies1[1] - jiffies0[1])
    if server_pgid:
        use.hub = _delta(hub0, hub1) / window
    use.database = _delta(db0, db1) / window
    return use, window


# --------------------------------------------------------------------------------------------
# Load generation: raw HTTP/1.1 keep-alive (hub) and asyncpg (baseline), in child processes
# --------------------------------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: a request's bytes in, (status, body) out."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.reader, self.writer
        assert reader is not None
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length, chunked, close = -1, False, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"connection":
                    close = b"close" in value.lower()
            if chunked:
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    parts.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                body = b"".join(parts)
            elif length >= 0:
                body = await reader.readexactly(length)
            else:
                body, close = await reader.read(), True
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


@dataclass(frozen=True)
class HubPlan:
    """The work of one load process against the hub (times: ``time.monotonic()``, one clock
    for all processes on Linux)."""

    host: str
    port: int
    token: str
    callers: int
    patients: int
    seed: int
    start: float  # first request (warm-up begins)
    measure_start: float
    measure_end: float
    rate: float | None = None  # open loop: arrivals/s of this process; None: closed loop
    timeout: float = 30.0


@dataclass
class PhaseResult:
    """What a phase measured (merged over processes)."""

    latencies: array[float] = field(default_factory=lambda: array("d"))  # ms, measured OK
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    unmeasured_errors: int = 0
    with_reuse: int = 0  # measured answers with at least one reuse card
    reuse_items: Counter[str] = field(default_factory=Counter)  # item -> answers with its card
    explained: Counter[str] = field(default_factory=Counter)  # item:outcome of explanation cards
    lags: array[float] = field(default_factory=lambda: array("d"))  # open loop: ms sent late
    cpu_seconds: float = 0.0
    cpu_window: float = 0.0
    client_cpu: list[float] = field(default_factory=list)
    window: float = 0.0
    use: CpuUse = field(default_factory=CpuUse)
    quiet: str = ""  # what the wait for a quiet machine saw

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def merge(self, other: PhaseResult) -> None:
        self.latencies.extend(other.latencies)
        self.errors.update(other.errors)
        for key, sample in other.error_samples.items():
            self.error_samples.setdefault(key, sample)
        self.unmeasured_errors += other.unmeasured_errors
        self.with_reuse += other.with_reuse
        self.reuse_items.update(other.reuse_items)
        self.explained.update(other.explained)
        self.lags.extend(other.lags)
        if other.cpu_window > 0:
            self.client_cpu.append(other.cpu_seconds / other.cpu_window)


def hook_body() -> bytes:
    """The request body with placeholders for the hook instance and the patient."""
    orders = [
        {
            "resource": {
                "resourceType": "ServiceRequest",
                "id": order_id,
                "status": "draft",
                "intent": "order",
                "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                "subject": {"reference": "Patient/ehr-0000001"},
            }
        }
        for order_id, code, display in ORDERS
    ]
    body = {
        "hook": HOOK,
        "hookInstance": "@@HOOK@@",
        "context": {
            "userId": "Practitioner/dr-bench",
            "patientId": "@@PATIENT@@",
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": orders},
        },
    }
    return orjson.dumps(body)


class Requests:
    """Builds requests for random people: half by a source Patient id, half by the master."""

    def __init__(self, plan: HubPlan) -> None:
        self.rng = random.Random(plan.seed)
        self.patients = plan.patients
        self.body = hook_body()
        self.head = (
            f"POST /cds-services/{SERVICE} HTTP/1.1\r\nHost: {plan.host}:{plan.port}\r\n"
            f"Authorization: Bearer {plan.token}\r\nContent-Type: application/json\r\n"
            "Accept: application/json\r\nContent-Length: "
        ).encode()

    def patient(self) -> str:
        n = self.rng.randrange(self.patients)
        return f"bm-{n // 2}" if self.rng.random() < 0.5 else f"bp-{n}"

    def next(self, patient: str | None = None) -> bytes:
        body = self.body.replace(b"@@HOOK@@", str(uuid.uuid4()).encode()).replace(
            b"@@PATIENT@@", (patient or self.patient()).encode()
        )
        return self.head + str(len(body)).encode() + b"\r\n\r\n" + body


def tally(result: PhaseResult, body: bytes) -> None:
    """Count the reuse cards (and explanation cards) of a measured answer."""
    try:
        cards = orjson.loads(body).get("cards") or []
    except (orjson.JSONDecodeError, AttributeError):
        return
    reused = False
    for card in cards:
        extension = card.get("extension") or {}
        if extension.get("org.yijian-hub.outcome") == "reusable":
            reused = True
            topic = (card.get("source") or {}).get("topic") or {}
            result.reuse_items[str(topic.get("code"))] += 1
        for item, outcome in (extension.get("org.yijian-hub.outcomes") or {}).items():
            result.explained[f"{item}: {outcome}"] += 1
    if reused:
        result.with_reuse += 1


async def run_hub_plan(plan: HubPlan) -> PhaseResult:
    result = PhaseResult()
    requests = Requests(plan)
    queue: asyncio.Queue[float | None] = asyncio.Queue()

    async def send(connection: HttpConnection, scheduled: float | None) -> None:
        payload = requests.next()
        began = time.monotonic()
        origin = began if scheduled is None else scheduled
        measured_start = origin >= plan.measure_start
        try:
            async with asyncio.timeout(plan.timeout):
                status, body = await connection.request(payload)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as exc:  # fmt: skip
            status, body = -1, f"{type(exc).__name__}: {exc}".encode()
        ended = time.monotonic()
        if scheduled is None:
            measured = measured_start and ended <= plan.measure_end
        else:
            measured = measured_start and scheduled < plan.measure_end
            if measured:
                result.lags.append((began - scheduled) * 1000.0)
        if status == 200:
            if measured:
                result.latencies.append((ended - origin) * 1000.0)
                tally(result, body)
            return
        key = str(status) if status > 0 else body.decode().split(":")[0]
        if measured:
            result.errors[key] += 1
        else:
            result.unmeasured_errors += 1
        result.error_samples.setdefault(key, body[:800].decode("utf-8", "replace"))
        if status < 0:
            await asyncio.sleep(0.05)  # a dead server must not become a busy loop

    async def closed_caller() -> None:
        connection = HttpConnection(plan.host, plan.port)
        await asyncio.sleep(max(0.0, plan.start - time.monotonic()))
        while time.monotonic() < plan.measure_end:
            await send(connection, None)
        connection.close()

    async def open_caller() -> None:
        connection = HttpConnection(plan.host, plan.port)
        while (scheduled := await queue.get()) is not None:
            await send(connection, scheduled)
        connection.close()

    async def arrivals() -> None:
        assert plan.rate is not None
        rng = random.Random(plan.seed ^ 0xA5A5)
        at = plan.start
        while True:
            at += rng.expovariate(plan.rate)
            if at >= plan.measure_end:
                break
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait(at)
        for _ in range(plan.callers):
            queue.put_nowait(None)

    marks: dict[str, float] = {}

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, plan.measure_start - time.monotonic()))
        marks["cpu0"], marks["t0"] = time.process_time(), time.monotonic()
        await asyncio.sleep(max(0.0, plan.measure_end - time.monotonic()))
        marks["cpu1"], marks["t1"] = time.process_time(), time.monotonic()

    sampling = asyncio.create_task(cpu_marks())
    if plan.rate is None:
        await asyncio.gather(*(closed_caller() for _ in range(plan.callers)))
    else:
        await asyncio.gather(arrivals(), *(open_caller() for _ in range(plan.callers)))
    await sampling
    result.cpu_seconds = marks["cpu1"] - marks["cpu0"]
    result.cpu_window = marks["t1"] - marks["t0"]
    return result


@dataclass(frozen=True)
class BarePlan:
    """The work of one baseline process: ``connections`` asyncpg connections, closed loop."""

    database_url: str
    connections: int
    patients: int
    codes: tuple[str, ...]
    imaging: bool
    seed: int
    start: float
    measure_start: float
    measure_end: float


def person_ids(n: int, patients: int) -> list[str]:
    """What patient_group gives for source n's person: both sources and the master."""
    k = n // 2
    return [f"bp-{2 * k}", f"bp-{2 * k + 1}", f"bm-{k}"][: 3 if 2 * k + 1 < patients else None]


async def run_bare_plan(plan: BarePlan) -> PhaseResult:
    from hub.recognition.repository import _CANDIDATES

    result = PhaseResult()
    rng = random.Random(plan.seed)
    codes = list(plan.codes)
    connections = [await _connect(plan.database_url) for _ in range(plan.connections)]

    async def caller(connection: asyncpg.Connection) -> None:
        await asyncio.sleep(max(0.0, plan.start - time.monotonic()))
        while time.monotonic() < plan.measure_end:
            ids = person_ids(rng.randrange(plan.patients), plan.patients)
            began = time.monotonic()
            try:
                rows = await connection.fetch(_CANDIDATES, ids, codes, 20)
                failed = None
            except asyncpg.PostgresError as exc:
                failed, rows = f"{type(exc).__name__}: {exc}", []
            ended = time.monotonic()
            measured = began >= plan.measure_start and ended <= plan.measure_end
            if failed is None:
                if measured:
                    result.latencies.append((ended - began) * 1000.0)
                    result.reuse_items["rows"] += len(rows)
            else:
                result.errors[failed.split(":")[0]] += int(measured)
                result.error_samples.setdefault(failed.split(":")[0], failed[:800])

    marks: dict[str, float] = {}

    async def cpu_marks() -> None:
        await asyncio.sleep(max(0.0, plan.measure_start - time.monotonic()))
        marks["cpu0"], marks["t0"] = time.process_time(), time.monotonic()
        await asyncio.sleep(max(0.0, plan.measure_end - time.monotonic()))
        marks["cpu1"], marks["t1"] = time.process_time(), time.monotonic()

    sampling = asyncio.create_task(cpu_marks())
    try:
        await asyncio.gather(*(caller(c) for c in connections))
        await sampling
        await asyncio.sleep(1.0)  # the parent reads the backends' CPU at the window's end
    finally:
        for connection in connections:
            await connection.close()
    result.cpu_seconds = marks["cpu1"] - marks["cpu0"]
    result.cpu_window = marks["t1"] - marks["t0"]
    return result


def _child(plan: HubPlan | BarePlan, conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and cleans up
    try:
        runner = run_hub_plan(plan) if isinstance(plan, HubPlan) else run_bare_plan(plan)
        conn.send(("ok", asyncio.run(runner)))
    except BaseException as exc:  # reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_phase(
    plans: list[HubPlan] | list[BarePlan], url: str, server_pgid: int | None
) -> PhaseResult:
    """Run each plan in a child process while this one samples the CPU; merge the results."""
    merged = PhaseResult()
    with LoadProcesses(_child, plans) as processes:
        use, window = asyncio.run(
            watch_window(url, server_pgid, plans[0].measure_start, plans[0].measure_end)
        )
        for payload in processes.results():
            merged.merge(payload)
    use.client = merged.client_cpu
    merged.use, merged.window = use, window
    return merged


def hub_phase(
    own: OwnHub,
    args: argparse.Namespace,
    client: tuple[str, str],
    seed: int,
    callers: int,
    rate: float | None,
) -> PhaseResult:
    quiet = wait_for_quiet(args.quiet_wait)
    token, ttl = token_for(own.base_url, *client)
    if ttl < args.warmup + args.duration + 60:
        raise SetupError(f"the access token lasts {ttl:.0f} s, less than a phase")
    processes = max(1, min(args.processes, callers))
    share, extra = divmod(callers, processes)
    start = time.monotonic() + 1.0  # time for the processes to start
    measure_start = start + args.warmup
    measure_end = measure_start + args.duration
    port = urllib.parse.urlsplit(own.base_url).port or 80
    plans = [
        HubPlan(
            "127.0.0.1",
            port,
            token,
            share + (1 if i < extra else 0),
            args.patients,
            seed * 7919 + i,
            start,
            measure_start,
            measure_end,
            None if rate is None else rate / processes,
        )
        for i in range(processes)
    ]
    assert own._server is not None
    result = run_phase(plans, str(own.database_url), own._server.pid)
    result.quiet = quiet
    return result


def bare_phase(
    url: str, args: argparse.Namespace, codes: list[str], imaging: bool, connections: int, seed: int
) -> PhaseResult:
    quiet = wait_for_quiet(args.quiet_wait)
    processes = max(1, min(args.processes, connections))
    share, extra = divmod(connections, processes)
    start = time.monotonic() + 1.5
    measure_start = start + args.warmup
    plans = [
        BarePlan(
            url,
            share + (1 if i < extra else 0),
            args.patients,
            tuple(codes),
            imaging,
            seed * 104729 + i,
            start,
            measure_start,
            measure_start + args.duration,
        )
        for i in range(processes)
    ]
    result = run_phase(plans, url, None)
    result.quiet = quiet
    return result


# --------------------------------------------------------------------------------------------
# A look at real answers before measuring
# --------------------------------------------------------------------------------------------


def sample_answers(own: OwnHub, client: tuple[str, str], patients: int, seed: int) -> list[str]:
    """Send a few requests one by one; lines describing them. A non-200 is a SetupError
    carrying the body."""
    token, _ = token_for(own.base_url, *client)
    rng = random.Random(seed)
    lines: list[str] = []
    url = own.base_url + f"/cds-services/{SERVICE}"
    shown_reuse = shown_other = False
    for attempt in range(60):
        n = rng.randrange(patients)
        patient = f"bm-{n // 2}" if attempt % 2 else f"bp-{n}"
        body = orjson.loads(
            hook_body()
            .replace(b"@@HOOK@@", str(uuid.uuid4()).encode())
            .replace(b"@@PATIENT@@", patient.encode())
        )
        started = time.monotonic()
        status, answer = _http("POST", url, body, token)
        elapsed = (time.monotonic() - started) * 1000
        if status != 200:
            raise SetupError(f"POST {url} for Patient/{patient} -> {status}: {answer}")
        cards = answer.get("cards") or []
        reuse = [
            c
            for c in cards
            if (c.get("extension") or {}).get("org.yijian-hub.outcome") == "reusable"
        ]
        if (reuse and not shown_reuse) or (not reuse and not shown_other):
            shown_reuse, shown_other = shown_reuse or bool(reuse), shown_other or not reuse
            lines.append(
                f"  Patient/{patient}: 200 in {elapsed:.0f} ms, {len(cards)} card(s), "
                f"{len(reuse)} reuse card(s)"
            )
            for card in cards:
                lines.append(f"    - {card.get('summary')}")
                lines.extend(f"        {line}" for line in (card.get("detail") or "").splitlines()[
                    :4
                ] if line)  # fmt: skip
        if shown_reuse and shown_other:
            break
    return lines


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _size(octets: int) -> str:
    return f"{octets / 2**30:.2f} GiB" if octets >= 2**30 else f"{octets / 2**20:.0f} MiB"


def _stats(result: PhaseResult) -> tuple[float, float, float, float]:
    values = sorted(result.latencies)
    return (
        percentile(values, 50),
        percentile(values, 95),
        percentile(values, 99),
        values[-1] if values else math.nan,
    )


def _table_header(first: str) -> str:
    return (
        f"  {first:<34} {'requests':>9} {'errors':>7} {'per s':>8} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'p99 ms':>8} {'max ms':>8}"
    )


def _table_row(label: str, result: PhaseResult) -> str:
    p50, p95, p99, top = _stats(result)
    rate = result.ok / result.window if result.window else 0.0
    return (
        f"  {label:<34} {result.ok:>9,} {result.failed:>7} {rate:>8.1f} {p50:>8.2f} {p95:>8.2f} "
        f"{p99:>8.2f} {top:>8.2f}"
    )


def _cpu_line(result: PhaseResult, what: str) -> str:
    use = result.use
    cores = os.cpu_count() or 0
    parts = []
    note = (
        " (a load process used most of a core: the client may be limiting)"
        if any(c > CLIENT_CPU_WARNING for c in use.client)
        else ""
    )
    if use.machine_busy is not None:
        parts.append(f"machine {use.machine_busy * 100:.0f}% of {cores} cores busy")
    if use.hub is not None:
        parts.append(f"hub server {use.hub * 100:.0f}%")
    if use.database is not None:
        parts.append(f"PostgreSQL backends of this database {use.database * 100:.0f}%")
    client = " + ".join(f"{c * 100:.0f}%" for c in use.client)
    parts.append(f"{what} {client}")
    if use.machine_busy is not None and use.database is not None:
        other = use.machine_busy * cores - (use.hub or 0.0) - use.database - sum(use.client)
        parts.append(f"everything else (other processes on the machine) {max(other, 0) * 100:.0f}%")
        if other > 0.2:
            note += (
                " — NOTE: other work took a share of the 2 cores during this phase; its figures "
                "are pessimistic"
            )
    line = "  CPU (of one core unless said): " + "; ".join(parts) + note
    return line + (f"\n  before it: {result.quiet}" if result.quiet else "")


def _errors(result: PhaseResult) -> list[str]:
    lines = []
    if result.failed or result.unmeasured_errors:
        lines.append(
            f"  errors: {result.failed} measured"
            + (f", {result.unmeasured_errors} in warm-up/drain" if result.unmeasured_errors else "")
            + ": "
            + ", ".join(f"{k} x{v}" for k, v in result.errors.most_common())
        )
        for key, sample in list(result.error_samples.items())[:4]:
            lines.append(f"    sample [{key}]: {sample[:600]}")
    return lines


def _reuse_lines(result: PhaseResult) -> list[str]:
    answered = max(result.ok, 1)
    items = ", ".join(
        f"{ITEM_LABELS.get(item, item)} {count / answered * 100:.1f}%"
        for item, count in sorted(result.reuse_items.items())
    )
    lines = [
        f"  answers with a reuse card: {result.with_reuse / answered * 100:.1f}% "
        f"({items or 'none'})"
    ]
    if result.explained:
        top = ", ".join(
            f"{k} {v / answered * 100:.1f}%" for k, v in result.explained.most_common(6)
        )
        lines.append(f"  explanation cards (not reusable, per answer): {top}")
    return lines


def _bar_line(result: PhaseResult) -> str:
    p99 = _stats(result)[2]
    error_rate = result.failed / (result.ok + result.failed) if result.ok + result.failed else 1.0
    verdict = "PASS" if p99 <= BAR_P99_MS and error_rate <= 0.01 else "FAIL"
    extra = " (more than 1% errors)" if error_rate > 0.01 else ""
    return (
        f"  bar p99 ≤ 20 ms: {verdict}{extra} — p99 {p99:.2f} ms, ratio to the bar "
        f"{p99:.2f}/20 = {p99 / BAR_P99_MS:.2f} (≤ 1 meets it)"
    )


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reuse",
        description="Reuse check (CDS Hooks exam-reuse-sign) benchmark for Yijian Hub "
        "(bar: p99 ≤ 20 ms at 1M patients / 10M results, 50 concurrent callers).",
    )
    parser.add_argument(
        "--patients",
        type=int,
        default=DEFAULT_PATIENTS,
        help="source patients to load, two per person (default %(default)s)",
    )
    parser.add_argument(
        "--results-per-patient",
        type=int,
        default=10,
        help="Observations per source patient (default %(default)s: 2 CBC panels of 4, "
        "a glucose, an HbA1c)",
    )
    parser.add_argument(
        "--load-workers",
        type=int,
        default=os.cpu_count() or 2,
        help="connections loading rows (default %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        help="reuse this database (migrated if needed, never dropped); the load is skipped "
        "when it holds this benchmark's data for --patients/--results-per-patient",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="the hub's YIJIAN_DATA_DIR (default: a temporary one)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the database and data directory; print reuse"
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
        "--callers", type=int, default=50, help="concurrent callers (default %(default)s)"
    )
    parser.add_argument(
        "--processes", type=int, default=2, help="load processes (default %(default)s)"
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help="measured seconds per phase (default 30)"
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="unmeasured seconds first (default 5)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="open loop: requests/s in total, Poisson arrivals (default %(default)s)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each phase, wait up to this many seconds for the machine to be idle "
        "(other work on a shared machine; default %(default)s, 0: do not wait)",
    )
    parser.add_argument("--skip-baseline", action="store_true", help="no bare-SQL baseline")
    parser.add_argument("--seed", type=int, default=None, help="random seed of the requests")
    args = parser.parse_args(argv)
    for name in ("patients", "load_workers", "workers", "callers", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.patients < 2 or args.patients % 2:
        parser.error("--patients must be even (two source patients per person)")
    if not 1 <= args.results_per_patient <= MAX_RESULTS_PER_PATIENT:
        parser.error(f"--results-per-patient must be 1..{MAX_RESULTS_PER_PATIENT}")
    if args.duration <= 0 or args.warmup < 0 or args.rate <= 0:
        parser.error("--duration and --rate must be positive, --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring for the exit status."""
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbits(31)
    command = shlex.join(["python", "-m", "bench.reuse", *(sys.argv[1:] if argv is None else argv)])
    own = OwnHub(
        args.workers,
        args.port or free_port(),
        args.pg_admin_url,
        database_url=args.database_url,
        data_dir=args.data_dir.resolve() if args.data_dir else None,
        keep=args.keep,
    )
    speed_before = cpu_calibration()
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    failed_share = 1.0
    try:
        print("preparing a private hub: database, migrations, admin client ...", flush=True)
        own.prepare()
        url = own.database_url
        if url is None:
            raise SetupError(
                "the reuse benchmark loads its data with SQL into PostgreSQL: start one at "
                f"--pg-admin-url ({args.pg_admin_url}) or set YIJIAN_DATABASE_URL"
            )
        state = asyncio.run(loaded_state(url, args.patients, args.results_per_patient))
        if state == "other":
            raise SetupError(
                "the database holds this benchmark's data for another --patients or "
                "--results-per-patient (or an unfinished load): use a fresh database"
            )
        print("registering hospitals through the FHIR API and the EHR's client ...", flush=True)
        own.serve()
        admin_token, _ = token_for(own.base_url, own.client_id, own.client_secret)
        hospitals = register_hospitals(own.base_url, admin_token)
        ordering, producers = hospitals[0], hospitals[1:]
        ehr = own.add_client("hospital", ordering, "reuse-bench-ehr")
        stop_server(own)

        report = LoadReport()
        if state == "complete":
            print("  data already loaded: skipping the load", flush=True)
        else:
            print(
                f"loading {args.patients:,} source patients, {args.patients // 2:,} masters, "
                f"{args.patients * args.results_per_patient:,} results "
                f"({args.load_workers} connections) ...",
                flush=True,
            )
            report = load(
                url, args.patients, args.results_per_patient, producers, args.load_workers
            )
            print(
                f"  loaded in {report.total:,.0f} s (rows {report.seconds_rows:,.0f} s, "
                f"indexes {report.seconds_indexes:,.0f} s, VACUUM (ANALYZE) "
                f"{report.seconds_vacuum:,.0f} s)",
                flush=True,
            )
        asyncio.run(database_facts(url, report))
        codes, imaging = asyncio.run(requested_codes(url))

        bare: list[tuple[int, PhaseResult]] = []
        if not args.skip_baseline:
            for connections in sorted({args.callers, 1}, reverse=True):
                print(
                    f"baseline: bare _CANDIDATES query, {connections} connection(s), "
                    f"{args.warmup:g} s + {args.duration:g} s ...",
                    flush=True,
                )
                bare.append((connections, bare_phase(url, args, codes, imaging, connections, seed)))

        print(f"starting the hub ({args.workers} workers) ...", flush=True)
        version = code_version()
        own.serve()
        samples = sample_answers(own, ehr, args.patients, seed)
        print(
            f"hub, closed loop: {args.callers} callers, {args.warmup:g} s + "
            f"{args.duration:g} s ...",
            flush=True,
        )
        closed = hub_phase(own, args, ehr, seed, args.callers, None)
        single: PhaseResult | None = None
        if args.callers > 1:
            print(
                f"hub, closed loop: 1 caller, {args.warmup:g} s + {args.duration:g} s ...",
                flush=True,
            )
            single = hub_phase(own, args, ehr, seed + 2, 1, None)
        print(
            f"hub, open loop: {args.rate:g} requests/s, {args.warmup:g} s + "
            f"{args.duration:g} s ...",
            flush=True,
        )
        opened = hub_phase(own, args, ehr, seed + 1, args.callers, args.rate)
        speed_after = cpu_calibration()

        print()
        print("Yijian Hub - reuse check benchmark (CDS Hooks exam-reuse-sign, hook order-sign)")
        print(
            f"machine: nproc={os.cpu_count() or 0}; machine speed: a 10M-step Python loop took "
            f"{speed_before:.2f} s before the run, {speed_after:.2f} s after (compare runs "
            "only at similar speeds: this shared machine's CPU varies)"
        )
        if load_before is not None:
            print(f"load average before the run: {load_before:.2f}")
        print(f"server: started by the benchmark, {args.workers} workers; database: {own.database}")
        print(f"hub code: {version}")
        print(f"command: {command}")
        print(f"seed: {seed}")
        persons = args.patients // 2
        studies = math.ceil(args.patients / CT_EVERY)
        print(
            f"data: {args.patients:,} source patients = {persons:,} people (masters) with 2 "
            f"sources each at 2 of {HOSPITALS} hospitals; "
            f"{args.patients * args.results_per_patient:,} Observations "
            f"({args.results_per_patient} per source patient) + {studies:,} chest CTs "
            f"(ImagingStudy + report); idx_result ≈ {report.rows.get('results', 0):,} rows"
        )
        when = report.loaded_at.isoformat() if report.loaded_at else "?"
        if report.loaded:
            print(
                f"load: {report.total:,.0f} s in all (rows {report.seconds_rows:,.0f} s, "
                f"indexes {report.seconds_indexes:,.0f} s, VACUUM (ANALYZE) "
                f"{report.seconds_vacuum:,.0f} s), results dated up to {RESULT_DAYS} days "
                f"before {when}"
            )
        else:
            print(f"load: done by an earlier run at {when} (result dates are relative to it)")
        print(
            "sizes: "
            + ", ".join(f"{table} {_size(octets)}" for table, octets in report.sizes.items())
        )
        print(
            "request: 3 draft orders (CBC 58410-2, glucose 2345-7, CT chest 24627-2), "
            "context.patientId a random person's source Patient (50%) or master (50%); "
            f"the hub looks up {len(codes)} codes per person"
        )
        print(
            f"load generator: {max(1, min(args.processes, args.callers))} processes, raw asyncio "
            "HTTP/1.1 keep-alive connections (one per caller), every answer parsed for cards"
        )
        print()
        print("sample answers:")
        for line in samples:
            print(line)

        print()
        print(_table_header("phase"))
        print(_table_row(f"hub closed loop, {args.callers} callers", closed))
        if single is not None:
            print(_table_row("hub closed loop, 1 caller", single))
        print(_table_row(f"hub open loop, {args.rate:g}/s Poisson", opened))
        for connections, result in bare:
            print(_table_row(f"bare SQL closed loop, {connections} conn.", result))

        print()
        print(f"a. hub, closed loop, {args.callers} callers, {args.duration:g} s measured")
        print(_cpu_line(closed, "load generator"))
        for line in _reuse_lines(closed) + _errors(closed):
            print(line)
        print(_bar_line(closed))
        throughput = closed.ok / closed.window if closed.window else 0.0
        if throughput:
            print(
                f"  note: in a closed loop the mean latency is callers / throughput (Little's "
                f"law): {args.callers} / {throughput:.0f} per s = "
                f"{args.callers / throughput * 1000:.0f} ms; a p99 ≤ 20 ms with "
                f"{args.callers} callers always busy needs well over "
                f"{args.callers / 0.020:,.0f} answers/s"
            )
        if single is not None:
            print()
            print(f"a'. hub, closed loop, 1 caller (no queueing), {args.duration:g} s measured")
            print(_cpu_line(single, "load generator"))
            for line in _errors(single):
                print(line)
        print()
        print(
            f"b. hub, open loop, Poisson arrivals at {args.rate:g}/s over {args.callers} callers "
            "(latency from the scheduled arrival: queueing included)"
        )
        lags = sorted(opened.lags)
        print(
            f"  answered {opened.ok / opened.window if opened.window else 0:.1f}/s of "
            f"{args.rate:g}/s offered; sent after their scheduled arrival by p50 "
            f"{percentile(lags, 50):.2f} ms, p99 {percentile(lags, 99):.2f} ms, max "
            f"{lags[-1] if lags else math.nan:.2f} ms (waiting for a free caller, or "
            "event-loop timer lag; included in the latencies)"
        )
        print(_cpu_line(opened, "load generator"))
        for line in _reuse_lines(opened) + _errors(opened):
            print(line)
        print(_bar_line(opened))

        if bare:
            print()
            print(
                "c. baseline: the bare indexed SQL query that finds the same rows — the hub's "
                "_CANDIDATES statement (hub/recognition/repository.py) with the person's 3 "
                f"patient ids and the same {len(codes)} codes, asyncpg, closed loop, the hub "
                "stopped"
            )
            for connections, result in bare:
                rows = result.reuse_items["rows"] / max(result.ok, 1)
                print(
                    f"  {connections} connection(s): {rows:.1f} rows per query; "
                    + _cpu_line(result, "asyncpg client").strip()
                )
                for line in _errors(result):
                    print(line)
            by_connections = dict(bare)
            for hub_result, concurrency in ((closed, args.callers), (single, 1)):
                base = by_connections.get(concurrency)
                if hub_result is None or base is None or not (hub_result.ok and base.ok):
                    continue
                hub50, _, hub99, _ = _stats(hub_result)
                bare50, _, bare99, _ = _stats(base)
                hub_rate = hub_result.ok / hub_result.window
                bare_rate = base.ok / base.window
                print(
                    f"  hub / bare SQL at {concurrency} concurrent: p50 {hub50:.2f}/{bare50:.2f} "
                    f"= {hub50 / bare50:.1f}x, p99 {hub99:.2f}/{bare99:.2f} = "
                    f"{hub99 / bare99:.1f}x; throughput {hub_rate:.0f}/{bare_rate:.0f} per s "
                    f"= {hub_rate / bare_rate:.2f}"
                )
                if concurrency > 1:
                    print(
                        f"  bar check of the bare query itself at {concurrency} connections: "
                        f"p99 {bare99:.2f} ms ({'meets' if bare99 <= BAR_P99_MS else 'misses'} "
                        "20 ms)"
                    )

        problems, excerpt = own.server_log_problems()
        if problems:
            print(f"\nserver log: {problems} traceback/ERROR lines; first:\n{excerpt}")
        measured = closed.ok + closed.failed + opened.ok + opened.failed
        failed_share = (closed.failed + opened.failed) / measured if measured else 1.0
    except (SetupError, RuntimeError, OSError, asyncpg.PostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        if own.log_path is not None and not isinstance(exc, SetupError):
            print(f"server log (tail):\n{own.log_tail()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        own.stop()
        if args.keep and own.database_url:
            print()
            print(f"kept: database {own.database_url}")
            print(f"      data directory (keys) {own.data_dir}")
            print(
                "re-run without loading: python -m bench.reuse "
                f"--database-url {shlex.quote(own.database_url)} --data-dir {own.data_dir} "
                f"--patients {args.patients} --results-per-patient {args.results_per_patient}"
            )
    return 0 if failed_share <= 0.01 else 1


if __name__ == "__main__":
    sys.exit(main())
