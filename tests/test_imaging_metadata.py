"""The DICOM JSON of received instances (imaging.metadata) against pydicom's own
``to_json_dict``, on every DICOM file pydicom ships; and the undeclared-charset rule."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_files

from imaging.dataset import DEFER_BYTES, metadata_json
from imaging.metadata import BULK_THRESHOLD, PIXEL_TAGS

BINARY = {"OB", "OW", "UN", "OF", "OD", "OL", "OV"}


def _readable() -> list[Path]:
    files = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(get_testdata_files("*.dcm")):
            try:
                pydicom.dcmread(name, stop_before_pixels=True)
            except Exception:
                continue
            files.append(Path(name))
    return files


def _normal(value: Any) -> Any:
    """Differences of form only: '' and null, [] and no Value, trailing padding, 1.0 and 1,
    and large binary values (pydicom inlines them when asked for no bulk handler)."""
    if isinstance(value, dict):
        out = {k: _normal(v) for k, v in value.items() if k != "BulkDataURI"}
        if out.get("vr") in BINARY:
            out.pop("Value", None)
            if len(out.get("InlineBinary", "")) > BULK_THRESHOLD * 4 // 3 + 4:
                out.pop("InlineBinary")
        if out.get("Value") == []:
            out.pop("Value")
        if "vr" in out:
            out["vr"] = str(out["vr"])
        return out
    if isinstance(value, list):
        return [_normal(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value == "":
        return None
    if isinstance(value, str):
        return value.rstrip(" ")
    return value


def _pydicom_json(path: Path) -> dict[str, Any]:
    dataset = pydicom.dcmread(path)
    out: dict[str, Any] = {}
    for element in dataset:
        if int(element.tag) in PIXEL_TAGS or element.tag.element == 0:
            continue
        try:
            out[f"{int(element.tag):08X}"] = element.to_json_dict(None, BULK_THRESHOLD)
        except ValueError:  # pydicom cannot give an invalid value (IS "1A") as JSON
            out[f"{int(element.tag):08X}"] = {"vr": str(element.VR)}
    return out


@pytest.mark.parametrize("path", _readable(), ids=lambda p: p.name)
def test_metadata_equals_pydicoms_json(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = metadata_json(pydicom.dcmread(path, defer_size=DEFER_BYTES))
        theirs = _pydicom_json(path)
    assert _normal(ours) == _normal(theirs)


def test_undeclared_gb18030_names_are_text_not_latin1(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(get_testdata_files("CT_small.dcm")[0])
    del dataset.SpecificCharacterSet
    dataset.PatientName = "王^芳".encode("gb18030")
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    parsed = pydicom.dcmread(io.BytesIO(out.getvalue()), defer_size=DEFER_BYTES)
    assert metadata_json(parsed)["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "王^芳"}]}


def test_bulk_values_are_left_out() -> None:
    dataset = pydicom.dcmread(get_testdata_files("CT_small.dcm")[0], defer_size=DEFER_BYTES)
    ours = metadata_json(dataset)
    assert "7FE00010" not in ours  # pixel data
    assert all(
        len(element.get("InlineBinary", "")) <= BULK_THRESHOLD * 4 // 3 + 4
        for element in ours.values()
    )
