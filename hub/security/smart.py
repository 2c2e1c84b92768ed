"""SMART App Launch (EHR launch) as an authorization server: launch contexts, apps,
authorization codes (PKCE S256) and their exchange for an access token.

1. The EHR (a doctor or hospital client of the hub) asks ``POST /auth/launch`` for a launch
   context naming the current patient; it gets an opaque, signed, short-lived ``launch`` value
   bound to its organization, and opens the app with ``?iss=<FHIR base>&launch=<value>``.
2. The app sends the browser to ``/auth/authorize`` (scope ``launch`` …, ``aud`` = the FHIR
   base, PKCE). The user signs in to the hub (password/TOTP or the hospital's OIDC); a doctor
   of the launching organization gets a one-time code.
3. The app exchanges the code at ``/auth/token`` (``grant_type=authorization_code``, the
   verifier) for an access token acting as that user, with the launch's ``patient`` in the
   response. The exchange establishes a ``launch`` purpose of use for the patient; a token from
   a patient-level scope reads that patient only.

The workstation is itself a SMART app (client ``yijian-workstation``, built in); other apps are
registered with ``yijian smart-apps add``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from hub.security import client_secrets, scopes
from hub.security.principals import ClientKind, Principal
from hub.security.tokens import InvalidToken, TokenService

WORKSTATION_CLIENT = "yijian-workstation"
LAUNCH_PURPOSE = "smart-launch"
LAUNCH_LIFETIME = 300
CODE_LIFETIME = timedelta(seconds=120)
# What a user-facing app may be granted at most (reads only: doctors and consultants write
# nothing; the workstation's own actions go through its session).
APP_SCOPES = frozenset({"launch", "openid", "fhirUser", "patient/*.rs", "user/*.rs"})


class SmartError(Exception):
    """An OAuth error: ``error`` is the RFC 6749 code, the message its description."""

    def __init__(self, error: str, description: str, *, redirect: bool = True):
        super().__init__(description)
        self.error = error
        self.redirect = redirect  # False: never send the browser to an unverified redirect_uri


@dataclass(frozen=True)
class LaunchContext:
    patient_id: str
    organization: str  # the launching EHR's organization
    ehr_client: str
    encounter: str | None = None


@dataclass(frozen=True)
class SmartApp:
    client_id: str
    name: str
    redirect_uris: tuple[str, ...]
    secret_hash: str | None
    scopes: frozenset[str]


@dataclass(frozen=True)
class Authorization:
    """What a code stands for, once exchanged."""

    principal: Principal
    patient_id: str | None
    scope: frozenset[str]
    client_id: str
    nonce: str | None


def sign_launch(tokens: TokenService, context: LaunchContext) -> str:
    subject = orjson.dumps(
        {
            "patient": context.patient_id,
            "org": context.organization,
            "ehr": context.ehr_client,
            "encounter": context.encounter,
        }
    ).decode()
    return tokens.sign_link(subject, LAUNCH_PURPOSE, LAUNCH_LIFETIME)


def read_launch(tokens: TokenService, launch: str) -> LaunchContext:
    try:
        claims = orjson.loads(tokens.verify_link(launch, LAUNCH_PURPOSE))
    except (InvalidToken, orjson.JSONDecodeError) as error:
        raise SmartError("invalid_request", f"launch: {error}") from None
    return LaunchContext(claims["patient"], claims["org"], claims["ehr"], claims.get("encounter"))


def workstation_app(base_url: str) -> SmartApp:
    return SmartApp(
        WORKSTATION_CLIENT,
        "医检互认工作站 Yijian workstation",
        (f"{base_url}/launch/callback",),
        None,
        APP_SCOPES,
    )


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _hash(code: str) -> bytes:
    return hashlib.sha256(code.encode()).digest()


class SmartRepository:
    def __init__(self, connection: asyncpg.Connection):
        self.connection = connection

    async def app(self, client_id: str, base_url: str) -> SmartApp | None:
        if client_id == WORKSTATION_CLIENT:
            return workstation_app(base_url)
        row = await self.connection.fetchrow(
            "SELECT client_id, name, redirect_uris, secret_hash, scopes FROM smart_app "
            "WHERE client_id = $1 AND revoked_at IS NULL",
            client_id,
        )
        if row is None:
            return None
        return SmartApp(
            row["client_id"],
            row["name"],
            tuple(row["redirect_uris"]),
            row["secret_hash"],
            scopes.parse(row["scopes"]),
        )

    async def register(
        self, name: str, redirect_uris: list[str], confidential: bool
    ) -> tuple[str, str | None]:
        """A new app: its client id, and its secret (shown once) if confidential."""
        client_id = f"app-{uuid.uuid4().hex[:16]}"
        secret = client_secrets.new_secret() if confidential else None
        await self.connection.execute(
            "INSERT INTO smart_app (client_id, name, redirect_uris, secret_hash, scopes) "
            "VALUES ($1, $2, $3, $4, $5)",
            client_id,
            name,
            redirect_uris,
            client_secrets.hash_secret(secret) if secret else None,
            " ".join(sorted(APP_SCOPES)),
        )
        return client_id, secret

    async def apps(self) -> list[dict[str, Any]]:
        rows = await self.connection.fetch(
            "SELECT client_id, name, redirect_uris, secret_hash IS NOT NULL AS confidential, "
            "created_at, revoked_at FROM smart_app ORDER BY created_at"
        )
        return [dict(r) for r in rows]

    async def revoke(self, client_id: str) -> bool:
        status = await self.connection.execute(
            "UPDATE smart_app SET revoked_at = now() WHERE client_id = $1 AND revoked_at IS NULL",
            client_id,
        )
        return status.endswith(" 1")

    async def issue_code(
        self,
        app: SmartApp,
        redirect_uri: str,
        username: str,
        patient_id: str | None,
        scope: frozenset[str],
        challenge: str,
        nonce: str | None,
    ) -> str:
        code = secrets.token_urlsafe(32)
        await self.connection.execute(
            "INSERT INTO smart_authorization (code_hash, client_id, redirect_uri, username, "
            "patient_id, scope, code_challenge, nonce, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            _hash(code),
            app.client_id,
            redirect_uri,
            username,
            patient_id,
            " ".join(sorted(scope)),
            challenge,
            nonce,
            datetime.now(UTC) + CODE_LIFETIME,
        )
        return code

    async def redeem(self, code: str) -> asyncpg.Record | None:
        """The code's row, marked used (once: a second redemption finds nothing)."""
        return await self.connection.fetchrow(
            "UPDATE smart_authorization SET used_at = now() WHERE code_hash = $1 "
            "AND used_at IS NULL AND expires_at > now() RETURNING *",
            _hash(code),
        )


