"""Consistent hash ring of ingesters, with membership in the JetStream KV bucket ``ring``.

Each ingester owns ``num_tokens`` 32-bit tokens derived from its id (stable across
restarts, so a restarted ingester gets its streams back) and heartbeats its entry.
Distributors and queriers watch the bucket and keep the ring in memory. A stream's key
(hash of tenant and canonical labels) maps to the first token at or after it; its
replica set is the next ``rf`` distinct ingesters clockwise.

As in Loki's ring, the two operations see the members differently:

- **write**: only ACTIVE members with a fresh heartbeat take pushes. A JOINING or LEAVING
  member on the way *extends* the set by one, so a graceful scale-down keeps RF live
  replicas; a member whose heartbeat timed out does not (it counts as a failed replica,
  and the quorum decides).
- **read**: ACTIVE, JOINING and LEAVING members with a fresh heartbeat answer queries (a
  LEAVING ingester holds data until its flush ends). Every acknowledged line is on at
  least a quorum of its replicas, so a read survives ``rf // 2`` missing ingesters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from bisect import bisect_left
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from . import bus

log = logging.getLogger(__name__)

JOINING, ACTIVE, LEAVING = "JOINING", "ACTIVE", "LEAVING"


def stream_key(tenant: str, labels: str) -> int:
    """The ring key (32-bit) of a stream: hash of tenant and canonical labels."""
    h = hashlib.blake2b(digest_size=4)
    h.update(tenant.encode())
    h.update(b"\x00")
    h.update(labels.encode())
    return int.from_bytes(h.digest(), "little")


def tokens_for(instance_id: str, n: int) -> list[int]:
    """Deterministic tokens of an ingester: the same id always owns the same ranges."""
    return sorted(
        {
            int.from_bytes(
                hashlib.blake2b(f"{instance_id}/{i}".encode(), digest_size=4).digest(), "little"
            )
            for i in range(n)
        }
    )


@dataclass(frozen=True, slots=True)
class IngesterDesc:
    id: str
    state: str
    tokens: tuple[int, ...]
    heartbeat_ns: int

    def alive(self, now_ns: int, timeout_s: float) -> bool:
        """Its heartbeat is recent enough."""
        return now_ns - self.heartbeat_ns <= timeout_s * 1e9

    def healthy(self, now_ns: int, timeout_s: float) -> bool:
        """Takes writes: ACTIVE with a fresh heartbeat."""
        return self.state == ACTIVE and self.alive(now_ns, timeout_s)

    def readable(self, now_ns: int, timeout_s: float) -> bool:
        """Answers reads: any registered state with a fresh heartbeat."""
        return self.state in (ACTIVE, JOINING, LEAVING) and self.alive(now_ns, timeout_s)

    def to_json(self, now_ns: int, timeout_s: float) -> dict[str, object]:
        return {
            "id": self.id,
            "state": self.state,
            "tokens": len(self.tokens),
            "heartbeat_age_s": round((now_ns - self.heartbeat_ns) / 1e9, 3),
            "healthy": self.healthy(now_ns, timeout_s),
        }


async def open_bucket(js: JetStreamContext, replicas: int) -> KeyValue:
    """The ring bucket, created with ``replicas`` (nats.replicas) if missing. Entries do
    not expire: a member's liveness is its heartbeat's age."""
    return await bus.ensure_kv(js, bus.RING_BUCKET, 0.0, replicas)


class Ring:
    """In-memory view of the ring, kept current by a KV watch."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        heartbeat_timeout_s: float,
        replication_factor: int,
        bucket_replicas: int = 1,
    ) -> None:
        self.js = js
        self.bucket_replicas = bucket_replicas
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.replication_factor = replication_factor
        self._members: dict[str, IngesterDesc] = {}
        self._tokens: list[int] = []
        self._owners: list[str] = []
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._kv: KeyValue | None = None

    async def start(self) -> None:
        kv = self._kv = await open_bucket(self.js, self.bucket_replicas)
        watcher = await kv.watchall()
        self._task = asyncio.get_running_loop().create_task(self._watch(watcher))
        await asyncio.wait_for(self._synced.wait(), 10)

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # end of the initial values
                self._synced.set()
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._members.pop(entry.key, None)
            else:
                d = bus.unpack(entry.value)
                self._members[entry.key] = IngesterDesc(
                    d["id"], d["state"], tuple(d["tokens"]), d["heartbeat_ns"]
                )
            self._rebuild()

    def _rebuild(self) -> None:
        pairs = sorted((t, m.id) for m in self._members.values() for t in m.tokens)
        self._tokens = [t for t, _ in pairs]
        self._owners = [i for _, i in pairs]
        self._changed.set()
        self._changed = asyncio.Event()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def ready(self) -> bool:
        return self._synced.is_set()

    def healthy(self) -> list[IngesterDesc]:
        """Members that take writes."""
        now = time.time_ns()
        return [m for m in self._members.values() if m.healthy(now, self.heartbeat_timeout_s)]

    def read_set(self) -> tuple[list[IngesterDesc], int]:
        """Members to ask on a read, and how many of their failures a read survives
        (``rf // 2``, less the members already unreachable)."""
        now = time.time_ns()
        live = [m for m in self._members.values() if m.readable(now, self.heartbeat_timeout_s)]
        return live, self.replication_factor // 2 - (len(self._members) - len(live))

    def members(self) -> list[IngesterDesc]:
        return list(self._members.values())

    def status(self) -> list[dict[str, object]]:
        """Every member as the ``/ring`` page shows it."""
        now = time.time_ns()
        return [
            m.to_json(now, self.heartbeat_timeout_s)
            for m in sorted(self._members.values(), key=lambda m: m.id)
        ]

    async def forget(self, instance_id: str) -> bool:
        """Remove a member for good (a dead ingester that will not come back), as the
        Forget button of Loki's ring page. False if there was no such member."""
        if instance_id not in self._members or self._kv is None:
            return False
        await self._kv.delete(instance_id)
        self._members.pop(instance_id, None)
        self._rebuild()
        return True

    def get(self, key: int, rf: int | None = None) -> tuple[list[IngesterDesc], int]:
        """The write replicas of ``key``: up to rf distinct live ACTIVE ingesters, and how
        many of the set are dead. JOINING/LEAVING members are passed over and extend the
        set; dead ones (heartbeat timed out) stay in it as failures."""
        want = rf or self.replication_factor
        now = time.time_ns()
        out: list[IngesterDesc] = []
        seen: set[str] = set()
        dead = 0
        n = len(self._tokens)
        start = bisect_left(self._tokens, key)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner in seen:
                continue
            seen.add(owner)
            desc = self._members[owner]
            if not desc.alive(now, self.heartbeat_timeout_s):
                dead += 1
            elif desc.state == ACTIVE:
                out.append(desc)
            # else JOINING/LEAVING: extend the set past it
            if len(out) + dead >= want:
                break
        return out, dead

    async def wait_for_healthy(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.healthy()) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"ring has {len(self.healthy())} healthy ingesters, want {n}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))


