"""``bench trace``'s data: every trace's id states when its lines are, so the traceid
coprocessor keeps the splits of each needle's lines and skips the others (no server)."""

from __future__ import annotations

import argparse
from pathlib import Path

from loki_async.bench import DAY_NS, HOUR_NS, TraceBench, trace_query, trace_rows
from loki_async.coprocessor_host import try_pre_query

TRACEID = Path(__file__).resolve().parents[1] / "coprocessors" / "traceid.py"
END = 1_700_000_000 * 10**9 // HOUR_NS * HOUR_NS
START = END - 7 * DAY_NS


async def test_the_needles_lines_are_in_the_splits_traceid_keeps() -> None:
    rows, traces = trace_rows(3000, START, END)
    assert len(rows) == 3000 and sum(t.lines for t in traces) == 3000
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert START <= rows[0][0] and rows[-1][0] < END
    bench = TraceBench(argparse.Namespace(days=7.0), Path("."))
    bench.traces = traces
    needles = bench.needles()
    assert [t.kind for t in needles] == ["xray", "uuidv7"]
    for trace in needles:
        times = [ts for ts, _, line in rows if trace.id.encode() in line]
        assert len(times) == trace.lines and min(times) == trace.start_ns
        plan = await try_pre_query(TRACEID, trace_query(trace), START, END)
        kept = [r for _, r in plan if r is not None]
        assert len(plan) == 168 and 1 <= len(kept) <= 3
        assert all(any(a <= t < b for a, b in kept) for t in times)
