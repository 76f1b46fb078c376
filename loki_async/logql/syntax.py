"""The LogQL parser: a hand-written recursive descent parser with Loki's errors.

Loki parses LogQL with a yacc (LALR) grammar. This parser accepts the same
language and reports errors the same way:

* syntax errors name the unexpected token and, when the parser state allows at
  most four tokens there, the expected ones, at the unexpected token's position
  (``parse error at line 1, col 15: syntax error: unexpected $end, expecting
  STRING or ip``); a scanner error met before wins, as in Loki;
* some errors stop the parse at once, without a position: invalid regexes in
  matchers, ``| regexp`` and ``| pattern`` stages;
* others are only reported by validation, after the whole query has parsed,
  in the order Loki's validation visits the tree: bad operator parameters,
  groupings where they are not allowed, log selectors used as binary operands,
  selectors without a non-empty-compatible matcher.

Precedence of binary operators, lowest first: ``or``; ``and unless``;
comparisons; ``+ -``; ``* / %``; ``^`` (right associative). Label filters bind
``and``/``,``/juxtaposition tighter than ``or`` the way yacc resolves Loki's
grammar (``a or b , c`` is ``a or (b , c)``). Literal-only arithmetic is folded.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

from loki_async.logql.ast import (
    CARD_MANY_TO_ONE,
    CARD_ONE_TO_MANY,
    CARD_ONE_TO_ONE,
    MATCH_EQUAL,
    MATCH_NOT_EQUAL,
    MATCH_NOT_REGEXP,
    MATCH_REGEXP,
    BinaryLabelFilter,
    BinOpExpr,
    BytesLabelFilter,
    DecolorizeExpr,
    DropLabelsExpr,
    DurationLabelFilter,
    Expr,
    Grouping,
    IPLabelFilter,
    JSONExpressionParser,
    KeepLabelsExpr,
    LabelExtractionExpr,
    LabelFilterer,
    LabelFilterExpr,
    LabelFmt,
    LabelFmtExpr,
    LabelParserExpr,
    LabelReplaceExpr,
    LineFilterExpr,
    LineFmtExpr,
    LineMatch,
    LiteralExpr,
    LogfmtExpressionParser,
    LogfmtParserExpr,
    LogRange,
    LogSelectorExpr,
    Matcher,
    MatchersExpr,
    MultiVariantExpr,
    NamedLabelMatcher,
    NumericLabelFilter,
    ParseError,
    PipelineExpr,
    RangeAggregationExpr,
    SampleExpr,
    StageExpr,
    StringLabelFilter,
    UnwrapExpr,
    VectorAggregationExpr,
    VectorExpr,
    VectorMatching,
    walk,
)
from loki_async.logql.lexer import FUNCTIONS, Lexer, Tok, Token, token_name
from loki_async.logql.literals import (
    FloatRangeError,
    format_float_fixed,
    go_quote,
    parse_go_float,
    unquote,
)
from loki_async.logql.regex import GoRegexError, compile_go

MAX_INPUT_SIZE = 131072  # bytes, as Loki

ERR_NO_EQUALITY_MATCHER = (
    "queries require at least one regexp or equality matcher that does not have an "
    'empty-compatible value. For instance, app=~".*" does not meet this requirement, '
    'but app=~".+" will'
)
# Loki has no nesting limit; Python's recursion limit needs one. The parser stops where
# its stack ends (a few hundred levels); the parsed tree may be at most MAX_DEPTH deep,
# so that every later pass (validation, planning, coprocessors, pipelines, evaluation,
# printing), each recursive and each starting deeper in the stack, has room.
ERR_TOO_DEEP = "query is nested too deeply"
MAX_DEPTH = 128

_OP_NAMES = {tok: name for name, tok in FUNCTIONS.items()}

RANGE_OPS = frozenset(
    {
        Tok.COUNT_OVER_TIME, Tok.RATE, Tok.RATE_COUNTER, Tok.BYTES_OVER_TIME, Tok.BYTES_RATE,
        Tok.AVG_OVER_TIME, Tok.SUM_OVER_TIME, Tok.MIN_OVER_TIME, Tok.MAX_OVER_TIME,
        Tok.STDVAR_OVER_TIME, Tok.STDDEV_OVER_TIME, Tok.QUANTILE_OVER_TIME,
        Tok.FIRST_OVER_TIME, Tok.LAST_OVER_TIME, Tok.ABSENT_OVER_TIME,
    }
)  # fmt: skip
VECTOR_OPS = frozenset(
    {
        Tok.SUM, Tok.AVG, Tok.COUNT, Tok.MAX, Tok.MIN, Tok.STDDEV, Tok.STDVAR, Tok.BOTTOMK,
        Tok.TOPK, Tok.SORT, Tok.SORT_DESC, Tok.APPROX_TOPK,
    }
)  # fmt: skip

# Binary operators: precedence (higher binds tighter) and spelling.
_BINOPS: dict[Tok, tuple[int, str]] = {
    Tok.OR: (1, "or"),
    Tok.AND: (2, "and"),
    Tok.UNLESS: (2, "unless"),
    Tok.CMP_EQ: (3, "=="),
    Tok.NEQ: (3, "!="),
    Tok.GT: (3, ">"),
    Tok.GTE: (3, ">="),
    Tok.LT: (3, "<"),
    Tok.LTE: (3, "<="),
    Tok.ADD: (4, "+"),
    Tok.SUB: (4, "-"),
    Tok.MUL: (5, "*"),
    Tok.DIV: (5, "/"),
    Tok.MOD: (5, "%"),
    Tok.POW: (6, "^"),
}
LOGICAL_OPS = ("or", "and", "unless")

_LINE_FILTERS = {
    Tok.PIPE_EXACT: "|=",
    Tok.NEQ: "!=",
    Tok.PIPE_MATCH: "|~",
    Tok.NRE: "!~",
    Tok.PIPE_PATTERN: "|>",
    Tok.NPA: "!>",
}
_MATCH_OPS = {Tok.EQ: MATCH_EQUAL, Tok.NEQ: MATCH_NOT_EQUAL, Tok.RE: MATCH_REGEXP}
_MATCH_OPS[Tok.NRE] = MATCH_NOT_REGEXP
_FILTER_OPS = {Tok.EQ: "==", Tok.CMP_EQ: "==", Tok.NEQ: "!=", Tok.GT: ">", Tok.GTE: ">="}
_FILTER_OPS |= {Tok.LT: "<", Tok.LTE: "<="}
_CONVERSIONS = {Tok.BYTES_CONV: "bytes", Tok.DURATION_CONV: "duration"}
_CONVERSIONS[Tok.DURATION_SECONDS_CONV] = "duration_seconds"

_GROUPING_ALLOWED = frozenset(
    {
        "avg_over_time", "stddev_over_time", "stdvar_over_time", "quantile_over_time",
        "max_over_time", "min_over_time", "first_over_time", "last_over_time",
    }
)  # fmt: skip
_UNWRAP_ALLOWED = frozenset(
    {
        "avg_over_time", "sum_over_time", "max_over_time", "min_over_time", "stddev_over_time",
        "stdvar_over_time", "quantile_over_time", "rate", "rate_counter", "absent_over_time",
        "first_over_time", "last_over_time",
    }
)  # fmt: skip
_WITHOUT_UNWRAP_ALLOWED = frozenset(
    {"bytes_over_time", "bytes_rate", "count_over_time", "rate", "absent_over_time"}
)
_OPERAND_STARTS = (
    {Tok.OPEN_BRACE, Tok.OPEN_PARENTHESIS, Tok.NUMBER, Tok.ADD, Tok.SUB, Tok.LABEL_REPLACE}
    | {Tok.VECTOR, Tok.VARIANTS}
    | RANGE_OPS
    | VECTOR_OPS
)
_STAGE_STARTS = {
    Tok.LOGFMT, Tok.JSON, Tok.REGEXP, Tok.UNPACK, Tok.PATTERN, Tok.IDENTIFIER,
    Tok.OPEN_PARENTHESIS, Tok.LINE_FMT, Tok.DECOLORIZE, Tok.LABEL_FMT, Tok.DROP, Tok.KEEP,
}  # fmt: skip

# Label filters: yacc gives `or` and `and` precedence; `,` and juxtaposition have
# none, so they always shift (bind the following filters first).
_LF_JUXTAPOSITION = Tok.IDENTIFIER
_LF_PRECEDENCE = {Tok.OR: 1, Tok.AND: 2}


@dataclass(frozen=True, slots=True)
class _Invalid(SampleExpr):
    """A node Loki builds with an error inside, reported only by validation.
    `literal`: Loki's node is a number literal (it matters for binary operations)."""

    msg: str
    literal: bool = False

    def __str__(self) -> str:
        return "<invalid>"


