"""The HL7 v2 ORU^R01 translator (adapters.hl7v2), as pure functions: no database needed.

Messages are the files under tests/messages (bytes as on the wire) plus small inline ones for
edge cases. Every generated resource is validated with the fhir.resources R4B models, as the
hub itself does.
"""

from __future__ import annotations

import base64
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import hl7
import pytest
from fhir.resources.R4B import get_fhir_model_class

from adapters.hl7v2 import translator
from adapters.hl7v2.message import Delimiters, Message, escape, unescape
from adapters.hl7v2.oru import Unit, reference_range
from adapters.hl7v2.units import ucum
from hub.ingest.codemaps import CodeMap
from hub.ingest.feeds import FeedConfig
from hub.ingest.translation import AckCode, ContentError, IngestError, Rejected, Translation

MESSAGES = Path(__file__).parent / "messages"
CONCEPT_MAP = Path(__file__).parent.parent / "fhir_profiles" / "conceptmaps" / "demo-lis.json"
ORG = "demo-h1"
SID = f"https://yijian-hub.org/fhir/sid/org/{ORG}"
LOCAL = f"https://yijian-hub.org/fhir/CodeSystem/org/{ORG}/codes"
RESIDENT_ID = "https://yijian-hub.org/fhir/sid/resident-id"
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"

FEED = FeedConfig(
    feed="h1-lis",
    organization=ORG,
    sending_facility="SYRMYY",
    encoding="gbk",
    identifiers={"SYRMYY": "mrn", "SFZ": "resident-id", "MZ": "outpatient", "MPI": "mrn"},
)
UTF8_FEED = FEED.model_copy(update={"encoding": "utf-8"})
CODES = CodeMap.from_concept_map(json.loads(CONCEPT_MAP.read_text("utf-8")), FEED.local_code_system)
NO_CODES = CodeMap.empty(FEED.local_code_system)


def load(name: str) -> bytes:
    return (MESSAGES / name).read_bytes()


def run(payload: bytes, feed: FeedConfig = FEED, codes: CodeMap = CODES) -> Translation:
    return translator.translate(payload, translator.header(payload), feed, codes)


def resources(translation: Translation, kind: str) -> list[dict[str, Any]]:
    return [
        e["resource"] for e in translation.bundle["entry"] if e["resource"]["resourceType"] == kind
    ]


def entry_of(translation: Translation, kind: str, index: int = 0) -> dict[str, Any]:
    return [e for e in translation.bundle["entry"] if e["resource"]["resourceType"] == kind][index]


def observation(translation: Translation, code: str) -> dict[str, Any]:
    for resource in resources(translation, "Observation"):
        if any(c.get("code") == code for c in resource["code"].get("coding", [])):
            return resource
    raise AssertionError(f"no Observation with code {code}")


