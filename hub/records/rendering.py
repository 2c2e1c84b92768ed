"""FHIR Bundles and entries rendered from stored resources.

Stored JSON text is embedded as ``orjson.Fragment``, never parsed and re-serialised, so a page
of results costs one string join. Used by the HTTP adapter and by batch/transaction processing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson

from hub.fhir.datetimes import instant
from hub.fhir.outcomes import information
from hub.storage.resources import Page, StoredResource

if TYPE_CHECKING:
    from hub.records.service import SearchResult


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


def search_bundle(result: SearchResult, base: str, resource_type: str) -> dict[str, Any]:
    request = result.request
    used = [(k, v) for k, v in request.used if k != "_cursor"]
    links = page_links(
        f"{base}/{resource_type}",
        used,
        result.page,
        self_cursor=request.cursor.encode() if request.cursor else None,
    )
    entries = [entry(s, base, "match", request.elements) for s in result.page.rows]
    entries += [entry(s, base, "include", request.elements) for s in result.included]
    if request.ignored:
        entries.append(
            {
                "resource": information(
                    "ignored unknown search parameters: " + ", ".join(sorted(set(request.ignored)))
                ),
                "search": {"mode": "outcome"},
            }
        )
    return bundle("searchset", entries, links, result.total)


def page_links(
    url: str, used: list[tuple[str, str]], page: Page, self_cursor: str | None = None
) -> list[tuple[str, str]]:
    def link(cursor: str | None) -> str:
        params = used + ([("_cursor", cursor)] if cursor else [])
        return f"{url}?{urlencode(params)}" if params else url

    links = [("self", link(self_cursor))]
    if page.next_cursor is not None:
        links.append(("next", link(page.next_cursor.encode())))
    if page.previous_cursor is not None:
        links.append(("previous", link(page.previous_cursor.encode())))
    return links
