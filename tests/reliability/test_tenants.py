"""Tenant isolation and HTTP authentication, against the real program.

With ``auth_enabled: true``, tenant A pushes lines, labels and OTLP attributes that hold
a unique marker, runs sync and async queries (filling the split cache) and keeps
tickets. Every route the API registers - listed from the aiohttp router itself, so a
route added without a case here fails the test - is then called three ways: without
``X-Scope-OrgID`` (401 "no org id", except the tenant-less routes), as A (who sees the
marker: the call can show a leak) and as B (who never does, and gets 404 for A's
tickets). The split cache, coalescing and Idempotency-Key are checked with identical
requests from both tenants. Tenant IDs follow Loki's rules; ticket ids are 128 random
bits. With ``server.basic_auth_*`` / ``bearer_token_file`` every route but ``/ready``
and ``/metrics`` needs the credentials, which never reach the log.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import re
import secrets
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from loki_async.api import API, OPEN_PATHS, UI_DIR
from loki_async.config import Config, load_yaml_text
from loki_async.errors import ConfigError
from loki_async.logproto import PushStream, encode_push_json
from loki_async.tickets import new_id
from tests.conftest import Loki, base_config
from tests.lokiclient import client
from tests.reliability.scale import scaled

pytestmark = pytest.mark.reliability

NS = 10**9
MIN = 60 * NS
HOUR = 60 * MIN
DAY = 24 * HOUR
A, B = "team-a", "team-b"
MARK = "mk" + secrets.token_hex(8)  # in A's lines, a label name and value, an OTLP service
SELECTOR = '{app="shared"}'
TICKETS = "/loki/api/v1/tickets"
TICKET_RE = re.compile(r"[0-9a-f]{32}")
PUSH = "/loki/api/v1/push"
JSON = {"Content-Type": "application/json"}
# Routes that need no tenant, as in Loki: health, metrics, build info, ring and flush
# (operations on the whole process), format_query (no data) and the console's files.
TENANTLESS = {
    "/ready",
    "/metrics",
    "/loki/api/v1/status/buildinfo",
    "/flush",
    "/ring",
    "/loki/api/v1/format_query",
    "/ui",
    "/ui/",
    "/ui/{name}",
}


def registered_routes() -> list[tuple[str, str]]:
    """Every (method, path template) the program serves, from its own router."""
    api = API(Config(auth_enabled=True), push=True, read=True, ready=lambda: True)
    return sorted({(r.method, r.resource.canonical) for r in api.app().router.routes()})


# --------------------------------------------------------------------------- HTTP


async def request(
    url: str,
    method: str,
    path: str,
    tenant: str | None = None,
    params: dict[str, str] | None = None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, Any]:
    """(status, body text, headers); redirects are not followed."""
    hdrs = dict(headers or {})
    if tenant is not None:
        hdrs["X-Scope-OrgID"] = tenant
    async with (
        client() as s,
        s.request(
            method, url + path, params=params, data=body, headers=hdrs, allow_redirects=False
        ) as r,
    ):
        return r.status, (await r.read()).decode(errors="replace"), r.headers


async def tail_first(
    url: str, tenant: str | None, headers: dict[str, str] | None = None, read: bool = True
) -> tuple[int, str]:
    """Open the tail WebSocket and read its first message (unless ``read`` is false):
    (101, text), or the handshake's status and ""."""
    hdrs = dict(headers or {})
    if tenant is not None:
        hdrs["X-Scope-OrgID"] = tenant
    async with client() as s:
        try:
            ws = await s.ws_connect(
                url + "/loki/api/v1/tail",
                params={"query": SELECTOR, "delay_for": "0"},
                headers=hdrs,
            )
        except aiohttp.WSServerHandshakeError as e:
            return e.status, ""
        async with ws:
            if not read:
                return 101, ""
            msg = await ws.receive(timeout=10)
            return 101, msg.data if msg.type == aiohttp.WSMsgType.TEXT else ""


