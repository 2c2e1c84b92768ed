"""The CapabilityStatement, generated from the same data that drives the server."""

from __future__ import annotations

from typing import Any

from hub import __version__
from hub.fhir.searchparams import RESOURCE_TYPES, SearchParamRegistry

# The audit-log view answers these (see hub.security.audit_events.SUPPORTED).
AUDIT_SEARCH_PARAMS = frozenset(
    {
        "_id",
        "date",
        "patient",
        "entity",
        "agent",
        "altid",
        "action",
        "outcome",
        "subtype",
        "address",
    }
)

READ_ONLY = {"AuditEvent"}  # the hub writes these itself (its audit log)
# Types served from their own tables answer only some of their search parameters.
SEARCH_SUBSETS = {"AuditEvent": AUDIT_SEARCH_PARAMS}
INSTANCE = ["read", "vread", "update", "delete", "history-instance"]
TYPE = ["create", "search-type", "history-type"]


def capability_statement(registry: SearchParamRegistry, base: str) -> dict[str, Any]:
    resources = []
    for resource_type in RESOURCE_TYPES:
        params = registry.for_type(resource_type)
        read_only = resource_type in READ_ONLY
        interactions = ["read", "vread", "search-type"] if read_only else INSTANCE + TYPE
        if resource_type in SEARCH_SUBSETS:
            params = [p for p in params if p.code in SEARCH_SUBSETS[resource_type]]
        references = sorted(p.code for p in params if p.type == "reference")
        entry: dict[str, Any] = {
            "type": resource_type,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned-update",
            "readHistory": not read_only,
            "updateCreate": not read_only,
            "conditionalCreate": not read_only,
            "conditionalRead": "not-supported" if read_only else "not-match",
            "conditionalUpdate": not read_only,
            "conditionalDelete": "not-supported",
            "referencePolicy": ["literal", "local", "enforced"],
            "searchInclude": []
            if read_only
            else [f"{resource_type}:{code}" for code in references],
            "searchRevInclude": sorted(
                f"{other}:{p.code}"
                for other in RESOURCE_TYPES
                if other not in READ_ONLY
                for p in registry.for_type(other)
                if p.type == "reference" and (resource_type in p.targets or not p.targets)
            ),
            "searchParam": [
                {"name": p.code, "definition": p.url, "type": p.type}
                for p in sorted(params, key=lambda p: p.code)
            ],
        }
        if resource_type == "Patient":
            entry["operation"] = [
                {
                    "name": "everything",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                },
                {
                    "name": "match",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
                },
                {
                    "name": "ihe-pix",
                    "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix",
                },
                {
                    "name": "reusable-results",
                    "definition": "https://yijian-hub.org/fhir/OperationDefinition/Patient-reusable-results",
                },
            ]
        resources.append(entry)
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "Yijian Hub",
        "kind": "instance",
        "software": {"name": "Yijian Hub (医检互认平台)", "version": __version__},
        "implementation": {"description": "Yijian Hub FHIR server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [
                                {"url": "token", "valueUri": base[: -len("/fhir")] + "/auth/token"}
                            ],
                        }
                    ],
                },
                "resource": resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
                "searchParam": [
                    {"name": "_count", "type": "number"},
                    {"name": "_sort", "type": "string"},
                    {"name": "_include", "type": "special"},
                    {"name": "_revinclude", "type": "special"},
                    {"name": "_summary", "type": "token", "documentation": "count and false only"},
                    {"name": "_total", "type": "token"},
                    {"name": "_elements", "type": "string"},
                ],
            }
        ],
    }
