"""The production topology: compose.yaml against loki_async/topology.py, the role config
files, and the whole topology started as local processes (a 3-node NATS JetStream
cluster, weed mini, a distributor, 3 ingesters at RF=3, a query-frontend, 2 workers).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

import nats
from loki_async import config
from loki_async.errors import ConfigError
from loki_async.topology import (
    COMPOSE,
    DEFAULT_WORKERS,
    NATS_NODES,
    ROLES,
    S3_BUCKET,
    LocalCluster,
    command,
    environment,
    nats_urls,
    services,
)
from tests.conftest import REPO

NS = 10**9
HOUR = 3600 * NS
COMPOSE_FILE = REPO / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """container path → host path of a service's bind mounts."""
    out = {}
    for v in svc.get("volumes", []):
        host, container = v.split(":")[:2]
        out[container] = host
    return out


# --------------------------------------------------------------------------- compose.yaml


def test_every_compose_service_is_in_the_topology_and_back(compose: dict[str, Any]) -> None:
    expected = {s.name for s in services()} | {"s3", "s3-bucket"}
    assert set(compose["services"]) == expected


def test_nats_nodes_run_the_topology_command_with_the_repo_config(
    compose: dict[str, Any],
) -> None:
    for svc in (s for s in services() if s.role == "nats"):
        c = compose["services"][svc.name]
        assert c["command"] == command(svc, COMPOSE)
        host_dir = _mounts(c)[COMPOSE.nats_dir]
        assert (REPO / host_dir / "cluster.conf").is_file()
        assert (REPO / host_dir / "nats-server.conf").is_file()
        assert _mounts(c)["/data"] == svc.name  # a volume of its own
        assert "8222/healthz" in " ".join(c["healthcheck"]["test"])
    routes = command(services()[0], COMPOSE)
    assert routes[routes.index("--routes") + 1].count("nats://") == NATS_NODES


def test_program_services_match_the_topology(compose: dict[str, Any]) -> None:
    for svc in (s for s in services() if s.role != "nats"):
        c = compose["services"][svc.name]
        assert c["command"] == command(svc, COMPOSE), svc.name
        env = {k: str(v) for k, v in c["environment"].items()}
        assert env == environment(svc, COMPOSE), svc.name
        # The role config is mounted from the repository where the command reads it.
        mounts = _mounts(c)
        role_file = f"{COMPOSE.roles_dir}/{svc.role}.yaml"
        assert command(svc, COMPOSE)[0] == f"-config.file={role_file}"
        assert (REPO / mounts[role_file]).resolve() == REPO / "loki_async/roles" / (
            svc.role + ".yaml"
        )
        if "COPROCESSORS_DIR" in env:
            assert (REPO / mounts[env["COPROCESSORS_DIR"]]).resolve() == REPO / "coprocessors"
        check = " ".join(c["healthcheck"]["test"])
        assert f"127.0.0.1:{COMPOSE.port(svc.name, 'http')}/ready" in check
        deps = c["depends_on"]
        assert {f"nats-{i}" for i in range(1, NATS_NODES + 1)} <= set(deps)
        assert deps["s3-bucket"]["condition"] == "service_completed_successfully"
    workers = compose["services"]["querier-worker"]
    assert workers["deploy"]["replicas"] == DEFAULT_WORKERS


def test_s3_server_and_bucket_step_match_the_topology(compose: dict[str, Any]) -> None:
    s3 = compose["services"]["s3"]
    port = urllib.parse.urlsplit(COMPOSE.s3_endpoint).port
    assert s3["command"][0] == "mini"  # the weed mini the local topology runs
    assert f"-s3.port={port}" in s3["command"]
    step = " ".join(compose["services"]["s3-bucket"]["command"])
    assert f"--endpoint-url {COMPOSE.s3_endpoint}" in step
    assert f"--bucket {S3_BUCKET}" in step
    bucket_env = compose["services"]["s3-bucket"]["environment"]
    env = environment(services()[-1], COMPOSE)
    assert bucket_env["AWS_ACCESS_KEY_ID"] == env["S3_ACCESS_KEY_ID"]
    assert bucket_env["AWS_SECRET_ACCESS_KEY"] == env["S3_SECRET_ACCESS_KEY"]


