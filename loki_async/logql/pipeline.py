"""Log pipelines and sample extraction: LogQL stages run over blocks of one stream.

:func:`compile_pipeline` turns a log query's stages into a :class:`Pipeline`;
:func:`compile_sample_extractor` turns a range aggregation into a
:class:`SampleExtractor`. Both follow Grafana Loki 3.7 (``pkg/logql/log`` and
``pkg/logql/syntax``, an AGPL project; the behaviour is reproduced from its
documentation, its tests and a real server's answers, and no code is shared):

* stages are reordered as Loki does: line filters move ahead of parsers,
  ``label_format``, ``drop``/``keep`` and ``decolorize``, but never past a label
  filter, a ``line_format`` or ``unpack``; consecutive line filters form one stage;
* the **leading** line filters (those first after reordering) run over a block's blob
  in :meth:`Pipeline.filter_block`: needles are found with ``bytes.find`` and regexes
  with one scan of the blob, and positions are mapped to entries by bisection on the
  line offsets; whole blocks are rejected by :meth:`Pipeline.block_may_match`;
* every other stage runs per kept line in :meth:`StreamPipeline.process`, on a small
  label builder with Loki's three categories (stream, structured metadata, parsed)
  and its ``__error__``/``__error_details__`` rules; results are interned per stream
  as :class:`LineLabels`, so lines with equal labels share one object;
* sample extraction adds Loki's parser hints (only labels the query needs are
  extracted), the push-down of an outer ``sum by/without`` grouping, ``unwrap``
  conversions and grouping of the series labels.

Quirks of Loki reproduced on purpose (each observed on Loki 3.7.6 or in its code):
regex filters that Loki's simplifier turns into substring tests (a label filter
``name=~"al.*"`` matches ``prealpha``), an always-true leg of an ``or`` chain being
dropped (``|= "" or "x"`` needs ``x``), ``ip("...")`` in an ``or`` chain matching as
text, ``label_format`` results being parsed labels, and the first of a repeated
logfmt key winning.
"""

from __future__ import annotations

import re
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from loki_async.chunk import Block, decode_metadata
from loki_async.labels import label_map
from loki_async.logproto import format_labels
from loki_async.logql.ast import (
    BinaryLabelFilter,
    BytesLabelFilter,
    DecolorizeExpr,
    DropLabelsExpr,
    DurationLabelFilter,
    Expr,
    Grouping,
    IPLabelFilter,
    JSONExpressionParser,
    KeepLabelsExpr,
    LabelFilterer,
    LabelFilterExpr,
    LabelFmtExpr,
    LabelParserExpr,
    LineFilterExpr,
    LineFmtExpr,
    LogfmtExpressionParser,
    LogfmtParserExpr,
    LogSelectorExpr,
    Matcher,
    NamedLabelMatcher,
    NumericLabelFilter,
    ParseError,
    RangeAggregationExpr,
    StageExpr,
    StringLabelFilter,
    UnwrapExpr,
    VectorAggregationExpr,
    walk,
)
from loki_async.logql.literals import (
    format_bytes,
    parse_bytes,
    parse_go_duration,
    parse_go_float,
)
from loki_async.logql.parsers import (
    J_BOOLEAN,
    J_NULL,
    J_NUMBER,
    J_OBJECT,
    J_STRING,
    ExpressionError,
    IPPatternError,
    PatternError,
    PatternMatcher,
    Simple,
    append_sanitized,
    clean_value,
    contains_fold,
    decode,
    each_key,
    go_lower,
    has_assertions,
    ip_in_line,
    ip_matcher,
    json_document,
    json_loads,
    json_scalar,
    json_string_value,
    json_text,
    json_unescape,
    logfmt_fast,
    logfmt_scan,
    normalize_label,
    object_each,
    parse_json_expression,
    parse_logfmt_expression,
    pattern_nodes,
    sanitize_key,
    simplify_regex,
)
from loki_async.logql.regex import GoRegexError, compile_go

__all__ = [
    "LineLabels",
    "Pipeline",
    "SampleExtractor",
    "StreamPipeline",
    "StreamSampleExtractor",
    "compile_pipeline",
    "compile_sample_extractor",
]

ERROR_LABEL = "__error__"
ERROR_DETAILS_LABEL = "__error_details__"
PRESERVE_ERROR_LABEL = "__preserve_error__"
EXTRACTED_SUFFIX = "_extracted"
PACKED_ENTRY_KEY = "_entry"

ERR_JSON = "JSONParserErr"
ERR_LOGFMT = "LogfmtParserErr"
ERR_LABEL_FILTER = "LabelFilterErr"
ERR_SAMPLE = "SampleExtractionErr"
ERR_TEMPLATE = "TemplateFormatErr"

_UNEXPECTED_JSON_OBJECT = "expecting json object(6), but it is not"

# Interning tables per stream are cleared past this size (high-cardinality labels).
_INTERN_LIMIT = 1 << 12

# Range aggregations whose per-series values add up, so an outer `sum` grouping can be
# applied by the extractor (Loki's canInjectVectorGrouping).
_SUMMABLE = frozenset({"bytes_over_time", "bytes_rate", "count_over_time", "rate", "sum_over_time"})
_COUNT_OPS = frozenset({"count_over_time", "rate", "absent_over_time"})
_BYTES_OPS = frozenset({"bytes_over_time", "bytes_rate"})


def _stage_error(stage: str, msg: str) -> ParseError:
    """An error Loki reports when it builds a stage (HTTP 400)."""
    return ParseError(f"stage '{stage}' : {msg}")


# ---------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------


class LineLabels:
    """The output labels of a line: `key` is the canonical string of all of them,
    the dicts split them as Loki's ``categorize-labels`` encoding does (`parsed`
    holds ``__error__`` and ``__error_details__``). Interned per stream: compare by
    `key`, never mutate the dicts."""

    __slots__ = ("_all", "key", "parsed", "stream", "structured_metadata")

    def __init__(
        self,
        stream: dict[str, str],
        structured_metadata: dict[str, str],
        parsed: dict[str, str],
    ) -> None:
        self.stream = stream
        self.structured_metadata = structured_metadata
        self.parsed = parsed
        labels = {**stream, **structured_metadata, **parsed}
        self._all = labels
        self.key = label_string(labels)

    @property
    def labels(self) -> dict[str, str]:
        """All output labels as one dict."""
        return self._all

    def __repr__(self) -> str:
        return f"LineLabels({self.key})"


_PLAIN_VALUES = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII but " and \


def label_string(labels: Mapping[str, str]) -> str:
    """The canonical label string of `labels` (sorted, values quoted as Go does)."""
    if _PLAIN_VALUES.fullmatch("".join(labels.values())):
        # Fast path: no value needs escaping.
        return "{" + ", ".join([f'{k}="{labels[k]}"' for k in sorted(labels)]) + "}"
    return format_labels(sorted(labels.items()))


class _Builder:
    """The labels of the line being processed, in Loki's categories.

    `base` holds the stream labels (shared, read only), `sm` structured metadata,
    `parsed` the labels stages set (parsers, ``label_format``); a name is in at most
    one of `sm` and `parsed`, and one in either hides the stream label of that name.
    `deleted` hides stream labels (``drop``, ``keep``, renames). The error label is kept
    apart, as in Loki.
    """

    __slots__ = ("base", "deleted", "details", "err", "parsed", "sm", "ts")

    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        self.ts = 0
        self.sm: dict[str, str] = {}
        self.parsed: dict[str, str] = {}
        self.deleted: set[str] | None = None
        self.err = ""
        self.details = ""

    def reset(self, ts: int) -> None:
        self.ts = ts
        if self.sm:
            self.sm = {}
        if self.parsed:
            self.parsed = {}
        self.deleted = None
        self.err = ""
        self.details = ""

    def get(self, name: str) -> str | None:
        v = self.parsed.get(name)
        if v is None:
            v = self.sm.get(name)
            if v is None:
                if self.deleted is not None and name in self.deleted:
                    return None
                return self.base.get(name)
        return v

    def set_parsed(self, name: str, value: str) -> None:
        self.parsed[name] = value
        if self.sm:
            self.sm.pop(name, None)

    def drop_parsed_from_sm(self) -> None:
        """Restore the invariant after setting many parsed labels directly."""
        sm = self.sm
        for name in self.parsed:
            sm.pop(name, None)

    def delete(self, name: str) -> None:
        self.parsed.pop(name, None)
        self.sm.pop(name, None)
        if self.deleted is None:
            self.deleted = {name}
        else:
            self.deleted.add(name)

    def set_error(self, err: str, details: str) -> None:
        """Record an error, replacing any (label filters check first: they keep an
        earlier error)."""
        self.err = err
        self.details = details

    def unchanged(self) -> bool:
        return not self.parsed and not self.sm and self.deleted is None and not self.err

    def labels(self) -> dict[str, str]:
        """All labels, errors included (what templates and ``keep`` see)."""
        if self.unchanged():
            return self.base
        deleted = self.deleted
        out = {k: v for k, v in self.base.items() if deleted is None or k not in deleted}
        out.update(self.sm)
        out.update(self.parsed)
        if self.err:
            out[ERROR_LABEL] = self.err
        if self.details:
            out[ERROR_DETAILS_LABEL] = self.details
        return out

    def signature(self) -> tuple[Any, ...]:
        return (
            tuple(self.parsed.items()),
            tuple(self.sm.items()) if self.sm else None,
            frozenset(self.deleted) if self.deleted is not None else None,
            self.err,
            self.details,
        )