def utf8_message(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


MSH_251 = (
    "MSH|^~\\&|LIS|SYRMYY|YIJIAN|YIJIAN-HUB|20240305103015||ORU^R01^ORU_R01|CTRL1|P|2.5.1"
    "|||||CHN|UNICODE UTF-8"
)
PID_OK = "PID|1||0001234567^^^SYRMYY^MR||王芳||19860314|F"
OBR_OK = "OBR|1|AP1|XS1|GLU^血糖^L|||20240305082000"
OBX_OK = "OBX|1|NM|GLU^葡萄糖^L||5.6|mmol/L|3.9-6.1||||F"


# ---------------------------------------------------------------- contract and header


def test_translator_is_registered_under_hl7v2() -> None:
    found = {ep.name: ep for ep in entry_points(group="yijian.adapters")}
    assert found["hl7v2"].load() is translator
    assert translator.name == "hl7v2"


def test_header_reads_routing_fields() -> None:
    header = translator.header(load("cbc_gbk.hl7"))
    assert header.control_id == "LIS20240305000123"
    assert header.sending_facility == "SYRMYY"
    assert header.sending_application == "LIS"
    assert (header.receiving_application, header.receiving_facility) == ("YIJIAN", "YIJIAN-HUB")
    assert header.message_type == "ORU^R01"
    assert header.version == "2.4"
    assert header.processing_id == "P"
    assert header.charset == ""


def test_header_with_message_structure_and_charset() -> None:
    header = translator.header(load("chem_utf8.hl7"))
    assert header.message_type == "ORU^R01"  # MSH-9 was ORU^R01^ORU_R01
    assert header.version == "2.5.1"
    assert header.charset == "UNICODE UTF-8"


def test_header_tolerates_bom_and_framing_junk() -> None:
    payload = b"\x0b\xef\xbb\xbf" + load("chem_utf8.hl7") + b"\x1c\r\n  "
    assert translator.header(payload).control_id == "LIS20240305000456"
    translation = run(payload)
    assert resources(translation, "Patient")[0]["name"][0]["text"] == "张伟"


@pytest.mark.parametrize(
    ("payload", "location", "words"),
    [
        (b"PID|1||123\rOBR|1\r", "MSH", "no MSH"),
        (b"", "MSH", "empty"),
        (b"MSH|^~\\&|LIS|SYRMYY|YIJIAN", "MSH-6", "truncated"),
        (b"MSH|^~\\&|LIS|SYRMYY|||20240101||ORU^R01||P|2.5\rPID|1", "MSH-10", "MSH-10"),
        (b"MSHX^~\\&|LIS", "MSH", "MSH-1"),
    ],
)
def test_header_rejects_unreadable_messages(payload: bytes, location: str, words: str) -> None:
    with pytest.raises(Rejected) as caught:
        translator.header(payload)
    assert caught.value.location == location
    assert words in caught.value.reason
    assert caught.value.ack_code is AckCode.REJECT


# ---------------------------------------------------------------- syntax and encodings


def test_escape_sequences_round_trip() -> None:
    delims = Delimiters()
    text = "A|B^C&D~E\\F\nG"
    assert escape(text, delims) == "A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F\\.br\\G"
    assert unescape(escape(text, delims), delims) == text
    assert unescape("\\X41E4B8AD\\", delims) == "A中"  # hex bytes in UTF-8
    assert unescape("\\H\\bold\\N\\", delims) == "bold"
    assert unescape("no closing \\F", delims) == "no closing \\F"


def test_custom_delimiters_from_msh_2() -> None:
    text = "MSH#*!@%#LIS#SYRMYY\rPID#1##001*!002\rOBX#1#ST#A*B#"
    message = Message.parse(text)
    pid = message.segments[1]
    assert message.delims == Delimiters("#", "*", "!", "@", "%")
    assert pid.repetitions(3) == ["001*", "002"]
    assert message.segments[2].get(3, 2) == "B"


def test_gbk_message_decodes_chinese_names() -> None:
    translation = run(load("cbc_gbk.hl7"))
    patient = resources(translation, "Patient")[0]
    assert patient["name"][0]["text"] == "王芳"
    assert patient["address"][0]["city"] == "杭州市"
    wbc = observation(translation, "WBC")
    assert wbc["code"]["text"] == "白细胞计数"
    assert translation.warnings == []


def test_utf8_message_declared_in_msh_18_wins_over_gbk_feed() -> None:
    translation = run(load("chem_utf8.hl7"))  # the feed says GBK
    assert translation.warnings == []
    patient = resources(translation, "Patient")[0]
    assert patient["name"][0] == {
        "use": "official",
        "text": "张伟",
        "family": "张",
        "given": ["伟"],
    }
    assert observation(translation, "GGT")["code"]["text"] == "γ-谷氨酰转移酶"


def test_gbk_feed_receiving_undeclared_utf8_decodes_as_utf8_with_warning() -> None:
    payload = utf8_message(MSH_251.replace("|UNICODE UTF-8", ""), PID_OK, OBR_OK, OBX_OK)
    translation = run(payload)
    assert resources(translation, "Patient")[0]["name"][0]["text"] == "王芳"
    assert any("valid UTF-8" in w for w in translation.warnings)


def test_declared_utf8_but_gbk_bytes_decodes_as_gb18030_with_warning() -> None:
    text = "\r".join([MSH_251, PID_OK, OBR_OK, OBX_OK]) + "\r"
    translation = run(text.encode("gbk"), feed=UTF8_FEED)
    assert resources(translation, "Patient")[0]["name"][0]["text"] == "王芳"
    assert any("not valid UTF-8" in w and "GB 18030" in w for w in translation.warnings)


def test_bytes_in_no_known_encoding_are_rejected() -> None:
    payload = MSH_251.encode() + b"\rPID|1||001^^^SYRMYY||\xff\xfe\xff\r"
    with pytest.raises(Rejected) as caught:
        run(payload)
    assert caught.value.reason == "message is not valid UTF-8 or GB18030"


def test_old_v23_message_with_newlines_and_no_charset() -> None:
    translation = run(load("v23_minimal.hl7"))
    patient = resources(translation, "Patient")[0]
    assert patient["name"][0]["text"] == "刘洋"
    assert "family" not in patient["name"][0]  # one component: not split into surname
    assert patient["gender"] == "male"  # 男
    assert patient["identifier"][0]["system"] == f"{SID}/mrn"
    report = resources(translation, "DiagnosticReport")[0]
    assert report["status"] == "final"  # OBR-25 empty
    glucose = observation(translation, "GLU")
    assert glucose["valueQuantity"] == {
        "value": 5.6,
        "unit": "mmol/l",
        "system": UCUM,
        "code": "mmol/L",
    }
    assert glucose["effectiveDateTime"] == "2004-03-05T08:00:00+08:00"
    assert observation(translation, "NOTE")["status"] == "final"  # OBX-11 empty


# ---------------------------------------------------------------- bundle shape and identifiers


def test_bundle_is_a_transaction_of_conditional_puts() -> None:
    translation = run(load("chem_utf8.hl7"))
    bundle = translation.bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert len(full_urls) == len(bundle["entry"])
    for entry in bundle["entry"]:
        assert entry["fullUrl"].startswith("urn:uuid:")
        assert "id" not in entry["resource"]
        assert entry["request"]["method"] == "PUT"
        kind, _, query = entry["request"]["url"].partition("?identifier=")
        assert kind == entry["resource"]["resourceType"]
        system, _, value = query.partition("|")
        assert {"system": system, "value": unquote(value)} in [
            {"system": i["system"], "value": i["value"]} for i in entry["resource"]["identifier"]
        ]
    references = [
        ref
        for entry in bundle["entry"]
        for ref in _references(entry["resource"])
        if not ref.startswith("Organization/")
    ]
    assert references and all(ref in full_urls for ref in references)


def _references(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def test_conditional_urls_use_business_identifiers() -> None:
    translation = run(load("cbc_gbk.hl7"))
    urls = [e["request"]["url"] for e in translation.bundle["entry"]]
    assert urls[0] == f"Patient?identifier={SID}/mrn|0001234567"
    assert f"ServiceRequest?identifier={SID}/placer|AP20240305001" in urls
    assert f"Specimen?identifier={SID}/specimen|XS20240305001" in urls
    assert f"DiagnosticReport?identifier={SID}/filler|XS20240305001" in urls
    assert f"Observation?identifier={SID}/result|XS20240305001%3AWBC%3A" in urls
    assert f"Observation?identifier={SID}/result|XS20240305001%3ANEUT%25%3A" in urls


def test_replay_targets_the_same_resources() -> None:
    first, second = run(load("cbc_gbk.hl7")), run(load("cbc_gbk.hl7"))
    assert [e["request"] for e in first.bundle["entry"]] == [
        e["request"] for e in second.bundle["entry"]
    ]
    assert first.bundle["entry"][0]["fullUrl"] != second.bundle["entry"][0]["fullUrl"]


def test_correction_updates_the_same_report_and_result() -> None:
    original, corrected = run(load("cbc_gbk.hl7")), run(load("correction.hl7"))
    assert [e["request"]["url"] for e in original.bundle["entry"]] == [
        e["request"]["url"] for e in corrected.bundle["entry"]
    ]
    assert resources(corrected, "DiagnosticReport")[0]["status"] == "corrected"
    assert resources(corrected, "ServiceRequest")[0]["status"] == "completed"
    plt = observation(corrected, "PLT")
    assert plt["status"] == "corrected"
    assert plt["valueQuantity"]["value"] == 102
    assert observation(original, "PLT")["valueQuantity"]["value"] == 96
    assert observation(corrected, "WBC")["status"] == "final"


def test_identifier_values_are_escaped_in_conditional_urls() -> None:
    payload = utf8_message(
        MSH_251, PID_OK, "OBR|1|AP 1|XS,1\\F\\A$|GLU^血糖^L|||20240305082000", OBX_OK
    )
    translation = run(payload)
    report = entry_of(translation, "DiagnosticReport")
    assert report["resource"]["identifier"][0]["value"] == "XS,1|A$"
    value = report["request"]["url"].split("|", 1)[1]
    assert value == quote("XS\\,1\\|A\\$", safe="")
    assert "," not in value and " " not in value
    assert entry_of(translation, "ServiceRequest")["request"]["url"].endswith("|AP%201")


def test_patient_demographics_and_identifiers() -> None:
    patient = resources(run(load("cbc_gbk.hl7")), "Patient")[0]
    assert patient["identifier"] == [
        {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                ]
            },
            "system": f"{SID}/mrn",
            "value": "0001234567",
        },
        {"system": RESIDENT_ID, "value": "330102198603140020"},
    ]
    assert patient["gender"] == "female"
    assert patient["birthDate"] == "1986-03-14"
    assert patient["managingOrganization"] == {"reference": f"Organization/{ORG}"}
    assert patient["address"][0]["text"] == "浙江省杭州市上城区解放路100号"
    assert patient["address"][0]["district"] == "上城区"
    assert patient["address"][0]["postalCode"] == "310002"
    assert {"system": "phone", "value": "+86 571-87001234", "use": "home"} in patient["telecom"]
    assert {"system": "phone", "value": "13805710001", "use": "mobile"} in patient["telecom"]


