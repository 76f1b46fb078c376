"""OTLP/HTTP logs (``POST /otlp/v1/logs``): an ``ExportLogsServiceRequest`` as push streams.

An OpenTelemetry Collector's ``otlphttp`` exporter with ``endpoint: http://<host>:3100/otlp``
sends here, as to Grafana Loki 3.x. The mapping is Loki's default one
(``pkg/loghttp/push/otlp.go`` and ``otlplabels`` in grafana/loki, Apache-2.0):

* **Stream labels**: the resource attributes in :data:`INDEX_LABEL_ATTRIBUTES` (Loki's
  ``default_resource_attributes_as_index_labels``). Without a non-empty ``service.name``,
  the first of those labels named in :data:`DISCOVER_SERVICE_NAME` (Loki's
  ``discover_service_name``) becomes ``service_name``, else ``unknown_service``.
* **Structured metadata** of each entry, in Loki's order: the log record's attributes,
  ``observed_timestamp`` (only when both timestamps are set), ``severity_number``,
  ``severity_text``, ``dropped_attributes_count``, ``flags``, ``trace_id`` and ``span_id``
  (lowercase hex, left out when all zero), ``event_name``; then the other resource
  attributes; then the scope's attributes, ``scope_name``, ``scope_version`` and
  ``scope_dropped_attributes_count``. Zero and empty fields are left out.
* **Names**: every character other than ASCII letters and digits becomes ``_``; a name
  that then starts with a digit gets ``key_`` in front, one that starts with a single
  ``_`` gets ``key`` (Prometheus' ``otlptranslator``). A map value is flattened: each of
  its keys becomes ``<name>_<key>``, normalised again.
* **Values and the line**: the string form of the OTel collector's ``AsString``: ints in
  decimal, doubles as JavaScript prints them, ``true``/``false``, bytes in base64,
  arrays and maps (as a body) as Go's JSON (keys sorted, ``<>&`` escaped).
* **Timestamp**: ``timeUnixNano``, else ``observedTimeUnixNano``, else the time of receipt.

Records of resources with the same labels form one stream. The body may be
``application/x-protobuf`` (decoded by hand, field numbers from opentelemetry-proto's
``logs.proto``, ``common.proto``, ``resource.proto``) or ``application/json`` (OTLP's JSON:
lowerCamelCase names, the proto names accepted too, as the collector does; 64-bit integers
as strings or numbers; ``traceId``/``spanId`` in hex; enums as integers), optionally with
``Content-Encoding: gzip``, whose output is capped like the push endpoint's. Protobuf
strings that are not valid UTF-8 keep their bytes in the line and get U+FFFD in labels and
metadata.

Every malformed body raises :class:`~loki_async.errors.BadRequest` (an unsupported
``Content-Type``: a 415 :class:`~loki_async.errors.LokiError`), with a message that says
what to fix; nothing else escapes :func:`decode_otlp`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
import struct
import time
import zlib
from decimal import Decimal
from typing import Any

import orjson

from loki_async.errors import BadRequest, LokiError
from loki_async.logproto import (
    _PB_ERROR,
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_PROTOBUF,
    PushStream,
    _eof,
    _inflate,
    _show,
    _skip_field,
    _uvarint,
    _uvarint_at,
    _uvarint_rest,
)

# Loki's distributor.otlp.default_resource_attributes_as_index_labels.
INDEX_LABEL_ATTRIBUTES = frozenset(
    (
        "service.name",
        "service.namespace",
        "service.instance.id",
        "deployment.environment",
        "deployment.environment.name",
        "cloud.region",
        "cloud.availability_zone",
        "k8s.cluster.name",
        "k8s.namespace.name",
        "k8s.pod.name",
        "k8s.container.name",
        "container.name",
        "k8s.replicaset.name",
        "k8s.deployment.name",
        "k8s.statefulset.name",
        "k8s.daemonset.name",
        "k8s.cronjob.name",
        "k8s.job.name",
    )
)
# Loki's limits_config.discover_service_name: labels that stand in for service_name.
DISCOVER_SERVICE_NAME = frozenset(
    (
        "service",
        "app",
        "application",
        "app_name",
        "name",
        "app_kubernetes_io_name",
        "container",
        "container_name",
        "k8s_container_name",
        "component",
        "workload",
        "job",
        "k8s_job_name",
    )
)
SERVICE_NAME_ATTRIBUTE = "service.name"
SERVICE_NAME_LABEL = "service_name"
UNKNOWN_SERVICE = "unknown_service"
EVENT_NAME = "event_name"

_JSON_ERROR = "failed to decode OTLP JSON logs request: "
_MAX_DEPTH = 64  # nested arrays and maps in one value; deeper is refused, not recursed into
_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64 = (0, (1 << 64) - 1)
_UINT32 = (0, (1 << 32) - 1)
_INT32 = (-(1 << 31), (1 << 31) - 1)
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_SEVERITY_NAMES = {"SEVERITY_NUMBER_UNSPECIFIED": 0} | {
    f"SEVERITY_NUMBER_{level}{k + 1 if k else ''}": 1 + 4 * n + k
    for n, level in enumerate(("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"))
    for k in range(4)
}


def decode_otlp(
    body: bytes,
    content_type: str,
    content_encoding: str = "",
    max_decompressed_bytes: int = 100 << 20,
) -> list[PushStream]:
    """Decode an OTLP/HTTP logs request body into push streams, mapped as Loki maps them.

    ``content_type`` and ``content_encoding`` are the request's header values (``""`` when
    absent). A gzip body stops inflating one byte past ``max_decompressed_bytes``. Raises
    :class:`BadRequest` for a malformed body or an unsupported encoding, a 415
    :class:`LokiError` for an unsupported content type, and nothing else.
    """
    media_type = _media_type(content_type)
    if media_type not in (CONTENT_TYPE_PROTOBUF, CONTENT_TYPE_JSON):
        raise LokiError(
            f"unsupported Content-Type {content_type!r}: OTLP logs must be "
            f"{CONTENT_TYPE_PROTOBUF!r} or {CONTENT_TYPE_JSON!r}",
            status=415,
        )
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        body = _inflate(body, zlib.MAX_WBITS | 16, "gzip", max_decompressed_bytes)
    elif encoding not in ("", "identity"):
        raise BadRequest(
            f"Content-Encoding {encoding!r} not supported: send gzip or no compression "
            "(otlphttp exporter: compression: gzip or none)"
        )
    export = _Export()
    if media_type == CONTENT_TYPE_JSON:
        _json_request(body, export)
    else:
        try:
            _pb_request(body, export)
        except IndexError:
            # Every read past the end of the buffer lands here; reads past the end of an
            # enclosing message are checked where the message ends.
            raise BadRequest(_PB_ERROR + "unexpected EOF") from None
    return export.result()


def export_response(content_type: str) -> tuple[bytes, str]:
    """Body and ``Content-Type`` of a full success: an empty ``ExportLogsServiceResponse``
    in the request's encoding, as the OTLP spec asks."""
    if _media_type(content_type) == CONTENT_TYPE_JSON:
        return b"{}", CONTENT_TYPE_JSON
    return b"", CONTENT_TYPE_PROTOBUF


