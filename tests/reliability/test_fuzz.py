"""Fuzzing: the LogQL parser, the push and OTLP decoders, the chunk reader, and the read
and ticket endpoints of one real ``-target=all`` program.

The contract under test: every input is either accepted or refused with the module's
own typed error (a :class:`~loki_async.errors.LokiError` below 500 with a message; for
the chunk reader, :class:`~loki_async.errors.CorruptDataError`), and over HTTP every
answer is below 500 and every 4xx carries a message. Grammar-aware strategies build
mostly valid inputs and then mutate them (tokens dropped, repeated, swapped, replaced;
fields dropped or retyped; bytes flipped; bodies truncated), raw strategies add noise.

Short in CI; the long run (at least 100,000 inputs; the inputs tried per target are
printed at the end of the module)::

    LOKI_ASYNC_RELIABILITY=long python3 -m pytest -q -m reliability tests/reliability/test_fuzz.py
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gzip
import struct
import time
import zlib
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterator
from urllib.parse import quote

import aiohttp
import cramjam
import msgpack
import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from yarl import URL

from loki_async import api
from loki_async.chunk import (
    ChunkReader,
    Codec,
    build_block,
    decode_block,
    decode_metadata,
    encode_chunk,
    encode_metadata,
)
from loki_async.errors import CorruptDataError, LokiError
from loki_async.logproto import PushStream, _uvarint, decode_push, encode_push_json
from loki_async.logql import ParseError, parse_expr
from loki_async.logql.ast import Expr, LogSelectorExpr, RangeAggregationExpr, SampleExpr
from loki_async.logql.engine import SampleSeries, evaluate
from loki_async.logql.pipeline import compile_pipeline, compile_sample_extractor
from loki_async.logql.pretty import prettify
from loki_async.otlp import decode_otlp
from tests import lokiclient
from tests.conftest import Loki, base_config
from tests.reliability.scale import LONG, scaled

pytestmark = pytest.mark.reliability

NS = 10**9
HOUR = 3600 * NS
NOW = time.time_ns()

# Inputs tried per target, printed when the module ends (shrinking runs count too),
# and the statuses of the HTTP answers (how far the inputs got).
INPUTS: Counter[str] = Counter()
STATUSES: Counter[str] = Counter()


def fuzz_settings(short: int, long: int, shrink: bool = True) -> settings:
    """CI runs a fixed, short set of inputs; the long run explores afresh each time.
    Without ``shrink`` a failure is reported as found (its message must say enough)."""
    return settings(
        max_examples=scaled(short, long),
        deadline=None,
        derandomize=not LONG,
        database=None,
        phases=[p for p in Phase if shrink or p not in (Phase.shrink, Phase.explain)],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def _report_inputs(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not INPUTS:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for target, n in sorted(INPUTS.items()):
            reporter.write_line(f"fuzz inputs: {target:<24} {n:>8}")
        reporter.write_line(f"fuzz inputs: {'total':<24} {sum(INPUTS.values()):>8}")
        if STATUSES:
            reporter.write_line(f"fuzz http answers: {dict(sorted(STATUSES.items()))}")


def assert_client_error(exc: LokiError) -> None:
    """A refusal is a 4xx with something to read, that can be sent (valid UTF-8)."""
    assert 400 <= exc.status < 500, (exc.status, exc.message)
    assert exc.message.strip(), "empty error message"
    exc.message.encode()


# ---------------------------------------------------------------------------
# Mutations shared by the targets
# ---------------------------------------------------------------------------

# Pieces of LogQL (and of noise) that token mutations insert.
_PIECES = [
    "{", "}", "(", ")", "[", "]", "[5m]", "[0s]", "[-1m]", "[1y]", ",", "|", "|=", "!=", "|~",
    "!~", "|>", "!>", "=", "==", "=~", ">", ">=", "<", "<=", "or", "and", "unless", "by",
    "without", "bool", "on", "ignoring", "group_left", "group_right", "offset", "unwrap", "json",
    "logfmt", "regexp", "pattern", "unpack", "line_format", "label_format", "drop", "keep",
    "decolorize", "ip(", "bytes(", "duration(", "sum", "topk(", "rate(", "vector(", "variants(",
    "of", "--strict", '"a"', "`b`", '"', "`", "'", "\\", "0", "-1", "1e308", "1e-400", "NaN",
    "Inf", "0x1f", "9223372036854775808", "5m", "1d2h", "10KB", "1.5", "#", "\n", "\x00",
    "\udcff", "\u00e9", "\U0001d54f", "+", "-", "*", "/", "%", "^", ".", "$", "{{", "}}",
]  # fmt: skip
# (kind, position, piece): position is taken modulo the length at the time.
_TOKEN_OPS = st.tuples(
    st.sampled_from(["drop", "dup", "swap", "insert", "replace", "truncate", "char"]),
    st.integers(0, 1 << 16),
    st.sampled_from(_PIECES) | st.text(max_size=6),
)


def mutate_tokens(tokens: list[str], ops: list[tuple[str, int, str]]) -> list[str]:
    tokens = list(tokens)
    for kind, where, piece in ops:
        if not tokens:
            tokens.append(piece)
            continue
        i = where % len(tokens)
        if kind == "drop":
            del tokens[i]
        elif kind == "dup":
            tokens.insert(i, tokens[i])
        elif kind == "swap":
            j = (where // 7) % len(tokens)
            tokens[i], tokens[j] = tokens[j], tokens[i]
        elif kind == "insert":
            tokens.insert(i, piece)
        elif kind == "replace":
            tokens[i] = piece
        elif kind == "truncate":
            del tokens[i:]
        elif tokens[i]:  # char: one character of the token changes
            k = (where // 11) % len(tokens[i])
            tokens[i] = tokens[i][:k] + (piece[:1] or "") + tokens[i][k + 1 :]
    return tokens


# (kind, position, value) on a byte string.
_BYTE_OPS = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup", "zero"]),
    st.integers(0, 1 << 20),
    st.integers(0, 255),
)


def mutate_bytes(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value in ops:
        if not out:
            out.append(value)
            continue
        i = where % len(out)
        if kind == "flip":
            out[i] ^= 1 << (value % 8)
        elif kind == "set":
            out[i] = value
        elif kind == "insert":
            out.insert(i, value)
        elif kind == "delete":
            del out[i]
        elif kind == "truncate":
            del out[i:]
        elif kind == "dup":
            out[i:i] = out[i : i + 1 + value % 16]
        else:
            out[i : i + 1 + value % 8] = bytes(len(out[i : i + 1 + value % 8]))
    return bytes(out)


# ---------------------------------------------------------------------------
# 1. LogQL: the parser, the printers, the pipeline and the engine
# ---------------------------------------------------------------------------

_LABEL_NAMES = st.sampled_from(
    ["app", "env", "level", "namespace", "pod", "__name__", "__error__", "a_b", "x", "_", "A1"]
)
_ODD_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from('"\\`{}|'),
    max_size=12,
)


def _go_string(text: str) -> str:
    """A Go string literal, sometimes with escapes Go refuses (the parser must say so)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# Values and regexes that fit the data of the HTTP target, so queries get far.
