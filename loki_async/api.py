"""HTTP API: Loki's push and read endpoints, readiness and metrics, on aiohttp.

Response bodies follow Loki byte for byte where clients depend on them
(``{"status":"success","data":{"resultType":"streams",...}}``); errors are plain text
with the status from :func:`loki_async.errors.http_status`, as Loki answers them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import math
import re
import string
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import __version__, metrics
from .config import Config, ServerConfig, format_duration, parse_duration, read_secret
from .coprocessor import API_VERSION
from .coprocessor_host import HEADER_VERSION as HEADER_COPROCESSOR_VERSION
from .coprocessor_host import Registry
from .distributor import Distributor
from .errors import (
    BadRequest,
    ConfigError,
    LokiError,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unavailable,
    http_status,
)
from .frontend import Frontend, PluginHost, QueryRequest, QueryResult, SplitResults
from .labels import label_map
from .logproto import decode_push, format_labels
from .logql import ParseError, parse_expr, parse_log_selector
from .logql.ast import Expr, LogSelectorExpr, MultiVariantExpr
from .logql.engine import to_json
from .logql.pretty import prettify
from .otlp import decode_otlp, export_error, export_response
from .querier import BACKWARD, FORWARD, Querier, QueryStats, StreamResult
from .ring import Ring
from .tickets import Execution, Ticket, Tickets, merge_done, status_json

log = logging.getLogger(__name__)

HEADER_TENANT = "X-Scope-OrgID"
HEADER_ENCODING_FLAGS = "X-Loki-Response-Encoding-Flags"
HEADER_IDEMPOTENCY_KEY = "Idempotency-Key"
HEADER_TICKET = "X-Loki-Ticket"
TICKETS_PATH = "/loki/api/v1/tickets"
PUSH_PATH = "/loki/api/v1/push"
OTLP_LOGS_PATH = "/otlp/v1/logs"  # the otlphttp exporter's endpoint + "/v1/logs"
COPROCESSOR_PATH = "/coprocessor/v1"
UI_PATH = "/ui"
UI_DIR = Path(__file__).parent / "ui"
# The console's files by suffix; anything else under /ui/ is a 404 (no listing).
UI_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
MAX_POINTS = 11_000
ERR_INSTANT_LOG_QUERY = (
    "log queries are not supported as an instant query type, please change your query to "
    "a range query type"
)
DEFAULT_TENANT = "fake"
# Loki's tenant ID rules (dskit's tenant.ValidTenantID): these characters, at most 150.
TENANT_CHARS = frozenset(string.ascii_letters + string.digits + "!-_.*'()")
MAX_TENANT_LENGTH = 150
HEADER_AUTHORIZATION = "Authorization"
AUTH_REALM = "loki-async"
# Open even with server.basic_auth_* / bearer_token_file: probes and scrapers ask them
# without credentials, and they hold no log data.
OPEN_PATHS = frozenset(("/ready", "/metrics"))
DEFAULT_LIMIT = 100
DEFAULT_SINCE_S = 3600.0
MAX_TAIL_DELAY_S = 5
TAIL_POLL_S = 1.0
TAIL_PING_S = 10.0

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
                return _in_range(int(s) * 10**9 + round(frac * 1000) * 10**6, value)
    if re.fullmatch(r"-?\d+", value):
        # Past 19 significant digits it is out of range anyway (and int() refuses 4300).
        digits = value.lstrip("-").lstrip("0")[:20] or "0"
        n = -int(digits) if value[0] == "-" else int(digits)
        return _in_range(n * 10**9 if len(value.lstrip("-")) <= 10 else n, value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            raise ValueError
    except ValueError:
        raise BadRequest(f'cannot parse "{value}" to a valid timestamp') from None
    return _in_range(
        int(dt.timestamp()) * 10**9 + dt.microsecond * 1000 + _nanos_suffix(value), value
    )


def _in_range(ns: int, value: str) -> int:
    """``ns`` if it fits an int64 (years 1678 to 2262), as every timestamp must."""
    if not -(2**63) <= ns < 2**63:
        raise BadRequest(f'cannot parse "{value}" to a valid timestamp')
    return ns


def _nanos_suffix(value: str) -> int:
    # fromisoformat keeps microseconds; RFC3339Nano may carry nanoseconds.
    m = re.search(r"\.\d{6}(\d{1,3})", value)
    return int(m.group(1).ljust(3, "0")) if m else 0


def _bounds(params: Any, cfg: Config, *, metadata: bool = True) -> tuple[int, int]:
    """``start`` and ``end`` (``since`` before ``end``). Labels, series and index queries
    are held to ``max_query_length`` here, as Loki's querier holds them; a query's range
    is the frontend's to check (``metadata=False``)."""
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
    limit_s = cfg.limits_config.max_query_length_s
    if metadata and limit_s and (end - start) / 1e9 > limit_s:
        raise BadRequest(
            f"the query time range exceeds the limit (query length: "
            f"{format_duration((end - start) / 1e9)}, limit: {format_duration(limit_s)})"
        )
    return start, end


