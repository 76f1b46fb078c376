"""How long the reliability suite runs: short in CI, long for the figures in
docs/reliability.md (``LOKI_ASYNC_RELIABILITY=long``)."""

from __future__ import annotations

import os

LONG = os.environ.get("LOKI_ASYNC_RELIABILITY", "").lower() == "long"


def scaled(short: int, long: int) -> int:
    """``short`` in CI, ``long`` when LOKI_ASYNC_RELIABILITY=long."""
    return long if LONG else short
