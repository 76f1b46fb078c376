"""``loki-async bench``: measured figures, printed as JSON.

``bench push``     pushes realistic data to a running server and reports lines/s, MB/s
                   and push latency percentiles. Request bodies are encoded before the
                   clock starts, so the figure is the server's, not the client's encoder.
``bench storage``  cuts the loghub samples into chunks with the ingester's own code
                   (head blocks, deterministic zstd, chunk encoding) and reports raw
                   line bytes against stored chunk bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from .config import IngesterConfig
from .logproto import PushStream, encode_push_json, encode_push_protobuf

NS = 10**9
LOGHUB = Path(__file__).resolve().parents[2] / "shared" / "data" / "loghub"


def loghub_lines(directory: Path = LOGHUB) -> dict[str, list[bytes]]:
    """The loghub samples' lines by system, without line terminators."""
    out = {}
    for path in sorted(directory.glob("*.log")):
        lines = [ln.rstrip(b"\r") for ln in path.read_bytes().split(b"\n")]
        if lines and not lines[-1]:
            lines.pop()
        out[path.name.split("_")[0]] = lines
    if not out:
        raise SystemExit(f"no loghub samples in {directory} (use --loghub-dir)")
    return out


def synthetic_line(rng: random.Random, i: int) -> bytes:
    """A ~150-byte service log line in logfmt, as a typical application writes it."""
    level = rng.choices(("info", "debug", "warn", "error"), (70, 20, 7, 3))[0]
    return (
        f"ts={i} level={level} caller=handler.go:{rng.randint(10, 999)} "
        f'msg="request served" method={rng.choice(("GET", "POST", "PUT"))} '
        f"path=/api/v1/items/{rng.randint(1, 99999)} "
        f"status={rng.choice((200, 200, 201, 404, 500))} "
        f"duration={rng.randint(1, 900)}ms trace_id={rng.getrandbits(64):016x}"
    ).encode()


