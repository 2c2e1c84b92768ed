"""The DICOM index's read side: QIDO-RS queries, and the lookups WADO-RS needs.

A QIDO-RS query string becomes a ``Query`` — plain data: the level, the path's study and
series, the filters (attribute, how it matches, values), the attributes to return, limit and
offset — by ``parse_query`` (PS3.18 §8.3.4: keywords or tags, universal matching for empty
values, single value, wildcard ``*``/``?``, UID lists, date and time ranges, fuzzy person
names). ``compile_query`` turns it into one parameterised SQL statement over the index tables
of migration 0005 with the caller's row filter, and ``search`` runs it and renders DICOM JSON
(PS3.18 F.2), with the related-series/instance counts computed for the page only.

Every attribute the hub can match or return is described once, in ``ATTRIBUTES``, with its
level, VR and column: that table is the whole of what QIDO supports. A name that is not a DICOM
attribute, or one that cannot be matched here, is refused with 400 rather than ignored: a
filter silently dropped would return more than was asked for.

The WADO-RS side (``find_instances``, ``metadata_page``) returns what retrieval needs: the
stored objects of a study, series or instance (object key, transfer syntax, frames), and the
stored metadata JSON texts, which are served without being parsed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Literal

import asyncpg
import orjson
from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword

from hub.storage.search_sql import AccessFilter

CHARACTER_SET = "ISO_IR 192"  # what the hub answers in: UTF-8
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 100_000
MAX_UIDS = 1000


class QueryError(ValueError):
    """A malformed or unsupported QIDO-RS query (answered 400 with this message)."""


class Level(IntEnum):
    """Query/retrieve levels; a higher value is a lower level (study > series > instance)."""

    STUDY = 1
    SERIES = 2
    INSTANCE = 3


Match = Literal["uid", "text", "pn", "date", "time", "codes", "int"]


@dataclass(frozen=True)
class Attribute:
    """What QIDO knows of an attribute: where it lives and how it is matched.

    ``column`` is the SQL expression of its value (``None`` for computed attributes: counts,
    RetrieveURL, constants); ``match`` says how a query value is matched (``None``: it can be
    returned but not matched).
    """

    keyword: str
    tag: str  # 8 hex digits, upper case, as in DICOM JSON
    vr: str
    level: Level
    column: str | None = None
    match: Match | None = None


def _a(
    keyword: str, vr: str, level: Level, column: str | None = None, match: Match | None = None
) -> Attribute:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return Attribute(keyword, f"{tag:08X}", vr, level, column, match)


ST, SE, IN = Level.STUDY, Level.SERIES, Level.INSTANCE
ATTRIBUTES: tuple[Attribute, ...] = (
    # study (with the patient attributes, which the index keeps on the study)
    _a("SpecificCharacterSet", "CS", ST),
    _a("StudyDate", "DA", ST, "st.study_date", "date"),
    _a("StudyTime", "TM", ST, "st.study_time", "time"),
    _a("AccessionNumber", "SH", ST, "st.accession", "text"),
    _a("InstanceAvailability", "CS", ST),
    _a("ModalitiesInStudy", "CS", ST, "st.modalities", "codes"),
    _a("ReferringPhysicianName", "PN", ST, "st.referring", "pn"),
    _a("StudyDescription", "LO", ST, "st.description", "text"),
    _a("RetrieveURL", "UR", ST),
    _a("PatientName", "PN", ST, "st.patient_name", "pn"),
    _a("PatientID", "LO", ST, "st.patient_id", "text"),
    _a("IssuerOfPatientID", "LO", ST, "st.issuer", "text"),
    _a("PatientBirthDate", "DA", ST, "st.birth_date", "date"),
    _a("PatientSex", "CS", ST, "st.sex", "text"),
    _a("StudyInstanceUID", "UI", ST, "st.study_uid", "uid"),
    _a("StudyID", "SH", ST, "st.study_id", "text"),
    _a("NumberOfStudyRelatedSeries", "IS", ST),
    _a("NumberOfStudyRelatedInstances", "IS", ST),
    # series
    _a("Modality", "CS", SE, "se.modality", "codes"),
    _a("SeriesDescription", "LO", SE, "se.description", "text"),
    _a("BodyPartExamined", "CS", SE, "se.body_part", "text"),
    _a("SeriesInstanceUID", "UI", SE, "se.series_uid", "uid"),
    _a("SeriesNumber", "IS", SE, "se.series_number", "int"),
    _a("Laterality", "CS", SE, "se.laterality", "text"),
    _a("NumberOfSeriesRelatedInstances", "IS", SE),
    # instance
    _a("SOPClassUID", "UI", IN, "i.sop_class_uid", "uid"),
    _a("SOPInstanceUID", "UI", IN, "i.sop_instance_uid", "uid"),
    _a("AvailableTransferSyntaxUID", "UI", IN, "i.transfer_syntax"),
    _a("InstanceNumber", "IS", IN, "i.instance_number", "int"),
    _a("NumberOfFrames", "IS", IN, "i.frames", "int"),
    _a("Rows", "US", IN, "i.rows", "int"),
    _a("Columns", "US", IN, "i.columns", "int"),
    _a("BitsAllocated", "US", IN),  # from the stored metadata
)
BY_KEYWORD = {a.keyword: a for a in ATTRIBUTES}
BY_TAG = {a.tag: a for a in ATTRIBUTES}

# What each level returns without includefield (PS3.18 Tables 6.7.1-2, -2a, -2b), plus the
# UIDs of the levels above so each result can be retrieved on its own.
DEFAULTS: dict[Level, tuple[str, ...]] = {
    ST: (
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "InstanceAvailability",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "RetrieveURL",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    SE: (
        "SpecificCharacterSet",
        "Modality",
        "SeriesDescription",
        "RetrieveURL",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "NumberOfSeriesRelatedInstances",
    ),
    IN: (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "InstanceAvailability",
        "RetrieveURL",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
    ),
}
CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching"})


@dataclass(frozen=True)
class Filter:
    """One matching key: the attribute, how its value is matched, and the value(s).

    ``kind``: ``equals`` (one value), ``any`` (a list: UIDs, codes), ``like`` (a pattern with
    ``*``/``?``), ``pn`` (a person name pattern; ``fuzzy`` for PS3.18 §8.3.4.2), ``range``
    (``values`` = low, high; either may be None).
    """

    attribute: Attribute
    kind: Literal["equals", "any", "like", "pn", "range"]
    values: tuple[Any, ...]
    fuzzy: bool = False


@dataclass(frozen=True)
class Query:
    """A parsed QIDO-RS query."""

    level: Level
    study_uid: str | None = None
    series_uid: str | None = None
    filters: tuple[Filter, ...] = ()
    include: tuple[str, ...] = ()  # tags (8 hex) beyond the defaults
    include_all: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    limit_given: bool = False
    fuzzy: bool = False
    notes: tuple[str, ...] = field(default=())  # for a Warning header (a limit lowered)

    def returned(self) -> list[str]:
        """The tags each result carries: defaults (with the levels above when the path does
        not fix them), matching keys, includefield."""
        keywords: list[str] = list(DEFAULTS[self.level])
        if self.level >= SE and self.study_uid is None:
            keywords += DEFAULTS[ST]
        if self.level == IN and self.series_uid is None:
            keywords += DEFAULTS[SE]
        if self.include_all:
            keywords += [a.keyword for a in ATTRIBUTES if a.level <= self.level]
        tags = [BY_KEYWORD[k].tag for k in keywords]
        tags += [f.attribute.tag for f in self.filters]
        tags += list(self.include)
        return sorted(dict.fromkeys(t for t in tags if _applies(t, self.level)))


def _applies(tag: str, level: Level) -> bool:
    """Indexed attributes of a lower level are not returned at a higher one (a study result
    has no SOP Instance UID); any other DICOM attribute comes from a stored instance."""
    attribute = BY_TAG.get(tag)
    return attribute is None or attribute.level <= level


# -- parsing ---------------------------------------------------------------------------------

_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


def resolve(name: str) -> tuple[str, Attribute | None]:
    """A keyword or tag → (tag, what QIDO knows of it); QueryError if it is neither."""
    text = name.strip()
    if "." in text:
        raise QueryError(
            f"{text!r}: attributes inside sequences cannot be queried or included here"
        )
    if _TAG.match(text):
        tag = text.upper()
        if not dictionary_has_tag(int(tag, 16)) and tag not in BY_TAG:
            group = int(tag[:4], 16)
            if group % 2 == 0:
                raise QueryError(f"unknown attribute tag {text!r}")
        return tag, BY_TAG.get(tag)
    number = tag_for_keyword(text)
    if number is None:
        raise QueryError(f"unknown attribute {text!r}: not a DICOM keyword or tag")
    tag = f"{number:08X}"
    return tag, BY_TAG.get(tag)


def parse_query(
    level: Level,
    pairs: Iterable[tuple[str, str]],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Query:
    """The query of a QIDO-RS request at ``level`` (path UIDs given separately)."""
    items = list(pairs)
    control: dict[str, str] = {}
    include: list[str] = []
    include_all = False
    keys: dict[str, tuple[Attribute, list[str]]] = {}
    for name, value in items:
        if "\x00" in name or "\x00" in value:
            raise QueryError("a query parameter contains a NUL character")
        lowered = name.lower()
        if lowered == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if not item:
                    continue
                if item.lower() == "all":
                    include_all = True
                    continue
                tag, _ = resolve(item)
                include.append(tag)
            continue
        if lowered in CONTROL:
            if lowered in control:
                raise QueryError(f"{name} is given more than once")
            control[lowered] = value
            continue
        tag, attribute = resolve(name)
        if attribute is None or attribute.match is None:
            keyword = keyword_for_tag(int(tag, 16)) or tag
            supported = ", ".join(
                a.keyword for a in ATTRIBUTES if a.match and a.level <= max(level, SE)
            )
            raise QueryError(
                f"{keyword} ({tag[:4]},{tag[4:]}) cannot be used as a matching key here;"
                f" supported: {supported}"
            )
        entry = keys.setdefault(attribute.tag, (attribute, []))
        entry[1].append(value)

    fuzzy = _boolean(control.get("fuzzymatching", "false"), "fuzzymatching")
    filters: list[Filter] = []
    for attribute, values in keys.values():
        if len(values) > 1 and attribute.match != "uid":
            raise QueryError(f"{attribute.keyword} is given more than once")
        parsed = _filter(attribute, values, fuzzy)
        if parsed is None:
            include.append(attribute.tag)  # universal matching: return it
        else:
            filters.append(parsed)

    notes: list[str] = []
    limit = _count(control.get("limit"), "limit", DEFAULT_LIMIT)
    if limit > MAX_LIMIT:
        notes.append(f"limit {limit} lowered to {MAX_LIMIT}, the most one response carries")
        limit = MAX_LIMIT
    offset = _count(control.get("offset"), "offset", 0)
    if offset > MAX_OFFSET:
        raise QueryError(f"offset must be at most {MAX_OFFSET}; narrow the query instead")
    return Query(
        level=level,
        study_uid=study_uid,
        series_uid=series_uid,
        filters=tuple(filters),
        include=tuple(dict.fromkeys(include)),
        include_all=include_all,
        limit=limit,
        offset=offset,
        limit_given="limit" in control,
        fuzzy=fuzzy,
        notes=tuple(notes),
    )


def _boolean(value: str, name: str) -> bool:
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise QueryError(f"{name} must be true or false, not {value!r}")


def _count(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if not value.strip().isdigit():
        raise QueryError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _filter(attribute: Attribute, values: list[str], fuzzy: bool) -> Filter | None:
    """The filter of one matching key; None for universal matching (empty or ``*``)."""
    match = attribute.match
    if match == "uid":
        uids = [u.strip() for v in values for u in re.split(r"[,\\]", v) if u.strip()]
        if not uids:
            return None
        for uid in uids:
            if len(uid) > 64 or not _UID.match(uid):
                raise QueryError(f"{attribute.keyword}: {uid[:70]!r} is not a UID")
        if len(uids) > MAX_UIDS:
            raise QueryError(f"{attribute.keyword}: at most {MAX_UIDS} UIDs per query")
        unique = tuple(dict.fromkeys(uids))
        return Filter(attribute, "equals" if len(unique) == 1 else "any", unique)
    value = values[0].strip()
    if value in ("", "*"):
        return None
    if match == "text":
        if "*" in value or "?" in value:
            return Filter(attribute, "like", (value,))
        return Filter(attribute, "equals", (value,))
    if match == "pn":
        return Filter(attribute, "pn", (value,), fuzzy=fuzzy)
    if match == "codes":
        codes = tuple(dict.fromkeys(c.strip() for c in re.split(r"[,\\]", value) if c.strip()))
        if any("*" in c or "?" in c for c in codes):
            raise QueryError(f"{attribute.keyword}: wildcards are not supported for codes")
        return Filter(attribute, "equals" if len(codes) == 1 else "any", codes)
    if match == "int":
        if not re.fullmatch(r"[+-]?\d{1,9}", value):
            raise QueryError(f"{attribute.keyword}: {value!r} is not an integer")
        return Filter(attribute, "equals", (int(value),))
    if match == "date":
        return _range(attribute, value, _DATE, _as_date, "a date (YYYYMMDD) or date range")
    if match == "time":
        return _range(attribute, value, _TIME, str, "a time (HHMMSS) or time range")
    raise AssertionError(match)


def _range(
    attribute: Attribute, value: str, pattern: re.Pattern[str], convert: Any, what: str
) -> Filter:
    low_text, dash, high_text = value.partition("-")
    error = QueryError(
        f"{attribute.keyword}: {value!r} is not {what} (value, value-, -value or low-high)"
    )
    for text in (low_text, high_text):
        if text and not pattern.match(text):
            raise error
    if not dash:
        return Filter(attribute, "equals", (convert(low_text),))
    if not low_text and not high_text:
        raise error
    low = convert(low_text) if low_text else None
    high = convert(high_text) if high_text else None
    if low is not None and high is not None and low > high:
        raise QueryError(f"{attribute.keyword}: the range {value!r} ends before it starts")
    return Filter(attribute, "range", (low, high))


def _as_date(text: str) -> dt.date:
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise QueryError(f"{text!r} is not a valid date") from None


# -- SQL ---------------------------------------------------------------------------------------


class _Params:
    def __init__(self) -> None:
        self.values: list[Any] = []

    def add(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


_FROM = {
    ST: "dicom_study st",
    SE: "dicom_series se JOIN dicom_study st ON st.study_uid = se.study_uid",
    IN: "dicom_instance i JOIN dicom_series se ON se.series_uid = i.series_uid"
    " JOIN dicom_study st ON st.study_uid = i.study_uid",
}
# Stable orders. Studies: newest first, in the order of index dicom_study_date
# (study_date DESC, study_uid), so a page is read from the index without sorting.
_ORDER_STUDY = "st.study_date DESC, st.study_uid"
_ORDER_SERIES = "se.series_number NULLS LAST, se.series_uid"
_ORDER_INSTANCE = "i.instance_number NULLS LAST, i.sop_instance_uid"


def _order(query: Query) -> str:
    if query.level == ST:
        return _ORDER_STUDY
    if query.level == SE:
        return _ORDER_SERIES if query.study_uid else f"{_ORDER_STUDY}, {_ORDER_SERIES}"
    if query.series_uid:
        return _ORDER_INSTANCE
    if query.study_uid:
        return f"{_ORDER_SERIES}, {_ORDER_INSTANCE}"
    return f"{_ORDER_STUDY}, {_ORDER_SERIES}, {_ORDER_INSTANCE}"


def _like(value: str) -> str:
    """A DICOM wildcard pattern as a LIKE pattern (``*`` → ``%``, ``?`` → ``_``)."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _condition(flt: Filter, params: _Params) -> str:
    attribute = flt.attribute
    column = attribute.column
    assert column is not None
    if attribute.match == "codes" and attribute.keyword == "ModalitiesInStudy":
        # an array column: matches when it holds any of the codes (GIN index)
        return f"{column} && {params.add(list(flt.values))}::text[]"
    if flt.kind == "equals":
        value = flt.values[0]
        if attribute.keyword == "PatientBirthDate":  # stored as DICOM text (YYYYMMDD)
            return f"{column} = {params.add(value.strftime('%Y%m%d'))}"
        if attribute.match == "time":  # 0930 matches 0930, 093000 and 093000.25
            return f"left({column}, {len(value)}) = {params.add(value)}"
        return f"{column} = {params.add(value)}"
    if flt.kind == "any":
        return f"{column} = ANY({params.add(list(flt.values))}::text[])"
    if flt.kind == "like":
        return f"{column} LIKE {params.add(_like(flt.values[0]))}"
    if flt.kind == "range":
        low, high = flt.values
        parts = []
        if attribute.keyword == "PatientBirthDate":  # stored as DICOM text (YYYYMMDD)
            low = low.strftime("%Y%m%d") if low else None
            high = high.strftime("%Y%m%d") if high else None
        if attribute.match == "time":
            if low:
                parts.append(f"{column} >= {params.add(low)}")
            if high:
                parts.append(f"left({column}, {len(high)}) <= {params.add(high)}")
        else:
            if low is not None:
                parts.append(f"{column} >= {params.add(low)}")
            if high is not None:
                parts.append(f"{column} <= {params.add(high)}")
        return " AND ".join(parts)
    if flt.kind == "pn":
        return _person_name(flt, params)
    raise AssertionError(flt.kind)