async def raw_request(port: int, head: bytes) -> tuple[int, bytes]:
    """Send request bytes as they are (paths and headers no client would normalize)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


def push_body(labels: list[tuple[str, str]], entries: list[tuple[int, str]]) -> bytes:
    return encode_push_json(
        [PushStream(labels, [t for t, _ in entries], [line.encode() for _, line in entries], None)]
    )


def otlp_body(service: str, line: str, ts: int) -> bytes:
    return orjson.dumps(
        {
            "resourceLogs": [
                {
                    "resource": {
                        "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                    },
                    "scopeLogs": [
                        {"logRecords": [{"timeUnixNano": str(ts), "body": {"stringValue": line}}]}
                    ],
                }
            ]
        }
    )


async def wait_result(url: str, tenant: str, ticket: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status, body, _ = await request(url, "GET", f"{TICKETS}/{ticket}", tenant, {"wait": "10s"})
        if status == 200:
            return body
        assert status == 204, body
    raise AssertionError(f"ticket {ticket} not done")


async def submit(
    url: str, tenant: str, params: dict[str, str], headers: dict[str, str] | None = None
) -> str:
    status, body, _ = await request(
        url, "GET", "/loki/api/v1/query_range", tenant, {**params, "async": "true"}, None, headers
    )
    assert status == 202, body
    ticket = orjson.loads(body)["data"]["ticket"]
    assert TICKET_RE.fullmatch(ticket)
    return ticket


async def execution_of(url: str, tenant: str, ticket: str) -> dict[str, Any]:
    status, body, _ = await request(url, "GET", f"{TICKETS}/{ticket}/status", tenant)
    assert status == 200, body
    return orjson.loads(body)["data"]


# --------------------------------------------------------------------------- the world


@dataclass
class World:
    loki: Loki
    now: int
    log_params: dict[str, str]  # A's and B's identical async log query
    a_ticket: str = ""  # A's async log query: its result holds the marker
    b_ticket: str = ""  # B's, with exactly the same request
    a_tickets: set[str] = field(default_factory=set)  # every ticket A was given

    @property
    def url(self) -> str:
        return self.loki.url


def _entries(start: int, end: int, every: int, fmt: str) -> list[tuple[int, str]]:
    return [(t, fmt.format(n=i)) for i, t in enumerate(range(start, end, every))]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    workdir = tmp_path_factory.mktemp("tenants")
    cfg = base_config(
        workdir,
        auth_enabled=True,
        limits_config={"reject_old_samples": False, "max_query_length": "31d"},
        querier_worker={"concurrency": 2},
    )
    loki = Loki(workdir, cfg).start()
    now = time.time_ns()
    a_labels = [("app", "shared"), ("secret", MARK), (MARK, "x")]
    b_labels = [("app", "shared"), ("owner", "b")]

    async def load() -> World:
        # Two days in the store (flushed), the last half hour in the ingesters.
        for first, last, every, flush in (
            (now - 2 * DAY, now - HOUR, 20 * MIN, True),
            (now - 30 * MIN, now - MIN, 5 * MIN, False),
        ):
            for tenant, labels, word in ((A, a_labels, MARK), (B, b_labels, "bline")):
                entries = _entries(first, last, every, word + " n={n}")
                status, text, _ = await request(
                    loki.url, "POST", PUSH, tenant, body=push_body(labels, entries), headers=JSON
                )
                assert status == 204, text
            if flush:
                status, text, _ = await request(loki.url, "POST", "/flush")
                assert status == 204, text
        status, text, _ = await request(
            loki.url,
            "POST",
            "/otlp/v1/logs",
            A,
            body=otlp_body("svc-" + MARK, MARK + " via otlp", now - 10 * MIN),
            headers=JSON,
        )
        assert status == 200, text
        log_params = {
            "query": SELECTOR,
            "start": str(now - 2 * DAY),
            "end": str(now),
            "limit": "1000",
        }
        w = World(loki, now, log_params)
        w.a_ticket = await submit(loki.url, A, log_params)
        w.a_tickets.add(w.a_ticket)
        assert MARK in await wait_result(loki.url, A, w.a_ticket)
        w.b_ticket = await submit(loki.url, B, log_params)
        b_result = await wait_result(loki.url, B, w.b_ticket)
        assert MARK not in b_result and "bline" in b_result
        return w

    try:
        yield asyncio.run(load())
    finally:
        loki.stop()


# --------------------------------------------------------------------------- every route


@dataclass
class Case:
    """How to call one route, and what A's answer shows of A's data."""

    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # A's answer shows A's data (None: the route answers no tenant data).
    a_sees: Callable[[str], bool] | None = None
    # B's answer shows B's own data (None: not checked).
    b_sees: Callable[[str], bool] | None = None
    # The path names A's ticket: B must get 404, and B's own ticket is tried too.
    ticket: bool = False


def cases(w: World) -> dict[tuple[str, str], Case]:
    """One case per (method, path template) the program serves."""
    marked: Callable[[str], bool] = lambda text: MARK in text  # noqa: E731
    b_lines: Callable[[str], bool] = lambda text: "bline" in text  # noqa: E731
    # A and B have one stream each, with as many entries: a leak doubles the figures.
    one_stream: Callable[[str], bool] = lambda text: orjson.loads(text)["streams"] == 1  # noqa: E731
    since = {"start": str(w.now - 2 * DAY), "end": str(w.now)}
    pushed = push_body([("app", "pushed")], [(w.now - 2 * MIN, "pushed twice")])
    out: dict[tuple[str, str], Case] = {
        ("GET", "/ready"): Case("/ready"),
        ("GET", "/metrics"): Case("/metrics"),
        ("GET", "/loki/api/v1/status/buildinfo"): Case("/loki/api/v1/status/buildinfo"),
        ("POST", PUSH): Case(PUSH, body=pushed, headers=JSON),
        ("POST", "/otlp/v1/logs"): Case(
            "/otlp/v1/logs", body=otlp_body("otlp-pushed", "otlp twice", w.now), headers=JSON
        ),
        ("GET", "/flush"): Case("/flush"),
        ("POST", "/flush"): Case("/flush"),
        ("GET", "/ring"): Case("/ring"),
        ("POST", "/ring"): Case("/ring", params={"forget": "no-such-ingester"}),
        ("GET", "/loki/api/v1/tail"): Case("/loki/api/v1/tail", a_sees=marked, b_sees=b_lines),
        ("GET", "/ui"): Case("/ui"),
        ("GET", "/ui/"): Case("/ui/"),
        ("GET", "/ui/{name}"): Case("/ui/app.js"),
        ("GET", "/coprocessor/v1/plugins"): Case(
            "/coprocessor/v1/plugins", a_sees=lambda t: "patterns" in t
        ),
        ("POST", "/coprocessor/v1/{name}"): Case(
            "/coprocessor/v1/patterns",
            body=orjson.dumps({"query": SELECTOR, "start": w.now - 2 * DAY, "end": w.now}),
            a_sees=marked,
            b_sees=b_lines,
        ),
        ("GET", TICKETS): Case(TICKETS, a_sees=lambda t: w.a_ticket in t),
    }
    tickets = {
        ("GET", TICKETS + "/{id}"): marked,
        ("GET", TICKETS + "/{id}/status"): lambda t: w.a_ticket in t,
        ("GET", TICKETS + "/{id}/partial"): marked,
        ("POST", TICKETS + "/{id}/stop"): lambda t: w.a_ticket in t,
        ("DELETE", TICKETS + "/{id}"): None,  # A keeps its ticket: not called as A
    }
    for (method, template), sees in tickets.items():
        path = template.replace("{id}", w.a_ticket)
        out[(method, template)] = Case(path, a_sees=sees, ticket=True)
    reads: dict[str, Case] = {
        "/loki/api/v1/query": Case(
            "", {"query": 'sum by (secret) (count_over_time({app="shared"}[1d]))'}, a_sees=marked
        ),
        "/loki/api/v1/query_range": Case(
            "", {"query": SELECTOR, **since}, a_sees=marked, b_sees=b_lines
        ),
        "/loki/api/v1/labels": Case("", a_sees=marked),
        "/loki/api/v1/label": Case("", a_sees=marked),
        "/loki/api/v1/label/{name}/values": Case("", a_sees=marked),
        "/loki/api/v1/series": Case("", {"match[]": SELECTOR, **since}, a_sees=marked),
        "/loki/api/v1/index/stats": Case(
            "", {"query": SELECTOR, **since}, a_sees=one_stream, b_sees=one_stream
        ),
        "/loki/api/v1/index/volume": Case(
            "", {"query": SELECTOR, "targetLabels": "secret", **since}, a_sees=marked
        ),
        "/loki/api/v1/index/volume_range": Case(
            "", {"query": SELECTOR, "targetLabels": "secret", "step": "1h", **since}, a_sees=marked
        ),
        "/loki/api/v1/detected_labels": Case("", {"query": SELECTOR, **since}, a_sees=marked),
        "/loki/api/v1/format_query": Case("", {"query": SELECTOR}),
    }
    for template, case in reads.items():
        case.path = template.replace("{name}", "secret")
        out[("GET", template)] = case
        # POST sends the parameters as a form, as Grafana does for long queries.
        out[("POST", template)] = Case(
            case.path,
            body=urllib.parse.urlencode(case.params).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            a_sees=case.a_sees,
            b_sees=case.b_sees,
        )
    return out


async def call(
    w: World, method: str, case: Case, tenant: str | None, path: str = ""
) -> tuple[int, str]:
    if case.path == "/loki/api/v1/tail" and method == "GET":
        return await tail_first(w.url, tenant)
    status, body, _ = await request(
        w.url, method, path or case.path, tenant, case.params, case.body, case.headers
    )
    return status, body


def test_every_route_has_an_isolation_case(world: World) -> None:
    """A route added to the API without a case here fails: its isolation is unchecked."""
    routes = {(m, p) for m, p in registered_routes() if m != "HEAD"}
    known = set(cases(world))
    assert routes - known == set(), "routes without a tenant isolation case"
    assert known - routes == set(), "cases for routes that no longer exist"
    assert {p for _, p in routes} >= TENANTLESS


async def test_without_org_id_every_tenant_route_is_401(world: World) -> None:
    table = cases(world)
    for method, template in registered_routes():
        case = table[("GET" if method == "HEAD" else method, template)]
        # Plain HTTP for the tail too: its 401 comes before the WebSocket handshake.
        status, body, _ = await request(
            world.url, method, case.path, None, case.params, case.body, case.headers
        )
        where = f"{method} {template}: {status} {body[:200]}"
        if template in TENANTLESS:
            assert status < 500 and status != 401, where
        else:
            assert status == 401, where
            assert method == "HEAD" or "no org id" in body, where
        assert MARK not in body, where


async def test_tenant_b_never_sees_tenant_a(world: World) -> None:
    """As A each data route shows A's marker; as B none does, on any route, and A's
    tickets are 404 - while B's own ticket for the very same request answers."""
    table = cases(world)
    for (method, template), case in table.items():
        where = f"{method} {template}"
        if case.a_sees is not None:
            status, body = await call(world, method, case, A)
            assert status in (101, 200), f"{where} as A: {status} {body[:300]}"
            assert case.a_sees(body), f"{where} as A shows nothing of A: {body[:300]}"
        status, body = await call(world, method, case, B)
        # A 404 names the ticket B asked for: that is B's own input, not a leak.
        leaked = [t for t in world.a_tickets if t in body.replace(f"ticket {world.a_ticket} ", "")]
        assert MARK not in body and not leaked, f"{where} as B leaks A: {body[:500]}"
        if case.ticket:
            assert status == 404, f"{where} as B: {status} {body[:200]}"
            if method != "DELETE":
                own = case.path.replace(world.a_ticket, world.b_ticket)
                status, body = await call(world, method, case, B, own)
                assert status == 200 and (world.b_ticket in body or "bline" in body), where
                assert MARK not in body, f"{where} for B's own ticket leaks A: {body[:500]}"
        else:
            assert status < 500, f"{where} as B: {status} {body[:300]}"
        if case.b_sees is not None:
            assert case.b_sees(body), f"{where} as B shows nothing of B: {body[:300]}"
    # A's ticket survived B's DELETE and stop.
    assert MARK in await wait_result(world.url, A, world.a_ticket)


