"""Limits and abuse, against the real program: oversized bodies, decompression bombs,
huge and deeply nested queries, regexes that would backtrack catastrophically,
resolutions and limits that would make millions of points, and too many async queries
of one tenant.

Every case asserts what the client sees (status and message, at once) and, where
memory is the risk, that the server's resident memory stays bounded. Each is also the
regression test of a fix: the 413 before the body is read, the stepped inflate, RE2,
the range-vector length check, the volume_range resolution check and the limit on a
tenant's async queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import cramjam
import orjson
import pytest

from loki_async.logproto import PushStream, encode_push_protobuf
from tests.conftest import Loki, NATSServer, base_config
from tests.lokiclient import client
from tests.reliability.scale import scaled

pytestmark = pytest.mark.reliability

NS = 10**9
MB = 1 << 20
GB = 1 << 30
LIMIT = 16 * MB  # server.http_server_max_body_size of the server under test
TOO_LARGE = f"request body too large: limit {LIMIT} bytes"
QUICK_S = 5.0  # "at once", on a loaded 2-core machine
REDOS_LINE = "a" * 38 + "!"  # (a+)+b on it: 2^38 steps for a backtracking engine
UTF8_LINE = "héllo wörld".encode()
POINTS = "exceeded maximum resolution of 11,000 points per time series"
TICKETS = "/loki/api/v1/tickets"


# --------------------------------------------------------------------------- helpers


class PeakRSS:
    """How far a process's resident memory rose above its start while a block ran
    (MiB): the kernel's high-water mark, reset through ``clear_refs`` where that is
    allowed, and a 5 ms sampler in any case."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.growth_mb = 0

    def _kib(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
        raise AssertionError(f"no {key} in /proc/{self.pid}/status")

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._kib("VmRSS:")
        self.hwm = False
        with contextlib.suppress(OSError), open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
            self.hwm = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._kib("VmRSS:"))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.hwm:
            self.peak = max(self.peak, self._kib("VmHWM:"))
        self.growth_mb = (self.peak - self.start) // 1024


