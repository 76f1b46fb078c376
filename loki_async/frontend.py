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
import hashlib
import time
from array import array
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any

import msgpack
import zstandard

from . import bus
from .config import Config, format_duration
from .coprocessor import CoprocessorError, IndexStats, LogStream
from .coprocessor_host import Registry, Session, new_query_id, plan_splits
from .errors import BadRequest, CorruptDataError, QueryTimeout
from .logql import parse_expr
from .logql.ast import (
    Expr,
    LogRange,
    LogSelectorExpr,
    RangeAggregationExpr,
    SampleExpr,
    walk,
)
from .logql.engine import (
    ERR_SERIES_LIMIT,
    Matrix,
    Sample,
    Scalar,
    Series,
    Vector,
    evaluate,
    merge_matrices,
)
from .logql.pipeline import LineLabels
from .objstore import ObjectClient
from .querier import BACKWARD, FORWARD, Querier, QueryStats, StreamResult, _limit

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
    categorize: bool = False  # answer with the categorize-labels encoding
    coprocessors: str = ""  # which plugins run: "" all, "none", "a,b", "-a,-b"
    coprocessor_versions: str = ""  # required plugin versions: "traceid>=1.2,<2; ..."

    @property
    def is_log(self) -> bool:
        return isinstance(self.expr, LogSelectorExpr)

    def to_wire(self) -> dict[str, Any]:
        """Everything but the parsed expression, for JetStream messages and tickets."""
        d = asdict(self)
        del d["expr"]
        return d

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> QueryRequest:
        """Rebuild a request sent with :meth:`to_wire` (the query is parsed again)."""
        names = cls.__dataclass_fields__.keys() - {"expr"}
        return cls(expr=parse_expr(data["query"]), **{k: data[k] for k in names if k in data})

    def fingerprint(self) -> str:
        """Equal for requests that must give equal results (coalescing): the normalized
        query and every parameter that shapes the result."""
        key = (
            str(self.expr),
            self.start,
            self.end,
            self.step,
            self.interval,
            self.limit,
            self.direction,
            self.instant,
            self.categorize,
            self.no_cache,
            self.coprocessors,
            self.coprocessor_versions,
        )
        return hashlib.sha256(msgpack.packb(key)).hexdigest()[:32]


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
    coprocessors: dict[str, dict[str, int]] = field(default_factory=dict)


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

    async def apply_coprocessors(
        self, req: QueryRequest, splits: list[Split], session: Session | None, query_id: str
    ) -> tuple[list[Split | None], dict[str, dict[str, int]]]:
        """The coprocessors' ``pre_query`` verdict on every split: None for a skipped
        split, a smaller Split for a narrowed one; and what each plugin did."""
        planned = await plan_splits(
            session,
            tenant=req.tenant,
            query=req.query,
            expr=req.expr,
            kind="log" if req.is_log else "instant" if req.instant else "metric",
            query_start=req.start,
            query_end=req.end,
            step=req.step,
            query_id=query_id,
            splits=[(s.start, s.end) for s in splits],
        )
        return [Split(*r) if r else None for r in planned.ranges], planned.counts

    def merge(self, req: QueryRequest, parts: list[Any]) -> Any:
        """Merge split results given in plan order (none: the query's empty result)."""
        if not parts and not req.is_log:
            return Vector([]) if req.instant else Matrix([])
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


# --------------------------------------------------------------------------- split results

_ZSTD_MIN = 2048  # smaller encodings are stored as they are
_RAW, _ZSTD = b"M", b"Z"


