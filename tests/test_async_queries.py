"""Asynchronous queries end to end: the real program on a real nats-server.

Submission (202, wait=, Idempotency-Key, coalescing), the tickets API (poll, long-poll,
status, partial, stop, delete, list), tenant isolation, bad input, and the failure
paths: a worker killed mid-query, nats-server restarted mid-query, a query that
always fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loki_async.logproto import PushStream
from tests import lokiclient
from tests.conftest import Loki, NATSServer, base_config
from tests.lokiclient import client, push

NS = 10**9
HOUR = 3600 * NS
DAY = 24 * HOUR
A, B = "tenant-a", "tenant-b"
METRIC = 'sum by (level) (count_over_time({app="web"}[1h]))'
TICKETS = "/loki/api/v1/tickets"


def _streams(now: int) -> list[PushStream]:
    """30 days of two streams, one entry every 20 minutes; one trace id in the middle."""
    start = (now - 30 * DAY) // HOUR * HOUR
    out = []
    for level in ("info", "error"):
        ts = list(range(start, now - 60 * NS, 20 * 60 * NS))
        lines = [f"level={level} n={i} msg=request".encode() for i in range(len(ts))]
        lines[len(lines) // 2] = f"level={level} trace_id=abc123 msg=found".encode()
        out.append(PushStream([("app", "web"), ("level", level)], ts, lines, None))
    return out


def _config(workdir: Path, nats_url: str = "", **overrides: Any) -> dict:
    cfg = base_config(
        workdir,
        nats_url,
        auth_enabled=True,
        limits_config={
            "reject_old_samples": False,
            "max_query_parallelism": 4,
            "max_query_length": "31d",
        },
        querier_worker={
            "concurrency": 1,
            "ack_wait": "2s",
            "max_deliver": 3,
            "retry_delay": "0.2s",
        },
        frontend={"async_max_keep_alive": "2d"},
    )
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


async def _load(url: str, now: int, tenant: str = A) -> None:
    async with client() as s:
        status, body = await push(s, url, _streams(now), tenant=tenant)
        assert status == 204, body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Loki, int]]:
    workdir = tmp_path_factory.mktemp("async")
    loki = Loki(workdir, _config(workdir)).start()
    now = time.time_ns()
    asyncio.run(_load(loki.url, now))
    yield loki, now
    loki.stop()


async def call(
    method: str,
    url: str,
    path: str,
    tenant: str | None = A,
    headers: dict[str, str] | None = None,
    **params: Any,
) -> tuple[int, Any, Any]:
    """(status, body as JSON or text, response headers), as tenant A by default."""
    return await lokiclient.call(method, url, path, tenant, headers, **params)


def span(now: int, days: int = 30) -> dict[str, str]:
    return {"start": str(now - days * DAY), "end": str(now)}


async def submit(url: str, query: str, now: int, tenant: str = A, **params: Any) -> str:
    headers = params.pop("headers", None)
    status, body, hdrs = await call(
        "GET",
        url,
        "/loki/api/v1/query_range",
        tenant,
        headers,
        query=query,
        **span(now),
        step="1h",
        limit="1000",
        async_="true",
        **params,
    )
    assert status == 202, body
    ticket = body["data"]["ticket"]
    assert re.fullmatch(r"[0-9a-f]{32}", ticket)
    assert hdrs["Location"] == f"{TICKETS}/{ticket}"
    assert body["status"] == "accepted" and body["data"]["status_url"].endswith("/status")
    return ticket


async def result(url: str, ticket: str, tenant: str = A, timeout: float = 120) -> dict:
    """Long-poll the ticket until it has a result."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body, _ = await call("GET", url, f"{TICKETS}/{ticket}", tenant, wait="10s")
        if status == 200:
            return body
        assert status == 204, body
    raise AssertionError(f"ticket {ticket} not done in {timeout}s")


async def status_of(url: str, ticket: str, tenant: str = A) -> dict:
    status, body, _ = await call("GET", url, f"{TICKETS}/{ticket}/status", tenant)
    assert status == 200, body
    return body["data"]


async def sync(url: str, query: str, now: int, tenant: str = A) -> dict:
    status, body, _ = await call(
        "GET",
        url,
        "/loki/api/v1/query_range",
        tenant,
        query=query,
        **span(now),
        step="1h",
        limit="1000",
    )
    assert status == 200, body
    return body


