"""Blocks and chunks: the columnar, zstd-compressed storage unit of one stream.

A **block** holds the entries of one stream as columns, never as per-line objects::

    u32 n | i64 ts[n] | u32 line_len[n] | u8 has_meta | (u32 meta_len[n] | meta blob)? | lines blob

Entries are in (timestamp, line) order and exact duplicates are removed when a block is
built. Structured metadata of an entry is msgpack ``[name, value, name, value, ...]``;
an entry without any has length 0.

A **chunk** (the object stored under ``<tenant>/chunks/<fp>/<from>-<through>-<crc>``)::

    header   "LKAC" | u8 version=1 | u8 codec=1 (zstd) | u16 reserved
    blocks   zstd frames back to back
    metas    per block: u32 entries | i64 mint | i64 maxt | u64 offset | u32 length
                        | u32 raw_length | u32 crc32 (of the compressed bytes)
    trailer  u64 metas_offset | u32 n_blocks | u32 crc32(metas) | "LKAC"

All integers little-endian. The encoding is deterministic (fixed zstd level, one
thread, no checksum or dict id in frames) so replicas cut byte-identical chunks and a
chunk's key is a function of its content. The reader rejects anything that fails a
length or checksum check with :class:`~loki_async.errors.CorruptDataError`.
"""

from __future__ import annotations

import struct
import zlib
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate, pairwise

import msgpack
import zstandard

from .errors import CorruptDataError

MAGIC = b"LKAC"
VERSION = 1
CODEC_ZSTD = 1
_HEADER = struct.Struct("<4sBBH")
_META = struct.Struct("<IqqQIII")
_TRAILER = struct.Struct("<QII4s")

assert array("q").itemsize == 8 and array("I").itemsize == 4, "BUG: unexpected C int sizes"


def encode_metadata(pairs: list[tuple[str, str]] | None) -> bytes:
    """One entry's structured metadata as stored in a block (b"" when none)."""
    if not pairs:
        return b""
    flat: list[str] = []
    for name, value in pairs:
        flat.append(name)
        flat.append(value)
    return msgpack.packb(flat)


def decode_metadata(data: bytes) -> list[tuple[str, str]]:
    """One entry's structured metadata; CorruptDataError if it is not what
    :func:`encode_metadata` writes."""
    if not data:
        return []
    try:
        flat = msgpack.unpackb(data)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise CorruptDataError(f"malformed structured metadata: {e}") from None
    if type(flat) is not list or len(flat) % 2 or not all(type(s) is str for s in flat):
        raise CorruptDataError("malformed structured metadata: not a list of name, value pairs")
    return list(zip(flat[::2], flat[1::2], strict=True))


@dataclass(slots=True)
class Block:
    """Decoded columns of one block. ``offsets`` has n+1 entries into ``blob``."""

    ts: array  # array('q'), sorted
    offsets: list[int]
    blob: bytes
    meta_offsets: list[int] | None
    meta_blob: bytes

    def __len__(self) -> int:
        return len(self.ts)

    def line(self, i: int) -> bytes:
        return self.blob[self.offsets[i] : self.offsets[i + 1]]

    def metadata(self, i: int) -> bytes:
        if self.meta_offsets is None:
            return b""
        return self.meta_blob[self.meta_offsets[i] : self.meta_offsets[i + 1]]

    def range_indexes(self, start: int, end: int) -> tuple[int, int]:
        """Index span of entries with start <= ts < end (ts is sorted)."""
        return bisect_left(self.ts, start), bisect_left(self.ts, end)

    def range_indexes_inclusive(self, start: int, end: int) -> tuple[int, int]:
        return bisect_left(self.ts, start), bisect_right(self.ts, end)


def build_block(ts: array, lens: array, blob: bytes, meta: list[bytes] | None) -> bytes:
    """Encode raw columns (in arrival order) into a sorted, de-duplicated raw block."""
    n = len(ts)
    offsets = list(accumulate(lens, initial=0))
    # Fast path: entries arrived strictly in time order (the common case), no sort needed.
    if all(a < b for a, b in pairwise(ts)):
        order = None
    else:
        # Slow path: out-of-order or equal timestamps: order by (ts, line), drop exact dups.
        def key(i: int) -> tuple[int, bytes]:
            return ts[i], blob[offsets[i] : offsets[i + 1]]

        order = sorted(range(n), key=key)
        keep = [order[0]] if order else []
        for i in order[1:]:
            j = keep[-1]
            if ts[i] == ts[j] and key(i) == key(j) and (meta is None or meta[i] == meta[j]):
                continue
            keep.append(i)
        order = keep
    if order is None:
        out_ts, out_lens, out_blob, out_meta = ts, lens, bytes(blob), meta
    else:
        out_ts = array("q", (ts[i] for i in order))
        out_lens = array("I", (lens[i] for i in order))
        out_blob = b"".join([blob[offsets[i] : offsets[i + 1]] for i in order])
        out_meta = [meta[i] for i in order] if meta is not None else None
    parts = [struct.pack("<I", len(out_ts)), out_ts.tobytes(), out_lens.tobytes()]
    if out_meta is not None and any(out_meta):
        parts.append(b"\x01")
        parts.append(array("I", map(len, out_meta)).tobytes())
        parts.append(b"".join(out_meta))
    else:
        parts.append(b"\x00")
    parts.append(out_blob)
    return b"".join(parts)


