"""The contract between the ingest pipeline and the adapters that translate hospital formats.

The hub never imports an adapter: adapters register a ``Translator`` under the entry-point
group ``yijian.adapters`` (see ``hub.ingest.adapters``), and the pipeline looks them up by the
name a feed configures (``hl7v2`` for the common case).

A translator is pure: bytes + feed + code map in, a FHIR transaction Bundle out. It never
touches the database, so the pipeline decides about replays, identity and durability.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hub.ingest.codemaps import CodeMap
    from hub.ingest.feeds import FeedConfig


class AckCode(StrEnum):
    """HL7 acknowledgement codes (original mode): accept, error, reject."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


@dataclass(frozen=True)
class MessageHeader:
    """What the pipeline needs to know about a message before translating it (HL7 MSH)."""

    control_id: str  # MSH-10: the sender's message control id, the replay key
    sending_facility: str  # MSH-4.1: chooses the feed
    sending_application: str = ""  # MSH-3.1
    receiving_application: str = ""  # MSH-5.1
    receiving_facility: str = ""  # MSH-6.1
    message_type: str = ""  # MSH-9 as "ORU^R01"
    version: str = ""  # MSH-12, e.g. "2.5.1"
    processing_id: str = "P"  # MSH-11
    charset: str = ""  # MSH-18 as declared (UNICODE UTF-8, GB 18030-2000, ...), may be empty


class IngestError(Exception):
    """A message the hub cannot accept; the base of the two kinds below."""

    ack_code: AckCode = AckCode.ERROR

    def __init__(self, reason: str, *, location: str | None = None, hl7_code: str = "207") -> None:
        super().__init__(reason)
        self.reason = reason
        self.location = location  # e.g. "PID-3" or "OBX[4]-5": where the problem is
        self.hl7_code = hl7_code  # HL7 table 0357 error code, e.g. 101 required field missing


class ContentError(IngestError):
    """The message is well-formed but its content cannot be accepted (ACK AE)."""

    ack_code = AckCode.ERROR


class Rejected(IngestError):
    """The message cannot be parsed, or its type or version is not supported (ACK AR)."""

    ack_code = AckCode.REJECT


@dataclass(frozen=True)
class LocalCode:
    """A hospital's own code seen in a message (for the unmapped-code worklist)."""

    system: str
    code: str
    display: str = ""
    unit: str = ""


@dataclass
class Translation:
    """A translated message: the FHIR transaction that stores it, plus what the hub should know.

    ``bundle`` is a transaction Bundle whose entries are conditional (``PUT
    Type?identifier=system|value``) on business identifiers, so a replayed or corrected
    message updates the same resources instead of creating new ones.
    """

    bundle: dict[str, Any]
    unmapped: list[LocalCode] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class Translator(Protocol):
    """One inbound format. Implementations live in ``adapters/`` and are found by name."""

    name: str  # the entry-point name a feed's ``adapter`` setting refers to

    def header(self, payload: bytes) -> MessageHeader:
        """Read just enough to route the message. Raises Rejected when it is not readable."""
        ...

    def translate(
        self, payload: bytes, header: MessageHeader, feed: FeedConfig, codes: CodeMap
    ) -> Translation:
        """The whole message as a FHIR transaction. Raises ContentError or Rejected."""
        ...

    def acknowledge(
        self,
        payload: bytes,
        header: MessageHeader | None,
        code: AckCode,
        error: IngestError | None,
        *,
        encoding: str = "utf-8",
    ) -> bytes:
        """The response the sender expects (an HL7 ACK), encoded like the message."""
        ...
