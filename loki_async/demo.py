"""``loki-async demo``: load 30 days of realistic logs into a running server, then show
three queries on them.

The data, seeded and so the same on every run within an hour:

* **service logs** (``job="services"``, ``app`` = the service, ``level``): JSON lines
  of six services answering requests (``{"level":"info","service":"checkout","msg":
  "order placed","duration":"61ms","trace_id":"1-5f84c7a4-…"}``). Every request is a
  trace whose id is an AWS X-Ray id or a UUIDv7, either stating when the trace began:
  its first line is at that time, the others within seconds after. Traffic follows the
  hour of the day; durations have a long tail (a few percent above 500ms); one
  45-minute payment provider outage brings slow requests and errors.
* **system logs** (``job="loghub"``, ``app`` = the system, ``level`` as read from the
  line): the Loghub samples (https://github.com/logpai/loghub, 16 real systems), in
  their order, spread evenly over the days.

The queries: a 7-day search for the id of one failed checkout (async; the ``traceid``
coprocessor runs only the splits the trace can be in), a 30-day count by level (async,
with a progress bar), and the slow requests of the last 24 hours (``| json | duration >
500ms``, sync). Exits 1 with a message if the server cannot be reached, rejects the old
samples, or a query fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import orjson

from .bench import LOGHUB, Trace, encode_batches, loghub_lines, uuid7_trace_id, xray_trace_id
from .client import TICKETS, ClientError, Server, check, follow, progress_line, session
from .logql.literals import parse_duration

NS = 10**9
MS = 10**6
HOUR_NS = 3600 * NS
DAY_NS = 24 * HOUR_NS
SEED = 42

SERVICES_JOB = "services"
LOGHUB_JOB = "loghub"
SERVICE_LINES_PER_DAY = 10_000  # at --scale 1
LOGHUB_LINES_PER_DAY = 2_000  # at --scale 1, all systems together
LINES_PER_TRACE = 3.3  # the mean of the requests below, debug and retry lines included

BATCH = 2000  # lines per push request, about 300 kB (Promtail sends up to 1 MB)
CONNECTIONS = 2
PUSH_TIMEOUT_S = 60.0  # a push still rate-limited or unavailable after this fails the demo
POLL_S = 0.2
QUIET_PROGRESS_S = 2.0  # progress lines when stdout is not a terminal

QUERY_RANGE = "/loki/api/v1/query_range"
PUSH = "/loki/api/v1/push"
TRACE_SEARCH_DAYS = 7
SLOW_MS = 500
SLOW_HOURS = 24
SLOW_LIMIT = 5000  # Loki's default max_entries_limit_per_query
SHOWN_LINES = 5


# ---------------------------------------------------------------------- service logs


class Request(NamedTuple):
    weight: int
    method: str
    path: str
    hops: tuple[tuple[str, str], ...]  # (service, message) called by the frontend, in order


REQUESTS = (
    Request(50, "GET", "/api/products/{n}", (("inventory", "stock checked"),)),
    Request(15, "POST", "/api/login", (("auth", "user logged in"),)),
    Request(
        15,
        "GET",
        "/api/orders/{n}",
        (("auth", "token verified"), ("shipping", "tracking fetched")),
    ),
    Request(
        20,
        "POST",
        "/api/checkout",
        (
            ("auth", "token verified"),
            ("checkout", "order placed"),
            ("payment", "payment authorized"),
            ("inventory", "stock reserved"),
            ("shipping", "shipment created"),
        ),
    ),
)
CHECKOUT = REQUESTS[3]
SERVICES = ("frontend", "auth", "inventory", "checkout", "payment", "shipping")
# Median latency (ms) and the sigma of its log-normal spread: payment calls a provider.
LATENCY = {
    "frontend": (6, 0.4),
    "auth": (12, 0.6),
    "inventory": (25, 0.8),
    "checkout": (60, 0.6),
    "payment": (170, 0.6),
    "shipping": (70, 0.7),
}
OUTAGE_LATENCY = (2600, 0.35)  # payment during the outage
OUTAGE_S = 45 * 60
ERROR_P = 0.008  # a call fails
OUTAGE_ERROR_P = 0.8
DEBUG_P = 0.15  # a call logs a debug line first
RETRY_P = 0.03  # a call retries once, with a warning
TIMEOUT_MS = 3000  # of a call that times out
ERRORS = {  # service: (message, whether the call timed out)
    "auth": ("token store unavailable", False),
    "inventory": ("deadlock detected, transaction rolled back", False),
    "checkout": ("order database connection refused", False),
    "payment": ("payment provider timeout", True),
    "shipping": ("carrier API returned 503", False),
}


def format_ms(ms: float) -> str:
    """A duration as Go prints it: ``412ms``, ``2.613s``."""
    return f"{ms:.0f}ms" if ms < 1000 else f"{ms / 1000:.3f}s"


def json_line(doc: dict[str, Any]) -> bytes:
    # A copy: the bytes orjson returns keep a 4 KiB buffer each (300,000 lines: 1.2 GB).
    return bytes(memoryview(orjson.dumps(doc)))


def diurnal(hour_ns: int) -> float:
    """Relative traffic of the hour starting at ``hour_ns`` (UTC): a quiet night, a
    peak in the afternoon, weekends at 70%."""
    t = datetime.fromtimestamp(hour_ns // NS, UTC)
    day = (0.25, 0.2, 0.18, 0.18, 0.2, 0.3, 0.45, 0.65, 0.85, 0.95, 1.0, 1.0)
    evening = (1.0, 1.0, 1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.65, 0.55, 0.45, 0.35)
    w = (day + evening)[t.hour]
    return w * 0.7 if t.weekday() >= 5 else w


class TraceWriter:
    """Writes the lines of one request: the frontend's line at the time its trace id
    states, every call's line (and its debug and retry lines) up to seconds later."""

    def __init__(self, rng: random.Random, outage: tuple[int, int]) -> None:
        self.rng = rng
        self.outage = outage
        self.rows: list[tuple[int, tuple[str, str], bytes]] = []  # ts, (app, level), line

    def latency_ms(self, service: str, t_ns: int) -> float:
        median, sigma = LATENCY[service]
        if service == "payment" and self.outage[0] <= t_ns < self.outage[1]:
            median, sigma = OUTAGE_LATENCY
        return median * self.rng.lognormvariate(0, sigma)

    def line(self, t_ns: int, level: str, service: str, fields: dict[str, Any]) -> None:
        doc = {"level": level, "service": service, **fields}
        self.rows.append((t_ns, (service, level), json_line(doc)))

    def request(self, t0: int, kind: str, req: Request, fail_at: str | None = None) -> Trace:
        """The lines of ``req`` begun at ``t0`` (rounded down to what its id states);
        ``fail_at`` makes that call fail."""
        rng = self.rng
        if kind == "xray":
            t0 -= t0 % NS
            trace_id = xray_trace_id(rng, t0)
        else:
            t0 -= t0 % MS
            trace_id = uuid7_trace_id(rng, t0)
        first = len(self.rows)
        self.rows.append((t0, ("", ""), b""))  # the frontend's line, written last
        t = t0 + rng.randrange(1, 3 * MS)
        failed = None
        for service, msg in req.hops:
            if rng.random() < DEBUG_P:
                key = f"{service}:{rng.randrange(10**6)}"
                self.line(
                    t, "debug", service, {"msg": "cache miss", "key": key, "trace_id": trace_id}
                )
                t += rng.randrange(50_000, 900_000)
            ms = self.latency_ms(service, t)
            if rng.random() < RETRY_P:
                fields = {"msg": "retrying after connection reset", "trace_id": trace_id}
                self.line(t + round(ms * MS), "warn", service, fields)
                ms += self.latency_ms(service, t)
            in_outage = service == "payment" and self.outage[0] <= t < self.outage[1]
            error_p = OUTAGE_ERROR_P if in_outage else ERROR_P
            if service == fail_at or (fail_at is None and rng.random() < error_p):
                failed = service
                msg, timed_out = ERRORS[service]
                if timed_out:
                    ms = TIMEOUT_MS + rng.random() * 50
                t += round(ms * MS)
                fields = {"msg": msg, "duration": format_ms(ms), "trace_id": trace_id}
                self.line(t, "error", service, fields)
                break
            t += round(ms * MS)
            level = "warn" if ms > SLOW_MS else "info"
            fields = {"msg": msg, "duration": format_ms(ms), "trace_id": trace_id}
            self.line(t, level, service, fields)
            t += rng.randrange(100_000, 2 * MS)
        total_ms = (t - t0) / MS + self.latency_ms("frontend", t)
        status = 200 if failed is None else 502
        level = "error" if failed else "warn" if total_ms > SLOW_MS else "info"
        doc = {
            "level": level,
            "service": "frontend",
            "msg": "request served" if failed is None else f"request failed: {failed} error",
            "method": req.method,
            "path": req.path.format(n=rng.randrange(1, 100_000)),
            "status": status,
            "duration": format_ms(total_ms),
            "user": f"u-{rng.randrange(1, 50_000)}",
            "trace_id": trace_id,
        }
        self.rows[first] = (t0, ("frontend", level), json_line(doc))
        return Trace(kind, trace_id, t0, len(self.rows) - first)


