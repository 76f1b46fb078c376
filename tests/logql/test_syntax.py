"""The LogQL syntax layer against facts recorded from Grafana Loki 3.7.6.

Every row of the conformance files is a test case with the row id as its test id:
accepted queries parse and print as Loki's ``String()``; rejected queries raise
:class:`ParseError` with Loki's exact message (which contains the gist Loki's tests
check for). The rest pins down behaviour around those rows: regex semantics, error
positions, accessors the engine relies on, and robustness.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loki_async.logql import (
    Matcher,
    ParseError,
    parse_expr,
    parse_labels,
    parse_log_selector,
    parse_matchers,
    parse_sample_expr,
)
from loki_async.logql.ast import (
    BinaryLabelFilter,
    BinOpExpr,
    DurationLabelFilter,
    LabelFilterExpr,
    LabelReplaceExpr,
    LineFilterExpr,
    LineMatch,
    LiteralExpr,
    LogfmtParserExpr,
    MatchersExpr,
    PipelineExpr,
    RangeAggregationExpr,
    StringLabelFilter,
    VectorAggregationExpr,
    walk,
)
from loki_async.logql.lexer import Lexer, Tok
from loki_async.logql.literals import format_go_duration, parse_duration
from loki_async.logql.regex import GoRegexError, compile_go
from loki_async.logql.syntax import ERR_NO_EQUALITY_MATCHER, PatternError, parse_pattern

# Rows that cannot pass yet: row id -> precise reason (marked xfail, strict). None today.
XFAIL: dict[str, str] = {}

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "logql"


def _rows(name: str) -> list[dict[str, Any]]:
    with open(CONFORMANCE / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _params(rows: list[dict[str, Any]], suffix: str = "") -> list[Any]:
    out = []
    for row in rows:
        marks = (
            [pytest.mark.xfail(strict=True, reason=XFAIL[row["id"]])] if row["id"] in XFAIL else []
        )
        out.append(pytest.param(row, id=row["id"] + suffix, marks=marks))
    return out


def _query(row: dict[str, Any]) -> str:
    # One query holds invalid UTF-8: its bytes reach us as surrogate escapes.
    if "query_utf8_hex" in row:
        return bytes.fromhex(row["query_utf8_hex"]).decode("utf-8", "surrogateescape")
    return str(row["query"])


PARSE_ROWS = _rows("parse_valid.jsonl") + _rows("parse_invalid.jsonl")
LEX_ROWS = _rows("lex_cases.jsonl")
EVAL_ROWS = [r for r in _rows("eval_cases.jsonl") if r.get("loki_query")]
PATTERN_ROWS = _rows("pattern_cases.jsonl")

ENTRY_POINTS = {
    "ParseExpr": parse_expr,
    "ParseSampleExpr": parse_sample_expr,
    "ParseLogSelector": parse_log_selector,
    "ParseLogSelector(validate=false)": lambda q: parse_log_selector(q, validate=False),
    "ParseMatchers": parse_matchers,
    "ParseLabels": parse_labels,
}


# ---------------------------------------------------------------------------
# Conformance rows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("row", _params(PARSE_ROWS))
def test_parse_expr_accepts_rejects_and_prints_like_loki(row: dict[str, Any]) -> None:
    query = _query(row)
    if row["loki_accepts"]:
        expr = parse_expr(query)
        assert str(expr) == row["loki_string"]
        if "literal_value" in row:
            assert isinstance(expr, LiteralExpr)
            assert expr.value == row["literal_value"]
    else:
        with pytest.raises(ParseError) as info:
            parse_expr(query)
        assert str(info.value) == row["loki_error"]


@pytest.mark.parametrize("row", _params([r for r in PARSE_ROWS if r["loki_accepts"]], "-reparse"))
def test_printed_query_parses_to_the_same_query(row: dict[str, Any]) -> None:
    printed = str(parse_expr(_query(row)))
    assert str(parse_expr(printed)) == printed


ENTRY_CASES = [
    pytest.param(row, entry, result, id=f"{row['id']}-{entry}")
    for row in PARSE_ROWS
    for entry, result in (row.get("entry_point_results") or {}).items()
]


@pytest.mark.parametrize(("row", "entry", "result"), ENTRY_CASES)
def test_entry_points_accept_and_reject_like_loki(
    row: dict[str, Any], entry: str, result: dict[str, Any]
) -> None:
    parse = ENTRY_POINTS[entry]
    if result["accepts"]:
        out = parse(row["query"])
        if entry == "ParseLabels":
            assert dict(out) == row["loki_parse_labels"]
    else:
        with pytest.raises(ParseError) as info:
            parse(row["query"])
        assert str(info.value) == result["error"]


@pytest.mark.parametrize("row", _params([r for r in LEX_ROWS if "duration_input" in r]))
def test_duration_literal_is_lexed_to_lokis_nanoseconds(row: dict[str, Any]) -> None:
    (token, _eof) = Lexer(row["duration_input"]).tokenize()
    assert token.kind is Tok.DURATION
    assert token.value == row["loki_nanoseconds"]


@pytest.mark.parametrize("row", _params([r for r in LEX_ROWS if "tokens" in r], "-tokens"))
def test_lexer_produces_lokis_token_sequence(row: dict[str, Any]) -> None:
    tokens = Lexer(row["input"]).tokenize()
    assert [t.kind.name for t in tokens[:-1]] == row["tokens"]


@pytest.mark.parametrize("row", _params([r for r in LEX_ROWS if "input" in r], "-parse"))
def test_lexer_rows_parse_like_lokis_format_query(row: dict[str, Any]) -> None:
    if row["loki_format_query_accepts"]:
        parse_expr(row["input"])
    else:
        with pytest.raises(ParseError) as info:
            parse_expr(row["input"])
        assert str(info.value) == row["loki_error"]


@pytest.mark.parametrize("row", _params(EVAL_ROWS))
def test_evaluation_queries_parse_exactly_when_loki_parses_them(row: dict[str, Any]) -> None:
    if row["loki_query_parses"]:
        parse_expr(row["loki_query"])
    else:
        with pytest.raises(ParseError) as info:
            parse_expr(row["loki_query"])
        assert str(info.value) == row["loki_error"]


@pytest.mark.parametrize("row", _params([r for r in PATTERN_ROWS if "loki_query" in r]))
def test_pattern_parser_stage_errors_are_lokis(row: dict[str, Any]) -> None:
    # `| pattern` compiles at parse time; `|>` patterns only when the query runs.
    if row["loki_format_query_accepts"]:
        parse_expr(row["loki_query"])
    else:
        with pytest.raises(ParseError) as info:
            parse_expr(row["loki_query"])
        assert str(info.value) == row["loki_error"]


# ---------------------------------------------------------------------------
# Matchers and Go regex semantics
# ---------------------------------------------------------------------------


def test_regex_matcher_is_fully_anchored_and_dot_matches_newline() -> None:
    m = Matcher("app", "=~", "fo.*")
    assert m.matches("foo")
    assert m.matches("fo\nx")
    assert not m.matches("xfoo")
    assert not Matcher("app", "=~", "foo").matches("foo\n")


def test_negative_matchers_and_missing_labels() -> None:
    assert Matcher("a", "!=", "x").matches("")
    assert Matcher("a", "!~", "x|y").matches("z")
    assert not Matcher("a", "!~", "x|y").matches("y")
    assert Matcher("a", "=~", ".*").matches("")


@pytest.mark.parametrize(
    ("regex", "text", "full_match"),
    [
        (r"\d+", "123", True),
        (r"\d+", "١٢٣", False),  # Go's \d is ASCII
        (r"\w+", "héllo", False),
        (r"\s", "\v", False),
        (r"a$", "a\n", False),  # $ is the end of the text
        (r"(?m)a$\nb", "a\nb", True),
        (r"a(?i)b|c", "aB", True),  # flags run to the end of the group, across |
        (r"a(?i)b|c", "C", True),
        (r"(?i:a)b", "AB", False),
        (r"\Qa.b\E", "a.b", True),
        (r"\Qa.b\E", "axb", False),
        (r"\x{263a}", "☺", True),
        (r"[[:upper:]]+", "ABC", True),
        (r"\pL+", "héllo", True),
        (r"[^\D]", "7", True),
        (r"a{,2}", "a{,2}", True),  # not a repeat in Go
        (r"\bfoo\b", "foo", True),
    ],
)
def test_go_regex_semantics(regex: str, text: str, full_match: bool) -> None:
    assert (compile_go(regex).pattern.fullmatch(text) is not None) is full_match


def test_ungreedy_flag_swaps_greediness() -> None:
    m = compile_go("(?U)(a+)(a*)").pattern.match("aaa")
    assert m is not None and m.group(1) == "a"
    m = compile_go("(?U)(a+?)").pattern.match("aaa")
    assert m is not None and m.group(1) == "aaa"


def test_capture_names_are_reported_in_order() -> None:
    regex = compile_go(r"(?P<a>x)(y)(?<b>z)")
    assert regex.group_names == ("a", "", "b")
    m = regex.pattern.match("xyz")
    assert m is not None and m.groups() == ("x", "y", "z")


@pytest.mark.parametrize(
    ("regex", "message"),
    [
        (r"\q", r"error parsing regexp: invalid escape sequence: `\q`"),
        ("a**", "error parsing regexp: invalid nested repetition operator: `**`"),
        ("(a", "error parsing regexp: missing closing ): `(a`"),
        ("a)", "error parsing regexp: unexpected ): `a)`"),
        ("[z-a]", "error parsing regexp: invalid character class range: `z-a`"),
        ("x{1001}", "error parsing regexp: invalid repeat count: `{1001}`"),
        ("(?=x)", "error parsing regexp: invalid or unsupported Perl syntax: `(?=`"),
        (r"\1", r"error parsing regexp: invalid escape sequence: `\1`"),
    ],
)
def test_regexes_go_rejects_are_rejected_with_gos_message(regex: str, message: str) -> None:
    with pytest.raises(GoRegexError) as info:
        compile_go(regex)
    assert str(info.value) == message


def test_invalid_regex_in_a_selector_is_a_parse_error() -> None:
    with pytest.raises(ParseError) as info:
        parse_expr('{app=~"(foo"}')
    assert str(info.value) == "parse error : error parsing regexp: missing closing ): `(foo`"


def test_unicode_scripts_are_rejected_as_unsupported() -> None:
    with pytest.raises(ParseError, match="unsupported Unicode script"):
        parse_expr(r'{app=~"\\p{Greek}+"}')


# ---------------------------------------------------------------------------
# The tree the engine reads
# ---------------------------------------------------------------------------


def test_log_selector_exposes_matchers_stages_and_line_filters() -> None:
    expr = parse_log_selector('{app="foo", env=~"prod|dev"} |= "err" or "warn" | logfmt --strict')
    assert isinstance(expr, PipelineExpr)
    assert [str(m) for m in expr.matchers] == ['app="foo"', 'env=~"prod|dev"']
    (line_filter,) = expr.line_filters
    assert line_filter == LineFilterExpr("|=", (LineMatch("err"), LineMatch("warn")))
    assert expr.stages[1] == LogfmtParserExpr(strict=True)


def test_negative_line_filter_or_chain_becomes_separate_filters() -> None:
    expr = parse_log_selector('{app="foo"} != "a" or ip("10.0.0.1")')
    assert expr.line_filters == (
        LineFilterExpr("!=", (LineMatch("a"),)),
        LineFilterExpr("!=", (LineMatch("10.0.0.1", ip=True),)),
    )


def test_range_aggregation_exposes_range_offset_unwrap_and_grouping() -> None:
    expr = parse_expr(
        'quantile_over_time(0.99, {app="foo"} | json | unwrap duration(latency) '
        '| __error__="" [5m] offset 1h) by (pod)'
    )
    assert isinstance(expr, RangeAggregationExpr)
    assert expr.params == 0.99
    assert expr.left.interval_ns == 300 * 10**9
    assert expr.left.offset_ns == 3600 * 10**9
    assert expr.left.unwrap is not None
    assert (expr.left.unwrap.operation, expr.left.unwrap.identifier) == ("duration", "latency")
    assert expr.grouping is not None and expr.grouping.groups == ("pod",)
    assert [str(m) for m in expr.selector.matchers] == ['app="foo"']


def test_range_may_follow_the_selector_or_the_pipeline() -> None:
    a = parse_expr('count_over_time({app="foo"}[5m] |= "x")')
    b = parse_expr('count_over_time({app="foo"} |= "x" [5m])')
    assert a == b


def test_vector_aggregation_grouping_may_come_before_or_after() -> None:
    a = parse_expr('sum by (a) (rate({x="y"}[1m]))')
    b = parse_expr('sum(rate({x="y"}[1m])) by (a)')
    assert isinstance(a, VectorAggregationExpr)
    assert a == b


def test_binary_operator_precedence_and_associativity() -> None:
    expr = parse_expr('rate({a="b"}[1m]) + rate({a="b"}[1m]) * 2 ^ 3 ^ 2 > bool 1')
    assert isinstance(expr, BinOpExpr) and expr.op == ">" and expr.return_bool
    assert parse_expr("2 ^ 3 ^ 2") == LiteralExpr(512.0)
    assert parse_expr("10 / 5 / 2") == LiteralExpr(1.0)
    assert math.isnan(parse_expr("1 % 0").value)  # type: ignore[attr-defined]


def test_label_filters_group_as_lokis_grammar() -> None:
    expr = parse_log_selector('{a="b"} | x="1" or y="2", z="3" | d > 1s')
    first, second = (s for s in expr.stages if isinstance(s, LabelFilterExpr))
    assert str(first) == '| ( x="1" or ( y="2" , z="3" ) )'
    assert isinstance(first.filter, BinaryLabelFilter) and not first.filter.is_and
    assert second.filter == DurationLabelFilter("d", ">", 10**9)


def test_label_filter_regex_prints_in_backticks_only_when_loki_keeps_a_regexp() -> None:
    expr = parse_log_selector('{a="b"} | x=~"foo.*" | y=~"^(a|b)$" | z!~".+"')
    assert str(expr) == '{a="b"} | x=~"foo.*" | y=~`^(a|b)$` | z!~".+"'
    (_, stage, _) = expr.stages
    assert isinstance(stage, LabelFilterExpr) and isinstance(stage.filter, StringLabelFilter)


def test_label_replace_regex_is_anchored() -> None:
    expr = parse_expr('label_replace(rate({a="b"}[1m]), "dst", "$1", "src", "(.*)-x")')
    assert isinstance(expr, LabelReplaceExpr)
    assert expr.pattern.match("abc-x") is not None
    assert expr.pattern.match("abc-xy") is None


def test_walk_visits_every_node() -> None:
    expr = parse_expr('sum(rate({a="b"} |= "x" [1m])) / count(rate({c="d"}[1m]))')
    selectors = [n for n in walk(expr) if isinstance(n, MatchersExpr)]
    assert [str(s) for s in selectors] == ['{a="b"}', '{c="d"}']


# ---------------------------------------------------------------------------
# Errors: wording and positions
# ---------------------------------------------------------------------------


_AT = "parse error at line {}, col {}: "
_NOPOS = "parse error : "

ERROR_CASES = [
    # Tokens Loki completes with Scanner.Next (ranges, durations, two-character
    # operators) report line 0; the end of the input is after the last character.
    ('{a="b"}\n| json\n| x=~', _AT.format(3, 6) + "syntax error: unexpected $end, "
     "expecting STRING"),
    ('sum({a="b"}[5m])', _AT.format(0, 12) + "syntax error: unexpected RANGE"),
    ("", _NOPOS + "syntax error: unexpected $end"),
    ('rate({a="b"}[5m]', _AT.format(1, 17) + "syntax error: unexpected $end, expecting )"),
    ('{a="b"} | unwrap x', _AT.format(1, 11) + "syntax error: unexpected unwrap"),
    ('{a="b"} | distinct x', _AT.format(1, 20) + "syntax error: unexpected IDENTIFIER"),
    # Scanner errors keep the position of their token.
    ('{a="b"} |= "\\q"', _AT.format(1, 12) + "invalid char escape"),
    ('{a="b"} | x > 1PB', _AT.format(1, 15) + "'P' exponent requires hexadecimal mantissa"),
    # Errors without a position: regexes, patterns, validation.
    ('{a="b"} | regexp "(a"', _NOPOS + "invalid regexp parser: error parsing regexp: "
     "missing closing ): `(a`"),
    ('{a="b"} | regexp "a"', _NOPOS + "invalid regexp parser: at least one named capture "
     "must be supplied"),
    ('label_replace(vector(1), "a", "b", "c", "(")', _NOPOS + "invalid regex in label_replace: "
     "error parsing regexp: missing closing ): `^(?:()$`"),
    ('sum_over_time({a="b"}[1m])', _NOPOS + "invalid aggregation sum_over_time without unwrap"),
    ("{}", _NOPOS + ERR_NO_EQUALITY_MATCHER),
]  # fmt: skip


@pytest.mark.parametrize(("query", "message"), ERROR_CASES)
def test_error_messages_and_positions(query: str, message: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_expr(query)
    assert str(info.value) == message


def test_parse_error_is_a_bad_request() -> None:
    with pytest.raises(ParseError) as info:
        parse_expr("{")
    assert info.value.status == 400
    assert (info.value.line, info.value.col) == (1, 2)


def test_selector_with_only_empty_compatible_matchers_is_valid_without_validation() -> None:
    expr = parse_log_selector('{app=~".*"} | x="y"', validate=False)
    assert str(expr) == '{app=~".*"} | x="y"'
    assert parse_matchers("{}", validate=False) == []


def test_input_size_is_limited_like_loki() -> None:
    with pytest.raises(ParseError, match=r"input size too long \(131072 > 131072\)"):
        parse_expr("1" * 131072)


def test_deep_nesting_is_a_parse_error_not_a_crash() -> None:
    with pytest.raises(ParseError, match="nested too deeply"):
        parse_expr("(" * 5000 + "1" + ")" * 5000)


# ---------------------------------------------------------------------------
# Push labels, patterns, durations
# ---------------------------------------------------------------------------


def test_parse_labels_sorts_and_drops_empty_values() -> None:
    assert parse_labels('{job="foo", app="x", empty=""}') == [("app", "x"), ("job", "foo")]
    assert parse_labels('up{a="1"}') == [("__name__", "up"), ("a", "1")]
    with pytest.raises(ParseError, match=r'^1:6: parse error: unexpected "}" in label set'):
        parse_labels("{job=}")


def test_parse_pattern_splits_literals_and_captures() -> None:
    nodes = parse_pattern('<ip> - [<_>] "<method>"')
    assert [type(n).__name__ for n in nodes] == [
        "PatternCapture", "PatternLiteral", "PatternCapture", "PatternLiteral",
        "PatternCapture", "PatternLiteral",
    ]  # fmt: skip
    with pytest.raises(PatternError, match="consecutive capture '<a><b>'"):
        parse_pattern("x <a><b>")


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("5d", "120h0m0s"),
        ("1h0.5m", "1h0m30s"),
        ("-1s", "-1s"),
        ("1.5ms", "1.5ms"),
        ("250us", "250µs"),
    ],
)
def test_label_filter_durations_use_prometheus_then_go_syntax(text: str, printed: str) -> None:
    assert format_go_duration(parse_duration(text)) == printed


# ---------------------------------------------------------------------------
# Robustness
# ---------------------------------------------------------------------------

_PIECES = [
    "{", "}", "(", ")", "[5m]", "[", "]", '"a"', "`b`", "|", "|=", "!=", "|~", "!~", "|>", "!>",
    "=", "==", "=~", ">", "<=", ",", " ", "\n", "or", "and", "unless", "by", "without", "bool",
    "on", "ignoring", "group_left", "sum", "rate(", "topk(", "label_replace(", "vector(",
    "variants(", "of", "offset", "5m", "-1s", "1.5", "0x1p3", "0b1", "1e", "10KB", "1PB",
    "json", "logfmt", "--strict", "regexp", "pattern", "unwrap", "bytes(", "ip(", "foo",
    "#", "/*", "\\", '"\\q"', "\udcff", "\x00", "µ", "+", "-", "*", "/", "^", ".", "0",
    '"(?P<a>x)"', '"<a> <b>"', "'a'", '"(?i)a|b"',
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=()), max_size=80))
def test_random_text_raises_nothing_but_parse_error(text: str) -> None:
    for parse in (parse_expr, parse_matchers, parse_labels):
        try:
            parse(text)
        except ParseError:
            pass


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=14).map("".join))
def test_token_soup_raises_nothing_but_parse_error_and_prints_reparseably(text: str) -> None:
    try:
        expr = parse_expr(text)
    except ParseError:
        return
    printed = str(expr)
    # Prometheus quotes non-identifier label names when printing, which LogQL cannot
    # read back (as in Loki); everything else must round-trip.
    if not re.search(r'[{,|] ?"[^"]*"(=|!=|=~|!~|>|<)', printed):
        assert str(parse_expr(printed)) == printed