def export_error(message: str, content_type: str) -> tuple[bytes, str]:
    """Body and ``Content-Type`` of a failure: a ``google.rpc.Status`` carrying ``message``
    in the request's encoding, as the OTLP spec asks (the collector logs the message);
    plain text when the request was in neither encoding."""
    media_type = _media_type(content_type)
    if media_type == CONTENT_TYPE_JSON:
        return orjson.dumps({"message": message}), CONTENT_TYPE_JSON
    if media_type == CONTENT_TYPE_PROTOBUF:
        raw = message.encode()
        return b"\x12" + _uvarint(len(raw)) + raw, CONTENT_TYPE_PROTOBUF  # Status.message
    return (message + "\n").encode(), "text/plain"


def _media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


# --- the mapping, shared by both encodings -------------------------------------------
#
# Attribute values are decoded to "raw" values: str, bool, int (int64), float, bytes,
# list (an array), _KVList (a map, its pairs in order) or None (an empty AnyValue).


class _KVList(list[tuple[str, Any]]):
    """A map value: its (key, raw value) pairs as sent, duplicates included."""

    __slots__ = ()


# A stream's entries: timestamps, lines, structured metadata.
_Columns = tuple[list[int], list[bytes], list[list[tuple[str, str]]]]


class _Export:
    """The streams of one request, one per label set, in order of first appearance."""

    __slots__ = ("now", "streams")

    def __init__(self) -> None:
        self.now = time.time_ns()  # the timestamp of records that carry none
        self.streams: dict[tuple[tuple[str, str], ...], _Columns] = {}

    def resource(self, attrs: list[tuple[str, Any]]) -> tuple[_Columns, list[tuple[str, str]]]:
        """Where a resource's records go, and the resource's structured metadata."""
        labels, metadata = _resource_labels(attrs)
        key = tuple(sorted(labels.items()))
        columns = self.streams.get(key)
        if columns is None:
            columns = self.streams[key] = ([], [], [])
        return columns, metadata

    def result(self) -> list[PushStream]:
        return [
            PushStream(list(key), timestamps, lines, metadata if any(metadata) else None)
            for key, (timestamps, lines, metadata) in self.streams.items()
            if timestamps
        ]


