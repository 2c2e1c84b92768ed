"""FHIR REST interactions through HTTP: create, read, vread, update, delete, history."""

from __future__ import annotations

from tests.conftest import Client, HubUnderTest, observation, patient, unique


def test_create_read_update_delete_keeps_every_version(hospital_a: Client) -> None:
    created = hospital_a.post("/Patient", json=patient(hospital_a.organization))
    assert created.status_code == 201, created.text
    body = created.json()
    pid = body["id"]
    assert body["meta"]["versionId"] == "1"
    assert created.headers["ETag"] == 'W/"1"'
    assert created.headers["Location"].endswith(f"/Patient/{pid}/_history/1")

    read = hospital_a.get(f"/Patient/{pid}")
    assert read.status_code == 200
    assert read.json()["name"][0]["text"] == "王芳"
    assert read.headers["content-type"].startswith("application/fhir+json")

    changed = {**read.json(), "gender": "male"}
    updated = hospital_a.put(f"/Patient/{pid}", json=changed, headers={"If-Match": 'W/"1"'})
    assert updated.status_code == 200, updated.text
    assert updated.json()["meta"]["versionId"] == "2"

    stale = hospital_a.put(f"/Patient/{pid}", json=changed, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json()["resourceType"] == "OperationOutcome"

    assert hospital_a.get(f"/Patient/{pid}/_history/1").json()["gender"] == "female"
    assert hospital_a.get(f"/Patient/{pid}/_history/2").json()["gender"] == "male"
    assert hospital_a.get(f"/Patient/{pid}/_history/9").status_code == 404

    assert hospital_a.delete(f"/Patient/{pid}").status_code == 204
    assert hospital_a.get(f"/Patient/{pid}").status_code == 410
    assert hospital_a.delete(f"/Patient/{pid}").status_code == 204  # idempotent

    history = hospital_a.get(f"/Patient/{pid}/_history").json()
    assert history["type"] == "history"
    methods = [e["request"]["method"] for e in history["entry"]]
    assert methods == ["DELETE", "PUT", "POST"]  # newest first
    assert "resource" not in history["entry"][0]


def test_type_history_lists_versions_of_that_type(hospital_a: Client) -> None:
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    history = hospital_a.get("/Patient/_history", params={"_count": 500}).json()
    urls = {e["fullUrl"].rsplit("/", 2)[-2:][1] for e in history["entry"]}
    assert pid in urls
    assert all(e["fullUrl"].split("/")[-2] == "Patient" for e in history["entry"])


def test_update_as_create_with_client_id(hospital_a: Client) -> None:
    pid = f"his-{unique()}"
    response = hospital_a.put(
        f"/Patient/{pid}", json={**patient(hospital_a.organization), "id": pid}
    )
    assert response.status_code == 201, response.text
    assert hospital_a.get(f"/Patient/{pid}").json()["id"] == pid


def test_conditional_create_is_idempotent(hospital_a: Client) -> None:
    mrn = unique()
    body = patient(hospital_a.organization, mrn)
    condition = {
        "If-None-Exist": f"identifier=https://yijian.example/mrn/{hospital_a.organization}|{mrn}"
    }
    first = hospital_a.post("/Patient", json=body, headers=condition)
    again = hospital_a.post("/Patient", json=body, headers=condition)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


def test_conditional_update_creates_then_versions(hospital_a: Client) -> None:
    mrn = unique()
    system = f"https://yijian.example/mrn/{hospital_a.organization}"
    body = patient(hospital_a.organization, mrn)
    first = hospital_a.put("/Patient", params={"identifier": f"{system}|{mrn}"}, json=body)
    assert first.status_code == 201, first.text
    second = hospital_a.put(
        "/Patient", params={"identifier": f"{system}|{mrn}"}, json={**body, "gender": "male"}
    )
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["meta"]["versionId"] == "2"


def test_prefer_return_minimal(hospital_a: Client) -> None:
    response = hospital_a.post(
        "/Patient", json=patient(hospital_a.organization), headers={"Prefer": "return=minimal"}
    )
    assert response.status_code == 201
    assert response.content == b""
    assert "/Patient/" in response.headers["Location"]


def test_pretty_output(hospital_a: Client) -> None:
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    text = hospital_a.get(f"/Patient/{pid}", params={"_pretty": "true"}).text
    assert "\n  " in text


def test_capability_statement_lists_exactly_what_is_served(hub: HubUnderTest) -> None:
    import httpx

    statement = httpx.get(f"{hub.fhir}/metadata").json()
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert len(resources) == 15
    observation_params = {p["name"] for p in resources["Observation"]["searchParam"]}
    assert {
        "code",
        "subject",
        "patient",
        "date",
        "category",
        "status",
        "performer",
        "based-on",
        "encounter",
        "identifier",
        "_id",
        "_lastUpdated",
    } <= observation_params
    assert {"modality", "started"} <= {p["name"] for p in resources["ImagingStudy"]["searchParam"]}
    audit_interactions = {i["code"] for i in resources["AuditEvent"]["interaction"]}
    assert "create" not in audit_interactions and "update" not in audit_interactions
    assert resources["Patient"]["operation"][0]["name"] == "everything"


def test_observation_links_to_its_patient_and_needs_it_to_exist(hospital_a: Client) -> None:
    org = hospital_a.organization
    pid = hospital_a.post("/Patient", json=patient(org)).json()["id"]
    ok = hospital_a.post("/Observation", json=observation(org, pid))
    assert ok.status_code == 201, ok.text
    dangling = hospital_a.post("/Observation", json=observation(org, "no-such-patient"))
    assert dangling.status_code == 422
    assert "Patient/no-such-patient" in dangling.text


def test_concurrent_updates_each_get_their_own_version(
    hub: HubUnderTest, hospital_a: Client
) -> None:
    """Concurrent PUTs never lose a version: N writers produce versions 2..N+1."""
    import concurrent.futures

    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    body = hospital_a.get(f"/Patient/{pid}").json()
    headers = dict(hospital_a.http.headers)

    def put(index: int) -> int:
        import httpx

        changed = {**body, "name": [{"text": f"name {index}"}]}
        response = httpx.put(f"{hub.fhir}/Patient/{pid}", json=changed, headers=headers)
        assert response.status_code in (200, 409), response.text
        return response.status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(put, range(8)))
    ok = statuses.count(200)
    assert ok >= 6  # a 409 only after repeated lost races, which is rare
    history = hospital_a.get(f"/Patient/{pid}/_history").json()["entry"]
    assert sorted(int(e["response"]["etag"][3:-1]) for e in history) == list(range(1, ok + 2))


def test_concurrent_if_match_lets_exactly_one_writer_win(
    hub: HubUnderTest, hospital_a: Client
) -> None:
    """With If-Match on the same version, one PUT succeeds and the rest get 412."""
    import concurrent.futures

    import httpx

    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    body = hospital_a.get(f"/Patient/{pid}").json()
    headers = {**hospital_a.http.headers, "If-Match": 'W/"1"'}

    def put(index: int) -> int:
        changed = {**body, "name": [{"text": f"name {index}"}]}
        return httpx.put(f"{hub.fhir}/Patient/{pid}", json=changed, headers=headers).status_code

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(put, range(6)))
    assert statuses.count(200) == 1
    assert statuses.count(412) == 5


def test_read_with_if_none_match_returns_304(hospital_a: Client) -> None:
    """Conditional read (not-match): the current ETag gives 304 Not Modified, an old one 200."""
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    assert hospital_a.get(f"/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert hospital_a.get(f"/Patient/{pid}", headers={"If-None-Match": 'W/"0"'}).status_code == 200
