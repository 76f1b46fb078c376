"""Go ``text/template`` as LogQL's ``line_format`` and ``label_format`` stages run it.

``Template(text)`` parses a template once and compiles it to a tree of closures;
``render(labels, line, ts_ns)`` runs it for one log line. Everything a user can see is
Go's, reproduced from documented and observed behaviour (no code is copied):

* **Go ``text/template``**: the lexer (trim markers ``{{-``/``-}}``, comments, raw
  strings, char constants, Go number literals), the parser and its error messages,
  and execution with ``missingkey=zero`` over a ``map[string]string`` of labels (a
  missing label is ``""``): pipelines, variables, ``if``/``else if``/``with``/
  ``else with``/``range`` (lists, maps, integers; ``break``/``continue``),
  ``define``/``template``/``block``, Go's truthiness, and the builtins ``and or not
  len index slice print printf println html js urlquery call eq ne lt le gt ge``.
  Execution errors read as Go's: ``template: line:1:3: executing "line" at <substr
  -1 -1 "x">: error calling substr: runtime error: slice bounds out of range [:-1]``.
* **Go ``fmt``** for printing values and for ``printf`` verbs, flags, widths,
  precisions, argument indexes and its ``%!d(string=x)`` error forms.
* **Go ``time``**: layouts (``2006-01-02T15:04:05Z07:00``) for ``date``, ``toDate``,
  ``toDateInZone`` and the ``time.Time`` methods a template can call
  (``{{ __timestamp__.Year }}``, ``.Format``, ``.Unix`` ...).
* **Grafana Loki 3.7** (``pkg/logql/log/fmt.go``): the function map. Go's ``strings``
  functions under their old names, ``regexReplaceAll[Literal]``, ``count``,
  ``urlencode``/``urldecode``, ``bytes``, ``duration[_seconds]``, ``unixEpochMillis``/
  ``Nanos``, ``toDateInZone``, ``unixToTime``, ``alignLeft``/``alignRight``,
  ``__line__`` and ``__timestamp__``.
* **Masterminds sprig v3** for the rest of the map (``trunc`` and ``substr`` are its
  byte-based versions, ``add``, ``addf``, ``round``, ``default``, ``date`` ...), with
  **spf13/cast** v1.7 number conversions (``"12.0"`` is 12, ``"12.5"`` is 0) and
  **shopspring/decimal** arithmetic for the ``...f`` functions.

Go strings are bytes: the byte-based functions (``trunc``, ``substr``, ``len``,
``index``, ``slice``, ``b64dec``, ``%x``) work on UTF-8, and bytes that do not form
UTF-8 are lone surrogates (``surrogateescape``), as elsewhere in
:mod:`loki_async.logql`. Go's ``time.Local`` is UTC, as in Loki's container.

Known gaps: Go's difference between an invalid value and a nil interface is kept only
where it shows (values read from ``fromJson`` maps); case mapping falls back to
Python's tables where they differ from Go's simple mappings; template calls nest at
most ``_MAX_DEPTH`` deep (Go: 100000); ``repeat``, ``indent`` and the ``align``
functions refuse results over ``_MAX_OUTPUT`` characters.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import re
import struct
import time
import urllib.parse
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any, NoReturn

from loki_async.errors import BadRequest
from loki_async.logql.literals import (
    digit_value,
    format_float_f,
    format_float_g,
    format_go_duration,
    go_quote,
    go_quote_rune,
    parse_bytes,
    parse_go_duration,
    parse_go_float,
    underscore_ok,
    unquote,
)
from loki_async.logql.regex import GoRegexError, Match, Pattern, compile_go, expand

_MAX_DEPTH = 40  # nested {{template}} calls
_MAX_OUTPUT = 1 << 24  # characters one function may produce


class TemplateError(BadRequest):
    """A template that does not parse, or fails while rendering; the message is Go's."""


class Template:
    """A parsed and compiled Go template.

    ``fields`` are the label names the main template reads as ``.name`` (what Loki's
    ``RequiredLabelNames`` reports for parser hints); ``uses_line`` tells whether the
    template calls ``__line__``. ``render`` keeps no state between calls and may run
    concurrently.
    """

    __slots__ = ("_const", "_main", "_trees", "fields", "name", "text", "uses_line")

    def __init__(self, text: str, name: str = "line") -> None:
        """Parse and compile `text`. `name` names the template in error messages: Loki
        uses ``line`` for ``line_format`` and ``label`` for ``label_format``.

        Raises :class:`TemplateError` with Go's message on a syntax error or a call to
        a function Loki does not define.
        """
        self.text = text
        self.name = name
        roots = _Parser(text, name).parse()
        main = roots[name]
        self.fields = frozenset(_field_names(main))
        self.uses_line = any(_calls(root, "__line__") for root in roots.values())
        try:
            self._trees = {n: _Compiler().compile(root) for n, root in roots.items()}
        except RecursionError:
            raise TemplateError(f"template: {name}: max expression depth exceeded") from None
        self._main = self._trees[name]
        texts = [n.text for n in main.nodes if isinstance(n, _Text)]
        self._const = "".join(texts) if len(texts) == len(main.nodes) else None

    def render(self, labels: Mapping[str, str], line: str, ts_ns: int) -> str:
        """Run the template with `labels` as dot; ``__line__`` returns `line` and
        ``__timestamp__`` returns ``time.Unix(0, ts_ns)`` (UTC).

        Raises :class:`TemplateError` with Go's message when execution fails (Loki then
        sets ``__error__=TemplateFormatErr`` and keeps the original line).
        """
        if self._const is not None:
            return self._const
        tree = self._main
        ctx = _Ctx(self, line, ts_ns)
        ctx.vars = [labels] + [_UNSET] * (tree.nslots - 1)
        try:
            tree.run(ctx, labels)
        except _ExecError as exc:
            raise TemplateError(self._message(exc)) from None
        except RecursionError:
            raise TemplateError(
                f"template: {self.name}: exceeded maximum template depth ({_MAX_DEPTH})"
            ) from None
        return "".join(ctx.out)

    def _message(self, exc: _ExecError) -> str:
        node = exc.node
        if node is None:
            return f"template: {exc.name}: {exc.msg}"
        before = self.text[: node.pos]
        line = before.count("\n") + 1
        col = len(_utf8(before[before.rfind("\n") + 1 :]))
        where = f"{self.name}:{line}:{col}"
        return f"template: {where}: executing {go_quote(exc.name)} at <{node}>: {exc.msg}"


# ---------------------------------------------------------------------------
# Execution state and values
# ---------------------------------------------------------------------------


class _Ctx:
    """One execution: output, the variable frame of the running template, the line."""

    __slots__ = ("depth", "line", "name", "out", "template", "ts_ns", "vars")

    def __init__(self, template: Template, line: str, ts_ns: int) -> None:
        self.template = template
        self.line = line
        self.ts_ns = ts_ns
        self.name = template.name
        self.out: list[str] = []
        self.vars: list[Any] = []
        self.depth = 0


class _ExecError(Exception):
    """Execution failed at `node` (None: no position) of template `name`."""

    def __init__(self, name: str, node: _Node | None, msg: str) -> None:
        super().__init__(msg)
        self.name = name
        self.node = node
        self.msg = msg


class _CallError(Exception):
    """A function returned an error (or panicked); the text follows ``error calling f:``."""


class _BreakSignal(Exception):
    """``{{break}}`` unwinding to its ``range``."""


class _ContinueSignal(Exception):
    """``{{continue}}`` unwinding to its ``range``."""


def _fail(ctx: _Ctx, node: _Node | None, msg: str) -> NoReturn:
    raise _ExecError(ctx.name, node, msg)


# Go values are Python values: string str, bool bool, int int, float64 float,
# complex128 complex, []interface{} list, map[string]interface{} _JsonMap, the labels
# map[string]string any other Mapping, time.Time _Time, nil None. These int subclasses
# keep the Go types that print, compare or convert differently:


class _Int64(int):
    """A Go ``int64`` (sprig's integer results); a plain ``int`` is Go's ``int``."""

    __slots__ = ()


class _Uint8(int):
    """A Go ``uint8``: a byte of a string, from ``index``."""

    __slots__ = ()


class _Month(int):
    """``time.Month``: prints as its name."""

    __slots__ = ()


class _Weekday(int):
    """``time.Weekday``: prints as its name."""

    __slots__ = ()


class _Duration(int):
    """``time.Duration`` in nanoseconds: prints as ``1h2m3s``."""

    __slots__ = ()


class _JsonMap(dict):  # type: ignore[type-arg]
    """A ``map[string]interface{}`` from ``fromJson``: a missing key is nil, not ``""``."""

    __slots__ = ()


_UNSET = object()  # a variable slot whose declaration has not run
_NOFINAL = object()  # no value piped in from a previous command (Go's missingVal)
_NORECV = object()  # a function call, not a method call

_INT_KINDS = (int, _Int64, _Month, _Weekday, _Duration)


def _utf8(s: str) -> bytes:
    """The Go bytes of `s` (lone surrogates from ``surrogateescape`` are raw bytes)."""
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


