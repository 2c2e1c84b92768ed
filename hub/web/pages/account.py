"""``/account``: the signed-in person's own account — turning the TOTP second factor on and off.

Turning it on takes two steps. A new secret is stored sealed but not yet required (as
``yijian users totp --enable`` seals it) and shown with its ``otpauth://`` URI for an
authenticator app; only a right code from that app turns it on, so nobody locks themselves
out with a secret their app does not hold. The confirming code's step is then used, so it
cannot also serve a login. Turning it on or off asks for the current password (a session left open
is not enough to drop the second factor). Every change is audited like the CLI's
(``web-user-totp``, the account as the entity).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Form, Request
from fastapi.routing import APIRouter
from starlette.responses import RedirectResponse, Response

from hub.security.audit import AuditRecord
from hub.web.accounts import (
    AccountRepository,
    WebAccount,
    open_totp_secret,
    seal_totp_secret,
    verify_password,
)
from hub.web.dependencies import CurrentUser, WebUser, web_hub
from hub.web.rendering import render
from hub.web.totp import matching_step, new_secret, provisioning_uri

router = APIRouter()

ACCOUNT = "/account"
SETUP = "/account/totp/setup"

# What the page says after a change (a code in ``?done=``, never free text).
NOTICES = {
    "totp-on": "两步验证已开启，下次登录时需要输入验证码。",
    "totp-off": "两步验证已关闭。",
}
CODE_REFUSED = (
    "验证码不正确，两步验证尚未开启。请确认身份验证器中添加的是上面的密钥，并输入当前的验证码。"
)
PASSWORD_REFUSED = "密码不正确，两步验证仍然开启。"


async def _account(request: Request, user: WebUser) -> WebAccount:
    async with web_hub(request).database.connection() as conn:
        account = await AccountRepository(conn).get(user.username)
    assert account is not None  # a session belongs to an existing, active account
    return account


async def _audit(request: Request, user: WebUser, status: int, detail: str) -> None:
    await web_hub(request).audit.record(
        AuditRecord.for_status(
            status,
            action="U",
            interaction="web-user-totp",
            client_id=user.principal.client_id,
            client_kind="web-user",
            organization=user.organization,
            source_ip=request.client.host if request.client else None,
            request_id=getattr(request.state, "request_id", None),
            entities=[f"web-user/{user.username}"],
            detail=detail,
        )
    )


def _pending_secret(request: Request, account: WebAccount) -> str | None:
    """The secret being set up: stored, not yet required."""
    if account.totp_enabled or not account.totp_secret:
        return None
    protection = web_hub(request).identity.protection
    return open_totp_secret(protection, account.username, account.totp_secret)


def _page(
    request: Request,
    account: WebAccount,
    *,
    secret: str | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "account.html",
        status_code,
        account=account,
        secret=secret,
        uri=provisioning_uri(secret, account.username) if secret else None,
        error=error,
        notice=NOTICES.get(request.query_params.get("done", "")),
    )


@router.get(ACCOUNT)
async def account_page(request: Request, user: CurrentUser) -> Response:
    return _page(request, await _account(request, user))


@router.post(SETUP)
async def start_setup(request: Request, user: CurrentUser) -> Response:
    """A new secret, stored sealed but not required until a code confirms it."""
    account = await _account(request, user)
    if account.totp_enabled:
        return RedirectResponse(ACCOUNT, status_code=303)
    hub = web_hub(request)
    sealed = seal_totp_secret(hub.identity.protection, account.username, new_secret())
    async with hub.database.connection() as conn:
        await AccountRepository(conn).set_totp(account.username, sealed, False)
    await _audit(request, user, 200, "new TOTP secret issued (not yet required)")
    return RedirectResponse(SETUP, status_code=303)


@router.get(SETUP)
async def setup_page(request: Request, user: CurrentUser) -> Response:
    """The secret being set up, its URI, and the form for a code."""
    account = await _account(request, user)
    secret = _pending_secret(request, account)
    if secret is None:
        return RedirectResponse(ACCOUNT, status_code=303)
    return _page(request, account, secret=secret)


@router.post("/account/totp/confirm")
async def confirm(
    request: Request,
    user: CurrentUser,
    code: Annotated[str, Form(max_length=12)],
    password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """A right code from the app, and the current password (a session left open must not let
    someone else bind the account to their own authenticator), turn TOTP on; the code's step
    counts as used."""
    account = await _account(request, user)
    secret = _pending_secret(request, account)
    if secret is None:
        return RedirectResponse(ACCOUNT, status_code=303)
    if account.password_hash is not None:
        async with web_hub(request).database.connection() as conn:
            now = await conn.fetchval("SELECT now()")
            stored = None if account.locked(now) else account.password_hash
            if not await verify_password(password, stored):
                if not account.locked(now):
                    await AccountRepository(conn).record_failure(account.username)
                await _audit(request, user, 403, "TOTP not turned on: wrong password")
                return _page(
                    request, account, secret=secret, error=PASSWORD_REFUSED, status_code=403
                )
    step = matching_step(secret, code)
    if step is None:
        await _audit(request, user, 422, "TOTP not turned on: wrong code")
        return _page(request, account, secret=secret, error=CODE_REFUSED, status_code=422)
    async with web_hub(request).database.connection() as conn:
        accounts = AccountRepository(conn)
        await accounts.set_totp(account.username, account.totp_secret, True)
        await accounts.use_totp_step(account.username, step)
    await _audit(request, user, 200, "TOTP turned on")
    return RedirectResponse(f"{ACCOUNT}?done=totp-on", status_code=303)


@router.post("/account/totp/disable")
async def disable(
    request: Request, user: CurrentUser, password: Annotated[str, Form(max_length=1024)]
) -> Response:
    """The current password turns TOTP off; a wrong one counts as a failed login."""
    account = await _account(request, user)
    if not account.totp_enabled:
        return RedirectResponse(ACCOUNT, status_code=303)
    async with web_hub(request).database.connection() as conn:
        accounts = AccountRepository(conn)
        now = await conn.fetchval("SELECT now()")
        stored = None if account.locked(now) else account.password_hash
        correct = await verify_password(password, stored)
        if correct:
            await accounts.set_totp(account.username, None, False)
        elif not account.locked(now):
            await accounts.record_failure(account.username)
    if not correct:
        await _audit(request, user, 403, "TOTP not turned off: wrong password")
        return _page(request, account, error=PASSWORD_REFUSED, status_code=403)
    await _audit(request, user, 200, "TOTP turned off")
    return RedirectResponse(f"{ACCOUNT}?done=totp-off", status_code=303)
