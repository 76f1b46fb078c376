"""Coprocessors end to end: the real program with the shipped plugins on a real
nats-server. A 7-day trace search runs on the split where the trace happened, sync and
async, with the same result as without coprocessors; plugins are added, changed, broken
and removed while queries run; misbehaving plugins never change a result; the plugin
list and ``POST /coprocessor/v1/{name}`` work per tenant."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from loki_async.logproto import PushStream
from tests import lokiclient
from tests.conftest import Loki, base_config
from tests.lokiclient import client, push

NS = 10**9
MIN = 60 * NS
HOUR = 60 * MIN
DAY = 24 * HOUR
A, B = "tenant-a", "tenant-b"
REPO_PLUGINS = Path(__file__).resolve().parents[1] / "coprocessors"
PLUGINS_PATH = "/coprocessor/v1/plugins"


class World:
    """The server, its plugin directory and the data's landmarks."""

    def __init__(self, loki: Loki, plugins: Path, start: int, end: int, trace_at: int) -> None:
        self.loki = loki
        self.plugins = plugins
        self.start = start
        self.end = end
        self.trace_at = trace_at
        self.xray = f"1-{trace_at // NS:08x}-5e1be46a994272793bd862e3"

    @property
    def url(self) -> str:
        return self.loki.url


def _streams(start: int, end: int, trace_at: int, xray: str) -> list[PushStream]:
    """Two streams over 7 days, a line every 10 minutes, and a 6-minute trace."""
    out = []
    for app in ("api", "web"):
        ts = list(range(start, end, 10 * MIN))
        lines = [f"app={app} level=info msg=request n={i}".encode() for i in range(len(ts))]
        trace_ts = [trace_at + k * MIN + (1 if app == "web" else 0) for k in range(6)]
        ts += trace_ts
        lines += [f"app={app} trace_id={xray} step={k} msg=span".encode() for k in range(6)]
        order = sorted(range(len(ts)), key=ts.__getitem__)
        out.append(
            PushStream([("app", app)], [ts[i] for i in order], [lines[i] for i in order], None)
        )
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("coprocessors")
    plugins = workdir / "plugins"
    plugins.mkdir()
    for name in ("traceid.py", "patterns.py"):
        shutil.copy(REPO_PLUGINS / name, plugins / name)
    cfg = base_config(
        workdir,
        auth_enabled=True,
        limits_config={
            "reject_old_samples": False,
            "max_query_length": "8d",
            "split_queries_by_interval": "1h",
            "max_query_parallelism": 16,
        },
        querier_worker={"concurrency": 2},
        coprocessors={
            "directory": str(plugins),
            "reload_interval": "0.1s",
            "hook_timeout": "0.05s",  # the hanging plugin costs each split this much
        },
    )
    loki = Loki(workdir, cfg).start()
    end = time.time_ns() // HOUR * HOUR - HOUR
    start = end - 7 * DAY
    trace_at = start + 3 * DAY + 17 * HOUR + 20 * MIN + 7 * NS
    w = World(loki, plugins, start, end, trace_at)

    async def load() -> None:
        async with client() as s:
            status, body = await push(s, loki.url, _streams(start, end, trace_at, w.xray), tenant=A)
            assert status == 204, body

    asyncio.run(load())
    yield w
    loki.stop()


async def call(
    method: str,
    url: str,
    path: str,
    tenant: str | None = A,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    **params: Any,
) -> tuple[int, Any]:
    """(status, body as JSON or text), as tenant A by default."""
    status, out, _ = await lokiclient.call(method, url, path, tenant, headers, body, **params)
    return status, out


async def search(w: World, query: str, **params: Any) -> tuple[int, Any]:
    return await call(
        "GET",
        w.url,
        "/loki/api/v1/query_range",
        query=query,
        start=str(w.start),
        end=str(w.end),
        limit="1000",
        **params,
    )


def trace_query(w: World) -> str:
    return f'{{app=~"api|web"}} |= "{w.xray}"'


async def plugin_state(w: World, name: str) -> dict[str, Any] | None:
    status, body = await call("GET", w.url, PLUGINS_PATH)
    assert status == 200, body
    return next((p for p in body["data"]["plugins"] if p["name"] == name), None)


