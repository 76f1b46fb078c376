"""``loki-async bench``: measured figures, printed as JSON.

``bench push``     pushes realistic data to a running server and reports lines/s, MB/s
                   and push latency percentiles. Request bodies are encoded before the
                   clock starts, so the figure is the server's, not the client's encoder.
``bench query``    runs a query N times against a running server and reports median,
                   min and max latency and the bytes and lines it processed.
``bench storage``  cuts the loghub samples into chunks with the ingester's own code
                   (head blocks, deterministic zstd, chunk encoding) and reports raw
                   line bytes against stored chunk bytes.
``bench async``    self-contained: starts its own nats-server, a ``-target=all`` process
                   without workers and ``-target=querier-worker`` processes in a temp
                   dir, pushes and flushes 30 days of synthetic logs for two tenants,
                   then measures async queries: the overhead of ``async=true`` over a
                   sync query (inline and ticket long-poll), a cold 30-day
                   aggregation (~720 one-hour splits) with 1..``--workers-max`` workers,
                   the same with the split cache warm, the latency of a small query of
                   another tenant while that aggregation runs (fairness), and tickets
                   accepted per second. CPU seconds per process are given per phase.
                   Every process it started is stopped at the end.
``bench trace``    self-contained: starts its own nats-server and one ``-target=all``
                   process, pushes and flushes 7 days of logfmt lines (3 apps x 4 levels)
                   that belong to traces with X-Ray and UUIDv7 ids (an id states the time
                   its trace began), then searches two of those ids
                   (``{job="bench"} |= "<id>"``, 1h splits) ``--runs`` times each with
                   coprocessors on and with ``coprocessors=none``: latency, splits
                   planned, skipped and executed, bytes and lines processed, and one async
                   run with its ticket's progress. Exits 1 if on and off (or async and
                   sync) return different results, or a search misses a trace's lines.
``bench dedup``    self-contained: what replication costs in the store. Generates one
                   seeded dataset (loghub systems split over hosts and synthetic
                   services; zipf-skewed volumes over ``--hours``) and pushes it, from
                   ``--clients`` concurrent clients each owning some streams (random
                   batch sizes, jittered pauses, protobuf and JSON bodies), to fresh
                   clusters: an RF=1 baseline (nats-server, one ``-target=ingester``, one
                   ``-target=distributor``) and each of ``--scenarios``: ``rf3`` (three
                   ingesters started ``--stagger`` s apart, RF=3), ``rf3_fault`` (the
                   distributor's ``distributor.replica_send`` failpoint at ``--fault``:
                   a push misses one replica; replica repair on) and
                   ``rf3_fault_no_repair``. After ``POST /flush`` on each ingester it
                   reports stored chunk and index bytes against the baseline (the
                   amplification), chunks flushed, uploaded and skipped, repairs, and
                   where chunks differ from the baseline's. Every entry of every stored
                   chunk is checked against the data. Exits 1 if a store does not hold
                   exactly the lines pushed.
``bench chaos``    self-contained: kill -9 of each kind of process (a single process
                   with its WAL; in the production topology an ingester of three, the
                   distributor, the query-frontend, a worker, a NATS node, the S3
                   server) under push and query load; acknowledged lines against lines
                   read back, failures during and after, recovery time
                   (``bench chaos -h``; ``loki_async/chaos.py``).
``bench soak``     self-contained: ``--minutes`` of mixed load on one process with its
                   memory, open files and tasks sampled (``loki_async/soak.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from .config import IngesterConfig
from .logproto import PushStream, encode_push_json, encode_push_protobuf, format_labels
from .processes import (
    REPO,
    Child,
    free_port,
    spawn,
    stop_child,
    wait_port,
    wait_ready,
)

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

        def labels(key: tuple[int, int]) -> list[tuple[str, str]]:
            sid = key[0]
            return [("job", "bench"), ("source", names[sid % len(names)]), ("stream", str(sid))]
    else:
        entries = synthetic_entries(args.lines, fmt=args.line_format)
        job = "bench" if args.line_format == "logfmt" else f"bench-{args.line_format}"

        def labels(key: tuple[int, int]) -> list[tuple[str, str]]:
            return [("app", APPS[key[0]]), ("job", job), ("level", LEVELS[key[1]])]

    rows = [(first + idx * step, (a, b), line) for idx, (a, b, line) in enumerate(entries)]
    bodies, raw = encode_batches(rows, labels, args.batch, args.format)
    return bodies, args.lines, raw


def encode_batches(
    rows: Sequence[tuple[int, Hashable, bytes]],
    labels: Callable[[Any], list[tuple[str, str]]],
    batch: int,
    fmt: str,
) -> tuple[list[bytes], int]:
    """Push request bodies (``fmt``: protobuf, json or gzip) of ``batch`` rows each, a
    row being (timestamp ns, stream key, line) and ``labels(key)`` the stream's labels;
    returns (bodies, raw line bytes)."""
    bodies: list[bytes] = []
    raw = 0
    for n in range(0, len(rows), batch):
        streams: dict[Hashable, PushStream] = {}
        for ts, key, line in rows[n : n + batch]:
            s = streams.get(key)
            if s is None:
                s = streams[key] = PushStream(labels(key), [], [], None)
            s.timestamps.append(ts)
            s.lines.append(line)
            raw += len(line)
        if fmt == "protobuf":
            body = encode_push_protobuf(list(streams.values()))
        else:
            body = encode_push_json(list(streams.values()))
            if fmt == "gzip":
                body = gzip.compress(body, 1)
        bodies.append(body)
    return bodies, raw


async def push_bodies(
    url: str, bodies: list[bytes], fmt: str, tenant: str, connections: int
) -> tuple[list[float], int, float]:
    """POST ``bodies`` (encoded as ``fmt``) to ``url``'s push endpoint over
    ``connections`` connections: (sorted latencies in s, failed requests, seconds)."""
    import aiohttp

    ctype = "application/x-protobuf" if fmt == "protobuf" else "application/json"
    headers = {"Content-Type": ctype}
    if fmt == "gzip":
        headers["Content-Encoding"] = "gzip"
    if tenant:
        headers["X-Scope-OrgID"] = tenant
    latencies: list[float] = []
    failures = 0
    queue = list(reversed(bodies))
    conn = aiohttp.TCPConnector(limit=connections)

    async with aiohttp.ClientSession(connector=conn) as session:

        async def worker() -> None:
            nonlocal failures
            while queue:
                body = queue.pop()
                t0 = time.perf_counter()
                async with session.post(f"{url}/loki/api/v1/push", data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 204:
                        failures += 1
                        if failures == 1:
                            print(f"push failed: {r.status} {await r.text()}", file=sys.stderr)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - t0
    latencies.sort()
    return latencies, failures, elapsed


async def run_push(args: argparse.Namespace) -> dict[str, Any]:
    bodies, lines, raw = make_batches(args)
    latencies, failures, elapsed = await push_bodies(
        args.url, bodies, args.format, args.tenant, args.connections
    )

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
    from .ingester import Chunker, MemChunk

    cfg = IngesterConfig()
    codec = Codec(cfg.zstd_level)
    chunker = Chunker(codec, cfg.chunk_block_size, cfg.chunk_target_size, 1e12)
    systems = loghub_lines(Path(args.loghub_dir))
    per_system = {}
    total_raw = total_stored = total_chunks = 0
    t0 = time.perf_counter()
    for name, lines in systems.items():
        lines = lines * args.repeat
        raw = sum(map(len, lines))
        ts = array("q", range(0, len(lines) * 1000, 1000))
        chunks = chunker.append(MemChunk(), ts, array("I", map(len, lines)), b"".join(lines), None)
        chunks[-1:] = chunker.close(chunks[-1], "forced")
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


# --------------------------------------------------------------------------- bench async

HOUR_NS = 3600 * NS
DAY_NS = 86400 * NS
TENANT_A, TENANT_B = "tenant-a", "tenant-b"
AGG_QUERY = 'sum by (level) (count_over_time({job="bench"}[1h]))'
TINY_QUERY = 'count_over_time({app="api"}[5m])'
SMALL_QUERY = 'count_over_time({job="bench"}[5m])'


def note(msg: str) -> None:
    """A progress note on stderr (stdout carries the JSON only)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_nats(workdir: Path) -> tuple[Child, str]:
    """A standalone JetStream nats-server on a free port, its store in ``workdir``."""
    from .bus import nats_server_binary

    port = free_port()
    store = workdir / "nats-store"
    store.mkdir(parents=True, exist_ok=True)
    cmd = [nats_server_binary(), "-c", str(REPO / "nats" / "nats-server.conf"), "-js"]
    cmd += ["-sd", str(store), "-a", "127.0.0.1", "-p", str(port)]
    child = spawn("nats-server", cmd, workdir)
    try:
        wait_port(child, port)
    except BaseException:
        stop_child(child)
        raise
    return child, f"nats://127.0.0.1:{port}"


