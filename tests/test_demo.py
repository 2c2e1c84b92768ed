"""`yijian demo` end to end: embedded database, demo hospitals, printed credentials that work,
the inbound side (MLLP listener, drop folder, worker) and an idempotent second start."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import hl7
import httpx
from hl7.client import MLLPClient, read_loose

from tests.conftest import YIJIAN, _free_port

RESIDENT_ID = "https://yijian-hub.org/fhir/sid/resident-id"
WANG_FANG = f"{RESIDENT_ID}|330102198603140020"
ZHAO_LI = f"{RESIDENT_ID}|330110197512050447"
RADIOLOGY = "http://loinc.org|LP29684-5"


def _start(
    directory: Path, port: int, mllp_port: int, dicom_port: int
) -> tuple[subprocess.Popen[str], str]:
    """The demo as a process, and its banner once it is printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIJIAN_")}
    env["YIJIAN_DATA_DIR"] = str(directory / "var")
    process = subprocess.Popen(
        [
            YIJIAN,
            "demo",
            "--port",
            str(port),
            "--mllp-port",
            str(mllp_port),
            "--dicom-port",
            str(dicom_port),
        ],
        env=env,
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    banner = ""
    deadline = time.time() + 120
    assert process.stdout is not None
    while "Try:" not in banner:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            raise AssertionError(f"the demo exited with {process.returncode}:\n{banner}")
        banner += line
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"no banner after 120 s:\n{banner}")
    while not banner.endswith("\n\n"):  # the rest of the banner (the commands to try)
        banner += process.stdout.readline()
    return process, banner


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


def _token(base: str, banner: str, role: str = "doctor") -> str:
    """A token of one of the demo clients the banner prints (doctor, admin, ...)."""
    client = re.search(rf"(?m)^  {role}\s+client_id=(\S+)\s+client_secret=(\S+)", banner)
    assert client, banner
    response = httpx.post(
        f"{base}/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client[1],
            "client_secret": client[2],
        },
    )
    return str(response.json()["access_token"])


