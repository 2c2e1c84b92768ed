"""OpenID Connect single sign-on for hospitals with their own identity provider.

Each provider is configuration (``YIJIAN_OIDC_PROVIDERS``). The flow is the authorization
code flow with PKCE (S256), ``state`` and ``nonce``:

1. ``/login/oidc/{name}`` keeps the flow's secrets in a short-lived cookie, sealed with
   AES-GCM under a key of the hub's (``KEYS_DIR/web-oidc.key``) so the browser can neither
   read nor change them, and sends the browser to the provider's authorization endpoint;
2. the provider sends the browser back to ``/login/oidc/{name}/callback`` with a code; the
   state must match the cookie's, the code is exchanged at the token endpoint with the PKCE
   verifier, and the ID token is verified with authlib (signature against the provider's
   JWKS, issuer, audience, expiry, nonce, at_hash);
3. the person is the ``web_user`` linked to (issuer, subject); failing that, the account
   named by ``preferred_username`` when it is linked to nobody and works at the provider's
   organization (it is linked now); failing that, a new account with the provider's default
   role and organization.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hub.security.keys import secret_key_file
from hub.security.principals import ClientKind
from hub.settings import OidcProvider, Settings
from hub.web.accounts import USERNAME, AccountError, AccountRepository, WebAccount
from hub.web.dependencies import web_hub

FLOW_COOKIE = "yijian_oidc"
FLOW_PATH = "/login/oidc"
FLOW_SECONDS = 600
METADATA_SECONDS = 3600
HTTP_TIMEOUT = 10.0
CLOCK_LEEWAY_SECONDS = 60

FLOW_INVALID = "单点登录流程无效或已过期，请重新登录。"
PROVIDER_FAILED = "统一身份认证未能完成登录，请重试或使用账户密码登录。"
ACCOUNT_DISABLED = "此账户已停用，请联系管理员。"


@dataclass(frozen=True)
class Flow:
    """What the callback must check: the provider, state, nonce, PKCE verifier, next page."""

    provider: str
    state: str
    nonce: str
    verifier: str
    next_url: str
    expires: float


_metadata: dict[str, tuple[float, dict[str, Any]]] = {}


def provider_named(settings: Settings, name: str) -> OidcProvider:
    for provider in settings.oidc_providers:
        if provider.name == name:
            return provider
    raise HTTPException(404, "没有这个统一身份认证提供方。")


async def _get_json(url: str) -> dict[str, Any]:
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            response = await client.get(url, headers={"Accept": "application/json"})
        response.raise_for_status()
        document = response.json()
    except (httpx.HTTPError, ValueError):
        raise HTTPException(502, PROVIDER_FAILED) from None
    if not isinstance(document, dict):
        raise HTTPException(502, PROVIDER_FAILED)
    return document


async def provider_metadata(provider: OidcProvider, refresh: bool = False) -> dict[str, Any]:
    """The provider's discovery document (cached for an hour)."""
    cached = _metadata.get(provider.server_metadata_url)
    if cached and not refresh and time.monotonic() - cached[0] < METADATA_SECONDS:
        return cached[1]
    document = await _get_json(provider.server_metadata_url)
    for required in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
        if not isinstance(document.get(required), str):
            raise HTTPException(502, PROVIDER_FAILED)
    _metadata[provider.server_metadata_url] = (time.monotonic(), document)
    return document


# -- the flow cookie -------------------------------------------------------------------------


def _flow_cipher(settings: Settings) -> AESGCM:
    return AESGCM(secret_key_file(settings.resolved_keys_dir / "web-oidc.key"))


def seal_flow(flow: Flow, settings: Settings) -> str:
    nonce = secrets.token_bytes(12)
    plain = json.dumps(flow.__dict__, separators=(",", ":")).encode()
    sealed = _flow_cipher(settings).encrypt(nonce, plain, FLOW_COOKIE.encode())
    return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")


def open_flow(value: str | None, settings: Settings) -> Flow | None:
    """The flow of a cookie value, or None when missing, altered or expired."""
    if not value:
        return None
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        plain = _flow_cipher(settings).decrypt(data[:12], data[12:], FLOW_COOKIE.encode())
        flow = Flow(**json.loads(plain))
    except (ValueError, TypeError, InvalidTag):
        return None
    return flow if flow.expires > time.time() else None


def clear_flow_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        FLOW_COOKIE,
        path=FLOW_PATH,
        secure=settings.web_cookie_secure,
        httponly=True,
        samesite="lax",
    )


def _redirect_uri(request: Request, settings: Settings, name: str) -> str:
    base = (settings.public_base_url or str(request.base_url)).rstrip("/")
    return f"{base}{FLOW_PATH}/{name}/callback"


# -- the two legs ----------------------------------------------------------------------------


async def start(request: Request, name: str, next_url: str) -> Response:
    """Redirect to the provider's authorization endpoint, with the flow cookie set."""
    settings = web_hub(request).settings
    provider = provider_named(settings, name)
    metadata = await provider_metadata(provider)
    flow = Flow(
        provider=name,
        state=secrets.token_urlsafe(24),
        nonce=secrets.token_urlsafe(24),
        verifier=secrets.token_urlsafe(48),
        next_url=next_url,
        expires=time.time() + FLOW_SECONDS,
    )
    url = add_params_to_uri(
        metadata["authorization_endpoint"],
        [
            ("response_type", "code"),
            ("client_id", provider.client_id),
            ("redirect_uri", _redirect_uri(request, settings, name)),
            ("scope", provider.scope),
            ("state", flow.state),
            ("nonce", flow.nonce),
            ("code_challenge", create_s256_code_challenge(flow.verifier)),
            ("code_challenge_method", "S256"),
        ],
    )
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        FLOW_COOKIE,
        seal_flow(flow, settings),
        max_age=FLOW_SECONDS,
        path=FLOW_PATH,
        secure=settings.web_cookie_secure,
        httponly=True,
        samesite="lax",
    )
    return response