def _person_name(flt: Filter, params: _Params) -> str:
    """PN matching, case-insensitive (PS3.4 C.2.2.2.1 allows it for PN), on each component
    group (alphabetic, ideographic, phonetic) of the stored name.

    Fuzzy (PS3.18 §8.3.4.2): each word of the value must begin one of the name's search
    tokens — ``name_search``, written at receipt, holds the lower-case name, its components,
    the joined characters and their pinyin (``王^芳 王 芳 王芳 wang fang wangfang``), so
    ``wang``, ``王`` and ``fang`` all find 王^芳. Other PN attributes: their components.
    """
    column = flt.attribute.column
    assert column is not None
    value = flt.values[0]
    if flt.fuzzy:
        words = [w for w in re.split(r"[\s^=,]+", value.lower().replace("*", " ")) if w]
        if not words:
            return "TRUE"
        conditions = []
        for word in words:
            prefix = _like(word) + "%"
            if flt.attribute.keyword == "PatientName":
                # a prefix range scan of the name tokens' index (dicom_study_name)
                # ARRAY(...) is an uncorrelated InitPlan: the token prefix is scanned first,
                # then the studies fetched by key (never a walk of every study by date).
                conditions.append(
                    "st.study_uid = ANY(ARRAY(SELECT n.study_uid FROM dicom_study_name n"
                    f" WHERE n.token LIKE {params.add(prefix)}))"
                )
            else:
                conditions.append(
                    f"(' ' || translate(lower({column}), '^=', '  ')) LIKE "
                    f"{params.add('% ' + prefix)}"
                )
        return "(" + " AND ".join(conditions) + ")"
    like = _like(value).lower()
    pattern = params.add(like)
    # The first LIKE is implied by the exact test after it (a group that matches is part of
    # the name); it lets a trigram index on lower(name) narrow the rows when there is one.
    # Then: most names have one component group (one LIKE); otherwise each group in turn.
    return (
        f"(lower({column}) LIKE {params.add('%' + like + '%')}"
        f" AND CASE WHEN strpos({column}, '=') = 0 THEN lower({column}) LIKE {pattern}"
        f" ELSE EXISTS (SELECT 1 FROM unnest(string_to_array(lower({column}), '=')) AS g(v)"
        f" WHERE g.v LIKE {pattern}) END)"
    )