def encode_split(value: Any) -> bytes:
    """A split's result as bytes: log streams keep their entries as packed columns (a
    timestamp array, a length array and one blob of lines); metric results their arrays."""
    if isinstance(value, list):  # log streams
        body: Any = [
            "l",
            [
                [
                    s.labels.stream,
                    s.labels.structured_metadata,
                    s.labels.parsed,
                    array("q", [t for t, _ in s.entries]).tobytes(),
                    array("I", [len(line) for _, line in s.entries]).tobytes(),
                    b"".join(line for _, line in s.entries),
                ]
                for s in value
            ],
        ]
    elif isinstance(value, Matrix):
        body = [
            "m",
            [[list(x.metric), x.ts_ms.tobytes(), x.values.tobytes()] for x in value.series],
        ]
    elif isinstance(value, Vector):
        body = ["v", [[list(x.metric), x.ts_ms, x.value] for x in value.samples]]
    elif isinstance(value, Scalar):
        body = ["s", value.ts_ms, value.value]
    else:
        raise AssertionError(f"BUG: cannot encode split result {type(value).__name__}")
    raw = msgpack.packb(body, use_bin_type=True)
    if len(raw) < _ZSTD_MIN:
        return _RAW + raw
    return _ZSTD + zstandard.ZstdCompressor(level=1).compress(raw)


def decode_split(data: bytes) -> Any:
    """The inverse of :func:`encode_split`."""
    try:
        raw = data[1:] if data[:1] == _RAW else zstandard.decompress(data[1:])
        kind, *rest = msgpack.unpackb(raw, raw=False)
    except (ValueError, zstandard.ZstdError, msgpack.UnpackException) as e:
        raise CorruptDataError(f"unreadable split result: {e}") from None
    if kind == "l":
        out = []
        for stream, sm, parsed, ts_b, lens_b, blob in rest[0]:
            ts, lens = array("q"), array("I")
            ts.frombytes(ts_b)
            lens.frombytes(lens_b)
            entries = []
            pos = 0
            for t, n in zip(ts, lens, strict=True):
                entries.append((t, blob[pos : pos + n]))
                pos += n
            out.append(StreamResult(LineLabels(stream, sm, parsed), entries))
        return out
    if kind == "m":
        series = []
        for metric, ts_b, vals_b in rest[0]:
            ts, vals = array("q"), array("d")
            ts.frombytes(ts_b)
            vals.frombytes(vals_b)
            series.append(Series(tuple(tuple(p) for p in metric), ts, vals))
        return Matrix(series)
    if kind == "v":
        return Vector([Sample(tuple(tuple(p) for p in m), t, v) for m, t, v in rest[0]])
    if kind == "s":
        return Scalar(rest[0], rest[1])
    raise CorruptDataError(f"unreadable split result: unknown kind {kind!r}")


def entry_count(value: Any) -> int:
    """Entries in a log split's result (0 for metric results)."""
    return sum(len(s.entries) for s in value) if isinstance(value, list) else 0


class SplitResults:
    """Split results by key in the split-cache KV bucket; values too big for a KV
    message go to the chunk object store and the bucket keeps a pointer to them.

    Keys: ``c.<tenant>.<hash>`` for results that can no longer change (shared by every
    query that plans the same split), ``p.<tenant>.<execution>.<split>`` for the rest.
    """

    _POINTER = b"@"

    def __init__(self, kv: Any, objects: ObjectClient | None) -> None:
        self.kv = kv
        self.objects = objects

    async def put(self, key: str, data: bytes) -> None:
        if len(data) > bus.KV_VALUE_MAX_BYTES and self.objects is not None:
            name = "async-splits/" + key.replace(".", "/")
            await self.objects.put(name, data)
            data = self._POINTER + name.encode()
        await bus.js_retry(lambda: self.kv.put(key, data), "store split result")

    async def get(self, key: str) -> bytes | None:
        """The bytes under ``key``, or None if there are none (never stored, expired)."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await bus.js_retry(lambda: self.kv.get(key), "read split result")
        except KeyNotFoundError:
            return None
        data = entry.value or b""
        if data[:1] == self._POINTER and self.objects is not None:
            return await self.objects.get(data[1:].decode())
        return data or None

    async def delete(self, key: str) -> None:
        from nats.js.errors import KeyNotFoundError

        with contextlib.suppress(KeyNotFoundError):
            await bus.js_retry(lambda: self.kv.purge(key), "delete split result")


def cache_key(req: QueryRequest, split: Split) -> str:
    """The split-cache key of a split whose result can no longer change."""
    shape = (str(req.expr), split.start, split.end, req.step, req.interval, req.instant)
    if req.is_log:
        shape += (req.limit, req.direction)
    digest = hashlib.sha256(msgpack.packb(shape)).hexdigest()[:40]
    return f"c.{bus.key_token(req.tenant)}.{digest}"


def private_key(tenant: str, execution: str, index: int) -> str:
    """Where the result of split ``index`` of one execution is kept when not cacheable."""
    return f"p.{bus.key_token(tenant)}.{execution}.{index}"


def fresh_boundary(cfg: Config) -> int:
    """Splits ending before this time (ns) hold data that can no longer change."""
    return time.time_ns() - int(cfg.limits_config.max_cache_freshness_per_query_s * NS)


def cacheable(req: QueryRequest, split: Split, fresh_until: int) -> bool:
    return not req.no_cache and not req.instant and split.end < fresh_until


class ResultsCache:
    """In-process LRU of decoded split results, in front of the shared split cache."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        v = self._items.get(key)
        if v is not None:
            self._items.move_to_end(key)
        return v

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)


