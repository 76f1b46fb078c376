"""Consistent hash ring of ingesters, with membership in the JetStream KV bucket ``ring``.

Each ingester owns ``num_tokens`` 32-bit tokens derived from its id (stable across
restarts, so a restarted ingester gets its streams back) and heartbeats its entry.
Distributors and queriers watch the bucket and keep the ring in memory. A stream's key
(hash of tenant and canonical labels) maps to the first token at or after it; the
owners are the next ``rf`` distinct healthy ingesters clockwise.
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
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError
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

    def healthy(self, now_ns: int, timeout_s: float) -> bool:
        return self.state == ACTIVE and now_ns - self.heartbeat_ns <= timeout_s * 1e9


async def open_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(bus.RING_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=bus.RING_BUCKET, history=1))


class Ring:
    """In-memory view of the ring, kept current by a KV watch."""

    def __init__(
        self, js: JetStreamContext, *, heartbeat_timeout_s: float, replication_factor: int
    ) -> None:
        self.js = js
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.replication_factor = replication_factor
        self._members: dict[str, IngesterDesc] = {}
        self._tokens: list[int] = []
        self._owners: list[str] = []
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    async def start(self) -> None:
        kv = await open_bucket(self.js)
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
        now = time.time_ns()
        return [m for m in self._members.values() if m.healthy(now, self.heartbeat_timeout_s)]

    def members(self) -> list[IngesterDesc]:
        return list(self._members.values())

    def get(self, key: int, rf: int | None = None) -> tuple[list[IngesterDesc], int]:
        """Owners of ``key``: up to rf distinct healthy ingesters, and how many were unhealthy."""
        rf = rf or self.replication_factor
        now = time.time_ns()
        out: list[IngesterDesc] = []
        seen: set[str] = set()
        unhealthy = 0
        n = len(self._tokens)
        start = bisect_left(self._tokens, key)
        for i in range(n):
            owner = self._owners[(start + i) % n]
            if owner in seen:
                continue
            seen.add(owner)
            desc = self._members[owner]
            if desc.healthy(now, self.heartbeat_timeout_s):
                out.append(desc)
            else:
                unhealthy += 1
            if len(out) + unhealthy >= rf:
                break
        return out, unhealthy

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
        self, js: JetStreamContext, instance_id: str, *, num_tokens: int, heartbeat_period_s: float
    ) -> None:
        self.js = js
        self.id = instance_id
        self.tokens = tokens_for(instance_id, num_tokens)
        self.heartbeat_period_s = heartbeat_period_s
        self.state = JOINING
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._kv = await open_bucket(self.js)
        await self._put()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def _put(self) -> None:
        assert self._kv is not None, "BUG: lifecycler not started"
        await self._kv.put(
            self.id,
            bus.pack(
                {
                    "id": self.id,
                    "state": self.state,
                    "tokens": self.tokens,
                    "heartbeat_ns": time.time_ns(),
                }
            ),
        )

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
