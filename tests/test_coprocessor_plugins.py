"""The plugins of coprocessors/: traceid, tracing and patterns.

pre_query plugins run through ``try_pre_query``, which plans the splits as the server
would (1h splits: 168 for a 7-day query) and asks the plugin about each, concurrently,
under the host's default pre_query timeout. The tracing plugin asks real HTTP servers
started here that answer in Tempo's and Jaeger's formats.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

from loki_async.config import CoprocessorsConfig
from loki_async.coprocessor import (
    KEEP,
    CoprocessorError,
    IndexStats,
    LabelMatcher,
    LogStream,
    Narrow,
    Selector,
    Skip,
    SplitRequest,
    validate_config,
)
from loki_async.coprocessor_host import Registry, try_pre_query

PLUGINS = Path(__file__).resolve().parents[1] / "coprocessors"
TRACEID = PLUGINS / "traceid.py"
TRACING = PLUGINS / "tracing.py"

S = 10**9
MS = 10**6
H = 3600 * S
MIN = 60 * S

# Example ids from their specifications, with their documented times.
XRAY = "1-5759e988-bd862e3fe1be46a994272793"  # AWS X-Ray docs: 0x5759e988 s
XRAY_NS = 0x5759E988 * S  # 2016-06-09T22:11:20Z
UUID7 = "017F22E2-79B0-7CC3-98C4-DC0C0C07398F"  # RFC 9562 appendix A.6
UUID7_NS = 1645557742000 * MS  # 2022-02-22T19:22:22Z
# github.com/ulid/spec: ulid(1469918176385) is 01ARYZ6S41TSV4RRFFQ69G5FAV. (The spec's
# other example, 01ARZ3NDEKTSV4RRFFQ69G5FAV, is of a later moment: 1469922850259 ms,
# as the reference implementation's decodeTime says.)
ULID = "01ARYZ6S41TSV4RRFFQ69G5FAV"
ULID_NS = 1469918176385 * MS
ULID2 = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
ULID2_NS = 1469922850259 * MS
W3C = "5759e988bd862e3fe1be46a994272793"  # a W3C trace id made X-Ray-style
W3C_NS = XRAY_NS


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"test_plugin_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


traceid = load(TRACEID)
tracing = load(TRACING)
patterns = load(PLUGINS / "patterns.py")


def week_around(t_ns: int) -> tuple[int, int]:
    """A 7-day range on hour boundaries with ``t_ns`` in its middle."""
    start = t_ns // H * H - 84 * H
    return start, start + 168 * H


def xray_at(t_ns: int, rand: str = "bd862e3fe1be46a994272793") -> str:
    return f"1-{t_ns // S:08x}-{rand}"


def uuid7_at(t_ns: int) -> str:
    h = f"{t_ns // MS:012x}"
    return f"{h[:8]}-{h[8:]}-7cc3-98c4-dc0c0c07398f"


def ulid_at(t_ns: int) -> str:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    ms, chars = t_ns // MS, []
    for _ in range(10):
        ms, r = divmod(ms, 32)
        chars.append(alphabet[r])
    return "".join(reversed(chars)) + "TSV4RRFFQ69G5FAV"


Result = list[tuple[tuple[int, int], tuple[int, int] | None]]


def runs(result: Result) -> list[tuple[int, int]]:
    return sorted(r for _, r in result if r is not None)


def assert_covers(result: Result, lo: int, hi: int) -> None:
    """The ranges run cover ``[lo, hi)`` without a gap (nothing of the trace is lost)."""
    at = lo
    for a, b in runs(result):
        if a <= at < b:
            at = b
    assert at >= hi, f"[{lo}, {hi}) not covered by {runs(result)}"


def assert_all_kept(result: Result) -> None:
    assert result and all(r == split for split, r in result), [(s, r) for s, r in result if r != s]


# --------------------------------------------------------------------------- loading


async def test_the_plugins_load_in_the_registry_and_tracing_waits_for_its_url() -> None:
    states = {}
    for plugins in ({}, {"tracing": {"url": "http://tempo:3200/"}}):
        registry = Registry(
            CoprocessorsConfig(directory=str(PLUGINS), reload_interval_s=0, plugins=plugins)
        )
        await registry.start()
        try:
            states[bool(plugins)] = {
                p["name"]: (p["state"], p["hooks"]) for p in registry.listing()
            }
        finally:
            await registry.stop()
    assert states[False] == {
        "patterns": ("active", ["handle"]),
        "traceid": ("active", ["pre_query"]),
        "tracing": ("disabled", []),
    }
    assert states[True]["tracing"] == ("active", ["pre_query"])


# --------------------------------------------------------------------------- traceid


@pytest.mark.parametrize(
    ("token", "fmt", "ns"),
    [
        (XRAY, "xray", XRAY_NS),
        (XRAY.upper(), "xray", XRAY_NS),
        (UUID7, "uuidv7", UUID7_NS),
        (UUID7.lower(), "uuidv7", UUID7_NS),
        (UUID7.replace("-", "").lower(), "uuidv7", UUID7_NS),
        (ULID, "ulid", ULID_NS),
        (ULID.lower(), "ulid", ULID_NS),
        (ULID2, "ulid", ULID2_NS),
    ],
)
def test_decode_time_reads_the_time_of_documented_example_ids(
    token: str, fmt: str, ns: int
) -> None:
    assert traceid.decode_time(token) == (fmt, ns)


def test_example_times_are_the_documented_dates() -> None:
    assert traceid.iso(XRAY_NS) == "2016-06-09T22:11:20Z"
    assert traceid.iso(UUID7_NS) == "2022-02-22T19:22:22Z"
    assert traceid.iso(ULID_NS) == "2016-07-30T22:36:16.385Z"


def test_w3c_epoch_time_reads_the_first_8_hex_digits_as_seconds() -> None:
    assert traceid.w3c_epoch_time(W3C) == W3C_NS
    assert traceid.w3c_epoch_time(W3C.upper()) == W3C_NS


@pytest.mark.parametrize(
    "token",
    [
        W3C,  # no UUIDv7 version/variant: only the (separate) W3C reading applies
        "f47ac10b-58cc-4372-a567-0e02b2c3d479",  # UUIDv4
        "1-5759e988-bd862e3fe1be46a99427279",  # X-Ray one digit short
        "2-5759e988-bd862e3fe1be46a994272793",  # unknown X-Ray version
        "01ARZ3NDEKTSV4RRFFQ69G5FAI",  # I is not Crockford base32
        "81ARZ3NDEKTSV4RRFFQ69G5FAV",  # more than 48 bits of time
        "hello",
        "",
    ],
)
def test_decode_time_rejects_tokens_without_a_stated_time(token: str) -> None:
    assert traceid.decode_time(token) is None


async def traceid_plan(
    query: str, t_ns: int, *, step_s: float = 0, config: dict[str, Any] | None = None
) -> Result:
    start, end = week_around(t_ns)
    return await try_pre_query(TRACEID, query, start, end, step_s=step_s, config=config)


@pytest.mark.parametrize(
    ("query", "t_ns"),
    [
        (f'{{app="api"}} |= "{XRAY}"', XRAY_NS),
        (f'{{app="api"}} |= "Root={XRAY};Parent=53995c3f42cd8ad8;Sampled=1"', XRAY_NS),
        (f'{{trace_id="{XRAY}"}}', XRAY_NS),
        (f'{{app="api"}} | trace_id="{XRAY}"', XRAY_NS),
        (f'{{app="api"}} | json | traceID="{W3C}"', W3C_NS),
        (f'{{app="api"}} | logfmt | traceId="{ULID}"', ULID_NS),
        (f'{{app="api"}} | trace_id="{UUID7}"', UUID7_NS),  # structured metadata
        (f'{{app="api"}} |= "traceparent: 00-{W3C}-00f067aa0ba902b7-01"', W3C_NS),
    ],
)
async def test_traceid_runs_only_the_splits_of_the_trace_window(query: str, t_ns: int) -> None:
    result = await traceid_plan(query, t_ns)
    assert len(result) == 168
    assert 1 <= len(runs(result)) <= 3
    assert_covers(result, t_ns - 5 * MIN, t_ns + H + 5 * MIN)
    for a, b in runs(result):
        assert a < t_ns + H + 5 * MIN and b > t_ns - 5 * MIN


async def test_traceid_metric_query_runs_only_the_steps_reading_the_trace() -> None:
    query = f'sum(count_over_time({{app="api"}} |= "{ULID}" [5m]))'
    result = await traceid_plan(query, ULID_NS, step_s=60)
    assert len(result) >= 168
    ran = runs(result)
    assert 1 <= len(ran) <= 3
    # A step time t reads (t - 5m, t]: every step time whose window meets the trace
    # window [ULID - 5m, ULID + 1h5m) is run (the ranges run are of step times).
    lo, hi = ULID_NS - 5 * MIN, ULID_NS + H + 5 * MIN
    needed = range(lo // MIN * MIN + MIN, hi + 5 * MIN, MIN)
    assert all(any(a <= t <= b for a, b in ran) for t in needed)


@pytest.mark.parametrize(
    "literal",
    [
        "0af7651916cd43dd8448eb211c80319c",  # random W3C id: its "time" is in 1975
        "f47ac10b58cc4372a5670e02b2c3d479",  # UUIDv4 without dashes: "time" in 2100
        "f47ac10b-58cc-4372-a567-0e02b2c3d479",  # UUIDv4
        "00f067aa0ba902b7",  # a span id
        "01234567890123456789012345",  # a 26-digit number, not a ULID
        "connection refused",
        f"x{XRAY}",  # glued to a letter: part of another token
        f"{W3C}0",  # 33 hex digits: not a trace id
    ],
)
async def test_traceid_keeps_every_split_for_ids_without_time(literal: str) -> None:
    assert_all_kept(await traceid_plan(f'{{app="api"}} |= "{literal}"', XRAY_NS))


async def test_traceid_ignores_ids_under_or() -> None:
    other = xray_at(XRAY_NS + 2 * 86400 * S)
    assert_all_kept(await traceid_plan(f'{{app="api"}} |= "{XRAY}" or "{other}"', XRAY_NS))
    assert_all_kept(
        await traceid_plan(f'{{app="api"}} | trace_id="{XRAY}" or trace_id="{other}"', XRAY_NS)
    )


async def test_traceid_keeps_everything_when_one_selector_has_no_id() -> None:
    query = (
        f'sum(count_over_time({{app="api"}} |= "{XRAY}" [5m]))'
        ' / sum(count_over_time({app="api"}[5m]))'
    )
    assert_all_kept(await traceid_plan(query, XRAY_NS, step_s=60))


async def test_traceid_runs_the_union_of_the_windows_of_several_selectors() -> None:
    later = XRAY_NS + 2 * 86400 * S
    query = (
        f'count_over_time({{app="api"}} |= "{XRAY}" [5m])'
        f' or count_over_time({{app="web"}} |= "{xray_at(later)}" [5m])'
    )
    ran = runs(await traceid_plan(query, XRAY_NS, step_s=60))
    assert 2 <= len(ran) <= 6
    assert any(a <= XRAY_NS + 30 * MIN <= b for a, b in ran)
    assert any(a <= later + 30 * MIN <= b for a, b in ran)


async def test_traceid_skips_everything_for_two_ids_that_never_meet() -> None:
    other = xray_at(XRAY_NS + 86400 * S)
    result = await traceid_plan(f'{{app="api"}} |= "{XRAY}" |= "{other}"', XRAY_NS)
    assert runs(result) == []


async def test_traceid_intersects_two_ids_of_one_selector() -> None:
    other = xray_at(XRAY_NS + 30 * MIN)
    result = await traceid_plan(f'{{app="api"}} |= "{XRAY}" | span="{other}"', XRAY_NS)
    assert_covers(result, XRAY_NS + 25 * MIN, XRAY_NS + H + 5 * MIN)
    assert runs(result)[0][0] == XRAY_NS + 25 * MIN


async def test_traceid_skips_every_split_for_an_id_outside_the_query() -> None:
    start, end = week_around(1_700_000_000 * S)
    result = await try_pre_query(TRACEID, f'{{app="api"}} |= "{XRAY}"', start, end)
    assert len(result) == 168 and runs(result) == []


async def test_traceid_skip_reason_names_the_id_and_its_time() -> None:
    plugin = traceid.PLUGIN.factory(validate_config(traceid.PLUGIN.config, {})[0])
    start, end = week_around(XRAY_NS)
    split = SplitRequest(
        tenant="t",
        query="q",
        kind="log",
        start_ns=start,
        end_ns=start + H,
        query_start_ns=start,
        query_end_ns=end,
        step_ns=0,
        query_id="q1",
        selectors=(Selector((LabelMatcher("trace_id", "=", XRAY),)),),
    )
    decision = await plugin.pre_query(split)
    assert decision == Skip(f"trace {XRAY} at 2016-06-09T22:11:20Z")


@pytest.mark.parametrize(
    ("token", "t_ns"),
    [
        (uuid7_at(XRAY_NS + 5 * 86400 * S), XRAY_NS),  # after the query's end + 1 day
        (ulid_at(946_684_800 * S - S), 1_700_000_000 * S),  # before 2000
    ],
)
async def test_traceid_keeps_every_split_for_implausible_uuid7_and_ulid_times(
    token: str, t_ns: int
) -> None:
    assert_all_kept(await traceid_plan(f'{{app="api"}} |= "{token}"', t_ns))


async def test_traceid_config_changes_the_window() -> None:
    query = f'{{app="api"}} |= "{XRAY}"'
    tight = await traceid_plan(
        query, XRAY_NS, config={"max_trace_duration": "10m", "clock_skew": "0s"}
    )
    assert runs(tight) == [(XRAY_NS, XRAY_NS + 10 * MIN)]
    wide = await traceid_plan(query, XRAY_NS, config={"max_trace_duration": "5h"})
    assert 5 <= len(runs(wide)) <= 7
    assert_covers(wide, XRAY_NS - 5 * MIN, XRAY_NS + 5 * H + 5 * MIN)


async def test_traceid_w3c_epoch_ids_false_keeps_every_split_for_w3c_ids() -> None:
    query = f'{{app="api"}} |= "{W3C}"'
    assert len(runs(await traceid_plan(query, W3C_NS))) <= 3
    assert_all_kept(await traceid_plan(query, W3C_NS, config={"w3c_epoch_ids": False}))


async def test_traceid_w3c_ids_are_believed_only_near_the_query() -> None:
    # The same id, for a query that starts after the trace ended: taken for a random id.
    start, end = week_around(W3C_NS + 86 * H)
    assert_all_kept(await try_pre_query(TRACEID, f'{{app="api"}} |= "{W3C}"', start, end))


# --------------------------------------------------------------------------- tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
JAEGER_ID = "00f067aa0ba902b7"
SPAN_START = 1_700_000_000 * S + 123_456_789
SPAN_END = SPAN_START + 20 * MIN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def backend(handler: Handler) -> AsyncIterator[tuple[str, list[web.Request]]]:
    """A tracing backend on a free port: its URL (with a trailing slash, which the
    plugin strips) and the requests it got."""
    seen: list[web.Request] = []

    async def counted(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    app = web.Application()
    app.router.add_get("/{tail:.*}", counted)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/", seen
    finally:
        await runner.cleanup()


def answer(doc: Any) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(doc)

    return handler


def otlp_spans(as_str: bool) -> list[dict[str, Any]]:
    conv = str if as_str else int
    return [
        {"traceId": TRACE, "spanId": "a", "startTimeUnixNano": conv(SPAN_START + MIN),
         "endTimeUnixNano": conv(SPAN_END)},
        {"traceId": TRACE, "spanId": "b", "startTimeUnixNano": conv(SPAN_START),
         "endTimeUnixNano": conv(SPAN_START + MIN)},
    ]  # fmt: skip


RESOURCE = {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]}
TEMPO_ANSWERS = {
    "batches/scopeSpans": {
        "batches": [{"resource": RESOURCE, "scopeSpans": [{"spans": otlp_spans(True)}]}]
    },
    "batches/instrumentationLibrarySpans": {
        "batches": [
            {"resource": RESOURCE, "instrumentationLibrarySpans": [{"spans": otlp_spans(True)}]}
        ]
    },
    "resourceSpans": {
        "resourceSpans": [{"resource": RESOURCE, "scopeSpans": [{"spans": otlp_spans(False)}]}]
    },
    "v2 trace": {
        "trace": {
            "resourceSpans": [{"resource": RESOURCE, "scopeSpans": [{"spans": otlp_spans(True)}]}]
        }
    },
}
JAEGER_ANSWER = {
    "data": [
        {
            "traceID": JAEGER_ID,
            "spans": [
                {"traceID": JAEGER_ID, "spanID": "1", "startTime": SPAN_START // 1000 + 60_000_000,
                 "duration": (SPAN_END - SPAN_START) // 1000 - 60_000_000},
                {"traceID": JAEGER_ID, "spanID": "2", "startTime": SPAN_START // 1000,
                 "duration": 1000},
            ],
        }
    ],
    "total": 0, "limit": 0, "offset": 0, "errors": None,
}  # fmt: skip


async def tracing_plan(
    url: str, query: str, *, config: dict[str, Any] | None = None, step_s: float = 0
) -> Result:
    start, end = week_around(SPAN_START)
    return await try_pre_query(
        TRACING, query, start, end, step_s=step_s, config={"url": url, **(config or {})}
    )


def assert_trace_window_only(result: Result) -> None:
    assert len(result) == 168
    assert 1 <= len(runs(result)) <= 3
    assert_covers(result, SPAN_START - 5 * MIN, SPAN_END + 5 * MIN)
    for a, b in runs(result):
        assert a < SPAN_END + 5 * MIN + 1 and b > SPAN_START - 5 * MIN


@pytest.mark.parametrize("shape", sorted(TEMPO_ANSWERS))
async def test_tracing_tempo_runs_only_the_trace_window_with_one_request(shape: str) -> None:
    async with backend(answer(TEMPO_ANSWERS[shape])) as (url, seen):
        result = await tracing_plan(url, f'{{app="api"}} |= "trace_id={TRACE}"')
    assert_trace_window_only(result)
    assert len(seen) == 1
    assert seen[0].path == f"/api/traces/{TRACE}"
    assert seen[0].headers["Accept"] == "application/json"


async def test_tracing_jaeger_runs_only_the_trace_window_with_one_request() -> None:
    async with backend(answer(JAEGER_ANSWER)) as (url, seen):
        result = await tracing_plan(
            url, f'{{app="api"}} | json | traceID="{JAEGER_ID}"', config={"backend": "jaeger"}
        )
    assert_trace_window_only(result)
    assert [r.path for r in seen] == [f"/api/traces/{JAEGER_ID}"]


async def test_tracing_takes_the_trace_id_of_a_traceparent_not_the_span_id() -> None:
    async with backend(answer(TEMPO_ANSWERS["resourceSpans"])) as (url, seen):
        result = await tracing_plan(url, f'{{app="api"}} |= "00-{TRACE}-{JAEGER_ID}-01"')
    assert_trace_window_only(result)
    assert [r.path for r in seen] == [f"/api/traces/{TRACE}"]


async def test_tracing_leaves_ids_with_their_own_time_to_traceid() -> None:
    async with backend(answer(TEMPO_ANSWERS["resourceSpans"])) as (url, seen):
        result = await tracing_plan(url, f'{{app="api"}} |= "{XRAY}" |= "{UUID7}" |= "{ULID}"')
    assert_all_kept(result)
    assert seen == []


async def test_tracing_ignores_an_unknown_id_next_to_a_known_one() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if TRACE in request.path:
            return web.json_response(TEMPO_ANSWERS["resourceSpans"])
        return web.Response(status=404, text="trace not found")

    async with backend(handler) as (url, seen):
        result = await tracing_plan(url, f'{{app="api"}} |= "{TRACE}" | span_id="{JAEGER_ID}"')
    assert_trace_window_only(result)
    assert len(seen) == 2


async def test_tracing_backend_down_keeps_every_split() -> None:
    result = await tracing_plan(f"http://127.0.0.1:{free_port()}", f'{{app="api"}} |= "{TRACE}"')
    assert_all_kept(result)


async def test_tracing_unknown_trace_keeps_every_split_after_one_request() -> None:
    async def not_found(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="trace not found")

    async with backend(not_found) as (url, seen):
        assert_all_kept(await tracing_plan(url, f'{{app="api"}} |= "{TRACE}"'))
    assert len(seen) == 1


async def test_tracing_bad_json_keeps_every_split() -> None:
    async def garbage(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>oops</html>", content_type="application/json")

    async with backend(garbage) as (url, seen):
        assert_all_kept(await tracing_plan(url, f'{{app="api"}} |= "{TRACE}"'))
    assert len(seen) == 1


async def test_tracing_trace_without_spans_keeps_every_split() -> None:
    async with backend(answer({"batches": []})) as (url, _):
        assert_all_kept(await tracing_plan(url, f'{{app="api"}} |= "{TRACE}"'))


@pytest.mark.parametrize(
    "timeout",
    [
        "50ms",  # the lookup gives up first
        "2s",  # the host's pre_query timeout (0.2s) comes first
    ],
)
async def test_tracing_slow_backend_keeps_every_split(timeout: str) -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 2)
        return web.json_response(TEMPO_ANSWERS["resourceSpans"])

    async with backend(slow) as (url, seen):
        try:
            result = await tracing_plan(
                url, f'{{app="api"}} |= "{TRACE}"', config={"timeout": timeout}
            )
        finally:
            release.set()
    assert_all_kept(result)
    assert len(seen) == 1


async def test_tracing_query_without_trace_id_asks_nothing() -> None:
    async with backend(answer(TEMPO_ANSWERS["resourceSpans"])) as (url, seen):
        assert_all_kept(await tracing_plan(url, '{app="api"} |= "connection refused"'))
        query = f'count_over_time({{app="api"}} |= "{TRACE}" [5m]) / count_over_time({{a="b"}}[5m])'
        assert_all_kept(await tracing_plan(url, query, step_s=60))
    assert seen == []


def tracing_instance(url: str, **config: Any) -> Any:
    values, errors, missing = validate_config(tracing.PLUGIN.config, {"url": url, **config})
    assert not errors and not missing
    return tracing.PLUGIN.factory(values)


def split_for(query_id: str, trace_id: str, start: int, end: int) -> SplitRequest:
    return SplitRequest(
        tenant="t",
        query="q",
        kind="log",
        start_ns=start,
        end_ns=end,
        query_start_ns=start,
        query_end_ns=end,
        step_ns=0,
        query_id=query_id,
        selectors=(Selector((LabelMatcher("trace_id", "=", trace_id),)),),
    )


async def test_tracing_caches_found_traces_across_queries() -> None:
    async with backend(answer(TEMPO_ANSWERS["batches/scopeSpans"])) as (url, seen):
        plugin = tracing_instance(url)
        hour = SPAN_START // H * H
        first = await plugin.pre_query(split_for("q1", TRACE, hour, hour + H))
        again = await plugin.pre_query(split_for("q2", TRACE.upper(), hour, hour + H))
        far = await plugin.pre_query(split_for("q2", TRACE, hour + 5 * H, hour + 6 * H))
        await plugin.close()
    assert first == again == Narrow(SPAN_START - 5 * MIN, SPAN_END + 5 * MIN + 1)
    assert isinstance(far, Skip) and TRACE in far.reason
    assert len(seen) == 1 and plugin.lookups == 1


async def test_tracing_lookup_outlives_a_caller_that_gave_up() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response(TEMPO_ANSWERS["resourceSpans"])

    async with backend(slow) as (url, seen):
        plugin = tracing_instance(url)
        split = split_for("q1", TRACE, SPAN_START - H, SPAN_START + H)
        with pytest.raises(TimeoutError):  # as the host cancels a pre_query out of time
            await asyncio.wait_for(plugin.pre_query(split), 0.05)
        waiting = asyncio.ensure_future(plugin.pre_query(split))
        await asyncio.sleep(0.02)
        release.set()
        decision = await asyncio.wait_for(waiting, 2)
        await plugin.close()
    assert decision == Narrow(SPAN_START - 5 * MIN, SPAN_END + 5 * MIN + 1)
    assert len(seen) == 1 and plugin.lookups == 1


async def test_tracing_forgets_failures_after_error_ttl() -> None:
    async def not_found(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404)

    async with backend(not_found) as (url, seen):
        plugin = tracing_instance(url, error_ttl="50ms")
        split = split_for("q1", TRACE, SPAN_START, SPAN_START + H)
        assert await plugin.pre_query(split) == KEEP
        assert await plugin.pre_query(split) == KEEP
        assert len(seen) == 1
        await asyncio.sleep(0.08)
        assert await plugin.pre_query(split) == KEEP
        await plugin.close()
    assert len(seen) == 2


async def test_tracing_rejects_an_unknown_backend_and_needs_a_url() -> None:
    with pytest.raises(ValueError, match="tempo or jaeger"):
        tracing_instance("http://tempo:3200", backend="zipkin")
    with pytest.raises(ValueError, match="url"):
        await try_pre_query(TRACING, '{app="api"}', 0, H)


# --------------------------------------------------------------------------- patterns


class FakeHost:
    """An in-memory Host: answers every select_logs with the same streams."""

    tenant = "fake"

    def __init__(self, streams: list[LogStream]) -> None:
        self.streams = streams
        self.calls: list[tuple[str, int, int, int, str]] = []

    async def select_logs(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        *,
        limit: int = 1000,
        direction: str = "backward",
    ) -> list[LogStream]:
        self.calls.append((query, start_ns, end_ns, limit, direction))
        return self.streams

    async def index_stats(self, selector: str, start_ns: int, end_ns: int) -> IndexStats:
        return IndexStats(0, 0, 0, 0)


def patterns_instance(**config: Any) -> Any:
    values, errors, _ = validate_config(patterns.PLUGIN.config, config)
    assert not errors
    return patterns.PLUGIN.factory(values)


async def test_patterns_groups_counts_and_ranks_lines() -> None:
    api = [(100 + i, f"GET /users/{i} took {i * 3}.5ms") for i in range(5)]
    login = [
        (200 + i, f"user 017f22e2-79b0-7cc3-98c4-dc0c0c0739{i:02x} logged in from 10.0.0.{i}")
        for i in range(3)
    ]
    other = [(50, "cache miss key=sessions")]
    host = FakeHost([LogStream({"app": "api"}, api + other), LogStream({"app": "auth"}, login)])
    body = json.dumps({"query": '{app=~".+"}', "start": 1, "end": 1000, "top": 2}).encode()
    out = json.loads(await patterns_instance().handle(body, host))
    assert out["lines"] == 9
    assert out["patterns"] == [
        {"pattern": "GET /users/<_> took <_>", "count": 5, "example": "GET /users/4 took 12.5ms"},
        {
            "pattern": "user <_> logged in from <_>",
            "count": 3,
            "example": "user 017f22e2-79b0-7cc3-98c4-dc0c0c073902 logged in from 10.0.0.2",
        },
    ]
    assert host.calls == [('{app=~".+"}', 1, 1000, 5000, "backward")]


async def test_patterns_caps_the_lines_read_at_max_lines() -> None:
    host = FakeHost([LogStream({}, [(i, f"line {i}") for i in range(10)])])
    body = json.dumps({"query": '{a="b"}', "start": 0, "end": 10, "limit": 5000}).encode()
    out = json.loads(await patterns_instance(max_lines=4).handle(body, host))
    assert host.calls[0][3] == 4
    assert out == {
        "patterns": [{"pattern": "line <_>", "count": 4, "example": "line 9"}],
        "lines": 4,
    }


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"not json", "JSON"),
        (b"[1, 2]", "object"),
        (b'{"start": 1, "end": 2}', "query"),
        (b'{"query": "{a=\\"b\\"}", "start": "1", "end": 2}', "start"),
        (b'{"query": "{a=\\"b\\"}", "start": 1}', "end"),
        (b'{"query": "{a=\\"b\\"}", "start": 5, "end": 5}', "before"),
        (b'{"query": "{a=\\"b\\"}", "start": 1, "end": 2, "top": 0}', "top"),
        (b'{"query": "{a=\\"b\\"}", "start": 1, "end": 2, "limit": true}', "limit"),
        (b'{"query": "{a=\\"b\\"}", "start": 1, "end": 2, "limit": -1}', "limit"),
    ],
)
async def test_patterns_rejects_bad_requests_as_invalid_request(
    body: bytes, complaint: str
) -> None:
    host = FakeHost([])
    with pytest.raises(CoprocessorError) as err:
        await patterns_instance().handle(body, host)
    assert err.value.kind == "invalid_request"
    assert complaint in err.value.message
    assert host.calls == []


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("GET /users/42 took 12ms", "GET /users/<_> took <_>"),
        ("2024-01-02T03:04:05.123Z conn from 10.0.0.1:5432 after 1h2m3.5s",
         "<_> conn from <_> after <_>"),
        ("http2 v1 size=3GiB hash=a94a8fe5ccb19ba61c4c0873d391e987982fbbd3 ptr=0x7ffe",
         "http2 v1 size=<_> hash=<_> ptr=<_>"),
        ("deadbeef accessed", "deadbeef accessed"),
    ],
)  # fmt: skip
def test_pattern_of_replaces_the_variable_parts(line: str, pattern: str) -> None:
    assert patterns.pattern_of(line) == pattern


async def test_traceid_reads_uuid_and_ulid_labels_only_where_they_name_traces() -> None:
    uid = uuid7_at(XRAY_NS)
    kept = await traceid_plan(f'{{app="api", session_id="{uid}"}}', XRAY_NS)
    assert_all_kept(kept)  # a session outlives a trace: not believed
    skipped = await traceid_plan(f'{{app="api", traceId="{uid}"}}', XRAY_NS)
    assert len(runs(skipped)) <= 3
    listed = await traceid_plan(
        f'{{app="api"}} | session_id="{uid}"', XRAY_NS, config={"labels": ["session_id"]}
    )
    assert len(runs(listed)) <= 3
