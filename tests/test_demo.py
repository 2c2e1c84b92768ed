"""`yijian demo` end to end: embedded database, demo hospitals, printed credentials that work."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from tests.conftest import YIJIAN, _free_port


def test_demo_serves_demo_data_with_the_printed_credentials_and_stops_cleanly() -> None:
    directory = Path(tempfile.mkdtemp(prefix="yijian-demo-"))
    directory.chmod(0o755)  # the embedded server runs as another user when tests run as root
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIJIAN_")}
    env["YIJIAN_DATA_DIR"] = str(directory / "var")
    port = _free_port()
    process = subprocess.Popen(
        [YIJIAN, "demo", "--port", str(port)],
        env=env,
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        banner = ""
        deadline = time.time() + 120
        assert process.stdout is not None
        while "Try:" not in banner:
            line = process.stdout.readline()
            assert line or process.poll() is None, banner
            banner += line
            assert time.time() < deadline, banner
        assert "embedded PostgreSQL" in banner
        doctor = re.search(r"doctor\s+client_id=(\S+)\s+client_secret=(\S+)", banner)
        assert doctor, banner
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(
            f"{base}/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": doctor[1],
                "client_secret": doctor[2],
            },
        ).json()["access_token"]
        found = httpx.get(
            f"{base}/fhir/Observation",
            params={"code": "http://loinc.org|718-7", "_include": "Observation:subject"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        matches = [e for e in found["entry"] if e["search"]["mode"] == "match"]
        assert len(matches) == 6  # one haemoglobin per demo patient, from three hospitals
        performers = {e["resource"]["performer"][0]["reference"] for e in matches}
        assert len(performers) == 3
        # 王芳 is at hospitals 1 and 2 with one ID number: a search by it finds both results.
        same_person = httpx.get(
            f"{base}/fhir/Observation",
            params={
                "code": "http://loinc.org|718-7",
                "patient.identifier": "https://yijian-hub.org/fhir/sid/resident-id|"
                "330102198603140020",
            },
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert len(same_person["entry"]) == 2
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    pgdata = str(directory / "var" / "pgdata")
    running = subprocess.run(["pgrep", "-f", f"postgres -D {pgdata}"], capture_output=True)
    assert running.returncode == 1, "the embedded PostgreSQL outlived the demo"