_GOOD_VALUES = st.sampled_from(['"api"', '"web"', '"info"', '"error"', '"prod"', '".+"', '"a.*"'])
_CAPTURES = st.sampled_from(
    ['"(?P<n>\\\\w+)"', "`(?P<status>\\d+) (?P<rest>.*)`", '"<_> <m>"', '"<level> <_> <x>"',
     '"(?P<a>.)(?P<a>.)"', '"<_>"', '"(?P<n>\\\\w+"', '"<a><b>"']
)  # fmt: skip
_STRINGS = st.one_of(
    _GOOD_VALUES,
    _CAPTURES,
    st.sampled_from(
        [
            '"api"', '"web"', '""', '"a.*"', '".+"', '"(?i)err"', "`b\\d+`", '"\\t\\u00e9"',
            '"x|y"', '"[a-z"', '"\\q"', '"(?P<n>\\\\w+)"', '"<_> <m>"', '"<a> <a>"', '"<_>"',
            '"192.168.0.0/16"', '"10.0.0.1-10.0.0.9"', '"::1"', '"\\ud83d"', '"\\U0010ffff"',
            '"\\xff"', '"\\377"', '"a\\"b"', "`x`", '"(?P<a>.)(?P<a>.)"', '"^$"', '"\\\\p{Han}"',
            '"\\\\pZ"', '"a{2,1}"', '"(?=x)"', '"\\\\b"', '"[[:alpha:]]"', '"\\\\C"', '".{1001}"',
        ]
    ),
    _ODD_TEXT.map(_go_string),
    _ODD_TEXT.map(lambda t: "`" + t.replace("`", "") + "`"),
)  # fmt: skip
_NUMBERS = st.sampled_from(
    ["0", "1", "-1", "0.5", "1e3", "1e308", "1e309", "-0", "NaN", "Inf", "-Inf", "0x10", "9" * 25]
)
_DURATIONS = st.sampled_from(
    ["1s", "5m", "1h", "1d", "1w", "1y", "0s", "500ms", "1h30m", "1.5h", "250us", "1ns", "99999y"]
)
_BYTES = st.sampled_from(["1B", "10KB", "1.5MiB", "1GB", "0B", "1PB", "1EB"])
_TEMPLATE_PIECES = st.sampled_from(
    [
        "text ", "{{.app}}", "{{ .level | ToUpper }}", "{{ __line__ }}", "{{ __timestamp__ }}",
        '{{ printf "%s-%d" .app 1 }}', '{{ printf "%d" .nope }}', "{{ printf }}",
        '{{ if eq .app "api" }}y{{ else }}z{{ end }}', "{{ range $i, $e := .app }}{{ end }}",
        "{{ div 1 0 }}", "{{ mod 5 0 }}", "{{ divf 1 0 }}", '{{ repeat 3 "ab" }}',
        '{{ repeat -1 "ab" }}', "{{ substr 0 2 .app }}", "{{ substr 5 1 .app }}",
        '{{ regexReplaceAll "(\\\\w+)" .app "${1}x" }}', '{{ regexReplaceAll "(" .app "" }}',
        '{{ toDateInZone "2006-01-02" "UTC" .app }}', '{{ toDateInZone "x" "Nowhere/Zone" "1" }}',
        "{{ fromJson .app }}", "{{ index .app 1 }}", "{{ slice .app 1 2 }}", "{{ slice .app 3 1 }}",
        "{{ len .app }}", "{{ b64dec .app }}", "{{ b64enc .app }}", "{{ unixToTime .app }}",
        '{{ unixToTime "99999999999999999999" }}', "{{ .app | int | add 1 }}",
        "{{ trunc -1 .app }}", "{{ trunc 2 .app }}", "{{ indent -2 .app }}", "{{ nindent 2 .app }}",
        "{{ alignLeft 5 .app }}", "{{ alignRight -5 .app }}", '{{ date "2006" now }}',
        "{{ duration .app }}", "{{ bytes .app }}", "{{ call .app }}", "{{ html .app }}",
        "{{ js .app }}", "{{ urlquery .app }}", '{{ default "x" .app }}', "{{ ceil .app }}",
        "{{ float64 .app | divf 0 }}", "{{ maxf 1 .app }}", "{{ round 1.5 -1 }}",
        "{{ unixEpochMillis now }}", '{{ toDate "2006" "9999" }}', "{{ urldecode .app }}",
        "{{ count .app \"a\" }}", '{{ Replace .app "a" "b" -1 }}', "{{ title .app }}",
        "{{ $x := 1 }}{{ $x }}", "{{ with .app }}{{ . }}{{ end }}", "{{/* c */}}", "{{- .app -}}",
        "{{ .app.b }}", "{{ . }}", "{{ $ }}", "{{ nil }}", "{{ 1e400 }}", "{{ 0x }}", "{{",
        "}}", "{{ end }}", "{{ template \"x\" }}", "{{ define \"x\" }}{{ end }}", "{{ break }}",
        '{{ and 1 "" }}', "{{ not }}", "{{ int 9223372036854775807 | add 1 }}",
        "{{ mul 9223372036854775807 2 }}", "{{ sub 0 -9223372036854775808 }}",
    ]
)  # fmt: skip


@st.composite
def logql_tokens(draw: st.DrawFn, depth: int = 0) -> list[str]:
    """A LogQL query as tokens: mostly valid, covering every construct of the grammar."""

    def selector() -> list[str]:
        out = ["{"]
        if draw(st.integers(0, 4)):  # mostly a matcher that selects some of the data
            out += [
                draw(st.sampled_from(["app", "level", "env"])),
                draw(st.sampled_from(["=", "=~"])),
            ]
            out.append(draw(_GOOD_VALUES))
        for _ in range(draw(st.integers(0, 3))):
            if len(out) > 1:
                out.append(",")
            out += [draw(_LABEL_NAMES), draw(st.sampled_from(["=", "!=", "=~", "!~"]))]
            out.append(draw(_STRINGS))
        return [*out, "}"]

    def line_filter() -> list[str]:
        out = [draw(st.sampled_from(["|=", "!=", "|~", "!~", "|>", "!>"]))]
        value = draw(st.one_of(_STRINGS, _STRINGS.map(lambda s: f"ip({s})")))
        out.append(value)
        for _ in range(draw(st.integers(0, 2))):
            out += ["or", draw(_STRINGS)]
        return out

    def label_filter(level: int = 0) -> list[str]:
        kind = draw(st.integers(0, 6 if level < 2 else 4))
        name = draw(_LABEL_NAMES)
        if kind == 0:
            return [name, draw(st.sampled_from(["=", "!=", "=~", "!~"])), draw(_STRINGS)]
        if kind == 1:
            op = draw(st.sampled_from([">", ">=", "<", "<=", "==", "!=", "="]))
            return [name, op, draw(st.one_of(_NUMBERS, _DURATIONS, _BYTES))]
        if kind == 2:
            return [name, draw(st.sampled_from(["=", "!="])), f"ip({draw(_STRINGS)})"]
        if kind == 3:
            return [name, "=", '""']
        if kind == 4:
            return ["__error__", "=", draw(st.sampled_from(['""', '"JSONParserErr"']))]
        left, right = label_filter(level + 1), label_filter(level + 1)
        if kind == 5:
            return [*left, draw(st.sampled_from(["and", "or", ",", ""])), *right]
        return ["(", *left, draw(st.sampled_from(["and", "or"])), *right, ")"]

    def extraction_list() -> list[str]:
        out: list[str] = []
        for n in range(draw(st.integers(1, 3))):
            if n:
                out.append(",")
            out.append(draw(_LABEL_NAMES))
            if draw(st.booleans()):
                path = draw(
                    st.sampled_from(
                        ['"a.b"', '"a[0]"', '"a[\\"b c\\"]"', '"[0]"', '""', '"a..b"', '"a[x"']
                    )
                    | _STRINGS
                )
                out += ["=", path]
        return out

    def stage() -> list[str]:
        kind = draw(st.integers(0, 13))
        if kind == 0:
            return line_filter()
        if kind == 1:
            return ["|", "json", *(extraction_list() if draw(st.booleans()) else [])]
        if kind == 2:
            flags = draw(st.lists(st.sampled_from(["--strict", "--keep-empty"]), max_size=2))
            extra = extraction_list() if draw(st.booleans()) else []
            return ["|", "logfmt", *flags, *extra]
        if kind == 3:
            return ["|", draw(st.sampled_from(["regexp", "pattern"])), draw(_CAPTURES | _STRINGS)]
        if kind == 4:
            return ["|", draw(st.sampled_from(["unpack", "decolorize"]))]
        if kind in (5, 6):
            return ["|", *label_filter()]
        if kind == 7:
            template = "".join(draw(st.lists(_TEMPLATE_PIECES, max_size=4)))
            quoted = draw(st.sampled_from(["`", '"']))
            if quoted == "`":
                return ["|", "line_format", "`" + template.replace("`", "") + "`"]
            return ["|", "line_format", _go_string(template)]
        if kind == 8:
            out = ["|", "label_format"]
            for n in range(draw(st.integers(1, 3))):
                if n:
                    out.append(",")
                value = draw(
                    st.one_of(
                        _LABEL_NAMES,
                        _TEMPLATE_PIECES.map(lambda t: "`" + t.replace("`", "") + "`"),
                        _STRINGS,
                    )
                )
                out += [draw(_LABEL_NAMES), "=", value]
            return out
        if kind in (9, 10):
            out = ["|", "drop" if kind == 9 else "keep"]
            for n in range(draw(st.integers(1, 3))):
                if n:
                    out.append(",")
                out.append(draw(_LABEL_NAMES))
                if draw(st.booleans()):
                    out += [draw(st.sampled_from(["=", "!=", "=~", "!~"])), draw(_STRINGS)]
            return out
        if kind == 11:
            return ["|", *label_filter(), ",", *label_filter()]
        if kind == 12:
            return ["|", "unwrap", *unwrap_target()]
        return ["|", draw(_LABEL_NAMES), draw(st.sampled_from(["=", ">"])), draw(_NUMBERS)]

    def unwrap_target() -> list[str]:
        name = draw(_LABEL_NAMES)
        conv = draw(st.sampled_from(["", "bytes", "duration", "duration_seconds"]))
        return [f"{conv}(", name, ")"] if conv else [name]

    def log_query() -> list[str]:
        out = selector()
        for _ in range(draw(st.integers(0, 4))):
            out += stage()
        return out

    def log_range(unwrap: bool) -> list[str]:
        out = log_query()
        if unwrap:
            out += ["|", "unwrap", *unwrap_target()]
            if draw(st.booleans()):
                out += ["|", *label_filter()]
        out.append(f"[{draw(st.sampled_from(['1m', '5m', '1h', '30s']) | _DURATIONS)}]")
        if draw(st.integers(0, 4)) == 0:
            out += ["offset", draw(st.sampled_from(["1h", "-5m", "0s", "1d"]))]
        if draw(st.booleans()):
            return out
        return ["(", *out, ")"]

    def grouping() -> list[str]:
        if draw(st.booleans()):
            return []
        out = [draw(st.sampled_from(["by", "without"])), "("]
        for n in range(draw(st.integers(0, 3))):
            if n:
                out.append(",")
            out.append(draw(_LABEL_NAMES))
        return [*out, ")"]

    def range_aggregation() -> list[str]:
        plain = [
            "count_over_time", "rate", "bytes_rate", "bytes_over_time", "absent_over_time",
        ]  # fmt: skip
        unwrapped = [
            "sum_over_time", "avg_over_time", "min_over_time", "max_over_time", "stddev_over_time",
            "stdvar_over_time", "first_over_time", "last_over_time", "rate_counter", "rate",
        ]  # fmt: skip
        if draw(st.booleans()):
            return [draw(st.sampled_from(plain)), "(", *log_range(False), ")"]
        fn = draw(st.sampled_from([*unwrapped, "quantile_over_time"]))
        param = [draw(_NUMBERS), ","] if fn == "quantile_over_time" else []
        return [fn, "(", *param, *log_range(True), ")", *grouping()]

    def metric(level: int) -> list[str]:
        kind = draw(st.integers(0, 9 if level < 2 else 1))
        if kind == 0:
            return range_aggregation()
        if kind == 1:
            return draw(st.sampled_from([["vector", "(", "1", ")"], [draw(_NUMBERS)]]))
        if kind in (2, 3):
            op = draw(st.sampled_from(["sum", "avg", "min", "max", "count", "stddev", "stdvar"]))
            group = grouping()
            if draw(st.booleans()):
                return [op, *group, "(", *metric(level + 1), ")"]
            return [op, "(", *metric(level + 1), ")", *group]
        if kind == 4:
            op = draw(st.sampled_from(["topk", "bottomk", "approx_topk"]))
            return [op, "(", draw(st.sampled_from(["1", "0", "-1", "5", "1.5", "1e10"])), ",",
                    *metric(level + 1), ")", *grouping()]  # fmt: skip
        if kind == 5:
            return [draw(st.sampled_from(["sort", "sort_desc"])), "(", *metric(level + 1), ")"]
        if kind == 6:
            return ["label_replace", "(", *metric(level + 1), ",", draw(_STRINGS), ",",
                    draw(_STRINGS), ",", draw(_STRINGS), ",", draw(_STRINGS), ")"]  # fmt: skip
        if kind == 7:
            op = draw(
                st.sampled_from(
                    ["+", "-", "*", "/", "%", "^", "==", "!=", ">", ">=", "<", "<=", "and", "or",
                     "unless"]
                )
            )  # fmt: skip
            modifiers: list[str] = []
            if draw(st.booleans()):
                modifiers.append("bool")
            if draw(st.booleans()):
                modifiers += [draw(st.sampled_from(["on", "ignoring"])), "(", draw(_LABEL_NAMES),
                              ")"]  # fmt: skip
                if draw(st.booleans()):
                    side = draw(st.sampled_from(["group_left", "group_right"]))
                    modifiers += [side, "(", draw(_LABEL_NAMES), ")"]
            return [*metric(level + 1), op, *modifiers, *metric(level + 1)]
        if kind == 8:
            return ["(", *metric(level + 1), ")"]
        out = ["variants", "("]
        for n in range(draw(st.integers(1, 3))):
            if n:
                out.append(",")
            out += range_aggregation()
        return [*out, ")", "of", "(", *log_range(False), ")"]

    if draw(st.booleans()):
        return log_query()
    return metric(depth)