def _resource_labels(
    attrs: list[tuple[str, Any]],
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    labels: dict[str, str] = {}
    metadata: list[tuple[str, str]] = []
    has_service_name = False
    for key, raw in attrs:
        if key == SERVICE_NAME_ATTRIBUTE:  # the first one, as pcommon.Map.Get finds it
            has_service_name = _as_string(raw) != ""
            break
    for key, raw in attrs:
        name = _label_name(key)
        if key not in INDEX_LABEL_ATTRIBUTES:
            _flatten(name, raw, metadata)
            continue
        pairs: list[tuple[str, str]] = []
        _flatten(name, raw, pairs)
        for label, value in pairs:
            labels[label] = value
            if not has_service_name and label in DISCOVER_SERVICE_NAME:
                labels[SERVICE_NAME_LABEL] = value
                has_service_name = True
    if not has_service_name:
        labels[SERVICE_NAME_LABEL] = UNKNOWN_SERVICE
    return labels, metadata


def _scope_metadata(
    attrs: list[tuple[str, Any]], name: str, version: str, dropped: int
) -> list[tuple[str, str]]:
    metadata: list[tuple[str, str]] = []
    for key, raw in attrs:
        _flatten(_label_name(key), raw, metadata)
    if name:
        metadata.append(("scope_name", name))
    if version:
        metadata.append(("scope_version", version))
    if dropped:
        metadata.append(("scope_dropped_attributes_count", str(dropped)))
    return metadata


def _record_fields(
    metadata: list[tuple[str, str]],
    ts: int,
    observed: int,
    severity_number: int,
    severity_text: str,
    dropped: int,
    flags: int,
    trace_id: str,
    span_id: str,
    event_name: str,
    now: int,
) -> int:
    """Append a record's own fields to its metadata (after its attributes); return the
    entry's timestamp. ``ts`` and ``observed`` are the unsigned wire values."""
    if ts and observed:
        metadata.append(("observed_timestamp", str(_signed64(observed))))
    if severity_number:
        metadata.append(("severity_number", str(severity_number)))
    if severity_text:
        metadata.append(("severity_text", severity_text))
    if dropped:
        metadata.append(("dropped_attributes_count", str(dropped)))
    if flags:
        metadata.append(("flags", str(flags)))
    if trace_id:
        metadata.append(("trace_id", trace_id))
    if span_id:
        metadata.append(("span_id", span_id))
    if event_name:
        metadata.append((EVENT_NAME, event_name))
    if ts:
        return _signed64(ts)
    return _signed64(observed) if observed else now


def _signed64(value: int) -> int:
    # Go's int64(uint64): Loki reads the fixed64 nanoseconds that way.
    return value - (1 << 64) if value >> 63 else value


_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9]")


@functools.lru_cache(maxsize=4096)
def _label_name(key: str) -> str:
    """Prometheus' otlptranslator ``LabelNamer`` (UTF-8 not allowed), as Loki uses it."""
    if not key:
        raise BadRequest("OTLP attribute with an empty key: every attribute needs a name")
    name = _INVALID_NAME_CHARS.sub("_", key)
    if name[0].isdigit():
        name = "key_" + name
    elif name[0] == "_" and name[:2] != "__":
        name = "key" + name
    if name != key and not name.strip("_"):
        raise BadRequest(
            f"OTLP attribute {key!r} normalises to {name!r}: a label name needs a letter or digit"
        )
    return name


def _flatten(name: str, raw: Any, out: list[tuple[str, str]]) -> None:
    """Append ``(name, value)``, or for a map one pair per key, named ``<name>_<key>``."""
    if type(raw) is str:  # Fast path
        out.append((name, raw))
    elif type(raw) is _KVList:
        for key, value in raw:
            _flatten(_label_name(f"{name}_{key}"), value, out)
    else:
        out.append((name, _as_string(raw)))


def _as_string(raw: Any) -> str:
    """pcommon.Value.AsString."""
    kind = type(raw)
    if kind is str:
        return raw
    if raw is None:
        return ""
    if kind is bool:
        return "true" if raw else "false"
    if kind is int:
        return str(raw)
    if kind is float:
        if math.isfinite(raw):
            return _go_float(raw)
        return "json: unsupported value: " + ("NaN" if math.isnan(raw) else f"{raw:+}".title())
    if kind is bytes:
        return base64.b64encode(raw).decode()
    try:
        return _go_json(raw)
    except ValueError:
        return ""  # a NaN or infinity inside: Go's json.Marshal fails and AsString is ""


def _go_float(value: float) -> str:
    """A finite float64 as Go's encoding/json (and JavaScript) prints it."""
    if value == 0:
        return "-0" if math.copysign(1.0, value) < 0 else "0"
    text = repr(value)  # the shortest digits that round-trip, as Go's strconv
    magnitude = abs(value)
    if magnitude < 1e-6 or magnitude >= 1e21:
        mantissa, _, exponent = text.partition("e")
        if exponent[:2] == "-0":  # e-07 -> e-7
            exponent = "-" + exponent[2:]
        return f"{mantissa}e{exponent}"
    if "e" in text:
        return format(Decimal(text), "f")
    return text[:-2] if text.endswith(".0") else text


