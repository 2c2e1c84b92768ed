"""HTML responses from Jinja2 templates (``hub/web/templates``), autoescaped.

Every template gets ``user`` (the signed-in WebUser or None), ``lang``, ``_`` (translate into
the page's language), ``csrf_token``, ``request`` and ``static(path)``: the URL of an asset
under ``/static`` with a version taken from its content, so browsers may cache assets and
still see a new build at once.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse

from hub.web.i18n import request_lang, translate

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")

environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
    autoescape=jinja2.select_autoescape(["html", "xml"], default_for_string=True),
    auto_reload=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


@functools.lru_cache(maxsize=512)
def _content_version(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256((STATIC_DIR / path).read_bytes()).hexdigest()[:12]


def static(path: str) -> str:
    """``/static/<path>?v=<content hash>`` (the hash is recomputed when the file changes)."""
    path = path.lstrip("/")
    try:
        stat = (STATIC_DIR / path).stat()
    except OSError:
        return f"/static/{path}"
    return f"/static/{path}?v={_content_version(path, stat.st_mtime_ns, stat.st_size)}"


def page_context(request: Request) -> dict[str, Any]:
    """What every template sees about the request, the user and the language."""
    lang = request_lang(request)
    user = getattr(request.state, "web_user", None)
    session = getattr(request.state, "web_session", None)
    csrf_token = user.csrf_token if user else (session.csrf_token if session else "")
    return {
        "request": request,
        "user": user,
        "lang": lang,
        "_": lambda text: translate(text, lang),
        "csrf_token": csrf_token,
        "static": static,
    }


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """Render ``template`` with the page context plus ``context`` into an HTML response."""
    html = environment.get_template(template).render({**page_context(request), **context})
    return HTMLResponse(
        html,
        status_code=status_code,
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY"},
    )


def render_error(
    request: Request, status_code: int, message: str, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    """The error page (a status, a message, a way back)."""
    response = render(request, "error.html", status_code, status=status_code, message=message)
    for name, value in (headers or {}).items():
        if name.lower() != "www-authenticate":  # a bearer challenge means nothing to a browser
            response.headers[name] = value
    return response
