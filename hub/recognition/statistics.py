"""Recognition statistics: reminders shown, viewed, accepted, declined (by reason), overlooked,
tests avoided and CNY saved, per any of institution, department, doctor, item and period.

Rates are over reminders shown: the access rate is viewed / shown, the recognition rate
accepted / shown. A reminder's latest decision counts; "overlooked" is a reminder neither
viewed nor decided. A test avoided is an accepted reminder, and saves the item's price as it
was when the reminder was shown.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

DIMENSIONS = {
    "organization": "r.organization",
    "department": "r.department",
    "practitioner": "r.practitioner",
    "item": "r.item_id",
    "result_organization": "r.result_org",
    "source": "r.source",
}
PERIODS = ("day", "week", "month", "quarter", "year")
MEASURES = (
    "reminders",
    "viewed",
    "accepted",
    "declined",
    "overlooked",
    "tests_avoided",
    "saved_cny",
    "access_rate",
    "recognition_rate",
)


@dataclass(frozen=True)
class StatisticsQuery:
    group_by: Sequence[str] = ()
    period: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    organization: str | None = None  # only reminders shown at this institution
    zone: str = "Asia/Shanghai"

    def __post_init__(self) -> None:
        unknown = [g for g in self.group_by if g not in DIMENSIONS]
        if unknown:
            raise ValueError(f"cannot group by {', '.join(unknown)}; use {', '.join(DIMENSIONS)}")
        if self.period is not None and self.period not in PERIODS:
            raise ValueError(f"period must be one of {', '.join(PERIODS)}")


async def recognition_statistics(
    connection: asyncpg.Connection, query: StatisticsQuery, reasons: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per group: the dimensions, the counts, ``declined_by_reason`` and the rates."""
    keys = [(name, DIMENSIONS[name]) for name in query.group_by]
    if query.period:
        keys.insert(
            0,
            (
                "period",
                f"to_char(date_trunc('{query.period}', r.shown_at AT TIME ZONE $4), 'YYYY-MM-DD')",
            ),
        )
    selected = [f"{expression} AS {name}" for name, expression in keys]
    by_reason = [
        f"count(*) FILTER (WHERE d.outcome = 'declined' AND d.reason_code = '{code}')"
        f' AS "declined:{code}"'
        for code in reasons
        if code.replace("-", "").isalnum()
    ]
    sql = f"""
        SELECT {", ".join([*selected, ""])}
            count(*) AS reminders,
            count(*) FILTER (WHERE r.viewed_at IS NOT NULL) AS viewed,
            count(*) FILTER (WHERE d.outcome = 'accepted') AS accepted,
            count(*) FILTER (WHERE d.outcome = 'declined') AS declined,
            count(*) FILTER (WHERE r.viewed_at IS NULL AND d.outcome IS NULL) AS overlooked,
            COALESCE(sum(r.price_cny) FILTER (WHERE d.outcome = 'accepted'), 0) AS saved_cny
            {"".join(", " + c for c in by_reason)}
        FROM recognition_reminder r
        LEFT JOIN LATERAL (
            SELECT outcome, reason_code FROM recognition_decision
            WHERE reminder_id = r.id ORDER BY id DESC LIMIT 1) d ON true
        WHERE ($1::timestamptz IS NULL OR r.shown_at >= $1)
          AND ($2::timestamptz IS NULL OR r.shown_at < $2)
          AND ($3::text IS NULL OR r.organization = $3)
        {"GROUP BY " + ", ".join(str(n + 1) for n in range(len(keys))) if keys else ""}
        {"ORDER BY " + ", ".join(str(n + 1) for n in range(len(keys))) if keys else ""}
    """
    args: list[Any] = [query.start, query.end, query.organization]
    if query.period:
        args.append(query.zone)
    rows = await connection.fetch(sql, *args)
    out = []
    for row in rows:
        shown = row["reminders"]
        item: dict[str, Any] = {name: row[name] for name, _ in keys}
        item.update(
            reminders=shown,
            viewed=row["viewed"],
            accepted=row["accepted"],
            declined=row["declined"],
            declined_by_reason={
                code: row[f"declined:{code}"] for code in reasons if row[f"declined:{code}"]
            },
            overlooked=row["overlooked"],
            tests_avoided=row["accepted"],
            saved_cny=float(row["saved_cny"]),
            access_rate=round(row["viewed"] / shown, 4) if shown else None,
            recognition_rate=round(row["accepted"] / shown, 4) if shown else None,
        )
        out.append(item)
    return out


def _cell(value: Any) -> Any:
    """A CSV cell; text that a spreadsheet would run as a formula is quoted with '."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def as_csv(
    rows: list[dict[str, Any]], group_by: Sequence[str], period: bool, reasons: Sequence[str]
) -> str:
    """The statistics as CSV (UTF-8 with a BOM, so that spreadsheet programs read Chinese)."""
    columns = (["period"] if period else []) + list(group_by) + list(MEASURES)
    columns += [f"declined_{code}" for code in reasons]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        flat = dict(row)
        for code in reasons:
            flat[f"declined_{code}"] = row["declined_by_reason"].get(code, 0)
        writer.writerow([_cell(flat.get(c)) for c in columns])
    return "\ufeff" + buffer.getvalue()
