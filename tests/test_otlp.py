"""OTLP/HTTP logs: Loki's mapping of an export to streams, in JSON and protobuf, malformed
bodies, and ``POST /otlp/v1/logs`` on the real program."""

from __future__ import annotations

import base64
import copy
import gzip
import struct
import time
import zlib
from typing import Any

import orjson
import pytest

from loki_async.errors import BadRequest, LokiError
from loki_async.logproto import PushStream, _uvarint
from loki_async.otlp import decode_otlp, export_error, export_response
from tests.lokiclient import call, client, get, query_range

JSON = "application/json"
PROTOBUF = "application/x-protobuf"
NS = 10**9
T0 = 1_700_000_000_000_000_000
TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"


def collector_export(t0: int = T0) -> dict[str, Any]:
    """An export as the collector's otlphttp exporter sends it with ``encoding: json``
    (pdata's JSON: int64 as strings, IDs in hex, enums as numbers)."""

    def text(key: str, value: str) -> dict[str, Any]:
        return {"key": key, "value": {"stringValue": value}}

    return {
        "resourceLogs": [
            {
                "resource": {
                    "attributes": [
                        text("service.name", "checkout"),
                        text("service.version", "1.4.2"),
                        text("k8s.namespace.name", "shop"),
                        text("k8s.pod.name", "checkout-7d9f-x2x"),
                        text("host.name", "node-1"),
                        {"key": "process.pid", "value": {"intValue": "4242"}},
                    ]
                },
                "scopeLogs": [
                    {
                        "scope": {"name": "io.opentelemetry.checkout", "version": "1.2.0"},
                        "logRecords": [
                            {
                                "timeUnixNano": str(t0),
                                "observedTimeUnixNano": str(t0 + 5),
                                "severityNumber": 9,
                                "severityText": "INFO",
                                "body": {"stringValue": "order placed"},
                                "attributes": [
                                    text("order.id", "o-17"),
                                    {"key": "http.status_code", "value": {"intValue": "200"}},
                                ],
                                "flags": 1,
                                "traceId": TRACE_ID,
                                "spanId": SPAN_ID,
                            },
                            {
                                "timeUnixNano": str(t0 + NS),
                                "observedTimeUnixNano": str(t0 + NS + 5),
                                "severityNumber": 17,
                                "severityText": "ERROR",
                                "body": {"stringValue": "payment declined"},
                                "attributes": [
                                    {"key": "retry", "value": {"boolValue": True}},
                                    {"key": "amount", "value": {"doubleValue": 12.5}},
                                ],
                                "traceId": "",
                                "spanId": "",
                            },
                        ],
                    }
                ],
                "schemaUrl": "https://opentelemetry.io/schemas/1.6.1",
            }
        ]
    }


RESOURCE_METADATA = [
    ("service_version", "1.4.2"),
    ("host_name", "node-1"),
    ("process_pid", "4242"),
]
SCOPE_METADATA = [("scope_name", "io.opentelemetry.checkout"), ("scope_version", "1.2.0")]
CHECKOUT_STREAM = PushStream(
    [
        ("k8s_namespace_name", "shop"),
        ("k8s_pod_name", "checkout-7d9f-x2x"),
        ("service_name", "checkout"),
    ],
    [T0, T0 + NS],
    [b"order placed", b"payment declined"],
    [
        [
            ("order_id", "o-17"),
            ("http_status_code", "200"),
            ("observed_timestamp", str(T0 + 5)),
            ("severity_number", "9"),
            ("severity_text", "INFO"),
            ("flags", "1"),
            ("trace_id", TRACE_ID),
            ("span_id", SPAN_ID),
            *RESOURCE_METADATA,
            *SCOPE_METADATA,
        ],
        [
            ("retry", "true"),
            ("amount", "12.5"),
            ("observed_timestamp", str(T0 + NS + 5)),
            ("severity_number", "17"),
            ("severity_text", "ERROR"),
            *RESOURCE_METADATA,
            *SCOPE_METADATA,
        ],
    ],
)