def _joined(tokens: list[str], sep: str) -> str:
    return sep.join(tokens)


_SEPARATORS = st.sampled_from([" ", " ", "", "\n", "\t "])
LOGQL_VALID = st.builds(_joined, logql_tokens(), _SEPARATORS)
LOGQL_MUTATED = st.builds(
    _joined,
    st.builds(mutate_tokens, logql_tokens(), st.lists(_TOKEN_OPS, min_size=1, max_size=4)),
    _SEPARATORS,
)
LOGQL_RAW = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("utf-8", "surrogateescape")),
)

_LINES = [
    b'{"app":"api","level":"error","status":500,"took":"1.5s","size":"10KB","a":{"b":[1,2]}}',
    b'level=info app=web took=250ms status=200 msg="hello world" ip=10.0.0.1',
    b"\x1b[31mred\x1b[0m 192.168.1.7 GET /index.html 404 12.5",
    b"\xff\xfe not utf-8 \xc3",
    b"",
    b'{"app":"web","status":"x","took":"-3m","nested":{"deep":{"er":1}}}',
]
_META_PAIRS = [("trace_id", "abc"), ("level", "warn"), ("__error__", "x")]
_BLOCK = decode_block(
    build_block(
        array("q", [(i + 1) * 10 * NS for i in range(len(_LINES))]),
        array("I", map(len, _LINES)),
        b"".join(_LINES),
        [encode_metadata(_META_PAIRS[: i % 4]) for i in range(len(_LINES))],
    )
)
_STREAM_LABELS = '{app="api", env="prod", level="info"}'
_LOOP = asyncio.new_event_loop()


class _BlockSource:
    """The engine's sample source over one block of one stream, as the querier reads."""

    async def select_samples(
        self, expr: RangeAggregationExpr, root: Expr, start_ns: int, end_ns: int
    ) -> list[SampleSeries]:
        extractor = compile_sample_extractor(expr, root)
        ts = _BLOCK.ts
        kept = extractor.pipeline.filter_block(
            _BLOCK, bisect_right(ts, start_ns), bisect_right(ts, end_ns)
        )
        samples = extractor.for_stream(_STREAM_LABELS).extract_block(_BLOCK, kept)
        return [SampleSeries(key, t, v) for key, (t, v) in sorted(samples.items())]


def check_logql(query: str) -> None:
    """A query is refused with ParseError (a 400), or parsed, printed, compiled and run
    on a block of lines (log queries) or evaluated (metric queries), refusing only with a
    client error."""
    try:
        expr = parse_expr(query)
    except ParseError as exc:
        assert_client_error(exc)
        return
    printed = str(expr)
    prettify(expr)
    try:
        parse_expr(printed)
    except ParseError as exc:  # Loki prints some queries it cannot read back
        assert_client_error(exc)
    try:
        if isinstance(expr, LogSelectorExpr):
            pipeline = compile_pipeline(expr)
            stream = pipeline.for_stream(_STREAM_LABELS)
            for i in pipeline.filter_block(_BLOCK, 0, len(_BLOCK)):
                stream.process(_BLOCK.ts[i], _BLOCK.line(i), _BLOCK.metadata(i))
        elif isinstance(expr, SampleExpr):
            for instant in (False, True):
                run = evaluate(expr, _BlockSource(), start_ns=0, end_ns=60 * NS, step_ns=10 * NS,
                               instant=instant)  # fmt: skip
                _LOOP.run_until_complete(run)
    except LokiError as exc:
        assert_client_error(exc)


@pytest.mark.parametrize(
    "strategy", [LOGQL_VALID, LOGQL_MUTATED, LOGQL_RAW], ids=["grammar", "mutated", "raw"]
)
def test_logql_parser_refuses_only_with_parse_error(strategy: st.SearchStrategy[str]) -> None:
    @fuzz_settings(short=400, long=15_000)
    @given(strategy)
    def run(query: str) -> None:
        INPUTS["logql"] += 1
        check_logql(query)

    run()


# ---------------------------------------------------------------------------
# Structured values: JSON documents and protobuf field trees, and their mutations
# ---------------------------------------------------------------------------


class Raw(str):
    """JSON text written as is: a number or escape a JSON library would not write."""


def dump_json(value: object) -> bytes:
    """JSON without a library's opinions: huge integers, NaN, raw text all pass."""
    out: list[str] = []

    def write(v: object) -> None:
        if isinstance(v, Raw):
            out.append(str(v))
        elif v is None or isinstance(v, bool):
            out.append({None: "null", True: "true", False: "false"}[v])
        elif isinstance(v, int | float):
            out.append(
                repr(v)
                if isinstance(v, int) or (v == v and abs(v) != float("inf"))
                else {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(v)]
            )
        elif isinstance(v, str):
            out.append(orjson.dumps(v).decode())
        elif isinstance(v, dict):
            out.append("{")
            for n, (k, item) in enumerate(v.items()):
                out.append("," if n else "")
                write(k if isinstance(k, str) else str(k))
                out.append(":")
                write(item)
            out.append("}")
        else:
            out.append("[")
            for n, item in enumerate(v):  # type: ignore[attr-defined]
                out.append("," if n else "")
                write(item)
            out.append("]")

    write(value)
    return "".join(out).encode("utf-8", "surrogatepass")


_BIG_INTS = [0, 1, -1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
             2**64 - 1, 2**64, 2**70, -(2**70), 10**30]  # fmt: skip
