"""Web accounts: people who sign in to the workstation (doctors, consultants, admins).

Passwords are hashed with scrypt (N=2^15, r=8, p=1, 16-byte salt, 32-byte key), stored as
``scrypt$32768$8$1$<salt>$<hash>`` and checked in constant time; hashing runs in a thread so
the event loop keeps serving others. Five failed logins in a row lock an account for fifteen
minutes. A TOTP secret is stored sealed (AES-GCM with the hub's identifier key ring, the
username as associated data), never in clear.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from hub.identity.protection import IdentifierProtection
from hub.security.principals import ClientKind, Principal

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024  # N=2^15, r=8 needs 32 MiB, more than hashlib's default
MIN_PASSWORD_LENGTH = 10
MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
ROLES = (ClientKind.DOCTOR, ClientKind.CONSULTANT, ClientKind.ADMIN)
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,99}$")
TOTP_SEAL_SYSTEM = "urn:yijian:web-user-totp:"  # + username: the envelope's associated data


class AccountError(ValueError):
    """An account cannot be created or changed as asked (the message says why)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=SCRYPT_MAXMEM
    )


def hash_password_sync(password: str) -> str:
    salt = os.urandom(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password_sync(password: str, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; with no stored hash a dummy hash is computed
    anyway, so an unknown user takes as long as a known one."""
    if not stored:
        _scrypt(password, b"\0" * 16, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
        return hmac.compare_digest(candidate, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


async def hash_password(password: str) -> str:
    check_password_strength(password)
    return await asyncio.to_thread(hash_password_sync, password)


async def verify_password(password: str, stored: str | None) -> bool:
    return await asyncio.to_thread(verify_password_sync, password, stored)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def normalize_username(username: str) -> str:
    name = username.strip().lower()
    if not USERNAME.match(name):
        raise AccountError("a username is 1-100 characters: lower-case letters, digits and . _ @ -")
    return name


def seal_totp_secret(protection: IdentifierProtection, username: str, secret: str) -> str:
    """The TOTP secret as an AES-GCM envelope bound to its user (the hub's identifier keys)."""
    return protection.encrypt(TOTP_SEAL_SYSTEM + username, secret)


def open_totp_secret(protection: IdentifierProtection, username: str, sealed: str) -> str:
    return protection.decrypt(TOTP_SEAL_SYSTEM + username, sealed)


def scopes_for(role: ClientKind) -> frozenset[str]:
    """The SMART scopes a web user acts with: admins read and write, others read."""
    return frozenset({"user/*.cruds"}) if role == ClientKind.ADMIN else frozenset({"user/*.rs"})


@dataclass(frozen=True)
class WebAccount:
    """One ``web_user`` row."""

    username: str
    display_name: str
    role: ClientKind
    organization: str
    password_hash: str | None
    totp_secret: str | None  # sealed
    totp_enabled: bool
    totp_last_step: int | None
    oidc_issuer: str | None
    oidc_subject: str | None
    active: bool
    failed_logins: int
    locked_until: datetime | None
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> WebAccount:
        values: dict[str, Any] = dict(row)
        values["role"] = ClientKind(values["role"])
        return cls(**values)

    @property
    def principal(self) -> Principal:
        return principal_of(self.username, self.display_name, self.role, self.organization)

    def locked(self, now: datetime) -> bool:
        return self.locked_until is not None and self.locked_until > now

    def public(self) -> dict[str, Any]:
        """What ``yijian users list --json`` shows (no hashes, no secrets)."""
        return {
            "username": self.username,
            "display_name": self.display_name,
            "role": str(self.role),
            "organization": self.organization,
            "password": self.password_hash is not None,
            "totp": self.totp_enabled,
            "oidc": f"{self.oidc_issuer} {self.oidc_subject}" if self.oidc_issuer else None,
            "active": self.active,
            "locked_until": self.locked_until.isoformat() if self.locked_until else None,
            "created": self.created_at.isoformat(),
            "last_login": self.last_login_at.isoformat() if self.last_login_at else None,
        }


def principal_of(
    username: str, display_name: str, role: ClientKind, organization: str
) -> Principal:
    """The principal a web user acts as: services treat it exactly like an API client's."""
    return Principal(f"user:{username}", display_name, role, organization, scopes_for(role))


_COLUMNS = (
    "username, display_name, role, organization, password_hash, totp_secret, totp_enabled,"
    " totp_last_step, oidc_issuer, oidc_subject, active, failed_logins, locked_until,"
    " created_at, last_login_at"
)


class AccountRepository:
    """The ``web_user`` table on one connection."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def get(self, username: str) -> WebAccount | None:
        row = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM web_user WHERE username = $1", username.strip().lower()
        )
        return WebAccount.from_row(row) if row else None

    async def by_oidc(self, issuer: str, subject: str) -> WebAccount | None:
        row = await self.conn.fetchrow(
            f"SELECT {_COLUMNS} FROM web_user WHERE oidc_issuer = $1 AND oidc_subject = $2",
            issuer,
            subject,
        )
        return WebAccount.from_row(row) if row else None

    async def list(self) -> list[WebAccount]:
        rows = await self.conn.fetch(f"SELECT {_COLUMNS} FROM web_user ORDER BY username")
        return [WebAccount.from_row(row) for row in rows]

    async def organization_exists(self, organization: str) -> bool:
        return bool(
            await self.conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM resource WHERE res_type = 'Organization'"
                " AND res_id = $1 AND NOT deleted)",
                organization,
            )
        )

    async def create(
        self,
        username: str,
        display_name: str,
        role: ClientKind,
        organization: str,
        password_hash: str | None,
        oidc: tuple[str, str] | None = None,
    ) -> WebAccount:
        if role not in ROLES:
            raise AccountError(f"a web user's role is one of {', '.join(map(str, ROLES))}")
        if not display_name.strip():
            raise AccountError("a web user needs a name")
        if not await self.organization_exists(organization):
            raise AccountError(f"no Organization {organization!r}")
        try:
            row = await self.conn.fetchrow(
                f"INSERT INTO web_user (username, display_name, role, organization,"
                f" password_hash, oidc_issuer, oidc_subject) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                f" RETURNING {_COLUMNS}",
                normalize_username(username),
                display_name.strip(),
                str(role),
                organization,
                password_hash,
                oidc[0] if oidc else None,
                oidc[1] if oidc else None,
            )
        except asyncpg.UniqueViolationError:
            raise AccountError(f"web user {username!r} exists already") from None
        return WebAccount.from_row(row)

    async def link_oidc(self, username: str, issuer: str, subject: str) -> None:
        await self.conn.execute(
            "UPDATE web_user SET oidc_issuer = $2, oidc_subject = $3 WHERE username = $1",
            username,
            issuer,
            subject,
        )

    async def set_password(self, username: str, password_hash: str) -> bool:
        status = await self.conn.execute(
            "UPDATE web_user SET password_hash = $2, failed_logins = 0, locked_until = NULL"
            " WHERE username = $1",
            username,
            password_hash,
        )
        return status.endswith(" 1")

    async def set_active(self, username: str, active: bool) -> bool:
        status = await self.conn.execute(
            "UPDATE web_user SET active = $2 WHERE username = $1", username, active
        )
        return status.endswith(" 1")

    async def set_totp(self, username: str, sealed_secret: str | None, enabled: bool) -> bool:
        status = await self.conn.execute(
            "UPDATE web_user SET totp_secret = $2, totp_enabled = $3, totp_last_step = NULL"
            " WHERE username = $1",
            username,
            sealed_secret,
            enabled,
        )
        return status.endswith(" 1")

    async def use_totp_step(self, username: str, step: int) -> bool:
        """Record ``step`` as used; False when it (or a later one) was used already."""
        status = await self.conn.execute(
            "UPDATE web_user SET totp_last_step = $2 WHERE username = $1"
            " AND (totp_last_step IS NULL OR totp_last_step < $2)",
            username,
            step,
        )
        return status.endswith(" 1")

    async def record_failure(self, username: str) -> None:
        """Count a failed login; the fifth in a row locks the account for ``LOCKOUT``."""
        await self.conn.execute(
            "UPDATE web_user SET failed_logins = failed_logins + 1,"
            " locked_until = CASE WHEN failed_logins + 1 >= $2 THEN now() + $3"
            " ELSE locked_until END WHERE username = $1",
            username,
            MAX_FAILED_LOGINS,
            LOCKOUT,
        )

    async def record_success(self, username: str) -> None:
        await self.conn.execute(
            "UPDATE web_user SET failed_logins = 0, locked_until = NULL, last_login_at = now()"
            " WHERE username = $1",
            username,
        )