# --- a tiny protobuf encoder: the JSON export above, as the collector's protobuf ------


def _varint(n: int) -> bytes:
    return _uvarint(n & (1 << 64) - 1)  # negative int64 values in ten bytes


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    length = _varint(len(payload)) if wire_type == 2 else b""
    return _varint(number << 3 | wire_type) + length + payload


def _pb_any(value: dict[str, Any]) -> bytes:
    if not value:
        return b""
    ((kind, x),) = value.items()
    if kind == "stringValue":
        return _field(1, 2, x.encode())
    if kind == "boolValue":
        return _field(2, 0, _varint(int(x)))
    if kind == "intValue":
        return _field(3, 0, _varint(int(x)))
    if kind == "doubleValue":
        return _field(4, 1, struct.pack("<d", float(x)))  # also "NaN", "-Infinity"
    if kind == "arrayValue":
        return _field(5, 2, b"".join(_field(1, 2, _pb_any(v)) for v in x["values"]))
    if kind == "kvlistValue":
        return _field(6, 2, _pb_attributes(1, x["values"]))
    assert kind == "bytesValue", kind
    return _field(7, 2, base64.b64decode(x))


def _pb_attributes(number: int, attrs: list[dict[str, Any]]) -> bytes:
    return b"".join(
        _field(number, 2, _field(1, 2, a["key"].encode()) + _field(2, 2, _pb_any(a["value"])))
        for a in attrs
    )


def _pb_record(r: dict[str, Any]) -> bytes:
    out = b""
    if "timeUnixNano" in r:
        out += _field(1, 1, struct.pack("<Q", int(r["timeUnixNano"])))
    if r.get("severityNumber"):
        out += _field(2, 0, _varint(r["severityNumber"]))
    if r.get("severityText"):
        out += _field(3, 2, r["severityText"].encode())
    if "body" in r:
        out += _field(5, 2, _pb_any(r["body"]))
    out += _pb_attributes(6, r.get("attributes", []))
    if r.get("flags"):
        out += _field(8, 5, struct.pack("<I", r["flags"]))
    if r.get("traceId"):
        out += _field(9, 2, bytes.fromhex(r["traceId"]))
    if r.get("spanId"):
        out += _field(10, 2, bytes.fromhex(r["spanId"]))
    if "observedTimeUnixNano" in r:
        out += _field(11, 1, struct.pack("<Q", int(r["observedTimeUnixNano"])))
    if r.get("eventName"):
        out += _field(12, 2, r["eventName"].encode())
    return out


def to_protobuf(export: dict[str, Any]) -> bytes:
    """The ExportLogsServiceRequest of an OTLP/JSON export."""
    out = b""
    for rl in export["resourceLogs"]:
        resource = _pb_attributes(1, rl.get("resource", {}).get("attributes", []))
        body = _field(1, 2, resource)
        for sl in rl.get("scopeLogs", []):
            scope = sl.get("scope", {})
            scope_pb = b""
            if scope.get("name"):
                scope_pb += _field(1, 2, scope["name"].encode())
            if scope.get("version"):
                scope_pb += _field(2, 2, scope["version"].encode())
            scope_pb += _pb_attributes(3, scope.get("attributes", []))
            records = b"".join(_field(2, 2, _pb_record(r)) for r in sl.get("logRecords", []))
            body += _field(2, 2, _field(1, 2, scope_pb) + records)
        if "schemaUrl" in rl:
            body += _field(3, 2, rl["schemaUrl"].encode())
        out += _field(1, 2, body)
    return out


def decode_both(export: dict[str, Any]) -> list[PushStream]:
    """Decode the JSON and the protobuf form; assert they agree; return the streams."""
    from_json = decode_otlp(orjson.dumps(export), JSON)
    from_protobuf = decode_otlp(to_protobuf(export), PROTOBUF)
    assert from_json == from_protobuf
    return from_json


