"""``loki-async bench soak``: hours of mixed load on one ``-target=all`` process, with its
memory, open files and event-loop tasks sampled.

Pushers, a sync querier and an async querier (``chaos.Load``) run for ``--minutes``;
every few seconds the process's resident memory and open file descriptors are read from
``/proc`` and its task count from ``/metrics`` (``loki_asyncio_tasks``). Chunks are cut
and flushed every few minutes (short ``max_chunk_age``), so what the ingester holds is
bounded by design and any further growth is a leak. The first fifth of the run is
warm-up; after it, every figure must stay within its bound of its value at the end of
warm-up. At the end, the count of stored lines must equal the count acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

from .chaos import NS, Load, SingleProcess, _get, _rss_mb

SAMPLE_S = 5.0
FLAGS = [
    "-ingester.max-chunk-age=2m",
    "-ingester.chunks-idle-period=30s",
    "-ingester.flush-check-period=5s",
    "-querier-worker.split-cache-ttl=5m",
]
# Growth allowed after warm-up: memory (relative and absolute slack), descriptors, tasks.
RSS_GROWTH = 1.25
RSS_SLACK_MB = 40.0
FD_SLACK = 16
TASK_SLACK = 32


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    fds: int
    tasks: int
    lines_acked: int


@dataclass
class Report:
    minutes: float
    lines_acked: int = 0
    lines_stored: int = 0
    pushes_failed: int = 0
    queries: int = 0
    queries_failed: int = 0
    async_queries: int = 0
    async_queries_failed: int = 0
    warmup_s: float = 0.0
    rss_mb_at_warmup: float = 0.0
    rss_mb_max_after_warmup: float = 0.0
    fds_at_warmup: int = 0
    fds_max_after_warmup: int = 0
    tasks_at_warmup: int = 0
    tasks_max_after_warmup: int = 0
    problems: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


async def _tasks(session: aiohttp.ClientSession, url: str) -> int:
    status, text = await _get(session, f"{url}/metrics", {})
    if status == 200 and isinstance(text, str):
        for line in text.splitlines():
            if line.startswith("loki_asyncio_tasks "):
                return int(float(line.split()[1]))
    return -1


async def soak(workdir: Path, minutes: float, pushers: int = 2) -> Report:
    """Run the soak; the report says whether anything grew beyond its bound."""
    server = SingleProcess(workdir, FLAGS)
    await asyncio.to_thread(server.start)
    report = Report(minutes)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            load = Load(server.url, server.url, "soak", pushers=pushers, pause_s=0.2)
            load.start(session)
            started = time.monotonic()
            end = started + minutes * 60
            while time.monotonic() < end:
                pid = server.child.proc.pid
                report.samples.append(
                    Sample(
                        round(time.monotonic() - started, 1),
                        round(_rss_mb(pid), 1),
                        _fds(pid),
                        await _tasks(session, server.url),
                        sum(len(v) for v in load.acked.values()),
                    )
                )
                await asyncio.sleep(SAMPLE_S)
            await load.stop()
            report.lines_acked = sum(len(v) for v in load.acked.values())
            report.lines_stored = await _stored(session, server.url, load)
            c = load.counts
            report.pushes_failed = sum(v for k, v in c.items() if k.startswith("pushes_failed"))
            report.queries = sum(v for k, v in c.items() if k.startswith("queries_") and
                                 "failed" not in k)  # fmt: skip
            report.queries_failed = sum(v for k, v in c.items() if k.startswith("queries_failed"))
            report.async_queries = c["async_queries"]
            report.async_queries_failed = c["async_queries_failed"]
    finally:
        await asyncio.to_thread(server.stop)
    judge(report)
    return report


async def _stored(session: aiohttp.ClientSession, url: str, load: Load) -> int:
    """Lines stored for the soak's streams, counted by the server."""
    now = time.time_ns()
    rng = max(1, (now - load.base_ns) // NS + 60)
    status, body = await _get(
        session, f"{url}/loki/api/v1/query",
        {"query": f'sum(count_over_time({{fault="soak"}}[{rng}s]))', "time": str(now)},
    )  # fmt: skip
    if status != 200 or not body["data"]["result"]:
        return 0
    return int(float(body["data"]["result"][0]["value"][1]))


def judge(report: Report) -> None:
    """Fill the warm-up figures and the problems list."""
    samples = report.samples
    if len(samples) < 5:
        report.problems.append(f"too few samples ({len(samples)})")
        return
    warm = samples[len(samples) // 5]
    after = samples[len(samples) // 5 :]
    report.warmup_s = warm.t_s
    report.rss_mb_at_warmup = warm.rss_mb
    report.rss_mb_max_after_warmup = max(s.rss_mb for s in after)
    report.fds_at_warmup = warm.fds
    report.fds_max_after_warmup = max(s.fds for s in after)
    report.tasks_at_warmup = warm.tasks
    report.tasks_max_after_warmup = max(s.tasks for s in after)
    if report.rss_mb_max_after_warmup > warm.rss_mb * RSS_GROWTH + RSS_SLACK_MB:
        report.problems.append(
            f"memory grew from {warm.rss_mb} MB to {report.rss_mb_max_after_warmup} MB"
        )
    if report.fds_max_after_warmup > warm.fds + FD_SLACK:
        report.problems.append(f"open files grew from {warm.fds} to {report.fds_max_after_warmup}")
    if report.tasks_max_after_warmup > warm.tasks + TASK_SLACK:
        report.problems.append(f"tasks grew from {warm.tasks} to {report.tasks_max_after_warmup}")
    if min(s.tasks for s in samples) < 0:
        report.problems.append("/metrics did not answer at every sample")
    if report.lines_stored != report.lines_acked:
        report.problems.append(
            f"{report.lines_acked} lines acknowledged, {report.lines_stored} stored"
        )
    if report.pushes_failed or report.queries_failed or report.async_queries_failed:
        report.problems.append(
            f"failures: {report.pushes_failed} pushes, {report.queries_failed} queries, "
            f"{report.async_queries_failed} async queries"
        )


def svg_plot(report: Report) -> str:
    """The memory curve (and open files) as a small self-contained SVG."""
    w, h, pad = 640, 240, 40
    xs = [s.t_s for s in report.samples] or [0.0]
    rss = [s.rss_mb for s in report.samples] or [0.0]
    x_max = max(xs) or 1.0
    y_max = max(rss) * 1.15 or 1.0

    def pt(x: float, y: float) -> str:
        return f"{pad + x / x_max * (w - 2 * pad):.1f},{h - pad - y / y_max * (h - 2 * pad):.1f}"

    line = " ".join(pt(x, y) for x, y in zip(xs, rss, strict=True))
    warm_x = pad + report.warmup_s / x_max * (w - 2 * pad)
    ticks = "".join(
        f'<text x="{pad - 6}" y="{h - pad - v / y_max * (h - 2 * pad) + 4:.1f}" '
        f'text-anchor="end">{v:.0f}</text>'
        for v in (0, y_max / 2, y_max / 1.15)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        'font-family="sans-serif" font-size="11">'
        f'<rect width="{w}" height="{h}" fill="white"/>'
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#888"/>'
        f'<line x1="{warm_x:.1f}" y1="{pad}" x2="{warm_x:.1f}" y2="{h - pad}" '
        'stroke="#bbb" stroke-dasharray="4 3"/>'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="2" points="{line}"/>'
        f"{ticks}"
        f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">minutes: 0 to '
        f"{x_max / 60:.0f}; dashed: end of warm-up</text>"
        f'<text x="{pad}" y="{pad - 12}">resident memory of -target=all, MB '
        f"({report.lines_acked:,} lines pushed)</text>"
        "</svg>\n"
    )


def main(argv: list[str]) -> int:
    """``loki-async bench soak``: print the report as JSON (samples included)."""
    p = argparse.ArgumentParser(prog="loki-async bench soak", description=__doc__)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--pushers", type=int, default=2)
    p.add_argument("--svg", default="", help="also write the memory curve to this file")
    p.add_argument("--dir", default="", help="work directory (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loki-soak-") as tmp:
        report = asyncio.run(soak(Path(args.dir or tmp), args.minutes, args.pushers))
    if args.svg:
        Path(args.svg).write_text(svg_plot(report))
    print(json.dumps(asdict(report), indent=2))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
