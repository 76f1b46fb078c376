"""The host side of coprocessors: the registry that loads plugins, and the calls to them.

:class:`Registry` loads every ``*.py`` file of the plugin directory. For each it reads
the ``PLUGIN`` declaration, checks the API version before constructing anything,
validates the plugin's config, constructs and starts it. A file that fails to import,
declares a mismatched API or bad config is reported (log and ``GET
/coprocessor/v1/plugins``) and skipped; the server starts regardless.

Hot reload polls the directory every ``reload_interval``: a new file is loaded, a
changed one is loaded beside the running version and swapped in atomically, a removed
one is unloaded. A broken new version leaves the old one running with the error
reported. Queries hold a :class:`Session` - the set of plugin instances current when
they started - for their whole run; a replaced instance is closed when the last
session using it ends.

Every hook call runs under a timeout. An exception, a timeout or an answer of the
wrong type counts as an error in ``loki_coprocessor_calls_total`` and means *keep*:
a plugin can make a query cheaper, never wrong or failed (unless it claims wrongly
that a split holds nothing - see the SDK).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import importlib.util
import itertools
import logging
import re
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import metrics
from .config import CoprocessorsConfig
from .coprocessor import (
    ERROR_KINDS,
    ChunkRef,
    CoprocessorError,
    Declaration,
    FlushedChunk,
    Host,
    IndexRequest,
    Keep,
    LabelMatcher,
    Narrow,
    Selector,
    Skip,
    SplitRequest,
    StreamSummary,
    api_mismatch,
    implemented_hooks,
    satisfies,
    validate_config,
)
from .errors import BadRequest, LokiError, NotFound
from .logql.ast import (
    BinaryLabelFilter,
    Expr,
    LabelFilterExpr,
    LineFilterExpr,
    LogRange,
    LogSelectorExpr,
    RangeAggregationExpr,
    StringLabelFilter,
    VectorExpr,
    walk,
)

log = logging.getLogger(__name__)

REPO_PLUGINS = Path(__file__).resolve().parents[1] / "coprocessors"
HEADER_VERSION = "X-Coprocessor-Version"
MAX_BACKGROUND = 256  # observe-only calls in flight; beyond, calls are dropped (counted)

ACTIVE, FAILED, REJECTED, DISABLED = "active", "failed", "rejected", "disabled"

_current: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "coprocessor_session", default=None
)


def current() -> Session | None:
    """The session of the query running in this task (None outside queries)."""
    return _current.get()


# --------------------------------------------------------------------------- records


@dataclass(eq=False)
class Plugin:
    """One constructed plugin instance."""

    name: str
    version: str
    api: str
    path: Path
    instance: Any
    hooks: frozenset[str]
    loaded_ns: int
    refs: int = 0
    retired: bool = False


@dataclass
class PluginFile:
    """What the registry knows of one file in the directory."""

    path: Path
    stamp: tuple[int, int] = (0, 0)  # (mtime_ns, size) at the last look
    digest: str = ""  # of the content last loaded (or tried)
    name: str = ""
    version: str = ""
    api: str = ""
    state: str = FAILED
    error: str = ""  # why it is not active, or why its newest version did not load
    plugin: Plugin | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The combined decision of a session's plugins for one split: ``split`` is the
    range to run (None: skipped); ``by`` names the plugins that skipped or narrowed it."""

    start: int
    end: int
    skipped: bool
    narrowed: bool
    by: tuple[str, ...] = ()


# --------------------------------------------------------------------------- calls


async def _bounded(coro: Awaitable[Any], timeout_s: float) -> Any:
    """Await ``coro`` for at most ``timeout_s``; TimeoutError after. A plugin that
    ignores cancellation is left behind instead of blocking the caller."""
    task = asyncio.ensure_future(coro)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        task.add_done_callback(_discard_result)
        raise TimeoutError
    return task.result()