# ---------------------------------------------------------------------------
# Parser hints
# ---------------------------------------------------------------------------


class _Hints:
    """Which labels parsers must extract (Loki's parser hints): all of them when
    `required` is None; none when `no_labels`."""

    __slots__ = ("no_labels", "required")

    def __init__(self, required: frozenset[str] | None = None, no_labels: bool = False) -> None:
        self.required = required
        self.no_labels = no_labels

    def should_extract(self, name: str) -> bool:
        return self.required is None or name in self.required

    def should_extract_prefix(self, prefix: str) -> bool:
        if self.required is None:
            return True
        return any(r.startswith(prefix) for r in self.required)

    @classmethod
    def build(
        cls, required: Iterable[str], groups: Sequence[str], without: bool, no_labels: bool
    ) -> _Hints:
        names: set[str] = set()
        for name in (*required, *groups):
            if name:
                names.add(name)
                if name.endswith(EXTRACTED_SUFFIX):
                    names.add(name[: -len(EXTRACTED_SUFFIX)])
        if no_labels:
            return cls(frozenset(names)) if names else cls(no_labels=True)
        if without or not groups:
            return _ALL
        return cls(frozenset(names))


_ALL = _Hints()

# A compiled stage bound to one stream: (builder, line) -> line, or None to drop it.
StageFn = Callable[[_Builder, bytes], "bytes | None"]


class _Stage:
    """A compiled pipeline stage; `bind` makes its per-stream function."""

    required: tuple[str, ...] = ()

    def bind(self, base: dict[str, str]) -> StageFn:
        raise NotImplementedError


# ---------------------------------------------------------------------------
# Line filters
# ---------------------------------------------------------------------------


def _scan_needle(
    blob: bytes, offsets: Sequence[int], start: int, stop: int, needle: bytes
) -> list[int]:
    """Entries in [start, stop) whose line contains `needle`, found over the blob."""
    out: list[int] = []
    find = blob.find
    size = len(needle)
    pos = offsets[start]
    end = offsets[stop]
    while True:
        p = find(needle, pos, end)
        if p < 0:
            return out
        i = bisect_right(offsets, p, start, stop) - 1
        line_end = offsets[i + 1]
        if p + size <= line_end:
            out.append(i)
        # A needle spanning into the next line has no later occurrence in this one.
        pos = line_end


class _Alt:
    """One alternative of a line filter (the filter is their ``or``)."""

    def test(self, line: bytes) -> bool:
        raise NotImplementedError

    def scan(self, blob: bytes, offsets: Sequence[int], start: int, stop: int) -> list[int]:
        """Sorted entries in [start, stop) that pass; exact."""
        test = self.test
        return [i for i in range(start, stop) if test(blob[offsets[i] : offsets[i + 1]])]

    def may_match(self, blob: bytes) -> bool:
        """False only when no line of a block with this blob can pass."""
        return True


class _Contains(_Alt):
    def __init__(self, needle: bytes) -> None:
        self.needle = needle

    def test(self, line: bytes) -> bool:
        return self.needle in line

    def scan(self, blob: bytes, offsets: Sequence[int], start: int, stop: int) -> list[int]:
        # Fast path: one bytes.find per matching line.
        return _scan_needle(blob, offsets, start, stop, self.needle)

    def may_match(self, blob: bytes) -> bool:
        return self.needle in blob


# Non-ASCII characters that lower-case to ASCII (Kelvin sign, dotted capital I).
_LOWER_TO_ASCII = (b"\xe2\x84\xaa", b"\xc4\xb0")


class _ContainsFold(_Alt):
    """Loki's case-insensitive substring test (``(?i)literal``)."""

    def __init__(self, needle: str) -> None:
        self.needle = needle
        self.ascii = needle.encode() if needle.isascii() else None

    def test(self, line: bytes) -> bool:
        return contains_fold(line, self.needle)

    def _ascii_safe(self, blob: bytes) -> bool:
        return self.ascii is not None and (
            blob.isascii() or not any(s in blob for s in _LOWER_TO_ASCII)
        )

    def scan(self, blob: bytes, offsets: Sequence[int], start: int, stop: int) -> list[int]:
        if self._ascii_safe(blob):
            # Fast path: ASCII bytes are the only ones an ASCII needle can match.
            assert self.ascii is not None
            return _scan_needle(blob.lower(), offsets, start, stop, self.ascii)
        return super().scan(blob, offsets, start, stop)

    def may_match(self, blob: bytes) -> bool:
        if self._ascii_safe(blob):
            assert self.ascii is not None
            return self.ascii in blob.lower()
        return True


class _Regex(_Alt):
    """A Go regex searched in the line (unanchored), by RE2: linear in the line."""

    def __init__(self, source: str) -> None:
        self.pattern = compile_go(source).pattern
        # Without anchors or word boundaries a match inside a line is a match of the
        # blob at the same place, so the blob can be scanned as a whole.
        self.blob_scan = not has_assertions(source)
        self.matches_all = self.blob_scan and self.pattern.test(b"")

    def test(self, line: bytes) -> bool:
        return self.pattern.test(_go_utf8(line))

    def scan(self, blob: bytes, offsets: Sequence[int], start: int, stop: int) -> list[int]:
        if self.matches_all:
            return list(range(start, stop))
        if not (self.blob_scan and _utf8_lines(blob, offsets, start, stop)):
            # Slow path: search each line.
            return super().scan(blob, offsets, start, stop)
        # Fast path: one search per matching line over the blob.
        find = self.pattern.find
        out: list[int] = []
        pos, end = offsets[start], offsets[stop]
        while pos < end:
            span = find(blob, pos, end)
            if span is None:
                break
            i = bisect_right(offsets, span[0], start, stop) - 1
            line_end = offsets[i + 1]
            if span[1] <= line_end or find(blob, offsets[i], line_end) is not None:
                out.append(i)
            pos = line_end
        return out

    def may_match(self, blob: bytes) -> bool:
        # (Non-ASCII: a line may start inside a character, which only the offsets show.)
        if self.blob_scan and blob.isascii():
            return self.matches_all or self.pattern.test(blob)
        return True


def _go_utf8(line: bytes) -> bytes:
    """``line`` as Go's regexp reads it, for RE2: valid UTF-8 as it is, each invalid
    byte as U+FFFD."""
    if line.isascii():
        return line
    try:
        line.decode()
    except UnicodeDecodeError:
        return decode(line).encode()
    return line


def _utf8_lines(blob: bytes, offsets: Sequence[int], start: int, stop: int) -> bool:
    """Whether lines [start, stop) of a blob are all valid UTF-8, so that RE2 can search
    the blob as one text."""
    if blob.isascii():
        return True
    try:
        blob.decode()
    except UnicodeDecodeError:
        return False
    # A valid blob has invalid lines only where a line starts inside a character.
    return not any(0x80 <= blob[o] < 0xC0 for o in offsets[start:stop] if o < len(blob))