def _go_type(e: Expr) -> str:
    names = {MatchersExpr: "MatchersExpr", PipelineExpr: "PipelineExpr"}
    return "*syntax." + names.get(type(e), "MultiVariantExpr")


def _go_atoi(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise ValueError(text)
    value = int(text)
    if not -(1 << 63) <= value < 1 << 63:
        raise ValueError(text)
    return value


def _go_pow(x: float, y: float) -> float:
    try:
        return math.pow(x, y)
    except OverflowError:
        odd = y == math.floor(y) and math.fmod(y, 2) != 0
        return -math.inf if x < 0 and odd else math.inf
    except ValueError:
        if x == 0:
            odd = y == math.floor(y) and math.fmod(y, 2) != 0
            return math.copysign(math.inf, x) if odd else math.inf
        return math.nan


def merge_binop(op: str, left: float, right: float) -> float:
    """A binary operation on two numbers, as Loki folds literals (comparisons give
    1 or 0; division and modulo by zero give NaN)."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        return math.nan if right == 0 else left / right
    if op == "%":
        if right == 0 or math.isinf(left):
            return math.nan
        return math.fmod(left, right)
    if op == "^":
        return _go_pow(left, right)
    result = {
        "==": left == right,
        "!=": left != right,
        ">": left > right,
        ">=": left >= right,
        "<": left < right,
        "<=": left <= right,
    }[op]
    return 1.0 if result else 0.0


# ---------------------------------------------------------------------------
# Pattern expressions (`| pattern`, `|>`)
# ---------------------------------------------------------------------------


class PatternError(ValueError):
    """A pattern expression Loki rejects, with Loki's message."""


@dataclass(frozen=True, slots=True)
class PatternLiteral:
    """Text that must appear verbatim."""

    text: str


@dataclass(frozen=True, slots=True)
class PatternCapture:
    """``<name>``; ``<_>`` (name ``_``) matches without capturing."""

    name: str

    @property
    def named(self) -> bool:
        return self.name != "_"


_CAPTURE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


def parse_pattern(text: str) -> tuple[PatternLiteral | PatternCapture, ...]:
    """Split a pattern into literals and captures, checked as ``| pattern`` requires:
    at least one named capture, no two captures in a row, no duplicate names."""
    if text == "":
        raise PatternError(
            "parse error at line 1, col 1: syntax error: unexpected $end, "
            "expecting IDENTIFIER or LITERAL"
        )
    nodes: list[PatternLiteral | PatternCapture] = []
    i = 0
    while i < len(text):
        m = _CAPTURE.match(text, i)
        if m:
            nodes.append(PatternCapture(m.group(1)))
            i = m.end()
            continue
        if nodes and isinstance(nodes[-1], PatternLiteral):
            nodes[-1] = PatternLiteral(nodes[-1].text + text[i])
        else:
            nodes.append(PatternLiteral(text[i]))
        i += 1
    names = [n.name for n in nodes if isinstance(n, PatternCapture) and n.named]
    if not names:
        raise PatternError("at least one capture is required")
    for a, b in itertools.pairwise(nodes):
        if isinstance(a, PatternCapture) and isinstance(b, PatternCapture):
            raise PatternError(
                f"found consecutive capture '<{a.name}><{b.name}>': invalid expression"
            )
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise PatternError(f"duplicate capture name ({name}): invalid expression")
        seen.add(name)
    return tuple(nodes)


def _validate_regexp_stage(param: str) -> None:
    try:
        regex = compile_go(param)
    except GoRegexError as exc:
        raise ParseError(f"invalid regexp parser: {exc}") from None
    if not regex.group_names:
        raise ParseError("invalid regexp parser: at least one named capture must be supplied")
    seen: set[str] = set()
    for name in regex.group_names:
        if not name:
            continue
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
            raise ParseError(f"invalid regexp parser: invalid extracted label name '{name}'")
        if name in seen:
            raise ParseError(f"invalid regexp parser: duplicate extracted label name '{name}'")
        seen.add(name)


# ---------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        lexer = Lexer(text)
        self.tokens = lexer.tokenize()
        self.lex_errors = lexer.errors
        self.i = 0
        # Tokens tried at the current position: the "expecting ..." of an error.
        self.expected: set[Tok] = set()

    # -- token helpers -------------------------------------------------------

    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek_kind(self, ahead: int) -> Tok:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)].kind

    def check(self, *kinds: Tok) -> bool:
        if self.tok.kind in kinds:
            return True
        self.expected.update(kinds)
        return False

    def advance(self) -> Token:
        tok = self.tok
        if tok.kind is not Tok.EOF:
            self.i += 1
        self.expected = set()
        return tok

    def accept(self, kind: Tok) -> Token | None:
        return self.advance() if self.check(kind) else None

    def expect(self, *kinds: Tok) -> Token:
        if self.check(*kinds):
            return self.advance()
        raise self.syntax_error()

    def syntax_error(self) -> ParseError:
        # Loki reports its first error: a scanner error on a token already read wins.
        for err in self.lex_errors:
            if err.token <= self.i:
                return ParseError(err.msg, err.line, err.col)
        tok = self.tok
        msg = f"syntax error: unexpected {token_name(tok.kind)}"
        expected = sorted(k for k in self.expected if k is not Tok.EOF)
        if 0 < len(expected) <= 4:
            msg += ", expecting " + " or ".join(token_name(k) for k in expected)
        return ParseError(msg, tok.line, tok.col)

    # -- expressions ---------------------------------------------------------

    def parse_root(self) -> Expr:
        expr = self.parse_expr()
        self.expect(Tok.EOF)
        if self.lex_errors:
            err = self.lex_errors[0]
            raise ParseError(err.msg, err.line, err.col)
        return expr

    def parse_expr(self, min_prec: int = 1) -> Expr:
        left = self.parse_operand()
        while True:
            kind = self.tok.kind
            self.expected.update(_BINOPS)
            if kind not in _BINOPS or _BINOPS[kind][0] < min_prec:
                return left
            prec, op = _BINOPS[kind]
            self.advance()
            return_bool, matching = self.parse_bin_modifiers()
            right = self.parse_expr(prec if op == "^" else prec + 1)
            left = self.new_binop(op, return_bool, matching, left, right)

    def parse_metric_expr(self) -> SampleExpr:
        """An expression where Loki's grammar wants a metric (not a bare log query)."""
        expr = self.parse_expr()
        if not isinstance(expr, SampleExpr):
            # yacc reports this in the state that only accepts binary operators.
            raise self.syntax_error()
        return expr

    def parse_operand(self) -> Expr:
        kind = self.tok.kind
        if kind is Tok.OPEN_BRACE:
            return self.parse_log_expr()
        if kind is Tok.OPEN_PARENTHESIS:
            self.advance()
            expr = self.parse_expr()
            if isinstance(expr, MultiVariantExpr):
                raise self.syntax_error()
            self.expect(Tok.CLOSE_PARENTHESIS)
            return expr
        if kind in RANGE_OPS:
            return self.parse_range_aggregation()
        if kind in VECTOR_OPS:
            return self.parse_vector_aggregation()
        if kind is Tok.LABEL_REPLACE:
            return self.parse_label_replace()
        if kind is Tok.VECTOR:
            return self.parse_vector()
        if kind is Tok.VARIANTS:
            return self.parse_variants()
        if kind in (Tok.NUMBER, Tok.ADD, Tok.SUB):
            return self.parse_literal()
        self.expected.update(_OPERAND_STARTS)
        raise self.syntax_error()

    def parse_signed_number(self) -> tuple[bool, str]:
        """``[+|-] NUMBER``: whether it is negated, and the number's text."""
        negative = False
        if self.check(Tok.ADD, Tok.SUB):
            negative = self.advance().kind is Tok.SUB
        return negative, self.expect(Tok.NUMBER).text

    def parse_literal(self) -> SampleExpr:
        negative, text = self.parse_signed_number()
        try:
            value = parse_go_float(text)
        except ValueError as exc:
            return _Invalid(f"unable to parse literal as a float: {exc}", literal=True)
        return LiteralExpr(-value if negative else value)

    def parse_bin_modifiers(self) -> tuple[bool, VectorMatching]:
        return_bool = self.accept(Tok.BOOL) is not None
        if not self.check(Tok.ON, Tok.IGNORING):
            return return_bool, VectorMatching()
        on = self.advance().kind is Tok.ON
        matching_labels = self.parse_label_list()
        card = CARD_ONE_TO_ONE
        include: tuple[str, ...] = ()
        if self.check(Tok.GROUP_LEFT, Tok.GROUP_RIGHT):
            left = self.advance().kind is Tok.GROUP_LEFT
            card = CARD_MANY_TO_ONE if left else CARD_ONE_TO_MANY
            if self.check(Tok.OPEN_PARENTHESIS):
                include = self.parse_label_list()
        return return_bool, VectorMatching(card, matching_labels, on, include)

    def parse_label_list(self) -> tuple[str, ...]:
        """``( [name {, name}] )``."""
        self.expect(Tok.OPEN_PARENTHESIS)
        names: list[str] = []
        if self.check(Tok.IDENTIFIER):
            names.append(str(self.advance().value))
            while self.accept(Tok.COMMA):
                names.append(str(self.expect(Tok.IDENTIFIER).value))
        self.expect(Tok.CLOSE_PARENTHESIS)
        return tuple(names)

    def parse_grouping(self) -> Grouping:
        without = self.advance().kind is Tok.WITHOUT
        return Grouping(self.parse_label_list(), without)

    def new_binop(
        self, op: str, return_bool: bool, matching: VectorMatching, left: Expr, right: Expr
    ) -> SampleExpr:
        if not isinstance(left, SampleExpr):
            return _Invalid(
                f"unexpected type for left leg of binary operation ({op}): {_go_type(left)}"
            )
        if not isinstance(right, SampleExpr):
            return _Invalid(
                f"unexpected type for right leg of binary operation ({op}): {_go_type(right)}"
            )
        for leg in (left, right):
            if isinstance(leg, _Invalid) and leg.literal:
                return _Invalid(leg.msg)
        if op in LOGICAL_OPS:
            for side, leg in (("left", left), ("right", right)):
                if isinstance(leg, LiteralExpr):
                    value = format_float_fixed(leg.value)
                    return _Invalid(
                        f"unexpected literal for {side} leg of logical/set binary operation "
                        f"({op}): {value}"
                    )
        if isinstance(left, LiteralExpr) and isinstance(right, LiteralExpr):
            return LiteralExpr(merge_binop(op, left.value, right.value))
        return BinOpExpr(op, left, right, return_bool, matching)

    # -- log queries ---------------------------------------------------------

    def parse_log_expr(self) -> LogSelectorExpr:
        selector = self.parse_selector()
        stages, _ = self.parse_pipeline(allow_unwrap=False)
        return PipelineExpr(selector, stages) if stages else selector

    def parse_selector(self) -> MatchersExpr:
        self.expect(Tok.OPEN_BRACE)
        if self.accept(Tok.CLOSE_BRACE):
            return MatchersExpr(())
        matchers = [self.parse_matcher()]
        while self.accept(Tok.COMMA):
            matchers.append(self.parse_matcher())
        self.expect(Tok.CLOSE_BRACE)
        return MatchersExpr(tuple(matchers))

    def parse_matcher(self) -> Matcher:
        name = str(self.expect(Tok.IDENTIFIER).value)
        op = _MATCH_OPS[self.expect(*_MATCH_OPS).kind]
        return Matcher(name, op, str(self.expect(Tok.STRING).value))

    def parse_pipeline(
        self, *, allow_unwrap: bool
    ) -> tuple[tuple[StageExpr, ...], UnwrapExpr | None]:
        """Pipeline stages, and the ``| unwrap`` that ends them in a range."""
        stages: list[StageExpr] = []
        while True:
            if self.check(*_LINE_FILTERS):
                stages.extend(self.parse_line_filter())
            elif self.check(Tok.PIPE):
                if allow_unwrap and self.peek_kind(1) is Tok.UNWRAP:
                    return tuple(stages), self.parse_unwrap()
                self.advance()
                stages.append(self.parse_pipe_stage())
            else:
                return tuple(stages), None

    def parse_line_filter(self) -> list[LineFilterExpr]:
        op = _LINE_FILTERS[self.advance().kind]
        values = [self.parse_line_match()]
        while self.accept(Tok.OR):
            values.append(self.parse_line_match())
        if op[0] == "!":
            # not (a or b) is (not a) and (not b): Loki splits the chain.
            return [LineFilterExpr(op, (v,)) for v in values]
        return [LineFilterExpr(op, tuple(values))]

    def parse_line_match(self) -> LineMatch:
        if self.accept(Tok.IP):
            self.expect(Tok.OPEN_PARENTHESIS)
            value = str(self.expect(Tok.STRING).value)
            self.expect(Tok.CLOSE_PARENTHESIS)
            return LineMatch(value, ip=True)
        return LineMatch(str(self.expect(Tok.STRING).value))

    def parse_pipe_stage(self) -> StageExpr:
        kind = self.tok.kind
        if kind is Tok.LOGFMT:
            return self.parse_logfmt()
        if kind is Tok.JSON:
            self.advance()
            if self.check(Tok.IDENTIFIER):
                return JSONExpressionParser(self.parse_extractions())
            return LabelParserExpr("json")
        if kind in (Tok.REGEXP, Tok.PATTERN):
            op = "regexp" if self.advance().kind is Tok.REGEXP else "pattern"
            param = str(self.expect(Tok.STRING).value)
            if op == "regexp":
                _validate_regexp_stage(param)
            else:
                try:
                    parse_pattern(param)
                except PatternError as exc:
                    raise ParseError(f"invalid pattern parser: {exc}") from None
            return LabelParserExpr(op, param)
        if kind is Tok.UNPACK:
            self.advance()
            return LabelParserExpr("unpack")
        if kind is Tok.LINE_FMT:
            self.advance()
            return LineFmtExpr(str(self.expect(Tok.STRING).value))
        if kind is Tok.DECOLORIZE:
            self.advance()
            return DecolorizeExpr()
        if kind is Tok.LABEL_FMT:
            self.advance()
            formats = [self.parse_label_fmt()]
            while self.accept(Tok.COMMA):
                formats.append(self.parse_label_fmt())
            return LabelFmtExpr(tuple(formats))
        if kind in (Tok.DROP, Tok.KEEP):
            self.advance()
            labels = [self.parse_named_matcher()]
            while self.accept(Tok.COMMA):
                labels.append(self.parse_named_matcher())
            cls = DropLabelsExpr if kind is Tok.DROP else KeepLabelsExpr
            return cls(tuple(labels))
        if kind in (Tok.IDENTIFIER, Tok.OPEN_PARENTHESIS):
            return LabelFilterExpr(self.parse_label_filter())
        self.expected.update(_STAGE_STARTS)
        raise self.syntax_error()

    def parse_logfmt(self) -> StageExpr:
        self.advance()
        flags: set[str] = set()
        while self.check(Tok.PARSER_FLAG):
            flags.add(str(self.advance().value))
        strict, keep_empty = "--strict" in flags, "--keep-empty" in flags
        if self.check(Tok.IDENTIFIER):
            return LogfmtExpressionParser(self.parse_extractions(), strict, keep_empty)
        return LogfmtParserExpr(strict, keep_empty)

    def parse_extractions(self) -> tuple[LabelExtractionExpr, ...]:
        out = []
        while True:
            name = str(self.expect(Tok.IDENTIFIER).value)
            expression = str(self.expect(Tok.STRING).value) if self.accept(Tok.EQ) else name
            out.append(LabelExtractionExpr(name, expression))
            if not self.accept(Tok.COMMA):
                return tuple(out)

    def parse_label_fmt(self) -> LabelFmt:
        name = str(self.expect(Tok.IDENTIFIER).value)
        self.expect(Tok.EQ)
        value = self.expect(Tok.IDENTIFIER, Tok.STRING)
        return LabelFmt(name, str(value.value), rename=value.kind is Tok.IDENTIFIER)

    def parse_named_matcher(self) -> NamedLabelMatcher:
        name = str(self.expect(Tok.IDENTIFIER).value)
        if not self.check(*_MATCH_OPS):
            return NamedLabelMatcher(name=name)
        op = _MATCH_OPS[self.advance().kind]
        return NamedLabelMatcher(matcher=Matcher(name, op, str(self.expect(Tok.STRING).value)))

    # -- label filters -------------------------------------------------------

    def parse_label_filter(self) -> LabelFilterer:
        """Label filters joined by ``and``, ``,``, juxtaposition and ``or``, grouped as
        Loki's yacc grammar resolves them."""
        operands = [self.parse_label_filter_atom()]
        ops: list[Tok] = []
        while True:
            if self.check(Tok.AND, Tok.OR, Tok.COMMA):
                ops.append(self.advance().kind)
            elif self.check(Tok.IDENTIFIER, Tok.OPEN_PARENTHESIS):
                ops.append(_LF_JUXTAPOSITION)
            else:
                break
            operands.append(self.parse_label_filter_atom())
        # Shift/reduce as yacc: reduce `a op1 b` before op2 only when both have a
        # precedence and op1's is higher or equal (left associative).
        out = [operands[0]]
        stack: list[Tok] = []
        for op, operand in zip(ops, operands[1:], strict=True):
            while stack and _lf_reduces(stack[-1], op):
                self._lf_reduce(out, stack.pop())
            stack.append(op)
            out.append(operand)
        while stack:
            self._lf_reduce(out, stack.pop())
        return out[0]

    @staticmethod
    def _lf_reduce(out: list[LabelFilterer], op: Tok) -> None:
        right = out.pop()
        left = out.pop()
        out.append(BinaryLabelFilter(left, right, is_and=op is not Tok.OR))

    def parse_label_filter_atom(self) -> LabelFilterer:
        if self.accept(Tok.OPEN_PARENTHESIS):
            inner = self.parse_label_filter()
            self.expect(Tok.CLOSE_PARENTHESIS)
            return inner
        name = str(self.expect(Tok.IDENTIFIER).value)
        op = self.expect(*_MATCH_OPS, *_FILTER_OPS).kind
        if op in (Tok.RE, Tok.NRE) or (op in (Tok.EQ, Tok.NEQ) and self.check(Tok.STRING)):
            value = str(self.expect(Tok.STRING).value)
            return StringLabelFilter(Matcher(name, _MATCH_OPS[op], value))
        if op in (Tok.EQ, Tok.NEQ) and self.accept(Tok.IP):
            self.expect(Tok.OPEN_PARENTHESIS)
            pattern = str(self.expect(Tok.STRING).value)
            self.expect(Tok.CLOSE_PARENTHESIS)
            return IPLabelFilter(name, _FILTER_OPS[op], pattern)
        filter_op = _FILTER_OPS[op]
        if self.check(Tok.DURATION):
            return DurationLabelFilter(name, filter_op, int(self.advance().value))
        if self.check(Tok.BYTES):
            return BytesLabelFilter(name, filter_op, int(self.advance().value))
        return NumericLabelFilter(name, filter_op, self.parse_filter_number())

    def parse_filter_number(self) -> float:
        """A literal in a label filter; Loki ignores its parse error (the value is then
        0, or ±Inf when out of range)."""
        negative, text = self.parse_signed_number()
        try:
            value = parse_go_float(text)
        except FloatRangeError as exc:
            value = exc.value
        except ValueError:
            value = 0.0
        return -value if negative else value

    # -- metric queries ------------------------------------------------------

    def parse_unwrap(self) -> UnwrapExpr:
        self.expect(Tok.PIPE)
        self.expect(Tok.UNWRAP)
        operation = ""
        if self.check(*_CONVERSIONS):
            operation = _CONVERSIONS[self.advance().kind]
            self.expect(Tok.OPEN_PARENTHESIS)
            identifier = str(self.expect(Tok.IDENTIFIER).value)
            self.expect(Tok.CLOSE_PARENTHESIS)
        else:
            identifier = str(self.expect(Tok.IDENTIFIER).value)
        post_filters = []
        while self.accept(Tok.PIPE):
            post_filters.append(self.parse_label_filter())
        return UnwrapExpr(identifier, operation, tuple(post_filters))

    def parse_offset(self) -> int:
        if self.accept(Tok.OFFSET):
            return int(self.expect(Tok.DURATION).value)
        return 0

    def parse_log_range(self) -> LogRange:
        """A log query with a ``[range]``, in any of the forms Loki accepts."""
        log_range = self._log_range()
        # yacc reduces the complete range before looking at what follows, so the
        # optional continuations tried above are not part of a later error.
        self.expected = set()
        return log_range

    def _log_range(self) -> LogRange:
        if self.accept(Tok.OPEN_PARENTHESIS):
            if not self.check(Tok.OPEN_BRACE):
                inner = self._log_range()
                self.expect(Tok.CLOSE_PARENTHESIS)
                return inner
            selector = self.parse_selector()
            if self.check(Tok.RANGE):
                inner = self._range_then_pipeline(selector)
                self.expect(Tok.CLOSE_PARENTHESIS)
                return inner
            stages, unwrap = self.parse_pipeline(allow_unwrap=True)
            if self.check(Tok.RANGE):
                inner = self._pipeline_then_range(selector, stages, unwrap)
                self.expect(Tok.CLOSE_PARENTHESIS)
                return inner
            # `( selector pipeline unwrap ) [range] offset`
            self.expect(Tok.CLOSE_PARENTHESIS)
            interval = int(self.expect(Tok.RANGE).value)
            offset = self.parse_offset()
            if not stages and unwrap is None and self.check(Tok.PIPE):
                unwrap = self.parse_unwrap()
            return LogRange(_log_selector(selector, stages), interval, offset, unwrap)
        selector = self.parse_selector()
        if self.check(Tok.RANGE):
            return self._range_then_pipeline(selector)
        stages, unwrap = self.parse_pipeline(allow_unwrap=True)
        return self._pipeline_then_range(selector, stages, unwrap)

    def _range_then_pipeline(self, selector: MatchersExpr) -> LogRange:
        """``selector [range] [offset] [pipeline] [unwrap]``."""
        interval = int(self.advance().value)
        offset = self.parse_offset()
        stages, unwrap = self.parse_pipeline(allow_unwrap=True)
        return LogRange(_log_selector(selector, stages), interval, offset, unwrap)

    def _pipeline_then_range(
        self, selector: MatchersExpr, stages: tuple[StageExpr, ...], unwrap: UnwrapExpr | None
    ) -> LogRange:
        """``selector [pipeline] [unwrap] [range] [offset]``."""
        interval = int(self.expect(Tok.RANGE).value)
        offset = self.parse_offset()
        return LogRange(_log_selector(selector, stages), interval, offset, unwrap)

    def parse_range_aggregation(self) -> SampleExpr:
        op = _OP_NAMES[self.advance().kind]
        self.expect(Tok.OPEN_PARENTHESIS)
        param = None
        if self.check(Tok.NUMBER):
            param = self.advance().text
            self.expect(Tok.COMMA)
        log_range = self.parse_log_range()
        self.expect(Tok.CLOSE_PARENTHESIS)
        grouping = self.parse_grouping() if self.check(Tok.BY, Tok.WITHOUT) else None
        return _new_range_aggregation(log_range, op, grouping, param)

    def parse_vector_aggregation(self) -> SampleExpr:
        op = _OP_NAMES[self.advance().kind]
        grouping = self.parse_grouping() if self.check(Tok.BY, Tok.WITHOUT) else None
        self.expect(Tok.OPEN_PARENTHESIS)
        param = None
        if self.tok.kind is Tok.NUMBER and self.peek_kind(1) is Tok.COMMA:
            param = self.advance().text
            self.advance()
        left = self.parse_metric_expr()
        self.expect(Tok.CLOSE_PARENTHESIS)
        if grouping is None and self.check(Tok.BY, Tok.WITHOUT):
            grouping = self.parse_grouping()
        return _new_vector_aggregation(left, op, grouping, param)

    def parse_label_replace(self) -> SampleExpr:
        self.advance()
        self.expect(Tok.OPEN_PARENTHESIS)
        left = self.parse_metric_expr()
        args = []
        for _ in range(4):
            self.expect(Tok.COMMA)
            args.append(str(self.expect(Tok.STRING).value))
        self.expect(Tok.CLOSE_PARENTHESIS)
        dst, replacement, src, regex = args
        try:
            compile_go(f"^(?:{regex})$")
        except GoRegexError as exc:
            return _Invalid(f"invalid regex in label_replace: {exc}")
        return LabelReplaceExpr(left, dst, replacement, src, regex)

    def parse_vector(self) -> SampleExpr:
        self.advance()
        self.expect(Tok.OPEN_PARENTHESIS)
        text = self.expect(Tok.NUMBER).text
        self.expect(Tok.CLOSE_PARENTHESIS)
        try:
            return VectorExpr(parse_go_float(text))
        except ValueError as exc:
            return _Invalid(f"unable to parse vectorExpr as a float: {exc}")

    def parse_variants(self) -> MultiVariantExpr:
        self.advance()
        self.expect(Tok.OPEN_PARENTHESIS)
        variants = [self.parse_metric_expr()]
        while self.accept(Tok.COMMA):
            variants.append(self.parse_metric_expr())
        self.expect(Tok.CLOSE_PARENTHESIS)
        self.expect(Tok.OF)
        self.expect(Tok.OPEN_PARENTHESIS)
        log_range = self.parse_log_range()
        self.expect(Tok.CLOSE_PARENTHESIS)
        return MultiVariantExpr(tuple(variants), log_range)