def decode_block(raw: bytes) -> Block:
    """Decode a raw (decompressed) block into columns; CorruptDataError if malformed."""
    try:
        (n,) = struct.unpack_from("<I", raw, 0)
        pos = 4
        ts = array("q")
        ts.frombytes(raw[pos : pos + 8 * n])
        pos += 8 * n
        lens = array("I")
        lens.frombytes(raw[pos : pos + 4 * n])
        pos += 4 * n
        flag = raw[pos]
        pos += 1
        meta_offsets = None
        meta_blob = b""
        if flag == 1:
            mlens = array("I")
            mlens.frombytes(raw[pos : pos + 4 * n])
            pos += 4 * n
            meta_offsets = list(accumulate(mlens, initial=0))
            meta_blob = raw[pos : pos + meta_offsets[-1]]
            pos += meta_offsets[-1]
            if len(mlens) != n or len(meta_blob) != meta_offsets[-1]:
                raise CorruptDataError("block metadata does not match its lengths")
        elif flag != 0:
            raise CorruptDataError(f"block has unknown metadata flag {flag}")
        offsets = list(accumulate(lens, initial=0))
        blob = raw[pos:]
        if len(ts) != n or len(lens) != n or len(blob) != offsets[-1]:
            raise CorruptDataError("block columns do not match their lengths")
    except (struct.error, IndexError, ValueError) as e:
        raise CorruptDataError(f"malformed block: {e}") from None
    return Block(ts, offsets, blob, meta_offsets, meta_blob)


@dataclass(frozen=True, slots=True)
class BlockMeta:
    entries: int
    mint: int
    maxt: int
    offset: int
    length: int
    raw_length: int
    crc32: int


@dataclass(slots=True)
class CompressedBlock:
    """A cut block held by the ingester until its chunk is flushed."""

    data: bytes  # zstd frame
    entries: int
    mint: int
    maxt: int
    raw_length: int


class Codec:
    """Deterministic zstd: fixed level, single thread, no checksum, no content size."""

    def __init__(self, level: int = 3) -> None:
        self._c = zstandard.ZstdCompressor(
            level=level,
            threads=0,
            write_checksum=False,
            write_content_size=True,
            write_dict_id=False,
        )
        self._d = zstandard.ZstdDecompressor()

    def compress_block(self, raw: bytes) -> CompressedBlock:
        (n,) = struct.unpack_from("<I", raw, 0)
        ts = array("q")
        ts.frombytes(raw[4 : 4 + 8 * n])
        return CompressedBlock(self._c.compress(raw), n, ts[0], ts[-1], len(raw))

    def decompress(self, data: bytes, raw_length: int) -> bytes:
        try:
            raw = self._d.decompress(data, max_output_size=raw_length)
        except zstandard.ZstdError as e:
            raise CorruptDataError(f"block does not decompress: {e}") from None
        if len(raw) != raw_length:
            raise CorruptDataError("block decompressed to an unexpected length")
        return raw


def encode_chunk(blocks: list[CompressedBlock]) -> bytes:
    """Lay out header, blocks, metas and trailer. Blocks must be in time order."""
    out = [_HEADER.pack(MAGIC, VERSION, CODEC_ZSTD, 0)]
    offset = _HEADER.size
    metas = []
    for b in blocks:
        metas.append(
            _META.pack(
                b.entries, b.mint, b.maxt, offset, len(b.data), b.raw_length, zlib.crc32(b.data)
            )
        )
        out.append(b.data)
        offset += len(b.data)
    meta_bytes = b"".join(metas)
    out.append(meta_bytes)
    out.append(_TRAILER.pack(offset, len(blocks), zlib.crc32(meta_bytes), MAGIC))
    return b"".join(out)


@dataclass(slots=True)
class ChunkReader:
    """Random access to the blocks of an encoded chunk; validates as it reads."""

    data: bytes
    metas: list[BlockMeta]

    @classmethod
    def open(cls, data: bytes) -> ChunkReader:
        if len(data) < _HEADER.size + _TRAILER.size:
            raise CorruptDataError(f"chunk too short ({len(data)} bytes)")
        magic, version, codec, _ = _HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            raise CorruptDataError("not a chunk: bad magic number")
        if version != VERSION or codec != CODEC_ZSTD:
            raise CorruptDataError(f"unsupported chunk version {version} / codec {codec}")
        metas_offset, n_blocks, metas_crc, tmagic = _TRAILER.unpack_from(
            data, len(data) - _TRAILER.size
        )
        if tmagic != MAGIC:
            raise CorruptDataError("chunk truncated: trailer missing")
        end = len(data) - _TRAILER.size
        meta_bytes = data[metas_offset:end]
        if len(meta_bytes) != n_blocks * _META.size or zlib.crc32(meta_bytes) != metas_crc:
            raise CorruptDataError("chunk block index fails its checksum")
        metas = [BlockMeta(*_META.unpack_from(meta_bytes, i * _META.size)) for i in range(n_blocks)]
        for m in metas:
            if m.offset + m.length > metas_offset:
                raise CorruptDataError("chunk block points past the block area")
        return cls(data, metas)

    def block(self, i: int, codec: Codec) -> Block:
        m = self.metas[i]
        data = self.data[m.offset : m.offset + m.length]
        if zlib.crc32(data) != m.crc32:
            raise CorruptDataError(f"chunk block {i} fails its checksum")
        return decode_block(codec.decompress(data, m.raw_length))

    def blocks_in_range(self, start: int, end: int, codec: Codec) -> list[Block]:
        """Blocks that may hold entries with start <= ts <= end (whole blocks rejected early)."""
        return [
            self.block(i, codec)
            for i, m in enumerate(self.metas)
            if m.maxt >= start and m.mint <= end
        ]
