"""HTTP API: Loki's push and read endpoints, readiness and metrics, on aiohttp.

Response bodies follow Loki byte for byte where clients depend on them
(``{"status":"success","data":{"resultType":"streams",...}}``); errors are plain text
with the status from :func:`loki_async.errors.http_status`, as Loki answers them.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__, metrics
from .chunk import decode_metadata
from .config import Config, format_duration, parse_duration
from .distributor import Distributor
from .errors import BadRequest, LokiError, Unauthorized, Unavailable, http_status
from .logproto import decode_push
from .logql import ParseError, parse_labels
from .querier import BACKWARD, FORWARD, Querier, QueryStats

log = logging.getLogger(__name__)

HEADER_TENANT = "X-Scope-OrgID"
DEFAULT_TENANT = "fake"
DEFAULT_LIMIT = 100
DEFAULT_SINCE_S = 3600.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- parameters


def parse_time(value: str | None, default: int) -> int:
    """Loki's timestamp forms: ns integer, seconds (<= 10 digits), float seconds, RFC3339."""
    if value is None or value == "":
        return default
    if "." in value:
        try:
            f = float(value)
        except ValueError:
            pass
        else:
            if math.isfinite(f):
                s, frac = divmod(f, 1)
                return int(s) * 10**9 + round(frac * 1000) * 10**6
    if re.fullmatch(r"-?\d+", value):
        n = int(value)
        return n * 10**9 if len(value.lstrip("-")) <= 10 else n
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            raise ValueError
    except ValueError:
        raise BadRequest(f'cannot parse "{value}" to a valid timestamp') from None
    return int(dt.timestamp()) * 10**9 + dt.microsecond * 1000 + _nanos_suffix(value)


def _nanos_suffix(value: str) -> int:
    # fromisoformat keeps microseconds; RFC3339Nano may carry nanoseconds.
    m = re.search(r"\.\d{6}(\d{1,3})", value)
    return int(m.group(1).ljust(3, "0")) if m else 0


def _bounds(params: Any, cfg: Config) -> tuple[int, int]:
    now = time.time_ns()
    end = parse_time(params.get("end"), now)
    since = params.get("since")
    try:
        since_ns = int(parse_duration(since) * 1e9) if since else int(DEFAULT_SINCE_S * 1e9)
    except ValueError:
        raise BadRequest(f'cannot parse "{since}" to a valid duration') from None
    start = parse_time(params.get("start"), end - since_ns)
    if end < start:
        raise BadRequest("end timestamp must not be before or equal to start time")
    return start, end


def _int_param(params: Any, name: str, default: int) -> int:
    v = params.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise BadRequest(f'invalid {name}: cannot parse "{v}" as an integer') from None


# --------------------------------------------------------------------------- app


