"""Turn a resource into search-index rows, driven only by the search-parameter registry.

Values are recognised by their FHIR datatype: known for choice elements, otherwise inferred
from the JSON shape (a CodeableConcept has ``coding``/``text``, a Reference ``reference``...).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

from hub.fhir.datetimes import DateFormatError, parse_range
from hub.fhir.paths import element_roots
from hub.fhir.references import split_reference
from hub.fhir.results import RESULT_TYPES, ResultFact, result_facts
from hub.fhir.searchparams import SearchParam, SearchParamRegistry

MAX_STRING = 512
FAR_PAST = datetime(1, 1, 1, tzinfo=UTC)  # open Period ends
FAR_FUTURE = datetime(
    9999, 12, 31, tzinfo=UTC
)  # index prefix; longer text is still searchable by its beginning


@dataclass
class IndexRows:
    """Index rows for one resource version, one list per index table."""

    token: list[tuple[str, str | None, str | None, str | None]] = field(default_factory=list)
    string: list[tuple[str, str, str]] = field(default_factory=list)
    date: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    reference: list[tuple[str, str | None, str | None, str | None]] = field(default_factory=list)
    quantity: list[tuple[str, Decimal, str | None, str | None]] = field(default_factory=list)
    uri: list[tuple[str, str]] = field(default_factory=list)
    result: list[ResultFact] = field(default_factory=list)

    def references(self) -> set[tuple[str, str]]:
        """Local ``(type, id)`` targets, for referential-integrity checks.

        An empty id (``"Patient/"``) is kept, so that it is reported as unknown, not stored.
        """
        return {(t, i or "") for _, t, i, _ in self.reference if t}


def normalize(text: str) -> str:
    """Case- and accent-insensitive form used for string search."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.casefold()[:MAX_STRING]


class Indexer:
    """Extracts index rows for every indexed search parameter of a resource's type."""

    def __init__(self, registry: SearchParamRegistry, default_zone: tzinfo, base_url: str = ""):
        self.registry = registry
        self.zone = default_zone
        self.base_url = base_url.rstrip("/")

    def index(self, resource: dict[str, Any]) -> IndexRows:
        rows = IndexRows()
        roots = element_roots(resource)  # most parameters' elements are absent: skip them fast
        for param in self.registry.indexed_for_type(resource["resourceType"]):
            assert param.path is not None
            if not param.path.may_match(roots):
                continue
            for value, fhir_type in param.path.evaluate(resource):
                self._add(rows, param, value, fhir_type)
        if resource["resourceType"] in RESULT_TYPES:
            rows.result = result_facts(resource, self.zone, self.base_url)
        return rows

    def _add(self, rows: IndexRows, param: SearchParam, value: Any, fhir_type: str | None) -> None:
        kind = param.type
        if kind == "token":
            rows.token.extend((param.code, *t) for t in tokens(value))
        elif kind == "string":
            rows.string.extend((param.code, normalize(s), s[:MAX_STRING]) for s in strings(value))
        elif kind == "date":
            for low, high in self.date_ranges(value, fhir_type):
                rows.date.append((param.code, low, high))
        elif kind == "reference":
            if (ref := self.reference(value)) is not None:
                rows.reference.append((param.code, *ref))
        elif kind == "quantity":
            if (q := quantity(value)) is not None:
                rows.quantity.append((param.code, *q))
        elif kind == "uri" and isinstance(value, str):
            rows.uri.append((param.code, value))

    def date_ranges(self, value: Any, fhir_type: str | None) -> list[tuple[datetime, datetime]]:
        try:
            if isinstance(value, str):
                return [parse_range(value, self.zone)]
            if isinstance(value, dict) and ("start" in value or "end" in value):  # Period
                start = parse_range(value["start"], self.zone)[0] if "start" in value else None
                end = parse_range(value["end"], self.zone)[1] if "end" in value else None
                return [(start or FAR_PAST, end or FAR_FUTURE)]
            if isinstance(value, dict) and "event" in value:  # Timing
                return [parse_range(event, self.zone) for event in value["event"]]
        except DateFormatError:
            return []  # validation rejects bad dates before indexing
        return []

    def reference(self, value: Any) -> tuple[str | None, str | None, str | None] | None:
        """``(target_type, target_id, url)`` of a Reference, canonical or uri value."""
        if isinstance(value, str):
            return None, None, value
        if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
            return None
        return split_reference(value["reference"], self.base_url)


def tokens(value: Any) -> list[tuple[str | None, str | None, str | None]]:
    """``(system, code, display)`` triples of a coded or identifying value."""
    if isinstance(value, bool):
        return [(None, "true" if value else "false", None)]
    if isinstance(value, str):
        return [(None, value, None)]
    if not isinstance(value, dict):
        return []
    if "coding" in value or ("text" in value and "system" not in value):  # CodeableConcept
        out = [t for coding in value.get("coding", []) for t in tokens(coding)]
        return out or [(None, None, value.get("text"))]
    if "code" in value:  # Coding (or Quantity used as a token)
        return [(value.get("system"), value["code"], value.get("display"))]
    if "value" in value:  # Identifier, ContactPoint
        system = value.get("system")
        return [
            (
                system,
                str(value["value"]),
                value.get("type", {}).get("text") if isinstance(value.get("type"), dict) else None,
            )
        ]
    return []


_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")


def strings(value: Any) -> list[str]:
    """Searchable strings of a string, HumanName or Address value."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, dict):
        return []
    out: list[str] = []
    parts = _NAME_PARTS if ("family" in value or "given" in value) else _ADDRESS_PARTS
    for part in parts:
        item = value.get(part)
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, list):
            out.extend(s for s in item if isinstance(s, str))
    if "family" in value and value.get("given"):
        # Chinese names are written family name first with no space: 张 + 三 → 张三.
        out.append(str(value["family"]) + "".join(str(g) for g in value["given"]))
    return out


def quantity(value: Any) -> tuple[Decimal, str | None, str | None] | None:
    if not isinstance(value, dict) or "value" not in value:
        return None
    try:
        number = Decimal(str(value["value"]))
    except InvalidOperation:
        return None
    return number, value.get("system"), value.get("code") or value.get("unit")
