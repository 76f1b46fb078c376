"""LogQL pretty printing: Loki's ``Prettify()``, the body of ``GET /loki/api/v1/format_query``.

The layout rules are Grafana Loki's (``pkg/logql/syntax/prettier.go``, itself modelled on
the PromQL formatter); this module reproduces their observable output, checked byte for
byte against Loki 3.7.6, and shares no code with it.

How Loki lays a query out:

* A node whose ``String()`` is at most `max_chars_per_line` bytes long (indentation not
  counted) is printed on one line as its ``String()``, indented by two spaces per level.
* A longer node is split. Functions (range and vector aggregations, ``label_replace``)
  put each argument on its own line one level deeper and close with ``)`` at their own
  level; grouping is written after ``)`` (range aggregations) or before ``(`` (vector
  aggregations) as ``by (a, b)``, with a space after each comma.
* A binary operation prints its legs one level deeper and the operator alone on a line
  at its own level, without the enclosing parentheses. Vector matching is shown only
  when it names labels (``on ()`` disappears, and the ``group_left``/``group_right``
  that came with it).
* A pipeline puts the stream selector on the first line and each stage on its own line
  one level deeper. A run of consecutive line filters is one stage in Loki: it stays on
  one line while it fits, otherwise its last filters move to lines of their own.
* A log range is its selector, ``| unwrap`` (and its post filters) on a new line one
  level deeper, then `` [range]`` and `` offset d`` on the same line, both durations
  printed the Prometheus way (``1h``, not ``1h0m0s``).
* ``variants(...) of (...)`` is always split.

Loki's quirks are kept because ``format_query`` shows them: ``| decolorize`` is never
indented, and a line filter split onto a line of its own loses its ``or`` alternatives
(``|= "a" or "b"`` prints as ``|= "a"``).
"""

from __future__ import annotations

from loki_async.logql.ast import (
    CARD_MANY_TO_ONE,
    CARD_ONE_TO_MANY,
    BinOpExpr,
    DecolorizeExpr,
    Expr,
    Grouping,
    LabelReplaceExpr,
    LineFilterExpr,
    LiteralExpr,
    LogRange,
    MatchersExpr,
    MultiVariantExpr,
    PipelineExpr,
    RangeAggregationExpr,
    StageExpr,
    UnwrapExpr,
    VectorAggregationExpr,
    VectorExpr,
)
from loki_async.logql.literals import format_float_g, format_prom_duration, go_quote

DEFAULT_MAX_CHARS_PER_LINE = 100
INDENT = "  "

# Vector aggregations whose parameter is printed even when it is 0.
_ALWAYS_PARAM_OPS = ("topk", "bottomk")


def prettify(expr: Expr, max_chars_per_line: int = DEFAULT_MAX_CHARS_PER_LINE) -> str:
    """`expr` laid out as Loki's ``Prettify()`` does, splitting every node whose
    ``String()`` is longer than `max_chars_per_line` bytes.

    ``format_query`` returns ``prettify(parse_expr(query))`` with the default limit.
    """
    return _Prettifier(max_chars_per_line).pretty(expr, 0)


def _indent(level: int) -> str:
    return INDENT * level


