"""Disk faults: a full WAL disk, torn chunks, torn index segments, a flipped WAL byte.

The WAL disk is a real tmpfs of 2 MB, mounted for the test (root is needed, as on the
CI machines). Damaged files are damaged on disk under a stopped or running server, the
way a crash or bit rot leaves them.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loki_async.logproto import PushStream
from tests.conftest import base_config
from tests.lokiclient import call, client, push, query_range

pytestmark = pytest.mark.reliability

NS = 10**9


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the CI machines run as root)")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True
    )
    assert done.returncode == 0, f"cannot mount a tmpfs: {done.stderr.decode()}"
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.split()[-1])
    return total


async def _lines(session, url: str, selector: str, start: int, end: int) -> list[str]:
    got = await query_range(session, url, selector, start, end, limit=100000)
    return [line for v in got.values() for _, line in v]


async def test_full_wal_disk_is_a_503_naming_it_and_loses_no_acknowledged_line(
    loki_factory, tmp_path: Path, small_disk: Path
) -> None:
    wal = small_disk / "wal"
    cfg = base_config(tmp_path)
    cfg["ingester"]["wal"] = {"dir": str(wal)}
    loki = loki_factory(cfg)
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1536 << 10))  # leaves about 500 KB for the WAL
    base = time.time_ns() - 60 * NS
    acked: list[str] = []
    refused: list[tuple[int, str]] = []
    async with client() as session:
        n = 0
        while len(refused) < 3 and n < 20000:
            lines = [f"disk seq {n + i} {'x' * 200}" for i in range(50)]
            s = PushStream([("app", "disk")], [base + (n + i) * 1000 for i in range(50)],
                           [ln.encode() for ln in lines], None)  # fmt: skip
            status, body = await push(session, loki.url, [s], "protobuf")
            if status == 204:
                acked.extend(lines)
            else:
                refused.append((status, body))
            n += 50
        assert refused, "the disk never filled"
        for status, body in refused:
            assert status == 503, body
            assert "No space left on device" in body and "WAL" in body, body
        # Space comes back: pushes are accepted again, on the same segment.
        filler.unlink()
        lines = [f"disk seq {n + i} after" for i in range(50)]
        s = PushStream([("app", "disk")], [base + (n + i) * 1000 for i in range(50)],
                       [ln.encode() for ln in lines], None)  # fmt: skip
        assert (await push(session, loki.url, [s], "protobuf"))[0] == 204
        acked.extend(lines)
        # A crash now: the WAL replays every acknowledged line and finds no damage.
        loki.kill()
        loki.start()
        got = await _lines(session, loki.url, '{app="disk"}', base - NS, time.time_ns())
        assert sorted(got) == sorted(acked)
        _, metrics_text, _ = await call("GET", loki.url, "/metrics")
        assert _metric(metrics_text, "loki_ingester_wal_corruptions_total") == 0


async def test_flipped_byte_in_the_middle_of_the_wal_is_detected_and_earlier_records_kept(
    loki_factory,
) -> None:
    loki = loki_factory()
    now = time.time_ns() - 60 * NS
    async with client() as session:
        for i in range(6):
            s = PushStream([("app", "rot")], [now + i], [b"record %d %s" % (i, b"y" * 100)], None)
            assert (await push(session, loki.url, [s]))[0] == 204
        loki.kill()
        wal_dir = Path(loki.config["common"]["path_prefix"]) / "wal"
        segment = max(p for p in wal_dir.glob("*.wal") if p.stat().st_size)
        data = bytearray(segment.read_bytes())
        data[len(data) * 2 // 3] ^= 0x40  # inside the fourth or fifth record
        segment.write_bytes(bytes(data))
        loki.start()
        got = await _lines(session, loki.url, '{app="rot"}', now - NS, now + NS)
        # Records before the damage are recovered; the damaged one and those after it in
        # the same segment are not trusted (as Loki's WAL replay does).
        assert got and all(line.startswith("record ") for line in got)
        assert sorted(got) == [f"record {i} {'y' * 100}" for i in range(len(got))]
        _, metrics_text, _ = await call("GET", loki.url, "/metrics")
        assert _metric(metrics_text, "loki_ingester_wal_corruptions_total") == 1
        assert "WAL corruption" in loki.logs()


async def _flushed(session, loki, streams: list[PushStream]) -> None:
    for s in streams:
        assert (await push(session, loki.url, [s]))[0] == 204
    status, _, _ = await call("POST", loki.url, "/flush")
    assert status == 204


def _stream(app: str, start: int, n: int = 40) -> PushStream:
    return PushStream(
        [("app", app)],
        [start + i * NS for i in range(n)],
        [f"{app} line {i}".encode() for i in range(n)],
        None,
    )


async def test_torn_chunk_is_left_out_with_a_warning_and_the_rest_answers(loki_factory) -> None:
    loki = loki_factory()
    start = time.time_ns() - 600 * NS
    async with client() as session:
        await _flushed(session, loki, [_stream("good", start), _stream("torn", start)])
        store = Path(loki.config["common"]["path_prefix"]) / "chunks"
        chunks = sorted(p for p in store.rglob("*") if p.is_file() and p.suffix != ".idx")
        assert len(chunks) == 2
        victim = chunks[0]  # one stream's chunk, whichever: the other must stay whole
        data = bytearray(victim.read_bytes())
        data[len(data) // 3] ^= 0xFF
        victim.write_bytes(bytes(data))
        status, body, _ = await call(
            "GET", loki.url, "/loki/api/v1/query_range",
            query='{app=~"good|torn"}', start=str(start - NS), end=str(time.time_ns()),
            limit="1000",
        )  # fmt: skip
        assert status == 200, body
        assert any("damaged chunk" in w for w in body["warnings"]), body.get("warnings")
        result = body["data"]["result"]
        assert len(result) == 1 and len(result[0]["values"]) == 40  # the other stream whole
        assert victim.name in loki.logs()
        _, metrics_text, _ = await call("GET", loki.url, "/metrics")
        assert _metric(metrics_text, 'loki_store_damaged_objects_total{kind="chunk"}') == 1


async def test_torn_index_segment_is_left_out_with_a_warning_and_the_rest_answers(
    loki_factory,
) -> None:
    loki = loki_factory()
    start = time.time_ns() - 600 * NS
    async with client() as session:
        # Two flushes: two index segments, one per stream.
        await _flushed(session, loki, [_stream("first", start)])
        await _flushed(session, loki, [_stream("second", start)])
        store = Path(loki.config["common"]["path_prefix"]) / "chunks"
        segments = sorted(store.rglob("*.idx"), key=lambda p: p.stat().st_mtime_ns)
        assert len(segments) == 2
        segments[0].write_bytes(segments[0].read_bytes()[:-9])  # torn: the end is missing
        status, body, _ = await call(
            "GET", loki.url, "/loki/api/v1/query_range",
            query='{app=~"first|second"}', start=str(start - NS), end=str(time.time_ns()),
            limit="1000",
        )  # fmt: skip
        assert status == 200, body
        assert any("damaged index segment" in w for w in body["warnings"])
        (stream,) = body["data"]["result"]
        assert stream["stream"] == {"app": "second"} and len(stream["values"]) == 40
        assert segments[0].name in loki.logs()