def one_record(record: Any, resource: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An export of one record (at T0 unless it says otherwise) of service "svc"."""
    if resource is None:
        resource = [{"key": "service.name", "value": {"stringValue": "svc"}}]
    if isinstance(record, dict):
        record = {"timeUnixNano": str(T0)} | record
    return {
        "resourceLogs": [
            {"resource": {"attributes": resource}, "scopeLogs": [{"logRecords": [record]}]}
        ]
    }


# --- the mapping ---------------------------------------------------------------------


def test_collector_json_export_maps_to_loki_labels_lines_and_metadata() -> None:
    assert decode_otlp(orjson.dumps(collector_export()), JSON) == [CHECKOUT_STREAM]


def test_protobuf_and_json_of_one_export_give_the_same_streams() -> None:
    assert decode_both(collector_export()) == [CHECKOUT_STREAM]


def test_gzip_content_encoding_is_inflated_first() -> None:
    body = gzip.compress(to_protobuf(collector_export()))
    assert decode_otlp(body, PROTOBUF, "gzip") == [CHECKOUT_STREAM]
    body = gzip.compress(orjson.dumps(collector_export()))
    assert decode_otlp(body, "application/json; charset=utf-8", "GZIP") == [CHECKOUT_STREAM]


def test_resources_with_the_same_labels_share_one_stream() -> None:
    export = collector_export()
    twin = copy.deepcopy(export["resourceLogs"][0])
    twin["resource"]["attributes"][4]["value"]["stringValue"] = "node-2"  # host.name: metadata
    other = copy.deepcopy(export["resourceLogs"][0])
    other["resource"]["attributes"][2]["value"]["stringValue"] = "warehouse"
    export["resourceLogs"] += [twin, other]
    streams = decode_both(export)
    assert [dict(s.labels)["k8s_namespace_name"] for s in streams] == ["shop", "warehouse"]
    assert len(streams[0].lines) == 4 and len(streams[1].lines) == 2
    assert ("host_name", "node-2") in streams[0].metadata[2]  # type: ignore[index]


@pytest.mark.parametrize(
    ("resource", "service_name"),
    [
        pytest.param([], "unknown_service", id="no-attributes"),
        pytest.param(
            [{"key": "service.name", "value": {"stringValue": ""}}], "unknown_service", id="empty"
        ),
        pytest.param(
            [
                {"key": "host.name", "value": {"stringValue": "h"}},
                {"key": "k8s.container.name", "value": {"stringValue": "web"}},
                {"key": "k8s.job.name", "value": {"stringValue": "nightly"}},
            ],
            "web",
            id="discovered-from-the-first-index-label-that-stands-for-it",
        ),
        pytest.param(
            [
                {"key": "k8s.job.name", "value": {"stringValue": "nightly"}},
                {"key": "service.name", "value": {"stringValue": "api"}},
            ],
            "api",
            id="service-name-wins-wherever-it-is",
        ),
    ],
)
def test_service_name_is_discovered_or_unknown_service_as_in_loki(
    resource: list[dict[str, Any]], service_name: str
) -> None:
    (stream,) = decode_both(one_record({"body": {"stringValue": "x"}}, resource))
    assert dict(stream.labels)["service_name"] == service_name


def test_only_the_default_resource_attributes_become_labels() -> None:
    index = [
        "service.namespace", "service.instance.id", "deployment.environment",
        "deployment.environment.name", "cloud.region", "cloud.availability_zone",
        "k8s.cluster.name", "k8s.namespace.name", "k8s.pod.name", "k8s.container.name",
        "container.name", "k8s.replicaset.name", "k8s.deployment.name",
        "k8s.statefulset.name", "k8s.daemonset.name", "k8s.cronjob.name", "k8s.job.name",
    ]  # fmt: skip
    resource = [{"key": k, "value": {"stringValue": "v"}} for k in [*index, "host.name", "os.type"]]
    resource.append({"key": "service.name", "value": {"stringValue": "svc"}})
    (stream,) = decode_both(one_record({"body": {"stringValue": "x"}}, resource))
    expected = {k.replace(".", "_"): "v" for k in index} | {"service_name": "svc"}
    assert dict(stream.labels) == expected
    assert stream.metadata == [[("host_name", "v"), ("os_type", "v")]]


def test_timestamp_is_time_else_observed_time_else_now() -> None:
    export = one_record({"timeUnixNano": "0", "observedTimeUnixNano": str(T0)})
    export["resourceLogs"][0]["scopeLogs"][0]["logRecords"] += [
        {"timeUnixNano": str(T0 + 1)},
        {},
    ]
    for body, ctype in ((orjson.dumps(export), JSON), (to_protobuf(export), PROTOBUF)):
        before = time.time_ns()
        (stream,) = decode_otlp(body, ctype)
        assert stream.timestamps[:2] == [T0, T0 + 1]
        assert before <= stream.timestamps[2] <= time.time_ns()
        # observed_timestamp is metadata only when it is not the entry's timestamp
        assert stream.lines == [b"", b"", b""] and stream.metadata is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"stringValue": "a b"}, "a b"),
        ({"intValue": "-9223372036854775808"}, "-9223372036854775808"),
        ({"intValue": 42}, "42"),
        ({"boolValue": False}, "false"),
        ({"doubleValue": 100.0}, "100"),
        ({"doubleValue": 0.1}, "0.1"),
        ({"doubleValue": 1e21}, "1e+21"),
        ({"doubleValue": 1.5e-7}, "1.5e-7"),
        ({"doubleValue": 1e20}, "100000000000000000000"),
        ({"doubleValue": "NaN"}, "json: unsupported value: NaN"),
        ({"doubleValue": "-Infinity"}, "json: unsupported value: -Inf"),
        ({"bytesValue": base64.b64encode(b"\x00\xffhi").decode()}, "AP9oaQ=="),
        (
            {
                "arrayValue": {
                    "values": [
                        {"stringValue": "<a&b>"},
                        {"intValue": "1"},
                        {"doubleValue": 2.0},
                        {"boolValue": True},
                        {},
                    ]
                }
            },
            '["\\u003ca\\u0026b\\u003e",1,2,true,null]',
        ),
        ({"arrayValue": {"values": [{"doubleValue": "NaN"}]}}, ""),
        ({}, ""),
    ],
)
def test_attribute_values_are_stringified_like_the_collectors_as_string(
    value: dict[str, Any], expected: str
) -> None:
    record = {"attributes": [{"key": "attr", "value": value}]}
    (stream,) = decode_both(one_record(record))
    assert stream.metadata == [[("attr", expected)]]


def test_map_attributes_are_flattened_and_a_map_body_is_go_json() -> None:
    nested = {
        "kvlistValue": {
            "values": [
                {"key": "z.key", "value": {"stringValue": "1"}},
                {"key": "inner", "value": {"kvlistValue": {"values": [
                    {"key": "leaf", "value": {"intValue": "7"}}]}}},
                {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}},
            ]
        }
    }  # fmt: skip
    record = {"body": nested, "attributes": [{"key": "http.request", "value": nested}]}
    (stream,) = decode_both(one_record(record))
    assert stream.metadata == [
        [("http_request_z_key", "1"), ("http_request_inner_leaf", "7"),
         ("http_request_list", '["x"]')]
    ]  # fmt: skip
    assert stream.lines == [b'{"inner":{"leaf":7},"list":["x"],"z.key":"1"}']


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("k8s.pod.name", "k8s_pod_name"),
        ("http-method", "http_method"),
        ("2xx", "key_2xx"),
        ("_private", "key_private"),
        ("__reserved", "__reserved"),
        ("caf\u00e9", "caf_"),
        (".", "key_"),
    ],
)
def test_attribute_names_are_normalised_as_loki_does(key: str, name: str) -> None:
    record = {"attributes": [{"key": key, "value": {"stringValue": "v"}}]}
    (stream,) = decode_both(one_record(record))
    assert stream.metadata == [[(name, "v")]]


def test_scope_attributes_and_counts_follow_the_record_and_resource_metadata() -> None:
    export = one_record({"droppedAttributesCount": 2, "body": {"stringValue": "x"}})
    export["resourceLogs"][0]["scopeLogs"][0]["scope"] = {
        "name": "lib",
        "attributes": [{"key": "lib.mode", "value": {"stringValue": "fast"}}],
        "droppedAttributesCount": 3,
    }
    (stream,) = decode_otlp(orjson.dumps(export), JSON)
    assert stream.metadata == [
        [("dropped_attributes_count", "2"), ("lib_mode", "fast"), ("scope_name", "lib"),
         ("scope_dropped_attributes_count", "3")]
    ]  # fmt: skip


def test_event_name_field_wins_over_an_event_name_attribute() -> None:
    record = {
        "eventName": "checkout.done",
        "attributes": [
            {"key": "event_name", "value": {"stringValue": "dropped"}},
            {"key": "event.name", "value": {"stringValue": "kept"}},
        ],
    }
    (stream,) = decode_both(one_record(record))
    assert stream.metadata == [[("event_name", "kept"), ("event_name", "checkout.done")]]


def test_all_zero_and_uppercase_ids_are_handled_as_loki_does() -> None:
    record = {"traceId": "0" * 32, "spanId": SPAN_ID.upper()}
    (stream,) = decode_both(one_record(record))
    assert stream.metadata == [[("span_id", SPAN_ID)]]


def test_proto_field_names_and_enum_names_are_accepted_in_json() -> None:
    export = {
        "resource_logs": [
            {
                "scope_logs": [
                    {
                        "log_records": [
                            {
                                "time_unix_nano": T0,
                                "severity_number": "SEVERITY_NUMBER_WARN",
                                "severity_text": "WARN",
                                "trace_id": TRACE_ID,
                                "body": {"string_value": "x", "unknown": 1},
                            }
                        ]
                    }
                ]
            }
        ]
    }
    (stream,) = decode_otlp(orjson.dumps(export), JSON)
    assert stream.timestamps == [T0] and stream.lines == [b"x"]
    assert stream.metadata == [
        [("severity_number", "13"), ("severity_text", "WARN"), ("trace_id", TRACE_ID)]
    ]


def test_an_empty_export_has_no_streams() -> None:
    for body in (b"{}", b'{"resourceLogs": []}', b'{"resourceLogs": [{"scopeLogs": [{}]}]}'):
        assert decode_otlp(body, JSON) == []
    assert decode_otlp(b"", PROTOBUF) == []


def test_protobuf_lines_keep_their_bytes_and_unknown_fields_are_read_past() -> None:
    record = _field(5, 2, _field(1, 2, b"caf\xc3\xa9 \xff")) + _field(4, 2, b"old name")
    record += _field(99, 0, b"\x01") + _field(1000, 5, b"\x00" * 4)
    body = _field(1, 2, _field(2, 2, _field(2, 2, record)) + _field(1000, 2, b"legacy"))
    (stream,) = decode_otlp(body, PROTOBUF)
    assert stream.lines == [b"caf\xc3\xa9 \xff"]
    assert stream.labels == [("service_name", "unknown_service")]


# --- responses -----------------------------------------------------------------------


def test_responses_are_in_the_request_encoding() -> None:
    assert export_response(JSON) == (b"{}", JSON)
    assert export_response(PROTOBUF) == (b"", PROTOBUF)
    assert export_error("bad", JSON) == (b'{"message":"bad"}', JSON)
    assert export_error("bad", PROTOBUF) == (b"\x12\x03bad", PROTOBUF)  # Status.message
    assert export_error("bad", "text/plain") == (b"bad\n", "text/plain")


# --- malformed bodies ----------------------------------------------------------------


def _nested_array(depth: int) -> bytes:
    value = b""
    for _ in range(depth):
        value = _field(5, 2, _field(1, 2, value))
    return value


def _nested_json(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"stringValue": "x"}
    for _ in range(depth):
        value = {"arrayValue": {"values": [value]}}
    return value


def _json_record(record: Any) -> bytes:
    return orjson.dumps(one_record(record))


def _record_pb(*fields: bytes) -> bytes:
    return _field(1, 2, _field(2, 2, _field(2, 2, b"".join(fields))))


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"\x0a\x05\x0a", "unexpected EOF", id="truncated"),
        pytest.param(b"\x0a\x80", "unexpected EOF", id="truncated-varint"),
        pytest.param(b"\x0a" + b"\xff" * 11, "integer overflow", id="varint-too-long"),
        pytest.param(b"\x08\x01", "wrong wireType = 0 for field resource_logs", id="wire-type"),
        pytest.param(
            _record_pb(_field(1, 0, b"\x01")),
            "LogRecord: wrong wireType = 0 for field time_unix_nano",
            id="record-wire-type",
        ),
        pytest.param(_record_pb(b"\x09\x01\x02"), "unexpected EOF in LogRecord", id="fixed64"),
        pytest.param(
            _record_pb(_field(9, 2, b"\x01" * 5)),
            "trace_id must be 16 bytes (or empty), got 5",
            id="trace-id-length",
        ),
        pytest.param(
            _record_pb(_field(6, 2, _field(1, 2, b"") + _field(2, 2, b""))),
            "empty key",
            id="empty-key",
        ),
        pytest.param(b"\x07", "illegal tag 0", id="field-zero"),
        pytest.param(
            _record_pb(_field(5, 2, _nested_array(100))),
            "nested deeper than 64",
            id="deep-nesting",
        ),
    ],
)
def test_malformed_protobuf_is_a_bad_request_saying_what_is_wrong(
    body: bytes, expected: str
) -> None:
    with pytest.raises(BadRequest) as info:
        decode_otlp(body, PROTOBUF)
    assert expected in info.value.message


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{", "failed to decode OTLP JSON logs request: unexpected end of data"),
        (b"[]", 'must be an object {"resourceLogs": [...]}'),
        (b'{"resourceLogs": {}}', "resourceLogs must be a list, got {}"),
        (_json_record([]), "resourceLogs[0].scopeLogs[0].logRecords[0] must be an object"),
        (
            _json_record({"timeUnixNano": "soon"}),
            "logRecords[0].timeUnixNano must be an integer (a JSON number or a string of "
            'digits), got "soon"',
        ),
        (_json_record({"timeUnixNano": "-1"}), "timeUnixNano: -1 is out of range"),
        (_json_record({"traceId": "abc"}), 'traceId must be 32 hex digits (16 bytes), got "abc"'),
        (_json_record({"spanId": "z" * 16}), "spanId must be 16 hex digits (8 bytes)"),
        (_json_record({"body": "text"}), 'body must be an AnyValue such as {"stringValue"'),
        (_json_record({"body": {"intValue": "1.5"}}), "body.intValue must be an integer"),
        (_json_record({"body": {"bytesValue": "%%"}}), "body.bytesValue must be base64 bytes"),
        (_json_record({"severityNumber": "LOUD"}), "severityNumber must be an integer"),
        (
            _json_record({"attributes": [{"key": 1, "value": {}}]}),
            "logRecords[0].attributes[0].key must be a string, got 1",
        ),
        (_json_record({"body": _nested_json(70)}), "nested deeper than 64 levels"),
        (b"\xff", "failed to decode OTLP JSON logs request"),
    ],
)
def test_malformed_json_is_a_bad_request_saying_what_to_fix(body: bytes, expected: str) -> None:
    with pytest.raises(BadRequest) as info:
        decode_otlp(body, JSON)
    assert expected in info.value.message
    assert info.value.status == 400


def test_every_truncation_and_byte_flip_of_an_export_is_a_bad_request_or_decodes() -> None:
    export = collector_export()
    export["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["body"] = {
        "kvlistValue": {"values": [{"key": "a", "value": {"arrayValue": {"values": [
            {"doubleValue": 1.5}, {"bytesValue": "AAE="}]}}}]}
    }  # fmt: skip
    raw = to_protobuf(export)
    variants = [raw[:n] for n in range(len(raw))]
    for pos in range(len(raw)):
        for value in (0x00, 0x7F, 0x80, 0xFF, raw[pos] ^ 0x01):
            variants.append(raw[:pos] + bytes((value,)) + raw[pos + 1 :])
    for variant in variants:
        try:
            decode_otlp(variant, PROTOBUF)
        except BadRequest:
            pass


def test_unsupported_content_type_is_415_naming_the_supported_ones() -> None:
    for ctype in ("text/plain", "", "application/x-protobuf-snappy"):
        with pytest.raises(LokiError) as info:
            decode_otlp(b"{}", ctype)
        assert info.value.status == 415
        assert "'application/x-protobuf' or 'application/json'" in info.value.message


def test_unsupported_content_encoding_is_a_bad_request_naming_gzip() -> None:
    with pytest.raises(BadRequest, match="Content-Encoding 'zstd' not supported: send gzip"):
        decode_otlp(b"{}", JSON, "zstd")


def test_broken_gzip_and_gzip_bombs_are_bad_requests() -> None:
    with pytest.raises(BadRequest, match="gzip: invalid compressed body"):
        decode_otlp(b"not gzip", PROTOBUF, "gzip")
    compressor = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    bomb = compressor.compress(bytes(64 << 20)) + compressor.flush()
    assert len(bomb) < 100_000
    with pytest.raises(BadRequest, match=r"larger than max \(1048576 bytes\)"):
        decode_otlp(bomb, PROTOBUF, "gzip", max_decompressed_bytes=1 << 20)


# --- the real program ----------------------------------------------------------------


@pytest.fixture(scope="module")
def loki(tmp_path_factory):
    from tests.conftest import Loki, base_config

    workdir = tmp_path_factory.mktemp("otlp")
    cfg = base_config(workdir, server={"http_server_max_body_size": "1MB"})
    inst = Loki(workdir, cfg).start()
    yield inst
    inst.kill()


async def post_otlp(
    url: str, body: bytes, content_type: str, encoding: str = ""
) -> tuple[int, bytes, str]:
    headers = {"Content-Type": content_type}
    if encoding:
        headers["Content-Encoding"] = encoding
    async with client() as s, s.post(f"{url}/otlp/v1/logs", data=body, headers=headers) as r:
        return r.status, await r.read(), r.headers.get("Content-Type", "")


async def test_collector_exports_in_json_and_gzipped_protobuf_are_queryable(loki) -> None:
    t0 = time.time_ns() - 600 * NS
    json_export = collector_export(t0)
    pb_export = collector_export(t0 + 10 * NS)
    for record in pb_export["resourceLogs"][0]["scopeLogs"][0]["logRecords"]:
        record["body"]["stringValue"] += " (protobuf)"
    pb_export["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]["traceId"] = "ab" * 16

    status, body, ctype = await post_otlp(loki.url, orjson.dumps(json_export), JSON)
    assert (status, body, ctype.split(";")[0]) == (200, b"{}", JSON)
    pb_body = gzip.compress(to_protobuf(pb_export))
    status, body, ctype = await post_otlp(loki.url, pb_body, PROTOBUF, "gzip")
    assert (status, body, ctype.split(";")[0]) == (200, b"", PROTOBUF)

    start, end = t0 - NS, t0 + 60 * NS
    query = '{service_name="checkout", k8s_namespace_name="shop"}'
    async with client() as session:
        got = await query_range(session, loki.url, query, start, end)
        # Without categorize-labels, each entry's metadata is in its result stream's labels.
        assert sorted(entry for entries in got.values() for entry in entries) == [
            (t0, "order placed"),
            (t0 + NS, "payment declined"),
            (t0 + 10 * NS, "order placed (protobuf)"),
            (t0 + 11 * NS, "payment declined (protobuf)"),
        ]
        status, labels = await get(
            session, loki.url, "/loki/api/v1/labels", start=str(start), end=str(end)
        )
        assert status == 200
        assert set(labels["data"]) == {"k8s_namespace_name", "k8s_pod_name", "service_name"}
        status, series = await get(
            session, loki.url, "/loki/api/v1/series", start=str(start), end=str(end)
        )
        assert series["data"] == [
            {
                "k8s_namespace_name": "shop",
                "k8s_pod_name": "checkout-7d9f-x2x",
                "service_name": "checkout",
            }
        ]
        got = await query_range(session, loki.url, f'{query} | trace_id="{"ab" * 16}"', start, end)
        assert [line for entries in got.values() for _, line in entries] == [
            "order placed (protobuf)"
        ]

    status, result, _ = await call(
        "GET",
        loki.url,
        "/loki/api/v1/query_range",
        headers={"X-Loki-Response-Encoding-Flags": "categorize-labels"},
        query=f'{query} |= "payment declined" != "protobuf"',
        start=str(start),
        end=str(end),
    )
    assert status == 200, result
    (stream,) = result["data"]["result"]
    assert stream["stream"] == dict(CHECKOUT_STREAM.labels)
    ((ts, line, categories),) = stream["values"]
    assert (int(ts), line) == (t0 + NS, "payment declined")
    assert categories["structuredMetadata"] == {
        "retry": "true",
        "amount": "12.5",
        "observed_timestamp": str(t0 + NS + 5),
        "severity_number": "17",
        "severity_text": "ERROR",
        "service_version": "1.4.2",
        "host_name": "node-1",
        "process_pid": "4242",
        "scope_name": "io.opentelemetry.checkout",
        "scope_version": "1.2.0",
    }


async def test_bad_otlp_requests_answer_4xx_with_a_status_message(loki) -> None:
    status, body, ctype = await post_otlp(loki.url, b'{"resourceLogs": 1}', JSON)
    assert (status, ctype.split(";")[0]) == (400, JSON)
    assert "resourceLogs must be a list, got 1" in orjson.loads(body)["message"]

    status, body, ctype = await post_otlp(loki.url, b"\x0a\x05\x0a", PROTOBUF)
    assert (status, ctype.split(";")[0]) == (400, PROTOBUF)
    assert body[:1] == b"\x12" and b"unexpected EOF" in body  # Status.message

    status, body, _ = await post_otlp(loki.url, b"{}", "text/plain")
    assert status == 415 and b"'application/x-protobuf' or 'application/json'" in body

    status, body, _ = await post_otlp(loki.url, bytes(2 << 20), PROTOBUF)
    assert status == 413 and b"request body too large" in body

    bomb = gzip.compress(bytes(4 << 20))
    status, body, _ = await post_otlp(loki.url, bomb, PROTOBUF, "gzip")
    assert status == 400 and b"larger than max" in body

    old = one_record({"timeUnixNano": str(T0 - 10**6 * NS), "body": {"stringValue": "x"}})
    status, body, _ = await post_otlp(loki.url, orjson.dumps(old), JSON)
    assert status == 400 and "timestamp too old" in orjson.loads(body)["message"]
