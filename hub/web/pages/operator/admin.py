"""What every operator page shares: the admin user, hospital names, notices after an action.

The operator pages act as the signed-in admin (``user.principal``, client id
``user:<name>``) through the same services and audit records as the admin JSON API and the
CLI; nothing here reads a table of its own.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, Request

from hub.api.dependencies import audited
from hub.records.unit_of_work import unit_of_work
from hub.security.principals import ClientKind
from hub.web.dependencies import WebUser, require_role, web_hub

admin_user = require_role(ClientKind.ADMIN)
AdminUser = Annotated[WebUser, Depends(admin_user)]
"""The signed-in admin (403 for every other role)."""

# What a page says after a successful action (a code in ``?done=``, never free text).
NOTICES = {
    "hospital-added": "医院已登记。",
    "hospital-exists": "该标识的医院已登记，未作更改。",
    "feed-added": "数据源已登记。",
    "statistics-refreshed": "接入统计已刷新。",
    "mapped": "编码已映射，已安排回填既往结果。",
    "replayed": "死信已重放并被接收。",
    "discarded": "死信已作废。",
    "replays-queued": "已安排重放全部未处理的死信。",
    "linked": "已关联为同一患者。",
    "dismissed": "已确认不是同一患者。",
    "item-saved": "目录项目已保存为新版本。",
    "item-removed": "目录项目已移除（新版本）。",
}


def notice(request: Request) -> str | None:
    """The notice named by ``?done=`` (None for none or an unknown code)."""
    return NOTICES.get(request.query_params.get("done", ""))


async def organizations(request: Request, user: WebUser) -> list[dict[str, Any]]:
    """Every Organization (as the admin reads them through the record service, audited),
    by name."""
    hub = web_hub(request)
    async with (
        audited(request, user.principal, "search-type", "E") as audit,
        unit_of_work(hub.database, transaction=False) as uow,
    ):
        result = await hub.records.search(
            uow, user.principal, "Organization", [("_count", "1000")], strict=False
        )
        audit.capture(uow)
    found = [orjson.loads(stored.content or "{}") for stored in result.page.rows]
    return sorted(found, key=lambda body: (str(body.get("name") or ""), str(body.get("id"))))


async def organization_names(request: Request, user: WebUser) -> dict[str, str]:
    """Organization id → name."""
    return {
        str(body.get("id")): str(body.get("name") or body.get("id"))
        for body in await organizations(request, user)
    }
