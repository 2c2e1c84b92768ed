"""Background tasks through real parts: a Celery worker process, a real broker, PostgreSQL.

Each test starts ``run_worker`` in a subprocess (prefork pool, one child) with the hub's
environment variables, enqueues through ``TaskQueue`` as the hub does, and observes the
task's effect in the database (no result backend). Brokers: the embedded file-system broker,
Redis and RabbitMQ (skipped only when the service is not reachable). The module uses a
database of its own on the test server, so that its counts are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from hub.settings import load_settings
from hub.storage.database import libpq_url
from hub.storage.migrate import upgrade
from hub.tasks.app import make_celery
from hub.tasks.queue import TaskQueue

REDIS_URL = "redis://127.0.0.1:6379/15"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
SHANGHAI = ZoneInfo("Asia/Shanghai")
TIMEOUT = 30.0
#: (messages, resources, errors, dead_letters) by (day, feed)
Counts = dict[tuple[date, str], tuple[int, int, int, int]]
RETRY = re.compile(r"yijian\.statistics\[[-0-9a-f]+\] retry: Retry in (\d+)s")

WORKER_CODE = (
    "import os;"
    "from hub.settings import load_settings;"
    "from hub.tasks.worker import run_worker;"
    "run_worker(load_settings(), concurrency=1, loglevel='INFO', queue=os.environ['TEST_QUEUE'])"
)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tasks_database(database_url: str) -> Iterator[str]:
    """A migrated database of this module's own, on the suite's test server."""
    name = f"yijian_tasks_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(libpq_url(database_url))
    url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(libpq_url(database_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(url)
        yield url
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.Runner]:
    """One event loop for the module, so a connection can outlive one ``run`` call."""
    with asyncio.Runner() as runner:
        yield runner


class Db:
    """The test's own connection to the module database."""

    def __init__(self, url: str, loop: asyncio.Runner) -> None:
        self.url, self.loop = url, loop
        self.conn: asyncpg.Connection = loop.run(asyncpg.connect(url))

    def execute(self, sql: str, *args: Any) -> str:
        return str(self.loop.run(self.conn.execute(sql, *args)))

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return list(self.loop.run(self.conn.fetch(sql, *args)))

    def close(self) -> None:
        self.loop.run(self.conn.close())


@pytest.fixture
def db(tasks_database: str, loop: asyncio.Runner) -> Iterator[Db]:
    handle = Db(tasks_database, loop)
    handle.execute("TRUNCATE ingest_message, dead_letter, ingest_statistics")
    yield handle
    handle.close()


class Worker:
    """A ``run_worker`` subprocess in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", WORKER_CODE],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, fragment: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while fragment not in self.text():
            if self.process.poll() is not None:
                pytest.fail(f"the worker exited ({self.process.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {fragment!r} in the worker log within {timeout} s:\n{self.text()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the worker and its pool children: no warm shutdown, nothing acknowledged."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        """Warm shutdown, as a service manager does it: SIGTERM to the main process only (the
        running task finishes, each pool process stops its hub)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()  # any pool child left behind


