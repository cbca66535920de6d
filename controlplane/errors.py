"""Typed errors raised by services. `controlplane.exception_handler` maps them to HTTP."""

from __future__ import annotations

from controlplane.models import Outcome


class ServiceError(Exception):
    """A refusal a person can act on; `message` says what to do."""

    status_code = 400
    code = "invalid"
    outcome = Outcome.INVALID

    def __init__(self, message: str, *, fields: dict | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class InvalidInput(ServiceError):
    pass


class Forbidden(ServiceError):
    """Signed in, but the role (or the token's scope) does not allow it."""

    status_code = 403
    code = "permission_denied"
    outcome = Outcome.DENIED


class NotFound(ServiceError):
    status_code = 404
    code = "not_found"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class LengthRequired(ServiceError):
    status_code = 411
    code = "length_required"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "too_large"