async def test_identical_pushes_from_two_tenants_stay_apart(world: World) -> None:
    """The push cases above sent one body as A and as B (and once without a tenant):
    each tenant has its own copy, nothing landed elsewhere."""
    table = cases(world)
    for method, template in (("POST", PUSH), ("POST", "/otlp/v1/logs")):
        for tenant in (A, B, None):
            await call(world, method, table[(method, template)], tenant)
    for tenant in (A, B):
        for selector, line in (
            ('{app="pushed"}', "pushed twice"),
            ('{service_name="otlp-pushed"}', "otlp twice"),
        ):
            status, body, _ = await request(
                world.url,
                "GET",
                "/loki/api/v1/query_range",
                tenant,
                {"query": selector, "since": "1h"},
            )
            assert status == 200, body
            values = [v for s in orjson.loads(body)["data"]["result"] for v in s["values"]]
            assert [v[1] for v in values] == [line], (tenant, selector, values)
    status, body, _ = await request(world.url, "GET", "/loki/api/v1/labels", B)
    assert MARK not in body and "secret" not in body


# --------------------------------------------------------------------------- shared state


async def test_split_cache_is_per_tenant(world: World) -> None:
    """A's cached splits are never B's answer to the identical query, sync or async."""
    now = world.now
    params = {
        "query": 'sum by (secret) (count_over_time({app="shared"}[1h]))',
        "start": str(now - 2 * DAY),
        "end": str(now - 2 * HOUR),
        "step": "1h",
    }

    async def sync(tenant: str) -> dict[str, Any]:
        status, body, _ = await request(
            world.url, "GET", "/loki/api/v1/query_range", tenant, params
        )
        assert status == 200, body
        return orjson.loads(body)

    await sync(A)
    warm = await sync(A)
    assert MARK in orjson.dumps(warm).decode()
    assert warm["data"]["stats"]["cache"]["result"]["entriesFound"] > 0  # the cache is in use
    a_async = await submit(world.url, A, params)
    world.a_tickets.add(a_async)
    assert MARK in await wait_result(world.url, A, a_async)
    assert (await execution_of(world.url, A, a_async))["progress"]["splits_cached"] > 0

    b_async = await submit(world.url, B, params)
    body = await wait_result(world.url, B, b_async)
    assert MARK not in body and orjson.loads(body)["data"]["result"], body
    assert (await execution_of(world.url, B, b_async))["progress"]["splits_cached"] == 0
    cold = await sync(B)
    assert MARK not in orjson.dumps(cold).decode()
    assert cold["data"]["result"] == orjson.loads(body)["data"]["result"]


