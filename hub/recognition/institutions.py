"""Institutions as the recognition rules see them: region, medical community, QC passes.

These facts live on each hospital's FHIR Organization as extensions:

- ``organization-region`` (valueCode): its GB/T 2260 administrative division code
  (``330106``: Xihu district, Hangzhou, Zhejiang);
- ``organization-medical-community`` (valueString): the medical community (医共体/医联体)
  it belongs to;
- ``organization-qc-pass`` (complex, repeating): a passed external quality assessment, with
  ``discipline`` (valueCode: ``hematology``, ``clinical-chemistry``... or a catalogue item id),
  ``period`` (valuePeriod) and optionally ``program`` (valueString, who ran it).

``InstitutionDirectory`` keeps every Organization parsed in memory and re-reads them whenever
any changes (the change check rides on a query the service makes anyway).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import orjson

from hub.fhir.datetimes import DateFormatError, parse_range
from hub.recognition.catalogue import Scope

EXTENSION_BASE = "https://yijian-hub.org/fhir/StructureDefinition/"
REGION_URL = EXTENSION_BASE + "organization-region"
COMMUNITY_URL = EXTENSION_BASE + "organization-medical-community"
QC_PASS_URL = EXTENSION_BASE + "organization-qc-pass"


@dataclass(frozen=True)
class QcPass:
    discipline: str
    start: datetime | None
    end: datetime | None
    program: str | None = None

    def covers(self, when: datetime) -> bool:
        return (self.start is None or self.start <= when) and (self.end is None or when < self.end)


@dataclass(frozen=True)
class Institution:
    id: str
    name: str
    region: str | None = None
    community: str | None = None
    qc_passes: tuple[QcPass, ...] = ()

    def within(self, scope: Scope, performer: Institution) -> bool:
        """Whether results of ``performer`` are recognised here for an item of ``scope``."""
        if performer.id == self.id or scope == "national":
            return True
        if scope == "community":
            return bool(self.community) and self.community == performer.community
        length = {"city": 4, "province": 2}.get(scope)
        if length is None or not self.region or not performer.region:
            return False
        return self.region[:length] == performer.region[:length]

    def qc_valid(self, discipline: str | None, item_id: str, when: datetime) -> bool:
        """A pass for the item or its discipline covering ``when``."""
        wanted = {item_id} | ({discipline} if discipline else set())
        return any(p.discipline in wanted and p.covers(when) for p in self.qc_passes)


def institution(resource: Mapping[str, Any], zone: tzinfo) -> Institution:
    """The recognition facts of one Organization resource."""
    region = community = None
    passes: list[QcPass] = []
    for extension in resource.get("extension") or []:
        if not isinstance(extension, dict):
            continue
        url = extension.get("url")
        if url == REGION_URL and isinstance(extension.get("valueCode"), str):
            region = extension["valueCode"]
        elif url == COMMUNITY_URL and isinstance(extension.get("valueString"), str):
            community = extension["valueString"]
        elif url == QC_PASS_URL:
            qc = _qc_pass(extension, zone)
            if qc is not None:
                passes.append(qc)
    return Institution(
        str(resource.get("id")),
        str(resource.get("name") or resource.get("id")),
        region,
        community,
        tuple(passes),
    )


def _qc_pass(extension: Mapping[str, Any], zone: tzinfo) -> QcPass | None:
    parts = {e.get("url"): e for e in extension.get("extension") or [] if isinstance(e, dict)}
    discipline = (parts.get("discipline") or {}).get("valueCode")
    if not isinstance(discipline, str):
        return None
    period = (parts.get("period") or {}).get("valuePeriod") or {}
    try:
        start = parse_range(period["start"], zone)[0] if "start" in period else None
        end = parse_range(period["end"], zone)[1] if "end" in period else None
    except (DateFormatError, TypeError):
        return None
    program = (parts.get("program") or {}).get("valueString")
    return QcPass(discipline, start, end, program if isinstance(program, str) else None)


def qc_pass_extension(
    discipline: str, start: str | None, end: str | None, program: str | None = None
) -> dict[str, Any]:
    """The Organization extension recording one QC pass (for the CLI and the demo)."""
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    parts: list[dict[str, Any]] = [{"url": "discipline", "valueCode": discipline}]
    parts.append({"url": "period", "valuePeriod": period})
    if program:
        parts.append({"url": "program", "valueString": program})
    return {"url": QC_PASS_URL, "extension": parts}


class InstitutionDirectory:
    """Every Organization's recognition facts, rebuilt when the Organizations change."""

    def __init__(self, zone: tzinfo) -> None:
        self.zone = zone
        self._stamp: tuple[Any, ...] | None = None
        self._institutions: dict[str, Institution] = {}

    def current(self, stamp: tuple[Any, ...]) -> Mapping[str, Institution] | None:
        """The directory if ``stamp`` (count and newest change of Organizations) is the one
        it was built at; None when it must be reloaded."""
        return self._institutions if stamp == self._stamp else None

    def load(
        self, stamp: tuple[Any, ...], rows: list[tuple[str, str]]
    ) -> Mapping[str, Institution]:
        self._institutions = {
            res_id: institution(orjson.loads(content), self.zone) for res_id, content in rows
        }
        self._stamp = stamp
        return self._institutions

    def get(self, organization_id: str) -> Institution:
        return self._institutions.get(organization_id) or Institution(
            organization_id, organization_id
        )
