"""Mutual recognition: the result facts index, the versioned catalogue, reminders shown to
doctors and their decisions, and the EHR keys that sign CDS Hooks requests.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import json
import os
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa
from alembic import op

import fhir_profiles
from hub.fhir.results import RESULT_TYPES, result_facts
from hub.storage.migrate import execute_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = """
-- One row per code of each current Observation, DiagnosticReport and ImagingStudy version
-- (hub.fhir.results), replaced with the resource's other index rows. "The newest results of
-- these codes for this person" is one range scan of idx_result_lookup.
CREATE TABLE idx_result (
    pk          bigint      NOT NULL,
    res_type    text        NOT NULL,
    patient_id  text        NOT NULL,
    system      text        NOT NULL,
    code        text        NOT NULL,
    site        text,
    effective   timestamptz,
    status      text        NOT NULL,
    performer   text,
    group_key   text,
    flags       text        NOT NULL DEFAULT ''
);
CREATE INDEX idx_result_lookup ON idx_result (patient_id, code, effective DESC NULLS LAST);
CREATE INDEX idx_result_pk ON idx_result (pk);

-- Every version of the recognition catalogue; the highest is in force.
CREATE TABLE recognition_catalogue (
    version     integer     PRIMARY KEY,
    document    jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    note        text
);

-- A reusable result shown to a doctor (a CDS card, or a workstation check), with what the
-- statistics need: who was ordering, where, what, and the price of the test not repeated.
CREATE TABLE recognition_reminder (
    id            uuid        PRIMARY KEY,
    shown_at      timestamptz NOT NULL DEFAULT now(),
    source        text        NOT NULL CHECK (source IN ('cds', 'api')),
    hook          text,
    hook_instance text,
    client_id     text,
    organization  text        NOT NULL,
    department    text,
    practitioner  text,
    patient_id    text        NOT NULL,
    order_ref     text,
    requested     text,
    item_id       text        NOT NULL,
    result_ref    text        NOT NULL,
    result_org    text,
    label         text        NOT NULL,
    price_cny     numeric(12, 2) NOT NULL DEFAULT 0,
    viewed_at     timestamptz,
    views         integer     NOT NULL DEFAULT 0
);
CREATE INDEX recognition_reminder_shown ON recognition_reminder (shown_at);
-- One reminder per draft order, item and result: an EHR's retry, or order-select followed by
-- order-sign for the same order, shows the same reminder again (statistics count it once).
CREATE UNIQUE INDEX recognition_reminder_order ON recognition_reminder
    (organization, patient_id, order_ref, item_id, result_ref) WHERE order_ref IS NOT NULL;
CREATE INDEX recognition_reminder_org ON recognition_reminder (organization, shown_at);

-- The doctor's decision on a reminder; the latest one counts. A decline needs a coded reason
-- (fhir_profiles/codesystems/recognition-decline-reason.json), and "other" needs text.
CREATE TABLE recognition_decision (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reminder_id   uuid        NOT NULL REFERENCES recognition_reminder (id),
    decided_at    timestamptz NOT NULL DEFAULT now(),
    source        text        NOT NULL CHECK (source IN ('cds-feedback', 'api')),
    outcome       text        NOT NULL CHECK (outcome IN ('accepted', 'declined')),
    reason_code   text,
    reason_text   text,
    decided_by    text,
    client_id     text,
    CONSTRAINT decline_has_reason CHECK (outcome = 'accepted' OR reason_code IS NOT NULL),
    CONSTRAINT other_has_text CHECK (
        reason_code IS DISTINCT FROM 'other' OR length(btrim(reason_text)) > 0)
);
CREATE INDEX recognition_decision_reminder ON recognition_decision (reminder_id, id DESC);

-- EHRs that sign CDS Hooks requests with their own key (JWT, CDS Hooks 2.0 "Trusting CDS
-- Clients"): the issuer and JWK Set registered for one hub client.
CREATE TABLE cds_client_key (
    issuer      text        PRIMARY KEY,
    client_id   text        NOT NULL REFERENCES api_client (client_id),
    jwks        jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- JWT ids seen, so that a captured CDS Hooks request cannot be replayed.
CREATE TABLE cds_jwt_seen (
    jti         text        PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX cds_jwt_seen_expires ON cds_jwt_seen (expires_at)
"""

DOWNGRADE = """
DROP TABLE cds_jwt_seen; DROP TABLE cds_client_key; DROP TABLE recognition_decision;
DROP TABLE recognition_reminder; DROP TABLE recognition_catalogue; DROP TABLE idx_result
"""

_BACKFILL_BATCH = 2000


def upgrade() -> None:
    execute_script(UPGRADE)
    _backfill()
    _default_catalogue()


def _default_catalogue() -> None:
    """Version 1 of the catalogue: the shipped defaults, for each region to tune."""
    # Stored as shipped (tests validate the file): this revision must not depend on how the
    # catalogue model evolves after it.
    op.get_bind().execute(
        sa.text(
            "INSERT INTO recognition_catalogue (version, document, created_by, note)"
            " VALUES (1, CAST(:document AS jsonb), 'yijian db upgrade', 'shipped defaults')"
        ),
        {"document": json.dumps(fhir_profiles.recognition_catalogue(), ensure_ascii=False)},
    )


def _backfill() -> None:
    """Index the results stored before this revision (none on a new database)."""
    connection = op.get_bind()
    zone = ZoneInfo(os.environ.get("YIJIAN_DEFAULT_TIMEZONE", "Asia/Shanghai"))
    base = os.environ.get("YIJIAN_PUBLIC_BASE_URL", "").rstrip("/")
    last = 0
    while True:
        rows = connection.execute(
            sa.text(
                "SELECT pk, res_type, content FROM resource WHERE pk > :last AND NOT deleted"
                " AND res_type = ANY(:types) ORDER BY pk LIMIT :n"
            ),
            {"last": last, "types": sorted(RESULT_TYPES), "n": _BACKFILL_BATCH},
        ).fetchall()
        if not rows:
            return
        values = [
            {"pk": pk, "res_type": res_type, **fact.__dict__}
            for pk, res_type, content in rows
            for fact in result_facts(orjson.loads(content), zone, base + "/fhir" if base else "")
        ]
        if values:
            connection.execute(
                sa.text(
                    "INSERT INTO idx_result (pk, res_type, patient_id, system, code, site,"
                    " effective, status, performer, group_key, flags) VALUES (:pk, :res_type,"
                    " :patient_id, :system, :code, :site, :effective, :status, :performer,"
                    " :group, :flags)"
                ),
                values,
            )
        last = rows[-1][0]


def downgrade() -> None:
    execute_script(DOWNGRADE)
