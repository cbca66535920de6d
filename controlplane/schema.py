"""The OpenAPI schema's error answers: every operation documents the errors it can give, with their JSON body.

drf-spectacular documents only what a view answers when it succeeds. The API's errors all
come from `controlplane.exception_handler` in one shape, so they are added here, in one
place, from what each operation takes: scripts that read the schema learn which answers
to expect, and the fuzz test (tests/controlplane/test_schemathesis.py) checks that no
operation answers a status or a body the schema does not describe.
"""

from __future__ import annotations

from drf_spectacular import openapi
from rest_framework import serializers

ERRORS = {
    400: "Refused: the body, a parameter or the object's state is not valid here; the message says what to change",
    401: "No API token, or one that is unknown, revoked or expired",
    403: "Your role, or the API token's scope or environments, does not allow it; the message names what is needed",
    404: "No such object, or one in an environment where you have no role",
    409: "The current state does not allow it (a name taken, a rollout already finished...); look again and retry",
    413: "The request body is larger than the server accepts",
    415: "The body's Content-Type is not one this operation takes; the message says which it does",
    429: "Too many requests: retry after the seconds in Retry-After",
}
# Answers to a download's conditional and Range headers: their status and headers are the whole answer, as
# download tools (curl -C -, wget -c) and caches expect.
BODILESS = {304, 412, 416}
WRITES = ("POST", "PUT", "PATCH", "DELETE")


class ErrorSerializer(serializers.Serializer):
    """Every error answer: `{"error": "<what to do>", "code": "...", "fields": {...}?}`."""

    def get_fields(self):
        # Built here, not declared: a declared field named `fields` would hide Serializer.fields.
        return {
            "error": serializers.CharField(help_text="what went wrong and what to do about it"),
            "code": serializers.CharField(help_text="for scripts: invalid, not_found, conflict, throttled..."),
            "fields": serializers.DictField(
                required=False, help_text="what is wrong with each field of the request, when one is to blame"
            ),
        }


class AutoSchema(openapi.AutoSchema):
    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        error = self.resolve_serializer(ErrorSerializer, "response").ref
        responses = operation["responses"]
        for code in error_statuses(operation, self.method):
            documented = responses.get(str(code), {})
            if documented.get("content") or code in BODILESS:  # a view's own description of this answer
                continue
            description = documented.get("description") or ERRORS[code]
            responses[str(code)] = {"content": {"application/json": {"schema": error}}, "description": description}
        operation["responses"] = dict(sorted(responses.items()))
        return operation


def error_statuses(operation: dict, method: str) -> set[int]:
    """The errors an operation can answer, from what it takes, plus those its view declares itself."""
    parameters = operation.get("parameters", ())
    in_path = any(parameter["in"] == "path" for parameter in parameters)
    query = {parameter["name"] for parameter in parameters if parameter["in"] == "query"}
    codes = {401, 403, 429}  # every operation needs a token, checks roles, and is rate-limited
    codes |= {int(code) for code in operation["responses"] if code.isdigit() and int(code) >= 400}
    if in_path or "page" in query:  # an unknown id or name; a page past the last
        codes.add(404)
    if query or method in WRITES:
        codes.add(400)
    if method in WRITES:
        codes.add(409)
    if "requestBody" in operation:
        codes |= {413, 415}
    return codes
