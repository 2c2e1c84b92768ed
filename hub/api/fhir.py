"""The FHIR REST API at ``/fhir``: HTTP in, service layer calls, FHIR JSON out."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hub.api.dependencies import audited, authenticate, get_hub, write_context
from hub.api.responses import fhir_response, version_headers
from hub.fhir import capability
from hub.fhir.outcomes import FhirError, bad_request, information
from hub.records import bundles
from hub.records.rendering import bundle, entry, history_entry, page_links, search_bundle
from hub.records.service import check_type
from hub.records.unit_of_work import unit_of_work
from hub.runtime import Hub
from hub.security.principals import Principal


def fhir_base(request: Request) -> str:
    hub = get_hub(request)
    if hub.settings.public_base_url:
        return hub.settings.public_base_url.rstrip("/") + "/fhir"
    return str(request.base_url).rstrip("/") + "/fhir"


def pretty(request: Request) -> bool:
    return request.query_params.get("_pretty") == "true"


def strict_handling(request: Request) -> bool:
    return "handling=strict" in request.headers.get("prefer", "").replace(" ", "")


def return_preference(request: Request) -> str:
    prefer = request.headers.get("prefer", "").replace(" ", "")
    for part in prefer.split(";"):
        for item in part.split(","):
            if item.startswith("return="):
                return item[len("return=") :]
    return "representation"


def redacted_query(hub: Hub, pairs: list[tuple[str, str]]) -> str | None:
    """The query for the audit log, with identifier values replaced by a keyed hash."""
    if not pairs:
        return None
    out = []
    for key, value in pairs:
        if "identifier" in key.lower() or key.startswith("_cursor"):
            digest = hmac.new(hub.audit.key, value.encode(), hashlib.sha256).hexdigest()[:16]
            value = f"hmac:{digest}"
        out.append((key, value))
    return urlencode(out)[:2000]


async def read_json(request: Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type and "json" not in content_type:
        raise FhirError(
            415,
            "not-supported",
            f"unsupported content type {content_type!r}; send application/fhir+json",
        )
    body = await request.body()
    if not body:
        raise bad_request("the request body is empty", code="structure")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise bad_request(f"the body is not valid JSON: {error}", code="structure") from None
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object (a FHIR resource)", code="structure")
    if b"\\u0000" in body:  # PostgreSQL text cannot hold NUL, and FHIR strings may not either
        raise bad_request("the body contains a NUL character (\\u0000)", code="invalid")
    return data


def query_pairs(request: Request) -> list[tuple[str, str]]:
    return [
        (k, v) for k, v in request.query_params.multi_items() if k not in ("_pretty", "_format")
    ]


# -- conformance ------------------------------------------------------------------------------


async def metadata(request: Request) -> Response:
    hub = get_hub(request)
    base = fhir_base(request)
    body = _capability_cache.get(base)
    if body is None:  # built once per base URL: it depends only on the registry
        body = orjson.dumps(capability.capability_statement(hub.registry, base))
        _capability_cache[base] = body
    return fhir_response(body, pretty=pretty(request))


_capability_cache: dict[str, bytes] = {}


async def smart_configuration(request: Request) -> Response:
    root = fhir_base(request)[: -len("/fhir")]
    body = {
        "issuer": get_hub(request).settings.token_issuer,
        "jwks_uri": f"{root}/auth/jwks.json",
        "authorization_endpoint": f"{root}/auth/authorize",
        "token_endpoint": f"{root}/auth/token",
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": [
            "launch",
            "openid",
            "fhirUser",
            "patient/*.rs",
            "user/*.rs",
            "system/*.cruds",
            "system/*.rs",
            "system/*.read",
            "system/*.*",
        ],
        "response_types_supported": ["code", "token"],
        "capabilities": [
            "launch-ehr",
            "context-ehr-patient",
            "client-public",
            "client-confidential-symmetric",
            "sso-openid-connect",
            "permission-v2",
            "permission-v1",
            "permission-patient",
            "permission-user",
        ],
        "code_challenge_methods_supported": ["S256"],
    }
    return Response(orjson.dumps(body), media_type="application/json")


# -- whole system -------------------------------------------------------------------------------


async def batch_or_transaction(request: Request) -> Response:
    principal = await authenticate(request)
    hub = get_hub(request)
    body = await read_json(request)
    kind = body.get("type") if body.get("resourceType") == "Bundle" else None
    if kind not in ("batch", "transaction"):
        raise bad_request("POST to the base must be a Bundle of type batch or transaction")
    async with audited(request, principal, kind, "E") as audit:
        result = await bundles.process(
            hub, principal, body, write_context(request, principal), fhir_base(request), audit
        )
    return fhir_response(result, pretty=pretty(request))


async def system_history(request: Request) -> Response:
    principal = await authenticate(request)
    return await _history(request, principal, None, None)


# -- type level ----------------------------------------------------------------------------------


async def type_history(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    return await _history(request, principal, resource_type, None)


async def search(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    return await _search(request, principal, resource_type, query_pairs(request))


async def search_post(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    form = await request.form()
    pairs = query_pairs(request) + [(k, str(v)) for k, v in form.multi_items()]
    return await _search(request, principal, resource_type, pairs)


async def create(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    hub = get_hub(request)
    check_type(resource_type)
    async with audited(request, principal, "create", "C") as audit:
        resource = await read_json(request)
        if_none_exist = request.headers.get("if-none-exist")
        # Only a conditional create (search, then write, under a lock) and a Patient (write,
        # then match and link) need a transaction.
        transaction = bool(if_none_exist) or hub.records.needs_transaction(resource_type)
        async with unit_of_work(hub.database, transaction=transaction) as uow:
            outcome = await hub.records.create(
                uow,
                principal,
                resource_type,
                resource,
                write_context(request, principal),
                if_none_exist,
            )
        audit.capture(uow)
        audit.status = 201 if outcome.created else 200
    return _write_response(request, outcome.stored, 201 if outcome.created else 200)


async def conditional_update(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    hub = get_hub(request)
    check_type(resource_type)
    pairs = query_pairs(request)
    if not pairs:
        raise bad_request("a conditional update needs search criteria in the URL")
    async with audited(request, principal, "update", "U", redacted_query(hub, pairs)) as audit:
        resource = await read_json(request)
        async with unit_of_work(hub.database, transaction=True) as uow:
            outcome = await hub.records.conditional_update(
                uow, principal, resource_type, pairs, resource, write_context(request, principal)
            )
        audit.capture(uow)
        audit.status = 201 if outcome.created else 200
    return _write_response(request, outcome.stored, audit.status)


# -- instance level ------------------------------------------------------------------------------


async def patient_everything(request: Request) -> Response:
    principal = await authenticate(request)
    patient_id = request.path_params["patient_id"]
    hub = get_hub(request)
    query = dict(query_pairs(request))
    async with audited(request, principal, "operation:everything", "R") as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            page, referenced = await hub.records.everything(
                uow, principal, patient_id, query, hub.settings.search_default_count
            )
        audit.capture(uow)
    base = fhir_base(request)
    links = page_links(
        f"{base}/Patient/{patient_id}/$everything",
        [(k, v) for k, v in query.items() if k != "_cursor"],
        page,
    )
    entries = [entry(s, base, "match") for s in page.rows] + [
        entry(s, base, "include") for s in referenced
    ]
    total = len(page.rows) if "_cursor" not in query and page.next_cursor is None else None
    return fhir_response(bundle("searchset", entries, links, total), pretty=pretty(request))


async def read(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    resource_id = request.path_params["resource_id"]
    hub = get_hub(request)
    async with audited(request, principal, "read", "R") as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            stored = await hub.records.read(uow, principal, resource_type, resource_id)
        audit.capture(uow)
    headers = version_headers(stored, fhir_base(request))
    del headers["Location"]
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return fhir_response(stored.content or "", headers=headers, pretty=pretty(request))


async def update(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    resource_id = request.path_params["resource_id"]
    hub = get_hub(request)
    check_type(resource_type)
    async with audited(request, principal, "update", "U") as audit:
        resource = await read_json(request)
        transaction = hub.records.needs_transaction(resource_type)
        async with unit_of_work(hub.database, transaction=transaction) as uow:
            outcome = await hub.records.update(
                uow,
                principal,
                resource_type,
                resource_id,
                resource,
                write_context(request, principal),
                request.headers.get("if-match"),
            )
        audit.capture(uow)
        audit.status = 201 if outcome.created else 200
    return _write_response(request, outcome.stored, audit.status)


async def delete(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    resource_id = request.path_params["resource_id"]
    hub = get_hub(request)
    async with audited(request, principal, "delete", "D") as audit:
        transaction = hub.records.needs_transaction(resource_type)
        async with unit_of_work(hub.database, transaction=transaction) as uow:
            await hub.records.delete(
                uow, principal, resource_type, resource_id, write_context(request, principal)
            )
        audit.capture(uow)
        audit.status = 204
    return Response(status_code=204)


async def instance_history(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    resource_id = request.path_params["resource_id"]
    return await _history(request, principal, resource_type, resource_id)


async def vread(request: Request) -> Response:
    principal = await authenticate(request)
    resource_type = request.path_params["resource_type"]
    resource_id = request.path_params["resource_id"]
    version_id = request.path_params["version_id"]
    hub = get_hub(request)
    async with audited(request, principal, "vread", "R") as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            stored = await hub.records.vread(uow, principal, resource_type, resource_id, version_id)
        audit.capture(uow)
    headers = version_headers(stored, fhir_base(request))
    del headers["Location"]
    return fhir_response(stored.content or "", headers=headers, pretty=pretty(request))


# -- shared ------------------------------------------------------------------------------------


def _write_response(request: Request, stored: Any, status: int) -> Response:
    headers = version_headers(stored, fhir_base(request))
    preference = return_preference(request)
    if preference == "minimal":
        return Response(status_code=status, headers=headers)
    if preference == "OperationOutcome":
        return fhir_response(
            information(f"{stored.resource_type}/{stored.resource_id} stored"), status, headers
        )
    return fhir_response(stored.content, status, headers, pretty=pretty(request))


async def _search(
    request: Request, principal: Principal, resource_type: str, pairs: list[tuple[str, str]]
) -> Response:
    hub = get_hub(request)
    check_type(resource_type)
    async with audited(request, principal, "search-type", "E", redacted_query(hub, pairs)) as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            result = await hub.records.search(
                uow, principal, resource_type, pairs, strict_handling(request)
            )
        audit.capture(uow)
    return fhir_response(
        search_bundle(result, fhir_base(request), resource_type), pretty=pretty(request)
    )


async def _history(
    request: Request, principal: Principal, resource_type: str | None, resource_id: str | None
) -> Response:
    hub = get_hub(request)
    if resource_type:
        check_type(resource_type)
    query = dict(query_pairs(request))
    interaction = (
        "history-instance"
        if resource_id
        else ("history-type" if resource_type else "history-system")
    )
    async with audited(request, principal, interaction, "R") as audit:
        async with unit_of_work(hub.database, transaction=False) as uow:
            page = await hub.records.history(
                uow, principal, resource_type, resource_id, query, hub.settings.search_default_count
            )
        audit.capture(uow)
    base = fhir_base(request)
    url = "/".join(p for p in (base, resource_type, resource_id, "_history") if p)
    used = [(k, v) for k, v in query.items() if k != "_cursor"]
    links = page_links(url, used, page, query.get("_cursor"))
    return fhir_response(
        bundle("history", [history_entry(s, base) for s in page.rows], links),
        pretty=pretty(request),
    )


# -- routes -------------------------------------------------------------------------------------
# Plain Starlette routes, not FastAPI's: measured on a read, FastAPI's route matching and
# dependency solving took about 40% of the request's CPU. Order matters: the first match wins.

PREFIX = "/fhir"

routes = [
    Route(PREFIX + "/metadata", metadata, methods=["GET"]),
    Route(PREFIX + "/.well-known/smart-configuration", smart_configuration, methods=["GET"]),
    Route(PREFIX, batch_or_transaction, methods=["POST"]),
    Route(PREFIX + "/", batch_or_transaction, methods=["POST"]),
    Route(PREFIX + "/_history", system_history, methods=["GET"]),
    Route(PREFIX + "/{resource_type}/_history", type_history, methods=["GET"]),
    Route(PREFIX + "/{resource_type}", search, methods=["GET"]),
    Route(PREFIX + "/{resource_type}/_search", search_post, methods=["POST"]),
    Route(PREFIX + "/{resource_type}", create, methods=["POST"]),
    Route(PREFIX + "/{resource_type}", conditional_update, methods=["PUT"]),
    Route(
        PREFIX + "/Patient/{patient_id}/$everything", patient_everything, methods=["GET", "POST"]
    ),
    Route(PREFIX + "/{resource_type}/{resource_id}", read, methods=["GET"]),
    Route(PREFIX + "/{resource_type}/{resource_id}", update, methods=["PUT"]),
    Route(PREFIX + "/{resource_type}/{resource_id}", delete, methods=["DELETE"]),
    Route(PREFIX + "/{resource_type}/{resource_id}/_history", instance_history, methods=["GET"]),
    Route(PREFIX + "/{resource_type}/{resource_id}/_history/{version_id}", vread, methods=["GET"]),
]
