"""Pipelines and sample extraction against what a real Loki 3.7.6 did.

Every row of ``eval_cases.jsonl`` (see the README next to it) was pushed to Loki and
queried; here the same line runs through :func:`compile_pipeline` (log queries) or
:func:`compile_sample_extractor` (metric queries) on a one-entry block, and must give
Loki's answer: kept or not, the line, the labels and their categories, the sample.
``pattern_cases.jsonl`` rows check ``| pattern`` captures and ``|>`` matches the same
way. Rows we cannot match are listed in ``XFAIL`` with the reason (strict).
"""

from __future__ import annotations

import json
import math
from array import array
from pathlib import Path
from typing import Any

import pytest

from loki_async.chunk import Block, build_block, decode_block, encode_metadata
from loki_async.errors import BadRequest
from loki_async.logproto import format_labels
from loki_async.logql import parse_expr, parse_labels
from loki_async.logql.ast import (
    LogSelectorExpr,
    RangeAggregationExpr,
    VectorAggregationExpr,
    walk,
)
from loki_async.logql.pipeline import compile_pipeline, compile_sample_extractor

DATA = Path("/work/shared/conformance/logql")
LOG = "log query_range"
METRIC = "metric instant query"

XFAIL: dict[str, str] = {}


def _rows(name: str) -> list[dict[str, Any]]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


EVAL_ROWS = [r for r in _rows("eval_cases.jsonl") if not r.get("loki_skipped")]
PATTERN_ROWS = _rows("pattern_cases.jsonl")


def _params(rows: list[dict[str, Any]], kind: str) -> list[Any]:
    out = []
    for r in rows:
        if not (r.get("loki_query_type") or "").startswith(kind):
            continue
        marks = []
        if r["id"] in XFAIL:
            marks.append(pytest.mark.xfail(reason=XFAIL[r["id"]], strict=True))
        out.append(pytest.param(r, id=r["id"], marks=marks))
    return out


def _stream(labels: dict[str, str]) -> str:
    """The canonical label string Loki stores: empty values dropped, sorted."""
    return format_labels(sorted((k, v) for k, v in labels.items() if v != ""))


def _block(line: bytes, ts: int, metadata: dict[str, str] | None) -> Block:
    meta = [encode_metadata(list(metadata.items()))] if metadata else None
    raw = build_block(array("q", [ts]), array("I", [len(line)]), line, meta)
    return decode_block(raw)


def _without_case(labels: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k != "case_id"}


def _run_log(row: dict[str, Any]) -> tuple[bool, bytes | None, Any]:
    """(kept, line, labels) of the row's pushed entry under its query."""
    push = row["loki_push"]
    expr = parse_expr(row["loki_query"])
    assert isinstance(expr, LogSelectorExpr)
    pipeline = compile_pipeline(expr)
    block = _block(push["line"].encode(), push["timestamp_ns"], push["structured_metadata"])
    idx = pipeline.filter_block(block, 0, 1)
    if not idx:
        return False, None, None
    assert pipeline.block_may_match(block.blob), "block_may_match rejected a kept line"
    r = pipeline.for_stream(_stream(push["labels"])).process(
        block.ts[0], block.line(0), block.metadata(0)
    )
    if r is None:
        return False, None, None
    return True, r[0], r[1]


@pytest.mark.parametrize("row", _params(EVAL_ROWS, LOG))
def test_log_query_matches_loki(row: dict[str, Any]) -> None:
    if row["loki_http_status"] == 400:
        with pytest.raises(BadRequest):
            _run_log(row)
        return
    kept, line, labels = _run_log(row)
    assert kept == row["loki_kept"]
    if not kept:
        return
    assert line is not None
    assert line.decode("utf-8", "replace") == row["loki_line"]
    want = row["loki_labels_categorized"]
    got = {
        "stream": _without_case(labels.stream),
        "structured_metadata": dict(labels.structured_metadata),
        "parsed": dict(labels.parsed),
    }
    assert got == want
    assert labels.key == format_labels(sorted(labels.labels.items()))
    if row["loki_http_status"] == 200:
        assert _without_case(labels.labels) == row["loki_labels"]


def _range_and_outer(expr: Any) -> tuple[RangeAggregationExpr, VectorAggregationExpr | None]:
    ranges = [e for e in walk(expr) if isinstance(e, RangeAggregationExpr)]
    assert len(ranges) == 1
    outer = expr if isinstance(expr, VectorAggregationExpr) else None
    return ranges[0], outer


@pytest.mark.parametrize("row", _params(EVAL_ROWS, METRIC))
def test_metric_query_sample_matches_loki(row: dict[str, Any]) -> None:
    push = row["loki_push"]
    expr = parse_expr(row["loki_query"])
    rng, outer = _range_and_outer(expr)
    ex = compile_sample_extractor(rng, expr)
    block = _block(push["line"].encode(), push["timestamp_ns"], push["structured_metadata"])
    idx = ex.pipeline.filter_block(block, 0, 1)
    samples = ex.for_stream(_stream(push["labels"])).extract_block(block, idx)
    if row["loki_http_status"] == 400:
        # Loki refuses a query whose series carry __error__: the extractor must mark it.
        assert len(samples) == 1
        assert "__error__" in dict(parse_labels(next(iter(samples))))
        return
    assert bool(samples) == row["loki_kept"]
    if not samples or row.get("loki_value") is None:
        return
    assert len(samples) == 1
    key, (ts, values) = next(iter(samples.items()))
    assert list(ts) == [push["timestamp_ns"]]
    assert math.isclose(values[0], row["loki_value"], rel_tol=1e-12)
    labels = dict(parse_labels(key))
    if outer is not None:
        groups = set(outer.grouping.groups)
        if outer.grouping.without:
            labels = {k: v for k, v in labels.items() if k not in groups}
        else:
            labels = {k: v for k, v in labels.items() if k in groups}
    assert _without_case(labels) == row["loki_labels"]


def _pattern_params() -> list[Any]:
    out = []
    for r in PATTERN_ROWS:
        marks = []
        if r["id"] in XFAIL:
            marks.append(pytest.mark.xfail(reason=XFAIL[r["id"]], strict=True))
        out.append(pytest.param(r, id=r["id"], marks=marks))
    return out


def _pattern_run(query: str, line: str, case: str) -> tuple[bool, Any]:
    expr = parse_expr(query)
    assert isinstance(expr, LogSelectorExpr)
    pipeline = compile_pipeline(expr)
    block = _block(line.encode(), 1, None)
    if not pipeline.filter_block(block, 0, 1):
        return False, None
    r = pipeline.for_stream(_stream({"case_id": case})).process(1, block.line(0), b"")
    return (r is not None), (r[1] if r else None)


@pytest.mark.parametrize("row", _pattern_params())
def test_pattern_matches_loki(row: dict[str, Any]) -> None:
    if "loki_accepts" in row:
        if row["loki_accepts"]:
            expr = parse_expr(row["loki_query"])
            assert isinstance(expr, LogSelectorExpr)
            compile_pipeline(expr)
        else:
            with pytest.raises(BadRequest):
                expr = parse_expr(row["loki_query"])
                assert isinstance(expr, LogSelectorExpr)
                compile_pipeline(expr)
        return
    kept, labels = _pattern_run(row["loki_capture_query"], row["input_line"], row["id"])
    assert kept
    assert dict(labels.parsed) == row["loki_parsed_labels"]
    matched, _ = _pattern_run(row["loki_match_query"], row["input_line"], row["id"])
    assert matched == row["loki_line_filter_matches"]
