"""Mutual recognition over HTTP: ``Patient/$reusable-results``, reminders and decisions,
statistics, the link a CDS card opens, and the catalogue for admins.

Adapters only: requests become ``CheckQuery``/decisions for ``RecognitionService``, and its
verdicts become FHIR Parameters or JSON. The rules live in ``hub.recognition``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, Field
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

import fhir_profiles
from hub.access.service import Established
from hub.api.dependencies import Caller, audited, authenticate, get_hub
from hub.api.fhir import fhir_base, pretty, query_pairs, read_json, redacted_query
from hub.api.responses import fhir_response
from hub.fhir.datetimes import DateFormatError, parse_range
from hub.fhir.outcomes import FhirError, bad_request, forbidden
from hub.recognition.catalogue import ITEM_SYSTEM
from hub.recognition.repository import RecognitionRepository
from hub.recognition.rules import RequestedCode, Verdict
from hub.recognition.service import Check, CheckQuery, ReminderContext
from hub.recognition.statistics import StatisticsQuery, as_csv, recognition_statistics
from hub.security import policy
from hub.security.principals import ClientKind, Principal
from hub.security.tokens import InvalidToken

PREFIX = "/fhir"
OUTCOME_SYSTEM = "https://yijian-hub.org/fhir/CodeSystem/recognition-outcome"
LINK_PURPOSE = "recognition-open"
LINK_LIFETIME_SECONDS = 7 * 24 * 3600
MAX_CODES = 100

# -- FHIR: Patient/$reusable-results ----------------------------------------------------------


def ordering_organization(principal: Principal, requested: str | None) -> str:
    """The ordering institution: the caller's own, unless an admin names another."""
    if requested is None or requested.removeprefix("Organization/") == principal.organization:
        return principal.organization
    if principal.kind != ClientKind.ADMIN:
        raise forbidden("a client checks reuse only for its own organization")
    return requested.removeprefix("Organization/")


def _text(value: Any, what: str) -> str:
    """A parameter value as text: a string without NUL characters (400 otherwise)."""
    if not isinstance(value, str) or "\x00" in value:
        raise bad_request(f"{what} must be text (without NUL characters)")
    return value


def parse_code(text: str) -> RequestedCode:
    """``system|code``, ``|code`` or a bare catalogue item id."""
    system, bar, code = _text(text, "code").partition("|")
    if not bar:
        system, code = ITEM_SYSTEM, text
    if not code.strip():
        raise bad_request(f"code {text!r} has no code")
    return RequestedCode(system.strip() or None, code.strip())


def parse_identifier(text: str) -> tuple[str, str]:
    system, bar, value = _text(text, "identifier").partition("|")
    if not bar or not system or not value:
        raise bad_request("identifier must be system|value")
    return system, value


def _parameters_input(
    body: dict[str, Any], extra: frozenset[str] = frozenset()
) -> list[tuple[str, Any]]:
    """The operation's input parameters; ``extra`` names further valueString parameters."""
    if body.get("resourceType") != "Parameters":
        raise bad_request("this operation takes a Parameters resource")
    pairs: list[tuple[str, Any]] = []
    for parameter in body.get("parameter") or []:
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise bad_request("each Parameters.parameter needs a name")
        name = parameter["name"]
        if name == "code":
            if isinstance(parameter.get("valueCoding"), dict):
                coding = parameter["valueCoding"]
                system = coding.get("system")
                code = RequestedCode(
                    _text(system, "code valueCoding.system") if system is not None else None,
                    _text(coding.get("code") or "", "code valueCoding.code"),
                )
                if not code.code:
                    raise bad_request("code valueCoding has no code")
                pairs.append(("code", code))
            elif isinstance(parameter.get("valueCode"), str):
                pairs.append(("code", parse_code(parameter["valueCode"])))
            else:
                raise bad_request("code must be a valueCoding (or a catalogue item valueCode)")
        elif name == "identifier":
            identifier = parameter.get("valueIdentifier")
            if not isinstance(identifier, dict):
                raise bad_request("identifier must be a valueIdentifier")
            pairs.append(
                (
                    "identifier",
                    (
                        _text(identifier.get("system") or "", "identifier system"),
                        _text(identifier.get("value") or "", "identifier value"),
                    ),
                )
            )
        elif name in ("patient", "organization"):
            value = parameter.get("valueReference")
            reference = value.get("reference") if isinstance(value, dict) else None
            pairs.append((name, _text(reference, f"{name} valueReference.reference")))
        elif name == "date":
            value = parameter.get("valueDateTime") or parameter.get("valueDate")
            pairs.append(("date", _text(value, "date")))
        elif name in extra:
            pairs.append((name, _text(parameter.get("valueString"), f"{name} valueString")))
        else:
            raise bad_request(f"unknown parameter {name!r} for $reusable-results")
    return pairs