class API:
    """The HTTP surface. Routes exist for the target's modules only (others answer 404);
    until a module has started, its routes answer 503."""

    def __init__(self, cfg: Config, *, push: bool, read: bool, ready: Callable[[], bool]) -> None:
        self.cfg = cfg
        self.push = push
        self.read = read
        self.distributor: Distributor | None = None
        self.querier: Querier | None = None
        self.ready = ready

    def tenant(self, request: web.Request) -> str:
        if self.read and self.querier is None and request.path != "/loki/api/v1/push":
            raise Unavailable("querier is starting")
        if not self.cfg.auth_enabled:
            return DEFAULT_TENANT
        org = request.headers.get(HEADER_TENANT, "").strip()
        if not org:
            raise Unauthorized("no org id")
        if "|" in org or "/" in org or org in (".", ".."):
            raise BadRequest(f"tenant ID '{org}' contains unsupported character")
        return org

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.cfg.server.http_server_max_body_bytes, middlewares=[self._errors]
        )
        r = app.router
        r.add_get("/ready", self.handle_ready)
        r.add_get("/metrics", self.handle_metrics)
        r.add_get("/loki/api/v1/status/buildinfo", self.handle_buildinfo)
        if self.push:
            r.add_post("/loki/api/v1/push", self.handle_push)
        if self.read:
            for path, handler in (
                ("/loki/api/v1/query_range", self.handle_query_range),
                ("/loki/api/v1/labels", self.handle_labels),
                ("/loki/api/v1/label", self.handle_labels),
                ("/loki/api/v1/label/{name}/values", self.handle_label_values),
                ("/loki/api/v1/series", self.handle_series),
            ):
                r.add_get(path, handler)
                r.add_post(path, handler)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            if e.status == 413:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=self.cfg.server.http_server_max_body_bytes,
                    actual_size=request.content_length or 0,
                    text=f"request body too large: limit "
                    f"{self.cfg.server.http_server_max_body_bytes} bytes",
                ) from None
            raise
        except LokiError as e:
            status, message = http_status(e)
            if status >= 500:
                log.warning(
                    "request failed path=%s status=%d err=%r", request.path, status, message
                )
            return web.Response(status=status, text=message + "\n")
        except Exception:
            log.exception("unhandled error path=%s", request.path)
            return web.Response(status=500, text="internal server error\n")
        finally:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "other"
            metrics.REQUEST_DURATION.labels(request.method, name, str(status)).observe(
                time.perf_counter() - t0
            )

    async def _params(self, request: web.Request) -> Any:
        if request.method == "POST":
            form = await request.post()
            merged = dict(request.query)
            merged.update({k: v for k, v in form.items() if isinstance(v, str)})
            multi = list(request.query.getall("match[]", [])) + [
                v for v in form.getall("match[]", []) if isinstance(v, str)
            ]
            return merged, multi
        return request.query, list(request.query.getall("match[]", []))

    # ------------------------------------------------------------------ endpoints

    async def handle_ready(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="Ingester not ready: waiting for components\n")

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_buildinfo(self, request: web.Request) -> web.Response:
        return _json(
            {
                "version": __version__,
                "revision": "",
                "branch": "",
                "buildUser": "",
                "buildDate": "",
                "goVersion": "",
            }
        )

    async def handle_push(self, request: web.Request) -> web.Response:
        if self.distributor is None:
            raise Unavailable("distributor is starting")
        tenant = self.tenant(request)
        body = await request.read()
        ctype = request.headers.get("Content-Type", "")
        streams = decode_push(
            body,
            ctype,
            request.headers.get("Content-Encoding", ""),
            max_decompressed_bytes=self.cfg.server.http_server_max_body_bytes,
        )
        metrics.PUSH_REQUESTS.labels("json" if "json" in ctype else "protobuf").inc()
        await self.distributor.push(tenant, streams)
        return web.Response(status=204)

    async def handle_query_range(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        query = params.get("query")
        if not query:
            raise BadRequest("query parameter is required")
        start, end = _bounds(params, self.cfg)
        limit = _int_param(params, "limit", DEFAULT_LIMIT)
        lim = self.cfg.limits_config
        if limit <= 0:
            raise BadRequest("limit must be a positive value")
        if limit > lim.max_entries_limit_per_query > 0:
            raise BadRequest(
                f"max entries limit per query exceeded, limit > max_entries_limit "
                f"({limit} > {lim.max_entries_limit_per_query})"
            )
        direction = params.get("direction", BACKWARD).lower()
        if direction not in (FORWARD, BACKWARD):
            raise BadRequest(f"invalid direction '{params.get('direction')}'")
        length_s = (end - start) / 1e9
        if lim.max_query_length_s and length_s > lim.max_query_length_s:
            raise BadRequest(
                f"the query time range exceeds the limit (query length: "
                f"{format_duration(length_s)}, limit: "
                f"{format_duration(lim.max_query_length_s)})"
            )
        try:
            stats = QueryStats()
            streams = await self.querier.select_logs(
                tenant, query, start, end, limit, direction, stats
            )
        except ParseError as e:
            raise BadRequest(str(e)) from None
        result = []
        for s in streams:
            base = dict(parse_labels(s.labels))
            groups: dict[bytes, list[list[str]]] = {}
            for ts, line, meta in s.entries:
                groups.setdefault(meta, []).append([str(ts), line.decode("utf-8", "replace")])
            for meta, values in groups.items():
                labels = dict(base)
                labels.update(decode_metadata(meta))
                result.append({"stream": labels, "values": values})
        returned = sum(len(r["values"]) for r in result)
        return _json(
            {
                "status": "success",
                "data": {
                    "resultType": "streams",
                    "result": result,
                    "stats": _stats(stats, returned),
                },
            }
        )

    async def handle_labels(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        start, end = _bounds(params, self.cfg)
        names = await self.querier.label_names(tenant, start, end)
        return _json({"status": "success", "data": names})

    async def handle_label_values(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        start, end = _bounds(params, self.cfg)
        try:
            values = await self.querier.label_values(
                tenant, request.match_info["name"], start, end, params.get("query")
            )
        except ParseError as e:
            raise BadRequest(str(e)) from None
        return _json({"status": "success", "data": values})

    async def handle_series(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        params, matches = await self._params(request)
        if not matches:
            raise BadRequest("at least one match[] argument is required")
        start, end = _bounds(params, self.cfg)
        try:
            series = await self.querier.series(tenant, matches, start, end)
        except ParseError as e:
            raise BadRequest(str(e)) from None
        return _json({"status": "success", "data": [dict(parse_labels(s)) for s in series]})


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _stats(s: QueryStats, returned: int) -> dict[str, Any]:
    exec_s = time.perf_counter() - s.started
    lines = s.ingester_lines + s.store_lines
    nbytes = s.ingester_bytes + s.store_bytes
    return {
        "summary": {
            "bytesProcessedPerSecond": int(nbytes / exec_s) if exec_s else 0,
            "linesProcessedPerSecond": int(lines / exec_s) if exec_s else 0,
            "totalBytesProcessed": nbytes,
            "totalLinesProcessed": lines,
            "execTime": exec_s,
            "queueTime": 0,
            "subqueries": 0,
            "totalEntriesReturned": returned,
            "splits": 0,
            "shards": 0,
        },
        "querier": {
            "store": {
                "totalChunksRef": s.chunks_fetched,
                "totalChunksDownloaded": s.chunks_fetched,
                "chunk": {
                    "compressedBytes": s.chunk_bytes_fetched,
                    "decompressedBytes": s.store_bytes,
                    "decompressedLines": s.store_lines,
                },
            }
        },
        "ingester": {
            "totalReached": 0,
            "store": {
                "chunk": {
                    "decompressedBytes": s.ingester_bytes,
                    "decompressedLines": s.ingester_lines,
                }
            },
        },
    }
