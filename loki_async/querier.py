"""Querier: evaluates LogQL over the ingesters' memory and the store, block by block.

Data is gathered per stream as decoded blocks (columns: packed timestamps, one bytes
blob of lines): the ingesters are asked first, the store second. A chunk leaves an
ingester's memory only after it is in the store's index, so nothing falls between the
two. Replica and replay duplicates (same stream, timestamp and line) only exist where
blocks of one stream overlap in time; such blocks are merged and de-duplicated (slow
path), all others are used as they are (fast path).

Log queries run the pipeline's leading line filters over each block's blob, the rest
of the pipeline per kept line. Metric queries hand the engine per-series sample columns
(:class:`~loki_async.logql.engine.SampleSource`); a count without a parser counts
straight from the timestamp column.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import bus, coprocessor_host, metrics
from .chunk import Block, ChunkReader, Codec, build_block, decode_block
from .config import QuerierConfig
from .coprocessor import ChunkRef as PluginChunkRef
from .coprocessor import IndexRequest
from .errors import CorruptDataError, LokiError, Unavailable
from .ingester import piece_block
from .labels import label_map
from .logql import parse_log_selector
from .logql.ast import Expr, LogSelectorExpr, Matcher, RangeAggregationExpr
from .logql.engine import SampleSeries
from .logql.pipeline import LineLabels, compile_pipeline, compile_sample_extractor
from .ring import Ring
from .store import ChunkRef, Store

log = logging.getLogger(__name__)

FORWARD, BACKWARD = "forward", "backward"
FLUSH_TIMEOUT_S = 600.0


@dataclass(slots=True)
class QueryStats:
    """What a query touched; reported in Loki's ``stats`` block."""

    ingester_lines: int = 0
    ingester_bytes: int = 0
    store_lines: int = 0
    store_bytes: int = 0
    chunks_ref: int = 0
    chunks_fetched: int = 0
    chunk_bytes_fetched: int = 0
    blocks_skipped: int = 0
    post_filter_lines: int = 0
    splits: int = 0
    cache_hits: int = 0
    cache_lookups: int = 0
    damaged_chunks: int = 0  # failed their checksum: left out, logged, counted
    damaged_index_segments: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, other: QueryStats) -> None:
        for name in self.__slots__:
            if name != "started":
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_wire(self) -> dict[str, int]:
        """The counters (not the start time), for NATS messages and ticket records."""
        return {n: getattr(self, n) for n in self.__slots__ if n != "started"}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> QueryStats:
        """Rebuild counters sent with :meth:`to_wire`; unknown names are ignored."""
        s = cls()
        for name in s.__slots__:
            if name != "started" and isinstance(data.get(name), int):
                setattr(s, name, data[name])
        return s


@dataclass(slots=True)
class StreamResult:
    labels: LineLabels
    entries: list[tuple[int, bytes]]  # (ts ns, line), in the query's direction


