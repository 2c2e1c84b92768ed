"""Starting a Celery worker for ``yijian worker`` and ``yijian demo``."""

from __future__ import annotations

import os

from hub.settings import Settings
from hub.tasks.app import DEFAULT_QUEUE, make_celery, uses_embedded_broker

BEAT_SCHEDULE_FILE = "celerybeat-schedule"


def worker_argv(
    settings: Settings,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    beat: bool = False,
    pool: str | None = None,
) -> list[str]:
    """The ``celery worker`` arguments of ``run_worker``."""
    argv = ["worker", f"--loglevel={loglevel}", "--hostname=yijian@%h"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    if pool:
        argv.append(f"--pool={pool}")
    if uses_embedded_broker(settings):
        # Gossip, mingle and worker heartbeats are broadcasts between workers on several
        # hosts: over the file-system broker they would only create files.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if beat:
        # Embedded beat: one process of one worker must run it, or schedules run twice.
        schedule = settings.data_dir.resolve() / BEAT_SCHEDULE_FILE
        schedule.parent.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={schedule}"]
    return argv


def run_worker(
    settings: Settings,
    concurrency: int | None = None,
    loglevel: str = "INFO",
    *,
    beat: bool = False,
    queue: str = DEFAULT_QUEUE,
    pool: str | None = None,
) -> None:
    """Run a Celery worker until it is stopped (SIGTERM/SIGINT: warm shutdown).

    ``concurrency`` is the number of pool processes (default: the CPU count); ``beat`` also
    runs the periodic schedule (statistics every 5 minutes) inside this worker. With no
    ``YIJIAN_DATABASE_URL`` the embedded PostgreSQL is started (or attached to) here, once,
    and its URL is given to the pool processes through the environment.
    """
    if not settings.database_url:
        from hub.storage.database import resolve_database_url

        os.environ["YIJIAN_DATABASE_URL"] = resolve_database_url(settings)
    os.environ.setdefault("YIJIAN_DATA_DIR", str(settings.data_dir.resolve()))
    make_celery(settings, queue).worker_main(
        worker_argv(settings, concurrency, loglevel, beat, pool)
    )
