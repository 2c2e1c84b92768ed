"""Patient identity over HTTP: ``Patient/$match`` and ``Patient/$ihe-pix`` (FHIR), and the
operators' link decisions under ``/admin/identity`` (JSON, admin clients).

Adapters only: the rules are in ``hub.identity.service`` and ``hub.security.policy``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hub.api.dependencies import Caller, audited, authenticate, get_hub
from hub.api.fhir import PREFIX, fhir_base, pretty, query_pairs, read_json, redacted_query
from hub.api.responses import fhir_response
from hub.fhir.outcomes import bad_request, operation_outcome
from hub.identity.service import MATCH_GRADE
from hub.records.rendering import bundle, entry
from hub.records.unit_of_work import unit_of_work
from hub.security import policy
from hub.security.principals import Principal

DEFAULT_MATCH_COUNT = 10
MAX_MATCH_COUNT = 100

# -- FHIR operations ------------------------------------------------------------------------------


def _match_input(body: dict[str, Any]) -> tuple[dict[str, Any], bool, int]:
    """``resource``, ``onlyCertainMatches`` and ``count`` from Parameters (or a bare Patient)."""
    if body.get("resourceType") == "Patient":
        return body, False, DEFAULT_MATCH_COUNT
    if body.get("resourceType") != "Parameters":
        raise bad_request("$match takes a Parameters resource (or a Patient)")
    resource: dict[str, Any] | None = None
    only_certain, count = False, DEFAULT_MATCH_COUNT
    for parameter in body.get("parameter") or []:
        if not isinstance(parameter, dict):
            raise bad_request("each Parameters.parameter must be an object")
        name = parameter.get("name")
        if name == "resource":
            resource = parameter.get("resource")
        elif name == "onlyCertainMatches":
            if not isinstance(parameter.get("valueBoolean"), bool):
                raise bad_request("onlyCertainMatches must be a valueBoolean")
            only_certain = parameter["valueBoolean"]
        elif name == "count":
            value = parameter.get("valueInteger")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise bad_request("count must be a positive valueInteger")
            count = min(value, MAX_MATCH_COUNT)
    if not isinstance(resource, dict):
        raise bad_request("$match needs a 'resource' parameter holding a Patient")
    return resource, only_certain, count


async def patient_match(request: Request) -> Response:
    principal = await authenticate(request)
    policy.require_identity(principal, "find")
    hub = get_hub(request)
    async with audited(request, principal, "operation:match", "E") as audit:
        resource, only_certain, count = _match_input(await read_json(request))
        async with unit_of_work(hub.database, transaction=False) as uow:
            results = await hub.identity.match(uow, resource, count)
            issues = []
            if only_certain:
                results = [r for r in results if r.grade == "certain"]
                if len(results) > 1:  # FHIR: no results when certainty is not unique
                    issues.append("several records match with certainty; none is returned")
                    results = []
            entries = []
            base = fhir_base(request)
            for result in results:
                stored = await uow.resources.current("Patient", result.master_id)
                if stored is None or stored.deleted:
                    continue
                hub.records.note(uow, stored)
                item = entry(hub.records.present(principal, stored), base, "match")
                item["search"]["score"] = result.probability
                item["search"]["extension"] = [{"url": MATCH_GRADE, "valueCode": result.grade}]
                entries.append(item)
        audit.capture(uow)
    for text in issues:
        entries.append(
            {
                "resource": operation_outcome(
                    [{"severity": "information", "code": "multiple-matches", "diagnostics": text}]
                ),
                "search": {"mode": "outcome"},
            }
        )
    return fhir_response(
        bundle("searchset", entries, [], len(entries) - len(issues)), pretty=pretty(request)
    )


async def patient_ihe_pix(request: Request) -> Response:
    """PIXm Get Corresponding Identifiers (ITI-83)."""
    principal = await authenticate(request)
    policy.require_identity(principal, "find")
    hub = get_hub(request)
    pairs = query_pairs(request)
    if request.method == "POST":  # the Parameters form of PIXm
        pairs += _pix_parameters(await read_json(request))
    sources = [v for k, v in pairs if k == "sourceIdentifier"]
    targets = [t for k, v in pairs if k == "targetSystem" for t in v.split(",") if t]
    if len(sources) != 1:
        raise bad_request("$ihe-pix needs exactly one sourceIdentifier=system|value")
    query = redacted_query(hub, [("sourceIdentifier", sources[0])])
    async with (
        audited(request, principal, "operation:ihe-pix", "E", query) as audit,
        unit_of_work(hub.database, transaction=False) as uow,
    ):
        patient_ids, identifiers = await hub.identity.cross_reference(uow, sources[0], targets)
        audit.patients |= {f"Patient/{p}" for p in patient_ids}
    full = policy.identifiers_in_full(principal)
    systems = hub.identity.systems
    parameters: list[dict[str, Any]] = [
        {
            "name": "targetIdentifier",
            "valueIdentifier": {
                "system": i["system"],
                "value": i["value"] if full else systems.mask(i["system"], i["value"]),
            },
        }
        for i in identifiers
    ]
    base = fhir_base(request)
    parameters += [
        {"name": "targetId", "valueReference": {"reference": f"{base}/Patient/{p}"}}
        for p in patient_ids
    ]
    return fhir_response(
        {"resourceType": "Parameters", "parameter": parameters}, pretty=pretty(request)
    )


def _pix_parameters(body: dict[str, Any]) -> list[tuple[str, str]]:
    """``sourceIdentifier`` (valueIdentifier) and ``targetSystem`` (valueUri) of a POSTed
    Parameters resource, as the query form's pairs."""
    if body.get("resourceType") != "Parameters":
        raise bad_request("POST $ihe-pix takes a Parameters resource")
    pairs = []
    for parameter in body.get("parameter") or []:
        if not isinstance(parameter, dict):
            raise bad_request("each Parameters.parameter must be an object")
        if parameter.get("name") == "sourceIdentifier":
            identifier = parameter.get("valueIdentifier")
            if not isinstance(identifier, dict):
                raise bad_request("sourceIdentifier must be a valueIdentifier")
            system, value = identifier.get("system", ""), identifier.get("value", "")
            pairs.append(("sourceIdentifier", f"{system}|{value}"))
        elif parameter.get("name") == "targetSystem":
            if not isinstance(parameter.get("valueUri"), str):
                raise bad_request("targetSystem must be a valueUri")
            pairs.append(("targetSystem", parameter["valueUri"]))
    return pairs


