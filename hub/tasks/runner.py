"""Running async hub code in Celery worker processes, and the retry policy.

A task is ``async def f(hub: Hub, *args) -> dict``. Each worker process that runs tasks builds
one ``Hub`` (``Hub.build(load_settings())`` + ``await hub.start()``) on first use and keeps it,
with its connection pool, on one event loop that runs in a dedicated thread: every pool kind
(prefork, threads, solo) can submit coroutines to it, and the hub's own background work (audit
group commit, revocation refresh) keeps running between tasks. A forked child never uses its
parent's loop or pool (it builds its own); the hub is stopped cleanly when the process ends
(``worker_process_shutdown`` for prefork children, ``worker_shutdown`` for the solo/threads
pools).

Retries: ``hub_task`` retries a task that failed for a transient reason (``TRANSIENT_ERRORS``)
with exponential back-off and jitter (about 1, 2, 4 … seconds, at most ``RETRY_BACKOFF_MAX``),
up to ``MAX_RETRIES`` times; any other exception fails the task at once (it is logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, Concatenate, ParamSpec

import asyncpg
import sqlalchemy.exc
from celery import shared_task, signals

from hub.runtime import Hub
from hub.settings import load_settings
from hub.tasks import TransientTaskError

log = logging.getLogger(__name__)

P = ParamSpec("P")
TaskResult = dict[str, Any]
HubCoroutine = Callable[Concatenate[Hub, P], Awaitable[TaskResult]]

MAX_RETRIES = 8
RETRY_BACKOFF_MAX = 600
STOP_TIMEOUT_SECONDS = 15.0

#: Failures that a later attempt may not meet: the database or a service briefly unreachable,
#: restarting, out of connections, a lock not granted in time, a serialisation conflict.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientTaskError,
    OSError,  # includes ConnectionError and TimeoutError
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now, cancel
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.TransactionRollbackError,  # serialisation failure, deadlock
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout
    sqlalchemy.exc.OperationalError,  # the pool could not connect
    sqlalchemy.exc.TimeoutError,  # no pooled connection in time
)

RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": True,
    "retry_backoff_max": RETRY_BACKOFF_MAX,
    "retry_jitter": True,
    "max_retries": MAX_RETRIES,
}


class HubRunner:
    """This process's event loop thread and Hub, created on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._hub: Hub | None = None
        self._hub_lock: asyncio.Lock | None = None

    def run(self, function: HubCoroutine[P], *args: P.args, **kwargs: P.kwargs) -> TaskResult:
        """Run ``function(hub, *args, **kwargs)`` on this process's loop; return its result."""
        loop = self._ensure_loop()
        future: Future[TaskResult] = asyncio.run_coroutine_threadsafe(
            self._call(function, *args, **kwargs), loop
        )
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. a time limit interrupted the wait: stop the coroutine too
            raise

    async def _call(self, function: HubCoroutine[P], *args: P.args, **kwargs: P.kwargs) -> Any:
        return await function(await self._ensure_hub(), *args, **kwargs)

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._pid != os.getpid():  # first use, or a forked child: never the parent's
                self._forget()
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="hub-task-loop", daemon=True
                )
                thread.start()
                self._pid, self._loop, self._thread = os.getpid(), loop, thread
                self._hub_lock = asyncio.Lock()
            return self._loop

    async def _ensure_hub(self) -> Hub:
        # On the loop thread; the asyncio lock serialises concurrent first tasks (threads pool).
        assert self._hub_lock is not None
        async with self._hub_lock:
            if self._hub is None:
                hub = Hub.build(load_settings())
                try:
                    await hub.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await hub.stop()
                    raise  # the next task tries again
                self._hub = hub
                log.info("hub started in worker process %d", os.getpid())
            return self._hub

    def _forget(self) -> None:
        """Drop (without closing) state inherited from a parent process: its sockets and
        thread belong to the parent, and closing them here would disturb it."""
        if self._loop is not None:
            _inherited.append((self._loop, self._hub))
        self._pid, self._loop, self._thread, self._hub = None, None, None, None
        self._hub_lock = None

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # the parent's may have been held by another thread
        self._forget()

    def stop(self) -> None:
        """Stop this process's hub and loop, if it has them (idempotent)."""
        with self._lock:
            if self._pid != os.getpid() or self._loop is None:
                return
            loop, thread, hub = self._loop, self._thread, self._hub
            self._pid, self._loop, self._thread, self._hub = None, None, None, None
            self._hub_lock = None
        if hub is not None:
            try:
                asyncio.run_coroutine_threadsafe(hub.stop(), loop).result(STOP_TIMEOUT_SECONDS)
                log.info("hub stopped in worker process %d", os.getpid())
            except Exception:
                log.exception("stopping the hub of worker process %d failed", os.getpid())
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(STOP_TIMEOUT_SECONDS)
        if not loop.is_running():
            loop.close()


_inherited: list[Any] = []  # kept referenced so that garbage collection never closes them
RUNNER = HubRunner()
os.register_at_fork(after_in_child=RUNNER.after_fork_in_child)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _stop_hub(**_: Any) -> None:
    RUNNER.stop()


def hub_task(name: str, **options: Any) -> Callable[[HubCoroutine[P]], Any]:
    """Make ``async def f(hub, *args) -> dict`` the Celery task ``name``, retried with back-off.

    The task is registered with every Celery application of the process (``shared_task``), so
    that any application built by ``make_celery`` runs it. ``options`` override the defaults
    (``RETRY_OPTIONS``) or add Celery task options. Arguments must be JSON values.
    """

    def decorate(function: HubCoroutine[P]) -> Any:
        def run(*args: Any, **kwargs: Any) -> TaskResult:
            return RUNNER.run(function, *args, **kwargs)

        # Not functools.wraps: Celery checks call arguments against the signature, which
        # must not include ``hub``.
        run.__name__ = function.__name__
        run.__qualname__ = function.__qualname__
        run.__module__ = function.__module__
        run.__doc__ = function.__doc__
        return shared_task(name=name, **{**RETRY_OPTIONS, **options})(run)

    return decorate
