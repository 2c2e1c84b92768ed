"""The embedded broker: kombu's file-system transport, made safe for acks_late and crashes.

With no ``YIJIAN_BROKER_URL`` the hub needs no extra service: messages are files under
``DATA_DIR/broker``, shared by every process on the machine (API, MLLP listener, workers).
kombu's own file-system transport deletes a message file as soon as it is read, so a worker
killed while running (or holding) a task would lose it, and a reader can see a file its writer
has not finished. This transport changes three things:

* publishing writes the file under ``staging/`` and renames it into ``queue/``: readers see
  only complete messages;
* consuming *claims* a file by renaming it (atomically: exactly one consumer wins) into
  ``claimed/`` under the consuming process's owner token, and the file is deleted only when
  the message is acknowledged or rejected (or requeued, which writes a new file first);
* every consuming process holds an exclusive ``flock`` on ``owners/<token>.lock`` for its
  lifetime. The kernel releases it when the process dies, however it dies, so any consumer
  can tell a dead owner's claims from a live one's and puts them back in the queue (at start
  and then every ``SWEEP_SECONDS``). Forked children do not inherit the ownership.

Messages therefore survive a killed worker (delivered at least once, as with RabbitMQ). Names
are ``<time_ns, 20 digits>_<uuid>.<queue>.msg``, so a directory listing sorted by name is the
order of publication (a restored message keeps its place).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)

#: The URL scheme of this transport (registered with kombu on import).
SCHEME = "yijianfs"
SWEEP_SECONDS = 10.0
STAGING_MAX_AGE_SECONDS = 3600.0

TRANSPORT_ALIASES.setdefault(SCHEME, f"{__name__}:Transport")


def folders(root: Path) -> dict[str, str]:
    """The transport options for a broker rooted at ``root`` (folders created)."""
    root = root.resolve()
    names = {
        "data_folder_in": "queue",
        "data_folder_out": "queue",
        "control_folder": "control",
        "claimed_folder": "claimed",
        "staging_folder": "staging",
        "owners_folder": "owners",
        "rejected_folder": "rejected",
    }
    options = {}
    for option, name in names.items():
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        options[option] = str(path)
    return options


class _Ownership:
    """This process's owner token and the flock that proves it is alive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.token: str | None = None
        self._fd: int | None = None

    def acquire(self, owners_folder: str, staging_folder: str) -> str:
        with self._lock:
            if self.token is None:
                token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
                # Locked before it becomes visible under owners/: a sweeper never sees an
                # unlocked lock file of a live owner.
                staged = os.path.join(staging_folder, f"{token}.lock")
                fd = os.open(staged, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(staged, os.path.join(owners_folder, f"{token}.lock"))
                self._fd, self.token = fd, token
            return self.token

    def forget_in_child(self) -> None:
        """After fork: the child is not the owner (closing its copy keeps the parent's lock)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self.token = None, None
        self._lock = threading.Lock()


_ownership = _Ownership()
os.register_at_fork(after_in_child=_ownership.forget_in_child)


def _owner_is_dead(owners_folder: str, token: str) -> bool:
    """True when no live process holds ``token``'s lock (the lock file is then removed)."""
    path = os.path.join(owners_folder, f"{token}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases our lock if we took it
    return True


class Channel(filesystem.Channel):
    """A file-system channel whose messages stay claimed until acknowledged."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._claims: dict[str, str] = {}  # delivery tag → claimed file
        self._noack_queues: set[str] = set()
        self._next_sweep = 0.0
        for folder in (self.data_folder_in, self.claimed_folder, self.staging_folder):
            os.makedirs(folder, exist_ok=True)
        os.makedirs(self.owners_folder, exist_ok=True)

    def _option(self, name: str) -> str:
        value = self.transport_options.get(name)
        if not value:
            raise ChannelError(f"the {SCHEME} transport needs the option {name!r}")
        return str(value)

    @property
    def claimed_folder(self) -> str:
        return self._option("claimed_folder")

    @property
    def staging_folder(self) -> str:
        return self._option("staging_folder")

    @property
    def owners_folder(self) -> str:
        return self._option("owners_folder")

    @property
    def rejected_folder(self) -> str:
        return self._option("rejected_folder")

    # -- publishing ------------------------------------------------------------------------

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{time.time_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        staged = os.path.join(self.staging_folder, name)
        try:
            with open(staged, "wb") as file:
                file.write(str_to_bytes(dumps(message)))
            os.rename(staged, os.path.join(self.data_folder_out, name))
        except OSError as exc:
            raise ChannelError(f"cannot publish to {self.data_folder_out}: {exc}") from exc

    # -- consuming -------------------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._noack_queues.add(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            self._release(message.delivery_tag)
        return message

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        if time.monotonic() >= self._next_sweep:
            self.sweep()
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            token = _ownership.acquire(self.owners_folder, self.staging_folder)
            claimed = os.path.join(self.claimed_folder, f"{token}~{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except FileNotFoundError:
                continue  # claimed by another consumer first
            try:
                with open(claimed, "rb") as file:
                    payload = loads(bytes_to_str(file.read()))
                tag = payload["properties"]["delivery_tag"]
            except (ValueError, KeyError, TypeError):
                log.error("unreadable broker message %s moved to %s", name, self.rejected_folder)
                os.rename(claimed, os.path.join(self.rejected_folder, name))
                continue
            if queue in self._noack_queues:
                os.remove(claimed)
            else:
                self._claims[tag] = claimed
            return payload
        raise Empty()

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple=multiple)
        self._release(delivery_tag)

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue=requeue)  # a requeue writes a new file
        self._release(delivery_tag)

    def _restore(self, message: Any) -> None:
        super()._restore(message)
        self._release(message.delivery_tag)

    def _release(self, delivery_tag: str) -> None:
        claimed = self._claims.pop(delivery_tag, None)
        if claimed is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(claimed)

    # -- recovery --------------------------------------------------------------------------

    def sweep(self) -> int:
        """Put messages claimed by dead processes back in the queue; return how many."""
        self._next_sweep = time.monotonic() + SWEEP_SECONDS
        own = _ownership.token
        verdicts: dict[str, bool] = {}
        restored = 0
        for name in os.listdir(self.claimed_folder):
            token, sep, original = name.partition("~")
            if not sep or token == own:
                continue
            if token not in verdicts:
                verdicts[token] = _owner_is_dead(self.owners_folder, token)
            if not verdicts[token]:
                continue
            try:
                os.rename(
                    os.path.join(self.claimed_folder, name),
                    os.path.join(self.data_folder_in, original),
                )
            except FileNotFoundError:
                continue  # restored by another sweeper
            restored += 1
        if restored:
            log.warning("restored %d unacknowledged message(s) of stopped consumers", restored)
        self._remove_dead_owner_files(own)
        self._remove_abandoned_staging()
        return restored

    def _remove_dead_owner_files(self, own: str | None) -> None:
        claimants = {name.partition("~")[0] for name in os.listdir(self.claimed_folder)}
        for name in os.listdir(self.owners_folder):
            token = name.removesuffix(".lock")
            if token == own or token in claimants:
                continue
            path = os.path.join(self.owners_folder, name)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.remove(path)  # unlinked while we hold its lock: nobody else can own it
            except (BlockingIOError, FileNotFoundError):
                pass
            finally:
                os.close(fd)

    def _remove_abandoned_staging(self) -> None:
        horizon = time.time() - STAGING_MAX_AGE_SECONDS
        for entry in os.scandir(self.staging_folder):
            try:
                if entry.stat().st_mtime < horizon:
                    os.remove(entry.path)
            except FileNotFoundError:
                pass


class Transport(filesystem.Transport):
    """The ``yijianfs://`` transport (options from ``folders()``)."""

    Channel = Channel
    driver_type = SCHEME
    driver_name = SCHEME
