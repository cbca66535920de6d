"""Request ids: taken from X-Request-ID when a proxy set a sane one, else made here."""

from __future__ import annotations

import re
import uuid

from django.contrib.auth.views import redirect_to_login
from django.utils.deprecation import MiddlewareMixin

_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        incoming = request.headers.get("X-Request-ID", "")
        request.request_id = incoming if _SANE_ID.match(incoming) else uuid.uuid4().hex
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response


class RefuseAnonymousUploadsMiddleware(MiddlewareMixin):
    """Refuse an anonymous browser upload before its body is read.

    The CSRF middleware reads request.POST, which spools a multipart body to disk,
    before any view could check the login. Placed above it, this answers first.
    API views are exempt: DRF authenticates them before parsing.
    """

    def process_view(self, request, view_func, view_args, view_kwargs):
        if (
            request.method == "POST"
            and request.content_type == "multipart/form-data"
            and not getattr(view_func, "csrf_exempt", False)
            and not request.user.is_authenticated
        ):
            return redirect_to_login(request.get_full_path())
        return None
