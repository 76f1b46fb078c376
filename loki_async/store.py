"""The chunk store: chunks and index segments in the object store.

Layout under the object store (per tenant)::

    <tenant>/chunks/<fp:016x>/<from:x>-<through:x>-<crc32:08x>   a chunk (content addressed)
    <tenant>/index/<day>/<writer>-<ns>-<rand>.idx                   an immutable index segment

A segment is zstd(msgpack) of ``[[labels, fp, [[key, from, through, entries, bytes, raw], ...]],
...]``: the series it saw and their chunk refs. A chunk spanning several days is listed
in each day's segment. Segments are immutable, so readers cache them by key forever;
the listing of a day is read on every query so that a freshly flushed chunk is seen at
once. Refs of the same chunk written by several ingesters collapse to one at read time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zstandard

from . import metrics
from .errors import CorruptDataError, ObjectNotFound
from .objstore import ObjectClient

log = logging.getLogger(__name__)

DAY_NS = 86400 * 10**9


def chunk_key(tenant: str, fp: int, mint: int, maxt: int, data: bytes) -> str:
    return f"{tenant}/chunks/{fp:016x}/{mint:x}-{maxt:x}-{zlib.crc32(data):08x}"


@dataclass(frozen=True, slots=True)
class ChunkRef:
    key: str
    mint: int
    maxt: int
    entries: int
    size: int
    raw: int = 0  # line bytes before compression (0 in segments written without it)


@dataclass(slots=True)
class Series:
    labels: str
    fp: int
    chunks: dict[str, ChunkRef] = field(default_factory=dict)


class RecentChunks:
    """Ids of chunks recently uploaded *and indexed*, in the JetStream KV bucket
    ``chunks-recent`` (a TTL cache shared by all ingesters, as Loki's chunk cache).
    A replica that finds its chunk here skips the upload and the index entry alike:
    the first uploader wrote both before marking it."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv

    @staticmethod
    async def open(js: Any, replicas: int = 1) -> RecentChunks:
        from . import bus

        return RecentChunks(
            await bus.ensure_kv(js, bus.CHUNKS_RECENT_BUCKET, bus.CHUNKS_RECENT_TTL_S, replicas)
        )

    @staticmethod
    def _id(key: str) -> str:
        return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()

    async def seen(self, key: str) -> bool:
        """Whether ``key`` was uploaded and indexed recently. A failing cache answers
        False: the upload's put-if-absent still stores the chunk once."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.kv.get(self._id(key))
        except KeyNotFoundError:
            return False
        except Exception as e:  # NATS trouble: fall back to the object store's check
            log.warning("chunks-recent lookup failed: %s", e)
            return False
        return bool(entry.value)

    async def mark(self, keys: list[str]) -> None:
        """Record ``keys`` as uploaded and indexed (best effort)."""
        try:
            await asyncio.gather(*(self.kv.put(self._id(k), b"1") for k in keys))
        except Exception as e:  # only costs a redundant check later
            log.warning("chunks-recent update failed: %s", e)


class Store:
    """Reads and writes chunks and index segments through an ObjectClient."""

    def __init__(self, objects: ObjectClient, writer_id: str = "") -> None:
        self.objects = objects
        self.writer_id = writer_id or f"w{os.getpid()}"
        self._segments: dict[str, list[list]] = {}  # immutable segments, by key
        # Segments carry zstd's checksum (chunks cannot: replicas must cut them byte for
        # byte alike, and carry their own CRCs), so a flipped bit is caught, not decoded.
        self._zc = zstandard.ZstdCompressor(level=3, write_checksum=True)
        self._zd = zstandard.ZstdDecompressor()

    async def put_chunk(self, key: str, data: bytes) -> bool:
        """Upload a chunk unless an identical one exists; True if this call wrote it."""
        return await self.objects.put_if_absent(key, data)

    async def get_chunk(self, key: str) -> bytes:
        return await self.objects.get(key)

    async def write_index(self, tenant: str, series: list[tuple[str, int, list[ChunkRef]]]) -> None:
        """Write one immutable segment per day touched by the given chunk refs."""
        by_day: dict[int, dict[int, tuple[str, list[list]]]] = {}
        for labels, fp, refs in series:
            for r in refs:
                for day in range(r.mint // DAY_NS, r.maxt // DAY_NS + 1):
                    entry = by_day.setdefault(day, {}).setdefault(fp, (labels, []))
                    entry[1].append([r.key, r.mint, r.maxt, r.entries, r.size, r.raw])
        for day, fps in by_day.items():
            body = [[labels, fp, refs] for fp, (labels, refs) in fps.items()]
            data = self._zc.compress(msgpack.packb(body))
            key = (
                f"{tenant}/index/{day}/{self.writer_id}-{time.time_ns()}-{os.urandom(4).hex()}.idx"
            )
            await self.objects.put(key, data)

    async def _segment(self, key: str) -> list[list]:
        seg = self._segments.get(key)
        if seg is None:
            data = await self.objects.get(key)
            try:
                seg = msgpack.unpackb(self._zd.decompress(data), raw=False)
            except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as e:
                raise CorruptDataError(f"index segment {key} is damaged: {e}") from None
            self._segments[key] = seg
        return seg

    async def series(
        self, tenant: str, start: int, end: int, damaged: list[str] | None = None
    ) -> dict[int, Series]:
        """Every series with a chunk overlapping [start, end], with those chunk refs.
        A damaged index segment is left out (logged and counted) and its key appended
        to ``damaged``: the other segments still answer."""
        keys: list[str] = []
        days = range(max(start, 0) // DAY_NS, max(end, 0) // DAY_NS + 1)
        listings = await asyncio.gather(*(self.objects.list(f"{tenant}/index/{d}/") for d in days))
        for listing in listings:
            keys.extend(listing)
        out: dict[int, Series] = {}
        segs = await asyncio.gather(*(self._segment_or_none(k, damaged) for k in keys))
        for seg in segs:
            for labels, fp, refs in seg or ():
                for key, mint, maxt, entries, size, *raw in refs:
                    if maxt < start or mint > end:
                        continue
                    s = out.get(fp)
                    if s is None:
                        s = out[fp] = Series(labels, fp)
                    s.chunks[key] = ChunkRef(key, mint, maxt, entries, size, raw[0] if raw else 0)
        return out

    async def _segment_or_none(self, key: str, damaged: list[str] | None) -> list[list] | None:
        try:
            return await self._segment(key)
        except ObjectNotFound:  # deleted by a compaction between list and get
            return None
        except CorruptDataError as e:
            metrics.STORE_DAMAGED_OBJECTS.labels("index").inc()
            log.error("damaged index segment left out key=%s err=%s", key, e.message)
            if damaged is not None:
                damaged.append(key)
            return None
