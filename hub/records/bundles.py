"""Batch and transaction Bundles.

A transaction runs in one unit of work: entries are processed in the order FHIR prescribes
(DELETE, POST, PUT, GET), ``urn:uuid`` full URLs are resolved to the ids the hub assigns
(or to the resource a conditional create matched) and rewritten wherever they are referenced,
and any failure rolls the whole transaction back. A batch runs each entry in a transaction
of its own and reports each outcome.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from hub.fhir.datetimes import instant
from hub.fhir.outcomes import FhirError, bad_request
from hub.fhir.references import split_reference
from hub.records.rendering import bundle, search_bundle
from hub.records.unit_of_work import UnitOfWork, WorkRecorder, unit_of_work
from hub.storage.resources import StoredResource, WriteContext

if TYPE_CHECKING:
    from hub.runtime import Hub
    from hub.security.principals import Principal

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
MAX_ENTRIES = 10_000


async def process(
    hub: Hub,
    principal: Principal,
    body: dict[str, Any],
    context: WriteContext,
    base: str,
    audit: WorkRecorder,
) -> dict[str, Any]:
    entries = check_entries(body)
    if body["type"] == "transaction":
        return await _transaction(hub, principal, entries, context, base, audit)
    return await _batch(hub, principal, entries, context, base, audit)


def check_entries(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries of a batch or transaction Bundle, each with a well-formed request (else 400)."""
    entries = body.get("entry") or []
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise bad_request(f"Bundle.entry must be a list of at most {MAX_ENTRIES} entries")
    full_urls: set[str] = set()
    for index, item in enumerate(entries):
        request = item.get("request") if isinstance(item, dict) else None
        full_url = item.get("fullUrl") if isinstance(item, dict) else None
        if isinstance(full_url, str):  # bdl-7; two entries with one urn:uuid would share an id
            if full_url in full_urls:
                raise bad_request(
                    f"Bundle.entry[{index}].fullUrl {full_url!r} is not unique", code="structure"
                )
            full_urls.add(full_url)
        if (
            not isinstance(request, dict)
            or not isinstance(request.get("method"), str)
            or request["method"] not in ORDER
            or not isinstance(request.get("url"), str)
            or not request["url"]
            or any(
                not isinstance(request.get(key), str)
                for key in ("ifNoneExist", "ifMatch")
                if request.get(key) is not None
            )
        ):
            raise bad_request(
                f"Bundle.entry[{index}].request needs a method and url", code="structure"
            )
    return entries


async def _transaction(
    hub: Hub,
    principal: Principal,
    entries: list[dict[str, Any]],
    context: WriteContext,
    base: str,
    audit: WorkRecorder,
) -> dict[str, Any]:
    async with unit_of_work(hub.database, transaction=True) as uow:
        result = await run_transaction(hub, principal, uow, entries, context, base)
        audit.capture(uow)
    return result


async def run_transaction(
    hub: Hub,
    principal: Principal,
    uow: UnitOfWork,
    entries: list[dict[str, Any]],
    context: WriteContext,
    base: str,
) -> dict[str, Any]:
    """Process transaction ``entries`` (already checked by ``check_entries``) in ``uow``, which
    must be in a database transaction: the caller commits, so it may write more in the same
    transaction (the ingest pipeline records the message there). Returns the response Bundle.
    """
    order = sorted(range(len(entries)), key=lambda i: ORDER[entries[i]["request"]["method"]])
    responses: list[dict[str, Any] | None] = [None] * len(entries)
    mapping = _assign_ids(entries)
    uow.pending = []  # writes go out pipelined, before the first read and at the end
    _check_repeated_criteria(entries)
    matched = await _resolve_conditional_creates(hub, principal, uow, entries, mapping)
    resolved = await _resolve_conditional_updates(hub, principal, uow, entries, mapping)
    _check_overlaps(entries, mapping, resolved, matched)
    for index in order:
        if entries[index]["request"]["method"] in ("GET", "HEAD"):
            await uow.flush()
        try:
            if index in matched:
                responses[index] = _response(matched[index], base, 200)
                continue
            responses[index] = await _entry(
                hub, principal, uow, entries[index], context, base, mapping, resolved.get(index)
            )
        except FhirError as error:
            error.diagnostics = f"Bundle.entry[{index}]: {error.diagnostics}"
            raise
    await uow.flush()
    # Check references here, so the error can name the entry; the unit of work's own
    # check at commit would repeat the same query on the same set, so it is emptied.
    missing = await uow.resources.missing_references(uow.references)
    if missing:
        raise _missing_references(entries, mapping, missing)
    uow.references.clear()
    return bundle("transaction-response", [r for r in responses if r is not None])


