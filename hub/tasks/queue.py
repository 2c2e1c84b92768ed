"""Enqueueing background tasks from hub code (API, MLLP listener, CLI).

``TaskQueue.enqueue`` hands a task to the broker and returns its id. It is async: publishing is
blocking I/O and runs in a thread, so the caller's event loop keeps serving.

Failure is the caller's to handle, never swallowed: if the broker cannot take the message
after a few quick retries (about three seconds in all), ``enqueue`` raises
``TaskEnqueueError``. Work that must not be lost is recorded in the database by its caller
first (a dead letter, an added code mapping), so the caller can answer the operator with the
failure and the operator, or a later run, can enqueue it again; work that is refreshed
periodically anyway (statistics) can be ignored by the caller. A queue that logged and dropped
the failure would lose work silently, which the hub never does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from celery import Celery

from hub.settings import Settings
from hub.tasks import TaskEnqueueError
from hub.tasks.app import DEFAULT_QUEUE, PUBLISH_RETRY_POLICY, make_celery

log = logging.getLogger(__name__)


class TaskQueue:
    """The hub's handle for enqueueing tasks by name (no task code is imported)."""

    def __init__(self, settings: Settings, queue: str = DEFAULT_QUEUE) -> None:
        self.app: Celery = make_celery(settings, queue)

    async def enqueue(self, name: str, *args: Any, countdown: float | None = None) -> str:
        """Send task ``name`` with JSON ``args`` (to run ``countdown`` seconds from now at the
        earliest); return the task id. Raises ``TaskEnqueueError`` if the broker cannot take it.
        """
        return await asyncio.to_thread(self.enqueue_blocking, name, *args, countdown=countdown)

    def enqueue_blocking(self, name: str, *args: Any, countdown: float | None = None) -> str:
        """``enqueue`` for synchronous callers (the CLI)."""
        try:
            result = self.app.send_task(
                name,
                args=list(args),
                countdown=countdown,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
        except Exception as exc:
            log.warning("could not enqueue task %s: %s", name, exc)
            raise TaskEnqueueError(f"could not enqueue {name}: {exc}") from exc
        return str(result.id)

    def close(self) -> None:
        """Release the broker connections."""
        self.app.close()
