"""The coprocessor plugin API: everything a plugin imports, standard library only.

A coprocessor is one Python file in the plugin directory (``coprocessors/`` by default)
that defines a subclass of :class:`Coprocessor` and declares it with :func:`declare`::

    from loki_async.coprocessor import Coprocessor, Keep, Skip, SplitRequest, declare

    class OnlyWeekdays(Coprocessor):
        async def pre_query(self, split: SplitRequest) -> Keep | Skip:
            ...

    PLUGIN = declare(OnlyWeekdays, name="weekdays", version="1.0.0", api="1.0")

The host imports the file, reads ``PLUGIN`` and checks the API version the plugin was
built for against :data:`API_VERSION` *before* constructing it (the major must be equal,
the plugin's minor at most the host's). Then it constructs the plugin with its
validated configuration (the ``coprocessors.plugins.<name>`` section of the server's
config) and awaits :meth:`Coprocessor.start`.

Hooks are optional coroutines; a plugin implements the ones it needs. Each gets a small
frozen record and runs under a timeout. An exception, a timeout or a return value that
is not what the hook promises never fails or changes a query: the host treats it as
*keep* (fail open) and counts it in ``loki_coprocessor_calls_total``.

| hook | called | returns |
|---|---|---|
| ``pre_query(split)`` | once per split, before it runs | Keep, Skip or Narrow |
| ``pre_get_index(request)`` | before the store's index is read | the same |
| ``pre_get_chunk(ref)`` | before a chunk is fetched | ``False`` skips the chunk |
| ``pre_flush(chunk)`` / ``post_flush(chunk, key)`` | an ingester flushes a chunk | nothing |
| ``post_push(tenant, streams)`` | a push was acknowledged | nothing |
| ``handle(request, host)`` | ``POST /coprocessor/v1/<name>`` | the response bytes |

Skipping and narrowing are claims: *no entry the query can return lies outside what I
keep*. A plugin that claims wrongly makes results incomplete, so it should keep whenever
it is not sure. ``pre_query`` is only asked for queries whose result over no data is
empty (not for ``absent_over_time`` or ``vector()``).

Errors: a plugin raises :class:`CoprocessorError` with one of its few kinds; the host
maps the kind to an HTTP status for ``handle``. Errors of the plugin's own domain belong
in its response bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

API_VERSION = "1.0.0"

# --------------------------------------------------------------------------- versions


@dataclass(frozen=True, order=True, slots=True)
class Version:
    """A SemVer version. Pre-releases sort before their release (``1.2.0-rc.1 < 1.2.0``);
    build metadata is ignored."""

    major: int
    minor: int
    patch: int
    release: int = 1  # 0 for a pre-release, so it sorts first
    pre: tuple[tuple[int, int | str], ...] = ()

    def __str__(self) -> str:
        base = f"{self.major}.{self.minor}.{self.patch}"
        if self.release:
            return base
        return base + "-" + ".".join(str(p[1]) for p in self.pre)


_VERSION_RE = re.compile(
    r"^v?(0|[1-9]\d*)(?:\.(0|[1-9]\d*))?(?:\.(0|[1-9]\d*))?"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z.-]+)?$"
)


def parse_version(text: str) -> Version:
    """``1``, ``1.2``, ``1.2.3``, ``1.2.3-rc.1``; missing parts are 0. ValueError if not."""
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise ValueError(f"not a version: {text!r} (use SemVer, e.g. 1.2.0)")
    major, minor, patch, pre = m.groups()
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in (pre or "").split(".") if p)
    return Version(int(major), int(minor or 0), int(patch or 0), 0 if pre else 1, parts)


_CONSTRAINT_RE = re.compile(r"^\s*(>=|<=|==|!=|>|<|=|~=|\^)?\s*(\S+)\s*$")


def satisfies(version: str | Version, constraint: str) -> bool:
    """Whether ``version`` meets every comma-separated clause of ``constraint``:
    ``>=1.2,<2``, ``==1.4.0``, ``!=1.3.1``, ``~=1.2`` (>=1.2, <2), ``^1.2`` (same major).
    A bare version means ``==``. ValueError for a malformed constraint."""
    v = version if isinstance(version, Version) else parse_version(version)
    for clause in constraint.split(","):
        if not clause.strip():
            continue
        m = _CONSTRAINT_RE.match(clause)
        if not m:
            raise ValueError(f"not a version constraint: {clause.strip()!r}")
        op, want = m.group(1) or "==", parse_version(m.group(2))
        ok = {
            ">=": v >= want,
            "<=": v <= want,
            ">": v > want,
            "<": v < want,
            "==": v == want,
            "=": v == want,
            "!=": v != want,
            "~=": want <= v < Version(want.major + 1, 0, 0, 0),
            "^": want <= v < Version(want.major + 1, 0, 0, 0),
        }[op]
        if not ok:
            return False
    return True


def api_mismatch(declared: str, host: str = API_VERSION) -> str | None:
    """Why a plugin built for API ``declared`` cannot run on ``host``, or None if it can:
    the majors must be equal and the plugin's minor at most the host's."""
    try:
        want = parse_version(declared)
    except ValueError as e:
        return str(e)
    have = parse_version(host)
    if want.major != have.major:
        return f"built for coprocessor API {declared}, host has {host} (major version differs)"
    if want.minor > have.minor:
        return f"built for coprocessor API {declared}, host has only {host} (newer minor)"
    return None


# --------------------------------------------------------------------------- errors


class CoprocessorError(Exception):
    """The one error type a plugin raises. ``kind`` is one of :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown coprocessor error kind {kind!r}: use one of {ERROR_KINDS}")
        super().__init__(message)
        self.kind = kind
        self.message = message


