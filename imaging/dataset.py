"""One received DICOM instance: read its header, check it is whole, extract what is indexed.

The file is kept exactly as received; this module only reads it. ``read_instance`` parses a
DICOM Part 10 file (pydicom), refuses what cannot be stored safely — not DICOM, missing the
identifying UIDs, pixel data shorter than its attributes promise (a truncated transfer) —
and returns an ``InstanceHeader``: the attributes the metadata index and QIDO need, the
DICOM JSON of everything but bulk data (for WADO-RS metadata), and names decoded to text.

Chinese names: a declared Specific Character Set (ISO_IR 192, GB18030, GBK) is honoured by
pydicom; many hospital systems declare none and send GB18030 bytes, which would otherwise be
read as Latin-1 mojibake. Undeclared non-ASCII text is therefore decoded as UTF-8 if it is
valid UTF-8, else as GB18030.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from imaging.metadata import metadata_json as instance_json

PIXEL_DATA = Tag(0x7FE0, 0x0010)
BULK_THRESHOLD = 1024  # values longer than this are bulk data, not inlined in metadata JSON
# Values longer than this are not read into memory (pydicom defers them): a 500 MB multi-frame
# instance is checked by seeking through its pixel data, never held whole.
DEFER_BYTES = 1 << 20
_ITEM, _SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE0DD
UNDECLARED_FALLBACK = ("utf-8", "gb18030")

# DICOM status codes for refusals (PS3.4 Annex B / PS3.7 C.4.2).
CANNOT_UNDERSTAND = 0xC000
DATASET_DOES_NOT_MATCH = 0xA900


class InvalidInstance(Exception):
    """An instance that is refused, with the DICOM failure status and the reason."""

    def __init__(self, reason: str, status: int = CANNOT_UNDERSTAND) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class InstanceHeader:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    referring_physician: str | None = None
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    body_part: str | None = None
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int = 1
    character_set: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)


def read_instance(source: bytes | BinaryIO) -> InstanceHeader:
    """The header of a Part 10 file; InvalidInstance if it cannot be stored."""
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = pydicom.dcmread(stream, force=False, defer_size=DEFER_BYTES)
        except InvalidDicomError as error:
            raise InvalidInstance(f"not a DICOM Part 10 file: {error}") from None
        except Exception as error:  # pydicom raises many kinds on damaged input
            raise InvalidInstance(
                f"the file cannot be read: {type(error).__name__}: {error}"
            ) from None
    for warning in caught:
        if "End of file reached" in str(warning.message):  # a sequence or item cut short
            raise InvalidInstance(f"truncated: {warning.message}")
    _check_last_element(dataset, stream)
    return header_of(dataset, stream)


def _check_last_element(dataset: Dataset, stream: BinaryIO | None = None) -> None:
    """The file's last element must be whole: pydicom reads a defined-length value cut short
    by the end of the file without complaint (a transfer that stopped early)."""
    tags = list(dataset.keys())
    if not tags:
        raise InvalidInstance("the file holds no data set")
    raw = dataset.get_item(max(tags), keep_deferred=True)
    length, value = getattr(raw, "length", None), getattr(raw, "value", None)
    if value is None and stream is not None and isinstance(length, int) and length != 0xFFFFFFFF:
        end = getattr(raw, "value_tell", 0) + length  # a deferred value: is it all there?
        if end > _size(stream):
            raise InvalidInstance(
                f"truncated: the last element {raw.tag} declares {length} bytes but the file"
                f" ends {end - _size(stream)} bytes short"
            )
        return
    if (
        isinstance(length, int)
        and length != 0xFFFFFFFF
        and isinstance(value, bytes)
        and len(value) < length
    ):
        raise InvalidInstance(
            f"truncated: the last element {raw.tag} declares {length} bytes but the file"
            f" holds {len(value)}"
        )


def header_of(dataset: Dataset, stream: BinaryIO | None = None) -> InstanceHeader:
    """The indexed attributes of a parsed dataset (with its file meta); ``stream`` is the file
    it was read from, for pixel data left in the file (deferred)."""
    meta = getattr(dataset, "file_meta", None)
    transfer_syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not transfer_syntax:
        raise InvalidInstance("the file meta has no Transfer Syntax UID (0002,0010)")
    required = {
        "SOPClassUID": "(0008,0016)",
        "SOPInstanceUID": "(0008,0018)",
        "StudyInstanceUID": "(0020,000D)",
        "SeriesInstanceUID": "(0020,000E)",
    }
    values: dict[str, str] = {}
    for keyword, tag in required.items():
        try:
            value = str(dataset.get(keyword, "") or "").strip()
        except Exception:
            value = ""
        if not value:
            raise InvalidInstance(
                f"{keyword} {tag} is missing or empty", status=DATASET_DOES_NOT_MATCH
            )
        if len(value) > 64 or not all(c.isdigit() or c == "." for c in value):
            raise InvalidInstance(f"{keyword} {tag} is not a valid UID: {value[:70]!r}")
        values[keyword] = value
    media_uid = str(getattr(meta, "MediaStorageSOPInstanceUID", "") or "")
    if media_uid and media_uid != values["SOPInstanceUID"]:
        raise InvalidInstance(
            "the file meta's Media Storage SOP Instance UID differs from the SOP Instance UID"
        )
    check_pixel_data(dataset, transfer_syntax, stream)
    charset = _charset(dataset)
    return InstanceHeader(
        sop_class_uid=values["SOPClassUID"],
        sop_instance_uid=values["SOPInstanceUID"],
        study_uid=values["StudyInstanceUID"],
        series_uid=values["SeriesInstanceUID"],
        transfer_syntax=transfer_syntax,
        patient_id=_text(dataset, "PatientID"),
        issuer_of_patient_id=_text(dataset, "IssuerOfPatientID"),
        patient_name=_text(dataset, "PatientName", charset),
        birth_date=_text(dataset, "PatientBirthDate"),
        sex=_text(dataset, "PatientSex"),
        study_date=_text(dataset, "StudyDate"),
        study_time=_text(dataset, "StudyTime"),
        accession_number=_text(dataset, "AccessionNumber"),
        study_description=_text(dataset, "StudyDescription", charset),
        referring_physician=_text(dataset, "ReferringPhysicianName", charset),
        modality=_text(dataset, "Modality"),
        series_number=_int(dataset, "SeriesNumber"),
        series_description=_text(dataset, "SeriesDescription", charset),
        body_part=_text(dataset, "BodyPartExamined"),
        instance_number=_int(dataset, "InstanceNumber"),
        rows=_int(dataset, "Rows"),
        columns=_int(dataset, "Columns"),
        frames=_int(dataset, "NumberOfFrames") or 1,
        character_set=charset,
        metadata=instance_json(dataset, charset, pydicom.uid.UID(transfer_syntax).is_little_endian),
    )


def check_pixel_data(
    dataset: Dataset, transfer_syntax: str, stream: BinaryIO | None = None
) -> None:
    """Refuse pixel data shorter than Rows × Columns × samples × bits × frames promise
    (native), or encapsulated fragments that do not parse (compressed): both mean the
    transfer was cut short. Pixel data left in ``stream`` (deferred) is checked there by
    seeking, without reading it into memory."""
    if PIXEL_DATA not in dataset:
        if _int(dataset, "Rows") and _int(dataset, "Columns"):
            # an image's Pixel Data is required (type 1): the file ended before it
            raise InvalidInstance("truncated: an image without Pixel Data (7FE0,0010)")
        return
    syntax = pydicom.uid.UID(transfer_syntax)
    raw = dataset.get_item(PIXEL_DATA, keep_deferred=True)
    if getattr(raw, "value", b"") is None and stream is not None:
        _check_deferred_pixel_data(dataset, raw, syntax, stream)
        return
    element = dataset[PIXEL_DATA]
    value = element.value
    if value is None:
        raise InvalidInstance("Pixel Data (7FE0,0010) is empty")
    if syntax.is_encapsulated:
        try:
            fragments = sum(1 for _ in generate_fragments(value))
        except (ValueError, EOFError, TypeError) as error:
            raise InvalidInstance(f"the compressed pixel data is damaged: {error}") from None
        if fragments == 0:
            raise InvalidInstance("the compressed pixel data holds no fragment")
        return
    rows, columns = _int(dataset, "Rows"), _int(dataset, "Columns")
    bits = _int(dataset, "BitsAllocated")
    if not rows or not columns or not bits:
        raise InvalidInstance("Pixel Data without Rows, Columns or Bits Allocated")
    expected = _native_length(dataset, rows, columns, bits)
    if len(value) < expected:
        raise InvalidInstance(
            f"truncated: Pixel Data is {len(value)} bytes, Rows x Columns x samples x frames x"
            f" bits need {expected}"
        )


def _native_length(dataset: Dataset, rows: int, columns: int, bits: int) -> int:
    samples = _int(dataset, "SamplesPerPixel") or 1
    frames = _int(dataset, "NumberOfFrames") or 1
    return (rows * columns * samples * frames * bits + 7) // 8


def _check_deferred_pixel_data(
    dataset: Dataset, raw: Any, syntax: pydicom.uid.UID, stream: BinaryIO
) -> None:
    size = _size(stream)
    start, length = int(raw.value_tell), int(raw.length)
    if not syntax.is_encapsulated:
        rows, columns = _int(dataset, "Rows"), _int(dataset, "Columns")
        bits = _int(dataset, "BitsAllocated")
        if not rows or not columns or not bits:
            raise InvalidInstance("Pixel Data without Rows, Columns or Bits Allocated")
        expected = _native_length(dataset, rows, columns, bits)
        held = min(length, size - start)
        if held < expected:
            raise InvalidInstance(
                f"truncated: Pixel Data is {held} bytes, Rows x Columns x samples x frames x"
                f" bits need {expected}"
            )
        return
    # Encapsulated: items (FFFE,E000) with defined lengths, then the sequence delimiter.
    endian = "<" if syntax.is_little_endian else ">"
    position, fragments = start, 0
    while True:
        stream.seek(position)
        head = stream.read(8)
        if len(head) < 8:
            raise InvalidInstance("truncated: the compressed pixel data ends without a delimiter")
        group, element, item_length = struct.unpack(f"{endian}HHL", head)
        tag = (group << 16) | element
        if tag == _SEQUENCE_DELIMITER:
            break
        if tag != _ITEM:
            raise InvalidInstance(
                f"the compressed pixel data is damaged: ({group:04X},{element:04X}) where a"
                " fragment item was expected"
            )
        position += 8 + item_length
        if position > size:
            raise InvalidInstance("truncated: a compressed pixel data fragment is cut short")
        fragments += 1
    if fragments < 2:  # the Basic Offset Table item, then at least one fragment
        raise InvalidInstance("the compressed pixel data holds no fragment")


def _size(stream: BinaryIO) -> int:
    """The stream's total length in bytes (its position is left where it was)."""
    if isinstance(stream, io.BytesIO):
        return len(stream.getbuffer())
    with contextlib.suppress(OSError, AttributeError, io.UnsupportedOperation):
        return os.fstat(stream.fileno()).st_size
    here = stream.tell()
    end = stream.seek(0, os.SEEK_END)
    stream.seek(here)
    return end


