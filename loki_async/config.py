"""Configuration: one YAML file (Loki's section names) and Loki-style flags → frozen dataclasses.

Precedence is Loki's: built-in defaults, then the file given with ``-config.file``, then
flags given on the command line. Unknown keys, wrong types and bad values are all
collected and reported together, each prefixed with its section, so an operator fixes a
config in one pass.

Field names carry their unit (``max_chunk_age_s``); the YAML key and the flag are
Loki's (``max_chunk_age`` / ``-ingester.max-chunk-age``) so that a Loki operator's
config and scripts carry over. Durations accept Prometheus/Go forms (``1h30m``, ``1w``,
``500ms``), sizes accept ``256KB``/``1MiB`` or plain bytes.
"""

from __future__ import annotations

import dataclasses
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from .errors import ConfigError
from .logql import literals

# --------------------------------------------------------------------------- field kinds


def opt(flag: str = "", key: str = "", kind: str = "", help: str = "") -> dict[str, str]:
    """Field metadata: the Loki flag name, the YAML key (default: field name), value kind."""
    return {"flag": flag, "key": key, "kind": kind, "help": help}


def parse_duration(text: str | int | float) -> float:
    """Parse a duration as Loki's config does (``1h30m``, ``7d``, ``1w``, ``250ms``, Go's
    ``1.5h``) into seconds; a bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        return float(text)
    if text.strip() == "":
        return 0.0
    return literals.parse_duration(text.strip()) / 1e9


def format_duration(seconds: float) -> str:
    """Format seconds as Loki prints a duration (``2h``, ``1w``, ``1h30m``)."""
    return literals.format_prom_duration(round(seconds * 1e9))


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse a byte size: ``262144``, ``256KB``, ``256KiB``, ``1.5MB`` (base 1024, as Loki)."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ValueError(f'not a valid size: "{text}" (use bytes, or a unit like 256KB, 1MB)')
    unit = (m.group(2) or "B").lower().replace("i", "")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def format_size(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def read_secret(path: str) -> str:
    """The secret held in file ``path``, without its trailing newline. OSError if the
    file cannot be read."""
    return Path(path).read_text().rstrip("\r\n")


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ServerConfig:
    http_listen_address: str = field(
        default="127.0.0.1",
        metadata=opt(
            "-server.http-listen-address",
            help="address the HTTP server binds (0.0.0.0: every interface)",
        ),
    )
    http_listen_port: int = field(
        default=3100, metadata=opt("-server.http-listen-port", help="HTTP port (0: a free one)")
    )
    log_level: str = field(default="info", metadata=opt("-log.level", help="debug|info|warn|error"))
    log_format: str = field(default="logfmt", metadata=opt("-log.format", help="logfmt|json"))
    http_server_max_body_bytes: int = field(
        default=100 << 20,
        metadata=opt(
            "-server.http-max-body-bytes",
            key="http_server_max_body_size",
            kind="size",
            help="largest request body, also after decompression (413 beyond)",
        ),
    )
    # Credentials in front of every route but /ready and /metrics (docs/operations.md,
    # "Tenants and authentication"). Secrets live in files, never in the config itself,
    # so -print-config and logs cannot show them.
    basic_auth_username: str = field(
        default="",
        metadata=opt(
            "-server.basic-auth-username",
            help="require HTTP basic auth with this user (and basic_auth_password_file)",
        ),
    )
    basic_auth_password_file: str = field(
        default="",
        metadata=opt(
            "-server.basic-auth-password-file",
            help="file holding the basic auth password (read at start; trailing newline ignored)",
        ),
    )
    bearer_token_file: str = field(
        default="",
        metadata=opt(
            "-server.bearer-token-file",
            help="file holding a token accepted as Authorization: Bearer (read at start)",
        ),
    )


@dataclass(frozen=True)
class CommonConfig:
    path_prefix: str = field(
        default="./data",
        metadata=opt(
            "-common.path-prefix", help="local data: WAL, filesystem chunks, embedded NATS store"
        ),
    )
    replication_factor: int = field(
        default=1,
        metadata=opt(
            "-common.replication-factor",
            help="ingesters that receive every stream (3: survives one down)",
        ),
    )


@dataclass(frozen=True)
class WALConfig:
    enabled: bool = field(
        default=True,
        metadata=opt(
            "-ingester.wal-enabled", help="write every push to the WAL before acknowledging it"
        ),
    )
    dir: str = field(
        default="", metadata=opt("-ingester.wal-dir", help="default: <path_prefix>/wal")
    )
    flush_on_shutdown: bool = field(
        default=True,
        metadata=opt(
            "-ingester.flush-on-shutdown",
            help="flush every chunk on SIGTERM (else the WAL replays them)",
        ),
    )
    segment_size_bytes: int = field(
        default=64 << 20,
        metadata=opt(
            "-ingester.wal-segment-size",
            key="segment_size",
            kind="size",
            help="WAL segment file size",
        ),
    )
    checkpoint_duration_s: float = field(
        default=300.0,
        metadata=opt(
            "-ingester.checkpoint-duration",
            key="checkpoint_duration",
            kind="duration",
            help=("no effect (Loki compatibility): WAL segments go once their chunks are flushed"),
        ),
    )


@dataclass(frozen=True)
class LifecyclerConfig:
    id: str = field(
        default="", metadata=opt("-ingester.lifecycler.ID", key="ID", help="default: hostname-port")
    )
    num_tokens: int = field(
        default=128, metadata=opt("-ingester.num-tokens", help="ring tokens per ingester")
    )
    heartbeat_period_s: float = field(
        default=5.0,
        metadata=opt(
            "-ingester.heartbeat-period",
            key="heartbeat_period",
            kind="duration",
            help="how often an ingester renews its ring entry",
        ),
    )
    heartbeat_timeout_s: float = field(
        default=60.0,
        metadata=opt(
            "-ring.heartbeat-timeout",
            key="heartbeat_timeout",
            kind="duration",
            help="a ring entry older than this is a dead ingester",
        ),
    )


@dataclass(frozen=True)
class DistributorConfig:
    replica_repair: bool = field(
        default=True,
        metadata=opt(
            "-distributor.replica-repair",
            help="re-send a push to a replica that failed it while the quorum succeeded",
        ),
    )
    replica_repair_max_bytes: int = field(
        default=64 << 20,
        metadata=opt(
            "-distributor.replica-repair-max-bytes",
            kind="size",
            help="pushes held for repair at once; beyond it repairs are dropped (counted)",
        ),
    )


@dataclass(frozen=True)
class IngesterConfig:
    chunk_target_size: int = field(
        default=1_572_864,
        metadata=opt(
            "-ingester.chunk-target-size",
            kind="size",
            help="compressed size at which a chunk is cut",
        ),
    )
    chunk_block_size: int = field(
        default=262_144,
        metadata=opt(
            "-ingester.chunks-block-size",
            kind="size",
            help="uncompressed size at which a head block is cut",
        ),
    )
    max_chunk_age_s: float = field(
        default=7200.0,
        metadata=opt(
            "-ingester.max-chunk-age",
            key="max_chunk_age",
            kind="duration",
            help="time window of one chunk; also the longest a chunk stays open",
        ),
    )
    chunk_idle_period_s: float = field(
        default=1800.0,
        metadata=opt(
            "-ingester.chunks-idle-period",
            key="chunk_idle_period",
            kind="duration",
            help="a stream without new entries this long has its chunk flushed",
        ),
    )
    chunk_retain_period_s: float = field(
        default=0.0,
        metadata=opt(
            "-ingester.chunks-retain-period",
            key="chunk_retain_period",
            kind="duration",
            help=("no effect (Loki compatibility): flushed chunks leave memory at once"),
        ),
    )
    flush_check_period_s: float = field(
        default=30.0,
        metadata=opt(
            "-ingester.flush-check-period",
            key="flush_check_period",
            kind="duration",
            help="how often chunks are checked for flushing",
        ),
    )
    concurrent_flushes: int = field(
        default=32, metadata=opt("-ingester.concurrent-flushes", help="chunk uploads at once")
    )
    zstd_level: int = field(
        default=3,
        metadata=opt(
            "-ingester.zstd-level", help="zstd level of chunk blocks (same on every replica)"
        ),
    )
    wal: WALConfig = field(default_factory=WALConfig)
    lifecycler: LifecyclerConfig = field(default_factory=LifecyclerConfig)


@dataclass(frozen=True)
class QuerierConfig:
    query_ingesters_within_s: float = field(
        default=0.0,
        metadata=opt(
            "-querier.query-ingesters-within",
            key="query_ingesters_within",
            kind="duration",
            help="0: always ask the ingesters (back-filled data is visible before its flush)",
        ),
    )
    max_concurrent_chunk_fetches: int = field(
        default=32,
        metadata=opt(
            "-querier.max-concurrent-chunk-fetches", help="chunk downloads at once per query"
        ),
    )


@dataclass(frozen=True)
class QueryRangeConfig:
    align_queries_with_step: bool = field(
        default=False,
        metadata=opt(
            "-querier.align-querier-with-step",
            help="align start and end of metric queries to the step",
        ),
    )
    cache_results: bool = field(
        default=True,
        metadata=opt(
            "-querier.cache-results", help="cache metric split results in memory (frontend)"
        ),
    )
    results_cache_max_entries: int = field(
        default=4096,
        metadata=opt("-frontend.results-cache.max-entries", help="split results kept in memory"),
    )


@dataclass(frozen=True)
class FrontendConfig:
    """Asynchronous queries as the query-frontend accepts them."""

    async_default_keep_alive_s: float = field(
        default=86400.0,
        metadata=opt(
            "-frontend.async-default-keep-alive",
            key="async_default_keep_alive",
            kind="duration",
            help="how long an async result stays when keep_alive= is not given",
        ),
    )
    async_max_keep_alive_s: float = field(
        default=7 * 86400.0,
        metadata=opt(
            "-frontend.async-max-keep-alive",
            key="async_max_keep_alive",
            kind="duration",
            help="the largest keep_alive= a client may ask for",
        ),
    )
    async_max_wait_s: float = field(
        default=300.0,
        metadata=opt(
            "-frontend.async-max-wait",
            key="async_max_wait",
            kind="duration",
            help="the largest wait= (long-poll) a client may ask for",
        ),
    )


@dataclass(frozen=True)
class QuerierWorkerConfig:
    """Querier workers: consumers of the QUERIES and SPLITS streams."""

    concurrency: int = field(
        default=2,
        metadata=opt(
            "-querier-worker.concurrency",
            help="splits executed at once per process (0: this process runs no workers)",
        ),
    )
    max_concurrent_queries: int = field(
        default=16,
        metadata=opt(
            "-querier-worker.max-concurrent-queries",
            help="async queries one process coordinates at once",
        ),
    )
    max_deliver: int = field(
        default=5,
        metadata=opt(
            "-querier-worker.max-deliver",
            help="deliveries of a query or split before its ticket fails",
        ),
    )
    ack_wait_s: float = field(
        default=30.0,
        metadata=opt(
            "-querier-worker.ack-wait",
            key="ack_wait",
            kind="duration",
            help="a message not acknowledged (nor kept in progress) for this long is redelivered",
        ),
    )
    retry_delay_s: float = field(
        default=1.0,
        metadata=opt(
            "-querier-worker.retry-delay",
            key="retry_delay",
            kind="duration",
            help="delay before a split that failed with a retryable error runs again",
        ),
    )
    split_cache_ttl_s: float = field(
        default=86400.0,
        metadata=opt(
            "-querier-worker.split-cache-ttl",
            key="split_cache_ttl",
            kind="duration",
            help="how long split results stay in the split-cache bucket",
        ),
    )


@dataclass(frozen=True)
class CoprocessorsConfig:
    """Coprocessor plugins: where they are, which run, their config, their time limits."""

    directory: str = field(
        default="",
        metadata=opt(
            "-coprocessors.directory", help="plugin files; default: the repository's coprocessors/"
        ),
    )
    enabled: str = field(
        default="*",
        metadata=opt(
            "-coprocessors.enabled",
            kind="names",
            help="plugins that run: * for all in the directory, or a list of names",
        ),
    )
    reload_interval_s: float = field(
        default=1.0,
        metadata=opt(
            "-coprocessors.reload-interval",
            key="reload_interval",
            kind="duration",
            help="how often the directory is checked for changed plugins (0: never)",
        ),
    )
    pre_query_timeout_s: float = field(
        default=0.2,
        metadata=opt(
            "-coprocessors.pre-query-timeout",
            key="pre_query_timeout",
            kind="duration",
            help="time a pre_query call may take before the split is kept",
        ),
    )
    hook_timeout_s: float = field(
        default=1.0,
        metadata=opt(
            "-coprocessors.hook-timeout",
            key="hook_timeout",
            kind="duration",
            help="time limit of the other hooks (and of a plugin's start)",
        ),
    )
    handle_timeout_s: float = field(
        default=30.0,
        metadata=opt(
            "-coprocessors.handle-timeout",
            key="handle_timeout",
            kind="duration",
            help="time limit of POST /coprocessor/v1/<name>",
        ),
    )
    plugins: dict = field(
        default_factory=dict,
        metadata=opt(kind="mapping", help="per plugin name, its options (see each plugin)"),
    )


@dataclass(frozen=True)
class FilesystemStorageConfig:
    directory: str = field(
        default="", metadata=opt("-local.chunk-directory", help="default: <path_prefix>/chunks")
    )


@dataclass(frozen=True)
class AWSStorageConfig:
    endpoint: str = field(
        default="",
        metadata=opt("-s3.endpoint", help="URL or host:port of the S3 server (empty: AWS)"),
    )
    bucketnames: str = field(
        default="", metadata=opt("-s3.buckets", help="the bucket chunks and index go to")
    )
    region: str = field(default="us-east-1", metadata=opt("-s3.region", help="S3 region"))
    access_key_id: str = field(
        default="",
        metadata=opt(
            "-s3.access-key-id", help="empty: botocore's default chain (env, files, instance role)"
        ),
    )
    secret_access_key: str = field(
        default="", metadata=opt("-s3.secret-access-key", help="with access_key_id")
    )
    s3forcepathstyle: bool = field(
        default=True,
        metadata=opt(
            "-s3.force-path-style",
            help="address endpoint/bucket/key (most self-hosted servers need it)",
        ),
    )
    insecure: bool = field(
        default=False,
        metadata=opt("-s3.insecure", help="plain HTTP for an endpoint given without a scheme"),
    )
    max_retries: int = field(
        default=5,
        metadata=opt(
            "-s3.max-retries",
            help="attempts of a failing S3 request (throttling, 5xx, dropped connection)",
        ),
    )


@dataclass(frozen=True)
class StorageConfig:
    object_store: str = field(
        default="filesystem", metadata=opt("-store.object-store", help="filesystem|s3")
    )
    filesystem: FilesystemStorageConfig = field(default_factory=FilesystemStorageConfig)
    aws: AWSStorageConfig = field(default_factory=AWSStorageConfig)


@dataclass(frozen=True)
class LimitsConfig:
    ingestion_rate_mb: float = field(
        default=4.0,
        metadata=opt(
            "-distributor.ingestion-rate-limit-mb", help="per-tenant push rate, MB/s (429 beyond)"
        ),
    )
    ingestion_burst_size_mb: float = field(
        default=6.0,
        metadata=opt(
            "-distributor.ingestion-burst-size-mb", help="per-tenant burst above the rate, MB"
        ),
    )
    max_line_size: int = field(
        default=256 << 10,
        metadata=opt(
            "-distributor.max-line-size", kind="size", help="longest log line accepted (400 beyond)"
        ),
    )
    max_label_names_per_series: int = field(
        default=15, metadata=opt("-validation.max-label-names-per-series", help="labels per stream")
    )
    max_label_name_length: int = field(
        default=1024,
        metadata=opt("-validation.max-length-label-name", help="bytes of a label name"),
    )
    max_label_value_length: int = field(
        default=2048,
        metadata=opt("-validation.max-length-label-value", help="bytes of a label value"),
    )
    reject_old_samples: bool = field(
        default=True,
        metadata=opt(
            "-validation.reject-old-samples",
            help="reject entries older than reject_old_samples_max_age",
        ),
    )
    reject_old_samples_max_age_s: float = field(
        default=7 * 86400.0,
        metadata=opt(
            "-validation.reject-old-samples.max-age",
            key="reject_old_samples_max_age",
            kind="duration",
            help="oldest entry accepted when reject_old_samples is on",
        ),
    )
    creation_grace_period_s: float = field(
        default=600.0,
        metadata=opt(
            "-validation.create-grace-period",
            key="creation_grace_period",
            kind="duration",
            help="how far in the future an entry may be",
        ),
    )
    max_query_length_s: float = field(
        default=721 * 3600.0,
        metadata=opt(
            "-store.max-query-length",
            key="max_query_length",
            kind="duration",
            help="longest query range (400 beyond)",
        ),
    )
    max_entries_limit_per_query: int = field(
        default=5000,
        metadata=opt("-validation.max-entries-limit", help="largest limit= of a log query"),
    )
    max_query_series: int = field(
        default=500,
        metadata=opt("-querier.max-query-series", help="series a metric query may return"),
    )
    max_streams_matchers_per_query: int = field(
        default=1000,
        metadata=opt("-querier.max-streams-matcher-per-query", help="stream selectors per query"),
    )
    query_timeout_s: float = field(
        default=60.0,
        metadata=opt(
            "-querier.query-timeout",
            key="query_timeout",
            kind="duration",
            help="a sync query longer than this is a 504 (async ones are not bound)",
        ),
    )
    split_queries_by_interval_s: float = field(
        default=3600.0,
        metadata=opt(
            "-querier.split-queries-by-interval",
            key="split_queries_by_interval",
            kind="duration",
            help="queries are planned, cached and spread over workers in splits this long",
        ),
    )
    max_query_parallelism: int = field(
        default=32,
        metadata=opt("-querier.max-query-parallelism", help="splits of one query run at once"),
    )
    max_cache_freshness_per_query_s: float = field(
        default=600.0,
        metadata=opt(
            "-frontend.max-cache-freshness",
            key="max_cache_freshness_per_query",
            kind="duration",
            help="metric splits newer than this are not cached",
        ),
    )
    max_concurrent_async_queries: int = field(
        default=32,
        metadata=opt(
            "-frontend.max-concurrent-async-queries",
            help="async queries a tenant may have queued or running at once (429 beyond; "
            "0: no limit)",
        ),
    )


@dataclass(frozen=True)
class EmbeddedNATSConfig:
    listen_address: str = field(
        default="127.0.0.1",
        metadata=opt(
            "-nats.embedded.address", help="address of the nats-server that -target=all starts"
        ),
    )
    listen_port: int = field(
        default=4222, metadata=opt("-nats.embedded.port", help="its client port")
    )
    store_dir: str = field(
        default="", metadata=opt("-nats.embedded.store-dir", help="default: <path_prefix>/nats")
    )
    config_file: str = field(
        default="",
        metadata=opt(
            "-nats.embedded.config-file", help="default: the repository's nats/nats-server.conf"
        ),
    )


@dataclass(frozen=True)
class NATSConfig:
    url: str = field(
        default="",
        metadata=opt("-nats.url", help="empty: -target=all starts an embedded nats-server"),
    )
    request_timeout_s: float = field(
        default=10.0,
        metadata=opt(
            "-nats.request-timeout",
            key="request_timeout",
            kind="duration",
            help="timeout of internal NATS requests (pushes to ingesters, reads)",
        ),
    )
    replicas: int = field(
        default=1,
        metadata=opt(
            "-nats.replicas", help="replicas of every stream and bucket (3 on a 3-node cluster)"
        ),
    )
    embedded: EmbeddedNATSConfig = field(default_factory=EmbeddedNATSConfig)


@dataclass(frozen=True)
class Config:
    target: str = field(
        default="all",
        metadata=opt(
            "-target", help="the modules this process runs: all, read, write, or one component"
        ),
    )
    auth_enabled: bool = field(
        default=False,
        metadata=opt(
            "-auth.enabled",
            help="require X-Scope-OrgID (the tenant) on every request for logs or tickets",
        ),
    )
    server: ServerConfig = field(default_factory=ServerConfig)
    common: CommonConfig = field(default_factory=CommonConfig)
    distributor: DistributorConfig = field(default_factory=DistributorConfig)
    ingester: IngesterConfig = field(default_factory=IngesterConfig)
    querier: QuerierConfig = field(default_factory=QuerierConfig)
    query_range: QueryRangeConfig = field(default_factory=QueryRangeConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    querier_worker: QuerierWorkerConfig = field(default_factory=QuerierWorkerConfig)
    coprocessors: CoprocessorsConfig = field(default_factory=CoprocessorsConfig)
    storage_config: StorageConfig = field(default_factory=StorageConfig)
    limits_config: LimitsConfig = field(default_factory=LimitsConfig)
    nats: NATSConfig = field(default_factory=NATSConfig)

    # Derived paths: everything local lives under common.path_prefix unless set.
    @property
    def wal_dir(self) -> Path:
        return Path(self.ingester.wal.dir or Path(self.common.path_prefix) / "wal")

    @property
    def chunks_dir(self) -> Path:
        return Path(
            self.storage_config.filesystem.directory or Path(self.common.path_prefix) / "chunks"
        )

    @property
    def nats_store_dir(self) -> Path:
        return Path(self.nats.embedded.store_dir or Path(self.common.path_prefix) / "nats")

    @property
    def ingester_id(self) -> str:
        return (
            self.ingester.lifecycler.id or f"{socket.gethostname()}-{self.server.http_listen_port}"
        )


# --------------------------------------------------------------------------- loading


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def _convert(value: Any, typ: Any, kind: str) -> Any:
    if kind == "duration":
        return parse_duration(value)
    if kind == "size":
        return parse_size(value)
    if kind == "names":
        items = value if isinstance(value, list) else str(value).split(",")
        if not all(isinstance(x, str) for x in items):
            raise ValueError(f"expected a list of names, got {value!r}")
        return ",".join(x.strip() for x in items if x.strip())
    if kind == "mapping":
        if not isinstance(value, dict) or not all(
            isinstance(v, dict) or v is None for v in value.values()
        ):
            raise ValueError("expected a mapping of plugin name to its options")
        return {str(k): dict(v or {}) for k, v in value.items()}
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ValueError(f"expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise ValueError(f"expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
    if typ is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    raise AssertionError(f"BUG: unsupported config type {typ!r}")


def _build(cls: type, data: Any, path: str, errors: list[str], base: Any) -> Any:
    """Overlay ``data`` (a YAML mapping) on ``base`` (an instance of cls)."""
    where = path or "top level"
    if data is None:
        return base
    if not isinstance(data, dict):
        errors.append(f"{where}: expected a mapping, got {type(data).__name__}")
        return base
    hints = get_type_hints(cls)
    fields = {_key(f): f for f in dataclasses.fields(cls)}
    changes: dict[str, Any] = {}
    for key, value in data.items():
        f = fields.get(str(key))
        name = f"{path}.{key}" if path else str(key)
        if f is None:
            errors.append(
                f"{where}: field {key} not found in type {cls.__name__}"
                f" (valid: {', '.join(sorted(fields))})"
            )
            continue
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            changes[f.name] = _build(typ, value, name, errors, getattr(base, f.name))
            continue
        try:
            changes[f.name] = _convert(value, typ, f.metadata.get("kind", ""))
        except ValueError as e:
            errors.append(f"{name}: {e}")
    return dataclasses.replace(base, **changes)


def _flag_table(cls: type = Config, prefix: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Every flag → the path of YAML keys it sets."""
    out: dict[str, tuple[str, ...]] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            out.update(_flag_table(typ, (*prefix, _key(f))))
        elif f.metadata.get("flag"):
            out[f.metadata["flag"].lstrip("-")] = (*prefix, _key(f))
    return out


