"""Pixel data served over DICOMweb: WADO-RS frames, rendered images and thumbnails.

The stored Part 10 file is read once per call and only as far as needed: the header up to
Pixel Data, then the byte range of the wanted frame. A native multi-frame instance of
hundreds of MB is never loaded whole for one frame, and a compressed instance is never
decoded whole: frames are found through the Basic (or Extended) Offset Table, or the
fragment items when there is none.

A source stream that cannot seek (an HTTP or object-store body) is read into memory first:
pydicom and the frame offsets need to seek. The stream is left positioned anywhere.

Frames (``frames``) are served as stored where the standard allows, never recompressed:

* native (uncompressed) pixel data as ``application/octet-stream`` in Explicit VR Little
  Endian: PS3.18 8.7.3.3.1 says uncompressed bulk data is little endian, so the frames of
  a (retired) Explicit VR Big Endian instance are byte-swapped, and a Deflated instance's
  are inflated. 1-bit frames are re-packed to start at bit 0 (PS3.5 8.1.1 packs frames
  without padding, so a frame may start inside a byte);
* compressed pixel data as the frame's bitstream (its fragments joined), in the media
  type PS3.18 Table 8.7.3-5 gives its transfer syntax (``_COMPRESSED_MEDIA_TYPES``).

Rendering (``render``, ``thumbnail``) follows the grayscale pipeline of PS3.3 C.11: the
Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence; per frame for enhanced
multi-frame instances), then the VOI: the requested window, else the instance's first
window with its VOI LUT Function (C.11.2.1.2/3), else its first VOI LUT, else the frame's
own range; MONOCHROME1 is inverted. Colour images become RGB (YBR by pydicom, PALETTE
COLOR through its LUT). The output is 8-bit PNG or JPEG, scaled down to a viewport.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames, get_frame, parse_basic_offsets, parse_fragments
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.pixels.processing import (
    apply_color_lut,
    apply_modality_lut,
)
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    MPEGTransferSyntaxes,
)

BAD_REQUEST = 400
NOT_FOUND = 404
NOT_ACCEPTABLE = 406
UNPROCESSABLE = 422
SERVICE_UNAVAILABLE = 503

NATIVE_MEDIA_TYPE = "application/octet-stream"
RENDERED_MEDIA_TYPES = frozenset({"image/png", "image/jpeg"})
THUMBNAIL_QUALITY = 85

# PS3.18 Table 8.7.3-5 (Media Types and Transfer Syntax UIDs for Compressed Data in Bulkdata).
# RLE is image/dicom-rle since the type was registered with IANA (older editions of PS3.18
# said image/x-dicom-rle); HTJ2K (image/jphc) was added in 2023.
_COMPRESSED_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "image/jpeg",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57": "image/jpeg",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70": "image/jpeg",  # JPEG Lossless, SV1
    "1.2.840.10008.1.2.5": "image/dicom-rle",  # RLE Lossless
    "1.2.840.10008.1.2.4.80": "image/jls",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "image/jls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "image/jp2",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91": "image/jp2",  # JPEG 2000
    "1.2.840.10008.1.2.4.92": "image/jpx",  # JPEG 2000 Part 2 (Lossless Only)
    "1.2.840.10008.1.2.4.93": "image/jpx",  # JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201": "image/jphc",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "image/jphc",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "image/jphc",  # HTJ2K
}

_PIXEL_KEYWORDS = {
    0x7FE00008: "FloatPixelData",
    0x7FE00009: "DoubleFloatPixelData",
    0x7FE00010: "PixelData",
}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"UN"})
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
_KNOWN_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)


class RenderError(ValueError):
    """Why an instance or frame cannot be served this way (the message is for the client).

    ``status`` is the HTTP status: 400 a bad parameter (no frame numbers, window width
    below 1, quality outside 1..100, empty viewport), 404 a frame out of range, 406 a media
    type that cannot be produced, 422 not renderable (no pixel data — SR, encapsulated PDF
    —, a transfer syntax without a decoder, damaged pixel data).
    """

    def __init__(self, message: str, status: int = UNPROCESSABLE) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Frames:
    """Frames as WADO-RS sends them: one multipart part each, of ``media_type`` with the
    ``transfer-syntax`` parameter ``transfer_syntax``."""

    media_type: str
    transfer_syntax: str
    frames: list[bytes]


@dataclass(frozen=True)
class _Pixels:
    """Where an instance's pixel data value lies: ``offset`` is the first byte of the value
    in ``stream``; ``length`` is None for encapsulated (undefined length) pixel data."""

    stream: BinaryIO
    offset: int
    length: int | None
    keyword: str
    vr: str | None


@dataclass(frozen=True)
class _Instance:
    dataset: Dataset  # every attribute before the pixel data (the pixel data not read)
    syntax: UID  # the transfer syntax of the pixel data value as found in ``pixels``
    pixels: _Pixels | None


def frame_count(dataset: Dataset) -> int:
    """The number of frames of an instance: Number of Frames (0028,0008), 1 for an image
    without it, 0 for an instance that is not an image (no Rows/Columns, e.g. SR, PDF).

    Works on a header read with ``stop_before_pixels``. RenderError(422) if Number of
    Frames is not a positive integer (the pixel data cannot be cut into frames)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of an invalid IS on access
        if not dataset.get("Rows") or not dataset.get("Columns"):
            return 0
        value = dataset.get("NumberOfFrames")
    if value is None or str(value).strip() == "":
        return 1
    try:
        count = int(str(value).strip())
    except ValueError:
        raise RenderError(f"Number of Frames (0028,0008) is not an integer: {value!r}") from None
    if count < 1:
        raise RenderError(f"Number of Frames (0028,0008) is {count}")
    return count


