"""FHIR date, dateTime and instant values as half-open time ranges.

A FHIR date has a precision: ``2026`` is the whole year, ``2026-11-20`` a day,
``2026-11-20T10:00:00+08:00`` a second. Both indexing and search turn a value into the range
``[low, high)`` that it covers, so that search prefixes compare ranges as the spec describes.
Values without a time zone are read in the hub's default zone (Asia/Shanghai unless configured).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

_PATTERN = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d+)?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


class DateFormatError(ValueError):
    """A string that is not a FHIR date, dateTime or instant."""


def parse_range(value: str, default_zone: tzinfo) -> tuple[datetime, datetime]:
    """The half-open UTC range ``[low, high)`` covered by a FHIR date/dateTime/instant."""
    match = _PATTERN.match(value.strip())
    if not match:
        raise DateFormatError(f"not a FHIR date or dateTime: {value!r}")
    parts = match.groupdict()
    try:
        zone = _zone(parts["zone"], default_zone)  # ValueError beyond ±24:00
        year = int(parts["year"])
        if parts["month"] is None:
            low = datetime(year, 1, 1, tzinfo=zone)
            return _utc(low), _utc(datetime(year + 1, 1, 1, tzinfo=zone))
        month = int(parts["month"])
        if parts["day"] is None:
            low = datetime(year, month, 1, tzinfo=zone)
            high = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=zone)
            return _utc(low), _utc(high)
        day = int(parts["day"])
        if parts["hour"] is None:
            low = datetime(year, month, day, tzinfo=zone)
            return _utc(low), _utc(low + timedelta(days=1))
        low = datetime(
            year,
            month,
            day,
            int(parts["hour"]),
            int(parts["minute"]),
            int(parts["second"] or 0),
            tzinfo=zone,
        )
        if parts["second"] is None:
            return _utc(low), _utc(low + timedelta(minutes=1))
        if parts["fraction"]:
            digits = parts["fraction"][1:7]
            micro = int(digits.ljust(6, "0"))
            low = low.replace(microsecond=micro)
            return _utc(low), _utc(low + timedelta(microseconds=10 ** (6 - len(digits))))
        return _utc(low), _utc(low + timedelta(seconds=1))
    except (ValueError, OverflowError) as error:  # month 13, day 32, hour 25, year 10000...
        raise DateFormatError(f"not a valid date: {value!r} ({error})") from None


def _zone(text: str | None, default_zone: tzinfo) -> tzinfo:
    if text is None:
        return default_zone
    if text == "Z":
        return UTC
    sign = 1 if text[0] == "+" else -1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)


def zone(name: str) -> tzinfo:
    return ZoneInfo(name)


def instant(moment: datetime) -> str:
    """Format a moment as a FHIR instant in UTC with millisecond precision."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
