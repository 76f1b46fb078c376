"""The object store contract, checked on the filesystem and on a real S3 server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loki_async.errors import BadRequest, ObjectNotFound, StorageError
from loki_async.objstore import FilesystemObjectClient, ObjectClient, S3ObjectClient
from tests.s3server import free_ports

MIB = 1 << 20


async def _s3_client(endpoint: str, *, max_retries: int = 5) -> S3ObjectClient:
    """A started client on a bucket no other test uses."""
    client = S3ObjectClient(
        endpoint=endpoint,
        bucket=f"test-{uuid.uuid4().hex[:16]}",
        access_key_id="test",
        secret_access_key="test",
        max_retries=max_retries,
    )
    await client.start()
    return client


@pytest.fixture
async def s3_client(request: pytest.FixtureRequest) -> AsyncIterator[S3ObjectClient]:
    """A started client on a fresh bucket that does not exist yet."""
    client = await _s3_client(request.getfixturevalue("s3_server"))
    yield client
    await client.stop()


@pytest.fixture(params=["filesystem", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ObjectClient]:
    client: ObjectClient
    if request.param == "filesystem":
        client = FilesystemObjectClient(tmp_path / "objects")
        await client.start()
    else:
        client = await _s3_client(request.getfixturevalue("s3_server"))
        await client.ensure_bucket()
    yield client
    await client.stop()


async def test_get_returns_the_bytes_put_stored(store: ObjectClient) -> None:
    await store.put("fake/chunks/abc/1-2-3", b"chunk bytes")
    await store.put("fake/empty", b"")

    assert await store.get("fake/chunks/abc/1-2-3") == b"chunk bytes"
    assert await store.get("fake/empty") == b""


async def test_put_replaces_an_existing_object(store: ObjectClient) -> None:
    await store.put("fake/index/1", b"a longer first version")
    await store.put("fake/index/1", b"second")

    assert await store.get("fake/index/1") == b"second"


async def test_get_range_returns_the_requested_bytes_short_at_the_end(
    store: ObjectClient,
) -> None:
    await store.put("k", b"0123456789")

    assert await store.get_range("k", 2, 3) == b"234"
    assert await store.get_range("k", 0, 10) == b"0123456789"
    assert await store.get_range("k", 8, 5) == b"89"
    assert await store.get_range("k", 10, 4) == b""
    assert await store.get_range("k", 3, 0) == b""


async def test_exists_is_true_only_for_stored_keys(store: ObjectClient) -> None:
    await store.put("fake/chunks/abc/1", b"x")

    assert await store.exists("fake/chunks/abc/1")
    assert not await store.exists("fake/chunks/abc/2")
    assert not await store.exists("fake/chunks/abc")


async def test_list_returns_sorted_keys_starting_with_prefix(store: ObjectClient) -> None:
    keys = ["fake/chunks/b/2", "fake/chunks/abc/1", "fake/chunks/a/3", "fake/index/1", "other/1"]
    for key in keys:
        await store.put(key, b"x")

    assert await store.list("fake/chunks/") == [
        "fake/chunks/a/3",
        "fake/chunks/abc/1",
        "fake/chunks/b/2",
    ]
    assert await store.list("fake/chunks/a") == ["fake/chunks/a/3", "fake/chunks/abc/1"]
    assert await store.list("fake/chunks/a/") == ["fake/chunks/a/3"]
    assert await store.list("") == sorted(keys)
    assert await store.list("nothing/") == []


async def test_list_returns_every_key_past_one_listing_page(store: ObjectClient) -> None:
    # S3 answers at most 1000 keys per listing request.
    keys = [f"fake/chunks/{i:05d}" for i in range(1100)]
    limit = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with limit:
            await store.put(key, b"")

    await asyncio.gather(*(put(key) for key in keys), put("fake/index/1"))

    assert await store.list("fake/chunks/") == keys


async def test_delete_removes_the_object(store: ObjectClient) -> None:
    await store.put("fake/chunks/abc/1", b"x")
    await store.put("fake/chunks/abc/2", b"y")

    await store.delete("fake/chunks/abc/1")

    assert not await store.exists("fake/chunks/abc/1")
    assert await store.list("fake/") == ["fake/chunks/abc/2"]


async def test_delete_of_a_missing_key_is_not_an_error(store: ObjectClient) -> None:
    await store.put("fake/chunks/abc/1", b"x")

    await store.delete("fake/chunks/abc/2")
    await store.delete("no/such/directory/key")
    await store.delete("fake/chunks/abc")


@pytest.mark.parametrize("key", ["fake/missing", "fake/chunks", "fake/chunks/abc/1/deeper"])
async def test_reading_a_missing_key_raises_object_not_found(store: ObjectClient, key: str) -> None:
    await store.put("fake/chunks/abc/1", b"x")

    with pytest.raises(ObjectNotFound):
        await store.get(key)
    with pytest.raises(ObjectNotFound):
        await store.get_range(key, 0, 1)
    with pytest.raises(ObjectNotFound):
        await store.get_range(key, 0, 0)


async def test_put_if_absent_writes_only_the_first_time(store: ObjectClient) -> None:
    assert await store.put_if_absent("fake/tickets/1", b"first")
    assert not await store.put_if_absent("fake/tickets/1", b"second")

    assert await store.get("fake/tickets/1") == b"first"


async def test_put_if_absent_has_one_winner_among_concurrent_writers(
    store: ObjectClient,
) -> None:
    payloads = [f"writer {i}".encode() * 1000 for i in range(16)]

    written = await asyncio.gather(*(store.put_if_absent("fake/lock", p) for p in payloads))

    assert written.count(True) == 1
    assert await store.get("fake/lock") == payloads[written.index(True)]


async def test_readers_see_whole_objects_while_a_writer_replaces_them(
    store: ObjectClient,
) -> None:
    versions = [b"a" * MIB, b"b" * MIB]
    await store.put("fake/chunks/big", versions[0])
    done = asyncio.Event()

    async def writer() -> None:
        for i in range(10):
            await store.put("fake/chunks/big", versions[i % 2])
        done.set()

    async def reader() -> list[bytes]:
        seen = []
        while not done.is_set():
            seen.append(await store.get("fake/chunks/big"))
        return seen

    _, *reads = await asyncio.gather(writer(), reader(), reader())

    assert all(data in versions for seen in reads for data in seen)


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../escape", "/etc/passwd", "a//b", "a/./b", "", "a/.tmp-x"]
)
async def test_filesystem_rejects_keys_that_escape_or_are_not_plain_paths(
    tmp_path: Path, key: str
) -> None:
    client = FilesystemObjectClient(tmp_path / "objects")
    await client.start()

    with pytest.raises(BadRequest):
        await client.put(key, b"x")
    with pytest.raises(BadRequest):
        await client.get(key)


async def test_filesystem_list_skips_unfinished_writes(tmp_path: Path) -> None:
    client = FilesystemObjectClient(tmp_path)
    await client.start()
    await client.put("fake/chunks/1", b"x")
    # What a crash in the middle of a write leaves behind.
    (tmp_path / "fake" / "chunks" / ".tmp-abandoned").write_bytes(b"partial")

    assert await client.list("fake/") == ["fake/chunks/1"]


async def test_s3_ensure_bucket_is_idempotent(s3_client: S3ObjectClient) -> None:
    await s3_client.ensure_bucket()
    await s3_client.ensure_bucket()
    await s3_client.put("k", b"x")

    assert await s3_client.list("") == ["k"]


async def test_s3_missing_bucket_is_a_storage_error_not_a_missing_object(
    s3_client: S3ObjectClient,
) -> None:
    with pytest.raises(StorageError) as raised:
        await s3_client.get("fake/chunks/1")

    assert not isinstance(raised.value, ObjectNotFound)


async def test_s3_unreachable_server_raises_storage_error_naming_the_key() -> None:
    (port,) = free_ports(1)
    client = await _s3_client(f"http://127.0.0.1:{port}", max_retries=0)
    try:
        with pytest.raises(StorageError, match="fake/chunks/1"):
            await client.get("fake/chunks/1")
    finally:
        await client.stop()
