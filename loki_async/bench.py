"""``loki-async bench``: measured figures, printed as JSON.

``bench push``     pushes realistic data to a running server and reports lines/s, MB/s
                   and push latency percentiles. Request bodies are encoded before the
                   clock starts, so the figure is the server's, not the client's encoder.
``bench query``    runs a query N times against a running server and reports median,
                   min and max latency and the bytes and lines it processed.
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
import statistics
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


APPS = ("api", "auth", "billing", "search", "worker")
LEVELS = ("info", "debug", "warn", "error")
LEVEL_WEIGHTS = (70, 20, 7, 3)
# The needle of the trace-ID benchmark: exactly one line of the synthetic set carries it.
NEEDLE_TRACE_ID = "7d3f0c9a5b1e4f2a"


def synthetic_line(
    rng: random.Random, level: str, trace_id: str = "", fmt: str = "logfmt"
) -> bytes:
    """A ~150-byte service log line in logfmt (or JSON, ~190 bytes), as a typical
    application writes it. Durations are mostly short with a long tail (about 2% above
    500ms)."""
    fields = {
        "level": level,
        "caller": f"handler.go:{rng.randint(10, 999)}",
        "msg": "request served",
        "method": rng.choice(("GET", "POST", "PUT")),
        "path": f"/api/v1/items/{rng.randint(1, 99999)}",
        "status": rng.choice((200, 200, 200, 201, 404, 500)),
        "duration": f"{int(rng.lognormvariate(4.2, 1.0))}ms",
        "bytes": rng.randint(100, 99999),
        "trace_id": trace_id or f"{rng.getrandbits(64):016x}",
    }
    if fmt == "json":
        return json.dumps(fields, separators=(",", ":")).encode()
    return " ".join(
        f'{k}="{v}"' if isinstance(v, str) and " " in v else f"{k}={v}" for k, v in fields.items()
    ).encode()


def synthetic_entries(
    lines: int, seed: int = 42, fmt: str = "logfmt"
) -> list[tuple[int, int, bytes]]:
    """``lines`` entries (app index, level index, line) over 20 streams (5 apps by 4
    levels); the line at two thirds is in app "api" and carries NEEDLE_TRACE_ID."""
    rng = random.Random(seed)
    needle_at = lines * 2 // 3
    out = []
    levels = rng.choices(range(len(LEVELS)), LEVEL_WEIGHTS, k=lines)
    for i in range(lines):
        app = 0 if i == needle_at else rng.randrange(len(APPS))
        lv = levels[i]
        line = synthetic_line(rng, LEVELS[lv], NEEDLE_TRACE_ID if i == needle_at else "", fmt)
        out.append((app, lv, line))
    return out


def make_batches(args: argparse.Namespace) -> tuple[list[bytes], int, int]:
    """Pre-encoded request bodies; returns (bodies, lines, raw line bytes)."""
    now = time.time_ns()
    span = int(args.days * 86400 * NS)
    first = now - span + 3600 * NS
    step = max((now - 60 * NS - first) // max(args.lines, 1), 1)
    if args.source == "loghub":
        systems = loghub_lines(Path(args.loghub_dir))
        pool = [ln for lines in systems.values() for ln in lines]
        names = list(systems)
        entries = [(i % args.streams, 0, pool[i % len(pool)]) for i in range(args.lines)]

        def labels(sid: int, _: int) -> list[tuple[str, str]]:
            return [("job", "bench"), ("source", names[sid % len(names)]), ("stream", str(sid))]
    else:
        entries = synthetic_entries(args.lines, fmt=args.line_format)
        job = "bench" if args.line_format == "logfmt" else f"bench-{args.line_format}"

        def labels(app: int, lv: int) -> list[tuple[str, str]]:
            return [("app", APPS[app]), ("job", job), ("level", LEVELS[lv])]

    bodies: list[bytes] = []
    raw = 0
    for n in range(0, args.lines, args.batch):
        streams: dict[tuple[int, int], PushStream] = {}
        for idx in range(n, min(n + args.batch, args.lines)):
            a, b, line = entries[idx]
            s = streams.get((a, b))
            if s is None:
                s = streams[(a, b)] = PushStream(labels(a, b), [], [], None)
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
        "streams": args.streams if args.source == "loghub" else len(APPS) * len(LEVELS),
        **({"needle_trace_id": NEEDLE_TRACE_ID} if args.source == "synthetic" else {}),
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


async def run_query(args: argparse.Namespace) -> dict[str, Any]:
    """Run one query ``--runs`` times against a running server (results cache bypassed
    with ``Cache-Control: no-cache``, as Loki's frontend honours it)."""
    import aiohttp

    params = {"query": args.query, "limit": str(args.limit)}
    if args.instant:
        path = "/loki/api/v1/query"
        if args.end:
            params["time"] = args.end
    else:
        path = "/loki/api/v1/query_range"
        params["since"] = args.since
        for name in ("start", "end", "step", "direction"):
            if getattr(args, name):
                params[name] = getattr(args, name)
    headers = {"Cache-Control": "no-cache"}
    if args.tenant:
        headers["X-Scope-OrgID"] = args.tenant
    latencies: list[float] = []
    body: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for _ in range(args.runs):
            t0 = time.perf_counter()
            async with session.get(f"{args.url}{path}", params=params, headers=headers) as r:
                raw = await r.read()
                if r.status != 200:
                    raise SystemExit(f"query failed: {r.status} {raw.decode(errors='replace')}")
            latencies.append(time.perf_counter() - t0)
            body = json.loads(raw)
    data = body["data"]
    summary = data.get("stats", {}).get("summary", {})
    result = data["result"]
    if data["resultType"] == "streams":
        returned = sum(len(s["values"]) for s in result)
    else:
        returned = len(result)
    med = statistics.median(latencies)
    nbytes = summary.get("totalBytesProcessed", 0)
    return {
        "bench": "query",
        "query": args.query,
        "params": {k: v for k, v in params.items() if k != "query"},
        "runs": args.runs,
        "median_s": round(med, 3),
        "min_s": round(min(latencies), 3),
        "max_s": round(max(latencies), 3),
        "result_type": data["resultType"],
        "returned": returned,
        "lines_processed": summary.get("totalLinesProcessed", 0),
        "bytes_processed": nbytes,
        "bytes_per_s": round(nbytes / med) if med else 0,
        "splits": summary.get("splits", 0),
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
    push.add_argument(
        "--line-format",
        choices=("logfmt", "json"),
        default="logfmt",
        help="synthetic lines: logfmt (job=bench) or JSON (job=bench-json)",
    )
    push.add_argument("--days", type=float, default=7.0, help="time span the lines cover")
    push.add_argument("--tenant", default="")
    push.add_argument("--loghub-dir", default=os.environ.get("LOGHUB_DIR", str(LOGHUB)))
    storage = sub.add_parser("storage", help="raw bytes against stored chunk bytes")
    storage.add_argument("--repeat", type=int, default=1, help="repeat each sample N times")
    storage.add_argument("--loghub-dir", default=os.environ.get("LOGHUB_DIR", str(LOGHUB)))
    query = sub.add_parser("query", help="latency of one query against a running server")
    query.add_argument("--url", default="http://127.0.0.1:3100")
    query.add_argument("--query", required=True)
    query.add_argument("--start", default="", help="ns, seconds or RFC3339 (default: --since)")
    query.add_argument("--end", default="", help="ns, seconds or RFC3339 (default: now)")
    query.add_argument("--since", default="7d", help="range when --start is not given")
    query.add_argument("--step", default="", help="metric queries: duration or seconds")
    query.add_argument("--limit", type=int, default=100)
    query.add_argument("--direction", default="")
    query.add_argument("--instant", action="store_true", help="use /query at --end")
    query.add_argument("--runs", type=int, default=5)
    query.add_argument("--tenant", default="")
    args = p.parse_args(argv)
    if args.what == "push":
        result = asyncio.run(run_push(args))
    elif args.what == "query":
        result = asyncio.run(run_query(args))
    else:
        result = run_storage(args)
    print(json.dumps(result))
    return 1 if result.get("failed") else 0