async def test_coalescing_and_idempotency_keys_are_per_tenant(world: World) -> None:
    """B's request identical to A's in-flight one runs on its own; B using A's
    Idempotency-Key gets its own ticket."""
    now = world.now
    params = {
        "query": 'count_over_time({app="shared"} |= "n" [1h])',
        "start": str(now - scaled(7, 30) * DAY),
        "end": str(now),
        "step": "1h",
    }
    no_cache = {"Cache-Control": "no-cache"}
    a1 = await submit(world.url, A, params, no_cache)
    b1 = await submit(world.url, B, params, no_cache)
    a1_running = (await execution_of(world.url, A, a1))["is_running"]
    a2 = await submit(world.url, A, params, no_cache)
    world.a_tickets |= {a1, a2}
    x_a1 = (await execution_of(world.url, A, a1))["execution"]
    x_b1 = (await execution_of(world.url, B, b1))["execution"]
    assert x_b1 != x_a1
    if a1_running:  # the check can see sharing: A's own identical query does share
        assert (await execution_of(world.url, A, a2))["execution"] == x_a1
    body = await wait_result(world.url, B, b1)
    assert MARK not in body and orjson.loads(body)["data"]["result"]
    for t in (a1, a2):
        await request(world.url, "DELETE", f"{TICKETS}/{t}", A)

    key = {"Idempotency-Key": "nightly-" + secrets.token_hex(4)}
    a_key = await submit(world.url, A, world.log_params, key)
    world.a_tickets.add(a_key)
    assert await submit(world.url, A, world.log_params, key) == a_key
    b_key = await submit(world.url, B, world.log_params, key)
    assert b_key != a_key
    assert await submit(world.url, A, world.log_params, key) == a_key  # still A's own
    body = await wait_result(world.url, B, b_key)
    assert MARK not in body and "bline" in body


