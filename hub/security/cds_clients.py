"""CDS Hooks clients that sign their requests (CDS Hooks 2.0, "Trusting CDS Clients").

An EHR calls the hub's CDS services with ``Authorization: Bearer <JWT>``, the JWT signed by
the EHR's own private key. The hub trusts an issuer (``iss``) once an admin registers it
against one of the hub's API clients, with the EHR's public JWK Set
(``yijian clients cds-key``). A request's JWT must then: name a registered ``iss`` and that
client as ``sub``; be signed by a key of that JWK Set (by ``kid``); be addressed (``aud``) to
the service URL called; be unexpired, with ``iat`` not in the future; and carry a ``jti``
never seen before (replays are refused). The request then runs as that hub client.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import jwt

from hub.security.clients import ClientRegistry
from hub.security.principals import Principal

ALGORITHMS = ["ES256", "ES384", "RS256", "RS384", "RS512"]  # CDS Hooks: ES384/RS384 at least
CLOCK_SKEW_SECONDS = 60
MAX_LIFETIME_SECONDS = 3600
CACHE_SECONDS = 30.0


class UntrustedClient(Exception):
    """The JWT does not prove a registered CDS client: answered with 401."""


@dataclass(frozen=True)
class Registration:
    issuer: str
    client_id: str
    jwks: dict[str, Any]


def is_hub_token(token: str, hub_issuer: str) -> bool:
    """Whether a bearer token claims to be the hub's own access token (by its ``iss``)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return True  # let the hub's verifier say what is wrong
    return claims.get("iss") == hub_issuer


def parse_jwks(text: str) -> dict[str, Any]:
    """A JWK Set (``{"keys": [...]}``) whose every key PyJWT can use; ValueError if not."""
    try:
        jwks = json.loads(text)
        keys = jwt.PyJWKSet.from_dict(jwks).keys
    except (ValueError, jwt.PyJWKSetError, jwt.InvalidKeyError) as error:
        raise ValueError(f"not a usable JWK Set: {error}") from None
    if not keys:
        raise ValueError("the JWK Set has no keys")
    if any(k.key_id is None for k in keys) and len(keys) > 1:
        raise ValueError("with more than one key, every key needs a kid")
    return dict(jwks)


class CdsClientKeys:
    """Registered issuers (cached briefly) and the verification of their JWTs."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, Registration | None]] = {}

    async def register(
        self, connection: asyncpg.Connection, client_id: str, issuer: str, jwks: dict[str, Any]
    ) -> None:
        await connection.execute(
            "INSERT INTO cds_client_key (issuer, client_id, jwks) VALUES ($1, $2, $3::jsonb) "
            "ON CONFLICT (issuer) DO UPDATE SET client_id = excluded.client_id, "
            "jwks = excluded.jwks, created_at = now()",
            issuer,
            client_id,
            json.dumps(jwks),
        )
        self._cache.pop(issuer, None)

    async def _registration(
        self, connection: asyncpg.Connection, issuer: str
    ) -> Registration | None:
        cached = self._cache.get(issuer)
        if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
        row = await connection.fetchrow(
            "SELECT client_id, jwks FROM cds_client_key WHERE issuer = $1", issuer
        )
        found = None
        if row is not None:
            jwks = row["jwks"]
            found = Registration(
                issuer, row["client_id"], json.loads(jwks) if isinstance(jwks, str) else jwks
            )
        self._cache[issuer] = (time.monotonic(), found)
        return found

    async def verify(self, connection: asyncpg.Connection, token: str, audience: str) -> Principal:
        """The hub client a CDS client's JWT proves; UntrustedClient otherwise."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.InvalidTokenError as error:
            raise UntrustedClient(f"the CDS Hooks JWT is malformed: {error}") from None
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or not issuer:
            raise UntrustedClient("the CDS Hooks JWT has no iss")
        registration = await self._registration(connection, issuer)
        if registration is None:
            raise UntrustedClient(f"issuer {issuer} is not a registered CDS client")
        key = _key(registration.jwks, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=audience,
                issuer=issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["iss", "sub", "aud", "exp", "iat", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise UntrustedClient("the CDS Hooks JWT has expired") from None
        except jwt.InvalidAudienceError:
            raise UntrustedClient(f"the CDS Hooks JWT's aud is not {audience}") from None
        except jwt.InvalidTokenError as error:
            raise UntrustedClient(f"the CDS Hooks JWT is not valid: {error}") from None
        if claims["sub"] != registration.client_id:
            raise UntrustedClient("the CDS Hooks JWT's sub is not the registered client")
        if claims["exp"] - claims["iat"] > MAX_LIFETIME_SECONDS:
            raise UntrustedClient("the CDS Hooks JWT lives longer than an hour")
        if claims["iat"] > time.time() + CLOCK_SKEW_SECONDS:
            raise UntrustedClient("the CDS Hooks JWT was issued in the future")
        fresh = await connection.fetchval(
            "WITH gone AS (DELETE FROM cds_jwt_seen WHERE expires_at < now()) "
            "INSERT INTO cds_jwt_seen (jti, expires_at) VALUES ($1, $2) "
            "ON CONFLICT (jti) DO NOTHING RETURNING 1",
            f"{issuer} {claims['jti']}",
            datetime.fromtimestamp(claims["exp"] + CLOCK_SKEW_SECONDS, UTC),
        )
        if not fresh:
            raise UntrustedClient("the CDS Hooks JWT was already used (jti replay)")
        found = await ClientRegistry(connection).get(registration.client_id)
        if found is None or found[0].revoked_at is not None:
            raise UntrustedClient("the registered client no longer exists or was revoked")
        return found[0].principal()


def _key(jwks: dict[str, Any], kid: Any) -> Any:
    keys = jwt.PyJWKSet.from_dict(jwks).keys
    if kid is not None:
        for key in keys:
            if key.key_id == kid:
                return key.key
        raise UntrustedClient(f"no registered key has kid {kid}")
    if len(keys) == 1:
        return keys[0].key
    raise UntrustedClient("the CDS Hooks JWT has no kid and the issuer has several keys")
