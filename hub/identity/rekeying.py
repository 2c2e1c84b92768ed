"""Re-seal stored identifier values with the current key, after a key rotation.

Stored content (current versions and history) is rewritten in place: the clinical content and
versions do not change, only the envelope around each protected value. Runs in batches, each
in its own transaction, so it can be interrupted and resumed.
"""

from __future__ import annotations

import asyncpg
import orjson

from hub.identity.protection import ENVELOPE, IdentifierProtection

BATCH = 500


async def reencrypt(connection: asyncpg.Connection, protection: IdentifierProtection) -> int:
    """Re-seal every value not sealed with the current key; returns the rows rewritten."""
    current = f"{ENVELOPE}{protection.keys.current}:"
    rewritten = 0
    for table, key in (("resource", "pk, version_id"), ("resource_version", "pk, version_id")):
        last: tuple[int, ...] = (0, 0) if table == "resource_version" else (0,)
        versioned = table == "resource_version"
        while True:
            keyset = "(pk, version_id) > ($1, $2)" if versioned else "pk > $1"
            rows = await connection.fetch(
                f"SELECT {key}, content FROM {table} WHERE content LIKE '%\"enc1:%' "
                f"AND {keyset} ORDER BY {key} LIMIT {BATCH}",
                *last,
            )
            if not rows:
                break
            async with connection.transaction():
                for row in rows:
                    content = row["content"]
                    if content.count(ENVELOPE) == content.count(current):
                        continue
                    resource = orjson.loads(content)
                    opened = protection.reveal(resource, full=True)
                    sealed = orjson.dumps(protection.seal(opened)).decode()
                    if versioned:
                        await connection.execute(
                            f"UPDATE {table} SET content = $3 WHERE pk = $1 AND version_id = $2",
                            row["pk"],
                            row["version_id"],
                            sealed,
                        )
                    else:  # only if no write came in between (it is sealed with the new key)
                        await connection.execute(
                            f"UPDATE {table} SET content = $3 WHERE pk = $1 AND version_id = $2",
                            row["pk"],
                            row["version_id"],
                            sealed,
                        )
                    rewritten += 1
            last = (rows[-1]["pk"], rows[-1]["version_id"]) if versioned else (rows[-1]["pk"],)
    return rewritten
