"""Pipeline stages, block fast paths and sample extraction, with values worked out by
hand from Loki's documented behaviour."""

from __future__ import annotations

import json
import re
from array import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loki_async.chunk import Block, build_block, decode_block, encode_metadata
from loki_async.errors import BadRequest
from loki_async.logql import parse_expr
from loki_async.logql.ast import LogSelectorExpr, RangeAggregationExpr, walk
from loki_async.logql.parsers import (
    J_NULL,
    each_key,
    json_string_value,
    logfmt_fast,
    logfmt_scan,
)
from loki_async.logql.pipeline import (
    LineLabels,
    Pipeline,
    compile_pipeline,
    compile_sample_extractor,
)

STREAM = '{app="api", env="prod"}'


def pipeline(query: str) -> Pipeline:
    expr = parse_expr(query)
    assert isinstance(expr, LogSelectorExpr)
    return compile_pipeline(expr)


def block_of(lines: list[bytes], metadata: list[dict[str, str]] | None = None) -> Block:
    meta = [encode_metadata(list(m.items())) for m in metadata] if metadata else None
    raw = build_block(
        array("q", range(1, len(lines) + 1)),
        array("I", [len(x) for x in lines]),
        b"".join(lines),
        meta,
    )
    return decode_block(raw)


def run(query: str, line: bytes, labels: str = STREAM, meta: dict[str, str] | None = None):
    """(line, LineLabels) of one line through the whole pipeline, or None if dropped."""
    p = pipeline(query)
    b = block_of([line], [meta] if meta else None)
    if not p.filter_block(b, 0, 1):
        return None
    return p.for_stream(labels).process(b.ts[0], b.line(0), b.metadata(0))


def parsed(query: str, line: bytes, labels: str = STREAM) -> dict[str, str]:
    r = run(query, line, labels)
    assert r is not None
    return dict(r[1].parsed)


def kept(query: str, line: bytes) -> bool:
    return run(query, line) is not None


# ---------------------------------------------------------------------------
# Line filters
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "line", "want"),
    [
        ('{a="b"} |= "foo"', b"xfooy", True),
        ('{a="b"} |= "foo"', b"fo", False),
        ('{a="b"} != "foo"', b"xfooy", False),
        ('{a="b"} |~ "f.o"', b"a fxo b", True),
        ('{a="b"} |~ "^f.o$"', b"a fxo b", False),
        ('{a="b"} !~ "f.o"', b"fzo", False),
        ('{a="b"} |~ "(?i)FOO"', b"a foo", True),
        ('{a="b"} |~ "(?i)foo"', b"\xe2\x84\xaaFOO", True),  # Kelvin sign K, then FOO
        ('{a="b"} |= "foo" or "bar"', b"bar", True),
        ('{a="b"} != "foo" or "bar"', b"bar", False),
        ('{a="b"} |= "" or "bar"', b"foo", False),  # Loki drops the always-true leg
        ('{a="b"} != ""', b"foo", False),
        ('{a="b"} |~ ".+"', b"\n", True),  # simplified to "non-empty"
        ('{a="b"} |> "<_> bar <_>"', b"foo bar baz", True),
        ('{a="b"} |> "<_> bar <_>"', b" bar ", False),  # empty captures never match
        ('{a="b"} |> "foo <_>"', b"xfoo bar", True),  # a leading literal is not anchored
        ('{a="b"} !> "foo <_>"', b"foo", True),
        ('{a="b"} |= ip("10.0.0.0/8")', b"from 10.1.2.3:80", True),
        ('{a="b"} |= ip("10.0.0.0/8")', b"from 110.1.2.3", False),
        ('{a="b"} |= ip("10.0.0.1-10.0.0.9")', b"a=10.0.0.10 b=10.0.0.5", True),
        ('{a="b"} != ip("::1")', b"addr ::1 up", False),
        # In an or-chain ip() is text.
        ('{a="b"} |= ip("10.0.0.1") or "zzz"', b"x 10.0.0.10", True),
    ],
)
def test_line_filter(query: str, line: bytes, want: bool) -> None:
    assert kept(query, line) is want


