"""The LogQL pretty printer against Loki 3.7.6's ``format_query`` output.

Every accepted row of ``parse_valid.jsonl`` is a test case with the row id as its test
id: ``prettify`` at 100 characters must equal ``loki_formatted`` and, where the row has
one, ``prettify`` at 20 characters must equal ``loki_pretty_max_chars_per_line_20``. The
rest pins down the layout rules those rows do not reach.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from loki_async.logql import parse_expr
from loki_async.logql.pretty import prettify

# Rows that cannot pass yet: row id -> precise reason (marked xfail, strict). None today.
XFAIL: dict[str, str] = {}

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "logql"


def _accepted_rows() -> list[dict[str, Any]]:
    with open(CONFORMANCE / "parse_valid.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r for r in rows if r["loki_accepts"]]


def _params(rows: list[dict[str, Any]]) -> list[Any]:
    return [
        pytest.param(
            row,
            id=row["id"],
            marks=[pytest.mark.xfail(strict=True, reason=XFAIL[row["id"]])]
            if row["id"] in XFAIL
            else [],
        )
        for row in rows
    ]


def _query(row: dict[str, Any]) -> str:
    # A query holding invalid UTF-8 reaches us as surrogate escapes of its bytes.
    if "query_utf8_hex" in row:
        return bytes.fromhex(row["query_utf8_hex"]).decode("utf-8", "surrogateescape")
    return str(row["query"])


ROWS = _accepted_rows()
ROWS_AT_20 = [r for r in ROWS if "loki_pretty_max_chars_per_line_20" in r]


# ---------------------------------------------------------------------------
# Conformance rows
# ---------------------------------------------------------------------------


def test_conformance_rows_are_present() -> None:
    assert len(ROWS) >= 370
    assert len(ROWS_AT_20) >= 16


@pytest.mark.parametrize("row", _params(ROWS))
def test_prettify_matches_format_query(row: dict[str, Any]) -> None:
    assert prettify(parse_expr(_query(row))) == row["loki_formatted"]


@pytest.mark.parametrize("row", _params(ROWS_AT_20))
def test_prettify_at_20_chars_matches_loki(row: dict[str, Any]) -> None:
    expr = parse_expr(_query(row))
    assert prettify(expr, max_chars_per_line=20) == row["loki_pretty_max_chars_per_line_20"]


# ---------------------------------------------------------------------------
# Layout rules
# ---------------------------------------------------------------------------


def _lines(query: str, max_chars_per_line: int) -> list[str]:
    return prettify(parse_expr(query), max_chars_per_line).split("\n")


def test_short_query_is_its_string_form() -> None:
    expr = parse_expr('sum by (a,b) (rate({app="x"} | json [5m] offset 1h))')
    assert prettify(expr) == str(expr)


def test_line_filter_run_keeps_the_leading_part_that_fits() -> None:
    assert _lines('{app="x"} |= "aaaa" |= "bbbb" != "cccc" | logfmt', 26) == [
        '{app="x"}',
        '  |= "aaaa" |= "bbbb"',
        '  != "cccc"',
        "  | logfmt",
    ]


def test_split_line_filter_loses_its_or_alternatives_as_in_loki() -> None:
    query = '{app="x"} |= "aaaa" or "bbbb" | logfmt'
    assert _lines(query, 20) == ['{app="x"}', '  |= "aaaa" or "bbbb"', "  | logfmt"]
    assert _lines(query, 10) == ['{app="x"}', '  |= "aaaa"', "  | logfmt"]


def test_decolorize_is_never_indented() -> None:
    assert _lines('{app="x"} | logfmt | decolorize', 10) == [
        '{app="x"}',
        "  | logfmt",
        "| decolorize",
    ]


def test_line_length_counts_bytes_not_characters() -> None:
    # `{app="é"}` is 10 characters and 11 bytes.
    assert _lines('{app="é"} | json', 16) == ['{app="é"}', "  | json"]
    assert _lines('{app="é"} | json', 17) == ['{app="é"} | json']


def test_range_aggregation_params_print_as_go_percent_v() -> None:
    assert _lines('quantile_over_time(1000000, {app="x"} | unwrap n [1m])', 20) == [
        "quantile_over_time(",
        "  1e+06,",
        '  {app="x"}',
        "    | unwrap n [1m]",
        ")",
    ]


def test_range_and_offset_print_as_prometheus_durations() -> None:
    query = 'count_over_time({app="x"}[90m] offset 2h)'
    assert str(parse_expr(query)) == 'count_over_time({app="x"}[1h30m] offset 2h0m0s)'
    assert _lines(query, 20) == ["count_over_time(", '  {app="x"} [1h30m] offset 2h', ")"]


def test_negative_offset_prints_as_prometheus_does() -> None:
    # model.Duration.String() writes no units for a negative duration.
    assert _lines('count_over_time({app="x"}[5m] offset -5m)', 20) == [
        "count_over_time(",
        '  {app="x"} [5m] offset ',
        ")",
    ]


def test_without_no_labels_keeps_only_the_keyword() -> None:
    assert _lines('sum without () (rate({app="xyz"}[1m]))', 20) == [
        "sum without(",
        "  rate(",
        '    {app="xyz"} [1m]',
        "  )",
        ")",
    ]


def test_topk_parameter_comes_first() -> None:
    assert _lines('topk(3, rate({app="xyz"}[1m])) by (a,b)', 20) == [
        "topk by (a, b)(",
        "  3,",
        "  rate(",
        '    {app="xyz"} [1m]',
        "  )",
        ")",
    ]


def test_binop_shows_vector_matching_only_with_labels() -> None:
    query = 'rate({a="b"}[1m]) * on (x, y) group_right (z) rate({c="d"}[1m])'
    assert _lines(query, 30) == [
        '  rate({a="b"}[1m])',
        "* on (x, y) group_right (z)",
        '  rate({c="d"}[1m])',
    ]
    query = 'rate({a="b"}[1m]) > bool on () group_left rate({c="d"}[1m])'
    assert _lines(query, 30)[1] == "> bool"


def test_variants_are_always_split() -> None:
    assert _lines('variants(count_over_time({a="b"}[1m])) of ({a="b"}[1m])', 100) == [
        "variants(",
        '  count_over_time({a="b"}[1m])',
        ") of (",
        '  {a="b"} [1m]',
        ")",
    ]