def _from_utf8(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def _runes(s: str) -> str:
    """``string([]rune(s))``: bytes that are not UTF-8 become U+FFFD."""
    return _RAW_BYTE.sub("\ufffd", s)


_RAW_BYTE = re.compile("[\udc80-\udcff]")


def _wrap64(v: int) -> int:
    return ((v + (1 << 63)) & ((1 << 64) - 1)) - (1 << 63)


_TYPE_NAMES: dict[type, str] = {
    str: "string",
    bool: "bool",
    int: "int",
    _Int64: "int64",
    _Uint8: "uint8",
    float: "float64",
    complex: "complex128",
    list: "[]interface {}",
    _JsonMap: "map[string]interface {}",
    _Month: "time.Month",
    _Weekday: "time.Weekday",
    _Duration: "time.Duration",
}


def _type_name(v: Any) -> str:
    """Go's ``reflect.Type.String()`` of a value."""
    if v is None:
        return "<nil>"
    name = _TYPE_NAMES.get(type(v))
    if name is not None:
        return name
    if isinstance(v, _Time):
        return "time.Time"
    if isinstance(v, Mapping):
        return "map[string]string"
    return type(v).__name__


def _truth(v: Any) -> bool:
    """Go's ``isTrue``: zero values, nil and empty containers are false."""
    if v is None:
        return False
    t = type(v)
    if t is str or t is list or t is _JsonMap:
        return len(v) > 0
    if t is bool:
        return v
    if isinstance(v, (int, float, complex)):
        return v != 0
    if isinstance(v, Mapping):
        return len(v) > 0
    return True  # structs (time.Time) are always true


# ---------------------------------------------------------------------------
# Lexer (Go's text/template/parse lexer)
# ---------------------------------------------------------------------------

_SPACES = " \t\r\n"

_ERROR, _EOF, _TEXT, _LDELIM, _RDELIM, _SPACE = "error", "EOF", "text", "{{", "}}", "space"
_BOOL, _CHAR, _CHARCONST, _COMPLEX, _ASSIGN, _DECLARE = "bool", "char", "charconst", "cx", "=", ":="
_FIELD, _IDENT, _LPAREN, _RPAREN, _NUMBER, _PIPE = "field", "ident", "(", ")", "number", "|"
_STRING, _RAWSTRING, _VARIABLE = "string", "rawstring", "variable"
# Keywords (printed as <val> in errors).
_DOT, _NIL, _BLOCK, _BREAK = "kw.", "kwnil", "kwblock", "kwbreak"
_CONTINUE, _DEFINE, _ELSE, _END = "kwcontinue", "kwdefine", "kwelse", "kwend"
_IF, _RANGE, _TEMPLATE, _WITH = "kwif", "kwrange", "kwtemplate", "kwwith"
_KEYWORDS = {
    ".": _DOT,
    "nil": _NIL,
    "block": _BLOCK,
    "break": _BREAK,
    "continue": _CONTINUE,
    "define": _DEFINE,
    "else": _ELSE,
    "end": _END,
    "if": _IF,
    "range": _RANGE,
    "template": _TEMPLATE,
    "with": _WITH,
}
_KEYWORD_TYPES = frozenset(_KEYWORDS.values())


@dataclass(slots=True)
class _Item:
    typ: str
    pos: int
    val: str
    line: int

    def __str__(self) -> str:
        if self.typ == _EOF:
            return "EOF"
        if self.typ == _ERROR:
            return self.val
        if self.typ in _KEYWORD_TYPES:
            return f"<{self.val}>"
        if len(self.val) > 10:
            return go_quote(self.val[:10]) + "..."
        return go_quote(self.val)


def _is_alnum(c: str) -> bool:
    return c == "_" or c.isalpha() or c.isdecimal()


def _sharp_u(c: str) -> str:
    """Go's ``%#U``: ``U+0023 '#'``."""
    text = f"U+{ord(c):04X}"
    return f"{text} '{c}'" if c.isprintable() else text


class _Lexer:
    """Go's lexer, run to the end at once; an error item is followed by EOF."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.start = 0
        self.paren_depth = 0
        self.items: list[_Item] = []

    def run(self) -> list[_Item]:
        state: Callable[[], Any] | None = self.lex_text
        while state is not None:
            state = state()
        return self.items

    def emit(self, typ: str) -> None:
        line = self.text.count("\n", 0, self.start) + 1
        self.items.append(_Item(typ, self.start, self.text[self.start : self.pos], line))
        self.start = self.pos

    def error(self, msg: str) -> None:
        line = self.text.count("\n", 0, self.start) + 1
        self.items.append(_Item(_ERROR, self.start, msg, line))
        self.items.append(_Item(_EOF, len(self.text), "", line))

    def at_right_delim(self) -> tuple[bool, bool]:
        t, p = self.text, self.pos
        if t[p : p + 1] in ("\t", "\n", "\r", " ") and t[p + 1 : p + 2] == "-":
            if t.startswith("}}", p + 2):
                return True, True
        return t.startswith("}}", p), False

    def at_terminator(self) -> bool:
        t, p = self.text, self.pos
        if p >= len(t):
            return True
        return t[p] in _SPACES or t[p] in ".,|:()" or t.startswith("}}", p)

    def trim_left(self) -> None:
        t = self.text
        while self.pos < len(t) and t[self.pos] in _SPACES:
            self.pos += 1

    def lex_text(self) -> Callable[[], Any] | None:
        t = self.text
        x = t.find("{{", self.pos)
        if x < 0:
            self.pos = len(t)
            if self.pos > self.start:
                self.emit(_TEXT)
            self.emit(_EOF)
            return None
        if x > self.pos:
            end = x
            if t[x + 2 : x + 3] == "-" and t[x + 3 : x + 4] in ("\t", "\n", "\r", " "):
                while end > self.start and t[end - 1] in _SPACES:
                    end -= 1
            self.pos = end
            if end > self.start:
                self.emit(_TEXT)
            self.pos = self.start = x
        return self.lex_left_delim

    def lex_left_delim(self) -> Callable[[], Any]:
        t = self.text
        self.pos += 2
        trim = t[self.pos : self.pos + 1] == "-" and t[self.pos + 1 : self.pos + 2] in (
            "\t",
            "\n",
            "\r",
            " ",
        )
        after = 2 if trim else 0
        if t.startswith("/*", self.pos + after):
            self.pos += after
            self.start = self.pos
            return self.lex_comment
        self.emit(_LDELIM)
        self.pos += after
        self.start = self.pos
        self.paren_depth = 0
        return self.lex_inside_action

    def lex_comment(self) -> Callable[[], Any] | None:
        self.pos += 2
        x = self.text.find("*/", self.pos)
        if x < 0:
            return self.error("unclosed comment")
        self.pos = x + 2
        delim, trim = self.at_right_delim()
        if not delim:
            return self.error("comment ends before closing delimiter")
        self.pos += 4 if trim else 2
        if trim:
            self.trim_left()
        self.start = self.pos
        return self.lex_text

    def lex_right_delim(self) -> Callable[[], Any]:
        _, trim = self.at_right_delim()
        if trim:
            self.pos += 2
            self.start = self.pos
        self.pos += 2
        self.emit(_RDELIM)
        if trim:
            self.trim_left()
            self.start = self.pos
        return self.lex_text

    def lex_inside_action(self) -> Callable[[], Any] | None:
        delim, _ = self.at_right_delim()
        if delim:
            if self.paren_depth == 0:
                return self.lex_right_delim
            return self.error("unclosed left paren")
        t = self.text
        if self.pos >= len(t):
            return self.error("unclosed action")
        c = t[self.pos]
        self.pos += 1
        if c in _SPACES:
            self.pos -= 1
            return self.lex_space
        if c == "=":
            self.emit(_ASSIGN)
        elif c == ":":
            if t[self.pos : self.pos + 1] != "=":
                return self.error("expected :=")
            self.pos += 1
            self.emit(_DECLARE)
        elif c == "|":
            self.emit(_PIPE)
        elif c == '"':
            return self.lex_quote('"', _STRING, "unterminated quoted string")
        elif c == "`":
            return self.lex_raw_quote()
        elif c == "$":
            return self.lex_variable()
        elif c == "'":
            return self.lex_quote("'", _CHARCONST, "unterminated character constant")
        elif c == "." and self.pos < len(t) and not "0" <= t[self.pos] <= "9":
            return self.lex_field_or_variable(_FIELD)
        elif c in "+-." or "0" <= c <= "9":
            self.pos -= 1
            return self.lex_number()
        elif _is_alnum(c):
            self.pos -= 1
            return self.lex_identifier()
        elif c == "(":
            self.emit(_LPAREN)
            self.paren_depth += 1
        elif c == ")":
            self.paren_depth -= 1
            if self.paren_depth < 0:
                return self.error("unexpected right paren")
            self.emit(_RPAREN)
        elif c <= "\x7f" and c.isprintable():
            self.emit(_CHAR)
        else:
            return self.error(f"unrecognized character in action: {_sharp_u(c)}")
        return self.lex_inside_action

    def lex_space(self) -> Callable[[], Any]:
        t = self.text
        n = 0
        while self.pos < len(t) and t[self.pos] in _SPACES:
            self.pos += 1
            n += 1
        # " -}}" closes the action: the last space belongs to the delimiter.
        if t[self.pos : self.pos + 1] == "-" and t.startswith("}}", self.pos + 1):
            self.pos -= 1
            if n == 1:
                return self.lex_inside_action
        self.emit(_SPACE)
        return self.lex_inside_action

    def lex_identifier(self) -> Callable[[], Any] | None:
        t = self.text
        while self.pos < len(t) and _is_alnum(t[self.pos]):
            self.pos += 1
        if not self.at_terminator():
            return self.error(f"bad character {_sharp_u(t[self.pos])}")
        word = t[self.start : self.pos]
        if word in _KEYWORDS:
            self.emit(_KEYWORDS[word])
        elif word in ("true", "false"):
            self.emit(_BOOL)
        else:
            self.emit(_IDENT)
        return self.lex_inside_action

    def lex_variable(self) -> Callable[[], Any] | None:
        if self.at_terminator():
            self.emit(_VARIABLE)
            return self.lex_inside_action
        return self.lex_field_or_variable(_VARIABLE)

    def lex_field_or_variable(self, typ: str) -> Callable[[], Any] | None:
        if self.at_terminator():
            self.emit(_VARIABLE if typ == _VARIABLE else _DOT)
            return self.lex_inside_action
        t = self.text
        while self.pos < len(t) and _is_alnum(t[self.pos]):
            self.pos += 1
        if not self.at_terminator():
            return self.error(f"bad character {_sharp_u(t[self.pos])}")
        self.emit(typ)
        return self.lex_inside_action

    def lex_quote(self, quote: str, typ: str, unterminated: str) -> Callable[[], Any] | None:
        t = self.text
        while True:
            if self.pos >= len(t):
                return self.error(unterminated)
            c = t[self.pos]
            self.pos += 1
            if c == "\\":
                if self.pos < len(t) and t[self.pos] != "\n":
                    self.pos += 1
                    continue
                return self.error(unterminated)
            if c == "\n":
                return self.error(unterminated)
            if c == quote:
                break
        self.emit(typ)
        return self.lex_inside_action

    def lex_raw_quote(self) -> Callable[[], Any] | None:
        x = self.text.find("`", self.pos)
        if x < 0:
            return self.error("unterminated raw quoted string")
        self.pos = x + 1
        self.emit(_RAWSTRING)
        return self.lex_inside_action

    def accept(self, valid: str) -> bool:
        if self.pos < len(self.text) and self.text[self.pos] in valid:
            self.pos += 1
            return True
        return False

    def accept_run(self, valid: str) -> None:
        while self.accept(valid):
            pass

    def scan_number(self) -> bool:
        self.accept("+-")
        digits = "0123456789_"
        if self.accept("0"):
            if self.accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif self.accept("oO"):
                digits = "01234567_"
            elif self.accept("bB"):
                digits = "01_"
        self.accept_run(digits)
        if self.accept("."):
            self.accept_run(digits)
        if len(digits) == 11 and self.accept("eE"):
            self.accept("+-")
            self.accept_run("0123456789_")
        if len(digits) == 23 and self.accept("pP"):
            self.accept("+-")
            self.accept_run("0123456789_")
        self.accept("i")
        if self.pos < len(self.text) and _is_alnum(self.text[self.pos]):
            self.pos += 1
            return False
        return True

    def lex_number(self) -> Callable[[], Any] | None:
        if not self.scan_number():
            return self.error(f"bad number syntax: {go_quote(self.text[self.start : self.pos])}")
        if self.text[self.pos : self.pos + 1] in ("+", "-"):
            # Complex: 1+2i. No spaces, must end in 'i'.
            if not self.scan_number() or self.text[self.pos - 1] != "i":
                bad = go_quote(self.text[self.start : self.pos])
                return self.error(f"bad number syntax: {bad}")
            self.emit(_COMPLEX)
        else:
            self.emit(_NUMBER)
        return self.lex_inside_action


# ---------------------------------------------------------------------------
# Syntax tree (Go's parse nodes; str() is Go's String(), shown in error messages)
# ---------------------------------------------------------------------------


class _Node:
    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos


class _List(_Node):
    __slots__ = ("nodes",)

    def __init__(self, pos: int, nodes: list[_Node]) -> None:
        super().__init__(pos)
        self.nodes = nodes

    def __str__(self) -> str:
        return "".join(str(n) for n in self.nodes)


class _Text(_Node):
    __slots__ = ("text",)

    def __init__(self, pos: int, text: str) -> None:
        super().__init__(pos)
        self.text = text

    def __str__(self) -> str:
        return self.text


class _Variable(_Node):
    __slots__ = ("ident",)

    def __init__(self, pos: int, ident: list[str]) -> None:
        super().__init__(pos)
        self.ident = ident

    def __str__(self) -> str:
        return ".".join(self.ident)


class _Command(_Node):
    __slots__ = ("args",)

    def __init__(self, pos: int, args: list[_Node]) -> None:
        super().__init__(pos)
        self.args = args

    def __str__(self) -> str:
        return " ".join(f"({a})" if isinstance(a, _Pipe) else str(a) for a in self.args)


class _Pipe(_Node):
    __slots__ = ("cmds", "decl", "is_assign", "line")

    def __init__(self, pos: int, line: int) -> None:
        super().__init__(pos)
        self.line = line
        self.is_assign = False
        self.decl: list[_Variable] = []
        self.cmds: list[_Command] = []

    def __str__(self) -> str:
        decl = ""
        if self.decl:
            decl = ", ".join(map(str, self.decl)) + (" = " if self.is_assign else " := ")
        return decl + " | ".join(map(str, self.cmds))


class _Action(_Node):
    __slots__ = ("pipe",)

    def __init__(self, pos: int, pipe: _Pipe) -> None:
        super().__init__(pos)
        self.pipe = pipe

    def __str__(self) -> str:
        return f"{{{{{self.pipe}}}}}"


class _Identifier(_Node):
    __slots__ = ("ident",)

    def __init__(self, pos: int, ident: str) -> None:
        super().__init__(pos)
        self.ident = ident

    def __str__(self) -> str:
        return self.ident


class _Field(_Node):
    __slots__ = ("ident",)

    def __init__(self, pos: int, ident: list[str]) -> None:
        super().__init__(pos)
        self.ident = ident

    def __str__(self) -> str:
        return "".join("." + i for i in self.ident)


class _Chain(_Node):
    __slots__ = ("field", "node")

    def __init__(self, pos: int, node: _Node) -> None:
        super().__init__(pos)
        self.node = node
        self.field: list[str] = []

    def __str__(self) -> str:
        head = f"({self.node})" if isinstance(self.node, _Pipe) else str(self.node)
        return head + "".join("." + f for f in self.field)


class _Dot(_Node):
    __slots__ = ()

    def __str__(self) -> str:
        return "."


class _Nil(_Node):
    __slots__ = ()

    def __str__(self) -> str:
        return "nil"


class _Bool(_Node):
    __slots__ = ("value",)

    def __init__(self, pos: int, value: bool) -> None:
        super().__init__(pos)
        self.value = value

    def __str__(self) -> str:
        return "true" if self.value else "false"


class _Number(_Node):
    """A number literal and the Go types it can stand for."""

    __slots__ = ("complex", "float", "int", "is_complex", "is_float", "is_int", "is_uint", "text")

    def __init__(self, pos: int, text: str) -> None:
        super().__init__(pos)
        self.text = text
        self.is_int = self.is_uint = self.is_float = self.is_complex = False
        self.int = 0
        self.float = 0.0
        self.complex = 0j

    def __str__(self) -> str:
        return self.text


class _String(_Node):
    __slots__ = ("quoted", "text")

    def __init__(self, pos: int, quoted: str, text: str) -> None:
        super().__init__(pos)
        self.quoted = quoted
        self.text = text

    def __str__(self) -> str:
        return self.quoted


class _Branch(_Node):
    """``if``, ``range`` or ``with``."""

    __slots__ = ("else_list", "kind", "list", "pipe")

    def __init__(self, kind: str, pipe: _Pipe, lst: _List, else_list: _List | None) -> None:
        super().__init__(pipe.pos)
        self.kind = kind
        self.pipe = pipe
        self.list = lst
        self.else_list = else_list

    def __str__(self) -> str:
        tail = f"{{{{else}}}}{self.else_list}" if self.else_list is not None else ""
        return f"{{{{{self.kind} {self.pipe}}}}}{self.list}{tail}{{{{end}}}}"


class _TemplateCall(_Node):
    __slots__ = ("name", "pipe")

    def __init__(self, pos: int, name: str, pipe: _Pipe | None) -> None:
        super().__init__(pos)
        self.name = name
        self.pipe = pipe

    def __str__(self) -> str:
        if self.pipe is None:
            return f"{{{{template {go_quote(self.name)}}}}}"
        return f"{{{{template {go_quote(self.name)} {self.pipe}}}}}"


class _Break(_Node):
    __slots__ = ()

    def __str__(self) -> str:
        return "{{break}}"


class _Continue(_Node):
    __slots__ = ()

    def __str__(self) -> str:
        return "{{continue}}"


class _End(_Node):
    __slots__ = ()

    def __str__(self) -> str:
        return "{{end}}"


class _Else(_Node):
    __slots__ = ()

    def __str__(self) -> str:
        return "{{else}}"


def _is_empty_tree(n: _Node) -> bool:
    if isinstance(n, _List):
        return all(_is_empty_tree(c) for c in n.nodes)
    if isinstance(n, _Text):
        return not n.text.strip(_SPACES + "\v\f\x85\xa0")
    return False


def _last_at(n: _Node) -> _Node:
    """The node Go's execution last visited when it has evaluated `n` (where Go
    reports an error found afterwards): the last argument, innermost."""
    if isinstance(n, _Pipe):
        return _last_at(n.cmds[-1])
    if isinstance(n, _Command):
        return _last_at(n.args[-1])
    if isinstance(n, _Chain):
        return _last_at(n.node)
    return n


def _children(n: _Node) -> Iterable[_Node]:
    if isinstance(n, _List):
        return n.nodes
    if isinstance(n, _Action):
        return (n.pipe,)
    if isinstance(n, _Pipe):
        return n.cmds
    if isinstance(n, _Command):
        return n.args
    if isinstance(n, _Chain):
        return (n.node,)
    if isinstance(n, _Branch):
        return (n.pipe, n.list) + ((n.else_list,) if n.else_list is not None else ())
    if isinstance(n, _TemplateCall):
        return (n.pipe,) if n.pipe is not None else ()
    return ()


def _calls(n: _Node, name: str) -> bool:
    if isinstance(n, _Identifier):
        return n.ident == name
    return any(_calls(c, name) for c in _children(n))


def _field_names(n: _Node) -> list[str]:
    """Loki's ``listNodeFields``: fields under actions, commands, parenthesized
    pipelines and branches (not under chains, variables or template calls)."""
    if isinstance(n, _Field):
        return list(n.ident)
    if isinstance(n, (_Chain, _TemplateCall, _Variable)):
        return []
    return [f for c in _children(n) for f in _field_names(c)]


# ---------------------------------------------------------------------------
# Parser (Go's text/template/parse)
# ---------------------------------------------------------------------------

_OPERAND_START = frozenset(
    (_BOOL, _CHARCONST, _COMPLEX, _DOT, _FIELD, _IDENT, _NUMBER, _NIL, _RAWSTRING, _STRING)
) | {_VARIABLE, _LPAREN}


class _Parser:
    """Parses a template and its ``define``/``block`` templates into syntax trees."""

    def __init__(self, text: str, name: str) -> None:
        self.name = name
        self.items = _Lexer(text).run()
        self.i = 0
        self.vars = ["$"]
        self.range_depth = 0
        self.action_line = 0
        self.trees: dict[str, _List] = {}

    def parse(self) -> dict[str, _List]:
        """All templates by name; the main one is under the parser's name."""
        try:
            root = _List(self.peek().pos, [])
            while self.peek().typ != _EOF:
                if self.peek().typ == _LDELIM:
                    delim = self.i
                    self.next()
                    if self.next_non_space().typ == _DEFINE:
                        self.parse_definition()
                        continue
                    self.i = delim
                n = self.text_or_action()
                if isinstance(n, (_End, _Else)):
                    self.errorf(f"unexpected {n}")
                root.nodes.append(n)
            self.add(self.name, root)
        except RecursionError:
            self.errorf("max expression depth exceeded")
        return self.trees

    # Tokens -----------------------------------------------------------------

    def next(self) -> _Item:
        item = self.items[min(self.i, len(self.items) - 1)]  # EOF repeats
        self.i += 1
        return item

    def peek(self) -> _Item:
        return self.items[min(self.i, len(self.items) - 1)]

    def backup(self) -> None:
        self.i -= 1

    def next_non_space(self) -> _Item:
        item = self.next()
        while item.typ == _SPACE:
            item = self.next()
        return item

    def peek_non_space(self) -> _Item:
        item = self.next_non_space()
        self.backup()
        return item

    def errorf(self, msg: str) -> NoReturn:
        line = self.items[max(0, min(self.i, len(self.items)) - 1)].line
        raise TemplateError(f"template: {self.name}:{line}: {msg}")

    def expect(self, typ: str, context: str) -> _Item:
        item = self.next_non_space()
        if item.typ != typ:
            self.unexpected(item, context)
        return item

    def unexpected(self, item: _Item, context: str) -> NoReturn:
        if item.typ == _ERROR:
            extra = ""
            if self.action_line and self.action_line != item.line:
                extra = f" in action started at {self.name}:{self.action_line}"
                if item.val.endswith(" action"):
                    extra = extra[len(" in action") :]
            self.errorf(f"{item}{extra}")
        self.errorf(f"unexpected {item} in {context}")

    def unquote(self, item: _Item) -> str:
        if item.typ == _RAWSTRING:
            return item.val[1:-1].replace("\r", "")
        try:
            return unquote(item.val)
        except ValueError:
            self.errorf("invalid syntax")

    # Templates ----------------------------------------------------------------

    def add(self, name: str, root: _List) -> None:
        tree = self.trees.get(name)
        if tree is None or _is_empty_tree(tree):
            self.trees[name] = root
        elif not _is_empty_tree(root):
            self.errorf(f"template: multiple definition of template {go_quote(name)}")

    def parse_definition(self) -> None:
        context = "define clause"
        item = self.next_non_space()
        if item.typ not in (_STRING, _RAWSTRING):
            self.unexpected(item, context)
        name = self.unquote(item)
        self.expect(_RDELIM, context)
        root, end = self.sub_tree()
        if not isinstance(end, _End):
            self.errorf(f"unexpected {end} in {context}")
        self.add(name, root)

    def sub_tree(self) -> tuple[_List, _Node]:
        """The body of a ``define`` or ``block``: a tree with variables of its own."""
        saved = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        try:
            return self.item_list()
        finally:
            self.vars, self.range_depth = saved

    def item_list(self) -> tuple[_List, _Node]:
        lst = _List(self.peek_non_space().pos, [])
        while self.peek_non_space().typ != _EOF:
            n = self.text_or_action()
            if isinstance(n, (_End, _Else)):
                return lst, n
            lst.nodes.append(n)
        self.errorf("unexpected EOF")

    def text_or_action(self) -> _Node:
        item = self.next_non_space()
        if item.typ == _TEXT:
            return _Text(item.pos, item.val)
        if item.typ == _LDELIM:
            self.action_line = item.line
            try:
                return self.action()
            finally:
                self.action_line = 0
        self.unexpected(item, "input")

    def action(self) -> _Node:
        item = self.next_non_space()
        typ = item.typ
        if typ == _BLOCK:
            return self.block_control()
        if typ in (_BREAK, _CONTINUE):
            word = "break" if typ == _BREAK else "continue"
            nxt = self.next_non_space()
            if nxt.typ != _RDELIM:
                self.unexpected(nxt, f"{{{{{word}}}}}")
            if self.range_depth == 0:
                self.errorf(f"{{{{{word}}}}} outside {{{{range}}}}")
            return _Break(item.pos) if typ == _BREAK else _Continue(item.pos)
        if typ == _ELSE:
            peek = self.peek_non_space()
            if peek.typ in (_IF, _WITH):  # "else if" / "else with": the if is parsed next
                return _Else(peek.pos)
            return _Else(self.expect(_RDELIM, "else").pos)
        if typ == _END:
            return _End(self.expect(_RDELIM, "end").pos)
        if typ == _IF:
            return self.branch_control("if")
        if typ == _RANGE:
            return self.branch_control("range")
        if typ == _WITH:
            return self.branch_control("with")
        if typ == _TEMPLATE:
            return self.template_control()
        self.backup()
        return _Action(self.peek().pos, self.pipeline("command", _RDELIM))

    def branch_control(self, context: str) -> _Branch:
        mark = len(self.vars)
        pipe = self.pipeline(context, _RDELIM)
        if context == "range":
            self.range_depth += 1
        lst, nxt = self.item_list()
        if context == "range":
            self.range_depth -= 1
        else_list = None
        if isinstance(nxt, _Else):
            chained = {"if": _IF, "with": _WITH}.get(context)
            if chained is not None and self.peek().typ == chained:
                # {{if a}}x{{else if b}}y{{end}} is {{if a}}x{{else}}{{if b}}y{{end}}{{end}}.
                self.next()
                else_list = _List(nxt.pos, [self.branch_control(context)])
            else:
                else_list, nxt = self.item_list()
                if not isinstance(nxt, _End):
                    self.errorf(f"expected end; found {nxt}")
        del self.vars[mark:]
        return _Branch(context, pipe, lst, else_list)

    def template_name(self, item: _Item, context: str) -> str:
        if item.typ not in (_STRING, _RAWSTRING):
            self.unexpected(item, context)
        return self.unquote(item)

    def template_control(self) -> _TemplateCall:
        context = "template clause"
        item = self.next_non_space()
        name = self.template_name(item, context)
        pipe = None
        if self.next_non_space().typ != _RDELIM:
            self.backup()
            pipe = self.pipeline(context, _RDELIM)
        return _TemplateCall(item.pos, name, pipe)

    def block_control(self) -> _TemplateCall:
        context = "block clause"
        item = self.next_non_space()
        name = self.template_name(item, context)
        pipe = self.pipeline(context, _RDELIM)
        root, end = self.sub_tree()
        if not isinstance(end, _End):
            self.errorf(f"unexpected {end} in {context}")
        self.add(name, root)
        return _TemplateCall(item.pos, name, pipe)

    # Pipelines ----------------------------------------------------------------

    def pipeline(self, context: str, end: str) -> _Pipe:
        first = self.peek_non_space()
        pipe = _Pipe(first.pos, first.line)
        while self.peek_non_space().typ == _VARIABLE:
            start = self.i
            var = self.next()
            nxt = self.peek_non_space()
            if nxt.typ in (_ASSIGN, _DECLARE):
                pipe.is_assign = nxt.typ == _ASSIGN
                self.next_non_space()
                pipe.decl.append(_Variable(var.pos, var.val.split(".")))
                self.vars.append(var.val)
            elif nxt.typ == _CHAR and nxt.val == ",":
                self.next_non_space()
                pipe.decl.append(_Variable(var.pos, var.val.split(".")))
                self.vars.append(var.val)
                if context == "range" and len(pipe.decl) < 2:
                    if self.peek_non_space().typ in (_VARIABLE, _RDELIM, _RPAREN):
                        continue  # the second variable of "range $i, $e :="
                    self.errorf("range can only initialize variables")
                self.errorf(f"too many declarations in {context}")
            else:
                self.i = start  # "$x" is an operand, not a declaration
            break
        while True:
            item = self.next_non_space()
            if item.typ == end:
                self.check_pipeline(pipe, context)
                return pipe
            if item.typ not in _OPERAND_START:
                self.unexpected(item, context)
            self.backup()
            pipe.cmds.append(self.command())

    def check_pipeline(self, pipe: _Pipe, context: str) -> None:
        if not pipe.cmds:
            self.errorf(f"missing value for {context}")
        for i, cmd in enumerate(pipe.cmds[1:]):
            if isinstance(cmd.args[0], (_Bool, _Dot, _Nil, _Number, _String)):
                self.errorf(f"non executable command in pipeline stage {i + 2}")

    def command(self) -> _Command:
        cmd = _Command(self.peek_non_space().pos, [])
        while True:
            self.peek_non_space()
            operand = self.operand()
            if operand is not None:
                cmd.args.append(operand)
            item = self.next()
            if item.typ == _SPACE:
                continue
            if item.typ in (_RDELIM, _RPAREN):
                self.backup()
            elif item.typ != _PIPE:
                self.unexpected(item, "operand")
            break
        if not cmd.args:
            self.errorf("empty command")
        return cmd

    def operand(self) -> _Node | None:
        node = self.term()
        if node is None or self.peek().typ != _FIELD:
            return node
        chain = _Chain(self.peek().pos, node)
        while self.peek().typ == _FIELD:
            chain.field.append(self.next().val[1:])
        if isinstance(node, _Field):
            return _Field(chain.pos, str(chain)[1:].split("."))
        if isinstance(node, _Variable):
            return _Variable(chain.pos, str(chain).split("."))
        if isinstance(node, (_Bool, _String, _Number, _Nil, _Dot)):
            self.errorf(f"unexpected . after term {go_quote(str(node))}")
        return chain

    def term(self) -> _Node | None:
        item = self.next_non_space()
        typ = item.typ
        if typ == _IDENT:
            if item.val not in _FUNCS:
                self.errorf(f"function {go_quote(item.val)} not defined")
            return _Identifier(item.pos, item.val)
        if typ == _DOT:
            return _Dot(item.pos)
        if typ == _NIL:
            return _Nil(item.pos)
        if typ == _VARIABLE:
            ident = item.val.split(".")
            if ident[0] not in self.vars:
                self.errorf(f"undefined variable {go_quote(ident[0])}")
            return _Variable(item.pos, ident)
        if typ == _FIELD:
            return _Field(item.pos, item.val[1:].split("."))
        if typ == _BOOL:
            return _Bool(item.pos, item.val == "true")
        if typ in (_CHARCONST, _COMPLEX, _NUMBER):
            try:
                return _number(item)
            except ValueError as exc:
                self.errorf(str(exc))
        if typ == _LPAREN:
            return self.pipeline("parenthesized pipeline", _RPAREN)
        if typ in (_STRING, _RAWSTRING):
            return _String(item.pos, item.val, self.unquote(item))
        self.backup()
        return None


