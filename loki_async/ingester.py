"""Ingester: per-tenant streams in memory, WAL before acknowledgement, chunks to the store.

Per stream, entries are appended to a head block as columns (timestamps, line lengths,
one bytes blob, structured metadata); at ``chunk_block_size`` raw bytes the head is cut
into a sorted, de-duplicated block and compressed with deterministic zstd. A chunk is
closed when its compressed size reaches ``chunk_target_size``, its entries span
``max_chunk_age``, or it was idle for ``chunk_idle_period``; the flush loop uploads
closed chunks under content-addressed keys, writes index segments, and then drops the
WAL segments whose data is all in the store.

Out-of-order entries are accepted (as Loki with unordered writes). Blocks of a chunk
that overlap in time are merged into one sorted run when the chunk is closed, so a
stored chunk is always in (timestamp, line) order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import time
from array import array
from bisect import bisect_left
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import accumulate, islice
from typing import Any

from . import bus, metrics
from .chunk import Block, Codec, CompressedBlock, build_block, decode_block, encode_chunk
from .config import IngesterConfig
from .coprocessor import FlushedChunk
from .coprocessor_host import Registry
from .labels import label_map
from .logql import parse_log_selector
from .logql.pipeline import Pipeline, compile_pipeline
from .ring import ACTIVE, LEAVING, Lifecycler
from .store import ChunkRef, RecentChunks, Store, chunk_key
from .wal import WAL

log = logging.getLogger(__name__)

NO_SEGMENT = 1 << 62


@dataclass(slots=True)
class HeadBlock:
    """Entries not yet cut into a block, in arrival order."""

    ts: array = field(default_factory=lambda: array("q"))
    lens: array = field(default_factory=lambda: array("I"))
    blob: bytearray = field(default_factory=bytearray)
    meta: list[bytes] | None = None

    def append(self, ts: bytes, lens: bytes, blob: bytes, meta: list[bytes] | None) -> None:
        n0 = len(self.ts)
        self.ts.frombytes(ts)
        self.lens.frombytes(lens)
        self.blob += blob
        if meta is not None or self.meta is not None:
            n = len(self.ts) - n0
            if self.meta is None:
                self.meta = [b""] * n0
            self.meta.extend(meta if meta is not None else [b""] * n)

    def build(self) -> bytes:
        return build_block(self.ts, self.lens, bytes(self.blob), self.meta)

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(slots=True)
class MemChunk:
    """A chunk being built (open) or waiting for its flush (closed). Every entry of a
    chunk lies in one aligned time window."""

    window: int = 0
    blocks: list[CompressedBlock] = field(default_factory=list)
    head: HeadBlock = field(default_factory=HeadBlock)
    mint: int = 1 << 63
    maxt: int = -(1 << 63)
    entries: int = 0
    raw_bytes: int = 0
    compressed_bytes: int = 0
    min_segment: int = NO_SEGMENT
    last_append: float = field(default_factory=time.monotonic)
    closed: bool = False
    close_reason: str = ""
    # Entries arrived in strict time order, so blocks were cut where the Chunker cuts
    # them; otherwise the chunk is re-cut from its sorted entries when it closes.
    ordered: bool = True
    # Entries at or before this belong to an earlier chunk of the window.
    floor: int = -(1 << 63)

    def add(self, ts: array, lens: array, blob: bytes, meta: list[bytes] | None) -> None:
        """Append entries to the head (any order)."""
        self.head.append(ts.tobytes(), lens.tobytes(), blob, meta)
        self.mint = min(self.mint, min(ts))
        self.maxt = max(self.maxt, max(ts))
        self.entries += len(ts)
        self.raw_bytes += len(blob)
        self.last_append = time.monotonic()

    def cut(self, codec: Codec) -> int:
        """Compress the head into a block; returns its compressed size (0: empty head)."""
        if not len(self.head):
            return 0
        b = codec.compress_block(self.head.build())
        self.blocks.append(b)
        self.compressed_bytes += len(b.data)
        self.head = HeadBlock()
        return len(b.data)

    def take_head(self) -> HeadBlock:
        """Remove the head's entries from the chunk and return them."""
        head, self.head = self.head, HeadBlock()
        self.entries -= len(head)
        self.raw_bytes -= len(head.blob)
        if self.blocks:
            self.mint = min(b.mint for b in self.blocks)
            self.maxt = max(b.maxt for b in self.blocks)
        else:
            self.mint, self.maxt = 1 << 63, -(1 << 63)
        return head

    def entries_sorted(self, codec: Codec) -> Block:
        """Every entry of the chunk, sorted by (timestamp, line), exact duplicates dropped."""
        head = HeadBlock()
        for cb in self.blocks:
            b = decode_block(codec.decompress(cb.data, cb.raw_length))
            lens = array("I", (b.offsets[i + 1] - b.offsets[i] for i in range(len(b))))
            meta = None if b.meta_offsets is None else [b.metadata(i) for i in range(len(b))]
            head.append(b.ts.tobytes(), lens.tobytes(), b.blob, meta)
        head.append(
            self.head.ts.tobytes(), self.head.lens.tobytes(), bytes(self.head.blob), self.head.meta
        )
        return decode_block(head.build())


