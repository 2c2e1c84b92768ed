"""FHIR JSON responses, built from stored JSON text without re-serialising it."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from hub.storage.resources import StoredResource

FHIR_JSON = "application/fhir+json; charset=utf-8"


def fhir_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None, pretty: bool = False
) -> Response:
    """``body`` is a dict, or JSON text/bytes already serialised."""
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
    if pretty:
        body = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2)
    return Response(body, status_code=status, headers=headers, media_type=FHIR_JSON)


def version_headers(stored: StoredResource, base: str) -> dict[str, str]:
    return {
        "ETag": f'W/"{stored.version_id}"',
        "Last-Modified": stored.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Location": f"{base}/{stored.resource_type}/{stored.resource_id}"
        f"/_history/{stored.version_id}",
    }