def _lf_reduces(previous: Tok, lookahead: Tok) -> bool:
    left = _LF_PRECEDENCE.get(previous)
    right = _LF_PRECEDENCE.get(lookahead)
    return left is not None and right is not None and left >= right


def _log_selector(selector: MatchersExpr, stages: tuple[StageExpr, ...]) -> LogSelectorExpr:
    return PipelineExpr(selector, stages) if stages else selector


def _new_range_aggregation(
    log_range: LogRange, op: str, grouping: Grouping | None, param: str | None
) -> SampleExpr:
    params = None
    if param is not None:
        if op != "quantile_over_time":
            return _Invalid(f"parameter {param} not supported for operation {op}")
        try:
            params = parse_go_float(param)
        except ValueError as exc:
            return _Invalid(f"invalid parameter for operation {op}: {exc}")
    elif op == "quantile_over_time":
        return _Invalid(f"parameter required for operation {op}")
    if grouping is not None and op not in _GROUPING_ALLOWED:
        return _Invalid(f"grouping not allowed for {op} aggregation")
    if log_range.unwrap is not None:
        if op not in _UNWRAP_ALLOWED:
            return _Invalid(f"invalid aggregation {op} with unwrap")
    elif op not in _WITHOUT_UNWRAP_ALLOWED:
        return _Invalid(f"invalid aggregation {op} without unwrap")
    return RangeAggregationExpr(log_range, op, params, grouping)