# Multipliers of the cut hashes (a Fibonacci and a murmur3 finaliser constant).
_MIX_BLOCK = 0x9E3779B97F4A7C15
_MIX_CHUNK = 0xC2B2AE3D27D4EB4F
_M32 = 0xFFFFFFFF


class Chunker:
    """Where a stream's blocks and chunks end: a function of its entries alone.

    Replicas of a stream receive the same entries at different moments, in different
    batches, after different restarts; for the store to keep one copy they must cut
    byte-identical chunks. So no cut depends on arrival time or batch boundaries:

    - **windows**: a chunk holds entries of one aligned window of ``max_chunk_age``
      (``ts // window``), so every window boundary is a cut both replicas agree on;
    - **blocks** are content-defined: once a block holds ``block_size / 4`` bytes, the
      block ends before an entry with a probability proportional to the entry's size
      (a hash of its timestamp decides), so a block averages ``block_size``; hard cut
      at twice that;
    - **chunks** end at a block boundary, again decided by a hash of the next entry's
      timestamp, with probability (compressed block size / ``chunk_target_size``):
      chunks average the target; hard cut at four times it.

    The decision at a boundary depends only on the entries around it, not on where the
    chunk started, so two replicas that diverged (one missed a push, one restarted)
    cut at the same places again from the next boundary on (content-defined chunking,
    as in rsync and LBFS). Entries that arrive out of order are re-cut by the same rules
    from their sorted sequence when the chunk closes.
    """

    def __init__(self, codec: Codec, block_size: int, target_size: int, window_s: float) -> None:
        self.codec = codec
        self.block_size = max(block_size, 16)
        self.block_min = self.block_size // 4
        self.block_span = self.block_size - self.block_min
        self.block_max = self.block_size * 2
        self.chunk_target = max(target_size, 1)
        self.chunk_max = self.chunk_target * 4
        self.window_ns = max(int(window_s * 1e9), 1)

    def window(self, ts: int) -> int:
        return ts // self.window_ns

    def window_end(self, window: int) -> int:
        """First timestamp after ``window``."""
        return (window + 1) * self.window_ns

    def append(
        self, c: MemChunk, ts: array, lens: array, blob: bytes, meta: list[bytes] | None
    ) -> list[MemChunk]:
        """Append entries in strict time order, all in ``c``'s window and after its last
        entry, cutting blocks and chunks on the way. Returns ``c`` and the chunks begun
        after it; all but the last are closed."""
        n = len(ts)
        offs = list(accumulate(lens, initial=0))
        out = [c]
        pos = 0
        while pos < n:
            cut = self._next_block_cut(len(c.head.blob), ts, lens, offs, pos)
            end = n if cut is None else cut
            if end > pos:
                c.add(
                    ts[pos:end],
                    lens[pos:end],
                    blob[offs[pos] : offs[end]],
                    None if meta is None else meta[pos:end],
                )
            if cut is None:
                break
            size = c.cut(self.codec)
            if c.compressed_bytes >= self.chunk_max or (
                ((ts[cut] * _MIX_CHUNK) >> 32 & _M32) * self.chunk_target < size << 32
            ):
                c.closed, c.close_reason = True, "full"
                c = MemChunk(window=c.window, min_segment=c.min_segment, floor=c.maxt)
                out.append(c)
            pos = cut
        return out

    def _next_block_cut(
        self, b0: int, ts: array, lens: array, offs: list[int], pos: int
    ) -> int | None:
        """Index of the first entry at or after ``pos`` that starts a new block (the
        block already holds ``b0`` bytes), or None."""
        n = len(ts)
        # Entries before the block holds `threshold` bytes can neither meet the hash
        # rule (block_min) nor overflow block_max: skip them with one bisection.
        threshold = max(1, min(self.block_min, self.block_max - max(lens[pos:]) + 1))
        first = bisect_left(offs, threshold - b0 + offs[pos], pos, n)
        for i in range(first, n):
            b = b0 + offs[i] - offs[pos]
            size = lens[i]
            if b + size > self.block_max:
                return i
            if b >= self.block_min and (
                ((ts[i] * _MIX_BLOCK) >> 32 & _M32) * self.block_span < size << 32
            ):
                return i
        return None

    def recut(self, c: MemChunk) -> list[MemChunk]:
        """An out-of-order chunk re-cut from its sorted, de-duplicated entries, exactly as
        if they had arrived in order: the chunks it becomes, all but the last closed; the
        last one is in order again and takes further appends."""
        fresh = MemChunk(window=c.window, min_segment=c.min_segment, floor=c.floor)
        return self._append_block(fresh, c.entries_sorted(self.codec))

    def insert_head(
        self, c: MemChunk, ts: array, lens: array, blob: bytes, meta: list[bytes] | None
    ) -> list[MemChunk]:
        """Late entries all newer than the first entry of ``c``'s head (the entry its
        last cut was decided at): sort them into the head and cut it again, exactly as
        an in-order arrival would have. Returns what replaces ``c``."""
        head = c.take_head()
        head.append(ts.tobytes(), lens.tobytes(), blob, meta)
        return self._append_block(c, decode_block(head.build()))

    def _append_block(self, c: MemChunk, b: Block) -> list[MemChunk]:
        if not len(b):
            return [c]
        lens = array("I", (b.offsets[i + 1] - b.offsets[i] for i in range(len(b))))
        meta = None if b.meta_offsets is None else [b.metadata(i) for i in range(len(b))]
        return self.append(c, b.ts, lens, b.blob, meta)

    def add_unordered(
        self, c: MemChunk, ts: array, lens: array, blob: bytes, meta: list[bytes] | None
    ) -> list[MemChunk]:
        """Entries out of order within ``c``: kept as they come, and the chunk is re-cut
        from its sorted entries when it closes or reaches the hard size limit."""
        c.ordered = False
        c.add(ts, lens, blob, meta)
        if len(c.head.blob) >= self.block_size:
            c.cut(self.codec)
            if c.compressed_bytes >= self.chunk_max:
                return self.recut(c)
        return [c]

    def merge(
        self,
        chunks: list[MemChunk],
        ts: array,
        lens: array,
        blob: bytes,
        meta: list[bytes] | None,
    ) -> list[MemChunk]:
        """Consecutive chunks of one window (the last one open) and late entries that
        belong among them, re-cut together: the chunks they become, the last one open."""
        merged = MemChunk(
            window=chunks[0].window,
            min_segment=min(x.min_segment for x in chunks),
            ordered=False,
            floor=chunks[0].floor,
        )
        for x in chunks:
            merged.blocks.extend(x.blocks)
            merged.head.append(
                x.head.ts.tobytes(), x.head.lens.tobytes(), bytes(x.head.blob), x.head.meta
            )
        merged.head.append(ts.tobytes(), lens.tobytes(), blob, meta)
        return self.recut(merged)

    def close(self, c: MemChunk, reason: str) -> list[MemChunk]:
        """Close ``c``: its head becomes its last block (re-cut first if out of order).
        Returns what replaces it: closed chunks, normally just ``c``."""
        out = [c] if c.ordered else self.recut(c)
        last = out[-1]
        last.cut(self.codec)
        if not last.closed:
            last.closed, last.close_reason = True, reason
        return [x for x in out if x.entries]


