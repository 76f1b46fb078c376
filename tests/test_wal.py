import asyncio
from pathlib import Path

from loki_async import metrics
from loki_async.wal import WAL


async def write(wal: WAL, records: list[bytes]) -> list[int]:
    applied: list[int] = []
    segs = await asyncio.gather(*(wal.append(r, applied.append) for r in records))
    assert applied == segs  # applied once each, before the append returned
    return segs


async def test_records_survive_and_replay_in_order(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    list(wal.replay())
    wal.open()
    records = [f"record {i}".encode() * (i + 1) for i in range(200)]
    await write(wal, records)
    await wal.close()
    again = WAL(tmp_path)
    assert [p for _, p in again.replay()] == records


async def test_group_commit_uses_fewer_fsyncs_than_records(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    wal.open()
    before = metrics.WAL_FSYNCS._value.get()
    await write(wal, [b"x" * 100] * 500)
    assert metrics.WAL_FSYNCS._value.get() - before < 500
    await wal.close()


async def test_truncated_tail_recovers_intact_records_and_counts_damage(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    wal.open()
    await write(wal, [b"a" * 50, b"b" * 50, b"c" * 50])
    await wal.close()
    seg = sorted(tmp_path.glob("*.wal"))[-1]
    seg.write_bytes(seg.read_bytes()[:-20])
    before = metrics.WAL_CORRUPTIONS._value.get()
    assert [p for _, p in WAL(tmp_path).replay()] == [b"a" * 50, b"b" * 50]
    assert metrics.WAL_CORRUPTIONS._value.get() == before + 1


async def test_new_records_go_to_a_new_segment_after_damage(tmp_path: Path) -> None:
    wal = WAL(tmp_path)
    wal.open()
    await write(wal, [b"first"])
    await wal.close()
    seg = sorted(tmp_path.glob("*.wal"))[-1]
    seg.write_bytes(seg.read_bytes() + b"\x05\x00")  # torn header
    wal = WAL(tmp_path)
    assert [p for _, p in wal.replay()] == [b"first"]
    wal.open()
    await write(wal, [b"second"])
    await wal.close()
    assert [p for _, p in WAL(tmp_path).replay()] == [b"first", b"second"]


async def test_truncate_before_drops_flushed_segments(tmp_path: Path) -> None:
    wal = WAL(tmp_path, segment_size=100)
    wal.open()
    segs = []
    for i in range(5):
        segs += await write(wal, [bytes([i]) * 200])
    assert len(set(segs)) >= 4
    wal.truncate_before(segs[-1])
    remaining = [p for _, p in WAL(tmp_path).replay()]
    assert remaining == [bytes([4]) * 200]
    await wal.close()