async def reusable_results(request: Request) -> Response:
    """``[base]/Patient/$reusable-results`` and ``[base]/Patient/[id]/$reusable-results``:
    a query (nothing is recorded)."""
    principal = await authenticate(request)
    policy.require_recognition(principal, "check")
    hub = get_hub(request)
    pairs: list[tuple[str, Any]] = []
    for key, value in query_pairs(request):
        if key == "code":
            pairs += [("code", parse_code(v)) for v in value.split(",") if v]
        elif key == "identifier":
            pairs.append(("identifier", parse_identifier(value)))
        elif key in ("patient", "organization", "date"):
            pairs.append((key, _text(value, key)))
        else:
            raise bad_request(f"unknown parameter {key!r} for $reusable-results")
    if request.method == "POST":
        pairs += _parameters_input(await read_json(request))
    if "patient_id" in request.path_params:
        pairs.append(("patient", _text(request.path_params["patient_id"], "the patient id")))
    query = _check_query(hub, principal, pairs)
    audit_query = redacted_query(
        hub, [*query_pairs(request), *[("identifier", "…")] * len(query.identifiers)]
    )
    async with (
        audited(request, principal, "operation:reusable-results", "E", audit_query) as audit,
        hub.database.connection(generic_plans=True) as connection,
    ):
        check = await hub.recognition.check(RecognitionRepository(connection), query)
        audit.patients |= {f"Patient/{p}" for p in check.person.patients}
        if not check.found:
            raise FhirError(404, "not-found", "no patient with that id or identifier")
        # Checking before an order is ordering for this patient: a purpose of use.
        if await hub.records.access.order_placed(
            connection, principal, check.person.patients, "reusable-results"
        ):
            audit.access = Established("ordering")
        audit.entities += [
            v.result.primary.reference for v in check.verdicts if v.reusable and v.result
        ]
    return fhir_response(check_parameters(check, fhir_base(request)), pretty=pretty(request))


def _check_query(hub: Any, principal: Principal, pairs: list[tuple[str, Any]]) -> CheckQuery:
    values: dict[str, list[Any]] = {}
    for key, value in pairs:
        values.setdefault(key, []).append(value)
    patients = [p.removeprefix("Patient/") for p in values.get("patient", [])]
    identifiers = [i for i in values.get("identifier", []) if i[0] and i[1]]
    codes = values.get("code", [])
    if not patients and not identifiers:
        raise bad_request("name the patient: Patient/[id]/$reusable-results, patient or identifier")
    if not codes:
        raise bad_request("give at least one code (what is about to be ordered)")
    if len(codes) > MAX_CODES:
        raise bad_request(f"at most {MAX_CODES} codes per check")
    organizations = values.get("organization", [])
    at = _instant(values["date"][0], hub.recognition.zone) if values.get("date") else None
    return CheckQuery(
        codes=codes,
        organization=ordering_organization(principal, organizations[0] if organizations else None),
        patient_ids=patients,
        identifiers=identifiers,
        at=at,
    )


def _instant(text: str, zone: Any) -> datetime:
    try:
        return parse_range(str(text), zone)[0]
    except (DateFormatError, ValueError):
        raise bad_request(f"date {text!r} is not a FHIR dateTime") from None


