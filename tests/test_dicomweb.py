"""DICOMweb at /dicomweb through real HTTP: STOW-RS, QIDO-RS, WADO-RS (instances, metadata,
frames, rendered, thumbnails), WADO-URI, the de-identified export, access and audit.

The client side is the ``dicomweb-client`` package, unmodified, plus raw httpx requests for
byte-level checks and error cases. Instances are pydicom's test files, each copy given fresh
Study/Series/SOP Instance UIDs so tests sharing the session's database never collide. The
multipart reader/writer and the QIDO query parser are also tested on their own (pure code).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid

from hub.storage.database import libpq_url
from imaging.multipart import (
    MultipartError,
    MultipartParser,
    OutgoingPart,
    PartData,
    PartEnd,
    PartStart,
    parse_accept,
    parse_media_type,
    read_parts,
    write_parts,
)
from imaging.qido import Level, QueryError, compile_query, parse_query
from tests.access_support import live_grants, order_for
from tests.conftest import Client, HubUnderTest

CT, MR = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


# -- helpers -------------------------------------------------------------------------------


def token(client: Client) -> str:
    return str(client.http.headers["Authorization"])


def dicomweb(hub: HubUnderTest, client: Client) -> DICOMwebClient:
    return DICOMwebClient(url=hub.base_url + "/dicomweb", headers={"Authorization": token(client)})


def http(hub: HubUnderTest, client: Client) -> httpx.Client:
    return httpx.Client(
        base_url=hub.base_url + "/dicomweb",
        headers={"Authorization": token(client)},
        timeout=60,
    )


def copy_of(
    name: str,
    *,
    study: str | None = None,
    series: str | None = None,
    patient_id: str | None = None,
    **attributes: Any,
) -> pydicom.Dataset:
    """A pydicom test file with fresh UIDs (pixel data untouched, transfer syntax kept)."""
    dataset = pydicom.dcmread(str(get_testdata_file(name)))
    dataset.StudyInstanceUID = study or generate_uid()
    dataset.SeriesInstanceUID = series or generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    # One study, one patient (the hub refuses an instance of another patient into a study).
    dataset.PatientID = patient_id or (
        f"P-{hashlib.sha256(study.encode()).hexdigest()[:10]}"
        if study
        else f"P-{uuid.uuid4().hex[:10]}"
    )
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


def encoded(dataset: pydicom.Dataset) -> bytes:
    """The bytes dicomweb-client sends for a dataset (its own encoding: dcmwrite as is)."""
    out = io.BytesIO()
    pydicom.dcmwrite(out, dataset)
    return out.getvalue()


def multipart(parts: list[bytes], boundary: str = "XbOuNdArYx") -> tuple[bytes, str]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
        for p in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def parts_of(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart response, by a parser of its own."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    found = re.search(r'boundary="?([^";]+)"?', content_type)
    assert found
    delimiter = b"\r\n--" + found.group(1).encode()
    pieces = (b"\r\n" + response.content).split(delimiter)
    assert pieces[-1].startswith(b"--"), "no closing boundary"
    out = []
    for piece in pieces[1:-1]:
        head, _, body = piece[2:].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n") if line)
        out.append((headers.get("Content-Type", ""), body))
    return out


def value(element: dict[str, Any] | None) -> Any:
    if not element or "Value" not in element:
        return None
    values = element["Value"]
    return values[0] if len(values) == 1 else values


def uids(results: list[dict[str, Any]], tag: str) -> list[str]:
    return [value(r.get(tag)) for r in results]


def audit_rows(hub: HubUnderTest, client_id: str, entity: str) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(libpq_url(hub.database_url))
        try:
            return await connection.fetch(
                "SELECT interaction, action, status, patients, entities FROM audit_log"
                " WHERE client_id = $1 AND $2 = ANY(entities) ORDER BY recorded",
                client_id,
                entity,
            )
        finally:
            await connection.close()

    return asyncio.run(fetch())


@dataclass
class StoredStudy:
    study: str
    datasets: list[pydicom.Dataset]  # as sent
    patient_id: str

    def by_uid(self, sop_instance_uid: str) -> pydicom.Dataset:
        return next(d for d in self.datasets if d.SOPInstanceUID == sop_instance_uid)


@pytest.fixture(scope="module")
def study(hub: HubUnderTest, hospital_a: Client) -> StoredStudy:
    """One study of hospital A in several transfer syntaxes, stored by dicomweb-client."""
    study_uid, patient = generate_uid(), f"P-{uuid.uuid4().hex[:10]}"
    ct_series, mr_series, other = generate_uid(), generate_uid(), generate_uid()
    common = {
        "study": study_uid,
        "patient_id": patient,
        "PatientName": "CompressedSamples^CT1",
        "StudyDate": "20240315",
    }
    datasets = [
        copy_of("CT_small.dcm", series=ct_series, InstanceNumber=1, **common),
        copy_of("CT_small.dcm", series=ct_series, InstanceNumber=2, **common),
        copy_of("CT_small.dcm", series=ct_series, InstanceNumber=3, **common),
        copy_of("MR_small.dcm", series=mr_series, **common),
        copy_of("MR_small_RLE.dcm", series=mr_series, **common),
        copy_of("JPEG2000.dcm", series=other, **common),
        copy_of("SC_rgb_jpeg_dcmtk.dcm", series=other, **common),
        copy_of("SC_rgb_rle_2frame.dcm", series=other, **common),
        copy_of("rtdose.dcm", series=other, **common),
    ]
    response = dicomweb(hub, hospital_a).store_instances(datasets)
    stored = [item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence]
    assert stored == [d.SOPInstanceUID for d in datasets]
    assert "FailedSOPSequence" not in response
    assert response.RetrieveURL.endswith(f"/dicomweb/studies/{study_uid}")
    # The ImagingStudy follows the answer (written once the study is quiet): tests that read
    # the study's patient and ImagingStudy start after it, whatever ran before them.
    deadline = time.monotonic() + 15
    while (
        not hospital_a.get(
            "ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
        )
        .json()
        .get("entry")
    ):
        assert time.monotonic() < deadline, "no ImagingStudy for the stored study"
        time.sleep(0.2)
    return StoredStudy(study_uid, datasets, patient)


def study_patient(hospital_a: Client, study: StoredStudy) -> str:
    """The id of the Patient the study's ImagingStudy is about."""
    found = hospital_a.get(
        "ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study.study}"}
    ).json()
    (entry,) = found["entry"]
    return str(entry["resource"]["subject"]["reference"]).removeprefix("Patient/")


