"""The imaging cloud: calling AE titles per hospital, and the DICOM index (study, series,
instance, earlier versions of replaced instances) that QIDO-RS and WADO-RS read.

Files themselves live in the object store (``imaging.store``); a row names its file by key.
Patient attributes are kept on the study (as DICOM has them there), with a search form of
the name (characters, pinyin, lower case) for fuzzy matching.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from hub.storage.migrate import execute_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
-- A modality or PACS that may send to the C-STORE receiver, and whose hospital it sends for.
CREATE TABLE dicom_ae (
    ae_title      text        PRIMARY KEY,
    organization  text        NOT NULL,
    description   text        NOT NULL DEFAULT '',
    hosts         text[],                     -- peer addresses allowed (NULL: any)
    identifiers   jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- Issuer of Patient ID → system
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dicom_study (
    study_uid        text        PRIMARY KEY,
    organization     text        NOT NULL,    -- the hospital that sent it: its owner
    patient_id       text,
    issuer           text,
    patient_name     text,
    name_search      text        NOT NULL DEFAULT '',
    birth_date       text,
    sex              text,
    study_date       date,
    study_time       text,
    started          timestamptz,
    accession        text,
    study_id         text,
    description      text,
    referring        text,
    modalities       text[]      NOT NULL DEFAULT '{}',
    patient_ref      text,                    -- FHIR Patient id (the hospital's record)
    imaging_study_id text,                    -- FHIR ImagingStudy id, once written
    changed_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    synced_at        timestamptz,             -- ImagingStudy written (NULL or older: pending)
    sync_error       text,                    -- why the last attempt failed (for operators)
    sync_attempted_at timestamptz,            -- when it failed (tried again later)
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dicom_study_patient ON dicom_study (patient_id);
CREATE INDEX dicom_study_accession ON dicom_study (accession);
CREATE INDEX dicom_study_date ON dicom_study (study_date DESC, study_uid);
CREATE INDEX dicom_study_org_date ON dicom_study (organization, study_date DESC, study_uid);
CREATE INDEX dicom_study_modalities ON dicom_study USING gin (modalities);
CREATE INDEX dicom_study_pending ON dicom_study (changed_at)
    WHERE synced_at IS NULL OR synced_at < changed_at;

-- The study's name_search tokens, one row each: fuzzy QIDO name matching is a prefix range
-- scan of this index whatever the number of studies (C collation: LIKE 'wang%' uses it).
CREATE TABLE dicom_study_name (
    token      text COLLATE "C" NOT NULL,
    study_uid  text NOT NULL REFERENCES dicom_study ON DELETE CASCADE,
    PRIMARY KEY (token, study_uid)
);
CREATE INDEX dicom_study_name_study ON dicom_study_name (study_uid);

CREATE TABLE dicom_series (
    series_uid     text        PRIMARY KEY,
    study_uid      text        NOT NULL REFERENCES dicom_study ON DELETE CASCADE,
    modality       text,
    series_number  integer,
    description    text,
    body_part      text,
    laterality     text,
    started        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dicom_series_study ON dicom_series (study_uid);

CREATE TABLE dicom_instance (
    sop_instance_uid text        PRIMARY KEY,
    series_uid       text        NOT NULL REFERENCES dicom_series ON DELETE CASCADE,
    study_uid        text        NOT NULL,
    sop_class_uid    text        NOT NULL,
    instance_number  integer,
    transfer_syntax  text        NOT NULL,
    rows             integer,
    columns          integer,
    frames           integer,
    object_key       text        NOT NULL,
    size             bigint      NOT NULL,
    version          integer     NOT NULL DEFAULT 1,
    metadata         text        NOT NULL,  -- DICOM JSON without bulk data, ready to serve
    received_from    text        NOT NULL,  -- calling AE title or API client id
    received_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dicom_instance_series ON dicom_instance (series_uid, instance_number);
CREATE INDEX dicom_instance_study ON dicom_instance (study_uid);

-- A refused instance, kept for an operator (its bytes in the object store) with the reason.
CREATE TABLE dicom_refused (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    organization     text,
    sender           text        NOT NULL,  -- calling AE title or API client id
    channel          text        NOT NULL,  -- dimse or stow
    peer             text,
    status           integer     NOT NULL,  -- the DICOM failure status answered
    reason           text        NOT NULL,
    sop_instance_uid text,
    study_uid        text,
    object_key       text,
    size             bigint
);
CREATE INDEX dicom_refused_received ON dicom_refused (received_at DESC);

-- An instance resent with other bytes under the "replace" policy: what it was before.
CREATE TABLE dicom_instance_version (
    sop_instance_uid text        NOT NULL,
    version          integer     NOT NULL,
    object_key       text        NOT NULL,
    size             bigint      NOT NULL,
    transfer_syntax  text        NOT NULL,
    received_from    text        NOT NULL,
    received_at      timestamptz NOT NULL,
    replaced_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sop_instance_uid, version)
);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS dicom_refused;
DROP TABLE IF EXISTS dicom_instance_version;
DROP TABLE IF EXISTS dicom_instance;
DROP TABLE IF EXISTS dicom_series;
DROP TABLE IF EXISTS dicom_study_name;
DROP TABLE IF EXISTS dicom_study;
DROP TABLE IF EXISTS dicom_ae;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
