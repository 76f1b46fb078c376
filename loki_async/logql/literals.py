"""Go-compatible literal values: strings, durations, byte sizes and floats.

LogQL borrows its literals from Go and Prometheus, and Loki prints them back the
same way, so parsing and printing follow those libraries exactly:

* strings: Prometheus ``strutil.Unquote`` in, Go ``strconv.Quote`` out;
* durations: Prometheus ``model.ParseDuration`` (``5m``, ``1d``, ``1w``) for ranges,
  Go ``time.ParseDuration`` (``1.5h``, ``-1s``, ``250us``) as a fallback in label
  filters; printed as ``time.Duration.String`` (``5m0s``) or ``model.Duration``
  (``5m``);
* byte sizes: ``humanize.ParseBytes`` and ``humanize.Bytes`` (``10KB``, ``2.6kB``);
* floats: ``strconv.ParseFloat`` and Go's ``%v``, ``%f`` and ``'f'`` formats.
"""

from __future__ import annotations

import math
from decimal import Decimal


def digit_value(c: str) -> int:
    if "0" <= c <= "9":
        return ord(c) - 48
    if "a" <= c.lower() <= "f" and c.isascii():
        return ord(c.lower()) - 87
    return 16


def underscore_ok(s: str) -> bool:
    """Go's strconv underscoreOK: '_' only between digits or after a base prefix."""
    saw = "^"
    i = 0
    hexa = False
    if s[:1] in "+-":
        s = s[1:]
    if len(s) >= 2 and s[0] == "0" and s[1].lower() in "xob":
        hexa = s[1].lower() == "x"
        i = 2
        saw = "0"
    while i < len(s):
        c = s[i]
        if "0" <= c <= "9" or (hexa and "a" <= c.lower() <= "f"):
            saw = "0"
        elif c == "_":
            if saw != "0":
                return False
            saw = "_"
        else:
            if saw == "_":
                return False
            saw = "!"
        i += 1
    return saw != "_"


# ---------------------------------------------------------------------------
# Strings
# ---------------------------------------------------------------------------

_SIMPLE_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92}


def unquote(text: str) -> str:
    """Prometheus ``strutil.Unquote`` of a ``"double-quoted"`` or ```raw``` literal.

    Escapes producing bytes (``\\xff``) that are not UTF-8 come back as lone
    surrogates (``surrogateescape``), like Go keeps them as raw bytes.
    """
    if len(text) < 2 or text[0] != text[-1] or text[0] not in "\"`'":
        raise ValueError("invalid syntax")
    quote, body = text[0], text[1:-1]
    if quote == "`":
        if "`" in body:
            raise ValueError("invalid syntax")
        return body
    if "\n" in body:
        raise ValueError("invalid syntax")
    if "\\" not in body and quote not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        c = body[i]
        if c == quote:
            raise ValueError("invalid syntax")
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if i + 1 >= len(body):
            raise ValueError("invalid syntax")
        e = body[i + 1]
        i += 2
        if e in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[e])
        elif e in "\"'":
            if e != quote:
                raise ValueError("invalid syntax")
            out.append(ord(e))
        elif e in "xuU":
            n = {"x": 2, "u": 4, "U": 8}[e]
            digits = body[i : i + n]
            if len(digits) < n or any(digit_value(d) >= 16 for d in digits):
                raise ValueError("invalid syntax")
            i += n
            v = int(digits, 16)
            if e == "x":
                out.append(v)
            elif v > 0x10FFFF or 0xD800 <= v <= 0xDFFF:
                raise ValueError("invalid syntax")
            else:
                out += chr(v).encode("utf-8")
        elif e in "01234567":
            digits = body[i - 1 : i + 2]
            if len(digits) < 3 or any(d not in "01234567" for d in digits):
                raise ValueError("invalid syntax")
            v = int(digits, 8)
            if v > 255:
                raise ValueError("invalid syntax")
            i += 2
            out.append(v)
        else:
            raise ValueError("invalid syntax")
    return out.decode("utf-8", "surrogateescape")


