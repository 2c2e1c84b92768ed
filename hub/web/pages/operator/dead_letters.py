"""``/ops/dead-letters``: messages the hub could not accept — the list, one message raw
(decoded as ingest decodes it, shown escaped), and the replay and discard actions of
``/admin/dead-letters`` and ``yijian deadletter``."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import RedirectResponse, Response

from hub.api.dependencies import audited
from hub.web.dependencies import web_hub
from hub.web.i18n import translator
from hub.web.pages.operator.admin import AdminUser, notice
from hub.web.rendering import render

router = APIRouter()

STATUSES = ("open", "replayed", "discarded", "all")
LIST_LIMIT = 200


@router.get("/ops/dead-letters")
async def dead_letters(
    request: Request, user: AdminUser, status: str = "open", feed: str = ""
) -> Response:
    if status not in STATUSES:
        status = "open"
    hub = web_hub(request)
    async with audited(request, user.principal, "dead-letters", "R"):
        letters = await hub.ingest.dead_letters(
            None if status == "all" else status, feed or None, LIST_LIMIT
        )
    feeds = sorted(f.feed for f, _ in await hub.ingest.feeds.all())
    return render(
        request,
        "ops/dead_letters.html",
        letters=letters,
        status=status,
        statuses=STATUSES,
        feed=feed,
        feeds=feeds,
        limit=LIST_LIMIT,
        notice=notice(request),
    )


@router.get("/ops/dead-letters/{entry_id}")
async def dead_letter(request: Request, user: AdminUser, entry_id: int) -> Response:
    hub = web_hub(request)
    async with audited(request, user.principal, "dead-letter", "R") as audit:
        audit.entities.append(f"dead-letter/{entry_id}")
        try:
            letter = await hub.ingest.dead_letter(entry_id)
        except LookupError:
            audit.status = 404
            raise HTTPException(404, _no_letter(request, entry_id)) from None
    return render(
        request,
        "ops/dead_letter.html",
        letter=letter,
        text=letter.text(),
        size=len(letter.payload),
        notice=notice(request),
        error=request.query_params.get("failed") and _failure(request),
    )


def _failure(request: Request) -> str:
    """The reason a replay was refused again (the pipeline's own words, from the redirect)."""
    failed = request.query_params.get("failed", "")[:500]
    return translator(request)("重放仍未被接收：{reason}", reason=failed)


def _no_letter(request: Request, entry_id: int) -> str:
    return translator(request)("没有编号为 {entry} 的死信。", entry=entry_id)


@router.post("/ops/dead-letters/{entry_id}/replay")
async def replay(request: Request, user: AdminUser, entry_id: int) -> Response:
    hub = web_hub(request)
    async with audited(request, user.principal, "dead-letter-replay", "U") as audit:
        audit.entities.append(f"dead-letter/{entry_id}")
        try:
            receipt = await hub.ingest.replay(entry_id)
        except LookupError:
            audit.status = 404
            raise HTTPException(404, _no_letter(request, entry_id)) from None
        except ValueError as error:
            audit.status = 409
            raise HTTPException(
                409, translator(request)("无法重放：{error}", error=error)
            ) from None
    if receipt.accepted:
        return RedirectResponse(f"/ops/dead-letters/{entry_id}?done=replayed", status_code=303)
    reason = f"{receipt.code} {receipt.reason or ''}".strip()
    return RedirectResponse(
        f"/ops/dead-letters/{entry_id}?{urlencode({'failed': reason})}", status_code=303
    )


@router.post("/ops/dead-letters/{entry_id}/discard")
async def discard(request: Request, user: AdminUser, entry_id: int) -> Response:
    hub = web_hub(request)
    async with audited(request, user.principal, "dead-letter-discard", "D") as audit:
        audit.entities.append(f"dead-letter/{entry_id}")
        try:
            await hub.ingest.discard(entry_id)
        except LookupError:
            audit.status = 404
            raise HTTPException(404, _no_letter(request, entry_id)) from None
    return RedirectResponse(f"/ops/dead-letters/{entry_id}?done=discarded", status_code=303)


@router.post("/ops/dead-letters/replay")
async def replay_all(request: Request, user: AdminUser) -> Response:
    """Queue a replay of every open dead letter (of one feed), as the API's bulk replay."""
    form = await request.form()
    feed = str(form.get("feed") or "") or None
    hub = web_hub(request)
    async with audited(request, user.principal, "dead-letters-replay", "U") as audit:
        letters = await hub.ingest.dead_letters("open", feed, 10_000)
        ids = sorted(letter.id for letter in letters)
        audit.entities += [f"dead-letter/{i}" for i in ids]
        await hub.ingest.schedule_replays(ids)
    query = urlencode({"feed": feed or "", "done": "replays-queued"})
    return RedirectResponse(f"/ops/dead-letters?{query}", status_code=303)
