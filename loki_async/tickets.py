"""Tickets: the state of asynchronous queries in JetStream, and the verbs the HTTP API
offers on them.

A client's **ticket** names one **execution** of a query. Several tickets share an
execution when their queries are identical and in flight at the same time (coalescing),
so one execution runs however many clients ask. Records live in the ``tickets`` KV
bucket, keyed by a key-safe form of the tenant so that another tenant's ticket is simply
not found::

    t.<tenant>.<ticket>        Ticket: its execution, creation and expiry
    x.<tenant>.<execution>     Execution: request, state, progress, stats, result location
    i.<tenant>.<sha(key)>      Idempotency-Key -> ticket id
    q.<tenant>.<fingerprint>   coalescing: identical in-flight query -> execution id
    r.<tenant>                 executions taken as queued or running (the concurrency limit)

An execution moves ``queued -> running -> done | failed | cancelled``; the coordinating
worker is its only writer of progress, the frontend only sets the stop flag or cancels,
and every update is a compare-and-swap on the record's revision. Final results are Loki's
JSON, zstd-compressed, in the ``results`` object store (the chunk object store for very
large ones). Ticket ids are 128-bit random (32 hex digits).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import zstandard

from . import bus
from .errors import BadRequest, LokiError, NotFound, RateLimited
from .frontend import (
    Planner,
    QueryRequest,
    QueryResult,
    Split,
    SplitResults,
    cache_key,
    cacheable,
    decode_split,
    private_key,
)
from .objstore import ObjectClient
from .querier import QueryStats

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
TERMINAL = frozenset((DONE, FAILED, CANCELLED))

NS = 10**9
_ID_RE = re.compile(r"[0-9a-f]{32}")
# Compressed results above this go to the chunk object store instead of JetStream.
RESULT_NATS_MAX_BYTES = 8 << 20
RESULT_READ_TIMEOUT_S = 15.0  # one attempt at reading a result from the object store
# A concurrent submitter holding an Idempotency-Key has this long to write its ticket.
_IDEMPOTENCY_RACE_S = 5.0


def new_id() -> str:
    """An unguessable 128-bit id in hex."""
    return secrets.token_hex(16)


def check_id(ticket_id: str) -> str:
    """``ticket_id`` if well-formed, else a 400 that says what a ticket id looks like."""
    if not _ID_RE.fullmatch(ticket_id):
        raise BadRequest(
            f'invalid ticket id "{ticket_id[:80]}": a ticket id is 32 lowercase hexadecimal '
            "characters, as returned by an async=true query"
        )
    return ticket_id


@dataclass(slots=True)
class Ticket:
    """One client's handle on an execution."""

    id: str
    tenant: str
    execution: str
    created_ns: int
    expires_ns: int

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Ticket:
        return cls(**{k: d[k] for k in cls.__slots__ if k in d})


