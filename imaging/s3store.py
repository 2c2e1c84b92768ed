"""An S3-compatible object store (AWS S3, MinIO, Ceph RGW...), the same interface as FileStore.

Objects live in one bucket under ``{prefix}{key[:2]}/{key}``, the key being the SHA-256 of the
content, as with ``FileStore``. ``put_chunks`` reads its input once, hashing it while spooling it
to a temporary file (in memory up to ``SPOOL_MEMORY``, on disk beyond), then uploads it with
boto3's managed transfer (one PUT, or a multipart upload above ``multipart_threshold``) unless
an object with that key is already there: same key, same content. The key is returned only once
S3 has acknowledged the upload, and an acknowledged S3 write is durable, which is what a C-STORE
success or a STOW answer needs.

Memory stays bounded whatever the object's size: the spool's buffer, then, during a multipart
upload, about ``(max_concurrency + 1) * multipart_chunksize`` of parts read ahead by the
transfer manager (under 20 MiB in all with the defaults; ``max_concurrency=1`` uploads the
parts one by one, without threads). The client is synchronous (boto3): callers run it in a
worker thread. Failures of S3 itself (unreachable endpoint, bad credentials, missing bucket) are
raised as ``ObjectStoreError`` naming the endpoint and bucket; a missing object is
``FileNotFoundError``.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from imaging.store import CHUNK, StoredObject, _valid_key

MiB = 1 << 20
SPOOL_MEMORY = 8 * MiB  # beyond this, an incoming object is spooled to a temporary file

_MISSING = {"404", "NoSuchKey", "NotFound"}


class ObjectStoreError(OSError):
    """The object store could not be reached or refused the request (not: a missing object)."""


class S3Store:
    """Objects in an S3 bucket: ``s3://bucket/{prefix}{key[:2]}/{key}``.

    ``endpoint_url`` is the S3-compatible server (None: AWS S3 for ``region``); without access
    keys boto3's usual chain applies (environment, profile, instance role). ``prefix`` is used
    as given, so end it with ``/`` to get a folder. The timeouts and ``max_attempts`` (botocore's
    standard retry mode, first attempt included) bound how long an unreachable store takes to
    report itself.
    """

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        prefix: str = "",
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        multipart_threshold: int = 16 * MiB,
        multipart_chunksize: int = 5 * MiB,
        max_concurrency: int = 2,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        max_attempts: int = 3,
        spool_dir: Path | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.region = region
        self.spool_dir = spool_dir
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=region,
        )
        self.client: Any = session.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                # Path-style URLs work with every S3-compatible server; AWS picks its own.
                s3={"addressing_style": "path" if endpoint_url else "auto"},
            ),
        )
        self.endpoint: str = self.client.meta.endpoint_url
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_chunksize,
            max_concurrency=max_concurrency,
            use_threads=max_concurrency > 1,
            preferred_transfer_client="classic",
        )
        # Parts of a spooled file are read into memory before upload; cap how many wait.
        self._transfer.max_in_memory_upload_chunks = max_concurrency

    def __repr__(self) -> str:
        return f"S3Store({self.endpoint!r}, bucket={self.bucket!r}, prefix={self.prefix!r})"

    def name(self, key: str) -> str:
        """The S3 object name of ``key``."""
        key = _valid_key(key)
        return f"{self.prefix}{key[:2]}/{key}"

    def put_file(self, source: BinaryIO) -> StoredObject:
        return self.put_chunks(iter(lambda: source.read(CHUNK), b""))

    def put_chunks(self, chunks: Iterable[bytes]) -> StoredObject:
        digest = hashlib.sha256()
        size = 0
        spool_dir = str(self.spool_dir) if self.spool_dir is not None else None
        with tempfile.SpooledTemporaryFile(
            max_size=SPOOL_MEMORY, dir=spool_dir, prefix="put-"
        ) as spool:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                spool.write(chunk)
            key = digest.hexdigest()
            if not self.exists(key):
                spool.seek(0)
                try:
                    self.client.upload_fileobj(
                        spool, self.bucket, self.name(key), Config=self._transfer
                    )
                except (BotoCoreError, ClientError, S3UploadFailedError) as error:
                    self._fail(f"uploading {key}", error)
        return StoredObject(key, size)

    def open(self, key: str) -> BinaryIO:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.name(key))
        except ClientError as error:
            if _code(error) in _MISSING:
                raise FileNotFoundError(f"no object {key} in {self._where()}") from None
            self._fail(f"reading {key}", error)
        except BotoCoreError as error:
            self._fail(f"reading {key}", error)
        return io.BufferedReader(_Body(answer["Body"], self, key), buffer_size=CHUNK)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.name(key))
        except ClientError as error:
            if _code(error) in _MISSING:
                return False
            self._fail(f"looking up {key}", error)
        except BotoCoreError as error:
            self._fail(f"looking up {key}", error)
        return True

    def delete(self, key: str) -> None:
        """Remove the object; removing an absent object is not an error (S3 says the same)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.name(key))
        except (BotoCoreError, ClientError) as error:
            self._fail(f"deleting {key}", error)

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (for installation and tests)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as error:
            if _code(error) not in {"404", "NoSuchBucket", "NotFound"}:
                self._fail("checking the bucket", error)
        except BotoCoreError as error:
            self._fail("checking the bucket", error)
        arguments: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":  # S3 refuses us-east-1 as a location constraint
            arguments["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self.client.create_bucket(**arguments)
        except ClientError as error:
            if _code(error) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                self._fail("creating the bucket", error)
        except BotoCoreError as error:
            self._fail("creating the bucket", error)

    def _where(self) -> str:
        return f"{self.endpoint}, bucket {self.bucket!r}"

    def _fail(self, doing: str, error: Exception) -> NoReturn:
        raise ObjectStoreError(f"object store {self._where()}: {doing} failed: {error}") from error


class _Body(io.RawIOBase):
    """An S3 response body as a raw binary stream (errors while streaming: ObjectStoreError)."""

    def __init__(self, body: Any, store: S3Store, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except BotoCoreError as error:
            self._store._fail(f"reading {self._key}", error)
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
