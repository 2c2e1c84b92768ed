"""Operability endpoints: liveness/readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio
import os

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import Response

from hub.api.dependencies import Caller, get_hub
from hub.fhir.outcomes import forbidden
from hub.security.principals import ClientKind

router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    hub = get_hub(request)
    try:
        async with asyncio.timeout(2):
            async with hub.database.connection() as conn:
                await conn.fetchval("SELECT 1")
    except Exception as error:
        body = {"status": "unavailable", "database": type(error).__name__}
        return Response(orjson.dumps(body), status_code=503, media_type="application/json")
    return Response(orjson.dumps({"status": "ok", "database": "ok"}), media_type="application/json")


@router.get("/metrics")
async def metrics(principal: Caller) -> Response:
    """Prometheus metrics; scraped with an admin client's bearer token."""
    if principal.kind != ClientKind.ADMIN:
        raise forbidden("metrics are for admin clients")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # several worker processes: merge them
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
