"""WADO-RS frames, rendered images and thumbnails (imaging.rendering), with the files that
ship with pydicom and a few instances built from them (multi-frame layouts pydicom does not
ship: 1-bit frames across byte boundaries, offset tables, several fragments per frame)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG4HP41,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from imaging.rendering import Frames, RenderError, frame_count, frames, render, thumbnail

JPEG_SOI = b"\xff\xd8"
J2K_SOC = b"\xff\x4f\xff\x51"
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def path(name: str) -> Path:
    found = get_testdata_file(name)
    assert found is not None, f"pydicom does not ship {name}"
    return Path(str(found))


def sample(name: str) -> bytes:
    return path(name).read_bytes()


def dataset(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path(name))


def part10(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def pixels_of(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)))


class CountingStream(io.BytesIO):
    """A stream that counts the bytes read from it (to show what is not read)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


class UnseekableStream(io.RawIOBase):
    """A forward-only stream, like an HTTP or object-store body."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self._data.read(len(view))
        view[: len(chunk)] = chunk
        return len(chunk)


def new_image(rows: int, columns: int, **attributes: object) -> Dataset:
    """A Secondary Capture image header, Explicit VR Little Endian."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


# -- frame_count -------------------------------------------------------------------------


def test_frame_count() -> None:
    assert frame_count(dataset("CT_small.dcm")) == 1
    assert frame_count(dataset("rtdose.dcm")) == 15
    assert frame_count(pydicom.dcmread(path("rtdose.dcm"), stop_before_pixels=True)) == 15
    assert frame_count(dataset("examples_ybr_color.dcm")) == 30
    assert frame_count(dataset("test-SR.dcm")) == 0  # not an image
    with pytest.raises(RenderError) as refused:
        frame_count(dataset("badVR.dcm"))  # Number of Frames "1A"
    assert refused.value.status == 422


# -- frames: native ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "liver_1frame.dcm"],
)
def test_a_native_single_frame_is_its_pixel_data(name: str) -> None:
    result = frames(sample(name), [1])
    assert result.media_type == "application/octet-stream"
    assert result.transfer_syntax == "1.2.840.10008.1.2.1"
    assert result.frames == [dataset(name).PixelData]


def test_native_multi_frame_frames_are_their_byte_ranges() -> None:
    ds = dataset("rtdose.dcm")  # 15 frames of 10 x 10, 32 bits
    size = 10 * 10 * 4
    result = frames(sample("rtdose.dcm"), [2, 15, 1, 2])
    expected = [ds.PixelData[(n - 1) * size : n * size] for n in (2, 15, 1, 2)]
    assert result.frames == expected
    assert result.frames[0] != result.frames[2]  # distinct frames, not one repeated


def test_a_native_frame_is_read_alone_from_a_large_instance() -> None:
    base = dataset("CT_small.dcm").pixel_array  # 128 x 128, 16-bit signed
    stack = np.stack([base + k for k in range(100)]).astype(np.int16)
    ds = dataset("CT_small.dcm")
    ds.NumberOfFrames = 100
    ds.PixelData = stack.tobytes()
    data = part10(ds)
    stream = CountingStream(data)
    result = frames(stream, [57])
    assert result.frames == [stack[56].tobytes()]
    assert stream.bytes_read < len(data) / 20  # the header and one 32 KiB frame, of 3.2 MB

    stream = CountingStream(data)
    png = render(stream, 57, window=(0, 4000))
    assert stream.bytes_read < len(data) / 20
    expected = np.clip(((stack[56] - 1024 - (0 - 0.5)) / 3999 + 0.5) * 255, 0, 255)
    assert np.abs(pixels_of(png).astype(int) - np.rint(expected)).max() <= 1


