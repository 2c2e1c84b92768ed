"""OAuth 2.0 access tokens: signed JWTs (ES256) carrying the client's identity and scopes."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict

import jwt

from hub.security.keys import ALGORITHM, KeyRing
from hub.security.principals import ClientKind, Principal

_CACHE_SIZE = 10_000
KEY_RELOAD_SECONDS = 5.0


class InvalidToken(Exception):
    """Missing, malformed, forged or expired: answered with 401."""


class TokenService:
    """Issues and verifies access tokens. Verified tokens are cached until they expire."""

    def __init__(self, keyring: KeyRing, issuer: str, lifetime: int):
        self.keyring = keyring
        self.issuer = issuer
        self.lifetime = lifetime
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._last_reload = float("-inf")

    def _may_reload(self) -> bool:
        """Re-read the key directory at most every few seconds (forged kids are cheap)."""
        now = time.monotonic()
        if now - self._last_reload < KEY_RELOAD_SECONDS:
            return False
        self._last_reload = now
        return True

    def issue(self, principal: Principal) -> tuple[str, int]:
        now = int(time.time())
        key = self.keyring.signing_key
        claims = {
            "iss": self.issuer,
            "sub": principal.client_id,
            "aud": self.issuer,
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
            "scope": " ".join(sorted(principal.scopes)),
            "client_kind": str(principal.kind),
            "organization": principal.organization,
            "name": principal.name,
        }
        if principal.patient is not None:
            claims["patient"] = principal.patient
        token = jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, self.lifetime

    def id_token(self, principal: Principal, audience: str, nonce: str | None) -> str:
        """An OpenID Connect ID token for a SMART app (``openid`` scope): who signed in."""
        now = int(time.time())
        key = self.keyring.signing_key
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": principal.client_id,
            "aud": audience,
            "iat": now,
            "exp": now + self.lifetime,
            "name": principal.name,
            "organization": principal.organization,
        }
        if nonce:
            claims["nonce"] = nonce
        return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})

    def sign_link(self, subject: str, purpose: str, lifetime: int) -> str:
        """A signed, expiring token naming ``subject`` for one ``purpose`` (a link in a CDS
        card that an EHR's browser opens without the hub's bearer token)."""
        now = int(time.time())
        key = self.keyring.signing_key
        claims = {
            "iss": self.issuer,
            "aud": f"{self.issuer}#{purpose}",
            "sub": subject,
            "iat": now,
            "exp": now + lifetime,
        }
        return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})

    def verify_link(self, token: str, purpose: str) -> str:
        """The subject of a ``sign_link`` token; InvalidToken if forged, expired or for
        another purpose."""
        try:
            kid = str(jwt.get_unverified_header(token).get("kid"))
            public_key = self.keyring.public_key(kid)
            if public_key is None and self._may_reload():
                self.keyring.reload()  # signed with a key rotated in elsewhere
                public_key = self.keyring.public_key(kid)
            if public_key is None:
                raise InvalidToken("the link was not signed by this hub")
            claims = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=f"{self.issuer}#{purpose}",
                issuer=self.issuer,
                options={"require": ["exp", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the link has expired") from None
        except jwt.InvalidTokenError as error:
            raise InvalidToken(f"the link is not valid: {error}") from None
        return str(claims["sub"])

    def verify(self, token: str) -> Principal:
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires = cached
            if time.time() < expires:
                return principal
            self._verified.pop(token, None)
            raise InvalidToken("the access token has expired")
        try:
            header = jwt.get_unverified_header(token)
            public_key = self.keyring.public_key(str(header.get("kid")))
            if public_key is None and self._may_reload():
                # a key rotated in by `yijian keys rotate` or by another host's process
                self.keyring.reload()
                public_key = self.keyring.public_key(str(header.get("kid")))
            if public_key is None:
                raise InvalidToken("the access token was not signed by this hub")
            claims = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=self.issuer,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "scope"]},
            )
            principal = Principal(
                client_id=claims["sub"],
                name=claims.get("name", ""),
                kind=ClientKind(claims["client_kind"]),
                organization=claims["organization"],
                scopes=frozenset(claims["scope"].split()),
                patient=claims.get("patient"),
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the access token has expired") from None
        except (jwt.InvalidTokenError, KeyError, ValueError) as error:
            raise InvalidToken(f"the access token is not valid: {error}") from None
        self._verified[token] = (principal, float(claims["exp"]))
        if len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal
