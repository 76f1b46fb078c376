"""``loki-async bench chaos``: crash faults under load, with an oracle.

Each kind of process is killed with SIGKILL while pushers and queriers run against it,
then restarted; every line a push was acknowledged for (204) is then looked for with
queries. The production topology (``topology.LocalCluster``: three NATS nodes, S3,
distributor, three ingesters at RF=3, query-frontend, two workers) serves all faults but
one, which kills a single ``-target=all`` process (RF=1, WAL) instead.

Per fault the outcome says what load ran, how many lines were acknowledged and how many
of those were lost (must be 0), how many pushes and queries failed while the process
was down and after it came back, and how long recovery took: from the restart until
the process is ready and a push and a query both succeed again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .processes import free_ports, python_command, spawn, stop_child, wait_ready
from .topology import LocalCluster

NS = 10**9
TENANT = "fake"  # the role configs run without auth, as Loki's single-tenant default

# fault name → the service it kills
FAULTS: dict[str, str] = {
    "all-in-one": "all",  # a single -target=all process, RF=1 with its WAL
    "ingester": "ingester-2",  # one of three, RF=3
    "distributor": "distributor",
    "query-frontend": "query-frontend",
    "querier-worker": "querier-worker-1",
    "nats": "nats-2",  # one node of three
    "s3": "s3",
}

# Short chunk ages so that chunks are flushed (and S3 is needed) within a run.
CLUSTER_FLAGS = {
    "ingester": ["-ingester.flush-check-period=1s", "-ingester.chunks-idle-period=5s"],
}


@dataclass
class Timing:
    """Seconds of load before the kill, down time before the restart, load after."""

    before_s: float = 3.0
    down_s: float = 3.0
    after_s: float = 4.0


@dataclass
class Outcome:
    fault: str
    killed: str
    load: str
    lines_acked: int = 0
    lines_lost: int = 0
    lines_duplicated: int = 0
    pushes: int = 0
    pushes_failed_during: int = 0
    pushes_failed_after: int = 0
    queries_during: int = 0
    queries_failed_during: int = 0
    queries_after: int = 0
    queries_failed_after: int = 0
    async_queries: int = 0
    async_queries_failed: int = 0
    recovery_s: float = 0.0
    ingester_rss_mb_max: float = 0.0
    notes: list[str] = field(default_factory=list)


class Load:
    """Pushers, sync queriers and async queriers against one push URL and one query
    URL; counts by phase (before, during: killed until restarted, after)."""

    def __init__(
        self, push_url: str, query_url: str, fault: str, pushers: int = 4, pause_s: float = 0.05
    ) -> None:
        self.push_url = push_url
        self.pause_s = pause_s  # between one pusher's pushes
        self.query_url = query_url
        self.fault = fault
        self.pushers = pushers
        self.batch = 100
        self.base_ns = time.time_ns() - 30 * NS
        self.acked: dict[int, list[int]] = {k: [] for k in range(pushers)}
        self.phase = "before"
        self.counts: Counter[str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def description(self) -> str:
        return f"{self.pushers} pushers x {self.batch} lines, 1 sync querier (4/s), 1 async querier"

    def start(self, session: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._pusher(session, k)) for k in range(self.pushers)]
        self._tasks.append(loop.create_task(self._querier(session)))
        self._tasks.append(loop.create_task(self._async_querier(session)))

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def stream(self, k: int) -> str:
        return f'{{app="chaos", fault="{self.fault}", pusher="p{k}"}}'

    async def _pusher(self, session: aiohttp.ClientSession, k: int) -> None:
        seq = 0
        while not self._stop.is_set():
            seqs = range(seq, seq + self.batch)
            values = [
                [str(self.base_ns + n * 1_000_000 + k), f"chaos {self.fault} p{k} seq {n}"]
                for n in seqs
            ]
            labels = {"app": "chaos", "fault": self.fault, "pusher": f"p{k}"}
            body = json.dumps({"streams": [{"stream": labels, "values": values}]})
            phase = self.phase
            status = await _post(session, f"{self.push_url}/loki/api/v1/push", body)
            self.counts[f"pushes_{phase}"] += 1
            if status == 204:
                self.acked[k].extend(seqs)
            else:
                self.counts[f"pushes_failed_{phase}"] += 1
                await asyncio.sleep(0.2)
            seq += self.batch  # a failed batch is not acknowledged: it is not expected back
            await asyncio.sleep(self.pause_s)

    async def _querier(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            phase = self.phase
            status, _ = await _get(
                session,
                f"{self.query_url}/loki/api/v1/query",
                {"query": 'sum(count_over_time({app="chaos"}[1m]))'},
            )
            self.counts[f"queries_{phase}"] += 1
            if status != 200:
                self.counts[f"queries_failed_{phase}"] += 1
            await asyncio.sleep(0.25)

    async def _async_querier(self, session: aiohttp.ClientSession) -> None:
        """Submit an async query every second and follow it to its end; a query counts
        as failed if it never gives its result within 90 s, whatever happened meanwhile."""
        pending: list[asyncio.Task[bool]] = []
        while not self._stop.is_set():
            pending.append(asyncio.get_running_loop().create_task(self._one_async(session)))
            await asyncio.sleep(1.0)
        for ok in await asyncio.gather(*pending):
            self.counts["async_queries"] += 1
            if not ok:
                self.counts["async_queries_failed"] += 1

    async def _one_async(self, session: aiohttp.ClientSession) -> bool:
        now = time.time_ns()
        params = {
            "query": f'sum by (pusher) (count_over_time({{fault="{self.fault}"}}[1m]))',
            "start": str(now - 600 * NS),
            "end": str(now),
            "step": "60",
            "async": "true",
        }
        deadline = time.monotonic() + 90
        ticket = ""
        while time.monotonic() < deadline:
            if not ticket:
                status, body = await _get(
                    session, f"{self.query_url}/loki/api/v1/query_range", params
                )
                if status == 202:
                    ticket = body["data"]["ticket"]
                elif status == 200:
                    return True
            else:
                status, _ = await _get(
                    session, f"{self.query_url}/loki/api/v1/tickets/{ticket}", {"wait": "5s"}
                )
                if status == 200:
                    return True
                if 400 <= status < 500:
                    return False  # failed, or lost: the ticket is gone
            if status not in (202, 204):
                await asyncio.sleep(0.5)  # the frontend is down or busy: retry
        return False

    async def verify(self, session: aiohttp.ClientSession) -> tuple[int, int, int]:
        """(acknowledged, lost, duplicated) lines, reading every pusher's stream back."""
        acked = lost = duplicated = 0
        for k in range(self.pushers):
            seen = Counter(await self._read_stream(session, k))
            duplicated += sum(1 for c in seen.values() if c > 1)
            acked += len(self.acked[k])
            lost += sum(1 for n in self.acked[k] if n not in seen)
        return acked, lost, duplicated

    async def _read_stream(self, session: aiohttp.ClientSession, k: int) -> list[int]:
        """Every seq number stored for pusher k, paging forward by time."""
        out: list[int] = []
        start = self.base_ns - 1
        end = time.time_ns() + 60 * NS
        while True:
            params = {"query": self.stream(k), "start": str(start), "end": str(end),
                      "limit": "5000", "direction": "forward"}  # fmt: skip
            status, body = await _get(session, f"{self.query_url}/loki/api/v1/query_range", params)
            if status != 200:
                raise RuntimeError(f"reading back {self.stream(k)} failed: {status} {body}")
            values = [v for s in body["data"]["result"] for v in s["values"]]
            out.extend(int(line.rsplit(" ", 1)[1]) for _, line in values)
            if len(values) < 5000:
                return out
            start = max(int(ts) for ts, _ in values) + 1


