"""``/ops/catalogue``: the recognition catalogue — its items with a search, one item's edit
form (codes, windows by region, scope, quality control, price, conditions), removal, and
the history of versions. Each save is a new catalogue version, made by the same
``RecognitionService.put_item`` / ``remove_item`` as ``PUT /admin/catalogue/items/{id}``,
audited alike; its validation errors are shown on the form."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

from hub.api.dependencies import audited
from hub.fhir.outcomes import FhirError
from hub.recognition.catalogue import Catalogue, CatalogueItem
from hub.recognition.repository import RecognitionRepository
from hub.security import policy
from hub.web.dependencies import WebUser, web_hub
from hub.web.i18n import translator
from hub.web.pages.operator.admin import AdminUser, notice
from hub.web.pages.operator.catalogue_form import (
    CONDITIONS,
    SCOPES,
    FormError,
    blank_form,
    item_form,
    item_json,
)
from hub.web.rendering import render

router = APIRouter()

NEW = "new"


def _matches(item: CatalogueItem, query: str) -> bool:
    """Does the item answer to the search (id, names, any code or display)?"""
    words = [item.id, item.name.zh, item.name.en, item.category]
    for code in (*item.codes, *item.components):
        words += [code.code, code.display or ""]
    for target in item.imaging:
        words.append(target.modality)
    text = " ".join(words).lower()
    return all(term in text for term in query.lower().split())


async def _current(request: Request) -> Catalogue:
    hub = web_hub(request)
    async with hub.database.connection() as connection:
        return await hub.recognition.catalogue(RecognitionRepository(connection))


@router.get("/ops/catalogue")
async def catalogue(request: Request, user: AdminUser, q: str = "") -> Response:
    hub = web_hub(request)
    policy.require_recognition(user.principal, "catalogue")
    async with hub.database.connection() as connection:
        current = await hub.recognition.catalogue(RecognitionRepository(connection))
        versions = await RecognitionRepository(connection).catalogue_versions()
    items = [item for item in current.document.items if _matches(item, q)] if q else None
    return render(
        request,
        "ops/catalogue.html",
        catalogue=current,
        items=items if items is not None else list(current.document.items),
        q=q,
        versions=versions,
        notice=notice(request),
    )


def _edit_page(
    request: Request,
    item_id: str,
    form: dict[str, Any],
    error: str | None = None,
    exists: bool = True,
) -> Response:
    return render(
        request,
        "ops/catalogue_item.html",
        status_code=422 if error else 200,
        item_id=item_id,
        form=form,
        exists=exists,
        scopes=SCOPES,
        conditions=CONDITIONS,
        error=error,
        notice=notice(request),
    )


@router.get("/ops/catalogue/items/{item_id}")
async def edit_item(request: Request, user: AdminUser, item_id: str) -> Response:
    policy.require_recognition(user.principal, "catalogue")
    if item_id == NEW:
        return _edit_page(request, NEW, blank_form(), exists=False)
    item = (await _current(request)).items.get(item_id)
    if item is None:
        raise HTTPException(404, translator(request)("互认目录中没有项目 {item}。", item=item_id))
    return _edit_page(request, item_id, item_form(item))


@router.post("/ops/catalogue/items/{item_id}")
async def save_item(request: Request, user: AdminUser, item_id: str) -> Response:
    """Add or change one item: a new catalogue version (validation errors on the form)."""
    form = await request.form()
    fields: dict[str, Any] = {key: form.get(key) for key in form}
    fields["not_suggested_when"] = [str(v) for v in form.getlist("not_suggested_when")]
    creating = item_id == NEW
    page_id = item_id
    _ = translator(request)

    def refused(message: str) -> Response:
        return _edit_page(request, page_id, fields, message, exists=not creating)

    if creating:
        item_id = str(form.get("id") or "").strip()
        if not item_id:
            return refused(_("请填写项目 ID。"))
        if item_id in (await _current(request)).items:
            return refused(_("项目 {item} 已存在。", item=item_id))
    try:
        raw = item_json(item_id, fields, fields["not_suggested_when"])
    except FormError as error:
        return refused(error.message(_))
    note = str(form.get("note") or "").strip()[:500] or None
    try:
        version = await _put(request, user, raw, note)
    except FhirError as error:
        return refused(error.diagnostics)
    return RedirectResponse(
        f"/ops/catalogue/items/{item_id}?done=item-saved&version={version}", status_code=303
    )


async def _put(request: Request, user: WebUser, raw: dict[str, Any], note: str | None) -> int:
    hub = web_hub(request)
    policy.require_recognition(user.principal, "catalogue")
    async with (
        audited(request, user.principal, "catalogue:put-item", "U") as audit,
        hub.database.connection() as connection,
        connection.transaction(),
    ):
        saved = await hub.recognition.put_item(
            RecognitionRepository(connection), raw, user.principal.client_id, note
        )
        audit.entities.append(f"catalogue/{saved.version}")
    return saved.version


@router.post("/ops/catalogue/items/{item_id}/remove")
async def remove_item(request: Request, user: AdminUser, item_id: str) -> Response:
    """Withdraw one item from recognition (a new catalogue version)."""
    hub = web_hub(request)
    policy.require_recognition(user.principal, "catalogue")
    async with (
        audited(request, user.principal, "catalogue:remove-item", "U") as audit,
        hub.database.connection() as connection,
        connection.transaction(),
    ):
        saved = await hub.recognition.remove_item(
            RecognitionRepository(connection), item_id, user.principal.client_id, None
        )
        audit.entities.append(f"catalogue/{saved.version}")
    return RedirectResponse("/ops/catalogue?done=item-removed", status_code=303)
