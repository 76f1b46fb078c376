"""Prometheus metrics of every component, named as Loki names them where Loki has one."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PUSH_REQUESTS = Counter("loki_distributor_push_requests_total", "Push requests.", ["format"])
LINES_RECEIVED = Counter("loki_distributor_lines_received_total", "Lines received.", ["tenant"])
BYTES_RECEIVED = Counter(
    "loki_distributor_bytes_received_total", "Line bytes received.", ["tenant"]
)
DISCARDED_SAMPLES = Counter(
    "loki_discarded_samples_total", "Entries discarded.", ["reason", "tenant"]
)
DISCARDED_BYTES = Counter("loki_discarded_bytes_total", "Bytes discarded.", ["reason", "tenant"])

REPLICA_REPAIRS = Counter(
    "loki_distributor_replica_repairs_total",
    "Pushes re-sent to a replica that failed them: repaired, failed (gave up), dropped"
    " (over the memory bound).",
    ["outcome"],
)
INGESTER_STREAMS = Gauge("loki_ingester_memory_streams", "Streams held in memory.")
INGESTER_CHUNKS_FLUSHED = Counter(
    "loki_ingester_chunks_flushed_total", "Chunks flushed.", ["reason"]
)
INGESTER_CHUNKS_DEDUPED = Counter(
    "loki_ingester_chunks_upload_skipped_total",
    "Chunk uploads skipped: recent (the chunks-recent cache knew it, index entry skipped"
    " too) or exists (the object store already had it).",
    ["reason"],
)
INGESTER_CHUNKS_UPLOADED = Counter(
    "loki_ingester_chunks_uploaded_total", "Chunks this ingester wrote to the object store."
)
INGESTER_CHUNK_BYTES = Counter(
    "loki_ingester_chunk_stored_bytes_total", "Compressed chunk bytes flushed."
)
INGESTER_RAW_BYTES = Counter(
    "loki_ingester_chunk_raw_bytes_total", "Uncompressed line bytes in flushed chunks."
)
INGESTER_FLUSH_FAILURES = Counter(
    "loki_ingester_chunks_flush_failures_total", "Chunk flushes that failed and will be retried."
)

STORE_DAMAGED_OBJECTS = Counter(
    "loki_store_damaged_objects_total",
    "Chunks and index segments that failed their checksum or format check when read "
    "(left out of the answer; each is logged with its key).",
    ["kind"],
)
WAL_FSYNCS = Counter("loki_ingester_wal_fsyncs_total", "fsync calls on the WAL.")
WAL_BYTES = Counter("loki_ingester_wal_bytes_written_total", "Bytes written to the WAL.")
WAL_CORRUPTIONS = Counter(
    "loki_ingester_wal_corruptions_total", "Damaged WAL records found at replay."
)
WAL_REPLAYED = Counter("loki_ingester_wal_replayed_records_total", "WAL records replayed.")

# With the process collector's process_resident_memory_bytes and process_open_fds: what a
# soak watches for leaks.
ASYNCIO_TASKS = Gauge("loki_asyncio_tasks", "Tasks alive on the event loop when scraped.")
REQUEST_DURATION = Histogram(
    "loki_request_duration_seconds",
    "HTTP request latency.",
    ["method", "route", "status_code"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

ASYNC_QUERIES = Counter(
    "loki_async_queries_total",
    "Async query executions by the state they reached (running counts every start).",
    ["state"],
)
WORKER_SPLITS = Counter(
    "loki_async_worker_splits_total",
    "Splits handled by querier workers: executed, cached, retried, failed, cancelled, "
    "dropped (not run: their query was stopped, cancelled or had enough).",
    ["outcome"],
)

COPROCESSOR_CALLS = Counter(
    "loki_coprocessor_calls_total",
    "Coprocessor hook calls by outcome: keep, skip, narrow, ok, invalid (answer of the "
    "wrong type: kept), error, timeout, dropped (post_push with too many in flight).",
    ["plugin", "hook", "outcome"],
)
COPROCESSOR_LATENCY = Histogram(
    "loki_coprocessor_call_duration_seconds",
    "Coprocessor hook call latency.",
    ["plugin", "hook"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 5, 30),
)
COPROCESSOR_LOADS = Counter(
    "loki_coprocessor_loads_total",
    "Plugin file loads: loaded, reloaded, unloaded, rejected (API version), failed.",
    ["plugin", "outcome"],
)
