"""``/ops/hospitals``: hospitals (Organizations), their feeds with recent ingest figures, and
their API clients; registering a hospital (as ``yijian orgs add``) and a feed (as ``yijian
feeds add``), and refreshing the ingest figures (as ``yijian feeds stats --refresh``)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from starlette.responses import RedirectResponse, Response

from hub.api.dependencies import audited, write_context
from hub.fhir.outcomes import FhirError
from hub.ingest.feeds import FeedConfig
from hub.ingest.ledger import ingest_statistics
from hub.records.unit_of_work import unit_of_work
from hub.security.clients import ClientRegistry
from hub.tasks.statistics import refresh_statistics
from hub.web.dependencies import web_hub
from hub.web.i18n import translator
from hub.web.pages.operator.admin import AdminUser, notice, organizations
from hub.web.rendering import render

router = APIRouter()

STATISTICS_DAYS = 7
HOSPITAL_IDENTIFIER_SYSTEM = "https://yijian.example/hospital"


async def _page(request: Request, user: AdminUser, error: str | None = None) -> Response:
    hub = web_hub(request)
    orgs = await organizations(request, user)
    feeds = await hub.ingest.feeds.all()
    async with (
        audited(request, user.principal, "feeds-list", "R"),
        hub.database.connection() as connection,
    ):
        figures = await ingest_statistics(connection, STATISTICS_DAYS)
        clients = await ClientRegistry(connection).list()
    per_feed: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"messages": 0, "resources": 0, "errors": 0, "dead_letters": 0, "last_day": None}
    )
    for row in figures:
        total = per_feed[row["feed_id"]]
        for key in ("messages", "resources", "errors", "dead_letters"):
            total[key] += row[key] or 0
        if row["messages"] and (total["last_day"] is None or row["day"] > total["last_day"]):
            total["last_day"] = row["day"]
    feeds_of: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for feed, source in feeds:
        feeds_of[feed.organization].append(
            {"feed": feed, "source": source, "figures": per_feed.get(feed.feed)}
        )
    clients_of: dict[str, list[Any]] = defaultdict(list)
    for client in clients:
        clients_of[client.organization].append(client)
    known = {str(org.get("id")) for org in orgs}
    return render(
        request,
        "ops/hospitals.html",
        status_code=422 if error else 200,
        hospitals=orgs,
        feeds_of=feeds_of,
        clients_of=clients_of,
        orphan_feeds=[f for org, items in feeds_of.items() if org not in known for f in items],
        feed_errors=hub.ingest.feeds.errors,
        refreshed=max((row["refreshed_at"] for row in figures), default=None),
        days=STATISTICS_DAYS,
        default_system=HOSPITAL_IDENTIFIER_SYSTEM,
        notice=notice(request),
        error=error,
        form=dict(await request.form()) if error else {},
    )


@router.get("/ops/hospitals")
async def hospitals(request: Request, user: AdminUser) -> Response:
    return await _page(request, user)


@router.post("/ops/hospitals")
async def add_hospital(
    request: Request,
    user: AdminUser,
    name: Annotated[str, Form(max_length=200)],
    system: Annotated[str, Form(max_length=500)],
    value: Annotated[str, Form(max_length=200)],
) -> Response:
    """Register a hospital; the same identifier again changes nothing (``orgs add``)."""
    name, system, value = name.strip(), system.strip(), value.strip()
    if not name or not system or not value:
        return await _page(request, user, translator(request)("请填写医院名称、标识系统和标识值。"))
    hub = web_hub(request)
    resource = {
        "resourceType": "Organization",
        "active": True,
        "name": name,
        "identifier": [{"system": system, "value": value}],
    }
    try:
        async with audited(request, user.principal, "create", "C") as audit:
            async with unit_of_work(hub.database, transaction=True) as uow:
                outcome = await hub.records.create(
                    uow,
                    user.principal,
                    "Organization",
                    resource,
                    write_context(request, user.principal),
                    if_none_exist=f"identifier={system}|{value}",
                )
            audit.capture(uow)
    except FhirError as error:
        return await _page(request, user, error.diagnostics)
    done = "hospital-added" if outcome.created else "hospital-exists"
    return RedirectResponse(f"/ops/hospitals?done={done}", status_code=303)


@router.post("/ops/hospitals/feeds")
async def add_feed(
    request: Request,
    user: AdminUser,
    organization: Annotated[str, Form(max_length=64)],
    sending_facility: Annotated[str, Form(max_length=200)],
    encoding: Annotated[str, Form(max_length=20)] = "utf-8",
    feed_id: Annotated[str, Form(max_length=64)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    authorities: Annotated[str, Form(max_length=4000)] = "",
) -> Response:
    """Register a feed in the database, or change one registered there (``feeds add``).
    ``authorities``: lines ``AUTHORITY=SYSTEM`` (PID-3 assigning authority → identifier
    system: a URI, ``resident-id``, ``mrn``...)."""
    hub = web_hub(request)
    _ = translator(request)
    organization, sending_facility = organization.strip(), sending_facility.strip()
    identifiers: dict[str, str] = {}
    for line in authorities.splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip() or not value.strip():
            return await _page(
                request, user, _("“{line}” 应写作 发证机构=标识系统。", line=line.strip())
            )
        identifiers[key.strip()] = value.strip()
    default_id = re.sub(r"[^A-Za-z0-9\-.]+", "-", f"{organization}-{sending_facility}").strip("-")
    try:
        feed = FeedConfig(
            feed=feed_id.strip() or default_id.lower()[:64],
            organization=organization,
            name=name.strip(),
            sending_facility=sending_facility,
            encoding=encoding,  # type: ignore[arg-type]
            identifiers=identifiers,
        )
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        )
        return await _page(request, user, _("数据源配置无效：{problems}", problems=problems))
    async with hub.database.connection() as connection:
        if not await ClientRegistry(connection).organization_exists(organization):
            return await _page(
                request, user, _("没有机构 {organization}。", organization=organization)
            )
    if any(f.feed == feed.feed and source == "file" for f, source in await hub.ingest.feeds.all()):
        return await _page(
            request, user, _("数据源 {feed} 由配置文件定义，请修改该文件。", feed=feed.feed)
        )
    async with audited(request, user.principal, "feeds-add", "C") as audit:
        audit.entities.append(f"feed/{feed.feed}")
        await hub.ingest.feeds.register(feed)
    return RedirectResponse("/ops/hospitals?done=feed-added#feeds", status_code=303)


@router.post("/ops/hospitals/statistics")
async def refresh(request: Request, user: AdminUser) -> Response:
    """Recompute the ingest figures now (the worker does it every few minutes)."""
    hub = web_hub(request)
    async with (
        audited(request, user.principal, "ingest-statistics-refresh", "U"),
        hub.database.connection() as connection,
    ):
        await refresh_statistics(connection, hub.settings.default_timezone, STATISTICS_DAYS)
    return RedirectResponse("/ops/hospitals?done=statistics-refreshed#feeds", status_code=303)