class Frontend:
    """The sync query path: limits, plan, concurrent split execution, merge, cache."""

    def __init__(
        self,
        cfg: Config,
        querier: Querier,
        split_results: SplitResults | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry
        lim = cfg.limits_config
        self.planner = Planner(
            querier, int(lim.split_queries_by_interval_s * NS), lim.max_query_series
        )
        qr = cfg.query_range
        self.cache = ResultsCache(qr.results_cache_max_entries) if qr.cache_results else None
        # The split cache shared with the workers (and other frontends) behind the LRU.
        self.split_results = split_results if qr.cache_results else None

    def validate(self, req: QueryRequest) -> None:
        """Loki's query limits, with Loki's messages (400)."""
        lim = self.cfg.limits_config
        # A range vector reads [range] back from each step: an instant query over
        # [100000h] reads as much as a range query over 100000h.
        longest = max((e.interval_ns for e in walk(req.expr) if isinstance(e, LogRange)), default=0)
        length_s = max(req.end - req.start, longest) / NS
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
        self.session(req)  # the plugin list and version constraints can be met
        matchers = sum(len(e.matchers) for e in walk(req.expr) if isinstance(e, LogSelectorExpr))
        if matchers > lim.max_streams_matchers_per_query > 0:
            raise BadRequest(
                f"max streams matchers per query exceeded, matchers-count > limit "
                f"({matchers} > {lim.max_streams_matchers_per_query})"
            )

    def session(self, req: QueryRequest, *, strict: bool = True) -> Session | None:
        """The coprocessors ``req`` runs with (None if there is no registry). BadRequest
        when the request's plugin list or version constraints cannot be met."""
        if self.registry is None:
            if req.coprocessor_versions.strip():
                raise BadRequest(
                    "coprocessors are not enabled on this server, but the request requires "
                    + req.coprocessor_versions.strip()
                )
            return None
        return self.registry.session(req.coprocessors, req.coprocessor_versions, strict=strict)

    async def run(self, req: QueryRequest) -> QueryResult:
        self.validate(req)
        stats = QueryStats()
        timeout = self.cfg.limits_config.query_timeout_s
        session = self.session(req)
        try:
            with session or contextlib.nullcontext():
                async with asyncio.timeout(timeout or None):
                    splits = self.planner.plan(req)
                    stats.splits += len(splits)
                    planned, _ = await self.planner.apply_coprocessors(
                        req, splits, session, new_query_id()
                    )
                    if req.is_log:
                        parts = await self._run_log(req, stats, planned)
                    else:
                        parts = await self._run_metric(req, stats, planned)
        except TimeoutError:
            raise QueryTimeout(
                "request timed out, decrease the duration of the request or add more label "
                "matchers (prefer exact match over regex match) to reduce the amount of data "
                "processed"
            ) from None
        value = self.planner.merge(req, parts)
        counts = session.report() if session is not None else {}
        if req.is_log:
            return QueryResult(streams=value, stats=stats, coprocessors=counts)
        return QueryResult(value=value, stats=stats, coprocessors=counts)

    def _parallelism(self) -> int:
        return max(self.cfg.limits_config.max_query_parallelism, 1)

    async def _run_log(
        self, req: QueryRequest, stats: QueryStats, splits: list[Split | None]
    ) -> list[Any]:
        """Run splits in direction order, up to ``parallelism`` at a time; stop once the
        splits finished in order hold ``limit`` entries (later splits cannot contribute).
        Skipped splits (None) count as empty."""
        results: list[Any] = [None] * len(splits)
        tasks: dict[int, asyncio.Task[Any]] = {}
        nxt = 0
        done_prefix = 0
        have = 0
        # Slow start: one split, then twice as many after each that did not fill the
        # limit, so a limit met by the newest split reads nothing else.
        width = 1
        try:
            while done_prefix < len(splits):
                while nxt < len(splits) and len(tasks) < width:
                    split = splits[nxt]
                    if split is not None:
                        tasks[nxt] = asyncio.ensure_future(self.planner.execute(req, split, stats))
                    nxt += 1
                task = tasks.pop(done_prefix, None)
                results[done_prefix] = [] if task is None else await task
                have += sum(len(s.entries) for s in results[done_prefix])
                done_prefix += 1
                if have >= req.limit:
                    break
                width = min(width * 2, self._parallelism())
        finally:
            for t in tasks.values():
                t.cancel()
            for t in tasks.values():
                with contextlib.suppress(BaseException):
                    await t
        return [r for r in results[:done_prefix]]

    async def _run_metric(
        self, req: QueryRequest, stats: QueryStats, splits: list[Split | None]
    ) -> list[Any]:
        sem = asyncio.Semaphore(self._parallelism())
        fresh_until = fresh_boundary(self.cfg)

        async def one(split: Split) -> Any:
            key = None
            if self.cache is not None and cacheable(req, split, fresh_until):
                key = cache_key(req, split)
                stats.cache_lookups += 1
                hit = self.cache.get(key)
                if hit is None and self.split_results is not None:
                    data = await self.split_results.get(key)
                    if data is not None:
                        hit = decode_split(data)
                        self.cache.put(key, hit)
                if hit is not None:
                    stats.cache_hits += 1
                    return hit
            async with sem:
                value = await self.planner.execute(req, split, stats)
            if key is not None and self.cache is not None:
                self.cache.put(key, value)
                if self.split_results is not None:
                    await self.split_results.put(key, encode_split(value))
            return value

        return list(await asyncio.gather(*(one(s) for s in splits if s is not None)))


class PluginHost:
    """What a coprocessor's ``handle`` may do with one tenant's data (the SDK's ``Host``):
    log queries through the frontend, under the tenant's limits, with coprocessors off
    (a plugin cannot call itself), and index statistics."""

    def __init__(self, frontend: Frontend, tenant: str) -> None:
        self.frontend = frontend
        self.tenant = tenant

    async def select_logs(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        *,
        limit: int = 1000,
        direction: str = BACKWARD,
    ) -> list[LogStream]:
        try:
            expr = parse_expr(query)
            if not isinstance(expr, LogSelectorExpr):
                raise BadRequest(f"select_logs needs a log query, got a metric query: {query}")
            if direction not in (BACKWARD, FORWARD):
                raise BadRequest(f"direction must be backward or forward, got {direction!r}")
            if not 0 <= start_ns < end_ns:
                raise BadRequest("the end of the range must be after its start")
            req = QueryRequest(
                self.tenant,
                query,
                expr,
                start_ns,
                end_ns,
                limit=limit,
                direction=direction,
                coprocessors="none",
            )
            res = await self.frontend.run(req)
        except BadRequest as e:
            raise CoprocessorError("invalid_request", e.message) from None
        return [
            LogStream(
                dict(s.labels.labels),
                [(ts, line.decode("utf-8", "replace")) for ts, line in s.entries],
            )
            for s in res.streams or []
        ]

    async def index_stats(self, selector: str, start_ns: int, end_ns: int) -> IndexStats:
        try:
            streams = await self.frontend.planner.querier.chunk_stats(
                self.tenant, selector, start_ns, end_ns
            )
        except BadRequest as e:
            raise CoprocessorError("invalid_request", e.message) from None
        chunks = [c for cs in streams.values() for c in cs]
        return IndexStats(
            len(streams), len(chunks), sum(c[2] for c in chunks), sum(c[3] for c in chunks)
        )
