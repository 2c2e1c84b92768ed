"""Names and probabilistic scoring of patient identity: pure unit tests, no database.

Every scenario the default rules must get right (``fhir_profiles/identity/match-rules.json``)
is here, with the name variants that Chinese records show: traditional characters, homophones,
heteronym surnames, ü spellings, Latin names in either order, middle dots, full-width letters.
"""

from __future__ import annotations

import copy
import json
from datetime import date
from typing import Any

import pytest
from pypinyin import Style, pinyin

import fhir_profiles
from hub.identity.matching import (
    FIELD_OUTCOMES,
    Demographics,
    MatchRules,
    MatchScore,
    Scorer,
    demographics_of,
    normalize_address,
    normalize_phone,
)
from hub.identity.names import (
    _SURNAME_READINGS,
    MAX_PINYIN_ALTERNATIVES,
    NameAgreement,
    NameForms,
    compare_names,
    name_forms,
    name_keys,
    normalize_name,
)

RULES = MatchRules.default()
SCORER = Scorer(RULES)
SIMILAR = RULES.similar_name


def patient(
    name: str | None = "张伟",
    *,
    birth_date: str | None = "1985-06-12",
    gender: str | None = "male",
    phones: tuple[str, ...] = ("13800138000",),
    address: str | None = "北京市海淀区中关村大街27号",
) -> dict[str, Any]:
    """A FHIR Patient with the given demographics (the defaults agree with each other)."""
    resource: dict[str, Any] = {"resourceType": "Patient"}
    if name is not None:
        resource["name"] = [{"text": name}]
    if birth_date is not None:
        resource["birthDate"] = birth_date
    if gender is not None:
        resource["gender"] = gender
    resource["telecom"] = [{"system": "phone", "value": phone} for phone in phones]
    if address is not None:
        resource["address"] = [{"use": "home", "line": [address]}]
    return resource


def score(a: dict[str, Any], b: dict[str, Any]) -> MatchScore:
    return SCORER.score(demographics_of(a), demographics_of(b))


def forms(text: str) -> NameForms:
    return name_forms(None, None, text)


# --- names -------------------------------------------------------------------------------------


def test_normalize_name() -> None:
    assert normalize_name("張偉") == "张伟"
    assert normalize_name(" 阿依古丽·买买提 ") == "阿依古丽买买提"
    for dot in "·•‧・･":
        assert normalize_name(f"阿依古丽{dot}买买提") == "阿依古丽买买提"
    assert normalize_name("ＺＨＡＮＧ　ＷＥＩ") == "zhangwei"  # full-width letters and space
    assert normalize_name("Xiao-Ming") == "xiaoming"


def test_name_forms_of_characters() -> None:
    assert name_forms("张", ["伟"], None) == NameForms("张伟", ("zhangwei",), latin=False)
    assert forms("張偉") == forms("张伟")
    assert name_forms("张", "伟") == forms("张伟")
    assert forms("阿依古丽·买买提").pinyin == ("ayigulimaimaiti",)
    assert forms("  ") == NameForms("", ())


def test_name_forms_of_latin_names_keep_both_orders() -> None:
    zhang = forms("ZHANG WEI")
    assert zhang.latin
    assert set(zhang.pinyin) == {"zhangwei", "weizhang"}
    assert set(forms("Wei Zhang").pinyin) == {"zhangwei", "weizhang"}
    assert set(name_forms("Zhang", ["Wei"]).pinyin) == {"zhangwei", "weizhang"}
    assert "wangxiaoming" in forms("Xiao-Ming Wang").pinyin
    assert "lixian" in forms("Xi'an Li").pinyin
    assert forms("ＺＨＡＮＧ ＷＥＩ") == zhang


@pytest.mark.parametrize("spelling", ["LV WEI", "LU WEI", "LYU WEI", "Lü Wei", "lǚ wei"])
def test_u_umlaut_spellings_all_agree_with_lv(spelling: str) -> None:
    lv = forms("吕伟")
    assert "lvwei" in lv.pinyin
    assert compare_names(lv, forms(spelling), SIMILAR) == (NameAgreement.PINYIN, 1.0)


