"""The object store: where chunks and index segments live once they leave the ingesters.

:class:`ObjectClient` is the interface the store needs; two implementations satisfy it:

* :class:`FilesystemObjectClient` keeps every object as a file below one directory
  (single-node deployments and tests);
* :class:`S3ObjectClient` talks to any S3-compatible server through aiobotocore.

Keys are ``/``-separated paths such as ``fake/chunks/abc/1-2-3``. Objects are written
whole and replaced whole; nothing is ever appended. Every error of the backend is
wrapped here: a missing object raises :class:`~loki_async.errors.ObjectNotFound`, any
other failure :class:`~loki_async.errors.StorageError` with the key in its message.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from loki_async.errors import BadRequest, ObjectNotFound, StorageError

# Files being written are named with this prefix until they are complete; keys may not
# use it, so that `list` can skip them without hiding a real object.
_TMP_PREFIX = ".tmp-"
# For these a missing file or directory is a failure, not a missing object.
_FS_WRITES = frozenset({"put", "put_if_absent"})

# S3 error codes that mean "this object does not exist". HEAD answers carry no body,
# so a missing key there shows up only as the bare status.
_S3_NOT_FOUND = frozenset({"NoSuchKey", "404"})
_S3_BUCKET_MISSING = frozenset({"NoSuchBucket", "404"})
_S3_BUCKET_OURS = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


class ObjectClient(Protocol):
    """The interface the store needs from an object store.

    Implementations are safe to call concurrently from one event loop. Byte strings
    passed in and returned are owned by the caller; the client keeps no reference.
    """

    async def start(self) -> None:
        """Open connections and create what the client needs; call before any other method."""
        ...

    async def stop(self) -> None:
        """Release connections; no other method may be called afterwards."""
        ...

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any existing object.

        Atomic: a concurrent reader sees the old object or the new one, never a part.
        """
        ...

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store ``data`` under ``key`` only if no object exists there.

        Returns True if this call wrote the object, False if the key already existed
        (the existing object is left unchanged). Atomic under concurrency: of any number
        of concurrent calls for one key, exactly one returns True.
        """
        ...

    async def get(self, key: str) -> bytes:
        """Return the whole object; raise ObjectNotFound if it does not exist."""
        ...

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Return ``length`` bytes of the object starting at byte ``offset``.

        The result is shorter if the object ends first, and empty if ``offset`` is at or
        past its end. Raises ObjectNotFound if the object does not exist.
        """
        ...

    async def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object; deleting a key that does not exist is not an error."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Every key that starts with ``prefix`` (plain string match), sorted.

        ``prefix`` need not end at a ``/``: ``fake/chunks/a`` matches ``fake/chunks/abc/1``.
        The result is complete however many keys there are.
        """
        ...


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise AssertionError(f"BUG: byte range offset={offset} length={length}")


class FilesystemObjectClient:
    """Objects as files below ``directory``; the key is the relative path.

    A key may not be both an object and the parent of another key (``a/b`` and
    ``a/b/c``): a file cannot also be a directory. Writes go to a temporary file in
    the target's directory, are fsynced and then renamed or linked into place, so a
    reader never sees a partial object and a crash leaves at most a stray temporary
    file, which `list` ignores. File I/O runs in worker threads.
    """

    def __init__(self, directory: str | Path) -> None:
        """Serve objects below ``directory``, which `start` creates if needed."""
        self._root = Path(directory).absolute()

    async def start(self) -> None:
        """Create the directory if it does not exist."""
        await asyncio.to_thread(self._root.mkdir, parents=True, exist_ok=True)

    async def stop(self) -> None:
        """Nothing to release; present for the common lifecycle."""

    async def put(self, key: str, data: bytes) -> None:
        """Write the object through a temporary file and `os.replace`."""
        path = self._path(key)
        with self._errors("put", key):
            await asyncio.to_thread(_replace_file, path, data)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write a temporary file and hard-link it into place; the link fails if the key exists."""
        path = self._path(key)
        with self._errors("put_if_absent", key):
            return await asyncio.to_thread(_link_new_file, path, data)

    async def get(self, key: str) -> bytes:
        """Read the whole file; ObjectNotFound if it does not exist."""
        path = self._path(key)
        with self._errors("get", key):
            return await asyncio.to_thread(path.read_bytes)

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Read ``length`` bytes from ``offset``; short at the end of the file."""
        _check_range(offset, length)
        path = self._path(key)
        with self._errors("get_range", key):
            return await asyncio.to_thread(_read_range, path, offset, length)

    async def exists(self, key: str) -> bool:
        """Whether a regular file is stored under ``key``."""
        path = self._path(key)
        with self._errors("exists", key):
            return await asyncio.to_thread(path.is_file)

    async def delete(self, key: str) -> None:
        """Remove the file if present; empty parent directories are left in place."""
        path = self._path(key)
        with self._errors("delete", key):
            await asyncio.to_thread(_unlink_if_file, path)

    async def list(self, prefix: str) -> list[str]:
        """Walk the directory that holds ``prefix`` and return the matching keys, sorted."""
        # Only the part of the prefix up to its last '/' names a directory; the rest is
        # matched against names inside it.
        directory, _, _ = prefix.rpartition("/")
        base = self._path(directory) if directory else self._root
        with self._errors("list", prefix):
            return await asyncio.to_thread(_list_files, self._root, base, prefix)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        # Temporary files are only ever file names: a directory such as tenant ".tmp-x"
        # (a valid tenant ID) is an ordinary one.
        if (
            key.startswith("/")
            or "\0" in key
            or any(p in ("", ".", "..") for p in parts)
            or parts[-1].startswith(_TMP_PREFIX)
        ):
            raise BadRequest(f"invalid object key {key!r}")
        return self._root.joinpath(*parts)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            if action in _FS_WRITES or action == "list":
                raise StorageError(f"filesystem {action} {key!r}: {exc}") from exc
            raise ObjectNotFound(f"object {key!r} not found") from exc
        except OSError as exc:
            raise StorageError(f"filesystem {action} {key!r}: {exc}") from exc


def _replace_file(path: Path, data: bytes) -> None:
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _link_new_file(path: Path, data: bytes) -> bool:
    tmp = _write_temp(path, data)
    try:
        # Unlike a rename, a hard link fails if the target exists.
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def _list_files(root: Path, base: Path, prefix: str) -> list[str]:
    keys: list[str] = []

    def unreadable(e: OSError) -> None:
        # A missing base directory yields nothing: no key has that prefix. Anything else
        # (permissions, a file where a directory should be) must not look like "empty".
        if not isinstance(e, FileNotFoundError):
            raise e

    for dirpath, dirnames, filenames in os.walk(base, onerror=unreadable):
        rel = Path(dirpath).relative_to(root).as_posix()
        head = "" if rel == "." else rel + "/"
        # Below the base every name matches once its directory does; in the base only
        # the names that continue the prefix.
        dirnames[:] = [d for d in dirnames if (head + d).startswith(prefix)]
        keys.extend(
            head + name
            for name in filenames
            if not name.startswith(_TMP_PREFIX) and (head + name).startswith(prefix)
        )
    keys.sort()
    return keys


def _write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` durably to a new temporary file next to ``path`` and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _fsync_dir(directory: Path) -> None:
    # Makes the new directory entry durable, not only the file's contents.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_if_file(path: Path) -> None:
    # A missing parent, or a directory where the file would be, means no object either.
    with contextlib.suppress(FileNotFoundError, NotADirectoryError, IsADirectoryError):
        path.unlink()


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(length)


class S3ObjectClient:
    """Objects in one bucket of an S3-compatible server, through aiobotocore.

    One client (and its connection pool) is created by `start` and closed by `stop`.
    Transient failures (throttling, 5xx, dropped connections) are retried by botocore's
    standard retry mode up to ``max_retries`` times before a StorageError is raised.
    """

    def __init__(
        self,
        *,
        endpoint: str,
        bucket: str,
        region: str = "us-east-1",
        access_key_id: str = "",
        secret_access_key: str = "",
        force_path_style: bool = True,
        insecure: bool = False,
        max_retries: int = 5,
    ) -> None:
        """Configure the client; nothing is contacted before `start`.

        ``endpoint`` is a URL or a bare ``host:port``; a bare host is reached over
        HTTPS, or over plain HTTP if ``insecure``. An empty endpoint means AWS itself.
        Empty credentials mean botocore's default chain (environment, config files,
        instance role). ``force_path_style`` addresses ``endpoint/bucket/key`` instead
        of ``bucket.endpoint/key``, which most self-hosted servers need.
        """
        if endpoint and "://" not in endpoint:
            endpoint = ("http://" if insecure else "https://") + endpoint
        self._endpoint = endpoint or None
        self._bucket = bucket
        self._region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._max_retries = max_retries
        self._config = AioConfig(
            region_name=region,
            s3={"addressing_style": "path" if force_path_style else "auto"},
            retries={"max_attempts": max_retries, "mode": "standard"},
        )
        self._exit_stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def start(self) -> None:
        """Create the S3 client."""
        credentials: dict[str, str] = {}
        if self._access_key_id:
            credentials = {
                "aws_access_key_id": self._access_key_id,
                "aws_secret_access_key": self._secret_access_key,
            }
        self._client = await self._exit_stack.enter_async_context(
            get_session().create_client(
                "s3", endpoint_url=self._endpoint, config=self._config, **credentials
            )
        )

    async def stop(self) -> None:
        """Close the S3 client and its connections."""
        await self._exit_stack.aclose()
        self._client = None

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists already (also when another process races us)."""
        with self._errors("head_bucket", ""):
            try:
                await self._client.head_bucket(Bucket=self._bucket)
                return
            except ClientError as exc:
                if _code(exc) not in _S3_BUCKET_MISSING:
                    raise
        args: dict[str, Any] = {"Bucket": self._bucket}
        # us-east-1 is the one region that rejects an explicit location constraint.
        if self._region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self._region}
        with self._errors("create_bucket", ""):
            try:
                await self._client.create_bucket(**args)
            except ClientError as exc:
                if _code(exc) not in _S3_BUCKET_OURS:
                    raise

    async def put(self, key: str, data: bytes) -> None:
        """PutObject; S3 replaces objects atomically."""
        with self._errors("put", key):
            await self._client.put_object(Bucket=self._bucket, Key=key, Body=data)

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """PutObject with ``If-None-Match: *``; 412 Precondition Failed means the key exists.

        A 409 ConditionalRequestConflict means another conditional write to the key was
        in flight: if the object now exists the other writer won, otherwise try again.
        """
        for _ in range(self._max_retries + 1):
            with self._errors("put_if_absent", key):
                try:
                    await self._client.put_object(
                        Bucket=self._bucket, Key=key, Body=data, IfNoneMatch="*"
                    )
                    return True
                except ClientError as exc:
                    if _status(exc) == 412 or _code(exc) == "PreconditionFailed":
                        return False
                    if _status(exc) != 409:
                        raise
            if await self.exists(key):
                return False
        raise StorageError(f"s3 put_if_absent {self._bucket}/{key}: conflicting writes persist")

    async def get(self, key: str) -> bytes:
        """GetObject of the whole object."""
        with self._errors("get", key):
            resp = await self._client.get_object(Bucket=self._bucket, Key=key)
            async with resp["Body"] as body:
                return await body.read()

    async def get_range(self, key: str, offset: int, length: int) -> bytes:
        """GetObject with a ``Range`` header."""
        _check_range(offset, length)
        if length == 0:
            # An empty byte range cannot be expressed in a Range header.
            if not await self.exists(key):
                raise ObjectNotFound(f"object {key!r} not found")
            return b""
        with self._errors("get_range", key):
            try:
                resp = await self._client.get_object(
                    Bucket=self._bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
                )
            except ClientError as exc:
                # 416: the range starts at or past the end of an existing object.
                if _code(exc) == "InvalidRange":
                    return b""
                raise
            async with resp["Body"] as body:
                return await body.read()

    async def exists(self, key: str) -> bool:
        """HeadObject; a 404 means False."""
        with self._errors("exists", key):
            try:
                await self._client.head_object(Bucket=self._bucket, Key=key)
            except ClientError as exc:
                if _code(exc) in _S3_NOT_FOUND:
                    return False
                raise
        return True

    async def delete(self, key: str) -> None:
        """DeleteObject; S3 answers success for a missing key too."""
        with self._errors("delete", key):
            await self._client.delete_object(Bucket=self._bucket, Key=key)

    async def list(self, prefix: str) -> list[str]:
        """ListObjectsV2, following continuation tokens past the 1000-key page limit."""
        keys: list[str] = []
        with self._errors("list", prefix):
            paginator = self._client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", ()))
        # S3 lists in UTF-8 byte order, which is code point order; sort for servers that don't.
        keys.sort()
        return keys

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        where = f"{self._bucket}/{key}"
        try:
            yield
        except ClientError as exc:
            if _code(exc) in _S3_NOT_FOUND:
                raise ObjectNotFound(f"object {key!r} not found") from exc
            raise StorageError(f"s3 {action} {where}: {exc}") from exc
        except (BotoCoreError, aiohttp.ClientError, TimeoutError) as exc:
            raise StorageError(f"s3 {action} {where}: {exc}") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
