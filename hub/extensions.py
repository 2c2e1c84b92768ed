"""Parts of the hub that live in other packages, found through entry points.

The hub never imports ``imaging/`` (or an adapter): a package that adds HTTP routes or
commands declares them in its ``pyproject.toml`` and the hub loads what is installed.

- ``yijian.routes``: a callable returning Starlette routes (e.g. ``Mount("/dicomweb", …)``),
  placed in front of the FastAPI application; handlers find the hub at ``request.app.state.hub``.
- ``yijian.commands``: a click command (or group) added to the ``yijian`` command line.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from starlette.routing import BaseRoute

log = logging.getLogger(__name__)

ROUTES_GROUP = "yijian.routes"
COMMANDS_GROUP = "yijian.commands"


def extension_routes() -> list[BaseRoute]:
    """Routes of every installed extension, in entry-point name order."""
    routes: list[BaseRoute] = []
    for entry in sorted(entry_points(group=ROUTES_GROUP), key=lambda e: e.name):
        routes.extend(entry.load()())
    return routes


def extension_commands() -> list[Any]:
    """Click commands of every installed extension, in entry-point name order."""
    found = sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name)
    return [entry.load() for entry in found]
