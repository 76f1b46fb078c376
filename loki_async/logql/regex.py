"""Go (RE2) regular expressions, parsed as Go's ``regexp/syntax`` does and run by RE2.

LogQL regexes are Go regexes: the syntax accepted, the error messages, and the
meaning of ``\\d``, ``\\w``, ``\\s``, ``\\b`` (ASCII only), ``$`` (end of text, not
before a final newline) and flags (``(?i)`` anywhere, scoped to the enclosing group;
``(?U)`` swaps greediness) all differ from Python's. This module parses the Go syntax
into a small tree (rejecting what Go rejects, with Go's messages), and emits an
equivalent RE2 pattern in which every construct is spelled explicitly.

RE2 (``google-re2``) runs it, as Go's ``regexp`` would: in time linear in the text,
whatever the regex. Python's ``re`` backtracks, and ``(a+)+b`` on a line of 40 ``a``
would run for days inside the event loop.

The tree also answers one question for the printer: whether Loki's regex
simplifier turns a label filter regex into literal filters (then ``String()``
prints it in double quotes) or keeps it as a regexp (printed in backticks).

Not supported: Unicode scripts (``\\p{Greek}``), whose tables Python lacks; they
raise :class:`GoRegexError`. A regex whose RE2 program would be too large (a large
Unicode class repeated hundreds of times, ``\\pL{1000}``; Go accepts it) is rejected
with Go's "expression too large" before anything is compiled.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import re2

MAX_RUNE = 0x10FFFF
_MAX_REPEAT = 1000

# Flags, as in regexp/syntax.
FOLD = 1  # (?i)
ONE_LINE = 2  # ^ and $ match at text boundaries only (cleared by (?m))
DOT_NL = 4  # (?s)
NON_GREEDY = 8  # (?U)

PERL = ONE_LINE


class GoRegexError(ValueError):
    """A regex Go rejects; the message is Go's: ``error parsing regexp: <code>: `<expr>```."""

    def __init__(self, code: str, expr: str) -> None:
        super().__init__(f"error parsing regexp: {code}: `{expr}`")
        self.code = code
        self.expr = expr


@dataclass(eq=False)
class Node:
    """A parsed regex. `op` is one of: lit, class, any, bot, eot, bol, eol, wb, nwb,
    cap, rep, cat, alt, empty."""

    op: str
    flags: int = 0
    runes: list[str] = field(default_factory=list)  # lit
    ranges: list[tuple[int, int]] = field(default_factory=list)  # class (sorted, merged)
    negated: bool = False  # class
    subs: list[Node] = field(default_factory=list)  # cap/rep: one; cat/alt: many
    min: int = 0  # rep
    max: int = -1  # rep; -1 is unbounded
    greedy: bool = True  # rep
    counted: bool = False  # rep: written as x{n,m} (Go's OpRepeat), not x*, x+, x?
    name: str = ""  # cap


# ---------------------------------------------------------------------------
# Character classes
# ---------------------------------------------------------------------------

_PERL_CLASSES = {
    "d": [(0x30, 0x39)],
    "s": [(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)],
    "w": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
}

