"""Modules and targets as data, and the App that starts a target's modules in order.

| module          | depends on              | does                                           |
|-----------------|-------------------------|------------------------------------------------|
| nats            |                         | connection (or embedded nats-server for all)   |
| store           |                         | object store client, chunk and index store     |
| ring            | nats                    | watches ingester membership                    |
| ingester        | nats, store             | WAL, head blocks, chunk flush, in-memory reads |
| distributor     | nats, ring              | push API: validate, rate-limit, replicate      |
| querier         | nats, store, ring       | selects from ingesters and store               |
| query-frontend  | querier                 | read API, async tickets                        |
| querier-worker  | querier                 | runs async queries from JetStream (workers/)   |
| (coprocessors)  |                         | every process: the plugin registry             |
| server          |                         | HTTP: /ready, /metrics, routes of the above    |

Targets: ``all`` = distributor + ingester + query-frontend + querier-worker; ``read`` =
query-frontend + querier-worker; ``write`` = distributor + ingester; any module name runs
that module alone (with its dependencies). ``querier_worker.concurrency: 0`` leaves the
worker out of ``all`` and ``read``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from . import bus
from .api import API
from .config import Config
from .coprocessor_host import Registry
from .distributor import Distributor, NATSIngesterClient, ReplicaRepair
from .frontend import Frontend, SplitResults
from .ingester import Ingester
from .objstore import FilesystemObjectClient, ObjectClient, S3ObjectClient
from .querier import Querier
from .ring import Lifecycler, Ring
from .store import RecentChunks, Store
from .tickets import Tickets
from .wal import WAL
from .worker import QuerierWorker

log = logging.getLogger(__name__)

MODULES: dict[str, list[str]] = {
    "nats": [],
    "store": [],
    "ring": ["nats"],
    "ingester": ["nats", "store"],
    "distributor": ["nats", "ring"],
    "querier": ["nats", "store", "ring"],
    "query-frontend": ["querier"],
    "querier-worker": ["querier"],
}

TARGETS: dict[str, list[str]] = {
    "all": ["distributor", "ingester", "query-frontend", "querier-worker"],
    "read": ["query-frontend", "querier-worker"],
    "write": ["distributor", "ingester"],
    "distributor": ["distributor"],
    "ingester": ["ingester"],
    "query-frontend": ["query-frontend"],
    "querier-worker": ["querier-worker"],
}


def resolve(target: str, *, workers: bool = True) -> list[str]:
    """The modules a target runs, dependencies first; ``workers=False`` leaves the
    querier worker out of composite targets."""
    order: list[str] = []

    def visit(m: str) -> None:
        for dep in MODULES[m]:
            visit(dep)
        if m not in order:
            order.append(m)

    for m in TARGETS[target]:
        if m != "querier-worker" or workers or target == m:
            visit(m)
    return order


def new_object_client(cfg: Config) -> ObjectClient:
    sc = cfg.storage_config
    if sc.object_store == "s3":
        a = sc.aws
        return S3ObjectClient(
            endpoint=a.endpoint,
            bucket=a.bucketnames.split(",")[0].strip(),
            region=a.region,
            access_key_id=a.access_key_id,
            secret_access_key=a.secret_access_key,
            force_path_style=a.s3forcepathstyle,
            insecure=a.insecure,
            max_retries=a.max_retries,
        )
    return FilesystemObjectClient(cfg.chunks_dir)


class App:
    """One process: the modules of ``cfg.target``, started in dependency order."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.modules = resolve(cfg.target, workers=cfg.querier_worker.concurrency > 0)
        self.embedded: bus.EmbeddedNATS | None = None
        self.nc: Any = None
        self.objects: ObjectClient | None = None
        self.ring: Ring | None = None
        self.ingester: Ingester | None = None
        self.distributor: Distributor | None = None
        self.querier: Querier | None = None
        self.worker: QuerierWorker | None = None
        self.coprocessors: Registry | None = None
        self._runner: web.AppRunner | None = None
        self.port = cfg.server.http_listen_port
        self._started = False

    def ready(self) -> bool:
        checks = [self._started, self.nc is not None and self.nc.is_connected]
        if self.ring is not None:
            checks.append(self.ring.ready())
        if self.ingester is not None:
            checks.append(self.ingester.ready())
        if self.worker is not None:
            checks.append(self.worker.ready())
        return all(checks)

    async def start(self) -> None:
        cfg = self.cfg
        # HTTP first, so /ready answers 503 while the WAL replays.
        self.api = API(
            cfg,
            push="distributor" in self.modules,
            read="query-frontend" in self.modules,
            ready=self.ready,
        )
        try:
            await self._start_http()
            await self._start_modules()
        except BaseException:
            await self.stop()
            raise

    async def _start_modules(self) -> None:
        cfg = self.cfg
        if "nats" in self.modules:
            url = cfg.nats.url
            if not url:
                e = cfg.nats.embedded
                self.embedded = bus.EmbeddedNATS(
                    host=e.listen_address,
                    port=e.listen_port,
                    store_dir=cfg.nats_store_dir,
                    config_file=Path(e.config_file) if e.config_file else bus.REPO_NATS_CONFIG,
                )
                await self.embedded.start()
                url = self.embedded.url
            self.nc = await bus.connect(url, f"loki-async-{cfg.target}")
        js = self.nc.jetstream() if self.nc is not None else None
        self.coprocessors = Registry(cfg.coprocessors)
        await self.coprocessors.start()
        self.api.coprocessors = self.coprocessors
        if "store" in self.modules:
            self.objects = new_object_client(cfg)
            await self.objects.start()
            if isinstance(self.objects, S3ObjectClient):
                await self.objects.ensure_bucket()
            self.store = Store(self.objects, cfg.ingester_id)
        if "ring" in self.modules:
            self.ring = Ring(
                js,
                heartbeat_timeout_s=cfg.ingester.lifecycler.heartbeat_timeout_s,
                replication_factor=cfg.common.replication_factor,
                bucket_replicas=cfg.nats.replicas,
            )
            await self.ring.start()
        if "ingester" in self.modules:
            lc = cfg.ingester.lifecycler
            wal = None
            if cfg.ingester.wal.enabled:
                wal = WAL(cfg.wal_dir, cfg.ingester.wal.segment_size_bytes)
            self.ingester = Ingester(
                cfg.ingester,
                store=self.store,
                nc=self.nc,
                wal=wal,
                lifecycler=Lifecycler(
                    js,
                    cfg.ingester_id,
                    num_tokens=lc.num_tokens,
                    heartbeat_period_s=lc.heartbeat_period_s,
                    bucket_replicas=cfg.nats.replicas,
                ),
                coprocessors=self.coprocessors,
                recent=await RecentChunks.open(js, cfg.nats.replicas),
            )
            await self.ingester.start()
        if "distributor" in self.modules:
            assert self.ring is not None, "BUG: distributor without ring"
            ingesters = NATSIngesterClient(self.nc, cfg.nats.request_timeout_s)
            self.distributor = Distributor(
                cfg.limits_config,
                self.ring,
                ingesters,
                self.coprocessors,
                repair=(
                    ReplicaRepair(ingesters, cfg.distributor.replica_repair_max_bytes)
                    if cfg.distributor.replica_repair
                    else None
                ),
            )
            if self.ingester is not None:
                await self.ring.wait_for_healthy(1, 10)
        if "querier" in self.modules:
            assert self.ring is not None, "BUG: querier without ring"
            self.querier = Querier(
                cfg.querier,
                store=self.store,
                ring=self.ring,
                nc=self.nc,
                timeout_s=cfg.nats.request_timeout_s,
            )
        self.api.distributor = self.distributor
        self.api.querier = self.querier
        self.api.ingester = self.ingester
        self.api.ring = self.ring
        if "query-frontend" in self.modules or "querier-worker" in self.modules:
            await self._start_async_queries(js)
        self._started = True
        log.info(
            "started target=%s modules=%s http=%s:%d",
            cfg.target,
            ",".join(self.modules),
            cfg.server.http_listen_address,
            self.port,
        )

    async def _start_async_queries(self, js: Any) -> None:
        """The JetStream resources of async queries, the frontend and the worker."""
        cfg = self.cfg
        assert self.querier is not None, "BUG: async queries without querier"
        res = await bus.ensure_resources(
            js,
            replicas=cfg.nats.replicas,
            max_keep_alive_s=cfg.frontend.async_max_keep_alive_s,
            split_cache_ttl_s=cfg.querier_worker.split_cache_ttl_s,
        )
        split_results = SplitResults(res["split_cache"], self.objects)
        frontend = Frontend(cfg, self.querier, split_results, self.coprocessors)
        tickets = Tickets(
            nc=self.nc,
            js=js,
            kv=res["tickets"],
            results=res["results"],
            objects=self.objects,
            default_keep_alive_s=cfg.frontend.async_default_keep_alive_s,
            max_keep_alive_s=cfg.frontend.async_max_keep_alive_s,
            max_concurrent=cfg.limits_config.max_concurrent_async_queries,
        )
        if "query-frontend" in self.modules:
            self.api.frontend = frontend
            self.api.tickets = tickets
            self.api.split_results = split_results
        if "querier-worker" in self.modules:
            self.worker = QuerierWorker(
                cfg,
                nc=self.nc,
                js=js,
                frontend=frontend,
                tickets=tickets,
                split_results=split_results,
            )
            await self.worker.start()

    async def _start_http(self) -> None:
        # Bodies are decompressed by logproto, under the body size cap (bomb-safe).
        self._runner = web.AppRunner(self.api.app(), access_log=None, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, self.cfg.server.http_listen_address, self.port, reuse_address=True
        )
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Stop in reverse order: HTTP, worker, ingester (flush), ring, store, NATS."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.worker is not None:
            await self.worker.stop()
        if self.distributor is not None and self.distributor.repair is not None:
            await self.distributor.repair.stop()
        if self.ingester is not None:
            await self.ingester.stop()
        if self.ring is not None:
            await self.ring.stop()
        if self.coprocessors is not None:
            await self.coprocessors.stop()
        if self.objects is not None:
            await self.objects.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self.embedded is not None:
            await self.embedded.stop()


async def run(cfg: Config, stop: asyncio.Event) -> None:
    app = App(cfg)
    await app.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await app.stop()
