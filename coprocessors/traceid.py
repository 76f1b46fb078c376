"""traceid: skip the splits a trace cannot be in, using ids that carry their own time.

Many trace and request ids contain the time they were made. A query that must find
such an id - ``{app="api"} |= "<id>"``, ``{trace_id="<id>"}``, ``| json | traceID="<id>"``
- can only return lines logged while that trace ran. This plugin decodes the time t of
the id and keeps only ``[t - clock_skew, t + max_trace_duration + clock_skew)``: splits
outside are skipped, splits partly inside are narrowed. It asks no backend.

Recognised ids (hex and base32 are read case-insensitively):

* AWS X-Ray ``1-<8 hex: epoch seconds>-<24 hex>``, e.g. ``1-5759e988-bd862e3fe1be46a994272793``.
* UUIDv7 ``xxxxxxxx-xxxx-7xxx-[89ab]xxx-xxxxxxxxxxxx`` (or the same 32 hex digits without
  dashes): the first 48 bits are unix milliseconds.
* ULID: 26 Crockford base32 characters, the first 10 are unix milliseconds.
* W3C/OpenTelemetry trace ids (32 hex) made X-Ray-style, whose first 8 hex digits are
  epoch seconds (the OpenTelemetry AWS X-Ray id generator does this). A random id's
  first 8 digits give a random time, so this form is only believed when the time lands
  in or just before the query's range, and ``w3c_epoch_ids: false`` turns it off.

Ids are looked for inside ``|= "..."`` literals (with no letter or digit glued to them;
for 32 hex digits: no hex digit) and as whole values of ``=`` label matchers and label
filters of the labels named in ``labels`` (compared without case, ``_``, ``-`` and ``.``,
so ``trace_id`` also covers ``traceID`` and ``traceId``); an X-Ray id counts in any
label. Every id a selector must
contain narrows it (their windows intersect); a query with several selectors (binary
operations) keeps what any of them needs; a selector without a decodable id keeps the
whole query.

Config (``coprocessors.plugins.traceid``):

* ``max_trace_duration`` (duration, ``1h``): how long after its id was made a trace may
  still log lines.
* ``clock_skew`` (duration, ``5m``): how far the clocks of the id's maker and of the
  loggers may differ.
* ``w3c_epoch_ids`` (bool, ``true``): read 32-hex ids X-Ray-style.
* ``labels`` (list): label names whose values are trace or request ids; default
  ``trace_id``, ``trace``, ``request_id``, ``x_amzn_trace_id``, ``xray_trace_id``. A label
  of a long-lived thing (a session or job id that happens to be a ULID) must not be
  listed.

The claim this plugin makes: no line mentioning an id is logged earlier than
``clock_skew`` before the id's time, or later than ``max_trace_duration + clock_skew``
after it. Ids of long-lived things (sessions, jobs, deployments, pods) break it: queries
for them would miss lines. Raise ``max_trace_duration`` or leave such queries to
``coprocessors=-traceid``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

from loki_async.coprocessor import (
    KEEP,
    Coprocessor,
    Decision,
    Option,
    Selector,
    SplitRequest,
    declare,
    keep_within,
)

NS_PER_S = 10**9
NS_PER_MS = 10**6
DAY_NS = 86400 * NS_PER_S
Y2000_NS = 946_684_800 * NS_PER_S  # 2000-01-01T00:00:00Z
QUERY_CACHE = 1024  # queries whose window is remembered (all splits of one ask at once)

# AWS X-Ray trace id: version "1", 8 hex digits of epoch seconds, 24 hex digits of
# randomness (https://docs.aws.amazon.com/xray/latest/devguide/xray-api-sendingdata.html
# #xray-api-traceids).
_XRAY = r"1-[0-9a-f]{8}-[0-9a-f]{24}"
# UUID version 7: 48 bits of unix ms, version nibble 7, variant bits 10 (RFC 9562 §5.7).
_UUID7 = r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
_HEX32 = r"[0-9a-f]{32}"
# ULID: 26 Crockford base32 characters (no I, L, O, U); the first is at most 7 because
# the 10 time characters hold 48 bits (https://github.com/ulid/spec).
_ULID = r"[0-7][0-9a-hjkmnp-tv-z]{25}"

# In a line literal ids sit among other text: letters or digits glued to an id mean it
# is part of a longer token (a hash, a longer number), not an id.
_SEARCH = re.compile(
    rf"(?<![0-9a-z])(?P<xray>{_XRAY})(?![0-9a-z])"
    rf"|(?<![0-9a-z])(?P<uuid>{_UUID7})(?![0-9a-z])"
    rf"|(?<![0-9a-f])(?P<hex>{_HEX32})(?![0-9a-f])"
    rf"|(?<![0-9a-z])(?P<ulid>{_ULID})(?![0-9a-z])",
    re.IGNORECASE,
)
_WHOLE = re.compile(rf"{_XRAY}|{_UUID7}|{_HEX32}|{_ULID}", re.IGNORECASE)
_XRAY_WHOLE = re.compile(_XRAY, re.IGNORECASE)

_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def decode_time(token: str) -> tuple[str, int] | None:
    """The format and unix ns of an id that states its time: ``("xray", ns)``,
    ``("uuidv7", ns)`` (dashed, or 32 hex digits with the version and variant of a
    UUIDv7) or ``("ulid", ns)``; None for anything else. No plausibility check."""
    if not _WHOLE.fullmatch(token):
        return None
    if len(token) == 35:  # 1-xxxxxxxx-<24>
        return "xray", int(token[2:10], 16) * NS_PER_S
    if len(token) == 36:  # dashed UUIDv7
        return "uuidv7", int(token[:8] + token[9:13], 16) * NS_PER_MS
    if len(token) == 32:
        if token[12] == "7" and token[16] in "89abAB":
            return "uuidv7", int(token[:12], 16) * NS_PER_MS
        return None
    ms = 0
    for c in token[:10].upper():
        ms = ms * 32 + _CROCKFORD[c]
    return "ulid", ms * NS_PER_MS


def w3c_epoch_time(hex32: str) -> int:
    """The unix ns of a 32-hex trace id made X-Ray-style: its first 8 hex digits are
    epoch seconds (as the OpenTelemetry AWS X-Ray id generator writes them)."""
    return int(hex32[:8], 16) * NS_PER_S


def ids_in(where: str, value: str) -> list[str]:
    """The id-shaped tokens of one required value: searched inside a line literal
    (``where == "line"``), the whole value for a label."""
    if where == "line":
        return [m.group(0) for m in _SEARCH.finditer(value)]
    return [value] if _WHOLE.fullmatch(value) else []


def _label_key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "").replace(".", "")


def iso(ns: int) -> str:
    t = datetime.fromtimestamp(ns // NS_PER_S, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    ms = ns // NS_PER_MS % 1000
    return f"{t}.{ms:03d}Z" if ms else f"{t}Z"


class TraceId(Coprocessor):
    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.max_duration_ns = round(self.config["max_trace_duration"] * NS_PER_S)
        self.skew_ns = round(self.config["clock_skew"] * NS_PER_S)
        self.w3c = bool(self.config["w3c_epoch_ids"])
        self.labels = {_label_key(n) for n in self.config["labels"]}
        if self.max_duration_ns < 0 or self.skew_ns < 0:
            raise ValueError("max_trace_duration and clock_skew must not be negative")
        # query id -> its windows; the host asks for every split of a query at once, so
        # the query is read once instead of once per split.
        self._plans: OrderedDict[tuple[str, str], _Plan | None] = OrderedDict()

    def id_time(self, token: str, query_start_ns: int, query_end_ns: int) -> tuple[str, int] | None:
        """The format and time of ``token`` if it is believable for this query."""
        decoded = decode_time(token)
        if decoded is not None:
            fmt, t = decoded
            if fmt == "xray":
                return decoded  # the "1-" form is explicit: its time is meant as one
            # A number of 26 digits is ULID-shaped, but a real ULID's 16 random base32
            # characters are all digits with odds of 1e-8: take it for a number.
            digits_only = fmt == "ulid" and token.isdigit()
            # Out of this range a random token only looks like an id.
            if not digits_only and Y2000_NS <= t <= query_end_ns + DAY_NS:
                return decoded
        if self.w3c and len(token) == 32 and not token.isdigit():
            t = w3c_epoch_time(token)
            # A random id's first 8 hex digits give a random time; only a time in or
            # just before the query (as a trace it holds may have begun) is believed.
            lo = query_start_ns - self.max_duration_ns - self.skew_ns
            if lo <= t <= query_end_ns + self.skew_ns:
                return "w3c", t
        return None

    def selector_window(
        self, selector: Selector, query_start_ns: int, query_end_ns: int
    ) -> tuple[int, int, list[str]] | None:
        """``(lo, hi, ids)``: a line of ``selector`` lies in ``[lo, hi)`` (empty if
        ``lo >= hi``); None if the selector needs no id with a time."""
        lo, hi = None, None
        named: list[str] = []
        seen: set[str] = set()
        for where, value in selector.required_values():
            # An X-Ray id is a trace id wherever it is; other forms (UUIDv7, ULID) also
            # name sessions or jobs that outlive a trace, so only listed labels count.
            any_form = where == "line" or _label_key(where) in self.labels
            for token in ids_in(where, value):
                if not any_form and not _XRAY_WHOLE.fullmatch(token):
                    continue
                if token.lower() in seen:
                    continue
                seen.add(token.lower())
                found = self.id_time(token, query_start_ns, query_end_ns)
                if found is None:
                    continue
                fmt, t = found
                named.append(f"{'trace' if fmt in ('xray', 'w3c') else fmt} {token} at {iso(t)}")
                a, b = t - self.skew_ns, t + self.max_duration_ns + self.skew_ns
                # Every id is required at once: a line lies in all their windows.
                lo = a if lo is None else max(lo, a)
                hi = b if hi is None else min(hi, b)
        if lo is None or hi is None:
            return None
        return lo, hi, named

    def plan(self, split: SplitRequest) -> _Plan | None:
        """The query's windows (None: nothing known, keep every split)."""
        key = (split.query_id, split.query)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        plan = self._compute(split.selectors, split.query_start_ns, split.query_end_ns)
        self._plans[key] = plan
        while len(self._plans) > QUERY_CACHE:
            self._plans.popitem(last=False)
        return plan

    def _compute(
        self, selectors: Iterable[Selector], query_start_ns: int, query_end_ns: int
    ) -> _Plan | None:
        windows: list[tuple[int, int]] = []
        named: list[str] = []
        any_selector = False
        for sel in selectors:
            any_selector = True
            found = self.selector_window(sel, query_start_ns, query_end_ns)
            if found is None:
                return None  # this selector may need any split: nothing can be skipped
            lo, hi, ids = found
            named.extend(ids)
            if lo < hi:
                windows.append((lo, hi))
        if not any_selector:
            return None
        return _Plan(tuple(_merge(windows)), "; ".join(named))

    async def pre_query(self, split: SplitRequest) -> Decision:
        plan = self.plan(split)
        if plan is None:
            return KEEP
        return keep_within(plan.windows, split.start_ns, split.end_ns, plan.reason)


class _Plan(NamedTuple):
    windows: tuple[tuple[int, int], ...]  # merged, sorted
    reason: str  # the ids and their times, for a skip


def _merge(windows: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(windows):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


PLUGIN = declare(
    TraceId,
    name="traceid",
    version="1.0.0",
    api="1.0",
    config={
        "max_trace_duration": Option(
            "duration", "1h", help="how long after its id was made a trace may log lines"
        ),
        "clock_skew": Option("duration", "5m", help="clock difference allowed both ways"),
        "w3c_epoch_ids": Option(
            "bool", True, help="read 32-hex trace ids X-Ray-style (first 8 hex: epoch seconds)"
        ),
        "labels": Option(
            "list",
            ["trace_id", "trace", "request_id", "x_amzn_trace_id", "xray_trace_id"],
            help="labels whose values are trace or request ids",
        ),
    },
    description="skips splits a trace cannot be in, from ids with a time in them "
    "(X-Ray, UUIDv7, ULID, X-Ray-style W3C)",
)