def frames(source: bytes | BinaryIO, numbers: Sequence[int]) -> Frames:
    """The frames ``numbers`` (1-based, in the order given, repeats allowed) as stored:
    native frames exactly their bytes (little endian), compressed frames their bitstream
    (fragments joined), never decoded nor recompressed. RenderError: 400 no numbers, 404 a
    number out of range, 422 no pixel data, a video or unknown transfer syntax, damage."""
    if not numbers:
        raise RenderError("no frame numbers were given", BAD_REQUEST)
    instance = _read(source)
    pixels = _require_pixels(instance)
    count = frame_count(instance.dataset)
    indices = [_frame_index(number, count) for number in numbers]
    _check_total(instance, pixels, len(indices))
    if pixels.length is not None:
        return Frames(
            media_type=NATIVE_MEDIA_TYPE,
            transfer_syntax=str(ExplicitVRLittleEndian),
            frames=[_native_frame(instance, pixels, index) for index in indices],
        )
    media_type = _compressed_media_type(instance.syntax)
    found = _compressed_frames(instance, pixels, count, indices)
    return Frames(
        media_type=media_type,
        transfer_syntax=str(instance.syntax),
        frames=[found[index] for index in indices],
    )


MAX_FRAMES_BYTES = 512 << 20  # one frames request answers at most this much


def _check_total(instance: _Instance, pixels: _Pixels, requested: int) -> None:
    """A frames answer is built in memory: bound it (a list repeating one large frame
    thousands of times would otherwise take gigabytes)."""
    if pixels.length is not None:
        count = max(frame_count(instance.dataset), 1)
        per_frame = pixels.length // count
    else:  # compressed: the pixel data's share of the file, per frame
        here = pixels.stream.tell()
        end = pixels.stream.seek(0, 2)
        pixels.stream.seek(here)
        per_frame = (end - pixels.offset) // max(frame_count(instance.dataset), 1)
    if per_frame * requested > MAX_FRAMES_BYTES:
        raise RenderError(
            f"{requested} frames of about {per_frame >> 10} KiB are more than one request may"
            f" ask for ({MAX_FRAMES_BYTES >> 20} MiB); ask for fewer at a time",
            BAD_REQUEST,
        )