async def until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_7_day_trace_search_runs_on_the_splits_of_the_trace(world: World) -> None:
    status, on = await search(world, trace_query(world), headers={"Cache-Control": "no-cache"})
    assert status == 200, on
    status, off = await search(
        world, trace_query(world), coprocessors="none", headers={"Cache-Control": "no-cache"}
    )
    assert status == 200, off
    assert on["data"]["result"] == off["data"]["result"]
    lines = [v[1] for s in on["data"]["result"] for v in s["values"]]
    assert len(lines) == 12 and all(world.xray in line for line in lines)
    stats = on["data"]["stats"]
    assert stats["summary"]["splits"] == 168
    skipped = stats["coprocessor"]["traceid"]["skipped"]
    assert 168 - skipped <= 3, stats["coprocessor"]
    assert "coprocessor" not in off["data"]["stats"]
    on_bytes = stats["summary"]["totalBytesProcessed"]
    off_bytes = off["data"]["stats"]["summary"]["totalBytesProcessed"]
    assert on_bytes * 20 < off_bytes, (on_bytes, off_bytes)


async def test_async_trace_search_shows_skipped_splits_in_ticket_progress(world: World) -> None:
    status, sync = await search(world, trace_query(world))
    assert status == 200, sync
    status, body = await search(world, trace_query(world), async_="true", wait="30s")
    assert status == 200, body  # finished within wait=: answered inline
    ticket = None
    status, listing = await call("GET", world.url, "/loki/api/v1/tickets")
    for t in listing["data"]:
        if t["query"] == trace_query(world):
            ticket = t["ticket"]
    assert ticket is not None, listing
    status, st = await call("GET", world.url, f"/loki/api/v1/tickets/{ticket}/status")
    assert status == 200, st
    p = st["data"]["progress"]
    assert p["splits_total"] == 168
    assert p["splits_skipped"] >= 165 and p["splits_done"] + p["splits_skipped"] == 168
    assert p["coprocessors"]["traceid"]["skipped"] == p["splits_skipped"]
    assert body["data"]["result"] == sync["data"]["result"]
    assert body["data"]["stats"]["coprocessor"]["traceid"]["skipped"] == p["splits_skipped"]


async def test_metric_trace_query_equals_the_unskipped_one(world: World) -> None:
    q = f'sum by (app) (count_over_time({{app=~"api|web"}} |= "{world.xray}" [5m]))'
    params = {"step": "5m", "headers": {"Cache-Control": "no-cache"}}
    status, on = await search(world, q, **params)
    assert status == 200, on
    status, off = await search(world, q, coprocessors="-traceid", **params)
    assert status == 200, off
    assert on["data"]["result"] == off["data"]["result"]
    assert sum(float(v[1]) for s in on["data"]["result"] for v in s["values"]) > 0
    assert on["data"]["stats"]["coprocessor"]["traceid"]["skipped"] >= 160


async def test_version_constraints_and_plugin_lists_are_checked(world: World) -> None:
    q = trace_query(world)
    status, body = await search(world, q, headers={"X-Coprocessor-Version": "traceid>=1.0,<2"})
    assert status == 200, body
    for headers, params, message in (
        ({"X-Coprocessor-Version": "traceid>=1.2,<2"}, {}, "coprocessor traceid is version"),
        ({}, {"coprocessor_version": "traceid>=7"}, "coprocessor traceid is version"),
        ({"X-Coprocessor-Version": "nosuch>=1"}, {}, "coprocessor nosuch is not loaded"),
        ({"X-Coprocessor-Version": "traceid"}, {}, "expected a plugin name and versions"),
        ({}, {"coprocessors": "-nosuch"}, "no coprocessor named nosuch"),
    ):
        for extra in ({}, {"async_": "true"}):
            status, body = await search(world, q, headers=headers, **params, **extra)
            assert status == 400, (headers, params, body)
            assert message in body, body


async def test_plugin_list_and_handle_next_to_the_data(world: World) -> None:
    status, body = await call("GET", world.url, PLUGINS_PATH)
    assert status == 200, body
    plugins = {p["name"]: p for p in body["data"]["plugins"]}
    assert plugins["traceid"]["state"] == "active" and "pre_query" in plugins["traceid"]["hooks"]
    assert plugins["patterns"]["hooks"] == ["handle"]
    assert body["data"]["api_version"].startswith("1.")

    request = {"query": '{app="api"}', "start": world.start, "end": world.end, "top": 3}
    status, out = await call(
        "POST", world.url, "/coprocessor/v1/patterns", body=orjson.dumps(request)
    )
    assert status == 200, out
    assert out["lines"] == 1014  # every line of app=api in range
    assert out["patterns"][0]["count"] >= 990 and "<_>" in out["patterns"][0]["pattern"]

    status, other = await call(
        "POST", world.url, "/coprocessor/v1/patterns", tenant=B, body=orjson.dumps(request)
    )
    assert status == 200 and other["lines"] == 0, other  # tenant B sees none of A's data

    status, text = await call("POST", world.url, "/coprocessor/v1/patterns", body=b"{nope")
    assert status == 400 and "coprocessor patterns" in text, text
    status, text = await call("POST", world.url, "/coprocessor/v1/nosuch", body=b"{}")
    assert status == 404 and "not loaded" in text, text
    status, text = await call("POST", world.url, "/coprocessor/v1/traceid", body=b"{}")
    assert status == 404 and "no handle endpoint" in text, text