async def _post(session: aiohttp.ClientSession, url: str, body: str) -> int:
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            return r.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return 0


async def _get(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> tuple[int, Any]:
    try:
        async with session.get(url, params=params) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.text()
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
        return 0, None


async def _recovered(session: aiohttp.ClientSession, push_url: str, query_url: str) -> None:
    """Until a push and a query both succeed (at most two minutes)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        labels = {"app": "chaos-probe"}
        body = json.dumps(
            {"streams": [{"stream": labels, "values": [[str(time.time_ns()), "probe"]]}]}
        )
        if await _post(session, f"{push_url}/loki/api/v1/push", body) == 204:
            status, _ = await _get(
                session, f"{query_url}/loki/api/v1/query",
                {"query": 'count_over_time({app="chaos-probe"}[1m])'},
            )  # fmt: skip
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no successful push and query within 120 s ({push_url}, {query_url})")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


async def run_fault(
    fault: str,
    cluster: LocalCluster | None,
    single: SingleProcess | None,
    timing: Timing,
) -> Outcome:
    """Kill ``FAULTS[fault]`` under load, restart it, verify; returns the outcome."""
    killed = FAULTS[fault]
    if fault == "all-in-one":
        assert single is not None
        push_url = query_url = single.url
    else:
        assert cluster is not None
        push_url, query_url = cluster.distributor_url, cluster.frontend_url
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        load = Load(push_url, query_url, fault)
        out = Outcome(fault, killed, load.description)
        rss: list[float] = []

        async def sample_rss() -> None:
            while True:
                if cluster is not None:
                    pids = [c.proc.pid for n, c in cluster.children.items()
                            if n.startswith("ingester")]  # fmt: skip
                elif single is not None and single.child is not None:
                    pids = [single.child.proc.pid]
                else:
                    pids = []
                rss.extend(_rss_mb(p) for p in pids)
                await asyncio.sleep(0.5)

        sampler = asyncio.get_running_loop().create_task(sample_rss())
        load.start(session)
        await asyncio.sleep(timing.before_s)
        load.phase = "during"
        if cluster is not None:
            await asyncio.to_thread(cluster.kill, killed)
        else:
            assert single is not None
            await asyncio.to_thread(single.kill)
        if fault == "s3":
            # Flushes while S3 is away fail and are retried; nothing is lost meanwhile.
            status, _ = await _post_flush(session, query_url)
            out.notes.append(f"/flush while S3 was down: {status}")
        await asyncio.sleep(timing.down_s)
        restarted = time.monotonic()
        if cluster is not None:
            await asyncio.to_thread(cluster.restart, killed)
        else:
            assert single is not None
            await asyncio.to_thread(single.start)
        await _recovered(session, push_url, query_url)
        out.recovery_s = round(time.monotonic() - restarted, 2)
        load.phase = "after"
        await asyncio.sleep(timing.after_s)
        await load.stop()
        if fault == "s3":
            status, _ = await _post_flush(session, query_url)
            out.notes.append(f"/flush after S3 returned: {status}")
        sampler.cancel()
        out.lines_acked, out.lines_lost, out.lines_duplicated = await load.verify(session)
    c = load.counts
    out.pushes = sum(v for k, v in c.items() if k.startswith("pushes_") and "failed" not in k)
    out.pushes_failed_during = c["pushes_failed_during"]
    out.pushes_failed_after = c["pushes_failed_after"]
    out.queries_during, out.queries_failed_during = c["queries_during"], c["queries_failed_during"]
    out.queries_after, out.queries_failed_after = c["queries_after"], c["queries_failed_after"]
    out.async_queries, out.async_queries_failed = c["async_queries"], c["async_queries_failed"]
    out.ingester_rss_mb_max = round(max(rss, default=0.0), 1)
    return out


async def _post_flush(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with session.post(f"{url}/flush") as r:
            return r.status, await r.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        return 0, str(e)


class SingleProcess:
    """One ``-target=all`` process (embedded nats-server, filesystem store, WAL, RF=1)
    that can be killed and started again on the same ports and data."""

    def __init__(self, workdir: Path, extra_flags: list[str] | None = None) -> None:
        self.workdir = workdir
        http_port, nats_port = free_ports(2)
        self.url = f"http://127.0.0.1:{http_port}"
        self.args = [
            f"-common.path-prefix={workdir / 'data'}",
            f"-server.http-listen-port={http_port}",
            f"-nats.embedded.port={nats_port}",
            "-ingester.lifecycler.ID=all-in-one",
            "-ingester.flush-check-period=1s",
            "-log.level=warn",
            *(extra_flags or []),
        ]
        self.child: Any = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.child = spawn("all-in-one", python_command(*self.args), self.workdir)
        self.child.url = self.url
        wait_ready(self.child, timeout=120)

    def kill(self) -> None:
        self.child.proc.kill()
        self.child.proc.wait(10)
        self.child.log.close()

    def stop(self) -> None:
        if self.child is not None:
            stop_child(self.child, timeout=60)


async def run(faults: list[str], workdir: Path, timing: Timing) -> list[Outcome]:
    """Every fault in turn; the cluster is started once for all cluster faults."""
    outcomes: list[Outcome] = []
    if "all-in-one" in faults:
        single = SingleProcess(workdir / "single")
        await asyncio.to_thread(single.start)
        try:
            outcomes.append(await run_fault("all-in-one", None, single, timing))
        finally:
            await asyncio.to_thread(single.stop)
    rest = [f for f in faults if f != "all-in-one"]
    if rest:
        cluster = LocalCluster(workdir / "cluster", extra_flags=CLUSTER_FLAGS)
        await asyncio.to_thread(cluster.start)
        try:
            for fault in rest:
                outcomes.append(await run_fault(fault, cluster, None, timing))
        finally:
            codes = await asyncio.to_thread(cluster.stop)
        bad = {n: c for n, c in codes.items() if c not in (0, None)}
        if bad and outcomes:
            outcomes[-1].notes.append(f"exit codes at teardown: {bad}")
    return outcomes


def main(argv: list[str]) -> int:
    """``loki-async bench chaos``: print the outcomes as JSON."""
    p = argparse.ArgumentParser(prog="loki-async bench chaos", description=__doc__)
    p.add_argument(
        "--faults", default=",".join(FAULTS), help="comma-separated: " + ", ".join(FAULTS)
    )
    p.add_argument("--before", type=float, default=10.0, help="seconds of load before the kill")
    p.add_argument("--down", type=float, default=10.0, help="seconds the process stays dead")
    p.add_argument("--after", type=float, default=20.0, help="seconds of load after recovery")
    p.add_argument("--dir", default="", help="work directory (default: a temporary one)")
    args = p.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        p.error(f"unknown faults: {', '.join(unknown)}")
    timing = Timing(args.before, args.down, args.after)
    with tempfile.TemporaryDirectory(prefix="loki-chaos-") as tmp:
        workdir = Path(args.dir or tmp)
        outcomes = asyncio.run(run(faults, workdir, timing))
    print(json.dumps([asdict(o) for o in outcomes], indent=2))
    return 1 if any(o.lines_lost for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