def loki_config(workdir: Path, nats_url: str, port: int, concurrency: int) -> dict[str, Any]:
    """The configuration every process of the benchmark shares (own HTTP port)."""
    return {
        "auth_enabled": True,
        "server": {"http_listen_port": port, "log_level": "warn"},
        "common": {"path_prefix": str(workdir / "data")},
        "nats": {"url": nats_url},
        "ingester": {"lifecycler": {"ID": "bench-ingester"}},
        "querier": {"query_ingesters_within": "1h"},
        "querier_worker": {"concurrency": concurrency},
        "limits_config": {
            "reject_old_samples": False,
            "ingestion_rate_mb": 4096,
            "ingestion_burst_size_mb": 4096,
            "max_query_length": "31d",
        },
    }


def start_loki(
    workdir: Path,
    name: str,
    target: str,
    cfg: dict[str, Any],
    env: dict[str, str | None] | None = None,
) -> Child:
    """``loki-async -target=<target>`` with ``cfg`` (``env``: see :func:`spawn`); returns
    once ``/ready`` answers 200."""
    import yaml

    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "loki_async.cli", f"-config.file={path}", f"-target={target}"]
    child = spawn(name, cmd, workdir, env)
    child.url = f"http://127.0.0.1:{cfg['server']['http_listen_port']}"
    try:
        wait_ready(child)
    except BaseException:
        stop_child(child)
        raise
    return child


def dist_ms(values: list[float]) -> dict[str, float]:
    """Median, p90, min and max of durations given in seconds, in ms."""
    v = sorted(values)
    return {
        "median": round(statistics.median(v) * 1000, 2),
        "p90": round(v[min(int(0.9 * len(v)), len(v) - 1)] * 1000, 2),
        "min": round(v[0] * 1000, 2),
        "max": round(v[-1] * 1000, 2),
    }


