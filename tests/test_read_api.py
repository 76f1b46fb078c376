"""Loki's read API on the real program: every endpoint's answer shape and its 400s.

The query engine's values are checked in test_query_engine.py; here the endpoints
themselves: parameters, defaults, JSON shapes Grafana and logcli read, limits with
Loki's messages, the WebSocket tail.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from loki_async.logproto import PushStream
from tests.conftest import Loki, base_config
from tests.lokiclient import client, get, push

NS = 10**9
MIN = 60 * NS

STREAMS = {
    (("app", "api"), ("env", "prod"), ("pod", "p-1")): 30,
    (("app", "api"), ("env", "dev"), ("pod", "p-2")): 20,
    (("app", "web"), ("env", "prod"), ("pod", "p-3")): 10,
}


def _streams(t0: int) -> list[PushStream]:
    out = []
    for labels, n in STREAMS.items():
        app = dict(labels)["app"]
        out.append(
            PushStream(
                list(labels),
                [t0 + i * MIN for i in range(n)],
                [
                    f"{app} line {i} level={'error' if i % 4 == 0 else 'info'}".encode()
                    for i in range(n)
                ],
                None,
            )
        )
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Loki, int]]:
    workdir: Path = tmp_path_factory.mktemp("readapi")
    cfg = base_config(
        workdir,
        limits_config={
            "max_query_series": 2,
            "max_streams_matchers_per_query": 3,
            "max_query_length": "12h",
            "max_entries_limit_per_query": 1000,
        },
    )
    loki = Loki(workdir, cfg).start()
    t0 = (time.time_ns() - 2 * 3600 * NS) // MIN * MIN

    async def load() -> None:
        async with client() as s:
            status, body = await push(s, loki.url, _streams(t0))
            assert status == 204, body

    asyncio.run(load())
    yield loki, t0
    loki.stop()


def call(
    loki: Loki, path: str, method: str = "GET", headers: dict | None = None, **params: Any
) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with client() as s:
            if method == "GET":
                return await get(s, loki.url, path, **params)
            async with s.post(f"{loki.url}{path}", data=params, headers=headers or {}) as r:
                if r.content_type == "application/json":
                    return r.status, await r.json()
                return r.status, await r.text()

    return asyncio.run(go())


def span(t0: int) -> dict[str, str]:
    return {"start": str(t0 - MIN), "end": str(t0 + 40 * MIN)}


# --------------------------------------------------------------------------- query, query_range


@pytest.mark.parametrize(
    "params, message",
    [
        ({"query": '{app="api"'}, "parse error at line 1, col 11"),
        ({"query": ""}, "query parameter is required"),
        ({"query": '{app="api"}', "limit": "-1"}, "limit must be a positive value"),
        ({"query": '{app="api"}', "limit": "x"}, "invalid limit"),
        ({"query": '{app="api"}', "direction": "up"}, "invalid direction 'up'"),
        ({"query": '{app="api"}', "start": "yesterday"}, 'cannot parse "yesterday"'),
        (
            {"query": '{app="api"}', "limit": "1001"},
            "max entries limit per query exceeded, "
            "limit > max_entries_limit_per_query (1001 > 1000)",
        ),
        ({"query": 'rate({app="api"}[1m])', "step": "0"}, "zero or negative query resolution"),
        ({"query": 'rate({app="api"}[1m])', "step": "1ms"}, "exceeded maximum resolution"),
        ({"query": 'rate({app="api"}[1m])', "step": "1x"}, 'cannot parse "1x" to a valid duration'),
        (
            {"query": '{app="api"}', "since": "13h", "start": ""},
            "the query time range exceeds the limit",
        ),
        ({"query": '{a="1", b="2", c="3", d="4"}'}, "max streams matchers per query exceeded"),
        ({"query": '{app="api"} | json | unwrap x'}, "parse error"),
        ({"query": '{app="api"} |~ "(("'}, "parse error"),
        (
            {"query": 'count_over_time({app=~".+"}[1m])', "step": "60"},
            "maximum number of series (2) reached for a single query",
        ),
    ],
)
def test_query_range_bad_input_is_400(server, params, message) -> None:
    loki, t0 = server
    status, body = call(loki, "/loki/api/v1/query_range", **{**span(t0), **params})
    assert status == 400, body
    assert message in body


def test_query_range_log_result_shape_and_stats(server) -> None:
    loki, t0 = server
    status, body = call(
        loki,
        "/loki/api/v1/query_range",
        query='{app="web"} |= "level=error"',
        limit="2",
        **span(t0),
    )
    assert status == 200 and body["status"] == "success"
    data = body["data"]
    assert data["resultType"] == "streams"
    (stream,) = data["result"]
    assert stream["stream"] == {"app": "web", "env": "prod", "pod": "p-3"}
    assert [v[1] for v in stream["values"]] == ["web line 8 level=error", "web line 4 level=error"]
    assert all(isinstance(v[0], str) and int(v[0]) > 0 for v in stream["values"])
    summary = data["stats"]["summary"]
    assert summary["totalEntriesReturned"] == 2
    # Lines read depend on where the hourly split boundary falls (a backward query stops
    # once its limit is met), so only the order of the counts is fixed.
    assert 2 <= summary["totalPostFilterLines"] <= summary["totalLinesProcessed"] <= 10
    assert {"querier", "ingester", "cache", "index"} <= set(data["stats"])


def test_query_range_accepts_grafana_and_rfc3339_times_and_step_forms(server) -> None:
    loki, t0 = server
    rfc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime((t0 - MIN) // NS))
    for step in ("60", "60s", "1m", "60000ms", "60.0"):
        status, body = call(
            loki,
            "/loki/api/v1/query_range",
            query='count_over_time({app="web"}[1m])',
            start=rfc,
            end=str(t0 + 10 * MIN),
            step=step,
        )
        assert status == 200, body
        (series,) = body["data"]["result"]
        ts = [p[0] for p in series["values"]]
        assert all(b - a == 60 for a, b in itertools.pairwise(ts))


def test_instant_query_shapes(server) -> None:
    loki, t0 = server
    at = t0 + 15 * MIN
    status, body = call(
        loki, "/loki/api/v1/query", query='sum(count_over_time({app="api"}[10m]))', time=str(at)
    )
    assert status == 200
    assert body["data"]["result"] == [{"metric": {}, "value": [at / NS, "20"]}]
    status, body = call(loki, "/loki/api/v1/query", query="2 * 3", time=str(at))
    assert body["data"]["resultType"] == "scalar"
    assert body["data"]["result"] == [at // NS, "6"]
    status, body = call(loki, "/loki/api/v1/query", query='{app="api"}')
    assert status == 400
    assert body == (
        "log queries are not supported as an instant query type, please change "
        "your query to a range query type\n"
    )


# --------------------------------------------------------------------------- metadata endpoints


def test_labels_values_and_series(server) -> None:
    loki, t0 = server
    status, body = call(loki, "/loki/api/v1/labels", **span(t0))
    assert body == {"status": "success", "data": ["app", "env", "pod"]}
    # query= narrows the names to those of the matching streams, as in Loki 3.
    status, body = call(loki, "/loki/api/v1/labels", query='{app="web"}', **span(t0))
    assert body == {"status": "success", "data": ["app", "env", "pod"]}
    status, body = call(loki, "/loki/api/v1/labels", query='{app="none"}', **span(t0))
    assert body == {"status": "success"}
    status, body = call(loki, "/loki/api/v1/labels", query='{app="web"', **span(t0))
    assert status == 400 and "parse error" in body
    status, body = call(loki, "/loki/api/v1/label/env/values", **span(t0))
    assert body["data"] == ["dev", "prod"]
    status, body = call(loki, "/loki/api/v1/label/pod/values", query='{app="api"}', **span(t0))
    assert body["data"] == ["p-1", "p-2"]
    status, body = call(loki, "/loki/api/v1/label/nope/values", **span(t0))
    assert body == {"status": "success"}
    status, body = call(loki, "/loki/api/v1/series", **{"match[]": '{env="prod"}'}, **span(t0))
    assert sorted(s["pod"] for s in body["data"]) == ["p-1", "p-3"]
    status, body = call(
        loki,
        "/loki/api/v1/series",
        method="POST",
        **{"match[]": '{app="api", env="dev"}'},
        **span(t0),
    )
    assert body["data"] == [{"app": "api", "env": "dev", "pod": "p-2"}]
    status, body = call(loki, "/loki/api/v1/series", **span(t0))
    assert len(body["data"]) == 3
    status, body = call(loki, "/loki/api/v1/series", **{"match[]": "{env=}"}, **span(t0))
    assert status == 400 and "parse error" in body


def test_index_stats_volume_and_detected_labels(server) -> None:
    loki, t0 = server
    status, body = call(loki, "/loki/api/v1/index/stats", query='{app="api"}', **span(t0))
    raw = sum(len(f"api line {i} level={'error' if i % 4 == 0 else 'info'}") for i in range(30))
    raw += sum(len(f"api line {i} level={'error' if i % 4 == 0 else 'info'}") for i in range(20))
    assert status == 200
    assert body["streams"] == 2 and body["entries"] == 50 and body["bytes"] == raw
    assert body["chunks"] >= 2
    status, body = call(loki, "/loki/api/v1/index/volume", query='{env=~".+"}', **span(t0))
    assert body["data"]["resultType"] == "vector"
    got = {r["metric"]["env"]: int(r["value"][1]) for r in body["data"]["result"]}
    assert got["prod"] > got["dev"] > 0
    status, body = call(
        loki, "/loki/api/v1/index/volume", query='{app=~".+"}', aggregateBy="labels", **span(t0)
    )
    assert {tuple(r["metric"]) for r in body["data"]["result"]} == {("app",)}
    status, body = call(
        loki, "/loki/api/v1/index/volume", query='{app=~".+"}', aggregateBy="nope", **span(t0)
    )
    assert status == 400 and "invalid aggregation option" in body
    status, body = call(
        loki, "/loki/api/v1/index/volume_range", query='{app="web"}', step="600", **span(t0)
    )
    (series,) = body["data"]["result"]
    assert body["data"]["resultType"] == "matrix" and series["metric"] == {"app": "web"}
    assert sum(int(v) for _, v in series["values"]) > 0
    status, body = call(loki, "/loki/api/v1/detected_labels", query='{app=~".+"}', **span(t0))
    assert body == {
        "detectedLabels": [
            {"label": "app", "cardinality": 2},
            {"label": "env", "cardinality": 2},
            {"label": "pod", "cardinality": 3},
        ]
    }


def test_format_query(server) -> None:
    loki, _ = server
    status, body = call(loki, "/loki/api/v1/format_query", query='{ app = "api" }|="x"')
    assert body == {"status": "success", "data": '{app="api"} |= "x"'}
    status, body = call(loki, "/loki/api/v1/format_query", method="POST", query="sum(")
    assert status == 400 and body["status"] == "invalid-query"
    assert body["error"].startswith("parse error at line 1")


# --------------------------------------------------------------------------- tail


def test_tail_sends_history_then_live_entries(server) -> None:
    loki, t0 = server

    async def go() -> list[dict]:
        frames: list[dict] = []
        async with client() as s:
            url = f"{loki.url}/loki/api/v1/tail"
            params = {"query": '{app="tail"}', "start": str(time.time_ns() - MIN)}
            status, _ = await push(
                s, loki.url, [PushStream([("app", "tail")], [time.time_ns()], [b"before"], None)]
            )
            assert status == 204
            async with s.ws_connect(url, params=params) as ws:
                frames.append(await ws.receive_json(timeout=10))
                await push(
                    s,
                    loki.url,
                    [PushStream([("app", "tail")], [time.time_ns()], [b"live 1"], None)],
                )
                frames.append(await ws.receive_json(timeout=10))
        return frames

    frames = asyncio.run(go())
    lines = [[v[1] for st in f["streams"] for v in st["values"]] for f in frames]
    assert lines == [["before"], ["live 1"]]
    assert frames[0]["streams"][0]["stream"] == {"app": "tail"}


def test_tail_rejects_bad_input(server) -> None:
    loki, _ = server

    async def go(params: dict[str, str]) -> tuple[int, str]:
        async with client() as s:
            try:
                async with s.ws_connect(f"{loki.url}/loki/api/v1/tail", params=params):
                    return 101, ""
            except aiohttp.WSServerHandshakeError as e:
                return e.status, e.message

    assert asyncio.run(go({"query": '{app="x"}', "delay_for": "6"}))[0] == 400
    assert asyncio.run(go({"query": "sum("}))[0] == 400
    assert asyncio.run(go({"query": 'rate({app="x"}[1m])'}))[0] == 400


def test_query_timeout_is_504(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, limits_config={"query_timeout": "1ns"})
    loki = Loki(tmp_path, cfg).start()
    try:
        status, body = call(loki, "/loki/api/v1/query_range", query='{app="api"}', since="24h")
        assert status == 504 and body.startswith("request timed out")
    finally:
        loki.stop()


@pytest.mark.parametrize(
    "path, params, message",
    [
        ("/loki/api/v1/query", {"query": "sum("}, "parse error"),
        ("/loki/api/v1/query", {"query": "1", "time": "noon"}, 'cannot parse "noon"'),
        ("/loki/api/v1/query", {"query": 'rate({a="b"}[1m])', "limit": "0"}, "limit must be"),
        ("/loki/api/v1/labels", {"start": "x"}, 'cannot parse "x"'),
        ("/loki/api/v1/label/app/values", {"query": "{app="}, "parse error"),
        ("/loki/api/v1/label/app/values", {"end": "x"}, 'cannot parse "x"'),
        ("/loki/api/v1/series", {"match[]": '{app="api"', "start": "1"}, "parse error"),
        ("/loki/api/v1/index/stats", {"query": "{app=~"}, "parse error"),
        ("/loki/api/v1/index/stats", {"query": '{app="api"}', "since": "1x"}, "cannot parse"),
        ("/loki/api/v1/index/volume", {"query": "nope"}, "parse error"),
        ("/loki/api/v1/index/volume", {"query": "{}", "limit": "-1"}, "limit must be"),
        ("/loki/api/v1/index/volume_range", {"query": '{app="x"}', "step": "-1"}, "step"),
        ("/loki/api/v1/detected_labels", {"query": '{app="x"'}, "parse error"),
        ("/loki/api/v1/detected_labels", {"start": "2", "end": "1"}, "end timestamp must not"),
    ],
)
def test_every_endpoint_answers_bad_input_with_400(server, path, params, message) -> None:
    loki, _ = server
    status, body = call(loki, path, **params)
    assert status == 400, (path, body)
    assert message in (body if isinstance(body, str) else str(body))


def test_header_bytes_that_are_not_utf8_get_a_400_not_a_500(server) -> None:
    """An error message that echoes a header value with a non-UTF-8 byte still answers."""
    import http.client

    loki, t0 = server
    conn = http.client.HTTPConnection("127.0.0.1", loki.port, timeout=10)
    conn.putrequest("GET", "/loki/api/v1/query_range?query=%7Bapp%3D%22api%22%7D")
    conn.putheader("X-Coprocessor-Version", b"traceid>=\xff")
    conn.endheaders()
    r = conn.getresponse()
    body = r.read().decode()
    conn.close()
    assert r.status == 400, body
    assert "coprocessor" in body.lower()
