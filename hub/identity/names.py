"""Chinese personal names compared in characters and in pinyin, with common variants.

A hospital may record the same person as 張偉 (traditional), 张伟, 张玮 (a homophone picked by an
input method), ``ZHANG WEI`` (from a passport) or ``Wei Zhang`` (given name first). Comparing
the characters alone misses most of these, so every name is reduced once, when a Patient's
demographics are extracted, to:

- ``hanzi``: the normalised written form (NFKC, traditional → simplified, no spaces, middle dots
  or punctuation, Latin letters lower-cased);
- ``pinyin``: a few toneless pinyin spellings joined without spaces (``zhangwei``), covering the
  other readings of heteronym surnames (单 dan/shan, 曾 ceng/zeng…), both orders of a name
  written in Latin letters, and the spellings of ü (``lv``, ``lu``, ``lyu``, ``lü``).

Comparison then needs no conversion at all: equal characters, a shared pinyin spelling, or a
Jaro–Winkler similarity between spellings (rapidfuzz). The pinyin alternatives are also the
blocking keys, so homophones and Latin spellings find each other as candidates.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

import opencc
from pypinyin import Style, lazy_pinyin, pinyin
from rapidfuzz.distance import JaroWinkler

__all__ = [
    "MAX_PINYIN_ALTERNATIVES",
    "NameAgreement",
    "NameForms",
    "compare_names",
    "name_forms",
    "name_keys",
    "normalize_name",
]

MAX_PINYIN_ALTERNATIVES = 8
"""At most this many pinyin spellings per name: they are blocking keys, so each one costs."""

# One converter for the process: building one loads the OpenCC dictionaries (milliseconds).
_T2S = opencc.OpenCC("t2s")

# Unicode general categories dropped from names: punctuation (including the middle dots
# · • ‧ ・ of minority and foreign names, hyphens, apostrophes), symbols, separators (all
# whitespace) and control/format characters.
_DROPPED_CATEGORIES = frozenset("PSZC")

# Surnames read differently from the character's everyday reading (单 is "dan" in 简单 but
# "shan" as a surname). Each entry narrows pypinyin's heteronyms of the character to the
# reading used for the surname; the everyday reading stays an alternative too, because many
# hospital systems generate pinyin automatically and so write 单 as "dan". pypinyin's full
# heteronym list is not used: it would make 沈 (shen/chen) agree with 陈 and 王 (wang/yu) with 于.
_SURNAME_READINGS: dict[str, tuple[str, ...]] = {
    "单": ("shan",),
    "曾": ("zeng",),
    "解": ("xie",),
    "仇": ("qiu",),
    "区": ("ou",),
    "朴": ("piao",),
    "查": ("zha",),
    "覃": ("qin",),
    "盖": ("ge",),
    "缪": ("miao",),
    "乐": ("yue",),
    "秘": ("bi",),
    "种": ("chong",),
    "重": ("chong",),
    "召": ("shao",),
    "员": ("yun",),
    "繁": ("po",),
    "蕃": ("pi",),
    "句": ("gou",),
    "折": ("she",),
    "能": ("nai",),
    "翟": ("zhai",),
    "祭": ("zhai",),
    "隗": ("wei",),
    "薄": ("bo",),
    "藏": ("zang",),
    "佴": ("nai",),
    "粘": ("nian",),
}

# Two-character surnames, recognised at the start of a name given only as text. pypinyin's
# phrase dictionary reads most of them correctly as surnames (尉迟 yuchi, 万俟 moqi, 单于
# chanyu, 长孙 zhangsun); the few it does not are given their surname reading here.
_COMPOUND_SURNAME_LIST = (
    "欧阳 司马 上官 诸葛 东方 皇甫 尉迟 万俟 单于 长孙 公孙 慕容 令狐 宇文 司徒 夏侯 轩辕 端木 "
    "独孤 南宫 西门 澹台 公冶 宗政 濮阳 淳于 太叔 申屠 闻人 呼延 赫连 拓跋 百里 东郭 钟离 闾丘 "
    "第五 左丘 谷梁 亓官 梁丘 公羊 仲孙 叔孙 司空 司寇 巫马 公西 漆雕 壤驷 公良 夹谷 宰父 段干 "
    "羊舌 微生 鲜于 乐正"
)
_COMPOUND_SURNAMES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(_COMPOUND_SURNAME_LIST.split(), ()),
    "乐正": ("yuezheng",),
}


class NameAgreement(StrEnum):
    """How two names agree, from strongest to weakest."""

    EXACT = "exact"
    """The same characters after normalisation (張偉 and 张伟 included)."""
    PINYIN = "pinyin"
    """A shared pinyin spelling: homophones (张伟/张玮) or Latin against characters."""
    SIMILAR = "similar"
    """Pinyin spellings close by Jaro–Winkler similarity (typos, one syllable differing)."""
    DIFFERENT = "different"


@dataclass(frozen=True, slots=True)
class NameForms:
    """One personal name, reduced once to the forms that comparison and blocking need.

    ``hanzi`` is the normalised written name (for a Latin name, its lower-case letters in the
    order written); ``pinyin`` the toneless spellings, the preferred one first, with ü as
    ``v`` (plus a ``u`` variant); ``latin`` tells that the name was written in Latin letters.
    """

    hanzi: str
    pinyin: tuple[str, ...]
    latin: bool = False


def normalize_name(text: str) -> str:
    """The comparable written form of a name or name part.

    NFKC (full-width letters and spaces become ordinary ones), traditional → simplified
    characters (OpenCC ``t2s``), then whitespace, middle dots and all other punctuation and
    symbols removed, and Latin letters lower-cased: ``阿依古丽·买买提`` → ``阿依古丽买买提``,
    ``ＺＨＡＮＧ Wei`` → ``zhangwei``.
    """
    text = unicodedata.normalize("NFKC", text)
    if not text.isascii():
        text = _T2S.convert(text)
    return "".join(
        ch for ch in text if unicodedata.category(ch)[0] not in _DROPPED_CATEGORIES
    ).lower()


def name_forms(
    family: str | None,
    given: str | Sequence[str] | None,
    text: str | None = None,
) -> NameForms:
    """The forms of a name given as FHIR ``HumanName`` parts, or as its ``text``.

    ``family`` and ``given`` (a string or the FHIR list of given names) take precedence; the
    ``text`` is used when both are empty. A name with nothing left after normalisation gives
    empty forms (``hanzi == ''``), which callers skip. Results are cached: the same names
    recur across hospitals and writes.
    """
    if isinstance(given, str):
        given_parts: tuple[str, ...] = (given,)
    else:
        given_parts = tuple(part for part in given or () if isinstance(part, str))
    return _name_forms(family or "", given_parts, text or "")


def name_keys(forms: NameForms) -> set[str]:
    """Blocking keys of a name: its pinyin spellings, so that homophones, traditional and
    simplified characters, and Latin spellings of the same name select each other."""
    return set(forms.pinyin)


def compare_names(
    a: NameForms, b: NameForms, similar_threshold: float
) -> tuple[NameAgreement, float]:
    """How two names agree, and the best similarity (0..1) between their pinyin spellings.

    ``exact`` when the written forms are equal, ``pinyin`` when a spelling is shared (both
    report similarity 1.0), ``similar`` when the best Jaro–Winkler similarity between
    spellings reaches ``similar_threshold``, otherwise ``different``.
    """
    if a.hanzi and a.hanzi == b.hanzi:
        return NameAgreement.EXACT, 1.0
    if not set(a.pinyin).isdisjoint(b.pinyin):
        return NameAgreement.PINYIN, 1.0
    best = 0.0
    for left in a.pinyin:
        for right in b.pinyin:
            similarity = JaroWinkler.normalized_similarity(left, right)
            if similarity > best:
                best = similarity
    if best >= similar_threshold:
        return NameAgreement.SIMILAR, best
    return NameAgreement.DIFFERENT, best


# --- implementation ---------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def _name_forms(family: str, given: tuple[str, ...], text: str) -> NameForms:
    """``name_forms`` on hashable arguments (cached)."""
    structured = bool(family.strip() or any(part.strip() for part in given))
    if structured:
        raw_family, raw_given = family, " ".join(given)
    else:
        raw_family, raw_given = "", text
    if _is_latin(raw_family + raw_given):
        return _latin_forms(raw_family, raw_given)
    surname = normalize_name(raw_family)
    rest = normalize_name(raw_given)
    if not surname and not rest:
        return NameForms("", ())
    if not surname or not rest:
        # One part holds the whole name (text, or family="张伟" without given): find the
        # surname at its start, a known two-character one or else the first character.
        whole = surname or rest
        size = 2 if whole[:2] in _COMPOUND_SURNAMES and len(whole) > 2 else 1
        surname, rest = whole[:size], whole[size:]
    spellings = [reading + "".join(_syllables(rest)) for reading in _surname_spellings(surname)]
    return NameForms(surname + rest, _alternatives(spellings))


def _is_latin(text: str) -> bool:
    """True when every letter of ``text`` is a Latin letter (and there is at least one)."""
    letters = [ch for ch in unicodedata.normalize("NFKC", text) if ch.isalpha()]
    return bool(letters) and all(ch < "\u0250" for ch in letters)


def _latin_forms(family: str, given: str) -> NameForms:
    """Forms of a name written in Latin letters: order unknown, so both orders are kept."""
    family_tokens = _latin_tokens(family)
    given_tokens = _latin_tokens(given)
    if family_tokens and given_tokens:
        orders = [family_tokens + given_tokens, given_tokens + family_tokens]
        written = family_tokens + given_tokens
    else:
        tokens = family_tokens or given_tokens
        if not tokens:
            return NameForms("", (), latin=True)
        # "ZHANG WEI" (family first), "Wei Zhang" (family last), "Wei Ming Zhang".
        orders = [tokens, tokens[-1:] + tokens[:-1], tokens[1:] + tokens[:1]]
        written = tokens
    return NameForms("".join(written), _alternatives("".join(o) for o in orders), latin=True)


def _latin_tokens(text: str) -> list[str]:
    """Lower-case words of a Latin name, ü as ``v``, tone marks, hyphens and apostrophes gone.

    ``Xiao-Ming`` → ``xiaoming``; ``LYU``, ``LÜ`` and ``lǚ`` → ``lv``. ``yu`` after ``n``
    is read as ü only at the start of a word (``nyu``), because inside a word it is usually a
    syllable of its own (``jinyu``); no pinyin syllable ends in ``l``, so ``lyu`` is always ü.
    """
    text = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).lower())
    text = text.replace("u\u0308", "v")
    chars = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Mn" or category == "Pd" or ch in "'’‘`ʼ":
            continue  # tone marks, hyphens and apostrophes join the parts of a word
        chars.append(ch if ch.isalnum() else " ")
    tokens = []
    for token in "".join(chars).split():
        token = token.replace("lyu", "lv")
        if token.startswith("nyu"):
            token = "nv" + token[3:]
        tokens.append(token)
    return tokens


@lru_cache(maxsize=65536)
def _syllables(hanzi: str) -> tuple[str, ...]:
    """Toneless pinyin of normalised characters (pypinyin, phrase-aware), ü written ``v``.

    Cached on the string: conversion is the expensive step and names repeat a great deal.
    Characters pypinyin does not know are kept as they are.
    """
    if not hanzi:
        return ()
    return tuple(
        syllable.replace("ü", "v")
        for syllable in lazy_pinyin(hanzi, style=Style.NORMAL, errors="default")
    )


@lru_cache(maxsize=8192)
def _surname_spellings(surname: str) -> tuple[str, ...]:
    """Spellings of a surname: the everyday reading first, then its surname readings."""
    everyday = "".join(_syllables(surname))
    spellings = [everyday]
    if surname in _COMPOUND_SURNAMES:
        spellings.extend(_COMPOUND_SURNAMES[surname])
    elif len(surname) == 1 and surname in _SURNAME_READINGS:
        heteronyms = pinyin(surname, style=Style.NORMAL, heteronym=True)[0]
        spellings.extend(
            reading.replace("ü", "v")
            for reading in heteronyms
            if reading in _SURNAME_READINGS[surname]
        )
    return tuple(dict.fromkeys(spellings))


def _alternatives(spellings: Iterable[str]) -> tuple[str, ...]:
    """Distinct spellings in order, each with ü as ``v`` followed by its ``u`` variant (吕:
    ``lv``, older passports ``lu``), capped at ``MAX_PINYIN_ALTERNATIVES``."""
    out: dict[str, None] = {}
    for spelling in spellings:
        if not spelling:
            continue
        out[spelling] = None
        if "lv" in spelling or "nv" in spelling:
            out[spelling.replace("lv", "lu").replace("nv", "nu")] = None
    return tuple(out)[:MAX_PINYIN_ALTERNATIVES]