async def test_undecodable_idempotency_key_is_not_a_server_error(world: World) -> None:
    query = "query=%7Bapp%3D%22shared%22%7D&async=true"
    status, data = await raw_request(
        world.loki.port,
        f"GET /loki/api/v1/query_range?{query} HTTP/1.1\r\nHost: x\r\n".encode()
        + b"X-Scope-OrgID: team-b\r\nIdempotency-Key: k\xff\xfe\r\nConnection: close\r\n\r\n",
    )
    assert status == 202, data


# --------------------------------------------------------------------------- tenant IDs


async def test_valid_tenant_ids_by_loki_rules_push_flush_and_read(world: World) -> None:
    """Every character Loki allows, 150 of them, and names that look like paths or the
    filesystem store's temporary files: each stays in its own directory."""
    tenants = ["a.b", "!-_.*'()", "x" * 150, ".tmp-evil", "...", "Team_9"]
    now = time.time_ns()
    body = push_body([("job", "ids")], [(now - MIN, "odd tenant")])
    for tenant in tenants:
        status, text, _ = await request(
            world.url,
            "POST",
            PUSH,
            tenant,
            body=body,
            headers=JSON,
        )
        assert status == 204, (tenant, text)
    status, text, _ = await request(world.url, "POST", "/flush")
    assert status == 204, text  # was 503: ".tmp-evil/chunks/..." was an invalid object key
    for tenant in tenants:
        status, text, _ = await request(
            world.url, "GET", "/loki/api/v1/query_range", tenant, {"query": '{job="ids"}'}
        )
        assert status == 200 and "odd tenant" in text, (tenant, text)
    chunks = Path(world.loki.config["common"]["path_prefix"]) / "chunks"
    top = {p.name for p in chunks.iterdir()}
    assert set(tenants) <= top <= {*tenants, A, B}
    data = chunks.parent
    assert {p.name for p in data.iterdir()} <= {"chunks", "wal", "nats"}


