"""FHIR errors as exceptions that carry their HTTP status and OperationOutcome."""

from __future__ import annotations

from typing import Any


class FhirError(Exception):
    """An error the client can act on, reported as an OperationOutcome.

    ``code`` is from the FHIR IssueType value set (invalid, structure, required, value,
    not-found, deleted, conflict, security, forbidden, login, too-costly, not-supported,
    processing, exception, duplicate, multiple-matches, too-long, throttled).
    """

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        *,
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
        issues: list[dict[str, Any]] | None = None,
    ):
        super().__init__(diagnostics)
        self.status = status
        self.code = code
        self.diagnostics = diagnostics
        self.expression = expression
        self.headers = headers or {}
        self.extra_issues = issues or []

    def outcome(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": "error" if self.status < 500 else "fatal",
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = self.expression
        return operation_outcome([issue, *self.extra_issues])


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": issues}


def information(diagnostics: str) -> dict[str, Any]:
    return operation_outcome(
        [{"severity": "information", "code": "informational", "diagnostics": diagnostics}]
    )


def bad_request(diagnostics: str, code: str = "invalid") -> FhirError:
    return FhirError(400, code, diagnostics)


def not_found(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(404, "not-found", f"{resource_type}/{resource_id} is not known")


def gone(resource_type: str, resource_id: str) -> FhirError:
    return FhirError(410, "deleted", f"{resource_type}/{resource_id} has been deleted")


def forbidden(diagnostics: str) -> FhirError:
    return FhirError(403, "forbidden", diagnostics)


def unprocessable(diagnostics: str, expression: list[str] | None = None) -> FhirError:
    return FhirError(422, "invalid", diagnostics, expression=expression)