@dataclass(slots=True)
class Stream:
    tenant: str
    labels: str
    fp: int
    chunks: list[MemChunk] = field(default_factory=list)  # closed ones wait for the flush
    flushed_maxt: dict[int, int] = field(default_factory=dict)  # per window

    def open_chunk(self, window: int) -> MemChunk:
        for c in reversed(self.chunks):
            if not c.closed and c.window == window:
                return c
        floor = max(
            [x.maxt for x in self.chunks if x.window == window]
            + [self.flushed_maxt.get(window, -(1 << 63))]
        )
        c = MemChunk(window=window, floor=floor)
        self.chunks.append(c)
        return c

    def replace(self, old: MemChunk, new: list[MemChunk]) -> None:
        self.replace_run([old], new)

    def replace_run(self, old: list[MemChunk], new: list[MemChunk]) -> None:
        """Put ``new`` where the first of ``old`` was, and drop the rest of ``old``."""
        first = id(old[0])
        i = next(i for i, c in enumerate(self.chunks) if id(c) == first)
        rest = {id(c) for c in old[1:]}
        self.chunks = [c for c in self.chunks[:i] + new + self.chunks[i + 1 :] if id(c) not in rest]


class Ingester:
    """Holds recent data of the streams the ring assigns to it. Owns its WAL directory."""

    def __init__(
        self,
        cfg: IngesterConfig,
        *,
        store: Store,
        nc: Any,
        lifecycler: Lifecycler,
        wal: WAL | None,
        coprocessors: Registry | None = None,
        recent: RecentChunks | None = None,
    ) -> None:
        self.cfg = cfg
        self.coprocessors = coprocessors
        self.recent = recent
        self.store = store
        self.nc = nc
        self.lifecycler = lifecycler
        self.wal = wal
        self.id = lifecycler.id
        self.codec = Codec(cfg.zstd_level)
        self.chunker = Chunker(
            self.codec, cfg.chunk_block_size, cfg.chunk_target_size, cfg.max_chunk_age_s
        )
        self.streams: dict[tuple[str, int], Stream] = {}
        self._subs: list[Any] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._ready = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Register JOINING (the ring shows the replay; distributors pass over it), replay
        the WAL, subscribe, turn ACTIVE."""
        await self.lifecycler.start()
        if self.wal is not None:
            n = 0
            for seg, payload in self.wal.replay():
                self._apply(bus.unpack(payload), seg)
                n += 1
            metrics.WAL_REPLAYED.inc(n)
            self.wal.open()
            log.info("WAL replayed records=%d streams=%d", n, len(self.streams))
        subjects = {
            bus.INGESTER_PUSH: self._handle_push,
            bus.INGESTER_LABELS: self._handle_labels,
            bus.INGESTER_SERIES: self._handle_series,
            bus.INGESTER_STATS: self._handle_stats,
            bus.INGESTER_FLUSH: self._handle_flush,
        }
        for subject, handler in subjects.items():
            self._subs.append(await bus.serve(self.nc, subject.format(id=self.id), handler))
        self._subs.append(
            await bus.serve_stream(
                self.nc, bus.INGESTER_QUERY.format(id=self.id), self._handle_query
            )
        )
        await self.lifecycler.set_state(ACTIVE)
        self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    async def stop(self) -> None:
        """Graceful scale-down: turn LEAVING (distributors send this ingester's streams to
        the next one on the ring), stop taking pushes, flush everything, leave the ring,
        and only then stop answering queries, so no acknowledged line is ever out of
        reach."""
        self._ready = False
        with contextlib.suppress(Exception):
            await self.lifecycler.set_state(LEAVING)
        push_subs, read_subs = self._subs[:1], self._subs[1:]  # push is subscribed first
        for sub in push_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._flush_task:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        if self.wal is not None:
            await self.wal.close()
        if self.wal is None or self.cfg.wal.flush_on_shutdown:
            try:
                await self.flush(force=True)
            except Exception as e:  # the WAL still holds what could not be flushed
                log.error("flush on shutdown failed, data stays in the WAL: %s", e)
            else:
                if self.wal is not None:  # everything is in the store: nothing to replay
                    self.wal.truncate_before(NO_SEGMENT)
        await self.lifecycler.stop()
        for sub in read_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # ------------------------------------------------------------------ write path

    async def _handle_push(self, req: dict[str, Any]) -> None:
        if not self._ready:
            from .errors import Unavailable

            raise Unavailable(f"ingester {self.id} is not ready")
        if self.wal is None:
            self._apply(req, 0)
            return
        await self.wal.append(bus.pack(req), lambda seg: self._apply(req, seg))

    def _apply(self, req: dict[str, Any], segment: int) -> None:
        tenant = req["t"]
        for labels, fp, ts_b, lens_b, blob, meta in req["s"]:
            stream = self.streams.get((tenant, fp))
            if stream is None:
                stream = self.streams[(tenant, fp)] = Stream(tenant, labels, fp)
                metrics.INGESTER_STREAMS.inc()
            ts = array("q")
            ts.frombytes(ts_b)
            lens = array("I")
            lens.frombytes(lens_b)
            if not len(ts):
                continue
            # Fast path: strictly increasing timestamps (the common case); checked in C.
            if len(ts) == 1 or all(map(operator.lt, ts, islice(ts, 1, None))):
                self._append_sorted(stream, ts, lens, blob, meta, segment)
            else:
                self._append_unordered(stream, ts, lens, blob, meta, segment)

    def _append_sorted(
        self,
        stream: Stream,
        ts: array,
        lens: array,
        blob: bytes,
        meta: list[bytes] | None,
        segment: int,
    ) -> None:
        ck = self.chunker
        pos, n = 0, len(ts)
        offs: list[int] | None = None
        while pos < n:
            window = ck.window(ts[pos])
            end = bisect_left(ts, ck.window_end(window), pos, n)
            if pos == 0 and end == n:
                part_ts, part_lens, part_blob, part_meta = ts, lens, blob, meta
            else:  # the batch crosses a window boundary: one part per window
                if offs is None:
                    offs = list(accumulate(lens, initial=0))
                part_ts, part_lens = ts[pos:end], lens[pos:end]
                part_blob = blob[offs[pos] : offs[end]]
                part_meta = None if meta is None else meta[pos:end]
            c = stream.open_chunk(window)
            c.min_segment = min(c.min_segment, segment)
            if c.ordered and part_ts[0] > max(c.maxt, c.floor):
                stream.replace(c, ck.append(c, part_ts, part_lens, part_blob, part_meta))
            else:  # older than what the chunk holds (late, or a retried push)
                self._insert(stream, c, part_ts, part_lens, part_blob, part_meta)
            pos = end

    def _append_unordered(
        self,
        stream: Stream,
        ts: array,
        lens: array,
        blob: bytes,
        meta: list[bytes] | None,
        segment: int,
    ) -> None:
        """Entries out of order within the batch: group them by window, append as they
        are; the chunk is re-cut from its sorted entries when it closes."""
        ck = self.chunker
        offs = list(accumulate(lens, initial=0))
        groups: dict[int, list[int]] = {}
        for i, t in enumerate(ts):
            groups.setdefault(ck.window(t), []).append(i)
        for window, idx in groups.items():
            c = stream.open_chunk(window)
            c.min_segment = min(c.min_segment, segment)
            self._insert(
                stream,
                c,
                array("q", (ts[i] for i in idx)),
                array("I", (lens[i] for i in idx)),
                b"".join([blob[offs[i] : offs[i + 1]] for i in idx]),
                None if meta is None else [meta[i] for i in idx],
            )

    def _insert(
        self,
        stream: Stream,
        c: MemChunk,
        ts: array,
        lens: array,
        blob: bytes,
        meta: list[bytes] | None,
    ) -> None:
        """Entries out of order for ``c``, the window's open chunk, put where an in-order
        arrival would have put them, so replicas still cut identical chunks."""
        ck = self.chunker
        t0 = min(ts)
        if c.ordered and len(c.head) and t0 > c.head.ts[0]:
            # Late by less than a block (the usual repair): re-cut the head.
            stream.replace(c, ck.insert_head(c, ts, lens, blob, meta))
        elif c.entries and t0 >= c.mint:
            # Within the open chunk: sorted in when it closes.
            stream.replace(c, ck.add_unordered(c, ts, lens, blob, meta))
        elif t0 <= stream.flushed_maxt.get(c.window, -(1 << 63)) and t0 <= c.floor:
            # Among chunks already flushed: these entries make a chunk of their own.
            side = MemChunk(window=c.window, min_segment=c.min_segment)
            side.ordered = False
            side.add(ts, lens, blob, meta)
            stream.chunks.extend(ck.close(side, "late"))
        else:
            # Reaches into closed chunks still in memory: re-cut them with the open one.
            run = [x for x in stream.chunks if x.window == c.window]
            first = next((k for k, x in enumerate(run) if x.maxt >= t0), len(run) - 1)
            stream.replace_run(run[first:], ck.merge(run[first:], ts, lens, blob, meta))

    # ------------------------------------------------------------------ flush

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.flush_check_period_s)
            try:
                await self.flush()
            except Exception as e:  # retried next period; data is safe in memory + WAL
                log.error("flush failed, will retry: %s", e)

    async def flush(self, force: bool = False) -> int:
        """Close due chunks and upload every closed chunk. Returns chunks flushed. A
        chunk whose upload fails, or whose tenant's index write fails, stays in memory
        for the next flush while the rest are flushed; the first such error is then
        raised (each counted in ``loki_ingester_chunks_flush_failures_total``)."""
        async with self._flush_lock:
            now = time.monotonic()
            idle = self.cfg.chunk_idle_period_s
            for s in self.streams.values():
                for c in [c for c in s.chunks if not c.closed]:
                    if not c.entries:
                        continue
                    if force:
                        s.replace(c, self.chunker.close(c, "forced"))
                    elif now - c.last_append >= idle:
                        s.replace(c, self.chunker.close(c, "idle"))
            todo = [(s, c) for s in self.streams.values() for c in s.chunks if c.closed]
            sem = asyncio.Semaphore(self.cfg.concurrent_flushes)

            async def upload(s: Stream, c: MemChunk) -> tuple[ChunkRef, bool]:
                """Store the chunk once; True if this ingester must list it in its index."""
                data = encode_chunk(c.blocks)
                key = chunk_key(s.tenant, s.fp, c.mint, c.maxt, data)
                ref = ChunkRef(key, c.mint, c.maxt, c.entries, len(data), c.raw_bytes)
                flushed = None
                if self.coprocessors is not None:
                    flushed = FlushedChunk(s.tenant, s.labels, c.mint, c.maxt, c.entries, data)
                    await self.coprocessors.pre_flush(flushed)
                metrics.INGESTER_CHUNKS_FLUSHED.labels(c.close_reason).inc()
                metrics.INGESTER_CHUNK_BYTES.inc(len(data))
                metrics.INGESTER_RAW_BYTES.inc(c.raw_bytes)
                if self.recent is not None and await self.recent.seen(key):
                    # A replica uploaded and indexed this very chunk.
                    metrics.INGESTER_CHUNKS_DEDUPED.labels("recent").inc()
                    return ref, False
                async with sem:
                    written = await self.store.put_chunk(key, data)
                if flushed is not None and self.coprocessors is not None:
                    await self.coprocessors.post_flush(flushed, key)
                if written:
                    metrics.INGESTER_CHUNKS_UPLOADED.inc()
                else:
                    metrics.INGESTER_CHUNKS_DEDUPED.labels("exists").inc()
                return ref, True

            # One chunk or one tenant's index failing must not hold back the others:
            # what failed stays in memory (and the WAL) for the next flush.
            results = await asyncio.gather(
                *(upload(s, c) for s, c in todo), return_exceptions=True
            )
            failures: list[BaseException] = []
            uploaded: list[tuple[Stream, MemChunk, ChunkRef, bool]] = []
            for (s, c), r in zip(todo, results, strict=True):
                if isinstance(r, BaseException):
                    if not isinstance(r, Exception):
                        raise r  # cancellation
                    failures.append(r)
                else:
                    uploaded.append((s, c, *r))
            by_tenant: dict[str, dict[int, tuple[str, int, list[ChunkRef]]]] = {}
            for s, _, ref, index_it in uploaded:
                if index_it:
                    series = by_tenant.setdefault(s.tenant, {})
                    series.setdefault(s.fp, (s.labels, s.fp, []))[2].append(ref)
            indexed: set[str] = set()
            for tenant, series in by_tenant.items():
                try:
                    await self.store.write_index(tenant, list(series.values()))
                except Exception as e:  # the tenant's chunks are flushed again later
                    failures.append(e)
                else:
                    indexed.add(tenant)
            if self.recent is not None:
                await self.recent.mark(
                    [
                        r.key
                        for tenant in indexed
                        for *_, refs in by_tenant[tenant].values()
                        for r in refs
                    ]
                )
            todo = [(s, c) for s, c, _, index_it in uploaded if not index_it or s.tenant in indexed]
            # Only now, with chunks and index durable, drop them from memory and the WAL.
            done = {id(c) for _, c in todo}
            for s, c in todo:
                s.flushed_maxt[c.window] = max(s.flushed_maxt.get(c.window, c.maxt), c.maxt)
            for key, s in list(self.streams.items()):
                s.chunks = [c for c in s.chunks if id(c) not in done]
                if not s.chunks:
                    del self.streams[key]
                    metrics.INGESTER_STREAMS.dec()
            self._truncate_wal()
            if failures:
                metrics.INGESTER_FLUSH_FAILURES.inc(len(failures))
                raise failures[0]
            return len(todo)

    def _truncate_wal(self) -> None:
        if self.wal is None:
            return
        needed = min(
            (c.min_segment for s in self.streams.values() for c in s.chunks), default=NO_SEGMENT
        )
        self.wal.truncate_before(min(needed, self.wal.current_segment))

    # ------------------------------------------------------------------ read path

    def _matching(self, tenant: str, matchers: Any) -> list[Stream]:
        out = []
        for (t, _), s in self.streams.items():
            if t != tenant:
                continue
            lbls = label_map(s.labels)
            if all(m.matches(lbls.get(m.name, "")) for m in matchers):
                out.append(s)
        return out

    async def _handle_query(self, req: dict[str, Any]) -> AsyncIterator[tuple[Any, int]]:
        """Entries of matching streams with start <= ts < end, as column pieces. The
        query's leading line filters run here, so only lines that can match travel."""
        start, end = req["start"], req["end"]
        expr = parse_log_selector(req["q"])
        pipeline = compile_pipeline(expr)
        for s in self._matching(req["t"], expr.matchers):
            for c in list(s.chunks):
                if c.maxt < start or c.mint >= end or not c.entries:
                    continue
                blocks = [cb for cb in c.blocks if cb.maxt >= start and cb.mint < end]
                for cb in blocks:
                    b = decode_block(self.codec.decompress(cb.data, cb.raw_length))
                    piece = _piece(s.labels, b, start, end, pipeline)
                    if piece:
                        yield piece, len(piece[3]) + 64
                if len(c.head):
                    b = decode_block(c.head.build())
                    piece = _piece(s.labels, b, start, end, pipeline)
                    if piece:
                        yield piece, len(piece[3]) + 64
                await asyncio.sleep(0)

    async def _handle_labels(self, req: dict[str, Any]) -> list[str]:
        tenant, name = req["t"], req.get("name")
        out: set[str] = set()
        for (t, _), s in self.streams.items():
            if t != tenant:
                continue
            lbls = label_map(s.labels)
            if name is None:
                out.update(lbls)
            elif name in lbls:
                out.add(lbls[name])
        return sorted(out)

    async def _handle_series(self, req: dict[str, Any]) -> list[str]:
        out: set[str] = set()
        for selector in req["match"] or [""]:
            matchers = parse_log_selector(selector).matchers if selector else ()
            out.update(s.labels for s in self._matching(req["t"], matchers))
        return sorted(out)

    async def _handle_stats(self, req: dict[str, Any]) -> list[Any]:
        """Per matching stream, its in-memory chunks overlapping [start, end]:
        ``[labels, [[mint, maxt, entries, raw bytes], ...]]``."""
        start, end = req["start"], req["end"]
        out = []
        matchers = parse_log_selector(req["q"]).matchers if req.get("q") else ()
        for s in self._matching(req["t"], matchers):
            chunks = [
                [c.mint, c.maxt, c.entries, c.raw_bytes]
                for c in s.chunks
                if c.entries and c.maxt >= start and c.mint <= end
            ]
            if chunks:
                out.append([s.labels, chunks])
        return out

    async def _handle_flush(self, req: dict[str, Any]) -> int:
        return await self.flush(force=True)


