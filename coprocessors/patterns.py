"""patterns: the most common line patterns of a log query, counted next to the data.

``POST /coprocessor/v1/patterns`` with a JSON body::

    {"query": "{app=\\"api\\"}", "start": <unix ns>, "end": <unix ns>,
     "limit": 5000, "top": 10}

reads the newest ``limit`` lines of the log query over ``start <= ts < end`` (``limit``
at most the ``max_lines`` option), turns each line into a pattern - the variable parts
(timestamps, UUIDs, hex strings of 8 or more digits, IPv4 addresses, numbers with their
units such as ``12ms`` or ``3.5s``) replaced by ``<_>`` - and answers::

    {"patterns": [{"pattern": "GET /users/<_> took <_>", "count": 812,
                   "example": "GET /users/42 took 12ms"}, ...],
     "lines": 5000}

the ``top`` patterns (10 by default) by count, each with its newest line as an example.
Only the counts leave the server, not the lines.

Config (``coprocessors.plugins.patterns``): ``max_lines`` (int, 50000): the most lines
one request reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from loki_async.coprocessor import Coprocessor, CoprocessorError, Host, Option, declare

MAX_TOP = 1000

# Order matters: wider forms first, so a timestamp is not cut into numbers.
_VARIABLE = re.compile(
    "|".join(
        (
            # RFC 3339 / ISO 8601 date-times and bare dates
            r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?",
            # times of day
            r"\b\d{2}:\d{2}:\d{2}(?:[.,]\d+)?\b",
            # UUIDs, any version
            r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
            # IPv4, with a port
            r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b",
            # hex ids and hashes; a digit is required so words like "deadbeef" or
            # "accessed" stay (they carry meaning), and 0x-prefixed numbers
            r"\b0x[0-9a-fA-F]+\b",
            r"\b(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b",
            # numbers, with a sign, decimals, an exponent and a unit (12ms, 1.5s, 3GiB,
            # 99%) or a Go-style duration (1h2m3.5s); not the digit of a name (http2, v1)
            r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
            r"(?:(?:ns|us|µs|ms|s|m|h|d)(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))*"
            r"|[KMGTP]i?B|[kKMGTP]?b|%)?(?![\w.])",
        )
    )
)
_RUNS = re.compile(r"<_>(?:[:/.-]?<_>)+")  # "<_>:<_>" says no more than "<_>"


def pattern_of(line: str) -> str:
    """``line`` with its variable parts replaced by ``<_>``."""
    return _RUNS.sub("<_>", _VARIABLE.sub("<_>", line))


def _int_field(req: Mapping[str, Any], name: str, default: int | None = None) -> int:
    value = req.get(name)
    if value is None:
        if default is not None:
            return default
        raise CoprocessorError("invalid_request", f"{name!r} is required: unix nanoseconds")
    if isinstance(value, bool) or not isinstance(value, int):
        raise CoprocessorError("invalid_request", f"{name!r} must be an integer, got {value!r}")
    return value


class Patterns(Coprocessor):
    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self.max_lines = int(self.config["max_lines"])
        if self.max_lines <= 0:
            raise ValueError("patterns: max_lines must be positive")

    async def handle(self, request: bytes, host: Host) -> bytes:
        try:
            req = json.loads(request)
        except (ValueError, UnicodeDecodeError) as e:
            raise CoprocessorError("invalid_request", f"the body must be JSON: {e}") from None
        if not isinstance(req, dict):
            raise CoprocessorError(
                "invalid_request", 'the body must be a JSON object: {"query": ..., "start": ...}'
            )
        query = req.get("query")
        if not isinstance(query, str) or not query.strip():
            raise CoprocessorError(
                "invalid_request", "'query' is required: a LogQL log query, e.g. {app=\"api\"}"
            )
        start, end = _int_field(req, "start"), _int_field(req, "end")
        if start >= end:
            raise CoprocessorError("invalid_request", "'start' must be before 'end'")
        limit = _int_field(req, "limit", 5000)
        top = _int_field(req, "top", 10)
        if limit <= 0 or not 0 < top <= MAX_TOP:
            raise CoprocessorError(
                "invalid_request", f"'limit' must be positive and 'top' in 1..{MAX_TOP}"
            )
        streams = await host.select_logs(
            query, start, end, limit=min(limit, self.max_lines), direction="backward"
        )
        entries = sorted((e for s in streams for e in s.entries), key=lambda e: e[0], reverse=True)[
            : min(limit, self.max_lines)
        ]
        counts: dict[str, int] = {}
        examples: dict[str, str] = {}
        for _, line in entries:  # newest first: the first line of a pattern is its example
            p = pattern_of(line)
            if p not in counts:
                counts[p] = 0
                examples[p] = line
            counts[p] += 1
        ranked = sorted(counts.items(), key=lambda pc: (-pc[1], pc[0]))[:top]
        out = {
            "patterns": [{"pattern": p, "count": n, "example": examples[p]} for p, n in ranked],
            "lines": len(entries),
        }
        return json.dumps(out, ensure_ascii=False).encode()


PLUGIN = declare(
    Patterns,
    name="patterns",
    version="1.0.0",
    api="1.0",
    config={"max_lines": Option("int", 50000, help="the most lines one request reads")},
    description="the most common line patterns of a log query, counted where the data is",
)