def _where(
    query: Query, organization: str | None, params: _Params, purposes: AccessFilter | None
) -> list[str]:
    where: list[str] = []
    if query.study_uid is not None:
        column = {ST: "st.study_uid", SE: "se.study_uid", IN: "i.study_uid"}[query.level]
        where.append(f"{column} = {params.add(query.study_uid)}")
    if query.series_uid is not None:
        where.append(f"i.series_uid = {params.add(query.series_uid)}")
    if organization is not None:
        where.append(f"st.organization = {params.add(organization)}")
    if purposes is not None:  # a doctor's or consultant's: studies whose ImagingStudy passes
        where.append(
            "st.imaging_study_id IN (SELECT r.res_id FROM resource r WHERE r.res_type = "
            f"'ImagingStudy' AND NOT r.deleted AND {purposes.sql(params, 'r')})"  # type: ignore[arg-type]
        )
    for flt in query.filters:
        condition = _condition(flt, params)
        level = flt.attribute.level
        if level <= query.level:
            where.append(condition)
        elif level == SE:  # a series attribute in a study query
            where.append(
                "EXISTS (SELECT 1 FROM dicom_series se WHERE se.study_uid = st.study_uid"
                f" AND {condition})"
            )
        elif query.level == SE:  # an instance attribute in a series query
            where.append(
                "EXISTS (SELECT 1 FROM dicom_instance i WHERE i.series_uid = se.series_uid"
                f" AND {condition})"
            )
        else:  # an instance attribute in a study query
            where.append(
                "EXISTS (SELECT 1 FROM dicom_instance i WHERE i.study_uid = st.study_uid"
                f" AND {condition})"
            )
    return where


