"""The ``yijian.statistics`` task: per feed and day counts of what was received.

``ingest_statistics`` is refreshed for the last ``days`` days (today included), days being
calendar days in the hub's default time zone (Asia/Shanghai unless configured): for each feed,
``messages`` (logged messages), ``resources`` (resources written by accepted, ``AA``,
messages), ``errors`` (messages answered ``AE``) and ``dead_letters`` (rejected messages kept
for operators; those whose feed could not be determined are counted under ``(unknown)``).
A day and feed already in the table but with nothing left to count is set to zeros, so the
table always agrees with the logs for the refreshed days. Older days are left as they are.

One statement, so the refresh is atomic and needs no application-side state. It gives up on a
lock it cannot get within ``LOCK_TIMEOUT`` (say, a migration holds the table): background work
must never queue in front of ingest; the task is retried later with back-off.
"""

from __future__ import annotations

import asyncpg

from hub.runtime import Hub
from hub.tasks.runner import TaskResult, hub_task

DEFAULT_DAYS = 2
MAX_DAYS = 366
UNKNOWN_FEED = "(unknown)"
LOCK_TIMEOUT = "1s"

REFRESH_SQL = """
WITH bounds AS (
    SELECT ((now() AT TIME ZONE $2)::date - ($1::int - 1)) AS first_day
), since AS (
    SELECT first_day, (first_day::timestamp AT TIME ZONE $2) AS first_instant FROM bounds
), messages AS (
    SELECT (m.received_at AT TIME ZONE $2)::date AS day,
           m.feed_id,
           count(*) AS messages,
           coalesce(sum(m.resources) FILTER (WHERE m.ack_code = 'AA'), 0) AS resources,
           count(*) FILTER (WHERE m.ack_code = 'AE') AS errors
    FROM ingest_message m, since
    WHERE m.received_at >= since.first_instant
    GROUP BY 1, 2
), dead AS (
    SELECT (d.received_at AT TIME ZONE $2)::date AS day,
           coalesce(d.feed_id, $3) AS feed_id,
           count(*) AS dead_letters
    FROM dead_letter d, since
    WHERE d.received_at >= since.first_instant
    GROUP BY 1, 2
), keys AS (
    SELECT day, feed_id FROM messages
    UNION SELECT day, feed_id FROM dead
    UNION SELECT s.day, s.feed_id FROM ingest_statistics s, since WHERE s.day >= since.first_day
)
INSERT INTO ingest_statistics AS s
    (day, feed_id, messages, resources, errors, dead_letters, refreshed_at)
SELECT k.day, k.feed_id,
       coalesce(m.messages, 0), coalesce(m.resources, 0), coalesce(m.errors, 0),
       coalesce(d.dead_letters, 0), now()
FROM keys k
LEFT JOIN messages m ON m.day = k.day AND m.feed_id = k.feed_id
LEFT JOIN dead d ON d.day = k.day AND d.feed_id = k.feed_id
ORDER BY k.day, k.feed_id
ON CONFLICT (day, feed_id) DO UPDATE SET
    messages = EXCLUDED.messages,
    resources = EXCLUDED.resources,
    errors = EXCLUDED.errors,
    dead_letters = EXCLUDED.dead_letters,
    refreshed_at = EXCLUDED.refreshed_at
"""


async def refresh_statistics(conn: asyncpg.Connection, timezone: str, days: int) -> int:
    """Refresh ``ingest_statistics`` for the last ``days`` days; return the rows written."""
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be between 1 and {MAX_DAYS}, not {days}")
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        status = await conn.execute(REFRESH_SQL, days, timezone, UNKNOWN_FEED)
    return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <rows>"


@hub_task("yijian.statistics")
async def statistics(hub: Hub, days: int = DEFAULT_DAYS) -> TaskResult:
    """Refresh the ingest statistics of the last ``days`` days (scheduled every 5 minutes)."""
    async with hub.database.connection() as conn:
        rows = await refresh_statistics(conn, hub.settings.default_timezone, int(days))
    return {"days": int(days), "rows": rows}