def check_parameters(check: Check, base: str) -> dict[str, Any]:
    """The operation's output: the hub patient, then one ``item`` per requested code."""
    parameters: list[dict[str, Any]] = []
    if check.patient:
        parameters.append(
            {"name": "patient", "valueReference": {"reference": f"Patient/{check.patient}"}}
        )
    for index, verdict in enumerate(check.verdicts):
        parameters.append(
            {"name": "item", "part": _item_parts(verdict, check.reminders.get(index))}
        )
    return {"resourceType": "Parameters", "parameter": parameters}


def _item_parts(verdict: Verdict, reminder: uuid.UUID | None) -> list[dict[str, Any]]:
    requested: dict[str, Any] = {"code": verdict.requested.code}
    if verdict.requested.system:
        requested = {"system": verdict.requested.system, **requested}
    parts: list[dict[str, Any]] = [{"name": "requested", "valueCoding": requested}]
    if verdict.item is not None:
        parts.append(
            {
                "name": "catalogueItem",
                "valueCoding": {
                    "system": ITEM_SYSTEM,
                    "code": verdict.item.id,
                    "display": f"{verdict.item.name.zh} {verdict.item.name.en}",
                },
            }
        )
    parts.append({"name": "outcome", "valueCode": str(verdict.outcome)})
    parts.append({"name": "reason", "valueString": verdict.reason})
    result = verdict.result
    if result is not None:
        if verdict.reusable and verdict.label:
            parts.append({"name": "label", "valueString": verdict.label})
        parts.append({"name": "result", "valueReference": {"reference": result.primary.reference}})
        if result.effective:
            parts.append({"name": "effective", "valueDateTime": result.effective.isoformat()})
        if result.performer:
            parts.append(
                {
                    "name": "performer",
                    "valueReference": {
                        "reference": f"Organization/{result.performer}",
                        **({"display": verdict.institution.name} if verdict.institution else {}),
                    },
                }
            )
        if verdict.valid_until:
            parts.append({"name": "validUntil", "valueDateTime": verdict.valid_until.isoformat()})
    if verdict.item is not None:
        parts.append({"name": "priceCny", "valueDecimal": verdict.item.price_cny})
    if reminder is not None:
        parts.append({"name": "reminder", "valueString": str(reminder)})
    return parts


async def operation_definition(request: Request) -> Response:
    """The hub's OperationDefinitions (``fhir_profiles/operations``), as the
    CapabilityStatement names them."""
    wanted = request.path_params["definition_id"]
    for definition in fhir_profiles.operation_definitions():
        if definition.get("id") == wanted:
            return fhir_response(definition, pretty=pretty(request))
    raise FhirError(404, "not-found", f"OperationDefinition/{wanted} is not known")


routes = [
    Route(PREFIX + "/OperationDefinition/{definition_id}", operation_definition, methods=["GET"]),
    Route(PREFIX + "/Patient/$reusable-results", reusable_results, methods=["GET", "POST"]),
    Route(
        PREFIX + "/Patient/{patient_id}/$reusable-results",
        reusable_results,
        methods=["GET", "POST"],
    ),
]

# -- reminders, decisions, statistics -----------------------------------------------------------

router = APIRouter(tags=["recognition"])


class DecisionIn(BaseModel):
    reminder: uuid.UUID = Field(description="the reminder (CDS card uuid, or from a check)")
    outcome: Literal["accepted", "declined"]
    reason: str | None = Field(
        default=None, description="decline reason code (CodeSystem recognition-decline-reason)"
    )
    reasonText: str | None = Field(default=None, max_length=2000)
    decidedBy: str | None = Field(default=None, max_length=200)


def _own_organization(principal: Principal) -> str | None:
    """Reminders a client may touch: its organization's (admins: all)."""
    return None if principal.kind == ClientKind.ADMIN else principal.organization


