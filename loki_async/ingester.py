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
import time
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
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
from .store import ChunkRef, Store, chunk_key
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
    """A chunk being built (open) or waiting for its flush (closed)."""

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

    def cut(self, codec: Codec) -> None:
        if len(self.head):
            b = codec.compress_block(self.head.build())
            self.blocks.append(b)
            self.compressed_bytes += len(b.data)
            self.head = HeadBlock()

    def close(self, codec: Codec, reason: str, block_size: int) -> None:
        self.cut(codec)
        if any(b.mint <= a.maxt for a, b in pairwise(self.blocks)):
            self.blocks = _merge_blocks(self.blocks, codec, block_size)
            self.compressed_bytes = sum(len(b.data) for b in self.blocks)
        self.entries = sum(b.entries for b in self.blocks)
        self.closed = True
        self.close_reason = reason


def _merge_blocks(
    blocks: list[CompressedBlock], codec: Codec, block_size: int
) -> list[CompressedBlock]:
    """Re-cut overlapping blocks into one sorted, de-duplicated run of blocks."""
    head = HeadBlock()
    for cb in blocks:
        b = decode_block(codec.decompress(cb.data, cb.raw_length))
        lens = array("I", (b.offsets[i + 1] - b.offsets[i] for i in range(len(b))))
        meta = None if b.meta_offsets is None else [b.metadata(i) for i in range(len(b))]
        head.append(b.ts.tobytes(), lens.tobytes(), b.blob, meta)
    merged = decode_block(head.build())
    out: list[CompressedBlock] = []
    i = 0
    n = len(merged)
    while i < n:
        j = i
        size = 0
        while j < n and size < block_size:
            size += merged.offsets[j + 1] - merged.offsets[j]
            j += 1
        part = HeadBlock()
        part.append(
            merged.ts[i:j].tobytes(),
            array("I", (merged.offsets[k + 1] - merged.offsets[k] for k in range(i, j))).tobytes(),
            merged.blob[merged.offsets[i] : merged.offsets[j]],
            None if merged.meta_offsets is None else [merged.metadata(k) for k in range(i, j)],
        )
        out.append(codec.compress_block(part.build()))
        i = j
    return out


@dataclass(slots=True)
class Stream:
    tenant: str
    labels: str
    fp: int
    chunks: list[MemChunk] = field(default_factory=list)  # last one open

    def open_chunk(self) -> MemChunk:
        if not self.chunks or self.chunks[-1].closed:
            self.chunks.append(MemChunk())
        return self.chunks[-1]


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
    ) -> None:
        self.cfg = cfg
        self.coprocessors = coprocessors
        self.store = store
        self.nc = nc
        self.lifecycler = lifecycler
        self.wal = wal
        self.id = lifecycler.id
        self.codec = Codec(cfg.zstd_level)
        self.streams: dict[tuple[str, int], Stream] = {}
        self._subs: list[Any] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._ready = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
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
        await self.lifecycler.start()
        await self.lifecycler.set_state(ACTIVE)
        self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())
        self._ready = True

    def ready(self) -> bool:
        return self._ready

    async def stop(self) -> None:
        """Graceful shutdown: leave the ring, stop taking pushes, flush everything."""
        self._ready = False
        with contextlib.suppress(Exception):
            await self.lifecycler.set_state(LEAVING)
        for sub in self._subs:
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
        cfg = self.cfg
        max_span = int(cfg.max_chunk_age_s * 1e9)
        for labels, fp, ts, lens, blob, meta in req["s"]:
            stream = self.streams.get((tenant, fp))
            if stream is None:
                stream = self.streams[(tenant, fp)] = Stream(tenant, labels, fp)
                metrics.INGESTER_STREAMS.inc()
            c = stream.open_chunk()
            t = array("q")
            t.frombytes(ts)
            lo, hi = min(t), max(t)
            if c.entries and (max(hi, c.maxt) - min(lo, c.mint) > max_span):
                c.close(self.codec, "max_age", cfg.chunk_block_size)
                c = stream.open_chunk()
            c.head.append(ts, lens, blob, meta)
            c.mint = min(c.mint, lo)
            c.maxt = max(c.maxt, hi)
            c.entries += len(t)
            c.raw_bytes += len(blob)
            c.min_segment = min(c.min_segment, segment)
            c.last_append = time.monotonic()
            if len(c.head.blob) >= cfg.chunk_block_size:
                c.cut(self.codec)
                if c.compressed_bytes >= cfg.chunk_target_size:
                    c.close(self.codec, "full", cfg.chunk_block_size)

    # ------------------------------------------------------------------ flush

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.flush_check_period_s)
            try:
                await self.flush()
            except Exception as e:  # retried next period; data is safe in memory + WAL
                metrics.INGESTER_FLUSH_FAILURES.inc()
                log.error("flush failed, will retry: %s", e)

    async def flush(self, force: bool = False) -> int:
        """Close due chunks and upload every closed chunk. Returns chunks flushed."""
        async with self._flush_lock:
            now = time.monotonic()
            for s in self.streams.values():
                c = s.chunks[-1] if s.chunks else None
                if c is None or c.closed or not c.entries:
                    continue
                if force:
                    c.close(self.codec, "forced", self.cfg.chunk_block_size)
                elif now - c.last_append >= self.cfg.chunk_idle_period_s:
                    c.close(self.codec, "idle", self.cfg.chunk_block_size)
            todo = [(s, c) for s in self.streams.values() for c in s.chunks if c.closed]
            sem = asyncio.Semaphore(self.cfg.concurrent_flushes)

            async def upload(s: Stream, c: MemChunk) -> ChunkRef:
                data = encode_chunk(c.blocks)
                key = chunk_key(s.tenant, s.fp, c.mint, c.maxt, data)
                flushed = None
                if self.coprocessors is not None:
                    flushed = FlushedChunk(s.tenant, s.labels, c.mint, c.maxt, c.entries, data)
                    await self.coprocessors.pre_flush(flushed)
                async with sem:
                    written = await self.store.put_chunk(key, data)
                if flushed is not None and self.coprocessors is not None:
                    await self.coprocessors.post_flush(flushed, key)
                if not written:
                    metrics.INGESTER_CHUNKS_DEDUPED.inc()
                metrics.INGESTER_CHUNKS_FLUSHED.labels(c.close_reason).inc()
                metrics.INGESTER_CHUNK_BYTES.inc(len(data))
                metrics.INGESTER_RAW_BYTES.inc(c.raw_bytes)
                return ChunkRef(key, c.mint, c.maxt, c.entries, len(data), c.raw_bytes)

            refs = await asyncio.gather(*(upload(s, c) for s, c in todo))
            by_tenant: dict[str, dict[int, tuple[str, int, list[ChunkRef]]]] = {}
            for (s, _), ref in zip(todo, refs, strict=True):
                by_tenant.setdefault(s.tenant, {}).setdefault(s.fp, (s.labels, s.fp, []))[2].append(
                    ref
                )
            for tenant, series in by_tenant.items():
                await self.store.write_index(tenant, list(series.values()))
            # Only now, with chunks and index durable, drop them from memory and the WAL.
            done = {id(c) for _, c in todo}
            for key, s in list(self.streams.items()):
                s.chunks = [c for c in s.chunks if id(c) not in done]
                if not s.chunks:
                    del self.streams[key]
                    metrics.INGESTER_STREAMS.dec()
            self._truncate_wal()
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
