"""The audit log, checked in the database behind a real hub, and ``yijian audit verify``.

Pins: every read, search, write and refused request leaves an ``audit_log`` row naming the
client, its organization, the action and interaction, the outcome and HTTP status, the source
IP, the patients and the resources touched; identifier values from a search are stored only as
keyed hashes; and the hash chain makes ``yijian audit verify`` fail, naming the problem, after
an audit row is edited, a middle row is deleted or a chain's last row is deleted. Tampering
happens in a throw-away database on the same server, never in the suite's shared one.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from hub.storage.database import libpq_url
from tests.conftest import YIJIAN, Client, HubUnderTest, observation, patient


def _query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(libpq_url(url))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def _audit_rows(hub: HubUnderTest, request_id: str) -> list[asyncpg.Record]:
    return _query(hub.database_url, "SELECT * FROM audit_log WHERE request_id = $1", request_id)


def _one_audit_row(hub: HubUnderTest, request_id: str) -> asyncpg.Record:
    rows = _audit_rows(hub, request_id)
    assert len(rows) == 1, rows
    return rows[0]


def _rid() -> dict[str, str]:
    return {"X-Request-ID": f"audit-{uuid.uuid4().hex}"}


def _setup(client: Client) -> tuple[str, str]:
    pid = client.post("/Patient", json=patient(client.organization)).json()["id"]
    created = client.post("/Observation", json=observation(client.organization, pid))
    assert created.status_code == 201, created.text
    return pid, created.json()["id"]


# -- what is recorded -----------------------------------------------------------------------------


def test_read_is_audited(hub: HubUnderTest, hospital_a: Client) -> None:
    pid, oid = _setup(hospital_a)
    headers = _rid()
    assert hospital_a.get(f"/Observation/{oid}", headers=headers).status_code == 200
    row = _one_audit_row(hub, headers["X-Request-ID"])
    assert row["client_id"] == hospital_a.client_id
    assert row["client_kind"] == "hospital"
    assert row["organization"] == hospital_a.organization
    assert row["action"] == "R"
    assert row["interaction"] == "read"
    assert row["outcome"] == "0"
    assert row["status"] == 200
    assert row["source_ip"] == "127.0.0.1"
    assert list(row["patients"]) == [f"Patient/{pid}"]
    assert list(row["entities"]) == [f"Observation/{oid}/_history/1"]
    assert row["recorded"] is not None and row["mac"]


def test_search_is_audited_without_identifier_values(hub: HubUnderTest, doctor: Client) -> None:
    id_card = "330102198001011234"
    headers = _rid()
    response = doctor.get(
        "/Patient",
        params={"identifier": f"urn:oid:2.16.156.10011.1.1|{id_card}", "gender": "female"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    row = _one_audit_row(hub, headers["X-Request-ID"])
    assert row["client_id"] == doctor.client_id
    assert row["organization"] == doctor.organization
    assert row["interaction"] == "search-type"
    assert row["outcome"] == "0"
    stored = dict(parse_qsl(row["query"]))
    assert stored["identifier"].startswith("hmac:")
    assert stored["gender"] == "female"
    assert id_card not in row["query"]
    assert id_card not in str(dict(row))


def test_search_results_are_audited(hub: HubUnderTest, hospital_a: Client) -> None:
    pid, oid = _setup(hospital_a)
    headers = _rid()
    found = hospital_a.get("/Observation", params={"subject": f"Patient/{pid}"}, headers=headers)
    assert [e["resource"]["id"] for e in found.json()["entry"]] == [oid]
    row = _one_audit_row(hub, headers["X-Request-ID"])
    assert f"Patient/{pid}" in row["patients"]
    assert f"Observation/{oid}/_history/1" in row["entities"]


def test_writes_are_audited(hub: HubUnderTest, hospital_a: Client) -> None:
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    headers = _rid()
    created = hospital_a.post(
        "/Observation", json=observation(hospital_a.organization, pid), headers=headers
    )
    assert created.status_code == 201
    oid = created.json()["id"]
    row = _one_audit_row(hub, headers["X-Request-ID"])
    assert (row["action"], row["interaction"], row["status"], row["outcome"]) == (
        "C",
        "create",
        201,
        "0",
    )
    assert list(row["patients"]) == [f"Patient/{pid}"]
    assert list(row["entities"]) == [f"Observation/{oid}/_history/1"]

    headers = _rid()
    changed = {**created.json(), "status": "amended"}
    assert hospital_a.put(f"/Observation/{oid}", json=changed, headers=headers).status_code == 200
    row = _one_audit_row(hub, headers["X-Request-ID"])
    assert (row["action"], row["interaction"], row["status"]) == ("U", "update", 200)
    assert f"Observation/{oid}/_history/2" in row["entities"]

    headers = _rid()
    assert hospital_a.delete(f"/Observation/{oid}", headers=headers).status_code == 204
    row = _one_audit_row(hub, headers["X-Request-ID"])
    assert (row["action"], row["interaction"], row["status"]) == ("D", "delete", 204)
    assert f"Observation/{oid}/_history/3" in row["entities"]


def test_everything_and_history_are_audited(hub: HubUnderTest, hospital_a: Client) -> None:
    pid, oid = _setup(hospital_a)
    headers = _rid()
    assert hospital_a.get(f"/Patient/{pid}/$everything", headers=headers).status_code == 200
    row = _one_audit_row(hub, headers["X-Request-ID"])
    assert f"Patient/{pid}" in row["patients"]
    assert f"Observation/{oid}/_history/1" in row["entities"]
    headers = _rid()
    assert hospital_a.get(f"/Observation/{oid}/_history", headers=headers).status_code == 200
    row = _one_audit_row(hub, headers["X-Request-ID"])
    assert row["action"] == "R" and row["outcome"] == "0"
    assert f"Patient/{pid}" in row["patients"]


def test_refused_requests_are_audited(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client, doctor: Client, consultant: Client
) -> None:
    pid_b, oid_b = _setup(hospital_b)
    cases = [
        (hospital_a, lambda h: hospital_a.get(f"/Observation/{oid_b}", headers=h), 404),
        # Outside a consultation a consultant's read finds nothing; $everything is refused.
        (consultant, lambda h: consultant.get(f"/Observation/{oid_b}", headers=h), 404),
        (consultant, lambda h: consultant.get(f"/Patient/{pid_b}/$everything", headers=h), 404),
        # So is a doctor's without a purpose of use.
        (doctor, lambda h: doctor.get(f"/Observation/{oid_b}", headers=h), 404),
        (
            doctor,
            lambda h: doctor.post(
                "/Observation", json=observation(doctor.organization, pid_b), headers=h
            ),
            403,
        ),
        (
            hospital_a,
            lambda h: hospital_a.post(
                "/Observation", json=observation(hospital_b.organization, pid_b), headers=h
            ),
            403,
        ),
    ]
    for client, call, status in cases:
        headers = _rid()
        response = call(headers)
        assert response.status_code == status, response.text
        row = _one_audit_row(hub, headers["X-Request-ID"])
        assert row["status"] == status
        assert row["outcome"] != "0"
        assert row["client_id"] == client.client_id
        assert row["organization"] == client.organization
        assert row["detail"]


def test_token_requests_are_audited(hub: HubUnderTest, hospital_a: Client) -> None:
    for secret, status in ((hospital_a.secret, 200), ("wrong-secret", 401)):
        headers = _rid()
        response = httpx.post(
            f"{hub.base_url}/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": hospital_a.client_id,
                "client_secret": secret,
            },
            headers=headers,
        )
        assert response.status_code == status
        row = _one_audit_row(hub, headers["X-Request-ID"])
        assert row["interaction"] == "token"
        assert row["client_id"] == hospital_a.client_id
        assert row["status"] == status
        assert (row["outcome"] == "0") == (status == 200)
        assert secret not in str(dict(row))


def test_verify_passes_on_the_live_log_while_requests_continue(
    hub: HubUnderTest, hospital_a: Client
) -> None:
    """Verification of a running hub's log must not mistake fresh appends for tampering."""
    _, oid = _setup(hospital_a)
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=hub.fhir, headers=dict(hospital_a.http.headers)) as http:
            while not stop.is_set():
                http.get(f"/Observation/{oid}")

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        for _ in range(2):
            result = hub.cli("audit", "verify", check=False)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "intact" in result.stdout
    finally:
        stop.set()
        thread.join(timeout=10)


