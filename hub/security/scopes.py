"""SMART on FHIR scopes (v2 ``system/Observation.rs``; v1 ``.read``/``.write``/``.*`` accepted)."""

from __future__ import annotations

import re
from collections.abc import Iterable

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|[cruds]+)$")
_V1 = {"*": "cruds", "read": "rs", "write": "cud"}

# The permission letter each FHIR interaction needs.
CREATE, READ, UPDATE, DELETE, SEARCH = "c", "r", "u", "d", "s"


def parse(scopes: str | Iterable[str]) -> frozenset[str]:
    items = scopes.split() if isinstance(scopes, str) else list(scopes)
    return frozenset(s for s in items if s)


def is_valid(scope: str) -> bool:
    return bool(_SCOPE.match(scope)) or scope in ("launch", "openid", "fhirUser", "offline_access")


def allows(scopes: frozenset[str], resource_type: str, permission: str) -> bool:
    """Whether any granted scope permits ``permission`` on ``resource_type``."""
    for scope in scopes:
        match = _SCOPE.match(scope)
        if not match:
            continue
        _, scope_type, letters = match.groups()
        letters = _V1.get(letters, letters)
        if scope_type in ("*", resource_type) and permission in letters:
            return True
    return False


def narrow(granted: frozenset[str], requested: frozenset[str]) -> frozenset[str]:
    """The requested scopes that the granted ones cover (for a token request with ``scope``)."""
    out = set()
    for scope in requested:
        match = _SCOPE.match(scope)
        if not match:
            continue
        _, scope_type, letters = match.groups()
        letters = _V1.get(letters, letters)
        types = [scope_type] if scope_type != "*" else ["*"]
        if all(any(_covers(g, t, letter) for g in granted) for t in types for letter in letters):
            out.add(scope)
    return frozenset(out)


def _covers(granted: str, resource_type: str, letter: str) -> bool:
    match = _SCOPE.match(granted)
    if not match:
        return False
    _, scope_type, letters = match.groups()
    letters = _V1.get(letters, letters)
    return scope_type in ("*", resource_type) and letter in letters
