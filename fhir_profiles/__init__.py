"""The hub's FHIR conformance material, as data, with a small loader.

Everything here is plain FHIR JSON: SearchParameters, the Patient CompartmentDefinition,
ValueSets for required bindings, NamingSystems, CodeSystems, ConceptMaps, the recognition
catalogue. This package imports nothing from the rest of the project.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

PROFILES_DIR = Path(__file__).parent

FhirJson = dict[str, Any]


def load(name: str) -> FhirJson:
    """Parse one JSON file of this package."""
    with (PROFILES_DIR / name).open(encoding="utf-8") as handle:
        data: FhirJson = json.load(handle)
    return data


def bundle_resources(name: str) -> list[FhirJson]:
    """The resources of a collection Bundle file."""
    return [entry["resource"] for entry in load(name).get("entry", [])]


@cache
def search_parameters() -> tuple[FhirJson, ...]:
    """Every SearchParameter the hub supports (R4 definitions, expressions in a subset)."""
    return tuple(bundle_resources("search-parameters.json"))


@cache
def patient_compartment() -> FhirJson:
    """The Patient CompartmentDefinition: which parameters put a resource in a patient's record."""
    return load("compartment-patient.json")


@cache
def required_bindings() -> dict[str, frozenset[str]]:
    """Element path (``Observation.status``) → the codes its required ValueSet allows."""
    valuesets = {
        vs["url"]: frozenset(c["code"] for c in vs.get("expansion", {}).get("contains", []))
        for vs in bundle_resources("valuesets-required.json")
    }
    return {
        binding["path"]: valuesets[binding["valueSet"]]
        for binding in load("required-bindings.json")["bindings"]
    }


def _directory(name: str) -> list[FhirJson]:
    """Every JSON file of one subdirectory, parsed, in filename order."""
    return [load(f"{name}/{path.name}") for path in sorted((PROFILES_DIR / name).glob("*.json"))]


def naming_systems() -> list[FhirJson]:
    """Every NamingSystem of ``naming-systems/``, in filename order.

    Each resource's ``id`` is its file's stem (``resident-id``); the hub's behaviour for the
    system (protected, deterministic, validation) is in its extensions. Not cached: the caller
    builds its own immutable view once (``hub.identity.identifiers.IdentifierSystems``).
    """
    return _directory("naming-systems")


def codesystems() -> list[FhirJson]:
    """Every CodeSystem of ``codesystems/``, in filename order (not cached, as above)."""
    return _directory("codesystems")


def match_rules() -> dict[str, Any]:
    """The default probabilistic patient matching rules (``identity/match-rules.json``).

    Weights per field and outcome, grade thresholds and similarity cut-offs, as data that a
    region tunes; ``hub.identity.matching.MatchRules.load`` validates them. Not cached, as above.
    """
    return load("identity/match-rules.json")


CONCEPT_MAPS_DIR = PROFILES_DIR / "conceptmaps"


def concept_map_path(name: str) -> Path:
    """Where a code map named in a feed lives: ``conceptmaps/NAME`` of this package (the
    ``.json`` suffix may be left out)."""
    stem = name if name.endswith(".json") else f"{name}.json"
    return CONCEPT_MAPS_DIR / stem


def recognition_catalogue() -> dict[str, Any]:
    """The default recognition catalogue (``recognition/catalogue.json``): the items a region
    starts from before tuning windows, scopes and prices. Not cached, as above."""
    return load("recognition/catalogue.json")


def operation_definitions() -> list[FhirJson]:
    """Every OperationDefinition of ``operations/``, in filename order."""
    return _directory("operations")


def codesystem(url: str) -> FhirJson:
    """The CodeSystem of ``codesystems/`` with this canonical URL (KeyError if none)."""
    for resource in codesystems():
        if resource.get("url") == url:
            return resource
    raise KeyError(url)
