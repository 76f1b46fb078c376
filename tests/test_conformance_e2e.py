"""LogQL conformance, end to end: every evaluation case that Grafana Loki 3.7.6 answered
(``/work/shared/conformance/logql/eval_cases.jsonl``) is pushed into the real program and
queried back over HTTP exactly as the recording harness did; the answer must be Loki's.

One server serves the whole module. Every row's ``loki_push`` is its own stream
(``case_id`` = row id) and all of them travel in a single push request. Rows whose
``harness_notes`` mention the empty-line carrier also get a non-empty entry 300 s before
theirs, as the harness pushed it (outside every query window, so it never shows). All
queries then run concurrently in the fixture and each test only compares one row:

* log rows: ``query_range`` with ``direction=forward``, ``limit=10`` over ``ts-1s ..
  ts+1s`` (start inclusive, end exclusive, as in Loki; the entry is inside either way),
  read twice: default encoding against ``loki_kept``/``loki_line``/``loki_labels``, and
  with ``categorize-labels`` against ``loki_labels_categorized``;
* metric rows: an instant query at ``loki_query_time_ns`` (the ``[1m]`` range covers
  ``(t-1m, t]``, the entry sits 30 s inside it) against ``loki_result``: series labels
  without ``case_id``, and the value as the string Loki printed;
* rows with ``loki_http_status`` other than 200 must fail with that status. Loki's 500s
  (ev-0156..0158) are not query errors: its default JSON encoder cannot write a parsed
  label with an empty name. Answering those with 200 is allowed here, and then the
  stream must carry the union of Loki's categorised labels; the categorised answer is
  compared as for any other row.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from loki_async.logproto import PushStream
from tests.conftest import Loki, base_config
from tests.lokiclient import client, push

EVAL_CASES = Path("/work/shared/conformance/logql/eval_cases.jsonl")
NS = 10**9
WINDOW_NS = 1 * NS  # log rows are read over ts-1s .. ts+1s
CARRIER_OFFSET_NS = 300 * NS  # the harness's carrier entry precedes the row's entry by 300 s
CARRIER_LINE = b"carrier entry"
CARRIER_NOTE = "empty input line: a non-empty carrier entry"
CATEGORIZE = {"X-Loki-Response-Encoding-Flags": "categorize-labels"}
CONCURRENT_QUERIES = 32

# Rows that cannot pass, with the reason; run as strict xfail.
XFAIL: dict[str, str] = {}


def _load_rows() -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in EVAL_CASES.read_text().splitlines() if line.strip()]
    return [r for r in rows if not r.get("loki_skipped")]


ROWS = _load_rows()


def _is_metric(row: dict[str, Any]) -> bool:
    return "loki_query_time_ns" in row


def _streams(rows: list[dict[str, Any]]) -> list[PushStream]:
    out = []
    for row in rows:
        p = row["loki_push"]
        entries = [
            (
                p["timestamp_ns"],
                p["line"].encode(),
                sorted((p["structured_metadata"] or {}).items()),
            )
        ]
        if any(note.startswith(CARRIER_NOTE) for note in row["harness_notes"]):
            entries.insert(0, (p["timestamp_ns"] - CARRIER_OFFSET_NS, CARRIER_LINE, []))
        timestamps, lines, metadata = zip(*entries, strict=True)
        out.append(
            PushStream(sorted(p["labels"].items()), list(timestamps), list(lines), list(metadata))
        )
    return out


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # the decoded JSON document, or the text of a non-JSON answer


async def _get(
    session: aiohttp.ClientSession, url: str, params: dict[str, str], headers: dict[str, str]
) -> Answer:
    async with session.get(url, params=params, headers=headers) as r:
        raw = await r.read()
        if r.content_type == "application/json":
            return Answer(r.status, orjson.loads(raw))
        return Answer(r.status, raw.decode(errors="replace"))


async def _ask(session: aiohttp.ClientSession, base: str, row: dict[str, Any]) -> list[Answer]:
    """The row's answers: [instant] for a metric row, [default, categorized] for a log row."""
    query = row["loki_query"]
    if _is_metric(row):
        params = {"query": query, "time": str(row["loki_query_time_ns"])}
        return [await _get(session, f"{base}/loki/api/v1/query", params, {})]
    ts = row["loki_push"]["timestamp_ns"]
    params = {
        "query": query,
        "start": str(ts - WINDOW_NS),
        "end": str(ts + WINDOW_NS),
        "limit": "10",
        "direction": "forward",
    }
    url = f"{base}/loki/api/v1/query_range"
    return [await _get(session, url, params, {}), await _get(session, url, params, CATEGORIZE)]


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Answer]]]:
    workdir: Path = tmp_path_factory.mktemp("conformance")
    cfg = base_config(
        workdir,
        # The rows are dated 2022..Nov 2026: nothing may be refused as too old, nor as
        # too new on a machine whose clock is behind the data.
        limits_config={"reject_old_samples": False, "creation_grace_period": "87600h"},
        # Back-dated entries live in ingester memory only: ask the ingesters always.
        querier={"query_ingesters_within": "0s"},
    )
    loki = Loki(workdir, cfg).start()

    async def run() -> dict[str, list[Answer]]:
        async with client() as session:
            status, body = await push(session, loki.url, _streams(ROWS), "protobuf")
            assert status == 204, body
            gate = asyncio.Semaphore(CONCURRENT_QUERIES)

            async def one(row: dict[str, Any]) -> list[Answer]:
                async with gate:
                    return await _ask(session, loki.url, row)

            got = await asyncio.gather(*(one(r) for r in ROWS))
        return {r["id"]: a for r, a in zip(ROWS, got, strict=True)}

    try:
        yield asyncio.run(run())
    finally:
        loki.stop()