class _Pattern(_Alt):
    """``|> "<_> literal <_>"``."""

    def __init__(self, matcher: PatternMatcher) -> None:
        self.matcher = matcher
        self.literal = matcher.longest_literal()

    def test(self, line: bytes) -> bool:
        return self.matcher.test(line)

    def scan(self, blob: bytes, offsets: Sequence[int], start: int, stop: int) -> list[int]:
        if not self.literal:
            return super().scan(blob, offsets, start, stop)
        test = self.matcher.test
        return [
            i
            for i in _scan_needle(blob, offsets, start, stop, self.literal)
            if test(blob[offsets[i] : offsets[i + 1]])
        ]

    def may_match(self, blob: bytes) -> bool:
        return self.literal in blob


class _IP(_Alt):
    """``|= ip("...")``: an address found in the line matches the pattern."""

    def __init__(self, pattern: str) -> None:
        self.contains, version = ip_matcher(pattern)
        # Every IPv4 address has "d.d"; every IPv6 one a colon.
        self.hint = b":" if version == 6 else None

    def test(self, line: bytes) -> bool:
        return ip_in_line(line, self.contains)

    def scan(self, blob: bytes, offsets: Sequence[int], start: int, stop: int) -> list[int]:
        test = self.test
        if self.hint is not None:
            cands: Iterable[int] = _scan_needle(blob, offsets, start, stop, self.hint)
        else:
            cands = _scan_ipv4_hint(blob, offsets, start, stop)
        return [i for i in cands if test(blob[offsets[i] : offsets[i + 1]])]

    def may_match(self, blob: bytes) -> bool:
        if self.hint is not None:
            return self.hint in blob
        return _IPV4_HINT.search(blob) is not None


_IPV4_HINT = re.compile(rb"[0-9]\.[0-9]")


def _scan_ipv4_hint(blob: bytes, offsets: Sequence[int], start: int, stop: int) -> list[int]:
    out: list[int] = []
    search = _IPV4_HINT.search
    pos, end = offsets[start], offsets[stop]
    while True:
        m = search(blob, pos, end)
        if m is None:
            return out
        i = bisect_right(offsets, m.start(), start, stop) - 1
        line_end = offsets[i + 1]
        if m.end() <= line_end:
            out.append(i)
            pos = line_end
        else:
            pos = m.start() + 1


class _Exists(_Alt):
    """``|~ ".+"`` as Loki simplifies it: any non-empty line."""

    def test(self, line: bytes) -> bool:
        return bool(line)

    def scan(self, blob: bytes, offsets: Sequence[int], start: int, stop: int) -> list[int]:
        return [i for i in range(start, stop) if offsets[i + 1] > offsets[i]]

    def may_match(self, blob: bytes) -> bool:
        return bool(blob)


class _LineFilter:
    """One line filter: the ``or`` of its alternatives, negated for ``!=``, ``!~`` and
    ``!>``. `never` is Loki's negation of an always-true filter (``!= ""``)."""

    __slots__ = ("alts", "negative", "never", "test")

    def __init__(self, alts: list[_Alt], negative: bool, never: bool = False) -> None:
        self.alts = alts
        self.negative = negative
        self.never = never
        if never:
            self.test: Callable[[bytes], bool] = _false
        elif len(alts) == 1:
            one = alts[0].test
            self.test = (lambda line: not one(line)) if negative else one
        elif negative:
            self.test = lambda line: not any(a.test(line) for a in alts)
        else:
            self.test = lambda line: any(a.test(line) for a in alts)

    def _hits(self, blob: bytes, offsets: Sequence[int], start: int, stop: int) -> list[int]:
        if len(self.alts) == 1:
            return self.alts[0].scan(blob, offsets, start, stop)
        hits: set[int] = set()
        for a in self.alts:
            hits.update(a.scan(blob, offsets, start, stop))
        return sorted(hits)

    def select(self, block: Block, idx: Sequence[int]) -> Sequence[int]:
        """The entries of `idx` (non-empty, ascending) whose lines pass."""
        if self.never:
            return []
        blob, offsets = block.blob, block.offsets
        start, stop = idx[0], idx[-1] + 1
        if len(idx) * 4 < stop - start:
            # Slow path: few candidates left, test them one by one.
            test = self.test
            return [i for i in idx if test(blob[offsets[i] : offsets[i + 1]])]
        # Fast path: find the passing lines over the blob.
        hits = self._hits(blob, offsets, start, stop)
        if not self.negative:
            if isinstance(idx, range):
                return hits
            keep = set(hits)
            return [i for i in idx if i in keep]
        if not hits:
            return idx
        if isinstance(idx, range):
            # The gaps between hits, as C-level range extensions.
            out: list[int] = []
            prev = start
            for h in hits:
                out += range(prev, h)
                prev = h + 1
            out += range(prev, stop)
            return out
        drop = set(hits)
        return [i for i in idx if i not in drop]

    def may_match(self, blob: bytes) -> bool:
        if self.never:
            return False
        if self.negative:
            return True
        return any(a.may_match(blob) for a in self.alts)


def _false(_line: bytes) -> bool:
    return False


def _simple_alts(s: Simple) -> list[_Alt] | None:
    """The alternatives of a simplified regex; None when it always matches."""
    if s.kind == "true":
        return None
    if s.kind == "exists":
        return [_Exists()]
    if s.kind == "contains":
        return [_ContainsFold(s.text) if s.fold else _Contains(s.text.encode())]
    if s.kind == "or":
        out: list[_Alt] = []
        for a in s.alts:
            sub = _simple_alts(a)
            assert sub is not None, "BUG: an or-filter keeps no always-true leg"
            out.extend(sub)
        return out
    raise AssertionError(f"BUG: line filter simplified to {s.kind}")


def _line_value_alts(op: str, value: str, stage: str) -> list[_Alt] | None:
    """The alternatives of one line filter operand (None: matches every line)."""
    kind = op[1]
    if kind == "=":
        # Go strings are bytes: "\xff" is the byte 0xff (a lone surrogate here).
        return [_Contains(value.encode("utf-8", "surrogateescape"))] if value else None
    if kind == "~":
        try:
            simple = simplify_regex(value, is_label=False)
            if simple is not None:
                return _simple_alts(simple)
            return [_Regex(value)]
        except GoRegexError as exc:
            raise _stage_error(stage, str(exc)) from None
    try:
        return [_Pattern(PatternMatcher.for_line_filter(value))]
    except PatternError as exc:
        raise _stage_error(stage, str(exc)) from None


def _compile_line_filter(f: LineFilterExpr, stage: str) -> _LineFilter | None:
    """None when the filter passes every line."""
    negative = f.negative
    if len(f.values) == 1 and f.values[0].ip:
        if f.op not in ("|=", "!="):
            raise _stage_error(stage, "ip: invalid operation")
        try:
            return _LineFilter([_IP(f.values[0].value)], negative)
        except IPPatternError as exc:
            raise _stage_error(stage, str(exc)) from None
    alts: list[_Alt] = []
    for v in f.values:
        # In an `or` chain Loki builds every operand as a plain filter, ip() included,
        # and drops always-true operands.
        sub = _line_value_alts(f.op, v.value, stage)
        if sub is not None:
            alts.extend(sub)
    if not alts:
        return _LineFilter([], negative, never=True) if negative else None
    return _LineFilter(alts, negative)


class _LineFilterStage(_Stage):
    """Line filters that run per line (those after a label filter or line_format)."""

    def __init__(self, filters: list[_LineFilter]) -> None:
        self.filters = filters

    def bind(self, base: dict[str, str]) -> StageFn:
        tests = [f.test for f in self.filters]
        if len(tests) == 1:
            one = tests[0]
            return lambda b, line: line if one(line) else None

        def run(b: _Builder, line: bytes) -> bytes | None:
            for t in tests:
                if not t(line):
                    return None
            return line

        return run


# ---------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------


def _bounded(cache: dict[Any, Any]) -> dict[Any, Any]:
    if len(cache) > _INTERN_LIMIT:
        cache.clear()
    return cache


