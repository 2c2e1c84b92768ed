"""The DICOM index's write side: one received instance into study, series and instance rows.

``InstanceIndex.add`` runs in the caller's transaction, on an asyncpg connection, and decides
what a resent SOP Instance UID means (a repeat of the same bytes, a replacement, or a refusal
under the "keep" policy) and whether the sender may add to the study at all (a study belongs
to the hospital that sent it first). The read side (QIDO, WADO lookups) is ``imaging.qido``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, tzinfo
from typing import Any, Literal

import asyncpg
import orjson

from imaging.dataset import InstanceHeader

# DICOM statuses of refusals made here (PS3.7 Annex C).
NOT_AUTHORIZED = 0x0124
DUPLICATE_INSTANCE = 0x0111
DATASET_DOES_NOT_MATCH = 0xA900

Outcome = Literal["stored", "repeat", "replaced"]


class Refused(Exception):
    """An instance the hub will not take, with the DICOM failure status and the reason."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class Indexed:
    outcome: Outcome
    version: int
    replaced_key: str | None = None  # the object an instance replaced (kept in the history)


# Senders of one SOP Instance UID (or into one study) take turns: without it two transactions
# would both find no row and both answer success, the later one silently overwriting.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('dicom:' || $1, 0))"

_EXISTING_STUDY = """
SELECT organization, patient_id, issuer, name_search FROM dicom_study
WHERE study_uid = $1 FOR UPDATE
"""

_NAME_TOKENS = """
WITH gone AS (DELETE FROM dicom_study_name WHERE study_uid = $1)
INSERT INTO dicom_study_name (token, study_uid)
SELECT DISTINCT t, $1 FROM unnest(string_to_array($2, ' ')) AS t WHERE t <> ''
ON CONFLICT DO NOTHING
"""

_INSTANCE = """
SELECT object_key, version, study_uid, series_uid, size, transfer_syntax, received_from,
       received_at
FROM dicom_instance WHERE sop_instance_uid = $1 FOR UPDATE
"""

_STUDY = """
INSERT INTO dicom_study (study_uid, organization, patient_id, issuer, patient_name,
                         name_search, birth_date, sex, study_date, study_time, started,
                         accession, study_id, description, referring, modalities)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
        CASE WHEN $16::text IS NULL THEN '{}'::text[] ELSE ARRAY[$16::text] END)
ON CONFLICT (study_uid) DO UPDATE SET
    patient_name = COALESCE(EXCLUDED.patient_name, dicom_study.patient_name),
    name_search = CASE WHEN EXCLUDED.patient_name IS NULL THEN dicom_study.name_search
                       ELSE EXCLUDED.name_search END,
    birth_date  = COALESCE(EXCLUDED.birth_date, dicom_study.birth_date),
    sex         = COALESCE(EXCLUDED.sex, dicom_study.sex),
    study_date  = COALESCE(EXCLUDED.study_date, dicom_study.study_date),
    study_time  = COALESCE(EXCLUDED.study_time, dicom_study.study_time),
    started     = COALESCE(EXCLUDED.started, dicom_study.started),
    accession   = COALESCE(EXCLUDED.accession, dicom_study.accession),
    study_id    = COALESCE(EXCLUDED.study_id, dicom_study.study_id),
    description = COALESCE(EXCLUDED.description, dicom_study.description),
    referring   = COALESCE(EXCLUDED.referring, dicom_study.referring),
    modalities  = CASE WHEN $16::text IS NULL OR $16::text = ANY(dicom_study.modalities)
                       THEN dicom_study.modalities
                       ELSE array_append(dicom_study.modalities, $16::text) END,
    changed_at  = clock_timestamp()
WHERE dicom_study.organization = EXCLUDED.organization
RETURNING study_uid
"""

