"""HL7 v2 results over MLLP, end to end: a real ``yijian mllp`` process, the ``hl7`` package's
MLLP client, the feed configured by a YAML file (GBK) or by ``yijian feeds add`` (UTF-8), and
what a doctor then finds through FHIR."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.access_support import order_by_identifier
from tests.conftest import Client, HubUnderTest
from tests.identity_support import mrn_system
from tests.ingest_support import Listener, ack_fields, env_without_broker, send, wait_for
from tests.oru import CBC, CHEMISTRY, Person, oru

RESIDENT_ID = "https://yijian-hub.org/fhir/sid/resident-id"
CONCEPT_MAP = "fhir_profiles/conceptmaps/demo-lis.json"


@pytest.fixture(scope="module")
def feeds(hub: HubUnderTest) -> dict[str, str]:
    """H-A's LIS from a feed file (GBK) naming the demo code map, H-B's from the CLI (UTF-8)
    with the same map imported by ``yijian codes import``."""
    (hub.adapters_dir / "h-a-lis.yaml").write_text(
        yaml.safe_dump(
            {
                "feed": "h-a-lis",
                "organization": hub.org_a,
                "name": "杭州市第一人民医院 LIS",
                "sending_facility": "H-A",
                "encoding": "gbk",
                "identifiers": {"H-A": "mrn", "SFZ": "resident-id"},
                "code_map": "demo-lis.json",  # imported by the hub from fhir_profiles
            },
            allow_unicode=True,
        ),
        encoding="utf-8",
    )
    hub.cli(
        "feeds", "add", "--organization", hub.org_b, "--sending-facility", "H-B",
        "--feed", "h-b-lis", "--authority", "H-B=mrn", "--authority", "SFZ=resident-id",
    )  # fmt: skip
    hub.cli("codes", "import", "h-b-lis", CONCEPT_MAP)
    return {"a": "h-a-lis", "b": "h-b-lis"}


@pytest.fixture(scope="module")
def listener(hub: HubUnderTest, feeds: dict[str, str], tmp_path_factory: Any) -> Iterator[Listener]:
    server = Listener(env_without_broker(hub.env))
    server.log = tmp_path_factory.mktemp("mllp") / "mllp.log"
    server.start()
    yield server
    server.stop()


def person(**overrides: Any) -> Person:
    fields = {
        "mrn": "M" + uuid.uuid4().hex[:8],
        "name": "王芳",
        "gender": "F",
        "birth": "19860314",
        "resident_id": "330102198603140020",
        "phone": "13905710001",
    }
    return Person(**{**fields, **overrides})


def control() -> str:
    return "C" + uuid.uuid4().hex[:16]


def observations(client: Client, **query: str) -> list[dict[str, Any]]:
    bundle = client.get("/Observation", params={"_count": "200", **query}).json()
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_gbk_message_is_acknowledged_after_commit_and_found_by_a_doctor(
    hub: HubUnderTest, listener: Listener, doctor: Client
) -> None:
    filler = "F" + uuid.uuid4().hex[:10]
    someone = person(name="张伟", gender="M")
    message = oru(control(), "H-A", someone, filler, encoding="gbk")
    code, control_id, error = ack_fields(send(listener.port, message), "gbk")
    assert (code, error) == ("AA", ""), error
    assert control_id == message.split(b"|")[9].decode()
    # The doctor orders for the patient, known by hospital A's MRN (a purpose of use).
    order_by_identifier(doctor, f"{mrn_system(hub.org_a)}|{someone.mrn}")
    found = observations(doctor, identifier=f"{_result_system(hub.org_a)}|{filler}:HGB:")
    assert len(found) == 1
    hgb = found[0]
    assert hgb["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "718-7",
        "display": hgb["code"]["coding"][0].get("display"),
    }
    assert hgb["code"]["text"] == "血红蛋白"  # decoded from GBK
    assert hgb["valueQuantity"]["value"] == 118
    assert hgb["valueQuantity"]["unit"] == "g/L"
    assert hgb["status"] == "final"
    assert hgb["effectiveDateTime"].startswith("2026-11-20T08:30:00+08:00")


def _result_system(org: str) -> str:
    return f"https://yijian-hub.org/fhir/sid/org/{org}/result"


def test_one_person_at_two_hospitals_is_found_by_resident_id(
    hub: HubUnderTest, listener: Listener, doctor: Client
) -> None:
    resident_id = "110101199003070011"  # GB 11643-valid
    someone = person(name="刘洋", gender="M", birth="19900307", resident_id=resident_id)
    filler_a, filler_b = "FA" + uuid.uuid4().hex[:8], "FB" + uuid.uuid4().hex[:8]
    a = oru(control(), "H-A", someone, filler_a, encoding="gbk")
    b = oru(control(), "H-B", person(name="刘洋", gender="M", birth="19900307",
                                     resident_id=resident_id), filler_b, CHEMISTRY)  # fmt: skip
    assert ack_fields(send(listener.port, a), "gbk")[0] == "AA"
    assert ack_fields(send(listener.port, b))[0] == "AA"
    order_by_identifier(doctor, f"{RESIDENT_ID}|{resident_id}")  # ordering for the person
    found = observations(doctor, **{"patient.identifier": f"{RESIDENT_ID}|{resident_id}"})
    performers = {o["performer"][0]["reference"] for o in found}
    assert performers == {f"Organization/{hub.org_a}", f"Organization/{hub.org_b}"}
    assert len(found) == len(CBC) + len(CHEMISTRY)


def test_a_resent_message_is_acknowledged_again_and_not_stored_twice(
    hub: HubUnderTest, listener: Listener, hospital_b: Client
) -> None:
    filler = "F" + uuid.uuid4().hex[:10]
    message = oru(control(), "H-B", person(), filler)
    first = send(listener.port, message)
    second = send(listener.port, message)
    assert ack_fields(first)[0] == ack_fields(second)[0] == "AA"
    assert first == second  # the stored acknowledgement, byte for byte
    found = observations(hospital_b, identifier=f"{_result_system(hub.org_b)}|{filler}:WBC:")
    assert len(found) == 1
    assert found[0]["meta"]["versionId"] == "1"


def test_the_same_control_id_for_another_message_is_refused(listener: Listener) -> None:
    control_id = control()
    assert (
        ack_fields(send(listener.port, oru(control_id, "H-B", person(), "F1" + control_id)))[0]
        == "AA"
    )
    code, _, error = ack_fields(send(listener.port, oru(control_id, "H-B", person(), "F2")))
    assert code == "AE"
    assert "already used" in error


def test_a_correction_is_a_new_version_of_the_same_observation(
    hub: HubUnderTest, listener: Listener, hospital_b: Client
) -> None:
    filler = "F" + uuid.uuid4().hex[:10]
    someone = person()
    assert ack_fields(send(listener.port, oru(control(), "H-B", someone, filler)))[0] == "AA"
    corrected = tuple((c, n, "128" if c == "HGB" else v, u, r, f) for c, n, v, u, r, f in CBC)
    message = oru(control(), "H-B", someone, filler, corrected, status="C")
    assert ack_fields(send(listener.port, message))[0] == "AA"
    found = observations(hospital_b, identifier=f"{_result_system(hub.org_b)}|{filler}:HGB:")
    assert len(found) == 1
    assert found[0]["status"] == "corrected"
    assert found[0]["valueQuantity"]["value"] == 128
    assert found[0]["meta"]["versionId"] == "2"
    history = hospital_b.get(f"/Observation/{found[0]['id']}/_history").json()
    assert [e["resource"]["valueQuantity"]["value"] for e in history["entry"]] == [128, 118]


def test_refusals_name_the_reason_and_the_connection_keeps_working(
    listener: Listener, admin: Client, hub: HubUnderTest
) -> None:
    from hl7.client import MLLPClient

    good = oru(control(), "H-B", person(), "F" + uuid.uuid4().hex[:10])
    no_pid = b"\r".join(s for s in good.split(b"\r") if not s.startswith(b"PID")).replace(
        good.split(b"|")[9], b"NOPID-" + uuid.uuid4().hex[:6].encode()
    )
    unknown = oru(control(), "NO-SUCH-HOSPITAL", person(), "F9")
    client = MLLPClient("127.0.0.1", listener.port)
    try:
        answers = [
            ack_fields(client.send_message(m).strip(b"\x0b\x1c\r"))
            for m in (b"this is not HL7", no_pid, unknown, good[: len(good) // 2], good)
        ]
    finally:
        client.close()
    assert answers[0][0] == "AR"
    assert answers[1][0] == "AE" and "PID" in answers[1][2]
    assert answers[2][0] == "AR" and "NO-SUCH-HOSPITAL" in answers[2][2]
    assert answers[3][0] in ("AE", "AR")  # truncated mid-segment
    assert answers[4][0] == "AA"  # the same connection, after all of that
    letters = hub_admin_json(hub, admin, "/admin/dead-letters?status=all&limit=1000")
    errors = {letter["control_id"]: letter for letter in letters["dead_letters"]}
    no_pid_id = no_pid.split(b"|")[9].decode()
    assert errors[no_pid_id]["ack_code"] == "AE"
    assert errors[no_pid_id]["feed"] == "h-b-lis"
    detail = hub_admin_json(hub, admin, f"/admin/dead-letters/{errors[no_pid_id]['id']}")
    assert detail["payload_base64"]  # the raw bytes are kept


def hub_admin_json(hub: HubUnderTest, admin: Client, path: str) -> Any:
    response = admin.http.get(hub.base_url + path)
    assert response.status_code == 200, response.text
    return response.json()


def test_listener_killed_mid_stream_loses_nothing_acknowledged_and_duplicates_nothing(
    hub: HubUnderTest, listener: Listener, hospital_b: Client
) -> None:
    """Senders resend whatever was not acknowledged (as LIS interfaces do) while the
    listener is killed and restarted; every message ends acknowledged, stored once."""
    import time

    senders, per_sender = 4, 15
    batch = uuid.uuid4().hex[:6]
    messages = [
        [
            oru(f"K{batch}-{s}-{i}", "H-B", person(mrn=f"K{batch}{s}"), f"K{batch}-{s}-{i}")
            for i in range(per_sender)
        ]
        for s in range(senders)
    ]
    acknowledged: list[str] = []
    lock = threading.Lock()

    def run(batch_messages: list[bytes]) -> None:
        for message in batch_messages:
            for _attempt in range(200):
                try:
                    code, control_id, _ = ack_fields(send(listener.port, message, timeout=10))
                except (TimeoutError, OSError, ValueError, IndexError):
                    time.sleep(0.2)
                    continue
                assert code == "AA"
                with lock:
                    acknowledged.append(control_id)
                break

    threads = [threading.Thread(target=run, args=(m,)) for m in messages]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: len(acknowledged) >= 10, timeout=60)
    listener.kill()
    time.sleep(0.5)
    listener.start()
    for thread in threads:
        thread.join(timeout=180)
    assert sorted(acknowledged) == sorted(
        f"K{batch}-{s}-{i}" for s in range(senders) for i in range(per_sender)
    )
    for s in range(senders):
        for i in range(per_sender):
            found = observations(
                hospital_b, identifier=f"{_result_system(hub.org_b)}|K{batch}-{s}-{i}:WBC:"
            )
            assert len(found) == 1, f"K{batch}-{s}-{i}"


def test_the_same_message_on_many_connections_at_once_is_stored_once(
    hub: HubUnderTest, listener: Listener, hospital_b: Client
) -> None:
    filler = "F" + uuid.uuid4().hex[:10]
    message = oru(control(), "H-B", person(), filler)
    answers: list[bytes] = []

    def deliver() -> None:
        answers.append(send(listener.port, message))

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 6
    assert {ack_fields(a)[0] for a in answers} == {"AA"}
    found = observations(hospital_b, identifier=f"{_result_system(hub.org_b)}|{filler}:PLT:")
    assert len(found) == 1
    assert found[0]["meta"]["versionId"] == "1"


def test_an_oversized_message_is_refused_and_the_connection_goes_on(
    hub: HubUnderTest, feeds: dict[str, str], tmp_path: Any, admin: Client
) -> None:
    from hl7.client import MLLPClient

    small = Listener({**env_without_broker(hub.env), "YIJIAN_MLLP_MAX_MESSAGE_BYTES": "4096"})
    small.log = tmp_path / "mllp.log"
    small.start()
    try:
        huge = oru(control(), "H-B", person(), "F" + uuid.uuid4().hex[:10], CBC * 40)
        assert len(huge) > 4096
        good = oru(control(), "H-B", person(), "F" + uuid.uuid4().hex[:10])
        client = MLLPClient("127.0.0.1", small.port)
        try:
            first = ack_fields(client.send_message(huge).strip(b"\x0b\x1c\r"))
            second = ack_fields(client.send_message(good).strip(b"\x0b\x1c\r"))
        finally:
            client.close()
        assert first[0] == "AR" and "4096" in first[2]
        assert second[0] == "AA"
        letters = json.loads(hub.cli("deadletter", "list", "--status", "all", "--json").stdout)
        kept = [x for x in letters if x["control_id"] == first[1]]
        assert len(kept) == 1
        detail = hub_admin_json(hub, admin, f"/admin/dead-letters/{kept[0]['id']}")
        assert base64.b64decode(detail["payload_base64"]) == huge[:4096]  # its beginning
    finally:
        small.stop()


def test_statistics_count_messages_resources_and_dead_letters_per_feed(
    hub: HubUnderTest, listener: Listener, admin: Client
) -> None:
    feed = "h-stats-" + uuid.uuid4().hex[:6]
    facility = feed.upper()
    hub.cli(
        "feeds", "add", "--organization", hub.org_b, "--sending-facility", facility,
        "--feed", feed, "--authority", f"{facility}=mrn", "--authority", "SFZ=resident-id",
    )  # fmt: skip
    wait_for(lambda: _feed_listed(hub, admin, feed), timeout=10)
    for _ in range(2):
        message = oru(control(), facility, person(), "F" + uuid.uuid4().hex[:10])
        assert ack_fields(send(listener.port, message))[0] == "AA"
    no_pid = b"\r".join(
        s for s in oru(control(), facility, person(), "F0").split(b"\r") if not s.startswith(b"PID")
    )
    assert ack_fields(send(listener.port, no_pid))[0] == "AE"
    rows = json.loads(hub.cli("feeds", "stats", "--json", "--feed", feed).stdout)
    assert [(r["messages"], r["resources"], r["errors"], r["dead_letters"]) for r in rows] == [
        (2, 2 * (4 + len(CBC)), 0, 1)
    ]
    api = hub_admin_json(hub, admin, f"/admin/ingest-statistics?feed={feed}")
    assert api["statistics"] == rows


def _feed_listed(hub: HubUnderTest, admin: Client, feed: str) -> bool:
    feeds = hub_admin_json(hub, admin, "/admin/feeds")["feeds"]
    return any(f["feed"] == feed for f in feeds)


def test_damaged_messages_each_get_an_acknowledgement_and_nothing_fails_inside(
    listener: Listener,
) -> None:
    """Damaged ORUs (cut, delimiters inserted, bytes changed) over one connection: each gets
    AA, AE or AR, and the listener logs no internal failure."""
    import random

    from hl7.client import MLLPClient

    rng = random.Random(7)
    client = MLLPClient("127.0.0.1", listener.port)
    codes = []
    try:
        for _ in range(120):
            message = bytearray(oru(control(), "H-B", person(), "FZ" + uuid.uuid4().hex[:8]))
            for _ in range(rng.randint(1, 4)):
                at = rng.randrange(len(message))
                roll = rng.random()
                if roll < 0.4:
                    message[at] = rng.choice(b"|^~\\&\r\x00\xe4A0.-")
                elif roll < 0.7:
                    del message[at : at + rng.randint(1, 20)]
                else:
                    message[at:at] = bytes([rng.choice(b"|^~\\&\r")]) * rng.randint(1, 4)
            payload = bytes(message).replace(b"\x1c", b"").replace(b"\x0b", b"")
            answer = _receive_all(client, client.send_message(payload))
            codes.append(ack_fields(answer.strip(b"\x0b\x1c\r"))[0])
    finally:
        client.close()
    assert set(codes) <= {"AA", "AE", "AR"} and len(codes) == 120
    assert {"AA", "AE"} <= set(codes)
    assert listener.log is not None
    assert "failed unexpectedly" not in listener.log.read_text("utf-8", "replace")


def _receive_all(client: Any, first: bytes) -> bytes:
    data = first
    while not data.endswith(b"\x1c\r"):
        more = client.socket.recv(65536)
        if not more:
            break
        data += more
    return data


def test_http_ingest_needs_a_token_that_may_write(hub: HubUnderTest, feeds: dict[str, str]) -> None:
    import httpx

    record = json.loads(
        hub.cli(
            "clients", "add", "--kind", "hospital", "--organization", hub.org_a,
            "--name", "read-only LIS", "--scope", "system/*.rs", "--json",
        ).stdout
    )  # fmt: skip
    token = hub.token(record["client_id"], record["client_secret"]).json()["access_token"]
    filler = "F" + uuid.uuid4().hex[:10]
    answer = httpx.post(
        f"{hub.base_url}/ingest/{feeds['a']}",
        content=oru(control(), "H-A", person(), filler, encoding="gbk"),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "x-application/hl7-v2+er7"},
    )
    assert answer.status_code == 403, answer.text
    assert "scopes" in answer.text


def test_a_result_in_another_unit_than_its_mapping_is_on_the_worklist(
    hub: HubUnderTest, listener: Listener, hospital_b: Client, admin: Client
) -> None:
    """The demo map gives GLU as LOINC 14749-6 in mmol/L; glucose sent in mg/dL must not be
    labelled with it, and the operator must see why the code still needs attention."""
    filler = "F" + uuid.uuid4().hex[:10]
    glucose = (("GLU", "葡萄糖", "126", "mg/dL", "70-110", "H"),)
    assert (
        ack_fields(send(listener.port, oru(control(), "H-B", person(), filler, glucose)))[0] == "AA"
    )
    found = observations(hospital_b, identifier=f"{_result_system(hub.org_b)}|{filler}:GLU:")
    assert [c["code"] for c in found[0]["code"]["coding"]] == ["GLU"]
    assert found[0]["valueQuantity"]["unit"] == "mg/dL"
    worklist = hub_admin_json(hub, admin, f"/admin/unmapped-codes?organization={hub.org_b}")
    row = next(r for r in worklist["unmapped"] if r["local_code"] == "GLU")
    assert "14749-6" in row["reason"] and "mg/dL" in row["reason"]


def test_ndjson_is_imported_in_transactions_and_a_second_import_stores_nothing_twice(
    hub: HubUnderTest, feeds: dict[str, str], hospital_a: Client, tmp_path: Any
) -> None:
    from tests.conftest import observation, patient

    patient_id = "nd" + uuid.uuid4().hex[:12]
    someone = {**patient(hub.org_a, "MRN-" + patient_id), "id": patient_id}
    results = [
        observation(hub.org_a, patient_id, code=code, value=value)
        for code, value in (("718-7", 13.1), ("6690-2", 6.2), ("777-3", 221))
    ]
    lines = [json.dumps(r, ensure_ascii=False) for r in (someone, *results)]
    good = tmp_path / "export.ndjson"
    good.write_text("\n".join(lines) + "\n", encoding="utf-8")
    first = hub.cli("import", "--feed", feeds["a"], str(good))
    assert "1 messages accepted, 0 refused" in first.stdout
    again = hub.cli("import", "--feed", feeds["a"], str(good))
    assert "1 messages accepted, 0 refused" in again.stdout
    found = hospital_a.get("/Observation", params={"subject": f"Patient/{patient_id}"}).json()
    assert len(found.get("entry", [])) == 3  # not 6: the second import was a replay
    broken = tmp_path / "broken.ndjson"
    broken.write_text(lines[0] + "\n{not json\n", encoding="utf-8")
    refused = hub.cli("import", "--feed", feeds["a"], str(broken), check=False)
    assert refused.returncode == 1
    assert "1 refused" in refused.stdout and "not JSON" in refused.stderr
