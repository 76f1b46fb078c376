"""``loki-async demo``: its data (trace ids that state their lines' time, durations,
levels, determinism) without a server, and the whole demo against the real program."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from loki_async.coprocessor import validate_config
from loki_async.coprocessor_host import try_pre_query
from loki_async.demo import (
    DAY_NS,
    HOUR_NS,
    LOGHUB_JOB,
    SERVICES_JOB,
    SLOW_MS,
    generate,
    loghub_level,
)
from loki_async.logql.literals import parse_duration
from tests.conftest import Loki, base_config, free_port

TRACEID = Path(__file__).resolve().parents[1] / "coprocessors" / "traceid.py"
traceid = runpy.run_path(str(TRACEID))
END = 1_700_000_000 * 10**9 + 1234  # not on an hour: the data ends at the hour before
NS = 10**9


@pytest.fixture(scope="module")
def data():  # 3 days, a fifth of the volume: about 7,000 lines
    return generate(END, 3, 0.2)


def service_lines(data) -> list[tuple[int, dict]]:
    return [
        (ts, orjson.loads(line))
        for ts, labels, line in data.rows
        if dict(labels)["job"] == SERVICES_JOB
    ]


def test_trace_ids_state_the_time_of_their_traces_first_line(data) -> None:
    assert data.end_ns == END - END % HOUR_NS and data.start_ns == data.end_ns - 3 * DAY_NS
    assert [r[0] for r in data.rows] == sorted(r[0] for r in data.rows)
    traces: dict[str, list[int]] = defaultdict(list)
    for ts, doc in service_lines(data):
        traces[doc["trace_id"]].append(ts)
    assert len(traces) == data.traces
    kinds = Counter()
    decl = traceid["PLUGIN"]
    tid = decl.factory(validate_config(decl.config, {})[0])
    for trace_id, times in traces.items():
        fmt, t = traceid["decode_time"](trace_id)
        kinds[fmt] += 1
        # The plugin believes it for a query over the data, and keeps every line.
        assert tid.id_time(trace_id, data.start_ns, data.end_ns) == (fmt, t)
        assert min(times) == t and max(times) < t + 60 * NS
    assert set(kinds) == {"xray", "uuidv7"} and abs(kinds["xray"] - kinds["uuidv7"]) <= 1


async def test_the_needle_is_in_the_splits_traceid_keeps(data) -> None:
    needle = data.needle
    times = [ts for ts, doc in service_lines(data) if doc["trace_id"] == needle.id]
    assert needle.kind == "xray" and len(times) == needle.lines >= 4
    assert data.start_ns < needle.start_ns < data.end_ns
    assert any(doc["level"] == "error" for ts, doc in service_lines(data) if ts in times)
    query = f'{{job="{SERVICES_JOB}"}} |= "{needle.id}"'
    plan = await try_pre_query(TRACEID, query, END - 7 * DAY_NS, END)
    kept = [r for _, r in plan if r is not None]
    assert len(plan) >= 168 and 1 <= len(kept) <= 3
    assert all(any(a <= t < b for a, b in kept) for t in times)


def test_durations_are_go_durations_and_a_few_percent_are_slow(data) -> None:
    lines = service_lines(data)
    durations = [parse_duration(doc["duration"]) for _, doc in lines if "duration" in doc]
    assert len(durations) > 0.8 * len(lines)
    slow = sum(d > SLOW_MS * 10**6 for d in durations)
    assert 0.01 < slow / len(durations) < 0.06
    levels = Counter(doc["level"] for _, doc in lines)
    assert set(levels) == {"debug", "info", "warn", "error"}
    assert levels.most_common(1)[0][0] == "info" and levels["error"] < levels["warn"]
    # The stream's level label is the line's.
    for _, labels, line in data.rows[:500]:
        if dict(labels)["job"] == SERVICES_JOB:
            assert dict(labels)["level"] == orjson.loads(line)["level"]


def test_the_outage_is_the_hour_with_most_errors() -> None:
    data = generate(END, 3)
    errors = Counter(
        ts // HOUR_NS for ts, labels, _ in data.rows if dict(labels)["level"] == "error"
    )
    (hour, n), (_, second) = errors.most_common(2)
    assert hour == data.outage_ns // HOUR_NS and n > 2 * second


def test_volume_follows_days_and_scale(data) -> None:
    assert 0.9 * 7200 < len(data.rows) < 1.1 * 7200  # (10,000 + 2,000) * 3 days * 0.2
    assert data.loghub_lines == 16 * round(2000 * 0.2 * 3 / 16)
    apps = {dict(labels)["app"] for _, labels, _ in data.rows if dict(labels)["job"] == LOGHUB_JOB}
    assert len(apps) == data.systems == 16
    assert data.streams == len({labels for _, labels, _ in data.rows})


def test_same_arguments_same_data(data) -> None:
    again = generate(END + 10 * 60 * NS, 3, 0.2)  # the same hour
    assert again.rows == data.rows and again.needle == data.needle
    other = generate(END, 3, 0.2, seed=7)
    assert other.rows != data.rows


@pytest.mark.parametrize(
    ("line", "level"),
    [
        (b"081109 203615 148 INFO dfs.DataNode$PacketResponder: PacketResponder 1", "info"),
        (b"03-17 16:13:38.811  1702  2395 D WindowManager: printFreezingDisplayLogs", "debug"),
        (b"03-17 16:13:38.811  1702  2395 E AndroidRuntime: FATAL EXCEPTION", "error"),
        (b"[Sun Dec 04 04:47:44 2005] [error] mod_jk child workerEnv in error state 6", "error"),
        (b"2015-10-18 18:01:47,978 WARN [main] org.apache.hadoop.Foo: retrying", "warn"),
        (b"20171223-22:15:29:606|Step_LSC|30002312|onStandStepChanged 3579", "unknown"),
    ],
)
def test_loghub_level_reads_the_level_a_line_states(line: bytes, level: str) -> None:
    assert loghub_level(line) == level


# --------------------------------------------------------------------------- end to end


def demo(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loki_async.cli", "demo", "--url", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_demo_loads_and_runs_its_three_queries(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, auth_enabled=True, limits_config={"reject_old_samples": False})
    loki = Loki(tmp_path, cfg).start()
    try:
        out = demo(loki.url, "--days", "3", "--scale", "0.2", "--tenant", "demo")
    finally:
        loki.stop()
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for title in ("1. Loading 3 days", "2. Trace search", "3. Lines per level", "4. Slow calls"):
        assert title in text
    m = re.search(r"(\d+) splits: (\d+) skipped by traceid, (\d+) run", text)
    assert m, text
    total, skipped, run = map(int, m.groups())
    assert total >= 168 and skipped >= total - 3 and run == total - skipped
    assert re.search(r"\d+ lines of the trace", text)
    m = re.search(r"(\d+)/(\d+) splits \(0 from the split cache, 0 skipped\)", text)
    assert m and m[1] == m[2] and int(m[2]) >= 72, text
    assert re.search(r"^\s+info\s+[\d,]+\s+[\d.]+%", text, re.M)
    assert "note: counted" not in text  # every line loaded was counted
    assert re.search(r"^total: [\d.]+ s", text, re.M)


def test_demo_explains_a_server_that_rejects_old_samples(tmp_path: Path) -> None:
    loki = Loki(tmp_path, base_config(tmp_path)).start()  # reject_old_samples: true
    try:
        out = demo(loki.url, "--days", "10", "--scale", "0.02")
    finally:
        loki.stop()
    assert out.returncode == 1
    assert "rejects samples older than" in out.stderr
    assert "-validation.reject-old-samples=false" in out.stderr
    assert "2. Trace search" not in out.stdout


def test_demo_reports_an_unreachable_server() -> None:
    out = demo(f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1
    assert "cannot reach" in out.stderr and "Is loki-async running?" in out.stderr


def test_demo_fails_with_the_servers_message_when_a_query_fails(tmp_path: Path) -> None:
    limits = {"reject_old_samples": False, "max_query_length": "2d"}
    loki = Loki(tmp_path, base_config(tmp_path, limits_config=limits)).start()
    try:
        out = demo(loki.url, "--days", "3", "--scale", "0.05")
    finally:
        loki.stop()
    assert out.returncode == 1
    # The 7-day trace search is the first query longer than the limit.
    assert "2. Trace search" in out.stdout and "3. Lines per level" not in out.stdout
    assert "error: 400" in out.stderr and "the query time range exceeds the limit" in out.stderr
