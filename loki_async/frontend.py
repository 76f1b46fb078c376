"""Query-frontend: validation, limits, split planning, split execution, merge, results cache.

A query is planned into **splits** by ``split_queries_by_interval`` (boundaries aligned
to multiples of the interval since the epoch):

* log queries split their ``[start, end)`` range; splits run in the query's direction
  (newest first for backward) with bounded concurrency, and the run stops as soon as
  the splits finished in order hold ``limit`` entries;
* metric range queries split their step times, so every split evaluates exactly the
  whole query's points in its sub-range and the merge is a concatenation per series.
  Splits whose data lies entirely in the past are cached (tenant, normalized query,
  split range, step).

:class:`Planner` (plan, execute one split, merge) is the reusable unit: the sync path
here drives it with asyncio; asynchronous workers drive the same planner over
JetStream, and coprocessors act between planning and execution.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from .config import Config, format_duration
from .errors import BadRequest, QueryTimeout
from .logql.ast import (
    Expr,
    LogSelectorExpr,
    RangeAggregationExpr,
    SampleExpr,
    walk,
)
from .logql.engine import ERR_SERIES_LIMIT, evaluate, merge_matrices
from .querier import BACKWARD, Querier, QueryStats, StreamResult, _limit

NS = 10**9


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """A validated query: times in ns; ``step`` 0 for log and instant queries."""

    tenant: str
    query: str
    expr: Expr
    start: int
    end: int
    step: int = 0
    interval: int = 0
    limit: int = 100
    direction: str = BACKWARD
    no_cache: bool = False  # Cache-Control: no-cache: neither read nor fill the results cache
    instant: bool = False  # /query: one evaluation at `end`

    @property
    def is_log(self) -> bool:
        return isinstance(self.expr, LogSelectorExpr)


@dataclass(frozen=True, slots=True)
class Split:
    """Log queries: entries with start <= ts < end. Metric queries: step times in
    [start, end]."""

    start: int
    end: int


@dataclass(slots=True)
class QueryResult:
    """A merged result: ``streams`` for log queries, ``value`` (engine result) otherwise."""

    streams: list[StreamResult] | None = None
    value: Any = None
    stats: QueryStats = field(default_factory=QueryStats)


class _SplitSource:
    """The engine's SampleSource for one tenant, counting into one stats record."""

    def __init__(self, querier: Querier, tenant: str, stats: QueryStats) -> None:
        self.querier = querier
        self.tenant = tenant
        self.stats = stats

    async def select_samples(
        self, expr: RangeAggregationExpr, root: Expr, start_ns: int, end_ns: int
    ) -> list[Any]:
        return await self.querier.select_samples(
            self.tenant, expr, root, start_ns, end_ns, self.stats
        )