def _discard_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def call_hook(plugin: Plugin, hook: str, timeout_s: float, *args: Any) -> tuple[str, Any]:
    """Call one hook: ``("ok", value)``, ``("error", exc)`` or ``("timeout", None)``.
    Latency and errors are recorded; nothing is raised."""
    t0 = time.perf_counter()
    try:
        value = await _bounded(getattr(plugin.instance, hook)(*args), timeout_s)
        return "ok", value
    except TimeoutError:
        metrics.COPROCESSOR_CALLS.labels(plugin.name, hook, "timeout").inc()
        log.warning(
            "coprocessor timed out plugin=%s hook=%s after=%.3fs", plugin.name, hook, timeout_s
        )
        return "timeout", None
    except Exception as e:
        metrics.COPROCESSOR_CALLS.labels(plugin.name, hook, "error").inc()
        log.warning("coprocessor failed plugin=%s hook=%s err=%r", plugin.name, hook, e)
        return "error", e
    finally:
        metrics.COPROCESSOR_LATENCY.labels(plugin.name, hook).observe(time.perf_counter() - t0)


def normalize(decision: Any, start: int, end: int) -> tuple[str, int, int]:
    """A plugin's answer for ``[start, end)`` as ``(outcome, start, end)``: ``keep``,
    ``skip``, ``narrow`` (to a strictly smaller range) or ``invalid`` (kept)."""
    if isinstance(decision, Keep):
        return "keep", start, end
    if isinstance(decision, Skip):
        return "skip", start, end
    if (
        isinstance(decision, Narrow)
        and type(decision.start_ns) is int
        and type(decision.end_ns) is int
        and decision.start_ns < decision.end_ns
    ):
        lo, hi = max(start, decision.start_ns), min(end, decision.end_ns)
        if lo >= hi:
            return "skip", start, end
        if (lo, hi) == (start, end):
            return "keep", start, end
        return "narrow", lo, hi
    return "invalid", start, end


# --------------------------------------------------------------------------- sessions


class Session:
    """The plugin instances one query uses, from start to end, and what they decided.

    ``counts[name]`` holds ``skipped`` and ``narrowed`` (splits), ``errors``,
    ``timeouts``, and where the index and chunk hooks acted ``index_skipped``,
    ``index_narrowed``, ``chunks_skipped``."""

    def __init__(self, registry: Registry, plugins: Sequence[Plugin]) -> None:
        self.registry = registry
        self.plugins = tuple(plugins)
        self.counts: dict[str, dict[str, int]] = {}
        self._token: contextvars.Token[Session | None] | None = None
        self._entered = False

    def __enter__(self) -> Session:
        assert not self._entered, "BUG: a coprocessor session entered twice"
        self._entered = True
        for p in self.plugins:
            p.refs += 1
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            with contextlib.suppress(ValueError):  # exited in another context
                _current.reset(self._token)
        for p in self.plugins:
            p.refs -= 1
            if p.retired and p.refs == 0:
                self.registry._close_later(p)

    def with_hook(self, hook: str) -> list[Plugin]:
        return [p for p in self.plugins if hook in p.hooks]

    def _count(self, name: str, what: str, n: int = 1) -> None:
        c = self.counts.setdefault(name, {"skipped": 0, "narrowed": 0, "errors": 0, "timeouts": 0})
        c[what] = c.get(what, 0) + n

    async def _decide(
        self, hook: str, timeout_s: float, plugins: list[Plugin], arg: Any, start: int, end: int
    ) -> Verdict:
        results = await asyncio.gather(*(call_hook(p, hook, timeout_s, arg) for p in plugins))
        lo, hi = start, end
        skipped_by: list[str] = []
        narrowed_by: list[str] = []
        for p, (status, value) in zip(plugins, results, strict=True):
            self._count(p.name, "skipped", 0)
            if status != "ok":
                self._count(p.name, "errors" if status == "error" else "timeouts")
                continue
            outcome, a, b = normalize(value, start, end)
            metrics.COPROCESSOR_CALLS.labels(p.name, hook, outcome).inc()
            if outcome == "invalid":
                self._count(p.name, "errors")
                log.warning("coprocessor answered %r to %s plugin=%s: kept", value, hook, p.name)
            elif outcome == "skip":
                skipped_by.append(p.name)
            elif outcome == "narrow":
                narrowed_by.append(p.name)
                lo, hi = max(lo, a), min(hi, b)
        if not skipped_by and lo >= hi:
            skipped_by = narrowed_by  # the narrowings exclude each other
        prefix = "" if hook == "pre_query" else "index_"
        if skipped_by:
            for name in skipped_by:
                self._count(name, prefix + "skipped")
            return Verdict(start, end, True, False, tuple(skipped_by))
        for name in narrowed_by:
            self._count(name, prefix + "narrowed")
        return Verdict(lo, hi, False, bool(narrowed_by), tuple(narrowed_by))

    async def pre_query(self, splits: Sequence[SplitRequest]) -> list[Verdict]:
        """The verdict for every split (all plugins asked concurrently, all splits too)."""
        plugins = self.with_hook("pre_query")
        if not plugins:
            return [Verdict(s.start_ns, s.end_ns, False, False) for s in splits]
        timeout = self.registry.cfg.pre_query_timeout_s
        return list(
            await asyncio.gather(
                *(
                    self._decide("pre_query", timeout, plugins, s, s.start_ns, s.end_ns)
                    for s in splits
                )
            )
        )

    async def pre_get_index(self, request: IndexRequest) -> Verdict:
        plugins = self.with_hook("pre_get_index")
        if not plugins:
            return Verdict(request.start_ns, request.end_ns, False, False)
        return await self._decide(
            "pre_get_index",
            self.registry.cfg.hook_timeout_s,
            plugins,
            request,
            request.start_ns,
            request.end_ns,
        )

    async def pre_get_chunk(self, refs: Sequence[ChunkRef]) -> list[bool]:
        """For each chunk whether to fetch it: False only if a plugin said so in time."""
        plugins = self.with_hook("pre_get_chunk")
        if not plugins or not refs:
            return [True] * len(refs)
        timeout = self.registry.cfg.hook_timeout_s

        async def one(ref: ChunkRef) -> bool:
            for p in plugins:
                status, value = await call_hook(p, "pre_get_chunk", timeout, ref)
                if status != "ok":
                    self._count(p.name, "errors" if status == "error" else "timeouts")
                elif value is False:
                    metrics.COPROCESSOR_CALLS.labels(p.name, "pre_get_chunk", "skip").inc()
                    self._count(p.name, "chunks_skipped")
                    return False
                elif value is True:
                    metrics.COPROCESSOR_CALLS.labels(p.name, "pre_get_chunk", "keep").inc()
                else:
                    metrics.COPROCESSOR_CALLS.labels(p.name, "pre_get_chunk", "invalid").inc()
                    self._count(p.name, "errors")
            return True

        return list(await asyncio.gather(*(one(r) for r in refs)))

    def report(self) -> dict[str, dict[str, int]]:
        """What each plugin of the session did (for the response's stats)."""
        return {name: dict(c) for name, c in sorted(self.counts.items())}