def go_quote(s: str) -> str:
    """Go's ``strconv.Quote``: printable characters kept, the rest escaped."""
    out = ['"']
    for c in s:
        o = ord(c)
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\\ufffd")
        elif c.isprintable():
            out.append(c)
        elif c in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(c)])
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def go_quote_rune(c: str) -> str:
    """Go's ``%q`` of a rune: ``'P'``."""
    inner = go_quote(c)[1:-1]
    return "'" + ("\\'" if c == "'" else inner.replace('\\"', '"')) + "'"


# ---------------------------------------------------------------------------
# Durations
# ---------------------------------------------------------------------------

_NS = 1
_US = 1000
_MS = 1000 * _US
_S = 1000 * _MS
_M = 60 * _S
_H = 60 * _M
_D = 24 * _H
_MAX_INT64 = (1 << 63) - 1

_PROM_UNITS = {"ms": (_MS, 7), "s": (_S, 6), "m": (_M, 5), "h": (_H, 4), "d": (_D, 3)}
_PROM_UNITS |= {"w": (7 * _D, 2), "y": (365 * _D, 1)}


def parse_prom_duration(s: str) -> int:
    """Prometheus ``model.ParseDuration`` in nanoseconds: ``1h30m``, ``5d``, ``1w``, ``0``.

    Units go from biggest to smallest, each at most once; no fractions, no sign.
    """
    if s == "0":
        return 0
    if s == "":
        raise ValueError("empty duration string")
    total = 0
    last = 0
    rest = s
    while rest:
        i = 0
        while i < len(rest) and "0" <= rest[i] <= "9":
            i += 1
        if i == 0:
            raise ValueError(f"not a valid duration string: {go_quote(s)}")
        value = int(rest[:i])
        rest = rest[i:]
        j = 0
        while j < len(rest) and not "0" <= rest[j] <= "9":
            j += 1
        if j == 0:
            raise ValueError(f"not a valid duration string: {go_quote(s)}")
        unit, rest = rest[:j], rest[j:]
        if unit not in _PROM_UNITS:
            raise ValueError(f"unknown unit {go_quote(unit)} in duration {go_quote(s)}")
        mult, order = _PROM_UNITS[unit]
        if order <= last:
            raise ValueError(f"not a valid duration string: {go_quote(s)}")
        last = order
        if value > (1 << 63) // mult:
            raise ValueError("duration out of range")
        total += value * mult
        if total > _MAX_INT64:
            raise ValueError("duration out of range")
    return total


_GO_UNITS = {"ns": _NS, "us": _US, "µs": _US, "μs": _US, "ms": _MS, "s": _S, "m": _M, "h": _H}


def parse_go_duration(s: str) -> int:
    """Go's ``time.ParseDuration`` in nanoseconds: ``1.5h``, ``-1s``, ``300ms``, ``2h45m``."""
    orig = s
    neg = False
    if s[:1] in ("-", "+"):
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0
    if s == "":
        raise ValueError(f"time: invalid duration {go_quote(orig)}")
    total = 0
    while s:
        if not (s[0] == "." or "0" <= s[0] <= "9"):
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        i = 0
        while i < len(s) and "0" <= s[i] <= "9":
            i += 1
        whole = int(s[:i]) if i else 0
        if whole >= 1 << 63:
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        pre = i > 0
        s = s[i:]
        frac, scale, post = 0, 1.0, False
        if s.startswith("."):
            s = s[1:]
            i = 0
            overflow = False
            while i < len(s) and "0" <= s[i] <= "9":
                if not overflow:
                    if frac > ((1 << 63) - 1) // 10:
                        overflow = True
                    else:
                        frac = frac * 10 + int(s[i])
                        scale *= 10
                i += 1
            post = i > 0
            s = s[i:]
        if not pre and not post:
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        i = 0
        while i < len(s) and s[i] != "." and not "0" <= s[i] <= "9":
            i += 1
        if i == 0:
            raise ValueError(f"time: missing unit in duration {go_quote(orig)}")
        unit, s = s[:i], s[i:]
        if unit not in _GO_UNITS:
            raise ValueError(f"time: unknown unit {go_quote(unit)} in duration {go_quote(orig)}")
        mult = _GO_UNITS[unit]
        if whole > (1 << 63) // mult:
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
        value = whole * mult
        if frac > 0:
            value += int(float(frac) * (float(mult) / scale))
            if value > 1 << 63:
                raise ValueError(f"time: invalid duration {go_quote(orig)}")
        total += value
        if total > 1 << 63:
            raise ValueError(f"time: invalid duration {go_quote(orig)}")
    if neg:
        return -total
    if total > _MAX_INT64:
        raise ValueError(f"time: invalid duration {go_quote(orig)}")
    return total