_GO_JSON_ESCAPES = {c: f"\\u{c:04x}" for c in range(0x20)} | {
    ord('"'): '\\"',
    ord("\\"): "\\\\",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    ord("\b"): "\\b",
    ord("\f"): "\\f",
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def _go_json(raw: Any) -> str:
    """Go's ``json.Marshal`` of ``AsRaw()``; ValueError for a NaN or infinity."""
    kind = type(raw)
    if kind is str:
        return '"' + raw.translate(_GO_JSON_ESCAPES) + '"'
    if raw is None:
        return "null"
    if kind is bool:
        return "true" if raw else "false"
    if kind is int:
        return str(raw)
    if kind is float:
        if not math.isfinite(raw):
            raise ValueError("json: unsupported value")
        return _go_float(raw)
    if kind is bytes:
        return '"' + base64.b64encode(raw).decode() + '"'
    if kind is _KVList:
        items = dict(raw)  # a Go map: the last of duplicate keys wins; sorted when printed
        return "{" + ",".join(f"{_go_json(k)}:{_go_json(items[k])}" for k in sorted(items)) + "}"
    return "[" + ",".join(map(_go_json, raw)) + "]"


# --- protobuf ------------------------------------------------------------------------
#
# Messages and field numbers of opentelemetry-proto (Apache-2.0)::
#
#   ExportLogsServiceRequest { repeated ResourceLogs resource_logs = 1; }
#   ResourceLogs  { Resource resource = 1; repeated ScopeLogs scope_logs = 2;
#                   string schema_url = 3; }
#   Resource      { repeated KeyValue attributes = 1; uint32 dropped_attributes_count = 2;
#                   repeated EntityRef entity_refs = 3; }
#   ScopeLogs     { InstrumentationScope scope = 1; repeated LogRecord log_records = 2;
#                   string schema_url = 3; }
#   InstrumentationScope { string name = 1; string version = 2;
#                   repeated KeyValue attributes = 3; uint32 dropped_attributes_count = 4; }
#   LogRecord     { fixed64 time_unix_nano = 1; fixed64 observed_time_unix_nano = 11;
#                   SeverityNumber severity_number = 2; string severity_text = 3;
#                   AnyValue body = 5; repeated KeyValue attributes = 6;
#                   uint32 dropped_attributes_count = 7; fixed32 flags = 8;
#                   bytes trace_id = 9; bytes span_id = 10; string event_name = 12; }
#   KeyValue      { string key = 1; AnyValue value = 2; }
#   AnyValue      { oneof value { string string_value = 1; bool bool_value = 2;
#                   int64 int_value = 3; double double_value = 4; ArrayValue array_value = 5;
#                   KeyValueList kvlist_value = 6; bytes bytes_value = 7; } }
#   ArrayValue    { repeated AnyValue values = 1; }
#   KeyValueList  { repeated KeyValue values = 1; }
#
# The readers follow logproto's: `data[i]` past the buffer raises IndexError (decode_otlp
# says "unexpected EOF"), every length is checked against its enclosing message, and
# every message must end exactly where its length says. A singular message field sent
# twice counts once, the last time; unknown fields are read past.

_REQUEST_FIELDS = {1: ("resource_logs", None)}
_RESOURCE_LOGS_FIELDS = {1: ("resource", None), 2: ("scope_logs", None), 3: ("schema_url", 2)}
_RESOURCE_FIELDS = {
    1: ("attributes", None),
    2: ("dropped_attributes_count", 0),
    3: ("entity_refs", 2),
}
_SCOPE_LOGS_FIELDS = {1: ("scope", None), 2: ("log_records", None), 3: ("schema_url", 2)}
_SCOPE_FIELDS = {
    1: ("name", None),
    2: ("version", None),
    3: ("attributes", None),
    4: ("dropped_attributes_count", None),
}
_LOG_RECORD_FIELDS = {
    1: ("time_unix_nano", None),
    2: ("severity_number", None),
    3: ("severity_text", None),
    5: ("body", None),
    6: ("attributes", None),
    7: ("dropped_attributes_count", None),
    8: ("flags", None),
    9: ("trace_id", None),
    10: ("span_id", None),
    11: ("observed_time_unix_nano", None),
    12: ("event_name", None),
}
_KEY_VALUE_FIELDS = {1: ("key", None), 2: ("value", None)}
_ANY_VALUE_FIELDS = {
    1: ("string_value", None),
    2: ("bool_value", None),
    3: ("int_value", None),
    4: ("double_value", None),
    5: ("array_value", None),
    6: ("kvlist_value", None),
    7: ("bytes_value", None),
}
_VALUES_FIELDS = {1: ("values", None)}
_TRACE_ID_BYTES = 16
_SPAN_ID_BYTES = 8


def _pb_request(data: bytes, export: _Export) -> None:
    end = len(data)
    i = 0
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x0A:  # resource_logs
            i, stop = _pb_len(data, i, end, "ResourceLogs")
            _pb_resource_logs(data, i, stop, export)
            i = stop
        else:
            i = _pb_skip(data, i, tag, end, "ExportLogsServiceRequest", _REQUEST_FIELDS)


def _pb_resource_logs(data: bytes, i: int, end: int, export: _Export) -> None:
    resource, scopes = _pb_envelope(data, i, end, "ResourceLogs", _RESOURCE_LOGS_FIELDS)
    attrs = _pb_resource(data, *resource) if resource is not None else []
    columns, resource_metadata = export.resource(attrs)
    for start, stop in scopes:
        _pb_scope_logs(data, start, stop, export.now, columns, resource_metadata)


def _pb_resource(data: bytes, i: int, end: int) -> list[tuple[str, Any]]:
    attrs = []
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x0A:  # attributes
            i, stop = _pb_len(data, i, end, "KeyValue")
            attrs.append(_pb_key_value(data, i, stop, 0))
            i = stop
        else:
            i = _pb_skip(data, i, tag, end, "Resource", _RESOURCE_FIELDS)
    if i != end:
        raise _eof("Resource")
    return attrs


def _pb_scope_logs(
    data: bytes,
    i: int,
    end: int,
    now: int,
    columns: _Columns,
    resource_metadata: list[tuple[str, str]],
) -> None:
    scope, records = _pb_envelope(data, i, end, "ScopeLogs", _SCOPE_LOGS_FIELDS)
    shared = resource_metadata + (_pb_scope(data, *scope) if scope is not None else [])
    append_ts = columns[0].append
    append_line = columns[1].append
    append_metadata = columns[2].append
    for start, stop in records:
        ts, line, record_metadata = _pb_log_record(data, start, stop, now)
        record_metadata += shared
        append_ts(ts)
        append_line(line)
        append_metadata(record_metadata)


def _pb_envelope(
    data: bytes, i: int, end: int, message: str, known: dict[int, tuple[str, int | None]]
) -> tuple[tuple[int, int] | None, list[tuple[int, int]]]:
    """ResourceLogs and ScopeLogs: the span of field 1 (the resource, the scope) and the
    spans of field 2 (the scopes, the records). Field 1 may follow field 2 on the wire, so
    both are found before either is mapped."""
    head: tuple[int, int] | None = None
    items: list[tuple[int, int]] = []
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x12:
            span = _pb_len(data, i, end, known[2][0])
            items.append(span)
            i = span[1]
        elif tag == 0x0A:
            head = _pb_len(data, i, end, known[1][0])
            i = head[1]
        else:
            i = _pb_skip(data, i, tag, end, message, known)
    if i != end:
        raise _eof(message)
    return head, items


def _pb_scope(data: bytes, i: int, end: int) -> list[tuple[str, str]]:
    name = version = ""
    dropped = 0
    attrs = []
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x1A:  # attributes
            i, stop = _pb_len(data, i, end, "KeyValue")
            attrs.append(_pb_key_value(data, i, stop, 0))
            i = stop
        elif tag == 0x0A or tag == 0x12:  # name, version
            i, stop = _pb_len(data, i, end, "InstrumentationScope")
            if tag == 0x0A:
                name = _pb_str(data, i, stop)
            else:
                version = _pb_str(data, i, stop)
            i = stop
        elif tag == 0x20:  # dropped_attributes_count
            dropped, i = _uvarint_at(data, i)
            dropped &= 0xFFFFFFFF
        else:
            i = _pb_skip(data, i, tag, end, "InstrumentationScope", _SCOPE_FIELDS)
    if i != end:
        raise _eof("InstrumentationScope")
    return _scope_metadata(attrs, name, version, dropped)


def _pb_log_record(
    data: bytes, i: int, end: int, now: int
) -> tuple[int, bytes, list[tuple[str, str]]]:
    ts = observed = severity_number = dropped = flags = 0
    severity_text = event_name = ""
    trace_id = span_id = ""
    line = b""
    metadata: list[tuple[str, str]] = []
    event_attrs: list[tuple[int, int]] = []  # where attributes keyed event_name went
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x32:  # attributes
            i, stop = _pb_len(data, i, end, "KeyValue")
            first = len(metadata)
            if _pb_attribute(data, i, stop, metadata) == EVENT_NAME:
                event_attrs.append((first, len(metadata)))
            i = stop
        elif tag == 0x09 or tag == 0x59:  # time_unix_nano, observed_time_unix_nano
            if i + 8 > end:
                raise _eof("LogRecord")
            if tag == 0x09:
                ts = _FIXED64.unpack_from(data, i)[0]
            else:
                observed = _FIXED64.unpack_from(data, i)[0]
            i += 8
        elif tag == 0x2A:  # body
            i, stop = _pb_len(data, i, end, "AnyValue")
            # Fast path: a string body is the line, its bytes as sent.
            if stop - i >= 2 and data[i] == 0x0A:
                n = data[i + 1]
                at = i + 2
                if n >= 0x80:
                    n, at = _uvarint_rest(data, at, n & 0x7F)
                if at + n == stop:
                    line = data[at:stop]
                    i = stop
                    continue
            line = _as_string(_pb_any(data, i, stop, 0)).encode()
            i = stop
        elif tag == 0x10:  # severity_number: an int32 enum
            value, i = _uvarint_at(data, i)
            value &= 0xFFFFFFFF
            severity_number = value - (1 << 32) if value >> 31 else value
        elif tag == 0x1A or tag == 0x62:  # severity_text, event_name
            i, stop = _pb_len(data, i, end, "LogRecord")
            if tag == 0x1A:
                severity_text = _pb_str(data, i, stop)
            else:
                event_name = _pb_str(data, i, stop)
            i = stop
        elif tag == 0x4A or tag == 0x52:  # trace_id, span_id
            i, stop = _pb_len(data, i, end, "LogRecord")
            size = _TRACE_ID_BYTES if tag == 0x4A else _SPAN_ID_BYTES
            if stop - i not in (0, size):
                field = "trace_id" if tag == 0x4A else "span_id"
                raise BadRequest(
                    f"{_PB_ERROR}LogRecord.{field} must be {size} bytes (or empty), got {stop - i}"
                )
            ident = data[i:stop].hex() if any(data[i:stop]) else ""  # all zero: none
            if tag == 0x4A:
                trace_id = ident
            else:
                span_id = ident
            i = stop
        elif tag == 0x45:  # flags
            if i + 4 > end:
                raise _eof("LogRecord")
            flags = _FIXED32.unpack_from(data, i)[0]
            i += 4
        elif tag == 0x38:  # dropped_attributes_count
            dropped, i = _uvarint_at(data, i)
            dropped &= 0xFFFFFFFF
        else:
            i = _pb_skip(data, i, tag, end, "LogRecord", _LOG_RECORD_FIELDS)
    if i != end:
        raise _eof("LogRecord")
    if event_name and event_attrs:
        # The event_name field wins over attributes of that name, as in Loki.
        for first, stop in reversed(event_attrs):
            del metadata[first:stop]
    ts = _record_fields(
        metadata,
        ts,
        observed,
        severity_number,
        severity_text,
        dropped,
        flags,
        trace_id,
        span_id,
        event_name,
        now,
    )
    return ts, line, metadata


def _pb_attribute(data: bytes, i: int, end: int, out: list[tuple[str, str]]) -> str:
    """Flatten one KeyValue into ``out``; return its key."""
    # Fast path: `key` then a string `value`, each shorter than 128 bytes.
    if end - i >= 6 and data[i] == 0x0A and data[i + 1] < 0x80:
        value_at = i + 2 + data[i + 1]
        if (
            value_at + 4 <= end
            and data[value_at] == 0x12
            and data[value_at + 1] < 0x80
            and value_at + 2 + data[value_at + 1] == end
            and data[value_at + 2] == 0x0A
            and data[value_at + 3] < 0x80
            and value_at + 4 + data[value_at + 3] == end
        ):
            key = _pb_str(data, i + 2, value_at)
            if key:  # an empty key is refused by the slow path's _label_name
                out.append((_label_name(key), _pb_str(data, value_at + 4, end)))
                return key
    # Slow path: any field order, other value types, long strings.
    key, raw = _pb_key_value(data, i, end, 0)
    _flatten(_label_name(key), raw, out)
    return key


def _pb_key_value(data: bytes, i: int, end: int, depth: int) -> tuple[str, Any]:
    key = ""
    raw: Any = None
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x0A or tag == 0x12:
            i, stop = _pb_len(data, i, end, "KeyValue")
            if tag == 0x0A:
                key = _pb_str(data, i, stop)
            else:
                raw = _pb_any(data, i, stop, depth)
            i = stop
        else:
            i = _pb_skip(data, i, tag, end, "KeyValue", _KEY_VALUE_FIELDS)
    if i != end:
        raise _eof("KeyValue")
    return key, raw


def _pb_any(data: bytes, i: int, end: int, depth: int) -> Any:
    """An AnyValue as a raw value; of several `oneof` fields the last one counts."""
    if depth > _MAX_DEPTH:
        raise BadRequest(f"{_PB_ERROR}AnyValue nested deeper than {_MAX_DEPTH} levels")
    raw: Any = None
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x0A or tag == 0x2A or tag == 0x32 or tag == 0x3A:
            i, stop = _pb_len(data, i, end, "AnyValue")
            if tag == 0x0A:  # string_value
                raw = _pb_str(data, i, stop)
            elif tag == 0x2A:  # array_value
                raw = _pb_values(data, i, stop, depth, "ArrayValue")
            elif tag == 0x32:  # kvlist_value
                raw = _pb_values(data, i, stop, depth, "KeyValueList")
            else:  # bytes_value
                raw = data[i:stop]
            i = stop
        elif tag == 0x10:  # bool_value
            value, i = _uvarint_at(data, i)
            raw = value != 0
        elif tag == 0x18:  # int_value
            value, i = _uvarint_at(data, i)
            raw = _signed64(value & 0xFFFFFFFFFFFFFFFF)
        elif tag == 0x21:  # double_value
            if i + 8 > end:
                raise _eof("AnyValue")
            raw = _DOUBLE.unpack_from(data, i)[0]
            i += 8
        else:
            i = _pb_skip(data, i, tag, end, "AnyValue", _ANY_VALUE_FIELDS)
    if i != end:
        raise _eof("AnyValue")
    return raw


def _pb_values(data: bytes, i: int, end: int, depth: int, message: str) -> list[Any]:
    """The `values` of an ArrayValue (a list) or of a KeyValueList (a _KVList)."""
    array = message == "ArrayValue"
    out: list[Any] = [] if array else _KVList()
    while i < end:
        tag = data[i]
        i += 1
        if tag == 0x0A:
            i, stop = _pb_len(data, i, end, message)
            if array:
                out.append(_pb_any(data, i, stop, depth + 1))
            else:
                out.append(_pb_key_value(data, i, stop, depth + 1))
            i = stop
        else:
            i = _pb_skip(data, i, tag, end, message, _VALUES_FIELDS)
    if i != end:
        raise _eof(message)
    return out


def _pb_len(data: bytes, i: int, end: int, message: str) -> tuple[int, int]:
    """Read a length prefix at ``i``; return the field's (start, stop)."""
    n = data[i]
    i += 1
    if n >= 0x80:
        n, i = _uvarint_rest(data, i, n & 0x7F)
    stop = i + n
    if stop > end:
        raise _eof(message)
    return i, stop


def _pb_skip(
    data: bytes,
    i: int,
    tag: int,
    end: int,
    message: str,
    known: dict[int, tuple[str, int | None]],
) -> int:
    if tag >= 0x80:
        tag, i = _uvarint_rest(data, i, tag & 0x7F)
    return _skip_field(data, i, tag, end, message, known)


def _pb_str(data: bytes, start: int, stop: int) -> str:
    return data[start:stop].decode("utf-8", "replace")


# --- JSON ----------------------------------------------------------------------------


def _json_request(body: bytes, export: _Export) -> None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"{_JSON_ERROR}{exc}") from None
    if type(document) is not dict:
        raise BadRequest(
            f'{_JSON_ERROR}the body must be an object {{"resourceLogs": [...]}}, '
            f"got {_show(document)}"
        )
    for r, resource_logs in enumerate(_jlist(document, "resourceLogs", "resource_logs", "")):
        where = f"resourceLogs[{r}]"
        _jobject(resource_logs, where)
        resource = _jfield_object(resource_logs, "resource", "resource", where)
        attrs = _json_attributes(resource, f"{where}.resource")
        (timestamps, lines, metadata), resource_metadata = export.resource(attrs)
        for s, scope_logs in enumerate(_jlist(resource_logs, "scopeLogs", "scope_logs", where)):
            scope_where = f"{where}.scopeLogs[{s}]"
            _jobject(scope_logs, scope_where)
            scope = _jfield_object(scope_logs, "scope", "scope", scope_where)
            at = f"{scope_where}.scope"
            shared = resource_metadata + _scope_metadata(
                _json_attributes(scope, at),
                _jstr(scope, "name", "name", at),
                _jstr(scope, "version", "version", at),
                _jint(scope, "droppedAttributesCount", "dropped_attributes_count", at, _UINT32),
            )
            records = _jlist(scope_logs, "logRecords", "log_records", scope_where)
            for n, record in enumerate(records):
                ts, line, record_metadata = _json_log_record(
                    record, f"{scope_where}.logRecords[{n}]", export.now
                )
                record_metadata += shared
                timestamps.append(ts)
                lines.append(line)
                metadata.append(record_metadata)