def test_ip_line_filter_rejects_regex_operators() -> None:
    with pytest.raises(BadRequest, match=r"stage '\|~ ip\(\"1.2.3.4\"\)' : ip: invalid operation"):
        pipeline('{a="b"} |~ ip("1.2.3.4")')


def test_pattern_line_filter_rejects_named_captures() -> None:
    with pytest.raises(BadRequest, match="named captures are not allowed: found '<x>'"):
        pipeline('{a="b"} |> "<x> y"')


def test_line_filters_move_ahead_of_parsers_but_not_label_filters() -> None:
    p = pipeline('{a="b"} | json |= "err"')
    b = block_of([b'{"x":"err"}', b'{"x":"ok"}'])
    assert list(p.filter_block(b, 0, 2)) == [0]
    p = pipeline('{a="b"} | json | x="ok" |= "err"')
    assert list(p.filter_block(b, 0, 2)) == [0, 1]
    assert p.for_stream(STREAM).process(1, b.line(1), b"") is None


def test_line_filter_after_line_format_sees_the_new_line() -> None:
    pytest.importorskip("loki_async.logql.template")
    assert kept('{a="b"} | line_format "x{{.app}}" |= "xapi"', b"nothing")


def test_flags() -> None:
    assert pipeline('{a="b"}').noop
    assert pipeline('{a="b"} |= ""').noop
    p = pipeline('{a="b"} |= "x" != "y"')
    assert p.line_filter_only and not p.noop
    assert not pipeline('{a="b"} |= "x" | logfmt').line_filter_only


# ---------------------------------------------------------------------------
# Block fast paths against per-line evaluation
# ---------------------------------------------------------------------------

_FILTERS = [
    '|= "fo"',
    '!= "fo"',
    '|= "é"',
    '|~ "fo+"',
    '|~ "f.o"',
    '!~ "o$"',
    '|~ "^o"',
    '|~ "o*"',
    '|~ "(?i)fo"',
    '|~ "(?i)k"',
    '|~ "é|fo"',
    '|> "<_>fo<_>"',
    '!> "fo <_>"',
    '|= "fo" or "é"',
    '|= ip("1.2.3.4")',
    '!= ip("1.2.3.4")',
    '|= ip("::1")',
    '|~ ".+"',
]

_PIECES = ["f", "o", "fo", "foo", " ", "é", "日", "K", "K", "\n", "1.2.3.4", "::1", ":", "."]

lines_st = st.lists(st.lists(st.sampled_from(_PIECES), max_size=6).map("".join), max_size=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=lines_st,
    filters=st.lists(st.sampled_from(_FILTERS), min_size=1, max_size=3),
    bounds=st.tuples(st.integers(0, 30), st.integers(0, 30)),
)
def test_filter_block_agrees_with_per_line_evaluation(
    texts: list[str], filters: list[str], bounds: tuple[int, int]
) -> None:
    lines = [t.encode() for t in texts]
    block = block_of(lines) if lines else None
    chain = " ".join(filters)
    fast = pipeline('{a="b"} ' + chain)
    # The same filters behind a label filter run per line in process().
    slow = pipeline('{a="b"} | a!="x" ' + chain).for_stream('{a="b"}')
    if block is None:
        return
    lo, hi = sorted(min(b, len(lines)) for b in bounds)
    want = [i for i in range(lo, hi) if slow.process(1, lines[i], b"") is not None]
    assert list(fast.filter_block(block, lo, hi)) == want
    if any(slow.process(1, x, b"") is not None for x in lines):
        assert fast.block_may_match(block.blob)