_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(_BIG_INTS),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(
        [
            "", "1700000000000000000", "-1", "+1", " 1", "1_0", "0x10", "١٢٣", "1e9", "1.5",
            "99999999999999999999", "-9223372036854775809", "9" * 5000, "-" + "9" * 5000,
            "NaN", "Infinity", "00000000000000000000000000000000", "zz" * 16, "0" * 31,
            "ffffffffffffffff", "AAAA", "====", "a-b_c", "service.name", "\u2028<>&", "\x00",
        ]
    ),
    st.sampled_from(
        [
            Raw("1e400"), Raw("-0"), Raw("01"), Raw('"\\ud800"'), Raw('"\\udc80x"'), Raw("1."),
            Raw('"\\u0000"'), Raw("[" * 3000 + "]" * 3000), Raw("{" * 10), Raw('"\\x"'),
            Raw("18446744073709551616"), Raw("-9223372036854775809"), Raw("1" * 5000),
        ]
    ),
)  # fmt: skip
JSON_VALUES = st.recursive(
    _JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
_JSON_KEYS = st.sampled_from(
    [
        "streams", "stream", "values", "Streams", "labels", "entries", "resourceLogs",
        "resource_logs", "resource", "attributes", "scopeLogs", "scope_logs", "scope",
        "logRecords", "log_records", "body", "key", "value", "stringValue", "intValue",
        "doubleValue", "boolValue", "bytesValue", "arrayValue", "kvlistValue", "values",
        "timeUnixNano", "observedTimeUnixNano", "severityNumber", "severityText", "traceId",
        "spanId", "flags", "droppedAttributesCount", "eventName", "name", "version", "",
    ]
)  # fmt: skip
JSON_OPS = st.tuples(
    st.sampled_from(["drop", "retype", "wrap", "unwrap", "dup", "rename", "empty"]),
    st.integers(0, 1 << 16),
    JSON_VALUES,
    _JSON_KEYS,
)


def _json_slots(doc: object) -> list[tuple[object, object]]:
    """Every (container, key or index) in the document, parents first."""
    out: list[tuple[object, object]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for k, v in node.items():
                out.append((node, k))
                stack.append(v)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                out.append((node, i))
                stack.append(v)
    return out


def mutate_json(doc: object, ops: list[tuple[str, int, object, str]]) -> object:
    """Structural mutations: fields dropped, retyped, wrapped in a list, unwrapped,
    duplicated, renamed or emptied."""
    doc = copy.deepcopy(doc)
    for kind, where, value, key in ops:
        slots = _json_slots(doc)
        if not slots:
            doc = value
            continue
        parent, k = slots[where % len(slots)]
        current = parent[k]  # type: ignore[index]
        if kind == "drop":
            del parent[k]  # type: ignore[attr-defined]
        elif kind == "retype":
            parent[k] = value  # type: ignore[index]
        elif kind == "wrap":
            parent[k] = [current] if where % 2 else {key: current}  # type: ignore[index]
        elif kind == "unwrap" and isinstance(current, list | dict) and current:
            first = next(iter(current.values() if isinstance(current, dict) else current))
            parent[k] = first  # type: ignore[index]
        elif kind == "dup" and isinstance(parent, list):
            parent.append(current)
        elif kind == "rename" and isinstance(parent, dict):
            parent[key] = parent.pop(k)
        elif kind == "empty":
            parent[k] = type(current)() if isinstance(current, list | dict | str) else None  # type: ignore[index]
    return doc


# A protobuf field: (number, wire type, value); value is an int (varint, fixed), bytes,
# or a list of fields (a nested message, or a group with wire type 3).
Field = tuple[int, int, object]


def _varint(n: int) -> bytes:
    # Negative: two's complement; up to 70 bits: longer than Go reads.
    return _uvarint(n & ((1 << 70) - 1))


def pb_encode(fields: list[Field]) -> bytes:
    out = bytearray()
    for num, wire, value in fields:
        out += _varint((num << 3) | wire)
        if isinstance(value, list):
            payload = pb_encode(value)
        elif isinstance(value, int):
            payload = _varint(value)
        else:
            payload = bytes(value)  # type: ignore[arg-type]
        if wire == 0:
            out += _varint(value) if isinstance(value, int) else payload[:10]
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if isinstance(value, int):
                out += (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            else:
                out += payload[:size]
        elif wire == 2:
            out += _varint(len(payload)) + payload
        elif wire == 3:
            out += (payload if isinstance(value, list) else b"") + _varint((num << 3) | 4)
    return bytes(out)


_PB_INTS = st.sampled_from([*_BIG_INTS, 1 << 35, 999_999_999, 1_000_000_000, 1 << 31])
_PB_VALUES = st.one_of(
    _PB_INTS,
    st.integers(-(1 << 70), 1 << 70),
    st.binary(max_size=12),
    st.sampled_from([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"", b"{", b'{app="a"}', b"\x80" * 11]),
    st.just([]),
)
PB_OPS = st.tuples(
    st.sampled_from(["drop", "dup", "renumber", "rewire", "value", "swap", "nest", "hoist"]),
    st.integers(0, 1 << 16),
    st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 11, 12, 15, 16, 2047, (1 << 29) - 1]),
    _PB_VALUES,
)


def _pb_slots(fields: list[Field]) -> list[tuple[list[Field], int]]:
    out: list[tuple[list[Field], int]] = []
    stack = [fields]
    while stack:
        node = stack.pop()
        for i, (_, _, value) in enumerate(node):
            out.append((node, i))
            if isinstance(value, list):
                stack.append(value)
    return out


def mutate_pb(fields: list[Field], ops: list[tuple[str, int, int, object]]) -> list[Field]:
    """Field-level mutations: dropped, repeated, renumbered, given another wire type or
    value, swapped with a sibling, nested one level deeper, or moved up a level."""
    fields = _pb_copy(fields)
    for kind, where, number, value in ops:
        slots = _pb_slots(fields)
        if not slots:
            fields.append((number, 2, value))
            continue
        parent, i = slots[where % len(slots)]
        num, wire, current = parent[i]
        if kind == "drop":
            del parent[i]
        elif kind == "dup":
            parent.insert(i, (num, wire, _pb_copy(current)))  # type: ignore[arg-type]
        elif kind == "renumber":
            parent[i] = (number, wire, current)
        elif kind == "rewire":
            parent[i] = (num, number % 8, current)
        elif kind == "value":
            parent[i] = (num, wire, value)
        elif kind == "swap":
            j = (where // 7) % len(parent)
            parent[i], parent[j] = parent[j], parent[i]
        elif kind == "nest":
            parent[i] = (num, 2, [(num, wire, current)])
        elif isinstance(current, list) and current:  # hoist: a child replaces its parent
            parent[i] = current[where % len(current)]
    return fields


def _pb_copy(value: object) -> object:
    if isinstance(value, list):
        return [(n, w, _pb_copy(v)) for n, w, v in value]
    return value


# ---------------------------------------------------------------------------
# 2. Push decoders: JSON (plain, gzip, deflate) and protobuf (snappy), and OTLP logs
# ---------------------------------------------------------------------------

_LABEL_VALUES = st.text(max_size=8)
_PUSH_STREAMS = st.lists(
    st.builds(
        lambda labels, entries, with_meta: PushStream(
            list(labels.items()),
            [ts for ts, _, _ in entries],
            [line for _, line, _ in entries],
            [list(m.items()) for _, _, m in entries] if with_meta else None,
        ),
        st.dictionaries(
            st.sampled_from(["app", "env", "level", "a b", ""]), _LABEL_VALUES, max_size=3
        ),
        st.lists(
            st.tuples(
                st.one_of(
                    st.integers(NOW - HOUR, NOW),  # accepted by the distributor too
                    st.integers(-(2**63), 2**63 - 1),
                    st.sampled_from([0, 1, -1, 10**18]),
                ),
                st.text(max_size=20).map(str.encode),
                st.dictionaries(
                    st.sampled_from(["trace_id", "user", "x"]), _LABEL_VALUES, max_size=2
                ),
            ),
            max_size=4,
        ),
        st.booleans(),
    ),
    max_size=3,
)


def _push_fields(streams: list[PushStream]) -> list[Field]:
    """A PushRequest as a field tree (field numbers of Loki's push.proto)."""
    out: list[Field] = []
    for s in streams:
        labels = s.labels if isinstance(s.labels, str) else _labels_text(s.labels)
        stream: list[Field] = [(1, 2, labels.encode())]
        for n, (ts, line) in enumerate(zip(s.timestamps, s.lines, strict=True)):
            seconds, nanos = divmod(ts, 10**9)
            entry: list[Field] = [(1, 2, [(1, 0, seconds), (2, 0, nanos)]), (2, 2, line)]
            for name, value in s.metadata[n] if s.metadata else []:
                entry.append((3, 2, [(1, 2, name.encode()), (2, 2, value.encode())]))
            stream.append((2, 2, entry))
        stream.append((3, 0, 12345))
        out.append((1, 2, stream))
    return out


def _labels_text(pairs: list[tuple[str, str]]) -> str:
    return "{" + ", ".join(f"{k}={orjson.dumps(v).decode()}" for k, v in pairs) + "}"


def _push_json_doc(streams: list[PushStream]) -> object:
    return orjson.loads(encode_push_json(streams))


def _compress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.compress(body, mtime=0)
    if encoding == "deflate":
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return c.compress(body) + c.flush()
    return body


_CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
     "application/x-protobuf", "", "text/plain", "application/json;", ";", "\x00"]
)  # fmt: skip
_ENCODINGS = st.sampled_from(["", "identity", "gzip", "deflate", "snappy", "GZIP", "br", " gzip "])