class _LogfmtStage(_Stage):
    """``| logfmt [--strict] [--keep-empty]``: the first value of a repeated key wins."""

    def __init__(self, strict: bool, keep_empty: bool, hints: _Hints) -> None:
        self.strict = strict
        self.keep_empty = keep_empty
        self.hints = hints

    def bind(self, base: dict[str, str]) -> StageFn:
        hints, keep_empty, strict = self.hints, self.keep_empty, self.strict
        names: dict[str, str | None] = {}
        names_get = names.get

        def name_of(key: str) -> str | None:
            name: str | None = sanitize_key(key)
            if name:
                if name in base:
                    name += EXTRACTED_SUFFIX
                if not hints.should_extract(name):
                    name = None
            else:
                name = None
            _bounded(names)[key] = name
            return name

        def run(b: _Builder, line: bytes) -> bytes | None:
            if hints.no_labels:
                return line
            try:
                text = line.decode()
                pairs = logfmt_fast(text)
            except UnicodeDecodeError:
                pairs = None
            parsed = b.parsed
            if pairs is not None:
                # Fast path: a well-formed line, the decoder cannot fail on it.
                fffd = "\ufffd" in text
                for key, quoted, plain in pairs:
                    name = names_get(key, _MISSING)
                    if name is _MISSING:
                        name = name_of(key)
                    if name is None or name in parsed:
                        continue
                    value = quoted or plain
                    if not value and not keep_empty:
                        continue
                    parsed[name] = clean_value(value) if fffd else value
                if b.sm:
                    b.drop_parsed_from_sm()
                return line
            # Slow path: the full decoder, with Loki's errors.
            for ok, key, raw, err in logfmt_scan(line):
                if not ok:
                    if strict:
                        if err:
                            b.set_error(ERR_LOGFMT, err)
                        break
                    continue
                name = name_of(decode(key))
                if name is None or name in parsed:
                    continue
                value = clean_value(decode(raw))
                if not value and not keep_empty:
                    continue
                b.set_parsed(name, value)
            return line

        return run


class _LogfmtExpressionStage(_Stage):
    """``| logfmt a="b", c``: only the named keys, missing ones as ``""``."""

    def __init__(self, e: LogfmtExpressionParser, hints: _Hints, stage: str) -> None:
        self.strict = e.strict
        self.hints = hints
        self.ids: list[str] = []
        self.origs: dict[str, str] = {}
        for x in e.expressions:
            try:
                path = parse_logfmt_expression(x.expression)
            except ExpressionError as exc:
                raise _stage_error(
                    stage, f"cannot parse expression [{x.expression}]: {exc}"
                ) from None
            # Loki formats the path with "%v": extra elements become noise.
            orig = path[0] + "".join(f"%!(EXTRA string={p})" for p in path[1:])
            if x.identifier not in self.origs:
                self.ids.append(x.identifier)
            self.origs[x.identifier] = orig
        self.by_orig = {orig: ident for ident, orig in reversed(self.origs.items())}

    def bind(self, base: dict[str, str]) -> StageFn:
        hints, strict, ids, by_orig = self.hints, self.strict, self.ids, self.by_orig
        preset = [i for i in ids if i not in base]
        wanted = set(ids)

        def run(b: _Builder, line: bytes) -> bytes | None:
            if hints.no_labels:
                return line
            for ident in preset:
                b.set_parsed(ident, "")
            for ok, key, raw, err in logfmt_scan(line):
                if not ok:
                    if strict:
                        if err:
                            b.set_error(ERR_LOGFMT, err)
                        break
                    continue
                name = sanitize_key(decode(key))
                if not name or (name not in wanted and not hints.should_extract(name)):
                    continue
                name = by_orig.get(name, name)
                if name not in wanted:
                    continue
                value = decode(raw)
                if "\ufffd" in value:
                    value = ""
                if name in base:
                    name += EXTRACTED_SUFFIX
                    if not hints.should_extract(name):
                        break
                b.set_parsed(name, value)
            return line

        return run


class _JSONStage(_Stage):
    """``| json``: every scalar of the object, nested keys joined with ``_``; as with
    logfmt, a label already extracted for the line is kept (a key repeated inside
    one object is read once, its last value, on the fast path)."""

    def __init__(self, hints: _Hints) -> None:
        self.hints = hints

    def bind(self, base: dict[str, str]) -> StageFn:
        hints = self.hints
        # Label name per (object prefix, key); None when not extracted.
        names: dict[str, dict[str, str | None]] = {}

        def leaf_name(prefix: str, key: str, cache: dict[str, str | None]) -> str | None:
            name = append_sanitized(prefix + "_", key) if prefix else sanitize_key(key)
            if name in base:
                name += EXTRACTED_SUFFIX
            out = name if hints.should_extract(name) else None
            cache[key] = out
            return out

        def walk_doc(parsed: dict[str, str], obj: dict[str, Any], prefix: str, odd: bool) -> None:
            cache = names.get(prefix)
            if cache is None:
                cache = _bounded(names)[prefix] = {}
            get = cache.get
            for key, v in obj.items():
                t = type(v)
                if t is str:  # strings and numbers (kept as written)
                    value = json_text(v, odd) if odd else v
                elif t is dict:
                    sub = append_sanitized(prefix + "_" if prefix else "", key)
                    if hints.should_extract_prefix(sub):
                        walk_doc(parsed, v, sub, odd)
                    continue
                elif t is bool:
                    value = "true" if v else "false"
                else:
                    continue  # arrays and nulls are skipped
                name = get(key, _MISSING)
                if name is _MISSING:
                    name = leaf_name(prefix, key, _bounded(cache))
                if name is not None and name not in parsed:
                    parsed[name] = value

        def slow(b: _Builder, data: bytes, prefix: str) -> str:
            def each(key: bytes, value: bytes, typ: int) -> str:
                k = decode(key)
                if typ in (J_STRING, J_NUMBER, J_BOOLEAN):
                    cache = names.get(prefix)
                    if cache is None:
                        cache = _bounded(names)[prefix] = {}
                    name = cache.get(k, _MISSING)
                    if name is _MISSING:
                        name = leaf_name(prefix, k, _bounded(cache))
                    if name is not None and name not in b.parsed:
                        b.set_parsed(name, json_scalar(value, typ))
                elif typ == J_OBJECT:
                    sub = append_sanitized(prefix + "_" if prefix else "", k)
                    if hints.should_extract_prefix(sub):
                        return slow(b, value, sub)
                return ""

            return object_each(data, each)

        def run(b: _Builder, line: bytes) -> bytes | None:
            if hints.no_labels:
                return line
            doc = json_document(line)
            if type(doc) is dict:
                # Fast path: strict JSON, read by the C decoder.
                walk_doc(b.parsed, doc, "", b"\\u" in line or b"\xef\xbf\xbd" in line)
                if b.sm:
                    b.drop_parsed_from_sm()
                return line
            # Slow path: jsonparser's lenient scanner, with its errors.
            err = slow(b, line, "")
            if err:
                b.set_error(ERR_JSON, err)
            return line

        return run


class _JSONExpressionStage(_Stage):
    """``| json a="b.c", d="e[0]"``."""

    def __init__(self, e: JSONExpressionParser, hints: _Hints, stage: str) -> None:
        self.hints = hints
        self.ids: list[str] = []
        self.paths: list[list[str | int]] = []
        for x in e.expressions:
            try:
                path = parse_json_expression(x.expression)
            except ExpressionError as exc:
                raise _stage_error(
                    stage, f"cannot parse expression [{x.expression}]: {exc}"
                ) from None
            self.ids.append(x.identifier)
            self.paths.append(path)
        self.str_paths = [
            [f"[{p}]" if isinstance(p, int) else p for p in path] for path in self.paths
        ]

    def bind(self, base: dict[str, str]) -> StageFn:
        ids = self.ids
        keys = [i + EXTRACTED_SUFFIX if i in base else i for i in ids]
        paths = self.str_paths
        hints = self.hints

        def run(b: _Builder, line: bytes) -> bytes | None:
            if not line or hints.no_labels:
                return line
            if line[0] not in b'"{[':
                b.set_error(ERR_JSON, "")
                return line
            found = self._fast(b, line, keys) if b"\\u" not in line else None
            if found is None:
                found = 0
                for pi, value, typ, err in each_key(line, paths):
                    if err:
                        b.set_error(ERR_JSON, err)
                        continue
                    if typ == J_NULL:
                        b.set_parsed(keys[pi], "")
                    elif typ == J_OBJECT:
                        b.set_parsed(keys[pi], decode(value))
                    else:
                        b.set_parsed(keys[pi], json_string_value(value))
                    found += 1
            if found < len(ids):
                for ident in ids:
                    if b.get(ident) is None:
                        b.set_parsed(ident, "")
            return line

        return run

    def _fast(self, b: _Builder, line: bytes, keys: list[str]) -> int | None:
        """The lookups on a strictly valid document; None to use the scanner (invalid
        JSON, or a value that is an object or array, whose raw text is needed)."""
        doc = json_document(line)
        if doc is None:
            return None
        values: list[tuple[str, str]] = []
        for key, path in zip(keys, self.str_paths, strict=True):
            node: Any = doc
            for el in path:
                if isinstance(node, dict):
                    node = node.get(el, _MISSING)
                elif isinstance(node, list) and el[:1] == "[":
                    try:
                        k = int(el[1:-1])
                    except ValueError:
                        k = 0
                    node = node[k] if 0 <= k < len(node) else _MISSING
                else:
                    node = _MISSING
                if node is _MISSING:
                    break
            if node is _MISSING:
                continue
            if isinstance(node, dict | list):
                return None
            if node is None:
                values.append((key, ""))
            elif node is True or node is False:
                values.append((key, "true" if node else "false"))
            else:
                values.append((key, clean_value(node)))
        for key, value in values:
            b.set_parsed(key, value)
        return len(values)