def test_patient_keyed_on_outpatient_number_when_no_mrn() -> None:
    translation = run(load("ris_report.hl7"))
    entry = entry_of(translation, "Patient")
    assert entry["request"]["url"] == f"Patient?identifier={SID}/outpatient|MZ00889900"
    assert entry["resource"]["identifier"][0]["type"]["coding"][0]["code"] == "outpatient"


def test_identifier_without_authority_uses_its_type() -> None:
    payload = utf8_message(
        MSH_251,
        "PID|1||110105197809251539^^^^NNCHN~A778899^^^^MR||张伟||19780925|M",
        OBR_OK,
        OBX_OK,
    )
    entry = entry_of(run(payload), "Patient")
    systems = [i["system"] for i in entry["resource"]["identifier"]]
    assert systems == [RESIDENT_ID, f"{SID}/mrn"]
    # the hospital number is the key even though it is not the first repetition
    assert entry["request"]["url"] == f"Patient?identifier={SID}/mrn|A778899"


def test_identifier_authority_configured_as_uri() -> None:
    feed = FEED.model_copy(update={"identifiers": {"YB": "urn:oid:1.2.156.99.1"}})
    payload = utf8_message(MSH_251, "PID|1||Y123^^^YB||王芳", OBR_OK, OBX_OK)
    entry = entry_of(run(payload, feed=feed), "Patient")
    assert entry["request"]["url"] == "Patient?identifier=urn:oid:1.2.156.99.1|Y123"


# ---------------------------------------------------------------- orders, reports, specimens


def test_lab_report_service_request_and_specimen() -> None:
    translation = run(load("cbc_gbk.hl7"))
    request = resources(translation, "ServiceRequest")[0]
    report = resources(translation, "DiagnosticReport")[0]
    specimen = resources(translation, "Specimen")[0]
    assert [i["type"]["coding"][0]["code"] for i in request["identifier"]] == ["PLAC", "FILL"]
    assert request["intent"] == "order" and request["status"] == "completed"
    assert request["authoredOn"] == "2024-03-05T08:10:00+08:00"  # ORC-9
    assert request["requester"] == {"display": "李明"}
    assert request["code"]["coding"][0] == {"system": LOCAL, "code": "CBC", "display": "血常规"}
    assert report["status"] == "final"
    assert report["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
        "code": "LAB",
    }
    assert report["effectiveDateTime"] == "2024-03-05T08:20:00+08:00"
    assert report["issued"] == "2024-03-05T10:30:00+08:00"
    assert report["performer"] == [{"reference": f"Organization/{ORG}"}]
    assert len(report["result"]) == 22
    assert specimen["type"] == {"text": "全血"}
    assert specimen["collection"] == {"collectedDateTime": "2024-03-05T08:20:00+08:00"}
    assert specimen["receivedTime"] == "2024-03-05T08:35:00+08:00"
    specimen_url = entry_of(translation, "Specimen")["fullUrl"]
    assert report["specimen"] == [{"reference": specimen_url}]
    assert observation(translation, "WBC")["specimen"] == {"reference": specimen_url}


def test_spm_specimen_and_two_orders() -> None:
    translation = run(load("chem_utf8.hl7"))
    reports = resources(translation, "DiagnosticReport")
    assert [r["identifier"][0]["value"] for r in reports] == ["SH20240305010", "SH20240305011"]
    specimens = resources(translation, "Specimen")
    assert [s["identifier"][0]["value"] for s in specimens] == [
        "TM2024030500088",
        "TM2024030500089",
    ]
    assert specimens[0]["type"]["text"] == "血清"
    assert specimens[0]["collection"]["collectedDateTime"] == "2024-03-05T07:45:00+08:00"
    assert reports[0]["issued"] == "2024-03-05T11:29:00+08:00"
    assert len(reports[0]["result"]) == 8 and len(reports[1]["result"]) == 5
    alt = observation(translation, "ALT")
    assert alt["issued"] == "2024-03-05T10:15:00+08:00"  # OBX-19 (v2.5)
    assert observation(translation, "UREA")["issued"] == "2024-03-05T11:29:00+08:00"  # OBR-22


@pytest.mark.parametrize(
    ("name", "report", "request_status", "result"),
    [
        ("cbc_gbk.hl7", "final", "completed", "final"),
        ("correction.hl7", "corrected", "completed", "final"),
        ("preliminary.hl7", "preliminary", "active", "preliminary"),
        ("cancelled.hl7", "cancelled", "revoked", "cancelled"),
    ],
)
def test_status_mapping(name: str, report: str, request_status: str, result: str) -> None:
    translation = run(load(name))
    assert resources(translation, "DiagnosticReport")[0]["status"] == report
    assert resources(translation, "ServiceRequest")[0]["status"] == request_status
    first = resources(translation, "Observation")[0]
    assert first["status"] == result