@given(texts=lines_st)
def test_needle_filter_matches_substring_test(texts: list[str]) -> None:
    lines = [t.encode() for t in texts]
    if not lines:
        return
    block = block_of(lines)
    p = pipeline('{a="b"} |= "foo"')
    assert list(p.filter_block(block, 0, len(lines))) == [
        i for i, x in enumerate(lines) if b"foo" in x
    ]


def test_needle_across_line_boundary_is_not_a_match() -> None:
    block = block_of([b"xxfo", b"oyy", b"foo"])
    assert list(pipeline('{a="b"} |= "foo"').filter_block(block, 0, 3)) == [2]
    assert list(pipeline('{a="b"} |~ "fo+y"').filter_block(block, 0, 3)) == []
    assert pipeline('{a="b"} |= "zz"').block_may_match(block.blob) is False


def test_filter_block_honours_bounds_and_empty_lines() -> None:
    block = block_of([b"foo", b"", b"", b"foo", b"bar"])
    p = pipeline('{a="b"} |= "foo"')
    assert list(p.filter_block(block, 1, 4)) == [3]
    assert list(pipeline('{a="b"} != "foo"').filter_block(block, 0, 5)) == [1, 2, 4]
    assert list(pipeline('{a="b"}').filter_block(block, 1, 3)) == [1, 2]


# ---------------------------------------------------------------------------
# logfmt
# ---------------------------------------------------------------------------


def test_logfmt() -> None:
    line = b'level=info msg="hello world" app=x n=1 empty= flag'
    assert parsed('{a="b"} | logfmt', line) == {
        "level": "info",
        "msg": "hello world",
        "app_extracted": "x",
        "n": "1",
    }
    assert parsed('{a="b"} | logfmt --keep-empty', line)["empty"] == ""
    assert parsed('{a="b"} | logfmt --keep-empty', line)["flag"] == ""


def test_logfmt_first_value_wins_and_names_are_sanitized() -> None:
    line = b"a=1 a=2 foo.bar=3 9x=4 r=b\xef\xbf\xbdr"
    assert parsed('{a="b"} | logfmt', line) == {"a": "1", "foo_bar": "3", "_9x": "4", "r": "b r"}


def test_logfmt_escapes_and_errors() -> None:
    assert parsed('{a="b"} | logfmt', rb'm="a\"b\nc"') == {"m": 'a"b\nc'}
    got = parsed('{a="b"} | logfmt --strict', b"a=1 b==2 c=3")
    assert got == {
        "a": "1",
        "__error__": "LogfmtParserErr",
        "__error_details__": "logfmt syntax error at pos 7 : unexpected '='",
    }
    assert parsed('{a="b"} | logfmt', b"a=1 b==2 c=3") == {"a": "1", "c": "3"}
    got = parsed('{a="b"} | logfmt --strict', b'a="x')
    assert got["__error_details__"] == "logfmt syntax error at pos 5 : unterminated quoted value"


def test_logfmt_expressions() -> None:
    line = b"level=error ts=1 msg=x"
    assert parsed('{a="b"} | logfmt lvl="level", nope', line) == {"lvl": "error", "nope": ""}
    with pytest.raises(BadRequest, match=r"cannot parse expression \[a\.b\]: unexpected char \."):
        pipeline('{a="b"} | logfmt x="a.b"')


_LF_TOKENS = ["a", "b=", "=", '"', "\\", " ", "x", "é", "\t", "c=d", 'e="f g"', 'h="i\\"j"']


@given(st.lists(st.sampled_from(_LF_TOKENS), max_size=12).map("".join))
def test_logfmt_fast_path_agrees_with_decoder(text: str) -> None:
    fast = logfmt_fast(text)
    if fast is None:
        return
    scan = logfmt_scan(text.encode())
    # On a line the fast path accepts, the decoder never fails.
    assert all(ok for ok, key, _value, _err in scan if key)
    slow = [(k.decode(), v.decode()) for ok, k, v, _err in scan if ok]
    assert [(k, q or u) for k, q, u in fast] == slow