_MISSING = object()


class _UnpackStage(_Stage):
    """``| unpack``: string fields become labels, ``_entry`` replaces the line."""

    def __init__(self, hints: _Hints) -> None:
        self.hints = hints

    def bind(self, base: dict[str, str]) -> StageFn:
        hints = self.hints
        names: dict[str, str | None] = {}

        def name_of(key: str) -> str | None:
            name = names.get(key, "")
            if name != "":
                return name
            field = key + EXTRACTED_SUFFIX if key in base else key
            name = sanitize_key(field) if hints.should_extract(field) else None
            _bounded(names)[key] = name
            return name

        def run(b: _Builder, line: bytes) -> bytes | None:
            if not line or hints.no_labels:
                return line
            if line[0] != 0x7B:
                b.set_error(ERR_JSON, _UNEXPECTED_JSON_OBJECT)
                return line
            found: list[tuple[str, str]] = []
            entry: bytes | None = None
            try:
                doc = json_loads(line)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                odd = b"\\u" in line or b"\xef\xbf\xbd" in line
                for key, v in doc.items():
                    if not isinstance(v, str):
                        continue
                    if key == PACKED_ENTRY_KEY:
                        entry = v.encode("utf-8", "surrogatepass")
                        continue
                    name = name_of(key)
                    if name is not None:
                        found.append((name, json_text(v, odd)))
            else:

                def each(key: bytes, value: bytes, typ: int) -> str:
                    nonlocal entry
                    if typ != J_STRING:
                        return ""
                    if key == b"_entry":
                        unescaped = json_unescape(value)
                        if unescaped is None:
                            return "Encountered an invalid escape sequence in a string"
                        entry = unescaped
                        return ""
                    name = name_of(decode(key))
                    if name is not None:
                        found.append((name, json_string_value(value)))
                    return ""

                err = object_each(line, each)
                if err:
                    b.set_error(ERR_JSON, err)
                    return line
            if entry is None:
                return line
            for name, value in found:
                b.set_parsed(name, value)
            return entry

        return run


class _RegexpStage(_Stage):
    """``| regexp "(?P<name>...)"``: named groups, ``""`` for those not taking part."""

    def __init__(self, param: str, hints: _Hints) -> None:
        compiled = compile_go(param)
        self.pattern = compiled.pattern
        self.groups = [(i + 1, n) for i, n in enumerate(compiled.group_names) if n]
        self.hints = hints

    def bind(self, base: dict[str, str]) -> StageFn:
        targets: list[tuple[int, str]] = []
        for index, n in self.groups:
            name = sanitize_key(n)
            if not name:
                continue
            if name in base:
                name += EXTRACTED_SUFFIX
            if self.hints.should_extract(name):
                targets.append((index, name))
        spans_of = self.pattern.spans

        def run(b: _Builder, line: bytes) -> bytes | None:
            data = _go_utf8(line)
            spans = spans_of(data)
            if spans is not None:
                for index, name in targets:
                    lo, hi = spans[index]
                    b.set_parsed(name, data[lo:hi].decode() if lo >= 0 else "")
            return line

        return run


class _PatternStage(_Stage):
    """``| pattern "<ip> - <_> <status>"``."""

    def __init__(self, param: str, hints: _Hints) -> None:
        self.matcher = PatternMatcher(pattern_nodes(param))
        self.hints = hints

    def bind(self, base: dict[str, str]) -> StageFn:
        names: list[str | None] = []
        for n in self.matcher.names:
            name = n + EXTRACTED_SUFFIX if n in base else n
            names.append(name if self.hints.should_extract(name) else None)
        matches = self.matcher.matches
        hints = self.hints

        def run(b: _Builder, line: bytes) -> bytes | None:
            if hints.no_labels:
                return line
            for name, value in zip(names, matches(line), strict=False):
                if name is not None:
                    b.set_parsed(name, decode(value))
            return line

        return run


# ---------------------------------------------------------------------------
# Label filters
# ---------------------------------------------------------------------------

LabelTest = Callable[[_Builder], bool]
ValueTest = Callable[[str], bool]


def _value_test(s: Simple) -> ValueTest:
    """A label value test from a simplified label-filter regex."""
    if s.kind == "true":
        return lambda v: True
    if s.kind == "exists":
        return lambda v: v != ""
    if s.kind == "or":
        tests = [_value_test(a) for a in s.alts]
        return lambda v: any(t(v) for t in tests)
    text = s.text
    if s.kind == "contains":
        if s.fold:
            return lambda v: text in go_lower(v)
        return lambda v: text in v
    size = len(text.encode())
    if s.fold:
        return lambda v: len(v.encode()) == size and text in go_lower(v)
    return lambda v: v == text


def _matcher_value_test(m: Matcher) -> ValueTest | None:
    """Loki's string label filter (None when it keeps every line)."""
    op, value = m.op, m.value
    if op in ("=", "!="):
        eq = op == "="
        return (lambda v: v == value) if eq else (lambda v: v != value)
    simple = simplify_regex(value, is_label=True)
    if simple is None:
        test: ValueTest = _remembered(compile_go(value).pattern.test_full)
    else:
        if simple.kind == "true" and op == "=~":
            return None
        test = _value_test(simple)
    if op == "!~":
        positive = test
        return lambda v: not positive(v)
    return test


_REMEMBERED_VALUES = 4096


def _remembered(full: Callable[[bytes], bool]) -> ValueTest:
    """A regex value test that remembers its answers: a label filter sees the same few
    values over and over (levels, methods, status codes), and a dict lookup costs a
    tenth of a call into RE2."""
    seen: dict[str, bool] = {}

    def test(v: str) -> bool:
        found = seen.get(v)
        if found is None:
            if len(seen) >= _REMEMBERED_VALUES:
                seen.clear()
            found = seen[v] = full(v.encode("utf-8", "surrogatepass"))
        return found

    return test


def _label_value(b: _Builder, name: str) -> str:
    if name == ERROR_LABEL:
        return b.err
    v = b.get(name)
    return "" if v is None else v


def _compare(op: str) -> Callable[[Any, Any], bool]:
    return {
        "==": lambda a, c: a == c,
        "!=": lambda a, c: a != c,
        ">": lambda a, c: a > c,
        ">=": lambda a, c: a >= c,
        "<": lambda a, c: a < c,
        "<=": lambda a, c: a <= c,
    }[op]


def _converted(name: str, op: str, want: Any, convert: Callable[[str], Any]) -> LabelTest:
    cmp = _compare(op)

    def test(b: _Builder) -> bool:
        v = b.get(name)
        if v is None:
            return False
        try:
            got = convert(v)
        except ValueError as exc:
            # Loki keeps the line and marks it, unless an error is already there.
            if not b.err:
                b.set_error(ERR_LABEL_FILTER, str(exc))
            return True
        return cmp(got, want)

    return test


_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _go_float(v: str) -> float:
    """``strconv.ParseFloat``; ValueError with Go's message."""
    if _DECIMAL.fullmatch(v):
        # Fast path: a plain decimal, which Python reads the same way.
        f = float(v)
        if f - f == 0.0:  # finite; Go reports an overflow as an error
            return f
    return parse_go_float(v)