#: The closed set of error kinds and the HTTP status ``handle`` answers with.
ERROR_KINDS: dict[str, int] = {
    "invalid_request": 400,  # the caller sent something the plugin cannot use
    "not_found": 404,
    "unavailable": 503,  # a backend the plugin needs is away; worth retrying
    "timeout": 504,
    "internal": 500,
}


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Keep:
    """Run the split (or read the index) as planned."""


@dataclass(frozen=True, slots=True)
class Skip:
    """Do not run it: nothing the query can return is there."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Narrow:
    """Run it on ``start_ns <= ts < end_ns`` only (intersected with its own range)."""

    start_ns: int
    end_ns: int


KEEP = Keep()
Decision = Keep | Skip | Narrow


def keep_within(
    windows: Iterable[tuple[int, int]], start_ns: int, end_ns: int, reason: str = ""
) -> Decision:
    """The decision for ``[start_ns, end_ns)`` when data can only be in ``windows``
    (``[lo, hi)`` ranges): Skip if none meets it, Narrow to the hull of what they cover
    (a narrowing is one range), Keep if they cover it all."""
    lo, hi = end_ns, start_ns
    for a, b in windows:
        a, b = max(a, start_ns), min(b, end_ns)
        if a < b:
            lo, hi = min(lo, a), max(hi, b)
    if lo >= hi:
        return Skip(reason[:500])
    if (lo, hi) == (start_ns, end_ns):
        return KEEP
    return Narrow(lo, hi)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class LabelMatcher:
    """A stream matcher of the selector: ``op`` is ``=``, ``!=``, ``=~`` or ``!~``."""

    name: str
    op: str
    value: str


@dataclass(frozen=True, slots=True)
class Selector:
    """One log selector of the query, with what every line it returns must satisfy.

    ``line_contains``: literals of ``|= "..."`` filters (not in an ``or``): every line
    contains each. ``label_equals``: ``(name, value)`` of ``| name="value"`` label
    filters (not under an ``or``): every line has that label (stream label, structured
    metadata or parsed) with that value."""

    matchers: tuple[LabelMatcher, ...]
    line_contains: tuple[str, ...] = ()
    label_equals: tuple[tuple[str, str], ...] = ()

    def required_values(self) -> Iterator[tuple[str, str]]:
        """Every ``(where, value)`` a returned line is known to carry: ``("line", lit)``
        for line filters, ``(label, value)`` for ``=`` matchers and label filters."""
        for lit in self.line_contains:
            yield "line", lit
        for m in self.matchers:
            if m.op == "=":
                yield m.name, m.value
        yield from self.label_equals


@dataclass(frozen=True, slots=True)
class SplitRequest:
    """One split of a query, as ``pre_query`` sees it.

    ``start_ns <= ts < end_ns`` is the range of log timestamps the split reads (for a
    metric split: its step times widened by the range and offset of its range
    aggregations). ``query_start_ns``/``query_end_ns`` are the whole query's. ``kind``
    is ``log``, ``metric`` or ``instant``; ``step_ns`` 0 unless metric. ``query_id`` is
    the same for every split of one execution (cache per query with it).
    ``selectors`` has one entry per log selector in the query: a split can only be
    skipped if *every* selector finds nothing in it."""

    tenant: str
    query: str
    kind: str
    start_ns: int
    end_ns: int
    query_start_ns: int
    query_end_ns: int
    step_ns: int
    query_id: str
    selectors: tuple[Selector, ...]


@dataclass(frozen=True, slots=True)
class IndexRequest:
    """A lookup of the store's index for one selector over ``start_ns <= ts < end_ns``."""

    tenant: str
    selector: Selector
    start_ns: int
    end_ns: int


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A chunk the querier is about to fetch. ``labels`` is the canonical label string."""

    tenant: str
    labels: str
    key: str
    mint_ns: int
    maxt_ns: int
    entries: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class FlushedChunk:
    """A chunk an ingester writes to the object store: ``data`` is its encoded bytes
    (the chunk format of ``docs/architecture.md``)."""

    tenant: str
    labels: str
    mint_ns: int
    maxt_ns: int
    entries: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """One stream of an acknowledged push."""

    labels: str
    entries: int
    bytes: int
    min_ts_ns: int
    max_ts_ns: int


@dataclass(frozen=True, slots=True)
class LogStream:
    """A stream of :meth:`Host.select_logs`' answer: entries are ``(ts_ns, line)``."""

    labels: dict[str, str]
    entries: list[tuple[int, str]]


