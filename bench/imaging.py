"""Imaging ingest benchmark: DICOM C-STORE and DICOMweb STOW-RS into the hub, side by side with
Orthanc on the same files; QIDO-RS latency; memory while receiving a large multi-frame study.

Quality bars (DESIGN.md): DICOM C-STORE and STOW-RS ingest at least Orthanc's (the Debian
packages ``orthanc`` and ``orthanc-dicomweb``) on the same files, measured side by side
(anchor: Orthanc ~250 instances/s on 2 vCPU); memory while ingesting large studies bounded
(the receiver streams to storage).

What it does:

1. generates the workload once into a temporary directory, from pydicom's test files with
   fresh Study/Series/SOP Instance UIDs and patient/study attributes per study (names in
   pinyin and characters, ``ISO_IR 192``), Explicit VR Little Endian:

   - ``small``: CT_small (39 KB, CT Image Storage) and MR_small (10 KB, MR Image Storage),
     ``--per-study`` instances per study, a study all CT or all MR: per-instance overhead;
   - ``ct512``: 512x512 16-bit CT slices (~0.5 MB each, like a real CT series), built with
     numpy from CT_small's header: throughput in MB/s;
   - one file set per (workload, protocol, number of senders), so no phase resends what an
     earlier one stored; every server receives THE SAME files;
   - for QIDO, ``--orthanc-qido-studies`` studies of one instance each, and for memory a
     ``--multiframe-mb`` multi-frame instance (Multi-frame Grayscale Word Secondary Capture,
     512x512x16-bit frames), written frame by frame so the generator stays small;

2. starts Orthanc (``bench._orthanc.OwnOrthanc``: its own store in a temporary directory,
   loopback ports, the DICOMweb plugin, the package's defaults otherwise, and
   ``TCP_NODELAY=1`` in its environment: without it DCMTK leaves Nagle's algorithm on and
   Orthanc answers ~10 C-STORE/s per association; ``--orthanc-nagle`` to see that) and a
   private hub (``bench._harness.OwnHub`` on a
   fresh database: a hospital organization and client, the calling AE title registered with
   ``yijian dicom ae add``, ``yijian serve`` and ``yijian dicom-scp``, each with
   ``--workers 2`` by default: a process per core, as Orthanc's threads use both);
3. ingest, for each workload, protocol (C-STORE, STOW-RS) and number of senders
   (``--senders``, default 1 and 4), Orthanc and the hub in turn (the order alternates):
   the senders are separate processes (so their CPU is not the server's); they connect
   first, wait at a barrier, then send their share (whole studies, round robin):

   - C-STORE: pynetdicom (``AE(ae_title="BENCHSCU")``), one association per sender, the
     files sent as they are (not decoded), TCP_NODELAY on the socket; every status must be
     0x0000 (a race in pynetdicom 3.0 that loses a response on a busy machine is worked
     around: ``_guard_responses``); ``--scu storescu`` sends with DCMTK's storescu instead
     (C++: about half of pynetdicom's CPU here, so the servers get more of the 2 cores);
   - STOW-RS: httpx, ``multipart/related; type="application/dicom"``, ``--stow-batch``
     instances per request (Orthanc at ``/dicom-web/studies``, the hub at
     ``/dicomweb/studies`` with a bearer token from ``/auth/token``); every instance must be
     in the answer's ReferencedSOPSequence;

   measured: instances/s and MB/s from the first send to the last answer, CPU-seconds of the
   server's process tree (for the hub: ``yijian serve``, ``yijian dicom-scp`` and the
   PostgreSQL backends connected to its database; Orthanc keeps its index in-process) during
   the phase plus the work it still did afterwards until it was quiet ("settle"), instances
   per server CPU-second (a fair figure on a 2-core machine that the senders share), the
   senders' own CPU, and the instances the server's index holds afterwards;
4. memory: the multi-frame instance by C-STORE and by STOW-RS to each server, the server
   process tree's RSS sampled every 50 ms: baseline, peak, peak minus baseline;
5. QIDO-RS: both servers get the same ``--orthanc-qido-studies`` studies (by C-STORE), then
   typical queries (PatientID, AccessionNumber, StudyDate range with ModalitiesInStudy=CT and
   limit=25, PatientName wildcard) from 1 and 4 concurrent clients, p50/p99 per query; then
   Orthanc is stopped, the hub's index is filled to ``--qido-studies`` studies with SQL
   (``INSERT … SELECT generate_series`` into its dicom_study/series/instance tables, the
   same attribute pattern) and the hub alone is measured again;
6. prints tables with the ratio hub/Orthanc (bar: ≥ 1.00 instances/s), QIDO percentiles,
   memory, the setup and the machine's CPU calibration; removes both servers.

Usage::

    python -m bench.imaging                          # defaults: ~8 minutes on 2 cores
    python -m bench.imaging --instances 500 --large-instances 100 --skip-qido
    python -m bench.imaging --scu storescu --workloads small --skip-memory --skip-qido
    python -m bench.imaging --qido-studies 100000 --orthanc-qido-studies 2000
    python -m bench.imaging --skip-orthanc           # the hub alone (no Orthanc installed)
    python -m bench.imaging --skip-hub               # Orthanc alone (develop the senders)

The exit status is 0 when everything was measured (whether or not the bar is met); 1 when
more than 1% of the instances of an ingest phase failed or nothing was measured; 2 on a
usage or setup error, or when Orthanc is missing and ``--skip-orthanc`` was not given.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import json
import math
import multiprocessing
import os
import random
import resource
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil
from pydicom.uid import UID

from bench._harness import (
    BENCH_SYSTEM,
    LoadProcesses,
    OwnHub,
    SetupError,
    cpu_calibration,
    find_yijian,
    free_port,
    percentile,
    read_cpu_jiffies,
    tcp_answers,
)
from bench._orthanc import DOCUMENTED_DEFAULTS, INSTALL_HINT, OwnOrthanc, find_orthanc

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

BAR_RATIO = 1.0  # hub instances/s ÷ Orthanc instances/s
ANCHOR = "Orthanc ~250 instances/s on 2 vCPU"
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CALLING_AE = "BENCHSCU"
HUB_AE = "YIJIAN"
MB = 1_000_000  # MB/s in decimal megabytes

EXPLICIT_LE = "1.2.840.10008.1.2.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
MF_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture

FRAME_SIDE = 512
FRAME_BYTES = FRAME_SIDE * FRAME_SIDE * 2
SAMPLE_INTERVAL = 0.05  # s between RSS samples
QUIET_CPU = 0.10  # of one core: below it, a server is "quiet" (its deferred work is done)
FAILURE_LIMIT = 0.01

# Surnames and given names with their pinyin: a study's patient name is "FAMILY^GIVEN=姓^名".
FAMILIES = (
    ("王", "WANG"), ("李", "LI"), ("张", "ZHANG"), ("刘", "LIU"), ("陈", "CHEN"), ("杨", "YANG"),
    ("黄", "HUANG"), ("赵", "ZHAO"), ("吴", "WU"), ("周", "ZHOU"), ("徐", "XU"), ("孙", "SUN"),
    ("马", "MA"), ("朱", "ZHU"), ("胡", "HU"), ("郭", "GUO"),
)  # fmt: skip
GIVENS = (
    ("芳", "FANG"), ("伟", "WEI"), ("娜", "NA"), ("强", "QIANG"), ("敏", "MIN"), ("磊", "LEI"),
    ("静", "JING"), ("军", "JUN"), ("丽", "LI"), ("洋", "YANG"), ("秀英", "XIUYING"),
    ("建国", "JIANGUO"), ("欣怡", "XINYI"), ("浩然", "HAORAN"),
)  # fmt: skip
FIRST_STUDY_DATE = date(2023, 1, 1)
STUDY_DAYS = 1096  # studies spread over three years
DESCRIPTIONS = {"CT": ("胸部CT平扫", "CHEST"), "MR": ("头颅MR平扫", "HEAD"), "OT": ("多帧影像", "")}
WORKLOADS = {
    "small": "CT_small 39 KB / MR_small 10 KB",
    "ct512": "512x512 16-bit CT slices, 0.5 MB",
}
PROTOCOLS = {"cstore": "C-STORE", "stow": "STOW-RS"}
QUERY_TYPES = {
    "patient-id": "PatientID=…",
    "accession": "AccessionNumber=…",
    "date-ct": "StudyDate=range&ModalitiesInStudy=CT&limit=25",
    "name": "PatientName=FAMILY*&limit=25",
    "name-fuzzy": "PatientName=姓名&fuzzymatching=true&limit=25 (hub)",
}
HUB_ONLY_QUERIES = ("name-fuzzy",)  # Orthanc 1.10's DICOMweb plugin has no fuzzy matching


# --------------------------------------------------------------------------------------------
# Workload: the files both servers receive
# --------------------------------------------------------------------------------------------


class Uids:
    """Fresh UIDs ``2.25.<n>`` (the UUID-derived root): a random base plus a counter."""

    def __init__(self) -> None:
        self.base = uuid.uuid4().int >> 8  # room for the counter below 2**128
        self.count = 0

    def next(self) -> str:
        self.count += 1
        return f"2.25.{self.base + self.count}"


@dataclass(frozen=True)
class Study:
    """The patient and study attributes of study ``k`` of a series of studies ``prefix``.

    A pure function of (prefix, k), so that the SQL that fills the hub's index for QIDO
    (``SQL_QIDO_STUDIES``) produces the same pattern as the files.
    """

    k: int
    prefix: str
    uid: str

    @property
    def person(self) -> int:
        return self.k // 2  # two studies per patient

    @property
    def patient_id(self) -> str:
        return f"{self.prefix}P{self.person:07d}"

    @property
    def name_parts(self) -> tuple[tuple[str, str], tuple[str, str]]:
        family = FAMILIES[self.person % len(FAMILIES)]
        given = GIVENS[(self.person // len(FAMILIES)) % len(GIVENS)]
        return family, given

    @property
    def patient_name(self) -> str:
        (family_h, family_p), (given_h, given_p) = self.name_parts
        return f"{family_p}^{given_p}={family_h}^{given_h}"

    @property
    def accession(self) -> str:
        return f"{self.prefix}A{self.k:08d}"

    @property
    def study_date(self) -> date:
        return FIRST_STUDY_DATE + timedelta(days=(self.k * 7919) % STUDY_DAYS)

    @property
    def birth_date(self) -> str:
        return (date(1940, 1, 1) + timedelta(days=(self.person * 4099) % 27000)).strftime("%Y%m%d")

    @property
    def sex(self) -> str:
        return "F" if self.person % 2 else "M"

    @property
    def modality(self) -> str:
        return "MR" if self.k % 3 == 2 else "CT"


@dataclass
class FileSet:
    """Files of one phase: whole studies, in study order."""

    name: str
    kind: str
    files: list[Path]
    study_of: list[int]
    studies: int
    total_bytes: int
    contexts: list[tuple[str, str]]

    def shares(self, senders: int) -> list[list[str]]:
        """Each sender's files: whole studies dealt round robin."""
        shares: list[list[str]] = [[] for _ in range(senders)]
        for path, study in zip(self.files, self.study_of, strict=True):
            shares[study % senders].append(str(path))
        return [share for share in shares if share]