def metadata_json(dataset: Dataset) -> dict[str, Any]:
    """The DICOM JSON model (PS3.18 F.2) of a dataset without its bulk data (see
    ``imaging.metadata``), in the dataset's declared character set."""
    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    little = pydicom.uid.UID(str(syntax)).is_little_endian if syntax else True
    return instance_json(dataset, _charset(dataset), little)


def _charset(dataset: Dataset) -> str | None:
    value = dataset.get("SpecificCharacterSet")
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return "\\".join(str(v) for v in value)  # a multi-valued set (ISO 2022 code extensions)


def _text(dataset: Dataset, keyword: str, charset: str | None = "") -> str | None:
    """An attribute as text; undeclared non-ASCII bytes as UTF-8 or GB18030 (see above)."""
    if charset is None and keyword in _TEXT_KEYWORDS:
        raw = _raw_bytes(dataset, keyword)  # before pydicom decodes it as Latin-1
        if raw is not None and any(b > 0x7F for b in raw):
            for encoding in UNDECLARED_FALLBACK:
                try:
                    return raw.decode(encoding).strip().rstrip("\x00") or None
                except UnicodeDecodeError:
                    continue
    try:
        element = dataset.data_element(keyword)
    except Exception:
        return None
    if element is None or element.value in (None, ""):
        return None
    text = str(element.value).strip().rstrip("\x00")
    return text or None


_TEXT_KEYWORDS = frozenset(
    {"PatientName", "StudyDescription", "SeriesDescription", "ReferringPhysicianName"}
)


def _raw_bytes(dataset: Dataset, keyword: str) -> bytes | None:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:
        return None
    raw = dataset.get_item(tag)
    value = getattr(raw, "value", None)
    return value if isinstance(value, bytes) else None


def _int(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