def _go_seconds(v: str) -> float:
    """``time.ParseDuration(v).Seconds()``, rounded as Go computes it."""
    sec, nsec = divmod(abs(ns := parse_go_duration(v)), 1_000_000_000)
    return (float(sec) + nsec / 1e9) * (1 if ns >= 0 else -1)


def _compile_label_filter(f: LabelFilterer, stage: str) -> LabelTest | None:
    """A test of the builder (None: keeps every line). Filters may set
    ``__error__=LabelFilterErr`` on conversion errors and keep the line."""
    if isinstance(f, BinaryLabelFilter):
        left = _compile_label_filter(f.left, stage) or _always
        right = _compile_label_filter(f.right, stage) or _always
        if f.is_and:

            def both(b: _Builder) -> bool:
                ok = left(b)
                return right(b) and ok  # both sides run: either may set an error

            return both
        return lambda b: left(b) or right(b)
    if isinstance(f, StringLabelFilter):
        m = f.matcher
        value_test = _matcher_value_test(m)
        if value_test is None:
            return None
        name = m.name
        return lambda b: value_test(_label_value(b, name))
    if isinstance(f, NumericLabelFilter):
        return _converted(f.name, f.op, f.value, _go_float)
    if isinstance(f, DurationLabelFilter):
        return _converted(f.name, f.op, f.value_ns, parse_go_duration)
    if isinstance(f, BytesLabelFilter):
        # Loki's frontend hands the querier the query's String(), where bytes are
        # printed rounded (42KiB becomes 43kB): the filter compares with that value.
        return _converted(f.name, f.op, parse_bytes(format_bytes(f.value)), parse_bytes)
    if isinstance(f, IPLabelFilter):
        try:
            contains, _ = ip_matcher(f.pattern)
        except IPPatternError as exc:
            raise _stage_error(stage, str(exc)) from None
        name, negate = f.name, f.op == "!="

        def ip_test(b: _Builder) -> bool:
            if b.err:
                return True
            v = b.get(name)
            if v is None:
                return False
            return ip_in_line(v.encode(), contains) != negate

        return ip_test
    raise AssertionError(f"BUG: unknown label filter {type(f).__name__}")


def _always(_b: _Builder) -> bool:
    return True


def _filter_names(f: LabelFilterer) -> list[str]:
    if isinstance(f, BinaryLabelFilter):
        return [*_filter_names(f.left), *_filter_names(f.right)]
    if isinstance(f, StringLabelFilter):
        return [f.matcher.name]
    return [f.name]  # type: ignore[attr-defined]


class _LabelFilterStage(_Stage):
    def __init__(self, test: LabelTest, names: list[str]) -> None:
        self.test = test
        self.required = tuple(names)

    def bind(self, base: dict[str, str]) -> StageFn:
        test = self.test
        return lambda b, line: line if test(b) else None


# ---------------------------------------------------------------------------
# Formatting and label stages
# ---------------------------------------------------------------------------


def _template(text: str, name: str) -> Any:
    """A Go text/template; `name` is Loki's (``line`` or ``label``), shown in errors."""
    from loki_async.logql.template import Template

    return Template(text, name)


def _template_error() -> type[Exception]:
    from loki_async.logql.template import TemplateError

    return TemplateError


class _LineFormatStage(_Stage):
    """``| line_format "{{.a}}"``; a failing template keeps the line and sets
    ``__error__=TemplateFormatErr``."""

    def __init__(self, text: str, stage: str) -> None:
        error = _template_error()
        try:
            self.template = _template(text, "line")
        except error as exc:
            raise _stage_error(stage, f"invalid line template: {exc}") from None
        self.error = error
        self.required = tuple(self.template.fields)

    def bind(self, base: dict[str, str]) -> StageFn:
        render, error = self.template.render, self.error

        def run(b: _Builder, line: bytes) -> bytes | None:
            try:
                out = render(b.labels(), line.decode("utf-8", "surrogateescape"), b.ts)
            except error as exc:
                b.set_error(ERR_TEMPLATE, str(exc))
                return line
            return out.encode("utf-8", "surrogateescape")

        return run


class _LabelFormatStage(_Stage):
    """``| label_format a=b, c="{{.d}}"``: renames and templates, results parsed."""

    def __init__(self, e: LabelFmtExpr, stage: str) -> None:
        seen: set[str] = set()
        for f in e.formats:
            if f.name == ERROR_LABEL:
                raise _stage_error(stage, f"{f.name} cannot be formatted")
            if f.name in seen:
                msg = f"multiple label name '{f.name}' not allowed in a single format operation"
                raise _stage_error(stage, msg)
            seen.add(f.name)
        self.error = _template_error() if any(not f.rename for f in e.formats) else Exception
        self.formats: list[tuple[str, str, Any]] = []
        required: list[str] = []
        for f in e.formats:
            if f.rename:
                self.formats.append((f.name, f.value, None))
                required.append(f.value)
                continue
            try:
                t = _template(f.value, "label")
            except self.error as exc:
                raise _stage_error(stage, f"invalid template for label '{f.name}': {exc}") from None
            self.formats.append((f.name, f.value, t))
            required.extend(t.fields)
        self.required = tuple(required)

    def bind(self, base: dict[str, str]) -> StageFn:
        formats, error = self.formats, self.error

        def run(b: _Builder, line: bytes) -> bytes | None:
            data: Mapping[str, str] | None = None
            text: str | None = None
            for name, source, template in formats:
                if template is None:
                    v = b.get(source)
                    if v is not None:
                        b.set_parsed(name, v)
                        b.delete(source)
                    continue
                if not data:
                    data = b.labels()  # a snapshot: later formats of this stage see it
                if text is None:
                    text = line.decode("utf-8", "surrogateescape")
                try:
                    value = template.render(data, text, b.ts)
                except error as exc:
                    b.set_error(ERR_TEMPLATE, str(exc))
                    continue
                b.set_parsed(name, value)
            return line

        return run


_ANSI = re.compile(
    rb"(?:\x1b|\xc2\x9b)[\[\]()#;?]*(?:(?:(?:[a-zA-Z\d]*(?:;[a-zA-Z\d]*)*)?\x07)"
    rb"|(?:(?:\d{1,4}(?:;\d{0,4})*)?[\dA-PRZcf-ntqry=><~]))"
)


class _DecolorizeStage(_Stage):
    def bind(self, base: dict[str, str]) -> StageFn:
        sub = _ANSI.sub
        return lambda b, line: sub(b"", line) if b"\x1b" in line or b"\xc2\x9b" in line else line


def _named_matchers(labels: Sequence[NamedLabelMatcher]) -> list[tuple[str, Matcher | None]]:
    out: list[tuple[str, Matcher | None]] = []
    for n in labels:
        out.append((n.matcher.name, n.matcher) if n.matcher is not None else (n.name, None))
    return out


class _DropStage(_Stage):
    def __init__(self, e: DropLabelsExpr) -> None:
        self.items = _named_matchers(e.labels)

    def bind(self, base: dict[str, str]) -> StageFn:
        items = self.items

        def run(b: _Builder, line: bytes) -> bytes | None:
            for name, m in items:
                if name == ERROR_LABEL:
                    if m is None or m.matches(b.err):
                        b.err = ""
                elif name == ERROR_DETAILS_LABEL:
                    if m is None or m.matches(b.details):
                        b.details = ""
                elif m is None:
                    if b.get(name) is not None:
                        b.delete(name)
                else:
                    v = b.get(name)
                    if m.matches("" if v is None else v):
                        b.delete(name)
            return line

        return run


class _KeepStage(_Stage):
    def __init__(self, e: KeepLabelsExpr) -> None:
        self.items = _named_matchers(e.labels)

    def bind(self, base: dict[str, str]) -> StageFn:
        items = self.items
        special = (ERROR_LABEL, ERROR_DETAILS_LABEL, PRESERVE_ERROR_LABEL)

        def run(b: _Builder, line: bytes) -> bytes | None:
            for name, value in list(b.labels().items()):
                if name in special:
                    continue
                for kname, m in items:
                    if kname == name and (m is None or m.matches(value)):
                        break
                else:
                    b.delete(name)
            return line

        return run


# ---------------------------------------------------------------------------
# Compilation
# ---------------------------------------------------------------------------


