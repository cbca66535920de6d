"""Typed errors, and the one function that maps them to HTTP."""

from __future__ import annotations

import orjson


class RuntimeFailure(Exception):
    """Base class: every error a client can see. `status` is its HTTP status."""

    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(RuntimeFailure):
    status = 400


class ModelNotFound(RuntimeFailure):
    status = 404


class PayloadTooLarge(RuntimeFailure):
    status = 413


class Unsupported(RuntimeFailure):
    status = 501


class UnsupportedEncoding(RuntimeFailure):
    """A Content-Encoding this server cannot undo (RFC 9110 §15.5.16: 415, with Accept-Encoding naming those it
    can)."""

    status = 415


class NotReady(RuntimeFailure):
    status = 503


class ServerBusy(RuntimeFailure):
    """The queue is full: the client should retry soon, maybe on another replica."""

    status = 503

    def __init__(self, message: str, *, retry_after_s: int = 1):
        super().__init__(message, headers={"retry-after": str(retry_after_s)})


class BodyTimeout(RuntimeFailure):
    """The client did not send its whole body within the request timeout (answered with Connection: close)."""

    status = 408


class RequestTimeout(RuntimeFailure):
    status = 504


class InferenceFailed(RuntimeFailure):
    status = 500


class ModelLoadError(Exception):
    """The runtime cannot start: a bad checksum, an unreadable archive, a bad signature."""


# Outcome label for the requests counter, by error class.
OUTCOMES: dict[type[RuntimeFailure], str] = {
    InvalidInput: "bad_request",
    ModelNotFound: "not_found",
    PayloadTooLarge: "too_large",
    Unsupported: "unsupported",
    UnsupportedEncoding: "unsupported",
    NotReady: "not_ready",
    ServerBusy: "busy",
    RequestTimeout: "timeout",
    BodyTimeout: "client_timeout",
    InferenceFailed: "error",
}


def error_response(exc: BaseException) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and `{"error": ...}` body for any exception; unknown ones are 500s."""
    if isinstance(exc, RuntimeFailure):
        status, message, extra = exc.status, exc.message, exc.headers
    else:
        status, message, extra = 500, f"internal error: {type(exc).__name__}: {exc}", {}
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in extra.items()]
    return status, headers, body


def outcome_of(exc: BaseException) -> str:
    return OUTCOMES.get(type(exc), "error")
