"""Tickets, split results and their wire forms: unit tests, and the storage paths on a
real nats-server (the session fixture) with the filesystem object store."""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import pytest

import nats
from loki_async import bus, tickets
from loki_async.errors import BadRequest, NotFound
from loki_async.frontend import (
    QueryRequest,
    Split,
    SplitResults,
    cache_key,
    decode_split,
    encode_split,
    private_key,
)
from loki_async.logql import parse_expr
from loki_async.logql.engine import Matrix, Sample, Scalar, Series, Vector
from loki_async.logql.pipeline import LineLabels
from loki_async.objstore import FilesystemObjectClient
from loki_async.querier import QueryStats, StreamResult

NS = 10**9


def _req(query: str = 'sum(count_over_time({app="a"}[1h]))', **kw: object) -> QueryRequest:
    fields = {"tenant": "t", "query": query, "expr": parse_expr(query), "start": 0, "end": 10}
    fields.update(kw)
    return QueryRequest(**fields)  # type: ignore[arg-type]


def test_split_results_round_trip_every_kind() -> None:
    streams = [
        StreamResult(
            LineLabels({"app": "a"}, {"trace": "x"}, {"level": "info"}),
            [(3, b"third"), (2, b""), (1, "ünï".encode())],
        )
    ]
    back = decode_split(encode_split(streams))
    assert back[0].labels.key == streams[0].labels.key
    assert back[0].labels.structured_metadata == {"trace": "x"}
    assert back[0].entries == streams[0].entries
    m = Matrix([Series((("a", "1"),), array("q", [1000, 2000]), array("d", [1.5, float("inf")]))])
    got = decode_split(encode_split(m))
    assert got.series[0].metric == (("a", "1"),) and list(got.series[0].values) == [
        1.5,
        float("inf"),
    ]
    v = Vector([Sample((("b", "2"),), 5000, 2.0)])
    assert decode_split(encode_split(v)) == v
    assert decode_split(encode_split(Scalar(7, 0.5))) == Scalar(7, 0.5)


def test_large_split_results_are_compressed() -> None:
    lines = [(i, b"level=info msg=request path=/api/v1/users status=200") for i in range(5000)]
    data = encode_split([StreamResult(LineLabels({"a": "b"}, {}, {}), lines)])
    assert data[:1] == b"Z" and len(data) < 5000 * 10
    assert decode_split(data)[0].entries == lines


def test_unreadable_split_result_is_a_storage_error() -> None:
    from loki_async.errors import CorruptDataError

    with pytest.raises(CorruptDataError):
        decode_split(b"Z not zstd")


def test_key_token_keeps_tenants_apart() -> None:
    assert bus.key_token("fake") == "fake"
    assert bus.key_token("a.b") != bus.key_token("a_b")
    assert bus.key_token("a.b") == "a=2Eb"
    assert all(c.isalnum() or c in "_-=" for c in bus.key_token("ü *>"))


def test_request_wire_round_trip_and_fingerprint() -> None:
    req = _req(step=NS, limit=7, direction="forward", categorize=True)
    assert QueryRequest.from_wire(req.to_wire()) == req
    # The normalized query decides, not its spelling.
    same = _req(
        'sum( count_over_time( {app="a"} [1h] ) )',
        step=NS,
        limit=7,
        direction="forward",
        categorize=True,
    )
    assert same.fingerprint() == req.fingerprint()
    assert _req(step=2 * NS).fingerprint() != _req(step=NS).fingerprint()
    assert _req(tenant="u").fingerprint() == _req().fingerprint()  # tenant is in the key path


def test_cache_keys_depend_on_tenant_query_and_split() -> None:
    req = _req(step=NS)
    k = cache_key(req, Split(0, 5))
    assert k.startswith("c.t.") and k == cache_key(req, Split(0, 5))
    assert k != cache_key(req, Split(0, 6))
    assert k != cache_key(_req(tenant="u", step=NS), Split(0, 5))
    assert private_key("a.b", "e1", 3) == "p.a=2Eb.e1.3"


