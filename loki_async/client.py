"""The ``loki-async query`` and ``loki-async ticket`` client commands.

``query`` runs a LogQL query against a loki-async (or Loki) server, synchronously or as an
asynchronous ticket whose progress it shows on stderr while it waits; ``ticket`` reads,
waits for, stops, cancels or lists tickets. Results print as received (``raw``),
pretty-printed (``json``) or one JSON line per entry or point (``jsonl``). The server,
tenant and credentials come from flags or, as for logcli, from ``LOKI_ADDR``,
``LOKI_ORG_ID``, ``LOKI_USERNAME``/``LOKI_PASSWORD`` and ``LOKI_BEARER_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import aiohttp
import orjson

from .config import parse_duration

DEFAULT_ADDR = "http://127.0.0.1:3100"
TICKETS = "/loki/api/v1/tickets"
HEADER_TENANT = "X-Scope-OrgID"
HEADER_TICKET = "X-Loki-Ticket"
POLL_WAIT = "1s"
BAR_WIDTH = 20


class ClientError(Exception):
    """A failure to report as ``message`` on stderr, exiting 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# ---------------------------------------------------------------------- HTTP


class Server:
    """One server (address, tenant, credentials) and an aiohttp session to it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        addr: str,
        org_id: str | None,
        authorization: str = "",
    ) -> None:
        self.session = session
        self.addr = addr.rstrip("/")
        self.headers = {HEADER_TENANT: org_id} if org_id else {}
        if authorization:
            self.headers["Authorization"] = authorization

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, str | None]:
        """(status, body, X-Loki-Ticket header); ``ClientError`` if the server is unreachable."""
        try:
            async with self.session.request(
                method,
                self.addr + path,
                params=params,
                headers={**self.headers, **(headers or {})},
            ) as r:
                return r.status, await r.read(), r.headers.get(HEADER_TICKET)
        except (aiohttp.ClientConnectionError, TimeoutError) as e:
            raise ClientError(f"cannot reach {self.addr}: {e or 'timed out'}") from None
        except aiohttp.ClientError as e:
            raise ClientError(f"error: {self.addr}: {e}") from None

    async def call(
        self, method: str, path: str, params: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Like :meth:`request`, but any status other than 200 or 204 is a ``ClientError``."""
        status, body, _ = await self.request(method, path, params)
        check(status, body)
        return status, body


def authorization(args: argparse.Namespace) -> str:
    """The ``Authorization`` header of ``--bearer-token`` or ``--username``/``--password``,
    empty without credentials; both is a mistake, as in logcli."""
    if args.bearer_token and args.username:
        raise ClientError("error: give a bearer token or a username and password, not both")
    if args.bearer_token:
        return f"Bearer {args.bearer_token}"
    if args.username:
        return aiohttp.BasicAuth(args.username, args.password or "").encode()
    return ""


def check(status: int, body: bytes) -> None:
    if status not in (200, 204):
        text = body.decode(errors="replace").strip()
        raise ClientError(f"error: {status} {text}")


def session() -> aiohttp.ClientSession:
    """No overall time limit (queries may run long), a short one to connect."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))


# ---------------------------------------------------------------------- output


def print_result(body: bytes, output: str) -> None:
    """Print a query response body in ``output`` format (raw, json, jsonl) on stdout."""
    out = sys.stdout.buffer
    if output == "raw":
        out.write(body if body.endswith(b"\n") else body + b"\n")
    elif output == "json":
        out.write(orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        for row in jsonl_rows(orjson.loads(body)):
            out.write(orjson.dumps(row) + b"\n")
    out.flush()


def jsonl_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per log entry (streams) or per point (matrix, vector, scalar)."""
    data = doc.get("data", {})
    kind, result = data.get("resultType"), data.get("result", [])
    if kind == "streams":
        return [
            {"ts": v[0], "labels": s.get("stream", {}), "line": v[1]}
            for s in result
            for v in s.get("values", [])
        ]
    if kind == "matrix":
        return [
            {"metric": s.get("metric", {}), "ts": ts, "value": value}
            for s in result
            for ts, value in s.get("values", [])
        ]
    if kind == "vector":
        return [
            {"metric": s.get("metric", {}), "ts": s["value"][0], "value": s["value"][1]}
            for s in result
        ]
    if kind in ("scalar", "string"):
        return [{"ts": result[0], "value": result[1]}]
    return []