class CPU:
    """CPU seconds used by each started process (and this one) between two points."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        out = {c.name: c.cpu_s() for c in self.children if c.proc.poll() is None}
        t = os.times()
        out["bench-client"] = t.user + t.system
        return out

    def used(self) -> dict[str, float]:
        now = self._now()
        return {k: round(v - self.start.get(k, 0.0), 2) for k, v in now.items()}


class AsyncClient:
    """The calls of the async query API the benchmark makes, for one tenant."""

    def __init__(self, session: Any, url: str) -> None:
        self.session = session
        self.url = url

    async def get(
        self, path: str, params: dict[str, str], tenant: str, no_cache: bool = False
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"X-Scope-OrgID": tenant}
        if no_cache:
            headers["Cache-Control"] = "no-cache"
        async with self.session.get(self.url + path, params=params, headers=headers) as r:
            return r.status, dict(r.headers), await r.read()

    async def sync(self, path: str, params: dict[str, str], tenant: str) -> None:
        status, _, body = await self.get(path, params, tenant)
        if status != 200:
            raise RuntimeError(f"sync query failed: {status} {body[:300]!r}")

    async def submit(
        self, path: str, params: dict[str, str], tenant: str, *, wait: str = "", no_cache=False
    ) -> tuple[str, bytes | None]:
        """Submit with ``async=true``: (ticket, result body if it came inline)."""
        q = {**params, "async": "true"}
        if wait:
            q["wait"] = wait
        status, headers, body = await self.get(path, q, tenant, no_cache)
        if status == 200:
            return headers.get("X-Loki-Ticket", ""), body
        if status != 202:
            raise RuntimeError(f"async submit failed: {status} {body[:300]!r}")
        return json.loads(body)["data"]["ticket"], None

    async def result(self, ticket: str, tenant: str, wait: str = "30s") -> bytes:
        """Long-poll the ticket until its result is there."""
        while True:
            status, _, body = await self.get(
                f"/loki/api/v1/tickets/{ticket}", {"wait": wait}, tenant
            )
            if status == 200:
                return body
            if status != 204:
                raise RuntimeError(f"ticket {ticket} failed: {status} {body[:300]!r}")

    async def run(
        self, path: str, params: dict[str, str], tenant: str, *, wait: str = "", no_cache=False
    ) -> tuple[str, bytes]:
        ticket, body = await self.submit(path, params, tenant, wait=wait, no_cache=no_cache)
        if body is None:
            body = await self.result(ticket, tenant)
        return ticket, body

    async def status(self, ticket: str, tenant: str) -> dict[str, Any]:
        status, _, body = await self.get(f"/loki/api/v1/tickets/{ticket}/status", {}, tenant)
        if status != 200:
            raise RuntimeError(f"ticket status failed: {status} {body[:300]!r}")
        return json.loads(body)["data"]


@contextlib.contextmanager
def bench_dir(keep: bool) -> Iterator[Path]:
    """A new temp dir for the processes' files, removed at the end unless ``keep``."""
    path = Path(tempfile.mkdtemp(prefix="loki-async-bench-"))
    try:
        yield path
    finally:
        if keep:
            note(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, mappings merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class Cluster:
    """A nats-server and one ``-target=all`` process in ``workdir``; ``stop`` ends every
    process it started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self.nats_url = ""
        self.main: Child | None = None

    def start(self, concurrency: int = 0, extra: dict[str, Any] | None = None) -> None:
        """Start both; ``concurrency`` 0: the ``-target=all`` process runs no querier
        worker; ``extra`` is laid over ``loki_config``."""
        nats_child, self.nats_url = start_nats(self.workdir)
        self.children.append(nats_child)
        note(f"nats-server at {self.nats_url}, store in {self.workdir}")
        cfg = loki_config(self.workdir, self.nats_url, free_port(), concurrency)
        self.main = start_loki(self.workdir, "frontend", "all", merged(cfg, extra or {}))
        self.children.append(self.main)
        note(f"-target=all ({concurrency or 'no'} worker slots) at {self.main.url}")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for child in reversed(self.children):
            try:
                stop_child(child)
            except Exception as e:  # keep stopping the others
                note(f"stopping {child.name} failed: {e!r}")
        self.children.clear()


class AsyncBench(Cluster):
    """The processes of ``bench async`` and its measurements."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(workdir)
        self.args = args
        self.workers: list[Child] = []

    # ------------------------------------------------------------------ processes

    def set_workers(self, n: int) -> None:
        """Start or stop querier-worker processes until ``n`` run."""
        while len(self.workers) > n:
            w = self.workers.pop()
            stop_child(w)
            self.children.remove(w)
        while len(self.workers) < n:
            name = f"worker-{len(self.workers) + 1}"
            cfg = loki_config(
                self.workdir, self.nats_url, free_port(), self.args.worker_concurrency
            )
            w = start_loki(self.workdir, name, "querier-worker", cfg)
            self.workers.append(w)
            self.children.append(w)
        note(f"{n} querier-worker process(es) running")

    def stop(self) -> None:
        super().stop()
        self.workers.clear()

    # ------------------------------------------------------------------ data

    async def load(self) -> dict[str, Any]:
        assert self.main is not None
        out: dict[str, Any] = {}
        for tenant, lines in ((TENANT_A, self.args.lines), (TENANT_B, self.args.lines_b)):
            push_args = argparse.Namespace(
                url=self.main.url,
                lines=lines,
                days=self.args.days,
                source="synthetic",
                line_format="logfmt",
                batch=2000,
                format="protobuf",
                connections=2,
                tenant=tenant,
                streams=len(APPS) * len(LEVELS),
            )
            note(f"pushing {lines} lines over {self.args.days:g} days as {tenant}")
            r = await run_push(push_args)
            if r["failed"]:
                raise RuntimeError(f"{r['failed']} push requests failed for {tenant}")
            out[tenant] = {k: r[k] for k in ("lines", "seconds", "lines_per_s", "mb_per_s")}
        now = time.time_ns()
        stored = await flush_store(
            self.main.url,
            {TENANT_A: self.args.lines, TENANT_B: self.args.lines_b},
            now - int((self.args.days + 1) * DAY_NS),
            now,
        )
        for tenant in (TENANT_A, TENANT_B):
            out[tenant]["chunks"] = stored[tenant]["chunks"]
        out["flush_s"] = stored["flush_s"]
        return out

    # ------------------------------------------------------------------ measurements

    async def overhead(self, c: AsyncClient) -> dict[str, Any]:
        """A tiny instant query: sync, async inline (wait=10s), async 202 + long-poll."""
        runs = self.args.runs
        path = "/loki/api/v1/query"
        params = {"query": TINY_QUERY}
        cpu = CPU(self.children)
        variants = {
            "sync_ms": lambda: c.sync(path, params, TENANT_A),
            "async_inline_ms": lambda: c.run(path, params, TENANT_A, wait="10s"),
            "async_ticket_ms": lambda: c.run(path, params, TENANT_A),
        }
        times: dict[str, list[float]] = {k: [] for k in variants}
        for call in variants.values():  # warm up connections and code paths
            for _ in range(5):
                await call()
        note(f"overhead: {runs} runs of each variant, interleaved")
        # Where an inline async run's time goes, from its ticket's status (read after the
        # clock stops): created -> a worker started it (queue), started -> finished (exec).
        queue: list[float] = []
        execute: list[float] = []
        for _ in range(runs):
            for name, call in variants.items():
                t0 = time.perf_counter()
                ret = await call()
                times[name].append(time.perf_counter() - t0)
                if name == "async_inline_ms":
                    st = (await c.status(ret[0], TENANT_A))["stats"]
                    queue.append(st["queue_time_s"])
                    execute.append(st["exec_time_s"])
        out: dict[str, Any] = {
            "workers": len(self.workers),
            "query": TINY_QUERY,
            "endpoint": path,
            "runs": runs,
        }
        for name, values in times.items():
            out[name] = dist_ms(values)
        sync_med = out["sync_ms"]["median"]
        out["async_overhead_ms_median"] = round(out["async_inline_ms"]["median"] - sync_med, 2)
        out["async_ticket_overhead_ms_median"] = round(
            out["async_ticket_ms"]["median"] - sync_med, 2
        )
        q_med = round(statistics.median(queue) * 1000, 2)
        x_med = round(statistics.median(execute) * 1000, 2)
        out["async_inline_breakdown_ms_median"] = {
            "submit_to_started": q_med,
            "started_to_finished": x_med,
            "rest": round(out["async_inline_ms"]["median"] - q_med - x_med, 2),
        }
        out["cpu_s"] = cpu.used()
        return out

    def agg_params(self, end: int | None = None) -> dict[str, str]:
        end = end or time.time_ns()
        start = end - int(self.args.days * DAY_NS)
        return {"query": AGG_QUERY, "start": str(start), "end": str(end), "step": "1h"}

    async def aggregation(
        self, c: AsyncClient, no_cache: bool, params: dict[str, str] | None = None
    ) -> tuple[float, dict[str, Any], dict[str, Any]]:
        """One async 30-day aggregation, submit to result: (seconds, status, body)."""
        t0 = time.perf_counter()
        ticket, body = await c.run(
            "/loki/api/v1/query_range", params or self.agg_params(), TENANT_A, no_cache=no_cache
        )
        elapsed = time.perf_counter() - t0
        return elapsed, await c.status(ticket, TENANT_A), json.loads(body)

    async def cold_runs(self, c: AsyncClient, n_workers: int) -> dict[str, Any]:
        """Cold runs (no split cache) with ``n_workers`` processes. A first run, not
        counted, lets new processes load what a long-running worker holds (index
        segments, imports); its time is reported as ``first_run_ms``."""
        self.set_workers(n_workers)
        first, _, _ = await self.aggregation(c, no_cache=True)
        note(f"cold 30d aggregation, {n_workers} worker(s), first run (not counted): {first:.2f}s")
        cpu = CPU(self.children)
        times = []
        execs = []
        st: dict[str, Any] = {}
        for i in range(self.args.agg_runs):
            elapsed, st, body = await self.aggregation(c, no_cache=True)
            times.append(elapsed)
            execs.append(st["stats"]["exec_time_s"])
            prog = st["progress"]
            note(
                f"cold 30d aggregation, {n_workers} worker(s), run {i + 1}: {elapsed:.2f}s "
                f"({prog['splits_done']}/{prog['splits_total']} splits, "
                f"{st['stats']['lines_processed']} lines, {len(body['data']['result'])} series)"
            )
        return {
            "first_run_ms": round(first * 1000, 1),
            "runs_ms": [round(t * 1000, 1) for t in times],
            "best_ms": round(min(times) * 1000, 1),
            "median_ms": round(statistics.median(times) * 1000, 1),
            "exec_ms_median": round(statistics.median(execs) * 1000, 1),
            "splits_total": st["progress"]["splits_total"],
            "lines_processed": st["stats"]["lines_processed"],
            "chunks_fetched": st["stats"]["chunks_fetched"],
            "cpu_s": {k: round(v / len(times), 2) for k, v in cpu.used().items()},
        }

    async def warm(self, c: AsyncClient) -> dict[str, Any]:
        """Fill the split cache with one run, then the same query again (warm)."""
        params = self.agg_params()
        fill_s, _, _ = await self.aggregation(c, no_cache=False, params=params)
        note(f"split cache filled by a run of {fill_s:.2f}s")
        cpu = CPU(self.children)
        times = []
        st: dict[str, Any] = {}
        for _ in range(self.args.agg_runs):
            elapsed, st, _ = await self.aggregation(c, no_cache=False, params=params)
            times.append(elapsed)
        note(f"warm runs: {', '.join(f'{t:.3f}s' for t in times)}")
        return {
            "fill_ms": round(fill_s * 1000, 1),
            "warm_runs_ms": [round(t * 1000, 1) for t in times],
            "warm_ms": round(min(times) * 1000, 1),
            "splits_cached": st["progress"]["splits_cached"],
            "splits_total": st["progress"]["splits_total"],
            "cpu_s": {k: round(v / len(times), 2) for k, v in cpu.used().items()},
        }

    async def fairness(self, c: AsyncClient) -> dict[str, Any]:
        """Tenant B's small query, idle and while tenant A's cold aggregation runs."""

        async def b_query() -> float:
            end = time.time_ns()
            params = {
                "query": SMALL_QUERY,
                "start": str(end - HOUR_NS),
                "end": str(end),
                "step": "1m",
            }
            t0 = time.perf_counter()
            await c.run("/loki/api/v1/query_range", params, TENANT_B, wait="10s", no_cache=True)
            return time.perf_counter() - t0

        for _ in range(3):
            await b_query()
        idle = [await b_query() for _ in range(10)]
        ticket, _ = await c.submit(
            "/loki/api/v1/query_range", self.agg_params(), TENANT_A, no_cache=True
        )
        t0 = time.perf_counter()
        a_result = asyncio.ensure_future(c.result(ticket, TENANT_A))
        during: list[float] = []
        done_at: list[int] = []
        while not a_result.done():
            await asyncio.sleep(0.2)
            if a_result.done():
                break
            elapsed = await b_query()
            if not a_result.done():  # only samples taken entirely during A's run
                during.append(elapsed)
                done_at.append((await c.status(ticket, TENANT_A))["progress"]["splits_done"])
        await a_result
        a_s = time.perf_counter() - t0
        st = await c.status(ticket, TENANT_A)
        note(
            f"fairness: B idle {statistics.median(idle) * 1000:.0f}ms, during A "
            f"{statistics.median(during) * 1000 if during else float('nan'):.0f}ms "
            f"({len(during)} samples, A took {a_s:.2f}s)"
        )
        return {
            "workers": len(self.workers),
            "b_query": SMALL_QUERY + " over 1h, step 1m",
            "b_idle_ms": dist_ms(idle),
            "b_idle_ms_median": round(statistics.median(idle) * 1000, 2),
            "b_during_a_ms": dist_ms(during) if during else None,
            "b_during_a_ms_median": round(statistics.median(during) * 1000, 2) if during else None,
            "b_during_a_samples": len(during),
            "a_splits_done_at_samples": done_at,
            "a_splits_total": st["progress"]["splits_total"],
            "a_ms": round(a_s * 1000, 1),
        }

    async def tickets_per_s(self, c: AsyncClient) -> dict[str, Any]:
        """Distinct cheap submissions (202) from concurrent clients, no workers running."""
        self.set_workers(0)
        clients, seconds = self.args.clients, self.args.submit_seconds
        cpu = CPU(self.children)
        counter = 0
        accepted = 0
        failed = 0
        latencies: list[float] = []
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal counter, accepted, failed
            while time.perf_counter() < deadline:
                counter += 1
                q = f'count_over_time({{app="api"}} |= "needle-{counter}" [5m])'
                t0 = time.perf_counter()
                status, _, _ = await c.get(
                    "/loki/api/v1/query", {"query": q, "async": "true"}, TENANT_A
                )
                latencies.append(time.perf_counter() - t0)
                if status == 202:
                    accepted += 1
                else:
                    failed += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - t0
        rate = accepted / elapsed
        note(f"tickets: {accepted} accepted in {elapsed:.2f}s = {rate:.0f}/s ({failed} failed)")
        return {
            "workers": 0,
            "clients": clients,
            "seconds": round(elapsed, 2),
            "accepted": accepted,
            "failed": failed,
            "tickets_per_s": round(rate, 1),
            "submit_ms": dist_ms(latencies),
            "cpu_s": cpu.used(),
        }


def aiohttp_session() -> Any:
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64),
        timeout=aiohttp.ClientTimeout(total=None, sock_read=600),
    )


async def flush_store(url: str, expected: dict[str, int], start: int, end: int) -> dict[str, Any]:
    """``POST /flush`` (it answers once the ingester's chunks are in the store), then per
    tenant the entries and chunks the index holds for ``{job="bench"}`` over [start, end]:
    the store alone must now hold every entry pushed (a warning note if not)."""
    t0 = time.perf_counter()
    note("flushing the ingester to the store (POST /flush)")
    out: dict[str, Any] = {}
    async with aiohttp_session() as session:
        async with session.post(f"{url}/flush") as r:
            if r.status != 204:
                raise RuntimeError(f"flush failed: {r.status} {await r.text()}")
        out["flush_s"] = round(time.perf_counter() - t0, 2)
        for tenant, lines in expected.items():
            params = {"query": '{job="bench"}', "start": str(start), "end": str(end)}
            headers = {"X-Scope-OrgID": tenant}
            async with session.get(
                f"{url}/loki/api/v1/index/stats", params=params, headers=headers
            ) as r:
                st = await r.json()
            out[tenant] = {"chunks": st["chunks"], "entries": st["entries"]}
            if st["entries"] != lines:
                note(f"warning: {tenant} index holds {st['entries']} entries of {lines}")
    first = next(iter(expected), "")
    note(f"flushed in {out['flush_s']:.1f}s: {out[first]['chunks']} chunks for {first}")
    return out