def live_purpose(hub: HubUnderTest, doctor: Client, patient_id: str) -> bool:
    """Whether the doctor already holds a grant naming this record (an earlier test's)."""
    return any(g["patient"] == f"Patient/{patient_id}" for g in live_grants(hub, doctor))


# -- multipart, on its own ------------------------------------------------------------------


def _events(parser: MultipartParser, data: bytes, step: int) -> list[Any]:
    events: list[Any] = []
    for start in range(0, len(data), step):
        events += parser.feed(data[start : start + step])
    parser.finish()
    return events


def _bodies(events: list[Any]) -> list[tuple[dict[str, str], bytes]]:
    out: list[tuple[dict[str, str], bytes]] = []
    for event in events:
        if isinstance(event, PartStart):
            out.append((event.headers, b""))
        elif isinstance(event, PartData):
            out[-1] = (out[-1][0], out[-1][1] + event.data)
        else:
            assert isinstance(event, PartEnd)
    return out


@pytest.mark.parametrize("step", [1, 3, 7, 64, 100_000])
def test_the_multipart_parser_finds_parts_whatever_the_chunking(step: int) -> None:
    boundary = "abc"
    content = [b"first\r\n--ab not a boundary", b"", b"\r\n--abcd\r\n" * 0 + b"x" * 300]
    body = (
        b"preamble to ignore\r\n"
        + b"".join(
            b"--abc  \r\nContent-Type: application/dicom\r\nX-Long: a\r\n b\r\n\r\n" + c + b"\r\n"
            for c in content
        )
        + b"--abc--\r\nepilogue --abc\r\n"
    )
    parts = _bodies(_events(MultipartParser(boundary), body, step))
    assert [p[1] for p in parts] == content
    assert parts[0][0] == {"content-type": "application/dicom", "x-long": "a b"}


def test_the_multipart_parser_takes_a_leading_crlf_and_parts_without_headers() -> None:
    body = b"\r\n--B\r\n\r\nno headers\r\n--B--"
    parts = _bodies(_events(MultipartParser("B"), body, 5))
    assert parts == [({}, b"no headers")]


def test_the_multipart_parser_refuses_what_is_not_its_body() -> None:
    with pytest.raises(MultipartError, match="ended inside part 1"):
        _events(MultipartParser("B"), b"--B\r\n\r\ncut short", 4)
    with pytest.raises(MultipartError, match="holds no part"):
        _events(MultipartParser("B"), b"nothing here", 4)
    with pytest.raises(MultipartError, match="does not match the body"):
        _events(MultipartParser("B"), b"x" * 70_000, 1000)
    with pytest.raises(MultipartError, match="malformed header"):
        _events(MultipartParser("B"), b"--B\r\nno colon\r\n\r\nx\r\n--B--", 4)
    with pytest.raises(MultipartError, match="boundary"):
        MultipartParser("")


def test_written_parts_read_back_identically() -> None:
    payloads = [bytes(range(256)) * 50, b"", b"\r\n--not-it\r\n"]

    async def body(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    async def roundtrip() -> list[tuple[str | None, bytes]]:
        out = b"".join(
            [
                chunk
                async for chunk in write_parts(
                    [
                        OutgoingPart("application/dicom", payloads[0]),
                        OutgoingPart("application/octet-stream", body(payloads[1])),
                        OutgoingPart("image/png", body(payloads[2]), (("X-A", "1"),)),
                    ],
                    "q1w2e3",
                )
            ]
        )

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, len(out), 17):
                yield out[start : start + 17]

        read = []
        async for part in read_parts(chunks(), "q1w2e3", spool_in_memory=100):
            with part:
                read.append((part.content_type, part.file.read()))
                assert part.size == len(read[-1][1])
        return read

    result = asyncio.run(roundtrip())
    assert result == [
        ("application/dicom", payloads[0]),
        ("application/octet-stream", payloads[1]),
        ("image/png", payloads[2]),
    ]