def progress_line(status: dict[str, Any]) -> str:
    """``[#####-----] 412/720 splits, 3 cached, 0 skipped, 12.3 MB processed``."""
    p, s = status.get("progress", {}), status.get("stats", {})
    total, done = p.get("splits_total", 0), p.get("splits_done", 0)
    # Splits a coprocessor skipped are finished too: nothing to run.
    filled = BAR_WIDTH * (done + p.get("splits_skipped", 0)) // total if total else 0
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    mb = s.get("bytes_processed", 0) / 1e6
    return (
        f"[{bar}] {done}/{total} splits, {p.get('splits_cached', 0)} cached, "
        f"{p.get('splits_skipped', 0)} skipped, {mb:.1f} MB processed"
    )


def print_table(statuses: list[dict[str, Any]]) -> None:
    """The ``ticket --list`` table."""
    rows = [("TICKET", "STATE", "SPLITS", "CREATED", "QUERY")]
    for st in statuses:
        p = st.get("progress", {})
        splits = f"{p.get('splits_done', 0)}/{p.get('splits_total', 0)}"
        rows.append(
            (st["ticket"], st["state"], splits, st.get("created") or "", st.get("query", ""))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)), r[4])


# ---------------------------------------------------------------------- commands


def query_params(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The endpoint path and its parameters for ``loki-async query``."""
    params = {"query": args.query}
    if args.instant:
        path = "/loki/api/v1/query"
        if args.to:
            params["time"] = args.to
    else:
        path = "/loki/api/v1/query_range"
        if args.from_:
            params["start"] = args.from_
        else:
            params["start"] = str(time.time_ns() - round(parse_duration(args.since) * 1e9))
        if args.to:
            params["end"] = args.to
        if args.step:
            params["step"] = args.step
    if args.limit is not None:
        params["limit"] = str(args.limit)
    if args.direction:
        params["direction"] = args.direction
    if args.async_:
        params["async"] = "true"
        if args.wait:
            params["wait"] = args.wait
        if args.keep_alive:
            params["keep_alive"] = args.keep_alive
    return path, params


async def run_query(args: argparse.Namespace) -> int:
    path, params = query_params(args)
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    async with session() as s:
        srv = Server(s, args.addr, args.org_id, authorization(args))
        status, body, ticket = await srv.request("GET", path, params, headers)
        if status == 202:
            ticket = orjson.loads(body)["data"]["ticket"]
            print(f"ticket: {ticket}", file=sys.stderr)
            body = await follow(srv, ticket, show_progress=not args.no_progress)
        else:
            if ticket:
                print(f"ticket: {ticket}", file=sys.stderr)
            check(status, body)
    print_result(body, args.output)
    return 0


async def follow(srv: Server, ticket: str, *, show_progress: bool) -> bytes:
    """Wait for ``ticket`` to finish (long-polling), with a progress bar on a TTY stderr;
    returns the result body."""
    show_progress = show_progress and sys.stderr.isatty()
    try:
        while True:
            if show_progress:
                _, body = await srv.call("GET", f"{TICKETS}/{ticket}/status")
                sys.stderr.write("\r" + progress_line(orjson.loads(body)["data"]) + "\x1b[K")
                sys.stderr.flush()
            status, body = await srv.call("GET", f"{TICKETS}/{ticket}", {"wait": POLL_WAIT})
            if status == 200:
                return body
    finally:
        if show_progress:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


async def run_ticket(args: argparse.Namespace) -> int:
    async with session() as s:
        srv = Server(s, args.addr, args.org_id, authorization(args))
        path = f"{TICKETS}/{args.id}"
        if args.list:
            _, body = await srv.call("GET", TICKETS)
            print_table(orjson.loads(body)["data"])
        elif args.status or args.stop:
            method, url = ("GET", path + "/status") if args.status else ("POST", path + "/stop")
            _, body = await srv.call(method, url)
            print_result(body, "json")
        elif args.cancel:
            await srv.call("DELETE", path)
            print(f"ticket {args.id} cancelled")
        else:
            status, body = await srv.call("GET", path, {"wait": args.wait} if args.wait else None)
            if status == 204:
                print("running", file=sys.stderr)
                return 2
            print_result(body, args.output)
    return 0


# ---------------------------------------------------------------------- arguments


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}") from None
    return text


def _common(p: argparse.ArgumentParser) -> None:
    """Server, tenant and credentials, from flags or logcli's environment variables."""
    env = os.environ.get
    p.add_argument("--addr", default=env("LOKI_ADDR", DEFAULT_ADDR), help="server URL (LOKI_ADDR)")
    p.add_argument(
        "--org-id", default=env("LOKI_ORG_ID"), help="tenant, X-Scope-OrgID (LOKI_ORG_ID)"
    )
    p.add_argument(
        "--username", default=env("LOKI_USERNAME"), help="basic auth user (LOKI_USERNAME)"
    )
    p.add_argument(
        "--password", default=env("LOKI_PASSWORD"), help="basic auth password (LOKI_PASSWORD)"
    )
    p.add_argument(
        "--bearer-token",
        default=env("LOKI_BEARER_TOKEN"),
        help="sent as Authorization: Bearer, instead of basic auth (LOKI_BEARER_TOKEN)",
    )
    p.add_argument("--output", choices=("raw", "json", "jsonl"), default="raw")


def query_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loki-async query", description="Run a LogQL query.")
    p.add_argument("query", help="LogQL expression")
    _common(p)
    p.add_argument(
        "--from", dest="from_", metavar="TIME", help="start: RFC3339, Unix seconds or ns"
    )
    p.add_argument(
        "--to", metavar="TIME", help="end (instant: the query time): RFC3339, Unix seconds or ns"
    )
    p.add_argument(
        "--since", default="1h", type=_duration, metavar="DURATION", help="start = now - SINCE"
    )
    p.add_argument("--step", type=_duration, metavar="DURATION", help="metric query resolution")
    p.add_argument("--limit", type=int, help="maximum log entries")
    p.add_argument("--direction", choices=("backward", "forward"))
    p.add_argument("--instant", action="store_true", help="instant query at --to (or now)")
    p.add_argument("--async", dest="async_", action="store_true", help="run as a ticket")
    p.add_argument(
        "--wait",
        type=_duration,
        metavar="DURATION",
        help="async: wait this long for an inline result",
    )
    p.add_argument(
        "--keep-alive", type=_duration, metavar="DURATION", help="async: keep the ticket this long"
    )
    p.add_argument("--idempotency-key", help="async: reuse the ticket submitted with this key")
    p.add_argument("--no-progress", action="store_true", help="async: no progress bar")
    return p


def ticket_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loki-async ticket", description="Read, wait for, stop, cancel or list tickets."
    )
    p.add_argument("id", nargs="?", help="ticket id")
    _common(p)
    p.add_argument("--list", action="store_true", help="list the tenant's tickets")
    verb = p.add_mutually_exclusive_group()
    verb.add_argument("--status", action="store_true", help="print the ticket's status")
    verb.add_argument("--cancel", action="store_true", help="cancel and delete the ticket")
    verb.add_argument("--stop", action="store_true", help="stop early, keep partial results")
    verb.add_argument(
        "--wait", type=_duration, metavar="DURATION", help="wait this long for the result"
    )
    return p


def _run(coro: Any) -> int:
    try:
        return asyncio.run(coro)
    except ClientError as e:
        print(e.message, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def query_main(argv: list[str]) -> int:
    """``loki-async query``; returns the exit code."""
    return _run(run_query(query_parser().parse_args(argv)))


def ticket_main(argv: list[str]) -> int:
    """``loki-async ticket``; returns the exit code."""
    p = ticket_parser()
    args = p.parse_args(argv)
    if args.list == bool(args.id):
        p.error("give a ticket ID or --list")
    return _run(run_ticket(args))
