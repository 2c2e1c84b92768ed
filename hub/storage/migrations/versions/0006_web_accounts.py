"""The web workstation's people: accounts (password, TOTP, OIDC link, lockout) and sessions.

A ``web_user`` signs in at ``/login`` with a password (scrypt) and an optional TOTP code, or
through a hospital's OpenID Connect provider (linked by issuer and subject). A ``web_session``
row stands behind each browser cookie; only the SHA-256 of the cookie value is stored, so a
database dump cannot be replayed as a session.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from hub.storage.migrate import execute_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE web_user (
    username        text        PRIMARY KEY CHECK (username = lower(username) AND username <> ''),
    display_name    text        NOT NULL,
    role            text        NOT NULL CHECK (role IN ('doctor', 'consultant', 'admin')),
    organization    text        NOT NULL,            -- Organization resource id
    password_hash   text,                            -- scrypt$N$r$p$salt$hash (NULL: SSO only)
    totp_secret     text,                            -- sealed (AES-GCM envelope), never plain
    totp_enabled    boolean     NOT NULL DEFAULT false,
    totp_last_step  bigint,                          -- the last accepted step (no reuse)
    oidc_issuer     text,
    oidc_subject    text,
    active          boolean     NOT NULL DEFAULT true,
    failed_logins   integer     NOT NULL DEFAULT 0,
    locked_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_login_at   timestamptz,
    UNIQUE (oidc_issuer, oidc_subject),
    CHECK ((oidc_issuer IS NULL) = (oidc_subject IS NULL))
);

CREATE TABLE web_session (
    id_hash       bytea       PRIMARY KEY,           -- SHA-256 of the cookie value
    username      text        NOT NULL REFERENCES web_user (username) ON DELETE CASCADE,
    csrf_token    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,              -- the absolute limit
    mfa_pending   boolean     NOT NULL DEFAULT false,
    lang          text
);
CREATE INDEX web_session_username ON web_session (username);
CREATE INDEX web_session_expires ON web_session (expires_at);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS web_session;
DROP TABLE IF EXISTS web_user;
"""


def upgrade() -> None:
    execute_script(UPGRADE)


def downgrade() -> None:
    execute_script(DOWNGRADE)
