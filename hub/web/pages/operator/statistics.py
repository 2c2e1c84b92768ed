"""``/ops/statistics``: the recognition dashboard — the recognition rate over time (line),
savings by period and by institution (bars), the most common decline reasons by hospital
and by item (bars and tables) — with filters (period, dates, institution) and a CSV export
of each table. The figures are ``hub.recognition.statistics``, exactly what
``/recognition/statistics`` answers for the same query."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from hub.api.dependencies import audited
from hub.fhir.datetimes import DateFormatError, parse_range
from hub.recognition.repository import RecognitionRepository
from hub.recognition.statistics import (
    PERIODS,
    StatisticsQuery,
    as_csv,
    recognition_statistics,
)
from hub.security import policy
from hub.web import charts
from hub.web.dependencies import web_hub
from hub.web.i18n import request_lang, translate, translator
from hub.web.pages.operator.admin import AdminUser, organization_names
from hub.web.rendering import render

router = APIRouter()

# The dashboard's tables: name → (group by, by period).
TABLES: dict[str, tuple[tuple[str, ...], bool]] = {
    "trend": ((), True),
    "organization": (("organization",), False),
    "item": (("item",), False),
}
TOP_REASONS = 8


@dataclass(frozen=True)
class Filters:
    """The dashboard's filters, as given in the query string (dates as typed)."""

    period: str = "month"
    start: str = ""
    end: str = ""
    organization: str = ""

    @classmethod
    def of(cls, request: Request) -> Filters:
        params = request.query_params
        period = params.get("period", "month")
        return cls(
            period if period in PERIODS else "month",
            params.get("from", "").strip(),
            params.get("to", "").strip(),
            params.get("organization", "").strip(),
        )

    def query(self, table: str, zone: Any, timezone: str) -> StatisticsQuery:
        group_by, by_period = TABLES[table]
        return StatisticsQuery(
            group_by=group_by,
            period=self.period if by_period else None,
            start=_instant(self.start, zone) if self.start else None,
            end=_instant(self.end, zone) if self.end else None,
            organization=self.organization or None,
            zone=timezone,
        )

    def query_string(self) -> str:
        return urlencode(
            {
                "period": self.period,
                "from": self.start,
                "to": self.end,
                "organization": self.organization,
            }
        )


class UnreadableDate(ValueError):
    """A filter's date that cannot be read (its text as typed)."""


def _instant(text: str, zone: Any) -> datetime:
    try:
        return parse_range(text, zone)[0]
    except (DateFormatError, ValueError):
        raise UnreadableDate(text) from None


async def _figures(
    request: Request, user: AdminUser, filters: Filters, tables: tuple[str, ...]
) -> dict[str, list[dict[str, Any]]]:
    hub = web_hub(request)
    policy.require_recognition(user.principal, "statistics")
    reasons = list(hub.recognition.decline_reasons)
    zone, timezone = hub.recognition.zone, hub.settings.default_timezone
    try:
        queries = {name: filters.query(name, zone, timezone) for name in tables}
    except UnreadableDate as error:
        message = translator(request)(
            "日期 {date} 无法识别（应为 2025-01-31 这样的日期）。", date=error.args[0]
        )
        raise HTTPException(400, message) from None
    async with (
        audited(request, user.principal, "recognition:statistics", "R"),
        hub.database.connection() as connection,
    ):
        return {
            name: await recognition_statistics(connection, query, reasons)
            for name, query in queries.items()
        }


def _reason_label(hub: Any, code: str, lang: str) -> str:
    concept = hub.recognition.decline_reasons.get(code) or {}
    if lang != "en":
        for designation in concept.get("designation") or []:
            if str(designation.get("language", "")).startswith("zh"):
                return str(designation["value"])
    return str(concept.get("display") or code)


@router.get("/ops/statistics")
async def dashboard(request: Request, user: AdminUser) -> Response:
    hub = web_hub(request)
    filters = Filters.of(request)
    figures = await _figures(request, user, filters, tuple(TABLES))
    lang = request_lang(request)
    _ = lambda text: translate(text, lang)  # noqa: E731
    names = await organization_names(request, user)
    async with hub.database.connection() as connection:
        catalogue = await hub.recognition.catalogue(RecognitionRepository(connection))
    item_names = {
        item.id: (item.name.en if lang == "en" else item.name.zh)
        for item in catalogue.items.values()
    }
    trend = figures["trend"]
    rate_points = [
        (datetime.fromisoformat(row["period"]), row["recognition_rate"] * 100, False)
        for row in trend
        if row["recognition_rate"] is not None
    ]
    totals: dict[str, int] = {}
    for row in figures["organization"]:
        for code, count in row["declined_by_reason"].items():
            totals[code] = totals.get(code, 0) + count
    top = sorted(totals.items(), key=lambda pair: (-pair[1], pair[0]))[:TOP_REASONS]
    reason_labels = {
        code: _reason_label(hub, code, lang) for code in hub.recognition.decline_reasons
    }
    summary = {
        key: sum(row[key] for row in trend)
        for key in ("reminders", "viewed", "accepted", "declined", "overlooked", "saved_cny")
    }
    shown = summary["reminders"]
    summary["recognition_rate"] = summary["accepted"] / shown if shown else None
    summary["access_rate"] = summary["viewed"] / shown if shown else None
    return render(
        request,
        "ops/statistics.html",
        filters=filters,
        periods=PERIODS,
        hospitals=names,
        item_names=item_names,
        figures=figures,
        summary=summary,
        reason_labels=reason_labels,
        top_reasons=[code for code, _count in top],
        charts={
            "rate": charts.line_chart(
                rate_points,
                unit="%",
                y_min=0,
                y_max=100,
                title=_("互认率随时间变化"),
                empty_text=_("所选范围内没有互认提醒"),
            ),
            "savings": charts.bar_chart(
                [(row["period"], row["saved_cny"]) for row in trend],
                unit=_("元"),
                title=_("各期节省费用"),
                empty_text=_("所选范围内没有互认提醒"),
            ),
            "savings_by_org": charts.bar_chart(
                sorted(
                    (
                        (
                            names.get(row["organization"], row["organization"] or "—"),
                            row["saved_cny"],
                        )
                        for row in figures["organization"]
                    ),
                    key=lambda bar: -bar[1],
                ),
                unit=_("元"),
                title=_("各医院节省费用"),
                horizontal=True,
                empty_text=_("所选范围内没有互认提醒"),
            ),
            "reasons": charts.bar_chart(
                [(reason_labels.get(code, code), count) for code, count in top],
                title=_("最常见的不互认原因"),
                horizontal=True,
                empty_text=_("所选范围内没有不互认记录"),
            ),
        },
        query_string=filters.query_string(),
    )


@router.get("/ops/statistics.csv")
async def export(request: Request, user: AdminUser, table: str = "trend") -> Response:
    """One table of the dashboard as CSV (the same columns as the API's CSV)."""
    if table not in TABLES:
        raise HTTPException(404, translator(request)("没有统计表 {table}。", table=table))
    hub = web_hub(request)
    filters = Filters.of(request)
    rows = (await _figures(request, user, filters, (table,)))[table]
    group_by, by_period = TABLES[table]
    body = as_csv(rows, group_by, by_period, list(hub.recognition.decline_reasons))
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="recognition-{table}.csv"',
            "Cache-Control": "no-store",
        },
    )
