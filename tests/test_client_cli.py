"""The ``loki-async query`` and ``loki-async ticket`` commands against the real program.

One server (auth enabled, so every call carries ``--org-id``) with a few hours of two
streams; the commands run as subprocesses, as a user would run them.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from loki_async.logproto import PushStream
from tests.conftest import Loki, base_config, free_port
from tests.lokiclient import client, push

NS = 10**9
MIN = 60 * NS
TENANT = "cli-tenant"
LOGS = '{app="cli"}'
METRIC = 'sum by (level) (count_over_time({app="cli"}[10m]))'
N = 36  # entries per stream, one every 10 minutes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Loki, int, int]]:
    workdir: Path = tmp_path_factory.mktemp("clicli")
    cfg = base_config(workdir, auth_enabled=True, limits_config={"reject_old_samples": False})
    loki = Loki(workdir, cfg).start()
    t0 = (time.time_ns() - 7 * 3600 * NS) // MIN * MIN
    streams = [
        PushStream(
            [("app", "cli"), ("level", level)],
            [t0 + i * 10 * MIN for i in range(N)],
            [f"level={level} n={i}".encode() for i in range(N)],
            None,
        )
        for level in ("info", "error")
    ]

    async def load() -> None:
        async with client() as s:
            status, body = await push(s, loki.url, streams, tenant=TENANT)
            assert status == 204, body

    asyncio.run(load())
    yield loki, t0, t0 + N * 10 * MIN
    loki.stop()


def cli(loki: Loki, *args: str, addr: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "loki_async.cli",
            *args,
            "--addr",
            addr or loki.url,
            "--org-id",
            TENANT,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def query(server: tuple[Loki, int, int], expr: str, *args: str) -> subprocess.CompletedProcess[str]:
    loki, start, end = server
    return cli(
        loki, "query", expr, "--from", str(start), "--to", str(end), "--limit", "1000", *args
    )


def ticket_of(p: subprocess.CompletedProcess[str]) -> str:
    m = re.search(r"^ticket: (\S+)$", p.stderr, re.M)
    assert m, p.stderr
    return m.group(1)


def by_labels(result: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(result, key=lambda s: sorted((s.get("stream") or s["metric"]).items()))


def test_sync_query(server: tuple[Loki, int, int]) -> None:
    p = query(server, LOGS, "--direction", "forward")
    assert p.returncode == 0, p.stderr
    doc = orjson.loads(p.stdout)
    assert doc["status"] == "success"
    assert doc["data"]["resultType"] == "streams"
    assert sum(len(s["values"]) for s in doc["data"]["result"]) == 2 * N
    assert "ticket:" not in p.stderr

    pretty = query(server, LOGS, "--direction", "forward", "--output", "json")
    assert pretty.returncode == 0, pretty.stderr
    assert pretty.stdout.startswith("{\n  ")
    assert orjson.loads(pretty.stdout)["data"]["result"] == doc["data"]["result"]

    since = cli(server[0], "query", LOGS, "--since", "8h", "--limit", "1000")  # start = now - 8h
    assert since.returncode == 0, since.stderr
    assert sum(len(s["values"]) for s in orjson.loads(since.stdout)["data"]["result"]) == 2 * N


@pytest.mark.parametrize("expr", [LOGS, METRIC])
def test_async_query_equals_sync(server: tuple[Loki, int, int], expr: str) -> None:
    sync = query(server, expr, "--direction", "forward", "--step", "10m")
    assert sync.returncode == 0, sync.stderr
    p = query(server, expr, "--direction", "forward", "--step", "10m", "--async")
    assert p.returncode == 0, p.stderr
    ticket_of(p)
    assert "[" not in p.stderr  # not a TTY: no progress bar
    want = orjson.loads(sync.stdout)["data"]
    got = orjson.loads(p.stdout)["data"]
    assert got["resultType"] == want["resultType"]
    assert by_labels(got["result"]) == by_labels(want["result"])


def test_async_inline_result_with_wait(server: tuple[Loki, int, int]) -> None:
    p = query(server, METRIC, "--step", "10m", "--async", "--wait", "30s", "--keep-alive", "1h")
    assert p.returncode == 0, p.stderr
    ticket_of(p)
    assert orjson.loads(p.stdout)["data"]["resultType"] == "matrix"


def test_jsonl(server: tuple[Loki, int, int]) -> None:
    p = query(server, LOGS, "--output", "jsonl", "--async", "--no-progress")
    assert p.returncode == 0, p.stderr
    rows = [orjson.loads(line) for line in p.stdout.splitlines()]
    assert len(rows) == 2 * N
    assert all(r.keys() == {"ts", "labels", "line"} for r in rows)
    assert all(r["labels"]["app"] == "cli" and r["line"].startswith("level=") for r in rows)

    p = query(server, METRIC, "--step", "10m", "--output", "jsonl")
    assert p.returncode == 0, p.stderr
    rows = [orjson.loads(line) for line in p.stdout.splitlines()]
    assert rows and all(r.keys() == {"metric", "ts", "value"} for r in rows)
    assert {r["metric"]["level"] for r in rows} == {"info", "error"}
    assert sum(float(r["value"]) for r in rows) >= 2 * N

    loki, _, end = server
    p = cli(loki, "query", METRIC, "--instant", "--to", str(end - MIN), "--output", "jsonl")
    assert p.returncode == 0, p.stderr
    rows = [orjson.loads(line) for line in p.stdout.splitlines()]
    assert {r["metric"]["level"] for r in rows} == {"info", "error"}


def test_ticket_commands(server: tuple[Loki, int, int]) -> None:
    loki = server[0]
    p = query(server, 'count_over_time({app="cli", level="info"}[1h])', "--async")
    assert p.returncode == 0, p.stderr
    tid = ticket_of(p)

    st = cli(loki, "ticket", tid, "--status")
    assert st.returncode == 0, st.stderr
    status = orjson.loads(st.stdout)
    assert status["status"] == "success"
    assert status["data"]["state"] == "done" and status["data"]["ticket"] == tid

    got = cli(loki, "ticket", tid, "--wait", "5s")
    assert got.returncode == 0, got.stderr
    assert orjson.loads(got.stdout)["data"] == orjson.loads(p.stdout)["data"]

    listed = cli(loki, "ticket", "--list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["TICKET", "STATE", "SPLITS", "CREATED", "QUERY"]
    row = next(r for r in rows if r.startswith(tid))
    assert " done " in row and 'count_over_time({app="cli", level="info"}[1h])' in row

    stop = cli(loki, "ticket", tid, "--stop")
    assert stop.returncode == 0, stop.stderr
    assert orjson.loads(stop.stdout)["data"]["state"] == "done"

    cancel = cli(loki, "ticket", tid, "--cancel")
    assert cancel.returncode == 0, cancel.stderr
    assert tid in cancel.stdout
    gone = cli(loki, "ticket", tid)
    assert gone.returncode == 1
    assert gone.stderr.startswith("error: 404 ") and "not found" in gone.stderr
    assert tid not in cli(loki, "ticket", "--list").stdout


def test_errors(server: tuple[Loki, int, int]) -> None:
    loki = server[0]
    for args in [(), ("--async",)]:
        p = query(server, '{app="cli"', *args)
        assert p.returncode == 1
        assert p.stderr.startswith("error: 400 ") and "parse error" in p.stderr, p.stderr
        assert p.stdout == ""

    addr = f"http://127.0.0.1:{free_port()}"
    for args in [("query", LOGS), ("ticket", "--list")]:
        p = cli(loki, *args, addr=addr)
        assert p.returncode == 1
        assert p.stderr.startswith(f"cannot reach {addr}: "), p.stderr
        assert "Traceback" not in p.stderr

    p = cli(loki, "ticket")
    assert p.returncode == 2 and "give a ticket ID or --list" in p.stderr