def merge_counts(
    into: dict[str, dict[str, int]], other: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    for name, c in other.items():
        mine = into.setdefault(name, {})
        for k, v in c.items():
            mine[k] = mine.get(k, 0) + v
    return into


# --------------------------------------------------------------------------- registry


class Registry:
    """Loads, reloads and calls the plugins of one directory."""

    def __init__(self, cfg: CoprocessorsConfig) -> None:
        self.cfg = cfg
        self.directory = Path(cfg.directory) if cfg.directory else REPO_PLUGINS
        names = [n.strip() for n in cfg.enabled.split(",") if n.strip()]
        self._all_enabled = "*" in names
        self._enabled = set(names) - {"*"}
        self._files: dict[Path, PluginFile] = {}
        self._active: dict[str, Plugin] = {}  # replaced, never mutated: sessions copy it
        self._background: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[Any] | None = None
        self._lock = asyncio.Lock()
        self._seq = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Load every plugin now; then keep watching the directory."""
        if not self.directory.is_dir():
            log.warning(
                "coprocessor directory %s does not exist: no plugins until it does "
                "(coprocessors.directory)",
                self.directory,
            )
        await self.reload()
        if self.cfg.reload_interval_s > 0:
            self._watcher = asyncio.create_task(self._watch(), name="coprocessor-watch")

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher
            self._watcher = None
        for t in list(self._background):
            t.cancel()
        active, self._active = self._active, {}
        for p in active.values():
            p.retired = True
            if p.refs == 0:
                await self._close(p)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reload_interval_s)
            try:
                await self.reload()
            except Exception:  # a bug here must not stop watching
                log.exception("coprocessor directory scan failed")

    # ------------------------------------------------------------------ loading

    async def reload(self) -> None:
        """Look at the directory once: load new files, swap changed ones, unload removed."""
        async with self._lock:
            try:
                paths = sorted(
                    p
                    for p in self.directory.glob("*.py")
                    if not p.name.startswith(("_", ".")) and p.is_file()
                )
            except OSError as e:
                log.error("coprocessor directory %s unreadable: %s", self.directory, e)
                return
            for gone in set(self._files) - set(paths):
                self._unload(self._files.pop(gone))
            for path in paths:
                f = self._files.setdefault(path, PluginFile(path))
                try:
                    st = path.stat()
                    stamp = (st.st_mtime_ns, st.st_size)
                    if stamp == f.stamp:
                        continue
                    data = path.read_bytes()
                except OSError as e:  # removed between the listing and now
                    log.debug("coprocessor file vanished %s: %s", path, e)
                    continue
                f.stamp = stamp
                digest = hashlib.sha256(data).hexdigest()
                if digest == f.digest:
                    continue
                f.digest = digest
                await self._load(f, data)

    def _unload(self, f: PluginFile) -> None:
        if f.plugin is not None:
            self._retire(f.plugin)
            log.info("coprocessor unloaded plugin=%s version=%s", f.name, f.version)
            metrics.COPROCESSOR_LOADS.labels(f.name, "unloaded").inc()

    def _retire(self, p: Plugin) -> None:
        if self._active.get(p.name) is p:
            active = dict(self._active)
            del active[p.name]
            self._active = active
        p.retired = True
        if p.refs == 0:
            self._close_later(p)

    def _failed(self, f: PluginFile, state: str, message: str) -> None:
        """A version of ``f`` did not load; a running older version stays."""
        f.error = message
        if f.plugin is None:
            f.state = state
        metrics.COPROCESSOR_LOADS.labels(f.name or f.path.stem, state).inc()
        kept = f" (version {f.plugin.version} keeps running)" if f.plugin else ""
        log.error("coprocessor %s not loaded%s: %s", f.path.name, kept, message)

    async def _load(self, f: PluginFile, source: bytes) -> None:
        stem = re.sub(r"\W", "_", f.path.stem)
        modname = f"loki_async_coprocessor_{stem}_{next(self._seq)}"
        try:
            spec = importlib.util.spec_from_file_location(modname, f.path)
            assert spec is not None and spec.loader is not None, "BUG: no loader for a .py"
            module = importlib.util.module_from_spec(spec)
            sys.modules[modname] = module  # dataclasses and typing look modules up here
            try:
                exec(compile(source, str(f.path), "exec"), module.__dict__)
            finally:
                sys.modules.pop(modname, None)
        except (Exception, SystemExit):  # a plugin's sys.exit() must not end the server
            self._failed(f, FAILED, "import failed:\n" + traceback.format_exc(limit=-8))
            return
        decl = getattr(module, "PLUGIN", None)
        if not isinstance(decl, Declaration):
            self._failed(
                f, FAILED, "no PLUGIN = declare(...) in the file (see docs/coprocessors.md)"
            )
            return
        f.name = f.name if f.plugin is not None else decl.name
        # The API version is checked before anything of the plugin runs.
        why = api_mismatch(decl.api)
        if why is not None:
            self._failed(f, REJECTED, f"plugin {decl.name} {decl.version}: {why}")
            return
        if f.plugin is not None and decl.name != f.plugin.name:
            self._failed(
                f,
                FAILED,
                f"the file now declares {decl.name!r}, it was {f.plugin.name!r}: "
                "a renamed plugin needs a new file",
            )
            return
        other = next(
            (o for o in self._files.values() if o is not f and o.name == decl.name and o.plugin),
            None,
        )
        if other is not None:
            self._failed(f, FAILED, f"plugin {decl.name!r} is already loaded from {other.path}")
            return
        f.name, f.version, f.api = decl.name, decl.version, decl.api
        if not (self._all_enabled or decl.name in self._enabled):
            f.state, f.error = DISABLED, "not listed in coprocessors.enabled"
            return
        given = self.cfg.plugins.get(decl.name, {})
        values, errors, missing = validate_config(decl.config, given)
        if errors:
            where = f"coprocessors.plugins.{decl.name}"
            self._failed(f, FAILED, "; ".join(f"{where}.{e}" for e in errors))
            return
        if missing:
            if f.plugin is None:
                f.state = DISABLED
            f.error = "needs config: " + ", ".join(
                f"coprocessors.plugins.{decl.name}.{m}" for m in missing
            )
            return
        try:
            instance = decl.factory(values)
            await _bounded(instance.start(), self.cfg.hook_timeout_s)
        except Exception:
            self._failed(
                f,
                FAILED,
                f"plugin {decl.name} {decl.version} failed to start:\n"
                + traceback.format_exc(limit=-8),
            )
            return
        plugin = Plugin(
            decl.name,
            decl.version,
            decl.api,
            f.path,
            instance,
            implemented_hooks(decl.factory),
            time.time_ns(),
        )
        old, f.plugin = f.plugin, plugin
        active = dict(self._active)
        active[decl.name] = plugin
        self._active = active  # the swap: new sessions see the new version from here on
        f.state, f.error = ACTIVE, ""
        if old is not None:
            self._retire(old)
            metrics.COPROCESSOR_LOADS.labels(decl.name, "reloaded").inc()
            log.info(
                "coprocessor reloaded plugin=%s version=%s (was %s)",
                decl.name,
                decl.version,
                old.version,
            )
        else:
            metrics.COPROCESSOR_LOADS.labels(decl.name, "loaded").inc()
            log.info(
                "coprocessor loaded plugin=%s version=%s hooks=%s",
                decl.name,
                decl.version,
                ",".join(sorted(plugin.hooks)),
            )

    def _close_later(self, p: Plugin) -> None:
        self._spawn(self._close(p), bounded=False)  # a close is never dropped

    async def _close(self, p: Plugin) -> None:
        status, err = await call_hook(p, "close", self.cfg.hook_timeout_s)
        if status != "ok":
            log.warning("coprocessor close failed plugin=%s: %r", p.name, err)

    def _spawn(self, coro: Coroutine[Any, Any, Any], *, bounded: bool = True) -> bool:
        if bounded and len(self._background) >= MAX_BACKGROUND:
            coro.close()  # never started: no "never awaited" warning
            return False
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    # ------------------------------------------------------------------ queries

    def active(self) -> dict[str, Plugin]:
        return self._active

    def session(self, spec: str = "", constraints: str = "", *, strict: bool = True) -> Session:
        """The plugins a query uses: ``spec`` is ``""`` (all), ``none``, ``a,b`` (only
        those) or ``-a,-b`` (all but those); ``constraints`` is ``name<versions>[; ...]``
        as in ``X-Coprocessor-Version``. BadRequest names what is wrong; with
        ``strict=False`` names of plugins that are not loaded are ignored in ``spec``."""
        active = self._active
        chosen = select(active, spec, strict=strict)
        check_constraints(active, constraints)
        return Session(self, [active[n] for n in sorted(chosen)])

    def listing(self) -> list[dict[str, Any]]:
        """``GET /coprocessor/v1/plugins``: every file with its plugin and state."""
        out = []
        for f in sorted(self._files.values(), key=lambda f: f.path.name):
            p = f.plugin
            out.append(
                {
                    "name": f.name or f.path.stem,
                    "file": f.path.name,
                    "state": f.state,
                    "version": p.version if p else f.version,
                    "api": p.api if p else f.api,
                    "hooks": sorted(p.hooks) if p else [],
                    "loaded": _iso(p.loaded_ns) if p else None,
                    "error": f.error or None,
                }
            )
        return out

    # ------------------------------------------------------------------ observers

    async def pre_flush(self, chunk: FlushedChunk) -> None:
        await self._observe("pre_flush", chunk)

    async def post_flush(self, chunk: FlushedChunk, key: str) -> None:
        await self._observe("post_flush", chunk, key)

    def wants(self, hook: str) -> bool:
        """Whether any active plugin implements ``hook``."""
        return any(hook in p.hooks for p in self._active.values())

    def post_push(self, tenant: str, streams: Sequence[StreamSummary]) -> None:
        """Tell plugins about an acknowledged push, in the background (never slows it)."""
        if self.wants("post_push") and not self._spawn(
            self._observe("post_push", tenant, tuple(streams))
        ):
            for p in self._active.values():
                if "post_push" in p.hooks:
                    metrics.COPROCESSOR_CALLS.labels(p.name, "post_push", "dropped").inc()

    async def _observe(self, hook: str, *args: Any) -> None:
        plugins = [p for p in self._active.values() if hook in p.hooks]
        if not plugins:
            return
        with Session(self, plugins):
            results = await asyncio.gather(
                *(call_hook(p, hook, self.cfg.hook_timeout_s, *args) for p in plugins)
            )
        for p, (status, _) in zip(plugins, results, strict=True):
            if status == "ok":
                metrics.COPROCESSOR_CALLS.labels(p.name, hook, "ok").inc()

    # ------------------------------------------------------------------ handle

    async def handle(self, name: str, request: bytes, host: Host) -> bytes:
        """``POST /coprocessor/v1/<name>``: the plugin's answer, or a LokiError whose
        status comes from the plugin's error kind."""
        p = self._active.get(name)
        if p is None:
            raise NotFound(f"coprocessor {name!r} is not loaded (GET /coprocessor/v1/plugins)")
        if "handle" not in p.hooks:
            raise NotFound(f"coprocessor {name!r} has no handle endpoint")
        with Session(self, [p]):
            t0 = time.perf_counter()
            try:
                value = await _bounded(p.instance.handle(request, host), self.cfg.handle_timeout_s)
            except TimeoutError:
                metrics.COPROCESSOR_CALLS.labels(name, "handle", "timeout").inc()
                raise LokiError(
                    f"coprocessor {name} did not answer within "
                    f"{self.cfg.handle_timeout_s:g}s (coprocessors.handle_timeout)",
                    504,
                ) from None
            except CoprocessorError as e:
                metrics.COPROCESSOR_CALLS.labels(name, "handle", "error").inc()
                raise LokiError(f"coprocessor {name}: {e.message}", ERROR_KINDS[e.kind]) from None
            except LokiError:
                metrics.COPROCESSOR_CALLS.labels(name, "handle", "error").inc()
                raise
            except Exception as e:
                metrics.COPROCESSOR_CALLS.labels(name, "handle", "error").inc()
                log.exception("coprocessor handle failed plugin=%s", name)
                raise LokiError(
                    f"coprocessor {name} failed: internal error {type(e).__name__}", 500
                ) from None
            finally:
                metrics.COPROCESSOR_LATENCY.labels(name, "handle").observe(time.perf_counter() - t0)
        if not isinstance(value, bytes | bytearray):
            metrics.COPROCESSOR_CALLS.labels(name, "handle", "invalid").inc()
            raise LokiError(f"coprocessor {name} returned {type(value).__name__}, not bytes", 500)
        metrics.COPROCESSOR_CALLS.labels(name, "handle", "ok").inc()
        return bytes(value)


def _iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 10**9))


