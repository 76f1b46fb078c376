"""Distributor: validates pushes with Loki's limits and messages, then replicates them.

Labels are put in canonical (sorted) form before hashing, so ``{b="2",a="1"}`` and
``{a="1",b="2"}`` are one stream. A batch with some invalid streams or entries still
stores the valid ones and answers 400 listing what was rejected, as Loki does. Each
stream goes to its ``replication_factor`` owners on the ring, over NATS request/reply;
the push succeeds once a quorum (RF/2+1) of every stream's owners acknowledged.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from array import array
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from . import bus, failpoints, metrics
from .chunk import encode_metadata
from .config import LimitsConfig
from .coprocessor import StreamSummary
from .coprocessor_host import Registry
from .errors import LokiError, RateLimited, Unavailable, ValidationError
from .labels import fingerprint
from .logproto import PushStream, format_labels
from .logql import ParseError, parse_labels
from .ring import IngesterDesc, stream_key

_LABEL_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass(slots=True)
class ValidStream:
    labels: str  # canonical
    fp: int
    ts: array  # 'q'
    lens: array  # 'I'
    blob: bytes
    meta: list[bytes] | None

    def wire(self) -> list[Any]:
        return [self.labels, self.fp, self.ts.tobytes(), self.lens.tobytes(), self.blob, self.meta]


class TokenBucket:
    """Loki's ingestion rate limit: ``rate`` bytes/s refilled up to ``burst`` bytes."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = time.monotonic()

    def allow(self, n: int) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class IngesterClient(Protocol):
    """The interface we need to reach ingesters: one push RPC per ingester."""

    async def push(self, ingester: IngesterDesc, payload: bytes) -> None: ...


class RingReader(Protocol):
    replication_factor: int

    def get(self, key: int, rf: int | None = None) -> tuple[list[IngesterDesc], int]: ...