def _json_log_record(record: Any, where: str, now: int) -> tuple[int, bytes, list[tuple[str, str]]]:
    _jobject(record, where)
    event_name = _jstr(record, "eventName", "event_name", where)
    metadata: list[tuple[str, str]] = []
    for key, raw in _json_attributes(record, where):
        if key == EVENT_NAME and event_name:
            continue  # the event_name field wins, as in Loki
        _flatten(_label_name(key), raw, metadata)
    body = _jget(record, "body", "body")
    line = b""
    if body is not None:
        raw = _json_any(body, f"{where}.body", 0)
        line = (raw if type(raw) is str else _as_string(raw)).encode()
    severity = _jget(record, "severityNumber", "severity_number")
    if type(severity) is str and severity in _SEVERITY_NAMES:
        severity = _SEVERITY_NAMES[severity]
    ts = _record_fields(
        metadata,
        _jint(record, "timeUnixNano", "time_unix_nano", where, _UINT64),
        _jint(record, "observedTimeUnixNano", "observed_time_unix_nano", where, _UINT64),
        _jnumber(severity, f"{where}.severityNumber", _INT32),
        _jstr(record, "severityText", "severity_text", where),
        _jint(record, "droppedAttributesCount", "dropped_attributes_count", where, _UINT32),
        _jint(record, "flags", "flags", where, _UINT32),
        _jhex(record, "traceId", "trace_id", where, _TRACE_ID_BYTES),
        _jhex(record, "spanId", "span_id", where, _SPAN_ID_BYTES),
        event_name,
        now,
    )
    return ts, line, metadata