# ---------------------------------------------------------------------- the data set

Row = tuple[int, tuple[tuple[str, str], ...], bytes]  # ts ns, labels, line

LOGHUB_LEVEL = re.compile(
    rb"\b(?:(?P<debug>TRACE|DEBUG|Debug)|(?P<info>INFO|Info|NOTICE|notice|info)"
    rb"|(?P<warn>WARN|WARNING|Warning|warn)|(?P<error>ERROR|Error|error|FATAL|SEVERE|CRITICAL))\b"
    rb"|^\S+ \S+ +\d+ +\d+ (?P<logcat>[VDIWEF]) "  # Android's logcat
)
LOGCAT = {b"V": "debug", b"D": "debug", b"I": "info", b"W": "warn", b"E": "error", b"F": "error"}


def loghub_level(line: bytes) -> str:
    """The level a line states near its start, as a log shipper would detect it;
    ``unknown`` if none."""
    m = LOGHUB_LEVEL.search(line, 0, 120)
    if m is None or m.lastgroup is None:
        return "unknown"
    return LOGCAT[m["logcat"]] if m.lastgroup == "logcat" else m.lastgroup


@dataclass
class Dataset:
    start_ns: int
    end_ns: int
    rows: list[Row]  # in time order
    traces: int
    needle: Trace  # the failed checkout the trace search looks for
    outage_ns: int  # start of the payment provider outage
    service_lines: int
    loghub_lines: int
    systems: int
    streams: int

    @property
    def raw_bytes(self) -> int:
        return sum(len(line) for _, _, line in self.rows)


