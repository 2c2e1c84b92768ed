"""The imaging part of ``yijian demo``: the C-STORE receiver as a child process, a calling AE
for hospital 3's CT room, and one chest CT study of 赵丽 sent to it over DICOM.

The study carries the accession number of the CT report that hospital 3's RIS feed drops as
an HL7 file, so the ImagingStudy the hub writes is linked to that report. The receiver is
``yijian dicom-scp`` (installed by the imaging package through an entry point: the hub does
not import it); pydicom and pynetdicom are used here only as a modality would use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hub.processes import spawn_yijian
from hub.runtime import Hub

DICOM_AE = "DEMO-H3-CT"
SCP_AE = "YIJIAN"
STUDY_SEED = "yijian-demo-ct-chest-C3001"  # fixed UIDs: a re-run resends the same study
SLICES = 3


@dataclass(frozen=True)
class DemoStudy:
    patient_id: str
    name: str  # DICOM PN, family^given
    birth_date: str  # YYYYMMDD
    sex: str
    accession: str
    date: str  # YYYYMMDD


def receiver_available() -> bool:
    """Whether ``yijian dicom-scp`` is installed (the imaging package's entry point)."""
    from hub.extensions import extension_commands

    return any(getattr(c, "name", "") == "dicom-scp" for c in extension_commands())


def start_receiver(
    url: str, data_dir: Path, host: str, port: int
) -> tuple[subprocess.Popen[bytes], Path]:
    """``yijian dicom-scp`` as a child process on the demo's database and data directory."""
    log_path = data_dir / "logs" / "demo-dicom-scp.log"
    process = spawn_yijian(
        ["dicom-scp", "--host", host, "--port", str(port), "--no-migrate"],
        log_path,
        {"YIJIAN_DATABASE_URL": url, "YIJIAN_DATA_DIR": str(data_dir)},
    )
    return process, log_path


async def register_ae(hub: Hub, organization: str) -> None:
    """Hospital 3's CT room may send (its Patient IDs are the hospital's MRNs)."""
    async with hub.database.connection() as conn:
        await conn.execute(
            "INSERT INTO dicom_ae (ae_title, organization, description) VALUES ($1, $2, $3)"
            " ON CONFLICT (ae_title) DO UPDATE SET organization = EXCLUDED.organization",
            DICOM_AE,
            organization,
            "demo: CT room of hospital 3",
        )


async def send_study(host: str, port: int, study: DemoStudy, timeout: float = 60.0) -> int:
    """Send the demo CT study by C-STORE once the receiver listens; instances stored."""
    return await asyncio.to_thread(_send, host, port, study, timeout)


def _send(host: str, port: int, study: DemoStudy, timeout: float) -> int:
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid
    from pynetdicom import AE

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1):
            break
        if time.monotonic() > deadline:
            return 0
        time.sleep(0.2)
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    study_uid = generate_uid(entropy_srcs=[STUDY_SEED, "study"])
    series_uid = generate_uid(entropy_srcs=[STUDY_SEED, "series"])
    ae = AE(ae_title=DICOM_AE)
    ae.add_requested_context(template.SOPClassUID, template.file_meta.TransferSyntaxUID)
    association = None
    for _ in range(int(timeout * 2)):  # the receiver loads its AE titles every 2 s
        association = ae.associate(host, port, ae_title=SCP_AE)
        if association.is_established:
            break
        time.sleep(0.5)
    if association is None or not association.is_established:
        return 0
    stored = 0
    try:
        for number in range(1, SLICES + 1):
            dataset = template.copy()
            dataset.SpecificCharacterSet = "ISO_IR 192"
            dataset.PatientID, dataset.PatientName = study.patient_id, study.name
            dataset.PatientBirthDate, dataset.PatientSex = study.birth_date, study.sex
            dataset.AccessionNumber = study.accession
            dataset.StudyDate = dataset.SeriesDate = dataset.ContentDate = study.date
            dataset.StudyDescription = "胸部CT平扫"
            dataset.BodyPartExamined = "CHEST"
            dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
            dataset.SOPInstanceUID = generate_uid(entropy_srcs=[STUDY_SEED, str(number)])
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            dataset.InstanceNumber = number
            status = association.send_c_store(dataset)
            stored += getattr(status, "Status", None) == 0x0000
    finally:
        association.release()
    return stored


async def stop_receiver(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    if process.poll() is None:
        process.terminate()
    try:
        await asyncio.to_thread(process.wait, 30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await asyncio.to_thread(process.wait)
