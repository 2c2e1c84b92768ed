"""Structural validation of incoming resources.

Structure and datatypes are checked with the ``fhir.resources`` models (R4B, which accept R4
content for the hub's types). Required terminology bindings, which those models do not
enforce, are checked against the ValueSets in ``fhir_profiles``. Every problem names the
element it concerns, as FHIRPath, in the OperationOutcome.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

import fhir_profiles
from hub.fhir.outcomes import FhirError
from hub.fhir.paths import CompiledPath, compile_expression

ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
MAX_ISSUES = 20


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


@cache
def _bindings() -> tuple[tuple[str, CompiledPath, frozenset[str]], ...]:
    return tuple(
        (path.split(".", 1)[0], compile_expression(path), codes)
        for path, codes in fhir_profiles.required_bindings().items()
    )


def validate(resource: dict[str, Any], resource_type: str) -> None:
    """Raise a 422 ``FhirError`` listing every problem found, or return silently."""
    issues: list[dict[str, Any]] = []
    if resource.get("resourceType") != resource_type:
        raise FhirError(
            400,
            "invalid",
            f"resourceType is {resource.get('resourceType')!r}, expected {resource_type!r}",
            expression=["resourceType"],
        )
    resource_id = resource.get("id")
    if resource_id is not None and not (
        isinstance(resource_id, str) and ID_PATTERN.match(resource_id)
    ):
        issues.append(_issue("value", f"{resource_type}.id", "id must be 1-64 of A-Z a-z 0-9 - ."))
    try:
        _model(resource_type).model_validate(resource)
    except ValidationError as error:
        for detail in error.errors()[:MAX_ISSUES]:
            issues.append(
                _issue(
                    _issue_code(detail["type"]),
                    _fhirpath(resource_type, detail["loc"]),
                    _message(detail),
                )
            )
    except (TypeError, ValueError) as error:  # defensive: models raising outside pydantic
        issues.append(_issue("structure", resource_type, str(error)))
    for base, path, codes in _bindings():
        if base != resource_type:
            continue
        for value, _ in path.evaluate(resource):
            if isinstance(value, str) and value not in codes:
                allowed = ", ".join(sorted(codes))
                issues.append(
                    _issue("code-invalid", path.expression, f"{value!r} is not one of: {allowed}")
                )
    if issues:
        first = issues[0]
        raise FhirError(
            422,
            first["code"],
            f"{resource_type} is not valid: {first['diagnostics']}",
            expression=first["expression"],
            issues=issues[1:],
        )


def _issue(code: str, expression: str, diagnostics: str) -> dict[str, Any]:
    return {
        "severity": "error",
        "code": code,
        "diagnostics": f"{expression}: {diagnostics}",
        "expression": [expression],
    }


def _issue_code(pydantic_type: str) -> str:
    if pydantic_type == "missing":
        return "required"
    if pydantic_type == "extra_forbidden":
        return "structure"
    return "value"


def _fhirpath(resource_type: str, loc: tuple[Any, ...]) -> str:
    path = resource_type
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif isinstance(part, str) and not part.startswith("function-"):
            path += f".{part}"
    return path


def _message(detail: Any) -> str:
    if detail["type"] == "extra_forbidden":
        return "unknown element"
    if detail["type"] == "missing":
        return "required element is missing"
    message = str(detail.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")
