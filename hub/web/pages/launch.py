"""SMART App Launch in the browser: the hub's authorization endpoint, and the workstation as
a SMART app launched by an EHR.

``GET /auth/authorize`` is a page because it needs the person: it signs them in (the usual
login, TOTP or SSO, coming back here), checks the app, the audience, PKCE and the launch, and
sends the browser back to the app with a one-time code (``hub.security.smart``).

``GET /launch?iss=…&launch=…`` is the workstation's launch URL: it checks ``iss`` is this hub,
starts the authorization request (state and PKCE verifier kept in a short-lived signed cookie)
and, at ``/launch/callback``, exchanges the code — which establishes the ``launch`` purpose of
use — then opens the patient.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlencode

import orjson
from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from hub.api.auth import base_url, user_principal
from hub.security import smart
from hub.security.tokens import InvalidToken
from hub.web.dependencies import CurrentUser, web_hub
from hub.web.rendering import render_error

router = APIRouter()

STATE_COOKIE = "yijian_smart_state"
STATE_PURPOSE = "smart-app-state"
LAUNCH_SCOPE = "launch openid fhirUser patient/*.rs"


def _fail(
    request: Request, error: smart.SmartError, redirect_uri: str | None, state: str
) -> Response:
    """An OAuth error: back to a verified redirect_uri, else shown here (never an open
    redirect to an unverified address)."""
    if redirect_uri and error.redirect:
        query = urlencode({"error": error.error, "error_description": str(error), "state": state})
        return RedirectResponse(f"{redirect_uri}?{query}", status_code=303)
    return render_error(request, 400, f"{error.error}: {error}")


@router.get("/auth/authorize")
async def authorize(request: Request, user: CurrentUser) -> Response:
    hub = web_hub(request)
    params = dict(request.query_params)
    root = base_url(request)
    state = params.get("state", "")
    redirect_uri: str | None = None
    try:
        async with hub.database.connection() as connection:
            repository = smart.SmartRepository(connection)
            found = await repository.app(params.get("client_id", ""), root)
            app, redirect_uri = smart.verified_redirect(found, params)
            granted = smart.check_authorize(app, params, f"{root}/fhir")
            patient_id = None
            if "launch" in granted:
                context = smart.read_launch(hub.tokens, params.get("launch", ""))
                smart.may_launch(user.principal, context)
                patient_id = context.patient_id
            elif any(s.startswith("patient/") for s in granted):
                raise smart.SmartError(
                    "invalid_scope", "patient-level scopes need a launch context (EHR launch)"
                )
            code = await repository.issue_code(
                app,
                redirect_uri,
                user.username,
                patient_id,
                granted,
                params["code_challenge"],
                params.get("nonce"),
            )
    except smart.SmartError as error:
        return _fail(request, error, redirect_uri, state)
    query = urlencode({"code": code, "state": state})
    return RedirectResponse(f"{redirect_uri}?{query}", status_code=303)


@router.get("/launch")
async def launch(request: Request, iss: str = "", launch: str = "") -> Response:
    """The workstation's SMART launch URL (no session needed yet: authorize signs in)."""
    hub = web_hub(request)
    root = base_url(request)
    if iss.rstrip("/") != f"{root}/fhir":
        return render_error(request, 400, f"iss must be this hub's FHIR base ({root}/fhir)")
    if not launch:
        return render_error(request, 400, "launch is required (EHR launch)")
    state, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(48)
    query = urlencode(
        {
            "response_type": "code",
            "client_id": smart.WORKSTATION_CLIENT,
            "redirect_uri": f"{root}/launch/callback",
            "scope": LAUNCH_SCOPE,
            "state": state,
            "aud": iss,
            "launch": launch,
            "code_challenge": smart.s256(verifier),
            "code_challenge_method": "S256",
        }
    )
    response = RedirectResponse(f"/auth/authorize?{query}", status_code=303)
    cookie = hub.tokens.sign_link(
        orjson.dumps({"state": state, "verifier": verifier}).decode(), STATE_PURPOSE, 600
    )
    response.set_cookie(
        STATE_COOKIE,
        cookie,
        max_age=600,
        path="/launch",
        secure=hub.settings.web_cookie_secure,
        httponly=True,
        samesite="lax",
    )
    return response


@router.get("/launch/callback")
async def callback(request: Request, user: CurrentUser) -> Response:
    hub = web_hub(request)
    params = request.query_params
    if "error" in params:
        return render_error(
            request, 403, f"{params['error']}: {params.get('error_description', '')}"
        )
    try:
        kept = orjson.loads(
            hub.tokens.verify_link(request.cookies.get(STATE_COOKIE, ""), STATE_PURPOSE)
        )
    except (InvalidToken, orjson.JSONDecodeError):
        return render_error(request, 400, "the launch has expired; open it again from the EHR")
    if not secrets.compare_digest(kept["state"], params.get("state", "")):
        return render_error(request, 400, "state does not match this launch")
    root = base_url(request)
    form = {
        "grant_type": "authorization_code",
        "code": params.get("code", ""),
        "redirect_uri": f"{root}/launch/callback",
        "client_id": smart.WORKSTATION_CLIENT,
        "code_verifier": kept["verifier"],
    }
    try:
        async with hub.database.connection() as connection:
            granted = await smart.exchange(
                connection, form, root, lambda name: user_principal(hub, name)
            )
            if granted.principal.client_id != user.principal.client_id:
                raise smart.SmartError("access_denied", "the code was issued to another user")
            if granted.patient_id is None:
                raise smart.SmartError("invalid_request", "the launch named no patient")
            await hub.records.access.launch(
                connection, user.principal, granted.patient_id, "smart:workstation"
            )
    except smart.SmartError as error:
        return render_error(request, 400, f"{error.error}: {error}")
    response = RedirectResponse(f"/patients/{granted.patient_id}", status_code=303)
    response.delete_cookie(STATE_COOKIE, path="/launch")
    return response
