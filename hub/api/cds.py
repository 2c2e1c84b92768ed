"""CDS Hooks 2.0 at ``/cds-services``: discovery, the two reuse services, and feedback.

``exam-reuse`` answers ``order-select`` (the orders just selected) and ``exam-reuse-sign``
answers ``order-sign`` (every draft order). Each reads ``context.draftOrders`` and the patient
— the prefetched ``Patient/{{context.patientId}}`` with its identifiers, or the hub's own
Patient id — runs the reuse check as the calling EHR's organization, records a reminder per
reusable result and answers cards. ``/feedback`` records the doctor's decision on each card.

Requests carry either a hub access token of the EHR's client or a CDS Hooks JWT signed by a
key the EHR registered (``hub.security.cds_clients``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.access.service import Established
from hub.api.dependencies import audited, authenticate, get_hub
from hub.api.fhir import read_json
from hub.api.recognition import open_link
from hub.fhir.datetimes import DateFormatError, parse_range
from hub.fhir.outcomes import FhirError, bad_request
from hub.recognition.cards import (
    DECLINE_REASONS_URL,
    explanation_card,
    identity_card,
    reuse_card,
)
from hub.recognition.repository import RecognitionRepository
from hub.recognition.rules import RequestedCode
from hub.recognition.service import CheckQuery, ReminderContext
from hub.security import policy
from hub.security.cds_clients import UntrustedClient, is_hub_token
from hub.security.principals import Principal

PREFIX = "/cds-services"


def json_answer(body: Any, status_code: int = 200) -> Response:
    """JSON answers serialised with orjson: these routes are on the hot path of ordering."""
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


PREFETCH = {"patient": "Patient/{{context.patientId}}"}
SERVICES: dict[str, dict[str, Any]] = {
    "exam-reuse": {
        "hook": "order-select",
        "id": "exam-reuse",
        "title": "检查检验结果互认 Reuse of recent results",
        "description": (
            "When tests are selected, tells the doctor which of them the patient already has a "
            "recent, quality-assured result for at another hospital (HR label), shows it, and "
            "offers to remove the duplicate order. 选择医嘱时提示可互认的近期结果。"
        ),
        "prefetch": PREFETCH,
        "usageRequirements": (
            "Register the EHR as a hub client (yijian clients add --kind hospital) and call "
            "with its access token, or register the EHR's signing key (yijian clients cds-key)."
        ),
    },
    "exam-reuse-sign": {
        "hook": "order-sign",
        "id": "exam-reuse-sign",
        "title": "检查检验结果互认（签署时）Reuse check at signing",
        "description": (
            "When orders are signed, the same check over every draft order. "
            "签署医嘱时对全部待签医嘱进行互认检查。"
        ),
        "prefetch": PREFETCH,
        "usageRequirements": "As exam-reuse.",
    },
}
DEPARTMENT_EXTENSION = "org.yijian-hub.department"
MAX_CODES = 100


async def discovery(request: Request) -> Response:
    """CDS Hooks discovery (no authentication, as the DESIGN says)."""
    return json_answer({"services": list(SERVICES.values())})


def _service(service_id: str) -> dict[str, Any]:
    service = SERVICES.get(service_id)
    if service is None:
        raise FhirError(404, "not-found", f"no CDS service {service_id!r}")
    return service


def _service_url(request: Request, service_id: str, feedback: bool = False) -> str:
    hub = get_hub(request)
    base = (hub.settings.public_base_url or str(request.base_url)).rstrip("/")
    return f"{base}/cds-services/{service_id}" + ("/feedback" if feedback else "")


async def caller(request: Request, audience: str) -> Principal:
    """A hub access token, or a CDS Hooks JWT of a registered EHR (401 otherwise)."""
    hub = get_hub(request)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return await authenticate(request)
    try:
        return await authenticate(request)  # the hub's own token (verified ones are cached)
    except FhirError:
        if is_hub_token(token, hub.settings.token_issuer):
            raise
    try:
        async with hub.database.connection() as connection:
            principal = await hub.cds_clients.verify(connection, token, audience)
    except UntrustedClient as error:
        raise FhirError(
            401,
            "login",
            str(error),
            headers={"WWW-Authenticate": 'Bearer realm="yijian", error="invalid_token"'},
        ) from None
    if principal.client_id in hub.revoked:
        raise FhirError(401, "login", "the client has been revoked")
    request.state.principal = principal
    return principal


def _orders(context: dict[str, Any], hook: str) -> list[RequestedCode]:
    """Each coding of each draft ServiceRequest (of the selected ones, for order-select)."""
    bundle = context.get("draftOrders")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise bad_request("context.draftOrders must be a FHIR Bundle")
    selections = context.get("selections")
    if hook == "order-select" and (
        not isinstance(selections, list) or not all(isinstance(s, str) for s in selections)
    ):
        raise bad_request("order-select needs context.selections (a list of Type/id)")
    wanted = set(selections) if hook == "order-select" and isinstance(selections, list) else None
    codes: list[RequestedCode] = []
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise bad_request("context.draftOrders.entry must be a list")
    for position, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != "ServiceRequest":
            continue
        has_id = isinstance(resource.get("id"), str) and resource["id"]
        reference = f"ServiceRequest/{resource['id']}" if has_id else None
        if wanted is not None and reference not in wanted:
            continue
        concept: dict[str, Any] = resource["code"] if isinstance(resource.get("code"), dict) else {}
        codings = concept.get("coding") or []
        if not isinstance(codings, list):
            raise bad_request(f"draftOrders entry {position}: code.coding must be a list")
        for coding in codings:
            if not isinstance(coding, dict) or not coding.get("code"):
                continue
            system = coding.get("system")
            if system is not None and not isinstance(system, str):
                raise bad_request(f"draftOrders entry {position}: coding.system must be a string")
            display = coding.get("display") or concept.get("text")
            codes.append(
                RequestedCode(
                    system,
                    str(coding["code"]),
                    display if isinstance(display, str) else None,
                    reference or f"draft-{position}",
                )
            )
    if len(codes) > MAX_CODES:
        raise bad_request(f"at most {MAX_CODES} order codings per request")
    return codes


def _patient(
    body: dict[str, Any], context: dict[str, Any]
) -> tuple[list[str], list[tuple[str, str]]]:
    """(hub patient ids, identifiers): the prefetched Patient's identifiers if given, else
    ``context.patientId`` as the hub's own id."""
    patient_id = context.get("patientId")
    if not isinstance(patient_id, str) or not patient_id or "\x00" in patient_id:
        raise bad_request("context.patientId is required (a string)")
    prefetch = _object(body.get("prefetch"))
    prefetched = prefetch.get("patient")
    if isinstance(prefetched, dict) and prefetched.get("resourceType") == "Patient":
        listed = prefetched.get("identifier")
        identifiers = [
            (i["system"], i["value"])
            for i in (listed if isinstance(listed, list) else [])
            if isinstance(i, dict)
            and isinstance(i.get("system"), str)
            and isinstance(i.get("value"), str)
            and i["system"]
            and i["value"]
            and "\x00" not in i["system"] + i["value"]
        ]
        if identifiers:
            return [], identifiers
    return [patient_id], []


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _department(body: dict[str, Any]) -> str | None:
    extension = body.get("extension")
    if isinstance(extension, dict) and isinstance(extension.get(DEPARTMENT_EXTENSION), str):
        return str(extension[DEPARTMENT_EXTENSION])[:200]
    prefetch = _object(body.get("prefetch"))
    user = prefetch.get("user")
    if isinstance(user, dict) and user.get("resourceType") == "PractitionerRole":
        specialties = user.get("specialty")
        for specialty in specialties if isinstance(specialties, list) else []:
            if not isinstance(specialty, dict):
                continue
            codings = specialty["coding"] if isinstance(specialty.get("coding"), list) else []
            text = specialty.get("text") or next(
                (c.get("display") for c in codings if isinstance(c, dict) and c.get("display")),
                None,
            )
            if isinstance(text, str) and text:
                return text[:200]
    return None