def _new_vector_aggregation(
    left: SampleExpr, op: str, grouping: Grouping | None, param: str | None
) -> SampleExpr:
    params = 0
    if op in ("topk", "bottomk", "approx_topk"):
        if param is None:
            return _Invalid(f"parameter required for operation {op}")
        try:
            params = _go_atoi(param)
        except ValueError:
            return _Invalid(f"invalid parameter {op}({param},")
        if params <= 0:
            return _Invalid(f"invalid parameter (must be greater than 0) {op}({param}")
        if op == "approx_topk" and grouping is not None:
            return _Invalid(f"grouping not allowed for {op} aggregation")
    elif param is not None:
        return _Invalid(f"unsupported parameter for operation {op}({param},")
    return VectorAggregationExpr(left, op, grouping or Grouping(), params)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _validate_matchers(matchers: tuple[Matcher, ...]) -> None:
    # A matcher that matches "" also selects streams without the label: it cannot
    # narrow the streams down by itself.
    if all(m.matches("") for m in matchers):
        raise ParseError(ERR_NO_EQUALITY_MATCHER)


def _selector_of(e: Expr) -> Expr:
    """What Loki's ``Selector()`` returns: the leftmost log selector of a sample
    expression (a literal or vector returns itself)."""
    if isinstance(e, RangeAggregationExpr):
        return e.left.left
    if isinstance(e, VectorAggregationExpr | LabelReplaceExpr | BinOpExpr):
        return _selector_of(e.left)
    return e


