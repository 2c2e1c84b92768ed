"""``/ops``: what needs the operator's attention, with a link to each page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request
from starlette.responses import Response

from hub.access.repository import AccessRepository
from hub.api.dependencies import audited
from hub.recognition.repository import RecognitionRepository
from hub.records.unit_of_work import unit_of_work
from hub.web.dependencies import web_hub
from hub.web.pages.operator.admin import AdminUser, organization_names
from hub.web.rendering import render

router = APIRouter()

BREAK_GLASS_DAYS = 7
COUNT_LIMIT = 1000  # counts above this show as "1000+"


@router.get("/ops")
async def overview(request: Request, user: AdminUser) -> Response:
    hub = web_hub(request)
    feeds = await hub.ingest.feeds.all()
    async with audited(request, user.principal, "ops-overview", "R"):
        unmapped = await hub.ingest.unmapped()
        dead = await hub.ingest.dead_letters("open", None, COUNT_LIMIT)
        async with unit_of_work(hub.database, transaction=False) as uow:
            reviews = await hub.identity.reviews(uow, "open", COUNT_LIMIT, 0)
        async with hub.database.connection() as connection:
            catalogue = await hub.recognition.catalogue(RecognitionRepository(connection))
            since = datetime.now(UTC) - timedelta(days=BREAK_GLASS_DAYS)
            break_glass = await AccessRepository(connection).break_glass_uses(since, COUNT_LIMIT)
    hospitals = await organization_names(request, user)
    return render(
        request,
        "ops/overview.html",
        counts={
            "hospitals": len(hospitals),
            "feeds": len(feeds),
            "feed_errors": len(hub.ingest.feeds.errors),
            "unmapped": len(unmapped),
            "dead_letters": len(dead),
            "reviews": len(reviews),
            "catalogue_items": len(catalogue.document.items),
            "catalogue_version": catalogue.version,
            "break_glass": len(break_glass),
        },
        limit=COUNT_LIMIT,
        break_glass_days=BREAK_GLASS_DAYS,
    )
