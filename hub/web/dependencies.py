"""FastAPI dependencies of the web pages: who is signed in, role checks and CSRF.

Every web route passes through ``web_page`` (the web router's dependency): it marks the
request as a page, so errors are answered with ``error.html`` instead of a FHIR
OperationOutcome, and it refuses a cross-origin unsafe request. The session-bound router
adds ``csrf_protect``, so no page author has to remember it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from hub.runtime import Hub
from hub.security.principals import ClientKind, Principal
from hub.web.accounts import principal_of
from hub.web.csrf import UNSAFE_METHODS, same_origin, submitted_token, tokens_match
from hub.web.sessions import SESSION_COOKIE, SessionRecord, SessionStore


class LoginRequired(Exception):
    """No live session: the app answers with a 303 to ``/login?next=<path>``."""

    def __init__(self, next_url: str = "/"):
        super().__init__("login required")
        self.next_url = next_url


@dataclass(frozen=True)
class WebUser:
    """The person behind a page request."""

    username: str
    display_name: str
    role: ClientKind
    organization: str
    principal: Principal
    session_id: str
    csrf_token: str


def web_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def mark_web(request: Request) -> None:
    """Mark a request as a web page (errors become HTML pages)."""
    request.state.web = True


def is_web_request(request: Request) -> bool:
    return bool(getattr(request.state, "web", False))


def next_target(request: Request) -> str:
    """The path and query of a request, to come back to after login."""
    path = request.url.path
    return path + ("?" + request.url.query if request.url.query else "")


def safe_next(value: str | None) -> str:
    """A local path to go to after login (never another site: no scheme, no ``//``)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


async def web_page(request: Request) -> None:
    """The dependency of every web route: the page marker and the Origin check."""
    mark_web(request)
    if request.method in UNSAFE_METHODS and not same_origin(
        request, web_hub(request).settings.public_base_url
    ):
        raise HTTPException(403, "请求来自其他站点，已拒绝。")


async def current_session(request: Request) -> SessionRecord | None:
    """The request's live session (looked up once per request), pending MFA or not."""
    if hasattr(request.state, "web_session"):
        session: SessionRecord | None = request.state.web_session
        return session
    token = request.cookies.get(SESSION_COOKIE)
    session = None
    if token:
        hub = web_hub(request)
        async with hub.database.connection() as conn:
            session = await SessionStore(conn, hub.settings).touch(token)
    request.state.web_session = session
    return session


async def current_user(request: Request) -> WebUser:
    """The signed-in user; ``LoginRequired`` (→ 303 to the login page) without one."""
    mark_web(request)
    user: WebUser | None = getattr(request.state, "web_user", None)
    if user is not None:
        return user
    session = await current_session(request)
    if session is None or session.mfa_pending:
        raise LoginRequired(next_target(request))
    user = WebUser(
        session.username,
        session.display_name,
        session.role,
        session.organization,
        principal_of(session.username, session.display_name, session.role, session.organization),
        session.session_id,
        session.csrf_token,
    )
    request.state.web_user = user
    return user


CurrentUser = Annotated[WebUser, Depends(current_user)]
"""The signed-in user of a page (a redirect to ``/login`` without one)."""


def require_role(*roles: ClientKind) -> Callable[[WebUser], Awaitable[WebUser]]:
    """A dependency: the signed-in user, when their role is one of ``roles``; else 403."""

    async def dependency(user: CurrentUser) -> WebUser:
        if user.role not in roles:
            raise HTTPException(403, "您的角色无权访问此页面。")
        return user

    return dependency


async def csrf_protect(request: Request) -> None:
    """For unsafe methods: the session's CSRF token must come with the request (403 if not).

    Without a session the request is sent to the login page (there is nothing to protect).
    """
    mark_web(request)
    if request.method not in UNSAFE_METHODS:
        return
    session = await current_session(request)
    if session is None:
        raise LoginRequired("/")
    if not tokens_match(session.csrf_token, await submitted_token(request)):
        raise HTTPException(403, "安全令牌无效或已过期，请刷新页面后重试。")
