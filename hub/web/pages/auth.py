"""Signing in and out: password (+ TOTP), OIDC single sign-on, logout, language switch.

``public_router`` holds what works without a session (the login form, SSO, the language
switch); ``router`` what needs one and is CSRF-protected by the web router (the TOTP step,
whose pending session carries a token, and logout). Every login, failed or not, is audited.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from starlette.responses import RedirectResponse, Response

from hub.security.audit import AuditRecord
from hub.web import oidc
from hub.web.accounts import AccountRepository, WebAccount, open_totp_secret, verify_password
from hub.web.dependencies import (
    CurrentUser,
    current_session,
    safe_next,
    web_hub,
)
from hub.web.i18n import LANG_COOKIE, parse_lang, request_lang
from hub.web.rendering import render
from hub.web.sessions import (
    SESSION_COOKIE,
    SessionStore,
    clear_session_cookie,
    set_session_cookie,
)
from hub.web.totp import matching_step

public_router = APIRouter()
router = APIRouter()
home_router = APIRouter()

LOGIN_FAILED = "用户名或密码错误。连续失败 5 次后，账户将被锁定 15 分钟。"
TOTP_FAILED = "验证码错误或已使用，请等待新的验证码。"
LANG_COOKIE_SECONDS = 365 * 24 * 3600


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def audit_login(
    request: Request, username: str, status: int, detail: str, organization: str | None = None
) -> None:
    """One audit record per login attempt and logout (the username as typed, trimmed)."""
    await web_hub(request).audit.record(
        AuditRecord.for_status(
            status,
            action="E",
            interaction="login",
            client_id=f"user:{username[:100]}",
            client_kind="web-user",
            organization=organization,
            source_ip=_client_ip(request),
            request_id=getattr(request.state, "request_id", None),
            detail=detail,
        )
    )


def home_for(role: str) -> str:
    return {"consultant": "/consults", "admin": "/ops"}.get(role, "/")


async def start_session(
    request: Request, account: WebAccount, next_url: str, *, mfa_pending: bool
) -> Response:
    """A new session for ``account`` (the old cookie's session, if any, is ended: no
    fixation), and the redirect that sets its cookie."""
    hub = web_hub(request)
    async with hub.database.connection() as conn:
        store = SessionStore(conn, hub.settings)
        old = request.cookies.get(SESSION_COOKIE)
        if old:
            await store.close(old)
        await store.purge()
        session = await store.open(
            account.username, mfa_pending=mfa_pending, lang=request_lang(request)
        )
        if not mfa_pending:
            await AccountRepository(conn).record_success(account.username)
    target = f"/login/totp?next={quote(next_url)}" if mfa_pending else next_url
    if not mfa_pending and next_url == "/":
        target = home_for(str(account.role))
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(response, session.token, hub.settings)
    return response


@public_router.get("/login")
async def login_page(request: Request, next: str = "/") -> Response:
    session = await current_session(request)
    if session is not None and not session.mfa_pending:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_form(request, safe_next(next))


def _login_form(
    request: Request,
    next_url: str,
    *,
    error: str | None = None,
    notice: str | None = None,
    username: str = "",
    status_code: int = 200,
) -> Response:
    providers = web_hub(request).settings.oidc_providers
    return render(
        request,
        "login.html",
        status_code,
        next=next_url,
        error=error,
        notice=notice,
        username=username,
        providers=providers,
    )


@public_router.post("/login")
async def login(
    request: Request,
    username: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    """Check the password; the same answer for an unknown user, a wrong password, a disabled
    or a locked account (and the same scrypt work), so the form reveals no account."""
    hub = web_hub(request)
    next_url = safe_next(next)
    name = username.strip().lower()
    async with hub.database.connection() as conn:
        accounts = AccountRepository(conn)
        account = await accounts.get(name)
        now = await conn.fetchval("SELECT now()")
        usable = account is not None and account.active and not account.locked(now)
        stored = account.password_hash if account is not None and usable else None
        correct = await verify_password(password, stored)
        if account is not None and account.active and not account.locked(now) and not correct:
            await accounts.record_failure(account.username)
    if account is None or not usable or not correct:
        reason = (
            "unknown user"
            if account is None
            else "disabled"
            if not account.active
            else "locked"
            if account.locked(now)
            else "wrong password"
        )
        await audit_login(request, name, 401, f"password login refused: {reason}")
        return _login_form(
            request, next_url, error=LOGIN_FAILED, username=username.strip(), status_code=401
        )
    await audit_login(
        request,
        account.username,
        200,
        "password accepted; TOTP code required" if account.totp_enabled else "password login",
        account.organization,
    )
    return await start_session(request, account, next_url, mfa_pending=account.totp_enabled)


@public_router.get("/login/totp")
async def totp_page(request: Request, next: str = "/") -> Response:
    session = await current_session(request)
    if session is None or not session.mfa_pending:
        return RedirectResponse(f"/login?next={quote(safe_next(next))}", status_code=303)
    return render(request, "login_totp.html", next=safe_next(next), error=None)


@router.post("/login/totp")
async def totp_login(
    request: Request,
    code: Annotated[str, Form(max_length=12)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    """The second step: a right code (never one of a step used before) turns the pending
    session into a login, under a new cookie value."""
    hub = web_hub(request)
    next_url = safe_next(next)
    session = await current_session(request)
    if session is None or not session.mfa_pending:
        return RedirectResponse(f"/login?next={quote(next_url)}", status_code=303)
    async with hub.database.connection() as conn:
        accounts = AccountRepository(conn)
        account = await accounts.get(session.username)
        assert account is not None  # the session joins an active user
        now = await conn.fetchval("SELECT now()")
        step = None
        if account.totp_enabled and account.totp_secret and not account.locked(now):
            secret = open_totp_secret(
                hub.identity.protection, account.username, account.totp_secret
            )
            step = matching_step(secret, code)
        accepted = step is not None and await accounts.use_totp_step(account.username, step)
        if not accepted and not account.locked(now):
            await accounts.record_failure(account.username)
    if not accepted:
        await audit_login(request, account.username, 401, "TOTP code refused", account.organization)
        return render(request, "login_totp.html", 401, next=next_url, error=TOTP_FAILED)
    await audit_login(request, account.username, 200, "TOTP login", account.organization)
    return await start_session(request, account, next_url, mfa_pending=False)


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (its row is deleted) and clear the cookie."""
    hub = web_hub(request)
    token = request.cookies.get(SESSION_COOKIE)
    session = await current_session(request)
    if token:
        async with hub.database.connection() as conn:
            await SessionStore(conn, hub.settings).close(token)
    if session is not None:
        await audit_login(request, session.username, 200, "logout", session.organization)
    response = RedirectResponse("/login", status_code=303)
    clear_session_cookie(response, hub.settings)
    return response


