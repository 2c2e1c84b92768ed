"""The OAuth 2.0 token endpoint (client credentials; authorization codes of SMART App Launch),
EHR launch contexts (``/auth/launch``) and the public signing keys. The authorization
endpoint itself is a page (``hub.web.pages.launch``): it needs the user's session."""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Any
from urllib.parse import unquote, urlencode

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from hub.access.repository import AccessRepository
from hub.api.dependencies import Caller, audited, get_hub
from hub.fhir.outcomes import FhirError, forbidden
from hub.security import client_secrets, scopes, smart
from hub.security.audit import AuditRecord
from hub.security.clients import ClientRegistry
from hub.security.principals import ClientKind, Principal

router = APIRouter(prefix="/auth")


def _oauth_error(status: int, error: str, description: str) -> Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="yijian"'
    body = orjson.dumps({"error": error, "error_description": description})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _token_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def base_url(request: Request) -> str:
    """The hub's public root (``YIJIAN_PUBLIC_BASE_URL``, else as the request reached it)."""
    return (get_hub(request).settings.public_base_url or str(request.base_url)).rstrip("/")


async def user_principal(hub: Any, username: str) -> Principal | None:
    """The principal of an active workstation account (``user:<name>``)."""
    from hub.web.accounts import AccountRepository, principal_of

    async with hub.database.connection() as conn:
        account = await AccountRepository(conn).get(username.removeprefix("user:"))
    if account is None or not account.active:
        return None
    return principal_of(account.username, account.display_name, account.role, account.organization)


async def _authorization_code(request: Request, form: dict[str, str]) -> Response:
    """SMART App Launch: a code from /auth/authorize for a token acting as the user, with the
    launch's patient; the exchange establishes the ``launch`` purpose of use for it."""
    hub = get_hub(request)
    try:
        async with hub.database.connection() as connection:
            granted = await smart.exchange(
                connection, form, base_url(request), lambda name: user_principal(hub, name)
            )
            if granted.patient_id is not None:
                await hub.records.access.launch(
                    connection, granted.principal, granted.patient_id, f"smart:{granted.client_id}"
                )
    except smart.SmartError as error:
        status = 401 if error.error == "invalid_client" else 400
        return _oauth_error(status, error.error, str(error))
    except FhirError as error:
        return _oauth_error(400, "invalid_grant", error.diagnostics)
    principal = granted.principal
    await hub.audit.record(
        AuditRecord.for_status(
            200,
            action="E",
            interaction="token:authorization_code",
            client_id=principal.client_id,
            client_kind=str(principal.kind),
            organization=principal.organization,
            source_ip=request.client.host if request.client else None,
            request_id=getattr(request.state, "request_id", None),
            patients=[f"Patient/{granted.patient_id}"] if granted.patient_id else [],
            entities=[f"smart-app/{granted.client_id}"],
        )
    )
    access_token, lifetime = hub.tokens.issue(principal)
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": " ".join(sorted(granted.scope)),
    }
    if granted.patient_id is not None:
        body["patient"] = granted.patient_id
        body["need_patient_banner"] = True
    if "openid" in granted.scope:
        body["id_token"] = hub.tokens.id_token(principal, granted.client_id, granted.nonce)
    return _token_response(body)


@router.post("/token")
async def token(request: Request) -> Response:
    hub = get_hub(request)
    form = await request.form()
    if form.get("grant_type") == "authorization_code":
        return await _authorization_code(
            request, {k: v for k, v in form.items() if isinstance(v, str)}
        )
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(
            400,
            "unsupported_grant_type",
            "grant_type must be client_credentials or authorization_code",
        )
    client_id, secret = form.get("client_id"), form.get("client_secret")
    header = request.headers.get("authorization", "")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:].strip()).decode()
            client_id, _, secret = decoded.partition(":")
            client_id, secret = unquote(client_id), unquote(secret)
        except (binascii.Error, UnicodeDecodeError):
            return _oauth_error(401, "invalid_client", "malformed Basic credentials")
    if not isinstance(client_id, str) or not isinstance(secret, str) or not client_id:
        return _oauth_error(401, "invalid_client", "client_id and client_secret are required")
    if "\x00" in client_id or "\x00" in secret:  # PostgreSQL text cannot hold it: no client has it
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
    async with hub.database.connection() as conn:
        found = await ClientRegistry(conn).get(client_id)
    valid = (
        found is not None
        and found[0].revoked_at is None
        and await asyncio.to_thread(client_secrets.verify_secret, secret, found[1])
    )
    record = AuditRecord.for_status(
        200 if valid else 401,
        action="E",
        interaction="token",
        client_id=client_id[:100],
        source_ip=request.client.host if request.client else None,
        request_id=getattr(request.state, "request_id", None),
    )
    if not valid or found is None:
        await hub.audit.record(record)
        return _oauth_error(401, "invalid_client", "unknown client or wrong secret")
    client = found[0]
    granted = client.scopes
    if requested := form.get("scope"):
        granted = scopes.narrow(client.scopes, scopes.parse(str(requested)))
        if not granted:
            return _oauth_error(400, "invalid_scope", "none of the requested scopes is granted")
    principal = client.principal(granted)
    record.client_kind, record.organization = str(client.kind), client.organization
    await hub.audit.record(record)
    access_token, lifetime = hub.tokens.issue(principal)
    body = {
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": lifetime,
        "scope": " ".join(sorted(granted)),
    }
    return _token_response(body)


class LaunchRequest(BaseModel):
    patient: str = Field(description="Patient/{id}: the EHR's current patient in the hub")
    encounter: str | None = None


@router.post("/launch", status_code=201)
async def launch(body: LaunchRequest, request: Request, principal: Caller) -> Response:
    """An EHR's launch context for SMART EHR launch: open ``url`` in the doctor's browser."""
    hub = get_hub(request)
    if principal.kind not in (ClientKind.DOCTOR, ClientKind.HOSPITAL) or principal.is_person:
        raise forbidden("only an EHR (a doctor or hospital client) can create a launch context")
    from hub.api.access import patient_id_of

    patient_id = patient_id_of(body.patient)
    async with (
        audited(request, principal, "smart:launch", "E") as audit,
        hub.database.connection() as connection,
    ):
        audit.patients.add(f"Patient/{patient_id}")
        if not await AccessRepository(connection).patient_exists(patient_id):
            raise FhirError(404, "not-found", f"Patient/{patient_id} is not known")
    value = smart.sign_launch(
        hub.tokens,
        smart.LaunchContext(
            patient_id, principal.organization, principal.client_id, body.encounter
        ),
    )
    root = base_url(request)
    query = urlencode({"iss": f"{root}/fhir", "launch": value})
    return _token_response(
        {"launch": value, "expires_in": smart.LAUNCH_LIFETIME, "url": f"{root}/launch?{query}"},
        201,
    )


@router.get("/jwks.json")
async def jwks(request: Request) -> Response:
    return Response(orjson.dumps(get_hub(request).keyring.jwks()), media_type="application/json")
