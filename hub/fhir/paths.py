"""A compiler for the small FHIRPath subset used by the hub's SearchParameter expressions.

Supported forms, joined with ``|``::

    Observation.code.coding                     a dotted path from a resource type
    (Observation.effective as dateTime)         a cast of a choice element
    Observation.value.as(Quantity)              the same, function form
    Observation.effective.ofType(Period)        the same
    Observation.subject.where(resolve() is Patient)   references to one target type

Evaluation walks plain JSON (dicts and lists) and yields ``(value, fhir_type)`` where
``fhir_type`` is known for choice elements (from the JSON key suffix) and ``None`` otherwise.
Compilation happens once, when the search-parameter registry loads; an expression outside the
subset is rejected then, not at query time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_CAST_PAREN = re.compile(r"^\((?P<path>[A-Za-z][\w.]*) as (?P<type>[A-Za-z]\w*)\)$")
_CAST_FUNC = re.compile(r"^(?P<path>[A-Za-z][\w.]*)\.(?:as|ofType)\((?P<type>[A-Za-z]\w*)\)$")
_WHERE_RESOLVE = re.compile(
    r"^(?P<path>[A-Za-z][\w.]*)\.where\(resolve\(\) is (?P<type>[A-Z]\w*)\)$"
)
_PLAIN = re.compile(r"^[A-Za-z][\w.]*$")


class ExpressionError(ValueError):
    """An expression outside the supported subset."""


@dataclass(frozen=True)
class PathTerm:
    """One alternative of a compiled expression."""

    resource_type: str  # "Resource" applies to every type
    steps: tuple[str, ...]
    cast: str | None = None  # FHIR type name for a choice element
    reference_type: str | None = None  # keep only references to this type

    def applies_to(self, resource_type: str) -> bool:
        return self.resource_type in (resource_type, "Resource", "DomainResource")

    def evaluate(self, resource: dict[str, Any]) -> Iterator[tuple[Any, str | None]]:
        nodes: list[tuple[Any, str | None]] = [(resource, None)]
        last = len(self.steps) - 1
        for index, step in enumerate(self.steps):
            cast = self.cast if index == last else None
            nodes = [item for node, _ in nodes for item in _children(node, step, cast)]
            if not nodes:
                return
        for value, fhir_type in nodes:
            if self.reference_type and not _references_type(value, self.reference_type):
                continue
            yield value, fhir_type


@dataclass(frozen=True)
class CompiledPath:
    """A compiled expression: the union of its terms."""

    expression: str
    terms: tuple[PathTerm, ...]

    def for_type(self, resource_type: str) -> CompiledPath:
        return CompiledPath(
            self.expression, tuple(t for t in self.terms if t.applies_to(resource_type))
        )

    def evaluate(self, resource: dict[str, Any]) -> Iterator[tuple[Any, str | None]]:
        for term in self.terms:
            yield from term.evaluate(resource)

    def may_match(self, roots: set[str]) -> bool:
        """False when no term's first element is among a resource's ``element_roots``."""
        return any(term.steps[0] in roots for term in self.terms)


def element_roots(node: dict[str, Any]) -> set[str]:
    """The element names of a JSON object, choice suffixes removed (valueQuantity → value)."""
    roots = set()
    for key in node:
        for index, char in enumerate(key):
            if char.isupper():
                roots.add(key[:index])
                break
        roots.add(key)
    return roots


def compile_expression(expression: str) -> CompiledPath:
    """Compile a FHIRPath expression of the supported subset."""
    terms = tuple(_compile_term(part.strip()) for part in _split_union(expression))
    if not terms:
        raise ExpressionError(f"empty expression: {expression!r}")
    return CompiledPath(expression, terms)


def _split_union(expression: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in expression:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "|" and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in parts if p.strip()]


def _compile_term(term: str) -> PathTerm:
    cast = reference_type = None
    if match := (_CAST_PAREN.match(term) or _CAST_FUNC.match(term)):
        path, cast = match["path"], match["type"]
    elif match := _WHERE_RESOLVE.match(term):
        path, reference_type = match["path"], match["type"]
    elif _PLAIN.match(term):
        path = term
    else:
        raise ExpressionError(f"unsupported FHIRPath expression: {term!r}")
    resource_type, *steps = path.split(".")
    if not steps:
        raise ExpressionError(f"expression must name an element: {term!r}")
    return PathTerm(resource_type, tuple(steps), cast, reference_type)


def _children(node: Any, step: str, cast: str | None) -> Iterator[tuple[Any, str | None]]:
    if not isinstance(node, dict):
        return
    found: list[tuple[Any, str | None]]
    if cast is not None:
        key = step + cast[0].upper() + cast[1:]
        found = [(node[key], cast)] if key in node else []
    elif step in node:
        found = [(node[step], None)]
    else:  # an un-cast choice element: effective[x] → effectiveDateTime, effectivePeriod...
        size = len(step)
        found = [
            (value, _choice_type(key[size:]))
            for key, value in node.items()
            if key.startswith(step) and len(key) > size and key[size].isupper()
        ]
    for value, fhir_type in found:
        if isinstance(value, list):
            for item in value:
                yield item, fhir_type
        else:
            yield value, fhir_type


_PRIMITIVE_CHOICES = {
    "string",
    "boolean",
    "integer",
    "decimal",
    "dateTime",
    "date",
    "time",
    "instant",
    "uri",
    "url",
    "canonical",
    "code",
    "id",
    "oid",
    "uuid",
    "markdown",
    "base64Binary",
    "positiveInt",
    "unsignedInt",
}


def _choice_type(suffix: str) -> str:
    """The FHIR type named by a choice key's suffix: ``DateTime`` → ``dateTime``."""
    primitive = suffix[0].lower() + suffix[1:]
    return primitive if primitive in _PRIMITIVE_CHOICES else suffix


def _references_type(value: Any, resource_type: str) -> bool:
    if not isinstance(value, dict):
        return False
    if value.get("type") == resource_type:
        return True
    reference = value.get("reference")
    if not isinstance(reference, str):
        return False
    parts = reference.split("/")
    # relative "Patient/1", versioned "Patient/1/_history/2" or absolute ".../Patient/1"
    if len(parts) >= 4 and parts[-2] == "_history":
        return parts[-4] == resource_type
    return len(parts) >= 2 and parts[-2] == resource_type