def parse_duration(s: str) -> int:
    """A duration in a label filter: Prometheus style first, then Go style."""
    try:
        return parse_prom_duration(s)
    except ValueError:
        return parse_go_duration(s)


def _frac(v: int, prec: int) -> tuple[str, int]:
    digits = ""
    printed = False
    for _ in range(prec):
        digit = v % 10
        printed = printed or digit != 0
        if printed:
            digits = str(digit) + digits
        v //= 10
    return ("." + digits if printed else ""), v


def format_go_duration(ns: int) -> str:
    """Go's ``time.Duration.String``: ``5m0s``, ``1h15m30.918273645s``, ``1µs``, ``0s``."""
    neg = ns < 0
    u = -ns if neg else ns
    if u < _S:
        if u == 0:
            return "0s"
        if u < _US:
            text = f"{u}ns"
        elif u < _MS:
            frac, whole = _frac(u, 3)
            text = f"{whole}{frac}µs"
        else:
            frac, whole = _frac(u, 6)
            text = f"{whole}{frac}ms"
    else:
        frac, secs = _frac(u, 9)
        text = f"{secs % 60}{frac}s"
        mins = secs // 60
        if mins:
            text = f"{mins % 60}m" + text
            hours = mins // 60
            if hours:
                text = f"{hours}h" + text
    return "-" + text if neg else text


def format_prom_duration(ns: int) -> str:
    """Prometheus ``model.Duration.String``: ``5m``, ``1d1h``, ``1w``, ``0s``."""
    ms = abs(ns) // _MS * (1 if ns >= 0 else -1)
    if ms == 0:
        return "0s"
    out = []
    for unit, mult, exact in (
        ("y", 365 * 86_400_000, True),
        ("w", 7 * 86_400_000, True),
        ("d", 86_400_000, False),
        ("h", 3_600_000, False),
        ("m", 60_000, False),
        ("s", 1000, False),
        ("ms", 1, False),
    ):
        if exact and ms % mult != 0:
            continue
        v = ms // mult if ms > 0 else 0
        if v > 0:
            out.append(f"{v}{unit}")
            ms -= v * mult
    return "".join(out)


# ---------------------------------------------------------------------------
# Byte sizes (github.com/dustin/go-humanize)
# ---------------------------------------------------------------------------

_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
    "p": 1000**5,
    "pb": 1000**5,
    "pi": 1024**5,
    "pib": 1024**5,
    "e": 1000**6,
    "eb": 1000**6,
    "ei": 1024**6,
    "eib": 1024**6,
}


def parse_bytes(s: str) -> int:
    """``humanize.ParseBytes``: ``10KB`` is 10000, ``1MiB`` is 1048576, ``42`` is 42."""
    i = 0
    while i < len(s) and (s[i].isdigit() or s[i] in ".,"):
        i += 1
    number = s[:i].replace(",", "")
    value = parse_go_float(number)
    unit = s[i:].strip().lower()
    if unit not in _BYTE_UNITS:
        raise ValueError(f"unhandled size name: {unit}")
    value *= _BYTE_UNITS[unit]
    if value >= 2.0**64:
        raise ValueError(f"too large: {s}")
    return int(value)