_POSIX_CLASSES = {
    "alnum": [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
    "alpha": [(0x41, 0x5A), (0x61, 0x7A)],
    "ascii": [(0x00, 0x7F)],
    "blank": [(0x09, 0x09), (0x20, 0x20)],
    "cntrl": [(0x00, 0x1F), (0x7F, 0x7F)],
    "digit": [(0x30, 0x39)],
    "graph": [(0x21, 0x7E)],
    "lower": [(0x61, 0x7A)],
    "print": [(0x20, 0x7E)],
    "punct": [(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
    "space": [(0x09, 0x0D), (0x20, 0x20)],
    "upper": [(0x41, 0x5A)],
    "word": [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    "xdigit": [(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
}

_CATEGORIES = {
    "C", "Cc", "Cf", "Co", "Cs", "L", "Ll", "Lm", "Lo", "Lt", "Lu", "M", "Mc", "Me", "Mn",
    "N", "Nd", "Nl", "No", "P", "Pc", "Pd", "Pe", "Pf", "Pi", "Po", "Ps", "S", "Sc", "Sk",
    "Sm", "So", "Z", "Zl", "Zp", "Zs",
}  # fmt: skip

# Go's unicode.Scripts names, recognised so that they are reported as unsupported
# rather than as invalid.
_SCRIPTS = {
    "Adlam", "Ahom", "Arabic", "Armenian", "Avestan", "Balinese", "Bamum", "Bengali",
    "Bopomofo", "Braille", "Buginese", "Buhid", "Canadian_Aboriginal", "Cham", "Cherokee",
    "Common", "Coptic", "Cuneiform", "Cypriot", "Cyrillic", "Deseret", "Devanagari",
    "Ethiopic", "Georgian", "Glagolitic", "Gothic", "Greek", "Gujarati", "Gurmukhi", "Han",
    "Hangul", "Hanunoo", "Hebrew", "Hiragana", "Inherited", "Javanese", "Kannada",
    "Katakana", "Kayah_Li", "Khmer", "Lao", "Latin", "Lepcha", "Limbu", "Malayalam",
    "Mongolian", "Myanmar", "Ogham", "Oriya", "Runic", "Sinhala", "Syriac", "Tagalog",
    "Tamil", "Telugu", "Thaana", "Thai", "Tibetan", "Tifinagh", "Vai", "Yi",
}  # fmt: skip


def _normalize(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _negate(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    nxt = 0
    for lo, hi in _normalize(ranges):
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if nxt <= MAX_RUNE:
        out.append((nxt, MAX_RUNE))
    return out


@functools.cache
def _category_ranges(name: str) -> tuple[tuple[int, int], ...]:
    """Code point ranges of a Unicode general category (one letter: the whole group)."""
    out: list[tuple[int, int]] = []
    start = -1
    for cp in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(cp))
        inside = cat == name or (len(name) == 1 and cat[0] == name)
        if inside and start < 0:
            start = cp
        elif not inside and start >= 0:
            out.append((start, cp - 1))
            start = -1
    if start >= 0:
        out.append((start, sys.maxunicode))
    return tuple(out)


# ---------------------------------------------------------------------------
# Parser (regexp/syntax with the Perl flags)
# ---------------------------------------------------------------------------


def _is_word_name(name: str) -> bool:
    return bool(name) and all(c == "_" or (c.isascii() and c.isalnum()) for c in name)


class _Parser:
    def __init__(self, src: str, flags: int) -> None:
        self.src = src
        self.pos = 0
        self.ncap = 0
        self.names: list[str] = []
        self.flags = flags

    def parse(self) -> Node:
        for i, c in enumerate(self.src):
            if "\ud800" <= c <= "\udfff":
                raise GoRegexError("invalid UTF-8", self.src[i:])
        node = self.parse_group_body(self.flags, top=True)
        return node

    def parse_group_body(self, flags: int, top: bool = False) -> Node:
        """Alternatives up to the closing ``)`` (not consumed) or the end."""
        alts: list[Node] = []
        items: list[Node] = []
        last_repeat = ""
        src = self.src
        while self.pos < len(src):
            c = src[self.pos]
            repeat = ""
            if c == ")":
                if top:
                    raise GoRegexError("unexpected )", src)
                break
            if c == "|":
                self.pos += 1
                alts.append(_concat(items, flags))
                items = []
            elif c == "(":
                flags = self.parse_paren(flags, items)
            elif c in "*+?":
                before = self.pos
                self.pos += 1
                lo, hi = {"*": (0, -1), "+": (1, -1), "?": (0, 1)}[c]
                self.repeat(items, flags, lo, hi, before, last_repeat)
                repeat = src[before : self.pos]
            elif c == "{":
                before = self.pos
                bounds = self.parse_repeat_bounds()
                if bounds is None:
                    self.pos = before + 1
                    items.append(_lit("{", flags))
                else:
                    self.repeat(items, flags, bounds[0], bounds[1], before, last_repeat)
                    repeat = src[before : self.pos]
            elif c == "^":
                self.pos += 1
                items.append(Node("bot" if flags & ONE_LINE else "bol", flags))
            elif c == "$":
                self.pos += 1
                items.append(Node("eot" if flags & ONE_LINE else "eol", flags))
            elif c == ".":
                self.pos += 1
                items.append(Node("any", flags))
            elif c == "[":
                items.append(self.parse_class(flags))
            elif c == "\\":
                self.parse_backslash(flags, items)
            else:
                self.pos += 1
                items.append(_lit(c, flags))
            last_repeat = repeat
        alts.append(_concat(items, flags))
        if len(alts) == 1:
            return alts[0]
        return Node("alt", flags, subs=alts)

    def parse_paren(self, flags: int, items: list[Node]) -> int:
        """A group; returns the flags in effect after it (``(?i)`` changes them)."""
        src = self.src
        start = self.pos
        t = src[start:]
        if t.startswith("(?"):
            if (len(t) > 4 and t.startswith("(?P<")) or (len(t) > 3 and t.startswith("(?<")):
                begin = 4 if t.startswith("(?P<") else 3
                end = t.find(">")
                if end < 0:
                    raise GoRegexError("invalid named capture", t)
                name = t[begin:end]
                if not _is_word_name(name):
                    raise GoRegexError("invalid named capture", t[: end + 1])
                self.pos = start + end + 1
                return self.capture(flags, items, name)
            # Flags, non-capturing group, or both.
            self.pos = start + 2
            new = flags
            negate = False
            saw_flag = False
            while self.pos < len(src):
                c = src[self.pos]
                self.pos += 1
                if c in "imsU":
                    bit = {"i": FOLD, "m": ONE_LINE, "s": DOT_NL, "U": NON_GREEDY}[c]
                    # (?m) clears ONE_LINE; (?-m) sets it.
                    on = not negate if c != "m" else negate
                    new = new | bit if on else new & ~bit
                    saw_flag = True
                elif c == "-" and not negate:
                    negate = True
                    saw_flag = False
                elif c in ":)":
                    if negate and not saw_flag:
                        break
                    if c == ")":
                        return new
                    body = self.parse_group_body(new)
                    self.close_paren()
                    items.append(body)
                    return flags
                else:
                    break
            raise GoRegexError("invalid or unsupported Perl syntax", src[start : self.pos])
        self.pos += 1
        return self.capture(flags, items, "")

    def capture(self, flags: int, items: list[Node], name: str) -> int:
        self.ncap += 1
        self.names.append(name)
        body = self.parse_group_body(flags)
        self.close_paren()
        items.append(Node("cap", flags, subs=[body], name=name))
        return flags

    def close_paren(self) -> None:
        if self.pos >= len(self.src) or self.src[self.pos] != ")":
            raise GoRegexError("missing closing )", self.src)
        self.pos += 1

    def repeat(
        self, items: list[Node], flags: int, lo: int, hi: int, before: int, last_repeat: str
    ) -> None:
        src = self.src
        greedy = not flags & NON_GREEDY
        if self.pos < len(src) and src[self.pos] == "?":
            self.pos += 1
            greedy = not greedy
        if last_repeat:
            raise GoRegexError(
                "invalid nested repetition operator", last_repeat + src[before : self.pos]
            )
        if not items:
            raise GoRegexError("missing argument to repetition operator", src[before : self.pos])
        sub = items.pop()
        if sub.op == "lit" and len(sub.runes) > 1:
            # Only the last character of a literal run repeats.
            items.append(Node("lit", sub.flags, runes=sub.runes[:-1]))
            sub = Node("lit", sub.flags, runes=sub.runes[-1:])
        counted = src[before] == "{"
        node = Node("rep", flags, subs=[sub], min=lo, max=hi, greedy=greedy, counted=counted)
        if counted and (lo >= 2 or hi >= 2) and not _repeat_is_valid(node, _MAX_REPEAT):
            raise GoRegexError("invalid repeat count", src[before : self.pos])
        items.append(node)

    def parse_repeat_bounds(self) -> tuple[int, int] | None:
        """``{n}``, ``{n,}`` or ``{n,m}`` at the current ``{``; None if it is a literal."""
        m = re.compile(r"\{([0-9]+)(,([0-9]*))?\}").match(self.src, self.pos)
        if not m:
            return None
        lo_text, comma, hi_text = m.group(1), m.group(2), m.group(3)
        for text in (lo_text, hi_text):
            if text and len(text) >= 2 and text[0] == "0":
                return None
        lo = int(lo_text) if len(lo_text) <= 8 else -1
        if comma is None:
            hi = lo
        elif hi_text == "":
            hi = -1
        else:
            hi = int(hi_text) if len(hi_text) <= 8 else -1  # Go's overflow guard
        text = m.group(0)
        self.pos = m.end()
        if lo < 0 or lo > _MAX_REPEAT or hi > _MAX_REPEAT or (hi >= 0 and lo > hi):
            raise GoRegexError("invalid repeat count", text)
        return lo, hi

    def parse_backslash(self, flags: int, items: list[Node]) -> None:
        src = self.src
        nxt = src[self.pos + 1 : self.pos + 2]
        if nxt == "A":
            self.pos += 2
            items.append(Node("bot", flags))
        elif nxt == "z":
            self.pos += 2
            items.append(Node("eot", flags))
        elif nxt == "b":
            self.pos += 2
            items.append(Node("wb", flags))
        elif nxt == "B":
            self.pos += 2
            items.append(Node("nwb", flags))
        elif nxt == "C":
            raise GoRegexError("invalid escape sequence", "\\C")
        elif nxt == "Q":
            end = src.find("\\E", self.pos + 2)
            text = src[self.pos + 2 :] if end < 0 else src[self.pos + 2 : end]
            self.pos = len(src) if end < 0 else end + 2
            for c in text:
                items.append(_lit(c, flags))
        elif nxt in ("p", "P"):
            items.append(self.parse_unicode_class(flags))
        elif nxt and nxt in "dDsSwW":
            self.pos += 2
            ranges = _PERL_CLASSES[nxt.lower()]
            items.append(_class(ranges, negated=nxt.isupper(), flags=flags))
        else:
            items.append(_lit(self.parse_escape(), flags))

    def parse_escape(self) -> str:
        """One escaped character at ``\\``; Go's parseEscape."""
        src = self.src
        start = self.pos
        self.pos += 1
        if self.pos >= len(src):
            raise GoRegexError("trailing backslash at end of expression", "")
        c = src[self.pos]
        self.pos += 1
        if c == "0" or (c in "1234567" and self.pos < len(src) and "0" <= src[self.pos] <= "7"):
            value = int(c)
            for _ in range(2):
                if self.pos < len(src) and "0" <= src[self.pos] <= "7":
                    value = value * 8 + int(src[self.pos])
                    self.pos += 1
                else:
                    break
            return chr(value)
        if c == "x":
            if self.pos < len(src) and src[self.pos] == "{":
                self.pos += 1
                value, digits = 0, 0
                while self.pos < len(src) and src[self.pos] != "}":
                    d = src[self.pos]
                    self.pos += 1
                    if not (d.isascii() and d in "0123456789abcdefABCDEF"):
                        raise GoRegexError("invalid escape sequence", src[start : self.pos])
                    value = value * 16 + int(d, 16)
                    digits += 1
                    if value > MAX_RUNE:
                        raise GoRegexError("invalid escape sequence", src[start : self.pos])
                if self.pos >= len(src) or digits == 0:
                    self.pos = min(self.pos + 1, len(src))
                    raise GoRegexError("invalid escape sequence", src[start : self.pos])
                self.pos += 1
                return chr(value)
            hexa = src[self.pos : self.pos + 2]
            self.pos = min(self.pos + 2, len(src))
            if len(hexa) == 2 and all(d.isascii() and d in "0123456789abcdefABCDEF" for d in hexa):
                return chr(int(hexa, 16))
            raise GoRegexError("invalid escape sequence", src[start : self.pos])
        simple = {"a": "\a", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
        if c in simple:
            return simple[c]
        if c.isascii() and not c.isalnum():
            return c
        raise GoRegexError("invalid escape sequence", src[start : self.pos])

    def parse_unicode_class(self, flags: int) -> Node:
        src = self.src
        start = self.pos
        negated = src[self.pos + 1] == "P"
        self.pos += 2
        if self.pos >= len(src):
            raise GoRegexError("invalid character class range", src[start:])
        if src[self.pos] == "{":
            end = src.find("}", self.pos)
            if end < 0:
                raise GoRegexError("invalid character class range", src[start:])
            name = src[self.pos + 1 : end]
            self.pos = end + 1
        else:
            name = src[self.pos]
            self.pos += 1
        if name.startswith("^"):
            negated = not negated
            name = name[1:]
        text = src[start : self.pos]
        if name == "Any":
            ranges = [(0, MAX_RUNE)]
        elif name in _CATEGORIES:
            ranges = list(_category_ranges(name))
        elif name in _SCRIPTS:
            raise GoRegexError("unsupported Unicode script (not available here)", text)
        else:
            raise GoRegexError("invalid character class range", text)
        return _class(ranges, negated=negated, flags=flags)

    def parse_class(self, flags: int) -> Node:
        src = self.src
        whole = src[self.pos :]
        self.pos += 1
        negated = False
        if self.pos < len(src) and src[self.pos] == "^":
            negated = True
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while self.pos >= len(src) or src[self.pos] != "]" or first:
            if self.pos >= len(src):
                raise GoRegexError("missing closing ]", whole)
            first = False
            t = src[self.pos :]
            if t.startswith("[:"):
                end = t.find(":]", 2)
                if end >= 0:
                    name = t[2:end]
                    neg = name.startswith("^")
                    name = name[1:] if neg else name
                    if name not in _POSIX_CLASSES:
                        raise GoRegexError("invalid character class range", t[: end + 2])
                    sub = _POSIX_CLASSES[name]
                    ranges += _negate(sub) if neg else sub
                    self.pos += end + 2
                    continue
            if t[:2] in ("\\p", "\\P"):
                node = self.parse_unicode_class(flags)
                ranges += _negate(node.ranges) if node.negated else node.ranges
                continue
            if len(t) >= 2 and t[0] == "\\" and t[1] in "dDsSwW":
                sub = _PERL_CLASSES[t[1].lower()]
                ranges += _negate(sub) if t[1].isupper() else sub
                self.pos += 2
                continue
            rng_start = self.pos
            lo = self.parse_class_char(whole)
            hi = lo
            if self.pos + 1 < len(src) and src[self.pos] == "-" and src[self.pos + 1] != "]":
                self.pos += 1
                hi = self.parse_class_char(whole)
                if ord(hi) < ord(lo):
                    raise GoRegexError("invalid character class range", src[rng_start : self.pos])
            ranges.append((ord(lo), ord(hi)))
        self.pos += 1
        return _class(ranges, negated=negated, flags=flags)

    def parse_class_char(self, whole: str) -> str:
        if self.pos >= len(self.src):
            raise GoRegexError("missing closing ]", whole)
        if self.src[self.pos] == "\\":
            return self.parse_escape()
        c = self.src[self.pos]
        self.pos += 1
        return c


def _repeat_is_valid(node: Node, n: int) -> bool:
    """Go's repeatIsValid: nested counted repeats make at most ``n`` copies of the
    innermost thing (``(a{100}){100}`` is 10,000: invalid)."""
    if node.op == "rep" and node.counted:
        m = node.max if node.max >= 0 else node.min
        if node.max == 0:
            return True
        if m > n:
            return False
        if m > 0:
            n //= m
    return all(_repeat_is_valid(sub, n) for sub in node.subs)


def _lit(c: str, flags: int) -> Node:
    return Node("lit", flags, runes=[c])


def _class(ranges: list[tuple[int, int]], *, negated: bool, flags: int) -> Node:
    return Node("class", flags, ranges=_normalize(ranges), negated=negated)


def _concat(items: list[Node], flags: int) -> Node:
    if not items:
        return Node("empty", flags)
    if len(items) == 1:
        return items[0]
    return Node("cat", flags, subs=list(items))


# ---------------------------------------------------------------------------
# Emitting RE2, and running it
# ---------------------------------------------------------------------------

# RE2 compiles a regex into a program of instructions; a large Unicode class costs
# one instruction per UTF-8 byte range, and a counted repeat copies its operand. A
# regex estimated above this many instructions is refused before RE2 spends time on it
# (compiling runs at about a microsecond per instruction); RE2's own memory budget
# (8 MiB a regex, its default) is the backstop.
MAX_PROGRAM = 250_000
_CACHE_SIZE = 1024  # compiled regexes kept; each holds its program and its DFA states

_ANCHOR = re2._re2.RE2.Anchor
_UNANCHORED, _ANCHOR_START, _ANCHOR_BOTH = (
    _ANCHOR.UNANCHORED,
    _ANCHOR.ANCHOR_START,
    _ANCHOR.ANCHOR_BOTH,
)


def _char(cp: int) -> str:
    c = chr(cp)
    if c.isascii() and (c.isalnum() or c == "_"):
        return c
    return f"\\x{{{cp:x}}}"


def _emit(node: Node) -> tuple[str, bool]:
    """RE2 text for `node`, and whether it is a single atom (safe to quantify)."""
    op = node.op
    if op == "lit":
        text = "".join(_char(ord(c)) for c in node.runes)
        if node.flags & FOLD:
            return f"(?i:{text})", True
        return text, len(node.runes) == 1
    if op == "class":
        if not node.ranges:
            return ("(?s:.)" if node.negated else f"[^\\x00-{_char(MAX_RUNE)}]"), True
        body = "".join(
            _char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in node.ranges
        )
        text = f"[{'^' if node.negated else ''}{body}]"
        return (f"(?i:{text})" if node.flags & FOLD else text), True
    if op == "any":
        return ("(?s:.)" if node.flags & DOT_NL else "[^\\n]"), True
    simple = _ASSERTIONS.get(op)
    if simple is not None:
        return simple, False
    if op == "empty":
        return "", False
    if op == "cap":
        return f"({_emit(node.subs[0])[0]})", True
    if op == "rep":
        text, atom = _emit(node.subs[0])
        if not atom:
            text = f"(?:{text})"
        lo, hi = node.min, node.max
        if (lo, hi) == (0, -1):
            q = "*"
        elif (lo, hi) == (1, -1):
            q = "+"
        elif (lo, hi) == (0, 1):
            q = "?"
        elif hi == -1:
            q = f"{{{lo},}}"
        elif lo == hi:
            q = f"{{{lo}}}"
        else:
            q = f"{{{lo},{hi}}}"
        return text + q + ("" if node.greedy else "?"), False
    if op == "cat":
        parts = []
        for sub in _merge_literals(node.subs):
            text, _ = _emit(sub)
            parts.append(f"(?:{text})" if sub.op == "alt" else text)
        return "".join(parts), False
    if op == "alt":
        return "|".join(_emit(sub)[0] for sub in node.subs), False
    raise AssertionError(f"BUG: unknown regex node {op}")


# Go's assertions, in RE2: \b and \B are ASCII in both, $ is \z without (?m).
_ASSERTIONS = {
    "bot": "\\A",
    "eot": "\\z",
    "bol": "(?m:^)",
    "eol": "(?m:$)",
    "wb": "\\b",
    "nwb": "\\B",
}


def _program_size(node: Node) -> int:
    """An estimate of the RE2 program's instructions for `node` (Go's calcSize, with
    RE2's cost of a class: about two instructions per range, twice that folded)."""
    op = node.op
    if op == "lit":
        return len(node.runes) * (3 if node.flags & FOLD else 1)
    if op == "class":
        return (8 + 2 * len(node.ranges)) * (2 if node.flags & FOLD else 1)
    if op == "any":
        return 8  # a character of one to four UTF-8 bytes
    if op == "cap":
        return 2 + _program_size(node.subs[0])
    if op == "rep":
        sub = _program_size(node.subs[0])
        if node.max == -1:
            return 2 + max(node.min, 1) * sub
        return node.max * sub + (node.max - node.min) + 1
    if op in ("cat", "alt"):
        return sum(_program_size(sub) for sub in node.subs) + len(node.subs)
    return 1


class Match:
    """A match in a ``str``: the part of ``re.Match`` used here, offsets in characters."""

    __slots__ = ("_data", "_spans", "_text")

    def __init__(self, text: str, data: bytes, spans: list[tuple[int, int]]) -> None:
        self._text = text
        self._data = data  # text as UTF-8; spans are byte offsets into it
        self._spans = spans

    def group(self, index: int = 0) -> str | None:
        a, b = self._spans[index]
        return None if a < 0 else self._data[a:b].decode("utf-8", "surrogatepass")

    def groups(self) -> tuple[str | None, ...]:
        return tuple(self.group(i) for i in range(1, len(self._spans)))

    def span(self, index: int = 0) -> tuple[int, int]:
        a, b = self._spans[index]
        if a < 0 or len(self._data) == len(self._text):
            return a, b
        return self._chars(a), self._chars(b)

    def start(self, index: int = 0) -> int:
        return self.span(index)[0]

    def end(self, index: int = 0) -> int:
        return self.span(index)[1]

    def _chars(self, offset: int) -> int:
        return len(self._data[:offset].decode("utf-8", "surrogatepass"))


class Pattern:
    """A Go regex compiled by RE2: matching takes time linear in the text.

    The ``re.Pattern`` methods on ``str`` (offsets in characters) serve label values and
    templates. The hot paths call the ``bytes`` methods, which take valid UTF-8 (a log
    line with invalid bytes is matched as Go reads it: each invalid byte as U+FFFD, so
    the caller converts it first) and return byte offsets. Not thread-safe to build;
    matching is (RE2 locks its DFA cache).
    """

    __slots__ = ("_capture", "_plain", "_text", "groups")

    def __init__(self, text: bytes, groups: int) -> None:
        self._text = text
        self.groups = groups
        self._capture = _compile(text, capture=True)
        # Tests and spans of the whole match need no groups: RE2 then runs its DFA only.
        self._plain = self._capture if groups == 0 else None

    def __copy__(self) -> Pattern:
        return self  # immutable, as an re.Pattern (ASTs holding one get deep-copied)

    def __deepcopy__(self, memo: dict[int, Any]) -> Pattern:
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return Pattern, (self._text, self.groups)

    def _nocapture(self) -> Any:
        if self._plain is None:
            self._plain = _compile(self._text, capture=False)
        return self._plain

    # -- bytes (UTF-8) ----------------------------------------------------------------

    def test(self, data: bytes) -> bool:
        """Whether the regex matches somewhere in ``data``."""
        return self._nocapture().Match(_UNANCHORED, data, 0, len(data))[0][0] >= 0

    def test_full(self, data: bytes) -> bool:
        """Whether the regex matches all of ``data``."""
        return self._nocapture().Match(_ANCHOR_BOTH, data, 0, len(data))[0][0] >= 0

    def find(self, data: bytes, pos: int, endpos: int) -> tuple[int, int] | None:
        """The span of the first match in ``data[pos:endpos]`` (assertions see all of
        ``data``), or None."""
        span = self._nocapture().Match(_UNANCHORED, data, pos, endpos)[0]
        return None if span[0] < 0 else span

    def spans(self, data: bytes, pos: int = 0) -> list[tuple[int, int]] | None:
        """The spans of the first match and its groups (``(-1, -1)``: the group did not
        take part) in ``data[pos:]``, or None."""
        spans = self._capture.Match(_UNANCHORED, data, pos, len(data))
        return None if spans[0][0] < 0 else spans

    # -- str ------------------------------------------------------------------------

    def search(self, text: str, pos: int = 0) -> Match | None:
        return self._match(_UNANCHORED, text, pos)

    def match(self, text: str, pos: int = 0) -> Match | None:
        return self._match(_ANCHOR_START, text, pos)

    def fullmatch(self, text: str, pos: int = 0) -> Match | None:
        return self._match(_ANCHOR_BOTH, text, pos)

    def _match(self, anchor: Any, text: str, pos: int) -> Match | None:
        data = text.encode("utf-8", "surrogatepass")
        if pos and len(data) != len(text):
            pos = len(text[:pos].encode("utf-8", "surrogatepass"))
        spans = self._capture.Match(anchor, data, min(pos, len(data)), len(data))
        return None if spans[0][0] < 0 else Match(text, data, spans)


class _ProgramTooLarge(Exception):
    pass


def _compile(text: bytes, *, capture: bool) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.never_capture = not capture
    prog = re2._re2.RE2(text, options)
    if not prog.ok():
        error = prog.error().decode(errors="replace")
        if "too large" in error:
            raise _ProgramTooLarge(error)
        raise ValueError(error)
    return prog


@dataclass(frozen=True)
class GoRegex:
    """A Go regex compiled by RE2. `group_names` has one entry per capture group
    (``""`` for unnamed ones), in order; the RE2 groups are unnamed."""

    source: str
    pattern: Pattern
    group_names: tuple[str, ...]


def parse(source: str, *, dot_nl: bool = False) -> tuple[Node, tuple[str, ...]]:
    """Parse `source` as Go does with the Perl flags (plus ``DotNL`` if asked).

    Raises :class:`GoRegexError` with Go's message for invalid regexes.
    """
    parser = _Parser(source, PERL | (DOT_NL if dot_nl else 0))
    try:
        node = parser.parse()
    except RecursionError:
        raise GoRegexError("expression nests too deeply", source) from None
    return node, tuple(parser.names)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def compile_go(source: str, *, dot_nl: bool = False) -> GoRegex:
    """Compile a Go regex for RE2.

    Prometheus label matchers use ``dot_nl=True`` with a full match (``^(?s:re)$``);
    LogQL line filters and label filters use the plain Perl flags. Raises
    :class:`GoRegexError` for what Go rejects, and for a regex too large for RE2.
    """
    node, names = parse(source, dot_nl=dot_nl)
    try:
        size = _program_size(node)
        text = _emit(node)[0]
    except RecursionError:
        raise GoRegexError("expression nests too deeply", source) from None
    if size > MAX_PROGRAM:
        raise GoRegexError("expression too large", source)
    try:
        pattern = Pattern(text.encode("utf-8", "surrogatepass"), len(names))
    except _ProgramTooLarge:
        raise GoRegexError("expression too large", source) from None
    except ValueError as exc:  # a translation gap, reported in Go's words
        raise GoRegexError("invalid or unsupported Perl syntax", source) from exc
    return GoRegex(source, pattern, names)


# ---------------------------------------------------------------------------
# Loki's label-filter simplification (decides how String() prints the filter)
# ---------------------------------------------------------------------------


def _merge_literals(subs: list[Node]) -> list[Node]:
    """Adjacent literals with the same case folding as one literal run."""
    out: list[Node] = []
    for p in subs:
        if out and p.op == "lit" and out[-1].op == "lit" and (p.flags ^ out[-1].flags) & FOLD == 0:
            out[-1] = Node("lit", out[-1].flags, runes=out[-1].runes + p.runes)
        else:
            out.append(p)
    return out


def _is_char_class(n: Node) -> bool:
    return (n.op == "lit" and len(n.runes) == 1) or n.op in ("class", "any")


def _single_rune(n: Node) -> Node | None:
    """Go turns ``[a]`` into the literal ``a`` and ``[Aa]`` into a case-folded ``a``."""
    if n.negated:
        return None
    chars = [chr(lo) for lo, hi in n.ranges if lo == hi]
    if len(chars) != len(n.ranges):
        return None
    has_case = len(chars) == 1 and chars[0].lower() != chars[0].upper()
    if len(chars) == 1:
        return Node("lit", n.flags if has_case else n.flags & ~FOLD, runes=chars)
    if len(chars) == 2 and chars[0].lower() == chars[1].lower() and chars[0] != chars[1]:
        return Node("lit", n.flags | FOLD, runes=[chars[1]])
    return None


def go_shape(n: Node) -> Node:
    """Approximate the tree Go's parser and ``Simplify`` produce: merged literal runs,
    single-character classes as literals, factored alternations, trivial repeats."""
    if n.op == "class":
        return _single_rune(n) or n
    if n.op == "cap":
        return Node("cap", n.flags, subs=[go_shape(n.subs[0])], name=n.name)
    if n.op == "rep":
        sub = go_shape(n.subs[0])
        if sub.op == "empty" or n.max == 0:
            return Node("empty", n.flags)
        if (n.min, n.max) == (1, 1):
            return sub
        return Node("rep", n.flags, subs=[sub], min=n.min, max=n.max, greedy=n.greedy)
    if n.op == "cat":
        flat: list[Node] = []
        for sub in (go_shape(s) for s in n.subs):
            flat.extend(sub.subs if sub.op == "cat" else [sub])
        return _concat(_merge_literals(flat), n.flags)
    if n.op == "alt":
        subs: list[Node] = []
        for sub in (go_shape(s) for s in n.subs):
            subs.extend(sub.subs if sub.op == "alt" else [sub])
        return _factor(subs, n.flags)
    return n


def _leading_literal(n: Node) -> tuple[list[str], int]:
    first = n.subs[0] if n.op == "cat" else n
    if first.op == "lit":
        return first.runes, first.flags & FOLD
    return [], 0


def _strip_prefix(n: Node, k: int) -> Node:
    if n.op == "cat":
        first, rest = n.subs[0], n.subs[1:]
        if len(first.runes) > k:
            rest = [Node("lit", first.flags, runes=first.runes[k:]), *rest]
        return _concat(rest, n.flags)
    if len(n.runes) > k:
        return Node("lit", n.flags, runes=n.runes[k:])
    return Node("empty", n.flags)


def _factor(subs: list[Node], flags: int) -> Node:
    # Round 1: common literal prefixes.
    out: list[Node] = []
    i = 0
    while i < len(subs):
        prefix, fold = _leading_literal(subs[i])
        j = i + 1
        common = len(prefix)
        while j < len(subs) and prefix:
            other, ofold = _leading_literal(subs[j])
            k = 0
            while k < min(common, len(other)) and other[k] == prefix[k] and ofold == fold:
                k += 1
            if k == 0:
                break
            common = k
            j += 1
        if j - i > 1 and common > 0:
            rest = [_strip_prefix(s, common) for s in subs[i:j]]
            lit = Node("lit", fold | (flags & ~FOLD), runes=prefix[:common])
            out.append(_concat([lit, _factor(rest, flags)], flags))
            i = j
        else:
            out.append(subs[i])
            i += 1
    # Round 3: runs of single characters or classes become one class.
    merged: list[Node] = []
    for s in out:
        if _is_char_class(s) and merged and _is_char_class(merged[-1]):
            merged[-1] = Node("class", flags, ranges=[(0, 0)])  # shape only: a class
        else:
            merged.append(s)
    # Round 4: runs of empty matches collapse.
    final: list[Node] = []
    for s in merged:
        if not (s.op == "empty" and final and final[-1].op == "empty"):
            final.append(s)
    if len(final) == 1:
        return final[0]
    return Node("alt", flags, subs=final)


def _clear_capture(n: Node) -> Node:
    while n.op == "cap":
        n = n.subs[0]
    return n


def _is_any_star(n: Node, op: str = "rep") -> bool:
    return (
        n.op == op
        and n.min == 0
        and n.max == -1
        and n.subs[0].op == "any"
        and not n.subs[0].flags & DOT_NL
    )


def _simplifies(n: Node) -> bool:
    n = _clear_capture(n)
    if n.op == "alt":
        return all(_simplifies(s) for s in n.subs)
    if n.op == "cat":
        return _simplifies_concat(n, None)
    if n.op in ("lit", "empty"):
        return True
    if n.op == "rep" and n.max == -1 and n.min in (0, 1):
        return n.subs[0].op == "any" and not n.subs[0].flags & DOT_NL
    return False


def _simplifies_concat(n: Node, base: list[str] | None) -> bool:
    subs = [s for s in (_clear_capture(s) for s in n.subs) if s.op != "empty"]
    if len(subs) > 3:
        return False
    literals = 0
    base_fold = False
    alternates = False
    for sub in subs:
        if sub.op == "lit":
            if literals:
                return False
            literals += 1
            base = (base or []) + sub.runes
            base_fold = bool(sub.flags & FOLD)
        elif sub.op == "alt" and base is not None:
            for alt in sub.subs:
                if not base_fold and alt.flags & FOLD:
                    return False
                if alt.op == "cat":
                    if not _simplifies_concat(alt, base):
                        return False
                elif not (alt.op in ("lit", "empty") or _is_any_star(alt)):
                    return False
            alternates = True
        elif not _is_any_star(sub):
            return False
    return alternates or base is not None


def simplifies_to_literal_filters(source: str) -> bool:
    """Whether Loki's simplifier replaces this label-filter regex by literal filters.

    When it does not, Loki keeps a regexp filter and ``String()`` prints the label
    filter's value in backticks.
    """
    try:
        node, _ = parse(source)
        return _simplifies(go_shape(node))
    except (GoRegexError, RecursionError):
        return True


# Replacement templates (regexReplaceAll, label_replace)


def _extract(template: str) -> tuple[str, int, str] | None:
    """A ``name``, ``{name}`` or group number after a ``$`` (Go's ``extract``)."""
    brace = template[:1] == "{"
    s = template[1:] if brace else template
    i = 0
    while i < len(s) and (s[i].isalpha() or s[i].isdecimal() or s[i] == "_"):
        i += 1
    if i == 0:
        return None
    name = s[:i]
    if brace:
        if s[i : i + 1] != "}":
            return None
        i += 1
    num = int(name) if name.isascii() and name.isdigit() and len(name) <= 8 else -1
    if name[0] == "0" and len(name) > 1:
        num = -1
    return name, num, s[i:]


def expand(template: str, m: Match, names: tuple[str, ...]) -> str:
    """Go's ``Regexp.Expand`` of `template` for match `m` of a :class:`GoRegex` whose
    `group_names` are `names`: ``$1``, ``${1}``, ``$name``, ``${name}``, ``$$``; an
    unknown group expands to nothing, a malformed ``$`` stays as it is."""
    out = []
    while (i := template.find("$")) >= 0:
        out.append(template[:i])
        template = template[i + 1 :]
        if template[:1] == "$":
            out.append("$")
            template = template[1:]
            continue
        found = _extract(template)
        if found is None:
            out.append("$")
            continue
        name, num, template = found
        if num >= 0:
            if num <= len(names) and m.group(num) is not None:
                out.append(m.group(num))
        else:
            for index, group_name in enumerate(names, 1):
                if group_name == name and m.group(index) is not None:
                    out.append(m.group(index))
                    break
    out.append(template)
    return "".join(out)