def test_cancelled_result_has_no_value_and_no_absent_reason() -> None:
    result = resources(run(load("cancelled.hl7")), "Observation")[0]
    assert "valueQuantity" not in result and "dataAbsentReason" not in result


def test_empty_value_of_a_final_result_is_absent_unknown() -> None:
    payload = utf8_message(MSH_251, PID_OK, OBR_OK, "OBX|1|NM|GLU^葡萄糖^L||||||||F")
    result = resources(run(payload), "Observation")[0]
    assert result["dataAbsentReason"]["coding"][0]["code"] == "unknown"


@pytest.mark.parametrize(
    ("code", "status"),
    [("D", "entered-in-error"), ("W", "entered-in-error"), ("R", "registered"), ("C", "corrected")],
)
def test_result_status_codes(code: str, status: str) -> None:
    payload = utf8_message(MSH_251, PID_OK, OBR_OK, f"OBX|1|NM|GLU^葡萄糖^L||5.6|mmol/L|||||{code}")
    assert resources(run(payload), "Observation")[0]["status"] == status


def test_order_and_result_notes() -> None:
    translation = run(load("mixed_types.hl7"))
    report = resources(translation, "DiagnosticReport")[0]
    assert report["extension"] == [
        {
            "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note",
            "valueAnnotation": {"text": "标本轻度溶血"},
        },
        {
            "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note",
            "valueAnnotation": {"text": "结果仅供临床参考"},
        },
    ]
    assert observation(translation, "ABO")["note"] == [{"text": "已复核"}, {"text": "请结合临床"}]
    assert "note" not in observation(translation, "HBsAg")
    # Z-segments (ZPI, ZLS) are ignored: one patient, one order, twelve results
    assert len(resources(translation, "Observation")) == 12


# ---------------------------------------------------------------- values


def test_numeric_value_with_ucum_unit_from_code_map() -> None:
    translation = run(load("cbc_gbk.hl7"))
    wbc = observation(translation, "WBC")
    assert wbc["valueQuantity"] == {
        "value": 10.8,
        "unit": "10^9/L",
        "system": UCUM,
        "code": "10*9/L",
    }
    assert observation(translation, "HGB")["valueQuantity"]["value"] == 118
    assert isinstance(observation(translation, "HGB")["valueQuantity"]["value"], int)
    assert observation(translation, "EO#")["valueQuantity"]["value"] == 0.1


def test_unmapped_unit_uses_the_unit_table() -> None:
    translation = run(load("cbc_gbk.hl7"), codes=NO_CODES)
    assert observation(translation, "RBC")["valueQuantity"]["code"] == "10*12/L"
    chem = run(load("chem_utf8.hl7"), codes=NO_CODES)
    assert observation(chem, "TBIL")["valueQuantity"]["code"] == "umol/L"  # μ (Greek mu)
    assert observation(chem, "DBIL")["valueQuantity"]["code"] == "umol/L"  # µ (micro sign)
    assert observation(chem, "DBIL")["valueQuantity"]["unit"] == "µmol/L"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("10^9/L", "10*9/L"),
        ("×10^9/L", "10*9/L"),
        ("10E12/L", "10*12/L"),
        ("g/L", "g/L"),
        ("ｇ/Ｌ", "g/L"),
        ("mmol/l", "mmol/L"),
        ("μmol/L", "umol/L"),
        ("µmol/L", "umol/L"),
        ("umol/L", "umol/L"),
        ("U/L", "U/L"),
        ("IU/L", "[IU]/L"),
        ("μIU/mL", "u[IU]/mL"),
        ("mIU/L", "m[IU]/L"),
        ("%", "%"),
        ("fL", "fL"),
        ("pg", "pg"),
        ("mg/L", "mg/L"),
        ("ng/mL", "ng/mL"),
        ("pg/mL", "pg/mL"),
        ("秒", "s"),
        ("/HP", "/[HPF]"),
        ("mL/min/1.73m2", "mL/min/{1.73_m2}"),
        ("parsecs", None),
        ("", None),
    ],
)
def test_unit_text_to_ucum(text: str, code: str | None) -> None:
    assert ucum(text) == code


def test_mixed_value_types() -> None:
    translation = run(load("mixed_types.hl7"))
    assert observation(translation, "HBsAg")["valueCodeableConcept"] == {
        "coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "阴性"}],
        "text": "阴性",
    }
    assert observation(translation, "HCV")["valueCodeableConcept"] == {"text": "阴性"}
    assert observation(translation, "HBsAb")["valueQuantity"] == {
        "value": 1000,
        "unit": "mIU/mL",
        "system": UCUM,
        "code": "m[IU]/mL",
        "comparator": ">",
    }
    hbeag = observation(translation, "HBeAg")["valueQuantity"]
    assert (hbeag["comparator"], hbeag["value"], hbeag["code"]) == ("<", 0.05, "{s_co_ratio}")
    assert observation(translation, "TPPA")["valueRatio"] == {
        "numerator": {"value": 1},
        "denominator": {"value": 40},
    }
    urine = observation(translation, "U-RBC")["valueRange"]
    assert urine["low"] == {"value": 1, "unit": "/HP", "system": UCUM, "code": "/[HPF]"}
    assert urine["high"]["value"] == 3
    assert observation(translation, "ABO")["valueString"] == "A型"
    assert observation(translation, "COMMENT")["valueString"] == "第一行说明\n第二行说明"
    assert observation(translation, "MORPH")["valueString"] == (
        "红细胞大小不等\n可见少量靶形红细胞\n血小板散在分布"
    )
    assert observation(translation, "ESC")["valueString"] == "A|B^C&D~E\\F"