@router.post("/recognition/decisions", status_code=201)
async def decide(body: DecisionIn, request: Request, principal: Caller) -> JSONResponse:
    """Record a doctor's decision on a reminder: accepted, or declined with a reason."""
    policy.require_recognition(principal, "decide")
    hub = get_hub(request)
    async with (
        audited(request, principal, "recognition:decide", "U") as audit,
        hub.database.connection() as connection,
    ):
        repo = RecognitionRepository(connection)
        decision, reminder = await hub.recognition.decide(
            repo,
            body.reminder,
            outcome=body.outcome,
            reason_code=body.reason,
            reason_text=body.reasonText,
            source="api",
            decided_by=body.decidedBy or principal.name,
            client_id=principal.client_id,
            organization=_own_organization(principal),
        )
        audit.patients.add(f"Patient/{reminder['patient_id']}")
        audit.entities.append(reminder["result_ref"])
    return JSONResponse(decision, status_code=201)


@router.post("/recognition/reminders/{reminder_id}/view")
async def viewed(reminder_id: uuid.UUID, request: Request, principal: Caller) -> JSONResponse:
    """Record that the doctor opened the reminded result (the access rate counts these)."""
    policy.require_recognition(principal, "decide")
    hub = get_hub(request)
    async with (
        audited(request, principal, "recognition:view", "U") as audit,
        hub.database.connection() as connection,
    ):
        repo = RecognitionRepository(connection)
        reminder = await hub.recognition.reminder(repo, reminder_id, _own_organization(principal))
        await repo.mark_viewed(reminder_id, datetime.now(UTC))
        audit.patients.add(f"Patient/{reminder['patient_id']}")
    return JSONResponse({"reminder": str(reminder_id), "viewed": True})


@router.get("/recognition/reminders/{reminder_id}")
async def reminder(reminder_id: uuid.UUID, request: Request, principal: Caller) -> JSONResponse:
    """A reminder with its decisions (newest last)."""
    policy.require_recognition(principal, "decide")
    hub = get_hub(request)
    async with (
        audited(request, principal, "recognition:read", "R") as audit,
        hub.database.connection() as connection,
    ):
        repo = RecognitionRepository(connection)
        found = await hub.recognition.reminder(repo, reminder_id, _own_organization(principal))
        decisions = await repo.decisions(reminder_id)
        audit.patients.add(f"Patient/{found['patient_id']}")
    return JSONResponse(_jsonable({**found, "decisions": decisions}))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "as_tuple"):  # Decimal
        return float(value)
    return value


def open_link(hub: Any, base: str, reminder_id: uuid.UUID) -> str:
    """The URL a CDS card's link opens: signed, so an EHR's browser needs no bearer token."""
    token = hub.tokens.sign_link(str(reminder_id), LINK_PURPOSE, LINK_LIFETIME_SECONDS)
    return f"{base}/recognition/open/{token}"