def _validate_sample(e: SampleExpr) -> None:
    if isinstance(e, _Invalid):
        raise ParseError(e.msg)
    if isinstance(e, BinOpExpr):
        _validate_sample(e.left)
        _validate_sample(e.right)
    elif isinstance(e, VectorAggregationExpr):
        if e.operation in ("sort", "sort_desc") and e.grouping.groups:
            raise ParseError("sort and sort_desc doesn't allow grouping by ")
        _validate_sample(e.left)
    elif not isinstance(e, LiteralExpr | VectorExpr):
        selector = _selector_of(e)
        if isinstance(selector, _Invalid):
            raise ParseError(selector.msg)
        if not isinstance(selector, VectorExpr):
            _validate_matchers(selector.matchers if isinstance(selector, LogSelectorExpr) else ())


def _validate(expr: Expr) -> None:
    if isinstance(expr, SampleExpr):
        _validate_sample(expr)
    elif isinstance(expr, LogSelectorExpr):
        _validate_matchers(expr.matchers)
    elif isinstance(expr, MultiVariantExpr):
        _validate_matchers(expr.log_range.left.matchers)
        for variant in expr.variants:
            _validate_sample(variant)
    # Loki's validation does not visit every node; errors it leaves would only show
    # when the query runs. Report them here instead.
    _reject_invalid(expr)