def test_numeric_value_with_comparator_is_accepted_with_a_warning() -> None:
    translation = run(load("mixed_types.hl7"))
    crp = observation(translation, "CRP")["valueQuantity"]
    assert crp["comparator"] == "<" and crp["value"] == 0.5 and crp["code"] == "mg/L"
    assert any("OBX[10]-5" in w and "<0.5" in w for w in translation.warnings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3.5-9.5", {"low": 3.5, "high": 9.5}),
        ("3.9～6.1", {"low": 3.9, "high": 6.1}),
        ("3.9~6.1", {"low": 3.9, "high": 6.1}),
        ("4.0－6.0", {"low": 4.0, "high": 6.0}),
        ("０.５-１.５", {"low": 0.5, "high": 1.5}),
        ("-3~3", {"low": -3, "high": 3}),
        ("<5", {"high": 5}),
        ("≤5", {"high": 5}),
        (">1.0", {"low": 1.0}),
        ("≥90", {"low": 90}),
        ("阴性", {}),
        ("<9 mcg/dL: Acceptable", {}),
    ],
)
def test_reference_ranges(text: str, expected: dict[str, float]) -> None:
    result = reference_range(text, Unit("mmol/L", "mmol/L"))
    assert result is not None
    assert result["text"] == text
    for key in ("low", "high"):
        if key in expected:
            assert result[key] == {
                "value": expected[key],
                "unit": "mmol/L",
                "system": UCUM,
                "code": "mmol/L",
            }
        else:
            assert key not in result


def test_reference_range_in_message_has_the_value_unit() -> None:
    translation = run(load("chem_utf8.hl7"))
    glu = observation(translation, "GLU")
    assert glu["referenceRange"][0]["low"]["code"] == "mmol/L"
    assert (
        glu["referenceRange"][0]["low"]["value"],
        glu["referenceRange"][0]["high"]["value"],
    ) == (
        3.9,
        6.1,
    )
    hcv = observation(run(load("mixed_types.hl7")), "HCV")
    assert hcv["referenceRange"] == [{"text": "阴性"}]


@pytest.mark.parametrize(
    ("code", "flag", "expected"),
    [
        ("WBC", "H", "H"),
        ("LYMPH%", "L", "L"),
        ("NEUT#", "↑", "H"),
        ("PCT", "↓", "L"),
    ],
)
def test_interpretation_flags(code: str, flag: str, expected: str) -> None:
    result = observation(run(load("cbc_gbk.hl7")), code)
    assert result["interpretation"] == [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                    "code": expected,
                    "display": {"H": "High", "L": "Low"}[expected],
                }
            ],
            "text": flag,
        }
    ]
    assert "interpretation" not in observation(run(load("cbc_gbk.hl7")), "MONO%")


def test_interpretation_positive_negative_and_unknown_flags() -> None:
    mixed = run(load("mixed_types.hl7"))
    assert observation(mixed, "TPPA")["interpretation"][0]["coding"][0]["code"] == "POS"
    assert observation(mixed, "HCV")["interpretation"][0]["coding"][0]["code"] == "NEG"
    payload = utf8_message(MSH_251, PID_OK, OBR_OK, "OBX|1|NM|GLU^葡萄糖^L||5.6|mmol/L||*|||F")
    assert resources(run(payload), "Observation")[0]["interpretation"] == [{"text": "*"}]


# ---------------------------------------------------------------- times


def test_time_without_zone_gets_the_feed_zone_and_explicit_zone_is_kept() -> None:
    translation = run(load("chem_utf8.hl7"))
    assert observation(translation, "ALT")["effectiveDateTime"] == "2024-03-05T07:45:00+08:00"
    assert observation(translation, "CREA")["effectiveDateTime"] == "2024-03-05T07:45:00-05:00"
    tokyo = FEED.model_copy(update={"timezone": "Asia/Tokyo"})
    shifted = run(load("chem_utf8.hl7"), feed=tokyo)
    assert observation(shifted, "ALT")["effectiveDateTime"] == "2024-03-05T07:45:00+09:00"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024", "2024"),
        ("202403", "2024-03"),
        ("20240305", "2024-03-05"),
        ("2024030508", "2024-03-05T08:00:00+08:00"),
        ("202403050830", "2024-03-05T08:30:00+08:00"),
        ("20240305083015.123", "2024-03-05T08:30:15.123+08:00"),
        ("20240305083015-0500", "2024-03-05T08:30:15-05:00"),
        ("20240305+0800", "2024-03-05"),
    ],
)
def test_timestamp_precision(value: str, expected: str) -> None:
    payload = utf8_message(MSH_251, PID_OK, f"OBR|1|AP1|XS1|GLU^血糖^L|||{value}", OBX_OK)
    assert resources(run(payload), "DiagnosticReport")[0]["effectiveDateTime"] == expected


@pytest.mark.parametrize("value", ["20240230", "2024130108", "20240305256000", "2024-03-05"])
def test_invalid_timestamp_names_the_field(value: str) -> None:
    payload = utf8_message(MSH_251, PID_OK, f"OBR|1|AP1|XS1|GLU^血糖^L|||{value}", OBX_OK)
    with pytest.raises(ContentError) as caught:
        run(payload)
    assert caught.value.location == "OBR-7"
    assert caught.value.hl7_code == "102"
    assert "OBR-7" in caught.value.reason and value in caught.value.reason


# ---------------------------------------------------------------- codes


def test_mapped_code_puts_loinc_first() -> None:
    translation = run(load("cbc_gbk.hl7"))
    wbc = observation(translation, "WBC")
    assert wbc["code"]["coding"] == [
        {
            "system": LOINC,
            "code": "6690-2",
            "display": "Leukocytes [#/volume] in Blood by Automated count",
        },
        {"system": LOCAL, "code": "WBC", "display": "白细胞计数"},
    ]
    assert wbc["code"]["text"] == "白细胞计数"
    assert "meta" not in wbc
    assert wbc["category"][0]["coding"][0]["code"] == "laboratory"


def test_unmapped_code_is_tagged_and_reported_once() -> None:
    translation = run(load("cbc_gbk.hl7"))
    plcr = observation(translation, "P-LCR")
    assert plcr["meta"]["tag"] == [
        {
            "system": "https://yijian-hub.org/fhir/CodeSystem/ingest",
            "code": "unmapped-code",
            "display": "Local code not mapped to LOINC",
        }
    ]
    assert plcr["code"]["coding"] == [
        {"system": LOCAL, "code": "P-LCR", "display": "大型血小板比率"}
    ]
    assert [(u.system, u.code, u.display, u.unit) for u in translation.unmapped] == [
        (LOCAL, "P-LCR", "大型血小板比率", "%")
    ]
    unmapped = run(load("cbc_gbk.hl7"), codes=NO_CODES).unmapped
    assert len(unmapped) == 22 and len({u.code for u in unmapped}) == 22


