"""``yijian demo``: the whole hub on one machine, with data from several simulated hospitals.

It uses the embedded PostgreSQL unless ``YIJIAN_DATABASE_URL`` is set, applies migrations,
registers three demo hospitals and one client of each kind, starts the API, loads each
hospital's patients and lab results through the real FHIR API (as transaction Bundles with
conditional creates, so running the demo again adds nothing twice), and prints the URLs and
credentials. Client secrets are reset on every start, since they are shown only once.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from hub import logs
from hub.api.app import create_app
from hub.lifecycle import exit_cleanly_after_shutdown
from hub.settings import load_settings
from hub.storage.database import resolve_database_url
from hub.storage.migrate import upgrade

HOSPITAL_SYSTEM = "https://yijian.example/hospital"
RESIDENT_ID = "https://yijian-hub.org/fhir/sid/resident-id"


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


def run_demo(host: str, port: int) -> None:
    logs.configure("WARNING")
    url = resolve_database_url(load_settings())
    os.environ["YIJIAN_DATABASE_URL"] = url
    upgrade(url)
    exit_cleanly_after_shutdown()  # so the embedded PostgreSQL is stopped on Ctrl-C/SIGTERM
    asyncio.run(_demo(host, port, url))


async def _demo(host: str, port: int, url: str) -> None:
    settings = load_settings(database_url=url)
    credentials = await _register(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=host, port=port, log_config=None, access_log=False
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.05)
    base = f"http://{host}:{port}"
    loaded = await _load(base, credentials)
    _print_banner(base, credentials, loaded, url)
    await task


async def _register(settings: Any) -> dict[str, dict[str, str]]:
    """Demo organizations and clients; returns role → {client_id, client_secret, org}."""
    from hub.records.unit_of_work import unit_of_work
    from hub.runtime import Hub
    from hub.security.clients import ClientRegistry
    from hub.security.principals import ClientKind, Principal
    from hub.storage.resources import WriteContext

    hub = Hub.build(settings)
    operator = Principal(
        "cli:demo", "demo loader", ClientKind.ADMIN, "hub", frozenset({"system/*.cruds"})
    )
    orgs = {}
    async with unit_of_work(hub.database, transaction=True) as uow:
        for hospital in HOSPITALS:
            outcome = await hub.records.create(
                uow,
                operator,
                "Organization",
                {
                    "resourceType": "Organization",
                    "active": True,
                    "name": hospital.name,
                    "identifier": [{"system": HOSPITAL_SYSTEM, "value": hospital.code}],
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
    await hub.database.dispose()
    return credentials


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
                    "effectiveDateTime": f"2026-11-{18 + index % 3:02d}T08:30:00+08:00",
                    "issued": f"2026-11-{18 + index % 3:02d}T11:00:00+08:00",
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
                "effectiveDateTime": "2026-11-18T08:30:00+08:00",
                "issued": "2026-11-18T11:00:00+08:00",
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


def _print_banner(base: str, credentials: dict[str, dict[str, str]], loaded: int, db: str) -> None:
    lines = [
        "",
        "Yijian Hub (医检互认平台) demo is running.  Ctrl-C stops it.",
        f"  FHIR R4 base         {base}/fhir        (CapabilityStatement: {base}/fhir/metadata)",
        f"  OAuth2 token         {base}/auth/token  (grant_type=client_credentials)",
        f"  Health / metrics     {base}/healthz  {base}/metrics",
        f"  API docs             {base}/api/docs",
        f"  Database             {'embedded PostgreSQL' if 'host=/' in db else db}",
        f"  Demo data            3 hospitals; {loaded} resources created this run "
        "(0 on a re-run: pushes are idempotent)",
        "  Not yet in this build: MLLP listener, DICOM receiver, worker, web workstation",
        "",
        "Demo clients (secrets are reset each time the demo starts):",
    ]
    for role, creds in credentials.items():
        lines.append(
            f"  {role:<20} client_id={creds['client_id']}  client_secret={creds['client_secret']}"
        )
    doctor = credentials["doctor"]
    lines += [
        "",
        "Try:",
        f"  TOKEN=$(curl -s -d grant_type=client_credentials -d client_id={doctor['client_id']} "
        f"-d client_secret={doctor['client_secret']} {base}/auth/token | python3 -c "
        "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f'  curl -s -H "Authorization: Bearer $TOKEN" \'{base}/fhir/Observation?'
        "code=http://loinc.org|718-7&_include=Observation:subject&_pretty=true'",
        "  # 王芳 is at hospitals 1 and 2 with one ID number: one master patient, both results",
        f'  curl -s -H "Authorization: Bearer $TOKEN" \'{base}/fhir/Observation?'
        f"patient.identifier={RESIDENT_ID}|330102198603140020&_pretty=true'",
        "  # 陈小明 (hospital 3, no ID) may be 陈晓明 (hospital 2): waiting for an operator",
        "  yijian identity reviews",
        "",
    ]
    print("\n".join(lines), flush=True)
