"""Browser views for image builds: ask for one from a version's page, follow its log live."""

from __future__ import annotations

from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from controlplane.audit import Actor
from controlplane.errors import ServiceError
from controlplane.web import HTMX_STOP_POLLING, polled, refuse, registry_page
from deployments import services
from deployments.models import ImageBuild
from registry.models import ModelVersion


def _build(pk) -> ImageBuild:
    return get_object_or_404(ImageBuild.objects.select_related("model_version__model", "requested_by"), pk=pk)


@registry_page
@require_POST
def request_build(request, name, version):
    version = get_object_or_404(ModelVersion.objects.select_related("model"), model__name=name, version=version)
    try:
        build, _created = services.request_build(
            version, actor=Actor.from_request(request), variant=request.POST.get("variant") or None
        )
    except ServiceError as exc:
        return refuse(request, exc, "image_build.start", "deployments/build_refused.html", {"version": version})
    return redirect("build-detail", pk=build.pk)


@registry_page
@require_GET
def build_detail(request, pk):
    return render(request, "deployments/build_detail.html", {"build": _build(pk)})


@polled
@registry_page
@require_GET
def build_status(request, pk):
    build = _build(pk)
    status = HTMX_STOP_POLLING if build.is_terminal else 200
    return render(request, "deployments/htmx/build_panel.html", {"build": build}, status=status)


@registry_page
@require_POST
def cancel_build(request, pk):
    build = _build(pk)
    try:
        services.cancel_build(build, actor=Actor.from_request(request))
    except ServiceError as exc:
        return refuse(request, exc, "image_build.cancel", "deployments/build_detail.html", {"build": build})
    return redirect("build-detail", pk=pk)