async def run_async(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Start the processes, load data, measure; every process is stopped at the end."""
    with bench_dir(args.keep) as workdir, AsyncBench(args, workdir) as bench:
        t_start = time.perf_counter()
        bench.start()
        result: dict[str, Any] = {
            "bench": "async",
            "command": shlex.join(["loki-async", "bench", *argv]),
            "lines": {TENANT_A: args.lines, TENANT_B: args.lines_b},
            "days": args.days,
            "streams_per_tenant": len(APPS) * len(LEVELS),
            "worker_processes_max": args.workers_max,
            "worker_concurrency": args.worker_concurrency,
            "cores": os.cpu_count(),
        }
        result["load"] = await bench.load()
        async with aiohttp_session() as session:
            c = AsyncClient(session, bench.main.url if bench.main else "")
            bench.set_workers(1)
            result["overhead"] = await bench.overhead(c)
            note(
                f"overhead: sync {result['overhead']['sync_ms']['median']}ms, async inline "
                f"{result['overhead']['async_inline_ms']['median']}ms, ticket "
                f"{result['overhead']['async_ticket_ms']['median']}ms"
            )
            cold = {}
            for n in range(1, args.workers_max + 1):
                cold[str(n)] = await bench.cold_runs(c, n)
            agg: dict[str, Any] = {
                "query": AGG_QUERY,
                "range": f"{args.days:g}d",
                "step": "1h",
                "splits_total": cold["1"]["splits_total"],
                "cold": cold,
            }
            top = str(args.workers_max)
            if args.workers_max > 1:
                agg[f"speedup_{top}_vs_1"] = round(cold["1"]["best_ms"] / cold[top]["best_ms"], 2)
                agg[f"speedup_{top}_vs_1_median"] = round(
                    cold["1"]["median_ms"] / cold[top]["median_ms"], 2
                )
            agg["warm_workers"] = args.workers_max
            agg.update(await bench.warm(c))
            agg["cold_vs_warm"] = round(cold[top]["best_ms"] / agg["warm_ms"], 1)
            result["aggregation_30d"] = agg
            result["fairness"] = await bench.fairness(c)
            result["tickets_per_s"] = await bench.tickets_per_s(c)
        result["total_s"] = round(time.perf_counter() - t_start, 1)
        return result


# --------------------------------------------------------------------------- bench trace

TRACE_APPS = ("api", "web", "db")
TRACE_MAX_S = 600  # the longest trace of the data
TRACE_LINES = (3, 12)  # lines per trace, drawn uniformly
TRACE_TENANT = TENANT_A
TRACE_SPLIT = "1h"
TRACEID_OPTIONS = {"max_trace_duration": "1h", "clock_skew": "5m"}
QUERY_RANGE = "/loki/api/v1/query_range"
TARGETS = {"bytes_ratio": 50, "latency_ratio": 20}


def xray_trace_id(rng: random.Random, t_ns: int) -> str:
    """An AWS X-Ray trace id made at ``t_ns`` (it states whole seconds)."""
    return f"1-{t_ns // NS:08x}-{rng.getrandbits(96):024x}"


def uuid7_trace_id(rng: random.Random, t_ns: int) -> str:
    """A UUIDv7 made at ``t_ns``: 48 bits of unix ms, version 7, variant 10, random."""
    h = f"{t_ns // 10**6:012x}7{rng.getrandbits(12):03x}"
    h += f"{8 | rng.getrandbits(2):x}{rng.getrandbits(60):015x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass
class Trace:
    """A trace of the data: its id, when it began (the time its id states), its lines."""

    kind: str  # "xray" or "uuidv7"
    id: str
    start_ns: int
    lines: int


def trace_rows(
    lines: int, start_ns: int, end_ns: int, seed: int = 42
) -> tuple[list[tuple[int, tuple[int, int], bytes]], list[Trace]]:
    """``lines`` log lines in [start_ns, end_ns), in time order, as push rows (ts, (app,
    level), line) of TRACE_APPS by LEVELS, and the traces they belong to, in order of
    start. Traces begin at even, jittered intervals, every other one with an X-Ray id,
    the others with a UUIDv7; a trace's first line is at the time its id states, the
    others up to TRACE_MAX_S later, each in any app; every line says ``trace_id=<id>``."""
    rng = random.Random(seed)
    sizes: list[int] = []
    total = 0
    while total < lines:
        sizes.append(min(rng.randint(*TRACE_LINES), lines - total))
        total += sizes[-1]
    gap = max((end_ns - start_ns - TRACE_MAX_S * NS) // max(len(sizes), 1), 1)
    rows: list[tuple[int, tuple[int, int], bytes]] = []
    traces: list[Trace] = []
    for k, n in enumerate(sizes):
        t0 = start_ns + k * gap + rng.randrange(gap)
        if k % 2 == 0:
            t0 -= t0 % NS
            trace = Trace("xray", xray_trace_id(rng, t0), t0, n)
        else:
            t0 -= t0 % 10**6
            trace = Trace("uuidv7", uuid7_trace_id(rng, t0), t0, n)
        traces.append(trace)
        duration = rng.randrange(TRACE_MAX_S * NS)
        offsets = [0, *sorted(rng.randrange(duration + 1) for _ in range(n - 1))]
        levels = rng.choices(range(len(LEVELS)), LEVEL_WEIGHTS, k=n)
        for offset, lv in zip(offsets, levels, strict=True):
            key = (rng.randrange(len(TRACE_APPS)), lv)
            rows.append((t0 + offset, key, synthetic_line(rng, LEVELS[lv], trace.id)))
    rows.sort(key=lambda r: r[0])
    return rows, traces


def trace_labels(key: tuple[int, int]) -> list[tuple[str, str]]:
    return [("app", TRACE_APPS[key[0]]), ("job", "bench"), ("level", LEVELS[key[1]])]


def trace_query(trace: Trace) -> str:
    """The search of ``bench trace`` for one trace's lines."""
    return f'{{job="bench"}} |= "{trace.id}"'


def iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // NS))


def split_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The splits, bytes and lines of one query response's ``data`` (skipped: by the
    traceid coprocessor; executed: the others)."""
    summary = data["stats"]["summary"]
    traceid = (data["stats"].get("coprocessor") or {}).get("traceid") or {}
    planned, skipped = summary["splits"], traceid.get("skipped", 0)
    return {
        "splits_planned": planned,
        "splits_executed": planned - skipped,
        "splits_skipped": skipped,
        "splits_narrowed": traceid.get("narrowed", 0),
        "bytes_processed": summary["totalBytesProcessed"],
        "lines_processed": summary["totalLinesProcessed"],
        "returned": sum(len(s["values"]) for s in data["result"]),
    }


class TraceBench(Cluster):
    """``bench trace``: a trace-id search over days of data, coprocessors on and off."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        super().__init__(workdir)
        self.args = args
        self.end_ns = time.time_ns() // HOUR_NS * HOUR_NS
        self.start_ns = self.end_ns - int(args.days * DAY_NS)
        self.traces: list[Trace] = []
        self.failed: list[str] = []

    def config(self) -> dict[str, Any]:
        """What ``bench trace`` lays over ``loki_config``."""
        return {
            "limits_config": {
                "split_queries_by_interval": TRACE_SPLIT,
                "max_query_length": f"{int(self.args.days) + 2}d",
                "query_timeout": "10m",
            },
            "coprocessors": {"enabled": "*", "plugins": {"traceid": dict(TRACEID_OPTIONS)}},
        }

    def fail(self, msg: str) -> None:
        note(f"FAILED: {msg}")
        self.failed.append(msg)

    async def load(self) -> dict[str, Any]:
        assert self.main is not None
        args = self.args
        note(f"generating {args.lines} lines over {args.days:g} days")
        rows, self.traces = trace_rows(args.lines, self.start_ns, self.end_ns, args.seed)
        bodies, raw = encode_batches(rows, trace_labels, args.batch, "protobuf")
        del rows
        note(f"pushing {args.lines} lines of {len(self.traces)} traces ({raw / 1e6:.0f} MB)")
        _, failed, seconds = await push_bodies(self.main.url, bodies, "protobuf", TRACE_TENANT, 2)
        if failed:
            raise RuntimeError(f"{failed} push requests failed")
        stored = await flush_store(
            self.main.url, {TRACE_TENANT: args.lines}, self.start_ns, self.end_ns
        )
        return {
            "traces": len(self.traces),
            "streams": len(TRACE_APPS) * len(LEVELS),
            "raw_mb": round(raw / 1e6, 1),
            "push_s": round(seconds, 2),
            "lines_per_s": round(args.lines / seconds),
            "flush_s": stored["flush_s"],
            **stored[TRACE_TENANT],
        }

    def needles(self) -> list[Trace]:
        """An X-Ray trace and a UUIDv7 trace from the middle of the range."""
        mid = len(self.traces) // 2
        return sorted(self.traces[mid : mid + 2], key=lambda t: t.kind != "xray")

    def params(self, trace: Trace, coprocessors: bool) -> dict[str, str]:
        q = {
            "query": trace_query(trace),
            "start": str(self.start_ns),
            "end": str(self.end_ns),
            "limit": "1000",
        }
        if not coprocessors:
            q["coprocessors"] = "none"
        return q

    async def sync_query(self, c: AsyncClient, params: dict[str, str]) -> tuple[float, Any]:
        """One synchronous query, results cache bypassed: (seconds, response data)."""
        t0 = time.perf_counter()
        status, _, body = await c.get(QUERY_RANGE, params, TRACE_TENANT, no_cache=True)
        elapsed = time.perf_counter() - t0
        if status != 200:
            raise RuntimeError(f"query failed: {status} {body[:300]!r}")
        return elapsed, json.loads(body)["data"]

    async def measure(self, c: AsyncClient, trace: Trace) -> tuple[dict[str, Any], Any]:
        """``--runs`` runs with coprocessors on and off, interleaved, after a first run
        of each that is not counted: the figures, and the result of the runs."""
        modes = {"on": self.params(trace, True), "off": self.params(trace, False)}
        _, first = await self.sync_query(c, modes["off"])
        await self.sync_query(c, modes["on"])
        times: dict[str, list[float]] = {m: [] for m in modes}
        last: dict[str, Any] = {}
        same = True
        for _ in range(self.args.runs):
            for mode, params in modes.items():
                elapsed, last[mode] = await self.sync_query(c, params)
                times[mode].append(elapsed)
                same = same and last[mode]["result"] == first["result"]
        out: dict[str, Any] = {
            "id_kind": trace.kind,
            "trace_id": trace.id,
            "trace_start": iso(trace.start_ns),
            "trace_lines": trace.lines,
            "query": modes["on"]["query"],
        }
        for mode in modes:
            out[mode] = {"latency_ms": dist_ms(times[mode]), **split_figures(last[mode])}
        on, off = out["on"], out["off"]
        out["bytes_ratio"] = round(off["bytes_processed"] / max(on["bytes_processed"], 1), 1)
        out["latency_ratio"] = round(off["latency_ms"]["median"] / on["latency_ms"]["median"], 1)
        out["same_result"] = same
        note(
            f"{trace.kind} {trace.id}: on {on['latency_ms']['median']}ms "
            f"{on['splits_executed']}/{on['splits_planned']} splits {on['bytes_processed']} B, "
            f"off {off['latency_ms']['median']}ms {off['bytes_processed']} B: bytes "
            f"x{out['bytes_ratio']}, latency x{out['latency_ratio']}"
        )
        if not same:
            self.fail(f"{trace.kind} {trace.id}: coprocessors on and off return other results")
        for mode in modes:
            if out[mode]["returned"] != trace.lines:
                self.fail(
                    f"{trace.kind} {trace.id} ({mode}): {out[mode]['returned']} lines returned"
                    f" of the trace's {trace.lines}"
                )
        return out, first["result"]

    async def async_run(self, c: AsyncClient, trace: Trace, sync_result: Any) -> dict[str, Any]:
        """The same query with ``async=true`` and coprocessors on: submit, poll the
        ticket's status until it ended, fetch the result."""
        t0 = time.perf_counter()
        params = self.params(trace, True)
        ticket, body = await c.submit(QUERY_RANGE, params, TRACE_TENANT, no_cache=True)
        polls = 0
        while body is None and (await c.status(ticket, TRACE_TENANT))["is_running"]:
            polls += 1
            await asyncio.sleep(0.02)
        if body is None:
            body = await c.result(ticket, TRACE_TENANT)
        elapsed = time.perf_counter() - t0
        st = await c.status(ticket, TRACE_TENANT)
        same = json.loads(body)["data"]["result"] == sync_result
        if not same:
            self.fail(f"async {trace.kind} {trace.id}: result differs from the sync one")
        prog = st["progress"]
        note(
            f"async {trace.kind}: {elapsed * 1000:.0f}ms, {prog['splits_done']} splits done, "
            f"{prog['splits_skipped']} skipped of {prog['splits_total']}"
        )
        return {
            "id_kind": trace.kind,
            "ticket": ticket,
            "state": st["state"],
            "latency_ms": round(elapsed * 1000, 1),
            "status_polls": polls,
            "progress": prog,
            "bytes_processed": st["stats"]["bytes_processed"],
            "lines_processed": st["stats"]["lines_processed"],
            "same_result": same,
        }