def _check_repeated_criteria(entries: list[dict[str, Any]]) -> None:
    """Two conditional updates with the same URL would each resolve before either wrote."""
    seen: dict[str, int] = {}
    for index, item in enumerate(entries):
        request = item["request"]
        if _conditional_update_type(request) is None:
            continue
        if request["url"] in seen:
            raise bad_request(
                f"Bundle.entry[{seen[request['url']]}] and Bundle.entry[{index}] have the same"
                f" conditional URL {request['url']!r}; a transaction changes a resource once",
                code="business-rule",
            )
        seen[request["url"]] = index


def _check_overlaps(
    entries: list[dict[str, Any]],
    mapping: dict[str, str],
    resolved: dict[int, list[StoredResource]],
    matched: dict[int, StoredResource],
) -> None:
    """FHIR: if any resource identities overlap, the transaction fails. Each entry that
    writes is resolved to the resource it changes; two that change one resource are a 400."""
    writes: dict[str, int] = {}
    for index, item in enumerate(entries):
        request = item["request"]
        method = request["method"]
        if method not in ("PUT", "DELETE", "PATCH") or index in matched:
            continue
        url = request["url"].split("?", 1)[0].strip("/")
        target: str | None = url if url.count("/") == 1 else None
        if index in resolved:
            found = resolved[index]
            if len(found) == 1:
                target = f"{found[0].resource_type}/{found[0].resource_id}"
            elif not found and isinstance(item.get("fullUrl"), str):
                target = mapping.get(item["fullUrl"])
        if target is None:
            continue
        if target in writes:
            raise bad_request(
                f"Bundle.entry[{writes[target]}] and Bundle.entry[{index}] both change"
                f" {target}; a transaction changes a resource once",
                code="business-rule",
            )
        writes[target] = index


def _missing_references(
    entries: list[dict[str, Any]], mapping: dict[str, str], missing: set[tuple[str, str]]
) -> FhirError:
    """A 422 naming the first entry that references one of the ``missing`` resources."""
    listed = ", ".join(sorted(f"{t}/{i}" for t, i in missing)[:10])
    for index, item in enumerate(entries):
        resource = item.get("resource")
        if not isinstance(resource, dict):
            continue
        named = {split_reference(r)[:2] for r in _references(_rewrite(resource, mapping))}
        if named & missing:
            return FhirError(
                422,
                "not-found",
                f"Bundle.entry[{index}]: references to unknown resources: {listed}",
            )
    return FhirError(422, "not-found", f"references to unknown resources: {listed}")


async def _resolve_conditional_updates(
    hub: Hub,
    principal: Principal,
    uow: UnitOfWork,
    entries: list[dict[str, Any]],
    mapping: dict[str, str],
) -> dict[int, list[StoredResource]]:
    """Resolve every conditional update first, and point its ``urn:uuid`` at the resource it
    will write: ``_assign_ids`` gave it a fresh id (used if nothing matches); a match replaces
    it. With several matches the mapping is left alone: the update itself reports the 412.

    Returns what each entry's criteria matched, so the updates do not search again. Criteria
    that are all one exact identifier (what adapters send) are resolved in one statement.
    """
    conditional = [
        (index, resource_type, item["request"]["url"].split("?", 1)[1])
        for index, item in enumerate(entries)
        if (resource_type := _conditional_update_type(item["request"])) is not None
    ]
    if not conditional:
        return {}
    found: dict[int, list[StoredResource]] = {}
    resolved = await hub.records.match_many(
        uow, principal, [(resource_type, criteria) for _, resource_type, criteria in conditional]
    )
    for position, (index, resource_type, criteria) in enumerate(conditional):
        try:
            if resolved is not None:
                matches = resolved[position]
            else:
                matches = await hub.records.conditional_matches(
                    uow, principal, resource_type, criteria
                )
        except FhirError as error:
            error.diagnostics = f"Bundle.entry[{index}]: {error.diagnostics}"
            raise
        found[index] = matches
        item = entries[index]
        full_url = item.get("fullUrl")
        if len(matches) > 1 or not isinstance(full_url, str) or full_url not in mapping:
            continue
        resource = item["resource"]  # a dict: _assign_ids maps only entries that have one
        if matches:
            mapping[full_url] = f"{resource_type}/{matches[0].resource_id}"
        elif isinstance(resource.get("id"), str):
            mapping[full_url] = f"{resource_type}/{resource['id']}"
    return found


