"""HL7 v2 ORU^R01 → FHIR R4 translator (entry point ``yijian.adapters: hl7v2``).

Pure: bytes, the feed's configuration and its code map in; a FHIR transaction Bundle (or a
ContentError/Rejected saying why not) out; no database, no network. Modules:

- ``message``: ER7 syntax (segments, fields, escapes), tolerant of hospital quirks
- ``charset``: which encoding (MSH-18, the feed's, or what actually decodes)
- ``datatypes``: TS/DTM, CX, XPN, XAD, XTN, CE/CWE, numbers
- ``units``: unit text → UCUM
- ``oru``: the ORU^R01 mapping and its identifier conventions
- ``ack``: the ACK returned to the sender
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adapters.hl7v2 import charset, oru
from adapters.hl7v2.ack import build_ack
from adapters.hl7v2.message import Message, SyntaxProblem, strip_bom
from hub.ingest.translation import (
    AckCode,
    IngestError,
    MessageHeader,
    Rejected,
    Translation,
)

if TYPE_CHECKING:
    from hub.ingest.codemaps import CodeMap
    from hub.ingest.feeds import FeedConfig

__all__ = ["HL7v2Translator", "translator"]

# MSH fields the header must reach: MSH-9 (type) and MSH-10 (control id).
_MSH_CONTROL_ID = 10


def _msh_line(body: bytes) -> bytes:
    """The MSH segment's bytes (up to the first segment terminator)."""
    ends = [i for i in (body.find(b"\r"), body.find(b"\n")) if i >= 0]
    return body[: min(ends)] if ends else body


def _decode_msh(line: bytes) -> str:
    """MSH text for routing: UTF-8, else GB 18030, else UTF-8 with replacement characters."""
    for codec in ("utf-8", "gb18030"):
        try:
            return line.decode(codec)
        except UnicodeDecodeError:
            continue
    return line.decode("utf-8", errors="replace")


def _read_msh(payload: bytes) -> Message:
    body, _ = strip_bom(payload)
    if not body:
        raise Rejected("the message is empty", location="MSH", hl7_code="100")
    nul = body.find(b"\x00")
    if nul >= 0:  # never valid in ER7 text; PostgreSQL text cannot hold it either
        raise Rejected(
            f"the message contains a NUL byte (at offset {nul}); HL7 v2 text never does",
            location="MSH",
            hl7_code="102",
        )
    if not body.startswith(b"MSH"):
        raise Rejected(
            "no MSH segment: an HL7 v2 message must start with MSH", location="MSH", hl7_code="100"
        )
    text = _decode_msh(_msh_line(body))
    try:
        message = Message.parse(text)
    except SyntaxProblem as error:
        raise Rejected(f"MSH cannot be read: {error}", location="MSH", hl7_code="100") from None
    return message


class HL7v2Translator:
    """The ``hl7v2`` Translator: ORU^R01 v2.3–2.5.1 (2.6+ leniently) from Chinese LIS/RIS."""

    name = "hl7v2"

    def header(self, payload: bytes) -> MessageHeader:
        """MSH only: who sent it, what it is, its control id. Rejected when unreadable."""
        msh = _read_msh(payload).msh
        if len(msh.fields) <= _MSH_CONTROL_ID:
            last = len(msh.fields) - 1
            raise Rejected(
                f"MSH is truncated: it ends at MSH-{last}, before MSH-10 (message control id)",
                location=f"MSH-{last + 1}",
                hl7_code="101",
            )
        control_id = msh.get(10)
        if not control_id:
            raise Rejected(
                "MSH-10 (message control id) is empty; every message needs a unique control id",
                location="MSH-10",
                hl7_code="101",
            )
        code, trigger = msh.get(9, 1), msh.get(9, 2)
        return MessageHeader(
            control_id=control_id,
            sending_facility=msh.get(4),
            sending_application=msh.get(3),
            receiving_application=msh.get(5),
            receiving_facility=msh.get(6),
            message_type=f"{code}^{trigger}" if trigger else code,
            version=msh.get(12),
            processing_id=msh.get(11) or "P",
            charset=msh.get(18),
        )

    def translate(
        self, payload: bytes, header: MessageHeader, feed: FeedConfig, codes: CodeMap
    ) -> Translation:
        """The whole message as a FHIR transaction. Raises ContentError or Rejected.

        The MSH is re-read from ``payload`` (``header`` is the pipeline's routing copy of it),
        so type, version and MSH-18 are always those of the bytes being translated.
        """
        msh = _read_msh(payload).msh
        warnings = oru.check_type_and_version(msh.get(9, 1), msh.get(9, 2), msh.get(12))
        body, had_bom = strip_bom(payload)
        declared = msh.get(18) or ("UTF-8" if had_bom else "")
        try:
            decoded = charset.decode(body, declared, feed.encoding)
        except charset.UndecodableMessage as error:
            raise Rejected(str(error), location="MSH-18", hl7_code="102") from None
        try:
            message = Message.parse(decoded.text)
        except SyntaxProblem as error:
            raise Rejected(str(error), location="MSH", hl7_code="100") from None
        return oru.translate_message(message, feed, codes, [*decoded.warnings, *warnings])

    def acknowledge(
        self,
        payload: bytes,
        header: MessageHeader | None,
        code: AckCode,
        error: IngestError | None,
        *,
        encoding: str = "utf-8",
    ) -> bytes:
        """An HL7 ACK (MSA + ERR for AE/AR), encoded like the message: as its MSH-18 (echoed
        in the ACK) says when it names a known character set, else as the feed says."""
        declared = charset.codec_for(header.charset) if header and header.charset else None
        return build_ack(header, code, error, encoding=declared or encoding)


translator = HL7v2Translator()
