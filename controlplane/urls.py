from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from controlplane import api as controlplane_api
from controlplane import views as controlplane_views
from deployments import api as deployments_api
from registry import api as registry_api

router = DefaultRouter()
# Without its slash a URL is served, not redirected: a 301 turns a script's POST into a GET.
router.trailing_slash = "/?"
router.register("models", registry_api.ModelViewSet, basename="model")
router.register(r"models/(?P<model_name>[^/]+)/versions", registry_api.ModelVersionViewSet, basename="model-version")
router.register(
    r"models/(?P<model_name>[^/]+)/versions/(?P<version>[0-9]+)/builds",
    deployments_api.VersionBuildViewSet,
    basename="version-build",
)
router.register("builds", deployments_api.ImageBuildViewSet, basename="build")
router.register("environments", deployments_api.EnvironmentViewSet, basename="environment")
router.register("deployments", deployments_api.DeploymentViewSet, basename="deployment")
router.register("rollouts", deployments_api.RolloutViewSet, basename="rollout")
router.register("audit", controlplane_api.AuditEventViewSet, basename="audit")
router.register("tokens", controlplane_api.APITokenViewSet, basename="token")
router.register("role-bindings", controlplane_api.RoleBindingViewSet, basename="role-binding")
router.register("approvals", deployments_api.ApprovalViewSet, basename="approval")

urlpatterns = [
    # Namespaced: the browser pages reuse names such as "token-list".
    path("api/v1/", include((router.urls, "v1"), namespace="v1")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/password/", controlplane_views.password_change, name="password-change"),
    path("tokens/", include("controlplane.token_urls")),
    path("audit/", controlplane_views.audit_log, name="audit-log"),
    path("audit/verify/", controlplane_views.audit_verify, name="audit-verify"),
    path("healthz", controlplane_views.healthz, name="healthz"),
    # The admin's own "Change password" link: to the same page, so the change is audited like any other.
    path("admin/password_change/", RedirectView.as_view(pattern_name="password-change"), name="admin-password-change"),
    path("admin/", admin.site.urls),
    path("", include("deployments.urls")),
    path("", include("registry.urls")),
]

handler404 = controlplane_views.not_found
handler500 = controlplane_views.server_error
