"""The ASGI application: FHIR routes, the FastAPI app for the rest, errors and lifecycle.

The FHIR API is a list of plain Starlette routes in front of the FastAPI application that
serves auth, operations and the OpenAPI docs, so FHIR requests skip FastAPI's per-request
machinery. Every error on any path is answered as a FHIR OperationOutcome.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp

from hub import __version__
from hub.api import (
    access,
    admin,
    auth,
    cds,
    consults,
    fhir,
    identity,
    ingest,
    operations,
    recognition,
)
from hub.api.middleware import ObservabilityMiddleware
from hub.api.responses import fhir_response
from hub.extensions import extension_routes
from hub.fhir.outcomes import FhirError
from hub.runtime import Hub
from hub.settings import Settings
from hub.web import routes as web
from hub.web.dependencies import is_web_request
from hub.web.rendering import render_error

log = logging.getLogger(__name__)


async def _fhir_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, FhirError)
    if is_web_request(request):  # a web page: an HTML error page, not an OperationOutcome
        return render_error(request, error.status, error.diagnostics, error.headers)
    return fhir_response(error.outcome(), error.status, error.headers)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    code = {404: "not-found", 405: "not-supported"}.get(error.status_code, "processing")
    message = "no such endpoint" if error.status_code == 404 else str(error.detail)
    if is_web_request(request):
        return render_error(request, error.status_code, str(error.detail), error.headers)
    return fhir_response(FhirError(error.status_code, code, message).outcome(), error.status_code)


async def _invalid_request(request: Request, error: Exception) -> Response:
    """Say which field is wrong and how (never echoing the value: it may be an identifier)."""
    assert isinstance(error, RequestValidationError)
    problems = [
        f"{'.'.join(str(p) for p in item.get('loc', ()) if p != 'body') or 'body'}: "
        f"{item.get('msg', 'invalid')}"
        for item in error.errors()[:5]
    ]
    message = "malformed request: " + "; ".join(problems) if problems else "malformed request"
    if is_web_request(request):
        return render_error(request, 400, message)
    return fhir_response(FhirError(400, "invalid", message).outcome(), 400)


async def _unexpected(request: Request, error: Exception) -> Response:
    log.exception(
        "unhandled error (request %s)", request.scope.get("state", {}).get("request_id", "?")
    )
    if is_web_request(request):
        return render_error(request, 500, "系统内部错误，请求编号可在服务器日志中查到。")
    outcome = FhirError(
        500, "exception", "internal error; the request id identifies it in the server log"
    ).outcome()
    return fhir_response(outcome, 500)


HANDLERS = {
    FhirError: _fhir_error,
    HTTPException: _http_error,
    RequestValidationError: _invalid_request,
    Exception: _unexpected,
}


def create_app(settings: Settings, hub: Hub | None = None) -> ASGIApp:
    """Build the app. The hub (database, keys, audit chain) starts with the app's lifespan."""
    api = FastAPI(
        title="Yijian Hub (医检互认平台)",
        version=__version__,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
        exception_handlers=HANDLERS,  # type: ignore[arg-type]
    )
    api.include_router(auth.router)
    api.include_router(operations.router)
    api.include_router(admin.router)
    api.include_router(identity.router)
    api.include_router(ingest.router)
    api.include_router(recognition.router)
    web.install(api)  # the web workstation: pages at /, assets at /static
    api.include_router(access.router)
    api.include_router(consults.router)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime = hub or Hub.build(settings)
        await runtime.start()
        app.state.hub = api.state.hub = runtime
        log.info("hub started")
        try:
            yield
        finally:
            await runtime.stop()  # in-flight requests have finished: graceful
            log.info("hub stopped")

    app = Starlette(
        routes=[
            *identity.routes,
            *recognition.routes,
            *cds.routes,
            *fhir.routes,
            *extension_routes(),  # /dicomweb (imaging/), found through entry points
            Mount("/", app=api),
        ],
        exception_handlers=HANDLERS,
        lifespan=lifespan,
    )
    return ObservabilityMiddleware(app, settings.max_body_bytes, settings.dicomweb_max_body_bytes)