def select(active: dict[str, Plugin], spec: str, *, strict: bool = True) -> set[str]:
    """The names ``spec`` picks out of ``active`` (see :meth:`Registry.session`)."""
    spec = spec.strip()
    if spec in ("", "all", "*"):
        return set(active)
    if spec == "none":
        return set()
    items = [s.strip() for s in spec.split(",") if s.strip()]
    negative = [s[1:] for s in items if s.startswith("-")]
    positive = [s for s in items if not s.startswith("-")]
    if negative and positive:
        raise BadRequest(
            f"invalid coprocessors parameter {spec!r}: list plugins to use (a,b) or to leave "
            "out (-a,-b), not both; 'none' turns all off"
        )
    unknown = sorted(set(negative or positive) - set(active))
    if unknown and strict:
        raise BadRequest(
            f"invalid coprocessors parameter: no coprocessor named {', '.join(unknown)} is "
            f"loaded (loaded: {', '.join(sorted(active)) or 'none'})"
        )
    if negative:
        return set(active) - set(negative)
    return set(positive) & set(active)


_CONSTRAINT_NAME = re.compile(r"^\s*([a-z][a-z0-9_-]*)\s*(.*?)\s*$")


def check_constraints(active: dict[str, Plugin], constraints: str) -> None:
    """BadRequest unless every ``name<versions>`` clause is met by a loaded plugin."""
    for part in constraints.split(";"):
        if not part.strip():
            continue
        m = _CONSTRAINT_NAME.match(part)
        if not m or not m.group(2):
            raise BadRequest(
                f"invalid {HEADER_VERSION} {part.strip()!r}: expected a plugin name and "
                "versions, e.g. traceid>=1.2,<2"
            )
        name, want = m.groups()
        p = active.get(name)
        if p is None:
            raise BadRequest(
                f"coprocessor {name} is not loaded, but the request requires {name}{want}"
            )
        try:
            ok = satisfies(p.version, want)
        except ValueError as e:
            raise BadRequest(f"invalid {HEADER_VERSION} {part.strip()!r}: {e}") from None
        if not ok:
            raise BadRequest(
                f"coprocessor {name} is version {p.version}, but the request requires {name}{want}"
            )