# ---------------------------------------------------------------------------
# JSON and unpack
# ---------------------------------------------------------------------------


def test_json_flattens_objects_and_keeps_numbers_as_written() -> None:
    line = b'{"a":{"b":1.50,"c":[1,2],"9":true},"n":null,"e":1e3,"app":"x","s":"\\u00e9"}'
    assert parsed('{a="b"} | json', line) == {
        "a_b": "1.50",
        "a_9": "true",
        "e": "1e3",
        "app_extracted": "x",
        "s": "é",
    }


def test_json_lenient_and_errors_keep_earlier_labels() -> None:
    # Loki's jsonparser fork refuses a trailing comma, unless whitespace follows it.
    assert parsed('{a="b"} | json', b'{"a":"x", }') == {"a": "x"}
    assert parsed('{a="b"} | json', b'{"a":"x",}') == {
        "a": "x",
        "__error__": "JSONParserErr",
        "__error_details__": "Value looks like object, but can't find closing '}' symbol",
    }
    assert parsed('{a="b"} | json', b'{"a":"x"} trailing') == {"a": "x"}
    assert parsed('{a="b"} | json', b'{"a":"x", nope}') == {
        "a": "x",
        "__error__": "JSONParserErr",
        "__error_details__": "Value looks like object, but can't find closing '}' symbol",
    }
    assert parsed('{a="b"} | json', b'{"a":tru}')["__error_details__"] == "Unknown value type"


@given(
    st.dictionaries(
        st.text(alphabet="ab_ .1é", max_size=4),
        st.recursive(
            st.none() | st.booleans() | st.integers(-5, 5) | st.text(alphabet='x"\\é', max_size=3),
            lambda c: (
                st.dictionaries(st.text(alphabet="ab", max_size=2), c, max_size=3)
                | st.lists(c, max_size=2)
            ),
            max_leaves=6,
        ),
        max_size=5,
    )
)
def test_json_fast_path_agrees_with_scanner(doc: dict) -> None:
    line = json.dumps(doc).encode()
    fast = parsed('{a="b"} | json', line)
    # A leading space is still JSON but makes the fast path re-read the text; a
    # trailing "x" forces the jsonparser port.
    assert parsed('{a="b"} | json', b" " + line) == fast
    assert parsed('{a="b"} | json', line + b"x") == fast


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text(alphabet='x"\\é', max_size=3),
    lambda c: (
        st.dictionaries(st.text(alphabet="ab", max_size=2), c, max_size=3) | st.lists(c, max_size=3)
    ),
    max_leaves=8,
)


def _paths(doc: object, prefix: tuple[str, ...] = ()):
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _paths(v, (*prefix, f"[{i}]"))


@given(st.dictionaries(st.text(alphabet="ab", max_size=2), json_values, min_size=1, max_size=3))
def test_jsonparser_each_key_finds_what_navigation_finds(doc: dict) -> None:
    text = json.dumps(doc).encode()
    for path in list(_paths(doc))[1:]:
        node: object = doc
        for el in path:
            node = node[int(el[1:-1])] if el[:1] == "[" else node[el]  # type: ignore[index]
        found = each_key(text, [list(path)])
        assert found, path
        _, raw, typ, err = found[0]
        assert not err
        if isinstance(node, str):
            assert json_string_value(raw) == node
        elif node is None:
            assert typ == J_NULL
        else:
            assert raw.decode() == json.dumps(node)


def test_json_expressions() -> None:
    line = b'{"pod":{"uuid":"u1","deploy":{"ref": 1, "params":[1, "two"]}},"n":null}'
    assert parsed('{a="b"} | json u="pod.uuid", p="pod.deploy.params[1]", m="x"', line) == {
        "u": "u1",
        "p": "two",
        "m": "",
    }
    assert parsed('{a="b"} | json d="pod.deploy", n="n"', line) == {
        "d": '{"ref": 1, "params":[1, "two"]}',
        "n": "",
    }
    assert parsed('{a="b"} | json app="pod.uuid"', line, '{app="x"}') == {"app_extracted": "u1"}
    with pytest.raises(BadRequest, match=r"unexpected DOT, expecting FIELD"):
        pipeline('{a="b"} | json a="b..c"')