@dataclass(frozen=True, slots=True)
class IndexStats:
    """What the index and the ingesters know about a selector's data (no data read)."""

    streams: int
    chunks: int
    entries: int
    bytes: int


class Host(Protocol):
    """The narrow API over one tenant's data that ``handle`` gets. Calls run under the
    tenant's query limits and never see another tenant's data."""

    tenant: str

    async def select_logs(
        self,
        query: str,
        start_ns: int,
        end_ns: int,
        *,
        limit: int = 1000,
        direction: str = "backward",
    ) -> list[LogStream]:
        """The result of a LogQL log query over ``start_ns <= ts < end_ns``; raises
        :class:`CoprocessorError` ``invalid_request`` for a bad query or range."""
        ...

    async def index_stats(self, selector: str, start_ns: int, end_ns: int) -> IndexStats:
        """Streams, chunks, entries and bytes matching a stream selector."""
        ...


# --------------------------------------------------------------------------- config


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h|d|w|y)")
_DURATION_NS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
    "d": 86400 * 10**9,
    "w": 7 * 86400 * 10**9,
    "y": 365 * 86400 * 10**9,
}


def parse_duration(text: str | int | float) -> float:
    """``1h30m``, ``500ms``, ``7d``, or a number of seconds → seconds. ValueError if not."""
    if isinstance(text, bool):
        raise ValueError(f"not a duration: {text!r}")
    if isinstance(text, int | float):
        return float(text)
    s = text.strip()
    if not s or _DURATION_RE.sub("", s):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 5m, 1h30m)")
    return sum(float(n) * _DURATION_NS[u] for n, u in _DURATION_RE.findall(s)) / 1e9


_KINDS: dict[str, Callable[[Any], Any]] = {}


def _as_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise ValueError(f"expected a string, got {v!r}")


def _as_int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise ValueError(f"expected an integer, got {v!r}")


def _as_float(v: Any) -> float:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    raise ValueError(f"expected a number, got {v!r}")


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise ValueError(f"expected true or false, got {v!r}")


