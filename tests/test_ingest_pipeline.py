"""The ingest pipeline end to end, through its real edges: ``yijian import`` and the other CLI
commands as subprocesses, ``POST /ingest/{feed}`` and the admin pages over HTTP, and what is
then stored, read back through the FHIR API.

Covered here: the sample messages of ``tests/messages`` (GBK and UTF-8, corrections, status
changes, the public NIST samples, the malformed ones), HTTP ingest of HL7 and of FHIR
transaction Bundles, dead letters (list, show, replay after fixing the feed, discard), and
imaging reports meeting their ImagingStudy by accession number in either order.
The background worker, drop folders and MLLP are in ``test_ingest_background.py``.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.access_support import order_for
from tests.conftest import YIJIAN, Client, HubUnderTest, observation, patient
from tests.ingest_support import ack_fields, wait_for
from tests.oru import Person, oru

MESSAGES = Path(__file__).parent / "messages"
CONCEPT_MAP = "fhir_profiles/conceptmaps/demo-lis.json"
HL7 = {"Content-Type": "x-application/hl7-v2+er7"}
FHIR = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
UNMAPPED = ("https://yijian-hub.org/fhir/CodeSystem/ingest", "unmapped-code")
RESIDENT_ID = "https://yijian-hub.org/fhir/sid/resident-id"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

SAMPLE_FEED = "syrmyy-lis"
SAMPLE_CODES = "https://yijian-hub.org/fhir/CodeSystem/test/syrmyy-lis"
NIST_FEED = "nist-elr"
HTTP_FEED = "h-a-http"
HTTP_CODES = "https://yijian-hub.org/fhir/CodeSystem/test/h-a-http"
FHIR_FEED = "h-a-fhir"
DL_FEED = "h-b-dl"

# Accepted by `yijian import`, in this order (a correction after its original, a
# cancellation after the preliminary result it cancels).
GOOD_SAMPLES = (
    "cbc_gbk.hl7",
    "correction.hl7",
    "chem_utf8.hl7",
    "mixed_types.hl7",
    "preliminary.hl7",
    "cancelled.hl7",
    "ris_report.hl7",
    "public/nist_elr_lead.hl7",
    "public/nist_elr_stool.hl7",
)


# -- helpers ---------------------------------------------------------------------------------


def org_system(org: str, kind: str) -> str:
    return f"https://yijian-hub.org/fhir/sid/org/{org}/{kind}"


def search(client: Client, resource_type: str, **query: str) -> list[dict[str, Any]]:
    response = client.get(f"/{resource_type}", params={"_count": "500", **query})
    assert response.status_code == 200, response.text
    return [
        e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"
    ]


def result(client: Client, org: str, key: str) -> dict[str, Any]:
    """The one Observation whose result identifier is ``{filler}:{code}:{sub-id}``."""
    found = search(client, "Observation", identifier=f"{org_system(org, 'result')}|{key}")
    assert len(found) == 1, f"{key}: {len(found)} Observations"
    return found[0]


def report(client: Client, org: str, filler: str) -> dict[str, Any]:
    found = search(client, "DiagnosticReport", identifier=f"{org_system(org, 'filler')}|{filler}")
    assert len(found) == 1, f"{filler}: {len(found)} DiagnosticReports"
    return found[0]


def history(client: Client, resource: dict[str, Any]) -> list[dict[str, Any]]:
    bundle = client.get(f"/{resource['resourceType']}/{resource['id']}/_history").json()
    return [e["resource"] for e in bundle["entry"]]  # newest first


def tags(resource: dict[str, Any]) -> set[tuple[str, str]]:
    return {(t["system"], t["code"]) for t in resource.get("meta", {}).get("tag", [])}


def flags(resource: dict[str, Any]) -> list[str]:
    return [
        c["code"]
        for concept in resource.get("interpretation", [])
        for c in concept.get("coding", [])
        if c["system"] == INTERPRETATION
    ]


def post_ingest(hub: HubUnderTest, client: Client, feed: str, body: bytes, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    return client.http.post(f"{hub.base_url}/ingest/{feed}", content=body, headers=headers)


def admin_get(hub: HubUnderTest, admin: Client, path: str, **params: str) -> Any:
    response = admin.http.get(hub.base_url + path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_feed(hub: HubUnderTest, admin: Client, feed: str) -> None:
    """Feed files are re-read by a running hub within ~2 s."""
    assert wait_for(
        lambda: feed in {f["feed"] for f in admin_get(hub, admin, "/admin/feeds")["feeds"]},
        timeout=15,
    ), f"the hub never saw feed {feed}"


def control() -> str:
    return "T" + uuid.uuid4().hex[:16]


def someone(**overrides: Any) -> Person:
    fields = {
        "mrn": "M" + uuid.uuid4().hex[:8],
        "name": "赵敏",
        "gender": "F",
        "birth": "19880412",
        "resident_id": "",
        "phone": "13905710002",
    }
    return Person(**{**fields, **overrides})


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples(hub: HubUnderTest, admin: Client) -> dict[str, Any]:
    """The sample hospital SYRMYY as a GBK feed file with the demo code map, the NIST
    facility as a feed registered by the CLI, and every good sample loaded by `yijian import`."""
    (hub.adapters_dir / f"{SAMPLE_FEED}.yaml").write_text(
        yaml.safe_dump(
            {
                "feed": SAMPLE_FEED,
                "organization": hub.org_a,
                "name": "沈阳市人民医院 LIS/RIS",
                "sending_facility": "SYRMYY",
                "encoding": "gbk",
                "code_system": SAMPLE_CODES,
                "identifiers": {"SYRMYY": "mrn", "SFZ": "resident-id", "MZ": "outpatient"},
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    hub.cli(
        "feeds", "add", "--organization", hub.org_b, "--sending-facility", "EHR Facility",
        "--feed", NIST_FEED, "--authority", "MPI=mrn",
    )  # fmt: skip
    mapped = hub.cli("codes", "import", SAMPLE_FEED, CONCEPT_MAP)
    assert "mappings added or changed" in mapped.stdout
    imported = hub.cli("import", *(str(MESSAGES / name) for name in GOOD_SAMPLES), check=False)
    # The v2.3 message has no MSH-4: it names its feed.
    minimal = hub.cli(
        "import", "--feed", SAMPLE_FEED, str(MESSAGES / "v23_minimal.hl7"), check=False
    )
    wait_for_feed(hub, admin, SAMPLE_FEED)
    return {"import": imported, "minimal": minimal}


# -- 1. the sample messages ------------------------------------------------------------------


def test_import_of_the_samples_accepts_every_good_message(samples: dict[str, Any]) -> None:
    imported, minimal = samples["import"], samples["minimal"]
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert f"{len(GOOD_SAMPLES)} messages accepted, 0 refused" in imported.stdout
    assert minimal.returncode == 0, minimal.stderr[-2000:]
    assert "1 messages accepted, 0 refused" in minimal.stdout


def test_gbk_cbc_names_units_ranges_and_flags(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    org = hub.org_a
    wbc = result(hospital_a, org, "XS20240305001:WBC:")
    assert wbc["code"]["coding"][0] == {
        "system": LOINC,
        "code": "6690-2",
        "display": "Leukocytes [#/volume] in Blood by Automated count",
    }
    assert wbc["code"]["coding"][1] == {
        "system": SAMPLE_CODES,
        "code": "WBC",
        "display": "白细胞计数",
    }
    assert wbc["code"]["text"] == "白细胞计数"  # GBK (no MSH-18: the feed's encoding)
    assert wbc["valueQuantity"] == {
        "value": 10.8,
        "unit": "10^9/L",
        "system": UCUM,
        "code": "10*9/L",
    }
    assert wbc["referenceRange"][0]["low"]["value"] == 3.5
    assert wbc["referenceRange"][0]["high"] == {
        "value": 9.5,
        "unit": "10^9/L",
        "system": UCUM,
        "code": "10*9/L",
    }
    assert flags(wbc) == ["H"]
    assert wbc["status"] == "final"
    assert wbc["performer"] == [{"reference": f"Organization/{org}"}]
    assert flags(result(hospital_a, org, "XS20240305001:LYMPH%:")) == ["L"]
    assert flags(result(hospital_a, org, "XS20240305001:NEUT#:")) == ["H"]  # sent as ↑
    assert flags(result(hospital_a, org, "XS20240305001:PCT:")) == ["L"]  # sent as ↓
    assert flags(result(hospital_a, org, "XS20240305001:MONO%:")) == []
    rbc = result(hospital_a, org, "XS20240305001:RBC:")
    assert rbc["valueQuantity"]["code"] == "10*12/L"
    # P-LCR is not in the demo map: stored anyway, local coding only, tagged.
    plcr = result(hospital_a, org, "XS20240305001:P-LCR:")
    assert [c["system"] for c in plcr["code"]["coding"]] == [SAMPLE_CODES]
    assert UNMAPPED in tags(plcr)
    assert UNMAPPED not in tags(wbc)

    subject = hospital_a.get(f"/{wbc['subject']['reference']}").json()
    assert subject["name"][0]["text"] == "王芳"
    assert {"system": RESIDENT_ID, "value": "330102198603140020"} in subject["identifier"]
    mrn = [i for i in subject["identifier"] if i["system"] == org_system(org, "mrn")]
    assert mrn[0]["value"] == "0001234567"
    cbc = report(hospital_a, org, "XS20240305001")
    assert cbc["code"]["text"] == "血常规"
    assert len(cbc["result"]) == 22


def test_a_correction_updates_the_same_observation(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    plt = result(hospital_a, hub.org_a, "XS20240305001:PLT:")
    assert plt["meta"]["versionId"] == "2"
    assert plt["status"] == "corrected"
    assert plt["valueQuantity"]["value"] == 102
    versions = history(hospital_a, plt)
    assert [(v["status"], v["valueQuantity"]["value"]) for v in versions] == [
        ("corrected", 102),
        ("final", 96),
    ]
    assert {v["id"] for v in versions} == {plt["id"]}
    # A result the correction resent unchanged keeps its version.
    assert result(hospital_a, hub.org_a, "XS20240305001:HGB:")["meta"]["versionId"] == "1"
    assert report(hospital_a, hub.org_a, "XS20240305001")["status"] == "corrected"


def test_utf8_chemistry_units_and_ranges(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    org = hub.org_a
    tbil = result(hospital_a, org, "SH20240305010:TBIL:")
    assert tbil["code"]["text"] == "总胆红素"
    assert tbil["valueQuantity"] == {
        "value": 18.6,
        "unit": "μmol/L",
        "system": UCUM,
        "code": "umol/L",
    }
    dbil = result(hospital_a, org, "SH20240305010:DBIL:")  # micro sign U+00B5, not μ
    assert dbil["valueQuantity"]["code"] == "umol/L"
    assert result(hospital_a, org, "SH20240305010:GGT:")["code"]["text"] == "γ-谷氨酰转移酶"
    assert flags(result(hospital_a, org, "SH20240305010:AST:")) == ["N"]
    egfr = result(hospital_a, org, "SH20240305011:EGFR:")
    assert egfr["referenceRange"][0]["low"]["value"] == 90
    assert "high" not in egfr["referenceRange"][0]
    glu = result(hospital_a, org, "SH20240305011:GLU:")
    assert (
        glu["referenceRange"][0]["low"]["value"],
        glu["referenceRange"][0]["high"]["value"],
    ) == (
        3.9,
        6.1,
    )  # written 3.9～6.1
    assert flags(glu) == ["H"]
    assert result(hospital_a, org, "SH20240305010:ALT:")["effectiveDateTime"].startswith(
        "2024-03-05T07:45:00+08:00"
    )
    patient = hospital_a.get(f"/{tbil['subject']['reference']}").json()
    assert patient["name"][0]["family"] == "张" and patient["name"][0]["given"] == ["伟"]
    assert len(report(hospital_a, org, "SH20240305010")["result"]) == 8
    assert len(report(hospital_a, org, "SH20240305011")["result"]) == 5


def test_mixed_value_types_notes_and_text(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    org = hub.org_a
    hbsag = result(hospital_a, org, "MY20240306020:HBsAg:")  # CWE
    assert hbsag["valueCodeableConcept"]["coding"][0]["code"] == "260385009"
    assert hbsag["valueCodeableConcept"]["text"] == "阴性"
    hcv = result(hospital_a, org, "MY20240306020:HCV:")  # CE
    assert hcv["valueCodeableConcept"]["text"] == "阴性"
    assert flags(hcv) == ["NEG"]
    hbsab = result(hospital_a, org, "MY20240306020:HBsAb:")  # SN >^1000
    assert hbsab["valueQuantity"]["comparator"] == ">"
    assert hbsab["valueQuantity"]["value"] == 1000
    assert hbsab["valueQuantity"]["code"] == "m[IU]/mL"
    tppa = result(hospital_a, org, "MY20240306020:TPPA:")  # SN ^1^:^40
    assert tppa["valueRatio"] == {"numerator": {"value": 1}, "denominator": {"value": 40}}
    assert flags(tppa) == ["POS"]
    urbc = result(hospital_a, org, "MY20240306020:U-RBC:")  # SN ^1^-^3
    assert (urbc["valueRange"]["low"]["value"], urbc["valueRange"]["high"]["value"]) == (1, 3)
    crp = result(hospital_a, org, "MY20240306020:CRP:")  # NM sent as <0.5
    assert crp["valueQuantity"]["comparator"] == "<"
    assert result(hospital_a, org, "MY20240306020:ABO:")["valueString"] == "A型"
    morph = result(hospital_a, org, "MY20240306020:MORPH:")  # FT with \.br\
    assert morph["valueString"] == "红细胞大小不等\n可见少量靶形红细胞\n血小板散在分布"
    comment = result(hospital_a, org, "MY20240306020:COMMENT:")  # TX repetitions
    assert comment["valueString"] == "第一行说明\n第二行说明"
    assert result(hospital_a, org, "MY20240306020:ESC:")["valueString"] == "A|B^C&D~E\\F"
    abo = result(hospital_a, org, "MY20240306020:ABO:")
    assert [n["text"] for n in abo["note"]] == ["已复核", "请结合临床"]  # NTE after the OBX
    panel = report(hospital_a, org, "MY20240306020")
    notes = [e["valueAnnotation"]["text"] for e in panel.get("extension", [])]
    assert notes == ["标本轻度溶血", "结果仅供临床参考"]  # NTE after the OBR
    assert len(panel["result"]) == 12
    person = hospital_a.get(f"/{abo['subject']['reference']}").json()
    assert person["name"][0]["text"] == "李娜"


def test_preliminary_then_cancelled(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    glu = result(hospital_a, hub.org_a, "SH20240307001:GLU:")
    assert glu["status"] == "cancelled"
    assert "valueQuantity" not in glu and "dataAbsentReason" not in glu
    assert glu["meta"]["versionId"] == "2"
    (first,) = [v for v in history(hospital_a, glu) if v["meta"]["versionId"] == "1"]
    assert first["status"] == "preliminary"
    assert first["valueQuantity"]["value"] == 5.4
    fasting = report(hospital_a, hub.org_a, "SH20240307001")
    assert fasting["status"] == "cancelled"
    assert [v["status"] for v in history(hospital_a, fasting)] == ["cancelled", "preliminary"]


def test_v23_minimal_message(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    glu = result(hospital_a, hub.org_a, "BB0001:GLU:")
    assert glu["code"]["text"] == "葡萄糖"
    assert glu["valueQuantity"]["unit"] == "mmol/l"
    assert glu["valueQuantity"]["code"] == "mmol/L"
    assert flags(result(hospital_a, hub.org_a, "BB0001:HbA1c:")) == ["H"]
    note = result(hospital_a, hub.org_a, "BB0001:NOTE:")
    assert note["valueString"] == "空腹"
    person = hospital_a.get(f"/{glu['subject']['reference']}").json()
    assert person["name"][0]["text"] == "刘洋"
    assert person["gender"] == "male"  # 男
    # PID-3 without an assigning authority: the hospital's MRN.
    assert {"system": org_system(hub.org_a, "mrn"), "value": "00098765"} in [
        {"system": i["system"], "value": i["value"]} for i in person["identifier"]
    ]


def test_public_nist_samples(
    hub: HubUnderTest, samples: dict[str, Any], hospital_b: Client
) -> None:
    lead = result(hospital_b, hub.org_b, "9700123:10368-9:1")
    assert lead["code"]["coding"][0]["system"] == LOINC
    assert lead["code"]["coding"][0]["code"] == "10368-9"
    assert lead["valueQuantity"]["value"] == 50
    assert lead["valueQuantity"]["code"] == "ug/dL"
    assert flags(lead) == ["H"]
    assert lead["effectiveDateTime"].startswith("2008-08-15T10:30:00-07:00")
    stool = [
        result(hospital_b, hub.org_b, f"2233817:{code}:1")
        for code in ("6331-3", "20995-1", "17576-0")
    ]  # three results with the same OBX-4 are three Observations
    assert [o["valueString"] for o in stool] == ["Isolated", "Isolated", "Not Isolated"]
    assert len({o["id"] for o in stool}) == 3
    person = hospital_b.get(f"/{lead['subject']['reference']}").json()
    assert person["name"][0]["family"] == "Johnson"


MALFORMED = [
    # file, HTTP status, ACK code, location, words of the reason
    ("truncated.hl7", 422, "AE", "OBX[1]", "OBR"),
    ("no_pid.hl7", 422, "AE", "PID", "PID"),
    ("bad_nm.hl7", 422, "AE", "OBX[3]-5", "'abc'"),
    ("adt.hl7", 400, "AR", "MSH-9", "ADT"),
]


@pytest.mark.parametrize(("name", "status", "code", "where", "words"), MALFORMED)
def test_malformed_samples_are_refused_and_dead_lettered(
    hub: HubUnderTest,
    samples: dict[str, Any],
    hospital_a: Client,
    admin: Client,
    name: str,
    status: int,
    code: str,
    where: str,
    words: str,
) -> None:
    payload = (MESSAGES / name).read_bytes()
    response = post_ingest(hub, hospital_a, SAMPLE_FEED, payload, HL7)
    assert response.status_code == status, response.text
    assert response.headers["X-Ingest-Acknowledgement"] == code
    ack_code, control_id, reason = ack_fields(response.content, "gb18030")
    assert ack_code == code
    assert control_id == payload.split(b"|")[9].decode()
    assert words in reason
    letter_id = response.headers["X-Ingest-Dead-Letter"]
    letter = admin_get(hub, admin, f"/admin/dead-letters/{letter_id}")
    assert letter["feed"] == SAMPLE_FEED
    assert letter["status"] == "open"
    assert letter["ack_code"] == code
    assert letter["channel"] == "http"
    assert letter["location"].startswith(where)
    assert base64.b64decode(letter["payload_base64"]) == payload


def test_a_refused_message_stores_nothing_of_itself(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    """bad_nm.hl7 has two good OBX before the bad one: the transaction is all or nothing."""
    post_ingest(hub, hospital_a, SAMPLE_FEED, (MESSAGES / "bad_nm.hl7").read_bytes(), HL7)
    identifier = f"{org_system(hub.org_a, 'result')}|XS2:ALT:"
    assert search(hospital_a, "Observation", identifier=identifier) == []
    assert (
        search(hospital_a, "DiagnosticReport", identifier=f"{org_system(hub.org_a, 'filler')}|XS2")
        == []
    )


def test_the_ack_is_encoded_as_its_msh18_says(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    message = (
        f"MSH|^~\\&|LIS|SYRMYY|YIJIAN|YIJIAN-HUB|20240305103015||ORU^R01|{control()}|P|2.5.1"
        "|||||CHN|UNICODE UTF-8\r"
        "PID|1||0007654321^^^SYRMYY^MR||张^伟||19780925|M\r"
        f"OBR|1|AP9|{control()}|GLU^血糖^L|||20240305082000||||||||||||||||||F\r"
        "OBX|1|NM|GLU^葡萄糖^L||阴性|mmol/L|3.9-6.1||||F\r"
    ).encode()
    response = post_ingest(hub, hospital_a, SAMPLE_FEED, message, HL7)
    assert response.status_code == 422
    assert "UNICODE UTF-8" in response.content.decode("ascii", errors="replace")
    assert "阴性" in response.content.decode("utf-8")  # the reason quotes the value


# -- 2. HTTP ingest --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_feed(hub: HubUnderTest, admin: Client) -> str:
    """Hospital A's second system, registered through the admin API, with its own code
    system and the demo map imported by the CLI."""
    config = {
        "feed": HTTP_FEED,
        "organization": hub.org_a,
        "name": "杭州市第一人民医院 HTTP",
        "sending_facility": "H-A-HTTP",
        "code_system": HTTP_CODES,
        "identifiers": {"H-A-HTTP": "mrn", "SFZ": "resident-id"},
    }
    response = admin.http.post(hub.base_url + "/admin/feeds", json=config)
    assert response.status_code == 201, response.text
    hub.cli("codes", "import", HTTP_FEED, CONCEPT_MAP)
    return HTTP_FEED


@pytest.fixture(scope="module")
def fhir_feed(hub: HubUnderTest, admin: Client, http_feed: str) -> str:
    """The same hospital's FHIR interface: adapter ``fhir``, sharing the local code system
    (and so the code map) of ``http_feed``."""
    config = {
        "feed": FHIR_FEED,
        "organization": hub.org_a,
        "adapter": "fhir",
        "sending_facility": "H-A-FHIR",
        "code_system": HTTP_CODES,
    }
    response = admin.http.post(hub.base_url + "/admin/feeds", json=config)
    assert response.status_code == 201, response.text
    return FHIR_FEED


def test_http_hl7_is_acknowledged_and_a_resend_is_a_duplicate(
    hub: HubUnderTest, http_feed: str, hospital_a: Client
) -> None:
    filler = "H" + uuid.uuid4().hex[:10]
    control_id = control()
    message = oru(control_id, "H-A-HTTP", someone(), filler)
    first = post_ingest(hub, hospital_a, http_feed, message, HL7)
    assert first.status_code == 200, first.text
    assert first.headers["X-Ingest-Acknowledgement"] == "AA"
    assert "X-Ingest-Duplicate" not in first.headers
    assert ack_fields(first.content) == ("AA", control_id, "")
    assert first.headers["content-type"].startswith("x-application/hl7-v2+er7")
    second = post_ingest(hub, hospital_a, http_feed, message, HL7)
    assert second.status_code == 200
    assert second.headers["X-Ingest-Duplicate"] == "true"
    assert second.content == first.content
    hgb = result(hospital_a, hub.org_a, f"{filler}:HGB:")
    assert hgb["meta"]["versionId"] == "1"
    assert hgb["code"]["coding"][0]["code"] == "718-7"
    assert (
        len(
            search(
                hospital_a,
                "DiagnosticReport",
                identifier=f"{org_system(hub.org_a, 'filler')}|{filler}",
            )
        )
        == 1
    )


def test_http_ingest_refuses_the_wrong_callers_feeds_and_media_types(
    hub: HubUnderTest,
    http_feed: str,
    hospital_a: Client,
    hospital_b: Client,
    doctor: Client,
) -> None:
    filler = "H" + uuid.uuid4().hex[:10]
    message = oru(control(), "H-A-HTTP", someone(), filler)
    assert post_ingest(hub, hospital_b, http_feed, message, HL7).status_code == 403
    assert post_ingest(hub, doctor, http_feed, message, HL7).status_code == 403
    assert post_ingest(hub, hospital_a, "no-such-feed", message, HL7).status_code == 404
    wrong = post_ingest(hub, hospital_a, http_feed, message, {"Content-Type": "text/csv"})
    assert wrong.status_code == 415
    assert wrong.json()["resourceType"] == "OperationOutcome"
    # None of those stored anything.
    assert (
        search(
            hospital_a, "Observation", identifier=f"{org_system(hub.org_a, 'result')}|{filler}:HGB:"
        )
        == []
    )
    # Another facility's message on this feed's URL is refused (not silently re-routed).
    other = post_ingest(hub, hospital_a, http_feed, oru(control(), "H-A", someone(), filler), HL7)
    assert other.status_code == 400
    assert ack_fields(other.content)[0] == "AR"


def fhir_bundle(org: str, identifier: str, *codes: str) -> tuple[dict[str, Any], str]:
    """A hospital's transaction: a Patient and one Observation per local code."""
    mrn = "P" + uuid.uuid4().hex[:10]
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
            "resource": patient(org, mrn, name=[{"text": "钱程"}]),
            "request": {
                "method": "PUT",
                "url": f"Patient?identifier=https://yijian.example/mrn/{org}|{mrn}",
            },
        }
    ]
    subject = entries[0]["fullUrl"]
    for code in codes:
        resource = observation(org, "placeholder", identifier=[
            {"system": f"https://yijian.example/result/{org}", "value": f"{mrn}-{code}"}
        ])  # fmt: skip
        resource["subject"] = {"reference": subject}
        resource["code"] = {"coding": [{"system": HTTP_CODES, "code": code, "display": "本院项目"}]}
        # in the unit the demo map gives for GLU (a result in another unit is not mapped)
        resource["valueQuantity"] = {
            "value": 5.6,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        }
        entries.append(
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "resource": resource,
                "request": {"method": "POST", "url": "Observation"},
            }
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "https://h-a.example/bundles", "value": identifier},
        "entry": entries,
    }
    return bundle, mrn