def make_batches(args: argparse.Namespace) -> tuple[list[bytes], int, int]:
    """Pre-encoded request bodies; returns (bodies, lines, raw line bytes)."""
    rng = random.Random(42)
    if args.source == "loghub":
        systems = loghub_lines(Path(args.loghub_dir))
        pool = [ln for lines in systems.values() for ln in lines]
        names = list(systems)
    else:
        pool = [synthetic_line(rng, i) for i in range(20000)]
        names = ["svc"]
    now = time.time_ns()
    span = int(args.days * 86400 * NS)
    first = now - span + 3600 * NS
    step = max((now - 60 * NS - first) // max(args.lines, 1), 1)
    bodies: list[bytes] = []
    raw = 0
    per_batch_streams = min(args.streams, args.batch)
    n = 0
    while n < args.lines:
        size = min(args.batch, args.lines - n)
        streams: dict[int, PushStream] = {}
        for k in range(size):
            idx = n + k
            sid = (idx // max(size // per_batch_streams, 1) + n) % args.streams
            s = streams.get(sid)
            if s is None:
                s = streams[sid] = PushStream(
                    [("job", "bench"), ("source", names[sid % len(names)]), ("stream", str(sid))],
                    [],
                    [],
                    None,
                )
            line = pool[idx % len(pool)]
            s.timestamps.append(first + idx * step)
            s.lines.append(line)
            raw += len(line)
        if args.format == "protobuf":
            body = encode_push_protobuf(list(streams.values()))
        else:
            body = encode_push_json(list(streams.values()))
            if args.format == "gzip":
                body = gzip.compress(body, 1)
        bodies.append(body)
        n += size
    return bodies, args.lines, raw


async def run_push(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    bodies, lines, raw = make_batches(args)
    headers = {
        "Content-Type": "application/x-protobuf"
        if args.format == "protobuf"
        else "application/json"
    }
    if args.format == "gzip":
        headers["Content-Encoding"] = "gzip"
    if args.tenant:
        headers["X-Scope-OrgID"] = args.tenant
    latencies: list[float] = []
    failures = 0
    queue = list(reversed(bodies))
    conn = aiohttp.TCPConnector(limit=args.connections)

    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal failures
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                async with session.post(
                    f"{args.url}/loki/api/v1/push", data=body, headers=headers
                ) as r:
                    await r.read()
                    if r.status != 204:
                        failures += 1
                        if failures == 1:
                            print(
                                f"push failed: {r.status} {await r.text()}",
                                file=__import__("sys").stderr,
                            )
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.connections)))
        elapsed = time.perf_counter() - t0
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(int(p * len(latencies)), len(latencies) - 1)] * 1000, 2)

    return {
        "bench": "push",
        "source": args.source,
        "format": args.format,
        "lines": lines,
        "streams": args.streams,
        "batch": args.batch,
        "connections": args.connections,
        "requests": len(bodies),
        "failed": failures,
        "seconds": round(elapsed, 3),
        "lines_per_s": round(lines / elapsed),
        "mb_per_s": round(raw / elapsed / 1e6, 2),
        "request_mb_per_s": round(sum(map(len, bodies)) / elapsed / 1e6, 2),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def run_storage(args: argparse.Namespace) -> dict[str, Any]:
    """Chunk the loghub samples as the ingester does (one stream per system)."""
    from array import array

    from .chunk import Codec, encode_chunk
    from .ingester import MemChunk

    cfg = IngesterConfig()
    codec = Codec(cfg.zstd_level)
    systems = loghub_lines(Path(args.loghub_dir))
    per_system = {}
    total_raw = total_stored = total_chunks = 0
    t0 = time.perf_counter()
    for name, lines in systems.items():
        lines = lines * args.repeat
        chunks = [MemChunk()]
        raw = 0
        for i, line in enumerate(lines):
            c = chunks[-1]
            c.head.append(
                array("q", [i * 1000]).tobytes(), array("I", [len(line)]).tobytes(), line, None
            )
            c.mint, c.maxt = min(c.mint, i * 1000), max(c.maxt, i * 1000)
            raw += len(line)
            if len(c.head.blob) >= cfg.chunk_block_size:
                c.cut(codec)
                if c.compressed_bytes >= cfg.chunk_target_size:
                    c.close(codec, "full", cfg.chunk_block_size)
                    chunks.append(MemChunk())
        if chunks[-1].head.ts or chunks[-1].blocks:
            chunks[-1].close(codec, "forced", cfg.chunk_block_size)
        stored = sum(len(encode_chunk(c.blocks)) for c in chunks if c.blocks)
        per_system[name] = {
            "raw_bytes": raw,
            "stored_bytes": stored,
            "ratio": round(raw / stored, 2),
        }
        total_raw += raw
        total_stored += stored
        total_chunks += sum(1 for c in chunks if c.blocks)
    elapsed = time.perf_counter() - t0
    return {
        "bench": "storage",
        "source": "loghub",
        "repeat": args.repeat,
        "zstd_level": cfg.zstd_level,
        "block_size": cfg.chunk_block_size,
        "chunks": total_chunks,
        "raw_bytes": total_raw,
        "stored_bytes": total_stored,
        "ratio": round(total_raw / total_stored, 2),
        "compress_mb_per_s": round(total_raw / elapsed / 1e6, 1),
        "systems": per_system,
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="loki-async bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="what", required=True)
    push = sub.add_parser("push", help="push throughput and latency against a running server")
    push.add_argument("--url", default="http://127.0.0.1:3100")
    push.add_argument("--lines", type=int, default=200_000)
    push.add_argument("--streams", type=int, default=16)
    push.add_argument("--batch", type=int, default=2000, help="lines per push request")
    push.add_argument("--connections", type=int, default=1)
    push.add_argument("--source", choices=("loghub", "synthetic"), default="loghub")
    push.add_argument("--format", choices=("json", "gzip", "protobuf"), default="protobuf")
    push.add_argument("--days", type=float, default=7.0, help="time span the lines cover")
    push.add_argument("--tenant", default="")
    push.add_argument("--loghub-dir", default=os.environ.get("LOGHUB_DIR", str(LOGHUB)))
    storage = sub.add_parser("storage", help="raw bytes against stored chunk bytes")
    storage.add_argument("--repeat", type=int, default=1, help="repeat each sample N times")
    storage.add_argument("--loghub-dir", default=os.environ.get("LOGHUB_DIR", str(LOGHUB)))
    args = p.parse_args(argv)
    result = asyncio.run(run_push(args)) if args.what == "push" else run_storage(args)
    print(json.dumps(result))
    return 1 if result.get("failed") else 0
