"""Shared by the imaging tests: DICOM files with fresh UIDs, the C-STORE receiver as a real
process, and lookups in the index."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from hub.storage.database import libpq_url
from tests.conftest import YIJIAN, HubUnderTest

SCP_AE = "YIJIAN"


def testdata(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is missing"
    return Path(str(path))


def fresh_copy(name: str, directory: Path, **attributes: Any) -> Path:
    """A copy of a pydicom test file with new study/series/instance UIDs (so tests sharing a
    database never meet) and ``attributes`` set; the pixel data is kept as it is."""
    dataset = pydicom.dcmread(testdata(name))
    dataset.StudyInstanceUID = attributes.pop("StudyInstanceUID", None) or generate_uid()
    dataset.SeriesInstanceUID = attributes.pop("SeriesInstanceUID", None) or generate_uid()
    dataset.SOPInstanceUID = attributes.pop("SOPInstanceUID", None) or generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    path = directory / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def dataset_bytes(path: Path) -> bytes:
    """A Part 10 file's bytes after its File Meta Information (the data set as sent)."""
    data = path.read_bytes()
    return data[_dataset_offset(data) :]


def _dataset_offset(data: bytes) -> int:
    assert data[128:132] == b"DICM"
    group_length = int.from_bytes(data[140:144], "little")  # (0002,0000) UL, explicit VR
    return 144 + group_length


def stored_bytes(hub: HubUnderTest, object_key: str) -> bytes:
    root = Path(hub.env["YIJIAN_DATA_DIR"]) / "objects"
    return (root / object_key[:2] / object_key[2:4] / object_key).read_bytes()


def query(hub: HubUnderTest, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(libpq_url(hub.database_url))
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def storage_scp(hub: HubUnderTest, **env: str) -> Iterator[int]:
    """``yijian dicom-scp`` on a free port, as its own process; yields the port."""
    port = free_port()
    log_path = Path(hub.env["YIJIAN_DATA_DIR"]) / f"scp-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [YIJIAN, "dicom-scp", "--port", str(port), "--ae-title", SCP_AE, "--no-migrate"],
            env={**hub.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"dicom-scp exited:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"dicom-scp did not listen:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        assert process.returncode == 0, log_path.read_text()[-3000:]