_COLUMNS = {
    ST: [
        "st.study_uid",
        "st.organization",
        "st.patient_id",
        "st.issuer",
        "st.patient_name",
        "st.birth_date",
        "st.sex",
        "st.study_date",
        "st.study_time",
        "st.accession",
        "st.study_id",
        "st.description",
        "st.referring",
        "st.modalities",
        "st.patient_ref",
        "st.imaging_study_id",
    ],
    SE: [
        "se.series_uid",
        "se.modality",
        "se.series_number",
        "se.description AS series_description",
        "se.body_part",
        "se.laterality",
    ],
    IN: [
        "i.sop_instance_uid",
        "i.sop_class_uid",
        "i.instance_number",
        "i.transfer_syntax",
        "i.rows",
        "i.columns",
        "i.frames",
    ],
}
_BITS_ALLOCATED = "substring(i.metadata from '\"00280100\":(\\{[^{}]*\\})') AS bits_allocated"


def compile_query(
    query: Query, organization: str | None, purposes: AccessFilter | None = None
) -> tuple[str, list[Any]]:
    """One statement for the query's page (``limit + 1`` rows: the extra one tells whether
    more remain). ``organization``: only studies it owns (a hospital), or None (all).
    ``purposes``: a doctor's or consultant's row filter (``hub.access``), applied to the
    study's ImagingStudy."""
    params = _Params()
    level = query.level
    columns = [c for lvl in (ST, SE, IN) if lvl <= level for c in _COLUMNS[lvl]]
    returned = set(query.returned())
    extra = [t for t in returned if t not in BY_TAG]
    if level == IN:
        if extra:
            columns.append("i.metadata")
        elif BY_KEYWORD["BitsAllocated"].tag in returned:
            columns.append(_BITS_ALLOCATED)
    where = _where(query, organization, params, purposes)
    order = _order(query)
    limit = params.add(query.limit + 1)
    offset = params.add(query.offset)
    page = (
        f"SELECT {', '.join(columns)} FROM {_FROM[level]}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
        + f" ORDER BY {order} LIMIT {limit} OFFSET {offset}"
    )
    # Counts and sample metadata for the page's rows only (correlated subqueries over the
    # study/series indexes of dicom_series and dicom_instance).
    outer = ["p.*"]
    if BY_KEYWORD["NumberOfStudyRelatedSeries"].tag in returned:
        outer.append(
            "(SELECT count(*) FROM dicom_series x WHERE x.study_uid = p.study_uid) AS series_count"
        )
    if BY_KEYWORD["NumberOfStudyRelatedInstances"].tag in returned:
        outer.append(
            "(SELECT count(*) FROM dicom_instance x WHERE x.study_uid = p.study_uid)"
            " AS instance_count"
        )
    if BY_KEYWORD["NumberOfSeriesRelatedInstances"].tag in returned:
        outer.append(
            "(SELECT count(*) FROM dicom_instance x WHERE x.series_uid = p.series_uid)"
            " AS series_instance_count"
        )
    if extra and level != IN:  # other attributes: from the first instance stored of each
        scope = "study_uid" if level == ST else "series_uid"
        outer.append(
            f"(SELECT x.metadata FROM dicom_instance x WHERE x.{scope} = p.{scope}"
            " ORDER BY x.received_at, x.sop_instance_uid LIMIT 1) AS metadata"  # the first
        )
    if len(outer) == 1:
        return page, params.values
    outer_order = ", ".join(_outer(o) for o in order.split(", "))
    sql = f"SELECT {', '.join(outer)} FROM ({page}) p ORDER BY {outer_order}"
    return sql, params.values


