"""Processes the hub starts: listener workers forked on one port, and child commands.

``run_forked`` serves ``yijian mllp --workers N`` and ``yijian dicom-scp --workers N`` (each
process its own interpreter, event loop and pool, sharing the port with SO_REUSEPORT);
``spawn_yijian`` starts another ``yijian`` command as a child (the demo's worker and DICOM
receiver), in its own process group so that a terminal's Ctrl-C reaches only the parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


def run_forked(workers: int, serve: Callable[[int], None]) -> None:
    """Fork ``workers`` processes running ``serve(number)``; forward SIGTERM and SIGINT to
    them; wait for all; exit 1 if any failed."""
    children: list[int] = []
    for number in range(workers):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                serve(number)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = False
    for child in children:
        _, status = os.waitpid(child, 0)
        failed = failed or os.waitstatus_to_exitcode(status) != 0
    if failed:
        sys.exit(1)


def spawn_yijian(
    args: list[str], log_path: Path, environment: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``yijian ARGS`` as a child process logging to ``log_path``, with ``environment`` added
    to this process's, in a process group of its own (stopped by its parent, killable whole)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    executable = Path(sys.executable).parent / "yijian"
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "hub.cli"]
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*command, *args],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **environment},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
