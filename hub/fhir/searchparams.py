"""The registry of search parameters, built from SearchParameter resources held as data.

Nothing here is per resource type: the definitions in ``fhir_profiles/search-parameters.json``
say which parameters exist, their types and the FHIRPath (subset) that extracts their values.
``_id`` and ``_lastUpdated`` are answered from the resource table's own columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import fhir_profiles
from hub.fhir.paths import CompiledPath, compile_expression

# The resource types the hub serves, in CapabilityStatement order.
RESOURCE_TYPES: tuple[str, ...] = (
    "Patient",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Observation",
    "DiagnosticReport",
    "ImagingStudy",
    "Specimen",
    "ServiceRequest",
    "Encounter",
    "Consent",
    "Provenance",
    "AuditEvent",
    "Endpoint",
    "Basic",
)

INDEXED_TYPES = frozenset({"token", "string", "date", "reference", "quantity", "uri"})
COLUMN_PARAMS = {"_id": "res_id", "_lastUpdated": "last_updated"}


@dataclass(frozen=True)
class SearchParam:
    """One search parameter as it applies to one resource type."""

    code: str
    type: str
    resource_type: str
    url: str
    expression: str
    path: CompiledPath | None = None  # None for column parameters
    targets: tuple[str, ...] = ()
    column: str | None = None  # resource-table column for _id / _lastUpdated

    @property
    def indexed(self) -> bool:
        return self.column is None


@dataclass
class SearchParamRegistry:
    """Search parameters by resource type and code."""

    by_type: dict[str, dict[str, SearchParam]] = field(default_factory=dict)

    @classmethod
    def from_definitions(
        cls, definitions: Iterable[dict[str, Any]], resource_types: Iterable[str]
    ) -> SearchParamRegistry:
        registry = cls({rt: {} for rt in resource_types})
        for definition in definitions:
            registry._add(definition)
        return registry

    @classmethod
    def default(cls) -> SearchParamRegistry:
        return cls.from_definitions(fhir_profiles.search_parameters(), RESOURCE_TYPES)

    def _add(self, definition: dict[str, Any]) -> None:
        code, kind = definition["code"], definition["type"]
        if kind not in INDEXED_TYPES:
            return
        bases = definition.get("base", [])
        types = list(self.by_type) if "Resource" in bases else [b for b in bases]
        compiled = None if code in COLUMN_PARAMS else compile_expression(definition["expression"])
        for resource_type in types:
            if resource_type not in self.by_type:
                continue
            path = compiled.for_type(resource_type) if compiled else None
            if path is not None and not path.terms:
                continue
            self.by_type[resource_type][code] = SearchParam(
                code=code,
                type=kind,
                resource_type=resource_type,
                url=definition.get("url", ""),
                expression=definition.get("expression", ""),
                path=path,
                targets=tuple(definition.get("target", ())),
                column=COLUMN_PARAMS.get(code),
            )

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self.by_type.get(resource_type, {}).get(code)

    def for_type(self, resource_type: str) -> list[SearchParam]:
        return list(self.by_type.get(resource_type, {}).values())

    def indexed_for_type(self, resource_type: str) -> list[SearchParam]:
        return [p for p in self.for_type(resource_type) if p.indexed]