def generate(
    end_ns: int,
    days: float,
    scale: float = 1.0,
    seed: int = SEED,
    systems: dict[str, list[bytes]] | None = None,
) -> Dataset:
    """The demo's logs for the ``days`` before ``end_ns`` (rounded down to the hour),
    ``scale`` times the default volume; the same for the same arguments."""
    rng = random.Random(seed)
    end_ns -= end_ns % HOUR_NS
    hours = max(round(days * 24), 1)
    start_ns = end_ns - hours * HOUR_NS
    # The outage: at 14:10 UTC (a busy hour) of the day about 30% of the span back.
    day = (end_ns - round(hours * 0.3) * HOUR_NS) // DAY_NS * DAY_NS
    outage = min(max(day + 14 * HOUR_NS + 10 * 60 * NS, start_ns), end_ns - OUTAGE_S * NS)
    writer = TraceWriter(rng, (outage, outage + OUTAGE_S * NS))

    # Requests: each hour's share of the traffic, at random times within the hour.
    weights = [diurnal(start_ns + h * HOUR_NS) for h in range(hours)]
    per_weight = SERVICE_LINES_PER_DAY * scale * hours / 24 / LINES_PER_TRACE / sum(weights)
    starts = sorted(
        start_ns + h * HOUR_NS + rng.randrange(HOUR_NS)
        for h, w in enumerate(weights)
        for _ in range(round(w * per_weight))
    )
    requests = rng.choices(REQUESTS, [r.weight for r in REQUESTS], k=len(starts))
    for i, (t0, req) in enumerate(zip(starts, requests, strict=True)):
        writer.request(t0, ("xray", "uuidv7")[i % 2], req)
    # The needle: a checkout that failed at payment, halfway into the search's 7 days.
    search_days = min(days, TRACE_SEARCH_DAYS)
    needle_t = end_ns - round(search_days * DAY_NS / 2) + 17 * 60 * NS + 23_456 * MS
    needle = writer.request(needle_t, "xray", CHECKOUT, fail_at="payment")
    streams: dict[tuple[str, str, str], tuple[tuple[str, str], ...]] = {}

    def labels(job: str, app: str, level: str) -> tuple[tuple[str, str], ...]:
        key = (job, app, level)
        if key not in streams:
            streams[key] = (("app", app), ("job", job), ("level", level))
        return streams[key]

    rows: list[Row] = [
        (ts, labels(SERVICES_JOB, app, level), line) for ts, (app, level), line in writer.rows
    ]
    service_lines = len(rows)

    # System logs: every sample in its order, spread evenly with a jitter.
    systems = loghub_lines() if systems is None else systems
    per_system = round(LOGHUB_LINES_PER_DAY * scale * hours / 24 / len(systems))
    slot = (end_ns - start_ns) / max(per_system, 1)
    for name, lines in systems.items():
        levels = [loghub_level(line) for line in lines]
        app = name.lower()
        for i in range(per_system):
            j = i % len(lines)
            ts = start_ns + int((i + rng.random()) * slot)
            rows.append((ts, labels(LOGHUB_JOB, app, levels[j]), lines[j]))
    rows.sort(key=lambda r: r[0])
    return Dataset(
        start_ns,
        end_ns,
        rows,
        len(starts) + 1,
        needle,
        outage,
        service_lines,
        len(rows) - service_lines,
        len(systems),
        len(streams),
    )


