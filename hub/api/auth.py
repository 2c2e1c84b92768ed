"""The OAuth 2.0 token endpoint (client credentials) and the public signing keys."""

from __future__ import annotations

import asyncio
import base64
import binascii
from urllib.parse import unquote

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from hub.api.dependencies import get_hub
from hub.security import client_secrets, scopes
from hub.security.audit import AuditRecord
from hub.security.clients import ClientRegistry

router = APIRouter(prefix="/auth")


def _oauth_error(status: int, error: str, description: str) -> Response:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="yijian"'
    body = orjson.dumps({"error": error, "error_description": description})
    return Response(body, status_code=status, media_type="application/json", headers=headers)


@router.post("/token")
async def token(request: Request) -> Response:
    hub = get_hub(request)
    form = await request.form()
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
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
    return Response(
        orjson.dumps(body),
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


@router.get("/jwks.json")
async def jwks(request: Request) -> Response:
    return Response(orjson.dumps(get_hub(request).keyring.jwks()), media_type="application/json")