def _outer(term: str) -> str:
    """An ORDER BY term of the inner page, over its output columns (``p.``)."""
    column, _, direction = term.partition(" ")
    name = column.split(".", 1)[1]
    return f"p.{name} {direction}".strip()


# -- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchResult:
    """A page of results as DICOM JSON, whether more remain, and what was touched (audit)."""

    body: bytes
    count: int
    more: bool
    patients: frozenset[str]
    studies: tuple[tuple[str, str | None], ...]  # (study UID, ImagingStudy id)


async def search(
    connection: asyncpg.Connection,
    query: Query,
    organization: str | None,
    base_url: str,
    purposes: AccessFilter | None = None,
) -> SearchResult:
    """Run the query; ``base_url`` is the DICOMweb root for RetrieveURL."""
    sql, args = compile_query(query, organization, purposes)
    rows = await connection.fetch(sql, *args)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    tags = query.returned()
    results = [_result(row, query.level, tags, base_url) for row in rows]
    studies = tuple(dict.fromkeys((r["study_uid"], r["imaging_study_id"]) for r in rows))
    patients = frozenset(f"Patient/{r['patient_ref']}" for r in rows if r["patient_ref"])
    return SearchResult(orjson.dumps(results), len(results), more, patients, studies)


def _result(row: asyncpg.Record, level: Level, tags: Sequence[str], base: str) -> dict[str, Any]:
    metadata: dict[str, Any] | None = None
    raw = row.get("metadata") if "metadata" in row else None
    if raw:
        metadata = orjson.loads(raw)
    out: dict[str, Any] = {}
    for tag in tags:
        attribute = BY_TAG.get(tag)
        if attribute is None:
            if metadata is not None and tag in metadata:
                out[tag] = metadata[tag]
            continue
        element = _element(attribute, row, level, base)
        if element is not None:
            out[tag] = element
    return out


