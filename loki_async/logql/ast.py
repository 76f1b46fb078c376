"""The LogQL syntax tree: frozen dataclasses, one per node kind, printed as Loki's ``String()``.

Log queries are a :class:`LogSelectorExpr` (:class:`MatchersExpr` or
:class:`PipelineExpr`: stream matchers plus pipeline stages). Metric queries are a
:class:`SampleExpr`: range aggregations over a :class:`LogRange`, vector
aggregations, binary operations, literals, ``vector()`` and ``label_replace()``.
``variants(...) of (...)`` is a :class:`MultiVariantExpr`.

``str(node)`` reproduces Loki's ``String()`` byte for byte, including its quirks
(``sum by (a)(x)``, ``( a , b )`` for label filters, durations as Go prints them).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from loki_async.errors import BadRequest
from loki_async.logql.literals import (
    format_bytes,
    format_float_f,
    format_float_fixed,
    format_float_g,
    format_go_duration,
    format_prom_duration,
    go_quote,
)
from loki_async.logql.regex import (
    GoRegexError,
    Pattern,
    compile_go,
    simplifies_to_literal_filters,
)


class ParseError(BadRequest):
    """A query Loki would reject, with Loki's message.

    ``parse error at line L, col C: syntax error: unexpected X`` for syntax errors,
    ``parse error : <msg>`` for errors without a position (validation, regexes).
    A few entry-point errors (``only label matchers are supported``) are `plain`.
    """

    def __init__(self, msg: str, line: int = 0, col: int = 0, *, plain: bool = False) -> None:
        if plain:
            text = msg
        elif line == 0 and col == 0:
            text = f"parse error : {msg}"
        else:
            text = f"parse error at line {line}, col {col}: {msg}"
        # A query's bytes that are not UTF-8 (a "\xff" escape) are lone surrogates here;
        # the message must still travel as UTF-8: they become U+FFFD, as Go's JSON does.
        super().__init__(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
        self.msg = msg
        self.line = line
        self.col = col


# ---------------------------------------------------------------------------
# Matchers
# ---------------------------------------------------------------------------

MATCH_EQUAL = "="
MATCH_NOT_EQUAL = "!="
MATCH_REGEXP = "=~"
MATCH_NOT_REGEXP = "!~"
MATCH_OPS = (MATCH_EQUAL, MATCH_NOT_EQUAL, MATCH_REGEXP, MATCH_NOT_REGEXP)


def _is_legacy_name(name: str) -> bool:
    return bool(re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name))


@dataclass(frozen=True, slots=True)
class Matcher:
    """A Prometheus label matcher. Regex matchers are fully anchored and ``.`` matches
    newlines (``=~"a.*"`` means Go's ``^(?s:a.*)$``); the regex is Go syntax."""

    name: str
    op: str
    value: str
    _regex: Pattern | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in MATCH_OPS:
            raise AssertionError(f"BUG: unknown match operator {self.op!r}")
        if self.op in (MATCH_REGEXP, MATCH_NOT_REGEXP):
            try:
                pattern = compile_go(self.value, dot_nl=True).pattern
            except GoRegexError as exc:
                raise ParseError(str(exc)) from None
            object.__setattr__(self, "_regex", pattern)

    def matches(self, value: str) -> bool:
        """Whether a label value (``""`` for a missing label) satisfies the matcher."""
        if self.op == MATCH_EQUAL:
            return value == self.value
        if self.op == MATCH_NOT_EQUAL:
            return value != self.value
        assert self._regex is not None
        found = self._regex.test_full(value.encode("utf-8", "surrogatepass"))
        return found if self.op == MATCH_REGEXP else not found

    def __str__(self) -> str:
        name = self.name if _is_legacy_name(self.name) else go_quote(self.name)
        return f"{name}{self.op}{go_quote(self.value)}"


# ---------------------------------------------------------------------------
# Bases
# ---------------------------------------------------------------------------


class Expr:
    """Any LogQL expression."""

    __slots__ = ()

    def children(self) -> tuple[Expr, ...]:
        """Direct sub-expressions, left to right."""
        return ()


def walk(expr: Expr) -> Iterator[Expr]:
    """`expr` and all its sub-expressions, depth first, parents before children."""
    yield expr
    for child in expr.children():
        yield from walk(child)


class StageExpr(Expr):
    """One stage of a log pipeline."""

    __slots__ = ()


class LogSelectorExpr(Expr):
    """A log query: stream matchers and pipeline stages."""

    __slots__ = ()

    @property
    def matchers(self) -> tuple[Matcher, ...]:
        raise NotImplementedError

    @property
    def stages(self) -> tuple[StageExpr, ...]:
        return ()

    @property
    def line_filters(self) -> tuple[LineFilterExpr, ...]:
        """All line filter stages, in pipeline order."""
        return tuple(s for s in self.stages if isinstance(s, LineFilterExpr))


class SampleExpr(Expr):
    """A metric query."""

    __slots__ = ()


class LabelFilterer:
    """A predicate on a label (the right side of ``| name op value``)."""

    __slots__ = ()


# ---------------------------------------------------------------------------
# Log selectors
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MatchersExpr(LogSelectorExpr):
    """A stream selector ``{a="b", c=~"d"}``."""

    mts: tuple[Matcher, ...]

    @property
    def matchers(self) -> tuple[Matcher, ...]:
        return self.mts

    def __str__(self) -> str:
        return "{" + ", ".join(str(m) for m in self.mts) + "}"


@dataclass(frozen=True, slots=True)
class PipelineExpr(LogSelectorExpr):
    """A stream selector followed by pipeline stages."""

    left: MatchersExpr
    multi_stages: tuple[StageExpr, ...]

    @property
    def matchers(self) -> tuple[Matcher, ...]:
        return self.left.mts

    @property
    def stages(self) -> tuple[StageExpr, ...]:
        return self.multi_stages

    def children(self) -> tuple[Expr, ...]:
        return (self.left, *self.multi_stages)

    def __str__(self) -> str:
        return f"{self.left} " + " ".join(str(s) for s in self.multi_stages)


# ---------------------------------------------------------------------------
# Pipeline stages
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineMatch:
    """One operand of a line filter: a string, or ``ip("...")`` when `ip` is set."""

    value: str
    ip: bool = False

    def __str__(self) -> str:
        return f"ip({go_quote(self.value)})" if self.ip else go_quote(self.value)


@dataclass(frozen=True, slots=True)
class LineFilterExpr(StageExpr):
    """A line filter: ``|= "a"``, ``!~ "re"``, ``|> "<_> pattern"``, ``|= ip("...")``.

    Several `values` mean ``or`` (``|= "a" or "b"``). Negative filters never have
    more than one: ``!= "a" or "b"`` is parsed, as in Loki, into ``!= "a" != "b"``.
    """

    op: str
    values: tuple[LineMatch, ...]

    @property
    def negative(self) -> bool:
        return self.op[0] == "!"

    def __str__(self) -> str:
        return f"{self.op} " + " or ".join(str(v) for v in self.values)


@dataclass(frozen=True, slots=True)
class LogfmtParserExpr(StageExpr):
    """``| logfmt [--strict] [--keep-empty]``."""

    strict: bool = False
    keep_empty: bool = False

    def __str__(self) -> str:
        return (
            "| logfmt"
            + (" --strict" if self.strict else "")
            + (" --keep-empty" if self.keep_empty else "")
        )


@dataclass(frozen=True, slots=True)
class LabelParserExpr(StageExpr):
    """``| json``, ``| unpack``, ``| regexp "re"`` or ``| pattern "<a> <_>"``."""

    op: str
    param: str = ""

    def __str__(self) -> str:
        if self.param or self.op in ("regexp", "pattern"):
            return f"| {self.op} {go_quote(self.param)}"
        return f"| {self.op}"


@dataclass(frozen=True, slots=True)
class LabelExtractionExpr:
    """``identifier="expression"`` in ``| json`` or ``| logfmt`` (the expression is the
    identifier itself when omitted)."""

    identifier: str
    expression: str

    def __str__(self) -> str:
        return f"{self.identifier}={go_quote(self.expression)}"


@dataclass(frozen=True, slots=True)
class JSONExpressionParser(StageExpr):
    """``| json a="b.c", d``."""

    expressions: tuple[LabelExtractionExpr, ...]

    def __str__(self) -> str:
        return "| json " + ",".join(str(e) for e in self.expressions)


@dataclass(frozen=True, slots=True)
class LogfmtExpressionParser(StageExpr):
    """``| logfmt [--strict] [--keep-empty] a="b", c``."""

    expressions: tuple[LabelExtractionExpr, ...]
    strict: bool = False
    keep_empty: bool = False

    def __str__(self) -> str:
        flags = ("--strict " if self.strict else "") + ("--keep-empty " if self.keep_empty else "")
        return "| logfmt " + flags + ",".join(str(e) for e in self.expressions)


@dataclass(frozen=True, slots=True)
class LabelFilterExpr(StageExpr):
    """``| <label filter>``."""

    filter: LabelFilterer

    def __str__(self) -> str:
        return f"| {self.filter}"


@dataclass(frozen=True, slots=True)
class LineFmtExpr(StageExpr):
    """``| line_format "template"``."""

    value: str

    def __str__(self) -> str:
        return f"| line_format {go_quote(self.value)}"


@dataclass(frozen=True, slots=True)
class LabelFmt:
    """One ``name=value`` of ``label_format``: a rename (``dst=src``) or a template."""

    name: str
    value: str
    rename: bool

    def __str__(self) -> str:
        return f"{self.name}={self.value if self.rename else go_quote(self.value)}"


@dataclass(frozen=True, slots=True)
class LabelFmtExpr(StageExpr):
    """``| label_format a=b,c="{{.d}}"``."""

    formats: tuple[LabelFmt, ...]

    def __str__(self) -> str:
        return "| label_format " + ",".join(str(f) for f in self.formats)


@dataclass(frozen=True, slots=True)
class DecolorizeExpr(StageExpr):
    """``| decolorize``."""

    def __str__(self) -> str:
        return "| decolorize"


@dataclass(frozen=True, slots=True)
class NamedLabelMatcher:
    """An operand of ``drop``/``keep``: a bare label `name`, or a `matcher`."""

    name: str = ""
    matcher: Matcher | None = None

    def __str__(self) -> str:
        return str(self.matcher) if self.matcher is not None else self.name


@dataclass(frozen=True, slots=True)
class DropLabelsExpr(StageExpr):
    """``| drop a, b="c"``."""

    labels: tuple[NamedLabelMatcher, ...]

    def __str__(self) -> str:
        return "| drop " + ",".join(str(n) for n in self.labels)


@dataclass(frozen=True, slots=True)
class KeepLabelsExpr(StageExpr):
    """``| keep a, b="c"``."""

    labels: tuple[NamedLabelMatcher, ...]

    def __str__(self) -> str:
        return "| keep " + ",".join(str(n) for n in self.labels)


# ---------------------------------------------------------------------------
# Label filters
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringLabelFilter(LabelFilterer):
    """``name=~"re"`` and friends: a matcher applied to a (possibly extracted) label.

    Loki's label filter regexes are anchored but, unlike stream matchers, ``.`` does
    not match a newline.
    """

    matcher: Matcher

    def __str__(self) -> str:
        m = self.matcher
        if m.op in (MATCH_REGEXP, MATCH_NOT_REGEXP) and not simplifies_to_literal_filters(m.value):
            value = go_quote(m.value) if "`" in m.value else f"`{m.value}`"
            return f"{m.name}{m.op}{value}"
        return str(m)


@dataclass(frozen=True, slots=True)
class NumericLabelFilter(LabelFilterer):
    """``name > 5``; `op` is one of ``== != > >= < <=``."""

    name: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.name}{self.op}{format_float_f(self.value)}"