# -- tamper evidence, in a throw-away database --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def scratch(hub: HubUnderTest) -> Iterator[dict[str, str]]:
    """An environment for the CLI pointing at a new, empty database on the suite's server."""
    name = f"yijian_scratch_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(libpq_url(hub.database_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(hub.database_url)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    try:
        yield {**hub.env, "YIJIAN_DATABASE_URL": url}
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([YIJIAN, *args], env=env, capture_output=True, text=True, timeout=120)


def _verify(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = _cli(env, "audit", "verify")
    assert "Traceback" not in result.stderr, result.stderr
    return result


def _fill_audit_log(env: dict[str, str]) -> str:
    """Audit rows from CLI commands and from a served hub; returns the served hub's chain id."""
    assert _cli(env, "db", "upgrade").returncode == 0
    org = _cli(env, "orgs", "add", "--name", "审计医院", "--identifier", "urn:test|A", "--json")
    assert org.returncode == 0, org.stderr
    org_id = json.loads(org.stdout)["id"]
    added = _cli(
        env, "clients", "add", "--kind", "hospital", "--organization", org_id, "--name", "aud",
        "--json",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    client_id = json.loads(added.stdout)["client_id"]
    secret = json.loads(added.stdout)["client_secret"]

    port = _free_port()
    server = subprocess.Popen(
        [YIJIAN, "serve", "--port", str(port), "--no-migrate"],
        env={**env, "YIJIAN_LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        form = {"grant_type": "client_credentials", "client_id": client_id}
        for attempt in range(5):
            secret_used = secret if attempt % 2 == 0 else "wrong"
            httpx.post(f"{base}/auth/token", data={**form, "client_secret": secret_used})
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    chains = _query(
        env["YIJIAN_DATABASE_URL"], "SELECT chain_id FROM audit_chain WHERE last_seq = 5"
    )
    assert len(chains) == 1, chains
    return str(chains[0]["chain_id"])


def test_verify_detects_edits_and_deletions(scratch: dict[str, str]) -> None:
    url = scratch["YIJIAN_DATABASE_URL"]
    chain = _fill_audit_log(scratch)
    intact = _verify(scratch)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "intact" in intact.stdout

    def row(seq: int) -> asyncpg.Record:
        sql = "SELECT * FROM audit_log WHERE chain_id = $1 AND seq = $2"
        return _query(url, sql, chain, seq)[0]

    def put_back(record: asyncpg.Record) -> None:
        names = list(record.keys())
        placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
        _query(
            url,
            f"INSERT INTO audit_log ({', '.join(names)}) VALUES ({placeholders})",
            *record.values(),
        )

    def assert_tampered(*problems: str) -> None:
        result = _verify(scratch)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "TAMPERED" in result.stderr and chain in result.stderr
        for problem in problems:
            assert problem in result.stderr, result.stderr

    # (a) edited rows no longer match their MACs; putting the values back makes them intact.
    update = "UPDATE audit_log SET {} = $3 WHERE chain_id = $1 AND seq = $2"
    second, fourth = row(2), row(4)
    _query(url, update.format("detail"), chain, 2, "nothing happened")
    _query(url, update.format("status"), chain, 4, 299)
    assert_tampered("record 2 was altered", "record 4 was altered")
    _query(url, update.format("detail"), chain, 2, second["detail"])
    _query(url, update.format("status"), chain, 4, fourth["status"])

    # (b) a deleted middle row: the gap is named.
    third = row(3)
    _query(url, "DELETE FROM audit_log WHERE chain_id = $1 AND seq = 3", chain)
    assert_tampered("record 3 missing")
    put_back(third)

    # A row appended outside the hub, even a copy of a genuine one, is detected.
    _query(
        url,
        "INSERT INTO audit_log SELECT chain_id, 6, recorded, action, interaction, outcome, "
        "status, client_id, client_kind, organization, source_ip, request_id, patients, "
        "entities, query, detail, mac FROM audit_log WHERE chain_id = $1 AND seq = 5",
        chain,
    )
    assert_tampered("record 6 was altered", "ends at record 6 but its head says 5")
    _query(url, "DELETE FROM audit_log WHERE chain_id = $1 AND seq = 6", chain)
    assert _verify(scratch).returncode == 0  # (a) and (b) undone: intact again

    # (c) the last row of the chain deleted: the chain is shorter than its head says.
    _query(url, "DELETE FROM audit_log WHERE chain_id = $1 AND seq = 5", chain)
    assert_tampered("ends at record 4 but its head says 5")
