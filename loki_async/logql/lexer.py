"""The LogQL lexer, and the Go-compatible literal values it produces.

Loki lexes LogQL with a copy of Go's ``text/scanner`` plus a thin layer that
recognises keywords, durations, byte sizes and parser flags. Error positions and
several quirks follow from that scanner, so this module reproduces it closely:

* a token's position is the line/column (1-based, in characters) of its first
  character, but tokens that Loki completes with ``Scanner.Next`` (two-character
  operators, ranges, durations, byte sizes, parser flags) report line 0;
* keywords are case-insensitive; function names (``rate``, ``sum``, ``ip``...) are
  keywords only when followed by ``(`` or by ``by``/``without`` and ``(``;
* a number followed directly by duration or byte-size characters becomes a
  ``DURATION`` or ``BYTES`` token (``5m``, ``1h30m``, ``-1s``, ``10KB``);
* the scanner's own errors (``literal not terminated``, ``decimal literal has no
  digits``...) are recorded, and some of them end the token stream.

The values of literal tokens (durations, byte sizes, strings) come from
:mod:`.literals`.
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from loki_async.logql.literals import (
    digit_value,
    go_quote_rune,
    parse_bytes,
    parse_duration,
    parse_prom_duration,
    underscore_ok,
    unquote,
)


class Tok(enum.IntEnum):
    """Token kinds, numbered in the order of Loki's grammar declarations.

    The order matters: a syntax error lists the expected tokens in this order
    (``expecting = or =~ or !~ or !=``).
    """

    EOF = 1
    BYTES = 4
    IDENTIFIER = enum.auto()
    STRING = enum.auto()
    NUMBER = enum.auto()
    PARSER_FLAG = enum.auto()
    DURATION = enum.auto()
    RANGE = enum.auto()
    MATCHERS = enum.auto()
    LABELS = enum.auto()
    EQ = enum.auto()
    RE = enum.auto()
    NRE = enum.auto()
    NPA = enum.auto()
    OPEN_BRACE = enum.auto()
    CLOSE_BRACE = enum.auto()
    OPEN_BRACKET = enum.auto()
    CLOSE_BRACKET = enum.auto()
    COMMA = enum.auto()
    DOT = enum.auto()
    PIPE_MATCH = enum.auto()
    PIPE_EXACT = enum.auto()
    PIPE_PATTERN = enum.auto()
    OPEN_PARENTHESIS = enum.auto()
    CLOSE_PARENTHESIS = enum.auto()
    BY = enum.auto()
    WITHOUT = enum.auto()
    COUNT_OVER_TIME = enum.auto()
    RATE = enum.auto()
    RATE_COUNTER = enum.auto()
    SUM = enum.auto()
    SORT = enum.auto()
    SORT_DESC = enum.auto()
    AVG = enum.auto()
    MAX = enum.auto()
    MIN = enum.auto()
    COUNT = enum.auto()
    STDDEV = enum.auto()
    STDVAR = enum.auto()
    BOTTOMK = enum.auto()
    TOPK = enum.auto()
    APPROX_TOPK = enum.auto()
    BYTES_OVER_TIME = enum.auto()
    BYTES_RATE = enum.auto()
    BOOL = enum.auto()
    JSON = enum.auto()
    REGEXP = enum.auto()
    LOGFMT = enum.auto()
    PIPE = enum.auto()
    LINE_FMT = enum.auto()
    LABEL_FMT = enum.auto()
    UNWRAP = enum.auto()
    AVG_OVER_TIME = enum.auto()
    SUM_OVER_TIME = enum.auto()
    MIN_OVER_TIME = enum.auto()
    MAX_OVER_TIME = enum.auto()
    STDVAR_OVER_TIME = enum.auto()
    STDDEV_OVER_TIME = enum.auto()
    QUANTILE_OVER_TIME = enum.auto()
    BYTES_CONV = enum.auto()
    DURATION_CONV = enum.auto()
    DURATION_SECONDS_CONV = enum.auto()
    FIRST_OVER_TIME = enum.auto()
    LAST_OVER_TIME = enum.auto()
    ABSENT_OVER_TIME = enum.auto()
    VECTOR = enum.auto()
    LABEL_REPLACE = enum.auto()
    UNPACK = enum.auto()
    OFFSET = enum.auto()
    PATTERN = enum.auto()
    IP = enum.auto()
    ON = enum.auto()
    IGNORING = enum.auto()
    GROUP_LEFT = enum.auto()
    GROUP_RIGHT = enum.auto()
    DECOLORIZE = enum.auto()
    DROP = enum.auto()
    KEEP = enum.auto()
    VARIANTS = enum.auto()
    OF = enum.auto()
    OR = enum.auto()
    AND = enum.auto()
    UNLESS = enum.auto()
    CMP_EQ = enum.auto()
    NEQ = enum.auto()
    LT = enum.auto()
    LTE = enum.auto()
    GT = enum.auto()
    GTE = enum.auto()
    ADD = enum.auto()
    SUB = enum.auto()
    MUL = enum.auto()
    DIV = enum.auto()
    MOD = enum.auto()
    POW = enum.auto()


# Keywords and operators, always recognised (case-insensitively for words).
KEYWORDS: dict[str, Tok] = {
    ",": Tok.COMMA,
    ".": Tok.DOT,
    "{": Tok.OPEN_BRACE,
    "}": Tok.CLOSE_BRACE,
    "=": Tok.EQ,
    "!=": Tok.NEQ,
    "=~": Tok.RE,
    "!~": Tok.NRE,
    "!>": Tok.NPA,
    "|=": Tok.PIPE_EXACT,
    "|~": Tok.PIPE_MATCH,
    "|>": Tok.PIPE_PATTERN,
    "|": Tok.PIPE,
    "unwrap": Tok.UNWRAP,
    "(": Tok.OPEN_PARENTHESIS,
    ")": Tok.CLOSE_PARENTHESIS,
    "by": Tok.BY,
    "without": Tok.WITHOUT,
    "bool": Tok.BOOL,
    "[": Tok.OPEN_BRACKET,
    "]": Tok.CLOSE_BRACKET,
    "label_replace": Tok.LABEL_REPLACE,
    "offset": Tok.OFFSET,
    "on": Tok.ON,
    "ignoring": Tok.IGNORING,
    "group_left": Tok.GROUP_LEFT,
    "group_right": Tok.GROUP_RIGHT,
    "or": Tok.OR,
    "and": Tok.AND,
    "unless": Tok.UNLESS,
    "+": Tok.ADD,
    "-": Tok.SUB,
    "*": Tok.MUL,
    "/": Tok.DIV,
    "%": Tok.MOD,
    "^": Tok.POW,
    "==": Tok.CMP_EQ,
    ">": Tok.GT,
    ">=": Tok.GTE,
    "<": Tok.LT,
    "<=": Tok.LTE,
    "json": Tok.JSON,
    "regexp": Tok.REGEXP,
    "logfmt": Tok.LOGFMT,
    "unpack": Tok.UNPACK,
    "pattern": Tok.PATTERN,
    "label_format": Tok.LABEL_FMT,
    "line_format": Tok.LINE_FMT,
    "ip": Tok.IP,
    "decolorize": Tok.DECOLORIZE,
    "drop": Tok.DROP,
    "keep": Tok.KEEP,
    "variants": Tok.VARIANTS,
    "of": Tok.OF,
}

# Function names: keywords only when a call follows (see `_is_function`).
FUNCTIONS: dict[str, Tok] = {
    "rate": Tok.RATE,
    "rate_counter": Tok.RATE_COUNTER,
    "count_over_time": Tok.COUNT_OVER_TIME,
    "bytes_rate": Tok.BYTES_RATE,
    "bytes_over_time": Tok.BYTES_OVER_TIME,
    "avg_over_time": Tok.AVG_OVER_TIME,
    "sum_over_time": Tok.SUM_OVER_TIME,
    "min_over_time": Tok.MIN_OVER_TIME,
    "max_over_time": Tok.MAX_OVER_TIME,
    "stdvar_over_time": Tok.STDVAR_OVER_TIME,
    "stddev_over_time": Tok.STDDEV_OVER_TIME,
    "quantile_over_time": Tok.QUANTILE_OVER_TIME,
    "first_over_time": Tok.FIRST_OVER_TIME,
    "last_over_time": Tok.LAST_OVER_TIME,
    "absent_over_time": Tok.ABSENT_OVER_TIME,
    "vector": Tok.VECTOR,
    "sum": Tok.SUM,
    "avg": Tok.AVG,
    "max": Tok.MAX,
    "min": Tok.MIN,
    "count": Tok.COUNT,
    "stddev": Tok.STDDEV,
    "stdvar": Tok.STDVAR,
    "bottomk": Tok.BOTTOMK,
    "topk": Tok.TOPK,
    "sort": Tok.SORT,
    "sort_desc": Tok.SORT_DESC,
    "approx_topk": Tok.APPROX_TOPK,
    "label_replace": Tok.LABEL_REPLACE,
    "bytes": Tok.BYTES_CONV,
    "duration": Tok.DURATION_CONV,
    "duration_seconds": Tok.DURATION_SECONDS_CONV,
    "ip": Tok.IP,
}

PARSER_FLAGS = ("--strict", "--keep-empty")

_DISPLAY: dict[Tok, str] = {tok: text for text, tok in KEYWORDS.items()}
_DISPLAY[Tok.EOF] = "$end"


def token_name(kind: Tok) -> str:
    """How Loki's syntax errors name a token: ``$end``, ``IDENTIFIER``, ``=~``, ``ip``..."""
    return _DISPLAY.get(kind, kind.name)


