"""Write-ahead log of the ingester: a push is on disk (fsynced) before it is acknowledged.

Segments are files ``<dir>/<seq:08d>.wal`` holding records ``u32 length | u32 crc32 |
payload``. Appends are group-committed: every append waiting while a write+fsync runs
goes into the next write, so one fsync covers many pushes and throughput holds.

On start, :meth:`WAL.replay` yields every intact record; a record cut short or failing
its checksum ends that segment's replay (the damage is logged and counted), and the
intact records before it are kept. New records always go to a fresh segment, so
damage is never appended to. Segments whose data has been flushed to the object store
are deleted by :meth:`WAL.truncate_before` (checkpointing).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from . import metrics
from .errors import Unavailable

log = logging.getLogger(__name__)

_RECORD = struct.Struct("<II")
_MAX_RECORD = 256 << 20


class WAL:
    """Segmented, group-committed write-ahead log. Not shared between processes."""

    def __init__(self, directory: Path, segment_size: int = 64 << 20, fsync: bool = True) -> None:
        self.dir = directory
        self.segment_size = segment_size
        self.fsync = fsync
        self._seq = 0
        self._fd = -1
        self._size = 0
        self._pending: list[tuple[bytes, asyncio.Future[int], Callable[[int], None]]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    def segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.wal") if p.stem.isdigit())

    def _path(self, seq: int) -> Path:
        return self.dir / f"{seq:08d}.wal"

    def replay(self) -> Iterator[tuple[int, bytes]]:
        """Yield (segment, payload) for every intact record, oldest first."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for seq in self.segments():
            data = self._path(seq).read_bytes()
            pos = 0
            while pos < len(data):
                if pos + _RECORD.size > len(data):
                    self._corrupt(seq, pos, "truncated record header")
                    break
                length, crc = _RECORD.unpack_from(data, pos)
                body = data[pos + _RECORD.size : pos + _RECORD.size + length]
                if length > _MAX_RECORD or len(body) != length:
                    self._corrupt(seq, pos, "truncated record")
                    break
                if zlib.crc32(body) != crc:
                    self._corrupt(seq, pos, "checksum mismatch")
                    break
                yield seq, body
                pos += _RECORD.size + length

    def _corrupt(self, seq: int, pos: int, why: str) -> None:
        metrics.WAL_CORRUPTIONS.inc()
        log.error(
            "WAL corruption: %s in segment %s at offset %d; records after it are lost,"
            " the ones before it were recovered",
            why,
            self._path(seq),
            pos,
        )

    def open(self) -> None:
        """Start a new segment after any existing ones (call after replay)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        existing = self.segments()
        self._seq = (existing[-1] + 1) if existing else 1
        self._open_segment()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    def _open_segment(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1  # never write through a stale descriptor if the open fails
        self._fd = os.open(self._path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = 0
        if self.fsync:
            dfd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    @property
    def current_segment(self) -> int:
        return self._seq

    async def append(self, payload: bytes, apply: Callable[[int], None]) -> int:
        """Durably append one record, then call ``apply(segment)``; returns the segment.

        ``apply`` runs on the event loop right after the record is on disk and before any
        other coroutine runs, so whoever truncates the WAL sees every durable record
        already applied to memory — there is no window in which a record is durable,
        not yet in memory, and its segment deletable. An exception from ``apply`` is
        raised to the caller.
        """
        if self._closed:
            raise Unavailable("WAL is closed: the ingester is shutting down")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((payload, fut, apply))
        self._wakeup.set()
        return await fut

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                if self._closed:
                    return
                continue
            await self._commit(batch)
            if self._closed and not self._pending:
                return

    async def _commit(
        self, batch: list[tuple[bytes, asyncio.Future[int], Callable[[int], None]]]
    ) -> None:
        if self._size >= self.segment_size:
            self._seq += 1
            self._open_segment()
        seq = self._seq
        buf = b"".join(_RECORD.pack(len(p), zlib.crc32(p)) + p for p, _, _ in batch)
        try:
            await asyncio.to_thread(self._write, buf)
        except OSError as e:
            log.error("WAL write failed: %s", e)
            err = Unavailable(
                f"cannot write to the WAL in {self.dir}: {e.strerror or e}; "
                "the push was not accepted, retry"
            )
            # Part of the batch may have reached the file: cut it off, so that the
            # segment ends with the last acknowledged record (a full disk leaves no torn
            # record behind). If even that fails, later records go to a new segment so
            # replay does not stop in front of them.
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                try:
                    self._seq += 1
                    self._open_segment()
                except OSError as e2:
                    log.error("cannot open a new WAL segment: %s", e2)
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        self._size += len(buf)
        for _, fut, apply in batch:
            try:
                apply(seq)
            except Exception as e:  # the pusher gets the error; the record stays
                if not fut.done():
                    fut.set_exception(e)
                continue
            if not fut.done():
                fut.set_result(seq)

    def _write(self, buf: bytes) -> None:
        view = memoryview(buf)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        if self.fsync:
            os.fsync(self._fd)
            metrics.WAL_FSYNCS.inc()
        metrics.WAL_BYTES.inc(len(buf))

    def truncate_before(self, seq: int) -> int:
        """Delete segments older than ``seq`` (their data is flushed). Returns how many."""
        n = 0
        for s in self.segments():
            if s < seq and (self._closed or s != self._seq):
                self._path(s).unlink(missing_ok=True)
                n += 1
        return n

    async def close(self) -> None:
        self._closed = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
