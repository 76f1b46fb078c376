"""The program's targets and command line, and the S3 backend end to end."""

from __future__ import annotations

import subprocess
import sys
import time

import yaml

from loki_async.logproto import PushStream
from tests.conftest import Loki, base_config
from tests.lokiclient import client, get, push, query_range

NS = 10**9


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loki_async.cli", *args], capture_output=True, text=True, timeout=30
    )


def test_version_and_print_config() -> None:
    out = run_cli("-version")
    assert out.returncode == 0 and out.stdout.startswith("loki-async, version ")
    out = run_cli("-print-config", "-server.http-listen-port=4555", "-ingester.max-chunk-age=3h")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["server"]["http_listen_port"] == 4555
    assert cfg["ingester"]["max_chunk_age"] == "3h"
    assert cfg["limits_config"]["max_line_size"] == "256KB"


def test_bad_config_lists_every_problem_and_exits_nonzero(tmp_path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("server: {http_listen_port: x}\nlimits_config: {nope: 1}\n")
    out = run_cli(f"-config.file={p}")
    assert out.returncode == 1
    assert "server.http_listen_port" in out.stderr and "field nope not found" in out.stderr


def test_help_lists_targets_and_flags() -> None:
    out = run_cli("-help")
    assert out.returncode == 0
    assert "write" in out.stdout and "-ingester.max-chunk-age" in out.stdout


async def test_write_and_read_targets_run_as_separate_processes(tmp_path, nats_server) -> None:
    write_cfg = base_config(tmp_path, nats_url=nats_server.url)
    read_cfg = base_config(tmp_path, nats_url=nats_server.url)
    read_cfg["common"] = write_cfg["common"]  # same filesystem store
    writer = Loki(tmp_path, write_cfg, "write").start()
    reader = Loki(tmp_path, read_cfg, "read").start()
    try:
        now = time.time_ns()
        async with client() as session:
            s = PushStream([("app", "split")], [now], [b"over the bus"], None)
            assert (await push(session, writer.url, [s]))[0] == 204
            got = await query_range(session, reader.url, '{app="split"}', now - NS, now + NS)
            assert got == {"app=split": [(now, "over the bus")]}
            async with session.get(f"{writer.url}/loki/api/v1/query_range") as r:
                assert r.status == 404  # the write target serves no reads
            assert writer.stop() == 0  # flushes to the shared store
            got = await query_range(session, reader.url, '{app="split"}', now - NS, now + NS)
            assert got == {"app=split": [(now, "over the bus")]}
    finally:
        writer.kill()
        reader.kill()


async def test_s3_backend_stores_and_serves_chunks(loki_factory, s3_server) -> None:
    loki = loki_factory(
        storage_config={
            "object_store": "s3",
            "aws": {
                "endpoint": s3_server,
                "bucketnames": "loki-e2e",
                "access_key_id": "any",
                "secret_access_key": "any",
            },
        }
    )
    now = time.time_ns() - 60 * NS
    lines = [f"s3 line {i}".encode() for i in range(3000)]
    async with client() as session:
        s = PushStream([("app", "s3")], [now + i for i in range(3000)], lines, None)
        assert (await push(session, loki.url, [s], "protobuf"))[0] == 204
        assert loki.stop() == 0
        loki.start()
        got = await query_range(session, loki.url, '{app="s3"}', now - NS, now + NS)
        assert [ln for _, ln in got["app=s3"]] == [ln.decode() for ln in lines]


def test_embedded_nats_port_in_use_is_a_clear_startup_error(tmp_path) -> None:
    import socket

    from tests.conftest import free_ports

    http_port, nats_port = free_ports(2)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", nats_port))
        squatter.listen()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "loki_async.cli",
                f"-server.http-listen-port={http_port}",
                f"-nats.embedded.port={nats_port}",
                f"-common.path-prefix={tmp_path}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert f"is port {nats_port} in use?" in out.stderr


async def test_single_module_targets_spread_streams_over_two_ingesters(tmp_path) -> None:
    """distributor, two ingesters and a query-frontend as four processes (RF=1)."""
    from tests.conftest import NATSServer

    nats = NATSServer(tmp_path / "nats")
    chunks = str(tmp_path / "chunks")
    procs = []
    try:
        for i in range(2):
            workdir = tmp_path / f"ing{i}"  # own WAL and logs, shared chunk store
            workdir.mkdir()
            cfg = base_config(
                workdir, nats_url=nats.url, storage_config={"filesystem": {"directory": chunks}}
            )
            procs.append(Loki(workdir, cfg, "ingester").start())
        dist = Loki(tmp_path, base_config(tmp_path, nats_url=nats.url), "distributor").start()
        front = Loki(
            tmp_path,
            base_config(
                tmp_path, nats_url=nats.url, storage_config={"filesystem": {"directory": chunks}}
            ),
            "query-frontend",
        ).start()
        procs += [dist, front]
        now = time.time_ns()
        streams = [
            PushStream([("app", "spread"), ("n", str(i))], [now + i], [b"line %d" % i], None)
            for i in range(40)
        ]
        async with client() as session:
            assert (await push(session, dist.url, streams, "protobuf"))[0] == 204
            got = await query_range(session, front.url, '{app="spread"}', now - NS, now + NS)
            assert len(got) == 40
            # Both ingesters got some of the streams.
            for ing in procs[:2]:
                _, text = await get(session, ing.url, "/metrics")
                assert "loki_ingester_memory_streams " in text
                count = next(
                    float(ln.split()[-1])
                    for ln in text.splitlines()
                    if ln.startswith("loki_ingester_memory_streams ")
                )
                assert 0 < count < 40
            for ing in procs[:2]:
                assert ing.stop() == 0  # graceful: flush, leave the ring
            got = await query_range(session, front.url, '{app="spread"}', now - NS, now + NS)
            assert len(got) == 40
    finally:
        for p in procs:
            p.kill()
        nats.stop()