def _reorder(stages: Sequence[StageExpr]) -> list[list[LineFilterExpr] | StageExpr]:
    """Loki's ``reorderStages``: line filters move to the front of their segment; a
    segment ends at a label filter, a ``line_format`` or an ``unpack``."""
    result: list[list[LineFilterExpr] | StageExpr] = []
    filters: list[LineFilterExpr] = []
    rest: list[StageExpr] = []

    def flush() -> None:
        if filters:
            result.append(list(filters))
        result.extend(rest)
        filters.clear()
        rest.clear()

    for s in stages:
        if isinstance(s, LabelFilterExpr):
            flush()
            result.append(s)
        elif isinstance(s, LineFilterExpr):
            filters.append(s)
        elif isinstance(s, LineFmtExpr):
            rest.append(s)
            flush()
        elif isinstance(s, LabelParserExpr) and s.op == "unpack":
            rest.append(s)
            flush()
        else:
            rest.append(s)
    flush()
    return result


def _compile_stage(s: StageExpr, hints: _Hints) -> _Stage | None:
    stage = str(s)
    if isinstance(s, LogfmtParserExpr):
        return _LogfmtStage(s.strict, s.keep_empty, hints)
    if isinstance(s, LogfmtExpressionParser):
        return _LogfmtExpressionStage(s, hints, stage)
    if isinstance(s, JSONExpressionParser):
        return _JSONExpressionStage(s, hints, stage)
    if isinstance(s, LabelParserExpr):
        if s.op == "json":
            return _JSONStage(hints)
        if s.op == "unpack":
            return _UnpackStage(hints)
        if s.op == "regexp":
            return _RegexpStage(s.param, hints)
        if s.op == "pattern":
            return _PatternStage(s.param, hints)
        raise AssertionError(f"BUG: unknown parser {s.op}")
    if isinstance(s, LabelFilterExpr):
        test = _compile_label_filter(s.filter, stage)
        return None if test is None else _LabelFilterStage(test, _filter_names(s.filter))
    if isinstance(s, LineFmtExpr):
        return _LineFormatStage(s.value, stage)
    if isinstance(s, LabelFmtExpr):
        return _LabelFormatStage(s, stage)
    if isinstance(s, DecolorizeExpr):
        return _DecolorizeStage()
    if isinstance(s, DropLabelsExpr):
        return _DropStage(s)
    if isinstance(s, KeepLabelsExpr):
        return _KeepStage(s)
    raise AssertionError(f"BUG: unknown stage {type(s).__name__}")


def _compile_filters(group: list[LineFilterExpr]) -> list[_LineFilter]:
    stage = " ".join(str(f) for f in group)
    out = []
    for f in group:
        c = _compile_line_filter(f, stage)
        if c is not None:
            out.append(c)
    return out


def _compile(stages: Sequence[StageExpr], hints: _Hints) -> Pipeline:
    leading: list[_LineFilter] = []
    compiled: list[_Stage] = []
    for i, item in enumerate(_reorder(stages)):
        if isinstance(item, list):
            filters = _compile_filters(item)
            if not filters:
                continue
            if i == 0:
                leading = filters
            else:
                compiled.append(_LineFilterStage(filters))
            continue
        c = _compile_stage(item, hints)
        if c is not None:
            compiled.append(c)
    return Pipeline(leading, compiled)


def _required_names(stages: Sequence[_Stage]) -> list[str]:
    out: list[str] = []
    for s in stages:
        out.extend(s.required)
    return out


# ---------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------


def compile_pipeline(expr: LogSelectorExpr) -> Pipeline:
    """The pipeline of a log query. Raises :class:`ParseError` (a BadRequest) for the
    errors Loki reports when it builds stages: invalid ``json``/``logfmt``
    expressions, ``ip()`` with ``|~``/``!~``/``|>``, bad ``ip()`` patterns, duplicate or
    ``__error__`` ``label_format`` targets, named captures in ``|>`` patterns, bad
    templates."""
    return _compile(expr.stages, _ALL)


class Pipeline:
    """A compiled log pipeline, shared by all streams of a query (not thread-safe:
    stream pipelines keep per-line state)."""

    def __init__(self, leading: list[_LineFilter], stages: list[_Stage]) -> None:
        self._leading = leading
        self._stages = stages
        self._streams: dict[str, StreamPipeline] = {}
        self.noop = not leading and not stages
        """No stage at all: lines and labels come out as they went in."""
        self.line_filter_only = not stages
        """Every stage is a line filter (applied by :meth:`filter_block`)."""

    def block_may_match(self, blob: bytes) -> bool:
        """False only if no line of a block with this blob can pass the leading line
        filters (cheap: ``in`` tests or one regex search over the blob)."""
        return all(f.may_match(blob) for f in self._leading)

    def filter_block(self, block: Block, lo: int, hi: int) -> Sequence[int]:
        """Indexes in [lo, hi) of the entries that pass the leading line filters,
        ascending; ``range(lo, hi)`` when there are none."""
        idx: Sequence[int] = range(lo, hi)
        for f in self._leading:
            if not idx:
                break
            idx = f.select(block, idx)
        return idx

    def for_stream(self, labels: str) -> StreamPipeline:
        """The pipeline of one stream (cached per canonical label string)."""
        sp = self._streams.get(labels)
        if sp is None:
            sp = self._streams[labels] = StreamPipeline(self, labels)
        return sp


class StreamPipeline:
    """The stages after the leading line filters, bound to one stream."""

    def __init__(self, pipeline: Pipeline, labels: str) -> None:
        base = label_map(labels)
        self.base = base
        self._builder = _Builder(base)
        self._stages = [s.bind(base) for s in pipeline._stages]
        self.base_labels = LineLabels(base, {}, {})
        self._interned: dict[tuple[Any, ...], LineLabels] = {}
        self._metadata: dict[bytes, tuple[tuple[tuple[str, str], ...], str, str]] = {}

    def process(self, ts_ns: int, line: bytes, metadata: bytes) -> tuple[bytes, LineLabels] | None:
        """Run the stages on one line that passed the leading line filters;
        `metadata` is the entry's msgpack structured metadata (``b""`` for none).
        None when a stage drops the line."""
        if not self._stages and not metadata:
            return line, self.base_labels
        b = self.run(ts_ns, line, metadata)
        if b is None:
            return None
        return b[0], self.result(b[1])

    def run(self, ts_ns: int, line: bytes, metadata: bytes) -> tuple[bytes, _Builder] | None:
        """The line after the stages and the builder holding its labels (valid until
        the next call)."""
        b = self._builder
        b.reset(ts_ns)
        if metadata:
            self._add_metadata(b, metadata)
        for stage in self._stages:
            out = stage(b, line)
            if out is None:
                return None
            line = out
        return line, b

    def _add_metadata(self, b: _Builder, metadata: bytes) -> None:
        prepared = self._metadata.get(metadata)
        if prepared is None:
            items: dict[str, str] = {}
            err = details = ""
            for name, value in decode_metadata(metadata):
                name = normalize_label(name)
                if name in self.base:
                    name += EXTRACTED_SUFFIX
                if name == ERROR_LABEL:
                    err = value
                elif name == ERROR_DETAILS_LABEL:
                    details = value
                else:
                    items[name] = value
            prepared = (tuple(items.items()), err, details)
            _bounded(self._metadata)[metadata] = prepared
        pairs, err, details = prepared
        b.sm = dict(pairs)
        if err:
            b.err = err
        if details:
            b.details = details

    def result(self, b: _Builder) -> LineLabels:
        """The interned labels of the builder's state."""
        if b.unchanged():
            return self.base_labels
        sig = b.signature()
        ll = self._interned.get(sig)
        if ll is None:
            deleted, sm, parsed = b.deleted, b.sm, b.parsed
            stream = {
                k: v
                for k, v in self.base.items()
                if k not in parsed and k not in sm and (deleted is None or k not in deleted)
            }
            out = dict(parsed)
            if b.err:
                out[ERROR_LABEL] = b.err
            if b.details:
                out[ERROR_DETAILS_LABEL] = b.details
            ll = LineLabels(stream, dict(sm), out)
            _bounded(self._interned)[sig] = ll
        return ll


# ---------------------------------------------------------------------------
# Sample extraction
# ---------------------------------------------------------------------------