@dataclass(frozen=True, slots=True)
class DurationLabelFilter(LabelFilterer):
    """``name > 250ms``."""

    name: str
    op: str
    value_ns: int

    def __str__(self) -> str:
        return f"{self.name}{self.op}{format_go_duration(self.value_ns)}"


@dataclass(frozen=True, slots=True)
class BytesLabelFilter(LabelFilterer):
    """``name > 10KB``; printed as humanize does (``43kB`` for 42KiB, as in Loki)."""

    name: str
    op: str
    value: int

    def __str__(self) -> str:
        return f"{self.name}{self.op}{format_bytes(self.value)}"


@dataclass(frozen=True, slots=True)
class IPLabelFilter(LabelFilterer):
    """``name = ip("10.0.0.0/8")``; `op` is ``==`` or ``!=``. The pattern is not
    checked by the parser (Loki reports a bad one when the query runs)."""

    name: str
    op: str
    pattern: str

    def __str__(self) -> str:
        return f"{self.name}{'!=' if self.op == '!=' else '='}ip({go_quote(self.pattern)})"


@dataclass(frozen=True, slots=True)
class BinaryLabelFilter(LabelFilterer):
    """Two label filters joined by ``and`` (also written ``,`` or a space) or ``or``."""

    left: LabelFilterer
    right: LabelFilterer
    is_and: bool

    def __str__(self) -> str:
        return f"( {self.left} {',' if self.is_and else 'or'} {self.right} )"


