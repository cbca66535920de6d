from django.urls import path
from django.views.generic import RedirectView

from registry import views

app_name = "registry"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="registry:model-list", permanent=False)),
    path("models/", views.model_list, name="model-list"),
    path("models/<str:name>/", views.model_detail, name="model-detail"),
    path("models/<str:name>/versions/rows/", views.version_rows, name="version-rows"),
    path("models/<str:name>/versions/upload/", views.upload, name="version-upload"),
    path("models/<str:name>/versions/<int:version>/", views.version_detail, name="version-detail"),
    path("models/<str:name>/versions/<int:version>/status/", views.version_status, name="version-status"),
    path("models/<str:name>/versions/<int:version>/download/", views.download, name="version-download"),
]
