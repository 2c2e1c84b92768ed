"""What every benchmark needs besides its load: a private hub to measure, and the machine.

``OwnHub`` starts a hub of its own (``yijian db upgrade``, an organization, an admin client,
``yijian serve``) on a fresh database and removes it afterwards; ``read_cpu_jiffies`` and
``cpu_calibration`` say how busy and how fast the shared machine was, so that figures from
different runs can be compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

BENCH_SYSTEM = "https://bench.yijian.invalid"  # identifier systems of benchmark data


def read_cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already included in user time
    return total - idle, total


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def cpu_calibration() -> float:
    """Seconds for a fixed pure-Python loop: how fast this machine is at the moment."""
    started = time.perf_counter()
    total = 0
    for step in range(10_000_000):
        total += step
    return time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# A private hub for the benchmark
# --------------------------------------------------------------------------------------------


class LoadProcesses:
    """Child processes that each run ``target(plan, connection)`` for one plan and send back
    ``("ok", result)`` or ``("error", text)``; a context manager that reaps them.

    Load generators run apart from the measuring process so that neither's CPU skews the
    other (forked where the platform allows, else spawned).
    """

    def __init__(self, target: Any, plans: Sequence[Any]) -> None:
        fork = "fork" in multiprocessing.get_all_start_methods()
        context: Any = multiprocessing.get_context("fork" if fork else "spawn")
        self.children: list[tuple[Any, Any]] = []
        for plan in plans:
            parent_end, child_end = context.Pipe(duplex=False)
            process = context.Process(target=target, args=(plan, child_end), daemon=True)
            process.start()
            child_end.close()
            self.children.append((process, parent_end))

    def results(self) -> list[Any]:
        """Each child's result, in plan order; RuntimeError if one died or failed."""
        results = []
        for process, connection in self.children:
            try:
                status, payload = connection.recv()
            except EOFError:
                raise RuntimeError(f"load process {process.pid} died") from None
            if status != "ok":
                raise RuntimeError(f"load process {process.pid} failed: {payload}")
            results.append(payload)
        return results

    def __enter__(self) -> LoadProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for process, _ in self.children:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()


class SetupError(RuntimeError):
    """The benchmark could not start or reach a hub."""


def find_yijian() -> Path:
    """The ``yijian`` command installed next to the current interpreter."""
    candidate = Path(sys.executable).parent / "yijian"
    if candidate.exists():
        return candidate
    found = shutil.which("yijian")
    if found:
        return Path(found)
    raise SetupError(
        f"no 'yijian' command next to {sys.executable}; install the project first "
        "(make venv, or pip install -e '.[dev]') and run with that interpreter"
    )


