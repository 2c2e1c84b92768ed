"""``yijian demo``: the whole hub on one machine, with data from several simulated hospitals.

It uses the embedded PostgreSQL unless ``YIJIAN_DATABASE_URL`` is set, applies migrations,
registers three demo hospitals, one client of each kind and the hospitals' feeds (two LIS that
send HL7 v2 over MLLP, in GBK and in UTF-8, with the demo LIS code map; a RIS whose reports also
arrive as files in a drop folder). It then runs, in this process, the API, the MLLP listener
and the drop-folder poller, and ``yijian worker`` as a child process. The demo data goes in
through the real edges: each hospital's patients and results as FHIR transaction Bundles
(conditional creates), lab results as ORU^R01 messages over MLLP and a CT report as a file in
the drop folder. The messages have fixed control ids, so a re-run is answered from the message
log: running the demo again stores nothing twice. It prints the URLs, the feeds and the
credentials; client secrets are reset on every start, since they are shown only once.

SIGINT/SIGTERM stop everything in order: the MLLP listener (messages in flight are still
answered), the drop-folder poller, the API and the worker; the embedded PostgreSQL at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import errno
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx
import uvicorn

import fhir_profiles
from hub import demo_imaging, logs
from hub.api.app import create_app
from hub.lifecycle import exit_cleanly_after_shutdown
from hub.processes import spawn_yijian
from hub.settings import Settings, load_settings
from hub.storage.database import resolve_database_url
from hub.storage.migrate import upgrade

if TYPE_CHECKING:
    from hub.ingest.mllp import MllpServer
    from hub.runtime import Hub

HOSPITAL_SYSTEM = "https://yijian.example/hospital"
RESIDENT_ID = "https://yijian-hub.org/fhir/sid/resident-id"
ACTOR = "cli:demo"
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\r"
WORKER_STOP_SECONDS = 30.0
DROP_WAIT_SECONDS = 30.0


# Web workstation accounts: role → (username, display name, hospital, fixed demo password).
# The doctor works at hospital 2, where 王芳 and 陈晓明 are patients; the consultant at
# hospital 3; the operator at hospital 1.
WEB_USERS = (
    ("doctor", "张医生 (Dr. Zhang)", "DEMO-H2", "doctor-demo-2026"),
    ("consultant", "刘主任 (Dir. Liu)", "DEMO-H3", "consultant-demo-2026"),
    ("admin", "平台运维 (Operator)", "DEMO-H1", "admin-demo-2026"),
)


@dataclass(frozen=True)
class DemoHospital:
    code: str
    name: str
    # mrn, family, given, gender, birth date, resident ID ("" if the hospital has none)
    patients: tuple[tuple[str, str, str, str, str, str], ...]


HOSPITALS = (
    DemoHospital(
        "DEMO-H1",
        "演示市第一人民医院 (Demo City No.1 People's Hospital)",
        (
            ("A1001", "王", "芳", "female", "1986-03-14", "330102198603140020"),
            ("A1002", "李", "建国", "male", "1958-10-01", "330106195810010116"),
        ),
    ),
    DemoHospital(
        "DEMO-H2",
        "演示大学附属第二医院 (Demo University Second Hospital)",
        (
            # the same 王芳 as at hospital 1 (same ID number): linked to one master patient
            ("B2001", "王", "芳", "female", "1986-03-14", "330102198603140020"),
            ("B2002", "陈", "晓明", "male", "1992-07-22", "330105199207220313"),
        ),
    ),
    DemoHospital(
        "DEMO-H3",
        "演示县人民医院 (Demo County People's Hospital)",
        (
            ("C3001", "赵", "丽", "female", "1975-12-05", "330110197512050447"),
            # 陈晓明 again, without his ID and with a homophone (小/晓): a review for an operator
            ("C3002", "陈", "小明", "male", "1992-07-22", ""),
        ),
    ),
)

# LOINC code, name, value, unit, low, high
LAB_PANEL = (
    ("718-7", "血红蛋白 Hemoglobin", 13.1, "g/dL", 11.5, 15.0),
    ("6690-2", "白细胞计数 WBC", 6.2, "10*9/L", 3.5, 9.5),
    ("777-3", "血小板计数 Platelets", 221, "10*9/L", 125, 350),
    ("2345-7", "葡萄糖 Glucose", 5.4, "mmol/L", 3.9, 6.1),
    ("1742-6", "丙氨酸氨基转移酶 ALT", 22, "U/L", 7, 40),
)


# -- inbound feeds and their HL7 v2 messages -----------------------------------------------------


@dataclass(frozen=True)
class DemoFeed:
    feed: str
    hospital: str  # DemoHospital.code; also the PID-3 assigning authority of its MRNs
    facility: str  # MSH-4: how a message finds its feed
    application: str  # MSH-3
    encoding: str
    description: str
    imaging: bool = False
    drop_folder: bool = False


FEEDS = (
    DemoFeed("demo-h1-lis", "DEMO-H1", "DEMO-H1-LIS", "LIS", "gbk", "LIS"),
    DemoFeed("demo-h2-lis", "DEMO-H2", "DEMO-H2-LIS", "LIS", "utf-8", "LIS"),
    DemoFeed(
        "demo-h3-ris",
        "DEMO-H3",
        "DEMO-H3-RIS",
        "RIS",
        "utf-8",
        "RIS (imaging reports)",
        imaging=True,
        drop_folder=True,
    ),
)
DEMO_CODE_MAP = "conceptmaps/demo-lis.json"  # local LIS codes → LOINC, for both LIS feeds
CHARSETS = {"utf-8": "UNICODE UTF-8", "gbk": "GBK"}  # MSH-18

# local code, name, value, unit, reference range, abnormal flag: as a Chinese LIS sends them
Result = tuple[str, str, str, str, str, str]
CBC_FEMALE: tuple[Result, ...] = (
    ("WBC", "白细胞计数", "6.52", "10^9/L", "3.5-9.5", "N"),
    ("RBC", "红细胞计数", "4.21", "10^12/L", "3.8-5.1", "N"),
    ("HGB", "血红蛋白", "118", "g/L", "115-150", "N"),
    ("HCT", "红细胞压积", "36.2", "%", "35-45", "N"),
    ("PLT", "血小板计数", "356", "10^9/L", "125-350", "H"),
    ("NEUT%", "中性粒细胞百分比", "71.3", "%", "40-75", "N"),
    ("LYMPH%", "淋巴细胞百分比", "19.8", "%", "20-50", "L"),
    # not in the demo code map: stored under the local code and listed by 'yijian codes unmapped'
    ("P-LCR", "大型血小板比率", "31.5", "%", "13-43", "N"),
)
CBC_MALE: tuple[Result, ...] = (
    ("WBC", "白细胞计数", "7.84", "10^9/L", "3.5-9.5", "N"),
    ("RBC", "红细胞计数", "5.02", "10^12/L", "4.3-5.8", "N"),
    ("HGB", "血红蛋白", "152", "g/L", "130-175", "N"),
    ("HCT", "红细胞压积", "45.1", "%", "40-50", "N"),
    ("PLT", "血小板计数", "231", "10^9/L", "125-350", "N"),
    ("NEUT%", "中性粒细胞百分比", "58.2", "%", "40-75", "N"),
    ("LYMPH%", "淋巴细胞百分比", "32.5", "%", "20-50", "N"),
)
LIVER_MALE: tuple[Result, ...] = (
    ("ALT", "丙氨酸氨基转移酶", "52", "U/L", "9-50", "H"),
    ("AST", "天门冬氨酸氨基转移酶", "38", "U/L", "15-40", "N"),
    ("TBIL", "总胆红素", "15.2", "umol/L", "3.4-20.5", "N"),
    ("ALB", "白蛋白", "41.2", "g/L", "40-55", "N"),
    ("GGT", "γ-谷氨酰转移酶", "61", "U/L", "10-60", "H"),
)
LIVER_FEMALE: tuple[Result, ...] = (
    ("ALT", "丙氨酸氨基转移酶", "18", "U/L", "7-40", "N"),
    ("AST", "天门冬氨酸氨基转移酶", "21", "U/L", "13-35", "N"),
    ("TBIL", "总胆红素", "12.4", "μmol/L", "3.4-20.5", "N"),
    ("ALB", "白蛋白", "44.6", "g/L", "40-55", "N"),
)
KIDNEY_FEMALE: tuple[Result, ...] = (
    ("CREA", "肌酐", "61", "μmol/L", "41-73", "N"),
    ("UREA", "尿素", "4.8", "mmol/L", "2.6-7.5", "N"),
    ("UA", "尿酸", "286", "μmol/L", "155-357", "N"),
)


@dataclass(frozen=True)
class DemoOrder:
    placer: str  # ORC-2/OBR-2
    filler: str  # ORC-3/OBR-3: identifies the report
    code: str  # OBR-4
    name: str
    specimen: str  # OBR-15
    section: str  # OBR-24
    results: tuple[Result, ...] = ()
    # imaging: the accession number (OBR-18) and the report text as (OBX-3, text)
    accession: str = ""
    text: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DemoMessage:
    control_id: str  # MSH-10, fixed: a re-run is answered from the message log
    feed: str
    mrn: str
    department: str  # PV1-3
    collected: str  # YYYYMMDDHHMMSS
    reported: str
    orders: tuple[DemoOrder, ...] = field(default_factory=tuple)


MLLP_MESSAGES = (
    DemoMessage(
        "DEMO-H1-LIS-20261119-0001",
        "demo-h1-lis",
        "A1001",
        "内科门诊",
        "20261119082000",
        "20261119103000",
        (DemoOrder("H1AP261119001", "H1XS261119001", "CBC", "血常规", "全血", "LAB", CBC_FEMALE),),
    ),
    DemoMessage(
        "DEMO-H1-LIS-20261119-0002",
        "demo-h1-lis",
        "A1002",
        "消化内科门诊",
        "20261119083500",
        "20261119113000",
        (DemoOrder("H1AP261119002", "H1SH261119002", "LFT", "肝功能", "血清", "LAB", LIVER_MALE),),
    ),
    DemoMessage(
        "DEMO-H2-LIS-20261120-0001",
        "demo-h2-lis",
        "B2001",
        "肾内科门诊",
        "20261120081500",
        "20261120112000",
        (
            DemoOrder(
                "H2AP261120001", "H2SH261120001", "LFT", "肝功能", "血清", "LAB", LIVER_FEMALE
            ),
            DemoOrder(
                "H2AP261120002", "H2SH261120002", "RFT", "肾功能", "血清", "LAB", KIDNEY_FEMALE
            ),
        ),
    ),
    DemoMessage(
        "DEMO-H2-LIS-20261120-0002",
        "demo-h2-lis",
        "B2002",
        "体检中心",
        "20261120090000",
        "20261120101500",
        (DemoOrder("H2AP261120003", "H2XS261120003", "CBC", "血常规", "全血", "LAB", CBC_MALE),),
    ),
)
DROPPED_MESSAGES = (
    DemoMessage(
        "DEMO-H3-RIS-20261121-0001",
        "demo-h3-ris",
        "C3001",
        "呼吸内科门诊",
        "20261121150000",
        "20261121161500",
        (
            DemoOrder(
                "H3CTAP261121001",
                "H3CTR261121001",
                "CTCHEST",
                "胸部CT平扫",
                "",
                "CT",
                accession="CT20261121000101",
                text=(
                    ("GDT^检查所见^L", "胸廓对称，气管居中。"),
                    ("GDT^检查所见^L", "右肺上叶尖段见一磨玻璃结节，大小约6mm×5mm，边界清楚。"),
                    ("GDT^检查所见^L", "纵隔内未见肿大淋巴结，双侧胸腔未见积液。"),
                    ("IMP^诊断意见^L", "1. 右肺上叶磨玻璃结节，建议12个月后复查。"),
                    ("IMP^诊断意见^L", "2. 余胸部CT平扫未见明显异常。"),
                ),
            ),
        ),
    ),
)
# The images of that CT, sent by hospital 3's CT room to the DICOM receiver.
DEMO_STUDY = demo_imaging.DemoStudy(
    patient_id="C3001",
    name="赵^丽",
    birth_date="19751205",
    sex="F",
    accession="CT20261121000101",
    date="20261121",
)
# Written to DATA_DIR/demo/ for people to send themselves (mllp_send --loose --file ...).
EXAMPLE_MESSAGE = DemoMessage(
    "DEMO-H2-LIS-TRY-0001",
    "demo-h2-lis",
    "B2002",
    "内分泌科门诊",
    "20261122080000",
    "20261122093000",
    (
        DemoOrder(
            "H2AP261122001",
            "H2SH261122001",
            "DM",
            "糖尿病监测",
            "血清",
            "LAB",
            (
                ("GLU", "葡萄糖", "5.6", "mmol/L", "3.9-6.1", "N"),
                ("HbA1c", "糖化血红蛋白", "5.9", "%", "4.0-6.0", "N"),
            ),
        ),
    ),
)


def _feed(feed_id: str) -> DemoFeed:
    return next(f for f in FEEDS if f.feed == feed_id)


def _patient(hospital_code: str, mrn: str) -> tuple[str, str, str, str, str, str]:
    hospital = next(h for h in HOSPITALS if h.code == hospital_code)
    return next(p for p in hospital.patients if p[0] == mrn)


def _segment(name: str, fields: dict[int, str]) -> str:
    return "|".join([name, *(fields.get(n, "") for n in range(1, max(fields) + 1))])


def oru_message(message: DemoMessage, separator: str = "\r") -> bytes:
    """The ORU^R01 of a demo message, encoded as its feed declares (always the same bytes)."""
    feed = _feed(message.feed)
    mrn, family, given, gender, birth, resident_id = _patient(feed.hospital, message.mrn)
    ids = f"{mrn}^^^{feed.hospital}^MR"
    if resident_id:
        ids += f"~{resident_id}^^^SFZ^NNCHN"
    segments = [
        f"MSH|^~\\&|{feed.application}|{feed.facility}|YIJIAN|YIJIAN-HUB|{message.reported}"
        f"||ORU^R01^ORU_R01|{message.control_id}|P|2.4|||AL|NE|CHN|{CHARSETS[feed.encoding]}",
        _segment(
            "PID",
            {
                1: "1",
                3: ids,
                5: f"{family}^{given}",
                7: birth.replace("-", ""),
                8: gender[0].upper(),
            },
        ),
        _segment("PV1", {1: "1", 2: "O", 3: message.department}),
    ]
    for index, order in enumerate(message.orders, start=1):
        segments.append(_segment("ORC", {1: "RE", 2: order.placer, 3: order.filler, 5: "CM"}))
        obr = {
            1: str(index),
            2: order.placer,
            3: order.filler,
            4: f"{order.code}^{order.name}^L",
            7: message.collected,
            14: message.collected,
            15: order.specimen,
            22: message.reported,
            24: order.section,
            25: "F",
        }
        if order.accession:
            obr[18] = order.accession
        segments.append(_segment("OBR", obr))
        for number, (code, name, value, unit, reference, flag) in enumerate(order.results, 1):
            segments.append(
                _segment(
                    "OBX",
                    {
                        1: str(number),
                        2: "NM",
                        3: f"{code}^{name}^L",
                        5: value,
                        6: unit,
                        7: reference,
                        8: flag,
                        11: "F",
                        14: message.collected,
                    },
                )
            )
        for number, (kind, text) in enumerate(order.text, 1):
            segments.append(_segment("OBX", {1: str(number), 2: "TX", 3: kind, 5: text, 11: "F"}))
    return (separator.join(segments) + separator).encode(feed.encoding)


# -- the demo process ----------------------------------------------------------------------------


def run_demo(
    host: str, port: int, mllp_port: int | None = None, dicom_port: int | None = None
) -> None:
    """Run the demo until SIGINT/SIGTERM. ``mllp_port`` None: ``YIJIAN_MLLP_PORT`` (2575);
    ``dicom_port`` None: ``YIJIAN_DICOM_PORT`` (11112)."""
    logs.configure("WARNING")
    settings = load_settings()
    if mllp_port is None:
        mllp_port = settings.mllp_port
    if dicom_port is None:
        dicom_port = settings.dicom_port
    if len({port, mllp_port, dicom_port}) < 3:
        raise click.ClickException(
            f"the API, the MLLP listener and the DICOM receiver need three ports, not"
            f" {port}, {mllp_port} and {dicom_port}"
        )
    # Before anything starts: a port in use is a message and exit status 1, not a traceback.
    _check_port(host, port, "the API", "--port")
    _check_port(host, mllp_port, "the MLLP listener", "--mllp-port")
    if demo_imaging.receiver_available():
        _check_port(host, dicom_port, "the DICOM receiver", "--dicom-port")
    url = resolve_database_url(settings)
    os.environ["YIJIAN_DATABASE_URL"] = url
    upgrade(url)
    exit_cleanly_after_shutdown()  # so the embedded PostgreSQL is stopped on Ctrl-C/SIGTERM
    try:
        asyncio.run(_demo(host, port, mllp_port, dicom_port, url))
    finally:
        exit_cleanly_after_shutdown()  # the event loop's signal handlers are gone again


def _check_port(host: str, port: int, what: str, option: str) -> None:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            probe.bind(address)
    except OSError as error:
        reason = (
            "is already in use"
            if error.errno == errno.EADDRINUSE
            else f"cannot be used ({error.strerror or error})"
        )
        raise click.ClickException(
            f"{host}:{port} for {what} {reason}; stop what is using it or choose another port"
            f" with {option}"
        ) from None


class _DemoServer(uvicorn.Server):
    """uvicorn without its own signal handling: the demo stops every part itself, in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class _Parts:
    """What the demo has started, so that a stop (or a failed start) stops exactly that."""

    hub: Hub
    server: _DemoServer
    server_task: asyncio.Task[None] | None = None
    mllp: MllpServer | None = None
    folders_stop: asyncio.Event = field(default_factory=asyncio.Event)
    folders_task: asyncio.Task[None] | None = None
    worker: subprocess.Popen[bytes] | None = None
    worker_log: Path | None = None
    dicom: subprocess.Popen[bytes] | None = None
    dicom_log: Path | None = None
    dicom_port: int = 0

    def children(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in (self.worker, self.dicom) if p is not None]

    async def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            self.worker.terminate()  # Celery's warm shutdown, alongside the rest
        if self.dicom is not None and self.dicom.poll() is None:
            self.dicom.terminate()  # finishes open associations, writes pending studies
        if self.mllp is not None:
            await self.mllp.stop()
        self.folders_stop.set()
        if self.folders_task is not None:
            await self.folders_task
        if self.server_task is not None:
            self.server.should_exit = True
            with contextlib.suppress(Exception):
                await self.server_task  # the app's lifespan stops the hub
        else:
            await self.hub.database.dispose()
        if self.worker is not None:
            await _wait_for_worker(self.worker)
        await demo_imaging.stop_receiver(self.dicom)