class Lifecycler:
    """An ingester's membership: register, heartbeat, change state, leave."""

    def __init__(
        self,
        js: JetStreamContext,
        instance_id: str,
        *,
        num_tokens: int,
        heartbeat_period_s: float,
        bucket_replicas: int = 1,
    ) -> None:
        self.js = js
        self.bucket_replicas = bucket_replicas
        self.id = instance_id
        self.tokens = tokens_for(instance_id, num_tokens)
        self.heartbeat_period_s = heartbeat_period_s
        self.state = JOINING
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._kv = await open_bucket(self.js, self.bucket_replicas)
        await self._put()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _put(self) -> None:
        """Write this member's entry, retrying through a leader election of the bucket
        (a fresh R3 bucket has no leader for a moment)."""
        kv = self._kv
        assert kv is not None, "BUG: lifecycler not started"

        def entry() -> bytes:
            return bus.pack(
                {"id": self.id, "state": self.state, "tokens": self.tokens,
                 "heartbeat_ns": time.time_ns()}
            )  # fmt: skip

        await bus.js_retry(lambda: kv.put(self.id, entry()), "ring heartbeat")

    async def set_state(self, state: str) -> None:
        self.state = state
        await self._put()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_period_s)
            try:
                await self._put()
            except Exception as e:  # NATS may be failing over; the next beat retries
                log.warning("ring heartbeat failed: %s", e)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._kv is not None:
            try:
                await self._kv.delete(self.id)
            except Exception as e:  # leaving is best effort: the heartbeat times out anyway
                log.warning("could not leave the ring: %s", e)