FLAGS = _flag_table()
_COMMAND_FLAGS = {"config.file", "print-config", "version", "help", "h", "config.expand-env"}


@dataclass(frozen=True)
class CommandLine:
    """What the command line asked for besides configuration values."""

    config_file: str = ""
    expand_env: bool = False
    print_config: bool = False
    version: bool = False
    help: bool = False
    overrides: dict[tuple[str, ...], str] = field(default_factory=dict)


def parse_args(argv: list[str]) -> CommandLine:
    """Parse Loki-style flags (``-a.b=c``, ``--a.b=c``, ``-a.b c``, boolean ``-a.b``)."""
    errors: list[str] = []
    overrides: dict[tuple[str, ...], str] = {}
    special: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            errors.append(f"unexpected argument {arg!r}: flags look like -name=value")
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in _COMMAND_FLAGS:
            special[name] = value if eq else "true"
            if name == "config.file" and not eq and i < len(argv):
                special[name] = argv[i]
                i += 1
            continue
        path = FLAGS.get(name)
        if path is None:
            errors.append(f"flag provided but not defined: -{name}")
            continue
        if not eq:
            if _is_bool_path(path):
                value = "true"
            elif i < len(argv):
                value = argv[i]
                i += 1
            else:
                errors.append(f"flag needs an argument: -{name}")
                continue
        overrides[path] = value
    if errors:
        raise ConfigError("invalid command line:\n  " + "\n  ".join(errors))
    return CommandLine(
        config_file=special.get("config.file", ""),
        expand_env=special.get("config.expand-env", "false") not in ("false", "0"),
        print_config=special.get("print-config", "false") != "false",
        version=special.get("version", "false") != "false",
        help=("help" in special or "h" in special),
        overrides=overrides,
    )


