"""multipart/related (RFC 2387) for DICOMweb: read a STOW-RS body as a stream, write a WADO-RS
response as one, and the media-type grammar both need (Content-Type, Accept).

Reading never holds a body in memory: ``MultipartParser`` is incremental (sans I/O, fed chunk
by chunk, keeping at most a boundary's length of look-behind), and ``read_parts`` spools each
part to a temporary file (``SpooledTemporaryFile``: small parts stay in memory up to
``SPOOL_IN_MEMORY``, larger ones go to disk), so memory stays bounded whatever the number and
size of the instances a hospital sends in one request.

Writing (``write_parts``) is an async generator of byte chunks for a ``StreamingResponse``:
each part's body is itself a stream (a stored file read in chunks), so a study of any size is
served with a few chunks in memory.
"""

from __future__ import annotations

import re
import tempfile
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, cast

SPOOL_IN_MEMORY = 1 << 20  # a part up to 1 MiB stays in memory; a larger one goes to disk
MAX_HEADER_BYTES = 16 * 1024  # one part's header block
MAX_PREAMBLE_BYTES = 64 * 1024  # bytes before the first boundary (usually none)
MAX_BOUNDARY = 200  # RFC 2046 says 70; some clients are generous
CRLF = b"\r\n"


class MultipartError(ValueError):
    """A body that is not the multipart/related message its Content-Type announces."""


# -- media types (RFC 9110 §8.3.1, §12.5.1) ---------------------------------------------------

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAMETER = re.compile(
    rf"\s*;\s*({_TOKEN})\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|({_TOKEN}|[^;,\s]*))", re.DOTALL
)
_MEDIA_TYPE = re.compile(rf"\s*({_TOKEN})/({_TOKEN})")


@dataclass(frozen=True)
class MediaType:
    """A media type or range with its parameters (names in lower case) and quality."""

    type: str  # "multipart/related", "application/dicom", "image/*", "*/*"
    parameters: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    def param(self, name: str) -> str | None:
        return self.parameters.get(name)

    def matches(self, concrete: str) -> bool:
        """Whether this range covers the concrete type ``concrete`` (``image/*`` covers
        ``image/png``)."""
        main, _, sub = self.type.partition("/")
        other_main, _, other_sub = concrete.lower().partition("/")
        return (main == "*" or main == other_main) and (sub == "*" or sub == other_sub)


def _parse_one(text: str, position: int) -> tuple[MediaType, int]:
    match = _MEDIA_TYPE.match(text, position)
    if match is None:
        raise MultipartError(f"not a media type: {text[position : position + 80]!r}")
    media = f"{match.group(1)}/{match.group(2)}".lower()
    position = match.end()
    parameters: dict[str, str] = {}
    quality = 1.0
    while True:
        parameter = _PARAMETER.match(text, position)
        if parameter is None:
            break
        name = parameter.group(1).lower()
        quoted, bare = parameter.group(2), parameter.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else (bare or "")
        if name == "q":
            try:
                quality = float(value)
            except ValueError:
                raise MultipartError(f"the quality value q={value!r} is not a number") from None
            if not 0.0 <= quality <= 1.0:
                raise MultipartError(f"the quality value q={value} is not between 0 and 1")
        else:
            parameters[name] = value
        position = parameter.end()
    return MediaType(media, parameters, quality), position


def parse_media_type(text: str) -> MediaType:
    """One media type with parameters (a Content-Type value); MultipartError if malformed."""
    media, position = _parse_one(text, 0)
    rest = text[position:].strip().rstrip(";").strip()
    if rest:
        raise MultipartError(f"unexpected text after the media type: {rest[:80]!r}")
    return media


def parse_accept(text: str) -> list[MediaType]:
    """The media ranges of an Accept header, best first (stable for equal quality); ranges
    with q=0 (not acceptable) are left out. MultipartError if malformed."""
    ranges: list[MediaType] = []
    position = 0
    text = text.strip()
    while position < len(text):
        if text[position] in ", \t":
            position += 1
            continue
        media, position = _parse_one(text, position)
        rest = text[position:].lstrip()
        if rest and not rest.startswith(","):
            raise MultipartError(f"unexpected text in the Accept header: {rest[:80]!r}")
        position = len(text) - len(rest)
        if media.quality > 0:
            ranges.append(media)
    return sorted(ranges, key=lambda m: -m.quality)


