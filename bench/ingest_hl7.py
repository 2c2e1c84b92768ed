"""Sustained HL7 v2 ORU^R01 ingest over MLLP, from several concurrent senders.

Quality bar (DESIGN.md): result ingest, end to end with validation, identity and indexing,
at least 2,000 resources/s on this 2-core machine (anchor: large commercial deployments,
about 1,000 resources/s per core), and a result acknowledged at one hospital visible to a
doctor elsewhere within 1 s at p99.

Setup: a private hub (``yijian db upgrade``, ``orgs add``, ``clients add``, ``feeds add``,
``codes import`` of the demo LIS ConceptMap, ``yijian serve`` for FHIR and ``yijian mllp``).
Each sender keeps one MLLP connection and sends in HL7 original mode (next message after
the ACK), as a LIS interface engine does. Every message is a complete 血常规 (CBC) of
``--results`` OBX for one of ``--patients`` people (valid resident ID numbers, so identity
linking runs), encoded in GBK or UTF-8 alternately. Every 200 ms a probe takes the message
acknowledged last and polls ``Observation?identifier=…`` as a doctor at another hospital
until it is found: acknowledged→visible latency.

Reported: messages/s, resources/s (entries written per message × messages/s), ACK latency
percentiles, visibility latency percentiles, and the ratios to the bars.

Usage::

    python -m bench.ingest_hl7                       # 30 s, 4 senders
    python -m bench.ingest_hl7 --duration 60 --senders 8 --results 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench._harness import (
    BENCH_SYSTEM,
    OwnHub,
    SetupError,
    cpu_calibration,
    free_port,
    percentile,
    read_cpu_jiffies,
    tcp_answers,
)

BAR_RESOURCES_PER_SECOND = 2000.0
BAR_VISIBLE_P99_S = 1.0
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONCEPT_MAP = Path(__file__).resolve().parent.parent / "fhir_profiles/conceptmaps/demo-lis.json"
FACILITY = "BENCH-LIS"

# local code, name, unit, low, high: a full CBC as Chinese analysers report it.
CBC = (
    ("WBC", "白细胞计数", "10^9/L", 3.5, 9.5),
    ("RBC", "红细胞计数", "10^12/L", 3.8, 5.1),
    ("HGB", "血红蛋白", "g/L", 115, 150),
    ("HCT", "红细胞压积", "%", 35, 45),
    ("MCV", "平均红细胞体积", "fL", 82, 100),
    ("MCH", "平均红细胞血红蛋白量", "pg", 27, 34),
    ("MCHC", "平均红细胞血红蛋白浓度", "g/L", 316, 354),
    ("PLT", "血小板计数", "10^9/L", 125, 350),
    ("RDW-CV", "红细胞分布宽度", "%", 11, 16),
    ("MPV", "平均血小板体积", "fL", 7.4, 12.5),
    ("NEUT%", "中性粒细胞百分比", "%", 40, 75),
    ("LYMPH%", "淋巴细胞百分比", "%", 20, 50),
    ("MONO%", "单核细胞百分比", "%", 3, 10),
    ("EO%", "嗜酸性粒细胞百分比", "%", 0.4, 8),
    ("BASO%", "嗜碱性粒细胞百分比", "%", 0, 1),
    ("NEUT#", "中性粒细胞绝对值", "10^9/L", 1.8, 6.3),
    ("LYMPH#", "淋巴细胞绝对值", "10^9/L", 1.1, 3.2),
    ("MONO#", "单核细胞绝对值", "10^9/L", 0.1, 0.6),
    ("EO#", "嗜酸性粒细胞绝对值", "10^9/L", 0.02, 0.52),
    ("BASO#", "嗜碱性粒细胞绝对值", "10^9/L", 0, 0.06),
    ("PCT", "血小板压积", "%", 0.11, 0.28),
    ("PDW", "血小板分布宽度", "%", 9, 17),
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩冯邓曹"
GIVEN = ("芳", "伟", "娜", "强", "敏", "磊", "静", "军", "丽", "洋", "秀英", "建国", "欣怡", "浩然")
WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def resident_id(area: str, birth: str, sequence: int) -> str:
    """A GB 11643 number with a valid check character."""
    body = f"{area}{birth}{sequence:03d}"
    total = sum(int(d) * w for d, w in zip(body, WEIGHTS, strict=True))
    return body + "10X98765432"[total % 11]


@dataclass(frozen=True)
class Person:
    mrn: str
    name: str
    gender: str
    birth: str
    resident_id: str


def people(count: int, rng: random.Random) -> list[Person]:
    result = []
    for index in range(count):
        birth = f"{rng.randint(1940, 2015)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        gender = rng.choice("MF")
        sequence = rng.randrange(0, 998, 2) + (1 if gender == "M" else 0)
        result.append(
            Person(
                f"B{index:07d}",
                rng.choice(SURNAMES) + rng.choice(GIVEN),
                gender,
                birth,
                resident_id("330106", birth, sequence),
            )
        )
    return result


def message(
    control_id: str, person: Person, filler: str, results: int, encoding: str, rng: random.Random
) -> bytes:
    now = time.strftime("%Y%m%d%H%M%S")
    charset = "GBK" if encoding == "gbk" else "UNICODE UTF-8"
    segments = [
        f"MSH|^~\\&|LIS|{FACILITY}|YIJIAN|HUB|{now}||ORU^R01|{control_id}|P|2.4|||AL|NE||{charset}",
        f"PID|1||{person.mrn}^^^{FACILITY}^MR~{person.resident_id}^^^SFZ^NNCHN||{person.name}||"
        f"{person.birth}|{person.gender}",
        f"ORC|RE|P{filler}|{filler}",
        f"OBR|1|P{filler}|{filler}|CBC^血常规|||{now}|||||||{now}|BLD^血液|||||||{now}||LAB|F",
    ]
    for index, (code, name, unit, low, high) in enumerate(CBC[:results], start=1):
        value = round(rng.uniform(low * 0.8, high * 1.2), 2)
        flag = "H" if value > high else ("L" if value < low else "N")
        segments.append(
            f"OBX|{index}|NM|{code}^{name}||{value}|{unit}|{low}-{high}|{flag}|||F|||{now}"
        )
    return ("\r".join(segments) + "\r").encode(encoding)


@dataclass
class Stats:
    acknowledged: int = 0
    refused: int = 0
    resources: int = 0
    ack_latencies: list[float] = field(default_factory=list)
    visible_latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    probes: list[tuple[str, float]] = field(default_factory=list)  # (identifier, ack time)


async def sender(
    port: int,
    number: int,
    args: argparse.Namespace,
    population: list[Person],
    stats: Stats,
    stop_at: float,
    measure_from: float,
) -> None:
    rng = random.Random(number)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sequence = 0
    try:
        while time.monotonic() < stop_at:
            sequence += 1
            control_id = f"{args.run}-{number}-{sequence}"
            filler = f"{args.run}{number:02d}{sequence:07d}"
            encoding = "gbk" if sequence % 2 else "utf-8"
            payload = message(
                control_id, rng.choice(population), filler, args.results, encoding, rng
            )
            started = time.monotonic()
            writer.write(b"\x0b" + payload + b"\x1c\r")
            await writer.drain()
            ack = await reader.readuntil(b"\x1c\r")
            finished = time.monotonic()
            if started < measure_from:
                continue
            if b"MSA|AA|" in ack:
                stats.acknowledged += 1
                stats.resources += 4 + args.results  # Patient, SR, Specimen, DR + OBX
                stats.ack_latencies.append(finished - started)
                stats.probes.append((f"{filler}:WBC:", finished))
            else:
                stats.refused += 1
                if len(stats.errors) < 5:
                    stats.errors.append(ack.decode("utf-8", "replace")[:300])
    finally:
        writer.close()


async def prober(base_url: str, token: str, org: str, stats: Stats, stop_at: float) -> None:
    """Every 200 ms, take the message acknowledged last and poll FHIR for it, as a doctor at
    another hospital would: acknowledged → visible."""
    system = f"https://yijian-hub.org/fhir/sid/org/{org}/result"
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url, headers=headers) as http:
        while time.monotonic() < stop_at:
            await asyncio.sleep(0.2)
            if not stats.probes:
                continue
            identifier, acknowledged = stats.probes[-1]
            while True:
                async with http.get(
                    "/fhir/Observation", params={"identifier": f"{system}|{identifier}"}
                ) as response:
                    body = await response.json(content_type=None)
                if body.get("entry"):
                    stats.visible_latencies.append(time.monotonic() - acknowledged)
                    break
                if time.monotonic() - acknowledged > 10:
                    stats.visible_latencies.append(float("inf"))
                    break
                await asyncio.sleep(0.005)


async def token_for(base_url: str, client_id: str, secret: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            base_url + "/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
            },
        ) as response,
    ):
        return str((await response.json())["access_token"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--results", type=int, default=20, help="OBX per message (max 22)")
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1, help="yijian serve workers")
    parser.add_argument("--mllp-workers", type=int, default=2, help="yijian mllp --workers")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args(argv)
    args.results = max(1, min(args.results, len(CBC)))
    args.run = secrets.token_hex(3).upper()

    calibration = cpu_calibration()
    own = OwnHub(
        workers=args.workers, port=free_port(), pg_admin_url=args.pg_admin_url, keep=args.keep
    )
    listener: subprocess.Popen[bytes] | None = None
    try:
        own.prepare()
        org = own.add_organization("基准医院检验科", f"{BENCH_SYSTEM}/org|LIS-{args.run}")
        doctor_org = own.add_organization("基准医院二院", f"{BENCH_SYSTEM}/org|DOC-{args.run}")
        doctor = own.add_client("doctor", doctor_org, "bench-ingest-doctor")
        env = own.env
        subprocess.run(
            [
                str(Path(sys.executable).parent / "yijian"),
                "feeds",
                "add",
                "--organization",
                org,
                "--sending-facility",
                FACILITY,
                "--feed",
                "bench-lis",
                "--authority",
                f"{FACILITY}=mrn",
                "--authority",
                "SFZ=resident-id",
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                str(Path(sys.executable).parent / "yijian"),
                "codes",
                "import",
                "bench-lis",
                str(CONCEPT_MAP),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        own.serve()
        port = free_port()
        assert own.log_path is not None
        mllp_log = own.log_path.with_name("mllp.log")
        with open(mllp_log, "wb") as log:
            listener = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "yijian"),
                    "mllp",
                    "--port",
                    str(port),
                    "--no-migrate",
                    "--no-drop-folders",
                    "--workers",
                    str(args.mllp_workers),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not tcp_answers("127.0.0.1", port):
            if listener.poll() is not None or time.monotonic() > deadline:
                raise SetupError("yijian mllp did not start:\n" + mllp_log.read_text()[-3000:])
            time.sleep(0.2)
        stats = asyncio.run(measure(args, own, port, org, doctor))
    except SetupError as error:
        print(f"setup failed: {error}", file=sys.stderr)
        return 2
    finally:
        if listener is not None and listener.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(listener.pid, signal.SIGTERM)
            listener.wait(timeout=30)
        own.stop()
    return report(args, stats, calibration)


async def measure(
    args: argparse.Namespace, own: OwnHub, port: int, org: str, doctor: tuple[str, str]
) -> tuple[Stats, float, tuple[int, int] | None, tuple[int, int] | None]:
    population = people(args.patients, random.Random(7))
    token = await token_for(own.base_url, *doctor)
    stats = Stats()
    start = time.monotonic()
    measure_from = start + args.warmup
    stop_at = measure_from + args.duration
    cpu_before: tuple[int, int] | None = None

    async def mark() -> None:
        nonlocal cpu_before
        await asyncio.sleep(args.warmup)
        cpu_before = read_cpu_jiffies()

    marker = asyncio.create_task(mark())
    probe = asyncio.create_task(prober(own.base_url, token, org, stats, stop_at))
    await asyncio.gather(
        *(
            sender(port, n, args, population, stats, stop_at, measure_from)
            for n in range(args.senders)
        )
    )
    elapsed = time.monotonic() - measure_from
    cpu_after = read_cpu_jiffies()
    await marker
    await probe
    return stats, elapsed, cpu_before, cpu_after


def report(
    args: argparse.Namespace,
    measured: tuple[Stats, float, tuple[int, int] | None, tuple[int, int] | None],
    calibration: float,
) -> int:
    stats, elapsed, cpu_before, cpu_after = measured
    if not stats.acknowledged:
        print("nothing was acknowledged", stats.errors, file=sys.stderr)
        return 1
    acks = sorted(stats.ack_latencies)
    visible = sorted(stats.visible_latencies)
    messages_per_s = stats.acknowledged / elapsed
    resources_per_s = stats.resources / elapsed
    busy = ""
    if cpu_before and cpu_after:
        total = cpu_after[1] - cpu_before[1]
        used = cpu_after[0] - cpu_before[0]
        busy = f"  machine CPU busy {100 * used / total:.0f}%" if total else ""
    print(
        f"HL7 ORU^R01 ingest over MLLP ({args.mllp_workers} listener processes):"
        f" {args.senders} senders, {args.results} OBX/message,"
        f" {args.patients} patients, {elapsed:.1f} s measured (+{args.warmup:.0f} s warm-up)"
    )
    print(
        f"  messages/s   {messages_per_s:8.1f}   ({stats.acknowledged} AA, {stats.refused} refused)"
    )
    print(
        f"  resources/s  {resources_per_s:8.1f}   bar {BAR_RESOURCES_PER_SECOND:.0f}  ratio"
        f" {resources_per_s / BAR_RESOURCES_PER_SECOND:.2f}{busy}"
    )
    print(
        f"  ACK latency  p50 {1000 * percentile(acks, 50):.1f} ms  p99"
        f" {1000 * percentile(acks, 99):.1f} ms"
    )
    if visible:
        p99 = percentile(visible, 99)
        print(
            f"  ack→visible  p50 {1000 * percentile(visible, 50):.1f} ms  p99 {1000 * p99:.1f} ms"
            f"  bar {1000 * BAR_VISIBLE_P99_S:.0f} ms  ratio {p99 / BAR_VISIBLE_P99_S:.2f}"
            f"  ({len(visible)} probes)"
        )
    print(f"  CPU calibration {calibration:.2f} (1.00 = reference machine)")
    for error in stats.errors:
        print("  refused:", error.replace("\r", " | "))
    return 1 if stats.refused > stats.acknowledged / 100 else 0


if __name__ == "__main__":
    sys.exit(main())