_SERIES = """
INSERT INTO dicom_series (series_uid, study_uid, modality, series_number, description,
                          body_part, laterality, started)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (series_uid) DO UPDATE SET
    modality      = COALESCE(EXCLUDED.modality, dicom_series.modality),
    series_number = COALESCE(EXCLUDED.series_number, dicom_series.series_number),
    description   = COALESCE(EXCLUDED.description, dicom_series.description),
    body_part     = COALESCE(EXCLUDED.body_part, dicom_series.body_part),
    laterality    = COALESCE(EXCLUDED.laterality, dicom_series.laterality),
    started       = COALESCE(EXCLUDED.started, dicom_series.started)
WHERE dicom_series.study_uid = EXCLUDED.study_uid
RETURNING series_uid
"""

_INSERT_INSTANCE = """
INSERT INTO dicom_instance (sop_instance_uid, series_uid, study_uid, sop_class_uid,
                            instance_number, transfer_syntax, rows, columns, frames,
                            object_key, size, version, metadata, received_from)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (sop_instance_uid) DO UPDATE SET
    series_uid = EXCLUDED.series_uid, study_uid = EXCLUDED.study_uid,
    sop_class_uid = EXCLUDED.sop_class_uid, instance_number = EXCLUDED.instance_number,
    transfer_syntax = EXCLUDED.transfer_syntax, rows = EXCLUDED.rows,
    columns = EXCLUDED.columns, frames = EXCLUDED.frames, object_key = EXCLUDED.object_key,
    size = EXCLUDED.size, version = EXCLUDED.version, metadata = EXCLUDED.metadata,
    received_from = EXCLUDED.received_from, received_at = now()
"""

_KEEP_VERSION = """
INSERT INTO dicom_instance_version (sop_instance_uid, version, object_key, size,
                                    transfer_syntax, received_from, received_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
"""


# An instance replaced into another series may leave its old series empty.
_DROP_EMPTY_SERIES = """
DELETE FROM dicom_series s WHERE s.series_uid = $1
AND NOT EXISTS (SELECT 1 FROM dicom_instance i WHERE i.series_uid = s.series_uid)
"""

_MODALITIES = """
UPDATE dicom_study SET modalities = coalesce((
    SELECT array_agg(DISTINCT modality ORDER BY modality) FROM dicom_series
    WHERE study_uid = $1 AND modality IS NOT NULL), '{}')
WHERE study_uid = $1
"""


