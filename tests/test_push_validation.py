"""Every invalid push kind answers Loki's status and a message naming the problem; the
valid streams of the same batch are stored."""

from __future__ import annotations

import time

import pytest

from loki_async.logproto import PushStream
from tests.lokiclient import client, get, push, query_range

NS = 10**9


@pytest.fixture(scope="module")
def loki(tmp_path_factory):
    from tests.conftest import Loki, base_config

    workdir = tmp_path_factory.mktemp("validation")
    cfg = base_config(
        workdir,
        server={"http_server_max_body_size": "1MB"},
        limits_config={
            "max_line_size": "1KB",
            "max_label_names_per_series": 4,
            "max_label_name_length": 20,
            "max_label_value_length": 30,
            "reject_old_samples": True,
            "reject_old_samples_max_age": "1d",
            "creation_grace_period": "10m",
            "max_entries_limit_per_query": 1000,
        },
    )
    inst = Loki(workdir, cfg).start()
    yield inst
    inst.kill()


def ok_stream(name: str) -> PushStream:
    return PushStream([("app", name)], [time.time_ns()], [f"valid line of {name}".encode()], None)


CASES = [
    (
        "line_too_long",
        PushStream([("app", "x")], [time.time_ns()], [b"y" * 2000], None),
        400,
        "Max entry size '1024' bytes exceeded for stream '{app=\"x\"}' while adding an "
        "entry with length '2000' bytes",
    ),
    (
        "too_many_labels",
        PushStream([(f"l{i}", "v") for i in range(6)], [time.time_ns()], [b"z"], None),
        400,
        "has 6 label names; limit 4",
    ),
    (
        "label_name_too_long",
        PushStream([("a" * 25, "v")], [time.time_ns()], [b"z"], None),
        400,
        "has label name too long: 'aaaaaaaaaaaaaaaaaaaaaaaaa'",
    ),
    (
        "label_value_too_long",
        PushStream([("a", "v" * 31)], [time.time_ns()], [b"z"], None),
        400,
        "has label value too long",
    ),
    (
        "invalid_label_syntax",
        PushStream('{app="x"', [time.time_ns()], [b"z"], None),
        400,
        "Error parsing labels '{app=\"x\"'",
    ),
    (
        "duplicate_label_names",
        PushStream('{app="x", app="y"}', [time.time_ns()], [b"z"], None),
        400,
        "has duplicate label name: 'app'",
    ),
    (
        "too_old",
        PushStream([("app", "old")], [time.time_ns() - 3 * 86400 * NS], [b"z"], None),
        400,
        "has timestamp too old",
    ),
    (
        "too_new",
        PushStream([("app", "new")], [time.time_ns() + 3600 * NS], [b"z"], None),
        400,
        "has timestamp too new",
    ),
    (
        "no_labels",
        PushStream("{}", [time.time_ns()], [b"z"], None),
        400,
        "error at least one label pair is required per stream",
    ),
]


# A JSON stream object cannot carry a malformed label string: those kinds are protobuf-only.
PARAMS = [
    (fmt, *case)
    for case in CASES
    for fmt in ("json", "protobuf")
    if fmt == "protobuf" or not isinstance(case[1].labels, str)
]


@pytest.mark.parametrize(
    ("fmt", "kind", "bad", "status", "message"), PARAMS, ids=[f"{p[1]}-{p[0]}" for p in PARAMS]
)
async def test_invalid_push_is_rejected_and_valid_streams_stored(
    loki, fmt: str, kind: str, bad: PushStream, status: int, message: str
) -> None:
    good = ok_stream(f"{kind}-{fmt}")
    async with client() as session:
        got_status, body = await push(session, loki.url, [good, bad], fmt)
        assert got_status == status, body
        assert message in body
        got = await query_range(
            session,
            loki.url,
            f'{{app="{kind}-{fmt}"}}',
            time.time_ns() - 600 * NS,
            time.time_ns() + 60 * NS,
            limit=1000,
        )
        assert [line for v in got.values() for _, line in v] == [f"valid line of {kind}-{fmt}"]


async def test_malformed_bodies_are_400(loki) -> None:
    async with client() as session:
        for ctype, body in (
            ("application/json", b"{not json"),
            ("application/json", b'{"streams": [{"stream": 1}]}'),
            ("application/x-protobuf", b"\xff\xff\xff"),
            ("text/plain", b"hello"),
        ):
            async with session.post(
                f"{loki.url}/loki/api/v1/push", data=body, headers={"Content-Type": ctype}
            ) as r:
                assert r.status in (400, 415), await r.text()
                assert (await r.text()).strip()