# ---------------------------------------------------------------------------
# Metric queries
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnwrapExpr:
    """``| unwrap [bytes|duration|duration_seconds](label)`` and its post filters."""

    identifier: str
    operation: str = ""
    post_filters: tuple[LabelFilterer, ...] = ()

    def __str__(self) -> str:
        if self.operation:
            text = f" | unwrap {self.operation}({self.identifier})"
        else:
            text = f" | unwrap {self.identifier}"
        return text + "".join(f" | {f}" for f in self.post_filters)


@dataclass(frozen=True, slots=True)
class LogRange(Expr):
    """A log query over a time range: ``{...} | ...[5m] offset 1h``."""

    left: LogSelectorExpr
    interval_ns: int
    offset_ns: int = 0
    unwrap: UnwrapExpr | None = None

    def children(self) -> tuple[Expr, ...]:
        return (self.left,)

    def __str__(self) -> str:
        text = str(self.left) + (str(self.unwrap) if self.unwrap else "")
        text += f"[{format_prom_duration(self.interval_ns)}]"
        if self.offset_ns:
            text += f" offset {format_go_duration(self.offset_ns)}"
        return text


@dataclass(frozen=True, slots=True)
class Grouping:
    """``by (a,b)`` or ``without (a,b)``."""

    groups: tuple[str, ...] = ()
    without: bool = False

    @property
    def noop(self) -> bool:
        """``without ()``: the labels are kept as they are."""
        return not self.groups and self.without

    @property
    def singleton(self) -> bool:
        """No grouping or ``by ()``: everything is aggregated into one series."""
        return not self.groups and not self.without

    def __str__(self) -> str:
        return f" {'without' if self.without else 'by'} ({','.join(self.groups)})"