def format_bytes(n: int) -> str:
    """``humanize.Bytes`` without spaces, as Loki prints byte filters: ``2.6kB``, ``42B``."""
    if n < 10:
        return f"{n}B"
    e = math.floor(math.log(n) / math.log(1000))
    suffix = ("B", "kB", "MB", "GB", "TB", "PB", "EB")[int(e)]
    val = math.floor(n / 1000**e * 10 + 0.5) / 10
    return f"{val:.1f}{suffix}" if val < 10 else f"{val:.0f}{suffix}"


# ---------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------


class FloatRangeError(ValueError):
    """``strconv.ParseFloat`` overflowed; `value` is the ±Inf Go returns with the error."""

    def __init__(self, text: str, value: float) -> None:
        super().__init__(f'strconv.ParseFloat: parsing "{text}": value out of range')
        self.value = value


def parse_go_float(text: str) -> float:
    """Go's ``strconv.ParseFloat(text, 64)`` for the literals the scanner produces.

    Decimal and hexadecimal (``0x1p-2``) forms, with ``_`` separators; octal and
    binary prefixes are invalid, as in Go.
    """
    invalid = ValueError(f"strconv.ParseFloat: parsing {go_quote(text)}: invalid syntax")
    body = text[1:] if text[:1] in "+-" else text
    sign = -1.0 if text[:1] == "-" else 1.0
    if body.lower() in ("inf", "infinity"):
        return sign * math.inf
    if body.lower() == "nan":
        return math.nan
    if "_" in body:
        if not underscore_ok(body):
            raise invalid
        body = body.replace("_", "")
    if body[:2].lower() == "0x":
        if "p" not in body.lower():
            raise invalid
        mant, _, exp = body[2:].lower().partition("p")
        if not mant or mant == ".":
            raise invalid
        try:
            value = float.fromhex(f"0x{mant}p{exp}")
        except (ValueError, OverflowError):
            if mant and all(digit_value(c) < 16 or c == "." for c in mant):
                raise FloatRangeError(text, sign * math.inf) from None
            raise invalid from None
        return sign * value
    if not body or not all(c.isascii() and (c.isdigit() or c in ".eE+-") for c in body):
        raise invalid
    try:
        value = float(body)
    except ValueError:
        raise invalid from None
    if math.isinf(value):
        raise FloatRangeError(text, sign * value)
    return sign * value


def _shortest_digits(v: float) -> tuple[str, int]:
    """Shortest round-trip decimal digits of abs(v) and the decimal point position."""
    _, digits, exp = Decimal(repr(abs(v))).as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    dp = len(digits) + int(exp)
    if text == "0":
        dp = 1
    return text, dp


def _special_float(v: float) -> str | None:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return None


def format_float_f(v: float) -> str:
    """``strconv.FormatFloat(v, 'f', -1, 64)``: shortest digits, never an exponent."""
    special = _special_float(v)
    if special:
        return special
    digits, dp = _shortest_digits(v)
    sign = "-" if math.copysign(1.0, v) < 0 else ""
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def format_float_g(v: float) -> str:
    """Go's ``%v`` of a float64: ``0.5``, ``-1``, ``1e+06``, ``1.5e-07``, ``NaN``."""
    special = _special_float(v)
    if special:
        return special
    digits, dp = _shortest_digits(v)
    exp = dp - 1
    if exp < -4 or exp >= 6:
        sign = "-" if math.copysign(1.0, v) < 0 else ""
        mant = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return format_float_f(v)


def format_float_fixed(v: float) -> str:
    """Go's ``%f``: six decimals (``2.000000``)."""
    return _special_float(v) or f"{v:.6f}"