class Distributor:
    """Validate, rate-limit and replicate pushes. Stateless apart from the rate limiters."""

    def __init__(
        self,
        limits: LimitsConfig,
        ring: RingReader,
        ingesters: IngesterClient,
        coprocessors: Registry | None = None,
        repair: ReplicaRepair | None = None,
    ) -> None:
        self.limits = limits
        self.repair = repair
        self._inflight: set[asyncio.Task[None]] = set()  # replica sends past the quorum
        self.coprocessors = coprocessors
        self.ring = ring
        self.ingesters = ingesters
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, tenant: str) -> TokenBucket:
        b = self._buckets.get(tenant)
        if b is None:
            mb = 1 << 20
            b = TokenBucket(
                self.limits.ingestion_rate_mb * mb,
                max(self.limits.ingestion_burst_size_mb, self.limits.ingestion_rate_mb) * mb,
            )
            self._buckets[tenant] = b
        return b

    async def push(self, tenant: str, streams: list[PushStream]) -> None:
        """Validate and store ``streams``. Raises ValidationError (400) listing rejected
        streams/entries after storing the valid ones, RateLimited (429), Unavailable (503)."""
        valid, problems = self.validate(tenant, streams)
        total_lines = sum(len(s.ts) for s in valid)
        total_bytes = sum(len(s.blob) for s in valid)
        if valid and not self._bucket(tenant).allow(total_bytes):
            metrics.DISCARDED_SAMPLES.labels("rate_limited", tenant).inc(total_lines)
            metrics.DISCARDED_BYTES.labels("rate_limited", tenant).inc(total_bytes)
            rate = int(self.limits.ingestion_rate_mb * (1 << 20))
            raise RateLimited(
                f"Ingestion rate limit exceeded for user {tenant} (limit: {rate} bytes/sec) while"
                f" attempting to ingest '{total_lines}' lines totaling '{total_bytes}' bytes, "
                "reduce log volume or contact your Loki administrator to see if the limit can be"
                " increased"
            )
        if valid:
            await self._replicate(tenant, valid)
            metrics.LINES_RECEIVED.labels(tenant).inc(total_lines)
            metrics.BYTES_RECEIVED.labels(tenant).inc(total_bytes)
            if self.coprocessors is not None and self.coprocessors.wants("post_push"):
                self.coprocessors.post_push(
                    tenant,
                    [
                        StreamSummary(s.labels, len(s.ts), len(s.blob), min(s.ts), max(s.ts))
                        for s in valid
                        if len(s.ts)
                    ],
                )
        if problems:
            raise ValidationError("\n".join(problems))
        # An empty push (no streams, or streams without entries) succeeds, as in Loki.

    def validate(
        self, tenant: str, streams: list[PushStream]
    ) -> tuple[list[ValidStream], list[str]]:
        """Split a push into valid streams (entries filtered) and problem messages."""
        lim = self.limits
        now = time.time_ns()
        oldest = (
            now - int(lim.reject_old_samples_max_age_s * 1e9) if lim.reject_old_samples else None
        )
        newest = now + int(lim.creation_grace_period_s * 1e9)
        problems: list[str] = []
        by_labels: dict[str, ValidStream] = {}
        for s in streams:
            try:
                labels = self._canonical_labels(s.labels)
            except ValidationError as e:
                problems.append(e.message)
                self._discard("invalid_labels", tenant, s.lines)
                continue
            ts = s.timestamps
            lines = s.lines
            lens = array("I", map(len, lines))
            keep: list[int] | None = None
            # Fast path: every entry within the line size and time limits.
            if (
                max(lens, default=0) > lim.max_line_size
                or (oldest is not None and min(ts, default=now) < oldest)
                or max(ts, default=now) > newest
            ):
                # Slow path: drop the offending entries, report each kind once per stream.
                keep = []
                seen: set[str] = set()
                for i, t in enumerate(ts):
                    reason = None
                    if lens[i] > lim.max_line_size:
                        reason = "line_too_long"
                        msg = (
                            f"Max entry size '{lim.max_line_size}' bytes exceeded for stream "
                            f"'{labels}' while adding an entry with length '{lens[i]}' bytes"
                        )
                    elif oldest is not None and t < oldest:
                        reason = "greater_than_max_sample_age"
                        msg = (
                            f"entry for stream '{labels}' has timestamp too old: "
                            f"{_rfc3339(t)}, oldest acceptable timestamp is: "
                            f"{_rfc3339(oldest)}"
                        )
                    elif t > newest:
                        reason = "too_far_in_future"
                        msg = f"entry for stream '{labels}' has timestamp too new: {_rfc3339(t)}"
                    if reason is None:
                        keep.append(i)
                        continue
                    metrics.DISCARDED_SAMPLES.labels(reason, tenant).inc()
                    metrics.DISCARDED_BYTES.labels(reason, tenant).inc(lens[i])
                    if reason not in seen:
                        seen.add(reason)
                        problems.append(msg)
            meta = None if s.metadata is None else [encode_metadata(m) for m in s.metadata]
            if keep is not None:
                if not keep:
                    continue
                ts = [ts[i] for i in keep]
                lines = [lines[i] for i in keep]
                lens = array("I", (lens[i] for i in keep))
                meta = None if meta is None else [meta[i] for i in keep]
            if not ts:
                continue
            vs = by_labels.get(labels)
            if vs is None:
                by_labels[labels] = ValidStream(
                    labels, fingerprint(labels), array("q", ts), lens, b"".join(lines), meta
                )
            else:  # the same stream twice in one push (e.g. unsorted labels): merge
                old_n = len(vs.ts)
                vs.ts.extend(ts)
                vs.lens.extend(lens)
                vs.blob += b"".join(lines)
                if meta is not None or vs.meta is not None:
                    vs.meta = (vs.meta or [b""] * old_n) + (meta or [b""] * len(ts))
        return list(by_labels.values()), problems

    def _discard(self, reason: str, tenant: str, lines: list[bytes]) -> None:
        metrics.DISCARDED_SAMPLES.labels(reason, tenant).inc(len(lines))
        metrics.DISCARDED_BYTES.labels(reason, tenant).inc(sum(map(len, lines)))

    def _canonical_labels(self, raw: str | list[tuple[str, str]]) -> str:
        lim = self.limits
        if isinstance(raw, str):
            try:
                pairs = parse_labels(raw)
            except ParseError as e:
                raise ValidationError(f"Error parsing labels '{raw}' with error: {e}") from None
            shown = raw
        else:
            pairs = raw
            shown = format_labels(pairs)
        # Loki drops empty-valued labels at push.
        pairs = [(k, v) for k, v in pairs if v != ""]
        if not pairs:
            raise ValidationError("error at least one label pair is required per stream")
        pairs.sort()
        labels = format_labels(pairs)
        if len(pairs) > lim.max_label_names_per_series:
            raise ValidationError(
                f"entry for stream '{shown}' has {len(pairs)} label names; "
                f"limit {lim.max_label_names_per_series}"
            )
        prev = None
        for name, value in pairs:
            if not _LABEL_NAME_RE.match(name):
                raise ValidationError(
                    f"Error parsing labels '{shown}' with error: invalid label name '{name}'"
                )
            if name == prev:
                raise ValidationError(f"stream '{shown}' has duplicate label name: '{name}'")
            prev = name
            if len(name) > lim.max_label_name_length:
                raise ValidationError(f"stream '{shown}' has label name too long: '{name}'")
            if len(value) > lim.max_label_value_length:
                raise ValidationError(f"stream '{shown}' has label value too long: '{value}'")
        return labels

    async def _replicate(self, tenant: str, streams: list[ValidStream]) -> None:
        """Send every stream to its replicas in parallel and return as soon as each
        stream has a quorum of acknowledgements (a slow or dying replica does not hold
        the push up); raise once some stream can no longer reach one."""
        rf = self.ring.replication_factor
        quorum = rf // 2 + 1
        per_ingester: dict[str, tuple[IngesterDesc, list[int]]] = {}
        owners_of: list[tuple[list[str], int]] = []  # per stream: live replicas, dead ones
        for idx, s in enumerate(streams):
            owners, dead = self.ring.get(stream_key(tenant, s.labels), rf)
            if len(owners) < quorum:
                raise Unavailable(
                    f"at least {quorum} live ingesters required, could only find "
                    f"{len(owners)} for stream {s.labels} (replication factor {rf}); "
                    "retry once the ingesters are back"
                )
            owners_of.append(([o.id for o in owners], dead))
            for o in owners:
                per_ingester.setdefault(o.id, (o, []))[1].append(idx)

        payloads = {
            i: bus.pack({"t": tenant, "s": [streams[j].wire() for j in idxs]})
            for i, (_, idxs) in per_ingester.items()
        }
        ids = list(per_ingester)
        fail = random.choice(ids) if ids and failpoints.hit("distributor.replica_send") else None

        async def send(i: str) -> None:
            if i == fail:
                raise Unavailable(f"failpoint distributor.replica_send: push to {i} not sent")
            await self.ingesters.push(per_ingester[i][0], payloads[i])

        loop = asyncio.get_running_loop()
        tasks = {loop.create_task(send(i)): i for i in ids}
        ok: set[str] = set()
        errs: dict[str, BaseException] = {}

        def undecided() -> bool:
            for owners, _ in owners_of:
                acked = sum(o in ok for o in owners)
                if acked < quorum and len(owners) - sum(o in errs for o in owners) >= quorum:
                    return True  # can still reach its quorum: wait
            return False

        pending = set(tasks)
        while pending and undecided():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                err = t.exception()
                if err is None:
                    ok.add(tasks[t])
                else:
                    errs[tasks[t]] = err
        for idx, (owners, dead) in enumerate(owners_of):
            acked = sum(o in ok for o in owners)
            if acked >= quorum:
                continue
            failed = [o for o in owners if o in errs]
            err = errs[failed[0]]
            if isinstance(err, LokiError) and err.status < 500:
                raise err
            if not isinstance(err, Exception):
                raise err  # cancelled
            reasons = [f"{o}: {errs[o]}" for o in failed]
            if dead:
                reasons.append(f"{dead} dead in the ring")
            raise Unavailable(
                f"quorum not reached for stream {streams[idx].labels}: {acked} of "
                f"{len(owners) + dead} replicas acknowledged, {quorum} required "
                f"({'; '.join(reasons)}); nothing of this push is guaranteed stored, retry it"
            )
        # Acknowledged. A replica that failed its part (a dropped request, a restart), or
        # fails it later, gets it again in the background, so replicas converge and cut
        # identical chunks.
        for i, err in errs.items():
            self._repair(per_ingester[i][0], payloads[i], err)
        for t in pending:
            self._inflight.add(t)
            t.add_done_callback(self._late_reply(per_ingester[tasks[t]][0], payloads[tasks[t]]))

    def _late_reply(self, desc: IngesterDesc, payload: bytes) -> Any:
        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self._repair(desc, payload, t.exception())

        return done

    def _repair(self, desc: IngesterDesc, payload: bytes, err: BaseException | None) -> None:
        if isinstance(err, Unavailable) and self.repair is not None:
            self.repair.submit(desc, payload)