async def zeros(total: int) -> AsyncIterator[bytes]:
    """A body streamed in 1 MiB pieces: the client never holds it."""
    block = b"\0" * MB
    for _ in range(total // MB):
        yield block


def deflate_bomb(wbits: int, expands_to: int) -> bytes:
    """A gzip (``wbits`` 31) or raw deflate (-15) body of ``expands_to`` zero bytes in
    about a thousandth of that, built without compressing it all: after a full flush,
    every 1 MiB of zeros compresses to the same bytes. (The gzip trailer's CRC is
    wrong; a reader that stops at its limit never gets to it.)"""
    c = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b"\0" * MB
    first = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(block) + c.flush(zlib.Z_FULL_FLUSH)
    return first + again * (expands_to // MB - 1) + c.flush()


async def post(
    loki: Loki, path: str, data: Any, headers: dict[str, str] | None = None
) -> tuple[int, str, float]:
    """(status, body as text, seconds) of a POST."""
    t0 = time.monotonic()
    async with client() as s, s.post(loki.url + path, data=data, headers=headers or {}) as r:
        body = (await r.read()).decode("utf-8", "replace")
        return r.status, body, time.monotonic() - t0


async def form(
    loki: Loki,
    path: str,
    tenant: str | None = None,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> tuple[int, Any, float]:
    """(status, body as JSON or text, seconds) of a form POST: long queries fit."""
    hdrs = dict(headers or {})
    if tenant:
        hdrs["X-Scope-OrgID"] = tenant
    t0 = time.monotonic()
    async with client() as s, s.post(loki.url + path, data=fields, headers=hdrs) as r:
        raw = await r.read()
        body = orjson.loads(raw) if r.content_type == "application/json" else raw.decode()
        return r.status, body, time.monotonic() - t0


# --------------------------------------------------------------------------- server


@pytest.fixture(scope="module")
def loki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loki]:
    """One server with a 16 MiB body limit and a stream whose lines and label value
    are 38 ``a`` and a ``!`` (plus one line that (a+)+b matches)."""
    workdir = tmp_path_factory.mktemp("abuse")
    cfg = base_config(
        workdir,
        server={"http_server_max_body_size": LIMIT},
        limits_config={"max_entries_limit_per_query": 5000},
    )
    inst = Loki(workdir, cfg).start()
    now = time.time_ns()
    values = [[str(now - (i + 1) * NS), REDOS_LINE] for i in range(50)]
    body = {"streams": [{"stream": {"app": "redos", "v": REDOS_LINE}, "values": values}]}
    match = {"streams": [{"stream": {"app": "redos", "v": "aaab"}, "values": [[str(now), "aaab"]]}]}
    # Lines that are not ASCII, one not even UTF-8: pushed as protobuf, which keeps bytes.
    utf8 = encode_push_protobuf(
        [
            PushStream([("app", "utf8")], [now - 2, now - 1], [b"a\xffb", b"plain"], None),
            PushStream([("app", "utf8-valid")], [now - 2, now - 1], [UTF8_LINE, b"plain"], None),
        ]
    )

    async def load() -> None:
        for doc in (body, match):
            status, text, _ = await post(
                inst, "/loki/api/v1/push", orjson.dumps(doc), {"Content-Type": "application/json"}
            )
            assert status == 204, text
        status, text, _ = await post(
            inst, "/loki/api/v1/push", utf8, {"Content-Type": "application/x-protobuf"}
        )
        assert status == 204, text

    asyncio.run(load())
    yield inst
    inst.kill()


# --------------------------------------------------------------------------- bodies

BODY_ENDPOINTS = {
    "push": ("/loki/api/v1/push", "application/json"),
    "otlp": ("/otlp/v1/logs", "application/x-protobuf"),
    "query_range": ("/loki/api/v1/query_range", "application/x-www-form-urlencoded"),
    "series": ("/loki/api/v1/series", "application/x-www-form-urlencoded"),
}


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("endpoint", list(BODY_ENDPOINTS))
async def test_body_past_the_limit_is_413_and_never_held_in_memory(
    loki: Loki, endpoint: str, framing: str
) -> None:
    path, ctype = BODY_ENDPOINTS[endpoint]
    size = scaled(256, 4096) * MB
    headers = {"Content-Type": ctype}
    if framing == "content-length":  # refused before a byte of it is read
        headers["Content-Length"] = str(size)
    with PeakRSS(loki.proc.pid) as rss:
        status, body, seconds = await post(loki, path, zeros(size), headers)
    assert status == 413, body
    assert TOO_LARGE in body  # OTLP: inside its google.rpc.Status
    # Refused on its Content-Length, nothing is read; chunked, at most the limit.
    bound = 8 if framing == "content-length" else 2 * LIMIT // MB + 16
    assert rss.growth_mb < bound, f"server memory grew {rss.growth_mb} MiB"
    assert seconds < QUICK_S + size / GB * 4


async def test_form_with_too_many_fields_is_413_saying_so(loki: Loki) -> None:
    matches = "&".join(f"match[]=%7Bapp%3D%22x{i}%22%7D" for i in range(5000))
    status, body, _ = await post(
        loki,
        "/loki/api/v1/series",
        matches.encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 413
    assert "form fields" in body and "request body too large" not in body


# --------------------------------------------------------------------------- bombs

BOMB_GB = 10  # what a gzip or deflate bomb expands to (its body: 10 MiB, under LIMIT)
BOMBS: dict[str, tuple[str, str, str, Any, str]] = {
    # name: (path, Content-Type, Content-Encoding, body, message)
    "gzip json push": (
        "/loki/api/v1/push",
        "application/json",
        "gzip",
        lambda: deflate_bomb(31, BOMB_GB * GB),
        f"gzip: decompressed push request larger than max ({LIMIT} bytes)",
    ),
    "deflate json push": (
        "/loki/api/v1/push",
        "application/json",
        "deflate",
        lambda: deflate_bomb(-15, BOMB_GB * GB),
        f"deflate: decompressed push request larger than max ({LIMIT} bytes)",
    ),
    "gzip protobuf push": (
        "/loki/api/v1/push",
        "application/x-protobuf",
        "gzip",
        lambda: deflate_bomb(31, BOMB_GB * GB),
        f"gzip: decompressed push request larger than max ({LIMIT} bytes)",
    ),
    "snappy block": (
        "/loki/api/v1/push",
        "application/x-protobuf",
        "",
        lambda: bytes(cramjam.snappy.compress_raw(b"\0" * (64 * MB))),
        f"received message larger than max ({64 * MB} vs {LIMIT})",
    ),
    "snappy block claiming 4 GiB": (
        "/loki/api/v1/push",
        "application/x-protobuf",
        "",
        lambda: b"\xff\xff\xff\xff\x0f" + bytes(cramjam.snappy.compress_raw(b"\0" * MB))[4:],
        f"received message larger than max (4294967295 vs {LIMIT})",
    ),
    "snappy framed": (
        "/loki/api/v1/push",
        "application/x-protobuf",
        "",
        lambda: bytes(cramjam.snappy.compress(b"\0" * (64 * MB))),
        "not the framed format",
    ),
    "zstd": (
        "/loki/api/v1/push",
        "application/json",
        "zstd",
        lambda: bytes(cramjam.zstd.compress(b"\0" * (64 * MB))),
        "Content-Encoding 'zstd' not supported",
    ),
    "gzip otlp protobuf": (
        "/otlp/v1/logs",
        "application/x-protobuf",
        "gzip",
        lambda: deflate_bomb(31, BOMB_GB * GB),
        f"gzip: decompressed push request larger than max ({LIMIT} bytes)",
    ),
    "gzip otlp json": (
        "/otlp/v1/logs",
        "application/json",
        "gzip",
        lambda: deflate_bomb(31, BOMB_GB * GB),
        f"gzip: decompressed push request larger than max ({LIMIT} bytes)",
    ),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
async def test_decompression_bomb_is_400_within_the_limit_of_memory(loki: Loki, bomb: str) -> None:
    path, ctype, encoding, make, message = BOMBS[bomb]
    body = make()
    assert len(body) <= LIMIT  # the bomb itself passes the body limit
    headers = {"Content-Type": ctype}
    if encoding:
        headers["Content-Encoding"] = encoding
    with PeakRSS(loki.proc.pid) as rss:
        status, text, seconds = await post(loki, path, body, headers)
    assert status == 400, text
    assert message in text
    # The body, aiohttp's copy of it and at most the limit + 1 MiB inflated.
    assert rss.growth_mb < 2 * len(body) // MB + LIMIT // MB + 32, f"grew {rss.growth_mb} MiB"
    assert seconds < QUICK_S


# --------------------------------------------------------------------------- queries


CT = 'count_over_time({app="redos"}[1m])'


def _matchers(n: int) -> str:
    return "{" + ",".join(f'l{i}="v"' for i in range(n)) + "}"


REFUSED_QUERIES: dict[str, tuple[str, str]] = {
    # name: (query, what the 400 says)
    "parentheses 5000 deep": ("(" * 5000 + '{app="x"}' + ")" * 5000, "nested too deeply"),
    "sum 3000 deep": (
        "sum(" * 3000 + 'count_over_time({app="x"}[1m])' + ")" * 3000,
        "nested too deeply",
    ),
    "a 1 MiB query": (
        '{app="x"} |= "' + "a" * MB + '"',
        "parse error : input size too long (1048591 > 131072)",
    ),
    "100k label matchers": (_matchers(100_000), "input size too long"),
    "5000 label matchers": (
        _matchers(5000),
        "max streams matchers per query exceeded, matchers-count > limit (5000 > 1000)",
    ),
    "5000 label filters": (
        '{app="x"} | ' + " and ".join(['v!="1"'] * 5000),
        "query is nested too deeply (5002 levels, at most 128)",
    ),
    "1000 metric terms": (" + ".join([CT] * 1000), "query is nested too deeply"),
    "regex 3000 groups deep": (
        '{app="x"} |~ "' + "(" * 3000 + "a" + ")" * 3000 + '"',
        "expression nests too deeply",
    ),
    "regex nested counted repeats": (
        '{app="x"} |~ "((a{1000}){1000}){1000}"',
        "error parsing regexp: invalid repeat count: `{1000}`",
    ),
    "regex too large for RE2": (
        '{app="x"} |~ "\\\\pL{1000}"',
        "error parsing regexp: expression too large: `\\pL{1000}`",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_QUERIES))
async def test_huge_or_deep_query_is_400_at_once(loki: Loki, case: str) -> None:
    text, message = REFUSED_QUERIES[case]
    status, body, seconds = await form(loki, "/loki/api/v1/query_range", query=text, since="5m")
    assert status == 400, str(body)[:300]
    assert message in body
    assert seconds < QUICK_S


ACCEPTED_QUERIES = {
    # Huge, and as deep as the parser takes (MAX_DEPTH, 128): they run, not 500.
    "10k or alternatives": '{app="redos"} |= "b"' + "".join(f' or "x{i}"' for i in range(10000)),
    "10k line filters": '{app="redos"}' + ' != "zz"' * 10000,
    "120 label filters": '{app="redos"} | ' + " and ".join(['v!="1"'] * 120),
    "label filter 120 deep": '{app="redos"} | ' + "(" * 120 + 'v!="1"' + ")" * 120,
    "120 metric terms": " + ".join([CT] * 120),
    "sum 120 deep": "sum(" * 120 + CT + ")" * 120,
    "label_replace 120 deep": "label_replace(" * 120 + CT + ', "a", "b", "c", "d")' * 120,
    "binary operations 120 deep": "1 + (" * 120 + CT + ")" * 120,
    "parentheses 200 deep": "(" * 200 + CT + ")" * 200,
}


@pytest.mark.parametrize("case", list(ACCEPTED_QUERIES))
async def test_large_query_within_the_limits_runs_in_bounded_time(loki: Loki, case: str) -> None:
    status, body, seconds = await form(
        loki, "/loki/api/v1/query_range", query=ACCEPTED_QUERIES[case], since="5m", step="60"
    )
    assert status == 200, str(body)[:300]
    assert seconds < 3 * QUICK_S


# --------------------------------------------------------------------------- regexes

REDOS = "(a+)+b"
REGEX_QUERIES = {
    # name: (query, the answer's series or streams, entries in them)
    "line filter": (f'{{app="redos"}} |~ "{REDOS}"', 1),
    "negated line filter": (f'{{app="redos"}} !~ "{REDOS}"', 50),
    "stream matcher": (f'{{app="redos", v=~"{REDOS}"}}', 1),
    "negated stream matcher": (f'{{app="redos", v!~"{REDOS}"}}', 50),
    "label filter": (f'{{app="redos"}} | v=~"{REDOS}"', 1),
    "regexp parser": (f'{{app="redos"}} | regexp "(?P<x>{REDOS})" | x!=""', 1),
    "regexReplaceAll": (
        f'{{app="redos"}} | line_format `{{{{ regexReplaceAll "{REDOS}" .v "z" }}}}` |= "z"',
        1,
    ),
    "label_replace": (
        f'label_replace(count_over_time({{app="redos"}}[10m]), "w", "$1", "v", "{REDOS}")',
        2,
    ),
}

# RE2 reads UTF-8; these check that lines are matched as Go reads them.
UTF8_QUERIES = {
    "invalid byte is U+FFFD": ('{app="utf8"} |~ "a.b"', 1),  # RE2 alone: no match
    "non-ASCII block": ('{app="utf8-valid"} |~ "h.llo w.rld"', 1),
    "case folding": ('{app="utf8-valid"} |~ "(?i)HÉLLO"', 1),
}


@pytest.mark.parametrize("case", [*REGEX_QUERIES, *(f"utf-8 {name}" for name in UTF8_QUERIES)])
async def test_regex_runs_in_linear_time_on_lines_as_go_reads_them(loki: Loki, case: str) -> None:
    text, expected = REGEX_QUERIES.get(case) or UTF8_QUERIES[case.removeprefix("utf-8 ")]
    status, body, seconds = await form(
        loki, "/loki/api/v1/query_range", query=text, since="10m", step="600", limit="1000"
    )
    assert status == 200, str(body)[:300]
    result = body["data"]["result"]
    if body["data"]["resultType"] == "streams":
        assert sum(len(s["values"]) for s in result) == expected, result
    else:
        assert len(result) == expected, result
    assert seconds < QUICK_S


# --------------------------------------------------------------------------- points


POINT_CASES = {
    # name: (path, form, message)
    "step 1s over 30d": (
        "/loki/api/v1/query_range",
        {"query": 'count_over_time({app="redos"}[1m])', "since": "720h", "step": "1s"},
        POINTS,
    ),
    "step 1ms over 1h": (
        "/loki/api/v1/query_range",
        {"query": 'count_over_time({app="redos"}[1m])', "since": "1h", "step": "0.001"},
        POINTS,
    ),
    "limit": (
        "/loki/api/v1/query_range",
        {"query": '{app="redos"}', "limit": "100000000"},
        "max entries limit per query exceeded, limit > max_entries_limit_per_query "
        "(100000000 > 5000)",
    ),
    "instant range vector": (
        "/loki/api/v1/query",
        {"query": 'count_over_time({app="redos"}[100000h])'},
        "the query time range exceeds the limit (query length: 4166d16h, limit: 30d1h)",
    ),
    "range vector of a range query": (
        "/loki/api/v1/query_range",
        {"query": 'sum(rate({app="redos"}[1000d]))', "since": "1h", "step": "60"},
        "the query time range exceeds the limit (query length: 1000d, limit: 30d1h)",
    ),
}


@pytest.mark.parametrize("async_", ["false", "true"])
@pytest.mark.parametrize("case", list(POINT_CASES))
async def test_millions_of_points_are_refused_with_lokis_message(
    loki: Loki, case: str, async_: str
) -> None:
    path, fields, message = POINT_CASES[case]
    status, body, seconds = await form(loki, path, **fields, **{"async": async_})
    assert status == 400, str(body)[:300]  # async too: a 400 at submission, never a ticket
    assert message in body
    assert seconds < QUICK_S


async def test_volume_range_step_is_bounded_like_query_range(loki: Loki) -> None:
    status, body, seconds = await form(
        loki, "/loki/api/v1/index/volume_range", query='{app="redos"}', since="720h", step="1ms"
    )
    assert status == 400, str(body)[:300]
    assert POINTS in body
    assert seconds < QUICK_S


# --------------------------------------------------------------------------- async


A, B = "tenant-a", "tenant-b"


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NATSServer]:
    """A NATS server of the test's own: queries it leaves queued stay with it."""
    server = NATSServer(tmp_path / "nats")
    yield server
    server.stop()


def limited(workdir: Path, nats: NATSServer, **overrides: Any) -> dict:
    """Tenants may have two async queries queued or running."""
    limits = {"max_concurrent_async_queries": 2}
    return base_config(workdir, nats.url, auth_enabled=True, limits_config=limits, **overrides)


END = time.time_ns() // NS  # one range for every submission: identical queries coalesce


async def submit(
    loki: Loki, query: str, tenant: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    status, body, _ = await form(
        loki,
        "/loki/api/v1/query_range",
        tenant,
        headers,
        query=query,
        start=str(END - 3600),
        end=str(END),
        step="60",
        **{"async": "true"},
    )
    return status, body


async def wait(loki: Loki, ticket: str, tenant: str) -> tuple[int, bytes]:
    """Long-poll a ticket: (status, body)."""
    url = f"{loki.url}{TICKETS}/{ticket}"
    headers = {"X-Scope-OrgID": tenant}
    async with client() as s, s.get(url, params={"wait": "60s"}, headers=headers) as r:
        return r.status, await r.read()


async def test_too_many_async_queries_of_a_tenant_is_429_until_one_finishes(
    nats: NATSServer, loki_factory: Any, tmp_path: Path
) -> None:
    # No querier workers: what is submitted stays queued until one is started.
    main = loki_factory(config=limited(tmp_path, nats, querier_worker={"concurrency": 0}))
    q1, q2, q3 = (f'count_over_time({{app="q{i}"}}[1m])' for i in (1, 2, 3))
    key = {"Idempotency-Key": "report-2"}
    status, first = await submit(main, q1, A)
    assert status == 202, first
    status, second = await submit(main, q2, A, key)
    assert status == 202, second
    # An identical query in flight and a retried Idempotency-Key take no new place.
    status, same = await submit(main, q1, A)
    assert status == 202 and same["data"]["ticket"] != first["data"]["ticket"], same
    status, retried = await submit(main, q2, A, key)
    assert status == 202 and retried["data"]["ticket"] == second["data"]["ticket"], retried

    status, refused = await submit(main, q3, A, {"Idempotency-Key": "report-3"})
    assert status == 429, refused
    assert refused == (
        "too many outstanding async queries: tenant 'tenant-a' has 2 queued or running, "
        "the limit is 2 (limits_config.max_concurrent_async_queries); wait for one to "
        "finish, or stop or delete one, and submit again\n"
    )
    # The refusal released its Idempotency-Key: a retry is refused again at once, not
    # after waiting out a claim that no ticket will ever fill.
    t0 = time.monotonic()
    status, again = await submit(main, q3, A, {"Idempotency-Key": "report-3"})
    assert status == 429 and time.monotonic() - t0 < 4, again
    status, other = await submit(main, q3, B)  # another tenant has its own places
    assert status == 202, other

    loki_factory(config=limited(tmp_path, nats), target="querier-worker")  # they run
    for ticket in (first, second, same):
        status, body = await wait(main, ticket["data"]["ticket"], A)
        assert status == 200, body
    status, later = await submit(main, q3, A, {"Idempotency-Key": "report-3"})
    assert status == 202, later
