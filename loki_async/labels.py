"""Label sets in their canonical string form ``{a="1", b="2"}``: fingerprints and lookups."""

from __future__ import annotations

import hashlib
from functools import lru_cache

from .logql import parse_labels


def fingerprint(labels: str) -> int:
    """64-bit fingerprint of a canonical label string (chunk keys, index)."""
    return int.from_bytes(hashlib.blake2b(labels.encode(), digest_size=8).digest(), "little")


@lru_cache(maxsize=1 << 16)
def label_map(labels: str) -> dict[str, str]:
    """The labels of a canonical label string as a dict. Cached: callers must not mutate it."""
    return dict(parse_labels(labels))
