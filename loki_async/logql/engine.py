"""The LogQL metric engine: evaluates a :class:`SampleExpr` over samples into Loki's results.

Semantics follow Grafana Loki 3.x (``pkg/logql``: ``range_vector.go``, ``evaluator.go``,
``engine.go``), which in turn follows Prometheus' PromQL for vector matching and
aggregation; both are reproduced here from their observable behaviour, sharing no code:

* a range aggregation at step time ``t`` sees the samples in ``(t - range - offset,
  t - offset]``; a series appears at a step only if its window holds samples
  (``absent_over_time`` is the exception: 1 when no series has any);
* ``rate`` is ``count / range`` (``sum / range`` with ``unwrap``), ``rate_counter`` is
  Loki's copy of Prometheus' extrapolated counter rate, including its mix of
  nanosecond sample times and a millisecond range;
* vector aggregations, ``topk``/``bottomk`` heaps, ``sort``/``sort_desc``, binary
  operations (``on``/``ignoring``, ``group_left``/``group_right``, ``bool``, set
  operations) and ``label_replace`` behave as Loki's evaluator, with its messages;
* a series that still carries ``__error__`` fails the query (HTTP 400), as does a
  result with more than ``max_series`` series;
* an instant query returns a vector sorted by labels (unless the query uses ``sort`` or
  ``sort_desc``) or a scalar; a range query returns a matrix sorted by labels.

Evaluation is columnar: every node yields, per series, the step indices where it has a
value and those values. Range windows are found by bisection over each series' sorted
timestamps, and sums use prefix sums where they are exact, so a range query with many
steps costs ``O(n + steps * log n)`` per series instead of ``O(n * steps)``.

Each step is independent of the others, so a range query evaluated as several splits
of its step times (with :func:`merge_matrices` joining the parts) gives exactly the
points of the whole query.
"""

from __future__ import annotations

import asyncio
import math
import operator
import re
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, reduce
from itertools import accumulate, pairwise
from typing import Protocol, TypeAlias

from loki_async.errors import BadRequest
from loki_async.labels import label_map
from loki_async.logql.ast import (
    CARD_ONE_TO_MANY,
    CARD_ONE_TO_ONE,
    MATCH_EQUAL,
    BinOpExpr,
    Expr,
    Grouping,
    LabelReplaceExpr,
    LiteralExpr,
    RangeAggregationExpr,
    SampleExpr,
    VectorAggregationExpr,
    VectorExpr,
    VectorMatching,
    walk,
)
from loki_async.logql.literals import format_float_f, go_quote
from loki_async.logql.regex import Pattern, compile_go, expand
from loki_async.logql.syntax import merge_binop

ERROR_LABEL = "__error__"
PRESERVE_ERROR_LABEL = "__preserve_error__"
METRIC_NAME = "__name__"
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

ERR_PIPELINE = (
    "pipeline error: '{kind}' for series: '{series}'.\n"
    'Use a label filter to intentionally skip this error. (e.g | __error__!="{kind}").\n'
    'To skip all potential errors you can match empty errors.(e.g __error__="")\n'
    'The label filter can also be specified after unwrap. (e.g | unwrap latency | __error__="" )\n'
)
ERR_SERIES_LIMIT = (
    "maximum number of series ({}) reached for a single query; consider reducing query "
    "cardinality by adding more specific stream selectors, reducing the time range, or "
    "aggregating results with functions like sum(), count() or topk()"
)
ERR_BAD_STEP = (
    "zero or negative query resolution step widths are not accepted. Try a positive integer"
)
# Loki answers these with 500; they are the query's fault, so here they are 400s.
ERR_DUPLICATE_SERIES = (
    "found duplicate series on the {} hand-side;many-to-many matching not allowed: "
    "matching labels must be unique on one side"
)
ERR_MANY_TO_ONE = (
    "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
)
ERR_GROUPING_NOT_UNIQUE = "multiple matches for labels: grouping labels must ensure unique matches"

COMPARISON_OPS = frozenset({"==", "!=", ">", ">=", "<", "<="})
SET_OPS = frozenset({"and", "or", "unless"})
HEAP_OPS = frozenset({"topk", "bottomk", "approx_topk", "sort", "sort_desc"})

Labels: TypeAlias = tuple[tuple[str, str], ...]
"""A label set as sorted ``(name, value)`` pairs; its tuple order is Prometheus'
``labels.Compare``."""


# ---------------------------------------------------------------------------
# The interface we consume
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class SampleSeries:
    """The samples of one label set, as the sample extraction produced them."""

    labels: str  # canonical '{a="1", b="2"}', sorted by name; may carry __error__
    ts: array  # array('q') of ns timestamps, non-decreasing
    values: array  # array('d'), same length as ts


class SampleSource(Protocol):
    """Where the engine gets samples from (the querier)."""

    async def select_samples(
        self, expr: RangeAggregationExpr, root: Expr, start_ns: int, end_ns: int
    ) -> list[SampleSeries]:
        """Samples of `expr`'s log range with ``start_ns < ts <= end_ns`` (the engine has
        already applied the range's offset), one :class:`SampleSeries` per distinct label
        set, after the range aggregation's own grouping hints. `root` is the whole query.

        The engine only reads the returned arrays; the source keeps ownership. A series
        whose extraction failed keeps all its labels plus ``__error__``.
        """
        ...


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Series:
    """One series of a matrix: its labels and its points (millisecond timestamps)."""

    metric: Labels
    ts_ms: array  # array('q'), increasing
    values: array  # array('d')


