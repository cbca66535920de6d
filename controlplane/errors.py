"""Typed errors raised by services. `controlplane.exception_handler` maps them to HTTP."""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent

from controlplane.models import Outcome


class ServiceError(Exception):
    """A refusal a person can act on; `message` says what to do."""

    status_code = 400
    code = "invalid"
    outcome = Outcome.INVALID

    def __init__(self, message: str, *, fields: dict | None = None, target=None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        # What the refused attempt was about, for its audit event, when its URL does not say
        # (an object, or a (type, id, text) tuple); see controlplane.audit.target_of_request.
        self.target = target


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


class RequestTimeout(ServiceError):
    status_code = 408
    code = "timeout"


class PayloadTooLarge(ServiceError):
    status_code = 413
    code = "too_large"


class InsufficientStorage(ServiceError):
    """The server's disk (or its quota) is full: the client can only retry once an administrator has acted."""

    status_code = 507
    code = "insufficient_storage"
    outcome = Outcome.FAILED


def as_service_error(exc):
    """Django's own refusals of an oversized request, which would otherwise be an HTML 400."""
    if isinstance(exc, RequestDataTooBig):
        return PayloadTooLarge(
            f"The request's fields (or its JSON body) are larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes. "
            "Only the file may be large: keep metadata small and link to large documents from it."
        )
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return InvalidInput("The request has too many form fields or files: send one 'artifact' and a few fields.")
    return exc
