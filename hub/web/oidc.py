"""OpenID Connect single sign-on (placeholder until the flow lands)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from hub.settings import Settings
from hub.web.accounts import WebAccount


async def start(request: Request, name: str, next_url: str) -> Response:
    raise HTTPException(404, "没有这个统一身份认证提供方。")


async def finish(request: Request, name: str) -> tuple[WebAccount, str]:
    raise HTTPException(404, "没有这个统一身份认证提供方。")


def clear_flow_cookie(response: Response, settings: Settings) -> None:
    return None