@st.composite
def push_json_bodies(draw: st.DrawFn) -> tuple[bytes, str, str]:
    doc = mutate_json(_push_json_doc(draw(_PUSH_STREAMS)), draw(st.lists(JSON_OPS, max_size=4)))
    body = mutate_bytes(dump_json(doc), draw(st.lists(_BYTE_OPS, max_size=2)))
    encoding = draw(st.sampled_from(["", "gzip", "deflate"]))
    body = _compress(body, encoding)
    body = mutate_bytes(body, draw(st.lists(_BYTE_OPS, max_size=1)))
    return (
        body,
        draw(st.sampled_from(["application/json", "application/json; charset=utf-8"])),
        encoding,
    )


@st.composite
def push_protobuf_bodies(draw: st.DrawFn) -> tuple[bytes, str, str]:
    fields = mutate_pb(_push_fields(draw(_PUSH_STREAMS)), draw(st.lists(PB_OPS, max_size=4)))
    raw = mutate_bytes(pb_encode(fields), draw(st.lists(_BYTE_OPS, max_size=2)))
    body = bytes(cramjam.snappy.compress_raw(raw)) if draw(st.integers(0, 9)) else raw
    body = mutate_bytes(body, draw(st.lists(_BYTE_OPS, max_size=1)))
    encoding = draw(st.sampled_from(["", "snappy", "gzip"]))
    if encoding == "gzip":
        body = gzip.compress(body, mtime=0)
    return body, draw(st.sampled_from(["application/x-protobuf", ""])), encoding


PUSH_RAW = st.tuples(st.binary(max_size=300), _CONTENT_TYPES, _ENCODINGS)


# ---------------------------------------------------------------------------
# 2b. OTLP logs: JSON and protobuf, and the test of both decoders
# ---------------------------------------------------------------------------

_ANY_VALUES = st.recursive(
    st.one_of(
        st.text(max_size=8).map(lambda s: {"stringValue": s}),
        st.booleans().map(lambda b: {"boolValue": b}),
        st.sampled_from(_BIG_INTS[:9]).map(lambda n: {"intValue": str(n)}),
        st.floats().map(lambda f: {"doubleValue": f}),
        st.binary(max_size=6).map(lambda b: {"bytesValue": base64.b64encode(b).decode()}),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda v: {"arrayValue": {"values": v}}),
        st.lists(st.tuples(st.text(max_size=6), inner), max_size=3).map(
            lambda kvs: {"kvlistValue": {"values": [{"key": k, "value": v} for k, v in kvs]}}
        ),
    ),
    max_leaves=5,
)
_ATTRIBUTES = st.lists(
    st.builds(
        lambda k, v: {"key": k, "value": v},
        st.sampled_from(
            [
                "service.name",
                "app",
                "k8s.pod.name",
                "http.status",
                "9lives",
                "_x",
                "__y",
                "a.b",
                "",
                "é",
            ]
        ),
        _ANY_VALUES,
    ),
    max_size=3,
)
_RECORDS = st.lists(
    st.fixed_dictionaries(
        {
            "timeUnixNano": st.sampled_from(["1700000000000000000", "0", str(2**64 - 1)]),
            "body": _ANY_VALUES,
            "attributes": _ATTRIBUTES,
        },
        optional={
            "observedTimeUnixNano": st.sampled_from(["1700000000000000001", 1700000000000000001]),
            "severityNumber": st.sampled_from([9, "SEVERITY_NUMBER_WARN", 0]),
            "severityText": st.text(max_size=5),
            "traceId": st.sampled_from(["5b8efff798038103d269b633813fc60c", "0" * 32]),
            "spanId": st.sampled_from(["eee19b7ec3c1b174", "0" * 16]),
            "flags": st.sampled_from([1, 0]),
            "eventName": st.text(max_size=5),
            "droppedAttributesCount": st.sampled_from([0, 2]),
        },
    ),
    max_size=3,
)
OTLP_DOCS = st.builds(
    lambda resources: {"resourceLogs": resources},
    st.lists(
        st.builds(
            lambda attrs, scopes: {"resource": {"attributes": attrs}, "scopeLogs": scopes},
            _ATTRIBUTES,
            st.lists(
                st.builds(
                    lambda name, attrs, records: {
                        "scope": {"name": name, "version": "1", "attributes": attrs},
                        "logRecords": records,
                    },
                    st.text(max_size=5),
                    _ATTRIBUTES,
                    _RECORDS,
                ),
                max_size=2,
            ),
        ),
        max_size=2,
    ),
)


def _any_fields(value: dict) -> list[Field]:  # type: ignore[type-arg]
    """An OTLP/JSON AnyValue as protobuf fields (opentelemetry-proto's common.proto)."""
    out: list[Field] = []
    for name, v in value.items():
        if name == "stringValue":
            out.append((1, 2, v.encode()))
        elif name == "boolValue":
            out.append((2, 0, int(v)))
        elif name == "intValue":
            out.append((3, 0, int(v)))
        elif name == "doubleValue":
            out.append((4, 1, int.from_bytes(struct.pack("<d", v), "little")))
        elif name == "bytesValue":
            out.append((7, 2, base64.b64decode(v)))
        elif name == "arrayValue":
            out.append((5, 2, [(1, 2, _any_fields(x)) for x in v["values"]]))
        elif name == "kvlistValue":
            out.append((6, 2, [(1, 2, _kv_fields(kv)) for kv in v["values"]]))
    return out


def _kv_fields(kv: dict) -> list[Field]:  # type: ignore[type-arg]
    return [(1, 2, kv["key"].encode()), (2, 2, _any_fields(kv["value"]))]


def _otlp_fields(doc: dict) -> list[Field]:  # type: ignore[type-arg]
    """An OTLP/JSON logs request as protobuf fields (opentelemetry-proto's logs.proto)."""
    out: list[Field] = []
    for rl in doc["resourceLogs"]:
        resource = [(1, 2, _kv_fields(kv)) for kv in rl["resource"]["attributes"]]
        resource_logs: list[Field] = [(1, 2, [*resource, (2, 0, 1)])]
        for sl in rl["scopeLogs"]:
            scope = sl["scope"]
            scope_fields: list[Field] = [(1, 2, scope["name"].encode()), (2, 2, b"1")]
            scope_fields += [(3, 2, _kv_fields(kv)) for kv in scope["attributes"]]
            scope_logs: list[Field] = [(1, 2, scope_fields)]
            for r in sl["logRecords"]:
                record: list[Field] = [
                    (1, 1, int(r["timeUnixNano"])),
                    (5, 2, _any_fields(r["body"])),
                ]
                record += [(6, 2, _kv_fields(kv)) for kv in r["attributes"]]
                if "traceId" in r:
                    record.append((9, 2, bytes.fromhex(r["traceId"])))
                if "spanId" in r:
                    record.append((10, 2, bytes.fromhex(r["spanId"])))
                if "flags" in r:
                    record.append((8, 5, r["flags"]))
                if "severityText" in r:
                    record.append((3, 2, r["severityText"].encode()))
                record += [(2, 0, 9), (7, 0, 0), (11, 1, 1700000000000000001), (12, 2, b"ev")]
                scope_logs.append((2, 2, record))
            scope_logs.append((3, 2, b"https://schema"))
            resource_logs.append((2, 2, scope_logs))
        out.append((1, 2, resource_logs))
    return out


@st.composite
def otlp_json_bodies(draw: st.DrawFn) -> tuple[bytes, str, str]:
    doc = mutate_json(draw(OTLP_DOCS), draw(st.lists(JSON_OPS, max_size=4)))
    body = mutate_bytes(dump_json(doc), draw(st.lists(_BYTE_OPS, max_size=1)))
    encoding = draw(st.sampled_from(["", "gzip"]))
    return _compress(body, encoding), "application/json", encoding


@st.composite
def otlp_protobuf_bodies(draw: st.DrawFn) -> tuple[bytes, str, str]:
    fields = mutate_pb(_otlp_fields(draw(OTLP_DOCS)), draw(st.lists(PB_OPS, max_size=4)))
    body = mutate_bytes(pb_encode(fields), draw(st.lists(_BYTE_OPS, max_size=2)))
    encoding = draw(st.sampled_from(["", "gzip", "identity"]))
    return _compress(body, encoding), "application/x-protobuf", encoding


