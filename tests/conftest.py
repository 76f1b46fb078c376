"""Real-server fixtures: nats-server on a free port, weed mini (S3), and the program itself.

Integration tests start ``loki-async -target=...`` as a child process with a config file
on free loopback ports and poll ``/ready``, exactly as an operator would run it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from loki_async.bench import loghub_lines  # noqa: F401  (shared with the tests)
from loki_async.bus import nats_server_binary
from loki_async.processes import free_port
from tests.s3server import free_ports, s3_server  # noqa: F401  (session fixture)

REPO = Path(__file__).resolve().parents[1]


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} did not open")


class NATSServer:
    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.start()

    def start(self) -> None:
        """Start (again, after stop: same port, same store)."""
        self.proc = subprocess.Popen(
            [
                nats_server_binary(),
                "-c",
                str(REPO / "nats" / "nats-server.conf"),
                "-js",
                "-sd",
                str(self.store),
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NATSServer]:
    server = NATSServer(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


class Loki:
    """The real program as a child process."""

    def __init__(
        self, workdir: Path, config: dict, target: str = "all", extra_args: list[str] | None = None
    ) -> None:
        self.workdir = workdir
        self.config = config
        self.target = target
        self.extra_args = extra_args or []
        self.port = config["server"]["http_listen_port"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"loki-{target}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> Loki:
        cfg_path = self.workdir / f"config-{self.target}.yaml"
        cfg_path.write_text(yaml.safe_dump(self.config))
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loki_async.cli",
                f"-config.file={cfg_path}",
                f"-target={self.target}",
                *self.extra_args,
            ],
            cwd=self.workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait_ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"loki-async exited with {self.proc.returncode}:\n{self.logs()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"loki-async not ready after {timeout}s:\n{self.logs()[-3000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        finally:
            self._log.close()
        self.proc = None
        return code

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        if self.proc is None:
            return
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()
        self.proc = None


def base_config(workdir: Path, nats_url: str = "", **overrides: dict) -> dict:
    """A config for one test instance: own ports, own data dir, generous limits."""
    http_port, nats_port, id_port = free_ports(3)  # distinct, unlike three free_port() calls
    cfg: dict = {
        "server": {"http_listen_port": http_port, "log_level": "info"},
        "common": {"path_prefix": str(workdir / "data")},
        "limits_config": {
            "reject_old_samples": True,
            "ingestion_rate_mb": 1024,
            "ingestion_burst_size_mb": 1024,
            "max_entries_limit_per_query": 100000,
        },
        "ingester": {"lifecycler": {"ID": f"ingester-{id_port}"}, "flush_check_period": "1s"},
        "nats": {"url": nats_url} if nats_url else {"embedded": {"listen_port": nats_port}},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


@pytest.fixture
def loki_factory(tmp_path: Path) -> Iterator[Callable[..., Loki]]:
    """Start real loki-async processes; all are killed at the end of the test."""
    started: list[Loki] = []

    def make(
        config: dict | None = None, target: str = "all", start: bool = True, **overrides: dict
    ) -> Loki:
        cfg = config or base_config(tmp_path, **overrides)
        inst = Loki(tmp_path, cfg, target)
        started.append(inst)
        if start:
            inst.start()
        return inst

    yield make
    for inst in started:
        if inst.proc is not None:
            inst.kill()
