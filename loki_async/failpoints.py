"""Failpoints: faults injected on purpose, to test and measure how the system copes.

Set ``LOKI_ASYNC_FAILPOINTS`` before a process starts, as a comma-separated list of
``name=probability`` (after TiKV's fail-rs failpoints)::

    LOKI_ASYNC_FAILPOINTS="distributor.replica_send=0.01"

| name                       | where                                                     |
|----------------------------|-----------------------------------------------------------|
| ``distributor.replica_send`` | a push's send to one of its replicas fails (503) unsent |

Unset, every point is off and costs one dict lookup. A malformed value stops the
process at start with a message naming the variable (``load`` is called by the CLI).
"""

from __future__ import annotations

import os
import random

ENV = "LOKI_ASYNC_FAILPOINTS"
KNOWN = frozenset({"distributor.replica_send"})


def parse(text: str) -> dict[str, float]:
    """``name=probability,...`` → {name: probability}; ValueError says what is wrong."""
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in KNOWN:
            raise ValueError(
                f"{ENV}: {item!r} is not name=probability with a name among {sorted(KNOWN)}"
            )
        try:
            p = float(value)
        except ValueError:
            p = -1.0
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{ENV}: probability of {name} must be in [0, 1], got {value!r}")
        out[name] = p
    return out


_active: dict[str, float] = {}
_rng = random.Random()


def load() -> None:
    """Activate the failpoints of ``LOKI_ASYNC_FAILPOINTS``; ValueError if malformed."""
    configure(os.environ.get(ENV, ""))


def hit(name: str) -> bool:
    """Whether the failpoint ``name`` fires this time."""
    p = _active.get(name)
    return p is not None and _rng.random() < p


def configure(spec: str) -> None:
    """Replace the active failpoints (tests)."""
    global _active
    _active = parse(spec)
