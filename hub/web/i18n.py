"""Interface languages: Simplified Chinese is the source text, English a translation.

Templates and pages write the Chinese text (``{{ _("患者检索") }}``, gettext style). With the
English interface the text is looked up in ``messages_en.json`` (one flat JSON object, key =
the Chinese text, kept sorted so that concurrent additions merge); a missing key falls back to
the Chinese, so an untranslated string never breaks a page.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from starlette.requests import Request

Lang = Literal["zh-CN", "en"]
LANGUAGES: tuple[Lang, ...] = ("zh-CN", "en")
DEFAULT_LANG: Lang = "zh-CN"
LANG_COOKIE = "yijian_lang"
MESSAGES_EN = Path(__file__).with_name("messages_en.json")


@functools.cache
def english() -> dict[str, str]:
    """The English messages (read once per process)."""
    messages = json.loads(MESSAGES_EN.read_text(encoding="utf-8"))
    if not isinstance(messages, dict):
        raise ValueError(f"{MESSAGES_EN} must be one flat JSON object")
    return messages


def translate(text: str, lang: str) -> str:
    """``text`` (Chinese) in ``lang``; the Chinese itself when there is no translation."""
    if lang == "en":
        return english().get(text, text)
    return text


def parse_lang(value: str | None) -> Lang | None:
    """A supported language code, or None."""
    return next((lang for lang in LANGUAGES if lang == value), None)


def request_lang(request: Request) -> Lang:
    """The language of a request: the ``yijian_lang`` cookie, else Chinese."""
    return parse_lang(request.cookies.get(LANG_COOKIE)) or DEFAULT_LANG


def translator(request: Request) -> Callable[..., str]:
    """The request's ``_`` for messages written in Python: ``_("没有机构 {organization}。",
    organization=org_id)`` translates the Chinese (named ``{placeholders}`` kept in the
    English), then fills in the values, so that the values themselves are never translated."""
    lang = request_lang(request)

    def _(text: str, **values: object) -> str:
        translated = translate(text, lang)
        return translated.format(**values) if values else translated

    return _