@pytest.mark.parametrize(
    ("decoder", "strategy"),
    [
        (decode_push, push_json_bodies()),
        (decode_push, push_protobuf_bodies()),
        (decode_push, PUSH_RAW),
        (decode_otlp, otlp_json_bodies()),
        (decode_otlp, otlp_protobuf_bodies()),
        (decode_otlp, PUSH_RAW),
    ],
    ids=["push-json", "push-protobuf", "push-raw", "otlp-json", "otlp-protobuf", "otlp-raw"],
)
def test_decoders_refuse_only_with_client_errors(
    decoder: Callable[..., list[PushStream]], strategy: st.SearchStrategy[tuple[bytes, str, str]]
) -> None:
    @fuzz_settings(short=275, long=7_000)
    @given(strategy, st.sampled_from([100 << 20, 64]))
    def run(request: tuple[bytes, str, str], cap: int) -> None:
        INPUTS[decoder.__name__] += 1
        try:
            decoder(*request, max_decompressed_bytes=cap)
        except LokiError as exc:
            assert_client_error(exc)

    run()


# ---------------------------------------------------------------------------
# 3. The chunk reader
# ---------------------------------------------------------------------------

_CODEC = Codec()
_ZSTD = zstandard.ZstdCompressor(level=3, write_checksum=False, write_content_size=True)
_META = struct.Struct("<IqqQIII")
_TRAILER = struct.Struct("<QII4s")


@st.composite
def chunk_blocks(draw: st.DrawFn) -> list[bytes]:
    """Raw (uncompressed) blocks of one stream, in time order."""
    blocks = []
    t = draw(st.integers(-(2**40), 2**40))
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 6))
        ts = array("q", [t + i * draw(st.integers(0, 10**9)) for i in range(n)])
        t = ts[-1] + 1
        lines = [draw(st.binary(max_size=16)) for _ in range(n)]
        meta = None
        if draw(st.booleans()):
            meta = [
                encode_metadata([("k", draw(st.text(max_size=4)))]) if i % 2 else b""
                for i in range(n)
            ]
        blocks.append(build_block(ts, array("I", map(len, lines)), b"".join(lines), meta))
    return blocks


def _chunk(raw_blocks: list[bytes]) -> bytes:
    return encode_chunk([_CODEC.compress_block(raw) for raw in raw_blocks])


def _recompute_crcs(data: bytes, meta_ops: list[tuple[int, int, int]]) -> bytes:
    """Change fields of the block index, then fix its checksum so the reader has to
    notice by itself."""
    metas_offset, n_blocks, _, magic = _TRAILER.unpack_from(data, len(data) - _TRAILER.size)
    metas = bytearray(data[metas_offset : len(data) - _TRAILER.size])
    for block, field, value in meta_ops:
        i = block % n_blocks
        fields = list(_META.unpack_from(metas, i * _META.size))
        k = field % 7
        if k in (1, 2):  # mint, maxt: int64
            fields[k] = (value + (1 << 63)) % (1 << 64) - (1 << 63)
        else:
            fields[k] = value % (1 << (64 if k == 3 else 32))
        _META.pack_into(metas, i * _META.size, *fields)
    trailer = _TRAILER.pack(metas_offset, n_blocks, zlib.crc32(metas), magic)
    return data[:metas_offset] + bytes(metas) + trailer


def read_chunk_checked(data: bytes) -> None:
    """Everything a query does with a chunk: only CorruptDataError may come out."""
    try:
        reader = ChunkReader.open(data)
        for block in reader.blocks_in_range(-(2**63), 2**63 - 1, _CODEC):
            for i in range(len(block)):
                block.line(i)
                decode_metadata(block.metadata(i))
            block.range_indexes(0, 2**62)
    except CorruptDataError as exc:
        assert exc.message.strip()


@st.composite
def chunks(draw: st.DrawFn) -> bytes:
    raw_blocks = draw(chunk_blocks())
    how = draw(st.integers(0, 3))
    if how == 0:  # a block's raw bytes change; compressed and checksummed as if valid
        k = draw(st.integers(0, len(raw_blocks) - 1))
        blocks = [_CODEC.compress_block(raw) for raw in raw_blocks]
        raw = mutate_bytes(raw_blocks[k], draw(st.lists(_BYTE_OPS, min_size=1, max_size=3)))
        blocks[k].data, blocks[k].raw_length = _ZSTD.compress(raw), len(raw)
        return encode_chunk(blocks)
    data = _chunk(raw_blocks)
    if how == 1:  # the block index changes, its checksum follows
        ops = st.tuples(
            st.integers(0, 8), st.integers(0, 6), st.sampled_from(_BIG_INTS) | st.integers()
        )
        return _recompute_crcs(data, draw(st.lists(ops, min_size=1, max_size=3)))
    return mutate_bytes(data, draw(st.lists(_BYTE_OPS, min_size=1, max_size=3)))


@fuzz_settings(short=400, long=10_000)
@given(st.one_of(chunks(), st.binary(max_size=200)))
def test_chunk_reader_refuses_only_with_corrupt_data_error(data: bytes) -> None:
    INPUTS["chunk"] += 1
    read_chunk_checked(data)


# ---------------------------------------------------------------------------
# 4. HTTP: the read API, format_query, the tickets API and the ring, on one real program
# ---------------------------------------------------------------------------

IN_FLIGHT = 32


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HTTPFuzz]:
    """One -target=all program with two hours of logs (half flushed to chunks) and one
    finished async query, and a client that keeps IN_FLIGHT requests going."""
    workdir = tmp_path_factory.mktemp("fuzz")
    cfg = base_config(
        workdir,
        limits_config={"max_query_length": "12h", "max_entries_limit_per_query": 5000},
    )
    loki = Loki(workdir, cfg).start()
    fuzz = HTTPFuzz(loki)
    try:
        fuzz.loop.run_until_complete(fuzz.load())
        yield fuzz
    finally:
        fuzz.loop.run_until_complete(fuzz.session.close())
        fuzz.loop.close()
        assert loki.stop() == 0
    assert "unhandled error" not in loki.logs()


def _fuzz_streams(start: int, end: int) -> list[PushStream]:
    step = (end - start) // 100
    out = []
    for app, level in (("api", "info"), ("api", "error"), ("web", "info")):
        ts = list(range(start, end, step))
        lines = [
            orjson.dumps({"app": app, "level": level, "status": 200 + i % 5 * 100,
                          "took": f"{i % 7}.5s", "size": f"{i}KB", "user": {"id": i}})
            if app == "api"
            else f'level={level} took={i}ms status={i % 3 * 100 + 200} msg="hello {i}" '
            f"ip=10.0.{i % 3}.{i}".encode()
            for i in range(len(ts))
        ]  # fmt: skip
        meta = [[("trace_id", f"{i:032x}")] if i % 2 else [] for i in range(len(ts))]
        out.append(PushStream([("app", app), ("level", level), ("env", "prod")], ts, lines, meta))
    return out


class HTTPFuzz:
    """The client side: its own event loop and a session of IN_FLIGHT connections to the
    program under test, which it loads with data and one finished async query."""

    def __init__(self, loki: Loki) -> None:
        self.loki = loki
        self.url = loki.url
        self.loop = asyncio.new_event_loop()
        self.session = self.loop.run_until_complete(self._session())
        self.ticket = ""

    async def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=IN_FLIGHT),
            timeout=aiohttp.ClientTimeout(total=90),
        )

    async def load(self) -> None:
        s = self.session
        status, body = await lokiclient.push(s, self.url, _fuzz_streams(NOW - 2 * HOUR, NOW - HOUR))
        assert status == 204, body
        async with s.post(f"{self.url}/flush") as r:
            assert r.status == 204, await r.text()
        status, body = await lokiclient.push(
            s, self.url, _fuzz_streams(NOW - HOUR, NOW), "protobuf"
        )
        assert status == 204, body
        query = 'sum by (level) (count_over_time({app="api"}[5m]))'
        params = {"query": query, "async": "true", "wait": "30s", "step": "60",
                  "start": str(NOW - 2 * HOUR), "end": str(NOW)}  # fmt: skip
        async with s.get(f"{self.url}/loki/api/v1/query_range", params=params) as r:
            assert r.status == 200, await r.text()
            self.ticket = r.headers[api.HEADER_TICKET]

    async def send(self, req: Request) -> str | None:
        """One request; a description of what went wrong, or None."""
        method, path, query, body, headers = req
        path = path.replace(TICKET, self.ticket)
        url = URL(self.url + path + ("?" + query if query else ""), encoded=True)
        sent = f"{method} {path}?{query} body={(body or b'')[:300]!r} headers={headers}"
        try:
            async with self.session.request(method, url, data=body, headers=headers) as r:
                answer = await r.read()
        except aiohttp.ClientError as exc:
            return f"{sent}: {exc!r}"
        STATUSES[f"{r.status // 100}xx"] += 1
        if r.status >= 500:
            return f"{sent}: {r.status} {answer[:300]!r}"
        if r.status >= 400 and not answer.strip():
            return f"{sent}: {r.status} without a message"
        return None

    def send_all(self, reqs: list[Request]) -> list[str]:
        async def run() -> list[str | None]:
            return await asyncio.gather(*(self.send(r) for r in reqs))

        return [p for p in self.loop.run_until_complete(run()) if p is not None]


