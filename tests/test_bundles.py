"""Batch and transaction Bundles posted to the FHIR base, through HTTP.

A transaction is one unit: ``urn:uuid`` references are resolved whatever the entry order,
conditional entries make a hospital's re-push idempotent, and any failure rolls back all of it
with an OperationOutcome naming the entry. A batch runs each entry on its own.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from tests.conftest import Client, observation, patient, unique

LOINC = "http://loinc.org"


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def ident(org: str, kind: str, value: str) -> dict[str, str]:
    return {"system": f"https://yijian.example/{kind}/{org}", "value": value}


def token(identifier: dict[str, str]) -> str:
    return f"identifier={identifier['system']}|{identifier['value']}"


def post(full_url: str, resource: dict[str, Any], conditional: bool = True) -> dict[str, Any]:
    """A POST entry; conditional on the resource's first identifier unless told otherwise."""
    request: dict[str, Any] = {"method": "POST", "url": resource["resourceType"]}
    if conditional and resource.get("identifier"):
        request["ifNoneExist"] = token(resource["identifier"][0])
    return {"fullUrl": full_url, "resource": resource, "request": request}


def put_if(full_url: str, resource: dict[str, Any]) -> dict[str, Any]:
    """A conditional PUT entry (``Type?identifier=...``) on the resource's first identifier."""
    url = f"{resource['resourceType']}?{token(resource['identifier'][0])}"
    return {"fullUrl": full_url, "resource": resource, "request": {"method": "PUT", "url": url}}


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def search(client: Client, resource_type: str, identifier: dict[str, str]) -> list[dict]:
    bundle = client.get(
        f"/{resource_type}", params={"identifier": f"{identifier['system']}|{identifier['value']}"}
    ).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def send(client: Client, bundle: dict[str, Any]) -> httpx.Response:
    """POST a Bundle to the FHIR base itself (``/fhir``, no trailing slash)."""
    return client.post(str(client.http.base_url).rstrip("/"), json=bundle)


def location_id(entry: dict[str, Any]) -> str:
    """``Type/id`` of a transaction-response entry's location."""
    return "/".join(entry["response"]["location"].split("/")[:2])


