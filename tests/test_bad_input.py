"""Bad input is answered with a FHIR OperationOutcome and the right 4xx status, never a 500.

Pins: malformed or non-object JSON → 400; a resourceType that does not match the URL → 400;
an unknown type → 404; an invalid element → 422 naming it in ``issue.expression``; a
transaction with a dangling reference is refused and stores nothing; an oversized body, with
or without Content-Length, → 413 while the server keeps serving; GBK or otherwise invalid
UTF-8 → 400; XML → 415; SQL-looking and malformed search parameters, NUL characters and
absurd ids are handled as data. No response has status 500 or contains a stack trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import MAX_BODY, Client, HubUnderTest, observation, patient, unique


def _outcome(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, f"{response.status_code}: {response.text[:500]}"
    assert "Traceback" not in response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome", body
    assert body["issue"][0]["severity"] in ("error", "fatal")
    return body


def _not_a_crash(response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    assert "Traceback" not in response.text
    assert 'File "' not in response.text


def _base(client: Client) -> str:
    """The FHIR base itself (``/fhir``, without the trailing slash httpx would add)."""
    return str(client.http.base_url).rstrip("/")


def _post_raw(client: Client, url: str, body: bytes, content_type: str) -> httpx.Response:
    return client.post(url, content=body, headers={"Content-Type": content_type})


# -- JSON ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"resourceType": "Patient",',
        b"{'resourceType': 'Patient'}",
        b'{"resourceType": "Patient"} trailing',
        b"",
        b"   ",
        b"null",
        b"[" * 100_000,
        b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
    ],
    ids=["truncated", "single-quotes", "trailing", "empty", "blank", "null", "deep-array", "deep"],
)
def test_malformed_json_is_400(hospital_a: Client, body: bytes) -> None:
    _outcome(_post_raw(hospital_a, "/Patient", body, "application/fhir+json"), 400)


@pytest.mark.parametrize("body", [[], [patient("x")], "Patient", 42, True])
def test_json_that_is_not_an_object_is_400(hospital_a: Client, body: Any) -> None:
    _outcome(hospital_a.post("/Patient", json=body), 400)
    _outcome(hospital_a.post(_base(hospital_a), json=body), 400)


def test_malformed_json_on_update_and_transaction(hospital_a: Client) -> None:
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    response = hospital_a.put(f"/Patient/{pid}", content=b'{"id": ', headers={})
    _outcome(response, 400)
    _outcome(
        _post_raw(
            hospital_a,
            _base(hospital_a),
            b'{"resourceType": "Bundle", "type": ',
            "application/json",
        ),
        400,
    )
    _outcome(
        hospital_a.post(_base(hospital_a), json={"resourceType": "Bundle", "type": "collection"}),
        400,
    )
    _outcome(hospital_a.post(_base(hospital_a), json={"resourceType": "Patient"}), 400)


def test_wrong_resource_type_for_the_url_is_400(hospital_a: Client) -> None:
    org = hospital_a.organization
    pid = hospital_a.post("/Patient", json=patient(org)).json()["id"]
    _outcome(hospital_a.post("/Patient", json=observation(org, pid)), 400)
    _outcome(hospital_a.post("/Observation", json=patient(org)), 400)
    as_observation = {**observation(org, pid), "id": pid}
    _outcome(hospital_a.put(f"/Patient/{pid}", json=as_observation), 400)
    without = patient(org)
    del without["resourceType"]
    _outcome(hospital_a.post("/Patient", json=without), 400)
    assert hospital_a.get(f"/Patient/{pid}").json()["resourceType"] == "Patient"


def test_update_with_mismatched_id_is_400(hospital_a: Client) -> None:
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    body = {**patient(hospital_a.organization), "id": "some-other-id"}
    _outcome(hospital_a.put(f"/Patient/{pid}", json=body), 400)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/Foo"),
        ("POST", "/Foo"),
        ("GET", "/Foo/1"),
        ("PUT", "/Foo/1"),
        ("DELETE", "/Foo/1"),
        ("GET", "/Foo/1/_history"),
        ("GET", "/Foo/1/_history/1"),
        ("PUT", "/Foo?identifier=x"),
        ("POST", "/Foo/_search"),
        ("GET", "/patient"),
        ("POST", "/patient"),
        ("GET", "/Patient2/x"),
    ],
)
def test_unknown_type_is_404(hospital_a: Client, method: str, path: str) -> None:
    body = {"resourceType": path.split("/")[1].split("?")[0], "id": "1"}
    response = hospital_a.http.request(
        method, path, json=body if method in ("POST", "PUT") else None
    )
    _outcome(response, 404)


def test_unknown_endpoint_is_a_404_outcome(hub: HubUnderTest) -> None:
    _outcome(httpx.get(f"{hub.base_url}/no/such/endpoint"), 404)
    _not_a_crash(httpx.request("PATCH", f"{hub.fhir}/metadata"))


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ({"birthDate": "1990-13-45"}, "Patient.birthDate"),
        ({"birthDate": "not a date"}, "Patient.birthDate"),
        ({"favouriteColour": "blue"}, "Patient.favouriteColour"),
        ({"gender": "bogus"}, "Patient.gender"),
        ({"gender": 5}, "Patient.gender"),
        ({"active": "yes please"}, "Patient.active"),
        ({"name": "王芳"}, "Patient.name"),
        ({"id": "bad id with spaces"}, "Patient.id"),
    ],
)
def test_invalid_patient_element_is_422_naming_it(
    hospital_a: Client, change: dict[str, Any], element: str
) -> None:
    body = {**patient(hospital_a.organization), **change}
    outcome = _outcome(hospital_a.post("/Patient", json=body), 422)
    expressions = [e for issue in outcome["issue"] for e in issue.get("expression", [])]
    assert any(e.startswith(element) for e in expressions), expressions


@pytest.mark.parametrize(
    ("change", "element"),
    [
        ({"status": "bogus"}, "Observation.status"),
        ({"valueQuantity": {"value": "thirteen"}}, "Observation.valueQuantity"),
        ({"effectiveDateTime": "2026-02-30T09:00:00+08:00"}, "Observation.effectiveDateTime"),
        ({"code": None}, "Observation.code"),
    ],
)
def test_invalid_observation_element_is_422_naming_it(
    hospital_a: Client, change: dict[str, Any], element: str
) -> None:
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    body = {**observation(hospital_a.organization, pid), **change}
    body = {k: v for k, v in body.items() if v is not None}
    outcome = _outcome(hospital_a.post("/Observation", json=body), 422)
    expressions = [e for issue in outcome["issue"] for e in issue.get("expression", [])]
    assert any(e.startswith(element) for e in expressions), expressions


def test_nul_in_token_request(hub: HubUnderTest, hospital_a: Client) -> None:
    for client_id, secret in (("a\x00b", "x"), (hospital_a.client_id, "x\x00y")):
        response = hub.token(client_id, secret)
        assert response.status_code in (400, 401), response.text
        assert "access_token" not in response.text
    assert hub.token(hospital_a.client_id, hospital_a.secret).status_code == 200


def test_nul_and_lone_surrogates_in_strings(hospital_a: Client) -> None:
    for text in ("王\u0000芳", "\ud800", "a\\u0000b"):
        body = json.dumps({**patient(hospital_a.organization), "name": [{"text": text}]})
        response = _post_raw(hospital_a, "/Patient", body.encode(), "application/fhir+json")
        _not_a_crash(response)
        if response.status_code == 201:
            assert hospital_a.get(f"/Patient/{response.json()['id']}").status_code == 200


# -- transactions ----------------------------------------------------------------------------------


def _transaction(org: str, mrn: str, second_subject: str) -> dict[str, Any]:
    first = patient(org, mrn)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:6f4f5f9e-2d1c-4d43-9d6b-9a3c1e1f0a01",
                "resource": first,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:6f4f5f9e-2d1c-4d43-9d6b-9a3c1e1f0a02",
                "resource": {
                    **observation(org, "placeholder"),
                    "subject": {"reference": second_subject},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }


@pytest.mark.parametrize(
    "subject",
    [
        "urn:uuid:0b5b0d2c-0000-4000-8000-00000000dead",
        "Patient/does-not-exist",
        "Patient/",
        "urn:uuid:",
        "Organization/does-not-exist",
    ],
)
def test_transaction_with_a_bad_reference_stores_nothing(hospital_a: Client, subject: str) -> None:
    org = hospital_a.organization
    mrn = unique()
    response = hospital_a.post(_base(hospital_a), json=_transaction(org, mrn, subject))
    _not_a_crash(response)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    found = hospital_a.get(
        "/Patient", params={"identifier": f"https://yijian.example/mrn/{org}|{mrn}"}
    ).json()
    assert found.get("entry", []) == [], "a refused transaction left its first entry behind"


def test_transaction_with_an_invalid_second_resource_stores_nothing(hospital_a: Client) -> None:
    org = hospital_a.organization
    mrn = unique()
    bundle = _transaction(org, mrn, "urn:uuid:6f4f5f9e-2d1c-4d43-9d6b-9a3c1e1f0a01")
    bundle["entry"][1]["resource"]["status"] = "bogus"
    _outcome(hospital_a.post(_base(hospital_a), json=bundle), 422)
    found = hospital_a.get(
        "/Patient", params={"identifier": f"https://yijian.example/mrn/{org}|{mrn}"}
    ).json()
    assert found.get("entry", []) == []
    good = _transaction(org, mrn, "urn:uuid:6f4f5f9e-2d1c-4d43-9d6b-9a3c1e1f0a01")
    assert (
        hospital_a.post(_base(hospital_a), json=good).status_code == 200
    )  # control: the valid one commits
    found = hospital_a.get(
        "/Patient", params={"identifier": f"https://yijian.example/mrn/{org}|{mrn}"}
    ).json()
    assert len(found["entry"]) == 1


@pytest.mark.parametrize(
    "entries",
    [
        "not a list",
        [None],
        [{"request": {"method": "POST"}}],
        [{"request": {"method": "TRACE", "url": "Patient"}}],
        [{"request": {"method": "POST", "url": "Patient"}, "resource": "not an object"}],
        [{"request": {"method": "POST", "url": "Foo"}, "resource": {"resourceType": "Foo"}}],
        [{"request": {"method": "GET", "url": "Patient?identifier=x"}}],
        [{"request": {"method": ["POST"], "url": {"x": 1}}}],
    ],
)
def test_malformed_bundle_entries(hospital_a: Client, entries: Any) -> None:
    for kind in ("transaction", "batch"):
        response = hospital_a.post(
            "", json={"resourceType": "Bundle", "type": kind, "entry": entries}
        )
        _not_a_crash(response)


# -- body size and encoding ------------------------------------------------------------------------


def _oversized() -> bytes:
    padding = "x" * (MAX_BODY + 64 * 1024)
    return json.dumps({"resourceType": "Patient", "text": {"div": padding}}).encode()


def test_oversized_body_with_content_length_is_413(hub: HubUnderTest, hospital_a: Client) -> None:
    body = _oversized()
    response = _post_raw(hospital_a, "/Patient", body, "application/fhir+json")
    _outcome(response, 413)
    assert response.json()["issue"][0]["code"] == "too-long"
    _outcome(_post_raw(hospital_a, _base(hospital_a), body, "application/fhir+json"), 413)
    assert hospital_a.get("/Patient", params={"_count": 1}).status_code == 200


def test_oversized_chunked_body_is_413(hub: HubUnderTest, hospital_a: Client) -> None:
    body = _oversized()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    with httpx.Client(base_url=hub.fhir, headers=dict(hospital_a.http.headers)) as http:
        request = http.build_request("POST", "/Patient", content=chunks())
        assert "content-length" not in request.headers
        assert request.headers["transfer-encoding"] == "chunked"
        response = http.send(request)
    _outcome(response, 413)
    small = json.dumps(patient(hospital_a.organization)).encode()
    with httpx.Client(base_url=hub.fhir, headers=dict(hospital_a.http.headers)) as http:
        fine = http.post("/Patient", content=iter([small[:10], small[10:]]))
    assert fine.status_code == 201, fine.text  # chunked bodies under the limit still work
    assert hospital_a.get("/Patient", params={"_count": 1}).status_code == 200


def test_body_just_under_the_limit_is_not_413(hospital_a: Client) -> None:
    body = json.dumps({"resourceType": "Patient", "bogusElement": "x" * (MAX_BODY // 2)})
    _outcome(_post_raw(hospital_a, "/Patient", body.encode(), "application/fhir+json"), 422)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (
            json.dumps(
                {"resourceType": "Patient", "name": [{"text": "王芳"}]}, ensure_ascii=False
            ).encode("gbk"),
            "application/fhir+json",
        ),
        (
            json.dumps(
                {"resourceType": "Patient", "name": [{"text": "王芳"}]}, ensure_ascii=False
            ).encode("gbk"),
            "application/fhir+json; charset=gbk",
        ),
        (b'{"resourceType": "Patient", "name": [{"text": "\xff\xfe\xc0"}]}', "application/json"),
        (b"\xef\xbb\xbf\xff", "application/fhir+json"),
        ('{"resourceType": "Patient"}'.encode("utf-16"), "application/fhir+json"),
    ],
    ids=["gbk", "gbk-declared", "invalid-utf8", "bom-garbage", "utf16"],
)
def test_body_that_is_not_utf8_is_400(hospital_a: Client, body: bytes, content_type: str) -> None:
    _outcome(_post_raw(hospital_a, "/Patient", body, content_type), 400)
    _outcome(_post_raw(hospital_a, _base(hospital_a), body, content_type), 400)


@pytest.mark.parametrize(
    "content_type",
    ["application/fhir+xml", "application/xml", "text/xml", "text/plain", "multipart/form-data"],
)
def test_non_json_content_type_is_415(hospital_a: Client, content_type: str) -> None:
    body = b'<Patient xmlns="http://hl7.org/fhir"><gender value="female"/></Patient>'
    _outcome(_post_raw(hospital_a, "/Patient", body, content_type), 415)
    pid = hospital_a.post("/Patient", json=patient(hospital_a.organization)).json()["id"]
    response = hospital_a.put(
        f"/Patient/{pid}", content=body, headers={"Content-Type": content_type}
    )
    _outcome(response, 415)


# -- search parameters and URLs --------------------------------------------------------------------


SQL_LOOKING = [
    "' OR '1'='1",
    "'; DROP TABLE resource; --",
    "x'||pg_sleep(5)||'",
    "1) UNION SELECT content FROM resource_version --",
    "%",
    "_",
    "\\",
    '"',
    "$1",
]


@pytest.mark.parametrize("value", SQL_LOOKING)
def test_sql_looking_search_values_are_data(hospital_a: Client, value: str) -> None:
    for params in (
        {"name": value},
        {"identifier": value},
        {"identifier": f"{value}|{value}"},
        {"_id": value},
        {"birthdate": value},
        {"gender": value},
        {"general-practitioner": value},
        {"_lastUpdated": f"ge{value}"},
        {"identifier:missing": value},
        {"name:exact": value},
    ):
        response = hospital_a.get("/Patient", params=params)
        _not_a_crash(response)
        if response.status_code == 200:
            assert response.json().get("entry", []) == [] or value in ("%", "_")
    observations = hospital_a.get(
        "/Observation", params={"patient.identifier": value, "value-quantity": value}
    )
    _not_a_crash(observations)
    assert hospital_a.get("/Patient", params={"_count": 1}).status_code == 200


def test_like_wildcards_do_not_match_everything(hospital_a: Client) -> None:
    marker = f"通配{unique()}"
    hospital_a.post("/Patient", json=patient(hospital_a.organization, name=[{"family": marker}]))
    for value in ("%", "_", "%%"):
        found = hospital_a.get("/Patient", params={"name": value, "_count": 1000})
        _not_a_crash(found)
        names = [
            n.get("family") for e in found.json().get("entry", []) for n in e["resource"]["name"]
        ]
        assert marker not in names


@pytest.mark.parametrize(
    "params",
    [
        {"_count": "abc"},
        {"_count": "-1"},
        {"_count": "99999999999999999999"},
        {"_sort": "name; DROP TABLE resource"},
        {"_sort": "-nonexistent"},
        {"_include": "Foo:bar"},
        {"_include": "Observation"},
        {"_revinclude": "*"},
        {"_cursor": "garbage"},
        {"_cursor": "eyJhIjoxfQ"},
        {"_summary": "nonsense"},
        {"_elements": "'"},
        {"date": "ge2026-13-99"},
        {"date": "xx2026-01-01"},
        {"birthdate": "9999999999-01-01"},
        {"_lastUpdated": "lt"},
        {"value-quantity": "gt1e400"},
        {"value-quantity": "NaN"},
        {"subject": "Patient/" + "9" * 5000},
        {"subject:Patient.identifier": "|"},
        {"patient.identifier": "||||"},
        {"code": "http://loinc.org|"},
        {"code": "|"},
        {"name": "\u0000"},
        {"name": "a\u0000b"},
        {"identifier": "sys|\u0000"},
    ],
)
def test_malformed_search_parameters_are_not_500(
    hospital_a: Client, params: dict[str, str]
) -> None:
    for resource_type in ("Observation", "Patient"):
        _not_a_crash(hospital_a.get(f"/{resource_type}", params=params))
        _not_a_crash(hospital_a.post(f"/{resource_type}/_search", data=params))


def test_strict_handling_rejects_unknown_parameters(hospital_a: Client) -> None:
    response = hospital_a.get(
        "/Patient", params={"no-such-param": "x"}, headers={"Prefer": "handling=strict"}
    )
    _outcome(response, 400)


@pytest.mark.parametrize(
    "path",
    [
        "/Patient/' OR '1'='1",
        "/Patient/..%2F..%2Fetc%2Fpasswd",
        "/Patient/%00",
        "/Patient/%FF%FE",
        "/Patient/" + "a" * 5000,
        "/Patient/x/_history/abc",
        "/Patient/x/_history/-1",
        "/Patient/x/_history/99999999999999999999999",
        "/Patient/x/$everything?_count=abc&start=bogus",
        "/Patient?%FF=%FE",
        "/Patient?name=%FF%FE",
        "/Patient?_id=%00",
    ],
)
def test_odd_urls_are_not_500(hospital_a: Client, path: str) -> None:
    for method in ("GET", "DELETE"):
        response = hospital_a.http.request(method, path)
        _not_a_crash(response)
        if response.status_code >= 400:
            assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    "headers",
    [
        {"If-Match": "garbage"},
        {"If-Match": 'W/"abc"'},
        {"If-Match": 'W/"99999999999999999999999"'},
        {"If-None-Exist": "identifier="},
        {"If-None-Exist": "%%%"},
        {"If-None-Exist": "no-such-param=1"},
        {"Prefer": "return=nonsense, handling=whatever"},
        {"If-None-Match": "*"},
    ],
)
def test_odd_headers_are_not_500(hospital_a: Client, headers: dict[str, str]) -> None:
    body = patient(hospital_a.organization)
    created = hospital_a.post("/Patient", json=body, headers=headers)
    _not_a_crash(created)
    pid = hospital_a.post("/Patient", json=body).json()["id"]
    _not_a_crash(hospital_a.put(f"/Patient/{pid}", json={**body, "id": pid}, headers=headers))
    _not_a_crash(hospital_a.get(f"/Patient/{pid}", headers=headers))