@pytest.mark.parametrize(
    ("big", "little"),
    [
        ("MR_small_bigendian.dcm", "MR_small.dcm"),  # 16-bit OW
        ("MR_small_expb.dcm", "MR_small.dcm"),
        ("rtdose_expb.dcm", "rtdose.dcm"),  # 32-bit, 15 frames
        ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),  # 8-bit in OW, odd
        ("ExplVR_BigEnd.dcm", None),  # 8-bit OB: no swap
        ("liver_expb_1frame.dcm", "liver_1frame.dcm"),  # 1-bit
    ],
)
def test_big_endian_frames_are_served_little_endian(big: str, little: str | None) -> None:
    count = frame_count(dataset(big))
    numbers = list(range(1, count + 1))
    served = frames(sample(big), numbers)
    assert served.transfer_syntax == "1.2.840.10008.1.2.1"
    if little is not None:
        assert served.frames == frames(sample(little), numbers).frames
        assert np.array_equal(pixels_of(render(sample(big))), pixels_of(render(sample(little))))
    else:
        assert served.frames == [dataset(big).PixelData]
        assert np.array_equal(pixels_of(render(sample(big))), dataset(big).pixel_array)


def test_one_bit_frames_that_start_inside_a_byte_are_repacked() -> None:
    bits = np.array(
        [
            [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
            [[1, 1, 1], [0, 0, 0], [1, 0, 1]],
            [[0, 1, 1], [1, 0, 0], [0, 1, 0]],
        ],
        dtype=np.uint8,
    )  # 9 bits a frame: frames 2 and 3 start at bits 9 and 18
    ds = new_image(
        3,
        3,
        NumberOfFrames=3,
        BitsAllocated=1,
        BitsStored=1,
        HighBit=0,
        PixelRepresentation=0,
    )
    ds.PixelData = pack_bits(bits)
    data = part10(ds)
    served = frames(data, [1, 2, 3])
    for index, frame in enumerate(served.frames):
        assert frame == pack_bits(bits[index]), f"frame {index + 1}"
    for number in (1, 2, 3):
        assert np.array_equal(pixels_of(render(data, number)), bits[number - 1] * 255)


def test_a_deflated_instance_is_inflated() -> None:
    result = frames(sample("image_dfl.dcm"), [1])
    assert result.media_type == "application/octet-stream"
    assert result.frames == [dataset("image_dfl.dcm").PixelData]


def test_frames_from_an_open_file_and_an_unseekable_stream() -> None:
    expected = frames(sample("rtdose.dcm"), [3]).frames
    with path("rtdose.dcm").open("rb") as stream:
        assert frames(stream, [3]).frames == expected
    unseekable = io.BufferedReader(UnseekableStream(sample("rtdose.dcm")))
    assert not unseekable.seekable()
    assert frames(unseekable, [3]).frames == expected


# -- frames: compressed -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "media_type", "magic"),
    [
        ("MR_small_RLE.dcm", "image/dicom-rle", None),
        ("SC_rgb_rle_2frame.dcm", "image/dicom-rle", None),
        ("rtdose_rle.dcm", "image/dicom-rle", None),  # 15 frames, no offset table
        ("MR_small_jp2klossless.dcm", "image/jp2", J2K_SOC),
        ("JPEG2000.dcm", "image/jp2", J2K_SOC),
        ("GDCMJ2K_TextGBR.dcm", "image/jp2", JP2_SIGNATURE),  # a JP2 file, not a codestream
        ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg", JPEG_SOI),
        ("JPGExtended.dcm", "image/jpeg", JPEG_SOI),
        ("SC_rgb_jpeg_gdcm.dcm", "image/jpeg", JPEG_SOI),  # lossless SV1 (.70)
        ("examples_ybr_color.dcm", "image/jpeg", JPEG_SOI),  # 30 frames, offset table
        ("MR_small_jpeg_ls_lossless.dcm", "image/jls", JPEG_SOI),
        ("JPEGLSNearLossless_16.dcm", "image/jls", JPEG_SOI),
    ],
)
def test_compressed_frames_are_the_stored_bitstreams(
    name: str, media_type: str, magic: bytes | None
) -> None:
    ds = dataset(name)
    count = frame_count(ds)
    stored = list(generate_frames(ds.PixelData, number_of_frames=count))
    numbers = sorted({count, 1, (count + 1) // 2}, reverse=True)
    result = frames(sample(name), numbers)
    assert result.media_type == media_type
    assert result.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert result.frames == [stored[n - 1] for n in numbers]
    for frame in result.frames:
        if magic is not None:
            assert frame.startswith(magic)
        else:  # an RLE header: the number of segments, then the first at offset 64
            segments = int.from_bytes(frame[:4], "little")
            assert 1 <= segments <= 15
            assert int.from_bytes(frame[4:8], "little") == 64


def ybr_frames() -> tuple[Dataset, list[bytes]]:
    ds = dataset("examples_ybr_color.dcm")
    return ds, list(generate_frames(ds.PixelData, number_of_frames=30))


@pytest.mark.parametrize("layout", ["no offset table", "two fragments a frame", "extended"])
def test_compressed_frames_in_every_fragment_layout(layout: str) -> None:
    ds, original = ybr_frames()
    if layout == "extended":
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
            original
        )
    else:
        per_frame = 2 if layout == "two fragments a frame" else 1
        ds.PixelData = encapsulate(original, fragments_per_frame=per_frame, has_bot=False)
    ds["PixelData"].VR = "OB"
    data = part10(ds)
    expected = list(generate_frames(dataset_from(data).PixelData, number_of_frames=30))
    stream = CountingStream(data)
    result = frames(stream, [30, 2, 17])
    assert result.frames == [expected[29], expected[1], expected[16]]
    if layout != "two fragments a frame":  # found by offsets, not by reading every frame
        assert stream.bytes_read < len(data) / 4
    assert all(frame.startswith(JPEG_SOI) for frame in result.frames)
    if layout != "two fragments a frame":
        assert result.frames == [original[29], original[1], original[16]]
    decoded = dataset("examples_ybr_color.dcm").pixel_array[16]
    assert np.array_equal(pixels_of(render(data, 17)), decoded)


def dataset_from(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_a_compressed_frame_is_read_through_the_offset_table() -> None:
    data = sample("examples_ybr_color.dcm")  # 30 frames with a Basic Offset Table
    stream = CountingStream(data)
    result = frames(stream, [29])
    assert len(result.frames[0]) > 1000
    assert stream.bytes_read < len(data) / 5
    stream = CountingStream(data)
    render(stream, 29)
    assert stream.bytes_read < len(data) / 5


def test_one_frame_in_several_fragments_without_offset_table() -> None:
    ds = dataset("SC_rgb_jpeg_dcmtk.dcm")
    (bitstream,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([bitstream], fragments_per_frame=3, has_bot=False)
    result = frames(part10(ds), [1])
    assert result.frames[0].startswith(JPEG_SOI)
    assert result.frames[0].rstrip(b"\x00") == bitstream.rstrip(b"\x00")


def test_out_of_range_frames_are_not_found() -> None:
    for name, bad in [("CT_small.dcm", 2), ("rtdose.dcm", 16), ("examples_ybr_color.dcm", 31)]:
        for number in (0, -1, bad):
            with pytest.raises(RenderError) as missing:
                frames(sample(name), [1, number])
            assert missing.value.status == 404
            with pytest.raises(RenderError) as missing:
                render(sample(name), number)
            assert missing.value.status == 404


def test_no_frame_numbers_is_a_bad_request() -> None:
    with pytest.raises(RenderError) as refused:
        frames(sample("CT_small.dcm"), [])
    assert refused.value.status == 400


@pytest.mark.parametrize("name", ["test-SR.dcm", "rtplan.dcm", "waveform_ecg.dcm"])
def test_instances_without_pixel_data_are_not_renderable(name: str) -> None:
    for call in (
        lambda: frames(sample(name), [1]),
        lambda: render(sample(name)),
        lambda: thumbnail(sample(name)),
    ):
        with pytest.raises(RenderError) as refused:
            call()
        assert refused.value.status == 422
        assert "no pixel data" in refused.value.message


def test_truncated_and_non_dicom_files_are_not_renderable() -> None:
    for data in (sample("MR_truncated.dcm"), sample("rtstruct.dcm"), b"not dicom at all"):
        with pytest.raises(RenderError) as refused:
            render(data)
        assert refused.value.status == 422


def test_a_video_is_not_served_as_frames_nor_rendered() -> None:
    ds = new_image(16, 16, BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0)
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.NumberOfFrames = 2
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + bytes(60)])
    ds["PixelData"].VR = "OB"
    data = part10(ds)
    with pytest.raises(RenderError) as refused:
        frames(data, [1])
    assert refused.value.status == 422
    with pytest.raises(RenderError) as refused:
        render(data)
    assert refused.value.status == 422


# -- render -----------------------------------------------------------------------------


def ct_expected(window: tuple[float, float]) -> np.ndarray:
    """CT_small through its rescale and the LINEAR window of PS3.3 C.11.2.1.2.1,
    computed here independently of the module."""
    ds = dataset("CT_small.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    c, w = window
    y = ((hu - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.rint(np.clip(y, 0, 255))


def test_the_window_formula_on_known_pixels() -> None:
    ds = dataset("CT_small.dcm")
    raw = int(ds.pixel_array[0, 0])  # 175: -849 HU after the rescale (slope 1, -1024)
    hu = raw * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center, width = -800.0, 200.0
    expected = ((hu - (center - 0.5)) / (width - 1) + 0.5) * 255  # 66.6…
    assert 0 < expected < 255  # the pixel lies inside the window
    png = pixels_of(render(sample("CT_small.dcm"), window=(center, width)))
    assert png.shape == (128, 128)
    assert abs(int(png[0, 0]) - expected) <= 1
    assert np.abs(png.astype(int) - ct_expected((center, width))).max() <= 1


def test_a_narrow_window_saturates_more_than_a_wide_one() -> None:
    narrow = pixels_of(render(sample("CT_small.dcm"), window=(40, 80)))
    wide = pixels_of(render(sample("CT_small.dcm"), window=(40, 4000)))
    saturated = [float(np.mean((image == 0) | (image == 255))) for image in (narrow, wide)]
    assert saturated[0] > saturated[1] + 0.3
    assert np.abs(narrow.astype(int) - ct_expected((40, 80))).max() <= 1
    assert np.abs(wide.astype(int) - ct_expected((40, 4000))).max() <= 1


def test_without_a_window_the_frame_range_is_used() -> None:
    image = pixels_of(render(sample("CT_small.dcm")))  # CT_small has no window
    raw = dataset("CT_small.dcm").pixel_array
    assert image[raw == raw.min()].max() == 0
    assert image[raw == raw.max()].min() == 255
    expected = np.rint((raw - raw.min()) / (raw.max() - raw.min()) * 255)
    assert np.abs(image.astype(int) - expected).max() <= 1


def test_the_instance_window_is_the_default() -> None:
    ds = dataset("MR_small.dcm")  # Window Center 600, Width 1600
    default = pixels_of(render(sample("MR_small.dcm")))
    explicit = pixels_of(render(sample("MR_small.dcm"), window=(600, 1600)))
    assert np.array_equal(default, explicit)
    del ds.WindowCenter, ds.WindowWidth
    assert not np.array_equal(default, pixels_of(render(part10(ds))))


@pytest.mark.parametrize(
    "name",
    ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"],
)
def test_lossless_encodings_render_the_same(name: str) -> None:
    assert np.array_equal(
        pixels_of(render(sample(name))), pixels_of(render(sample("MR_small.dcm")))
    )


def test_sigmoid_and_linear_exact_functions() -> None:
    ds = dataset("MR_small.dcm")
    values = ds.pixel_array.astype(np.float64)
    ds.VOILUTFunction = "SIGMOID"
    sigmoid = pixels_of(render(part10(ds)))
    expected = 255 / (1 + np.exp(-4 * (values - 600) / 1600))
    assert np.abs(sigmoid.astype(int) - np.rint(expected)).max() <= 1
    ds.VOILUTFunction = "LINEAR_EXACT"
    exact = pixels_of(render(part10(ds)))
    expected = np.clip(((values - 600) / 1600 + 0.5) * 255, 0, 255)
    assert np.abs(exact.astype(int) - np.rint(expected)).max() <= 1


def test_a_voi_lut_sequence_is_applied() -> None:
    ds = dataset("MR_small.dcm")
    del ds.WindowCenter, ds.WindowWidth
    item = Dataset()
    item.LUTDescriptor = [1024, 100, 8]  # 1024 entries from 100, 8-bit
    item.add_new("LUTData", "US", [255 - i // 4 for i in range(1024)])
    ds.VOILUTSequence = Sequence([item])
    values = ds.pixel_array.astype(np.int64)
    expected = 255 - np.clip(values - 100, 0, 1023) // 4
    assert np.array_equal(pixels_of(render(part10(ds))).astype(np.int64), expected)


def test_monochrome1_is_inverted() -> None:
    ds = dataset("6154")  # a MONOCHROME1 CR with a window
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    inverted = pixels_of(render(sample("6154")))
    ds.PhotometricInterpretation = "MONOCHROME2"
    plain = pixels_of(render(part10(ds)))
    assert np.array_equal(inverted.astype(int), 255 - plain.astype(int))
    assert plain.std() > 0


def test_enhanced_multi_frame_values_are_per_frame() -> None:
    ds = dataset("CT_small.dcm")
    raw = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.PixelData = np.stack([raw, raw]).tobytes()
    del ds.RescaleSlope, ds.RescaleIntercept
    shared = Dataset()
    transformation = Dataset()
    transformation.RescaleSlope, transformation.RescaleIntercept = 1, -1024
    shared.PixelValueTransformationSequence = Sequence([transformation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for center, width in ((-800, 200), (40, 400)):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    data = part10(ds)
    for number, window in ((1, (-800, 200)), (2, (40, 400))):
        image = pixels_of(render(data, number))
        assert np.abs(image.astype(int) - ct_expected(window)).max() <= 1


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_dcmtk_+eb+cr.dcm",  # JPEG, RGB
        "SC_rgb_dcmtk_+eb+cy+n1.dcm",  # JPEG, YBR_FULL
        "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG, YBR_FULL_422
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless
        "SC_rgb_gdcm_KY.dcm",  # JPEG 2000
        "SC_rgb_jls_lossy_line.dcm",  # JPEG-LS
        "SC_rgb_rle_16bit.dcm",  # 16 bits a sample
        "SC_rgb_rle_2frame.dcm",
        "SC_ybr_full_422_uncompressed.dcm",  # native YBR_FULL_422
    ],
)
def test_colour_images_keep_their_colours(name: str) -> None:
    reference = dataset("SC_rgb_rle.dcm").pixel_array  # lossless RGB bars
    assert tuple(reference[5, 50]) == (255, 0, 0)  # the red bar
    image = pixels_of(render(sample(name)))
    assert image.shape == (100, 100, 3)
    assert np.abs(image.astype(int) - reference.astype(int)).mean() < 4
    red = image[5, 50].astype(int)
    assert red[0] > 230 and red[1] < 25 and red[2] < 25
    blue = image[45, 50].astype(int)  # the blue bar
    assert blue[2] > 230 and blue[0] < 25 and blue[1] < 25


def test_a_ybr_rct_jpeg_2000_image_is_rgb() -> None:
    lossless = pixels_of(render(sample("examples_jpeg2k.dcm")))  # YBR_RCT
    assert np.array_equal(lossless, dataset("examples_jpeg2k.dcm").pixel_array)


def test_palette_colour_goes_through_its_lut() -> None:
    ds = dataset("examples_palette.dcm")  # 16-bit palette entries
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64) * 255 / 65535
    image = pixels_of(render(sample("examples_palette.dcm")))
    assert image.shape == (350, 800, 3)
    assert np.abs(image.astype(int) - np.rint(expected)).max() <= 1
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 10


def test_jpeg_output() -> None:
    image = render(sample("CT_small.dcm"), media_type="image/jpeg", quality=80)
    assert image.startswith(JPEG_SOI)
    assert Image.open(io.BytesIO(image)).format == "JPEG"
    png = render(sample("CT_small.dcm"))
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = pixels_of(image).astype(int)
    assert np.abs(decoded - pixels_of(png).astype(int)).mean() < 3
    low = render(sample("CT_small.dcm"), media_type="image/jpeg", quality=5)
    assert len(low) < len(image)


def test_viewport_scales_down_keeping_the_aspect_ratio() -> None:
    tall = sample("JPGExtended.dcm")  # 256 columns x 1024 rows
    assert Image.open(io.BytesIO(render(tall, viewport=(100, 100)))).size == (25, 100)
    assert Image.open(io.BytesIO(render(tall, viewport=(200, 2000)))).size == (200, 800)
    square = sample("CT_small.dcm")
    assert Image.open(io.BytesIO(render(square, viewport=(64, 32)))).size == (32, 32)
    assert Image.open(io.BytesIO(render(square, viewport=(500, 400)))).size == (128, 128)


def test_unsupported_media_types_are_not_acceptable() -> None:
    for media_type in ("image/gif", "application/dicom", "image/jp2"):
        with pytest.raises(RenderError) as refused:
            render(sample("CT_small.dcm"), media_type=media_type)
        assert refused.value.status == 406
    with pytest.raises(RenderError) as refused:
        thumbnail(sample("CT_small.dcm"), media_type="text/html")
    assert refused.value.status == 406


def test_bad_parameters_are_bad_requests() -> None:
    for kwargs in (
        {"quality": 0},
        {"quality": 101},
        {"window": (40.0, 0.5)},
        {"viewport": (0, 10)},
    ):
        with pytest.raises(RenderError) as refused:
            render(sample("CT_small.dcm"), **kwargs)
        assert refused.value.status == 400, kwargs


def test_an_undecodable_frame_is_not_renderable() -> None:
    # pydicom's own broken test file: no plugin can read its J2K header
    with pytest.raises(RenderError) as refused:
        render(sample("JPEG2000-embedded-sequence-delimiter.dcm"))
    assert refused.value.status == 422
    assert "\n" not in refused.value.message


# -- thumbnail --------------------------------------------------------------------------


def test_thumbnail_fits_the_size() -> None:
    for name, size in [("CT_small.dcm", 64), ("JPGExtended.dcm", 128), ("693_J2KI.dcm", 100)]:
        image = Image.open(io.BytesIO(thumbnail(sample(name), size)))
        assert image.format == "JPEG"
        assert max(image.size) == size
        assert image.width <= size and image.height <= size
    assert Image.open(io.BytesIO(thumbnail(sample("JPGExtended.dcm"), 128))).size == (32, 128)


def test_thumbnail_is_the_middle_frame() -> None:
    data = sample("examples_ybr_color.dcm")  # 30 frames: the middle is frame 15
    thumb = pixels_of(thumbnail(data, 1000, media_type="image/png"))
    assert np.array_equal(thumb, pixels_of(render(data, 15)))
    assert not np.array_equal(thumb, pixels_of(render(data, 1)))


def test_frames_result_type() -> None:
    result = frames(sample("CT_small.dcm"), [1])
    assert isinstance(result, Frames)
    with pytest.raises(AttributeError):
        result.media_type = "image/png"  # type: ignore[misc]


# -- bounds: what one request may cost --------------------------------------------------


def test_a_frames_request_larger_than_the_bound_is_refused_before_reading() -> None:
    """One 8 MiB frame asked for 100 times would be 800 MiB in memory: 400, not built."""
    ds = new_image(2048, 2048, BitsAllocated=16, BitsStored=16, HighBit=15)
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(2048 * 2048 * 2)
    with pytest.raises(RenderError) as refused:
        frames(part10(ds), [1] * 100)
    assert refused.value.status == 400 and "fewer" in str(refused.value)
    assert len(frames(part10(ds), [1, 1]).frames) == 2  # a reasonable request still works


def test_a_header_claiming_a_huge_frame_is_not_decoded() -> None:
    """A few kilobytes of JPEG declaring 40000 × 40000: refused (422) before any decoding."""
    ds = new_image(40000, 40000, BitsAllocated=8, BitsStored=8, HighBit=7)
    ds.PixelRepresentation = 0
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([b"\xff\xd8" + bytes(2000) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    for work in (lambda: render(part10(ds)), lambda: thumbnail(part10(ds))):
        with pytest.raises(RenderError) as refused:
            work()
        assert refused.value.status == 422 and "larger than this hub renders" in str(refused.value)
