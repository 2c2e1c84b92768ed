"""Ingest background tasks: thin wrappers over the worker Hub's ingest service.

* ``yijian.backfill_codes``: after code mappings were added for ``source_system``, rewrite
  the stored results that carried those local codes unmapped.
* ``yijian.replay_dead_letter``: run a dead-lettered message through the pipeline again
  (after a fix); the dead letter's row records the outcome.

Both are idempotent, as every task must be (acks are late: a task may run twice); the ingest
service makes them so. A missing or already resolved dead letter fails the task at once
(``LookupError``/``ValueError`` are not retried).
"""

from __future__ import annotations

from hub.runtime import Hub
from hub.tasks.runner import TaskResult, hub_task


@hub_task("yijian.backfill_codes")
async def backfill_codes(hub: Hub, source_system: str, codes: list[str]) -> TaskResult:
    """Apply newly added mappings of ``codes`` in ``source_system`` to stored results."""
    changed = await hub.ingest.backfill(source_system, list(codes))  # wired by hub.ingest
    return {"source_system": source_system, "codes": len(codes), "changed": changed}


@hub_task("yijian.replay_dead_letter")
async def replay_dead_letter(hub: Hub, dead_letter_id: int) -> TaskResult:
    """Process dead letter ``dead_letter_id`` again."""
    receipt = await hub.ingest.replay(int(dead_letter_id))  # wired by hub.ingest
    return {
        "dead_letter": int(dead_letter_id),
        "code": str(receipt.code),
        "resources": receipt.resources,
        "reason": receipt.reason,
    }
