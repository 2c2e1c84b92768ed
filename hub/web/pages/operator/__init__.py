"""The operator pages under ``/ops`` (admins only): hospitals and feeds, the unmapped-code
worklist, dead letters, identity review tasks, the recognition catalogue and the statistics
dashboard. The access log and the break-glass report (``/ops/access``,
``/ops/break-glass``) are in ``hub.web.pages.access``; the overview links to them.

Every action goes through the service the admin JSON API and the CLI use, audited the same
way, as the signed-in admin's principal.
"""

from __future__ import annotations

from fastapi import APIRouter

from hub.web.pages.operator import (
    catalogue,
    dead_letters,
    hospitals,
    identity,
    overview,
    statistics,
    unmapped,
)

router = APIRouter()
for _module in (overview, hospitals, unmapped, dead_letters, identity, catalogue, statistics):
    router.include_router(_module.router)
