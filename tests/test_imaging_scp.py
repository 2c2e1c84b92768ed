"""The C-STORE receiver (`yijian dicom-scp`) as its own process, driven by independent SCUs:
pynetdicom's and dcmtk's storescu. Stored bytes, the index, ImagingStudy in FHIR, identity,
reports by accession number, refusals with their status, and the association going on."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from imaging.s3store import S3Store
from tests.access_support import order_for, treat
from tests.conftest import Client, HubUnderTest
from tests.identity_support import RESIDENT, create, fresh_people, person, source
from tests.imaging_support import (
    SCP_AE,
    dataset_bytes,
    fresh_copy,
    query,
    storage_scp,
    stored_bytes,
    wait_for,
)
from tests.test_imaging_s3store import endpoint  # noqa: F401 (the moto S3 server fixture)

A_AE, B_AE = "CT-ROOM-A", "PACS-B"
SUCCESS = 0x0000

# One file per storage class and transfer syntax the issue names (pydicom's test files;
# CR, DX and MG are CT_small relabelled, since pydicom ships none of those classes).
FILES: list[tuple[str, dict[str, Any]]] = [
    ("CT_small.dcm", {}),  # CT, explicit VR little endian
    ("MR_small_implicit.dcm", {}),  # MR, implicit VR little endian
    ("MR_small_RLE.dcm", {}),  # RLE lossless
    ("MR_small_jp2klossless.dcm", {}),  # JPEG 2000 lossless
    ("693_J2KI.dcm", {}),  # JPEG 2000 (lossy)
    ("SC_jpeg_no_color_transform.dcm", {}),  # secondary capture, JPEG baseline
    ("JPEG-lossy.dcm", {}),  # JPEG extended
    ("SC_rgb_jpeg_gdcm.dcm", {}),  # JPEG lossless SV1
    ("examples_jpeg2k.dcm", {}),  # ultrasound
    ("examples_ybr_color.dcm", {}),  # ultrasound multi-frame, JPEG baseline
    ("test-SR.dcm", {}),  # comprehensive SR
    ("CT_small.dcm", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1", "Modality": "CR"}),
    ("CT_small.dcm", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1", "Modality": "DX"}),
    ("CT_small.dcm", {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.2", "Modality": "MG"}),
]


@pytest.fixture(scope="module")
def scp(hub: HubUnderTest, hospital_a: Client, hospital_b: Client) -> Iterator[int]:
    hub.cli("dicom", "ae", "add", A_AE, "--organization", hospital_a.organization)
    hub.cli("dicom", "ae", "add", B_AE, "--organization", hospital_b.organization)
    with storage_scp(hub) as port:
        yield port


def scu(title: str = A_AE) -> AE:
    ae = AE(ae_title=title)
    ae.requested_contexts = StoragePresentationContexts[:127]
    ae.add_requested_context(Verification)
    return ae


def send(port: int, paths: list[Path], title: str = A_AE) -> list[Dataset]:
    """C-STORE each file (sent from the file, undecoded) on one association."""
    ae = AE(ae_title=title)
    for path in paths:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
    association = ae.associate("127.0.0.1", port, ae_title=SCP_AE)
    assert association.is_established
    try:
        return [association.send_c_store(path) for path in paths]
    finally:
        association.release()


def instance_row(hub: HubUnderTest, sop_uid: str) -> Any:
    rows = query(hub, "SELECT * FROM dicom_instance WHERE sop_instance_uid = $1", sop_uid)
    return rows[0] if rows else None


def imaging_study(client: Client, study_uid: str) -> dict[str, Any] | None:
    bundle = client.get(
        "ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
    ).json()
    entries = bundle.get("entry") or []
    return entries[0]["resource"] if entries else None


def test_every_named_storage_class_and_transfer_syntax_is_stored_as_sent(
    scp: int, hub: HubUnderTest, tmp_path: Path
) -> None:
    paths = [
        fresh_copy(name, tmp_path, PatientID=f"P-{uuid.uuid4().hex[:8]}", **changes)
        for name, changes in FILES
    ]
    statuses = send(scp, paths)
    assert [hex(s.Status) for s in statuses] == [hex(SUCCESS)] * len(paths)
    for path in paths:
        original = pydicom.dcmread(path, stop_before_pixels=True)
        row = instance_row(hub, original.SOPInstanceUID)
        assert row is not None, path
        assert row["transfer_syntax"] == original.file_meta.TransferSyntaxUID  # no recompression
        assert row["sop_class_uid"] == original.SOPClassUID
        assert dataset_bytes(path) in stored_bytes(hub, row["object_key"])  # byte for byte


def test_encapsulated_pdf_is_stored(scp: int, hub: HubUnderTest, tmp_path: Path) -> None:
    pdf = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.1"
    dataset.SOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.PatientID, dataset.PatientName, dataset.Modality = "PDF-1", "Li^Na", "DOC"
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    dataset.EncapsulatedDocument = pdf + (b"\0" if len(pdf) % 2 else b"")
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    path = tmp_path / "report.dcm"
    dataset.save_as(path, enforce_file_format=True)
    [status] = send(scp, [path])
    assert status.Status == SUCCESS
    row = instance_row(hub, dataset.SOPInstanceUID)
    assert pdf in stored_bytes(hub, row["object_key"])


def test_unknown_calling_ae_is_rejected(scp: int) -> None:
    association = scu("NOBODY").associate("127.0.0.1", scp, ae_title=SCP_AE)
    assert association.is_rejected
    association = scu().associate("127.0.0.1", scp, ae_title="NOT-THE-HUB")
    assert association.is_rejected  # the called AE title is checked too
    association = scu().associate("127.0.0.1", scp, ae_title=SCP_AE)
    assert association.is_established  # a registered caller gets in
    assert association.send_c_echo().Status == SUCCESS
    association.release()


def test_truncated_and_malformed_files_are_refused_and_the_association_goes_on(
    scp: int, hub: HubUnderTest, tmp_path: Path
) -> None:
    good = fresh_copy("CT_small.dcm", tmp_path, PatientID="TRUNC-1")
    whole = good.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(whole[:-5000])  # the pixel data cut short
    no_patient = fresh_copy("CT_small.dcm", tmp_path, PatientID="")
    after = fresh_copy("CT_small.dcm", tmp_path, PatientID="TRUNC-1")

    ae = AE(ae_title=A_AE)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", scp, ae_title=SCP_AE)
    assert association.is_established
    try:
        refused = association.send_c_store(truncated)
        missing = association.send_c_store(no_patient)
        later = association.send_c_store(after)
    finally:
        association.release()
    assert refused.Status in (0xC000, 0xA900), hex(refused.Status)
    assert "truncated" in str(refused.get("ErrorComment", ""))
    assert missing.Status == 0xC000
    assert "Patient ID" in str(missing.get("ErrorComment", ""))
    assert later.Status == SUCCESS  # the same association still stores
    truncated_uid = pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID
    assert instance_row(hub, truncated_uid) is None  # nothing of the refused file is indexed
    assert instance_row(hub, pydicom.dcmread(after, stop_before_pixels=True).SOPInstanceUID)


def test_resend_is_idempotent_and_changed_content_becomes_a_new_version(
    scp: int, hub: HubUnderTest, tmp_path: Path
) -> None:
    first = fresh_copy("CT_small.dcm", tmp_path, PatientID="RESEND-1")
    original = pydicom.dcmread(first)
    assert [s.Status for s in send(scp, [first, first])] == [SUCCESS, SUCCESS]
    row = instance_row(hub, original.SOPInstanceUID)
    assert row["version"] == 1
    count = query(
        hub,
        "SELECT count(*) AS n FROM dicom_instance WHERE study_uid = $1",
        original.StudyInstanceUID,
    )
    assert count[0]["n"] == 1

    original.StudyDescription = "corrected"  # same UIDs, other content
    changed = tmp_path / "changed.dcm"
    original.save_as(changed, enforce_file_format=True)
    [status] = send(scp, [changed])
    assert status.Status == SUCCESS
    row = instance_row(hub, original.SOPInstanceUID)
    assert row["version"] == 2
    assert dataset_bytes(changed) in stored_bytes(hub, row["object_key"])
    history = query(
        hub,
        "SELECT version, object_key FROM dicom_instance_version WHERE sop_instance_uid = $1",
        original.SOPInstanceUID,
    )
    assert [h["version"] for h in history] == [1]
    assert dataset_bytes(first) in stored_bytes(hub, history[0]["object_key"])  # kept


def test_another_hospital_cannot_add_to_a_study(
    scp: int, hub: HubUnderTest, tmp_path: Path
) -> None:
    mine = fresh_copy("CT_small.dcm", tmp_path, PatientID="OWN-1")
    study = pydicom.dcmread(mine, stop_before_pixels=True).StudyInstanceUID
    intruder = fresh_copy("CT_small.dcm", tmp_path, PatientID="OWN-1", StudyInstanceUID=study)
    assert send(scp, [mine])[0].Status == SUCCESS
    [refused] = send(scp, [intruder], title=B_AE)
    assert refused.Status == 0x0124
    assert "another hospital" in str(refused.get("ErrorComment", ""))
    owners = query(hub, "SELECT organization FROM dicom_study WHERE study_uid = $1", study)
    assert len(owners) == 1


def test_a_study_becomes_an_imaging_study_linked_to_patient_and_report(
    scp: int, hub: HubUnderTest, hospital_a: Client, doctor: Client, tmp_path: Path
) -> None:
    mrn, accession = f"MRN-{uuid.uuid4().hex[:8]}", f"ACC{uuid.uuid4().hex[:8]}"
    mrn_system = f"https://yijian-hub.org/fhir/sid/org/{hospital_a.organization}/mrn"
    accession_system = f"https://yijian-hub.org/fhir/sid/org/{hospital_a.organization}/accession"
    # The hospital's own record of the patient, from its HIS feed, exists first.
    patient = hospital_a.post(
        "Patient",
        json={
            "resourceType": "Patient",
            "identifier": [{"system": mrn_system, "value": mrn}],
            "name": [{"family": "王", "given": ["芳"], "text": "王芳"}],
            "gender": "female",
            "managingOrganization": {"reference": f"Organization/{hospital_a.organization}"},
        },
    )
    assert patient.status_code == 201, patient.text
    patient_id = patient.json()["id"]
    # The report arrives before the images.
    report = hospital_a.post(
        "DiagnosticReport",
        json={
            "resourceType": "DiagnosticReport",
            "status": "final",
            "identifier": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "ACSN",
                            }
                        ]
                    },
                    "system": accession_system,
                    "value": accession,
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2"}]},
            "subject": {"reference": f"Patient/{patient_id}"},
            "conclusion": "双肺未见明显异常。",
            "performer": [{"reference": f"Organization/{hospital_a.organization}"}],
        },
    )
    assert report.status_code == 201, report.text
    series = generate_uid()
    paths = [
        fresh_copy(
            "CT_small.dcm",
            tmp_path,
            PatientID=mrn,
            AccessionNumber=accession,
            SeriesInstanceUID=series,
            StudyInstanceUID=study_uid,
            InstanceNumber=number,
            BodyPartExamined="CHEST",
        )
        for study_uid in [generate_uid()]
        for number in (1, 2, 3)
    ]
    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    assert [s.Status for s in send(scp, paths)] == [SUCCESS] * 3

    study = wait_for(lambda: imaging_study(hospital_a, study_uid))  # after the release
    assert study is not None, "no ImagingStudy after the association ended"
    assert study["subject"]["reference"] == f"Patient/{patient_id}"  # the hospital's record
    assert study["numberOfSeries"] == 1 and study["numberOfInstances"] == 3
    assert study["modality"] == [
        {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
    ]
    assert {"type", "system", "value"} <= set(study["identifier"][1])
    assert study["identifier"][1]["value"] == accession
    [only_series] = study["series"]
    assert only_series["uid"] == series
    assert only_series["bodySite"]["code"] == "51185008"  # SNOMED chest: recognition's code
    assert [i["number"] for i in only_series["instance"]] == [1, 2, 3]
    dicomweb = hospital_a.get(study["endpoint"][0]["reference"]).json()
    assert dicomweb["connectionType"]["code"] == "dicom-wado-rs"
    assert dicomweb["address"].endswith("/dicomweb")
    linked = hospital_a.get(f"DiagnosticReport/{report.json()['id']}").json()
    assert {"reference": f"ImagingStudy/{study['id']}"} in linked["imagingStudy"]
    # A doctor elsewhere, ordering for the patient, finds it through the master record.
    order_for(doctor, patient_id)
    found = doctor.get("ImagingStudy", params={"patient.identifier": f"{mrn_system}|{mrn}"})
    assert [e["resource"]["id"] for e in found.json().get("entry", [])] == [study["id"]]


def test_a_study_of_an_unknown_patient_creates_the_hospitals_patient_record(
    scp: int, hub: HubUnderTest, hospital_a: Client, tmp_path: Path
) -> None:
    mrn = f"NEW-{uuid.uuid4().hex[:8]}"
    path = fresh_copy(
        "MR_small.dcm",
        tmp_path,
        PatientID=mrn,
        PatientName="张^伟",
        PatientBirthDate="19800214",
        PatientSex="M",
        SpecificCharacterSet="ISO_IR 192",
    )
    study_uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
    assert send(scp, [path])[0].Status == SUCCESS
    study = wait_for(lambda: imaging_study(hospital_a, study_uid))
    assert study is not None
    patient = hospital_a.get(study["subject"]["reference"]).json()
    assert patient["identifier"][0]["value"] == mrn
    assert patient["name"][0]["text"] == "张伟"
    assert patient["birthDate"] == "1980-02-14" and patient["gender"] == "male"


def test_issuer_of_patient_id_maps_to_the_resident_id_and_links_to_the_person(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client, doctor: Client, tmp_path: Path
) -> None:
    """A PACS sending the ID card number as Patient ID (Issuer of Patient ID 'SFZ'): the study
    belongs to the person another hospital knows by the same number."""
    someone = person(fresh_people())
    known = create(hospital_b, source(someone, hospital_b.organization))  # hospital B's record
    hub.cli(
        "dicom",
        "ae",
        "add",
        "PACS-A-SFZ",
        "--organization",
        hospital_a.organization,
        "--issuer",
        "SFZ=resident-id",
    )
    path = fresh_copy(
        "CT_small.dcm",
        tmp_path,
        PatientID=someone.resident_id,
        IssuerOfPatientID="SFZ",
        PatientName=f"{someone.family}^{someone.given}",
        SpecificCharacterSet="ISO_IR 192",
    )
    study_uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
    with storage_scp(hub) as port:
        assert send(port, [path], title="PACS-A-SFZ")[0].Status == SUCCESS
    study = wait_for(lambda: imaging_study(hospital_a, study_uid))
    assert study is not None
    patient = hospital_a.get(study["subject"]["reference"]).json()
    assert any(i["system"] == RESIDENT for i in patient["identifier"])
    # The doctor at hospital B, the patient in their care, finds the study by hospital B's
    # patient: one person, two hospitals.
    treat(hub, doctor, known)
    found = doctor.get("ImagingStudy", params={"patient": f"Patient/{known}"}).json()
    assert study["id"] in [e["resource"]["id"] for e in found.get("entry", [])]


@pytest.mark.parametrize(
    ("charset", "encoding"),
    [("ISO_IR 192", "utf-8"), ("GB18030", "gb18030"), ("GBK", "gbk"), (None, "gb18030")],
)
def test_chinese_patient_names_are_decoded(
    scp: int, hub: HubUnderTest, tmp_path: Path, charset: str | None, encoding: str
) -> None:
    path = fresh_copy("CT_small.dcm", tmp_path, PatientID=f"CN-{uuid.uuid4().hex[:6]}")
    dataset = pydicom.dcmread(path)
    if charset:
        dataset.SpecificCharacterSet = charset
    elif "SpecificCharacterSet" in dataset:
        del dataset.SpecificCharacterSet
    dataset.PatientName = "欧阳^娜娜".encode(encoding)  # raw bytes as the modality sends them
    dataset.save_as(path, enforce_file_format=True)
    assert send(scp, [path])[0].Status == SUCCESS
    [row] = query(
        hub,
        "SELECT patient_name, name_search FROM dicom_study WHERE study_uid = $1",
        dataset.StudyInstanceUID,
    )
    assert row["patient_name"] == "欧阳^娜娜"
    assert "ouyang" in row["name_search"].split()  # pinyin of the family name, for QIDO


@pytest.mark.skipif(shutil.which("storescu") is None, reason="dcmtk's storescu is not installed")
def test_dcmtk_storescu(scp: int, hub: HubUnderTest, tmp_path: Path) -> None:
    paths = [
        fresh_copy(name, tmp_path, PatientID="DCMTK-1")
        for name in ("CT_small.dcm", "MR_small_RLE.dcm", "SC_jpeg_no_color_transform.dcm")
    ]
    # Each file proposed in its own transfer syntax: uncompressed, RLE, JPEG baseline.
    for path, proposal in zip(paths, ("-xe", "-xr", "-xy"), strict=True):
        done = subprocess.run(
            ["storescu", proposal, "-aet", A_AE, "-aec", SCP_AE, "127.0.0.1", str(scp), str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and "Failed" not in done.stderr, done.stderr
    for path in paths:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        row = instance_row(hub, uid)
        assert row is not None, f"{path.name} not stored: {done.stderr}"
        # storescu re-encodes the data set it read (group lengths, padding), so compare what
        # it sent element by element, and the pixel data byte for byte: never recompressed.
        original = pydicom.dcmread(path)
        stored = pydicom.dcmread(io.BytesIO(stored_bytes(hub, row["object_key"])))
        assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert stored.PixelData == original.PixelData
        assert stored.PatientID == "DCMTK-1" and stored.SOPInstanceUID == uid
    refused = subprocess.run(
        ["storescu", "-aet", "STRANGER", "-aec", SCP_AE, "127.0.0.1", str(scp), str(paths[0])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "Rejected" in refused.stderr or "rejected" in refused.stderr.lower()


def test_a_receiver_on_s3_stores_there_and_exports_from_there(
    hub: HubUnderTest,
    hospital_a: Client,
    endpoint: str,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    """The second backend end to end: the bucket made by `yijian dicom init-store`, a C-STORE
    stored in it byte for byte, and a de-identified export read back from it."""
    bucket = f"dicom-{uuid.uuid4().hex[:12]}"
    s3 = {
        "YIJIAN_OBJECT_STORE": "s3",
        "YIJIAN_S3_ENDPOINT_URL": endpoint,
        "YIJIAN_S3_BUCKET": bucket,
        "YIJIAN_S3_ACCESS_KEY_ID": "test",
        "YIJIAN_S3_SECRET_ACCESS_KEY": "test",
    }
    hub.cli("dicom", "ae", "add", "S3-ROOM", "--organization", hospital_a.organization)
    path = fresh_copy("MR_small_RLE.dcm", tmp_path, PatientID="S3-1")
    original = pydicom.dcmread(path, stop_before_pixels=True)
    on_s3 = HubUnderTest(**{**hub.__dict__, "env": {**hub.env, **s3}})
    on_s3.cli("dicom", "init-store")
    with storage_scp(on_s3) as port:
        assert send(port, [path], title="S3-ROOM")[0].Status == SUCCESS
    row = instance_row(hub, original.SOPInstanceUID)
    store = S3Store(bucket, endpoint_url=endpoint, access_key_id="test", secret_access_key="test")
    with store.open(row["object_key"]) as stored:
        assert dataset_bytes(path) in stored.read()
    out = tmp_path / "export"
    on_s3.cli("dicom", "export", original.StudyInstanceUID, "--out", str(out))
    [exported] = list(out.iterdir())
    clean = pydicom.dcmread(exported)
    assert clean.PatientID != "S3-1" and clean.SOPInstanceUID != original.SOPInstanceUID
    assert clean.PixelData == pydicom.dcmread(path).PixelData


def _send_one(port: int, path: Path, title: str = A_AE) -> int:
    return int(send(port, [path], title=title)[0].Status)


def test_concurrent_senders_of_one_instance_are_serialised(
    scp: int, hub: HubUnderTest, tmp_path: Path
) -> None:
    """Two associations sending one SOP Instance UID with different bytes at the same moment:
    one is version 1, the other version 2, and the first file is kept, every time."""
    for trial in range(6):
        first = fresh_copy("CT_small.dcm", tmp_path, PatientID=f"RACE-{trial}")
        dataset = pydicom.dcmread(first)
        dataset.StudyDescription = "the other one"
        second = tmp_path / f"second-{trial}.dcm"
        dataset.save_as(second, enforce_file_format=True)
        with ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(lambda p: _send_one(scp, p), [first, second]))
        assert statuses == [SUCCESS, SUCCESS]
        [row] = query(
            hub,
            "SELECT version, object_key FROM dicom_instance WHERE sop_instance_uid = $1",
            dataset.SOPInstanceUID,
        )
        history = query(
            hub,
            "SELECT version, object_key FROM dicom_instance_version WHERE sop_instance_uid = $1",
            dataset.SOPInstanceUID,
        )
        assert row["version"] == 2 and [h["version"] for h in history] == [1]
        assert row["object_key"] != history[0]["object_key"]  # both files kept
        kept = {stored_bytes(hub, row["object_key"]), stored_bytes(hub, history[0]["object_key"])}
        assert {any(dataset_bytes(p) in k for k in kept) for p in (first, second)} == {True}


def test_an_instance_of_another_patient_is_refused_from_the_study(
    scp: int, hub: HubUnderTest, tmp_path: Path
) -> None:
    first = fresh_copy("CT_small.dcm", tmp_path, PatientID="MIX-1")
    study = pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID
    other = fresh_copy("CT_small.dcm", tmp_path, PatientID="MIX-2", StudyInstanceUID=study)
    statuses = send(scp, [first, other])
    assert statuses[0].Status == SUCCESS
    assert statuses[1].Status == 0xA900
    assert "Patient ID differs" in str(statuses[1].get("ErrorComment", ""))
    [kept] = query(
        hub,
        "SELECT status, reason, object_key, sender FROM dicom_refused WHERE sop_instance_uid = $1",
        pydicom.dcmread(other, stop_before_pixels=True).SOPInstanceUID,
    )
    assert kept["status"] == 0xA900 and kept["sender"] == A_AE
    assert dataset_bytes(other) in stored_bytes(hub, kept["object_key"])  # kept to inspect
    listed = json.loads(hub.cli("dicom", "refused", "--json").stdout)
    assert any(r["object_key"] == kept["object_key"] for r in listed)


def test_odd_but_valid_values_still_make_an_imaging_study(
    scp: int, hub: HubUnderTest, hospital_a: Client, tmp_path: Path
) -> None:
    """A Patient ID with a comma is one identifier (FHIR search escaping), and a negative
    Instance Number (a valid IS) is left out of the ImagingStudy rather than blocking it."""
    mrn = f"{uuid.uuid4().hex[:6]},1001"
    path = fresh_copy("CT_small.dcm", tmp_path, PatientID=mrn, InstanceNumber=-1)
    study_uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
    assert send(scp, [path])[0].Status == SUCCESS
    study = wait_for(lambda: imaging_study(hospital_a, study_uid))
    assert study is not None
    assert "number" not in study["series"][0]["instance"][0]
    patient = hospital_a.get(study["subject"]["reference"]).json()
    assert [i["value"] for i in patient["identifier"]] == [mrn]


def test_associations_are_audited_with_what_they_stored_and_refused(
    scp: int, hub: HubUnderTest, tmp_path: Path
) -> None:
    good = fresh_copy("CT_small.dcm", tmp_path, PatientID="AUDIT-1")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(fresh_copy("CT_small.dcm", tmp_path, PatientID="AUDIT-1").read_bytes()[:-999])
    send(scp, [good, cut])
    study = pydicom.dcmread(good, stop_before_pixels=True).StudyInstanceUID
    rows = wait_for(
        lambda: query(
            hub,
            "SELECT status, organization, source_ip, detail FROM audit_log"
            " WHERE client_id = $1 AND $2 = ANY(entities)",
            f"dicom-ae:{A_AE}",
            f"urn:oid:{study}",
        )
    )
    assert rows, "no audit record of the association"
    assert rows[0]["status"] == 207 and "1 instances stored, 1 refused" in rows[0]["detail"]
    assert rows[0]["source_ip"] == "127.0.0.1"
    scu("INTRUDER").associate("127.0.0.1", scp, ae_title=SCP_AE)
    rejected = wait_for(
        lambda: query(hub, "SELECT status FROM audit_log WHERE client_id = 'dicom-ae:INTRUDER'")
    )
    assert rejected and rejected[0]["status"] == 403


def test_an_unknown_issuer_target_is_refused_when_registering(hub: HubUnderTest) -> None:
    done = hub.cli(
        "dicom",
        "ae",
        "add",
        "TYPO-AE",
        "--organization",
        hub.org_a,
        "--issuer",
        "HIS=mrm",
        check=False,
    )
    assert done.returncode != 0 and "mrm" in done.stderr