@dataclass(slots=True)
class Execution:
    """One run of a query, shared by the tickets in ``tickets``."""

    id: str
    tenant: str
    request: dict[str, Any]
    created_ns: int
    tickets: list[str] = field(default_factory=list)
    state: str = QUEUED
    started_ns: int = 0
    finished_ns: int = 0
    stop_requested: bool = False
    splits_total: int = 0
    splits_done: int = 0
    splits_skipped: int = 0
    splits_cached: int = 0
    coprocessors: dict[str, dict[str, int]] = field(default_factory=dict)  # per plugin
    decided: bool = False  # the coprocessors' verdicts below are final
    skipped: bytes = b""  # bitmap: bit i set if a coprocessor skipped split i
    narrowed: list[list[int]] = field(default_factory=list)  # [i, start, end] per narrowed split
    done: bytes = b""  # bitmap: bit i set once split i's result is stored
    interval_ns: int = 0  # the split interval it was planned with
    fresh_until_ns: int = 0  # splits ending before this were cacheable
    stats: dict[str, int] = field(default_factory=dict)
    error: dict[str, Any] | None = None  # {"status": int, "error": str}
    is_partial: bool = False
    result: dict[str, Any] | None = None  # {"where": "nats"|"objects", "name", "size"}
    deliveries: int = 0
    coordinator: str = ""  # the worker coordinating it (host:pid)
    coalesce_key: str = ""

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Execution:
        return cls(**{k: d[k] for k in cls.__slots__ if k in d})

    @property
    def is_running(self) -> bool:
        return self.state not in TERMINAL

    def split_done(self, index: int) -> bool:
        return _bit(self.done, index)

    def mark_done(self, index: int) -> None:
        self.done = _with_bit(self.done, index)

    def split_skipped(self, index: int) -> bool:
        return _bit(self.skipped, index)

    def record_verdicts(
        self, plan: list[Split], planned: list[Split | None], counts: dict[str, dict[str, int]]
    ) -> None:
        """Keep the coprocessors' verdicts, so every later reader plans the same."""
        self.decided = True
        self.coprocessors = counts
        self.skipped = b""
        self.narrowed = []
        for i, (s, p) in enumerate(zip(plan, planned, strict=True)):
            if p is None:
                self.skipped = _with_bit(self.skipped, i)
            elif p != s:
                self.narrowed.append([i, p.start, p.end])
        self.splits_skipped = sum(1 for p in planned if p is None)


def _bit(bits: bytes, index: int) -> bool:
    return index // 8 < len(bits) and bool(bits[index // 8] >> (index % 8) & 1)