class ReplicaRepair:
    """Re-sends pushes to replicas that failed them while the quorum succeeded (hinted
    handoff, as in Dynamo and Cassandra), with backoff, within a memory bound.

    A repair is an optimisation, never needed for durability: the quorum holds every
    acknowledged line. It keeps the replicas' entries equal, so that their chunks are
    byte-identical and stored once; a repair that arrives after later pushes is sorted
    into place by the ingester. A duplicate (the first send did arrive) is dropped there.
    """

    DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0)

    def __init__(self, ingesters: IngesterClient, max_bytes: int) -> None:
        self.ingesters = ingesters
        self.max_bytes = max_bytes
        self.pending_bytes = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, ingester: IngesterDesc, payload: bytes) -> None:
        if self.pending_bytes + len(payload) > self.max_bytes:
            metrics.REPLICA_REPAIRS.labels("dropped").inc()
            return
        self.pending_bytes += len(payload)
        task = asyncio.get_running_loop().create_task(self._repair(ingester, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _repair(self, ingester: IngesterDesc, payload: bytes) -> None:
        try:
            for delay in self.DELAYS_S:
                await asyncio.sleep(delay)
                try:
                    await self.ingesters.push(ingester, payload)
                except LokiError as e:
                    if e.status < 500:
                        break
                    continue
                except Exception:  # transport trouble: try again later
                    continue
                metrics.REPLICA_REPAIRS.labels("repaired").inc()
                return
            metrics.REPLICA_REPAIRS.labels("failed").inc()
        finally:
            self.pending_bytes -= len(payload)

    async def stop(self) -> None:
        """Give pending repairs up (they only cost deduplication, never data)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class NATSIngesterClient:
    """Push RPC to an ingester over NATS request/reply."""

    def __init__(self, nc: Any, timeout_s: float) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def push(self, ingester: IngesterDesc, payload: bytes) -> None:
        await bus.request(
            self.nc, bus.INGESTER_PUSH.format(id=ingester.id), payload, self.timeout_s
        )