class Setup:
    """The environment of one test: data directory, broker, queue, and its workers."""

    def __init__(self, database_url: str, data_dir: Path, broker_url: str | None) -> None:
        self.queue = f"yijian-test-{uuid.uuid4().hex[:8]}"
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = load_settings(
            database_url=database_url, data_dir=data_dir, broker_url=broker_url
        )
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("YIJIAN_") and key != "TEST_QUEUE"
        }
        tmp = data_dir / "tmp"  # billiard's pymp-* folders, left behind by killed workers
        tmp.mkdir()
        self.env.update(
            TMPDIR=str(tmp),
            YIJIAN_DATABASE_URL=database_url,
            YIJIAN_DATA_DIR=str(data_dir),
            YIJIAN_LOG_LEVEL="INFO",
            TEST_QUEUE=self.queue,
        )
        if broker_url:
            self.env["YIJIAN_BROKER_URL"] = broker_url
        self.workers: list[Worker] = []

    def worker(self) -> Worker:
        worker = Worker(self.env, self.data_dir / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        worker.wait_for(" ready.")
        return worker

    def enqueue(self, name: str, *args: Any) -> str:
        queue = TaskQueue(self.settings, self.queue)
        try:
            return asyncio.run(queue.enqueue(name, *args))
        finally:
            queue.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()  # quick; the warm shutdown has a test of its own
        if self.settings.broker_url:  # remove the test's queue from the shared broker
            app = make_celery(self.settings, self.queue)
            try:
                with app.connection_for_write() as conn:
                    conn.default_channel.queue_delete(self.queue)
            except Exception:
                pass
            finally:
                app.close()


def _reachable(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
            return True
    except OSError:
        return False


@pytest.fixture
def setup(tasks_database: str, tmp_path: Path) -> Iterator[Callable[[str | None], Setup]]:
    made: list[Setup] = []

    def make(broker_url: str | None) -> Setup:
        if broker_url and not _reachable(broker_url):
            pytest.skip(f"broker {urlsplit(broker_url).scheme} not reachable at {broker_url}")
        made.append(Setup(tasks_database, tmp_path / f"data-{len(made)}", broker_url))
        return made[-1]

    yield make
    for each in made:
        each.close()


# -- data ------------------------------------------------------------------------------------


def _local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SHANGHAI)


def seed(db: Db) -> Counts:
    """Messages and dead letters around the day boundaries of Asia/Shanghai; returns the
    expected ``(messages, resources, errors, dead_letters)`` per day and feed."""
    today: date = db.fetch("SELECT (now() AT TIME ZONE 'Asia/Shanghai')::date AS d")[0]["d"]
    yesterday, older = today - timedelta(days=1), today - timedelta(days=3)
    lab, ris = f"lab-{uuid.uuid4().hex[:6]}", f"ris-{uuid.uuid4().hex[:6]}"
    messages = [
        # feed, received, ack, resources
        (lab, _local(today, 0, 30), "AA", 3),  # 16:30 UTC the day before: still today here
        (lab, _local(today, 10), "AA", 5),
        (lab, _local(today, 11), "AE", 4),  # resources of a refused message do not count
        (lab, _local(yesterday, 23, 30), "AA", 2),
        (lab, _local(older, 12), "AA", 100),  # outside the two refreshed days
        (ris, _local(today, 9), "AR", 0),
        (ris, _local(yesterday, 8), "AA", 7),
        (ris, _local(yesterday, 9), "AA", 1),
    ]
    for number, (feed, received, ack, resources) in enumerate(messages):
        db.execute(
            "INSERT INTO ingest_message (feed_id, control_id, received_at, channel, digest,"
            " ack_code, response, resources) VALUES ($1, $2, $3, 'mllp', '\\x00', $4, '', $5)",
            feed,
            f"MSG{number}",
            received,
            ack,
            resources,
        )
    dead: list[tuple[str | None, datetime, str]] = [
        (lab, _local(today, 0, 10), "AE"),
        (lab, _local(today, 12), "AR"),
        (lab, _local(yesterday, 7), "AE"),
        (None, _local(today, 13), "AR"),  # the sender's feed could not be told
        (None, _local(older, 13), "AR"),
    ]
    for dead_feed, received, ack in dead:
        db.execute(
            "INSERT INTO dead_letter (feed_id, received_at, channel, ack_code, error, payload)"
            " VALUES ($1, $2, 'mllp', $3, 'bad', '\\x00')",
            dead_feed,
            received,
            ack,
        )
    # A day and feed counted before but with nothing left in the logs goes back to zero.
    db.execute(
        "INSERT INTO ingest_statistics (day, feed_id, messages, resources, errors, dead_letters)"
        " VALUES ($1, 'gone', 9, 9, 9, 9)",
        yesterday,
    )
    expected = {
        (today, lab): (3, 8, 1, 2),
        (yesterday, lab): (1, 2, 0, 1),
        (today, ris): (1, 0, 0, 0),
        (yesterday, ris): (2, 8, 0, 0),
        (today, "(unknown)"): (0, 0, 0, 1),
        (yesterday, "gone"): (0, 0, 0, 0),
    }
    return expected


def statistics(db: Db) -> Counts:
    """The table as the refresh leaves it (the seeded stale row is not shown until zeroed)."""
    rows = db.fetch(
        "SELECT day, feed_id, messages, resources, errors, dead_letters FROM ingest_statistics"
        " WHERE NOT (feed_id = 'gone' AND messages = 9)"
    )
    return {
        (r["day"], r["feed_id"]): (r["messages"], r["resources"], r["errors"], r["dead_letters"])
        for r in rows
    }


def wait_for_statistics(
    db: Db,
    expected: Counts,
    worker_log: Callable[[], str],
) -> None:
    deadline = time.monotonic() + TIMEOUT
    seen = statistics(db)
    while seen != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = statistics(db)
    assert seen == expected, worker_log()


# -- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "broker_url",
    [None, REDIS_URL, RABBITMQ_URL],
    ids=["embedded", "redis", "rabbitmq"],
)
def test_statistics_round_trip(
    broker_url: str | None, setup: Callable[[str | None], Setup], db: Db
) -> None:
    env = setup(broker_url)
    expected = seed(db)
    worker = env.worker()
    env.enqueue("yijian.statistics")
    wait_for_statistics(db, expected, worker.text)
    worker.wait_for("succeeded")
    assert "{'days': 2, 'rows': 6}" in worker.text()
    if broker_url is None:  # the embedded broker's files live under the data directory
        broker = env.data_dir / "broker"
        assert (broker / "queue").is_dir()
        assert not list((broker / "claimed").iterdir())  # acknowledged: nothing held
        worker.stop()
        assert worker.process.returncode == 0
        assert "hub stopped in worker process" in worker.text()