def test_alternate_loinc_coding_counts_as_mapped() -> None:
    payload = utf8_message(
        MSH_251, PID_OK, OBR_OK, "OBX|1|NM|X-GLU^血糖^L^14749-6^Glucose^LN||5.6|mmol/L|||||F"
    )
    translation = run(payload)
    result = resources(translation, "Observation")[0]
    assert result["code"]["coding"][0] == {"system": LOINC, "code": "14749-6", "display": "Glucose"}
    assert result["code"]["coding"][1]["system"] == LOCAL
    assert "meta" not in result and translation.unmapped == []


def test_public_nist_sample_with_loinc_codes() -> None:
    translation = run(load("public/nist_elr_lead.hl7"))
    lead = resources(translation, "Observation")[0]
    assert lead["code"]["coding"] == [
        {"system": LOINC, "code": "10368-9", "display": "Lead BldC-mCnc"}
    ]
    assert lead["valueQuantity"] == {"value": 50, "unit": "ug/dL", "system": UCUM, "code": "ug/dL"}
    assert lead["effectiveDateTime"] == "2008-08-15T10:30:00-07:00"
    assert lead["referenceRange"] == [{"text": "<9 mcg/dL:  Acceptable background lead exposure"}]
    specimen = resources(translation, "Specimen")[0]
    assert specimen["identifier"][0]["value"] == "9700123"  # no SPM-2: the filler number
    assert specimen["type"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "122554006",
        "display": "Capillary blood specimen",
    }
    assert translation.unmapped == []
    stool = run(load("public/nist_elr_stool.hl7"))
    assert [r["valueString"] for r in resources(stool, "Observation")] == [
        "Isolated",
        "Isolated",
        "Not Isolated",
    ]
    # no ORC-2/OBR-2: the ServiceRequest is keyed on the filler number
    request_url = entry_of(stool, "ServiceRequest")["request"]["url"]
    assert request_url == f"ServiceRequest?identifier={SID}/filler|2233817"


# ---------------------------------------------------------------- imaging


def test_imaging_report_keeps_text_as_the_report() -> None:
    translation = run(load("ris_report.hl7"))
    assert resources(translation, "Observation") == []
    assert resources(translation, "Specimen") == []
    report = resources(translation, "DiagnosticReport")[0]
    assert report["conclusion"] == (
        "1. 右肺上叶磨玻璃结节，建议6个月后复查。\n2. 余胸部CT平扫未见明显异常。"
    )
    form = report["presentedForm"][0]
    assert form["contentType"] == "text/plain; charset=utf-8"
    assert form["language"] == "zh-CN"
    assert form["title"] == "胸部CT平扫"
    text = base64.b64decode(form["data"]).decode("utf-8")
    assert text.startswith("检查所见:\n胸廓对称，气管居中。\n右肺上叶尖段")
    assert "纵隔内未见肿大淋巴结" in text
    assert "诊断意见:\n1. 右肺上叶磨玻璃结节" in text
    assert report["category"] == [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "CT"}]},
        {"coding": [{"system": LOINC, "code": "LP29684-5", "display": "Radiology"}]},
    ]
    assert report["resultsInterpreter"] == [{"display": "赵磊"}]
    accession = {
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
        },
        "system": f"{SID}/accession",
        "value": "CT20240306000321",
    }
    assert accession in report["identifier"]
    assert accession in resources(translation, "ServiceRequest")[0]["identifier"]
    assert "imagingStudy" not in report


def test_imaging_by_feed_option_and_accession_field() -> None:
    feed = FEED.model_copy(update={"options": {"kind": "imaging", "accession_field": "OBR-3"}})
    payload = utf8_message(
        MSH_251,
        PID_OK,
        "OBR|1|AP9|US20240301|USABD^腹部彩超^L|||20240301090000",
        "OBX|1|TX|^超声所见^L||肝脏大小形态正常||||||F",
        "OBX|2|TX|^超声提示^L||肝胆未见明显异常||||||F",
        "OBX|3|TX|IMPRESSION^Impression^L||No abnormality||||||F",
    )
    report = resources(run(payload, feed=feed), "DiagnosticReport")[0]
    assert {"system": f"{SID}/accession", "value": "US20240301"} == {
        k: report["identifier"][1][k] for k in ("system", "value")
    }
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["conclusion"] == "No abnormality"
    assert "肝脏大小形态正常" in base64.b64decode(report["presentedForm"][0]["data"]).decode()


def test_bad_accession_field_option_is_a_content_error() -> None:
    feed = FEED.model_copy(update={"options": {"accession_field": "PID-3"}})
    with pytest.raises(ContentError) as caught:
        run(load("ris_report.hl7"), feed=feed)
    assert "accession_field" in caught.value.reason


# ---------------------------------------------------------------- FHIR validity


@pytest.mark.parametrize(
    "name",
    [
        "cbc_gbk.hl7",
        "chem_utf8.hl7",
        "mixed_types.hl7",
        "correction.hl7",
        "preliminary.hl7",
        "cancelled.hl7",
        "ris_report.hl7",
        "v23_minimal.hl7",
        "public/nist_elr_lead.hl7",
        "public/nist_elr_stool.hl7",
    ],
)
def test_every_resource_validates(name: str) -> None:
    translation = run(load(name))
    get_fhir_model_class("Bundle").model_validate(translation.bundle)
    for entry in translation.bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


# ---------------------------------------------------------------- content errors and rejects


@pytest.mark.parametrize(
    ("name", "error", "location", "hl7_code"),
    [
        ("no_pid.hl7", ContentError, "PID", "100"),
        ("bad_nm.hl7", ContentError, "OBX[3]-5", "102"),
        ("truncated.hl7", ContentError, "OBX[1]", "100"),
        ("adt.hl7", Rejected, "MSH-9", "200"),
    ],
)
def test_malformed_messages(name: str, error: type, location: str, hl7_code: str) -> None:
    with pytest.raises(error) as caught:
        run(load(name))
    assert caught.value.location == location
    assert caught.value.hl7_code == hl7_code