def render(
    source: bytes | BinaryIO,
    frame: int = 1,
    *,
    media_type: str = "image/png",
    window: tuple[float, float] | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """Frame ``frame`` (1-based) rendered as an 8-bit ``image/png`` or ``image/jpeg``.

    ``window`` is (center, width) in modality units (after the Modality LUT), applied with
    the LINEAR function (PS3.18 8.3.5.1.4 default); without it the instance's own VOI is
    used (module docstring). It applies to grayscale images only. ``viewport`` is the
    (columns, rows) box the image is scaled down to fit, keeping its aspect ratio and never
    enlarged. ``quality`` (1..100) is the JPEG quality. Only the one frame is decoded."""
    kind = _rendered_media_type(media_type)
    if not 1 <= quality <= 100:
        raise RenderError(f"quality must be 1..100, not {quality}", BAD_REQUEST)
    if viewport is not None and (viewport[0] < 1 or viewport[1] < 1):
        raise RenderError(f"the viewport {viewport} is empty", BAD_REQUEST)
    if window is not None:
        if not math.isfinite(window[0]):
            raise RenderError(f"window center {window[0]} is not a number", BAD_REQUEST)
        if not window[1] >= 1:  # also refuses NaN
            raise RenderError(
                f"window width must be at least 1 (PS3.3 C.11.2.1.2), not {window[1]}",
                BAD_REQUEST,
            )
    instance = _read(source)
    _require_pixels(instance)  # 422 before a frame number can be judged
    index = _frame_index(frame, frame_count(instance.dataset))
    return _encode(_render_frame(instance, index, window), kind, viewport, quality)


def thumbnail(source: bytes | BinaryIO, size: int = 128, media_type: str = "image/jpeg") -> bytes:
    """The middle frame rendered with the instance's default VOI, fitting in size × size."""
    if size < 1:
        raise RenderError(f"a thumbnail size must be positive, not {size}", BAD_REQUEST)
    kind = _rendered_media_type(media_type)
    instance = _read(source)
    _require_pixels(instance)
    index = (frame_count(instance.dataset) + 1) // 2 - 1
    return _encode(_render_frame(instance, index, None), kind, (size, size), THUMBNAIL_QUALITY)


# -- reading ---------------------------------------------------------------------------


def _read(source: bytes | BinaryIO) -> _Instance:
    """The header of a Part 10 file and where its pixel data value is (not read)."""
    if isinstance(source, bytes | bytearray | memoryview):
        stream: BinaryIO = io.BytesIO(bytes(source))
    else:
        stream = source
        seekable = getattr(stream, "seekable", None)
        if seekable is None or not seekable():
            stream = io.BytesIO(stream.read())  # pydicom and frame access need to seek
    start = stream.tell()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's leniency warnings are not the client's
        try:
            dataset = pydicom.dcmread(stream, stop_before_pixels=True)
        except InvalidDicomError as error:
            raise RenderError(f"not a DICOM Part 10 file: {error}") from error
        except Exception as error:  # pydicom raises many kinds on damaged input
            raise RenderError(
                f"the file cannot be read: {type(error).__name__}: {error}"
            ) from error
    syntax = UID(str(getattr(dataset.file_meta, "TransferSyntaxUID", "") or ""))
    if not syntax:
        raise RenderError("the file meta has no Transfer Syntax UID (0002,0010)")
    if syntax not in _KNOWN_SYNTAXES:
        raise RenderError(f"the transfer syntax {syntax} is not supported")
    if syntax == DeflatedExplicitVRLittleEndian:
        return _read_deflated(stream, start)
    return _Instance(dataset, syntax, _pixel_element(stream, syntax))


def _read_deflated(stream: BinaryIO, start: int) -> _Instance:
    """A Deflated instance is inflated whole by pydicom (the data set is one zlib stream,
    nothing can be skipped); its pixel data is then native Explicit VR Little Endian."""
    stream.seek(start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = pydicom.dcmread(stream)
        except Exception as error:  # pydicom raises many kinds on damaged input
            raise RenderError(
                f"the deflated file cannot be read: {type(error).__name__}: {error}"
            ) from error
    for tag, keyword in _PIXEL_KEYWORDS.items():
        if tag in dataset:
            element = dataset[tag]
            value = element.value
            del dataset[tag]
            if not isinstance(value, bytes):
                raise RenderError(f"{keyword} is not encoded as bytes")
            pixels = _Pixels(io.BytesIO(value), 0, len(value), keyword, element.VR)
            return _Instance(dataset, UID(ExplicitVRLittleEndian), pixels)
    return _Instance(dataset, UID(ExplicitVRLittleEndian), None)


def _pixel_element(stream: BinaryIO, syntax: UID) -> _Pixels | None:
    """The pixel data element's header at the stream's position (where
    ``stop_before_pixels`` stopped), or None at the end of the data set."""
    header = stream.read(8)
    if len(header) < 8:
        return None
    endian = "<" if syntax.is_little_endian else ">"
    group, element = struct.unpack(f"{endian}HH", header[:4])
    keyword = _PIXEL_KEYWORDS.get(group << 16 | element)
    if keyword is None:  # pydicom stops only at these tags
        raise RenderError(f"unexpected element ({group:04X},{element:04X}) before pixel data")
    vr: str | None = None
    if syntax.is_implicit_VR:
        (length,) = struct.unpack(f"{endian}L", header[4:])
    else:
        raw_vr = header[4:6]
        vr = raw_vr.decode("ascii", "replace")
        if raw_vr in _LONG_LENGTH_VRS:
            extended = stream.read(4)
            if len(extended) < 4:
                raise RenderError("the pixel data element is truncated")
            (length,) = struct.unpack(f"{endian}L", extended)
        else:
            (length,) = struct.unpack(f"{endian}H", header[6:])
    offset = stream.tell()
    if length == _UNDEFINED_LENGTH:
        if not syntax.is_encapsulated:
            raise RenderError(f"{keyword} is encapsulated but {syntax.name} is not")
        return _Pixels(stream, offset, None, keyword, vr)
    if syntax.is_encapsulated:
        raise RenderError(f"{syntax.name} needs encapsulated pixel data; it is native")
    return _Pixels(stream, offset, length, keyword, vr)


def _require_pixels(instance: _Instance) -> _Pixels:
    sop_class = instance.dataset.get("SOPClassUID")
    name = UID(str(sop_class)).name if sop_class else "the instance"
    if instance.pixels is None:
        raise RenderError(f"{name} has no pixel data to serve as frames or images")
    if frame_count(instance.dataset) == 0:
        raise RenderError(f"{name} has pixel data without Rows and Columns")
    return instance.pixels


def _frame_index(number: int, count: int) -> int:
    if not 1 <= number <= count:
        raise RenderError(
            f"frame {number} does not exist: the instance has {count} frame(s)", NOT_FOUND
        )
    return number - 1


def _int(dataset: Dataset, keyword: str, default: int | None = None) -> int:
    value = dataset.get(keyword)
    if value is None or str(value).strip() == "":
        if default is None:
            raise RenderError(f"{keyword} is missing: the pixel data cannot be read")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RenderError(f"{keyword} is not an integer: {value!r}") from None


# -- frames ----------------------------------------------------------------------------


def _native_frame(instance: _Instance, pixels: _Pixels, index: int) -> bytes:
    """A native frame's bytes, little endian, read from its byte range only."""
    dataset = instance.dataset
    rows, columns = _int(dataset, "Rows"), _int(dataset, "Columns")
    samples = _int(dataset, "SamplesPerPixel", 1)
    float_bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(pixels.keyword)
    bits = _int(dataset, "BitsAllocated", float_bits)  # required for integer Pixel Data
    if dataset.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # PS3.3 C.7.6.3.1.2: two chroma samples shared by two pixels
    values = rows * columns * samples
    assert pixels.length is not None
    if bits == 1:
        return _bit_frame(pixels, index, values)
    if bits % 8:
        raise RenderError(f"Bits Allocated {bits} is not a whole number of bytes")
    size = values * bits // 8
    start = index * size
    if start + size > pixels.length:
        raise RenderError(
            f"the pixel data holds {pixels.length} bytes, too few for frame {index + 1}"
            f" of {size} bytes: the instance is truncated"
        )
    if instance.syntax.is_little_endian:
        return _read_range(pixels, start, size)
    if bits == 8:
        if pixels.vr != "OW":
            return _read_range(pixels, start, size)
        # 8-bit values in OW words: big endian swaps each pair (PS3.5 7.3)
        first = start - start % 2
        end = min(start + size + (start + size) % 2, pixels.length)
        words = _read_range(pixels, first, end - first)
        swapped = np.frombuffer(words, dtype=">u2").astype("<u2").tobytes()
        return swapped[start - first : start - first + size]
    if bits not in (16, 32, 64):
        raise RenderError(f"Bits Allocated {bits} cannot be byte-swapped")
    data = _read_range(pixels, start, size)
    return np.frombuffer(data, dtype=f">u{bits // 8}").astype(f"<u{bits // 8}").tobytes()


def _bit_frame(pixels: _Pixels, index: int, values: int) -> bytes:
    """A 1-bit frame packed from bit 0, whatever bit of a byte it starts at (PS3.5
    8.1.1: frames of 1-bit data follow each other without padding), unused bits zero."""
    assert pixels.length is not None
    first_bit = index * values
    first, shift = divmod(first_bit, 8)
    size = (shift + values + 7) // 8
    if first + size > pixels.length:
        raise RenderError(
            f"the pixel data holds {pixels.length} bytes, too few for frame {index + 1}:"
            " the instance is truncated"
        )
    data = np.frombuffer(_read_range(pixels, first, size), dtype=np.uint8)
    bits = np.unpackbits(data, bitorder="little")[shift : shift + values]
    return np.packbits(bits, bitorder="little").tobytes()


def _read_range(pixels: _Pixels, start: int, size: int) -> bytes:
    pixels.stream.seek(pixels.offset + start)
    data = pixels.stream.read(size)
    if len(data) != size:
        raise RenderError("the file ends inside its pixel data: the instance is truncated")
    return data


def _compressed_media_type(syntax: UID) -> str:
    if syntax in MPEGTransferSyntaxes:
        raise RenderError(f"{syntax.name} is a video: its frames cannot be retrieved one by one")
    media_type = _COMPRESSED_MEDIA_TYPES.get(str(syntax))
    if media_type is None:
        raise RenderError(f"frames in {syntax.name} have no DICOMweb media type")
    return media_type


def _compressed_frames(
    instance: _Instance, pixels: _Pixels, count: int, indices: list[int]
) -> dict[int, bytes]:
    """The bitstreams of the wanted frames, found without reading the others where the
    offset tables or one fragment per frame allow it."""
    wanted = set(indices)
    extended = _extended_offsets(instance.dataset)
    stream = pixels.stream
    try:
        stream.seek(pixels.offset)
        offsets = parse_basic_offsets(stream)
        if extended or offsets or count == 1:
            found = {}
            for index in wanted:
                stream.seek(pixels.offset)
                found[index] = get_frame(
                    stream, index, number_of_frames=count, extended_offsets=extended
                )
            return found
        # No offset table: one fragment per frame is the common case (RLE always)
        fragments, positions = parse_fragments(stream)
        if fragments == count:
            return {index: _fragment_at(stream, positions[index]) for index in wanted}
        # Several fragments per frame without offsets: frames end at an EOI/EOC marker
        stream.seek(pixels.offset)
        found = {}
        for index, data in enumerate(generate_frames(stream, number_of_frames=count)):
            if index in wanted:
                found[index] = data
                if len(found) == len(wanted):
                    break
    except (ValueError, EOFError, struct.error) as error:
        raise RenderError(
            f"the compressed pixel data cannot be cut into frames: {error}"
        ) from error
    if len(found) != len(wanted):
        raise RenderError(f"the compressed pixel data holds fewer than {count} frames")
    return found


def _fragment_at(stream: BinaryIO, position: int) -> bytes:
    stream.seek(position)
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("a fragment's item header is cut short")
    tag, length = struct.unpack("<LL", header)
    if tag != 0xE000FFFE:
        raise ValueError(f"expected a fragment item at {position}, found tag {tag:08X}")
    data = stream.read(length)
    if len(data) != length:
        raise EOFError("a fragment is cut short")
    return data


def _extended_offsets(dataset: Dataset) -> tuple[bytes, bytes] | None:
    """The Extended Offset Table (7FE0,0001/0002), when both are present."""
    offsets = dataset.get("ExtendedOffsetTable")
    lengths = dataset.get("ExtendedOffsetTableLengths")
    if isinstance(offsets, bytes) and isinstance(lengths, bytes) and offsets and lengths:
        return offsets, lengths
    return None


# -- decoding and rendering ------------------------------------------------------------


def _render_frame(
    instance: _Instance, index: int, window: tuple[float, float] | None
) -> np.ndarray:
    """Frame ``index`` as 8-bit grayscale (rows, columns) or RGB (rows, columns, 3)."""
    array, photometric = _decode(instance, _require_pixels(instance), index)
    if photometric in _MONOCHROME:
        return _grayscale(instance, array, index, photometric, window)
    return _colour(instance.dataset, array, photometric)


MAX_DECODED_FRAME_BYTES = 256 << 20  # no real image frame comes near: 8k × 8k × RGB × 16 bits


def _check_frame_size(dataset: Any) -> None:
    """Refuse to decode a frame whose declared size no image has (a header saying 40000 ×
    40000 over a few kilobytes of JPEG would otherwise allocate gigabytes)."""
    rows, columns = int(dataset.get("Rows") or 0), int(dataset.get("Columns") or 0)
    samples = int(dataset.get("SamplesPerPixel") or 1)
    bits = int(dataset.get("BitsAllocated") or 8)
    size = rows * columns * samples * max(8, bits) // 8
    if size > MAX_DECODED_FRAME_BYTES:
        raise RenderError(
            f"a frame of {rows} × {columns} × {samples} samples of {bits} bits"
            f" ({size >> 20} MiB decoded) is larger than this hub renders"
        )


def _decode(instance: _Instance, pixels: _Pixels, index: int) -> tuple[np.ndarray, str]:
    """One frame decoded by pydicom, and its photometric interpretation after decoding
    (pydicom converts YBR_FULL/YBR_FULL_422 to RGB, and J2K decoders undo YBR_RCT/ICT)."""
    dataset = instance.dataset
    _check_frame_size(dataset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            options = as_pixel_options(dataset)
        except (TypeError, ValueError) as error:
            raise RenderError(f"the image pixel attributes are invalid: {error}") from error
    options["pixel_keyword"] = pixels.keyword
    options["as_rgb"] = True  # YBR_FULL and YBR_FULL_422 become RGB, and are reported so
    if pixels.length is not None:
        # Native: decode the frame's own little endian bytes as a one-frame image
        source: bytes | BinaryIO = _native_frame(instance, pixels, index)
        syntax = UID(ExplicitVRLittleEndian)
        options.update(number_of_frames=1, correct_unused_bits=True)
        options.pop("extended_offsets", None)
        frame_index = 0
    else:
        pixels.stream.seek(pixels.offset)
        source = pixels.stream
        syntax = instance.syntax
        options["number_of_frames"] = frame_count(dataset)
        frame_index = index
    options["transfer_syntax_uid"] = syntax
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise RenderError(f"pixel data in {syntax.name} cannot be decoded") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin"
        raise RenderError(f"no decoder for {syntax.name} is installed ({missing})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            array, properties = decoder.as_array(source, index=frame_index, **options)
        except MemoryError:
            raise RenderError(
                f"frame {index + 1} is too large to decode now", SERVICE_UNAVAILABLE
            ) from None
        except (RuntimeError, ValueError, NotImplementedError, EOFError) as error:
            reason = " ".join(str(error).split())  # pydicom lists each plugin on a line
            raise RenderError(
                f"frame {index + 1} cannot be decoded from {syntax.name}: {reason}"
            ) from error
    photometric = str(
        properties.get("photometric_interpretation") or dataset.get("PhotometricInterpretation", "")
    )
    return array, photometric.strip().upper()


def _grayscale(
    instance: _Instance,
    array: np.ndarray,
    index: int,
    photometric: str,
    window: tuple[float, float] | None,
) -> np.ndarray:
    """Modality LUT, then VOI, then MONOCHROME1 inversion: 8-bit grayscale."""
    if array.ndim != 2:
        raise RenderError(f"a {photometric} frame must have one sample per pixel")
    dataset = instance.dataset
    little_endian = instance.syntax.is_little_endian
    values = _modality(dataset, array, index)
    if window is not None:
        shown = _window(values, window[0], window[1], "LINEAR")
    elif (stored := _stored_window(dataset, index)) is not None:
        shown = _window(values, *stored)
    elif "VOILUTSequence" in dataset:
        shown = _voi_lut(dataset, values, index, little_endian)
    else:
        shown = _full_range(dataset, array, values)
    result = np.rint(shown).astype(np.uint8)
    if photometric == "MONOCHROME1":
        result = 255 - result
    return result


def _modality(dataset: Dataset, array: np.ndarray, index: int) -> np.ndarray:
    """Stored values → modality values (PS3.3 C.11.1), as float32."""
    if "ModalityLUTSequence" in dataset:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(apply_modality_lut(array, dataset), dtype=np.float32)
    slope = _number(
        _frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleSlope")
    )
    intercept = _number(
        _frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleIntercept")
    )
    values = array.astype(np.float32)
    if slope is not None and slope != 1:
        values *= np.float32(slope)
    if intercept:
        values += np.float32(intercept)
    return values


def _stored_window(dataset: Dataset, index: int) -> tuple[float, float, str] | None:
    """The instance's first window (per frame for enhanced multi-frame) and its VOI LUT
    Function; None when absent or unusable (a width the function does not allow)."""
    sequence = "FrameVOILUTSequence"
    try:
        center = _number(_frame_value(dataset, index, sequence, "WindowCenter"))
        width = _number(_frame_value(dataset, index, sequence, "WindowWidth"))
    except RenderError:  # a malformed window is ignored, as if absent
        return None
    function = str(_frame_value(dataset, index, sequence, "VOILUTFunction") or "LINEAR")
    function = function.strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if center is None or width is None:
        return None
    if width < 1 if function == "LINEAR" else width <= 0:
        return None
    return center, width, function


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2 (LINEAR) and C.11.2.1.3 (LINEAR_EXACT, SIGMOID) onto 0..255."""
    c, w = np.float32(center), np.float32(width)
    if function == "SIGMOID":
        with np.errstate(over="ignore"):  # exp overflows to inf far below c: y is 0
            return 255 / (1 + np.exp(-4 * (values - c) / w))
    if function == "LINEAR_EXACT":
        shown = ((values - c) / w + np.float32(0.5)) * 255
    elif width <= 1:  # LINEAR with width 1: a threshold at c - 0.5
        return np.where(values > c - np.float32(0.5), np.float32(255), np.float32(0))
    else:  # LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5) clipped to the output range
        shown = ((values - (c - np.float32(0.5))) / (w - 1) + np.float32(0.5)) * 255
    return np.clip(shown, 0, 255)


def _voi_lut(dataset: Dataset, values: np.ndarray, index: int, little_endian: bool) -> np.ndarray:
    """The first VOI LUT (PS3.3 C.11.2.1.1) onto 0..255 by its nominal bit depth: inputs
    below the first mapped value take the first entry, above the last the last entry."""
    item = dataset.VOILUTSequence[0]
    descriptor = item.get("LUTDescriptor")
    data = item.get("LUTData")
    if not descriptor or len(descriptor) != 3 or data is None:
        raise RenderError("the VOI LUT Sequence has no usable LUT Descriptor and LUT Data")
    entries, first, bits = (int(value) for value in descriptor)
    entries = entries or 65536
    intercept = _number(
        _frame_value(dataset, index, "PixelValueTransformationSequence", "RescaleIntercept")
    )
    signed = dataset.get("PixelRepresentation") == 1 or (intercept or 0) < 0
    if signed and first > 32767:  # the first mapped value is SS for a signed input (C.11.2.1.1)
        first -= 65536
    if isinstance(data, bytes):  # OW
        table = np.frombuffer(data, dtype="<u2" if little_endian else ">u2")
    else:
        table = np.asarray(data if isinstance(data, Sequence) else [data], dtype=np.int64)
    if table.size < entries:
        raise RenderError(f"the VOI LUT has {table.size} entries; its descriptor says {entries}")
    lut = table[:entries].astype(np.float32)
    top = max(float(2**bits - 1), float(lut.max()), 1.0)
    positions = np.clip(np.rint(values) - first, 0, entries - 1).astype(np.intp)
    return lut[positions] * np.float32(255 / top)


def _full_range(dataset: Dataset, array: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The frame's own min..max onto 0..255 (a window when the instance has none);
    pixels equal to Pixel Padding Value (0028,0120) are not counted."""
    considered = values
    padding = dataset.get("PixelPaddingValue")
    if isinstance(padding, int):
        mask = array != padding
        if mask.any():
            considered = values[mask]
    if considered.size == 0:
        return np.zeros(values.shape, dtype=np.float32)
    low, high = float(considered.min()), float(considered.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    scaled = (values - np.float32(low)) * np.float32(255 / (high - low))
    return np.clip(scaled, 0, 255)


def _colour(dataset: Dataset, array: np.ndarray, photometric: str) -> np.ndarray:
    """A colour frame as 8-bit RGB."""
    if photometric == "PALETTE COLOR":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rgb = apply_color_lut(array, dataset)
            except (ValueError, AttributeError, KeyError) as error:
                raise RenderError(f"the palette cannot be applied: {error}") from error
        bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
    else:
        if array.ndim != 3 or array.shape[2] != 3:
            raise RenderError(f"a {photometric} frame must have three samples per pixel")
        if photometric != "RGB":  # pydicom has made YBR_FULL(_422), YBR_RCT/ICT RGB
            raise RenderError(f"photometric interpretation {photometric} cannot be rendered")
        rgb = array
        bits = _int(dataset, "BitsStored", _int(dataset, "BitsAllocated", 8))
    if rgb.dtype == np.uint8 and bits <= 8:
        return rgb
    top = float(2**bits - 1)
    return np.rint(np.clip(rgb.astype(np.float32) * np.float32(255 / top), 0, 255)).astype(np.uint8)


def _encode(
    pixels: np.ndarray, media_type: str, viewport: tuple[int, int] | None, quality: int
) -> bytes:
    image = Image.fromarray(pixels)  # uint8: (rows, columns) is L, (rows, columns, 3) RGB
    if viewport is not None:
        scale = min(viewport[0] / image.width, viewport[1] / image.height, 1.0)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    if media_type == "image/jpeg":
        image.save(out, format="JPEG", quality=quality)
    else:
        image.save(out, format="PNG", compress_level=3)
    return out.getvalue()


def _rendered_media_type(media_type: str) -> str:
    kind = media_type.split(";")[0].strip().lower()
    if kind not in RENDERED_MEDIA_TYPES:
        raise RenderError(
            f"{media_type} cannot be rendered; use image/png or image/jpeg", NOT_ACCEPTABLE
        )
    return kind


def _frame_value(dataset: Dataset, index: int, sequence: str, keyword: str) -> Any:
    """An attribute of frame ``index``: its Per-Frame Functional Group, else the Shared
    one (enhanced multi-frame IODs, PS3.3 C.7.6.16), else the top-level attribute."""
    for groups_keyword, position in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = dataset.get(groups_keyword)
        if groups is None or len(groups) <= position:
            continue
        items = groups[position].get(sequence)
        if items is not None and len(items) > 0:
            value = items[0].get(keyword)
            if value is not None:
                return value
    return dataset.get(keyword)


def _number(value: Any) -> float | None:
    """The first value of a DS/IS attribute as a float; None when absent or empty."""
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) == 0:
            return None
        value = value[0]
    text = str(value).strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        raise RenderError(f"{text!r} is not a number where one is required") from None
    if not math.isfinite(number):
        raise RenderError(f"{text!r} is not a finite number")
    return number