def _element(attribute: Attribute, row: asyncpg.Record, level: Level, base: str) -> Any:
    keyword = attribute.keyword
    vr = attribute.vr
    if keyword == "SpecificCharacterSet":
        return {"vr": vr, "Value": [CHARACTER_SET]}
    if keyword == "InstanceAvailability":
        return {"vr": vr, "Value": ["ONLINE"]}
    if keyword == "RetrieveURL":
        url = f"{base}/studies/{row['study_uid']}"
        if level >= SE:
            url += f"/series/{row['series_uid']}"
        if level == IN:
            url += f"/instances/{row['sop_instance_uid']}"
        return {"vr": vr, "Value": [url]}
    if keyword == "NumberOfStudyRelatedSeries":
        return _value(vr, row["series_count"])
    if keyword == "NumberOfStudyRelatedInstances":
        return _value(vr, row["instance_count"])
    if keyword == "NumberOfSeriesRelatedInstances":
        return _value(vr, row["series_instance_count"])
    if keyword == "BitsAllocated":
        fragment = row.get("bits_allocated") if "bits_allocated" in row else None
        if fragment:
            return orjson.loads(fragment)
        raw = row.get("metadata") if "metadata" in row else None
        if raw:
            return orjson.loads(raw).get(attribute.tag, {"vr": vr})
        return {"vr": vr}
    column = attribute.column
    assert column is not None
    name = column.split(".", 1)[1]
    if name == "description" and attribute.level == SE:
        name = "series_description"
    return _value(vr, row[name])


