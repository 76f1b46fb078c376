"""The error tree of loki-async and its one mapping to HTTP statuses.

Every error a user can cause is a subclass of :class:`LokiError` carrying the HTTP
status and a client-safe message in Loki's wording. The same mapping carries errors
across NATS: an error is sent as ``{"status": int, "error": str}`` and rebuilt on the
other side with :func:`from_wire`, so an ingester's 400 is the client's 400.

Foreign exceptions (nats, botocore, zstandard) are wrapped at the boundary of the
module that calls the foreign library; anything else that reaches the HTTP layer is a
bug and answers 500 with a generic message.
"""

from __future__ import annotations

from typing import Any


class LokiError(Exception):
    """Base of every expected error. ``status`` is the HTTP status it maps to."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def to_wire(self) -> dict[str, Any]:
        """The NATS form of the error: status and message."""
        return {"status": self.status, "error": self.message}


class BadRequest(LokiError):
    """The request is malformed: bad parameters, bad push body, bad query (400)."""

    status = 400


class ValidationError(BadRequest):
    """A push (or part of one) violates a validation limit (400)."""


class Unauthorized(LokiError):
    """No tenant could be determined for a request that needs one (401)."""

    status = 401


class NotFound(LokiError):
    """The resource does not exist, or belongs to another tenant (404)."""

    status = 404


class PayloadTooLarge(LokiError):
    """The request body exceeds the configured limit (413)."""

    status = 413


class RateLimited(LokiError):
    """A per-tenant rate limit was exceeded (429)."""

    status = 429


class ConfigError(LokiError):
    """The configuration is invalid; the message lists every problem."""

    status = 400


class StorageError(LokiError):
    """The object store failed or returned something unusable (500)."""

    status = 500


class ObjectNotFound(StorageError):
    """An object that was asked for does not exist."""

    status = 404


class CorruptDataError(StorageError):
    """A chunk, index segment or WAL record failed its checksum or format check."""


class Unavailable(LokiError):
    """A dependency (ingester quorum, NATS, object store) is unreachable; retry (503)."""

    status = 503


class QueryTimeout(LokiError):
    """A query ran longer than ``query_timeout`` (504)."""

    status = 504


def from_wire(payload: dict[str, Any]) -> LokiError:
    """Rebuild an error sent with :meth:`LokiError.to_wire` over NATS."""
    status = int(payload.get("status", 500))
    message = str(payload.get("error", "internal error"))
    cls = _BY_STATUS.get(status, LokiError)
    return cls(message, status)


_BY_STATUS: dict[int, type[LokiError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Unavailable,
    504: QueryTimeout,
}


def http_status(exc: BaseException) -> tuple[int, str]:
    """Map any exception to (HTTP status, client-safe message).

    Known errors keep their status and message; anything else is an internal error
    whose details stay in the server log.
    """
    if isinstance(exc, LokiError):
        return exc.status, exc.message
    return 500, "internal server error"