def lab_result(org: str, mrn: str, accession: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A complete lab push: an Observation first, then Patient, order, specimen, the rest.

    Every entry is a conditional create on its business identifier. Returns the Bundle and
    the fullUrl of each entry by name.
    """
    urls = {name: urn() for name in ("hb", "patient", "order", "specimen", "wbc", "plt", "report")}
    subject = {"reference": urls["patient"]}
    based_on = [{"reference": urls["order"]}]
    specimen = {"reference": urls["specimen"]}

    def result(name: str, code: str, value: float) -> dict[str, Any]:
        return observation(
            org,
            "unused",
            code=code,
            value=value,
            subject=subject,
            basedOn=based_on,
            specimen=specimen,
            identifier=[ident(org, "result", f"{accession}-{name}")],
        )

    order = {
        "resourceType": "ServiceRequest",
        "identifier": [ident(org, "placer", accession)],
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
        "subject": subject,
        "authoredOn": "2026-11-20T08:00:00+08:00",
        "requester": {"reference": f"Organization/{org}"},
        "performer": [{"reference": f"Organization/{org}"}],
    }
    sample = {
        "resourceType": "Specimen",
        "identifier": [ident(org, "accession", accession)],
        "type": {"text": "venous blood"},
        "subject": subject,
        "request": based_on,
        "collection": {"collectedDateTime": "2026-11-20T08:10:00+08:00"},
    }
    report = {
        "resourceType": "DiagnosticReport",
        "identifier": [ident(org, "report", accession)],
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
        "subject": subject,
        "basedOn": based_on,
        "specimen": [specimen],
        "effectiveDateTime": "2026-11-20T09:30:00+08:00",
        "issued": "2026-11-20T10:00:00+08:00",
        "performer": [{"reference": f"Organization/{org}"}],
        "result": [{"reference": urls[n]} for n in ("hb", "wbc", "plt")],
    }
    bundle = transaction(
        post(urls["hb"], result("hb", "718-7", 13.2)),
        post(urls["patient"], patient(org, mrn)),
        post(urls["order"], order),
        post(urls["specimen"], sample),
        post(urls["wbc"], result("wbc", "6690-2", 6.1)),
        post(urls["plt"], result("plt", "777-3", 250)),
        post(urls["report"], report),
    )
    return bundle, urls


def references(resource: dict[str, Any]) -> list[str]:
    """Every ``reference`` string anywhere in a resource."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "reference" and isinstance(item, str):
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(resource)
    return found


def assert_rolled_back(response: httpx.Response, index: int, status: int) -> None:
    assert response.status_code == status, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert f"Bundle.entry[{index}]" in json.dumps(outcome, ensure_ascii=False)


# -- transaction: urn:uuid resolution and idempotent replay ---------------------------------------


def test_transaction_stores_a_lab_push_with_every_reference_rewritten(
    hospital_a: Client,
) -> None:
    """A lab push in any entry order is stored whole; urn:uuid references become Type/id."""
    org = hospital_a.organization
    bundle, _ = lab_result(org, unique(), unique())
    response = send(hospital_a, bundle)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resourceType"] == "Bundle"
    assert body["type"] == "transaction-response"
    assert len(body["entry"]) == len(bundle["entry"])
    ids: dict[str, str] = {}
    for sent, got in zip(bundle["entry"], body["entry"], strict=True):
        assert got["response"]["status"].startswith("201"), got
        resource_type = sent["resource"]["resourceType"]
        location = got["response"]["location"]
        assert location.startswith(f"{resource_type}/") and location.endswith("/_history/1")
        ids[sent["fullUrl"]] = location_id(got)

    hb, pid_ref, order, specimen, wbc, plt, report = (ids[e["fullUrl"]] for e in bundle["entry"])
    stored = {ref: hospital_a.get(f"/{ref}").json() for ref in ids.values()}
    for resource in stored.values():
        for reference in references(resource):
            assert not reference.startswith("urn:"), reference
            target_type, target_id = reference.split("/")
            assert hospital_a.get(f"/{target_type}/{target_id}").status_code == 200

    assert stored[hb]["subject"]["reference"] == pid_ref
    assert stored[hb]["basedOn"][0]["reference"] == order
    assert stored[hb]["specimen"]["reference"] == specimen
    assert stored[specimen]["request"][0]["reference"] == order
    assert stored[order]["subject"]["reference"] == pid_ref
    assert stored[report]["subject"]["reference"] == pid_ref
    assert stored[report]["basedOn"][0]["reference"] == order
    assert [r["reference"] for r in stored[report]["result"]] == [hb, wbc, plt]

    linked = hospital_a.get(
        "/Observation", params={"subject": pid_ref, "based-on": order, "_count": 50}
    ).json()
    assert {f"Observation/{e['resource']['id']}" for e in linked["entry"]} == {hb, wbc, plt}


def test_replayed_transaction_creates_no_duplicates(hospital_a: Client) -> None:
    """Re-posting the same push matches every ifNoneExist: 200s, same ids, one of each."""
    org = hospital_a.organization
    bundle, _ = lab_result(org, unique(), unique())
    first = send(hospital_a, bundle)
    assert first.status_code == 200, first.text
    again = send(hospital_a, bundle)
    assert again.status_code == 200, again.text
    for one, two in zip(first.json()["entry"], again.json()["entry"], strict=True):
        assert two["response"]["status"].startswith("200"), two
        assert location_id(two) == location_id(one)
    for item in bundle["entry"]:
        resource = item["resource"]
        found = search(hospital_a, resource["resourceType"], resource["identifier"][0])
        assert len(found) == 1, resource["resourceType"]


def test_concurrent_replays_create_one_of_each(hospital_a: Client) -> None:
    """The same push sent four times at once still stores one resource per identifier."""
    bundle, _ = lab_result(hospital_a.organization, unique(), unique())
    url = str(hospital_a.http.base_url).rstrip("/")
    headers = dict(hospital_a.http.headers)

    def push(_: int) -> int:
        with httpx.Client(headers=headers, timeout=30) as http:
            return http.post(url, json=bundle).status_code

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(push, range(4))) == [200] * 4
    for item in bundle["entry"]:
        resource = item["resource"]
        found = search(hospital_a, resource["resourceType"], resource["identifier"][0])
        assert len(found) == 1, resource["resourceType"]


