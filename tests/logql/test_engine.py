"""The LogQL metric engine against explicit computations and facts recorded from Loki 3.7.6.

Samples come from an in-memory :class:`SampleSource` built from hand-written
``(labels, [(ts, value)])`` streams. Expected values are computed in the tests by plain
loops over those raw samples (never with the engine's helpers); where Loki's behaviour
is not a textbook formula (Go's heap for ``topk`` ties, ``rate_counter``'s unit mix,
error texts) the expectation is written out with the reason. The metric rows of the
shared conformance file are replayed with samples built by hand from what was pushed.
"""

from __future__ import annotations

import json
import math
import time
from array import array
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from loki_async.errors import BadRequest, LokiError
from loki_async.logql import parse_expr
from loki_async.logql.ast import Expr, RangeAggregationExpr
from loki_async.logql.engine import (
    Matrix,
    Sample,
    SampleSeries,
    Scalar,
    Series,
    Vector,
    evaluate,
    merge_matrices,
    sample_range,
    step_times,
    to_json,
)

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "logql"


# ---------------------------------------------------------------------------
# An in-memory sample source
# ---------------------------------------------------------------------------


@dataclass
class Stream:
    labels: dict[str, str]
    samples: list[tuple[int, float]]  # (ts ns, value), sorted


def canon(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "}"


@dataclass
class MemorySource:
    """Serves every stream whose labels satisfy the selector's matchers, unreduced (no
    grouping hints applied: the engine must cope)."""

    streams: list[Stream]
    calls: list[tuple[str, int, int]] = field(default_factory=list)

    async def select_samples(
        self, expr: RangeAggregationExpr, root: Expr, start_ns: int, end_ns: int
    ) -> list[SampleSeries]:
        self.calls.append((str(expr), start_ns, end_ns))
        out = []
        for s in self.streams:
            if not all(m.matches(s.labels.get(m.name, "")) for m in expr.selector.matchers):
                continue
            points = [(t, v) for t, v in s.samples if start_ns < t <= end_ns]
            if points:
                out.append(
                    SampleSeries(
                        canon(s.labels),
                        array("q", [t for t, _ in points]),
                        array("d", [v for _, v in points]),
                    )
                )
        return out


async def instant(query: str, source: MemorySource, at: int, **kw: Any) -> Any:
    return await evaluate(
        parse_expr(query), source, start_ns=at, end_ns=at, step_ns=0, instant=True, **kw
    )


async def range_query(
    query: str, source: MemorySource, start: int, end: int, step: int, **kw: Any
) -> Any:
    return await evaluate(
        parse_expr(query), source, start_ns=start, end_ns=end, step_ns=step, instant=False, **kw
    )


def vec(result: Vector) -> dict[tuple, float]:
    assert isinstance(result, Vector)
    return {s.metric: s.value for s in result.samples}


def mat(result: Matrix) -> dict[tuple, list[tuple[int, float]]]:
    assert isinstance(result, Matrix)
    return {s.metric: list(zip(s.ts_ms, s.values, strict=True)) for s in result.series}


def L(**labels: str) -> tuple:
    return tuple(sorted(labels.items()))


def window(stream: Stream, t: int, rng: int, off: int = 0) -> list[float]:
    """The raw values Loki's window (t-off-rng, t-off] holds."""
    return [v for ts, v in stream.samples if t - off - rng < ts <= t - off]


def naive_sum(values: list[float]) -> float:
    total = 0.0
    for v in values:
        total += v
    return total


def quantile(q: float, values: list[float]) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    lower = math.floor(rank)
    upper = min(len(ordered) - 1, lower + 1)
    weight = rank - lower
    return ordered[lower] * (1 - weight) + ordered[upper] * weight


def variance(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


# ---------------------------------------------------------------------------
# Range aggregations
# ---------------------------------------------------------------------------

# Fractional values on purpose: 0.1+0.2+0.3 shows whether sums are Loki's left-to-right sums.
FRACTIONAL = Stream(
    {"app": "a", "pod": "p1"},
    [
        (T0, 100.0),
        (T0 + 1 * S, 1.0),
        (T0 + 10 * S, 2.5),
        (T0 + 20 * S, 0.1),
        (T0 + 30 * S, 0.2),
        (T0 + 40 * S, 0.3),
        (T0 + 60 * S, 7.0),
        (T0 + 61 * S, 9.0),
    ],
)
INTEGRAL = Stream(
    {"app": "a", "pod": "p2"},
    [(T0 + 5 * S, 3.0), (T0 + 15 * S, 5.0), (T0 + 25 * S, 120.0), (T0 + 59 * S, 1.0)],
)
OTHER_APP = Stream({"app": "b", "pod": "p1"}, [(T0 + 30 * S, 1.0)])

RANGE_FUNCTIONS = [
    ("count_over_time({app=\"a\"}[1m])", lambda w: float(len(w)), False),
    ("rate({app=\"a\"}[1m])", lambda w: len(w) / 60, False),
    ("rate({app=\"a\"} | unwrap v [1m])", lambda w: naive_sum(w) / 60, False),
    ("bytes_over_time({app=\"a\"}[1m])", naive_sum, False),
    ("bytes_rate({app=\"a\"}[1m])", lambda w: naive_sum(w) / 60, False),
    ("sum_over_time({app=\"a\"} | unwrap v [1m])", naive_sum, False),
    ("avg_over_time({app=\"a\"} | unwrap v [1m])", lambda w: sum(w) / len(w), True),
    ("min_over_time({app=\"a\"} | unwrap v [1m])", min, False),
    ("max_over_time({app=\"a\"} | unwrap v [1m])", max, False),
    ("stdvar_over_time({app=\"a\"} | unwrap v [1m])", variance, True),
    ("stddev_over_time({app=\"a\"} | unwrap v [1m])", lambda w: math.sqrt(variance(w)), True),
    ("quantile_over_time(0.9, {app=\"a\"} | unwrap v [1m])", lambda w: quantile(0.9, w), True),
    ("quantile_over_time(0.5, {app=\"a\"} | unwrap v [1m])", lambda w: quantile(0.5, w), True),
    ("first_over_time({app=\"a\"} | unwrap v [1m])", lambda w: w[0], False),
    ("last_over_time({app=\"a\"} | unwrap v [1m])", lambda w: w[-1], False),
]  # fmt: skip


def check(got: float, want: float, approx: bool) -> None:
    if approx:
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
    else:
        assert got == want


@pytest.mark.parametrize(("query", "expected", "approx"), RANGE_FUNCTIONS)
async def test_range_function_instant_matches_window_loop(query, expected, approx) -> None:
    source = MemorySource([FRACTIONAL, INTEGRAL, OTHER_APP])
    at = T0 + 60 * S
    got = vec(await instant(query, source, at))
    assert set(got) == {L(app="a", pod="p1"), L(app="a", pod="p2")}
    for stream in (FRACTIONAL, INTEGRAL):
        check(
            got[tuple(sorted(stream.labels.items()))], expected(window(stream, at, 60 * S)), approx
        )


@pytest.mark.parametrize(("query", "expected", "approx"), RANGE_FUNCTIONS)
async def test_range_function_over_steps_matches_window_loop(query, expected, approx) -> None:
    source = MemorySource([FRACTIONAL, INTEGRAL, OTHER_APP])
    start, end, step = T0 - 30 * S, T0 + 150 * S, 7 * S
    got = mat(await range_query(query, source, start, end, step))
    for stream in (FRACTIONAL, INTEGRAL):
        points = got.pop(tuple(sorted(stream.labels.items())))
        want = [
            (t // MS, expected(w))
            for t in range(start, end + 1, step)
            if (w := window(stream, t, 60 * S))
        ]
        assert [p[0] for p in points] == [p[0] for p in want]
        for (_, g), (_, w) in zip(points, want, strict=True):
            check(g, w, approx)
    assert got == {}


async def test_window_is_left_open_and_right_closed() -> None:
    source = MemorySource([FRACTIONAL])
    # (T0, T0+60s]: the sample at T0 is out, the one at T0+60s is in.
    got = vec(await instant('count_over_time({app="a"}[1m])', source, T0 + 60 * S))
    assert got == {L(app="a", pod="p1"): 6.0}


async def test_fractional_sum_is_left_to_right_as_loki() -> None:
    source = MemorySource([FRACTIONAL])
    got = vec(await instant('sum_over_time({app="a"} | unwrap v [30s])', source, T0 + 40 * S))
    assert got == {L(app="a", pod="p1"): 0.1 + 0.2 + 0.3}  # 0.6000000000000001
    assert (
        to_json(await instant('sum_over_time({app="a"} | unwrap v [30s])', source, T0 + 40 * S))[
            "result"
        ][0]["value"][1]
        == "0.6000000000000001"
    )


async def test_offset_shifts_the_window_and_keeps_the_step_time() -> None:
    source = MemorySource([FRACTIONAL])
    at = T0 + 100 * S
    query = 'count_over_time({app="a"}[30s] offset 40s)'
    result = await instant(query, source, at)
    assert vec(result) == {L(app="a", pod="p1"): float(len(window(FRACTIONAL, at, 30 * S, 40 * S)))}
    assert result.samples[0].ts_ms == at // MS
    assert source.calls == [(str(parse_expr(query)), at - 70 * S, at - 40 * S)]


async def test_offset_over_steps() -> None:
    source = MemorySource([FRACTIONAL, INTEGRAL])
    start, end, step = T0, T0 + 200 * S, 10 * S
    got = mat(
        await range_query('count_over_time({pod="p2"}[20s] offset 1m)', source, start, end, step)
    )
    want = [
        (t // MS, float(len(w)))
        for t in range(start, end + 1, step)
        if (w := window(INTEGRAL, t, 20 * S, 60 * S))
    ]
    assert got == {L(app="a", pod="p2"): want}


async def test_steps_stop_at_or_before_end() -> None:
    source = MemorySource([FRACTIONAL])
    result = await range_query('count_over_time({app="a"}[1h])', source, T0, T0 + 25 * S, 10 * S)
    assert list(result.series[0].ts_ms) == [T0 // MS, (T0 + 10 * S) // MS, (T0 + 20 * S) // MS]


async def test_rate_counter_extrapolates_as_loki() -> None:
    # A counter reset (20 -> 5) adds the value before the reset: increase = 15-10+20 = 25.
    counter = Stream(
        {"app": "c"},
        [(T0 + 10 * S, 10.0), (T0 + 20 * S, 20.0), (T0 + 30 * S, 5.0), (T0 + 40 * S, 15.0)],
    )
    got = vec(
        await instant(
            'rate_counter({app="c"} | unwrap v [1m])', MemorySource([counter]), T0 + 60 * S
        )
    )
    # Loki's extrapolatedRate gets nanosecond times but subtracts the range in milliseconds:
    # sampled interval = 30s in ns / 1000, gap to the window start = 60000/1000 = 60 (less
    # than 1.1 x the average gap, so added), gap to the end = 0.
    sampled = 30 * S / 1000
    assert got == {L(app="c"): 25 * ((sampled + 60.0) / sampled) / 60}


async def test_rate_counter_starting_at_zero_does_not_extrapolate_below_zero() -> None:
    counter = Stream({"app": "c"}, [(T0 + 10 * S, 0.0), (T0 + 40 * S, 30.0)])
    got = vec(
        await instant(
            'rate_counter({app="c"} | unwrap v [1m])', MemorySource([counter]), T0 + 60 * S
        )
    )
    assert got == {L(app="c"): 30.0 / 60}  # the zero point is the first sample itself


async def test_rate_counter_of_a_single_sample_is_zero() -> None:
    counter = Stream({"app": "c"}, [(T0 + 10 * S, 7.0)])
    got = vec(
        await instant(
            'rate_counter({app="c"} | unwrap v [1m])', MemorySource([counter]), T0 + 60 * S
        )
    )
    assert got == {L(app="c"): 0.0}


async def test_absent_over_time_gives_the_equality_matchers_labels() -> None:
    source = MemorySource([FRACTIONAL])
    query = 'absent_over_time({app="nope", env=~"x.*", team="t", team="u"}[1m])'
    got = vec(await instant(query, source, T0 + 60 * S))
    assert got == {L(app="nope"): 1.0}  # regex and repeated names are left out
    present = vec(await instant('absent_over_time({app="a"}[1m])', source, T0 + 60 * S))
    assert present == {}


async def test_absent_over_time_over_steps_marks_the_empty_windows() -> None:
    sparse = Stream({"app": "s"}, [(T0 + 15 * S, 1.0), (T0 + 95 * S, 1.0)])
    start, end, step = T0, T0 + 120 * S, 10 * S
    got = mat(
        await range_query(
            'absent_over_time({app="s"}[20s])', MemorySource([sparse]), start, end, step
        )
    )
    want = [(t // MS, 1.0) for t in range(start, end + 1, step) if not window(sparse, t, 20 * S)]
    assert got == {L(app="s"): want}


async def test_range_grouping_merges_the_samples_of_a_group() -> None:
    a = Stream({"app": "g", "pod": "1", "x": "k"}, [(T0 + 10 * S, 4.0), (T0 + 30 * S, 1.0)])
    b = Stream({"app": "g", "pod": "2", "x": "k"}, [(T0 + 20 * S, 9.0), (T0 + 40 * S, 2.0)])
    c = Stream({"app": "g", "pod": "3", "x": "j"}, [(T0 + 20 * S, 5.0)])
    source = MemorySource([a, b, c])
    at = T0 + 60 * S
    got = vec(await instant('max_over_time({app="g"} | unwrap v [1m]) by (x)', source, at))
    assert got == {L(x="k"): 9.0, L(x="j"): 5.0}
    got = vec(await instant('first_over_time({app="g"} | unwrap v [1m]) without (pod)', source, at))
    assert got == {L(app="g", x="k"): 4.0, L(app="g", x="j"): 5.0}
    got = vec(
        await instant('quantile_over_time(0.5, {app="g"} | unwrap v [1m]) by (x)', source, at)
    )
    assert got == {L(x="k"): quantile(0.5, [4.0, 9.0, 1.0, 2.0]), L(x="j"): 5.0}
    got = vec(await instant('avg_over_time({app="g"} | unwrap v [1m]) by (nothing)', source, at))
    assert got == {(): pytest.approx((4 + 9 + 1 + 2 + 5) / 5)}


# ---------------------------------------------------------------------------
# Vector aggregations
# ---------------------------------------------------------------------------

FLEET = [
    Stream({"app": "web", "pod": "w1", "zone": "a"}, [(T0 + i * S, 1.0) for i in range(0, 60, 10)]),
    Stream({"app": "web", "pod": "w2", "zone": "b"}, [(T0 + i * S, 1.0) for i in range(0, 60, 20)]),
    Stream({"app": "web", "pod": "w3", "zone": "a"}, [(T0 + i * S, 1.0) for i in range(0, 60, 5)]),
    Stream({"app": "db", "pod": "d1", "zone": "a"}, [(T0 + i * S, 1.0) for i in range(0, 60, 15)]),
]


def fleet_counts(t: int) -> dict[str, float]:
    """count_over_time per pod at t over [30s]."""
    return {s.labels["pod"]: float(len(w)) for s in FLEET if (w := window(s, t, 30 * S))}


VECTOR_AGGREGATIONS = [
    ("sum", lambda xs: sum(xs)),
    ("avg", lambda xs: sum(xs) / len(xs)),
    ("min", min),
    ("max", max),
    ("count", lambda xs: float(len(xs))),
    ("stdvar", variance),
    ("stddev", lambda xs: math.sqrt(variance(xs))),
]


@pytest.mark.parametrize(("op", "fn"), VECTOR_AGGREGATIONS)
async def test_vector_aggregation_by_and_without(op, fn) -> None:
    source = MemorySource(FLEET)
    start, end, step = T0 + 10 * S, T0 + 90 * S, 10 * S
    zone_of = {s.labels["pod"]: (s.labels["app"], s.labels["zone"]) for s in FLEET}
    by = mat(
        await range_query(
            f'{op} by (app) (count_over_time({{app=~".+"}}[30s]))', source, start, end, step
        )
    )
    without = mat(
        await range_query(
            f'{op} without (pod) (count_over_time({{app=~".+"}}[30s]))', source, start, end, step
        )
    )
    everything = mat(
        await range_query(f'{op}(count_over_time({{app=~".+"}}[30s]))', source, start, end, step)
    )
    want_by: dict[tuple, list] = {}
    want_without: dict[tuple, list] = {}
    want_all: dict[tuple, list] = {}
    for t in range(start, end + 1, step):
        counts = fleet_counts(t)
        groups: dict[tuple, list[float]] = {}
        zones: dict[tuple, list[float]] = {}
        for pod, n in counts.items():
            app, zone = zone_of[pod]
            groups.setdefault(L(app=app), []).append(n)
            zones.setdefault(L(app=app, zone=zone), []).append(n)
        for key, xs in groups.items():
            want_by.setdefault(key, []).append((t // MS, fn(xs)))
        for key, xs in zones.items():
            want_without.setdefault(key, []).append((t // MS, fn(xs)))
        if counts:
            want_all.setdefault((), []).append((t // MS, fn(list(counts.values()))))
    for got, want in ((by, want_by), (without, want_without), (everything, want_all)):
        assert set(got) == set(want)
        for key in want:
            assert [p[0] for p in got[key]] == [p[0] for p in want[key]]
            assert [p[1] for p in got[key]] == pytest.approx([p[1] for p in want[key]], rel=1e-12)


def tied(values: dict[str, int]) -> MemorySource:
    return MemorySource(
        [
            Stream({"app": "t", "id": k}, [(T0 + (i + 1) * S, 1.0) for i in range(n)])
            for k, n in values.items()
        ]
    )


async def test_topk_and_bottomk_pick_by_value_and_keep_labels() -> None:
    source = tied({"a": 3, "b": 1, "c": 5, "d": 2})
    at = T0 + 60 * S
    got = await instant('topk(2, count_over_time({app="t"}[1m]))', source, at)
    assert vec(got) == {L(app="t", id="c"): 5.0, L(app="t", id="a"): 3.0}
    # An instant vector without sort/sort_desc comes back in label order.
    assert [s.metric for s in got.samples] == [L(app="t", id="a"), L(app="t", id="c")]
    got = vec(await instant('bottomk(3, count_over_time({app="t"}[1m]))', source, at))
    assert got == {L(app="t", id="b"): 1.0, L(app="t", id="d"): 2.0, L(app="t", id="a"): 3.0}
    got = vec(await instant('topk(1, count_over_time({app="t"}[1m])) by (app)', source, at))
    assert got == {L(app="t", id="c"): 5.0}
    got = vec(await instant('topk(10, count_over_time({app="t"}[1m]))', source, at))
    assert len(got) == 4


async def test_topk_ties_follow_gos_heap() -> None:
    # Series reach topk in label order a, b, c. Go's heap keeps [a, b]; c beats the root
    # a, and the pop swaps a to the end and removes it: b survives, not the first-seen a.
    got = vec(
        await instant(
            'topk(2, count_over_time({app="t"}[1m]))', tied({"a": 1, "b": 1, "c": 2}), T0 + 60 * S
        )
    )
    assert got == {L(app="t", id="b"): 1.0, L(app="t", id="c"): 2.0}
    # bottomk: an equal value does not replace the root: a and b stay.
    got = vec(
        await instant(
            'bottomk(2, count_over_time({app="t"}[1m]))',
            tied({"a": 1, "b": 1, "c": 1}),
            T0 + 60 * S,
        )
    )
    assert got == {L(app="t", id="a"): 1.0, L(app="t", id="b"): 1.0}


async def test_sort_and_sort_desc_order_the_instant_vector() -> None:
    source = tied({"a": 3, "b": 1, "c": 5, "d": 2})
    at = T0 + 60 * S
    got = await instant('sort(count_over_time({app="t"}[1m]))', source, at)
    assert [(dict(s.metric)["id"], s.value) for s in got.samples] == [
        ("b", 1),
        ("d", 2),
        ("a", 3),
        ("c", 5),
    ]
    got = await instant('sort_desc(count_over_time({app="t"}[1m]))', source, at)
    assert [dict(s.metric)["id"] for s in got.samples] == ["c", "a", "d", "b"]
    # Without sort, an instant vector comes back sorted by labels.
    got = await instant('count_over_time({app="t"}[1m]) * 1', source, at)
    assert [dict(s.metric)["id"] for s in got.samples] == ["a", "b", "c", "d"]


async def test_topk_over_steps_selects_per_step() -> None:
    a = Stream({"app": "t", "id": "a"}, [(T0 + 1 * S, 1.0), (T0 + 2 * S, 1.0), (T0 + 21 * S, 1.0)])
    b = Stream({"app": "t", "id": "b"}, [(T0 + 3 * S, 1.0), (T0 + 22 * S, 1.0), (T0 + 23 * S, 1.0)])
    got = mat(
        await range_query(
            'topk(1, count_over_time({app="t"}[10s]))',
            MemorySource([a, b]),
            T0 + 10 * S,
            T0 + 30 * S,
            10 * S,
        )
    )
    assert got == {
        L(app="t", id="a"): [((T0 + 10 * S) // MS, 2.0)],
        L(app="t", id="b"): [((T0 + 30 * S) // MS, 2.0)],
    }


# ---------------------------------------------------------------------------
# Binary operations
# ---------------------------------------------------------------------------


def counts(n: int, start: int = 1) -> list[tuple[int, float]]:
    return [(T0 + (start + i) * S, 1.0) for i in range(n)]


MATCHING = [
    Stream({"job": "api", "pod": "p1"}, counts(2)),
    Stream({"job": "api", "pod": "p2"}, counts(3)),
    Stream({"job": "db", "pod": "p3"}, counts(1)),
    Stream({"job": "api", "team": "x", "kind": "r", "pod": "r1"}, counts(4)),
    Stream({"job": "db", "team": "y", "kind": "r", "pod": "r2"}, counts(5)),
]
LEFT = 'count_over_time({pod=~"p.+"}[1m])'
RIGHT = 'count_over_time({kind="r"}[1m])'
AT = T0 + 60 * S


async def bin_(query: str) -> dict[tuple, float]:
    return vec(await instant(query, MemorySource(MATCHING), AT))


@pytest.mark.parametrize(
    ("query", "want"),
    [
        (f"{LEFT} * 2", {"p1": 4.0, "p2": 6.0, "p3": 2.0}),
        (f"10 - {LEFT}", {"p1": 8.0, "p2": 7.0, "p3": 9.0}),
        (f"{LEFT} / 4", {"p1": 0.5, "p2": 0.75, "p3": 0.25}),
        (f"{LEFT} % 2", {"p1": 0.0, "p2": 1.0, "p3": 1.0}),
        (f"{LEFT} ^ 3", {"p1": 8.0, "p2": 27.0, "p3": 1.0}),
        (f"2 ^ {LEFT}", {"p1": 4.0, "p2": 8.0, "p3": 2.0}),
        (f"{LEFT} > 1", {"p1": 2.0, "p2": 3.0}),
        (f"2 < {LEFT}", {"p2": 3.0}),  # the vector's value, not the number's
        (f"{LEFT} == 3", {"p2": 3.0}),
        (f"{LEFT} != 3", {"p1": 2.0, "p3": 1.0}),
        (f"{LEFT} >= 2", {"p1": 2.0, "p2": 3.0}),
        (f"{LEFT} <= 2", {"p1": 2.0, "p3": 1.0}),
        (f"{LEFT} > bool 1", {"p1": 1.0, "p2": 1.0, "p3": 0.0}),
        (f"2 >= bool {LEFT}", {"p1": 1.0, "p2": 0.0, "p3": 1.0}),
    ],
)
async def test_vector_and_number(query, want) -> None:
    got = await bin_(query)
    assert got == {next(k for k in got if dict(k)["pod"] == pod): v for pod, v in want.items()}
    assert all(dict(k)["job"] for k in got)  # labels are kept


async def test_division_and_modulo_by_zero_are_nan() -> None:
    got = await bin_(f"{LEFT} / 0")
    assert len(got) == 3 and all(math.isnan(v) for v in got.values())
    got = await bin_(f"{LEFT} % 0")
    assert all(math.isnan(v) for v in got.values())
    got = await bin_(f"{LEFT} / ({LEFT} - {LEFT})")
    assert all(math.isnan(v) for v in got.values())


async def test_vector_matching_one_to_one() -> None:
    assert await bin_(f"{LEFT} / {LEFT}") == {
        L(job="api", pod="p1"): 1.0,
        L(job="api", pod="p2"): 1.0,
        L(job="db", pod="p3"): 1.0,
    }
    # ignoring: labels of the left side without the ignored ones.
    got = await bin_(
        'count_over_time({pod="p3"}[1m]) + ignoring(pod, kind, team) '
        'count_over_time({job="db", kind="r"}[1m])'
    )
    assert got == {L(job="db"): 1.0 + 5.0}
    # on: only the matching labels are kept.
    got = await bin_(f'count_over_time({{pod="p3"}}[1m]) * on(job) {RIGHT}')
    assert got == {L(job="db"): 1.0 * 5.0}
    # A comparison filters and keeps the left value.
    got = await bin_(f"{RIGHT} >= ignoring(kind, team, pod) sum by (job) ({LEFT})")
    assert got == {L(job="db"): 5.0}
    got = await bin_(f"{RIGHT} >= bool ignoring(kind, team, pod) sum by (job) ({LEFT})")
    assert got == {L(job="api"): 0.0, L(job="db"): 1.0}


async def test_group_left_copies_included_labels_from_the_one_side() -> None:
    got = await bin_(f"{LEFT} / on(job) group_left(team) {RIGHT}")
    assert got == {
        L(job="api", pod="p1", team="x"): 2 / 4,
        L(job="api", pod="p2", team="x"): 3 / 4,
        L(job="db", pod="p3", team="y"): 1 / 5,
    }


async def test_group_right_keeps_the_many_sides_labels() -> None:
    got = await bin_(f"{RIGHT} - on(job) group_right {LEFT}")
    assert got == {
        L(job="api", pod="p1"): 4.0 - 2.0,
        L(job="api", pod="p2"): 4.0 - 3.0,
        L(job="db", pod="p3"): 5.0 - 1.0,
    }
    # A filtering comparison keeps the left ("one") side's value.
    got = await bin_(f"{RIGHT} > on(job) group_right {LEFT}")
    assert got == {
        L(job="api", pod="p1"): 4.0,
        L(job="api", pod="p2"): 4.0,
        L(job="db", pod="p3"): 5.0,
    }


@pytest.mark.parametrize(
    ("query", "message"),
    [
        (
            f"{LEFT} / on(job) {RIGHT}",
            "multiple matches for labels: many-to-one matching must be explicit "
            "(group_left/group_right)",
        ),
        (
            f"{RIGHT} / on(job) group_left {LEFT}",
            "found duplicate series on the right hand-side;many-to-many matching not allowed: "
            "matching labels must be unique on one side",
        ),
        (
            f"{LEFT} / on(job) group_right {RIGHT}",
            "found duplicate series on the left hand-side;many-to-many matching not allowed: "
            "matching labels must be unique on one side",
        ),
        (
            f"{LEFT} / on(job) group_left(pod) {RIGHT}",
            "multiple matches for labels: grouping labels must ensure unique matches",
        ),
    ],
)
async def test_ambiguous_matching_fails_with_lokis_message(query, message) -> None:
    with pytest.raises(LokiError) as info:
        await bin_(query)
    assert info.value.message == message
    assert info.value.status == 400  # Loki answers 500; a user mistake is a 400 here


async def test_set_operations() -> None:
    got = await bin_(f'{LEFT} and on(job) count_over_time({{kind="r", job="db"}}[1m])')
    assert got == {L(job="db", pod="p3"): 1.0}
    got = await bin_(f'{LEFT} unless on(job) count_over_time({{kind="r", job="db"}}[1m])')
    assert got == {L(job="api", pod="p1"): 2.0, L(job="api", pod="p2"): 3.0}
    got = await bin_('count_over_time({pod="p1"}[1m]) or count_over_time({pod="p3"}[1m])')
    assert got == {L(job="api", pod="p1"): 2.0, L(job="db", pod="p3"): 1.0}
    got = await bin_(f'count_over_time({{pod="p1"}}[1m]) or on(job) {LEFT}')
    assert got == {L(job="api", pod="p1"): 2.0, L(job="db", pod="p3"): 1.0}
    got = await bin_(f'{LEFT} and count_over_time({{pod="none"}}[1m])')
    assert got == {}
    got = await bin_(f'{LEFT} unless count_over_time({{pod="none"}}[1m])')
    assert len(got) == 3


async def test_set_operations_over_steps_look_at_each_step() -> None:
    p1 = Stream({"job": "api", "pod": "p1"}, [(T0 + i * S, 1.0) for i in (5, 15, 25, 35)])
    p2 = Stream({"job": "api", "pod": "p2"}, [(T0 + i * S, 1.0) for i in (15, 35)])
    query = 'count_over_time({pod="p1"}[10s]) unless on(job) count_over_time({pod="p2"}[10s])'
    got = mat(await range_query(query, MemorySource([p1, p2]), T0 + 10 * S, T0 + 40 * S, 10 * S))
    assert got == {L(job="api", pod="p1"): [((T0 + 10 * S) // MS, 1.0), ((T0 + 30 * S) // MS, 1.0)]}


async def test_vector_plus_vector_is_grafanas_health_check() -> None:
    result = await instant("vector(1)+vector(1)", MemorySource([]), T0)
    assert to_json(result) == {
        "resultType": "vector",
        "result": [{"metric": {}, "value": [T0 // S, "2"]}],
    }


async def test_same_range_aggregation_is_fetched_once() -> None:
    source = MemorySource(MATCHING)
    await instant(f"{LEFT} / {LEFT}", source, AT)
    assert len(source.calls) == 1


# ---------------------------------------------------------------------------
# label_replace, numbers, vector()
# ---------------------------------------------------------------------------


async def label_replace(*args: str) -> dict[tuple, float]:
    quoted = ", ".join(json.dumps(a) for a in args)
    return await bin_(f'label_replace(count_over_time({{pod="p1"}}[1m]), {quoted})')


async def test_label_replace() -> None:
    assert await label_replace("dst", "x-$1", "pod", "p(.*)") == {
        L(job="api", pod="p1", dst="x-1"): 2.0
    }
    assert await label_replace("dst", "${n}y", "pod", "p(?P<n>[0-9])") == {
        L(job="api", pod="p1", dst="1y"): 2.0
    }
    assert await label_replace("dst", "$$1 $1x $9", "pod", "p(1)") == {
        L(job="api", pod="p1", dst="$1  "): 2.0
    }
    # The regex is anchored: "1" does not match "p1", nothing changes.
    assert await label_replace("dst", "$1", "pod", "1") == {L(job="api", pod="p1"): 2.0}
    # An empty result deletes the destination label; a missing source label is "".
    assert await label_replace("pod", "", "pod", ".*") == {L(job="api"): 2.0}
    assert await label_replace("new", "v", "nothing", "") == {L(job="api", pod="p1", new="v"): 2.0}


async def test_numbers_are_scalars_in_instant_queries_and_series_in_range_queries() -> None:
    result = await instant("1 + 1", MemorySource([]), T0 + 500 * MS)
    assert result == Scalar((T0 + 500 * MS) // MS, 2.0)
    assert to_json(result) == {"resultType": "scalar", "result": [1_700_000_000.5, "2"]}
    result = await range_query("3", MemorySource([]), T0, T0 + 20 * S, 10 * S)
    assert mat(result) == {
        (): [(T0 // MS, 3.0), ((T0 + 10 * S) // MS, 3.0), ((T0 + 20 * S) // MS, 3.0)]
    }
    result = await range_query("vector(2) * 2", MemorySource([]), T0, T0 + 10 * S, 10 * S)
    assert mat(result) == {(): [(T0 // MS, 4.0), ((T0 + 10 * S) // MS, 4.0)]}


# ---------------------------------------------------------------------------
# Errors and limits
# ---------------------------------------------------------------------------


def pipeline_error(kind: str, series: str) -> str:
    return (
        f"pipeline error: '{kind}' for series: '{series}'.\n"
        f'Use a label filter to intentionally skip this error. (e.g | __error__!="{kind}").\n'
        'To skip all potential errors you can match empty errors.(e.g __error__="")\n'
        "The label filter can also be specified after unwrap. "
        '(e.g | unwrap latency | __error__="" )\n'
    )


async def test_series_with_error_label_fails_the_query() -> None:
    bad = Stream({"app": "e", "__error__": "JSONParserErr", "x": 'q"uote'}, [(T0 + 10 * S, 1.0)])
    good = Stream({"app": "e"}, [(T0 + 10 * S, 1.0)])
    with pytest.raises(BadRequest) as info:
        await instant('sum(count_over_time({app="e"}[1m]))', MemorySource([good, bad]), T0 + 60 * S)
    assert info.value.message == pipeline_error(
        "JSONParserErr", '{__error__="JSONParserErr", app="e", x="q\\"uote"}'
    )
    assert info.value.status == 400


async def test_error_series_outside_every_window_or_preserved_is_fine() -> None:
    bad = Stream({"app": "e", "__error__": "JSONParserErr"}, [(T0 - 600 * S, 1.0)])
    kept = Stream({"app": "e", "__error__": "X", "__preserve_error__": "true"}, [(T0 + 5 * S, 1.0)])
    got = vec(
        await instant('count_over_time({app="e"}[1m])', MemorySource([bad, kept]), T0 + 60 * S)
    )
    assert list(got.values()) == [1.0]


SERIES_LIMIT = (
    "maximum number of series (2) reached for a single query; consider reducing query "
    "cardinality by adding more specific stream selectors, reducing the time range, or "
    "aggregating results with functions like sum(), count() or topk()"
)


async def test_max_series() -> None:
    source = MemorySource(MATCHING)
    with pytest.raises(BadRequest) as info:
        await instant(LEFT, source, AT, max_series=2)
    assert info.value.message == SERIES_LIMIT
    with pytest.raises(BadRequest) as info:
        await range_query(LEFT, source, AT - 30 * S, AT, 10 * S, max_series=2)
    assert info.value.message == SERIES_LIMIT
    # Only the result counts, not the series aggregated into it.
    assert len(vec(await instant(f"sum by (job) ({LEFT})", source, AT, max_series=2))) == 2


# ---------------------------------------------------------------------------
# Splits, windows and JSON
# ---------------------------------------------------------------------------

SPLIT_QUERIES = [
    'rate({app="a"}[1m])',
    'sum by (app) (count_over_time({app=~".+"}[45s]))',
    'topk(1, count_over_time({app=~".+"}[30s]))',
    'avg_over_time({app="a"} | unwrap v [2m] offset 10s)',
    'absent_over_time({app="a"}[10s])',
    'count_over_time({app="a"}[1m]) / on(app) group_left '
    'sum by (app) (count_over_time({app="a"}[1m]))',
    "vector(1)",
    "4",
]


@pytest.mark.parametrize("query", SPLIT_QUERIES)
async def test_evaluating_splits_gives_the_whole_querys_points(query) -> None:
    source = MemorySource([FRACTIONAL, INTEGRAL, OTHER_APP, *FLEET])
    start, end, step = T0 - 60 * S, T0 + 180 * S, 15 * S
    whole = await range_query(query, source, start, end, step)
    assert whole.series
    # Splits on step times, as the query frontend makes them (the last one is ragged).
    bounds = [(start, start + 45 * S), (start + 60 * S, start + 150 * S), (start + 165 * S, end)]
    parts = [await range_query(query, source, a, b, step) for a, b in bounds]
    assert to_json(merge_matrices(parts)) == to_json(whole)
    assert to_json(merge_matrices(list(reversed(parts)))) == to_json(whole)


def test_merge_matrices_merges_by_labels_and_time() -> None:
    a = Matrix([Series(L(x="1"), array("q", [1000, 2000]), array("d", [1, 2]))])
    b = Matrix(
        [
            Series(L(x="0"), array("q", [5000]), array("d", [9])),
            Series(L(x="1"), array("q", [2000, 3000]), array("d", [7, 3])),
        ]
    )
    merged = merge_matrices([a, b])
    assert mat(merged) == {
        L(x="0"): [(5000, 9.0)],
        L(x="1"): [(1000, 1.0), (2000, 2.0), (3000, 3.0)],
    }
    assert [s.metric for s in merged.series] == [L(x="0"), L(x="1")]


def test_sample_range_covers_every_log_range() -> None:
    expr = parse_expr('rate({a="b"}[5m] offset 1m) / rate({a="c"}[1m])')
    assert sample_range(expr, T0, T0 + 3600 * S) == (T0 - 360 * S, T0 + 3600 * S)
    assert sample_range(parse_expr("vector(1)"), T0, T0 + S) == (T0 + S, T0 + S)


def test_step_times() -> None:
    assert list(step_times(0, 25, 10)) == [0, 10, 20]
    with pytest.raises(BadRequest):
        step_times(0, 10, 0)


async def test_range_query_requests_one_window_per_log_range() -> None:
    source = MemorySource([])
    await range_query(
        'rate({a="b"}[5m] offset 1m) + rate({a="c"}[1m])', source, T0, T0 + 600 * S, 60 * S
    )
    assert sorted(c[1:] for c in source.calls) == [
        (T0 - 360 * S, T0 + 540 * S),
        (T0 - 60 * S, T0 + 600 * S),
    ]


def test_json_values_are_formatted_as_go_does() -> None:
    values = [1.0, 0.5, 1e21, 1e-7, -0.0, math.nan, math.inf, -math.inf, 1 / 3, 123.456]
    vector = Vector([Sample(L(i=str(i)), 1_700_000_000_123, v) for i, v in enumerate(values)])
    got = to_json(vector)
    assert [r["value"][1] for r in got["result"]] == [
        "1", "0.5", "1000000000000000000000", "0.0000001", "-0", "NaN", "+Inf", "-Inf",
        "0.3333333333333333", "123.456",
    ]  # fmt: skip
    assert got["result"][0]["value"][0] == 1_700_000_000.123
    assert got["result"][0]["metric"] == {"i": "0"}
    matrix = Matrix(
        [Series(L(a="b"), array("q", [1_700_000_000_000, 1_700_000_000_500]), array("d", [1, 2]))]
    )
    assert json.dumps(to_json(matrix)) == (
        '{"resultType": "matrix", "result": [{"metric": {"a": "b"}, '
        '"values": [[1700000000, "1"], [1700000000.5, "2"]]}]}'
    )


async def test_many_steps_over_many_samples_stay_fast() -> None:
    # 100k samples, 2000 steps, 6000 samples per window: O(n * steps) would visit 12M.
    dense = Stream({"app": "d"}, [(T0 + i * 100 * MS, float(i % 7)) for i in range(100_000)])
    source = MemorySource([dense])
    start, end, step = T0 + 600 * S, T0 + 10_000 * S, 5 * S
    began = time.perf_counter()
    got = mat(
        await range_query('sum_over_time({app="d"} | unwrap v [10m])', source, start, end, step)
    )
    elapsed = time.perf_counter() - began
    points = got[L(app="d")]
    assert len(points) == len(range(start, end + 1, step))
    for t in (start, start + 500 * step, end):
        assert points[(t - start) // step] == (t // MS, naive_sum(window(dense, t, 600 * S)))
    assert elapsed < 5, elapsed


# ---------------------------------------------------------------------------
# Conformance: metric rows of eval_cases.jsonl (Loki 3.7.6)
# ---------------------------------------------------------------------------


def _conformance_rows() -> list[dict[str, Any]]:
    path = CONFORMANCE / "eval_cases.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if (r.get("loki_query_type") or "").startswith("metric")]


def _logfmt(line: str) -> dict[str, str]:
    """The rows' logfmt lines are plain ``k=v`` tokens; Loki turns '.' in keys into '_'."""
    out: dict[str, str] = {}
    for token in line.split():
        key, _, value = token.partition("=")
        out.setdefault(key.replace(".", "_"), value)
    return out


def _json_fields(line: str) -> dict[str, str]:
    """The rows' JSON line (with a trailing comma Loki's parser tolerates), flattened."""
    doc = json.loads(line.replace('"foo",\n  }', '"foo"\n  }'))
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}_{k}" if prefix else k, v)
        else:
            out[prefix] = str(value)

    walk("", doc)
    return out


def _duration_s(text: str) -> float:
    number, unit = text[:-2], text[-2:]
    assert unit == "ms"
    return int(Decimal(number) * 1_000_000) / 1e9


def _bytes(text: str) -> float:
    number, unit = text.replace(" ", "")[:-3], text.replace(" ", "")[-3:]
    assert unit == "MiB"
    return float(int(number) * 1024 * 1024)


# Rows whose samples cannot be built by hand from the push (regexp + line_format).
NOT_BY_HAND = {"ev-0152"}


def _row_samples(row: dict[str, Any]) -> list[SampleSeries]:
    """The one sample the row's line yields, built by hand: stream labels, structured
    metadata (``_extracted`` on a clash), parsed fields; value 1 (count/rate), the line's
    bytes, or the unwrapped label converted (and dropped from the labels)."""
    push = row["loki_push"]
    labels = dict(push["labels"])
    for k, v in (push["structured_metadata"] or {}).items():
        labels[f"{k}_extracted" if k in labels else k] = v
    query = row["loki_query"]
    if "| logfmt" in query:
        parsed = _logfmt(push["line"])
    elif "| json" in query:
        parsed = _json_fields(push["line"])
    else:
        parsed = {}
    for k, v in parsed.items():
        labels[f"{k}_extracted" if k in labels else k] = v
    expr = next(e for e in _walk(parse_expr(query)) if isinstance(e, RangeAggregationExpr))
    unwrap = expr.left.unwrap
    if row["loki_http_status"] == 400:
        labels["__error__"] = "SampleExtractionErr"
        raw = labels[unwrap.identifier]
        labels["__error_details__"] = f'strconv.ParseFloat: parsing "{raw}": invalid syntax'
        value = 0.0
    elif unwrap is not None:
        raw = labels.pop(unwrap.identifier)
        value = {"": float, "duration": _duration_s, "bytes": _bytes}[unwrap.operation](raw)
    elif expr.operation.startswith("bytes"):
        value = float(len(push["line"].encode()))
    else:
        value = 1.0
    # loki_kept: a sample existed (filters passed); None for the failing rows.
    if row["loki_kept"] is False:
        return []
    return [SampleSeries(canon(labels), array("q", [push["timestamp_ns"]]), array("d", [value]))]


def _walk(e: Expr):
    yield e
    for c in e.children():
        yield from _walk(c)


@dataclass
class RowSource:
    series: list[SampleSeries]

    async def select_samples(self, expr, root, start_ns, end_ns) -> list[SampleSeries]:
        return [s for s in self.series if start_ns < s.ts[0] <= end_ns]


@pytest.mark.parametrize(
    "row", [r for r in _conformance_rows() if r["id"] not in NOT_BY_HAND], ids=lambda r: r["id"]
)
async def test_conformance_metric_row(row) -> None:
    source = RowSource(_row_samples(row))
    at = row["loki_query_time_ns"]
    expr = parse_expr(row["loki_query"])
    if row["loki_http_status"] != 200:
        with pytest.raises(BadRequest) as info:
            await evaluate(expr, source, start_ns=at, end_ns=at, step_ns=0, instant=True)
        assert info.value.message == row["loki_error"]
        return
    result = await evaluate(expr, source, start_ns=at, end_ns=at, step_ns=0, instant=True)
    got = [
        {"metric": {k: v for k, v in r["metric"].items() if k != "case_id"}, "value": r["value"][1]}
        for r in to_json(result)["result"]
    ]
    assert got == row["loki_result"]
    assert all(r["value"][0] == at // S for r in to_json(result)["result"])
