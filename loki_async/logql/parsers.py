"""Byte-level building blocks of LogQL pipelines, as Loki's ``pkg/logql/log`` behaves.

Each piece reproduces one observable behaviour of Grafana Loki 3.7 (an AGPL project;
this module is written from its documented and tested behaviour and shares no code).
Two of Loki's dependencies are followed more closely, because their quirks are what
Loki returns: the logfmt decoder (go-logfmt, MIT) and the JSON scanner (buger/jsonparser
as forked by Grafana, MIT); their behaviour is re-implemented here in Python.

* text decoding with Go's rules: an invalid UTF-8 byte is one U+FFFD
  (:func:`decode`), and parsed label values carry a space where the text had
  U+FFFD (:func:`clean_value`);
* label-name sanitising (``sanitizeLabelKey``, the JSON key flattening, and the
  structured-metadata name normalisation);
* the ``logfmt`` decoder: a compiled-regex fast path for well-formed lines and a
  faithful state machine (with Loki's error texts) for everything else;
* the JSON reader: ``orjson``/``json`` fast paths and a port of the lenient
  ``jsonparser`` scanner for what they reject, so error details and partial results
  match (``Value looks like object, but can't find closing '}' symbol``);
* the ``json a="b.c[0]"`` and ``logfmt a="b"`` expression grammars with goyacc's
  messages;
* the pattern matcher behind ``| pattern`` and ``|>``;
* the ``ip("...")`` matcher (single address, range, CIDR) and its line scanner;
* Loki's regex simplifier, which turns literal-like regexes into substring or
  equality tests (including its label-filter quirk: ``a.*`` tests a substring).
"""

from __future__ import annotations

import codecs
import ipaddress
import itertools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import orjson

from loki_async.logql import regex as go_regex
from loki_async.logql.regex import DOT_NL, FOLD, GoRegexError, Node

# ---------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------