def test_transient_failure_is_retried_with_back_off(
    setup: Callable[[str | None], Setup], db: Db
) -> None:
    """A migration holding the statistics table: the refresh gives up on the lock (instead of
    queueing in front of ingest), is retried after a back-off, and succeeds once it is free."""
    from hub.tasks.statistics import statistics as task

    assert (task.max_retries, task.retry_backoff, task.retry_backoff_max) == (8, True, 600)
    assert task.retry_jitter
    env = setup(None)
    expected = seed(db)
    worker = env.worker()
    db.execute("BEGIN")
    db.execute("LOCK TABLE ingest_statistics IN ACCESS EXCLUSIVE MODE")
    try:
        env.enqueue("yijian.statistics")
        deadline = time.monotonic() + TIMEOUT
        while len(RETRY.findall(worker.text())) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        db.execute("ROLLBACK")
    wait_for_statistics(db, expected, worker.text)
    log = worker.text()
    delays = [int(seconds) for seconds in RETRY.findall(log)]
    assert len(delays) >= 2, log
    # Exponential back-off with full jitter: attempt n waits between 0 and 2**n seconds.
    assert all(0 <= delay <= 2**n for n, delay in enumerate(delays)), delays
    assert log.count("LockNotAvailableError") == len(delays)
    assert log.count("succeeded") == 1


@pytest.mark.parametrize("broker_url", [None, RABBITMQ_URL], ids=["embedded", "rabbitmq"])
def test_killed_worker_does_not_lose_its_task(
    broker_url: str | None, setup: Callable[[str | None], Setup], db: Db
) -> None:
    """SIGKILL of the whole worker while its task is held (acks are late): another worker
    runs the task. (Redis redelivers only after its visibility timeout, an hour.)"""
    env = setup(broker_url)
    expected = seed(db)
    first = env.worker()
    db.execute("BEGIN")
    db.execute("LOCK TABLE ingest_statistics IN ACCESS EXCLUSIVE MODE")
    try:
        env.enqueue("yijian.statistics")
        first.wait_for("received")
        first.kill()
        assert "succeeded" not in first.text()
        if broker_url is None:
            broker = env.data_dir / "broker"
            held = list((broker / "claimed").iterdir()) + list((broker / "queue").iterdir())
            assert [p for p in held if p.name.endswith(f".{env.queue}.msg")], "task lost"
    finally:
        db.execute("ROLLBACK")
    second = env.worker()
    wait_for_statistics(db, expected, second.text)
    second.wait_for("succeeded")
    if broker_url is None:
        assert "restored 1 unacknowledged message(s) of stopped consumers" in second.text()


def test_enqueue_failure_is_raised_not_swallowed(tmp_path: Path) -> None:
    """A broker that cannot be reached: the caller gets TaskEnqueueError and keeps the work."""
    from hub.tasks import TaskEnqueueError

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    settings = load_settings(data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{port}/0")
    queue = TaskQueue(settings)
    started = time.monotonic()
    try:
        with pytest.raises(TaskEnqueueError):
            asyncio.run(queue.enqueue("yijian.statistics"))
    finally:
        queue.close()
    assert time.monotonic() - started < 15


def test_killed_pool_process_requeues_its_task(
    setup: Callable[[str | None], Setup], db: Db
) -> None:
    """The pool process running a task dies (OOM killer, segfault): the worker requeues the
    task (``task_reject_on_worker_lost``) and a new pool process runs it. Over Redis: with the
    embedded broker the worker's synchronous loop notices a lost process only after ~10 s."""
    env = setup(REDIS_URL)
    expected = seed(db)
    worker = env.worker()
    db.execute("BEGIN")
    db.execute("LOCK TABLE ingest_statistics IN ACCESS EXCLUSIVE MODE")
    try:
        env.enqueue("yijian.statistics")
        worker.wait_for("hub started in worker process")
        child = re.search(r"hub started in worker process (\d+)", worker.text())
        assert child is not None
        os.kill(int(child.group(1)), signal.SIGKILL)  # waiting for the lock, never finished
        worker.wait_for("WorkerLostError")
    finally:
        db.execute("ROLLBACK")
    wait_for_statistics(db, expected, worker.text)
    worker.wait_for("succeeded")
    assert worker.process.poll() is None  # the worker itself carried on
