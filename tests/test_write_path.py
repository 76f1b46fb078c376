"""End to end: the real program, a real nats-server; push → WAL → chunks → store → query."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loki_async.logproto import PushStream
from tests.conftest import loghub_lines
from tests.lokiclient import client, get, push, query_range

NS = 10**9


def loghub_streams(fmt: str, base_ns: int) -> list[PushStream]:
    """All loghub lines, one stream per system, 1 ms apart, labels given unsorted."""
    streams = []
    for system, lines in loghub_lines().items():
        ts = [base_ns + i * 1_000_000 for i in range(len(lines))]
        streams.append(
            PushStream([("system", system), ("job", "loghub"), ("format", fmt)], ts, lines, None)
        )
    return streams


async def push_batched(session, url, streams, fmt, batch=2000):
    for s in streams:
        for i in range(0, len(s.lines), batch):
            part = PushStream(s.labels, s.timestamps[i : i + batch], s.lines[i : i + batch], None)
            status, body = await push(session, url, [part], fmt)
            assert status == 204, body


async def read_back(session, url, fmt, start, end):
    got = await query_range(session, url, f'{{job="loghub", format="{fmt}"}}', start, end)
    return {k.split("system=")[1]: v for k, v in got.items()}


@pytest.mark.parametrize("fmt", ["json", "gzip", "protobuf"])
async def test_all_loghub_lines_come_back_byte_identical(loki_factory, fmt: str) -> None:
    loki = loki_factory()
    base = time.time_ns() - 3600 * NS
    streams = loghub_streams(fmt, base)
    expected = {
        s.labels[0][1]: [(t, line.decode()) for t, line in zip(s.timestamps, s.lines, strict=True)]
        for s in streams
    }
    assert sum(len(v) for v in expected.values()) == 32000
    async with client() as session:
        await push_batched(session, loki.url, streams, fmt)
        start, end = base, base + 3 * 3600 * NS
        assert await read_back(session, loki.url, fmt, start, end) == expected

        status, labels = await get(
            session, loki.url, "/loki/api/v1/labels", start=str(start), end=str(end)
        )
        assert status == 200 and {"job", "system", "format"} <= set(labels["data"])
        status, values = await get(
            session, loki.url, "/loki/api/v1/label/system/values", start=str(start), end=str(end)
        )
        assert sorted(values["data"]) == sorted(expected)
        status, series = await get(
            session,
            loki.url,
            "/loki/api/v1/series",
            start=str(start),
            end=str(end),
            **{"match[]": f'{{format="{fmt}"}}'},
        )
        assert status == 200
        assert sorted(s["system"] for s in series["data"]) == sorted(expected)

        # Graceful restart: chunks flushed to the store, read back from there.
        assert loki.stop() == 0
        assert list((Path(loki.config["common"]["path_prefix"]) / "chunks").rglob("*"))
        loki.start()
        assert await read_back(session, loki.url, fmt, start, end) == expected
        backward = await query_range(
            session, loki.url, '{system="HDFS"}', start, end, limit=10, direction="backward"
        )
        assert [ln for _, ln in next(iter(backward.values()))] == [
            ln for _, ln in reversed(expected["HDFS"][-10:])
        ]