# Number literals ------------------------------------------------------------


def _parse_uint(s: str) -> int | None:
    """``strconv.ParseUint(s, 0, 64)``: 0x/0o/0b prefixes, leading-0 octal, ``_``."""
    if not s:
        return None
    body, base = s, 10
    if s[0] == "0":
        prefix = s[1:2].lower()
        if len(s) >= 3 and prefix in ("b", "o", "x"):
            body, base = s[2:], {"b": 2, "o": 8, "x": 16}[prefix]
        else:
            body, base = s[1:], 8
    n = 0
    for c in body:
        if c == "_":
            continue
        d = digit_value(c)
        if d >= base:
            return None
        n = n * base + d
    if "_" in s and not underscore_ok(s):
        return None
    return n if n < 1 << 64 else None


def _parse_int(s: str) -> int | None:
    """``strconv.ParseInt(s, 0, 64)``."""
    neg = s[:1] == "-"
    u = _parse_uint(s[1:] if s[:1] in ("+", "-") else s)
    if u is None or u > (1 << 63) - (0 if neg else 1):
        return None
    return -u if neg else u


def _is_integral(f: float, lo: int, hi: int) -> bool:
    return math.isfinite(f) and lo <= f < hi and f == int(f)


def _number(item: _Item) -> _Number:
    """Go's ``newNumber``: which of int, uint, float and complex a literal can be."""
    text = item.val
    n = _Number(item.pos, text)
    if item.typ == _CHARCONST:
        r = _unquote_char(text)
        n.is_int = n.is_uint = n.is_float = True
        n.int, n.float = r, float(r)
        return n
    if item.typ == _COMPLEX or text.endswith("i"):
        try:
            if item.typ == _COMPLEX:
                c = complex(text[:-1] + "j")
            else:
                c = complex(0, parse_go_float(text[:-1]))
        except ValueError:
            if item.typ == _COMPLEX:
                raise ValueError(f"illegal number syntax: {go_quote(text)}") from None
        else:
            n.is_complex = True
            n.complex = c
            if c.imag == 0:
                n.is_float, n.float = True, c.real
                n.is_int = _is_integral(c.real, -(1 << 63), 1 << 63)
                n.is_uint = _is_integral(c.real, 0, 1 << 64)
                n.int = int(c.real) if n.is_int or n.is_uint else 0
            return n
    u = _parse_uint(text)
    i = _parse_int(text)
    n.is_uint = u is not None
    n.is_int = i is not None
    if i is not None:
        n.int, n.is_uint = i, n.is_uint or i == 0
    elif u is not None:
        n.int = u
    if n.is_int or n.is_uint:
        n.is_float, n.float = True, float(n.int)
    else:
        try:
            f = parse_go_float(text)
        except ValueError:
            f = None
        if f is not None:
            if not any(c in text for c in ".eEpP"):
                raise ValueError(f"integer overflow: {go_quote(text)}")
            n.is_float, n.float = True, f
            n.is_int = _is_integral(f, -(1 << 63), 1 << 63)
            n.is_uint = _is_integral(f, 0, 1 << 64)
            if n.is_int or n.is_uint:
                n.int = int(f)
    if not (n.is_int or n.is_uint or n.is_float):
        raise ValueError(f"illegal number syntax: {go_quote(text)}")
    return n


_CHAR_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39}


def _unquote_char(text: str) -> int:
    """``strconv.UnquoteChar`` of a ``'x'`` literal."""
    s = text[1:]
    if not s or s[0] == "'":
        raise ValueError("invalid syntax")
    if s[0] != "\\":
        r, tail = ord(s[0]), s[1:]
    else:
        e = s[1:2]
        if e in _CHAR_ESCAPES:
            r, tail = _CHAR_ESCAPES[e], s[2:]
        elif e in ("x", "u", "U"):
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = s[2 : 2 + width]
            if len(digits) < width or any(digit_value(d) >= 16 for d in digits):
                raise ValueError("invalid syntax")
            r, tail = int(digits, 16), s[2 + width :]
            if e != "x" and (r > 0x10FFFF or 0xD800 <= r <= 0xDFFF):
                raise ValueError("invalid syntax")
        elif e and "0" <= e <= "7":
            digits = s[1:4]
            if len(digits) < 3 or any(not "0" <= d <= "7" for d in digits):
                raise ValueError("invalid syntax")
            r, tail = int(digits, 8), s[4:]
            if r > 255:
                raise ValueError("invalid syntax")
        else:
            raise ValueError("invalid syntax")
    if tail != "'":
        raise ValueError(f"malformed character constant: {text}")
    return r


def _ideal_constant(n: _Number) -> Any:
    """A number literal where no type is asked for (Go's ``idealConstant``)."""
    text = n.text
    if n.is_complex:
        return n.complex
    hex_int = text[:2] in ("0x", "0X") and len(text) > 2 and not any(c in text for c in "pP")
    if n.is_float and not hex_int and text[0] != "'" and any(c in text for c in ".eEpP"):
        return n.float
    if n.is_int:
        return n.int
    raise ValueError(f"{text} overflows int")


# ---------------------------------------------------------------------------
# Compiler: syntax trees to closures (Go's text/template exec)
# ---------------------------------------------------------------------------

Run = Callable[[_Ctx, Any], Any]  # statement: (ctx, dot), writes to ctx.out
Expr = Callable[[_Ctx, Any], Any]  # expression: (ctx, dot) -> value
Cmd = Callable[..., Any]  # command: (ctx, dot, final) -> value; final is _NOFINAL or piped in


@dataclass(slots=True, frozen=True)
class _Tree:
    """A compiled template: its body and the size of its variable frame (slot 0 is $)."""

    run: Run
    nslots: int


@dataclass(slots=True, frozen=True)
class _Func:
    """A function (or method) with Go parameter types: ``string int int64 float64 bool
    time duration`` are checked, ``any`` accepts everything, ``value`` is a builtin's
    ``reflect.Value`` (anything but an invalid value). Methods take the receiver
    first."""

    name: str
    impl: Callable[..., Any]
    params: tuple[str, ...] = ()
    variadic: str | None = None


_ArgSpec = tuple[_Node, Expr | None, bool]  # node, evaluator (None: a literal), nil-able

_GO_TYPES = {
    "string": "string",
    "int": "int",
    "int64": "int64",
    "float64": "float64",
    "bool": "bool",
    "time": "time.Time",
    "duration": "time.Duration",
    "any": "interface {}",
    "value": "reflect.Value",
}


def _dot(ctx: _Ctx, dot: Any) -> Any:
    return dot


class _Compiler:
    """Compiles one template; variables are resolved to slots of its frame."""

    def __init__(self) -> None:
        self.scope: list[tuple[str, int]] = [("$", 0)]
        self.nslots = 1

    def compile(self, root: _List) -> _Tree:
        return _Tree(self.block(root), self.nslots)

    # Variables ----------------------------------------------------------------

    def lookup(self, name: str) -> int | None:
        for var, slot in reversed(self.scope):
            if var == name:
                return slot
        return None

    def declare(self, pipe: _Pipe) -> list[tuple[int | None, _Variable]]:
        """Slots of a pipeline's ``$x :=`` (new) or ``$x =`` (existing) variables."""
        out = []
        for var in pipe.decl:
            name = var.ident[0]
            if pipe.is_assign:
                out.append((self.lookup(name), var))
            else:
                out.append((self.nslots, var))
                self.scope.append((name, self.nslots))
                self.nslots += 1
        return out

    def variable(self, var: _Variable) -> Expr:
        name = var.ident[0]
        slot = self.lookup(name)

        def read(ctx: _Ctx, dot: Any) -> Any:
            v = ctx.vars[slot] if slot is not None else _UNSET
            if v is _UNSET:
                _fail(ctx, var, f"undefined variable: {name}")
            return v

        return read

    # Statements ---------------------------------------------------------------

    def block(self, lst: _List) -> Run:
        runs = [self.node(n) for n in lst.nodes]
        if len(runs) == 1:
            return runs[0]

        def run(ctx: _Ctx, dot: Any) -> None:
            for r in runs:
                r(ctx, dot)

        return run

    def node(self, n: _Node) -> Run:
        if isinstance(n, _Text):
            text = n.text
            return lambda ctx, dot: ctx.out.append(text)
        if isinstance(n, _Action):
            return self.action(n)
        if isinstance(n, _Branch):
            return self.range(n) if n.kind == "range" else self.if_with(n)
        if isinstance(n, _TemplateCall):
            return self.template_call(n)
        if isinstance(n, (_Break, _Continue)):
            signal = _BreakSignal if isinstance(n, _Break) else _ContinueSignal

            def jump(ctx: _Ctx, dot: Any) -> None:
                raise signal

            return jump
        raise AssertionError(f"BUG: unexpected node {n!r}")

    def action(self, n: _Action) -> Run:
        ev = self.pipeline(n.pipe)
        if n.pipe.decl:
            return ev  # a declaration prints nothing

        def run(ctx: _Ctx, dot: Any) -> None:
            v = ev(ctx, dot)
            ctx.out.append(v if type(v) is str else _print_value(v))

        return run

    def if_with(self, n: _Branch) -> Run:
        mark = len(self.scope)
        ev = self.pipeline(n.pipe)
        body = self.block(n.list)
        other = self.block(n.else_list) if n.else_list is not None else None
        del self.scope[mark:]
        if n.kind == "if":

            def run_if(ctx: _Ctx, dot: Any) -> None:
                if _truth(ev(ctx, dot)):
                    body(ctx, dot)
                elif other is not None:
                    other(ctx, dot)

            return run_if

        def run_with(ctx: _Ctx, dot: Any) -> None:
            v = ev(ctx, dot)
            if _truth(v):
                body(ctx, v)
            elif other is not None:
                other(ctx, dot)

        return run_with

    def range(self, n: _Branch) -> Run:
        mark = len(self.scope)
        ev = _chain([self.command(c) for c in n.pipe.cmds])
        decl = self.declare(n.pipe)
        body = self.block(n.list)
        other = self.block(n.else_list) if n.else_list is not None else None
        del self.scope[mark:]
        # Each iteration sets the element into the last variable, the index into the
        # first of two (for "=" as for ":=").
        eslot = decl[-1][0] if decl else None
        islot = decl[0][0] if len(decl) == 2 else None
        ndecl = len(decl)

        def run(ctx: _Ctx, dot: Any) -> None:
            val = ev(ctx, dot)
            frame = ctx.vars
            for slot, var in decl:
                if slot is None:
                    _fail(ctx, var, f"undefined variable: {var.ident[0]}")
                frame[slot] = val
            ran = False
            try:
                for index, elem in _range_items(ctx, n, val, ndecl):
                    ran = True
                    if eslot is not None:
                        frame[eslot] = elem
                    if islot is not None:
                        frame[islot] = index
                    try:
                        body(ctx, elem)
                    except _ContinueSignal:
                        pass
            except _BreakSignal:
                pass
            if not ran and other is not None:
                other(ctx, dot)

        return run

    def template_call(self, n: _TemplateCall) -> Run:
        ev = self.pipeline(n.pipe) if n.pipe is not None else None
        name = n.name

        def run(ctx: _Ctx, dot: Any) -> None:
            tree = ctx.template._trees.get(name)
            if tree is None:
                _fail(ctx, n, f"template {go_quote(name)} not defined")
            if ctx.depth >= _MAX_DEPTH:
                _fail(ctx, n, f"exceeded maximum template depth ({_MAX_DEPTH})")
            new_dot = ev(ctx, dot) if ev is not None else None
            saved = ctx.vars, ctx.name
            ctx.vars = [new_dot] + [_UNSET] * (tree.nslots - 1)
            ctx.name = name
            ctx.depth += 1
            try:
                tree.run(ctx, new_dot)
            finally:
                ctx.vars, ctx.name = saved
                ctx.depth -= 1

        return run

    # Expressions --------------------------------------------------------------

    def pipeline(self, pipe: _Pipe) -> Expr:
        ev = _chain([self.command(c) for c in pipe.cmds])
        if not pipe.decl:
            return ev
        ((slot, var),) = self.declare(pipe)  # only range declares two
        last = pipe.cmds[-1].args[0]  # where Go's execution was when it looked $x up

        def run(ctx: _Ctx, dot: Any) -> Any:
            v = ev(ctx, dot)
            if slot is None:
                _fail(ctx, last, f"undefined variable: {var.ident[0]}")
            ctx.vars[slot] = v
            return v

        return run

    def command(self, cmd: _Command) -> Cmd:
        first = cmd.args[0]
        if isinstance(first, _Field):
            return self.fields(first, first.ident, None, cmd.args[1:])
        if isinstance(first, _Chain):
            at = _last_at(first.node)
            return self.fields(at, first.field, self.expr(first.node), cmd.args[1:])
        if isinstance(first, _Variable):
            read = self.variable(first)
            if len(first.ident) > 1:
                return self.fields(first, first.ident[1:], read, cmd.args[1:])
            return _not_a_function(first, first, len(cmd.args) > 1, read)
        if isinstance(first, _Identifier):
            return self.call(first, cmd, cmd.args[1:])
        if isinstance(first, _Pipe):
            return _not_a_function(first, cmd, len(cmd.args) > 1, self.pipeline(first))
        if isinstance(first, _Dot):
            return _not_a_function(first, first, len(cmd.args) > 1, _dot)
        if isinstance(first, _Nil):

            def nil(ctx: _Ctx, dot: Any, final: Any) -> Any:
                _fail(ctx, first, "nil is not a command")

            return nil
        ev = _typed_arg(first, None, False, "any")
        return _not_a_function(first, first, len(cmd.args) > 1, ev)

    def fields(self, node: _Node, idents: list[str], head: Expr | None, args: list[_Node]) -> Cmd:
        """``.a.b`` on dot (or on `head`'s value): map keys, or a method called with
        `args` and the piped-in value. Errors are reported at `node`."""
        specs = [self.arg_spec(a) for a in args]
        names = tuple(idents)
        cache: dict[tuple[str, bool], Cmd] = {}
        if head is None and len(names) == 1 and not specs:
            name = names[0]

            def field(ctx: _Ctx, dot: Any, final: Any) -> Any:
                if final is _NOFINAL and type(dot) is dict:  # fast path: a label
                    return dot.get(name, "")
                return _eval_fields(ctx, dot, dot, node, names, specs, final, cache)

            return field
        if head is None:
            return lambda ctx, dot, final: _eval_fields(
                ctx, dot, dot, node, names, specs, final, cache
            )
        return lambda ctx, dot, final: _eval_fields(
            ctx, dot, head(ctx, dot), node, names, specs, final, cache
        )

    def call(self, ident: _Identifier, cmd_node: _Node, args: list[_Node]) -> Cmd:
        specs = [self.arg_spec(a) for a in args]
        return _make_call(_FUNCS[ident.ident], ident, cmd_node, specs)

    def expr(self, n: _Node) -> Expr:
        """A chain's head: a parenthesized pipeline or a function called bare."""
        spec = self.arg_spec(n)
        if spec[1] is None:
            return _typed_arg(n, None, False, "any")
        return spec[1]

    def arg_spec(self, n: _Node) -> _ArgSpec:
        """An argument: its evaluator, and whether it can be a nil interface (a value
        read from a ``fromJson`` map) rather than an invalid value."""
        if isinstance(n, (_Bool, _Number, _String, _Nil)):
            return n, None, False
        if isinstance(n, _Dot):
            return n, _dot, False
        if isinstance(n, _Pipe):
            return n, self.pipeline(n), False
        if isinstance(n, _Identifier):
            call = self.call(n, n, [])
            return n, lambda ctx, dot: call(ctx, dot, _NOFINAL), False
        if isinstance(n, _Variable) and len(n.ident) == 1:
            return n, self.variable(n), False
        cmd = self.command(_Command(n.pos, [n]))
        return n, lambda ctx, dot: cmd(ctx, dot, _NOFINAL), True


