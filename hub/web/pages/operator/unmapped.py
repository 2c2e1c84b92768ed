"""``/ops/unmapped``: the unmapped-code worklist, and mapping a code from it.

Mapping a local code to LOINC (with the UCUM unit the hospital reports in and the
recognition catalogue item) stores it in the feed's code map exactly as ``PUT
/admin/code-maps/{feed}`` and ``yijian codes map`` do, and schedules the back-fill of the
results already stored with that code.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from hub.api.dependencies import audited
from hub.ingest.codemaps import CodeTarget, concept_map
from hub.recognition.repository import RecognitionRepository
from hub.web.dependencies import web_hub
from hub.web.i18n import translator
from hub.web.pages.operator.admin import AdminUser, notice, organization_names
from hub.web.rendering import render

router = APIRouter()

LOINC_CODE = re.compile(r"^\d{1,8}-\d$")
UCUM_UNIT = re.compile(r"^[!-~]{1,40}$")  # printable ASCII, no spaces


async def _page(
    request: Request,
    user: AdminUser,
    organization: str | None,
    error: str | None = None,
    failed: dict[str, str] | None = None,
) -> Response:
    hub = web_hub(request)
    async with audited(request, user.principal, "unmapped-codes", "R"):
        rows = await hub.ingest.unmapped(organization or None)
    feeds_by_system: dict[str, list[str]] = defaultdict(list)
    for feed, _ in await hub.ingest.feeds.all():
        feeds_by_system[feed.local_code_system].append(feed.feed)
    async with hub.database.connection() as connection:
        catalogue = await hub.recognition.catalogue(RecognitionRepository(connection))
    return render(
        request,
        "ops/unmapped.html",
        status_code=422 if error else 200,
        rows=rows,
        feeds_by_system=feeds_by_system,
        items=[i for i in catalogue.document.items if i.category == "lab"],
        hospitals=await organization_names(request, user),
        organization=organization or "",
        notice=notice(request),
        error=error,
        failed=failed or {},
    )


@router.get("/ops/unmapped")
async def worklist(request: Request, user: AdminUser, organization: str = "") -> Response:
    return await _page(request, user, organization)


@router.post("/ops/unmapped/map")
async def map_code(
    request: Request,
    user: AdminUser,
    feed: Annotated[str, Form(max_length=64)],
    local_code: Annotated[str, Form(max_length=200)],
    loinc: Annotated[str, Form(max_length=20)],
    local_display: Annotated[str, Form(max_length=500)] = "",
    display: Annotated[str, Form(max_length=500)] = "",
    unit: Annotated[str, Form(max_length=40)] = "",
    catalogue: Annotated[str, Form(max_length=64)] = "",
    organization: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    hub = web_hub(request)
    loinc, unit, catalogue = loinc.strip(), unit.strip(), catalogue.strip()
    failed = {"local_code": local_code, "loinc": loinc, "display": display, "unit": unit}
    problem = None
    _ = translator(request)
    if not LOINC_CODE.match(loinc):
        problem = _("“{code}” 不是 LOINC 编码（形如 2345-7）。", code=loinc)
    elif unit and not UCUM_UNIT.match(unit):
        problem = _("“{unit}” 不是 UCUM 单位代码（如 mmol/L、10*9/L）。", unit=unit)
    if catalogue and problem is None:
        async with hub.database.connection() as connection:
            current = await hub.recognition.catalogue(RecognitionRepository(connection))
        if catalogue not in current.items:
            problem = _("互认目录中没有项目 {item}。", item=catalogue)
    if problem:
        return await _page(request, user, organization, problem, failed)
    target = CodeTarget(loinc, display.strip(), unit or None, catalogue or None)
    resource = concept_map("web", "", [(local_code, local_display, target)])
    async with audited(request, user.principal, "code-map-update", "U") as audit:
        audit.entities.append(f"code-map/{feed}")
        try:
            changed = await hub.ingest.import_concept_map(feed, resource, user.principal.client_id)
        except (LookupError, ValueError) as error:
            audit.status = 422
            return await _page(request, user, organization, str(error), failed)
        found = await hub.ingest.feed(feed)
        await hub.ingest.schedule_backfill(found.local_code_system, changed)
    query = f"organization={organization}&" if organization else ""
    return RedirectResponse(f"/ops/unmapped?{query}done=mapped", status_code=303)