@dataclass(frozen=True, slots=True)
class RangeAggregationExpr(SampleExpr):
    """``rate(...)``, ``quantile_over_time(0.99, ...) by (x)``..."""

    left: LogRange
    operation: str
    params: float | None = None
    grouping: Grouping | None = None

    @property
    def selector(self) -> LogSelectorExpr:
        return self.left.left

    def children(self) -> tuple[Expr, ...]:
        return (self.left,)

    def __str__(self) -> str:
        params = "" if self.params is None else format_float_f(self.params) + ","
        grouping = str(self.grouping) if self.grouping is not None else ""
        return f"{self.operation}({params}{self.left}){grouping}"


@dataclass(frozen=True, slots=True)
class VectorAggregationExpr(SampleExpr):
    """``sum by (a) (...)``, ``topk(5, ...)``..."""

    left: SampleExpr
    operation: str
    grouping: Grouping = Grouping()
    params: int = 0

    def children(self) -> tuple[Expr, ...]:
        return (self.left,)

    def __str__(self) -> str:
        args = str(self.left)
        if self.operation in ("topk", "bottomk", "approx_topk") or self.params:
            args = f"{self.params},{args}"
        grouping = "" if self.grouping.singleton else str(self.grouping)
        return f"{self.operation}{grouping}({args})"


