"""ASGI entry point for ``yijian serve`` (and any ASGI server): ``hub.api.asgi:create``."""

from __future__ import annotations

from starlette.types import ASGIApp

from hub import logs
from hub.api.app import create_app
from hub.settings import load_settings


def create() -> ASGIApp:
    settings = load_settings()
    logs.configure(settings.log_level)
    return create_app(settings)
