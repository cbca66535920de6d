from django.urls import path, re_path

from deployments import approval_views, deployment_views, views

urlpatterns = [
    path("models/<str:name>/versions/<int:version>/builds/", views.request_build, name="build-request"),
    path("builds/<int:pk>/", views.build_detail, name="build-detail"),
    path("builds/<int:pk>/status/", views.build_status, name="build-status"),
    path("builds/<int:pk>/cancel/", views.cancel_build, name="build-cancel"),
    path("environments/", deployment_views.environment_list, name="environment-list"),
    path("environments/<str:name>/", deployment_views.environment_detail, name="environment-detail"),
    path("environments/<str:name>/protection/", deployment_views.environment_protection, name="environment-protection"),
    path("environments/<str:name>/roles/", deployment_views.environment_grant, name="environment-grant"),
    path(
        "environments/<str:name>/roles/<int:pk>/revoke/", deployment_views.environment_revoke, name="environment-revoke"
    ),
    path("models/<str:name>/versions/<int:version>/deploy/", deployment_views.deploy, name="deploy"),
    path("deployments/", deployment_views.deployment_list, name="deployment-list"),
    path("deployments/<int:pk>/", deployment_views.deployment_detail, name="deployment-detail"),
    path("deployments/<int:pk>/live/", deployment_views.deployment_live, name="deployment-live"),
    path("deployments/<int:pk>/watch/", deployment_views.deployment_watch, name="deployment-watch"),
    path("deployments/<int:pk>/promote/", deployment_views.promote, name="deployment-promote"),
    path("deployments/<int:pk>/rollback/", deployment_views.rollback, name="deployment-rollback"),
    path("deployments/<int:pk>/unpin/", deployment_views.unpin, name="deployment-unpin"),
    path("deployments/<int:pk>/history/", deployment_views.deployment_history, name="deployment-history"),
    path("approvals/", approval_views.approval_list, name="approval-list"),
    path("approvals/<int:pk>/", approval_views.approval_detail, name="approval-detail"),
    re_path(
        r"^approvals/(?P<pk>[0-9]+)/(?P<decision>approve|reject)/$",
        approval_views.approval_decide,
        name="approval-decide",
    ),
    re_path(
        r"^rollouts/(?P<pk>[0-9]+)/(?P<verb>pause|resume|abort|promote)/$",
        deployment_views.rollout_action,
        name="rollout-action",
    ),
]