class InstanceIndex:
    """Study, series and instance rows for received instances (one connection)."""

    def __init__(self, connection: asyncpg.Connection, zone: tzinfo) -> None:
        self.connection = connection
        self.zone = zone

    async def owner(self, study_uid: str) -> str | None:
        """The hospital a study belongs to, or None for a study not seen yet."""
        value = await self.connection.fetchval(
            "SELECT organization FROM dicom_study WHERE study_uid = $1", study_uid
        )
        return str(value) if value is not None else None

    async def add(
        self,
        header: InstanceHeader,
        *,
        organization: str,
        object_key: str,
        size: int,
        received_from: str,
        name_search: str,
        resend: Literal["replace", "keep"],
    ) -> Indexed:
        """Index one stored instance (in the caller's transaction); Refused when it may not."""
        await self.connection.execute(_LOCK, header.study_uid)
        await self.connection.execute(_LOCK, header.sop_instance_uid)
        study_row = await self.connection.fetchrow(_EXISTING_STUDY, header.study_uid)
        if study_row is not None:
            if study_row["organization"] != organization:
                raise Refused(
                    f"the study belongs to another hospital: {header.study_uid}", NOT_AUTHORIZED
                )
            if (study_row["patient_id"], study_row["issuer"]) != (
                header.patient_id,
                header.issuer_of_patient_id,
            ):
                raise Refused(
                    "the Patient ID differs from the study's other instances"
                    f" ({study_row['patient_id']!r}, this one {header.patient_id!r}): send the"
                    " study again with one patient, or correct it at the modality",
                    DATASET_DOES_NOT_MATCH,
                )
        existing = await self.connection.fetchrow(_INSTANCE, header.sop_instance_uid)
        version = 1
        replaced: str | None = None
        if existing is not None:
            if existing["object_key"] == object_key:
                return Indexed("repeat", int(existing["version"]))
            if existing["study_uid"] != header.study_uid:
                raise Refused(  # which study is not said: it may be another hospital's
                    "this SOP Instance UID is already stored in another study",
                    DATASET_DOES_NOT_MATCH,
                )
            if resend == "keep":
                raise Refused(
                    f"SOP Instance {header.sop_instance_uid} is already stored with other "
                    "content; this hub keeps the first version (resend policy 'keep')",
                    DUPLICATE_INSTANCE,
                )
            version = int(existing["version"]) + 1
            replaced = str(existing["object_key"])
        started = dicom_datetime(header.study_date, header.study_time, self.zone)
        study = await self.connection.fetchval(
            _STUDY,
            header.study_uid,
            organization,
            header.patient_id,
            header.issuer_of_patient_id,
            header.patient_name,
            name_search,
            header.birth_date,
            header.sex,
            _date(header.study_date),
            header.study_time,
            started,
            header.accession_number,
            _text(header.metadata, "00200010"),
            header.study_description,
            header.referring_physician,
            header.modality,
        )
        if study is None:
            raise Refused(
                f"the study belongs to another hospital: {header.study_uid}",
                NOT_AUTHORIZED,
            )
        if header.patient_name and (study_row is None or study_row["name_search"] != name_search):
            await self.connection.execute(_NAME_TOKENS, header.study_uid, name_search)
        series = await self.connection.fetchval(
            _SERIES,
            header.series_uid,
            header.study_uid,
            header.modality,
            header.series_number,
            header.series_description,
            header.body_part,
            _text(header.metadata, "00200060"),
            dicom_datetime(
                _text(header.metadata, "00080021"), _text(header.metadata, "00080031"), self.zone
            ),
        )
        if series is None:
            raise Refused(
                f"series {header.series_uid} belongs to another study than {header.study_uid}",
                DATASET_DOES_NOT_MATCH,
            )
        if existing is not None:
            await self.connection.execute(
                _KEEP_VERSION,
                header.sop_instance_uid,
                existing["version"],
                existing["object_key"],
                existing["size"],
                existing["transfer_syntax"],
                existing["received_from"],
                existing["received_at"],
            )
        await self.connection.execute(
            _INSERT_INSTANCE,
            header.sop_instance_uid,
            header.series_uid,
            header.study_uid,
            header.sop_class_uid,
            header.instance_number,
            header.transfer_syntax,
            header.rows,
            header.columns,
            header.frames,
            object_key,
            size,
            version,
            orjson.dumps(header.metadata).decode(),
            received_from,
        )
        if existing is not None and existing["series_uid"] != header.series_uid:
            await self.connection.execute(_DROP_EMPTY_SERIES, existing["series_uid"])
            await self.connection.execute(_MODALITIES, header.study_uid)
        return Indexed("replaced" if replaced else "stored", version, replaced)


def _text(metadata: dict[str, Any], tag: str) -> str | None:
    """A single text value from DICOM JSON (e.g. StudyID, Laterality), or None."""
    element = metadata.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not values or not isinstance(values[0], str | int | float):
        return None
    text = str(values[0]).strip()
    return text or None


def _date(value: str | None) -> date | None:
    """A DICOM DA (YYYYMMDD; the old YYYY.MM.DD too), or None when absent or invalid."""
    if not value:
        return None
    digits = value.strip().replace(".", "")
    try:
        return datetime.strptime(digits[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _time(value: str | None) -> time | None:
    """A DICOM TM (HH[MM[SS[.F]]], the old HH:MM:SS too), or None."""
    if not value:
        return None
    text = value.strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6):
        return None
    hour, minute, second = int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
    micro = int((fraction + "000000")[:6]) if fraction.isdigit() else 0
    try:
        return time(hour, minute, second, micro)
    except ValueError:
        return None


def dicom_datetime(day: str | None, clock: str | None, zone: tzinfo) -> datetime | None:
    """Study (or series) date and time as an instant in the hub's default zone."""
    on = _date(day)
    if on is None:
        return None
    return datetime.combine(on, _time(clock) or time(0), tzinfo=zone)
