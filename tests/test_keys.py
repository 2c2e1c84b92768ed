"""Signing-key rotation: a new key signs, old keys keep verifying, other processes catch up."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hub.security.keys import KeyRing
from hub.security.principals import ClientKind, Principal
from hub.security.tokens import TokenService
from tests.conftest import YIJIAN

PRINCIPAL = Principal(
    "hospital-test", "LIS", ClientKind.HOSPITAL, "org-1", frozenset({"system/*.rs"})
)


def test_rotation_keeps_old_tokens_valid_and_is_picked_up_by_other_processes(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    before = TokenService(KeyRing(keys), "yijian-hub", 600)  # a running API process
    old_token, _ = before.issue(PRINCIPAL)

    out = subprocess.run(
        [YIJIAN, "keys", "rotate"],
        env={"YIJIAN_KEYS_DIR": str(keys), "PATH": "/usr/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "new signing key" in out
    assert len(list(keys.glob("*.pem"))) == 2

    after = TokenService(KeyRing(keys), "yijian-hub", 600)  # a process started after rotation
    new_token, _ = after.issue(PRINCIPAL)
    assert after.keyring.signing_key.kid != before.keyring.signing_key.kid
    assert after.verify(old_token).client_id == "hospital-test"  # old key still verifies
    assert before.verify(new_token).client_id == "hospital-test"  # reloads the key directory
    assert oct((keys / f"{after.keyring.signing_key.kid}.pem").stat().st_mode & 0o777) == "0o600"