def test_u_umlaut_in_the_given_name() -> None:
    assert "nv" in "".join(forms("王女").pinyin)
    assert compare_names(forms("王女"), forms("WANG NU"), SIMILAR)[0] == NameAgreement.PINYIN


@pytest.mark.parametrize(
    ("name", "spellings"),
    [
        ("单田芳", {"dantianfang", "shantianfang"}),
        ("曾国藩", {"cengguofan", "zengguofan"}),
        ("解缙", {"jiejin", "xiejin"}),
        ("仇英", {"chouying", "qiuying"}),
        ("区伟", {"quwei", "ouwei"}),
        ("朴明", {"puming", "piaoming"}),
        ("查明", {"chaming", "zhaming"}),
    ],
)
def test_heteronym_surnames_have_both_readings(name: str, spellings: set[str]) -> None:
    assert spellings <= set(forms(name).pinyin)


def test_compound_surnames() -> None:
    assert forms("尉迟敬德").pinyin == ("yuchijingde",)
    assert forms("万俟卨").pinyin[0].startswith("moqi")
    assert "ouyangxiu" in forms("欧阳修").pinyin
    assert name_forms("尉迟", ["敬德"]).pinyin == ("yuchijingde",)


def test_surname_readings_are_pypinyin_heteronyms() -> None:
    """The surname table only narrows pypinyin's readings; a typo would silently do nothing."""
    for surname, readings in _SURNAME_READINGS.items():
        heteronyms = pinyin(surname, style=Style.NORMAL, heteronym=True)[0]
        assert set(readings) <= set(heteronyms), surname


def test_everyday_heteronyms_of_common_surnames_are_not_alternatives() -> None:
    """沈 is never read "chen" as a surname, nor 王 "yu": they must not agree with 陈, 于."""
    assert compare_names(forms("沈伟"), forms("陈伟"), SIMILAR)[0] != NameAgreement.PINYIN
    assert compare_names(forms("王伟"), forms("于伟"), SIMILAR)[0] != NameAgreement.PINYIN


def test_single_surname_by_shan_reading_matches_passport() -> None:
    assert compare_names(forms("单田芳"), forms("SHAN TIANFANG"), SIMILAR)[0] == "pinyin"
    assert compare_names(forms("单田芳"), forms("Tianfang Dan"), SIMILAR)[0] == "pinyin"


def test_alternatives_are_capped() -> None:
    many = name_forms("吕", ["女女女"])
    assert 1 <= len(many.pinyin) <= MAX_PINYIN_ALTERNATIVES
    latin = forms("Lyu Nyu Lv Wei Ming")
    assert len(latin.pinyin) <= MAX_PINYIN_ALTERNATIVES


def test_compare_names() -> None:
    assert compare_names(forms("张伟"), forms("張偉"), SIMILAR) == (NameAgreement.EXACT, 1.0)
    assert compare_names(forms("张伟"), forms("张玮"), SIMILAR) == (NameAgreement.PINYIN, 1.0)
    assert compare_names(forms("张伟"), forms("ZHANG WEI"), SIMILAR)[0] == NameAgreement.PINYIN
    agreement, similarity = compare_names(forms("张伟"), forms("张文"), SIMILAR)
    assert agreement == NameAgreement.SIMILAR and SIMILAR <= similarity < 1.0
    agreement, similarity = compare_names(forms("张伟"), forms("李娜"), SIMILAR)
    assert agreement == NameAgreement.DIFFERENT and similarity < SIMILAR
    assert agreement == "different"  # a str, as stored and shown


def test_name_keys_put_homophones_and_latin_spellings_together() -> None:
    assert name_keys(forms("张伟")) & name_keys(forms("张玮"))
    assert name_keys(forms("张伟")) & name_keys(forms("Wei Zhang"))
    assert name_keys(forms("张伟")) & name_keys(forms("張偉"))


# --- demographics ------------------------------------------------------------------------------


