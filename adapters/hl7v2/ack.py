"""HL7 v2 original-mode acknowledgements (ACK) for what the hub received.

The ACK answers with the sender's and receiver's application and facility swapped, echoes the
message's processing id, version and character set, and carries the original control id in
MSA-2. For AE/AR it explains why in an ERR segment, in the shape the message's version
expects: 2.5 and later use ERR-2 (ERL location), ERR-3 (HL7 table 0357 code), ERR-4 severity
and ERR-8 (the reason for a person); 2.3 and 2.4 use the single ERR-1 (ELD) component. The
reason also goes into MSA-3, which every version's senders display.
"""

from __future__ import annotations

import re
import uuid

from adapters.hl7v2.datatypes import now_ts
from adapters.hl7v2.message import Delimiters, escape
from hub.ingest.translation import AckCode, IngestError, MessageHeader

HUB_APPLICATION = "YIJIAN"
HUB_FACILITY = "YIJIAN-HUB"
DEFAULT_VERSION = "2.5.1"
OLD_VERSIONS = frozenset({"2.1", "2.2", "2.3", "2.3.1", "2.4"})
_SHORT_TYPE_VERSIONS = frozenset({"2.1", "2.2", "2.3", "2.3.1"})

# HL7 table 0357, message error condition codes.
ERROR_TEXT = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

_LOCATION = re.compile(r"^(?P<segment>[A-Z][A-Z0-9]{2})(?:\[(?P<index>\d+)\])?(?:-(?P<field>\d+))?")
_DELIMS = Delimiters()


def parse_location(text: str | None) -> tuple[str, str, str]:
    """``OBX[3]-5`` → (``OBX``, ``3``, ``5``); ``PID-3`` → (``PID``, ``1``, ``3``)."""
    if not text:
        return "", "", ""
    match = _LOCATION.match(text)
    if not match:
        return "", "", ""
    return match["segment"], match["index"] or "1", match["field"] or ""


def _err_segment(error: IngestError | None, code: AckCode, reason: str, version: str) -> str:
    hl7_code = error.hl7_code if error is not None else "207"
    hl7_text = ERROR_TEXT.get(hl7_code, "Application error")
    segment, sequence, field = parse_location(error.location if error else None)
    if version in OLD_VERSIONS:
        located = "^".join([segment, sequence, field]) if segment else "^^"
        return f"ERR|{located}^{hl7_code}&{escape(hl7_text, _DELIMS)}&HL70357"
    erl = "^".join(p for p in (segment, sequence, field) if p) if segment else ""
    severity = "E"
    return (
        f"ERR||{erl}|{hl7_code}^{escape(hl7_text, _DELIMS)}^HL70357|{severity}||||"
        f"{escape(reason, _DELIMS)}"
    )


def e(value: str) -> str:
    """A value escaped for the ACK's standard delimiters."""
    return escape(value, _DELIMS)


def new_control_id() -> str:
    """A unique message control id of 20 characters (the 2.5 length of MSH-10)."""
    return "A" + uuid.uuid4().hex[:19].upper()


def build_ack(
    header: MessageHeader | None,
    code: AckCode,
    error: IngestError | None,
    *,
    encoding: str = "utf-8",
) -> bytes:
    """The ACK for a message whose header was read (``header``) or not (None)."""
    if error is not None:
        reason = error.reason
    elif code is AckCode.ACCEPT:
        reason = ""
    else:
        reason = "message not accepted"
    if header is None and code is AckCode.ACCEPT:
        code = AckCode.REJECT  # nothing readable cannot have been accepted
        reason = reason or "message could not be read"
    if header is None:
        version = DEFAULT_VERSION
        msh = (
            f"MSH|^~\\&|{HUB_APPLICATION}|{HUB_FACILITY}|||{now_ts()}||ACK|{new_control_id()}"
            f"|P|{version}"
        )
        msa = f"MSA|{code.value}||{e(reason)}"
        segments = [msh, msa, _err_segment(error, code, reason, version)]
    else:
        version = header.version or DEFAULT_VERSION
        message_type = "ACK^R01" if version in _SHORT_TYPE_VERSIONS else "ACK^R01^ACK"
        fields = [
            "MSH",
            "^~\\&",
            e(header.receiving_application or HUB_APPLICATION),
            e(header.receiving_facility or HUB_FACILITY),
            e(header.sending_application),
            e(header.sending_facility),
            now_ts(),
            "",
            message_type,
            new_control_id(),
            e(header.processing_id or "P"),
            e(version),
        ]
        if header.charset:
            fields += ["", "", "", "", "", e(header.charset)]
        msa = f"MSA|{code.value}|{e(header.control_id)}"
        if reason and code is not AckCode.ACCEPT:
            msa += f"|{e(reason)}"
        segments = ["|".join(fields), msa]
        if code is not AckCode.ACCEPT:
            segments.append(_err_segment(error, code, reason, version))
    return ("\r".join(segments) + "\r").encode(encoding, errors="replace")
