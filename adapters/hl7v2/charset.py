"""Which character encoding a message is in, and its text.

Chinese hospital systems send UTF-8 or GBK/GB 18030, declare it in MSH-18 only sometimes, and
occasionally declare the wrong one (an interface engine upgraded to UTF-8 while the feed
configuration still says GBK). The rule: the MSH-18 declaration wins over the feed's
configured encoding; if the chosen encoding cannot decode the bytes, or it is GBK/GB 18030 but
the bytes are valid UTF-8 with multibyte sequences (which GBK text practically never is), the
encoding that works is used and a warning says so. Bytes that are neither UTF-8 nor GB 18030
cannot be read reliably and are rejected.

GBK and GB 2312 are decoded with the GB 18030 codec, their superset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# MSH-18 values (HL7 table 0211 and what hospitals actually write) → Python codec.
_DECLARED: dict[str, str] = {
    "UNICODE UTF-8": "utf-8",
    "UNICODE UTF8": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "UNICODE": "utf-8",
    "GB 18030-2000": "gb18030",
    "GB18030-2000": "gb18030",
    "GB 18030": "gb18030",
    "GB18030": "gb18030",
    "GB18030-2005": "gb18030",
    "GBK": "gb18030",
    "CP936": "gb18030",
    "GB2312": "gb18030",
    "GB 2312": "gb18030",
    "CHINESE-GB2312": "gb18030",
    "ISO IR58": "gb18030",  # HL7 0211: GB 2312-80
    "ASCII": "ascii",
    "US-ASCII": "ascii",
}

_LABELS = {"utf-8": "UTF-8", "gb18030": "GB 18030", "ascii": "ASCII"}


@dataclass
class Decoded:
    """A decoded message and how it was decoded."""

    text: str
    encoding: str  # the Python codec used: utf-8, gb18030 or ascii
    warnings: list[str] = field(default_factory=list)


class UndecodableMessage(ValueError):
    """The bytes are neither UTF-8 nor GB 18030."""


def codec_for(declared: str) -> str | None:
    """The codec an MSH-18 value names, or None when it names none we know."""
    key = " ".join(declared.strip().upper().split())
    return _DECLARED.get(key)


def _feed_codec(feed_encoding: str) -> str:
    return "gb18030" if feed_encoding.lower() in ("gbk", "gb18030", "gb2312") else "utf-8"


def _try(payload: bytes, codec: str) -> str | None:
    try:
        return payload.decode(codec)
    except UnicodeDecodeError:
        return None


def decode(payload: bytes, declared: str, feed_encoding: str) -> Decoded:
    """Decode a whole message (BOM already removed); see the module docstring for the rule."""
    if payload.isascii():
        return Decoded(payload.decode("ascii"), "ascii")
    codec = codec_for(declared) if declared else None
    warnings: list[str] = []
    if declared and codec is None:
        warnings.append(
            f"MSH-18 character set {declared!r} is not supported; decoded with the feed's "
            f"encoding {feed_encoding}"
        )
    if codec is None or codec == "ascii":
        if codec == "ascii":
            warnings.append(
                "MSH-18 declares ASCII but the message has non-ASCII bytes; decoded with the "
                f"feed's encoding {feed_encoding}"
            )
        codec = _feed_codec(feed_encoding)
    source = f"MSH-18 {declared!r}" if declared and codec_for(declared) == codec else "the feed"
    if codec == "gb18030":
        as_utf8 = _try(payload, "utf-8")
        if as_utf8 is not None:
            warnings.append(
                f"{source} says GB 18030/GBK but the bytes are valid UTF-8; decoded as UTF-8"
            )
            return Decoded(as_utf8, "utf-8", warnings)
    text = _try(payload, codec)
    if text is not None:
        return Decoded(text, codec, warnings)
    other = "utf-8" if codec == "gb18030" else "gb18030"
    text = _try(payload, other)
    if text is not None:
        warnings.append(
            f"{source} says {_LABELS[codec]} but the bytes are not valid {_LABELS[codec]}; "
            f"decoded as {_LABELS[other]}"
        )
        return Decoded(text, other, warnings)
    raise UndecodableMessage("message is not valid UTF-8 or GB18030")