def _json_attributes(obj: dict[str, Any], where: str) -> list[tuple[str, Any]]:
    return [
        _json_key_value(kv, f"{where}.attributes[{a}]", 0)
        for a, kv in enumerate(_jlist(obj, "attributes", "attributes", where))
    ]


def _json_key_value(kv: Any, where: str, depth: int) -> tuple[str, Any]:
    _jobject(kv, where)
    value = kv.get("value")
    return (
        _jstr(kv, "key", "key", where),
        None if value is None else _json_any(value, f"{where}.value", depth),
    )


def _json_any(value: Any, where: str, depth: int) -> Any:
    """An AnyValue object as a raw value; of several value fields the last one counts."""
    if type(value) is not dict:
        raise BadRequest(
            f'{_JSON_ERROR}{where} must be an AnyValue such as {{"stringValue": "..."}}, '
            f"got {_show(value)}"
        )
    if len(value) == 1 and type(text := value.get("stringValue")) is str:  # Fast path
        return text
    if depth > _MAX_DEPTH:
        raise BadRequest(f"{_JSON_ERROR}{where}: AnyValue nested deeper than {_MAX_DEPTH} levels")
    raw: Any = None
    for name, field in value.items():
        kind = _ANY_VALUE_KINDS.get(name)
        if kind is None or field is None:
            continue  # unknown fields are ignored, as OTLP/JSON receivers must
        field_where = f"{where}.{name}"
        if kind == "string":
            if type(field) is not str:
                raise _jtype(field_where, "a string", field)
            raw = field
        elif kind == "bool":
            if type(field) is not bool:
                raise _jtype(field_where, "true or false", field)
            raw = field
        elif kind == "int":
            raw = _jnumber(field, field_where, _INT64)
        elif kind == "double":
            raw = _jdouble(field, field_where)
        elif kind == "bytes":
            raw = _jbytes(field, field_where)
        else:
            _jobject(field, field_where)
            values = _jlist(field, "values", "values", field_where)
            if kind == "array":
                raw = [
                    _json_any(v, f"{field_where}.values[{k}]", depth + 1)
                    for k, v in enumerate(values)
                ]
            else:
                raw = _KVList(
                    _json_key_value(kv, f"{field_where}.values[{k}]", depth + 1)
                    for k, kv in enumerate(values)
                )
    return raw