def test_unpack() -> None:
    r = run('{a="b"} | unpack', b'{"_entry":"the line","app":"x","k":"v","n":1}')
    assert r is not None
    assert r[0] == b"the line"
    assert dict(r[1].parsed) == {"app_extracted": "x", "k": "v"}
    assert parsed('{a="b"} | unpack', b'{"k":"v"}') == {}
    assert parsed('{a="b"} | unpack', b"[1]") == {
        "__error__": "JSONParserErr",
        "__error_details__": "expecting json object(6), but it is not",
    }


# ---------------------------------------------------------------------------
# regexp, pattern
# ---------------------------------------------------------------------------


def test_regexp_and_pattern() -> None:
    assert parsed('{a="b"} | regexp "(?P<app>\\\\w+) (?P<d>\\\\d+)?"', b"xx yy") == {
        "app_extracted": "xx",
        "d": "",
    }
    assert parsed('{a="b"} | regexp "(?P<x>z)"', b"nope") == {}
    line = b'1.2.3.4 - "GET /a HTTP/1.1" 200'
    assert parsed('{a="b"} | pattern "<ip> - \\"<m> <p> <_>\\" <s>"', line) == {
        "ip": "1.2.3.4",
        "m": "GET",
        "p": "/a",
        "s": "200",
    }
    # A missing literal ends the match: the capture takes the rest of the line.
    assert parsed('{a="b"} | pattern "<x>?<y>"', b"abc") == {"x": "abc"}


# ---------------------------------------------------------------------------
# Label filters, drop, keep, decolorize
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "line", "want"),
    [
        ('{a="b"} | logfmt | n > 5', b"n=6", True),
        ('{a="b"} | logfmt | n > 5', b"n=5", False),
        ('{a="b"} | logfmt | n > 5', b"m=6", False),
        ('{a="b"} | logfmt | d >= 1s500ms', b"d=1.5s", True),
        ('{a="b"} | logfmt | s < 1KB', b"s=999B", True),
        ('{a="b"} | logfmt | v =~ "a.*"', b"v=xa", True),  # Loki's substring quirk
        ('{a="b"} | logfmt | v =~ "a|b"', b"v=xa", False),
        ('{a="b"} | logfmt | v =~ "[ab]"', b"v=xa", False),
        ('{a="b"} | logfmt | v !~ ".+"', b"w=1", True),
        ('{a="b"} | logfmt | v = ""', b"w=1", True),
        ('{a="b"} | logfmt | ip = ip("10.0.0.0/8")', b"ip=10.2.3.4", True),
        ('{a="b"} | logfmt | n > 1 or v="x"', b"n=0 v=x", True),
        ('{a="b"} | logfmt | n > 1 and v="x"', b"n=0 v=x", False),
        ('{a="b"} | logfmt | app="api"', b"x=1", True),  # stream labels are filtered too
    ],
)
def test_label_filter(query: str, line: bytes, want: bool) -> None:
    assert kept(query, line) is want


def test_label_filter_conversion_error_keeps_the_line() -> None:
    assert parsed('{a="b"} | logfmt | n > 5', b"n=abc") == {
        "n": "abc",
        "__error__": "LabelFilterErr",
        "__error_details__": 'strconv.ParseFloat: parsing "abc": invalid syntax',
    }
    assert not kept('{a="b"} | logfmt | n > 5 | __error__=""', b"n=abc")


