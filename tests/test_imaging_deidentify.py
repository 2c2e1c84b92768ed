"""De-identification (PS3.15 Basic Application Confidentiality Profile) on real DICOM files.

The files are those that ship with pydicom (no download, no database): single images with
private tags, overlays and identifying attributes, an RT plan and structure set with nested
sequences, a four-instance CT series of one study, an SR document, and the character set
samples with Chinese names in ISO_IR 192 and GB18030.
"""

from __future__ import annotations

import copy
import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from pydicom.datadict import get_entry, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from imaging.deidentify import (
    BASIC_PROFILE,
    FULL_DATES_RETAINED,
    SEQUENCE_RESOLUTION,
    VALUE_RESOLUTION,
    BurnedInAnnotation,
    DeidentificationError,
    UidMapper,
    deidentify,
)

SECRET = "test-secret-for-deidentification-0001"
PSEUDONYM = "YJ-ANON-0001"


def _file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not available offline")
    return Path(str(path))


def _read(name: str) -> Dataset:
    return dcmread(_file(name), force=True)


def _charset_file(name: str) -> Dataset:
    for path in get_charset_files():
        if Path(path).name == name:
            return dcmread(path)
    pytest.skip(f"{name} is not available offline")


def _ct_series() -> list[Dataset]:
    """Four CT instances of one study and series sharing a frame of reference."""
    paths = sorted(get_testdata_files("dicomdirtests/77654033/CT2/*"))
    if len(paths) < 2:
        pytest.skip("the dicomdirtests CT series is not available offline")
    return [dcmread(path) for path in paths]


def _deid(ds: Dataset, **kw: object) -> Dataset:
    options: dict[str, object] = {"uid_map": UidMapper(SECRET), "patient_pseudonym": PSEUDONYM}
    options.update(kw)
    return deidentify(ds, **options)  # type: ignore[arg-type]


def _encode(ds: Dataset, *, enforce_file_format: bool = True) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=enforce_file_format)
    return buffer.getvalue()


def _round_trip(ds: Dataset, *, enforce_file_format: bool = True) -> tuple[bytes, Dataset]:
    data = _encode(ds, enforce_file_format=enforce_file_format)
    return data, dcmread(io.BytesIO(data))


def _all_elements(ds: Dataset) -> Iterator[DataElement]:
    yield from ds.iterall()


# --- the action table -------------------------------------------------------------------------

EXPECTED_ACTIONS = {
    "PatientName": "Z",
    "PatientID": "Z/D",
    "PatientBirthDate": "Z",
    "PatientSex": "Z",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "EthnicGroup": "X",
    "PatientAge": "X",
    "PatientSize": "X",
    "PatientWeight": "X",
    "ReferringPhysicianName": "Z",
    "PerformingPhysicianName": "X",
    "OperatorsName": "X/Z/D",
    "InstitutionName": "X/Z/D",
    "InstitutionAddress": "X",
    "InstitutionalDepartmentName": "X",
    "StationName": "X/Z/D",
    "DeviceSerialNumber": "X/Z/D",
    "AccessionNumber": "Z",
    "StudyID": "Z",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "SeriesDate": "X/D",
    "SeriesTime": "X/D",
    "AcquisitionDate": "X/Z",
    "AcquisitionTime": "X/Z",
    "ContentDate": "Z/D",
    "ContentTime": "Z/D",
    "StudyInstanceUID": "U",
    "SeriesInstanceUID": "U",
    "SOPInstanceUID": "U",
    "FrameOfReferenceUID": "U",
    "MediaStorageSOPInstanceUID": "U",
    "ReferencedSOPInstanceUID": "U",
    "RequestAttributesSequence": "X",
    "ImageComments": "X",
    "StudyDescription": "X",
    "SeriesDescription": "X",
    "ReferencedImageSequence": "X/Z/U*",
}


@pytest.mark.parametrize(("keyword", "action"), sorted(EXPECTED_ACTIONS.items()))
def test_table_holds_the_standard_actions(keyword: str, action: str) -> None:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    assert BASIC_PROFILE[tag] == action


def test_table_is_well_formed() -> None:
    assert len(BASIC_PROFILE) > 500
    for tag, action in BASIC_PROFILE.items():
        get_entry(tag)  # every tag is a real attribute of the data dictionary
        assert action in VALUE_RESOLUTION
        assert action in SEQUENCE_RESOLUTION
    with pytest.raises(TypeError):
        BASIC_PROFILE[0x00100010] = "K"  # type: ignore[index]
    assert 0x00100030 not in FULL_DATES_RETAINED  # birth date never kept
    assert 0x00080020 in FULL_DATES_RETAINED


