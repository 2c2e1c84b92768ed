"""``/ops/identity``: identity review tasks — a hospital's Patient record and the master it
may belong to, side by side (identifiers in full, as admins see them), the score and how
each field compared; link them (the same person) or dismiss the review (not the same), as
``/admin/identity`` and ``yijian identity link`` do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from hub.api.dependencies import audited
from hub.fhir.outcomes import FhirError
from hub.identity.identifiers import IdentifierSystems
from hub.records.unit_of_work import UnitOfWork, unit_of_work
from hub.runtime import Hub
from hub.security import policy
from hub.security.principals import Principal
from hub.web.dependencies import web_hub
from hub.web.i18n import request_lang
from hub.web.pages.operator.admin import AdminUser, notice, organization_names
from hub.web.rendering import render

router = APIRouter()

STATUSES = ("open", "linked", "dismissed", "superseded")
PAGE_SIZE = 50


def _actor(principal: Principal) -> str:
    """Who decided, as the admin API records it."""
    policy.require_identity(principal, "manage")
    return f"client:{principal.client_id}"


async def _patient(
    hub: Hub, uow: UnitOfWork, principal: Principal, patient_id: str
) -> dict[str, Any]:
    """A Patient as the admin reads it through the record service (a missing one marked)."""
    try:
        stored = await hub.records.read(uow, principal, "Patient", patient_id)
    except FhirError as error:
        return {"id": patient_id, "missing": error.diagnostics}
    body: dict[str, Any] = orjson.loads(stored.content or "{}")
    return body


def _name(patient: dict[str, Any]) -> str:
    for name in patient.get("name") or []:
        text = name.get("text") or (name.get("family", "") + "".join(name.get("given") or []))
        if text:
            return str(text)
    return ""


@router.get("/ops/identity")
async def reviews(
    request: Request, user: AdminUser, status: str = "open", after: int = 0
) -> Response:
    if status not in STATUSES:
        status = "open"
    hub = web_hub(request)
    _actor(user.principal)
    tasks = []
    async with (
        audited(request, user.principal, "identity-reviews", "R") as audit,
        unit_of_work(hub.database, transaction=False) as uow,
    ):
        found = await hub.identity.reviews(uow, status, PAGE_SIZE, max(after, 0))
        for review in found:
            source = await _patient(hub, uow, user.principal, review.source_id)
            master = await _patient(hub, uow, user.principal, review.master_id)
            tasks.append({"review": review, "source": source, "master": master})
        audit.capture(uow)
        audit.patients |= {f"Patient/{r.source_id}" for r in found}
        audit.patients |= {f"Patient/{r.master_id}" for r in found}
    return render(
        request,
        "ops/identity.html",
        tasks=tasks,
        status=status,
        statuses=STATUSES,
        next_after=found[-1].id if len(found) == PAGE_SIZE else None,
        hospitals=await organization_names(request, user),
        system_name=_system_namer(hub, request_lang(request)),
        name_of=_name,
        notice=notice(request),
    )


def _system_namer(hub: Hub, lang: str) -> Callable[[str | None], str]:
    """Identifier system URI → the name people know (居民身份证, 医保...), else the URI."""
    systems: IdentifierSystems = hub.identity.systems

    def name(uri: str | None) -> str:
        found = systems.lookup(uri)
        if found is None:
            return uri or ""
        return found.name_en if lang == "en" else found.name_zh

    return name


@router.post("/ops/identity/{review_id}/link")
async def link(
    request: Request,
    user: AdminUser,
    review_id: int,
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """The same person: link the source record to the master (``/admin/identity/link``)."""
    hub = web_hub(request)
    actor = _actor(user.principal)
    async with audited(request, user.principal, "identity-link", "U") as audit:
        async with unit_of_work(hub.database, transaction=True) as uow:
            review = next(
                (r for r in await hub.identity.reviews(uow, "open", 1, review_id - 1)), None
            )
            if review is None or review.id != review_id:
                raise FhirError(409, "conflict", f"review {review_id} is not open")
            await hub.identity.link(
                uow, review.source_id, review.master_id, actor, reason.strip() or None
            )
        audit.capture(uow)
        audit.patients |= {f"Patient/{review.source_id}", f"Patient/{review.master_id}"}
    return RedirectResponse("/ops/identity?done=linked", status_code=303)


@router.post("/ops/identity/{review_id}/dismiss")
async def dismiss(
    request: Request,
    user: AdminUser,
    review_id: int,
    reason: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Not the same person: close the review (``/admin/identity/reviews/{id}/dismiss``)."""
    hub = web_hub(request)
    actor = _actor(user.principal)
    async with (
        audited(request, user.principal, "identity-dismiss", "U"),
        unit_of_work(hub.database, transaction=True) as uow,
    ):
        await hub.identity.dismiss(uow, review_id, actor, reason.strip() or None)
    return RedirectResponse("/ops/identity?done=dismissed", status_code=303)
