"""The production topology as data, and ``loki-async cluster``, which runs it as local
processes on loopback ports.

The topology: a three-node NATS JetStream cluster (every stream and bucket at R3), an S3
server with its bucket, one distributor, three ingesters at replication factor 3, one
query-frontend and N querier workers, each started as
``loki-async -config.file=<role>.yaml -config.expand-env=true`` with the role config
files in ``loki_async/roles/``.

``compose.yaml`` runs the same services in containers. Both take every service's command
line and environment from :func:`command` and :func:`environment`, rendered for a
:class:`Site` (``COMPOSE`` or a :class:`LocalSite`); ``tests/test_topology.py`` checks
compose.yaml against the compose rendering, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .processes import (
    REPO,
    Child,
    free_ports,
    python_command,
    spawn,
    start_weed,
    stop_child,
    wait_port,
    wait_ready,
)

ROLES_DIR = Path(__file__).resolve().parent / "roles"
NATS_DIR = REPO / "nats"
COPROCESSORS_DIR = REPO / "coprocessors"

NATS_NODES = 3
INGESTERS = 3
DEFAULT_WORKERS = 2
S3_BUCKET = "loki"
# `weed mini` accepts any credentials; an S3 server with real ones gets them from the
# operator's environment (compose: S3_ACCESS_KEY_ID / S3_SECRET_ACCESS_KEY in .env).
S3_DEV_ACCESS_KEY_ID = "loki-async"
S3_DEV_SECRET_ACCESS_KEY = "loki-async-secret"

ROLES = ("distributor", "ingester", "query-frontend", "querier-worker")


@dataclass(frozen=True)
class Service:
    """One service of the topology: a nats-server node or a ``loki-async`` role."""

    name: str  # the compose service name; local instances of workers add "-<n>"
    role: str  # "nats" or one of ROLES
    member: int = 0  # nats node / ingester number, 1-based
    replicas: int = 1  # compose deploy.replicas (workers)


def services(workers: int = DEFAULT_WORKERS) -> list[Service]:
    """Every service, in start order."""
    out = [Service(f"nats-{i}", "nats", i) for i in range(1, NATS_NODES + 1)]
    out += [Service(f"ingester-{i}", "ingester", i) for i in range(1, INGESTERS + 1)]
    out += [Service("distributor", "distributor"), Service("query-frontend", "query-frontend")]
    out.append(Service("querier-worker", "querier-worker", replicas=workers))
    return out


# --------------------------------------------------------------------------- sites


@dataclass
class Site:
    """Where the services run. Only addresses, ports and paths differ between sites;
    commands and environments are rendered from them by one function each."""

    listen: str  # address every server binds
    nats_dir: str  # holds cluster.conf (and the nats-server.conf it includes)
    roles_dir: str  # holds the role config files
    coprocessors_dir: str
    s3_endpoint: str

    def host(self, service: str) -> str:
        """The address other services reach ``service`` at."""
        return service

    def port(self, service: str, kind: str) -> int:
        """``kind``: http, client (NATS), cluster (NATS routes), monitor (NATS)."""
        return {"http": 3100, "client": 4222, "cluster": 6222, "monitor": 8222}[kind]

    def data_dir(self, service: str) -> str:
        return "/data"  # each compose service has its own volume there


COMPOSE = Site(
    listen="0.0.0.0",
    nats_dir="/etc/nats",
    roles_dir="/etc/loki-async",
    coprocessors_dir="/etc/loki-async/coprocessors",
    s3_endpoint="http://s3:8333",
)


@dataclass
class LocalSite(Site):
    """Loopback addresses, a port per service and kind, data under ``workdir``."""

    workdir: Path = Path()
    ports: dict[tuple[str, str], int] = field(default_factory=dict)

    def host(self, service: str) -> str:
        return "127.0.0.1"

    def port(self, service: str, kind: str) -> int:
        return self.ports[(service, kind)]

    def data_dir(self, service: str) -> str:
        return str(self.workdir / service)


def local_site(workdir: Path, s3_endpoint: str, workers: int, http_port: int = 0) -> LocalSite:
    """Ports for every service: HTTP from ``http_port`` upwards (query-frontend first,
    then the distributor) or free ones when 0; NATS ports always free ones."""
    names = [s.name for s in services(workers) if s.role != "querier-worker"]
    names += [f"querier-worker-{k}" for k in range(1, workers + 1)]
    http_names = [n for n in names if not n.startswith("nats-")]
    http_names.sort(key=lambda n: {"query-frontend": 0, "distributor": 1}.get(n, 2))
    nats_names = [n for n in names if n.startswith("nats-")]
    kinds = ("client", "cluster", "monitor")
    free = iter(free_ports(len(nats_names) * len(kinds) + (0 if http_port else len(http_names))))
    ports: dict[tuple[str, str], int] = {}
    for n in nats_names:
        for kind in kinds:
            ports[(n, kind)] = next(free)
    for k, n in enumerate(http_names):
        ports[(n, "http")] = http_port + k if http_port else next(free)
    return LocalSite(
        listen="127.0.0.1",
        nats_dir=str(NATS_DIR),
        roles_dir=str(ROLES_DIR),
        coprocessors_dir=str(COPROCESSORS_DIR),
        s3_endpoint=s3_endpoint,
        workdir=workdir,
        ports=ports,
    )


# --------------------------------------------------------------------------- rendering


def nats_urls(site: Site) -> str:
    """The client URLs of every node, comma-separated (the program fails over among them)."""
    return ",".join(
        f"nats://{site.host(f'nats-{i}')}:{site.port(f'nats-{i}', 'client')}"
        for i in range(1, NATS_NODES + 1)
    )


def command(service: Service, site: Site, instance: str = "") -> list[str]:
    """The arguments after the executable (``nats-server`` or ``loki-async``).
    ``instance``: the local name of one worker replica (its ports)."""
    name = instance or service.name
    if service.role == "nats":
        routes = ",".join(
            f"nats://{site.host(f'nats-{i}')}:{site.port(f'nats-{i}', 'cluster')}"
            for i in range(1, NATS_NODES + 1)
        )
        return [
            "-c", f"{site.nats_dir}/cluster.conf",
            "--name", name,
            "-a", site.listen,
            "-p", str(site.port(name, "client")),
            "-m", str(site.port(name, "monitor")),
            "--cluster", f"nats://{site.listen}:{site.port(name, 'cluster')}",
            "--routes", routes,
            "-js",
            "-sd", site.data_dir(name),
        ]  # fmt: skip
    return [f"-config.file={site.roles_dir}/{service.role}.yaml", "-config.expand-env=true"]


def environment(service: Service, site: Site, instance: str = "") -> dict[str, str]:
    """The variables a ``loki-async`` role's config file expands."""
    name = instance or service.name
    env = {
        "HTTP_ADDRESS": site.listen,
        "HTTP_PORT": str(site.port(name, "http")),
        "DATA_DIR": site.data_dir(name),
        "NATS_URL": nats_urls(site),
        "S3_ENDPOINT": site.s3_endpoint,
        "S3_BUCKET": S3_BUCKET,
        "S3_ACCESS_KEY_ID": S3_DEV_ACCESS_KEY_ID,
        "S3_SECRET_ACCESS_KEY": S3_DEV_SECRET_ACCESS_KEY,
    }
    if service.role == "ingester":
        env["INGESTER_ID"] = name
    if service.role in ("query-frontend", "querier-worker"):
        env["COPROCESSORS_DIR"] = site.coprocessors_dir
    return env