# --- identifying attributes ------------------------------------------------------------------


def test_identifying_attributes_removed_or_replaced() -> None:
    original = _read("examples_overlay.dcm")
    out = _deid(original)

    assert out.PatientName == PSEUDONYM
    assert out.PatientID == PSEUDONYM
    for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID"):
        assert out[keyword].value in ("", None), keyword
    for keyword in (
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "PatientAddress",
        "PregnancyStatus",
        "InstitutionAddress",
        "StudyDescription",
        "SeriesDescription",
        "ImageComments",
        "DerivationDescription",
    ):
        assert keyword not in out, keyword
    for keyword in (
        "InstitutionName",
        "StationName",
        "DeviceSerialNumber",
        "OperatorsName",
        "ProtocolName",
    ):
        assert out[keyword].value != original[keyword].value, keyword
    # dates without the retain option: Z for the study, a dummy where Type 1 may need one
    assert out.StudyDate == "" and out.StudyTime == ""
    assert out.AcquisitionDate == "" and out.AcquisitionTime == ""
    assert out.SeriesDate == "19000101" and out.ContentDate == "19000101"
    # what is not identifying is kept
    assert out.Modality == "MR"
    assert out.Manufacturer == "SIEMENS"
    assert out.Rows == original.Rows and out.PixelSpacing == original.PixelSpacing

    data = _encode(out)
    for leaked in (
        b"Sssssss",
        b"021234567",
        b"8000000000330109",
        b"AKH - WIEN",
        b"Waehringer",
        b"Wachau",
        b"MRC25641",
        b"meduser",
        b"abdomen^liver",
        b"marked lesion",
        b"Precision V",
        b"t1_vibe_fs_tra_bh_dyn",
        str(original.StudyInstanceUID).encode(),
        str(original.SOPInstanceUID).encode(),
    ):
        assert leaked not in data, leaked


