"""Compile a ``SearchRequest`` into parameterised PostgreSQL.

Each criterion becomes a semi-join on one index table; criteria are ANDed, a criterion's values
ORed. Sorting and paging use keyset conditions on the sort values plus ``pk``, so a page link
stays correct while resources are added or removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from hub.fhir.indexing import normalize
from hub.fhir.search import (
    Criterion,
    Cursor,
    RangeValue,
    ReferenceValue,
    SearchRequest,
    SortKey,
    TokenValue,
)
from hub.fhir.searchparams import SearchParam

TABLES = {
    "token": "idx_token",
    "string": "idx_string",
    "date": "idx_date",
    "reference": "idx_reference",
    "quantity": "idx_quantity",
    "uri": "idx_uri",
}
# index column to sort on, and the lowest and highest values (for resources lacking one)
SORT_COLUMNS = {
    "date": ("low", "'-infinity'::timestamptz", "'infinity'::timestamptz"),
    "string": ("value_norm", "''", "chr(1114111)"),
    "token": ("code", "''", "chr(1114111)"),
    "uri": ("uri", "''", "chr(1114111)"),
    "quantity": ("value", "'-infinity'::numeric", "'infinity'::numeric"),
}
RESOURCE_COLUMNS = "pk, res_type, res_id, version_id, last_updated, content"


@dataclass(frozen=True)
class PatientScope:
    """Part of one person's record that a caller may read (a purpose-of-use grant).

    ``patients``: the person's Patient ids (every linked record). ``resources``: when set, only
    these ``Type/id`` keys (and the Patients themselves). ``period``: when set, only resources
    whose clinical date overlaps it (undated ones pass). ``organizations``: when set, only rows
    owned by these organizations (a patient's opt-out: nothing shared across hospitals).
    """

    patients: tuple[str, ...]
    resources: tuple[str, ...] | None = None
    period: tuple[datetime, datetime] | None = None
    organizations: tuple[str, ...] | None = None

    def sql(
        self,
        sql: Sql,
        alias: str,
        members: tuple[tuple[str, str], ...],
        dates: tuple[tuple[str, str], ...],
    ) -> str:
        ids = sql.add(list(self.patients))
        member_types, member_params = zip(*members, strict=True) if members else ((), ())
        parts = [
            f"(({alias}.res_type = 'Patient' AND {alias}.res_id = ANY({ids}::text[])) OR "
            f"{alias}.pk IN (SELECT x.pk FROM idx_reference x JOIN unnest("
            f"{sql.add(list(member_types))}::text[], {sql.add(list(member_params))}::text[]) "
            f"AS m(t, p) ON x.res_type = m.t AND x.param = m.p WHERE x.target_type = 'Patient' "
            f"AND x.target_id = ANY({ids}::text[])))"
        ]
        if self.resources is not None:
            keys = sql.add(list(self.resources))
            parts.append(
                f"({alias}.res_type = 'Patient' OR "
                f"({alias}.res_type || '/' || {alias}.res_id) = ANY({keys}::text[]))"
            )
        if self.period is not None and dates:
            dtypes, dparams = zip(*dates, strict=True)
            dated = (
                f"SELECT 1 FROM idx_date d JOIN unnest({sql.add(list(dtypes))}::text[], "
                f"{sql.add(list(dparams))}::text[]) AS m(t, p) ON d.res_type = m.t AND "
                f"d.param = m.p WHERE d.pk = {alias}.pk"
            )
            start, end = sql.add(self.period[0]), sql.add(self.period[1])
            parts.append(
                f"(NOT EXISTS ({dated}) OR EXISTS ({dated} AND d.high > {start} AND d.low < {end}))"
            )
        if self.organizations is not None:
            parts.append(f"{alias}.owner_org = ANY({sql.add(list(self.organizations))}::text[])")
        return "(" + " AND ".join(parts) + ")"


@dataclass(frozen=True)
class AccessFilter:
    """Row-level read restrictions of a caller, applied to every row a query returns.

    ``readable``: the types the caller may read (None: all). ``owned_only``: types of which
    the caller sees only rows owned by ``organization``. ``scopes``: when set, rows of the
    ``patient_types`` (a patient's record) are visible only inside one of these scopes — the
    caller's purposes of use (``hub.access``); None means no such restriction.
    """

    readable: frozenset[str] | None = None
    owned_only: frozenset[str] = frozenset()
    organization: str | None = None
    scopes: tuple[PatientScope, ...] | None = None
    patient_types: frozenset[str] = frozenset()
    members: tuple[tuple[str, str], ...] = ()
    dates: tuple[tuple[str, str], ...] = ()

    def sql(self, sql: Sql, alias: str) -> str:
        parts = []
        if self.readable is not None:
            parts.append(f"{alias}.res_type = ANY({sql.add(sorted(self.readable))}::text[])")
        if self.owned_only:
            types = sql.add(sorted(self.owned_only))
            parts.append(
                f"({alias}.res_type <> ALL({types}::text[]) "
                f"OR {alias}.owner_org = {sql.add(self.organization)})"
            )
        if self.scopes is not None:
            inside = [
                s.sql(sql, alias, self.members, self.dates) for s in merged_scopes(self.scopes)
            ]
            parts.append(
                f"({alias}.res_type <> ALL({sql.add(sorted(self.patient_types))}::text[])"
                + "".join(f" OR {part}" for part in inside)
                + ")"
            )
        return " AND ".join(parts) or "TRUE"


def merged_scopes(scopes: tuple[PatientScope, ...]) -> list[PatientScope]:
    """The scopes with those that differ only in their patients joined into one.

    The rows are the same — a row of P1 under restriction R, or of P2 under R, is a row of
    P1 ∪ P2 under R — but the SQL has one semi-join per distinct restriction instead of one
    per grant: a doctor with 50 grants in care (a busy ward) is one index lookup, not 50.
    """
    patients: dict[tuple[Any, ...], dict[str, None]] = {}
    for scope in scopes:
        key = (scope.resources, scope.period, scope.organizations)
        patients.setdefault(key, {}).update(dict.fromkeys(scope.patients))
    return [
        PatientScope(tuple(ids), resources, period, organizations)
        for (resources, period, organizations), ids in patients.items()
    ]


@dataclass
class Sql:
    """Collects positional parameters while SQL text is built."""

    params: list[Any] = field(default_factory=list)

    def add(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"


def escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SearchCompiler:
    """Builds the SQL of searches; holds no state between calls."""

    def where(self, sql: Sql, request: SearchRequest, alias: str = "r") -> list[str]:
        clauses = [f"{alias}.res_type = {sql.add(request.resource_type)}", f"NOT {alias}.deleted"]
        clauses += [self.criterion(sql, c, alias) for c in request.criteria]
        return clauses

    def criterion(self, sql: Sql, criterion: Criterion, alias: str) -> str:
        param = criterion.param
        if criterion.chain is not None:
            return self._chain(sql, criterion, alias)
        if param.column is not None:
            return self._column(sql, criterion, alias)
        table = TABLES[param.type]
        head = (
            f"SELECT x.pk FROM {table} x WHERE x.res_type = {sql.add(param.resource_type)} "
            f"AND x.param = {sql.add(param.code)}"
        )
        if criterion.modifier == "missing":
            exists = f"EXISTS ({head} AND x.pk = {alias}.pk)"
            return f"NOT {exists}" if criterion.values[0] else exists
        alternatives = " OR ".join(
            self._value(sql, param, criterion.modifier, v) for v in criterion.values
        )
        negate = "NOT " if criterion.modifier == "not" else ""
        return f"{alias}.pk {negate}IN ({head} AND ({alternatives}))"

    def _chain(self, sql: Sql, criterion: Criterion, alias: str) -> str:
        """Resources referring to a target that meets the chained criterion.

        A chain through Patient matches the person, not one record: a reference to any Patient
        linked (through its master) with a Patient that meets the criterion. So
        ``Observation?patient.identifier=X`` finds results filed under every hospital's record
        of the person with identifier X.
        """
        assert criterion.chain is not None
        param = criterion.param
        head = (
            f"SELECT x.pk FROM idx_reference x WHERE x.res_type = {sql.add(param.resource_type)} "
            f"AND x.param = {sql.add(param.code)}"
        )
        person = param.resource_type != "Patient"  # Patient.link names records, not people
        others = [t for t in criterion.chain_types if t != "Patient" or not person]
        alternatives = []
        if len(others) < len(criterion.chain_types):
            inner = self.criterion(sql, criterion.chain, "t")
            # patient_group() as joins on the set itself: a broad criterion (every patient of
            # a hospital) stays a hash join instead of an array compared row by row.
            alternatives.append(
                "x.target_type = 'Patient' AND x.target_id IN (WITH hit AS (SELECT t.res_id AS id "
                "FROM resource t WHERE t.res_type = 'Patient' AND NOT t.deleted "
                f"AND {inner}), masters AS (SELECT id AS master_id FROM hit UNION "
                "SELECT l.master_id FROM patient_link l JOIN hit ON l.source_id = hit.id), "
                "live AS (SELECT master_id FROM masters UNION SELECT m.merged_into FROM "
                "patient_master m JOIN masters ON m.master_id = masters.master_id "
                "WHERE m.merged_into IS NOT NULL) "
                "SELECT id FROM hit UNION SELECT master_id FROM live UNION "
                "SELECT s.source_id FROM patient_link s JOIN live ON s.master_id = live.master_id)"
            )
        if others:
            inner = self.criterion(sql, criterion.chain, "t")
            alternatives.append(
                f"x.target_type = ANY({sql.add(others)}::text[]) AND EXISTS (SELECT 1 FROM "
                "resource t WHERE t.res_type = x.target_type AND t.res_id = x.target_id "
                f"AND NOT t.deleted AND {inner})"
            )
        either = " OR ".join(f"({a})" for a in alternatives)
        return f"{alias}.pk IN ({head} AND ({either}))"

    def _column(self, sql: Sql, criterion: Criterion, alias: str) -> str:
        column = f"{alias}.{criterion.param.column}"
        if criterion.modifier == "missing":  # every resource has an id and a lastUpdated
            return "FALSE" if criterion.values[0] else "TRUE"
        if criterion.param.type == "token":  # _id
            ids = [v.code for v in criterion.values if isinstance(v, TokenValue) and v.code]
            match = "<> ALL" if criterion.modifier == "not" else "= ANY"
            return f"{column} {match}({sql.add(ids)}::text[])"
        parts = [
            range_condition(sql, v, column, f"({column} + interval '1 microsecond')")
            for v in criterion.values
        ]
        return "(" + " OR ".join(parts) + ")"

    def _value(self, sql: Sql, param: SearchParam, modifier: str | None, value: Any) -> str:
        kind = param.type
        if kind == "token":
            assert isinstance(value, TokenValue)
            parts = []
            if value.code is not None:
                parts.append(f"x.code = {sql.add(value.code)}")
            if value.no_system:
                parts.append("x.system IS NULL")
            elif value.system is not None:
                parts.append(f"x.system = {sql.add(value.system)}")
            return "(" + " AND ".join(parts or ["TRUE"]) + ")"
        if kind == "string":
            if modifier == "exact":
                return f"x.value = {sql.add(value)}"
            pattern = escape_like(normalize(value))
            pattern = f"%{pattern}%" if modifier == "contains" else f"{pattern}%"
            return f"x.value_norm LIKE {sql.add(pattern)}"
        if kind == "uri":
            if modifier == "below":
                return f"x.uri LIKE {sql.add(escape_like(value) + '%')}"
            return f"x.uri = {sql.add(value)}"
        if kind == "date":
            return range_condition(sql, value, "x.low", "x.high")
        if kind == "quantity":
            assert isinstance(value, RangeValue)
            parts = [range_condition(sql, value, "x.value", "x.value", numeric=True)]
            if value.system:
                parts.append(f"x.system = {sql.add(value.system)}")
            if value.code:
                parts.append(f"x.code = {sql.add(value.code)}")
            return "(" + " AND ".join(parts) + ")"
        if kind == "reference":
            assert isinstance(value, ReferenceValue)
            if value.url is not None:
                return f"x.url = {sql.add(value.url)}"
            target = sql.add(value.resource_id)
            parts = [f"x.target_id = {target}"]
            if (
                value.resource_type in (None, "Patient")
                and "Patient" in param.targets
                and param.resource_type != "Patient"  # Patient.link names records, not people
            ):
                # A patient is the person: every record linked with this one (see _chain).
                parts = [f"x.target_id IN (SELECT patient_group(ARRAY[{target}]::text[]))"]
            if value.resource_type:
                parts.append(f"x.target_type = {sql.add(value.resource_type)}")
            return "(" + " AND ".join(parts) + ")"
        raise AssertionError(kind)

    # -- ordering and paging --------------------------------------------------------------------

    def sort_columns(self, sql: Sql, sort: list[SortKey], alias: str = "r") -> list[SortColumn]:
        """The ORDER BY columns of a sort, ending with ``pk`` as the tie-breaker."""
        columns = [
            SortColumn(self._sort_expression(sql, key, alias), key.descending, _sql_type(key))
            for key in sort
        ]
        last_descending = sort[-1].descending if sort else False
        columns.append(SortColumn(f"{alias}.pk", last_descending, "bigint"))
        return columns

    def _sort_expression(self, sql: Sql, key: SortKey, alias: str) -> str:
        param = key.param
        if param.column is not None:
            return f"{alias}.{param.column}"
        table = TABLES[param.type]
        column, lowest, highest = SORT_COLUMNS[param.type]
        # A resource's sort value is its smallest value ascending, its largest descending;
        # resources without one sort last either way.
        aggregate, missing = ("max", lowest) if key.descending else ("min", highest)
        if param.type == "date":
            column = "high" if key.descending else "low"
        return (
            f"COALESCE((SELECT {aggregate}(s.{column}) FROM {table} s WHERE s.pk = {alias}.pk "
            f"AND s.param = {sql.add(param.code)}), {missing})"
        )

    def keyset(self, sql: Sql, columns: list[SortColumn], cursor: Cursor) -> str:
        """Rows strictly after (or, paging backward, before) the cursor position."""
        values = [*cursor.values, cursor.pk]
        if len(values) != len(columns):
            raise ValueError("cursor does not match the sort order")
        alternatives = []
        for i, column in enumerate(columns):
            op = ">" if column.descending == cursor.backward else "<"
            equal = [f"{columns[j].name} = {columns[j].param(sql, values[j])}" for j in range(i)]
            last = f"{column.name} {op} {column.param(sql, values[i])}"
            alternatives.append(" AND ".join([*equal, last]))
        return "(" + " OR ".join(f"({a})" for a in alternatives) + ")"


@dataclass(frozen=True)
class SortColumn:
    """One ORDER BY expression, with the PostgreSQL type of its values."""

    expression: str
    descending: bool
    sql_type: str
    alias: str = ""

    @property
    def name(self) -> str:
        return self.alias or self.expression

    def param(self, sql: Sql, value: Any) -> str:
        """``value`` comes from a client-supplied cursor: ValueError unless it fits the type."""
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"cursor value {value!r} is not a {self.sql_type}")
        if self.sql_type == "bigint":
            if not isinstance(value, int) or not -(2**63) <= value < 2**63:
                raise ValueError(f"cursor value {value!r} is not a bigint")
            return f"{sql.add(value)}::bigint"
        text = str(value)
        if self.sql_type == "timestamptz" and text not in ("infinity", "-infinity"):
            text = datetime.fromisoformat(text).isoformat()  # canonical: PostgreSQL reads it
        elif self.sql_type == "numeric":
            try:
                number = Decimal(text)
            except InvalidOperation:
                raise ValueError(f"cursor value {value!r} is not a number") from None
            if number.is_nan() or (number.is_finite() and abs(number.adjusted()) > 1000):
                raise ValueError(f"cursor value {value!r} is out of range")
            text = str(number)
        return f"CAST({sql.add(text)}::text AS {self.sql_type})"


def _sql_type(key: SortKey) -> str:
    if key.param.column == "last_updated" or key.param.type == "date":
        return "timestamptz"
    return "numeric" if key.param.type == "quantity" else "text"


def range_condition(sql: Sql, value: RangeValue, low: str, high: str, numeric: bool = False) -> str:
    """Compare a target range ``[low, high)`` with a search value, per the FHIR prefixes."""
    prefix = value.prefix
    if numeric:  # the stored number is a point; the search value has an implicit precision
        if prefix in ("eq", "ne"):
            inside = f"({low} >= {sql.add(value.low)} AND {low} < {sql.add(value.high)})"
            return inside if prefix == "eq" else f"NOT {inside}"
        if prefix in ("sa", "eb"):
            bound = value.high if prefix == "sa" else value.low
            return f"{low} {'>=' if prefix == 'sa' else '<'} {sql.add(bound)}"
        exact = value.low + (value.high - value.low) / 2
        op = {"gt": ">", "lt": "<", "ge": ">=", "le": "<="}[prefix]
        return f"{low} {op} {sql.add(exact)}"
    if prefix in ("eq", "ne"):
        inside = f"({low} >= {sql.add(value.low)} AND {high} <= {sql.add(value.high)})"
        return inside if prefix == "eq" else f"NOT {inside}"
    column, op, bound = {
        "gt": (high, ">", value.high),
        "ge": (high, ">", value.low),
        "lt": (low, "<", value.low),
        "le": (low, "<", value.high),
        "sa": (low, ">=", value.high),
        "eb": (high, "<=", value.low),
    }[prefix]
    return f"{column} {op} {sql.add(bound)}"