_ANY_VALUE_KINDS = {
    "stringValue": "string",
    "string_value": "string",
    "boolValue": "bool",
    "bool_value": "bool",
    "intValue": "int",
    "int_value": "int",
    "doubleValue": "double",
    "double_value": "double",
    "arrayValue": "array",
    "array_value": "array",
    "kvlistValue": "kvlist",
    "kvlist_value": "kvlist",
    "bytesValue": "bytes",
    "bytes_value": "bytes",
}


def _jget(obj: dict[str, Any], camel: str, snake: str) -> Any:
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _jobject(value: Any, where: str) -> None:
    if type(value) is not dict:
        raise _jtype(where, "an object", value)


def _jfield_object(obj: dict[str, Any], camel: str, snake: str, where: str) -> dict[str, Any]:
    value = _jget(obj, camel, snake)
    if value is None:
        return {}
    _jobject(value, f"{where}.{camel}")
    return value  # type: ignore[no-any-return]


def _jlist(obj: dict[str, Any], camel: str, snake: str, where: str) -> list[Any]:
    value = _jget(obj, camel, snake)
    if value is None:
        return []
    if type(value) is not list:
        raise _jtype(f"{where}.{camel}" if where else camel, "a list", value)
    return value


def _jstr(obj: dict[str, Any], camel: str, snake: str, where: str) -> str:
    value = _jget(obj, camel, snake)
    if value is None:
        return ""
    if type(value) is not str:
        raise _jtype(f"{where}.{camel}", "a string", value)
    return value