# --------------------------------------------------------------------------- requests


def selector_of(sel: LogSelectorExpr) -> Selector:
    """What every line of ``sel`` must satisfy, for plugins."""
    contains: list[str] = []
    equals: list[tuple[str, str]] = []
    for stage in sel.stages:
        if isinstance(stage, LineFilterExpr):
            if stage.op == "|=" and len(stage.values) == 1 and not stage.values[0].ip:
                contains.append(stage.values[0].value)
        elif isinstance(stage, LabelFilterExpr):
            equals.extend(_label_equalities(stage.filter))
    return Selector(
        tuple(LabelMatcher(m.name, m.op, m.value) for m in sel.matchers),
        tuple(contains),
        tuple(equals),
    )


def _label_equalities(f: Any) -> Iterable[tuple[str, str]]:
    if isinstance(f, StringLabelFilter) and f.matcher.op == "=":
        yield f.matcher.name, f.matcher.value
    elif isinstance(f, BinaryLabelFilter) and f.is_and:
        yield from _label_equalities(f.left)
        yield from _label_equalities(f.right)


def selectors_of(expr: Expr) -> tuple[Selector, ...]:
    """One entry per log selector in the query (the range's selector for metrics)."""
    out = []
    for e in walk(expr):
        if isinstance(e, LogRange):
            out.append(selector_of(e.left))
    if isinstance(expr, LogSelectorExpr):
        out.append(selector_of(expr))
    return tuple(out)


