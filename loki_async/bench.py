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
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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


# --------------------------------------------------------------------------- bench async

REPO = Path(__file__).resolve().parents[1]
HOUR_NS = 3600 * NS
DAY_NS = 86400 * NS
TENANT_A, TENANT_B = "tenant-a", "tenant-b"
AGG_QUERY = 'sum by (level) (count_over_time({job="bench"}[1h]))'
TINY_QUERY = 'count_over_time({app="api"}[5m])'
SMALL_QUERY = 'count_over_time({job="bench"}[5m])'


def note(msg: str) -> None:
    """A progress note on stderr (stdout carries the JSON only)."""
    print(f"[bench async {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Child:
    """A process this benchmark started, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Any
    url: str = ""

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(name: str, cmd: list[str], workdir: Path) -> Child:
    """Start ``cmd`` with its output in ``workdir/<name>.log``; it gets SIGTERM if this
    process dies (Linux), so nothing outlives a killed benchmark."""
    from .bus import _die_with_parent

    env = dict(os.environ)  # this checkout's package, installed or not
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = open(workdir / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    return Child(name, proc, log)


def wait_port(child: Child, port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{child.name}: port {port} did not open in {timeout}s")


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


def start_loki(workdir: Path, name: str, target: str, cfg: dict[str, Any]) -> Child:
    """``loki-async -target=<target>`` with ``cfg``; returns once ``/ready`` answers 200."""
    import yaml

    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "loki_async.cli", f"-config.file={path}", f"-target={target}"]
    child = spawn(name, cmd, workdir)
    child.url = f"http://127.0.0.1:{cfg['server']['http_listen_port']}"
    try:
        wait_ready(child)
    except BaseException:
        stop_child(child)
        raise
    return child


def wait_ready(child: Child, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited with {child.proc.returncode} (see {child.log.name})"
            )
        try:
            with urllib.request.urlopen(f"{child.url}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} not ready after {timeout}s (see {child.log.name})")


def stop_child(child: Child, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if child.proc.poll() is None:
        child.proc.terminate()
        try:
            child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(10)
    child.log.close()


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


class AsyncBench:
    """The processes of ``bench async`` and its measurements."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.children: list[Child] = []
        self.workers: list[Child] = []
        self.nats_url = ""
        self.main: Child | None = None

    # ------------------------------------------------------------------ processes

    def start(self) -> None:
        nats_child, self.nats_url = start_nats(self.workdir)
        self.children.append(nats_child)
        note(f"nats-server at {self.nats_url}, store in {self.workdir}")
        cfg = loki_config(self.workdir, self.nats_url, free_port(), 0)
        self.main = start_loki(self.workdir, "frontend", "all", cfg)
        self.children.append(self.main)
        note(f"-target=all (no workers) at {self.main.url}")

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
        for child in reversed(self.children):
            try:
                stop_child(child)
            except Exception as e:  # keep stopping the others
                note(f"stopping {child.name} failed: {e!r}")
        self.children.clear()
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
        t0 = time.perf_counter()
        note("flushing the ingester to the store (POST /flush)")
        async with aiohttp_session() as session:
            async with session.post(f"{self.main.url}/flush") as r:
                if r.status != 204:
                    raise RuntimeError(f"flush failed: {r.status} {await r.text()}")
            flush_s = time.perf_counter() - t0
            # The store alone must now hold every entry pushed (nothing left in memory).
            now = time.time_ns()
            for tenant, lines in ((TENANT_A, self.args.lines), (TENANT_B, self.args.lines_b)):
                params = {
                    "query": '{job="bench"}',
                    "start": str(now - int((self.args.days + 1) * DAY_NS)),
                    "end": str(now),
                }
                async with session.get(
                    f"{self.main.url}/loki/api/v1/index/stats",
                    params=params,
                    headers={"X-Scope-OrgID": tenant},
                ) as r:
                    st = await r.json()
                out[tenant]["chunks"] = st["chunks"]
                if st["entries"] != lines:
                    note(f"warning: {tenant} index holds {st['entries']} entries of {lines}")
        out["flush_s"] = round(flush_s, 2)
        note(f"flushed in {flush_s:.1f}s: {out[TENANT_A]['chunks']} chunks for {TENANT_A}")
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


async def run_async(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    """Start the processes, load data, measure; every process is stopped at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="loki-async-bench-"))
    bench = AsyncBench(args, workdir)
    t_start = time.perf_counter()
    try:
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
    finally:
        bench.stop()
        if args.keep:
            note(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


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
    bench_async = sub.add_parser(
        "async", help="self-contained: async query overhead, throughput, scaling, fairness"
    )
    bench_async.add_argument("--lines", type=int, default=600_000, help="tenant A's lines")
    bench_async.add_argument("--lines-b", type=int, default=30_000, help="tenant B's lines")
    bench_async.add_argument("--days", type=float, default=30.0, help="time span of the data")
    bench_async.add_argument("--runs", type=int, default=100, help="overhead runs per variant")
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
    bench_async.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    args = p.parse_args(argv)
    if args.what == "push":
        result = asyncio.run(run_push(args))
    elif args.what == "async":
        result = asyncio.run(run_async(args, argv))
    elif args.what == "query":
        result = asyncio.run(run_query(args))
    else:
        result = run_storage(args)
    print(json.dumps(result))
    return 1 if result.get("failed") else 0
