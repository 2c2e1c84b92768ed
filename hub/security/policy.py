"""Who may do what: the hub's authorization rules, as data.

A request is allowed when both the token's SMART scopes and the client kind's rules allow it.
Row-level rules (a hospital reads only what it wrote) become an ``AccessFilter`` applied inside
every query, so search, include, history and ``$everything`` obey them alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.fhir.outcomes import FhirError, forbidden
from hub.fhir.paths import CompiledPath, compile_expression
from hub.fhir.references import split_reference
from hub.security import scopes
from hub.security.principals import ClientKind, Principal
from hub.storage.search_sql import AccessFilter

DIRECTORY = frozenset({"Organization", "Practitioner", "PractitionerRole", "Endpoint"})
CLINICAL = frozenset(
    {
        "Patient",
        "Observation",
        "DiagnosticReport",
        "ImagingStudy",
        "Specimen",
        "ServiceRequest",
        "Encounter",
        "Consent",
        "Provenance",
        "Basic",
    }
)
AUDIT = frozenset({"AuditEvent"})  # written by the hub itself, never through the API
HOSPITAL_WRITES = CLINICAL | (DIRECTORY - {"Organization"})


@dataclass(frozen=True)
class KindRules:
    reads: frozenset[str]
    writes: frozenset[str]
    owned_only: frozenset[str] = frozenset()  # of these types, only rows it owns
    default_scopes: str = "system/*.rs"
    # Protected identifier values (ID card numbers...) in full, or masked (3301**********123X).
    identifiers_in_full: bool = False
    # Patient identity operations: $match and $ihe-pix (find), link decisions (manage).
    identity: frozenset[str] = frozenset()


RULES: dict[ClientKind, KindRules] = {
    ClientKind.HOSPITAL: KindRules(
        reads=HOSPITAL_WRITES | {"Organization"},
        writes=HOSPITAL_WRITES,
        owned_only=HOSPITAL_WRITES,
        default_scopes="system/*.cruds",
        identifiers_in_full=True,  # it reads only the records it sent
    ),
    # Doctors and consultants read a patient's record only inside a purpose-of-use grant
    # (``hub.access``: care, ordering, EHR launch, break-glass; a consultation's scope).
    ClientKind.DOCTOR: KindRules(
        reads=CLINICAL | DIRECTORY, writes=frozenset(), identity=frozenset({"find"})
    ),
    ClientKind.CONSULTANT: KindRules(reads=CLINICAL | DIRECTORY, writes=frozenset()),
    ClientKind.ADMIN: KindRules(
        reads=CLINICAL | DIRECTORY | AUDIT,
        writes=CLINICAL | DIRECTORY,
        default_scopes="system/*.cruds",
        identifiers_in_full=True,
        identity=frozenset({"find", "manage"}),
    ),
}

# Where a resource names the organization responsible for it. A hospital may write a resource
# of these types only if it names the hospital's own Organization here. Types not listed carry
# no such element; the hub records the writing hospital as their custodian.
OWNERSHIP_EXPRESSIONS: dict[str, str] = {
    "Patient": "Patient.managingOrganization",
    "Observation": "Observation.performer",
    "DiagnosticReport": "DiagnosticReport.performer | DiagnosticReport.resultsInterpreter",
    "ServiceRequest": "ServiceRequest.performer | ServiceRequest.requester",
    "Encounter": "Encounter.serviceProvider",
    "Consent": "Consent.organization | Consent.performer",
    "Provenance": "Provenance.agent.who",
    "PractitionerRole": "PractitionerRole.organization",
    "Endpoint": "Endpoint.managingOrganization",
    "Basic": "Basic.author",
}
OWNERSHIP: dict[str, CompiledPath] = {
    t: compile_expression(e) for t, e in OWNERSHIP_EXPRESSIONS.items()
}


def rules(principal: Principal) -> KindRules:
    return RULES[principal.kind]


def require(principal: Principal, resource_type: str, permission: str) -> None:
    """Raise 403 unless scope and kind both allow ``permission`` on ``resource_type``."""
    kind_rules = rules(principal)
    allowed = kind_rules.writes if permission in "cud" else kind_rules.reads
    if resource_type not in allowed:
        verb = "write" if permission in "cud" else "read"
        raise forbidden(f"a {principal.kind} client may not {verb} {resource_type}")
    if not scopes.allows(principal.scopes, resource_type, permission):
        raise FhirError(
            403,
            "forbidden",
            f"the token's scopes do not allow '{permission}' on {resource_type}",
            headers={"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
        )


def read_filter(principal: Principal) -> AccessFilter:
    kind_rules = rules(principal)
    return AccessFilter(
        readable=kind_rules.reads,
        owned_only=kind_rules.owned_only,
        organization=principal.organization,
    )


def required_owner(principal: Principal, resource_type: str) -> str | None:
    """The organization whose rows alone this principal may touch, for owned-only types."""
    return principal.organization if resource_type in rules(principal).owned_only else None


def may_read_row(principal: Principal, resource_type: str, owner_org: str | None) -> bool:
    kind_rules = rules(principal)
    if resource_type in kind_rules.owned_only:
        return owner_org == principal.organization
    return resource_type in kind_rules.reads


def owner_for_write(
    principal: Principal, resource: dict[str, Any], current_owner: str | None, exists: bool
) -> str | None:
    """The owning organization of a resource a principal writes; 403 if it may not.

    A hospital writes only as itself: the resource must name its Organization where the type
    has such an element, and it may not overwrite another organization's resource.
    """
    resource_type = resource["resourceType"]
    named = organizations_named(resource)
    if principal.kind != ClientKind.HOSPITAL:
        return (
            current_owner if exists else (named[0] if len(named) == 1 else principal.organization)
        )
    if exists and current_owner != principal.organization:
        raise forbidden(f"{resource_type}/{resource.get('id')} belongs to another organization")
    if resource_type in OWNERSHIP and principal.organization not in named:
        element = OWNERSHIP_EXPRESSIONS[resource_type].replace(" | ", " or ")
        raise forbidden(
            f"a hospital writes only its own records: {element} must reference "
            f"Organization/{principal.organization}"
        )
    return principal.organization


def organizations_named(resource: dict[str, Any]) -> list[str]:
    path = OWNERSHIP.get(resource.get("resourceType", ""))
    if path is None:
        return []
    found = []
    for value, _ in path.evaluate(resource):
        if isinstance(value, dict) and isinstance(value.get("reference"), str):
            target_type, target_id, _ = split_reference(value["reference"])
            if target_type == "Organization" and target_id:
                found.append(target_id)
    return found


def identifiers_in_full(principal: Principal) -> bool:
    """Whether protected identifier values are shown to this principal unmasked."""
    return rules(principal).identifiers_in_full


# Mutual recognition, by client kind: "check" (the reuse check: $reusable-results and the CDS
# services), "decide" (record views and decisions on reminders of its own organization),
# "statistics" (an admin sees all; a hospital its own organization) and "catalogue" (edit).
RECOGNITION: dict[ClientKind, frozenset[str]] = {
    ClientKind.HOSPITAL: frozenset({"check", "decide", "statistics"}),
    ClientKind.DOCTOR: frozenset({"check", "decide"}),
    ClientKind.CONSULTANT: frozenset(),
    ClientKind.ADMIN: frozenset({"check", "decide", "statistics", "catalogue"}),
}


def require_recognition(principal: Principal, action: str) -> None:
    """403 unless the client's kind may take this recognition action (and, for a check,
    its scopes allow reading results)."""
    if action not in RECOGNITION[principal.kind]:
        raise forbidden(f"a {principal.kind} client may not {action} (mutual recognition)")
    if action == "check":
        for resource_type in ("Observation", "DiagnosticReport"):
            require(principal, resource_type, scopes.READ)


def require_identity(principal: Principal, action: str) -> None:
    """403 unless the principal may ``find`` patients across hospitals or ``manage`` links."""
    if action not in rules(principal).identity:
        what = "find patients across hospitals" if action == "find" else "manage patient links"
        raise forbidden(f"a {principal.kind} client may not {what}")
    if action == "find":
        require(principal, "Patient", scopes.SEARCH)


def assigning_organization(principal: Principal) -> str | None:
    """The hospital whose own identifier systems a principal's Patients use."""
    return principal.organization if principal.kind == ClientKind.HOSPITAL else None