async def metric(url: str, name: str, labels: str) -> float:
    async with client() as s, s.get(url + "/metrics") as r:
        text = await r.text()
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def until(predicate: Any, timeout: float = 60, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# --------------------------------------------------------------------------- results


async def test_log_query_202_then_204_then_200_equal_to_sync(server) -> None:
    loki, now = server
    query = '{app="web"} |= "msg=request"'
    ticket = await submit(loki.url, query, now)
    body = await result(loki.url, ticket)
    expected = await sync(loki.url, query, now)
    assert body["status"] == "success" and body["is_partial"] is False
    assert body["data"]["result"] == expected["data"]["result"]
    assert sum(len(s["values"]) for s in body["data"]["result"]) == 1000


async def test_thirty_day_metric_query_progresses_to_a_result_equal_to_sync(server) -> None:
    loki, now = server
    ticket = await submit(loki.url, METRIC, now, headers={"Cache-Control": "no-cache"})
    status, _, _ = await call("GET", loki.url, f"{TICKETS}/{ticket}")
    assert status == 204  # 720 splits cannot be done yet
    seen = []
    while True:
        st = await status_of(loki.url, ticket)
        seen.append(st["progress"]["splits_done"])
        if not st["is_running"]:
            break
        await asyncio.sleep(0.05)
    total = st["progress"]["splits_total"]
    assert st["state"] == "done" and 720 <= total <= 722  # 30 days of 1 h splits, unaligned
    assert seen == sorted(seen) and seen[-1] == total and len(set(seen)) > 2
    assert st["stats"]["lines_processed"] > 0
    body = await result(loki.url, ticket)
    expected = await sync(loki.url, METRIC, now)
    assert body["data"]["result"] == expected["data"]["result"]
    assert body["data"]["stats"]["summary"]["splits"] == total
    # A second run finds the past splits in the split cache.
    again = await submit(loki.url, METRIC, now)
    assert (await result(loki.url, again))["data"]["result"] == expected["data"]["result"]
    assert (await status_of(loki.url, again))["progress"]["splits_cached"] >= 700


async def test_wait_answers_inline_and_the_ticket_keeps_the_result(server) -> None:
    loki, now = server
    status, body, hdrs = await call(
        "GET",
        loki.url,
        "/loki/api/v1/query",
        query='sum(count_over_time({app="web"}[1d]))',
        time=str(now),
        async_="true",
        wait="30s",
    )
    assert status == 200, body
    assert body["data"]["resultType"] == "vector"
    ticket = hdrs["X-Loki-Ticket"]
    status, again, _ = await call("GET", loki.url, f"{TICKETS}/{ticket}")
    assert status == 200 and again == body


async def test_long_poll_returns_when_the_query_finishes(server) -> None:
    loki, now = server
    ticket = await submit(
        loki.url,
        'count_over_time({app="web"} |= "n=1" [1h])',
        now,
        headers={"Cache-Control": "no-cache"},
    )
    t0 = time.monotonic()
    status, body, _ = await call("GET", loki.url, f"{TICKETS}/{ticket}", wait="60s")
    assert status == 200, body  # woken by the state change, not by the 60 s deadline
    assert time.monotonic() - t0 < 60
    assert not (await status_of(loki.url, ticket))["is_running"]


async def test_idempotency_key_gives_one_ticket_and_one_execution(server) -> None:
    loki, now = server
    before = await metric(loki.url, "loki_async_queries_total", 'state="running"')
    key = {"Idempotency-Key": "report-2026-11-21"}
    query = 'count_over_time({app="web"} |= "n=2" [1h])'
    tickets = [await submit(loki.url, query, now, headers=key) for _ in range(3)]
    assert len(set(tickets)) == 1
    await result(loki.url, tickets[0])
    assert await metric(loki.url, "loki_async_queries_total", 'state="running"') == before + 1
    # The same key from another tenant is another ticket.
    other = await submit(loki.url, query, now, tenant=B, headers=key)
    assert other != tickets[0]
    await result(loki.url, other, tenant=B)


async def test_identical_queries_in_flight_share_one_execution(server) -> None:
    loki, now = server
    before = await metric(loki.url, "loki_async_queries_total", 'state="running"')
    query = 'count_over_time({app="web"} |= "n=3" [1h])'
    hdrs = {"Cache-Control": "no-cache"}
    tickets = await asyncio.gather(*(submit(loki.url, query, now, headers=hdrs) for _ in range(4)))
    assert len(set(tickets)) == 4
    executions = {(await status_of(loki.url, t))["execution"] for t in tickets}
    assert len(executions) == 1
    bodies = [await result(loki.url, t) for t in tickets]
    assert all(b["data"]["result"] == bodies[0]["data"]["result"] for b in bodies)
    assert await metric(loki.url, "loki_async_queries_total", 'state="running"') == before + 1


# --------------------------------------------------------------------------- control


async def _running(loki: Loki, now: int, query: str, min_done: int = 20) -> str:
    ticket = await submit(loki.url, query, now, headers={"Cache-Control": "no-cache"})

    async def progressed() -> bool:
        st = await status_of(loki.url, ticket)
        assert st["is_running"], st
        return st["progress"]["splits_done"] >= min_done

    await until(progressed, what="progress")
    return ticket


async def test_partial_is_a_subset_and_stop_keeps_it(server) -> None:
    loki, now = server
    query = 'sum by (level) (count_over_time({app="web"} |= "level" [1h]))'
    ticket = await _running(loki, now, query)
    status, partial, _ = await call("GET", loki.url, f"{TICKETS}/{ticket}/partial")
    assert status == 200 and partial["is_partial"] is True
    full = await sync(loki.url, query, now)
    full_points = {
        (s["metric"]["level"], v[0]) for s in full["data"]["result"] for v in s["values"]
    }
    part_points = {
        (s["metric"]["level"], v[0]) for s in partial["data"]["result"] for v in s["values"]
    }
    assert part_points and part_points < full_points
    status, body, _ = await call("POST", loki.url, f"{TICKETS}/{ticket}/stop")
    assert status == 200, body
    final = await result(loki.url, ticket)
    st = await status_of(loki.url, ticket)
    assert st["state"] == "done" and st["is_partial"] is True and final["is_partial"] is True
    stopped_points = {
        (s["metric"]["level"], v[0]) for s in final["data"]["result"] for v in s["values"]
    }
    assert part_points <= stopped_points < full_points


async def test_delete_cancels_running_splits_and_forgets_the_ticket(server) -> None:
    loki, now = server
    ticket = await _running(loki, now, 'count_over_time({app="web"} |= "msg" [1h])')
    status, body, _ = await call("DELETE", loki.url, f"{TICKETS}/{ticket}")
    assert status == 200, body
    for path in ("", "/status", "/partial"):
        status, _, _ = await call("GET", loki.url, f"{TICKETS}/{ticket}{path}")
        assert status == 404
    await asyncio.sleep(1.0)  # a cancel reaches every worker within a second
    executed = await metric(loki.url, "loki_async_worker_splits_total", 'outcome="executed"')
    await asyncio.sleep(1.5)
    assert await metric(loki.url, "loki_async_worker_splits_total", 'outcome="executed"') == (
        executed
    )


async def test_tickets_are_listed_newest_first(server) -> None:
    loki, now = server
    first = await submit(loki.url, 'count_over_time({app="web"} |= "n=4" [1h])', now)
    second = await submit(loki.url, 'count_over_time({app="web"} |= "n=5" [1h])', now)
    status, body, _ = await call("GET", loki.url, TICKETS)
    assert status == 200
    ids = [t["ticket"] for t in body["data"]]
    assert ids.index(second) < ids.index(first)
    assert {"state", "progress", "stats", "created", "expires"} <= set(body["data"][0])


# --------------------------------------------------------------------------- isolation, input


async def test_another_tenant_gets_404_on_every_ticket_endpoint(server) -> None:
    loki, now = server
    ticket = await submit(loki.url, 'count_over_time({app="web"} |= "n=6" [1h])', now)
    for method, path in (
        ("GET", ""),
        ("GET", "/status"),
        ("GET", "/partial"),
        ("POST", "/stop"),
        ("DELETE", ""),
    ):
        status, body, _ = await call(method, loki.url, f"{TICKETS}/{ticket}{path}", tenant=B)
        assert status == 404, (method, path, body)
    status, body, _ = await call("GET", loki.url, TICKETS, tenant=B)
    assert ticket not in [t["ticket"] for t in body["data"]]
    # Tenant B's own data is not tenant A's either.
    other = await submit(loki.url, METRIC, now, tenant=B)
    assert (await result(loki.url, other, tenant=B))["data"]["result"] == []
    assert (await result(loki.url, ticket))["status"] == "success"


async def test_keep_alive_expiry_makes_the_ticket_404(server) -> None:
    loki, now = server
    ticket = await submit(
        loki.url, 'count_over_time({app="web"} |= "n=7" [1h])', now, keep_alive="1s"
    )
    await result(loki.url, ticket)
    await asyncio.sleep(1.2)
    status, _, _ = await call("GET", loki.url, f"{TICKETS}/{ticket}")
    assert status == 404
    # Reading with keep_alive= extends retention.
    kept = await submit(
        loki.url, 'count_over_time({app="web"} |= "n=8" [1h])', now, keep_alive="1s"
    )
    status, _, _ = await call("GET", loki.url, f"{TICKETS}/{kept}", wait="30s", keep_alive="1h")
    assert status == 200
    await asyncio.sleep(1.2)
    status, _, _ = await call("GET", loki.url, f"{TICKETS}/{kept}")
    assert status == 200


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/loki/api/v1/query_range", {"query": "{app=}", "async_": "true"}, "parse error"),
        (
            "/loki/api/v1/query_range",
            {"query": '{app="web"}', "async_": "true", "wait": "soon"},
            'invalid wait "soon"',
        ),
        (
            "/loki/api/v1/query_range",
            {"query": '{app="web"}', "async_": "true", "wait": "-1s"},
            'invalid wait "-1s"',
        ),
        (
            "/loki/api/v1/query_range",
            {"query": '{app="web"}', "async_": "true", "keep_alive": "forever"},
            'invalid keep_alive "forever"',
        ),
        (
            "/loki/api/v1/query_range",
            {"query": '{app="web"}', "async_": "true", "keep_alive": "30d"},
            "invalid keep_alive: must be positive and at most",
        ),
        (f"{TICKETS}/not-a-ticket", {}, 'invalid ticket id "not-a-ticket"'),
        (f"{TICKETS}/not-a-ticket/status", {}, "invalid ticket id"),
    ],
)
async def test_bad_async_input_is_400_and_makes_no_ticket(server, path, params, message) -> None:
    loki, _ = server
    _, before, _ = await call("GET", loki.url, TICKETS)
    status, body, _ = await call("GET", loki.url, path, **params)
    assert status == 400, body
    assert message in body
    _, after, _ = await call("GET", loki.url, TICKETS)
    assert len(after["data"]) == len(before["data"])


