"""LogQL over pushed data, end to end: the real program, answers checked against values
computed here, independently, from the data that was pushed (plain loops, no engine code).

One server holds a small deterministic data set (module fixture): four logfmt streams
(app x level), a JSON stream and a stream with structured metadata, one entry a minute
for two hours, flushed to the store before the queries run so that blocks are read from
chunks (and the ingester path is covered by the unflushed tail pushed afterwards).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from loki_async.logproto import PushStream
from tests.conftest import Loki, base_config
from tests.lokiclient import client, get, push

NS = 10**9
MIN = 60 * NS
STEP_S = 300  # range-query step used throughout (5m)


@dataclass
class Entry:
    ts: int
    line: str
    labels: dict[str, str]  # stream labels
    meta: dict[str, str]


def _dataset(t0: int) -> list[Entry]:
    rng = random.Random(7)
    out: list[Entry] = []
    for app in ("api", "web"):
        for level in ("info", "error"):
            off = {"api": 1, "web": 2}[app] * NS + {"info": 0, "error": 3}[level] * NS
            for i in range(120):
                dur = rng.choice([5, 20, 150, 480, 520, 900, 1500])
                status = rng.choice([200, 200, 404, 500])
                size = rng.randint(10, 5000)
                line = (
                    f"level={level} status={status} duration={dur}ms size={size}B "
                    f'user=u{i % 7} msg="req {i}" ip=10.0.{i % 3}.{i % 250}'
                )
                out.append(Entry(t0 + i * MIN + off, line, {"app": app, "level": level}, {}))
    for i in range(120):
        doc = {
            "level": "warn" if i % 5 == 0 else "info",
            "latency_ms": (i * 37) % 1000,
            "user": {"id": i % 4, "name": f"n{i % 4}"},
            "msg": f"json {i}",
        }
        out.append(Entry(t0 + i * MIN + 5 * NS, json.dumps(doc), {"app": "json"}, {}))
    for i in range(60):
        out.append(
            Entry(
                t0 + i * 2 * MIN + 7 * NS,
                f"\x1b[31mtraced\x1b[0m request {i}",
                {"app": "meta"},
                {"trace_id": f"t{i % 3}"},
            )
        )
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Loki, list[Entry], int]]:
    workdir: Path = tmp_path_factory.mktemp("engine")
    cfg = base_config(workdir, querier={"query_ingesters_within": "0s"})
    loki = Loki(workdir, cfg).start()
    t0 = (time.time_ns() - 4 * 3600 * NS) // (3600 * NS) * (3600 * NS)  # on an hour
    entries = _dataset(t0)

    async def load() -> None:
        streams: dict[tuple, PushStream] = {}
        for e in entries:
            key = tuple(sorted(e.labels.items()))
            s = streams.setdefault(key, PushStream(list(key), [], [], []))
            s.timestamps.append(e.ts)
            s.lines.append(e.line.encode())
            s.metadata.append(sorted(e.meta.items()))
        async with client() as session:
            status, body = await push(session, loki.url, list(streams.values()), "protobuf")
            assert status == 204, body
            async with session.post(f"{loki.url}/flush") as r:
                assert r.status == 204

    asyncio.run(load())
    yield loki, entries, t0
    loki.stop()


# --------------------------------------------------------------------------- helpers


def _q(loki: Loki, path: str, **params: Any) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with client() as s:
            return await get(s, loki.url, path, **{k: str(v) for k, v in params.items()})

    return asyncio.run(go())


def instant(loki: Loki, query: str, at: int) -> list[tuple[dict[str, str], float]]:
    status, body = _q(loki, "/loki/api/v1/query", query=query, time=at)
    assert status == 200, body
    data = body["data"]
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    assert data["resultType"] == "vector", data
    for r in data["result"]:
        assert r["value"][0] == at / NS
    return [(r["metric"], float(r["value"][1])) for r in data["result"]]


def matrix(loki: Loki, query: str, start: int, end: int, step_s: int = STEP_S) -> dict:
    status, body = _q(
        loki, "/loki/api/v1/query_range", query=query, start=start, end=end, step=step_s
    )
    assert status == 200, body
    assert body["data"]["resultType"] == "matrix"
    return {
        tuple(sorted(r["metric"].items())): {round(float(t) * NS): float(v) for t, v in r["values"]}
        for r in body["data"]["result"]
    }


def logs(loki: Loki, query: str, start: int, end: int, **params: Any) -> list[dict]:
    status, body = _q(
        loki,
        "/loki/api/v1/query_range",
        query=query,
        start=start,
        end=end,
        limit=params.pop("limit", 5000),
        direction=params.pop("direction", "forward"),
        **params,
    )
    assert status == 200, body
    assert body["data"]["resultType"] == "streams"
    return body["data"]["result"]


def lines_of(result: list[dict]) -> list[str]:
    return sorted(v[1] for s in result for v in s["values"])


def window(entries: list[Entry], t: int, rng: int, pred: Callable[[Entry], bool]) -> list[Entry]:
    return [e for e in entries if t - rng < e.ts <= t and pred(e)]


def logfmt(line: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', line)}


def approx(a: dict, b: dict) -> None:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, dict):
            approx(va, vb)
        else:
            assert math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-9), (k, va, vb)


def vec(pairs: list[tuple[dict[str, str], float]]) -> dict:
    return {tuple(sorted(m.items())): v for m, v in pairs}


# --------------------------------------------------------------------------- log queries


def test_line_filters_match_substring_regex_and_pattern(data) -> None:
    loki, entries, t0 = data
    end = t0 + 3 * 3600 * NS
    logfmt_entries = [e for e in entries if e.labels["app"] in ("api", "web")]
    cases = {
        '{app="api"} |= "status=500"': lambda e: (
            e.labels["app"] == "api" and "status=500" in e.line
        ),
        '{app=~"api|web"} != "status=200" |~ "duration=(5|9)\\\\d\\\\dms"': lambda e: (
            "status=200" not in e.line and re.search(r"duration=(5|9)\d\dms", e.line)
        ),
        '{app="web"} !~ "u[0-3]"': lambda e: (
            e.labels["app"] == "web" and not re.search("u[0-3]", e.line)
        ),
        '{app="api"} |= "u1 " or "u2 "': lambda e: (
            e.labels["app"] == "api" and ("u1 " in e.line or "u2 " in e.line)
        ),
        '{app="api"} |> "level=<_> status=404 <_>"': lambda e: (
            e.labels["app"] == "api" and "status=404" in e.line
        ),
        '{app="web"} !> "<_> duration=5ms <_>"': lambda e: (
            e.labels["app"] == "web" and "duration=5ms" not in e.line
        ),
        '{app="api"} |= ip("10.0.1.0/24")': lambda e: (
            e.labels["app"] == "api" and "ip=10.0.1." in e.line
        ),
        '{app="api"} |~ "(?i)LEVEL=ERROR"': lambda e: (
            e.labels["app"] == "api" and "level=error" in e.line
        ),
    }
    for query, pred in cases.items():
        got = lines_of(logs(loki, query, t0, end))
        want = sorted(e.line for e in logfmt_entries if pred(e))
        assert got == want, query
        assert want, f"test data should exercise {query}"


def test_limit_and_direction_across_splits(data) -> None:
    loki, entries, t0 = data
    end = t0 + 3 * 3600 * NS
    api = sorted((e.ts, e.line) for e in entries if e.labels == {"app": "api", "level": "info"})
    q = '{app="api", level="info"}'
    back = logs(loki, q, t0, end, limit=70, direction="backward")
    assert [int(ts) for ts, _ in back[0]["values"]] == [ts for ts, _ in reversed(api[-70:])]
    fwd = logs(loki, q, t0, end, limit=70, direction="forward")
    assert [int(ts) for ts, _ in fwd[0]["values"]] == [ts for ts, _ in api[:70]]
    # The limit applies across streams, by time.
    both = logs(loki, '{app=~"api|web"}', t0, end, limit=10, direction="backward")
    newest = sorted((e.ts for e in entries if e.labels["app"] in ("api", "web")), reverse=True)
    assert sorted((int(v[0]) for s in both for v in s["values"]), reverse=True) == newest[:10]


def test_logfmt_and_duration_filter(data) -> None:
    loki, entries, t0 = data
    end = t0 + 3 * 3600 * NS
    result = logs(loki, '{app="api"} | logfmt | duration > 500ms and status >= 500', t0, end)
    want = sorted(
        e.line
        for e in entries
        if e.labels["app"] == "api"
        and int(logfmt(e.line)["duration"][:-2]) > 500
        and int(logfmt(e.line)["status"]) >= 500
    )
    assert lines_of(result) == want and want
    for s in result:  # parsed labels join the stream labels
        assert s["stream"]["status"] == "500" and "duration" in s["stream"]


def test_bytes_number_string_regex_and_ip_label_filters(data) -> None:
    loki, entries, t0 = data
    end = t0 + 3 * 3600 * NS
    api = [e for e in entries if e.labels["app"] == "api"]
    cases = {
        "| size > 4KB": lambda f: int(f["size"][:-1]) > 4000,  # KB is 1000 (humanize)
        '| status != 200, user =~ "u[12]"': lambda f: (
            f["status"] != "200" and f["user"] in ("u1", "u2")
        ),
        '| status = 404 or user = "u6"': lambda f: f["status"] == "404" or f["user"] == "u6",
        '| ip = ip("10.0.2.0/24")': lambda f: f["ip"].startswith("10.0.2."),
        '| user != "u0" | duration <= 20ms': lambda f: (
            f["user"] != "u0" and int(f["duration"][:-2]) <= 20
        ),
    }
    for stage, pred in cases.items():
        got = lines_of(logs(loki, f'{{app="api"}} | logfmt {stage}', t0, end))
        want = sorted(e.line for e in api if pred(logfmt(e.line)))
        assert got == want and want, stage


def test_json_line_format_label_format_drop_keep(data) -> None:
    loki, entries, t0 = data
    end = t0 + 3 * 3600 * NS
    js = [json.loads(e.line) for e in entries if e.labels["app"] == "json"]
    got = logs(
        loki,
        '{app="json"} | json | level="warn" | line_format "{{.user_name}} took {{.latency_ms}}"',
        t0,
        end,
    )
    want = sorted(f"{d['user']['name']} took {d['latency_ms']}" for d in js if d["level"] == "warn")
    assert lines_of(got) == want
    got = logs(loki, '{app="json"} | json lvl="level", uid="user.id" | keep lvl, uid', t0, end)
    assert {tuple(sorted(s["stream"])) for s in got} == {("lvl", "uid")}
    got = logs(
        loki,
        '{app="json"} | json | label_format who=user_name, lat="{{.latency_ms}}ms" '
        "| drop user_id, msg, latency_ms, level, user_name",
        t0,
        end,
    )
    labels = {tuple(sorted(s["stream"].items())) for s in got}
    assert {dict(ls)["who"] for ls in labels} == {"n0", "n1", "n2", "n3"}
    assert all(set(dict(ls)) == {"app", "who", "lat"} for ls in labels)


def test_decolorize_metadata_labels_and_categorize_labels(data) -> None:
    loki, entries, t0 = data
    end = t0 + 3 * 3600 * NS
    got = logs(loki, '{app="meta"} | trace_id="t1" | decolorize', t0, end)
    want = sorted(
        e.line.replace("\x1b[31m", "").replace("\x1b[0m", "")
        for e in entries
        if e.labels["app"] == "meta" and e.meta["trace_id"] == "t1"
    )
    assert lines_of(got) == want
    assert {s["stream"]["trace_id"] for s in got} == {"t1"}

    async def categorized() -> dict:
        async with client() as s:
            async with s.get(
                f"{loki.url}/loki/api/v1/query_range",
                params={
                    "query": '{app="meta"} | regexp "request (?P<n>\\\\d+)"',
                    "start": str(t0),
                    "end": str(end),
                    "limit": "3",
                    "direction": "forward",
                },
                headers={"X-Loki-Response-Encoding-Flags": "categorize-labels"},
            ) as r:
                assert r.status == 200
                return await r.json()

    body = asyncio.run(categorized())
    assert body["data"]["encodingFlags"] == ["categorize-labels"]
    assert list(body["data"]) == ["resultType", "encodingFlags", "result", "stats"]
    (stream,) = body["data"]["result"]
    assert stream["stream"] == {"app": "meta"}
    ts, line, cats = stream["values"][0]
    assert cats["structuredMetadata"] == {"trace_id": "t0"}
    assert cats["parsed"] == {"n": "0"}


def test_parser_errors_are_labelled_and_can_be_filtered(data) -> None:
    loki, entries, t0 = data
    end = t0 + 3 * 3600 * NS
    got = logs(loki, '{app="web", level="info"} | json', t0, end, limit=5)
    assert {s["stream"].get("__error__") for s in got} == {"JSONParserErr"}
    assert logs(loki, '{app="web", level="info"} | json | __error__=""', t0, end) == []


def test_interval_spaces_log_entries(data) -> None:
    loki, entries, t0 = data
    got = logs(loki, '{app="api", level="info"}', t0, t0 + 3600 * NS, interval="5m")
    ts = [int(v[0]) for v in got[0]["values"]]
    assert all(b - a >= 5 * MIN for a, b in itertools.pairwise(ts))
    assert len(ts) == 12


# --------------------------------------------------------------------------- metric queries

RANGE_FUNCS: dict[str, Callable[[list[float], float], float]] = {
    "sum_over_time": lambda v, r: sum(v),
    "avg_over_time": lambda v, r: sum(v) / len(v),
    "min_over_time": lambda v, r: min(v),
    "max_over_time": lambda v, r: max(v),
    "stdvar_over_time": lambda v, r: statistics.pvariance(v),
    "stddev_over_time": lambda v, r: statistics.pstdev(v),
    "first_over_time": lambda v, r: v[0],
    "last_over_time": lambda v, r: v[-1],
    "rate": lambda v, r: sum(v) / r,
}


def _phi_quantile(q: float, values: list[float]) -> float:
    # Prometheus' quantile: linear interpolation between closest ranks.
    v = sorted(values)
    rank = q * (len(v) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return v[lo] + (v[hi] - v[lo]) * (rank - lo)


def test_count_rate_bytes_over_time_instant(data) -> None:
    loki, entries, t0 = data
    at = t0 + 90 * MIN + 30 * NS
    rng = 10 * MIN
    for query, fn in {
        'count_over_time({app=~"api|web"}[10m])': lambda es: len(es),
        'rate({app=~"api|web"}[10m])': lambda es: len(es) / 600,
        'bytes_over_time({app=~"api|web"}[10m])': lambda es: sum(len(e.line) for e in es),
        'bytes_rate({app=~"api|web"}[10m])': lambda es: sum(len(e.line) for e in es) / 600,
    }.items():
        want = {}
        for app in ("api", "web"):
            for level in ("info", "error"):
                es = window(
                    entries, at, rng, lambda e, a=app, lv=level: e.labels == {"app": a, "level": lv}
                )
                want[(("app", app), ("level", level))] = fn(es)
        approx(vec(instant(loki, query, at)), want)


def test_unwrap_range_aggregations(data) -> None:
    loki, entries, t0 = data
    at = t0 + 60 * MIN
    rng = 30 * MIN
    api_info = window(entries, at, rng, lambda e: e.labels == {"app": "api", "level": "info"})
    durations = [int(logfmt(e.line)["duration"][:-2]) / 1000 for e in api_info]
    sizes = [float(int(logfmt(e.line)["size"][:-1])) for e in api_info]
    sel = '{app="api", level="info"} | logfmt'
    for fn, impl in RANGE_FUNCS.items():
        if fn in ("sum_over_time", "rate"):  # no grouping allowed: aggregate outside
            q = f"sum by (app) ({fn}({sel} | unwrap duration(duration) [30m]))"
        else:
            q = f"{fn}({sel} | unwrap duration(duration) [30m]) by (app)"
        approx(vec(instant(loki, q, at)), {(("app", "api"),): impl(durations, 1800)})
    q = f"quantile_over_time(0.9, {sel} | unwrap bytes(size) [30m]) by (app)"
    approx(vec(instant(loki, q, at)), {(("app", "api"),): _phi_quantile(0.9, sizes)})
    q = f"sum by (level) (sum_over_time({sel} | unwrap duration_seconds(duration) [30m]))"
    approx(vec(instant(loki, q, at)), {(("level", "info"),): sum(durations)})


def test_absent_over_time_and_rate_counter(data) -> None:
    loki, entries, t0 = data
    at = t0 + 60 * MIN
    assert instant(loki, 'absent_over_time({app="nope"}[5m])', at) == [({"app": "nope"}, 1.0)]
    assert instant(loki, 'absent_over_time({app="api"}[5m])', at) == []
    # rate_counter over a growing value: Prometheus' extrapolated counter rate.
    q = 'rate_counter({app="json"} | json latency_ms | unwrap latency_ms [10m])'
    (got,) = instant(loki, q, at)
    samples = [
        (e.ts, float(json.loads(e.line)["latency_ms"]))
        for e in window(entries, at, 10 * MIN, lambda e: e.labels == {"app": "json"})
    ]
    assert got[1] == pytest.approx(_prom_rate(samples, at - 10 * MIN, at), rel=1e-9)


def _prom_rate(samples: list[tuple[int, float]], start: int, end: int) -> float:
    """Prometheus' extrapolatedRate(isCounter=True, isRate=True) as Loki calls it: sample
    times in nanoseconds, but the window's start gap given as range_ms / 1000 and its
    end gap as 0 (a unit mix-up in Loki, reproduced so the answers agree)."""
    result = samples[-1][1] - samples[0][1]
    prev = samples[0][1]
    for _, v in samples[1:]:
        if v < prev:
            result += prev
        prev = v
    range_ns = end - start
    dur_start = range_ns / 10**6 / 1000
    dur_end = 0.0
    sampled = (samples[-1][0] - samples[0][0]) / 1000
    avg = sampled / (len(samples) - 1)
    if result > 0 and samples[0][1] >= 0:
        dur_start = min(dur_start, sampled * (samples[0][1] / result))
    threshold = avg * 1.1
    extrap = sampled
    extrap += dur_start if dur_start < threshold else avg / 2
    extrap += dur_end if dur_end < threshold else avg / 2
    return result * (extrap / sampled) / (range_ns / NS)


def test_offset_shifts_the_window(data) -> None:
    loki, entries, t0 = data
    at = t0 + 100 * MIN
    got = vec(instant(loki, 'count_over_time({app="api", level="error"}[10m] offset 30m)', at))
    want = len(
        window(
            entries, at - 30 * MIN, 10 * MIN, lambda e: e.labels == {"app": "api", "level": "error"}
        )
    )
    assert got == {(("app", "api"), ("level", "error")): float(want)}


def _counts(entries: list[Entry], at: int, rng: int) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for app in ("api", "web"):
        for level in ("info", "error"):
            out[(("app", app), ("level", level))] = float(
                len(
                    window(
                        entries,
                        at,
                        rng,
                        lambda e, a=app, lv=level: e.labels == {"app": a, "level": lv},
                    )
                )
            )
    return out


def test_vector_aggregations(data) -> None:
    loki, entries, t0 = data
    at = t0 + 75 * MIN
    c = _counts(entries, at, 20 * MIN)
    inner = 'count_over_time({app=~"api|web"} | logfmt | status="500" [20m])'
    c500: dict[tuple, float] = {}
    for app in ("api", "web"):
        for level in ("info", "error"):
            n = len(
                window(
                    entries,
                    at,
                    20 * MIN,
                    lambda e, a=app, lv=level: (
                        e.labels == {"app": a, "level": lv} and "status=500" in e.line
                    ),
                )
            )
            if n:
                c500[(("app", app), ("level", level), ("status", "500"))] = float(n)
    base = 'count_over_time({app=~"api|web"}[20m])'

    def by(key: str, fn: Callable[[list[float]], float]) -> dict:
        groups: dict[tuple, list[float]] = {}
        for k, v in c.items():
            groups.setdefault(((key, dict(k)[key]),), []).append(v)
        return {g: fn(vs) for g, vs in groups.items()}

    approx(vec(instant(loki, f"sum by (app) ({base})", at)), by("app", sum))
    approx(vec(instant(loki, f"avg by (level) ({base})", at)), by("level", statistics.mean))
    approx(vec(instant(loki, f"min by (app) ({base})", at)), by("app", min))
    approx(vec(instant(loki, f"max by (app) ({base})", at)), by("app", max))
    approx(vec(instant(loki, f"count by (app) ({base})", at)), by("app", len))
    approx(vec(instant(loki, f"stddev by (app) ({base})", at)), by("app", statistics.pstdev))
    approx(vec(instant(loki, f"stdvar by (app) ({base})", at)), by("app", statistics.pvariance))
    approx(vec(instant(loki, f"sum without (level) ({base})", at)), by("app", sum))
    approx(vec(instant(loki, f"sum({base})", at)), {(): sum(c.values())})
    approx(
        vec(instant(loki, f"sum by (status) ({inner})", at)),
        {(("status", "500"),): sum(c500.values())},
    )
    top = vec(instant(loki, f"topk(2, {base})", at))
    assert sorted(top.values(), reverse=True) == sorted(c.values(), reverse=True)[:2]
    bottom = vec(instant(loki, f"bottomk(1, {base})", at))
    assert list(bottom.values()) == [min(c.values())]
    ordered = [v for _, v in instant(loki, f"sort_desc({base})", at)]
    assert ordered == sorted(c.values(), reverse=True)
    ordered = [v for _, v in instant(loki, f"sort({base})", at)]
    assert ordered == sorted(c.values())


def test_binary_operations(data) -> None:
    loki, entries, t0 = data
    at = t0 + 75 * MIN
    c = _counts(entries, at, 20 * MIN)
    api = {k: v for k, v in c.items() if dict(k)["app"] == "api"}
    base = 'count_over_time({app="api"}[20m])'
    approx(vec(instant(loki, f"{base} * 2 + 1", at)), {k: v * 2 + 1 for k, v in api.items()})
    approx(vec(instant(loki, f"{base} / {base}", at)), {k: 1.0 for k in api})
    approx(vec(instant(loki, f"{base} % 3", at)), {k: math.fmod(v, 3) for k, v in api.items()})
    approx(vec(instant(loki, f"{base} ^ 2", at)), {k: v**2 for k, v in api.items()})
    thr = sorted(api.values())[0]
    approx(vec(instant(loki, f"{base} > {thr}", at)), {k: v for k, v in api.items() if v > thr})
    approx(
        vec(instant(loki, f"{base} >= bool {thr}", at)),
        {k: float(v >= thr) for k, v in api.items()},
    )
    approx(
        vec(instant(loki, f"{base} == bool {thr}", at)),
        {k: float(v == thr) for k, v in api.items()},
    )
    # on / ignoring / group_left.
    per_app = 'sum by (app) (count_over_time({app=~"api|web"}[20m]))'
    tot = {a: sum(v for k, v in c.items() if dict(k)["app"] == a) for a in ("api", "web")}
    got = vec(
        instant(
            loki, f'count_over_time({{app=~"api|web"}}[20m]) / on (app) group_left {per_app}', at
        )
    )
    approx(got, {k: v / tot[dict(k)["app"]] for k, v in c.items()})
    got = vec(
        instant(
            loki,
            f'sum by (app, level) (count_over_time({{app=~"api|web"}}[20m])) '
            f"- ignoring (level) group_left {per_app}",
            at,
        )
    )
    approx(got, {k: v - tot[dict(k)["app"]] for k, v in c.items()})
    got = vec(
        instant(
            loki, f'{per_app} * on (app) group_right count_over_time({{app=~"api|web"}}[20m])', at
        )
    )
    approx(got, {k: v * tot[dict(k)["app"]] for k, v in c.items()})
    # set operators
    errors = 'count_over_time({app=~"api|web", level="error"}[20m])'
    every = 'count_over_time({app=~"api|web"}[20m])'
    assert set(vec(instant(loki, f"{every} and {errors}", at))) == {
        k for k in c if dict(k)["level"] == "error"
    }
    assert set(vec(instant(loki, f"{every} unless {errors}", at))) == {
        k for k in c if dict(k)["level"] == "info"
    }
    assert set(vec(instant(loki, f"{errors} or {every}", at))) == set(c)
    # many-to-many is an error, with Loki's 400
    status, body = _q(loki, "/loki/api/v1/query", query=f"{every} + on (app) {every}", time=at)
    assert status == 400 and "many" in body


def test_literals_vector_label_replace(data) -> None:
    loki, entries, t0 = data
    at = t0 + 75 * MIN
    assert instant(loki, "1 + 2 * 3", at) == [({}, 7.0)]
    assert instant(loki, "vector(1) + vector(1)", at) == [({}, 2.0)]
    got = instant(
        loki,
        'label_replace(sum by (app) (count_over_time({app="api"}[5m])), "svc", "s-$1", '
        '"app", "(a.*)")',
        at,
    )
    assert [m for m, _ in got] == [{"app": "api", "svc": "s-api"}]


def test_grafana_health_check(data) -> None:
    loki, _, _ = data
    status, body = _q(
        loki,
        "/loki/api/v1/query",
        direction="backward",
        query="vector(1)+vector(1)",
        time="4000000000",
    )
    assert status == 200
    assert body["data"]["resultType"] == "vector"
    assert body["data"]["result"] == [{"metric": {}, "value": [4000000000, "2"]}]


def test_range_query_points_match_instant_queries_across_splits(data) -> None:
    """A 3h range at 5m steps is split by hour; every point equals the instant answer
    computed from the raw data."""
    loki, entries, t0 = data
    start, end = t0, t0 + 150 * MIN
    got = matrix(
        loki, 'sum by (level) (count_over_time({app=~"api|web"} | logfmt [7m]))', start, end
    )
    want: dict[tuple, dict[int, float]] = {}
    for t in range(start, end + 1, STEP_S * NS):
        for level in ("info", "error"):
            n = len(
                window(
                    entries,
                    t,
                    7 * MIN,
                    lambda e, lv=level: (
                        e.labels.get("level") == lv and e.labels["app"] in ("api", "web")
                    ),
                )
            )
            if n:
                want.setdefault((("level", level),), {})[t] = float(n)
    approx(got, want)
    # Second run: served from the results cache, same answer.
    approx(
        matrix(
            loki, 'sum by (level) (count_over_time({app=~"api|web"} | logfmt [7m]))', start, end
        ),
        want,
    )


def test_range_query_step_alignment(data) -> None:
    loki, _, t0 = data
    got = matrix(
        loki,
        'count_over_time({app="api", level="info"}[5m])',
        t0 + 7 * NS,
        t0 + 31 * MIN,
        step_s=600,
    )
    (points,) = got.values()
    assert all(t % (600 * NS) == 0 for t in points)


def test_results_cache_serves_past_splits_unless_no_cache(data) -> None:
    loki, _, t0 = data
    params = {
        "query": 'sum(count_over_time({app="web"}[5m]))',
        "start": str(t0),
        "end": str(t0 + 120 * MIN),
        "step": "300",
    }

    async def run(headers: dict[str, str]) -> dict:
        async with client() as s:
            async with s.get(
                f"{loki.url}/loki/api/v1/query_range", params=params, headers=headers
            ) as r:
                assert r.status == 200
                return await r.json()

    first = asyncio.run(run({}))
    second = asyncio.run(run({}))
    bypass = asyncio.run(run({"Cache-Control": "no-cache"}))
    assert first["data"]["result"] == second["data"]["result"] == bypass["data"]["result"]
    splits = second["data"]["stats"]["summary"]["splits"]
    assert splits == 3
    assert second["data"]["stats"]["cache"]["result"]["entriesFound"] == splits
    assert bypass["data"]["stats"]["cache"]["result"]["entriesRequested"] == 0
    assert bypass["data"]["stats"]["summary"]["totalLinesProcessed"] > 0


def test_log_query_stops_reading_once_the_limit_is_met(data) -> None:
    loki, entries, t0 = data
    status, body = _q(
        loki,
        "/loki/api/v1/query_range",
        query='{app="api", level="info"}',
        start=t0,
        end=t0 + 2 * 3600 * NS,  # the data's two hours: the newest split holds the limit
        limit=5,
        direction="backward",
    )
    assert status == 200
    total = sum(1 for e in entries if e.labels == {"app": "api", "level": "info"})
    processed = body["data"]["stats"]["summary"]["totalLinesProcessed"]
    assert 5 <= processed <= total // 2  # the newest hour only, of two