class Planner:
    """Plans a query into splits, executes one split, merges split results."""

    def __init__(self, querier: Querier, split_interval_ns: int, max_series: int) -> None:
        self.querier = querier
        self.interval = split_interval_ns
        self.max_series = max_series

    def plan(self, req: QueryRequest) -> list[Split]:
        """Splits in execution order (the query's direction for log queries)."""
        if req.instant:
            return [Split(req.start, req.end)]
        iv = self.interval if self.interval > 0 else 1 << 62
        if req.is_log:
            splits = []
            lo = req.start
            while lo < req.end:
                hi = min((lo // iv + 1) * iv, req.end)
                splits.append(Split(lo, hi))
                lo = hi
            if req.direction == BACKWARD:
                splits.reverse()
            return splits or [Split(req.start, req.end)]
        # As Loki's frontend: step times on multiples of the step (start rounded down,
        # end rounded up), so split results are reusable across overlapping queries.
        step = req.step
        t, end = req.start // step * step, -(-req.end // step) * step
        splits = []
        while t <= end:
            boundary = (t // iv + 1) * iv
            # The last step time before the next interval boundary (and <= end).
            last = t + max((min(boundary - 1, end) - t) // step, 0) * step
            splits.append(Split(t, last))
            t = last + step
        return splits

    async def execute(self, req: QueryRequest, split: Split, stats: QueryStats) -> Any:
        """One split's result: a list of StreamResult (log) or an engine result (metric)."""
        if req.is_log:
            return await self.querier.select_logs(
                req.tenant,
                req.expr,
                split.start,
                split.end,
                req.limit,
                req.direction,
                stats,
                req.interval,
            )
        assert isinstance(req.expr, SampleExpr), "BUG: planner got a non-query expression"
        return await evaluate(
            req.expr,
            _SplitSource(self.querier, req.tenant, stats),
            start_ns=split.start,
            end_ns=split.end,
            step_ns=req.step,
            instant=req.instant,
            max_series=self.max_series,
        )

    def merge(self, req: QueryRequest, parts: list[Any]) -> Any:
        """Merge split results given in plan order."""
        if req.is_log:
            by_key: dict[str, StreamResult] = {}
            for part in parts:
                for s in part:
                    r = by_key.get(s.labels.key)
                    if r is None:
                        by_key[s.labels.key] = StreamResult(s.labels, list(s.entries))
                    else:
                        r.entries.extend(s.entries)
            return _limit(list(by_key.values()), req.limit, req.direction == BACKWARD)
        if len(parts) == 1:
            return parts[0]
        merged = merge_matrices(parts)
        if len(merged.series) > self.max_series:
            raise BadRequest(ERR_SERIES_LIMIT.format(self.max_series))
        return merged


class ResultsCache:
    """In-memory LRU of metric split results that can no longer change."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def get(self, key: tuple[Any, ...]) -> Any:
        v = self._items.get(key)
        if v is not None:
            self._items.move_to_end(key)
        return v

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


class Frontend:
    """The sync query path: limits, plan, concurrent split execution, merge, cache."""

    def __init__(self, cfg: Config, querier: Querier) -> None:
        self.cfg = cfg
        lim = cfg.limits_config
        self.planner = Planner(
            querier, int(lim.split_queries_by_interval_s * NS), lim.max_query_series
        )
        qr = cfg.query_range
        self.cache = ResultsCache(qr.results_cache_max_entries) if qr.cache_results else None

    def validate(self, req: QueryRequest) -> None:
        """Loki's query limits, with Loki's messages (400)."""
        lim = self.cfg.limits_config
        length_s = (req.end - req.start) / NS
        if lim.max_query_length_s and length_s > lim.max_query_length_s:
            raise BadRequest(
                f"the query time range exceeds the limit (query length: "
                f"{format_duration(length_s)}, limit: {format_duration(lim.max_query_length_s)})"
            )
        if req.is_log and req.limit > lim.max_entries_limit_per_query > 0:
            raise BadRequest(
                f"max entries limit per query exceeded, limit > max_entries_limit_per_query "
                f"({req.limit} > {lim.max_entries_limit_per_query})"
            )
        matchers = sum(len(e.matchers) for e in walk(req.expr) if isinstance(e, LogSelectorExpr))
        if matchers > lim.max_streams_matchers_per_query > 0:
            raise BadRequest(
                f"max streams matchers per query exceeded, matchers-count > limit "
                f"({matchers} > {lim.max_streams_matchers_per_query})"
            )

    async def run(self, req: QueryRequest) -> QueryResult:
        self.validate(req)
        stats = QueryStats()
        timeout = self.cfg.limits_config.query_timeout_s
        try:
            async with asyncio.timeout(timeout or None):
                if req.is_log:
                    parts = await self._run_log(req, stats)
                else:
                    parts = await self._run_metric(req, stats)
        except TimeoutError:
            raise QueryTimeout(
                "request timed out, decrease the duration of the request or add more label "
                "matchers (prefer exact match over regex match) to reduce the amount of data "
                "processed"
            ) from None
        value = self.planner.merge(req, parts)
        if req.is_log:
            return QueryResult(streams=value, stats=stats)
        return QueryResult(value=value, stats=stats)

    def _parallelism(self) -> int:
        return max(self.cfg.limits_config.max_query_parallelism, 1)

    async def _run_log(self, req: QueryRequest, stats: QueryStats) -> list[Any]:
        """Run splits in direction order, ``parallelism`` at a time; stop once the splits
        finished in order hold ``limit`` entries (later splits cannot contribute)."""
        splits = self.planner.plan(req)
        stats.splits += len(splits)
        results: list[Any] = [None] * len(splits)
        tasks: dict[int, asyncio.Task[Any]] = {}
        nxt = 0
        done_prefix = 0
        have = 0
        try:
            while done_prefix < len(splits):
                while nxt < len(splits) and len(tasks) < self._parallelism():
                    tasks[nxt] = asyncio.ensure_future(
                        self.planner.execute(req, splits[nxt], stats)
                    )
                    nxt += 1
                results[done_prefix] = await tasks.pop(done_prefix)
                have += sum(len(s.entries) for s in results[done_prefix])
                done_prefix += 1
                if have >= req.limit:
                    break
        finally:
            for t in tasks.values():
                t.cancel()
            for t in tasks.values():
                with contextlib.suppress(BaseException):
                    await t
        return [r for r in results[:done_prefix]]

    async def _run_metric(self, req: QueryRequest, stats: QueryStats) -> list[Any]:
        splits = self.planner.plan(req)
        stats.splits += len(splits)
        sem = asyncio.Semaphore(self._parallelism())
        fresh_until = time.time_ns() - int(
            self.cfg.limits_config.max_cache_freshness_per_query_s * NS
        )
        norm = str(req.expr)

        async def one(split: Split) -> Any:
            key = (req.tenant, norm, split.start, split.end, req.step)
            cacheable = (
                self.cache is not None
                and not req.no_cache
                and not req.instant
                and split.end < fresh_until
            )
            if cacheable:
                stats.cache_lookups += 1
                hit = self.cache.get(key)
                if hit is not None:
                    stats.cache_hits += 1
                    return hit
            async with sem:
                value = await self.planner.execute(req, split, stats)
            if cacheable:
                self.cache.put(key, value)
            return value

        return list(await asyncio.gather(*(one(s) for s in splits)))