def empty_safe(expr: Expr) -> bool:
    """Whether the query's result over no data is empty: only then may splits be skipped
    (``absent_over_time`` and ``vector()`` make something of nothing)."""
    for e in walk(expr):
        if isinstance(e, VectorExpr):
            return False
        if isinstance(e, RangeAggregationExpr) and e.operation == "absent_over_time":
            return False
    return bool(selectors_of(expr))


def _ranges(expr: Expr) -> list[tuple[int, int]]:
    """(range, offset) of every range aggregation, in ns."""
    return [(e.interval_ns, e.offset_ns) for e in walk(expr) if isinstance(e, LogRange)]


def data_range(expr: Expr, start: int, end: int, *, log_query: bool) -> tuple[int, int]:
    """The log timestamps ``[lo, hi)`` a split reads: a log split ``[start, end)``
    reads itself; a metric split with step times ``start..end`` reads, for each range
    aggregation ``[r] offset o``, ``(t - r - o, t - o]`` around each step time t."""
    if log_query:
        return start, end
    ranges = _ranges(expr) or [(0, 0)]
    return (
        start - max(r + o for r, o in ranges) + 1,
        end - min(o for _, o in ranges) + 1,
    )


def step_times_reading(
    expr: Expr, start: int, end: int, step: int, lo: int, hi: int
) -> tuple[int, int] | None:
    """Of the step times ``start, start+step, ..end``, the first and last whose windows
    read any log timestamp in ``[lo, hi)``; None if none does."""
    ranges = _ranges(expr) or [(0, 0)]
    # (t - r - o, t - o] meets [lo, hi - 1]  <=>  lo + o <= t < hi - 1 + r + o
    t_lo = lo + min(o for _, o in ranges)
    t_hi = hi - 2 + max(r + o for r, o in ranges)  # inclusive
    first = max(start, t_lo)
    if step > 0:
        first = start + -(-(first - start) // step) * step
    last = min(end, t_hi)
    if step > 0:
        last = start + (last - start) // step * step
    if first > last:
        return None
    return first, last


def new_query_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Planned:
    """The plan after coprocessors: per split its range (None: skipped), and counts."""

    ranges: list[tuple[int, int] | None]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.ranges if r is None)