async def test_unknown_ticket_is_404(server) -> None:
    loki, _ = server
    status, body, _ = await call("GET", loki.url, f"{TICKETS}/{'0' * 32}")
    assert status == 404 and "not found" in body


# --------------------------------------------------------------------------- failures


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A NATS server of its own, the write path and frontend without workers, and two
    querier-worker processes sharing its store."""
    nats = NATSServer(tmp_path / "nats")
    procs: list[Loki] = []

    def start(target: str, workdir: Path, **overrides: Any) -> Loki:
        cfg = _config(tmp_path, nats.url, **overrides)
        cfg["server"]["http_listen_port"] = base_config(tmp_path)["server"]["http_listen_port"]
        inst = Loki(workdir, cfg, target)
        procs.append(inst)
        workdir.mkdir(exist_ok=True)
        return inst.start()

    try:
        main = start("all", tmp_path, querier_worker={"concurrency": 0})
        yield {"nats": nats, "main": main, "start": start, "procs": procs, "dir": tmp_path}
    finally:
        for p in procs:
            if p.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        nats.stop()


async def test_killed_worker_query_is_completed_by_another(cluster) -> None:
    main, start = cluster["main"], cluster["start"]
    workers = [start("querier-worker", cluster["dir"] / f"w{i}") for i in range(2)]
    now = time.time_ns()
    await _load(main.url, now)
    ticket = await submit(main.url, METRIC, now, headers={"Cache-Control": "no-cache"})

    async def coordinator() -> str:
        st = await status_of(main.url, ticket)
        return st["coordinator"] if st["progress"]["splits_done"] >= 10 else ""

    pid = int((await until(coordinator, what="a coordinator")).rsplit(":", 1)[1])
    victim = next(w for w in workers if w.proc is not None and w.proc.pid == pid)
    victim.kill()
    body = await result(main.url, ticket)
    st = await status_of(main.url, ticket)
    assert st["deliveries"] >= 2 and st["coordinator"] != f"{pid}"
    assert body["data"]["result"] == (await sync(main.url, METRIC, now))["data"]["result"]


async def test_query_survives_a_nats_server_restart(cluster) -> None:
    main, start, nats = cluster["main"], cluster["start"], cluster["nats"]
    start("querier-worker", cluster["dir"] / "w0")
    now = time.time_ns()
    await _load(main.url, now)
    ticket = await _running(main, now, METRIC, min_done=10)
    nats.stop()
    await asyncio.sleep(0.5)
    nats.start()
    try:
        body = await result(main.url, ticket)
    except (AssertionError, TimeoutError) as e:  # say where it stalled
        raise AssertionError(f"{e!r}; the server's log ends with:\n{main.logs()[-6000:]}") from e
    assert body["data"]["result"] == (await sync(main.url, METRIC, now))["data"]["result"]


async def test_query_that_always_fails_is_failed_after_max_deliver(cluster) -> None:
    main, start, workdir = cluster["main"], cluster["start"], cluster["dir"]
    # A worker whose chunk store becomes a file, not a directory: every read fails.
    broken = workdir / "broken-store"
    start(
        "querier-worker",
        workdir / "w0",
        storage_config={"filesystem": {"directory": str(broken)}},
    )
    broken.rmdir()
    broken.write_text("")
    now = time.time_ns()
    await _load(main.url, now)
    status, body, hdrs = await call(
        "GET",
        main.url,
        "/loki/api/v1/query_range",
        query='{app="web"}',
        start=str(now - HOUR),
        end=str(now),
        async_="true",
        wait="60s",
    )
    assert status == 500, body
    assert "after 3 attempts" in body
    st = await status_of(main.url, hdrs["X-Loki-Ticket"])
    assert st["state"] == "failed" and st["error"]["status"] == 500