def verified_redirect(app: SmartApp | None, params: dict[str, str]) -> tuple[SmartApp, str]:
    """The app and its redirect_uri, both known: only then may errors go back to the app."""
    if app is None:
        raise SmartError("unauthorized_client", "unknown client_id", redirect=False)
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in app.redirect_uris:
        raise SmartError(
            "invalid_request", "redirect_uri is not registered for this app", redirect=False
        )
    return app, redirect_uri


def check_authorize(app: SmartApp, params: dict[str, str], fhir_base: str) -> frozenset[str]:
    """Validate an authorization request of a verified app; the scopes granted."""
    if params.get("response_type") != "code":
        raise SmartError("unsupported_response_type", "response_type must be code")
    if params.get("aud", "").rstrip("/") != fhir_base.rstrip("/"):
        raise SmartError("invalid_request", f"aud must be this FHIR server: {fhir_base}")
    if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
        raise SmartError("invalid_request", "PKCE with code_challenge_method=S256 is required")
    requested = scopes.parse(params.get("scope", ""))
    granted = frozenset(
        s
        for s in requested
        if s in app.scopes
        or any(s == g or (scopes.is_valid(s) and _narrower(s, g)) for g in app.scopes)
    )
    if not any(s.startswith(("patient/", "user/")) for s in granted):
        raise SmartError("invalid_scope", "ask for patient/… or user/… read scopes")
    return granted


def _narrower(scope: str, granted: str) -> bool:
    """``patient/Observation.rs`` is within ``patient/*.rs``."""
    level, _, rest = scope.partition("/")
    g_level, _, g_rest = granted.partition("/")
    if level != g_level or "." not in rest or "." not in g_rest:
        return False
    scope_type, letters = rest.split(".", 1)
    g_type, g_letters = g_rest.split(".", 1)
    letters = {"read": "rs"}.get(letters, letters)
    return g_type in ("*", scope_type) and set(letters) <= set(g_letters)


async def exchange(
    connection: asyncpg.Connection,
    form: dict[str, str],
    base_url: str,
    user_principal: Any,
) -> Authorization:
    """A code for what it stands for: checks client, redirect_uri, PKCE, expiry, one use.

    ``user_principal(username) -> Principal | None`` gives the signed-in user's principal
    (the account may have been disabled since)."""
    repository = SmartRepository(connection)
    client_id = form.get("client_id", "")
    app = await repository.app(client_id, base_url)
    if app is None:
        raise SmartError("invalid_client", "unknown client_id", redirect=False)
    if app.secret_hash is not None:
        secret = form.get("client_secret", "")
        if not secret or not await asyncio.to_thread(
            client_secrets.verify_secret, secret, app.secret_hash
        ):
            raise SmartError("invalid_client", "wrong client secret", redirect=False)
    row = await repository.redeem(form.get("code", ""))
    if row is None or row["client_id"] != client_id:
        raise SmartError("invalid_grant", "the code is unknown, used or expired", redirect=False)
    if row["redirect_uri"] != form.get("redirect_uri"):
        raise SmartError("invalid_grant", "redirect_uri differs from the authorization")
    verifier = form.get("code_verifier", "")
    if not hmac.compare_digest(s256(verifier), row["code_challenge"]):
        raise SmartError("invalid_grant", "code_verifier does not match the challenge")
    principal = await user_principal(row["username"])
    if principal is None:
        raise SmartError("invalid_grant", "the user's account is no longer active")
    granted = scopes.parse(row["scope"])
    patient = row["patient_id"]
    reads = frozenset(s for s in granted if s.startswith(("patient/", "user/")))
    bound = Principal(
        principal.client_id,
        principal.name,
        principal.kind,
        principal.organization,
        reads,
        patient if any(s.startswith("patient/") for s in reads) else None,
    )
    return Authorization(bound, patient, granted, client_id, row["nonce"])


def may_launch(principal: Principal, context: LaunchContext) -> None:
    """A launch opens the record for a doctor of the launching organization only."""
    if principal.kind != ClientKind.DOCTOR:
        raise SmartError("access_denied", "only doctors can be launched into a patient's record")
    if principal.organization != context.organization:
        raise SmartError(
            "access_denied", "the launching EHR belongs to another organization than yours"
        )
