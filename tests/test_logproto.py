"""Push-body decoding and encoding: round trips, Loki's wire details, malformed bodies."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import cramjam
import hypothesis
import orjson
import pytest

from loki_async.errors import BadRequest
from loki_async.logproto import (
    PushStream,
    decode_push,
    encode_push_json,
    encode_push_protobuf,
    format_labels,
)

LOGHUB = Path(__file__).parents[1].parent / "shared" / "data" / "loghub"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
T0 = 1_700_000_000_123_456_789


def _streams(with_metadata: bool) -> list[PushStream]:
    metadata = [[("trace_id", "0242ac120002"), ("user", 'a "quoted"\nname')], [], [("k", "")]]
    return [
        PushStream(
            [("app", "api"), ("env", "prod")],
            [T0, T0 + 1, T0 + 1_000_000_000],
            [b"GET /index.html 200", b"", "caf\u00e9 \u2603 \U0001f600".encode()],
            metadata if with_metadata else None,
        ),
        PushStream([("app", "worker")], [0, -1, 2**63 - 1], [b"a", b"b\tc", b"d"], None),
        PushStream([("app", "empty")], [], [], None),
    ]


def _raw_protobuf(streams: list[PushStream]) -> bytes:
    """The uncompressed PushRequest, to build malformed variants of it."""
    return bytes(cramjam.snappy.decompress_raw(encode_push_protobuf(streams)))


def _snappy(raw: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(raw))


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("with_metadata", [False, True])
def test_protobuf_round_trip_keeps_entries_and_formats_labels(with_metadata: bool) -> None:
    sent = _streams(with_metadata)
    got = decode_push(encode_push_protobuf(sent), PROTOBUF)
    assert len(got) == len(sent)
    for s, g in zip(sent, got, strict=True):
        assert g.labels == format_labels(s.labels)  # protobuf carries the labels string
        assert g.timestamps == s.timestamps
        assert g.lines == s.lines
        assert g.metadata == s.metadata
        assert all(type(line) is bytes for line in g.lines)


@pytest.mark.parametrize("with_metadata", [False, True])
@pytest.mark.parametrize(
    ("content_type", "encoding", "compress"),
    [
        (JSON, "", lambda b: b),
        ("application/json; charset=utf-8", "", lambda b: b),
        (JSON, "gzip", gzip.compress),
        (JSON, "deflate", lambda b: zlib.compress(b, wbits=-zlib.MAX_WBITS)),
    ],
)
def test_json_round_trip_keeps_label_pairs_in_order(
    with_metadata: bool, content_type: str, encoding: str, compress
) -> None:
    sent = _streams(with_metadata)
    got = decode_push(compress(encode_push_json(sent)), content_type, encoding)
    assert got == sent


def test_protobuf_with_string_labels_sends_them_as_given() -> None:
    stream = PushStream('{env="b", app="a"}', [T0], [b"x"], None)
    [got] = decode_push(encode_push_protobuf([stream]), PROTOBUF)
    assert got.labels == '{env="b", app="a"}'


def test_gzip_protobuf_body_is_decoded_then_unsnappied() -> None:
    sent = _streams(True)
    got = decode_push(gzip.compress(encode_push_protobuf(sent)), PROTOBUF, "gzip")
    assert [g.lines for g in got] == [s.lines for s in sent]


def test_empty_content_type_means_protobuf_as_in_loki() -> None:
    got = decode_push(encode_push_protobuf(_streams(False)), "")
    assert [g.lines for g in got] == [s.lines for s in _streams(False)]


def test_snappy_content_encoding_header_is_accepted_for_protobuf() -> None:
    got = decode_push(encode_push_protobuf(_streams(False)), PROTOBUF, "snappy")
    assert len(got) == 3


def test_metadata_is_none_unless_some_entry_has_some() -> None:
    body = orjson.dumps(
        {"streams": [{"stream": {"a": "1"}, "values": [["1", "x", {}], ["2", "y"]]}]}
    )
    [json_stream] = decode_push(body, JSON)
    assert json_stream.metadata is None
    sent = [PushStream([("a", "1")], [1, 2, 3], [b"x", b"y", b"z"], [[], [("k", "v")], []])]
    [pb_stream] = decode_push(encode_push_protobuf(sent), PROTOBUF)
    assert pb_stream.metadata == [[], [("k", "v")], []]


def test_loghub_lines_survive_byte_identical() -> None:
    files = sorted(LOGHUB.glob("*.log"))
    assert files, f"no loghub logs under {LOGHUB}"
    for path in files:
        lines = path.read_bytes().split(b"\n")
        sent = [PushStream([("file", path.name)], list(range(len(lines))), lines, None)]
        [pb] = decode_push(encode_push_protobuf(sent), PROTOBUF)
        assert pb.lines == lines, path.name
        utf8 = [line for line in lines if _is_utf8(line)]
        sent = [PushStream([("file", path.name)], list(range(len(utf8))), utf8, None)]
        [js] = decode_push(gzip.compress(encode_push_json(sent)), JSON, "gzip")
        assert js.lines == utf8, path.name


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True


# --- protobuf wire details -----------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    if wire_type == 2:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire_type) + payload


def _entry(*fields: bytes) -> bytes:
    return _field(2, 2, b"".join(fields))


def _timestamp(seconds: int, nanos: int) -> bytes:
    return _field(1, 2, _field(1, 0, _varint(seconds & (2**64 - 1))) + _field(2, 0, _varint(nanos)))


def _stream(*fields: bytes) -> bytes:
    return _field(1, 2, b"".join(fields))


def _labels(text: str) -> bytes:
    return _field(1, 2, text.encode())


def test_hand_built_protobuf_with_unknown_and_parsed_fields_decodes() -> None:
    group = _field(9, 3, _field(1, 0, b"\x01") + _field(2, 3, b"") + _field(2, 4, b"")) + _field(
        9, 4, b""
    )
    unknown = (
        _field(15, 0, _varint(2**63))
        + _field(16, 1, b"\x00" * 8)  # two-byte tag
        + _field(1000, 2, b"anything")
        + _field(17, 5, b"\xff" * 4)
        + group
    )
    pair = _field(1, 2, b"trace_id") + _field(2, 2, b"abc") + unknown
    raw = (
        _field(2, 2, b"loki")  # PushRequest.format
        + unknown
        + _stream(
            _field(3, 0, _varint(12345)),  # hash
            _labels('{app="old"}'),
            unknown,
            # line before timestamp, parsed labels, unknown fields everywhere
            _entry(
                _field(2, 2, b"first"),
                unknown,
                _field(4, 2, _field(1, 2, b"level") + _field(2, 2, b"info")),
                _field(1, 2, _field(2, 0, _varint(5)) + unknown + _field(1, 0, _varint(7))),
                _field(3, 2, pair),
            ),
            _entry(_timestamp(1, 0)),  # no line: the empty line
            _entry(),  # empty entry: epoch, empty line
            _labels('{app="a", env="b"}'),  # a repeated field: the last one wins
        )
    )
    [stream] = decode_push(_snappy(raw), PROTOBUF)
    assert stream.labels == '{app="a", env="b"}'
    assert stream.timestamps == [7 * 10**9 + 5, 10**9, 0]
    assert stream.lines == [b"first", b"", b""]
    assert stream.metadata == [[("trace_id", "abc")], [], []]


def test_protobuf_timestamps_before_the_epoch_and_at_the_int64_edges() -> None:
    times = [-1, -(10**9), -(2**63), 2**63 - 1, 1]
    sent = [PushStream([("a", "b")], times, [b"x"] * len(times), None)]
    [got] = decode_push(encode_push_protobuf(sent), PROTOBUF)
    assert got.timestamps == times


def test_protobuf_lines_keep_invalid_utf8_bytes() -> None:
    raw = _stream(_labels('{a="b"}'), _entry(_timestamp(1, 0), _field(2, 2, b"\xff\xfe ok")))
    [stream] = decode_push(_snappy(raw), PROTOBUF)
    assert stream.lines == [b"\xff\xfe ok"]


def test_empty_push_request_has_no_streams() -> None:
    assert decode_push(_snappy(b""), PROTOBUF) == []
    assert decode_push(b'{"streams": null}', JSON) == []
    assert decode_push(b"{}", JSON) == []


# --- malformed protobuf --------------------------------------------------------------


def _bad_protobuf(raw: bytes, expected: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_push(_snappy(raw), PROTOBUF)
    assert expected in info.value.message
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            _stream(_labels('{a="b"}'), _entry(_timestamp(1, 0), b"\x12\x0aabc")),
            "unexpected EOF in EntryAdapter",
            id="line-longer-than-entry",
        ),
        pytest.param(_stream(_labels('{a="b"}'))[:-3], "unexpected EOF", id="truncated-stream"),
        pytest.param(b"\x0a" + b"\xff" * 11, "integer overflow", id="varint-too-long"),
        pytest.param(b"\x0a\x80", "unexpected EOF", id="truncated-varint"),
        pytest.param(b"\x0a\x05\x0a\x7f", "unexpected EOF", id="length-past-end"),
        pytest.param(
            _stream(_field(1, 0, b"\x01")), "wrong wireType = 0 for field labels", id="wire-type"
        ),
        pytest.param(
            _stream(_field(2, 0, b"\x01")), "wrong wireType = 0 for field entries", id="entries"
        ),
        pytest.param(b"\x1e", "illegal wireType 6", id="wire-type-6"),
        pytest.param(b"\x07", "illegal tag 0", id="field-zero"),
        pytest.param(_field(9, 4, b""), "end group without a matching start", id="end-group"),
        pytest.param(_field(9, 3, b""), "unexpected EOF", id="unterminated-group"),
        pytest.param(b"\x4b" * 100_000, "unexpected EOF", id="deeply-nested-groups"),
        pytest.param(
            _stream(b"\x0a\x02\xc3\x28"),
            "stream labels: not valid UTF-8",
            id="labels-utf8",
        ),
        pytest.param(
            _stream(_entry(_field(3, 2, _field(1, 2, b"\xff")))),
            "structured metadata name: not valid UTF-8",
            id="metadata-utf8",
        ),
        pytest.param(
            _stream(_entry(_field(3, 2, _field(1, 2, b"key") + _field(2, 2, b"\xc3\x28")))),
            "structured metadata value: not valid UTF-8",
            id="metadata-value-utf8",
        ),
        pytest.param(
            _stream(_entry(_timestamp(1, 10**9))), "nanos 1000000000 not in range", id="nanos"
        ),
        pytest.param(
            _stream(_entry(_timestamp(-1, 2**32 - 1))), "not in range [0, 1e9)", id="neg-nanos"
        ),
        pytest.param(
            _stream(_entry(_timestamp(10**12, 0))), "out of range", id="timestamp-too-large"
        ),
    ],
)
def test_malformed_protobuf_is_a_bad_request(raw: bytes, expected: str) -> None:
    _bad_protobuf(raw, expected)


def test_bad_snappy_is_a_bad_request_naming_snappy() -> None:
    for body in (b"", b"\x05abc", b"\x0a\x00", b"\xff\xff\xff\xff\xff\xff"):
        with pytest.raises(BadRequest, match="failed to decode protobuf push request: snappy"):
            decode_push(body, PROTOBUF)


def test_framed_snappy_is_refused_with_a_hint() -> None:
    framed = bytes(cramjam.snappy.compress(b"\x0a\x00"))
    with pytest.raises(BadRequest, match=r"raw block snappy|larger than max"):
        decode_push(framed, PROTOBUF)


def test_snappy_length_header_past_the_limit_is_refused_before_decompressing() -> None:
    body = _varint(2**32 - 1) + b"\x00" * 16  # claims 4 GiB
    with pytest.raises(BadRequest, match=r"received message larger than max \(4294967295 vs"):
        decode_push(body, PROTOBUF)
    small = encode_push_protobuf(_streams(False))
    with pytest.raises(BadRequest, match="larger than max"):
        decode_push(small, PROTOBUF, max_decompressed_bytes=10)


def test_every_truncation_and_byte_flip_of_a_push_is_a_bad_request_or_decodes() -> None:
    raw = _raw_protobuf(_streams(True))
    variants = [raw[:n] for n in range(len(raw))]
    for pos in range(len(raw)):
        for value in (0x00, 0x7F, 0x80, 0xFF, raw[pos] ^ 0x01):
            variants.append(raw[:pos] + bytes((value,)) + raw[pos + 1 :])
    for variant in variants:
        try:
            decode_push(_snappy(variant), PROTOBUF)
        except BadRequest:
            pass


# --- content types and encodings -----------------------------------------------------


def test_unsupported_content_type_names_the_supported_ones() -> None:
    with pytest.raises(BadRequest) as info:
        decode_push(b"x", "text/plain")
    assert "application/json" in info.value.message
    assert "application/x-protobuf" in info.value.message


def test_unsupported_content_encoding_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="Content-Encoding 'br' not supported"):
        decode_push(b"x", JSON, "br")


def _zero_bomb(wbits: int, size: int = 1 << 30) -> bytes:
    """``size`` zero bytes compressed, built a megabyte at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(1 << 20)
    parts = [compressor.compress(zeros) for _ in range(size // len(zeros))]
    parts.append(compressor.flush())
    return b"".join(parts)


@pytest.mark.parametrize(
    ("encoding", "wbits"), [("gzip", zlib.MAX_WBITS | 16), ("deflate", -zlib.MAX_WBITS)]
)
def test_decompression_bomb_is_refused_at_the_limit(encoding: str, wbits: int) -> None:
    bomb = _zero_bomb(wbits)  # 1 GiB of zeros, about 1 MiB compressed
    assert len(bomb) < 2 << 20
    with pytest.raises(BadRequest, match=r"larger than max \(8388608 bytes\)"):
        decode_push(bomb, JSON, encoding, max_decompressed_bytes=8 << 20)


def test_gzip_limit_applies_to_concatenated_members() -> None:
    member = gzip.compress(bytes(600))
    with pytest.raises(BadRequest, match="larger than max"):
        decode_push(member * 2, JSON, "gzip", max_decompressed_bytes=1000)


def test_concatenated_gzip_members_are_one_body() -> None:
    body = encode_push_json(_streams(False))
    half = len(body) // 2
    joined = gzip.compress(body[:half]) + gzip.compress(body[half:])
    assert decode_push(joined, JSON, "gzip") == _streams(False)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (gzip.compress(b'{"streams": []}')[:-12], "gzip: unexpected EOF"),
        (b"not gzip at all", "gzip: invalid compressed body"),
        (b"", "gzip: unexpected EOF"),
        (gzip.compress(b"{}") + b"junk", "gzip: invalid compressed body"),
    ],
)
def test_broken_gzip_is_a_bad_request(body: bytes, expected: str) -> None:
    with pytest.raises(BadRequest, match=expected):
        decode_push(body, JSON, "gzip")