routes = [
    Route(PREFIX + "/Patient/$match", patient_match, methods=["POST"]),
    Route(PREFIX + "/Patient/$ihe-pix", patient_ihe_pix, methods=["GET", "POST"]),
]

# -- operators: /admin/identity -------------------------------------------------------------------

router = APIRouter(prefix="/admin/identity", tags=["identity"])


def _patient_id(reference: str) -> str:
    """``Patient/x`` or ``x``."""
    kind, _, rest = reference.rpartition("/")
    if kind not in ("", "Patient") or not rest:
        raise bad_request(f"{reference!r} is not a Patient reference")
    return rest


class LinkRequest(BaseModel):
    source: str = Field(description="the source Patient (Patient/id)")
    master: str = Field(description="the master Patient to link it to")
    reason: str | None = Field(default=None, max_length=1000)


class UnlinkRequest(BaseModel):
    source: str
    reason: str | None = Field(default=None, max_length=1000)


class MergeRequest(BaseModel):
    from_master: str = Field(alias="from", description="the master that is merged away")
    into: str = Field(description="the master that remains")
    reason: str | None = Field(default=None, max_length=1000)


class UndoRequest(BaseModel):
    event: int
    reason: str | None = Field(default=None, max_length=1000)


class DismissRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=1000)


def _patients_in(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> set[str]:
    """``Patient/id`` of every patient named in these rows, for the audit record."""
    return {f"Patient/{row[k]}" for row in rows for k in keys if row.get(k)}


def _actor(principal: Principal) -> str:
    policy.require_identity(principal, "manage")
    return f"client:{principal.client_id}"


async def _decide(request: Request, principal: Principal, interaction: str, action: Any) -> int:
    hub = get_hub(request)
    async with audited(request, principal, interaction, "U") as audit:
        async with unit_of_work(hub.database, transaction=True) as uow:
            event_id: int = await action(hub.identity, uow)
        audit.capture(uow)
    return event_id


@router.post("/link")
async def link(body: LinkRequest, request: Request, principal: Caller) -> JSONResponse:
    actor = _actor(principal)
    source, master = _patient_id(body.source), _patient_id(body.master)
    event = await _decide(
        request,
        principal,
        "identity-link",
        lambda identity, uow: identity.link(uow, source, master, actor, body.reason),
    )
    return JSONResponse({"event": event, "source": source, "master": master})


@router.post("/unlink")
async def unlink(body: UnlinkRequest, request: Request, principal: Caller) -> JSONResponse:
    actor = _actor(principal)
    source = _patient_id(body.source)
    event = await _decide(
        request,
        principal,
        "identity-unlink",
        lambda identity, uow: identity.unlink(uow, source, actor, body.reason),
    )
    return JSONResponse({"event": event, "source": source})


@router.post("/merge")
async def merge(body: MergeRequest, request: Request, principal: Caller) -> JSONResponse:
    actor = _actor(principal)
    from_id, into = _patient_id(body.from_master), _patient_id(body.into)
    event = await _decide(
        request,
        principal,
        "identity-merge",
        lambda identity, uow: identity.merge(uow, from_id, into, actor, body.reason),
    )
    return JSONResponse({"event": event, "from": from_id, "into": into})


@router.post("/undo")
async def undo(body: UndoRequest, request: Request, principal: Caller) -> JSONResponse:
    actor = _actor(principal)
    event = await _decide(
        request,
        principal,
        "identity-undo",
        lambda identity, uow: identity.undo(uow, body.event, actor, body.reason),
    )
    return JSONResponse({"event": event, "undoes": body.event})


@router.get("/events")
async def events(
    request: Request,
    principal: Caller,
    patient: str | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> JSONResponse:
    _actor(principal)
    hub = get_hub(request)
    async with (
        audited(request, principal, "identity-events", "R") as audit,
        unit_of_work(hub.database, transaction=False) as uow,
    ):
        found = await hub.identity.events(uow, _patient_id(patient) if patient else None, limit)
        audit.patients |= _patients_in(found, ("source_id", "master_id", "previous_master_id"))
    return JSONResponse(found)


@router.get("/reviews")
async def reviews(
    request: Request,
    principal: Caller,
    status: str | None = Query(default="open", pattern="^(open|linked|dismissed|superseded)$"),
    limit: int = Query(default=100, ge=1, le=1000),
    after: int = Query(default=0, ge=0),
) -> JSONResponse:
    _actor(principal)
    hub = get_hub(request)
    async with (
        audited(request, principal, "identity-reviews", "R") as audit,
        unit_of_work(hub.database, transaction=False) as uow,
    ):
        listed = [r.to_json() for r in await hub.identity.reviews(uow, status, limit, after)]
        audit.patients |= {r[k] for r in listed for k in ("source", "master")}
    return JSONResponse(listed)


@router.post("/reviews/{review_id}/dismiss")
async def dismiss(
    review_id: int, body: DismissRequest, request: Request, principal: Caller
) -> JSONResponse:
    actor = _actor(principal)
    hub = get_hub(request)
    async with (
        audited(request, principal, "identity-dismiss", "U"),
        unit_of_work(hub.database, transaction=True) as uow,
    ):
        review = await hub.identity.dismiss(uow, review_id, actor, body.reason)
    return JSONResponse(review.to_json())
