"""The FastAPI application: routers, middleware, error handling and lifecycle."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from hub import __version__
from hub.api import auth, fhir, operations
from hub.api.middleware import ObservabilityMiddleware
from hub.api.responses import fhir_response
from hub.fhir.outcomes import FhirError
from hub.runtime import Hub
from hub.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, hub: Hub | None = None) -> FastAPI:
    """Build the app. The hub (database, keys, audit chain) starts with the app's lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = hub or Hub.build(settings)
        await runtime.start()
        app.state.hub = runtime
        log.info("hub started")
        try:
            yield
        finally:
            await runtime.stop()  # in-flight requests have finished: graceful
            log.info("hub stopped")

    app = FastAPI(
        title="Yijian Hub (医检互认平台)",
        version=__version__,
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.include_router(fhir.router)
    app.include_router(auth.router)
    app.include_router(operations.router)

    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, error: FhirError) -> Response:
        return fhir_response(error.outcome(), error.status, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> Response:
        return fhir_response(FhirError(400, "invalid", "malformed request").outcome(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        code = {404: "not-found", 405: "not-supported"}.get(error.status_code, "processing")
        message = "no such endpoint" if error.status_code == 404 else str(error.detail)
        return fhir_response(
            FhirError(error.status_code, code, message).outcome(), error.status_code
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> Response:
        log.exception("unhandled error (request %s)", getattr(request.state, "request_id", "?"))
        outcome = FhirError(
            500, "exception", "internal error; the request id identifies it in the server log"
        ).outcome()
        return fhir_response(outcome, 500)

    return ObservabilityMiddleware(app, settings.max_body_bytes)  # type: ignore[return-value]
