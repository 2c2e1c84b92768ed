"""Cross-site request forgery defences for the web pages.

Two checks on every unsafe request (POST, PUT, PATCH, DELETE):

- the synchronizer token: the form field ``csrf_token`` or the header ``X-CSRF-Token`` (what
  htmx sends, from ``<body hx-headers>``) must equal the session's token, compared in constant
  time;
- the origin: an ``Origin`` header, when the browser sends one, must name this host.

Together with ``SameSite=Lax`` session cookies, a page on another site can neither read the
token nor make the browser send an authenticated unsafe request that passes.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.requests import Request

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_FIELD = "csrf_token"
HEADER = "x-csrf-token"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def same_origin(request: Request, public_base_url: str | None = None) -> bool:
    """False only when an ``Origin`` header names another scheme/host/port than this one."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    if origin == "null":  # sandboxed frames, some redirects: never trusted
        return False
    parts = urlsplit(origin)
    host = request.headers.get("host", "")
    allowed = {host.lower()}
    if public_base_url:
        allowed.add(urlsplit(public_base_url).netloc.lower())
    return parts.scheme in ("http", "https") and parts.netloc.lower() in allowed


async def submitted_token(request: Request) -> str | None:
    """The token a request carries: the header first, else the form field."""
    header = request.headers.get(HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(FORM_TYPES):
        form = await request.form()  # cached by Starlette: the endpoint reads the same form
        value = form.get(FORM_FIELD)
        return value if isinstance(value, str) else None
    return None


def tokens_match(expected: str, submitted: str | None) -> bool:
    return submitted is not None and hmac.compare_digest(expected.encode(), submitted.encode())