def test_bad_numeric_reason_is_actionable() -> None:
    with pytest.raises(ContentError) as caught:
        run(load("bad_nm.hl7"))
    assert "'abc'" in caught.value.reason and "NM" in caught.value.reason


def test_unsupported_versions_and_lenient_26() -> None:
    old = utf8_message(MSH_251.replace("|2.5.1|", "|2.2|"), PID_OK, OBR_OK, OBX_OK)
    with pytest.raises(Rejected) as caught:
        run(old)
    assert caught.value.hl7_code == "203" and "2.2" in caught.value.reason
    newer = run(utf8_message(MSH_251.replace("|2.5.1|", "|2.6|"), PID_OK, OBR_OK, OBX_OK))
    assert any("2.6" in w for w in newer.warnings)
    other_event = utf8_message(MSH_251.replace("ORU^R01^ORU_R01", "ORU^R30"), PID_OK, OBR_OK)
    with pytest.raises(Rejected) as caught:
        run(other_event)
    assert "ORU^R30" in caught.value.reason and caught.value.hl7_code == "201"


@pytest.mark.parametrize(
    ("segments", "location", "hl7_code", "words"),
    [
        ([PID_OK, "OBX|1|NM|GLU||5.6"], "OBX[1]", "100", "before any OBR"),
        ([PID_OK], "OBR", "100", "no OBR"),
        (["PID|1||^^^SYRMYY||王芳", OBR_OK, OBX_OK], "PID-3", "101", "PID-3"),
        (["PID|1||123^^^OTHERHOSP^MR||王芳", OBR_OK, OBX_OK], "PID-3", "103", "'OTHERHOSP'"),
        (["PID|1||330102198603140021^^^SFZ||王芳", OBR_OK, OBX_OK], "PID-3", "102", "check"),
        ([PID_OK, "OBR|1|AP1||GLU^血糖^L", OBX_OK], "OBR-3", "101", "filler"),
        ([PID_OK, "OBR|1|AP1|XS1", OBX_OK], "OBR-4", "101", "OBR-4"),
        ([PID_OK, OBR_OK, "OBX|1|NM|^葡萄糖||5.6"], "OBX[1]-3", "101", "OBX-3.1"),
        ([PID_OK, OBR_OK, OBX_OK, OBX_OK], "OBX[2]-4", "205", "sub-id"),
        ([PID_OK, OBR_OK, OBX_OK, OBR_OK.replace("AP1", "AP2")], "OBR[2]-3", "205", "XS1"),
        ([PID_OK, OBR_OK, "OBX|1|SN|GLU^葡萄糖||^x^-^3"], "OBX[1]-5", "102", "SN"),
        (["PID|1||001^^^SYRMYY||王芳||19860230", OBR_OK, OBX_OK], "PID-7", "102", "PID-7"),
    ],
)
def test_content_errors(segments: list[str], location: str, hl7_code: str, words: str) -> None:
    with pytest.raises(ContentError) as caught:
        run(utf8_message(MSH_251, *segments))
    assert caught.value.location == location
    assert caught.value.hl7_code == hl7_code
    assert words in caught.value.reason
    assert caught.value.ack_code is AckCode.ERROR


def test_invalid_resident_id_is_masked_in_the_reason() -> None:
    payload = utf8_message(MSH_251, "PID|1||330102198603140021^^^SFZ||王芳", OBR_OK, OBX_OK)
    with pytest.raises(ContentError) as caught:
        run(payload)
    assert "330102198603140021" not in caught.value.reason
    assert "3301**********0021" in caught.value.reason


# ---------------------------------------------------------------- acknowledgements


def ack_segments(ack: bytes, encoding: str = "utf-8") -> list[list[str]]:
    text = ack.decode(encoding)
    assert text.endswith("\r") and "\n" not in text
    return [segment.split("|") for segment in text.rstrip("\r").split("\r")]


def test_accept_ack_v24() -> None:
    payload = load("cbc_gbk.hl7")
    header = translator.header(payload)
    ack = translator.acknowledge(payload, header, AckCode.ACCEPT, None, encoding="gbk")
    msh, msa = ack_segments(ack, "gbk")
    assert msh[2:6] == ["YIJIAN", "YIJIAN-HUB", "LIS", "SYRMYY"]
    assert msh[8] == "ACK^R01^ACK"
    assert msh[9] and msh[9] != header.control_id
    assert msh[10:12] == ["P", "2.4"]
    assert len(msh[6]) == 19 and msh[6].endswith("+0800")
    assert msa == ["MSA", "AA", "LIS20240305000123"]
    parsed = hl7.parse(ack.decode("gbk"))
    assert str(parsed.segment("MSA")[2]) == "LIS20240305000123"


def test_ack_control_ids_are_unique() -> None:
    payload = load("cbc_gbk.hl7")
    header = translator.header(payload)
    ids = {
        ack_segments(translator.acknowledge(payload, header, AckCode.ACCEPT, None))[0][9]
        for _ in range(50)
    }
    assert len(ids) == 50 and all(len(i) == 20 for i in ids)


def test_error_ack_v251_has_err_with_location_and_reason() -> None:
    payload = load("bad_nm.hl7")
    header = translator.header(payload)
    with pytest.raises(ContentError) as caught:
        run(payload)
    ack = translator.acknowledge(payload, header, AckCode.ERROR, caught.value)
    msh, msa, err = ack_segments(ack)
    assert msh[8] == "ACK^R01^ACK" and msh[11] == "2.5.1" and msh[17] == "UNICODE UTF-8"
    assert msa[:3] == ["MSA", "AE", "LIS20240305000997"]
    assert "abc" in msa[3]
    assert err[1] == ""
    assert err[2] == "OBX^3^5"
    assert err[3] == "102^Data type error^HL70357"
    assert err[4] == "E"
    assert "OBX-2 says NM" in err[8]
    parsed = hl7.parse(ack.decode())
    assert str(parsed.segment("ERR")[3][0][0]) == "102"
    assert str(parsed.segment("MSA")[1]) == "AE"