@dataclass(frozen=True, slots=True)
class Token:
    """One token. ``value`` is the unquoted string, the identifier or number text, the
    duration in nanoseconds (``DURATION``, ``RANGE``) or the size in bytes (``BYTES``)."""

    kind: Tok
    text: str
    value: str | int
    line: int
    col: int
    index: int  # offset of the first character in the input


@dataclass(frozen=True, slots=True)
class LexError:
    """An error the scanner reported while producing token number `token`."""

    msg: str
    line: int
    col: int
    token: int


_GO_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | frozenset(
    chr(c) for c in range(0x2000, 0x200B)
)
_SCANNER_WHITESPACE = frozenset("\t\n\r ")
_DURATION_RUNES = frozenset("nuµmshdwy")
_BYTES_RUNES = frozenset("BikKMGTP")


def _is_letter(c: str) -> bool:
    return unicodedata.category(c).startswith("L")


def _is_ident_start(c: str) -> bool:
    return c == "_" or _is_letter(c)


def _is_ident_part(c: str) -> bool:
    return c == "_" or _is_letter(c) or unicodedata.category(c) == "Nd"


def _is_number(c: str) -> bool:
    return unicodedata.category(c) in ("Nd", "Nl", "No")


def _is_invalid(c: str) -> bool:
    # Bytes that are not UTF-8 reach us as lone surrogates (surrogateescape).
    return "\ud800" <= c <= "\udfff"