async def test_empty_push_succeeds_as_in_loki(loki) -> None:
    async with client() as session:
        for body in (b'{"streams": []}', b'{"streams": [{"stream": {"a": "b"}, "values": []}]}'):
            async with session.post(
                f"{loki.url}/loki/api/v1/push",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as r:
                assert r.status == 204, await r.text()


async def test_unsorted_labels_are_one_stream(loki) -> None:
    now = time.time_ns()
    async with client() as session:
        for i, labels in enumerate(('{b="2", a="unsorted"}', '{a="unsorted", b="2"}')):
            status, body = await push(
                session,
                loki.url,
                [PushStream(labels, [now + i], [b"line %d" % i], None)],
                "protobuf",
            )
            assert status == 204, body
        got = await query_range(session, loki.url, '{a="unsorted"}', now - NS, now + NS, limit=1000)
        assert list(got) == ["a=unsorted,b=2"]
        assert [line for _, line in got["a=unsorted,b=2"]] == ["line 0", "line 1"]


async def test_query_parameters_are_validated(loki) -> None:
    async with client() as session:
        for params, needle in (
            ({"query": '{a="b"}', "limit": "5000"}, "max entries limit per query exceeded"),
            ({"query": '{a="b"}', "start": "yesterday"}, 'cannot parse "yesterday"'),
            ({"query": '{a="b"}', "direction": "sideways"}, "invalid direction"),
            (
                {
                    "query": '{a="b"',
                },
                "parse error",
            ),
            ({}, "query parameter is required"),
        ):
            status, body = await get(session, loki.url, "/loki/api/v1/query_range", **params)
            assert status == 400, body
            assert needle in body


async def test_structured_metadata_is_stored_and_returned(loki) -> None:
    now = time.time_ns()
    stream = PushStream(
        [("app", "meta")], [now, now + 1], [b"with", b"without"], [[("trace_id", "abc123")], []]
    )
    async with client() as session:
        status, body = await push(session, loki.url, [stream], "protobuf")
        assert status == 204, body
        got = await query_range(session, loki.url, '{app="meta"}', now - NS, now + NS, limit=1000)
        assert got == {
            "app=meta,trace_id=abc123": [(now, "with")],
            "app=meta": [(now + 1, "without")],
        }


@pytest.mark.parametrize("auth", [True])
async def test_auth_enabled_requires_org_id_and_isolates_tenants(loki_factory, auth) -> None:
    loki = loki_factory(auth_enabled=auth)
    now = time.time_ns()
    s = PushStream([("app", "t")], [now], [b"tenant a's line"], None)
    async with client() as session:
        status, body = await push(session, loki.url, [s])
        assert (status, body.strip()) == (401, "no org id")
        status, body = await get(session, loki.url, "/loki/api/v1/query_range", query='{app="t"}')
        assert (status, body.strip()) == (401, "no org id")
        assert (await push(session, loki.url, [s], tenant="a"))[0] == 204
        got_a = await query_range(session, loki.url, '{app="t"}', now - NS, now + NS, tenant="a")
        got_b = await query_range(session, loki.url, '{app="t"}', now - NS, now + NS, tenant="b")
        assert got_a == {"app=t": [(now, "tenant a's line")]} and got_b == {}


async def test_rate_limit_answers_429(loki_factory) -> None:
    loki = loki_factory(
        limits_config={"ingestion_rate_mb": 0.001, "ingestion_burst_size_mb": 0.001}
    )
    s = PushStream([("app", "r")], [time.time_ns()], [b"x" * 2000], None)
    async with client() as session:
        status, body = await push(session, loki.url, [s])
        assert status == 429, body
        assert "Ingestion rate limit exceeded for user fake" in body


async def test_oversized_body_is_413_and_decompression_bomb_is_400(loki) -> None:
    import gzip

    async with client() as session:
        async with session.post(
            f"{loki.url}/loki/api/v1/push",
            data=b"x" * (2 << 20),
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 413
            assert "request body too large" in await r.text()
        bomb = gzip.compress(b"\0" * (64 << 20), 9)  # 64 MiB of zeros in ~64 KiB
        async with session.post(
            f"{loki.url}/loki/api/v1/push",
            data=bomb,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ) as r:
            assert r.status == 400
            assert "larger than" in (await r.text()) or "too large" in (await r.text())


async def test_metrics_count_pushes_lines_bytes_fsyncs_and_latency(loki) -> None:
    now = time.time_ns()
    lines = [b"metric line %d" % i for i in range(50)]
    async with client() as session:
        s = PushStream([("app", "metrics")], [now + i for i in range(50)], lines, None)
        assert (await push(session, loki.url, [s], "protobuf"))[0] == 204
        status, text = await get(session, loki.url, "/metrics")
    assert status == 200
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['loki_distributor_lines_received_total{tenant="fake"}'] >= 50
    assert values['loki_distributor_bytes_received_total{tenant="fake"}'] >= sum(map(len, lines))
    assert values['loki_distributor_push_requests_total{format="protobuf"}'] >= 1
    assert values["loki_ingester_wal_fsyncs_total"] >= 1
    assert any(
        k.startswith("loki_request_duration_seconds_count{")
        and 'route="/loki/api/v1/push"' in k
        and 'status_code="204"' in k
        for k in values
    )


async def test_ring_page_and_its_bad_requests(loki) -> None:
    async with client() as session:
        status, body = await get(session, loki.url, "/ring")
        assert status == 200 and body["replication_factor"] == 1, body
        assert [m["state"] for m in body["ingesters"]] == ["ACTIVE"], body
        for data, want, text in (
            ({}, 400, "forget=<ingester id> is required"),
            ({"forget": "nobody"}, 404, "'nobody' is not in the ring"),
        ):
            async with session.post(f"{loki.url}/ring", data=data) as r:
                assert r.status == want and text in await r.text()
        async with session.post(
            f"{loki.url}/ring", data=b"{not json", headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 400
