"""Access by purpose: the grants that let a doctor or consultant read one patient's record,
and telemedicine consultations.

A grant says: this caller (API client or workstation user) may read this person's record for
this purpose until this time. Doctors get one by opening a patient in their care, by an order
(CDS Hooks, the card link, an EHR launch) or by break-glass (which needs a reason and is
reported). A consultation is a grant for a consultant, limited to what the requester shared:
a period or chosen resources. The FHIR side of a consultation (the ServiceRequest, the
patient's Consent, the reply) lives in the resource store; these rows are what enforcement reads.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23
"""

from __future__ import annotations

from hub.storage.migrate import execute_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE access_grant (
    id            uuid        PRIMARY KEY,
    client_id     text        NOT NULL,      -- API client id, or user:<username>
    organization  text        NOT NULL,      -- the caller's organization
    patient_id    text        NOT NULL,      -- any record of the person (expanded at query time)
    purpose       text        NOT NULL CHECK (purpose IN ('care', 'ordering', 'launch',
                                                          'break-glass')),
    reason        text,
    source        text        NOT NULL DEFAULT '',  -- what established it (cds, workstation...)
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    CHECK (purpose <> 'break-glass' OR length(btrim(coalesce(reason, ''))) >= 4)
);
CREATE INDEX access_grant_client ON access_grant (client_id, expires_at DESC);
CREATE INDEX access_grant_break_glass ON access_grant (created_at DESC)
    WHERE purpose = 'break-glass';

CREATE TABLE consult (
    id               uuid        PRIMARY KEY,
    patient_id       text        NOT NULL,
    requester        text        NOT NULL,   -- client id of the requesting doctor
    requester_name   text        NOT NULL DEFAULT '',
    requester_org    text        NOT NULL,
    consultant       text        NOT NULL,   -- client id of the consultant
    consultant_name  text        NOT NULL DEFAULT '',
    consultant_org   text        NOT NULL,
    question         text        NOT NULL,
    period_start     timestamptz,            -- scope: everything in a period ...
    period_end       timestamptz,
    items            text[],                 -- ... or these Type/id keys (expanded)
    service_request  text        NOT NULL,   -- ServiceRequest id (the consult in FHIR)
    consent          text        NOT NULL,   -- Consent id (the patient's consent)
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    revoked_at       timestamptz,
    revoked_by       text,
    reply            text,                   -- DiagnosticReport id of the consultant's reply
    replied_at       timestamptz,
    CHECK ((items IS NULL) <> (period_start IS NULL)),
    CHECK (period_start IS NULL OR period_end > period_start),
    CHECK (expires_at > created_at)
);
CREATE INDEX consult_consultant ON consult (consultant, expires_at DESC);
CREATE INDEX consult_requester ON consult (requester, created_at DESC);
CREATE INDEX consult_patient ON consult (patient_id);

-- SMART App Launch: apps that may ask a signed-in user for authorization, and the one-time
-- authorization codes issued to them (hashed).
CREATE TABLE smart_app (
    client_id      text        PRIMARY KEY,
    name           text        NOT NULL,
    redirect_uris  text[]      NOT NULL,
    secret_hash    text,                    -- NULL: a public client (PKCE alone)
    scopes         text        NOT NULL,    -- the most it may be granted
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz
);
-- The workstation is a channel of its own for reminders and decisions (statistics by source).
ALTER TABLE recognition_reminder DROP CONSTRAINT recognition_reminder_source_check,
    ADD CONSTRAINT recognition_reminder_source_check
    CHECK (source IN ('cds', 'api', 'workstation'));
ALTER TABLE recognition_decision DROP CONSTRAINT recognition_decision_source_check,
    ADD CONSTRAINT recognition_decision_source_check
    CHECK (source IN ('cds-feedback', 'api', 'workstation'));

CREATE TABLE smart_authorization (
    code_hash       bytea       PRIMARY KEY,
    client_id       text        NOT NULL,
    redirect_uri    text        NOT NULL,
    username        text        NOT NULL,
    patient_id      text,
    scope           text        NOT NULL,
    code_challenge  text        NOT NULL,
    nonce           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz
);
"""

DOWNGRADE = """
DROP TABLE smart_authorization; DROP TABLE smart_app; DROP TABLE consult; DROP TABLE access_grant;
ALTER TABLE recognition_reminder DROP CONSTRAINT recognition_reminder_source_check,
    ADD CONSTRAINT recognition_reminder_source_check CHECK (source IN ('cds', 'api'));
ALTER TABLE recognition_decision DROP CONSTRAINT recognition_decision_source_check,
    ADD CONSTRAINT recognition_decision_source_check CHECK (source IN ('cds-feedback', 'api'));
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
