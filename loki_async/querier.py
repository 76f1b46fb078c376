"""Querier: selects entries from the ingesters' memory and from the store, merged.

The ingesters are asked first, the store second: a chunk that leaves an ingester's
memory is already in the store's index by then, so nothing falls between the two.
Replica and replay duplicates (same stream, timestamp and line) are dropped.
Whole blocks outside the time range are rejected before they are decompressed.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from dataclasses import dataclass, field
from typing import Any

from . import bus
from .chunk import Block, ChunkReader, Codec
from .config import QuerierConfig
from .errors import BadRequest
from .ingester import piece_block
from .labels import label_map
from .logql import parse_log_selector
from .logql.syntax import Matcher
from .ring import Ring
from .store import Store

FORWARD, BACKWARD = "forward", "backward"


@dataclass(slots=True)
class QueryStats:
    """What a query touched; reported in Loki's ``stats`` block."""

    ingester_lines: int = 0
    ingester_bytes: int = 0
    store_lines: int = 0
    store_bytes: int = 0
    chunks_fetched: int = 0
    chunk_bytes_fetched: int = 0
    started: float = field(default_factory=time.perf_counter)


@dataclass(slots=True)
class StreamResult:
    labels: str
    entries: list[Entry]  # in the query's direction


Entry = tuple[int, bytes, bytes]  # (ts ns, line, encoded structured metadata)


def _take(b: Block, start: int, end: int, limit: int, direction: str) -> list[Entry]:
    """At most ``limit`` entries of a sorted block in [start, end), from the direction's end."""
    lo, hi = b.range_indexes(start, end)
    if direction == FORWARD:
        hi = min(hi, lo + limit)
    else:
        lo = max(lo, hi - limit)
    offs, blob, ts = b.offsets, b.blob, b.ts
    if b.meta_offsets is None:
        # Fast path: no structured metadata in this block.
        return [(ts[i], blob[offs[i] : offs[i + 1]], b"") for i in range(lo, hi)]
    return [(ts[i], blob[offs[i] : offs[i + 1]], b.metadata(i)) for i in range(lo, hi)]


class Querier:
    """Log selection across ingesters and store; label and series lookups."""

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
        members = self.ring.healthy()
        call = bus.request_stream if stream else bus.request
        results = await asyncio.gather(
            *(call(self.nc, subject.format(id=m.id), req, self.timeout_s) for m in members)
        )
        return results

    async def select_logs(
        self,
        tenant: str,
        selector: str,
        start: int,
        end: int,
        limit: int,
        direction: str,
        stats: QueryStats | None = None,
    ) -> list[StreamResult]:
        """Entries of streams matching ``selector`` with start <= ts < end, newest first for
        backward, oldest first for forward; at most ``limit`` entries over all streams."""
        stats = stats or QueryStats()
        expr = parse_log_selector(selector)
        if expr.stages:
            # Never answer a filtered query with unfiltered lines.
            raise BadRequest(
                'only stream selectors such as {app="x"} are supported by query_range '
                "so far; line filters, parsers and formatters are not"
            )
        matchers = expr.matchers
        by_stream: dict[str, list[list[Entry]]] = {}
        if self._ingesters_needed(end):
            replies = await self._ask_ingesters(
                bus.INGESTER_QUERY,
                {"t": tenant, "q": selector, "start": start, "end": end},
                stream=True,
            )
            for pieces in replies:
                for piece in pieces:
                    b = piece_block(piece)
                    stats.ingester_lines += len(b)
                    stats.ingester_bytes += len(b.blob)
                    by_stream.setdefault(piece[0], []).append(
                        _take(b, start, end, limit, direction)
                    )
        series = await self.store.series(tenant, start, end - 1)
        fetches = []
        for s in series.values():
            if not _match(matchers, s.labels):
                continue
            for ref in s.chunks.values():
                fetches.append((s.labels, ref.key))
        chunks = await asyncio.gather(*(self._fetch(k) for _, k in fetches))
        for (labels, _), data in zip(fetches, chunks, strict=True):
            stats.chunks_fetched += 1
            stats.chunk_bytes_fetched += len(data)
            reader = ChunkReader.open(data)
            for b in reader.blocks_in_range(start, end - 1, self.codec):
                stats.store_lines += len(b)
                stats.store_bytes += len(b.blob)
                by_stream.setdefault(labels, []).append(_take(b, start, end, limit, direction))
        return _merge(by_stream, limit, direction)

    async def _fetch(self, key: str) -> bytes:
        async with self._fetch_sem:
            return await self.store.get_chunk(key)

    async def label_names(self, tenant: str, start: int, end: int) -> list[str]:
        names: set[str] = set()
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
        if self._ingesters_needed(end):
            for reply in await self._ask_ingesters(
                bus.INGESTER_SERIES, {"t": tenant, "match": selectors}
            ):
                out.update(reply)
        matcher_sets = [parse_log_selector(s).matchers for s in selectors]
        for s in (await self.store.series(tenant, start, end)).values():
            if any(_match(ms, s.labels) for ms in matcher_sets):
                out.add(s.labels)
        return sorted(out)


def _match(matchers: list[Matcher], labels: str) -> bool:
    d = label_map(labels)
    return all(m.matches(d.get(m.name, "")) for m in matchers)


def _merge(
    by_stream: dict[str, list[list[Entry]]], limit: int, direction: str
) -> list[StreamResult]:
    """Per stream: merge pieces, drop duplicates; then keep the global top ``limit``."""
    reverse = direction == BACKWARD
    streams: list[StreamResult] = []
    for labels, pieces in by_stream.items():
        entries = sorted({e for p in pieces for e in p}, reverse=reverse)
        streams.append(StreamResult(labels, entries[:limit]))
    total = sum(len(s.entries) for s in streams)
    if total > limit:
        # Global cut: the limit applies to all streams together, by time.
        merged = heapq.merge(
            *([(e[0], i) for e in s.entries] for i, s in enumerate(streams)), reverse=reverse
        )
        keep = [0] * len(streams)
        for n, (_, i) in enumerate(merged):
            if n >= limit:
                break
            keep[i] += 1
        streams = [
            StreamResult(s.labels, s.entries[:k]) for s, k in zip(streams, keep, strict=True) if k
        ]
    return [s for s in streams if s.entries]