@pytest.mark.parametrize(
    ("tenant", "message"),
    [
        ("x" * 151, "tenant ID is too long: max 150 characters"),
        ("a b", "tenant ID 'a b' contains unsupported character ' '"),
        ("a|b", "tenant ID 'a|b' contains unsupported character '|'"),
        ("../etc", "tenant ID '../etc' contains unsupported character '/'"),
        ("a\\b", "contains unsupported character '\\'"),
        ("%2e%2e", "contains unsupported character '%'"),
        ("a:b", "contains unsupported character ':'"),
        (".", "tenant ID is '.' or '..'"),
        ("..", "tenant ID is '.' or '..'"),
    ],
)
async def test_invalid_tenant_id_is_400_with_lokis_message(
    world: World, tenant: str, message: str
) -> None:
    for method, path in (("GET", "/loki/api/v1/labels"), ("POST", PUSH)):
        status, text, _ = await request(world.url, method, path, tenant, body=b"{}")
        assert status == 400 and message in text, (method, tenant, status, text)


async def test_tenant_id_bytes_outside_ascii_are_400(world: World) -> None:
    """UTF-8 or not (before: "café" was a tenant, and "a\\xffb" a 503 from the ingester,
    which could not encode it)."""
    for tenant in ("caf\u00e9".encode(), b"a\xffb"):
        status, data = await raw_request(
            world.loki.port,
            b"GET /loki/api/v1/labels HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: "
            + tenant
            + b"\r\nConnection: close\r\n\r\n",
        )
        assert status == 400 and b"contains unsupported character" in data, data


# --------------------------------------------------------------------------- ticket ids


def test_ticket_ids_are_128_random_bits() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert all(TICKET_RE.fullmatch(t) for t in ids)
    assert len(set(ids)) == len(ids)
    # Every one of the 128 bits is set in about half the ids (binomial: sd 50 of 10,000).
    values = [int(t, 16) for t in ids]
    for bit in range(128):
        ones = sum(v >> bit & 1 for v in values)
        assert 4700 < ones < 5300, (bit, ones)
    # Not from Python's seeded PRNG: reseeding it repeats nothing (nor from the clock: the
    # 10,000 above came within milliseconds).
    random.seed(7)
    first = [new_id() for _ in range(8)]
    random.seed(7)
    assert not set(first) & {new_id() for _ in range(8)}


def test_server_ticket_ids_are_distinct_and_well_formed(world: World) -> None:
    ids = [*world.a_tickets, world.b_ticket]
    assert all(TICKET_RE.fullmatch(t) for t in ids) and len(set(ids)) == len(ids)


# --------------------------------------------------------------------------- HTTP auth


