"""Result ingestion: feeds registered at run time, the message log that makes replays
harmless, dead letters, code maps (local code → LOINC) and the unmapped-code worklist.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from hub.storage.migrate import execute_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
-- Feeds registered with `yijian feeds add` (feeds from YAML files are not stored).
CREATE TABLE ingest_feed (
    feed_id      text        PRIMARY KEY,
    config       jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Every message accepted or answered with AE, by the sender's control id (MSH-10): a
-- replay is answered with the stored response and not processed again. Written in the
-- same transaction as the message's resources.
CREATE TABLE ingest_message (
    feed_id      text        NOT NULL,
    control_id   text        NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    channel      text        NOT NULL,
    digest       bytea       NOT NULL,
    ack_code     text        NOT NULL CHECK (ack_code IN ('AA', 'AE', 'AR')),
    response     bytea       NOT NULL,
    resources    integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (feed_id, control_id)
);
CREATE INDEX ingest_message_received ON ingest_message (received_at);

-- What could not be accepted, with the raw bytes, for operators to inspect and replay.
CREATE TABLE dead_letter (
    id           bigserial   PRIMARY KEY,
    received_at  timestamptz NOT NULL DEFAULT now(),
    feed_id      text,
    channel      text        NOT NULL,
    format       text        NOT NULL DEFAULT 'hl7v2',
    peer         text,
    control_id   text,
    ack_code     text        NOT NULL CHECK (ack_code IN ('AE', 'AR')),
    error        text        NOT NULL,
    location     text,
    payload      bytea       NOT NULL,
    status       text        NOT NULL DEFAULT 'open'
                 CHECK (status IN ('open', 'replayed', 'discarded')),
    attempts     integer     NOT NULL DEFAULT 0,
    resolved_at  timestamptz
);
CREATE INDEX dead_letter_open ON dead_letter (received_at) WHERE status = 'open';

-- Code maps: a hospital code system's local codes → LOINC (+ UCUM unit, catalogue item).
-- Exchanged as FHIR ConceptMaps; stored as rows for a lookup per code.
CREATE TABLE code_mapping (
    source_system  text        NOT NULL,
    local_code     text        NOT NULL,
    local_display  text        NOT NULL DEFAULT '',
    target_system  text        NOT NULL,
    target_code    text        NOT NULL,
    target_display text        NOT NULL DEFAULT '',
    unit           text,
    catalogue      text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    updated_by     text,
    PRIMARY KEY (source_system, local_code)
);

-- The operators' worklist: local codes seen without a mapping, with how often.
CREATE TABLE unmapped_code (
    source_system  text        NOT NULL,
    local_code     text        NOT NULL,
    organization   text        NOT NULL,
    local_display  text        NOT NULL DEFAULT '',
    unit           text        NOT NULL DEFAULT '',
    occurrences    bigint      NOT NULL DEFAULT 0,
    first_seen     timestamptz NOT NULL DEFAULT now(),
    last_seen      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_system, local_code)
);

-- Per feed and day, for operators (refreshed by the `statistics` background task).
CREATE TABLE ingest_statistics (
    day          date        NOT NULL,
    feed_id      text        NOT NULL,
    messages     bigint      NOT NULL DEFAULT 0,
    resources    bigint      NOT NULL DEFAULT 0,
    errors       bigint      NOT NULL DEFAULT 0,
    dead_letters bigint      NOT NULL DEFAULT 0,
    refreshed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, feed_id)
);
"""

DOWNGRADE = """
DROP TABLE ingest_statistics; DROP TABLE unmapped_code; DROP TABLE code_mapping;
DROP TABLE dead_letter; DROP TABLE ingest_message; DROP TABLE ingest_feed;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