def test_demographics_of_a_patient() -> None:
    resource = {
        "resourceType": "Patient",
        "name": [
            {"use": "official", "family": "张", "given": ["伟"], "text": "张伟"},
            {"use": "old", "family": "Zhang", "given": ["Wei"]},
            {"use": "maiden", "text": "李娜"},
        ],
        "birthDate": "1985-06-12",
        "gender": "male",
        "telecom": [
            {"system": "phone", "value": "+86 138-0013-8000"},
            {"system": "sms", "value": "008613900139000"},
            {"system": "email", "value": "zw@example.cn"},
            {"system": "phone", "value": "010-6275 1234"},
        ],
        "address": [
            {"use": "work", "city": "上海市", "line": ["世纪大道100号"]},
            {"use": "home", "state": "北京市", "city": "北京市", "district": "海淀区",
             "line": ["中关村大街 27 号"]},
        ],
    }  # fmt: skip
    d = demographics_of(resource)
    assert [n.hanzi for n in d.names] == ["张伟", "zhangwei", "李娜"]
    assert d.birth_date == date(1985, 6, 12)
    assert d.gender == "male"
    assert d.phones == frozenset({"13800138000", "13900139000", "01062751234"})
    assert d.address == "北京市海淀区中关村大街27号"
    assert d.national_ids == frozenset()


@pytest.mark.parametrize("value", ["1985", "1985-06", "1985-02-30", "June 1985", None, 1985])
def test_partial_or_invalid_birth_dates_are_missing(value: object) -> None:
    assert demographics_of({"birthDate": value}).birth_date is None


def test_malformed_patients_give_empty_demographics() -> None:
    d = demographics_of({"name": "张伟", "telecom": [None, {"system": "phone"}], "address": {}})
    assert d == Demographics((), None, None, frozenset(), None)
    assert demographics_of({"name": [{"given": "伟", "family": "张"}]}).names[0].hanzi == "张"


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("13800138000", "13800138000"),
        ("+86 138 0013 8000", "13800138000"),
        ("0086-138-0013-8000", "13800138000"),
        ("8613800138000", "13800138000"),
        ("+86 10 6275 1234", "01062751234"),
        ("(010) 6275-1234", "01062751234"),
        ("+1 415 555 0100", "+14155550100"),
        ("12345", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_phone(raw: str | None, normalised: str | None) -> None:
    assert normalize_phone(raw) == normalised


def test_normalize_address() -> None:
    full = {"state": "北京市", "city": "北京市", "district": "海淀区", "line": ["中关村大街27号"]}
    assert normalize_address(full) == "北京市海淀区中关村大街27号"
    in_line = {"city": "北京市", "line": ["北京市海淀区中关村大街２７号"]}
    assert normalize_address(in_line) == "北京市海淀区中关村大街27号"
    assert normalize_address({"text": "臺北市 中正區"}) == "台北市中正区"
    assert normalize_address({}) is None


def test_demographics_json_round_trip() -> None:
    d = demographics_of(patient("吕伟") | {"name": [{"text": "吕伟"}, {"text": "LYU WEI"}]})
    d = Demographics(
        d.names,
        d.birth_date,
        d.gender,
        d.phones | {"13900139000"},
        d.address,
        frozenset({("urn:oid:1.2.156.112604.1.1", "h1:abc"), ("urn:x:insurance", "h1:def")}),
    )
    data = d.to_json()
    assert Demographics.from_json(data) == d
    assert Demographics.from_json(json.loads(json.dumps(data))) == d
    empty = Demographics((), None, None, frozenset(), None)
    assert Demographics.from_json(empty.to_json()) == empty


# --- rules -------------------------------------------------------------------------------------


def test_default_rules_load() -> None:
    assert RULES.version
    assert RULES.thresholds["certain"] is None
    assert set(RULES.fields) == set(FIELD_OUTCOMES)
    assert RULES.fields["name"]["missing"] == 0.0
    assert RULES.fields["nationalId"]["disagree"] < -10


def _rules() -> dict[str, Any]:
    return copy.deepcopy(fhir_profiles.match_rules())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["fields"].update(shoeSize={"agree": 1.0}), "unknown 'shoeSize'"),
        (lambda r: r["fields"].pop("phone"), "missing 'phone'"),
        (lambda r: r["fields"]["name"].update(nickname=1.0), "unknown 'nickname'"),
        (lambda r: r["fields"]["gender"].pop("disagree"), "missing 'disagree'"),
        (lambda r: r["fields"]["gender"].update(agree="high"), "must be a number"),
        (lambda r: r["fields"]["gender"].update(agree=True), "must be a number"),
        (lambda r: r["thresholds"].pop("probable"), "missing 'probable'"),
        (lambda r: r["thresholds"].pop("certain"), "missing 'certain'"),
        (lambda r: r["thresholds"].update(likely=3.0), "unknown 'likely'"),
        (lambda r: r["thresholds"].update(possible=20.0), "certain >= probable >= possible"),
        (lambda r: r.update(similarName=1.5), "'similarName'"),
        (lambda r: r.update(similarAddress=0), "'similarAddress'"),
        (lambda r: r.pop("version"), "missing 'version'"),
        (lambda r: r.update(weights={}), "unknown 'weights'"),
    ],
)
def test_rules_are_validated(change: Any, message: str) -> None:
    data = _rules()
    change(data)
    with pytest.raises(ValueError, match=message):
        MatchRules.load(data)


