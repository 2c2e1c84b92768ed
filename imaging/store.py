"""Object storage for DICOM files: content-addressed, written atomically, read as streams.

Files are stored exactly as received (never recompressed) under the SHA-256 of their bytes,
so a resent instance with the same bytes is the same object, and an object, once its key is
returned, is on disk (fsynced, renamed into place, directory fsynced): a C-STORE success or a
STOW answer may then be sent. ``ObjectStore`` is the interface; ``FileStore`` the default
backend (a local directory). An S3-compatible backend implements the same interface.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1 << 20  # 1 MiB: streaming bounds memory whatever the object's size


@dataclass(frozen=True)
class StoredObject:
    """An object's key (its SHA-256, hex) and size in bytes."""

    key: str
    size: int


class ObjectStore(Protocol):
    """Where DICOM files live. Keys are the SHA-256 of the content."""

    def put_file(self, source: BinaryIO) -> StoredObject:
        """Store what ``source`` holds, from its current position to its end."""
        ...

    def put_chunks(self, chunks: Iterable[bytes]) -> StoredObject:
        """Store the concatenation of ``chunks`` (a stream that is read once)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """The object, for reading (FileNotFoundError when absent)."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


def _valid_key(key: str) -> str:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"not an object key: {key!r}")
    return key


class FileStore:
    """A local directory: ``root/ab/cd/<sha256>``.

    Writes go to a temporary file in the same directory tree, are fsynced, then renamed into
    place (atomic on POSIX) and the directory fsynced; an existing object with the same key
    is left alone (same content by construction).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._incoming = root / "incoming"
        self._incoming.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        key = _valid_key(key)
        return self.root / key[:2] / key[2:4] / key

    def put_file(self, source: BinaryIO) -> StoredObject:
        return self.put_chunks(iter(lambda: source.read(CHUNK), b""))

    def put_chunks(self, chunks: Iterable[bytes]) -> StoredObject:
        digest = hashlib.sha256()
        size = 0
        handle, temporary = tempfile.mkstemp(dir=self._incoming, prefix="put-")
        try:
            with os.fdopen(handle, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            key = digest.hexdigest()
            final = self.path(key)
            if final.exists():
                os.unlink(temporary)
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(temporary, final)
                _fsync_directory(final.parent)
            return StoredObject(key, size)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    def open(self, key: str) -> BinaryIO:
        return self.path(key).open("rb")

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def read_chunks(source: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """A binary file in chunks (for streaming responses)."""
    while chunk := source.read(size):
        yield chunk


async def aread_chunks(source: BinaryIO, size: int = CHUNK) -> AsyncIterator[bytes]:
    """The same, for an ASGI streaming response (the reads are local and short)."""
    for chunk in read_chunks(source, size):
        yield chunk


SPOOL_IN_MEMORY = 8 * CHUNK  # a remote object larger than this is copied to a temporary file


@contextlib.contextmanager
def open_seekable(store: ObjectStore, key: str) -> Iterator[BinaryIO]:
    """The object as a seekable stream (what pydicom needs to read a file).

    A local file is seekable as it is; a remote object (S3's response body is not) is first
    copied, chunk by chunk, into a temporary file that stays in memory only when small.
    """
    with store.open(key) as source:
        if source.seekable():
            yield source
            return
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as copy:
            while chunk := source.read(CHUNK):
                copy.write(chunk)
            copy.seek(0)
            yield copy  # type: ignore[misc]