def _search(base: str, token: str, resource_type: str, **params: str) -> dict[str, Any]:
    response = httpx.get(
        f"{base}/fhir/{resource_type}", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def _order_for(base: str, token: str, identifier: str) -> None:
    """The doctor checks reusable results before ordering for the patient: a purpose of use
    (``hub.access``) to read the person's record."""
    response = httpx.get(
        f"{base}/fhir/Patient/$reusable-results",
        params={"identifier": identifier, "code": "cbc"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text


def _counts(base: str, token: str) -> dict[str, int]:
    return {
        kind: _search(base, token, kind, _summary="count")["total"]
        for kind in (
            "Patient",
            "Observation",
            "DiagnosticReport",
            "ServiceRequest",
            "Specimen",
            "ImagingStudy",
        )
    }


def _send_example(banner: str, mllp_port: int) -> tuple[str, str]:
    """The banner's example message, sent as its mllp_send command line would send it, with
    the hl7 package's MLLP client; returns (MSA-1, MSA-2) of the acknowledgement."""
    example = re.search(r"mllp_send --loose --file (\S+) --port (\d+) (\S+)", banner)
    assert example, banner
    assert int(example[2]) == mllp_port and example[3] == "127.0.0.1"
    (message,) = list(read_loose(io.BytesIO(Path(example[1]).read_bytes())))
    with MLLPClient("127.0.0.1", mllp_port) as client:
        ack = client.send_message(message)
    msa = hl7.parse(ack.strip(b"\x0b\x1c\r").decode("utf-8")).segment("MSA")
    return str(msa[1]), str(msa[2])


def _leftovers(directory: Path) -> list[int]:
    """Processes that still run with the demo's data directory in their environment (the
    demo, its worker and the worker's pool, the embedded PostgreSQL)."""
    marker = f"YIJIAN_DATA_DIR={directory / 'var'}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_demo_serves_demo_data_through_every_edge_and_stops_cleanly() -> None:
    directory = Path(tempfile.mkdtemp(prefix="yijian-demo-"))
    directory.chmod(0o755)  # the embedded server runs as another user when tests run as root
    port = _free_port()
    mllp_port = _free_port()
    while mllp_port == port:
        mllp_port = _free_port()
    dicom_port = _free_port()
    while dicom_port in (port, mllp_port):
        dicom_port = _free_port()
    base = f"http://127.0.0.1:{port}"

    process, banner = _start(directory, port, mllp_port, dicom_port)
    try:
        assert "embedded PostgreSQL" in banner
        assert f"HL7 v2 MLLP          127.0.0.1:{mllp_port}" in banner
        assert "5 of 5 acknowledged AA, 5 new this run" in banner, banner
        assert f"DICOM C-STORE        127.0.0.1:{dicom_port} AE YIJIAN" in banner
        assert "DICOM: 3 of 3 CT slices of 赵丽 stored" in banner, banner
        for feed in ("demo-h1-lis", "demo-h2-lis", "demo-h3-ris"):
            assert feed in banner
        token = _token(base, banner)
        operator = _token(base, banner, "admin")

        # The whole demo, as the operator sees it (a doctor reads only with a purpose).
        found = _search(
            base,
            operator,
            "Observation",
            code="http://loinc.org|718-7",
            _include="Observation:subject",
        )
        matches = [e for e in found["entry"] if e["search"]["mode"] == "match"]
        # one haemoglobin per demo patient pushed as FHIR from three hospitals, and two more
        # in the 血常规 sent as HL7 v2 over MLLP (王芳 at hospital 1 in GBK, 陈晓明 at 2)
        assert len(matches) == 8
        performers = {e["resource"]["performer"][0]["reference"] for e in matches}
        assert len(performers) == 3

        # Without a purpose of use the doctor sees none of it.
        assert (
            _search(base, token, "Observation", code="http://loinc.org|718-7").get("entry", [])
            == []
        )
        # 王芳 is at hospitals 1 and 2 with one ID number: the doctor ordering for her finds
        # her reports from both by it, those pushed as FHIR and those received as HL7 v2.
        _order_for(base, token, WANG_FANG)
        reports = _search(base, token, "DiagnosticReport", **{"patient.identifier": WANG_FANG})
        by_hl7 = [
            e["resource"]
            for e in reports["entry"]
            if any(i["system"].endswith("/filler") for i in e["resource"]["identifier"])
        ]
        assert len(reports["entry"]) == 5
        assert sorted(r["code"]["text"] for r in by_hl7) == ["肝功能", "肾功能", "血常规"]
        assert len({r["performer"][0]["reference"] for r in by_hl7}) == 2
        creatinine = _search(
            base,
            token,
            "Observation",
            **{"patient.identifier": WANG_FANG, "code": "http://loinc.org|14682-9"},
        )
        assert [e["resource"]["valueQuantity"]["value"] for e in creatinine["entry"]] == [61]

        # The CT report went in as a file through the RIS feed's drop folder; the doctor
        # ordering for 赵丽 sees it.
        _order_for(base, token, ZHAO_LI)
        (ct,) = [
            e["resource"]
            for e in _search(base, token, "DiagnosticReport", category=RADIOLOGY)["entry"]
        ]
        assert "磨玻璃结节" in ct["conclusion"]
        assert (directory / "var" / "drop" / "DEMO-H3" / "processed").is_dir()

        # Its images came in over DICOM from the CT room: found by QIDO, and as an
        # ImagingStudy of the same patient linked to the report by the accession number.
        qido = httpx.get(
            f"{base}/dicomweb/studies",
            params={"AccessionNumber": "CT20261121000101"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert qido.status_code == 200, qido.text
        [found_study] = qido.json()
        assert found_study["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            linked = _search(base, token, "DiagnosticReport", category=RADIOLOGY)["entry"]
            if linked[0]["resource"].get("imagingStudy"):
                break
            time.sleep(0.5)
        [reference] = linked[0]["resource"]["imagingStudy"]
        study = httpx.get(
            f"{base}/fhir/{reference['reference']}",
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert study["numberOfInstances"] == 3
        assert study["subject"] == ct["subject"]

        # The listener answers a message of its own: AA, and AA again for the same message.
        assert _send_example(banner, mllp_port) == ("AA", "DEMO-H2-LIS-TRY-0001")
        assert _send_example(banner, mllp_port) == ("AA", "DEMO-H2-LIS-TRY-0001")
        counts = _counts(base, operator)
    finally:
        _stop(process)

    # A second start on the same data: everything acknowledged again, nothing stored twice.
    process, banner = _start(directory, port, mllp_port, dicom_port)
    try:
        assert "FHIR: 0 resources created this run" in banner, banner
        assert "DICOM: 3 of 3 CT slices of 赵丽 stored" in banner, banner  # repeats: same
        assert "5 of 5 acknowledged AA, 0 new this run" in banner, banner
        operator = _token(base, banner, "admin")
        assert _send_example(banner, mllp_port) == ("AA", "DEMO-H2-LIS-TRY-0001")
        assert _counts(base, operator) == counts
    finally:
        _stop(process)
    assert not _leftovers(directory), "processes of the demo outlived it"
