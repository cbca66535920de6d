"""The admin site's changes in the audit log: users, groups, log-in lockouts.

Django's admin writes its own history (LogEntry) from `log_addition`, `log_change` and
`log_deletions`, inside the transaction of the change (where Django opens none, for "delete
selected" and a user's password, one is opened here); each registered admin here also
writes an audit event from the same calls, so a user made a superuser, a password reset or
a lockout lifted is in the one log people review, and commits or vanishes with the change.
Only the admin's change message is kept (the names of the fields that changed), never a value.
"""

from __future__ import annotations

from django.contrib import admin
from django.db import transaction

from controlplane.audit import Actor, record

VERBS = {"log_addition": "create", "log_change": "change", "log_deletions": "delete"}
# Flags of a user worth seeing in the event itself: what the account may do after the change.
USER_FLAGS = ("is_active", "is_staff", "is_superuser")


class AuditedAdmin:
    """Mixed in before a ModelAdmin class."""

    def log_addition(self, request, obj, message):
        self._audit(request, obj, "log_addition", message)
        return super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        self._audit(request, obj, "log_change", message)
        return super().log_change(request, obj, message)

    def log_deletions(self, request, queryset):
        for obj in queryset:
            self._audit(request, obj, "log_deletions", None)
        return super().log_deletions(request, queryset)

    def response_action(self, request, queryset):
        # "Delete selected" logs, then deletes, outside the admin's own transactions: one here for both.
        with transaction.atomic():
            return super().response_action(request, queryset)

    def user_change_password(self, request, id, form_url=""):
        # UserAdmin saves the new password, then logs it, outside any transaction: one here for both.
        with transaction.atomic():
            return super().user_change_password(request, id, form_url)

    def _audit(self, request, obj, call: str, message) -> None:
        kind = getattr(obj, "AUDIT_TYPE", obj._meta.model_name)
        after = None
        if call != "log_deletions":
            after = {"admin": message or []}
            after.update({flag: getattr(obj, flag) for flag in USER_FLAGS if hasattr(obj, flag)})
        record(
            f"{kind}.{VERBS[call]}",
            actor=Actor.from_request(request),
            target=(kind, obj.pk, str(obj)),
            after=after,
            message="in the admin site",
        )


def _audit_every_registered_admin(site: admin.AdminSite) -> None:
    """Re-register each model of `site` (Django's and django-axes' admins, found before this module)
    with its admin class audited."""
    for model, model_admin in list(site._registry.items()):
        cls = type(model_admin)
        if issubclass(cls, AuditedAdmin):
            continue
        site.unregister(model)
        site.register(model, type(f"Audited{cls.__name__}", (AuditedAdmin, cls), {"__module__": __name__}))


_audit_every_registered_admin(admin.site)
admin.site.site_header = "Slipway administration"
admin.site.site_title = "Slipway admin"