async def plan_splits(
    session: Session | None,
    *,
    tenant: str,
    query: str,
    expr: Expr,
    kind: str,
    query_start: int,
    query_end: int,
    step: int,
    query_id: str,
    splits: Sequence[tuple[int, int]],
) -> Planned:
    """Ask the session's ``pre_query`` hooks about every split; narrowed metric splits
    keep the step times whose windows read the narrowed range."""
    ranges: list[tuple[int, int] | None] = list(splits)
    if session is None or not session.with_hook("pre_query") or not empty_safe(expr):
        return Planned(ranges)
    log_query = kind == "log"
    selectors = selectors_of(expr)
    requests = []
    for s, e in splits:
        lo, hi = data_range(expr, s, e, log_query=log_query)
        requests.append(
            SplitRequest(
                tenant=tenant,
                query=query,
                kind=kind,
                start_ns=lo,
                end_ns=hi,
                query_start_ns=query_start,
                query_end_ns=query_end,
                step_ns=step,
                query_id=query_id,
                selectors=selectors,
            )
        )
    verdicts = await session.pre_query(requests)
    for i, v in enumerate(verdicts):
        if v.skipped:
            ranges[i] = None
        elif v.narrowed:
            if log_query:
                ranges[i] = (v.start, v.end)
            else:
                s, e = splits[i]
                ranges[i] = step_times_reading(expr, s, e, step, v.start, v.end)
    return Planned(ranges, session.report())


