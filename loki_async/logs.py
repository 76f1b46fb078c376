"""Process logs in logfmt (or JSON), in Loki's own style: ``level=info ts=... msg=...``."""

from __future__ import annotations

import logging
import sys
import time

import orjson


def _quote(v: str) -> str:
    if v and not any(c in v for c in ' "=\n\t'):
        return v
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs):03d}Z"
        level = {"WARNING": "warn", "CRITICAL": "error"}.get(
            record.levelname, record.levelname.lower()
        )
        parts = [
            f"level={level}",
            f"ts={ts}",
            f"caller={record.module}:{record.lineno}",
            f"msg={_quote(record.getMessage())}",
        ]
        if record.exc_info:
            parts.append(f"err={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "level": record.levelname.lower(),
            "ts": record.created,
            "caller": f"{record.module}:{record.lineno}",
            "msg": record.getMessage(),
        }
        if record.exc_info:
            out["err"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel({"warn": logging.WARNING}.get(level, getattr(logging, level.upper())))
    for noisy in ("aiobotocore", "botocore", "nats", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
