"""The ingest pipeline's long-running parts, as real processes: a ``yijian worker`` (Celery,
the embedded file broker in the hub's DATA_DIR) back-filling results when an unmapped local
code gets its mapping, a ``yijian mllp`` listener polling a feed's drop folder, ``yijian
import`` of a directory, and one message sent over MLLP and again over HTTP.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import YIJIAN, Client, HubUnderTest
from tests.ingest_support import Listener, ack_fields, env_without_broker, send, wait_for
from tests.oru import Person, oru

HL7 = {"Content-Type": "x-application/hl7-v2+er7"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
UNMAPPED = ("https://yijian-hub.org/fhir/CodeSystem/ingest", "unmapped-code")

CODES_FEED = "h-b-codes"
CODES_SYSTEM = "https://yijian-hub.org/fhir/CodeSystem/test/h-b-codes"
DROP_FEED = "h-a-drop"
BOTH_FEED = "h-a-both"

# Local codes no code map knows: code, name, value, unit, reference range, flag.
ZX1 = ("ZX1-" + uuid.uuid4().hex[:6], "自定义白细胞", "7.2", "10^9/L", "3.5-9.5", "N")
ZX2 = ("ZX2-" + uuid.uuid4().hex[:6], "自定义肌酐", "88", "μmol/L", "57-111", "N")


def org_system(org: str, kind: str) -> str:
    return f"https://yijian-hub.org/fhir/sid/org/{org}/{kind}"


def search(client: Client, resource_type: str, **query: str) -> list[dict[str, Any]]:
    response = client.get(f"/{resource_type}", params={"_count": "500", **query})
    assert response.status_code == 200, response.text
    return [
        e["resource"] for e in response.json().get("entry", []) if e["search"]["mode"] == "match"
    ]


def results(client: Client, org: str, key: str) -> list[dict[str, Any]]:
    return search(client, "Observation", identifier=f"{org_system(org, 'result')}|{key}")


def tags(resource: dict[str, Any]) -> set[tuple[str, str]]:
    return {(t["system"], t["code"]) for t in resource.get("meta", {}).get("tag", [])}


def control() -> str:
    return "B" + uuid.uuid4().hex[:16]


def someone() -> Person:
    return Person("M" + uuid.uuid4().hex[:8], "周杰", "M", "19790118")


def filler() -> str:
    return "F" + uuid.uuid4().hex[:10]


def post_hl7(hub: HubUnderTest, client: Client, feed: str, message: bytes):  # type: ignore[no-untyped-def]
    return client.http.post(f"{hub.base_url}/ingest/{feed}", content=message, headers=HL7)


def admin_get(hub: HubUnderTest, admin: Client, path: str, **params: str) -> Any:
    response = admin.http.get(hub.base_url + path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_feeds(hub: HubUnderTest, admin: Client, *feeds: str) -> None:
    def seen() -> bool:
        listed = {f["feed"] for f in admin_get(hub, admin, "/admin/feeds")["feeds"]}
        return set(feeds) <= listed

    assert wait_for(seen, timeout=15), f"the hub never saw feeds {feeds}"


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("drop")


@pytest.fixture(scope="module")
def feeds(hub: HubUnderTest, admin: Client, drop_dir: Path, worker: Worker) -> None:
    """Three feeds as files: hospital B's LIS with a code system of its own and no code map,
    hospital A's file-drop system, and hospital A's system that sends by MLLP and HTTP."""
    definitions = [
        {
            "feed": CODES_FEED,
            "organization": hub.org_b,
            "sending_facility": "H-B-CODES",
            "code_system": CODES_SYSTEM,
            "identifiers": {"H-B-CODES": "mrn"},
        },
        {
            "feed": DROP_FEED,
            "organization": hub.org_a,
            "sending_facility": "H-A-DROP",
            "identifiers": {"H-A-DROP": "mrn"},
            "inputs": {"file_drop": str(drop_dir), "mllp": False},
        },
        {
            "feed": BOTH_FEED,
            "organization": hub.org_a,
            "sending_facility": "H-A-BOTH",
            "identifiers": {"H-A-BOTH": "mrn"},
        },
    ]
    for definition in definitions:
        (hub.adapters_dir / f"{definition['feed']}.yaml").write_text(
            yaml.safe_dump(definition), encoding="utf-8"
        )
    checked = hub.cli(
        "feeds", "check", *(str(hub.adapters_dir / f"{d['feed']}.yaml") for d in definitions)
    )
    assert checked.stdout.count(" ok") == len(definitions)
    wait_for_feeds(hub, admin, CODES_FEED, DROP_FEED, BOTH_FEED)


@pytest.fixture(scope="module")
def worker(hub: HubUnderTest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """``yijian worker`` with the hub's environment: the same database, the same DATA_DIR and
    so the same embedded broker as the in-process API hub (or the same YIJIAN_BROKER_URL, if
    the suite runs with one: ``hub.env`` and the API hub both take it from os.environ).
    Started early (the feeds need it), waited for only where it is used."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen(
            [YIJIAN, "worker", "--concurrency", "1", "--loglevel", "INFO"],
            env={**hub.env, "PYTHONUNBUFFERED": "1"},
            stdout=handle,
            stderr=handle,
        )
    try:
        yield Worker(process, log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def wait_ready(self) -> None:
        ready = wait_for(
            lambda: self.process.poll() is not None or b"ready" in self.log.read_bytes(),
            timeout=60,
        )
        assert ready and self.process.poll() is None, self.output()


@pytest.fixture(scope="module")
def listener(
    hub: HubUnderTest, feeds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Listener]:
    server = Listener(env_without_broker(hub.env))
    server.log = tmp_path_factory.mktemp("mllp") / "mllp.log"
    server.start()
    yield server
    server.stop()


# -- 3. unmapped codes, mapped later, back-filled by the worker ------------------------------


def worklist_row(rows: list[dict[str, Any]], code: str) -> dict[str, Any] | None:
    found = [r for r in rows if r["local_code"] == code]
    assert len(found) <= 1
    return found[0] if found else None


def test_unmapped_codes_are_stored_listed_and_back_filled_once_mapped(
    hub: HubUnderTest, feeds: None, worker: Worker, hospital_b: Client, admin: Client
) -> None:
    fillers = [filler(), filler()]
    sent = [
        oru(control(), "H-B-CODES", someone(), fillers[0], (ZX1, ZX2)),
        oru(control(), "H-B-CODES", someone(), fillers[1], (ZX1,)),
    ]
    for message in sent:
        response = post_hl7(hub, hospital_b, CODES_FEED, message)
        assert response.status_code == 200, response.text

    # Stored, never dropped: local coding only, tagged, the unit still made UCUM.
    first = results(hospital_b, hub.org_b, f"{fillers[0]}:{ZX1[0]}:")[0]
    assert first["code"]["coding"] == [{"system": CODES_SYSTEM, "code": ZX1[0], "display": ZX1[1]}]
    assert UNMAPPED in tags(first)
    assert first["valueQuantity"] == {
        "value": 7.2,
        "unit": "10^9/L",
        "system": UCUM,
        "code": "10*9/L",
    }
    crea = results(hospital_b, hub.org_b, f"{fillers[0]}:{ZX2[0]}:")[0]
    assert crea["valueQuantity"]["code"] == "umol/L"
    assert UNMAPPED in tags(crea)

    # The worklist, by organization, counts messages: ZX1 twice, ZX2 once.
    api = admin_get(hub, admin, "/admin/unmapped-codes", organization=hub.org_b)["unmapped"]
    cli = json.loads(hub.cli("codes", "unmapped", "--organization", hub.org_b, "--json").stdout)
    for rows in (api, cli):
        zx1, zx2 = worklist_row(rows, ZX1[0]), worklist_row(rows, ZX2[0])
        assert zx1 is not None and zx2 is not None
        assert (zx1["occurrences"], zx2["occurrences"]) == (2, 1)
        assert zx1["organization"] == hub.org_b and zx1["source_system"] == CODES_SYSTEM
        assert zx1["local_display"] == ZX1[1]
        assert zx2["unit"] == "μmol/L"
    assert (
        worklist_row(
            admin_get(hub, admin, "/admin/unmapped-codes", organization=hub.org_a)["unmapped"],
            ZX1[0],
        )
        is None
    )
    assert hospital_b.http.get(hub.base_url + "/admin/unmapped-codes").status_code == 403

    # Map ZX1 through the API: the worker back-fills both stored results.
    concept_map = {
        "resourceType": "ConceptMap",
        "status": "active",
        "group": [
            {
                "source": CODES_SYSTEM,
                "target": LOINC,
                "element": [
                    {
                        "code": ZX1[0],
                        "display": ZX1[1],
                        "target": [
                            {
                                "code": "6690-2",
                                "display": "Leukocytes [#/volume] in Blood by Automated count",
                                "equivalence": "equivalent",
                            }
                        ],
                    }
                ],
            }
        ],
    }
    worker.wait_ready()
    put = admin.http.put(f"{hub.base_url}/admin/code-maps/{CODES_FEED}", json=concept_map)
    assert put.status_code == 200, put.text
    assert put.json() == {"changed": [ZX1[0]], "backfill": "queued"}

    def back_filled() -> list[dict[str, Any]] | None:
        found = [results(hospital_b, hub.org_b, f"{f}:{ZX1[0]}:")[0] for f in fillers]
        done = all(o["code"]["coding"][0].get("code") == "6690-2" for o in found)
        return found if done else None

    filled = wait_for(back_filled, timeout=45, interval=0.5)
    assert filled, worker.output()
    for observation in filled:
        assert observation["code"]["coding"][0]["system"] == LOINC
        assert observation["code"]["coding"][1] == {
            "system": CODES_SYSTEM,
            "code": ZX1[0],
            "display": ZX1[1],
        }
        assert UNMAPPED not in tags(observation)
        assert observation["meta"]["versionId"] == "2"
        assert observation["valueQuantity"]["value"] == 7.2
    rows = admin_get(hub, admin, "/admin/unmapped-codes", organization=hub.org_b)["unmapped"]
    assert worklist_row(rows, ZX1[0]) is None
    assert worklist_row(rows, ZX2[0])["occurrences"] == 1  # type: ignore[index]
    # ZX2 untouched by ZX1's back-fill.
    assert UNMAPPED in tags(results(hospital_b, hub.org_b, f"{fillers[0]}:{ZX2[0]}:")[0])

    # A new message with ZX1 is mapped as it arrives.
    later = filler()
    response = post_hl7(
        hub, hospital_b, CODES_FEED, oru(control(), "H-B-CODES", someone(), later, (ZX1,))
    )
    assert response.status_code == 200
    fresh = results(hospital_b, hub.org_b, f"{later}:{ZX1[0]}:")[0]
    assert fresh["code"]["coding"][0]["code"] == "6690-2" and UNMAPPED not in tags(fresh)

    # The code map as a ConceptMap holds the mapping.
    exported = admin_get(hub, admin, f"/admin/code-maps/{CODES_FEED}")
    assert exported["resourceType"] == "ConceptMap"
    targets = {
        element["code"]: element["target"][0]
        for group in exported["group"]
        if group["source"] == CODES_SYSTEM
        for element in group["element"]
    }
    assert targets[ZX1[0]]["code"] == "6690-2"
    assert ZX2[0] not in targets
    assert json.loads(hub.cli("codes", "export", CODES_FEED).stdout)["group"] == exported["group"]


def test_codes_map_on_the_command_line_maps_and_back_fills_inline(
    hub: HubUnderTest, feeds: None, hospital_b: Client, admin: Client
) -> None:
    code = "ZX3-" + uuid.uuid4().hex[:6]
    f = filler()
    message = oru(
        control(),
        "H-B-CODES",
        someone(),
        f,
        ((code, "自定义尿酸", "400", "μmol/L", "208-428", "N"),),
    )
    assert post_hl7(hub, hospital_b, CODES_FEED, message).status_code == 200
    assert UNMAPPED in tags(results(hospital_b, hub.org_b, f"{f}:{code}:")[0])
    mapped = hub.cli("codes", "map", CODES_FEED, code, "14933-6", "--unit", "umol/L")
    assert "1 mappings added or changed; 1 stored results back-filled" in mapped.stdout
    stored = results(hospital_b, hub.org_b, f"{f}:{code}:")[0]
    assert [c["code"] for c in stored["code"]["coding"]] == ["14933-6", code]
    assert UNMAPPED not in tags(stored)
    rows = admin_get(hub, admin, "/admin/unmapped-codes", organization=hub.org_b)["unmapped"]
    assert worklist_row(rows, code) is None
    exported = admin_get(hub, admin, f"/admin/code-maps/{CODES_FEED}")
    targets = {e["code"]: e["target"][0] for g in exported["group"] for e in g["element"]}
    assert targets[code]["code"] == "14933-6"
    assert [e["valueCode"] for e in targets[code]["extension"]] == ["umol/L"]


def test_a_code_map_is_for_admins_and_must_be_a_concept_map(
    hub: HubUnderTest, feeds: None, hospital_b: Client, admin: Client
) -> None:
    url = f"{hub.base_url}/admin/code-maps/{CODES_FEED}"
    assert hospital_b.http.get(url).status_code == 403
    assert hospital_b.http.put(url, json={"resourceType": "ConceptMap"}).status_code == 403
    assert admin.http.put(url, json={"resourceType": "Patient"}).status_code == 422
    assert admin.http.get(f"{hub.base_url}/admin/code-maps/no-such-feed").status_code == 404


# -- 5. files: a drop folder watched by `yijian mllp`, and `yijian import` --------------------


def drop_file(folder: Path, name: str, data: bytes) -> None:
    """Write as a sender does: to a hidden name, then rename (the folder skips dot files)."""
    partial = folder / f".{name}.part"
    partial.write_bytes(data)
    partial.replace(folder / name)


def wait_for_file(path: Path, timeout: float = 30) -> bool:
    return bool(wait_for(path.exists, timeout=timeout, interval=0.2))


def test_drop_folder_file_of_two_messages_is_processed(
    hub: HubUnderTest, listener: Listener, drop_dir: Path, hospital_a: Client
) -> None:
    fillers = [filler(), filler()]
    data = b"".join(oru(control(), "H-A-DROP", someone(), f) for f in fillers)
    drop_file(drop_dir, "two.hl7", data)
    assert wait_for_file(drop_dir / "processed" / "two.hl7"), listener.log.read_text(
        errors="replace"
    )[-3000:]  # type: ignore[union-attr]
    assert not (drop_dir / "two.hl7").exists()
    for f in fillers:
        hgb = results(hospital_a, hub.org_a, f"{f}:HGB:")
        assert len(hgb) == 1 and hgb[0]["valueQuantity"]["value"] == 118


def test_drop_folder_file_with_a_refused_message_goes_to_failed(
    hub: HubUnderTest, listener: Listener, drop_dir: Path, hospital_a: Client, admin: Client
) -> None:
    good, bad = filler(), filler()
    bad_control = control()
    refused = oru(bad_control, "H-A-DROP", someone(), bad).replace(b"||118|", b"||abc|")
    data = oru(control(), "H-A-DROP", someone(), good) + refused
    drop_file(drop_dir, "mixed.hl7", data)
    assert wait_for_file(drop_dir / "failed" / "mixed.hl7")
    assert (drop_dir / "failed" / "mixed.hl7").read_bytes() == data  # kept as it came
    assert len(results(hospital_a, hub.org_a, f"{good}:HGB:")) == 1  # the good one is stored
    assert results(hospital_a, hub.org_a, f"{bad}:WBC:") == []
    letters = admin_get(hub, admin, "/admin/dead-letters", feed=DROP_FEED)["dead_letters"]
    (letter,) = [x for x in letters if x["control_id"] == bad_control]
    assert (letter["channel"], letter["ack_code"], letter["status"]) == ("file", "AE", "open")
    assert "abc" in letter["error"]


def test_drop_folder_waits_for_a_file_still_being_written(
    hub: HubUnderTest, listener: Listener, drop_dir: Path, hospital_a: Client
) -> None:
    """The sender writes in place, slowly: the folder (polled every second) takes the file only
    once its size stopped changing, so the second message is not cut off."""
    fillers = [filler(), filler()]
    data = b"".join(oru(control(), "H-A-DROP", someone(), f) for f in fillers)
    path = drop_dir / "slow.hl7"
    step = len(data) // 12 + 1
    with open(path, "wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start : start + step])
            handle.flush()
            time.sleep(0.25)  # several writes between two polls: the size always changes
    assert wait_for_file(drop_dir / "processed" / "slow.hl7")
    assert not (drop_dir / "failed" / "slow.hl7").exists()
    for f in fillers:
        assert len(results(hospital_a, hub.org_a, f"{f}:PLT:")) == 1


def test_import_of_a_directory_exits_by_outcome(
    hub: HubUnderTest, feeds: None, tmp_path: Path, hospital_a: Client
) -> None:
    good = tmp_path / "good"
    (good / "sub").mkdir(parents=True)
    fillers = [filler() for _ in range(3)]
    (good / "a.hl7").write_bytes(oru(control(), "H-A-DROP", someone(), fillers[0]))
    (good / "sub" / "b.txt").write_bytes(
        b"\r\n".join(oru(control(), "H-A-DROP", someone(), f) for f in fillers[1:])
    )
    (good / "notes.md").write_text("not a message")  # not a message file: skipped
    done = hub.cli("import", str(good), check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 messages accepted, 0 refused" in done.stdout
    for f in fillers:
        assert len(results(hospital_a, hub.org_a, f"{f}:WBC:")) == 1

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.hl7").write_bytes(oru(control(), "H-A-DROP", someone(), filler()))
    (mixed / "b.hl7").write_bytes(oru(control(), "NO-SUCH-FACILITY", someone(), filler()))
    done = hub.cli("import", str(mixed), check=False)
    assert done.returncode == 1
    assert "1 messages accepted, 1 refused" in done.stdout
    assert "NO-SUCH-FACILITY" in done.stderr and "b.hl7" in done.stderr

    again = hub.cli("import", str(good), check=False)  # a re-import stores nothing twice
    assert again.returncode == 0
    for f in fillers:
        assert results(hospital_a, hub.org_a, f"{f}:WBC:")[0]["meta"]["versionId"] == "1"


# -- 7. the same message over two transports -------------------------------------------------


def test_mllp_then_http_is_one_message(
    hub: HubUnderTest, listener: Listener, hospital_a: Client
) -> None:
    f, control_id = filler(), control()
    message = oru(control_id, "H-A-BOTH", someone(), f)
    over_mllp = send(listener.port, message)
    assert ack_fields(over_mllp) == ("AA", control_id, "")
    over_http = post_hl7(hub, hospital_a, BOTH_FEED, message)
    assert over_http.status_code == 200
    assert over_http.headers["X-Ingest-Duplicate"] == "true"
    assert over_http.content.rstrip(b"\r") == over_mllp  # the stored acknowledgement
    found = results(hospital_a, hub.org_a, f"{f}:HGB:")
    assert len(found) == 1 and found[0]["meta"]["versionId"] == "1"
    reports = search(
        hospital_a, "DiagnosticReport", identifier=f"{org_system(hub.org_a, 'filler')}|{f}"
    )
    assert len(reports) == 1


def test_http_then_mllp_is_one_message(
    hub: HubUnderTest, listener: Listener, hospital_a: Client
) -> None:
    f, control_id = filler(), control()
    message = oru(control_id, "H-A-BOTH", someone(), f)
    over_http = post_hl7(hub, hospital_a, BOTH_FEED, message)
    assert over_http.status_code == 200 and "X-Ingest-Duplicate" not in over_http.headers
    over_mllp = send(listener.port, message)
    assert over_mllp == over_http.content.rstrip(b"\r")  # (send() strips the framing CR)
    assert len(results(hospital_a, hub.org_a, f"{f}:HGB:")) == 1


def test_a_feed_without_mllp_is_refused_over_mllp(
    hub: HubUnderTest, listener: Listener, hospital_a: Client
) -> None:
    f = filler()
    code, _, reason = ack_fields(send(listener.port, oru(control(), "H-A-DROP", someone(), f)))
    assert code == "AR" and "MLLP" in reason
    assert results(hospital_a, hub.org_a, f"{f}:HGB:") == []
