"""Code maps: a feed's local test codes → LOINC, UCUM unit and hub catalogue item.

A code map is kept as a FHIR ConceptMap (files in ``fhir_profiles/conceptmaps/``, editable at
run time through the admin API and CLI). In the pipeline it is a plain dictionary lookup.

ConceptMap conventions: one ``group`` with ``source`` = the feed's local code system and
``target`` = ``http://loinc.org``; each ``element`` is a local code with one ``target`` whose
``equivalence`` is ``equivalent`` (or ``wider``/``narrower``...). The UCUM unit and the
catalogue item ride on the target as ``dependsOn``-free extensions (URLs below).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
UNIT_EXTENSION = "https://yijian-hub.org/fhir/StructureDefinition/conceptmap-ucum-unit"
CATALOGUE_EXTENSION = "https://yijian-hub.org/fhir/StructureDefinition/conceptmap-catalogue-item"


@dataclass(frozen=True)
class CodeTarget:
    """What one local code means in the hub."""

    code: str  # LOINC code
    display: str = ""
    unit: str | None = None  # UCUM code of the unit the hospital reports in, e.g. 10*9/L
    catalogue: str | None = None  # recognition catalogue item id
    system: str = LOINC


@dataclass(frozen=True)
class CodeMap:
    """One feed's mappings. ``source_system`` is the URI of its local codes."""

    source_system: str
    targets: Mapping[str, CodeTarget]
    version: str = ""

    def get(self, code: str) -> CodeTarget | None:
        return self.targets.get(code)

    @classmethod
    def empty(cls, source_system: str) -> CodeMap:
        return cls(source_system, {})

    @classmethod
    def from_concept_map(cls, resource: Mapping[str, Any], source_system: str) -> CodeMap:
        """The mappings of a ConceptMap's groups whose source is ``source_system`` (or unset:
        a map written for one feed need not name its code system)."""
        targets: dict[str, CodeTarget] = {}
        for group in resource.get("group") or []:
            if group.get("source") not in (None, "", source_system):
                continue
            system = group.get("target") or LOINC
            for element in group.get("element") or []:
                for target in element.get("target") or []:
                    if target.get("equivalence") in ("unmatched", "disjoint") or not target.get(
                        "code"
                    ):
                        continue
                    extensions = {e.get("url"): e for e in target.get("extension") or []}
                    targets[str(element["code"])] = CodeTarget(
                        code=str(target["code"]),
                        display=str(target.get("display") or ""),
                        unit=_extension_value(extensions.get(UNIT_EXTENSION)),
                        catalogue=_extension_value(extensions.get(CATALOGUE_EXTENSION)),
                        system=str(system),
                    )
                    break
        return cls(source_system, targets, str(resource.get("version") or ""))


def _extension_value(extension: Mapping[str, Any] | None) -> str | None:
    if not extension:
        return None
    for key in ("valueCode", "valueString", "valueId"):
        if isinstance(extension.get(key), str):
            return str(extension[key])
    return None


def concept_map(
    map_id: str,
    source_system: str,
    rows: Iterable[tuple[str, str, CodeTarget]],
    *,
    title: str = "",
    version: str = "",
) -> dict[str, Any]:
    """A ConceptMap of ``(local code, local display, target)`` rows, for export and editing."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for code, display, target in rows:
        extensions = []
        if target.unit:
            extensions.append({"url": UNIT_EXTENSION, "valueCode": target.unit})
        if target.catalogue:
            extensions.append({"url": CATALOGUE_EXTENSION, "valueId": target.catalogue})
        mapped: dict[str, Any] = {"code": target.code, "equivalence": "equivalent"}
        if target.display:
            mapped["display"] = target.display
        if extensions:
            mapped["extension"] = extensions
        element: dict[str, Any] = {"code": code}
        if display:
            element["display"] = display
        element["target"] = [mapped]
        groups.setdefault(target.system, []).append(element)
    resource: dict[str, Any] = {
        "resourceType": "ConceptMap",
        "id": map_id,
        "status": "active",
        "group": [
            {"source": source_system, "target": system, "element": elements}
            if source_system
            else {"target": system, "element": elements}
            for system, elements in groups.items()
        ],
    }
    if title:
        resource["title"] = title
    if version:
        resource["version"] = version
    return resource