def test_http_fhir_bundle_gets_mapped_codes_and_is_replay_safe(
    hub: HubUnderTest, fhir_feed: str, hospital_a: Client, admin: Client
) -> None:
    local = "LOCAL-" + uuid.uuid4().hex[:8]
    bundle, mrn = fhir_bundle(hub.org_a, uuid.uuid4().hex, "GLU", local)
    body = json.dumps(bundle, ensure_ascii=False).encode()
    first = post_ingest(hub, hospital_a, fhir_feed, body, FHIR)
    assert first.status_code == 200, first.text
    assert first.headers["X-Ingest-Acknowledgement"] == "AA"
    answer = first.json()
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in answer["entry"]] == ["201", "201", "201"]

    by_code = {
        o["identifier"][0]["value"].split("-", 1)[1]: o
        for o in search(
            hospital_a,
            "Observation",
            identifier=f"https://yijian.example/result/{hub.org_a}|{mrn}-GLU",
        )
        + search(
            hospital_a,
            "Observation",
            identifier=f"https://yijian.example/result/{hub.org_a}|{mrn}-{local}",
        )
    }
    glu = by_code["GLU"]
    assert glu["code"]["coding"][0]["system"] == LOINC
    assert glu["code"]["coding"][0]["code"] == "14749-6"
    assert glu["code"]["coding"][1]["code"] == "GLU"
    assert UNMAPPED not in tags(glu)
    unmapped = by_code[local]
    assert [c["code"] for c in unmapped["code"]["coding"]] == [local]
    assert UNMAPPED in tags(unmapped)

    again = post_ingest(hub, hospital_a, fhir_feed, body, FHIR)
    assert again.status_code == 200
    assert again.headers["X-Ingest-Duplicate"] == "true"
    assert again.json() == first.json()  # the same transaction-response, not a new one
    stored = search(
        hospital_a, "Observation", identifier=f"https://yijian.example/result/{hub.org_a}|{mrn}-GLU"
    )
    assert len(stored) == 1  # POST entries, but the Bundle was not processed twice
    worklist = admin_get(hub, admin, "/admin/unmapped-codes", organization=hub.org_a)["unmapped"]
    row = [r for r in worklist if r["local_code"] == local]
    assert len(row) == 1 and row[0]["occurrences"] == 1 and row[0]["source_system"] == HTTP_CODES


