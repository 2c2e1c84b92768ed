"""Operability: health, metrics, request ids, discovery documents, structured logs, shutdown.

Pins: ``/healthz`` answers without a token and checks the database; ``/metrics`` is for admin
bearer tokens and counts requests by route template and status; every response carries an
``X-Request-ID`` (echoing the caller's); the CapabilityStatement and SMART configuration are
public; and ``yijian serve`` logs one JSON line per request with its request id — never an
identifier value, a secret or a token — and exits 0 on SIGTERM.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import YIJIAN, Client, HubUnderTest, observation, patient

ID_CARD = "330102198001011234"
ID_SYSTEM = "urn:oid:2.16.156.10011.1.1"


def _auth(client: Client) -> dict[str, str]:
    return {"Authorization": str(client.http.headers["Authorization"])}


# -- health and metrics ----------------------------------------------------------------------------


def test_healthz_needs_no_token(hub: HubUnderTest) -> None:
    response = httpx.get(f"{hub.base_url}/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.headers["content-type"].startswith("application/json")


def test_metrics_need_an_admin_token(
    hub: HubUnderTest, admin: Client, hospital_a: Client, doctor: Client
) -> None:
    url = f"{hub.base_url}/metrics"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401
    assert "WWW-Authenticate" in anonymous.headers
    assert "yijian_http_requests_total" not in anonymous.text
    for client in (hospital_a, doctor):
        refused = httpx.get(url, headers=_auth(client))
        assert refused.status_code == 403
        assert "yijian_http_requests_total" not in refused.text
    forged = httpx.get(url, headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401


def test_metrics_count_requests_by_route_template_and_status(
    hub: HubUnderTest, admin: Client, hospital_a: Client
) -> None:
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    assert hospital_a.get(f"/Patient/{pid}").status_code == 200
    assert hospital_a.get("/Patient/no-such-patient").status_code == 404
    assert hospital_a.get("/Patient", params={"identifier": f"{ID_SYSTEM}|{ID_CARD}"}).is_success

    def count(text: str, route: str, status: str) -> float:
        pattern = (
            r'^yijian_http_requests_total\{method="GET",route="'
            + re.escape(route)
            + r'",status="'
            + status
            + r'"\} ([0-9.e+]+)$'
        )
        match = re.search(pattern, text, re.M)
        return float(match.group(1)) if match else 0.0

    before = httpx.get(f"{hub.base_url}/metrics", headers=_auth(admin))
    assert before.status_code == 200
    assert before.headers["content-type"].startswith("text/plain")
    text = before.text
    read_route = "/fhir/{resource_type}/{resource_id}"
    assert count(text, read_route, "200") >= 1
    assert count(text, read_route, "404") >= 1
    assert count(text, "/fhir/{resource_type}", "200") >= 1
    assert "yijian_http_request_duration_seconds_bucket" in text
    assert 'route="/fhir/{resource_type}/{resource_id}"' in text
    # Labels are templates, never raw paths or query values.
    assert pid not in text
    assert ID_CARD not in text
    assert "no-such-patient" not in text

    assert hospital_a.get(f"/Patient/{pid}").status_code == 200
    after = httpx.get(f"{hub.base_url}/metrics", headers=_auth(admin)).text
    assert count(after, read_route, "200") == count(text, read_route, "200") + 1


# -- request ids ----------------------------------------------------------------------------------


def test_every_response_has_a_request_id(hub: HubUnderTest, hospital_a: Client) -> None:
    responses = [
        httpx.get(f"{hub.base_url}/healthz"),
        httpx.get(f"{hub.fhir}/metadata"),
        httpx.get(f"{hub.fhir}/Patient"),  # 401
        httpx.post(f"{hub.base_url}/auth/token", data={"grant_type": "password"}),  # 400
        httpx.get(f"{hub.base_url}/no/such/thing"),  # 404
        hospital_a.get("/Patient", params={"_count": 1}),
        hospital_a.post("/Patient", content=b"{", headers={"Content-Type": "application/json"}),
        hospital_a.post(
            "/Patient",
            content=b"x" * (3 * 1024 * 1024),
            headers={"Content-Type": "application/fhir+json"},
        ),  # 413
    ]
    ids = [r.headers.get("x-request-id") for r in responses]
    assert all(ids), [
        (r.status_code, r.url) for r in responses if not r.headers.get("x-request-id")
    ]
    assert len(set(ids)) == len(ids)


def test_a_given_request_id_is_echoed(hub: HubUnderTest, hospital_a: Client) -> None:
    given = f"trace-{uuid.uuid4().hex}"
    for response in (
        httpx.get(f"{hub.base_url}/healthz", headers={"X-Request-ID": given}),
        hospital_a.get("/Patient", params={"_count": 1}, headers={"X-Request-ID": given}),
        httpx.get(f"{hub.fhir}/Patient", headers={"X-Request-ID": given}),
    ):
        assert response.headers["x-request-id"] == given


# -- public documents ------------------------------------------------------------------------------


def test_metadata_and_smart_configuration_need_no_token(hub: HubUnderTest) -> None:
    metadata = httpx.get(f"{hub.fhir}/metadata")
    assert metadata.status_code == 200
    assert metadata.json()["resourceType"] == "CapabilityStatement"
    smart = httpx.get(f"{hub.fhir}/.well-known/smart-configuration")
    assert smart.status_code == 200
    config = smart.json()
    assert config["token_endpoint"].endswith("/auth/token")
    assert config["token_endpoint"].startswith(hub.base_url)
    assert "client_credentials" in config["grant_types_supported"]
    jwks = httpx.get(config["jwks_uri"])
    assert jwks.status_code == 200
    assert all("d" not in key for key in jwks.json()["keys"])  # public halves only


# -- a served hub: logs and shutdown ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def served(hub: HubUnderTest) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = _free_port()
    process = subprocess.Popen(
        [YIJIAN, "serve", "--port", str(port)],
        env={**hub.env, "YIJIAN_LOG_LEVEL": "INFO"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/healthz", headers={"X-Request-ID": "startup-probe"}).is_success:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(process.communicate()[1].decode(errors="replace"))
        time.sleep(0.1)
    yield process, base
    if process.poll() is None:
        process.kill()
        process.wait()


def test_serve_logs_json_lines_without_identifiers_and_stops_gracefully(
    served: tuple[subprocess.Popen[bytes], str], hospital_a: Client
) -> None:
    process, base = served
    org = hospital_a.organization
    mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    secret_header = _auth(hospital_a)
    token = secret_header["Authorization"].removeprefix("Bearer ")
    sent: list[httpx.Response] = []
    with httpx.Client(base_url=base, headers=secret_header, timeout=30) as http:
        body = patient(org, mrn, identifier=[{"system": ID_SYSTEM, "value": ID_CARD}])
        body["identifier"].append({"system": f"https://yijian.example/mrn/{org}", "value": mrn})
        sent.append(http.post("/fhir/Patient", json=body))
        sent.append(http.get("/fhir/Patient", params={"identifier": f"{ID_SYSTEM}|{ID_CARD}"}))
        sent.append(http.get("/fhir/Observation", params={"patient.identifier": ID_CARD}))
        sent.append(http.get(f"/fhir/Patient/{ID_CARD}"))
        sent.append(http.get(f"/nothing/here/{ID_CARD}"))
        sent.append(
            http.post(
                "/fhir/Patient",
                content=f'{{"identifier": [{{"value": "{ID_CARD}"'.encode(),
                headers={"Content-Type": "application/fhir+json"},
            )
        )
        if sent[0].status_code == 201:
            pid = sent[0].json()["id"]
            sent.append(http.post("/fhir/Observation", json=observation(org, pid)))
        sent.append(http.get("/fhir/metadata", headers={"X-Request-ID": "given-by-caller"}))
        sent.append(http.get("/healthz"))
        sent.append(
            httpx.post(
                f"{base}/auth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": hospital_a.client_id,
                    "client_secret": hospital_a.secret,
                },
            )
        )
    assert all(r.status_code < 500 for r in sent), [(r.status_code, r.text) for r in sent]
    issued = sent[-1].json()["access_token"]

    process.send_signal(signal.SIGTERM)
    try:
        _, stderr_bytes = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("yijian serve did not stop within 30 s of SIGTERM") from None
    assert process.returncode == 0, stderr_bytes.decode(errors="replace")[-2000:]

    stderr = stderr_bytes.decode()
    lines = [line for line in stderr.splitlines() if line.strip()]
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            raise AssertionError(f"not a JSON log line: {line!r}") from None
    access = [e for e in entries if e.get("event") == "request"]
    expected_ids = ["startup-probe", *(r.headers["x-request-id"] for r in sent)]
    logged_ids = [e["request_id"] for e in access]
    assert set(expected_ids) <= set(logged_ids)
    assert len(access) == len(logged_ids)
    for request_id in expected_ids[1:]:
        assert logged_ids.count(request_id) == 1, request_id
    assert "given-by-caller" in logged_ids
    for entry in access:
        assert {"request_id", "method", "route", "status", "ms"} <= set(entry)
    routes = {e["route"] for e in access}
    assert "/fhir/{resource_type}/{resource_id}" in routes

    for secret in (ID_CARD, mrn, hospital_a.secret, token, issued):
        assert secret not in stderr, f"{secret[:12]}... appears in the log"
