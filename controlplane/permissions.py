"""DRF permissions built on controlplane.access (services check again before changing anything)."""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

from controlplane import access
from controlplane.audit import Actor
from controlplane.models import Role


class RegistryAccess(BasePermission):
    """Models, versions and builds: a role anywhere reads them; deployer anywhere changes them.

    Checked before the body is read, so a refused upload is refused before its bytes arrive.
    """

    def has_permission(self, request, view) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False  # IsAuthenticated answers 401 first
        actor = Actor.from_request(request)
        if request.method in SAFE_METHODS:
            access.require_registry(actor, Role.VIEWER, "read the registry")
        elif request.method == "DELETE":  # the refusal names the role deleting needs, not deployer
            access.require_registry(actor, Role.ADMIN, "delete versions")
        else:
            access.require_registry(actor, Role.DEPLOYER, "change the registry")
        return True