@dataclass(slots=True)
class Matrix:
    """A range query's result; series sorted by labels."""

    series: list[Series]


@dataclass(slots=True)
class Sample:
    """One element of an instant vector."""

    metric: Labels
    ts_ms: int
    value: float


@dataclass(slots=True)
class Vector:
    """An instant query's result."""

    samples: list[Sample]


@dataclass(slots=True)
class Scalar:
    """An instant query of a number."""

    ts_ms: int
    value: float


Result: TypeAlias = Matrix | Vector | Scalar


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def step_times(start_ns: int, end_ns: int, step_ns: int) -> range:
    """The evaluation times of a range query: ``start, start+step, ... <= end``."""
    if step_ns <= 0:
        raise BadRequest(ERR_BAD_STEP)
    return range(start_ns, end_ns + 1, step_ns)


def sample_range(expr: SampleExpr, start_ns: int, end_ns: int) -> tuple[int, int]:
    """The data window ``(lo, hi]`` that evaluating `expr` at step times within
    ``[start_ns, end_ns]`` needs: the union of every log range's windows (range and
    offset included). An expression without log ranges needs nothing: ``(end, end]``."""
    ranges = [e.left for e in walk(expr) if isinstance(e, RangeAggregationExpr)]
    if not ranges:
        return end_ns, end_ns
    lo = min(start_ns - r.interval_ns - r.offset_ns for r in ranges)
    hi = max(end_ns - r.offset_ns for r in ranges)
    return lo, hi