async def _wait_for_worker(worker: subprocess.Popen[bytes]) -> None:
    try:
        await asyncio.to_thread(worker.wait, WORKER_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool processes
        await asyncio.to_thread(worker.wait)


async def _demo(host: str, port: int, mllp_port: int, dicom_port: int, url: str) -> None:
    from hub.runtime import Hub

    settings = load_settings(database_url=url)
    hub = Hub.build(settings)
    server = _DemoServer(
        uvicorn.Config(
            create_app(settings, hub), host=host, port=port, log_config=None, access_log=False
        )
    )
    parts = _Parts(hub, server, dicom_port=dicom_port)
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: do not wait for connections or the worker
            server.force_exit = True
            for child in parts.children():
                if child.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.pid, signal.SIGKILL)
        stop.set()

    loop = asyncio.get_running_loop()
    for handled in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(handled, on_signal)
    starting = asyncio.create_task(_start(parts, settings, host, port, mllp_port, url))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        starting.result()  # a failed start raises here (after the finally below)
        assert parts.server_task is not None
        worker_reported = False
        while not stop.is_set() and not parts.server_task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if parts.worker and parts.worker.poll() is not None and not worker_reported:
                worker_reported = True
                print(
                    f"yijian demo: the worker exited with status {parts.worker.returncode};"
                    f" see {parts.worker_log}",
                    file=sys.stderr,
                    flush=True,
                )
        if not stop.is_set():
            raise click.ClickException("the API stopped unexpectedly")
    finally:
        stopping.cancel()
        await parts.stop()
        for handled in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(handled)