TICKET = "{ticket}"  # the fixture's real ticket id, filled in when sent
# (method, path, encoded query string, body or None, headers)
Request = tuple[str, str, str, "bytes | None", "dict[str, str]"]

_TIMES = st.one_of(
    st.integers(NOW - 3 * HOUR, NOW + HOUR).map(str),
    st.integers(NOW // NS - 3 * 3600, NOW // NS).map(str),
    st.floats(NOW / NS - 3 * 3600, NOW / NS).map(lambda f: f"{f:.3f}"),
    st.sampled_from(
        [
            "", "0", "-1", "1", "9999999999", "10000000000", "99999999999999999999",
            "-99999999999999999999", "9" * 40, "1" * 5000, "1.5", "-1.5", "1e10", "1.e3",
            "1e400", "1.5e300", "-1.5e300", "NaN", "inf", "nan.0", "now", "0x10", " 1", "1 ",
            "١٢٣", "1_000", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00.123456789Z",
            "2024-01-01T00:00:00+05:30", "2024-01-01T00:00:00", "2024-01-01",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
            "2024-02-30T00:00:00Z", "2024-01-01T25:00:00Z", "2024-01-01T00:00:60Z", "Z", ".",
            "2024-01-01T00:00:00.Z", "2024-01-01t00:00:00z", "+2024-01-01T00:00:00Z",
        ]
    ),
    st.text(max_size=8),
)  # fmt: skip
_DURATION_VALUES = st.one_of(
    st.sampled_from(
        [
            "", "0", "1", "60", "0.5", "-1", "1e3", "1e400", "-1e400", "inf", "-inf", "nan",
            "NaN", "1e30", "9223372036.854775807", "9223372037", "5m", "1h", "1h30m", "1d", "1w",
            "1y", "100y", "0s", "-5m", "1.5h", "500ms", "1ns", "1us", "1µs", "9999999999999h",
            "99999999999999999999", "1" * 5000, "P1D", "1_0", "0x10", " 5m", "5m ", "5 m",
            "1e-9", "1e-10", "0.0000000001", "2562047h", "2562048h", "106751d", "106752d",
        ]
    ),
    st.text(max_size=6),
)  # fmt: skip
_LIMITS = st.one_of(
    st.sampled_from(
        ["", "0", "1", "100", "5000", "5001", "-1", "1.5", "1e3", "99999999999999999999",
         "1" * 5000, "0x10", " 5", "5 ", "1_000", "١٢", "+5", "-0"]
    ),
    st.integers().map(str),
)  # fmt: skip
_DIRECTIONS = st.sampled_from(
    ["", "forward", "backward", "FORWARD", "Backward", "sideways", "\x00"]
)
_BOOLS = st.sampled_from(["true", "1", "false", "TRUE", "", "yes"])
_NAMES = st.sampled_from(["app", "level", "env", "trace_id", "__name__", "nope", "", "a b", "é",
                          "%", "..", "a/b", "x" * 300])  # fmt: skip
_QUERIES = st.one_of(
    LOGQL_VALID, LOGQL_VALID, LOGQL_VALID, LOGQL_MUTATED, st.text(max_size=40),
    st.sampled_from(
        ['{app="api"}', '{app="api"} | json', 'sum by (level) (count_over_time({app="api"}[5m]))',
         '{app="web"} | logfmt | took > 10ms', "{}", "", 'rate({app=~".+"}[1m])',
         'sum(rate({app="api"} | json | unwrap status [5m])) by (level)']
    ),
)  # fmt: skip
_TICKET_IDS = st.one_of(
    st.just(TICKET),
    st.just(TICKET + "0"),
    st.just(TICKET.upper()),
    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    st.text(alphabet="0123456789abcdefABCDEF%.-_ /", max_size=40),
    st.sampled_from(["", "..", "%2e%2e", "%00", "%ff", "x" * 2000, "é", "*", ">", "a.b"]),
)

# Parameter names per endpoint and the values each name takes.
_PARAM_VALUES: dict[str, st.SearchStrategy[str]] = {
    "query": _QUERIES, "start": _TIMES, "end": _TIMES, "time": _TIMES, "since": _DURATION_VALUES,
    "step": _DURATION_VALUES, "interval": _DURATION_VALUES, "limit": _LIMITS,
    "direction": _DIRECTIONS, "async": _BOOLS, "wait": _DURATION_VALUES,
    "keep_alive": _DURATION_VALUES, "aggregateBy": st.sampled_from(["series", "labels", "x", ""]),
    "targetLabels": st.sampled_from(["app", "app,level", ",", "", "a b,é"]),
    "match[]": _QUERIES, "coprocessors": st.sampled_from(["none", "", "-traceid", "nope"]),
    "coprocessor_version": st.sampled_from([">=1", "traceid>=99", "garbage", ""]),
    "forget": st.one_of(_NAMES, st.text(max_size=10)),
}  # fmt: skip
# Values a client would send, so that most requests get past the parameters.
_SELECTORS = st.sampled_from(['{app="api"}', '{level=~".+"}', '{app="web", env="prod"}', "{}", ""])


def _parses(query: str) -> bool:
    try:
        parse_expr(query)
    except ParseError:
        return False
    return True


_GOOD_QUERIES = LOGQL_VALID.filter(_parses)
_GOOD_VALUES_BY_PARAM: dict[str, st.SearchStrategy[str]] = {
    "query": _GOOD_QUERIES, "start": st.integers(NOW - 3 * HOUR, NOW - HOUR).map(str),
    "end": st.integers(NOW - HOUR, NOW).map(str), "time": st.integers(NOW - HOUR, NOW).map(str),
    "since": st.sampled_from(["5m", "1h", "2h", "90m"]),
    "step": st.sampled_from(["60", "30s", "5m", "1", "0.5"]),
    "interval": st.sampled_from(["", "30s", "60"]), "limit": st.sampled_from(["1", "10", "1000"]),
    "direction": st.sampled_from(["forward", "backward"]),
    "async": st.sampled_from(["false", "false", "true"]),
    "wait": st.sampled_from(["0", "100ms", "1s"]), "keep_alive": st.sampled_from(["5m", "1h"]),
    "aggregateBy": st.sampled_from(["series", "labels"]),
    "targetLabels": st.sampled_from(["app", "app,level", ""]), "match[]": _SELECTORS,
    "coprocessors": st.sampled_from(["", "none"]), "coprocessor_version": st.just(""),
    "forget": _NAMES,
}  # fmt: skip
_ENDPOINTS: dict[str, tuple[list[str], list[str], tuple[str, ...]]] = {
    # name: (methods, paths, parameters)
    "query_range": (["GET", "POST"], ["/loki/api/v1/query_range"],
                    ("query", "start", "end", "since", "step", "interval", "limit", "direction",
                     "async", "wait", "keep_alive", "coprocessors")),
    "query": (["GET", "POST"], ["/loki/api/v1/query"],
              ("query", "time", "limit", "direction", "async", "wait", "keep_alive",
               "coprocessors", "coprocessor_version")),
    "labels": (["GET", "POST"], ["/loki/api/v1/labels", "/loki/api/v1/label/{name}/values"],
               ("start", "end", "since", "query")),
    "series": (["GET", "POST"], ["/loki/api/v1/series"], ("match[]", "start", "end", "since")),
    "index": (["GET", "POST"],
              ["/loki/api/v1/index/stats", "/loki/api/v1/index/volume",
               "/loki/api/v1/index/volume_range", "/loki/api/v1/detected_labels"],
              ("query", "start", "end", "since", "limit", "step", "aggregateBy", "targetLabels")),
    "format_query": (["GET", "POST"], ["/loki/api/v1/format_query"], ("query",)),
    "tickets": (["GET", "DELETE"], ["/loki/api/v1/tickets/{id}", "/loki/api/v1/tickets"],
                ("wait", "keep_alive")),
    "ticket_views": (["GET"], ["/loki/api/v1/tickets/{id}/status",
                               "/loki/api/v1/tickets/{id}/partial"], ("wait",)),
    "ticket_stop": (["POST"], ["/loki/api/v1/tickets/{id}/stop"], ()),
    "ring": (["POST"], ["/ring"], ("forget",)),
    "push": (["POST"], ["/loki/api/v1/push", "/otlp/v1/logs"], ()),
}  # fmt: skip


def _encode_pairs(pairs: list[tuple[str, str]], raw: str) -> str:
    query = "&".join(f"{quote(k, safe='[]')}={quote(v, safe='')}" for k, v in pairs)
    return query + raw


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[str, Request]:
    name = draw(st.sampled_from(list(_ENDPOINTS)))
    methods, paths, names = _ENDPOINTS[name]
    method = draw(st.sampled_from(methods))
    path = draw(st.sampled_from(paths))
    path = path.replace("{name}", quote(draw(_NAMES), safe=""))
    path = path.replace("{id}", quote(draw(_TICKET_IDS), safe="{}%"))
    if name == "push":  # the decoders' bodies, through the distributor's validation
        if "otlp" in path:
            body, ctype, encoding = draw(otlp_json_bodies() | otlp_protobuf_bodies())
        else:
            body, ctype, encoding = draw(push_json_bodies() | push_protobuf_bodies())
        return name, (method, path, "", body, {"Content-Type": ctype, "Content-Encoding": encoding})
    # Good values (what a client would send), but one odd parameter, or all odd.
    mode = draw(st.sampled_from(["good", "one odd", "all odd"]))
    odd = draw(st.sampled_from(names)) if names and mode == "one odd" else None
    pairs: list[tuple[str, str]] = []
    for param in names:
        if mode == "all odd" or param == odd:
            pairs += [(param, draw(_PARAM_VALUES[param])) for _ in range(draw(st.integers(1, 2)))]
        elif draw(st.integers(0, 2)):
            good = _GOOD_VALUES_BY_PARAM[param]
            if param == "query" and name in ("labels", "index"):
                good = _SELECTORS
            pairs.append((param, draw(good)))
    if draw(st.integers(0, 9)) == 0:
        pairs.append((draw(st.text(max_size=5)), draw(st.text(max_size=5))))
    pairs = [(k, v.encode("utf-8", "replace").decode()) for k, v in pairs]
    raw = draw(st.sampled_from(["", "", "", "", "&%ff=%fe", "&query=%", "&&=&", "&start=%00"]))
    headers: dict[str, str] = {}
    if draw(st.integers(0, 4)) == 0:
        headers[api.HEADER_IDEMPOTENCY_KEY] = draw(st.sampled_from(["k1", "k2", "", " x "]))
    if draw(st.integers(0, 9)) == 0:
        headers[api.HEADER_ENCODING_FLAGS] = "categorize-labels"
    form: bytes | None = None
    if method == "POST" and draw(st.booleans()):
        kind = draw(st.integers(0, 9))
        if kind == 0:  # a body that is not the form it claims to be
            headers["Content-Type"] = draw(
                st.sampled_from(["multipart/form-data", "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/json"])
            )  # fmt: skip
            form = draw(st.sampled_from([b"%ff=%fe", b"--x\r\n", b"a=b&&c", b"\xff\xfe", b"{"]))
        else:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            form = _encode_pairs(pairs, "").encode()
            pairs = []
    return name, (method, path, _encode_pairs(pairs, raw), form, headers)


@fuzz_settings(short=100, long=1_200, shrink=False)
@given(st.lists(http_requests(), min_size=IN_FLIGHT, max_size=IN_FLIGHT))
def test_http_answers_every_input_below_500_with_a_message(
    http: HTTPFuzz, batch: list[tuple[str, Request]]
) -> None:
    for name, _ in batch:
        INPUTS[f"http {name}"] += 1
    problems = http.send_all([req for _, req in batch])
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Regressions: each input the fuzzing found, and what it must give now
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "line", "parsed"),
    [
        # Go strings are bytes: these compiled to a UnicodeEncodeError (500).
        (r'{app="api"} |= "\xff"', b"a \xff b", {}),
        (r'{app="api"} |> "<_> \xff<_>"', b"a \xffb", {}),
        (r'{app="api"} | pattern "<x> \xff<_>"', b"a \xffb", {"x": "a"}),
    ],
)
def test_query_bytes_that_are_not_utf8_match_those_bytes(
    query: str, line: bytes, parsed: dict[str, str]
) -> None:
    expr = parse_expr(query)
    assert isinstance(expr, LogSelectorExpr)
    pipeline = compile_pipeline(expr)
    block = decode_block(build_block(array("q", [1]), array("I", [len(line)]), line, None))
    assert list(pipeline.filter_block(block, 0, 1)) == [0]
    out = pipeline.for_stream(_STREAM_LABELS).process(1, line, b"")
    assert out is not None and dict(out[1].parsed) == parsed