# --------------------------------------------------------------------------- checks


def _without_case_id(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "case_id"}


def _kept_entry(row: dict[str, Any], answer: Answer) -> tuple[dict[str, str], list[Any]] | None:
    """The entry of a successful log answer, checked against ``loki_kept`` and
    ``loki_line``: (stream labels without case_id, value), or None when none is due."""
    assert answer.status == 200, answer.body
    data = answer.body["data"]
    assert data["resultType"] == "streams"
    entries = [(s["stream"], v) for s in data["result"] for v in s["values"]]
    if not row["loki_kept"]:
        assert entries == []
        return None
    assert len(entries) == 1, entries
    stream, value = entries[0]
    assert value[1] == row["loki_line"]
    return _without_case_id(stream), value


def _check_default(row: dict[str, Any], answer: Answer) -> None:
    expected_labels = row["loki_labels"]
    if row["loki_http_status"] == 500:
        if answer.status == 500:
            return
        cat = row["loki_labels_categorized"]
        expected_labels = {**cat["stream"], **cat["structured_metadata"], **cat["parsed"]}
    entry = _kept_entry(row, answer)
    if entry is not None:
        assert entry[0] == expected_labels


def _check_categorized(row: dict[str, Any], answer: Answer) -> None:
    entry = _kept_entry(row, answer)
    assert answer.body["data"].get("encodingFlags") == ["categorize-labels"]
    if entry is None:
        return
    stream, value = entry
    cats = value[2] if len(value) > 2 else {}
    got = {
        "stream": stream,
        "structured_metadata": cats.get("structuredMetadata", {}),
        "parsed": cats.get("parsed", {}),
    }
    assert got == row["loki_labels_categorized"]


def _check_metric(row: dict[str, Any], answer: Answer) -> None:
    assert answer.status == 200, answer.body
    data = answer.body["data"]
    assert data["resultType"] == "vector"
    got = [
        {"metric": _without_case_id(s["metric"]), "value": s["value"][1]} for s in data["result"]
    ]
    assert sorted(got, key=repr) == sorted(row["loki_result"], key=repr)


def _marks(row_id: str) -> list[pytest.MarkDecorator]:
    reason = XFAIL.get(row_id)
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


@pytest.mark.parametrize("row", [pytest.param(r, id=r["id"], marks=_marks(r["id"])) for r in ROWS])
def test_row_answers_as_loki_does(row: dict[str, Any], answers: dict[str, list[Answer]]) -> None:
    got = answers[row["id"]]
    status = row["loki_http_status"]
    if status not in (200, 500):
        for answer in got:
            assert answer.status == status, answer.body
        return
    if _is_metric(row):
        _check_metric(row, got[0])
        return
    _check_categorized(row, got[1])
    _check_default(row, got[0])


def test_xfail_ids_are_rows() -> None:
    assert set(XFAIL) <= {r["id"] for r in ROWS}