def test_new_result_for_a_known_patient_references_the_first_patient(hospital_a: Client) -> None:
    """A later push whose Patient matches ifNoneExist links its results to the existing one."""
    org = hospital_a.organization
    mrn = unique()
    bundle, _ = lab_result(org, mrn, unique())
    first = send(hospital_a, bundle).json()
    pid_ref = location_id(first["entry"][1])

    later = urn()
    patient_urn = urn()
    follow_up = transaction(
        post(later, observation(org, "x", subject={"reference": patient_urn})),
        post(patient_urn, patient(org, mrn)),
    )
    response = send(hospital_a, follow_up)
    assert response.status_code == 200, response.text
    obs_entry, patient_entry = response.json()["entry"]
    assert patient_entry["response"]["status"].startswith("200")
    assert location_id(patient_entry) == pid_ref
    assert obs_entry["response"]["status"].startswith("201")
    stored = hospital_a.get(f"/{location_id(obs_entry)}").json()
    assert stored["subject"]["reference"] == pid_ref
    system = f"https://yijian.example/mrn/{org}"
    assert len(search(hospital_a, "Patient", {"system": system, "value": mrn})) == 1


def test_conditional_put_in_a_transaction_versions_a_corrected_result(hospital_a: Client) -> None:
    """A correction (status amended) sent as PUT Type?identifier becomes version 2, not a copy.

    The corrected report references the corrected Observation by its urn:uuid; that reference
    resolves to the Observation the conditional PUT matched.
    """
    org = hospital_a.organization
    mrn, accession = unique(), unique()
    bundle, urls = lab_result(org, mrn, accession)
    created = send(hospital_a, bundle).json()
    hb_ref = location_id(created["entry"][0])
    report_ref = location_id(created["entry"][6])

    hb = bundle["entry"][0]["resource"]
    report = bundle["entry"][6]["resource"]
    fixed_hb = {**hb, "status": "amended", "valueQuantity": {**hb["valueQuantity"], "value": 12.1}}
    fixed_report = {**report, "status": "amended", "result": [{"reference": urls["hb"]}]}
    correction = transaction(
        *bundle["entry"][1:4],
        put_if(urls["report"], fixed_report),
        put_if(urls["hb"], fixed_hb),
    )
    response = send(hospital_a, correction)
    assert response.status_code == 200, response.text
    *matched, report_entry, hb_entry = response.json()["entry"]
    assert [location_id(e) for e in matched] == [location_id(e) for e in created["entry"][1:4]]
    assert hb_entry["response"]["status"].startswith("200")
    assert hb_entry["response"]["location"] == f"{hb_ref}/_history/2"
    assert report_entry["response"]["location"] == f"{report_ref}/_history/2"

    current = hospital_a.get(f"/{hb_ref}").json()
    assert current["status"] == "amended"
    assert current["valueQuantity"]["value"] == 12.1
    assert current["meta"]["versionId"] == "2"
    assert hospital_a.get(f"/{hb_ref}/_history/1").json()["valueQuantity"]["value"] == 13.2
    assert len(search(hospital_a, "Observation", hb["identifier"][0])) == 1
    stored_report = hospital_a.get(f"/{report_ref}").json()
    assert stored_report["result"] == [{"reference": hb_ref}]