# ---------------------------------------------------------------------- output


def iso(ns: int, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return datetime.fromtimestamp(ns / NS, UTC).strftime(fmt)


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


class Progress:
    """One progress line: redrawn in place (``\\r``) on a terminal, printed every few
    seconds otherwise."""

    def __init__(self, prefix: str = "   ") -> None:
        self.tty = sys.stdout.isatty()
        self.prefix = prefix
        self.shown = 0.0
        self.text = ""

    def update(self, text: str) -> None:
        self.text = text
        now = time.monotonic()
        if self.tty:
            sys.stdout.write(f"\r{self.prefix}{text}\x1b[K")
            sys.stdout.flush()
        elif now - self.shown >= QUIET_PROGRESS_S:
            print(self.prefix + text, flush=True)
        else:
            return
        self.shown = now

    def done(self, text: str) -> None:
        """Replace the bar by ``text`` (a terminal), or print it."""
        if self.tty:
            sys.stdout.write("\r\x1b[K")
        print(self.prefix + text, flush=True)


def bar(done: int, total: int, width: int = 20) -> str:
    filled = width * done // total if total else 0
    return "[" + "#" * filled + "-" * (width - filled) + "]"


# ---------------------------------------------------------------------- server calls


REJECTED_OLD = (
    "error: the server rejects samples older than its limits_config.reject_old_samples_max_age "
    "(7 days by default), and the demo loads {days:g} days of logs.\n"
    "Start the server with -validation.reject-old-samples=false "
    "(or limits_config: {{reject_old_samples: false}}) and run the demo again."
)


async def wait_ready(srv: Server, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body, _ = await srv.request("GET", "/ready")
        except ClientError as e:
            raise ClientError(
                f"{e.message}\nIs loki-async running? Start one with:\n"
                "  loki-async -validation.reject-old-samples=false"
            ) from None
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise ClientError(f"{srv.addr} is not ready: {status} {body.decode(errors='replace')}")
        await asyncio.sleep(0.5)


class Batch(NamedTuple):
    body: bytes  # protobuf push request
    lines: int
    raw: int  # line bytes, what the rate limit counts


async def push(srv: Server, batch: Batch, days: float) -> int:
    """POST one push; waits out the tenant's rate limit (429) and a busy server (503)
    as Promtail does, for up to PUSH_TIMEOUT_S. Returns the rate limit (bytes/s) if it
    had to wait for it, else 0."""
    headers = {**srv.headers, "Content-Type": "application/x-protobuf"}
    deadline = time.monotonic() + PUSH_TIMEOUT_S
    limited = 0
    while True:
        try:
            async with srv.session.post(srv.addr + PUSH, data=batch.body, headers=headers) as r:
                status, text = r.status, (await r.read()).decode(errors="replace")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ClientError(f"cannot reach {srv.addr}: {e or 'timed out'}") from None
        if status in (200, 204):
            return limited
        if status == 400 and "timestamp too old" in text:
            raise ClientError(REJECTED_OLD.format(days=days))
        if status not in (429, 503) or time.monotonic() > deadline:
            raise ClientError(f"push failed: {status} {text.strip()}")
        # Loki's message states the limit ("limit: 4194304 bytes/sec"): wait for this body.
        m = re.search(r"limit: (\d+) bytes/sec", text)
        limited = int(m.group(1)) if m else limited
        await asyncio.sleep(max(batch.raw / limited, 0.05) if limited else 0.5)


async def load(srv: Server, data: Dataset, days: float) -> dict[str, float]:
    """Push ``data`` oldest first (so a server rejecting old samples answers the first
    push, having stored nothing), then flush it to the store. Returns seconds taken by
    ``encode``, ``push`` and ``flush``."""
    t0 = time.perf_counter()
    batches = []
    for n in range(0, len(data.rows), BATCH):
        rows = data.rows[n : n + BATCH]
        (body,), raw = encode_batches(rows, list, BATCH, "protobuf")
        batches.append(Batch(body, len(rows), raw))
    t1 = time.perf_counter()
    progress = Progress()
    total = len(data.rows)
    sent = sent_bytes = limit = 0

    async def send(batch: Batch) -> None:
        nonlocal sent, sent_bytes, limit
        limit = await push(srv, batch, days) or limit
        sent, sent_bytes = sent + batch.lines, sent_bytes + batch.raw
        s = time.perf_counter() - t1
        progress.update(f"{bar(sent, total)} {sent:,}/{total:,} lines, {mb(sent_bytes)}, {s:.1f} s")

    # The first push alone: it tells whether the server takes old samples.
    await send(batches[0])
    queue = list(reversed(batches[1:]))

    async def pusher() -> None:
        while queue:
            await send(queue.pop())

    await asyncio.gather(*(pusher() for _ in range(CONNECTIONS)))
    t2 = time.perf_counter()
    progress.done(
        f"pushed {total:,} lines ({mb(sent_bytes)}) in {len(batches):,} requests: "
        f"{t2 - t1:.1f} s, {sent_bytes / 1e6 / (t2 - t1):.1f} MB/s"
    )
    if limit:
        print(
            f"   (paced by the tenant's ingestion rate limit, {limit / (1 << 20):g} MiB/s: "
            "-distributor.ingestion-rate-limit-mb raises it)"
        )
    status, text, _ = await srv.request("POST", "/flush")
    t3 = time.perf_counter()
    if status in (200, 204):
        print(f"   flushed to the store: {t3 - t2:.1f} s")
    else:  # not fatal: the ingesters answer for what they hold
        print(f"   (no flush: {status} {text.decode(errors='replace').strip()})")
    return {"encode": t1 - t0, "push": t2 - t1, "flush": t3 - t2}


class AsyncRun(NamedTuple):
    status: dict[str, Any]  # the ticket's final /status document
    result: dict[str, Any]  # Loki's JSON
    seconds: float


async def run_async(
    srv: Server,
    params: dict[str, str],
    on_status: Callable[[dict[str, Any], float], None] | None = None,
) -> AsyncRun:
    """Submit a query with ``async=true`` and long-poll its ticket for the result, the
    time it took being the time the result arrived; meanwhile ``on_status`` sees each
    ``/status`` document every POLL_S with the seconds since submission."""
    t0 = time.perf_counter()
    status, body, _ = await srv.request("GET", QUERY_RANGE, {**params, "async": "true"})
    if status != 202:
        check(status, body)
        raise ClientError(f"error: expected 202 Accepted for an async query, got {status}")
    ticket = orjson.loads(body)["data"]["ticket"]

    async def ticket_status() -> dict[str, Any]:
        _, body = await srv.call("GET", f"{TICKETS}/{ticket}/status")
        return orjson.loads(body)["data"]

    async def watch(report: Callable[[dict[str, Any], float], None]) -> None:
        while True:
            report(await ticket_status(), time.perf_counter() - t0)
            await asyncio.sleep(POLL_S)

    watcher = asyncio.create_task(watch(on_status)) if on_status else None
    try:
        body = await follow(srv, ticket, show_progress=False)  # a failed query raises
    finally:
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    seconds = time.perf_counter() - t0
    return AsyncRun(await ticket_status(), orjson.loads(body), seconds)


def entries(result: dict[str, Any]) -> list[tuple[int, dict[str, str], dict[str, Any]]]:
    """The log entries of a streams result as (ts, stream labels, parsed JSON line),
    oldest first."""
    out = [
        (int(v[0]), s["stream"], orjson.loads(v[1]))
        for s in result["data"]["result"]
        for v in s["values"]
    ]
    out.sort(key=lambda e: e[0])
    return out


def show_entry(ts: int, line: dict[str, Any]) -> str:
    what = line.get("msg", "")
    if "path" in line:
        what = f"{line['method']} {line['path']} {line['status']} ({what})"
    return (
        f"     {iso(ts, '%m-%d %H:%M:%S.%f')[:-3]}  {line.get('service', ''):<9} "
        f"{line.get('level', ''):<5} {line.get('duration', ''):>7}  {what}"
    )


# ---------------------------------------------------------------------- the showcase


async def trace_search(srv: Server, data: Dataset, now: int) -> float:
    needle = data.needle
    query = f'{{job="{SERVICES_JOB}"}} |= "{needle.id}"'
    print(f"\n2. Trace search: one trace id over the last {TRACE_SEARCH_DAYS} days (async)")
    print(f"   query: {query}")
    print(
        f"   A checkout failed on {iso(needle.start_ns)} UTC; the error page showed this "
        "X-Ray trace id. The traceid\n   coprocessor reads the time in the id and runs "
        "only the one-hour splits the trace can be in."
    )
    params = {
        "query": query,
        "start": str(now - TRACE_SEARCH_DAYS * DAY_NS),
        "end": str(now),
        "limit": "100",
    }
    run = await run_async(srv, params)
    p, stats = run.status["progress"], run.status["stats"]
    found = entries(run.result)
    plugin = p.get("coprocessors", {}).get("traceid", {})
    print(
        f"   {p['splits_total']} splits: {p['splits_skipped']} skipped by traceid, "
        f"{p['splits_total'] - p['splits_skipped']} run "
        f"({plugin.get('narrowed', 0)} narrowed to the trace's window); "
        f"{stats['lines_processed']:,} lines ({mb(stats['bytes_processed'])}) read"
    )
    print(f"   {len(found)} lines of the trace, in {run.seconds:.2f} s:")
    for ts, _, line in found:
        print(show_entry(ts, line))
    if len(found) != needle.lines:
        raise ClientError(
            f"error: the trace search found {len(found)} lines, the data holds {needle.lines}"
        )
    return run.seconds


async def by_level(srv: Server, data: Dataset, now: int, days: float) -> float:
    selector = f'{{job=~"{LOGHUB_JOB}|{SERVICES_JOB}"}}'
    query = f"sum by (level) (count_over_time({selector}[1h]))"
    print(f"\n3. Lines per level over {days:g} days, hour by hour (async)")
    print(f"   query: {query}   step: 1h")
    print(
        "   Split by hour and run on the querier workers; the ticket's /status shows the progress."
    )
    progress = Progress()

    def on_status(st: dict[str, Any], s: float) -> None:
        if st["progress"]["splits_total"]:  # planned
            progress.update(f"{progress_line(st)}  {s:.1f} s")

    params = {
        "query": query,
        "start": str(now - round(days * DAY_NS)),
        "end": str(now),
        "step": "1h",
    }
    run = await run_async(srv, params, on_status)
    p, stats = run.status["progress"], run.status["stats"]
    progress.done(
        f"{p['splits_done']}/{p['splits_total']} splits ({p['splits_cached']} from the "
        f"split cache, {p['splits_skipped']} skipped), {stats['lines_processed']:,} lines "
        f"({mb(stats['bytes_processed'])}) read, in {run.seconds:.2f} s"
    )
    totals: Counter[str] = Counter()
    errors_by_hour: Counter[int] = Counter()
    for series in run.result["data"]["result"]:
        level = series["metric"].get("level", "")
        for ts, value in series["values"]:
            totals[level] += int(float(value))
            if level == "error":
                errors_by_hour[int(float(ts))] += int(float(value))
    total = sum(totals.values())
    if total != len(data.rows):
        print(f"   note: counted {total:,} lines, {len(data.rows):,} were loaded in this run")
    for level, n in totals.most_common():
        print(f"     {level:<8} {n:>9,}  {100 * n / max(total, 1):5.1f}%  {bar(n, total, 30)}")
    if errors_by_hour:
        # A point counts the hour before its time.
        hour, n = errors_by_hour.most_common(1)[0]
        median = sorted(errors_by_hour.values())[len(errors_by_hour) // 2]
        outage = (hour - 3600) * NS <= data.outage_ns < hour * NS
        print(
            f"   errors peak at {iso((hour - 3600) * NS)}-{iso(hour * NS, '%H:%M')} UTC with "
            f"{n:,} (median hour: {median:,})"
            + (": the payment provider outage in the data" if outage else "")
        )
    return run.seconds


async def slow_requests(srv: Server, now: int) -> float:
    query = f'{{job="{SERVICES_JOB}"}} | json | duration > {SLOW_MS}ms'
    print(f"\n4. Slow calls of the last {SLOW_HOURS} hours (sync)")
    print(f"   query: {query}")
    print("   The json parser turns every field into a label; the filter reads durations.")
    t0 = time.perf_counter()
    params = {
        "query": query,
        "start": str(now - SLOW_HOURS * HOUR_NS),
        "end": str(now),
        "limit": str(SLOW_LIMIT),
    }
    status, body, _ = await srv.request("GET", QUERY_RANGE, params)
    check(status, body)
    seconds = time.perf_counter() - t0
    result = orjson.loads(body)
    found = entries(result)
    summary = result["data"].get("stats", {}).get("summary", {})
    by_service = Counter(line.get("service", "") for _, _, line in found)
    more = "at least " if len(found) >= SLOW_LIMIT else ""
    print(
        f"   {more}{len(found):,} of {summary.get('totalLinesProcessed', 0):,} lines, in "
        f"{seconds:.2f} s; by service: "
        + ", ".join(f"{s} {n:,}" for s, n in by_service.most_common())
    )
    print("   the slowest:")
    found.sort(key=lambda e: -parse_duration(e[2].get("duration", "0s")))
    for ts, _, line in found[:SHOWN_LINES]:
        print(show_entry(ts, line))
    return seconds


async def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    async with session() as s:
        srv = Server(s, args.url, args.tenant)
        await wait_ready(srv)
        print(
            f"loki-async demo: {srv.addr}"
            + (f", tenant {args.tenant}" if args.tenant else "")
            + f"\n\n1. Loading {args.days:g} days of logs"
        )
        t0 = time.perf_counter()
        systems = loghub_lines(args.loghub_dir)
        data = generate(time.time_ns(), args.days, args.scale, systems=systems)
        gen_s = time.perf_counter() - t0
        print(
            f"   generated {len(data.rows):,} lines ({mb(data.raw_bytes)}) in {data.streams} "
            f"streams, {iso(data.start_ns)} to {iso(data.end_ns)} UTC, in {gen_s:.1f} s:\n"
            f'     {data.service_lines:,} service lines ({{job="{SERVICES_JOB}"}}, JSON, '
            f"{len(SERVICES)} services, {data.traces:,} traces with X-Ray and UUIDv7 ids)\n"
            f'     {data.loghub_lines:,} system lines ({{job="{LOGHUB_JOB}"}}, {data.systems} '
            "systems of the Loghub samples, https://github.com/logpai/loghub)"
        )
        times = await load(srv, data, args.days)
        load_s = time.perf_counter() - t0
        print(
            f"   load: {load_s:.1f} s (generate {gen_s:.1f} s, encode {times['encode']:.1f} s, "
            f"push {times['push']:.1f} s, flush {times['flush']:.1f} s)"
        )
        now = time.time_ns()
        search_s = await trace_search(srv, data, now)
        level_s = await by_level(srv, data, now, args.days)
        slow_s = await slow_requests(srv, now)
    total = time.perf_counter() - t_start
    print(
        f"\ntotal: {total:.1f} s (load {load_s:.1f} s, trace search {search_s:.2f} s, "
        f"lines per level {level_s:.2f} s, slow calls {slow_s:.2f} s)"
    )
    return 0


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loki-async demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--url", default="http://127.0.0.1:3100", help="the server (default: %(default)s)"
    )
    p.add_argument("--tenant", default="", help="X-Scope-OrgID (servers with auth enabled)")
    p.add_argument("--days", type=positive, default=30.0, help="days of logs, to now (default: 30)")
    p.add_argument(
        "--scale",
        type=positive,
        default=1.0,
        help=f"volume: {SERVICE_LINES_PER_DAY:,} service and {LOGHUB_LINES_PER_DAY:,} "
        "system lines per day at 1 (the default)",
    )
    p.add_argument("--loghub-dir", type=Path, default=LOGHUB, help="the Loghub samples")
    return p


def main(argv: Sequence[str]) -> int:
    """``loki-async demo``; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except ClientError as e:
        if sys.stdout.isatty():  # end a progress bar
            print(flush=True)
        print(e.message, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