def test_error_ack_v23_uses_err_1() -> None:
    payload = load("v23_minimal.hl7")
    header = translator.header(payload)
    error = ContentError("OBR-4 is empty", location="OBR-4", hl7_code="101")
    ack = translator.acknowledge(payload, header, AckCode.ERROR, error, encoding="gbk")
    msh, msa, err = ack_segments(ack, "gbk")
    assert msh[8] == "ACK^R01"
    assert msa == ["MSA", "AE", "0000123", "OBR-4 is empty"]
    assert err == ["ERR", "OBR^1^4^101&Required field missing&HL70357"]
    parsed = hl7.parse(ack.decode("gbk"))
    assert str(parsed.segment("ERR")[1][0][3][0]) == "101"


def test_reject_ack_escapes_delimiters_in_the_reason() -> None:
    payload = load("adt.hl7")
    header = translator.header(payload)
    error = Rejected("type A|B^C is bad & wrong", location="MSH-9", hl7_code="200")
    ack = translator.acknowledge(payload, header, AckCode.REJECT, error, encoding="utf-8")
    msh, msa, err = ack_segments(ack)
    assert msh[8] == "ACK^R01^ACK"
    assert msa[1:3] == ["AR", "HIS20240305000001"]
    assert msa[3] == "type A\\F\\B\\S\\C is bad \\T\\ wrong"
    assert err[2] == "MSH^1^9" and err[3].startswith("200^Unsupported message type")
    parsed = hl7.parse(ack.decode())
    assert len(parsed.segment("MSA")) == 4  # the escaped | did not add a field


def test_ack_for_an_unparseable_message() -> None:
    payload = b"garbage without a header"
    with pytest.raises(Rejected) as caught:
        translator.header(payload)
    ack = translator.acknowledge(payload, None, AckCode.REJECT, caught.value)
    msh, msa, err = ack_segments(ack)
    assert msh[2:4] == ["YIJIAN", "YIJIAN-HUB"] and msh[8] == "ACK" and msh[11] == "2.5.1"
    assert msa[:3] == ["MSA", "AR", ""]
    assert "no MSH" in msa[3]
    assert err[2] == "MSH^1" and err[3].startswith("100^")
    assert str(hl7.parse(ack.decode()).segment("MSA")[1]) == "AR"


def test_ack_encoding_replaces_unencodable_characters() -> None:
    payload = load("v23_minimal.hl7")  # no MSH-18: the feed's encoding decides
    header = translator.header(payload)
    error = ContentError("值 😀 无效", location="OBX[1]-5", hl7_code="102")
    ack = translator.acknowledge(payload, header, AckCode.ERROR, error, encoding="ascii")
    assert ack.isascii()
    assert f"MSA|AE|{header.control_id}|? ? ??\r".encode() in ack


def test_ack_is_encoded_as_the_messages_msh18_says() -> None:
    payload = load("chem_utf8.hl7")  # MSH-18 UNICODE UTF-8
    header = translator.header(payload)
    error = ContentError("值 无效", location="OBX[1]-5", hl7_code="102")
    ack = translator.acknowledge(payload, header, AckCode.ERROR, error, encoding="gbk")
    assert "值 无效" in ack.decode("utf-8")


def test_mutated_messages_are_translated_or_refused_never_crash() -> None:
    """Thousands of damaged versions of the sample messages (delimiters and line ends
    inserted, bytes changed or cut, pieces repeated): each is translated or refused with an
    IngestError, and an ACK can always be built. Deterministic (fixed seed)."""
    import random

    samples = [p.read_bytes() for p in sorted(MESSAGES.rglob("*.hl7"))]
    feed = FeedConfig(
        feed="fuzz",
        organization="org-fuzz",
        sending_facility="SYRMYY",
        encoding="gbk",
        identifiers={"SYRMYY": "mrn", "SFZ": "resident-id"},
    )
    codes = CodeMap.empty(feed.local_code_system)
    rng = random.Random(20261122)
    outcomes = {"translated": 0, "refused": 0}
    for _ in range(3000):
        message = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(message)) if message else 0
            roll = rng.random()
            if roll < 0.3 and message:
                message[at] = rng.choice(b"|^~\\&\r\n\x00\xff\xe4A0.-+ ")
            elif roll < 0.5:
                message[at:at] = bytes([rng.choice(b"|^~\\&\r")]) * rng.randint(1, 5)
            elif roll < 0.7 and message:
                del message[at : at + rng.randint(1, 30)]
            else:
                message[at:at] = message[rng.randrange(len(message)) :][: rng.randint(1, 60)]
        payload = bytes(message)
        header = None
        try:
            header = translator.header(payload)
            translator.translate(payload, header, feed, codes)
            outcomes["translated"] += 1
            ack = translator.acknowledge(payload, header, AckCode.ACCEPT, None)
        except IngestError as error:
            outcomes["refused"] += 1
            ack = translator.acknowledge(payload, header, error.ack_code, error)
        assert ack.startswith(b"MSH|")
    assert outcomes["translated"] > 100 and outcomes["refused"] > 100  # both paths exercised


def test_a_result_in_another_unit_than_the_map_says_is_not_given_the_maps_loinc() -> None:
    """Glucose mapped to 14749-6 (mmol/L): a result sent in mg/dL must not carry that LOINC
    or the UCUM code mmol/L; it keeps its local code and its own unit, tagged unmapped."""
    assert CODES.get("GLU") is not None and CODES.get("GLU").unit == "mmol/L"  # type: ignore[union-attr]
    translation = run(
        utf8_message(
            MSH_251,
            PID_OK,
            "OBR|1||F-UNIT|GLU^葡萄糖|||20261120083000||||||||||||||20261120090000||LAB|F",
            "OBX|1|NM|GLU^葡萄糖||126|mg/dL|70-110|H|||F",
            "OBX|2|NM|K^钾||4.1|mmol/L|3.5-5.3|N|||F",
        )
    )
    glucose = observation(translation, "GLU")
    assert [c["system"] for c in glucose["code"]["coding"]] == [FEED.local_code_system]
    assert glucose["valueQuantity"]["unit"] == "mg/dL"
    assert glucose["valueQuantity"].get("code") in (None, "mg/dL")
    assert glucose["meta"]["tag"][0]["code"] == "unmapped-code"
    assert any("mg/dL" in w for w in translation.warnings)
    potassium = observation(translation, "K")  # the same unit as the map: mapped as usual
    assert potassium["code"]["coding"][0]["system"] == "http://loinc.org"
