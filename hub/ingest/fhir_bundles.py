"""A hospital's own FHIR transaction Bundles, as one more inbound format (``fhir``).

The Bundle is stored as the hospital sent it, with one addition: codings in the feed's local
code system get their mapped LOINC coding in front, and resources whose local code is not
mapped are tagged ``unmapped-code``, exactly as the HL7 adapter does. The replay key is
``Bundle.identifier`` (system|value), else a digest of the bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from hub.ingest.codemaps import CodeMap
from hub.ingest.feeds import FeedConfig
from hub.ingest.translation import (
    AckCode,
    IngestError,
    LocalCode,
    MessageHeader,
    Rejected,
    Translation,
)

UNMAPPED_TAG = {
    "system": "https://yijian-hub.org/fhir/CodeSystem/ingest",
    "code": "unmapped-code",
    "display": "Local code not mapped to LOINC",
}
CODED_TYPES = frozenset({"Observation", "DiagnosticReport", "ServiceRequest"})


def unit_conflict(resource: dict[str, Any], unit: str | None) -> bool:
    """Whether the resource's quantity is in a unit other than ``unit`` (a map's UCUM code):
    then the mapped LOINC (often unit-specific: mass vs substance) would mislabel it."""
    quantity = resource.get("valueQuantity")
    if not unit or not isinstance(quantity, dict):
        return False
    if quantity.get("code"):
        return bool(quantity["code"] != unit)
    return bool(quantity.get("unit")) and quantity.get("unit") != unit


def map_codes(resource: dict[str, Any], codes: CodeMap) -> list[LocalCode]:
    """Put the mapped coding in front of each local coding of ``resource.code``; tag the
    resource when a local code has no mapping. Returns the unmapped local codes."""
    concept = resource.get("code")
    if not isinstance(concept, dict) or not isinstance(concept.get("coding"), list):
        return []
    codings: list[Any] = concept["coding"]
    unmapped: list[LocalCode] = []
    added: list[dict[str, Any]] = []
    present = {(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)}
    for coding in codings:
        if not isinstance(coding, dict) or coding.get("system") != codes.source_system:
            continue
        target = codes.get(str(coding.get("code")))
        if target is not None and unit_conflict(resource, target.unit):
            target = None  # the map's code is for results in another unit: not this one
        if target is None:
            unmapped.append(
                LocalCode(codes.source_system, str(coding.get("code")), coding.get("display", ""))
            )
        elif (target.system, target.code) not in present:
            mapped = {"system": target.system, "code": target.code}
            if target.display:
                mapped["display"] = target.display
            added.append(mapped)
    if added:
        concept["coding"] = added + codings
    meta = resource.setdefault("meta", {})
    tags = [t for t in meta.get("tag") or [] if t.get("code") != UNMAPPED_TAG["code"]]
    if unmapped and not any(
        c.get("system") != codes.source_system for c in concept["coding"] if isinstance(c, dict)
    ):
        tags.append(dict(UNMAPPED_TAG))
    if tags:
        meta["tag"] = tags
    else:
        meta.pop("tag", None)
    if not meta:
        resource.pop("meta")
    return unmapped


class FhirBundleTranslator:
    """Translator for ``application/fhir+json`` transaction Bundles."""

    name = "fhir"

    def header(self, payload: bytes) -> MessageHeader:
        bundle = _parse(payload)
        identifier = bundle.get("identifier")
        if not isinstance(identifier, dict):
            identifier = {}
        value = identifier.get("value")
        if isinstance(value, str) and value:
            system = identifier.get("system") or ""
            control_id = f"{system}|{value}" if system else value
        else:
            control_id = "sha256:" + hashlib.sha256(payload).hexdigest()
        return MessageHeader(
            control_id=control_id[:200], sending_facility="", message_type="Bundle"
        )

    def translate(
        self, payload: bytes, header: MessageHeader, feed: FeedConfig, codes: CodeMap
    ) -> Translation:
        bundle = _parse(payload)
        unmapped: list[LocalCode] = []
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(resource, dict) and resource.get("resourceType") in CODED_TYPES:
                unmapped += map_codes(resource, codes)
        return Translation(bundle, unmapped)

    def acknowledge(
        self,
        payload: bytes,
        header: MessageHeader | None,
        code: AckCode,
        error: IngestError | None,
        *,
        encoding: str = "utf-8",
    ) -> bytes:
        severity = "information" if code is AckCode.ACCEPT else "error"
        text = error.reason if error else "accepted"
        issue_code = (
            "informational"
            if error is None
            else ("structure" if code is AckCode.REJECT else "processing")
        )
        return orjson.dumps(
            {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": severity, "code": issue_code, "diagnostics": text}],
            }
        )


def _parse(payload: bytes) -> dict[str, Any]:
    try:
        bundle = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        raise Rejected(f"the body is not JSON: {error}") from None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise Rejected("the body must be a FHIR Bundle")
    if bundle.get("type") != "transaction":
        raise Rejected("only transaction Bundles are accepted here (Bundle.type)")
    return bundle


translator = FhirBundleTranslator()
