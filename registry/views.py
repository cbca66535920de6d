"""Browser views for the registry (Django templates + htmx partials)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from controlplane.audit import Actor
from controlplane.errors import InvalidInput, ServiceError
from controlplane.web import HTMX_STOP_POLLING, paginate, refuse
from registry import services
from registry.api import artifact_response, uploader_name
from registry.models import VERSION_TERMINAL, Model, ModelVersion
from registry.uploads import raise_if_too_large


@login_required
@require_http_methods(["GET", "POST"])
def model_list(request):
    if request.method == "POST":
        try:
            model = services.create_model(
                request.POST.get("name", ""), request.POST.get("description", ""), actor=Actor.from_request(request)
            )
        except ServiceError as exc:
            return refuse(request, exc, "model.create", "registry/model_list.html", _model_list_context(request))
        return redirect("registry:model-detail", name=model.name)
    return render(request, "registry/model_list.html", _model_list_context(request))


def _model_list_context(request) -> dict:
    query = request.GET.get("q", "").strip()
    models = Model.objects.order_by("name")
    if query:
        models = models.filter(Q(name__icontains=query) | Q(description__icontains=query))
    return {"page": paginate(request, models, 25), "q": query, "form": request.POST}


def _versions_context(request, model: Model) -> dict:
    # 50 rows: what the template would work out for each row (a User, two |date
    # filters, a URL reverse) costs more than the queries; done here once or in plain
    # Python it takes a third off the page. Same text, in the current time zone.
    versions = model.versions.annotate(uploaded_by_username=uploader_name()).order_by("-version")
    page = paginate(request, versions)
    zone = timezone.get_current_timezone()
    for version in page:
        created = version.created_at.astimezone(zone)
        version.created_iso = created.isoformat()
        version.created_label = created.strftime("%Y-%m-%d %H:%M")
    in_flight = any(v.status not in VERSION_TERMINAL for v in page)
    # Reversed once with a placeholder; each row appends its number.
    versions_url = reverse("registry:version-detail", args=[model.name, 0]).removesuffix("0/")
    return {"model": model, "page": page, "in_flight": in_flight, "versions_url": versions_url}


@login_required
@require_GET
def model_detail(request, name):
    model = get_object_or_404(Model, name=name)
    return render(request, "registry/model_detail.html", _versions_context(request, model))


@login_required
@require_GET
def version_rows(request, name):
    model = get_object_or_404(Model, name=name)
    context = _versions_context(request, model)
    status = 200 if context["in_flight"] else HTMX_STOP_POLLING
    return render(request, "registry/htmx/version_table.html", context, status=status)


@login_required
@require_POST
def upload(request, name):
    model = get_object_or_404(Model, name=name)
    template = "registry/htmx/upload_result.html"
    try:
        artifact = request.FILES.get("artifact")  # streams the body through our handler
        raise_if_too_large(request)
        if artifact is None:
            raise InvalidInput("Choose a model file to upload.")
        version = services.upload_version(
            model,
            artifact,
            actor=Actor.from_request(request),
            sha256=request.POST.get("sha256") or None,
            signature=request.POST.get("signature") or None,
            metadata=request.POST.get("metadata") or None,
        )
    except ServiceError as exc:
        return refuse(request, exc, "model_version.upload", template, {"model": model})
    response = render(request, template, {"model": model, "version": version}, status=201)
    response["HX-Trigger"] = "versions-changed"
    return response


@login_required
@require_GET
def version_detail(request, name, version):
    version = get_object_or_404(
        ModelVersion.objects.select_related("model", "uploaded_by"), model__name=name, version=version
    )
    return render(request, "registry/version_detail.html", {"version": version, "model": version.model})


@login_required
@require_GET
def version_status(request, name, version):
    version = get_object_or_404(
        ModelVersion.objects.select_related("model", "uploaded_by"), model__name=name, version=version
    )
    status = HTMX_STOP_POLLING if version.is_terminal else 200
    return render(request, "registry/htmx/version_facts.html", {"version": version}, status=status)


@login_required
@require_GET
def download(request, name, version):
    version = get_object_or_404(ModelVersion.objects.select_related("model"), model__name=name, version=version)
    return artifact_response(version)