class Querier:
    """Log and sample selection across ingesters and store; label and series lookups."""

    def __init__(
        self, cfg: QuerierConfig, *, store: Store, ring: Ring, nc: Any, timeout_s: float
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.ring = ring
        self.nc = nc
        self.timeout_s = timeout_s
        self.codec = Codec()
        self._fetch_sem = asyncio.Semaphore(cfg.max_concurrent_chunk_fetches)

    def _ingesters_needed(self, end: int) -> bool:
        within = self.cfg.query_ingesters_within_s
        return within == 0 or end >= time.time_ns() - int(within * 1e9)

    async def _ask_ingesters(
        self, subject: str, req: dict[str, Any], stream: bool = False
    ) -> list[Any]:
        """Ask every live ingester. Replies of those that fail are left out as long as
        the ring's replication allows it (every acknowledged line is on a quorum of its
        replicas); beyond that the read fails with 503 rather than answer partially."""
        members, tolerated = self.ring.read_set()
        if tolerated < 0:
            raise Unavailable(
                "too many unhealthy ingesters in the ring: "
                f"{self.ring.replication_factor // 2 - tolerated} of {len(self.ring.members())}"
                f" are not answering (replication factor {self.ring.replication_factor} "
                f"tolerates {self.ring.replication_factor // 2})"
            )
        call = bus.request_stream if stream else bus.request
        results = await asyncio.gather(
            *(call(self.nc, subject.format(id=m.id), req, self.timeout_s) for m in members),
            return_exceptions=True,
        )
        failed = [
            (m, r) for m, r in zip(members, results, strict=True) if isinstance(r, BaseException)
        ]
        for _, r in failed:
            if not isinstance(r, Exception) or (isinstance(r, LokiError) and r.status < 500):
                raise r  # a bad request or a cancellation is not an unhealthy ingester
        if len(failed) > tolerated:
            m, r = failed[0]
            raise Unavailable(f"ingester {m.id} failed: {r}")
        for m, r in failed:
            log.warning("ingester %s failed a read, answering from its replicas: %s", m.id, r)
        return [r for r in results if not isinstance(r, BaseException)]

    # ------------------------------------------------------------------ blocks

    async def stream_blocks(
        self,
        tenant: str,
        expr: LogSelectorExpr,
        start: int,
        end: int,
        stats: QueryStats,
        may_match: Any = None,
    ) -> dict[str, list[Block]]:
        """Per matching stream, its blocks holding entries with start <= ts < end, sorted
        by time and free of duplicates. Blocks may hold entries outside the range: callers
        slice with ``Block.range_indexes``. ``may_match(blob)`` False skips a block."""
        by_stream: dict[str, list[Block]] = {}
        if self._ingesters_needed(end):
            replies = await self._ask_ingesters(
                bus.INGESTER_QUERY,
                {"t": tenant, "q": str(expr), "start": start, "end": end},
                stream=True,
            )
            for pieces in replies:
                for piece in pieces:
                    stats.ingester_lines += piece[5][0]
                    stats.ingester_bytes += piece[5][1]
                    b = piece_block(piece)
                    if len(b):
                        by_stream.setdefault(piece[0], []).append(b)
        fetches = await self._chunk_refs(tenant, expr, start, end, stats)
        stats.chunks_ref += len(fetches)
        chunks = await asyncio.gather(*(self._fetch(ref.key) for _, ref in fetches))
        for (labels, ref), data in zip(fetches, chunks, strict=True):
            stats.chunks_fetched += 1
            stats.chunk_bytes_fetched += len(data)
            try:
                reader = ChunkReader.open(data)
                blocks = reader.blocks_in_range(start, end - 1, self.codec)
            except CorruptDataError as e:
                # A damaged chunk costs its own entries, not the query: the answer
                # carries a warning, the log names the object, the metric counts it.
                stats.damaged_chunks += 1
                metrics.STORE_DAMAGED_OBJECTS.labels("chunk").inc()
                log.error("damaged chunk left out of a query key=%s err=%s", ref.key, e.message)
                continue
            for b in blocks:
                lo, hi = b.range_indexes(start, end)
                stats.store_lines += hi - lo
                stats.store_bytes += b.offsets[hi] - b.offsets[lo]
                if may_match is not None and not may_match(b.blob):
                    stats.blocks_skipped += 1
                    continue
                by_stream.setdefault(labels, []).append(b)
        return {labels: _dedupe(blocks) for labels, blocks in by_stream.items()}

    async def _chunk_refs(
        self, tenant: str, expr: LogSelectorExpr, start: int, end: int, stats: QueryStats
    ) -> list[tuple[str, ChunkRef]]:
        """(labels, chunk) of the store's chunks of matching streams that overlap
        [start, end), less what the query's coprocessors veto."""
        session = coprocessor_host.current()
        if session is not None and session.with_hook("pre_get_index"):
            v = await session.pre_get_index(
                IndexRequest(tenant, coprocessor_host.selector_of(expr), start, end)
            )
            if v.skipped:
                return []
            start, end = v.start, v.end
        damaged: list[str] = []
        series = await self.store.series(tenant, start, end - 1, damaged)
        stats.damaged_index_segments += len(damaged)
        fetches = [
            (s.labels, ref)
            for s in series.values()
            if _match(expr.matchers, s.labels)
            for ref in s.chunks.values()
            if ref.mint < end and ref.maxt >= start
        ]
        if session is not None and session.with_hook("pre_get_chunk"):
            wanted = await session.pre_get_chunk(
                [
                    PluginChunkRef(tenant, labels, r.key, r.mint, r.maxt, r.entries, r.size)
                    for labels, r in fetches
                ]
            )
            fetches = [f for f, keep in zip(fetches, wanted, strict=True) if keep]
        return fetches

    async def _fetch(self, key: str) -> bytes:
        async with self._fetch_sem:
            return await self.store.get_chunk(key)

    # ------------------------------------------------------------------ log queries

    async def select_logs(
        self,
        tenant: str,
        expr: LogSelectorExpr,
        start: int,
        end: int,
        limit: int,
        direction: str,
        stats: QueryStats,
        interval: int = 0,
    ) -> list[StreamResult]:
        """Entries with start <= ts < end after the query's pipeline, at most ``limit`` over
        all output streams: the oldest for forward, the newest for backward. With an
        ``interval``, an entry is returned only if it is at least that far (in the query's
        direction) from the previous one returned, over all streams (Loki's ``interval``)."""
        if interval > 0:
            spaced = await self.select_logs(tenant, expr, start, end, 1 << 62, direction, stats)
            backward = direction == BACKWARD
            return _limit(_space(spaced, interval, backward), limit, backward)
        pipeline = compile_pipeline(expr)
        streams = await self.stream_blocks(
            tenant, expr, start, end, stats, None if pipeline.noop else pipeline.block_may_match
        )
        backward = direction == BACKWARD
        out: dict[str, StreamResult] = {}
        for labels, blocks in streams.items():
            sp = pipeline.for_stream(labels)
            plain = sp.base_labels
            taken = 0
            for b in reversed(blocks) if backward else blocks:
                if taken >= limit:
                    break
                lo, hi = b.range_indexes(start, end)
                if lo >= hi:
                    continue
                idx: Sequence[int] = pipeline.filter_block(b, lo, hi)
                if backward:
                    idx = idx[::-1]
                offs, blob, ts = b.offsets, b.blob, b.ts
                if pipeline.line_filter_only and b.meta_offsets is None:
                    # Fast path: labels are the stream's; lines are slices of the blob.
                    take = idx[: limit - taken]
                    res = out.get(plain.key)
                    if res is None:
                        res = out[plain.key] = StreamResult(plain, [])
                    res.entries.extend((ts[i], blob[offs[i] : offs[i + 1]]) for i in take)
                    taken += len(take)
                    stats.post_filter_lines += len(take)
                    continue
                # Slow path: stages after the line filters, per line.
                for i in idx:
                    r = sp.process(ts[i], blob[offs[i] : offs[i + 1]], b.metadata(i))
                    if r is None:
                        continue
                    line, ll = r
                    res = out.get(ll.key)
                    if res is None:
                        res = out[ll.key] = StreamResult(ll, [])
                    res.entries.append((ts[i], line))
                    taken += 1
                    stats.post_filter_lines += 1
                    if taken >= limit:
                        break
        return _limit(list(out.values()), limit, backward)

    # ------------------------------------------------------------------ metric queries

    async def select_samples(
        self,
        tenant: str,
        expr: RangeAggregationExpr,
        root: Expr,
        start: int,
        end: int,
        stats: QueryStats,
    ) -> list[SampleSeries]:
        """Samples of ``expr``'s log range with start < ts <= end, per output series."""
        ex = compile_sample_extractor(expr, root)
        pipeline = ex.pipeline
        lo_ns, hi_ns = start + 1, end + 1  # (start, end] as [start+1, end+1)
        streams = await self.stream_blocks(
            tenant,
            expr.selector,
            lo_ns,
            hi_ns,
            stats,
            None if pipeline.noop else pipeline.block_may_match,
        )
        parts: dict[str, list[tuple[array, array]]] = {}
        for labels, blocks in streams.items():
            sx = None
            for b in blocks:
                lo, hi = b.range_indexes(lo_ns, hi_ns)
                if lo >= hi:
                    continue
                idx = pipeline.filter_block(b, lo, hi)
                if not len(idx):
                    continue
                if ex.count_only and b.meta_offsets is None:
                    # Fast path: one sample of 1.0 per kept entry, from the ts column.
                    if isinstance(idx, range) and idx.step == 1:
                        ts = b.ts[idx.start : idx.stop]
                    else:
                        ts = array("q", [b.ts[i] for i in idx])
                    parts.setdefault(labels, []).append((ts, array("d", [1.0]) * len(ts)))
                    stats.post_filter_lines += len(ts)
                    continue
                if sx is None:
                    sx = ex.for_stream(labels)
                for key, (ts, vals) in sx.extract_block(b, idx).items():
                    parts.setdefault(key, []).append((ts, vals))
                    stats.post_filter_lines += len(ts)
        return [SampleSeries(key, *_concat_sorted(cols)) for key, cols in sorted(parts.items())]

    # ------------------------------------------------------------------ labels and series

    async def label_names(
        self, tenant: str, start: int, end: int, selector: str | None = None
    ) -> list[str]:
        if selector:  # only the labels of the streams the selector matches, as Loki 3
            names: set[str] = set()
            for labels in await self.series(tenant, [selector], start, end):
                names.update(label_map(labels))
            return sorted(names)
        names = set()
        if self._ingesters_needed(end):
            for reply in await self._ask_ingesters(bus.INGESTER_LABELS, {"t": tenant}):
                names.update(reply)
        for s in (await self.store.series(tenant, start, end)).values():
            names.update(label_map(s.labels))
        return sorted(names)

    async def label_values(
        self, tenant: str, name: str, start: int, end: int, selector: str | None = None
    ) -> list[str]:
        if selector:
            values = set()
            for labels in await self.series(tenant, [selector], start, end):
                v = label_map(labels).get(name)
                if v is not None:
                    values.add(v)
            return sorted(values)
        values: set[str] = set()
        if self._ingesters_needed(end):
            for reply in await self._ask_ingesters(
                bus.INGESTER_LABELS, {"t": tenant, "name": name}
            ):
                values.update(reply)
        for s in (await self.store.series(tenant, start, end)).values():
            v = label_map(s.labels).get(name)
            if v is not None:
                values.add(v)
        return sorted(values)

    async def series(self, tenant: str, selectors: list[str], start: int, end: int) -> list[str]:
        """Canonical label strings of the streams matching any selector."""
        out: set[str] = set()
        matcher_sets = [parse_log_selector(s).matchers for s in selectors] or [()]
        if self._ingesters_needed(end):
            for reply in await self._ask_ingesters(
                bus.INGESTER_SERIES, {"t": tenant, "match": selectors}
            ):
                out.update(reply)
        for s in (await self.store.series(tenant, start, end)).values():
            if any(_match(ms, s.labels) for ms in matcher_sets):
                out.add(s.labels)
        return sorted(out)

    async def chunk_stats(
        self, tenant: str, selector: str, start: int, end: int
    ) -> dict[str, list[tuple[int, int, int, int]]]:
        """Per matching stream, its chunks overlapping [start, end] from the index and the
        ingesters: ``(mint, maxt, entries, raw bytes)``. No data is read. A chunk being
        flushed at this moment may be counted twice (as Loki, an estimate)."""
        matchers = parse_log_selector(selector).matchers if selector else ()
        out: dict[str, list[tuple[int, int, int, int]]] = {}
        if self._ingesters_needed(end):
            req = {"t": tenant, "q": selector, "start": start, "end": end}
            for reply in await self._ask_ingesters(bus.INGESTER_STATS, req):
                for labels, chunks in reply:
                    out.setdefault(labels, []).extend(tuple(c) for c in chunks)
        for s in (await self.store.series(tenant, start, end)).values():
            if _match(matchers, s.labels):
                out.setdefault(s.labels, []).extend(
                    (r.mint, r.maxt, r.entries, r.raw or r.size) for r in s.chunks.values()
                )
        return out

    async def flush(self) -> int:
        """Ask every ingester to flush all its chunks now (Loki's ``/flush``)."""
        members, _ = self.ring.read_set()
        done = await asyncio.gather(
            *(
                bus.request(self.nc, bus.INGESTER_FLUSH.format(id=m.id), {}, FLUSH_TIMEOUT_S)
                for m in members
            ),
            return_exceptions=True,
        )
        failed = [(m.id, r) for m, r in zip(members, done, strict=True) if isinstance(r, Exception)]
        if failed and len(failed) == len(members):
            raise Unavailable(f"no ingester could flush: {failed[0][0]}: {failed[0][1]}")
        for name, err in failed:  # a dying ingester: its replicas hold its data
            log.warning("ingester %s could not flush: %s", name, err)
        return sum(r for r in done if isinstance(r, int))


def _match(matchers: Iterable[Matcher], labels: str) -> bool:
    d = label_map(labels)
    return all(m.matches(d.get(m.name, "")) for m in matchers)


def _dedupe(blocks: list[Block]) -> list[Block]:
    """Blocks sorted by time; overlapping ones merged into one without duplicates."""
    blocks = sorted((b for b in blocks if len(b)), key=lambda b: (b.ts[0], b.ts[-1]))
    out: list[Block] = []
    group: list[Block] = []
    group_end = 0
    for b in blocks:
        if group and b.ts[0] <= group_end:
            group.append(b)
            group_end = max(group_end, b.ts[-1])
            continue
        if group:
            out.append(_merge_group(group))
        group, group_end = [b], b.ts[-1]
    if group:
        out.append(_merge_group(group))
    return out


def _merge_group(group: list[Block]) -> Block:
    if len(group) > 1:
        # Replicas cut identical blocks: keep one of each (compared as bytes, in C).
        unique: dict[tuple[bytes, ...], Block] = {}
        for b in group:
            key = (b.ts.tobytes(), array("q", b.offsets).tobytes(), b.blob, b.meta_blob)
            if b.meta_offsets is not None:
                key += (array("q", b.meta_offsets).tobytes(),)
            unique.setdefault(key, b)
        group = list(unique.values())
    if len(group) == 1:
        # Fast path: no overlap, nothing to de-duplicate.
        return group[0]
    # Slow path: replicas or replays overlap: sort by (ts, line), drop exact duplicates.
    ts = array("q")
    lens = array("I")
    blobs = []
    metas: list[bytes] | None = None
    if any(b.meta_offsets is not None for b in group):
        metas = []
    for b in group:
        ts.extend(b.ts)
        lens.extend(b.offsets[i + 1] - b.offsets[i] for i in range(len(b)))
        blobs.append(b.blob)
        if metas is not None:
            metas.extend(b.metadata(i) for i in range(len(b)))
    return decode_block(build_block(ts, lens, b"".join(blobs), metas))


def _limit(streams: list[StreamResult], limit: int, backward: bool) -> list[StreamResult]:
    """Keep the ``limit`` entries nearest the direction's start over all streams."""
    for s in streams:
        # A stream fed by several source streams (after a parser) may be out of order.
        s.entries.sort(key=_ts, reverse=backward)
    total = sum(len(s.entries) for s in streams)
    if total > limit:
        merged = heapq.merge(
            *([(ts, i) for ts, _ in s.entries] for i, s in enumerate(streams)), reverse=backward
        )
        keep = [0] * len(streams)
        for n, (_, i) in enumerate(merged):
            if n >= limit:
                break
            keep[i] += 1
        streams = [
            StreamResult(s.labels, s.entries[:k]) for s, k in zip(streams, keep, strict=True)
        ]
    return [s for s in streams if s.entries]


def _ts(entry: tuple[int, bytes]) -> int:
    return entry[0]


def _space(streams: list[StreamResult], interval: int, backward: bool) -> list[StreamResult]:
    merged = heapq.merge(
        *([(ts, i, line) for ts, line in s.entries] for i, s in enumerate(streams)),
        reverse=backward,
    )
    out = [StreamResult(s.labels, []) for s in streams]
    last: int | None = None
    for ts, i, line in merged:
        if last is None or (last - ts if backward else ts - last) >= interval:
            out[i].entries.append((ts, line))
            last = ts
    return [s for s in out if s.entries]


def _concat_sorted(cols: list[tuple[array, array]]) -> tuple[array, array]:
    if len(cols) == 1:
        return cols[0]
    ts = array("q")
    vals = array("d")
    for t, v in cols:
        ts.extend(t)
        vals.extend(v)
    if all(ts[i] <= ts[i + 1] for i in range(len(ts) - 1)):
        return ts, vals
    order = sorted(range(len(ts)), key=ts.__getitem__)
    return array("q", [ts[i] for i in order]), array("d", [vals[i] for i in order])