def _is_bool_path(path: tuple[str, ...]) -> bool:
    cls: Any = Config
    for key in path:
        hints = get_type_hints(cls)
        f = next(f for f in dataclasses.fields(cls) if _key(f) == key)
        cls = hints[f.name]
    return cls is bool


def _nest(overrides: dict[tuple[str, ...], str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in overrides.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def load(cmd: CommandLine) -> Config:
    """Build the configuration: defaults, then the YAML file, then flags. Raises ConfigError."""
    errors: list[str] = []
    cfg = Config()
    if cmd.config_file:
        try:
            text = Path(cmd.config_file).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {cmd.config_file}: {e.strerror}") from None
        if cmd.expand_env:
            text = expand_env(text, cmd.config_file)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {cmd.config_file} is not valid YAML: {e}") from None
        cfg = _build(Config, data, "", errors, cfg)
    cfg = _build(Config, _nest(cmd.overrides), "", errors, cfg)
    errors.extend(_validate(cfg))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return cfg


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, source: str = "config") -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` with environment values, as Loki's
    ``-config.expand-env=true`` does; ``$${VAR}`` stays literal ``${VAR}``. A variable
    that is unset and has no default is an error naming every such variable, rather
    than Loki's silent empty string, so a deployment missing one fails at start."""
    import os

    missing: list[str] = []

    def sub(m: re.Match[str]) -> str:
        start = m.start()
        if start > 0 and text[start - 1] == "$":
            return m.group(0)  # escaped: the leading "$" is dropped below
        value = os.environ.get(m.group(1))
        if value is None or (value == "" and m.group(2) is not None):
            if m.group(2) is not None:
                return m.group(2)
            missing.append(m.group(1))
            return ""
        return value

    out = _ENV_REF.sub(sub, text).replace("$${", "${")
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise ConfigError(
            f"config file {source}: environment variables not set: {names} "
            "(set them, or give a default as ${NAME:-value})"
        )
    return out


def load_yaml_text(text: str) -> Config:
    """Build a configuration from YAML text (tests, embedded configs)."""
    errors: list[str] = []
    cfg = _build(Config, yaml.safe_load(text), "", errors, Config())
    errors.extend(_validate(cfg))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return cfg


def _validate(cfg: Config) -> list[str]:
    from .modules import TARGETS  # the target table lives with the modules

    errs = []
    if cfg.target not in TARGETS:
        errs.append(f"target: unknown target {cfg.target!r} (valid: {', '.join(TARGETS)})")
    if cfg.storage_config.object_store not in ("filesystem", "s3"):
        errs.append(
            "storage_config.object_store: must be filesystem or s3, got "
            f"{cfg.storage_config.object_store!r}"
        )
    if cfg.storage_config.object_store == "s3":
        if not cfg.storage_config.aws.endpoint:
            errs.append("storage_config.aws.endpoint: required when object_store is s3")
        if not cfg.storage_config.aws.bucketnames:
            errs.append("storage_config.aws.bucketnames: required when object_store is s3")
    if not 1 <= cfg.server.http_listen_port <= 65535 and cfg.server.http_listen_port != 0:
        errs.append("server.http_listen_port: must be between 0 and 65535")
    if cfg.common.replication_factor < 1:
        errs.append("common.replication_factor: must be at least 1")
    if cfg.server.log_level not in ("debug", "info", "warn", "error"):
        errs.append("server.log_level: must be debug, info, warn or error")
    if cfg.server.log_format not in ("logfmt", "json"):
        errs.append("server.log_format: must be logfmt or json")
    if cfg.ingester.chunk_block_size <= 0 or cfg.ingester.chunk_target_size <= 0:
        errs.append("ingester: chunk_block_size and chunk_target_size must be positive")
    if cfg.nats.replicas not in (1, 3, 5):
        errs.append("nats.replicas: must be 1, 3 or 5")
    qw = cfg.querier_worker
    if qw.concurrency < 0 or qw.max_concurrent_queries < 1:
        errs.append("querier_worker: concurrency must be >= 0 and max_concurrent_queries >= 1")
    if qw.max_deliver < 1 or qw.ack_wait_s < 1:
        errs.append("querier_worker: max_deliver must be >= 1 and ack_wait >= 1s")
    if cfg.limits_config.max_concurrent_async_queries < 0:
        errs.append("limits_config.max_concurrent_async_queries: must be >= 0 (0: no limit)")
    fe = cfg.frontend
    if not 0 < fe.async_default_keep_alive_s <= fe.async_max_keep_alive_s:
        errs.append(
            "frontend: async_default_keep_alive must be positive and at most async_max_keep_alive"
        )
    cp = cfg.coprocessors
    if min(cp.pre_query_timeout_s, cp.hook_timeout_s, cp.handle_timeout_s) <= 0:
        errs.append("coprocessors: pre_query_timeout, hook_timeout and handle_timeout must be > 0")
    if cp.reload_interval_s < 0:
        errs.append("coprocessors.reload_interval: must be >= 0 (0 turns hot reload off)")
    if not 1 <= cfg.ingester.zstd_level <= 19:
        errs.append("ingester.zstd_level: must be between 1 and 19")
    errs.extend(_validate_auth(cfg.server))
    return errs


def _validate_auth(srv: ServerConfig) -> list[str]:
    errs = []
    if bool(srv.basic_auth_username) != bool(srv.basic_auth_password_file):
        errs.append("server: basic_auth_username and basic_auth_password_file go together")
    if ":" in srv.basic_auth_username:
        errs.append("server.basic_auth_username: must not contain ':'")
    for key in ("basic_auth_password_file", "bearer_token_file"):
        path = getattr(srv, key)
        if not path:
            continue
        try:
            if not read_secret(path).strip():
                errs.append(f"server.{key}: {path} is empty")
        except OSError as e:
            errs.append(f"server.{key}: cannot read {path}: {e.strerror}")
    return errs


def dump(cfg: Config) -> str:
    """The effective configuration as YAML with Loki's keys (``-print-config``)."""
    return yaml.safe_dump(_to_tree(cfg), sort_keys=False)


def _to_tree(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = f.metadata.get("kind", "")
        if dataclasses.is_dataclass(value):
            out[_key(f)] = _to_tree(value)
        elif kind == "duration":
            out[_key(f)] = format_duration(value)
        elif kind == "size":
            out[_key(f)] = format_size(value)
        else:
            out[_key(f)] = value
    return out


def flag_help() -> str:
    """One line per flag: name, YAML path, default (``-help``)."""
    lines = []
    defaults = _to_tree(Config())

    def lookup(path: tuple[str, ...]) -> Any:
        node: Any = defaults
        for k in path:
            node = node[k]
        return node

    hints = _help_texts()
    for flag, path in sorted(FLAGS.items()):
        extra = f"  ({hints[path]})" if hints.get(path) else ""
        lines.append(f"  -{flag}  [{'.'.join(path)}] default {lookup(path)!r}{extra}")
    return "\n".join(lines)


def _help_texts(cls: type = Config, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    out: dict[tuple[str, ...], str] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            out.update(_help_texts(typ, (*prefix, _key(f))))
        else:
            out[(*prefix, _key(f))] = f.metadata.get("help", "")
    return out


def reference_markdown() -> str:
    """The configuration reference (docs/operations.md): per section, every YAML key with
    its flag, default and meaning, generated from the dataclasses above."""
    out: list[str] = []
    defaults = _to_tree(Config())

    def section(cls: type, path: tuple[str, ...], node: dict[str, Any]) -> None:
        hints = get_type_hints(cls)
        rows: list[str] = []
        nested: list[tuple[type, tuple[str, ...], dict[str, Any]]] = []
        for f in dataclasses.fields(cls):
            key = _key(f)
            if dataclasses.is_dataclass(hints[f.name]):
                nested.append((hints[f.name], (*path, key), node[key]))
                continue
            default = node[key]
            shown = "" if default in ("", {}) else yaml.safe_dump(default).strip()
            shown = shown.removesuffix("\n...").strip()
            flag = f.metadata.get("flag", "")
            doc = f.metadata.get("help", "").replace("|", "\\|")
            kind = f.metadata.get("kind", "")
            if kind in ("duration", "size"):
                doc = f"({kind}) {doc}".strip()
            rows.append(
                f"| `{key}` | {f'`{flag}`' if flag else ''} | "
                f"{f'`{shown}`' if shown else ''} | {doc} |"
            )
        if rows:
            title = ".".join(path) if path else "top level"
            out.append(f"### `{title}`\n")
            if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
                out.append(" ".join(cls.__doc__.split()) + "\n")
            out.append("| key | flag | default | meaning |\n|---|---|---|---|")
            out.extend(rows)
            out.append("")
        for sub in nested:
            section(*sub)

    section(Config, (), defaults)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":  # python3 -m loki_async.config: print the reference
    print(reference_markdown(), end="")