def test_parse_error_of_bytes_that_are_not_utf8_can_be_sent() -> None:
    # The message carried a lone surrogate: format_query answered 500 (orjson refused it).
    with pytest.raises(ParseError) as info:
        parse_expr(r'{app=~"\xff"}')
    assert info.value.message == "parse error : error parsing regexp: invalid UTF-8: `\ufffd`"


def test_vector_operation_over_a_number_is_a_client_error() -> None:
    # An AssertionError("BUG: a vector operation over a number") before: 500.
    with pytest.raises(LokiError) as info:
        _LOOP.run_until_complete(
            evaluate(
                parse_expr("sum(1)"), _BlockSource(), start_ns=0, end_ns=0, step_ns=NS, instant=True
            )
        )
    assert info.value.status == 400
    assert info.value.message.startswith("unexpected expr type (*syntax.LiteralExpr)")


@pytest.mark.parametrize(
    "metadata",
    [b"\xc1", b"\x92\xa1a", msgpack.packb(["a"]), msgpack.packb([1, 2]), msgpack.packb({"a": "b"})],
)
def test_structured_metadata_that_is_not_name_value_pairs_is_corrupt_data(metadata: bytes) -> None:
    # msgpack's ValueError, or a TypeError later in the pipeline, before.
    with pytest.raises(CorruptDataError):
        decode_metadata(metadata)


def test_block_whose_metadata_lengths_are_cut_off_is_corrupt_data() -> None:
    # Decoded to a Block whose metadata(0) raised IndexError.
    raw = build_block(array("q", [1]), array("I", [0]), b"", [encode_metadata([("k", "v")])])
    with pytest.raises(CorruptDataError):
        decode_block(raw[: 4 + 8 + 4 + 1])


_SUM_OVER_5M = 'sum(count_over_time({app="api"}[5m]))'
_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("request_", "status", "message"),
    [
        # A form body that is not the form it says: aiohttp's ValueError was a 500.
        (("POST", "/loki/api/v1/query_range", "", b"--x\r\n",
          {"Content-Type": "multipart/form-data"}), 400, "invalid form body: boundary missed"),
        (("POST", "/ring", "", b"\xff\xfe", _FORM), 400, "invalid form body"),
        # Labels over 56 years listed the index of every day in the event loop: no answer.
        (("GET", "/loki/api/v1/labels", "start=0", None, {}), 400,
         "the query time range exceeds the limit"),
        (("GET", "/loki/api/v1/series", "match[]={app=\"api\"}&start=0", None, {}), 400,
         "the query time range exceeds the limit"),
        # OverflowError (500) for an infinite step.
        (("GET", "/loki/api/v1/query_range", f"query={quote(_SUM_OVER_5M)}&step=inf", None, {}),
         400, 'cannot parse "inf" to a valid duration. It overflows int64'),
        # int() of more than 4300 digits: ValueError (500).
        (("GET", "/loki/api/v1/query_range", f"query={quote(_SUM_OVER_5M)}&end={'1' * 5000}",
          None, {}), 400, "to a valid timestamp"),
        (("GET", "/loki/api/v1/query_range",
          f"query={quote(_SUM_OVER_5M)}&start=99999999999999999998&end=99999999999999999999",
          None, {}), 400, 'cannot parse "99999999999999999999" to a valid timestamp'),
        # The ParseError message carried a lone surrogate that orjson refused (500).
        (("GET", "/loki/api/v1/format_query", "query=%7Bapp=~%22%5Cxff%22%7D",
          None, {}), 400, "invalid UTF-8: `\ufffd`"),
        # AssertionErrors of the engine and the planner (500).
        (("GET", "/loki/api/v1/query", "query=sum(1)", None, {}), 400,
         "unexpected expr type (*syntax.LiteralExpr)"),
        (("GET", "/loki/api/v1/query_range",
          "query=" + quote('variants(count_over_time({app="api"}[1m])) of ({app="api"}[1m])'),
          None, {}), 400, "multi variant queries are disabled for this instance"),
        # UnicodeEncodeError compiling the line filter (500).
        (("GET", "/loki/api/v1/query_range", "query=" + quote('{app="api"} |= "\\xff"'),
          None, {}), 200, '"status":"success"'),
    ],
)  # fmt: skip
def test_http_inputs_the_fuzzing_found_are_answered_as_loki_would(
    http: HTTPFuzz, request_: Request, status: int, message: str
) -> None:
    method, path, query, body, headers = request_

    async def send() -> tuple[int, str]:
        url = URL(http.url + path + ("?" + query if query else ""), encoded=True)
        async with http.session.request(method, url, data=body, headers=headers) as r:
            return r.status, (await r.read()).decode()

    got_status, got_body = http.loop.run_until_complete(asyncio.wait_for(send(), 10))
    assert (got_status, message in got_body) == (status, True), got_body