def _piece(labels: str, b: Block, start: int, end: int, pipeline: Pipeline) -> list[Any] | None:
    """The entries of a block in [start, end) kept by the pipeline's leading line filters,
    as wire columns: labels, ts, lens, blob, meta."""
    lo, hi = b.range_indexes(start, end)
    if lo >= hi:
        return None
    offs = b.offsets
    # What was scanned here counts as processed, even if no line of it travels.
    scanned = [hi - lo, offs[hi] - offs[lo]]
    if not pipeline.block_may_match(b.blob):
        return [labels, b"", b"", b"", None, scanned]
    idx = pipeline.filter_block(b, lo, hi)
    if not len(idx):
        return [labels, b"", b"", b"", None, scanned]
    meta = None
    if isinstance(idx, range) and idx.step == 1:
        # Fast path: a contiguous run is a slice of each column.
        lo, hi = idx.start, idx.stop
        lens = array("I", (offs[i + 1] - offs[i] for i in range(lo, hi)))
        if b.meta_offsets is not None:
            meta = [b.metadata(i) for i in range(lo, hi)]
        blob = b.blob[offs[lo] : offs[hi]]
        return [labels, b.ts[lo:hi].tobytes(), lens.tobytes(), blob, meta, scanned]
    blob = b.blob
    lens = array("I", (offs[i + 1] - offs[i] for i in idx))
    if b.meta_offsets is not None:
        meta = [b.metadata(i) for i in idx]
    return [
        labels,
        array("q", [b.ts[i] for i in idx]).tobytes(),
        lens.tobytes(),
        b"".join([blob[offs[i] : offs[i + 1]] for i in idx]),
        meta,
        scanned,
    ]


def piece_block(piece: list[Any]) -> Block:
    """Rebuild a Block from a wire piece (querier side)."""
    ts_b, lens_b, blob, meta = piece[1:5]
    ts = array("q")
    ts.frombytes(ts_b)
    lens = array("I")
    lens.frombytes(lens_b)
    meta_offsets = None
    meta_blob = b""
    if meta is not None:
        meta_offsets = list(accumulate(map(len, meta), initial=0))
        meta_blob = b"".join(meta)
    return Block(ts, list(accumulate(lens, initial=0)), blob, meta_offsets, meta_blob)