_OPENING_PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>正在打开结果 Opening the result</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body onload="document.forms[0].submit()">
<form method="post"><p>正在打开互认结果… Opening the result…</p>
<noscript><button type="submit">打开 Open</button></noscript></form></body></html>
"""


def _link_reminder(hub: Any, token: str) -> uuid.UUID:
    try:
        return uuid.UUID(hub.tokens.verify_link(token, LINK_PURPOSE))
    except (InvalidToken, ValueError) as error:
        raise FhirError(401, "login", str(error)) from None


@router.get("/recognition/open/{token}", include_in_schema=False)
async def open_page(token: str, request: Request) -> Response:
    """The card's link: a page that opens the result with a POST, so that link previewers
    and scanners (which only GET) do not count as the doctor viewing it."""
    _link_reminder(get_hub(request), token)
    return HTMLResponse(_OPENING_PAGE, headers={"Cache-Control": "no-store"})


@router.post("/recognition/open/{token}", include_in_schema=False)
async def open_result(token: str, request: Request) -> Response:
    """Count the view, then send the browser to the workstation on exactly that result."""
    hub = get_hub(request)
    reminder_id = _link_reminder(hub, token)
    async with (
        audited(request, None, "recognition:open", "R") as audit,
        hub.database.connection(generic_plans=True) as connection,
    ):
        repo = RecognitionRepository(connection)
        found = await repo.reminder(reminder_id)
        if found is None:
            raise FhirError(404, "not-found", "the reminder no longer exists")
        await repo.mark_viewed(reminder_id, datetime.now(UTC))
        audit.patients.add(f"Patient/{found['patient_id']}")
        audit.entities.append(found["result_ref"])
    return RedirectResponse(
        f"/results/{found['result_ref']}?reminder={reminder_id}", status_code=303
    )


@router.get("/recognition/statistics", response_model=None)
async def statistics(
    request: Request,
    principal: Caller,
    group: str = Query(
        "",
        description="comma-separated: organization, department, "
        "practitioner, item, result_organization, source",
    ),
    period: str | None = Query(None, description="day, week, month, quarter or year"),
    start: str | None = Query(None, alias="from", description="from this date (inclusive)"),
    end: str | None = Query(None, alias="to", description="until this date (exclusive)"),
    organization: str | None = Query(None, description="only reminders shown here"),
    format: str = Query("json", description="json or csv"),
) -> Response:
    """Reminders shown, viewed, accepted, declined by reason, overlooked, tests avoided and
    CNY saved, with the access and recognition rates."""
    policy.require_recognition(principal, "statistics")
    hub = get_hub(request)
    own = _own_organization(principal)
    if own is not None and organization not in (None, own):
        raise forbidden("a hospital client sees its own organization's statistics")
    zone = hub.recognition.zone
    try:
        query = StatisticsQuery(
            group_by=[g.strip() for g in group.split(",") if g.strip()],
            period=period,
            start=_instant(start, zone) if start else None,
            end=_instant(end, zone) if end else None,
            organization=own or organization,
            zone=hub.settings.default_timezone,
        )
    except ValueError as error:
        raise bad_request(str(error)) from None
    if format not in ("json", "csv"):
        raise bad_request("format must be json or csv")
    reasons = list(hub.recognition.decline_reasons)
    async with (
        audited(request, principal, "recognition:statistics", "R"),
        hub.database.connection() as connection,
    ):
        rows = await recognition_statistics(connection, query, reasons)
    if format == "csv":
        return Response(
            as_csv(rows, query.group_by, bool(query.period), reasons),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="recognition-statistics.csv"'},
        )
    return JSONResponse({"group": list(query.group_by), "period": query.period, "rows": rows})


@router.post("/recognition/checks")
async def recorded_check(request: Request, principal: Caller) -> Response:
    """The reuse check as the workstation runs it: the ``$reusable-results`` Parameters in
    (plus ``department`` and ``practitioner`` valueStrings), the same Parameters out, and a
    reminder recorded for each reusable result (its id in the item's ``reminder`` part)."""
    policy.require_recognition(principal, "check")
    hub = get_hub(request)
    pairs = _parameters_input(await read_json(request), frozenset({"department", "practitioner"}))
    extra = {k: v for k, v in pairs if k in ("department", "practitioner")}
    query = _check_query(hub, principal, [(k, v) for k, v in pairs if k not in extra])
    async with (
        audited(request, principal, "recognition:check", "E") as audit,
        hub.database.connection(generic_plans=True) as connection,
        connection.transaction(),
    ):
        repo = RecognitionRepository(connection)
        check = await hub.recognition.check(repo, query)
        audit.patients |= {f"Patient/{p}" for p in check.person.patients}
        if not check.found:
            raise FhirError(404, "not-found", "no patient with that id or identifier")
        # As $reusable-results: checking before an order is ordering for the patient.
        if await hub.records.access.order_placed(
            connection, principal, check.person.patients, "recognition-checks"
        ):
            audit.access = Established("ordering")
        await hub.recognition.record(
            repo,
            check,
            ReminderContext(
                "api",
                client_id=principal.client_id,
                practitioner=(extra.get("practitioner") or principal.name)[:200],
                department=(extra.get("department") or "")[:200] or None,
            ),
        )
        audit.entities += [
            v.result.primary.reference for v in check.verdicts if v.reusable and v.result
        ]
    return fhir_response(check_parameters(check, fhir_base(request)))


# -- the catalogue (admins) ----------------------------------------------------------------------


def _require_catalogue(principal: Principal) -> None:
    policy.require_recognition(principal, "catalogue")


def _catalogue_json(catalogue: Any) -> dict[str, Any]:
    return {
        "version": catalogue.version,
        "document": catalogue.document.model_dump(mode="json", exclude_none=True),
    }


@router.get("/admin/catalogue")
async def get_catalogue(request: Request, principal: Caller) -> JSONResponse:
    """The catalogue in force, with its version number."""
    policy.require_recognition(principal, "check")
    hub = get_hub(request)
    async with hub.database.connection() as connection:
        catalogue = await hub.recognition.catalogue(RecognitionRepository(connection))
    return JSONResponse(_catalogue_json(catalogue))


@router.get("/admin/catalogue/versions")
async def catalogue_versions(request: Request, principal: Caller) -> JSONResponse:
    _require_catalogue(principal)
    hub = get_hub(request)
    async with hub.database.connection() as connection:
        versions = await RecognitionRepository(connection).catalogue_versions()
    return JSONResponse(_jsonable(versions))


@router.get("/admin/catalogue/versions/{version}")
async def catalogue_version(
    request: Request, principal: Caller, version: int = Path(ge=1, le=2**31 - 1)
) -> JSONResponse:
    _require_catalogue(principal)
    hub = get_hub(request)
    async with hub.database.connection() as connection:
        found = await RecognitionRepository(connection).catalogue(version)
    if found is None:
        raise FhirError(404, "not-found", f"catalogue version {version} does not exist")
    return JSONResponse({"version": found[0], "document": found[1]})


async def _edit(request: Request, principal: Principal, action: str, change: Any) -> JSONResponse:
    _require_catalogue(principal)
    hub = get_hub(request)
    note = request.query_params.get("note")
    async with (
        audited(request, principal, f"catalogue:{action}", "U") as audit,
        hub.database.connection() as connection,
        connection.transaction(),
    ):
        catalogue = await change(hub.recognition, RecognitionRepository(connection), note)
        audit.entities.append(f"catalogue/{catalogue.version}")
    return JSONResponse(_catalogue_json(catalogue))


@router.put("/admin/catalogue")
async def put_catalogue(request: Request, principal: Caller) -> JSONResponse:
    """Replace the whole catalogue (a new version)."""
    body = await read_json(request)
    raw = body.get("document", body)
    actor = principal.client_id
    return await _edit(
        request, principal, "replace", lambda s, r, n: s.save_catalogue(r, raw, actor, n)
    )


@router.get("/admin/catalogue/items/{item_id}")
async def get_item(item_id: str, request: Request, principal: Caller) -> JSONResponse:
    policy.require_recognition(principal, "check")
    hub = get_hub(request)
    async with hub.database.connection() as connection:
        catalogue = await hub.recognition.catalogue(RecognitionRepository(connection))
    item = catalogue.items.get(item_id)
    if item is None:
        raise FhirError(404, "not-found", f"catalogue item {item_id} does not exist")
    return JSONResponse(item.model_dump(mode="json", exclude_none=True))


@router.put("/admin/catalogue/items/{item_id}")
async def put_item(item_id: str, request: Request, principal: Caller) -> JSONResponse:
    """Add or change one item (a new catalogue version)."""
    body = await read_json(request)
    if body.get("id", item_id) != item_id:
        raise bad_request(f"the item's id {body.get('id')!r} is not {item_id!r}")
    raw = {**body, "id": item_id}
    actor = principal.client_id
    return await _edit(request, principal, "put-item", lambda s, r, n: s.put_item(r, raw, actor, n))


@router.delete("/admin/catalogue/items/{item_id}")
async def delete_item(item_id: str, request: Request, principal: Caller) -> JSONResponse:
    """Withdraw one item from recognition (a new catalogue version)."""
    actor = principal.client_id
    return await _edit(
        request, principal, "remove-item", lambda s, r, n: s.remove_item(r, item_id, actor, n)
    )
