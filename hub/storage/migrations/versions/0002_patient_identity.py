"""Patient identity: masters, links with their grade and decider, match features, the event
history of every link decision (for undo) and the operators' review queue.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from hub.storage.migrate import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
-- The hub's master Patients (the resources themselves are in `resource`, owned by no one).
CREATE TABLE patient_master (
    master_id     text        PRIMARY KEY,
    status        text        NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'retired', 'merged')),
    merged_into   text,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Each source Patient's current link to its master: the grade, the score and who decided.
CREATE TABLE patient_link (
    source_id     text        PRIMARY KEY,
    master_id     text        NOT NULL REFERENCES patient_master (master_id),
    organization  text,
    grade         text        NOT NULL CHECK (grade IN ('certain', 'probable', 'possible')),
    score         double precision,
    decided_by    text        NOT NULL,
    manual        boolean     NOT NULL DEFAULT false,
    decided_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patient_link_master ON patient_link (master_id);

-- What matching compares: demographics, blocking keys and keyed hashes of deterministic ids.
CREATE TABLE identity_features (
    source_id     text        PRIMARY KEY,
    organization  text,
    demographics  jsonb       NOT NULL,
    block_keys    text[]      NOT NULL,
    id_keys       text[]      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- fastupdate off: a pending list would be scanned by every candidate lookup as it grows.
CREATE INDEX identity_features_blocks ON identity_features USING gin (block_keys)
    WITH (fastupdate = off);
CREATE INDEX identity_features_ids ON identity_features USING gin (id_keys)
    WITH (fastupdate = off);

-- Every link decision, automatic or by an operator; an undo is itself an event.
CREATE TABLE identity_event (
    id                 bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at                 timestamptz NOT NULL DEFAULT now(),
    action             text        NOT NULL,
    source_id          text,
    master_id          text,
    previous_master_id text,
    grade              text,
    score              double precision,
    decided_by         text        NOT NULL,
    reason             text,
    undoes             bigint      REFERENCES identity_event (id),
    undone_by          bigint      REFERENCES identity_event (id),
    details            jsonb
);
CREATE INDEX identity_event_source ON identity_event (source_id, id);
CREATE INDEX identity_event_master ON identity_event (master_id, id);
CREATE INDEX identity_event_previous ON identity_event (previous_master_id, id);

-- Probable and possible matches wait here for an operator; never linked automatically.
CREATE TABLE identity_review (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_id     text        NOT NULL,
    master_id     text        NOT NULL,
    grade         text        NOT NULL,
    score         double precision NOT NULL,
    details       jsonb       NOT NULL,
    status        text        NOT NULL DEFAULT 'open'
                  CHECK (status IN ('open', 'linked', 'dismissed', 'superseded')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz,
    resolved_by   text,
    reason        text
);
CREATE UNIQUE INDEX identity_review_open ON identity_review (source_id, master_id)
    WHERE status = 'open';
CREATE INDEX identity_review_status ON identity_review (status, id);
CREATE INDEX identity_review_master ON identity_review (master_id);

-- Which identifier systems patients have ($ihe-pix answers 400/403 for systems no one uses).
CREATE INDEX idx_token_patient_system ON idx_token (system)
    WHERE res_type = 'Patient' AND param = 'identifier';

-- The patients that are one person with any of `ids`: themselves, their masters (a merged
-- master stands for the one it was merged into) and every source of those masters. Searches
-- by patient expand through this; each branch is an index lookup, never a scan.
CREATE FUNCTION patient_group(ids text[]) RETURNS SETOF text
LANGUAGE sql STABLE PARALLEL SAFE ROWS 4 AS $body$
    WITH given AS (SELECT unnest(ids) AS id),
    masters AS (
        SELECT id AS master_id FROM given
        UNION
        SELECT l.master_id FROM patient_link l JOIN given g ON l.source_id = g.id
    ),
    live AS (
        SELECT master_id FROM masters
        UNION
        SELECT m.merged_into FROM patient_master m JOIN masters x ON m.master_id = x.master_id
        WHERE m.merged_into IS NOT NULL
    )
    SELECT id FROM given
    UNION
    SELECT master_id FROM live
    UNION
    SELECT s.source_id FROM patient_link s JOIN live x ON s.master_id = x.master_id
$body$
"""

DOWNGRADE = """
DROP FUNCTION patient_group(text[]); DROP INDEX idx_token_patient_system;
DROP TABLE identity_review; DROP TABLE identity_event; DROP TABLE identity_features;
DROP TABLE patient_link; DROP TABLE patient_master;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