# --- malformed JSON ------------------------------------------------------------------


def _push(values: object, labels: object = None) -> bytes:
    return orjson.dumps({"streams": [{"stream": labels or {"a": "b"}, "values": values}]})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"{", "failed to decode JSON push request: ", id="not-json"),
        pytest.param(b'{"streams": [}', "failed to decode JSON", id="broken-json"),
        pytest.param(b"[]", 'JSON object {"streams"', id="top-level-list"),
        pytest.param(b'{"streams": {}}', '"streams" must be a list', id="streams-object"),
        pytest.param(b'{"streams": [1]}', "streams[0] must be an object", id="stream-number"),
        pytest.param(b'{"streams": [{"stream": []}]}', "must be an object of labels", id="labels"),
        pytest.param(_push([], {"a": 1}), "label 'a' must have a string value, got 1", id="lv"),
        pytest.param(_push([], {"a": None}), "label 'a' must have a string value", id="lv-null"),
        pytest.param(_push("1 x"), "values must be a list of", id="values-string"),
        pytest.param(_push({"1": "x"}), "values must be a list of", id="values-object"),
        pytest.param(_push(["1", "x"]), "values[0] must be an array of 2 or 3", id="flat"),
        pytest.param(_push([["1"]]), "values[0] must be an array of 2 or 3", id="one-value"),
        pytest.param(_push([["1", "x", {}, 4]]), "array of 2 or 3", id="four-values"),
        pytest.param(_push([[1, "x"]]), "values[0][0]: the timestamp must be a string", id="n"),
        pytest.param(_push([["abc", "x"]]), 'got "abc"', id="ts-letters"),
        pytest.param(_push([["1.5", "x"]]), "the timestamp must be", id="ts-float"),
        pytest.param(_push([["1e9", "x"]]), "the timestamp must be", id="ts-exponent"),
        pytest.param(_push([["+1", "x"]]), "the timestamp must be", id="ts-plus"),
        pytest.param(_push([[" 1", "x"]]), "the timestamp must be", id="ts-space"),
        pytest.param(_push([["1_0", "x"]]), "the timestamp must be", id="ts-underscore"),
        pytest.param(_push([["", "x"]]), "the timestamp must be", id="ts-empty"),
        pytest.param(_push([["-", "x"]]), "the timestamp must be", id="ts-minus"),
        pytest.param(_push([["\u0661\u0662", "x"]]), "the timestamp must be", id="ts-arabic"),
        pytest.param(_push([[str(2**63), "x"]]), "fits 64 bits", id="ts-overflow"),
        pytest.param(_push([["9" * 5000, "x"]]), "fits 64 bits", id="ts-huge"),
        pytest.param(_push([["1", 5]]), "values[0][1]: the log line must be a string", id="ln"),
        pytest.param(_push([["1", None]]), "the log line must be a string", id="line-null"),
        pytest.param(_push([["1", "x", []]]), "structured metadata must be an object", id="md"),
        pytest.param(_push([["1", "x", None]]), "structured metadata must be an object", id="mn"),
        pytest.param(
            _push([["1", "x"], ["2", "y", {"k": 1}]]),
            "values[1][2]: structured metadata 'k' must have a string value, got 1",
            id="metadata-value",
        ),
        pytest.param(b'{"streams": []}\xff', "failed to decode JSON", id="trailing-bytes"),
        pytest.param(b'{"streams": ["\xff"]}', "not valid UTF-8", id="invalid-utf8"),
    ],
)
def test_malformed_json_is_a_bad_request_saying_what_to_fix(body: bytes, expected: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_push(body, JSON)
    assert expected in info.value.message


def test_json_accepts_what_loki_accepts() -> None:
    body = orjson.dumps(
        {
            "streams": [
                {"stream": {"b": "2", "a": "1"}, "values": [None, ["-5", "before"], ["0", ""]]},
                {"stream": {"a": "1"}, "values": None, "unknown": True},
                {"values": [["1", "no labels"]]},
            ],
            "other": 1,
        }
    )
    first, second, third = decode_push(body, JSON)
    assert first.labels == [("b", "2"), ("a", "1")]
    assert first.timestamps == [-5, 0]
    assert first.lines == [b"before", b""]
    assert (second.timestamps, second.lines) == ([], [])
    assert third.labels == []


# --- encoders ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], "{}"),
        ([("a", "1"), ("b", 'x"y')], '{a="1", b="x\\"y"}'),
        ([("p", "C:\\dir\nnext\ttab")], '{p="C:\\\\dir\\nnext\\ttab"}'),
        ([("u", "caf\u00e9 \U0001f600")], '{u="caf\u00e9 \U0001f600"}'),
        ([("c", "\x00\x07\x1b\x7f")], '{c="\\x00\\a\\x1b\\x7f"}'),
        ([("s", "\u00a0\u200b\U000e0001")], '{s="\\u00a0\\u200b\\U000e0001"}'),
    ],
)
def test_format_labels_quotes_like_go(pairs: list[tuple[str, str]], expected: str) -> None:
    assert format_labels(pairs) == expected