def test_a_region_may_set_a_certain_threshold() -> None:
    data = _rules()
    data["thresholds"]["certain"] = 18.0
    scorer = Scorer(MatchRules.load(data))
    result = scorer.score(demographics_of(patient()), demographics_of(patient()))
    assert result.grade == "certain"


# --- scoring: the scenarios the default rules must get right -----------------------------------


def test_same_person_everything_agreeing_is_probable_never_certain() -> None:
    result = score(patient(), patient())
    assert result.grade == "probable"
    assert result.parts["name"] == ("exact", RULES.fields["name"]["exact"])
    assert result.score == sum(weight for _, weight in result.parts.values())
    assert set(result.parts) == set(FIELD_OUTCOMES)


@pytest.mark.parametrize("phones", [("13800138000",), ()])
def test_homophone_typo_in_the_given_name_is_probable(phones: tuple[str, ...]) -> None:
    result = score(patient("张伟", phones=phones), patient("张玮", phones=phones))
    assert result.parts["name"][0] == "pinyin"
    assert result.grade == "probable"


def test_homophone_with_only_name_birth_date_and_gender_is_probable() -> None:
    a = patient("张伟", phones=(), address=None)
    b = patient("张玮", phones=(), address=None)
    assert score(a, b).grade == "probable"


def test_traditional_and_simplified_are_exact() -> None:
    result = score(patient("張偉"), patient("张伟"))
    assert result.parts["name"][0] == "exact"
    assert result.score == score(patient(), patient()).score


def test_passport_latin_name_is_at_least_possible() -> None:
    a = patient("张伟", phones=(), address=None)
    b = patient("ZHANG WEI", phones=(), address=None)
    result = score(a, b)
    assert result.parts["name"][0] == "pinyin"
    assert result.grade in ("probable", "possible")
    assert score(a, patient("Wei Zhang", phones=(), address=None)).grade in (
        "probable",
        "possible",
    )


def _same_name_and_birth_date_different_people() -> tuple[dict[str, Any], dict[str, Any]]:
    other = patient("张伟", phones=("13912345678",), address="上海市浦东新区世纪大道100号")
    return patient("张伟"), other


def test_same_name_and_birth_date_but_different_people_is_possible_at_most() -> None:
    result = score(*_same_name_and_birth_date_different_people())
    assert result.grade in ("possible", None)
    assert result.parts["phone"][0] == "disagree"
    assert result.parts["address"][0] == "different"


def test_different_resident_ids_rule_out_a_match() -> None:
    a, b = (demographics_of(p) for p in _same_name_and_birth_date_different_people())
    system = "urn:oid:1.2.156.112604.1.1"
    a = Demographics(a.names, a.birth_date, a.gender, a.phones, a.address,
                     frozenset({(system, "h1:one")}))  # fmt: skip
    b = Demographics(b.names, b.birth_date, b.gender, b.phones, b.address,
                     frozenset({(system, "h1:two")}))  # fmt: skip
    result = SCORER.score(a, b)
    assert result.parts["nationalId"][0] == "disagree"
    assert result.grade is None
    # Identifiers of different systems say nothing.
    c = Demographics(b.names, b.birth_date, b.gender, b.phones, b.address,
                     frozenset({("urn:x:insurance", "h1:two")}))  # fmt: skip
    assert SCORER.score(a, c).parts["nationalId"][0] == "missing"