def _chain(cmds: list[Cmd]) -> Expr:
    """A pipeline's commands: each result is the last argument of the next."""
    if len(cmds) == 1:
        only = cmds[0]
        return lambda ctx, dot: only(ctx, dot, _NOFINAL)

    def run(ctx: _Ctx, dot: Any) -> Any:
        v = _NOFINAL
        for cmd in cmds:
            v = cmd(ctx, dot, v)
        return v

    return run


def _not_a_function(first: _Node, at: _Node, has_args: bool, ev: Expr) -> Cmd:
    def run(ctx: _Ctx, dot: Any, final: Any) -> Any:
        if has_args or final is not _NOFINAL:
            _fail(ctx, at, f"can't give argument to non-function {first}")
        return ev(ctx, dot)

    return run


def _range_items(ctx: _Ctx, node: _Branch, val: Any, ndecl: int) -> Iterable[tuple[Any, Any]]:
    t = type(val)
    if t is list:
        return enumerate(val)
    if val is None:
        return ()
    if t in _INT_KINDS or t is _Uint8:
        if ndecl > 1:
            what = _print_value(val)
            _fail(ctx, node, f"can't use {what} to iterate over more than one variable")
        return ((None, t(i)) for i in range(val))
    if t is not str and isinstance(val, Mapping):
        return ((k, val[k]) for k in sorted(val))
    _fail(ctx, node, f"range can't iterate over {_print_value(val)}")


_PY_TYPES: dict[str, type] = {
    "string": str,
    "int": int,
    "int64": _Int64,
    "float64": float,
    "bool": bool,
    "duration": _Duration,
}


def _validate(ctx: _Ctx, node: _Node, v: Any, typ: str, nil_iface: bool) -> Any:
    """Go's ``validateType``: can `v` be passed as a parameter of type `typ`?"""
    if v is None:
        if typ in ("any", "value"):
            return None
        if nil_iface:
            _fail(ctx, node, f"wrong type for value; expected {_GO_TYPES[typ]}; got interface {{}}")
        _fail(ctx, node, f"invalid value; expected {_GO_TYPES[typ]}")
    if typ in ("any", "value"):
        return v
    want = _PY_TYPES.get(typ, _Time)
    if type(v) is want:
        return v
    _fail(ctx, node, f"wrong type for value; expected {_GO_TYPES[typ]}; got {_type_name(v)}")


def _literal(node: _Node, typ: str) -> Any:
    """A literal argument converted to parameter type `typ` (Go's ``evalArg``);
    ValueError carries Go's message, raised when the call runs."""
    if isinstance(node, _Nil):
        if typ in ("any", "value"):
            return None
        raise ValueError(f"cannot assign nil to {_GO_TYPES[typ]}")
    if typ in ("any", "value"):
        if isinstance(node, _Bool):
            return node.value
        if isinstance(node, _Number):
            return _ideal_constant(node)
        if isinstance(node, _String):
            return node.text
    elif typ == "bool":
        if isinstance(node, _Bool):
            return node.value
        raise ValueError(f"expected bool; found {node}")
    elif typ in ("int", "int64", "duration"):
        if isinstance(node, _Number) and node.is_int:
            return _PY_TYPES[typ](node.int)
        raise ValueError(f"expected integer; found {node}")
    elif typ == "float64":
        if isinstance(node, _Number) and node.is_float:
            return node.float
        raise ValueError(f"expected float; found {node}")
    elif typ == "string":
        if isinstance(node, _String):
            return node.text
        raise ValueError(f"expected string; found {node}")
    raise ValueError(f"can't handle {node} for arg of type {_GO_TYPES[typ]}")


def _typed_arg(node: _Node, ev: Expr | None, nil_iface: bool, typ: str) -> Expr:
    """An argument evaluator converting to parameter type `typ`."""
    if ev is None:
        try:
            value = _literal(node, typ)
        except ValueError as exc:
            msg = str(exc)

            def bad(ctx: _Ctx, dot: Any) -> Any:
                _fail(ctx, node, msg)

            return bad
        return lambda ctx, dot: value
    if typ == "any":
        return ev
    want = _PY_TYPES.get(typ)
    at = _last_at(node)

    def conv(ctx: _Ctx, dot: Any) -> Any:
        v = ev(ctx, dot)
        if want is not None and type(v) is want:
            return v
        return _validate(ctx, at, v, typ, nil_iface)

    return conv


def _make_call(fn: _Func, ident: _Node, cmd_node: _Node, specs: list[_ArgSpec]) -> Cmd:
    """A call of `fn` (Go's ``evalCall``): argument count, conversions, errors."""
    name, params, variadic, impl = fn.name, fn.params, fn.variadic, fn.impl
    nfixed, nargs = len(params), len(specs)
    if name in ("and", "or"):
        return _make_and_or(name == "or", ident, specs)
    evals = []
    for i, (node, ev, nil_iface) in enumerate(specs):
        typ = params[i] if i < nfixed else variadic
        if typ is None:
            break  # too many arguments: reported when called
        evals.append(_typed_arg(node, ev, nil_iface, typ))
    last = _last_at(specs[-1][0]) if specs else ident
    callee = str(specs[0][0]) if specs else ""
    with_ctx = name in _CTX_FUNCS

    def call(ctx: _Ctx, dot: Any, final: Any, recv: Any = _NORECV) -> Any:
        has_final = final is not _NOFINAL
        num_in = nargs + has_final
        if variadic is None:
            if num_in != nfixed:
                _fail(ctx, ident, f"wrong number of args for {name}: want {nfixed} got {num_in}")
        elif num_in < nfixed:
            want = f"want at least {nfixed} got {nargs}"
            _fail(ctx, ident, f"wrong number of args for {name}: {want}")
        args = [e(ctx, dot) for e in evals]
        if has_final:
            typ = params[num_in - 1] if variadic is None or num_in - 1 < nfixed else variadic
            args.append(_validate(ctx, last, final, typ, False))
        if recv is not _NORECV:
            args.insert(0, recv)
        elif with_ctx:
            args.insert(0, ctx)
        elif name == "call":
            args.insert(0, callee or _print_value(final))
        try:
            return impl(*args)
        except _CallError as exc:
            _fail(ctx, cmd_node, f"error calling {name}: {exc}")

    return call


def _make_and_or(is_or: bool, ident: _Node, specs: list[_ArgSpec]) -> Cmd:
    """``and``/``or``: evaluate arguments left to right, stop at the deciding one."""
    evals = [_typed_arg(node, ev, nil_iface, "value") for node, ev, nil_iface in specs]
    name = "or" if is_or else "and"

    def call(ctx: _Ctx, dot: Any, final: Any, recv: Any = _NORECV) -> Any:
        if not evals and final is _NOFINAL:
            _fail(ctx, ident, f"wrong number of args for {name}: want at least 1 got 0")
        v = None
        for ev in evals:
            v = ev(ctx, dot)
            if _truth(v) is is_or:
                return v
        return final if final is not _NOFINAL else v

    return call


def _eval_fields(
    ctx: _Ctx,
    dot: Any,
    recv: Any,
    node: _Node,
    names: tuple[str, ...],
    specs: list[_ArgSpec],
    final: Any,
    cache: dict[tuple[str, bool], Cmd],
) -> Any:
    """Go's ``evalFieldChain``: each name is a map key or a method of the value so far;
    the last one gets the arguments."""
    from_map = False  # the value came out of a map[string]interface{}: an interface
    last = len(names) - 1
    for i, name in enumerate(names):
        is_last = i == last
        args = specs if is_last else []
        fin = final if is_last else _NOFINAL
        if recv is None:
            if from_map:
                _fail(ctx, node, f"nil pointer evaluating interface {{}}.{name}")
            return None  # missingkey=zero on nil data
        t = type(recv)
        methods = _METHODS.get(t)
        if methods is not None and name in methods:
            call = cache.get((name, is_last))
            if call is None:
                call = cache[(name, is_last)] = _make_call(methods[name], node, node, args)
            recv, from_map = call(ctx, dot, fin, recv), False
            continue
        if t is not str and isinstance(recv, Mapping):
            if args or fin is not _NOFINAL:
                _fail(ctx, node, f"{name} is not a method but has arguments")
            if t is _JsonMap:
                recv, from_map = recv.get(name), True
            else:
                recv, from_map = recv.get(name, ""), False
            continue
        typ = "interface {}" if from_map else _type_name(recv)
        _fail(ctx, node, f"can't evaluate field {name} in type {typ}")
    return recv


def _print_value(v: Any) -> str:
    """What an action prints: ``fmt.Fprint`` of the value, ``<no value>`` for none."""
    if v is None:
        return "<no value>"
    t = type(v)
    if t is str:
        return v
    if t is int or t is _Int64:
        return str(int(v))
    if t is float:
        return format_float_g(v)
    if t is bool:
        return "true" if v else "false"
    p = _Printer()
    p.print_arg(v, "v")
    return p.text()


# ---------------------------------------------------------------------------
# Go fmt: printing values, print/printf/println
# ---------------------------------------------------------------------------


def _sprint(*args: Any) -> str:
    p = _Printer()
    prev_string = False
    for i, arg in enumerate(args):
        is_string = type(arg) is str
        if i > 0 and not is_string and not prev_string:  # spaces between non-strings
            p.buf.append(" ")
        p.print_arg(arg, "v")
        prev_string = is_string
    return p.text()


def _sprintln(*args: Any) -> str:
    p = _Printer()
    for i, arg in enumerate(args):
        if i > 0:
            p.buf.append(" ")
        p.print_arg(arg, "v")
    p.buf.append("\n")
    return p.text()


def _sprintf(fmt: str, *args: Any) -> str:
    p = _Printer()
    p.do_printf(fmt, list(args))
    return p.text()


def _too_large(n: int) -> bool:
    return n > 1_000_000 or n < -1_000_000


def _parsenum(s: str, start: int, end: int) -> tuple[int, bool, int]:
    if start >= end:
        return 0, False, end
    num, isnum, i = 0, False, start
    while i < end and "0" <= s[i] <= "9":
        if _too_large(num):
            return 0, False, end
        num = num * 10 + ord(s[i]) - 48
        isnum = True
        i += 1
    return num, isnum, i


def _int_from_arg(args: list[Any], arg_num: int) -> tuple[int, bool, int]:
    if arg_num >= len(args):
        return 0, False, arg_num
    a = args[arg_num]
    ok = isinstance(a, int) and type(a) is not bool and not _too_large(a)
    return (int(a), True, arg_num + 1) if ok else (0, False, arg_num + 1)


def _is_print(r: int) -> bool:
    return 0 <= r <= 0x10FFFF and chr(r).isprintable()


def _ascii_escapes(s: str) -> str:
    """The non-ASCII characters of a quoted string as ``\\u``/``\\U`` escapes
    (``strconv.QuoteToASCII``)."""
    out = []
    for c in s:
        o = ord(c)
        if o < 0x80:
            out.append(c)
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    return "".join(out)


def _can_backquote(s: str) -> bool:
    for c in s:
        if c == "\ufeff" or "\udc80" <= c <= "\udcff":
            return False
        if (c < " " and c != "\t") or c == "`" or c == "\x7f":
            return False
    return True


