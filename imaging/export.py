"""A de-identified copy of a stored study (PS3.15 Basic Application Confidentiality Profile),
for research and teaching links.

UIDs are replaced through an HMAC of the hub's de-identification key (``KEYS_DIR/deid.key``,
created once), so exporting the same study twice gives the same new UIDs and a researcher's
references stay valid; the default pseudonym is derived the same way from the hospital and
the Patient ID, so one patient's studies share one pseudonym without revealing who it is.
The key never leaves the hub; without it the mapping cannot be reversed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pydicom

from hub.runtime import Hub
from hub.security.keys import secret_key_file
from imaging.deidentify import UidMapper, deidentify
from imaging.service import imaging_service
from imaging.store import open_seekable


class StudyNotFound(LookupError):
    """No stored study with this UID."""


def deidentification_key(keys_dir: Path) -> bytes:
    """The hub's de-identification HMAC key (``KEYS_DIR/deid.key``), created on first use."""
    return secret_key_file(keys_dir / "deid.key")


def default_pseudonym(key: bytes, organization: str, patient_id: str | None) -> str:
    """``ANON-`` and 12 hex digits of an HMAC of the hospital and Patient ID."""
    digest = hmac.new(key, f"{organization}|{patient_id or ''}".encode(), hashlib.sha256)
    return "ANON-" + digest.hexdigest()[:12].upper()


async def deidentified_study(
    hub: Hub, study_uid: str, *, pseudonym: str | None = None, keep_dates: bool = False
) -> AsyncIterator[tuple[str, bytes]]:
    """Each instance of the study, de-identified, as (file name, Part 10 bytes).

    Raises StudyNotFound, and ``imaging.deidentify.BurnedInAnnotation`` (before anything is
    yielded for that instance) for an instance that says its pixels carry identifying text.
    """
    service = imaging_service(hub)
    async with hub.database.connection() as conn:
        study = await conn.fetchrow(
            "SELECT organization, patient_id FROM dicom_study WHERE study_uid = $1", study_uid
        )
        if study is None:
            raise StudyNotFound(study_uid)
        rows = await conn.fetch(
            "SELECT i.sop_instance_uid, i.object_key FROM dicom_instance i"
            " JOIN dicom_series s USING (series_uid) WHERE i.study_uid = $1"
            " ORDER BY s.series_number NULLS LAST, i.series_uid, i.instance_number NULLS LAST,"
            " i.sop_instance_uid",
            study_uid,
        )
    key = deidentification_key(hub.settings.resolved_keys_dir)
    mapper = UidMapper(key)
    name = pseudonym or default_pseudonym(key, study["organization"], study["patient_id"])
    for row in rows:

        def one(object_key: str = row["object_key"]) -> tuple[str, bytes]:
            with open_seekable(service.store, object_key) as source:
                dataset = pydicom.dcmread(source)
            clean = deidentify(
                dataset, uid_map=mapper, patient_pseudonym=name, keep_dates=keep_dates
            )
            out = io.BytesIO()
            clean.save_as(out, enforce_file_format=True)
            return f"{clean.SOPInstanceUID}.dcm", out.getvalue()

        yield await asyncio.to_thread(one)
