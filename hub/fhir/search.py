"""Parsing a FHIR search query into a ``SearchRequest``.

This module knows the FHIR search syntax (parameters, modifiers, prefixes, chains, result
parameters) and nothing about storage; ``hub.storage.search_sql`` turns the request into SQL.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from hub.fhir.datetimes import DateFormatError, parse_range
from hub.fhir.outcomes import FhirError, bad_request
from hub.fhir.searchparams import SearchParam, SearchParamRegistry

DATE_PREFIXES = ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb")
MODIFIERS = {
    "token": {"missing", "not"},
    "string": {"missing", "exact", "contains"},
    "date": {"missing"},
    "reference": {"missing"},  # plus :Type
    "quantity": {"missing"},
    "uri": {"missing", "below"},
}
RESULT_PARAMS = {
    "_count",
    "_sort",
    "_include",
    "_revinclude",
    "_summary",
    "_total",
    "_elements",
    "_format",
    "_pretty",
    "_cursor",
}
MAX_CHAIN_DEPTH = 3


@dataclass(frozen=True)
class TokenValue:
    system: str | None  # None: any system
    code: str | None  # None: any code in the system
    no_system: bool = False  # "|code": only codes without a system


@dataclass(frozen=True)
class RangeValue:
    """A date or quantity comparison: ``prefix`` against the range ``[low, high)``."""

    prefix: str
    low: Any
    high: Any
    system: str | None = None
    code: str | None = None


@dataclass(frozen=True)
class ReferenceValue:
    resource_type: str | None
    resource_id: str | None
    url: str | None = None


@dataclass
class Criterion:
    """One parameter of the query; its values are alternatives (OR), criteria are ANDed."""

    param: SearchParam
    modifier: str | None
    values: list[Any]
    chain: Criterion | None = None
    chain_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class SortKey:
    param: SearchParam
    descending: bool


@dataclass(frozen=True)
class Include:
    source_type: str
    param: SearchParam
    target_type: str | None
    iterate: bool = False


@dataclass
class Cursor:
    """A keyset position: the sort values and pk of a row, and the direction to page."""

    backward: bool
    values: list[Any]
    pk: int

    def encode(self) -> str:
        raw = orjson.dumps([1 if self.backward else 0, self.values, self.pk], default=str)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            backward, values, pk = orjson.loads(raw)
            if not isinstance(values, list) or not isinstance(pk, int) or isinstance(pk, bool):
                raise ValueError
            if not -(2**63) <= pk < 2**63:  # a PostgreSQL bigint
                raise ValueError
            return cls(bool(backward), values, pk)
        except (ValueError, TypeError, orjson.JSONDecodeError):
            raise bad_request("_cursor is not a valid paging position") from None


@dataclass
class SearchRequest:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    count: int = 50
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary_count: bool = False
    total: str | None = None
    elements: list[str] | None = None
    cursor: Cursor | None = None
    used: list[tuple[str, str]] = field(default_factory=list)  # for the self link
    ignored: list[str] = field(default_factory=list)


class SearchParser:
    """Parses query parameters against the search-parameter registry."""

    def __init__(
        self,
        registry: SearchParamRegistry,
        zone: tzinfo,
        default_count: int,
        max_count: int,
        base_url: str = "",
    ):
        self.registry = registry
        self.zone = zone
        self.default_count = default_count
        self.max_count = max_count
        self.base_url = base_url.rstrip("/")

    def parse(
        self, resource_type: str, query: list[tuple[str, str]], strict: bool
    ) -> SearchRequest:
        request = SearchRequest(resource_type, count=self.default_count)
        for key, value in query:
            if "\x00" in key or "\x00" in value:
                raise bad_request("search parameters may not contain NUL characters")
            name = key.split(":", 1)[0].split(".", 1)[0]
            if name in RESULT_PARAMS:
                self._result_param(request, key, value)
                if name not in ("_format", "_pretty", "_cursor"):
                    request.used.append((key, value))
                continue
            try:
                criterion = self._criterion(resource_type, key, value, depth=0)
            except _Unknown as unknown:
                if strict:
                    raise bad_request(str(unknown), code="not-supported") from None
                request.ignored.append(key)
                continue
            request.criteria.append(criterion)
            request.used.append((key, value))
        return request

    # -- criteria -----------------------------------------------------------------------------

    def _criterion(self, resource_type: str, key: str, value: str, depth: int) -> Criterion:
        head, _, rest = key.partition(".")
        code, _, modifier = head.partition(":")
        param = self.registry.get(resource_type, code)
        if param is None:
            raise _Unknown(f"unknown search parameter {code!r} for {resource_type}")
        if rest:  # chained: subject:Patient.identifier=...
            if param.type != "reference":
                raise bad_request(f"{code} is not a reference parameter and cannot be chained")
            if depth >= MAX_CHAIN_DEPTH:
                raise bad_request("search chains are limited to three links")
            types = (modifier,) if modifier else param.targets
            chained = [self._chain_target(t, rest, value, depth) for t in types]
            chained = [c for c in chained if c is not None]
            if not chained:
                raise _Unknown(f"no target of {code} has a search parameter {rest!r}")
            return Criterion(
                param,
                None,
                [],
                chain=chained[0],
                chain_types=tuple(c.param.resource_type for c in chained if c is not None),
            )
        type_modifier = param.type == "reference" and modifier in param.targets
        if modifier and modifier not in MODIFIERS[param.type] and not type_modifier:
            raise bad_request(f"modifier :{modifier} is not supported on {code}")
        if modifier == "missing":
            if value not in ("true", "false"):
                raise bad_request(f"{key} must be true or false")
            return Criterion(param, modifier, [value == "true"])
        values = [self._value(param, modifier, v) for v in split_values(value)]
        if not values:
            raise bad_request(f"search parameter {key} has no value")
        return Criterion(param, modifier, values)

    def _chain_target(self, target: str, key: str, value: str, depth: int) -> Criterion | None:
        try:
            return self._criterion(target, key, value, depth + 1)
        except _Unknown:
            return None

    def _value(self, param: SearchParam, modifier: str | None, text: str) -> Any:
        kind = param.type
        if kind == "token":
            if "|" not in text:
                return TokenValue(None, text)
            system, _, code = text.partition("|")
            return TokenValue(system or None, code or None, no_system=not system)
        if kind in ("string", "uri"):
            return text
        if kind == "date":
            prefix, rest = _prefix(text)
            try:
                low, high = parse_range(rest, self.zone)
            except DateFormatError as error:
                raise bad_request(f"{param.code}: {error}") from None
            return RangeValue(prefix, low, high)
        if kind == "quantity":
            prefix, rest = _prefix(text)
            number, _, unit = rest.partition("|")
            system, _, code = unit.partition("|")
            lower, upper = _decimal_range(param.code, number)
            return RangeValue(prefix, lower, upper, system or None, code or None)
        if kind == "reference":
            return self._reference(modifier, text)
        raise bad_request(f"search parameter type {kind} is not supported")

    def _reference(self, modifier: str | None, text: str) -> ReferenceValue:
        if self.base_url and text.startswith(self.base_url + "/"):
            text = text[len(self.base_url) + 1 :]
        if "://" in text or text.startswith("urn:"):
            return ReferenceValue(None, None, url=text)
        parts = text.split("/")
        if len(parts) == 1:  # a bare id (or ``:Type`` modifier): the type is not given
            return ReferenceValue(modifier or None, parts[0])
        if len(parts) in (2, 4):
            return ReferenceValue(parts[0], parts[1])
        raise bad_request(f"not a reference: {text!r}")

    # -- result parameters --------------------------------------------------------------------

    def _result_param(self, request: SearchRequest, key: str, value: str) -> None:
        name, _, modifier = key.partition(":")
        if name == "_count":
            if not value.isdigit():
                raise bad_request("_count must be a non-negative integer")
            request.count = min(int(value), self.max_count)
        elif name == "_sort":
            request.sort = [self._sort_key(request.resource_type, k) for k in value.split(",") if k]
        elif name in ("_include", "_revinclude"):
            include = self._include(request.resource_type, name, value, modifier == "iterate")
            (request.includes if name == "_include" else request.revincludes).append(include)
        elif name == "_summary":
            if value not in ("count", "false"):
                raise bad_request(
                    f"_summary={value} is not supported (count, false)", "not-supported"
                )
            request.summary_count = value == "count"
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise bad_request("_total must be none, estimate or accurate")
            request.total = value
        elif name == "_elements":
            request.elements = [e.strip() for e in value.split(",") if e.strip()]
        elif name == "_cursor":
            request.cursor = Cursor.decode(value)
        elif name == "_format" and "json" not in value:
            raise FhirError(406, "not-supported", "only JSON (application/fhir+json) is supported")

    def _sort_key(self, resource_type: str, key: str) -> SortKey:
        descending = key.startswith("-")
        code = key.lstrip("-")
        param = self.registry.get(resource_type, code)
        if param is None or param.type not in ("date", "string", "token", "quantity", "uri"):
            raise bad_request(f"cannot sort {resource_type} by {code!r}")
        return SortKey(param, descending)

    def _include(self, resource_type: str, name: str, value: str, iterate: bool) -> Include:
        parts = value.split(":")
        if len(parts) not in (2, 3):
            raise bad_request(f"{name} must be SourceType:parameter[:TargetType]")
        source_type, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if name == "_include" and source_type != resource_type and not iterate:
            raise bad_request(f"_include source type must be {resource_type}")
        param = self.registry.get(source_type, code)
        if param is None or param.type != "reference":
            raise bad_request(f"{source_type}:{code} is not a reference search parameter")
        return Include(source_type, param, target, iterate)


class _Unknown(Exception):
    """An unknown parameter: ignored or rejected according to Prefer: handling."""


def split_values(text: str) -> list[str]:
    """Split on commas not escaped with a backslash; unescape ``\\,`` ``\\|`` ``\\$``."""
    parts = re.split(r"(?<!\\),", text)
    return [re.sub(r"\\([,$|\\])", r"\1", p) for p in parts if p != ""]


def _prefix(text: str) -> tuple[str, str]:
    if len(text) > 2 and text[:2] in DATE_PREFIXES and not text[:2].isdigit():
        return text[:2], text[2:]
    if len(text) > 2 and text[:2] == "ap":
        raise bad_request("the ap (approximately) prefix is not supported", code="not-supported")
    return "eq", text


def _decimal_range(code: str, text: str) -> tuple[Decimal, Decimal]:
    """The implicit range of a decimal's precision: 5.4 → [5.35, 5.45)."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise bad_request(f"{code}: {text!r} is not a number") from None
    if not number.is_finite() or abs(number.adjusted()) > 1000:
        raise bad_request(f"{code}: {text!r} is not a finite number in range")
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb(exponent - 1) if isinstance(exponent, int) else Decimal(0)
    return number - half, number + half