def test_drop_keep_decolorize() -> None:
    line = b"a=1 b=2 c=3"
    r = run('{a="b"} | logfmt | drop a, b="2", app', line)
    assert r is not None
    assert r[1].key == '{c="3", env="prod"}'
    r = run('{a="b"} | logfmt | keep a, env="dev"', line)
    assert r is not None
    assert r[1].key == '{a="1"}'
    r = run('{a="b"} | json | drop __error__, __error_details__', b"not json")
    assert r is not None and r[1].key == STREAM
    r = run('{a="b"} | decolorize', b"\x1b[0;32mgreen\x1b[0m!")
    assert r is not None and r[0] == b"green!"


def test_label_format_validation() -> None:
    with pytest.raises(BadRequest, match="multiple label name 'a' not allowed"):
        pipeline('{a="b"} | label_format a=b, a=c')
    with pytest.raises(BadRequest, match="__error__ cannot be formatted"):
        pipeline('{a="b"} | label_format __error__=b')


def test_label_format_renames_into_parsed_labels() -> None:
    r = run('{a="b"} | label_format stage=env', b"x")
    assert r is not None
    assert (r[1].stream, r[1].parsed) == ({"app": "api"}, {"stage": "prod"})


# ---------------------------------------------------------------------------
# Structured metadata and interning
# ---------------------------------------------------------------------------


def test_structured_metadata_is_categorized_and_normalized() -> None:
    r = run('{a="b"} | user="bob"', b"x", meta={"user": "bob", "app": "z", "bad-name": "1"})
    assert r is not None
    ll = r[1]
    assert ll.stream == {"app": "api", "env": "prod"}
    assert ll.structured_metadata == {"user": "bob", "app_extracted": "z", "bad_name": "1"}
    assert ll.parsed == {}


def test_equal_results_share_one_labels_object() -> None:
    p = pipeline('{a="b"} | logfmt')
    sp = p.for_stream(STREAM)
    a = sp.process(1, b"level=info", b"")
    b = sp.process(2, b"level=info", b"")
    c = sp.process(3, b"level=warn", b"")
    assert a is not None and b is not None and c is not None
    assert a[1] is b[1] and a[1] is not c[1]
    assert isinstance(a[1], LineLabels)
    assert p.for_stream(STREAM) is sp
    unchanged = pipeline('{a="b"} |= "x"').for_stream(STREAM).process(1, b"x", b"")
    assert unchanged is not None and unchanged[1].key == STREAM


# ---------------------------------------------------------------------------
# Sample extraction
# ---------------------------------------------------------------------------


def extract(query: str, lines: list[bytes], labels: str = STREAM) -> dict[str, list[float]]:
    expr = parse_expr(query)
    rng = next(e for e in walk(expr) if isinstance(e, RangeAggregationExpr))
    ex = compile_sample_extractor(rng, expr)
    block = block_of(lines)
    idx = ex.pipeline.filter_block(block, 0, len(lines))
    out = ex.for_stream(labels).extract_block(block, idx)
    return {k: list(v) for k, (_, v) in out.items()}


def test_count_and_bytes() -> None:
    lines = [b"foo", b"bar", b"foobar"]
    assert extract('count_over_time({a="b"} |= "foo" [1m])', lines) == {STREAM: [1.0, 1.0]}
    assert extract('bytes_over_time({a="b"} |= "foo" [1m])', lines) == {STREAM: [3.0, 6.0]}
    expr = parse_expr('count_over_time({a="b"} |= "foo" [1m])')
    assert isinstance(expr, RangeAggregationExpr)
    assert compile_sample_extractor(expr, expr).count_only
    grouped = parse_expr('sum by (env) (rate({a="b"}[1m]))')
    rng = next(e for e in walk(grouped) if isinstance(e, RangeAggregationExpr))
    assert not compile_sample_extractor(rng, grouped).count_only
    assert extract('sum by (env) (rate({a="b"}[1m]))', lines) == {'{env="prod"}': [1.0] * 3}


