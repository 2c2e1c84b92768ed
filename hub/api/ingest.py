"""Inbound messages over HTTP, and the operators' ingest pages as JSON.

``POST /ingest/{feed}`` takes one raw HL7 v2 message (``x-application/hl7-v2+er7``,
``application/hl7-v2`` or ``text/plain``) or the hospital's own FHIR transaction Bundle
(``application/fhir+json``), from a hospital client of the feed's Organization, and runs it
through the same pipeline as MLLP. The answer is the HL7 ACK (200 AA, 422 AE, 400 AR) or,
for a Bundle, the transaction-response Bundle / an OperationOutcome.

``/admin/feeds``, ``/admin/dead-letters``, ``/admin/code-maps/{feed}`` and
``/admin/unmapped-codes`` are for admin clients, audited like everything else.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from hub.api.dependencies import Caller, audited, get_hub
from hub.api.fhir import fhir_base
from hub.fhir.outcomes import FhirError, bad_request, forbidden
from hub.ingest.feeds import FeedConfig
from hub.ingest.ledger import ingest_statistics
from hub.ingest.service import Channel
from hub.ingest.translation import AckCode
from hub.security import policy
from hub.security.principals import ClientKind, Principal
from hub.security.scopes import CREATE, UPDATE

log = logging.getLogger(__name__)
router = APIRouter(tags=["ingest"])

HL7_MEDIA_TYPES = frozenset(
    {"x-application/hl7-v2+er7", "application/hl7-v2", "application/edi-hl7", "text/plain"}
)
FHIR_MEDIA_TYPES = frozenset({"application/fhir+json", "application/json"})
STATUS = {AckCode.ACCEPT: 200, AckCode.ERROR: 422, AckCode.REJECT: 400}
RESULT_TYPES = ("Patient", "ServiceRequest", "Specimen", "DiagnosticReport", "Observation")


@router.post("/ingest/{feed_id}")
async def ingest(feed_id: str, request: Request, principal: Caller) -> Response:
    if principal.kind not in (ClientKind.HOSPITAL, ClientKind.ADMIN):
        raise forbidden("only hospital clients send results")
    for resource_type in RESULT_TYPES:  # what a message writes: the token must allow it all
        policy.require(principal, resource_type, CREATE)
        policy.require(principal, resource_type, UPDATE)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in HL7_MEDIA_TYPES:
        format = "hl7v2"
    elif media_type in FHIR_MEDIA_TYPES:
        format = "fhir"
    else:
        raise FhirError(
            415,
            "not-supported",
            "send HL7 v2 as x-application/hl7-v2+er7 or a FHIR Bundle as application/fhir+json",
        )
    hub = get_hub(request)
    feed = await hub.ingest.feeds.get(feed_id)
    if feed is None:
        raise FhirError(404, "not-found", f"there is no feed {feed_id!r}")
    if principal.kind is ClientKind.HOSPITAL and principal.organization != feed.organization:
        raise forbidden(f"feed {feed_id!r} is not one of your organization's feeds")
    payload = await request.body()
    receipt = await hub.ingest.receive(
        payload,
        Channel.HTTP,
        format=format,
        peer=request.client.host if request.client else None,
        principal=principal,
        feed_id=feed_id,
        base=fhir_base(request),
    )
    headers = {"X-Ingest-Acknowledgement": str(receipt.code)}
    if receipt.duplicate:
        headers["X-Ingest-Duplicate"] = "true"
    if receipt.dead_letter is not None:
        headers["X-Ingest-Dead-Letter"] = str(receipt.dead_letter)
    status = STATUS[receipt.code]
    if format == "fhir":
        body = orjson.dumps(receipt.result) if receipt.result is not None else receipt.response
        return Response(body, status, headers, media_type="application/fhir+json")
    # The ACK is encoded as the message's MSH-18 said (else as the feed is): name what it is.
    charset = "utf-8" if _is_utf8(receipt.response) else feed.encoding
    return Response(
        receipt.response, status, headers, media_type=f"x-application/hl7-v2+er7; charset={charset}"
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- operators ---------------------------------------------------------------------------------


def _require_admin(principal: Principal) -> None:
    if principal.kind != ClientKind.ADMIN:
        raise forbidden("ingest administration is for admin clients")


def _feed_json(feed: FeedConfig, source: str) -> dict[str, Any]:
    return {**feed.model_dump(mode="json"), "source": source}


@router.get("/admin/feeds")
async def list_feeds(request: Request, principal: Caller) -> JSONResponse:
    _require_admin(principal)
    hub = get_hub(request)
    async with audited(request, principal, "feeds-list", "R"):
        feeds = await hub.ingest.feeds.all()
    return JSONResponse(
        {"feeds": [_feed_json(f, s) for f, s in feeds], "errors": hub.ingest.feeds.errors}
    )


@router.post("/admin/feeds", status_code=201)
async def add_feed(request: Request, principal: Caller) -> JSONResponse:
    _require_admin(principal)
    hub = get_hub(request)
    try:
        feed = FeedConfig.model_validate_json(await request.body())
    except (ValidationError, ValueError) as error:
        raise bad_request(f"invalid feed: {error}") from None
    async with audited(request, principal, "feeds-add", "C") as audit:
        audit.entities.append(f"feed/{feed.feed}")
        await hub.ingest.feeds.register(feed)
    return JSONResponse(_feed_json(feed, "database"), status_code=201)


@router.get("/admin/dead-letters")
async def list_dead_letters(
    request: Request,
    principal: Caller,
    status: str | None = Query(default="open", pattern="^(open|replayed|discarded|all)$"),
    feed: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> JSONResponse:
    _require_admin(principal)
    hub = get_hub(request)
    async with audited(request, principal, "dead-letters", "R"):
        letters = await hub.ingest.dead_letters(None if status == "all" else status, feed, limit)
    return JSONResponse({"dead_letters": [letter.summary() for letter in letters]})


@router.post("/admin/dead-letters/replay", status_code=202)
async def replay_dead_letters(
    request: Request,
    principal: Caller,
    feed: str | None = None,
    limit: int = Query(default=10_000, ge=1, le=100_000),
) -> JSONResponse:
    """Replay every open dead letter (of ``feed``) in the background, after a fix."""
    _require_admin(principal)
    hub = get_hub(request)
    async with audited(request, principal, "dead-letters-replay", "U") as audit:
        letters = await hub.ingest.dead_letters("open", feed, limit)
        ids = sorted(letter.id for letter in letters)
        audit.entities += [f"dead-letter/{i}" for i in ids]
        queued = await hub.ingest.schedule_replays(ids)
    return JSONResponse(
        {"queued": queued, "in_process": [i for i in ids if i not in set(queued)]},
        status_code=202,
    )


@router.get("/admin/dead-letters/{entry_id}")
async def show_dead_letter(entry_id: int, request: Request, principal: Caller) -> JSONResponse:
    _require_admin(principal)
    hub = get_hub(request)
    async with audited(request, principal, "dead-letter", "R") as audit:
        audit.entities.append(f"dead-letter/{entry_id}")
        try:
            letter = await hub.ingest.dead_letter(entry_id)
        except LookupError as error:
            raise FhirError(404, "not-found", str(error)) from None
    return JSONResponse(
        {
            **letter.summary(),
            "payload_base64": base64.b64encode(letter.payload).decode(),
            "payload_text": letter.text(),
        }
    )


@router.post("/admin/dead-letters/{entry_id}/replay")
async def replay_dead_letter(entry_id: int, request: Request, principal: Caller) -> JSONResponse:
    _require_admin(principal)
    hub = get_hub(request)
    async with audited(request, principal, "dead-letter-replay", "U") as audit:
        audit.entities.append(f"dead-letter/{entry_id}")
        try:
            receipt = await hub.ingest.replay(entry_id)
        except LookupError as error:
            raise FhirError(404, "not-found", str(error)) from None
        except ValueError as error:
            raise FhirError(409, "conflict", str(error)) from None
    return JSONResponse(
        {
            "id": entry_id,
            "acknowledgement": str(receipt.code),
            "accepted": receipt.accepted,
            "duplicate": receipt.duplicate,
            "resources": receipt.resources,
            "error": receipt.reason,
            "location": receipt.location,
        }
    )


@router.post("/admin/dead-letters/{entry_id}/discard")
async def discard_dead_letter(entry_id: int, request: Request, principal: Caller) -> JSONResponse:
    _require_admin(principal)
    hub = get_hub(request)
    async with audited(request, principal, "dead-letter-discard", "D") as audit:
        audit.entities.append(f"dead-letter/{entry_id}")
        try:
            await hub.ingest.discard(entry_id)
        except LookupError as error:
            raise FhirError(404, "not-found", str(error)) from None
    return JSONResponse({"id": entry_id, "status": "discarded"})


@router.get("/admin/code-maps/{feed_id}")
async def get_code_map(feed_id: str, request: Request, principal: Caller) -> JSONResponse:
    _require_admin(principal)
    hub = get_hub(request)
    async with audited(request, principal, "code-map", "R"):
        try:
            resource = await hub.ingest.export_concept_map(feed_id)
        except LookupError as error:
            raise FhirError(404, "not-found", str(error)) from None
    return JSONResponse(resource, media_type="application/fhir+json")


@router.put("/admin/code-maps/{feed_id}")
async def put_code_map(feed_id: str, request: Request, principal: Caller) -> JSONResponse:
    """Add or change mappings from a ConceptMap; results stored with those codes unmapped
    are back-filled in the background."""
    _require_admin(principal)
    hub = get_hub(request)
    try:
        resource = orjson.loads(await request.body())
    except orjson.JSONDecodeError as error:
        raise bad_request(f"the body is not JSON: {error}") from None
    if not isinstance(resource, dict):
        raise bad_request("the body must be a ConceptMap")
    async with audited(request, principal, "code-map-update", "U") as audit:
        audit.entities.append(f"code-map/{feed_id}")
        try:
            changed = await hub.ingest.import_concept_map(feed_id, resource, principal.client_id)
        except LookupError as error:
            raise FhirError(404, "not-found", str(error)) from None
        except ValueError as error:
            raise FhirError(422, "invalid", str(error)) from None
        feed = await hub.ingest.feed(feed_id)
        scheduled = await hub.ingest.schedule_backfill(feed.local_code_system, changed)
    return JSONResponse({"changed": changed, "backfill": scheduled})


@router.get("/admin/unmapped-codes")
async def unmapped_codes(
    request: Request, principal: Caller, organization: str | None = None
) -> JSONResponse:
    _require_admin(principal)
    hub = get_hub(request)
    async with audited(request, principal, "unmapped-codes", "R"):
        rows = await hub.ingest.unmapped(organization)
    return JSONResponse({"unmapped": rows})


@router.get("/admin/ingest-statistics")
async def statistics(
    request: Request,
    principal: Caller,
    days: int = Query(default=7, ge=1, le=366),
    feed: str | None = None,
) -> JSONResponse:
    """Messages, resources, errors and dead letters per feed and day (refreshed every few
    minutes by the worker's ``yijian.statistics``)."""
    _require_admin(principal)
    hub = get_hub(request)
    async with (
        audited(request, principal, "ingest-statistics", "R"),
        hub.database.connection() as conn,
    ):
        rows = await ingest_statistics(conn, days, feed)
    return JSONResponse({"statistics": rows})
