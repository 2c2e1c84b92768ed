"""Demographics of a Patient, blocking keys and the probabilistic match score.

Used when no valid resident ID or insurance number decides (that deterministic matching lives
in the identity service). The score follows Fellegi and Sunter: each field of a pair of
records gets one outcome (name ``exact``, birth date ``transposed``, phone ``disagree``…) and
the score is the sum of the outcomes' weights, roughly log2 of how much more likely the
outcome is for one person than for two. Weights, grade thresholds and similarity cut-offs are
data (``fhir_profiles/identity/match-rules.json``), validated by ``MatchRules.load``, so a
region tunes them without code. Nothing here links anything: the caller turns ``probable`` and
``possible`` into review tasks, and only a region that sets a ``certain`` threshold lets a
score link on its own.

Speed matters (every Patient write scores its candidates), so a ``Demographics`` holds only
normalised values (names already reduced to characters and pinyin, phones to digits) and the
scorer does comparisons, never conversions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from rapidfuzz import fuzz

import fhir_profiles
from hub.identity.names import (
    NameAgreement,
    NameForms,
    compare_names,
    name_forms,
    normalize_name,
)

__all__ = [
    "FIELD_OUTCOMES",
    "GRADES",
    "MAX_BLOCKING_KEYS",
    "PRIOR_LOG2_ODDS",
    "Demographics",
    "MatchRules",
    "MatchScore",
    "Scorer",
    "demographics_of",
    "normalize_address",
    "normalize_phone",
]

FIELD_OUTCOMES: dict[str, tuple[str, ...]] = {
    "name": ("exact", "pinyin", "similar", "different", "missing"),
    "birthDate": ("exact", "transposed", "one-part", "different", "missing"),
    "gender": ("agree", "disagree", "missing"),
    "phone": ("agree", "disagree", "missing"),
    "address": ("similar", "different", "missing"),
    "nationalId": ("agree", "disagree", "missing"),
}
"""Every field scored and its possible outcomes; the rules give a weight to each."""

GRADES = ("certain", "probable", "possible")
"""Match grades from strongest to weakest (FHIR ``match-grade`` codes); below: no match."""

PRIOR_LOG2_ODDS = -10.0
"""Prior log2 odds that a candidate found by blocking is the same person (about 1 in 1,000),
used to turn a score into a probability (``MatchScore.probability``)."""

MAX_BLOCKING_KEYS = 20
MAX_NAMES = 6
"""Names kept per record (official, maiden, Latin…); more are noise and cost."""

_SCORED_GENDERS = frozenset({"male", "female"})
_FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NAME_RANK = {
    NameAgreement.EXACT: 3,
    NameAgreement.PINYIN: 2,
    NameAgreement.SIMILAR: 1,
    NameAgreement.DIFFERENT: 0,
}
_MIN_PHONE_DIGITS = 7


# --- demographics ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Demographics:
    """The normalised demographics of one Patient record, as scoring and blocking need them.

    Built once per write by ``demographics_of`` and stored (``to_json``) with the record's
    link so that candidates are scored without re-reading or re-normalising their Patients.
    ``gender`` keeps the FHIR code; ``unknown`` and ``other`` score as missing. ``phones`` are
    digits only without the +86 country code; ``address`` is one normalised string.
    ``national_ids`` are (system URI, keyed hash) pairs of the record's current deterministic
    identifiers, filled in by the caller, which alone holds the hashing key.
    """

    names: tuple[NameForms, ...]
    birth_date: date | None
    gender: str | None
    phones: frozenset[str]
    address: str | None
    national_ids: frozenset[tuple[str, str]] = frozenset()

    def to_json(self) -> dict[str, Any]:
        """A JSON object (for a jsonb column); ``from_json`` restores an equal value."""
        return {
            "names": [
                {"hanzi": n.hanzi, "pinyin": list(n.pinyin), "latin": n.latin} for n in self.names
            ],
            "birthDate": self.birth_date.isoformat() if self.birth_date else None,
            "gender": self.gender,
            "phones": sorted(self.phones),
            "address": self.address,
            "nationalIds": [list(pair) for pair in sorted(self.national_ids)],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Demographics:
        """The value ``to_json`` produced (names are not re-converted to pinyin)."""
        birth_date = data.get("birthDate")
        return cls(
            names=tuple(
                NameForms(n["hanzi"], tuple(n["pinyin"]), bool(n.get("latin", False)))
                for n in data.get("names", ())
            ),
            birth_date=date.fromisoformat(birth_date) if birth_date else None,
            gender=data.get("gender"),
            phones=frozenset(data.get("phones", ())),
            address=data.get("address"),
            national_ids=frozenset(
                (system, value) for system, value in data.get("nationalIds", ())
            ),
        )


def demographics_of(patient: Mapping[str, Any]) -> Demographics:
    """The demographics of a FHIR Patient (a dict), normalised for matching.

    - every ``HumanName`` counts, whatever its ``use`` (a maiden or old name may be the one
      another hospital has): its family and given names, and its ``text`` too when that reads
      differently (a Chinese ``text`` beside pinyin family/given, say); at most ``MAX_NAMES``;
    - ``birthDate`` only to the day: a year or year-month is too vague to compare and is None;
    - ``gender`` as coded;
    - every ``telecom`` of system ``phone`` or ``sms``, see ``normalize_phone``;
    - the first ``address`` of use ``home`` or without use, else the first address.
    """
    names: dict[str, NameForms] = {}
    for human_name in _dicts(patient.get("name")):
        family = human_name.get("family")
        raw_given = human_name.get("given")
        given = [g for g in raw_given if _text(g)] if isinstance(raw_given, list) else []
        text = human_name.get("text")
        candidates = []
        if _text(family) or given:
            candidates.append(name_forms(_text(family), given))
        if _text(text):
            candidates.append(name_forms(None, None, text))
        for forms in candidates:
            if forms.hanzi and forms.hanzi not in names and len(names) < MAX_NAMES:
                names[forms.hanzi] = forms

    phones = {
        phone
        for telecom in _dicts(patient.get("telecom"))
        if telecom.get("system") in ("phone", "sms")
        and (phone := normalize_phone(telecom.get("value"))) is not None
    }

    addresses = _dicts(patient.get("address"))
    home = [a for a in addresses if a.get("use") in (None, "home")]
    chosen = home[0] if home else (addresses[0] if addresses else None)

    gender = patient.get("gender")
    return Demographics(
        names=tuple(names.values()),
        birth_date=_birth_date(patient.get("birthDate")),
        gender=gender if isinstance(gender, str) and gender else None,
        phones=frozenset(phones),
        address=normalize_address(chosen) if chosen is not None else None,
    )


def normalize_phone(value: object) -> str | None:
    """Digits only, without the country code: ``+86 138-0013-8000`` → ``13800138000``.

    ``+86`` and ``0086`` are removed; a bare ``86`` only before an 11-digit mobile number
    (``8613800138000``), because a landline may begin with 86. A landline given with the
    country code regains its trunk 0 (``+86 10 12345678`` → ``01012345678``), the form written
    at home. Fewer than 7 digits is not a usable number: None.
    """
    if not isinstance(value, str):
        return None
    international = value.strip().startswith("+")
    digits = "".join(ch for ch in value if ch.isdigit())
    if digits.startswith("0086"):
        digits, international = digits[4:], True
    elif international and digits.startswith("86"):
        digits = digits[2:]
    elif len(digits) == 13 and digits.startswith("861"):
        digits, international = digits[2:], True
    elif international:
        return None if len(digits) < _MIN_PHONE_DIGITS else "+" + digits  # another country
    if international and not (len(digits) == 11 and digits.startswith("1")):
        digits = digits if digits.startswith("0") else "0" + digits
    return digits if len(digits) >= _MIN_PHONE_DIGITS else None


def normalize_address(address: Mapping[str, Any]) -> str | None:
    """One comparable string for a FHIR Address: state, city, district, then the lines.

    Each part normalised like a name (NFKC, traditional → simplified, no whitespace or
    punctuation); a state, city or district already written in the lines is not repeated, as
    Chinese systems often put the full address in ``line``. Falls back to ``text``.
    """
    lines = "".join(normalize_name(line) for line in address.get("line") or () if _text(line))
    prefix = ""
    for key in ("state", "city", "district"):
        part = _text(address.get(key))
        part = normalize_name(part) if part else ""
        if part and part not in lines and part not in prefix:
            prefix += part
    joined = prefix + lines
    if not joined and _text(address.get("text")):
        joined = normalize_name(address["text"])
    return joined or None


def _dicts(value: object) -> list[Mapping[str, Any]]:
    """The objects of a FHIR array element (anything malformed ignored)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: object) -> str | None:
    """A non-blank string, else None."""
    return value if isinstance(value, str) and value.strip() else None


