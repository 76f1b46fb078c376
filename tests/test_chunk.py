from array import array

import pytest

from loki_async.chunk import (
    ChunkReader,
    Codec,
    build_block,
    decode_block,
    decode_metadata,
    encode_chunk,
    encode_metadata,
)
from loki_async.errors import CorruptDataError


def columns(entries: list[tuple[int, bytes]], meta: list[bytes] | None = None):
    ts = array("q", (t for t, _ in entries))
    lens = array("I", (len(line) for _, line in entries))
    return ts, lens, b"".join(line for _, line in entries), meta


def make_chunk(entries_per_block: list[list[tuple[int, bytes]]]) -> bytes:
    codec = Codec()
    return encode_chunk([codec.compress_block(build_block(*columns(e))) for e in entries_per_block])


def test_block_round_trip_keeps_bytes_and_order() -> None:
    entries = [(i * 10, f"line {i} \xe9\x00".encode() + bytes([i % 256])) for i in range(1000)]
    b = decode_block(build_block(*columns(entries)))
    assert list(b.ts) == [t for t, _ in entries]
    assert [b.line(i) for i in range(len(b))] == [line for _, line in entries]


def test_block_sorts_out_of_order_entries_and_drops_exact_duplicates() -> None:
    entries = [(30, b"c"), (10, b"a"), (20, b"b"), (10, b"a"), (10, b"0")]
    b = decode_block(build_block(*columns(entries)))
    assert [(b.ts[i], b.line(i)) for i in range(len(b))] == [
        (10, b"0"),
        (10, b"a"),
        (20, b"b"),
        (30, b"c"),
    ]


def test_block_keeps_structured_metadata_per_entry() -> None:
    meta = [encode_metadata([("trace_id", "abc")]), b"", encode_metadata([("k", "v"), ("x", "y")])]
    b = decode_block(build_block(*columns([(1, b"a"), (2, b"b"), (3, b"c")], meta)))
    assert [decode_metadata(b.metadata(i)) for i in range(3)] == [
        [("trace_id", "abc")],
        [],
        [("k", "v"), ("x", "y")],
    ]


def test_chunk_encoding_is_deterministic() -> None:
    blocks = [[(i, f"entry {i}".encode()) for i in range(k, k + 500)] for k in (0, 500)]
    assert make_chunk(blocks) == make_chunk(blocks)


def test_chunk_reader_skips_blocks_outside_range() -> None:
    data = make_chunk([[(i, b"x") for i in range(0, 100)], [(i, b"y") for i in range(100, 200)]])
    r = ChunkReader.open(data)
    assert len(r.metas) == 2
    blocks = r.blocks_in_range(150, 160, Codec())
    assert len(blocks) == 1 and blocks[0].line(0) == b"y"


@pytest.mark.parametrize("damage", ["truncate", "flip_block", "flip_meta", "magic", "short"])
def test_corrupt_chunk_is_rejected_with_clear_error(damage: str) -> None:
    data = bytearray(make_chunk([[(i, b"hello world %d" % i) for i in range(300)]]))
    if damage == "truncate":
        data = data[:-10]
    elif damage == "flip_block":
        data[20] ^= 0xFF
    elif damage == "flip_meta":
        data[-30] ^= 0xFF
    elif damage == "magic":
        data[0:4] = b"XXXX"
    else:
        data = data[:5]
    with pytest.raises(CorruptDataError):
        r = ChunkReader.open(bytes(data))
        for i in range(len(r.metas)):
            r.block(i, Codec())
