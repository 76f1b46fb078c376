"""Replicas store a chunk once: cuts that depend on the entries only, the ring's write
and read sets, the quorum and the repair of a replica that missed a push.

Ingesters here run in-process on a real filesystem store (no NATS): each is fed the
same entries the way a replica could see them, and the stored chunk keys are compared.
"""

from __future__ import annotations

import asyncio
import random
import time
import types
from array import array
from pathlib import Path

import pytest

from loki_async import failpoints
from loki_async.chunk import ChunkReader, Codec
from loki_async.config import IngesterConfig, LimitsConfig
from loki_async.distributor import Distributor, ReplicaRepair
from loki_async.errors import StorageError, Unavailable
from loki_async.ingester import Chunker, Ingester, MemChunk
from loki_async.labels import fingerprint
from loki_async.logproto import PushStream
from loki_async.objstore import FilesystemObjectClient
from loki_async.ring import ACTIVE, JOINING, LEAVING, IngesterDesc, Ring, tokens_for
from loki_async.store import Store

LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"
BASE = 1_700_000_000 * 10**9
LABELS = '{app="replica", host="h1"}'
SMALL = {"chunk_block_size": 16 * 1024, "chunk_target_size": 48 * 1024}


def loghub_entries(n: int) -> tuple[list[int], list[bytes]]:
    lines = [
        line.encode()
        for f in sorted(LOGHUB.rglob("*.log"))
        for line in f.read_text(errors="replace").splitlines()
        if line
    ]
    lines = (lines * (n // max(len(lines), 1) + 1))[:n]
    rng = random.Random(7)
    ts = [BASE + i * 20_000_000 + rng.randrange(1000) for i in range(n)]
    return ts, lines


def batches(ts: list[int], lines: list[bytes], seed: int) -> list[tuple[list[int], list[bytes]]]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(ts):
        n = rng.randrange(1, 300)
        out.append((ts[i : i + n], lines[i : i + n]))
        i += n
    return out


class Replica:
    """An ingester without NATS or WAL, writing to its own directory."""

    def __init__(self, root: Path, name: str, **cfg: int) -> None:
        self.objects = FilesystemObjectClient(root / name)
        self.ingester = Ingester(
            IngesterConfig(**cfg),
            store=Store(self.objects, name),
            nc=None,
            lifecycler=types.SimpleNamespace(id=name),  # only its id is used here
            wal=None,
        )

    def push(self, ts: list[int], lines: list[bytes], labels: str = LABELS) -> None:
        wire = [
            labels,
            fingerprint(labels),
            array("q", ts).tobytes(),
            array("I", map(len, lines)).tobytes(),
            b"".join(lines),
            None,
        ]
        self.ingester._apply({"t": "fake", "s": [wire]}, 0)

    async def chunks(self) -> dict[str, bytes]:
        await self.ingester.flush(force=True)
        root = self.objects._root
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and "/chunks/" in p.as_posix()
        }


@pytest.fixture(scope="module")
def data() -> tuple[list[int], list[bytes]]:
    return loghub_entries(40_000)


async def test_batching_does_not_change_the_chunks(tmp_path, data) -> None:
    ts, lines = data
    a, b = Replica(tmp_path, "a", **SMALL), Replica(tmp_path, "b", **SMALL)
    for bt, bl in batches(ts, lines, 1):
        a.push(bt, bl)
    for bt, bl in batches(ts, lines, 2):
        b.push(bt, bl)
    ka, kb = await a.chunks(), await b.chunks()
    assert len(ka) > 20, "the data should make many chunks"
    assert ka == kb


async def test_late_retried_and_reordered_pushes_give_the_same_chunks(tmp_path, data) -> None:
    """A push that arrives a little late (a repair), twice (a retry whose first send did
    arrive) or with its entries reversed is sorted into place: same chunks."""
    ts, lines = data
    parts = batches(ts, lines, 3)
    a, b = Replica(tmp_path, "a", **SMALL), Replica(tmp_path, "b", **SMALL)
    for part in parts:
        a.push(*part)
    late = {10: 11, 40: 41, 100: 101}  # pushed right after these
    for i, part in enumerate(parts):
        if i in late:
            continue
        bt, bl = part
        if i == 120:  # entries reversed within the push
            bt, bl = bt[::-1], bl[::-1]
        b.push(bt, bl)
        for k, after in late.items():
            if after == i:
                b.push(*parts[k])
        if i == 70:
            b.push(*parts[69])
    assert (await a.chunks()) == (await b.chunks())


async def test_a_push_late_by_more_than_a_chunk_is_sorted_into_its_chunk(tmp_path, data) -> None:
    """Late past chunk boundaries: the chunks still in memory are re-cut together."""
    ts, lines = data
    parts = batches(ts, lines, 8)
    a, b = Replica(tmp_path, "a", **SMALL), Replica(tmp_path, "b", **SMALL)
    for part in parts:
        a.push(*part)
    for i, part in enumerate(parts):
        if i not in (40, 41):
            b.push(*part)
        if i == 80:
            b.push(*parts[40])
        if i == 44:
            b.push(*parts[41])
    assert (await a.chunks()) == (await b.chunks())


async def test_entries_late_past_a_flush_make_a_chunk_of_their_own(tmp_path, data) -> None:
    ts, lines = data
    parts = batches(ts, lines, 9)
    a, b = Replica(tmp_path, "a", **SMALL), Replica(tmp_path, "b", **SMALL)
    for part in parts:
        a.push(*part)
    for i, part in enumerate(parts):
        if i != 40:
            b.push(*part)
        if i == 80:
            await b.ingester.flush()  # the chunk the late push belongs to is gone
            b.push(*parts[40])
    ka, kb = await a.chunks(), await b.chunks()
    assert len(set(ka) - set(kb)) <= 2, f"{len(set(ka) - set(kb))} of {len(ka)} chunks differ"
    assert len(set(kb) - set(ka)) <= 3


async def test_a_missed_push_changes_only_the_chunk_that_holds_it(tmp_path, data) -> None:
    ts, lines = data
    parts = batches(ts, lines, 4)
    a, b = Replica(tmp_path, "a", **SMALL), Replica(tmp_path, "b", **SMALL)
    missed = [30, 90]
    for i, part in enumerate(parts):
        a.push(*part)
        if i not in missed:
            b.push(*part)
    ka, kb = await a.chunks(), await b.chunks()
    differ = set(ka) - set(kb)
    assert 1 <= len(differ) <= len(missed) + 1, f"{len(differ)} of {len(ka)} chunks differ"
    # The chunks that differ are the ones covering the missed entries.
    missed_ts = [parts[i][0][0] for i in missed]
    for key in differ:
        r = ChunkReader.open(ka[key])
        assert any(r.metas[0].mint <= t <= r.metas[-1].maxt for t in missed_ts)


async def test_a_replica_that_joins_late_falls_into_step(tmp_path, data) -> None:
    ts, lines = data
    parts = batches(ts, lines, 5)
    a, b = Replica(tmp_path, "a", **SMALL), Replica(tmp_path, "b", **SMALL)
    for i, part in enumerate(parts):
        a.push(*part)
        if i >= len(parts) // 3:
            b.push(*part)
    ka, kb = await a.chunks(), await b.chunks()
    shared = set(ka) & set(kb)
    assert len(shared) >= len(kb) - 3, f"only {len(shared)} of {len(kb)} chunks in step"


async def test_chunks_never_cross_a_window_and_hold_every_entry_once(tmp_path, data) -> None:
    ts, lines = data
    window_s = 120.0
    a = Replica(tmp_path, "a", max_chunk_age_s=window_s, **SMALL)
    for bt, bl in batches(ts, lines, 6):
        a.push(bt, bl)
    codec = Codec()
    seen: list[int] = []
    for data_ in (await a.chunks()).values():
        r = ChunkReader.open(data_)
        first, last = r.metas[0].mint, r.metas[-1].maxt
        assert first // int(window_s * 1e9) == last // int(window_s * 1e9)
        for i in range(len(r.metas)):
            seen.extend(r.block(i, codec).ts)
    assert sorted(seen) == ts


def test_block_and_chunk_sizes_average_their_targets(data) -> None:
    ts, lines = data
    ck = Chunker(Codec(), 16 * 1024, 48 * 1024, 7200)
    out = ck.append(MemChunk(), array("q", ts), array("I", map(len, lines)), b"".join(lines), None)
    closed = out[:-1]
    # Line bytes of each block: its raw length less the header and the ts/length columns.
    blocks = [b.raw_length - 5 - 12 * b.entries for c in closed for b in c.blocks]
    assert 8 * 1024 < sum(blocks) / len(blocks) < 32 * 1024
    assert max(blocks) <= 2 * 16 * 1024
    sizes = [c.compressed_bytes for c in closed]
    assert 16 * 1024 < sum(sizes) / len(sizes) < 144 * 1024
    assert max(sizes) <= 4 * 48 * 1024 + max(b.compressed_bytes for b in closed) + 1


# --------------------------------------------------------------------------- ring


def desc(i: str, state: str = ACTIVE, age_s: float = 0.0) -> IngesterDesc:
    return IngesterDesc(i, state, tuple(tokens_for(i, 64)), time.time_ns() - int(age_s * 1e9))


def ring_of(*members: IngesterDesc, rf: int = 3) -> Ring:
    ring = Ring(None, heartbeat_timeout_s=5.0, replication_factor=rf)
    ring._members = {m.id: m for m in members}
    ring._rebuild()
    return ring


async def test_write_set_extends_past_leaving_but_not_past_dead() -> None:
    keys = range(0, 1 << 32, (1 << 32) // 500)
    ring = ring_of(desc("a"), desc("b"), desc("c"), desc("d"))
    for k in keys:
        owners, dead = ring.get(k)
        assert len({o.id for o in owners}) == 3 and dead == 0
    leaving = ring_of(desc("a"), desc("b"), desc("c", LEAVING), desc("d", JOINING), desc("e"))
    for k in keys:
        owners, dead = leaving.get(k)
        assert {o.id for o in owners} == {"a", "b", "e"} and dead == 0
    dead_ring = ring_of(desc("a"), desc("b"), desc("c", age_s=60), desc("d"))
    counts = [dead_ring.get(k) for k in keys]
    assert all(len(o) + d == 3 for o, d in counts)
    assert any(d == 1 for _, d in counts) and all("c" not in {x.id for x in o} for o, _ in counts)


async def test_read_set_includes_leaving_and_counts_dead_against_tolerance() -> None:
    ring = ring_of(desc("a"), desc("b", LEAVING), desc("c", JOINING))
    live, tolerated = ring.read_set()
    assert {m.id for m in live} == {"a", "b", "c"} and tolerated == 1
    ring = ring_of(desc("a"), desc("b"), desc("c", age_s=60))
    live, tolerated = ring.read_set()
    assert {m.id for m in live} == {"a", "b"} and tolerated == 0
    ring = ring_of(desc("a"), desc("b", age_s=60), desc("c", age_s=60))
    assert ring.read_set()[1] < 0
    assert ring_of(desc("a"), rf=1).read_set()[1] == 0


# --------------------------------------------------------------------------- quorum


class Ingesters:
    """Ingester clients that fail on demand and record what they received."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.got: dict[str, int] = {}

    async def push(self, ingester: IngesterDesc, payload: bytes) -> None:
        if ingester.id in self.failing:
            raise Unavailable(f"no responders on loki.ingester.{ingester.id}.push")
        self.got[ingester.id] = self.got.get(ingester.id, 0) + 1


def push_streams() -> list[PushStream]:
    now = time.time_ns()
    return [PushStream([("app", "q"), ("n", str(i))], [now], [b"x"], None) for i in range(20)]


async def test_quorum_acknowledges_with_one_replica_down_and_repairs_it() -> None:
    ingesters = Ingesters({"c"})
    repair = ReplicaRepair(ingesters, 1 << 20)
    repair.DELAYS_S = (0.01, 0.01, 0.5)
    ring = ring_of(desc("a"), desc("b"), desc("c"))
    dist = Distributor(LimitsConfig(), ring, ingesters, repair=repair)
    await dist.push("t", push_streams())
    assert ingesters.got == {"a": 1, "b": 1}
    assert repair.pending_bytes > 0
    ingesters.failing.clear()  # the replica is back: the repair reaches it
    for _ in range(100):
        if ingesters.got.get("c"):
            break
        await asyncio.sleep(0.01)
    assert ingesters.got["c"] == 1
    await asyncio.sleep(0.02)
    assert repair.pending_bytes == 0
    await repair.stop()


async def test_two_replicas_down_is_a_clear_503_naming_the_quorum() -> None:
    ring = ring_of(desc("a"), desc("b"), desc("c"))
    dist = Distributor(LimitsConfig(), ring, Ingesters({"b", "c"}))
    with pytest.raises(Unavailable) as e:
        await dist.push("t", push_streams())
    msg = e.value.message
    assert "quorum not reached" in msg and "1 of 3" in msg and "2 required" in msg
    dead = ring_of(desc("a"), desc("b", age_s=60), desc("c", age_s=60))
    with pytest.raises(Unavailable) as e:
        await Distributor(LimitsConfig(), dead, Ingesters(set())).push("t", push_streams())
    assert "at least 2 live ingesters required, could only find 1" in e.value.message


async def test_repair_memory_is_bounded() -> None:
    ingesters = Ingesters({"c"})
    repair = ReplicaRepair(ingesters, 10)
    repair.submit(desc("c"), b"x" * 8)
    repair.submit(desc("c"), b"x" * 8)  # over the bound: dropped, counted
    assert repair.pending_bytes == 8
    await repair.stop()


def test_failpoints_parse_and_name_what_is_wrong() -> None:
    assert failpoints.parse(" distributor.replica_send=0.01 ,") == {
        "distributor.replica_send": 0.01
    }
    for bad in ("nope=0.1", "distributor.replica_send", "distributor.replica_send=2"):
        with pytest.raises(ValueError, match=failpoints.ENV):
            failpoints.parse(bad)
    failpoints.configure("distributor.replica_send=1")
    try:
        assert failpoints.hit("distributor.replica_send")
    finally:
        failpoints.configure("")
    assert not failpoints.hit("distributor.replica_send")


async def test_a_failing_upload_holds_back_only_its_own_chunks(tmp_path) -> None:
    """One tenant's chunk that cannot be stored stays in memory for the next flush; the
    other tenant's chunks are flushed and indexed meanwhile."""
    r = Replica(tmp_path, "a")
    wire = lambda labels, t: [  # noqa: E731
        labels, fingerprint(labels), array("q", [t]).tobytes(), array("I", [5]).tobytes(),
        b"hello", None,
    ]  # fmt: skip
    r.ingester._apply({"t": "good", "s": [wire('{app="x"}', BASE)]}, 0)
    r.ingester._apply({"t": "bad", "s": [wire('{app="x"}', BASE)]}, 0)
    put = r.objects.put_if_absent

    async def failing(key: str, data: bytes) -> bool:
        if key.startswith("bad/"):
            raise StorageError("disk on fire")
        return await put(key, data)

    r.objects.put_if_absent = failing  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="disk on fire"):
        await r.ingester.flush(force=True)
    assert [t for t, _ in r.ingester.streams] == ["bad"]
    assert list((r.objects._root / "good" / "index").rglob("*.idx"))
    r.objects.put_if_absent = put  # type: ignore[method-assign]
    assert await r.ingester.flush(force=True) == 1
    assert not r.ingester.streams