def _pushdown(expr: RangeAggregationExpr, root: Expr | None) -> Grouping | None:
    """The grouping of an enclosing ``sum`` that Loki injects into the extractor (None
    when there is none, or when equal copies of `expr` sit under different parents)."""
    if root is None or expr.grouping is not None or expr.operation not in _SUMMABLE:
        return None
    # Every occurrence of `expr` (equal copies fetch their samples once) must sit
    # directly under a `sum` with one and the same grouping.
    parents = [p for p in walk(root) for c in p.children() if c == expr]
    occurrences = sum(1 for e in walk(root) if e == expr)
    if not parents or len(parents) != occurrences:
        return None
    groupings = {p.grouping for p in parents if isinstance(p, VectorAggregationExpr)}
    if any(not isinstance(p, VectorAggregationExpr) or p.operation != "sum" for p in parents):
        return None
    if len(groupings) != 1:
        return None
    return groupings.pop()


def _converter(op: str) -> Callable[[str], float]:
    if op == "":
        return _go_float
    if op == "bytes":
        return lambda v: float(parse_bytes(v))
    if op in ("duration", "duration_seconds"):
        return _go_seconds
    raise AssertionError(f"BUG: unknown unwrap conversion {op}")


def compile_sample_extractor(
    expr: RangeAggregationExpr, root: Expr | None = None
) -> SampleExtractor:
    """The sample extractor of a range aggregation. `root` is the whole query: an
    enclosing ``sum by/without`` of a summable range aggregation without its own
    grouping is applied here (as Loki does), and parsers then only extract the labels
    the query needs."""
    return SampleExtractor(expr, root)


class SampleExtractor:
    """Extracts ``(ts, value)`` samples per output series from blocks of streams."""

    def __init__(self, expr: RangeAggregationExpr, root: Expr | None) -> None:
        grouping = _pushdown(expr, root) or expr.grouping
        groups: list[str] = list(grouping.groups) if grouping else []
        without = bool(grouping and grouping.without)
        no_labels = bool(grouping and grouping.singleton)
        unwrap: UnwrapExpr | None = expr.left.unwrap
        metric_label = ""
        self.unwrap_label = ""
        if unwrap is not None:
            metric_label = self.unwrap_label = unwrap.identifier
            if not groups or without:
                without = True
                groups = sorted({*groups, unwrap.identifier})
            self.convert = _converter(unwrap.operation)
            post = [_compile_label_filter(f, f"| {f}") for f in unwrap.post_filters]
            self.post = [p for p in post if p is not None]
            post_names = [n for f in unwrap.post_filters for n in _filter_names(f)]
        else:
            self.post = []
            post_names = []
        self.value_kind = (
            "unwrap" if unwrap is not None else "bytes" if expr.operation in _BYTES_OPS else "count"
        )
        stages = expr.selector.stages
        plain = _compile(stages, _ALL)
        hints = _Hints.build(
            [*_required_names(plain._stages), *post_names, metric_label],
            groups,
            without,
            no_labels,
        )
        self.pipeline = plain if hints is _ALL else _compile(stages, hints)
        """The log part: callers use its ``block_may_match`` and ``filter_block``."""
        self.groups = tuple(groups)
        self.without = without
        self.no_labels = no_labels
        stages_after = self.pipeline._stages
        self.logfmt_only = (
            len(stages_after) == 1
            and isinstance(stages_after[0], _LogfmtStage)
            and not stages_after[0].strict
            and self.value_kind != "unwrap"
            and not without
            and (no_labels or bool(groups))
        )
        """The only stage is a non-strict ``| logfmt``, which never fails, and the series
        keep only the grouping labels: where those are all stream labels, a parsed label
        cannot change a line's series (a clash is renamed ``_extracted``)."""
        self.count_only = (
            self.value_kind == "count"
            and self.pipeline.line_filter_only
            and not groups
            and not no_labels
        )
        """Every entry kept by the leading line filters is one sample of 1.0 for the
        stream's own labels (entries without structured metadata)."""
        self._streams: dict[str, StreamSampleExtractor] = {}

    def for_stream(self, labels: str) -> StreamSampleExtractor:
        sx = self._streams.get(labels)
        if sx is None:
            sx = self._streams[labels] = StreamSampleExtractor(self, labels)
        return sx


def _grouped(labels: Mapping[str, str], groups: Sequence[str], without: bool) -> str:
    if without:
        drop = set(groups)
        return label_string({k: v for k, v in labels.items() if k not in drop})
    return label_string({g: labels[g] for g in groups if g in labels})


class StreamSampleExtractor:
    """Sample extraction for one stream."""

    def __init__(self, ex: SampleExtractor, labels: str) -> None:
        self.ex = ex
        self.sp = ex.pipeline.for_stream(labels)
        base = self.sp.base
        if ex.no_labels:
            self.base_key = "{}"
        elif ex.groups:
            self.base_key = _grouped(base, ex.groups, ex.without)
        else:
            self.base_key = self.sp.base_labels.key
        """The series of entries whose labels the pipeline leaves unchanged."""
        self.series_fixed = ex.logfmt_only and (ex.no_labels or all(g in base for g in ex.groups))
        """Every line of this stream is in the base series (see ``logfmt_only``)."""
        self._keys: dict[Any, str] = {}

    def _key(self, b: _Builder) -> str:
        ex = self.ex
        if b.err:
            return self.sp.result(b).key
        if ex.no_labels:
            return "{}"
        if not b.parsed and not b.sm and b.deleted is None:
            return self.base_key
        if not ex.groups:
            return self.sp.result(b).key
        keys = self._keys
        if ex.without:
            sig = b.signature()
            key = keys.get(sig)
            if key is None:
                labels = b.labels()
                labels.pop(ERROR_DETAILS_LABEL, None)
                key = _bounded(keys)[sig] = _grouped(labels, ex.groups, True)
            return key
        deleted = b.deleted
        values = tuple(
            None if deleted is not None and g in deleted else b.get(g) for g in ex.groups
        )
        key = keys.get(values)
        if key is None:
            kept = {g: v for g, v in zip(ex.groups, values, strict=True) if v is not None}
            key = _bounded(keys)[values] = label_string(kept)
        return key

    def extract_block(self, block: Block, indexes: Sequence[int]) -> dict[str, tuple[array, array]]:
        """Samples of the entries `indexes` (kept by the pipeline's ``filter_block``), per
        series key, in index order. Values: 1.0 per entry (``count_over_time``,
        ``rate``, ``absent_over_time``), the line length (``bytes_*``), or the unwrapped
        label converted; a failed conversion gives 0 and a series with
        ``__error__="SampleExtractionErr"``."""
        if not len(indexes):
            return {}
        ex = self.ex
        ts_col, offsets, blob = block.ts, block.offsets, block.blob
        if (
            (ex.pipeline.line_filter_only or self.series_fixed)
            and ex.value_kind != "unwrap"
            and (block.meta_offsets is None)
        ):
            # Fast path: no stage can change the series or drop lines.
            if isinstance(indexes, range) and indexes.step == 1:
                ts = ts_col[indexes.start : indexes.stop]
            else:
                ts = array("q", [ts_col[i] for i in indexes])
            if ex.value_kind == "count":
                values = array("d", [1.0]) * len(ts)
            else:
                values = array("d", [offsets[i + 1] - offsets[i] for i in indexes])
            return {self.base_key: (ts, values)}
        # Slow path: the stages per line.
        out: dict[str, tuple[array, array]] = {}
        run = self.sp.run
        has_meta = block.meta_offsets is not None
        kind = ex.value_kind
        label, convert, post = ex.unwrap_label, ex.unwrap_label and ex.convert, ex.post
        for i in indexes:
            ts = ts_col[i]
            r = run(ts, blob[offsets[i] : offsets[i + 1]], block.metadata(i) if has_meta else b"")
            if r is None:
                continue
            line, b = r
            if kind == "count":
                value = 1.0
            elif kind == "bytes":
                value = float(len(line))
            else:
                raw = b.get(label)
                if not raw:
                    continue  # Loki skips entries without the label
                try:
                    value = convert(raw)  # type: ignore[operator]
                except ValueError as exc:
                    value = 0.0
                    b.set_error(ERR_SAMPLE, str(exc))
                if post:
                    # All post filters run (one may set an error), as Loki's `and`.
                    passed = [p(b) for p in post]
                    if not all(passed):
                        continue
            key = self._key(b)
            slot = out.get(key)
            if slot is None:
                slot = out[key] = (array("q"), array("d"))
            slot[0].append(ts)
            slot[1].append(value)
        return out
