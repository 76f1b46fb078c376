"""What is acknowledged stays: WAL replay after kill -9, damaged WAL tails, back-fill,
and content-addressed chunks stored once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import aiohttp

from loki_async.logproto import PushStream
from tests.lokiclient import client, get, push, query_range

NS = 10**9


async def all_lines(session, url: str, selector: str, start: int, end: int) -> list[str]:
    got = await query_range(session, url, selector, start, end, limit=100000)
    return [line for v in got.values() for _, line in v]


async def test_line_is_queryable_once_acknowledged_whatever_its_timestamp(loki_factory) -> None:
    loki = loki_factory()
    now = time.time_ns()
    stamps = [now - 6 * 86400 * NS, now - 3 * 3600 * NS, now - 5 * NS]
    async with client() as session:
        for i, ts in enumerate(stamps):
            s = PushStream([("app", "backfill")], [ts], [b"entry %d" % i], None)
            assert (await push(session, loki.url, [s], "protobuf"))[0] == 204
            # Immediately after the acknowledgement, before any flush.
            got = await all_lines(session, loki.url, '{app="backfill"}', ts - NS, ts + NS)
            assert got == [f"entry {i}"]


async def test_kill_9_during_push_load_loses_no_acknowledged_line(loki_factory) -> None:
    loki = loki_factory()
    base = time.time_ns() - 600 * NS
    acked: list[str] = []

    async def pusher(session, worker: int) -> None:
        seq = 0
        while True:
            lines = [f"w{worker} seq {seq + i} payload {'x' * 80}" for i in range(200)]
            ts = [base + (seq + i) * 1000 + worker for i in range(200)]
            s = PushStream(
                [("app", "crash"), ("worker", str(worker))], ts, [ln.encode() for ln in lines], None
            )
            try:
                status, _ = await push(session, loki.url, [s], "protobuf")
            except aiohttp.ClientError:
                return
            if status != 204:
                return
            acked.extend(lines)
            seq += 200

    async with client() as session:
        tasks = [asyncio.create_task(pusher(session, w)) for w in range(4)]
        while len(acked) < 20000:
            await asyncio.sleep(0.05)
        loki.kill()
        await asyncio.gather(*tasks)
        loki.start()
        got = await all_lines(session, loki.url, '{app="crash"}', base - NS, time.time_ns())
    counts = Counter(got)
    missing = [line for line in acked if line not in counts]
    assert not missing, f"{len(missing)} acknowledged lines lost, e.g. {missing[:3]}"
    assert max(counts.values()) == 1, "duplicated lines after replay"


async def test_corrupt_wal_tail_is_survived_and_counted(loki_factory) -> None:
    loki = loki_factory()
    now = time.time_ns()
    async with client() as session:
        for i in range(5):
            s = PushStream([("app", "torn")], [now + i], [b"record %d" % i], None)
            assert (await push(session, loki.url, [s]))[0] == 204
        loki.kill()
        wal_dir = Path(loki.config["common"]["path_prefix"]) / "wal"
        segment = max(p for p in wal_dir.glob("*.wal") if p.stat().st_size)
        data = segment.read_bytes()
        segment.write_bytes(data[:-7])  # the last record is cut short
        loki.start()
        got = await all_lines(session, loki.url, '{app="torn"}', now - NS, now + NS)
        assert got == [f"record {i}" for i in range(4)]
        status, text = await get(session, loki.url, "/metrics")
        line = next(
            ln for ln in text.splitlines() if ln.startswith("loki_ingester_wal_corruptions_total")
        )
        assert float(line.split()[-1]) == 1.0
        assert "WAL corruption" in loki.logs()


async def test_same_chunk_pushed_twice_is_stored_once(loki_factory) -> None:
    loki = loki_factory()
    now = time.time_ns() - 60 * NS
    s = PushStream(
        [("app", "twice")],
        [now + i for i in range(1000)],
        [b"identical content %d" % i for i in range(1000)],
        None,
    )
    chunks = Path(loki.config["common"]["path_prefix"]) / "chunks" / "fake" / "chunks"
    async with client() as session:
        for _ in range(2):
            assert (await push(session, loki.url, [s], "protobuf"))[0] == 204
            assert loki.stop() == 0  # graceful stop flushes
            loki.start()
        files = [p for p in chunks.rglob("*") if p.is_file()]
        assert len(files) == 1, files
        got = await all_lines(session, loki.url, '{app="twice"}', now - NS, now + 10 * NS)
        assert got == [f"identical content {i}" for i in range(1000)]


async def test_idle_chunks_are_flushed_to_the_store_and_counted(loki_factory) -> None:
    loki = loki_factory(ingester={"chunk_idle_period": "1s", "flush_check_period": "1s"})
    now = time.time_ns() - 60 * NS
    chunks = Path(loki.config["common"]["path_prefix"]) / "chunks" / "fake"
    async with client() as session:
        s = PushStream([("app", "idle")], [now], [b"soon in the store"], None)
        assert (await push(session, loki.url, [s]))[0] == 204
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, text = await get(session, loki.url, "/metrics")
            if 'loki_ingester_chunks_flushed_total{reason="idle"} 1.0' in text:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("no idle flush within 30s")
        assert len(list((chunks / "chunks").rglob("*-*-*"))) == 1
        assert len(list((chunks / "index").rglob("*.idx"))) == 1
        # Flushed and gone from memory: served by the store now.
        got = await all_lines(session, loki.url, '{app="idle"}', now - NS, now + NS)
        assert got == ["soon in the store"]
