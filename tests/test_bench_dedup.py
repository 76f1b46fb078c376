"""``bench dedup``: its data is a deterministic, skewed function of its seed, each stream
is pushed by one client in time order, and a tiny end-to-end run (RF=1 baseline and the
``rf3`` scenario) prints consistent figures."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

from loki_async.bench import (
    HOUR_NS,
    DedupStream,
    dedup_clients,
    dedup_dataset,
    dedup_expected,
    dedup_pushes,
    zipf_counts,
)
from loki_async.logproto import decode_push, format_labels

REPO = Path(__file__).resolve().parents[1]
END = 1_700_000_000 * 10**9
SYSTEMS = {
    "Alpha": [f"alpha line {i} é".encode() for i in range(50)],
    "Beta": [f"beta {i} ".encode() * 3 for i in range(7)],
    "Gamma": [b"gamma \xff invalid utf-8", b"gamma ok"],
}


def data(seed: int = 7) -> list[DedupStream]:
    return dedup_dataset(20_000, 60, 3.0, END, seed, systems=SYSTEMS)


def test_the_data_is_a_function_of_the_seed() -> None:
    a, b = data(), data()
    assert [(s.labels, s.ts, s.lines) for s in a] == [(s.labels, s.ts, s.lines) for s in b]
    assert [s.ts for s in data(8)] != [s.ts for s in a]
    pa, pb = dedup_pushes(a, 4, seed=7), dedup_pushes(b, 4, seed=7)
    assert [[p.body for p in ps] for ps in pa] == [[p.body for p in ps] for ps in pb]


def test_streams_are_skewed_and_timestamps_strictly_increase() -> None:
    d = data()
    assert len(d) == 60 and sum(len(s.ts) for s in d) == 20_000
    assert {s.kind for s in d} == {"loghub", "synthetic"}
    assert len({s.canonical for s in d}) == 60
    sizes = sorted((len(s.ts) for s in d), reverse=True)
    assert sizes[0] > 20 * sizes[-1]  # a few heavy streams, many light ones
    assert sum(sizes[:6]) > 0.4 * sum(sizes)
    for s in d:
        assert s.labels == sorted(s.labels) and ("job", "dedup") in s.labels
        assert all(a < b for a, b in zip(s.ts, s.ts[1:], strict=False))
        assert END - 3 * HOUR_NS <= s.ts[0] and s.ts[-1] < END + len(s.ts)
        for line in s.lines:
            line.decode()  # valid UTF-8: JSON bodies carry it unchanged
    assert len(dedup_expected(d)) == 20_000
    counts = zipf_counts(1000, 10, 1.1, 5, random.Random(1))
    assert sum(counts) == 1000 and min(counts) >= 5


def test_each_stream_is_pushed_by_one_client_in_time_order() -> None:
    d = data()
    owned = dedup_clients(d, 4)
    assert sorted(i for o in owned for i in o) == list(range(len(d)))
    pushes = dedup_pushes(d, 4, seed=7, batch=(10, 200), json_share=0.5)
    by_labels = {s.canonical: s for s in d}
    pushed: dict[str, list[tuple[int, bytes]]] = {}
    client_of: dict[str, int] = {}
    formats = set()
    for c, reqs in enumerate(pushes):
        for p in reqs:
            formats.add(p.fmt)
            ctype = "application/json" if p.fmt == "json" else "application/x-protobuf"
            streams = decode_push(p.body, ctype, "")
            assert 10 <= p.lines <= 200 or p is reqs[-1]
            for ps in streams:
                key = ps.labels if isinstance(ps.labels, str) else format_labels(ps.labels)
                assert client_of.setdefault(key, c) == c
                pushed.setdefault(key, []).extend(zip(ps.timestamps, ps.lines, strict=True))
    assert formats == {"json", "protobuf"}
    for key, entries in pushed.items():
        s = by_labels[key]
        assert entries == list(zip(s.ts, s.lines, strict=True))
    assert len(pushed) == len(d)


def test_a_tiny_run_end_to_end() -> None:
    cmd = [sys.executable, "-m", "loki_async.cli", "bench", "dedup", "--lines", "4000"]
    cmd += ["--streams", "24", "--clients", "3", "--scenarios", "rf3", "--stagger", "0.2"]
    cmd += ["--block-size", "4KB", "--target-size", "16KB", "--batch-max", "400"]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["bench"] == "dedup" and out["failed"] == [] and out["lines_match"] is True
    assert out["config"]["chunk_block_size"] == "4KB" and out["dataset"]["lines"] == 4000
    assert list(out["scenarios"]) == ["rf3"]
    for name, fig in [("rf1", out["baseline"]), *out["scenarios"].items()]:
        for key in ("chunk_bytes", "index_bytes", "total_bytes", "chunks", "pushes", "lines"):
            assert key in fig, (name, key)
        assert fig["lines"] == 4000 and fig["lines_match"] is True, name
        assert fig["total_bytes"] == fig["chunk_bytes"] + fig["index_bytes"] > 0
        assert fig["pushes"]["ok"] == fig["pushes"]["requests"] == out["dataset"]["requests"]
        for f in [fig["chunks"], *fig["per_ingester"].values()]:
            assert f["uploaded"] + f["skipped"]["recent"] + f["skipped"]["exists"] == f["flushed"]
        assert fig["chunks"]["uploaded"] == fig["chunk_objects"], name
        assert fig["unindexed_chunks"] == 0 and fig["index_refs_missing"] == 0, name
    assert len(out["baseline"]["per_ingester"]) == 1
    rf3 = out["scenarios"]["rf3"]
    assert len(rf3["per_ingester"]) == 3 and rf3["rf"] == 3
    for key in ("amplification", "amplification_chunks"):
        assert math.isfinite(rf3[key]) and rf3[key] >= 1.0, key
    assert rf3["lines_match_baseline"] is True
    assert set(rf3["divergence"]) >= {"chunks_not_in_baseline", "bytes_not_in_baseline"}