def test_de_identification_is_recorded() -> None:
    out = _deid(_read("CT_small.dcm"))
    assert out.PatientIdentityRemoved == "YES"
    assert "Basic Application Confidentiality Profile" in str(out.DeidentificationMethod)
    codes = [
        (i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence
    ]
    assert codes == [("113100", "DCM")]
    assert out.LongitudinalTemporalInformationModified == "REMOVED"

    again = _deid(out)  # de-identifying twice records the profile once
    assert [i.CodeValue for i in again.DeidentificationMethodCodeSequence] == ["113100"]
    assert again.DeidentificationMethod == out.DeidentificationMethod


def test_keep_dates_retains_full_dates_but_not_the_birth_date() -> None:
    original = _read("examples_overlay.dcm")
    out = _deid(original, keep_dates=True)
    for keyword in (
        "StudyDate",
        "StudyTime",
        "SeriesDate",
        "SeriesTime",
        "AcquisitionDate",
        "AcquisitionTime",
        "ContentDate",
        "ContentTime",
    ):
        assert out[keyword].value == original[keyword].value, keyword
    assert out.PatientBirthDate == ""
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113106"]

    # dates already removed by an earlier de-identification are not claimed unmodified
    stripped = _deid(_deid(original), keep_dates=True)
    assert stripped.LongitudinalTemporalInformationModified == "REMOVED"


def test_original_dataset_is_not_modified() -> None:
    original = _read("examples_overlay.dcm")
    before_bytes = _encode(original)
    before = copy.deepcopy(original)

    out = _deid(original)

    assert out is not original
    assert original == before
    assert original.PatientName == "Sssssss^Jsssss"
    assert original.file_meta.MediaStorageSOPInstanceUID == before.SOPInstanceUID
    assert _encode(original) == before_bytes


def test_result_does_not_link_back_to_the_source_file() -> None:
    out = _deid(_read("CT_small.dcm"))
    assert getattr(out, "filename", None) is None
    assert getattr(out, "buffer", None) is None


# --- UIDs --------------------------------------------------------------------------------------


def test_uids_are_replaced_consistently_across_a_study() -> None:
    series = _ct_series()
    mapper = UidMapper(SECRET)
    outs = [deidentify(ds, uid_map=mapper, patient_pseudonym=PSEUDONYM) for ds in series]

    original_study = series[0].StudyInstanceUID
    assert {ds.StudyInstanceUID for ds in series} == {original_study}
    assert len({out.StudyInstanceUID for out in outs}) == 1
    assert len({out.SeriesInstanceUID for out in outs}) == 1
    assert len({out.FrameOfReferenceUID for out in outs}) == 1
    assert len({out.SOPInstanceUID for out in outs}) == len(series)
    for ds, out in zip(series, outs, strict=True):
        assert out.StudyInstanceUID == mapper.map(ds.StudyInstanceUID) != ds.StudyInstanceUID
        assert out.SeriesInstanceUID != ds.SeriesInstanceUID
        assert out.SOPInstanceUID != ds.SOPInstanceUID
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert out.SOPClassUID == ds.SOPClassUID  # class UIDs are not identifying
        assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID

    # the same study exported again, with a new mapper on the same secret, maps the same
    again = deidentify(series[0], uid_map=UidMapper(SECRET), patient_pseudonym=PSEUDONYM)
    assert again.SOPInstanceUID == outs[0].SOPInstanceUID
    assert again.StudyInstanceUID == outs[0].StudyInstanceUID


def test_a_different_secret_gives_different_uids() -> None:
    ds = _read("CT_small.dcm")
    one = _deid(ds)
    other = deidentify(
        ds, uid_map=UidMapper("another-secret-of-sixteen-bytes+"), patient_pseudonym=PSEUDONYM
    )
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert one[keyword].value != other[keyword].value, keyword


def test_references_follow_the_replaced_uids() -> None:
    overlay = _read("examples_overlay.dcm")
    out = _deid(overlay)
    reference = out.ReferencedImageSequence[0]
    original = overlay.ReferencedImageSequence[0]
    assert reference.ReferencedSOPClassUID == original.ReferencedSOPClassUID
    assert reference.ReferencedSOPInstanceUID == UidMapper(SECRET).map(
        original.ReferencedSOPInstanceUID
    )

    # inside one RT structure set the frame of reference and its references still agree
    struct = _deid(_read("rtstruct.dcm"))
    frame = struct.ReferencedFrameOfReferenceSequence[0]
    assert {roi.ReferencedFrameOfReferenceUID for roi in struct.StructureSetROISequence} == {
        frame.FrameOfReferenceUID
    }
    series_item = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series_item.SeriesInstanceUID.startswith("2.25.")


def test_uid_mapper_produces_valid_uuid_derived_uids() -> None:
    mapper = UidMapper(SECRET.encode())
    seen = set()
    for original in ("1.2.3", "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322", "0"):
        new = mapper(original)
        assert new == mapper.map(original) == UidMapper(SECRET).map(original)
        assert UID(new).is_valid and len(new) <= 64
        assert new.startswith("2.25.")
        assert uuid.UUID(int=int(new[5:])).version == 8
        seen.add(new)
    assert len(seen) == 3
    assert mapper.map("") == ""
    assert SECRET not in repr(mapper)
    with pytest.raises(ValueError):
        UidMapper("too short")


# --- private data, sequences, overlays ---------------------------------------------------------


@pytest.mark.parametrize("name", ["CT_small.dcm", "examples_overlay.dcm", "nested_priv_SQ.dcm"])
def test_private_attributes_are_removed_at_every_level(name: str) -> None:
    original = _read(name)
    assert any(element.tag.is_private for element in _all_elements(original))
    out = _deid(original)
    assert not any(element.tag.is_private for element in _all_elements(out))
    # nested_priv_SQ.dcm has an empty Media Storage SOP Class UID: written as it came
    _, back = _round_trip(out, enforce_file_format=name != "nested_priv_SQ.dcm")
    assert not any(element.tag.is_private for element in _all_elements(back))


def test_overlays_are_removed() -> None:
    original = _read("examples_overlay.dcm")
    assert any(0x6000 <= element.tag.group <= 0x601E for element in original)
    out = _deid(original)
    assert not any(0x6000 <= element.tag.group <= 0x601E for element in out)


def test_sequences_are_cleaned_recursively() -> None:
    plan = _read("rtplan.dcm")
    out = _deid(plan)
    beam = out.BeamSequence[0]
    assert beam.InstitutionName != plan.BeamSequence[0].InstitutionName
    assert "InstitutionalDepartmentName" not in beam
    assert beam.TreatmentMachineName == ""
    assert beam.BeamName == plan.BeamSequence[0].BeamName  # not in the table: kept
    for item in out.ReferencedStructureSetSequence:
        assert item.ReferencedSOPInstanceUID.startswith("2.25.")
    assert out.RTPlanLabel != plan.RTPlanLabel
    assert "RTPlanName" not in out

    struct = _deid(_read("rtstruct.dcm"))
    for roi in struct.StructureSetROISequence:
        assert roi.ROIName == ""
        assert "ROIDescription" not in roi
    for observation in struct.RTROIObservationsSequence:
        assert "ROIObservationLabel" not in observation
        assert "ROIObservationDescription" not in observation

    # a patient name nested in a code sequence item, with the item's own character set
    nested = _deid(_charset_file("chrSQEncoding.dcm"))
    item = nested.RequestedProcedureCodeSequence[0]
    assert item.PatientName == ""
    assert "RequestingPhysician" not in nested


def test_structured_report_content_is_cleaned() -> None:
    report = _read("reportsi.dcm")
    out = _deid(report)
    names = [e.value for e in _all_elements(out) if e.keyword == "PersonName"]
    assert names and all(name == "ANONYMIZED" for name in names)
    assert out.ReferringPhysicianName == ""
    assert out.ContentDate == "19000101"
    assert "StudyDescription" not in out and "SeriesDescription" not in out
    _round_trip(out)


def test_code_sequence_with_action_d_gets_a_dummy_code() -> None:
    ds = _read("CT_small.dcm")
    person = Dataset()
    person.PersonIdentificationCodeSequence = Sequence([Dataset()])
    code = person.PersonIdentificationCodeSequence[0]
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = ("D123", "L", "Dr Li Ming")
    person.PersonName = "Li^Ming"
    ds.ContentSequence = Sequence([person])

    out = _deid(ds)
    item = out.ContentSequence[0]
    assert item.PersonName == "ANONYMIZED"
    (dummy,) = item.PersonIdentificationCodeSequence
    assert dummy.CodeValue != "D123" and "Li Ming" not in dummy.CodeMeaning
    assert b"Li Ming" not in _encode(out)


def test_unknown_standard_attributes_are_removed() -> None:
    ds = _read("CT_small.dcm")
    ds.add_new(0x00FE0010, "LO", "unknown identifying text")
    out = _deid(ds)
    assert 0x00FE0010 not in out


# --- files, pixels, character sets --------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "examples_overlay.dcm",
        "rtplan.dcm",
        "JPEG2000.dcm",
        "MR_small_RLE.dcm",
    ],
)
def test_result_writes_and_reads_back_with_pixel_data_unchanged(name: str) -> None:
    original = _read(name)
    out = _deid(original)
    data, back = _round_trip(out)
    assert data[128:132] == b"DICM"
    assert back.PatientName == PSEUDONYM
    assert back.SOPInstanceUID == out.SOPInstanceUID
    assert back.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert back.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    if "PixelData" in original:
        assert out.PixelData == original.PixelData
        assert back.PixelData == original.PixelData