def _jint(obj: dict[str, Any], camel: str, snake: str, where: str, bounds: tuple[int, int]) -> int:
    value = _jget(obj, camel, snake)
    return 0 if value is None else _jnumber(value, f"{where}.{camel}", bounds)


def _jnumber(value: Any, where: str, bounds: tuple[int, int]) -> int:
    """An integer field: a JSON number or a decimal string, within ``bounds``."""
    if value is None:
        return 0
    kind = type(value)
    if kind is int:
        number = value
    elif kind is str and _INTEGER.fullmatch(value):
        number = int(value)
    elif kind is float and value.is_integer():
        number = int(value)
    else:
        raise _jtype(where, "an integer (a JSON number or a string of digits)", value)
    if not bounds[0] <= number <= bounds[1]:
        raise BadRequest(
            f"{_JSON_ERROR}{where}: {number} is out of range [{bounds[0]}, {bounds[1]}]"
        )
    return number


_INTEGER = re.compile(r"-?[0-9]+")


def _jdouble(value: Any, where: str) -> float:
    kind = type(value)
    if kind is float or kind is int:
        return float(value)
    if kind is str:
        special = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}.get(value)
        if special is not None:
            return special
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise _jtype(where, 'a number (or "NaN", "Infinity", "-Infinity")', value)


def _jbytes(value: Any, where: str) -> bytes:
    if type(value) is str:
        text = value.replace("-", "+").replace("_", "/")  # standard or URL-safe alphabet
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            pass
    raise _jtype(where, "base64 bytes", value)


def _jhex(obj: dict[str, Any], camel: str, snake: str, where: str, size: int) -> str:
    """A trace or span ID: hex (any case) of ``size`` bytes, or empty; "" when all zero."""
    value = _jget(obj, camel, snake)
    if value is None or value == "":
        return ""
    if type(value) is str and len(value) == 2 * size:
        try:
            ident = bytes.fromhex(value)
        except ValueError:
            pass
        else:
            return ident.hex() if any(ident) else ""
    raise _jtype(f"{where}.{camel}", f"{2 * size} hex digits ({size} bytes)", value)


def _jtype(where: str, expected: str, got: Any) -> BadRequest:
    return BadRequest(f"{_JSON_ERROR}{where} must be {expected}, got {_show(got)}")
