"""Time-based one-time passwords (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps).

A code is accepted for the current step and one step either side (clock drift); the step it
matched is returned so the caller can refuse the same step a second time (a code seen over a
shoulder or in a log cannot be replayed).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from urllib.parse import quote, urlencode

STEP_SECONDS = 30
DIGITS = 6
DRIFT_STEPS = 1
ISSUER = "Yijian Hub"


def new_secret() -> str:
    """A random 160-bit secret in base32 (what authenticator apps take)."""
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    cleaned = secret.replace(" ", "").upper()
    return base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))


def hotp(key: bytes, counter: int, digits: int = DIGITS, digest: str = "sha1") -> str:
    """RFC 4226 HOTP of ``counter`` (dynamic truncation)."""
    mac = hmac.new(key, struct.pack(">Q", counter), getattr(hashlib, digest)).digest()
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def step_at(timestamp: float) -> int:
    return int(timestamp // STEP_SECONDS)


def code_at(secret: str, timestamp: float) -> str:
    """The code of ``secret`` (base32) at ``timestamp`` (seconds since the epoch)."""
    return hotp(_key(secret), step_at(timestamp))


def matching_step(secret: str, code: str, timestamp: float | None = None) -> int | None:
    """The step (current ±1) whose code equals ``code``, or None. Constant-time compares."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    now = step_at(time.time() if timestamp is None else timestamp)
    key = _key(secret)
    found = None
    for step in range(now - DRIFT_STEPS, now + DRIFT_STEPS + 1):
        if hmac.compare_digest(hotp(key, step), code):
            found = step
    return found


def provisioning_uri(secret: str, account: str, issuer: str = ISSUER) -> str:
    """The ``otpauth://`` URI an authenticator app scans (as a QR code) or takes as text."""
    label = quote(f"{issuer}:{account}")
    query = urlencode(
        {
            "secret": secret,
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP_SECONDS,
        }
    )
    return f"otpauth://totp/{label}?{query}"