def _lower(c: str) -> str:
    return c.lower() if c.isascii() else c


class Lexer:
    """Turns a query into tokens, recording scanner errors the way Loki does.

    After an error that makes Loki's lexer return end-of-input, the token list ends
    with that ``EOF``; `errors` lists every error with the token it belongs to.
    """

    def __init__(self, text: str) -> None:
        self.src = text
        self.n = len(text)
        self.pos = 0
        self.errors: list[LexError] = []
        self.tokens: list[Token] = []
        self._line_starts = [0]
        for i, c in enumerate(text):
            if c == "\n":
                self._line_starts.append(i + 1)
        if text.startswith("\ufeff"):
            self.pos = 1
        # Line/column of the token being scanned; line 0 once Loki calls Next().
        self._line = 0
        self._col = 0

    # -- positions -----------------------------------------------------------

    def position(self, index: int) -> tuple[int, int]:
        """Line and column (1-based, characters) of `index`, as Go's scanner reports."""
        if self.n == 0:
            return 0, 0
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= index:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, index - self._line_starts[lo] + 1

    def _error(self, msg: str) -> None:
        self.errors.append(LexError(msg, self._line, self._col, len(self.tokens)))

    def _peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.src[i] if i < self.n else ""

    # -- public --------------------------------------------------------------

    def tokenize(self) -> list[Token]:
        """All tokens, ending with one ``EOF``."""
        while True:
            tok = self._next_token()
            self.tokens.append(tok)
            if tok.kind is Tok.EOF:
                return self.tokens

    # -- Loki's Lex ----------------------------------------------------------

    def _emit(self, kind: Tok, start: int, value: str | int | None = None) -> Token:
        text = self.src[start : self.pos]
        return Token(kind, text, text if value is None else value, self._line, self._col, start)

    def _eof(self) -> Token:
        return Token(Tok.EOF, "", "", self._line, self._col, self.n)

    def _next_token(self) -> Token:
        while True:
            kind, start = self._scan()
            if kind == "#":
                # A comment runs to the end of the line.
                while self.pos < self.n and self.src[self.pos] != "\n":
                    self.pos += 1
                continue
            break
        if kind in ("EOF", "abort"):
            return self._eof()
        if kind in ("Int", "Float"):
            return self._number(start)
        if kind in ("String", "RawString"):
            return self._string(start)
        text = self.src[start : self.pos]
        if text == "-":
            if self._peek() == "-":
                flag = self._try_flag()
                if flag is not None:
                    self._line = 0
                    return self._emit(Tok.PARSER_FLAG, start, flag)
            dur = self._try_suffix("-", _DURATION_RUNES, parse_duration)
            if dur is not None:
                return self._emit(Tok.DURATION, start, dur)
        if text == "[":
            return self._range(start)
        lower = text.lower()
        nxt = self._peek()
        if lower in FUNCTIONS:
            if not self._is_function(self.pos):
                return self._emit(Tok.IDENTIFIER, start)
            return self._emit(FUNCTIONS[lower], start)
        pair = lower + _lower(nxt)
        if nxt and pair in KEYWORDS:
            self.pos += 1
            self._line = 0
            return self._emit(KEYWORDS[pair], start)
        if lower in KEYWORDS:
            return self._emit(KEYWORDS[lower], start)
        return self._emit(Tok.IDENTIFIER, start)

    def _is_function(self, i: int) -> bool:
        """Whether a call follows: ``(`` or ``by``/``without`` then ``(``, after spaces."""
        src = self.src
        while i < self.n and src[i] in _GO_SPACE:
            i += 1
        if i < self.n and src[i] == "(":
            return True
        for word in ("by", "without"):
            if src[i : i + len(word)].lower() == word:
                j = i + len(word)
                while j < self.n and src[j] in _GO_SPACE:
                    j += 1
                return j < self.n and src[j] == "("
        return False

    def _try_flag(self) -> str | None:
        j = self.pos
        while j < self.n and (_is_letter(self.src[j]) or self.src[j] == "-"):
            j += 1
        flag = "-" + self.src[self.pos : j]
        if flag in PARSER_FLAGS:
            self.pos = j
            return flag
        return None

    def _try_suffix(
        self, number: str, runes: frozenset[str], parse: Callable[[str], int]
    ) -> int | None:
        """Loki's tryScanDuration/tryScanBytes: extend `number` with the following
        non-space characters if together they parse."""
        j = self.pos
        while j < self.n:
            c = self.src[j]
            if c in _GO_SPACE or not (_is_number(c) or c in runes or c == "."):
                break
            j += 1
        if j == self.pos:
            return None
        try:
            value = parse(number + self.src[self.pos : j])
        except ValueError:
            return None
        self.pos = j
        self._line = 0
        return value

    def _number(self, start: int) -> Token:
        text = self.src[start : self.pos]
        dur = self._try_suffix(text, _DURATION_RUNES, parse_duration)
        if dur is not None:
            return self._emit(Tok.DURATION, start, dur)
        size = self._try_suffix(text, _BYTES_RUNES, parse_bytes)
        if size is not None:
            return self._emit(Tok.BYTES, start, size)
        return self._emit(Tok.NUMBER, start)

    def _string(self, start: int) -> Token:
        text = self.src[start : self.pos]
        if any(_is_invalid(c) for c in text):
            self._error("invalid UTF-8 rune")
            return self._eof()
        try:
            value = unquote(text)
        except ValueError as exc:
            self._error(str(exc))
            return self._eof()
        return self._emit(Tok.STRING, start, value)

    def _range(self, start: int) -> Token:
        self._line = 0
        end = self.src.find("]", self.pos)
        if end < 0:
            self.pos = self.n
            self._error("missing closing ']' in duration")
            return self._eof()
        body = self.src[self.pos : end]
        self.pos = end + 1
        try:
            value = parse_prom_duration(body)
        except ValueError as exc:
            self._error(str(exc))
            return self._eof()
        return self._emit(Tok.RANGE, start, value)

    # -- Go's text/scanner ---------------------------------------------------

    def _scan(self) -> tuple[str, int]:
        """One Go scanner token: its class and start. Sets the token position."""
        src = self.src
        skipped = False
        while True:
            while self.pos < self.n and src[self.pos] in _SCANNER_WHITESPACE:
                self.pos += 1
                skipped = True
            start = self.pos
            if start >= self.n:
                self._line, self._col = self._eof_position()
                return "EOF", start
            self._line, self._col = self.position(start)
            c = src[start]
            if c == "/" and self._peek(1) in ("/", "*"):
                if not self._scan_comment():
                    return "abort", start
                continue
            break
        self.pos += 1
        if _is_invalid(c):
            self._error("invalid UTF-8 encoding")
        elif c == "\x00":
            self._error("invalid character NUL")
        if _is_ident_start(c):
            while self.pos < self.n and _is_ident_part(src[self.pos]):
                self.pos += 1
            return "Ident", start
        if "0" <= c <= "9":
            return self._scan_number(start, False, skipped), start
        if c == "." and "0" <= self._peek() <= "9":
            return self._scan_number(start, True, skipped), start
        if c == '"':
            self._scan_string('"')
            return "String", start
        if c == "`":
            self._scan_string("`")
            return "RawString", start
        if c == "'":
            if self._scan_string("'") != 1:
                self._error("invalid char literal")
            return "Char", start
        return c, start

    def _eof_position(self) -> tuple[int, int]:
        if self.n == 0:
            return 0, 0
        return self.position(self.n)

    def _scan_comment(self) -> bool:
        if self._peek(1) == "/":
            end = self.src.find("\n", self.pos)
            self.pos = self.n if end < 0 else end
            return True
        end = self.src.find("*/", self.pos + 2)
        if end < 0:
            self.pos = self.n
            self._error("comment not terminated")
            return False
        self.pos = end + 2
        return True

    def _scan_string(self, quote: str) -> int:
        """Scan to the closing quote (raw strings: no escapes, newlines allowed)."""
        n = 0
        while True:
            c = self._peek()
            if c == quote:
                self.pos += 1
                return n
            if c == "" or (c == "\n" and quote != "`"):
                self._error("literal not terminated")
                return n
            self.pos += 1
            if _is_invalid(c):
                self._error("invalid UTF-8 encoding")
            elif c == "\x00":
                self._error("invalid character NUL")
            elif c == "\\" and quote != "`":
                self._scan_escape(quote)
            n += 1

    def _scan_escape(self, quote: str) -> None:
        c = self._peek()
        if c and c in "abfnrtv\\" + quote:
            self.pos += 1
        elif c and c in "01234567":
            self._scan_digits(8, 3)
        elif c in ("x", "u", "U"):
            self.pos += 1
            self._scan_digits(16, {"x": 2, "u": 4, "U": 8}[c])
        else:
            self._error("invalid char escape")

    def _scan_digits(self, base: int, count: int) -> None:
        while count > 0 and self._peek() and digit_value(self._peek()) < base:
            self.pos += 1
            count -= 1
        if count > 0:
            self._error("invalid char escape")

    def _digits(self, base: int) -> tuple[int, str | None]:
        """Go's scanner.digits: returns (bits: 1 digit seen, 2 '_' seen), invalid digit."""
        bits = 0
        invalid = None
        while self.pos < self.n:
            c = self.src[self.pos]
            if c == "_":
                bits |= 2
            elif base <= 10 and "0" <= c <= "9":
                bits |= 1
                if int(c) >= base and invalid is None:
                    invalid = c
            elif base == 16 and digit_value(c) < 16:
                bits |= 1
            else:
                break
            self.pos += 1
        return bits, invalid

    def _scan_number(self, start: int, seen_dot: bool, skipped_space: bool) -> str:
        """Go's scanner.scanNumber, with Loki's binary-prefix quirk: ``0b`` starts a
        binary literal only when no whitespace precedes the number (so ``< 0B`` is the
        byte size 0B after its error, while ``0b01`` at the start is binary)."""
        base, prefix, bits = 10, "", 0
        invalid = None
        kind = "Int"
        if not seen_dot:
            if self.src[start] == "0":
                c = _lower(self._peek())
                if c == "x":
                    self.pos += 1
                    base, prefix = 16, "x"
                elif c == "o":
                    self.pos += 1
                    base, prefix = 8, "o"
                elif c == "b":
                    if not skipped_space:
                        self.pos += 1
                        base, prefix = 2, "b"
                else:
                    base, prefix, bits = 8, "0", 1
            else:
                bits = 1
            more, invalid = self._digits(base)
            bits |= more
            if self._peek() == ".":
                self.pos += 1
                seen_dot = True
        if seen_dot:
            kind = "Float"
            if prefix in ("o", "b"):
                self._error("invalid radix point in " + _literal_name(prefix))
            more, inv = self._digits(base)
            bits |= more
            invalid = invalid or inv
        if not bits & 1:
            self._error(_literal_name(prefix) + " has no digits")
        e = _lower(self._peek())
        if e in ("e", "p"):
            ch = self._peek()
            if e == "e" and prefix not in ("", "0"):
                self._error(f"{go_quote_rune(ch)} exponent requires decimal mantissa")
            elif e == "p" and prefix != "x":
                self._error(f"{go_quote_rune(ch)} exponent requires hexadecimal mantissa")
            self.pos += 1
            kind = "Float"
            if self._peek() in ("+", "-"):
                self.pos += 1
            more, _ = self._digits(10)
            bits |= more
            if not more & 1:
                self._error("exponent has no digits")
        elif prefix == "x" and kind == "Float":
            self._error("hexadecimal mantissa requires a 'p' exponent")
        if kind == "Int" and invalid is not None:
            self._error(f"invalid digit {go_quote_rune(invalid)} in {_literal_name(prefix)}")
        if bits & 2 and not underscore_ok(self.src[start : self.pos]):
            self._error("'_' must separate successive digits")
        return kind


def _literal_name(prefix: str) -> str:
    return {
        "x": "hexadecimal literal",
        "o": "octal literal",
        "0": "octal literal",
        "b": "binary literal",
    }.get(prefix, "decimal literal")
