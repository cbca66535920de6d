from django.urls import path

from deployments import views

urlpatterns = [
    path("models/<str:name>/versions/<int:version>/builds/", views.request_build, name="build-request"),
    path("builds/<int:pk>/", views.build_detail, name="build-detail"),
    path("builds/<int:pk>/status/", views.build_status, name="build-status"),
    path("builds/<int:pk>/cancel/", views.cancel_build, name="build-cancel"),
]