DEMO = """
import asyncio
from loki_async.coprocessor import Coprocessor, KEEP, Skip, declare


class Demo(Coprocessor):
    async def pre_query(self, split):
        await asyncio.sleep(0.01)
        return KEEP


PLUGIN = declare(Demo, name="demo", version="{version}", api="{api}")
"""


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


async def test_hot_reload_while_queries_run(world: World) -> None:
    q = trace_query(world)
    status, baseline = await search(world, q)
    assert status == 200
    failures: list[Any] = []
    done = asyncio.Event()
    runs = 0

    async def keep_querying() -> None:
        nonlocal runs
        while not done.is_set():
            for extra in ({}, {"async_": "true", "wait": "30s"}):
                status, body = await search(
                    world, q, headers={"Cache-Control": "no-cache"}, **extra
                )
                runs += 1
                if status != 200 or body["data"]["result"] != baseline["data"]["result"]:
                    failures.append((status, body))

    async def version_is(v: str) -> bool:
        p = await plugin_state(world, "demo")
        return p is not None and p["state"] == "active" and p["version"] == v

    load = [asyncio.create_task(keep_querying()) for _ in range(2)]
    try:
        path = world.plugins / "demo.py"
        write(path, DEMO.format(version="1.0.0", api="1.0"))  # add
        await until(lambda: version_is("1.0.0"))
        status, _ = await search(world, q, headers={"X-Coprocessor-Version": "demo==1.0.0"})
        assert status == 200

        write(path, DEMO.format(version="2.0.0", api="1.0"))  # change
        await until(lambda: version_is("2.0.0"))
        status, _ = await search(world, q, headers={"X-Coprocessor-Version": "demo>=2"})
        assert status == 200
        status, text = await search(world, q, headers={"X-Coprocessor-Version": "demo<2"})
        assert status == 400 and "demo is version 2.0.0" in text

        write(path, "from loki_async.coprocessor import declare\nPLUGIN = declare(\n")  # break

        async def broken_reported() -> bool:
            p = await plugin_state(world, "demo")
            return p is not None and "SyntaxError" in (p["error"] or "")

        await until(broken_reported)
        assert await version_is("2.0.0")  # the old version keeps running
        status, _ = await search(world, q, headers={"X-Coprocessor-Version": "demo==2.0.0"})
        assert status == 200

        write(
            world.plugins / "future.py",
            DEMO.format(version="1.0.0", api="2.0").replace('name="demo"', 'name="future"'),
        )
        future = await until(lambda: plugin_state(world, "future"))
        assert future["state"] == "rejected" and "major version differs" in future["error"]

        path.unlink()  # remove
        (world.plugins / "future.py").unlink()

        async def gone() -> bool:
            return await plugin_state(world, "demo") is None

        await until(gone)
        status, text = await search(world, q, headers={"X-Coprocessor-Version": "demo>=1"})
        assert status == 400 and "demo is not loaded" in text
        await asyncio.sleep(0.3)  # a few more queries after the removal
    finally:
        done.set()
        await asyncio.gather(*load)
    assert runs >= 4
    assert not failures, failures[:2]


MISBEHAVING = """
import asyncio
from loki_async.coprocessor import Coprocessor, Narrow, Skip, declare


class Raises(Coprocessor):
    async def pre_query(self, split):
        raise RuntimeError("plugin bug")

    async def pre_get_chunk(self, ref):
        raise RuntimeError("plugin bug")


class Hangs(Coprocessor):
    async def pre_query(self, split):
        await asyncio.sleep(3600)

    async def pre_get_index(self, request):
        await asyncio.sleep(3600)


class Garbage(Coprocessor):
    async def pre_query(self, split):
        return {{"skip": True}}

    async def pre_get_chunk(self, ref):
        return "no"


PLUGIN = declare({cls}, name="{name}", version="0.1.0", api="1.0")
"""


