"""DICOMweb at ``/dicomweb``: STOW-RS, QIDO-RS, WADO-RS (instances, metadata, frames,
rendered images, thumbnails), WADO-URI, and a de-identified export of a study.

HTTP adapters only, written as plain Starlette routes like the FHIR API: requests become
calls on ``ImagingService`` (receive), ``imaging.qido`` (search and lookups) and
``imaging.rendering``; answers are DICOM JSON or multipart/related streams built by
``imaging.multipart``. Files are served exactly as stored and read in chunks, never whole.

Access: every request carries the hub's bearer token. Reading needs ``ImagingStudy`` read
rights; ``readable_organization`` limits a hospital to the studies it sent (the policy's
owned-only rule, as for FHIR), and ``purpose_filter``/``require_purpose`` limit a doctor or
consultant to studies whose ImagingStudy their purposes of use cover (``hub.access``, the same
filter as FHIR reads); a study the caller may not see is answered exactly like one that does
not exist (404, or no QIDO match). Storing needs ``ImagingStudy`` create rights and a
hospital client: instances are stored as that hospital's. Every request is audited like a
FHIR interaction, naming the study's Patient and ImagingStudy when known.

Choices worth knowing (PS3.18 leaves them open, or this hub narrows them):

* STOW-RS failures: the response's Failed SOP Sequence carries the DICOM status in Failure
  Reason (0008,1197); the human-readable reason of each failure is sent in a ``Warning``
  header (``299 yijian-hub "part 2, SOP Instance 1.2.3: the instance is truncated ..."``),
  as PS3.18 Table I.1-1 defines no attribute for it (dcm4chee does the same).
* WADO-RS retrieval serves files as stored: an Accept without ``transfer-syntax``, or with
  ``transfer-syntax=*``, gets each instance in its own transfer syntax; asking for a
  transfer syntax an instance is not stored in is answered 406 — the hub never silently
  recompresses or transcodes.
* A de-identified export uses ``imaging.export``: UIDs are replaced through the hub's
  de-identification key (the same study exported twice keeps the same new UIDs), and the
  default pseudonym is derived from the hospital and Patient ID with that key; ``pseudonym``
  overrides it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlencode

import anyio
import asyncpg
import orjson
import pydicom
from pydicom.dataset import Dataset
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route

from hub.access.service import SCOPED_KINDS
from hub.api.dependencies import AuditScope, audited, authenticate, get_hub
from hub.fhir.outcomes import FhirError, bad_request, forbidden
from hub.runtime import Hub
from hub.security import policy, scopes
from hub.security.principals import ClientKind, Principal
from hub.storage.search_sql import AccessFilter
from imaging import rendering
from imaging.dataset import InvalidInstance
from imaging.deidentify import DeidentificationError, UidMapper, deidentify
from imaging.export import deidentified_study
from imaging.multipart import (
    MediaType,
    MultipartError,
    OutgoingPart,
    Part,
    multipart_type,
    new_boundary,
    parse_accept,
    parse_media_type,
    read_parts,
    spool,
    write_parts,
)
from imaging.qido import (
    Level,
    QueryError,
    StoredInstance,
    StudyRef,
    burned_in,
    find_instances,
    metadata_page,
    parse_query,
    search,
)
from imaging.service import PROCESSING_FAILURE, Received, Refused, Sender, imaging_service
from imaging.store import CHUNK, ObjectStore, open_seekable
from imaging.transcoding import EXPLICIT_LITTLE, convertible, to_explicit_little_endian

log = logging.getLogger(__name__)

ROOT = "/dicomweb"
DICOM_JSON = "application/dicom+json"
DICOM = "application/dicom"
AGENT = "yijian-hub"  # the agent named in Warning headers
STOW_CONCURRENCY = 4  # parts stored at once (each on its own connection)
MAX_WARNINGS = 20
DEFAULT_THUMBNAIL = 128
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_IDENTIFYING_KEYS = frozenset(
    {
        "patientid",
        "00100020",
        "patientname",
        "00100010",
        "patientbirthdate",
        "00100030",
        "issuerofpatientid",
        "00100021",
        "accessionnumber",
        "00080050",
    }
)
_NATIVE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.2",
    }
)


# -- who may see what ------------------------------------------------------------------------


def readable_organization(principal: Principal, permission: str = scopes.READ) -> str | None:
    """Which studies ``principal`` may read: only those of this organization (a hospital:
    the policy's owned-only rule for ImagingStudy, as FHIR reads apply it), or None for all
    (doctors, admins). 403 for a client that may not read (``permission``: r, or s for a
    search) ImagingStudy at all.

    With ``purpose_filter``/``require_purpose`` (a doctor's or consultant's purposes of use),
    the places that decide study visibility for DICOMweb."""
    policy.require(principal, "ImagingStudy", permission)
    if "ImagingStudy" in policy.rules(principal).owned_only:
        return principal.organization
    return None


async def purpose_filter(
    hub: Hub, connection: asyncpg.Connection, principal: Principal, audit: AuditScope
) -> AccessFilter | None:
    """A doctor's or consultant's purposes of use as a row filter (``hub.access``): they see
    a study only when its ImagingStudy is within one (an unsynced study is not yet visible to
    them). None for hospitals and admins, whom ``readable_organization`` decides alone."""
    if principal.kind not in SCOPED_KINDS:
        return None
    access = await hub.records.access.access(connection, principal)
    audit.access = access
    return access.filter


async def require_purpose(
    hub: Hub,
    connection: asyncpg.Connection,
    principal: Principal,
    audit: AuditScope,
    study: StudyRef,
) -> None:
    """404 (as for a study that does not exist) unless the caller's purposes cover ``study``."""
    purposes = await purpose_filter(hub, connection, principal, audit)
    if purposes is None:
        return
    if study.imaging_study_id is None or not await hub.records.access.visible(
        connection, purposes, "ImagingStudy", study.imaging_study_id
    ):
        raise _not_found(study.study_uid, None, None)


def _note_study(audit: AuditScope, study: StudyRef) -> None:
    if study.patient_ref:
        audit.patients.add(f"Patient/{study.patient_ref}")
    if study.imaging_study_id:
        audit.entities.append(f"ImagingStudy/{study.imaging_study_id}")
    audit.entities.append(f"urn:oid:{study.study_uid}")


def _audit_query(hub: Hub, request: Request) -> str | None:
    """The query string for the audit log, patient-identifying values as a keyed hash."""
    pairs = []
    for key, value in request.query_params.multi_items():
        if key.lower() in _IDENTIFYING_KEYS and value:
            digest = hmac.new(hub.audit.key, value.encode(), hashlib.sha256).hexdigest()[:16]
            value = f"hmac:{digest}"
        pairs.append((key, value))
    return urlencode(pairs)[:2000] if pairs else None


def dicomweb_base(request: Request) -> str:
    """The DICOMweb root as clients reach it (RetrieveURL values)."""
    public = get_hub(request).settings.public_base_url
    base = public.rstrip("/") if public else str(request.base_url).rstrip("/")
    return base + ROOT


# -- small helpers -------------------------------------------------------------------------


def _uid(request: Request, name: str, what: str) -> str | None:
    value = request.path_params.get(name)
    if value is None:
        return None
    if len(value) > 64 or not _UID.match(value):
        raise bad_request(f"{what} {value[:80]!r} is not a DICOM UID")
    return str(value)


def _not_found(study: str, series: str | None = None, instance: str | None = None) -> FhirError:
    if instance is not None:
        text = f"instance {instance} of series {series} of study {study} is not known"
    elif series is not None:
        text = f"series {series} of study {study} is not known"
    else:
        text = f"study {study} is not known"
    return FhirError(404, "not-found", text)


def _accept(request: Request) -> list[MediaType] | None:
    """The Accept header's ranges (the ``accept`` query parameter, PS3.18 §8.3.3.1, wins);
    None when absent."""
    text = request.query_params.get("accept") or request.headers.get("accept")
    if not text or not text.strip():
        return None
    try:
        return parse_accept(text)
    except MultipartError as error:
        raise bad_request(f"malformed Accept: {error}") from None


def _not_acceptable(message: str) -> FhirError:
    return FhirError(406, "not-supported", message)


def _require_json(request: Request) -> None:
    ranges = _accept(request)
    if ranges is None:
        return
    for media in ranges:
        if media.type in (DICOM_JSON, "application/json") or media.matches(DICOM_JSON):
            return
    raise _not_acceptable(
        "this resource is served as application/dicom+json (DICOM JSON); XML is not offered"
    )


def _render_error(error: rendering.RenderError) -> FhirError:
    code = {400: "invalid", 404: "not-found", 406: "not-supported"}.get(error.status, "processing")
    return FhirError(error.status, code, error.message)


def _warning(text: str) -> str:
    """An RFC 7234 Warning value (printable ASCII only: header values are Latin-1)."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text).replace('"', "'")
    return f'299 {AGENT} "{clean[:400]}"'


def _json_response(
    body: bytes | dict[str, Any], status: int = 200, warnings: list[str] | None = None
) -> Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    response = Response(content, status_code=status, media_type=DICOM_JSON)
    for text in (warnings or [])[:MAX_WARNINGS]:
        response.headers.append("Warning", _warning(text))
    return response


async def _file_chunks(store: ObjectStore, key: str) -> AsyncIterator[bytes]:
    """A stored object in chunks, each read in a worker thread (the store may be remote)."""
    source: BinaryIO = await anyio.to_thread.run_sync(store.open, key)
    try:
        while chunk := await anyio.to_thread.run_sync(source.read, CHUNK):
            yield chunk
    finally:
        source.close()


async def _converted(store: ObjectStore, key: str) -> AsyncIterator[bytes]:
    """A stored native instance re-encoded as Explicit VR Little Endian (lossless)."""
    yield await anyio.to_thread.run_sync(_with_object, store, key, to_explicit_little_endian)


def _with_object(store: ObjectStore, key: str, work: Callable[[BinaryIO], Any]) -> Any:
    with open_seekable(store, key) as source:
        return work(source)


async def _on_object(store: ObjectStore, key: str, work: Callable[[BinaryIO], Any]) -> Any:
    """``work(stream)`` on a stored object in a worker thread; RenderError → the HTTP error."""
    try:
        return await anyio.to_thread.run_sync(_with_object, store, key, work)
    except rendering.RenderError as error:
        raise _render_error(error) from None


# -- QIDO-RS -------------------------------------------------------------------------------


async def _qido(request: Request, level: Level) -> Response:
    principal = await authenticate(request)
    hub = get_hub(request)
    interaction = f"dicomweb:search-{level.name.lower()}"
    async with audited(request, principal, interaction, "E", _audit_query(hub, request)) as audit:
        organization = readable_organization(principal, scopes.SEARCH)
        _require_json(request)
        study_uid = _uid(request, "study", "StudyInstanceUID")
        series_uid = _uid(request, "series", "SeriesInstanceUID")
        pairs = [
            (k, v) for k, v in request.query_params.multi_items() if k not in ("accept", "charset")
        ]
        try:
            query = parse_query(level, pairs, study_uid=study_uid, series_uid=series_uid)
        except QueryError as error:
            raise bad_request(str(error)) from None
        async with hub.database.connection() as connection:
            purposes = await purpose_filter(hub, connection, principal, audit)
            result = await search(connection, query, organization, dicomweb_base(request), purposes)
        audit.patients |= result.patients
        for study, imaging_study in result.studies:
            if imaging_study:
                audit.entities.append(f"ImagingStudy/{imaging_study}")
            audit.entities.append(f"urn:oid:{study}")
    warnings = list(query.notes)
    if result.more and not query.limit_given:
        warnings.append(
            f"more than {query.limit} results match; the next ones are found with "
            f"offset={query.offset + query.limit}"
        )
    return _json_response(result.body, warnings=warnings)


async def search_studies(request: Request) -> Response:
    return await _qido(request, Level.STUDY)


async def search_series(request: Request) -> Response:
    return await _qido(request, Level.SERIES)


async def search_instances(request: Request) -> Response:
    return await _qido(request, Level.INSTANCE)


# -- WADO-RS: instances ----------------------------------------------------------------------


def _wanted_syntaxes(request: Request) -> set[str] | None:
    """The transfer syntaxes acceptable for application/dicom parts; None: any (as stored).
    406 when the Accept header allows no DICOM instance at all."""
    ranges = _accept(request)
    if ranges is None:
        return None
    wanted: set[str] = set()
    for media in ranges:
        if media.type == "multipart/related":
            part_type = (media.param("type") or DICOM).lower()
            if not MediaType(part_type).matches(DICOM) and part_type not in ("*", DICOM):
                continue
        elif not media.matches(DICOM):
            continue
        syntax = media.param("transfer-syntax")
        if syntax is None or syntax.strip() == "*":
            return None
        wanted.add(syntax.strip())
    if not wanted:
        raise _not_acceptable('instances are served as multipart/related; type="application/dicom"')
    return wanted


async def _instances(
    request: Request, audit: AuditScope, principal: Principal
) -> tuple[StudyRef, list[StoredInstance]]:
    organization = readable_organization(principal)
    study = _uid(request, "study", "StudyInstanceUID")
    series = _uid(request, "series", "SeriesInstanceUID")
    instance = _uid(request, "instance", "SOPInstanceUID")
    assert study is not None
    hub = get_hub(request)
    async with hub.database.connection() as connection:
        found = await find_instances(connection, study, series, instance, organization=organization)
        if found is not None:
            await require_purpose(hub, connection, principal, audit, found[0])
    if found is None:
        raise _not_found(study, series, instance)
    _note_study(audit, found[0])
    return found


async def retrieve(request: Request) -> Response:
    """The instances of a study, series or one instance, as stored (multipart/related)."""
    principal = await authenticate(request)
    hub = get_hub(request)
    async with audited(request, principal, "dicomweb:retrieve", "R") as audit:
        wanted = _wanted_syntaxes(request)
        _, instances = await _instances(request, audit, principal)
        converted: set[str] = set()  # served re-encoded as Explicit VR Little Endian
        if wanted is not None:
            for item in instances:
                if item.transfer_syntax in wanted:
                    continue
                if EXPLICIT_LITTLE in wanted and convertible(item.transfer_syntax, item.size):
                    converted.add(item.sop_instance_uid)
                    continue
                name = pydicom.uid.UID(item.transfer_syntax).name
                raise _not_acceptable(
                    f"instance {item.sop_instance_uid} is stored in {name} "
                    f"({item.transfer_syntax}); the hub serves files as stored and never "
                    "recompresses them: ask with transfer-syntax=* or "
                    f"transfer-syntax={item.transfer_syntax}"
                )
    store = imaging_service(hub).store
    boundary = new_boundary()
    parts = (
        OutgoingPart(
            f"{DICOM}; transfer-syntax={EXPLICIT_LITTLE}",
            _converted(store, item.object_key),
        )
        if item.sop_instance_uid in converted
        else OutgoingPart(
            f"{DICOM}; transfer-syntax={item.transfer_syntax}",
            _file_chunks(store, item.object_key),
        )
        for item in instances
    )
    return StreamingResponse(
        write_parts(parts, boundary), media_type=multipart_type(DICOM, boundary)
    )


# -- WADO-RS: metadata -----------------------------------------------------------------------


async def retrieve_metadata(request: Request) -> Response:
    """The stored DICOM JSON of each instance, concatenated into one array unparsed."""
    principal = await authenticate(request)
    hub = get_hub(request)
    async with audited(request, principal, "dicomweb:metadata", "R") as audit:
        organization = readable_organization(principal)
        _require_json(request)
        study = _uid(request, "study", "StudyInstanceUID")
        series = _uid(request, "series", "SeriesInstanceUID")
        instance = _uid(request, "instance", "SOPInstanceUID")
        assert study is not None
        async with hub.database.connection() as connection:
            first = await metadata_page(
                connection, study, series, instance, organization=organization
            )
            if first.study is not None:
                await require_purpose(hub, connection, principal, audit, first.study)
        if first.study is None:
            raise _not_found(study, series, instance)
        _note_study(audit, first.study)

    async def body() -> AsyncIterator[bytes]:
        yield ("[" + ",".join(first.texts)).encode()
        after = first.after
        while after is not None:
            async with hub.database.connection() as connection:
                page = await metadata_page(
                    connection, study, series, instance, organization=organization, after=after
                )
            if page.texts:
                yield ("," + ",".join(page.texts)).encode()
            after = page.after
        yield b"]"

    return StreamingResponse(body(), media_type=DICOM_JSON)


# -- WADO-RS: frames -------------------------------------------------------------------------


def _frame_numbers(text: str) -> list[int]:
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or not 0 < int(item) < 2**31:
            raise bad_request(
                f"frame list {text[:80]!r} must be positive frame numbers separated by commas"
            )
        numbers.append(int(item))
    if len(numbers) > 10_000:
        raise bad_request("at most 10000 frames per request")
    return numbers


def _frame_part_type(request: Request, media_type: str, syntax: str) -> str:
    """The Content-Type of the frame parts the Accept header allows; 406 if none.

    Frames are sent as stored: native ones as application/octet-stream (Explicit VR Little
    Endian), compressed ones as their bitstream, in their own media type or — when the
    client accepts any transfer syntax — as application/octet-stream with the syntax named.
    """
    native = media_type == rendering.NATIVE_MEDIA_TYPE
    ranges = _accept(request)
    if ranges is None:
        return f"{media_type}; transfer-syntax={syntax}"
    for media in ranges:
        if media.type == "multipart/related":
            part = MediaType((media.param("type") or rendering.NATIVE_MEDIA_TYPE).lower())
        elif media.type == "*/*":
            part = media
        else:
            continue
        wanted = (media.param("transfer-syntax") or "").strip()
        if part.type == rendering.NATIVE_MEDIA_TYPE:
            if native and wanted in ("", "*", syntax):
                return f"{media_type}; transfer-syntax={syntax}"
            if not native and wanted in ("*", syntax):
                return f"{rendering.NATIVE_MEDIA_TYPE}; transfer-syntax={syntax}"
            continue
        if part.matches(media_type) and wanted in ("", "*", syntax):
            return f"{media_type}; transfer-syntax={syntax}"
    name = pydicom.uid.UID(syntax).name
    raise _not_acceptable(
        f"the frames are stored as {media_type} ({name}) and are served as stored: accept "
        f'multipart/related; type="{media_type}" (or type="application/octet-stream"; '
        "transfer-syntax=*)"
    )


async def retrieve_frames(request: Request) -> Response:
    principal = await authenticate(request)
    hub = get_hub(request)
    async with audited(request, principal, "dicomweb:frames", "R") as audit:
        numbers = _frame_numbers(request.path_params["frames"])
        _, instances = await _instances(request, audit, principal)
        item = instances[0]
        store = imaging_service(hub).store
        found = await _on_object(
            store, item.object_key, lambda source: rendering.frames(source, numbers)
        )
        content_type = _frame_part_type(request, found.media_type, found.transfer_syntax)
    boundary = new_boundary()
    part_type = content_type.split(";")[0]
    parts = [OutgoingPart(content_type, frame) for frame in found.frames]
    return StreamingResponse(
        write_parts(parts, boundary), media_type=multipart_type(part_type, boundary)
    )


# -- WADO-RS: rendered and thumbnails ----------------------------------------------------------


def _image_type(request: Request) -> str:
    """image/jpeg (the default) or image/png, as the Accept header allows; 406 otherwise."""
    ranges = _accept(request)
    if ranges is None:
        return "image/jpeg"
    for media in ranges:
        if media.type in rendering.RENDERED_MEDIA_TYPES:
            return media.type
        if media.type == "multipart/related":
            part = (media.param("type") or "").lower()
            if part in rendering.RENDERED_MEDIA_TYPES:
                return part
        if media.matches("image/jpeg"):
            return "image/jpeg"
    raise _not_acceptable("rendered images are offered as image/jpeg or image/png")


@dataclass(frozen=True)
class RenderOptions:
    media_type: str
    window: tuple[float, float] | None
    viewport: tuple[int, int] | None
    quality: int


def _numbers(text: str, name: str) -> list[float]:
    try:
        numbers = [float(v.strip()) for v in text.split(",")]
    except ValueError:
        raise bad_request(f"{name} must be numbers separated by commas") from None
    if not all(math.isfinite(n) for n in numbers):
        raise bad_request(f"{name} must be finite numbers")
    return numbers


def _render_options(request: Request, media_type: str) -> RenderOptions:
    """PS3.18 §8.3.5: window=center,width[,function], viewport=vw,vh, quality=1..100."""
    params = request.query_params
    window = None
    if params.get("window"):
        values = [v.strip() for v in params["window"].split(",")]
        if len(values) not in (2, 3):
            raise bad_request("window must be center,width or center,width,function")
        if len(values) == 3 and values[2].lower() not in ("linear", "linear-exact", ""):
            raise bad_request(f"window function {values[2]!r} is not supported; use linear")
        center, width = _numbers(",".join(values[:2]), "window")
        window = (center, width)
    viewport = None
    if params.get("viewport"):
        values = [v.strip() for v in params["viewport"].split(",")]
        if len(values) != 2:
            raise bad_request("viewport must be width,height (cropping is not supported)")
        if not all(v.isdigit() and 0 < int(v) <= 16384 for v in values):
            raise bad_request("viewport must be two positive integers up to 16384")
        viewport = (int(values[0]), int(values[1]))
    quality = 90
    if params.get("quality"):
        text = params["quality"].strip()
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise bad_request("quality must be an integer from 1 to 100")
        quality = int(text)
    return RenderOptions(media_type, window, viewport, quality)


def _render(options: RenderOptions, frame: int) -> Callable[[BinaryIO], bytes]:
    def work(source: BinaryIO) -> bytes:
        return rendering.render(
            source,
            frame,
            media_type=options.media_type,
            window=options.window,
            viewport=options.viewport,
            quality=options.quality,
        )

    return work


def _is_image(item: StoredInstance) -> bool:
    return bool(item.rows and item.columns)


async def retrieve_rendered(request: Request) -> Response:
    """An instance's first frame (or the frame in the path) rendered; for a study or
    series, every image instance rendered, as multipart/related."""
    principal = await authenticate(request)
    hub = get_hub(request)
    async with audited(request, principal, "dicomweb:rendered", "R") as audit:
        options = _render_options(request, _image_type(request))
        frames = request.path_params.get("frames")
        numbers = _frame_numbers(frames) if frames is not None else [1]
        if len(numbers) != 1:
            raise bad_request("a rendered frame is one frame number (frames/N/rendered)")
        _, instances = await _instances(request, audit, principal)
        store = imaging_service(hub).store
        single = "instance" in request.path_params
        if single:
            image = await _on_object(store, instances[0].object_key, _render(options, numbers[0]))
        else:
            images = [item for item in instances if _is_image(item)]
            if not images:
                raise FhirError(422, "processing", "no instance here is an image")
    if single:
        return Response(image, media_type=options.media_type)

    async def rendered_parts() -> AsyncIterator[OutgoingPart]:
        for item in images:
            try:
                data = await _on_object(store, item.object_key, _render(options, 1))
            except FhirError as error:  # a part cannot change the status any more
                log.warning("instance %s not rendered: %s", item.sop_instance_uid, error)
                continue
            yield OutgoingPart(options.media_type, data)

    boundary = new_boundary()
    return StreamingResponse(
        write_parts(rendered_parts(), boundary),
        media_type=multipart_type(options.media_type, boundary),
    )


def _representative(instances: list[StoredInstance]) -> StoredInstance | None:
    """The middle image of the series with the most images (the first such series)."""
    by_series: dict[str, list[StoredInstance]] = {}
    for item in instances:
        if _is_image(item):
            by_series.setdefault(item.series_uid, []).append(item)
    if not by_series:
        return None
    chosen = max(by_series.values(), key=len)  # max keeps the first of equal lengths
    return chosen[(len(chosen) - 1) // 2]


async def retrieve_thumbnail(request: Request) -> Response:
    principal = await authenticate(request)
    hub = get_hub(request)
    async with audited(request, principal, "dicomweb:thumbnail", "R") as audit:
        media_type = _image_type(request)
        size = DEFAULT_THUMBNAIL
        viewport = _render_options(request, media_type).viewport
        if viewport is not None:
            size = min(viewport)
        _, instances = await _instances(request, audit, principal)
        item = instances[0] if "instance" in request.path_params else _representative(instances)
        if item is None:
            raise FhirError(422, "processing", "no instance here is an image")
        store = imaging_service(hub).store
        image = await _on_object(
            store,
            item.object_key,
            lambda source: rendering.thumbnail(source, size, media_type),
        )
    return Response(image, media_type=media_type)


# -- WADO-URI --------------------------------------------------------------------------------


async def wado_uri(request: Request) -> Response:
    """PS3.18 §9 (WADO-URI): one instance as application/dicom or a rendered image."""
    principal = await authenticate(request)
    hub = get_hub(request)
    params = request.query_params
    async with audited(request, principal, "wado-uri", "R") as audit:
        organization = readable_organization(principal)
        if params.get("requestType") != "WADO":
            raise bad_request("requestType must be WADO")
        uids = {}
        for name in ("studyUID", "seriesUID", "objectUID"):
            value = (params.get(name) or "").strip()
            if not value:
                raise bad_request(f"{name} is required")
            if len(value) > 64 or not _UID.match(value):
                raise bad_request(f"{name} {value[:80]!r} is not a DICOM UID")
            uids[name] = value
        if params.get("anonymize"):
            raise bad_request(
                "anonymize is not offered here; use GET /dicomweb/studies/{study}/deidentified"
            )
        content_type = _wado_content_type(params.get("contentType"))
        async with hub.database.connection() as connection:
            found = await find_instances(
                connection,
                uids["studyUID"],
                uids["seriesUID"],
                uids["objectUID"],
                organization=organization,
            )
            if found is not None:
                await require_purpose(hub, connection, principal, audit, found[0])
        if found is None:
            raise _not_found(uids["studyUID"], uids["seriesUID"], uids["objectUID"])
        _note_study(audit, found[0])
        item = found[1][0]
        store = imaging_service(hub).store
        if content_type == DICOM:
            syntax = (params.get("transferSyntax") or "").strip()
            if syntax and syntax != item.transfer_syntax:
                raise _not_acceptable(
                    f"the instance is stored in {item.transfer_syntax} and is served as "
                    "stored (never recompressed)"
                )
        else:
            options = _wado_render_options(params, content_type)
            frame = _wado_int(params.get("frameNumber"), "frameNumber") or 1
            image = await _on_object(store, item.object_key, _render(options, frame))
    if content_type == DICOM:
        return StreamingResponse(
            _file_chunks(store, item.object_key),
            media_type=DICOM,
            headers={"Content-Length": str(item.size)},
        )
    return Response(image, media_type=content_type)


def _wado_content_type(value: str | None) -> str:
    if not value:
        return "image/jpeg"  # PS3.18 §9.1.2.2: the default for images
    for item in value.split(","):
        media = item.split(";")[0].strip().lower()
        if media in (DICOM, "image/jpeg", "image/png"):
            return media
        if media in ("*/*", "image/*"):
            return "image/jpeg"
    raise _not_acceptable(
        f"contentType {value[:80]!r} is not offered: use application/dicom, image/jpeg or image/png"
    )


def _wado_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not value.strip().isdigit() or int(value) < 1 or int(value) > 2**31:
        raise bad_request(f"{name} must be a positive integer")
    return int(value)


def _wado_render_options(params: Any, media_type: str) -> RenderOptions:
    center, width = params.get("windowCenter"), params.get("windowWidth")
    window = None
    if center or width:
        if not (center and width):
            raise bad_request("windowCenter and windowWidth go together")
        try:
            window = (float(center), float(width))
        except ValueError:
            raise bad_request("windowCenter and windowWidth must be numbers") from None
    rows, columns = (
        _wado_int(params.get("rows"), "rows"),
        _wado_int(params.get("columns"), "columns"),
    )
    viewport = None
    if rows or columns:
        viewport = (columns or 1 << 16, rows or 1 << 16)
    quality = _wado_int(params.get("imageQuality"), "imageQuality") or 90
    if quality > 100:
        raise bad_request("imageQuality must be 1 to 100")
    return RenderOptions(media_type, window, viewport, quality)


# -- de-identified export ------------------------------------------------------------------------


async def deidentified(request: Request) -> Response:
    """Every instance of a study through the PS3.15 basic profile (``imaging.export``), as
    multipart/related application/dicom; 409 if any instance declares burned-in text."""
    principal = await authenticate(request)
    hub = get_hub(request)
    params = request.query_params
    async with audited(request, principal, "dicomweb:deidentified", "R") as audit:
        organization = readable_organization(principal)
        if principal.kind not in (ClientKind.ADMIN, ClientKind.HOSPITAL):
            raise forbidden(
                f"a {principal.kind} client may not export studies; admins and the hospital "
                "that owns a study may"
            )
        pseudonym = params.get("pseudonym") or None
        if pseudonym is not None:
            try:
                deidentify(Dataset(), uid_map=UidMapper(b"0" * 16), patient_pseudonym=pseudonym)
            except DeidentificationError as error:
                raise bad_request(str(error)) from None
        keep = (params.get("keepdates") or "false").lower()
        if keep not in ("true", "false"):
            raise bad_request("keepdates must be true or false")
        study, _ = await _instances(request, audit, principal)
        async with hub.database.connection() as connection:
            refused = await burned_in(connection, study.study_uid, organization)
        if refused:
            raise FhirError(
                409,
                "business-rule",
                f"{len(refused)} instance(s) of study {study.study_uid} declare burned-in "
                f"annotation (BurnedInAnnotation YES), e.g. {refused[0]}: identifying text in "
                "the pixels cannot be removed, so the study is not exported",
            )

    async def parts() -> AsyncIterator[OutgoingPart]:
        async for _name, data in deidentified_study(
            hub, study.study_uid, pseudonym=pseudonym, keep_dates=keep == "true"
        ):
            yield OutgoingPart(DICOM, data)

    boundary = new_boundary()
    return StreamingResponse(
        write_parts(parts(), boundary), media_type=multipart_type(DICOM, boundary)
    )


# -- STOW-RS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A part that was not stored: its UIDs when readable, DICOM status, and why."""

    number: int
    sop_class_uid: str | None
    sop_instance_uid: str | None
    status: int
    reason: str


def _peek(source: BinaryIO) -> tuple[str | None, str | None, str | None]:
    """SOP Class, SOP Instance and Study Instance UIDs of a part, if it can be read that far
    (for a failure report, and to check the study before storing)."""
    try:
        source.seek(0)
        dataset = pydicom.dcmread(
            source,
            stop_before_pixels=True,
            force=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )
        values = (
            dataset.get("SOPClassUID"),
            dataset.get("SOPInstanceUID"),
            dataset.get("StudyInstanceUID"),
        )
        return tuple(str(v).strip() if v else None for v in values)  # type: ignore[return-value]
    except Exception:  # damaged input: the UIDs are simply unknown
        return None, None, None
    finally:
        source.seek(0)


def _stow_content_type(request: Request) -> str:
    """The boundary of a multipart/related STOW body ('' for a single application/dicom
    body); 415 for anything else."""
    text = request.headers.get("content-type", "")
    expected = 'send multipart/related; type="application/dicom" (one instance per part)'
    if not text:
        raise FhirError(415, "not-supported", f"the request has no Content-Type; {expected}")
    try:
        media = parse_media_type(text)
    except MultipartError as error:
        raise FhirError(415, "not-supported", f"malformed Content-Type: {error}") from None
    if media.type == DICOM:
        return ""
    if media.type != "multipart/related":
        raise FhirError(
            415, "not-supported", f"unsupported content type {media.type!r}; {expected}"
        )
    part_type = (media.param("type") or DICOM).lower()
    if part_type != DICOM:
        raise FhirError(
            415,
            "not-supported",
            f"parts of type {part_type!r} are not accepted (metadata with bulk data is not "
            f"offered); {expected}",
        )
    boundary = media.param("boundary")
    if not boundary:
        raise bad_request("the multipart/related Content-Type has no boundary parameter")
    return boundary


async def _single_part(request: Request) -> AsyncIterator[Part]:
    """A body that is one application/dicom instance, spooled like a multipart part."""
    file = spool()
    size = 0
    try:
        async for chunk in request.stream():
            file.write(chunk)
            size += len(chunk)
    except BaseException:
        file.close()
        raise
    file.seek(0)
    yield Part(1, {"content-type": DICOM}, file, size)


async def store_instances(request: Request) -> Response:
    """STOW-RS: each part stored through the imaging service (a few at a time), then the
    studies' ImagingStudy written; 200 all stored, 202 some, 409 none (PS3.18 §10.5.3)."""
    principal = await authenticate(request)
    hub = get_hub(request)
    async with audited(request, principal, "dicomweb:store", "C") as audit:
        policy.require(principal, "ImagingStudy", scopes.CREATE)
        if principal.kind != ClientKind.HOSPITAL:
            raise forbidden(
                f"a {principal.kind} client may not store images; a hospital client stores its own"
            )
        if _accept(request) is not None:
            _require_json(request)
        url_study = _uid(request, "study", "StudyInstanceUID")
        boundary = _stow_content_type(request)
        service = imaging_service(hub)
        sender = Sender(
            organization=principal.organization, name=principal.client_id, channel="stow"
        )
        parts = read_parts(request.stream(), boundary) if boundary else _single_part(request)
        outcomes, cut_short = await _receive_parts(
            parts, lambda part: _store_part(service.receive, part, sender, url_study)
        )
        if not outcomes:
            raise bad_request(f"the body holds no instance: {cut_short or 'no part'}")
        stored = [o for o in outcomes if isinstance(o, Received)]
        failed = [o for o in outcomes if isinstance(o, Failure)]
        studies = list(dict.fromkeys(r.header.study_uid for r in stored))
        if studies:
            service.schedule_sync(studies)  # ImagingStudy follows within a second
            await _note_studies(hub, audit, studies)
        status = 200 if not failed and not cut_short else (202 if stored else 409)
        audit.status = status
    base = dicomweb_base(request)
    warnings = [
        f"part {f.number}"
        + (f", SOP Instance {f.sop_instance_uid}" if f.sop_instance_uid else "")
        + f": {f.reason}"
        for f in failed
    ]
    if cut_short:
        warnings.append(
            f"the body was cut short: {cut_short}; the parts after it were not received"
        )
    if len(warnings) > MAX_WARNINGS:
        warnings = [
            *warnings[: MAX_WARNINGS - 1],
            f"... and {len(warnings) - MAX_WARNINGS + 1} more",
        ]
    return _json_response(_stow_body(base, url_study, stored, failed), status, warnings)


async def _receive_parts(
    parts: AsyncIterator[Part], handle: Callable[[Part], Awaitable[Received | Failure]]
) -> tuple[list[Received | Failure], str | None]:
    """Handle each part as it arrives, up to STOW_CONCURRENCY at once, in part order; a
    body cut short ends the list with the reason. Memory: only the parts being handled are
    held (spooled), whatever the body's size."""
    semaphore = asyncio.Semaphore(STOW_CONCURRENCY)
    tasks: list[asyncio.Task[Received | Failure]] = []
    cut_short: str | None = None

    async def run(part: Part) -> Received | Failure:
        try:
            return await handle(part)
        finally:
            part.close()
            semaphore.release()

    try:
        try:
            async for part in parts:
                await semaphore.acquire()
                tasks.append(asyncio.create_task(run(part)))
        except MultipartError as error:
            cut_short = str(error)
    except BaseException as error:
        # The body failed (too large, the client gone): parts already whole are finished
        # (their answer is lost, but nothing is left half-done); on cancellation, cancelled.
        if isinstance(error, asyncio.CancelledError):
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    results = await asyncio.gather(*tasks)
    return list(results), cut_short


async def _store_part(
    receive: Callable[[BinaryIO, Sender], Awaitable[Received]],
    part: Part,
    sender: Sender,
    url_study: str | None,
) -> Received | Failure:
    declared = part.content_type
    if declared:
        try:
            kind = parse_media_type(declared).type
        except MultipartError:
            kind = declared
        if kind != DICOM:
            sop_class, sop_instance, _ = _peek(part.file)
            return Failure(
                part.number,
                sop_class,
                sop_instance,
                CANNOT_UNDERSTAND,
                f"the part is {kind}, not application/dicom",
            )
    if url_study is not None:
        sop_class, sop_instance, study = _peek(part.file)
        if study is not None and study != url_study:
            return Failure(
                part.number,
                sop_class,
                sop_instance,
                DATASET_DOES_NOT_MATCH,
                f"the instance belongs to study {study}, not to study {url_study} of the URL",
            )
    try:
        return await receive(part.file, sender)
    except (InvalidInstance, Refused) as error:
        sop_class, sop_instance, _ = _peek(part.file)
        return Failure(part.number, sop_class, sop_instance, error.status, error.reason)
    except Exception:
        log.exception("STOW part %d could not be stored", part.number)
        sop_class, sop_instance, _ = _peek(part.file)
        return Failure(
            part.number,
            sop_class,
            sop_instance,
            PROCESSING_FAILURE,
            "the hub could not store this instance (see its log); send it again later",
        )


async def _note_studies(hub: Hub, audit: AuditScope, studies: list[str]) -> None:
    async with hub.database.connection() as connection:
        rows = await connection.fetch(
            "SELECT study_uid, organization, patient_ref, imaging_study_id FROM dicom_study"
            " WHERE study_uid = ANY($1::text[])",
            studies,
        )
    for row in rows:
        _note_study(
            audit,
            StudyRef(
                row["study_uid"], row["organization"], row["patient_ref"], row["imaging_study_id"]
            ),
        )


def _stow_body(
    base: str, url_study: str | None, stored: list[Received], failed: list[Failure]
) -> dict[str, Any]:
    """The Store Instances Response Module (PS3.18 Table I.1-1) as DICOM JSON."""
    body: dict[str, Any] = {}
    studies = {r.header.study_uid for r in stored}
    study = url_study or (next(iter(studies)) if len(studies) == 1 else None)
    if study is not None:
        body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if failed:
        body["00081198"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _ui(f.sop_class_uid),
                    "00081155": _ui(f.sop_instance_uid),
                    "00081197": {"vr": "US", "Value": [f.status]},
                }
                for f in failed
            ],
        }
    if stored:
        body["00081199"] = {
            "vr": "SQ",
            "Value": [
                {
                    "00081150": _ui(r.header.sop_class_uid),
                    "00081155": _ui(r.header.sop_instance_uid),
                    "00081190": {
                        "vr": "UR",
                        "Value": [
                            f"{base}/studies/{r.header.study_uid}/series/{r.header.series_uid}"
                            f"/instances/{r.header.sop_instance_uid}"
                        ],
                    },
                }
                for r in stored
            ],
        }
    return body


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