async def run_trace(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Start the processes, load data, measure; every process is stopped at the end."""
    with bench_dir(args.keep) as workdir, TraceBench(args, workdir) as bench:
        t_start = time.perf_counter()
        bench.start(concurrency=2, extra=bench.config())
        result: dict[str, Any] = {
            "bench": "trace",
            "command": shlex.join(["loki-async", "bench", *argv]),
            "lines": args.lines,
            "days": args.days,
            "range": {"start": iso(bench.start_ns), "end": iso(bench.end_ns)},
            "split_interval": TRACE_SPLIT,
            "traceid": TRACEID_OPTIONS,
            "runs": args.runs,
            "cores": os.cpu_count(),
        }
        result["load"] = await bench.load()
        async with aiohttp_session() as session:
            c = AsyncClient(session, bench.main.url if bench.main else "")
            queries, results = [], []
            for trace in bench.needles():
                out, res = await bench.measure(c, trace)
                queries.append(out)
                results.append(res)
            result["queries"] = queries
            result["async"] = await bench.async_run(c, bench.needles()[0], results[0])
        result["targets"] = {
            **TARGETS,
            "met": all(q[k] >= v for q in queries for k, v in TARGETS.items()),
        }
        result["failed"] = bench.failed
        result["total_s"] = round(time.perf_counter() - t_start, 1)
        return result


# --------------------------------------------------------------------------- bench dedup

DEDUP_TENANT = "dedup"
DEDUP_JOB = "dedup"
# name: (the failpoint is on, replica repair is on)
DEDUP_SCENARIOS: dict[str, tuple[bool, bool]] = {
    "rf3": (False, True),
    "rf3_fault": (True, True),
    "rf3_fault_no_repair": (True, False),
}
DEDUP_TARGETS = {"rf3": 1.05, "rf3_fault": 1.10}  # amplification at most
FAILPOINTS_ENV = "LOKI_ASYNC_FAILPOINTS"
REPLICA_FAILPOINT = "distributor.replica_send"


@dataclass
class DedupStream:
    """One stream of ``bench dedup``'s data: labels in canonical (sorted) order, entries
    with strictly increasing ns timestamps."""

    labels: list[tuple[str, str]]
    kind: str  # loghub | synthetic
    ts: list[int]
    lines: list[bytes]

    @property
    def canonical(self) -> str:
        return format_labels(self.labels)


def zipf_counts(total: int, n: int, s: float, minimum: int, rng: random.Random) -> list[int]:
    """``total`` split over ``n`` items with zipf(``s``) weights over a random ranking (a
    few heavy items, many light ones), each at least ``minimum``; sums to ``total``."""
    minimum = min(minimum, total // max(n, 1))
    ranks = list(range(n))
    rng.shuffle(ranks)
    weights = [1 / (r + 1) ** s for r in ranks]
    rest, wsum = total - minimum * n, sum(weights)
    exact = [rest * w / wsum for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(n), key=lambda i: counts[i] - exact[i])[: rest - sum(counts)]:
        counts[i] += 1  # largest remainders
    return [c + minimum for c in counts]


def dedup_dataset(
    lines: int,
    streams: int,
    hours: float,
    end_ns: int,
    seed: int = 42,
    zipf_s: float = 1.1,
    systems: dict[str, list[bytes]] | None = None,
) -> list[DedupStream]:
    """``bench dedup``'s data, a function of its arguments: ``streams`` streams (two in
    five are loghub systems, each split over ``host`` values, the others synthetic
    services with ``app``, ``level`` and ``instance`` labels) sharing ``lines`` entries
    with zipf-skewed volumes, each stream's timestamps spread over the ``hours`` before
    ``end_ns`` in ns precision, strictly increasing."""
    rng = random.Random(seed)
    systems = loghub_lines() if systems is None else systems
    names = sorted(systems)
    n_loghub = min(max(streams * 2 // 5, 1), streams)
    counts = zipf_counts(lines, streams, zipf_s, 5, rng)
    span = int(hours * HOUR_NS)
    start = end_ns - span
    out = []
    for i, n in enumerate(counts):
        if i < n_loghub:
            system = names[i % len(names)]
            host = f"{system.lower()}-{i // len(names) + 1:02d}"
            labels = [("host", host), ("job", DEDUP_JOB), ("source", "loghub")]
            labels.append(("system", system))
            pool = systems[system]
            first = rng.randrange(len(pool))
            # Valid UTF-8, so that JSON bodies carry the line unchanged.
            body = [
                pool[(first + k) % len(pool)].decode("utf-8", "replace").encode() for k in range(n)
            ]
            kind = "loghub"
        else:
            j = i - n_loghub
            app, level = APPS[j % len(APPS)], LEVELS[j // len(APPS) % len(LEVELS)]
            instance = f"{app}-{j // (len(APPS) * len(LEVELS))}"
            labels = [("app", app), ("instance", instance), ("job", DEDUP_JOB)]
            labels += [("level", level), ("source", "synthetic")]
            fmt = "json" if j // (len(APPS) * len(LEVELS)) % 2 else "logfmt"
            body = [synthetic_line(rng, level, fmt=fmt) for _ in range(n)]
            kind = "synthetic"
        ts = sorted(start + rng.randrange(span) for _ in range(n))
        for k in range(1, n):  # strictly increasing
            if ts[k] <= ts[k - 1]:
                ts[k] = ts[k - 1] + 1
        out.append(DedupStream(labels, kind, ts, body))
    return out


@dataclass
class DedupPush:
    """One request of one client: its encoded body and the pause before it."""

    body: bytes
    fmt: str  # protobuf | json
    lines: int
    sleep_s: float


def dedup_clients(data: list[DedupStream], clients: int) -> list[list[int]]:
    """Disjoint sets of streams, one per client (as files among Promtails): heaviest
    stream first, to the client with the fewest lines so far."""
    owned: list[list[int]] = [[] for _ in range(clients)]
    load = [0] * clients
    for i in sorted(range(len(data)), key=lambda i: (-len(data[i].ts), i)):
        c = min(range(clients), key=lambda c: (load[c], c))
        owned[c].append(i)
        load[c] += len(data[i].ts)
    return owned


def dedup_pushes(
    data: list[DedupStream],
    clients: int,
    seed: int = 42,
    batch: tuple[int, int] = (50, 1000),
    jitter_ms: float = 20.0,
    json_share: float = 0.25,
) -> list[list[DedupPush]]:
    """Each client's requests, in order: the entries of the client's streams in time
    order, cut into batches of random size (uniform in ``batch``), each a protobuf body
    or, with probability ``json_share``, a JSON one, after a random pause (uniform in
    [0, 2 * ``jitter_ms``])."""
    import heapq

    rng = random.Random(seed + 1)
    out = []
    for owned in dedup_clients(data, clients):
        entries = list(heapq.merge(*([(t, i, k) for k, t in enumerate(data[i].ts)] for i in owned)))
        pushes = []
        pos = 0
        while pos < len(entries):
            part = entries[pos : pos + rng.randint(*batch)]
            pos += len(part)
            by_stream: dict[int, PushStream] = {}
            for t, i, k in part:
                ps = by_stream.get(i)
                if ps is None:
                    ps = by_stream[i] = PushStream(data[i].labels, [], [], None)
                ps.timestamps.append(t)
                ps.lines.append(data[i].lines[k])
            fmt = "json" if rng.random() < json_share else "protobuf"
            encode = encode_push_json if fmt == "json" else encode_push_protobuf
            body = encode(list(by_stream.values()))
            pushes.append(DedupPush(body, fmt, len(part), rng.uniform(0, 2 * jitter_ms) / 1000))
        out.append(pushes)
    return out


def dedup_expected(data: list[DedupStream]) -> dict[tuple[int, int], bytes]:
    """Every entry of the data by (stream fingerprint, timestamp)."""
    from .labels import fingerprint

    out: dict[tuple[int, int], bytes] = {}
    for s in data:
        fp = fingerprint(s.canonical)
        out.update(zip(((fp, t) for t in s.ts), s.lines, strict=True))
    return out


def dataset_figures(data: list[DedupStream], pushes: list[list[DedupPush]]) -> dict[str, Any]:
    sizes = sorted((len(s.ts) for s in data), reverse=True)
    total = sum(sizes)
    first = min(s.ts[0] for s in data if s.ts)
    last = max(s.ts[-1] for s in data if s.ts)
    flat = [p for ps in pushes for p in ps]
    return {
        "lines": total,
        "streams": len(data),
        "loghub_streams": sum(s.kind == "loghub" for s in data),
        "synthetic_streams": sum(s.kind == "synthetic" for s in data),
        "raw_mb": round(sum(len(ln) for s in data for ln in s.lines) / 1e6, 2),
        "lines_per_stream": {
            "max": sizes[0],
            "median": sizes[len(sizes) // 2],
            "min": sizes[-1],
            "top10_share": round(sum(sizes[:10]) / total, 3),
        },
        "range": {
            "start": iso(first),
            "end": iso(last),
            "hours": round((last - first) / HOUR_NS, 2),
        },
        "requests": len(flat),
        "json_requests": sum(p.fmt == "json" for p in flat),
        "request_mb": round(sum(len(p.body) for p in flat) / 1e6, 2),
    }


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """Prometheus text → {sample name: {label values joined by ',': value}}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            key = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()))
            out.setdefault(smp.name, {})[key] = smp.value
    return out