def tcp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_answers(base_url: str, timeout: float = 1.0) -> bool:
    """Whether an HTTP server answers at ``base_url`` (any status counts)."""
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/healthz", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def with_database(url: str, database: str) -> str:
    """``url`` with its path (database name) replaced."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


def admin_sql(url: str, sql: str) -> None:
    """Run one statement on the PostgreSQL server at ``url`` (asyncpg, else ``psql``).

    asyncpg is not an extra dependency: the hub this benchmark starts requires it.
    """
    try:
        import asyncpg  # only the --start path needs it
    except ImportError:
        psql = shutil.which("psql")
        if not psql:
            raise SetupError("neither asyncpg nor psql is available to create a database") from None
        subprocess.run(
            [psql, url, "-v", "ON_ERROR_STOP=1", "-qXc", sql], check=True, capture_output=True
        )
        return

    async def execute() -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute())


def parse_json_output(text: str) -> dict[str, Any]:
    """The JSON object a ``--json`` CLI command printed (tolerating log lines around it)."""
    with contextlib.suppress(orjson.JSONDecodeError):
        value = orjson.loads(text)
        if isinstance(value, dict):
            return value
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(orjson.JSONDecodeError):
                value = orjson.loads(line)
                if isinstance(value, dict):
                    return value
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        with contextlib.suppress(orjson.JSONDecodeError):
            value = orjson.loads(text[start : end + 1])
            if isinstance(value, dict):
                return value
    raise SetupError(f"expected JSON output, got: {text[:500]!r}")


@dataclass
class OwnHub:
    """A hub started by the benchmark, with its own database, removed afterwards.

    ``start()`` is ``prepare()`` (database, migrations, an organization and an admin client)
    then ``serve()``; a benchmark that loads data first calls them apart, with
    ``add_organization``/``add_client`` and ``env`` (the hub's environment) in between.

    ``database_url`` reuses an existing database instead of creating a fresh one (it is then
    never dropped); ``data_dir`` is the hub's ``YIJIAN_DATA_DIR`` (its keys: signing keys and
    the identifier encryption and hash keys, which must stay with the data they sealed),
    by default a temporary directory; ``keep`` leaves both behind at ``stop()``.
    """

    workers: int
    port: int
    pg_admin_url: str
    database_url: str | None = None
    data_dir: Path | None = None
    keep: bool = False
    base_url: str = ""
    client_id: str = ""
    client_secret: str = ""
    database: str = ""
    log_path: Path | None = None
    _tmp: Path | None = None
    _dropdb: str | None = None
    _server: subprocess.Popen[bytes] | None = None
    _env: dict[str, str] = field(default_factory=dict)
    _yijian: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        """The environment the hub's commands and server run with (``YIJIAN_*`` included)."""
        return dict(self._env)

    @property
    def server_pid(self) -> int | None:
        """The process id of ``yijian serve`` (its process group's leader), once started."""
        return self._server.pid if self._server is not None else None

    def _run(self, yijian: Path, *args: str, timeout: float = 300.0) -> str:
        cmd = [str(yijian), *args]
        proc = subprocess.run(
            cmd, env=self._env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise SetupError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}"
                f"\n{proc.stderr[-4000:]}"
            )
        return proc.stdout

    def start(self) -> None:
        """Prepare a database, register a hospital and an admin client, start the server."""
        self.prepare()
        self.serve()

    def prepare(self, admin_client: bool = True) -> None:
        """Database (fresh, given or configured), migrations, and unless ``admin_client`` is
        False an organization with an admin client (``client_id``/``client_secret``)."""
        yijian = self._yijian = find_yijian()
        self._tmp = Path(tempfile.mkdtemp(prefix="yijian-bench-"))
        env = dict(os.environ)
        env.setdefault("YIJIAN_LOG_LEVEL", "WARNING")  # no per-request logging in a benchmark
        if self.database_url:
            env["YIJIAN_DATABASE_URL"] = self.database_url
            self.database = f"{_without_password(self.database_url)} (given; kept)"
        elif env.get("YIJIAN_DATABASE_URL"):
            self.database_url = env["YIJIAN_DATABASE_URL"]
            self.database = "YIJIAN_DATABASE_URL (as configured)"
        else:
            admin = urlsplit(self.pg_admin_url)
            if tcp_answers(admin.hostname or "127.0.0.1", admin.port or 5432):
                name = f"yijian_bench_{secrets.token_hex(4)}"
                admin_sql(self.pg_admin_url, f'CREATE DATABASE "{name}"')
                self._dropdb = name
                self.database_url = with_database(self.pg_admin_url, name)
                env["YIJIAN_DATABASE_URL"] = self.database_url
                self.database = (
                    f"PostgreSQL at {admin.hostname}:{admin.port or 5432}, "
                    f"fresh database {name} ({'kept' if self.keep else 'dropped afterwards'})"
                )
            else:
                env.pop("YIJIAN_DATABASE_URL", None)
                if self.data_dir is None:
                    self.data_dir = self._tmp / "data"
                self.database = f"embedded PostgreSQL under {self.data_dir}"
        # The hub's keys live in DATA_DIR/keys: a given or configured directory, else a fresh
        # one for this run (never the working directory's var/ of some earlier hub).
        if self.data_dir is not None:
            env["YIJIAN_DATA_DIR"] = str(self.data_dir)
        elif env.get("YIJIAN_DATA_DIR"):
            self.data_dir = Path(env["YIJIAN_DATA_DIR"])
        else:
            self.data_dir = self._tmp / "data"
            env["YIJIAN_DATA_DIR"] = str(self.data_dir)
        self._env = env

        self._run(yijian, "db", "upgrade")
        if admin_client:
            org = self.add_organization(
                "基准测试医院", f"{BENCH_SYSTEM}/org|BENCH-{secrets.token_hex(4)}"
            )
            self.client_id, self.client_secret = self.add_client("admin", org, "bench-crud")

    def add_organization(self, name: str, identifier: str) -> str:
        """Register an organization (``yijian orgs add``; the same identifier gives the same
        one again); returns its id."""
        assert self._yijian is not None, "prepare() first"
        org = parse_json_output(
            self._run(
                self._yijian, "orgs", "add", "--name", name, "--identifier", identifier, "--json"
            )
        )
        return str(org["id"])

    def add_client(self, kind: str, organization: str, name: str) -> tuple[str, str]:
        """Register an API client (``yijian clients add``); returns (client_id, secret)."""
        assert self._yijian is not None, "prepare() first"
        client = parse_json_output(
            self._run(
                self._yijian,
                "clients",
                "add",
                "--kind",
                kind,
                "--organization",
                organization,
                "--name",
                name,
                "--json",
            )
        )
        return str(client["client_id"]), str(client["client_secret"])

    def serve(self) -> None:
        """Start ``yijian serve`` and wait until it answers."""
        assert self._yijian is not None and self._tmp is not None, "prepare() first"
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = self._tmp / "server.log"
        with open(self.log_path, "wb") as log:
            self._server = subprocess.Popen(
                [
                    str(self._yijian),
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    str(self.workers),
                ],
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_ready(timeout=90.0)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = self.base_url + "/healthz"
        while time.monotonic() < deadline:
            assert self._server is not None
            if self._server.poll() is not None:
                raise SetupError(
                    f"yijian serve exited {self._server.returncode}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError, ValueError),
                urllib.request.urlopen(url, timeout=2) as resp,
            ):
                if resp.status == 200:
                    return
            time.sleep(0.3)
        raise SetupError(f"yijian serve not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text("utf-8", "replace")[-chars:]
        return ""

    def server_log_problems(self) -> tuple[int, str]:
        """(number of tracebacks / ERROR lines in the server log, the first such excerpt)."""
        if not (self.log_path and self.log_path.exists()):
            return 0, ""
        lines = self.log_path.read_text("utf-8", "replace").splitlines()
        hits = [
            i
            for i, line in enumerate(lines)
            if line.startswith("Traceback") or " ERROR" in line or line.startswith("ERROR")
        ]
        if not hits:
            return 0, ""
        first = hits[0]
        return len(hits), "\n".join(lines[first : first + 30])

    def stop(self) -> None:
        """Stop the server (its whole process group); unless ``keep``, drop the database
        and remove the temporary files."""
        if self._server is not None and self._server.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._server.pid, signal.SIGTERM)
            try:
                self._server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._server.pid, signal.SIGKILL)
                self._server.wait(timeout=10)
        if self.keep:
            return
        if self._dropdb:
            try:
                admin_sql(
                    self.pg_admin_url, f'DROP DATABASE IF EXISTS "{self._dropdb}" WITH (FORCE)'
                )
            except Exception as exc:  # report, keep cleaning up
                print(f"warning: could not drop database {self._dropdb}: {exc}", file=sys.stderr)
            self._dropdb = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _without_password(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for printing)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
