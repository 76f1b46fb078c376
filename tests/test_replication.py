"""Replication (RF=3) end to end: separate ingester, distributor and query-frontend
processes on one real nats-server, with a shared filesystem chunk store.

- an ingester killed with -9 under push load loses no acknowledged line, comes back by
  replaying its WAL, and two dead ingesters out of three stop the writes with a clear
  message rather than acknowledging what is not on a quorum;
- RF=3 answers every query exactly as a single RF=1 process does, from ingester memory
  and from the store (where the three replicas' chunks collapse into one);
- a graceful scale-down (SIGTERM) turns LEAVING, flushes what it holds to the store and
  leaves the ring while pushes keep succeeding.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from loki_async.logproto import PushStream, format_labels
from loki_async.ring import stream_key, tokens_for
from tests.conftest import Loki, NATSServer, base_config
from tests.lokiclient import client, get, push, query_range

NS = 10**9
TENANT = "fake"  # auth disabled
HEARTBEAT_TIMEOUT_S = 2.0
NUM_TOKENS = 128
NO_CACHE = {"cache_results": False}  # every query runs for real (no results cache)


# --------------------------------------------------------------------------- cluster


def lifecycler(instance_id: str = "") -> dict[str, Any]:
    lc: dict[str, Any] = {
        "heartbeat_period": "0.2s",
        "heartbeat_timeout": f"{HEARTBEAT_TIMEOUT_S}s",
        "num_tokens": NUM_TOKENS,
    }
    if instance_id:
        lc["ID"] = instance_id
    return lc


class Cluster:
    """nats-server, ``n`` ingesters, one distributor, one query-frontend; RF=3."""

    def __init__(self, tmp_path: Path, n_ingesters: int, rf: int = 3) -> None:
        self.tmp = tmp_path
        self.chunks = tmp_path / "chunks"
        self.rf = rf
        self.nats = NATSServer(tmp_path / "nats")
        self.ingesters: list[Loki] = []
        self.ids: list[str] = []
        for i in range(n_ingesters):
            self.ids.append(f"ingester-{i}")
            self.ingesters.append(self._ingester(self.ids[i], tmp_path / f"ing{i}"))
        self.dist = Loki(
            self._workdir("dist"),
            base_config(
                self.tmp / "dist",
                nats_url=self.nats.url,
                common={"replication_factor": rf},
                ingester={"lifecycler": lifecycler("distributor")},
            ),
            "distributor",
        )
        self.front = Loki(
            self._workdir("front"),
            base_config(
                self.tmp / "front",
                nats_url=self.nats.url,
                common={"replication_factor": rf},
                ingester={"lifecycler": lifecycler("frontend")},
                storage_config={"filesystem": {"directory": str(self.chunks)}},
                query_range=NO_CACHE,
            ),
            "query-frontend",
        )

    def _workdir(self, name: str) -> Path:
        d = self.tmp / name
        d.mkdir(exist_ok=True)
        return d

    def _ingester(self, instance_id: str, workdir: Path) -> Loki:
        workdir.mkdir(exist_ok=True)
        cfg = base_config(
            workdir,
            nats_url=self.nats.url,
            common={"replication_factor": self.rf},
            ingester={"lifecycler": lifecycler(instance_id), "flush_check_period": "1s"},
            storage_config={"filesystem": {"directory": str(self.chunks)}},
        )
        return Loki(workdir, cfg, "ingester")

    def start(self) -> None:
        start_all(self.ingesters)
        start_all([self.dist, self.front])

    def processes(self) -> list[Loki]:
        return [*self.ingesters, self.dist, self.front]

    def teardown(self) -> None:
        for p in self.processes():
            try:
                p.kill()
            except Exception:  # tear down whatever is left
                pass
        self.nats.stop()

    def log_tails(self, *procs: Loki, n: int = 3000) -> str:
        procs = procs or tuple(self.processes())
        return "\n".join(
            f"----- {p.target} {p.config['ingester']['lifecycler'].get('ID', '')} log tail:\n"
            f"{p.logs()[-n:] if p.log_path.exists() else '(no log)'}"
            for p in procs
        )


def start_all(procs: list[Loki]) -> None:
    """Start processes concurrently, then wait for each to be ready."""
    for p in procs:
        p.start(wait_ready=False)
    for p in procs:
        p.wait_ready()


# --------------------------------------------------------------------------- helpers


async def ring(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    status, body = await get(session, url, "/ring")
    assert status == 200, f"GET /ring on {url}: {status} {body}"
    return body


async def wait_ring(
    session: aiohttp.ClientSession, url: str, pred: Any, what: str, timeout: float = 20
) -> dict[str, Any]:
    """Poll ``/ring`` until ``pred(members by id)`` holds; fail with the ring JSON."""
    deadline = time.monotonic() + timeout
    while True:
        body = await ring(session, url)
        if pred({m["id"]: m for m in body["ingesters"]}):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"ring on {url} never showed {what} within {timeout}s: {body}")
        await asyncio.sleep(0.1)


def all_active(ids: list[str]) -> Any:
    def pred(members: dict[str, dict[str, Any]]) -> bool:
        return set(members) == set(ids) and all(
            m["state"] == "ACTIVE" and m["healthy"] for m in members.values()
        )

    return pred


def unhealthy(instance_id: str) -> Any:
    return lambda members: instance_id in members and not members[instance_id]["healthy"]


async def all_lines(session: aiohttp.ClientSession, url: str, selector: str, start: int) -> list:
    got = await query_range(session, url, selector, start, time.time_ns() + NS, limit=100000)
    return [line for values in got.values() for _, line in values]


def check_exactly_once(acked: list[str], got: list[str], when: str, tails: str = "") -> None:
    counts = Counter(got)
    missing = [line for line in acked if line not in counts]
    dupes = [(line, n) for line, n in counts.items() if n > 1]
    assert not missing and not dupes, (
        f"{when}: {len(acked)} lines acknowledged, {len(got)} returned "
        f"({len(counts)} distinct); {len(missing)} acknowledged lines missing, e.g. "
        f"{missing[:3]}; {len(dupes)} lines returned more than once, e.g. {dupes[:3]}\n{tails}"
    )


def metric(text: str, name: str) -> float:
    values = [float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith(name + " ")]
    assert values, f"metric {name} not found in /metrics"
    return values[0]


@dataclass
class Load:
    """Concurrent pushers: a line counts only once its push answered 204."""

    url: str
    base: int
    acked: list[str] = field(default_factory=list)
    acked_by_stream: dict[str, list[str]] = field(default_factory=dict)
    results: list[tuple[str, int, str]] = field(default_factory=list)  # phase, status, body
    phase: str = "before"
    stopping: bool = False

    async def pusher(
        self, session: aiohttp.ClientSession, worker: int, lines_per_push: int = 200
    ) -> None:
        seq = 0
        labels = [("app", "repl"), ("worker", str(worker))]
        canonical = format_labels(sorted(labels))
        while not self.stopping:
            lines = [f"w{worker} seq {seq + i} payload {'x' * 60}" for i in range(lines_per_push)]
            ts = [self.base + (seq + i) * 1000 + worker for i in range(lines_per_push)]
            s = PushStream(labels, ts, [ln.encode() for ln in lines], None)
            phase = self.phase  # the phase a push started in
            try:
                status, body = await push(session, self.url, [s], "protobuf")
            except aiohttp.ClientError as e:
                status, body = -1, repr(e)
            self.results.append((phase, status, body[:300]))
            if status == 204:
                self.acked.extend(lines)
                self.acked_by_stream.setdefault(canonical, []).extend(lines)
            seq += lines_per_push

    async def wait_acked(self, n: int, timeout: float, tails: Any) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < n:
            if time.monotonic() > deadline:
                bad = [r for r in self.results if r[1] != 204]
                raise AssertionError(
                    f"only {len(self.acked)} of {n} lines acknowledged after {timeout}s; "
                    f"{len(bad)} failed pushes, e.g. {bad[:3]}\n{tails()}"
                )
            await asyncio.sleep(0.05)

    def statuses(self, phase: str) -> list[tuple[int, str]]:
        return [(s, b) for p, s, b in self.results if p == phase]


# --------------------------------------------------------------------------- tests


async def test_kill_9_one_ingester_during_push_loses_nothing(tmp_path) -> None:
    cluster = Cluster(tmp_path, 3)
    try:
        cluster.start()
        ing0, ing1, ing2 = cluster.ingesters
        id0, id1, id2 = cluster.ids
        dist, front = cluster.dist, cluster.front
        base = time.time_ns() - 300 * NS
        load = Load(dist.url, base)
        async with client() as session:
            await wait_ring(session, dist.url, all_active(cluster.ids), "3 ACTIVE ingesters")
            await wait_ring(session, front.url, all_active(cluster.ids), "3 ACTIVE ingesters")

            # 1. kill -9 one ingester under load: the quorum (2 of 3) keeps taking pushes.
            tasks = [asyncio.create_task(load.pusher(session, w)) for w in range(4)]
            try:
                await load.wait_acked(10_000, 60, cluster.log_tails)
                load.phase = "after_kill"
                n_before_kill = len(load.acked)
                ing0.kill()
                await load.wait_acked(n_before_kill + 20_000, 90, cluster.log_tails)
            finally:
                load.stopping = True
                await asyncio.gather(*tasks)
            before = load.statuses("before")
            bad_before = [r for r in before if r[0] != 204]
            assert not bad_before, (
                f"{len(bad_before)} of {len(before)} pushes failed with all 3 ingesters up, "
                f"e.g. {bad_before[:3]}\n{cluster.log_tails(dist)}"
            )
            after = load.statuses("after_kill")
            ok_after = sum(1 for s, _ in after if s == 204)
            bad_after = [r for r in after if r[0] != 204]
            assert ok_after >= 1 and len(bad_after) <= max(4, len(after) // 10), (
                f"with 2 of 3 ingesters alive pushes must keep succeeding: {ok_after} of "
                f"{len(after)} answered 204; failures e.g. {bad_after[:5]}\n"
                f"{cluster.log_tails(dist)}"
            )
            acked = list(load.acked)
            got = await all_lines(session, front.url, '{app="repl"}', base - NS)
            check_exactly_once(
                acked, got, "one ingester killed", cluster.log_tails(front, ing1, ing2)
            )

            # 2. The killed ingester comes back: WAL replay, ACTIVE again, reads unchanged.
            ing0.start()
            _, text = await get(session, ing0.url, "/metrics")
            replayed = metric(text, "loki_ingester_wal_replayed_records_total")
            assert replayed > 0, f"restarted ingester replayed no WAL record\n{ing0.logs()[-3000:]}"
            await wait_ring(session, dist.url, all_active(cluster.ids), "3 ACTIVE after restart")
            await wait_ring(session, front.url, all_active(cluster.ids), "3 ACTIVE after restart")
            got = await all_lines(session, front.url, '{app="repl"}', base - NS)
            check_exactly_once(acked, got, "after the WAL replay", cluster.log_tails(front, ing0))

            # 3. Two of three dead: no quorum, pushes fail with a clear reason, nothing 204.
            ing1.kill()
            await wait_ring(session, dist.url, unhealthy(id1), f"{id1} unhealthy")
            ing2.kill()
            probe_labels = [("app", "repl"), ("worker", "probe")]
            probes: list[tuple[int, str]] = []
            for i in range(3):  # id2 still looks alive: its replica fails the push
                s = PushStream(probe_labels, [base + 10**8 + i], [b"probe %d" % i], None)
                probes.append(await push(session, dist.url, [s], "protobuf"))
            await wait_ring(session, dist.url, unhealthy(id2), f"{id2} unhealthy")
            for i in range(3, 5):  # id2 timed out too: refused before any replica is tried
                s = PushStream(probe_labels, [base + 10**8 + i], [b"probe %d" % i], None)
                probes.append(await push(session, dist.url, [s], "protobuf"))
            assert all(status != 204 for status, _ in probes), probes
            for status, body in probes:
                assert status >= 500 and (
                    "quorum not reached" in body or "live ingesters required" in body
                ), f"push without a quorum: {status} {body!r}"
            for status, body in probes[3:]:
                assert status == 503 and "at least 2 live ingesters required" in body, (
                    status,
                    body,
                )
            # A read cannot be answered from one ingester out of three either.
            await wait_ring(
                session,
                front.url,
                lambda m: not m[id1]["healthy"] and not m[id2]["healthy"],
                "two unhealthy ingesters",
            )
            status, body = await get(
                session,
                front.url,
                "/loki/api/v1/query_range",
                query='{app="repl"}',
                start=str(base - NS),
                end=str(time.time_ns()),
                limit="10",
            )
            assert status == 503 and "too many unhealthy ingesters" in str(body), (status, body)

            # 4. Both back: every acknowledged line still there exactly once.
            start_all([ing1, ing2])
            await wait_ring(session, dist.url, all_active(cluster.ids), "3 ACTIVE at the end")
            await wait_ring(session, front.url, all_active(cluster.ids), "3 ACTIVE at the end")
            got = await all_lines(session, front.url, '{app="repl"}', base - NS)
            check_exactly_once(
                acked,
                [ln for ln in got if not ln.startswith("probe ")],
                "after two ingesters were killed and restarted",
                cluster.log_tails(front, ing1, ing2),
            )
    finally:
        cluster.teardown()


# --- RF=3 against RF=1 -----------------------------------------------------------------

LEVELS = ["info", "info", "info", "warn", "error", "debug"]
METHODS = ["GET", "POST", "PUT", "DELETE"]
STATUSES = [200, 200, 200, 201, 404, 500, 503]


def dataset(base: int) -> list[list[PushStream]]:
    """Pushes of a fixed dataset: 20 streams x 500 lines. Stream 3 is pushed with its
    labels in unsorted order (every other batch), stream 5 is pushed twice, stream 7
    has pairs of distinct lines sharing a timestamp, streams 8 and 9 have the same
    timestamps; streams 0-9 are logfmt, 10-19 JSON."""
    pushes: list[list[PushStream]] = []
    for batch in range(5):
        streams = []
        for s in range(20):
            fmt = "logfmt" if s < 10 else "json"
            labels = [("app", "cmp"), ("env", "prod" if s % 3 else "dev"), ("fmt", fmt)]
            labels.append(("pod", f"p{s}"))
            if s == 3 and batch % 2 == 0:
                labels = [labels[3], labels[2], labels[0], labels[1]]
            ts, lines = [], []
            for i in range(batch * 100, batch * 100 + 100):
                if s == 7:
                    ts.append(base + (i // 2) * 400_000_000 + 7_000_000)
                else:  # streams 8 and 9 share their timestamps
                    ts.append(base + i * 200_000_000 + min(s, 8) * 1_000_000)
                k = i * 5 + s * 13
                lvl, method, st = LEVELS[k % 6], METHODS[k % 4], STATUSES[k % 7]
                dur = (k * 37) % 900 + 1
                if fmt == "logfmt":
                    line = (
                        f"level={lvl} method={method} status={st} dur_ms={dur} pod=p{s} "
                        f'seq={i} msg="request {i} of p{s} done"'
                    )
                    lines.append(line.encode())
                else:
                    obj = {"level": lvl, "method": method, "status": st, "dur_ms": dur}
                    obj |= {"seq": i, "msg": f"request {i} of p{s} done"}
                    lines.append(orjson.dumps(obj))
            streams.append(PushStream(labels, ts, lines, None))
        pushes.append(streams)
        pushes.append([streams[5]])  # stream 5 once more, identical
    return pushes


def tie_limits(base: int) -> tuple[int, int]:
    """Limits whose cut falls between two entries of different streams with the same
    timestamp, reading forward and backward: which one is returned must not depend on
    which replica answered first."""
    entries = sorted(
        {
            (t, str(s.labels), line)
            for p in dataset(base)
            for s in p
            for t, line in zip(s.timestamps, s.lines, strict=True)
        }
    )
    keys = [(t, labels) for t, labels, _ in entries]

    def cut(keys: list[tuple[int, str]]) -> int:
        return next(
            k
            for k in range(600, len(keys))
            if keys[k - 1][0] == keys[k][0] and keys[k - 1][1] != keys[k][1]
        )

    return cut(keys), cut(keys[::-1])


def queries(base: int) -> list[tuple[str, dict[str, str]]]:
    start, end = str(base - 10 * NS), str(base + 120 * NS)
    rng = {"start": start, "end": end}
    qr = "/loki/api/v1/query_range"
    fwd, bwd = tie_limits(base)
    out: list[tuple[str, dict[str, str]]] = [
        (qr, {"query": '{app="cmp"}', "limit": "100000", **rng}),
        (qr, {"query": '{app="cmp"}', "limit": "700", "direction": "forward", **rng}),
        (qr, {"query": '{app="cmp"}', "limit": "700", "direction": "backward", **rng}),
        (qr, {"query": '{app="cmp"}', "limit": str(fwd), "direction": "forward", **rng}),
        (qr, {"query": '{app="cmp"}', "limit": str(bwd), "direction": "backward", **rng}),
        (qr, {"query": '{pod=~"p[789]"}', "limit": "251", "direction": "forward", **rng}),
        (qr, {"query": '{pod=~"p[789]"}', "limit": "251", "direction": "backward", **rng}),
        (qr, {"query": '{env="prod"} |= "status=500"', "limit": "1000", **rng}),
        (qr, {"query": '{fmt="logfmt"} | logfmt | status >= 500', "limit": "300", **rng}),
        (
            qr,
            {
                "query": '{fmt="json"} | json | level="error"',
                "limit": "250",
                "direction": "backward",
                **rng,
            },
        ),
        (qr, {"query": '{pod="p3"}', "limit": "1000", **rng}),
        (qr, {"query": '{pod="p5"}', "limit": "1000", **rng}),
        (qr, {"query": '{pod="p7"}', "limit": "1000", "direction": "backward", **rng}),
        (qr, {"query": 'count_over_time({app="cmp"}[30s])', "step": "10", **rng}),
        (qr, {"query": 'sum by (env) (rate({app="cmp"}[1m]))', "step": "15", **rng}),
        (qr, {"query": 'bytes_over_time({pod=~"p1.*"}[30s])', "step": "10", **rng}),
        (
            qr,
            {
                "query": 'sum by (level) (count_over_time({fmt="logfmt"} | logfmt [1m]))',
                "step": "20",
                **rng,
            },
        ),
        (
            "/loki/api/v1/query",
            {"query": 'sum by (pod) (count_over_time({app="cmp"}[5m]))', "time": end},
        ),
        ("/loki/api/v1/labels", rng),
        ("/loki/api/v1/label/pod/values", rng),
        ("/loki/api/v1/label/env/values", rng),
        ("/loki/api/v1/series", {"match[]": '{app="cmp", env="dev"}', **rng}),
    ]
    return out


def comparable(body: Any) -> Any:
    """What must be equal: status and data without the stats (they differ by design)."""
    if not isinstance(body, dict):
        return body
    data = body.get("data")
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "stats"}
    return {"status": body.get("status"), "data": data}


async def answers(session: aiohttp.ClientSession, url: str, base: int) -> list[Any]:
    out = []
    for path, params in queries(base):
        status, body = await get(session, url, path, **params)
        assert status == 200, f"{path} {params} on {url}: {status} {body}"
        out.append(comparable(body))
    return out


def result_of(answer: dict[str, Any]) -> Any:
    data = answer["data"]
    return data.get("result") if isinstance(data, dict) else data


def compare(rf3: list[Any], rf1: list[Any], base: int, when: str) -> None:
    for (path, params), a, b in zip(queries(base), rf3, rf1, strict=True):
        if a != b:
            ra, rb = result_of(a), result_of(b)
            raise AssertionError(
                f"{when}: RF=3 and RF=1 differ for {path} {params}:\n"
                f"RF=3 ({len(ra or [])} results): {str(a)[:1500]}\n"
                f"RF=1 ({len(rb or [])} results): {str(b)[:1500]}"
            )


def chunk_keys(chunks_dir: Path) -> set[str]:
    root = chunks_dir / TENANT / "chunks"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


async def test_rf3_results_equal_rf1_results(tmp_path) -> None:
    cluster = Cluster(tmp_path / "rf3", 3)
    single_dir = tmp_path / "rf1"
    single_dir.mkdir()
    single = Loki(single_dir, base_config(single_dir, query_range=NO_CACHE), "all")
    try:
        single.start(wait_ready=False)
        cluster.start()
        single.wait_ready()
        base = (time.time_ns() - 300 * NS) // NS * NS
        async with client() as session:
            await wait_ring(session, cluster.dist.url, all_active(cluster.ids), "3 ACTIVE")
            await wait_ring(session, cluster.front.url, all_active(cluster.ids), "3 ACTIVE")
            for streams in dataset(base):
                for url in (cluster.dist.url, single.url):
                    status, body = await push(session, url, streams, "protobuf")
                    assert status == 204, f"push to {url}: {status} {body}"

            # In ingester memory.
            rf3 = await answers(session, cluster.front.url, base)
            rf1 = await answers(session, single.url, base)
            everything = rf1[0]["data"]["result"]
            n = sum(len(s["values"]) for s in everything)
            # 20 x 500 lines; stream 5's second copy is the same entries, collapsed.
            assert len(everything) == 20 and n == 10_000, (len(everything), n)
            empty = [q for q, a in zip(queries(base), rf1, strict=True) if not result_of(a)]
            assert not empty, f"queries that match nothing compare nothing: {empty}"
            compare(rf3, rf1, base, "from ingester memory")

            # From the store, after a flush of every ingester.
            for url in (cluster.front.url, single.url):
                async with session.post(f"{url}/flush") as r:
                    assert r.status == 204, f"POST /flush on {url}: {r.status} {await r.text()}"
            for ing in [*cluster.ingesters, single]:
                _, text = await get(session, ing.url, "/metrics")
                assert metric(text, "loki_ingester_memory_streams") == 0, ing.logs()[-3000:]
            rf3_store = await answers(session, cluster.front.url, base)
            rf1_store = await answers(session, single.url, base)
            compare(rf1_store, rf1, base, "RF=1, store against memory")
            compare(rf3_store, rf1_store, base, "from the store")
            # Content-addressed chunks: the three replicas of a stream wrote one object.
            rf3_keys = chunk_keys(cluster.chunks)
            rf1_keys = chunk_keys(Path(single.config["common"]["path_prefix"]) / "chunks")
            assert rf3_keys and rf3_keys == rf1_keys, (
                f"RF=3 stored {len(rf3_keys)} chunks, RF=1 {len(rf1_keys)}; only in RF=3: "
                f"{sorted(rf3_keys - rf1_keys)[:5]}, "
                f"only in RF=1: {sorted(rf1_keys - rf3_keys)[:5]}"
            )
    finally:
        single.kill()
        cluster.teardown()


# --- graceful scale-down -----------------------------------------------------------------


def replicas_of(labels: str, ids: list[str], rf: int) -> list[str]:
    """The write replicas of a stream with every ingester ACTIVE (as ring.Ring.get)."""
    pairs = sorted((t, i) for i in ids for t in tokens_for(i, NUM_TOKENS))
    tokens = [t for t, _ in pairs]
    start = bisect_left(tokens, stream_key(TENANT, labels))
    out: list[str] = []
    for k in range(len(pairs)):
        owner = pairs[(start + k) % len(pairs)][1]
        if owner not in out:
            out.append(owner)
        if len(out) == rf:
            break
    return out


async def test_graceful_scale_down_flushes_before_leaving(tmp_path) -> None:
    cluster = Cluster(tmp_path, 4)
    try:
        cluster.start()
        dist, front = cluster.dist, cluster.front
        leaving, others = cluster.ingesters[1], [cluster.ingesters[i] for i in (0, 2, 3)]
        leaving_id = cluster.ids[1]
        other_ids = [cluster.ids[i] for i in (0, 2, 3)]
        base = time.time_ns() - 300 * NS
        load = Load(dist.url, base)
        async with client() as session:
            await wait_ring(session, dist.url, all_active(cluster.ids), "4 ACTIVE ingesters")
            await wait_ring(session, front.url, all_active(cluster.ids), "4 ACTIVE ingesters")
            tasks = [
                asyncio.create_task(load.pusher(session, w, lines_per_push=100)) for w in range(8)
            ]
            seen_states: list[str] = []

            async def watch_ring() -> None:
                while True:
                    members = {m["id"]: m for m in (await ring(session, dist.url))["ingesters"]}
                    seen_states.append(
                        members[leaving_id]["state"] if leaving_id in members else "-"
                    )
                    await asyncio.sleep(0.02)

            try:
                await load.wait_acked(8000, 60, cluster.log_tails)
                # What was acknowledged before the SIGTERM, per stream.
                before_stop = {k: list(v) for k, v in load.acked_by_stream.items()}
                load.phase = "stopping"
                watcher = asyncio.create_task(watch_ring())
                code = await asyncio.to_thread(leaving.stop)  # pushes go on meanwhile
                load.phase = "after_stop"
                n_stopped = len(load.acked)
                await load.wait_acked(n_stopped + 2000, 60, cluster.log_tails)
                watcher.cancel()
            finally:
                load.stopping = True
                await asyncio.gather(*tasks)
            assert code == 0, f"graceful stop exited {code}\n{leaving.logs()[-3000:]}"
            # Everything it held is in the store: its WAL has nothing left to replay.
            wal_dir = Path(leaving.config["common"]["path_prefix"]) / "wal"
            assert wal_dir.is_dir(), wal_dir
            left = [(p.name, p.stat().st_size) for p in wal_dir.glob("*.wal") if p.stat().st_size]
            assert not left, f"WAL segments left after a graceful stop: {left}"
            bad = [r for r in load.results if r[1] != 204]
            assert not bad, (
                f"{len(bad)} of {len(load.results)} pushes failed around a graceful stop "
                f"(by phase: {Counter(p for p, _, _ in bad)}), e.g. {bad[:3]}\n"
                f"{cluster.log_tails(dist, leaving)}"
            )
            # LEAVING is seen if the flush took longer than a poll; gone afterwards in any case.
            print(f"states of {leaving_id} seen during its stop: {sorted(set(seen_states))}")
            await wait_ring(session, dist.url, all_active(other_ids), "3 ACTIVE, leaver gone")
            await wait_ring(session, front.url, all_active(other_ids), "3 ACTIVE, leaver gone")
            acked = list(load.acked)
            got = await all_lines(session, front.url, '{app="repl"}', base - NS)
            check_exactly_once(acked, got, "after a graceful stop", cluster.log_tails(front))

            # The leaver flushed: chunks and index segments written under its name.
            assert chunk_keys(cluster.chunks), "no chunk in the store after a graceful stop"
            segments = list((cluster.chunks / TENANT / "index").rglob(f"{leaving_id}-*.idx"))
            assert segments, f"{leaving_id} wrote no index segment\n{leaving.logs()[-3000:]}"

            # The store alone holds every line the leaver had: kill -9 the three others
            # (their memory and WAL are out of reach), forget them, and read.
            for p in others:
                p.kill()
            for i in other_ids:
                async with session.post(f"{front.url}/ring", data={"forget": i}) as r:
                    assert r.status == 204, f"forget {i}: {r.status} {await r.text()}"
            await wait_ring(session, front.url, lambda m: not m, "an empty ring")
            owned = {
                labels: lines
                for labels, lines in before_stop.items()
                if leaving_id in replicas_of(labels, cluster.ids, 3)
            }
            assert owned, f"{leaving_id} owned none of {sorted(before_stop)}"
            got_store = await query_range(
                session, front.url, '{app="repl"}', base - NS, time.time_ns(), limit=100000
            )
            stored_streams = {k for k, v in got_store.items() if v}
            owned_keys = {",".join(f"{a}={b}" for a, b in _pairs(lbl)) for lbl in owned}
            assert stored_streams <= owned_keys, (
                f"the store holds streams the leaver did not own: "
                f"{sorted(stored_streams - owned_keys)}"
            )
            stored = [line for v in got_store.values() for _, line in v]
            check_exactly_once(
                [ln for lines in owned.values() for ln in lines],
                stored,
                f"store only, lines acknowledged before the stop on {len(owned)} streams "
                f"of {leaving_id}",
                leaving.logs()[-3000:],
            )

            # The three come back from their WALs: everything is there again, once.
            start_all(others)
            await wait_ring(session, front.url, all_active(other_ids), "3 ACTIVE again")
            got = await all_lines(session, front.url, '{app="repl"}', base - NS)
            check_exactly_once(acked, got, "after restarting the others", cluster.log_tails(front))
    finally:
        cluster.teardown()


def _pairs(labels: str) -> list[tuple[str, str]]:
    """``{a="1", b="2"}`` → [(a, 1), (b, 2)] (test label values need no unquoting)."""
    return [(k, v.strip('"')) for k, v in (p.split("=", 1) for p in labels.strip("{}").split(", "))]
