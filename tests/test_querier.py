"""Querier internals that the end-to-end tests cannot pin down: replica de-duplication."""

from __future__ import annotations

from array import array

from loki_async.chunk import Block, build_block, decode_block
from loki_async.querier import _dedupe


def block(entries: list[tuple[int, bytes]]) -> Block:
    ts = array("q", [t for t, _ in entries])
    lens = array("I", [len(line) for _, line in entries])
    return decode_block(build_block(ts, lens, b"".join(line for _, line in entries), None))


def entries(blocks: list[Block]) -> list[tuple[int, bytes]]:
    return [(b.ts[i], b.line(i)) for b in blocks for i in range(len(b))]


def test_replica_blocks_collapse_to_one_copy_of_each_entry() -> None:
    a = [(1, b"x"), (2, b"y"), (3, b"z")]
    b = [(2, b"y"), (3, b"z"), (3, b"z2"), (4, b"w")]  # a replica that cut differently
    got = entries(_dedupe([block(b), block(a)]))
    assert got == [(1, b"x"), (2, b"y"), (3, b"z"), (3, b"z2"), (4, b"w")]


def test_blocks_that_do_not_overlap_are_used_as_they_are() -> None:
    first, second = block([(1, b"a"), (2, b"b")]), block([(5, b"c")])
    out = _dedupe([second, first])
    assert out[0] is first and out[1] is second
