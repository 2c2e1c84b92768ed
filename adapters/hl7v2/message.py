"""HL7 v2 ER7 ("pipe and hat") syntax: bytes → segments → fields → components.

Only the syntax lives here; what the fields mean is in ``datatypes`` and ``oru``. The parser is
deliberately small and lazy: a message is split into segments and fields once, and
components, repetitions and subcomponents are split only when a field is read, because a
translator reads perhaps a fifth of the fields a hospital sends.

Hospital quirks it tolerates: a leading byte-order mark or MLLP start byte, segments ended by
``\\r``, ``\\n`` or ``\\r\\n``, blank lines, trailing ``\\x1c``/whitespace junk, encoding
characters other than ``^~\\&`` (declared in MSH-2, including the 2.7 truncation character),
and fewer encoding characters than four.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_JUNK = "\ufeff\x0b\x1c\x00 \t\r\n"
_UTF8_BOM = b"\xef\xbb\xbf"


class SyntaxProblem(ValueError):
    """The bytes are not an HL7 v2 message (no MSH, truncated header...)."""


@dataclass(frozen=True)
class Delimiters:
    """MSH-1 and MSH-2: the field, component, repetition, escape and subcomponent characters."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, segment_text: str) -> Delimiters:
        """Read the delimiters from the start of an MSH segment (``MSH|^~\\&|...``)."""
        if len(segment_text) < 4 or not segment_text.startswith("MSH"):
            raise SyntaxProblem("the message does not start with an MSH segment")
        field = segment_text[3]
        if field.isalnum() or field in " \r\n":
            raise SyntaxProblem(f"MSH-1 field separator {field!r} is not a valid separator")
        encoding = segment_text[4:].split(field, 1)[0]
        defaults = "^~\\&"
        # Fewer than four encoding characters: the missing ones take their defaults; a
        # fifth (the v2.7 truncation character) is ignored.
        chars = [encoding[i] if i < len(encoding) else defaults[i] for i in range(4)]
        if len(set(chars)) < 4 or field in chars:
            raise SyntaxProblem(f"MSH-2 encoding characters {encoding!r} are not distinct")
        return cls(field, chars[0], chars[1], chars[2], chars[3])

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent


def comp(values: list[str], number: int) -> str:
    """Component ``number`` (1-based) of a ``Segment.values`` list, empty when absent."""
    return values[number - 1] if number <= len(values) else ""


class Segment:
    """One segment. ``field(n)`` counts like HL7: MSH-1 is the field separator itself.

    Fields are split into repetitions and components on first access and cached, because a
    translator reads several components of the same field (CE/CWE, CX, XPN...).
    """

    __slots__ = ("_split", "_values", "delims", "fields", "name")

    def __init__(self, text: str, delims: Delimiters) -> None:
        self.delims = delims
        parts = text.split(delims.field)
        self.name = parts[0].strip()
        if self.name == "MSH":
            # MSH-1 is the separator, MSH-2 the encoding characters (never unescaped).
            parts = ["MSH", delims.field, *parts[1:]]
        self.fields = parts
        self._split: dict[int, list[list[str]]] = {}
        self._values: dict[tuple[int, int], list[str]] = {}

    def raw(self, n: int) -> str:
        """Field ``n`` exactly as sent (escapes, repetitions and components included)."""
        return self.fields[n] if n < len(self.fields) else ""

    def _parts(self, n: int) -> list[list[str]]:
        """Field ``n`` as repetitions of raw components (cached)."""
        found = self._split.get(n)
        if found is None:
            raw = self.fields[n] if n < len(self.fields) else ""
            if not raw:
                found = []
            elif self.name == "MSH" and n <= 2:
                found = [[raw]]
            else:
                component = self.delims.component
                found = [rep.split(component) for rep in raw.split(self.delims.repetition)]
            self._split[n] = found
        return found

    def repetitions(self, n: int) -> list[str]:
        """The raw repetitions of field ``n`` (empty list when the field is empty)."""
        raw = self.raw(n)
        if not raw:
            return []
        if self.name == "MSH" and n <= 2:
            return [raw]
        return raw.split(self.delims.repetition)

    def components(self, n: int, rep: int = 0) -> list[str]:
        """The raw components of one repetition of field ``n``."""
        reps = self._parts(n)
        return list(reps[rep]) if rep < len(reps) else []

    def values(self, n: int, rep: int = 0) -> list[str]:
        """All components of one repetition, each unescaped, stripped and cut to its first
        subcomponent (cached): ``values(3)[1]`` is OBX-3.2. Shorter than the component count
        when trailing components are absent; index with ``comp(values, i)``."""
        key = (n, rep)
        found = self._values.get(key)
        if found is None:
            reps = self._parts(n)
            found = []
            if rep < len(reps):
                d = self.delims
                msh_special = self.name == "MSH" and n <= 2
                for raw in reps[rep]:
                    if not raw:
                        found.append("")
                        continue
                    if not msh_special and d.subcomponent in raw:
                        raw = raw.split(d.subcomponent, 1)[0]
                    if d.escape in raw and not msh_special:
                        raw = unescape(raw, d)
                    found.append(raw.strip())
            self._values[key] = found
        return found

    def get(self, n: int, component: int = 1, rep: int = 0, sub: int = 1) -> str:
        """One value, unescaped and stripped: field n, repetition rep (0-based), component and
        subcomponent (1-based, like HL7's ``OBX-3.1``). Empty when absent."""
        fields = self.fields
        if n >= len(fields) or not fields[n]:
            return ""
        raw = fields[n]
        if self.name == "MSH" and n <= 2:
            return raw if rep == 0 and component == 1 and sub == 1 else ""
        if rep == 0 and component == 1 and sub == 1:
            d = self.delims
            if not (
                d.component in raw
                or d.repetition in raw
                or d.subcomponent in raw
                or d.escape in raw
            ):
                return raw.strip()  # the common case: a plain value
        reps = self._parts(n)
        if rep >= len(reps):
            return ""
        comps = reps[rep]
        if component > len(comps):
            return ""
        raw = comps[component - 1]
        if not raw:
            return ""
        subcomponent = self.delims.subcomponent
        if subcomponent in raw and not (self.name == "MSH" and n <= 2):
            subs = raw.split(subcomponent)
            if sub > len(subs):
                return ""
            raw = subs[sub - 1]
        elif sub != 1:
            return ""
        if self.delims.escape in raw:
            raw = unescape(raw, self.delims)
        return raw.strip()

    def text(self, n: int, rep: int = 0) -> str:
        """A whole repetition as text: for ST/TX/FT values, where a stray ``^`` or ``&`` sent
        unescaped is part of the text rather than a component separator."""
        reps = self.repetitions(n)
        if rep >= len(reps):
            return ""
        return unescape(reps[rep], self.delims)

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Segment({self.delims.field.join(self.fields)[:60]!r})"