async def _resolve_conditional_creates(
    hub: Hub,
    principal: Principal,
    uow: UnitOfWork,
    entries: list[dict[str, Any]],
    mapping: dict[str, str],
) -> dict[int, StoredResource]:
    """Match every conditional create first, so references to it point at what it matched."""
    matched = {}
    for index, item in enumerate(entries):
        request = item["request"]
        if request["method"] != "POST" or not request.get("ifNoneExist"):
            continue
        resource_type = request["url"].split("?", 1)[0].strip("/")
        try:
            existing = await hub.records.match_if_none_exist(
                uow, principal, resource_type, request["ifNoneExist"]
            )
        except FhirError as error:
            error.diagnostics = f"Bundle.entry[{index}]: {error.diagnostics}"
            raise
        if existing is not None:
            matched[index] = existing
            if isinstance(item.get("fullUrl"), str):
                mapping[item["fullUrl"]] = f"{resource_type}/{existing.resource_id}"
    return matched


async def _batch(
    hub: Hub,
    principal: Principal,
    entries: list[dict[str, Any]],
    context: WriteContext,
    base: str,
    audit: WorkRecorder,
) -> dict[str, Any]:
    responses = []
    for item in entries:
        try:
            async with unit_of_work(hub.database, transaction=True) as uow:
                responses.append(await _entry(hub, principal, uow, item, context, base, {}, None))
            audit.capture(uow)
        except FhirError as error:
            responses.append(
                {"response": {"status": f"{error.status}", "outcome": error.outcome()}}
            )
    return bundle("batch-response", responses)