# --------------------------------------------------------------------------- local cluster


class LocalCluster:
    """The topology as processes on loopback: ``start`` returns once every service is
    ready, ``stop`` ends them in reverse order and reports any that did not exit 0."""

    def __init__(
        self,
        workdir: Path,
        workers: int = DEFAULT_WORKERS,
        http_port: int = 0,
        extra_flags: dict[str, list[str]] | None = None,
    ) -> None:
        """``extra_flags``: per role, flags appended to the role's command line (tests
        and benchmarks that need, say, short chunk ages; compose has none)."""
        self.workdir = workdir
        self.workers = workers
        self.http_port = http_port
        self.extra_flags = extra_flags or {}
        self.site: LocalSite | None = None
        self.children: dict[str, Child] = {}
        self._commands: dict[str, tuple[list[str], dict[str, str]]] = {}
        self._stop_s3: Callable[..., None] | None = None
        self._s3_port = 0

    @property
    def frontend_url(self) -> str:
        return self.children["query-frontend"].url

    @property
    def distributor_url(self) -> str:
        return self.children["distributor"].url

    def url(self, name: str) -> str:
        return self.children[name].url

    def start(self, log: bool = False) -> None:
        try:
            self._start(log)
        except BaseException:
            self.stop()
            raise

    def _start(self, log: bool) -> None:
        from .bus import nats_server_binary

        self.workdir.mkdir(parents=True, exist_ok=True)
        say = _say if log else (lambda msg: None)
        s3_endpoint, self._stop_s3 = start_weed(self.workdir / "s3")
        self._s3_port = int(s3_endpoint.rsplit(":", 1)[1])
        say(f"s3 (weed mini)        {s3_endpoint}")
        _create_bucket(s3_endpoint)
        site = self.site = local_site(self.workdir, s3_endpoint, self.workers, self.http_port)
        topology = services(self.workers)
        for svc in topology:
            if svc.role == "nats":
                Path(site.data_dir(svc.name)).mkdir(parents=True, exist_ok=True)
                self._spawn(svc.name, [nats_server_binary(), *command(svc, site)], {})
        for svc in topology:
            if svc.role == "nats":
                wait_port(self.children[svc.name], site.port(svc.name, "client"))
                _wait_jetstream(site.port(svc.name, "monitor"))
                say(f"{svc.name:<21} nats://127.0.0.1:{site.port(svc.name, 'client')}")
        say("JetStream cluster formed")
        # The program's processes start together and get ready in any order.
        started: list[str] = []
        for svc in topology:
            if svc.role == "nats":
                continue
            names = [svc.name] if svc.replicas == 1 else [
                f"{svc.name}-{k}" for k in range(1, svc.replicas + 1)
            ]
            for name in names:
                cmd = python_command(*command(svc, site), *self.extra_flags.get(svc.role, []))
                self._spawn(name, cmd, environment(svc, site, name))
                started.append(name)
        for name in started:
            wait_ready(self.children[name], timeout=120)
            say(f"{name:<21} {self.children[name].url}")

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Child:
        child = spawn(name, cmd, self.workdir, dict(env))
        if "HTTP_PORT" in env:
            child.url = f"http://127.0.0.1:{env['HTTP_PORT']}"
        self.children[name] = child
        self._commands[name] = (cmd, env)
        return child

    def kill(self, name: str) -> None:
        """``kill -9`` one service (``s3`` for the S3 server): no flush, no goodbye."""
        if name == "s3":
            assert self._stop_s3 is not None, "BUG: cluster not started"
            self._stop_s3(kill=True)
            return
        child = self.children[name]
        child.proc.kill()
        child.proc.wait(10)
        child.log.close()

    def restart(self, name: str, wait: bool = True) -> None:
        """Start a killed or stopped service again with its command line and environment
        (same ports, same data: an ingester replays its WAL)."""
        if name == "s3":
            _, self._stop_s3 = start_weed(self.workdir / "s3", self._s3_port)
            return
        cmd, env = self._commands[name]
        child = self._spawn(name, cmd, env)
        if not wait:
            return
        if name.startswith("nats-"):
            assert self.site is not None
            wait_port(child, self.site.port(name, "client"))
            _wait_jetstream(self.site.port(name, "monitor"))
        else:
            wait_ready(child, timeout=120)

    def stop(self) -> dict[str, int | None]:
        """Stop everything (SIGTERM, the program's processes first); return the exit
        code of each process."""
        codes: dict[str, int | None] = {}
        for name in reversed(list(self.children)):
            child = self.children[name]
            stop_child(child, timeout=60)
            codes[name] = child.proc.returncode
        self.children.clear()
        if self._stop_s3 is not None:
            self._stop_s3()
            self._stop_s3 = None
        return codes