def test_http_fhir_bundle_that_is_not_a_transaction_is_refused(
    hub: HubUnderTest, fhir_feed: str, hospital_a: Client
) -> None:
    bundle, _ = fhir_bundle(hub.org_a, uuid.uuid4().hex, "GLU")
    bundle["type"] = "batch"
    response = post_ingest(hub, hospital_a, fhir_feed, json.dumps(bundle).encode(), FHIR)
    assert response.status_code == 400
    assert response.headers["X-Ingest-Acknowledgement"] == "AR"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "transaction" in outcome["issue"][0]["diagnostics"]


def test_http_fhir_bundle_on_an_hl7_feed(
    hub: HubUnderTest, http_feed: str, hospital_a: Client
) -> None:
    bundle, mrn = fhir_bundle(hub.org_a, uuid.uuid4().hex, "GLU")
    response = post_ingest(hub, hospital_a, http_feed, json.dumps(bundle).encode(), FHIR)
    assert response.status_code == 200, response.text
    stored = search(
        hospital_a, "Observation", identifier=f"https://yijian.example/result/{hub.org_a}|{mrn}-GLU"
    )
    assert stored[0]["code"]["coding"][0]["code"] == "14749-6"


# -- 4. dead letters -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dl_feed(hub: HubUnderTest, admin: Client) -> str:
    """A GBK feed whose PID-3 authorities lack SFZ (the resident ID): incomplete on purpose."""
    hub.cli(
        "feeds", "add", "--organization", hub.org_b, "--sending-facility", "H-B-DL",
        "--feed", DL_FEED, "--encoding", "gbk", "--authority", "H-B-DL=mrn",
    )  # fmt: skip
    wait_for_feed(hub, admin, DL_FEED)
    return DL_FEED


