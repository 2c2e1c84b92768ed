"""FHIR store, search indexes, API clients and the audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from hub.storage.migrate import execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
-- Current version of every resource: read is one primary-key lookup on (res_type, res_id).
CREATE TABLE resource (
    pk            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    res_type      text        NOT NULL,
    res_id        text        NOT NULL,
    version_id    integer     NOT NULL,
    last_updated  timestamptz NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    owner_org     text,
    content       text        NOT NULL,
    CONSTRAINT resource_type_id UNIQUE (res_type, res_id)
);
CREATE INDEX resource_type_updated ON resource (res_type, last_updated, pk) WHERE NOT deleted;

-- Every version ever written, including the current one and deletions.
CREATE TABLE resource_version (
    pk            bigint      NOT NULL REFERENCES resource (pk),
    version_id    integer     NOT NULL,
    res_type      text        NOT NULL,
    res_id        text        NOT NULL,
    last_updated  timestamptz NOT NULL,
    method        text        NOT NULL,
    deleted       boolean     NOT NULL DEFAULT false,
    author_client text,
    author_org    text,
    request_id    text,
    content       text,
    PRIMARY KEY (pk, version_id)
);
CREATE INDEX resource_version_type_updated ON resource_version (res_type, last_updated);
CREATE INDEX resource_version_updated ON resource_version (last_updated);

-- Search indexes, one table per search-parameter type. Rows are replaced in the same
-- transaction as the resource version they describe.
CREATE TABLE idx_token (
    pk bigint NOT NULL, res_type text NOT NULL, param text NOT NULL,
    system text, code text, display text
);
CREATE INDEX idx_token_lookup ON idx_token (res_type, param, code, system);
CREATE INDEX idx_token_pk ON idx_token (pk);

CREATE TABLE idx_string (
    pk bigint NOT NULL, res_type text NOT NULL, param text NOT NULL,
    value_norm text NOT NULL, value text NOT NULL
);
CREATE INDEX idx_string_lookup ON idx_string (res_type, param, value_norm text_pattern_ops);
CREATE INDEX idx_string_pk ON idx_string (pk);

CREATE TABLE idx_date (
    pk bigint NOT NULL, res_type text NOT NULL, param text NOT NULL,
    low timestamptz NOT NULL, high timestamptz NOT NULL
);
CREATE INDEX idx_date_lookup ON idx_date (res_type, param, low, high);
CREATE INDEX idx_date_pk ON idx_date (pk);

CREATE TABLE idx_reference (
    pk bigint NOT NULL, res_type text NOT NULL, param text NOT NULL,
    target_type text, target_id text, url text
);
CREATE INDEX idx_reference_target ON idx_reference (target_id, target_type, param, res_type);
CREATE INDEX idx_reference_pk ON idx_reference (pk);

CREATE TABLE idx_quantity (
    pk bigint NOT NULL, res_type text NOT NULL, param text NOT NULL,
    value numeric NOT NULL, system text, code text
);
CREATE INDEX idx_quantity_lookup ON idx_quantity (res_type, param, value);
CREATE INDEX idx_quantity_pk ON idx_quantity (pk);

CREATE TABLE idx_uri (
    pk bigint NOT NULL, res_type text NOT NULL, param text NOT NULL, uri text NOT NULL
);
CREATE INDEX idx_uri_lookup ON idx_uri (res_type, param, uri);
CREATE INDEX idx_uri_pk ON idx_uri (pk);

-- Registered API clients (OAuth 2.0 client credentials). Secrets are scrypt hashes.
CREATE TABLE api_client (
    client_id     text PRIMARY KEY,
    name          text        NOT NULL,
    kind          text        NOT NULL
                  CHECK (kind IN ('hospital', 'doctor', 'consultant', 'admin')),
    organization  text        NOT NULL,
    scopes        text        NOT NULL,
    secret_hash   text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

-- The audit log. Each writer process appends to its own hash chain (audit_chain); every row's
-- MAC covers the previous row's MAC, keyed with a secret that is not in the database.
CREATE TABLE audit_chain (
    chain_id      text PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    genesis_mac   text        NOT NULL,
    last_seq      bigint      NOT NULL DEFAULT 0,
    last_mac      text        NOT NULL,
    head_mac      text        NOT NULL
);

CREATE TABLE audit_log (
    chain_id      text        NOT NULL REFERENCES audit_chain (chain_id),
    seq           bigint      NOT NULL,
    recorded      timestamptz NOT NULL,
    action        text        NOT NULL,
    interaction   text        NOT NULL,
    outcome       text        NOT NULL,
    status        integer     NOT NULL,
    client_id     text,
    client_kind   text,
    organization  text,
    source_ip     text,
    request_id    text,
    patients      text[]      NOT NULL DEFAULT '{}',
    entities      text[]      NOT NULL DEFAULT '{}',
    query         text,
    detail        text,
    mac           text        NOT NULL,
    PRIMARY KEY (chain_id, seq)
);
CREATE INDEX audit_log_recorded ON audit_log (recorded);
CREATE INDEX audit_log_patients ON audit_log USING gin (patients);
CREATE INDEX audit_log_client ON audit_log (client_id, recorded);
"""

DOWNGRADE = """
DROP TABLE audit_log; DROP TABLE audit_chain; DROP TABLE api_client;
DROP TABLE idx_uri; DROP TABLE idx_quantity; DROP TABLE idx_reference; DROP TABLE idx_date;
DROP TABLE idx_string; DROP TABLE idx_token; DROP TABLE resource_version; DROP TABLE resource;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