class _Prettifier:
    def __init__(self, max_chars_per_line: int) -> None:
        self.max_chars_per_line = max_chars_per_line

    def fits(self, text: str) -> bool:
        # Go's len(): bytes, not characters. Lone surrogates stand for raw bytes.
        return len(text.encode("utf-8", "surrogateescape")) <= self.max_chars_per_line

    def pretty(self, expr: Expr, level: int) -> str:
        # Neither has a one-line form of its own: variants always split, and a log
        # range only ever appears inside a function that did not fit.
        if isinstance(expr, MultiVariantExpr):
            return self.variants(expr, level)
        if isinstance(expr, LogRange):
            return self.log_range(expr, level)
        text = str(expr)
        if self.fits(text) or isinstance(expr, MatchersExpr | LiteralExpr | VectorExpr):
            return _indent(level) + text
        if isinstance(expr, PipelineExpr):
            return self.pipeline(expr, level)
        if isinstance(expr, RangeAggregationExpr):
            return self.range_aggregation(expr, level)
        if isinstance(expr, VectorAggregationExpr):
            return self.vector_aggregation(expr, level)
        if isinstance(expr, BinOpExpr):
            return self.binop(expr, level)
        if isinstance(expr, LabelReplaceExpr):
            return self.label_replace(expr, level)
        raise AssertionError(f"BUG: no layout for {type(expr).__name__}")

    # -- log queries --------------------------------------------------------

    def pipeline(self, expr: PipelineExpr, level: int) -> str:
        lines = [self.pretty(expr.left, level)]
        run: list[LineFilterExpr] = []
        for stage in expr.multi_stages:
            if isinstance(stage, LineFilterExpr):
                run.append(stage)
                continue
            if run:
                lines.append(self.line_filters(run, level + 1))
                run = []
            lines.append(self.stage(stage, level + 1))
        if run:
            lines.append(self.line_filters(run, level + 1))
        return "\n".join(lines)

    def stage(self, stage: StageExpr, level: int) -> str:
        if isinstance(stage, DecolorizeExpr):
            return str(stage)  # Loki never indents it.
        return _indent(level) + str(stage)

    def line_filters(self, run: list[LineFilterExpr], level: int) -> str:
        """One Loki line filter stage: the longest leading part of the run that fits
        stays on one line, each filter after it gets a line of its own."""
        kept = len(run)
        while kept and not self.fits(" ".join(str(f) for f in run[:kept])):
            kept -= 1
        lines = [" ".join(str(f) for f in run[:kept])] if kept else []
        # Loki prints a split-off filter without its `or` alternatives.
        lines += [str(LineFilterExpr(f.op, f.values[:1])) for f in run[kept:]]
        return "\n".join(_indent(level) + line for line in lines)

    def log_range(self, expr: LogRange, level: int) -> str:
        text = self.pretty(expr.left, level)
        if expr.unwrap is not None:
            text += "\n" + self.unwrap(expr.unwrap, level + 1)
        text += f" [{format_prom_duration(expr.interval_ns)}]"
        if expr.offset_ns:
            text += f" offset {format_prom_duration(expr.offset_ns)}"
        return text

    def unwrap(self, expr: UnwrapExpr, level: int) -> str:
        label = f"{expr.operation}({expr.identifier})" if expr.operation else expr.identifier
        lines = [f"| unwrap {label}", *(f"| {f}" for f in expr.post_filters)]
        return "\n".join(_indent(level) + line for line in lines)

    # -- metric queries -----------------------------------------------------

    def call(self, name: str, args: list[str], level: int) -> str:
        """`name` and its already indented `args`, one per line."""
        return f"{_indent(level)}{name}(\n" + ",\n".join(args) + f"\n{_indent(level)})"

    def range_aggregation(self, expr: RangeAggregationExpr, level: int) -> str:
        args = [self.pretty(expr.left, level + 1)]
        if expr.params is not None:
            args.insert(0, _indent(level + 1) + format_float_g(expr.params))
        grouping = _grouping(expr.grouping) if expr.grouping is not None else ""
        return self.call(expr.operation, args, level) + grouping

    def vector_aggregation(self, expr: VectorAggregationExpr, level: int) -> str:
        args = [self.pretty(expr.left, level + 1)]
        if expr.operation in _ALWAYS_PARAM_OPS or expr.params:
            args.insert(0, f"{_indent(level + 1)}{expr.params}")
        return self.call(expr.operation + _grouping(expr.grouping), args, level)

    def binop(self, expr: BinOpExpr, level: int) -> str:
        return "\n".join(
            (
                self.pretty(expr.left, level + 1),
                _indent(level) + _binop_operator(expr),
                self.pretty(expr.right, level + 1),
            )
        )

    def label_replace(self, expr: LabelReplaceExpr, level: int) -> str:
        strings = (expr.dst, expr.replacement, expr.src, expr.regex)
        args = [
            self.pretty(expr.left, level + 1),
            *(_indent(level + 1) + go_quote(s) for s in strings),
        ]
        return self.call("label_replace", args, level)

    def variants(self, expr: MultiVariantExpr, level: int) -> str:
        args = [self.pretty(v, level + 1) for v in expr.variants]
        log_range = self.pretty(expr.log_range, level + 1)
        return self.call("variants", args, level) + f" of (\n{log_range}\n{_indent(level)})"


def _grouping(grouping: Grouping) -> str:
    """`` by (a, b)``, `` without (a)``, `` without`` or nothing (``by ()``)."""
    keyword = " without" if grouping.without else " by" if grouping.groups else ""
    labels = f" ({', '.join(grouping.groups)})" if grouping.groups else ""
    return keyword + labels


def _binop_operator(expr: BinOpExpr) -> str:
    op = expr.op + (" bool" if expr.return_bool else "")
    vm = expr.vector_matching
    if not vm.matching_labels:
        return op
    group = {CARD_MANY_TO_ONE: "group_left", CARD_ONE_TO_MANY: "group_right"}.get(vm.card, "")
    if vm.include:
        group += f" ({', '.join(vm.include)})"
    on = "on" if vm.on else "ignoring"
    return f"{op} {on} ({', '.join(vm.matching_labels)}) {group}"