def test_compose_build_installs_the_package_and_keeps_what_the_roles_need(
    compose: dict[str, Any],
) -> None:
    build = compose["services"]["distributor"]["build"]
    assert build["context"] == "."
    recipe = build["dockerfile_inline"]
    for line in recipe.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"compose build copies a missing {src}"
    assert 'ENTRYPOINT ["loki-async"]' in recipe


# --------------------------------------------------------------------------- role configs


@pytest.mark.parametrize("role", ROLES)
def test_role_config_loads_with_the_compose_environment(
    role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = next(s for s in services() if s.role == role)
    for k, v in environment(svc, COMPOSE).items():
        monkeypatch.setenv(k, v)
    cmd = config.parse_args(command(svc, COMPOSE))
    assert cmd.expand_env
    cmd = config.parse_args([f"-config.file={REPO}/loki_async/roles/{role}.yaml",
                             "-config.expand-env=true"])  # fmt: skip
    cfg = config.load(cmd)
    assert cfg.target == role
    assert cfg.nats.url == nats_urls(COMPOSE)
    assert cfg.nats.replicas == 3 and cfg.common.replication_factor == 3
    assert cfg.storage_config.object_store == "s3"
    assert cfg.storage_config.aws.endpoint == COMPOSE.s3_endpoint
    assert cfg.server.http_listen_port == 3100
    if role == "ingester":
        assert cfg.ingester_id == svc.name


def test_expand_env_defaults_escapes_and_reports_every_missing_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LA_PORT", "3200")
    monkeypatch.delenv("LA_MISSING_A", raising=False)
    monkeypatch.delenv("LA_MISSING_B", raising=False)
    text = "a: ${LA_PORT}\nb: ${LA_UNSET_WITH_DEFAULT:-x}\nc: $${LA_PORT}\n"
    assert config.expand_env(text) == "a: 3200\nb: x\nc: ${LA_PORT}\n"
    path = tmp_path / "c.yaml"
    path.write_text("server:\n  http_listen_port: ${LA_MISSING_A}\nnats:\n  url: ${LA_MISSING_B}\n")
    with pytest.raises(ConfigError) as e:
        config.load(config.parse_args([f"-config.file={path}", "-config.expand-env=true"]))
    assert "LA_MISSING_A, LA_MISSING_B" in e.value.message
    # Without the flag the text is taken as it is, as in Loki.
    path.write_text("server:\n  log_level: ${LA_PORT}\n")
    with pytest.raises(ConfigError, match="log_level"):
        config.load(config.parse_args([f"-config.file={path}"]))


# --------------------------------------------------------------------------- local topology


def _http(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _get(base: str, path: str, **params: Any) -> tuple[int, Any]:
    return _http(f"{base}{path}?{urllib.parse.urlencode(params)}")


def _stream_replicas(url: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        nc = await nats.connect(url.split(","))
        try:
            infos = await nc.jetstream().streams_info()
            return {i.config.name: i.config.num_replicas for i in infos}
        finally:
            await nc.close()

    return asyncio.run(read())


@pytest.mark.slow
def test_local_topology_push_sync_and_async_queries_with_coprocessors(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster", workers=2)
    cluster.start()
    try:
        site = cluster.site
        assert site is not None
        # Every JetStream stream and bucket is replicated on the three nodes.
        replicas = _stream_replicas(nats_urls(site))
        assert {"QUERIES", "SPLITS", "KV_tickets", "KV_ring", "OBJ_results"} <= set(replicas)
        assert set(replicas.values()) == {3}, replicas
        status, ring = _get(cluster.frontend_url, "/ring")
        assert status == 200 and ring["replication_factor"] == 3
        assert sorted(i["id"] for i in ring["ingesters"]) == ["ingester-1", "ingester-2",
                                                              "ingester-3"]  # fmt: skip
        assert {i["state"] for i in ring["ingesters"]} == {"ACTIVE"}

        # 48 hours of two streams, one line every 10 minutes; one X-Ray trace 30 h ago.
        now = time.time_ns()
        start = (now - 48 * HOUR) // HOUR * HOUR
        trace_ts = now - 30 * HOUR
        trace = f"1-{trace_ts // NS:08x}-0123456789abcdef01234567"
        streams = []
        for level in ("info", "error"):
            values = []
            for ts in range(start, now - 60 * NS, 600 * NS):
                values.append([str(ts), f"level={level} msg=request path=/cart"])
            values.append([str(trace_ts), f"level={level} msg=checkout trace={trace}"])
            streams.append({"stream": {"app": "shop", "level": level}, "values": values})
        body = json.dumps({"streams": streams}).encode()
        status, _ = _http(f"{cluster.distributor_url}/loki/api/v1/push", body)
        assert status == 204
        lines = sum(len(s["values"]) for s in streams)

        def sync_total() -> float:
            status, out = _get(
                cluster.frontend_url, "/loki/api/v1/query",
                query='sum(count_over_time({app="shop"}[49h]))', time=str(now),
            )  # fmt: skip
            assert status == 200, out
            return float(out["data"]["result"][0]["value"][1])

        assert sync_total() == lines
        # After a flush the same answer comes from S3 through the ingesters' chunks.
        assert _http(f"{cluster.frontend_url}/flush", b"", "POST")[0] == 204
        assert sync_total() == lines

        # An async trace search: the traceid coprocessor skips the splits the trace
        # cannot be in; the result equals the sync answer.
        params = {"query": f'{{app="shop"}} |= "{trace}"', "start": str(start),
                  "end": str(now), "limit": "100"}  # fmt: skip
        status, sync = _get(cluster.frontend_url, "/loki/api/v1/query_range", **params)
        assert status == 200
        assert sum(len(s["values"]) for s in sync["data"]["result"]) == 2
        status, accepted = _get(
            cluster.frontend_url, "/loki/api/v1/query_range", **params, **{"async": "true"}
        )
        assert status == 202, accepted
        ticket = accepted["data"]["ticket"]
        status, result = _get(cluster.frontend_url, f"/loki/api/v1/tickets/{ticket}", wait="60s")
        assert status == 200, result
        assert result["data"]["result"] == sync["data"]["result"]
        status, info = _get(cluster.frontend_url, f"/loki/api/v1/tickets/{ticket}/status")
        assert status == 200, info
        progress = info["data"]["progress"]
        assert progress["splits_total"] >= 48
        assert progress["splits_skipped"] >= progress["splits_total"] - 4, progress
        assert progress["coprocessors"], progress

        # An async aggregation spread over both workers equals the sync one.
        metric = {"query": 'sum by (level) (count_over_time({app="shop"}[1h]))',
                  "start": str(start), "end": str(now), "step": "3600"}  # fmt: skip
        status, sync = _get(cluster.frontend_url, "/loki/api/v1/query_range", **metric)
        assert status == 200
        status, done = _get(
            cluster.frontend_url, "/loki/api/v1/query_range", **metric,
            **{"async": "true", "wait": "60s"},
        )  # fmt: skip
        assert status == 200, done
        assert done["data"]["result"] == sync["data"]["result"]
    finally:
        codes = cluster.stop()
    # Clean teardown: every process exits by itself on SIGTERM, with 0.
    assert codes and all(code == 0 for code in codes.values()), codes
    assert len(codes) == NATS_NODES + 3 + 2 + 2
