"""Token signing keys: ES256 key pairs in PEM files, rotated without downtime.

Keys live in ``YIJIAN_KEYS_DIR`` (default ``DATA_DIR/keys``) as ``<kid>.pem``. The newest key
signs; every key present verifies, so rotation is: add a key (``yijian keys rotate``), and
remove the old file once the tokens it signed have expired. The directory is created with
mode 0700 and the files 0600; it must not be in the database, so a dump cannot forge tokens.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ALGORITHM = "ES256"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey

    @property
    def public_jwk(self) -> dict[str, str]:
        jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": ALGORITHM}


class KeyRing:
    """The signing keys of one deployment."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.keys: list[SigningKey] = []
        self.reload()

    def reload(self) -> None:
        if not self.directory.is_dir() or not any(self.directory.glob("*.pem")):
            self.rotate()
            return
        keys = []
        for path in sorted(self.directory.glob("*.pem")):
            private = serialization.load_pem_private_key(path.read_bytes(), password=None)
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            keys.append(SigningKey(path.stem, private))
        self.keys = keys

    def rotate(self) -> SigningKey:
        """Create a new key, which becomes the signing key."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Kids sort by creation time to the microsecond, so the newest key is the last one
        # (second precision let two keys made in one second sort by their random suffix).
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"
        kid = f"{stamp}-{os.urandom(3).hex()}"
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = self.directory / f"{kid}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        self.reload()
        return self.signing_key

    @property
    def signing_key(self) -> SigningKey:
        return self.keys[-1]  # kids sort by creation time

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | None:
        for key in self.keys:
            if key.kid == kid:
                return key.private_key.public_key()
        return None

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.public_jwk for k in self.keys]}


def secret_key_file(path: Path) -> bytes:
    """A 32-byte secret kept in ``path`` (hex, mode 0600), created on first use; concurrent
    first uses by several processes agree on one key (exclusive create)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(os.urandom(32).hex())
        except FileExistsError:
            pass  # another process created it first
    return bytes.fromhex(path.read_text().strip())