@pytest.mark.parametrize(("name", "encoding"), [("chrX1.dcm", "utf-8"), ("chrX2.dcm", "gb18030")])
def test_chinese_character_sets_stay_consistent(name: str, encoding: str) -> None:
    original = _charset_file(name)
    charset = original.SpecificCharacterSet
    original.Manufacturer = "联影医疗"  # kept: not identifying
    original.InstitutionName = "北京协和医院"  # replaced
    source = _encode(original)
    assert "王".encode(encoding) in source

    out = _deid(original)
    data, back = _round_trip(out)

    assert back.SpecificCharacterSet == charset
    assert back.Manufacturer == "联影医疗"
    assert back.PatientName == PSEUDONYM
    assert back.InstitutionName == "ANONYMIZED"
    for text in ("王", "小", "北京协和医院"):
        assert text.encode(encoding) not in data, text
    # the source application entity title of the sending system is gone from the file meta
    assert "SourceApplicationEntityTitle" not in back.file_meta


# --- refusals and arguments -----------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["YES", "YES "])
def test_burned_in_annotation_is_refused(flag: str) -> None:
    ds = _read("CT_small.dcm")
    ds.BurnedInAnnotation = flag
    with pytest.raises(BurnedInAnnotation):
        _deid(ds)
    assert issubclass(BurnedInAnnotation, DeidentificationError)


def test_burned_in_annotation_no_is_exported() -> None:
    ds = _read("CT_small.dcm")
    ds.BurnedInAnnotation = "NO"
    assert _deid(ds).BurnedInAnnotation == "NO"


@pytest.mark.parametrize("pseudonym", ["", "王小东", "Li^Ming", "a\\b", "-x", "x" * 65])
def test_invalid_pseudonyms_are_rejected(pseudonym: str) -> None:
    with pytest.raises(ValueError):
        _deid(_read("CT_small.dcm"), patient_pseudonym=pseudonym)
