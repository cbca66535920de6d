from __future__ import annotations

from drf_spectacular.authentication import SessionScheme as SpectacularSessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from controlplane.tokens import authenticate_token, describe_refused


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <token>` with a token from the UI or create_api_token."""

    keyword = "bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1").split()
        if not header or header[0].lower() != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed(
                "Malformed Authorization header: send 'Authorization: Bearer <token>' with no spaces in the token."
            )
        token = authenticate_token(header[1])
        if token is None:
            exc = exceptions.AuthenticationFailed(
                "This API token is unknown, revoked or expired, or its user's account is disabled. Create a new "
                "one under API tokens in the web UI, or with 'python manage.py create_api_token USERNAME' (an "
                "administrator re-enables a disabled account)."
            )
            exc.audit_note = describe_refused(header[1])  # which token, for the log only
            raise exc
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="slipway"'


class SessionAuthentication(authentication.SessionAuthentication):
    """The browser's session, for API calls from Slipway's own pages (CSRF-checked)."""

    def enforce_csrf(self, request):
        try:
            super().enforce_csrf(request)
        except exceptions.PermissionDenied as exc:
            # DRF drops the user on failure; the audit log should still say whose session it was.
            exc.session_user = request._request.user
            raise


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "controlplane.authentication.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from the web UI (API tokens) or `manage.py create_api_token`.",
        }


class SessionScheme(SpectacularSessionScheme):
    target_class = "controlplane.authentication.SessionAuthentication"