def test_execution_done_bitmap() -> None:
    x = tickets.Execution(id="e", tenant="t", request={}, created_ns=0)
    for i in (0, 9, 700):
        x.mark_done(i)
    assert [i for i in range(720) if x.split_done(i)] == [0, 9, 700]
    assert (
        tickets.Execution.from_wire(
            {"id": "e", "tenant": "t", "request": {}, "created_ns": 0, "future_field": 1}
        ).id
        == "e"
    )


def test_ticket_ids_are_random_and_checked() -> None:
    ids = {tickets.new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 for i in ids)
    assert tickets.check_id("0" * 32) == "0" * 32
    for bad in ("", "x" * 32, "0" * 31, "../" + "0" * 29, "A" * 32):
        with pytest.raises(BadRequest, match="invalid ticket id"):
            tickets.check_id(bad)


def test_query_stats_wire_ignores_unknown_counters() -> None:
    s = QueryStats(store_lines=5, splits=2)
    back = QueryStats.from_wire({**s.to_wire(), "new_counter": 1})
    assert back.store_lines == 5 and back.splits == 2


# --------------------------------------------------------------------------- on NATS


async def _resources(nats_server, tmp_path: Path):  # type: ignore[no-untyped-def]
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    res = await bus.ensure_resources(js, replicas=1, max_keep_alive_s=3600, split_cache_ttl_s=3600)
    objects = FilesystemObjectClient(tmp_path / "objects")
    await objects.start()
    return nc, js, res, objects


async def test_resources_are_created_idempotently(nats_server, tmp_path: Path) -> None:
    nc, js, _, _ = await _resources(nats_server, tmp_path)
    try:
        again = await bus.ensure_resources(
            js, replicas=1, max_keep_alive_s=3600, split_cache_ttl_s=3600
        )
        assert set(again) == {"tickets", "split_cache", "results"}
        info = await js.stream_info(bus.QUERIES_STREAM)
        assert str(getattr(info.config.retention, "value", info.config.retention)) == "workqueue"
        assert info.config.duplicate_window == bus.DUPLICATE_WINDOW_S
    finally:
        await nc.close()


async def test_big_split_results_go_to_the_object_store(nats_server, tmp_path: Path) -> None:
    nc, _, res, objects = await _resources(nats_server, tmp_path)
    try:
        results = SplitResults(res["split_cache"], objects)
        big = os.urandom(bus.KV_VALUE_MAX_BYTES + 1)
        await results.put("p.t.e1.0", big)
        assert await results.get("p.t.e1.0") == big
        assert await objects.list("async-splits/") == ["async-splits/p/t/e1/0"]
        await results.put("p.t.e1.1", b"Msmall")
        assert await results.get("p.t.e1.1") == b"Msmall"
        await results.delete("p.t.e1.1")
        assert await results.get("p.t.e1.1") is None
    finally:
        await nc.close()


async def test_results_beyond_the_nats_limit_go_to_the_object_store(
    nats_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc, js, res, objects = await _resources(nats_server, tmp_path)
    try:
        t = tickets.Tickets(
            nc=nc,
            js=js,
            kv=res["tickets"],
            results=res["results"],
            objects=objects,
            default_keep_alive_s=60,
            max_keep_alive_s=3600,
        )
        x = tickets.Execution(id=tickets.new_id(), tenant="t", request={}, created_ns=0)
        x.state = tickets.DONE
        small = await t.store_result(x, b'{"status":"success"}')
        assert small["where"] == "nats"
        x.result = small
        assert await t.result(x) == b'{"status":"success"}'
        monkeypatch.setattr(tickets, "RESULT_NATS_MAX_BYTES", 10)
        body = b'{"status":"success","data":' + os.urandom(64).hex().encode() + b"}"
        big = await t.store_result(x, body)
        assert big["where"] == "objects"
        x.result = big
        assert await t.result(x) == body
        await t.delete_result(x)
        assert await objects.list("async-results/") == []
        with pytest.raises(NotFound):
            await t.resolve("t", tickets.new_id())
    finally:
        await nc.close()