def multipart_type(part_type: str, boundary: str, **parameters: str) -> str:
    """The Content-Type of a multipart/related response whose parts are ``part_type``."""
    extra = "".join(f"; {name.replace('_', '-')}={value}" for name, value in parameters.items())
    return f'multipart/related; type="{part_type}"{extra}; boundary={boundary}'


def new_boundary() -> str:
    """A boundary that cannot occur in a part (128 random bits)."""
    return f"yijian-{uuid.uuid4().hex}"


# -- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartStart:
    """A part begins; its header fields, names in lower case."""

    headers: dict[str, str]


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)


class MultipartParser:
    """An incremental multipart parser: ``feed`` bytes, get events; ``finish`` at the end.

    Follows RFC 2046 §5.1.1: the body is an optional preamble, then parts each introduced by
    ``CRLF--boundary`` (the first one may start the body without CRLF), then ``--boundary--``
    and an ignored epilogue. Between a delimiter and its CRLF, transport padding (spaces and
    tabs) is allowed. Memory: the unconsumed look-behind is at most one delimiter long,
    except inside a part's header block (bounded by ``MAX_HEADER_BYTES``).
    """

    def __init__(self, boundary: str | bytes) -> None:
        raw = boundary.encode("latin-1") if isinstance(boundary, str) else bytes(boundary)
        if not raw or len(raw) > MAX_BOUNDARY:
            raise MultipartError(f"the boundary must be 1 to {MAX_BOUNDARY} characters")
        self._delimiter = CRLF + b"--" + raw
        # A virtual CRLF before the body, so a boundary at the very start is a delimiter too.
        self._buffer = bytearray(CRLF)
        self._state = _PREAMBLE
        self._skipped = 0
        self.parts = 0

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> list[Event]:
        if self._state == _DONE:
            return []  # the epilogue
        self._buffer += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> None:
        """The body has ended: MultipartError unless the closing boundary was seen."""
        if self._state == _DONE:
            return
        if self._state == _PREAMBLE and self.parts == 0:
            raise MultipartError(
                "the body holds no part: its boundary (from the Content-Type) never occurs"
            )
        raise MultipartError(
            f"the body ended inside part {self.parts} before the closing boundary: "
            "the request was cut short"
        )

    def _step(self, events: list[Event]) -> bool:
        """Consume what can be consumed from the buffer; False when more bytes are needed."""
        buffer, delimiter = self._buffer, self._delimiter
        if self._state == _PREAMBLE:
            found = buffer.find(delimiter)
            if found < 0:
                keep = len(delimiter) - 1
                if len(buffer) > keep:
                    self._skipped += len(buffer) - keep
                    del buffer[: len(buffer) - keep]
                if self._skipped > MAX_PREAMBLE_BYTES:
                    raise MultipartError(
                        f"no boundary in the first {MAX_PREAMBLE_BYTES} bytes of the body: "
                        "the boundary of the Content-Type does not match the body"
                    )
                return False
            del buffer[: found + len(delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        if self._state == _AFTER_DELIMITER:
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"--":
                self._state = _DONE
                buffer.clear()
                return False
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > 1024:
                    raise MultipartError("a boundary line is not followed by a line break")
                return False
            padding = bytes(buffer[:end]).rstrip(b"\r")
            if padding.strip(b" \t"):
                raise MultipartError(
                    f"a boundary line has unexpected text after the boundary: {padding[:40]!r}"
                )
            del buffer[: end + 1]
            self._state = _HEADERS
            return True
        if self._state == _HEADERS:
            if buffer[:2] == CRLF:  # a part without header fields
                del buffer[:2]
                headers: dict[str, str] = {}
            else:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise MultipartError(
                            f"the header block of part {self.parts + 1} is longer than "
                            f"{MAX_HEADER_BYTES} bytes or not ended by an empty line"
                        )
                    return False
                headers = _parse_headers(bytes(buffer[:end]), self.parts + 1)
                del buffer[: end + 4]
            self.parts += 1
            events.append(PartStart(headers))
            self._state = _BODY
            return True
        if self._state == _BODY:
            found = buffer.find(delimiter)
            if found < 0:
                keep = len(delimiter) - 1
                if len(buffer) > keep:
                    events.append(PartData(bytes(buffer[: len(buffer) - keep])))
                    del buffer[: len(buffer) - keep]
                return False
            if found:
                events.append(PartData(bytes(buffer[:found])))
            events.append(PartEnd())
            del buffer[: found + len(delimiter)]
            self._state = _AFTER_DELIMITER
            return True
        return False


def _parse_headers(block: bytes, number: int) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        if line[:1] in (" ", "\t") and headers:  # obsolete line folding
            last = next(reversed(headers))
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon or not name.strip():
            raise MultipartError(f"part {number} has a malformed header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers


@dataclass
class Part:
    """One received part: its header fields and its body, spooled (read from position 0).

    The caller owns the part and closes it (``with part:``), which deletes any file on disk.
    """

    number: int
    headers: dict[str, str]
    file: BinaryIO
    size: int = 0

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Part:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


async def read_parts(
    chunks: AsyncIterable[bytes], boundary: str, *, spool_in_memory: int = SPOOL_IN_MEMORY
) -> AsyncIterator[Part]:
    """The parts of a multipart body read from ``chunks``, each whole once yielded.

    A part is yielded when its closing delimiter has been read, so a body cut short never
    yields its last, incomplete part: MultipartError is raised instead (after the complete
    parts before it were yielded and handled).
    """
    parser = MultipartParser(boundary)
    current: Part | None = None
    try:
        async for chunk in chunks:
            for event in parser.feed(chunk):
                if isinstance(event, PartStart):
                    current = Part(parser.parts, event.headers, spool(spool_in_memory))
                elif isinstance(event, PartData):
                    assert current is not None
                    current.file.write(event.data)
                    current.size += len(event.data)
                else:
                    assert current is not None
                    current.file.seek(0)
                    part, current = current, None
                    yield part
            if parser.done:
                break
        parser.finish()
    finally:
        if current is not None:
            current.close()


def spool(in_memory: int = SPOOL_IN_MEMORY) -> BinaryIO:
    """A temporary file for one part: in memory up to ``in_memory`` bytes, then on disk;
    deleted when closed."""
    file = tempfile.SpooledTemporaryFile(max_size=in_memory, prefix="stow-")  # noqa: SIM115
    return cast(BinaryIO, file)


# -- writing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingPart:
    """A part to send: its Content-Type, further header fields, and its body (bytes, or an
    async stream of chunks read only when the part is written)."""

    content_type: str
    body: bytes | AsyncIterable[bytes]
    headers: tuple[tuple[str, str], ...] = ()


async def write_parts(
    parts: AsyncIterable[OutgoingPart] | Iterable[OutgoingPart], boundary: str
) -> AsyncIterator[bytes]:
    """The multipart/related body of ``parts`` as chunks (for a StreamingResponse)."""
    marker = f"--{boundary}\r\n".encode("latin-1")
    iterator: AsyncIterable[OutgoingPart] = (
        parts if isinstance(parts, AsyncIterable) else _aiter(parts)
    )
    async for part in iterator:
        head = [f"Content-Type: {part.content_type}"]
        head += [f"{name}: {value}" for name, value in part.headers]
        yield marker + ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if isinstance(part.body, bytes | bytearray):
            yield bytes(part.body)
        else:
            async for chunk in part.body:
                if chunk:
                    yield chunk
        yield CRLF
    yield f"--{boundary}--\r\n".encode("latin-1")


async def _aiter(items: Iterable[OutgoingPart]) -> AsyncIterator[OutgoingPart]:
    for item in items:
        yield item