def test_json_encoder_needs_label_pairs() -> None:
    with pytest.raises(AssertionError, match="BUG"):
        encode_push_json([PushStream('{a="b"}', [1], [b"x"], None)])


def test_json_encoder_replaces_invalid_utf8_like_go() -> None:
    sent = [PushStream([("a", "b")], [1], [b"ok \xff"], None)]
    [got] = decode_push(encode_push_json(sent), JSON)
    assert got.lines == ["ok \ufffd".encode()]


# --- fuzzing -------------------------------------------------------------------------

st = hypothesis.strategies


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(
    body=st.binary(max_size=512),
    content_type=st.sampled_from([PROTOBUF, JSON, "", "text/plain"]),
    encoding=st.sampled_from(["", "gzip", "deflate", "snappy"]),
    snappy_first=st.booleans(),
)
def test_random_bytes_never_raise_anything_but_bad_request(
    body: bytes, content_type: str, encoding: str, snappy_first: bool
) -> None:
    if snappy_first:  # valid snappy, so the protobuf reader sees the random bytes
        body = _snappy(body)
    try:
        decode_push(body, content_type, encoding, max_decompressed_bytes=1 << 16)
    except BadRequest:
        pass


def _pairs(keys: st.SearchStrategy[str]) -> st.SearchStrategy[list[tuple[str, str]]]:
    # Distinct names: a JSON object keeps one value per name.
    return st.dictionaries(keys, st.text(), max_size=4).map(lambda d: list(d.items()))


_random_stream = st.builds(
    lambda labels, entries, with_metadata: PushStream(
        labels,
        [ts for ts, _, _ in entries],
        [line for _, line, _ in entries],
        # decoding reports "no entry has metadata" as None
        [md for _, _, md in entries] if with_metadata and any(md for *_, md in entries) else None,
    ),
    labels=_pairs(st.from_regex(r"[a-z_]{1,8}", fullmatch=True)),
    entries=st.lists(
        st.tuples(st.integers(-(2**63), 2**63 - 1), st.text().map(str.encode), _pairs(st.text())),
        max_size=5,
    ),
    with_metadata=st.booleans(),
)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(streams=st.lists(_random_stream, max_size=3))
def test_random_pushes_round_trip_through_both_formats(streams: list[PushStream]) -> None:
    assert decode_push(encode_push_json(streams), JSON) == streams
    got = decode_push(encode_push_protobuf(streams), PROTOBUF)
    assert [(g.timestamps, g.lines, g.metadata) for g in got] == [
        (s.timestamps, s.lines, s.metadata) for s in streams
    ]
    assert [g.labels for g in got] == [format_labels(s.labels) for s in streams]