def ingester_figures(m: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The chunk flush counters of one ingester's /metrics."""

    def by(name: str, label: str) -> dict[str, int]:
        return {
            k.split("=", 1)[1]: int(v)
            for k, v in m.get(name, {}).items()
            if k.startswith(f"{label}=")
        }

    flushed = by("loki_ingester_chunks_flushed_total", "reason")
    skipped = by("loki_ingester_chunks_upload_skipped_total", "reason")
    return {
        "flushed": sum(flushed.values()),
        "flushed_by_reason": flushed,
        "uploaded": int(sum(m.get("loki_ingester_chunks_uploaded_total", {}).values())),
        "skipped": {"recent": skipped.get("recent", 0), "exists": skipped.get("exists", 0)},
        "flushed_bytes": int(sum(m.get("loki_ingester_chunk_stored_bytes_total", {}).values())),
    }


@dataclass
class StoreScan:
    """What one setup left in its chunk directory."""

    chunks: dict[str, int]  # chunk key -> bytes
    chunk_entries: dict[str, int]
    index_segments: int
    index_bytes: int
    indexed_by: dict[str, set[str]]  # chunk key -> ingester ids whose index lists it
    entries_stored: int
    distinct_entries: int
    mismatched: int  # entries not in the data, or with another line

    @property
    def chunk_bytes(self) -> int:
        return sum(self.chunks.values())


def scan_store(root: Path, tenant: str, expected: dict[tuple[int, int], bytes]) -> StoreScan:
    """Sizes of the chunk objects and index segments of ``tenant`` under the filesystem
    store ``root``, the index's refs, and every entry of every chunk checked against
    ``expected`` (replicas' copies of an entry count once)."""
    import msgpack
    import zstandard

    from .chunk import ChunkReader, Codec

    base = root / tenant
    chunks: dict[str, int] = {}
    for p in sorted((base / "chunks").rglob("*")):
        if p.is_file() and not p.name.startswith(".tmp-"):
            chunks[p.relative_to(root).as_posix()] = p.stat().st_size
    segments = [p for p in sorted((base / "index").rglob("*.idx")) if p.is_file()]
    indexed_by: dict[str, set[str]] = {}
    zd = zstandard.ZstdDecompressor()
    for p in segments:
        writer = p.name.rsplit("-", 2)[0]
        for _labels, _fp, refs in msgpack.unpackb(zd.decompress(p.read_bytes()), raw=False):
            for ref in refs:
                indexed_by.setdefault(ref[0], set()).add(writer)
    codec = Codec()
    seen: set[tuple[int, int]] = set()
    stored = mismatched = 0
    chunk_entries: dict[str, int] = {}
    for key in chunks:
        fp = int(key.split("/")[2], 16)
        reader = ChunkReader.open((root / key).read_bytes())
        n = 0
        for i in range(len(reader.metas)):
            b = reader.block(i, codec)
            n += len(b)
            for j, t in enumerate(b.ts):
                k = (fp, t)
                if expected.get(k) != b.line(j):
                    mismatched += 1
                seen.add(k)
        chunk_entries[key] = n
        stored += n
    return StoreScan(
        chunks,
        chunk_entries,
        len(segments),
        sum(p.stat().st_size for p in segments),
        indexed_by,
        stored,
        len(seen),
        mismatched,
    )


def chunk_span(key: str) -> tuple[int, int]:
    """(mint, maxt) of a chunk from its key ``<tenant>/chunks/<fp>/<mint>-<maxt>-<crc>``."""
    mint, maxt, _ = key.rsplit("/", 1)[1].split("-")
    return int(mint, 16), int(maxt, 16)


def divergence(
    scan: StoreScan, base: StoreScan, labels_of: dict[int, str], top: int = 5
) -> dict[str, Any]:
    """Where a setup's store differs from the RF=1 baseline's: chunks that the baseline
    does not have (cut elsewhere, or holding other entries), by stream, with the
    ingesters whose index lists them."""
    extra = [k for k in scan.chunks if k not in base.chunks]
    missing = [k for k in base.chunks if k not in scan.chunks]
    per_fp: dict[int, list[str]] = {}
    for k in extra:
        per_fp.setdefault(int(k.split("/")[2], 16), []).append(k)

    def stream_bytes(s: StoreScan, fp: int) -> tuple[int, int]:
        keys = [k for k in s.chunks if int(k.split("/")[2], 16) == fp]
        return len(keys), sum(s.chunks[k] for k in keys)

    streams = []
    for fp, keys in sorted(per_fp.items(), key=lambda kv: -sum(scan.chunks[k] for k in kv[1])):
        n, nbytes = stream_bytes(scan, fp)
        bn, bbytes = stream_bytes(base, fp)
        streams.append(
            {
                "labels": labels_of.get(fp, f"{fp:016x}"),
                "chunks": n,
                "baseline_chunks": bn,
                "bytes": nbytes,
                "baseline_bytes": bbytes,
                "chunks_not_in_baseline": [
                    {
                        "mint": chunk_span(k)[0],
                        "maxt": chunk_span(k)[1],
                        "bytes": scan.chunks[k],
                        "entries": scan.chunk_entries[k],
                        "indexed_by": sorted(scan.indexed_by.get(k, ())),
                    }
                    for k in sorted(keys, key=chunk_span)
                ][:8],
            }
        )
    extra_bytes = sum(scan.chunks[k] for k in extra)
    return {
        "chunks_not_in_baseline": len(extra),
        "bytes_not_in_baseline": extra_bytes,
        "baseline_chunks_missing": len(missing),
        "baseline_bytes_missing": sum(base.chunks[k] for k in missing),
        "streams_diverged": len(per_fp),
        "duplicate_entries": scan.entries_stored - scan.distinct_entries,
        "top_streams": streams[:top],
    }


class DedupCluster(Cluster):
    """nats-server, ``n`` ``-target=ingester`` processes (own workdirs, one shared chunk
    directory) started ``stagger`` seconds apart, and one ``-target=distributor``."""

    def __init__(
        self,
        workdir: Path,
        args: argparse.Namespace,
        *,
        ingesters: int,
        rf: int,
        fault: float,
        repair: bool,
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(workdir)
        self.args = args
        self.n = ingesters
        self.rf = rf
        self.fault = fault
        self.repair = repair
        self.chunk_dir = workdir / "chunks"
        self.ingesters: list[Child] = []
        self.distributor: Child | None = None

    def config(self, name: str) -> dict[str, Any]:
        a = self.args
        cfg = loki_config(self.workdir / name, self.nats_url, free_port(), 0)
        return merged(
            cfg,
            {
                "common": {"replication_factor": self.rf},
                "distributor": {"replica_repair": self.repair},
                "ingester": {
                    "lifecycler": {"ID": name, "heartbeat_period": "1s"},
                    "chunk_block_size": a.block_size,
                    "chunk_target_size": a.target_size,
                    "max_chunk_age": a.max_chunk_age,
                    "chunk_idle_period": a.idle_period,
                    "flush_check_period": a.flush_check_period,
                },
                "storage_config": {"filesystem": {"directory": str(self.chunk_dir)}},
                "limits_config": {"reject_old_samples": True},
            },
        )

    def launch(self) -> None:
        nats_child, self.nats_url = start_nats(self.workdir)
        self.children.append(nats_child)
        no_faults: dict[str, str | None] = {FAILPOINTS_ENV: None}
        for i in range(self.n):
            if i:
                time.sleep(self.args.stagger)
            name = f"ingester-{i}"
            child = start_loki(self.workdir, name, "ingester", self.config(name), no_faults)
            self.children.append(child)
            self.ingesters.append(child)
        env = {FAILPOINTS_ENV: f"{REPLICA_FAILPOINT}={self.fault}"} if self.fault else no_faults
        self.distributor = start_loki(
            self.workdir, "distributor", "distributor", self.config("distributor"), env
        )
        self.children.append(self.distributor)

    async def wait_ring(self, session: Any, timeout: float = 30) -> None:
        """Until the distributor sees every ingester ACTIVE and healthy."""
        assert self.distributor is not None
        deadline = time.monotonic() + timeout
        while True:
            async with session.get(f"{self.distributor.url}/ring") as r:
                members = (await r.json())["ingesters"]
            if sum(m["state"] == "ACTIVE" and m["healthy"] for m in members) >= self.n:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"ring not complete after {timeout}s: {members}")
            await asyncio.sleep(0.1)

    async def push(self, session: Any, pushes: list[list[DedupPush]]) -> dict[str, Any]:
        """Every client's requests, clients concurrently, each in order (one at a time); a
        request that fails with 429 or 5xx is retried after a backoff, as Promtail does."""
        assert self.distributor is not None
        url = f"{self.distributor.url}/loki/api/v1/push"
        tally = {"ok": 0, "failed_attempts": 0, "given_up": 0}
        errors: list[str] = []

        async def client(reqs: list[DedupPush]) -> None:
            for p in reqs:
                await asyncio.sleep(p.sleep_s)
                ctype = "application/json" if p.fmt == "json" else "application/x-protobuf"
                headers = {"Content-Type": ctype, "X-Scope-OrgID": DEDUP_TENANT}
                for attempt in range(self.args.push_tries):
                    async with session.post(url, data=p.body, headers=headers) as r:
                        text = await r.text()
                        if r.status == 204:
                            tally["ok"] += 1
                            break
                    tally["failed_attempts"] += 1
                    if len(errors) < 3:
                        errors.append(f"{r.status} {text[:200]}")
                    if r.status != 429 and r.status < 500:
                        tally["given_up"] += 1
                        break
                    await asyncio.sleep(0.1 * 2**attempt)
                else:
                    tally["given_up"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client(reqs) for reqs in pushes))
        seconds = time.perf_counter() - t0
        lines = sum(p.lines for reqs in pushes for p in reqs)
        for e in errors:
            note(f"push failed: {e}")
        return {
            "requests": sum(map(len, pushes)),
            **tally,
            "errors": errors,
            "seconds": round(seconds, 2),
            "lines_per_s": round(lines / seconds),
        }

    async def metrics(self, session: Any, child: Child) -> dict[str, dict[str, float]]:
        async with session.get(f"{child.url}/metrics") as r:
            return parse_metrics(await r.text())

    async def repairs(self, session: Any) -> dict[str, int]:
        assert self.distributor is not None
        m = await self.metrics(session, self.distributor)
        return {
            k.split("=", 1)[1]: int(v)
            for k, v in m.get("loki_distributor_replica_repairs_total", {}).items()
        }

    async def settle(self, session: Any, quiet_s: float) -> dict[str, int]:
        """Wait until the distributor's repair counters did not move for ``quiet_s`` (a
        repair succeeds ~0.2 s after its push failed): the repairs by outcome."""
        last = await self.repairs(session)
        since = time.monotonic()
        while time.monotonic() - since < quiet_s:
            await asyncio.sleep(0.25)
            now = await self.repairs(session)
            if now != last:
                last, since = now, time.monotonic()
        return last

    async def flush(self, session: Any) -> float:
        """``POST /flush`` on each ingester, one after the other."""
        t0 = time.perf_counter()
        for child in self.ingesters:
            async with session.post(f"{child.url}/flush") as r:
                if r.status != 204:
                    raise RuntimeError(f"flush of {child.name} failed: {r.status} {await r.text()}")
        return time.perf_counter() - t0