def _say(msg: str) -> None:
    print(f"[cluster {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _wait_jetstream(monitor_port: int, timeout: float = 30) -> None:
    """Until the node's JetStream is up (its /healthz answers 200)."""
    url = f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nats-server JetStream not healthy at {url}")
        time.sleep(0.1)


def _create_bucket(endpoint: str) -> None:
    """The bucket step of compose.yaml (``s3-bucket``), with the program's S3 client."""
    from .objstore import S3ObjectClient

    async def create() -> None:
        client = S3ObjectClient(
            endpoint=endpoint,
            bucket=S3_BUCKET,
            access_key_id=S3_DEV_ACCESS_KEY_ID,
            secret_access_key=S3_DEV_SECRET_ACCESS_KEY,
        )
        await client.start()
        try:
            await client.ensure_bucket()
        finally:
            await client.stop()

    asyncio.run(create())


# --------------------------------------------------------------------------- command


def main(argv: list[str]) -> int:
    """``loki-async cluster``: run the topology locally until Ctrl-C."""
    p = argparse.ArgumentParser(
        prog="loki-async cluster",
        description="Run the production topology as local processes: a 3-node NATS "
        "JetStream cluster, an S3 server (weed mini), a distributor, 3 ingesters (RF=3), "
        "a query-frontend and querier workers — the services of compose.yaml, no Docker.",
    )
    p.add_argument("--dir", default="./cluster-data", help="data and logs (default: %(default)s)")
    p.add_argument(
        "--port",
        type=int,
        default=3100,
        help="HTTP port of the query-frontend; the distributor, ingesters and workers "
        "take the ports after it (default: %(default)s; 0: free ports)",
    )
    p.add_argument("--workers", type=int, default=DEFAULT_WORKERS, help="querier workers")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    cluster = LocalCluster(Path(args.dir).resolve(), args.workers, args.port)
    try:
        cluster.start(log=True)
    except (RuntimeError, TimeoutError, OSError) as e:
        print(f"loki-async cluster: {e}", file=sys.stderr)
        return 1
    _say(
        f"ready: query at {cluster.frontend_url} (console {cluster.frontend_url}/ui), "
        f"push to {cluster.distributor_url}/loki/api/v1/push; logs in {cluster.workdir}; "
        "Ctrl-C stops"
    )
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(wait())
    codes = cluster.stop()
    failed = {n: c for n, c in codes.items() if c not in (0, None)}
    if failed:
        _say(f"stopped; exit codes other than 0: {failed}")
        return 1
    _say("stopped")
    return 0