@dataclass
class AuthServer:
    loki: Loki
    user: str
    password: str
    token: str
    workdir: Path

    def basic(self, user: str = "", password: str = "") -> dict[str, str]:
        creds = f"{user or self.user}:{password or self.password}".encode()
        return {"Authorization": "Basic " + base64.b64encode(creds).decode()}

    def bearer(self, token: str = "") -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}"}


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """A single-tenant install (auth_enabled: false) behind basic auth and a bearer token."""
    workdir = tmp_path_factory.mktemp("auth")
    password, token = "pw-" + secrets.token_hex(12), "tok-" + secrets.token_hex(16)
    (workdir / "password").write_text(password + "\n")
    (workdir / "token").write_text(token + "\n")
    cfg = base_config(
        workdir,
        server={
            "log_level": "debug",
            "basic_auth_username": "promtail",
            "basic_auth_password_file": str(workdir / "password"),
            "bearer_token_file": str(workdir / "token"),
        },
    )
    srv = AuthServer(Loki(workdir, cfg).start(), "promtail", password, token, workdir)
    try:
        # One line, pushed with the credentials and no tenant: it is tenant "fake"'s.
        status, text, _ = asyncio.run(
            request(
                srv.loki.url,
                "POST",
                PUSH,
                body=push_body([("job", "auth")], [(time.time_ns() - MIN, "behind basic auth")]),
                headers={**JSON, **srv.basic()},
            )
        )
        assert status == 204, text
        yield srv
    finally:
        srv.loki.stop()


async def test_every_route_but_health_needs_the_credentials(auth_server: AuthServer) -> None:
    srv = auth_server
    wrong = [
        {},
        srv.basic(password="nope"),
        srv.basic(user="someone"),
        srv.bearer("nope"),
        {"Authorization": "Basic !!not base64!!"},
        {"Authorization": "Bearer"},
        {"Authorization": srv.token},  # no scheme
        {"Authorization": "Basic " + base64.b64encode(srv.token.encode()).decode()},
    ]
    for method, template in registered_routes():
        path = template.replace("{name}", "patterns" if "coprocessor" in template else "job")
        path = path.replace("{id}", new_id())
        if template == "/ui/{name}":
            path = "/ui/app.js"
        for headers in wrong:
            if template == "/loki/api/v1/tail":
                status, _ = await tail_first(srv.loki.url, None, headers, read=False)
                resp_headers: Any = {}
            else:
                status, _, resp_headers = await request(srv.loki.url, method, path, headers=headers)
            where = f"{method} {template} with {headers}"
            if template in OPEN_PATHS:
                assert status == 200, where
                continue
            assert status == 401, where
            if template != "/loki/api/v1/tail":
                challenges = resp_headers.getall("WWW-Authenticate")
                assert challenges == [
                    'Basic realm="loki-async", charset="UTF-8"',
                    'Bearer realm="loki-async"',
                ], where
        for headers in (srv.basic(), srv.bearer()):
            if template == "/loki/api/v1/tail":
                status, _ = await tail_first(srv.loki.url, None, headers, read=False)
            else:
                status, _, _ = await request(srv.loki.url, method, path, headers=headers)
            assert status != 401, f"{method} {template} with valid credentials: {status}"


async def test_single_tenant_behind_auth_is_fake(auth_server: AuthServer) -> None:
    """The line the fixture pushed with basic auth reads back with the token, whatever
    X-Scope-OrgID says."""
    srv = auth_server
    for headers in (srv.bearer(), {**srv.basic(), "X-Scope-OrgID": "ignored"}):
        status, text, _ = await request(
            srv.loki.url,
            "GET",
            "/loki/api/v1/query_range",
            None,
            {"query": '{job="auth"}'},
            headers=headers,
        )
        assert status == 200 and "behind basic auth" in text, text
    status, text, _ = await request(srv.loki.url, "GET", "/metrics")
    assert 'loki_distributor_lines_received_total{tenant="fake"}' in text


async def test_console_asks_the_browser_for_basic_credentials(auth_server: AuthServer) -> None:
    """A browser answers the Basic challenge of /ui/ with a login prompt, then sends the
    credentials with every same-origin fetch of the console."""
    srv = auth_server
    status, _, headers = await request(srv.loki.url, "GET", "/ui/")
    assert status == 401 and 'Basic realm="loki-async"' in headers["WWW-Authenticate"]
    status, text, _ = await request(srv.loki.url, "GET", "/ui/", headers=srv.basic())
    assert status == 200 and "<html" in text.lower()
    script = (UI_DIR / "app.js").read_text()
    # Same-origin relative URLs, and no fetch opts out of sending the credentials.
    assert not re.search(r"credentials\s*:\s*[\"']omit", script)
    assert not re.search(r"fetch\(\s*[\"'`]https?:", script)


