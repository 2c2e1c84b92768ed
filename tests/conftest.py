"""Test fixtures: a real PostgreSQL, a real hub on a real socket, clients registered by the CLI.

The database is ``YIJIAN_TEST_DATABASE_URL`` (a server where the user may create databases;
each session creates and drops its own database) or, when unset, an embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn

from hub.api.app import create_app
from hub.settings import load_settings
from hub.storage.database import libpq_url
from hub.storage.migrate import upgrade

YIJIAN = str(Path(sys.executable).parent / "yijian")
MAX_BODY = 2 * 1024 * 1024


@dataclass
class Client:
    """A registered API client and an HTTP session carrying its token."""

    client_id: str
    secret: str
    organization: str
    http: httpx.Client

    def get(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.get(url, **kw)

    def post(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.post(url, **kw)

    def put(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.put(url, **kw)

    def delete(self, url: str, **kw: Any) -> httpx.Response:
        return self.http.delete(url, **kw)


@dataclass
class HubUnderTest:
    base_url: str
    database_url: str
    env: dict[str, str]
    org_a: str
    org_b: str
    clients: dict[str, Client]
    adapters_dir: Path

    @property
    def fhir(self) -> str:
        return self.base_url + "/fhir"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [YIJIAN, *args], env=self.env, capture_output=True, text=True, timeout=120
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"yijian {' '.join(args)} exited {done.returncode}:\n{done.stderr[-3000:]}"
            )
        return done

    def token(self, client_id: str, secret: str, **form: str) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": secret,
                **form,
            },
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = os.environ.get("YIJIAN_TEST_DATABASE_URL")
    if not server:
        from hub.storage.embedded import start_embedded

        # Not under pytest's private (0700) tmp dir: the server runs as another system user
        # when the tests run as root, and must reach its data directory.
        directory = Path(tempfile.mkdtemp(prefix="yijian-test-pg-"))
        directory.chmod(0o755)
        yield start_embedded(directory, "yijian_test")
        return
    name = f"yijian_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(libpq_url(server))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base, _, _ = libpq_url(server).rpartition("/")
    yield f"{base}/{name}"
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def hub(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubUnderTest]:
    data_dir = tmp_path_factory.mktemp("hub")
    adapters_dir = data_dir / "adapters"
    adapters_dir.mkdir()
    env = {
        **os.environ,
        "YIJIAN_DATABASE_URL": database_url,
        "YIJIAN_DATA_DIR": str(data_dir),
        "YIJIAN_ADAPTERS_DIR": str(adapters_dir),
        "YIJIAN_MAX_BODY_BYTES": str(MAX_BODY),
        "YIJIAN_LOG_LEVEL": "WARNING",
    }
    upgrade(database_url)
    settings = load_settings(
        database_url=database_url,
        data_dir=data_dir,
        adapters_dir=adapters_dir,
        max_body_bytes=MAX_BODY,
        log_level="WARNING",
    )
    port = _free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the hub did not start")
        time.sleep(0.05)
    base_url = f"http://127.0.0.1:{port}"
    under_test = HubUnderTest(base_url, database_url, env, "", "", {}, adapters_dir)

    def org(name: str, code: str) -> str:
        out = under_test.cli(
            "orgs",
            "add",
            "--name",
            name,
            "--identifier",
            f"https://yijian.example/hospital|{code}",
            "--json",
        )
        return str(json.loads(out.stdout)["id"])

    under_test.org_a = org("杭州市第一人民医院", "H-A")
    under_test.org_b = org("浙江大学医学院附属第二医院", "H-B")
    for role, kind, organization in [
        ("admin", "admin", under_test.org_a),
        ("hospital_a", "hospital", under_test.org_a),
        ("hospital_b", "hospital", under_test.org_b),
        ("doctor", "doctor", under_test.org_b),
        ("consultant", "consultant", under_test.org_b),
    ]:
        out = under_test.cli(
            "clients",
            "add",
            "--kind",
            kind,
            "--organization",
            organization,
            "--name",
            role,
            "--json",
        )
        record = json.loads(out.stdout)
        token = under_test.token(record["client_id"], record["client_secret"]).json()[
            "access_token"
        ]
        http = httpx.Client(
            base_url=under_test.fhir,
            timeout=30,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        )
        under_test.clients[role] = Client(
            record["client_id"], record["client_secret"], organization, http
        )
    yield under_test
    for client in under_test.clients.values():
        client.http.close()
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="session")
def admin(hub: HubUnderTest) -> Client:
    return hub.clients["admin"]


@pytest.fixture(scope="session")
def hospital_a(hub: HubUnderTest) -> Client:
    return hub.clients["hospital_a"]


@pytest.fixture(scope="session")
def hospital_b(hub: HubUnderTest) -> Client:
    return hub.clients["hospital_b"]


@pytest.fixture(scope="session")
def doctor(hub: HubUnderTest) -> Client:
    return hub.clients["doctor"]


@pytest.fixture(scope="session")
def consultant(hub: HubUnderTest) -> Client:
    return hub.clients["consultant"]


def unique() -> str:
    return uuid.uuid4().hex[:12]


def patient(org: str, mrn: str | None = None, **fields: Any) -> dict[str, Any]:
    """A source Patient as a hospital sends it."""
    return {
        "resourceType": "Patient",
        "identifier": [{"system": f"https://yijian.example/mrn/{org}", "value": mrn or unique()}],
        "name": [{"family": "王", "given": ["芳"], "text": "王芳"}],
        "gender": "female",
        "birthDate": "1986-03-14",
        "managingOrganization": {"reference": f"Organization/{org}"},
        **fields,
    }


def observation(
    org: str,
    patient_id: str,
    code: str = "718-7",
    value: float = 13.2,
    when: str = "2026-11-20T09:30:00+08:00",
    **fields: Any,
) -> dict[str, Any]:
    """A final lab result (default: haemoglobin) performed by ``org``."""
    return {
        "resourceType": "Observation",
        "status": "final",
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
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": when,
        "issued": when,
        "performer": [{"reference": f"Organization/{org}"}],
        "valueQuantity": {
            "value": value,
            "unit": "g/dL",
            "system": "http://unitsofmeasure.org",
            "code": "g/dL",
        },
        **fields,
    }
