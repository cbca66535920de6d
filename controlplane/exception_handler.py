"""The one place where errors become HTTP answers for the API.

Every API error body is `{"error": "<what to do>", "code": "...", "fields": {...}?}`.
Refused attempts (401, 403, 400, 404, 409, 413) are recorded in the audit log; throttled ones (429) are not.
"""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from controlplane.errors import ServiceError, as_service_error
from controlplane.models import Outcome
from controlplane.throttling import current_rate

log = logging.getLogger(__name__)

NOT_AUTHENTICATED = (
    "Send an API token as 'Authorization: Bearer <token>'. Create one under API tokens in the web UI, "
    "or with 'python manage.py create_api_token USERNAME'."
)


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        parts = []
        for key, value in detail.items():
            text = _flatten(value)
            parts.append(text if key in ("non_field_errors", "detail") else f"{key}: {text}")
        return "; ".join(parts)
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)


def exception_handler(exc, context):
    exc = as_service_error(exc)
    if isinstance(exc, ServiceError):
        body = {"error": exc.message, "code": exc.code}
        if exc.fields:
            body["fields"] = exc.fields
        response = Response(body, status=exc.status_code)
        _audit_refusal(context, exc.outcome, exc.message, response.status_code, target=exc.target)
        return response

    if isinstance(exc, exceptions.NotAuthenticated):
        exc.detail = exceptions.ErrorDetail(NOT_AUTHENTICATED, code=exc.default_code)  # keeps its auth_header
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(_unknown_format(context) or "Not found: check the name or number in the URL.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, exceptions.Throttled):
        return _throttled(exc, context)
    elif isinstance(exc, exceptions.MethodNotAllowed) or (
        isinstance(exc, exceptions.UnsupportedMediaType) and str(exc.detail).startswith("Unsupported media type ")
    ):  # DRF's own wording (a view's own refusal already says what to send)
        exc.detail = exceptions.ErrorDetail(_what_to_send(exc, context), code=exc.default_code)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # an unexpected error: Django logs it and answers 500

    detail = exc.detail if isinstance(exc, exceptions.APIException) else response.data
    body = {"error": _flatten(detail), "code": getattr(exc, "default_code", "error")}
    if isinstance(exc, exceptions.ValidationError) and isinstance(exc.detail, dict):
        body["fields"] = exc.detail
        body["code"] = "invalid"
    response.data = body

    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed | exceptions.PermissionDenied):
        user = getattr(exc, "session_user", None)  # a CSRF refusal still names whose session it was
        note = getattr(exc, "audit_note", "")
        message = f"{body['error']} [{note}]" if note else body["error"]
        _audit_refusal(context, Outcome.DENIED, message, response.status_code, user=user)
    elif isinstance(
        exc, exceptions.ValidationError | exceptions.ParseError | exceptions.UnsupportedMediaType | exceptions.NotFound
    ):  # a write to an object that is not there, or is another team's (told apart nowhere, the log included)
        _audit_refusal(context, Outcome.INVALID, body["error"], response.status_code)
    return response


def _what_to_send(exc, context) -> str:
    """DRF's refusal of a method or of a body's type, with what this URL takes instead."""
    request, view = context.get("request"), context.get("view")
    if isinstance(exc, exceptions.MethodNotAllowed):
        allowed = ", ".join(m for m in getattr(view, "allowed_methods", ()) if m not in ("HEAD", "OPTIONS"))
        method = request.method if request is not None else "This method"
        return f"{method} is not allowed on this URL; it takes {allowed or 'nothing'} (see /api/docs/)."
    sent = request.content_type.split(";")[0].strip() if request is not None else ""
    accepted = ", ".join(parser.media_type for parser in view.get_parsers()) if view else "application/json"
    return f"A {sent!r} body is not accepted here: send {accepted} and say which in Content-Type."


def _unknown_format(context) -> str | None:
    """DRF answers a ?format= that no renderer of the view has with a 404: say that, not "check the URL"."""
    request, view = context.get("request"), context.get("view")
    fmt = request.query_params.get("format") if request is not None else None
    if not fmt or view is None or fmt in {renderer.format for renderer in view.get_renderers()}:
        return None
    message = f"There is no format {fmt!r} here: the API answers JSON; leave 'format' out."
    if request.path.startswith("/api/v1/audit/") and not request.path.startswith("/api/v1/audit/export/"):
        message += " The audit log's files come from /api/v1/audit/export/?format=csv (or jsonl)."
    return message


def _throttled(exc: exceptions.Throttled, context) -> Response:
    """429 with Retry-After. Not audited: a flood would otherwise write one audit row per request."""
    request = context.get("request")
    signed_in = request is not None and request.user.is_authenticated
    wait = max(1, exc.wait or 1)
    if signed_in:
        limit = f"{current_rate('user')} per user"
    else:
        limit = f"{current_rate('anon')} per address without an API token"
    body = {"error": f"Too many requests: the API allows {limit}; retry in {wait} s.", "code": exc.default_code}
    return Response(body, status=exc.status_code, headers={"Retry-After": str(wait)})


def _audit_refusal(context, outcome: str, message: str, status_code: int, user=None, target=None) -> None:
    from controlplane.audit import Actor, record_refusal, target_of_request

    request = context.get("request")
    view = context.get("view")
    if request is None or (request.method in ("GET", "HEAD", "OPTIONS") and status_code not in (401, 403)):
        return  # a failed read changes nothing worth recording; a denied one is
    action = audit_action_for(view, request)
    try:
        actor = Actor.from_request(request, user=user)
        record_refusal(
            action,
            actor=actor,
            target=target or target_of_request(request, actor),
            outcome=outcome,
            message=f"{status_code} {request.method} {request.get_full_path()[:200]}: {message}"[:2000],
        )
    except Exception:  # never turn a clear 4xx into a 500 because auditing failed
        log.exception("could not record a refused attempt")


def audit_action_for(view, request) -> str:
    actions = getattr(view, "audit_actions", {}) or {}
    name = getattr(view, "action", None)
    if name in actions:
        return actions[name]
    basename = getattr(view, "basename", None) or type(view).__name__ if view is not None else "api"
    return f"{basename}.{name or request.method.lower()}"