def _int_param(params: Any, name: str, default: int) -> int:
    v = params.get(name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise BadRequest(f'invalid {name}: cannot parse "{v}" as an integer') from None


def _query_param(params: Any) -> tuple[Expr, str]:
    query = params.get("query")
    if not query:
        raise BadRequest("query parameter is required")
    expr = parse_expr(query)
    if isinstance(expr, MultiVariantExpr):  # parsed (format_query shows it), never run
        raise BadRequest("multi variant queries are disabled for this instance")
    return expr, query


def _limit_param(params: Any) -> int:
    limit = _int_param(params, "limit", DEFAULT_LIMIT)
    if limit <= 0:
        raise BadRequest("limit must be a positive value")
    return limit


def _direction_param(params: Any) -> str:
    direction = (params.get("direction") or BACKWARD).lower()
    if direction not in (FORWARD, BACKWARD):
        raise BadRequest(f"invalid direction '{params.get('direction')}'")
    return direction


def _step_param(params: Any, name: str, default: int) -> int:
    """``step``/``interval``: a duration (``1m``) or float seconds (``60``, ``0.5``)."""
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        ns = round(float(value) * 1e9)
    except OverflowError:  # inf
        ns = 2**63
    except ValueError:
        try:
            ns = int(parse_duration(value) * 1e9)
        except ValueError:
            raise BadRequest(f'cannot parse "{value}" to a valid duration') from None
    if not -(2**63) <= ns < 2**63:
        raise BadRequest(f'cannot parse "{value}" to a valid duration. It overflows int64')
    if ns <= 0 and name == "step":
        raise BadRequest(
            "zero or negative query resolution step widths are not accepted. Try a positive integer"
        )
    return max(ns, 0)


def _resolution_param(params: Any, start: int, end: int) -> int:
    """``step`` of a range query, at most ``MAX_POINTS`` per series (Loki's check)."""
    step = _step_param(params, "step", default_step_ns(start, end))
    if (end - start) // step > MAX_POINTS:
        raise BadRequest(
            "exceeded maximum resolution of 11,000 points per time series. Try "
            "increasing the value of the step parameter"
        )
    return step


def _duration_param(params: Any, name: str, cap_s: float) -> float:
    """A duration parameter in seconds (0 when absent), at most ``cap_s``."""
    raw = params.get(name)
    if raw is None or raw == "":
        return 0.0
    try:
        value = parse_duration(raw)
    except ValueError:
        value = -1.0
    if value < 0 or math.isnan(value):
        raise BadRequest(
            f'invalid {name} "{raw}": use a non-negative duration such as 500ms, 10s or 1m'
        )
    return min(value, cap_s)


def _keep_alive_param(params: Any) -> float | None:
    """``keep_alive`` in seconds, None when absent (the tickets apply their cap)."""
    raw = params.get("keep_alive")
    if raw is None or raw == "":
        return None
    try:
        value = parse_duration(raw)
    except ValueError:
        value = 0.0
    if value <= 0 or math.isnan(value):
        raise BadRequest(f'invalid keep_alive "{raw}": use a positive duration such as 1h or 7d')
    return value


def default_step_ns(start: int, end: int) -> int:
    """Loki's default step: the range / 250, in whole seconds, at least 1s."""
    return max((end - start) // (250 * 10**9), 1) * 10**9


def body_too_large(limit: int) -> str:
    return f"request body too large: limit {limit} bytes"


def refuse_oversized(request: web.Request, limit: int) -> None:
    """A 413 before anything is read when the Content-Length is past the limit. (A
    chunked body is read up to the limit: aiohttp's ``client_max_size`` stops it.)"""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(body_too_large(limit))


def _no_cache(request: web.Request) -> bool:
    return "no-cache" in request.headers.get("Cache-Control", "")


def encode_streams(
    streams: list[StreamResult], *, categorize: bool, backward: bool
) -> tuple[list[dict[str, Any]], int]:
    """Loki's ``streams`` result. By default every label (stream, structured metadata,
    parsed) is in ``stream``; with categorize-labels ``stream`` holds the stream labels
    and each entry carries its structured metadata and parsed labels."""
    out: list[dict[str, Any]] = []
    returned = 0
    if not categorize:
        for s in streams:
            values = [[str(ts), line.decode("utf-8", "replace")] for ts, line in s.entries]
            returned += len(values)
            # All labels as a dict, not re-parsed from the key: parsed labels may have
            # empty values (or names).
            out.append({"stream": s.labels.labels, "values": values})
        return out, returned
    grouped: dict[str, tuple[dict[str, str], list[tuple[int, list[Any]]]]] = {}
    for s in streams:
        ll = s.labels
        key = format_labels(sorted(ll.stream.items()))
        cats: dict[str, dict[str, str]] = {}
        if ll.structured_metadata:
            cats["structuredMetadata"] = ll.structured_metadata
        if ll.parsed:
            cats["parsed"] = ll.parsed
        g = grouped.setdefault(key, (ll.stream, []))[1]
        for ts, line in s.entries:
            value: list[Any] = [str(ts), line.decode("utf-8", "replace")]
            if cats:
                value.append(cats)
            g.append((ts, value))
    for labels, entries in grouped.values():
        entries.sort(key=lambda e: e[0], reverse=backward)
        returned += len(entries)
        out.append({"stream": labels, "values": [v for _, v in entries]})
    return out, returned


def _selector_param(params: Any) -> str:
    """The ``query`` of index endpoints: a stream selector (``{}`` or absent: all)."""
    query = (params.get("query") or "").strip()
    if query in ("", "{}"):
        return ""
    parse_log_selector(query)
    return query


def _seconds(ns: int) -> float | int:
    """A result timestamp as Prometheus prints it: seconds, millisecond precision."""
    ms = ns // 10**6
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


STATIC_LABELS = frozenset(("cluster", "namespace", "instance", "pod"))
_FLOAT_OR_UUID = re.compile(
    r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|"
    r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"
)


# --------------------------------------------------------------------------- tenants, auth


def check_tenant(org: str) -> str:
    """``org`` if it is a valid tenant ID by Loki's rules, else a 400 in Loki's words.
    The rules also keep a tenant inside its directory of the filesystem store and its
    name within a file name's length."""
    for c in org:
        if c not in TENANT_CHARS:
            raise BadRequest(
                f"tenant ID '{_printable(org)}' contains unsupported character '{_printable(c)}'"
            )
    if len(org) > MAX_TENANT_LENGTH:
        raise BadRequest(f"tenant ID is too long: max {MAX_TENANT_LENGTH} characters")
    if org in (".", ".."):
        raise BadRequest("tenant ID is '.' or '..'")
    return org


def _printable(text: str) -> str:
    # Header bytes that are not UTF-8 arrive as surrogates, which no response can carry.
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


class Credentials:
    """What every request but ``OPEN_PATHS`` must carry when ``server.basic_auth_username``
    or ``server.bearer_token_file`` is set: HTTP basic credentials or the bearer token.
    The secrets are read once, at start, and kept only as SHA-256 digests, compared in
    constant time (no length or prefix leaks); nothing here logs."""

    def __init__(self, server: ServerConfig) -> None:
        self.basic: bytes | None = None
        self.bearer: bytes | None = None
        try:
            if server.basic_auth_username:
                password = read_secret(server.basic_auth_password_file)
                self.basic = _digest(f"{server.basic_auth_username}:{password}".encode())
            if server.bearer_token_file:
                self.bearer = _digest(read_secret(server.bearer_token_file).strip().encode())
        except OSError as e:
            raise ConfigError(f"server: cannot read a credentials file: {e}") from None

    @property
    def required(self) -> bool:
        return self.basic is not None or self.bearer is not None

    def allow(self, authorization: str) -> bool:
        """Whether an ``Authorization`` header value carries valid credentials."""
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "basic" and self.basic is not None:
            try:
                given = base64.b64decode(value, validate=True)
            except ValueError:  # not base64, or not ASCII
                return False
            return hmac.compare_digest(_digest(given), self.basic)
        if scheme == "bearer" and self.bearer is not None:
            given = value.encode("utf-8", "surrogateescape")
            return hmac.compare_digest(_digest(given), self.bearer)
        return False

    def challenges(self) -> list[str]:
        """The ``WWW-Authenticate`` values of a 401 (Basic makes a browser ask)."""
        out = []
        if self.basic is not None:
            out.append(f'Basic realm="{AUTH_REALM}", charset="UTF-8"')
        if self.bearer is not None:
            out.append(f'Bearer realm="{AUTH_REALM}"')
        return out


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
        self.frontend: Frontend | None = None
        self.ingester: Any = None
        self.ring: Ring | None = None
        self.tickets: Tickets | None = None
        self.split_results: SplitResults | None = None
        self.coprocessors: Registry | None = None
        self.ready = ready
        self.credentials = Credentials(cfg.server)

    def tenant(self, request: web.Request) -> str:
        if self.read and self.querier is None and request.path not in (PUSH_PATH, OTLP_LOGS_PATH):
            raise Unavailable("querier is starting")
        if not self.cfg.auth_enabled:
            return DEFAULT_TENANT
        org = request.headers.get(HEADER_TENANT, "").strip()
        if not org:
            raise Unauthorized("no org id")
        return check_tenant(org)

    def app(self) -> web.Application:
        middlewares = [self._errors]
        if self.credentials.required:
            middlewares.append(self._authenticate)
        app = web.Application(
            client_max_size=self.cfg.server.http_server_max_body_bytes, middlewares=middlewares
        )
        r = app.router
        r.add_get("/ready", self.handle_ready)
        r.add_get("/metrics", self.handle_metrics)
        r.add_get("/loki/api/v1/status/buildinfo", self.handle_buildinfo)
        if self.push:
            r.add_post(PUSH_PATH, self.handle_push)
            r.add_post(OTLP_LOGS_PATH, self.handle_otlp_logs)
        r.add_post("/flush", self.handle_flush)
        r.add_get("/ring", self.handle_ring)
        r.add_post("/ring", self.handle_ring_forget)
        r.add_get("/flush", self.handle_flush)
        if self.read:
            for path, handler in (
                ("/loki/api/v1/query", self.handle_query),
                ("/loki/api/v1/query_range", self.handle_query_range),
                ("/loki/api/v1/labels", self.handle_labels),
                ("/loki/api/v1/label", self.handle_labels),
                ("/loki/api/v1/label/{name}/values", self.handle_label_values),
                ("/loki/api/v1/series", self.handle_series),
                ("/loki/api/v1/index/stats", self.handle_index_stats),
                ("/loki/api/v1/index/volume", self.handle_volume),
                ("/loki/api/v1/index/volume_range", self.handle_volume_range),
                ("/loki/api/v1/detected_labels", self.handle_detected_labels),
                ("/loki/api/v1/format_query", self.handle_format_query),
            ):
                r.add_get(path, handler)
                r.add_post(path, handler)
            r.add_get("/loki/api/v1/tail", self.handle_tail)
            r.add_get(TICKETS_PATH, self.handle_tickets)
            r.add_get(TICKETS_PATH + "/{id}", self.handle_ticket)
            r.add_delete(TICKETS_PATH + "/{id}", self.handle_ticket_delete)
            r.add_get(TICKETS_PATH + "/{id}/status", self.handle_ticket_status)
            r.add_get(TICKETS_PATH + "/{id}/partial", self.handle_ticket_partial)
            r.add_post(TICKETS_PATH + "/{id}/stop", self.handle_ticket_stop)
            r.add_get(COPROCESSOR_PATH + "/plugins", self.handle_coprocessor_plugins)
            r.add_post(COPROCESSOR_PATH + "/{name}", self.handle_coprocessor)
            r.add_get(UI_PATH, self.handle_ui)
            r.add_get(UI_PATH + "/", self.handle_ui)
            r.add_get(UI_PATH + "/{name}", self.handle_ui)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        t0 = time.perf_counter()
        status = 500
        limit = self.cfg.server.http_server_max_body_bytes
        try:
            if request.path != OTLP_LOGS_PATH:  # OTLP answers in its own encoding
                refuse_oversized(request, limit)
            resp = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as e:
            status = e.status
            # aiohttp's 413s: a body past client_max_size, or a form of too many fields.
            if e.status == 413 and "form fields" not in (e.text or ""):
                raise web.HTTPRequestEntityTooLarge(
                    max_size=limit,
                    actual_size=request.content_length or 0,
                    text=body_too_large(limit),
                ) from None
            raise
        except LokiError as e:
            status, message = http_status(e)
            if status >= 500:
                log.warning(
                    "request failed path=%s status=%d err=%r", request.path, status, message
                )
            # A message may echo request bytes that are not UTF-8 (surrogates here).
            return web.Response(status=status, text=_printable(message) + "\n")
        except Exception:
            log.exception("unhandled error path=%s", request.path)
            return web.Response(status=500, text="internal server error\n")
        finally:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "other"
            metrics.REQUEST_DURATION.labels(request.method, name, str(status)).observe(
                time.perf_counter() - t0
            )

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """401 with the challenges unless the request carries valid credentials."""
        if request.path in OPEN_PATHS or self.credentials.allow(
            request.headers.get(HEADER_AUTHORIZATION, "")
        ):
            return await handler(request)
        resp = web.Response(status=401, text="unauthorized\n")
        for challenge in self.credentials.challenges():
            resp.headers.add("WWW-Authenticate", challenge)
        return resp

    async def _params(self, request: web.Request) -> Any:
        if request.method == "POST":
            form = await _form(request)
            merged = dict(request.query)
            merged.update({k: v for k, v in form.items() if isinstance(v, str)})
            multi = list(request.query.getall("match[]", [])) + [
                v for v in form.getall("match[]", []) if isinstance(v, str)
            ]
            return merged, multi
        return request.query, list(request.query.getall("match[]", []))

    # ------------------------------------------------------------------ endpoints

    async def handle_ui(self, request: web.Request) -> web.StreamResponse:
        """The web console (``loki_async/ui``): ``/ui/`` is its page, ``/ui/<file>`` its
        scripts and styles; ``/ui`` redirects, relatively, so a path prefix survives."""
        if request.path == UI_PATH:
            raise web.HTTPFound("ui/")
        name = request.match_info.get("name", "index.html")
        path = UI_DIR / name
        ctype = UI_TYPES.get(path.suffix)
        if ctype is None or path.parent != UI_DIR or not path.is_file():
            raise web.HTTPNotFound(text="404: Not Found")
        return web.FileResponse(path, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})

    async def handle_ready(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="Ingester not ready: waiting for components\n")

    async def handle_metrics(self, request: web.Request) -> web.Response:
        metrics.ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
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

    async def handle_otlp_logs(self, request: web.Request) -> web.Response:
        """OTLP/HTTP logs, mapped to streams as Loki maps them, then pushed like
        ``/loki/api/v1/push``. As the OTLP spec asks, success is a 200 with an empty
        ExportLogsServiceResponse and an error carries its message in a Status, both in the
        request's encoding."""
        ctype = request.headers.get("Content-Type", "")
        try:
            if self.distributor is None:
                raise Unavailable("distributor is starting")
            tenant = self.tenant(request)
            limit = self.cfg.server.http_server_max_body_bytes
            refuse_oversized(request, limit)
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise PayloadTooLarge(body_too_large(limit)) from None
            streams = decode_otlp(
                body,
                ctype,
                request.headers.get("Content-Encoding", ""),
                max_decompressed_bytes=self.cfg.server.http_server_max_body_bytes,
            )
            metrics.PUSH_REQUESTS.labels("otlp").inc()
            await self.distributor.push(tenant, streams)
        except LokiError as e:
            status, message = http_status(e)
            if status >= 500:
                log.warning("push failed path=%s status=%d err=%r", request.path, status, message)
            body, rtype = export_error(message, ctype)
            return web.Response(status=status, body=body, content_type=rtype)
        body, rtype = export_response(ctype)
        return web.Response(body=body, content_type=rtype)

    def _frontend(self) -> Frontend:
        if self.frontend is None:
            raise Unavailable("query-frontend is starting")
        return self.frontend

    async def handle_query_range(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        expr, query = _query_param(params)
        start, end = _bounds(params, self.cfg, metadata=False)
        if isinstance(expr, LogSelectorExpr):
            step = 0
            interval = _step_param(params, "interval", 0)
        else:
            step = _resolution_param(params, start, end)
            if self.cfg.query_range.align_queries_with_step:
                start, end = start // step * step, end // step * step
            interval = 0
        req = QueryRequest(
            tenant=tenant,
            query=query,
            expr=expr,
            start=start,
            end=end,
            step=step,
            interval=interval,
            limit=_limit_param(params),
            direction=_direction_param(params),
            no_cache=_no_cache(request),
            categorize=_categorize(request),
            **_coprocessor_params(request, params),
        )
        return await self._answer(request, req, params)

    async def handle_query(self, request: web.Request) -> web.Response:
        """Instant query at ``time`` (default now)."""
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        expr, query = _query_param(params)
        at = parse_time(params.get("time"), time.time_ns())
        if isinstance(expr, LogSelectorExpr):
            raise BadRequest(ERR_INSTANT_LOG_QUERY)
        req = QueryRequest(
            tenant=tenant,
            query=query,
            expr=expr,
            start=at,
            end=at,
            limit=_limit_param(params),
            direction=_direction_param(params),
            no_cache=_no_cache(request),
            instant=True,
            categorize=_categorize(request),
            **_coprocessor_params(request, params),
        )
        return await self._answer(request, req, params)

    async def _answer(self, request: web.Request, req: QueryRequest, params: Any) -> web.Response:
        if params.get("async", "").lower() in ("true", "1"):
            return await self._submit(request, req, params)
        res = await self._frontend().run(req)
        return _json(query_response(req, res))

    # ------------------------------------------------------------------ async queries

    def _tickets(self) -> Tickets:
        if self.tickets is None:
            raise Unavailable("query-frontend is starting")
        return self.tickets

    async def _submit(self, request: web.Request, req: QueryRequest, params: Any) -> web.Response:
        """``async=true``: validate, then a ticket (202), or the result if ``wait`` allows."""
        tickets = self._tickets()
        self._frontend().validate(req)
        wait_s = _duration_param(params, "wait", self.cfg.frontend.async_max_wait_s)
        keep_s = _keep_alive_param(params)
        t, x = await tickets.submit(
            req, keep_s, request.headers.get(HEADER_IDEMPOTENCY_KEY, "").strip()
        )
        if wait_s > 0:
            t, x = await tickets.wait(req.tenant, t.id, wait_s)
        if not x.is_running:
            return await self._result(t, x)
        url = f"{TICKETS_PATH}/{t.id}"
        body = {
            "status": "accepted",
            "data": {
                "ticket": t.id,
                "state": x.state,
                "result_url": url,
                "status_url": url + "/status",
                "expires": status_json(t, x)["expires"],
            },
        }
        resp = _json(body, status=202)
        resp.headers["Location"] = url
        return resp

    async def _result(self, t: Ticket, x: Execution) -> web.Response:
        """The stored result, or the query's error with its own status."""
        try:
            body = await self._tickets().result(x)
        except LokiError as e:
            status, message = http_status(e)
            return web.Response(status=status, text=message + "\n", headers={HEADER_TICKET: t.id})
        return web.Response(
            body=body, content_type="application/json", headers={HEADER_TICKET: t.id}
        )

    async def handle_ticket(self, request: web.Request) -> web.Response:
        """204 while running, 200 and the result when done, the error's status if failed."""
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        wait_s = _duration_param(params, "wait", self.cfg.frontend.async_max_wait_s)
        t, x = await self._tickets().wait(
            tenant, request.match_info["id"], wait_s, _keep_alive_param(params)
        )
        if x.is_running:
            return web.Response(status=204, headers={HEADER_TICKET: t.id})
        return await self._result(t, x)

    async def handle_ticket_status(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        t, x = await self._tickets().resolve(tenant, request.match_info["id"])
        return _json({"status": "success", "data": status_json(t, x)})

    async def handle_ticket_partial(self, request: web.Request) -> web.Response:
        """The merge of the splits finished so far (the final result once done)."""
        tenant = self.tenant(request)
        tickets = self._tickets()
        t, x = await tickets.resolve(tenant, request.match_info["id"])
        if not x.is_running:
            return await self._result(t, x)
        assert self.split_results is not None, "BUG: tickets without split results"
        req = QueryRequest.from_wire(x.request)
        res = await merge_done(
            req, self._frontend().planner, self.split_results, x, QueryStats.from_wire(x.stats)
        )
        exec_s = (time.time_ns() - x.started_ns) / 1e9 if x.started_ns else 0.0
        doc = query_response(req, res, exec_s=exec_s)
        doc["is_partial"] = True
        return _json(doc, status=200)

    async def handle_ticket_stop(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        t, x = await self._tickets().stop(tenant, request.match_info["id"])
        return _json({"status": "success", "data": status_json(t, x)})

    async def handle_ticket_delete(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        ticket_id = request.match_info["id"]
        await self._tickets().delete(tenant, ticket_id)
        return _json({"status": "success", "data": {"ticket": ticket_id, "deleted": True}})

    async def handle_tickets(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        listed = await self._tickets().list(tenant)
        return _json({"status": "success", "data": [status_json(t, x) for t, x in listed]})

    # ------------------------------------------------------------------ coprocessors

    def _registry(self) -> Registry:
        if self.coprocessors is None:
            raise Unavailable("coprocessors are starting")
        return self.coprocessors

    async def handle_coprocessor_plugins(self, request: web.Request) -> web.Response:
        """Every plugin file: name, version, API version, state, hooks, load error."""
        self.tenant(request)
        registry = self._registry()
        return _json(
            {
                "status": "success",
                "data": {
                    "api_version": API_VERSION,
                    "directory": str(registry.directory),
                    "plugins": registry.listing(),
                },
            }
        )

    async def handle_coprocessor(self, request: web.Request) -> web.Response:
        """``POST /coprocessor/v1/{name}``: the plugin's ``handle`` next to the data."""
        tenant = self.tenant(request)
        body = await request.read()
        out = await self._registry().handle(
            request.match_info["name"], body, PluginHost(self._frontend(), tenant)
        )
        # Plugins answer bytes; most answer JSON, which clients should see as such.
        json_body = out.lstrip()[:1] in (b"{", b"[")
        ctype = "application/json" if json_body else "application/octet-stream"
        return web.Response(body=out, content_type=ctype)

    async def handle_format_query(self, request: web.Request) -> web.Response:
        params, _ = await self._params(request)
        try:
            expr = parse_expr(params.get("query") or "")
        except ParseError as e:
            return _json({"status": "invalid-query", "error": e.message}, status=400)
        return _json({"status": "success", "data": prettify(expr)})

    async def handle_labels(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        start, end = _bounds(params, self.cfg)
        names = await self._querier().label_names(tenant, start, end, params.get("query"))
        return _json({"status": "success", "data": names} if names else {"status": "success"})

    async def handle_label_values(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        start, end = _bounds(params, self.cfg)
        values = await self._querier().label_values(
            tenant, request.match_info["name"], start, end, params.get("query")
        )
        return _json({"status": "success", "data": values} if values else {"status": "success"})

    async def handle_series(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        params, matches = await self._params(request)
        matches = sorted({m for m in matches if m.strip() not in ("", "{}")})
        for m in matches:  # as Loki's ParseSeriesQuery: the selectors before the range
            parse_log_selector(m)
        start, end = _bounds(params, self.cfg)
        series = await self._querier().series(tenant, matches, start, end)
        return _json({"status": "success", "data": [dict(label_map(s)) for s in series]})

    async def handle_index_stats(self, request: web.Request) -> web.Response:
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        selector = _selector_param(params)
        start, end = _bounds(params, self.cfg)
        streams = await self._querier().chunk_stats(tenant, selector, start, end)
        chunks = [c for cs in streams.values() for c in cs]
        return _json(
            {
                "streams": len(streams),
                "chunks": len(chunks),
                "bytes": sum(c[3] for c in chunks),
                "entries": sum(c[2] for c in chunks),
            }
        )

    async def handle_volume(self, request: web.Request) -> web.Response:
        return await self._volume(request, ranged=False)

    async def handle_volume_range(self, request: web.Request) -> web.Response:
        return await self._volume(request, ranged=True)

    async def _volume(self, request: web.Request, *, ranged: bool) -> web.Response:
        """Bytes per series (or per label name) from the index alone, largest first.
        A chunk's bytes count in the step bucket of its newest entry."""
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        selector = _selector_param(params)
        start, end = _bounds(params, self.cfg)
        limit = _int_param(params, "limit", DEFAULT_LIMIT) or DEFAULT_LIMIT
        if limit < 0:
            raise BadRequest("limit must be a positive value")
        aggregate = params.get("aggregateBy") or "series"
        if aggregate not in ("series", "labels"):
            raise BadRequest("invalid aggregation option")
        targets = [t.strip() for t in (params.get("targetLabels") or "").split(",") if t.strip()]
        if not targets:
            targets = [m.name for m in parse_log_selector(selector).matchers]
        step = _resolution_param(params, start, end) if ranged else 0
        streams = await self._querier().chunk_stats(tenant, selector, start, end)
        volumes: dict[tuple[tuple[str, str], ...], dict[int, int]] = {}
        for labels, chunks in streams.items():
            lm = label_map(labels)
            if aggregate == "labels":
                keys = [((n, ""),) for n in lm if n in targets or not targets]
            else:
                keys = [tuple((n, v) for n, v in sorted(lm.items()) if n in targets)]
            for _, maxt, _, nbytes in chunks:
                bucket = end if not step else min(start + -(-(maxt - start) // step) * step, end)
                for key in keys:
                    per = volumes.setdefault(key, {})
                    per[bucket] = per.get(bucket, 0) + nbytes
        ranked = sorted(volumes.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:limit]
        result: list[dict[str, Any]] = []
        for key, per in ranked:
            metric = dict(key)
            if ranged:
                values = [[_seconds(t), str(v)] for t, v in sorted(per.items())]
                result.append({"metric": metric, "values": values})
            else:
                result.append({"metric": metric, "value": [_seconds(end), str(sum(per.values()))]})
        data = {"resultType": "matrix" if ranged else "vector", "result": result}
        data["stats"] = _stats(QueryStats(), len(result))
        return _json({"status": "success", "data": data})

    async def handle_detected_labels(self, request: web.Request) -> web.Response:
        """Stream labels worth filtering on, with their number of values. Labels whose
        values are all numbers or UUIDs are left out (except a few static ones)."""
        tenant = self.tenant(request)
        params, _ = await self._params(request)
        selector = _selector_param(params)
        start, end = _bounds(params, self.cfg)
        series = await self._querier().series(tenant, [selector] if selector else [], start, end)
        values: dict[str, set[str]] = {}
        for s in series:
            for name, value in label_map(s).items():
                values.setdefault(name, set()).add(value)
        detected = [
            {"label": name, "cardinality": len(vs)}
            for name, vs in sorted(values.items())
            if name in STATIC_LABELS or not all(_FLOAT_OR_UUID.fullmatch(v) for v in vs)
        ]
        return _json({"detectedLabels": detected})

    def _ring(self) -> Ring:
        if self.ring is None:
            raise NotFound("this target does not watch the ring")
        return self.ring

    async def handle_ring(self, request: web.Request) -> web.Response:
        """The ingester ring: id, state, tokens, heartbeat age and health of each member."""
        ring = self._ring()
        return _json(
            {
                "replication_factor": ring.replication_factor,
                "heartbeat_timeout_s": ring.heartbeat_timeout_s,
                "ingesters": ring.status(),
            }
        )

    async def handle_ring_forget(self, request: web.Request) -> web.Response:
        """``forget=<id>`` (form or query): drop a dead ingester from the ring."""
        ring = self._ring()
        form = await _form(request)
        target = str(form.get("forget") or request.query.get("forget") or "").strip()
        if not target:
            raise BadRequest("forget=<ingester id> is required")
        if not await ring.forget(target):
            raise NotFound(f"ingester {target!r} is not in the ring")
        return web.Response(status=204)

    async def handle_flush(self, request: web.Request) -> web.Response:
        if self.querier is not None:
            await self.querier.flush()
        elif self.ingester is not None:
            await self.ingester.flush(force=True)
        else:
            raise Unavailable("no ingester to flush yet")
        return web.Response(status=204)

    async def handle_tail(self, request: web.Request) -> web.StreamResponse:
        """Live tail over a WebSocket: first the newest ``limit`` entries since ``start``,
        then every second the entries that arrived, ``delay_for`` seconds behind now."""
        tenant = self.tenant(request)
        params = request.query
        expr, _ = _query_param(params)
        if not isinstance(expr, LogSelectorExpr):
            raise BadRequest("only log queries can be tailed")
        delay = _int_param(params, "delay_for", 0)
        if delay > MAX_TAIL_DELAY_S:
            raise BadRequest(f"delay_for can't be greater than {MAX_TAIL_DELAY_S}")
        limit = _limit_param(params)
        now = time.time_ns()
        start = parse_time(params.get("start"), now - int(DEFAULT_SINCE_S * 1e9))
        querier = self._querier()
        ws = web.WebSocketResponse(heartbeat=TAIL_PING_S)
        await ws.prepare(request)
        cursor = start
        first = True
        try:
            while not ws.closed:
                until = time.time_ns() - delay * 10**9
                if until > cursor:
                    streams = await querier.select_logs(
                        tenant,
                        expr,
                        cursor,
                        until,
                        limit,
                        BACKWARD if first else FORWARD,
                        QueryStats(),
                    )
                    entries = sum(len(st.entries) for st in streams)
                    if entries:
                        for st in streams:
                            st.entries.sort()
                        result, _ = encode_streams(streams, categorize=False, backward=False)
                        await ws.send_str(orjson.dumps({"streams": result}).decode())
                        newest = max(st.entries[-1][0] for st in streams)
                        # Forward batches cut at `limit`: continue right after the last one.
                        cursor = newest + 1 if (first or entries >= limit) else until
                    else:
                        cursor = until
                    first = False
                with contextlib.suppress(TimeoutError):
                    msg = await ws.receive(timeout=TAIL_POLL_S)
                    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                        break
        except LokiError as e:
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=e.message.encode()[:120])
        finally:
            await ws.close()
        return ws

    def _querier(self) -> Querier:
        if self.querier is None:
            raise Unavailable("querier is starting")
        return self.querier


async def _form(request: web.Request) -> Any:
    """The POST form; a body that is not the form its Content-Type says is a 400."""
    try:
        return await request.post()
    except (ValueError, LookupError) as e:  # bad multipart, bad UTF-8, unknown charset
        raise BadRequest(f"invalid form body: {e}") from None


def _coprocessor_params(request: web.Request, params: Any) -> dict[str, str]:
    """Which coprocessors a query uses (``coprocessors=none|a,b|-a``) and the versions
    it requires (``X-Coprocessor-Version`` header or ``coprocessor_version`` parameter)."""
    versions = "; ".join(request.headers.getall(HEADER_COPROCESSOR_VERSION, []))
    if params.get("coprocessor_version"):
        versions = "; ".join(v for v in (versions, params["coprocessor_version"]) if v)
    return {"coprocessors": params.get("coprocessors", ""), "coprocessor_versions": versions}


def _categorize(request: web.Request) -> bool:
    flags = request.headers.get(HEADER_ENCODING_FLAGS, "")
    return "categorize-labels" in [f.strip() for f in flags.split(",")]


def query_response(
    req: QueryRequest, res: QueryResult, *, exec_s: float | None = None, queue_s: float = 0.0
) -> dict[str, Any]:
    """Loki's response document for a query result (sync answers and async results)."""
    data: dict[str, Any]
    if res.streams is not None:
        result, returned = encode_streams(
            res.streams, categorize=req.categorize, backward=req.direction == BACKWARD
        )
        data = {"resultType": "streams"}
        if req.categorize:
            data["encodingFlags"] = ["categorize-labels"]
        data["result"] = result
    else:
        data = to_json(res.value)
        returned = len(data["result"]) if data["resultType"] != "scalar" else 1
    if exec_s is None:
        exec_s = time.perf_counter() - res.stats.started
    data["stats"] = _stats(res.stats, returned, exec_s, queue_s)
    if res.coprocessors:
        data["stats"]["coprocessor"] = res.coprocessors
    out: dict[str, Any] = {"status": "success", "data": data}
    if warnings := damage_warnings(res.stats):
        out["warnings"] = warnings  # as Prometheus' API carries them, next to data
    return out


def damage_warnings(s: QueryStats) -> list[str]:
    """What a query had to leave out because stored objects were damaged."""
    out = []
    if s.damaged_chunks:
        out.append(
            f"{s.damaged_chunks} damaged chunk(s) failed their checksum and were left out; "
            "the server log names them"
        )
    if s.damaged_index_segments:
        out.append(
            f"{s.damaged_index_segments} damaged index segment(s) were left out; "
            "the server log names them"
        )
    return out


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _stats(
    s: QueryStats, returned: int, exec_s: float = 0.0, queue_s: float = 0.0
) -> dict[str, Any]:
    """Loki's ``stats`` block, with the figures this query really has; the rest are 0."""
    lines = s.ingester_lines + s.store_lines
    nbytes = s.ingester_bytes + s.store_bytes

    def chunk(dec_bytes: int, dec_lines: int, comp: int) -> dict[str, Any]:
        return {
            "headChunkBytes": 0,
            "headChunkLines": 0,
            "decompressedBytes": dec_bytes,
            "decompressedLines": dec_lines,
            "compressedBytes": comp,
            "totalDuplicates": 0,
            "postFilterLines": 0,
            "headChunkStructuredMetadataBytes": 0,
            "decompressedStructuredMetadataBytes": 0,
        }

    def store(refs: int, downloaded: int, c: dict[str, Any]) -> dict[str, Any]:
        return {
            "totalChunksRef": refs,
            "totalChunksDownloaded": downloaded,
            "chunksDownloadTime": 0,
            "queryReferencedStructuredMetadata": False,
            "chunk": c,
            "chunkRefsFetchTime": 0,
            "congestionControlLatency": 0,
            "pipelineWrapperFilteredLines": 0,
        }

    cache = {
        "entriesFound": 0,
        "entriesRequested": 0,
        "entriesStored": 0,
        "bytesReceived": 0,
        "bytesSent": 0,
        "requests": 0,
        "downloadTime": 0,
        "queryLengthServed": 0,
    }
    return {
        "summary": {
            "bytesProcessedPerSecond": int(nbytes / exec_s) if exec_s else 0,
            "linesProcessedPerSecond": int(lines / exec_s) if exec_s else 0,
            "totalBytesProcessed": nbytes,
            "totalLinesProcessed": lines,
            "execTime": exec_s,
            "queueTime": queue_s,
            "subqueries": 0,
            "totalEntriesReturned": returned,
            "splits": s.splits,
            "shards": 0,
            "totalPostFilterLines": s.post_filter_lines,
            "totalStructuredMetadataBytesProcessed": 0,
        },
        "querier": {
            "store": store(
                s.chunks_ref,
                s.chunks_fetched,
                chunk(s.store_bytes, s.store_lines, s.chunk_bytes_fetched),
            )
        },
        "ingester": {
            "totalReached": 0,
            "totalChunksMatched": 0,
            "totalBatches": 0,
            "totalLinesSent": s.ingester_lines,
            "store": store(0, 0, chunk(s.ingester_bytes, s.ingester_lines, 0)),
        },
        "cache": {
            "chunk": dict(cache),
            "index": dict(cache),
            "result": {**cache, "entriesFound": s.cache_hits, "entriesRequested": s.cache_lookups},
            "statsResult": dict(cache),
            "volumeResult": dict(cache),
            "seriesResult": dict(cache),
            "labelResult": dict(cache),
            "instantMetricResult": dict(cache),
        },
        "index": {"totalChunks": s.chunks_ref, "postFilterChunks": s.chunks_ref},
    }