def _templates() -> dict[str, Any]:
    """Datasets the workload is made of: CT_small, MR_small and a 512x512 CT slice."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file

    ct_path = get_testdata_file("CT_small.dcm")
    mr_path = get_testdata_file("MR_small.dcm")
    assert ct_path and mr_path, "pydicom's test files are missing"
    ct = pydicom.dcmread(ct_path)
    mr = pydicom.dcmread(mr_path)
    big = pydicom.dcmread(ct_path)
    # A body-like disc with some texture: signed 16-bit CT numbers, 512x512.
    y, x = np.mgrid[0:FRAME_SIDE, 0:FRAME_SIDE]
    inside = (x - 256) ** 2 / 200**2 + (y - 256) ** 2 / 160**2 <= 1.0
    rng = np.random.default_rng(7)
    pixels = np.where(inside, 40, -1000) + rng.integers(-30, 30, (FRAME_SIDE, FRAME_SIDE))
    big.Rows = big.Columns = FRAME_SIDE
    big.PixelData = pixels.astype("<i2").tobytes()
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in big:
            delattr(big, keyword)
    for dataset in (ct, mr, big):
        dataset.SpecificCharacterSet = "ISO_IR 192"
        dataset.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
        if "DataSetTrailingPadding" in dataset:
            del dataset.DataSetTrailingPadding
    return {"CT": ct, "MR": mr, "CT512": big}


def _study_attributes(study: Study, modality: str) -> dict[str, Any]:
    description, body_part = DESCRIPTIONS[modality]
    day = study.study_date.strftime("%Y%m%d")
    values: dict[str, Any] = {
        "StudyInstanceUID": study.uid,
        "PatientID": study.patient_id,
        "PatientName": study.patient_name,
        "PatientBirthDate": study.birth_date,
        "PatientSex": study.sex,
        "StudyDate": day,
        "SeriesDate": day,
        "StudyTime": "093000",
        "SeriesTime": "093000",
        "AccessionNumber": study.accession,
        "StudyID": str(study.k % 100000),
        "StudyDescription": description,
        "ReferringPhysicianName": "LIN^YI=林^医",
        "InstitutionName": "Bench Hospital",
    }
    if body_part:
        values["BodyPartExamined"] = body_part
    return values


def _apply_study(dataset: Any, study: Study, modality: str) -> None:
    for keyword, value in _study_attributes(study, modality).items():
        setattr(dataset, keyword, value)


class InstanceWriter:
    """Writes many variants of one dataset as Part 10 files (Explicit VR Little Endian),
    re-encoding only the elements that changed: pydicom's ``dcmwrite`` re-encodes every
    element of every file (~7 ms for CT_small's 200 elements), this ~0.5 ms."""

    def __init__(self, dataset: Any) -> None:
        from pydicom.filewriter import correct_ambiguous_vr

        self.dataset = correct_ambiguous_vr(dataset, True)
        self.encoded: dict[int, bytes] = {}

    def set(self, **values: Any) -> None:
        """Set attributes (by keyword); their encodings are made again on the next write."""
        from pydicom.datadict import tag_for_keyword

        for keyword, value in values.items():
            setattr(self.dataset, keyword, value)
            tag = tag_for_keyword(keyword)
            if tag is not None:
                self.encoded.pop(tag, None)
            if keyword == "SpecificCharacterSet":
                self.encoded.clear()

    def write(self, path: Path) -> int:
        """Write the file (file meta from the dataset's SOP Class/Instance UID); its size."""
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_data_element, write_file_meta_info

        ds = self.dataset
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta = DicomBytesIO()
        write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
        charset = ds.get("SpecificCharacterSet", "ISO_IR 6")
        parts = [b"\0" * 128, b"DICM", meta.getvalue()]
        for tag in sorted(ds.keys()):
            if tag.element == 0 and tag.group > 6:
                continue  # retired group lengths are not written (PS3.5 7.2)
            encoded = self.encoded.get(tag)
            if encoded is None:
                fp = DicomBytesIO()
                fp.is_little_endian = True
                fp.is_implicit_VR = False
                write_data_element(fp, ds[tag], charset)
                encoded = self.encoded[tag] = fp.getvalue()
            parts.append(encoded)
        data = b"".join(parts)
        path.write_bytes(data)
        return len(data)


def generate_fileset(
    directory: Path,
    name: str,
    kind: str,
    count: int,
    per_study: int,
    prefix: str,
    uids: Uids,
    templates: dict[str, Any],
    first_study: int = 0,
) -> FileSet:
    """``count`` instances of workload ``kind`` in studies of ``per_study``, written to
    ``directory/name``. Studies are numbered from ``first_study`` in series ``prefix``."""
    target = directory / name
    target.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    study_of: list[int] = []
    contexts: set[tuple[str, str]] = set()
    total = 0
    study_index = -1
    writers = {key: InstanceWriter(dataset) for key, dataset in templates.items()}
    writer = writers["CT"]
    for n in range(count):
        if n % per_study == 0:
            study_index += 1
            study = Study(first_study + study_index, prefix, uids.next())
            modality = "CT" if kind == "ct512" else study.modality
            writer = writers["CT512" if kind == "ct512" else modality]
            writer.set(
                **_study_attributes(study, modality),
                SeriesInstanceUID=uids.next(),
                SeriesNumber=1,
                Modality=modality,
            )
        position = n % per_study
        writer.set(SOPInstanceUID=uids.next(), InstanceNumber=position + 1)
        if "ImagePositionPatient" in writer.dataset:
            writer.set(
                ImagePositionPatient=[-125.0, -125.0, -2.5 * position],
                SliceLocation=-2.5 * position,
            )
        path = target / f"{n:06d}.dcm"
        total += writer.write(path)
        files.append(path)
        study_of.append(study_index)
        contexts.add((str(writer.dataset.SOPClassUID), EXPLICIT_LE))
    return FileSet(name, kind, files, study_of, study_index + 1, total, sorted(contexts))


def write_multiframe(path: Path, megabytes: float, study: Study, uids: Uids) -> int:
    """A Multi-frame Grayscale Word SC instance of about ``megabytes`` (10^6 bytes) of
    512x512 16-bit frames, written header first and then frame by frame (the pixel data is
    never held in memory whole). Returns the file's size."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    frames = max(1, math.ceil(megabytes * MB / FRAME_BYTES))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(MF_WORD_SC)
    sop_uid = uids.next()
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SOPClassUID = MF_WORD_SC
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    _apply_study(ds, study, "OT")
    ds.SeriesInstanceUID = uids.next()
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 40.0
    ds.Rows = ds.Columns = FRAME_SIDE
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    base = (np.add.outer(np.arange(FRAME_SIDE), np.arange(FRAME_SIDE)) * 4) % 4096
    with open(path, "ab") as out:
        # (7FE0,0010) OW, explicit VR little endian: tag, VR, 2 reserved bytes, 32-bit length.
        out.write(struct.pack("<HH2sxxI", 0x7FE0, 0x0010, b"OW", frames * FRAME_BYTES))
        for frame in range(frames):
            out.write(((base + frame) & 0x0FFF).astype("<u2").tobytes())
    return path.stat().st_size


# --------------------------------------------------------------------------------------------
# Server processes: CPU and memory
# --------------------------------------------------------------------------------------------


@dataclass
class ServerProcesses:
    """A server's processes: the trees under ``roots`` and, for the hub, the PostgreSQL
    backends connected to ``database`` (found by their process title)."""

    roots: list[int]
    database: str | None = None

    def tree(self) -> list[psutil.Process]:
        processes = []
        for pid in self.roots:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                processes.append(root)
                processes.extend(root.children(recursive=True))
        return processes

    def backends(self) -> list[psutil.Process]:
        if not self.database:
            return []
        needle = f" {self.database} "
        found = []
        for process in psutil.process_iter(["name", "cmdline"]):
            cmdline = process.info.get("cmdline") or []
            if cmdline and cmdline[0].startswith("postgres:") and needle in cmdline[0] + " ":
                found.append(process)
        return found

    def cpu(self) -> dict[int, tuple[float, float]]:
        """pid → (server-tree CPU-seconds, PostgreSQL CPU-seconds) so far."""
        result: dict[int, tuple[float, float]] = {}
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                result[process.pid] = (times.user + times.system, 0.0)
        for process in self.backends():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                result[process.pid] = (0.0, times.user + times.system)
        return result

    def rss(self) -> int:
        """Resident memory of the server tree, bytes (PostgreSQL not included)."""
        total = 0
        for process in self.tree():
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total


def cpu_delta(
    before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> tuple[float, float]:
    """(server, PostgreSQL) CPU-seconds used between two ``ServerProcesses.cpu`` snapshots."""
    server = database = 0.0
    for pid, (own, pg) in after.items():
        was = before.get(pid, (0.0, 0.0))
        server += max(0.0, own - was[0])
        database += max(0.0, pg - was[1])
    return server, database


def settle(
    processes: ServerProcesses, limit: float, interval: float = 0.5
) -> tuple[float, dict[int, tuple[float, float]]]:
    """Wait until the server uses less than ``QUIET_CPU`` of a core (its deferred work done),
    at most ``limit`` seconds; (seconds waited, CPU snapshot at the end)."""
    started = time.monotonic()
    last = processes.cpu()
    while time.monotonic() - started < limit:
        time.sleep(interval)
        now = processes.cpu()
        server, database = cpu_delta(last, now)
        last = now
        if server + database < QUIET_CPU * interval:
            break
    return time.monotonic() - started, last


class RssSampler(threading.Thread):
    """Samples a server tree's RSS every ``SAMPLE_INTERVAL`` seconds in the background."""

    def __init__(self, processes: ServerProcesses) -> None:
        super().__init__(daemon=True)
        self.processes = processes
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic(), self.processes.rss()))
            self._stop_event.wait(SAMPLE_INTERVAL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    def between(self, start: float, end: float) -> list[int]:
        return [rss for at, rss in self.samples if start <= at <= end]


def machine_busy(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """Fraction of the machine's CPU that was busy between two ``read_cpu_jiffies``."""
    if not before or not after or after[1] == before[1]:
        return math.nan
    return (after[0] - before[0]) / (after[1] - before[1])


# --------------------------------------------------------------------------------------------
# The servers under test
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    """One server under test, as the phases see it."""

    name: str  # "Orthanc" or "hub"
    label: str  # with version / configuration
    dicom_port: int
    called_ae: str
    stow_url: str
    qido_url: str
    processes: ServerProcesses
    headers: Callable[[], dict[str, str]]
    stored: Callable[[], int | None]
    problems: Callable[[], tuple[int, str]]
    memory_processes: ServerProcesses | None = None


def orthanc_target(orthanc: OwnOrthanc) -> Target:
    return Target(
        name="Orthanc",
        label=f"{orthanc.version} + DICOMweb plugin ({orthanc.plugin})",
        dicom_port=orthanc.dicom_port,
        called_ae=orthanc.aet,
        stow_url=orthanc.dicomweb_url + "/studies",
        qido_url=orthanc.dicomweb_url + "/studies",
        processes=ServerProcesses([orthanc.pid]),
        headers=dict,
        stored=orthanc.instance_count,
        problems=orthanc.log_problems,
    )


@dataclass
class HubServers:
    """The hub's ``yijian serve`` (through OwnHub) and ``yijian dicom-scp``."""

    own: OwnHub
    organization: str = ""
    client: tuple[str, str] = ("", "")
    scp_port: int = 0
    scp: subprocess.Popen[bytes] | None = None
    scp_log: Path | None = None
    scp_args: list[str] = field(default_factory=list)

    def start(self, args: argparse.Namespace, run: str) -> None:
        """Database, hospital, client and AE title; then ``serve`` and ``dicom-scp``."""
        yijian = find_yijian()
        for command in (["dicom-scp", "--help"], ["dicom", "ae", "--help"]):
            probe = subprocess.run(
                [str(yijian), *command], capture_output=True, text=True, check=False
            )
            if probe.returncode != 0:
                raise SetupError(
                    f"'yijian {' '.join(command)}' is not available yet (exit "
                    f"{probe.returncode}): {(probe.stderr or probe.stdout).strip()[-500:]}"
                )
        self.own.prepare(admin_client=False)
        self.organization = self.own.add_organization(
            "基准影像医院", f"{BENCH_SYSTEM}/org|IMAGING-{run}"
        )
        self.client = self.own.add_client("hospital", self.organization, "bench-imaging")
        added = subprocess.run(
            [
                str(yijian),
                "dicom",
                "ae",
                "add",
                CALLING_AE,
                "--organization",
                self.organization,
                "--host",
                "127.0.0.1",
            ],
            env=self.own.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if added.returncode != 0:
            raise SetupError(
                f"yijian dicom ae add {CALLING_AE} exited {added.returncode}:\n"
                f"{added.stdout[-1000:]}\n{added.stderr[-3000:]}"
            )
        self.own.serve()
        self.scp_port = free_port()
        self.scp_args = [
            "--port",
            str(self.scp_port),
            "--ae-title",
            HUB_AE,
            "--no-migrate",
            *(["--workers", str(args.scp_workers)] if args.scp_workers != 1 else []),
            *args.scp_args,
        ]
        assert self.own.log_path is not None
        self.scp_log = self.own.log_path.with_name("dicom-scp.log")
        with open(self.scp_log, "wb") as log:
            self.scp = subprocess.Popen(
                [str(yijian), "dicom-scp", *self.scp_args],
                env=self.own.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        for pid in (self.own.server_pid, self.scp.pid):
            if pid is not None:
                atexit.register(_kill_group_quietly, pid)
        deadline = time.monotonic() + 90
        while not tcp_answers("127.0.0.1", self.scp_port):
            if self.scp.poll() is not None or time.monotonic() > deadline:
                raise SetupError(f"yijian dicom-scp did not start:\n{self.scp_log_tail()}")
            time.sleep(0.2)

    def scp_log_tail(self, chars: int = 4000) -> str:
        if self.scp_log and self.scp_log.exists():
            return self.scp_log.read_text("utf-8", "replace")[-chars:]
        return ""

    def token(self) -> str:
        response = httpx.post(
            self.own.base_url + "/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.client[0],
                "client_secret": self.client[1],
            },
            timeout=30,
        )
        if response.status_code != 200:
            raise SetupError(f"/auth/token answered {response.status_code}: {response.text[:300]}")
        return str(response.json()["access_token"])

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def stored(self) -> int | None:
        """Instances in the hub's index (SQL), or None without a database URL."""
        if not self.own.database_url:
            return None
        return int(sql_value(self.own.database_url, "SELECT count(*) FROM dicom_instance"))

    def problems(self) -> tuple[int, str]:
        count, excerpt = self.own.server_log_problems()
        scp_lines = self.scp_log_tail(1_000_000).splitlines()
        hits = [
            i
            for i, line in enumerate(scp_lines)
            if line.startswith("Traceback") or " ERROR" in line or line.startswith("ERROR")
        ]
        if hits and not excerpt:
            excerpt = "dicom-scp:\n" + "\n".join(scp_lines[hits[0] : hits[0] + 30])
        return count + len(hits), excerpt

    def target(self) -> Target:
        assert self.scp is not None and self.own.server_pid is not None
        database = None
        if self.own.database_url:
            database = urllib.parse.urlsplit(self.own.database_url).path.lstrip("/") or None
        both = ServerProcesses([self.own.server_pid, self.scp.pid], database)
        return Target(
            name="hub",
            label=f"yijian serve --workers {self.own.workers} + yijian dicom-scp "
            + " ".join(self.scp_args),
            dicom_port=self.scp_port,
            called_ae=HUB_AE,
            stow_url=self.own.base_url + "/dicomweb/studies",
            qido_url=self.own.base_url + "/dicomweb/studies",
            processes=both,
            headers=self.headers,
            stored=self.stored,
            problems=self.problems,
            memory_processes=ServerProcesses([self.own.server_pid, self.scp.pid]),
        )

    def stop(self) -> None:
        if self.scp is not None and self.scp.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.scp.pid, signal.SIGTERM)
            try:
                self.scp.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.scp.pid, signal.SIGKILL)
                self.scp.wait(timeout=10)
        self.own.stop()


def _kill_group_quietly(pid: int) -> None:
    """At exit: SIGKILL the process group a server leads, if it is still there (``stop()``
    has normally ended it already)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)


def sql_value(url: str, query: str, *params: Any) -> Any:
    """The first column of the first row of ``query`` (asyncpg)."""
    import asyncpg

    async def fetch() -> Any:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetchval(query, *params)
        finally:
            await conn.close()

    return asyncio.run(fetch())


# --------------------------------------------------------------------------------------------
# Senders and QIDO clients (child processes)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SendPlan:
    """What one sender process sends, and where."""

    protocol: str  # "cstore" | "stow"
    files: tuple[str, ...]
    barrier: Any
    port: int = 0
    called_ae: str = ""
    contexts: tuple[tuple[str, str], ...] = ()
    stow_url: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    batch: int = 10
    scu: str = "pynetdicom"  # or "storescu" (DCMTK)
    timeout: float = 600.0
    barrier_timeout: float = 300.0


@dataclass
class SendResult:
    """One sender's account: times are ``time.monotonic()`` (shared by all processes)."""

    started: float = 0.0
    finished: float = 0.0
    ok: int = 0
    failed: int = 0
    bytes: int = 0
    cpu: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    requeued: int = 0  # C-STORE responses saved from pynetdicom's reactor (_guard_responses)


def send_worker(plan: SendPlan, connection: Any) -> None:
    """Child process: send ``plan.files``, answer ("ok", SendResult) or ("error", text)."""
    try:
        if plan.protocol == "stow":
            result = _send_stow(plan)
        elif plan.scu == "storescu":
            result = _send_storescu(plan)
        else:
            result = _send_cstore(plan)
        connection.send(("ok", result))
    except BaseException as exc:  # reported to the parent, which prints it
        with contextlib.suppress(Exception):
            connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()


def _status_text(status: Any) -> str:
    code = int(status.Status)
    comment = status.get("ErrorComment", "")
    kind = "warning" if code in (0x0001, 0xB000, 0xB006, 0xB007) or code >> 12 == 0xB else "failure"
    return f"C-STORE {kind} 0x{code:04X}" + (f" {comment}" if comment else "")


def _guard_responses(assoc: Any) -> None:
    """Work around a race in pynetdicom 3.0 (``Association._run_reactor``): after one
    ``send_c_store`` resumes the association's reactor, the next one may find the reactor's
    stale "paused" flag still set (its thread not yet scheduled, as on a busy 2-core machine),
    send, and the reactor then takes the C-STORE response off the DIMSE queue as if it were
    a request; ``send_c_store`` waits for the DIMSE timeout and the peer drops the idle
    association (Orthanc after 30 s). A response the reactor takes is put back."""
    serve = assoc._serve_request
    assoc.bench_requeued = 0

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if getattr(msg, "Status", None) is not None:  # a response, not a request
            assoc.bench_requeued += 1
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        serve(msg, context_id)

    assoc._serve_request = serve_or_requeue


def _send_cstore(plan: SendPlan) -> SendResult:
    from pynetdicom import AE, _config

    # Send the files as they are, in chunks of the peer's PDU size: no decoding in the sender.
    _config.STORE_SEND_CHUNKED_DATASET = True
    result = SendResult()
    ae = AE(ae_title=CALLING_AE)
    ae.acse_timeout = ae.network_timeout = plan.timeout
    ae.dimse_timeout = DIMSE_TIMEOUT
    for sop_class, syntax in plan.contexts:
        ae.add_requested_context(sop_class, syntax)
    setup_error = ""
    assoc = None
    try:
        assoc = ae.associate("127.0.0.1", plan.port, ae_title=plan.called_ae)
        if assoc.is_established:
            _guard_responses(assoc)
            # No Nagle delay on our side (pynetdicom leaves it on): a C-STORE request's last
            # PDU must not wait for the previous answer's ACK.
            raw = assoc.dul.socket.socket if assoc.dul.socket is not None else None
            if raw is not None:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            setup_error = "association rejected or aborted"
    except Exception as exc:
        setup_error = f"association failed: {type(exc).__name__}: {exc}"
    plan.barrier.wait(timeout=plan.barrier_timeout)
    cpu0 = time.process_time()
    result.started = time.monotonic()
    try:
        if setup_error or assoc is None:
            result.failed = len(plan.files)
            result.reasons[setup_error] += len(plan.files)
            return result
        for path in plan.files:
            if not assoc.is_established:
                result.failed += 1
                result.reasons["association lost"] += 1
                continue
            try:
                status = assoc.send_c_store(Path(path))
            except Exception as exc:
                result.failed += 1
                result.reasons[f"send error: {type(exc).__name__}: {exc}"] += 1
                continue
            if "Status" not in status:
                result.failed += 1
                result.reasons["no C-STORE response (timeout, abort or invalid)"] += 1
            elif int(status.Status) == 0:
                result.ok += 1
                result.bytes += os.path.getsize(path)
            else:
                result.failed += 1
                result.reasons[_status_text(status)] += 1
        return result
    finally:
        result.finished = time.monotonic()
        result.cpu = time.process_time() - cpu0
        result.requeued = getattr(assoc, "bench_requeued", 0)
        if assoc is not None and assoc.is_established:
            assoc.release()
        ae.shutdown()


DIMSE_TIMEOUT = 120.0  # s for a C-STORE response (a dead association is noticed then)
STORESCU_FILES = 5000  # files per storescu run (and association): command lines stay short


def _send_storescu(plan: SendPlan) -> SendResult:
    """C-STORE with DCMTK's storescu (a C++ sender, far less CPU than pynetdicom): one run,
    one association, per ``STORESCU_FILES`` files; its verbose log says each status. The
    program's start and its check of the files fall inside the measured time."""
    result = SendResult()
    executable = shutil.which("storescu") or "storescu"
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK leaves Nagle's algorithm on otherwise
    plan.barrier.wait(timeout=plan.barrier_timeout)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.started = time.monotonic()
    try:
        for first in range(0, len(plan.files), STORESCU_FILES):
            chunk = plan.files[first : first + STORESCU_FILES]
            command = [executable, "-v", "-R", "-nh", "-to", str(int(plan.timeout))]
            command += ["-aet", CALLING_AE, "-aec", plan.called_ae, "127.0.0.1", str(plan.port)]
            done = subprocess.run(
                [*command, *chunk], env=env, capture_output=True, text=True, check=False
            )
            log = done.stderr + done.stdout
            current = ""
            stored = 0
            for line in log.splitlines():
                if line.startswith("I: Sending file: "):
                    current = line[len("I: Sending file: ") :]
                elif line.startswith("I: Received Store Response (Success)"):
                    stored += 1
                    with contextlib.suppress(OSError):
                        result.bytes += os.path.getsize(current)
                elif line.startswith("I: Received Store Response"):
                    result.reasons["storescu: " + line[3:].strip()] += 1
                elif line.startswith(("E:", "F:")):
                    result.reasons["storescu: " + line.strip()] += 1
            result.ok += stored
            result.failed += len(chunk) - stored
            if len(chunk) > stored and not result.reasons:
                result.reasons[f"storescu exited {done.returncode}: {log[-300:]}"] += 1
        return result
    finally:
        result.finished = time.monotonic()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result.cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


STREAM_ABOVE = 16 * 1024 * 1024  # STOW bodies larger than this are streamed from the files


def _multipart(
    paths: Sequence[str], boundary: str
) -> tuple[bytes | Iterator[bytes], int, list[int]]:
    """A multipart/related body of the files: (body, its length, each file's size); bytes
    for small batches, a generator reading the files in 1 MiB chunks for large ones."""
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
    tail = f"--{boundary}--\r\n".encode("ascii")
    sizes = [os.path.getsize(path) for path in paths]
    length = sum(len(head) + size + 2 for size in sizes) + len(tail)
    if length <= STREAM_ABOVE:
        parts = []
        for path in paths:
            parts.append(head)
            parts.append(Path(path).read_bytes())
            parts.append(b"\r\n")
        parts.append(tail)
        return b"".join(parts), length, sizes

    def stream() -> Iterator[bytes]:
        for path in paths:
            yield head
            with open(path, "rb") as source:
                while chunk := source.read(1 << 20):
                    yield chunk
            yield b"\r\n"
        yield tail

    return stream(), length, sizes


def _stow_outcome(response: httpx.Response, batch: Sequence[str]) -> tuple[int, list[str]]:
    """(instances stored, failure reasons) of one STOW-RS answer."""
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    if not isinstance(body, dict):
        if response.status_code == 200 and len(batch) == 0:
            return 0, []
        text = response.text[:200].replace("\n", " ")
        return 0, [f"HTTP {response.status_code}: {text}"] * len(batch)
    referenced = (body.get("00081199") or {}).get("Value") or []
    failed_items = (body.get("00081198") or {}).get("Value") or []
    reasons = []
    for item in failed_items:
        reason = ((item.get("00081197") or {}).get("Value") or ["?"])[0]
        reasons.append(f"HTTP {response.status_code}: FailureReason {reason}")
    missing = len(batch) - len(referenced) - len(failed_items)
    if missing > 0:
        text = json.dumps(body)[:200]
        reasons.extend([f"HTTP {response.status_code}: not in the answer: {text}"] * missing)
    return len(referenced), reasons


def _send_stow(plan: SendPlan) -> SendResult:
    result = SendResult()
    boundary = "yijianbench" + secrets.token_hex(8)
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    client = httpx.Client(timeout=plan.timeout, headers=dict(plan.headers))
    plan.barrier.wait(timeout=plan.barrier_timeout)
    cpu0 = time.process_time()
    result.started = time.monotonic()
    try:
        for first in range(0, len(plan.files), plan.batch):
            batch = plan.files[first : first + plan.batch]
            body, length, sizes = _multipart(batch, boundary)
            try:
                response = client.post(
                    plan.stow_url,
                    content=body,
                    headers={
                        "Content-Type": content_type,
                        "Content-Length": str(length),
                        "Accept": "application/dicom+json",
                    },
                )
            except httpx.HTTPError as exc:
                result.failed += len(batch)
                result.reasons[f"HTTP error: {type(exc).__name__}: {exc}"] += len(batch)
                continue
            stored, reasons = _stow_outcome(response, batch)
            result.ok += stored
            if stored == len(batch):
                result.bytes += sum(sizes)
            else:  # which ones were stored is not worth matching up: count the average
                result.bytes += sum(sizes) * stored // max(1, len(batch))
            result.failed += len(batch) - stored
            for reason in reasons[: len(batch) - stored]:
                result.reasons[reason] += 1
        return result
    finally:
        result.finished = time.monotonic()
        result.cpu = time.process_time() - cpu0
        client.close()


@dataclass(frozen=True)
class QidoPlan:
    """One QIDO client: random queries from ``queries`` for ``duration`` seconds."""

    url: str
    headers: tuple[tuple[str, str], ...]
    queries: tuple[str, ...]
    duration: float
    barrier: Any
    seed: int
    warmup: int = 5


@dataclass
class QidoResult:
    latencies: list[float] = field(default_factory=list)
    matches: int = 0
    empty: int = 0
    errors: Counter[str] = field(default_factory=Counter)


def qido_worker(plan: QidoPlan, connection: Any) -> None:
    """Child process: a closed loop of QIDO-RS queries; answers ("ok", QidoResult)."""
    try:
        rng = random.Random(plan.seed)
        result = QidoResult()
        headers = {**dict(plan.headers), "Accept": "application/dicom+json"}
        with httpx.Client(timeout=60, headers=headers) as client:
            for _ in range(plan.warmup):
                with contextlib.suppress(httpx.HTTPError):
                    client.get(plan.url + "?" + rng.choice(plan.queries))
            plan.barrier.wait(timeout=300)
            stop_at = time.monotonic() + plan.duration
            while time.monotonic() < stop_at:
                query = rng.choice(plan.queries)
                started = time.perf_counter()
                try:
                    response = client.get(plan.url + "?" + query)
                    body = response.content
                except httpx.HTTPError as exc:
                    result.errors[f"{type(exc).__name__}: {exc}"] += 1
                    continue
                result.latencies.append(time.perf_counter() - started)
                if response.status_code == 200:
                    answers = json.loads(body) if body.strip() else []
                    result.matches += len(answers)
                    result.empty += not answers
                elif response.status_code == 204:
                    result.empty += 1
                else:
                    text = body[:200].decode("utf-8", "replace")
                    result.errors[f"HTTP {response.status_code}: {text}"] += 1
        connection.send(("ok", result))
    except BaseException as exc:
        with contextlib.suppress(Exception):
            connection.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        connection.close()


# --------------------------------------------------------------------------------------------
# Phases (the measuring process)
# --------------------------------------------------------------------------------------------


@dataclass
class IngestResult:
    target: str
    fileset: FileSet
    protocol: str
    senders: int
    elapsed: float
    ok: int
    failed: int
    bytes: int
    server_cpu: float
    database_cpu: float
    settle_cpu: float
    settle_seconds: float
    sender_cpu: float
    busy: float
    stored_delta: int | None
    reasons: Counter[str]
    requeued: int = 0

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mb_rate(self) -> float:
        return self.bytes / MB / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def total_cpu(self) -> float:
        return self.server_cpu + self.database_cpu + self.settle_cpu

    @property
    def per_cpu(self) -> float:
        return self.ok / self.total_cpu if self.total_cpu > 0 else math.nan


def _fork_barrier(parties: int) -> Any:
    """A barrier the forked load processes share with this one."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn").Barrier(parties)


def send_plans(
    target: Target,
    protocol: str,
    shares: Sequence[Sequence[str]],
    contexts: Sequence[tuple[str, str]],
    barrier: Any,
    args: argparse.Namespace,
) -> list[SendPlan]:
    headers = tuple(target.headers().items()) if protocol == "stow" else ()
    return [
        SendPlan(
            protocol=protocol,
            files=tuple(share),
            barrier=barrier,
            port=target.dicom_port,
            called_ae=target.called_ae,
            contexts=tuple(contexts),
            stow_url=target.stow_url,
            headers=headers,
            batch=args.stow_batch,
            scu=args.scu,
        )
        for share in shares
    ]


def ingest_phase(
    target: Target, fileset: FileSet, protocol: str, senders: int, args: argparse.Namespace
) -> IngestResult:
    """Send ``fileset`` by ``protocol`` from ``senders`` processes; measure the server."""
    shares = fileset.shares(senders)
    barrier = _fork_barrier(len(shares) + 1)
    plans = send_plans(target, protocol, shares, fileset.contexts, barrier, args)
    stored_before = target.stored()
    with LoadProcesses(send_worker, plans) as load:
        cpu0 = target.processes.cpu()
        jiffies0 = read_cpu_jiffies()
        barrier.wait(timeout=300)
        results: list[SendResult] = load.results()
        cpu1 = target.processes.cpu()
        jiffies1 = read_cpu_jiffies()
    settle_seconds, cpu2 = settle(target.processes, args.settle_max)
    stored_after = target.stored()
    server_cpu, database_cpu = cpu_delta(cpu0, cpu1)
    settle_cpu = sum(cpu_delta(cpu1, cpu2))
    reasons: Counter[str] = Counter()
    for result in results:
        reasons.update(result.reasons)
    return IngestResult(
        target=target.name,
        fileset=fileset,
        protocol=protocol,
        senders=len(shares),
        elapsed=max(r.finished for r in results) - min(r.started for r in results),
        ok=sum(r.ok for r in results),
        failed=sum(r.failed for r in results),
        bytes=sum(r.bytes for r in results),
        server_cpu=server_cpu,
        database_cpu=database_cpu,
        settle_cpu=settle_cpu,
        settle_seconds=settle_seconds,
        sender_cpu=sum(r.cpu for r in results),
        busy=machine_busy(jiffies0, jiffies1),
        stored_delta=(
            stored_after - stored_before
            if stored_after is not None and stored_before is not None
            else None
        ),
        reasons=reasons,
        requeued=sum(r.requeued for r in results),
    )


@dataclass
class MemoryResult:
    target: str
    protocol: str
    file_bytes: int
    ok: bool
    reason: str
    elapsed: float
    baseline: int
    peak: int
    after: int

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def memory_phase(
    target: Target, path: Path, protocol: str, args: argparse.Namespace
) -> MemoryResult:
    """Send one large file; sample the server's RSS before, during and after."""
    processes = target.memory_processes or target.processes
    barrier = _fork_barrier(2)
    plans = send_plans(target, protocol, [[str(path)]], [(MF_WORD_SC, EXPLICIT_LE)], barrier, args)
    with LoadProcesses(send_worker, plans) as load:
        sampler = RssSampler(processes)
        sampler.start()
        time.sleep(1.0)
        release = time.monotonic()
        barrier.wait(timeout=300)
        (result,) = load.results()
        answered = time.monotonic()
        time.sleep(1.0)
        sampler.stop()
    baseline = sampler.between(0.0, release)
    during = sampler.between(release, answered + 1.0)
    after = sampler.between(answered + 0.5, math.inf)
    return MemoryResult(
        target=target.name,
        protocol=protocol,
        file_bytes=path.stat().st_size,
        ok=result.ok == 1,
        reason="; ".join(result.reasons) if result.reasons else "",
        elapsed=result.finished - result.started,
        baseline=int(statistics.median(baseline)) if baseline else 0,
        peak=max(during, default=0),
        after=after[-1] if after else 0,
    )


@dataclass
class QidoRun:
    target: str
    dataset: str  # e.g. "2,000 studies"
    query: str
    clients: int
    duration: float
    result: QidoResult

    @property
    def count(self) -> int:
        return len(self.result.latencies)


def qido_phase(
    target: Target,
    dataset: str,
    queries: dict[str, list[str]],
    clients_list: Sequence[int],
    args: argparse.Namespace,
) -> list[QidoRun]:
    """Each query type with each number of concurrent clients, ``--qido-seconds`` each."""
    runs = []
    for query_type, query_list in queries.items():
        if target.name != "hub" and query_type in HUB_ONLY_QUERIES:
            continue
        for clients in clients_list:
            headers = tuple(target.headers().items())
            barrier = _fork_barrier(clients + 1)
            plans = [
                QidoPlan(
                    url=target.qido_url,
                    headers=headers,
                    queries=tuple(query_list),
                    duration=args.qido_seconds,
                    barrier=barrier,
                    seed=1000 * clients + n,
                )
                for n in range(clients)
            ]
            with LoadProcesses(qido_worker, plans) as load:
                barrier.wait(timeout=300)
                results: list[QidoResult] = load.results()
            merged = QidoResult()
            for result in results:
                merged.latencies.extend(result.latencies)
                merged.matches += result.matches
                merged.empty += result.empty
                merged.errors.update(result.errors)
            merged.latencies.sort()
            runs.append(
                QidoRun(target.name, dataset, query_type, clients, args.qido_seconds, merged)
            )
    return runs


def qido_queries(prefix: str, studies: int, seed: int = 11) -> dict[str, list[str]]:
    """500 queries of each type over studies 0..studies-1 of series ``prefix``."""
    rng = random.Random(seed)

    def quote(text: str) -> str:
        return urllib.parse.quote(text, safe="*^")  # Orthanc 1.10 does not decode %2A

    result: dict[str, list[str]] = {name: [] for name in QUERY_TYPES}
    for _ in range(500):
        study = Study(rng.randrange(studies), prefix, "")
        result["patient-id"].append("PatientID=" + quote(study.patient_id))
        result["accession"].append("AccessionNumber=" + quote(study.accession))
        start = FIRST_STUDY_DATE + timedelta(days=rng.randrange(STUDY_DAYS - 90))
        end = start + timedelta(days=90)
        result["date-ct"].append(
            f"StudyDate={start:%Y%m%d}-{end:%Y%m%d}&ModalitiesInStudy=CT&limit=25"
        )
        (family_h, family), (given_h, _) = study.name_parts
        result["name"].append("PatientName=" + quote(f"{family}*") + "&limit=25")
        result["name-fuzzy"].append(
            "PatientName=" + quote(family_h + given_h) + "&fuzzymatching=true&limit=25"
        )
    return result


# --------------------------------------------------------------------------------------------
# The hub's index filled by SQL for QIDO at scale
# --------------------------------------------------------------------------------------------

# $1 first k, $2 last k + 1, $3 prefix, $4 study UID base (numeric text), $5 organization,
# $6 patient names (DICOM PN) by combination, $7 their search forms, $8 series UID base,
# $9 instance UID base. Combination c = family + 16 * given, as ``Study.name_parts``.
SQL_QIDO_STUDIES = f"""
WITH s AS MATERIALIZED (
    SELECT k, k / 2 AS p,
           (k / 2) % {len(FAMILIES)} + {len(FAMILIES)} * ((k / 2 / {len(FAMILIES)}) % {len(GIVENS)})
               AS c,
           date '{FIRST_STUDY_DATE.isoformat()}' + ((k * 7919) % {STUDY_DAYS})::int AS d,
           CASE WHEN k % 3 = 2 THEN 'MR' ELSE 'CT' END AS modality
    FROM generate_series($1::bigint, $2::bigint - 1) AS k
), studies AS (
    INSERT INTO dicom_study (study_uid, organization, patient_id, patient_name, name_search,
                             birth_date, sex, study_date, study_time, started, accession,
                             study_id, description, referring, modalities, imaging_study_id,
                             changed_at, synced_at)
    SELECT '2.25.' || ($4::numeric + k)::text, $5, $3 || 'P' || lpad(p::text, 7, '0'),
           ($6::text[])[c + 1], ($7::text[])[c + 1],
           to_char(date '1940-01-01' + ((p * 4099) % 27000)::int, 'YYYYMMDD'),
           CASE WHEN p % 2 = 1 THEN 'F' ELSE 'M' END, d, '093000',
           (d + time '09:30') AT TIME ZONE 'Asia/Shanghai', $3 || 'A' || lpad(k::text, 8, '0'),
           (k % 100000)::text,
           CASE WHEN modality = 'CT' THEN '胸部CT平扫' ELSE '头颅MR平扫' END, 'LIN^YI=林^医',
           ARRAY[modality], 'bench-' || $3 || '-' || k, now(), now()
    FROM s
), series AS (
    INSERT INTO dicom_series (series_uid, study_uid, modality, series_number, description,
                              body_part, started)
    SELECT '2.25.' || ($8::numeric + k)::text, '2.25.' || ($4::numeric + k)::text, modality, 1,
           CASE WHEN modality = 'CT' THEN '胸部CT平扫' ELSE '头颅MR平扫' END,
           CASE WHEN modality = 'CT' THEN 'CHEST' ELSE 'HEAD' END,
           (d + time '09:30') AT TIME ZONE 'Asia/Shanghai'
    FROM s
)
INSERT INTO dicom_instance (sop_instance_uid, series_uid, study_uid, sop_class_uid,
                            instance_number, transfer_syntax, rows, columns, frames, object_key,
                            size, metadata, received_from)
SELECT '2.25.' || ($9::numeric + k)::text, '2.25.' || ($8::numeric + k)::text,
       '2.25.' || ($4::numeric + k)::text,
       CASE WHEN modality = 'CT' THEN '{CT_IMAGE}' ELSE '{MR_IMAGE}' END, 1, '{EXPLICIT_LE}',
       512, 512, 1, repeat('0', 64), 525000, '{{}}', 'bench-sql'
FROM s
"""


# The name tokens fuzzy QIDO matching scans (table dicom_study_name, where it exists): the
# words of name_search, as ``imaging.index`` writes them at receipt. $1 the series prefix.
SQL_QIDO_NAME_TOKENS = """
INSERT INTO dicom_study_name (token, study_uid)
SELECT DISTINCT t, st.study_uid
FROM dicom_study st, unnest(string_to_array(st.name_search, ' ')) AS t
WHERE st.imaging_study_id LIKE 'bench-' || $1 || '-%' AND t <> ''
ON CONFLICT DO NOTHING
"""


def name_search_forms(names: Sequence[str]) -> list[str]:
    """The hub's search form of each DICOM person name, if the hub says how it makes one
    (``imaging`` names it ``name_search``); else characters, pinyin and lower case."""
    function = None
    for module_name, attr in (
        ("imaging.service", "name_search"),
        ("imaging.index", "name_search"),
        ("imaging.qido", "name_search"),
        ("imaging.dataset", "name_search"),
    ):
        with contextlib.suppress(ImportError, AttributeError):
            module = __import__(module_name, fromlist=[attr])
            function = getattr(module, attr)
            break
    forms = []
    for name in names:
        if function is not None:
            forms.append(str(function(name)))
            continue
        alphabetic, _, ideographic = name.partition("=")
        forms.append(
            " ".join(
                part
                for part in (
                    ideographic.replace("^", ""),
                    alphabetic.replace("^", "").lower(),
                    alphabetic.replace("^", " ").lower(),
                )
                if part
            )
        )
    return forms


def fill_hub_index(
    database_url: str,
    organization: str,
    prefix: str,
    first: int,
    last: int,
    chunk: int = 20_000,
) -> float:
    """Studies ``first``..``last``-1 of series ``prefix`` into the hub's index (one series
    and one instance each, and the name tokens), then ANALYZE; returns the seconds it took."""
    import asyncpg

    combos = []
    for given in GIVENS:
        for family in FAMILIES:
            combos.append(f"{family[1]}^{given[1]}={family[0]}^{given[0]}")
    searches = name_search_forms(combos)
    bases = [str(uuid.uuid4().int >> 8) for _ in range(3)]

    async def load() -> None:
        conn = await asyncpg.connect(database_url, timeout=30)
        try:
            for start in range(first, last, chunk):
                end = min(last, start + chunk)
                await conn.execute(
                    SQL_QIDO_STUDIES,
                    start,
                    end,
                    prefix,
                    bases[0],
                    organization,
                    combos,
                    searches,
                    bases[1],
                    bases[2],
                )
            tables = "dicom_study, dicom_series, dicom_instance"
            if await conn.fetchval("SELECT to_regclass('dicom_study_name') IS NOT NULL"):
                await conn.execute(SQL_QIDO_NAME_TOKENS, prefix)
                tables += ", dicom_study_name"
            await conn.execute(f"ANALYZE {tables}")
        finally:
            await conn.close()

    started = time.monotonic()
    asyncio.run(load())
    return time.monotonic() - started


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt_bytes(n: float) -> str:
    return f"{n / MB:,.1f} MB"


def print_ingest(results: list[IngestResult], have_both: bool) -> None:
    keys: list[tuple[str, str, int]] = []
    for r in results:
        key = (r.fileset.kind, r.protocol, r.senders)
        if key not in keys:
            keys.append(key)
    for kind, protocol, senders in keys:
        rows = [
            r
            for r in results
            if (r.fileset.kind, r.protocol, r.senders) == (kind, protocol, senders)
        ]
        fs = rows[0].fileset
        print(
            f"\n{PROTOCOLS[protocol]}, {kind} ({WORKLOADS[kind]}), {senders} sender"
            f"{'s' if senders > 1 else ''}: {len(fs.files):,} instances in {fs.studies:,} studies,"
            f" {_fmt_bytes(fs.total_bytes)}"
        )
        print(
            f"  {'server':<8} {'inst/s':>8} {'MB/s':>7} {'server CPU-s':>13} {'(db':>6}"
            f" {'settle)':>8} {'inst/CPU-s':>10} {'sender CPU-s':>12} {'busy':>5}"
            f" {'stored':>7} {'failed':>7}"
        )
        by_target = {r.target: r for r in rows}
        for r in rows:
            stored = "?" if r.stored_delta is None else f"{r.stored_delta:,}"
            print(
                f"  {r.target:<8} {r.rate:8.1f} {r.mb_rate:7.1f} {r.total_cpu:13.2f}"
                f" {r.database_cpu:6.2f} {r.settle_cpu:7.2f}) {r.per_cpu:10.1f}"
                f" {r.sender_cpu:12.2f} {100 * r.busy:4.0f}% {stored:>7} {r.failed:7,}"
            )
            for reason, count in r.reasons.most_common(5):
                print(f"      {r.target} failure ×{count}: {reason}")
            if r.requeued:
                print(
                    f"      ({r.requeued} C-STORE responses taken by pynetdicom's reactor were"
                    " put back for the sender: see _guard_responses)"
                )
            if r.settle_seconds >= 1.0:
                print(
                    f"      {r.target} kept working {r.settle_seconds:.1f} s after the last answer"
                )
        if have_both and "hub" in by_target and "Orthanc" in by_target:
            hub, orthanc = by_target["hub"], by_target["Orthanc"]
            ratio = hub.rate / orthanc.rate if orthanc.rate else math.nan
            per_cpu = hub.per_cpu / orthanc.per_cpu if orthanc.per_cpu else math.nan
            verdict = "met" if ratio >= BAR_RATIO else "NOT met"
            print(
                f"  hub/Orthanc: instances/s {ratio:.2f} (bar ≥ {BAR_RATIO:.2f}: {verdict}),"
                f" MB/s {hub.mb_rate / orthanc.mb_rate if orthanc.mb_rate else math.nan:.2f},"
                f" instances per CPU-s {per_cpu:.2f}"
            )


def print_summary(ingest: list[IngestResult], memory: list[MemoryResult]) -> None:
    """The bars in a few lines: hub/Orthanc instances/s per phase, and the hub's memory."""
    ratios = []
    for hub in (r for r in ingest if r.target == "hub"):
        for orthanc in ingest:
            same = (orthanc.fileset.kind, orthanc.protocol, orthanc.senders) == (
                hub.fileset.kind,
                hub.protocol,
                hub.senders,
            )
            if orthanc.target == "Orthanc" and same and orthanc.rate > 0:
                label = f"{PROTOCOLS[hub.protocol]} {hub.fileset.kind} ×{hub.senders}"
                ratios.append((hub.rate / orthanc.rate, label))
    if not ratios and not any(r.target == "hub" for r in memory):
        return
    print("\nSummary")
    if ratios:
        met = sum(1 for ratio, _ in ratios if ratio >= BAR_RATIO)
        low, where = min(ratios)
        listed = ", ".join(f"{label} {ratio:.2f}" for ratio, label in ratios)
        print(
            f"  ingest bar (hub ≥ Orthanc instances/s): met in {met} of {len(ratios)} phases;"
            f" lowest {low:.2f} ({where})"
        )
        print(f"  hub/Orthanc: {listed}")
    for r in memory:
        if r.target == "hub":
            print(
                f"  hub memory, {PROTOCOLS[r.protocol]} of {_fmt_bytes(r.file_bytes)}: peak growth"
                f" {_fmt_bytes(r.growth)} ({100 * r.growth / r.file_bytes:.0f}% of the file)"
            )


def print_memory(results: list[MemoryResult]) -> None:
    if not results:
        return
    size = results[0].file_bytes
    print(
        f"\nMemory while receiving one multi-frame instance of {_fmt_bytes(size)}"
        f" (RSS of the server's processes, sampled every {1000 * SAMPLE_INTERVAL:.0f} ms)"
    )
    print(
        f"  {'server':<8} {'protocol':<8} {'seconds':>8} {'MB/s':>7} {'baseline':>11}"
        f" {'peak':>11} {'growth':>11} {'growth/file':>11} {'after':>11}  stored"
    )
    for r in results:
        rate = r.file_bytes / MB / r.elapsed if r.elapsed > 0 else math.nan
        print(
            f"  {r.target:<8} {PROTOCOLS[r.protocol]:<8} {r.elapsed:8.1f} {rate:7.1f}"
            f" {_fmt_bytes(r.baseline):>11} {_fmt_bytes(r.peak):>11} {_fmt_bytes(r.growth):>11}"
            f" {100 * r.growth / r.file_bytes:10.0f}% {_fmt_bytes(r.after):>11}  "
            + ("yes" if r.ok else f"NO: {r.reason}")
        )
    print("  bounded: growth far below the file's size (the receiver streams to storage)")


def print_qido(runs: list[QidoRun]) -> None:
    if not runs:
        return
    print("\nQIDO-RS /studies latency (closed loop per client)")
    print(
        f"  {'server':<8} {'index':<16} {'query':<48} {'clients':>7} {'queries':>8}"
        f" {'q/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'matches':>8} {'errors':>6}"
    )
    for run in runs:
        lat = run.result.latencies
        errors = sum(run.result.errors.values())
        print(
            f"  {run.target:<8} {run.dataset:<16} {QUERY_TYPES[run.query]:<48} {run.clients:7}"
            f" {run.count:8,} {run.count / run.duration:7.1f} {1000 * percentile(lat, 50):8.1f}"
            f" {1000 * percentile(lat, 99):8.1f}"
            f" {run.result.matches / max(1, run.count):8.1f} {errors:6}"
        )
        for reason, count in run.result.errors.most_common(3):
            print(f"      error ×{count}: {reason}")


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def _orthanc_setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=JSON: {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown; the usage examples and exit status kept as written."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    usage = doc[doc.find("Usage::") :].split("\n\n", 2)
    parser = argparse.ArgumentParser(
        prog="python -m bench.imaging",
        description=doc.split("\n\n")[0],
        epilog="\n\n".join(usage[1:]) if len(usage) > 1 else None,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--instances", type=int, default=2000, help="small instances per ingest phase"
    )
    parser.add_argument(
        "--large-instances", type=int, default=400, help="512x512 CT instances per ingest phase"
    )
    parser.add_argument(
        "--per-study", type=int, default=10, help="instances per study (small workload)"
    )
    parser.add_argument(
        "--large-per-study", type=int, default=50, help="instances per study (ct512 workload)"
    )
    parser.add_argument(
        "--workloads", default="small,ct512", help="comma-separated: small, ct512 (or none)"
    )
    parser.add_argument("--protocols", default="cstore,stow", help="comma-separated: cstore, stow")
    parser.add_argument(
        "--senders", type=_int_list, default=[1, 4], help="concurrent senders/clients, e.g. 1,4"
    )
    parser.add_argument(
        "--scu",
        choices=("pynetdicom", "storescu"),
        default="pynetdicom",
        help="C-STORE sender: pynetdicom, or DCMTK's storescu (C++, far less sender CPU)",
    )
    parser.add_argument("--stow-batch", type=int, default=10, help="instances per STOW request")
    parser.add_argument(
        "--qido-studies", type=int, default=100_000, help="studies in the hub's index for QIDO"
    )
    parser.add_argument(
        "--orthanc-qido-studies",
        type=int,
        default=2000,
        help="studies stored in both servers (by C-STORE) for the side-by-side QIDO",
    )
    parser.add_argument("--qido-seconds", type=float, default=3.0, help="per query and clients")
    parser.add_argument(
        "--multiframe-mb", type=float, default=300.0, help="size of the multi-frame instance"
    )
    parser.add_argument("--skip-orthanc", action="store_true", help="measure the hub alone")
    parser.add_argument("--skip-hub", action="store_true", help="measure Orthanc alone")
    parser.add_argument("--skip-qido", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--workers", type=int, default=2, help="yijian serve --workers (STOW-RS, QIDO-RS)"
    )
    parser.add_argument(
        "--scp-workers", type=int, default=2, help="yijian dicom-scp --workers (C-STORE)"
    )
    parser.add_argument(
        "--scp-args",
        default="",
        help="extra arguments for yijian dicom-scp (quoted, e.g. '--workers 2')",
    )
    parser.add_argument(
        "--orthanc-set",
        type=_orthanc_setting,
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="extra Orthanc configuration, e.g. StorageAccessOnFind='\"Never\"' (repeatable)",
    )
    parser.add_argument(
        "--orthanc-nagle",
        action="store_true",
        help="start Orthanc without TCP_NODELAY=1 (DCMTK's default: ~10 C-STORE/s per association)",
    )
    parser.add_argument(
        "--orthanc-verbose", action="store_true", help="Orthanc --verbose (its log, with --keep)"
    )
    parser.add_argument(
        "--settle-max", type=float, default=30.0, help="max seconds to wait for a quiet server"
    )
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    parser.add_argument(
        "--database-url", default=None, help="use this (migrated) hub database, never dropped"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="directory in which to make the files' directory (default: the system's temp)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep files, Orthanc's store and the hub database"
    )
    args = parser.parse_args(argv)
    args.workloads = [w for w in args.workloads.split(",") if w and w != "none"]
    args.protocols = [p for p in args.protocols.split(",") if p]
    for workload in args.workloads:
        if workload not in WORKLOADS:
            parser.error(f"unknown workload {workload!r} (small, ct512)")
    for protocol in args.protocols:
        if protocol not in PROTOCOLS:
            parser.error(f"unknown protocol {protocol!r} (cstore, stow)")
    import shlex

    args.scp_args = shlex.split(args.scp_args)
    if args.scu == "storescu" and not shutil.which("storescu"):
        parser.error("--scu storescu: no storescu on PATH (apt-get install dcmtk)")
    if args.skip_hub and args.skip_orthanc:
        parser.error("--skip-hub and --skip-orthanc leave nothing to measure")
    if min(args.instances, args.large_instances, args.per_study, args.large_per_study) < 1:
        parser.error("counts must be positive")
    args.orthanc_qido_studies = min(args.orthanc_qido_studies, args.qido_studies)
    return args


@dataclass
class Workload:
    """All files of the run, made once; ``ingest[(kind, protocol, senders)]``."""

    directory: Path
    ingest: dict[tuple[str, str, int], FileSet] = field(default_factory=dict)
    qido: FileSet | None = None
    multiframe: dict[str, Path] = field(default_factory=dict)
    qido_prefix: str = ""
    seconds: float = 0.0


def make_workload(args: argparse.Namespace, run: str) -> Workload:
    started = time.monotonic()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    # Always a directory of our own (removed afterwards), inside --workdir if given.
    directory = Path(tempfile.mkdtemp(prefix="yijian-bench-imaging-", dir=args.workdir))
    workload = Workload(directory)
    uids = Uids()
    templates = _templates()
    study_number = 0
    for kind in args.workloads:
        count = args.instances if kind == "small" else args.large_instances
        per_study = args.per_study if kind == "small" else args.large_per_study
        for protocol in args.protocols:
            for senders in args.senders:
                name = f"{kind}-{protocol}-{senders}"
                fs = generate_fileset(
                    directory,
                    name,
                    kind,
                    count,
                    per_study,
                    f"I{run}",
                    uids,
                    templates,
                    first_study=study_number,
                )
                study_number += fs.studies
                workload.ingest[(kind, protocol, senders)] = fs
    if not args.skip_qido:
        workload.qido_prefix = f"Q{run}"
        workload.qido = generate_fileset(
            directory,
            "qido",
            "small",
            args.orthanc_qido_studies,
            1,
            workload.qido_prefix,
            uids,
            templates,
        )
    if not args.skip_memory:
        for protocol in args.protocols:
            path = directory / f"multiframe-{protocol}.dcm"
            write_multiframe(
                path, args.multiframe_mb, Study(study_number, f"M{run}", uids.next()), uids
            )
            study_number += 1
            workload.multiframe[protocol] = path
    workload.seconds = time.monotonic() - started
    return workload


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that the servers are stopped in the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = secrets.token_hex(2).upper()
    print("Imaging ingest benchmark: C-STORE and STOW-RS into the hub and into Orthanc, same files")
    calibration = cpu_calibration()
    quiet0 = read_cpu_jiffies()
    time.sleep(1.0)
    idle_busy = machine_busy(quiet0, read_cpu_jiffies())

    orthanc_missing = False
    if not args.skip_orthanc and find_orthanc() is None:
        print(
            f"Orthanc is not installed: its half is skipped. Install it with: {INSTALL_HINT}"
            " (or pass --skip-orthanc to measure the hub alone)",
            file=sys.stderr,
        )
        orthanc_missing = True
        args.skip_orthanc = True
        if args.skip_hub:
            return 2

    workload = make_workload(args, run)
    print(
        f"workload: {sum(len(fs.files) for fs in workload.ingest.values()):,} ingest files"
        f" ({_fmt_bytes(sum(fs.total_bytes for fs in workload.ingest.values()))}) in"
        f" {workload.directory}, made in {workload.seconds:.1f} s"
    )

    orthanc: OwnOrthanc | None = None
    hub: HubServers | None = None
    targets: list[Target] = []
    ingest: list[IngestResult] = []
    memory: list[MemoryResult] = []
    qido: list[QidoRun] = []
    hub_fill: tuple[int, float] | None = None
    setup_lines: list[str] = []
    try:
        if not args.skip_orthanc:
            orthanc = OwnOrthanc(overrides=dict(args.orthanc_set), keep=args.keep)
            if args.orthanc_nagle:
                orthanc.environment = {}
            if args.orthanc_verbose:
                orthanc.arguments = ["--verbose"]
            orthanc.start()
            targets.append(orthanc_target(orthanc))
            setup_lines.append(
                f"Orthanc: {orthanc.version}, DICOMweb plugin {orthanc.plugin}, HTTP"
                f" {orthanc.http_port}, DICOM {orthanc.dicom_port}, store {orthanc.directory}"
            )
            overridden = ", ".join(f"{k}={json.dumps(v)}" for k, v in args.orthanc_set)
            setup_lines.append(
                "  configured: loopback only, no authentication, StorageCompression false,"
                " OverwriteInstances true, DicomCheckCalledAet false"
                + (f"; overridden: {overridden}" if overridden else "")
                + (
                    "; environment TCP_NODELAY=1 (DCMTK: no Nagle delay on DICOM associations)"
                    if orthanc.environment.get("TCP_NODELAY") == "1"
                    else "; DCMTK's default Nagle delay on DICOM associations (--orthanc-nagle)"
                )
            )
            defaults = ", ".join(
                f"{k} {json.dumps(v)}"
                for k, v in DOCUMENTED_DEFAULTS.items()
                if k not in dict(args.orthanc_set)
            )
            setup_lines.append(f"  package defaults kept: {defaults}")
        if not args.skip_hub:
            hub = HubServers(
                OwnHub(
                    workers=args.workers,
                    port=free_port(),
                    pg_admin_url=args.pg_admin_url,
                    database_url=args.database_url,
                    keep=args.keep,
                )
            )
            hub.start(args, run)
            hub_target = hub.target()
            targets.append(hub_target)
            setup_lines.append(
                f"hub: {hub_target.label}; database {hub.own.database};"
                f" calling AE {CALLING_AE} registered for organization {hub.organization}"
            )

        # 1. Ingest, the order of the servers alternating from phase to phase.
        for number, ((kind, protocol, senders), fs) in enumerate(workload.ingest.items()):
            order = targets if number % 2 == 0 else list(reversed(targets))
            for target in order:
                print(
                    f"  … {PROTOCOLS[protocol]} {kind} ×{len(fs.files)} from {senders}"
                    f" → {target.name}",
                    flush=True,
                )
                ingest.append(ingest_phase(target, fs, protocol, senders, args))

        # 2. Memory while receiving one large multi-frame instance.
        for protocol, path in workload.multiframe.items():
            for target in targets:
                print(f"  … {PROTOCOLS[protocol]} multi-frame → {target.name}", flush=True)
                memory.append(memory_phase(target, path, protocol, args))
                settle(target.processes, args.settle_max)

        # 3. QIDO at the same N studies side by side, then the hub alone at --qido-studies.
        if workload.qido is not None:
            n = args.orthanc_qido_studies
            queries = qido_queries(workload.qido_prefix, n)
            for target in targets:
                print(f"  … loading {n:,} studies into {target.name} for QIDO", flush=True)
                load = ingest_phase(target, workload.qido, "cstore", 4, args)
                if load.failed:
                    print(
                        f"      {target.name}: {load.failed} of the QIDO studies failed:"
                        f" {load.reasons.most_common(3)}"
                    )
                setup_lines.append(
                    f"QIDO data into {target.name}: {n:,} studies by C-STORE from 4 senders at"
                    f" {load.rate:.0f} instances/s"
                )
            for target in targets:
                print(f"  … QIDO → {target.name} at {n:,} studies", flush=True)
                qido.extend(qido_phase(target, f"{n:,} studies", queries, args.senders, args))
            if orthanc is not None:
                orthanc.stop()
            if hub is not None and args.qido_studies > n:
                if hub.own.database_url:
                    print(
                        f"  … filling the hub's index to {args.qido_studies:,} studies", flush=True
                    )
                    seconds = fill_hub_index(
                        hub.own.database_url,
                        hub.organization,
                        workload.qido_prefix,
                        n,
                        args.qido_studies,
                    )
                    hub_fill = (args.qido_studies - n, seconds)
                    big = qido_queries(workload.qido_prefix, args.qido_studies, seed=12)
                    hub_target = next(t for t in targets if t.name == "hub")
                    print(f"  … QIDO → hub at {args.qido_studies:,} studies", flush=True)
                    qido.extend(
                        qido_phase(
                            hub_target, f"{args.qido_studies:,} studies", big, args.senders, args
                        )
                    )
                else:
                    print("  (no database URL for the hub: QIDO at scale skipped)")
    except SetupError as error:
        print(f"setup failed: {error}", file=sys.stderr)
        if hub is not None and hub.scp_log_tail():
            print(f"dicom-scp log:\n{hub.scp_log_tail()}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a load process died or failed
        print(f"measurement failed: {error}", file=sys.stderr)
        return 1
    finally:
        problems = [(t.name, t.problems()) for t in targets]
        if orthanc is not None:
            orthanc.stop()
        if hub is not None:
            hub.stop()
        if not args.keep:
            shutil.rmtree(workload.directory, ignore_errors=True)

    # Report.
    print()
    for line in setup_lines:
        print(line)
    print(
        f"machine: {os.cpu_count()} CPUs, CPU calibration {calibration:.2f} s (lower is faster),"
        f" busy {100 * idle_busy:.0f}% before the run; senders: separate processes (C-STORE:"
        f" {scu_label(args.scu)}; STOW: httpx {_version('httpx')}); STOW batches of"
        f" {args.stow_batch}; bar: hub ≥ Orthanc instances/s (anchor: {ANCHOR})"
    )
    print(
        "server CPU-s: the server's process tree during the phase, plus PostgreSQL backends of"
        " its database (db), plus what it used after the last answer until quiet (settle)"
    )
    print_ingest(ingest, have_both=len(targets) == 2)
    print_memory(memory)
    if hub_fill is not None:
        print(
            f"\nhub index filled by SQL with {hub_fill[0]:,} more studies in {hub_fill[1]:.1f} s"
            " (one series and one instance each; same attribute pattern)"
        )
    if workload.qido is not None and not args.skip_orthanc:
        print(
            f"(Orthanc is measured at {args.orthanc_qido_studies:,} studies only: it would need"
            f" as many stored instances; --orthanc-qido-studies N to raise it)"
        )
    print_qido(qido)
    for name, (count, excerpt) in problems:
        if count:
            print(f"\n{name}: {count} error lines in its log; first:\n{excerpt}")
    print_summary(ingest, memory)

    if orthanc_missing:
        print(f"\nOrthanc was not measured (install: {INSTALL_HINT})", file=sys.stderr)
        return 2
    measured = [r for r in ingest if r.ok]
    if ingest and not measured:
        return 1
    if any(r.failed > FAILURE_LIMIT * (r.ok + r.failed) for r in ingest):
        return 1
    return 0


def scu_label(scu: str) -> str:
    if scu == "storescu":
        path = shutil.which("storescu")
        if not path:
            return "storescu (not found)"
        done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
        first = (done.stdout or done.stderr).strip().splitlines()
        return f"DCMTK storescu ({first[0] if first else path}), TCP_NODELAY=1"
    return f"pynetdicom {_version('pynetdicom')}, files sent undecoded, TCP_NODELAY"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