CARD_ONE_TO_ONE = "one-to-one"
CARD_MANY_TO_ONE = "many-to-one"
CARD_ONE_TO_MANY = "one-to-many"


@dataclass(frozen=True, slots=True)
class VectorMatching:
    """How the two sides of a binary operation are matched (``on``/``ignoring``,
    ``group_left``/``group_right``)."""

    card: str = CARD_ONE_TO_ONE
    matching_labels: tuple[str, ...] = ()
    on: bool = False
    include: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BinOpExpr(SampleExpr):
    """``left op right``; comparison ops may carry ``bool``."""

    op: str
    left: SampleExpr
    right: SampleExpr
    return_bool: bool = False
    vector_matching: VectorMatching = VectorMatching()

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)

    def __str__(self) -> str:
        op = self.op + (" bool" if self.return_bool else "")
        vm = self.vector_matching
        group = {CARD_MANY_TO_ONE: "group_left", CARD_ONE_TO_MANY: "group_right"}.get(vm.card, "")
        if vm.include:
            group += f" ({','.join(vm.include)})"
        if vm.on or vm.matching_labels:
            on = "on" if vm.on else "ignoring"
            op = f"{op} {on} ({','.join(vm.matching_labels)}) {group}"
        return f"({self.left} {op} {self.right})"


@dataclass(frozen=True, slots=True)
class LiteralExpr(SampleExpr):
    """A number; literal-only binary operations are folded into one."""

    value: float

    def __str__(self) -> str:
        return format_float_g(self.value)


@dataclass(frozen=True, slots=True)
class VectorExpr(SampleExpr):
    """``vector(1)``: one sample without labels at every step."""

    value: float

    def __str__(self) -> str:
        return f"vector({format_float_fixed(self.value)})"


@dataclass(frozen=True, slots=True)
class LabelReplaceExpr(SampleExpr):
    """``label_replace(expr, "dst", "replacement", "src", "regex")``."""

    left: SampleExpr
    dst: str
    replacement: str
    src: str
    regex: str

    @property
    def pattern(self) -> Pattern:
        """The regex as Loki compiles it, anchored at both ends (``^(?:regex)$``)."""
        return compile_go(f"^(?:{self.regex})$").pattern

    def children(self) -> tuple[Expr, ...]:
        return (self.left,)

    def __str__(self) -> str:
        args = ",".join(go_quote(s) for s in (self.dst, self.replacement, self.src, self.regex))
        return f"label_replace({self.left},{args})"


@dataclass(frozen=True, slots=True)
class MultiVariantExpr(Expr):
    """``variants(m1, m2) of ({...}[5m])``: several metrics over one log range."""

    variants: tuple[SampleExpr, ...]
    log_range: LogRange

    def children(self) -> tuple[Expr, ...]:
        return (*self.variants, self.log_range)

    def __str__(self) -> str:
        variants = ", ".join(str(v) for v in self.variants)
        return f"variants({variants}) of ({self.log_range})"