async def _start(
    parts: _Parts, settings: Settings, host: str, port: int, mllp_port: int, url: str
) -> None:
    from hub.ingest.files import DropFolders
    from hub.ingest.mllp import MllpServer

    hub = parts.hub
    data_dir = settings.data_dir.resolve()
    credentials = await _register(hub)
    await _register_web_users(hub, credentials)
    backfill = await _register_feeds(hub, credentials, data_dir)
    parts.worker, parts.worker_log = _start_worker(url, data_dir)
    if demo_imaging.receiver_available():
        await demo_imaging.register_ae(hub, credentials[f"hospital:{HOSPITALS[2].code}"]["org"])
        parts.dicom, parts.dicom_log = demo_imaging.start_receiver(
            url, data_dir, host, parts.dicom_port
        )
    parts.server_task = asyncio.create_task(parts.server.serve())
    while not parts.server.started:
        if parts.server_task.done():
            parts.server_task.result()
            raise click.ClickException(f"the API could not start on {host}:{port}")
        await asyncio.sleep(0.05)
    parts.mllp = MllpServer(hub, host, mllp_port)
    try:
        await parts.mllp.start()
    except OSError as error:
        parts.mllp = None
        raise click.ClickException(
            f"the MLLP listener cannot listen on {host}:{mllp_port} ({error.strerror or error});"
            " choose another port with --mllp-port"
        ) from None
    parts.folders_task = asyncio.create_task(DropFolders(hub).run(parts.folders_stop))
    base = f"http://{_client_host(host)}:{port}"
    loaded = await _load(base, credentials)
    inbound = await _send_hl7(hub, _client_host(host), mllp_port, data_dir)
    inbound.backfill = backfill
    inbound.example = _write_example(data_dir)
    inbound.cds_example = _write_cds_example(data_dir)
    if parts.dicom is not None:
        inbound.images = await demo_imaging.send_study(
            _client_host(host), parts.dicom_port, DEMO_STUDY
        )
    _print_banner(base, credentials, loaded, url, inbound, parts)