async def test_paths_that_normalize_to_a_route_do_not_bypass_auth(auth_server: AuthServer) -> None:
    srv = auth_server
    for path in (
        "/metrics/../loki/api/v1/labels",
        "/ready/%2e%2e/loki/api/v1/labels",
        "//loki/api/v1/labels",
        "/loki/api/v1/labels?x=/ready",
    ):
        status, data = await raw_request(
            srv.loki.port, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert status in (401, 404), (path, data)


async def test_credentials_never_reach_the_log_or_printed_config(auth_server: AuthServer) -> None:
    srv = auth_server
    guesses = ["guess-" + secrets.token_hex(6) for _ in range(2)]
    for headers in (
        srv.basic(password=guesses[0]),
        srv.bearer(guesses[1]),
        srv.basic(),
        srv.bearer(),
    ):
        await request(srv.loki.url, "GET", "/loki/api/v1/labels", headers=headers)
        await request(
            srv.loki.url,
            "GET",
            "/loki/api/v1/query_range",
            headers=headers,
            params={"query": "{bad"},
        )
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "loki_async.cli",
            f"-config.file={srv.workdir / 'config-all.yaml'}",
            "-print-config",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "basic_auth_password_file" in printed
    secrets_seen = [srv.password, srv.token, *guesses]
    secrets_seen += [
        h["Authorization"].split()[1] for h in (srv.basic(), srv.basic(password=guesses[0]))
    ]
    for text in (srv.loki.logs(), printed):
        assert not [s for s in secrets_seen if s in text]


def loki_cli(url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOKI_")}
    return subprocess.run(
        [sys.executable, "-m", "loki_async.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, "LOKI_ADDR": url, **env},
    )


def test_cli_sends_credentials_like_logcli(auth_server: AuthServer) -> None:
    srv = auth_server
    query = ("query", '{job="auth"}', "--since", "1h")
    ok = [
        loki_cli(srv.loki.url, *query, LOKI_USERNAME=srv.user, LOKI_PASSWORD=srv.password),
        loki_cli(srv.loki.url, *query, LOKI_BEARER_TOKEN=srv.token),
        loki_cli(srv.loki.url, *query, "--username", srv.user, "--password", srv.password),
        loki_cli(srv.loki.url, "ticket", "--list", "--bearer-token", srv.token),
    ]
    for done in ok:
        assert done.returncode == 0, done.stderr
    assert "behind basic auth" in ok[0].stdout and "behind basic auth" in ok[1].stdout
    for env in ({}, {"LOKI_USERNAME": srv.user, "LOKI_PASSWORD": "nope"}):
        done = loki_cli(srv.loki.url, *query, **env)
        assert done.returncode == 1 and "401 unauthorized" in done.stderr, done.stderr
    both = loki_cli(srv.loki.url, *query, LOKI_BEARER_TOKEN="t", LOKI_USERNAME="u")
    assert both.returncode == 1 and "not both" in both.stderr


async def test_tenants_behind_basic_auth_need_both(
    loki_factory: Callable[..., Loki], tmp_path: Path
) -> None:
    (tmp_path / "pw").write_text("hunter2")
    loki = loki_factory(
        auth_enabled=True,
        server={"basic_auth_username": "grafana", "basic_auth_password_file": str(tmp_path / "pw")},
    )
    basic = {"Authorization": "Basic " + base64.b64encode(b"grafana:hunter2").decode()}
    status, text, _ = await request(loki.url, "GET", "/loki/api/v1/labels", headers=basic)
    assert status == 401 and "no org id" in text
    status, text, _ = await request(loki.url, "GET", "/loki/api/v1/labels", A)
    assert status == 401 and "unauthorized" in text
    status, text, _ = await request(loki.url, "GET", "/loki/api/v1/labels", A, headers=basic)
    assert status == 200, text


def test_auth_config_mistakes_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError) as e:
        load_yaml_text(
            f"server:\n  basic_auth_username: 'a:b'\n  bearer_token_file: {tmp_path / 'empty'}\n"
        )
    assert "basic_auth_username and basic_auth_password_file go together" in e.value.message
    assert "must not contain ':'" in e.value.message
    assert "bearer_token_file" in e.value.message and "is empty" in e.value.message
    with pytest.raises(ConfigError) as e:
        load_yaml_text(
            f"server:\n  basic_auth_username: a\n"
            f"  basic_auth_password_file: {tmp_path / 'missing'}\n"
        )
    assert "server.basic_auth_password_file: cannot read" in e.value.message