async def call_service(request: Request) -> Response:
    service_id = request.path_params["service_id"]
    service = _service(service_id)
    principal = await caller(request, _service_url(request, service_id))
    policy.require_recognition(principal, "check")
    hub = get_hub(request)
    body = await read_json(request)
    if body.get("hook") != service["hook"]:
        raise bad_request(
            f"{service_id} answers the {service['hook']} hook, not {body.get('hook')!r}"
        )
    hook_instance = body.get("hookInstance")
    if not isinstance(hook_instance, str) or not hook_instance:
        raise bad_request("hookInstance is required")
    context = body.get("context")
    if not isinstance(context, dict):
        raise bad_request("context is required")
    codes = _orders(context, service["hook"])
    patients, identifiers = _patient(body, context)
    if not codes:
        return json_answer({"cards": []})
    # Identifiers of an EHR's own systems may fail the hub's checks: skip, do not refuse.
    usable = []
    for system, value in identifiers:
        try:
            hub.identity.index_token(system, value)
            usable.append((system, value))
        except FhirError:
            continue
    query = CheckQuery(codes, principal.organization, patients, usable)
    async with (
        audited(request, principal, f"cds:{service_id}", "E") as audit,
        hub.database.connection(generic_plans=True) as connection,
    ):
        repo = RecognitionRepository(connection)
        try:
            check = await hub.recognition.check(repo, query)
        except FhirError as error:
            if error.status != 409:
                raise
            return json_answer({"cards": [identity_card(error.diagnostics)]})
        audit.patients |= {f"Patient/{p}" for p in check.person.patients}
        # Ordering for this patient is a purpose of use: the EHR may now read the record.
        if await hub.records.access.order_placed(
            connection, principal, check.person.patients, f"cds:{service_id}"
        ):
            audit.access = Established("ordering")
        if not check.found:
            return json_answer({"cards": []})
        user = context.get("userId") if isinstance(context.get("userId"), str) else None
        await hub.recognition.record(
            repo,
            check,
            ReminderContext(
                "cds",
                client_id=principal.client_id,
                practitioner=user,
                department=_department(body),
                hook=service["hook"],
                hook_instance=hook_instance,
            ),
        )
        audit.entities += [
            v.result.primary.reference for v in check.verdicts if v.reusable and v.result
        ]
    base = (hub.settings.public_base_url or str(request.base_url)).rstrip("/")
    zone = hub.recognition.zone
    cards = [
        reuse_card(
            verdict,
            str(check.reminders[index]),
            check.contents,
            link=open_link(hub, base, check.reminders[index]),
            decline_reasons=hub.recognition.decline_reasons,
            source_url=base + "/",
            zone=zone,
        )
        for index, verdict in enumerate(check.verdicts)
        if index in check.reminders
    ]
    explanation = explanation_card(check.verdicts, str(uuid.uuid4()), base + "/", zone)
    if explanation is not None:
        cards.append(explanation)
    return json_answer({"cards": cards})