def _client_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


async def _register(hub: Hub) -> dict[str, dict[str, str]]:
    """Demo organizations and clients; returns role → {client_id, client_secret, org}."""
    from hub.records.unit_of_work import unit_of_work
    from hub.security.clients import ClientRegistry
    from hub.security.principals import ClientKind, Principal
    from hub.storage.resources import WriteContext

    operator = Principal(
        ACTOR, "demo loader", ClientKind.ADMIN, "hub", frozenset({"system/*.cruds"})
    )
    orgs = {}
    async with unit_of_work(hub.database, transaction=True) as uow:
        for number, hospital in enumerate(HOSPITALS):
            outcome = await hub.records.create(
                uow,
                operator,
                "Organization",
                {
                    "resourceType": "Organization",
                    "active": True,
                    "name": hospital.name,
                    "identifier": [{"system": HOSPITAL_SYSTEM, "value": hospital.code}],
                    "extension": _recognition_extensions(number),
                },
                WriteContext(operator.client_id, "hub", None),
                if_none_exist=f"identifier={HOSPITAL_SYSTEM}|{hospital.code}",
            )
            orgs[hospital.code] = outcome.stored.resource_id
    roles = [(f"hospital:{h.code}", ClientKind.HOSPITAL, orgs[h.code]) for h in HOSPITALS]
    roles += [
        ("doctor", ClientKind.DOCTOR, orgs["DEMO-H2"]),
        ("consultant", ClientKind.CONSULTANT, orgs["DEMO-H3"]),
        ("admin", ClientKind.ADMIN, orgs["DEMO-H1"]),
    ]
    credentials = {}
    async with hub.database.connection() as conn:
        registry = ClientRegistry(conn)
        existing = {(c.name, c.organization): c for c in await registry.list() if not c.revoked_at}
        for role, kind, org in roles:
            name = f"demo {role}"
            client = existing.get((name, org))
            if client is None:
                record, secret = await registry.add(kind, org, name)
                client_id = record.client_id
            else:
                client_id, secret = client.client_id, await registry.reset_secret(client.client_id)
            credentials[role] = {"client_id": client_id, "client_secret": secret, "org": org}
    return credentials