def _shortest(v: float) -> tuple[str, int]:
    """Shortest round-trip digits of abs(v) and the decimal point position."""
    _, digits, exp = Decimal(repr(abs(v))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    return text, (len(digits) + int(exp) if text != "0" else 1)


def _format_float(v: float, fmt: str, prec: int) -> str:
    """``strconv.FormatFloat(v, fmt, prec, 64)``."""
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if fmt in "eE":
        if prec >= 0:
            s = f"{v:.{prec}e}"
        else:
            digits, dp = _shortest(v)
            exp = dp - 1 if digits != "0" else 0
            mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
            sign = "-" if math.copysign(1.0, v) < 0 else ""
            s = f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
        return s.upper() if fmt == "E" else s
    if fmt == "f":
        return f"{v:.{prec}f}" if prec >= 0 else format_float_f(v)
    if fmt in "gG":
        s = f"{v:.{prec}g}" if prec >= 0 else format_float_g(v)
        return s.upper() if fmt == "G" else s
    if fmt in "xX":
        return _hex_float(v, prec, fmt == "X")
    bits = struct.unpack("<Q", struct.pack("<d", v))[0]  # 'b': mantissa p exponent
    exp, mant = (bits >> 52) & 0x7FF, bits & ((1 << 52) - 1)
    if exp == 0:
        exp = 1
    else:
        mant |= 1 << 52
    exp -= 1023 + 52
    return f"{'-' if bits >> 63 else ''}{mant}p{'+' if exp >= 0 else ''}{exp}"


def _hex_float(v: float, prec: int, upper: bool) -> str:
    """``%x`` of a float: ``0x1.8p+01``."""
    sign = "-" if math.copysign(1.0, v) < 0 else ""
    v = abs(v)
    lead, frac, exp = 0, 0, 0
    if v != 0:
        m, e = math.frexp(v)
        mant = int(m * (1 << 53))
        lead, frac, exp = 1, mant & ((1 << 52) - 1), e - 1
    if prec < 0:
        digits = f"{frac:013x}".rstrip("0")
    elif prec >= 13:
        digits = f"{frac:013x}" + "0" * (prec - 13)
    else:
        shift = (13 - prec) * 4
        q, r = divmod(frac, 1 << shift)
        half = 1 << (shift - 1)
        if r > half or (r == half and q & 1):
            q += 1
        if q >= 1 << (prec * 4):
            q, lead = 0, lead + 1
            if lead == 2:
                lead, exp = 1, exp + 1
        digits = f"{q:0{prec}x}" if prec else ""
    s = f"{sign}0x{lead}" + ("." + digits if digits else "")
    s += f"p{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return s.upper() if upper else s


class _Printer:
    """Go's ``fmt`` printer state for one ``Sprint``/``Sprintf`` call."""

    __slots__ = (
        "buf",
        "erroring",
        "good_arg_num",
        "minus",
        "plus",
        "plus_v",
        "prec",
        "reordered",
        "sharp",
        "sharp_v",
        "space",
        "wid",
        "zero",
    )

    def __init__(self) -> None:
        self.buf: list[str] = []
        self.erroring = False
        self.reordered = False
        self.good_arg_num = True
        self.clear()

    def clear(self) -> None:
        self.plus = self.minus = self.sharp = self.space = self.zero = False
        self.plus_v = self.sharp_v = False
        self.wid: int | None = None
        self.prec: int | None = None

    def text(self) -> str:
        return "".join(self.buf)

    # Padding ------------------------------------------------------------------

    def write_padding(self, n: int) -> None:
        if n > 0:
            self.buf.append(("0" if self.zero and not self.minus else " ") * n)

    def pad(self, s: str) -> None:
        if not self.wid:
            self.buf.append(s)
        elif self.minus:
            self.buf.append(s)
            self.write_padding(self.wid - len(s))
        else:
            self.write_padding(self.wid - len(s))
            self.buf.append(s)

    def pad_no_zero(self, s: str) -> None:
        zero, self.zero = self.zero, False
        self.pad(s)
        self.zero = zero

    # Values -------------------------------------------------------------------

    def print_arg(self, arg: Any, verb: str) -> None:
        if arg is None:
            if verb in ("T", "v"):
                self.pad("<nil>")
            else:
                self.bad_verb(None, verb)
            return
        if verb == "T":
            self.fmt_s(_type_name(arg))
            return
        t = type(arg)
        if t is str:
            self.fmt_string(arg, verb)
        elif t is bool:
            self.fmt_bool(arg, verb)
        elif t is int or t is _Int64:
            self.fmt_int(arg, True, verb)
        elif t is float:
            self.fmt_float_verb(arg, verb)
        elif t is _Uint8:
            self.fmt_int(arg, False, verb)
        elif t is complex:
            self.fmt_complex(arg, verb)
        elif verb == "p" or not self.handle_methods(arg, verb):
            self.print_value(arg, verb, 0)

    def handle_methods(self, arg: Any, verb: str) -> bool:
        """Stringers (``time.Time``, ``time.Month`` ...) print as their String()."""
        if self.erroring:
            return False
        stringer = _STRINGERS.get(type(arg))
        if stringer is None:
            return False
        if self.sharp_v:
            if type(arg) is not _Time:
                return False
            self.fmt_s(_time_go_string(arg))
            return True
        if verb in "vsxXq":
            self.fmt_string(stringer(arg), verb)
            return True
        return False

    def print_value(self, v: Any, verb: str, depth: int) -> None:
        if depth > 0 and v is not None and self.handle_methods(v, verb):
            return
        t = type(v)
        if v is None:
            self.buf.append("interface {}(nil)" if self.sharp_v else "<nil>")
        elif t is str:
            self.fmt_string(v, verb)
        elif t is bool:
            self.fmt_bool(v, verb)
        elif t is float:
            self.fmt_float_verb(v, verb)
        elif t is complex:
            self.fmt_complex(v, verb)
        elif t is _Uint8:
            self.fmt_int(v, False, verb)
        elif t in _INT_KINDS:
            self.fmt_int(v, True, verb)
        elif verb == "p":
            self.bad_verb(v, verb)
        elif t is list:
            self.buf.append("[]interface {}{" if self.sharp_v else "[")
            for i, e in enumerate(v):
                if i:
                    self.buf.append(", " if self.sharp_v else " ")
                self.print_value(e, verb, depth + 1)
            self.buf.append("}" if self.sharp_v else "]")
        elif isinstance(v, Mapping):
            self.buf.append(_type_name(v) + "{" if self.sharp_v else "map[")
            for i, k in enumerate(sorted(v)):
                if i:
                    self.buf.append(", " if self.sharp_v else " ")
                self.print_value(k, verb, depth + 1)
                self.buf.append(":")
                self.print_value(v[k], verb, depth + 1)
            self.buf.append("}" if self.sharp_v else "]")
        else:
            self.bad_verb(v, verb)

    def bad_verb(self, arg: Any, verb: str) -> None:
        self.erroring = True
        self.buf.append(f"%!{verb}(")
        if arg is None:
            self.buf.append("<nil>")
        else:
            self.buf.append(_type_name(arg) + "=")
            if type(arg) is _Time:
                self.fmt_s(_time_string(arg))
            else:
                self.print_arg(arg, "v")
        self.buf.append(")")
        self.erroring = False

    def fmt_bool(self, v: bool, verb: str) -> None:
        if verb in ("t", "v"):
            self.pad("true" if v else "false")
        else:
            self.bad_verb(v, verb)

    def fmt_int(self, v: int, signed: bool, verb: str) -> None:
        if verb == "v":
            if self.sharp_v and not signed:
                sharp, self.sharp = self.sharp, True
                self.fmt_integer(v, 16, False, verb, False)
                self.sharp = sharp
            else:
                self.fmt_integer(v, 10, signed, verb, False)
        elif verb in _INT_BASES:
            self.fmt_integer(v, _INT_BASES[verb], signed, verb, verb == "X")
        elif verb == "c":
            self.pad(chr(_rune(v)))
        elif verb == "q":
            r = _rune(v)
            if self.sharp and _is_print(r):
                self.pad(f"'{chr(r)}'")
            else:
                quoted = go_quote_rune(chr(r))
                self.pad(_ascii_escapes(quoted) if self.plus else quoted)
        elif verb == "U":
            u = v & ((1 << 64) - 1)
            width = self.prec if self.prec is not None and self.prec > 4 else 4
            s = "U+" + f"{u:X}".rjust(width, "0")
            if self.sharp and u <= 0x10FFFF and _is_print(u):
                s += f" '{chr(u)}'"
            self.pad_no_zero(s)
        else:
            self.bad_verb(v, verb)

    def fmt_integer(self, v: int, base: int, signed: bool, verb: str, upper: bool) -> None:
        negative = signed and v < 0
        u = -v if negative else v & ((1 << 64) - 1)
        prec = 0
        if self.prec is not None:
            prec = self.prec
            if prec == 0 and u == 0:  # "%.0d" of 0 prints nothing but padding
                zero, self.zero = self.zero, False
                self.write_padding(self.wid or 0)
                self.zero = zero
                return
        elif self.zero and not self.minus and self.wid is not None:
            prec = self.wid - (1 if negative or self.plus or self.space else 0)
        digits = format(u, {2: "b", 8: "o", 10: "d", 16: "X" if upper else "x"}[base])
        digits = digits.rjust(prec, "0")
        if self.sharp:
            if base == 2:
                digits = "0b" + digits
            elif base == 8 and digits[0] != "0":
                digits = "0" + digits
            elif base == 16:
                digits = ("0X" if upper else "0x") + digits
        if verb == "O":
            digits = "0o" + digits
        if negative:
            digits = "-" + digits
        elif self.plus:
            digits = "+" + digits
        elif self.space:
            digits = " " + digits
        self.pad_no_zero(digits)

    def fmt_float_verb(self, v: float, verb: str) -> None:
        if verb == "v":
            self.fmt_float(v, "g", -1)
        elif verb in ("b", "g", "G", "x", "X"):
            self.fmt_float(v, verb, -1)
        elif verb in ("e", "E", "f"):
            self.fmt_float(v, verb, 6)
        elif verb == "F":
            self.fmt_float(v, "f", 6)
        else:
            self.bad_verb(v, verb)

    def fmt_float(self, v: float, verb: str, prec: int) -> None:
        if self.prec is not None:
            prec = self.prec
        num = _format_float(v, verb, prec)
        if num[0] not in "+-":
            num = "+" + num
        if self.space and num[0] == "+" and not self.plus:
            num = " " + num[1:]
        if num[1] in ("I", "N"):  # infinities and NaN are never zero padded
            if num[1] == "N" and not self.space and not self.plus:
                num = num[1:]
            self.pad_no_zero(num)
            return
        if self.sharp and verb != "b":  # keep the point and trailing zeros
            digits = (prec if prec != -1 else 6) if verb in ("g", "G", "x", "X") else 0
            tail = ""
            body = num
            for i in range(1, len(num)):
                c = num[i]
                if c in "pP" or (c in "eE" and verb not in ("x", "X")):
                    body, tail = num[:i], num[i:]
                    break
            saw_nonzero = False
            for c in body[1:]:
                if c == ".":
                    continue
                if c != "0":
                    saw_nonzero = True
                if saw_nonzero:
                    digits -= 1
            if "." not in body:
                if len(body) == 2 and body[1] == "0":
                    digits -= 1
                body += "."
            num = body + "0" * max(digits, 0) + tail
        if self.plus or num[0] != "+":
            if self.zero and not self.minus and self.wid is not None and self.wid > len(num):
                self.buf.append(num[0])
                self.write_padding(self.wid - len(num))
                self.buf.append(num[1:])
                return
            self.pad(num)
            return
        self.pad(num[1:])

    def fmt_complex(self, v: complex, verb: str) -> None:
        if verb not in ("v", "b", "g", "G", "x", "X", "f", "F", "e", "E"):
            self.bad_verb(v, verb)
            return
        plus = self.plus
        self.buf.append("(")
        self.fmt_float_verb(v.real, verb)
        self.plus = True  # the imaginary part always has a sign
        self.fmt_float_verb(v.imag, verb)
        self.buf.append("i)")
        self.plus = plus

    def fmt_string(self, s: str, verb: str) -> None:
        if verb == "v":
            if self.sharp_v:
                self.fmt_q(s)
            else:
                self.fmt_s(s)
        elif verb == "s":
            self.fmt_s(s)
        elif verb in ("x", "X"):
            self.fmt_sx(s, verb == "X")
        elif verb == "q":
            self.fmt_q(s)
        else:
            self.bad_verb(s, verb)

    def truncate(self, s: str) -> str:
        return s[: self.prec] if self.prec is not None else s

    def fmt_s(self, s: str) -> None:
        self.pad(self.truncate(s))

    def fmt_q(self, s: str) -> None:
        s = self.truncate(s)
        if self.sharp and _can_backquote(s):
            self.pad(f"`{s}`")
        else:
            quoted = go_quote(s)
            self.pad('"' + _ascii_escapes(quoted[1:-1]) + '"' if self.plus else quoted)

    def fmt_sx(self, s: str, upper: bool) -> None:
        b = _utf8(s)
        n = min(len(b), self.prec) if self.prec is not None else len(b)
        width = 2 * n
        if width == 0:
            if self.wid is not None:
                self.write_padding(self.wid)
            return
        if self.space:
            width = width * (2 if self.sharp else 1) + n - 1
        elif self.sharp:
            width += 2
        if self.wid is not None and self.wid > width and not self.minus:
            self.write_padding(self.wid - width)
        prefix = "0X" if upper else "0x"
        hexes = [f"{c:02X}" if upper else f"{c:02x}" for c in b[:n]]
        if self.space:
            text = " ".join((prefix + h) if self.sharp else h for h in hexes)
        else:
            text = (prefix if self.sharp else "") + "".join(hexes)
        self.buf.append(text)
        if self.wid is not None and self.wid > width and self.minus:
            self.write_padding(self.wid - width)

    # Printf -------------------------------------------------------------------

    def arg_number(self, arg_num: int, fmt: str, i: int, nargs: int) -> tuple[int, int, bool]:
        """An explicit argument index ``[n]`` at `i`."""
        if i >= len(fmt) or fmt[i] != "[":
            return arg_num, i, False
        self.reordered = True
        index, wid, ok = 0, 1, False
        close = fmt.find("]", i + 1)
        if len(fmt) - i >= 3 and close >= 0:
            num, isnum, newi = _parsenum(fmt, i + 1, close)
            wid = close - i + 1
            ok = isnum and newi == close
            index = num - 1
        if ok and 0 <= index < nargs:
            return index, i + wid, True
        self.good_arg_num = False
        return arg_num, i + wid, ok

    def do_printf(self, fmt: str, args: list[Any]) -> None:
        end = len(fmt)
        arg_num = 0
        i = 0
        while i < end:
            self.good_arg_num = True
            lasti = i
            while i < end and fmt[i] != "%":
                i += 1
            if i > lasti:
                self.buf.append(fmt[lasti:i])
            if i >= end:
                break
            i += 1
            self.clear()
            simple = False
            while i < end:
                c = fmt[i]
                if c == "#":
                    self.sharp = True
                elif c == "0":
                    self.zero = not self.minus
                elif c == "+":
                    self.plus = True
                elif c == "-":
                    self.minus, self.zero = True, False
                elif c == " ":
                    self.space = True
                else:
                    if "a" <= c <= "z" and arg_num < len(args):  # the common "%s" and "%-5d"
                        if c == "v":
                            self.sharp_v, self.sharp = self.sharp, False
                            self.plus_v, self.plus = self.plus, False
                        self.print_arg(args[arg_num], c)
                        arg_num += 1
                        i += 1
                        simple = True
                    break
                i += 1
            if simple:
                continue
            arg_num, i, after_index = self.arg_number(arg_num, fmt, i, len(args))
            if i < end and fmt[i] == "*":
                i += 1
                wid, present, arg_num = _int_from_arg(args, arg_num)
                self.wid = wid if present else None
                if not present:
                    self.buf.append("%!(BADWIDTH)")
                elif wid < 0:
                    self.wid, self.minus, self.zero = -wid, True, False
                after_index = False
            else:
                wid, present, i = _parsenum(fmt, i, end)
                self.wid = wid if present else None
                if after_index and present:  # "%[3]2d"
                    self.good_arg_num = False
            if i + 1 < end and fmt[i] == ".":
                i += 1
                if after_index:  # "%[3].2d"
                    self.good_arg_num = False
                arg_num, i, after_index = self.arg_number(arg_num, fmt, i, len(args))
                if i < end and fmt[i] == "*":
                    i += 1
                    prec, present, arg_num = _int_from_arg(args, arg_num)
                    if prec < 0:
                        prec, present = 0, False
                    self.prec = prec if present else None
                    if not present:
                        self.buf.append("%!(BADPREC)")
                    after_index = False
                else:
                    prec, present, i = _parsenum(fmt, i, end)
                    self.prec = prec if present else 0
            if not after_index:
                arg_num, i, after_index = self.arg_number(arg_num, fmt, i, len(args))
            if i >= end:
                self.buf.append("%!(NOVERB)")
                break
            verb = fmt[i]
            i += 1
            if verb == "%":
                self.buf.append("%")
            elif not self.good_arg_num:
                self.buf.append(f"%!{verb}(BADINDEX)")
            elif arg_num >= len(args):
                self.buf.append(f"%!{verb}(MISSING)")
            else:
                if verb == "v":
                    self.sharp_v, self.sharp = self.sharp, False
                    self.plus_v, self.plus = self.plus, False
                self.print_arg(args[arg_num], verb)
                arg_num += 1
        if not self.reordered and arg_num < len(args):
            self.clear()
            self.buf.append("%!(EXTRA ")
            for j, arg in enumerate(args[arg_num:]):
                if j:
                    self.buf.append(", ")
                if arg is None:
                    self.buf.append("<nil>")
                else:
                    self.buf.append(_type_name(arg) + "=")
                    self.print_arg(arg, "v")
            self.buf.append(")")


_INT_BASES = {"d": 10, "b": 2, "o": 8, "O": 8, "x": 16, "X": 16}


def _rune(v: int) -> int:
    """A Go rune from an integer: out of range or surrogate is U+FFFD."""
    return v if 0 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF else 0xFFFD


# ---------------------------------------------------------------------------
# Go time: time.Time, locations, layouts
# ---------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_DT_SEC = -62135510400  # 0001-01-02: the range a datetime can look zones up in
_MAX_DT_SEC = 253402214400  # 9999-12-31
_ZERO_SEC = -62135596800  # Go's zero Time: 0001-01-01 00:00:00 UTC
_MONO_START = time.monotonic_ns()
_NS = 1_000_000_000

_LONG_MONTHS = (
    "January February March April May June July August September October November December"
).split()
_LONG_DAYS = "Sunday Monday Tuesday Wednesday Thursday Friday Saturday".split()


class _Zone:
    """A Go ``*time.Location``: a fixed zone, or an IANA zone looked up per instant."""

    __slots__ = ("fixed", "info", "name")

    def __init__(
        self, name: str, fixed: tuple[str, int] | None = None, info: zoneinfo.ZoneInfo | None = None
    ) -> None:
        self.name = name
        self.fixed = fixed
        self.info = info

    def lookup(self, sec: int) -> tuple[str, int]:
        """The zone abbreviation and UTC offset in seconds at Unix time `sec`."""
        if self.fixed is not None:
            return self.fixed
        when = _EPOCH + timedelta(seconds=min(max(sec, _MIN_DT_SEC), _MAX_DT_SEC))
        local = when.astimezone(self.info)
        offset = local.utcoffset()
        return local.tzname() or "", int(offset.total_seconds()) if offset else 0


_UTC = _Zone("UTC", ("UTC", 0))
_LOCAL = _Zone("Local", ("UTC", 0))  # Loki runs without TZ: Local is UTC


@functools.lru_cache(maxsize=256)
def _load_location(name: str) -> _Zone | None:
    """``time.LoadLocation``; None for an unknown zone."""
    if name in ("", "UTC"):
        return _UTC
    if name == "Local":
        return _LOCAL
    if ".." in name or name[0] in "/\\":
        return None
    try:
        return _Zone(name, info=zoneinfo.ZoneInfo(name))
    except (KeyError, ValueError, OSError):
        return None


class _Time:
    """A Go ``time.Time``: Unix seconds and nanoseconds, a location, and the monotonic
    clock reading ``now`` carries (``String()`` shows it as ``m=+1.000000000``)."""

    __slots__ = ("mono", "nsec", "sec", "zone")

    def __init__(self, sec: int, nsec: int, zone: _Zone, mono: int | None = None) -> None:
        self.sec = sec
        self.nsec = nsec
        self.zone = zone
        self.mono = mono

    def fields(self) -> tuple[int, int, int, int, int, int, int, int, str, int]:
        """Year, month, day, hour, minute, second, year day, weekday, zone name and
        offset, in the time's location."""
        abbr, offset = self.zone.lookup(self.sec)
        days, secs = divmod(self.sec + offset, 86400)
        year, month, day = _civil_from_days(days)
        yday = days - _days_from_civil(year, 1, 1) + 1
        hour, minute, sec = secs // 3600, secs // 60 % 60, secs % 60
        return year, month, day, hour, minute, sec, yday, (days + 4) % 7, abbr, offset

    def same(self, other: _Time) -> bool:
        """Go's ``==`` on two Time values (wall clock, monotonic reading, location)."""
        return (self.sec, self.nsec, self.mono, self.zone) == (
            other.sec,
            other.nsec,
            other.mono,
            other.zone,
        )

    def ns(self) -> int:
        return self.sec * _NS + self.nsec


def _unix(ns: int, zone: _Zone = _LOCAL) -> _Time:
    """``time.Unix(0, ns)``."""
    sec, nsec = divmod(ns, _NS)
    return _Time(sec, nsec, zone)


def _now() -> _Time:
    t = _unix(time.time_ns())
    t.mono = time.monotonic_ns() - _MONO_START
    return t


_ZERO_TIME = _Time(_ZERO_SEC, 0, _UTC)


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """Proleptic Gregorian date of a day count from 1970-01-01."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _days_in(month: int, year: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _go_date(y: int, mo: int, d: int, h: int, mi: int, s: int, ns: int, zone: _Zone) -> _Time:
    """``time.Date``: out-of-range fields carry over; the zone offset in effect at that
    wall clock time is subtracted."""
    y, mo = y + (mo - 1) // 12, (mo - 1) % 12 + 1
    s, ns = s + ns // _NS, ns % _NS
    unix = (_days_from_civil(y, mo, 1) + d - 1) * 86400 + h * 3600 + mi * 60 + s
    _, offset = zone.lookup(unix)
    if offset:
        _, at_utc = zone.lookup(unix - offset)
        offset = at_utc if at_utc != offset else offset
    return _Time(unix - offset, ns, zone)


# Layout elements (Go's std* constants).
(
    _STD_NONE,
    _LONG_MONTH,
    _MONTH,
    _NUM_MONTH,
    _ZERO_MONTH,
    _LONG_WEEKDAY,
    _WEEKDAY,
    _DAY,
    _UNDER_DAY,
    _ZERO_DAY,
    _UNDER_YEARDAY,
    _ZERO_YEARDAY,
    _HOUR,
    _HOUR12,
    _ZERO_HOUR12,
    _MINUTE,
    _ZERO_MINUTE,
    _SECOND,
    _ZERO_SECOND,
    _LONG_YEAR,
    _YEAR,
    _PM_UPPER,
    _PM_LOWER,
    _TZ,
    _ISO_TZ,
    _ISO_SECONDS_TZ,
    _ISO_SHORT_TZ,
    _ISO_COLON_TZ,
    _ISO_COLON_SECONDS_TZ,
    _NUM_TZ,
    _NUM_SECONDS_TZ,
    _NUM_SHORT_TZ,
    _NUM_COLON_TZ,
    _NUM_COLON_SECONDS_TZ,
    _FRAC0,
    _FRAC9,
) = range(36)
_STD0X = (_ZERO_MONTH, _ZERO_DAY, _ZERO_HOUR12, _ZERO_MINUTE, _ZERO_SECOND, _YEAR)
_ZONE_ELEMENTS = (
    ("-070000", _NUM_SECONDS_TZ),
    ("-07:00:00", _NUM_COLON_SECONDS_TZ),
    ("-0700", _NUM_TZ),
    ("-07:00", _NUM_COLON_TZ),
    ("-07", _NUM_SHORT_TZ),
    ("Z070000", _ISO_SECONDS_TZ),
    ("Z07:00:00", _ISO_COLON_SECONDS_TZ),
    ("Z0700", _ISO_TZ),
    ("Z07:00", _ISO_COLON_TZ),
    ("Z07", _ISO_SHORT_TZ),
)
_COLON_TZ = (_ISO_COLON_TZ, _ISO_COLON_SECONDS_TZ, _NUM_COLON_TZ, _NUM_COLON_SECONDS_TZ)
_SHORT_TZ = (_ISO_SHORT_TZ, _NUM_SHORT_TZ)
_SECONDS_TZ = (_ISO_SECONDS_TZ, _ISO_COLON_SECONDS_TZ, _NUM_SECONDS_TZ, _NUM_COLON_SECONDS_TZ)


def _is_digit(s: str, i: int) -> bool:
    return i < len(s) and "0" <= s[i] <= "9"


def _next_std_chunk(layout: str) -> tuple[str, int, str, int, str]:
    """Go's ``nextStdChunk``: the literal text before the first layout element, the
    element, the rest; for fractional seconds, the digit count and separator."""
    n = len(layout)
    for i, c in enumerate(layout):
        head = layout[:i]
        if c == "J" and layout.startswith("Jan", i):
            if layout.startswith("January", i):
                return head, _LONG_MONTH, layout[i + 7 :], 0, ""
            if not "a" <= layout[i + 3 : i + 4] <= "z":
                return head, _MONTH, layout[i + 3 :], 0, ""
        elif c == "M":
            if layout.startswith("Mon", i):
                if layout.startswith("Monday", i):
                    return head, _LONG_WEEKDAY, layout[i + 6 :], 0, ""
                if not "a" <= layout[i + 3 : i + 4] <= "z":
                    return head, _WEEKDAY, layout[i + 3 :], 0, ""
            if layout.startswith("MST", i):
                return head, _TZ, layout[i + 3 :], 0, ""
        elif c == "0":
            if i + 1 < n and "1" <= layout[i + 1] <= "6":
                return head, _STD0X[ord(layout[i + 1]) - 49], layout[i + 2 :], 0, ""
            if layout.startswith("002", i):
                return head, _ZERO_YEARDAY, layout[i + 3 :], 0, ""
        elif c == "1":
            if layout.startswith("15", i):
                return head, _HOUR, layout[i + 2 :], 0, ""
            return head, _NUM_MONTH, layout[i + 1 :], 0, ""
        elif c == "2":
            if layout.startswith("2006", i):
                return head, _LONG_YEAR, layout[i + 4 :], 0, ""
            return head, _DAY, layout[i + 1 :], 0, ""
        elif c == "_":
            if layout.startswith("_2", i):
                if layout.startswith("_2006", i):  # a literal _ and a long year
                    return layout[: i + 1], _LONG_YEAR, layout[i + 5 :], 0, ""
                return head, _UNDER_DAY, layout[i + 2 :], 0, ""
            if layout.startswith("__2", i):
                return head, _UNDER_YEARDAY, layout[i + 3 :], 0, ""
        elif c in ("3", "4", "5"):
            return head, (_HOUR12, _MINUTE, _SECOND)[ord(c) - 51], layout[i + 1 :], 0, ""
        elif c == "P" and layout.startswith("PM", i):
            return head, _PM_UPPER, layout[i + 2 :], 0, ""
        elif c == "p" and layout.startswith("pm", i):
            return head, _PM_LOWER, layout[i + 2 :], 0, ""
        elif c in ("-", "Z"):
            for text, std in _ZONE_ELEMENTS:
                if layout.startswith(text, i):
                    return head, std, layout[i + len(text) :], 0, ""
        elif c in (".", ",") and i + 1 < n and layout[i + 1] in ("0", "9"):
            j = i + 1
            while j < n and layout[j] == layout[i + 1]:
                j += 1
            if not _is_digit(layout, j):  # only a fraction if no digit follows
                std = _FRAC0 if layout[i + 1] == "0" else _FRAC9
                return head, std, layout[j:], j - i - 1, c
    return layout, _STD_NONE, "", 0, ""


def _pad_int(x: int, width: int) -> str:
    """Go's ``appendInt``: zero padded to `width`, sign first."""
    return ("-" if x < 0 else "") + str(abs(x)).rjust(width, "0")


def _format_time(t: _Time, layout: str) -> str:
    """``Time.Format(layout)``."""
    year, month, day, hour, minute, sec, yday, wday, abbr, offset = t.fields()
    out = []
    while layout:
        prefix, std, layout, ndigits, sep = _next_std_chunk(layout)
        out.append(prefix)
        if std == _STD_NONE:
            break
        if std == _YEAR:
            out.append(_pad_int(abs(year) % 100, 2))
        elif std == _LONG_YEAR:
            out.append(_pad_int(year, 4))
        elif std in (_MONTH, _LONG_MONTH):
            name = _LONG_MONTHS[month - 1]
            out.append(name if std == _LONG_MONTH else name[:3])
        elif std in (_NUM_MONTH, _ZERO_MONTH):
            out.append(_pad_int(month, 2 if std == _ZERO_MONTH else 0))
        elif std in (_WEEKDAY, _LONG_WEEKDAY):
            name = _LONG_DAYS[wday]
            out.append(name if std == _LONG_WEEKDAY else name[:3])
        elif std in (_DAY, _ZERO_DAY):
            out.append(_pad_int(day, 2 if std == _ZERO_DAY else 0))
        elif std == _UNDER_DAY:
            out.append(f"{day:2d}")
        elif std == _UNDER_YEARDAY:
            out.append(f"{yday:3d}")
        elif std == _ZERO_YEARDAY:
            out.append(_pad_int(yday, 3))
        elif std == _HOUR:
            out.append(_pad_int(hour, 2))
        elif std in (_HOUR12, _ZERO_HOUR12):
            out.append(_pad_int(hour % 12 or 12, 2 if std == _ZERO_HOUR12 else 0))
        elif std in (_MINUTE, _ZERO_MINUTE):
            out.append(_pad_int(minute, 2 if std == _ZERO_MINUTE else 0))
        elif std in (_SECOND, _ZERO_SECOND):
            out.append(_pad_int(sec, 2 if std == _ZERO_SECOND else 0))
        elif std in (_PM_UPPER, _PM_LOWER):
            text = "PM" if hour >= 12 else "AM"
            out.append(text if std == _PM_UPPER else text.lower())
        elif std == _TZ and abbr:
            out.append(abbr)
        elif std == _TZ or _ISO_TZ <= std <= _NUM_COLON_SECONDS_TZ:
            if offset == 0 and _ISO_TZ <= std <= _ISO_COLON_SECONDS_TZ:
                out.append("Z")
                continue
            zone = abs(offset) // 60
            out.append("-" if offset < 0 and zone else "+")
            out.append(_pad_int(zone // 60, 2))
            if std in _COLON_TZ:
                out.append(":")
            if std not in _SHORT_TZ:
                out.append(_pad_int(zone % 60, 2))
            if std in _SECONDS_TZ:
                if std in _COLON_TZ:
                    out.append(":")
                out.append(_pad_int(abs(offset) % 60, 2))
        else:  # fractional seconds
            digits = f"{t.nsec:09d}"[: min(ndigits, 9)]
            if std == _FRAC9:
                digits = digits.rstrip("0")
            if digits or std == _FRAC0:
                out.append(sep + digits)
    return "".join(out)


def _time_string(t: _Time) -> str:
    """``Time.String()``: ``2006-01-02 15:04:05.999999999 -0700 MST`` and ``m=`` for a
    time that carries a monotonic clock reading."""
    text = _format_time(t, "2006-01-02 15:04:05.999999999 -0700 MST")
    if t.mono is not None:
        m = abs(t.mono)
        text += f" m={'-' if t.mono < 0 else '+'}{m // _NS}.{m % _NS:09d}"
    return text


def _time_go_string(t: _Time) -> str:
    """``Time.GoString()``, what ``%#v`` prints."""
    year, month, day, hour, minute, sec = t.fields()[:6]
    if t.zone is _UTC:
        loc = "time.UTC"
    elif t.zone is _LOCAL:
        loc = "time.Local"
    else:
        loc = f"time.Location({go_quote(t.zone.name)})"
    month_name = _LONG_MONTHS[month - 1]
    return f"time.Date({year}, time.{month_name}, {day}, {hour}, {minute}, {sec}, {t.nsec}, {loc})"


class _BadTime(ValueError):
    """The value does not match the layout."""


def _getnum(s: str, fixed: bool) -> tuple[int, str]:
    if not _is_digit(s, 0):
        raise _BadTime
    if not _is_digit(s, 1):
        if fixed:
            raise _BadTime
        return ord(s[0]) - 48, s[1:]
    return int(s[:2]), s[2:]


def _getnum3(s: str, fixed: bool) -> tuple[int, str]:
    i = 0
    while i < 3 and _is_digit(s, i):
        i += 1
    if i == 0 or (fixed and i != 3):
        raise _BadTime
    return int(s[:i]), s[i:]


def _atoi(s: str) -> int:
    """The time package's ``atoi``: an optional sign and digits only."""
    neg = s[:1] == "-"
    body = s[1:] if s[:1] in ("+", "-") else s
    if body and not all("0" <= c <= "9" for c in body):
        raise _BadTime
    value = int(body) if body else 0
    return -value if neg else value


def _skip(value: str, prefix: str) -> str:
    """Remove the layout's literal `prefix` from `value`; runs of spaces match runs."""
    while prefix:
        if prefix[0] == " ":
            if value and value[0] != " ":
                raise _BadTime
            prefix, value = prefix.lstrip(" "), value.lstrip(" ")
            continue
        if not value or value[0] != prefix[0]:
            raise _BadTime
        prefix, value = prefix[1:], value[1:]
    return value


def _lookup_name(names: list[str], value: str) -> tuple[int, str]:
    for i, name in enumerate(names):
        if value[: len(name)].lower() == name.lower():
            return i, value[len(name) :]
    raise _BadTime


def _nanoseconds(value: str, nbytes: int) -> int:
    if value[0] not in ".,":
        raise _BadTime
    nbytes = min(nbytes, 10)
    ns = _atoi(value[1:nbytes])
    if ns < 0:
        raise _BadTime
    return ns * 10 ** (10 - nbytes)


def _time_zone_length(value: str) -> int:
    """Go's ``parseTimeZone``: the length of a zone abbreviation at the start, or 0."""
    if len(value) < 3:
        return 0
    if value[:4] in ("ChST", "MeST"):
        return 4
    if value[:3] == "GMT":
        return 3 + _signed_offset_length(value[3:])
    if value[0] in "+-":
        return _signed_offset_length(value)
    upper = 0
    while upper < min(len(value), 6) and "A" <= value[upper] <= "Z":
        upper += 1
    if upper == 3:
        return 3
    if upper == 4 and (value[3] == "T" or value[:4] == "WITA"):
        return 4
    if upper == 5 and value[4] == "T":
        return 5
    return 0


def _signed_offset_length(value: str) -> int:
    if value[:1] not in ("+", "-"):
        return 0
    i = 1
    while i < len(value) and "0" <= value[i] <= "9":
        i += 1
    if i == 1 or int(value[1:i]) > 12:
        return 0
    return i


def _zone_offset(std: int, value: str) -> tuple[int, str]:
    """A numeric zone offset (``-07:00`` and friends) at the start of `value`."""
    if std in (_ISO_COLON_TZ, _NUM_COLON_TZ):
        if len(value) < 6 or value[3] != ":":
            raise _BadTime
        sign, hh, mm, ss, value = value[0], value[1:3], value[4:6], "00", value[6:]
    elif std in _SHORT_TZ:
        if len(value) < 3:
            raise _BadTime
        sign, hh, mm, ss, value = value[0], value[1:3], "00", "00", value[3:]
    elif std in (_ISO_COLON_SECONDS_TZ, _NUM_COLON_SECONDS_TZ):
        if len(value) < 9 or value[3] != ":" or value[6] != ":":
            raise _BadTime
        sign, hh, mm, ss, value = value[0], value[1:3], value[4:6], value[7:9], value[9:]
    elif std in (_ISO_SECONDS_TZ, _NUM_SECONDS_TZ):
        if len(value) < 7:
            raise _BadTime
        sign, hh, mm, ss, value = value[0], value[1:3], value[3:5], value[5:7], value[7:]
    else:
        if len(value) < 5:
            raise _BadTime
        sign, hh, mm, ss, value = value[0], value[1:3], value[3:5], "00", value[5:]
    hr, mi, se = _getnum(hh, True)[0], _getnum(mm, True)[0], _getnum(ss, True)[0]
    if hr > 24 or mi > 60 or se > 60 or sign not in "+-":
        raise _BadTime
    offset = (hr * 60 + mi) * 60 + se
    return (-offset if sign == "-" else offset), value


def _parse_time(layout: str, value: str, loc: _Zone) -> _Time:
    """``time.ParseInLocation(layout, value, loc)``; raises ValueError on a mismatch."""
    year, month, day, yday = 0, -1, -1, -1
    hour = minute = sec = nsec = 0
    zone: _Zone | None = None
    zone_offset, zone_name = -1, ""
    am = pm = False
    while True:
        prefix, std, layout, ndigits, _ = _next_std_chunk(layout)
        value = _skip(value, prefix)
        if std == _STD_NONE:
            if value:
                raise _BadTime
            break
        if std == _YEAR:
            if len(value) < 2:
                raise _BadTime
            year, value = _atoi(value[:2]), value[2:]
            year += 1900 if year >= 69 else 2000
        elif std == _LONG_YEAR:
            if len(value) < 4 or not _is_digit(value, 0):
                raise _BadTime
            year, value = _atoi(value[:4]), value[4:]
        elif std in (_MONTH, _LONG_MONTH):
            names = _LONG_MONTHS if std == _LONG_MONTH else [m[:3] for m in _LONG_MONTHS]
            month, value = _lookup_name(names, value)
            month += 1
        elif std in (_NUM_MONTH, _ZERO_MONTH):
            month, value = _getnum(value, std == _ZERO_MONTH)
            if not 0 < month <= 12:
                raise _BadTime
        elif std in (_WEEKDAY, _LONG_WEEKDAY):
            names = _LONG_DAYS if std == _LONG_WEEKDAY else [d[:3] for d in _LONG_DAYS]
            _, value = _lookup_name(names, value)
        elif std in (_DAY, _UNDER_DAY, _ZERO_DAY):
            if std == _UNDER_DAY and value[:1] == " ":
                value = value[1:]
            day, value = _getnum(value, std == _ZERO_DAY)
        elif std in (_UNDER_YEARDAY, _ZERO_YEARDAY):
            if std == _UNDER_YEARDAY:
                value = value[1:] if value[:1] == " " else value
                value = value[1:] if value[:1] == " " else value
            yday, value = _getnum3(value, std == _ZERO_YEARDAY)
        elif std == _HOUR:
            hour, value = _getnum(value, False)
            if hour >= 24:
                raise _BadTime
        elif std in (_HOUR12, _ZERO_HOUR12):
            hour, value = _getnum(value, std == _ZERO_HOUR12)
            if hour > 12:
                raise _BadTime
        elif std in (_MINUTE, _ZERO_MINUTE):
            minute, value = _getnum(value, std == _ZERO_MINUTE)
            if minute >= 60:
                raise _BadTime
        elif std in (_SECOND, _ZERO_SECOND):
            sec, value = _getnum(value, std == _ZERO_SECOND)
            if sec >= 60:
                raise _BadTime
            # A fraction in the value but not in the layout is still read.
            if len(value) >= 2 and value[0] in ".," and _is_digit(value, 1):
                if _next_std_chunk(layout)[1] not in (_FRAC0, _FRAC9):
                    n = 2
                    while _is_digit(value, n):
                        n += 1
                    nsec, value = _nanoseconds(value, n), value[n:]
        elif std in (_PM_UPPER, _PM_LOWER):
            text, value = value[:2], value[2:]
            marks = ("PM", "AM") if std == _PM_UPPER else ("pm", "am")
            if text not in marks:
                raise _BadTime
            pm, am = text == marks[0], text == marks[1]
        elif _ISO_TZ <= std <= _NUM_COLON_SECONDS_TZ:
            if std <= _ISO_COLON_SECONDS_TZ and value[:1] == "Z":
                value, zone = value[1:], _UTC
            else:
                zone_offset, value = _zone_offset(std, value)
        elif std == _TZ:
            if value[:3] == "UTC":
                value, zone = value[3:], _UTC
            else:
                n = _time_zone_length(value)
                if not n:
                    raise _BadTime
                zone_name, value = value[:n], value[n:]
        elif std == _FRAC0:
            if len(value) < 1 + ndigits:
                raise _BadTime
            nsec, value = _nanoseconds(value, 1 + ndigits), value[1 + ndigits :]
        elif len(value) >= 2 and value[0] in ".," and _is_digit(value, 1):  # _FRAC9
            n = 1
            while _is_digit(value, n):
                n += 1
            nsec, value = _nanoseconds(value, n), value[n:]
    if pm and hour < 12:
        hour += 12
    elif am and hour == 12:
        hour = 0
    if yday >= 0:
        month, day = _from_year_day(year, yday, month, day)
    else:
        month = 1 if month < 0 else month
        day = 1 if day < 0 else day
    if not 1 <= day <= _days_in(month, year):
        raise _BadTime
    if zone is not None:
        return _go_date(year, month, day, hour, minute, sec, nsec, zone)
    if zone_offset != -1:
        t = _go_date(year, month, day, hour, minute, sec, nsec, _UTC)
        t.sec -= zone_offset
        name, offset = loc.lookup(t.sec)
        same = offset == zone_offset and (not zone_name or name == zone_name)
        t.zone = loc if same else _Zone(zone_name, (zone_name, zone_offset))
        return t
    if zone_name:
        t = _go_date(year, month, day, hour, minute, sec, nsec, _UTC)
        offset = _offset_named(loc, zone_name, t.sec)
        if offset is not None:
            t.sec -= offset
            t.zone = loc
            return t
        offset = int(zone_name[3:]) * 3600 if len(zone_name) > 3 and zone_name[:3] == "GMT" else 0
        t.zone = _Zone(zone_name, (zone_name, offset))
        return t
    return _go_date(year, month, day, hour, minute, sec, nsec, loc)


def _from_year_day(year: int, yday: int, month: int, day: int) -> tuple[int, int]:
    leap = _days_in(2, year) == 29
    m = d = 0
    if leap:
        if yday == 60:
            m, d = 2, 29
        elif yday > 60:
            yday -= 1
    if not 1 <= yday <= 365:
        raise _BadTime
    if m == 0:
        before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365]
        m = (yday - 1) // 31 + 1
        if before[m] < yday:
            m += 1
        d = yday - before[m - 1]
    if (month >= 0 and month != m) or (day >= 0 and day != d):
        raise _BadTime
    return m, d


def _offset_named(loc: _Zone, name: str, unix: int) -> int | None:
    """The offset of zone abbreviation `name` in `loc` around `unix`, if it has one."""
    for probe in (unix, unix + 182 * 86400, unix - 182 * 86400):
        abbr, offset = loc.lookup(probe)
        if abbr == name:
            return offset
    return None


# ---------------------------------------------------------------------------
# Functions: Go's builtins, Loki's map, sprig
# ---------------------------------------------------------------------------

# Go builtins -----------------------------------------------------------------

_KIND_INT, _KIND_UINT, _KIND_FLOAT, _KIND_COMPLEX, _KIND_STRING, _KIND_BOOL = range(6)


def _basic_kind(v: Any) -> int | None:
    t = type(v)
    if t is str:
        return _KIND_STRING
    if t is bool:
        return _KIND_BOOL
    if t is _Uint8:
        return _KIND_UINT
    if t in _INT_KINDS:
        return _KIND_INT
    if t is float:
        return _KIND_FLOAT
    if t is complex:
        return _KIND_COMPLEX
    return None


def _eq(a: Any, *others: Any) -> bool:
    """``eq a b c``: a equals any of the others (Go's basic-kind comparison)."""
    if not others:
        raise _CallError("missing argument for comparison")
    k1 = _basic_kind(a)
    for b in others:
        k2 = _basic_kind(b)
        if k1 != k2:
            if {k1, k2} == {_KIND_INT, _KIND_UINT}:
                truth = a == b  # ints compare across signedness
            elif a is not None and b is not None:
                raise _CallError("incompatible types for comparison")
            else:
                truth = False
        elif k1 is not None:
            truth = a == b
        elif a is None or b is None:
            truth = a is None and b is None
        elif type(a) is not type(b):
            raise _CallError(
                f"non-comparable types {_print_value(a)}: {_type_name(a)}, "
                f"{_type_name(b)}: {_print_value(b)}"
            )
        elif type(a) is _Time:
            truth = a.same(b)
        else:
            raise _CallError(f"non-comparable type {_print_value(b)}: {_type_name(b)}")
        if truth:
            return True
    return False


def _lt(a: Any, b: Any) -> bool:
    k1, k2 = _basic_kind(a), _basic_kind(b)
    if k1 is None or k2 is None:
        raise _CallError("invalid type for comparison")
    if k1 != k2:
        if {k1, k2} != {_KIND_INT, _KIND_UINT}:
            raise _CallError("incompatible types for comparison")
    elif k1 in (_KIND_BOOL, _KIND_COMPLEX):
        raise _CallError("invalid type for comparison")
    return bool(a < b)


def _le(a: Any, b: Any) -> bool:
    return _lt(a, b) or _eq(a, b)


def _length(v: Any) -> int:
    if v is None:
        raise _CallError("len of nil pointer")
    if type(v) is str:
        return len(_utf8(v))
    if type(v) is list or isinstance(v, Mapping):
        return len(v)
    raise _CallError(f"len of type {_type_name(v)}")


def _index_arg(index: Any, cap: int) -> int:
    if index is None:
        raise _CallError("cannot index slice/array with nil")
    if _basic_kind(index) not in (_KIND_INT, _KIND_UINT):
        raise _CallError(f"cannot index slice/array with type {_type_name(index)}")
    if index < 0 or index > cap:
        raise _CallError(f"index out of range: {int(index)}")
    return int(index)


def _index(item: Any, *indexes: Any) -> Any:
    """``index x 1 2``: ``x[1][2]`` of lists, maps and strings (a byte)."""
    if item is None:
        raise _CallError("index of untyped nil")
    for index in indexes:
        if item is None:
            raise _CallError("index of nil pointer")
        if type(item) is str or type(item) is list:
            seq = _utf8(item) if type(item) is str else item
            x = _index_arg(index, len(seq))
            if x == len(seq):
                raise _CallError(f"index out of range: {x}")
            item = _Uint8(seq[x]) if type(item) is str else seq[x]
        elif isinstance(item, Mapping):
            if index is None:
                raise _CallError("value is nil; should be of type string")
            if type(index) is not str:
                raise _CallError(f"value has type {_type_name(index)}; should be string")
            item = item.get(index) if type(item) is _JsonMap else item.get(index, "")
        else:
            raise _CallError(f"can't index item of type {_type_name(item)}")
    return item


def _slice(item: Any, *indexes: Any) -> Any:
    """``slice x 1 2``: ``x[1:2]`` of a list or string (bytes)."""
    if item is None:
        raise _CallError("slice of untyped nil")
    if len(indexes) > 3:
        raise _CallError(f"too many slice indexes: {len(indexes)}")
    if type(item) is str:
        if len(indexes) == 3:
            raise _CallError("cannot 3-index slice a string")
        seq: Any = _utf8(item)
    elif type(item) is list:
        seq = item
    else:
        raise _CallError(f"can't slice item of type {_type_name(item)}")
    idx = [0, len(seq), len(seq)]
    for i, index in enumerate(indexes):
        idx[i] = _index_arg(index, len(seq))
    if idx[0] > idx[1]:
        raise _CallError(f"invalid slice index: {idx[0]} > {idx[1]}")
    if len(indexes) == 3 and idx[1] > idx[2]:
        raise _CallError(f"invalid slice index: {idx[1]} > {idx[2]}")
    part = seq[idx[0] : idx[1]]
    return _from_utf8(part) if type(item) is str else part


def _eval_args(args: tuple[Any, ...]) -> str:
    if len(args) == 1 and type(args[0]) is str:
        return args[0]
    return _sprint(*("<no value>" if a is None else a for a in args))


_HTML_ESCAPES = str.maketrans(
    {'"': "&#34;", "'": "&#39;", "&": "&amp;", "<": "&lt;", ">": "&gt;", "\0": "\ufffd"}
)


def _html(*args: Any) -> str:
    return _eval_args(args).translate(_HTML_ESCAPES)


_JS_ESCAPES = {"\\": "\\\\", "'": "\\'", '"': '\\"', "<": "\\u003C", ">": "\\u003E"}
_JS_ESCAPES |= {"&": "\\u0026", "=": "\\u003D"}


def _js(*args: Any) -> str:
    out = []
    for c in _eval_args(args):
        if c in _JS_ESCAPES:
            out.append(_JS_ESCAPES[c])
        elif c < " ":
            out.append(f"\\u00{ord(c):02X}")
        elif c < "\x80" or c.isprintable():
            out.append(c)
        else:
            out.append(f"\\u{_rune(ord(c)):04X}")
    return "".join(out)


def _urlquery(*args: Any) -> str:
    return _query_escape(_eval_args(args))


def _call(callee: str, fn: Any, *args: Any) -> Any:
    if fn is None:
        raise _CallError("call of nil")
    raise _CallError(f"non-function {callee} of type {_type_name(fn)}")


# Strings (Go's strings package, with Go's Unicode rules) ----------------------

_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
_GO_SPACE += "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_SIMPLE_LOWER = {"\u0130": "i"}  # simple mappings where Python's full one is longer


def _map_runes(s: str, fn: Callable[[str], str], special: Mapping[str, str]) -> str:
    """``strings.Map`` with a case mapping: one rune to one rune; bytes that are not
    UTF-8 become U+FFFD."""
    out = []
    for c in s:
        m = special.get(c) or fn(c)
        if len(m) != 1:
            m = c
        out.append("\ufffd" if "\udc80" <= c <= "\udcff" else m)
    return "".join(out)


def _to_lower(s: str) -> str:
    return s.lower() if s.isascii() else _map_runes(s, str.lower, _SIMPLE_LOWER)


def _to_upper(s: str) -> str:
    return s.upper() if s.isascii() else _map_runes(s, str.upper, {})


def _is_separator(c: str) -> bool:
    if c < "\x80":
        return not (c.isalnum() or c == "_")
    if c.isalpha() or c.isdecimal():
        return False
    return c in _GO_SPACE


def _title(s: str) -> str:
    """``strings.Title``: upper-case the first letter of each word."""
    out = []
    prev = " "
    for c in s:
        m = c.title() if _is_separator(prev) else c
        out.append("\ufffd" if "\udc80" <= c <= "\udcff" else m if len(m) == 1 else c)
        prev = c
    return "".join(out)


def _replace(s: str, old: str, new: str, n: int) -> str:
    return s.replace(old, new) if n < 0 else s.replace(old, new, n)


def _repeat(s: str, count: int) -> str:
    if count < 0:
        raise _CallError("strings: negative Repeat count")
    if len(s) * count > _MAX_OUTPUT:
        raise _CallError("strings: Repeat output length overflow")
    return s * count


def _trunc(c: int, s: str) -> str:
    """sprig's ``trunc``: the first (or last, for c < 0) c bytes."""
    b = _utf8(s)
    if c < 0 and len(b) + c > 0:
        return _from_utf8(b[len(b) + c :])
    if c >= 0 and len(b) > c:
        return _from_utf8(b[:c])
    return s


def _substr(start: int, end: int, s: str) -> str:
    """sprig's ``substr``: ``s[:end]``, ``s[start:]`` or ``s[start:end]`` of the bytes,
    panicking (an error) when Go's slice bounds checks fail."""
    b = _utf8(s)
    n = len(b)
    if start < 0:
        lo, hi = 0, end
        if hi < 0:
            raise _CallError(f"runtime error: slice bounds out of range [:{hi}]")
    elif end < 0 or end > n:
        lo, hi = start, n
    else:
        lo, hi = start, end
    if hi > n:
        raise _CallError(f"runtime error: slice bounds out of range [:{hi}] with length {n}")
    if lo > hi:
        raise _CallError(f"runtime error: slice bounds out of range [{lo}:{hi}]")
    return _from_utf8(b[lo:hi])


def _indent(spaces: int, s: str) -> str:
    pad = _repeat(" ", spaces)
    if len(s) + s.count("\n") * spaces > _MAX_OUTPUT:
        raise _CallError("strings: Repeat output length overflow")
    return pad + s.replace("\n", "\n" + pad)


def _align(count: int, src: str, right: bool) -> str:
    """Loki's ``alignLeft``/``alignRight``: pad or cut to `count` runes."""
    if count < 0 or count == len(src):
        return src
    if count > _MAX_OUTPUT:
        raise _CallError("strings: Repeat output length overflow")
    pad = count - len(src)
    if pad > 0:
        return " " * pad + src if right else src + " " * pad
    return _runes(src[len(src) - count :] if right else src[:count])


# Regular expressions (Go's regexp) ---------------------------------------------


def _regex(pattern: str) -> Any:
    try:
        return compile_go(pattern)
    except GoRegexError as exc:
        raise _CallError(str(exc)) from None


def _replace_all(pattern: Pattern, src: str, repl: Callable[[Match], str]) -> str:
    """Go's ``ReplaceAll`` loop: an empty match right after a match is not replaced.
    Runs on the UTF-8 bytes (one encoding, byte offsets), as Go does."""
    data = src.encode("utf-8", "surrogatepass")
    out: list[bytes] = []
    last = pos = 0
    while pos <= len(data):
        spans = pattern.spans(data, pos)
        if spans is None:
            break
        a, b = spans[0]
        out.append(data[last:a])
        if b > last or a == 0:
            out.append(repl(Match(src, data, spans)).encode("utf-8", "surrogatepass"))
        last = b
        step = _next_rune(data, pos)
        pos = step if step > b else b
    out.append(data[last:])
    return b"".join(out).decode("utf-8", "surrogatepass")


def _next_rune(data: bytes, pos: int) -> int:
    """The offset of the character after the one at ``pos`` (Go advances a rune)."""
    pos += 1
    while pos < len(data) and 0x80 <= data[pos] < 0xC0:
        pos += 1
    return pos


def _regex_replace_all(pattern: str, src: str, repl: str) -> str:
    rx = _regex(pattern)
    return _replace_all(rx.pattern, src, lambda m: expand(repl, m, rx.group_names))


def _regex_replace_all_literal(pattern: str, src: str, repl: str) -> str:
    return _replace_all(_regex(pattern).pattern, src, lambda m: repl)


def _count(pattern: str, s: str) -> int:
    """Loki's ``count``: matches found by Go's ``FindAllStringIndex``."""
    rx = _regex(pattern).pattern
    data = s.encode("utf-8", "surrogatepass")
    n, pos, prev_end = 0, 0, -1
    while pos <= len(data):
        span = rx.find(data, pos, len(data))
        if span is None:
            break
        a, b = span
        accept = True
        if b == pos:  # an empty match: not right after the previous match
            accept = a != prev_end
            pos = _next_rune(data, pos)
        else:
            pos = b
        prev_end = b
        n += accept
    return n


# Encodings ---------------------------------------------------------------------


def _query_escape(s: str) -> str:
    return urllib.parse.quote_plus(_utf8(s), safe="")


def _query_unescape(s: str) -> str:
    """``url.QueryUnescape``."""
    b = _utf8(s)
    for i, c in enumerate(b):
        if c == 0x25 and not re.fullmatch(rb"%[0-9A-Fa-f]{2}", b[i : i + 3]):
            raise _CallError(f"invalid URL escape {go_quote(_from_utf8(b[i : i + 3]))}")
    return _from_utf8(urllib.parse.unquote_to_bytes(b.replace(b"+", b" ")))


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64 = {c: i for i, c in enumerate(_B64_ALPHABET)}


def _b64dec(s: str) -> str:
    """sprig's ``b64dec``: Go's ``StdEncoding`` decoding; a failure returns the error
    text (``illegal base64 data at input byte 4``)."""
    try:
        return _from_utf8(_b64_decode(_utf8(s)))
    except _CallError as exc:
        return str(exc)


def _b64_decode(src: bytes) -> bytes:
    out = bytearray()
    si, n = 0, len(src)

    def corrupt(at: int) -> _CallError:
        return _CallError(f"illegal base64 data at input byte {at}")

    while si < n:
        quantum, j = [0, 0, 0, 0], 0
        while j < 4:
            if si == n:
                if j == 0:
                    return bytes(out)
                raise corrupt(si - j)
            c = src[si]
            si += 1
            if c in _B64:
                quantum[j] = _B64[c]
                j += 1
                continue
            if c in (10, 13):
                continue
            if c != 61 or j < 2:  # not "=", or padding too early
                raise corrupt(si - 1)
            if j == 2:  # "==" expected
                while si < n and src[si] in (10, 13):
                    si += 1
                if si == n:
                    raise corrupt(n)
                if src[si] != 61:
                    raise corrupt(si - 1)
                si += 1
            while si < n and src[si] in (10, 13):
                si += 1
            if si < n:
                raise corrupt(si)  # trailing garbage
            break
        val = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += val.to_bytes(3, "big")[: j - 1]
    return bytes(out)


def _json_number(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


def _json_reject(text: str) -> Any:
    raise ValueError(f"invalid JSON value {text}")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_clean(v: Any) -> Any:
    """Go decodes invalid UTF-8 and lone surrogate escapes as U+FFFD."""
    if type(v) is str:
        return _SURROGATE.sub("\ufffd", v)
    if type(v) is list:
        return [_json_clean(e) for e in v]
    if type(v) is _JsonMap:
        return _JsonMap((_json_clean(k), _json_clean(e)) for k, e in v.items())
    return v


def _from_json(s: str) -> Any:
    """sprig's ``fromJson``: objects are maps, numbers float64; nil on bad JSON."""
    try:
        v = json.loads(
            s,
            object_pairs_hook=_JsonMap,
            parse_float=_json_number,
            parse_int=_json_number,
            parse_constant=_json_reject,
        )
    except (ValueError, RecursionError):
        return None
    return _json_clean(v) if _SURROGATE.search(s) else v


# Numbers (sprig with spf13/cast v1.7 and shopspring/decimal) -------------------


def _trim_zero_decimal(s: str) -> str:
    """cast's ``trimZeroDecimal``: ``12.00`` is ``12``; ``12.50`` stays."""
    found_zero = False
    for i in range(len(s) - 1, -1, -1):
        c = s[i]
        if c == ".":
            if found_zero:
                return s[:i]
        elif c == "0":
            found_zero = True
        else:
            return s
    return s


def _float_to_int64(f: float) -> int:
    """Go's ``int64(f)`` on amd64: out of range (or NaN) is the minimum int64."""
    return int(f) if math.isfinite(f) and -(2**63) <= f < 2**63 else -(1 << 63)


def _to_int64(v: Any) -> int:
    """``cast.ToInt64``: strings in Go syntax (``0x1f``, ``1_000``, ``12.0``); what
    cannot be cast is 0."""
    t = type(v)
    if t is bool or t in (int, _Int64, _Month, _Weekday, _Uint8):
        return int(v)
    if t is float:
        return _float_to_int64(v)
    if t is str:
        return _parse_int(_trim_zero_decimal(v)) or 0
    return 0


def _to_float64(v: Any) -> float:
    """``cast.ToFloat64``; what cannot be cast is 0."""
    t = type(v)
    if t is bool or t in (int, _Int64, _Month, _Weekday, _Uint8, float):
        return float(v)
    if t is str:
        try:
            return parse_go_float(v)
        except ValueError:
            return 0.0
    return 0.0


def _div(a: Any, b: Any) -> _Int64:
    x, y = _to_int64(a), _to_int64(b)
    if y == 0:
        raise _CallError("runtime error: integer divide by zero")
    q = abs(x) // abs(y)
    return _Int64(_wrap64(q if (x < 0) == (y < 0) else -q))


def _mod(a: Any, b: Any) -> _Int64:
    x, y = _to_int64(a), _to_int64(b)
    if y == 0:
        raise _CallError("runtime error: integer divide by zero")
    r = abs(x) % abs(y)
    return _Int64(r if x >= 0 else -r)


def _mul(a: Any, *rest: Any) -> _Int64:
    v = _to_int64(a)
    for b in rest:
        v = _wrap64(v * _to_int64(b))
    return _Int64(v)


def _decimal(v: Any) -> Fraction:
    """``decimal.NewFromFloat(cast.ToFloat64(v))``: the shortest decimal of the float."""
    f = _to_float64(v)
    if not math.isfinite(f):
        raise _CallError(f"Cannot create a Decimal from {format_float_g(f)}")
    return Fraction(Decimal(repr(f)))


def _decimal_div(a: Fraction, b: Fraction) -> Fraction:
    """``Decimal.Div``: 16 decimal places, halves rounded away from zero."""
    if b == 0:
        raise _CallError("decimal division by zero")
    q = a / b * 10**16
    n = math.floor(abs(q) + Fraction(1, 2))
    return Fraction(n if q >= 0 else -n, 10**16)


def _decimal_op(op: Callable[[Fraction, Fraction], Fraction]) -> Callable[..., float]:
    def run(a: Any, *rest: Any) -> float:
        acc = _decimal(a)
        for b in rest:
            acc = op(acc, _decimal(b))
        return float(acc)

    return run


_decimal_sum = _decimal_op(lambda a, b: a + b)


def _go_max(a: float, b: float) -> float:
    """``math.Max``: +Inf wins over NaN, NaN over the rest, +0 over -0."""
    if (math.isinf(a) and a > 0) or (math.isinf(b) and b > 0):
        return math.inf
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if a == 0 and b == 0:
        return a if math.copysign(1, a) > 0 else b
    return max(a, b)


def _go_min(a: float, b: float) -> float:
    """``math.Min``: -Inf wins over NaN, NaN over the rest, -0 over +0."""
    if (math.isinf(a) and a < 0) or (math.isinf(b) and b < 0):
        return -math.inf
    if math.isnan(a) or math.isnan(b):
        return math.nan
    if a == 0 and b == 0:
        return a if math.copysign(1, a) < 0 else b
    return min(a, b)


def _fold_floats(fn: Callable[[float, float], float]) -> Callable[..., float]:
    def run(a: Any, *rest: Any) -> float:
        acc = _to_float64(a)
        for b in rest:
            acc = fn(acc, _to_float64(b))
        return acc

    return run


def _fold_ints(pick: Callable[[int, int], int]) -> Callable[..., _Int64]:
    def run(a: Any, *rest: Any) -> _Int64:
        acc = _to_int64(a)
        for b in rest:
            acc = pick(acc, _to_int64(b))
        return _Int64(acc)

    return run


def _ceil(a: Any) -> float:
    x = _to_float64(a)
    if not math.isfinite(x):
        return x
    r = float(math.ceil(x))
    return math.copysign(r, x) if r == 0 else r


def _floor(a: Any) -> float:
    x = _to_float64(a)
    if not math.isfinite(x):
        return x
    r = float(math.floor(x))
    return math.copysign(r, x) if r == 0 else r


def _go_pow10(y: float) -> float:
    """``math.Pow(10, y)`` for an integral y: Go's repeated squaring."""
    if y == 0:
        return 1.0
    a1, ae = 1.0, 0
    x1, xe = math.frexp(10.0)
    i = int(abs(y))
    while i:
        if xe < -(1 << 12) or 1 << 12 < xe:
            ae += xe
            break
        if i & 1:
            a1 *= x1
            ae += xe
        x1 *= x1
        xe <<= 1
        if x1 < 0.5:
            x1 += x1
            xe -= 1
        i >>= 1
    if y < 0:
        a1, ae = 1 / a1, -ae
    try:
        return math.ldexp(a1, ae)
    except OverflowError:
        return math.inf


def _round(a: Any, places: int, *round_on: float) -> float:
    """sprig's ``round``: up when the fraction of ``a * 10^places`` reaches
    ``round_on`` (default .5)."""
    on = round_on[0] if round_on else 0.5
    pow10 = _go_pow10(float(places))
    digit = pow10 * _to_float64(a)
    if not math.isfinite(digit):  # Ceil and Floor keep NaN and infinities
        return digit / pow10
    rounded = math.ceil(digit) if math.modf(digit)[0] >= on else math.floor(digit)
    return float(rounded) / pow10


def _default(d: Any, *given: Any) -> Any:
    """sprig's ``default``: `d` when the given value is empty (zero, nil, empty)."""
    return d if not given or not _truth(given[0]) else given[0]


# Loki's conversions and time functions ------------------------------------------


def _bytes(v: str) -> float:
    try:
        return float(parse_bytes(v))
    except ValueError as exc:
        raise _CallError(str(exc)) from None


def _duration_seconds(v: str) -> float:
    try:
        ns = parse_go_duration(v)
    except ValueError as exc:
        raise _CallError(str(exc)) from None
    sec = abs(ns) // _NS * (1 if ns >= 0 else -1)
    return sec + (ns - sec * _NS) / 1e9


def _date(layout: str, value: Any) -> str:
    """sprig's ``date``: a time, or Unix seconds; anything else is now."""
    t = type(value)
    if t is _Time:
        when = value
    elif t is int or t is _Int64:
        when = _Time(int(value), 0, _LOCAL)
    else:
        when = _now()
    return _format_time(_Time(when.sec, when.nsec, _LOCAL), layout)


def _to_date(layout: str, value: str, zone: _Zone = _LOCAL) -> _Time:
    try:
        return _parse_time(layout, value, zone)
    except (ValueError, IndexError):
        return _ZERO_TIME


def _to_date_in_zone(layout: str, zone: str, value: str) -> _Time:
    return _to_date(layout, value, _load_location(zone) or _UTC)


def _parse_int10(s: str) -> tuple[int | None, str]:
    """``strconv.ParseInt(s, 10, 64)`` and its error reason."""
    body = s[1:] if s[:1] in ("+", "-") else s
    if not body or not body.isascii() or not body.isdigit():
        return None, "invalid syntax"
    v = int(s)
    if not -(1 << 63) <= v < 1 << 63:
        return None, "value out of range"
    return v, ""


def _unix_to_time(epoch: str) -> _Time:
    """Loki's ``unixToTime``: days, seconds, ms, us or ns by the number of digits."""
    v, reason = _parse_int10(epoch)
    if v is None:
        err = f"strconv.ParseInt: parsing {go_quote(epoch)}: {reason}"
        raise _CallError(f"unable to parse time '{epoch}': {err}")
    scale = {5: 86400 * _NS, 10: _NS, 13: 1_000_000, 16: 1000, 19: 1}.get(len(_utf8(epoch)))
    if scale is None:
        raise _CallError(f"unable to parse time '{epoch}': %!w(<nil>)")
    if scale >= _NS:
        return _Time(v * scale // _NS, 0, _LOCAL)
    return _unix(_wrap64(v * scale))


def _line(ctx: _Ctx) -> str:
    return ctx.line


def _timestamp(ctx: _Ctx) -> _Time:
    return _unix(ctx.ts_ns)


# Methods of time values ----------------------------------------------------------


def _add(t: _Time, d: int) -> _Time:
    sec, nsec = divmod(t.ns() + d, _NS)
    return _Time(sec, nsec, t.zone, None if t.mono is None else t.mono + d)


def _sub(t: _Time, u: _Time) -> _Duration:
    if t.mono is not None and u.mono is not None:
        d = t.mono - u.mono
    else:
        d = t.ns() - u.ns()
    return _Duration(min(max(d, -(1 << 63)), (1 << 63) - 1))


def _compare(t: _Time, u: _Time) -> int:
    if t.mono is not None and u.mono is not None:
        a, b = t.mono, u.mono
    else:
        a, b = t.ns(), u.ns()
    return (a > b) - (a < b)


def _add_date(t: _Time, years: int, months: int, days: int) -> _Time:
    y, mo, d, h, mi, s = t.fields()[:6]
    return _go_date(y + years, mo + months, d + days, h, mi, s, t.nsec, t.zone)


def _truncate(t: _Time, d: int, round_half: bool) -> _Time:
    """``Time.Truncate``/``Round``: to a multiple of `d` since the zero time."""
    stripped = _Time(t.sec, t.nsec, t.zone)
    if d <= 0:
        return stripped
    r = (t.ns() - _ZERO_SEC * _NS) % d
    if round_half and r + r >= d:
        return _add(stripped, d - r)
    return _add(stripped, -r)


def _duration_round(d: int, m: int) -> _Duration:
    if m <= 0:
        return _Duration(d)
    r = abs(d) % m
    if d < 0:
        return _Duration(d + r if r + r < m else max(d - m + r, -(1 << 63)))
    return _Duration(d - r if r + r < m else min(d + m - r, (1 << 63) - 1))


def _trunc_div(a: int, b: int) -> int:
    q = abs(a) // b
    return q if a >= 0 else -q


def _trunc_mod(a: int, b: int) -> int:
    """Go's ``a % b`` (the sign of a); 0 for b <= 0 as ``Duration.Truncate`` wants."""
    return a - _trunc_div(a, b) * b if b > 0 else 0


def _duration_in(d: int, unit: int) -> float:
    """``Duration.Hours``/``Minutes``/``Seconds``: whole units plus the fraction."""
    whole = _trunc_div(d, unit)
    return whole + (d - whole * unit) / unit


_TIME_FIELDS = ("Year", "Month", "Day", "Hour", "Minute", "Second", "YearDay", "Weekday")
_FIELD_TYPES: dict[str, Callable[[int], Any]] = {"Month": _Month, "Weekday": _Weekday}
_FIELD_INDEX = {"Year": 0, "Month": 1, "Day": 2, "Hour": 3, "Minute": 4, "Second": 5}
_FIELD_INDEX |= {"YearDay": 6, "Weekday": 7}


def _time_field(name: str) -> _Func:
    index, wrap = _FIELD_INDEX[name], _FIELD_TYPES.get(name, int)
    return _Func(name, lambda t: wrap(t.fields()[index]))


def _methods(*funcs: _Func) -> dict[str, _Func]:
    return {f.name: f for f in funcs}


_METHODS: dict[type, dict[str, _Func]] = {
    _Time: _methods(
        *(_time_field(name) for name in _TIME_FIELDS),
        _Func("Nanosecond", lambda t: t.nsec),
        _Func("Unix", lambda t: _Int64(t.sec)),
        _Func("UnixMilli", lambda t: _Int64(_wrap64(t.sec * 1000 + t.nsec // 1_000_000))),
        _Func("UnixMicro", lambda t: _Int64(_wrap64(t.sec * 1_000_000 + t.nsec // 1000))),
        _Func("UnixNano", lambda t: _Int64(_wrap64(t.ns()))),
        _Func("Format", _format_time, ("string",)),
        _Func("String", _time_string),
        _Func("GoString", _time_go_string),
        _Func("UTC", lambda t: _Time(t.sec, t.nsec, _UTC)),
        _Func("Local", lambda t: _Time(t.sec, t.nsec, _LOCAL)),
        _Func("IsZero", lambda t: t.sec == _ZERO_SEC and t.nsec == 0),
        _Func("Add", _add, ("duration",)),
        _Func("Sub", _sub, ("time",)),
        _Func("AddDate", _add_date, ("int", "int", "int")),
        _Func("Before", lambda t, u: _compare(t, u) < 0, ("time",)),
        _Func("After", lambda t, u: _compare(t, u) > 0, ("time",)),
        _Func("Equal", lambda t, u: _compare(t, u) == 0, ("time",)),
        _Func("Compare", _compare, ("time",)),
        _Func("Truncate", lambda t, d: _truncate(t, d, False), ("duration",)),
        _Func("Round", lambda t, d: _truncate(t, d, True), ("duration",)),
    ),
    _Duration: _methods(
        _Func("String", lambda d: format_go_duration(int(d))),
        _Func("Hours", lambda d: _duration_in(d, 3600 * _NS)),
        _Func("Minutes", lambda d: _duration_in(d, 60 * _NS)),
        _Func("Seconds", lambda d: _duration_in(d, _NS)),
        _Func("Milliseconds", lambda d: _Int64(_trunc_div(d, 1_000_000))),
        _Func("Microseconds", lambda d: _Int64(_trunc_div(d, 1000))),
        _Func("Nanoseconds", lambda d: _Int64(d)),
        _Func("Abs", lambda d: _Duration(min(abs(d), (1 << 63) - 1))),
        _Func("Round", _duration_round, ("duration",)),
        _Func("Truncate", lambda d, m: _Duration(d - _trunc_mod(d, m)), ("duration",)),
    ),
    _Month: _methods(_Func("String", lambda m: _LONG_MONTHS[m - 1])),
    _Weekday: _methods(_Func("String", lambda d: _LONG_DAYS[d])),
}

_STRINGERS: dict[type, Callable[[Any], str]] = {
    _Time: _time_string,
    _Month: lambda m: _LONG_MONTHS[m - 1],
    _Weekday: lambda d: _LONG_DAYS[d],
    _Duration: lambda d: format_go_duration(int(d)),
}


# The function map -----------------------------------------------------------------

_S, _I, _A, _V, _T = "string", "int", "any", "value", "time"

_FUNCS: dict[str, _Func] = {
    f.name: f
    for f in (
        # Go's builtins (and/or short-circuit: see _make_and_or)
        _Func("and", _truth, (_V,), _V),
        _Func("or", _truth, (_V,), _V),
        _Func("not", lambda v: not _truth(v), (_V,)),
        _Func("len", _length, (_V,)),
        _Func("index", _index, (_V,), _V),
        _Func("slice", _slice, (_V,), _V),
        _Func("print", _sprint, (), _A),
        _Func("printf", _sprintf, (_S,), _A),
        _Func("println", _sprintln, (), _A),
        _Func("html", _html, (), _A),
        _Func("js", _js, (), _A),
        _Func("urlquery", _urlquery, (), _A),
        _Func("call", _call, (_V,), _V),
        _Func("eq", _eq, (_V,), _V),
        _Func("ne", lambda a, b: not _eq(a, b), (_V, _V)),
        _Func("lt", _lt, (_V, _V)),
        _Func("le", _le, (_V, _V)),
        _Func("gt", lambda a, b: not _le(a, b), (_V, _V)),
        _Func("ge", lambda a, b: not _lt(a, b), (_V, _V)),
        # Loki's own (pkg/logql/log/fmt.go)
        _Func("ToLower", _to_lower, (_S,)),
        _Func("ToUpper", _to_upper, (_S,)),
        _Func("Replace", _replace, (_S, _S, _S, _I)),
        _Func("Trim", lambda s, cut: s.strip(cut), (_S, _S)),
        _Func("TrimLeft", lambda s, cut: s.lstrip(cut), (_S, _S)),
        _Func("TrimRight", lambda s, cut: s.rstrip(cut), (_S, _S)),
        _Func("TrimPrefix", str.removeprefix, (_S, _S)),
        _Func("TrimSuffix", str.removesuffix, (_S, _S)),
        _Func("TrimSpace", lambda s: s.strip(_GO_SPACE), (_S,)),
        _Func("regexReplaceAll", _regex_replace_all, (_S, _S, _S)),
        _Func("regexReplaceAllLiteral", _regex_replace_all_literal, (_S, _S, _S)),
        _Func("count", _count, (_S, _S)),
        _Func("urldecode", _query_unescape, (_S,)),
        _Func("urlencode", _query_escape, (_S,)),
        _Func("bytes", _bytes, (_S,)),
        _Func("duration", _duration_seconds, (_S,)),
        _Func("duration_seconds", _duration_seconds, (_S,)),
        _Func("unixEpochMillis", lambda t: str(t.sec * 1000 + t.nsec // 1_000_000), (_T,)),
        _Func("unixEpochNanos", lambda t: str(_wrap64(t.ns())), (_T,)),
        _Func("toDateInZone", _to_date_in_zone, (_S, _S, _S)),
        _Func("unixToTime", _unix_to_time, (_S,)),
        _Func("alignLeft", lambda n, s: _align(n, s, False), (_I, _S)),
        _Func("alignRight", lambda n, s: _align(n, s, True), (_I, _S)),
        _Func("__line__", _line),
        _Func("__timestamp__", _timestamp),
        # sprig (Masterminds/sprig v3), the names Loki takes from it
        _Func("b64enc", lambda s: base64.b64encode(_utf8(s)).decode("ascii"), (_S,)),
        _Func("b64dec", _b64dec, (_S,)),
        _Func("lower", _to_lower, (_S,)),
        _Func("upper", _to_upper, (_S,)),
        _Func("title", _title, (_S,)),
        _Func("trunc", _trunc, (_I, _S)),
        _Func("substr", _substr, (_I, _I, _S)),
        _Func("contains", lambda sub, s: sub in s, (_S, _S)),
        _Func("hasPrefix", lambda pre, s: s.startswith(pre), (_S, _S)),
        _Func("hasSuffix", lambda suf, s: s.endswith(suf), (_S, _S)),
        _Func("indent", _indent, (_I, _S)),
        _Func("nindent", lambda n, s: "\n" + _indent(n, s), (_I, _S)),
        _Func("replace", lambda old, new, s: s.replace(old, new), (_S, _S, _S)),
        _Func("repeat", lambda n, s: _repeat(s, n), (_I, _S)),
        _Func("trim", lambda s: s.strip(_GO_SPACE), (_S,)),
        _Func("trimAll", lambda cut, s: s.strip(cut), (_S, _S)),
        _Func("trimSuffix", lambda suf, s: s.removesuffix(suf), (_S, _S)),
        _Func("trimPrefix", lambda pre, s: s.removeprefix(pre), (_S, _S)),
        _Func("int", _to_int64, (_A,)),
        _Func("float64", _to_float64, (_A,)),
        _Func("add", lambda *v: _Int64(_wrap64(sum(map(_to_int64, v)))), (), _A),
        _Func("sub", lambda a, b: _Int64(_wrap64(_to_int64(a) - _to_int64(b))), (_A, _A)),
        _Func("mul", _mul, (_A,), _A),
        _Func("div", _div, (_A, _A)),
        _Func("mod", _mod, (_A, _A)),
        _Func("addf", lambda *v: _decimal_sum(0.0, *v), (), _A),
        _Func("subf", _decimal_op(lambda a, b: a - b), (_A,), _A),
        _Func("mulf", _decimal_op(lambda a, b: a * b), (_A,), _A),
        _Func("divf", _decimal_op(_decimal_div), (_A,), _A),
        _Func("max", _fold_ints(max), (_A,), _A),
        _Func("min", _fold_ints(min), (_A,), _A),
        _Func("maxf", _fold_floats(_go_max), (_A,), _A),
        _Func("minf", _fold_floats(_go_min), (_A,), _A),
        _Func("ceil", _ceil, (_A,)),
        _Func("floor", _floor, (_A,)),
        _Func("round", _round, (_A, _I), "float64"),
        _Func("fromJson", _from_json, (_S,)),
        _Func("date", _date, (_S, _A)),
        _Func("toDate", _to_date, (_S, _S)),
        _Func("now", _now),
        _Func("unixEpoch", lambda t: str(t.sec), (_T,)),
        _Func("default", _default, (_A,), _A),
    )
}
_CTX_FUNCS = frozenset(("__line__", "__timestamp__"))
