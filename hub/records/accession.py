"""Imaging reports and their studies meet by accession number, whichever arrives first.

A DiagnosticReport and an ImagingStudy of one hospital carrying the same accession number
(an Identifier typed v2-0203 ``ACSN``, in the hospital's accession system) belong together:
the report gets ``imagingStudy`` references to every such study. A report written after its
study is linked as it is written; a study written after its report adds itself to the
report, as a new version of the report, in the same transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ACCESSION_TYPE = ("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN")


def accession_numbers(resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(system, value) of each accession-number Identifier that has both."""
    for identifier in resource.get("identifier") or []:
        if not isinstance(identifier, dict):
            continue
        system, value = identifier.get("system"), identifier.get("value")
        if not isinstance(system, str) or not isinstance(value, str) or not system or not value:
            continue
        codings = (identifier.get("type") or {}).get("coding") or []
        if any(
            isinstance(c, dict) and (c.get("system"), c.get("code")) == ACCESSION_TYPE
            for c in codings
        ):
            yield system, value


def add_study_references(report: dict[str, Any], study_ids: list[str]) -> bool:
    """Add ``imagingStudy`` references the report lacks; whether it changed."""
    existing = report.get("imagingStudy") or []
    have = {r.get("reference") for r in existing if isinstance(r, dict)}
    added = [
        {"reference": f"ImagingStudy/{i}"} for i in study_ids if f"ImagingStudy/{i}" not in have
    ]
    if added:
        report["imagingStudy"] = [*existing, *added]
    return bool(added)


def accession_lock(system: str, value: str) -> str:
    """The advisory-lock key that serialises writers of one accession number."""
    return f"accession:{system}|{value}"