def _rune_error(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    # Go decodes every byte of an invalid sequence as its own U+FFFD.
    return "\ufffd" * (exc.end - exc.start), exc.end


codecs.register_error("loki-rune-error", _rune_error)


def decode(b: bytes) -> str:
    """`b` as Go reads a string: valid UTF-8 as is, each invalid byte as U+FFFD."""
    try:
        return b.decode()
    except UnicodeDecodeError:
        return b.decode("utf-8", "loki-rune-error")


def clean_value(s: str) -> str:
    """A parsed label value as Loki stores it: U+FFFD (rejected by Prometheus) becomes
    a space."""
    return s.replace("\ufffd", " ") if "\ufffd" in s else s


# Go's unicode.IsSpace (strings.TrimSpace); Python's isspace() also has \x1c-\x1f.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"  # noqa: E501
_NOT_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")


@lru_cache(maxsize=1 << 14)
def sanitize_key(key: str) -> str:
    """Loki's ``sanitizeLabelKey(key, true)``: trimmed, a leading digit prefixed with
    ``_``, every other character outside ``[a-zA-Z0-9_]`` replaced by ``_``."""
    key = key.strip(_GO_SPACE)
    if key and "0" <= key[0] <= "9":
        key = "_" + key
    return _NOT_LABEL_CHAR.sub("_", key)


def append_sanitized(prefix: str, key: str) -> str:
    """``prefix`` extended with a nested JSON key the way Loki flattens them: trimmed,
    invalid characters as ``_``, a leading digit prefixed with ``_`` only at the start
    of the name."""
    key = key.strip(_GO_SPACE)
    if not key:
        return prefix
    if not prefix and "0" <= key[0] <= "9":
        prefix = "_"
    return prefix + _NOT_LABEL_CHAR.sub("_", key)


@lru_cache(maxsize=1 << 12)
def normalize_label(name: str) -> str:
    """The structured-metadata name normalisation of Loki's pipeline (the OTLP
    translator's ``NormalizeLabel``): non-alphanumerics become ``_``, a leading digit
    gets ``key_``, a single leading ``_`` gets ``key``."""
    if not name:
        return name
    if not all(c.isalpha() or c.isdecimal() for c in name):
        name = "".join(c if c.isalpha() or c.isdecimal() else "_" for c in name)
    if "0" <= name[0] <= "9":
        return "key_" + name
    if name[0] == "_" and not name.startswith("__"):
        return "key" + name
    return name


_GO_LOWER = {0x130: "i"}  # Go's simple lower-casing maps İ to i; Python gives "i̇".


def go_lower(s: str) -> str:
    """``unicode.ToLower`` applied rune by rune."""
    return s.translate(_GO_LOWER).lower() if not s.isascii() else s.lower()


def contains_fold(haystack: bytes, needle: str) -> bool:
    """Loki's case-insensitive substring test; `needle` is already lower case."""
    if haystack.isascii():
        return needle.encode() in haystack.lower() if needle.isascii() else not needle
    return needle in go_lower(decode(haystack))


# ---------------------------------------------------------------------------
# logfmt
# ---------------------------------------------------------------------------

_LF_KEY = r"[!#-<>-~]+"  # printable ASCII but " and =
_LF_PLAIN = r'[^\x00-\x20="]*'
# A line made only of ASCII keys, plain values and quoted values without escapes,
# separated by whitespace: the fast path, on which the decoder cannot fail. (The check
# has no capture groups: it runs twice as fast.)
_LF_SIMPLE_LINE = re.compile(
    rf'(?:[\x00-\x20]*{_LF_KEY}(?:="[^"\\]*"|={_LF_PLAIN})?(?=[\x00-\x20]|\Z))*[\x00-\x20]*'
)
_LF_PAIRS = re.compile(rf'({_LF_KEY})(?:="([^"\\]*)"|=({_LF_PLAIN}))?')


def logfmt_fast(text: str) -> list[tuple[str, str, str]] | None:
    """``(key, quoted value, unquoted value)`` of every pair of a simple line, or None
    when the line needs the full decoder."""
    if _LF_SIMPLE_LINE.fullmatch(text) is None:
        return None
    return _LF_PAIRS.findall(text)


def _unquote_logfmt(s: bytes) -> bytes | None:
    """A quoted logfmt value with escapes, decoded as Loki's (encoding/json based)
    ``unquoteBytes``; None when invalid."""
    out = bytearray()
    body = s[1:-1]
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c == 0x5C:  # backslash
            i += 1
            if i >= n:
                return None
            e = body[i]
            simple = _LF_ESCAPES.get(e)
            if simple is not None:
                out.append(simple)
                i += 1
            elif e == 0x75:  # u
                r = _hex4(body, i + 1)
                if r < 0:
                    return None
                i += 5
                if 0xD800 <= r < 0xE000:
                    r2 = _hex4(body, i + 2) if body[i : i + 2] == b"\\u" else -1
                    if 0xD800 <= r < 0xDC00 and 0xDC00 <= r2 < 0xE000:
                        r = 0x10000 + ((r - 0xD800) << 10) + (r2 - 0xDC00)
                        i += 6
                    else:
                        r = 0xFFFD
                out += chr(r).encode()
            else:
                return None
        elif c == 0x22:
            return None
        else:
            j = i
            while j < n and body[j] not in (0x5C, 0x22):
                j += 1
            out += decode(body[i:j]).encode()
            i = j
    return bytes(out)


_LF_ESCAPES = {0x22: 0x22, 0x5C: 0x5C, 0x2F: 0x2F, 0x27: 0x27, 0x62: 8, 0x66: 12}
_LF_ESCAPES |= {0x6E: 10, 0x72: 13, 0x74: 9}


def _hex4(b: bytes, i: int) -> int:
    h = b[i : i + 4]
    if len(h) != 4 or not all(c in b"0123456789abcdefABCDEF" for c in h):
        return -1
    return int(h, 16)


def _go_rune_q(c: int) -> str:
    from loki_async.logql.literals import go_quote_rune

    return go_quote_rune(chr(c))


LogfmtPair = tuple[bool, bytes, bytes, str]


def logfmt_scan(line: bytes) -> list[LogfmtPair]:
    """The full logfmt decoder (the slow path), byte for byte as Loki's: one
    ``(ok, key, value, error)`` per ``ScanKeyval`` call, values ``b""`` when absent;
    `error` is the decoder's error set by a failing call (Loki reports it in strict
    mode, where parsing stops at the first failure)."""
    pairs: list[LogfmtPair] = []
    n = len(line)
    pos = 0

    def error(msg: str, at: int) -> str:
        return f"logfmt syntax error at pos {at + 1} : {msg}"

    while pos < n:
        while pos < n and line[pos] <= 0x20:  # garbage
            pos += 1
        if pos >= n:
            pairs.append((False, b"", b"", ""))
            break
        start = pos
        multibyte = False
        key = value = b""
        err = ""
        while True:
            if pos >= n:
                key = line[start:pos]
                if multibyte and "\ufffd" in decode(key):
                    err = error("invalid key", pos)
                break
            c = line[pos]
            if c == 0x3D:  # '='
                key = line[start:pos]
                if not key:
                    err = error(f"unexpected {_go_rune_q(c)}", pos)
                elif multibyte and "\ufffd" in decode(key):
                    err = error("invalid key", pos)
                if err:
                    while pos < n and line[pos] > 0x20:  # skip the value
                        pos += 1
                    break
                pos += 1
                if pos >= n or line[pos] <= 0x20:
                    break
                if line[pos] == 0x22:
                    value, pos, err = _logfmt_qvalue(line, pos)
                    break
                vstart = pos
                while pos < n and line[pos] > 0x20:
                    if line[pos] in (0x3D, 0x22):
                        err = error(f"unexpected {_go_rune_q(line[pos])}", pos)
                        while pos < n and line[pos] > 0x20:
                            pos += 1
                        break
                    pos += 1
                if not err:
                    value = line[vstart:pos]
                break
            if c == 0x22:
                err = error(f"unexpected {_go_rune_q(c)}", pos)
                while pos < n and line[pos] > 0x20:
                    pos += 1
                break
            if c <= 0x20:
                key = line[start:pos]
                if multibyte and "\ufffd" in decode(key):
                    err = error("invalid key", pos)
                break
            if c >= 0x80:
                multibyte = True
            pos += 1
        pairs.append((not err, key, value, err))
    return pairs


def _logfmt_qvalue(line: bytes, pos: int) -> tuple[bytes, int, str]:
    """A quoted value starting at ``line[pos] == '"'``: (value, new pos, error)."""
    n = len(line)
    has_esc = esc = False
    j = pos + 1
    while j < n:
        c = line[j]
        if esc:
            esc = False
        elif c == 0x5C:
            has_esc = esc = True
        elif c == 0x22:
            end = j + 1
            if has_esc:
                v = _unquote_logfmt(line[pos:end])
                if v is None:
                    return b"", end, f"logfmt syntax error at pos {end + 1} : invalid quoted value"
                return v, end, ""
            return line[pos + 1 : j], end, ""
        j += 1
    return b"", n, f"logfmt syntax error at pos {n + 1} : unterminated quoted value"


class ExpressionError(ValueError):
    """A ``json``/``logfmt`` extraction expression Loki cannot parse."""


def _yacc_error(found: str, expected: Sequence[str]) -> str:
    msg = f"syntax error: unexpected {found}"
    if expected:
        msg += ", expecting " + " or ".join(expected)
    return msg


def parse_logfmt_expression(text: str) -> list[str]:
    """The path of ``| logfmt id="expression"`` (a field, then quoted strings)."""
    tokens, lex_err = _expr_tokens(text, json_expr=False)
    path: list[str] = []
    for kind, value in tokens:
        if not path:
            if kind not in ("FIELD", "STRING"):
                raise ExpressionError(_yacc_error(kind, ("STRING", "FIELD")))
        elif kind != "STRING":
            raise ExpressionError(_yacc_error(kind, ()))
        path.append(str(value))
    if not path:
        raise ExpressionError(_yacc_error("$end", ("STRING", "FIELD")))
    if lex_err:
        raise ExpressionError(lex_err)
    return path


def parse_json_expression(text: str) -> list[str | int]:
    """The path of ``| json id="expression"``: fields, ``["key"]`` and ``[index]``."""
    tokens, lex_err = _expr_tokens(text, json_expr=True)
    tokens.append(("$end", None))
    path: list[str | int] = []
    i = 0

    def fail(kind: str, expected: Sequence[str]) -> ExpressionError:
        return ExpressionError(_yacc_error(kind, expected))

    while True:
        kind, value = tokens[i]
        if not path and kind == "FIELD":
            path.append(str(value))
            i += 1
        elif kind == "LSB":
            kind2, value2 = tokens[i + 1]
            if kind2 not in ("STRING", "INDEX"):
                raise fail(kind2, ("STRING", "INDEX"))
            if tokens[i + 2][0] != "RSB":
                raise fail(tokens[i + 2][0], ("RSB",))
            path.append(value2)  # type: ignore[arg-type]
            i += 3
        elif path and kind == "DOT":
            if tokens[i + 1][0] != "FIELD":
                raise fail(tokens[i + 1][0], ("FIELD",))
            path.append(str(tokens[i + 1][1]))
            i += 2
        elif not path:
            raise fail(kind, ("LSB", "FIELD"))
        elif kind == "$end":
            break
        else:
            raise fail(kind, ())
    if lex_err:
        raise ExpressionError(lex_err)
    return path


def _expr_tokens(text: str, *, json_expr: bool) -> tuple[list[tuple[str, object]], str]:
    """The tokens of an extraction expression up to the end or the first scanner error
    (the scanner then reports end of input, as Loki's does)."""
    out: list[tuple[str, object]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\x00":
            break
        if c in " \t\n":
            i += 1
            continue
        if json_expr and "0" <= c <= "9":
            j = i
            while j < n and text[j] not in " \t\n.]":
                if not "0" <= text[j] <= "9":
                    return out, f"non-integer value: {text[j]}"
                j += 1
            if j < n and text[j] == ".":
                return out, "cannot use float as array index"
            if j >= n:
                return out, "non-integer value: \x00"
            out.append(("INDEX", int(text[i:j])))
            i = j
            continue
        if json_expr and c in "[].":
            out.append(({"[": "LSB", "]": "RSB", ".": "DOT"}[c], None))
            i += 1
        elif c.isascii() and (c.isalpha() or c == "_"):
            j = i + 1
            while j < n and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
                j += 1
            out.append(("FIELD", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] not in '"]\x00':
                j += 1
            out.append(("STRING", text[i + 1 : j]))
            i = j + 1 if j < n and text[j] != "\x00" else j
        else:
            return out, f"unexpected char {c}"
    return out, ""


# ---------------------------------------------------------------------------
# JSON (jsonparser semantics)
# ---------------------------------------------------------------------------

J_NOT_EXIST, J_STRING, J_NUMBER, J_OBJECT, J_ARRAY, J_BOOLEAN, J_NULL, J_UNKNOWN = range(8)

ERR_MALFORMED_JSON = "Malformed JSON error"
ERR_UNKNOWN_VALUE = "Unknown value type"
ERR_MALFORMED_STRING = "Value is string, but can't find closing '\"' symbol"
ERR_MALFORMED_ARRAY = "Value is array, but can't find closing ']' symbol"
ERR_MALFORMED_OBJECT = "Value looks like object, but can't find closing '}' symbol"
ERR_STRING_ESCAPE = "Encountered an invalid escape sequence in a string"

_NOT_WS = re.compile(rb"[^ \n\r\t]")
_TOKEN_END = re.compile(rb"[ \n\r\t,}\]]")

# Fast paths: numbers as their raw text (Loki keeps it), NaN/Infinity rejected.
_JSON_RAW = json.JSONDecoder(
    parse_float=str, parse_int=str, parse_constant=lambda c: _reject(c), strict=True
)


def _reject(c: str) -> None:
    raise ValueError(c)


def _next_token(d: bytes, i: int) -> int:
    m = _NOT_WS.search(d, i)
    return m.start() if m else -1


def _string_end(d: bytes, i: int) -> tuple[int, bool]:
    """End (after the closing quote) of a string whose content starts at `i`, or -1;
    and whether a backslash was seen."""
    escaped = False
    n = len(d)
    j = i
    while j < n:
        q = d.find(b'"', j)
        if q < 0:
            return -1, escaped or d.find(b"\\", j) >= 0
        if not escaped and d.find(b"\\", j, q) < 0:
            return q + 1, False
        escaped = True
        k = q - 1
        while k >= i and d[k] == 0x5C:
            k -= 1
        if (q - 1 - k) % 2 == 0:
            return q + 1, True
        j = q + 1
    return -1, escaped


def _block_end(d: bytes, i: int, open_c: int, close_c: int) -> int:
    level = 0
    n = len(d)
    while i < n:
        c = d[i]
        if c == 0x22:
            se, _ = _string_end(d, i + 1)
            if se == -1:
                return -1
            i = se - 1
        elif c == open_c:
            level += 1
        elif c == close_c:
            level -= 1
            if level == 0:
                return i + 1
        i += 1
    return -1


def _get(d: bytes, off: int) -> tuple[bytes, int, int, str]:
    """jsonparser's ``Get`` without keys: (value, type, end offset, error)."""
    o = _next_token(d, off)
    if o == -1:
        return b"", J_NOT_EXIST, -1, ERR_MALFORMED_JSON
    c = d[o]
    if c == 0x22:
        se, _ = _string_end(d, o + 1)
        if se == -1:
            return b"", J_STRING, o, ERR_MALFORMED_STRING
        return d[o + 1 : se - 1], J_STRING, se, ""
    if c == 0x5B or c == 0x7B:
        e = _block_end(d, o, c, c + 2)
        if e == -1:
            return (
                b"",
                J_ARRAY if c == 0x5B else J_OBJECT,
                o,
                (ERR_MALFORMED_ARRAY if c == 0x5B else ERR_MALFORMED_OBJECT),
            )
        return d[o:e], J_ARRAY if c == 0x5B else J_OBJECT, e, ""
    m = _TOKEN_END.search(d, o)
    e = m.start() if m else len(d)
    v = d[o:e]
    if c in b"tf":
        if v in (b"true", b"false"):
            return v, J_BOOLEAN, e, ""
    elif c in b"un":
        if v == b"null":
            return v, J_NULL, e, ""
    elif c in b"0123456789-":
        return v, J_NUMBER, e, ""
    return b"", J_UNKNOWN, o, ERR_UNKNOWN_VALUE


_JP_ESCAPES = {0x22: 0x22, 0x5C: 0x5C, 0x2F: 0x2F, 0x62: 8, 0x66: 12, 0x6E: 10, 0x72: 13}
_JP_ESCAPES[0x74] = 9


def json_unescape(b: bytes) -> bytes | None:
    """jsonparser's ``Unescape``; None for an invalid escape sequence."""
    if b"\\" not in b:
        return b
    out = bytearray()
    i, n = 0, len(b)
    while i < n:
        j = b.find(b"\\", i)
        if j < 0:
            out += b[i:]
            break
        out += b[i:j]
        if j + 1 >= n:
            return None
        e = b[j + 1]
        simple = _JP_ESCAPES.get(e)
        if simple is not None:
            out.append(simple)
            i = j + 2
            continue
        if e != 0x75:
            return None
        r = _hex4(b, j + 2)
        if r < 0:
            return None
        if r > 0xFFFF or not 0xD800 <= r <= 0xDFFF:
            out += chr(r).encode()
            i = j + 6
            continue
        r2 = _hex4(b, j + 8) if b[j + 6 : j + 8] == b"\\u" else -1
        if r2 < 0xDC00:
            return None
        r = ((r - 0xD800) << 10) + (r2 - 0xDC00) + 0x10000
        out += (chr(r) if 0 <= r <= 0x10FFFF and not 0xD800 <= r <= 0xDFFF else "\ufffd").encode()
        i = j + 12
    return bytes(out)


def json_string_value(raw: bytes) -> str:
    """Loki's ``unescapeJSONString``: "" for a bad escape, U+FFFD as a space."""
    u = json_unescape(raw)
    return "" if u is None else clean_value(decode(u))


def json_scalar(value: bytes, typ: int) -> str:
    """A scalar JSON value as a label value (Loki's ``readValue``)."""
    if typ == J_STRING:
        return json_string_value(value)
    if typ == J_NUMBER:
        return decode(value)
    if typ == J_BOOLEAN:
        return "true" if value == b"true" else "false"
    return ""


ObjectCallback = Callable[[bytes, bytes, int], str]


def object_each(d: bytes, callback: ObjectCallback) -> str:
    """jsonparser's ``ObjectEach`` (Loki's fork): calls ``callback(key, value, type)``
    per entry, in order, until the end of the object or an error; returns the error
    text or "". A comma right before the closing brace is an error, unless whitespace
    separates them (the fork's quirk)."""
    o = _next_token(d, 0)
    if o == -1 or d[o] != 0x7B:
        return ERR_MALFORMED_OBJECT
    o = _next_token(d, o + 1)
    if o == -1:
        return ERR_MALFORMED_JSON
    if d[o] == 0x7D:
        return ""
    n = len(d)
    last_comma = -1
    while o < n:
        c = d[o]
        if c == 0x7D:
            return ERR_MALFORMED_OBJECT if last_comma != -1 and last_comma + 1 == o else ""
        if c != 0x22:
            return ERR_MALFORMED_OBJECT
        o += 1
        se, esc = _string_end(d, o)
        if se == -1:
            return ERR_MALFORMED_JSON
        key = d[o : se - 1]
        o = se
        if esc:
            k = json_unescape(key)
            if k is None:
                return ERR_STRING_ESCAPE
            key = k
        o = _next_token(d, o)
        if o == -1 or d[o] != 0x3A:
            return ERR_MALFORMED_JSON
        value, typ, end, err = _get(d, o + 1)
        if err:
            return err
        err = callback(key, value, typ)
        if err:
            return err
        o = _next_token(d, end)
        if o == -1:
            return ERR_MALFORMED_ARRAY
        if d[o] == 0x7D:
            return ""
        if d[o] != 0x2C:
            return ERR_MALFORMED_OBJECT
        last_comma = o
        t = _next_token(d, o + 1)
        if t == -1:
            return ERR_MALFORMED_ARRAY
        if t - (o + 1) > 0:
            last_comma += t - (o + 1) - 1
        o = t
    return ERR_MALFORMED_OBJECT


def _array_items(d: bytes, start: int) -> tuple[list[tuple[bytes, int, int]], int, str]:
    """jsonparser's ``ArrayEach`` over the array at ``d[start]``: its elements as
    ``(value, type, value offset relative to start)``, the offset relative to `start`
    where it stopped, and the error."""
    items: list[tuple[bytes, int, int]] = []
    if start >= len(d):
        return items, -1, ERR_MALFORMED_OBJECT
    first = _next_token(d, start)
    if first == -1:
        return items, -1, ERR_MALFORMED_JSON
    off = _next_token(d, first + 1)
    if off == -1:
        return items, first + 1 - start, ERR_MALFORMED_JSON
    if d[off] == 0x5D:
        return items, off - start, ""
    while True:
        v, typ, end, err = _get(d, off)
        if err:
            return items, off - start, err
        if typ != J_NOT_EXIST:
            items.append((v, typ, end - len(v) - start))
        off = _next_token(d, end)
        if off == -1:
            return items, end - start, ERR_MALFORMED_ARRAY
        if d[off] == 0x5D:
            return items, off - start, ""
        if d[off] != 0x2C:
            return items, off - start, ERR_MALFORMED_ARRAY
        off += 1


def _atoi(text: str) -> int | None:
    """Go's ``strconv.Atoi``: optional sign, ASCII digits only."""
    body = text[1:] if text[:1] in "+-" else text
    if not body or not body.isascii() or not body.isdigit():
        return None
    return int(text)


def _path_index(p: str) -> int | None:
    """The index of a ``[N]`` path element (0 when N is not a number, as Loki's
    ignored Atoi error gives); None for a key."""
    if p[:1] != "[":
        return None
    return _atoi(p[1:-1]) or 0


def _read_key(d: bytes, i: int) -> tuple[int, bytes | None, bool]:
    """At ``d[i] == '"'``: (index of the token after the string, the unescaped
    string or None when malformed, whether a colon follows)."""
    se, esc = _string_end(d, i + 1)
    if se == -1:
        return -1, None, False
    raw = d[i + 1 : se - 1]
    vo = _next_token(d, se)
    if vo == -1:
        return -1, None, False
    if d[vo] != 0x3A:
        return vo, raw, False
    if esc:
        k = json_unescape(raw)
        if k is None:
            return -1, None, True
        raw = k
    return vo, raw, True


def _search_keys(d: bytes, keys: Sequence[str]) -> int:
    """jsonparser's ``searchKeys`` (Loki's fork): offset of the value at `keys` in
    `d`, or -1."""
    if not keys:
        return 0
    key_level = level = i = 0
    ln, lk = len(d), len(keys)
    last_matched = True
    while i < ln:
        c = d[i]
        if c == 0x22:
            i, key, colon = _read_key(d, i)
            if i == -1:
                return -1
            if not colon:
                i -= 1
            else:
                if level < 1 or key is None or level > lk:
                    return -1
                if decode(key) == keys[level - 1]:
                    last_matched = True
                    if key_level == level - 1:
                        key_level += 1
                        if key_level == lk:
                            return i + 1
                else:
                    last_matched = False
        elif c == 0x7B:
            if last_matched:
                level += 1
            else:
                end = _block_end(d, i, 0x7B, 0x7D)
                if end == -1:
                    return -1
                i = end - 1
        elif c == 0x7D:
            level -= 1
            if level == key_level:
                key_level -= 1
        elif c == 0x5B:
            want = keys[level] if key_level == level else ""
            if want[:1] == "[":
                if len(want) < 3 or want[-1] != "]":
                    return -1
                index = _atoi(want[1:-1])
                if index is None:
                    return -1
                items, _, _ = _array_items(d, i)
                if not 0 <= index < len(items):
                    return -1
                value, typ, voff = items[index]
                if typ == J_STRING:  # the fork keeps the quotes of a string element
                    voff -= 2
                    value = d[i + voff : i + voff + len(value) + 2]
                sub = _search_keys(value, keys[level + 1 :])
                if sub < 0:
                    return -1
                return i + voff + sub
            skip = _block_end(d, i, 0x5B, 0x5D)
            if skip == -1:
                return -1
            i = skip - 1
        elif c == 0x3A:
            return -1
        i += 1
    return -1


def each_key(d: bytes, paths: Sequence[Sequence[str]]) -> list[tuple[int, bytes, int, str]]:
    """jsonparser's ``EachKey`` (Loki's fork): ``(path index, value, type, error)`` for
    each path found, in the order the scan meets them; a path index of -1 carries a
    document error."""
    results: list[tuple[int, bytes, int, str]] = []
    matched: set[int] = set()
    max_path = max((len(p) for p in paths), default=0)
    buf = [""] * max_path
    level = i = 0
    ln = len(d)
    while i < ln:
        c = d[i]
        if c == 0x22:
            i, raw, colon = _read_key(d, i)
            if i == -1 or raw is None:
                return results
            if not colon:
                i -= 1
            else:
                match = -1
                key = decode(raw)
                if max_path >= level:
                    if level < 1:
                        results.append((-1, b"", J_UNKNOWN, ERR_MALFORMED_JSON))
                        return results
                    buf[level - 1] = key
                    for pi, p in enumerate(paths):
                        if (
                            len(p) != level
                            or pi in matched
                            or key != p[level - 1]
                            or list(p[:level]) != buf[:level]
                        ):
                            continue
                        match = pi
                        matched.add(pi)
                        v, dt, _, e = _get(d, i + 1)
                        results.append((pi, v, dt, e))
                        if len(matched) == len(paths):
                            break
                    if len(matched) == len(paths):
                        return results
                if match == -1:
                    to = _next_token(d, i + 1)
                    i += to - (i + 1) if to != -1 else -1
                    if d[i] == 0x7B:
                        skip = _block_end(d, i, 0x7B, 0x7D)
                        i += (skip - i) + 1 if skip != -1 else 0
                if i < ln and d[i] in b'{}["':
                    i -= 1
        elif c == 0x7B:
            level += 1
        elif c == 0x7D:
            level -= 1
        elif c == 0x5B:
            if level < 0:
                results.append((-1, b"", J_UNKNOWN, ERR_MALFORMED_JSON))
                return results
            wanted: dict[int, list[int]] = {}
            for pi, p in enumerate(paths):
                if len(p) < level + 1 or pi in matched or list(p[:level]) != buf[:level]:
                    continue
                index = _path_index(p[level])
                if index is not None and len(p[level]) >= 2:
                    wanted.setdefault(index, []).append(pi)
            if wanted:
                level += 1
                items, arr_off, _ = _array_items(d, i)
                for cur, (v, typ, _o) in enumerate(items):
                    for pi in wanted.get(cur, ()):
                        of = _search_keys(v, paths[pi][level:])
                        matched.add(pi)
                        if of == -1:
                            continue
                        if typ == J_STRING:
                            results.append((pi, v[of:], typ, ""))
                        else:
                            gv, gt, _, ge = _get(v, of)
                            results.append((pi, gv, gt, ge))
                if len(matched) == len(paths):
                    return results
                i += arr_off - 1
            else:
                skip = _block_end(d, i, 0x5B, 0x5D)
                if skip == -1:
                    return results
                i = skip - 1
        elif c == 0x5D:
            level -= 1
        i += 1
    return results


def json_loads(line: bytes) -> object:
    """Strict JSON by ``orjson`` (numbers as Python numbers: for readers that only
    want strings). Raises ValueError when the line is not strict JSON."""
    return orjson.loads(line)


def json_document(line: bytes) -> object | None:
    """The line as strict JSON with every number as its raw text (Loki keeps numbers
    as written, which orjson cannot give), read by the C decoder; bytes after the
    value are ignored, as jsonparser ignores them. None when the line is not strict
    JSON (callers then use the jsonparser port)."""
    try:
        text = line.decode()
        start = len(text) - len(text.lstrip(" \t\n\r"))
        return _JSON_RAW.raw_decode(text, start)[0]
    except ValueError:
        return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(v: str, suspicious: bool) -> str:
    """A decoded JSON string as a label value. `suspicious` lines (escapes or U+FFFD)
    need the checks: lone surrogates made jsonparser fail (""), U+FFFD is a space."""
    if suspicious:
        if _SURROGATE.search(v):
            return ""
        return clean_value(v)
    return v


# ---------------------------------------------------------------------------
# Patterns (| pattern, |>)
# ---------------------------------------------------------------------------

_CAPTURE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


class PatternError(ValueError):
    """A pattern Loki refuses, with its message."""


def pattern_nodes(text: str) -> list[tuple[bool, str]]:
    """Split a pattern into ``(is_capture, literal text or capture name)`` nodes."""
    nodes: list[tuple[bool, str]] = []
    pos = 0
    for m in _CAPTURE.finditer(text):
        if m.start() > pos:
            nodes.append((False, text[pos : m.start()]))
        nodes.append((True, m.group(1)))
        pos = m.end()
    if pos < len(text):
        nodes.append((False, text[pos:]))
    return nodes


class PatternMatcher:
    """Loki's pattern matcher: literals found left to right with ``bytes.find``."""

    __slots__ = ("literals", "names", "nodes")

    def __init__(self, nodes: list[tuple[bool, str]]) -> None:
        # Literals are Go bytes: "\xff" is the byte 0xff (a lone surrogate here).
        self.nodes = [(cap, v if cap else v.encode("utf-8", "surrogateescape")) for cap, v in nodes]
        self.names = [v for cap, v in nodes if cap and v != "_"]
        self.literals = [v for cap, v in self.nodes if not cap]

    @classmethod
    def for_line_filter(cls, text: str) -> PatternMatcher:
        nodes = pattern_nodes(text) if text else []
        for a, b in itertools.pairwise(nodes):
            if a[0] and b[0]:
                raise PatternError(
                    f"found consecutive capture '<{a[1]}><{b[1]}>': invalid expression"
                )
        for cap, name in nodes:
            if cap and name != "_":
                raise PatternError(f"named captures are not allowed: found '<{name}>'")
        return cls(nodes)

    def matches(self, line: bytes) -> list[bytes]:
        """The named captures of `line` (Loki's ``Matches``), possibly fewer than
        `names`: a missing literal ends the match with the rest of the line."""
        if not line or not self.nodes:
            return []
        nodes = self.nodes
        out: list[bytes] = []
        pos = 0
        k = 0
        if not nodes[0][0]:
            lit = nodes[0][1]
            assert isinstance(lit, bytes)
            if not line.startswith(lit):
                return []
            pos = len(lit)
            k = 1
        if k == len(nodes):
            return []
        while k < len(nodes):
            name = nodes[k][1]
            if k + 1 == len(nodes):
                if name != "_":
                    out.append(line[pos:])
                return out
            lit = nodes[k + 1][1]
            assert isinstance(lit, bytes)
            k += 2
            i = line.find(lit, pos)
            if i < 0:
                if name != "_":
                    out.append(line[pos:])
                return out
            if name != "_":
                out.append(line[pos:i])
            pos = i + len(lit)
        return out

    def test(self, line: bytes) -> bool:
        """Whether `line` matches (Loki's ``Test``, used by ``|>``): no capture may be
        empty, a trailing literal must end the line."""
        nodes = self.nodes
        if not line or not nodes:
            return not line and not nodes
        off = 0
        for k, (cap, lit) in enumerate(nodes):
            if cap:
                continue
            assert isinstance(lit, bytes)
            j = line.find(lit, off)
            if j < 0 or (k != 0 and j == off):
                return False
            off = j + len(lit)
        return nodes[-1][0] == (off != len(line))

    def longest_literal(self) -> bytes:
        return max(self.literals, key=len, default=b"")


# ---------------------------------------------------------------------------
# ip("...")
# ---------------------------------------------------------------------------

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class IPPatternError(ValueError):
    """``ip: invalid pattern: "..."``."""


def _parse_addr(s: str) -> IPAddress | None:
    if not s or not s.isascii() or "/" in s:
        return None
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        return None


def ip_matcher(pattern: str) -> tuple[Callable[[IPAddress], bool], int]:
    """A test for addresses and the IP version of the pattern: one address, a CIDR
    prefix or a range ``a-b`` (both ends of one family, ``a <= b``)."""
    from loki_async.logql.literals import go_quote

    addr = _parse_addr(pattern)
    if addr is not None:
        return (lambda a: a == addr and a.version == addr.version), addr.version
    if "/" in pattern and pattern.isascii() and "%" not in pattern:
        try:
            net = ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            net = None
        bits = pattern.split("/", 1)[1]
        if net is not None and bits.isdigit() and (bits == "0" or bits[0] != "0"):
            return (lambda a: a.version == net.version and a in net), net.version
    lo_s, sep, hi_s = pattern.partition("-")
    if sep:
        lo, hi = _parse_addr(lo_s), _parse_addr(hi_s)
        if lo is not None and hi is not None and lo.version == hi.version and lo <= hi:
            if getattr(lo, "scope_id", None) == getattr(hi, "scope_id", None):
                return (
                    lambda a: a.version == lo.version and lo <= a <= hi  # type: ignore[operator]
                ), lo.version
    raise IPPatternError(f"ip: invalid pattern: {go_quote(pattern)}")


# Go's hints: a digit then a dot within 4 bytes (IPv4), or the start of a hex group
# followed by a colon (IPv6); each needs 4 (resp. 5) bytes of room.
_IP_HINT = re.compile(
    rb"(?s)(?=[0-9](?:\.|.\.|..\.))(?=.{4})(?P<v4>)|"
    rb"(?=::[0-9a-fA-F]|[0-9a-fA-F]{1,4}:)(?=.{5})"
)
_IPV4_SPAN = re.compile(rb"[0-9.]*")
_IPV6_SPAN = re.compile(rb"[0-9a-fA-F:.]*")


def ip_in_line(line: bytes, contains: Callable[[IPAddress], bool]) -> bool:
    """Whether some address found in `line` the way Loki scans for them satisfies
    `contains`."""
    i = 0
    n = len(line)
    while i < n:
        m = _IP_HINT.search(line, i)
        if m is None:
            return False
        i = m.start()
        span = (_IPV4_SPAN if m.group("v4") is not None else _IPV6_SPAN).match(line, i).end()
        addr = _parse_addr(line[i:span].decode("ascii"))
        if addr is not None and contains(addr):
            return True
        i = span + 1
    return False


# ---------------------------------------------------------------------------
# Loki's regex simplifier
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Simple:
    """A regex replaced by literal tests: `kind` is ``true`` (always), ``exists``
    (non-empty), ``contains``/``equal`` (`text`, case-folded when `fold`) or ``or``
    (any of `alts`)."""

    kind: str
    text: str = ""
    fold: bool = False
    alts: tuple[Simple, ...] = ()


_TRUE = Simple("true")


def simplify_regex(source: str, *, is_label: bool) -> Simple | None:
    """What Loki's ``RegexSimplifier`` makes of `source`, or None when it keeps a
    regexp. Raises GoRegexError for an invalid regex."""
    node, _ = go_regex.parse(source)
    return _simplify(go_regex.go_shape(node), is_label)


def _uncap(n: Node) -> Node:
    while n.op == "cap":
        n = n.subs[0]
    return n


def _is_any(n: Node) -> bool:
    return n.op == "any" and not n.flags & DOT_NL


def _is_star_any(n: Node) -> bool:
    return n.op == "rep" and n.min == 0 and n.max == -1 and _is_any(n.subs[0])


def _or(curr: Simple | None, new: Simple) -> Simple:
    # Loki's or-filter drops an always-true leg instead of becoming always true.
    if curr is None or curr.kind == "true":
        return new
    if new.kind == "true":
        return curr
    return Simple("or", alts=(*(curr.alts if curr.kind == "or" else (curr,)), new))


def _lit(text: str, fold: bool, kind: str) -> Simple:
    if kind == "contains" and not text:
        return _TRUE
    return Simple(kind, go_lower(text) if fold else text, fold)


def _simplify(n: Node, is_label: bool) -> Simple | None:
    n = _uncap(n)
    if n.op == "alt":
        curr: Simple | None = None
        for sub in n.subs:
            f = _simplify(_uncap(sub), is_label)
            if f is None:
                return None
            curr = f if curr is None else _or(curr, f)
        return curr
    if n.op == "cat":
        # Loki drops `is_label` here: a concatenation is a substring test even for
        # label filters (`name=~"al.*"` matches "prealpha").
        return _simplify_concat(n, None)
    if n.op == "lit":
        return _lit("".join(n.runes), bool(n.flags & FOLD), "equal" if is_label else "contains")
    if n.op == "rep" and n.max == -1 and _is_any(n.subs[0]):
        if n.min == 0:
            return _TRUE
        if n.min == 1:
            return Simple("exists")
    if n.op == "empty":
        return _TRUE
    return None


def _simplify_concat(n: Node, base: str | None) -> Simple | None:
    subs = [s for s in (_uncap(s) for s in n.subs) if s.op != "empty"]
    if len(subs) > 3:
        return None
    curr: Simple | None = None
    literals = 0
    fold = False
    for sub in subs:
        if sub.op == "lit":
            if literals:
                return None
            literals += 1
            base = (base or "") + "".join(sub.runes)
            fold = bool(sub.flags & FOLD)
        elif sub.op == "alt" and base is not None:
            curr = _simplify_concat_alt(sub, base, curr, fold)
            if curr is None:
                return None
        elif not _is_star_any(sub):
            return None
    if curr is not None:
        return curr
    if base is not None:
        return _lit(base, fold, "contains")
    return None


def _simplify_concat_alt(alt: Node, base: str, curr: Simple | None, fold: bool) -> Simple | None:
    for a in alt.subs:
        if not fold and a.flags & FOLD:
            return None
        if a.op == "empty":
            curr = _or(curr, _lit(base, fold, "contains"))
        elif a.op == "lit":
            curr = _or(curr, _lit(base + "".join(a.runes), fold, "contains"))
        elif a.op == "cat":
            f = _simplify_concat(a, base)
            if f is None:
                return None
            curr = _or(curr, f)
        elif a.op == "rep" and a.min == 0 and a.max == -1:
            if not _is_any(a.subs[0]):
                return None
            curr = _or(curr, _lit(base, fold, "contains"))
        else:
            return None
    return curr


def has_assertions(source: str) -> bool:
    """Whether the regex uses anchors or word boundaries (a match in a line then
    depends on what surrounds it)."""
    try:
        node, _ = go_regex.parse(source)
    except GoRegexError:
        return True
    stack = [node]
    while stack:
        n = stack.pop()
        if n.op in ("bot", "eot", "bol", "eol", "wb", "nwb"):
            return True
        stack.extend(n.subs)
    return False
