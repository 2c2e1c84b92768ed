"""One value over time: the numeric Observations of one code (LOINC), oldest first, from every
hospital, with their reference ranges and flags. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from hub.workstation.timeline import LabValue, effective_of, lab_value, performer_of


@dataclass(frozen=True)
class TrendPoint:
    at: datetime
    value: LabValue
    performer: str | None


def _codes(observation: Mapping[str, Any]) -> set[str]:
    out = set()
    for coding in (observation.get("code") or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("code"):
            out.add(f"{coding.get('system') or ''}|{coding['code']}")
            out.add(str(coding["code"]))
    return out


def parse_code(text: str) -> str:
    """``system|code`` or a bare code (LOINC codes are matched bare too)."""
    return "".join(ch for ch in text if ch.isprintable()).strip()[:200]


def trend(resources: Iterable[Mapping[str, Any]], code: str, zone: tzinfo) -> list[TrendPoint]:
    """The numeric values of ``code``, oldest first."""
    points = []
    for resource in resources:
        if resource.get("resourceType") != "Observation" or code not in _codes(resource):
            continue
        if resource.get("status") in ("entered-in-error", "cancelled"):
            continue
        value = lab_value(resource)
        at = effective_of(resource, zone)
        if value.numeric is None or at is None:
            continue
        points.append(TrendPoint(at, value, performer_of(resource)))
    points.sort(key=lambda p: p.at)
    return points