async def evaluate(
    expr: SampleExpr,
    source: SampleSource,
    *,
    start_ns: int,
    end_ns: int,
    step_ns: int,
    instant: bool,
    max_series: int = 500,
) -> Result:
    """Evaluate a metric query as Loki does.

    An instant query is evaluated once, at `end_ns`, and gives a :class:`Vector` (or a
    :class:`Scalar` for a number); a range query is evaluated at :func:`step_times` and
    gives a :class:`Matrix`. Samples are fetched once per distinct range aggregation,
    concurrently; the evaluation itself is CPU work on the calling thread.

    Raises :class:`BadRequest` for series carrying ``__error__`` and for results with
    more than `max_series` series and for many-to-many vector matching (Loki's messages;
    Loki answers the latter with 500, but it is the query's fault).
    """
    times: Sequence[int] = (
        range(end_ns, end_ns + 1) if instant else step_times(start_ns, end_ns, step_ns)
    )
    data: dict[RangeAggregationExpr, list[SampleSeries]] = {}
    if times:
        ranges = list(dict.fromkeys(e for e in walk(expr) if isinstance(e, RangeAggregationExpr)))
        fetched = await asyncio.gather(
            *(
                source.select_samples(
                    r,
                    expr,
                    times[0] - r.left.interval_ns - r.left.offset_ns,
                    times[-1] - r.left.offset_ns,
                )
                for r in ranges
            )
        )
        data = dict(zip(ranges, fetched, strict=True))
    value = _Evaluator(times, data).eval(expr)

    if isinstance(value, float):
        if instant:
            return Scalar(end_ns // NS_PER_MS, value)
        ts = array("q", (t // NS_PER_MS for t in times))
        return Matrix([Series((), ts, array("d", [value] * len(ts)))] if ts else [])
    if instant:
        return _to_vector(expr, value, end_ns // NS_PER_MS, max_series)
    return _to_matrix(value, times, max_series)


def merge_matrices(parts: list[Matrix]) -> Matrix:
    """Join the results of the splits of one range query: points of the same labels are
    merged in time order; where parts overlap, the first part's point at a timestamp
    wins. Series come out sorted by labels."""
    by_labels: dict[Labels, list[Series]] = {}
    for part in parts:
        for s in part.series:
            by_labels.setdefault(s.metric, []).append(s)
    merged: list[Series] = []
    for labels in sorted(by_labels):
        members = [s for s in by_labels[labels] if len(s.ts_ms)] or by_labels[labels][:1]
        if len(members) == 1:
            merged.append(
                Series(labels, array("q", members[0].ts_ms), array("d", members[0].values))
            )
            continue
        if all(a.ts_ms[-1] < b.ts_ms[0] for a, b in pairwise(members)):
            # Fast path: splits arrive in time order without overlap.
            ts = array("q")
            vals = array("d")
            for s in members:
                ts.extend(s.ts_ms)
                vals.extend(s.values)
            merged.append(Series(labels, ts, vals))
            continue
        # Slow path: out of order or overlapping parts.
        points = sorted(
            (t, part, v)
            for part, s in enumerate(members)
            for t, v in zip(s.ts_ms, s.values, strict=True)
        )
        ts, vals = array("q"), array("d")
        last = (None, -1)
        for t, part, v in points:
            if t == last[0] and part != last[1]:
                continue
            ts.append(t)
            vals.append(v)
            last = (t, part)
        merged.append(Series(labels, ts, vals))
    return Matrix(merged)


def to_json(result: Result) -> dict[str, object]:
    """Loki's ``data`` payload for a result: ``{"resultType": ..., "result": ...}``.

    Timestamps are Unix seconds (an int when whole, as Prometheus prints them), values
    are strings in Go's ``strconv.FormatFloat(v, 'f', -1, 64)`` form.
    """
    if isinstance(result, Scalar):
        return {
            "resultType": "scalar",
            "result": [_json_ts(result.ts_ms), _format_value(result.value)],
        }
    if isinstance(result, Vector):
        return {
            "resultType": "vector",
            "result": [
                {"metric": dict(s.metric), "value": [_json_ts(s.ts_ms), _format_value(s.value)]}
                for s in result.samples
            ],
        }
    return {
        "resultType": "matrix",
        "result": [
            {
                "metric": dict(s.metric),
                "values": [
                    [_json_ts(t), _format_value(v)] for t, v in zip(s.ts_ms, s.values, strict=True)
                ],
            }
            for s in result.series
        ],
    }


def _format_value(v: float) -> str:
    """A sample value as Prometheus and Loki print it: ``strconv.FormatFloat(v, 'f', -1,
    64)`` (``"0.5"``, ``"100000000000000000000"``, ``"NaN"``, ``"+Inf"``)."""
    text = repr(v)
    if "e" in text or "n" in text:
        # Slow path: exponents, NaN and infinities.
        return format_float_f(v)
    return text[:-2] if text.endswith(".0") else text


def _json_ts(ts_ms: int) -> int | float:
    return ts_ms // 1000 if ts_ms % 1000 == 0 else ts_ms / 1000


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


@lru_cache(maxsize=1 << 16)
def _parse_labels(text: str) -> Labels:
    return tuple(sorted(label_map(text).items()))


_LEGACY_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _format_labels(labels: Labels) -> str:
    """Prometheus' ``Labels.String()``: ``{a="1", b="2"}``."""
    return (
        "{"
        + ", ".join(
            f"{n if _LEGACY_NAME.fullmatch(n) else go_quote(n)}={go_quote(v)}" for n, v in labels
        )
        + "}"
    )


def _grouper(grouping: Grouping) -> Callable[[Labels], Labels]:
    """The labels a series keeps under ``by (...)`` or ``without (...)``, memoized."""
    names = frozenset(grouping.groups)
    cache: dict[Labels, Labels] = {}
    if grouping.without:
        drop = names | {METRIC_NAME}

        def key(labels: Labels) -> Labels:
            out = cache.get(labels)
            if out is None:
                out = cache[labels] = tuple(p for p in labels if p[0] not in drop)
            return out
    else:

        def key(labels: Labels) -> Labels:
            out = cache.get(labels)
            if out is None:
                out = cache[labels] = tuple(p for p in labels if p[0] in names)
            return out

    return key


def _carries_error(labels: Labels) -> bool:
    d = dict(labels)
    return bool(d.get(ERROR_LABEL)) and d.get(PRESERVE_ERROR_LABEL) != "true"


def _absent_labels(expr: RangeAggregationExpr) -> Labels:
    """The labels of ``absent_over_time``'s sample: the selector's equality matchers,
    minus any name matched more than once or by another operator."""
    found: dict[str, str] = {}
    dropped: set[str] = set()
    for m in expr.selector.matchers:
        if m.name == METRIC_NAME:
            continue
        if m.op == MATCH_EQUAL and m.name not in found:
            if m.value:  # setting an empty value deletes the label
                found[m.name] = m.value
        else:
            dropped.add(m.name)
    return tuple(sorted((n, v) for n, v in found.items() if n not in dropped))


# ---------------------------------------------------------------------------
# Go float semantics (arithmetic is the parser's merge_binop, shared with folding)
# ---------------------------------------------------------------------------

_NAN = math.nan
_INF = math.inf


def _fdiv(a: float, b: float) -> float:
    """IEEE division as Go does it: x/0 is ±Inf, 0/0 is NaN."""
    if b == 0:
        if a == 0 or a != a:
            return _NAN
        return math.copysign(_INF, a) * math.copysign(1.0, b)
    return a / b


def _seconds(ns: int) -> float:
    """Go's ``time.Duration.Seconds()``."""
    sec, nsec = divmod(ns, NS_PER_S)
    return float(sec) + float(nsec) / 1e9


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


def _merge(op: str, a: float, b: float, keep: float, filter_: bool) -> float | None:
    """Loki's ``MergeBinOp`` on values: arithmetic, or a comparison that either filters
    (keeping `keep`, the vector side's value) or returns 0/1 (``bool``)."""
    cmp = _COMPARE.get(op)
    if cmp is None:
        return merge_binop(op, a, b)
    if cmp(a, b):
        return keep if filter_ else 1.0
    return None if filter_ else 0.0


# ---------------------------------------------------------------------------
# Range aggregation: one series' windows
# ---------------------------------------------------------------------------


def _windows(
    ts: array, times: Sequence[int], range_ns: int, offset_ns: int
) -> tuple[list[int], list[int], list[int]]:
    """Step indices whose window ``(t-offset-range, t-offset]`` holds samples of `ts`,
    with each window's ``[lo, hi)`` sample bounds."""
    ks: list[int] = []
    los: list[int] = []
    his: list[int] = []
    if not ts:
        return ks, los, his
    # Only steps whose window can reach [ts[0], ts[-1]] are looked at.
    first = bisect_left(times, ts[0] + offset_ns)
    stop = bisect_left(times, ts[-1] + offset_ns + range_ns)
    for k in range(first, stop):
        end = times[k] - offset_ns
        hi = bisect_right(ts, end)
        lo = bisect_right(ts, end - range_ns, 0, hi)
        if hi > lo:
            ks.append(k)
            los.append(lo)
            his.append(hi)
    return ks, los, his


def _int_prefix(values: array) -> list[int] | None:
    """Prefix sums of `values` if they are integers whose sums stay exact in a float."""
    try:
        ints = array("q", map(int, values))
    except (OverflowError, ValueError):  # NaN, ±Inf, beyond int64
        return None
    if array("d", ints) != values or sum(map(abs, ints)) >= 1 << 53:
        return None
    return list(accumulate(ints, initial=0))


def _window_sums(values: array, los: list[int], his: list[int]) -> list[float]:
    prefix = _int_prefix(values)
    if prefix is not None:
        # Fast path: integral values (counts, bytes, most unwrapped labels) add up exactly
        # in any order, so a prefix difference is Loki's left-to-right float sum.
        return [float(prefix[h] - prefix[lo]) for lo, h in zip(los, his, strict=True)]
    # Slow path: other floats are summed left to right per window as Loki does; a float
    # prefix sum would differ in the last digits (0.1+0.2+0.3).
    return [reduce(operator.add, values[lo:h], 0.0) for lo, h in zip(los, his, strict=True)]


def _window_extremes(values: array, los: list[int], his: list[int], is_max: bool) -> list[float]:
    pick = max if is_max else min
    if not any(map(math.isnan, values)):
        # Fast path: without NaNs Loki's scan is the builtin (first of equal values wins).
        return [pick(values[lo:h]) for lo, h in zip(los, his, strict=True)]
    # Slow path: Loki replaces a NaN running extreme by the next sample.
    out = []
    for lo, h in zip(los, his, strict=True):
        m = values[lo]
        for i in range(lo, h):
            v = values[i]
            if (v > m if is_max else v < m) or m != m:
                m = v
        out.append(m)
    return out


def _avg(values: array, lo: int, hi: int) -> float:
    mean = count = 0.0
    for i in range(lo, hi):
        v = values[i]
        count += 1
        if math.isinf(mean):
            if math.isinf(v) and (mean > 0) == (v > 0):
                continue  # Inf of the same sign: the mean is already right
            if not math.isinf(v) and not math.isnan(v):
                continue  # a finite value does not move an infinite mean
        mean += v / count - mean / count
    return mean


def _variance(values: array, lo: int, hi: int) -> float:
    """Welford's online variance, in Loki's order of operations."""
    aux = count = mean = 0.0
    for i in range(lo, hi):
        v = values[i]
        count += 1
        delta = v - mean
        mean += delta / count
        aux += delta * (v - mean)
    return aux / count


def _sqrt(v: float) -> float:
    return math.sqrt(v) if v >= 0 else _NAN


def _quantile(q: float, window: Sequence[float]) -> float:
    """Loki's ``Quantile``: linear interpolation between the closest ranks."""
    if not window:
        return _NAN
    if q != q:
        return _NAN
    if q < 0:
        return -_INF
    if q > 1:
        return _INF
    nans = [v for v in window if v != v]
    ordered = nans + sorted(v for v in window if v == v) if nans else sorted(window)
    n = len(ordered)
    rank = q * (n - 1)
    lower = max(0.0, math.floor(rank))
    upper = min(n - 1.0, lower + 1)
    weight = rank - math.floor(rank)
    return ordered[int(lower)] * (1 - weight) + ordered[int(upper)] * weight


def _rate_counter(ts: array, values: array, lo: int, hi: int, range_ns: int) -> float:
    """Loki's ``extrapolatedRate(isCounter, isRate)``. Loki feeds it nanosecond sample
    times but subtracts the range in milliseconds, so the gap to the window start is
    ``range_ms / 1000`` time units and the gap to its end is 0; kept as Loki computes it."""
    n = hi - lo
    if n < 2:
        return 0.0
    first, last = values[lo], values[hi - 1]
    result = last - first
    previous = 0.0
    for i in range(lo, hi):
        v = values[i]
        if v < previous:
            result += previous  # counter reset
        previous = v
    to_start = float(range_ns // NS_PER_MS) / 1000
    to_end = 0.0
    sampled = float(ts[hi - 1] - ts[lo]) / 1000
    average = sampled / (n - 1)
    if result > 0 and first >= 0:
        to_zero = sampled * (first / result)
        if to_zero < to_start:
            to_start = to_zero
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    result = result * _fdiv(interval, sampled)
    return _fdiv(result, _seconds(range_ns))


def _range_values(
    expr: RangeAggregationExpr, ts: array, values: array, los: list[int], his: list[int]
) -> list[float]:
    """The range aggregation's value over each window ``values[lo:hi]``."""
    op = expr.operation
    range_ns = expr.left.interval_ns
    seconds = _seconds(range_ns)
    bounds = zip(los, his, strict=True)
    if op == "count_over_time":
        return [float(h - lo) for lo, h in bounds]
    if op == "rate" and expr.left.unwrap is None:
        return [_fdiv(float(h - lo), seconds) for lo, h in bounds]
    if op in ("sum_over_time", "bytes_over_time"):
        return _window_sums(values, los, his)
    if op in ("rate", "bytes_rate"):
        return [_fdiv(s, seconds) for s in _window_sums(values, los, his)]
    if op == "first_over_time":
        return [values[lo] for lo in los]
    if op == "last_over_time":
        return [values[h - 1] for h in his]
    if op in ("max_over_time", "min_over_time"):
        return _window_extremes(values, los, his, op == "max_over_time")
    # Slow path: order-dependent float formulas, computed per window in Loki's order.
    if op == "avg_over_time":
        return [_avg(values, lo, h) for lo, h in bounds]
    if op == "stdvar_over_time":
        return [_variance(values, lo, h) for lo, h in bounds]
    if op == "stddev_over_time":
        return [_sqrt(_variance(values, lo, h)) for lo, h in bounds]
    if op == "quantile_over_time":
        q = expr.params if expr.params is not None else _NAN
        return [_quantile(q, values[lo:h]) for lo, h in bounds]
    if op == "rate_counter":
        return [_rate_counter(ts, values, lo, h, range_ns) for lo, h in bounds]
    raise BadRequest(f"unsupported range vector aggregation operation: {op}")


def _merge_series(members: list[SampleSeries]) -> tuple[array, array]:
    """One time-ordered series from several (stable for equal timestamps)."""
    ts = array("q")
    values = array("d")
    for s in members:
        ts.extend(s.ts)
        values.extend(s.values)
    order = sorted(range(len(ts)), key=ts.__getitem__)
    return array("q", (ts[i] for i in order)), array("d", (values[i] for i in order))


# ---------------------------------------------------------------------------
# Columns: what every node evaluates to
# ---------------------------------------------------------------------------


class _Col:
    """One series of a node's result over the step grid: the step indices where it has
    a value (increasing) and the values."""

    __slots__ = ("idx", "labels", "vals")

    def __init__(self, labels: Labels, idx: Sequence[int], vals: Sequence[float]) -> None:
        self.labels = labels
        self.idx = idx
        self.vals = vals


class _Builder:
    """Output columns keyed by labels, in first-seen order, filled step by step."""

    def __init__(self) -> None:
        self.cols: dict[Labels, tuple[list[int], list[float]]] = {}

    def add(self, labels: Labels, k: int, v: float) -> None:
        col = self.cols.get(labels)
        if col is None:
            col = self.cols[labels] = ([], [])
        col[0].append(k)
        col[1].append(v)

    def result(self) -> list[_Col]:
        return [_Col(labels, idx, vals) for labels, (idx, vals) in self.cols.items()]


def _by_step(cols: list[_Col], n: int) -> list[list[tuple[int, float]]]:
    """The columns transposed: per step, ``(column index, value)`` in column order."""
    steps: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for ci, c in enumerate(cols):
        for k, v in zip(c.idx, c.vals, strict=True):
            steps[k].append((ci, v))
    return steps


# ---------------------------------------------------------------------------
# Heaps with Go's container/heap algorithm (which element survives ties matters)
# ---------------------------------------------------------------------------

_HeapItem = tuple[float, int]


def _less_min(a: _HeapItem, b: _HeapItem) -> bool:
    return a[0] != a[0] or a[0] < b[0]


def _less_max(a: _HeapItem, b: _HeapItem) -> bool:
    return a[0] != a[0] or a[0] > b[0]


def _heap_push(h: list[_HeapItem], x: _HeapItem, less: Callable[..., bool]) -> None:
    h.append(x)
    j = len(h) - 1
    while j > 0:
        i = (j - 1) // 2
        if not less(h[j], h[i]):
            break
        h[i], h[j] = h[j], h[i]
        j = i


def _heap_pop(h: list[_HeapItem], less: Callable[..., bool]) -> None:
    n = len(h) - 1
    h[0], h[n] = h[n], h[0]
    i = 0
    while True:
        j = 2 * i + 1
        if j >= n:
            break
        if j + 1 < n and less(h[j + 1], h[j]):
            j += 1
        if not less(h[j], h[i]):
            break
        h[i], h[j] = h[j], h[i]
        i = j
    h.pop()


def _descending(item: _HeapItem) -> tuple[int, float]:
    v = item[0]
    return (1, 0.0) if v != v else (0, -v)


def _ascending(item: _HeapItem) -> tuple[int, float]:
    v = item[0]
    return (1, 0.0) if v != v else (0, v)


# ---------------------------------------------------------------------------
# The evaluator
# ---------------------------------------------------------------------------


class _Evaluator:
    def __init__(
        self, times: Sequence[int], data: dict[RangeAggregationExpr, list[SampleSeries]]
    ) -> None:
        self.times = times
        self.n = len(times)
        self.data = data

    def eval(self, e: Expr) -> float | list[_Col]:
        if isinstance(e, LiteralExpr):
            return float(e.value)
        if isinstance(e, VectorExpr):
            return [_Col((), range(self.n), [float(e.value)] * self.n)]
        if isinstance(e, RangeAggregationExpr):
            return self.range_aggregation(e)
        if isinstance(e, VectorAggregationExpr):
            return self.vector_aggregation(e)
        if isinstance(e, BinOpExpr):
            return self.binop(e)
        if isinstance(e, LabelReplaceExpr):
            return self.label_replace(e)
        raise AssertionError(f"BUG: cannot evaluate {type(e).__name__}")

    def eval_vector(self, e: Expr) -> list[_Col]:
        value = self.eval(e)
        if isinstance(value, float):
            # `sum(1)`: Loki's evaluator has no step evaluator for a number here either.
            raise BadRequest(
                "unexpected expr type (*syntax.LiteralExpr) for Evaluator type "
                "(*logql.DefaultEvaluator)"
            )
        return value

    # -- range aggregations ---------------------------------------------------

    def series(self, e: RangeAggregationExpr) -> list[tuple[Labels, array, array]]:
        """The samples of `e` per label set after its grouping, sorted by labels.

        The source applies the grouping hints already; grouping again is a no-op then,
        and keeps the engine right for sources that do not. Series with errors keep all
        their labels (Loki reports them whole)."""
        key = _grouper(e.grouping) if e.grouping is not None else None
        groups: dict[Labels, list[SampleSeries]] = {}
        for s in self.data.get(e, ()):
            labels = _parse_labels(s.labels)
            if key is not None and not _carries_error(labels):
                labels = key(labels)
            groups.setdefault(labels, []).append(s)
        out = []
        for labels in sorted(groups):
            members = groups[labels]
            if len(members) == 1:
                ts, values = members[0].ts, members[0].values
                if not isinstance(values, array) or values.typecode != "d":
                    values = array("d", values)
            else:
                # Slow path: several series fall into one label set.
                ts, values = _merge_series(members)
            out.append((labels, ts, values))
        return out

    def range_aggregation(self, e: RangeAggregationExpr) -> list[_Col]:
        rng, off = e.left.interval_ns, e.left.offset_ns
        cols: list[_Col] = []
        for labels, ts, values in self.series(e):
            ks, los, his = _windows(ts, self.times, rng, off)
            if not ks:
                continue
            if e.operation == "absent_over_time":
                cols.append(_Col(labels, ks, []))
            else:
                cols.append(_Col(labels, ks, _range_values(e, ts, values, los, his)))
        # Errors are not allowed in metrics: the first erroring series fails the query.
        failed = [c for c in cols if _carries_error(c.labels)]
        if failed:
            first = min(failed, key=lambda c: c.idx[0])
            kind = dict(first.labels)[ERROR_LABEL]
            raise BadRequest(ERR_PIPELINE.format(kind=kind, series=_format_labels(first.labels)))
        if e.operation == "absent_over_time":
            present = set()
            for c in cols:
                present.update(c.idx)
            missing = [k for k in range(self.n) if k not in present]
            return [_Col(_absent_labels(e), missing, [1.0] * len(missing))] if missing else []
        return cols

    # -- vector aggregations --------------------------------------------------

    def vector_aggregation(self, e: VectorAggregationExpr) -> list[_Col]:
        cols = self.eval_vector(e.left)
        key = _grouper(e.grouping)
        if e.operation in HEAP_OPS:
            return self.heap_aggregation(e, cols, key)
        groups: dict[Labels, list[_Col]] = {}
        for c in cols:
            groups.setdefault(key(c.labels), []).append(c)
        return [
            _Col(labels, *_aggregate(e.operation, members)) for labels, members in groups.items()
        ]

    def heap_aggregation(
        self, e: VectorAggregationExpr, cols: list[_Col], key: Callable[[Labels], Labels]
    ) -> list[_Col]:
        """topk/bottomk/sort/sort_desc: per step and group, Go's heap of samples, output
        with the samples' own labels."""
        op = e.operation
        limited = op in ("topk", "bottomk", "approx_topk")
        k_max = e.params
        if limited and k_max < 1:
            return []
        by_max = op in ("topk", "approx_topk", "sort_desc")
        less = _less_min if by_max else _less_max
        order = _descending if by_max else _ascending
        keys = [key(c.labels) for c in cols]
        out = _Builder()
        for step, entries in enumerate(_by_step(cols, self.n)):
            heaps: dict[Labels, list[_HeapItem]] = {}
            for ci, v in entries:
                h = heaps.get(keys[ci])
                if h is None:
                    heaps[keys[ci]] = [(v, ci)]
                    continue
                if limited:
                    top = h[0][0]
                    beats = top < v if by_max else top > v
                    if not (len(h) < k_max or beats or top != top):
                        continue
                    if len(h) == k_max:
                        _heap_pop(h, less)
                _heap_push(h, (v, ci), less)
            for h in heaps.values():
                for v, ci in sorted(h, key=order):
                    out.add(cols[ci].labels, step, v)
        return out.result()

    # -- binary operations ----------------------------------------------------

    def binop(self, e: BinOpExpr) -> float | list[_Col]:
        left = self.eval(e.left)
        right = self.eval(e.right)
        if isinstance(left, float) and isinstance(right, float):
            # Two numbers (Loki folds these when parsing): comparisons give 0/1.
            return merge_binop(e.op, left, right)
        if e.op in SET_OPS:
            if isinstance(left, float) or isinstance(right, float):
                raise AssertionError(f"BUG: set operation with a number: {e}")
            return self.set_operation(e, left, right)
        if isinstance(right, float):
            return _with_number(e, left, right, number_left=False)
        if isinstance(left, float):
            return _with_number(e, right, left, number_left=True)
        return self.vector_binop(e, left, right)

    def set_operation(self, e: BinOpExpr, lcols: list[_Col], rcols: list[_Col]) -> list[_Col]:
        vm = e.vector_matching
        lsig = [_signature(c.labels, vm) for c in lcols]
        rsig = [_signature(c.labels, vm) for c in rcols]
        out = _Builder()
        lsteps, rsteps = _by_step(lcols, self.n), _by_step(rcols, self.n)
        for k in range(self.n):
            lhs, rhs = lsteps[k], rsteps[k]
            if e.op == "or":
                taken = {lsig[ci] for ci, _ in lhs}
                for ci, v in lhs:
                    out.add(lcols[ci].labels, k, v)
                for ci, v in rhs:
                    if rsig[ci] not in taken:
                        out.add(rcols[ci].labels, k, v)
                continue
            if not lhs or (not rhs and e.op == "and"):
                continue
            present = {rsig[ci] for ci, _ in rhs}
            keep = e.op == "and"
            for ci, v in lhs:
                if (lsig[ci] in present) == keep:
                    out.add(lcols[ci].labels, k, v)
        return out.result()

    def vector_binop(self, e: BinOpExpr, lcols: list[_Col], rcols: list[_Col]) -> list[_Col]:
        """Arithmetic and comparisons between two vectors, matched per step as Loki's
        ``vectorBinop`` (Prometheus' rules and errors)."""
        vm = e.vector_matching
        one_to_many = vm.card == CARD_ONE_TO_MANY
        filter_ = not e.return_bool
        # For group_right the sides swap: the "many" side is iterated, the "one" side is
        # looked up; values are swapped back before the operation.
        many, one = (rcols, lcols) if one_to_many else (lcols, rcols)
        many_sig = [_signature(c.labels, vm) for c in many]
        one_sig = [_signature(c.labels, vm) for c in one]
        metrics: dict[tuple[int, int], Labels] = {}
        out = _Builder()
        many_steps, one_steps = _by_step(many, self.n), _by_step(one, self.n)
        for k in range(self.n):
            lookup: dict[Labels, tuple[int, float]] = {}
            for ci, v in one_steps[k]:
                sig = one_sig[ci]
                if sig in lookup:
                    side = "left" if one_to_many else "right"
                    raise BadRequest(ERR_DUPLICATE_SERIES.format(side))
                lookup[sig] = (ci, v)
            matched: dict[Labels, set[Labels]] = {}
            for ci, v in many_steps[k]:
                sig = many_sig[ci]
                found = lookup.get(sig)
                if found is None:
                    continue
                oi, ov = found
                metric = metrics.get((ci, oi))
                if metric is None:
                    metric = metrics[ci, oi] = _result_metric(many[ci].labels, one[oi].labels, vm)
                seen = matched.get(sig)
                if vm.card == CARD_ONE_TO_ONE:
                    if seen is not None:
                        raise BadRequest(ERR_MANY_TO_ONE)
                    matched[sig] = set()
                elif seen is None:
                    matched[sig] = {metric}
                elif metric in seen:
                    raise BadRequest(ERR_GROUPING_NOT_UNIQUE)
                else:
                    seen.add(metric)
                a, b = (ov, v) if one_to_many else (v, ov)
                value = _merge(e.op, a, b, a, filter_)
                if value is not None:
                    out.add(metric, k, value)
        return out.result()

    # -- label_replace --------------------------------------------------------

    def label_replace(self, e: LabelReplaceExpr) -> list[_Col]:
        regex = compile_go(f"^(?:{e.regex})$")
        cache: dict[Labels, Labels] = {}
        out = []
        for c in self.eval_vector(e.left):
            labels = cache.get(c.labels)
            if labels is None:
                labels = cache[c.labels] = _replace(c.labels, e, regex.pattern, regex.group_names)
            out.append(_Col(labels, c.idx, c.vals))
        return out


def _aggregate(op: str, members: list[_Col]) -> tuple[Sequence[int], Sequence[float]]:
    """One group of a vector aggregation, step by step, in Loki's order of operations
    (the first sample sets the value, the others update it in column order)."""
    if len(members) == 1:
        # Fast path: a group of one series.
        c = members[0]
        if op in ("sum", "avg", "max", "min"):
            return c.idx, c.vals
        return c.idx, [1.0 if op == "count" else 0.0] * len(c.idx)
    # state per step: [value, mean, count]
    state: dict[int, list[float]] = {}
    for c in members:
        for k, v in zip(c.idx, c.vals, strict=True):
            s = state.get(k)
            if s is None:
                state[k] = [0.0 if op in ("stddev", "stdvar") else v, v, 1]
                continue
            s[2] += 1
            if op == "sum":
                s[0] += v
            elif op == "avg":
                s[1] += (v - s[1]) / s[2]
            elif op == "max":
                if s[0] < v or s[0] != s[0]:
                    s[0] = v
            elif op == "min":
                if s[0] > v or s[0] != s[0]:
                    s[0] = v
            elif op in ("stddev", "stdvar"):
                delta = v - s[1]
                s[1] += delta / s[2]
                s[0] += delta * (v - s[1])
            elif op != "count":
                raise BadRequest(f"unsupported vector aggregation operation: {op}")
    steps = sorted(state)
    if op == "avg":
        return steps, [state[k][1] for k in steps]
    if op == "count":
        return steps, [float(state[k][2]) for k in steps]
    if op == "stdvar":
        return steps, [state[k][0] / state[k][2] for k in steps]
    if op == "stddev":
        return steps, [_sqrt(state[k][0] / state[k][2]) for k in steps]
    return steps, [state[k][0] for k in steps]


def _with_number(e: BinOpExpr, cols: list[_Col], number: float, *, number_left: bool) -> list[_Col]:
    """A vector and a number: labels are kept; a filtering comparison keeps the vector's
    value whichever side the number is on."""
    filter_ = not e.return_bool
    out = []
    for c in cols:
        idx: list[int] = []
        vals: list[float] = []
        for k, v in zip(c.idx, c.vals, strict=True):
            a, b = (number, v) if number_left else (v, number)
            value = _merge(e.op, a, b, v, filter_)
            if value is not None:
                idx.append(k)
                vals.append(value)
        if idx:
            out.append(_Col(c.labels, idx, vals))
    return out


def _signature(labels: Labels, vm: VectorMatching) -> Labels:
    """The labels two samples are matched on: ``on (...)`` keeps, ``ignoring (...)``
    drops (no modifier: all labels)."""
    names = vm.matching_labels
    if vm.on:
        return tuple(p for p in labels if p[0] in names)
    if not names:
        return labels
    return tuple(p for p in labels if p[0] not in names)


def _result_metric(many: Labels, one: Labels, vm: VectorMatching) -> Labels:
    """Loki's ``resultMetric``: one-to-one keeps the matching labels (``on``) or drops
    the ignored ones; ``group_x (...)`` labels are copied from the "one" side."""
    out = dict(many)
    if vm.card == CARD_ONE_TO_ONE:
        if vm.on:
            out = {n: v for n, v in out.items() if n in vm.matching_labels}
        else:
            for n in vm.matching_labels:
                out.pop(n, None)
    if vm.include:
        source = dict(one)
        for n in vm.include:
            v = source.get(n, "")
            if v:
                out[n] = v
            else:
                out.pop(n, None)
    return tuple(sorted(out.items()))


def _replace(
    labels: Labels, e: LabelReplaceExpr, pattern: Pattern, names: tuple[str, ...]
) -> Labels:
    """``label_replace`` on one label set: unchanged unless the anchored regex matches
    the source label's value ("" when missing)."""
    m = pattern.search(dict(labels).get(e.src, ""))
    if m is None:
        return labels
    value = expand(e.replacement, m, names)
    out = {n: v for n, v in labels if n != e.dst}
    if value:
        out[e.dst] = value
    return tuple(sorted(out.items()))


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


def _sortable(expr: Expr) -> bool:
    """Whether the query orders its own result (``sort``/``sort_desc``)."""
    return any(
        isinstance(e, VectorAggregationExpr) and e.operation in ("sort", "sort_desc")
        for e in walk(expr)
    )


def _to_vector(expr: Expr, cols: list[_Col], ts_ms: int, max_series: int) -> Vector:
    samples = [Sample(c.labels, ts_ms, v) for c in cols for v in c.vals]
    if len(samples) > max_series:
        raise BadRequest(ERR_SERIES_LIMIT.format(max_series))
    if not _sortable(expr):
        samples.sort(key=lambda s: s.metric)
    return Vector(samples)


def _to_matrix(cols: list[_Col], times: Sequence[int], max_series: int) -> Matrix:
    by_labels: dict[Labels, list[_Col]] = {}
    for c in cols:
        if c.idx:
            by_labels.setdefault(c.labels, []).append(c)
    if len(by_labels) > max_series:
        raise BadRequest(ERR_SERIES_LIMIT.format(max_series))
    series = []
    for labels in sorted(by_labels):
        members = by_labels[labels]
        if len(members) == 1:
            idx, vals = members[0].idx, members[0].vals
        else:
            # Slow path: several columns with one label set (label_replace collisions).
            points = sorted(
                ((k, v) for c in members for k, v in zip(c.idx, c.vals, strict=True)),
                key=lambda p: p[0],
            )
            idx, vals = [p[0] for p in points], [p[1] for p in points]
        ts = array("q", (times[k] // NS_PER_MS for k in idx))
        series.append(Series(labels, ts, array("d", vals)))
    return Matrix(series)