async def _register_web_users(hub: Hub, credentials: dict[str, dict[str, str]]) -> None:
    """The demo's web accounts, with their fixed passwords (set again on every run)."""
    from hub.security.principals import ClientKind
    from hub.web.accounts import AccountRepository, hash_password

    hospital_orgs = {
        code: credentials[f"hospital:{code}"]["org"] for code in (h.code for h in HOSPITALS)
    }
    async with hub.database.connection() as conn:
        accounts = AccountRepository(conn)
        for role, name, hospital, password in WEB_USERS:
            password_hash = await hash_password(password)
            if await accounts.get(role) is None:
                await accounts.create(
                    role, name, ClientKind(role), hospital_orgs[hospital], password_hash
                )
            else:
                await accounts.set_password(role, password_hash)
                await accounts.set_active(role, True)


def _recognition_extensions(number: int) -> list[dict[str, Any]]:
    """Where a demo hospital is (all in Hangzhou: the city scope recognises each other's
    results) and its quality-control passes, valid from a year ago to a year ahead."""
    from hub.recognition.institutions import COMMUNITY_URL, REGION_URL, qc_pass_extension

    today = datetime.date.today()
    start, end = (
        (today - datetime.timedelta(days=365)).isoformat(),
        (today + datetime.timedelta(days=365)).isoformat(),
    )
    region = ("330102", "330106", "330105")[number % 3]
    disciplines = ["hematology", "clinical-chemistry", "immunology", "body-fluids", "radiology"]
    return [
        {"url": REGION_URL, "valueCode": region},
        {"url": COMMUNITY_URL, "valueString": "演示医共体 demo medical community"},
        *(qc_pass_extension(d, start, end, "演示省临床检验中心 EQA") for d in disciplines),
    ]


def _short_name(hospital: DemoHospital) -> str:
    return hospital.name.split(" (")[0]


def _drop_folder(data_dir: Path, feed: DemoFeed) -> Path:
    return data_dir / "drop" / feed.hospital


async def _register_feeds(hub: Hub, credentials: dict[str, dict[str, str]], data_dir: Path) -> int:
    """The demo hospitals' feeds (saved again on every start: idempotent) and the demo code
    map of the LIS feeds. Returns how many mappings are new or changed; their back-fill (of
    results stored while they were missing) is queued for the worker."""
    from hub.ingest.feeds import FeedConfig, FeedInputs

    code_map = fhir_profiles.load(DEMO_CODE_MAP)
    changed = 0
    for demo in FEEDS:
        hospital = next(h for h in HOSPITALS if h.code == demo.hospital)
        folder = _drop_folder(data_dir, demo) if demo.drop_folder else None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        feed = FeedConfig(
            feed=demo.feed,
            organization=credentials[f"hospital:{demo.hospital}"]["org"],
            name=f"{_short_name(hospital)} {demo.description}",
            sending_facility=demo.facility,
            encoding=demo.encoding,  # type: ignore[arg-type]
            inputs=FeedInputs(file_drop=folder),
            identifiers={demo.hospital: "mrn", "SFZ": "resident-id"},
            options={"kind": "imaging"} if demo.imaging else {},
        )
        await hub.ingest.feeds.register(feed)
        if demo.imaging:
            continue
        codes = await hub.ingest.import_concept_map(demo.feed, code_map, ACTOR)
        if codes:
            await hub.ingest.schedule_backfill(feed.local_code_system, codes)
            changed += len(codes)
    return changed


