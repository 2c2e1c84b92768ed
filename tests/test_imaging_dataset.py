"""Reading received DICOM instances (imaging.dataset) and storing them (imaging.store), with
the files that ship with pydicom: every common transfer syntax, truncation, Chinese names."""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from imaging.dataset import DATASET_DOES_NOT_MATCH, InvalidInstance, read_instance
from imaging.store import FileStore

# file, transfer syntax, modality
SAMPLES = [
    ("CT_small.dcm", "1.2.840.10008.1.2.1", "CT"),  # explicit VR little endian
    ("MR_small_implicit.dcm", "1.2.840.10008.1.2", "MR"),  # implicit VR little endian
    ("MR_small_RLE.dcm", "1.2.840.10008.1.2.5", "MR"),  # RLE lossless
    ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91", None),  # JPEG 2000
    ("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.90", "MR"),  # JPEG 2000 lossless
    ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50", "OT"),  # JPEG baseline
    ("JPEG-lossy.dcm", "1.2.840.10008.1.2.4.51", None),  # JPEG extended
    ("SC_rgb_rle_2frame.dcm", "1.2.840.10008.1.2.5", "OT"),  # multi-frame
    ("test-SR.dcm", None, "SR"),  # structured report, no pixel data
]


def sample(name: str) -> bytes:
    return Path(str(get_testdata_file(name))).read_bytes()


@pytest.mark.parametrize(("name", "syntax", "modality"), SAMPLES)
def test_the_common_files_are_read(name: str, syntax: str | None, modality: str | None) -> None:
    data = sample(name)
    header = read_instance(data)
    original = pydicom.dcmread(io.BytesIO(data))
    assert header.sop_instance_uid == original.SOPInstanceUID
    assert header.study_uid == original.StudyInstanceUID
    assert header.series_uid == original.SeriesInstanceUID
    if syntax:
        assert header.transfer_syntax == syntax
    if modality:
        assert header.modality == modality
    assert "7FE00010" not in header.metadata  # no pixel data in the metadata
    assert header.metadata["0020000D"]["Value"] == [original.StudyInstanceUID]
    if "NumberOfFrames" in original:
        assert header.frames == int(original.NumberOfFrames)


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm"])
@pytest.mark.parametrize("cut", [100, 777])
def test_a_truncated_file_is_refused(name: str, cut: int) -> None:
    data = sample(name)
    with pytest.raises(InvalidInstance) as refused:
        read_instance(data[: len(data) - cut])
    assert refused.value.status in (0xC000, 0xA900)
    assert refused.value.reason


def test_a_file_cut_inside_its_last_element_is_refused() -> None:
    data = sample("CT_small.dcm")  # ends with a Data Set Trailing Padding element
    with pytest.raises(InvalidInstance, match="truncated"):
        read_instance(data[:-1])


def test_what_is_not_dicom_or_lacks_its_uids_is_refused() -> None:
    with pytest.raises(InvalidInstance, match="not a DICOM Part 10 file"):
        read_instance(b"MSH|^~\\&|not dicom at all" * 10)
    with pytest.raises(InvalidInstance):
        read_instance(b"")
    dataset = pydicom.dcmread(io.BytesIO(sample("CT_small.dcm")))
    del dataset.SOPInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    with pytest.raises(InvalidInstance, match="SOPInstanceUID") as refused:
        read_instance(buffer.getvalue())
    assert refused.value.status == DATASET_DOES_NOT_MATCH


def _with_name(name_bytes: bytes | str, charset: str | None) -> bytes:
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    uid = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = uid
    if charset:
        dataset.SpecificCharacterSet = charset
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    dataset.SOPInstanceUID = uid
    dataset.StudyInstanceUID = generate_uid()
    dataset.SeriesInstanceUID = generate_uid()
    dataset.PatientID = "MRN-1"
    dataset.PatientName = name_bytes
    dataset.Modality = "OT"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("charset", ["ISO_IR 192", "GB18030", "GBK"])
def test_chinese_names_in_declared_character_sets(charset: str) -> None:
    assert read_instance(_with_name("张^三丰", charset)).patient_name == "张^三丰"


@pytest.mark.parametrize("encoding", ["gb18030", "utf-8"])
def test_chinese_names_without_a_declared_character_set(encoding: str) -> None:
    """Hospital systems often declare nothing and send GB18030 (or UTF-8) bytes."""
    data = _with_name("张^三丰".encode(encoding), None)
    assert read_instance(data).patient_name == "张^三丰"


def test_the_store_is_content_addressed_and_atomic(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    data = sample("CT_small.dcm")
    first = store.put_file(io.BytesIO(data))
    again = store.put_chunks([data[:1000], data[1000:]])
    assert first == again and first.size == len(data)
    with store.open(first.key) as stored:
        assert stored.read() == data  # byte-equal, as received
    assert store.exists(first.key)
    assert not list((tmp_path / "incoming").iterdir())  # no temporary files left
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1
    with pytest.raises(ValueError):
        store.open("../../etc/passwd")
    store.delete(first.key)
    assert not store.exists(first.key)


def _large(path: Path, encapsulated: bool, frames: int = 40) -> Path:
    """A multi-frame instance of ``frames`` 512×512 frames (native 16-bit: 20 MB for 40), far
    above the size at which pixel data is left in the file."""
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7.3"
    dataset.SOPInstanceUID, dataset.StudyInstanceUID = generate_uid(), generate_uid()
    dataset.SeriesInstanceUID, dataset.PatientID, dataset.Modality = generate_uid(), "BIG", "OT"
    dataset.Rows = dataset.Columns = 512
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.NumberOfFrames, dataset.PixelRepresentation = frames, 0
    dataset.file_meta = FileMetaDataset()
    if encapsulated:
        dataset.BitsAllocated = dataset.BitsStored = 8
        dataset.HighBit = 7
        dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        dataset.PixelData = encapsulate([b"\xff\xd8" + bytes(400_000) + b"\xff\xd9"] * frames)
        dataset["PixelData"].VR = "OB"
    else:
        dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.PixelData = bytes(512 * 512 * 2 * frames)
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("encapsulated", [False, True], ids=["native", "encapsulated"])
def test_large_instances_are_checked_without_reading_their_pixels(
    tmp_path: Path, encapsulated: bool
) -> None:
    path = _large(tmp_path / "large.dcm", encapsulated)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with open(path, "rb") as source:
            header = read_instance(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert header.frames == 40
    assert peak < size / 20, f"reading the header took {peak} bytes for a {size}-byte file"
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[: size * 3 // 4])
    with pytest.raises(InvalidInstance, match="truncated"), open(cut, "rb") as source:
        read_instance(source)


def test_damaged_fragment_items_are_refused_without_reading_them(tmp_path: Path) -> None:
    path = _large(tmp_path / "large.dcm", encapsulated=True)
    data = bytearray(path.read_bytes())
    second_item = data.index(b"\xfe\xff\x00\xe0", data.index(b"\xfe\xff\x00\xe0") + 8)
    data[second_item : second_item + 4] = b"\x08\x00\x18\x00"  # not an item tag
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInstance), open(path, "rb") as source:
        read_instance(source)