def cli_json(hub: HubUnderTest, *args: str) -> Any:
    return json.loads(hub.cli(*args).stdout)


def test_dead_letter_inspected_and_replayed_after_the_feed_is_fixed(
    hub: HubUnderTest, dl_feed: str, hospital_b: Client
) -> None:
    filler = "D" + uuid.uuid4().hex[:10]
    control_id = control()
    person = someone(name="欧阳娜娜", resident_id="330102198603140020")
    message = oru(control_id, "H-B-DL", person, filler, encoding="gbk")
    refused = post_ingest(hub, hospital_b, dl_feed, message, HL7)
    assert refused.status_code == 422
    code, _, reason = ack_fields(refused.content, "gbk")
    assert code == "AE" and "SFZ" in reason
    letter_id = int(refused.headers["X-Ingest-Dead-Letter"])

    listed = cli_json(hub, "deadletter", "list", "--feed", dl_feed, "--json")
    (entry,) = [x for x in listed if x["id"] == letter_id]
    assert entry["control_id"] == control_id
    assert (entry["ack_code"], entry["status"], entry["location"]) == ("AE", "open", "PID-3")
    assert "SFZ" in entry["error"]

    shown = hub.cli("deadletter", "show", str(letter_id))
    assert "欧阳娜娜" in shown.stdout  # GBK bytes shown as text
    assert "白细胞计数" in shown.stdout
    assert f"control_id: {control_id}" in shown.stdout
    raw = subprocess.run(
        [YIJIAN, "deadletter", "show", str(letter_id), "--raw"],
        env=hub.env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert raw.stdout == message

    hub.cli(
        "feeds", "add", "--organization", hub.org_b, "--sending-facility", "H-B-DL",
        "--feed", dl_feed, "--encoding", "gbk",
        "--authority", "H-B-DL=mrn", "--authority", "SFZ=resident-id",
    )  # fmt: skip
    replayed = hub.cli("deadletter", "replay", str(letter_id))
    assert f"{letter_id}: accepted" in replayed.stdout
    (after,) = [
        x
        for x in cli_json(hub, "deadletter", "list", "--status", "all", "--feed", dl_feed, "--json")
        if x["id"] == letter_id
    ]
    assert after["status"] == "replayed" and after["resolved_at"]
    found = search(
        hospital_b,
        "Observation",
        identifier=f"{org_system(hub.org_b, 'result')}|{filler}:HGB:",
    )
    assert len(found) == 1
    assert found[0]["code"]["text"] == "血红蛋白"
    assert (
        len(
            search(
                hospital_b,
                "Observation",
                **{
                    "patient.identifier": f"{RESIDENT_ID}|330102198603140020",
                    "identifier": f"{org_system(hub.org_b, 'result')}|{filler}:WBC:",
                },
            )
        )
        == 1
    )

    again = hub.cli("deadletter", "replay", str(letter_id), check=False)
    assert again.returncode == 1
    assert "not open" in again.stderr
    # The message is now known: the sender's own resend is a duplicate, not a new letter.
    resent = post_ingest(hub, hospital_b, dl_feed, message, HL7)
    assert resent.status_code == 200 and resent.headers["X-Ingest-Duplicate"] == "true"


def test_dead_letter_discarded_by_an_admin_only(
    hub: HubUnderTest, dl_feed: str, hospital_b: Client, admin: Client
) -> None:
    good = oru(control(), "H-B-DL", someone(), "D" + uuid.uuid4().hex[:10], encoding="gbk")
    no_pid = b"\r".join(s for s in good.split(b"\r") if not s.startswith(b"PID"))
    refused = post_ingest(hub, hospital_b, dl_feed, no_pid, HL7)
    assert refused.status_code == 422
    letter_id = refused.headers["X-Ingest-Dead-Letter"]
    url = f"{hub.base_url}/admin/dead-letters/{letter_id}"

    assert hospital_b.http.get(hub.base_url + "/admin/dead-letters").status_code == 403
    assert hospital_b.http.get(url).status_code == 403
    assert hospital_b.http.post(url + "/discard").status_code == 403
    assert hospital_b.http.post(url + "/replay").status_code == 403
    assert admin_get(hub, admin, f"/admin/dead-letters/{letter_id}")["status"] == "open"

    discarded = admin.http.post(url + "/discard")
    assert discarded.status_code == 200, discarded.text
    assert discarded.json() == {"id": int(letter_id), "status": "discarded"}
    detail = admin_get(hub, admin, f"/admin/dead-letters/{letter_id}")
    assert detail["status"] == "discarded" and detail["resolved_at"]
    open_ids = {
        x["id"] for x in admin_get(hub, admin, "/admin/dead-letters", feed=dl_feed)["dead_letters"]
    }
    assert int(letter_id) not in open_ids
    discarded_ids = {
        x["id"]
        for x in admin_get(hub, admin, "/admin/dead-letters", feed=dl_feed, status="discarded")[
            "dead_letters"
        ]
    }
    assert int(letter_id) in discarded_ids
    assert admin.http.post(url + "/replay").status_code == 409
    assert (
        admin.http.post(f"{hub.base_url}/admin/dead-letters/999999999/discard").status_code == 404
    )


# -- 6. imaging reports and studies ----------------------------------------------------------


def imaging_study(org: str, patient_id: str, accession: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "status": "available",
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:2.25.{uuid.uuid4().int}"},
            {
                "type": {"coding": [{"system": V2_0203, "code": "ACSN"}]},
                "system": org_system(org, "accession"),
                "value": accession,
            },
        ],
        "subject": {"reference": f"Patient/{patient_id}"},
        "started": "2024-03-06T15:00:00+08:00",
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
    }