@pytest.mark.parametrize(("first", "second"), [("张子涵", "张子轩"), ("张伟", "张强")])
def test_twins_are_not_probable(first: str, second: str) -> None:
    result = score(patient(first), patient(second))
    assert result.parts["name"][0] in ("similar", "different")
    assert result.grade in ("possible", None)


def test_day_and_month_transposed_is_probable_or_possible() -> None:
    result = score(patient(birth_date="1985-06-12"), patient(birth_date="1985-12-06"))
    assert result.parts["birthDate"][0] == "transposed"
    assert result.grade in ("probable", "possible")


def test_one_part_of_the_birth_date_differing() -> None:
    result = score(patient(birth_date="1985-06-12"), patient(birth_date="1986-06-12"))
    assert result.parts["birthDate"][0] == "one-part"
    assert score(patient(), patient(birth_date="1990-01-01")).parts["birthDate"][0] == "different"


def test_different_gender_is_not_probable() -> None:
    result = score(patient(gender="male"), patient(gender="female"))
    assert result.parts["gender"][0] == "disagree"
    assert result.grade in ("possible", None)


def test_unknown_gender_counts_as_missing() -> None:
    assert score(patient(gender="unknown"), patient()).parts["gender"][0] == "missing"
    assert score(patient(gender="other"), patient(gender="other")).parts["gender"][0] == "missing"


def test_completely_different_people_do_not_match() -> None:
    other = patient(
        "李娜",
        birth_date="1992-01-30",
        gender="female",
        phones=("13712345678",),
        address="广州市天河区体育西路1号",
    )
    result = score(patient(), other)
    assert result.grade is None
    assert result.probability < 0.01


def test_missing_fields_weigh_nothing() -> None:
    bare = {"resourceType": "Patient"}
    result = score(bare, patient())
    assert all(outcome == "missing" for outcome, _ in result.parts.values())
    assert result.score == 0.0 and result.grade is None


def test_maiden_name_counts() -> None:
    married = patient() | {"name": [{"text": "王芳"}, {"use": "maiden", "text": "李芳"}]}
    assert score(married, patient("李芳")).parts["name"][0] == "exact"


def test_probability_is_monotonic_in_the_score() -> None:
    low, mid, high = (MatchScore(s, None, {}) for s in (-100.0, 10.0, 100.0))
    assert 0.0 <= low.probability < mid.probability < high.probability <= 1.0
    assert mid.probability == pytest.approx(0.5)


# --- blocking ----------------------------------------------------------------------------------


def test_blocking_keys() -> None:
    keys = SCORER.blocking_keys(demographics_of(patient()))
    assert keys == ["d:1985-06-12", "p:13800138000", "ny:zhangwei:1985", "nd:zhangwei:06-12"]


def test_homophone_typo_pair_shares_blocking_keys() -> None:
    a = SCORER.blocking_keys(demographics_of(patient("张伟", phones=())))
    b = SCORER.blocking_keys(demographics_of(patient("张玮", phones=(), birth_date="1986-06-12")))
    assert "nd:zhangwei:06-12" in set(a) & set(b)


def test_latin_and_characters_share_blocking_keys() -> None:
    a = SCORER.blocking_keys(demographics_of(patient("张伟")))
    b = SCORER.blocking_keys(demographics_of(patient("Wei Zhang", phones=())))
    assert "ny:zhangwei:1985" in set(a) & set(b)


def test_blocking_keys_are_few() -> None:
    crowded = patient() | {
        "name": [{"text": t} for t in ("单吕女", "曾吕女", "LYU NYU WEI", "乐正吕女", "查吕女")],
        "telecom": [{"system": "phone", "value": f"1380013800{i}"} for i in range(8)],
    }
    keys = SCORER.blocking_keys(demographics_of(crowded))
    assert len(keys) <= 20
    assert keys[0] == "d:1985-06-12"
    assert len(keys) == len(set(keys))
    # Without a birth date only phones remain: a name alone would select too many records.
    assert SCORER.blocking_keys(demographics_of(patient(birth_date=None))) == ["p:13800138000"]