def _start_worker(url: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """``yijian worker --beat`` as a child process (Celery installs its own signal handlers),
    on the same database and data directory (hence the same embedded broker). Its own
    process group: a terminal's Ctrl-C reaches only the demo, which stops the worker itself
    (after the listener), and a stuck worker can be killed whole."""
    log_path = data_dir / "logs" / "demo-worker.log"
    process = spawn_yijian(
        ["worker", "--beat", "--concurrency", "1"],
        log_path,
        {"YIJIAN_DATABASE_URL": url, "YIJIAN_DATA_DIR": str(data_dir)},
    )
    return process, log_path


@dataclass
class _Inbound:
    """What the HL7 v2 part of the loading did, for the banner."""

    sent: int = 0
    accepted: int = 0
    new: int = 0
    problems: list[str] = field(default_factory=list)
    backfill: int = 0
    example: Path | None = None
    cds_example: Path | None = None
    images: int = 0  # CT slices stored by the DICOM receiver


async def _send_hl7(hub: Hub, host: str, port: int, data_dir: Path) -> _Inbound:
    """The demo's ORU^R01 messages, through the real edges: each LIS's messages over one MLLP
    connection to the listener, the RIS report as a file in its feed's drop folder."""
    from hub.ingest.ledger import MessageLog

    inbound = _Inbound()
    known = set()
    async with hub.database.connection() as conn:
        for message in (*MLLP_MESSAGES, *DROPPED_MESSAGES):
            if await MessageLog(conn).find(message.feed, message.control_id) is not None:
                known.add(message.control_id)
    for feed in FEEDS:
        messages = [m for m in MLLP_MESSAGES if m.feed == feed.feed]
        if not messages:
            continue
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for message in messages:
                writer.write(START_BLOCK + oru_message(message) + END_BLOCK)
                await writer.drain()
                frame = await asyncio.wait_for(reader.readuntil(END_BLOCK), 60)
                code, reason = _acknowledgement(frame, feed.encoding)
                inbound.sent += 1
                if code == "AA":
                    inbound.accepted += 1
                    inbound.new += message.control_id not in known
                else:
                    inbound.problems.append(f"{message.control_id}: {code} {reason}")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    for message in DROPPED_MESSAGES:
        folder = _drop_folder(data_dir, _feed(message.feed))
        name = f"{message.control_id}.hl7"
        for done in ("processed", "failed"):
            (folder / done / name).unlink(missing_ok=True)  # left by an earlier run
        partial = folder / f".{name}.part"  # dot files are not picked up
        partial.write_bytes(oru_message(message))
        partial.replace(folder / name)
        inbound.sent += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DROP_WAIT_SECONDS
        while (folder / name).exists() and loop.time() < deadline:
            await asyncio.sleep(0.2)
        if (folder / "processed" / name).exists():
            inbound.accepted += 1
            inbound.new += message.control_id not in known
        elif (folder / name).exists():
            inbound.problems.append(f"{name}: not taken from {folder} yet")
        else:
            inbound.problems.append(f"{name}: refused (see 'yijian deadletter list')")
    return inbound


def _acknowledgement(frame: bytes, encoding: str) -> tuple[str, str]:
    """(MSA-1, MSA-3) of an ACK."""
    text = frame.strip(START_BLOCK + END_BLOCK + b"\n").decode(encoding, errors="replace")
    for segment in text.split("\r"):
        fields = segment.split("|")
        if fields[0] == "MSA":
            return fields[1] if len(fields) > 1 else "", fields[3] if len(fields) > 3 else ""
    return "", text[:200]


def _write_example(data_dir: Path) -> Path:
    """An ORU^R01 for people to send themselves (one segment a line, for ``mllp_send --loose``)."""
    path = data_dir / "demo" / "oru-try-me.hl7"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(oru_message(EXAMPLE_MESSAGE, separator="\n"))
    return path


def _write_cds_example(data_dir: Path) -> Path:
    """A CDS Hooks order-sign request from hospital 3's EHR: 王芳 (known to it only by her
    resident ID) is about to get a CBC, a liver function panel and a chest CT."""
    orders = [
        ("order-cbc", "http://loinc.org", "58410-2", "血常规 CBC"),
        ("order-lft", "http://loinc.org", "24325-3", "肝功能 Hepatic function panel"),
        ("order-ct", "http://loinc.org", "24627-2", "胸部CT CT Chest"),
    ]
    request = {
        "hook": "order-sign",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {
            "userId": "Practitioner/demo-doctor",
            "patientId": "ehr-patient-1",
            "draftOrders": {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "ServiceRequest",
                            "id": order_id,
                            "status": "draft",
                            "intent": "order",
                            "code": {"coding": [{"system": system, "code": code}], "text": text},
                            "subject": {"reference": "Patient/ehr-patient-1"},
                        }
                    }
                    for order_id, system, code, text in orders
                ],
            },
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "id": "ehr-patient-1",
                "identifier": [{"system": RESIDENT_ID, "value": "330102198603140020"}],
            }
        },
        "extension": {"org.yijian-hub.department": "心内科 Cardiology"},
    }
    path = data_dir / "demo" / "cds-order-sign.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(request, ensure_ascii=False, indent=2), encoding="utf-8")
    return path


async def _load(base: str, credentials: dict[str, dict[str, str]]) -> int:
    """Push each hospital's results as a transaction Bundle through the FHIR API."""
    count = 0
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for hospital in HOSPITALS:
            creds = credentials[f"hospital:{hospital.code}"]
            token = (
                await http.post(
                    "/auth/token",
                    data={
                        "grant_type": "client_credentials",
                        "client_id": creds["client_id"],
                        "client_secret": creds["client_secret"],
                    },
                )
            ).json()["access_token"]
            for patient in hospital.patients:
                bundle = _patient_bundle(hospital, creds["org"], patient)
                response = await http.post(
                    "/fhir",
                    json=bundle,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/fhir+json",
                    },
                )
                response.raise_for_status()
                count += sum(
                    1 for e in response.json()["entry"] if e["response"]["status"].startswith("201")
                )
    return count


def _days_ago(days: int, clock: str) -> str:
    """A local time some days before today: the demo's FHIR results are always recent, so
    the reuse check has something to find (a re-run creates nothing: the pushes are
    conditional on the results' identifiers)."""
    day = datetime.date.today() - datetime.timedelta(days=days)
    return f"{day.isoformat()}T{clock}:00+08:00"


