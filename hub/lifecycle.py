"""Process lifecycle: a signal-initiated, completed shutdown exits normally."""

from __future__ import annotations

import signal
import sys


def exit_cleanly_after_shutdown() -> None:
    """Make SIGTERM/SIGINT end the process with ``sys.exit(0)``.

    uvicorn shuts down gracefully on these signals and then re-raises the signal to the handler
    that was in place before it. With the default handler the process would die by the signal
    (status -15, or "Aborted!") and skip ``atexit`` handlers — among them the one that stops an
    embedded PostgreSQL. Installed before the server starts, this handler runs only after
    uvicorn's own graceful shutdown.
    """
    for handled in (signal.SIGTERM, signal.SIGINT):
        signal.signal(handled, lambda *_: sys.exit(0))