def _birth_date(value: object) -> date | None:
    """A full FHIR date, else None (partial or invalid dates are not compared)."""
    if not isinstance(value, str) or not _FULL_DATE.fullmatch(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


# --- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchRules:
    """Weights per field and outcome, grade thresholds and similarity cut-offs (data).

    ``thresholds['certain']`` None means a probabilistic score is never ``certain``.
    ``similar_name`` is the Jaro–Winkler similarity (0..1) of pinyin spellings from which
    names are ``similar``; ``similar_address`` the rapidfuzz ratio (0..100) for addresses.
    """

    fields: dict[str, dict[str, float]]
    thresholds: dict[str, float | None]
    similar_name: float
    similar_address: float
    version: str

    @classmethod
    def load(cls, data: Mapping[str, Any]) -> MatchRules:
        """Rules from their JSON form (see ``match-rules.json``), validated.

        Raises ValueError naming the problem: an unknown or missing field, outcome or
        threshold, a weight that is not a number, thresholds out of order, a cut-off out of
        range, or no version. Keys starting with ``_`` are comments.
        """
        if not isinstance(data, Mapping):
            raise ValueError("match rules: expected a JSON object")
        _check_keys(
            "match rules",
            data,
            {"version", "fields", "thresholds", "similarName", "similarAddress"},
            optional={"description"},
        )
        version = data["version"]
        if not isinstance(version, str) or not version:
            raise ValueError("match rules: 'version' must be a non-empty string")

        raw_fields = data["fields"]
        if not isinstance(raw_fields, Mapping):
            raise ValueError("match rules: 'fields' must be an object")
        _check_keys("match rules 'fields'", raw_fields, set(FIELD_OUTCOMES))
        fields: dict[str, dict[str, float]] = {}
        for field, outcomes in FIELD_OUTCOMES.items():
            weights = raw_fields[field]
            where = f"match rules field '{field}'"
            if not isinstance(weights, Mapping):
                raise ValueError(f"{where}: expected an object of outcome weights")
            _check_keys(where, weights, set(outcomes))
            fields[field] = {
                outcome: _number(f"{where} outcome '{outcome}'", weights[outcome])
                for outcome in outcomes
            }

        raw_thresholds = data["thresholds"]
        if not isinstance(raw_thresholds, Mapping):
            raise ValueError("match rules: 'thresholds' must be an object")
        _check_keys("match rules 'thresholds'", raw_thresholds, set(GRADES))
        certain = raw_thresholds["certain"]
        thresholds: dict[str, float | None] = {
            "certain": None if certain is None else _number("threshold 'certain'", certain),
            "probable": _number("threshold 'probable'", raw_thresholds["probable"]),
            "possible": _number("threshold 'possible'", raw_thresholds["possible"]),
        }
        ordered = [t for t in thresholds.values() if t is not None]
        if ordered != sorted(ordered, reverse=True):
            raise ValueError("match rules: thresholds must be certain >= probable >= possible")

        similar_name = _number("'similarName'", data["similarName"])
        if not 0.0 < similar_name <= 1.0:
            raise ValueError("match rules: 'similarName' must be in (0, 1]")
        similar_address = _number("'similarAddress'", data["similarAddress"])
        if not 0.0 < similar_address <= 100.0:
            raise ValueError("match rules: 'similarAddress' must be in (0, 100]")
        return cls(fields, thresholds, similar_name, similar_address, version)

    @classmethod
    def default(cls) -> MatchRules:
        """The hub's default rules, ``fhir_profiles/identity/match-rules.json``."""
        return cls.load(fhir_profiles.match_rules())


def _check_keys(
    where: str, data: Mapping[str, Any], required: set[str], optional: Iterable[str] = ()
) -> None:
    """Raise ValueError for keys that are neither required, optional nor comments (``_…``),
    and for required keys that are absent."""
    keys = {key for key in data if not (isinstance(key, str) and key.startswith("_"))}
    unknown = keys - required - set(optional)
    if unknown:
        raise ValueError(
            f"{where}: unknown {', '.join(map(repr, sorted(unknown)))}"
            f" (expected {', '.join(sorted(required))})"
        )
    missing = required - keys
    if missing:
        raise ValueError(f"{where}: missing {', '.join(map(repr, sorted(missing)))}")


def _number(where: str, value: object) -> float:
    """A finite JSON number (not a boolean) as float, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"match rules: {where} must be a number, not {value!r}")
    return float(value)


# --- scoring -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatchScore:
    """The score of one pair of records, its grade and the outcome and weight of each field.

    ``parts`` (field → (outcome, weight)) explains the score to an operator reviewing it.
    """

    score: float
    grade: str | None
    parts: dict[str, tuple[str, float]]

    @property
    def probability(self) -> float:
        """The score as a probability (0..1), e.g. for a FHIR ``Bundle.entry.search.score``.

        Reading the weights as log2 likelihood ratios, the posterior odds that the pair is one
        person are the prior odds times 2**score; with prior odds of 2**PRIOR_LOG2_ODDS
        (about 1 in 1,000 among blocked candidates) this is the logistic
        1 / (1 + 2**-(score + PRIOR_LOG2_ODDS)): 0.5 at a score of 10, 0.8 at 12, 0.2 at 8.
        A ranking aid, not a calibrated probability.
        """
        exponent = max(-60.0, min(60.0, self.score + PRIOR_LOG2_ODDS))
        return 1.0 / (1.0 + 2.0**-exponent)


class Scorer:
    """Scores pairs of ``Demographics`` and gives a record's blocking keys, by given rules."""

    __slots__ = ("_address", "_certain", "_name", "_parts", "_possible", "_probable", "rules")

    def __init__(self, rules: MatchRules) -> None:
        self.rules = rules
        # field → outcome → the (outcome, weight) pair a MatchScore shows, built once.
        self._parts = {
            field: {outcome: (outcome, weight) for outcome, weight in weights.items()}
            for field, weights in rules.fields.items()
        }
        self._name = rules.similar_name
        self._address = rules.similar_address
        self._certain = rules.thresholds["certain"]
        self._probable = rules.thresholds["probable"]
        self._possible = rules.thresholds["possible"]

    def score(self, a: Demographics, b: Demographics) -> MatchScore:
        """Compare every field of two records and add up the weights of the outcomes."""
        p = self._parts
        name = p["name"][self._name_outcome(a.names, b.names)]
        birth_date = p["birthDate"][_date_outcome(a.birth_date, b.birth_date)]
        gender = p["gender"][_gender_outcome(a.gender, b.gender)]
        phone = p["phone"][_set_outcome(a.phones, b.phones)]
        address = p["address"][self._address_outcome(a.address, b.address)]
        national_id = p["nationalId"][_id_outcome(a.national_ids, b.national_ids)]
        total = name[1] + birth_date[1] + gender[1] + phone[1] + address[1] + national_id[1]
        parts = {
            "name": name,
            "birthDate": birth_date,
            "gender": gender,
            "phone": phone,
            "address": address,
            "nationalId": national_id,
        }
        return MatchScore(total, self._grade(total), parts)

    def blocking_keys(self, d: Demographics) -> list[str]:
        """Keys under which a record is indexed and its candidates are looked up.

        ``d:<birth date>``, ``p:<phone>``, and for each pinyin spelling of each name
        ``ny:<pinyin>:<birth year>`` and ``nd:<pinyin>:<MM-DD>`` (so a typo in the year or in
        the month or day still meets). Each selects few of a million records; names alone
        would not, so a record without a birth date is found by phone only. At most
        ``MAX_BLOCKING_KEYS``, the strongest first.
        """
        keys: dict[str, None] = {}
        if d.birth_date is not None:
            keys[f"d:{d.birth_date.isoformat()}"] = None
        for phone in sorted(d.phones)[:4]:
            keys[f"p:{phone}"] = None
        if d.birth_date is not None:
            year = d.birth_date.year
            month_day = f"{d.birth_date.month:02d}-{d.birth_date.day:02d}"
            for forms in d.names:
                for spelling in forms.pinyin:
                    keys[f"ny:{spelling}:{year}"] = None
                    keys[f"nd:{spelling}:{month_day}"] = None
        return list(keys)[:MAX_BLOCKING_KEYS]

    def _grade(self, score: float) -> str | None:
        if self._certain is not None and score >= self._certain:
            return "certain"
        if self._probable is not None and score >= self._probable:
            return "probable"
        if self._possible is not None and score >= self._possible:
            return "possible"
        return None

    def _name_outcome(self, a: tuple[NameForms, ...], b: tuple[NameForms, ...]) -> str:
        """The best agreement between any name of one record and any name of the other."""
        if not a or not b:
            return "missing"
        best = NameAgreement.DIFFERENT
        for left in a:
            for right in b:
                agreement, _ = compare_names(left, right, self._name)
                if agreement is NameAgreement.EXACT:
                    return agreement.value
                if _NAME_RANK[agreement] > _NAME_RANK[best]:
                    best = agreement
        return best.value

    def _address_outcome(self, a: str | None, b: str | None) -> str:
        if not a or not b:
            return "missing"
        if a == b or fuzz.ratio(a, b, score_cutoff=self._address) >= self._address:
            return "similar"
        return "different"


def _date_outcome(a: date | None, b: date | None) -> str:
    if a is None or b is None:
        return "missing"
    if a == b:
        return "exact"
    if a.year == b.year and a.month == b.day and a.day == b.month:
        return "transposed"
    differing = (a.year != b.year) + (a.month != b.month) + (a.day != b.day)
    return "one-part" if differing == 1 else "different"


def _gender_outcome(a: str | None, b: str | None) -> str:
    if a not in _SCORED_GENDERS or b not in _SCORED_GENDERS:
        return "missing"
    return "agree" if a == b else "disagree"


def _set_outcome(a: frozenset[str], b: frozenset[str]) -> str:
    if not a or not b:
        return "missing"
    return "disagree" if a.isdisjoint(b) else "agree"


def _id_outcome(a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]) -> str:
    """``disagree`` when some system has identifiers on both sides and none in common;
    ``agree`` when they share one; ``missing`` when no system is on both sides."""
    if not a or not b:
        return "missing"
    shared_systems = {system for system, _ in a} & {system for system, _ in b}
    if not shared_systems:
        return "missing"
    for system in shared_systems:
        if {v for s, v in a if s == system}.isdisjoint(v for s, v in b if s == system):
            return "disagree"
    return "agree"