def _value(vr: str, value: Any) -> dict[str, Any]:
    """A DICOM JSON element (PS3.18 F.2.2) from an index value; empty when absent."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [person_name(str(value))]}
    if vr == "DA" and isinstance(value, dt.date):
        return {"vr": vr, "Value": [value.strftime("%Y%m%d")]}
    if vr in ("IS", "US", "UL", "SS", "SL"):
        return {"vr": vr, "Value": [int(value)]}
    if isinstance(value, list):
        return {"vr": vr, "Value": [str(v) for v in value]}
    return {"vr": vr, "Value": [str(value)]}


def person_name(value: str) -> dict[str, str]:
    """A PN value as its DICOM JSON object: the ``=``-separated component groups."""
    groups = value.split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {names[i]: g for i, g in enumerate(groups[:3]) if g}


# -- WADO-RS lookups ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRef:
    """The study a retrieval touches: its owner and FHIR names (for the audit record)."""

    study_uid: str
    organization: str
    patient_ref: str | None
    imaging_study_id: str | None


@dataclass(frozen=True)
class StoredInstance:
    """A stored instance, as WADO-RS needs it: where its file is, and what it holds."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    object_key: str
    size: int
    frames: int | None
    rows: int | None
    columns: int | None
    instance_number: int | None
    series_number: int | None


_INSTANCES = """
SELECT st.organization, st.patient_ref, st.imaging_study_id,
       i.study_uid, i.series_uid, i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax,
       i.object_key, i.size, i.frames, i.rows, i.columns, i.instance_number, se.series_number
FROM dicom_study st
JOIN dicom_instance i ON i.study_uid = st.study_uid
JOIN dicom_series se ON se.series_uid = i.series_uid
WHERE st.study_uid = $1 AND ($2::text IS NULL OR st.organization = $2) {scope}
ORDER BY se.series_number NULLS LAST, i.series_uid, i.instance_number NULLS LAST,
         i.sop_instance_uid
"""