_FORMATTING = {".br": "\n", ".sp": "\n", ".fi": "", ".nf": "", "H": "", "N": ""}


def unescape(text: str, delims: Delimiters, encoding: str = "utf-8") -> str:
    """Resolve HL7 escape sequences: ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``, ``\\Xhh..\\`` (bytes in
    the message's encoding), ``\\.br\\``/``\\.sp\\`` → newline; highlighting (``\\H\\``,
    ``\\N\\``), other formatting commands and charset switches (``\\Cxxyy\\``) are dropped.
    An escape character without a closing one is kept as it is."""
    esc = delims.escape
    if esc not in text:
        return text
    out: list[str] = []
    i = 0
    length = len(text)
    while i < length:
        char = text[i]
        if char != esc:
            j = text.find(esc, i)
            if j < 0:
                out.append(text[i:])
                break
            out.append(text[i:j])
            i = j
            continue
        end = text.find(esc, i + 1)
        if end < 0:
            out.append(text[i:])
            break
        seq = text[i + 1 : end]
        i = end + 1
        if seq == "F":
            out.append(delims.field)
        elif seq == "S":
            out.append(delims.component)
        elif seq == "T":
            out.append(delims.subcomponent)
        elif seq == "R":
            out.append(delims.repetition)
        elif seq == "E":
            out.append(esc)
        elif seq[:1] == "X" and len(seq) > 1:
            try:
                out.append(bytes.fromhex(seq[1:]).decode(encoding, errors="replace"))
            except ValueError:
                out.append(esc + seq + esc)
        elif seq in _FORMATTING:
            out.append(_FORMATTING[seq])
        elif seq[:1] in ("C", "M", "Z") or seq[:3] in (".in", ".ti", ".sk", ".ce"):
            continue
        elif seq == "":
            out.append(esc)  # an empty sequence is not valid HL7; keep one escape character
        else:
            out.append(esc + seq + esc)
    return "".join(out)


def escape(text: str, delims: Delimiters) -> str:
    """The inverse of ``unescape`` for the delimiters (and newlines as ``\\.br\\``)."""
    esc = delims.escape
    out = text.replace(esc, f"{esc}E{esc}")
    out = out.replace(delims.field, f"{esc}F{esc}")
    out = out.replace(delims.component, f"{esc}S{esc}")
    out = out.replace(delims.subcomponent, f"{esc}T{esc}")
    out = out.replace(delims.repetition, f"{esc}R{esc}")
    out = out.replace("\r\n", "\n").replace("\r", "\n")
    return out.replace("\n", f"{esc}.br{esc}")


def strip_bom(payload: bytes) -> tuple[bytes, bool]:
    """The payload without leading MLLP/whitespace junk and a UTF-8 BOM; True if one was there."""
    start = 0
    length = len(payload)
    while start < length and payload[start] in b"\x0b \t\r\n":
        start += 1
    had_bom = payload.startswith(_UTF8_BOM, start)
    if had_bom:
        start += len(_UTF8_BOM)
    end = length
    while end > start and payload[end - 1] in b"\x1c\x0b\x00 \t\r\n":
        end -= 1
    return payload[start:end], had_bom


def split_segments(text: str) -> list[str]:
    """Segment texts, in order, without blank lines and surrounding junk."""
    text = text.strip(_JUNK)
    return [line for line in SEGMENT_SPLIT.split(text) if line.strip(_JUNK)]


@dataclass
class Message:
    """A decoded message: its delimiters and segments, in order."""

    delims: Delimiters
    segments: list[Segment]

    @classmethod
    def parse(cls, text: str) -> Message:
        lines = split_segments(text)
        if not lines or not lines[0].startswith("MSH"):
            raise SyntaxProblem("the message does not start with an MSH segment")
        delims = Delimiters.from_msh(lines[0])
        return cls(delims, [Segment(line, delims) for line in lines])

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)
