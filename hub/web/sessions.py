"""Web sessions: a random cookie value in the browser, its SHA-256 in ``web_session``.

A session ends after ``web_session_idle_minutes`` without use, ``web_session_absolute_hours``
after login, at logout (the row is deleted) or when its user is disabled. Every login issues
a new cookie value (no fixation); a session waiting for its TOTP code (``mfa_pending``) is
not a login and is replaced by a new one once the code is right.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
from starlette.responses import Response

from hub.security.principals import ClientKind
from hub.settings import Settings

SESSION_COOKIE = "yijian_session"
MFA_PENDING_LIFETIME = timedelta(minutes=5)

# The live session of a cookie, and its last use moved to now — written at most every 30
# seconds, so a page with many htmx requests does not rewrite the row for each of them.
_TOUCH = """
WITH live AS (
    SELECT s.id_hash, s.username, u.display_name, u.role, u.organization, s.csrf_token,
           s.mfa_pending, s.lang, s.last_seen_at
    FROM web_session s JOIN web_user u ON u.username = s.username
    WHERE s.id_hash = $1 AND u.active AND s.expires_at > now()
      AND s.last_seen_at > now() - $2::interval
), touched AS (
    UPDATE web_session SET last_seen_at = now()
    WHERE id_hash = (SELECT id_hash FROM live WHERE last_seen_at < now() - interval '30 seconds')
)
SELECT username, display_name, role, organization, csrf_token, mfa_pending, lang FROM live
"""


def session_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class SessionRecord:
    """A live session joined with its (active) user."""

    session_id: str  # hex of the hash: names the session in logs, never the cookie itself
    username: str
    display_name: str
    role: ClientKind
    organization: str
    csrf_token: str
    mfa_pending: bool
    lang: str | None


@dataclass(frozen=True)
class NewSession:
    token: str  # the cookie value (shown once, to the browser)
    csrf_token: str


class SessionStore:
    """The ``web_session`` table on one connection, with this deployment's timeouts."""

    def __init__(self, conn: asyncpg.Connection, settings: Settings):
        self.conn = conn
        self.idle = timedelta(minutes=settings.web_session_idle_minutes)
        self.absolute = timedelta(hours=settings.web_session_absolute_hours)

    async def open(
        self, username: str, *, mfa_pending: bool = False, lang: str | None = None
    ) -> NewSession:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        lifetime = MFA_PENDING_LIFETIME if mfa_pending else self.absolute
        await self.conn.execute(
            "INSERT INTO web_session (id_hash, username, csrf_token, expires_at, mfa_pending,"
            " lang) VALUES ($1, $2, $3, now() + $4, $5, $6)",
            session_hash(token),
            username,
            csrf,
            lifetime,
            mfa_pending,
            lang,
        )
        return NewSession(token, csrf)

    async def touch(self, token: str) -> SessionRecord | None:
        """The live session of a cookie value, marked as used (see ``_TOUCH``); None when none
        (unknown, idle too long, past its absolute limit, or its user disabled)."""
        row = await self.conn.fetchrow(_TOUCH, session_hash(token), self.idle)
        if row is None:
            return None
        return SessionRecord(
            session_hash(token).hex(),
            row["username"],
            row["display_name"],
            ClientKind(row["role"]),
            row["organization"],
            row["csrf_token"],
            row["mfa_pending"],
            row["lang"],
        )

    async def close(self, token: str) -> None:
        await self.conn.execute("DELETE FROM web_session WHERE id_hash = $1", session_hash(token))

    async def close_all(self, username: str) -> int:
        """End every session of a user (disabled, password reset)."""
        status = await self.conn.execute("DELETE FROM web_session WHERE username = $1", username)
        return int(status.split()[-1])

    async def purge(self) -> None:
        """Delete sessions that can no longer be used."""
        await self.conn.execute(
            "DELETE FROM web_session WHERE expires_at <= now()"
            " OR last_seen_at <= now() - $1::interval",
            self.idle,
        )


def set_session_cookie(response: Response, token: str, settings: Settings) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.web_session_absolute_hours * 3600,
        path="/",
        secure=settings.web_cookie_secure,
        httponly=True,
        samesite="lax",
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=settings.web_cookie_secure, httponly=True, samesite="lax"
    )
