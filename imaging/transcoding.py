"""Lossless re-encoding of a stored instance into Explicit VR Little Endian, on request.

Files are kept and served as received; a WADO client that asks for Explicit VR Little Endian
(PS3.18's default for ``application/dicom``) gets an instance stored in Implicit VR Little
Endian or Deflated Explicit VR Little Endian re-encoded: the same elements and pixel bytes,
only the encoding of the element headers (or the deflate) differs. Nothing is decompressed or
recompressed; big endian (retired) and compressed pixel data are not converted.
"""

from __future__ import annotations

import io
from typing import BinaryIO

import pydicom
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

CONVERTIBLE = frozenset({str(ImplicitVRLittleEndian), str(DeflatedExplicitVRLittleEndian)})
EXPLICIT_LITTLE = str(ExplicitVRLittleEndian)
MAX_CONVERTED_BYTES = 256 << 20  # converted in memory: larger files are served as stored


def convertible(stored_syntax: str, size: int) -> bool:
    """Whether a file in ``stored_syntax`` of ``size`` bytes can be served as Explicit VR LE."""
    return stored_syntax in CONVERTIBLE and size <= MAX_CONVERTED_BYTES


def to_explicit_little_endian(source: BinaryIO) -> bytes:
    """The Part 10 file re-encoded in Explicit VR Little Endian (lossless)."""
    dataset = pydicom.dcmread(source)
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    dataset.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    return out.getvalue()
