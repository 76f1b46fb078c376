"""Push-request bodies of ``POST /loki/api/v1/push``: decoding and encoding.

Two wire formats reach the push endpoint, chosen by ``Content-Type``:

``application/x-protobuf`` (also an absent or empty ``Content-Type``, as in Loki)
    The body is a raw (block, not framed) snappy compression of Loki's
    ``logproto.PushRequest``. The messages and field numbers below are Loki's own, from
    ``pkg/push/push.proto`` in grafana/loki (Apache-2.0)::

        PushRequest      { repeated StreamAdapter streams = 1; string format = 2; }
        StreamAdapter    { string labels = 1; repeated EntryAdapter entries = 2;
                           uint64 hash = 3; }
        EntryAdapter     { google.protobuf.Timestamp timestamp = 1; string line = 2;
                           repeated LabelPairAdapter structuredMetadata = 3;
                           repeated LabelPairAdapter parsed = 4; }
        LabelPairAdapter { string name = 1; string value = 2; }
        Timestamp        { int64 seconds = 1; int32 nanos = 2; }

    ``labels`` is the stream's label set in its string form (``{app="a", env="b"}``),
    kept as sent; ``format``, ``hash`` and ``parsed`` (a query-side field) are read
    past, and so are unknown fields of any wire type. The snappy block starts with the
    uvarint of its decompressed length, which is checked against the size limit before
    anything is decompressed.

``application/json``
    ``{"streams": [{"stream": {"k": "v"}, "values": [["<ns>", "line"],
    ["<ns>", "line", {"k": "v"}]]}]}``, as Loki's ``pkg/loghttp`` reads it: the
    timestamp is a JSON *string* holding integer nanoseconds since the epoch (a JSON
    number is refused, as in Loki); stream label values, the line and the optional
    third element's structured metadata values are strings. ``null`` for ``streams``,
    ``values`` or an entry means "none", as in Loki.

Either body may carry ``Content-Encoding: gzip`` or ``deflate`` (raw DEFLATE, as Go's
``compress/flate`` that Loki uses); ``snappy`` is accepted and means the protobuf body's
own snappy, as in Loki. Decompression is capped: a body that would inflate past
``max_decompressed_bytes`` is refused, and memory never holds more than the cap.

Every malformed body raises :class:`~loki_async.errors.BadRequest` with a message that
says what to fix; no other exception escapes :func:`decode_push` for any input.
Decoding does not validate: label syntax, line length and timestamp windows are the
distributor's limits.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import cramjam
import orjson

from loki_async.errors import BadRequest

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_PROTOBUF = "application/x-protobuf"

_NS_PER_S = 1_000_000_000
_MIN_INT64 = -(1 << 63)
_MAX_INT64 = (1 << 63) - 1
_UINT64 = (1 << 64) - 1
# The largest seconds value whose nanoseconds fit an int64 whatever `nanos` is.
_MAX_FAST_SECONDS = 9_223_372_035

_PB_ERROR = "failed to decode protobuf push request: "
_JSON_ERROR = "failed to decode JSON push request: "
_JSON_ENTRY_SHAPE = '["<unix epoch in nanoseconds as a string>", "<log line>", {optional metadata}]'


@dataclass(slots=True)
class PushStream:
    """One stream of a push request, as decoded; not yet validated."""

    # protobuf: the labels string as sent (e.g. '{app="a", env="b"}');
    # JSON: the stream object's pairs in order
    labels: str | list[tuple[str, str]]
    timestamps: list[int]  # nanoseconds since the epoch, one per entry
    lines: list[bytes]  # the log lines, UTF-8 bytes
    # structured metadata per entry; None when no entry in the stream has any
    metadata: list[list[tuple[str, str]]] | None


def decode_push(
    body: bytes,
    content_type: str,
    content_encoding: str = "",
    max_decompressed_bytes: int = 100 << 20,
) -> list[PushStream]:
    """Decode the body of a push request into its streams.

    ``content_type`` and ``content_encoding`` are the request's header values (``""``
    when absent). ``max_decompressed_bytes`` caps every decompression step: a snappy body
    whose header claims more is refused before it is decompressed, and gzip or deflate
    stops inflating one byte past the cap. Raises :class:`BadRequest` for an unsupported
    content type or encoding and for every malformed body, and nothing else.
    """
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type not in (CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF, ""):
        raise BadRequest(
            f"unsupported Content-Type {content_type!r}: push requests must be "
            f"{CONTENT_TYPE_JSON!r} or {CONTENT_TYPE_PROTOBUF!r} (snappy-compressed)"
        )
    body = _decode_content_encoding(body, content_encoding, max_decompressed_bytes)
    if media_type == CONTENT_TYPE_JSON:
        return _decode_json(body)
    data = _snappy_decompress(body, max_decompressed_bytes)
    try:
        return _decode_push_request(data)
    except IndexError:
        # Every read past the end of the buffer lands here; reads past the end of an
        # enclosing message are checked where the message ends.
        raise BadRequest(_PB_ERROR + "unexpected EOF") from None


def encode_push_protobuf(streams: list[PushStream]) -> bytes:
    """Encode streams as a snappy-compressed ``PushRequest`` (the protobuf push body).

    Labels given as pairs are written with :func:`format_labels`, in the order given.
    """
    out = bytearray()
    for stream in streams:
        body = _encode_stream(stream)
        out += b"\x0a"
        out += _uvarint(len(body))
        out += body
    return bytes(cramjam.snappy.compress_raw(out))


def encode_push_json(streams: list[PushStream]) -> bytes:
    """Encode streams as Loki's JSON push body.

    Labels must be pairs (a labels string is not parsed here). Lines that are not valid
    UTF-8 cannot travel in JSON; their bad bytes become U+FFFD, as Go's encoder does.
    """
    out = []
    for stream in streams:
        if isinstance(stream.labels, str):
            raise AssertionError("BUG: encode_push_json needs the labels as pairs")
        metadata = stream.metadata
        values = []
        for n, (ts, line) in enumerate(zip(stream.timestamps, stream.lines, strict=True)):
            value: list[object] = [str(ts), line.decode("utf-8", "replace")]
            if metadata is not None and metadata[n]:
                value.append(dict(metadata[n]))
            values.append(value)
        out.append({"stream": dict(stream.labels), "values": values})
    return orjson.dumps({"streams": out})


def format_labels(pairs: list[tuple[str, str]]) -> str:
    """The label string ``{a="1", b="x\\"y"}`` of ``pairs``, in the order given.

    Values are quoted like Go's ``strconv.Quote``, which is what Loki and Prometheus
    print and parse.
    """
    return "{" + ", ".join(f"{name}={_go_quote(value)}" for name, value in pairs) + "}"


# --- content encodings ---------------------------------------------------------------


def _decode_content_encoding(body: bytes, encoding: str, limit: int) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity", "snappy"):
        # "snappy" names the protobuf body's own compression (Loki accepts the header).
        return body
    if encoding == "gzip":
        return _inflate(body, zlib.MAX_WBITS | 16, "gzip", limit)
    if encoding == "deflate":
        return _inflate(body, -zlib.MAX_WBITS, "deflate", limit)
    raise BadRequest(f"Content-Encoding {encoding!r} not supported: use gzip, deflate, or none")


_INFLATE_STEP = 1 << 20


def _inflate(body: bytes, wbits: int, name: str, limit: int) -> bytes:
    """Inflate ``body``, never holding more than ``limit`` + 1 MiB decompressed bytes.

    Inflating in steps matters: one ``decompress(body, limit)`` call collects its output
    in blocks and then joins them, which holds twice the limit at its peak.
    gzip members may be concatenated (Go's reader reads them all).
    """
    out = bytearray()
    rest = body
    try:
        while True:
            inflater = zlib.decompressobj(wbits)
            pending = rest
            while not inflater.eof:
                chunk = inflater.decompress(pending, _INFLATE_STEP)
                out += chunk
                if len(out) > limit:
                    raise BadRequest(
                        f"{name}: decompressed push request larger than max ({limit} bytes)"
                    )
                pending = inflater.unconsumed_tail
                if not pending and not chunk:
                    raise BadRequest(f"{name}: unexpected EOF: the compressed body is truncated")
            rest = inflater.unused_data
            if not rest or wbits < 0:
                break
    except zlib.error as exc:
        raise BadRequest(f"{name}: invalid compressed body: {exc}") from None
    if rest:
        raise BadRequest(f"{name}: trailing bytes after the compressed body")
    return bytes(out)


def _snappy_decompress(body: bytes, limit: int) -> bytes:
    # The block starts with the uvarint of its decompressed length (at most 32 bits).
    size = 0
    for i in range(5):
        if i >= len(body):
            raise BadRequest(_PB_ERROR + "snappy: corrupt input: missing length header")
        b = body[i]
        size |= (b & 0x7F) << (7 * i)
        if b < 0x80:
            break
    else:
        raise BadRequest(_PB_ERROR + "snappy: decoded block is too large")
    if size > limit:
        raise BadRequest(f"received message larger than max ({size} vs {limit})")
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except cramjam.DecompressionError as exc:
        raise BadRequest(
            f"{_PB_ERROR}{exc} (the body must be raw block snappy, not the framed format)"
        ) from None


# --- protobuf decoding ---------------------------------------------------------------
#
# Reads index `data[i]` directly; an index past the end of `data` raises IndexError,
# which decode_push turns into "unexpected EOF". Every length-delimited field is checked
# against the end of its enclosing message, and every message must end exactly there.


def _decode_push_request(data: bytes) -> list[PushStream]:
    streams = []
    end = len(data)
    i = 0
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x0A:  # streams
            n, i = _uvarint_at(data, i)
            stream_end = i + n
            if stream_end > end:
                raise _eof("StreamAdapter")
            streams.append(_decode_stream(data, i, stream_end))
            i = stream_end
        else:
            if tag >= 0x80:
                tag, i = _uvarint_rest(data, i, tag & 0x7F)
            i = _skip_field(data, i, tag, end, "PushRequest", _PUSH_REQUEST_FIELDS)
    return streams


def _decode_stream(data: bytes, i: int, end: int) -> PushStream:
    labels = ""
    timestamps: list[int] = []
    lines: list[bytes] = []
    metadata: list[list[tuple[str, str]]] | None = None
    append_ts = timestamps.append
    append_line = lines.append
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x12:  # entries
            n = data[i]
            i += 1
            if n >= 0x80:
                n, i = _uvarint_rest(data, i, n & 0x7F)
            entry_end = i + n
            if entry_end > end:
                raise _eof("EntryAdapter")
            # Fast path: what Loki's clients send, `timestamp {seconds, nanos}` then
            # `line` and nothing else, read inline. Anything else, including every error,
            # goes to the slow path, which reads the entry again from its start.
            if n > 2 and data[i] == 0x0A and data[i + 1] < 0x80 and i + 2 + data[i + 1] < entry_end:
                ts_end = i + 2 + data[i + 1]
                p = i + 2
                seconds = nanos = 0
                if p < ts_end and data[p] == 0x08:
                    b = data[p + 1]
                    p += 2
                    seconds = b & 0x7F
                    shift = 7
                    while b >= 0x80 and shift < 35:
                        b = data[p]
                        p += 1
                        seconds |= (b & 0x7F) << shift
                        shift += 7
                    if b >= 0x80:
                        p = entry_end  # more than 35 bits: left to the slow path
                if p < ts_end and data[p] == 0x10:
                    b = data[p + 1]
                    p += 2
                    nanos = b & 0x7F
                    shift = 7
                    while b >= 0x80 and shift < 35:
                        b = data[p]
                        p += 1
                        nanos |= (b & 0x7F) << shift
                        shift += 7
                    if b >= 0x80:
                        p = entry_end
                if p == ts_end and data[p] == 0x12:
                    n = data[p + 1]
                    p += 2
                    if n >= 0x80:
                        b = data[p]
                        p += 1
                        n = (n & 0x7F) | ((b & 0x7F) << 7)
                        if b >= 0x80:
                            n, p = _uvarint_rest(data, p, n, 14)
                    if p + n == entry_end and seconds <= _MAX_FAST_SECONDS and nanos < _NS_PER_S:
                        append_ts(seconds * _NS_PER_S + nanos)
                        append_line(data[p:entry_end])
                        if metadata is not None:
                            metadata.append([])
                        i = entry_end
                        continue
            # Slow path: any field order, repeated or unknown fields, metadata.
            ts, line, entry_metadata = _decode_entry(data, i, entry_end)
            append_ts(ts)
            append_line(line)
            if entry_metadata:
                if metadata is None:
                    metadata = [[] for _ in range(len(timestamps) - 1)]
                metadata.append(entry_metadata)
            elif metadata is not None:
                metadata.append([])
            i = entry_end
        elif tag == 0x0A:  # labels
            n, i = _uvarint_at(data, i)
            if i + n > end:
                raise _eof("StreamAdapter.labels")
            labels = _utf8(data, i, i + n, "stream labels")
            i += n
        else:
            if tag >= 0x80:
                tag, i = _uvarint_rest(data, i, tag & 0x7F)
            i = _skip_field(data, i, tag, end, "StreamAdapter", _STREAM_FIELDS)
    if i != end:
        raise _eof("StreamAdapter")
    return PushStream(labels, timestamps, lines, metadata)


def _decode_entry(data: bytes, i: int, end: int) -> tuple[int, bytes, list[tuple[str, str]]]:
    seconds = nanos = 0
    line = b""
    metadata: list[tuple[str, str]] = []
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x0A or tag == 0x12 or tag == 0x1A:
            n = data[i]
            i += 1
            if n >= 0x80:
                n, i = _uvarint_rest(data, i, n & 0x7F)
            field_end = i + n
            if field_end > end:
                raise _eof("EntryAdapter")
            if tag == 0x0A:  # timestamp; a repeated one replaces the earlier, as in Go
                seconds, nanos = _decode_timestamp(data, i, field_end)
            elif tag == 0x12:  # line: bytes as sent, never decoded
                line = data[i:field_end]
            else:  # structuredMetadata
                metadata.append(_decode_label_pair(data, i, field_end))
            i = field_end
        else:
            # `parsed` (4) is a query-side field: read past it like an unknown one.
            if tag >= 0x80:
                tag, i = _uvarint_rest(data, i, tag & 0x7F)
            i = _skip_field(data, i, tag, end, "EntryAdapter", _ENTRY_FIELDS)
    if i != end:
        raise _eof("EntryAdapter")
    if not 0 <= nanos < _NS_PER_S:
        raise BadRequest(f"{_PB_ERROR}entry timestamp nanos {nanos} not in range [0, 1e9)")
    ts = seconds * _NS_PER_S + nanos
    if not _MIN_INT64 <= ts <= _MAX_INT64:
        raise BadRequest(
            f"{_PB_ERROR}entry timestamp {seconds}s is out of range: nanoseconds since the "
            "epoch must fit a signed 64-bit integer (years 1678 to 2262)"
        )
    return ts, line, metadata


def _decode_timestamp(data: bytes, i: int, end: int) -> tuple[int, int]:
    seconds = nanos = 0
    while i < end:
        tag, i = _uvarint_at(data, i)
        if tag == 0x08:
            value, i = _uvarint_at(data, i)
            value &= _UINT64
            seconds = value - (1 << 64) if value >> 63 else value  # int64
        elif tag == 0x10:
            value, i = _uvarint_at(data, i)
            value &= 0xFFFFFFFF
            nanos = value - (1 << 32) if value >> 31 else value  # int32
        else:
            i = _skip_field(data, i, tag, end, "Timestamp", _TIMESTAMP_FIELDS)
    if i != end:
        raise _eof("Timestamp")
    return seconds, nanos


def _decode_label_pair(data: bytes, i: int, end: int) -> tuple[str, str]:
    # Fast path: `name` then `value`, each shorter than 128 bytes, both valid UTF-8.
    if end - i >= 4 and data[i] == 0x0A and data[i + 1] < 0x80:
        value_at = i + 2 + data[i + 1]
        if (
            value_at + 2 <= end
            and data[value_at] == 0x12
            and data[value_at + 1] < 0x80
            and value_at + 2 + data[value_at + 1] == end
        ):
            try:
                return data[i + 2 : value_at].decode(), data[value_at + 2 : end].decode()
            except UnicodeDecodeError:
                pass  # the slow path says which one
    # Slow path: any order, repeated or unknown fields, long strings.
    name = value = ""
    while i < end:
        tag, i = _uvarint_at(data, i)
        if tag == 0x0A or tag == 0x12:
            n, i = _uvarint_at(data, i)
            if i + n > end:
                raise _eof("LabelPairAdapter")
            if tag == 0x0A:
                name = _utf8(data, i, i + n, "structured metadata name")
            else:
                value = _utf8(data, i, i + n, "structured metadata value")
            i += n
        else:
            i = _skip_field(data, i, tag, end, "LabelPairAdapter", _LABEL_PAIR_FIELDS)
    if i != end:
        raise _eof("LabelPairAdapter")
    return name, value


# Each message's fields: number -> (name, the wire type that _skip_field reads past, or
# None for a field decoded before _skip_field is reached). A known field with another wire
# type is refused, like Go's "proto: wrong wireType", instead of being skipped.
_PUSH_REQUEST_FIELDS = {1: ("streams", None), 2: ("format", 2)}
_STREAM_FIELDS = {1: ("labels", None), 2: ("entries", None), 3: ("hash", 0)}
_ENTRY_FIELDS = {
    1: ("timestamp", None),
    2: ("line", None),
    3: ("structuredMetadata", None),
    4: ("parsed", 2),
}
_TIMESTAMP_FIELDS = {1: ("seconds", None), 2: ("nanos", None)}
_LABEL_PAIR_FIELDS = {1: ("name", None), 2: ("value", None)}


def _skip_field(
    data: bytes,
    i: int,
    tag: int,
    end: int,
    message: str,
    known: dict[int, tuple[str, int | None]],
) -> int:
    """Read past one field whose tag was read; return the index after it.

    Known fields reach here to be ignored (``format``, ``hash``, ``parsed``) or to be
    refused for their wire type. Groups are skipped with an explicit stack
    so that nested input cannot exhaust the recursion limit.
    """
    field, wire_type = tag >> 3, tag & 7
    if field == 0:
        raise BadRequest(f"{_PB_ERROR}{message}: illegal tag 0 (wire type {wire_type})")
    name, skipped_wire_type = known.get(field, ("", wire_type))
    if wire_type != skipped_wire_type:
        raise BadRequest(f"{_PB_ERROR}{message}: wrong wireType = {wire_type} for field {name}")
    groups: list[int] = []
    while True:
        if wire_type == 0:
            _, i = _uvarint_at(data, i)
        elif wire_type == 2:
            n, i = _uvarint_at(data, i)
            i += n
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        elif wire_type == 3:
            groups.append(field)
        elif wire_type == 4:
            if not groups or groups.pop() != field:
                raise BadRequest(f"{_PB_ERROR}{message}: end group without a matching start")
        else:
            raise BadRequest(f"{_PB_ERROR}{message}: illegal wireType {wire_type}")
        if i > end:
            raise _eof(message)
        if not groups:
            return i
        tag, i = _uvarint_at(data, i)
        field, wire_type = tag >> 3, tag & 7


def _uvarint_at(data: bytes, i: int) -> tuple[int, int]:
    b = data[i]
    if b < 0x80:
        return b, i + 1
    return _uvarint_rest(data, i + 1, b & 0x7F)


def _uvarint_rest(data: bytes, i: int, value: int, shift: int = 7) -> tuple[int, int]:
    """Finish a varint at ``i`` whose first ``shift // 7`` bytes' payload is ``value``.

    Accepts up to 10 bytes, like Go's protobuf reader; callers mask to 64 bits where
    the value is an integer field.
    """
    while shift < 70:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
    raise BadRequest(_PB_ERROR + "proto: integer overflow (varint longer than 10 bytes)")


def _utf8(data: bytes, start: int, end: int, what: str) -> str:
    try:
        return data[start:end].decode()
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{_PB_ERROR}{what}: not valid UTF-8 ({exc.reason})") from None


def _eof(message: str) -> BadRequest:
    return BadRequest(f"{_PB_ERROR}unexpected EOF in {message}: the message is truncated")


# --- protobuf encoding ---------------------------------------------------------------

_ONE_BYTE_VARINTS = [bytes((n,)) for n in range(0x80)]


def _uvarint(n: int) -> bytes:
    if n < 0x80:
        return _ONE_BYTE_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _encode_stream(stream: PushStream) -> bytearray:
    labels = stream.labels if isinstance(stream.labels, str) else format_labels(stream.labels)
    labels_bytes = labels.encode()
    out = bytearray(b"\x0a")
    out += _uvarint(len(labels_bytes))
    out += labels_bytes
    metadata = stream.metadata
    uvarint = _uvarint
    for n, (ts, line) in enumerate(zip(stream.timestamps, stream.lines, strict=True)):
        seconds, nanos = divmod(ts, _NS_PER_S)  # floor: nanos in [0, 1e9) as protobuf wants
        # proto3 leaves zero values out, as Go's marshaller does.
        stamp = b"\x08" + uvarint(seconds & _UINT64) if seconds else b""
        if nanos:
            stamp += b"\x10" + uvarint(nanos)
        entry = b"\x0a" + uvarint(len(stamp)) + stamp
        if line:
            entry += b"\x12" + uvarint(len(line)) + line
        if metadata is not None:
            for name, value in metadata[n]:
                name_bytes, value_bytes = name.encode(), value.encode()
                pair = (
                    b"\x0a" + uvarint(len(name_bytes)) + name_bytes
                    + b"\x12" + uvarint(len(value_bytes)) + value_bytes
                )  # fmt: skip
                entry += b"\x1a" + uvarint(len(pair)) + pair
        out += b"\x12"
        out += uvarint(len(entry))
        out += entry
    return out


# --- JSON ----------------------------------------------------------------------------


def _decode_json(body: bytes) -> list[PushStream]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{_JSON_ERROR}{exc}") from None
    if not isinstance(document, dict):
        raise BadRequest(f'{_JSON_ERROR}the body must be a JSON object {{"streams": [...]}}')
    raw_streams = document.get("streams")
    if raw_streams is None:
        return []
    if not isinstance(raw_streams, list):
        raise BadRequest(f'{_JSON_ERROR}"streams" must be a list, got {_show(raw_streams)}')
    return [_decode_json_stream(raw, n) for n, raw in enumerate(raw_streams)]


def _decode_json_stream(raw: object, index: int) -> PushStream:
    where = f"{_JSON_ERROR}streams[{index}]"
    if not isinstance(raw, dict):
        raise BadRequest(
            f'{where} must be an object {{"stream": {{...}}, "values": [...]}}, got {_show(raw)}'
        )
    labels = raw.get("stream")
    if labels is None:
        labels = {}
    elif not isinstance(labels, dict):
        raise BadRequest(f"{where}.stream must be an object of labels, got {_show(labels)}")
    for name, value in labels.items():
        if type(value) is not str:
            raise BadRequest(
                f"{where}.stream: label {name!r} must have a string value, got {_show(value)}"
            )
    values = raw.get("values")
    if values is None:
        values = []
    elif not isinstance(values, list):
        raise BadRequest(
            f"{where}.values must be a list of {_JSON_ENTRY_SHAPE}, got {_show(values)}"
        )
    timestamps: list[int] = []
    lines: list[bytes] = []
    metadata: list[list[tuple[str, str]]] | None = None
    for n, entry in enumerate(values):
        if type(entry) is not list or not 2 <= len(entry) <= 3:
            if entry is None:
                continue  # Loki skips null entries
            raise BadRequest(
                f"{where}.values[{n}] must be an array of 2 or 3 values {_JSON_ENTRY_SHAPE}, "
                f"got {_show(entry)}"
            )
        ts, line = entry[0], entry[1]
        # Loki's rule (strconv.ParseInt, base 10): an optional "-", ASCII digits, 64 bits.
        # Checked before int(), which would also take "+1", " 1", "1_0" and other digits.
        if (
            type(ts) is not str
            or not (ts.isdigit() or (ts[:1] == "-" and ts[1:].isdigit()))
            or not ts.isascii()
            or len(ts) > 20
            or not _MIN_INT64 <= (ts_ns := int(ts)) <= _MAX_INT64
        ):
            raise _bad_timestamp(where, n, ts)
        if type(line) is not str:
            raise BadRequest(
                f"{where}.values[{n}][1]: the log line must be a string, got {_show(line)}"
            )
        timestamps.append(ts_ns)
        lines.append(line.encode())
        entry_metadata = _json_metadata(entry[2], where, n) if len(entry) == 3 else None
        if entry_metadata:
            if metadata is None:
                metadata = [[] for _ in range(len(timestamps) - 1)]
            metadata.append(entry_metadata)
        elif metadata is not None:
            metadata.append([])
    return PushStream(list(labels.items()), timestamps, lines, metadata)


def _json_metadata(raw: object, where: str, n: int) -> list[tuple[str, str]]:
    if not isinstance(raw, dict):
        raise BadRequest(
            f"{where}.values[{n}][2]: structured metadata must be an object of string "
            f"values, got {_show(raw)}"
        )
    for name, value in raw.items():
        if type(value) is not str:
            raise BadRequest(
                f"{where}.values[{n}][2]: structured metadata {name!r} must have a string "
                f"value, got {_show(value)}"
            )
    return list(raw.items())


def _bad_timestamp(where: str, n: int, ts: object) -> BadRequest:
    return BadRequest(
        f"{where}.values[{n}][0]: the timestamp must be a string of integer nanoseconds "
        f'since the epoch that fits 64 bits, e.g. "1700000000000000000", got {_show(ts)}'
    )


def _show(value: object, limit: int = 60) -> str:
    """A short JSON rendering of a user's value for an error message."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- label strings -------------------------------------------------------------------

_PLAIN = re.compile(r"[ !#-\[\]-~]*")  # printable ASCII other than " and \
_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", '"': '\\"', "\\": "\\\\"}  # fmt: skip


def _go_quote(value: str) -> str:
    """``value`` quoted like Go's ``strconv.Quote``."""
    if _PLAIN.fullmatch(value):  # Fast path: nothing to escape
        return f'"{value}"'
    out = []
    for char in value:
        escaped = _GO_ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char.isprintable():  # Python's printable set is Go's unicode.IsPrint
            out.append(char)
        elif char < "\x80":
            out.append(f"\\x{ord(char):02x}")
        elif char <= "\uffff":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'