def counter_sum(metrics_text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_plugins_that_raise_hang_or_answer_garbage_change_nothing(world: World) -> None:
    q = trace_query(world)
    status, baseline = await search(world, q, coprocessors="none")
    assert status == 200
    names = {"raises": "Raises", "hangs": "Hangs", "garbage": "Garbage"}
    for name, cls in names.items():
        write(world.plugins / f"bad_{name}.py", MISBEHAVING.format(cls=cls, name=name))

    async def all_active() -> bool:
        states = [await plugin_state(world, n) for n in names]
        return all(s is not None and s["state"] == "active" for s in states)

    try:
        await until(all_active)
        for extra in ({}, {"async_": "true", "wait": "120s"}):
            status, body = await search(
                world,
                q,
                coprocessors="raises,hangs,garbage",
                **extra,
                headers={"Cache-Control": "no-cache"},
            )
            assert status == 200, body
            assert body["data"]["result"] == baseline["data"]["result"]
            cp = body["data"]["stats"]["coprocessor"]
            assert cp["raises"]["errors"] >= 168 and cp["hangs"]["timeouts"] >= 168
            assert cp["garbage"]["errors"] >= 168
        status, text = await call("GET", world.url, "/metrics", tenant=None)
        for plugin, outcome in (("raises", "error"), ("hangs", "timeout"), ("garbage", "invalid")):
            assert (
                counter_sum(
                    text,
                    "loki_coprocessor_calls_total",
                    plugin=plugin,
                    hook="pre_query",
                    outcome=outcome,
                )
                >= 336
            ), (plugin, outcome)
        # Chunks are in the store after a flush: the index and chunk hooks get asked too.
        status, _ = await call("POST", world.url, "/flush")
        assert status == 204
        status, body = await search(
            world, q, coprocessors="raises,hangs,garbage", headers={"Cache-Control": "no-cache"}
        )
        assert status == 200 and body["data"]["result"] == baseline["data"]["result"]
        status, text = await call("GET", world.url, "/metrics", tenant=None)
        assert (
            counter_sum(
                text,
                "loki_coprocessor_calls_total",
                plugin="hangs",
                hook="pre_get_index",
                outcome="timeout",
            )
            > 0
        )
        assert (
            counter_sum(
                text,
                "loki_coprocessor_calls_total",
                plugin="garbage",
                hook="pre_get_chunk",
                outcome="invalid",
            )
            > 0
        )
    finally:
        for name in names:
            (world.plugins / f"bad_{name}.py").unlink()


OBSERVER = """
import json
from pathlib import Path
from loki_async.coprocessor import Coprocessor, declare

EVENTS = Path(__file__).with_suffix(".events")


def note(*event):
    with EVENTS.open("a") as f:
        f.write(json.dumps(event) + "\\n")


class Observer(Coprocessor):
    async def post_push(self, tenant, streams):
        note("post_push", tenant, [[s.labels, s.entries] for s in streams])

    async def pre_flush(self, chunk):
        note("pre_flush", chunk.tenant, chunk.labels, chunk.entries, len(chunk.data))

    async def post_flush(self, chunk, key):
        note("post_flush", chunk.tenant, chunk.labels, key)

    async def pre_get_chunk(self, ref):
        note("pre_get_chunk", ref.tenant, ref.labels, ref.key)
        return True


PLUGIN = declare(Observer, name="observer", version="1.0.0", api="1.0")
"""


async def test_push_flush_and_chunk_hooks_see_what_happens(world: World) -> None:
    write(world.plugins / "observer.py", OBSERVER)
    events_path = world.plugins / "observer.events"

    async def active() -> bool:
        p = await plugin_state(world, "observer")
        return p is not None and p["state"] == "active"

    def events(kind: str) -> list[list[Any]]:
        if not events_path.exists():
            return []
        rows = [orjson.loads(x) for x in events_path.read_text().splitlines()]
        return [r for r in rows if r[0] == kind]

    try:
        await until(active)
        now = time.time_ns()
        stream = PushStream([("app", "observed")], [now - 2 * NS, now - NS], [b"a", b"b"], None)
        async with client() as s:
            status, body = await push(s, world.url, [stream], tenant=A)
            assert status == 204, body

        async def pushed() -> bool:
            return bool(events("post_push"))

        await until(pushed)
        assert events("post_push")[0][1:] == [A, [['{app="observed"}', 2]]]

        status, _ = await call("POST", world.url, "/flush")
        assert status == 204
        flushed = [e for e in events("post_flush") if e[2] == '{app="observed"}']
        assert len(flushed) == 1 and flushed[0][1] == A and flushed[0][3].startswith(A)
        assert [e[3] for e in events("pre_flush") if e[2] == '{app="observed"}'] == [2]

        status, body = await call(
            "GET",
            world.url,
            "/loki/api/v1/query_range",
            query='{app="observed"}',
            start=str(now - HOUR),
            end=str(now + NS),
            coprocessors="observer",
            headers={"Cache-Control": "no-cache"},
        )
        assert status == 200 and len(body["data"]["result"]) == 1, body
        assert [e[3] for e in events("pre_get_chunk")] == [flushed[0][3]]
    finally:
        (world.plugins / "observer.py").unlink()
        events_path.unlink(missing_ok=True)