def _assign_ids(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Map each POST entry's ``urn:uuid`` fullUrl to the ``Type/id`` it will be stored as."""
    mapping = {}
    for item in entries:
        full_url = item.get("fullUrl")
        resource = item.get("resource")
        if (
            isinstance(full_url, str)
            and full_url.startswith("urn:")
            and isinstance(resource, dict)
            and item["request"]["method"] == "POST"
        ):
            mapping[full_url] = f"{resource.get('resourceType')}/{uuid.uuid4()}"
        elif (
            isinstance(full_url, str) and full_url.startswith("urn:") and isinstance(resource, dict)
        ):
            url = item["request"]["url"]
            if _conditional_update_type(item["request"]):  # see _resolve_conditional_updates
                mapping[full_url] = f"{resource.get('resourceType')}/{uuid.uuid4()}"
            else:
                mapping[full_url] = url.split("?", 1)[0]
    return mapping


def _conditional_update_type(request: dict[str, Any]) -> str | None:
    """The resource type of a ``PUT Type?criteria`` request, else None."""
    parts = urlsplit(request["url"])
    path = [p for p in parts.path.split("/") if p]
    if request["method"] == "PUT" and len(path) == 1 and parts.query:
        return path[0]
    return None


def _rewrite(value: Any, mapping: dict[str, str], dangling: list[str] | None = None) -> Any:
    """``value`` with every reference in ``mapping`` replaced; ``urn:uuid`` references it
    cannot resolve are appended to ``dangling``. Only containers are copied."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                resolved = mapping.get(item, item)
                if dangling is not None and resolved.startswith("urn:uuid:"):
                    dangling.append(resolved)
                out[key] = resolved
            elif isinstance(item, dict | list):
                out[key] = _rewrite(item, mapping, dangling)
            else:
                out[key] = item
        return out
    if isinstance(value, list):
        return [
            _rewrite(item, mapping, dangling) if isinstance(item, dict | list) else item
            for item in value
        ]
    return value


def _references(value: Any) -> list[str]:
    """Every ``reference`` string in a resource."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                found.append(item)
            else:
                found += _references(item)
        return found
    if isinstance(value, list):
        return [r for item in value for r in _references(item)]
    return []


async def _entry(
    hub: Hub,
    principal: Principal,
    uow: UnitOfWork,
    item: dict[str, Any],
    context: WriteContext,
    base: str,
    mapping: dict[str, str],
    matches: list[StoredResource] | None,
) -> dict[str, Any]:
    """One entry. ``matches``: what its conditional criteria matched, resolved already."""
    request = item["request"]
    method = request["method"]
    url = request["url"]
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    parts = urlsplit(url)
    path = [p for p in parts.path.split("/") if p]
    records = hub.records
    if method in ("POST", "PUT"):
        resource = item.get("resource")
        if not isinstance(resource, dict):
            raise bad_request(f"{method} entry needs a resource", code="structure")
        unresolved: list[str] = []
        resource = _rewrite(resource, mapping, unresolved)
        if unresolved:
            dangling = unresolved[0]
            raise FhirError(
                422, "not-found", f"reference {dangling} is not resolved in this Bundle"
            )
        if method == "POST":
            if len(path) != 1:
                raise bad_request(f"POST url must be a resource type: {url!r}")
            full_url = item.get("fullUrl")
            assigned = mapping.get(full_url) if isinstance(full_url, str) else None
            outcome = await records.create(
                uow,
                principal,
                path[0],
                {k: v for k, v in resource.items() if k != "id"},
                context,
                resource_id=assigned.split("/", 1)[1] if assigned else None,
            )
            return _response(outcome.stored, base, 201)
        if len(path) == 2:
            result = await records.update(
                uow, principal, path[0], path[1], resource, context, request.get("ifMatch")
            )
        elif len(path) == 1 and parts.query:
            full_url = item.get("fullUrl")
            assigned = mapping.get(full_url) if isinstance(full_url, str) else None
            new_id = None
            if assigned and matches == [] and "id" not in resource:
                new_id = assigned.split("/", 1)[1]  # a fresh id: nothing to read first
            elif assigned:  # the id its urn:uuid was resolved to
                resource = {**resource, "id": assigned.split("/", 1)[1]}
            result = await records.conditional_update(
                uow,
                principal,
                path[0],
                parse_qsl(parts.query),
                resource,
                context,
                matches,
                new_id=new_id,
            )
        else:
            raise bad_request(f"PUT url must be Type/id or Type?criteria: {url!r}")
        return _response(result.stored, base, 201 if result.created else 200)
    if method == "DELETE":
        if len(path) != 2:
            raise bad_request(f"DELETE url must be Type/id: {url!r}")
        await records.delete(uow, principal, path[0], path[1], context)
        return {"response": {"status": "204 No Content"}}
    if len(path) == 2:
        stored = await records.read(uow, principal, path[0], path[1])
        return {**_response(stored, base, 200), "resource": _resource(stored)}
    if len(path) == 1:
        found = await records.search(uow, principal, path[0], parse_qsl(parts.query), strict=False)
        return {"resource": search_bundle(found, base, path[0]), "response": {"status": "200 OK"}}
    raise bad_request(f"unsupported GET url in Bundle: {url!r}")


def _resource(stored: StoredResource) -> Any:
    return orjson.Fragment(stored.content or "{}")


def _response(stored: StoredResource, base: str, status: int) -> dict[str, Any]:
    text = {200: "200 OK", 201: "201 Created"}[status]
    return {
        "fullUrl": f"{base}/{stored.resource_type}/{stored.resource_id}",
        "response": {
            "status": text,
            "location": f"{stored.resource_type}/{stored.resource_id}/_history/{stored.version_id}",
            "etag": f'W/"{stored.version_id}"',
            "lastModified": instant(stored.last_updated),
        },
    }