def _patient_bundle(hospital: DemoHospital, org: str, patient: tuple[str, ...]) -> dict[str, Any]:
    mrn, family, given, gender, birth, resident_id = patient
    mrn_system = f"https://yijian-hub.org/fhir/sid/org/{org}/mrn"
    identifiers = [{"system": mrn_system, "value": mrn}]
    if resident_id:
        identifiers.append({"system": RESIDENT_ID, "value": resident_id})
    patient_url = f"urn:uuid:patient-{hospital.code}-{mrn}"
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": patient_url,
            "resource": {
                "resourceType": "Patient",
                "identifier": identifiers,
                "name": [{"family": family, "given": [given], "text": family + given}],
                "gender": gender,
                "birthDate": birth,
                "managingOrganization": {"reference": f"Organization/{org}"},
            },
            "request": {
                "method": "POST",
                "url": "Patient",
                "ifNoneExist": f"identifier={mrn_system}|{mrn}",
            },
        }
    ]
    result_refs = []
    for index, (code, name, value, unit, low, high) in enumerate(LAB_PANEL):
        accession = f"{hospital.code}-{mrn}-{code}"
        full_url = f"urn:uuid:obs-{accession}"
        result_refs.append({"reference": full_url})
        entries.append(
            {
                "fullUrl": full_url,
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "identifier": [
                        {
                            "system": f"https://yijian.example/lab/{hospital.code}",
                            "value": accession,
                        }
                    ],
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                    "code": "laboratory",
                                }
                            ]
                        }
                    ],
                    "code": {
                        "coding": [{"system": "http://loinc.org", "code": code, "display": name}],
                        "text": name,
                    },
                    "subject": {"reference": patient_url},
                    "effectiveDateTime": _days_ago(2 + index % 3, "08:30"),
                    "issued": _days_ago(2 + index % 3, "11:00"),
                    "performer": [{"reference": f"Organization/{org}"}],
                    "valueQuantity": {
                        "value": value,
                        "unit": unit,
                        "system": "http://unitsofmeasure.org",
                        "code": unit,
                    },
                    "referenceRange": [
                        {"low": {"value": low, "unit": unit}, "high": {"value": high, "unit": unit}}
                    ],
                },
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": f"identifier=https://yijian.example/lab/{hospital.code}|{accession}",
                },
            }
        )
    report_id = f"{hospital.code}-{mrn}-CBC"
    entries.append(
        {
            "fullUrl": f"urn:uuid:report-{report_id}",
            "resource": {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "identifier": [
                    {"system": f"https://yijian.example/report/{hospital.code}", "value": report_id}
                ],
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                "code": "LAB",
                            }
                        ]
                    }
                ],
                "code": {
                    "coding": [
                        {"system": "http://loinc.org", "code": "58410-2", "display": "CBC panel"}
                    ],
                    "text": "血常规 Complete blood count",
                },
                "subject": {"reference": patient_url},
                "effectiveDateTime": _days_ago(2, "08:30"),
                "issued": _days_ago(2, "11:00"),
                "performer": [{"reference": f"Organization/{org}"}],
                "result": result_refs[:3],
                "conclusion": "血常规未见明显异常 (no significant abnormality)",
            },
            "request": {
                "method": "POST",
                "url": "DiagnosticReport",
                "ifNoneExist": f"identifier=https://yijian.example/report/{hospital.code}|{report_id}",
            },
        }
    )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _command(name: str) -> str:
    """How to call one of this environment's scripts from the current directory."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    try:
        relative = path.relative_to(Path.cwd())
    except ValueError:
        return str(path)
    return str(relative) if relative.parts[0].startswith(".") else f"./{relative}"


def _print_banner(
    base: str,
    credentials: dict[str, dict[str, str]],
    loaded: int,
    db: str,
    inbound: _Inbound,
    parts: _Parts,
) -> None:
    hub = parts.hub
    data_dir = hub.settings.data_dir.resolve()
    assert parts.mllp is not None and parts.worker is not None
    mllp = f"{_client_host(parts.mllp.host)}:{parts.mllp.port}"
    dropped = len(DROPPED_MESSAGES)
    lines = [
        "",
        "Yijian Hub (医检互认平台) demo is running.  Ctrl-C stops it.",
        f"  FHIR R4 base         {base}/fhir        (CapabilityStatement: {base}/fhir/metadata)",
        f"  OAuth2 token         {base}/auth/token  (grant_type=client_credentials)",
        f"  Health / metrics     {base}/healthz  {base}/metrics",
        f"  API docs             {base}/api/docs",
        f"  CDS Hooks            {base}/cds-services  (exam-reuse: order-select;"
        " exam-reuse-sign: order-sign)",
        f"  HL7 v2 MLLP          {mllp}  (ORU^R01; MSH-4 chooses the feed; ACK after commit)",
        *(
            [
                f"  DICOM C-STORE        {_client_host(parts.mllp.host)}:{parts.dicom_port}"
                f" AE {demo_imaging.SCP_AE}  (calling AE"
                f" {demo_imaging.DICOM_AE}: hospital 3; log: {parts.dicom_log})",
                f"  DICOMweb             {base}/dicomweb  (QIDO-RS, WADO-RS, STOW-RS; WADO-URI"
                " at /wado)",
            ]
            if parts.dicom is not None
            else []
        ),
        f"  Drop folder          {_drop_folder(data_dir, FEEDS[2])}/  (*.hl7 of {FEEDS[2].feed})",
        f"  Worker               yijian worker --beat, pid {parts.worker.pid}"
        f"  (log: {parts.worker_log})",
        *(
            [f"                       queued: back-fill of {inbound.backfill} new code mappings"]
            if inbound.backfill
            else []
        ),
        f"  Database             {'embedded PostgreSQL' if 'host=/' in db else db}",
        f"  Demo data            3 hospitals; FHIR: {loaded} resources created this run "
        "(0 on a re-run: pushes are idempotent)",
        f"                       HL7 v2: {len(MLLP_MESSAGES)} ORU^R01 over MLLP + {dropped} CT"
        f" report via the drop folder, {inbound.accepted} of {inbound.sent} acknowledged AA,"
        f" {inbound.new} new this run",
        "                       (fixed control ids: a re-run is answered from the message log,"
        " nothing is stored twice)",
    ]
    if parts.dicom is not None:
        lines.append(
            f"                       DICOM: {inbound.images} of {demo_imaging.SLICES} CT slices"
            " of 赵丽 stored (hospital 3; linked to its CT report by accession number)"
        )
    lines += [f"  ! not accepted: {problem}" for problem in inbound.problems]
    if parts.dicom is None:
        lines.append("  Not yet in this build: DICOM receiver (imaging package missing)")
    lines += [
        "",
        f"Web workstation: {base}/  (中文; English: {base}/lang/en)",
        *(
            f"  {role:<11} password {password:<21} {name}, {hospital}"
            for role, name, hospital, password in WEB_USERS
        ),
        "",
        "Feeds (PID-3 authorities: DEMO-Hn → the hospital's MRN, SFZ → resident ID):",
    ]
    for demo in FEEDS:
        inputs = "MLLP, drop folder" if demo.drop_folder else "MLLP"
        hospital = next(h for h in HOSPITALS if h.code == demo.hospital)
        codes = "" if demo.imaging else "; codes: demo LIS map → LOINC"
        lines.append(
            f"  {demo.feed:<12} MSH-4 {demo.facility:<12} {demo.encoding.upper():<6} "
            f"{inputs:<18} {_short_name(hospital)} {demo.description}{codes}"
        )
    lines += ["", "Demo clients (secrets are reset each time the demo starts):"]
    for role, creds in credentials.items():
        lines.append(
            f"  {role:<20} client_id={creds['client_id']}  client_secret={creds['client_secret']}"
        )
    doctor = credentials["doctor"]
    admin = credentials["admin"]
    h3 = credentials[f"hospital:{HOSPITALS[2].code}"]
    yijian = _command("yijian")
    in_data_dir = (
        f"YIJIAN_DATA_DIR={data_dir} " if os.environ.get("YIJIAN_DATA_DIR") is not None else ""
    )
    lines += [
        "",
        "Try:",
        f"  TOKEN=$(curl -s -d grant_type=client_credentials -d client_id={doctor['client_id']} "
        f"-d client_secret={doctor['client_secret']} {base}/auth/token | python3 -c "
        "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        "  # A doctor reads a patient's record only with a purpose of use. Checking before an",
        "  # order is one (ordering, 2 hours); 王芳 is also a patient of the doctor's hospital 2,",
        "  # so POST /access/grants with purposeOfUse TREAT would do too (see README).",
        f'  curl -s -H "Authorization: Bearer $TOKEN" \'{base}/fhir/Patient/$reusable-results?'
        f"identifier={RESIDENT_ID}|330102198603140020&code=http://loinc.org|58410-2'",
        "  # 王芳 is at hospitals 1 and 2 with one ID number: one master patient. Her reports from",
        "  # both, pushed as FHIR and received as HL7 v2 (血常规 from 1, 肝功能/肾功能 from 2):",
        f'  curl -s -H "Authorization: Bearer $TOKEN" \'{base}/fhir/DiagnosticReport?'
        f"patient.identifier={RESIDENT_ID}|330102198603140020"
        "&_include=DiagnosticReport:result&_pretty=true'",
        "  # 陈小明 (hospital 3, no ID) may be 陈晓明 (hospital 2): waiting for an operator",
        f"  {in_data_dir}{yijian} identity reviews",
        "  # the inbound side: feeds, local codes without a LOINC mapping (P-LCR from hospital 1),",
        "  # refused messages (dead letters)",
        f"  {in_data_dir}{yijian} feeds list",
        f"  {in_data_dir}{yijian} codes unmapped",
        f"  {in_data_dir}{yijian} deadletter list",
        "  # mutual recognition: hospital 3's EHR is about to order a CBC, liver function and a",
        "  # chest CT for 王芳; the hub answers CDS Hooks cards for what she already has elsewhere",
        f"  EHR=$(curl -s -d grant_type=client_credentials -d client_id={h3['client_id']} "
        f"-d client_secret={h3['client_secret']} {base}/auth/token | python3 -c "
        "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f'  curl -s -H "Authorization: Bearer $EHR" -H "Content-Type: application/json"'
        f" -d @{inbound.cds_example} {base}/cds-services/exam-reuse-sign | python3 -m json.tool",
        f"  {in_data_dir}{yijian} recognition stats        # reminders, decisions, savings",
        f"  {in_data_dir}{yijian} catalogue list           # what may be reused, for how long",
        "  # send an ORU^R01 yourself with the hl7 package's mllp_send (it prints the ACK; the",
        "  # same message again is acknowledged again and stored once):",
        f"  {_command('mllp_send')} --loose --file {inbound.example} --port {parts.mllp.port}"
        f" {_client_host(parts.mllp.host)}",
    ]
    if parts.dicom is not None:
        lines += [
            "  # imaging: 赵丽's chest CT, found by DICOMweb QIDO and as a FHIR ImagingStudy (as",
            "  # the operator: the doctor would need a purpose of use for 赵丽 first)",
            f"  ADMIN=$(curl -s -d grant_type=client_credentials -d client_id={admin['client_id']} "
            f"-d client_secret={admin['client_secret']} {base}/auth/token | python3 -c "
            "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
            f'  curl -s -H "Authorization: Bearer $ADMIN" \'{base}/dicomweb/studies?'
            f"PatientID={DEMO_STUDY.patient_id}&AccessionNumber={DEMO_STUDY.accession}'"
            " | python3 -m json.tool",
            f'  curl -s -H "Authorization: Bearer $ADMIN" \'{base}/fhir/ImagingStudy?'
            f"_include=ImagingStudy:subject&_pretty=true'",
            "  # send DICOM files yourself (dcmtk's storescu, as the CT room's AE title):",
            f"  storescu -aet {demo_imaging.DICOM_AE} -aec {demo_imaging.SCP_AE}"
            f" {_client_host(parts.mllp.host)} {parts.dicom_port} FILE.dcm",
        ]
    lines.append("")
    print("\n".join(lines), flush=True)