def test_media_types_and_accept_headers_are_parsed() -> None:
    media = parse_media_type('multipart/related; type="application/dicom"; boundary="a\\"b"')
    assert media.type == "multipart/related"
    assert media.parameters == {"type": "application/dicom", "boundary": 'a"b'}
    ranges = parse_accept(
        'image/png;q=0.5, multipart/related; type="application/dicom"; '
        "transfer-syntax=*, text/html;q=0"
    )
    assert [r.type for r in ranges] == ["multipart/related", "image/png"]
    assert ranges[0].param("transfer-syntax") == "*"
    with pytest.raises(MultipartError):
        parse_media_type("not a media type")
    with pytest.raises(MultipartError):
        parse_accept("image/png;q=high")


# -- QIDO query parsing, on its own -----------------------------------------------------------


def test_queries_are_parsed_into_filters() -> None:
    query = parse_query(
        Level.STUDY,
        [
            ("PatientName", "王*"),
            ("StudyDate", "20200101-"),
            ("0020000D", "1.2.3,1.2.4"),
            ("ModalitiesInStudy", "CT\\MR"),
            ("AccessionNumber", ""),
            ("includefield", "00081030,InstitutionName"),
            ("limit", "5000"),
        ],
    )
    kinds = {f.attribute.keyword: (f.kind, f.values) for f in query.filters}
    assert kinds["PatientName"] == ("pn", ("王*",))
    assert kinds["StudyDate"][0] == "range" and kinds["StudyDate"][1][1] is None
    assert kinds["StudyInstanceUID"] == ("any", ("1.2.3", "1.2.4"))
    assert kinds["ModalitiesInStudy"] == ("any", ("CT", "MR"))
    assert "AccessionNumber" not in kinds  # empty: returned, not matched
    assert "00080050" in query.returned() and "00080080" in query.returned()
    assert query.limit == 1000 and query.notes
    sql, args = compile_query(query, "org-1")
    assert "st.organization = " in sql and "org-1" in args
    assert "LIMIT" in sql and 1001 in args


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([("NoSuchThing", "x")], "NoSuchThing"),
        ([("StudyDate", "2020-01-01")], "StudyDate"),
        ([("StudyDate", "20200201-20200101")], "ends before it starts"),
        ([("StudyInstanceUID", "1.2.x")], "not a UID"),
        ([("limit", "-1")], "limit"),
        ([("fuzzymatching", "yes")], "fuzzymatching"),
        ([("InstitutionName", "x")], "cannot be used as a matching key"),
        ([("PatientID", "a"), ("PatientID", "b")], "more than once"),
        ([("ReferencedStudySequence.ReferencedSOPInstanceUID", "1")], "sequences"),
    ],
)
def test_bad_queries_say_what_is_wrong(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(QueryError, match=re.escape(message)):
        parse_query(Level.STUDY, pairs)


# -- STOW-RS and WADO-RS ------------------------------------------------------------------


def test_stored_instances_are_retrieved_byte_for_byte(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    with http(hub, hospital_a) as client:
        response = client.get(f"/studies/{study.study}")
    assert response.status_code == 200, response.text
    parts = parts_of(response)
    assert len(parts) == len(study.datasets)
    sent = {d.SOPInstanceUID: encoded(d) for d in study.datasets}
    for content_type, data in parts:
        assert content_type.startswith("application/dicom; transfer-syntax=")
        dataset = pydicom.dcmread(io.BytesIO(data))
        assert data == sent[dataset.SOPInstanceUID]  # exactly as sent: never recompressed
        assert content_type.endswith(str(dataset.file_meta.TransferSyntaxUID))


def test_dicomweb_client_retrieves_studies_series_and_instances(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    client = dicomweb(hub, hospital_a)
    retrieved = client.retrieve_study(study.study)
    assert sorted(d.SOPInstanceUID for d in retrieved) == sorted(
        d.SOPInstanceUID for d in study.datasets
    )
    for dataset in retrieved:
        original = study.by_uid(dataset.SOPInstanceUID)
        assert dataset.PixelData == original.PixelData
        assert dataset.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    ct = study.datasets[0]
    series = client.retrieve_series(study.study, ct.SeriesInstanceUID)
    assert [d.InstanceNumber for d in series] == [1, 2, 3]  # in instance order
    one = client.retrieve_instance(study.study, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert one.SOPInstanceUID == ct.SOPInstanceUID and one.PatientID == study.patient_id


def test_a_transfer_syntax_the_file_is_not_in_is_not_acceptable(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    jpeg2000 = study.datasets[5]
    url = (
        f"/studies/{study.study}/series/{jpeg2000.SeriesInstanceUID}"
        f"/instances/{jpeg2000.SOPInstanceUID}"
    )
    explicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
    with http(hub, hospital_a) as client:
        refused = client.get(url, headers={"Accept": explicit})
        assert refused.status_code == 406
        assert "never recompresses" in refused.json()["issue"][0]["diagnostics"]
        as_stored = client.get(
            url,
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert as_stored.status_code == 200
        assert parts_of(as_stored)[0][1] == encoded(jpeg2000)
        assert client.get(url, headers={"Accept": "image/png"}).status_code == 406
        assert client.get(url, headers={"Accept": "*/*"}).status_code == 200


def test_an_implicit_vr_instance_is_served_as_explicit_vr_little_endian_on_request(
    hub: HubUnderTest, hospital_a: Client
) -> None:
    """PS3.18's default transfer syntax: a lossless re-encoding of a native file (dicomweb-
    client asking for it explicitly), the same elements and pixel bytes; as stored otherwise."""
    implicit = copy_of("MR_small_implicit.dcm")
    client = dicomweb(hub, hospital_a)
    client.store_instances([implicit])
    uids = (implicit.StudyInstanceUID, implicit.SeriesInstanceUID, implicit.SOPInstanceUID)
    explicit = client.retrieve_instance(
        *uids, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),)
    )
    assert explicit.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert explicit.PixelData == implicit.PixelData
    assert explicit.PatientName == implicit.PatientName
    as_stored = client.retrieve_instance(*uids, media_types=(("application/dicom", "*"),))
    assert as_stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"


def test_metadata_is_the_stored_dicom_json(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    client = dicomweb(hub, hospital_a)
    everything = client.retrieve_study_metadata(study.study)
    assert sorted(uids(everything, "00080018")) == sorted(d.SOPInstanceUID for d in study.datasets)
    assert all("7FE00010" not in m for m in everything)  # no pixel data
    ct = study.datasets[0]
    series = client.retrieve_series_metadata(study.study, ct.SeriesInstanceUID)
    assert len(series) == 3
    one = client.retrieve_instance_metadata(study.study, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert value(one["00100020"]) == study.patient_id
    assert value(one["00200013"]) == 1
    assert value(one["00280010"]) == ct.Rows


def test_frames_are_served_as_stored(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    client = dicomweb(hub, hospital_a)
    dose = study.datasets[8]  # native, 15 frames of 10 × 10 × 32 bits
    frames = client.retrieve_instance_frames(
        study.study, dose.SeriesInstanceUID, dose.SOPInstanceUID, [1, 3]
    )
    size = dose.Rows * dose.Columns * dose.BitsAllocated // 8
    assert frames == [dose.PixelData[:size], dose.PixelData[2 * size : 3 * size]]
    rle = study.datasets[7]  # RLE, 2 frames: the compressed bitstreams, not decoded
    expected = list(generate_frames(rle.PixelData, number_of_frames=2))
    url = (
        f"/studies/{study.study}/series/{rle.SeriesInstanceUID}/instances/{rle.SOPInstanceUID}"
        "/frames/2,1"
    )
    with http(hub, hospital_a) as raw:
        response = raw.get(url)
        assert response.status_code == 200
        parts = parts_of(response)
        assert [p[1] for p in parts] == [expected[1], expected[0]]
        assert parts[0][0] == "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"
        octet = raw.get(
            url, headers={"Accept": 'multipart/related; type="application/octet-stream"'}
        )
        assert octet.status_code == 406
        any_syntax = raw.get(
            url,
            headers={
                "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
            },
        )
        assert any_syntax.status_code == 200
        assert parts_of(any_syntax)[0][0].startswith("application/octet-stream")
        assert raw.get(url.replace("2,1", "3")).status_code == 404
        assert raw.get(url.replace("2,1", "x")).status_code == 400


def test_instances_are_rendered_and_thumbnailed(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    client = dicomweb(hub, hospital_a)
    ct = study.datasets[0]
    png = client.retrieve_instance_rendered(
        study.study, ct.SeriesInstanceUID, ct.SOPInstanceUID, media_types=("image/png",)
    )
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (ct.Columns, ct.Rows)
    jpeg = client.retrieve_instance_rendered(
        study.study,
        ct.SeriesInstanceUID,
        ct.SOPInstanceUID,
        params={"window": "40,400", "viewport": "64,64", "quality": "80"},
    )
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and max(image.size) == 64
    base = f"/studies/{study.study}"
    with http(hub, hospital_a) as raw:
        for path in (
            f"{base}/thumbnail",
            f"{base}/series/{ct.SeriesInstanceUID}/thumbnail",
            f"{base}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}/thumbnail",
        ):
            response = raw.get(path, params={"viewport": "32,32"})
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/jpeg"
            assert max(Image.open(io.BytesIO(response.content)).size) <= 32
        frame = raw.get(
            f"{base}/series/{study.datasets[7].SeriesInstanceUID}/instances/"
            f"{study.datasets[7].SOPInstanceUID}/frames/2/rendered",
            headers={"Accept": "image/png"},
        )
        assert frame.status_code == 200 and frame.content.startswith(b"\x89PNG")
        series = raw.get(f"{base}/series/{ct.SeriesInstanceUID}/rendered")
        assert series.status_code == 200
        assert [t for t, _ in parts_of(series)] == ["image/jpeg"] * 3
        assert raw.get(f"{base}/thumbnail", headers={"Accept": "image/gif"}).status_code == 406
        bad = raw.get(
            f"{base}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}/rendered",
            params={"window": "40"},
        )
        assert bad.status_code == 400 and "window" in bad.json()["issue"][0]["diagnostics"]


def test_wado_uri_serves_the_file_and_images(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    mr = study.datasets[3]
    params = {
        "requestType": "WADO",
        "studyUID": study.study,
        "seriesUID": mr.SeriesInstanceUID,
        "objectUID": mr.SOPInstanceUID,
    }
    headers = {"Authorization": token(hospital_a)}
    for root in ("/dicomweb/wado", "/wado"):
        dicom = httpx.get(
            hub.base_url + root,
            params={**params, "contentType": "application/dicom"},
            headers=headers,
        )
        assert dicom.status_code == 200
        assert dicom.headers["content-type"] == "application/dicom"
        assert dicom.content == encoded(mr)
    image = httpx.get(
        hub.base_url + "/wado",
        params={
            **params,
            "contentType": "image/png",
            "windowCenter": "600",
            "windowWidth": "1200",
            "rows": "32",
        },
        headers=headers,
    )
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).size[1] == 32
    default = httpx.get(hub.base_url + "/wado", params=params, headers=headers)
    assert default.headers["content-type"] == "image/jpeg"
    missing = httpx.get(hub.base_url + "/wado", params={**params, "objectUID": ""}, headers=headers)
    assert missing.status_code == 400 and "objectUID" in missing.text
    wrong = httpx.get(
        hub.base_url + "/wado", params={**params, "requestType": "X"}, headers=headers
    )
    assert wrong.status_code == 400
    unknown = httpx.get(
        hub.base_url + "/wado", params={**params, "objectUID": generate_uid()}, headers=headers
    )
    assert unknown.status_code == 404


# -- QIDO-RS -----------------------------------------------------------------------------------


def test_studies_series_and_instances_are_found(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    client = dicomweb(hub, hospital_a)
    found = client.search_for_studies(search_filters={"PatientID": study.patient_id})
    assert uids(found, "0020000D") == [study.study]
    result = found[0]
    assert value(result["00201206"]) == 3  # NumberOfStudyRelatedSeries
    assert value(result["00201208"]) == len(study.datasets)  # NumberOfStudyRelatedInstances
    assert set(result["00080061"]["Value"]) == {"CT", "MR", "NM", "OT", "RTDOSE"}
    assert value(result["00080020"]) == "20240315"
    assert value(result["00080005"]) == "ISO_IR 192"
    assert value(result["00081190"]).endswith(f"/dicomweb/studies/{study.study}")
    assert result["00100010"]["Value"][0]["Alphabetic"]
    series = client.search_for_series(study.study)
    assert len(series) == 3
    ct_series = next(s for s in series if value(s["00080060"]) == "CT")
    assert value(ct_series["00201209"]) == 3
    instances = client.search_for_instances(study.study, value(ct_series["0020000E"]))
    assert [value(i["00200013"]) for i in instances] == [1, 2, 3]
    assert value(instances[0]["00080016"]) == CT
    assert value(instances[0]["00280100"]) == 16  # BitsAllocated, from the stored metadata
    mr = client.search_for_instances(study.study, search_filters={"SOPClassUID": MR})
    assert len(mr) == 2
    everywhere = client.search_for_instances(
        search_filters={"SOPInstanceUID": study.datasets[4].SOPInstanceUID}
    )
    assert len(everywhere) == 1
    assert value(everywhere[0]["00100020"]) == study.patient_id  # study attributes too
    all_series = client.search_for_series(
        search_filters={"PatientID": study.patient_id, "Modality": "MR"}
    )
    assert len(all_series) == 1 and value(all_series[0]["0020000D"]) == study.study


def test_limit_offset_and_fields(hub: HubUnderTest, hospital_a: Client, study: StoredStudy) -> None:
    client = dicomweb(hub, hospital_a)
    ct = study.datasets[0]
    everything = client.search_for_instances(study.study, ct.SeriesInstanceUID)
    second = client.search_for_instances(study.study, ct.SeriesInstanceUID, limit=1, offset=1)
    assert uids(second, "00080018") == uids(everything, "00080018")[1:2]
    paged = client.search_for_instances(
        study.study, ct.SeriesInstanceUID, limit=2, get_remaining=True
    )
    assert uids(paged, "00080018") == uids(everything, "00080018")
    with_fields = client.search_for_studies(
        search_filters={"PatientID": study.patient_id},
        fields=["StudyDescription", "00080080", "00100030"],
    )
    assert "00081030" in with_fields[0] and "00100030" in with_fields[0]
    # from one stored instance (the first stored: STOW stores a request's parts concurrently)
    institutions = {d.get("InstitutionName") for d in study.datasets} - {None, ""}
    assert value(with_fields[0]["00080080"]) in institutions
    everything_at_once = client.search_for_instances(
        study.study, ct.SeriesInstanceUID, fields=["all"]
    )
    assert value(everything_at_once[0]["00100020"]) == study.patient_id


def test_dates_codes_and_wildcards_match(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    client = dicomweb(hub, hospital_a)

    def count(**filters: str) -> int:
        return len(
            client.search_for_studies(search_filters={"PatientID": study.patient_id, **filters})
        )

    assert count(StudyDate="20240315") == 1
    assert count(StudyDate="20240301-20240331") == 1
    assert count(StudyDate="20240316-") == 0
    assert count(StudyDate="-20240314") == 0
    assert count(ModalitiesInStudy="CT") == 1
    assert count(ModalitiesInStudy="US,XA") == 0
    assert count(StudyInstanceUID=f"1.2.3,{study.study}") == 1
    assert count(PatientName="compressed*") == 1  # PN: case-insensitive
    assert count(PatientName="Compressed?amples^CT1") == 1
    assert count(PatientName="Nobody*") == 0
    assert (
        len(client.search_for_studies(search_filters={"PatientID": study.patient_id[:-2] + "*"}))
        >= 1
    )
    assert client.search_for_studies(search_filters={"PatientID": "no-such-patient"}) == []


def test_a_chinese_name_is_found_by_pinyin_and_characters(
    hub: HubUnderTest, hospital_a: Client
) -> None:
    patient = f"P-{uuid.uuid4().hex[:10]}"
    dataset = copy_of(
        "CT_small.dcm", patient_id=patient, SpecificCharacterSet="ISO_IR 192", PatientName="王^芳"
    )
    client = dicomweb(hub, hospital_a)
    client.store_instances([dataset])

    def names(name: str, fuzzy: bool) -> list[str]:
        found = client.search_for_studies(
            fuzzymatching=fuzzy, search_filters={"PatientID": patient, "PatientName": name}
        )
        return [r["00100010"]["Value"][0]["Alphabetic"] for r in found]

    assert names("wang", True) == ["王^芳"]
    assert names("WangFang", True) == ["王^芳"]
    assert names("fang", True) == ["王^芳"]
    assert names("王*", False) == ["王^芳"]
    assert names("王^芳", False) == ["王^芳"]
    assert names("li", True) == []
    assert names("wang", False) == []  # not fuzzy: the name is 王^芳


def test_bad_queries_are_400_with_the_reason(hub: HubUnderTest, hospital_a: Client) -> None:
    with http(hub, hospital_a) as client:
        unknown = client.get("/studies", params={"PatientNickname": "x"})
        assert unknown.status_code == 400
        assert "PatientNickname" in unknown.json()["issue"][0]["diagnostics"]
        assert client.get("/studies", params={"StudyDate": "yesterday"}).status_code == 400
        assert client.get("/series", params={"limit": "many"}).status_code == 400
        assert (
            client.get("/studies", headers={"Accept": "application/dicom+xml"}).status_code == 406
        )
        assert client.get("/studies/not-a-uid/series").status_code == 400
        empty = client.get("/studies", params={"PatientID": "nobody-at-all"})
        assert empty.status_code == 200 and empty.json() == []
        assert empty.headers["content-type"] == "application/dicom+json"


# -- STOW-RS edge cases ------------------------------------------------------------------------


def test_a_truncated_part_fails_alone(hub: HubUnderTest, hospital_a: Client) -> None:
    study_uid = generate_uid()
    good = [encoded(copy_of(n, study=study_uid)) for n in ("CT_small.dcm", "MR_small.dcm")]
    cut = copy_of("CT_small.dcm", study=study_uid)
    truncated = encoded(cut)[:-3000]
    body, content_type = multipart([good[0], truncated, good[1]])
    with http(hub, hospital_a) as client:
        response = client.post("/studies", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 202, response.text
        assert response.headers["content-type"] == "application/dicom+json"
        result = response.json()
        failed = result["00081198"]["Value"]
        assert len(failed) == 1
        assert value(failed[0]["00081155"]) == cut.SOPInstanceUID
        assert value(failed[0]["00081197"]) in (0xC000, 0xA900)
        assert "truncated" in response.headers["warning"]
        assert cut.SOPInstanceUID in response.headers["warning"]
        assert len(result["00081199"]["Value"]) == 2
        retrieved = parts_of(client.get(f"/studies/{study_uid}"))
        assert sorted(data for _, data in retrieved) == sorted(good)


def test_store_refusals_are_clear(
    hub: HubUnderTest, hospital_a: Client, hospital_b: Client
) -> None:
    mine = copy_of("CT_small.dcm")
    with http(hub, hospital_a) as client:
        body, content_type = multipart([encoded(mine)])
        wrong_study = client.post(
            f"/studies/{generate_uid()}", content=body, headers={"Content-Type": content_type}
        )
        assert wrong_study.status_code == 409
        item = wrong_study.json()["00081198"]["Value"][0]
        assert value(item["00081197"]) == 0xA900
        assert "not to study" in wrong_study.headers["warning"]
        right_study = client.post(
            f"/studies/{mine.StudyInstanceUID}",
            content=body,
            headers={"Content-Type": content_type},
        )
        assert right_study.status_code == 200
        again = client.post("/studies", content=body, headers={"Content-Type": content_type})
        assert again.status_code == 200  # the same bytes again: a harmless repeat
        junk, junk_type = multipart([b"not dicom at all" * 20])
        all_failed = client.post("/studies", content=junk, headers={"Content-Type": junk_type})
        assert all_failed.status_code == 409
        assert "not a DICOM" in all_failed.headers["warning"]
        json_type = client.post(
            "/studies", content=b"{}", headers={"Content-Type": "application/json"}
        )
        assert json_type.status_code == 415
        assert "multipart/related" in json_type.json()["issue"][0]["diagnostics"]
        no_boundary = client.post(
            "/studies",
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom"'},
        )
        assert no_boundary.status_code == 400
        xml_parts = client.post(
            "/studies",
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom+xml"; boundary=x'},
        )
        assert xml_parts.status_code == 415
        cut_body = client.post(
            "/studies", content=body[:200], headers={"Content-Type": content_type}
        )
        assert cut_body.status_code == 400 and "cut short" in cut_body.text
        single = copy_of("MR_small.dcm")
        one = client.post(
            "/studies", content=encoded(single), headers={"Content-Type": "application/dicom"}
        )
        assert one.status_code == 200
    # another hospital may not add to hospital A's study
    theirs = copy_of("MR_small.dcm", study=mine.StudyInstanceUID)
    body, content_type = multipart([encoded(theirs)])
    with http(hub, hospital_b) as client:
        refused = client.post("/studies", content=body, headers={"Content-Type": content_type})
        assert refused.status_code == 409
        assert value(refused.json()["00081198"]["Value"][0]["00081197"]) == 0x0124


def test_only_hospitals_store(hub: HubUnderTest, doctor: Client, admin: Client) -> None:
    body, content_type = multipart([encoded(copy_of("CT_small.dcm"))])
    for client in (doctor, admin):
        with http(hub, client) as session:
            response = session.post(
                "/studies", content=body, headers={"Content-Type": content_type}
            )
            assert response.status_code == 403, response.text


def test_a_study_larger_than_the_general_body_limit_is_stored(
    hub: HubUnderTest, hospital_a: Client
) -> None:
    study_uid = generate_uid()
    datasets = [copy_of("examples_ybr_color.dcm", study=study_uid) for _ in range(10)]
    body, content_type = multipart([encoded(d) for d in datasets])
    assert len(body) > 2 * 1024 * 1024  # the test hub's YIJIAN_MAX_BODY_BYTES
    with http(hub, hospital_a) as client:
        response = client.post("/studies", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        assert len(response.json()["00081199"]["Value"]) == 10
    too_large = httpx.post(
        hub.fhir + "/Patient",
        content=b" " * (3 * 1024 * 1024),
        headers={"Authorization": token(hospital_a), "Content-Type": "application/fhir+json"},
    )
    assert too_large.status_code == 413  # the general limit still holds elsewhere


# -- access and audit ----------------------------------------------------------------------------


def test_another_hospital_sees_nothing_a_doctor_sees_it_with_a_purpose(
    hub: HubUnderTest,
    hospital_a: Client,
    hospital_b: Client,
    doctor: Client,
    consultant: Client,
    study: StoredStudy,
) -> None:
    ct = study.datasets[0]
    instance = f"/studies/{study.study}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"
    other = dicomweb(hub, hospital_b)
    assert other.search_for_studies(search_filters={"PatientID": study.patient_id}) == []
    assert other.search_for_series(study.study) == []
    with http(hub, hospital_b) as client:
        for path in (
            f"/studies/{study.study}",
            f"/studies/{study.study}/metadata",
            instance,
            instance + "/frames/1",
            instance + "/rendered",
            f"/studies/{study.study}/thumbnail",
            f"/studies/{study.study}/deidentified",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert response.json()["issue"][0]["code"] == "not-found"
    # A consultant outside a consultation finds nothing either.
    outsider = dicomweb(hub, consultant)
    assert outsider.search_for_studies(search_filters={"PatientID": study.patient_id}) == []
    with http(hub, consultant) as client:
        assert client.get(instance).status_code == 404
    # The doctor sees the study once ordering for its patient (a purpose of use).
    reader = dicomweb(hub, doctor)
    if not live_purpose(hub, doctor, study_patient(hospital_a, study)):
        assert reader.search_for_studies(search_filters={"PatientID": study.patient_id}) == []
        with http(hub, doctor) as client:
            assert client.get(instance).status_code == 404
    order_for(doctor, study_patient(hospital_a, study))
    found = reader.search_for_studies(search_filters={"PatientID": study.patient_id})
    assert uids(found, "0020000D") == [study.study]
    assert reader.retrieve_instance(study.study, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    with http(hub, doctor) as client:
        assert client.get(f"/studies/{generate_uid()}").status_code == 404
        assert client.get("/studies").status_code == 200
        assert client.get("/nothing-here").status_code == 404
    with httpx.Client(base_url=hub.base_url + "/dicomweb") as anonymous:
        assert anonymous.get("/studies").status_code == 401


def test_reads_are_audited_with_patient_and_study(
    hub: HubUnderTest, hospital_a: Client, doctor: Client, study: StoredStudy
) -> None:
    ct = study.datasets[0]
    order_for(doctor, study_patient(hospital_a, study))
    reader = dicomweb(hub, doctor)
    reader.retrieve_instance(study.study, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    reader.search_for_studies(search_filters={"PatientID": study.patient_id})
    rows = audit_rows(hub, doctor.client_id, f"urn:oid:{study.study}")
    interactions = {r["interaction"] for r in rows}
    assert {"dicomweb:retrieve", "dicomweb:search-study"} <= interactions
    retrieved = [r for r in rows if r["interaction"] == "dicomweb:retrieve"][-1]
    assert retrieved["action"] == "R" and retrieved["status"] == 200
    assert len(retrieved["patients"]) == 1 and retrieved["patients"][0].startswith("Patient/")
    assert any(e.startswith("ImagingStudy/") for e in retrieved["entities"])


# -- de-identified export ---------------------------------------------------------------------


def test_a_study_is_exported_deidentified(
    hub: HubUnderTest, admin: Client, doctor: Client, hospital_a: Client, study: StoredStudy
) -> None:
    with http(hub, admin) as client:
        response = client.get(
            f"/studies/{study.study}/deidentified", params={"pseudonym": "CASE-0001"}
        )
        assert response.status_code == 200, response.text
        parts = parts_of(response)
        assert len(parts) == len(study.datasets)
        for content_type, data in parts:
            assert content_type == "application/dicom"
            dataset = pydicom.dcmread(io.BytesIO(data))
            assert dataset.PatientName == "CASE-0001" and dataset.PatientID == "CASE-0001"
            assert dataset.PatientIdentityRemoved == "YES"
            assert dataset.StudyInstanceUID != study.study
            assert dataset.SOPInstanceUID not in {d.SOPInstanceUID for d in study.datasets}
        bad = client.get(f"/studies/{study.study}/deidentified", params={"pseudonym": "王芳"})
        assert bad.status_code == 400
    with http(hub, hospital_a) as client:
        assert client.get(f"/studies/{study.study}/deidentified").status_code == 200
    with http(hub, doctor) as client:
        assert client.get(f"/studies/{study.study}/deidentified").status_code == 403


def test_burned_in_annotation_stops_the_export(
    hub: HubUnderTest, hospital_a: Client, admin: Client
) -> None:
    study_uid = generate_uid()
    datasets = [
        copy_of("CT_small.dcm", study=study_uid),
        copy_of("SC_rgb_jpeg_dcmtk.dcm", study=study_uid, BurnedInAnnotation="YES"),
    ]
    dicomweb(hub, hospital_a).store_instances(datasets)
    with http(hub, admin) as client:
        response = client.get(f"/studies/{study_uid}/deidentified")
    assert response.status_code == 409
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert "burned-in" in diagnostics and datasets[1].SOPInstanceUID in diagnostics


def test_dicomweb_client_sees_409_when_nothing_is_stored(
    hub: HubUnderTest, hospital_b: Client, study: StoredStudy
) -> None:
    intruder = copy_of("CT_small.dcm", study=study.study)
    with pytest.raises(requests.HTTPError) as error:
        dicomweb(hub, hospital_b).store_instances([intruder])
    assert error.value.response.status_code == 409


def test_odd_input_is_never_a_server_error(
    hub: HubUnderTest, hospital_a: Client, study: StoredStudy
) -> None:
    ct = study.datasets[0]
    instance = f"/studies/{study.study}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"
    wado = {
        "requestType": "WADO",
        "studyUID": study.study,
        "seriesUID": ct.SeriesInstanceUID,
        "objectUID": ct.SOPInstanceUID,
    }
    requests_ = [
        ("/studies", {"PatientName": "a\x00b"}, {}),
        ("/studies", {"00100010.x": "1"}, {}),
        ("/studies", {"StudyDate": "20201301"}, {}),
        ("/studies", {"includefield": "NotAnAttribute"}, {}),
        ("/studies", {"00091001": "private"}, {}),
        ("/series", {"SeriesNumber": "abc"}, {}),
        ("/studies", {"offset": "99999999"}, {}),
        ("/studies", {}, {"Accept": "image/png;q=x"}),
        (f"/studies/{study.study}/series/1.2.x", {}, {}),
        (instance + "/frames/0", {}, {}),
        (instance + "/frames/99999999999", {}, {}),
        (instance + "/frames/1,2", {}, {}),
        (instance + "/rendered", {"window": "1,0"}, {}),
        (instance + "/rendered", {"window": "nan,10"}, {}),
        (instance + "/rendered", {"window": "1,10,sigmoid"}, {}),
        (instance + "/rendered", {"viewport": "0,10"}, {}),
        (instance + "/rendered", {"viewport": "10,10,1,1"}, {}),
        (instance + "/rendered", {"quality": "0"}, {}),
        (instance + "/frames/1,2/rendered", {}, {}),
        (instance + "/thumbnail", {"viewport": "x"}, {}),
        (f"/studies/{study.study}/deidentified", {"keepdates": "maybe"}, {}),
        ("/wado", {**wado, "frameNumber": "abc"}, {}),
        ("/wado", {**wado, "rows": "-1"}, {}),
        ("/wado", {**wado, "windowCenter": "1"}, {}),
        ("/wado", {**wado, "contentType": "image/gif"}, {}),
        ("/wado", {**wado, "contentType": "application/dicom", "transferSyntax": "1.2.3"}, {}),
        ("/wado", {**wado, "anonymize": "yes"}, {}),
        ("/wado", {**wado, "frameNumber": "2"}, {}),
    ]
    with http(hub, hospital_a) as client:
        for path, params, headers in requests_:
            response = client.get(path, params=params, headers=headers)
            assert 400 <= response.status_code < 500, (path, params, response.status_code)
            assert response.json()["resourceType"] == "OperationOutcome", (path, params)
        long_boundary = client.post(
            "/studies",
            content=b"--x--",
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={"b" * 300}'
            },
        )
        assert long_boundary.status_code == 400
        empty = client.post(
            "/studies", content=b"", headers={"Content-Type": "multipart/related; boundary=x"}
        )
        assert empty.status_code == 400


def test_stow_in_batches_becomes_one_imaging_study(hub: HubUnderTest, hospital_a: Client) -> None:
    """Each request is answered once stored and indexed; the ImagingStudy follows, written
    once the study is quiet, with every instance of every request."""
    study_uid, series = generate_uid(), generate_uid()
    patient = f"P-{uuid.uuid4().hex[:10]}"
    client = dicomweb(hub, hospital_a)
    for number in range(1, 7, 2):
        batch = [
            copy_of(
                "CT_small.dcm", study=study_uid, series=series, patient_id=patient, InstanceNumber=n
            )
            for n in (number, number + 1)
        ]
        response = client.store_instances(batch)
        assert "FailedSOPSequence" not in response
    found: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        bundle = hospital_a.get(
            "ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
        ).json()
        entries = bundle.get("entry") or []
        if entries and entries[0]["resource"]["numberOfInstances"] == 6:
            found = entries[0]["resource"]
            break
        time.sleep(0.2)
    assert found, "no ImagingStudy with the six instances within 10 s"
    assert [i["number"] for i in found["series"][0]["instance"]] == [1, 2, 3, 4, 5, 6]
    subject = hospital_a.get(found["subject"]["reference"]).json()
    assert subject["identifier"][0]["value"] == patient