async def find_instances(
    connection: asyncpg.Connection,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    *,
    organization: str | None,
) -> tuple[StudyRef, list[StoredInstance]] | None:
    """The stored instances of a study, a series of it, or one instance of that series, if
    the caller (``organization``: a hospital's own only) may see them; None otherwise."""
    args: list[Any] = [study_uid, organization]
    scope = ""
    if series_uid is not None:
        args.append(series_uid)
        scope += " AND i.series_uid = $3"
    if sop_instance_uid is not None:
        args.append(sop_instance_uid)
        scope += f" AND i.sop_instance_uid = ${len(args)}"
    rows = await connection.fetch(_INSTANCES.format(scope=scope), *args)
    if not rows:
        return None
    first = rows[0]
    study = StudyRef(
        study_uid, first["organization"], first["patient_ref"], first["imaging_study_id"]
    )
    return study, [
        StoredInstance(
            study_uid=r["study_uid"],
            series_uid=r["series_uid"],
            sop_instance_uid=r["sop_instance_uid"],
            sop_class_uid=r["sop_class_uid"],
            transfer_syntax=r["transfer_syntax"],
            object_key=r["object_key"],
            size=int(r["size"]),
            frames=r["frames"],
            rows=r["rows"],
            columns=r["columns"],
            instance_number=r["instance_number"],
            series_number=r["series_number"],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class MetadataPage:
    """Stored metadata JSON texts (one per instance, unparsed), and where the next page
    starts (None: this was the last)."""

    study: StudyRef | None
    texts: list[str]
    after: tuple[str, str] | None


_METADATA = """
SELECT st.organization, st.patient_ref, st.imaging_study_id,
       i.series_uid, i.sop_instance_uid, i.metadata
FROM dicom_study st
JOIN dicom_instance i ON i.study_uid = st.study_uid
WHERE st.study_uid = $1 AND ($2::text IS NULL OR st.organization = $2) {scope}
ORDER BY i.series_uid, i.sop_instance_uid
LIMIT {limit}
"""


async def metadata_page(
    connection: asyncpg.Connection,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
    *,
    organization: str | None,
    after: tuple[str, str] | None = None,
    size: int = 500,
) -> MetadataPage:
    """A page of stored metadata of a study, series or instance (keyset order: series UID,
    SOP Instance UID), visible to the caller; an empty first page means not found."""
    args: list[Any] = [study_uid, organization]
    scope = ""
    if series_uid is not None:
        args.append(series_uid)
        scope += f" AND i.series_uid = ${len(args)}"
    if sop_instance_uid is not None:
        args.append(sop_instance_uid)
        scope += f" AND i.sop_instance_uid = ${len(args)}"
    if after is not None:
        args += list(after)
        scope += f" AND (i.series_uid, i.sop_instance_uid) > (${len(args) - 1}, ${len(args)})"
    rows = await connection.fetch(_METADATA.format(scope=scope, limit=size + 1), *args)
    more = len(rows) > size
    rows = rows[:size]
    study = (
        StudyRef(
            study_uid, rows[0]["organization"], rows[0]["patient_ref"], rows[0]["imaging_study_id"]
        )
        if rows
        else None
    )
    last = (rows[-1]["series_uid"], rows[-1]["sop_instance_uid"]) if more and rows else None
    return MetadataPage(study, [r["metadata"] for r in rows], last)


async def burned_in(
    connection: asyncpg.Connection, study_uid: str, organization: str | None
) -> list[str]:
    """SOP Instance UIDs of the study's instances that declare burned-in annotation
    (BurnedInAnnotation (0028,0301) YES), from the stored metadata."""
    rows = await connection.fetch(
        "SELECT i.sop_instance_uid FROM dicom_instance i"
        " JOIN dicom_study st ON st.study_uid = i.study_uid"
        " WHERE i.study_uid = $1 AND ($2::text IS NULL OR st.organization = $2)"
        " AND i.metadata LIKE '%\"00280301\"%'"
        " AND upper(i.metadata::jsonb -> '00280301' -> 'Value' ->> 0) = 'YES'"
        " ORDER BY i.sop_instance_uid",
        study_uid,
        organization,
    )
    return [r["sop_instance_uid"] for r in rows]