async def feedback(request: Request) -> Response:
    """CDS Hooks feedback. ``accepted`` records an acceptance; ``overridden`` with an
    ``overrideReason`` from the decline-reason CodeSystem records a decline ("other" needs a
    ``userComment``). Each item stands alone: feedback on a card that is not a reminder of
    this organization (the explanation card), or an override without a usable reason (a card
    dismissed), records nothing and is listed in ``skipped`` with why."""
    service_id = request.path_params["service_id"]
    _service(service_id)
    principal = await caller(request, _service_url(request, service_id, feedback=True))
    policy.require_recognition(principal, "decide")
    hub = get_hub(request)
    body = await read_json(request)
    items = body.get("feedback")
    if not isinstance(items, list) or not items:
        raise bad_request("feedback must be a non-empty list")
    if len(items) > MAX_CODES:
        raise bad_request(f"at most {MAX_CODES} feedback items per request")
    service = hub.recognition
    recorded = 0
    skipped: list[dict[str, str]] = []
    async with (
        audited(request, principal, f"cds:{service_id}:feedback", "U") as audit,
        hub.database.connection() as connection,
    ):
        repo = RecognitionRepository(connection)
        for index, item in enumerate(items):
            card = item.get("card") if isinstance(item, dict) else None
            try:
                card_id, outcome, code, text, at = _decision(item, index)
                code, text = service.check_decision(outcome, code, text)
                reminder = await service.reminder(repo, card_id, principal.organization)
            except FhirError as error:
                skipped.append({"card": str(card), "reason": error.diagnostics})
                continue
            await repo.add_decision(
                card_id,
                at=at,
                source="cds-feedback",
                outcome=outcome,
                reason_code=code,
                reason_text=text,
                decided_by=reminder.get("practitioner"),
                client_id=principal.client_id,
            )
            recorded += 1
            audit.patients.add(f"Patient/{reminder['patient_id']}")
            audit.entities.append(reminder["result_ref"])
    return json_answer({"recorded": recorded, "skipped": skipped})


def _decision(item: Any, index: int) -> tuple[uuid.UUID, str, str | None, str | None, datetime]:
    where = f"feedback[{index}]"
    if not isinstance(item, dict):
        raise bad_request(f"{where} must be an object")
    try:
        card = uuid.UUID(str(item.get("card")))
    except ValueError:
        raise bad_request(f"{where}.card is not the uuid of a reminder card") from None
    outcome = item.get("outcome")
    if outcome not in ("accepted", "overridden"):
        raise bad_request(f"{where}.outcome must be accepted or overridden")
    at = datetime.now(UTC)
    if isinstance(item.get("outcomeTimestamp"), str):
        try:
            at = parse_range(item["outcomeTimestamp"], UTC)[0]
        except DateFormatError:
            raise bad_request(f"{where}.outcomeTimestamp is not an instant") from None
    if outcome == "accepted":
        return card, "accepted", None, None, at
    override: dict[str, Any] = (
        item["overrideReason"] if isinstance(item.get("overrideReason"), dict) else {}
    )
    reason: dict[str, Any] = override["reason"] if isinstance(override.get("reason"), dict) else {}
    if reason and reason.get("system") not in (None, DECLINE_REASONS_URL):
        raise bad_request(f"{where}.overrideReason.reason must be from {DECLINE_REASONS_URL}")
    code, comment = reason.get("code"), override.get("userComment")
    return (
        card,
        "declined",
        code if isinstance(code, str) else None,
        comment if isinstance(comment, str) else None,
        at,
    )


routes = [
    Route(PREFIX, discovery, methods=["GET"]),
    Route(PREFIX + "/{service_id}", call_service, methods=["POST"]),
    Route(PREFIX + "/{service_id}/feedback", feedback, methods=["POST"]),
]