# -- routes ----------------------------------------------------------------------------------

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"


def routes() -> list[BaseRoute]:
    """The DICOMweb routes (mounted at /dicomweb), and WADO-URI also at /wado."""
    get = ["GET"]
    return [
        Mount(
            ROOT,
            routes=[
                Route("/studies", search_studies, methods=get),
                Route("/studies", store_instances, methods=["POST"]),
                Route("/series", search_series, methods=get),
                Route("/instances", search_instances, methods=get),
                Route(_STUDY, retrieve, methods=get),
                Route(_STUDY, store_instances, methods=["POST"]),
                Route(_STUDY + "/metadata", retrieve_metadata, methods=get),
                Route(_STUDY + "/rendered", retrieve_rendered, methods=get),
                Route(_STUDY + "/thumbnail", retrieve_thumbnail, methods=get),
                Route(_STUDY + "/deidentified", deidentified, methods=get),
                Route(_STUDY + "/series", search_series, methods=get),
                Route(_STUDY + "/instances", search_instances, methods=get),
                Route(_SERIES, retrieve, methods=get),
                Route(_SERIES + "/metadata", retrieve_metadata, methods=get),
                Route(_SERIES + "/rendered", retrieve_rendered, methods=get),
                Route(_SERIES + "/thumbnail", retrieve_thumbnail, methods=get),
                Route(_SERIES + "/instances", search_instances, methods=get),
                Route(_INSTANCE, retrieve, methods=get),
                Route(_INSTANCE + "/metadata", retrieve_metadata, methods=get),
                Route(_INSTANCE + "/rendered", retrieve_rendered, methods=get),
                Route(_INSTANCE + "/thumbnail", retrieve_thumbnail, methods=get),
                Route(_INSTANCE + "/frames/{frames}", retrieve_frames, methods=get),
                Route(_INSTANCE + "/frames/{frames}/rendered", retrieve_rendered, methods=get),
                Route("/wado", wado_uri, methods=get),
            ],
        ),
        Route("/wado", wado_uri, methods=get),
    ]
