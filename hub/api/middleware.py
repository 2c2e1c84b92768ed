"""ASGI middleware: request ids, JSON access logs, Prometheus metrics and the body-size limit.

Written as plain ASGI (not BaseHTTPMiddleware) to keep per-request overhead small.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import orjson
from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.fhir.outcomes import FhirError

access_log = logging.getLogger("yijian.access")

REQUESTS = Counter("yijian_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "yijian_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class BodyTooLarge(FhirError):
    """Raised while the app reads a body (sent without Content-Length) beyond the limit.

    A ``FhirError``, so the request's audit scope and the app's error handler answer it as 413
    rather than as an unexpected error.
    """

    def __init__(self, limit: int):
        super().__init__(
            413,
            "too-long",
            f"the request body exceeds the limit of {limit} bytes",
            headers={"Connection": "close"},
        )


STOW_PREFIX = "/dicomweb/studies"
DEFAULT_STOW_MAX_BODY = 4 * 1024 * 1024 * 1024


class ObservabilityMiddleware:
    """Assigns a request id, enforces the body limit, logs one JSON line and records metrics.

    A DICOMweb STOW-RS request (POST under /dicomweb/studies) has its own, larger limit: its
    parts are streamed to storage as they arrive, so a large study never sits in memory.
    """

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, dicomweb_max_body_bytes: int | None = None
    ):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.dicomweb_max_body_bytes = dicomweb_max_body_bytes or DEFAULT_STOW_MAX_BODY

    def _limit(self, scope: Scope) -> int:
        """STOW-RS bodies (studies, streamed to disk) have their own, larger limit."""
        path = scope.get("path", "")
        if scope.get("method") == "POST" and (
            path == STOW_PREFIX or path.startswith(STOW_PREFIX + "/")
        ):
            return self.dicomweb_max_body_bytes
        return self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:64] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        limit = self._limit(scope)

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, request_id, limit)
            self._finish(scope, 413, started, request_id)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            status = 413
            await _too_large(send, request_id, limit)
        finally:
            self._finish(scope, status, started, request_id)

    def _finish(self, scope: Scope, status: int, started: float, request_id: str) -> None:
        elapsed = time.perf_counter() - started
        route = _route(scope)
        method = scope["method"]
        REQUESTS.labels(method, route, str(status)).inc()
        LATENCY.labels(method, route).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            state = scope.get("state", {})
            principal = state.get("principal")
            # The route template, never the raw path or query: those may carry identifiers.
            access_log.info(
                orjson.dumps(
                    {
                        "event": "request",
                        "request_id": request_id,
                        "method": method,
                        "route": route,
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                        "client_id": getattr(principal, "client_id", None),
                    }
                ).decode()
            )


def _route(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"


async def _too_large(send: Send, request_id: str, limit: int) -> None:
    body = orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "error",
                    "code": "too-long",
                    "diagnostics": f"the request body exceeds the limit of {limit} bytes",
                }
            ],
        }
    )
    try:
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/fhir+json; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
    except Exception:
        logging.getLogger(__name__).debug("could not send 413", exc_info=True)
