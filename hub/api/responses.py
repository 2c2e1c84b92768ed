"""FHIR JSON responses, built from stored JSON text without re-serialising it."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from hub.fhir.datetimes import instant
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


def fragment(stored: StoredResource, elements: list[str] | None = None) -> Any:
    assert stored.content is not None
    if elements:
        resource = orjson.loads(stored.content)
        keep = {"resourceType", "id", "meta", *elements}
        subset = {k: v for k, v in resource.items() if k in keep}
        meta = dict(subset.get("meta", {}))
        meta["tag"] = [
            *meta.get("tag", []),
            {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
            },
        ]
        subset["meta"] = meta
        return subset
    return orjson.Fragment(stored.content)


def entry(
    stored: StoredResource, base: str, mode: str | None = None, elements: list[str] | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "fullUrl": f"{base}/{stored.resource_type}/{stored.resource_id}",
        "resource": fragment(stored, elements),
    }
    if mode:
        item["search"] = {"mode": mode}
    return item


def history_entry(stored: StoredResource, base: str) -> dict[str, Any]:
    url = f"{stored.resource_type}/{stored.resource_id}"
    item: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
    if stored.content is not None and not stored.deleted:
        item["resource"] = orjson.Fragment(stored.content)
    method = stored.method or "PUT"
    item["request"] = {"method": method, "url": url if method != "POST" else stored.resource_type}
    status = {"POST": "201 Created", "DELETE": "204 No Content"}.get(method, "200 OK")
    item["response"] = {
        "status": status,
        "etag": f'W/"{stored.version_id}"',
        "lastModified": instant(stored.last_updated),
    }
    return item


def bundle(
    kind: str,
    entries: list[dict[str, Any]],
    links: list[tuple[str, str]] | None = None,
    total: int | None = None,
    bundle_id: str | None = None,
) -> dict[str, Any]:
    import uuid
    from datetime import UTC, datetime

    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": bundle_id or str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(datetime.now(UTC))},
        "type": kind,
    }
    if total is not None:
        body["total"] = total
    if links:
        body["link"] = [{"relation": r, "url": u} for r, u in links]
    if entries:  # FHIR JSON has no empty arrays
        body["entry"] = entries
    return body
