"""A small Loki HTTP client for tests: push in every format, read back everything."""

from __future__ import annotations

import gzip
from typing import Any

import aiohttp
import orjson

from loki_async.logproto import PushStream, encode_push_json, encode_push_protobuf


async def push(
    session: aiohttp.ClientSession,
    url: str,
    streams: list[PushStream],
    fmt: str = "json",
    tenant: str | None = None,
) -> tuple[int, str]:
    """Push in ``fmt`` (json, gzip, protobuf); returns (status, body text)."""
    headers = {}
    if tenant:
        headers["X-Scope-OrgID"] = tenant
    if fmt == "protobuf":
        body = encode_push_protobuf(streams)
        headers["Content-Type"] = "application/x-protobuf"
    else:
        body = encode_push_json(streams)
        headers["Content-Type"] = "application/json"
        if fmt == "gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
    async with session.post(f"{url}/loki/api/v1/push", data=body, headers=headers) as r:
        return r.status, await r.text()


async def get(
    session: aiohttp.ClientSession, url: str, path: str, tenant: str | None = None, **params: Any
) -> tuple[int, Any]:
    headers = {"X-Scope-OrgID": tenant} if tenant else {}
    async with session.get(f"{url}{path}", params=params, headers=headers) as r:
        body = await r.read()
        if r.content_type == "application/json":
            return r.status, orjson.loads(body)
        return r.status, body.decode()


async def query_range(
    session: aiohttp.ClientSession,
    url: str,
    query: str,
    start: int,
    end: int,
    limit: int = 100000,
    direction: str = "forward",
    tenant: str | None = None,
) -> dict[str, list[tuple[int, str]]]:
    """Stream labels (as a sorted key) → [(ts, line)] for a log query; asserts 200."""
    status, body = await get(
        session,
        url,
        "/loki/api/v1/query_range",
        tenant=tenant,
        query=query,
        start=str(start),
        end=str(end),
        limit=str(limit),
        direction=direction,
    )
    assert status == 200, body
    assert body["status"] == "success" and body["data"]["resultType"] == "streams"
    out: dict[str, list[tuple[int, str]]] = {}
    for s in body["data"]["result"]:
        key = ",".join(f"{k}={v}" for k, v in sorted(s["stream"].items()))
        out.setdefault(key, []).extend((int(ts), line) for ts, line, *_ in s["values"])
    return out


def client() -> aiohttp.ClientSession:
    """A session that never reuses a connection: tests restart servers under it. A
    request that hangs fails after 90 s (not aiohttp's 5 minutes)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=90),
    )


async def call(
    method: str,
    url: str,
    path: str,
    tenant: str | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    **params: Any,
) -> tuple[int, Any, Any]:
    """(status, body as JSON or text, response headers). ``async`` is a Python keyword:
    pass it as ``async_=``."""
    params = {("async" if k == "async_" else k): v for k, v in params.items()}
    hdrs = dict(headers or {})
    if tenant:
        hdrs["X-Scope-OrgID"] = tenant
    async with (
        client() as s,
        s.request(method, url + path, params=params, headers=hdrs, data=body) as r,
    ):
        raw = await r.read()
        text: Any = raw.decode()
        if r.content_type == "application/json":
            text = orjson.loads(raw)
        return r.status, text, r.headers