def test_conditional_put_without_a_match_creates_and_resolves_its_urn(hospital_a: Client) -> None:
    """A conditional PUT matching nothing creates (201); references to its urn:uuid reach it."""
    org = hospital_a.organization
    pid = hospital_a.post("/Patient", json=patient(org)).json()["id"]
    result_urn = urn()
    result = observation(org, pid, identifier=[ident(org, "result", unique())])
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "58410-2"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "performer": [{"reference": f"Organization/{org}"}],
        "result": [{"reference": result_urn}],
    }
    response = send(hospital_a, transaction(post(urn(), report), put_if(result_urn, result)))
    assert response.status_code == 200, response.text
    report_entry, result_entry = response.json()["entry"]
    assert result_entry["response"]["status"].startswith("201")
    stored = hospital_a.get(f"/{location_id(report_entry)}").json()
    assert stored["result"] == [{"reference": location_id(result_entry)}]
    assert len(search(hospital_a, "Observation", result["identifier"][0])) == 1


# -- transaction: atomicity ------------------------------------------------------------------------


def _nothing_stored(client: Client, bundle: dict[str, Any]) -> None:
    for item in bundle["entry"]:
        resource = item.get("resource") or {}
        if resource.get("identifier"):
            found = search(client, resource["resourceType"], resource["identifier"][0])
            assert found == [], f"{resource['resourceType']} was stored"


def test_invalid_entry_rolls_back_the_whole_transaction(hospital_a: Client) -> None:
    """An invalid resource fails the transaction with 422 naming its entry; nothing is kept."""
    org = hospital_a.organization
    bundle, _ = lab_result(org, unique(), unique())
    bundle["entry"][5]["resource"]["status"] = "not-a-status"
    assert_rolled_back(send(hospital_a, bundle), 5, 422)
    _nothing_stored(hospital_a, bundle)


def test_reference_to_a_missing_resource_rolls_back(hospital_a: Client) -> None:
    """A reference to Patient/does-not-exist fails the transaction and names the entry."""
    org = hospital_a.organization
    bundle, _ = lab_result(org, unique(), unique())
    bundle["entry"][4]["resource"]["subject"] = {"reference": "Patient/does-not-exist"}
    response = send(hospital_a, bundle)
    assert_rolled_back(response, 4, 422)
    assert "Patient/does-not-exist" in response.text
    _nothing_stored(hospital_a, bundle)


def test_unresolved_urn_rolls_back(hospital_a: Client) -> None:
    """A urn:uuid reference no entry declares fails the transaction; nothing is kept."""
    org = hospital_a.organization
    bundle, _ = lab_result(org, unique(), unique())
    dangling = urn()
    bundle["entry"][6]["resource"]["result"].append({"reference": dangling})
    response = send(hospital_a, bundle)
    assert_rolled_back(response, 6, 422)
    assert dangling in response.text
    _nothing_stored(hospital_a, bundle)


def test_stale_if_match_in_a_transaction_returns_412_and_stores_nothing(
    hospital_a: Client,
) -> None:
    """A PUT entry whose ifMatch names an old version fails the transaction with 412."""
    org = hospital_a.organization
    current = hospital_a.post("/Patient", json=patient(org)).json()
    pid = current["id"]
    assert hospital_a.put(f"/Patient/{pid}", json={**current, "gender": "male"}).status_code == 200
    result = observation(org, pid, identifier=[ident(org, "result", unique())])
    bundle = transaction(
        post(urn(), result),
        {
            "resource": {**current, "gender": "other"},
            "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'},
        },
    )
    assert_rolled_back(send(hospital_a, bundle), 1, 412)
    assert search(hospital_a, "Observation", result["identifier"][0]) == []
    now = hospital_a.get(f"/Patient/{pid}").json()
    assert (now["gender"], now["meta"]["versionId"]) == ("male", "2")