def test_unwrap_conversions_and_grouping() -> None:
    lines = [b"d=250ms b=1KiB n=2", b"d=1m b=2B n=x"]
    assert extract('max_over_time({a="b"} | logfmt | unwrap duration(d) [1m]) by (env)', lines) == {
        '{env="prod"}': [0.25, 60.0]
    }
    assert extract('max_over_time({a="b"} | logfmt | unwrap bytes(b) [1m]) by (env)', lines) == {
        '{env="prod"}': [1024.0, 2.0]
    }
    # Without `by`, the unwrapped label leaves the series; a failed conversion keeps
    # every label and marks the series.
    got = extract('max_over_time({a="b"} | logfmt | unwrap n [1m])', lines)
    assert got['{app="api", b="1KiB", d="250ms", env="prod"}'] == [2.0]
    err = next(k for k in got if "__error__" in k)
    assert 'n="x"' in err and '__error__="SampleExtractionErr"' in err
    assert got[err] == [0.0]
    assert extract('max_over_time({a="b"} | logfmt | unwrap n | __error__="" [1m])', lines) == {
        '{app="api", b="1KiB", d="250ms", env="prod"}': [2.0]
    }


def test_outer_sum_grouping_is_pushed_down_with_parser_hints() -> None:
    lines = [b"level=info x=1", b"level=warn x=2", b"level=info x=3"]
    assert extract('sum by (level) (count_over_time({a="b"} | logfmt [1m]))', lines) == {
        '{level="info"}': [1.0, 1.0],
        '{level="warn"}': [1.0],
    }
    assert extract('sum(count_over_time({a="b"} | logfmt --strict [1m]))', [b"a==b"]) == {
        "{}": [1.0]
    }  # nothing is parsed, so no error either (Loki's hints)
    assert extract('count_over_time({a="b"} | logfmt --strict [1m])', [b"a==b"]) != {"{}": [1.0]}
    assert extract('max by (level) (count_over_time({a="b"} | logfmt [1m]))', lines[:1]) == {
        '{app="api", env="prod", level="info", x="1"}': [1.0]
    }


def test_absent_over_time_counts_entries() -> None:
    assert extract('absent_over_time({a="b"} |= "x" [1m])', [b"x", b"y"]) == {STREAM: [1.0]}


def test_errors_are_bad_requests_with_loki_wording() -> None:
    with pytest.raises(BadRequest) as info:
        pipeline('{a="b"} | json a="[\\"x\\""')
    assert re.search(r"unexpected \$end, expecting RSB", str(info.value))
    with pytest.raises(BadRequest, match=r'ip: invalid pattern: "1.2.3.4-1.0.0.0"'):
        pipeline('{a="b"} | x=ip("1.2.3.4-1.0.0.0")')


LOGFMT_LIKE = [
    b'level=error msg="a b" level=warn',
    b"level= x=1",
    b'level="unterminated',
    b"=x level=debug",
    b"level_extracted=1 le.vel=2",
]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=40) | st.sampled_from(LOGFMT_LIKE), min_size=1, max_size=20))
def test_logfmt_block_fast_path_agrees_with_line_by_line(lines: list[bytes]) -> None:
    """`sum by (<stream label>)` over a non-strict `| logfmt`: the block path counts every
    line in the stream's series without parsing; the per-line path must agree."""
    expr = parse_expr('sum by (level) (count_over_time({app="a", level="info"} | logfmt [1m]))')
    (range_expr,) = [e for e in walk(expr) if isinstance(e, RangeAggregationExpr)]
    ex = compile_sample_extractor(range_expr, expr)
    sx = ex.for_stream('{app="a", level="info"}')
    assert sx.series_fixed
    b = block_of(lines)
    got = sx.extract_block(b, range(len(b)))
    keys = []
    for i in range(len(b)):
        r = sx.sp.run(b.ts[i], b.line(i), b"")
        assert r is not None
        keys.append(sx._key(r[1]))
    assert set(keys) == set(got) == {'{level="info"}'}
    assert list(got['{level="info"}'][0]) == list(b.ts)
