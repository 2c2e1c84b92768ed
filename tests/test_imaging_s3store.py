"""The S3 object store (imaging.s3store) against a real S3-compatible server on a real socket,
the factory (imaging.stores), and the contract both backends share.

The server is moto's ``ThreadedMotoServer``, run in a child process: moto keeps objects in
memory, and in this process its allocations would count in the memory-bound test.
"""

from __future__ import annotations

import hashlib
import io
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from hub.settings import load_settings
from imaging.s3store import ObjectStoreError, S3Store
from imaging.store import FileStore, ObjectStore
from imaging.stores import object_store

MiB = 1 << 20
BUCKET = "yijian-test"
CREDENTIALS: dict[str, Any] = {"access_key_id": "test", "secret_access_key": "test"}

SERVER = """
import logging
import sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the test process closes the pipe (or dies)
server.stop()
"""


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """The URL of a moto S3 server, with the test bucket created."""
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip().isdigit(), f"moto server did not start: {line!r}"
        url = f"http://127.0.0.1:{int(line)}"
        S3Store(BUCKET, endpoint_url=url, **CREDENTIALS).ensure_bucket()
        yield url
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def s3_store(endpoint: str, **options: Any) -> S3Store:
    """A store on the test bucket, under a prefix of its own (tests do not see each other)."""
    return S3Store(
        BUCKET, endpoint_url=endpoint, prefix=f"t-{uuid.uuid4().hex}/", **CREDENTIALS, **options
    )


def names(store: S3Store) -> list[str]:
    """The object names under the store's prefix, read with a client of the test's own."""
    client = boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    answer = client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
    return [item["Key"] for item in answer.get("Contents", [])]


def operations(store: S3Store) -> list[str]:
    """The S3 operations the store's client calls from now on (observed, not replaced)."""
    called: list[str] = []

    def record(model: Any, **_: Any) -> None:
        called.append(model.name)

    store.client.meta.events.register("before-call.s3", record)
    return called


def read_all(store: ObjectStore, key: str) -> bytes:
    with store.open(key) as stream:
        return stream.read()


