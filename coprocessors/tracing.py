"""tracing: skip the splits a trace cannot be in, asking the tracing backend when it ran.

W3C/OpenTelemetry trace ids (32 hex digits) and Jaeger's 64-bit ids (16 hex digits) say
nothing about their time. For a query that must find one - ``{app="api"} |= "<id>"``,
``{trace_id="<id>"}``, ``| json | traceID="<id>"`` - this plugin asks Grafana Tempo or
Jaeger for the trace and keeps only ``[first span start - clock_skew, last span end +
clock_skew)``: splits outside are skipped, splits partly inside are narrowed.

Ids are looked for inside ``|= "..."`` literals (with no hex digit glued to them; of a
W3C ``traceparent`` header only the trace id is taken, not the span id) and as whole
values of ``=`` label matchers and label filters of any label name. Ids with a time of
their own (X-Ray, dashed UUIDs, ULIDs) are left to the ``traceid`` plugin (a 32-hex id that
plugin reads a time from is still asked about here: both narrow, the host intersects). Every id a
selector must contain narrows it (their windows intersect; an id the backend does not
know narrows nothing); a query with several selectors keeps what any of them needs; a
selector without a known trace keeps the whole query.

Backends (GET ``{url}/api/traces/{id}``, ``Accept: application/json``):

* ``tempo``: OTLP JSON, ``{"batches": [{"scopeSpans": [{"spans": [{"startTimeUnixNano":
  ..., "endTimeUnixNano": ...}]}]}]}`` (older Tempo: ``instrumentationLibrarySpans``;
  ``{"resourceSpans": ...}`` and the v2 API's ``{"trace": {"resourceSpans": ...}}`` are
  read too). See https://grafana.com/docs/tempo/latest/api_docs/#query
* ``jaeger``: the query service's HTTP API (the one its UI uses), ``{"data":
  [{"spans": [{"startTime": <unix us>, "duration": <us>}]}]}``.
  See https://www.jaegertracing.io/docs/latest/apis/

One lookup per trace id, not per split: the host asks about all splits of a query at
once, and they all wait for the same lookup. Found traces are cached (``cache_size``,
``cache_ttl``); failures (404, backend down, timeout, bad answer) for ``error_ttl`` so a
query's splits do not each retry. Anything unexpected keeps the split. The host gives a
``pre_query`` call ``coprocessors.pre_query_timeout`` (0.2s by default): a backend slower
than that leaves the query unchanged, and its answer (still awaited, up to ``timeout``)
serves the next query for the same trace.

Config (``coprocessors.plugins.tracing``):

* ``backend`` (``tempo`` or ``jaeger``, default ``tempo``)
* ``url`` (required, e.g. ``http://tempo:3200``; the plugin stays disabled without it)
* ``timeout`` (duration, ``2s``): one lookup's limit.
* ``cache_size`` (int, 10000), ``cache_ttl`` (duration, ``10m``), ``error_ttl``
  (duration, ``10s``).
* ``clock_skew`` (duration, ``5m``): clock difference between tracer and loggers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

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

log = logging.getLogger("loki_async.coprocessors.tracing")

NS_PER_S = 10**9
MAX_BODY = 64 << 20  # a trace larger than this is not read (kept)
BACKENDS = ("tempo", "jaeger")

_HEXID = re.compile(r"(?<![0-9a-f])(?:[0-9a-f]{32}|[0-9a-f]{16})(?![0-9a-f])", re.IGNORECASE)
_WHOLE = re.compile(r"[0-9a-f]{32}|[0-9a-f]{16}", re.IGNORECASE)
# W3C Trace Context: version-traceid-parentid-flags (https://www.w3.org/TR/trace-context/).
# The parent (span) id is 16 hex digits too, but not a trace.
_TRACEPARENT = re.compile(
    r"(?<![0-9a-f])[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}(?![0-9a-f])",
    re.IGNORECASE,
)
# The forms of the traceid plugin (AWS X-Ray, dashed UUID, ULID): not asked about here.
_TIMED = re.compile(
    r"(?<![0-9a-z])(?:1-[0-9a-f]{8}-[0-9a-f]{24}"
    r"|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-7][0-9a-hjkmnp-tv-z]{25})(?![0-9a-z])",
    re.IGNORECASE,
)


def ids_in(where: str, value: str) -> list[str]:
    """The trace ids (lowercase) of one required value: searched inside a line literal
    (``where == "line"``), the whole value for a label."""
    if where != "line":
        m = _TRACEPARENT.fullmatch(value)
        if m:
            return [m.group(1).lower()]
        return [value.lower()] if _WHOLE.fullmatch(value) else []
    text = _TIMED.sub(" ", value)
    text = _TRACEPARENT.sub(lambda m: f" {m.group(1)} ", text)
    return [m.group(0).lower() for m in _HEXID.finditer(text)]


def trace_ids(selector: Selector) -> list[str]:
    """The trace ids every line of ``selector`` holds, without repeats."""
    return list(dict.fromkeys(i for w, v in selector.required_values() for i in ids_in(w, v)))


def tempo_span_range(doc: Any) -> tuple[int, int] | None:
    """``(first start, last end)`` in unix ns of the spans of a Tempo answer; None if
    it has no span. ValueError if it is not OTLP JSON."""
    if isinstance(doc, dict) and isinstance(doc.get("trace"), dict):
        doc = doc["trace"]  # /api/v2/traces
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    lo, hi = None, None
    for batch in doc.get("batches") or doc.get("resourceSpans") or ():
        for key in ("scopeSpans", "instrumentationLibrarySpans"):
            for scope in batch.get(key) or ():
                for span in scope.get("spans") or ():
                    start = int(span["startTimeUnixNano"])
                    end = int(span.get("endTimeUnixNano") or start)
                    lo = start if lo is None else min(lo, start)
                    hi = end if hi is None else max(hi, end)
    return None if lo is None or hi is None else (lo, max(lo, hi))


def jaeger_span_range(doc: Any) -> tuple[int, int] | None:
    """The same for a Jaeger query-service answer (times in microseconds)."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    lo, hi = None, None
    for trace in doc.get("data") or ():
        for span in trace.get("spans") or ():
            start = int(span["startTime"]) * 1000
            # Microseconds cut off the nanoseconds: the span may end up to 1us later.
            end = start + (int(span.get("duration") or 0) + 1) * 1000
            lo = start if lo is None else min(lo, start)
            hi = end if hi is None else max(hi, end)
    return None if lo is None or hi is None else (lo, hi)


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // NS_PER_S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Tracing(Coprocessor):
    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.backend = self.config["backend"]
        if self.backend not in BACKENDS:
            raise ValueError(
                f"tracing: backend {self.backend!r} is not supported: use tempo or jaeger"
            )
        self.url = self.config["url"].rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"tracing: url {self.url!r} must start with http:// or https://")
        self.timeout_s = float(self.config["timeout"])
        self.cache_size = max(int(self.config["cache_size"]), 1)
        self.cache_ttl_s = float(self.config["cache_ttl"])
        self.error_ttl_s = float(self.config["error_ttl"])
        self.skew_ns = round(self.config["clock_skew"] * NS_PER_S)
        self.lookups = 0  # requests sent to the backend
        # trace id -> (monotonic expiry, span range or None for unknown/failed)
        self._cache: OrderedDict[str, tuple[float, tuple[int, int] | None]] = OrderedDict()
        self._inflight: dict[str, asyncio.Task[tuple[int, int] | None]] = {}

    async def close(self) -> None:
        # The lookups' threads end on their own (their sockets time out); their tasks
        # have nobody left to answer.
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()

    # ------------------------------------------------------------------ lookups

    async def span_range(self, trace_id: str) -> tuple[int, int] | None:
        """When the trace ran (unix ns), None if unknown or the backend failed."""
        hit = self._cache.get(trace_id)
        if hit is not None:
            if hit[0] > time.monotonic():
                self._cache.move_to_end(trace_id)
                return hit[1]
            del self._cache[trace_id]
        task = self._inflight.get(trace_id)
        if task is None:
            task = asyncio.ensure_future(self._lookup(trace_id))
            self._inflight[trace_id] = task
            task.add_done_callback(self._done)
        # Shielded: the host cancels a pre_query that runs out of time, but the other
        # splits (and the next query) still want this answer.
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[tuple[int, int] | None]) -> None:
        for k, t in list(self._inflight.items()):
            if t is task:
                del self._inflight[k]

    async def _lookup(self, trace_id: str) -> tuple[int, int] | None:
        self.lookups += 1
        try:
            # urllib's timeout bounds each socket operation, not an answer that trickles
            # in; this bounds the whole lookup (the thread finishes on its own).
            found = await asyncio.wait_for(asyncio.to_thread(self._fetch, trace_id), self.timeout_s)
        except Exception as e:  # fail open: the splits are kept
            log.warning(
                "tracing: %s lookup of trace %s failed: %s",
                self.backend,
                trace_id,
                str(e) or repr(e),
            )
            found = None
        ttl = self.cache_ttl_s if found is not None else self.error_ttl_s
        self._cache[trace_id] = (time.monotonic() + ttl, found)
        self._cache.move_to_end(trace_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return found

    def _fetch(self, trace_id: str) -> tuple[int, int] | None:
        """One blocking request (runs in a thread: the standard library has no async
        HTTP client)."""
        request = urllib.request.Request(
            f"{self.url}/api/traces/{trace_id}", headers={"Accept": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                body = resp.read(MAX_BODY + 1)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                log.debug("tracing: trace %s not found", trace_id)
                return None
            raise
        if len(body) > MAX_BODY:
            raise ValueError(f"answer larger than {MAX_BODY} bytes")
        doc = json.loads(body)
        if self.backend == "jaeger":
            return jaeger_span_range(doc)
        return tempo_span_range(doc)

    # ------------------------------------------------------------------ decisions

    async def selector_window(self, ids: list[str]) -> tuple[int, int, list[str]] | None:
        """``(lo, hi, traces)``: a line that holds all ``ids`` lies in ``[lo, hi)``;
        None if the backend knows none of them."""
        ranges = await asyncio.gather(*(self.span_range(i) for i in ids))
        lo, hi = None, None
        named = []
        for trace_id, found in zip(ids, ranges, strict=True):
            # An unknown id narrows nothing; the known ones still bound the lines, as
            # every line holds all the ids.
            if found is None:
                continue
            a, b = found[0] - self.skew_ns, found[1] + self.skew_ns + 1
            named.append(f"trace {trace_id} ran {iso(found[0])}..{iso(found[1])}")
            lo = a if lo is None else max(lo, a)
            hi = b if hi is None else min(hi, b)
        if lo is None or hi is None:
            return None
        return lo, hi, named

    async def pre_query(self, split: SplitRequest) -> Decision:
        windows: list[tuple[int, int]] = []
        named: list[str] = []
        wanted = [trace_ids(s) for s in split.selectors]
        if not wanted or not all(wanted):
            return KEEP  # a selector that may need any split: no lookup can change that
        found = await asyncio.gather(*(self.selector_window(ids) for ids in wanted))
        for f in found:
            if f is None:
                return KEEP  # a selector that may need any split
            lo, hi, ids = f
            named.extend(ids)
            if lo < hi:
                windows.append((lo, hi))
        return keep_within(windows, split.start_ns, split.end_ns, "; ".join(named))


PLUGIN = declare(
    Tracing,
    name="tracing",
    version="1.0.0",
    api="1.0",
    config={
        "backend": Option("str", "tempo", help="tempo or jaeger"),
        "url": Option("str", required=True, help="base URL of the backend's HTTP API"),
        "timeout": Option("duration", "2s", help="time limit of one lookup"),
        "cache_size": Option("int", 10000, help="traces remembered"),
        "cache_ttl": Option("duration", "10m", help="how long a found trace is remembered"),
        "error_ttl": Option("duration", "10s", help="how long a failed lookup is remembered"),
        "clock_skew": Option("duration", "5m", help="clock difference allowed both ways"),
    },
    description="skips splits a trace cannot be in, asking Tempo or Jaeger when it ran",
)