def test_hospital_cannot_write_for_another_hospital_inside_a_transaction(
    hospital_a: Client, hospital_b: Client
) -> None:
    """Hospital A naming hospital B as performer inside a transaction gets 403; nothing stored."""
    org = hospital_a.organization
    patient_urn = urn()
    bundle = transaction(
        post(patient_urn, patient(org)),
        post(
            urn(),
            observation(
                hospital_b.organization,
                "x",
                subject={"reference": patient_urn},
                identifier=[ident(org, "result", unique())],
            ),
        ),
    )
    assert_rolled_back(send(hospital_a, bundle), 1, 403)
    _nothing_stored(hospital_a, bundle)


# -- transaction: DELETE, GET and processing order -----------------------------------------------


def test_transaction_processes_delete_then_post_then_get(hospital_a: Client) -> None:
    """Entries run DELETE, POST, PUT, GET whatever their order; responses keep entry order."""
    org = hospital_a.organization
    pid = hospital_a.post("/Patient", json=patient(org)).json()["id"]
    old = hospital_a.post("/Observation", json=observation(org, pid, value=9.9)).json()["id"]
    fresh = observation(org, pid, value=14.0, identifier=[ident(org, "result", unique())])
    bundle = transaction(
        {"request": {"method": "GET", "url": f"Observation?subject=Patient/{pid}"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        post(urn(), fresh),
        {"request": {"method": "DELETE", "url": f"Observation/{old}"}},
    )
    response = send(hospital_a, bundle)
    assert response.status_code == 200, response.text
    found, read, created, deleted = response.json()["entry"]

    assert deleted["response"]["status"].startswith("204")
    assert created["response"]["status"].startswith("201")
    new_id = location_id(created).split("/")[1]
    assert found["response"]["status"].startswith("200")
    assert found["resource"]["type"] == "searchset"
    assert [e["resource"]["id"] for e in found["resource"]["entry"]] == [new_id]
    assert read["resource"]["resourceType"] == "Patient" and read["resource"]["id"] == pid
    assert hospital_a.get(f"/Observation/{old}").status_code == 410


def test_failed_transaction_undoes_its_delete(hospital_a: Client) -> None:
    """A DELETE entry is rolled back when a later entry fails."""
    org = hospital_a.organization
    pid = hospital_a.post("/Patient", json=patient(org)).json()["id"]
    old = hospital_a.post("/Observation", json=observation(org, pid)).json()["id"]
    bundle = transaction(
        {"request": {"method": "DELETE", "url": f"Observation/{old}"}},
        post(urn(), observation(org, pid, status="bogus")),
    )
    assert_rolled_back(send(hospital_a, bundle), 1, 422)
    assert hospital_a.get(f"/Observation/{old}").status_code == 200


# -- batch --------------------------------------------------------------------------------------


def test_batch_reports_each_entry_and_keeps_the_successes(hospital_a: Client) -> None:
    """In a batch one failing entry does not stop the others; each gets its own status."""
    org = hospital_a.organization
    pid = hospital_a.post("/Patient", json=patient(org)).json()["id"]
    good = observation(org, pid, identifier=[ident(org, "result", unique())])
    bad = observation(org, pid, status="bogus", identifier=[ident(org, "result", unique())])
    other = patient(org)
    bundle = transaction(
        post(urn(), good),
        post(urn(), bad),
        post(urn(), other),
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        kind="batch",
    )
    response = send(hospital_a, bundle)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "batch-response"
    statuses = [e["response"]["status"].split()[0] for e in body["entry"]]
    assert statuses == ["201", "422", "201", "404"]
    assert body["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert len(search(hospital_a, "Observation", good["identifier"][0])) == 1
    assert search(hospital_a, "Observation", bad["identifier"][0]) == []
    assert len(search(hospital_a, "Patient", other["identifier"][0])) == 1


# -- malformed bundles ---------------------------------------------------------------------------


def test_base_accepts_only_batch_or_transaction_bundles(hospital_a: Client) -> None:
    """POST to the base with a non-Bundle or a collection Bundle is a 400."""
    org = hospital_a.organization
    for body in (patient(org), transaction(post(urn(), patient(org)), kind="collection")):
        response = send(hospital_a, body)
        assert response.status_code == 400, response.text
        assert response.json()["resourceType"] == "OperationOutcome"


def test_entry_without_request_is_a_400(hospital_a: Client) -> None:
    """A transaction entry without request (method and url) is rejected whole with 400."""
    org = hospital_a.organization
    lone = patient(org)
    bundle = transaction(post(urn(), patient(org)), {"fullUrl": urn(), "resource": lone})
    assert_rolled_back(send(hospital_a, bundle), 1, 400)
    _nothing_stored(hospital_a, bundle)


def test_duplicate_full_urls_are_rejected(hospital_a: Client) -> None:
    """Two entries with the same fullUrl make references ambiguous: 400, nothing stored."""
    org = hospital_a.organization
    same = urn()
    bundle = transaction(post(same, patient(org)), post(same, patient(org)))
    assert_rolled_back(send(hospital_a, bundle), 1, 400)
    _nothing_stored(hospital_a, bundle)


def test_malformed_entry_requests_are_400_not_500(hospital_a: Client) -> None:
    """Wrongly typed request elements are a 400 OperationOutcome, never a server error."""
    resource = patient(hospital_a.organization)
    for request in (
        "POST Patient",
        {"method": ["POST"], "url": "Patient"},
        {"method": "POST", "url": 5},
        {"method": "POST", "url": "Patient", "ifNoneExist": 5},
        {"method": "PUT", "url": "Patient/x", "ifMatch": {"v": 1}},
        {"method": "PATCHY", "url": "Patient"},
    ):
        bundle = transaction({"fullUrl": urn(), "resource": resource, "request": request})
        response = send(hospital_a, bundle)
        assert response.status_code == 400, (request, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    for body in (transaction("not an entry"), {**transaction(), "entry": {"a": 1}}):
        assert send(hospital_a, body).status_code == 400


def _patient_id(client: Client) -> str:
    created = client.post("/Patient", json=patient(client.organization, unique()))
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def test_two_conditional_updates_with_one_url_are_refused_not_duplicated(
    hospital_a: Client,
) -> None:
    pid = _patient_id(hospital_a)
    system, value = "https://yijian.example/result", unique()
    url = f"Observation?identifier={system}|{value}"
    body = {
        **observation(hospital_a.organization, pid),
        "identifier": [{"system": system, "value": value}],
    }
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": body,
                "request": {"method": "PUT", "url": url},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": body,
                "request": {"method": "PUT", "url": url},
            },
        ],
    }
    answer = hospital_a.post("", json=bundle)
    assert answer.status_code == 400, answer.text
    assert "same conditional URL" in answer.text
    found = hospital_a.get("/Observation", params={"identifier": f"{system}|{value}"}).json()
    assert found.get("total", 0) == 0 and not found.get("entry")


def test_a_conditional_update_and_a_put_of_the_same_resource_are_refused(
    hospital_a: Client,
) -> None:
    pid = _patient_id(hospital_a)
    system, value = "https://yijian.example/result", unique()
    body = {
        **observation(hospital_a.organization, pid),
        "identifier": [{"system": system, "value": value}],
    }
    created = hospital_a.post("/Observation", json=body)
    oid = created.json()["id"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {**body, "valueQuantity": {"value": 1}},
                "request": {"method": "PUT", "url": f"Observation?identifier={system}|{value}"},
            },
            {
                "resource": {**body, "id": oid},
                "request": {"method": "PUT", "url": f"Observation/{oid}"},
            },
        ],
    }
    answer = hospital_a.post("", json=bundle)
    assert answer.status_code == 400, answer.text  # not a 503 "retry" that never succeeds
    assert f"Observation/{oid}" in answer.text
    assert hospital_a.get(f"/Observation/{oid}").json()["meta"]["versionId"] == "1"
