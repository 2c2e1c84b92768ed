"""The web router: every page module's routes, the static assets and the login redirect.

Two layers of dependencies make the defences automatic: every web route is marked as a page
(errors render ``error.html``) and refuses cross-origin unsafe requests (``web_page``); every
route of a page module also needs the session's CSRF token on unsafe methods
(``csrf_protect``). Page modules that are not in this build yet are skipped.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from hub.web.dependencies import LoginRequired, csrf_protect, web_page
from hub.web.pages import auth
from hub.web.rendering import STATIC_DIR

log = logging.getLogger(__name__)

PAGE_MODULES = (
    "hub.web.pages.workstation",
    "hub.web.pages.consults",
    "hub.web.pages.operator",
    "hub.web.pages.access",
    "hub.web.pages.launch",
    "hub.web.pages.account",
)


def _optional_module(name: str) -> ModuleType | None:
    """The page module ``name``, or None when it does not exist (yet); any other import
    error is a bug and propagates."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name:
            return None
        raise


def _build_router() -> APIRouter:
    router = APIRouter(dependencies=[Depends(web_page)], include_in_schema=False)
    router.include_router(auth.public_router)
    protected = APIRouter(dependencies=[Depends(csrf_protect)])
    protected.include_router(auth.router)
    for name in PAGE_MODULES:
        module = _optional_module(name)
        if module is None:
            log.debug("web page module %s is not in this build", name)
            continue
        protected.include_router(module.router)
    router.include_router(protected)
    router.include_router(auth.home_router)  # last: a page module's own "/" comes first
    return router


router = _build_router()


async def _login_required(request: Request, error: Exception) -> Response:
    """To the login page, coming back to the page asked for; htmx follows ``HX-Redirect``
    (a redirected fragment request would put the login page inside the page)."""
    assert isinstance(error, LoginRequired)
    target = "/login?next=" + quote(error.next_url, safe="/")
    if request.headers.get("hx-request"):
        return Response(status_code=401, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def install(api: FastAPI) -> None:
    """Add the web pages, ``/static`` and the login redirect to the FastAPI app."""
    api.include_router(router)
    api.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    api.add_exception_handler(LoginRequired, _login_required)