async def finish(request: Request, name: str) -> tuple[WebAccount, str]:
    """Check the callback, redeem the code, verify the ID token and find (or make) the
    account. Returns it with the page to go to."""
    hub = web_hub(request)
    settings = hub.settings
    provider = provider_named(settings, name)
    flow = open_flow(request.cookies.get(FLOW_COOKIE), settings)
    state = request.query_params.get("state", "")
    if flow is None or flow.provider != name or not secrets.compare_digest(flow.state, state):
        raise HTTPException(400, FLOW_INVALID)
    code = request.query_params.get("code")
    if request.query_params.get("error") or not code:
        raise HTTPException(400, PROVIDER_FAILED)
    metadata = await provider_metadata(provider)
    tokens = await _redeem(provider, metadata, code, flow, _redirect_uri(request, settings, name))
    claims = await _verified_claims(provider, metadata, tokens, flow)
    async with hub.database.connection() as conn:
        account = await _account_for(AccountRepository(conn), provider, claims)
    if not account.active:
        raise HTTPException(403, ACCOUNT_DISABLED)
    return account, flow.next_url


async def _redeem(
    provider: OidcProvider, metadata: dict[str, Any], code: str, flow: Flow, redirect_uri: str
) -> dict[str, Any]:
    """The token endpoint's answer to the code (with the PKCE verifier)."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": provider.client_id,
        "code_verifier": flow.verifier,
    }
    auth: httpx.Auth | None = None
    if provider.client_secret is not None:
        secret = provider.client_secret.get_secret_value()
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_basic" in methods:
            auth = httpx.BasicAuth(provider.client_id, secret)
        else:
            form["client_secret"] = secret
    try:
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT) as client:
            response = await client.post(
                metadata["token_endpoint"],
                data=form,
                auth=auth or httpx.USE_CLIENT_DEFAULT,
                headers={"Accept": "application/json"},
            )
        tokens = response.json()
    except (httpx.HTTPError, ValueError):
        raise HTTPException(502, PROVIDER_FAILED) from None
    if response.status_code != 200 or not isinstance(tokens, dict):
        raise HTTPException(400, PROVIDER_FAILED)
    if not isinstance(tokens.get("id_token"), str):
        raise HTTPException(400, PROVIDER_FAILED)
    return tokens


async def _verified_claims(
    provider: OidcProvider, metadata: dict[str, Any], tokens: dict[str, Any], flow: Flow
) -> dict[str, Any]:
    """The ID token's claims once verified: the signature against the provider's JWKS
    (joserfc, authlib's JOSE library), then the OpenID Connect rules for a code-flow ID token
    (authlib's ``CodeIDToken``: iss, aud, exp, iat, nonce, azp, at_hash)."""
    options = {
        "iss": {"essential": True, "value": metadata["issuer"]},
        "aud": {"essential": True, "value": provider.client_id},
        "sub": {"essential": True},
    }
    params = {
        "nonce": flow.nonce,
        "client_id": provider.client_id,
        "access_token": tokens.get("access_token"),
    }
    algorithms = metadata.get("id_token_signing_alg_values_supported") or ["RS256"]
    algorithms = [alg for alg in algorithms if alg != "none"]
    try:
        keys = KeySet.import_key_set(await _get_json(metadata["jwks_uri"]))  # type: ignore[arg-type]
        token = jwt.decode(tokens["id_token"], keys, algorithms=algorithms)
        claims = CodeIDToken(token.claims, token.header, options, params)
        claims.validate(leeway=CLOCK_LEEWAY_SECONDS)
    except (JoseError, ValueError, TypeError, KeyError):
        raise HTTPException(400, PROVIDER_FAILED) from None
    return dict(claims)


def _username_from(claims: dict[str, Any], provider: OidcProvider) -> str | None:
    preferred = claims.get("preferred_username")
    if isinstance(preferred, str) and USERNAME.match(preferred.strip().lower()):
        return preferred.strip().lower()
    return None


async def _account_for(
    accounts: AccountRepository, provider: OidcProvider, claims: dict[str, Any]
) -> WebAccount:
    issuer, subject = str(claims["iss"]), str(claims["sub"])
    linked = await accounts.by_oidc(issuer, subject)
    if linked is not None:
        return linked
    preferred = _username_from(claims, provider)
    if preferred:
        existing = await accounts.get(preferred)
        if (
            existing is not None
            and existing.oidc_issuer is None
            and existing.organization == provider.organization
        ):
            await accounts.link_oidc(existing.username, issuer, subject)
            return await accounts.get(existing.username) or existing
        if existing is None:
            return await _create(accounts, preferred, provider, claims, issuer, subject)
    digest = hashlib.sha256(f"{issuer}|{subject}".encode()).hexdigest()[:12]
    fallback = re.sub(r"[^a-z0-9._-]", "-", provider.name.lower())[:40] + "." + digest
    return await _create(accounts, fallback, provider, claims, issuer, subject)


async def _create(
    accounts: AccountRepository,
    username: str,
    provider: OidcProvider,
    claims: dict[str, Any],
    issuer: str,
    subject: str,
) -> WebAccount:
    name = claims.get("name") or claims.get("preferred_username") or username
    try:
        return await accounts.create(
            username,
            str(name)[:200],
            ClientKind(provider.default_role),
            provider.organization,
            None,
            oidc=(issuer, subject),
        )
    except AccountError:  # a concurrent first login of the same person: it is linked now
        linked = await accounts.by_oidc(issuer, subject)
        if linked is None:
            raise HTTPException(409, PROVIDER_FAILED) from None
        return linked
