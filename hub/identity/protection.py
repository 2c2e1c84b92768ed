"""Identifier values encrypted at rest and found through a keyed hash.

Values of the protected identifier systems (resident ID, insurance number, passport... — the
NamingSystems say which) never reach the database in clear:

- in the stored resource (and every stored version) ``identifier.value`` holds an envelope,
  ``enc1:<kid>:<base64url(nonce ‖ AES-GCM ciphertext)>``, with the system as associated data
  so a value cannot be moved to another system unnoticed;
- in the token index the code is ``h1:<HMAC-SHA256(system|value)>``, so an equality search
  still finds it, and a database dump alone reveals neither.

Responses decrypt the envelope and show the value in full or masked (``3301**********123X``),
as the caller's role allows.

Keys come from configuration (``YIJIAN_IDENTIFIER_KEYS``: ``kid:base64key,...``, the first
one current; ``YIJIAN_IDENTIFIER_HASH_KEY``) or, when unset, from ``KEYS_DIR/identifiers.json``,
created on first use. Rotation adds a key that becomes current; older keys keep decrypting
until ``yijian identity reencrypt`` has re-sealed every stored value with the current one.
The hash key cannot be rotated without rebuilding the token index, so it is kept apart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hub.fhir.indexing import IndexRows
from hub.fhir.search import Criterion, SearchRequest, TokenValue
from hub.identity.identifiers import IdentifierSystems, InvalidIdentifier

ENVELOPE = "enc1:"
HASH = "h1:"
KEYS_FILE = "identifiers.json"
RELOAD_SECONDS = 5.0


class KeyUnavailable(RuntimeError):
    """A stored value was sealed with a key this process does not have."""


@dataclass(frozen=True)
class IdentifierKeys:
    """The AES-256 keys by id (``current`` encrypts) and the index hash key."""

    current: str
    keys: dict[str, bytes]
    hash_key: bytes
    source: Path | None = None  # the key file, when keys are not configured explicitly


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _new_kid() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{int(now % 1 * 1e6):06d}"


def load_identifier_keys(
    keys_dir: Path, configured: str | None = None, configured_hash: str | None = None
) -> IdentifierKeys:
    """Keys from configuration when given, else the key file (created once, mode 0600)."""
    if configured:
        keys: dict[str, bytes] = {}
        current = ""
        for item in configured.split(","):
            kid, _, encoded = item.strip().partition(":")
            key = _unb64(encoded.strip())
            if not kid or len(key) != 32:
                raise ValueError(
                    "YIJIAN_IDENTIFIER_KEYS must be 'kid:base64(32 bytes)' items, comma-separated"
                )
            keys[kid] = key
            current = current or kid
        if not configured_hash:
            raise ValueError("YIJIAN_IDENTIFIER_HASH_KEY must be set with YIJIAN_IDENTIFIER_KEYS")
        return IdentifierKeys(current, keys, _unb64(configured_hash))
    path = keys_dir / KEYS_FILE
    if not path.exists():
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        document = {
            "hash_key": _b64(os.urandom(32)),
            "keys": [{"kid": _new_kid(), "key": _b64(AESGCM.generate_key(bit_length=256))}],
        }
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle, indent=2)
        except FileExistsError:
            pass  # another process created it first
    return _read_key_file(path)


def _read_key_file(path: Path) -> IdentifierKeys:
    document = json.loads(path.read_text())
    entries = document["keys"]
    keys = {entry["kid"]: _unb64(entry["key"]) for entry in entries}
    return IdentifierKeys(entries[-1]["kid"], keys, _unb64(document["hash_key"]), path)


def rotate_identifier_keys(keys_dir: Path) -> str:
    """Add a new key to the key file; it becomes the current key. Returns its id."""
    path = keys_dir / KEYS_FILE
    load_identifier_keys(keys_dir)  # create the file if there is none
    document = json.loads(path.read_text())
    kid = _new_kid()
    document["keys"].append({"kid": kid, "key": _b64(AESGCM.generate_key(bit_length=256))})
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle, indent=2)
    temporary.replace(path)
    return kid


class IdentifierProtection:
    """Seals, hashes and reveals the values of protected identifier systems."""

    def __init__(self, systems: IdentifierSystems, keys: IdentifierKeys):
        self.systems = systems
        self.keys = keys
        self._ciphers = {kid: AESGCM(key) for kid, key in keys.keys.items()}
        self._checked = time.monotonic()
        self.protected = systems.protected_uris

    # -- keys -------------------------------------------------------------------------------------

    def _refresh(self, force: bool = False) -> None:
        """Pick up a rotated key file (at most every few seconds, or now when a kid is unknown)."""
        source = self.keys.source
        if source is None or (not force and time.monotonic() - self._checked < RELOAD_SECONDS):
            return
        self._checked = time.monotonic()
        keys = _read_key_file(source)
        if keys.keys != self.keys.keys:
            self.keys = keys
            self._ciphers = {kid: AESGCM(key) for kid, key in keys.keys.items()}

    # -- values -----------------------------------------------------------------------------------

    def hash(self, system: str, value: str) -> str:
        """The index code of a (normalised) protected value."""
        digest = hmac.new(self.keys.hash_key, f"{system}|{value}".encode(), hashlib.sha256)
        return HASH + digest.hexdigest()[:40]

    def encrypt(self, system: str, value: str) -> str:
        self._refresh()
        nonce = os.urandom(12)
        sealed = self._ciphers[self.keys.current].encrypt(nonce, value.encode(), system.encode())
        return f"{ENVELOPE}{self.keys.current}:{_b64(nonce + sealed)}"

    def decrypt(self, system: str, envelope: str) -> str:
        kid, _, payload = envelope[len(ENVELOPE) :].partition(":")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            self._refresh(force=True)
            cipher = self._ciphers.get(kid)
            if cipher is None:
                raise KeyUnavailable(f"identifier key {kid!r} is not configured")
        data = _unb64(payload)
        return cipher.decrypt(data[:12], data[12:], system.encode()).decode()

    # -- resources --------------------------------------------------------------------------------

    def seal(self, resource: dict[str, Any]) -> dict[str, Any]:
        """A copy of ``resource`` whose protected identifier values are envelopes, wherever
        an Identifier sits (the resource's own, a reference's, a contained resource's).

        Values must already be normalised (``IdentifierSystems.normalize``).
        """
        if not self.mentions_protected(resource):
            return resource
        return transform_identifiers(
            resource,
            lambda i: (
                {**i, "value": self.encrypt(i["system"], i["value"])}
                if _protected_plain(i, self.protected)
                else i
            ),
        )

    def mentions_protected(self, resource: dict[str, Any]) -> bool:
        """A cheap test (one serialisation, substring checks) before walking a resource."""
        return self._mentions(orjson.dumps(resource))

    def _mentions(self, text: bytes) -> bool:
        return any(uri.encode() in text for uri in self.protected)

    def sealed_json(self, resource: dict[str, Any]) -> str:
        """The resource as stored: JSON text with protected values sealed."""
        text = orjson.dumps(resource)
        if self._mentions(text):
            text = orjson.dumps(self.seal(resource))
        return text.decode()

    def protect_rows(self, rows: IndexRows) -> None:
        """Replace protected values in token rows by their keyed hash (before storing)."""
        if not any(system in self.protected for _, system, _, _ in rows.token):
            return
        rows.token = [
            (param, system, self.hash(system, code), None)
            if system in self.protected and code is not None
            else (param, system, code, display)
            for param, system, code, display in rows.token
        ]

    def reveal(self, resource: dict[str, Any], full: bool) -> dict[str, Any]:
        """A copy with envelopes opened: the value in full, or masked for display."""

        def open_(identifier: dict[str, Any]) -> dict[str, Any]:
            system, value = identifier.get("system"), identifier.get("value")
            if system in self.protected and isinstance(value, str) and value.startswith(ENVELOPE):
                plain = self.decrypt(system, value)
                return {**identifier, "value": plain if full else self.systems.mask(system, plain)}
            return identifier

        return transform_identifiers(resource, open_)

    def plain_identifiers(self, resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
        """``(system, value)`` of every identifier, envelopes opened."""
        for identifier in resource.get("identifier") or []:
            system, value = identifier.get("system"), identifier.get("value")
            if not isinstance(system, str) or not isinstance(value, str):
                continue
            sealed = system in self.protected and value.startswith(ENVELOPE)
            yield system, self.decrypt(system, value) if sealed else value

    # -- search -----------------------------------------------------------------------------------

    def rewrite_search(self, request: SearchRequest) -> SearchRequest:
        """Token criteria on protected systems search the keyed hash of the normalised value,
        and the query echoed in the Bundle's links carries that hash, not the number."""
        request.criteria = [self._criterion(c) for c in request.criteria]
        request.used = [(key, self._echoed(value)) for key, value in request.used]
        return request

    def _echoed(self, value: str) -> str:
        """``system|number`` of a protected system as ``system|h1:...`` (searchable as is)."""
        parts = []
        for item in value.split(","):
            system, bar, code = item.rpartition("|")
            canonical = self.systems.canonical(system) if bar else ""
            if canonical in self.protected and code and not code.startswith(HASH):
                item = f"{system}|{self.hash(canonical, self._normalized(canonical, code))}"
            parts.append(item)
        return ",".join(parts)

    def _criterion(self, criterion: Criterion) -> Criterion:
        if criterion.chain is not None:
            return replace(criterion, chain=self._criterion(criterion.chain))
        if criterion.param.type != "token" or criterion.modifier == "missing":
            return criterion
        values = list(_flatten(self._token(v) for v in criterion.values))
        return replace(criterion, values=values)

    def _token(self, value: Any) -> list[Any]:
        if not isinstance(value, TokenValue) or value.code is None or value.no_system:
            return [value]
        if value.system is not None:
            system = self.systems.canonical(value.system)
            if system not in self.protected:
                return [value if system == value.system else replace(value, system=system)]
            if value.code.startswith(HASH):  # from a Bundle link: hashed already
                return [TokenValue(system, value.code)]
            return [TokenValue(system, self.hash(system, self._normalized(system, value.code)))]
        # No system: the plain value in unprotected systems, or its hash in any protected one.
        out: list[Any] = [value]
        for system in sorted(self.protected):
            out.append(TokenValue(system, self.hash(system, self._normalized(system, value.code))))
        return out

    def _normalized(self, system: str, value: str) -> str:
        try:
            return self.systems.normalize(system, value)
        except InvalidIdentifier:
            return value.strip()  # cannot be stored, so it finds nothing


def transform_identifiers(
    resource: dict[str, Any], change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """A copy of ``resource`` with ``change`` applied to every Identifier in it.

    Identifiers are the objects under an ``identifier`` key (a list of them, or one, as in
    ``Reference.identifier``), at any depth; everything else is copied only where needed.
    """

    def walk(value: Any, under_identifier: bool) -> Any:
        if isinstance(value, dict):
            if under_identifier:
                return change(value)
            return {k: walk(v, k == "identifier") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, under_identifier) for v in value]
        return value

    result: dict[str, Any] = walk(resource, False)
    return result


def identifiers_in(resource: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every Identifier in a resource (as ``identifier_paths``, without building paths)."""

    def walk(value: Any, under_identifier: bool) -> Iterator[dict[str, Any]]:
        if isinstance(value, dict):
            if under_identifier:
                yield value
                return
            for key, item in value.items():
                if isinstance(item, dict | list):
                    yield from walk(item, key == "identifier")
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict | list):
                    yield from walk(item, under_identifier)

    yield from walk(resource, False)


def identifier_paths(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(FHIRPath, Identifier)`` of every Identifier in a resource, for error messages."""

    def walk(value: Any, path: str, under_identifier: bool) -> Iterator[tuple[str, Any]]:
        if isinstance(value, dict):
            if under_identifier:
                yield path, value
                return
            for key, item in value.items():
                yield from walk(item, f"{path}.{key}", key == "identifier")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                yield from walk(item, f"{path}[{index}]", under_identifier)

    yield from walk(resource, str(resource.get("resourceType", "Resource")), False)


def _protected_plain(identifier: Any, protected: frozenset[str]) -> bool:
    return (
        isinstance(identifier, dict)
        and identifier.get("system") in protected
        and isinstance(identifier.get("value"), str)
        and not identifier["value"].startswith(ENVELOPE)
    )


def _flatten(groups: Iterable[list[Any]]) -> Iterator[Any]:
    for group in groups:
        yield from group