def sample(size: int, seed: int = 0) -> bytes:
    """Incompressible, reproducible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- S3Store ---------------------------------------------------------------------------------


def test_a_small_object_round_trips_under_its_sha256(endpoint: str) -> None:
    store = s3_store(endpoint)
    data = sample(70_000)
    stored = store.put_chunks([data[:1234], data[1234:]])
    assert stored.key == hashlib.sha256(data).hexdigest()
    assert stored.size == len(data)
    assert read_all(store, stored.key) == data
    assert names(store) == [f"{store.prefix}{stored.key[:2]}/{stored.key}"]


def test_a_large_object_goes_up_in_parts_and_round_trips(endpoint: str) -> None:
    store = s3_store(endpoint, multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    data = sample(12 * MiB, seed=1)
    called = operations(store)
    stored = store.put_file(io.BytesIO(data))
    assert stored == type(stored)(hashlib.sha256(data).hexdigest(), len(data))
    assert "CreateMultipartUpload" in called and "PutObject" not in called
    assert called.count("UploadPart") == 3  # 5 + 5 + 2 MiB
    assert "CompleteMultipartUpload" in called
    with store.open(stored.key) as stream:  # read in pieces, as a streaming response does
        pieces = list(iter(lambda: stream.read(MiB - 1), b""))
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) == MiB - 1


def test_the_same_content_is_one_object_and_is_not_sent_again(endpoint: str) -> None:
    store = s3_store(endpoint)
    data = sample(50_000, seed=2)
    first = store.put_file(io.BytesIO(data))
    called = operations(store)
    again = store.put_chunks([data[:10], data[10:]])
    assert again == first
    assert called == ["HeadObject"]  # already there: same key, same content
    assert len(names(store)) == 1


def test_put_file_stores_from_the_current_position(endpoint: str) -> None:
    store = s3_store(endpoint)
    data = sample(10_000, seed=3)
    source = io.BytesIO(data)
    source.seek(4_000)
    stored = store.put_file(source)
    assert stored.key == hashlib.sha256(data[4_000:]).hexdigest()
    assert read_all(store, stored.key) == data[4_000:]


def test_a_missing_object_is_file_not_found(endpoint: str) -> None:
    store = s3_store(endpoint)
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(FileNotFoundError):
        store.open(missing)
    assert not store.exists(missing)


def test_delete_removes_and_is_idempotent(endpoint: str) -> None:
    store = s3_store(endpoint)
    stored = store.put_chunks([b"to be deleted"])
    assert store.exists(stored.key)
    store.delete(stored.key)
    assert not store.exists(stored.key)
    assert names(store) == []
    store.delete(stored.key)  # again: no error


def test_memory_stays_bounded_whatever_the_size(endpoint: str) -> None:
    store = s3_store(endpoint)  # the defaults: 16 MiB threshold, 5 MiB parts, 2 at a time
    size = 64 * MiB
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for number in range(size // MiB):
            chunk = number.to_bytes(4, "big") * (MiB // 4)
            digest.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        stored = store.put_chunks(chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored == type(stored)(digest.hexdigest(), size)
    assert peak < 24 * MiB, f"peak {peak / MiB:.1f} MiB storing {size // MiB} MiB"
    check = hashlib.sha256()
    with store.open(stored.key) as stream:
        for chunk in iter(lambda: stream.read(MiB), b""):
            check.update(chunk)
    assert check.hexdigest() == stored.key


def test_ensure_bucket_creates_once(endpoint: str) -> None:
    store = S3Store(f"b-{uuid.uuid4().hex[:12]}", endpoint_url=endpoint, **CREDENTIALS)
    with pytest.raises(ObjectStoreError, match=store.bucket):  # no bucket yet
        store.put_chunks([b"x"])
    store.ensure_bucket()
    store.ensure_bucket()  # already there: fine
    stored = store.put_chunks([b"x"])
    assert read_all(store, stored.key) == b"x"


def test_an_unreachable_store_is_a_clear_error_raised_promptly() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    store = S3Store(BUCKET, endpoint_url=url, connect_timeout=1, max_attempts=1, **CREDENTIALS)
    key = hashlib.sha256(b"x").hexdigest()
    for attempt in (
        lambda: store.put_chunks([b"x"]),
        lambda: store.open(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        store.ensure_bucket,
    ):
        started = time.monotonic()
        with pytest.raises(ObjectStoreError) as raised:
            attempt()
        assert time.monotonic() - started < 5
        message = str(raised.value)
        assert url in message and BUCKET in message
        assert isinstance(raised.value, OSError)
        assert not isinstance(raised.value, FileNotFoundError)


# --- the factory -----------------------------------------------------------------------------


def test_the_factory_gives_a_file_store_by_default(tmp_path: Path) -> None:
    store = object_store(load_settings(data_dir=tmp_path))
    assert isinstance(store, FileStore)
    assert store.root == tmp_path / "objects"


def test_the_factory_gives_an_s3_store_from_the_settings(endpoint: str) -> None:
    prefix = f"f-{uuid.uuid4().hex}/"
    settings = load_settings(
        object_store="s3",
        s3_endpoint_url=endpoint,
        s3_bucket=BUCKET,
        s3_prefix=prefix,
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    store = object_store(settings)
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix, store.endpoint) == (BUCKET, prefix, endpoint)
    stored = store.put_chunks([b"from the settings"])
    assert names(store) == [f"{prefix}{stored.key[:2]}/{stored.key}"]
    assert read_all(store, stored.key) == b"from the settings"


# --- the contract both backends keep ---------------------------------------------------------


@pytest.fixture(params=["file", "s3"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "file":
        return FileStore(tmp_path)
    return s3_store(request.getfixturevalue("endpoint"))


def test_contract_round_trip_and_key(any_store: ObjectStore) -> None:
    data = sample(300_000, seed=4)
    stored = any_store.put_chunks(iter([data[:7], b"", data[7:]]))
    assert stored.key == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    assert any_store.exists(stored.key)
    with any_store.open(stored.key) as stream:
        assert stream.read(5) == data[:5]
        assert stream.read() == data[5:]
        assert stream.read(1) == b""


def test_contract_same_content_same_key(any_store: ObjectStore) -> None:
    data = sample(1_000, seed=5)
    assert any_store.put_file(io.BytesIO(data)) == any_store.put_chunks([data])


def test_contract_empty_object(any_store: ObjectStore) -> None:
    stored = any_store.put_chunks([])
    assert stored.key == hashlib.sha256(b"").hexdigest() and stored.size == 0
    assert read_all(any_store, stored.key) == b""


def test_contract_missing_and_deleted(any_store: ObjectStore) -> None:
    stored = any_store.put_chunks([b"short-lived"])
    any_store.delete(stored.key)
    any_store.delete(stored.key)
    assert not any_store.exists(stored.key)
    with pytest.raises(FileNotFoundError):
        any_store.open(stored.key)


def test_contract_keys_are_checked(any_store: ObjectStore) -> None:
    for bad in ("../../etc/passwd", "A" * 64, "ab"):
        with pytest.raises(ValueError):
            any_store.open(bad)
        with pytest.raises(ValueError):
            any_store.exists(bad)