async def dedup_setup(
    args: argparse.Namespace,
    workdir: Path,
    name: str,
    pushes: list[list[DedupPush]],
    expected: dict[tuple[int, int], bytes],
    *,
    ingesters: int,
    rf: int,
    fault: float,
    repair: bool,
) -> tuple[dict[str, Any], StoreScan]:
    """One fresh cluster: push everything, flush, read the figures, stop, scan the store."""
    t0 = time.perf_counter()
    with DedupCluster(
        workdir / name, args, ingesters=ingesters, rf=rf, fault=fault, repair=repair
    ) as cluster:
        note(f"{name}: starting nats-server, {ingesters} ingester(s) (RF={rf}), a distributor")
        cluster.launch()
        out: dict[str, Any] = {
            "rf": rf,
            "ingesters": ingesters,
            "failpoint": f"{REPLICA_FAILPOINT}={fault}" if fault else None,
            "replica_repair": repair,
            "start_s": round(time.perf_counter() - t0, 1),
        }
        async with aiohttp_session() as session:
            await cluster.wait_ring(session)
            note(f"{name}: pushing {len(expected)} lines with {len(pushes)} clients")
            out["pushes"] = await cluster.push(session, pushes)
            note(
                f"{name}: pushed in {out['pushes']['seconds']}s "
                f"({out['pushes']['lines_per_s']} lines/s), "
                f"{out['pushes']['failed_attempts']} failed attempts"
            )
            out["repairs"] = await cluster.settle(session, args.settle) if fault and repair else {}
            out["flush_s"] = round(await cluster.flush(session), 2)
            per = {
                c.name: ingester_figures(await cluster.metrics(session, c))
                for c in cluster.ingesters
            }
        cluster.stop()
    scan = scan_store(cluster.chunk_dir, DEDUP_TENANT, expected)
    total: dict[str, Any] = {
        "flushed": sum(p["flushed"] for p in per.values()),
        "uploaded": sum(p["uploaded"] for p in per.values()),
        "skipped": {r: sum(p["skipped"][r] for p in per.values()) for r in ("recent", "exists")},
    }
    out.update(
        {
            "chunk_bytes": scan.chunk_bytes,
            "index_bytes": scan.index_bytes,
            "total_bytes": scan.chunk_bytes + scan.index_bytes,
            "chunk_objects": len(scan.chunks),
            "index_segments": scan.index_segments,
            "chunks": total,
            "uploads_match_objects": total["uploaded"] == len(scan.chunks),
            "unindexed_chunks": sum(k not in scan.indexed_by for k in scan.chunks),
            "index_refs_missing": sum(k not in scan.chunks for k in scan.indexed_by),
            "per_ingester": per,
            "lines": scan.distinct_entries,
            "entries_stored": scan.entries_stored,
            "lines_match": scan.mismatched == 0 and scan.distinct_entries == len(expected),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    )
    note(
        f"{name}: {len(scan.chunks)} chunks, {scan.chunk_bytes} chunk bytes + "
        f"{scan.index_bytes} index bytes; flushed {total['flushed']}, uploaded "
        f"{total['uploaded']}, skipped {total['skipped']}; lines match: {out['lines_match']}"
    )
    return out, scan


async def run_dedup(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Generate the data once, push it to the RF=1 baseline and to each scenario's fresh
    RF=3 cluster, compare what each stored."""
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in DEDUP_SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {sorted(DEDUP_SCENARIOS)}")
    t_start = time.perf_counter()
    end_ns = time.time_ns() // (60 * NS) * (60 * NS) - 60 * NS
    note(f"generating {args.lines} lines over {args.streams} streams, {args.hours:g}h")
    data = dedup_dataset(
        args.lines,
        args.streams,
        args.hours,
        end_ns,
        args.seed,
        args.zipf,
        loghub_lines(Path(args.loghub_dir)),
    )
    pushes = dedup_pushes(
        data,
        args.clients,
        args.seed,
        (args.batch_min, args.batch_max),
        args.jitter_ms,
        args.json_share,
    )
    expected = dedup_expected(data)
    from .labels import fingerprint

    labels_of = {fingerprint(s.canonical): s.canonical for s in data}
    result: dict[str, Any] = {
        "bench": "dedup",
        "command": shlex.join(["loki-async", "bench", *argv]),
        "config": {
            "lines": args.lines,
            "streams": args.streams,
            "hours": args.hours,
            "zipf": args.zipf,
            "seed": args.seed,
            "clients": args.clients,
            "batch": [args.batch_min, args.batch_max],
            "jitter_ms": args.jitter_ms,
            "json_share": args.json_share,
            "ingesters": 3,
            "replication_factor": 3,
            "stagger_s": args.stagger,
            "fault_probability": args.fault,
            "chunk_block_size": args.block_size,
            "chunk_target_size": args.target_size,
            "max_chunk_age": args.max_chunk_age,
            "chunk_idle_period": args.idle_period,
            "flush_check_period": args.flush_check_period,
            "final_flush": "POST /flush on each ingester, one after the other",
            "repair_settle_s": args.settle,
            "cores": os.cpu_count(),
        },
        "dataset": dataset_figures(data, pushes),
    }
    del data
    failed: list[str] = []
    with bench_dir(args.keep) as workdir:
        base, base_scan = await dedup_setup(
            args, workdir, "rf1", pushes, expected, ingesters=1, rf=1, fault=0.0, repair=True
        )
        result["baseline"] = base
        if not base["lines_match"]:
            failed.append("rf1: the store does not hold exactly the lines pushed")
        out: dict[str, Any] = {}
        for name in scenarios:
            faulty, repair = DEDUP_SCENARIOS[name]
            fig, scan = await dedup_setup(
                args,
                workdir,
                name,
                pushes,
                expected,
                ingesters=3,
                rf=3,
                fault=args.fault if faulty else 0.0,
                repair=repair,
            )
            fig["amplification"] = round(fig["total_bytes"] / base["total_bytes"], 4)
            fig["amplification_chunks"] = round(fig["chunk_bytes"] / base["chunk_bytes"], 4)
            fig["lines_match_baseline"] = fig["lines"] == base["lines"]
            fig["divergence"] = divergence(scan, base_scan, labels_of)
            note(
                f"{name}: amplification {fig['amplification']} (chunks "
                f"{fig['amplification_chunks']}), {fig['divergence']['chunks_not_in_baseline']}"
                f" chunks not in the baseline"
            )
            if not (fig["lines_match"] and fig["lines_match_baseline"]):
                failed.append(f"{name}: the store does not hold exactly the lines pushed")
            if fig["pushes"]["given_up"]:
                failed.append(f"{name}: {fig['pushes']['given_up']} pushes given up")
            out[name] = fig
        result["scenarios"] = out
    result["amplification"] = {
        k: {"total": v["amplification"], "chunks": v["amplification_chunks"]}
        for k, v in out.items()
    }
    targets = {k: v for k, v in DEDUP_TARGETS.items() if k in out}
    result["targets"] = {
        "amplification_max": targets,
        "met": all(out[k]["amplification"] <= v for k, v in targets.items()),
    }
    result["lines_match"] = not failed
    result["failed"] = failed
    result["total_s"] = round(time.perf_counter() - t_start, 1)
    return result


def dedup_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "dedup",
        help="self-contained: stored bytes at RF=3 against RF=1 (replica chunk dedup)",
    )
    p.add_argument("--lines", type=int, default=1_500_000, help="lines pushed to each setup")
    p.add_argument("--streams", type=int, default=200, help="streams (2/5 loghub, 3/5 synthetic)")
    p.add_argument("--hours", type=float, default=6.0, help="time span of the data, to now")
    p.add_argument("--zipf", type=float, default=1.1, help="skew of the volume per stream")
    p.add_argument("--seed", type=int, default=42, help="of the generated data and pushes")
    p.add_argument("--clients", type=int, default=8, help="concurrent pushers")
    p.add_argument("--batch-min", type=int, default=50, help="lines per push, at least")
    p.add_argument("--batch-max", type=int, default=1000, help="lines per push, at most")
    p.add_argument("--jitter-ms", type=float, default=20.0, help="mean pause between pushes")
    p.add_argument("--json-share", type=float, default=0.25, help="share of JSON push bodies")
    p.add_argument("--push-tries", type=int, default=5, help="attempts per push (429/5xx)")
    p.add_argument(
        "--scenarios",
        default=",".join(DEDUP_SCENARIOS),
        help=f"comma-separated, of {', '.join(DEDUP_SCENARIOS)} (the RF=1 baseline always runs)",
    )
    p.add_argument("--fault", type=float, default=0.01, help="failpoint probability")
    p.add_argument("--stagger", type=float, default=2.0, help="seconds between ingester starts")
    p.add_argument("--block-size", default="64KB", help="ingester.chunk_block_size")
    p.add_argument("--target-size", default="256KB", help="ingester.chunk_target_size")
    p.add_argument("--max-chunk-age", default="2h", help="ingester.max_chunk_age")
    p.add_argument("--idle-period", default="30m", help="ingester.chunk_idle_period")
    p.add_argument("--flush-check-period", default="5s", help="ingester.flush_check_period")
    p.add_argument(
        "--settle", type=float, default=2.0, help="seconds without a repair before the flush"
    )
    p.add_argument("--loghub-dir", default=os.environ.get("LOGHUB_DIR", str(LOGHUB)))
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    return p


def self_contained(
    sub: Any, name: str, help: str, *, lines: tuple[int, str], days: float, runs: tuple[int, str]
) -> argparse.ArgumentParser:
    """The parser of a self-contained bench, with the options they all have."""
    p = sub.add_parser(name, help=help)
    p.add_argument("--lines", type=int, default=lines[0], help=lines[1])
    p.add_argument("--days", type=float, default=days, help="time span of the data")
    p.add_argument("--runs", type=int, default=runs[0], help=runs[1])
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    return p


def main(argv: list[str]) -> int:
    if argv and argv[0] == "chaos":  # crash faults on the topology: its own options
        from .chaos import main as chaos_main

        return chaos_main(argv[1:])
    if argv and argv[0] == "soak":  # leaks under long mixed load: its own options
        from .soak import main as soak_main

        return soak_main(argv[1:])
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
    bench_async = self_contained(
        sub,
        "async",
        "self-contained: async query overhead, throughput, scaling, fairness",
        lines=(600_000, "tenant A's lines"),
        days=30.0,
        runs=(100, "overhead runs per variant"),
    )
    bench_async.add_argument("--lines-b", type=int, default=30_000, help="tenant B's lines")
    bench_async.add_argument(
        "--agg-runs", type=int, default=3, help="runs of each 30-day aggregation measurement"
    )
    bench_async.add_argument("--workers-max", type=int, default=2, help="worker processes")
    bench_async.add_argument(
        "--worker-concurrency", type=int, default=2, help="splits at once per worker process"
    )
    bench_async.add_argument("--clients", type=int, default=16, help="tickets/s: clients")
    bench_async.add_argument(
        "--submit-seconds", type=float, default=4.0, help="tickets/s: duration"
    )
    trace = self_contained(
        sub,
        "trace",
        "self-contained: trace-id search over 7 days, coprocessors on vs off",
        lines=(1_000_000, "lines pushed (quick runs: 50000)"),
        days=7.0,
        runs=(5, "runs per query, coprocessors on and off each"),
    )
    trace.add_argument("--batch", type=int, default=5000, help="lines per push request")
    trace.add_argument("--seed", type=int, default=42, help="of the generated data")
    dedup_parser(sub)
    args = p.parse_args(argv)
    if args.what == "push":
        result = asyncio.run(run_push(args))
    elif args.what == "async":
        result = asyncio.run(run_async(args, argv))
    elif args.what == "trace":
        result = asyncio.run(run_trace(args, argv))
    elif args.what == "dedup":
        result = asyncio.run(run_dedup(args, argv))
    elif args.what == "query":
        result = asyncio.run(run_query(args))
    else:
        result = run_storage(args)
    print(json.dumps(result))
    return 1 if result.get("failed") else 0