def ct_report(hub: HubUnderTest, client: Client) -> dict[str, Any]:
    return report(client, hub.org_a, "CTR20240306088")


def test_imaging_report_text_conclusion_and_accession(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    ct = ct_report(hub, hospital_a)
    assert (
        ct["conclusion"]
        == "1. 右肺上叶磨玻璃结节，建议6个月后复查。\n2. 余胸部CT平扫未见明显异常。"
    )
    form = ct["presentedForm"][0]
    assert form["contentType"].startswith("text/plain")
    text = base64.b64decode(form["data"]).decode("utf-8")
    assert "右肺上叶尖段见一磨玻璃结节，大小约8mm×6mm，边界清楚。" in text
    assert "纵隔内未见肿大淋巴结" in text
    assert text.index("检查所见") < text.index("诊断意见")
    accession = {
        (i["system"], i["value"])
        for i in ct["identifier"]
        if any(c["code"] == "ACSN" for c in i.get("type", {}).get("coding", []))
    }
    assert accession == {(org_system(hub.org_a, "accession"), "CT20240306000321")}
    assert "result" not in ct  # the report text is no Observation
    patient = hospital_a.get(f"/{ct['subject']['reference']}").json()
    assert patient["name"][0]["text"] == "陈建国"
    assert patient["identifier"][0]["system"] == org_system(hub.org_a, "outpatient")  # MZ^PI


def test_a_study_after_its_report_is_linked_to_it(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    ct = ct_report(hub, hospital_a)
    assert "imagingStudy" not in ct
    version = int(ct["meta"]["versionId"])
    patient_id = ct["subject"]["reference"].split("/")[1]
    created = hospital_a.post(
        "/ImagingStudy", json=imaging_study(hub.org_a, patient_id, "CT20240306000321")
    )
    assert created.status_code == 201, created.text
    study_id = created.json()["id"]
    linked = ct_report(hub, hospital_a)
    assert linked["imagingStudy"] == [{"reference": f"ImagingStudy/{study_id}"}]
    assert int(linked["meta"]["versionId"]) == version + 1
    assert linked["conclusion"] == ct["conclusion"]  # nothing else changed


RIS_TEMPLATE = (
    "MSH|^~\\&|RIS|SYRMYY|YIJIAN|YIJIAN-HUB|20240306162040||ORU^R01^ORU_R01|{control}|P|2.4"
    "|||||CHN|UNICODE UTF-8\r"
    "PID|1||{mrn}^^^SYRMYY^MR||孙^悦||19720203|F\r"
    "ORC|RE|{placer}|{filler}||CM\r"
    "OBR|1|{placer}|{filler}|MRHEAD^头颅MR平扫^L|||20240306150000|||||||||D4004^吴^敏||{accession}"
    "||||20240306161500||MR|F\r"
    "OBX|1|TX|&GDT^检查所见^L|1|脑实质未见异常信号。||||||F\r"
    "OBX|2|TX|&IMP^诊断意见^L|2|头颅MR平扫未见明显异常。||||||F\r"
)


def test_imaging_study_then_report(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client
) -> None:
    mrn, accession = "R" + uuid.uuid4().hex[:8], "MR" + uuid.uuid4().hex[:10]
    person = patient(hub.org_a, identifier=[{"system": org_system(hub.org_a, "mrn"), "value": mrn}])
    created = hospital_a.post("/Patient", json=person)
    assert created.status_code == 201, created.text
    study = hospital_a.post(
        "/ImagingStudy", json=imaging_study(hub.org_a, created.json()["id"], accession)
    )
    assert study.status_code == 201, study.text
    decoy = hospital_a.post(
        "/ImagingStudy", json=imaging_study(hub.org_a, created.json()["id"], accession + "X")
    )
    assert decoy.status_code == 201, decoy.text
    filler = "MRR" + uuid.uuid4().hex[:8]
    message = RIS_TEMPLATE.format(
        control=control(), mrn=mrn, placer="MRAP" + filler, filler=filler, accession=accession
    ).encode()
    response = post_ingest(hub, hospital_a, SAMPLE_FEED, message, HL7)
    assert response.status_code == 200, response.text
    mr = report(hospital_a, hub.org_a, filler)
    assert mr["meta"]["versionId"] == "1"
    assert mr["imagingStudy"] == [{"reference": f"ImagingStudy/{study.json()['id']}"}]
    assert mr["conclusion"] == "头颅MR平扫未见明显异常。"
    assert mr["subject"]["reference"] == f"Patient/{created.json()['id']}"
    # The RIS resends the same report under a new control id: nothing changes (the link the
    # hub added is not a difference), so no new version.
    resent = RIS_TEMPLATE.format(
        control=control(), mrn=mrn, placer="MRAP" + filler, filler=filler, accession=accession
    ).encode()
    assert post_ingest(hub, hospital_a, SAMPLE_FEED, resent, HL7).status_code == 200
    assert report(hospital_a, hub.org_a, filler)["meta"]["versionId"] == "1"


def test_cbc_sample_is_found_by_a_doctor_elsewhere(
    hub: HubUnderTest, samples: dict[str, Any], hospital_a: Client, doctor: Client
) -> None:
    """Hospital B's doctor, ordering for the sample's patient, finds hospital A's sample
    result by the resident ID."""
    (sent,) = search(hospital_a, "Observation", identifier="XS20240305001:HGB:")
    # (The suite stores many records with this ID number; the order names the record.)
    order_for(doctor, sent["subject"]["reference"].removeprefix("Patient/"))
    found = search(
        doctor,
        "Observation",
        **{"patient.identifier": f"{RESIDENT_ID}|330102198603140020", "code": f"{LOINC}|718-7"},
    )
    assert any(o["identifier"][0]["value"] == "XS20240305001:HGB:" for o in found)
