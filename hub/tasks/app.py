"""The Celery application: broker, serialisation, delivery guarantees, beat schedule.

``make_celery(settings)`` builds an application for explicit settings (the CLI, tests, the
hub's ``TaskQueue``); the module-level ``app`` is configured lazily from the environment on
first use, so that ``celery -A hub.tasks.app worker`` works as well as ``yijian worker``.

Broker: ``settings.broker_url`` when set (``redis://…``, ``amqp://…``); otherwise the embedded
file-system broker under ``DATA_DIR/broker`` (see ``hub.tasks.filebroker``), which needs no
extra service and is shared by the processes of one machine.

Delivery: a task message is acknowledged only after the task has finished
(``task_acks_late``), a worker takes one message at a time per process
(``worker_prefetch_multiplier=1``), and a task whose worker process died is requeued
(``task_reject_on_worker_lost``): a killed worker does not lose work. Tasks must therefore be
idempotent (ours are). Messages are JSON only.

Results: tasks return small dicts, which the worker logs; no result backend is configured,
because nothing waits for a result: a task's effect is in the database.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery, signals

from hub.settings import Settings, load_settings
from hub.tasks import filebroker

#: The queue of the hub's tasks (a broker shared with other applications keeps them apart).
DEFAULT_QUEUE = "yijian"
#: Modules whose tasks every worker registers.
TASK_MODULES = ("hub.tasks.statistics", "hub.tasks.ingest")
STATISTICS_EVERY_SECONDS = 300.0
#: How long a publish may keep retrying a broker that does not answer (seconds, roughly).
PUBLISH_RETRY_POLICY = {
    "max_retries": 3,
    "interval_start": 0.2,
    "interval_step": 0.5,
    "interval_max": 1.0,
}


def broker_root(settings: Settings) -> Path:
    """The embedded broker's directory."""
    return settings.data_dir.resolve() / "broker"


def uses_embedded_broker(settings: Settings) -> bool:
    return not settings.broker_url


def celery_config(settings: Settings, queue: str = DEFAULT_QUEUE) -> dict[str, Any]:
    """The Celery configuration for ``settings`` (creates the embedded broker's folders)."""
    if settings.broker_url:
        broker_url = settings.broker_url
        transport_options: dict[str, Any] = {}
    else:
        broker_url = f"{filebroker.SCHEME}://localhost/"  # the host is not used
        transport_options = {**filebroker.folders(broker_root(settings)), "polling_interval": 0.2}
    return {
        "broker_url": broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 4.0,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": queue,
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "timezone": settings.default_timezone,
        "enable_utc": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "ingest-statistics": {
                "task": "yijian.statistics",
                "schedule": STATISTICS_EVERY_SECONDS,
                # A refresh that waited longer than its period is superseded by the next one.
                "options": {"expires": STATISTICS_EVERY_SECONDS},
            }
        },
    }


def make_celery(settings: Settings, queue: str = DEFAULT_QUEUE) -> Celery:
    """A Celery application for ``settings``, whose tasks go to (and are taken from) ``queue``."""
    celery = Celery("yijian", include=list(TASK_MODULES), set_as_current=False)
    celery.conf.update(celery_config(settings, queue))
    return celery


def _lazy_app() -> Celery:
    celery = Celery("yijian", include=list(TASK_MODULES), set_as_current=False)
    # Evaluated when the configuration is first read: importing this module costs nothing.
    celery.add_defaults(lambda: celery_config(load_settings()))
    return celery


#: The application configured from the environment (``celery -A hub.tasks.app worker``).
app = _lazy_app()


@signals.setup_logging.connect
def _json_logs(loglevel: int | str | None = None, **_: Any) -> None:
    """Worker and beat log JSON lines on stderr, like every other hub process."""
    from hub import logs

    if isinstance(loglevel, int):
        loglevel = logging.getLevelName(loglevel)
    logs.configure(str(loglevel or load_settings().log_level))