# --------------------------------------------------------------------------- testing


async def try_pre_query(
    plugin: Declaration | str | Path,
    query: str,
    start_ns: int,
    end_ns: int,
    *,
    split_interval_s: float = 3600,
    step_s: float = 0,
    config: dict[str, Any] | None = None,
    tenant: str = "fake",
) -> list[tuple[tuple[int, int], tuple[int, int] | None]]:
    """Run a plugin's ``pre_query`` over the splits the server would plan for ``query``,
    without a server: ``[(split range, range to run or None if skipped), ...]`` in plan
    order. ``plugin`` is a declaration or the path of a plugin file; ``config`` its
    options. Raises ValueError if the plugin does not load."""
    from .frontend import Planner, QueryRequest
    from .logql import parse_expr

    registry = Registry(CoprocessorsConfig(reload_interval_s=0, plugins={}))
    decl = plugin if isinstance(plugin, Declaration) else _declaration_from_file(Path(plugin))
    why = api_mismatch(decl.api)
    if why:
        raise ValueError(why)
    values, errors, missing = validate_config(decl.config, config or {})
    if errors or missing:
        raise ValueError("; ".join(errors + [f"{m}: required" for m in missing]))
    instance = decl.factory(values)
    await instance.start()
    p = Plugin(
        decl.name,
        decl.version,
        decl.api,
        Path(),
        instance,
        implemented_hooks(decl.factory),
        time.time_ns(),
    )
    expr = parse_expr(query)
    req = QueryRequest(tenant, query, expr, start_ns, end_ns, step=int(step_s * 1e9))
    splits = [(s.start, s.end) for s in Planner(None, int(split_interval_s * 1e9), 0).plan(req)]
    try:
        with Session(registry, [p]) as session:
            planned = await plan_splits(
                session,
                tenant=tenant,
                query=query,
                expr=expr,
                kind="log" if req.is_log else "metric",
                query_start=start_ns,
                query_end=end_ns,
                step=req.step,
                query_id=new_query_id(),
                splits=splits,
            )
    finally:
        await instance.close()
    return list(zip(splits, planned.ranges, strict=True))


def _declaration_from_file(path: Path) -> Declaration:
    spec = importlib.util.spec_from_file_location(f"loki_async_coprocessor_test_{path.stem}", path)
    assert spec is not None and spec.loader is not None, "BUG: no loader for a .py"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    decl = getattr(module, "PLUGIN", None)
    if not isinstance(decl, Declaration):
        raise ValueError(f"{path}: no PLUGIN = declare(...)")
    return decl