def _reject_invalid(expr: Expr) -> None:
    for node in walk(expr):
        if isinstance(node, _Invalid):
            raise ParseError(node.msg)


def _parse(text: str) -> Expr:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size >= MAX_INPUT_SIZE:
        raise ParseError(f"input size too long ({size} > {MAX_INPUT_SIZE})")
    try:
        expr = _Parser(text).parse_root()
    except RecursionError:
        raise ParseError(ERR_TOO_DEEP) from None
    depth = _depth(expr)
    if depth > MAX_DEPTH:
        raise ParseError(f"{ERR_TOO_DEEP} ({depth} levels, at most {MAX_DEPTH})")
    return expr


def _depth(expr: Expr) -> int:
    """How deep the tree is, label filters included; without recursion. (``a + b + c``
    and ``x="1" and y="2" and ...`` are parsed by loops but nest like parentheses.)"""
    deepest = 0
    stack: list[tuple[object, int]] = [(expr, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, BinaryLabelFilter):
            subs: tuple[object, ...] = (node.left, node.right)
        elif isinstance(node, LabelFilterExpr):
            subs = (node.filter,)
        elif isinstance(node, LogRange) and node.unwrap is not None:
            subs = (*node.children(), *node.unwrap.post_filters)
        elif isinstance(node, Expr):
            subs = node.children()
        else:
            subs = ()
        stack.extend((sub, depth + 1) for sub in subs)
    return deepest


def _checked(expr: Expr) -> Expr:
    try:
        _validate(expr)
    except RecursionError:
        raise ParseError(ERR_TOO_DEEP) from None
    return expr


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------


def parse_expr(text: str) -> Expr:
    """Parse and validate a LogQL query (Loki's ``ParseExpr``).

    Returns a :class:`LogSelectorExpr`, a :class:`SampleExpr` or a
    :class:`MultiVariantExpr`; raises :class:`ParseError` with Loki's message.
    """
    return _checked(_parse(text))


def parse_sample_expr(text: str) -> SampleExpr:
    """Parse and validate a metric query (Loki's ``ParseSampleExpr``)."""
    expr = parse_expr(text)
    if not isinstance(expr, SampleExpr):
        raise ParseError("only sample expression supported", plain=True)
    return expr


def parse_log_selector(text: str, validate: bool = True) -> LogSelectorExpr:
    """Parse a log query (Loki's ``ParseLogSelector``); `validate` checks that the
    stream selector has a matcher that does not match the empty string.

    Unlike Loki, a bare number or ``vector()`` is not accepted as a log selector.
    """
    expr = _parse(text)
    if not isinstance(expr, LogSelectorExpr):
        raise ParseError("only log selector is supported", plain=True)
    return _checked(expr) if validate else expr


def parse_matchers(text: str, validate: bool = True) -> list[Matcher]:
    """Parse a bare stream selector ``{a="b", c=~"d"}`` (Loki's ``ParseMatchers``, as
    used for ``match[]``)."""
    expr = parse_expr(text) if validate else _parse(text)
    if not isinstance(expr, MatchersExpr):
        raise ParseError("only label matchers are supported", plain=True)
    return list(expr.matchers)


# ---------------------------------------------------------------------------
# Label sets of pushed streams (Loki's ParseLabels, i.e. PromQL's ParseMetric)
# ---------------------------------------------------------------------------

_LABELS_TOKEN = re.compile(
    r"""\s*(?:
        (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
      | (?P<punct>[{}=,])
    )""",
    re.VERBOSE,
)


def parse_labels(text: str) -> list[tuple[str, str]]:
    """Parse a label set such as ``{job="foo", bar=""}`` into sorted ``(name, value)``
    pairs, dropping empty values (Loki's ``ParseLabels``). A leading metric name
    becomes ``__name__``."""
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _LABELS_TOKEN.match(text, pos)
        if not m:
            raise _labels_error(text, pos, f"unexpected character {go_quote(text[pos])}")
        kind = str(m.lastgroup)
        tokens.append((kind, m.group(kind), m.start(kind)))
        pos = m.end()
    labels: list[tuple[str, str]] = []
    i = 0

    def take(kind: str, value: str | None, what: str) -> tuple[str, str, int]:
        nonlocal i
        if i >= len(tokens):
            raise _labels_error(text, len(text), f"unexpected end of input, expected {what}")
        tok = tokens[i]
        if tok[0] != kind or (value is not None and tok[1] != value):
            raise _labels_error(
                text, tok[2], f"unexpected {_describe(tok)} in label set, expected {what}"
            )
        i += 1
        return tok

    if tokens and tokens[0][0] == "name":
        labels.append(("__name__", tokens[0][1]))
        i = 1
        if i == len(tokens):
            return labels
    take("punct", "{", '"{"')
    while True:
        if i < len(tokens) and tokens[i][:2] == ("punct", "}"):
            i += 1
            break
        tok = tokens[i] if i < len(tokens) else None
        if tok is not None and tok[0] == "string":
            name = _unquote_label(text, tok)
            i += 1
        else:
            name = take("name", None, 'identifier or "}"')[1]
        take("punct", "=", '"="')
        labels.append((name, _unquote_label(text, take("string", None, "string"))))
        if i < len(tokens) and tokens[i][:2] == ("punct", ","):
            i += 1
            continue
        take("punct", "}", '"," or "}"')
        break
    if i != len(tokens):
        raise _labels_error(text, tokens[i][2], f"unexpected {_describe(tokens[i])}")
    return sorted((n, v) for n, v in labels if v != "")


def _describe(tok: tuple[str, str, int]) -> str:
    return {"name": "identifier", "string": "string"}.get(tok[0], f'"{tok[1]}"')


def _unquote_label(text: str, tok: tuple[str, str, int]) -> str:
    try:
        return unquote(tok[1])
    except ValueError:
        raise _labels_error(text, tok[2], "invalid syntax") from None


def _labels_error(text: str, pos: int, msg: str) -> ParseError:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return ParseError(f"{line}:{col}: parse error: {msg}", plain=True)