def _as_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return tuple(v)
    raise ValueError(f"expected a list of strings, got {v!r}")


_KINDS.update(
    str=_as_str,
    int=_as_int,
    float=_as_float,
    bool=_as_bool,
    duration=parse_duration,
    list=_as_list,
)


@dataclass(frozen=True, slots=True)
class Option:
    """One key of a plugin's config schema. ``kind``: ``str``, ``int``, ``float``,
    ``bool``, ``duration`` (given as ``5m``, read as seconds) or ``list`` (of strings).
    A ``required`` option without a value leaves the plugin disabled until configured."""

    kind: str
    default: Any = None
    help: str = ""
    required: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown option kind {self.kind!r}: use one of {sorted(_KINDS)}")


def validate_config(
    schema: Mapping[str, Option], given: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """``given`` checked against ``schema``: (values with defaults filled in, errors,
    names of required options that have no value)."""
    values: dict[str, Any] = {}
    errors = [
        f"unknown option {k!r} (valid: {', '.join(sorted(schema)) or 'none'})"
        for k in given
        if k not in schema
    ]
    missing = []
    for name, opt in schema.items():
        if name not in given or given[name] is None:
            if opt.required:
                missing.append(name)
            values[name] = _KINDS[opt.kind](opt.default) if opt.default is not None else None
            continue
        try:
            values[name] = _KINDS[opt.kind](given[name])
        except ValueError as e:
            errors.append(f"{name}: {e}")
    return values, errors, missing


# --------------------------------------------------------------------------- plugins


class Coprocessor:
    """Base class of plugins. Override the hooks you need; the host calls only those.
    ``self.config`` holds the validated options (defaults filled in)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)

    async def start(self) -> None:
        """Called once after construction, before any hook."""

    async def close(self) -> None:
        """Called once when the plugin is unloaded or replaced and no query uses it."""

    async def pre_query(self, split: SplitRequest) -> Decision:
        raise NotImplementedError

    async def pre_get_index(self, request: IndexRequest) -> Decision:
        raise NotImplementedError

    async def pre_get_chunk(self, ref: ChunkRef) -> bool:
        raise NotImplementedError

    async def pre_flush(self, chunk: FlushedChunk) -> None:
        raise NotImplementedError

    async def post_flush(self, chunk: FlushedChunk, key: str) -> None:
        raise NotImplementedError

    async def post_push(self, tenant: str, streams: Sequence[StreamSummary]) -> None:
        raise NotImplementedError

    async def handle(self, request: bytes, host: Host) -> bytes:
        raise NotImplementedError


HOOKS = (
    "pre_query",
    "pre_get_index",
    "pre_get_chunk",
    "pre_flush",
    "post_flush",
    "post_push",
    "handle",
)


def implemented_hooks(cls: type) -> frozenset[str]:
    """The hooks a plugin class overrides."""
    return frozenset(h for h in HOOKS if getattr(cls, h, None) is not getattr(Coprocessor, h))


_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@dataclass(frozen=True, slots=True)
class Declaration:
    """What a plugin file exports as ``PLUGIN``; made by :func:`declare`."""

    factory: type[Coprocessor]
    name: str
    version: str
    api: str
    config: Mapping[str, Option] = field(default_factory=dict)
    description: str = ""


def declare(
    factory: type[Coprocessor],
    *,
    name: str,
    version: str,
    api: str,
    config: Mapping[str, Option] | None = None,
    description: str = "",
) -> Declaration:
    """Declare a plugin: its class, ``name`` (lowercase, ``[a-z][a-z0-9_-]*``), its own
    ``version`` (SemVer), the coprocessor ``api`` version it was written for, and its
    config schema. Raises ValueError for a malformed declaration."""
    if not _NAME_RE.match(name):
        raise ValueError(f"plugin name {name!r} must match [a-z][a-z0-9_-]* (at most 63)")
    parse_version(version)
    parse_version(api)
    if not (isinstance(factory, type) and issubclass(factory, Coprocessor)):
        raise ValueError("the plugin factory must be a subclass of Coprocessor")
    return Declaration(factory, name, version, api, dict(config or {}), description)
