"""Background tasks (Celery): work that need not hold up an acknowledgement.

Back-filling code mappings added later, replaying dead-lettered messages after a fix and
refreshing the ingest statistics run in ``yijian worker`` processes, fed through a broker:
Redis or RabbitMQ when ``YIJIAN_BROKER_URL`` is set, otherwise the embedded file-system broker
under ``YIJIAN_DATA_DIR/broker`` (no extra service, one machine).

Modules:

* ``app``        the Celery application and its configuration (``make_celery``)
* ``filebroker`` the embedded broker: a kombu file-system transport that keeps a message
                 until it is acknowledged, so a killed worker does not lose it
* ``runner``     one Hub and one event loop per worker process; ``hub_task`` and the retry
                 policy
* ``queue``      ``TaskQueue``: enqueue from hub code (async)
* ``worker``     ``run_worker``: the worker (and embedded beat) for ``yijian worker``/``demo``
* ``statistics``, ``ingest``   the tasks

This package's ``__init__`` imports nothing heavy: the API process only needs ``queue``.
"""

from __future__ import annotations


class TransientTaskError(Exception):
    """A failure worth retrying later (with back-off): a dependency is briefly unavailable.

    Raise it from a task for conditions the retry policy does not already recognise (database
    connection and lock errors, ``OSError``, are recognised without it).
    """


class TaskEnqueueError(Exception):
    """A task could not be handed to the broker; the caller still owns the work.

    Raised by ``TaskQueue.enqueue`` after its bounded publish retries, so that the caller can
    record the work as pending (and answer or retry accordingly) instead of losing it.
    """


__all__ = ["TaskEnqueueError", "TransientTaskError"]