def _with_bit(bits: bytes, index: int) -> bytes:
    out = bytearray(bits.ljust(index // 8 + 1, b"\0"))
    out[index // 8] |= 1 << (index % 8)
    return bytes(out)


def ticket_key(tenant: str, ticket_id: str) -> str:
    return f"t.{bus.key_token(tenant)}.{ticket_id}"


def exec_key(tenant: str, execution: str) -> str:
    return f"x.{bus.key_token(tenant)}.{execution}"


def status_json(t: Ticket, x: Execution) -> dict[str, Any]:
    """The ``/status`` document of a ticket."""

    def iso(ns: int) -> str | None:
        if not ns:
            return None
        return (
            time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // NS)) + f".{ns % NS // 10**6:03d}Z"
        )

    stats = x.stats
    # Queued until a worker started it (or until now; 0 if it ended before starting).
    queue_ns = (x.started_ns or (time.time_ns() if x.is_running else x.created_ns)) - x.created_ns
    exec_ns = ((x.finished_ns or time.time_ns()) - x.started_ns) if x.started_ns else 0
    out: dict[str, Any] = {
        "ticket": t.id,
        "execution": x.id,
        "state": x.state,
        "is_running": x.is_running,
        "is_partial": x.is_partial or (x.is_running and x.splits_done > 0),
        "query": x.request.get("query", ""),
        "coordinator": x.coordinator,
        "deliveries": x.deliveries,
        "progress": {
            "splits_total": x.splits_total,
            "splits_done": x.splits_done,
            "splits_skipped": x.splits_skipped,
            "splits_cached": x.splits_cached,
            "coprocessors": x.coprocessors,
        },
        "stats": {
            "bytes_processed": stats.get("ingester_bytes", 0) + stats.get("store_bytes", 0),
            "lines_processed": stats.get("ingester_lines", 0) + stats.get("store_lines", 0),
            "chunks_fetched": stats.get("chunks_fetched", 0),
            "queue_time_s": queue_ns / NS,
            "exec_time_s": exec_ns / NS,
        },
        "created": iso(t.created_ns),
        "started": iso(x.started_ns),
        "finished": iso(x.finished_ns),
        "expires": iso(t.expires_ns),
    }
    if x.error:
        out["error"] = x.error
    return out


def _raise_failed(x: Execution) -> None:
    err = x.error or {"status": 500, "error": "query failed"}
    raise LokiError(str(err.get("error", "query failed")), int(err.get("status", 500)))


class Tickets:
    """Ticket and execution records, results, and the frontend's verbs on them."""

    def __init__(
        self,
        *,
        nc: Any,
        js: Any,
        kv: Any,
        results: Any,
        objects: ObjectClient | None,
        default_keep_alive_s: float,
        max_keep_alive_s: float,
        max_concurrent: int = 0,
    ) -> None:
        self.nc = nc
        self.js = js
        self.kv = kv
        self.results = results
        self.objects = objects
        self.default_keep_alive_s = default_keep_alive_s
        self.max_keep_alive_s = max_keep_alive_s
        self.max_concurrent = max_concurrent  # executions per tenant (0: no limit)

    # ------------------------------------------------------------------ records

    async def _raw(self, key: str) -> tuple[bytes, int] | None:
        """A key's value and revision; None if it is missing, deleted or empty."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await bus.js_retry(lambda: self.kv.get(key), "read ticket")
        except KeyNotFoundError:
            return None
        return (entry.value, entry.revision) if entry.value else None

    async def _get(self, key: str) -> tuple[dict[str, Any], int] | None:
        got = await self._raw(key)
        return (bus.unpack(got[0]), got[1]) if got else None

    async def load_exec(self, tenant: str, execution: str) -> Execution | None:
        got = await self._get(exec_key(tenant, execution))
        return Execution.from_wire(got[0]) if got else None

    async def update_exec(
        self, tenant: str, execution: str, change: Callable[[Execution], bool]
    ) -> Execution | None:
        """Apply ``change`` to the record by compare-and-swap, retrying on conflict.
        ``change`` mutates and returns True to write, False to leave it. Returns the
        record as written (or as found), None if there is no such execution."""
        from nats.js.errors import KeyWrongLastSequenceError

        key = exec_key(tenant, execution)
        while True:
            got = await self._get(key)
            if got is None:
                return None
            x = Execution.from_wire(got[0])
            if not change(x):
                return x
            try:
                await bus.js_retry(
                    lambda x=x, rev=got[1]: self.kv.update(key, bus.pack(asdict(x)), last=rev),
                    "update ticket",
                )
                return x
            except KeyWrongLastSequenceError:
                continue

    async def load_ticket(self, tenant: str, ticket_id: str) -> Ticket | None:
        """The ticket, or None if unknown, expired or another tenant's."""
        got = await self._get(ticket_key(tenant, ticket_id))
        if got is None:
            return None
        t = Ticket.from_wire(got[0])
        return t if t.expires_ns > time.time_ns() else None

    def keep_alive_ns(self, keep_alive_s: float | None) -> int:
        """A client's keep_alive (default when None), checked against the cap."""
        if keep_alive_s is None:
            keep_alive_s = self.default_keep_alive_s
        if keep_alive_s <= 0 or keep_alive_s > self.max_keep_alive_s:
            raise BadRequest(
                f"invalid keep_alive: must be positive and at most {self.max_keep_alive_s:g}s "
                "(frontend.async_max_keep_alive)"
            )
        return int(keep_alive_s * NS)

    # ------------------------------------------------------------------ verbs

    async def submit(
        self, req: QueryRequest, keep_alive_s: float | None, idempotency_key: str = ""
    ) -> tuple[Ticket, Execution]:
        """Create a ticket for ``req`` (already validated): the same Idempotency-Key gives
        the same ticket; an identical query in flight gives a ticket on its execution."""
        keep_ns = self.keep_alive_ns(keep_alive_s)
        tenant, tk = req.tenant, bus.key_token(req.tenant)
        now = time.time_ns()
        tid = new_id()
        if idempotency_key:
            # The header's own bytes: those that are not UTF-8 arrive as surrogates.
            key = idempotency_key.encode("utf-8", "surrogateescape")
            digest = hashlib.sha256(key).hexdigest()[:32]
            existing = await self._claim_idempotency(f"i.{tk}.{digest}", tid, tenant)
            if existing is not None:
                return existing
        coalesce_key = f"q.{tk}.{req.fingerprint()}"
        if self.max_concurrent > 0 and not await self._running_identical(tenant, coalesce_key):
            try:
                await self._take_slot(tenant, tid)
            except RateLimited:
                if idempotency_key:
                    await self._release_idempotency(f"i.{tk}.{digest}", tid)
                raise
        x = Execution(
            id=tid,
            tenant=tenant,
            request=req.to_wire(),
            created_ns=now,
            tickets=[tid],
            coalesce_key=coalesce_key,
        )
        t = Ticket(tid, tenant, tid, now, now + keep_ns)
        await bus.js_retry(
            lambda: self.kv.create(exec_key(tenant, tid), bus.pack(asdict(x))), "create ticket"
        )
        shared = await self._coalesce(x, tid)
        if shared is not None:
            t.execution = shared.id
            await bus.js_retry(lambda: self.kv.purge(exec_key(tenant, tid)), "drop ticket")
            x = shared
        await bus.js_retry(
            lambda: self.kv.put(ticket_key(tenant, tid), bus.pack(asdict(t))), "write ticket"
        )
        if shared is None:
            await bus.js_retry(
                lambda: self.js.publish(
                    bus.QUERIES_SUBJECT.format(tenant=tk),
                    bus.pack({"execution": tid, "tenant": tenant}),
                    stream=bus.QUERIES_STREAM,
                    headers={bus.HEADER_MSG_ID: tid},
                ),
                "queue query",
            )
        return t, x

    async def _claim_idempotency(
        self, key: str, tid: str, tenant: str
    ) -> tuple[Ticket, Execution] | None:
        """Claim ``key`` for ticket ``tid``; if another ticket holds it, return that one."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        value = bus.pack({"ticket": tid, "at": time.time_ns()})
        deadline = time.monotonic() + _IDEMPOTENCY_RACE_S
        while True:
            try:
                await bus.js_retry(lambda: self.kv.create(key, value), "claim idempotency key")
                return None
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await bus.js_retry(lambda: self.kv.get(key), "read idempotency key")
            except KeyNotFoundError:
                continue
            held = bus.unpack(entry.value)
            with contextlib.suppress(NotFound):
                return await self.resolve(tenant, held["ticket"])
            # Its ticket is gone (expired, deleted) - or its submitter is still writing it.
            young = time.time_ns() - held["at"] < _IDEMPOTENCY_RACE_S * NS
            if young and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                continue
            with contextlib.suppress(KeyWrongLastSequenceError):
                await bus.js_retry(
                    lambda rev=entry.revision: self.kv.update(key, value, last=rev),
                    "claim idempotency key",
                )
                return None

    async def _release_idempotency(self, key: str, tid: str) -> None:
        """Give up the claim on ``key`` if ticket ``tid`` still holds it."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        got = await self._get(key)
        if got is not None and got[0]["ticket"] == tid:
            with contextlib.suppress(KeyNotFoundError, KeyWrongLastSequenceError):
                await self.kv.delete(key, last=got[1])

    async def _running_identical(self, tenant: str, coalesce_key: str) -> bool:
        """Whether an identical query is in flight (a submission attaches to it)."""
        got = await self._raw(coalesce_key)
        x = await self.load_exec(tenant, got[0].decode()) if got else None
        return x is not None and x.is_running and not x.stop_requested

    async def _take_slot(self, tenant: str, execution: str) -> None:
        """Count ``execution`` among the tenant's queued or running ones, or raise 429
        at ``max_concurrent``. The list (``r.<tenant>``) is checked against the
        executions' states only when it is full: finished ones leave it then, so a slot
        is never lost to a worker that died."""
        from nats.js.errors import KeyWrongLastSequenceError

        key = f"r.{bus.key_token(tenant)}"
        while True:
            got = await self._get(key)
            held: list[str] = got[0]["executions"] if got else []
            revision = got[1] if got else 0
            if execution in held:  # a retried write that had landed
                return
            if len(held) >= self.max_concurrent:
                found = await asyncio.gather(*(self.load_exec(tenant, e) for e in held))
                held = [e for e, x in zip(held, found, strict=True) if x and x.is_running]
                if len(held) >= self.max_concurrent:
                    raise RateLimited(
                        f"too many outstanding async queries: tenant '{tenant}' has "
                        f"{len(held)} queued or running, the limit is {self.max_concurrent} "
                        "(limits_config.max_concurrent_async_queries); wait for one to "
                        "finish, or stop or delete one, and submit again"
                    )
            value = bus.pack({"executions": [*held, execution]})
            try:
                if revision:
                    await bus.js_retry(
                        lambda v=value, r=revision: self.kv.update(key, v, last=r), "count query"
                    )
                else:
                    await bus.js_retry(lambda v=value: self.kv.create(key, v), "count query")
                return
            except KeyWrongLastSequenceError:
                continue

    async def _coalesce(self, x: Execution, tid: str) -> Execution | None:
        """Attach ticket ``tid`` to an identical execution in flight, if there is one;
        otherwise register ``x`` as the one to attach to. Returns the shared execution."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        key = x.coalesce_key
        for _ in range(5):
            try:
                await bus.js_retry(lambda: self.kv.create(key, x.id.encode()), "coalesce")
                return None
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await bus.js_retry(lambda: self.kv.get(key), "coalesce")
            except KeyNotFoundError:
                continue

            def attach(other: Execution) -> bool:
                if not other.is_running or other.stop_requested:
                    return False
                other.tickets.append(tid)
                return True

            other = await self.update_exec(x.tenant, entry.value.decode(), attach)
            if other is not None and tid in other.tickets:
                return other
            with contextlib.suppress(KeyWrongLastSequenceError):
                await bus.js_retry(
                    lambda rev=entry.revision: self.kv.update(key, x.id.encode(), last=rev),
                    "coalesce",
                )
                return None
        return None

    async def resolve(
        self, tenant: str, ticket_id: str, keep_alive_s: float | None = None
    ) -> tuple[Ticket, Execution]:
        """The ticket and its execution; 404 if unknown, expired or another tenant's.
        With ``keep_alive_s`` the ticket's retention restarts from now."""
        check_id(ticket_id)
        t = await self.load_ticket(tenant, ticket_id)
        x = await self.load_exec(tenant, t.execution) if t is not None else None
        if t is None or x is None:
            raise NotFound(f"ticket {ticket_id} not found (unknown, expired or deleted)")
        if keep_alive_s is not None:
            t.expires_ns = time.time_ns() + self.keep_alive_ns(keep_alive_s)
            await bus.js_retry(
                lambda: self.kv.put(ticket_key(tenant, t.id), bus.pack(asdict(t))),
                "extend ticket",
            )
        return t, x

    async def wait(
        self, tenant: str, ticket_id: str, timeout_s: float, keep_alive_s: float | None = None
    ) -> tuple[Ticket, Execution]:
        """Like :meth:`resolve`, but waits up to ``timeout_s`` for the execution to end,
        watching its record (no polling): returns as soon as it changes to a final state."""
        t, x = await self.resolve(tenant, ticket_id, keep_alive_s)
        if not x.is_running or timeout_s <= 0:
            return t, x
        from nats.errors import TimeoutError as NATSTimeoutError

        watcher = await bus.js_retry(lambda: self.kv.watch(exec_key(tenant, x.id)), "watch ticket")
        deadline = time.monotonic() + timeout_s
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    entry = await watcher.updates(timeout=remaining)
                except (NATSTimeoutError, TimeoutError):
                    break
                if entry is None:
                    continue
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    raise NotFound(f"ticket {ticket_id} not found (unknown, expired or deleted)")
                x = Execution.from_wire(bus.unpack(entry.value))
                if not x.is_running:
                    break
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()
        return t, x

    async def result(self, x: Execution) -> bytes:
        """The final result body (Loki's JSON) of a finished execution."""
        if x.state == FAILED:
            _raise_failed(x)
        if x.state == CANCELLED or x.result is None:
            raise NotFound(f"execution {x.id} has no result (cancelled)")
        loc = x.result
        if loc["where"] == "objects":
            assert self.objects is not None, "BUG: result in the object store without one"
            data = await self.objects.get(loc["name"])
        else:
            # nats-py reads an object through an ordered consumer with no time limit,
            # which can stall for good across a server restart: bound each attempt.
            obj = await bus.js_retry(
                lambda: asyncio.wait_for(self.results.get(loc["name"]), RESULT_READ_TIMEOUT_S),
                "read result",
            )
            data = obj.data
        return zstandard.decompress(data)

    async def store_result(self, x: Execution, body: bytes) -> dict[str, Any]:
        """Store a final result; returns its location for the execution record."""
        data = await asyncio.to_thread(zstandard.ZstdCompressor(level=3).compress, body)
        name = f"{bus.key_token(x.tenant)}/{x.id}.json.zst"
        if len(data) > RESULT_NATS_MAX_BYTES and self.objects is not None:
            await self.objects.put("async-results/" + name, data)
            return {"where": "objects", "name": "async-results/" + name, "size": len(body)}
        await bus.js_retry(lambda: self.results.put(name, data), "store result")
        return {"where": "nats", "name": name, "size": len(body)}

    async def delete_result(self, x: Execution) -> None:
        loc = x.result
        if loc is None:
            return
        with contextlib.suppress(Exception):  # already gone is fine
            if loc["where"] == "objects" and self.objects is not None:
                await self.objects.delete(loc["name"])
            else:
                await self.results.delete(loc["name"])

    async def control(self, execution: str, op: str) -> None:
        """Tell every worker to ``stop`` or ``cancel`` an execution's running splits."""
        await self.nc.publish(bus.EXEC_CONTROL.format(id=execution), bus.pack({"op": op}))

    async def stop(self, tenant: str, ticket_id: str) -> tuple[Ticket, Execution]:
        """Stop running; what is done becomes the final (partial) result."""
        t, x = await self.resolve(tenant, ticket_id)
        if not x.is_running:
            return t, x

        def flag(e: Execution) -> bool:
            if not e.is_running or e.stop_requested:
                return False
            e.stop_requested = True
            return True

        x = await self.update_exec(tenant, x.id, flag) or x
        await self.control(x.id, "stop")
        return t, x

    async def delete(self, tenant: str, ticket_id: str) -> None:
        """Delete a ticket; the last ticket of an execution cancels it and drops its result."""
        t, _ = await self.resolve(tenant, ticket_id)
        await bus.js_retry(lambda: self.kv.purge(ticket_key(tenant, t.id)), "delete ticket")
        await self.release(tenant, t.execution, t.id)

    async def release(self, tenant: str, execution: str, ticket_id: str) -> None:
        """Drop ``ticket_id`` from an execution; cancel and clean up if none is left."""

        def detach(e: Execution) -> bool:
            if ticket_id in e.tickets:
                e.tickets.remove(ticket_id)
            if e.tickets:
                return True
            if e.is_running:
                e.state = CANCELLED
                e.finished_ns = time.time_ns()
            return True

        x = await self.update_exec(tenant, execution, detach)
        if x is None or x.tickets:
            return
        await self.control(x.id, "cancel")
        await self.delete_result(x)
        with contextlib.suppress(Exception):
            await self.kv.purge(exec_key(tenant, x.id))

    async def _keys(self, pattern: str) -> list[str]:
        """Keys matching a subject pattern (``*`` one token), from the bucket stream's
        per-subject counts: one request, complete. (A watch's "initial values done"
        marker can come before the values under load, which listed nothing.) Deleted
        keys are included until their markers age out; readers skip them."""
        prefix = f"$KV.{bus.TICKETS_BUCKET}."
        info = await bus.js_retry(
            lambda: self.js.stream_info(
                f"KV_{bus.TICKETS_BUCKET}", subjects_filter=prefix + pattern
            ),
            "list tickets",
        )
        return [subject[len(prefix) :] for subject in info.state.subjects or {}]

    async def list(self, tenant: str) -> list[tuple[Ticket, Execution]]:
        """The tenant's live tickets, newest first."""
        keys = await self._keys(f"t.{bus.key_token(tenant)}.*")
        out = []
        for key in keys:
            with contextlib.suppress(NotFound):
                out.append(await self.resolve(tenant, key.rsplit(".", 1)[1]))
        out.sort(key=lambda tx: tx[0].created_ns, reverse=True)
        return out

    async def expire(self) -> int:
        """Delete expired tickets (and executions no ticket refers to); returns how many."""
        keys = await self._keys("t.*.*")
        now = time.time_ns()
        n = 0
        for key in keys:
            got = await self._get(key)
            if got is None:
                continue
            t = Ticket.from_wire(got[0])
            if t.expires_ns > now:
                continue
            await self.kv.purge(key)
            await self.release(t.tenant, t.execution, t.id)
            n += 1
        return n


def planned_splits(req: QueryRequest, planner: Planner, x: Execution) -> list[Split | None]:
    """The splits of an execution in plan order, after the coprocessors' verdicts: None
    for a skipped split, the narrowed range for a narrowed one."""
    plan: list[Split | None] = list(
        Planner(planner.querier, x.interval_ns, planner.max_series).plan(req)
    )
    for i in range(len(plan)):
        if x.split_skipped(i):
            plan[i] = None
    for i, start, end in x.narrowed:
        plan[i] = Split(start, end)
    return plan


def split_keys(req: QueryRequest, planner: Planner, x: Execution) -> list[str | None]:
    """Where each split of an execution keeps its result, in plan order: the shared
    split cache for splits that can no longer change, a private key for the rest, None
    for a skipped split."""
    return [
        None
        if s is None
        else cache_key(req, s)
        if cacheable(req, s, x.fresh_until_ns)
        else private_key(x.tenant, x.id, i)
        for i, s in enumerate(planned_splits(req, planner, x))
    ]


async def merge_done(
    req: QueryRequest,
    planner: Planner,
    split_results: SplitResults,
    x: Execution,
    stats: QueryStats,
    have: dict[int, bytes] | None = None,
) -> QueryResult:
    """The merge of the splits of ``x`` finished so far, in plan order (for backward log
    queries: newest splits first); an empty result of the query's type if none is.
    ``have`` holds split results already in memory."""
    keys = split_keys(req, planner, x)
    have = have or {}
    todo = [i for i in range(len(keys)) if x.split_done(i) and i not in have]
    sem = asyncio.Semaphore(32)

    async def fetch(i: int) -> tuple[int, bytes | None]:
        key = keys[i]
        assert key is not None, "BUG: a skipped split is marked done"
        async with sem:
            return i, await split_results.get(key)

    for i, data in await asyncio.gather(*(fetch(i) for i in todo)):
        if data is not None:
            have[i] = data
    parts = [decode_split(have[i]) for i in sorted(have)]
    merged = planner.merge(req, parts)
    if req.is_log:
        return QueryResult(streams=merged, stats=stats, coprocessors=x.coprocessors)
    return QueryResult(value=merged, stats=stats, coprocessors=x.coprocessors)