@public_router.get("/lang/{lang}")
async def switch_language(lang: str, next: str = "/") -> Response:
    """Remember the interface language in a cookie and go back to the page."""
    response = RedirectResponse(safe_next(next), status_code=303)
    chosen = parse_lang(lang)
    if chosen is not None:
        response.set_cookie(
            LANG_COOKIE, chosen, max_age=LANG_COOKIE_SECONDS, path="/", samesite="lax"
        )
    return response


@public_router.get("/login/oidc/{name}")
async def oidc_start(request: Request, name: str, next: str = "/") -> Response:
    """Send the browser to the provider (authorization code flow, PKCE, state, nonce)."""
    return await oidc.start(request, name, safe_next(next))


@public_router.get("/login/oidc/{name}/callback")
async def oidc_callback(request: Request, name: str) -> Response:
    """The provider sends the browser back here with a code; a verified ID token signs in
    the linked (or a newly created) account."""
    account, next_url = await oidc.finish(request, name)
    await audit_login(request, account.username, 200, f"OIDC login ({name})", account.organization)
    response = await start_session(request, account, next_url, mfa_pending=False)
    oidc.clear_flow_cookie(response, web_hub(request).settings)
    return response


@home_router.get("/")
async def home(request: Request, user: CurrentUser) -> Response:
    """Where a login lands when no page module serves ``/``: the role's own start page."""
    target = home_for(str(user.role))
    if target != "/":
        return RedirectResponse(target, status_code=303)
    return render(request, "base.html")
