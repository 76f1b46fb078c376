"""Querier worker: runs asynchronous queries from JetStream.

Every worker process has two durable pull consumers (both named ``querier-workers``):

* on ``QUERIES``, a worker takes one execution and **coordinates** it: plans it into
  splits with the same planner as the sync path, takes what the split cache already holds
  (and what an earlier, interrupted delivery finished), publishes the remaining splits to
  ``SPLITS`` - never more than ``max_query_parallelism`` outstanding per query, so a
  720-split aggregation cannot starve another tenant's small query - collects their
  completions, keeps the execution's progress up to date, merges, stores the result and
  marks the execution done before acknowledging;
* on ``SPLITS``, any worker **executes** a split, stores its result under the key the
  coordinator chose and tells the coordinator on core NATS.

Failures: a user error (4xx) fails the execution at once; anything else is retried
(``nak`` with a delay) until ``max_deliver``, then the execution fails with the reason.
A worker that dies mid-way leaves its messages unacknowledged; JetStream redelivers them
after ``ack_wait`` and the new coordinator finds the finished splits' results where they
were stored. ``stop`` and ``cancel`` travel on core NATS to every worker within
milliseconds; executors also check the execution's state before running a split.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from . import bus, metrics
from .api import query_response
from .config import Config
from .errors import LokiError
from .frontend import (
    Frontend,
    QueryRequest,
    Split,
    SplitResults,
    decode_split,
    encode_split,
    entry_count,
    fresh_boundary,
)
from .querier import QueryStats
from .tickets import (
    CANCELLED,
    DONE,
    FAILED,
    RUNNING,
    Execution,
    Tickets,
    merge_done,
    planned_splits,
    split_keys,
)

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 1.0
PROGRESS_EVERY_S = 0.1  # at most this often a coordinator rewrites progress
POLL_RESULTS_S = 2.0  # without completions for this long, look for results in the cache
JANITOR_EVERY_S = 60.0
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


class _Stopped(Exception):
    """The coordinator was told to stop (keep what is done) or cancel."""


class _SplitFailed(LokiError):
    """A split failed for good (a user error, or retries exhausted): so does the query."""


@dataclass
class _Coordination:
    """What a coordinator waits on: completions and control ops for one execution."""

    events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class QuerierWorker:
    """Coordinates and executes async queries; ``concurrency`` splits at a time."""

    def __init__(
        self,
        cfg: Config,
        *,
        nc: Any,
        js: Any,
        frontend: Frontend,
        tickets: Tickets,
        split_results: SplitResults,
    ) -> None:
        self.cfg = cfg
        self.wcfg = cfg.querier_worker
        self.nc = nc
        self.js = js
        self.frontend = frontend
        self.planner = frontend.planner
        self.tickets = tickets
        self.split_results = split_results
        self._tasks: list[asyncio.Task[Any]] = []
        self._subs: list[Any] = []
        self._qsub: Any = None
        self._ssub: Any = None
        self._coordinating: dict[str, _Coordination] = {}
        self._running: dict[str, set[asyncio.Task[Any]]] = {}
        self._retired: OrderedDict[str, None] = OrderedDict()  # stopped/cancelled executions
        self._requests: OrderedDict[str, QueryRequest] = OrderedDict()
        self._query_slots = asyncio.Semaphore(self.wcfg.max_concurrent_queries)
        self._stopping = False
        self._ready = False

    def ready(self) -> bool:
        return self._ready

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        w = self.wcfg
        subs = {}
        for stream in (bus.QUERIES_STREAM, bus.SPLITS_STREAM):
            config = ConsumerConfig(
                durable_name=bus.WORKERS_CONSUMER,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=w.ack_wait_s,
                max_deliver=w.max_deliver,
                max_ack_pending=-1,
                max_waiting=4096,
            )
            await bus.js_retry(
                lambda stream=stream, config=config: self.js.add_consumer(stream, config),
                f"create consumer on {stream}",
            )
            subs[stream] = await bus.js_retry(
                lambda stream=stream: self.js.pull_subscribe_bind(
                    durable=bus.WORKERS_CONSUMER, stream=stream
                ),
                f"bind consumer on {stream}",
            )
        self._qsub = subs[bus.QUERIES_STREAM]
        self._ssub = subs[bus.SPLITS_STREAM]
        self._subs.append(await self.nc.subscribe(bus.EXEC_CONTROL_ALL, cb=self._on_control))
        for stream, handler in (
            (bus.QUERIES_STREAM, self._on_query_given_up),
            (bus.SPLITS_STREAM, self._on_split_given_up),
        ):
            subject = bus.MAX_DELIVERIES_ADVISORY.format(
                stream=stream, consumer=bus.WORKERS_CONSUMER
            )
            self._subs.append(
                await self.nc.subscribe(subject, queue=bus.WORKERS_CONSUMER, cb=handler)
            )
        self._tasks.append(asyncio.create_task(self._query_loop(), name="worker-queries"))
        for i in range(w.concurrency):
            self._tasks.append(asyncio.create_task(self._split_loop(), name=f"worker-split-{i}"))
        self._tasks.append(asyncio.create_task(self._janitor(), name="worker-janitor"))
        self._ready = True
        log.info("querier worker started concurrency=%d", w.concurrency)

    async def stop(self) -> None:
        """Stop fetching; running work is abandoned unacknowledged (redelivered)."""
        self._stopping = True
        self._ready = False
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        self._tasks.clear()
        for sub in (*self._subs, self._qsub, self._ssub):
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        self._subs.clear()

    # ------------------------------------------------------------------ control

    async def _on_control(self, msg: Any) -> None:
        execution = msg.subject.split(".")[2]
        op = bus.unpack(msg.data).get("op")
        self._retire(execution)
        for task in list(self._running.get(execution, ())):
            task.cancel()
        coord = self._coordinating.get(execution)
        if coord is not None and op in ("stop", "cancel"):
            coord.events.put_nowait({"control": op})

    def _retire(self, execution: str) -> None:
        self._retired[execution] = None
        while len(self._retired) > 10_000:
            self._retired.popitem(last=False)

    async def _on_query_given_up(self, msg: Any) -> None:
        """JetStream gave up on a query message (its coordinator died or hung on every
        delivery): fail the execution and remove the message."""
        given_up = await self._given_up_message(msg, bus.QUERIES_STREAM)
        if given_up is None:
            return
        data, deliveries = given_up
        await self._fail(
            data["tenant"],
            data["execution"],
            503,
            f"query abandoned after {deliveries} deliveries: every worker that took it "
            "stopped or timed out (querier_worker.max_deliver)",
        )

    async def _on_split_given_up(self, msg: Any) -> None:
        """The same for a split: its coordinator fails the query."""
        given_up = await self._given_up_message(msg, bus.SPLITS_STREAM)
        if given_up is None:
            return
        data, deliveries = given_up
        await self.nc.publish(
            bus.EXEC_SPLIT_DONE.format(id=data["execution"]),
            bus.pack(
                {
                    "index": data["index"],
                    "error": {
                        "status": 503,
                        "error": f"split abandoned after {deliveries} deliveries: every worker "
                        "that took it stopped or timed out (querier_worker.max_deliver)",
                    },
                }
            ),
        )

    async def _given_up_message(self, msg: Any, stream: str) -> tuple[dict[str, Any], int] | None:
        """The message an advisory names (removed from the stream) and its deliveries;
        None if another worker already handled it."""
        try:
            advisory = orjson.loads(msg.data)
            seq = int(advisory["stream_seq"])
            raw = await self.js.get_msg(stream, seq)
            data = bus.unpack(raw.data)
            await self.js.delete_msg(stream, seq)
        except Exception as e:  # already removed by another worker, or unreadable
            log.debug("max-deliveries advisory on %s not handled: %r", stream, e)
            return None
        return data, int(advisory.get("deliveries", self.wcfg.max_deliver))

    async def _fail(self, tenant: str, execution: str, status: int, message: str) -> None:
        def fail(x: Execution) -> bool:
            if not x.is_running:
                return False
            x.state = FAILED
            x.finished_ns = time.time_ns()
            x.error = {"status": status, "error": message}
            return True

        x = await self.tickets.update_exec(tenant, execution, fail)
        metrics.ASYNC_QUERIES.labels(FAILED).inc()
        if x is not None:
            await self._forget_coalescing(x)
        log.warning("async query failed execution=%s status=%d err=%r", execution, status, message)

    # ------------------------------------------------------------------ coordinator

    async def _query_loop(self) -> None:
        while not self._stopping:
            await self._query_slots.acquire()
            try:
                msgs = await self._qsub.fetch(1, timeout=FETCH_TIMEOUT_S)
            except Exception as e:  # timeout (nothing queued) or NATS reconnecting
                self._query_slots.release()
                if not _is_timeout(e):
                    log.debug("fetch from QUERIES failed: %r", e)
                    await asyncio.sleep(0.5)
                continue
            task = asyncio.create_task(self._coordinate(msgs[0]))
            task.add_done_callback(lambda _t: self._query_slots.release())

    async def _coordinate(self, msg: Any) -> None:
        data = bus.unpack(msg.data)
        tenant, execution = data["tenant"], data["execution"]
        deliveries = msg.metadata.num_delivered
        keepalive = asyncio.create_task(_keep_in_progress(msg, self.wcfg.ack_wait_s))
        coord = _Coordination()
        self._coordinating[execution] = coord
        try:
            await self._run(tenant, execution, deliveries, coord)
            await _settle(msg.ack())
        except asyncio.CancelledError:
            await _settle(msg.nak())  # this worker stops: another one takes over now
            raise
        except LokiError as e:
            final = isinstance(e, _SplitFailed) or e.status < 500
            if final or deliveries >= self.wcfg.max_deliver:
                await self._fail(tenant, execution, e.status, e.message)
                await _settle(msg.term())
            else:
                log.warning("async query will be retried execution=%s err=%r", execution, e)
                await _settle(msg.nak(delay=self.wcfg.retry_delay_s))
        except Exception as e:
            log.exception("async query coordination failed execution=%s", execution)
            if deliveries >= self.wcfg.max_deliver:
                await self._fail(
                    tenant,
                    execution,
                    500,
                    f"query failed after {deliveries} attempts: internal error {type(e).__name__}",
                )
                await _settle(msg.term())
            else:
                await _settle(msg.nak(delay=self.wcfg.retry_delay_s))
        finally:
            keepalive.cancel()
            self._coordinating.pop(execution, None)

    async def _run(
        self, tenant: str, execution: str, deliveries: int, coord: _Coordination
    ) -> None:
        async def on_done(msg: Any) -> None:
            coord.events.put_nowait(bus.unpack(msg.data))

        sub = await self.nc.subscribe(bus.EXEC_SPLIT_DONE.format(id=execution), cb=on_done)
        try:
            await self._run_subscribed(tenant, execution, deliveries, coord)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _run_subscribed(
        self, tenant: str, execution: str, deliveries: int, coord: _Coordination
    ) -> None:
        x = await self.tickets.load_exec(tenant, execution)
        if x is None or not x.is_running:
            return  # deleted or finished meanwhile: nothing to do
        req = QueryRequest.from_wire(x.request)
        plan = self.planner.plan(req)
        fresh_until = x.fresh_until_ns or fresh_boundary(self.cfg)
        now = time.time_ns()
        verdicts = None
        if not x.decided:
            # The coprocessors decide once per execution; a redelivery reuses the verdicts.
            session = self.frontend.session(req, strict=False)
            with session or contextlib.nullcontext():
                verdicts = await self.planner.apply_coprocessors(req, plan, session, execution)

        def start(e: Execution) -> bool:
            if not e.is_running:
                return False
            if verdicts is not None and not e.decided:
                e.record_verdicts(plan, *verdicts)
            e.state = RUNNING
            e.started_ns = e.started_ns or now
            e.splits_total = len(plan)
            e.interval_ns = self.planner.interval
            e.fresh_until_ns = fresh_until
            e.deliveries = deliveries
            e.coordinator = WORKER_ID
            return True

        x = await self.tickets.update_exec(tenant, execution, start)
        if x is None or not x.is_running:
            return
        metrics.ASYNC_QUERIES.labels(RUNNING).inc()
        splits = planned_splits(req, self.planner, x)
        keys = split_keys(req, self.planner, x)
        assert len(keys) == len(plan), "BUG: split keys do not match the plan"
        stats = QueryStats.from_wire(x.stats)
        stats.splits = len(plan)

        # What the split cache (or an earlier delivery of this query) already holds.
        have: dict[int, bytes] = {}
        sem = asyncio.Semaphore(32)

        async def lookup(i: int, key: str) -> None:
            async with sem:
                data = await self.split_results.get(key)
            if data is not None:
                have[i] = data

        # Private keys can only hold results of an earlier delivery of this execution.
        await asyncio.gather(
            *(
                lookup(i, k)
                for i, k in enumerate(keys)
                if k is not None and (deliveries > 1 or k.startswith("c."))
            )
        )
        cached = sum(1 for i in have if str(keys[i]).startswith("c."))
        stats.cache_lookups += sum(1 for k in keys if k is not None and k.startswith("c."))
        stats.cache_hits += cached
        entries = {i: entry_count(decode_split(have[i])) for i in have} if req.is_log else {}
        done = set(have)
        metrics.WORKER_SPLITS.labels("cached").inc(len(have))

        pending = [i for i in range(len(splits)) if i not in done and splits[i] is not None]
        outstanding: set[int] = set()
        parallelism = max(self.cfg.limits_config.max_query_parallelism, 1)
        # Log queries start with one split and double, as the sync path does: a limit
        # met by the newest splits leaves the rest unread.
        window = 1 if req.is_log else parallelism
        stopped = False
        last_progress = 0.0
        last_event = time.monotonic()

        async def progress(force: bool = False) -> None:
            nonlocal last_progress
            if not force and time.monotonic() - last_progress < PROGRESS_EVERY_S:
                return
            last_progress = time.monotonic()

            def update(e: Execution) -> bool:
                if not e.is_running:
                    return False
                for i in done:
                    e.mark_done(i)
                e.splits_done = len(done)
                e.splits_cached = max(e.splits_cached, cached)
                e.stats = stats.to_wire()
                return True

            e = await self.tickets.update_exec(tenant, execution, update)
            if e is None or e.state == CANCELLED:
                raise _Stopped("cancel")
            if e.stop_requested:
                raise _Stopped("stop")

        def limit_met() -> bool:
            if not req.is_log:
                return False
            n = 0
            for i in range(len(splits)):
                if i not in done and splits[i] is not None:
                    return False
                n += entries.get(i, 0)
                if n >= req.limit:
                    return True
            return False

        try:
            await progress(force=True)
            while True:
                while pending and len(outstanding) < window and not limit_met():
                    i = pending.pop(0)
                    await self._publish_split(req, x, i, splits[i], str(keys[i]))
                    outstanding.add(i)
                if not outstanding:
                    break
                try:
                    ev = await asyncio.wait_for(coord.events.get(), POLL_RESULTS_S)
                except TimeoutError:
                    ev = None
                if ev is None or time.monotonic() - last_event > POLL_RESULTS_S:
                    # Completions travel on core NATS and may be lost (a reconnect):
                    # the stored results are the truth.
                    for i in list(outstanding):
                        data = await self.split_results.get(str(keys[i]))
                        if data is not None:
                            outstanding.discard(i)
                            done.add(i)
                            have[i] = data
                            entries[i] = entry_count(decode_split(data)) if req.is_log else 0
                    last_event = time.monotonic()
                    await progress()
                    if ev is None:
                        continue
                last_event = time.monotonic()
                if "control" in ev:
                    raise _Stopped(ev["control"])
                i = ev["index"]
                if "error" in ev:
                    err = ev["error"]
                    raise _SplitFailed(str(err["error"]), int(err["status"]))
                if i in outstanding:
                    outstanding.discard(i)
                    done.add(i)
                    entries[i] = ev.get("entries", 0)
                    stats.add(QueryStats.from_wire(ev.get("stats", {})))
                    window = min(window * 2, parallelism)
                await progress()
        except _Stopped as s:
            if str(s) == "cancel":
                await self._cleanup_private(x, keys)
                return
            stopped = True
        finally:
            if outstanding or stopped:
                # Splits no longer needed (limit met, stop, failure) are not run.
                self._retire(execution)
                await self.nc.publish(
                    bus.EXEC_CONTROL.format(id=execution), bus.pack({"op": "finish"})
                )
        await self._finish(req, x, keys, done, have, stats, partial=stopped)

    async def _publish_split(
        self, req: QueryRequest, x: Execution, index: int, split: Any, key: str
    ) -> None:
        body = bus.pack(
            {
                "execution": x.id,
                "tenant": x.tenant,
                "index": index,
                "start": split.start,
                "end": split.end,
                "key": key,
                "request": x.request,
            }
        )
        await bus.js_retry(
            lambda: self.js.publish(
                bus.SPLITS_SUBJECT.format(tenant=bus.key_token(x.tenant)),
                body,
                stream=bus.SPLITS_STREAM,
                headers={bus.HEADER_MSG_ID: f"{x.id}:{index}"},
            ),
            "queue split",
        )

    async def _finish(
        self,
        req: QueryRequest,
        x: Execution,
        keys: list[str | None],
        done: set[int],
        have: dict[int, bytes],
        stats: QueryStats,
        *,
        partial: bool,
    ) -> None:
        for i in done:
            x.mark_done(i)
        res = await merge_done(req, self.planner, self.split_results, x, stats, have)
        finished = time.time_ns()
        doc = query_response(
            req,
            res,
            exec_s=(finished - x.started_ns) / 1e9,
            queue_s=(x.started_ns - x.created_ns) / 1e9,
        )
        doc["is_partial"] = partial
        location = await self.tickets.store_result(x, orjson.dumps(doc))

        def complete(e: Execution) -> bool:
            if not e.is_running:
                return False
            e.state = DONE
            e.finished_ns = finished
            e.result = location
            e.is_partial = partial
            for i in done:
                e.mark_done(i)
            e.splits_done = len(done)
            e.stats = stats.to_wire()
            return True

        e = await self.tickets.update_exec(x.tenant, x.id, complete)
        if e is None or e.state != DONE or e.result != location:
            await self.tickets.delete_result(replace(x, result=location))
        else:
            metrics.ASYNC_QUERIES.labels(DONE).inc()
        await self._forget_coalescing(x)
        await self._cleanup_private(x, keys)

    async def _forget_coalescing(self, x: Execution) -> None:
        """An identical query submitted from now on starts a new execution."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv = self.tickets.kv
        with contextlib.suppress(KeyNotFoundError, KeyWrongLastSequenceError):
            entry = await kv.get(x.coalesce_key)
            if entry.value == x.id.encode():
                await kv.delete(x.coalesce_key, last=entry.revision)

    async def _cleanup_private(self, x: Execution, keys: list[str | None]) -> None:
        for key in keys:
            if key is not None and key.startswith("p."):
                await self.split_results.delete(key)

    # ------------------------------------------------------------------ executor

    async def _split_loop(self) -> None:
        while not self._stopping:
            try:
                msgs = await self._ssub.fetch(1, timeout=FETCH_TIMEOUT_S)
            except Exception as e:
                if not _is_timeout(e):
                    log.debug("fetch from SPLITS failed: %r", e)
                    await asyncio.sleep(0.5)
                continue
            await self._execute(msgs[0])

    def _request(self, execution: str, wire: dict[str, Any]) -> QueryRequest:
        req = self._requests.get(execution)
        if req is None:
            req = self._requests[execution] = QueryRequest.from_wire(wire)
            while len(self._requests) > 256:
                self._requests.popitem(last=False)
        return req

    async def _execute(self, msg: Any) -> None:
        d = bus.unpack(msg.data)
        execution, tenant, index = d["execution"], d["tenant"], d["index"]
        if execution in self._retired:
            metrics.WORKER_SPLITS.labels("dropped").inc()
            await _settle(msg.ack())
            return
        x = await self.tickets.load_exec(tenant, execution)
        if x is None or not x.is_running or x.stop_requested:
            metrics.WORKER_SPLITS.labels("dropped").inc()
            await _settle(msg.ack())
            return
        deliveries = msg.metadata.num_delivered
        keepalive = asyncio.create_task(_keep_in_progress(msg, self.wcfg.ack_wait_s))
        stats = QueryStats()
        req = self._request(execution, d["request"])
        task = asyncio.create_task(self._execute_split(req, Split(d["start"], d["end"]), stats))
        running = self._running.setdefault(execution, set())
        running.add(task)
        try:
            value = await task
            data = await asyncio.to_thread(encode_split, value)
            await self.split_results.put(d["key"], data)
        except asyncio.CancelledError:
            if self._stopping:
                task.cancel()
                await _settle(msg.nak())
                raise
            metrics.WORKER_SPLITS.labels("cancelled").inc()
            await _settle(msg.ack())  # stopped or cancelled: nobody wants it
            return
        except Exception as e:
            status, message = (e.status, e.message) if isinstance(e, LokiError) else (500, "")
            if not isinstance(e, LokiError):
                log.exception("split failed execution=%s split=%d", execution, index)
                message = f"internal error: {type(e).__name__}"
            if status < 500 or deliveries >= self.wcfg.max_deliver:
                metrics.WORKER_SPLITS.labels("failed").inc()
                if status >= 500:
                    message = f"split failed after {deliveries} attempts: {message}"
                await self.nc.publish(
                    bus.EXEC_SPLIT_DONE.format(id=execution),
                    bus.pack({"index": index, "error": {"status": status, "error": message}}),
                )
                await _settle(msg.term())
            else:
                metrics.WORKER_SPLITS.labels("retried").inc()
                log.warning(
                    "split will be retried execution=%s split=%d err=%r", execution, index, e
                )
                await _settle(msg.nak(delay=self.wcfg.retry_delay_s))
            return
        finally:
            keepalive.cancel()
            running.discard(task)
            if not running:
                self._running.pop(execution, None)
        metrics.WORKER_SPLITS.labels("executed").inc()
        await self.nc.publish(
            bus.EXEC_SPLIT_DONE.format(id=execution),
            bus.pack({"index": index, "stats": stats.to_wire(), "entries": entry_count(value)}),
        )
        await _settle(msg.ack())

    async def _execute_split(self, req: QueryRequest, split: Split, stats: QueryStats) -> Any:
        """One split, with the coprocessors this worker has now (their index and chunk
        hooks run inside)."""
        session = self.frontend.session(req, strict=False)
        with session or contextlib.nullcontext():
            return await self.planner.execute(req, split, stats)

    # ------------------------------------------------------------------ housekeeping

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_EVERY_S * random.uniform(0.5, 1.5))
            try:
                n = await self.tickets.expire()
                if n:
                    log.info("expired tickets removed count=%d", n)
            except Exception as e:  # NATS away: next round
                log.debug("ticket expiry failed: %r", e)


def _is_timeout(e: Exception) -> bool:
    from nats.errors import TimeoutError as NATSTimeoutError

    return isinstance(e, NATSTimeoutError | TimeoutError)


async def _keep_in_progress(msg: Any, ack_wait_s: float) -> None:
    """Tell JetStream the message is still being worked on, so it is not redelivered."""
    while True:
        await asyncio.sleep(max(ack_wait_s / 3, 0.5))
        with contextlib.suppress(Exception):
            await msg.in_progress()


async def _settle(call: Any) -> None:
    """ack/nak/term: best effort - if NATS is away, the message is redelivered anyway."""
    try:
        await call
    except Exception as e:
        log.debug("ack failed: %r", e)
